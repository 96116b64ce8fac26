//! Several CPUs in a [`pm32`](super::pm32) test kernel: the bootstrap
//! processor starts the application processors as SeaBIOS and Linux do
//! (a real-mode trampoline below 1 MiB, INIT then two start-up IPIs), each
//! switches to 32-bit protected mode on the kernel's GDT and IDT, gets a
//! stack of its own by its APIC ID, turns its local APIC on and checks in;
//! then every CPU runs "role" code the kernel chooses per APIC ID, phase
//! after phase ([`Smp::run`]).
//!
//! Memory: the trampoline at [`TRAMPOLINE`] (start-up vector 8), the
//! control block at [`CTL`], the application processors' stacks from
//! [`AP_STACKS`], big arrays for the tests from [`ARRAYS`] ([`array`]).

#![allow(dead_code, reason = "each suite uses what it needs")]

use iced_x86::code_asm::*;

use super::multiboot::print32;
use super::pm32::{Kernel, Lbl, KCODE, KDATA, VARS};

/// The local APIC's MMIO page (each CPU sees its own).
pub const APIC: u32 = 0xfee0_0000;
pub const APIC_ID: u32 = APIC + 0x20;
pub const APIC_EOI: u32 = APIC + 0xb0;
pub const APIC_SVR: u32 = APIC + 0xf0;
pub const APIC_ICR_LO: u32 = APIC + 0x300;
pub const APIC_ICR_HI: u32 = APIC + 0x310;

/// The real-mode start-up code (start-up IPI vector 8: CS = 0x800, IP = 0).
pub const TRAMPOLINE: u32 = 0x8000;
const SIPI_VECTOR: u32 = TRAMPOLINE >> 12;

/// The control block.
pub const CTL: u32 = 0x3a_0000;
/// The number of application processors that checked in.
const CHECKED_IN: u32 = CTL;
/// The phase number: an application processor runs its role once each time
/// it changes.
const PHASE: u32 = CTL + 0x04;
/// The last phase each CPU finished (by APIC ID).
const DONE: u32 = CTL + 0x100;
/// The role of each CPU in the current phase (an address, or 0).
const ROLES: u32 = CTL + 0x40;
/// How many times each CPU checked in (by APIC ID).
const MARKS: u32 = CTL + 0x80;
/// The spurious-interrupt vector register each application processor read
/// before writing it (by APIC ID).
const SVR_SEEN: u32 = CTL + 0xc0;
/// The arrival words of [`barrier`].
const ARRIVALS: u32 = CTL + 0x1000;

/// The application processors' stacks: 4 KiB each, by APIC ID.
pub const AP_STACKS: u32 = 0x3b_0000;
pub const MAX_CPUS: u32 = 16;

/// Where [`array`] 0 starts; each array has 16 MiB.
pub const ARRAYS: u32 = 0x100_0000;
/// The most 32-bit words an [`array`] holds.
pub const ARRAY_WORDS: u32 = 0x40_0000;

/// Word `i` of the tests' part of the control block (the counters the
/// kernel reports, its parameters).
pub fn slot(i: u32) -> AsmMemoryOperand {
    dword_ptr(slot_addr(i))
}

pub fn slot_addr(i: u32) -> u32 {
    assert!(i < 256);
    CTL + 0x400 + 4 * i
}

/// The address of a word on a cache line of its own (locks, shared
/// counters, flags): line `i`.
pub fn line(i: u32) -> u32 {
    assert!(i < 32);
    CTL + 0x800 + 0x40 * i
}

/// The address of array `i` (up to [`ARRAY_WORDS`] words each). The
/// arrays start 17 pages apart beyond their 16 MiB strides: words of the
/// same index in different arrays are neither 4 KiB apart (which costs
/// loads on hardware) nor in pages that share the entry of a TLB indexed
/// by the low bits of the page number.
pub fn array(i: u32) -> u32 {
    assert!(i < 15);
    ARRAYS + i * (0x100_0000 + 0x1_1000)
}

