//! The host bridge at 00:00.0: an Intel 82441FX (i440FX PMC) look-alike.
//!
//! Datasheet: Intel 440FX PCIset 82441FX PCI and Memory Controller (PMC),
//! order number 290549, section 3.2 "PCI Configuration Registers": VID
//! 8086h, DID 1237h, RID 02h, class 060000h; PMCCFG (50h), DRAMC (57h),
//! PAM0-6 (59h-5Fh), DRB0-7 (60h-67h), SMRAM (72h, default 02h), ERRCMD
//! (90h), ERRSTS (91h), TRC (93h).
//!
//! The chipset registers past the header are kept as plain storage (the
//! guest can read back what it wrote) and have no effect: guest memory is
//! laid out by the machine, and PAM/SMRAM shadowing is not modelled.

use super::config::{PciConfigSpace, PCI_COMMAND, PCI_STATUS};
use super::PciDevice;

/// PCI vendor ID of Intel.
pub const INTEL_VENDOR_ID: u16 = 0x8086;
/// Device ID of the 82441FX.
pub const I440FX_DEVICE_ID: u16 = 0x1237;
/// Revision of the 82441FX.
const I440FX_REVISION: u8 = 0x02;
/// Class code: bridge, host bridge.
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;
/// Command at reset: memory space and bus master (datasheet: 0006h).
const COMMAND_RESET: u16 = 0x0006;
/// Status at reset: fast back-to-back capable, medium DEVSEL (0280h).
const STATUS_RESET: u16 = 0x0280;

/// First and last chipset register kept as storage.
const CHIPSET_FIRST: usize = 0x50;
const CHIPSET_LAST: usize = 0xff;
/// SMRAM control register and its reset value (C_BASE_SEG = 010b).
const SMRAM: usize = 0x72;
const SMRAM_RESET: u8 = 0x02;

/// The i440FX host bridge.
#[derive(Debug, Clone)]
pub struct I440fxHostBridge {
    config: PciConfigSpace,
}

impl Default for I440fxHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl I440fxHostBridge {
    /// The bridge in its reset state.
    pub fn new() -> Self {
        let mut config = PciConfigSpace::new(INTEL_VENDOR_ID, I440FX_DEVICE_ID, CLASS_HOST_BRIDGE, I440FX_REVISION);
        config.set_u16(PCI_COMMAND, COMMAND_RESET);
        config.set_u16(PCI_STATUS, STATUS_RESET);
        config.set_writable(CHIPSET_FIRST, &[0xff; CHIPSET_LAST - CHIPSET_FIRST + 1]);
        config.set_u8(SMRAM, SMRAM_RESET);
        Self { config }
    }
}

impl PciDevice for I440fxHostBridge {
    fn debug_label(&self) -> String {
        "i440FX host bridge".to_string()
    }

    fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_chipset_storage() {
        let mut b = I440fxHostBridge::new();
        assert_eq!(b.read_config(0), 0x1237_8086);
        assert_eq!(b.read_config(1), 0x0280_0006);
        assert_eq!(b.read_config(2), 0x0600_0002);
        assert_eq!(b.read_config(3) >> 16 & 0xff, 0, "single-function header");
        assert_eq!(b.config().u8_at(SMRAM), SMRAM_RESET);
        b.write_config(0x59, &[0x30]);
        assert_eq!(b.config().u8_at(0x59), 0x30, "PAM0 reads back");
        b.write_config(0x10, &[0xff; 4]);
        assert_eq!(b.read_config(4), 0, "no BARs");
        assert_eq!(b.debug_label(), "i440FX host bridge");
    }
}
