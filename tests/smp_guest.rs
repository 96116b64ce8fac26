//! SMP semantics from small 32-bit test kernels (see `guest/pm32.rs` and
//! `guest/smp.rs`), each booted with several vCPUs: under the interpreter
//! and the JIT round-robin (`--vcpu-threads single`) and with a host thread
//! per vCPU (`--vcpu-threads multi`), and under KVM where /dev/kvm is
//! usable.
//!
//! - Start-up: INIT and two start-up IPIs bring every application
//!   processor up once, each with its own local APIC (APIC ID, SVR), roles
//!   chosen by APIC ID, a fixed IPI to each one waiting in HLT.
//! - x86-TSO litmus tests, many iterations in lockstep (a barrier without
//!   locked instructions, a time budget per test): SB (store buffering;
//!   the 0/0 outcome allowed without a fence, and required to show up with
//!   a host thread per vCPU; forbidden with MFENCE, XCHG or a LOCK-prefixed
//!   store), MP (message passing) and IRIW (independent reads of
//!   independent writes: multi-copy atomicity).
//! - Counters: LOCK XADD (with the old values it returned), a LOCK CMPXCHG
//!   spinlock and an XCHG test-and-set lock around plain increments.
//! - Cross-modifying code as Linux's text_poke_bp does it: INT3 first, the
//!   tail, then the first byte, with a sync after each (a flag the other
//!   CPU acknowledges after CPUID, or an IPI), the other CPU calling the
//!   patched instruction all along.

use std::sync::Mutex;
use std::time::Instant;

use iced_x86::code_asm::*;

#[path = "guest/run.rs"]
mod run;

#[path = "guest/multiboot.rs"]
mod multiboot;

#[path = "guest/pm32.rs"]
mod pm32;
use pm32::Kernel;

#[path = "guest/smp.rs"]
mod smp;
use smp::{array, barrier, line, print_value, role, slot, slot_addr, Smp, StartUp};

// ---- the kernels ----------------------------------------------------------------

/// Jump to a failure report (`why`, EAX) unconditionally.
fn fail(k: &mut Kernel, why: &str) -> Result<(), IcedError> {
    k.a.test(esp, esp)?;
    k.fail_ne(why)
}

/// Start-up: the bootstrap processor's APIC ID is 0; INIT and two
/// start-up IPIs (sent as `style` says) start each application processor
/// exactly once, and each reads the reset SVR of its own local APIC
/// ([`Smp::start`]); a role on
/// every CPU records the APIC ID its local APIC reports (which must be the
/// one it was dispatched for) and CS; then each application processor
/// waits in HLT with interrupts on until a fixed IPI (vector 0x40, physical
/// destination) the bootstrap processor sends it arrives, once.
fn startup_kernel(name: &str, cpus: u32, style: StartUp) -> Vec<u8> {
    let mut k = Kernel::new(name);
    (|| -> Result<(), IcedError> {
        let smp = Smp::start_with(&mut k, cpus, style)?;
        // slot 0..16: APIC ID | 0x100; 16..32: CS; 32..48: IPIs taken.
        let who = role(&mut k, |k| {
            k.a.mov(eax, dword_ptr(smp::APIC_ID))?;
            k.a.shr(eax, 24)?;
            k.a.or(eax, 0x100u32)?;
            k.a.mov(dword_ptr(ebp * 4 + slot_addr(0)), eax)?;
            k.a.mov(eax, cs)?;
            k.a.mov(dword_ptr(ebp * 4 + slot_addr(16)), eax)
        })?;
        smp.run(&mut k, &vec![Some(who); cpus as usize])?;
        for id in 0..cpus {
            k.expect(slot(id), 0x100 | id, &format!("APIC ID (| 0x100) CPU {id} read in its role"))?;
            k.expect(slot(16 + id), u32::from(pm32::KCODE), &format!("CS of CPU {id}"))?;
        }
        let ipi = smp::interrupt_handler(&mut k, |k| {
            k.a.mov(eax, dword_ptr(smp::APIC_ID))?;
            k.a.shr(eax, 24)?;
            k.a.lock().inc(dword_ptr(eax * 4 + slot_addr(32)))
        })?;
        k.gate(0x40, ipi, 0xe, 0, smp::GATE_CS)?;
        let sleeper = role(&mut k, |k| {
            let mut again = k.a.create_label();
            let mut out = k.a.create_label();
            k.a.set_label(&mut again)?;
            k.a.cmp(dword_ptr(ebp * 4 + slot_addr(32)), 0)?;
            k.a.jne(out)?;
            k.a.sti()?;
            k.a.hlt()?;
            k.a.cli()?;
            k.a.jmp(again)?;
            k.a.set_label(&mut out)
        })?;
        let waker = role(&mut k, |k| {
            smp::delay(k, 50_000)?;
            for id in 1..cpus {
                smp::send_ipi(k, id, 0x4040)?;
            }
            for id in 1..cpus {
                smp::spin_until(
                    k,
                    |k, taken| {
                        k.a.cmp(dword_ptr(slot_addr(32 + id)), 0)?;
                        k.a.jne(taken)
                    },
                    dword_ptr(slot_addr(32 + id)),
                    &format!("CPU {id} never took its IPI"),
                )?;
            }
            Ok(())
        })?;
        let mut roles = vec![Some(sleeper); cpus as usize];
        roles[0] = Some(waker);
        smp.run(&mut k, &roles)?;
        for id in 1..cpus {
            k.expect(slot(32 + id), 1, &format!("IPIs CPU {id} took"))?;
        }
        k.pass()
    })()
    .unwrap();
    k.build()
}

