//! One virtual CPU as the run loop drives it.
//!
//! What is per vCPU and what the machine shares:
//!
//! | per vCPU (here) | shared by the machine |
//! |---|---|
//! | the engine instance, and in it the CPU state, the soft TLB, the decoded blocks and the JIT's compiled code | guest memory, and in it the code-page bits whose writes reach every vCPU's code |
//! | the run slice | the devices and their buses |
//! | the time spent halted | the I/O thread, the clock, the timers |
//! | its local APIC (in the machine's interrupt controller, by index) and its start-up state (running, or waiting for a SIPI) | the routing between the APICs, the I/O APIC and the 8259A pair |
//!
//! The machine ([`crate::Machine::run`]) builds one `Vcpu` per CPU, each
//! from its own [`crate::engine::EngineContext`] (the bootstrap
//! processor's boot state, or the reset state for the others, which wait
//! for a start-up IPI). The interpreter and the JIT run them round-robin
//! on one thread, a slice each in index order; each vCPU's I/O names its
//! index, so its local APIC answers its accesses.

use std::time::{Duration, Instant};

use crate::engine::{Engine, Exit, Kicker, Slice};
use crate::error::Error;

/// Instructions the interpreter runs between looks at timers, devices and
/// events: short enough that a 4 ms timer period is never skipped. (The
/// JIT counts ten compiled instructions as one of these.)
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
    /// Time run since the last throttle sleep
    /// ([`crate::RunControl::set_throttle`]).
    pub(crate) ran_since_throttle: Duration,
}

impl<'m> Vcpu<'m> {
    /// vCPU `index` (0: the bootstrap processor), run by `engine`.
    pub fn new(index: u32, engine: Box<dyn Engine + 'm>) -> Self {
        Self { index, engine, slice: SLICE, halted: Duration::ZERO, halts: 0, ran_since_throttle: Duration::ZERO }
    }

    /// The vCPU's index (its initial APIC ID).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// A handle that makes the engine's running slice return soon, for
    /// engines that need one ([`Engine::kicker`]).
    pub fn kicker(&self) -> Option<Kicker> {
        self.engine.kicker()
    }

    /// Whether an interrupt for this vCPU must kick its running engine
    /// ([`Engine::kicks_for_interrupts`]).
    pub fn kicks_for_interrupts(&self) -> bool {
        self.engine.kicks_for_interrupts()
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
