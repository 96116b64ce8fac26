//! The 82077AA floppy disk controller with two drives (A: and B:), on the
//! PC/AT's ports, IRQ 6 and DMA channel 2.
//!
//! Datasheet: Intel 82077AA "CHMOS Single-Chip Floppy Disk Controller"
//! (290166): the registers (section 2), the command set (Table 5-1), the
//! status registers ST0-ST3 (Tables 5-2 to 5-5), the data transfer
//! commands and their result values (5.1), SEEK, RECALIBRATE and SENSE
//! INTERRUPT STATUS (5.2), CONFIGURE, DUMPREG, LOCK, PERPENDICULAR MODE
//! (5.3), reset and drive polling (7.0).
//!
//! ```text
//! port   read                          write
//! 0x3F0  SRA: PS/2 mode only (0xFF)    -
//! 0x3F1  SRB: PS/2 mode only (0xFF)    -
//! 0x3F2  DOR                           DOR: 7:4 motor enable D-A | 3 DMA gate (INT and DRQ
//!                                           reach the bus) | 2 nRESET | 1:0 drive select
//! 0x3F3  TDR (bits 1:0)                TDR: tape select (no tape drive is there)
//! 0x3F4  MSR: 7 RQM | 6 DIO |          DSR: 7 software reset | 6 power down |
//!        5 NDMA | 4 CB | 3:0 seeking          4:2 precompensation | 1:0 data rate
//! 0x3F5  FIFO (result, data)           FIFO (command, data)
//! 0x3F6  (IDE: not decoded here)
//! 0x3F7  DIR: 7 disk changed           CCR: 1:0 data rate (500, 300, 250 kbps, 1 Mbps)
//!        (6:0 float, 0x7F)
//!
//! ST0 7:6 IC (00 normal, 01 abnormal, 10 invalid, 11 polling) | 5 SE | 4 EC | 2 H | 1:0 DS
//! ST1 7 EN end of cylinder | 5 DE data error | 4 OR overrun | 2 ND no data | 1 NW not writable | 0 MA
//! ST2 6 CM | 5 DD data error in data field | 4 WC wrong cylinder | 1 BC bad cylinder | 0 MD
//! ST3 6 WP | 5 RDY (1) | 4 T0 | 3 two-sided (1) | 2 HD | 1:0 DS
//! ```
//!
//! Commands: READ DATA, WRITE DATA (multi-sector, multi-track, ending at
//! terminal count or with EN past EOT), READ ID, FORMAT TRACK, SEEK,
//! RELATIVE SEEK, RECALIBRATE, SENSE INTERRUPT STATUS, SENSE DRIVE STATUS,
//! SPECIFY, VERSION (0x90), CONFIGURE (implied seek is honoured), DUMPREG,
//! LOCK, PERPENDICULAR MODE. The execution phase runs over DMA channel 2
//! (the SPECIFY ND bit clear) or through the FIFO (non-DMA: MSR shows RQM,
//! DIO and NDMA). The other command codes (READ TRACK, VERIFY, the deleted
//! data and SCAN commands, the 82078's) answer invalid (ST0 0x80), each
//! logged once by name. PART ID (0x18) belongs to the 82078: the 82077AA
//! answers it invalid too, which Linux reads as a revised 82077AA.
//!
//! The disk behind a drive is a flat image ([`FloppyFormat`] gives the
//! layouts). The controller reads the sector IDs a standard format has
//! (C the cylinder the head is over, H the head, R 1 to the sectors per
//! track, N 2) only at the disk's data rate and in MFM, as the hardware
//! does: Linux and SeaBIOS find the format of a disk by trying rates.
//!
//! Model choices:
//! - Commands run at once, in the port access that completes them: seeks
//!   and reads take no time (the MSR's drive busy bits stay 0), and the
//!   interrupt follows the command byte.
//!   A DMA transfer moves a sector per call into the 8237; a channel that
//!   does not move (masked, or the DOR's DMA gate shut) is an overrun, as
//!   the hardware's missing DACK is.
//! - In non-DMA mode the FIFO holds a whole sector and is refilled at once,
//!   so INT rises at the start of the execution phase and stays up into
//!   the result phase. The host is never late: no overrun in non-DMA mode.
//! - SENSE INTERRUPT STATUS answers the pending statuses lowest drive
//!   first and lowers INT each time, so a host that senses one drive after
//!   a reset (SeaBIOS) still sees its next interrupt as an edge.
//! - The drive accessed is the one the command selects (DS1-DS0); the DOR
//!   select lines pick the drive whose disk change line DIR shows.
//! - Motors, head load and step timings (SPECIFY), the FIFO threshold and
//!   precompensation are kept for the guest and otherwise ignored.
//! - FORMAT TRACK writes the fill byte into the sectors whose IDs a flat
//!   image can hold (the standard layout, any interleave); other IDs are
//!   logged once and skipped.

