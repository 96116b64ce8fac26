//! Around `Vcpu::run` under KVM: kicks from other threads, the machine's
//! boot states, the emulation fallback, irqfd/ioeventfd and the statistics.
//! Each test skips, printing why, when /dev/kvm cannot be used.
//!
//! Run with `--nocapture` for the figures (kick latency, loop speed in each
//! boot mode, the fallback's round-trip cost). What this host's kvm_pvm did
//! when these were written (2 busy cores, so times vary by 2x):
//! - A kick ends a CPL3 spin, a CPL0 spin (KVM's emulator) and a CPL0 HLT in
//!   the in-kernel LAPIC; median 50-150 µs from `kick()` to `run` returning,
//!   worst 14 ms.
//! - CPL0 code runs in KVM's instruction emulator in every boot mode: the
//!   4-instruction loop takes 5-7 µs per iteration in real mode at the reset
//!   vector, in 32-bit protected mode (multiboot) and in 64-bit long mode
//!   (Linux), against ~1 ns at CPL3.
//! - `int3` and `cmpxchg16b` at CPL0 are emulation failures; the fallback
//!   round trip (state out, one interpreter step, state in) costs ~45 µs,
//!   mostly 7-8 vCPU ioctls of ~5.5 µs each. The #BP handler's IRETQ at CPL0
//!   runs in KVM.
//! - The in-kernel PIC delivers an irqfd interrupt (also after message
//!   routes replaced KVM's routing table), and the in-kernel local APIC a
//!   KVM_SIGNAL_MSI message and an irqfd routed to a message, to a CPL0
//!   guest waiting in HLT; ioeventfds take port (datamatch) and MMIO writes at CPL3 and
//!   CPL0 without exits.

#![cfg(target_os = "linux")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use cpu::state::CpuState;
use cpu::{Cpu, Platform, StopReason};
use firmware::boot::{BootCpuState, BootMode};
use hvf_kvm_accel::fallback::{emulate_one, Emulated};
use hvf_kvm_accel::kvm::{Kvm, KvmVcpu, KvmVm};
use hvf_kvm_accel::{IoEventAddr, PendingEvent, Vcpu, Vm, VmExit};
use iced_x86::code_asm::*;
use mmu::GuestMemory;

/// Aborts the test process if a run that should have been kicked hangs.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn arm(what: &'static str, limit: Duration) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if d.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
            eprintln!("{what}: the vCPU did not return within {limit:?}; aborting");
            std::process::abort();
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An endless loop: `jmp $`.
fn spin() -> Vec<u8> {
    asm(|a| {
        let mut here = a.create_label();
        a.set_label(&mut here)?;
        a.jmp(here)
    })
}

/// Run `vcpu` here while another thread kicks it `delay` after the run
/// starts. Returns the exit and the time from the kick to the return.
fn run_and_kick(vcpu: &mut KvmVcpu, io: &mut Io, delay: Duration) -> (VmExit, Duration) {
    let kicker = vcpu.kicker().unwrap();
    let kicked_at = Arc::new(Mutex::new(None));
    let k = kicked_at.clone();
    let h = thread::spawn(move || {
        thread::sleep(delay);
        let t = Instant::now();
        kicker.kick();
        *k.lock().unwrap() = Some(t);
    });
    let exit = vcpu.run(io).unwrap();
    let back = Instant::now();
    h.join().unwrap();
    let t = kicked_at.lock().unwrap().expect("kicked");
    (exit, back.saturating_duration_since(t))
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() - 1) * p / 100]
}

/// The task: a CPL3 endless loop (native on kvm_pvm) is stopped by a kick
/// from another thread within 100 ms, again and again; the same at CPL0
/// (KVM's emulator here) and for a vCPU halted in the in-kernel LAPIC.
#[test]
fn kick_stops_a_spinning_or_halted_vcpu() {
    let Some(mut kvm) = open_kvm() else { return };
    let _w = Watchdog::arm("kick test", Duration::from_secs(60));
    let halt = asm(|a| {
        a.cli()?;
        let mut here = a.create_label();
        a.set_label(&mut here)?;
        a.hlt()?;
        a.jmp(here)
    });
    let cases: [(&str, Vec<u8>, u8, bool); 3] = [
        ("CPL3 loop", spin(), 3, false),
        ("CPL0 loop", spin(), 0, false),
        ("CPL0 cli; hlt (in-kernel LAPIC)", halt, 0, true),
    ];
    for (what, code, cpl, in_kernel) in cases {
        let Some(mut g) = guest_with(&mut kvm, &code, cpl, in_kernel) else {
            return;
        };
        let mut io = Io::default();
        let mut lat = Vec::new();
        const KICKS: usize = 20;
        for _ in 0..KICKS {
            let (exit, l) = run_and_kick(&mut g.vcpu, &mut io, Duration::from_millis(5));
            assert_eq!(exit, VmExit::Interrupted, "{what}");
            lat.push(l);
        }
        let s = g.vcpu.get_state().unwrap();
        assert_eq!(s.cpl, cpl, "{what}");
        assert!((CODE..CODE + 4).contains(&s.rip), "{what}: rip {:#x}", s.rip);
        let stats = g.vcpu.stats();
        assert_eq!(stats.kicks, KICKS as u64);
        assert!(stats.exits.interrupted >= KICKS as u64, "{:?}", stats.exits);
        let max = *lat.iter().max().unwrap();
        let median = percentile(&mut lat, 50);
        eprintln!(
            "kick latency, {what}: median {:.1} µs, max {:.1} µs over {KICKS} kicks; {} entries, {:.1} ms in KVM_RUN",
            median.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6,
            stats.entries,
            stats.in_guest.as_secs_f64() * 1e3
        );
        assert!(max < Duration::from_millis(100), "{what}: kick took {max:?}");
    }
}

