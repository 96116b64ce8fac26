//! Guests run under KVM. Each test skips, printing why, when /dev/kvm cannot
//! be used; none fails for that.
//!
//! The guests are entered directly in 64-bit long mode through the state
//! bridge: identity-mapped page tables (2 MiB pages, user-accessible), a GDT
//! with ring-0 and ring-3 segments and a TSS, and an IDT whose handlers report
//! the vector on a port. Results come back through port writes.
//!
//! What this host's kvm_pvm (AMD host) did when these were written; run
//! with `--nocapture` for the current figures:
//! - A ring-3 loop runs natively: 10M iterations of add/rol/dec/jnz in
//!   5.7 ms, 0.57 ns per iteration, with either irqchip. The same loop at
//!   CPL0 goes through KVM's emulator: 2.8 µs per iteration (~5000x slower).
//! - `int3` at CPL3 through a DPL3 gate is delivered: the CPL0 handler runs
//!   (through KVM's emulator), reports and IRETQs back to ring 3.
//! - `int 0x80` and `int 0x21` at CPL3 are not delivered: the guest gets #UD
//!   (vector 6) at the `int` instead. No exit reaches userspace.
//! - `int3`, `int 0x80` and `int 0x21` at CPL0: KVM_EXIT_INTERNAL_ERROR,
//!   suberror 1 (emulation failure), RIP at the instruction, and KVM's
//!   15-byte fetch window starting with it (`cc b0 02 e6 80 ...`).
//! - A port-write exit costs 30-49 µs when the `out` runs at CPL3 and
//!   10-12.5 µs at CPL0 (10,000 exits each, several runs).
//! - Real mode at the reset vector (CS F000 base FFFF0000, RIP FFF0, which is
//!   also KVM's own reset state) runs: the ROM's `mov al, 0x42; out 0x80, al;
//!   mov al, 0x43; out 0x80, al; hlt` reports both bytes and exits with HLT.
//! - CPUID at CPL0 returns the model, except that kvm_pvm adds host features
//!   that KVM_GET_SUPPORTED_CPUID does not list (XSAVE, AVX, AVX2, AVX-512,
//!   FMA, F16C, FSGSBASE, SMAP, ...); CPUID at CPL3 runs natively and shows
//!   the host's CPUID, hypervisor bit and KVM signature included.
//! - The state bridge round-trips every bridged field through the vCPU, with
//!   no MSR refused.

#![cfg(target_os = "linux")]

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use cpu::state::{flags, reg, sreg, CpuState};
use hvf_kvm_accel::kvm::{cpuid, Kvm};
use hvf_kvm_accel::{IrqChip, Vcpu, Vm, VmExit};
use iced_x86::code_asm::*;
use mmu::GuestMemory;

#[test]
fn ring3_loop_runs_natively_and_reports_through_a_port() {
    let Some(mut kvm) = open_kvm() else { return };
    const N: u32 = 10_000_000;
    let code = asm(|a| {
        let mut top = a.create_label();
        a.mov(ecx, N)?;
        a.xor(eax, eax)?;
        a.set_label(&mut top)?;
        a.add(eax, ecx)?;
        a.rol(eax, 3)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.out(PORT_RESULT as u32, eax)?;
        a.out(PORT_STOP as u32, al)
    });
    let mut want = 0u32;
    for i in (1..=N).rev() {
        want = want.wrapping_add(i).rotate_left(3);
    }
    for in_kernel_irqchip in [false, true] {
        let Some(mut g) = guest_with(&mut kvm, &code, 3, in_kernel_irqchip) else {
            return;
        };
        let mut io = Io::default();
        let t = Instant::now();
        let exit = g.vcpu.run(&mut io).unwrap();
        let elapsed = t.elapsed();
        assert_eq!(exit, VmExit::Interrupted);
        assert_eq!(io.on(PORT_RESULT), [want]);
        eprintln!(
            "ring-3 loop ({}): {N} iterations in {:.1} ms, {:.2} ns per iteration",
            g.vm.irqchip(),
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e9 / f64::from(N)
        );
        let s = g.vcpu.get_state().unwrap();
        assert_eq!(s.cpl, 3);
        assert_eq!(s.seg[sreg::CS].selector, USER_CS);
    }
}