mod fdc;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod media;
mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use parking_lot::Mutex;

use crate::block::BlockBackend;
use crate::bus::{BusDevice, SharedDevice};
use crate::irq::IrqLine;
use crate::legacy::dma8237::IsaDma;
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::{BusAlias, BusMapping};

#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_fdc_commands;
pub use media::{FloppyDrive, FloppyError, FloppyFormat, FLOPPY_SECTOR_SIZE};
pub use state::{DataCursor, DataOp, FdcPhase, FloppyDriveState, FloppyState, MediaState};

/// First port of the controller (SRA).
pub const FDC_PORT: u16 = 0x3f0;
/// The ports from 0x3F0 to 0x3F5; 0x3F6 belongs to the IDE controller.
pub const FDC_PORT_LEN: u64 = 6;
/// The DIR (read) and CCR (write) port.
pub const FDC_DIR_PORT: u16 = 0x3f7;
/// The ISA IRQ of the controller.
pub const FDC_IRQ: u32 = 6;
/// The DMA channel of the controller (first 8237).
pub const FDC_DMA_CHANNEL: usize = 2;
/// The CMOS register with the drive types ([`FloppyController::cmos_type`]).
pub const CMOS_FLOPPY_TYPES: u8 = 0x10;
/// Drive positions: A: and B:.
pub const FLOPPY_DRIVES: usize = 2;

// Register offsets from 0x3F0.
const REG_SRA: u64 = 0;
const REG_SRB: u64 = 1;
const REG_DOR: u64 = 2;
const REG_TDR: u64 = 3;
const REG_MSR_DSR: u64 = 4;
const REG_FIFO: u64 = 5;
const REG_DIR_CCR: u64 = 7;

// DOR.
const DOR_SELECT: u8 = 0b0000_0011;
pub(crate) const DOR_NRESET: u8 = 0b0000_0100;
const DOR_DMA_GATE: u8 = 0b0000_1000;
// MSR.
const MSR_RQM: u8 = 0b1000_0000;
const MSR_DIO: u8 = 0b0100_0000;
const MSR_NDMA: u8 = 0b0010_0000;
const MSR_CB: u8 = 0b0001_0000;
// DSR.
const DSR_SW_RESET: u8 = 0b1000_0000;
/// The DSR bits kept: power down and precompensation.
pub(crate) const DSR_KEPT: u8 = 0b0101_1100;
/// Data rate bits of the DSR and CCR.
pub(crate) const RATE_MASK: u8 = 0b0000_0011;
/// The data rate after a hardware reset: 250 kbps.
const RATE_250K: u8 = 0b10;
// TDR.
pub(crate) const TDR_MASK: u8 = 0b0000_0011;
/// TDR bits 7:2 float in PC-AT mode.
const TDR_FLOATING: u8 = !TDR_MASK;
// DIR.
const DIR_DSKCHG: u8 = 0b1000_0000;
/// DIR bits 6:0 float in PC-AT mode.
const DIR_FLOATING: u8 = 0b0111_1111;
/// SRA and SRB exist in PS/2 mode only: the bus floats.
const FLOATING: u8 = 0xff;
// CONFIGURE.
pub(crate) const CONFIG_EIS: u8 = 0b0100_0000;
pub(crate) const CONFIG_EFIFO: u8 = 0b0010_0000;
pub(crate) const CONFIG_FIFOTHR: u8 = 0b0000_1111;
/// The CONFIGURE bits: EIS, EFIFO, POLL, FIFOTHR.
pub(crate) const CONFIG_MASK: u8 = 0b0111_1111;
/// PERPENDICULAR MODE's bits kept: D3-D0, GAP, WGATE.
pub(crate) const PERPENDICULAR_MASK: u8 = 0b0011_1111;

