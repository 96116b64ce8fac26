//! Locked instructions: the same results as their unlocked forms on one
//! processor, exact counts with four processors on four host threads, the
//! exclusive fallback (page-crossing, MMIO) and code-page invalidation.

use std::sync::{Arc, Condvar, Mutex};

use iced_x86::code_asm::*;
use mmu::GuestMemory;

use crate::cpu::{Cpu, Platform};
use crate::ops::testutil::*;
use crate::platform::{NoDevices, StopReason};
use crate::state::CpuState;

type Asm = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// Instruction forms a LOCK prefix may precede, over memory at RBX (some
/// misaligned, one across a cache line), with RCX, RDX and RAX as
/// sources.
fn forms() -> Vec<(&'static str, Asm)> {
    vec![
        ("add m8", |a| a.add(byte_ptr(rbx), cl)),
        ("add m16 imm", |a| a.add(word_ptr(rbx + 1), 0x1234)),
        ("add m32", |a| a.add(dword_ptr(rbx + 3), ecx)),
        ("add m64", |a| a.add(qword_ptr(rbx + 60), rcx)),
        ("adc m32", |a| a.adc(dword_ptr(rbx), ecx)),
        ("sub m64", |a| a.sub(qword_ptr(rbx + 8), rcx)),
        ("sbb m16", |a| a.sbb(word_ptr(rbx + 2), cx)),
        ("and m32 imm", |a| a.and(dword_ptr(rbx + 4), 0x0ff0_f00f)),
        ("or m8 imm", |a| a.or(byte_ptr(rbx + 7), 0x81)),
        ("xor m64", |a| a.xor(qword_ptr(rbx + 16), rdx)),
        ("inc m64", |a| a.inc(qword_ptr(rbx + 1))),
        ("dec m16", |a| a.dec(word_ptr(rbx + 6))),
        ("neg m32", |a| a.neg(dword_ptr(rbx + 12))),
        ("not m8", |a| a.not(byte_ptr(rbx + 5))),
        ("bts m32 imm", |a| a.bts(dword_ptr(rbx), 17)),
        ("btr m64 reg", |a| a.btr(qword_ptr(rbx + 8), rsi)),
        ("btc m16 reg", |a| a.btc(word_ptr(rbx + 16), si)),
        ("xadd m32", |a| a.xadd(dword_ptr(rbx + 20), ecx)),
        ("xadd m8", |a| a.xadd(byte_ptr(rbx + 21), ch)),
        ("cmpxchg m32", |a| a.cmpxchg(dword_ptr(rbx + 24), ecx)),
        ("cmpxchg m64", |a| a.cmpxchg(qword_ptr(rbx), rcx)),
        ("cmpxchg m16", |a| a.cmpxchg(word_ptr(rbx + 2), cx)),
        ("cmpxchg8b", |a| a.cmpxchg8b(qword_ptr(rbx + 8))),
        ("cmpxchg16b", |a| a.cmpxchg16b(xmmword_ptr(rbx + 16))),
        ("xchg m64", |a| a.xchg(qword_ptr(rbx + 4), rcx)),
    ]
}

/// Each locked form gives the registers, flags and memory of its unlocked
/// form, on random operands (equal and unequal comparisons included).
#[test]
fn locked_forms_compute_what_unlocked_ones_do() {
    let mut rng = xorshift(0x1234_5678_9abc_def1);
    for (name, form) in forms() {
        for round in 0..64 {
            let mut plain = long_mode();
            let mut locked = long_mode();
            let mut bytes = [0u8; 64];
            for b in bytes.chunks_mut(8) {
                b.copy_from_slice(&rng().to_le_bytes());
            }
            let mut g = [0u64; 16];
            for r in g.iter_mut() {
                *r = rng();
            }
            g[3] = DATA;
            g[6] = rng() % 300;
            if round % 2 == 0 {
                // Make the comparisons of CMPXCHG* succeed.
                let at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
                g[0] = match name {
                    "cmpxchg m32" => at(24),
                    "cmpxchg m64" => at(0),
                    "cmpxchg m16" => at(2),
                    "cmpxchg8b" => at(8),
                    _ => at(16),
                };
                g[2] = if name == "cmpxchg8b" { at(8) >> 32 } else { at(24) };
            }
            for c in [&mut plain, &mut locked] {
                c.state.gpr = g;
                c.state.set_arith_flags(crate::state::flags::CF, if round % 3 == 0 { 1 } else { 0 });
                c.mem().write(DATA, &bytes).unwrap();
            }
            exec_asm(&mut plain, form).unwrap();
            exec_asm(&mut locked, |a| form(a.lock())).unwrap();
            let mut m = ([0u8; 80], [0u8; 80]);
            plain.mem().read(DATA, &mut m.0).unwrap();
            locked.mem().read(DATA, &mut m.1).unwrap();
            assert_eq!(m.0, m.1, "{name} round {round}: memory");
            assert_eq!(plain.state.gpr, locked.state.gpr, "{name} round {round}: registers");
            assert_eq!(plain.state.flags(), locked.state.flags(), "{name} round {round}: flags");
            if mmu::atomic::split_locks_usable() {
                assert_eq!(locked.stats.lock_exclusive, 0, "{name}: one host atomic");
            }
        }
    }
}

