//! A CFI parallel NOR flash with the Intel/Sharp command set, as QEMU's
//! `cfi.pflash01` with a device and bank width of one byte: the flash OVMF
//! keeps its UEFI variable store in.
//!
//! References: Intel "Common Flash Interface (CFI) and Command Sets",
//! application note 646 (the query structure: "QRY" at 0x10, the system
//! interface at 0x1B, the device geometry at 0x27, the primary
//! vendor-specific extended query "PRI" at the address 0x15 gives), and the
//! command set of the Intel 28F008SA datasheet (290429) with the write
//! buffer of the Intel StrataFlash (28F640J3) datasheet:
//!
//! ```text
//! first write   then              effect
//! 0xFF 0x00 0xF0                  read array (0x00 and 0xF0 as QEMU takes them)
//! 0x70                            read status register
//! 0x50                            clear status register, then read array (as QEMU)
//! 0x90                            read identifier: 0 manufacturer 0x89 (Intel), 1 device 0x18,
//!                                 other offsets 0 (the block lock status: unlocked)
//! 0x98                            CFI query
//! 0x10 / 0x40   data              byte program
//! 0x20          0xD0              block erase of the 4 KiB sector holding the 0xD0's address
//! 0xE8          count-1, data.., 0xD0   write to buffer: at most 64 bytes of one aligned 64-byte block
//!
//! status: 7 ready | 5 erase error | 4 program error (4 and 5 both: command sequence error)
//! ```
//!
//! As QEMU, a program stores the data as written (real NOR flash could only
//! clear bits: new = old & data); OVMF programs only bytes it erased before.
//! After a program, an erase or a write to buffer the flash reads its status
//! (0x80) until the guest writes another command. An erase or a write to
//! buffer whose confirm is not 0xD0 is a command sequence error (status
//! 0xB0). A read-only flash refuses program (status 0x90) and erase (0xA0)
//! as QEMU does. A write through to the backing file that fails sets the
//! operation's error bit; the change stays in memory.
//!
//! Reads of 1, 2, 4 or 8 bytes at any offset: in read-array mode they return
//! that many bytes of the contents; in the status modes the status byte in
//! each byte lane; in the identifier and CFI modes each byte lane answers the
//! query of its own address (QEMU's reads wider than the bank width).
//! Writes take the command from their first byte; a program or a
//! write-to-buffer data cycle stores all the written bytes.
//!
//! Not modelled: timing (operations complete at once), erase and program
//! suspend, block locking (0x60), protection registers, chip erase, and the
//! ROM mode QEMU maps the flash in while it reads array ([`Pflash::in_read_array`]
//! tells the machine when it could). A restore does not rewrite the
//! backing file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use persist::{Persist, PersistError};

use crate::bus::BusDevice;
use crate::log_once::{LogOnce, Misuse};

/// The erase block size.
pub const SECTOR_SIZE: u64 = 4096;
/// The largest flash.
pub const MAX_SIZE: u64 = 64 << 20;
/// The write buffer's size, as the CFI table gives it (2^6 at 0x2A).
pub const WRITE_BUFFER_SIZE: usize = 64;
/// The manufacturer code the identifier mode reads at offset 0 (Intel).
pub const MANUFACTURER_ID: u8 = 0x89;
/// The device code the identifier mode reads at offset 1.
pub const DEVICE_ID: u8 = 0x18;

// Commands.
const CMD_READ_ARRAY: u8 = 0xff;
const CMD_READ_ARRAY_QEMU: u8 = 0x00;
const CMD_AMD_RESET: u8 = 0xf0;
const CMD_READ_STATUS: u8 = 0x70;
const CMD_CLEAR_STATUS: u8 = 0x50;
const CMD_READ_ID: u8 = 0x90;
const CMD_CFI_QUERY: u8 = 0x98;
const CMD_PROGRAM: u8 = 0x10;
const CMD_PROGRAM_ALT: u8 = 0x40;
const CMD_ERASE: u8 = 0x20;
const CMD_WRITE_BUFFER: u8 = 0xe8;
const CMD_CONFIRM: u8 = 0xd0;

// Status register bits.
const SR_READY: u8 = 0x80;
const SR_ERASE_ERROR: u8 = 0x20;
const SR_PROGRAM_ERROR: u8 = 0x10;
const SR_SEQUENCE_ERROR: u8 = SR_ERASE_ERROR | SR_PROGRAM_ERROR;
const SR_BITS: u8 = SR_READY | SR_SEQUENCE_ERROR;

