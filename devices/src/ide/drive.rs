//! One device position of a channel: the task file it latches, its data
//! phase, and the disk or CD-ROM behind it.
//!
//! A device runs synchronously: a command reads or writes its image when
//! the host issues it, when the host has moved a PIO block through the data
//! port, or when the host starts the bus master. Between two register
//! accesses the device is therefore fully described by its registers, its
//! data buffer and what follows the current block ([`Transfer`]); that is
//! what [`super::IdeState`] saves. The image accesses all go through a few
//! functions: `read_image` and `write_image` (from the PIO block handlers,
//! READ VERIFY, FLUSH and the DMA loops) and the ATAPI `fill`. Those are the
//! places a later move of the I/O off the vCPU thread would change: a
//! command would then stay busy (BSY) until its I/O completes.

use std::io;

use crate::block::{BlockBackend, SECTOR_SIZE};

use super::{Ctx, IdeStats};

/// Status: busy.
pub(crate) const ST_BSY: u8 = 0x80;
/// Status: device ready.
pub(crate) const ST_DRDY: u8 = 0x40;
/// Status: device fault.
pub(crate) const ST_DF: u8 = 0x20;
/// Status: seek complete (ATA disks; a packet device's service bit, unused).
pub(crate) const ST_DSC: u8 = 0x10;
/// Status: data request.
pub(crate) const ST_DRQ: u8 = 0x08;
/// Status: error.
pub(crate) const ST_ERR: u8 = 0x01;

/// Error: uncorrectable data.
pub(crate) const ERR_UNC: u8 = 0x40;
/// Error: ID not found (the address lies outside the disk).
pub(crate) const ERR_IDNF: u8 = 0x10;
/// Error: command aborted.
pub(crate) const ERR_ABRT: u8 = 0x04;
/// Error register after a reset or a diagnostic: device 0 passed, and
/// device 1 passed or is absent.
pub(crate) const DIAG_PASSED: u8 = 0x01;

/// Device register: LBA addressing (CHS when clear).
pub(crate) const DEV_LBA: u8 = 0x40;
/// Device register: device 1 is selected.
pub(crate) const DEV_DEV1: u8 = 0x10;

/// Command block register offsets.
pub(crate) const REG_DATA: u64 = 0;
pub(crate) const REG_ERROR_FEATURES: u64 = 1;
pub(crate) const REG_COUNT: u64 = 2;
pub(crate) const REG_LBA_LOW: u64 = 3;
pub(crate) const REG_LBA_MID: u64 = 4;
pub(crate) const REG_LBA_HIGH: u64 = 5;
pub(crate) const REG_DEVICE: u64 = 6;
pub(crate) const REG_STATUS_COMMAND: u64 = 7;

/// Sector size of a CD-ROM.
pub const CD_SECTOR_SIZE: u64 = 2048;
/// The largest data buffer a device holds: an ATAPI DRQ chunk (at most
/// 0xFFFE bytes) with a partial sector on either side. Restore refuses more.
pub const MAX_BUFFER: usize = 0x2_0000;
/// Sectors a DMA command or READ VERIFY moves per image access (1 MiB):
/// a driver's usual request (a PRD table of 128 pages, 512 KiB) is one
/// read or write of the image.
pub(crate) const DMA_CHUNK_SECTORS: u64 = 2048;

/// The ATA signature (LBA mid, LBA high) of a disk and of a packet device.
const SIGNATURE_ATA: (u8, u8) = (0x00, 0x00);
const SIGNATURE_ATAPI: (u8, u8) = (0x14, 0xeb);

/// The registers of one device's task file: what the host wrote (each
/// command block register is two deep for the 48-bit commands: a write
/// moves the previous value to the `hob_` copy, which reads back while the
/// device control HOB bit is set) and what the device reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TaskFile {
    /// Features (written at offset 1).
    pub features: u8,
    /// The previous Features write.
    pub hob_features: u8,
    /// Sector count, or a packet device's interrupt reason.
    pub count: u8,
    /// The previous Sector count write.
    pub hob_count: u8,
    /// LBA bits 7:0 (sector number).
    pub lba_low: u8,
    /// The previous LBA low write (LBA bits 31:24 of a 48-bit command).
    pub hob_lba_low: u8,
    /// LBA bits 15:8 (cylinder low; a packet device's byte count low).
    pub lba_mid: u8,
    /// The previous LBA mid write (LBA bits 39:32).
    pub hob_lba_mid: u8,
    /// LBA bits 23:16 (cylinder high; a packet device's byte count high).
    pub lba_high: u8,
    /// The previous LBA high write (LBA bits 47:40).
    pub hob_lba_high: u8,
    /// Device: bit 6 LBA, bit 4 device 1, bits 3:0 LBA 27:24 or the head.
    pub device: u8,
    /// Error (read at offset 1).
    pub error: u8,
    /// Status (read at offset 7 and through the alternate status).
    pub status: u8,
}

