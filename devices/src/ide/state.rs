//! The saved state of the IDE controller and its checks.
//!
//! The state is what the guest can observe: the configuration space, each
//! channel's device control, selection and bus master registers, and each
//! device's task file, data phase (with the buffer, so a save in the middle
//! of a PIO transfer resumes it), settings, sense data and medium state.
//! The images' contents are not part of it; what the guest saw of them
//! (a disk's capacity and whether it is writable, whether a medium is in
//! and its capacity) is, and a restore in front of other drives is refused.

use persist::{Persist, PersistError};

use super::ata::MAX_MULTIPLE;
use super::atapi::{CDB_LEN, EVENT_MEDIA_REMOVAL};
use super::bmdma::{BusMasterState, BM_CMD_MASK, BM_ST_MASK};
use super::channel::{Channel, DC_MASK};
use super::drive::{
    AtapiSource, AtapiState, DmaJob, Drive, DriveKind, DriveSettings, PioNext, TaskFile, Transfer, CD_SECTOR_SIZE,
    MAX_BUFFER,
};
use super::{IdeController, IdeStats, COMMAND_WRITABLE};
use crate::block::SECTOR_SIZE;
use crate::pci::config::{PciConfigState, PCI_COMMAND};

/// What a [`PersistError`] of the controller names.
const PART: &str = "PIIX3 IDE";

/// The saved state of the IDE controller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IdeState {
    /// The configuration space (Command, BAR4, IDETIM, SIDETIM).
    pub config: PciConfigState,
    /// The primary and secondary channels.
    pub channels: Vec<ChannelState>,
}

/// The saved state of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ChannelState {
    /// The device control register (HOB, SRST, nIEN).
    pub control: u8,
    /// The selected device (0 or 1).
    pub selected: u8,
    /// The bus master registers.
    pub bus_master: BusMasterState,
    /// Device 0 and device 1.
    pub drives: Vec<DriveState>,
}

/// The saved state of one device position.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DriveState {
    /// What the position held; a restore needs the same.
    pub kind: DriveKind,
    /// The task file.
    pub regs: TaskFile,
    /// The device asserts its interrupt.
    pub irq_pending: bool,
    /// The data phase.
    pub transfer: Transfer,
    /// The data buffer.
    pub buffer: Vec<u8>,
    /// The next byte of the buffer the host moves.
    pub pos: u32,
    /// The end of the current DRQ block in the buffer.
    pub end: u32,
    /// What the host configured.
    pub settings: DriveSettings,
    /// The packet device's sense, lock, tray and events.
    pub atapi: AtapiState,
    /// The counters.
    pub stats: IdeStats,
}

impl Drive {
    pub(crate) fn save(&self) -> DriveState {
        DriveState {
            kind: self.kind(),
            regs: self.regs,
            irq_pending: self.irq_pending,
            transfer: self.xfer,
            buffer: self.buf.clone(),
            pos: self.pos as u32,
            end: self.end as u32,
            settings: self.settings,
            atapi: self.atapi,
            stats: self.stats,
        }
    }

    /// The checks of a restore, changing nothing; `slot` names the device.
    fn check_state(&self, s: &DriveState, slot: &'static str) -> Result<(), PersistError> {
        let kind = self.kind();
        PersistError::check(s.kind == kind, PART, "drives", || {
            format!("{slot} held {}, the machine has {kind}", s.kind)
        })?;
        PersistError::check_max(PART, "buffer", s.buffer.len(), MAX_BUFFER)?;
        let (pos, end) = (s.pos as usize, s.end as usize);
        PersistError::check(pos <= end && end <= s.buffer.len(), PART, "pos", || {
            format!("{slot}: position {pos} and block end {end} do not fit a buffer of {} bytes", s.buffer.len())
        })?;
        let st = &s.settings;
        PersistError::check(
            (st.multiple == 0 || st.multiple.is_power_of_two()) && st.multiple <= MAX_MULTIPLE,
            PART,
            "settings",
            || format!("{slot}: a multiple count of {} sectors", st.multiple),
        )?;
        PersistError::check(st.geometry.heads <= 16, PART, "settings", || {
            format!("{slot}: a translation with {} heads", st.geometry.heads)
        })?;
        PersistError::check(
            st.pio_mode <= 4 && matches!(st.dma_mode, 0 | 0x20..=0x22 | 0x40..=0x45),
            PART,
            "settings",
            || format!("{slot}: PIO mode {} and DMA mode code {:#04x}", st.pio_mode, st.dma_mode),
        )?;
        PersistError::check(s.atapi.sense_key <= 0x0f && s.atapi.event <= EVENT_MEDIA_REMOVAL, PART, "atapi", || {
            format!("{slot}: sense key {:#x} and media event {}", s.atapi.sense_key, s.atapi.event)
        })?;
        let bad = |what: &str| Err(PersistError::new(PART, "transfer", format!("{slot}: {what} ({:?})", s.transfer)));
        let buffered = (s.buffer.len() - pos) as u64;
        match (kind, s.transfer) {
            (_, Transfer::Idle) => Ok(()),
            (DriveKind::Empty, _) => bad("a data phase on an empty position"),
            (_, Transfer::PioIn(PioNext::Done)) if end <= 512 => Ok(()),
            (DriveKind::Disk { sectors, .. }, t) => {
                let fits = |lba: u64, n: u64| lba.checked_add(n).is_some_and(|e| e <= sectors);
                let block_ok = |block: u64| (1..=u64::from(MAX_MULTIPLE)).contains(&block);
                match t {
                    Transfer::PioIn(PioNext::ReadSectors { lba, remaining, block, .. }) => {
                        if fits(lba, remaining) && block_ok(block) && end as u64 <= block * SECTOR_SIZE {
                            Ok(())
                        } else {
                            bad("a PIO read outside the disk")
                        }
                    }
                    Transfer::PioOut(PioNext::WriteSectors { lba, remaining, block, .. }) => {
                        let len = block.min(remaining) * SECTOR_SIZE;
                        if remaining > 0 && fits(lba, remaining) && block_ok(block) && end as u64 == len {
                            Ok(())
                        } else {
                            bad("a PIO write outside the disk or with a block of the wrong size")
                        }
                    }
                    Transfer::Dma(DmaJob::ReadSectors { lba, count, .. } | DmaJob::WriteSectors { lba, count, .. }) => {
                        if count > 0 && fits(lba, count) {
                            Ok(())
                        } else {
                            bad("a DMA command outside the disk")
                        }
                    }
                    _ => bad("a packet device's data phase on a disk"),
                }
            }
            (DriveKind::Cdrom { medium_sectors }, t) => {
                let source_ok = |src: AtapiSource, left: u64| {
                    let room = src.sectors.checked_mul(CD_SECTOR_SIZE).and_then(|b| b.checked_add(buffered));
                    let inside = src.sectors == 0
                        || medium_sectors.is_some_and(|n| src.lba.checked_add(src.sectors).is_some_and(|e| e <= n));
                    inside && room.is_some_and(|r| r >= left)
                };
                match t {
                    Transfer::PioOut(PioNext::Packet { .. }) if end == CDB_LEN => Ok(()),
                    Transfer::PioIn(PioNext::Atapi { left, source, .. }) if source_ok(source, left) => Ok(()),
                    Transfer::Dma(DmaJob::Atapi { left, source }) if source_ok(source, left) => Ok(()),
                    _ => bad("a data phase a CD-ROM drive cannot be in"),
                }
            }
        }
    }