/// One role per CPU of a litmus test: up to `iters` iterations (fewer when
/// the time of [`BUDGET_HIGH`] runs out first), each after a barrier of
/// all the roles and a short delay that differs between the CPUs and the
/// iterations (CPU `i` spins `(EBX >> 5i) % 32` times), so that over the
/// iterations the bodies start at every offset from each other the delays
/// can make; in `body` EBX is the iteration and EAX, ECX, EDX, ESI, EDI
/// are free. The iterations run are left at [`stop_at`].
type Body = Box<dyn Fn(&mut Kernel) -> Result<(), IcedError>>;

/// The iteration at which the roles of [`lockstep`] stop: `iters`, or an
/// earlier one CPU 0 sets when the time is up.
fn stop_at() -> AsmMemoryOperand {
    dword_ptr(line(30))
}

/// CPU 0's deadline (TSC, low and high words).
fn deadline(high: bool) -> AsmMemoryOperand {
    dword_ptr(line(31) + if high { 4 } else { 0 })
}
/// The time a [`lockstep`] phase may take: 2^33 TSC ticks (4.3 s at
/// ferrovm's 2 GHz). With vCPUs on host threads of their own the barriers
/// wait for the host to run the threads together, which takes long on a
/// busy host: the phase then runs fewer iterations, not longer.
const BUDGET_HIGH: u32 = 2;

fn lockstep(k: &mut Kernel, smp: &Smp, iters: u32, bodies: Vec<Body>) -> Result<(), IcedError> {
    let n = bodies.len() as u32;
    let mut roles = Vec::new();
    for (me, body) in bodies.into_iter().enumerate() {
        roles.push(Some(role(k, |k| {
            let mut top = k.a.create_label();
            let mut out = k.a.create_label();
            if me == 0 {
                k.a.rdtsc()?;
                k.a.add(edx, BUDGET_HIGH)?;
                k.a.mov(deadline(false), eax)?;
                k.a.mov(deadline(true), edx)?;
            }
            k.a.xor(ebx, ebx)?;
            k.a.set_label(&mut top)?;
            if me == 0 {
                // Past the deadline: this iteration is the last barrier.
                let mut go_on = k.a.create_label();
                let mut stop = k.a.create_label();
                k.a.rdtsc()?;
                k.a.cmp(edx, deadline(true))?;
                k.a.ja(stop)?;
                k.a.jb(go_on)?;
                k.a.cmp(eax, deadline(false))?;
                k.a.jb(go_on)?;
                k.a.set_label(&mut stop)?;
                k.a.mov(stop_at(), ebx)?;
                k.a.set_label(&mut go_on)?;
            }
            // CPU 0 wrote STOP before it arrived: every CPU reads the same
            // after the barrier.
            barrier(k, me as u32, n)?;
            k.a.cmp(ebx, stop_at())?;
            k.a.jae(out)?;
            let mut stagger = k.a.create_label();
            k.a.mov(ecx, ebx)?;
            k.a.shr(ecx, 5 * me as u32)?;
            k.a.and(ecx, 31)?;
            k.a.inc(ecx)?;
            k.a.set_label(&mut stagger)?;
            k.a.dec(ecx)?;
            k.a.jnz(stagger)?;
            body(k)?;
            k.a.inc(ebx)?;
            k.a.jmp(top)?;
            k.a.set_label(&mut out)
        })?));
    }
    smp::reset_barrier(k)?;
    k.a.mov(stop_at(), iters)?;
    smp.run(k, &roles)
}

