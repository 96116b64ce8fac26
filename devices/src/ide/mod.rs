//! The PIIX3 IDE controller (PCI 00:01.1, 8086:7010) with ATA disks and an
//! ATAPI CD-ROM drive.
//!
//! References: Intel 82371SB PIIX3 datasheet (290550), the IDE function's
//! configuration registers: PCICMD, BMIBA (20h), IDETIM (40h-43h), SIDETIM
//! (44h); SFF-8038i for the bus master; ATA8-ACS and ATA/ATAPI-6 for the
//! devices; SFF-8020i and MMC-5 for the CD-ROM.
//!
//! ```text
//! legacy ports (programming interface 80h: both channels in compatibility mode, bus master)
//!   primary    0x1F0-0x1F7 command block, 0x3F6 control block, IRQ 14
//!   secondary  0x170-0x177 command block, 0x376 control block, IRQ 15
//! command block  read                           write
//!   +0           data (16 or 32 bits)           data
//!   +1           error                          features
//!   +2           sector count / ATAPI reason    sector count
//!   +3 +4 +5     LBA 7:0, 15:8, 23:16 (ATAPI byte count in +4, +5)
//!   +6           device: 6 LBA | 4 DEV | 3:0 LBA 27:24 or head
//!   +7           status (releases INTRQ)        command
//! control block  alternate status               device control: 7 HOB | 2 SRST | 1 nIEN
//! status         7 BSY | 6 DRDY | 5 DF | 4 DSC | 3 DRQ | 0 ERR
//! error          6 UNC | 4 IDNF | 2 ABRT (packet devices: 7:4 sense key)
//!
//! configuration space
//!   04h PCICMD   0 I/O space (the bus master registers) | 2 bus master
//!   20h BMIBA    bus master registers, 16 bytes of I/O space (BAR4)
//!   40h IDETIM   primary: 15 IDE decode enable | 14 slave timing | 13:0 timings
//!   42h IDETIM   secondary
//!   44h SIDETIM  slave timings
//! ```
//!
//! Model choices:
//! - IDETIM's decode enable gates each channel's legacy ports (a disabled
//!   channel floats: reads all ones, writes dropped). Both are enabled at
//!   power-on, as SeaBIOS programs them (8000h), so a kernel booted
//!   without firmware finds them on: Linux's ata_piix skips a channel
//!   whose bit is clear. The legacy ports do not depend on PCICMD (as
//!   QEMU's); the bus master needs PCICMD's bus master bit.
//! - Data moves synchronously, in the register access that starts it: the
//!   command, the end of a PIO block, or the start of the bus master. The
//!   image accesses sit in a few functions of the device model, the places
//!   a move of the I/O to another thread would change.
//! - [`IdeController::change_medium`] changes a CD-ROM's medium from the
//!   host, as a monitor's `change` and `eject` do; the guest sees a unit
//!   attention and a media event.

mod ata;
mod atapi;
mod bmdma;
mod channel;
mod drive;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use crate::block::{BlockBackend, SECTOR_SIZE};
use crate::bus::{BusDevice, SharedDevice};
use crate::irq::IrqLine;
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::BusMapping;
use crate::pci::config::{
    PciBarKind, PciConfigSpace, COMMAND_IO, COMMAND_MASTER, PCI_CACHE_LINE_SIZE, PCI_COMMAND, PCI_STATUS,
};
use crate::pci::i440fx::INTEL_VENDOR_ID;
use crate::pci::{PciAddress, PciDevice};

use channel::Channel;
use drive::{Cdrom, Disk, Drive, Media};

pub use bmdma::BusMasterState;
pub use drive::{
    AddrMode, AtapiSource, AtapiState, DmaJob, DriveKind, DriveSettings, Geometry, PioNext, TaskFile, Transfer,
    CD_SECTOR_SIZE, MAX_BUFFER,
};
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::{fuzz_atapi_packets, fuzz_prd_tables};
pub use state::{ChannelState, DriveState, IdeState};

