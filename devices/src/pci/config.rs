//! The type 0 configuration space of a PCI function.
//!
//! Reference: PCI Local Bus Specification 3.0, chapter 6 "Configuration
//! Space": 6.1 the header (Figure 6-1), 6.2.2 the Command register, 6.2.3
//! the Status register (write 1 to clear), 6.2.4 Interrupt Line/Pin, and
//! 6.2.5.1 "Address Maps" (BAR sizing: write all ones, read back the size
//! mask with the type bits).
//!
//! ```text
//! 0x00 device ID | vendor ID          0x10-0x24 BAR0-BAR5
//! 0x04 status | command               0x2C subsystem ID | subsystem vendor ID
//! 0x08 class | subclass | prog IF | revision
//! 0x0C BIST | header type | latency timer | cache line size
//! 0x30 expansion ROM base address
//! 0x3C max lat | min gnt | interrupt pin | interrupt line
//!
//! BAR  memory: 31:4 base | 3 prefetchable | 2:1 type (00 32-bit, 10 64-bit) | 0 = 0
//!      I/O:    31:2 base | 1 reserved | 0 = 1
//! ROM:         31:11 base | 10:1 reserved | 0 decode enable
//! ```
//!
//! The expansion ROM (6.2.5.2) is region [`PCI_ROM_SLOT`] beside the six
//! BARs: it is decoded while its enable bit and the Command register's
//! memory bit are both set.
//!
//! Every byte has a write mask (and status bits a write-1-to-clear mask), so
//! a device model states what the guest may change once, at construction,
//! and plain guest writes need no code. I/O BARs decode 16-bit port
//! addresses, as on a PC.

use std::sync::Arc;

use parking_lot::Mutex;
use persist::{Persist, PersistError};

use super::{PciError, PciInterruptPin};

/// Offset of the vendor ID.
pub const PCI_VENDOR_ID: usize = 0x00;
/// Offset of the device ID.
pub const PCI_DEVICE_ID: usize = 0x02;
/// Offset of the Command register.
pub const PCI_COMMAND: usize = 0x04;
/// Offset of the Status register.
pub const PCI_STATUS: usize = 0x06;
/// Offset of the revision ID.
pub const PCI_REVISION: usize = 0x08;
/// Offset of the programming interface byte.
pub const PCI_PROG_IF: usize = 0x09;
/// Offset of the cache line size.
pub const PCI_CACHE_LINE_SIZE: usize = 0x0c;
/// Offset of the latency timer.
pub const PCI_LATENCY_TIMER: usize = 0x0d;
/// Offset of the header type.
pub const PCI_HEADER_TYPE: usize = 0x0e;
/// Offset of BAR0.
pub const PCI_BAR0: usize = 0x10;
/// Offset of the expansion ROM base address register.
pub const PCI_ROM_ADDRESS: usize = 0x30;
/// Offset of the subsystem vendor ID.
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Offset of the subsystem ID.
pub const PCI_SUBSYSTEM_ID: usize = 0x2e;
/// Offset of the Interrupt Line register.
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
/// Offset of the Interrupt Pin register.
pub const PCI_INTERRUPT_PIN: usize = 0x3d;
/// Size of the configuration space.
pub const PCI_CONFIG_SIZE: usize = 256;
/// Number of BARs in a type 0 header.
pub const PCI_NUM_BARS: usize = 6;
/// The region index of the expansion ROM, after the BARs.
pub const PCI_ROM_SLOT: usize = PCI_NUM_BARS;
/// The regions a function decodes: six BARs and the expansion ROM.
pub const PCI_NUM_REGIONS: usize = PCI_NUM_BARS + 1;
/// The expansion ROM register's decode enable bit.
const ROM_ENABLE: u32 = 1;
/// The smallest expansion ROM: bits 10:1 of its register are reserved.
const ROM_MIN_SIZE: u64 = 2048;

