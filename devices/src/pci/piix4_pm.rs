//! The power-management function at 00:01.3: an Intel 82371AB (PIIX4)
//! PM look-alike, the PCI face of the ACPI registers.
//!
//! Datasheet: Intel 82371AB PCI-to-ISA/IDE Xcelerator (PIIX4), order number
//! 290562, section 11 "Power Management Registers (Function 3)": VID 8086h,
//! DID 7113h, RID 03h, class 068000h. PMBA (40h-43h) holds the base of the
//! 64-byte power-management I/O block (bits 15:6; bit 0 reads 1, "I/O
//! space"); PMREGMISC (80h) bit 0, PMIOSE, enables its decode. SMBBA
//! (90h-93h) and SMBHSTCFG (D2h) are the SMBus host controller's, which
//! this machine does not have: they read their reset values and writes to
//! them are logged once and dropped, so an OS finds no SMBus.
//!
//! ```text
//! PMBA  (40h)  31:16 reserved | 15:6 base | 5:1 reserved | 0 = 1 (I/O)
//! PMREGMISC (80h)  0 PMIOSE: the block at PMBA is decoded
//! ```
//!
//! Firmware programs the block's base and turns it on: SeaBIOS at
//! [`PM_IO_BASE`] (0x600), OVMF at 0xB000; the ACPI tables the firmware
//! reads afterwards say where. A machine that boots a kernel without
//! firmware starts with it at 0x600 ([`Piix4Pm::set_programmed`]). The registers of the block are
//! [`crate::legacy::acpi_pm::AcpiPm`]'s; where the block is decoded is
//! shared through [`PmDecode`], which the machine's port I/O consults.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use persist::{Persist, PersistError};

use super::config::{PciConfigSpace, PciConfigState, PCI_COMMAND, PCI_STATUS};
use super::i440fx::INTEL_VENDOR_ID;
use super::{PciAddress, PciDevice, PciInterruptPin};
use crate::log_once::{LogOnce, Misuse};

/// Device ID of the PIIX4 power-management function.
pub const PIIX4_PM_DEVICE_ID: u16 = 0x7113;
/// Where the function sits.
pub const PIIX4_PM_ADDRESS: PciAddress = PciAddress { bus: 0, device: 1, function: 3 };
/// Where SeaBIOS puts the power-management block when the machine gives
/// it ACPI tables (QEMU's PC with SeaBIOS has it there too), and where a
/// machine without firmware has it. OVMF puts it at 0xB000.
pub const PM_IO_BASE: u16 = 0x600;
/// The size of the power-management I/O block PMBA places.
pub const PM_IO_LEN: u64 = 0x40;

const REVISION: u8 = 0x03;
/// Class code: bridge, other bridge.
const CLASS_OTHER_BRIDGE: u32 = 0x06_80_00;
/// Status at reset: medium DEVSEL (0280h with fast back-to-back).
const STATUS_RESET: u16 = 0x0280;
/// Command: only I/O space (bit 0) is writable; the block's decode is PMIOSE's.
const COMMAND_WRITABLE: [u8; 2] = [0x01, 0x00];

const PMBA: usize = 0x40;
/// PMBA's reset value: base 0, bit 0 ("I/O space") set.
const PMBA_RESET: u32 = 0x0000_0001;
/// PMBA's base field, bits 15:6.
const PMBA_BASE_MASK: u32 = 0xffc0;
const PMREGMISC: usize = 0x80;
const PMIOSE: u8 = 1 << 0;
/// DEVACTB, device activity B; bit 25 is APMC_EN (an APM control write
/// raises an SMI).
const DEVACTB: usize = 0x58;
const DEVACTB_APMC_EN: u32 = 1 << 25;
const SMBBA: usize = 0x90;
const SMBBA_RESET: u32 = 0x0000_0001;
const SMBHSTCFG: usize = 0xd2;

/// The other power-management registers kept as storage (counters,
/// device activity and resource registers).
const STORAGE: [(usize, usize); 3] = [(0x44, 0x7f), (0x81, 0x8f), (0x94, 0xd1)];