/// Device ID of the PIIX3 IDE function.
pub const PIIX3_IDE_DEVICE_ID: u16 = 0x7010;
/// Where the IDE function sits: function 1 of the PIIX3.
pub const PIIX_IDE_ADDRESS: PciAddress = PciAddress { bus: 0, device: 1, function: 1 };
/// The BAR of the bus master registers (BMIBA).
pub const BMDMA_BAR: usize = 4;
/// Bytes of I/O space the bus master registers take: 8 per channel.
pub const BMDMA_BAR_SIZE: u64 = 16;
/// The command block of the primary and secondary channels.
pub const COMMAND_BLOCK_PORTS: [u16; 2] = [0x1f0, 0x170];
/// Ports in a command block.
pub const COMMAND_BLOCK_LEN: u64 = 8;
/// The control block (alternate status, device control) of each channel.
pub const CONTROL_BLOCK_PORTS: [u16; 2] = [0x3f6, 0x376];
/// Ports in a control block.
pub const CONTROL_BLOCK_LEN: u64 = 1;
/// The ISA IRQ of each channel.
pub const CHANNEL_IRQS: [u32; 2] = [14, 15];

/// Class code: mass storage, IDE, programming interface 80h (both channels
/// in compatibility mode, fixed; bus master capable).
const CLASS_IDE: u32 = 0x01_01_80;
const REVISION: u8 = 0x00;
/// Status at reset: fast back-to-back capable, medium DEVSEL (0280h).
const STATUS_RESET: u16 = 0x0280;
/// The PCICMD bits the function implements.
pub(crate) const COMMAND_WRITABLE: u16 = COMMAND_IO | COMMAND_MASTER;
/// IDETIM of the primary channel (the secondary's follows).
const IDETIM: usize = 0x40;
/// IDETIM bit 15: the channel's legacy ports decode.
const IDETIM_DECODE_ENABLE: u16 = 0x8000;
/// IDETIM bits 11:10 are reserved.
const IDETIM_WRITABLE: u16 = 0xf3ff;
/// SIDETIM.
const SIDETIM: usize = 0x44;

/// A device position of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdeSlot {
    /// Device 0 of the primary channel.
    PrimaryMaster,
    /// Device 1 of the primary channel.
    PrimarySlave,
    /// Device 0 of the secondary channel.
    SecondaryMaster,
    /// Device 1 of the secondary channel.
    SecondarySlave,
}

impl IdeSlot {
    /// The four positions, by index.
    pub const ALL: [IdeSlot; 4] =
        [IdeSlot::PrimaryMaster, IdeSlot::PrimarySlave, IdeSlot::SecondaryMaster, IdeSlot::SecondarySlave];

    /// 0-3: primary master, primary slave, secondary master, secondary slave.
    pub fn index(self) -> usize {
        match self {
            IdeSlot::PrimaryMaster => 0,
            IdeSlot::PrimarySlave => 1,
            IdeSlot::SecondaryMaster => 2,
            IdeSlot::SecondarySlave => 3,
        }
    }

    /// The channel: 0 primary, 1 secondary.
    pub fn channel(self) -> usize {
        self.index() / 2
    }

    /// The device on the channel: 0 master, 1 slave.
    pub fn device(self) -> usize {
        self.index() % 2
    }
}

impl std::fmt::Display for IdeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdeSlot::PrimaryMaster => "primary master",
            IdeSlot::PrimarySlave => "primary slave",
            IdeSlot::SecondaryMaster => "secondary master",
            IdeSlot::SecondarySlave => "secondary slave",
        })
    }
}

/// What to put at a device position.
pub enum IdeDrive {
    /// Nothing.
    Empty,
    /// An ATA hard disk over an image (512-byte sectors), with the serial
    /// number IDENTIFY reports (20 characters at most are shown).
    Disk(Box<dyn BlockBackend>, String),
    /// An ATAPI CD-ROM drive, with a medium (2048-byte sectors) or empty.
    Cdrom(Option<Box<dyn BlockBackend>>),
}

impl std::fmt::Debug for IdeDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdeDrive::Empty => f.write_str("Empty"),
            IdeDrive::Disk(d, serial) => write!(f, "Disk({} bytes, {serial:?})", d.size()),
            IdeDrive::Cdrom(m) => write!(f, "Cdrom({:?})", m.as_ref().map(|m| m.size())),
        }
    }
}