/// Command: I/O space decoding.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: bus master.
pub const COMMAND_MASTER: u16 = 1 << 2;
/// Command: parity error response.
pub const COMMAND_PARITY: u16 = 1 << 6;
/// Command: SERR# enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// Command: INTx emulation disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The Command bits a function implements by default.
const COMMAND_WRITABLE: u16 =
    COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_PARITY | COMMAND_SERR | COMMAND_INTX_DISABLE;
/// Status bits that are write-1-to-clear: master data parity error (8),
/// signaled target abort (11), received target/master abort (12, 13),
/// signaled system error (14), detected parity error (15).
const STATUS_W1C: u16 = 0b1111_1001_0000_0000;
/// Header type bit 7: a multi-function device.
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

// BAR type bits.
const BAR_IO: u32 = 0b01;
const BAR_MEM_64: u32 = 0b100;
const BAR_MEM_PREFETCH: u32 = 0b1000;
const BAR_IO_ADDR_MASK: u64 = 0xffff_fffc;
const BAR_MEM_ADDR_MASK: u64 = 0xffff_ffff_ffff_fff0;
/// I/O BARs decode 16-bit port addresses on a PC.
const IO_SPACE_MASK: u64 = 0xffff;

/// What a BAR maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciBarKind {
    /// Port I/O.
    Io,
    /// 32-bit memory.
    Memory32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory (takes two BAR slots).
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

impl PciBarKind {
    fn type_bits(self) -> u32 {
        match self {
            PciBarKind::Io => BAR_IO,
            PciBarKind::Memory32 { prefetchable } => {
                if prefetchable {
                    BAR_MEM_PREFETCH
                } else {
                    0
                }
            }
            PciBarKind::Memory64 { prefetchable } => BAR_MEM_64 | if prefetchable { BAR_MEM_PREFETCH } else { 0 },
        }
    }

    /// The smallest and largest sizes the kind allows.
    fn size_range(self) -> (u64, u64) {
        match self {
            // PCI 3.0 6.2.5.1: I/O BARs ask for at most 256 bytes.
            PciBarKind::Io => (4, 256),
            PciBarKind::Memory32 { .. } => (16, 1 << 31),
            PciBarKind::Memory64 { .. } => (16, 1 << 63),
        }
    }

    /// Whether the Command register bit for this kind's space is `command`'s.
    fn decoded(self, command: u16) -> bool {
        match self {
            PciBarKind::Io => command & COMMAND_IO != 0,
            _ => command & COMMAND_MEMORY != 0,
        }
    }
}

/// A BAR's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    /// What it maps.
    pub kind: PciBarKind,
    /// Its size in bytes, a power of two.
    pub size: u64,
}

impl PciBar {
    /// The bits of the register the guest can write. An I/O BAR keeps all
    /// 32 (as QEMU's do), so sizing reads back the upper 16 bits set:
    /// SeaBIOS computes the size from the whole register. Only the low 16
    /// decode ports ([`PciBar::address_mask`]).
    fn register_mask(&self) -> u64 {
        match self.kind {
            PciBarKind::Io => !(self.size - 1) & BAR_IO_ADDR_MASK,
            _ => self.address_mask(),
        }
    }

    /// The address bits the BAR decodes.
    fn address_mask(&self) -> u64 {
        let mask = !(self.size - 1);
        match self.kind {
            PciBarKind::Io => mask & BAR_IO_ADDR_MASK & IO_SPACE_MASK,
            PciBarKind::Memory32 { .. } => mask & BAR_MEM_ADDR_MASK & 0xffff_ffff,
            PciBarKind::Memory64 { .. } => mask & BAR_MEM_ADDR_MASK,
        }
    }
}

/// A function's 256-byte configuration space.
#[derive(Clone, PartialEq, Eq)]
pub struct PciConfigSpace {
    bytes: [u8; PCI_CONFIG_SIZE],
    writable: [u8; PCI_CONFIG_SIZE],
    write1_to_clear: [u8; PCI_CONFIG_SIZE],
    /// The BARs, then the expansion ROM at [`PCI_ROM_SLOT`].
    bars: [Option<PciBar>; PCI_NUM_REGIONS],
}