/// A kick while no run is in progress makes the next run return at once,
/// without entering the guest; the run after it goes on normally. A kick
/// after the vCPU is gone does nothing.
#[test]
fn kick_before_run_and_after_drop() {
    let Some(mut kvm) = open_kvm() else { return };
    let _w = Watchdog::arm("kick before run", Duration::from_secs(30));
    let code = asm(|a| {
        a.mov(al, 7u32)?;
        a.out(PORT_RESULT as u32, al)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else {
        return;
    };
    let kicker = g.vcpu.kicker().unwrap();
    kicker.kick();
    kicker.clone().kick(); // merges with the first
    let mut io = Io::default();
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    assert!(io.writes.is_empty(), "the guest ran: {:?}", io.writes);
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    assert_eq!(io.on(PORT_RESULT), [7], "the second run reached the guest");
    assert_eq!(g.vcpu.stats().kicks, 2);
    drop(g);
    kicker.kick();
}

/// Stops the run and kicks the vCPU from its own exit handler, as a device
/// filing a machine event does.
struct KickOnStop {
    io: Io,
    kicker: hvf_kvm_accel::VcpuKicker,
}

impl cpu::Platform for KickOnStop {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.io.io_read(port, size)
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.io.io_write(port, size, value);
        if port == PORT_STOP {
            self.kicker.kick();
        }
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.io.mmio_read(addr, data);
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.io.mmio_write(addr, data);
    }
    fn stop_requested(&self) -> bool {
        self.io.stop_requested()
    }
}

/// A kick from the vCPU thread itself together with a stop request ends the
/// run once: the next run enters the guest.
#[test]
fn kick_with_stop_request_ends_one_run() {
    let Some(mut kvm) = open_kvm() else { return };
    let _w = Watchdog::arm("kick from the handler", Duration::from_secs(30));
    let code = asm(|a| {
        a.out(PORT_STOP as u32, al)?;
        a.mov(al, 9u32)?;
        a.out(PORT_RESULT as u32, al)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else {
        return;
    };
    let kicker = g.vcpu.kicker().unwrap();
    let mut h = KickOnStop { io: Io::default(), kicker };
    assert_eq!(g.vcpu.run(&mut h).unwrap(), VmExit::Interrupted);
    assert!(h.io.on(PORT_RESULT).is_empty());
    h.io.stop = false;
    assert_eq!(g.vcpu.run(&mut h).unwrap(), VmExit::Interrupted);
    assert_eq!(h.io.on(PORT_RESULT), [9], "the second run went on in the guest");
}

/// `cpu::state` from the loaders' neutral boot state: the machine's own
/// conversion, so these tests run what `ferrovm` runs.
#[path = "../../vmm/src/boot.rs"]
mod boot;
use boot::cpu_state as boot_cpu_state;

/// Loop iterations the boot-mode programs run.
const BOOT_LOOP: u32 = 50_000;

fn loop_result(n: u32) -> u32 {
    let mut want = 0u32;
    for i in (1..=n).rev() {
        want = want.wrapping_add(i).rotate_left(3);
    }
    want
}

/// The add/rol/dec/jnz loop of the other tests, result out on PORT_RESULT.
fn emit_loop(a: &mut CodeAssembler, n: u32) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(ecx, n)?;
    a.xor(eax, eax)?;
    a.set_label(&mut top)?;
    a.add(eax, ecx)?;
    a.rol(eax, 3)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.out(PORT_RESULT as u32, eax)
}

/// Run a boot-state guest with the in-kernel irqchip (the machine's
/// default) until PORT_STOP; print the time per loop iteration.
fn run_boot_guest(kvm: &mut Kvm, what: &str, mem: GuestMemory, state: &CpuState) -> Option<Io> {
    kvm.set_in_kernel_irqchip(true);
    let vm = match kvm.create_kvm_vm(Arc::new(mem)) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("skipping: KVM cannot create a VM here: {e}");
            return None;
        }
    };
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.set_state(state).unwrap();
    let back = vcpu.get_state().unwrap();
    assert_eq!(back.rip, state.rip, "{what}");
    assert_eq!(back.seg, state.seg, "{what}: segments");
    assert_eq!(
        (back.cr0, back.cr3, back.cr4, back.efer),
        (state.cr0, state.cr3, state.cr4, state.efer),
        "{what}: control registers"
    );
    let mut io = Io::default();
    let t = Instant::now();
    let exit = vcpu.run(&mut io).unwrap();
    let took = t.elapsed();
    assert_eq!(exit, VmExit::Interrupted, "{what}: {exit}");
    let stats = vcpu.stats();
    eprintln!(
        "{what}: {BOOT_LOOP} loop iterations at CPL{} in {:.1} ms, {:.2} µs per iteration; exits: {}",
        back.cpl,
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / f64::from(BOOT_LOOP),
        stats.exits
    );
    Some(io)
}