/// Where the power-management block is decoded, shared with the machine's
/// port I/O: 0 when it is not, else its base with bit 31 set.
#[derive(Debug, Default)]
pub struct PmDecode(AtomicU32);

/// The flag of a decoded [`PmDecode`].
const DECODED: u32 = 1 << 31;

impl PmDecode {
    /// The block's offset for port `port`, if the block is decoded and holds it.
    #[inline]
    pub fn offset_of(&self, port: u64) -> Option<u64> {
        let v = self.0.load(Ordering::Acquire);
        if v & DECODED == 0 {
            return None;
        }
        let base = u64::from(v & PMBA_BASE_MASK);
        port.checked_sub(base).filter(|&off| off < PM_IO_LEN)
    }

    /// Where the block is decoded, if it is.
    pub fn base(&self) -> Option<u16> {
        let v = self.0.load(Ordering::Acquire);
        (v & DECODED != 0).then_some((v & PMBA_BASE_MASK) as u16)
    }

    fn set(&self, base: Option<u16>) {
        self.0.store(base.map_or(0, |b| u32::from(b) | DECODED), Ordering::Release);
    }
}

/// The PIIX4 power-management function.
#[derive(Debug)]
pub struct Piix4Pm {
    config: PciConfigSpace,
    decode: Arc<PmDecode>,
    log: LogOnce,
}

impl Default for Piix4Pm {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix4Pm {
    /// The function at power-on: the block is not decoded.
    pub fn new() -> Self {
        let mut config = PciConfigSpace::new(INTEL_VENDOR_ID, PIIX4_PM_DEVICE_ID, CLASS_OTHER_BRIDGE, REVISION);
        config.set_u16(PCI_STATUS, STATUS_RESET);
        config.set_writable(PCI_COMMAND, &COMMAND_WRITABLE);
        // The SMBus interrupt's pin, as the part and QEMU's model give it.
        config.set_interrupt_pin(Some(PciInterruptPin::IntA));
        config.set_u32(PMBA, PMBA_RESET);
        config.set_writable(PMBA, &(PMBA_BASE_MASK).to_le_bytes());
        config.set_writable(PMREGMISC, &[PMIOSE]);
        for (first, last) in STORAGE {
            config.set_writable(first, &vec![0xff; last - first + 1]);
        }
        config.set_u32(SMBBA, SMBBA_RESET);
        // The machine has no SMM: APMC_EN reads as set, "SMM set up
        // already", so that SeaBIOS does not raise an SMI and wait for
        // its handler (QEMU's PIIX4 without SMM does the same).
        config.set_u32(DEVACTB, DEVACTB_APMC_EN);
        Self { config, decode: Arc::new(PmDecode::default()), log: LogOnce::new() }
    }

    /// Programs the block at `base` and turns its decode on, as firmware
    /// does before it boots a kernel.
    pub fn set_programmed(&mut self, base: u16) {
        self.write_config(PMBA, &u32::from(base).to_le_bytes());
        self.write_config(PMREGMISC, &[PMIOSE]);
    }

    /// Where the block is decoded, shared.
    pub fn decode(&self) -> Arc<PmDecode> {
        Arc::clone(&self.decode)
    }

    fn update_decode(&self) {
        let on = self.config.u8_at(PMREGMISC) & PMIOSE != 0;
        let base = (self.config.u32_at(PMBA) & PMBA_BASE_MASK) as u16;
        let was = self.decode.base();
        let now = on.then_some(base);
        if was != now {
            tracing::debug!(target: "devices", ?was, ?now, "PIIX4 PM: power-management block decode");
        }
        self.decode.set(now);
    }
}

impl PciDevice for Piix4Pm {
    fn debug_label(&self) -> String {
        "PIIX4 PM".to_string()
    }

    fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let touches = |reg: usize, len: usize| offset < reg + len && reg < offset + data.len();
        if (touches(SMBBA, 4) || touches(SMBHSTCFG, 1)) && self.log.first(Misuse::Unimplemented) {
            tracing::info!(target: "devices", offset, "PIIX4 PM: the machine has no SMBus host controller; its registers stay off (logged once)");
        }
        self.config.write(offset, data);
        if touches(PMBA, 4) || touches(PMREGMISC, 1) {
            self.update_decode();
        }
    }
}