/// Count the outcomes of the [`stop_at`] iterations run whose loads went to
/// the arrays `results` (each 0 or 1, else a failure): outcome r0 r1 .. as
/// a binary number, counted in slot `first + outcome`; print them as
/// `name: 00=.. 01=.. .. n=iterations`.
fn tally(k: &mut Kernel, name: &str, results: &[u32], first: u32) -> Result<(), IcedError> {
    let n = results.len() as u32;
    smp::zero(k, slot_addr(first), 1 << n)?;
    let mut top = k.a.create_label();
    let mut check = k.a.create_label();
    k.a.xor(ebx, ebx)?;
    k.a.jmp(check)?;
    k.a.set_label(&mut top)?;
    k.a.xor(edx, edx)?;
    for &r in results {
        k.a.mov(eax, dword_ptr(ebx * 4 + r))?;
        k.a.test(eax, !1u32)?;
        k.fail_ne(&format!("{name}: a load returned neither 0 nor 1"))?;
        k.a.add(edx, edx)?;
        k.a.or(edx, eax)?;
    }
    k.a.inc(dword_ptr(edx * 4 + slot_addr(first)))?;
    k.a.inc(ebx)?;
    k.a.set_label(&mut check)?;
    k.a.cmp(ebx, stop_at())?;
    k.a.jb(top)?;
    multiboot::print32(&mut k.a, &format!("{name}:"))?;
    for o in 0..1u32 << n {
        print_value(k, &format!(" {o:0w$b}=", w = n as usize), slot(first + o))?;
    }
    print_value(k, " n=", stop_at())?;
    multiboot::print32(&mut k.a, "\n")
}

#[derive(Clone, Copy, Debug)]
enum SbStore {
    Plain,
    Mfence,
    Xchg,
    LockAdd,
}

impl SbStore {
    fn name(self) -> &'static str {
        match self {
            SbStore::Plain => "sb-nofence",
            SbStore::Mfence => "sb-mfence",
            SbStore::Xchg => "sb-xchg",
            SbStore::LockAdd => "sb-lock-add",
        }
    }
}

/// SB: CPU 0 `x = 1; r0 = y`, CPU 1 `y = 1; r1 = x` (x, y fresh zeros each
/// iteration): r0 = r1 = 0 is allowed with plain stores (counted and
/// reported) and forbidden when the store is followed by MFENCE, is an
/// XCHG or a LOCK ADD (a failure).
///
/// Before `x = 1` (and `y = 1`) each CPU stores to [`SB_JUNK_LINES`] cache
/// lines the other one stores to as well: on a host whose stores go
/// through a store buffer, the store of interest waits there behind them
/// while the load runs, which makes the allowed outcome more frequent
/// (with a fence or a locked store it stays forbidden).
const SB_JUNK_LINES: u32 = 8;

fn sb_kernel(cpus: u32, iters: u32) -> Vec<u8> {
    let mut k = Kernel::new("sb");
    (|| -> Result<(), IcedError> {
        let smp = Smp::start(&mut k, cpus)?;
        let (x, y, r0, r1) = (array(0), array(1), array(2), array(3));
        for (v, store) in [SbStore::Plain, SbStore::Mfence, SbStore::Xchg, SbStore::LockAdd].into_iter().enumerate() {
            smp::zero(&mut k, x, iters)?;
            smp::zero(&mut k, y, iters)?;
            let body = |mine: u32, other: u32, result: u32| -> Body {
                Box::new(move |k: &mut Kernel| {
                    let word = if mine == x { 0 } else { 4 };
                    for j in 0..SB_JUNK_LINES {
                        k.a.mov(dword_ptr(array(6) + 0x40 * j + word), ebx)?;
                    }
                    match store {
                        SbStore::Plain => k.a.mov(dword_ptr(ebx * 4 + mine), 1u32)?,
                        SbStore::Mfence => {
                            k.a.mov(dword_ptr(ebx * 4 + mine), 1u32)?;
                            k.a.mfence()?;
                        }
                        SbStore::Xchg => {
                            k.a.mov(eax, 1u32)?;
                            k.a.xchg(dword_ptr(ebx * 4 + mine), eax)?;
                        }
                        SbStore::LockAdd => k.a.lock().add(dword_ptr(ebx * 4 + mine), 1)?,
                    }
                    k.a.mov(eax, dword_ptr(ebx * 4 + other))?;
                    k.a.mov(dword_ptr(ebx * 4 + result), eax)
                })
            };
            lockstep(&mut k, &smp, iters, vec![body(x, y, r0), body(y, x, r1)])?;
            let first = 4 * v as u32;
            tally(&mut k, store.name(), &[r0, r1], first)?;
            if !matches!(store, SbStore::Plain) {
                k.expect(slot(first), 0, &format!("{}: forbidden outcome r0=0 r1=0, times", store.name()))?;
            }
        }
        k.pass()
    })()
    .unwrap();
    k.build()
}