/// A LOCK prefix where it is not allowed is still #UD, and faults stay
/// exact: a locked write to a read-only page faults as a write and changes
/// nothing.
#[test]
fn locked_forms_fault_as_unlocked_ones() {
    let mut c = long_mode();
    c.state.gpr[3] = READONLY;
    c.state.gpr[0] = 5;
    let pf = crate::exception::Exception::PageFault { addr: READONLY, error_code: 3 };
    assert_eq!(exec_asm(&mut c, |a| a.lock().add(dword_ptr(rbx), eax)), Err(pf));
    assert_eq!(exec_asm(&mut c, |a| a.xchg(dword_ptr(rbx), eax)), Err(pf));
    assert_eq!(exec_asm(&mut c, |a| a.lock().cmpxchg(dword_ptr(rbx), eax)), Err(pf));
    assert_eq!(c.state.gpr[0], 5);
    c.state.gpr[3] = UNMAPPED + 8;
    let pf = crate::exception::Exception::PageFault { addr: UNMAPPED + 8, error_code: 2 };
    assert_eq!(exec_asm(&mut c, |a| a.lock().bts(dword_ptr(rbx), 3)), Err(pf));
    // A register destination: #UD.
    assert_eq!(exec_bytes(&mut c, &[0xf0, 0x0f, 0xc1, 0xc0]), Err(crate::exception::Exception::InvalidOpcode));
    assert_eq!(c.stats.lock_retries + c.stats.lock_exclusive, 0);
}

/// A locked store into the block being run invalidates its code: the next
/// instruction runs as rewritten.
#[test]
fn a_locked_store_to_code_invalidates_it() {
    let mut c = long_mode();
    // lock inc byte [rip+1]; mov al, 5; hlt
    place(&mut c, &[0xf0, 0xfe, 0x05, 0x01, 0, 0, 0, 0xb0, 0x05, 0xf4]);
    assert_eq!(c.run(100), StopReason::Halted);
    assert_eq!(c.state.gpr[0] & 0xff, 6);
}

/// Counts MMIO accesses; reads give 41.
#[derive(Default, Clone)]
struct Mmio(Arc<Mutex<(u32, u32, Vec<u8>)>>);

impl Platform for Mmio {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        0
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        let mut g = self.0.lock().unwrap();
        g.0 += 1;
        data.fill(0);
        data[0] = 41;
    }
    fn mmio_write(&mut self, _addr: u64, data: &[u8]) {
        let mut g = self.0.lock().unwrap();
        g.1 += 1;
        g.2 = data.to_vec();
    }
}

/// A locked instruction on MMIO runs through the fallback: one read and
/// one write reach the device.
#[test]
fn a_locked_mmio_access_reads_and_writes_the_device_once() {
    let mmio = Mmio::default();
    let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
    let mut c = Cpu::new(mem, Box::new(mmio.clone()));
    prot_setup(&mut c);
    let runs = Arc::new(Mutex::new(0));
    let r = runs.clone();
    c.set_exclusive(Some(Arc::new(move |f: &mut dyn FnMut()| {
        *r.lock().unwrap() += 1;
        f();
    })));
    c.state.gpr[3] = 0xfee0_0000;
    exec_asm(&mut c, |a| a.lock().add(dword_ptr(ebx), 1)).unwrap();
    assert_eq!(*mmio.0.lock().unwrap(), (1, 1, vec![42, 0, 0, 0]));
    assert_eq!((*runs.lock().unwrap(), c.stats.lock_exclusive), (1, 1));
}

