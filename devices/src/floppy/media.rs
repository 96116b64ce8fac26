//! Floppy formats and what a drive holds.
//!
//! A disk is a flat image of 512-byte sectors in the order the PC BIOS
//! numbers them: cylinder, then head, then sector (1-based). Its format
//! comes from its size; each format has the data rate the controller must
//! be set to (DSR/CCR) to read it, and the CMOS drive type byte a BIOS
//! reads for a drive of that kind.
//!
//! ```text
//! format   size (bytes)  cylinders heads sectors  rate (kbps)      CMOS type
//! 360 KB       368 640          40     2       9  300 or 250 (1, 2)  1
//! 1.2 MB     1 228 800          80     2      15  500 (0)            2
//! 720 KB       737 280          80     2       9  250 (2)            3
//! 1.44 MB    1 474 560          80     2      18  500 (0)            4
//! 2.88 MB    2 949 120          80     2      36  1000 (3)           5
//! ```
//!
//! A 360 KB disk reads at either of its rates: SeaBIOS programs 300 kbps
//! for its type 1 (the rate of a 1.2 MB drive turning at 360 rpm), Linux
//! 250 kbps (a 360 KB drive).

use std::io;

use crate::block::BlockBackend;

/// Bytes in a sector of every supported format (size code N = 2).
pub const FLOPPY_SECTOR_SIZE: usize = 512;
/// The size code (N) of a 512-byte sector.
pub(crate) const SIZE_CODE_512: u8 = 2;

/// The floppy formats a drive takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum FloppyFormat {
    /// 5.25" double density, 360 KB: 40 cylinders, 2 heads, 9 sectors.
    Kb360,
    /// 3.5" double density, 720 KB: 80 cylinders, 2 heads, 9 sectors.
    Kb720,
    /// 5.25" high density, 1.2 MB: 80 cylinders, 2 heads, 15 sectors.
    Kb1200,
    /// 3.5" high density, 1.44 MB: 80 cylinders, 2 heads, 18 sectors.
    Kb1440,
    /// 3.5" extra density, 2.88 MB: 80 cylinders, 2 heads, 36 sectors.
    Kb2880,
}

impl FloppyFormat {
    /// Every format, smallest first.
    pub const ALL: [FloppyFormat; 5] =
        [FloppyFormat::Kb360, FloppyFormat::Kb720, FloppyFormat::Kb1200, FloppyFormat::Kb1440, FloppyFormat::Kb2880];

    /// The format of an image of `bytes` bytes, if it is one.
    pub fn from_size(bytes: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.size() == bytes)
    }

    /// Cylinders (tracks per side).
    pub fn cylinders(self) -> u8 {
        match self {
            FloppyFormat::Kb360 => 40,
            _ => 80,
        }
    }

    /// Heads (sides).
    pub fn heads(self) -> u8 {
        2
    }

    /// Sectors per track.
    pub fn sectors_per_track(self) -> u8 {
        match self {
            FloppyFormat::Kb360 | FloppyFormat::Kb720 => 9,
            FloppyFormat::Kb1200 => 15,
            FloppyFormat::Kb1440 => 18,
            FloppyFormat::Kb2880 => 36,
        }
    }

    /// The image size in bytes.
    pub fn size(self) -> u64 {
        u64::from(self.cylinders())
            * u64::from(self.heads())
            * u64::from(self.sectors_per_track())
            * FLOPPY_SECTOR_SIZE as u64
    }

    /// The CMOS drive type (register 0x10, one nibble per drive) of a
    /// drive for this format: 1 360 KB, 2 1.2 MB, 3 720 KB, 4 1.44 MB,
    /// 5 2.88 MB.
    pub fn cmos_type(self) -> u8 {
        match self {
            FloppyFormat::Kb360 => 1,
            FloppyFormat::Kb1200 => 2,
            FloppyFormat::Kb720 => 3,
            FloppyFormat::Kb1440 => 4,
            FloppyFormat::Kb2880 => 5,
        }
    }

    /// Whether the controller reads the disk at data rate `rate` (the DSR
    /// and CCR code: 0 500 kbps, 1 300 kbps, 2 250 kbps, 3 1 Mbps).
    pub(crate) fn reads_at(self, rate: u8) -> bool {
        match self {
            FloppyFormat::Kb360 => rate == 1 || rate == 2,
            FloppyFormat::Kb720 => rate == 2,
            FloppyFormat::Kb1200 | FloppyFormat::Kb1440 => rate == 0,
            FloppyFormat::Kb2880 => rate == 3,
        }
    }

    /// Whether a drive for this format takes a `disk`: its own format,
    /// and on 3.5" drives the lower densities (a 2.88 MB drive reads 1.44
    /// MB and 720 KB disks, a 1.44 MB drive 720 KB ones). 5.25" drives take
    /// their own format only: a 360 KB disk in a 1.2 MB drive would need
    /// double stepping.
    pub fn drive_takes(self, disk: FloppyFormat) -> bool {
        match self {
            FloppyFormat::Kb2880 => matches!(disk, FloppyFormat::Kb2880 | FloppyFormat::Kb1440 | FloppyFormat::Kb720),
            FloppyFormat::Kb1440 => matches!(disk, FloppyFormat::Kb1440 | FloppyFormat::Kb720),
            other => other == disk,
        }
    }
}

