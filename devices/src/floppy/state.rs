//! The saved state of the floppy controller, and its checks.
//!
//! The controller keeps all of its guest-visible state in one
//! [`FloppyState`]: registers, the phase and its bytes (a command half
//! written, results half read, the FIFO of a non-DMA transfer with the
//! sector it holds), the per-drive cylinder numbers and pending interrupt
//! statuses, and what each drive position holds. The images' contents are
//! not part of it; what the guest saw of them (the drive type, the disk's
//! format and whether it is writable) is, and a restore in front of other
//! drives is refused.

use persist::{Persist, PersistError};

use super::fdc::Command;
use super::media::{FloppyFormat, FLOPPY_SECTOR_SIZE};
use super::{
    FloppyController, FloppyStats, CONFIG_MASK, DOR_NRESET, DSR_KEPT, PERPENDICULAR_MASK, RATE_MASK, TDR_MASK,
};

/// What a [`PersistError`] of the controller names.
const PART: &str = "82077AA floppy controller";
/// The longest command (READ DATA and WRITE DATA: the opcode and 8 bytes).
pub(crate) const MAX_COMMAND: usize = 9;
/// The longest result (DUMPREG).
pub(crate) const MAX_RESULT: usize = 10;
/// Bytes of one FORMAT TRACK sector ID (C, H, R, N).
pub(crate) const FORMAT_ID_LEN: usize = 4;

/// Where the controller is in a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum FdcPhase {
    /// Held in reset by the DOR.
    Reset,
    /// Waiting for a command byte, or collecting a command's bytes.
    Command,
    /// A non-DMA execution phase: the host moves data through the FIFO.
    Execution,
    /// The host reads the result bytes.
    Result,
}

/// What a data command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DataOp {
    /// READ DATA.
    Read,
    /// WRITE DATA.
    Write,
    /// FORMAT TRACK.
    Format,
}

/// A data command under way: the sector it is at and how it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DataCursor {
    /// The command.
    pub op: DataOp,
    /// The drive (DS1-DS0).
    pub drive: u8,
    /// The physical head (HDS).
    pub head: u8,
    /// Multi-track: go on to head 1 after the last sector of head 0.
    pub multi_track: bool,
    /// An implied seek moved the head (SE in ST0).
    pub seeked: bool,
    /// The sector ID sought: cylinder.
    pub c: u8,
    /// The sector ID sought: head.
    pub h: u8,
    /// The sector ID sought: sector number.
    pub r: u8,
    /// The sector ID sought: size code.
    pub n: u8,
    /// The last sector number of the track (READ, WRITE).
    pub eot: u8,
    /// The fill byte (FORMAT).
    pub fill: u8,
    /// Sectors to format (FORMAT).
    pub sectors: u8,
    /// Sector IDs formatted so far (FORMAT).
    pub done: u8,
}

/// The disk in a drive, as the guest saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MediaState {
    /// The disk's format.
    pub format: FloppyFormat,
    /// Write-protected.
    pub read_only: bool,
}

/// One drive position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FloppyDriveState {
    /// The drive's format; `None`: no drive.
    pub drive: Option<FloppyFormat>,
    /// The disk in it.
    pub media: Option<MediaState>,
    /// The cylinder the head is over.
    pub track: u8,
    /// The sector that passes under the head next (what READ ID finds).
    pub next_sector: u8,
    /// The disk change line: set when a disk leaves the drive (and at
    /// power-on), cleared by a step pulse with a disk in.
    pub disk_changed: bool,
}

/// The saved state of the floppy controller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FloppyState {
    /// Digital output register.
    pub dor: u8,
    /// Tape drive register (bits 1:0).
    pub tdr: u8,
    /// The DSR's precompensation and power-down bits.
    pub dsr: u8,
    /// The data rate (DSR and CCR bits 1:0).
    pub rate: u8,
    /// The phase.
    pub phase: FdcPhase,
    /// The bytes of the command being written.
    pub command: Vec<u8>,
    /// The result bytes.
    pub result: Vec<u8>,
    /// The next result byte to read.
    pub result_pos: u8,
    /// The data command of a non-DMA execution phase.
    pub cursor: Option<DataCursor>,
    /// The FIFO of a non-DMA execution phase: the sector being read, or
    /// the bytes written so far.
    pub fifo: Vec<u8>,
    /// The next FIFO byte a read takes.
    pub fifo_pos: u16,
    /// SPECIFY's bytes: SRT and HUT; HLT and ND.
    pub specify: [u8; 2],
    /// CONFIGURE's EIS, EFIFO, POLL and FIFOTHR.
    pub config: u8,
    /// CONFIGURE's PRETRK.
    pub pretrk: u8,
    /// LOCK: EFIFO, FIFOTHR and PRETRK survive a software reset.
    pub locked: bool,
    /// PERPENDICULAR MODE: D3-D0 (bits 5:2), GAP, WGATE.
    pub perpendicular: u8,
    /// The present cylinder number of each of the four drive numbers.
    pub pcn: [u8; 4],
    /// The ST0 each drive number's pending interrupt reports to SENSE
    /// INTERRUPT STATUS.
    pub pending: [Option<u8>; 4],
    /// The interrupt request (before the DOR's DMA gate).
    pub interrupt: bool,
    /// The last SC (FORMAT) or EOT (READ, WRITE), for DUMPREG.
    pub sc_eot: u8,
    /// Drives A: and B:.
    pub drives: [FloppyDriveState; 2],
    /// The counters.
    pub stats: FloppyStats,
}