impl std::fmt::Debug for PciConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.u16_at(PCI_VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.u16_at(PCI_DEVICE_ID)))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl PciConfigSpace {
    /// A header with these IDs, `class_code` (class, subclass, programming
    /// interface in bits 23:0) and `revision`. The Command register's usual
    /// bits, the cache line size, latency timer and Interrupt Line are
    /// writable; the Status error bits are write-1-to-clear.
    pub fn new(vendor: u16, device: u16, class_code: u32, revision: u8) -> Self {
        let mut c = Self {
            bytes: [0; PCI_CONFIG_SIZE],
            writable: [0; PCI_CONFIG_SIZE],
            write1_to_clear: [0; PCI_CONFIG_SIZE],
            bars: [None; PCI_NUM_REGIONS],
        };
        c.set_u16(PCI_VENDOR_ID, vendor);
        c.set_u16(PCI_DEVICE_ID, device);
        c.set_u32(PCI_REVISION, (class_code << 8) | u32::from(revision));
        c.set_writable(PCI_COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        c.write1_to_clear[PCI_STATUS..PCI_STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.set_writable(PCI_CACHE_LINE_SIZE, &[0xff, 0xff]);
        c.set_writable(PCI_INTERRUPT_LINE, &[0xff]);
        // No IRQ routed yet (PCI 3.0 6.2.4: 0xFF is "unknown / no connection").
        c.set_u8(PCI_INTERRUPT_LINE, 0xff);
        c
    }

    /// A byte, as the device sees it.
    pub fn u8_at(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0xff)
    }

    /// A little-endian word.
    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.u8_at(offset), self.u8_at(offset + 1)])
    }

    /// A little-endian dword.
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes([self.u8_at(offset), self.u8_at(offset + 1), self.u8_at(offset + 2), self.u8_at(offset + 3)])
    }

    /// Sets bytes as the device (no write masks). Bytes past 0xFF are dropped.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = self.bytes.get_mut(offset + i) {
                *slot = b;
            }
        }
    }

    /// Sets a byte as the device.
    pub fn set_u8(&mut self, offset: usize, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    /// Sets a word as the device.
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets a dword as the device.
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets the guest write masks of the bytes from `offset`.
    pub fn set_writable(&mut self, offset: usize, masks: &[u8]) {
        for (i, &m) in masks.iter().enumerate() {
            if let Some(slot) = self.writable.get_mut(offset + i) {
                *slot = m;
            }
        }
    }

    /// Sets the header type byte (bit 7 marks a multi-function device).
    pub fn set_header_type(&mut self, header_type: u8) {
        self.set_u8(PCI_HEADER_TYPE, header_type);
    }

    /// Sets the subsystem vendor and subsystem IDs.
    pub fn set_subsystem(&mut self, vendor: u16, id: u16) {
        self.set_u16(PCI_SUBSYSTEM_VENDOR_ID, vendor);
        self.set_u16(PCI_SUBSYSTEM_ID, id);
    }

    /// Sets the Interrupt Pin register.
    pub fn set_interrupt_pin(&mut self, pin: Option<PciInterruptPin>) {
        self.set_u8(PCI_INTERRUPT_PIN, pin.map_or(0, PciInterruptPin::register_value));
    }

    /// The Interrupt Pin register.
    pub fn interrupt_pin(&self) -> Option<PciInterruptPin> {
        PciInterruptPin::from_register(self.u8_at(PCI_INTERRUPT_PIN))
    }

    /// The Command register.
    pub fn command(&self) -> u16 {
        self.u16_at(PCI_COMMAND)
    }

    /// Defines BAR `index`. A 64-bit BAR also takes `index + 1`.
    pub fn add_bar(&mut self, index: usize, kind: PciBarKind, size: u64) -> Result<(), PciError> {
        let wide = matches!(kind, PciBarKind::Memory64 { .. });
        let last = if wide { index + 1 } else { index };
        if last >= PCI_NUM_BARS {
            return Err(PciError::BarIndex { index });
        }
        if self.bars[index].is_some() || self.bar_slot_taken(index) || (wide && self.bar_slot_taken(last)) {
            return Err(PciError::BarTaken { index });
        }
        let (min, max) = kind.size_range();
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciError::BarSize { kind, size, min, max });
        }
        let bar = PciBar { kind, size };
        self.bars[index] = Some(bar);
        let mask = bar.register_mask();
        let offset = PCI_BAR0 + 4 * index;
        self.set_u32(offset, kind.type_bits());
        self.set_writable(offset, &(mask as u32).to_le_bytes());
        if wide {
            self.set_u32(offset + 4, 0);
            self.set_writable(offset + 4, &((mask >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    /// Gives the function an expansion ROM of `size` bytes (a power of two,
    /// at least 2 KiB, at most 16 MiB): the register at 0x30 sizes as a
    /// BAR does, and its bit 0 turns decoding on.
    pub fn add_rom(&mut self, size: u64) -> Result<(), PciError> {
        let kind = PciBarKind::Memory32 { prefetchable: false };
        if self.bars[PCI_ROM_SLOT].is_some() {
            return Err(PciError::BarTaken { index: PCI_ROM_SLOT });
        }
        let (min, max) = (ROM_MIN_SIZE, 16 << 20);
        if !size.is_power_of_two() || !(min..=max).contains(&size) {
            return Err(PciError::BarSize { kind, size, min, max });
        }
        let bar = PciBar { kind, size };
        self.bars[PCI_ROM_SLOT] = Some(bar);
        self.set_u32(PCI_ROM_ADDRESS, 0);
        self.set_writable(PCI_ROM_ADDRESS, &((bar.address_mask() as u32) | ROM_ENABLE).to_le_bytes());
        Ok(())
    }

    /// Where region `index`'s register is: a BAR's, or the ROM's.
    fn region_offset(index: usize) -> usize {
        if index == PCI_ROM_SLOT {
            PCI_ROM_ADDRESS
        } else {
            PCI_BAR0 + 4 * index
        }
    }

    /// Whether `index` is the upper half of a 64-bit BAR or holds a BAR.
    fn bar_slot_taken(&self, index: usize) -> bool {
        self.bars[index].is_some()
            || (index > 0 && matches!(self.bars[index - 1], Some(PciBar { kind: PciBarKind::Memory64 { .. }, .. })))
    }

    /// BAR `index`'s definition ([`PCI_ROM_SLOT`]: the expansion ROM's).
    pub fn bar(&self, index: usize) -> Option<PciBar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address the guest programmed into BAR `index`.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let offset = Self::region_offset(index);
        let low = u64::from(self.u32_at(offset));
        let value = match bar.kind {
            PciBarKind::Memory64 { .. } => low | (u64::from(self.u32_at(offset + 4)) << 32),
            _ => low,
        };
        Some(value & bar.address_mask())
    }

    /// Where BAR `index` is decoded now: `None` while its space is disabled
    /// in the Command register, while it holds 0, or while it holds the
    /// all-ones sizing pattern. The expansion ROM ([`PCI_ROM_SLOT`]) is
    /// decoded only while its enable bit is set too.
    pub fn bar_region(&self, index: usize) -> Option<(PciBar, u64)> {
        let bar = self.bar(index)?;
        let base = self.bar_address(index)?;
        let enabled = index != PCI_ROM_SLOT || self.u32_at(PCI_ROM_ADDRESS) & ROM_ENABLE != 0;
        let decoded = enabled && bar.kind.decoded(self.command());
        (decoded && base != 0 && base != bar.address_mask()).then_some((bar, base))
    }

    /// Reads dword register `reg` (0-63).
    pub fn read_dword(&self, reg: usize) -> u32 {
        self.u32_at(reg * 4)
    }

    /// A guest write of `data` at `offset`: writable bits change,
    /// write-1-to-clear bits clear where the data has ones.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let at = offset + i;
            let (Some(&mask), Some(&w1c)) = (self.writable.get(at), self.write1_to_clear.get(at)) else {
                continue;
            };
            let b = &mut self.bytes[at];
            *b = (*b & !mask) | (v & mask);
            *b &= !(v & w1c);
        }
    }
}