/// The real-mode trampoline, at [`TRAMPOLINE`]: load the kernel's GDT
/// (a 32-bit base: LGDT with an operand-size prefix), clear CR0.CD and NW,
/// set CR0.PE and jump far to the 32-bit entry. The entry's offset goes at
/// [`TRAMPOLINE_ENTRY`], the GDT pointer at [`TRAMPOLINE_GDTR`].
const TRAMPOLINE_CODE: [u8; 0x30] = [
    0xfa, // cli
    0xfc, // cld
    0x31, 0xc0, // xor ax, ax
    0x8e, 0xd8, // mov ds, ax
    0x66, 0x0f, 0x01, 0x16, 0x28, 0x80, // o32 lgdt [0x8028]
    0x0f, 0x20, 0xc0, // mov eax, cr0
    0x66, 0x25, 0xff, 0xff, 0xff, 0x9f, // and eax, 0x9fffffff
    0x66, 0x83, 0xc8, 0x01, // or eax, 1
    0x0f, 0x22, 0xc0, // mov cr0, eax
    0x66, 0xea, 0, 0, 0, 0, 0x08, 0x00, // jmp dword 0x08:entry
    0xf4, 0xf4, 0xf4, 0xf4, // (hlt)
    0, 0, 0, 0, 0, 0, // GDT pointer: limit, base
    0xf4, 0xf4, //
];
const TRAMPOLINE_ENTRY: u32 = TRAMPOLINE + 0x1e;
const TRAMPOLINE_GDTR: u32 = TRAMPOLINE + 0x28;

/// How the bootstrap processor sends INIT and the two start-up IPIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartUp {
    /// With the delays of the MP specification as Linux keeps them for
    /// old processors: about 10 ms after INIT and 200 us after each
    /// start-up IPI (2^24 and 2^19 TSC ticks).
    Delays,
    /// All three back to back, as SeaBIOS sends INIT and its start-up IPI
    /// (and Linux on processors that need no INIT delay).
    BackToBack,
}

/// The CPUs of a kernel once started ([`Smp::start`]).
pub struct Smp {
    pub cpus: u32,
}

/// Wait until the word at `mem` is at least `value` (unsigned), with a
/// bound in time: `units` * 2^32 TSC ticks; then [`Kernel::fail_ne`] with
/// `why` (and the last value) if it is still below. Clobbers EAX, EDX.
pub fn wait_at_least(k: &mut Kernel, mem: u32, value: u32, units: u32, why: &str) -> Result<(), IcedError> {
    let mut again = k.a.create_label();
    let mut out = k.a.create_label();
    k.a.rdtsc()?;
    k.a.add(edx, units)?;
    k.a.push(edx)?;
    k.a.set_label(&mut again)?;
    k.a.mov(eax, dword_ptr(mem))?;
    k.a.cmp(eax, value)?;
    k.a.jae(out)?;
    k.a.pause()?;
    k.a.rdtsc()?;
    k.a.cmp(edx, dword_ptr(esp))?;
    k.a.jb(again)?;
    k.a.set_label(&mut out)?;
    k.a.add(esp, 4)?;
    k.a.mov(eax, dword_ptr(mem))?;
    k.a.cmp(eax, value)?;
    let mut enough = k.a.create_label();
    k.a.jae(enough)?;
    k.a.test(esp, esp)?;
    k.fail_ne(why)?;
    k.a.set_label(&mut enough)
}

/// Spin `n` times (a short delay). Clobbers ECX.
pub fn delay(k: &mut Kernel, n: u32) -> Result<(), IcedError> {
    let mut again = k.a.create_label();
    k.a.mov(ecx, n)?;
    k.a.set_label(&mut again)?;
    k.a.pause()?;
    k.a.dec(ecx)?;
    k.a.jnz(again)
}

/// Spin (with PAUSE) until `ticks` TSC ticks have passed. Clobbers EAX,
/// ECX, EDX.
pub fn delay_ticks(k: &mut Kernel, ticks: u32) -> Result<(), IcedError> {
    let mut again = k.a.create_label();
    k.a.rdtsc()?;
    k.a.mov(ecx, eax)?;
    k.a.set_label(&mut again)?;
    k.a.pause()?;
    k.a.rdtsc()?;
    k.a.sub(eax, ecx)?;
    k.a.cmp(eax, ticks)?;
    k.a.jb(again)
}

/// Send an IPI: ICR high = `dest` << 24, ICR low = `low`; then wait
/// (bounded) until the delivery status is idle. Clobbers EAX, ECX.
pub fn send_ipi(k: &mut Kernel, dest: u32, low: u32) -> Result<(), IcedError> {
    k.a.mov(dword_ptr(APIC_ICR_HI), dest << 24)?;
    k.a.mov(dword_ptr(APIC_ICR_LO), low)?;
    let mut again = k.a.create_label();
    let mut out = k.a.create_label();
    k.a.mov(ecx, 1_000_000u32)?;
    k.a.set_label(&mut again)?;
    k.a.test(dword_ptr(APIC_ICR_LO), 1u32 << 12)?;
    k.a.jz(out)?;
    k.a.pause()?;
    k.a.dec(ecx)?;
    k.a.jnz(again)?;
    k.a.set_label(&mut out)?;
    k.a.mov(eax, dword_ptr(APIC_ICR_LO))?;
    k.a.and(eax, 1u32 << 12)?;
    k.a.cmp(eax, 0)?;
    k.fail_ne("ICR delivery status still pending")
}