/// Multiboot: 32-bit protected mode, paging off, flat segments from the boot
/// GDT, EAX = 0x2BADB002, EBX = the information structure.
#[test]
fn multiboot_state_runs_32bit_cpl0_code() {
    use firmware::boot::{write_boot_gdt, BOOT_STACK_POINTER};
    use firmware::multiboot::{MULTIBOOT_BOOTLOADER_MAGIC, MULTIBOOT_INFO_ADDR};
    let Some(mut kvm) = open_kvm() else { return };
    const ENTRY: u64 = 0x10_0000;
    let mem = GuestMemory::new(16 << 20).unwrap();
    write_boot_gdt(&mem, BootMode::Protected32).unwrap();
    let mut a = CodeAssembler::new(32).unwrap();
    a.out(PORT_RESULT as u32, eax).unwrap();
    a.mov(eax, ebx).unwrap();
    a.out(PORT_RESULT as u32, eax).unwrap();
    a.push(0x1234_5678).unwrap();
    a.pop(eax).unwrap();
    a.out(PORT_RESULT as u32, eax).unwrap();
    a.mov(eax, esp).unwrap();
    a.out(PORT_RESULT as u32, eax).unwrap();
    emit_loop(&mut a, BOOT_LOOP).unwrap();
    a.out(PORT_STOP as u32, al).unwrap();
    mem.write(ENTRY, &a.assemble(ENTRY).unwrap()).unwrap();
    let mut b = BootCpuState::protected32(ENTRY);
    b.rax = u64::from(MULTIBOOT_BOOTLOADER_MAGIC);
    b.rbx = MULTIBOOT_INFO_ADDR;
    b.rsp = BOOT_STACK_POINTER;
    let state = boot_cpu_state(&b);
    assert_eq!(state.code_bits(), 32);
    let Some(io) = run_boot_guest(&mut kvm, "multiboot (32-bit PM)", mem, &state) else {
        return;
    };
    assert_eq!(
        io.on(PORT_RESULT),
        [
            MULTIBOOT_BOOTLOADER_MAGIC,
            MULTIBOOT_INFO_ADDR as u32,
            0x1234_5678,
            BOOT_STACK_POINTER as u32,
            loop_result(BOOT_LOOP)
        ]
    );
}

/// Direct 64-bit Linux: long mode, CS 0x10, paging on through the loader's
/// identity map, RSI = the zero page.
#[test]
fn linux_64bit_state_runs_cpl0_code() {
    use firmware::boot::{write_boot_gdt, write_identity_page_tables, BOOT_STACK_POINTER};
    use firmware::linux::ZERO_PAGE_ADDR;
    let Some(mut kvm) = open_kvm() else { return };
    const ENTRY: u64 = 0x10_0000;
    let mem = GuestMemory::new(16 << 20).unwrap();
    write_boot_gdt(&mem, BootMode::Long64).unwrap();
    let page_tables = write_identity_page_tables(&mem).unwrap();
    // A zero page with something to read through paging.
    mem.write_u32(ZERO_PAGE_ADDR + 0x1e0, 0xfeed_f00d).unwrap();
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(rax, rsi).unwrap();
    a.out(PORT_RESULT as u32, eax).unwrap();
    a.mov(eax, dword_ptr(rsi + 0x1e0)).unwrap();
    a.out(PORT_RESULT as u32, eax).unwrap();
    a.mov(eax, cs).unwrap();
    a.out(PORT_RESULT as u32, eax).unwrap();
    a.push(0x1234_5678).unwrap();
    a.pop(rax).unwrap();
    a.out(PORT_RESULT as u32, eax).unwrap();
    emit_loop(&mut a, BOOT_LOOP).unwrap();
    a.out(PORT_STOP as u32, al).unwrap();
    mem.write(ENTRY, &a.assemble(ENTRY).unwrap()).unwrap();
    let mut b = BootCpuState::long64(ENTRY, page_tables);
    b.rsi = ZERO_PAGE_ADDR;
    b.rsp = BOOT_STACK_POINTER;
    let state = boot_cpu_state(&b);
    assert!(state.code64());
    let Some(io) = run_boot_guest(&mut kvm, "Linux (64-bit long mode)", mem, &state) else {
        return;
    };
    assert_eq!(io.on(PORT_RESULT), [ZERO_PAGE_ADDR as u32, 0xfeed_f00d, 0x10, 0x1234_5678, loop_result(BOOT_LOOP)]);
}