/// MP: CPU 0 `data = 1; flag = 1`, CPU 1 `r0 = flag; r1 = data`: r0 = 1,
/// r1 = 0 is forbidden (stores and loads each stay in order).
fn mp_kernel(cpus: u32, iters: u32) -> Vec<u8> {
    let mut k = Kernel::new("mp");
    (|| -> Result<(), IcedError> {
        let smp = Smp::start(&mut k, cpus)?;
        let (data, flag, r0, r1) = (array(0), array(1), array(2), array(3));
        smp::zero(&mut k, data, iters)?;
        smp::zero(&mut k, flag, iters)?;
        let writer: Body = Box::new(move |k: &mut Kernel| {
            k.a.mov(dword_ptr(ebx * 4 + data), 1u32)?;
            k.a.mov(dword_ptr(ebx * 4 + flag), 1u32)
        });
        let reader: Body = Box::new(move |k: &mut Kernel| {
            k.a.mov(eax, dword_ptr(ebx * 4 + flag))?;
            k.a.mov(ecx, dword_ptr(ebx * 4 + data))?;
            k.a.mov(dword_ptr(ebx * 4 + r0), eax)?;
            k.a.mov(dword_ptr(ebx * 4 + r1), ecx)
        });
        lockstep(&mut k, &smp, iters, vec![writer, reader])?;
        tally(&mut k, "mp", &[r0, r1], 0)?;
        k.expect(slot(0b10), 0, "mp: forbidden outcome flag=1 data=0, times")?;
        k.pass()
    })()
    .unwrap();
    k.build()
}

/// IRIW: CPU 0 `x = 1`, CPU 1 `y = 1`, CPU 2 `r0 = x; r1 = y`, CPU 3
/// `r2 = y; r3 = x`: r0 = 1, r1 = 0, r2 = 1, r3 = 0 is forbidden (the two
/// readers cannot see the writes in opposite orders).
fn iriw_kernel(cpus: u32, iters: u32) -> Vec<u8> {
    let mut k = Kernel::new("iriw");
    (|| -> Result<(), IcedError> {
        let smp = Smp::start(&mut k, cpus)?;
        let (x, y) = (array(0), array(1));
        let r = [array(2), array(3), array(4), array(5)];
        smp::zero(&mut k, x, iters)?;
        smp::zero(&mut k, y, iters)?;
        let writer = |at: u32| -> Body { Box::new(move |k: &mut Kernel| k.a.mov(dword_ptr(ebx * 4 + at), 1u32)) };
        let reader = |first: u32, second: u32, ra: u32, rb: u32| -> Body {
            Box::new(move |k: &mut Kernel| {
                k.a.mov(eax, dword_ptr(ebx * 4 + first))?;
                k.a.mov(ecx, dword_ptr(ebx * 4 + second))?;
                k.a.mov(dword_ptr(ebx * 4 + ra), eax)?;
                k.a.mov(dword_ptr(ebx * 4 + rb), ecx)
            })
        };
        lockstep(&mut k, &smp, iters, vec![writer(x), writer(y), reader(x, y, r[0], r[1]), reader(y, x, r[2], r[3])])?;
        tally(&mut k, "iriw", &r, 0)?;
        k.expect(slot(0b1010), 0, "iriw: forbidden outcome 1010 (readers disagree on the order), times")?;
        k.pass()
    })()
    .unwrap();
    k.build()
}