/// Stops the world for the tests' processors: each runs slices of
/// instructions between [`World::enter`] and [`World::leave`]; an
/// exclusive request waits for every other processor to be out of its
/// slice, and blocks new slices until it is served.
#[derive(Default)]
struct World {
    m: Mutex<WorldState>,
    cv: Condvar,
}

#[derive(Default)]
struct WorldState {
    running: usize,
    pending: usize,
    exclusive: bool,
}

impl World {
    fn enter(&self) {
        let mut g = self.m.lock().unwrap();
        while g.pending > 0 || g.exclusive {
            g = self.cv.wait(g).unwrap();
        }
        g.running += 1;
    }

    fn leave(&self) {
        let mut g = self.m.lock().unwrap();
        g.running -= 1;
        self.cv.notify_all();
    }

    fn exclusive(&self, f: &mut dyn FnMut()) {
        let mut g = self.m.lock().unwrap();
        // The caller is stopped at an instruction boundary while it waits.
        g.running -= 1;
        g.pending += 1;
        self.cv.notify_all();
        while g.exclusive || g.running > 0 {
            g = self.cv.wait(g).unwrap();
        }
        g.exclusive = true;
        g.pending -= 1;
        drop(g);
        f();
        let mut g = self.m.lock().unwrap();
        g.exclusive = false;
        g.running += 1;
        self.cv.notify_all();
    }
}

/// Run `code` (placed at the long-mode test CPU's RIP) on `n` processors,
/// each on its own host thread over one guest memory, until each halts,
/// with [`World`] as their stop-the-world hook. Returns the memory and
/// each processor's statistics.
fn run_on_threads(n: usize, code: impl Fn(&Cpu) -> Vec<u8>) -> (Arc<GuestMemory>, Vec<crate::CpuStats>) {
    let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
    let mut c0 = Cpu::new(mem.clone(), Box::new(NoDevices));
    long_setup(&mut c0);
    let bytes = code(&c0);
    place(&mut c0, &bytes);
    let state: CpuState = c0.state;
    drop(c0);
    let w = Arc::new(World::default());
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (mem, w) = (mem.clone(), w.clone());
            std::thread::spawn(move || {
                let mut c = Cpu::new(mem, Box::new(NoDevices));
                c.set_state(state);
                c.state.gpr[15] = i as u64;
                let hook = w.clone();
                c.set_exclusive(Some(Arc::new(move |f: &mut dyn FnMut()| hook.exclusive(f))));
                loop {
                    w.enter();
                    let r = c.run(2_000);
                    w.leave();
                    match r {
                        StopReason::Budget => {}
                        StopReason::Halted => break,
                        other => panic!("processor {i} stopped: {other:?}"),
                    }
                }
                assert_eq!(c.stats.exceptions, 0);
                c.stats
            })
        })
        .collect();
    let stats = threads.into_iter().map(|t| t.join().unwrap()).collect();
    (mem, stats)
}

const THREADS: usize = 4;
const N: u32 = 200_000;

#[test]
fn lock_xadd_counts_exactly_across_threads() {
    let (mem, _) = run_on_threads(THREADS, |c| {
        assemble(c, |a| {
            let mut top = a.create_label();
            a.mov(rbx, DATA)?;
            a.mov(ecx, N)?;
            a.set_label(&mut top)?;
            a.mov(eax, 1)?;
            a.lock().xadd(dword_ptr(rbx), eax)?;
            // A second counter, 64-bit, across a cache line.
            a.lock().add(qword_ptr(rbx + 0x3c), 2)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        })
    });
    assert_eq!(mem.read_u32(DATA).unwrap(), THREADS as u32 * N);
    assert_eq!(mem.read_u64(DATA + 0x3c).unwrap(), 2 * THREADS as u64 * u64::from(N));
}

/// A spinlock taken with LOCK CMPXCHG (or XCHG) and released with a plain
/// store protects a plain increment.
fn spinlock(c: &Cpu, xchg: bool) -> Vec<u8> {
    assemble(c, |a| {
        let mut spin = a.create_label();
        let mut wait = a.create_label();
        a.mov(rbx, DATA)?;
        a.mov(ecx, N)?;
        a.mov(edx, 1)?;
        a.set_label(&mut spin)?;
        if xchg {
            a.mov(eax, 1)?;
            a.xchg(dword_ptr(rbx), eax)?;
            a.test(eax, eax)?;
        } else {
            a.xor(eax, eax)?;
            a.lock().cmpxchg(dword_ptr(rbx), edx)?;
        }
        a.jnz(wait)?;
        a.mov(esi, dword_ptr(rbx + 64))?;
        a.add(esi, 1)?;
        a.mov(dword_ptr(rbx + 64), esi)?;
        a.mov(dword_ptr(rbx), 0)?;
        a.dec(ecx)?;
        a.jnz(spin)?;
        a.hlt()?;
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(dword_ptr(rbx), 0)?;
        a.jne(wait)?;
        a.jmp(spin)
    })
}

