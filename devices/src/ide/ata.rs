//! The ATA command set of a hard disk, and what a packet device answers to
//! the ATA commands every device takes.
//!
//! Reference: ATA8-ACS (T13/1699-D), the command descriptions of IDENTIFY
//! DEVICE (the words filled here), READ/WRITE DMA, MULTIPLE and SECTORS
//! and their EXT forms, READ VERIFY SECTORS, FLUSH CACHE, SET FEATURES
//! (the transfer mode codes), SET MULTIPLE MODE, CHECK POWER MODE and
//! EXECUTE DEVICE DIAGNOSTIC; ATA/ATAPI-6 for INITIALIZE DEVICE PARAMETERS
//! and the signatures a reset leaves.
//!
//! ```text
//! 28-bit LBA   LBA 27:24 = Device 3:0 | 23:16 LBA high | 15:8 mid | 7:0 low; count 0 = 256
//! 48-bit LBA   47:40, 39:32, 31:24 = the previous high, mid, low writes; count 0 = 65536
//! CHS          cylinder = high:mid, head = Device 3:0, sector = low (from 1)
//! ```
//!
//! Model choices: the disk has a volatile write cache that is on at
//! power-on, and FLUSH CACHE flushes the image ([`crate::block::BlockBackend::flush`]);
//! with the cache off every write command is flushed before it completes.
//! A read the image fails ends the command with UNC, a failed write or
//! flush with ABRT (and DF for the flush). A command whose sectors lie past
//! the end of the disk fails with IDNF before the image is touched; a write
//! to a read-only image is aborted. After a read or write the LBA registers
//! hold the last sector moved, or the sector that failed.

use crate::block::SECTOR_SIZE;

use super::bmdma::{DmaEnd, PrdCursor};
use super::drive::{
    disk_offset, read_image, AddrMode, DmaJob, Drive, Geometry, Media, PioNext, DEV_LBA, DMA_CHUNK_SECTORS, ERR_ABRT,
    ERR_IDNF, ERR_UNC, ST_DF,
};
use super::Ctx;

/// ATA command codes.
pub(crate) mod cmd {
    pub(crate) const NOP: u8 = 0x00;
    pub(crate) const DEVICE_RESET: u8 = 0x08;
    pub(crate) const RECALIBRATE_FIRST: u8 = 0x10;
    pub(crate) const RECALIBRATE_LAST: u8 = 0x1f;
    pub(crate) const READ_SECTORS: u8 = 0x20;
    pub(crate) const READ_SECTORS_NO_RETRY: u8 = 0x21;
    pub(crate) const READ_SECTORS_EXT: u8 = 0x24;
    pub(crate) const READ_DMA_EXT: u8 = 0x25;
    pub(crate) const READ_MULTIPLE_EXT: u8 = 0x29;
    pub(crate) const WRITE_SECTORS: u8 = 0x30;
    pub(crate) const WRITE_SECTORS_NO_RETRY: u8 = 0x31;
    pub(crate) const WRITE_SECTORS_EXT: u8 = 0x34;
    pub(crate) const WRITE_DMA_EXT: u8 = 0x35;
    pub(crate) const WRITE_MULTIPLE_EXT: u8 = 0x39;
    pub(crate) const READ_VERIFY: u8 = 0x40;
    pub(crate) const READ_VERIFY_NO_RETRY: u8 = 0x41;
    pub(crate) const READ_VERIFY_EXT: u8 = 0x42;
    pub(crate) const SEEK_FIRST: u8 = 0x70;
    pub(crate) const SEEK_LAST: u8 = 0x7f;
    pub(crate) const EXECUTE_DEVICE_DIAGNOSTIC: u8 = 0x90;
    pub(crate) const INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
    pub(crate) const PACKET: u8 = 0xa0;
    pub(crate) const IDENTIFY_PACKET_DEVICE: u8 = 0xa1;
    pub(crate) const READ_MULTIPLE: u8 = 0xc4;
    pub(crate) const WRITE_MULTIPLE: u8 = 0xc5;
    pub(crate) const SET_MULTIPLE_MODE: u8 = 0xc6;
    pub(crate) const READ_DMA: u8 = 0xc8;
    pub(crate) const READ_DMA_NO_RETRY: u8 = 0xc9;
    pub(crate) const WRITE_DMA: u8 = 0xca;
    pub(crate) const WRITE_DMA_NO_RETRY: u8 = 0xcb;
    pub(crate) const STANDBY_IMMEDIATE: u8 = 0xe0;
    pub(crate) const IDLE_IMMEDIATE: u8 = 0xe1;
    pub(crate) const STANDBY: u8 = 0xe2;
    pub(crate) const IDLE: u8 = 0xe3;
    pub(crate) const CHECK_POWER_MODE: u8 = 0xe5;
    pub(crate) const FLUSH_CACHE: u8 = 0xe7;
    pub(crate) const FLUSH_CACHE_EXT: u8 = 0xea;
    pub(crate) const IDENTIFY_DEVICE: u8 = 0xec;
    pub(crate) const SET_FEATURES: u8 = 0xef;
}