/// The saved state of a configuration space: its bytes as the guest reads
/// them. The write masks and the BAR definitions are the function's
/// construction, not state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PciConfigState {
    /// The [`PCI_CONFIG_SIZE`] bytes.
    pub bytes: Vec<u8>,
}

/// The bytes that say which function this is: vendor and device ID,
/// revision and class code, header type, subsystem IDs and the interrupt
/// pin. A state whose identity differs belongs to another function.
const IDENTITY: [std::ops::Range<usize>; 5] = [
    PCI_VENDOR_ID..PCI_COMMAND,
    PCI_REVISION..PCI_CACHE_LINE_SIZE,
    PCI_HEADER_TYPE..PCI_HEADER_TYPE + 1,
    PCI_SUBSYSTEM_VENDOR_ID..PCI_SUBSYSTEM_ID + 2,
    PCI_INTERRUPT_PIN..PCI_INTERRUPT_PIN + 1,
];

/// The part name a configuration space's errors carry.
const PART: &str = "PCI configuration space";

/// Restore checks the size, that the state is this function's (the
/// identity bytes match) and that the BAR registers' read-only bits (the
/// type bits, and the address bits below each BAR's size) are this
/// function's; then it takes the bytes.
impl Persist for PciConfigSpace {
    type State = PciConfigState;