/// The reset vector: real mode, CS F000 base FFFF0000, RIP FFF0, jumping
/// back into the ROM for the loop.
#[test]
fn reset_state_runs_real_mode_code() {
    let Some(mut kvm) = open_kvm() else { return };
    let mut mem = GuestMemory::new(1 << 20).unwrap();
    let mut rom = vec![0xf4u8; 0x10000];
    let mut a = CodeAssembler::new(16).unwrap();
    a.mov(al, 0x42u32).unwrap();
    a.out(PORT_RESULT as u32, al).unwrap();
    emit_loop(&mut a, BOOT_LOOP).unwrap();
    a.out(PORT_STOP as u32, al).unwrap();
    a.hlt().unwrap();
    let body = a.assemble(0).unwrap();
    rom[..body.len()].copy_from_slice(&body);
    // jmp near 0000 (wraps in the 64 KiB segment).
    rom[0xfff0..0xfff3].copy_from_slice(&[0xe9, 0x0d, 0x00]);
    mem.add_rom("bios", 0xffff_0000, 0x10000, &rom).unwrap();
    let state = boot_cpu_state(&BootCpuState::reset());
    assert_eq!(state.code_bits(), 16);
    let Some(io) = run_boot_guest(&mut kvm, "reset vector (real mode)", mem, &state) else {
        return;
    };
    assert_eq!(io.on(PORT_RESULT), [0x42, loop_result(BOOT_LOOP)]);
}

/// The interpreter's view of the test machine: records port writes.
#[derive(Clone, Default)]
struct Ports(Arc<Mutex<Vec<(u16, u32)>>>);

impl Platform for Ports {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        u32::MAX
    }
    fn io_write(&mut self, port: u16, _size: u8, value: u32) {
        self.0.lock().unwrap().push((port, value));
    }
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {}
}

/// Run `g` to PORT_STOP, sending every emulation failure through the
/// interpreter. Returns the mnemonics emulated and the round-trip times.
fn run_with_fallback(g: &mut Guest, io: &mut Io, cpu: &mut Cpu) -> (Vec<String>, Vec<Duration>) {
    let mut names = Vec::new();
    let mut took = Vec::new();
    loop {
        match g.vcpu.run(io).unwrap() {
            VmExit::Interrupted if io.stop => return (names, took),
            VmExit::InternalError { suberror: 1, .. } => match emulate_one(&mut g.vcpu, cpu).unwrap() {
                Emulated::Ran { mnemonic, stop, took: t } => {
                    assert_eq!(stop, StopReason::Budget, "{mnemonic}");
                    names.push(mnemonic);
                    took.push(t);
                    assert!(names.len() < 10_000, "fallback loop: {names:?}");
                }
                Emulated::EventPending(ev) => panic!("unexpected pending event {ev}"),
            },
            other => panic!("unexpected exit {other}"),
        }
    }
}