#[test]
fn a_lock_cmpxchg_spinlock_protects_a_plain_increment() {
    let (mem, _) = run_on_threads(THREADS, |c| spinlock(c, false));
    assert_eq!(mem.read_u32(DATA + 64).unwrap(), THREADS as u32 * N);
    assert_eq!(mem.read_u32(DATA).unwrap(), 0);
}

#[test]
fn an_xchg_spinlock_protects_a_plain_increment() {
    let (mem, _) = run_on_threads(THREADS, |c| spinlock(c, true));
    assert_eq!(mem.read_u32(DATA + 64).unwrap(), THREADS as u32 * N);
}

/// A 128-bit counter incremented through CMPXCHG16B loops (the failed
/// exchange loads RDX:RAX), and a 64-bit one through CMPXCHG8B at a
/// misaligned address.
#[test]
fn cmpxchg16b_and_cmpxchg8b_loops_count_exactly() {
    const M: u32 = 50_000;
    let (mem, _) = run_on_threads(THREADS, |c| {
        c.mem().write_u64(DATA, u64::MAX - 70_000).unwrap();
        c.mem().write_u64(DATA + 0x24, u64::from(u32::MAX) - 30_000).unwrap();
        assemble(c, |a| {
            let mut top = a.create_label();
            let mut retry16 = a.create_label();
            let mut retry8 = a.create_label();
            a.mov(rdi, DATA)?;
            a.mov(esi, M)?;
            a.set_label(&mut top)?;
            a.mov(rax, qword_ptr(rdi))?;
            a.mov(rdx, qword_ptr(rdi + 8))?;
            a.set_label(&mut retry16)?;
            a.mov(rbx, rax)?;
            a.mov(rcx, rdx)?;
            a.add(rbx, 1)?;
            a.adc(rcx, 0)?;
            a.lock().cmpxchg16b(xmmword_ptr(rdi))?;
            a.jnz(retry16)?;
            a.mov(eax, dword_ptr(rdi + 0x24))?;
            a.mov(edx, dword_ptr(rdi + 0x28))?;
            a.set_label(&mut retry8)?;
            a.mov(ebx, eax)?;
            a.mov(ecx, edx)?;
            a.add(ebx, 1)?;
            a.adc(ecx, 0)?;
            a.lock().cmpxchg8b(qword_ptr(rdi + 0x24))?;
            a.jnz(retry8)?;
            a.dec(esi)?;
            a.jnz(top)?;
            a.hlt()
        })
    });
    let total = u128::from(THREADS as u32 * M);
    let lo = mem.read_u64(DATA).unwrap();
    let hi = mem.read_u64(DATA + 8).unwrap();
    assert_eq!(u128::from(lo) | (u128::from(hi) << 64), u128::from(u64::MAX - 70_000) + total);
    assert_eq!(mem.read_u64(DATA + 0x24).unwrap(), u64::from(u32::MAX) - 30_000 + total as u64);
}

/// LOCK ADD across a page boundary cannot be one host atomic: it runs with
/// the other processors stopped, and no update is lost, to it or to the
/// aligned counter updated alongside.
#[test]
fn a_page_crossing_lock_add_goes_through_the_fallback() {
    const M: u32 = 3_000;
    let (mem, stats) = run_on_threads(THREADS, |c| {
        assemble(c, |a| {
            let mut top = a.create_label();
            a.mov(rbx, DATA + 0xffe)?;
            a.mov(ecx, M)?;
            a.set_label(&mut top)?;
            a.lock().add(dword_ptr(rbx), 3)?;
            a.lock().inc(qword_ptr(rbx + 0x12))?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        })
    });
    assert_eq!(mem.read_u32(DATA + 0xffe).unwrap(), 3 * THREADS as u32 * M);
    assert_eq!(mem.read_u64(DATA + 0x1010).unwrap(), u64::from(THREADS as u32 * M));
    let exclusive: u64 = stats.iter().map(|s| s.lock_exclusive).sum();
    assert!(exclusive >= u64::from(THREADS as u32 * M), "{exclusive} exclusive runs");
}