/// CPUID leaves 1 (ECX), 0x8000_0001 (EDX) and 0x4000_0000 (EBX) as the
/// guest sees them at `cpl`, and the hidden features KVM shows anyway.
fn guest_cpuid(kvm: &mut Kvm, cpl: u8) -> Option<([u32; 3], Vec<&'static str>)> {
    let code = asm(|a| {
        a.mov(eax, 1u32)?;
        a.xor(ecx, ecx)?;
        a.cpuid()?;
        a.mov(eax, ecx)?;
        a.out(PORT_RESULT as u32, eax)?;
        a.mov(eax, 0x8000_0001u32)?;
        a.cpuid()?;
        a.mov(eax, edx)?;
        a.out(PORT_RESULT as u32, eax)?;
        a.mov(eax, 0x4000_0000u32)?;
        a.cpuid()?;
        a.mov(eax, ebx)?;
        a.out(PORT_RESULT as u32, eax)?;
        a.out(PORT_STOP as u32, al)
    });
    let mut g = guest(kvm, &code, cpl)?;
    let mut io = Io::default();
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    let r = io.on(PORT_RESULT);
    eprintln!("CPUID at CPL{cpl}: 1:ECX={:#010x} 80000001h:EDX={:#010x} 40000000h:EBX={:#010x}", r[0], r[1], r[2]);
    Some(([r[0], r[1], r[2]], g.vcpu.cpuid_still_visible().to_vec()))
}

/// The model reaches kernel code: every hidden bit of leaf 1 ECX and
/// 0x8000_0001 EDX is clear at CPL0, except those the vCPU's own CPUID
/// reports as still visible (kvm_pvm adds host features KVM does not list as
/// supported: XSAVE, AVX, ...). At CPL3 kvm_pvm lets CPUID run natively (no
/// CPUID faulting), so user code sees the host's CPUID: printed only.
/// The same loop at CPL0, where kvm_pvm runs guest code through KVM's
/// instruction emulator: fewer iterations, same result.
#[test]
fn ring0_loop_runs_and_reports() {
    let Some(mut kvm) = open_kvm() else { return };
    const N: u32 = 100_000;
    let code = asm(|a| {
        let mut top = a.create_label();
        a.mov(ecx, N)?;
        a.xor(eax, eax)?;
        a.set_label(&mut top)?;
        a.add(eax, ecx)?;
        a.rol(eax, 3)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.out(PORT_RESULT as u32, eax)?;
        a.out(PORT_STOP as u32, al)
    });
    let mut want = 0u32;
    for i in (1..=N).rev() {
        want = want.wrapping_add(i).rotate_left(3);
    }
    let Some(mut g) = guest(&mut kvm, &code, 0) else {
        return;
    };
    let mut io = Io::default();
    let t = Instant::now();
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    let elapsed = t.elapsed();
    assert_eq!(io.on(PORT_RESULT), [want]);
    eprintln!(
        "ring-0 loop: {N} iterations in {:.1} ms, {:.1} ns per iteration",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e9 / f64::from(N)
    );
}

#[test]
fn cpuid_model_reaches_the_guest() {
    let Some(mut kvm) = open_kvm() else { return };
    let Some(([ecx1, edx81, sig], still_visible)) = guest_cpuid(&mut kvm, 0) else {
        return;
    };
    eprintln!("hidden but still visible: {still_visible:?}");
    for h in cpuid::HIDDEN_BITS {
        let value = match (h.leaf, h.reg) {
            (1, cpuid::Reg::Ecx) => ecx1,
            (0x8000_0001, cpuid::Reg::Edx) => edx81,
            _ => continue,
        };
        let visible = value & (1 << h.bit) != 0;
        assert_eq!(visible, still_visible.contains(&h.name), "{}", h.name);
    }
    assert_eq!(ecx1 & (1 << 31), 0, "hypervisor bit visible");
    assert_ne!(edx81 & (1 << 29), 0, "long mode hidden");
    // "KVMK" would be KVM's signature.
    assert_ne!(sig, 0x4b4d_564b, "KVM signature visible");
    let Some(([ecx1, _, sig], _)) = guest_cpuid(&mut kvm, 3) else {
        return;
    };
    if ecx1 & (1 << 31) != 0 || sig == 0x4b4d_564b {
        eprintln!("  ring-3 CPUID is not virtualised here: it shows the host's hypervisor bit/signature");
    }
}