impl TaskFile {
    /// A host write to register `reg` (1-6).
    pub(crate) fn write(&mut self, reg: u64, v: u8) {
        let (cur, prev) = match reg {
            REG_ERROR_FEATURES => (&mut self.features, &mut self.hob_features),
            REG_COUNT => (&mut self.count, &mut self.hob_count),
            REG_LBA_LOW => (&mut self.lba_low, &mut self.hob_lba_low),
            REG_LBA_MID => (&mut self.lba_mid, &mut self.hob_lba_mid),
            REG_LBA_HIGH => (&mut self.lba_high, &mut self.hob_lba_high),
            REG_DEVICE => {
                self.device = v;
                return;
            }
            _ => return,
        };
        *prev = *cur;
        *cur = v;
    }

    /// The 16-bit ATAPI byte count (LBA mid and high).
    pub(crate) fn byte_count(&self) -> u16 {
        u16::from_le_bytes([self.lba_mid, self.lba_high])
    }
}

/// How the command that runs addressed its sectors; the device reports
/// addresses back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum AddrMode {
    /// Cylinder, head, sector through the current translation.
    Chs,
    /// 28-bit LBA.
    Lba28,
    /// 48-bit LBA (the EXT commands).
    Lba48,
}

/// Where an ATAPI data-in transfer takes the bytes it has not buffered yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AtapiSource {
    /// The next 2048-byte sector of the medium to read.
    pub lba: u64,
    /// Sectors still to read from the medium (0: the buffer holds the rest).
    pub sectors: u64,
}

/// What happens when the host has moved the current PIO block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PioNext {
    /// The command is complete.
    Done,
    /// READ SECTORS or READ MULTIPLE: `remaining` sectors from `lba` follow,
    /// `block` sectors per DRQ block.
    ReadSectors {
        /// The next sector to read.
        lba: u64,
        /// Sectors still to read.
        remaining: u64,
        /// Sectors per DRQ block.
        block: u64,
        /// The command's addressing.
        mode: AddrMode,
    },
    /// WRITE SECTORS or WRITE MULTIPLE: the buffer goes to `lba`; it and the
    /// blocks after it make `remaining` sectors.
    WriteSectors {
        /// The sector the buffer goes to.
        lba: u64,
        /// Sectors still to write, the buffer's included.
        remaining: u64,
        /// Sectors per DRQ block.
        block: u64,
        /// The command's addressing.
        mode: AddrMode,
    },
    /// PACKET: the buffer takes the 12-byte command packet.
    Packet {
        /// The host asked for the data by DMA (Features bit 0).
        dma: bool,
        /// The byte count limit of each PIO DRQ chunk.
        limit: u16,
    },
    /// ATAPI data-in: `left` bytes follow the current chunk.
    Atapi {
        /// Bytes still to send after this chunk.
        left: u64,
        /// Where the bytes not yet buffered come from.
        source: AtapiSource,
        /// The byte count limit of each DRQ chunk.
        limit: u16,
    },
}

/// A command waiting for the bus master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DmaJob {
    /// READ DMA (EXT): `count` sectors from `lba` to memory.
    ReadSectors {
        /// The first sector.
        lba: u64,
        /// Sectors.
        count: u64,
        /// The command's addressing.
        mode: AddrMode,
    },
    /// WRITE DMA (EXT): `count` sectors from memory to `lba`.
    WriteSectors {
        /// The first sector.
        lba: u64,
        /// Sectors.
        count: u64,
        /// The command's addressing.
        mode: AddrMode,
    },
    /// A packet command's data-in: the buffer, then the medium.
    Atapi {
        /// Bytes to send.
        left: u64,
        /// Where the bytes not yet buffered come from.
        source: AtapiSource,
    },
}

/// The data phase of a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Transfer {
    /// No data phase.
    #[default]
    Idle,
    /// PIO data-in: the host reads the buffer from `pos` to `end`.
    PioIn(PioNext),
    /// PIO data-out: the host writes the buffer from `pos` to `end`.
    PioOut(PioNext),
    /// The device waits for the bus master.
    Dma(DmaJob),
}