/// The name of ATA command `code`, for logs.
pub(crate) fn command_name(code: u8) -> &'static str {
    match code {
        cmd::NOP => "NOP",
        0x06 => "DATA SET MANAGEMENT",
        cmd::DEVICE_RESET => "DEVICE RESET",
        cmd::RECALIBRATE_FIRST..=cmd::RECALIBRATE_LAST => "RECALIBRATE",
        cmd::READ_SECTORS | cmd::READ_SECTORS_NO_RETRY => "READ SECTORS",
        cmd::READ_SECTORS_EXT => "READ SECTORS EXT",
        cmd::READ_DMA_EXT => "READ DMA EXT",
        0x26 => "READ DMA QUEUED EXT",
        0x27 => "READ NATIVE MAX ADDRESS EXT",
        cmd::READ_MULTIPLE_EXT => "READ MULTIPLE EXT",
        0x2b => "READ STREAM DMA EXT",
        0x2f => "READ LOG EXT",
        cmd::WRITE_SECTORS | cmd::WRITE_SECTORS_NO_RETRY => "WRITE SECTORS",
        cmd::WRITE_SECTORS_EXT => "WRITE SECTORS EXT",
        cmd::WRITE_DMA_EXT => "WRITE DMA EXT",
        0x36 => "WRITE DMA QUEUED EXT",
        0x37 => "SET MAX ADDRESS EXT",
        cmd::WRITE_MULTIPLE_EXT => "WRITE MULTIPLE EXT",
        0x3d => "WRITE DMA FUA EXT",
        0x3f => "WRITE LOG EXT",
        cmd::READ_VERIFY | cmd::READ_VERIFY_NO_RETRY => "READ VERIFY SECTORS",
        cmd::READ_VERIFY_EXT => "READ VERIFY SECTORS EXT",
        0x45 => "WRITE UNCORRECTABLE EXT",
        0x47 => "READ LOG DMA EXT",
        0x51 => "CONFIGURE STREAM",
        0x57 => "WRITE LOG DMA EXT",
        0x5b => "TRUSTED NON-DATA",
        0x5c | 0x5d => "TRUSTED RECEIVE",
        0x5e | 0x5f => "TRUSTED SEND",
        0x60 => "READ FPDMA QUEUED",
        0x61 => "WRITE FPDMA QUEUED",
        cmd::SEEK_FIRST..=cmd::SEEK_LAST => "SEEK",
        0x87 => "CFA TRANSLATE SECTOR",
        cmd::EXECUTE_DEVICE_DIAGNOSTIC => "EXECUTE DEVICE DIAGNOSTIC",
        cmd::INITIALIZE_DEVICE_PARAMETERS => "INITIALIZE DEVICE PARAMETERS",
        0x92 => "DOWNLOAD MICROCODE",
        cmd::PACKET => "PACKET",
        cmd::IDENTIFY_PACKET_DEVICE => "IDENTIFY PACKET DEVICE",
        0xa2 => "SERVICE",
        0xb0 => "SMART",
        0xb1 => "DEVICE CONFIGURATION",
        0xc0 => "CFA ERASE SECTORS",
        cmd::READ_MULTIPLE => "READ MULTIPLE",
        cmd::WRITE_MULTIPLE => "WRITE MULTIPLE",
        cmd::SET_MULTIPLE_MODE => "SET MULTIPLE MODE",
        0xc7 => "READ DMA QUEUED",
        cmd::READ_DMA | cmd::READ_DMA_NO_RETRY => "READ DMA",
        cmd::WRITE_DMA | cmd::WRITE_DMA_NO_RETRY => "WRITE DMA",
        0xcc => "WRITE DMA QUEUED",
        0xcd => "CFA WRITE MULTIPLE WITHOUT ERASE",
        0xce => "WRITE MULTIPLE FUA EXT",
        0xd1 => "CHECK MEDIA CARD TYPE",
        0xda => "GET MEDIA STATUS",
        0xde => "MEDIA LOCK",
        0xdf => "MEDIA UNLOCK",
        cmd::STANDBY_IMMEDIATE => "STANDBY IMMEDIATE",
        cmd::IDLE_IMMEDIATE => "IDLE IMMEDIATE",
        cmd::STANDBY => "STANDBY",
        cmd::IDLE => "IDLE",
        0xe4 => "READ BUFFER",
        cmd::CHECK_POWER_MODE => "CHECK POWER MODE",
        0xe6 => "SLEEP",
        cmd::FLUSH_CACHE => "FLUSH CACHE",
        0xe8 => "WRITE BUFFER",
        cmd::FLUSH_CACHE_EXT => "FLUSH CACHE EXT",
        cmd::IDENTIFY_DEVICE => "IDENTIFY DEVICE",
        0xed => "MEDIA EJECT",
        cmd::SET_FEATURES => "SET FEATURES",
        0xf1 => "SECURITY SET PASSWORD",
        0xf2 => "SECURITY UNLOCK",
        0xf3 => "SECURITY ERASE PREPARE",
        0xf4 => "SECURITY ERASE UNIT",
        0xf5 => "SECURITY FREEZE LOCK",
        0xf6 => "SECURITY DISABLE PASSWORD",
        0xf8 => "READ NATIVE MAX ADDRESS",
        0xf9 => "SET MAX ADDRESS",
        _ => "unknown",
    }
}