/// Counters of the controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FloppyStats {
    /// READ DATA commands.
    pub reads: u64,
    /// Bytes read from the images.
    pub read_bytes: u64,
    /// WRITE DATA and FORMAT TRACK commands.
    pub writes: u64,
    /// Bytes written to the images.
    pub write_bytes: u64,
    /// Data commands (and READ IDs) that ended abnormally.
    pub errors: u64,
}

/// What the controller logs once: invalid command codes, and each kind of
/// trouble.
#[derive(Debug, Default)]
pub(crate) struct FdcLog {
    invalid: [u64; 4],
    misuse: LogOnce,
}

impl FdcLog {
    pub(crate) fn invalid(&mut self, code: u8, name: &str) {
        let (word, bit) = (usize::from(code >> 6), code & 63);
        if self.invalid[word] & (1 << bit) == 0 {
            self.invalid[word] |= 1 << bit;
            tracing::warn!(target: "devices", "82077AA floppy: command {code:#04x} ({name}) is not implemented; answered invalid (logged once)");
        }
    }

    pub(crate) fn io_error(&self, what: impl FnOnce() -> String) {
        if self.misuse.first(Misuse::OutputError) {
            tracing::warn!(target: "devices", "82077AA floppy: the image failed: {}; the command ends with a data error (logged once)", what());
        }
    }

    pub(crate) fn format_layout(&self, what: impl FnOnce() -> String) {
        if self.misuse.first(Misuse::Unimplemented) {
            tracing::warn!(target: "devices", "82077AA floppy: FORMAT TRACK {}; a flat image keeps the standard layout only, so that sector is skipped (logged once)", what());
        }
    }
}

/// The registers at power-on, or after a hardware reset, for drives in
/// `drives`: held in reset, 250 kbps, DMA mode, FIFO disabled, no lock.
fn power_on_state(drives: [FloppyDriveState; FLOPPY_DRIVES], stats: FloppyStats) -> FloppyState {
    FloppyState {
        dor: 0,
        tdr: 0,
        dsr: 0,
        rate: RATE_250K,
        phase: FdcPhase::Reset,
        command: Vec::new(),
        result: Vec::new(),
        result_pos: 0,
        cursor: None,
        fifo: Vec::new(),
        fifo_pos: 0,
        specify: [0; 2],
        config: CONFIG_EFIFO,
        pretrk: 0,
        locked: false,
        perpendicular: 0,
        pcn: [0; 4],
        pending: [None; 4],
        interrupt: false,
        sc_eot: 0,
        drives,
        stats,
    }
}

/// The 82077AA and its drives.
pub struct FloppyController {
    s: FloppyState,
    /// The disks in drives A: and B:.
    disks: [Option<Box<dyn BlockBackend>>; FLOPPY_DRIVES],
    irq: Arc<dyn IrqLine>,
    /// The level IRQ 6 is driven to.
    irq_level: bool,
    dma: Arc<Mutex<IsaDma>>,
    log: FdcLog,
}

impl std::fmt::Debug for FloppyController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FloppyController")
            .field("drives", &self.s.drives)
            .field("phase", &self.s.phase)
            .finish_non_exhaustive()
    }
}

impl FloppyController {
    /// The controller with `drives` at A: and B:, its interrupt line (ISA
    /// IRQ 6, [`FDC_IRQ`]) and the DMA controllers it moves data through
    /// (channel 2, [`FDC_DMA_CHANNEL`]). It powers on held in reset (DOR
    /// 0), as the hardware does, until the guest sets DOR bit 2; every
    /// drive's disk change line is set.
    ///
    /// # Errors
    /// An image whose size is not that of a [`FloppyFormat`].
    pub fn new(
        drives: [FloppyDrive; FLOPPY_DRIVES],
        irq: Arc<dyn IrqLine>,
        dma: Arc<Mutex<IsaDma>>,
    ) -> Result<Self, FloppyError> {
        let mut states = Vec::with_capacity(FLOPPY_DRIVES);
        let mut disks: [Option<Box<dyn BlockBackend>>; FLOPPY_DRIVES] = [None, None];
        for (i, d) in drives.into_iter().enumerate() {
            let (drive, media) = match d {
                FloppyDrive::Absent => (None, None),
                FloppyDrive::Empty(format) => (Some(format), None),
                FloppyDrive::Disk(image) => {
                    let format = media::image_format(i, image.as_ref())?;
                    let media = MediaState { format, read_only: image.read_only() };
                    disks[i] = Some(image);
                    (Some(format), Some(media))
                }
            };
            states.push(FloppyDriveState { drive, media, track: 0, next_sector: 1, disk_changed: true });
        }
        let drives = [states[0], states[1]];
        let mut fdc = Self {
            s: power_on_state(drives, FloppyStats::default()),
            disks,
            irq,
            irq_level: false,
            dma,
            log: FdcLog::default(),
        };
        fdc.drive_irq();
        Ok(fdc)
    }