/// `int3` at CPL0 is an emulation failure here. The interpreter delivers it
/// through the guest's IDT; the CPL0 handler reports the vector and IRETQs,
/// and the guest goes on to its port writes. On KVM that runs `int3` itself
/// the same program runs with no fallback.
#[test]
fn fallback_runs_int3_at_cpl0_through_the_idt() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        a.mov(al, 1u32)?;
        a.out(PORT_RESULT as u32, al)?;
        a.mov(rbx, 0x1122_3344_5566_7788u64)?;
        a.int3()?;
        a.mov(rax, rbx)?;
        a.out(PORT_RESULT as u32, eax)?;
        a.mov(al, 2u32)?;
        a.out(PORT_RESULT as u32, al)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 0) else {
        return;
    };
    let mut cpu = Cpu::new(g.vm.memory().clone(), Box::new(Ports::default()));
    let mut io = Io::default();
    let (names, took) = run_with_fallback(&mut g, &mut io, &mut cpu);
    eprintln!(
        "int3 at CPL0: emulated {names:?}; round trips {:?}",
        took.iter().map(|t| format!("{:.1} µs", t.as_secs_f64() * 1e6)).collect::<Vec<_>>()
    );
    assert_eq!(io.on(PORT_RESULT), [1, 0x5566_7788, 2]);
    assert_eq!(io.on(PORT_VECTOR), [3], "the #BP handler ran once");
    let s = g.vcpu.get_state().unwrap();
    assert_eq!((s.cpl, s.gpr[cpu::state::reg::RSP]), (0, KERNEL_STACK));
    let stats = g.vcpu.stats();
    assert_eq!(stats.exits.internal_error, names.len() as u64);
    if !names.is_empty() {
        assert_eq!(names[0], "int3");
    }
}

