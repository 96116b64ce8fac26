//! ferrovm's virtual machine monitor: the PC assembled from the device
//! models, its run loop, and the engines that run its CPU.
//!
//! - [`config`]: what shapes a machine, as a front end builds it;
//! - [`machine`]: [`Machine`], its assembly and its run loop;
//! - [`vcpu`]: one virtual CPU as the run loop drives it;
//! - [`engine`]: the CPU engines (interpreter, JIT, KVM, split execution),
//!   built from an [`engine::EngineContext`], never from the machine;
//! - [`device_manager`]: the PCI devices with host-side I/O (NICs, disks,
//!   the IDE controller), their BAR windows, doorbells and I/O thread;
//! - [`display`]: the standard VGA's picture for VNC and screendumps, and
//!   their input for the keyboard and mouse;
//! - [`monitor`]: the commands of QEMU's monitors (QMP, HMP) carried out
//!   on the machine;
//! - `snapshot` (with the default `serde` feature): saved states of the
//!   whole machine, snapshots inside qcow2 disks (as QEMU keeps them) or in
//!   a directory, clones of a snapshot, migration through a stream;
//! - [`storage`]: the drives, the controller each hangs on, and the boot
//!   order;
//! - [`bios`] and [`boot`]: SeaBIOS's set-up (fw_cfg) and the CPU state a
//!   directly booted kernel starts in.
//!
//! docs/design.md draws the threads and the path of one I/O exit.

pub mod bios;
pub mod boot;
pub mod config;
pub mod device_manager;
pub mod display;
pub mod engine;
pub mod error;
pub mod gdb;
pub mod machine;
pub mod monitor;
#[cfg(feature = "serde")]
pub mod snapshot;
pub mod storage;
pub mod vcpu;

pub use config::{
    parse_smp, BiosKernel, BootModule, EngineKind, Firmware, FlashDrive, KernelImage, KvmIrqchip, KvmPit,
    MachineConfig, RngConfig, SerialOut, SplitMode, VcpuThreads, Vga, VportConfig,
};
pub use error::Error;
pub use machine::{Machine, MachineOp, RunControl, RunReport, Stopped};
pub use storage::{Drive, MachineDisk, Storage, WeakMachineDisk};