/// Why a medium cannot be changed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MediaError {
    /// The position holds no CD-ROM drive.
    #[error("the IDE {slot} is not a CD-ROM drive; only a CD-ROM drive takes a medium")]
    NotCdrom {
        /// The position.
        slot: IdeSlot,
    },
    /// The guest locked the medium (PREVENT MEDIUM REMOVAL); it was asked
    /// to eject it (a media event), and may do so. Forcing the change
    /// ignores the lock.
    #[error(
        "the CD-ROM drive at IDE {slot} is locked by the guest; it was asked to release the medium: \
         try again, or force the change"
    )]
    Locked {
        /// The position.
        slot: IdeSlot,
    },
}

/// Counters of the controller, or of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IdeStats {
    /// Read commands (PIO, DMA, packet READs).
    pub reads: u64,
    /// Bytes read from the images.
    pub read_bytes: u64,
    /// Write commands.
    pub writes: u64,
    /// Bytes written to the images.
    pub write_bytes: u64,
    /// Flushes of the images.
    pub flushes: u64,
    /// Commands that ended in an error status.
    pub errors: u64,
}

impl IdeStats {
    fn add(&mut self, o: &IdeStats) {
        self.reads += o.reads;
        self.read_bytes += o.read_bytes;
        self.writes += o.writes;
        self.write_bytes += o.write_bytes;
        self.flushes += o.flushes;
        self.errors += o.errors;
    }
}

/// What the controller logs once: unimplemented commands by name, and each
/// kind of guest misuse.
#[derive(Debug, Default)]
pub(crate) struct IdeLog {
    ata: [u64; 4],
    packet: [u64; 4],
    features: [u64; 4],
    pages: [u64; 4],
    read_only: bool,
    misuse: LogOnce,
}

impl IdeLog {
    /// True the first time `code` is seen in `set`.
    fn first(set: &mut [u64; 4], code: u8) -> bool {
        let (word, bit) = (usize::from(code >> 6), code & 63);
        let seen = set[word] & (1 << bit) != 0;
        set[word] |= 1 << bit;
        !seen
    }

    pub(crate) fn ata_command(&mut self, device: &str, code: u8) {
        if Self::first(&mut self.ata, code) {
            let name = ata::command_name(code);
            tracing::warn!(target: "devices", "IDE {device}: ATA command {code:#04x} ({name}) is not implemented; aborted (logged once)");
        }
    }

    pub(crate) fn packet_command(&mut self, code: u8) {
        if Self::first(&mut self.packet, code) {
            let name = atapi::command_name(code);
            tracing::warn!(target: "devices", "IDE CD-ROM: packet command {code:#04x} ({name}) is not implemented; ILLEGAL REQUEST (logged once)");
        }
    }

    pub(crate) fn set_features(&mut self, code: u8) {
        if Self::first(&mut self.features, code) {
            let name = ata::feature_name(code);
            tracing::warn!(target: "devices", "IDE: SET FEATURES {code:#04x} ({name}) is not implemented; aborted (logged once)");
        }
    }

    pub(crate) fn mode_page(&mut self, page: u8) {
        if Self::first(&mut self.pages, page) {
            tracing::warn!(target: "devices", "IDE CD-ROM: mode page {page:#04x} is not implemented; ILLEGAL REQUEST (logged once)");
        }
    }

    pub(crate) fn io_error(&self, what: impl FnOnce() -> String) {
        if self.misuse.first(Misuse::OutputError) {
            tracing::warn!(target: "devices", "IDE: the image failed: {} (logged once)", what());
        }
    }

    pub(crate) fn read_only(&mut self) {
        if !std::mem::replace(&mut self.read_only, true) {
            tracing::warn!(target: "devices", "IDE: a write to a read-only disk; aborted (logged once)");
        }
    }