/// `cmpxchg16b` at CPL0 (a Linux boot dies on it here): the interpreter runs
/// it and the guest sees the result, flags included.
#[test]
fn fallback_runs_cmpxchg16b_at_cpl0() {
    let Some(mut kvm) = open_kvm() else { return };
    const DATA: u64 = 0x2_0000;
    let code = asm(|a| {
        a.mov(rax, 1u64)?;
        a.mov(rdx, 2u64)?;
        a.mov(rbx, 0x3333_3333_0000_0003u64)?;
        a.mov(rcx, 0x4444_4444_0000_0004u64)?;
        a.mov(rsi, DATA)?;
        a.lock().cmpxchg16b(xmmword_ptr(rsi))?;
        a.setz(al)?;
        a.out(PORT_RESULT as u32, al)?;
        a.mov(rax, qword_ptr(rsi))?;
        a.out(PORT_RESULT as u32, eax)?;
        a.mov(rax, qword_ptr(rsi + 8))?;
        a.shr(rax, 32)?;
        a.out(PORT_RESULT as u32, eax)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 0) else {
        return;
    };
    g.vm.memory().write_u64(DATA, 1).unwrap();
    g.vm.memory().write_u64(DATA + 8, 2).unwrap();
    let mut cpu = Cpu::new(g.vm.memory().clone(), Box::new(Ports::default()));
    let mut io = Io::default();
    let (names, took) = run_with_fallback(&mut g, &mut io, &mut cpu);
    eprintln!(
        "cmpxchg16b at CPL0: emulated {names:?} in {:?}",
        took.iter().map(|t| format!("{:.1} µs", t.as_secs_f64() * 1e6)).collect::<Vec<_>>()
    );
    assert_eq!(io.on(PORT_RESULT), [1, 3, 0x4444_4444]);
}

/// The fallback's round-trip cost: 200 `int3`s at CPL0 in a loop, each
/// one emulated (when KVM cannot run it), with their IRETQs.
#[test]
fn fallback_round_trip_cost() {
    let Some(mut kvm) = open_kvm() else { return };
    const N: u32 = 200;
    let code = asm(|a| {
        let mut top = a.create_label();
        a.mov(r12d, N)?;
        a.set_label(&mut top)?;
        a.int3()?;
        a.dec(r12d)?;
        a.jnz(top)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 0) else {
        return;
    };
    let mut cpu = Cpu::new(g.vm.memory().clone(), Box::new(Ports::default()));
    let mut io = Io::default();
    let t = Instant::now();
    let (names, mut took) = run_with_fallback(&mut g, &mut io, &mut cpu);
    let total = t.elapsed();
    assert_eq!(io.on(PORT_VECTOR).len(), N as usize);
    if took.is_empty() {
        eprintln!("int3 ran in KVM: no fallback here");
        return;
    }
    let mut kinds: Vec<String> = names.clone();
    kinds.sort();
    kinds.dedup();
    let mean = took.iter().sum::<Duration>() / took.len() as u32;
    eprintln!(
        "fallback: {} round trips ({kinds:?}), mean {:.1} µs, median {:.1} µs; {N} int3 + handler in {:.1} ms ({:.1} µs each)",
        took.len(),
        mean.as_secs_f64() * 1e6,
        percentile(&mut took, 50).as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e6 / f64::from(N)
    );
}

/// An exception KVM holds for injection survives a state round trip
/// (get_state, set_state), the fallback refuses to step over it, and the
/// next run delivers it through the IDT before the instruction at RIP.
#[test]
fn pending_exception_survives_the_round_trip() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        a.mov(al, 1u32)?;
        a.out(PORT_RESULT as u32, al)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else {
        return;
    };
    let mut ev = g.vcpu.fd().get_vcpu_events().unwrap();
    ev.exception.injected = 1;
    ev.exception.nr = 6; // #UD
    ev.exception.has_error_code = 0;
    g.vcpu.fd().set_vcpu_events(&ev).unwrap();
    let want = PendingEvent::Exception { vector: 6, error_code: None, injected: true };
    assert_eq!(g.vcpu.pending_event().unwrap(), Some(want));
    let s = g.vcpu.get_state().unwrap();
    g.vcpu.set_state(&s).unwrap();
    assert_eq!(g.vcpu.pending_event().unwrap(), Some(want), "lost by set_state");
    let mut cpu = Cpu::new(g.vm.memory().clone(), Box::new(Ports::default()));
    assert_eq!(emulate_one(&mut g.vcpu, &mut cpu).unwrap(), Emulated::EventPending(want));
    let mut io = Io::default();
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    assert_eq!(io.on(PORT_VECTOR), [6], "#UD delivered");
    assert!(io.on(PORT_RESULT).is_empty(), "the instruction at RIP ran first");
    assert_eq!(g.vcpu.pending_event().unwrap(), None);
}

/// The interrupt shadow (after STI / MOV SS) goes out and back through the
/// state, and the kind KVM needs follows from IF.
#[test]
fn interrupt_shadow_round_trip() {
    let Some(mut kvm) = open_kvm() else { return };
    let Some(mut g) = guest(&mut kvm, &[0xf4], 0) else {
        return;
    };
    for if_set in [true, false] {
        let mut s = long_mode_state(CODE, 0);
        if if_set {
            s.rflags |= cpu::state::flags::IF;
        }
        s.interrupt_shadow = 1;
        s.nmi_blocked = 1;
        g.vcpu.set_state(&s).unwrap();
        let back = g.vcpu.get_state().unwrap();
        assert_eq!((back.interrupt_shadow, back.nmi_blocked), (1, 1));
        let ev = g.vcpu.fd().get_vcpu_events().unwrap();
        let want = if if_set { kvm_bindings::KVM_X86_SHADOW_INT_STI } else { kvm_bindings::KVM_X86_SHADOW_INT_MOV_SS };
        assert_eq!(u32::from(ev.interrupt.shadow), want);
        s.interrupt_shadow = 0;
        s.nmi_blocked = 0;
        g.vcpu.set_state(&s).unwrap();
        let back = g.vcpu.get_state().unwrap();
        assert_eq!((back.interrupt_shadow, back.nmi_blocked), (0, 0));
    }
}

/// Port for "ready for the interrupt" in the interrupt tests.
const PORT_READY: u16 = 0x84;

/// A CPL0 guest with the in-kernel irqchip that runs `setup`, writes
/// [`PORT_READY`], waits in HLT with interrupts on, then reports 2 on
/// [`PORT_RESULT`] and stops. `None` (the test skips) without KVM or
/// without an in-kernel irqchip.
fn interrupt_waiter(kvm: &mut Kvm, setup: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Option<Guest> {
    let code = asm(|a| {
        setup(a)?;
        a.out(PORT_READY as u32, al)?;
        a.sti()?;
        a.hlt()?;
        a.mov(al, 2u32)?;
        a.out(PORT_RESULT as u32, al)?;
        a.out(PORT_STOP as u32, al)
    });
    let g = guest_with(kvm, &code, 0, true)?;
    if g.vm.irqchip() == hvf_kvm_accel::IrqChip::Userspace {
        eprintln!("skipping: no in-kernel irqchip here");
        return None;
    }
    Some(g)
}

/// Programs the PIC: vectors from 0x20, only IRQ5 unmasked.
fn pic_irq5(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for (port, v) in [(0x20u32, 0x11u32), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xdf)] {
        a.mov(al, v)?;
        a.out(port, al)?;
    }
    Ok(())
}

/// irqfd: the guest programs the in-kernel PIC (IRQ5 at vector 0x25),
/// says it is ready, and waits in HLT; the test signals the irqfd from the
/// exit handler and the guest's handler reports vector 0x25.
#[test]
fn irqfd_raises_a_pic_interrupt() {
    irqfd_raises_irq5("irqfd", |_| (), |_, ()| ());
}

/// The same after a message route replaced KVM's routing table: the
/// PIC's pins must still be routed.
#[test]
fn irqfd_raises_a_pic_interrupt_after_msi_routes() {
    irqfd_raises_irq5(
        "irqfd after MSI routes",
        |vm| {
            let (msi, gsi) = vm.register_msi_irqfd(0xfee0_0000, 0x45).unwrap();
            assert_eq!(gsi, 24, "the first GSI after the I/O APIC's pins");
            (msi, gsi)
        },
        |vm, (msi, gsi)| vm.unregister_msi_irqfd(&msi, gsi).unwrap(),
    );
}

/// A CPL0 guest with the in-kernel PIC programmed ([`pic_irq5`]) waits in
/// HLT; an irqfd on GSI 5, signalled when the guest says it is ready, must
/// reach its handler as vector 0x25. `before` runs on the VM before the
/// irqfd is made, and `after` gets what it returned once the run is over.
fn irqfd_raises_irq5<T>(what: &'static str, before: impl FnOnce(&KvmVm) -> T, after: impl FnOnce(&KvmVm, T)) {
    let Some(mut kvm) = open_kvm() else { return };
    let _w = Watchdog::arm(what, Duration::from_secs(30));
    let Some(mut g) = interrupt_waiter(&mut kvm, pic_irq5) else {
        return;
    };
    let kept = before(&g.vm);
    let irqfd = g.vm.register_irqfd(5).unwrap();
    let mut io = Io::default();
    io.triggers.push((PORT_READY, irqfd.try_clone().unwrap()));
    let exit = g.vcpu.run(&mut io).unwrap();
    eprintln!(
        "{what}: {exit}; vectors {:?}, results {:?}; exits {}",
        io.on(PORT_VECTOR),
        io.on(PORT_RESULT),
        g.vcpu.stats().exits
    );
    assert_eq!(exit, VmExit::Interrupted);
    assert_eq!(io.on(PORT_VECTOR), [0x25]);
    assert_eq!(io.on(PORT_RESULT), [2]);
    after(&g.vm, kept);
    g.vm.unregister_irqfd(&irqfd, 5).unwrap();
}

/// KVM_SIGNAL_MSI: the guest maps and software-enables its in-kernel local
/// APIC and says it is ready; the run pauses there, the test sends an MSI
/// for vector 0x45 to APIC ID 0, and the guest, waiting in HLT, reports it.
#[test]
fn signal_msi_reaches_the_in_kernel_local_apic() {
    msi_reaches_the_local_apic("signal_msi", |vm| vm.signal_msi(0xfee0_0000, 0x45).unwrap());
}

/// The same message through an irqfd on a GSI routed to it. GSIs are
/// given out from 24 and taken back.
#[test]
fn msi_irqfd_reaches_the_in_kernel_local_apic() {
    msi_reaches_the_local_apic("msi irqfd", |vm| {
        let (other, first) = vm.register_msi_irqfd(0xfee0_0000, 0x46).unwrap();
        let (fd, gsi) = vm.register_msi_irqfd(0xfee0_0000, 0x45).unwrap();
        assert_eq!((first, gsi), (24, 25));
        vm.unregister_msi_irqfd(&other, first).unwrap();
        let (again, reused) = vm.register_msi_irqfd(0xfee0_0000, 0x47).unwrap();
        assert_eq!(reused, 24);
        vm.unregister_msi_irqfd(&again, reused).unwrap();
        fd.write(1).unwrap();
    });
}

/// A CPL0 guest with its in-kernel local APIC on waits in HLT for the
/// message `send` sends (vector 0x45 to APIC ID 0).
fn msi_reaches_the_local_apic(what: &str, send: impl FnOnce(&KvmVm)) {
    const PD_HIGH: u64 = 0x40000;
    const LAPIC: u64 = 0xfee0_0000;
    let Some(mut kvm) = open_kvm() else { return };
    let _w = Watchdog::arm("MSI", Duration::from_secs(30));
    let Some(mut g) = interrupt_waiter(&mut kvm, |a| {
        // The fourth GiB through a second page directory: one 2 MiB page at the LAPIC.
        a.mov(rax, PD_HIGH | 3)?;
        a.mov(rdi, PDPT + 3 * 8)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.mov(rax, LAPIC | 0x83)?;
        a.mov(rdi, PD_HIGH + ((LAPIC - (3 << 30)) >> 21) * 8)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.mov(rax, cr3)?;
        a.mov(cr3, rax)?;
        // Spurious-interrupt vector register: APIC software enable.
        a.mov(rsi, LAPIC + 0xf0)?;
        a.mov(dword_ptr(rsi), 0x1ffu32)
    }) else {
        return;
    };
    let mut io = Io { pause_at: Some(PORT_READY), ..Io::default() };
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    assert_eq!(io.on(PORT_READY).len(), 1, "paused at the ready port");
    send(&g.vm);
    io.stop = false;
    io.pause_at = None;
    let exit = g.vcpu.run(&mut io).unwrap();
    eprintln!("{what}: {exit}; vectors {:?}, results {:?}", io.on(PORT_VECTOR), io.on(PORT_RESULT));
    assert_eq!(exit, VmExit::Interrupted);
    assert_eq!(io.on(PORT_VECTOR), [0x45]);
    assert_eq!(io.on(PORT_RESULT), [2]);
}

/// ioeventfd: a port with a datamatch and an MMIO address of any size
/// signal their eventfds without an exit; a non-matching write exits, and
/// after unregistering every write exits.
#[test]
fn ioeventfd_takes_guest_writes() {
    let Some(mut kvm) = open_kvm() else { return };
    const NOTIFY_PORT: u16 = 0x90;
    const NOTIFY_MMIO: u64 = 0x3000_0000;
    let code = asm(|a| {
        a.mov(al, 0x5au32)?;
        a.out(NOTIFY_PORT as u32, al)?; // matches: eventfd
        a.mov(al, 0x11u32)?;
        a.out(NOTIFY_PORT as u32, al)?; // no match: exit
        a.mov(rsi, NOTIFY_MMIO)?;
        a.mov(dword_ptr(rsi), 7u32)?; // eventfd
        a.mov(byte_ptr(rsi), 9u32)?; // eventfd (any size)
        a.mov(al, 0x5au32)?;
        a.out(PORT_STOP as u32, al)?;
        // Second run, after unregistering.
        a.out(NOTIFY_PORT as u32, al)?;
        a.mov(dword_ptr(rsi), 7u32)?;
        a.out(PORT_STOP as u32, al)
    });
    for cpl in [3, 0] {
        let Some(mut g) = guest_with(&mut kvm, &code, cpl, true) else {
            return;
        };
        let port = g.vm.register_ioeventfd(IoEventAddr::Pio(NOTIFY_PORT), 1, Some(0x5a)).unwrap();
        let mmio = g.vm.register_ioeventfd(IoEventAddr::Mmio(NOTIFY_MMIO), 0, None).unwrap();
        let mut io = Io::default();
        assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
        assert_eq!(io.on(NOTIFY_PORT), [0x11], "CPL{cpl}");
        assert!(io.mmio_writes.is_empty(), "CPL{cpl}: {:?}", io.mmio_writes);
        assert_eq!(port.read().unwrap(), 1, "CPL{cpl}: port eventfd");
        assert_eq!(mmio.read().unwrap(), 2, "CPL{cpl}: MMIO eventfd");
        let exits = g.vcpu.stats().exits;
        assert_eq!((exits.pio_out, exits.mmio_write), (2, 0), "CPL{cpl}");

        g.vm.unregister_ioeventfd(&port, IoEventAddr::Pio(NOTIFY_PORT), 1, Some(0x5a)).unwrap();
        g.vm.unregister_ioeventfd(&mmio, IoEventAddr::Mmio(NOTIFY_MMIO), 0, None).unwrap();
        io.stop = false;
        assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
        assert_eq!(io.on(NOTIFY_PORT), [0x11, 0x5a], "CPL{cpl}");
        assert_eq!(io.mmio_writes, [(NOTIFY_MMIO, vec![7, 0, 0, 0])], "CPL{cpl}");
        assert!(port.read().is_err(), "CPL{cpl}: nothing more on the port eventfd");
        assert!(g.vm.register_ioeventfd(IoEventAddr::Pio(NOTIFY_PORT), 3, None).is_err());
    }
}

/// The statistics count what the guest did: PIO exits by direction, the
/// entries, and time inside KVM_RUN and in the handlers.
#[test]
fn stats_count_exits_and_time() {
    let Some(mut kvm) = open_kvm() else { return };
    let code = asm(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 100u32)?;
        a.set_label(&mut top)?;
        a.out(PORT_RESULT as u32, al)?;
        a.in_(al, PORT_RESULT as u32)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.out(PORT_STOP as u32, al)
    });
    let Some(mut g) = guest(&mut kvm, &code, 3) else {
        return;
    };
    let mut io = Io::default();
    let t = Instant::now();
    assert_eq!(g.vcpu.run(&mut io).unwrap(), VmExit::Interrupted);
    let wall = t.elapsed();
    let s = g.vcpu.stats();
    eprintln!(
        "stats: {} over {} entries; {:.2} ms in KVM_RUN, {:.3} ms in handlers, {:.2} ms wall",
        s.exits,
        s.entries,
        s.in_guest.as_secs_f64() * 1e3,
        s.in_handlers.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3
    );
    assert_eq!((s.exits.pio_out, s.exits.pio_in), (101, 100));
    assert_eq!(s.entries, 201);
    assert_eq!(s.exits.total(), 201);
    assert!(s.in_guest > Duration::ZERO && s.in_guest + s.in_handlers <= wall);
}
