//! The binary's error type: every message names the thing and the fix.

/// Errors that end a run with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("guest memory: {0}")]
    Memory(#[from] mmu::MemError),
    #[error("device setup: {0}")]
    Bus(#[from] devices::BusError),
    #[error("the built-in guest: {0}")]
    Builtin(#[from] firmware::builtin::BuiltinError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] firmware::acpi::AcpiError),
    #[error("MP table: {0}")]
    MpTable(#[from] firmware::mptable::MpTableError),
    #[error("firmware: {0}")]
    Linux(#[from] firmware::linux::LinuxError),
    #[error("firmware: {0}")]
    Multiboot(#[from] firmware::multiboot::MultibootError),
    #[error("console: {0}")]
    Console(#[from] devices::console::ConsoleError),
    #[error("{0}")]
    Hypervisor(#[from] hvf_kvm_accel::AccelError),
    #[error("KVM: {0}")]
    Accel(String),
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
}