/// A device's CHS translation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads (1-16).
    pub heads: u8,
    /// Sectors per track (1-255).
    pub sectors: u8,
}

impl Geometry {
    /// The default translation of a disk of `sectors` sectors: 16 heads and
    /// 63 sectors per track, cylinders up to 16383 (ATA's limit for the
    /// default translation); a disk under 1008 sectors gets one head.
    pub(crate) fn default_for(sectors: u64) -> Self {
        let (heads, spt) = if sectors >= 16 * 63 { (16u8, 63u8) } else { (1, sectors.clamp(1, 63) as u8) };
        let cylinders = (sectors / (u64::from(heads) * u64::from(spt))).min(16383) as u16;
        Self { cylinders, heads, sectors: spt }
    }

    /// Sectors the translation reaches.
    pub(crate) fn capacity(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }
}

/// What the host configured on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DriveSettings {
    /// Sectors per DRQ block of READ/WRITE MULTIPLE (0: multiple mode off).
    pub multiple: u8,
    /// The volatile write cache is on (SET FEATURES 02h, off by 82h): off,
    /// every write command is flushed before it completes.
    pub write_cache: bool,
    /// The PIO transfer mode selected (0-4).
    pub pio_mode: u8,
    /// The DMA mode selected, as SET FEATURES codes it (20h+n multiword
    /// DMA n, 40h+n Ultra DMA n); 0 for none.
    pub dma_mode: u8,
    /// The CHS translation (INITIALIZE DEVICE PARAMETERS).
    pub geometry: Geometry,
    /// The device is in the Standby power mode.
    pub standby: bool,
}

/// Multiword DMA mode 2, the mode selected at power-on.
pub(crate) const DMA_MODE_DEFAULT: u8 = 0x22;

impl DriveSettings {
    fn power_on(sectors: u64) -> Self {
        Self {
            multiple: 0,
            write_cache: true,
            pio_mode: 4,
            dma_mode: DMA_MODE_DEFAULT,
            geometry: Geometry::default_for(sectors),
            standby: false,
        }
    }
}

/// The SCSI-side state of a packet device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AtapiState {
    /// Sense key of the last command (REQUEST SENSE).
    pub sense_key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// A medium change waits to be reported (06/28/00).
    pub unit_attention: bool,
    /// PREVENT MEDIUM REMOVAL is in force.
    pub prevent: bool,
    /// The tray is open (START STOP UNIT eject): no medium is accessible.
    pub tray_open: bool,
    /// The media event code waiting for GET EVENT STATUS NOTIFICATION
    /// (0 none, 1 eject request, 2 new media, 3 media removal).
    pub event: u8,
}

/// An ATA disk behind a device position.
pub(crate) struct Disk {
    pub(crate) backend: Box<dyn BlockBackend>,
    pub(crate) serial: String,
    pub(crate) sectors: u64,
}

/// An ATAPI CD-ROM drive.
pub(crate) struct Cdrom {
    pub(crate) medium: Option<Box<dyn BlockBackend>>,
    pub(crate) serial: String,
}

/// What sits at a device position.
pub(crate) enum Media {
    Empty,
    Disk(Disk),
    Cdrom(Cdrom),
}

/// What a device is, as a saved state records it: a restore needs the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DriveKind {
    /// No device.
    Empty,
    /// An ATA disk.
    Disk {
        /// Its capacity in 512-byte sectors.
        sectors: u64,
        /// Whether writes are refused.
        read_only: bool,
    },
    /// An ATAPI CD-ROM drive.
    Cdrom {
        /// The medium's capacity in 2048-byte sectors, if a medium is in.
        medium_sectors: Option<u64>,
    },
}

impl std::fmt::Display for DriveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriveKind::Empty => f.write_str("no device"),
            DriveKind::Disk { sectors, read_only } => {
                write!(f, "a {}disk of {sectors} sectors", if *read_only { "read-only " } else { "" })
            }
            DriveKind::Cdrom { medium_sectors: Some(n) } => write!(f, "a CD-ROM drive with a medium of {n} sectors"),
            DriveKind::Cdrom { medium_sectors: None } => f.write_str("an empty CD-ROM drive"),
        }
    }
}