    fn load_state(&mut self, s: &DriveState) {
        self.regs = s.regs;
        self.irq_pending = s.irq_pending;
        self.irq_event = false;
        self.xfer = s.transfer;
        self.buf = s.buffer.clone();
        self.pos = s.pos as usize;
        self.end = s.end as usize;
        self.settings = s.settings;
        self.atapi = s.atapi;
        self.stats = s.stats;
    }
}

const SLOTS: [[&str; 2]; 2] = [["primary master", "primary slave"], ["secondary master", "secondary slave"]];

impl Channel {
    pub(crate) fn save(&self) -> ChannelState {
        ChannelState {
            control: self.control,
            selected: self.selected as u8,
            bus_master: self.bm,
            drives: self.drives.iter().map(Drive::save).collect(),
        }
    }

    fn check_state(&self, s: &ChannelState, index: usize) -> Result<(), PersistError> {
        PersistError::check_len(PART, "drives", s.drives.len(), 2)?;
        PersistError::check_max(PART, "selected", s.selected, 1)?;
        PersistError::check(s.control & !DC_MASK == 0, PART, "control", || {
            format!("is {:#04x}; only HOB, SRST and nIEN exist", s.control)
        })?;
        let bm = &s.bus_master;
        PersistError::check(
            bm.command & !BM_CMD_MASK == 0 && bm.status & !BM_ST_MASK == 0 && bm.prdt & 3 == 0,
            PART,
            "bus_master",
            || {
                format!(
                    "command {:#04x}, status {:#04x}, table {:#x} have reserved bits set",
                    bm.command, bm.status, bm.prdt
                )
            },
        )?;
        for (i, (d, ds)) in self.drives.iter().zip(&s.drives).enumerate() {
            d.check_state(ds, SLOTS[index][i])?;
        }
        Ok(())
    }

    fn load_state(&mut self, s: &ChannelState) {
        self.control = s.control;
        self.selected = usize::from(s.selected);
        self.bm = s.bus_master;
        for (d, ds) in self.drives.iter_mut().zip(&s.drives) {
            d.load_state(ds);
        }
        self.resync_line();
    }
}

impl IdeController {
    /// The checks of [`Persist::restore`], changing nothing.
    pub fn check_state(&self, s: &IdeState) -> Result<(), PersistError> {
        self.config.check_state(&s.config)?;
        let command = u16::from_le_bytes([s.config.bytes[PCI_COMMAND], s.config.bytes[PCI_COMMAND + 1]]);
        PersistError::check(command & !COMMAND_WRITABLE == 0, PART, "config", || {
            format!("Command is {command:#06x}; only I/O space and bus master exist")
        })?;
        PersistError::check_len(PART, "channels", s.channels.len(), 2)?;
        for (i, (c, cs)) in self.channels.iter().zip(&s.channels).enumerate() {
            c.check_state(cs, i)?;
        }
        Ok(())
    }

    /// Loads a state [`IdeController::check_state`] passed, and drives the
    /// interrupt lines to match.
    ///
    /// # Panics
    /// If the state has not the configuration space's size (the check
    /// refuses that).
    pub fn load_state(&mut self, s: &IdeState) {
        self.config.load_state(&s.config);
        for (c, cs) in self.channels.iter_mut().zip(&s.channels) {
            c.load_state(cs);
        }
    }
}

/// Restore checks the configuration space, every register's reserved
/// bits, and that each position holds what the state says (the same kind
/// of device, capacity, access and medium: [`DriveKind`]), and that each
/// data phase fits its buffer and its disk; then it loads the state and
/// drives the interrupt lines to match.
impl Persist for IdeController {
    type State = IdeState;

    fn save(&self) -> IdeState {
        IdeState { config: self.config.save(), channels: self.channels.iter().map(Channel::save).collect() }
    }

    fn restore(&mut self, state: &IdeState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}
