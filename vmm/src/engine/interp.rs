//! The interpreter as an engine (`--accel interp`).

use std::time::Duration;

use cpu::{Cpu, CpuState, StopReason};

use super::{Engine, EngineContext, EngineStats, Exit, Kicker, Slice};
use crate::error::Error;

/// The guest CPU in the interpreter.
pub struct InterpEngine {
    cpu: Cpu,
}

impl InterpEngine {
    pub fn new(ctx: &EngineContext<'_>) -> Self {
        InterpEngine { cpu: boot_cpu(ctx) }
    }
}

/// An interpreter CPU on the context's memory and I/O, of its CPU model,
/// in its boot state.
pub(crate) fn boot_cpu(ctx: &EngineContext<'_>) -> Cpu {
    let mut cpu = Cpu::new(ctx.mem.clone(), Box::new(ctx.io.clone()));
    cpu.set_model(ctx.config.cpu_model);
    cpu.set_topology(ctx.config.topology, ctx.index);
    cpu.set_state(ctx.boot_state);
    cpu.set_guest_log(ctx.config.guest_log.clone());
    cpu
}

/// The machine's answer to why the interpreter stopped.
pub(crate) fn exit_of(why: StopReason) -> Exit {
    match why {
        StopReason::Halted => Exit::Halted,
        StopReason::Shutdown(chain) => Exit::Shutdown(chain),
        StopReason::Debug => Exit::Debug,
        StopReason::Budget | StopReason::Requested | StopReason::UserMode | StopReason::Hot => Exit::Budget,
    }
}

/// The CPU model the interpreter presents, as a `--stats` line.
pub(crate) fn model_line(cpu: &Cpu) -> String {
    let m = cpu.model();
    format!("CPU model {m} ({})", m.describe())
}

/// The interpreter's counters as a `--stats` line.
pub(crate) fn interp_line(cpu: &Cpu) -> String {
    format!(
        "{} blocks decoded ({} code pages evicted from the decode cache), {} exceptions, {} interrupts, {} page walks, {} TLB flushes",
        cpu.stats.blocks_decoded,
        cpu.stats.cache_evictions,
        cpu.stats.exceptions,
        cpu.stats.interrupts,
        cpu.mmu.walks,
        cpu.mmu.flushes
    )
}

impl Engine for InterpEngine {
    fn name(&self) -> &'static str {
        "interp"
    }

    fn run(&mut self, slice: &Slice) -> Result<Exit, Error> {
        Ok(exit_of(self.cpu.run(slice.instructions)))
    }

    fn kicker(&self) -> Option<Kicker> {
        // The interpreter asks the I/O interface after every access and
        // block whether to stop, and takes interrupts between blocks.
        None
    }

    fn kicks_for_interrupts(&self) -> bool {
        false
    }

    fn reset(&mut self, state: &CpuState) -> Result<(), Error> {
        self.cpu.set_state(*state);
        self.cpu.flush_code_cache();
        Ok(())
    }

    fn state(&mut self) -> Result<CpuState, Error> {
        Ok(self.cpu.state)
    }

    fn set_state(&mut self, state: &CpuState) -> Result<(), Error> {
        self.cpu.set_state(*state);
        Ok(())
    }

    fn inject_nmi(&mut self) -> Result<(), Error> {
        self.cpu.inject_nmi();
        Ok(())
    }

    fn set_debug(&mut self, stops: Option<cpu::DebugStops>) -> Result<(), Error> {
        self.cpu.set_debug_stops(stops);
        Ok(())
    }

    fn take_watch_hit(&mut self) -> Option<cpu::WatchHit> {
        self.cpu.take_watch_hit()
    }

    fn set_exclusive(&mut self, run: cpu::ExclusiveFn) {
        self.cpu.set_exclusive(Some(run));
    }

    fn sync_memory(&mut self) {
        self.cpu.sync_code_parked(false);
    }

    fn park_memory(&mut self) {
        self.cpu.sync_code_parked(true);
    }

    fn stats(&mut self, _total: Duration) -> EngineStats {
        EngineStats {
            instructions: Some(self.cpu.stats.instructions),
            lines: vec![model_line(&self.cpu), interp_line(&self.cpu)],
        }
    }
}
