//! PCI: configuration space, configuration mechanism #1, an i440FX-like host
//! bridge and a PIIX3-like ISA bridge with its PCI interrupt router.
//!
//! - [`config`]: the 256-byte type 0 configuration space with per-byte write
//!   masks, BARs with sizing, and the [`PciDevice`] trait devices implement.
//! - [`root`]: bus 0 behind ports 0xCF8/0xCFC ([`PciRoot`]), with a callback
//!   when the guest programs a BAR so the machine can map it.
//! - [`msix`]: the MSI-X capability, vector table and pending bits a
//!   function adds to send message-signalled interrupts.
//! - [`i440fx`]: the host bridge at 00:00.0 (8086:1237), whose PAM
//!   registers switch BIOS shadowing ([`pam`]).
//! - [`piix`]: the ISA bridge at 00:01.0 (8086:7000) with the PIRQ routing
//!   registers 0x60-0x63, and [`PciIntxRouter`], which turns PCI INTx lines
//!   into ISA IRQs as those registers say.
//! - [`rom`]: a function's expansion ROM (a NIC's boot ROM), decoded by
//!   its ROM BAR.
//! - [`piix4_pm`]: the power-management function at 00:01.3 (8086:7113),
//!   whose PMBA places the ACPI registers' block.

pub mod config;
pub mod i440fx;
pub mod msix;
pub mod pam;
pub mod piix;
pub mod piix4_pm;
pub mod rom;
pub mod root;

pub use config::{PciBar, PciBarKind, PciConfigSpace, PciDevice, SharedPciDevice};
pub use i440fx::I440fxHostBridge;
pub use piix::{pirq_of, PciIntxRouter, PiixIsaBridge, DEFAULT_PIRQ_IRQS};
pub use root::{BarChange, PciRoot};

/// The location of a function on the PCI bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
}

impl PciAddress {
    /// Bus 0, `device`, `function`; `None` if either is out of range.
    pub fn new(device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Self { bus: 0, device, function })
    }

    /// Device and function packed as in CONFIG_ADDRESS bits 15:8.
    pub fn devfn(self) -> u8 {
        (self.device << 3) | self.function
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A PCI interrupt pin, as the Interrupt Pin register numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciInterruptPin {
    /// INTA#, register value 1.
    IntA,
    /// INTB#, register value 2.
    IntB,
    /// INTC#, register value 3.
    IntC,
    /// INTD#, register value 4.
    IntD,
}

impl PciInterruptPin {
    /// The Interrupt Pin register value (1-4).
    pub fn register_value(self) -> u8 {
        self.index() as u8 + 1
    }

    /// 0 for INTA# to 3 for INTD#.
    pub fn index(self) -> usize {
        match self {
            PciInterruptPin::IntA => 0,
            PciInterruptPin::IntB => 1,
            PciInterruptPin::IntC => 2,
            PciInterruptPin::IntD => 3,
        }
    }

    /// The pin of an Interrupt Pin register value (1-4).
    pub fn from_register(value: u8) -> Option<Self> {
        match value {
            1 => Some(PciInterruptPin::IntA),
            2 => Some(PciInterruptPin::IntB),
            3 => Some(PciInterruptPin::IntC),
            4 => Some(PciInterruptPin::IntD),
            _ => None,
        }
    }
}

/// Errors of the PCI models.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum PciError {
    /// The slot already holds a function.
    #[error("cannot add {device} at PCI {address}: {existing} is there already; choose a free slot")]
    SlotTaken { device: String, address: PciAddress, existing: String },
    /// Only bus 0 exists.
    #[error("cannot add {device} at PCI {address}: only bus 0 exists")]
    NoSuchBus { device: String, address: PciAddress },
    /// A BAR index past 5, or a 64-bit BAR at index 5.
    #[error("BAR {index} does not exist in a type 0 header (0-5; a 64-bit BAR takes two)")]
    BarIndex { index: usize },
    /// A BAR index already used.
    #[error("BAR {index} is already defined")]
    BarTaken { index: usize },
    /// A BAR size that is not a power of two in the allowed range.
    #[error("a {kind:?} BAR cannot be {size:#x} bytes; use a power of two from {min:#x} to {max:#x}")]
    BarSize { kind: PciBarKind, size: u64, min: u64, max: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_pins() {
        let a = PciAddress::new(3, 1).unwrap();
        assert_eq!(a.devfn(), 0x19);
        assert_eq!(a.to_string(), "00:03.1");
        assert!(PciAddress::new(32, 0).is_none());
        assert!(PciAddress::new(0, 8).is_none());
        for v in 1..=4 {
            assert_eq!(PciInterruptPin::from_register(v).unwrap().register_value(), v);
        }
        assert_eq!(PciInterruptPin::from_register(0), None);
        assert_eq!(PciInterruptPin::IntD.index(), 3);
    }
}