/// Run one software interrupt at `cpl` through a DPL3 gate. Returns the
/// exit, the results (1 before, 2 after) and the vectors the handlers saw.
fn soft_int(kvm: &mut Kvm, cpl: u8, vector: u8) -> Option<(VmExit, Vec<u32>, Vec<u32>)> {
    let code = asm(|a| {
        a.mov(al, 1u32)?;
        a.out(PORT_RESULT as u32, al)?;
        if vector == 3 {
            a.int3()?;
        } else {
            a.int(u32::from(vector))?;
        }
        a.mov(al, 2u32)?;
        a.out(PORT_RESULT as u32, al)?;
        a.out(PORT_STOP as u32, al)
    });
    let mut g = guest(kvm, &code, cpl)?;
    let mut io = Io::default();
    let exit = g.vcpu.run(&mut io).unwrap();
    eprintln!(
        "int {vector:#x} at CPL{cpl}: {exit}; results {:?}, handler vectors {:?}",
        io.on(PORT_RESULT),
        io.on(PORT_VECTOR)
    );
    if let VmExit::InternalError { rip, insn_bytes, .. } = &exit {
        // RIP and the bytes point at the interrupt instruction (after the
        // 2-byte mov and the 2-byte out), and the state is intact for a
        // fallback to pick up.
        assert_eq!(*rip, CODE + 4);
        assert_eq!(insn_bytes.first(), Some(if vector == 3 { &0xcc } else { &0xcd }));
        let s = g.vcpu.get_state().unwrap();
        assert_eq!((s.rip, s.cpl), (CODE + 4, cpl));
    }
    Some((exit, io.on(PORT_RESULT), io.on(PORT_VECTOR)))
}

/// `int3` and `int n` at CPL3 and CPL0. Hardware KVM delivers all of them;
/// kvm_pvm (observed): int3 at CPL3 is delivered; `int 0x80` and `int 0x21`
/// at CPL3 raise #UD in the guest instead; at CPL0 each one is an emulation
/// failure (internal error, suberror 1).
#[test]
fn software_interrupts_from_ring3_and_ring0() {
    let Some(mut kvm) = open_kvm() else { return };
    for cpl in [3, 0] {
        for vector in [3u8, 0x80, 0x21] {
            let Some((exit, results, vectors)) = soft_int(&mut kvm, cpl, vector) else {
                return;
            };
            match exit {
                VmExit::Interrupted if vectors == [u32::from(vector)] => {
                    assert_eq!(results, [1, 2])
                }
                // #UD delivered instead of the interrupt.
                VmExit::Interrupted => assert_eq!((results, vectors), (vec![1], vec![6])),
                VmExit::InternalError { suberror, .. } => assert_eq!(suberror, 1),
                other => panic!("unexpected exit {other:?}"),
            }
        }
    }
}

/// 10,000 port writes in a loop, at CPL3 and at CPL0.
#[test]
fn pio_exit_cost() {
    let Some(mut kvm) = open_kvm() else { return };
    const N: u32 = 10_000;
    let code = asm(|a| {
        let mut top = a.create_label();
        a.mov(ecx, N)?;
        a.set_label(&mut top)?;
        a.out(PORT_RESULT as u32, al)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.out(PORT_STOP as u32, al)
    });
    for cpl in [3, 0] {
        let Some(mut g) = guest(&mut kvm, &code, cpl) else {
            return;
        };
        let mut io = Io::default();
        let t = Instant::now();
        assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
        let elapsed = t.elapsed();
        assert_eq!(io.on(PORT_RESULT).len(), N as usize);
        eprintln!(
            "PIO exits at CPL{cpl}: {N} in {:.1} ms, {:.2} µs per exit ({:.0} exits/s)",
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e6 / f64::from(N),
            f64::from(N) / elapsed.as_secs_f64()
        );
    }
}

