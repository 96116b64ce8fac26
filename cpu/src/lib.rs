//! The x86 CPU: architectural state, iced-x86 decoding with a per-page
//! decoded-instruction cache, the interpreter (the reference semantics), and the
//! exception and interrupt model. Faults are values (`Result<_, Exception>`).
//!
//! - [`state`]: `CpuState`, `#[repr(C)]` plain data.
//! - [`flags`]: lazily computed arithmetic flags.
//! - [`cpu`]: the processor, memory access through segmentation and the MMU,
//!   the decoded-block cache and the execution loop.
//! - [`ops`]: one handler module per instruction family, keyed by iced `Code`.
//! - [`interrupt`], [`segment`]: delivery through IVT/IDT and descriptor checks.
//! - [`msr`], [`cpuid`]: the MSR table and the CPU model.

pub mod cpu;
pub mod cpuid;
pub mod exception;
pub mod flags;
pub mod interrupt;
pub mod msr;
pub mod ops;
pub mod segment;
pub mod state;
pub mod x87;

pub use cpu::{Cpu, CpuStats, FxEvent, Platform, StopReason};
pub use exception::{Exception, Fault};
pub use state::CpuState;
