//! What split execution (CPL0 in the interpreter, CPL3 in KVM) rests on,
//! checked on this host's KVM. Each test skips, printing why, when /dev/kvm
//! cannot be used.
//! - `Vm::hide`: an exception at CPL3 whose handler lies in a hidden range
//!   leaves KVM with an emulation failure at the handler's first
//!   instruction, at CPL0, with the exception frame pushed.
//! - `Vm::flush_translations`: a page-table change made behind KVM's back
//!   (by the interpreter) is seen by the guest after a flush, and not
//!   before (on kvm_pvm, whose shadow page tables trap only the guest's
//!   own writes).
//! - The state moved in and out at those exits: FS.base, XMM registers.

#![cfg(target_os = "linux")]

mod common;

use std::time::Instant;

use common::*;
use cpu::state::reg;
use hvf_kvm_accel::{Vcpu, Vm, VmExit};
use iced_x86::code_asm::*;

/// The hidden handler page.
const HIDDEN: u64 = 0x60_0000;

/// Gate `vector` points into the hidden page (interrupt gate, DPL 3).
fn hide_handler(g: &Guest, vector: u64) {
    let mem = g.vm.memory().clone();
    let lo = (HIDDEN & 0xffff) | (u64::from(KERNEL_CS) << 16) | (0xee00u64 << 32) | ((HIDDEN >> 16) & 0xffff) << 48;
    mem.write_u64(IDT + vector * 16, lo).unwrap();
    mem.write_u64(IDT + vector * 16 + 8, 0).unwrap();
    g.vm.hide(HIDDEN, HIDDEN + 0x1000).unwrap();
}

#[test]
fn an_exception_from_cpl3_into_a_hidden_handler_leaves_kvm_at_the_handler() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        a.mov(eax, 0x1234)?;
        a.ud2()?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else { return };
    hide_handler(&g, 6);
    let mem = g.vm.memory().clone();
    let mut io = Io::default();
    let t = Instant::now();
    let exit = g.vcpu.run(&mut io).unwrap();
    let took = t.elapsed();
    let s = g.vcpu.get_state().unwrap();
    eprintln!(
        "ud2 at CPL3, #UD handler hidden: {exit} after {:.1} µs; CPL{} RIP {:#x}",
        took.as_secs_f64() * 1e6,
        s.cpl,
        s.rip
    );
    assert!(matches!(exit, VmExit::InternalError { suberror: 1, .. }), "{exit}");
    assert_eq!((s.cpl, s.rip), (0, HIDDEN));
    assert_eq!(s.gpr[reg::RSP], KERNEL_STACK - 40, "the exception frame is pushed");
    assert_eq!(mem.read_u64(KERNEL_STACK - 40).unwrap(), CODE + 5, "frame RIP: the ud2");
    assert_eq!(mem.read_u64(KERNEL_STACK - 32).unwrap(), u64::from(USER_CS));
    assert_eq!(s.gpr[reg::RAX] as u32, 0x1234);
    assert!(io.on(PORT_VECTOR).is_empty(), "no handler ran");
}

#[test]
fn a_hidden_range_made_writable_again_is_back_in_kvm() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        a.ud2()?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else { return };
    hide_handler(&g, 6);
    // The handler in the hidden page: it reports the vector and stops.
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(al, 6u32).unwrap();
    a.out(PORT_VECTOR as u32, al).unwrap();
    a.out(PORT_STOP as u32, al).unwrap();
    g.vm.memory().write(HIDDEN, &a.assemble(HIDDEN).unwrap()).unwrap();
    g.vm.protect(HIDDEN, HIDDEN + 0x1000, false).unwrap();
    let mut io = Io::default();
    let exit = g.vcpu.run(&mut io).unwrap();
    assert_eq!(exit, VmExit::Interrupted, "{exit}");
    assert_eq!(io.on(PORT_VECTOR), [6], "the handler ran in KVM");
}

/// Hang the test's page table under [`VADDR`] (its entries start empty).
fn map_table(mem: &mmu::GuestMemory) {
    mem.write_u64(PDPT + 8, PD2 | 7).unwrap();
    mem.write_u64(PD2, PT | 7).unwrap();
}

/// User-visible address mapped through a 4 KiB page table the test edits.
const VADDR: u64 = 0x4000_0000;
const PD2: u64 = 0x40000;
const PT: u64 = 0x41000;
const PAGE_A: u64 = 0x50000;
const PAGE_B: u64 = 0x51000;

#[test]
fn page_table_changes_behind_kvm_are_seen_after_a_flush() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        a.mov(eax, dword_ptr(VADDR))?;
        a.out(PORT_RESULT as u32, eax)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else { return };
    let mem = g.vm.memory().clone();
    map_table(&mem);
    mem.write_u64(PT, PAGE_A | 7).unwrap();
    mem.write_u32(PAGE_A, 0xaaaa).unwrap();
    mem.write_u32(PAGE_B, 0xbbbb).unwrap();
    let run = |g: &mut Guest| {
        let mut io = Io::default();
        g.vcpu.set_state(&long_mode_state(CODE, 3)).unwrap();
        let exit = g.vcpu.run(&mut io).unwrap();
        assert_eq!(exit, VmExit::Interrupted, "{exit}");
        io.on(PORT_RESULT)
    };
    assert_eq!(run(&mut g), [0xaaaa]);
    // Remap the page behind KVM's back.
    mem.write_u64(PT, PAGE_B | 7).unwrap();
    let stale = run(&mut g);
    eprintln!(
        "after a remap without a flush the guest reads {:#x} ({})",
        stale[0],
        if stale[0] == 0xaaaa { "stale" } else { "fresh" }
    );
    let t = Instant::now();
    const N: u32 = 50;
    for _ in 0..N {
        g.vm.flush_translations().unwrap();
    }
    eprintln!("flush_translations: {:.1} µs each", t.elapsed().as_secs_f64() * 1e6 / f64::from(N));
    assert_eq!(run(&mut g), [0xbbbb], "after the flush");
    // And back, with a flush.
    mem.write_u64(PT, PAGE_A | 7).unwrap();
    g.vm.flush_translations().unwrap();
    assert_eq!(run(&mut g), [0xaaaa]);
}