    pub(crate) fn dma_fault(&self, what: impl FnOnce() -> String) {
        if self.misuse.first(Misuse::OutOfWindow) {
            tracing::warn!(target: "devices", "IDE bus master: {}; the transfer fails (logged once)", what());
        }
    }

    pub(crate) fn bad_value(&self, what: impl FnOnce() -> String) {
        if self.misuse.first(Misuse::BadValue) {
            tracing::warn!(target: "devices", "IDE: {}; the command fails (logged once)", what());
        }
    }
}

/// What the devices need of the controller while they run a command.
pub(crate) struct Ctx<'a> {
    /// Guest memory, for the bus master.
    pub(crate) mem: &'a GuestMemory,
    pub(crate) log: &'a mut IdeLog,
    /// PCICMD's bus master bit: the bus master may run.
    pub(crate) bus_master: bool,
}

/// The PIIX3 IDE function: two channels of two devices each.
pub struct IdeController {
    config: PciConfigSpace,
    channels: [Channel; 2],
    mem: Arc<GuestMemory>,
    log: IdeLog,
}

impl std::fmt::Debug for IdeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<DriveKind> = IdeSlot::ALL.iter().map(|&s| self.kind(s)).collect();
        f.debug_struct("IdeController").field("drives", &kinds).finish_non_exhaustive()
    }
}

/// The configuration space at power-on.
fn power_on_config() -> PciConfigSpace {
    let mut c = PciConfigSpace::new(INTEL_VENDOR_ID, PIIX3_IDE_DEVICE_ID, CLASS_IDE, REVISION);
    c.set_writable(PCI_COMMAND, &COMMAND_WRITABLE.to_le_bytes());
    c.set_u16(PCI_STATUS, STATUS_RESET);
    // No cache line size register; the latency timer's bits 7:4 exist.
    c.set_writable(PCI_CACHE_LINE_SIZE, &[0x00, 0xf0]);
    // A fixed, valid BAR on a fresh header: this cannot fail.
    let _ = c.add_bar(BMDMA_BAR, PciBarKind::Io, BMDMA_BAR_SIZE);
    let [lo, hi] = IDETIM_WRITABLE.to_le_bytes();
    c.set_writable(IDETIM, &[lo, hi, lo, hi]);
    c.set_writable(SIDETIM, &[0xff]);
    let [lo, hi] = IDETIM_DECODE_ENABLE.to_le_bytes();
    c.set_bytes(IDETIM, &[lo, hi, lo, hi]);
    c
}

impl IdeController {
    /// The controller with `drives` at the four positions (primary master,
    /// primary slave, secondary master, secondary slave), the channels'
    /// interrupt lines (ISA IRQ 14 and 15, [`CHANNEL_IRQS`]), and guest
    /// memory for the bus master.
    pub fn new(
        drives: [IdeDrive; 4],
        primary_irq: Arc<dyn IrqLine>,
        secondary_irq: Arc<dyn IrqLine>,
        mem: Arc<GuestMemory>,
    ) -> Self {
        let mut drives = drives.into_iter().enumerate().map(|(i, d)| {
            let media = match d {
                IdeDrive::Empty => Media::Empty,
                IdeDrive::Disk(backend, serial) => {
                    let sectors = backend.size() / SECTOR_SIZE;
                    Media::Disk(Disk { backend, serial, sectors })
                }
                IdeDrive::Cdrom(medium) => Media::Cdrom(Cdrom { medium, serial: format!("FVMCD{i:04}") }),
            };
            Drive::new(media, i % 2)
        });
        let mut pair = || {
            let d0 = drives.next().unwrap_or_else(|| Drive::new(Media::Empty, 0));
            let d1 = drives.next().unwrap_or_else(|| Drive::new(Media::Empty, 1));
            [d0, d1]
        };
        let primary = Channel::new(pair(), primary_irq);
        let secondary = Channel::new(pair(), secondary_irq);
        Self { config: power_on_config(), channels: [primary, secondary], mem, log: IdeLog::default() }
    }

