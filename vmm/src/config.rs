//! What shapes a machine: its configuration, as the front end builds it.
//!
//! These types are shared by the machine ([`crate::machine`]) and the
//! engines ([`crate::engine`]), which read the parts they need from an
//! [`crate::engine::EngineContext`] and never from the machine itself.

use std::sync::Arc;
use std::time::Duration;

use devices::console::SerialBackend;
use parking_lot::Mutex;

/// Which engine runs the guest ([`crate::Machine::run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// The interpreter.
    Interp,
    /// The interpreter for cold code, compiled regions for hot code.
    Jit,
    /// KVM: the whole guest, or split execution where KVM runs ring 0 in
    /// software ([`MachineConfig::kvm_split`]).
    Kvm,
}

/// Where KVM keeps the PIT when it keeps the interrupt controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvmPit {
    /// In KVM, with the PIC, I/O APIC and local APIC (the default).
    #[default]
    InKernel,
    /// The machine's own, raising IRQ 0 on KVM's PIC and I/O APIC.
    User,
}

/// Whether `--accel kvm` splits execution ([`crate::engine::split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitMode {
    /// Where KVM runs CPL 0 in software, for a kernel the host loaded
    /// (its code is known) or a BIOS boot (its code is found in the guest).
    #[default]
    Auto,
    /// Always; the code of a kernel the host did not load is found in the
    /// guest once user code runs.
    On,
    /// Never: all of the guest runs in KVM.
    Off,
}

/// What the guest boots.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// The built-in guest ROM.
    Builtin,
    /// A BIOS image (SeaBIOS) mapped to end at 4 GiB, its last 128 KiB
    /// also below 1 MiB, with fw_cfg describing the machine ([`crate::bios`]).
    Bios(Vec<u8>),
    /// A kernel booted directly: Linux (bzImage or vmlinux) or multiboot.
    Kernel(KernelImage),
}

/// A kernel for direct boot.
#[derive(Debug, Clone)]
pub struct KernelImage {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
    /// For a bzImage: decompress on the host (fast) or in the guest (classic).
    pub path: firmware::linux::BootPath,
}

/// Where serial output goes.
#[derive(Clone)]
pub enum SerialOut {
    /// A host backend (stdio, a file, nowhere).
    Backend(SerialBackend),
    /// Kept in memory (the demo and tests read it).
    Capture(Arc<Mutex<Vec<u8>>>),
}

/// Everything that shapes a machine.
#[derive(Clone)]
pub struct MachineConfig {
    pub mem: u64,
    pub firmware: Firmware,
    pub serial: SerialOut,
    pub no_reboot: bool,
    pub timeout: Option<Duration>,
    /// Under KVM, whether to run the kernel in the JIT (see
    /// [`crate::engine::split`]).
    pub kvm_split: SplitMode,
    /// Under KVM with its interrupt controllers, where the PIT lives.
    pub kvm_pit: KvmPit,
    /// The CPU model the guest is given (under KVM: as much of it as KVM
    /// can give).
    pub cpu_model: cpu::cpuid::Model,
}