/// Counters: every CPU adds 1 `per_cpu` times to a shared counter with
/// LOCK XADD (and sums the old values it got back: all of 0..N*K-1 once),
/// then under a LOCK CMPXCHG spinlock, then under an XCHG test-and-set
/// lock (plain load, increment, store inside the lock); each total must be
/// N*K exactly. Last, plain `inc` without a lock: its total is only
/// reported (updates get lost when the CPUs really run at once).
fn counters_kernel(cpus: u32, per_cpu: u32) -> Vec<u8> {
    let mut k = Kernel::new("counters");
    (|| -> Result<(), IcedError> {
        let smp = Smp::start(&mut k, cpus)?;
        let (lock, counter, sum) = (line(0), line(1), line(2));
        let total = cpus * per_cpu;
        let expected_sum = (u64::from(total) * u64::from(total.saturating_sub(1)) / 2) as u32;
        let each = |k: &mut Kernel, inner: &dyn Fn(&mut Kernel) -> Result<(), IcedError>| -> Result<_, IcedError> {
            role(k, |k| {
                let mut top = k.a.create_label();
                k.a.xor(esi, esi)?;
                k.a.mov(edi, per_cpu)?;
                k.a.set_label(&mut top)?;
                inner(k)?;
                k.a.dec(edi)?;
                k.a.jnz(top)?;
                k.a.lock().add(dword_ptr(sum), esi)
            })
        };
        let plain_inc = |k: &mut Kernel| -> Result<(), IcedError> {
            k.a.mov(eax, dword_ptr(counter))?;
            k.a.inc(eax)?;
            k.a.mov(dword_ptr(counter), eax)
        };
        // A lock that was taken: wait until it reads free and try again;
        // once it is ours, the plain increment, then the release.
        let contend = |k: &mut Kernel, acquire: CodeLabel, got: &mut CodeLabel| -> Result<(), IcedError> {
            smp::spin_until(
                k,
                |k, free| {
                    k.a.cmp(dword_ptr(lock), 0)?;
                    k.a.je(free)
                },
                dword_ptr(lock),
                "the lock never came free",
            )?;
            k.a.jmp(acquire)?;
            k.a.set_label(got)?;
            plain_inc(k)?;
            k.a.mov(dword_ptr(lock), 0u32)
        };
        let xadd = each(&mut k, &|k| {
            k.a.mov(eax, 1u32)?;
            k.a.lock().xadd(dword_ptr(counter), eax)?;
            k.a.add(esi, eax)
        })?;
        let cmpxchg = each(&mut k, &|k| {
            let mut acquire = k.a.create_label();
            let mut got = k.a.create_label();
            k.a.mov(edx, 1u32)?;
            k.a.set_label(&mut acquire)?;
            k.a.xor(eax, eax)?;
            k.a.lock().cmpxchg(dword_ptr(lock), edx)?;
            k.a.je(got)?;
            contend(k, acquire, &mut got)
        })?;
        let xchg = each(&mut k, &|k| {
            let mut acquire = k.a.create_label();
            let mut got = k.a.create_label();
            // A failed exchange leaves EAX = 1 for the next.
            k.a.mov(eax, 1u32)?;
            k.a.set_label(&mut acquire)?;
            k.a.xchg(dword_ptr(lock), eax)?;
            k.a.test(eax, eax)?;
            k.a.jz(got)?;
            contend(k, acquire, &mut got)
        })?;
        let racy = each(&mut k, &|k| k.a.inc(dword_ptr(counter)))?;
        // slot i: the total of phase i; slot 8: the sum of XADD's old values.
        let phases = [("xadd", xadd), ("cmpxchg-lock", cmpxchg), ("xchg-lock", xchg), ("plain-inc", racy)];
        for (i, (name, r)) in phases.iter().enumerate() {
            k.a.mov(dword_ptr(counter), 0u32)?;
            k.a.mov(dword_ptr(sum), 0u32)?;
            k.a.mov(dword_ptr(lock), 0u32)?;
            smp.run(&mut k, &vec![Some(*r); cpus as usize])?;
            k.a.mov(eax, dword_ptr(counter))?;
            k.a.mov(slot(i as u32), eax)?;
            if i == 0 {
                k.a.mov(eax, dword_ptr(sum))?;
                k.a.mov(slot(8), eax)?;
            }
            print_value(&mut k, &format!("counters {name}: "), dword_ptr(counter))?;
            multiboot::print32(&mut k.a, "\n")?;
        }
        for (i, (name, _)) in phases.iter().enumerate().take(3) {
            k.expect(slot(i as u32), total, &format!("{name}: the counter (expected {total:#x})"))?;
        }
        k.expect(slot(8), expected_sum, "xadd: the sum of the old values")?;
        k.pass()
    })()
    .unwrap();
    k.build()
}

/// The immediate of round `r` of the cross-modifying code test.
const GOLD: u32 = 0x9e37_79b1;

fn inverse(a: u32) -> u32 {
    let mut x = a;
    for _ in 0..5 {
        x = x.wrapping_mul(2u32.wrapping_sub(a.wrapping_mul(x)));
    }
    x
}

