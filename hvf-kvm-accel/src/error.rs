//! The crate's one error type. Each message names the cause and, where the
//! user can act, the fix.

/// Errors from the hardware accelerator.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    /// No accelerator backend exists for this host operating system.
    #[error("no hardware accelerator is available for this host operating system; use --accel interp")]
    NoBackend,
    /// /dev/kvm is absent.
    #[error("/dev/kvm does not exist: KVM is not available on this host; use --accel interp")]
    KvmMissing,
    /// /dev/kvm exists but this user may not open it.
    #[error("cannot open /dev/kvm: permission denied; add yourself to the kvm group or use --accel interp")]
    KvmPermission,
    /// /dev/kvm exists but no KVM driver answers behind it.
    #[error("cannot open /dev/kvm: {0}; the KVM kernel module is not loaded (try `modprobe kvm_intel` or `modprobe kvm_amd`) or use --accel interp")]
    KvmNoDevice(String),
    /// Opening /dev/kvm failed for another reason.
    #[error("cannot open /dev/kvm: {0}; use --accel interp")]
    KvmOpen(String),
    /// The kernel speaks another KVM API version.
    #[error("KVM API version {found} is not the stable version {expected} this build uses; this kernel's KVM cannot be used, use --accel interp")]
    ApiMismatch { found: i32, expected: i32 },
    /// A capability the backend cannot work without is missing.
    #[error("KVM lacks the {0} capability, which is required; use --accel interp")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {reason}")]
    Ioctl { op: &'static str, reason: String },
    /// Guest memory could not be registered with the hypervisor.
    #[error("cannot map guest memory region {name} ({base:#x}+{len:#x}) into the VM: {reason}")]
    MemorySlot { name: &'static str, base: u64, len: u64, reason: String },
    /// A state was handed over with lazily kept flags.
    #[error("CpuState has lazily kept arithmetic flags (lazy.op = {op}); materialise RFLAGS before handing the state to the hypervisor")]
    LazyFlags { op: u32 },
    /// The operation needs the in-kernel interrupt controllers, which this VM does not use.
    #[error("{0} needs the in-kernel irqchip, but this VM emulates its interrupt controllers in userspace")]
    NoInKernelIrqChip(&'static str),
}

impl AccelError {
    /// An ioctl failure, with the OS error text.
    #[cfg(target_os = "linux")]
    pub(crate) fn ioctl(op: &'static str, e: impl std::fmt::Display) -> Self {
        AccelError::Ioctl { op, reason: e.to_string() }
    }
}
