//! The interpreter side: one `Cpu` over its own guest memory, reused for every
//! sequence. It is stepped one instruction at a time so the harness knows the
//! path taken and which results the SDM leaves undefined on it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cpu::{Cpu, Platform, StopReason};
use mmu::GuestMemory;

use crate::gen::{Assembled, Case};
use crate::machine::{self, vector_of_port, CODE, DATA, KSTACK, PAGE};
use crate::outcome::{End, Masks, Outcome};

/// Instructions the interpreter may run for one sequence (a REP counts once).
pub const BUDGET: usize = 20_000;

/// Port writes: the first write to a handler port stops.
#[derive(Default, Debug)]
pub struct PortLog {
    pub stop: Option<u16>,
    pub other: Vec<u16>,
}

impl PortLog {
    pub fn write(&mut self, port: u16) {
        if self.stop.is_some() {
            return;
        }
        if vector_of_port(port).is_some() {
            self.stop = Some(port);
        } else {
            self.other.push(port);
        }
    }

    pub fn end(&self) -> Option<End> {
        let p = self.stop?;
        Some(End::Exception(vector_of_port(p).unwrap_or(0xff)))
    }
}

pub struct Plat {
    pub log: Arc<Mutex<PortLog>>,
}

impl Platform for Plat {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        u32::MAX
    }
    fn io_write(&mut self, port: u16, _size: u8, _value: u32) {
        self.log.lock().unwrap().write(port);
    }
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {}
    fn stop_requested(&self) -> bool {
        self.log.lock().unwrap().stop.is_some()
    }
}

pub struct InterpSide {
    pub mem: Arc<GuestMemory>,
    cpu: Cpu,
    log: Arc<Mutex<PortLog>>,
}

/// Write a case's code, data and a clean kernel stack into `mem`.
pub fn load_case(mem: &GuestMemory, case: &Case, asm: &Assembled) {
    mem.fill(CODE, 2 * PAGE, 0xcc).unwrap();
    mem.write(case.code_addr, &asm.bytes).unwrap();
    mem.write(DATA, &case.data).unwrap();
    mem.fill(KSTACK, PAGE, 0).unwrap();
}

/// The interpreter's CPU for the harness: the full model, AVX, AES-NI and
/// PCLMULQDQ on (the host CPU has them; sequences of other groups never
/// enable the YMM state).
pub fn new_cpu(mem: Arc<GuestMemory>, log: Arc<Mutex<PortLog>>) -> Cpu {
    let mut cpu = Cpu::new(mem, Box::new(Plat { log }));
    cpu.set_model(cpu::cpuid::Model::Max);
    cpu
}

impl InterpSide {
    pub fn new() -> Self {
        let mem = Arc::new(machine::build_memory());
        let log = Arc::new(Mutex::new(PortLog::default()));
        let cpu = new_cpu(mem.clone(), log.clone());
        InterpSide { mem, cpu, log }
    }

    fn reset_cpu(&mut self) {
        self.cpu = new_cpu(self.mem.clone(), self.log.clone());
    }

    pub fn run(&mut self, case: &Case, asm: &Assembled) -> (Outcome, Masks) {
        load_case(&self.mem, case, asm);
        *self.log.lock().unwrap() = PortLog::default();
        self.cpu.set_state(case.init);
        self.cpu.flush_code_cache();
        let mut masks = Masks::default();
        let index_of = |rip: u64| asm.insns[..asm.insns.len() - 1].iter().position(|i| i.ip() == rip);
        let mut end = End::Timeout;
        for _ in 0..BUDGET {
            let before = self.cpu.state;
            let idx = if before.cpl == 3 { index_of(before.rip) } else { None };
            if let Some(i) = idx {
                masks.before(i, &asm.insns[i], &before, &self.mem);
            }
            let cpu = &mut self.cpu;
            let r = catch_unwind(AssertUnwindSafe(|| cpu.step()));
            let reason = match r {
                Ok(r) => r,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let state = self.cpu.state;
                    self.reset_cpu();
                    return (
                        Outcome::read(End::Other(format!("interpreter panicked: {msg}")), state, &self.mem),
                        masks,
                    );
                }
            };
            if let Some(i) = idx {
                // Completed: still at CPL3, or an exception whose frame points
                // past the instruction (a trap).
                let completed = self.cpu.state.cpl == 3 || {
                    let rip = self.mem.read_u64(KSTACK + PAGE - 40).unwrap_or(0);
                    self.cpu.state.cpl == 0 && rip != asm.insns[i].ip()
                };
                if completed {
                    let after = self.cpu.state;
                    masks.after(&asm.insns[i], &before, &after);
                }
            }
            match reason {
                StopReason::Requested => {
                    end = self.log.lock().unwrap().end().unwrap_or(End::Other("stop without a port".into()));
                    break;
                }
                StopReason::Shutdown(why) => {
                    end = End::Other(format!("interpreter shutdown: {why}"));
                    break;
                }
                StopReason::Halted => {
                    end = End::Other("interpreter halted".into());
                    break;
                }
                // `yield_at_user` is never set here.
                StopReason::Budget | StopReason::UserMode | StopReason::Hot | StopReason::Debug => {}
            }
        }
        let mut state = self.cpu.state;
        state.materialize_flags();
        (Outcome::read(end, state, &self.mem).ended(asm), masks)
    }
}