/// One device position of a channel.
pub(crate) struct Drive {
    pub(crate) media: Media,
    /// 0 for the master, 1 for the slave.
    pub(crate) device: usize,
    pub(crate) regs: TaskFile,
    /// The device asserts its interrupt (until the host reads Status or
    /// writes a command).
    pub(crate) irq_pending: bool,
    /// The device asserted its interrupt since the channel last looked
    /// (sets the bus master's interrupt bit); not saved.
    pub(crate) irq_event: bool,
    pub(crate) xfer: Transfer,
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: usize,
    pub(crate) end: usize,
    pub(crate) settings: DriveSettings,
    pub(crate) atapi: AtapiState,
    pub(crate) stats: IdeStats,
    /// A bounce buffer for DMA and READ VERIFY; not saved.
    pub(crate) scratch: Vec<u8>,
}

impl Drive {
    pub(crate) fn new(media: Media, device: usize) -> Self {
        let sectors = match &media {
            Media::Disk(d) => d.sectors,
            _ => 0,
        };
        let mut d = Self {
            media,
            device,
            regs: TaskFile::default(),
            irq_pending: false,
            irq_event: false,
            xfer: Transfer::Idle,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            settings: DriveSettings::power_on(sectors),
            atapi: AtapiState::default(),
            stats: IdeStats::default(),
            scratch: Vec::new(),
        };
        d.hard_reset();
        d
    }

    pub(crate) fn present(&self) -> bool {
        !matches!(self.media, Media::Empty)
    }

    pub(crate) fn is_atapi(&self) -> bool {
        matches!(self.media, Media::Cdrom(_))
    }

