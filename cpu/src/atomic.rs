//! Locked instructions when processors run on host threads of their own.
//!
//! Every processor of a machine may run on its own host thread, each with
//! its own [`Cpu`], all over one [`mmu::GuestMemory`]. A locked
//! read-modify-write (a LOCK-prefixed ADD, ADC, SUB, SBB, AND, OR, XOR,
//! INC, DEC, NEG, NOT, BTS, BTR, BTC, XADD, CMPXCHG, CMPXCHG8B or
//! CMPXCHG16B with a memory destination, and XCHG with memory, locked with
//! or without the prefix) must then be atomic against the other threads.
//!
//! # How a locked instruction runs
//!
//! The block decoder gives such an instruction the handler
//! [`crate::ops::locked`], which runs the instruction's *locked form*
//! (the same handler code, instantiated for locked accesses):
//!
//! 1. The read of the destination makes every check of a write (segment,
//!    alignment, breakpoints, the page walk of every page touched, as
//!    [`Cpu::read_mem_rmw`] does), then loads the bytes from guest RAM and
//!    records where they are and what they held.
//! 2. The write of the result is a compare-exchange of the recorded value
//!    with the result ([`mmu::GuestMemory::compare_exchange`]).
//! 3. If another processor changed the bytes in between, the exchange
//!    fails: the registers and flags the handler changed are put back and
//!    the instruction runs again on the new value (after a short spin
//!    that grows with each lost race), up to [`LOCK_RETRIES`] times. So
//!    its results (flags, XADD's and CMPXCHG's registers) are those of
//!    one run on the value it replaced.
//!
//! CMPXCHG writes its destination back unchanged when the comparison
//! fails (as the processor does): an exchange of the value with itself,
//! which confirms that the value loaded into the accumulator was current.
//! CMPXCHG8B and CMPXCHG16B make a single compare-exchange of all 8 or 16
//! bytes with rDX:rAX, and load rDX:rAX from what it found on a mismatch.
//!
//! Exceptions are those of the unlocked instruction: every check runs
//! before the first access, in the same order. On a single thread a
//! locked instruction costs its unlocked form plus the host's locked
//! compare-exchange; instructions without LOCK run as before.
//!
//! # The exclusive fallback
//!
//! What cannot be one host atomic runs with every other processor stopped
//! (as QEMU's `cpu_exec_step_atomic`): a destination that crosses a page,
//! MMIO or ROM, a misaligned one on a host without split locks, CMPXCHG16B
//! on a host without a 16-byte compare-exchange, and an instruction that
//! lost [`LOCK_RETRIES`] races in a row. The instruction then runs
//! unlocked, inside the closure given to the hook installed with
//! [`Cpu::set_exclusive`]; see [`ExclusiveFn`] for what the hook must do.
//! Without a hook (one processor, or several taking turns on one thread)
//! the closure just runs. The first use is logged (target `cpu`).
//!
//! # The processor's own locked updates
//!
//! The accessed bits the page walker sets (see [`mmu::paging`]), the
//! accessed bit of a segment descriptor a segment load sets, and the busy
//! bit of a TSS descriptor (LTR, task switches) are locked updates on
//! hardware: they are atomic ORs and ANDs of guest RAM here
//! (`Cpu::locked_sys_bits`).
//!
//! # Ordering
//!
//! The compare-exchanges are sequentially consistent, full barriers, as a
//! locked instruction is; MFENCE is a full host fence. Plain accesses
//! follow the rules of [`mmu::atomic`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use iced_x86::Instruction;
use mmu::{Access, Privilege};

use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::ops::Handler;