    /// The legacy port ranges to register on the port I/O bus: each
    /// channel's command block and control block.
    pub fn bus_mappings(this: &Arc<Mutex<Self>>) -> Vec<BusMapping> {
        let mut v = Vec::new();
        for channel in 0..2 {
            let cmd: SharedDevice =
                Arc::new(Mutex::new(IdePort { ide: Arc::clone(this), window: Window::Command(channel) }));
            let ctl: SharedDevice =
                Arc::new(Mutex::new(IdePort { ide: Arc::clone(this), window: Window::Control(channel) }));
            v.push(BusMapping::pio(u64::from(COMMAND_BLOCK_PORTS[channel]), COMMAND_BLOCK_LEN, cmd));
            v.push(BusMapping::pio(u64::from(CONTROL_BLOCK_PORTS[channel]), CONTROL_BLOCK_LEN, ctl));
        }
        v
    }

    /// The bus devices answering for each BAR: (BAR index, device); BAR4
    /// holds the bus master registers.
    pub fn bar_devices(this: &Arc<Mutex<Self>>) -> Vec<(usize, SharedDevice)> {
        let bm: SharedDevice = Arc::new(Mutex::new(IdePort { ide: Arc::clone(this), window: Window::BusMaster }));
        vec![(BMDMA_BAR, bm)]
    }

    /// Puts `medium` into the CD-ROM drive at `slot` (`None` empties it)
    /// and closes its tray; returns the medium that was in. The guest sees
    /// a unit attention and a new-media event (or a media-removal event).
    /// While the guest prevents removal the change is refused unless
    /// `force`: the guest is sent an eject request instead, and `medium` is
    /// dropped.
    pub fn change_medium(
        &mut self,
        slot: IdeSlot,
        medium: Option<Box<dyn BlockBackend>>,
        force: bool,
    ) -> Result<Option<Box<dyn BlockBackend>>, MediaError> {
        let d = self.drive_mut(slot);
        if !d.is_atapi() {
            return Err(MediaError::NotCdrom { slot });
        }
        if d.atapi.prevent && !force {
            d.atapi.event = atapi::EVENT_EJECT_REQUEST;
            return Err(MediaError::Locked { slot });
        }
        let old = d.swap_medium(medium);
        self.channels[slot.channel()].sync_irq();
        Ok(old)
    }

    /// Empties the CD-ROM drive at `slot`: [`IdeController::change_medium`]
    /// with no medium.
    pub fn eject(&mut self, slot: IdeSlot, force: bool) -> Result<Option<Box<dyn BlockBackend>>, MediaError> {
        self.change_medium(slot, None, force)
    }

    /// What the position holds.
    pub fn kind(&self, slot: IdeSlot) -> DriveKind {
        self.drive(slot).kind()
    }

    /// Whether the guest prevents the removal of the medium at `slot`.
    pub fn medium_locked(&self, slot: IdeSlot) -> bool {
        let d = self.drive(slot);
        d.is_atapi() && d.atapi.prevent
    }

    /// The counters of every device together.
    pub fn stats(&self) -> IdeStats {
        let mut total = IdeStats::default();
        for slot in IdeSlot::ALL {
            total.add(&self.drive(slot).stats);
        }
        total
    }

    /// The counters of the device at `slot`.
    pub fn drive_stats(&self, slot: IdeSlot) -> IdeStats {
        self.drive(slot).stats
    }

    /// A system reset: IDETIM, SIDETIM, the bus masters and every device
    /// back to their power-on state (media stay in, unlocked). The PCI
    /// header (Command, BAR4) is kept, as the chipset keeps the rest of PCI
    /// configuration across a reset.
    pub fn reset(&mut self) {
        let fresh = power_on_config();
        let timings: Vec<u8> = (IDETIM..=SIDETIM).map(|at| fresh.u8_at(at)).collect();
        self.config.set_bytes(IDETIM, &timings);
        for c in &mut self.channels {
            c.reset();
        }
    }

    fn drive(&self, slot: IdeSlot) -> &Drive {
        &self.channels[slot.channel()].drives[slot.device()]
    }

    fn drive_mut(&mut self, slot: IdeSlot) -> &mut Drive {
        &mut self.channels[slot.channel()].drives[slot.device()]
    }