impl FloppyController {
    /// The checks of [`Persist::restore`], changing nothing.
    pub fn check_state(&self, s: &FloppyState) -> Result<(), PersistError> {
        for (i, (mine, theirs)) in self.s.drives.iter().zip(&s.drives).enumerate() {
            PersistError::check(mine.drive == theirs.drive && mine.media == theirs.media, PART, "drives", || {
                format!(
                    "drive {}: held {} with {}; the machine has {} with {}",
                    super::media::letter(i),
                    describe_drive(theirs.drive),
                    describe_media(theirs.media),
                    describe_drive(mine.drive),
                    describe_media(mine.media),
                )
            })?;
            if let Some(format) = theirs.drive {
                PersistError::check_max(PART, "track", theirs.track, format.cylinders() - 1)?;
            }
        }
        PersistError::check_max(PART, "rate", s.rate, RATE_MASK)?;
        PersistError::check_max(PART, "tdr", s.tdr, TDR_MASK)?;
        PersistError::check(s.dsr & !DSR_KEPT == 0, PART, "dsr", || {
            format!("is {:#04x}; only the precompensation and power-down bits are kept", s.dsr)
        })?;
        PersistError::check_max(PART, "config", s.config, CONFIG_MASK)?;
        PersistError::check_max(PART, "perpendicular", s.perpendicular, PERPENDICULAR_MASK)?;
        PersistError::check((s.phase == FdcPhase::Reset) == (s.dor & DOR_NRESET == 0), PART, "phase", || {
            format!(
                "is {:?} with the DOR at {:#04x}; the controller is in reset exactly while DOR bit 2 is 0",
                s.phase, s.dor
            )
        })?;
        for (d, p) in s.pending.iter().enumerate() {
            PersistError::check(p.is_none_or(|st0| usize::from(st0 & 3) == d), PART, "pending", || {
                format!("drive {d} holds an interrupt status for drive {}", p.map_or(0, |st0| st0 & 3))
            })?;
        }
        Self::check_command(s)?;
        Self::check_result(s)?;
        Self::check_execution(s)
    }

    fn check_command(s: &FloppyState) -> Result<(), PersistError> {
        let Some(&first) = s.command.first() else { return Ok(()) };
        let ok = s.phase == FdcPhase::Command
            && Command::decode(first).is_some_and(|c| s.command.len() <= c.params() && s.command.len() < MAX_COMMAND);
        PersistError::check(ok, PART, "command", || {
            format!("holds {:02x?} in phase {:?}, which is no command under way", s.command, s.phase)
        })
    }

    fn check_result(s: &FloppyState) -> Result<(), PersistError> {
        let pos = usize::from(s.result_pos);
        let ok = if s.phase == FdcPhase::Result {
            s.result.len() <= MAX_RESULT && pos < s.result.len()
        } else {
            s.result.is_empty() && pos == 0
        };
        PersistError::check(ok, PART, "result", || {
            format!("holds {} bytes, {pos} read, in phase {:?}", s.result.len(), s.phase)
        })
    }

    fn check_execution(s: &FloppyState) -> Result<(), PersistError> {
        let executing = s.phase == FdcPhase::Execution;
        PersistError::check(executing == s.cursor.is_some(), PART, "cursor", || {
            format!(
                "is {:?} in phase {:?}; a data command is under way exactly in the execution phase",
                s.cursor, s.phase
            )
        })?;
        let pos = usize::from(s.fifo_pos);
        let ok = match s.cursor {
            None => s.fifo.is_empty() && pos == 0,
            Some(c) => {
                let fifo = match c.op {
                    DataOp::Read => s.fifo.len() == FLOPPY_SECTOR_SIZE && pos < FLOPPY_SECTOR_SIZE,
                    DataOp::Write => s.fifo.len() < FLOPPY_SECTOR_SIZE && pos == 0,
                    DataOp::Format => s.fifo.len() < FORMAT_ID_LEN && pos == 0 && c.done < c.sectors,
                };
                fifo && usize::from(c.drive) < s.drives.len() && c.head <= 1
            }
        };
        PersistError::check(ok, PART, "fifo", || format!("holds {} bytes, at {pos}, for {:?}", s.fifo.len(), s.cursor))
    }

    /// Loads a state [`FloppyController::check_state`] passed, and drives
    /// the interrupt line to match.
    pub fn load_state(&mut self, s: &FloppyState) {
        self.s = s.clone();
        self.drive_irq();
    }
}

fn describe_drive(d: Option<FloppyFormat>) -> String {
    d.map_or_else(|| "no drive".to_string(), |f| format!("a {f} drive"))
}

fn describe_media(m: Option<MediaState>) -> String {
    match m {
        None => "no disk".to_string(),
        Some(m) => format!("a {} disk{}", m.format, if m.read_only { " (read-only)" } else { "" }),
    }
}

/// Restore checks that each drive position holds what the state says (the
/// same drive type, a disk of the same format and protection or none),
/// that each register holds only the bits it has, and that the phase and
/// its bytes (command, result, FIFO) fit each other; then it loads the
/// state and drives IRQ 6 to match.
impl Persist for FloppyController {
    type State = FloppyState;

    fn save(&self) -> FloppyState {
        self.s.clone()
    }

    fn restore(&mut self, state: &FloppyState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}