/// Cross-modifying code: a patch site `mov eax, imm32; ret` that CPU 1
/// calls in a loop while CPU 0 rewrites its immediate `rounds` times
/// (round r: r * GOLD) the way Linux's text_poke_bp does: INT3 over the
/// first byte, sync, the tail, sync, the first byte, sync. A sync is a
/// request counter CPU 1 acknowledges after CPUID (or, with `ipi`, in the
/// handler of a fixed IPI, whose IRET serializes). CPU 1's #BP handler
/// stands for the instruction under patch (EAX = the new immediate, on to
/// the RET), as poke_int3_handler does.
///
/// Each value CPU 1 gets must be that of a round between the last one
/// acknowledged before the call (all three syncs) and the one after the
/// last acknowledged after it: anything else is stale or torn code. After
/// the last round CPU 1 must get its value. With the flag, each round
/// leaves INT3 visible for at least one call (the one after the first
/// acknowledgement), so CPU 1 takes at least `rounds` #BP.
fn xmc_kernel(cpus: u32, rounds: u32, ipi: bool) -> Vec<u8> {
    let name = if ipi { "xmc-ipi" } else { "xmc" };
    let mut k = Kernel::new(name);
    (|| -> Result<(), IcedError> {
        let smp = Smp::start(&mut k, cpus)?;
        let (emu, req, ack) = (line(0), line(1), line(2));
        // slot 0: the site's address; 1: #BP taken; 2: calls; 3: the last
        // round seen.
        let mut site = k.label();
        let mut over = k.a.create_label();
        k.a.jmp(over)?;
        k.place(&mut site)?;
        k.a.db(&[0xb8, 0, 0, 0, 0, 0xc3])?;
        k.a.set_label(&mut over)?;
        k.addr(site)?;
        k.a.mov(slot(0), eax)?;

        let int3 = {
            let mut over = k.a.create_label();
            let mut l = k.label();
            k.a.jmp(over)?;
            k.place(&mut l)?;
            k.a.mov(eax, dword_ptr(esp))?;
            k.a.dec(eax)?;
            k.a.cmp(eax, slot(0))?;
            k.fail_ne("#BP not at the patch site, at")?;
            k.a.mov(eax, dword_ptr(emu))?;
            k.a.add(dword_ptr(esp), 4)?;
            k.a.inc(slot(1))?;
            k.a.iretd()?;
            k.a.set_label(&mut over)?;
            l
        };
        k.gate(3, int3, 0xe, 0, smp::GATE_CS)?;
        let sync_ipi = smp::interrupt_handler(&mut k, |k| {
            k.a.mov(eax, dword_ptr(req))?;
            k.a.mov(dword_ptr(ack), eax)
        })?;
        k.gate(0x40, sync_ipi, 0xe, 0, smp::GATE_CS)?;

        let sync = |k: &mut Kernel| -> Result<(), IcedError> {
            k.a.lock().inc(dword_ptr(req))?;
            if ipi {
                smp::send_ipi(k, 1, 0x4040)?;
            }
            k.a.mov(edi, dword_ptr(req))?;
            smp::spin_until(
                k,
                |k, done| {
                    k.a.cmp(dword_ptr(ack), edi)?;
                    k.a.je(done)
                },
                dword_ptr(ack),
                "CPU 1 never acknowledged the sync; acknowledged",
            )
        };
        let patcher = role(&mut k, |k| {
            let mut top = k.a.create_label();
            k.a.mov(edx, slot(0))?;
            k.a.mov(ebx, 1u32)?;
            k.a.set_label(&mut top)?;
            k.a.imul_3(esi, ebx, GOLD as i32)?;
            k.a.mov(dword_ptr(emu), esi)?;
            k.a.mov(byte_ptr(edx), 0xccu32)?;
            sync(k)?;
            k.a.mov(dword_ptr(edx + 1), esi)?;
            sync(k)?;
            k.a.mov(byte_ptr(edx), 0xb8u32)?;
            sync(k)?;
            k.a.inc(ebx)?;
            k.a.cmp(ebx, rounds)?;
            k.a.jbe(top)
        })?;
        let caller = role(&mut k, |k| {
            let mut top = k.a.create_label();
            let mut good = k.a.create_label();
            let mut no_sync = k.a.create_label();
            let mut out = k.a.create_label();
            if ipi {
                k.a.sti()?;
            }
            k.a.set_label(&mut top)?;
            // EDI = the acknowledgements before the call, ESI = the round
            // they complete.
            k.a.mov(edi, dword_ptr(ack))?;
            k.a.mov(eax, edi)?;
            k.a.xor(edx, edx)?;
            k.a.mov(ecx, 3u32)?;
            k.a.div(ecx)?;
            k.a.mov(esi, eax)?;
            k.a.mov(eax, 0xdead_beefu32)?;
            k.a.call(slot(0))?;
            k.a.inc(slot(2))?;
            k.a.mov(ebx, eax)?;
            k.a.imul_3(ebx, ebx, inverse(GOLD) as i32)?;
            k.a.mov(slot(3), ebx)?;
            k.a.sub(ebx, esi)?;
            // The highest round allowed: one past the acknowledgements now.
            k.a.mov(ecx, eax)?;
            k.a.mov(eax, dword_ptr(ack))?;
            k.a.xor(edx, edx)?;
            k.a.push(ecx)?;
            k.a.mov(ecx, 3u32)?;
            k.a.div(ecx)?;
            k.a.pop(ecx)?;
            k.a.sub(eax, esi)?;
            k.a.inc(eax)?;
            k.a.cmp(ebx, eax)?;
            k.a.jbe(good)?;
            k.a.mov(eax, ecx)?;
            fail(k, "CPU 1 ran stale or torn code: EAX")?;
            k.a.set_label(&mut good)?;
            k.a.cmp(edi, 3 * rounds)?;
            k.a.je(out)?;
            if !ipi {
                k.a.mov(eax, dword_ptr(req))?;
                k.a.cmp(eax, edi)?;
                k.a.je(no_sync)?;
                k.a.xor(eax, eax)?;
                k.a.cpuid()?;
                k.a.mov(eax, dword_ptr(req))?;
                k.a.mov(dword_ptr(ack), eax)?;
                k.a.set_label(&mut no_sync)?;
            }
            k.a.jmp(top)?;
            k.a.set_label(&mut out)?;
            k.a.cli()
        })?;
        let mut roles = vec![None; cpus as usize];
        roles[0] = Some(patcher);
        roles[1] = Some(caller);
        smp.run(&mut k, &roles)?;
        print_value(&mut k, &format!("{name}: calls "), slot(2))?;
        print_value(&mut k, ", #BP ", slot(1))?;
        multiboot::print32(&mut k.a, "\n")?;
        k.expect(slot(3), rounds, "the round of the value CPU 1 got last")?;
        if !ipi {
            k.a.mov(eax, slot(1))?;
            k.a.cmp(eax, rounds)?;
            let mut enough = k.a.create_label();
            k.a.jae(enough)?;
            fail(&mut k, "#BP taken by CPU 1 (fewer than the rounds)")?;
            k.a.set_label(&mut enough)?;
        }
        k.pass()
    })()
    .unwrap();
    k.build()
}