/// The largest READ/WRITE MULTIPLE block (IDENTIFY word 47).
pub(crate) const MAX_MULTIPLE: u8 = 16;
/// Firmware revision and model strings of IDENTIFY.
pub(crate) const FIRMWARE: &str = "1.0";
const DISK_MODEL: &str = "FERROVM HARDDISK";

// SET FEATURES subcommands (ATA8-ACS, SET FEATURES).
const SF_ENABLE_WRITE_CACHE: u8 = 0x02;
const SF_TRANSFER_MODE: u8 = 0x03;
const SF_DISABLE_READ_LOOK_AHEAD: u8 = 0x55;
const SF_DISABLE_REVERTING: u8 = 0x66;
const SF_DISABLE_WRITE_CACHE: u8 = 0x82;
const SF_ENABLE_READ_LOOK_AHEAD: u8 = 0xaa;
const SF_ENABLE_REVERTING: u8 = 0xcc;

/// The name of SET FEATURES subcommand `code`, for logs.
pub(crate) fn feature_name(code: u8) -> &'static str {
    match code {
        0x05 => "enable advanced power management",
        0x06 => "enable power-up in standby",
        0x07 => "power-up in standby spin-up",
        0x10 => "enable SATA feature",
        0x42 => "enable automatic acoustic management",
        0x85 => "disable advanced power management",
        0x86 => "disable power-up in standby",
        0x90 => "disable SATA feature",
        0xc2 => "disable automatic acoustic management",
        _ => "unknown",
    }
}

// IDENTIFY word 49 (capabilities) and the fixed values of other words.
const CAP_DMA: u16 = 1 << 8;
const CAP_LBA: u16 = 1 << 9;
const CAP_IORDY: u16 = 1 << 11;
/// Word 53: words 54-58, 64-70 and 88 are valid.
const FIELDS_VALID: u16 = 0x0007;
/// Word 63 and 88: multiword DMA 0-2 and Ultra DMA 0-5 supported.
const MWDMA_SUPPORTED: u16 = 0x0007;
const UDMA_SUPPORTED: u16 = 0x003f;
/// Word 64: PIO modes 3 and 4.
const PIO_ADVANCED: u16 = 0x0003;
/// Words 65-68: the fastest cycle times, in ns.
const CYCLE_NS: u16 = 120;
/// Word 80: ATA/ATAPI-4 to ATA8-ACS.
const MAJOR_VERSION: u16 = 0x01f0;
/// Word 82/85: write cache (5), power management (3).
const CMDSET_WRITE_CACHE: u16 = 1 << 5;
const CMDSET_POWER: u16 = 1 << 3;
/// Word 83/86: FLUSH CACHE EXT (13), FLUSH CACHE (12), 48-bit addresses (10).
const CMDSET2: u16 = (1 << 13) | (1 << 12) | (1 << 10);
/// Words 83, 84, 87: bit 14 set, bit 15 clear, as the words are valid.
const WORD_VALID: u16 = 1 << 14;
/// Word 93 of device 0 (bit 0 set, number by jumper, diagnostics passed)
/// and device 1 (bit 8 set, number by jumper, PDIAG- asserted), both with
/// bit 14 set and an 80-conductor cable (bit 13). SeaBIOS takes device 0's
/// value ANDed with DF61h equal to 4041h as "device 1 absent": these are not.
const RESET_RESULT: [u16; 2] = [0x600b, 0x6b00];

/// Writes `s` into `count` IDENTIFY words from `first`: two ASCII
/// characters a word, the first in the high byte, padded with spaces;
/// characters outside printable ASCII become `_`.
pub(crate) fn put_string(words: &mut [u16; 256], first: usize, count: usize, s: &str) {
    let mut chars =
        s.chars().map(|c| if (' '..='~').contains(&c) { c as u8 } else { b'_' }).chain(std::iter::repeat(b' '));
    for w in words.iter_mut().skip(first).take(count) {
        let hi = chars.next().unwrap_or(b' ');
        let lo = chars.next().unwrap_or(b' ');
        *w = u16::from_be_bytes([hi, lo]);
    }
}