/// The saved state of the function: its configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Piix4PmState {
    /// The configuration space.
    pub config: PciConfigState,
}

impl Piix4Pm {
    /// The checks of [`Persist::restore`], changing nothing: the
    /// configuration space's, and PMBA's and PMREGMISC's fixed bits.
    pub(crate) fn check_state(&self, state: &Piix4PmState) -> Result<(), PersistError> {
        self.config.check_state(&state.config)?;
        let b = &state.config.bytes;
        let pmba = u32::from_le_bytes([b[PMBA], b[PMBA + 1], b[PMBA + 2], b[PMBA + 3]]);
        PersistError::check(pmba & !PMBA_BASE_MASK == PMBA_RESET, "PIIX4 PM", "config", || {
            format!("PMBA is {pmba:#010x}; only bits 15:6 are writable and bit 0 reads 1")
        })?;
        PersistError::check(b[PMREGMISC] & !PMIOSE == 0, "PIIX4 PM", "config", || {
            format!("PMREGMISC is {:#04x}; only bit 0 exists", b[PMREGMISC])
        })
    }

    /// Loads a state [`Piix4Pm::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &Piix4PmState) {
        self.config.load_state(&state.config);
        self.update_decode();
    }
}

impl Persist for Piix4Pm {
    type State = Piix4PmState;

    fn save(&self) -> Piix4PmState {
        Piix4PmState { config: self.config.save() }
    }

    fn restore(&mut self, state: &Piix4PmState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pmba_and_pmiose_place_the_block() {
        let mut pm = Piix4Pm::new();
        let d = pm.decode();
        assert_eq!(pm.config().read_dword(0), 0x7113_8086);
        assert_eq!(pm.config().read_dword(PMBA / 4), 1, "PMBA at reset: I/O space, base 0");
        assert_eq!(pm.config().read_dword(DEVACTB / 4), DEVACTB_APMC_EN, "no SMM to set up");
        assert_eq!(d.base(), None);
        pm.write_config(PMBA, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(pm.config().read_dword(PMBA / 4), 0xffc1, "only bits 15:6 move");
        assert_eq!(d.offset_of(0xffc0), None, "not decoded before PMIOSE");
        pm.write_config(PMBA, &0xb001u32.to_le_bytes());
        pm.write_config(PMREGMISC, &[0xff]);
        assert_eq!(pm.config().u8_at(PMREGMISC), 1);
        assert_eq!(d.base(), Some(0xb000));
        assert_eq!(d.offset_of(0xb008), Some(8));
        assert_eq!(d.offset_of(0xb03f), Some(0x3f));
        assert_eq!(d.offset_of(0xb040), None);
        assert_eq!(d.offset_of(0xafff), None);
        pm.write_config(PMREGMISC, &[0]);
        assert_eq!(d.offset_of(0xb008), None, "PMIOSE off");
    }

    #[test]
    fn no_smbus_and_a_checked_state() {
        let mut pm = Piix4Pm::new();
        pm.write_config(SMBBA, &0xb101u32.to_le_bytes());
        pm.write_config(SMBHSTCFG, &[0x09]);
        assert_eq!((pm.config().u32_at(SMBBA), pm.config().u8_at(SMBHSTCFG)), (1, 0), "no SMBus");

        pm.set_programmed(PM_IO_BASE);
        let saved = pm.save();
        let mut other = Piix4Pm::new();
        other.restore(&saved).unwrap();
        assert_eq!(other.decode().base(), Some(PM_IO_BASE), "a restored function decodes where it was");
        let mut bad = saved.clone();
        bad.config.bytes[PMBA] = 0x02;
        assert!(other.restore(&bad).is_err());
        let mut bad = saved;
        bad.config.bytes[PMREGMISC] = 0x81;
        assert!(other.restore(&bad).is_err());
        assert_eq!(other.decode().base(), Some(PM_IO_BASE), "a refused state changes nothing");
    }
}
