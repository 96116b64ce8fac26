//! The JIT side: the interpreter side's guest, with each sequence compiled
//! as a region before it runs (every block of its page, run or not), so
//! the translated forms run, and what they do not translate runs through
//! the interpreter's handlers from compiled code.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cpu::{Cpu, StopReason};
use mmu::GuestMemory;

use crate::gen::{Assembled, Case};
use crate::interp::{load_case, PortLog, BUDGET};
use crate::machine;
use crate::outcome::{End, Outcome};

pub struct JitSide {
    pub mem: Arc<GuestMemory>,
    cpu: Cpu,
    log: Arc<Mutex<PortLog>>,
    jit: jit::Jit,
    /// Sequences whose first block was compiled.
    pub compiled: u64,
}

impl JitSide {
    pub fn new() -> Result<Self, String> {
        let mem = Arc::new(machine::build_memory());
        let log = Arc::new(Mutex::new(PortLog::default()));
        let mut cpu = crate::interp::new_cpu(mem.clone(), log.clone());
        let cfg = jit::Config { synchronous: true, threshold: 1, ..jit::Config::default() };
        let jit = jit::Jit::new(&mut cpu, cfg)?;
        Ok(JitSide { mem, cpu, log, jit, compiled: 0 })
    }

    /// Native and fallback instructions so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.jit.stats.native_insns, self.jit.stats.fallback_insns)
    }

    pub fn run(&mut self, case: &Case, asm: &Assembled) -> Outcome {
        load_case(&self.mem, case, asm);
        *self.log.lock().unwrap() = PortLog::default();
        self.cpu.set_state(case.init);
        self.cpu.flush_code_cache();
        self.jit.poll(&mut self.cpu);
        if self.jit.compile_now(&mut self.cpu) {
            self.compiled += 1;
        }
        let (cpu, jit) = (&mut self.cpu, &mut self.jit);
        let start = jit.instructions(cpu);
        let mut end = End::Timeout;
        while jit.instructions(cpu) - start < BUDGET as u64 {
            let r = catch_unwind(AssertUnwindSafe(|| jit.run(cpu, 1000)));
            match r {
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    end = End::Other(format!("jit panicked: {msg}"));
                    break;
                }
                Ok(StopReason::Requested) => {
                    end = self.log.lock().unwrap().end().unwrap_or(End::Other("stop without a port".into()));
                    break;
                }
                Ok(StopReason::Shutdown(why)) => {
                    end = End::Other(format!("interpreter shutdown: {why}"));
                    break;
                }
                Ok(StopReason::Halted) => {
                    end = End::Other("interpreter halted".into());
                    break;
                }
                Ok(_) => {}
            }
        }
        let mut state = self.cpu.state;
        state.materialize_flags();
        Outcome::read(end, state, &self.mem).ended(asm)
    }
}