/// The 512 bytes of IDENTIFY data, with the checksum of word 255: A5h in
/// the low byte and a high byte that makes all 512 bytes sum to zero.
pub(crate) fn identify_bytes(mut words: [u16; 256]) -> Vec<u8> {
    words[255] = 0x00a5;
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let sum = bytes[..511].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    bytes[511] = sum.wrapping_neg();
    bytes
}

/// The selected-mode bits of words 63 and 88 for `dma_mode`.
pub(crate) fn dma_mode_words(dma_mode: u8) -> (u16, u16) {
    match dma_mode {
        0x20..=0x22 => (MWDMA_SUPPORTED | 1 << (8 + (dma_mode & 7)), UDMA_SUPPORTED),
        0x40..=0x45 => (MWDMA_SUPPORTED, UDMA_SUPPORTED | 1 << (8 + (dma_mode & 7))),
        _ => (MWDMA_SUPPORTED, UDMA_SUPPORTED),
    }
}

/// Fills the words both kinds of device share: transfer modes and timings,
/// version, reset result.
pub(crate) fn common_identify_words(w: &mut [u16; 256], dma_mode: u8, device: usize) {
    w[49] = CAP_IORDY | CAP_LBA | CAP_DMA;
    w[53] = FIELDS_VALID;
    let (w63, w88) = dma_mode_words(dma_mode);
    w[63] = w63;
    w[64] = PIO_ADVANCED;
    for t in &mut w[65..=68] {
        *t = CYCLE_NS;
    }
    w[80] = MAJOR_VERSION;
    w[88] = w88;
    w[93] = RESET_RESULT[device & 1];
}

/// Whether SET FEATURES 03h may select transfer mode `code`.
pub(crate) fn valid_transfer_mode(code: u8) -> bool {
    matches!(code, 0x00 | 0x01 | 0x08..=0x0c | 0x20..=0x22 | 0x40..=0x45)
}

impl Drive {
    /// Runs ATA command `code` on a disk.
    pub(crate) fn ata_command(&mut self, code: u8, ctx: &mut Ctx<'_>) {
        match code {
            cmd::READ_SECTORS | cmd::READ_SECTORS_NO_RETRY => self.pio_read(false, false, ctx),
            cmd::READ_SECTORS_EXT => self.pio_read(true, false, ctx),
            cmd::READ_MULTIPLE => self.pio_read(false, true, ctx),
            cmd::READ_MULTIPLE_EXT => self.pio_read(true, true, ctx),
            cmd::WRITE_SECTORS | cmd::WRITE_SECTORS_NO_RETRY => self.pio_write(false, false, ctx),
            cmd::WRITE_SECTORS_EXT => self.pio_write(true, false, ctx),
            cmd::WRITE_MULTIPLE => self.pio_write(false, true, ctx),
            cmd::WRITE_MULTIPLE_EXT => self.pio_write(true, true, ctx),
            cmd::READ_DMA | cmd::READ_DMA_NO_RETRY => self.dma_command(false, false, ctx),
            cmd::READ_DMA_EXT => self.dma_command(true, false, ctx),
            cmd::WRITE_DMA | cmd::WRITE_DMA_NO_RETRY => self.dma_command(false, true, ctx),
            cmd::WRITE_DMA_EXT => self.dma_command(true, true, ctx),
            cmd::READ_VERIFY | cmd::READ_VERIFY_NO_RETRY => self.read_verify(false, ctx),
            cmd::READ_VERIFY_EXT => self.read_verify(true, ctx),
            cmd::FLUSH_CACHE | cmd::FLUSH_CACHE_EXT => self.flush(ctx),
            cmd::IDENTIFY_DEVICE => {
                self.buf = self.identify_device();
                self.start_pio_in(self.buf.len(), PioNext::Done, true);
            }
            cmd::SET_FEATURES => self.set_features(ctx),
            cmd::SET_MULTIPLE_MODE => {
                let n = self.regs.count;
                if n == 0 || (n.is_power_of_two() && n <= MAX_MULTIPLE) {
                    self.settings.multiple = n;
                    self.complete(true);
                } else {
                    self.abort();
                }
            }
            cmd::INITIALIZE_DEVICE_PARAMETERS => self.initialize_device_parameters(),
            cmd::RECALIBRATE_FIRST..=cmd::RECALIBRATE_LAST => self.complete(true),
            cmd::SEEK_FIRST..=cmd::SEEK_LAST => match self.address(false) {
                Ok(_) => self.complete(true),
                Err(e) => self.fail(e),
            },
            cmd::CHECK_POWER_MODE | cmd::IDLE | cmd::IDLE_IMMEDIATE | cmd::STANDBY | cmd::STANDBY_IMMEDIATE => {
                self.power_command(code);
            }
            // Probes every driver sends a disk: a disk has no packet
            // interface, and NOP always aborts.
            cmd::NOP | cmd::DEVICE_RESET | cmd::PACKET | cmd::IDENTIFY_PACKET_DEVICE => self.abort(),
            other => {
                ctx.log.ata_command(self.label(), other);
                self.abort();
            }
        }
    }