/// The reset state: real mode, CS F000 with base FFFF0000, RIP FFF0.
#[test]
fn reset_vector_real_mode() {
    let Some(mut kvm) = open_kvm() else { return };
    let mut mem = GuestMemory::new(1 << 20).unwrap();
    let mut rom = vec![0xf4u8; 0x10000];
    // mov al, 0x42; out 0x80, al; mov al, 0x43; out 0x80, al; hlt
    rom[0xfff0..0xfff9].copy_from_slice(&[0xb0, 0x42, 0xe6, 0x80, 0xb0, 0x43, 0xe6, 0x80, 0xf4]);
    mem.add_rom("bios", 0xffff_0000, 0x10000, &rom).unwrap();
    kvm.set_in_kernel_irqchip(false);
    let vm = match kvm.create_kvm_vm(Arc::new(mem)) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("skipping: KVM cannot create a VM here: {e}");
            return;
        }
    };
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    let before = vcpu.get_state().unwrap();
    eprintln!(
        "KVM reset state: CS {:04x} base {:#x} rip {:#x} cr0 {:#x}",
        before.seg[sreg::CS].selector,
        before.seg[sreg::CS].base,
        before.rip,
        before.cr0
    );
    vcpu.set_state(&CpuState::reset()).unwrap();
    let mut io = Io::default();
    let exit = vcpu.run(&mut io).unwrap();
    let s = vcpu.get_state().unwrap();
    eprintln!("reset vector: exit {exit:?}, port 0x80 got {:x?}, rip now {:#x}", io.on(PORT_RESULT), s.rip);
    match exit {
        VmExit::Hlt => {
            assert_eq!(io.on(PORT_RESULT), [0x42, 0x43]);
            assert_eq!(s.rip, 0xfff9);
        }
        VmExit::InternalError { .. } | VmExit::FailEntry { .. } | VmExit::Shutdown => {
            eprintln!("  real mode does not run here: {exit}");
        }
        other => panic!("unexpected exit {other:?}"),
    }
}

/// A state through a real vCPU and back.
#[test]
fn state_round_trip_through_vcpu() {
    let Some(mut kvm) = open_kvm() else { return };
    let Some(mut g) = guest(&mut kvm, &[0xf4], 3) else {
        return;
    };
    let mut s = long_mode_state(CODE, 3);
    for (i, r) in s.gpr.iter_mut().enumerate() {
        *r = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
    }
    s.gpr[reg::RSP] = USER_STACK - 0x40;
    s.rflags |= flags::CF | flags::ZF | flags::SF | flags::OF | flags::AC | flags::DF;
    s.seg[sreg::FS].base = 0x7f00_1234_5000;
    s.seg[sreg::GS].base = 0xffff_8880_0000_0000;
    s.cr2 = 0x1234_5678;
    s.msr.star = 0x0023_0010_0000_0000;
    s.msr.lstar = 0xffff_ffff_8100_0000;
    s.msr.cstar = 0xffff_ffff_8100_1000;
    s.msr.sfmask = 0x4_7700;
    s.msr.kernel_gs_base = 0xffff_8880_1000_0000;
    s.msr.sysenter_cs = 0x10;
    s.msr.sysenter_esp = 0xffff_8880_2000_0000;
    s.msr.sysenter_eip = 0xffff_ffff_8100_2000;
    s.msr.pat = 0x0007_0406_0007_0406 ^ 0x0100;
    s.msr.tsc_aux = 7;
    s.msr.mtrr_def_type = 0xc06;
    s.msr.tsc_adjust = 1000;
    s.fpu.fcw = 0x027f;
    s.fpu.fsw = 7 << 11;
    s.fpu.regs[7] = cpu::state::F80 { mantissa: 0xc000_0000_0000_0000, sign_exp: 0x4000, _pad: [0; 3] };
    s.fpu.ftw = 0x3fff; // R7 valid, the rest empty.
    for (i, x) in s.xmm.iter_mut().enumerate() {
        *x = u128::from(i as u64 + 1) * 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10;
    }
    s.mxcsr = 0x1fa0;
    s.dr[0] = 0x1000;
    s.dr[7] = 0x400;
    g.vcpu.set_state(&s).unwrap();
    let back = g.vcpu.get_state().unwrap();
    eprintln!("MSRs KVM refused: {:?}", g.vm.refused_msrs());

    let mut diffs = Vec::new();
    macro_rules! cmp {
        ($($f:tt)*) => {
            if s.$($f)* != back.$($f)* {
                diffs.push(format!("{}: set {:x?}, got {:x?}", stringify!($($f)*), s.$($f)*, back.$($f)*));
            }
        };
    }
    cmp!(gpr);
    cmp!(rip);
    cmp!(rflags);
    for i in 0..6 {
        cmp!(seg[i]);
    }
    cmp!(tr);
    cmp!(ldtr);
    cmp!(gdtr);
    cmp!(idtr);
    cmp!(cr0);
    cmp!(cr2);
    cmp!(cr3);
    cmp!(cr4);
    cmp!(cr8);
    cmp!(efer);
    cmp!(xcr0);
    cmp!(dr);
    cmp!(msr);
    cmp!(fpu);
    cmp!(xmm);
    cmp!(mxcsr);
    cmp!(cpl);
    for d in &diffs {
        eprintln!("round trip difference: {d}");
    }
    assert!(diffs.is_empty(), "{} fields changed through the vCPU", diffs.len());
}