impl std::fmt::Display for FloppyFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FloppyFormat::Kb360 => "360 KB",
            FloppyFormat::Kb720 => "720 KB",
            FloppyFormat::Kb1200 => "1.2 MB",
            FloppyFormat::Kb1440 => "1.44 MB",
            FloppyFormat::Kb2880 => "2.88 MB",
        })
    }
}

/// What to put in a drive position of the controller.
pub enum FloppyDrive {
    /// No drive: the position does not answer (its CMOS nibble is 0).
    Absent,
    /// A drive for `FloppyFormat` disks, with no disk in it.
    Empty(FloppyFormat),
    /// A drive with a disk in it; the drive is of the disk's format, which
    /// comes from the image's size.
    Disk(Box<dyn BlockBackend>),
}

impl std::fmt::Debug for FloppyDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FloppyDrive::Absent => f.write_str("Absent"),
            FloppyDrive::Empty(format) => write!(f, "Empty({format})"),
            FloppyDrive::Disk(d) => write!(f, "Disk({} bytes, read-only: {})", d.size(), d.read_only()),
        }
    }
}

/// Why a drive or a disk was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FloppyError {
    /// The image's size is not that of a supported format.
    #[error(
        "the floppy image for drive {drive}: is {size} bytes; a floppy image must be 368640 (360 KB), \
         737280 (720 KB), 1228800 (1.2 MB), 1474560 (1.44 MB) or 2949120 (2.88 MB) bytes"
    )]
    ImageSize {
        /// The drive letter.
        drive: char,
        /// The image's size.
        size: u64,
    },
    /// The drive does not take disks of that format.
    #[error("drive {drive}: is a {drive_format} drive; it does not take a {disk} disk")]
    Incompatible {
        /// The drive letter.
        drive: char,
        /// The drive's format.
        drive_format: FloppyFormat,
        /// The disk's format.
        disk: FloppyFormat,
    },
    /// There is no drive at that position.
    #[error("there is no floppy drive {drive}: (the controller has drives A: and B:, as configured)")]
    NoDrive {
        /// The drive letter (A:, B:, or the position's letter past them).
        drive: char,
    },
}

/// The letter of drive position `index`.
pub(crate) fn letter(index: usize) -> char {
    char::from(b'A'.saturating_add(index.min(25) as u8))
}

/// The format of `image` for drive `index`, or why it has none.
pub(crate) fn image_format(index: usize, image: &dyn BlockBackend) -> Result<FloppyFormat, FloppyError> {
    let size = image.size();
    FloppyFormat::from_size(size).ok_or(FloppyError::ImageSize { drive: letter(index), size })
}

/// Reads sector data at `offset` of `image`, checked against its size.
pub(crate) fn read_image(image: &mut dyn BlockBackend, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    check_range(image, offset, buf.len())?;
    image.read_at(buf, offset)
}

/// Writes sector data at `offset` of `image`, checked against its size.
pub(crate) fn write_image(image: &mut dyn BlockBackend, offset: u64, data: &[u8]) -> io::Result<()> {
    check_range(image, offset, data.len())?;
    image.write_at(data, offset)
}

fn check_range(image: &dyn BlockBackend, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= image.size() => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "an access past the end of the image")),
    }
}