/// Runs a closure while no other processor of the machine runs:
/// `run(f)` stops every other vCPU at an instruction boundary, calls `f`
/// exactly once, and lets them go on.
///
/// The machine's run loop installs it on each [`Cpu`]
/// ([`Cpu::set_exclusive`]) when its processors run on several host
/// threads. What it must do:
///
/// - It is called on the calling processor's own thread, from inside
///   [`Cpu::run`], [`Cpu::step`] or [`Cpu::exec_decoded`] (between the
///   start and the end of one instruction, whose effects have not begun:
///   the caller stands at an instruction boundary).
/// - Before calling `f` it waits until every other processor has stopped
///   between two instructions: out of `Cpu::run` and out of translated
///   code, or parked where it runs no guest instruction, and holding no
///   lock `f` may need (a device's, the buses': `f` may make MMIO accesses
///   through the caller's [`crate::Platform`]). Stopping them at their next
///   [`crate::Platform::stop_requested`] check, with a kick out of HLT
///   waits, is the usual way.
/// - While it waits, the caller counts as stopped: two processors may ask
///   at the same time, and the second one's request must wait for the
///   first's section to end, not for the first processor to stop (it
///   never will). Requests are served one at a time.
/// - It calls `f` once, then lets the others go on.
///
/// Device threads that write guest memory (DMA) are not among what it
/// stops: an instruction run this way is atomic against the other
/// processors, not against DMA.
pub type ExclusiveFn = Arc<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// Times a locked instruction runs again after losing a race (another
/// processor changed its destination between its read and its exchange)
/// before it runs with the other processors stopped.
pub const LOCK_RETRIES: u32 = 64;

/// Where the current locked instruction stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum LockStep {
    /// No locked access yet.
    #[default]
    Idle,
    /// The destination was read: `seg:offset`, at linear `lin` and guest
    /// physical `phys`, `size` bytes holding `old`.
    Read { seg: usize, offset: u64, lin: u64, phys: u64, size: u32, old: u64 },
    /// The result was stored (or, for CMPXCHG8B/16B, the comparison made).
    Done,
    /// Another processor changed the destination first: run it again.
    Retry,
    /// Not one host atomic: run it with the other processors stopped.
    Exclusive,
}

impl Cpu {
    /// Install (or remove, with `None`) the run loop's way of running a
    /// closure while no other processor runs: see [`ExclusiveFn`]. Without
    /// one, a locked instruction that cannot be one host atomic just runs,
    /// which is atomic only while no other processor runs at the same time
    /// (one processor, or several taking turns on one thread): a run loop
    /// that runs processors on several threads must install one.
    pub fn set_exclusive(&mut self, run: Option<ExclusiveFn>) {
        self.exclusive = run;
    }

    /// Read the destination of a locked read-modify-write: the checks of
    /// [`Cpu::read_mem_rmw`], then a load recorded for
    /// [`Cpu::write_mem_locked`]. When the access cannot be one host atomic
    /// the instruction is marked for the exclusive fallback and the value
    /// returned is meaningless (the instruction is run again).
    pub(crate) fn read_mem_locked(&mut self, seg: usize, offset: u64, size: u32) -> Fault<u64> {
        let (lin, phys) = self.probe_write_at(seg, offset, size)?;
        // One read per instruction, in one page of RAM.
        if let (LockStep::Idle, Some(phys)) = (self.lock, phys) {
            let p = self.privilege();
            let old = match self.mmu.atomic_load_fast(p, lin, size as u8) {
                Some(v) => Ok(v),
                None => self.mem().atomic_load(phys, size as u8),
            };
            if let Ok(old) = old {
                self.lock = LockStep::Read { seg, offset, lin, phys, size, old };
                return Ok(old);
            }
        }
        self.lock = LockStep::Exclusive;
        Ok(0)
    }

    /// Write the result of a locked read-modify-write: a compare-exchange
    /// with what [`Cpu::read_mem_locked`] read. A lost race marks the
    /// instruction to run again; the write is then not made.
    pub(crate) fn write_mem_locked(&mut self, seg: usize, offset: u64, size: u32, value: u64) -> Fault<()> {
        match self.lock {
            LockStep::Read { seg: s, offset: o, lin, phys, size: n, old } if (s, o, n) == (seg, offset, size) => {
                let p = self.privilege();
                let r = match self.mmu.compare_exchange_fast(p, lin, size as u8, old, value) {
                    Some(r) => Ok(r),
                    None => self.mem().compare_exchange(phys, size as u8, old, value),
                };
                self.lock = match r {
                    Ok(Ok(_)) => LockStep::Done,
                    Ok(Err(_)) => LockStep::Retry,
                    Err(_) => LockStep::Exclusive,
                };
                if self.lock == LockStep::Done {
                    self.note_code_writes();
                }
            }
            LockStep::Retry | LockStep::Exclusive => {}
            // A write without its read, or elsewhere: run it unlocked, alone.
            _ => self.lock = LockStep::Exclusive,
        }
        Ok(())
    }

