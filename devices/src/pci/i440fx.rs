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
use persist::{Persist, PersistError};

use super::config::{PciConfigSpace, PciConfigState, PCI_COMMAND, PCI_STATUS};
use super::pam::{BiosShadow, BiosShadowState, PAM0, PAM_COUNT};
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

/// The saved state of the host bridge: its configuration space (PAM0-6
/// included) and, when the machine boots firmware, the shadowed BIOS area
/// the PAM registers switch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct I440fxState {
    /// The configuration space.
    pub config: PciConfigState,
    /// The shadowed area, present exactly when the bridge has one.
    pub shadow: Option<BiosShadowState>,
}

/// The part name the host bridge's errors carry.
const PART: &str = "i440FX host bridge";

impl I440fxHostBridge {
    /// The checks of [`Persist::restore`], changing nothing: the
    /// configuration space's (see [`PciConfigSpace`]'s restore), a shadow
    /// state exactly when this bridge switches one, the shadow's own checks,
    /// and its fields agreeing with the saved PAM registers.
    pub(crate) fn check_state(&self, state: &I440fxState) -> Result<(), PersistError> {
        self.config.check_state(&state.config)?;
        PersistError::check(state.shadow.is_some() == self.shadow.is_some(), PART, "shadow", || {
            format!(
                "is {} but this bridge {} the BIOS area",
                if state.shadow.is_some() { "saved" } else { "missing" },
                if self.shadow.is_some() { "shadows" } else { "does not shadow" }
            )
        })?;
        if let Some(shadow) = &state.shadow {
            BiosShadow::check_state(shadow)?;
            let pam: [u8; PAM_COUNT] = std::array::from_fn(|i| state.config.bytes[PAM0 + i]);
            let fields: Vec<u8> = (1..PAM_COUNT)
                .flat_map(|r| [pam[r] & 0b11, (pam[r] >> 4) & 0b11])
                .chain([(pam[0] >> 4) & 0b11])
                .collect();
            PersistError::check(fields == shadow.fields, PART, "shadow", || {
                format!("fields {:?} are not what PAM0-6 {pam:02x?} select", shadow.fields)
            })?;
        }
        Ok(())
    }

    /// Loads a state [`I440fxHostBridge::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &I440fxState) {
        self.config.load_state(&state.config);
        if let (Some(shadow), Some(s)) = (&self.shadow, &state.shadow) {
            shadow.lock().load_state(s);
        }
    }
}

/// Restore checks the configuration space (see [`PciConfigSpace`]'s
/// restore), that a shadow state is there exactly when this bridge
/// switches one, the shadow's own checks (see [`BiosShadow`]'s restore),
/// and that its fields are what the saved PAM registers select; then it
/// loads both.
impl Persist for I440fxHostBridge {
    type State = I440fxState;

    fn save(&self) -> I440fxState {
        I440fxState { config: self.config.save(), shadow: self.shadow.as_ref().map(|s| s.lock().save()) }
    }

    fn restore(&mut self, state: &I440fxState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
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

    fn firmware_bridge() -> (I440fxHostBridge, Arc<mmu::GuestMemory>) {
        let mem = Arc::new(mmu::GuestMemory::new(2 << 20).unwrap());
        let mut bios = vec![0u8; 0x2_0000];
        bios[0x1_fff0] = 0xea;
        let shadow = Arc::new(Mutex::new(BiosShadow::new(mem.clone(), &bios).unwrap()));
        let mut b = I440fxHostBridge::new();
        b.set_shadow(shadow);
        (b, mem)
    }

    #[test]
    fn the_persisted_bridge_round_trips_with_its_shadow() {
        let (mut b, mem) = firmware_bridge();
        b.write_config(0x58, &[0, 0x30, 0x33, 0x33]);
        mem.write_u8(0xf_fff0, 0x90).unwrap();
        b.write_config(0x59, &[0x10]);
        b.write_config(0x5c, &[0x30, 0, 0, 0]);
        b.write_config(0x72, &[0x0a]);
        let (mut fresh, fresh_mem) = firmware_bridge();
        let mut ram = vec![0u8; 0x4_0000];
        mem.read(0xc_0000, &mut ram).unwrap();
        fresh_mem.load(0xc_0000, &ram).unwrap();
        let state = persist::assert_round_trip(&b, &mut fresh);
        assert_eq!(fresh.pam(), b.pam());
        assert_eq!(fresh.config().u8_at(SMRAM), 0x0a);
        assert!(state.shadow.is_some());
        assert!(fresh_mem.write_u8(0xf_fff0, 0).is_err(), "write-protected as on the original");
        assert_eq!(fresh_mem.read_u8(0xf_fff0).unwrap(), 0x90);
        // A reset brings the ROM back on both.
        b.reset();
        fresh.reset();
        assert_eq!(fresh_mem.read_u8(0xf_fff0).unwrap(), 0xea);
        assert_eq!(fresh.save(), b.save());
        // Without firmware there is no shadow to save.
        let mut plain = I440fxHostBridge::new();
        plain.write_config(0x5a, &[0x11]);
        let s = persist::assert_round_trip(&plain, &mut I440fxHostBridge::new());
        assert!(s.shadow.is_none());
    }

    /// A corruption of a state, and the field whose check must refuse it.
    type Corruption<S> = (&'static str, fn(&mut S));

    #[test]
    fn corrupt_states_are_refused_field_by_field() {
        let (mut b, mem) = firmware_bridge();
        b.write_config(0x58, &[0, 0x10, 0x33, 0x33]);
        let good = b.save();
        let cases: [Corruption<I440fxState>; 5] = [
            ("bytes", |s| s.config.bytes[2] = 0x38), // another device ID
            ("shadow", |s| s.shadow = None),
            ("shadow", |s| s.config.bytes[0x5a] = 0x13),
            ("fields", |s| s.shadow.as_mut().unwrap().fields.pop().map(drop).unwrap_or(())),
            ("hidden", |s| s.shadow.as_mut().unwrap().hidden[12] = vec![0; 3]),
        ];
        for (field, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let e = persist::assert_refused(&mut b, &bad);
            assert_eq!(e.field, field, "{e}");
        }
        assert!(mem.write_u8(0xf_0000, 0).is_err(), "the protection is as it was");
        let mut plain = I440fxHostBridge::new();
        assert_eq!(persist::assert_refused(&mut plain, &good).field, "shadow", "a shadow this bridge does not have");
    }
}