    /// The ranges to register on the port bus: 0x3F0-0x3F5 and 0x3F7
    /// (0x3F6 is the IDE controller's).
    pub fn bus_mappings(this: &Arc<Mutex<Self>>) -> Vec<BusMapping> {
        let dev: SharedDevice = this.clone();
        vec![
            BusMapping::pio(u64::from(FDC_PORT), FDC_PORT_LEN, Arc::clone(&dev)),
            BusMapping::pio(u64::from(FDC_DIR_PORT), 1, BusAlias::shared(dev, REG_DIR_CCR)),
        ]
    }

    /// The CMOS byte at [`CMOS_FLOPPY_TYPES`] (0x10) for these drives: A:'s
    /// type in bits 7:4, B:'s in bits 3:0 (0 no drive, then
    /// [`FloppyFormat::cmos_type`]). SeaBIOS finds the drives by it.
    pub fn cmos_type(&self) -> u8 {
        let nibble = |d: &FloppyDriveState| d.drive.map_or(0, FloppyFormat::cmos_type);
        nibble(&self.s.drives[0]) << 4 | nibble(&self.s.drives[1])
    }

    /// The floppy bits of the CMOS equipment byte (0x14) for these
    /// drives, to be ORed into it: bit 0 when any drive is there, bits
    /// 7:6 the number of drives minus one.
    pub fn cmos_equipment(&self) -> u8 {
        let count = self.s.drives.iter().filter(|d| d.drive.is_some()).count() as u8;
        match count {
            0 => 0,
            n => (n - 1) << 6 | 1,
        }
    }

    /// Puts `image` into drive `drive` (0 A:, 1 B:; `None` empties it) and
    /// returns the disk that was in. The disk change line goes up until
    /// the guest steps the head with a disk in.
    ///
    /// # Errors
    /// No drive there, or an image of a size or format the drive does not
    /// take (the image is dropped).
    pub fn change_media(
        &mut self,
        drive: usize,
        image: Option<Box<dyn BlockBackend>>,
    ) -> Result<Option<Box<dyn BlockBackend>>, FloppyError> {
        let no_drive = FloppyError::NoDrive { drive: media::letter(drive) };
        let Some(format) = self.s.drives.get(drive).ok_or(no_drive.clone())?.drive else { return Err(no_drive) };
        let media = match &image {
            None => None,
            Some(img) => {
                let disk = media::image_format(drive, img.as_ref())?;
                if !format.drive_takes(disk) {
                    return Err(FloppyError::Incompatible { drive: media::letter(drive), drive_format: format, disk });
                }
                Some(MediaState { format: disk, read_only: img.read_only() })
            }
        };
        let d = &mut self.s.drives[drive];
        d.media = media;
        d.disk_changed = true;
        d.next_sector = 1;
        Ok(std::mem::replace(&mut self.disks[drive], image))
    }

    /// Empties drive `drive`: [`FloppyController::change_media`] with no disk.
    pub fn eject(&mut self, drive: usize) -> Result<Option<Box<dyn BlockBackend>>, FloppyError> {
        self.change_media(drive, None)
    }

    /// The format of drive `drive`'s drive, `None` where there is none.
    pub fn drive_format(&self, drive: usize) -> Option<FloppyFormat> {
        self.s.drives.get(drive).and_then(|d| d.drive)
    }

    /// The format of the disk in drive `drive`, `None` when it is empty.
    pub fn media_format(&self, drive: usize) -> Option<FloppyFormat> {
        self.s.drives.get(drive).and_then(|d| d.media).map(|m| m.format)
    }