    /// CHECK POWER MODE, IDLE (IMMEDIATE) and STANDBY (IMMEDIATE).
    pub(crate) fn power_command(&mut self, code: u8) {
        match code {
            cmd::CHECK_POWER_MODE => self.regs.count = if self.settings.standby { 0x00 } else { 0xff },
            cmd::STANDBY | cmd::STANDBY_IMMEDIATE => self.settings.standby = true,
            _ => self.settings.standby = false,
        }
        self.complete(true);
    }

    /// SET FEATURES, for disks and packet devices.
    pub(crate) fn set_features(&mut self, ctx: &mut Ctx<'_>) {
        let disk = matches!(self.media, Media::Disk(_));
        match self.regs.features {
            SF_ENABLE_WRITE_CACHE if disk => self.settings.write_cache = true,
            SF_DISABLE_WRITE_CACHE if disk => self.settings.write_cache = false,
            SF_TRANSFER_MODE => {
                let code = self.regs.count;
                if !valid_transfer_mode(code) {
                    return self.abort();
                }
                match code {
                    0x00 | 0x01 => self.settings.pio_mode = 0,
                    0x08..=0x0c => self.settings.pio_mode = code & 7,
                    _ => self.settings.dma_mode = code,
                }
            }
            SF_ENABLE_READ_LOOK_AHEAD | SF_DISABLE_READ_LOOK_AHEAD | SF_ENABLE_REVERTING | SF_DISABLE_REVERTING => {}
            other => {
                ctx.log.set_features(other);
                return self.abort();
            }
        }
        self.complete(true);
    }

    fn disk_sectors(&self) -> u64 {
        match &self.media {
            Media::Disk(d) => d.sectors,
            _ => 0,
        }
    }

    /// The first sector, sector count and addressing of the command in the
    /// task file; IDNF if a sector lies outside the disk.
    pub(crate) fn address(&self, ext: bool) -> Result<(u64, u64, AddrMode), u8> {
        let r = &self.regs;
        let (lba, count, mode) = if ext {
            let lba = u64::from_le_bytes([
                r.lba_low,
                r.lba_mid,
                r.lba_high,
                r.hob_lba_low,
                r.hob_lba_mid,
                r.hob_lba_high,
                0,
                0,
            ]);
            let count = match u16::from_le_bytes([r.count, r.hob_count]) {
                0 => 65536,
                n => u64::from(n),
            };
            (lba, count, AddrMode::Lba48)
        } else {
            let count = if r.count == 0 { 256 } else { u64::from(r.count) };
            if r.device & DEV_LBA != 0 {
                let lba = u64::from_le_bytes([r.lba_low, r.lba_mid, r.lba_high, r.device & 0x0f, 0, 0, 0, 0]);
                (lba, count, AddrMode::Lba28)
            } else {
                let g = self.settings.geometry;
                let (heads, spt) = (u64::from(g.heads), u64::from(g.sectors));
                let cylinder = u64::from(u16::from_le_bytes([r.lba_mid, r.lba_high]));
                let head = u64::from(r.device & 0x0f);
                let sector = u64::from(r.lba_low);
                if sector == 0 || sector > spt || head >= heads {
                    return Err(ERR_IDNF);
                }
                ((cylinder * heads + head) * spt + sector - 1, count, AddrMode::Chs)
            }
        };
        match lba.checked_add(count) {
            Some(end) if end <= self.disk_sectors() => Ok((lba, count, mode)),
            _ => Err(ERR_IDNF),
        }
    }