/// The CFI query table's length: the primary extended table ends at 0x3E.
const CFI_LEN: usize = 0x3f;
/// Where the primary extended table sits.
const CFI_PRI: u8 = 0x31;

/// What the flash does with the next access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadArray,
    ReadStatus,
    ReadId,
    Cfi,
    /// 0x10/0x40 written: the next write is the data.
    Program,
    /// 0x20 written: the next write must be 0xD0.
    EraseConfirm,
    /// 0xE8 written: the next write is the count less one.
    BufferCount,
    /// Taking the write buffer's data.
    BufferData,
    /// The data is in: the next write must be 0xD0.
    BufferConfirm,
}

impl Mode {
    /// In the order of their numbers in [`PflashState::mode`].
    const ALL: [Mode; 9] = [
        Mode::ReadArray,
        Mode::ReadStatus,
        Mode::ReadId,
        Mode::Cfi,
        Mode::Program,
        Mode::EraseConfirm,
        Mode::BufferCount,
        Mode::BufferData,
        Mode::BufferConfirm,
    ];

    fn from_number(n: u8) -> Option<Mode> {
        Self::ALL.get(usize::from(n)).copied()
    }

    fn number(self) -> u8 {
        self as u8
    }
}

/// Why a flash cannot be made.
#[derive(thiserror::Error, Debug)]
pub enum PflashError {
    /// The image is empty or not made of whole sectors.
    #[error(
        "flash {name}: the image has {size} bytes, not a non-zero multiple of the {SECTOR_SIZE}-byte \
         erase block; pad or trim the image file"
    )]
    NotSectors { name: String, size: u64 },
    /// The image is larger than the flash can be.
    #[error("flash {name}: the image has {size} bytes, more than the largest flash of {MAX_SIZE} bytes (64 MiB)")]
    TooLarge { name: String, size: u64 },
}

/// The flash's state, for save and restore.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PflashState {
    /// 0 read array, 1 read status, 2 read identifier, 3 CFI query,
    /// 4 program (awaiting the data), 5 erase (awaiting the confirm),
    /// 6, 7, 8 write to buffer (awaiting the count, the data, the confirm).
    pub mode: u8,
    /// The status register.
    pub status: u8,
    /// Write to buffer: the data bytes still expected.
    pub buffer_left: u8,
    /// Write to buffer: the offset of the 64-byte block the data goes to.
    pub buffer_base: u64,
    /// Write to buffer: that block with the data taken so far (empty before the first data write).
    pub buffer: Vec<u8>,
    /// The whole flash.
    pub contents: Vec<u8>,
}

/// A CFI flash with the Intel command set; see the module documentation.
pub struct Pflash {
    name: String,
    contents: Vec<u8>,
    backing: Option<File>,
    read_only: bool,
    mode: Mode,
    status: u8,
    buffer_left: u8,
    buffer_base: u64,
    buffer: Vec<u8>,
    cfi: [u8; CFI_LEN],
    log: LogOnce,
    ro_log: LogOnce,
}

