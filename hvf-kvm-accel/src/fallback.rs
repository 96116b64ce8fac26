//! The emulation fallback: one instruction the hypervisor could not run
//! ([`VmExit::InternalError`](crate::VmExit::InternalError)) runs in the
//! interpreter on the vCPU's own state, and the vCPU goes on from there.
//!
//! [`emulate_one`] does the round trip the way the state allows it:
//! - If the hypervisor holds an event for the guest ([`Vcpu::pending_event`]),
//!   the vCPU is not at an instruction boundary: the event comes first and
//!   the interpreter cannot take it over. Nothing runs; the caller re-enters
//!   the vCPU, which delivers the event.
//! - Otherwise the state moves into the interpreter, which executes exactly
//!   one instruction (an `int n` or `int3` is delivered through the guest's
//!   IDT there), and moves back.
//!
//! The interrupt shadow of the state read from the vCPU belongs to the
//! instruction before the failing one; the interpreter clears it before
//! executing, as its own run loop does, so that only a shadow the emulated
//! instruction sets (STI, MOV SS, POP SS) goes back.
//!
//! Guest code changes behind the interpreter's back while the vCPU runs, so
//! its decoded-instruction cache is dropped before each step.

use std::time::{Duration, Instant};

use cpu::{Cpu, StopReason};

use crate::{AccelError, PendingEvent, Vcpu};

/// What [`emulate_one`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulated {
    /// The instruction ran in the interpreter and the vCPU holds the new
    /// state. `mnemonic` names it (lower case, "unknown" when it could not
    /// be fetched); `stop` is what the interpreter's step reported
    /// ([`StopReason::Halted`] after HLT, [`StopReason::Requested`] after a
    /// device asked the machine to stop; [`StopReason::Shutdown`] means a
    /// triple fault, and then the vCPU was not written).
    Ran {
        mnemonic: String,
        stop: StopReason,
        /// The whole round trip: state out, step, state in.
        took: Duration,
    },
    /// The vCPU holds this event for delivery; nothing ran. Re-enter it.
    EventPending(PendingEvent),
}

/// Run the instruction at the vCPU's RIP in `cpu` and write the result back
/// to the vCPU. `cpu` is the machine's interpreter, sharing its memory and
/// devices; its state is overwritten.
pub fn emulate_one(vcpu: &mut dyn Vcpu, cpu: &mut Cpu) -> Result<Emulated, AccelError> {
    let t = Instant::now();
    let mut state = vcpu.get_state()?;
    if let Some(ev) = vcpu.pending_event()? {
        return Ok(Emulated::EventPending(ev));
    }
    state.interrupt_shadow = 0;
    cpu.set_state(state);
    cpu.flush_code_cache();
    let mnemonic = cpu.mnemonic_at_rip().unwrap_or_else(|| "unknown".into());
    let stop = cpu.step();
    if !matches!(stop, StopReason::Shutdown(_)) {
        let mut back = cpu.state;
        back.materialize_flags();
        vcpu.set_state(&back)?;
    }
    Ok(Emulated::Ran { mnemonic, stop, took: t.elapsed() })
}