/// The MSRs kept by value (MTRRs, BIOS_SIGN_ID, MCG_STATUS) and a pending
/// NMI go into a vCPU and come back. MSRs KVM refuses are named and left
/// out of the comparison.
#[test]
fn table_msrs_and_a_pending_nmi_round_trip_through_vcpu() {
    use hvf_kvm_accel::bridge::{msr_index, BRIDGE_MSRS};
    let Some(mut kvm) = open_kvm() else { return };
    let Some(mut g) = guest(&mut kvm, &[0xf4], 0) else {
        return;
    };
    let mut s = long_mode_state(CODE, 0);
    let table: Vec<u32> = BRIDGE_MSRS.iter().map(|e| e.0).filter(|i| s.msr_table.get(*i).is_some()).collect();
    assert!(table.len() >= 29, "bridged table MSRs: {table:x?}");
    for (n, &i) in table.iter().enumerate() {
        let v = match i {
            msr_index::BIOS_SIGN_ID => 0x1_0000_0000,
            msr_index::MCG_STATUS => 0,
            // PHYSBASE: WB at n MiB; PHYSMASK: 1 MiB, valid.
            _ if (0x200..0x210).contains(&i) && i % 2 == 0 => (n as u64) << 20 | 6,
            _ if (0x200..0x210).contains(&i) => 0xf_fff0_0800,
            // Fixed ranges: WB and WT alternating.
            _ => 0x0604_0604_0604_0604 ^ n as u64,
        };
        assert!(s.msr_table.set(i, v));
    }
    s.events.nmi_pending = true;
    s.nmi_blocked = 1;
    g.vcpu.set_state(&s).unwrap();
    // A fresh read from KVM: set_state leaves no snapshot read from KVM.
    let back = g.vcpu.get_state().unwrap();
    let refused = g.vm.refused_msrs();
    eprintln!("MSRs KVM refused: {refused:?}");
    let mut diffs = Vec::new();
    for (index, name) in BRIDGE_MSRS.iter().filter(|e| table.contains(&e.0)) {
        if refused.contains(name) {
            continue;
        }
        let (set, got) = (s.msr_table.get(*index), back.msr_table.get(*index));
        if set != got {
            diffs.push(format!("{name}: set {set:x?}, got {got:x?}"));
        }
    }
    if back.events.nmi_pending != s.events.nmi_pending {
        diffs.push(format!("nmi_pending: got {}", back.events.nmi_pending));
    }
    if back.nmi_blocked != s.nmi_blocked {
        diffs.push(format!("nmi_blocked: got {}", back.nmi_blocked));
    }
    for d in &diffs {
        eprintln!("round trip difference: {d}");
    }
    assert!(diffs.is_empty(), "{} fields changed through the vCPU", diffs.len());
    let carried = table.iter().filter(|i| !refused.contains(&hvf_kvm_accel::bridge::msr_name(**i))).count();
    eprintln!("table MSRs carried by KVM: {carried} of {}", table.len());
    assert!(carried > 0, "KVM took none of the table's MSRs");
}

/// Diagnostic: what KVM offers here and what the model keeps.
#[test]
fn kvm_pvm_capabilities() {
    let Some(mut kvm) = open_kvm() else { return };
    let sup = kvm.supported_cpuid().to_vec();
    let shown: Vec<&str> = cpuid::HIDDEN_BITS
        .iter()
        .filter(|h| cpuid::has(&sup, h.leaf, h.subleaf, h.reg, h.bit))
        .map(|h| h.name)
        .collect();
    eprintln!("KVM_GET_SUPPORTED_CPUID: {} entries; hidden items KVM offered: {shown:?}", sup.len());
    let mem = Arc::new(GuestMemory::new(RAM).unwrap());
    kvm.set_in_kernel_irqchip(true);
    match kvm.create_kvm_vm(mem) {
        Ok(vm) => {
            eprintln!("in-kernel irqchip: {}", vm.irqchip());
            let model = vm.cpuid();
            for h in cpuid::HIDDEN_BITS.iter().filter(|h| !h.userspace_irqchip_only) {
                assert!(!cpuid::has(model, h.leaf, h.subleaf, h.reg, h.bit), "{} still visible", h.name);
            }
            let _vcpu = vm.create_vcpu(0).unwrap();
            if let IrqChip::InKernel { .. } = vm.irqchip() {
                vm.set_irq_line(4, true).unwrap();
                vm.set_irq_line(4, false).unwrap();
            }
        }
        Err(e) => eprintln!("skipping: KVM cannot create a VM here: {e}"),
    }
}

