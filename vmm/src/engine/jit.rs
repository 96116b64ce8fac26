//! The JIT as an engine (`--accel jit`): the interpreter runs cold code
//! and counts it, and hot regions run as Cranelift-compiled code
//! ([`jit::Jit`]). Both work on one `cpu::Cpu`, so the state, the soft
//! TLB and the decoded-block cache are shared, and every device access
//! goes through the machine's one I/O interface.

use std::time::Duration;

use cpu::{Cpu, CpuState};

use super::interp::{exit_of, interp_line, model_line};
use super::{Engine, EngineContext, EngineStats, Exit, Kicker, Slice};
use crate::config::MachineConfig;
use crate::error::Error;

/// The guest CPU under the JIT.
pub struct JitEngine {
    cpu: Cpu,
    jit: jit::Jit,
}

/// The JIT's settings: the defaults, or the environment's
/// `FERROVM_JIT_THRESHOLD` (runs of a block before it is compiled),
/// `FERROVM_JIT_OPT` (`none`, `speed`) and `FERROVM_JIT_REGALLOC`
/// (`backtracking`, `single_pass`), for measurements; `FERROVM_JIT_PERFMAP=1`
/// names compiled regions for `perf` in `/tmp/perf-PID.map`;
/// `FERROVM_JIT_LINK=0` makes every region exit return to the run loop;
/// `FERROVM_JIT_SHARE=0` gives each vCPU's JIT its own compiled regions.
pub fn config_from_env(machine: &MachineConfig) -> Result<jit::Config, Error> {
    let mut c = jit::Config { disk_cache: machine.jit_cache.clone(), ..jit::Config::default() };
    if let Ok(v) = std::env::var("FERROVM_JIT_THRESHOLD") {
        c.threshold = v
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::Config(format!("FERROVM_JIT_THRESHOLD={v}: expected a positive count")))?;
    }
    if let Ok(v) = std::env::var("FERROVM_JIT_OPT") {
        if !matches!(v.as_str(), "none" | "speed" | "speed_and_size") {
            return Err(Error::Config(format!("FERROVM_JIT_OPT={v}: expected none, speed or speed_and_size")));
        }
        c.settings.opt_level = v;
    }
    c.perf_map = std::env::var("FERROVM_JIT_PERFMAP").is_ok_and(|v| v == "1");
    c.chain = std::env::var("FERROVM_JIT_LINK").map_or(true, |v| v != "0");
    c.content_cache = std::env::var("FERROVM_JIT_CONTENT").map_or(true, |v| v != "0");
    if let Ok(v) = std::env::var("FERROVM_JIT_PROBE") {
        c.probe = v
            .parse::<u32>()
            .map_err(|_| Error::Config(format!("FERROVM_JIT_PROBE={v}: expected a count of runs (0: never)")))?;
    }
    if let Ok(v) = std::env::var("FERROVM_JIT_REGALLOC") {
        if !matches!(v.as_str(), "backtracking" | "single_pass") {
            return Err(Error::Config(format!("FERROVM_JIT_REGALLOC={v}: expected backtracking or single_pass")));
        }
        c.settings.regalloc = v;
    }
    Ok(c)
}

/// How many compiled instructions a slice allows for each interpreted
/// one: a slice's time stays about the same whichever code runs, while the
/// run loop's look at timers, events and start-up IPIs between slices stays
/// a small part of compiled code's time.
const COMPILED_PER_INTERPRETED: u64 = 10;

impl JitEngine {
    pub fn new(ctx: &EngineContext<'_>, config: jit::Config) -> Result<Self, Error> {
        let mut cpu = super::interp::boot_cpu(ctx);
        let fail = |e: String| Error::Accel(format!("the JIT cannot start: {e}"));
        // Every vCPU's JIT shares one table of compiled regions (unless
        // FERROVM_JIT_SHARE=0, for measurements).
        let private = std::env::var("FERROVM_JIT_SHARE").is_ok_and(|v| v == "0");
        let shared = match ctx.jit_shared.get() {
            Some(s) if !private => s.clone(),
            _ if private => {
                jit::shared::Shared::with_disk_cache(&config.settings, config.disk_cache.as_deref()).map_err(fail)?
            }
            _ => {
                let s = jit::shared::Shared::with_disk_cache(&config.settings, config.disk_cache.as_deref())
                    .map_err(fail)?;
                ctx.jit_shared.get_or_init(|| s).clone()
            }
        };
        let jit = jit::Jit::with_shared(&mut cpu, config, shared).map_err(fail)?;
        Ok(JitEngine { cpu, jit })
    }
}

impl Engine for JitEngine {
    fn name(&self) -> &'static str {
        "jit"
    }

    fn run(&mut self, slice: &Slice) -> Result<Exit, Error> {
        // The slice is counted in interpreted instructions; compiled code
        // runs one in about a tenth of the time, so it gets ten times as
        // many before the machine looks at its timers and flags again.
        let compiled = slice.instructions.saturating_mul(COMPILED_PER_INTERPRETED);
        Ok(exit_of(self.jit.run_split(&mut self.cpu, compiled, slice.instructions)))
    }

    fn kicker(&self) -> Option<Kicker> {
        // Like the interpreter: compiled code leaves at back edges when its
        // slice is used up, and I/O goes through the interpreter's checks.
        None
    }

    fn kicks_for_interrupts(&self) -> bool {
        false
    }

    fn reset(&mut self, state: &CpuState) -> Result<(), Error> {
        self.cpu.set_state(*state);
        // Tells the JIT too (an invalidation of everything).
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

    fn stats(&mut self, total: Duration) -> EngineStats {
        let instructions = self.jit.instructions(&self.cpu);
        let mut lines = vec![model_line(&self.cpu), interp_line(&self.cpu)];
        lines.extend(self.jit.report(total, instructions));
        EngineStats { instructions: Some(instructions), lines }
    }
}