    /// Mark the current locked instruction for the exclusive fallback.
    pub(crate) fn lock_exclusive(&mut self) {
        self.lock = LockStep::Exclusive;
    }

    /// Note that the current locked instruction completed its atomic
    /// update itself (CMPXCHG8B/16B).
    pub(crate) fn lock_done(&mut self) {
        self.lock = LockStep::Done;
        self.note_code_writes();
    }

    /// Run `insn` through `locked`, its locked form, until its update is
    /// made atomically; after [`LOCK_RETRIES`] lost races, or when it
    /// cannot be one host atomic, through its unlocked handler with the
    /// other processors stopped.
    pub(crate) fn run_locked(&mut self, locked: Handler, insn: &Instruction) -> Fault<()> {
        // What the handlers of locked instructions change besides memory
        // (RIP is already past the instruction).
        let (gpr, rflags, lazy) = (self.state.gpr, self.state.rflags, self.state.lazy);
        for attempt in 0..LOCK_RETRIES {
            if attempt > 0 {
                // Processors that keep colliding on one location fall into
                // step: wait a little longer after each lost race.
                for _ in 0..1u32 << attempt.min(8) {
                    std::hint::spin_loop();
                }
            }
            self.lock = LockStep::Idle;
            let r = locked(self, insn);
            let step = std::mem::take(&mut self.lock);
            if !matches!(step, LockStep::Retry | LockStep::Exclusive) {
                return r;
            }
            self.state.gpr = gpr;
            self.state.rflags = rflags;
            self.state.lazy = lazy;
            if step == LockStep::Exclusive {
                break;
            }
            self.stats.lock_retries += 1;
        }
        self.run_exclusive(insn)
    }

    /// Run `insn` through its unlocked handler while no other processor
    /// runs (through the hook of [`Cpu::set_exclusive`], if any).
    #[cold]
    fn run_exclusive(&mut self, insn: &Instruction) -> Fault<()> {
        let plain = crate::ops::handler(insn.code());
        static LOGGED: AtomicBool = AtomicBool::new(false);
        if !LOGGED.swap(true, Ordering::Relaxed) {
            tracing::info!(
                target: "cpu",
                "locked {:?} at {:#x} is not one host atomic (a page-crossing, MMIO, ROM or misaligned operand, \
                 or lost races): running it with the other processors stopped (logged once)",
                insn.mnemonic(),
                self.insn_start,
            );
        }
        self.stats.lock_exclusive += 1;
        let Some(run) = self.exclusive.clone() else {
            return plain(self, insn);
        };
        let mut result = None;
        run(&mut || result = Some(plain(self, insn)));
        result.unwrap_or_else(|| {
            tracing::error!(target: "cpu", "the exclusive hook did not run {:?}: running it anyway", insn.mnemonic());
            plain(self, insn)
        })
    }

    /// A locked update of the byte at linear address `lin` (a supervisor
    /// access: descriptor tables): set `bits` (`on`) or clear them, as one
    /// host atomic on guest RAM. The page is walked as a write (a fault is
    /// raised as the write would raise it). Outside RAM the update is a
    /// plain read and write.
    pub(crate) fn locked_sys_bits(&mut self, lin: u64, bits: u8, on: bool) -> Fault<()> {
        let phys = self.translate(lin, Access::Write, Privilege::Supervisor)?;
        let mem = self.mem();
        let r = if on { mem.fetch_or(phys, 1, u64::from(bits)) } else { mem.fetch_and(phys, 1, u64::from(!bits)) };
        if r.is_ok() {
            self.note_code_writes();
            return Ok(());
        }
        let b = self.read_sys::<1>(lin)?[0];
        let nb = if on { b | bits } else { b & !bits };
        if nb != b {
            self.write_sys(lin, &[nb])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
