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
    #[error("firmware: {0}")]
    Firmware(String),
    #[error("{0}")]
    Hypervisor(#[from] hvf_kvm_accel::AccelError),
    #[error("KVM: {0}")]
    Accel(String),
    #[error("{option} is not available yet in this build of ferrovm")]
    NotBuilt { option: &'static str },
}
