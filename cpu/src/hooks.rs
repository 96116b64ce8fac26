//! Hooks into the run loop for an engine that shares the guest with the
//! interpreter (split execution: another engine runs user code).
//!
//! With no hooks installed the interpreter pays one predictable branch per
//! block. With hooks, the run loop asks them before each block whether to
//! leave at CPL 3, tells them when code runs at CPL 0 to 2 again, offers
//! them each #UD raised at CPL 3, and reports FXSAVE and FXRSTOR at CPL 0.

use std::any::Any;

/// An FXSAVE or FXRSTOR and the linear address of its 512-byte area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FxEvent {
    Save(u64),
    Restore(u64),
}

/// Where a hook is asked: the CPU's instruction count and address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookCtx {
    /// [`CpuStats::instructions`](crate::CpuStats) so far.
    pub instructions: u64,
    /// CR3 without the PCID and flag bits.
    pub address_space: u64,
}

/// The run loop's questions to an engine sharing the guest, installed with
/// [`Cpu::set_hooks`](crate::Cpu::set_hooks). The engine reaches its hooks
/// again through [`Cpu::hooks_mut`](crate::Cpu::hooks_mut) and
/// [`ExecHooks::as_any_mut`] (a downcast to its own type).
pub trait ExecHooks: Send {
    /// Before a block at CPL 3 (interrupts delivered, not halted): `true`
    /// makes [`Cpu::run`](crate::Cpu::run) return
    /// [`StopReason::UserMode`](crate::StopReason::UserMode) with RIP at the block.
    fn before_user_block(&mut self, at: HookCtx) -> bool;
    /// Before a block at CPL 0 to 2.
    fn before_kernel_block(&mut self, at: HookCtx);
    /// An instruction at CPL 3 raised #UD: `true` leaves it undelivered,
    /// RIP at the instruction, and the next
    /// [`before_user_block`](Self::before_user_block) is expected to yield.
    fn user_invalid_opcode(&mut self) -> bool;
    /// An FXSAVE or FXRSTOR completed at CPL 0.
    fn fx_event(&mut self, ev: FxEvent);
    /// Whether the decode cache keeps the bytes of pages decoded at CPL 3,
    /// so that [`Cpu::recheck_user_code`](crate::Cpu::recheck_user_code)
    /// finds those another engine changed.
    fn keeps_user_pages(&self) -> bool {
        true
    }
    /// The hooks as `Any`, for their owner's downcast.
    fn as_any(&self) -> &dyn Any;
    /// The hooks as `Any`, for their owner's downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
