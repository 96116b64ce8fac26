//! Hardware-assisted execution: hand the guest CPU to the host's hypervisor.
//!
//! The machine sees three objects, whatever the backend:
//!
//! - [`Hypervisor`]: the host facility (today KVM on Linux), opened once. It
//!   creates a [`Vm`] over the same [`GuestMemory`] the interpreter uses, so
//!   both run the same RAM and ROM.
//! - [`Vm`]: one guest. It creates vCPUs and, when the interrupt controllers
//!   live in the hypervisor, drives their input lines ([`IrqChip`] says which).
//! - [`Vcpu`]: one virtual processor. Its state moves in and out as a plain
//!   [`CpuState`], the interpreter's own type, so a guest can hop between the
//!   interpreter and the hypervisor. [`Vcpu::run`] runs the guest and serves
//!   port and MMIO accesses inline through an [`ExitHandler`]; it returns only
//!   on an exit the machine must decide about ([`VmExit`]).
//!
//! The device side ([`ExitHandler`]) and everything in this file are free of
//! hypervisor types, so a second backend (for instance macOS
//! Hypervisor.framework) can implement the same traits.
//!
//! On Linux, [`kvm`] is the KVM backend and [`bridge`] converts between
//! [`CpuState`] and KVM's register structures.

use std::fmt;
use std::sync::Arc;

use cpu::state::CpuState;
use mmu::GuestMemory;

mod error;

#[cfg(target_os = "linux")]
pub mod bridge;
#[cfg(target_os = "linux")]
pub mod kvm;

pub use error::AccelError;

/// A host hypervisor that can run guests.
pub trait Hypervisor: Send + Sync {
    /// Create a guest over `mem`. Every RAM and ROM region of `mem` becomes
    /// guest-physical memory of the VM; the VM keeps `mem` alive.
    fn create_vm(&self, mem: Arc<GuestMemory>) -> Result<Box<dyn Vm>, AccelError>;
    /// Short name for messages and statistics ("kvm").
    fn name(&self) -> &'static str;
}

/// Where the interrupt controllers (PIC, IOAPIC, LAPIC) and the PIT live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChip {
    /// Emulated inside the hypervisor. Device interrupt lines go to
    /// [`Vm::set_irq_line`]. `pit` tells whether the PIT is in there too; when
    /// it is not, the machine keeps its own PIT and raises IRQ 0 itself.
    InKernel { pit: bool },
    /// Emulated by the machine; the LAPIC page and the PIC/IOAPIC ports reach
    /// the machine as MMIO and port exits.
    Userspace,
}

impl fmt::Display for IrqChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrqChip::InKernel { pit: true } => f.write_str("in-kernel PIC/IOAPIC/LAPIC and PIT"),
            IrqChip::InKernel { pit: false } => {
                f.write_str("in-kernel PIC/IOAPIC/LAPIC, userspace PIT")
            }
            IrqChip::Userspace => f.write_str("userspace PIC/IOAPIC/LAPIC and PIT"),
        }
    }
}

/// One guest.
///
/// `create_vcpu` takes `&self` and the trait is `Sync` because some
/// hypervisors (Hypervisor.framework) bind a vCPU to the thread that created
/// it: the machine creates each vCPU on the thread that will run it.
pub trait Vm: Send + Sync {
    /// Create vCPU number `id` (the APIC ID it reports), in its reset state.
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, AccelError>;
    /// Drive interrupt line `irq` of the in-kernel PIC/IOAPIC. Fails when the
    /// interrupt controllers are in userspace ([`IrqChip::Userspace`]).
    fn set_irq_line(&self, irq: u32, level: bool) -> Result<(), AccelError>;
    /// Which interrupt controllers this VM uses.
    fn irqchip(&self) -> IrqChip;
}