impl std::fmt::Debug for Pflash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pflash")
            .field("name", &self.name)
            .field("size", &self.contents.len())
            .field("mode", &self.mode)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Pflash {
    /// A flash of `contents` (a non-zero multiple of [`SECTOR_SIZE`], at most
    /// [`MAX_SIZE`]), in read-array mode with a clear status. Program and
    /// erase write the changed bytes through to `backing` at the same offset;
    /// without one the changes stay in memory. A `read_only` flash refuses
    /// program and erase. `name` is for logs.
    pub fn new(name: String, contents: Vec<u8>, backing: Option<File>, read_only: bool) -> Result<Self, PflashError> {
        let size = contents.len() as u64;
        if size == 0 || !size.is_multiple_of(SECTOR_SIZE) {
            return Err(PflashError::NotSectors { name, size });
        }
        if size > MAX_SIZE {
            return Err(PflashError::TooLarge { name, size });
        }
        Ok(Self {
            name,
            contents,
            backing,
            read_only,
            mode: Mode::ReadArray,
            status: 0,
            buffer_left: 0,
            buffer_base: 0,
            buffer: Vec::new(),
            cfi: cfi_table(size),
            log: LogOnce::new(),
            ro_log: LogOnce::new(),
        })
    }

    /// The whole flash.
    pub fn contents(&self) -> &[u8] {
        &self.contents
    }

    /// The flash's size in bytes.
    pub fn size(&self) -> u64 {
        self.contents.len() as u64
    }

    /// Whether the flash is in read-array mode (reads return contents).
    pub fn in_read_array(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// A machine reset: back to read-array mode, any write buffer dropped;
    /// the contents and the status stay.
    pub fn reset(&mut self) {
        self.buffer.clear();
        self.buffer_left = 0;
        self.buffer_base = 0;
        self.mode = Mode::ReadArray;
    }

    /// Whether an access of `len` bytes at `offset` is one the flash takes; logs the others once.
    fn access_ok(&self, offset: u64, len: usize) -> bool {
        if !matches!(len, 1 | 2 | 4 | 8) {
            if self.log.first(Misuse::AccessSize) {
                tracing::warn!(target: "devices", flash = %self.name, offset, size = len, "pflash: accesses are 1, 2, 4 or 8 bytes; ignored (logged once)");
            }
            return false;
        }
        if offset.checked_add(len as u64).is_none_or(|end| end > self.size()) {
            if self.log.first(Misuse::CrossesEnd) {
                tracing::warn!(target: "devices", flash = %self.name, offset, size = len, "pflash: access past the end of the flash; reads 0xff, writes ignored (logged once)");
            }
            return false;
        }
        true
    }

    /// A command written in one of the read modes.
    fn command(&mut self, offset: u64, cmd: u8) {
        self.mode = match cmd {
            CMD_READ_ARRAY | CMD_READ_ARRAY_QEMU | CMD_AMD_RESET => Mode::ReadArray,
            CMD_CLEAR_STATUS => {
                self.status = 0;
                Mode::ReadArray
            }
            CMD_READ_STATUS => Mode::ReadStatus,
            CMD_READ_ID => Mode::ReadId,
            CMD_CFI_QUERY => Mode::Cfi,
            CMD_PROGRAM | CMD_PROGRAM_ALT => Mode::Program,
            CMD_ERASE => Mode::EraseConfirm,
            CMD_WRITE_BUFFER => {
                self.status |= SR_READY;
                Mode::BufferCount
            }
            _ => {
                if self.log.first(Misuse::Unimplemented) {
                    tracing::warn!(target: "devices", flash = %self.name, offset, cmd, "pflash: unknown command; back to read array (logged once)");
                }
                Mode::ReadArray
            }
        };
    }

    /// An erase or write to buffer not confirmed by 0xD0, or a bad count.
    fn sequence_error(&mut self, offset: u64, value: u8) {
        if self.log.first(Misuse::BadValue) {
            tracing::warn!(target: "devices", flash = %self.name, offset, value, mode = ?self.mode, "pflash: command sequence error (logged once)");
        }
        self.status |= SR_READY | SR_SEQUENCE_ERROR;
        self.end_buffer();
    }

    /// Refuses a program or erase of a read-only flash with `error` in the status.
    fn refuse_read_only(&mut self, offset: u64, error: u8) {
        if self.ro_log.first(Misuse::BadValue) {
            tracing::warn!(target: "devices", flash = %self.name, offset, "pflash: the flash is read-only; program and erase fail (logged once)");
        }
        self.status |= error;
    }

    /// Writes `len` bytes of the contents at `start` through to the backing
    /// file; a failure sets `error` in the status.
    fn write_through(&mut self, start: usize, len: usize, error: u8) {
        let Some(file) = &self.backing else { return };
        if let Err(e) = file.write_all_at(&self.contents[start..start + len], start as u64) {
            if self.log.first(Misuse::OutputError) {
                tracing::warn!(target: "devices", flash = %self.name, offset = start, error = %e, "pflash: writing the backing file failed; the change stays in memory (logged once)");
            }
            self.status |= error;
        }
    }

    fn program(&mut self, offset: u64, data: &[u8]) {
        if self.read_only {
            self.refuse_read_only(offset, SR_PROGRAM_ERROR);
        } else {
            let start = offset as usize;
            self.contents[start..start + data.len()].copy_from_slice(data);
            self.write_through(start, data.len(), SR_PROGRAM_ERROR);
        }
        self.status |= SR_READY;
        self.mode = Mode::ReadStatus;
    }

    fn erase(&mut self, offset: u64) {
        if self.read_only {
            self.refuse_read_only(offset, SR_ERASE_ERROR);
        } else {
            let start = (offset & !(SECTOR_SIZE - 1)) as usize;
            let len = SECTOR_SIZE as usize;
            self.contents[start..start + len].fill(0xff);
            self.write_through(start, len, SR_ERASE_ERROR);
        }
        self.status |= SR_READY;
        self.mode = Mode::ReadStatus;
    }

    fn buffer_count(&mut self, offset: u64, value: u8) {
        let count = usize::from(value) + 1;
        if count > WRITE_BUFFER_SIZE {
            self.sequence_error(offset, value);
            return;
        }
        self.buffer_left = count as u8;
        self.buffer.clear();
        self.mode = Mode::BufferData;
    }

    fn buffer_data(&mut self, offset: u64, data: &[u8]) {
        let window = WRITE_BUFFER_SIZE as u64;
        if self.buffer.is_empty() {
            // The contents are whole sectors, so the aligned block is inside them.
            self.buffer_base = offset & !(window - 1);
            let base = self.buffer_base as usize;
            self.buffer = self.contents[base..base + WRITE_BUFFER_SIZE].to_vec();
        }
        let len = data.len();
        let inside = offset >= self.buffer_base && offset + len as u64 <= self.buffer_base + window;
        if self.read_only {
            self.refuse_read_only(offset, SR_PROGRAM_ERROR);
        } else if !inside || len > usize::from(self.buffer_left) {
            if self.log.first(Misuse::OutOfWindow) {
                tracing::warn!(target: "devices", flash = %self.name, offset, size = len, "pflash: write-to-buffer data outside its 64-byte block or past its count; program error (logged once)");
            }
            self.status |= SR_PROGRAM_ERROR;
        } else {
            let at = (offset - self.buffer_base) as usize;
            self.buffer[at..at + len].copy_from_slice(data);
        }
        self.status |= SR_READY;
        self.buffer_left = self.buffer_left.saturating_sub(len.min(usize::from(u8::MAX)) as u8);
        if self.buffer_left == 0 {
            self.mode = Mode::BufferConfirm;
        }
    }

    fn buffer_confirm(&mut self, offset: u64, cmd: u8) {
        if cmd != CMD_CONFIRM {
            self.sequence_error(offset, cmd);
            return;
        }
        if self.status & SR_PROGRAM_ERROR == 0 && self.buffer.len() == WRITE_BUFFER_SIZE {
            let base = self.buffer_base as usize;
            self.contents[base..base + WRITE_BUFFER_SIZE].copy_from_slice(&self.buffer);
            self.write_through(base, WRITE_BUFFER_SIZE, SR_PROGRAM_ERROR);
        }
        self.status |= SR_READY;
        self.end_buffer();
    }

    /// Drops the write buffer and reads status.
    fn end_buffer(&mut self) {
        self.buffer.clear();
        self.buffer_left = 0;
        self.buffer_base = 0;
        self.mode = Mode::ReadStatus;
    }

    /// The identifier mode's byte at `offset`.
    fn identifier(offset: u64) -> u8 {
        match offset & 0xff {
            0 => MANUFACTURER_ID,
            1 => DEVICE_ID,
            _ => 0,
        }
    }
}

/// The CFI query table of a flash of `size` bytes (application note 646, tables 1-5).
fn cfi_table(size: u64) -> [u8; CFI_LEN] {
    let mut t = [0u8; CFI_LEN];
    t[0x10..0x13].copy_from_slice(b"QRY");
    // Primary command set 0x0001 (Intel/Sharp extended), its table at CFI_PRI;
    // no alternate command set (0x17-0x1A stay 0).
    t[0x13] = 0x01;
    t[0x15] = CFI_PRI;
    // Vcc 2.7-3.6 V (BCD volts and tenths), no Vpp pin (0x1D-0x1E).
    t[0x1b] = 0x27;
    t[0x1c] = 0x36;
    // Typical times: byte program 2^4 us, buffer write 2^7 us, block erase
    // 2^10 ms, no chip erase; the maximum 2^4 times the typical.
    t[0x1f] = 4;
    t[0x20] = 7;
    t[0x21] = 10;
    t[0x23] = 4;
    t[0x24] = 4;
    t[0x25] = 4;
    // Device size 2^n bytes, rounded up to a power of two; interface 0x0000 (x8 asynchronous).
    t[0x27] = size.next_power_of_two().trailing_zeros() as u8;
    t[0x2a] = WRITE_BUFFER_SIZE.trailing_zeros() as u8;
    // One erase block region: (blocks - 1) and the block size / 256.
    t[0x2c] = 1;
    let blocks_less_one = u16::try_from(size / SECTOR_SIZE - 1).unwrap_or(u16::MAX);
    t[0x2d..0x2f].copy_from_slice(&blocks_less_one.to_le_bytes());
    t[0x2f..0x31].copy_from_slice(&((SECTOR_SIZE / 256) as u16).to_le_bytes());
    // The primary extended table, version 1.0: no optional features, no
    // functions after suspend, no block status bits, Vcc optimum 3.3 V, no Vpp.
    let pri = usize::from(CFI_PRI);
    t[pri..pri + 3].copy_from_slice(b"PRI");
    t[pri + 3] = b'1';
    t[pri + 4] = b'0';
    t[0x3d] = 0x33;
    t
}

/// The part name the flash's errors carry.
const PART: &str = "parallel flash";

/// Restore refuses contents of another size than the flash's, an unknown
/// mode, status bits the flash never sets, and a write buffer that does not
/// fit the mode or the flash.
impl Persist for Pflash {
    type State = PflashState;

    fn save(&self) -> PflashState {
        PflashState {
            mode: self.mode.number(),
            status: self.status,
            buffer_left: self.buffer_left,
            buffer_base: self.buffer_base,
            buffer: self.buffer.clone(),
            contents: self.contents.clone(),
        }
    }

    fn restore(&mut self, state: &PflashState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl Pflash {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(&self, state: &PflashState) -> Result<(), PersistError> {
        PersistError::check_len(PART, "contents", state.contents.len(), self.contents.len())?;
        let mode = Mode::from_number(state.mode);
        PersistError::check(mode.is_some(), PART, "mode", || format!("is {}, not a mode (0 to 8)", state.mode))?;
        PersistError::check(state.status & !SR_BITS == 0, PART, "status", || {
            format!("is {:#04x}, with bits outside {SR_BITS:#04x} set", state.status)
        })?;
        PersistError::check_max(PART, "buffer_left", usize::from(state.buffer_left), WRITE_BUFFER_SIZE)?;
        let buffering = matches!(mode, Some(Mode::BufferData | Mode::BufferConfirm));
        PersistError::check(
            state.buffer.is_empty() || (buffering && state.buffer.len() == WRITE_BUFFER_SIZE),
            PART,
            "buffer",
            || format!("has length {} in mode {}", state.buffer.len(), state.mode),
        )?;
        let base_ok = state.buffer_base.is_multiple_of(WRITE_BUFFER_SIZE as u64) && state.buffer_base < self.size();
        PersistError::check(base_ok, PART, "buffer_base", || {
            format!("is {:#x}, not a 64-byte block of the flash", state.buffer_base)
        })?;
        PersistError::check(state.buffer_left == 0 || mode == Some(Mode::BufferData), PART, "buffer_left", || {
            format!("is {} in mode {}", state.buffer_left, state.mode)
        })
    }

    /// Loads a state [`Pflash::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &PflashState) {
        self.mode = Mode::from_number(state.mode).unwrap_or(Mode::ReadArray);
        self.status = state.status;
        self.buffer_left = state.buffer_left;
        self.buffer_base = state.buffer_base;
        self.buffer.clone_from(&state.buffer);
        self.contents.copy_from_slice(&state.contents);
    }
}

impl BusDevice for Pflash {
    fn debug_label(&self) -> String {
        format!("pflash ({})", self.name)
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        match self.mode {
            Mode::ReadArray => {
                let start = offset as usize;
                data.copy_from_slice(&self.contents[start..start + data.len()]);
            }
            Mode::ReadId => {
                for (at, byte) in (offset..).zip(data.iter_mut()) {
                    *byte = Self::identifier(at);
                }
            }
            Mode::Cfi => {
                for (at, byte) in (offset..).zip(data.iter_mut()) {
                    *byte = usize::try_from(at).ok().and_then(|i| self.cfi.get(i)).copied().unwrap_or(0);
                }
            }
            _ => data.fill(self.status),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !self.access_ok(offset, data.len()) {
            return;
        }
        let value = data[0];
        match self.mode {
            Mode::Program => self.program(offset, data),
            Mode::EraseConfirm if value == CMD_CONFIRM => self.erase(offset),
            Mode::EraseConfirm => self.sequence_error(offset, value),
            Mode::BufferCount => self.buffer_count(offset, value),
            Mode::BufferData => self.buffer_data(offset, data),
            Mode::BufferConfirm => self.buffer_confirm(offset, value),
            Mode::ReadArray | Mode::ReadStatus | Mode::ReadId | Mode::Cfi => self.command(offset, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in the temporary directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(tag: &str, contents: &[u8]) -> Self {
            let path = std::env::temp_dir().join(format!("ferrovm-pflash-{}-{tag}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
        fn open(&self) -> File {
            std::fs::OpenOptions::new().read(true).write(true).open(&self.0).unwrap()
        }
        fn bytes(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Two sectors: the first counts up, the second is erased.
    fn image() -> Vec<u8> {
        let mut v: Vec<u8> = (0..SECTOR_SIZE).map(|i| (i % 251) as u8 + 1).collect();
        v.resize(2 * SECTOR_SIZE as usize, 0xff);
        v
    }

    fn flash(read_only: bool) -> Pflash {
        Pflash::new("test".to_string(), image(), None, read_only).unwrap()
    }

    fn rb(f: &mut Pflash, off: u64) -> u8 {
        let mut b = [0u8];
        f.read(off, &mut b);
        b[0]
    }

    #[test]
    fn ovmf_probe_detects_flash() {
        let mut f = flash(false);
        let x = 0x30;
        let v = rb(&mut f, x);
        assert!(![0x50, 0x70, 0x00].contains(&v));
        f.write(x, &[CMD_CLEAR_STATUS]);
        assert_eq!(rb(&mut f, x), v, "after clear status the flash reads array");
        f.write(x, &[CMD_READ_STATUS]);
        assert_eq!(rb(&mut f, x), 0x00, "CLEARED_ARRAY_STATUS");
        assert!(!f.in_read_array());
        f.write(x, &[CMD_READ_ARRAY]);
        assert_eq!(rb(&mut f, x), v);
        assert!(f.in_read_array());
    }

    #[test]
    fn ovmf_byte_program_writes_through_to_the_backing_file() {
        let file = TempFile::new("program", &image());
        let mut f = Pflash::new("vars".to_string(), image(), Some(file.open()), false).unwrap();
        let base = SECTOR_SIZE + 0x10;
        for (i, byte) in b"VAR".iter().enumerate() {
            f.write(base + i as u64, &[CMD_PROGRAM]);
            f.write(base + i as u64, &[*byte]);
            assert_eq!(rb(&mut f, base), SR_READY, "reads status after a program");
        }
        f.write(base, &[CMD_READ_ARRAY]);
        assert_eq!(&f.contents()[base as usize..base as usize + 3], b"VAR");
        let on_disk = file.bytes();
        assert_eq!(&on_disk[base as usize..base as usize + 3], b"VAR");
        assert_eq!(on_disk, f.contents());
        // 0x40 with a wide data write stores all its bytes, as written.
        f.write(8, &[CMD_PROGRAM_ALT]);
        f.write(8, &0x1122_3344u32.to_le_bytes());
        f.write(8, &[CMD_READ_ARRAY]);
        let mut w = [0u8; 4];
        f.read(8, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0x1122_3344);
        assert_eq!(&file.bytes()[8..12], &w);
    }

    #[test]
    fn block_erase_needs_the_confirm_and_writes_the_sector_through() {
        let file = TempFile::new("erase", &image());
        let mut f = Pflash::new("vars".to_string(), image(), Some(file.open()), false).unwrap();
        f.write(0x123, &[CMD_ERASE]);
        assert_eq!(rb(&mut f, 0x10), 0x00, "nothing erased before the confirm: status reads");
        assert_eq!(f.contents()[0x10], 0x11);
        f.write(0x123, &[CMD_CONFIRM]);
        assert_eq!(rb(&mut f, 0), SR_READY);
        f.write(0x123, &[CMD_READ_ARRAY]);
        assert!(f.contents()[..SECTOR_SIZE as usize].iter().all(|&b| b == 0xff));
        assert_eq!(file.bytes(), f.contents());
        let mut q = [0u8; 8];
        f.read(0x100, &mut q);
        assert_eq!(q, [0xff; 8]);
    }

    #[test]
    fn erase_without_confirm_is_a_sequence_error() {
        let mut f = flash(false);
        f.write(0, &[CMD_ERASE]);
        f.write(0, &[0x42]);
        assert_eq!(rb(&mut f, 0), SR_READY | SR_SEQUENCE_ERROR);
        assert_eq!(f.contents(), &image()[..], "nothing erased");
        f.write(0, &[CMD_CLEAR_STATUS]);
        f.write(0, &[CMD_READ_STATUS]);
        assert_eq!(rb(&mut f, 0), 0);
    }

    #[test]
    fn read_only_flash_refuses_program_and_erase() {
        let mut f = flash(true);
        f.write(4, &[CMD_PROGRAM]);
        f.write(4, &[0]);
        assert_eq!(rb(&mut f, 4), SR_READY | SR_PROGRAM_ERROR);
        f.write(4, &[CMD_ERASE]);
        f.write(4, &[CMD_CONFIRM]);
        assert_eq!(rb(&mut f, 4), SR_READY | SR_SEQUENCE_ERROR);
        f.write(0, &[CMD_CLEAR_STATUS]);
        f.write(0, &[CMD_ERASE]);
        f.write(0, &[CMD_CONFIRM]);
        assert_eq!(rb(&mut f, 4), SR_READY | SR_ERASE_ERROR);
        f.write(0, &[CMD_READ_ARRAY]);
        assert_eq!(f.contents(), &image()[..]);
        assert_eq!(rb(&mut f, 4), 5);
    }

    #[test]
    fn identifier_and_cfi_query() {
        let mut f = flash(false);
        f.write(0, &[CMD_READ_ID]);
        let mut w = [0u8; 4];
        f.read(0, &mut w);
        assert_eq!(w, [MANUFACTURER_ID, DEVICE_ID, 0, 0]);
        assert_eq!(rb(&mut f, 0x101), DEVICE_ID);
        f.write(0, &[CMD_CFI_QUERY]);
        let mut q = [0u8; 4];
        f.read(0x10, &mut q);
        assert_eq!(&q, b"QRY\x01");
        assert_eq!(rb(&mut f, 0x15), CFI_PRI);
        assert_eq!(rb(&mut f, 0x27), 13, "8 KiB = 2^13");
        assert_eq!((rb(&mut f, 0x28), rb(&mut f, 0x2a), rb(&mut f, 0x2c)), (0, 6, 1));
        assert_eq!([0x2d, 0x2e, 0x2f, 0x30].map(|o| rb(&mut f, o)), [1, 0, 0x10, 0]);
        let mut pri = [0u8; 8];
        f.read(0x31, &mut pri);
        assert_eq!(&pri[..5], b"PRI10");
        assert_eq!(rb(&mut f, 0x1000), 0, "past the table");
        f.write(0, &[CMD_READ_ARRAY]);
        assert_eq!(rb(&mut f, 0x10), 0x11);
        // A size that is not a power of two rounds up.
        let g = Pflash::new("g".into(), vec![0xff; 0x84000], None, false).unwrap();
        assert_eq!(g.cfi[0x27], 20);
        assert_eq!(g.cfi[0x2d..0x2f], [0x83, 0]);
    }

    #[test]
    fn write_to_buffer_programs_on_confirm() {
        let file = TempFile::new("buffer", &image());
        let mut f = Pflash::new("vars".to_string(), image(), Some(file.open()), false).unwrap();
        f.write(0x40, &[CMD_WRITE_BUFFER]);
        assert_eq!(rb(&mut f, 0x40), SR_READY, "buffer available");
        f.write(0x40, &[5]);
        f.write(0x42, &[0xaa, 0xbb, 0xcc, 0xdd]);
        f.write(0x46, &[0xee, 0x99]);
        assert_eq!(f.contents()[0x42], image()[0x42], "nothing before the confirm");
        f.write(0x40, &[CMD_CONFIRM]);
        f.write(0, &[CMD_READ_ARRAY]);
        assert_eq!(&f.contents()[0x42..0x48], &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x99]);
        assert_eq!(file.bytes(), f.contents());
        // A count above the buffer, data outside the block, a bad confirm.
        f.write(0, &[CMD_WRITE_BUFFER]);
        f.write(0, &[64]);
        assert_eq!(rb(&mut f, 0), SR_READY | SR_SEQUENCE_ERROR);
        f.write(0, &[CMD_CLEAR_STATUS]);
        f.write(0, &[CMD_WRITE_BUFFER]);
        f.write(0, &[2]);
        f.write(0x3e, &[1, 2]);
        assert_eq!(rb(&mut f, 0), SR_READY);
        f.write(0x40, &[3]);
        assert_eq!(rb(&mut f, 0), SR_READY | SR_PROGRAM_ERROR, "crosses the 64-byte block");
        f.write(0, &[CMD_CONFIRM]);
        f.write(0, &[CMD_CLEAR_STATUS]);
        f.write(0, &[CMD_WRITE_BUFFER]);
        f.write(0, &[0]);
        f.write(0, &[9]);
        f.write(0, &[CMD_READ_ARRAY]);
        assert_eq!(rb(&mut f, 0), SR_READY | SR_SEQUENCE_ERROR);
        f.write(0, &[CMD_READ_ARRAY]);
        assert_eq!(&f.contents()[..0x40], &image()[..0x40], "no aborted buffer reached the flash");
        assert_eq!(file.bytes(), f.contents());
    }

    #[test]
    fn wide_odd_and_out_of_range_accesses() {
        let mut f = flash(false);
        let mut q = [0u8; 8];
        f.read(3, &mut q);
        assert_eq!(&q, &image()[3..11]);
        f.write(0, &[CMD_READ_STATUS, 0, 0, 0]);
        f.write(0, &[CMD_PROGRAM]);
        f.write(0, &[0x00]);
        f.read(0, &mut q);
        assert_eq!(q, [SR_READY; 8], "the status in each byte lane");
        f.write(0, &(u16::from(CMD_READ_ARRAY)).to_le_bytes());
        assert!(f.in_read_array());
        let end = f.size();
        let mut w = [0u8; 4];
        f.read(end - 2, &mut w);
        assert_eq!(w, [0xff; 4]);
        f.read(u64::MAX - 1, &mut w);
        assert_eq!(w, [0xff; 4]);
        let mut three = [0u8; 3];
        f.read(0, &mut three);
        assert_eq!(three, [0xff; 3]);
        f.read(0, &mut []);
        f.write(end, &[CMD_ERASE]);
        f.write(0, &[CMD_ERASE, 0, 0]);
        f.write(0, &[]);
        assert!(f.in_read_array(), "ignored writes change no mode");
        f.write(0, &[0x33]);
        assert!(f.in_read_array(), "an unknown command reads array");
        assert_eq!(f.debug_label(), "pflash (test)");
        assert!(format!("{f:?}").contains("Pflash"));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for size in [0usize, 100, 4097] {
            let e = Pflash::new("x".into(), vec![0; size], None, false).unwrap_err();
            assert!(matches!(e, PflashError::NotSectors { .. }), "{e}");
        }
        let e = Pflash::new("x".into(), vec![0; MAX_SIZE as usize + 4096], None, false).unwrap_err();
        assert!(e.to_string().contains("64 MiB"), "{e}");
        assert!(Pflash::new("x".into(), vec![0; MAX_SIZE as usize], None, false).is_ok());
    }

    #[test]
    fn the_state_round_trips_with_the_contents() {
        let mut f = flash(false);
        f.write(0, &[CMD_ERASE]);
        f.write(0, &[CMD_CONFIRM]);
        f.write(0x40, &[CMD_WRITE_BUFFER]);
        f.write(0x40, &[3]);
        f.write(0x40, &[7, 7]);
        let mut fresh = flash(false);
        let state = persist::assert_round_trip(&f, &mut fresh);
        assert_eq!((state.mode, state.buffer_left, state.buffer.len()), (7, 2, WRITE_BUFFER_SIZE));
        for g in [&mut f, &mut fresh] {
            g.write(0x42, &[8, 8]);
            g.write(0x40, &[CMD_CONFIRM]);
            g.write(0, &[CMD_READ_ARRAY]);
        }
        assert_eq!(fresh.contents(), f.contents());
        assert_eq!(&fresh.contents()[0x3f..0x45], &[0xff, 7, 7, 8, 8, 0xff]);
    }

    /// A corruption of a state, and the field whose check must refuse it.
    type Corruption = (&'static str, fn(&mut PflashState));

    #[test]
    fn corrupt_states_are_refused_field_by_field() {
        let mut f = flash(false);
        f.write(0, &[CMD_READ_STATUS]);
        let good = f.save();
        let cases: [Corruption; 7] = [
            ("contents", |s| s.contents.push(0)),
            ("mode", |s| s.mode = 9),
            ("status", |s| s.status = 0x08),
            ("buffer_left", |s| s.buffer_left = 65),
            ("buffer", |s| s.buffer = vec![0; WRITE_BUFFER_SIZE]),
            ("buffer_base", |s| s.buffer_base = 3),
            ("buffer_left", |s| s.buffer_left = 1),
        ];
        for (field, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let e = persist::assert_refused(&mut f, &bad);
            assert_eq!(e.field, field, "{e}");
        }
        assert!(!f.in_read_array());
    }
}