/// Code that runs as a role: `body` (entered with DF clear), then RET. On
/// entry EBP is the CPU's APIC ID; the caller saves every register.
/// Emitted out of line.
pub fn role(k: &mut Kernel, body: impl FnOnce(&mut Kernel) -> Result<(), IcedError>) -> Result<Lbl, IcedError> {
    let mut over = k.a.create_label();
    let mut l = k.label();
    k.a.jmp(over)?;
    k.place(&mut l)?;
    k.a.cld()?;
    body(k)?;
    k.a.ret()?;
    k.a.set_label(&mut over)?;
    Ok(l)
}

/// A barrier of CPUs 0 to `n - 1` in a loop over EBX (0, 1, ..), emitted
/// for CPU `me`: it stores EBX + 1 in its arrival word, then waits until
/// each other CPU's word has left EBX (for EBX + 1, or EBX + 2 when that
/// one already went on to the next barrier). No locked instruction: each
/// word has one writer, and the barrier works whatever LOCK does. The
/// words must be zero when the loop starts ([`reset_barrier`]). Clobbers
/// EAX, ECX.
pub fn barrier(k: &mut Kernel, me: u32, n: u32) -> Result<(), IcedError> {
    k.a.lea(eax, dword_ptr(ebx + 1))?;
    k.a.mov(dword_ptr(arrival(me)), eax)?;
    for other in (0..n).filter(|&o| o != me) {
        spin_until(
            k,
            |k, out| {
                k.a.cmp(dword_ptr(arrival(other)), ebx)?;
                k.a.jne(out)
            },
            dword_ptr(arrival(other)),
            &format!("barrier: CPU {me} waited for CPU {other} (at iteration EBX + 1), which is at"),
        )?;
    }
    Ok(())
}

/// CPU `cpu`'s arrival word for [`barrier`], a cache line each.
fn arrival(cpu: u32) -> u32 {
    assert!(cpu < MAX_CPUS);
    ARRIVALS + 0x40 * cpu
}

/// Zero the arrival words of [`barrier`]. Clobbers EAX, ECX, EDI.
pub fn reset_barrier(k: &mut Kernel) -> Result<(), IcedError> {
    zero(k, ARRIVALS, 0x40 * MAX_CPUS / 4)
}

/// How many times [`spin_until`] tries: far more than any wait for
/// another vCPU takes (round-robin slices included), few enough to report
/// a hang well within the run's timeout.
pub const SPIN_BOUND: u32 = 1 << 26;

/// PAUSE and `test` (which jumps to the label it gets when the wait is
/// over) at most [`SPIN_BOUND`] times; then fail with `why` and the word at
/// `report`. Clobbers EAX, ECX.
pub fn spin_until(
    k: &mut Kernel,
    test: impl Fn(&mut Kernel, CodeLabel) -> Result<(), IcedError>,
    report: AsmMemoryOperand,
    why: &str,
) -> Result<(), IcedError> {
    let mut again = k.a.create_label();
    let mut out = k.a.create_label();
    k.a.mov(ecx, SPIN_BOUND)?;
    k.a.set_label(&mut again)?;
    k.a.pause()?;
    test(k, out)?;
    k.a.dec(ecx)?;
    k.a.jnz(again)?;
    k.a.mov(eax, report)?;
    k.a.test(esp, esp)?;
    k.fail_ne(why)?;
    k.a.set_label(&mut out)
}

/// Print EAX in decimal on COM1. Clobbers EAX, EBX, ECX, EDX.
pub fn print_dec(k: &mut Kernel) -> Result<(), IcedError> {
    let a = &mut k.a;
    let mut div = a.create_label();
    let mut out = a.create_label();
    a.xor(ecx, ecx)?;
    a.mov(ebx, 10u32)?;
    a.set_label(&mut div)?;
    a.xor(edx, edx)?;
    a.div(ebx)?;
    a.push(edx)?;
    a.inc(ecx)?;
    a.test(eax, eax)?;
    a.jnz(div)?;
    a.mov(dx, 0x3f8u32)?;
    a.set_label(&mut out)?;
    a.pop(eax)?;
    a.add(al, b'0' as u32)?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(out)
}