/// XCR0 travels through KVM_SET_XCRS and KVM_GET_XCRS with CR4.OSXSAVE
/// set (what the guest's XGETBV would read is not checked: kvm_pvm runs
/// ring 3 with the host's XCR0).
#[test]
fn xcr0_round_trips_through_vcpu() {
    let Some(mut kvm) = open_kvm() else { return };
    let Some(mut g) = guest(&mut kvm, &[0xf4], 3) else {
        return;
    };
    let mut s = long_mode_state(CODE, 3);
    s.cr4 |= cpu::state::cr::CR4_OSXSAVE;
    s.xcr0 = 3;
    if let Err(e) = g.vcpu.set_state(&s) {
        eprintln!("skipping: this KVM refuses CR4.OSXSAVE with XCR0 = 3 ({e})");
        return;
    }
    let back = g.vcpu.get_state().unwrap();
    assert_eq!((back.cr4 & cpu::state::cr::CR4_OSXSAVE, back.xcr0), (cpu::state::cr::CR4_OSXSAVE, 3));
    // XCR0 = x87 only, changed while CR4.OSXSAVE stays set.
    let mut s1 = back;
    s1.xcr0 = 1;
    g.vcpu.set_state(&s1).unwrap();
    assert_eq!(g.vcpu.get_state().unwrap().xcr0, 1);
}

/// While guest memory logs writes (a live migration), the RAM slots carry
/// KVM_MEM_LOG_DIRTY_PAGES and each round takes KVM's log: stores made at
/// CPL 3 in KVM show up, from a slot split meanwhile too (its log is
/// taken before it goes), and from a VM that went before the round.
#[test]
fn dirty_logging_takes_the_stores_made_in_kvm() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        a.mov(rax, 0x40_0000u64)?;
        a.mov(dword_ptr(rax), 1u32)?;
        a.mov(dword_ptr(rax + 0x1000), 2u32)?;
        a.mov(rax, 0x60_0000u64)?;
        a.mov(dword_ptr(rax + 8), 3u32)?;
        a.out(PORT_STOP as u32, al)?;
        a.mov(rax, 0x70_0000u64)?;
        a.mov(dword_ptr(rax), 4u32)?;
        a.out(PORT_STOP as u32, al)?;
        a.mov(rax, 0x78_0000u64)?;
        a.mov(dword_ptr(rax), 5u32)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else { return };
    let mem = Arc::clone(g.vm.memory());
    if let Err(e) = mem.start_dirty_log() {
        eprintln!("skipping: {e}");
        return;
    }
    let mut io = Io::default();
    let t = Instant::now();
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    let round = mem.take_dirty();
    let took = t.elapsed();
    for page in [0x40_0000, 0x40_1000, 0x60_0000] {
        assert!(round.contains(page), "{page:#x} was written in KVM: {:x?}", round.pages().collect::<Vec<_>>());
    }
    assert!(!round.contains(0x50_0000) && !round.contains(0x70_0000), "{:x?}", round.pages().collect::<Vec<_>>());
    assert_eq!(mem.read_u32(0x60_0008).unwrap(), 3);
    // A store, then the slot that holds it is split (a page hidden, as
    // split execution hides kernel code).
    io.stop = false;
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    g.vm.hide(0x7f_f000, 0x80_0000).unwrap();
    let round = mem.take_dirty();
    assert!(round.contains(0x70_0000), "{:x?}", round.pages().collect::<Vec<_>>());
    assert!(!round.contains(0x40_0000), "a round starts clean");
    // A store, then the VM goes before the round.
    io.stop = false;
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    drop(g);
    let round = mem.take_dirty();
    assert!(round.contains(0x78_0000), "{:x?}", round.pages().collect::<Vec<_>>());
    assert_eq!(mem.dirty_log_error(), None);
    mem.stop_dirty_log();
    eprintln!("KVM dirty log: the first run and its round took {:.2} ms", took.as_secs_f64() * 1e3);
}