    /// The counters.
    pub fn stats(&self) -> FloppyStats {
        self.s.stats
    }

    /// A hardware reset (the RESET pin): the controller is held in reset
    /// (DOR 0), every register back to its power-on value, LOCK included.
    /// The drives keep their disks, head positions and change lines.
    pub fn reset(&mut self) {
        self.s = power_on_state(self.s.drives, self.s.stats);
        self.sync_irq();
    }

    /// The level IRQ 6 should be at: the interrupt request, through the
    /// DOR's DMA gate (PC-AT mode).
    fn irq_wanted(&self) -> bool {
        self.s.interrupt && self.s.dor & DOR_DMA_GATE != 0
    }

    /// Drives IRQ 6 to the level the state asks for, if it changed.
    pub(crate) fn sync_irq(&mut self) {
        let level = self.irq_wanted();
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Drives IRQ 6 to the state's level whatever it was (after a restore).
    fn drive_irq(&mut self) {
        self.irq_level = self.irq_wanted();
        self.irq.set_level(self.irq_level);
    }

    /// The main status register.
    fn msr(&self) -> u8 {
        match self.s.phase {
            FdcPhase::Reset => 0,
            FdcPhase::Command if self.s.command.is_empty() => MSR_RQM,
            FdcPhase::Command => MSR_RQM | MSR_CB,
            FdcPhase::Execution => {
                let dio = match self.s.cursor {
                    Some(c) if c.op == DataOp::Read => MSR_DIO,
                    _ => 0,
                };
                MSR_RQM | MSR_NDMA | MSR_CB | dio
            }
            FdcPhase::Result => MSR_RQM | MSR_DIO | MSR_CB,
        }
    }

    /// The digital input register: the disk change line of the drive the
    /// DOR selects.
    fn dir(&self) -> u8 {
        let selected = usize::from(self.s.dor & DOR_SELECT);
        let changed = self.s.drives.get(selected).is_some_and(|d| d.drive.is_some() && d.disk_changed);
        DIR_FLOATING | if changed { DIR_DSKCHG } else { 0 }
    }

    fn write_dor(&mut self, value: u8) {
        let was_reset = self.s.dor & DOR_NRESET == 0;
        let now_reset = value & DOR_NRESET == 0;
        self.s.dor = value;
        if now_reset && !was_reset {
            self.software_reset();
            self.s.phase = FdcPhase::Reset;
        } else if was_reset && !now_reset {
            self.leave_reset();
        }
    }

    fn write_dsr(&mut self, value: u8) {
        self.s.rate = value & RATE_MASK;
        self.s.dsr = value & DSR_KEPT;
        if value & DSR_SW_RESET != 0 {
            self.software_reset();
            if self.s.dor & DOR_NRESET == 0 {
                self.s.phase = FdcPhase::Reset;
            } else {
                self.leave_reset();
            }
        }
    }

    /// One byte read at `offset` from 0x3F0.
    fn read_reg(&mut self, offset: u64) -> u8 {
        match offset {
            REG_SRA | REG_SRB => FLOATING,
            REG_DOR => self.s.dor,
            REG_TDR => TDR_FLOATING | self.s.tdr,
            REG_MSR_DSR => self.msr(),
            REG_FIFO => self.read_fifo(),
            REG_DIR_CCR => self.dir(),
            _ => FLOATING,
        }
    }

    /// One byte written at `offset` from 0x3F0.
    fn write_reg(&mut self, offset: u64, value: u8) {
        match offset {
            REG_DOR => self.write_dor(value),
            REG_TDR => self.s.tdr = value & TDR_MASK,
            REG_MSR_DSR => self.write_dsr(value),
            REG_FIFO => self.write_fifo(value),
            REG_DIR_CCR => self.s.rate = value & RATE_MASK,
            _ => {}
        }
    }
}

/// Each byte of a wider access goes to the next register, as the ISA bus
/// splits an access to an 8-bit device.
impl BusDevice for FloppyController {
    fn debug_label(&self) -> String {
        "82077AA floppy controller".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_reg(offset.saturating_add(i as u64));
        }
        self.sync_irq();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            self.write_reg(offset.saturating_add(i as u64), v);
        }
        self.sync_irq();
    }
}