/// Print `text`, then the word at `mem` in decimal. Clobbers EAX, EBX,
/// ECX, EDX.
pub fn print_value(k: &mut Kernel, text: &str, mem: AsmMemoryOperand) -> Result<(), IcedError> {
    print32(&mut k.a, text)?;
    k.a.mov(eax, mem)?;
    print_dec(k)
}

/// Fill `words` words from `at` with zeros. Clobbers EAX, ECX, EDI.
pub fn zero(k: &mut Kernel, at: u32, words: u32) -> Result<(), IcedError> {
    k.a.cld()?;
    k.a.mov(edi, at)?;
    k.a.xor(eax, eax)?;
    k.a.mov(ecx, words)?;
    k.a.rep().stosd()
}

impl Smp {
    /// In the bootstrap processor's flow: turn its local APIC on, check
    /// its APIC ID is 0, write the trampoline, send INIT and two start-up
    /// IPIs to all the other CPUs and wait (bounded) until the `cpus - 1`
    /// application processors checked in. Each of them runs the 32-bit
    /// entry emitted here, then waits for phases ([`Smp::run`]).
    pub fn start(k: &mut Kernel, cpus: u32) -> Result<Smp, IcedError> {
        Self::start_with(k, cpus, StartUp::Delays)
    }

    /// [`Smp::start`] with the IPIs sent as `style` says.
    pub fn start_with(k: &mut Kernel, cpus: u32, style: StartUp) -> Result<Smp, IcedError> {
        assert!((1..=MAX_CPUS).contains(&cpus));
        let mut entry = k.label();
        let mut main = k.a.create_label();
        k.a.jmp(main)?;

        // ---- the application processor's 32-bit entry ----
        k.place(&mut entry)?;
        k.a.mov(ax, u32::from(KDATA))?;
        for s in [ds, es, fs, gs, ss] {
            k.a.mov(s, ax)?;
        }
        k.a.mov(ebp, dword_ptr(APIC_ID))?;
        k.a.shr(ebp, 24)?;
        k.a.mov(esp, ebp)?;
        k.a.shl(esp, 12)?;
        k.a.add(esp, AP_STACKS + 0x1000)?;
        k.a.lidt(dword_ptr(VARS + 0x808))?;
        k.a.mov(eax, dword_ptr(APIC_SVR))?;
        k.a.mov(dword_ptr(ebp * 4 + SVR_SEEN), eax)?;
        k.a.mov(dword_ptr(APIC_SVR), 0x1ffu32)?;
        k.a.lock().inc(dword_ptr(ebp * 4 + MARKS))?;
        k.a.lock().inc(dword_ptr(CHECKED_IN))?;
        // Phases: run the role for this APIC ID each time PHASE changes;
        // ESI holds the last phase seen.
        k.a.xor(esi, esi)?;
        let mut wait = k.a.create_label();
        let mut skip = k.a.create_label();
        k.a.set_label(&mut wait)?;
        k.a.pause()?;
        k.a.cmp(dword_ptr(PHASE), esi)?;
        k.a.je(wait)?;
        k.a.mov(esi, dword_ptr(PHASE))?;
        k.a.mov(eax, dword_ptr(ebp * 4 + ROLES))?;
        k.a.test(eax, eax)?;
        k.a.jz(skip)?;
        k.a.pushad()?;
        k.a.call(eax)?;
        k.a.popad()?;
        k.a.set_label(&mut skip)?;
        k.a.mov(dword_ptr(ebp * 4 + DONE), esi)?;
        k.a.jmp(wait)?;

        // ---- the bootstrap processor ----
        k.a.set_label(&mut main)?;
        zero(k, CTL, 0x1000 / 4)?;
        k.a.mov(dword_ptr(APIC_SVR), 0x1ffu32)?;
        k.a.mov(eax, dword_ptr(APIC_ID))?;
        k.a.shr(eax, 24)?;
        k.a.cmp(eax, 0)?;
        k.fail_ne("the bootstrap processor's APIC ID")?;
        if cpus > 1 {
            for (i, w) in TRAMPOLINE_CODE.chunks(4).enumerate() {
                let w = u32::from_le_bytes(w.try_into().unwrap());
                k.a.mov(dword_ptr(TRAMPOLINE + 4 * i as u32), w)?;
            }
            k.addr(entry)?;
            k.a.mov(dword_ptr(TRAMPOLINE_ENTRY), eax)?;
            k.a.mov(eax, dword_ptr(VARS + 0x800))?;
            k.a.mov(dword_ptr(TRAMPOLINE_GDTR), eax)?;
            k.a.mov(ax, word_ptr(VARS + 0x804))?;
            k.a.mov(word_ptr(TRAMPOLINE_GDTR + 4), ax)?;
            // INIT (all excluding self, level assert), then two start-up
            // IPIs.
            send_ipi(k, 0, 0x000c_4500)?;
            if style == StartUp::Delays {
                delay_ticks(k, 1 << 24)?;
            }
            for _ in 0..2 {
                send_ipi(k, 0, 0x000c_4600 | SIPI_VECTOR)?;
                if style == StartUp::Delays {
                    delay_ticks(k, 1 << 19)?;
                }
            }
            wait_at_least(k, CHECKED_IN, cpus - 1, 4, "application processors checked in (after 2^34 TSC ticks)")?;
            // No CPU starts twice (the second start-up IPI finds them
            // running), and each read its own local APIC's reset value of
            // the spurious-interrupt vector register (0xff, while the
            // bootstrap processor's is 0x1ff).
            delay_ticks(k, 1 << 22)?;
            for id in 1..cpus {
                k.expect(dword_ptr(MARKS + 4 * id), 1, &format!("times CPU {id} checked in"))?;
                k.expect(dword_ptr(SVR_SEEN + 4 * id), 0xff, &format!("CPU {id}'s SVR before it wrote it"))?;
            }
            k.expect(dword_ptr(MARKS), 0, "times the bootstrap processor checked in")?;
            k.expect(dword_ptr(CHECKED_IN), cpus - 1, "application processors checked in, later")?;
        }
        Ok(Smp { cpus })
    }