    /// Reports sector `lba` in the task file, addressed as `mode`.
    pub(crate) fn set_address(&mut self, lba: u64, mode: AddrMode) {
        let r = &mut self.regs;
        let b = lba.to_le_bytes();
        match mode {
            AddrMode::Lba48 => {
                (r.lba_low, r.lba_mid, r.lba_high) = (b[0], b[1], b[2]);
                (r.hob_lba_low, r.hob_lba_mid, r.hob_lba_high) = (b[3], b[4], b[5]);
            }
            AddrMode::Lba28 => {
                (r.lba_low, r.lba_mid, r.lba_high) = (b[0], b[1], b[2]);
                r.device = (r.device & 0xf0) | (b[3] & 0x0f);
            }
            AddrMode::Chs => {
                let g = self.settings.geometry;
                let per_cylinder = u64::from(g.heads) * u64::from(g.sectors);
                if per_cylinder == 0 {
                    return;
                }
                let cylinder = (lba / per_cylinder).min(0xffff) as u16;
                let rest = lba % per_cylinder;
                let [low, high] = cylinder.to_le_bytes();
                (r.lba_mid, r.lba_high) = (low, high);
                r.device = (r.device & 0xf0) | ((rest / u64::from(g.sectors)) as u8 & 0x0f);
                r.lba_low = (rest % u64::from(g.sectors) + 1) as u8;
            }
        }
    }

    /// The DRQ block of a READ/WRITE (MULTIPLE): `None` when multiple mode
    /// is off for a MULTIPLE command.
    fn block_size(&self, multiple: bool) -> Option<u64> {
        match (multiple, self.settings.multiple) {
            (false, _) => Some(1),
            (true, 0) => None,
            (true, n) => Some(u64::from(n)),
        }
    }

