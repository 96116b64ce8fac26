//! The host bridge at 00:00.0: an Intel 82441FX (i440FX PMC) look-alike.
//!
//! Datasheet: Intel 440FX PCIset 82441FX PCI and Memory Controller (PMC),
//! order number 290549, section 3.2 "PCI Configuration Registers": VID
//! 8086h, DID 1237h, RID 02h, class 060000h; PMCCFG (50h), DRAMC (57h),
//! PAM0-6 (59h-5Fh), DRB0-7 (60h-67h), SMRAM (72h, default 02h), ERRCMD
//! (90h), ERRSTS (91h), TRC (93h).
//!
//! The chipset registers past the header are kept as plain storage (the
//! guest can read back what it wrote). PAM0-6 switch BIOS shadowing
//! ([`super::pam`]) when the machine boots firmware
//! ([`I440fxHostBridge::set_shadow`]); under a directly booted kernel they
//! are storage too. SMRAM is not modelled. The subsystem IDs are QEMU's
//! (1AF4h:1100h), which SeaBIOS checks to know it runs on a virtual PC.

use std::sync::Arc;

use parking_lot::Mutex;

use super::config::{PciConfigSpace, PCI_COMMAND, PCI_STATUS};
use super::pam::{BiosShadow, PAM0, PAM_COUNT};
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

/// Subsystem vendor and ID of QEMU's virtual machines (Red Hat, "QEMU
/// virtual machine").
const SUBSYSTEM_VENDOR_QEMU: u16 = 0x1af4;
const SUBSYSTEM_ID_QEMU: u16 = 0x1100;

/// The i440FX host bridge.
#[derive(Debug, Clone)]
pub struct I440fxHostBridge {
    config: PciConfigSpace,
    /// The shadowed BIOS area PAM0-6 switch, when the machine boots firmware.
    shadow: Option<Arc<Mutex<BiosShadow>>>,
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
        config.set_subsystem(SUBSYSTEM_VENDOR_QEMU, SUBSYSTEM_ID_QEMU);
        Self { config, shadow: None }
    }

    /// Let PAM0-6 switch `shadow`, from their current values on.
    pub fn set_shadow(&mut self, shadow: Arc<Mutex<BiosShadow>>) {
        shadow.lock().apply(&self.pam());
        self.shadow = Some(shadow);
    }

    /// PAM0-6 as they read.
    pub fn pam(&self) -> [u8; PAM_COUNT] {
        std::array::from_fn(|i| self.config.u8_at(PAM0 + i))
    }

    /// A system reset: PAM0-6 go back to 0 (the BIOS reads from ROM again).
    pub fn reset(&mut self) {
        for i in 0..PAM_COUNT {
            self.config.set_u8(PAM0 + i, 0);
        }
        if let Some(s) = &self.shadow {
            s.lock().apply(&[0; PAM_COUNT]);
        }
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

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let touches_pam = offset < PAM0 + PAM_COUNT && offset + data.len() > PAM0;
        if let (true, Some(s)) = (touches_pam, &self.shadow) {
            s.lock().apply(&self.pam());
        }
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
        assert_eq!(b.read_config(0x2c / 4), 0x1100_1af4, "QEMU's subsystem IDs");
    }

    #[test]
    fn pam_writes_switch_the_shadow_and_a_reset_restores_the_rom() {
        let mem = Arc::new(mmu::GuestMemory::new(2 << 20).unwrap());
        let mut bios = vec![0u8; 0x2_0000];
        bios[0x1_fff0] = 0xea;
        let shadow = Arc::new(Mutex::new(BiosShadow::new(mem.clone(), &bios).unwrap()));
        let mut b = I440fxHostBridge::new();
        b.set_shadow(shadow);
        assert_eq!(mem.read_u8(0xf_fff0).unwrap(), 0xea);
        // SeaBIOS writes PAM0-6 as two dwords at 58h and 5Ch.
        b.write_config(0x58, &[0, 0x30, 0x33, 0x33]);
        assert_eq!(b.config().u8_at(0x59), 0x30);
        assert_eq!(mem.read_u8(0xf_fff0).unwrap(), 0, "RAM under the BIOS");
        mem.write_u8(0xf_fff0, 0x90).unwrap();
        b.write_config(0x59, &[0x10]);
        assert!(mem.write_u8(0xf_fff0, 0).is_err(), "write-protected");
        assert_eq!(mem.read_u8(0xf_fff0).unwrap(), 0x90);
        b.reset();
        assert_eq!(b.pam(), [0; PAM_COUNT]);
        assert_eq!(mem.read_u8(0xf_fff0).unwrap(), 0xea);
    }
}