    /// In the bootstrap processor's flow: run `roles[i]` on the CPU with
    /// APIC ID `i` (none: that CPU idles), all at once; the bootstrap
    /// processor runs its own, then waits until every application
    /// processor finished (no bound: a phase may take long). Clobbers EAX,
    /// ECX.
    pub fn run(&self, k: &mut Kernel, roles: &[Option<Lbl>]) -> Result<(), IcedError> {
        assert!(roles.len() as u32 <= self.cpus);
        for id in 1..self.cpus {
            match roles.get(id as usize).copied().flatten() {
                Some(r) => {
                    k.addr(r)?;
                    k.a.mov(dword_ptr(ROLES + 4 * id), eax)?;
                }
                None => k.a.mov(dword_ptr(ROLES + 4 * id), 0u32)?,
            }
        }
        k.a.inc(dword_ptr(PHASE))?;
        if let Some(r) = roles.first().copied().flatten() {
            k.addr(r)?;
            k.a.pushad()?;
            k.a.xor(ebp, ebp)?;
            k.a.call(eax)?;
            k.a.popad()?;
        }
        for id in 1..self.cpus {
            let mut again = k.a.create_label();
            let mut out = k.a.create_label();
            k.a.mov(ecx, u32::MAX)?;
            k.a.set_label(&mut again)?;
            k.a.mov(eax, dword_ptr(DONE + 4 * id))?;
            k.a.cmp(eax, dword_ptr(PHASE))?;
            k.a.je(out)?;
            k.a.pause()?;
            k.a.dec(ecx)?;
            k.a.jnz(again)?;
            k.a.test(esp, esp)?;
            k.fail_ne(&format!("CPU {id} never finished the phase; it finished phase"))?;
            k.a.set_label(&mut out)?;
        }
        Ok(())
    }
}

/// An interrupt handler that does `body` (which must keep every register
/// but EAX, and the stack), then EOI and IRET. Returns the label
/// to put in the IDT ([`Kernel::gate`]).
pub fn interrupt_handler(
    k: &mut Kernel,
    body: impl FnOnce(&mut Kernel) -> Result<(), IcedError>,
) -> Result<Lbl, IcedError> {
    let mut over = k.a.create_label();
    let mut l = k.label();
    k.a.jmp(over)?;
    k.place(&mut l)?;
    k.a.push(eax)?;
    body(k)?;
    k.a.mov(dword_ptr(APIC_EOI), 0u32)?;
    k.a.pop(eax)?;
    k.a.iretd()?;
    k.a.set_label(&mut over)?;
    Ok(l)
}

/// The kernel code segment, for gates.
pub const GATE_CS: u16 = KCODE;