    fn save(&self) -> PciConfigState {
        PciConfigState { bytes: self.bytes.to_vec() }
    }

    fn restore(&mut self, state: &PciConfigState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl PciConfigSpace {
    /// The checks of [`Persist::restore`], changing nothing: for a function
    /// that checks its whole state before it loads any.
    pub fn check_state(&self, state: &PciConfigState) -> Result<(), PersistError> {
        PersistError::check_len(PART, "bytes", state.bytes.len(), PCI_CONFIG_SIZE)?;
        for range in IDENTITY {
            let (saved, here) = (&state.bytes[range.clone()], &self.bytes[range.clone()]);
            PersistError::check(saved == here, PART, "bytes", || {
                format!("{saved:02x?} at {:#04x} are not this function's identity {here:02x?}", range.start)
            })?;
        }
        let mut bars = (PCI_BAR0..PCI_BAR0 + 4 * PCI_NUM_BARS).chain(PCI_ROM_ADDRESS..PCI_ROM_ADDRESS + 4);
        if let Some(at) = bars.find(|&i| (state.bytes[i] ^ self.bytes[i]) & !self.writable[i] != 0) {
            return Err(PersistError::new(
                PART,
                "bytes",
                format!(
                    "BAR byte {at:#04x} is {:#04x}, whose read-only bits differ from this function's",
                    state.bytes[at]
                ),
            ));
        }
        Ok(())
    }

    /// Loads a state [`PciConfigSpace::check_state`] passed.
    ///
    /// # Panics
    /// If the state has not [`PCI_CONFIG_SIZE`] bytes (the check refuses that).
    pub fn load_state(&mut self, state: &PciConfigState) {
        self.bytes.copy_from_slice(&state.bytes);
    }
}

/// A PCI function as the configuration mechanism sees it.
pub trait PciDevice: Send {
    /// A short name for logs.
    fn debug_label(&self) -> String;

    /// The configuration space.
    fn config(&self) -> &PciConfigSpace;

    /// The configuration space, mutably.
    fn config_mut(&mut self) -> &mut PciConfigSpace;

    /// Reads dword register `reg` (0-63). Devices whose registers have read
    /// side effects override this.
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config().read_dword(reg)
    }

    /// Writes `data` at byte `offset` (the bytes stay inside one dword).
    /// Devices whose registers have write side effects override this and
    /// call [`PciConfigSpace::write`] for the plain part.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }
}

/// A PCI function shared between the PCI root and its BAR handlers.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> PciConfigSpace {
        PciConfigSpace::new(0x1af4, 0x1000, 0x02_00_00, 1)
    }

    #[test]
    fn header_fields_and_masks() {
        let mut c = space();
        assert_eq!(c.read_dword(0), 0x1000_1af4);
        assert_eq!(c.read_dword(2), 0x0200_0001);
        assert_eq!(c.u8_at(PCI_INTERRUPT_LINE), 0xff);
        c.write(PCI_VENDOR_ID, &[0, 0, 0, 0]);
        assert_eq!(c.read_dword(0), 0x1000_1af4, "IDs are read-only");
        c.write(PCI_COMMAND, &[0xff, 0xff]);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        c.write(PCI_INTERRUPT_LINE, &[11]);
        assert_eq!(c.u8_at(PCI_INTERRUPT_LINE), 11);
        c.set_interrupt_pin(Some(PciInterruptPin::IntB));
        assert_eq!(c.interrupt_pin(), Some(PciInterruptPin::IntB));
        c.write(PCI_INTERRUPT_PIN, &[1]);
        assert_eq!(c.interrupt_pin(), Some(PciInterruptPin::IntB), "read-only");
        c.set_subsystem(0x1af4, 0x0001);
        assert_eq!(c.read_dword(0x2c / 4), 0x0001_1af4);
        c.set_header_type(HEADER_TYPE_MULTIFUNCTION);
        assert_eq!(c.u8_at(PCI_HEADER_TYPE), 0x80);
        assert_eq!(c.u8_at(300), 0xff);
        c.write(254, &[1, 2, 3, 4]);
        assert!(format!("{c:?}").contains("0x1af4"));
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = space();
        c.set_u16(PCI_STATUS, 0x8010);
        c.write(PCI_STATUS, &[0x10, 0x00]);
        assert_eq!(c.u16_at(PCI_STATUS), 0x8010, "capability bit is read-only");
        c.write(PCI_STATUS, &[0x00, 0x80]);
        assert_eq!(c.u16_at(PCI_STATUS), 0x0010);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = space();
        c.add_bar(0, PciBarKind::Memory32 { prefetchable: false }, 0x1000).unwrap();
        c.add_bar(1, PciBarKind::Io, 0x20).unwrap();
        c.add_bar(2, PciBarKind::Memory64 { prefetchable: true }, 0x10_0000).unwrap();
        c.write(0x10, &[0xff; 4]);
        assert_eq!(c.read_dword(4), 0xffff_f000);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(c.read_dword(5), 0xffff_ffe1, "I/O BAR: all 32 bits, as QEMU (SeaBIOS sizes from them)");
        c.write(0x18, &[0xff; 4]);
        c.write(0x1c, &[0xff; 4]);
        assert_eq!(c.read_dword(6), 0xfff0_000c);
        assert_eq!(c.read_dword(7), 0xffff_ffff);
        assert_eq!(c.bar_region(0), None, "decoding is off");
        c.write(PCI_COMMAND, &[0x03, 0]);
        assert_eq!(c.bar_region(0), None, "the sizing pattern is not an address");
        c.write(0x10, &0xfebf_0000u32.to_le_bytes());
        c.write(0x14, &0xc040u32.to_le_bytes());
        c.write(0x18, &0x0000_0000u32.to_le_bytes());
        c.write(0x1c, &0x0000_0008u32.to_le_bytes());
        assert_eq!(c.bar_region(0).map(|(_, b)| b), Some(0xfebf_0000));
        assert_eq!(c.bar_region(1).map(|(_, b)| b), Some(0xc040));
        assert_eq!(c.bar_region(2).map(|(_, b)| b), Some(0x8_0000_0000));
        assert_eq!(c.bar_address(3), None, "the upper half of BAR2");
        c.write(PCI_COMMAND, &[0x01, 0]);
        assert_eq!(c.bar_region(0), None, "memory decoding off");
        assert!(c.bar_region(1).is_some());
    }

    #[test]
    fn the_expansion_rom_sizes_and_decodes_only_when_enabled() {
        let mut c = space();
        assert_eq!(c.bar(PCI_ROM_SLOT), None);
        c.write(PCI_ROM_ADDRESS, &[0xff; 4]);
        assert_eq!(c.read_dword(PCI_ROM_ADDRESS / 4), 0, "no ROM: the register reads 0");
        c.add_rom(0x4_0000).unwrap();
        assert_eq!(c.add_rom(0x4_0000), Err(PciError::BarTaken { index: PCI_ROM_SLOT }));
        // SeaBIOS sizes with the enable bit clear.
        c.write(PCI_ROM_ADDRESS, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(c.read_dword(PCI_ROM_ADDRESS / 4), 0xfffc_0000);
        c.write(PCI_COMMAND, &[0x02, 0]);
        c.write(PCI_ROM_ADDRESS, &0xfeb8_0000u32.to_le_bytes());
        assert_eq!(c.bar_region(PCI_ROM_SLOT), None, "not enabled");
        c.write(PCI_ROM_ADDRESS, &0xfeb8_07ffu32.to_le_bytes());
        assert_eq!(c.read_dword(PCI_ROM_ADDRESS / 4), 0xfeb8_0001, "bits 10:1 are reserved");
        let (bar, base) = c.bar_region(PCI_ROM_SLOT).unwrap();
        assert_eq!((bar.size, base), (0x4_0000, 0xfeb8_0000));
        c.write(PCI_COMMAND, &[0x00, 0]);
        assert_eq!(c.bar_region(PCI_ROM_SLOT), None, "memory decoding off");
        // A state with a ROM does not load into a function without one.
        let state = c.save();
        let mut bare = space();
        assert!(bare.restore(&state).is_err());
        let mut same = space();
        same.add_rom(0x4_0000).unwrap();
        same.restore(&state).unwrap();
        assert_eq!(same.read_dword(PCI_ROM_ADDRESS / 4), 0xfeb8_0001);
        for bad in [0, 1024, 3000, 32 << 20] {
            assert!(space().add_rom(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bar_definitions_are_checked() {
        let mut c = space();
        let mem = PciBarKind::Memory32 { prefetchable: false };
        let wide = PciBarKind::Memory64 { prefetchable: false };
        assert_eq!(c.add_bar(6, mem, 0x1000), Err(PciError::BarIndex { index: 6 }));
        assert_eq!(c.add_bar(5, wide, 0x1000), Err(PciError::BarIndex { index: 5 }));
        assert!(matches!(c.add_bar(0, mem, 0x1800), Err(PciError::BarSize { .. })));
        assert!(matches!(c.add_bar(0, PciBarKind::Io, 0x200), Err(PciError::BarSize { .. })));
        assert!(matches!(c.add_bar(0, mem, 8), Err(PciError::BarSize { .. })));
        c.add_bar(0, wide, 0x1000).unwrap();
        assert_eq!(c.add_bar(1, mem, 0x1000), Err(PciError::BarTaken { index: 1 }));
        assert_eq!(c.add_bar(0, mem, 0x1000), Err(PciError::BarTaken { index: 0 }));
        c.add_bar(2, mem, 0x1000).unwrap();
        assert_eq!(c.add_bar(1, wide, 0x1000), Err(PciError::BarTaken { index: 1 }));
        assert_eq!(c.bar(2).unwrap().size, 0x1000);
    }

    /// A function with a 32-bit memory BAR, a 64-bit one and an I/O BAR,
    /// programmed and decoding, its Interrupt Line routed and an error
    /// status bit set.
    fn configured() -> PciConfigSpace {
        let mut c = space();
        c.set_interrupt_pin(Some(PciInterruptPin::IntA));
        c.add_bar(0, PciBarKind::Memory32 { prefetchable: false }, 0x1000).unwrap();
        c.add_bar(1, PciBarKind::Io, 0x20).unwrap();
        c.add_bar(2, PciBarKind::Memory64 { prefetchable: true }, 0x10_0000).unwrap();
        c.write(0x10, &0xfebf_0000u32.to_le_bytes());
        c.write(0x14, &0xc040u32.to_le_bytes());
        c.write(0x1c, &0x0000_0008u32.to_le_bytes());
        c.write(PCI_COMMAND, &[0x07, 0x04]);
        c.write(PCI_INTERRUPT_LINE, &[11]);
        c.write(PCI_CACHE_LINE_SIZE, &[0x10, 0x40]);
        c.set_u16(PCI_STATUS, 0x8010);
        c
    }

    /// The same function freshly built: its construction, none of its programming.
    fn fresh() -> PciConfigSpace {
        let mut c = space();
        c.set_interrupt_pin(Some(PciInterruptPin::IntA));
        c.add_bar(0, PciBarKind::Memory32 { prefetchable: false }, 0x1000).unwrap();
        c.add_bar(1, PciBarKind::Io, 0x20).unwrap();
        c.add_bar(2, PciBarKind::Memory64 { prefetchable: true }, 0x10_0000).unwrap();
        c
    }

    #[test]
    fn the_persisted_space_round_trips_and_decodes_alike() {
        let c = configured();
        let mut f = fresh();
        let state = persist::assert_round_trip(&c, &mut f);
        assert_eq!(state.bytes.len(), PCI_CONFIG_SIZE);
        for i in 0..PCI_NUM_BARS {
            assert_eq!(f.bar_region(i), c.bar_region(i), "BAR {i}");
        }
        assert_eq!(f.bar_region(2).map(|(_, b)| b), Some(0x8_0000_0000));
        assert_eq!(f.u8_at(PCI_INTERRUPT_LINE), 11);
        // The write masks came with the function: guest writes behave alike.
        let mut c = c;
        for x in [&mut c, &mut f] {
            x.write(PCI_STATUS, &[0x00, 0x80]);
            x.write(0x10, &[0xff; 4]);
        }
        assert_eq!(f, c);
        assert_eq!(f.read_dword(4), 0xffff_f000);
    }

    #[test]
    fn another_functions_space_is_refused() {
        let good = configured().save();
        let mut f = fresh();
        let cases: [fn(&mut PciConfigState); 7] = [
            |s| s.bytes.truncate(64),
            |s| s.bytes[PCI_DEVICE_ID] ^= 1,
            |s| s.bytes[PCI_REVISION + 3] = 0x03,
            |s| s.bytes[PCI_HEADER_TYPE] = HEADER_TYPE_MULTIFUNCTION,
            |s| s.bytes[PCI_INTERRUPT_PIN] = 2,
            |s| s.bytes[0x10] |= 0x08,  // BAR0 prefetchable
            |s| s.bytes[0x14] &= !0x01, // BAR1 no longer I/O
        ];
        for corrupt in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let e = persist::assert_refused(&mut f, &bad);
            assert_eq!(e.field, "bytes", "{e}");
        }
        // A function without BAR2 cannot take a state with it programmed.
        let mut bare = space();
        bare.set_interrupt_pin(Some(PciInterruptPin::IntA));
        let e = persist::assert_refused(&mut bare, &good);
        assert!(e.problem.contains("BAR byte 0x12"), "{e}");
    }
}
