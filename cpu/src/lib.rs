//! The x86 CPU: architectural state, iced-x86 decoding with a per-page
//! decoded-instruction cache, the interpreter (the reference semantics), and the
//! exception and interrupt model. Faults are values (`Result<_, Exception>`).
//!
//! - [`state`]: `CpuState`, `#[repr(C)]` plain data.
//! - [`flags`]: lazily computed arithmetic flags.
//! - [`cpu`]: the processor (`struct Cpu`), its constructor and state setters.
//! - [`platform`]: [`Platform`], the one I/O interface every engine calls.
//! - [`cache`]: the decoded-block cache and decoding.
//! - [`memory`]: memory access through segmentation and the soft TLB.
//! - [`atomic`]: locked instructions as host atomics, for processors on
//!   host threads of their own, and the exclusive fallback.
//! - [`exec`]: the run loop, single steps and one instruction's execution.
//! - [`hooks`]: the run loop's calls to an engine sharing the guest.
//! - [`ops`]: one handler module per instruction family, keyed by iced `Code`.
//! - [`interrupt`], [`segment`]: delivery through IVT/IDT and descriptor checks.
//! - [`msr`], [`cpuid`]: the MSR table and the CPU model.
//! - [`tier`]: what another tier (the JIT) calls: hot blocks, accesses on
//!   behalf of one instruction, and when translated code may run.
//! - [`snapshot`]: saved state ([`persist::Persist`] for `CpuState` and `Cpu`).

#![forbid(unsafe_code)]

pub mod atomic;
pub mod cache;
pub mod cpu;
pub mod cpuid;
pub mod exception;
pub mod exec;
pub mod flags;
pub mod guestlog;
pub mod hooks;
pub mod interrupt;
pub mod memory;
pub mod msr;
pub mod ops;
pub mod platform;
pub mod segment;
pub mod snapshot;
pub mod state;
pub mod tier;
pub mod x87;

pub use atomic::ExclusiveFn;
pub use cache::{Block, Decoded, FastMap, FxHasher, Invalidation, InvalidationListener};
pub use cpu::{paging_of, Cpu, CpuStats};
pub use exception::{Exception, Fault};
pub use exec::{DebugStops, Executed, WatchHit, Watchpoint};
pub use guestlog::GuestLog;
pub use hooks::{ExecHooks, FxEvent, HookCtx};
pub use platform::{NoDevices, Platform, StopReason};
pub use snapshot::CpuSnapshot;
pub use state::CpuState;