#[test]
/// FS.base set from outside takes effect (user TLS after the kernel changed it).
fn fs_base_set_from_outside_takes_effect() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        a.mov(eax, dword_ptr(0).fs())?;
        a.out(PORT_RESULT as u32, eax)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else { return };
    let mem = g.vm.memory().clone();
    mem.write_u32(PAGE_A, 0xaaaa).unwrap();
    mem.write_u32(PAGE_B, 0xbbbb).unwrap();
    for (base, kgs) in [(PAGE_A, 0), (PAGE_B, 0), (PAGE_A, 5), (PAGE_B, 5)] {
        let mut st = long_mode_state(CODE, 3);
        st.seg[cpu::state::sreg::FS].base = base;
        st.msr.kernel_gs_base = kgs;
        g.vcpu.set_state(&st).unwrap();
        let mut io = Io::default();
        let exit = g.vcpu.run(&mut io).unwrap();
        let want = if base == PAGE_A { 0xaaaa } else { 0xbbbb };
        assert_eq!(io.on(PORT_RESULT), [want], "fs.base {base:#x}, {exit}");
    }
}

#[test]
/// A user SSE store into a page KVM shadows as a page table (which KVM
/// write-protects) lands whole.
fn an_sse_store_into_a_shadowed_page_table_lands() {
    let Some(mut kvm) = open_kvm() else { return };
    let alias = VADDR + 0x1000;
    let code = asm(|a| {
        a.mov(eax, dword_ptr(VADDR))?; // builds the shadow of PT
        a.mov(rax, 0x1111_2222_3333_4444u64)?;
        a.movq(xmm0, rax)?;
        a.mov(rax, 0x5555_6666_7777_8888u64)?;
        a.movq(xmm1, rax)?;
        a.punpcklqdq(xmm0, xmm1)?;
        a.movups(xmmword_ptr(alias + 0x800), xmm0)?;
        a.mov(rax, 0x9999_aaaa_bbbb_ccccu64)?;
        a.mov(qword_ptr(alias + 0x810), rax)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else { return };
    let mem = g.vm.memory().clone();
    map_table(&mem);
    mem.write_u64(PT, PAGE_A | 7).unwrap();
    mem.write_u64(PT + 8, PT | 7).unwrap();
    let mut io = Io::default();
    let exit = g.vcpu.run(&mut io).unwrap();
    assert_eq!(exit, VmExit::Interrupted, "{exit}");
    assert_eq!(mem.read_u64(PT + 0x800).unwrap(), 0x1111_2222_3333_4444);
    assert_eq!(mem.read_u64(PT + 0x808).unwrap(), 0x5555_6666_7777_8888);
    assert_eq!(mem.read_u64(PT + 0x810).unwrap(), 0x9999_aaaa_bbbb_cccc);
}

#[test]
/// XMM registers come back right at fault exits: a load that faulted,
/// retried after the page is mapped, then a store that faults.
fn xmm_registers_come_back_at_fault_exits() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        a.mov(rax, 0x5555u64)?;
        a.movq(xmm0, rax)?;
        a.movdqu(xmm0, xmmword_ptr(VADDR))?;
        a.movdqu(xmmword_ptr(VADDR + 0x1000), xmm0)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else { return };
    hide_handler(&g, 14);
    let mem = g.vm.memory().clone();
    map_table(&mem);
    mem.write_u64(PAGE_A, 0xcccc_cccc).unwrap();
    let mut io = Io::default();
    let exit = g.vcpu.run(&mut io).unwrap();
    let s = g.vcpu.get_state().unwrap();
    assert!(matches!(exit, VmExit::InternalError { .. }), "{exit}");
    assert_eq!((s.cr2, s.xmm[0]), (VADDR, 0x5555));
    // "Handle" the fault: map the page, return to the faulting load.
    mem.write_u64(PT, PAGE_A | 7).unwrap();
    let top = s.gpr[reg::RSP];
    let mut u = s;
    u.rip = mem.read_u64(top + 8).unwrap();
    u.gpr[reg::RSP] = mem.read_u64(top + 32).unwrap();
    u.seg = long_mode_state(CODE, 3).seg;
    u.cpl = 3;
    u.rflags = mem.read_u64(top + 24).unwrap();
    g.vm.flush_translations().unwrap();
    g.vcpu.set_state(&u).unwrap();
    let exit = g.vcpu.run(&mut io).unwrap();
    let s = g.vcpu.get_state().unwrap();
    assert!(matches!(exit, VmExit::InternalError { .. }), "{exit}");
    assert_eq!((s.cr2, s.xmm[0]), (VADDR + 0x1000, 0xcccc_cccc));
}