    /// A short name for logs.
    pub(crate) fn label(&self) -> &'static str {
        match self.media {
            Media::Empty => "empty slot",
            Media::Disk(_) => "disk",
            Media::Cdrom(_) => "CD-ROM",
        }
    }

    pub(crate) fn kind(&self) -> DriveKind {
        match &self.media {
            Media::Empty => DriveKind::Empty,
            Media::Disk(d) => DriveKind::Disk { sectors: d.sectors, read_only: d.backend.read_only() },
            Media::Cdrom(c) => {
                DriveKind::Cdrom { medium_sectors: c.medium.as_ref().map(|m| m.size() / CD_SECTOR_SIZE) }
            }
        }
    }

    /// Status of a device with nothing to do: DRDY (and DSC on a disk).
    pub(crate) fn ready_status(&self) -> u8 {
        if self.is_atapi() {
            ST_DRDY
        } else {
            ST_DRDY | ST_DSC
        }
    }

    /// The status after a reset: a packet device leaves DRDY clear
    /// (ATA/ATAPI-6).
    fn reset_status(&self) -> u8 {
        match self.media {
            Media::Empty | Media::Cdrom(_) => 0,
            Media::Disk(_) => ST_DRDY | ST_DSC,
        }
    }

    /// Asserts the device's interrupt.
    pub(crate) fn raise(&mut self) {
        self.irq_pending = true;
        self.irq_event = true;
    }

    pub(crate) fn clear_data(&mut self) {
        self.xfer = Transfer::Idle;
        self.buf.clear();
        self.pos = 0;
        self.end = 0;
    }

    /// The registers after a reset or a diagnostic: the signature that says
    /// disk or packet device, error 01h (passed), device 0 selected.
    pub(crate) fn set_signature(&mut self) {
        let (mid, high) = if self.is_atapi() { SIGNATURE_ATAPI } else { SIGNATURE_ATA };
        self.regs = TaskFile {
            count: 1,
            lba_low: 1,
            lba_mid: mid,
            lba_high: high,
            device: 0,
            error: DIAG_PASSED,
            status: self.reset_status(),
            ..TaskFile::default()
        };
    }

    /// Power-on or hardware reset: the signature and every setting back to
    /// its default; a medium stays in, unlocked, with the tray closed.
    pub(crate) fn hard_reset(&mut self) {
        self.clear_data();
        self.irq_pending = false;
        self.irq_event = false;
        let sectors = match &self.media {
            Media::Disk(d) => d.sectors,
            _ => 0,
        };
        self.settings = DriveSettings::power_on(sectors);
        self.atapi = AtapiState::default();
        self.set_signature();
    }

    /// SRST set: the device is busy and stops what it did.
    pub(crate) fn soft_reset_begin(&mut self) {
        self.clear_data();
        self.irq_pending = false;
        self.regs.status = ST_BSY;
    }

    /// SRST cleared (or EXECUTE DEVICE DIAGNOSTIC, DEVICE RESET): the
    /// signature; the host's settings stay.
    pub(crate) fn soft_reset_end(&mut self) {
        self.clear_data();
        self.irq_pending = false;
        self.set_signature();
    }

    /// The command completed: ready, no data phase; `irq` asserts the
    /// interrupt (a PIO data-in command completes without one).
    pub(crate) fn complete(&mut self, irq: bool) {
        self.clear_data();
        self.regs.status = self.ready_status();
        if irq {
            self.raise();
        }
    }

    /// The command failed with `error`: ERR, no data phase, the interrupt.
    pub(crate) fn fail(&mut self, error: u8) {
        self.fail_quietly(error);
        self.raise();
    }

    /// The command failed and the device does not interrupt (its bus
    /// master stopped it).
    pub(crate) fn fail_quietly(&mut self, error: u8) {
        self.clear_data();
        self.regs.error = error;
        self.regs.status = self.ready_status() | ST_ERR;
        self.stats.errors += 1;
    }

    /// Aborts the command (ABRT).
    pub(crate) fn abort(&mut self) {
        self.fail(ERR_ABRT);
    }

    /// Starts a PIO data-in block of the first `len` bytes of the buffer:
    /// DRQ, and the interrupt if `irq`.
    pub(crate) fn start_pio_in(&mut self, len: usize, next: PioNext, irq: bool) {
        self.buf.resize(len.max(self.buf.len()), 0);
        self.pos = 0;
        self.end = len;
        self.xfer = Transfer::PioIn(next);
        self.regs.status = self.ready_status() | ST_DRQ;
        if irq {
            self.raise();
        }
    }

    /// Starts a PIO data-out block of `len` bytes.
    pub(crate) fn start_pio_out(&mut self, len: usize, next: PioNext, irq: bool) {
        self.buf.clear();
        self.buf.resize(len, 0);
        self.pos = 0;
        self.end = len;
        self.xfer = Transfer::PioOut(next);
        self.regs.status = self.ready_status() | ST_DRQ;
        if irq {
            self.raise();
        }
    }

    /// The host reads the data port: `out.len()` bytes (1, 2 or 4) of the
    /// current block, zeroes past its end or outside a data-in phase.
    pub(crate) fn data_read(&mut self, out: &mut [u8], ctx: &mut Ctx<'_>) {
        out.fill(0);
        if !matches!(self.xfer, Transfer::PioIn(_)) {
            return;
        }
        let n = self.end.saturating_sub(self.pos).min(out.len());
        if let Some(src) = self.buf.get(self.pos..self.pos + n) {
            out[..n].copy_from_slice(src);
        }
        self.pos += n;
        if self.pos >= self.end {
            self.block_done(ctx);
        }
    }

    /// The host writes the data port.
    pub(crate) fn data_write(&mut self, data: &[u8], ctx: &mut Ctx<'_>) {
        if !matches!(self.xfer, Transfer::PioOut(_)) {
            return;
        }
        let n = self.end.saturating_sub(self.pos).min(data.len());
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + n) {
            dst.copy_from_slice(&data[..n]);
        }
        self.pos += n;
        if self.pos >= self.end {
            self.block_done(ctx);
        }
    }

    /// The host has moved the whole current block.
    fn block_done(&mut self, ctx: &mut Ctx<'_>) {
        match std::mem::take(&mut self.xfer) {
            Transfer::PioIn(PioNext::ReadSectors { lba, remaining, block, mode }) => {
                self.read_next_block(lba, remaining, block, mode, ctx);
            }
            Transfer::PioOut(PioNext::WriteSectors { lba, remaining, block, mode }) => {
                self.write_block(lba, remaining, block, mode, ctx);
            }
            Transfer::PioOut(PioNext::Packet { dma, limit }) => self.packet(dma, limit, ctx),
            Transfer::PioIn(PioNext::Atapi { left, source, limit }) => self.atapi_chunk_done(left, source, limit, ctx),
            // IDENTIFY (PACKET) DEVICE: a PIO data-in command completes
            // without an interrupt.
            _ => self.complete(false),
        }
    }

    /// A DMA command or packet waits for the bus master.
    pub(crate) fn wait_dma(&mut self, job: DmaJob) {
        self.xfer = Transfer::Dma(job);
        self.regs.status = self.ready_status() | ST_DRQ;
    }
}

/// Reads `buf.len()` bytes at sector `lba` of `backend`.
pub(crate) fn read_image(backend: &mut dyn BlockBackend, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let end = offset.checked_add(buf.len() as u64);
    if end.is_none_or(|e| e > backend.size()) {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the image"));
    }
    backend.read_at(buf, offset)
}

/// The byte offset of sector `lba` of a disk.
pub(crate) fn disk_offset(lba: u64) -> u64 {
    lba.saturating_mul(SECTOR_SIZE)
}