/// One virtual processor.
pub trait Vcpu {
    /// Load `s` into the vCPU.
    ///
    /// The six arithmetic flags of `s.rflags` must be materialised
    /// (`s.lazy.op == 0`); otherwise this fails with [`AccelError::LazyFlags`].
    fn set_state(&mut self, s: &CpuState) -> Result<(), AccelError>;
    /// Read the vCPU's state. The flags come back materialised (`lazy.op == 0`).
    fn get_state(&mut self) -> Result<CpuState, AccelError>;
    /// Run the guest until an exit the caller must handle.
    ///
    /// Port and MMIO accesses are served through `io` and the guest resumes.
    /// `io.should_stop()` is polled before each entry into the guest; when it
    /// is true, `run` returns [`VmExit::Interrupted`].
    fn run(&mut self, io: &mut dyn ExitHandler) -> Result<VmExit, AccelError>;
}

/// The device side of a vCPU: port I/O and MMIO, with no hypervisor types.
///
/// A string instruction (`rep outsb`) arrives as one call per element.
pub trait ExitHandler {
    /// The guest read `data.len()` bytes from `port`; fill `data`.
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    /// The guest wrote `data` to `port`.
    fn pio_write(&mut self, port: u16, data: &[u8]);
    /// The guest read `data.len()` bytes at guest-physical `addr`; fill `data`.
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    /// The guest wrote `data` at guest-physical `addr`.
    fn mmio_write(&mut self, addr: u64, data: &[u8]);
    /// Whether the run should return to the caller before the next guest entry.
    fn should_stop(&self) -> bool;
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest executed HLT (only with a userspace irqchip; an in-kernel
    /// LAPIC waits for the interrupt itself).
    Hlt,
    /// The guest triple-faulted or asked for a shutdown.
    Shutdown,
    /// The hypervisor could not run an instruction at `rip`. `insn_bytes`
    /// starts with that instruction: KVM gives its whole fetch window (up to
    /// 15 bytes, possibly running past the instruction); empty when unknown.
    /// The vCPU state is intact, so the instruction can be run elsewhere.
    InternalError {
        suberror: u32,
        insn_bytes: Vec<u8>,
        rip: u64,
    },
    /// The hardware refused to enter the guest (invalid guest state).
    FailEntry { reason: u64 },
    /// `should_stop()` returned true, or a signal interrupted the run.
    Interrupted,
    /// Any other exit, described.
    Other(String),
}

/// KVM's suberror for an instruction its emulator could not run.
const SUBERROR_EMULATION: u32 = 1;

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Hlt => f.write_str("the guest halted (HLT)"),
            VmExit::Shutdown => f.write_str("the guest shut down (triple fault)"),
            VmExit::InternalError {
                suberror,
                insn_bytes,
                rip,
            } => {
                let what = if *suberror == SUBERROR_EMULATION {
                    "emulation failure"
                } else {
                    "internal error"
                };
                write!(f, "the hypervisor could not run the instruction at rip {rip:#x}: {what} (suberror {suberror}), bytes [")?;
                for (i, b) in insn_bytes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                f.write_str("]")
            }
            VmExit::FailEntry { reason } => {
                write!(f, "the hypervisor refused to enter the guest: hardware entry failure reason {reason:#x}")
            }
            VmExit::Interrupted => f.write_str("the run was interrupted"),
            VmExit::Other(s) => write!(f, "unexpected exit: {s}"),
        }
    }
}

/// Open the best hardware accelerator this host has.
///
/// On Linux that is KVM; the error says why it cannot be used (missing,
/// permission denied, API mismatch) and what to do instead.
pub fn open() -> Result<Box<dyn Hypervisor>, AccelError> {
    #[cfg(target_os = "linux")]
    {
        Ok(Box::new(kvm::Kvm::new()?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(AccelError::NoBackend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_message_names_rip_and_bytes() {
        let e = VmExit::InternalError {
            suberror: 1,
            insn_bytes: vec![0xf0, 0x48, 0x0f, 0xc7, 0x0e],
            rip: 0xffff_ffff_8100_0000,
        };
        let s = e.to_string();
        assert!(s.contains("0xffffffff81000000"), "{s}");
        assert!(s.contains("f0 48 0f c7 0e"), "{s}");
        assert!(s.contains("emulation failure"), "{s}");
    }

    #[test]
    fn irqchip_display() {
        assert_eq!(
            IrqChip::Userspace.to_string(),
            "userspace PIC/IOAPIC/LAPIC and PIT"
        );
        assert!(IrqChip::InKernel { pit: true }.to_string().contains("PIT"));
    }
}