// ---- running them ---------------------------------------------------------------

/// How the vCPUs run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// The interpreter, round-robin.
    Interp,
    /// The JIT, round-robin.
    Jit,
    /// The interpreter, a host thread per vCPU.
    InterpMulti,
    /// The JIT, a host thread per vCPU.
    JitMulti,
    /// `--accel kvm` as ferrovm chooses for it (split execution, where it
    /// applies, would give several vCPUs to the JIT; it does not apply to
    /// these multiboot kernels).
    Kvm,
    /// `--accel kvm --kvm-split off`: every vCPU in KVM.
    KvmAll,
}

impl Mode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Interp => &["--accel", "interp", "--vcpu-threads", "single"],
            Mode::Jit => &["--accel", "jit", "--vcpu-threads", "single"],
            Mode::InterpMulti => &["--accel", "interp", "--vcpu-threads", "multi"],
            Mode::JitMulti => &["--accel", "jit", "--vcpu-threads", "multi"],
            Mode::Kvm => &["--accel", "kvm"],
            Mode::KvmAll => &["--accel", "kvm", "--kvm-split", "off"],
        }
    }

    fn multi(self) -> bool {
        matches!(self, Mode::InterpMulti | Mode::JitMulti)
    }
}

/// One guest at a time: the timings stay meaningful and the threads of a
/// multi-threaded run get the host's cores.
static GUESTS: Mutex<()> = Mutex::new(());

/// Boot `kernel` with `cpus` vCPUs in `mode` and expect `name: ok` and
/// debug-exit 0x21; returns the guest's serial output, or None (with the
/// reason printed) when ferrovm refuses a multi-threaded run.
fn boot(name: &str, kernel: &[u8], mode: Mode, cpus: u32) -> Option<String> {
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let path = run::tmp("smp-guest", &format!("{name}-{mode:?}-{cpus}.elf"));
    std::fs::write(&path, kernel).unwrap();
    let n = cpus.to_string();
    let mut args = vec!["run"];
    args.extend_from_slice(mode.args());
    args.extend_from_slice(&["--cpus", &n, "--kernel", path.to_str().unwrap(), "--serial", "stdio"]);
    args.extend_from_slice(&["--timeout", "60"]);
    let t = Instant::now();
    let o = run::ferrovm(&args);
    let secs = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr);
    if mode.multi() && o.status.code() != Some(0x43) && out.is_empty() && err.contains("not available") {
        println!("skipping {name} in {mode:?} with {cpus} vCPUs: ferrovm refuses it: {}", err.trim());
        return None;
    }
    let what = format!("{name} in {mode:?} with {cpus} vCPUs");
    assert!(out.contains(&format!("{name}: ok")), "{what}: stdout: {out}\nstderr: {err}");
    assert_eq!(o.status.code(), Some(0x43), "{what}: debug-exit 0x21 gives status 0x43; stderr: {err}");
    println!("{what}: {secs:.1} s\n{}", out.trim());
    Some(out)
}

/// The count of outcome `outcome` in the line `name: 00=.. 01=..`.
fn outcome(out: &str, name: &str, outcome: &str) -> u64 {
    let line = out.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("{name} in {out}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{outcome}=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} {outcome} in {line}"))
}