    fn pio_read(&mut self, ext: bool, multiple: bool, ctx: &mut Ctx<'_>) {
        let Some(block) = self.block_size(multiple) else { return self.abort() };
        match self.address(ext) {
            Ok((lba, count, mode)) => {
                self.stats.reads += 1;
                self.settings.standby = false;
                self.read_next_block(lba, count, block, mode, ctx);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Reads the next DRQ block of a PIO read and offers it to the host;
    /// completes the command (without an interrupt) when none is left.
    pub(crate) fn read_next_block(&mut self, lba: u64, remaining: u64, block: u64, mode: AddrMode, ctx: &mut Ctx<'_>) {
        if remaining == 0 {
            self.set_address(lba.saturating_sub(1), mode);
            return self.complete(false);
        }
        let n = block.min(remaining);
        let len = (n * SECTOR_SIZE) as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        let Media::Disk(disk) = &mut self.media else { return self.abort() };
        if let Err(e) = read_image(disk.backend.as_mut(), &mut self.buf, disk_offset(lba)) {
            ctx.log.io_error(|| format!("disk read at sector {lba}: {e}"));
            self.set_address(lba, mode);
            return self.fail(ERR_UNC);
        }
        self.stats.read_bytes += len as u64;
        let next = PioNext::ReadSectors { lba: lba + n, remaining: remaining - n, block, mode };
        self.start_pio_in(len, next, true);
    }

    fn pio_write(&mut self, ext: bool, multiple: bool, ctx: &mut Ctx<'_>) {
        let Some(block) = self.block_size(multiple) else { return self.abort() };
        let (lba, count, mode) = match self.address(ext) {
            Ok(a) => a,
            Err(e) => return self.fail(e),
        };
        if self.read_only(ctx) {
            return self.abort();
        }
        self.stats.writes += 1;
        self.settings.standby = false;
        let next = PioNext::WriteSectors { lba, remaining: count, block, mode };
        self.start_pio_out((block.min(count) * SECTOR_SIZE) as usize, next, false);
    }

    /// Whether the disk refuses writes (logged once).
    fn read_only(&self, ctx: &mut Ctx<'_>) -> bool {
        let ro = matches!(&self.media, Media::Disk(d) if d.backend.read_only());
        if ro {
            ctx.log.read_only();
        }
        ro
    }

    /// Writes the block the host filled; asks for the next or completes.
    pub(crate) fn write_block(&mut self, lba: u64, remaining: u64, block: u64, mode: AddrMode, ctx: &mut Ctx<'_>) {
        let n = block.min(remaining);
        let len = (n * SECTOR_SIZE) as usize;
        let Media::Disk(disk) = &mut self.media else { return self.abort() };
        let data = self.buf.get(..len).unwrap_or(&[]);
        if let Err(e) = write_image(disk.backend.as_mut(), data, disk_offset(lba)) {
            ctx.log.io_error(|| format!("disk write at sector {lba}: {e}"));
            self.set_address(lba, mode);
            return self.fail(ERR_ABRT);
        }
        self.stats.write_bytes += len as u64;
        let (lba, remaining) = (lba + n, remaining - n);
        if remaining > 0 {
            let next = PioNext::WriteSectors { lba, remaining, block, mode };
            return self.start_pio_out((block.min(remaining) * SECTOR_SIZE) as usize, next, true);
        }
        self.set_address(lba - 1, mode);
        if self.write_through(ctx) {
            self.complete(true);
        }
    }

    /// After a write command: with the write cache off, flushes the image.
    /// False (and the command failed) if the flush failed.
    fn write_through(&mut self, ctx: &mut Ctx<'_>) -> bool {
        if self.settings.write_cache {
            return true;
        }
        self.flush_image(ctx)
    }

    /// Flushes the image; a failure ends the command with ABRT and DF.
    fn flush_image(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Media::Disk(disk) = &mut self.media else { return true };
        self.stats.flushes += 1;
        match disk.backend.flush() {
            Ok(()) => true,
            Err(e) => {
                ctx.log.io_error(|| format!("disk flush: {e}"));
                self.fail(ERR_ABRT);
                self.regs.status |= ST_DF;
                false
            }
        }
    }

    fn flush(&mut self, ctx: &mut Ctx<'_>) {
        if self.flush_image(ctx) {
            self.complete(true);
        }
    }

    fn dma_command(&mut self, ext: bool, write: bool, ctx: &mut Ctx<'_>) {
        let (lba, count, mode) = match self.address(ext) {
            Ok(a) => a,
            Err(e) => return self.fail(e),
        };
        if write && self.read_only(ctx) {
            return self.abort();
        }
        self.settings.standby = false;
        self.clear_data();
        let job =
            if write { DmaJob::WriteSectors { lba, count, mode } } else { DmaJob::ReadSectors { lba, count, mode } };
        self.wait_dma(job);
    }

    /// Moves the sectors of a READ or WRITE DMA through the bus master.
    pub(crate) fn dma_sectors(
        &mut self,
        job: DmaJob,
        cursor: &mut PrdCursor,
        to_memory: bool,
        ctx: &mut Ctx<'_>,
    ) -> DmaEnd {
        let (lba, count, mode, write) = match job {
            DmaJob::ReadSectors { lba, count, mode } => (lba, count, mode, false),
            DmaJob::WriteSectors { lba, count, mode } => (lba, count, mode, true),
            DmaJob::Atapi { .. } => return DmaEnd::Done,
        };
        if to_memory == write {
            ctx.log.bad_value(|| "the bus master's direction does not match the DMA command".into());
            self.fail(ERR_ABRT);
            return DmaEnd::Fault;
        }
        if write {
            self.stats.writes += 1;
        } else {
            self.stats.reads += 1;
        }
        let Self { media, scratch, stats, .. } = self;
        let Media::Disk(disk) = media else { return DmaEnd::Done };
        // Sectors moved: after a failure, those before the one that failed.
        let mut done = 0;
        let mut end = DmaEnd::Done;
        while done < count {
            let n = (count - done).min(DMA_CHUNK_SECTORS);
            let len = (n * SECTOR_SIZE) as usize;
            // The buffer keeps its largest size: no bytes are cleared
            // before each chunk overwrites them.
            if scratch.len() < len {
                scratch.resize(len, 0);
            }
            let buf = &mut scratch[..len];
            let offset = disk_offset(lba + done);
            let start = cursor.moved();
            if write {
                // The whole sectors the table gave before a failure are
                // written: the device stops at the sector that failed.
                let gathered = cursor.gather(ctx.mem, buf);
                let whole = (cursor.moved() - start) / SECTOR_SIZE;
                let data = &buf[..(whole * SECTOR_SIZE) as usize];
                let written = if data.is_empty() { Ok(()) } else { write_image(disk.backend.as_mut(), data, offset) };
                if let Err(e) = written {
                    ctx.log.io_error(|| format!("disk write at sector {}: {e}", lba + done));
                    end = DmaEnd::Device;
                    break;
                }
                stats.write_bytes += data.len() as u64;
                if let Err(e) = gathered {
                    done += whole;
                    end = e.end(ctx);
                    break;
                }
            } else {
                if let Err(e) = read_image(disk.backend.as_mut(), buf, offset) {
                    ctx.log.io_error(|| format!("disk read at sector {}: {e}", lba + done));
                    done = first_bad_sector(disk.backend.as_mut(), lba + done, n) - lba;
                    end = DmaEnd::Device;
                    break;
                }
                stats.read_bytes += len as u64;
                if let Err(e) = cursor.scatter(ctx.mem, buf) {
                    done += (cursor.moved() - start) / SECTOR_SIZE;
                    end = e.end(ctx);
                    break;
                }
            }
            done += n;
        }
        match end {
            DmaEnd::Done => {
                self.set_address(lba + count - 1, mode);
                if !write || self.write_through(ctx) {
                    self.complete(true);
                }
            }
            DmaEnd::Short => {
                self.set_address(lba + done, mode);
                self.fail_quietly(ERR_ABRT);
            }
            DmaEnd::Fault => {
                self.set_address(lba + done, mode);
                self.fail(ERR_ABRT);
            }
            DmaEnd::Device => {
                self.set_address(lba + done, mode);
                self.fail(if write { ERR_ABRT } else { ERR_UNC });
            }
        }
        end
    }

    /// READ VERIFY SECTORS (EXT): the sectors are read and dropped.
    fn read_verify(&mut self, ext: bool, ctx: &mut Ctx<'_>) {
        let (lba, count, mode) = match self.address(ext) {
            Ok(a) => a,
            Err(e) => return self.fail(e),
        };
        self.settings.standby = false;
        let Self { media, scratch, .. } = self;
        let Media::Disk(disk) = media else { return };
        let mut done = 0;
        while done < count {
            let n = (count - done).min(DMA_CHUNK_SECTORS);
            let len = (n * SECTOR_SIZE) as usize;
            if scratch.len() < len {
                scratch.resize(len, 0);
            }
            if let Err(e) = read_image(disk.backend.as_mut(), &mut scratch[..len], disk_offset(lba + done)) {
                ctx.log.io_error(|| format!("disk verify at sector {}: {e}", lba + done));
                let bad = first_bad_sector(disk.backend.as_mut(), lba + done, n);
                self.set_address(bad, mode);
                return self.fail(ERR_UNC);
            }
            done += n;
        }
        self.set_address(lba + count - 1, mode);
        self.complete(true);
    }

    /// INITIALIZE DEVICE PARAMETERS: heads and sectors per track of the CHS
    /// translation; the cylinders follow from the capacity.
    fn initialize_device_parameters(&mut self) {
        let spt = self.regs.count;
        let heads = (self.regs.device & 0x0f) + 1;
        if spt == 0 {
            return self.abort();
        }
        let cylinders = (self.disk_sectors() / (u64::from(heads) * u64::from(spt))).min(0xffff) as u16;
        self.settings.geometry = Geometry { cylinders, heads, sectors: spt };
        self.complete(true);
    }

    /// IDENTIFY DEVICE data of a disk (ATA8-ACS, IDENTIFY DEVICE).
    pub(crate) fn identify_device(&self) -> Vec<u8> {
        let Media::Disk(disk) = &self.media else { return vec![0; 512] };
        let s = &self.settings;
        let sectors = disk.sectors;
        let default = Geometry::default_for(sectors);
        let current = s.geometry;
        let mut w = [0u16; 256];
        // Fixed (bit 6), not removable, an ATA device (bit 15 clear).
        w[0] = 0x0040;
        w[1] = default.cylinders;
        w[3] = u16::from(default.heads);
        w[6] = u16::from(default.sectors);
        put_string(&mut w, 10, 10, &disk.serial);
        put_string(&mut w, 23, 4, FIRMWARE);
        put_string(&mut w, 27, 20, DISK_MODEL);
        w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
        common_identify_words(&mut w, s.dma_mode, self.device);
        w[50] = WORD_VALID;
        // Obsolete PIO timing mode (2), as older drivers read it.
        w[51] = 0x0200;
        w[52] = 0x0200;
        w[54] = current.cylinders;
        w[55] = u16::from(current.heads);
        w[56] = u16::from(current.sectors);
        let chs_capacity = current.capacity().min(u64::from(u32::MAX)) as u32;
        w[57] = chs_capacity as u16;
        w[58] = (chs_capacity >> 16) as u16;
        if s.multiple != 0 {
            w[59] = 0x0100 | u16::from(s.multiple);
        }
        let lba28 = sectors.min(0x0fff_ffff) as u32;
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        w[82] = CMDSET_WRITE_CACHE | CMDSET_POWER;
        w[83] = WORD_VALID | CMDSET2;
        w[84] = WORD_VALID;
        w[85] = CMDSET_POWER | if s.write_cache { CMDSET_WRITE_CACHE } else { 0 };
        w[86] = CMDSET2;
        w[87] = WORD_VALID;
        for (i, chunk) in sectors.to_le_bytes().chunks_exact(2).enumerate() {
            w[100 + i] = u16::from_le_bytes([chunk[0], chunk[1]]);
        }
        identify_bytes(w)
    }
}

/// The first of `n` sectors from `lba` that the image fails to read (the
/// last one if each reads alone).
fn first_bad_sector(backend: &mut dyn crate::block::BlockBackend, lba: u64, n: u64) -> u64 {
    let mut sector = [0u8; SECTOR_SIZE as usize];
    (lba..lba + n).find(|&s| read_image(backend, &mut sector, disk_offset(s)).is_err()).unwrap_or(lba + n - 1)
}

/// Writes `data` at `offset` of `backend`, refusing a range past its end.
pub(crate) fn write_image(
    backend: &mut dyn crate::block::BlockBackend,
    data: &[u8],
    offset: u64,
) -> std::io::Result<()> {
    let end = offset.checked_add(data.len() as u64);
    if end.is_none_or(|e| e > backend.size()) {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end of the image"));
    }
    backend.write_at(data, offset)
}
