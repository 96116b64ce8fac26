//! One virtual CPU as the run loop drives it.
//!
//! What is per vCPU and what the machine shares:
//!
//! | per vCPU (here) | shared by the machine |
//! |---|---|
//! | the engine instance, and in it the CPU state, the soft TLB and the decode state | guest memory |
//! | the run slice | the devices and their buses |
//! | the time spent halted | the code cache of the JIT (compiled regions) |
//! | its local APIC (today inside the machine's interrupt controller) | the I/O thread, the clock, the timers |
//!
//! The machine runs one [`Vcpu`] on its own thread today. What SMP changes:
//! - [`crate::Machine::run`] builds one `Vcpu` per CPU, each from its own
//!   [`crate::engine::EngineContext`] (the bootstrap processor's boot state,
//!   or wait-for-SIPI for the others), and runs each on a thread of its own
//!   (or round-robin on one thread for the deterministic mode);
//! - the local APIC moves out of the shared interrupt controller into the
//!   vCPU, and the interrupt controller keeps only the routing between them;
//! - the run loop's machine work (timers, events, console input) moves to
//!   one thread, and each vCPU's loop keeps its engine, its pause point and
//!   its HLT idling, waking on its own local APIC's interrupts;
//! - the JIT's code cache is shared, with invalidation reaching every vCPU,
//!   while each vCPU keeps its own soft TLB, flushed through its own queue.

use std::time::{Duration, Instant};

use crate::engine::{Engine, Exit, Slice};
use crate::error::Error;

/// Instructions the interpreter runs between looks at timers, devices and
/// events: short enough that a 4 ms timer period is never skipped.
pub const SLICE: u64 = 20_000;

/// One virtual CPU: its engine and what the run loop keeps for it.
pub struct Vcpu<'m> {
    index: u32,
    engine: Box<dyn Engine + 'm>,
    /// Instructions a run may go before the machine looks again.
    slice: u64,
    /// Time spent halted waiting for work, and how many waits.
    halted: Duration,
    halts: u64,
}

impl<'m> Vcpu<'m> {
    /// vCPU `index` (0: the bootstrap processor), run by `engine`.
    pub fn new(index: u32, engine: Box<dyn Engine + 'm>) -> Self {
        Self { index, engine, slice: SLICE, halted: Duration::ZERO, halts: 0 }
    }

    /// The vCPU's index (its initial APIC ID).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The engine that runs this vCPU.
    pub fn engine(&mut self) -> &mut (dyn Engine + 'm) {
        &mut *self.engine
    }

    /// Runs the guest for one slice, at most until `until`.
    pub fn run_slice(&mut self, until: Instant) -> Result<Exit, Error> {
        self.engine.run(&Slice { instructions: self.slice, until: Some(until) })
    }

    /// Counts one wait in HLT that lasted `d`.
    pub fn note_halt(&mut self, d: Duration) {
        self.halted += d;
        self.halts += 1;
    }

    /// How long this vCPU waited halted, for `--stats` (the interpreter's
    /// and the split mode's; KVM's own halts are not seen here).
    pub fn halted_stat(&self) -> String {
        format!("halted {:.3} s in {} waits for an interrupt", self.halted.as_secs_f64(), self.halts)
    }
}