    /// Whether channel `channel`'s legacy ports decode (IDETIM bit 15).
    fn decodes(&self, channel: usize) -> bool {
        self.config.u16_at(IDETIM + 2 * channel) & IDETIM_DECODE_ENABLE != 0
    }

    /// The channel and what its devices need to run.
    fn parts(&mut self, channel: usize) -> (&mut Channel, Ctx<'_>) {
        let bus_master = self.config.command() & COMMAND_MASTER != 0;
        let Self { channels, mem, log, .. } = self;
        (&mut channels[channel], Ctx { mem, log, bus_master })
    }

    fn port_read(&mut self, window: Window, offset: u64, data: &mut [u8]) {
        match window {
            Window::Command(c) | Window::Control(c) if !self.decodes(c) => data.fill(0xff),
            Window::Command(c) => {
                let (ch, mut ctx) = self.parts(c);
                ch.read_command_block(offset, data, &mut ctx);
            }
            Window::Control(c) => data.fill(self.channels[c].read_alt_status()),
            Window::BusMaster => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = offset + i as u64;
                    *b = self.channels.get((at / 8) as usize).map_or(0xff, |ch| ch.bm_read(at % 8));
                }
            }
        }
    }

    fn port_write(&mut self, window: Window, offset: u64, data: &[u8]) {
        match window {
            Window::Command(c) | Window::Control(c) if !self.decodes(c) => {}
            Window::Command(c) => {
                let (ch, mut ctx) = self.parts(c);
                ch.write_command_block(offset, data, &mut ctx);
            }
            Window::Control(c) => {
                if let Some(&v) = data.first() {
                    self.channels[c].write_control(v);
                }
            }
            Window::BusMaster => {
                for (i, &b) in data.iter().enumerate() {
                    let at = offset + i as u64;
                    let c = (at / 8) as usize;
                    if c < 2 {
                        let (ch, mut ctx) = self.parts(c);
                        ch.bm_write(at % 8, b, &mut ctx);
                        ch.sync_irq();
                    }
                }
            }
        }
    }
}

impl PciDevice for IdeController {
    fn debug_label(&self) -> String {
        "PIIX3 IDE".to_string()
    }

    fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        // Turning bus mastering on lets a started engine run.
        if self.config.command() & COMMAND_MASTER != 0 {
            for c in 0..2 {
                let (ch, mut ctx) = self.parts(c);
                ch.try_dma(&mut ctx);
                ch.sync_irq();
            }
        }
    }
}

/// Which registers a port device reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Command(usize),
    Control(usize),
    BusMaster,
}

/// One port range of the controller on a bus.
struct IdePort {
    ide: Arc<Mutex<IdeController>>,
    window: Window,
}

impl BusDevice for IdePort {
    fn debug_label(&self) -> String {
        let channel = |c: usize| if c == 0 { "primary" } else { "secondary" };
        match self.window {
            Window::Command(c) => format!("PIIX3 IDE {} command block", channel(c)),
            Window::Control(c) => format!("PIIX3 IDE {} control block", channel(c)),
            Window::BusMaster => "PIIX3 IDE bus master".to_string(),
        }
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.ide.lock().port_read(self.window, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.ide.lock().port_write(self.window, offset, data);
    }
}

#[cfg(any(test, feature = "fuzz"))]
impl IdeController {
    /// A port read as the bus would make it, for tests and fuzzing.
    pub(crate) fn io_read(&mut self, window: u8, offset: u64, data: &mut [u8]) {
        self.port_read(Self::window(window), offset, data);
    }

    /// A port write as the bus would make it, for tests and fuzzing.
    pub(crate) fn io_write(&mut self, window: u8, offset: u64, data: &[u8]) {
        self.port_write(Self::window(window), offset, data);
    }

    /// 0, 1: primary command and control block; 2, 3: secondary; 4: the
    /// bus master.
    fn window(w: u8) -> Window {
        match w % 5 {
            0 => Window::Command(0),
            1 => Window::Control(0),
            2 => Window::Command(1),
            3 => Window::Control(1),
            _ => Window::BusMaster,
        }
    }
}