/// Litmus iterations for `mode`, at most (each phase also stops after
/// [`BUDGET_HIGH`]). In round-robin every iteration waits for a slice of
/// the other vCPU, and the interleavings repeat; under kvm_pvm KVM runs
/// these CPL-0 kernels in its instruction emulator, slowly.
fn iterations(mode: Mode) -> u32 {
    match mode {
        Mode::Interp => 2_000,
        Mode::Jit => 50_000,
        Mode::InterpMulti | Mode::JitMulti => 200_000,
        Mode::Kvm | Mode::KvmAll => 20_000,
    }
}

/// Whether KVM runs here; when not, the reason is printed.
fn kvm_ok(mode: Mode) -> bool {
    if mode == Mode::Kvm && run::kvm_usable() {
        // Split execution applies only to a kernel whose code is known:
        // for these multiboot kernels `--accel kvm` is the `KvmAll` run.
        println!("skipping {mode:?}: the same run as KvmAll for these kernels");
        return false;
    }
    !matches!(mode, Mode::Kvm | Mode::KvmAll) || run::kvm_usable()
}

fn startup(mode: Mode) {
    if !kvm_ok(mode) {
        return;
    }
    for (name, style) in [("smp-start", StartUp::Delays), ("smp-start-b2b", StartUp::BackToBack)] {
        for cpus in [2, 4] {
            boot(name, &startup_kernel(name, cpus, style), mode, cpus);
        }
    }
}

/// The store-buffering outcome (0/0 without a fence) is reported; with a
/// host thread per vCPU it must show up, else the test shows nothing
/// about the ordering. Round-robin never interleaves inside the two
/// instructions, and under kvm_pvm KVM's emulator makes each access in
/// turn: there it is only reported.
///
/// The vCPU threads only race when the host runs them at the same time:
/// 1/1 outcomes (both stores before both loads) show that they did. A busy
/// host may run them in turn for a whole run (then only 0/1 and 1/0 come
/// out), so a run without 0/0 is tried again, and without 1/1 in any try
/// the check is skipped with the reason printed.
fn sb(mode: Mode) {
    if !kvm_ok(mode) {
        return;
    }
    let kernel = sb_kernel(2, iterations(mode));
    let mut overlapped = 0;
    for _ in 0..3 {
        let Some(out) = boot("sb", &kernel, mode, 2) else { return };
        let both_zero = outcome(&out, "sb-nofence", "00");
        let both_one = outcome(&out, "sb-nofence", "11");
        let n = outcome(&out, "sb-nofence", "n");
        println!("sb-nofence-00: {both_zero} of {n} in {mode:?}");
        if !mode.multi() || both_zero > 0 {
            return;
        }
        overlapped = overlapped.max(both_one);
    }
    if overlapped < 500 {
        println!("sb in {mode:?}: inconclusive: the host never ran the two vCPU threads together for long");
        return;
    }
    panic!("vCPUs on threads of their own never showed the store-buffering outcome in 3 runs, {overlapped} times 1/1");
}

fn mp(mode: Mode) {
    if kvm_ok(mode) {
        boot("mp", &mp_kernel(2, iterations(mode)), mode, 2);
    }
}

fn iriw(mode: Mode) {
    if kvm_ok(mode) {
        boot("iriw", &iriw_kernel(4, iterations(mode)), mode, 4);
    }
}

fn counters(mode: Mode) {
    if !kvm_ok(mode) {
        return;
    }
    let per_cpu = match mode {
        Mode::Interp | Mode::Kvm | Mode::KvmAll => 20_000,
        _ => 100_000,
    };
    for cpus in [2, 4] {
        boot("counters", &counters_kernel(cpus, per_cpu), mode, cpus);
    }
}

fn xmc(mode: Mode) {
    if !kvm_ok(mode) {
        return;
    }
    let rounds = if mode == Mode::Interp { 300 } else { 1_000 };
    boot("xmc", &xmc_kernel(2, rounds, false), mode, 2);
    boot("xmc-ipi", &xmc_kernel(2, rounds, true), mode, 2);
}

macro_rules! modes {
    ($f:ident) => {
        mod $f {
            use super::*;
            #[test]
            fn interp() {
                $f(Mode::Interp);
            }
            #[test]
            fn jit() {
                $f(Mode::Jit);
            }
            #[test]
            fn interp_multi() {
                $f(Mode::InterpMulti);
            }
            #[test]
            fn jit_multi() {
                $f(Mode::JitMulti);
            }
            #[test]
            fn kvm() {
                $f(Mode::Kvm);
            }
            #[test]
            fn kvm_split_off() {
                $f(Mode::KvmAll);
            }
        }
    };
}

modes!(startup);
modes!(sb);
modes!(mp);
modes!(iriw);
modes!(counters);
modes!(xmc);
