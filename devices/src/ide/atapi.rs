//! ATAPI: the PACKET protocol and the MMC commands of a CD-ROM drive.
//!
//! References: ATA/ATAPI-6 (T13/1410D): PACKET, IDENTIFY PACKET DEVICE and
//! the PACKET protocols; SFF-8020i (the ATAPI CD-ROM commands); MMC-5
//! (T10/1675-D): the features and profiles of GET CONFIGURATION, GET EVENT
//! STATUS NOTIFICATION, READ DISC INFORMATION, READ TRACK INFORMATION,
//! READ TOC/PMA/ATIP, MECHANISM STATUS and the mode pages; SPC-3: INQUIRY
//! and fixed-format sense data.
//!
//! ```text
//! PACKET            Features: 0 DMA, 1 OVL; LBA mid/high: byte count limit per DRQ chunk
//! interrupt reason  (in Sector count) 0 CoD | 1 IO | 2 REL
//!   CoD=1 IO=0      the device waits for the 12-byte command packet (DRQ, no interrupt)
//!   CoD=0 IO=1      a chunk of data for the host; LBA mid/high = its length
//!   CoD=1 IO=1      the command completed (status; ERR on CHECK CONDITION)
//! Error register after CHECK CONDITION: 7:4 sense key
//! ```
//!
//! Model choices: a read-only drive with 2048-byte sectors, one data track
//! (a CD-ROM profile, 0008h), a tray, a lock. A medium change raises a unit
//! attention (06/28/00) that the next command other than INQUIRY, REQUEST
//! SENSE, GET CONFIGURATION and GET EVENT STATUS NOTIFICATION reports (and
//! REQUEST SENSE clears); without a medium the commands that need one
//! report NOT READY, MEDIUM NOT PRESENT (02/3A/00, ASCQ 02 with the tray
//! open). Unknown commands answer ILLEGAL REQUEST, INVALID COMMAND
//! OPERATION CODE (05/20/00) and are logged once by name.

use crate::block::BlockBackend;

use super::ata::{cmd, common_identify_words, identify_bytes, put_string, FIRMWARE};
use super::bmdma::{DmaEnd, PrdCursor};
use super::drive::{read_image, AtapiSource, DmaJob, Drive, Media, PioNext, Transfer, CD_SECTOR_SIZE, ST_DRDY, ST_DRQ};
use super::Ctx;

/// Length of a command packet.
pub(crate) const CDB_LEN: usize = 12;
/// PACKET Features: the data goes by DMA.
const FEAT_DMA: u8 = 0x01;
/// PACKET Features: overlapped (not supported: aborted).
const FEAT_OVL: u8 = 0x02;
/// Interrupt reason bits.
const IREASON_COD: u8 = 0x01;
const IREASON_IO: u8 = 0x02;
/// Bytes a DMA packet transfer moves per medium access (64 KiB).
const DMA_CHUNK: u64 = 0x1_0000;
/// Model string of IDENTIFY PACKET DEVICE and the INQUIRY product.
const MODEL: &str = "FERROVM CD-ROM";
/// INQUIRY vendor (8 bytes), product (16) and revision (4).
const INQUIRY_VENDOR: &[u8; 8] = b"FERROVM ";
const INQUIRY_PRODUCT: &[u8; 16] = b"FERROVM CD-ROM  ";
const INQUIRY_REVISION: &[u8; 4] = b"1.0 ";
/// The current profile of a drive with a medium (MMC-5's CD-ROM profile).
const PROFILE_CD_ROM: u16 = 0x0008;
/// Media event codes of GET EVENT STATUS NOTIFICATION (MMC-5).
pub(crate) const EVENT_NONE: u8 = 0;
pub(crate) const EVENT_EJECT_REQUEST: u8 = 1;
pub(crate) const EVENT_NEW_MEDIA: u8 = 2;
pub(crate) const EVENT_MEDIA_REMOVAL: u8 = 3;
/// The speed page 2Ah reports, in kB/s (24x).
const SPEED_KBS: u16 = 24 * 176;
/// Logical blocks before track 1 in MSF addresses (2 seconds).
const MSF_OFFSET: u64 = 150;

/// Packet command operation codes.
pub(crate) mod op {
    pub(crate) const TEST_UNIT_READY: u8 = 0x00;
    pub(crate) const REQUEST_SENSE: u8 = 0x03;
    pub(crate) const INQUIRY: u8 = 0x12;
    pub(crate) const MODE_SENSE_6: u8 = 0x1a;
    pub(crate) const START_STOP_UNIT: u8 = 0x1b;
    pub(crate) const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub(crate) const READ_CAPACITY: u8 = 0x25;
    pub(crate) const READ_10: u8 = 0x28;
    pub(crate) const SEEK_10: u8 = 0x2b;
    pub(crate) const READ_TOC: u8 = 0x43;
    pub(crate) const GET_CONFIGURATION: u8 = 0x46;
    pub(crate) const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
    pub(crate) const READ_DISC_INFORMATION: u8 = 0x51;
    pub(crate) const READ_TRACK_INFORMATION: u8 = 0x52;
    pub(crate) const MODE_SENSE_10: u8 = 0x5a;
    pub(crate) const READ_12: u8 = 0xa8;
    pub(crate) const SET_CD_SPEED: u8 = 0xbb;
    pub(crate) const MECHANISM_STATUS: u8 = 0xbd;
}

/// The name of packet command `code`, for logs.
pub(crate) fn command_name(code: u8) -> &'static str {
    match code {
        op::TEST_UNIT_READY => "TEST UNIT READY",
        0x01 => "REZERO UNIT",
        op::REQUEST_SENSE => "REQUEST SENSE",
        0x04 => "FORMAT UNIT",
        op::INQUIRY => "INQUIRY",
        0x15 => "MODE SELECT(6)",
        op::MODE_SENSE_6 => "MODE SENSE(6)",
        op::START_STOP_UNIT => "START STOP UNIT",
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => "PREVENT ALLOW MEDIUM REMOVAL",
        0x23 => "READ FORMAT CAPACITIES",
        op::READ_CAPACITY => "READ CAPACITY",
        op::READ_10 => "READ(10)",
        0x2a => "WRITE(10)",
        op::SEEK_10 => "SEEK(10)",
        0x2e => "WRITE AND VERIFY(10)",
        0x2f => "VERIFY(10)",
        0x35 => "SYNCHRONIZE CACHE",
        0x3b => "WRITE BUFFER",
        0x3c => "READ BUFFER",
        0x42 => "READ SUB-CHANNEL",
        op::READ_TOC => "READ TOC/PMA/ATIP",
        0x44 => "READ HEADER",
        0x45 => "PLAY AUDIO(10)",
        op::GET_CONFIGURATION => "GET CONFIGURATION",
        0x47 => "PLAY AUDIO MSF",
        op::GET_EVENT_STATUS_NOTIFICATION => "GET EVENT STATUS NOTIFICATION",
        0x4b => "PAUSE/RESUME",
        0x4e => "STOP PLAY/SCAN",
        op::READ_DISC_INFORMATION => "READ DISC INFORMATION",
        op::READ_TRACK_INFORMATION => "READ TRACK INFORMATION",
        0x53 => "RESERVE TRACK",
        0x54 => "SEND OPC INFORMATION",
        0x55 => "MODE SELECT(10)",
        0x58 => "REPAIR TRACK",
        op::MODE_SENSE_10 => "MODE SENSE(10)",
        0x5b => "CLOSE TRACK/SESSION",
        0x5c => "READ BUFFER CAPACITY",
        0x5d => "SEND CUE SHEET",
        0xa1 => "BLANK",
        0xa2 => "SECURITY PROTOCOL IN",
        0xa3 => "SEND KEY",
        0xa4 => "REPORT KEY",
        0xa5 => "PLAY AUDIO(12)",
        0xa6 => "LOAD/UNLOAD MEDIUM",
        0xa7 => "SET READ AHEAD",
        op::READ_12 => "READ(12)",
        0xaa => "WRITE(12)",
        0xac => "GET PERFORMANCE",
        0xad => "READ DVD STRUCTURE",
        0xb6 => "SET STREAMING",
        0xb9 => "READ CD MSF",
        0xba => "SCAN",
        op::SET_CD_SPEED => "SET CD SPEED",
        op::MECHANISM_STATUS => "MECHANISM STATUS",
        0xbe => "READ CD",
        0xbf => "SEND DVD STRUCTURE",
        _ => "unknown",
    }
}

/// Sense data: key, additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sense {
    pub(crate) key: u8,
    pub(crate) asc: u8,
    pub(crate) ascq: u8,
}

const fn sense(key: u8, asc: u8, ascq: u8) -> Sense {
    Sense { key, asc, ascq }
}

pub(crate) const NO_SENSE: Sense = sense(0x00, 0x00, 0x00);
pub(crate) const NOT_READY_NO_MEDIUM: Sense = sense(0x02, 0x3a, 0x00);
pub(crate) const NOT_READY_TRAY_OPEN: Sense = sense(0x02, 0x3a, 0x02);
pub(crate) const MEDIUM_ERROR_READ: Sense = sense(0x03, 0x11, 0x00);
pub(crate) const INVALID_OPCODE: Sense = sense(0x05, 0x20, 0x00);
pub(crate) const LBA_OUT_OF_RANGE: Sense = sense(0x05, 0x21, 0x00);
pub(crate) const INVALID_FIELD: Sense = sense(0x05, 0x24, 0x00);
pub(crate) const SAVING_NOT_SUPPORTED: Sense = sense(0x05, 0x39, 0x00);
pub(crate) const REMOVAL_PREVENTED: Sense = sense(0x05, 0x53, 0x02);
pub(crate) const MEDIUM_CHANGED: Sense = sense(0x06, 0x28, 0x00);
pub(crate) const ABORTED: Sense = sense(0x0b, 0x00, 0x00);

/// What a packet command answers.
enum Reply {
    /// No data.
    Done,
    /// These bytes (already cut to the allocation length).
    Data(Vec<u8>),
    /// `sectors` sectors of the medium from `lba`.
    Read { lba: u64, sectors: u64 },
}

/// `v` cut to the allocation length `alloc`.
fn reply(mut v: Vec<u8>, alloc: usize) -> Result<Reply, Sense> {
    v.truncate(alloc);
    Ok(Reply::Data(v))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The four address bytes of block `lba` in a TOC: big-endian LBA, or
/// 0, minute, second, frame (with the 2-second offset).
fn toc_address(lba: u64, msf: bool) -> [u8; 4] {
    if msf {
        let [_, m, s, f] = msf_of(lba);
        [0, m, s, f]
    } else {
        (lba.min(u64::from(u32::MAX)) as u32).to_be_bytes()
    }
}

/// Block `lba` as 0, minute, second, frame; minutes stop at 255.
fn msf_of(lba: u64) -> [u8; 4] {
    let frames = lba.saturating_add(MSF_OFFSET);
    let minutes = (frames / (75 * 60)).min(0xff) as u8;
    [0, minutes, ((frames / 75) % 60) as u8, (frames % 75) as u8]
}

impl Drive {
    /// Runs ATA command `code` on a packet device.
    pub(crate) fn atapi_ata_command(&mut self, code: u8, ctx: &mut Ctx<'_>) {
        match code {
            cmd::PACKET => {
                if self.regs.features & FEAT_OVL != 0 {
                    return self.abort();
                }
                let dma = self.regs.features & FEAT_DMA != 0;
                let limit = self.regs.byte_count();
                self.start_pio_out(CDB_LEN, PioNext::Packet { dma, limit }, false);
                self.regs.count = IREASON_COD;
            }
            cmd::IDENTIFY_PACKET_DEVICE => {
                self.buf = self.identify_packet_device();
                self.start_pio_in(self.buf.len(), PioNext::Done, true);
            }
            // Reset the device alone; it does not interrupt.
            cmd::DEVICE_RESET => self.soft_reset_end(),
            // ATA/ATAPI-6: a packet device aborts these and shows its
            // signature, which is how drivers tell it from a disk.
            cmd::IDENTIFY_DEVICE | cmd::READ_SECTORS | cmd::READ_SECTORS_NO_RETRY => {
                self.abort();
                (self.regs.count, self.regs.lba_low, self.regs.lba_mid, self.regs.lba_high) = (1, 1, 0x14, 0xeb);
            }
            cmd::SET_FEATURES => self.set_features(ctx),
            cmd::CHECK_POWER_MODE | cmd::IDLE | cmd::IDLE_IMMEDIATE | cmd::STANDBY | cmd::STANDBY_IMMEDIATE => {
                self.power_command(code);
            }
            cmd::NOP => self.abort(),
            other => {
                ctx.log.ata_command(self.label(), other);
                self.abort();
            }
        }
    }

    /// The host has written the command packet: run it.
    pub(crate) fn packet(&mut self, dma: bool, limit: u16, ctx: &mut Ctx<'_>) {
        let mut cdb = [0u8; CDB_LEN];
        if let Some(b) = self.buf.get(..CDB_LEN) {
            cdb.copy_from_slice(b);
        }
        self.buf.clear();
        self.pos = 0;
        self.end = 0;
        self.settings.standby = false;
        match self.scsi(&cdb, ctx) {
            Ok(Reply::Done) => {
                self.set_sense(NO_SENSE);
                self.atapi_ok();
            }
            Ok(Reply::Data(v)) => {
                self.set_sense(NO_SENSE);
                if v.is_empty() {
                    return self.atapi_ok();
                }
                let len = v.len() as u64;
                self.buf = v;
                self.data_in(len, AtapiSource::default(), dma, limit, ctx);
            }
            Ok(Reply::Read { lba, sectors }) => {
                self.set_sense(NO_SENSE);
                self.stats.reads += 1;
                self.data_in(sectors * CD_SECTOR_SIZE, AtapiSource { lba, sectors }, dma, limit, ctx);
            }
            Err(s) => self.check_condition(s, true),
        }
    }

    fn set_sense(&mut self, s: Sense) {
        (self.atapi.sense_key, self.atapi.asc, self.atapi.ascq) = (s.key, s.asc, s.ascq);
    }

    /// The command completed: status phase, the interrupt.
    pub(crate) fn atapi_ok(&mut self) {
        self.complete(true);
        self.regs.count = IREASON_IO | IREASON_COD;
    }

    /// CHECK CONDITION with sense `s`: ERR, the sense key in the Error
    /// register; the interrupt if `irq`.
    pub(crate) fn check_condition(&mut self, s: Sense, irq: bool) {
        self.set_sense(s);
        if irq {
            self.fail(s.key << 4);
        } else {
            self.fail_quietly(s.key << 4);
        }
        self.regs.count = IREASON_IO | IREASON_COD;
    }

    /// Sends `left` bytes to the host: the buffer's, then `source`'s.
    fn data_in(&mut self, left: u64, source: AtapiSource, dma: bool, limit: u16, ctx: &mut Ctx<'_>) {
        if dma {
            self.regs.count = IREASON_IO;
            self.wait_dma(DmaJob::Atapi { left, source });
        } else {
            self.next_chunk(left, source, limit, ctx);
        }
    }

    /// Offers the host the next PIO chunk of at most the byte count limit
    /// (ATA/ATAPI-6, PACKET: an odd limit gives an even chunk unless it is the
    /// last; 0 and FFFFh mean FFFEh).
    fn next_chunk(&mut self, left: u64, mut source: AtapiSource, limit: u16, ctx: &mut Ctx<'_>) {
        let max = match limit {
            0 | 0xffff => 0xfffe,
            l => u64::from(l),
        };
        let mut chunk = left.min(max);
        if chunk < left && chunk % 2 == 1 {
            chunk -= 1;
        }
        if chunk == 0 {
            chunk = left.min(2);
        }
        if let Err(s) = self.fill(&mut source, chunk as usize, ctx) {
            return self.check_condition(s, true);
        }
        self.end = self.pos + chunk as usize;
        [self.regs.lba_mid, self.regs.lba_high] = (chunk as u16).to_le_bytes();
        self.regs.count = IREASON_IO;
        self.regs.status = ST_DRDY | ST_DRQ;
        self.xfer = Transfer::PioIn(PioNext::Atapi { left: left - chunk, source, limit });
        self.raise();
    }

    /// The host has read a whole chunk.
    pub(crate) fn atapi_chunk_done(&mut self, left: u64, source: AtapiSource, limit: u16, ctx: &mut Ctx<'_>) {
        if left == 0 {
            self.atapi_ok();
        } else {
            self.next_chunk(left, source, limit, ctx);
        }
    }

    /// Makes at least `want` bytes wait in the buffer from `pos`, reading
    /// whole sectors of the medium as `source` allows.
    fn fill(&mut self, source: &mut AtapiSource, want: usize, ctx: &mut Ctx<'_>) -> Result<(), Sense> {
        let avail = self.buf.len().saturating_sub(self.pos);
        if avail >= want {
            return Ok(());
        }
        self.buf.drain(..self.pos.min(self.buf.len()));
        self.pos = 0;
        self.end = 0;
        let need = (want - avail) as u64;
        let sectors = need.div_ceil(CD_SECTOR_SIZE).min(source.sectors);
        if sectors > 0 {
            if self.atapi.tray_open {
                return Err(NOT_READY_TRAY_OPEN);
            }
            let Media::Cdrom(cd) = &mut self.media else { return Err(NOT_READY_NO_MEDIUM) };
            let Some(medium) = cd.medium.as_mut() else { return Err(NOT_READY_NO_MEDIUM) };
            let start = self.buf.len();
            let bytes = sectors * CD_SECTOR_SIZE;
            self.buf.resize(start + bytes as usize, 0);
            let offset = source.lba.saturating_mul(CD_SECTOR_SIZE);
            if let Err(e) = read_image(medium.as_mut(), &mut self.buf[start..], offset) {
                ctx.log.io_error(|| format!("CD-ROM read at sector {}: {e}", source.lba));
                self.buf.truncate(start);
                return Err(MEDIUM_ERROR_READ);
            }
            self.stats.read_bytes += bytes;
            source.lba += sectors;
            source.sectors -= sectors;
        }
        // A reply shorter than announced cannot happen; pad it all the same.
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        Ok(())
    }

    /// Moves a packet command's data through the bus master.
    pub(crate) fn dma_atapi(
        &mut self,
        job: DmaJob,
        cursor: &mut PrdCursor,
        to_memory: bool,
        ctx: &mut Ctx<'_>,
    ) -> DmaEnd {
        let DmaJob::Atapi { mut left, mut source } = job else { return DmaEnd::Done };
        if !to_memory {
            ctx.log.bad_value(|| "the bus master's direction does not match the packet's data-in".into());
            self.check_condition(ABORTED, true);
            return DmaEnd::Fault;
        }
        while left > 0 {
            let want = left.min(DMA_CHUNK) as usize;
            if let Err(s) = self.fill(&mut source, want, ctx) {
                self.check_condition(s, true);
                return DmaEnd::Device;
            }
            let data = self.buf.get(self.pos..self.pos + want).unwrap_or(&[]);
            if let Err(e) = cursor.scatter(ctx.mem, data) {
                let end = e.end(ctx);
                self.check_condition(ABORTED, end != DmaEnd::Short);
                return end;
            }
            self.pos += want;
            left -= want as u64;
        }
        self.atapi_ok();
        DmaEnd::Done
    }

    /// The medium's capacity in sectors, or why there is none.
    fn medium_sectors(&self) -> Result<u64, Sense> {
        let Media::Cdrom(cd) = &self.media else { return Err(NOT_READY_NO_MEDIUM) };
        if self.atapi.tray_open {
            return Err(NOT_READY_TRAY_OPEN);
        }
        cd.medium.as_ref().map(|m| m.size() / CD_SECTOR_SIZE).ok_or(NOT_READY_NO_MEDIUM)
    }

    fn has_medium(&self) -> bool {
        matches!(&self.media, Media::Cdrom(cd) if cd.medium.is_some())
    }

    fn serial(&self) -> &str {
        match &self.media {
            Media::Cdrom(cd) => &cd.serial,
            Media::Disk(d) => &d.serial,
            Media::Empty => "",
        }
    }

    /// Runs one packet command.
    fn scsi(&mut self, cdb: &[u8; CDB_LEN], ctx: &mut Ctx<'_>) -> Result<Reply, Sense> {
        let code = cdb[0];
        let reports_attention = !matches!(
            code,
            op::INQUIRY | op::REQUEST_SENSE | op::GET_CONFIGURATION | op::GET_EVENT_STATUS_NOTIFICATION
        );
        if self.atapi.unit_attention && reports_attention {
            self.atapi.unit_attention = false;
            return Err(MEDIUM_CHANGED);
        }
        match code {
            op::TEST_UNIT_READY => self.medium_sectors().map(|_| Reply::Done),
            op::REQUEST_SENSE => self.request_sense(cdb),
            op::INQUIRY => self.inquiry(cdb),
            op::START_STOP_UNIT => self.start_stop_unit(cdb),
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                self.atapi.prevent = cdb[4] & 0x01 != 0;
                Ok(Reply::Done)
            }
            op::READ_CAPACITY => {
                let n = self.medium_sectors()?;
                let last = n.saturating_sub(1).min(u64::from(u32::MAX)) as u32;
                let mut v = last.to_be_bytes().to_vec();
                v.extend((CD_SECTOR_SIZE as u32).to_be_bytes());
                Ok(Reply::Data(v))
            }
            op::READ_10 | op::READ_12 => {
                let n = self.medium_sectors()?;
                let lba = u64::from(be32(cdb, 2));
                let count = if code == op::READ_10 { u64::from(be16(cdb, 7)) } else { u64::from(be32(cdb, 6)) };
                if lba.checked_add(count).is_none_or(|end| end > n) {
                    return Err(LBA_OUT_OF_RANGE);
                }
                Ok(if count == 0 { Reply::Done } else { Reply::Read { lba, sectors: count } })
            }
            op::SEEK_10 => {
                let n = self.medium_sectors()?;
                if u64::from(be32(cdb, 2)) >= n {
                    return Err(LBA_OUT_OF_RANGE);
                }
                Ok(Reply::Done)
            }
            op::READ_TOC => self.read_toc(cdb),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.mode_sense(cdb, ctx),
            op::GET_CONFIGURATION => self.get_configuration(cdb),
            op::GET_EVENT_STATUS_NOTIFICATION => self.get_event_status_notification(cdb),
            op::READ_DISC_INFORMATION => self.read_disc_information(cdb),
            op::READ_TRACK_INFORMATION => self.read_track_information(cdb),
            op::MECHANISM_STATUS => {
                let mut v = vec![0u8; 8];
                if self.atapi.tray_open {
                    v[1] = 0x10;
                }
                reply(v, usize::from(be16(cdb, 8)))
            }
            op::SET_CD_SPEED => Ok(Reply::Done),
            other => {
                ctx.log.packet_command(other);
                Err(INVALID_OPCODE)
            }
        }
    }

    /// REQUEST SENSE: fixed-format sense of the last command, or the unit
    /// attention waiting (which it clears).
    fn request_sense(&mut self, cdb: &[u8; CDB_LEN]) -> Result<Reply, Sense> {
        let s = if self.atapi.unit_attention {
            self.atapi.unit_attention = false;
            MEDIUM_CHANGED
        } else {
            sense(self.atapi.sense_key, self.atapi.asc, self.atapi.ascq)
        };
        let mut v = vec![0u8; 18];
        v[0] = 0x70; // current error, fixed format
        v[2] = s.key;
        v[7] = 10; // additional sense length
        v[12] = s.asc;
        v[13] = s.ascq;
        reply(v, usize::from(cdb[4]))
    }

    /// INQUIRY: the standard data, or vital product data pages 00h and 80h.
    fn inquiry(&self, cdb: &[u8; CDB_LEN]) -> Result<Reply, Sense> {
        let alloc = usize::from(be16(cdb, 3));
        const PERIPHERAL_CD: u8 = 0x05;
        if cdb[1] & 0x01 != 0 {
            let v = match cdb[2] {
                0x00 => vec![PERIPHERAL_CD, 0x00, 0, 2, 0x00, 0x80],
                0x80 => {
                    let serial = self.serial().as_bytes();
                    let mut v = vec![PERIPHERAL_CD, 0x80, 0, serial.len().min(0xff) as u8];
                    v.extend(serial.iter().take(0xff));
                    v
                }
                _ => return Err(INVALID_FIELD),
            };
            return reply(v, alloc);
        }
        if cdb[2] != 0 {
            return Err(INVALID_FIELD);
        }
        let mut v = vec![0u8; 36];
        v[0] = PERIPHERAL_CD;
        v[1] = 0x80; // removable
        v[3] = 0x21; // ATAPI version 2, response data format 1
        v[4] = 31; // additional length
        v[8..16].copy_from_slice(INQUIRY_VENDOR);
        v[16..32].copy_from_slice(INQUIRY_PRODUCT);
        v[32..36].copy_from_slice(INQUIRY_REVISION);
        reply(v, alloc)
    }

    /// START STOP UNIT: LoEj with Start closes the tray, without it opens
    /// the tray (refused while removal is prevented).
    fn start_stop_unit(&mut self, cdb: &[u8; CDB_LEN]) -> Result<Reply, Sense> {
        let (load_eject, start) = (cdb[4] & 0x02 != 0, cdb[4] & 0x01 != 0);
        if !load_eject {
            return Ok(Reply::Done);
        }
        if start {
            if self.atapi.tray_open {
                self.atapi.tray_open = false;
                if self.has_medium() {
                    self.atapi.unit_attention = true;
                    self.atapi.event = EVENT_NEW_MEDIA;
                }
            }
        } else {
            if self.atapi.prevent {
                return Err(REMOVAL_PREVENTED);
            }
            if !self.atapi.tray_open {
                self.atapi.tray_open = true;
                if self.has_medium() {
                    self.atapi.event = EVENT_MEDIA_REMOVAL;
                }
            }
        }
        Ok(Reply::Done)
    }

    /// READ TOC/PMA/ATIP formats 0 (TOC), 1 (session information) and 2
    /// (full TOC) of a disc with one data track.
    fn read_toc(&self, cdb: &[u8; CDB_LEN]) -> Result<Reply, Sense> {
        let sectors = self.medium_sectors()?;
        let msf = cdb[1] & 0x02 != 0;
        let mut format = cdb[2] & 0x0f;
        if format == 0 {
            // SFF-8020i put the format in bits 7:6 of byte 9.
            format = cdb[9] >> 6;
        }
        let track = cdb[6];
        let alloc = usize::from(be16(cdb, 7));
        const DATA_TRACK: u8 = 0x14; // ADR 1, control 4: a data track
        const LEAD_OUT: u8 = 0xaa;
        let mut v = vec![0, 0, 1, 1];
        match format {
            0 => {
                if track > 1 && track != LEAD_OUT {
                    return Err(INVALID_FIELD);
                }
                if track <= 1 {
                    v.extend([0, DATA_TRACK, 1, 0]);
                    v.extend(toc_address(0, msf));
                }
                v.extend([0, DATA_TRACK, LEAD_OUT, 0]);
                v.extend(toc_address(sectors, msf));
            }
            1 => {
                v.extend([0, DATA_TRACK, 1, 0]);
                v.extend(toc_address(0, msf));
            }
            2 => {
                let entry = |point: u8, p: [u8; 4]| [1, DATA_TRACK, 0, point, 0, 0, 0, p[0], p[1], p[2], p[3]];
                v.extend(entry(0xa0, [0, 1, 0x00, 0])); // first track 1, disc type CD-ROM
                v.extend(entry(0xa1, [0, 1, 0, 0])); // last track 1
                v.extend(entry(0xa2, toc_address(sectors, msf))); // lead-out
                v.extend(entry(1, toc_address(0, msf)));
            }
            _ => return Err(INVALID_FIELD),
        }
        let len = (v.len() - 2) as u16;
        v[..2].copy_from_slice(&len.to_be_bytes());
        reply(v, alloc)
    }

    /// A mode page: current and default values, or (`changeable`) the
    /// mask of what MODE SELECT may change: nothing here.
    fn mode_page(&self, page: u8, changeable: bool) -> Vec<u8> {
        let mut v = match page {
            // Read error recovery: no special handling, 5 retries.
            0x01 => vec![0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0],
            // CD device parameters: 60 S units per M, 75 F units per S.
            0x0d => vec![0x0d, 0x06, 0, 0, 0, 60, 0, 75],
            // CD capabilities and mechanical status (MMC-2 layout).
            _ => {
                let mut v = vec![0u8; 22];
                v[0] = 0x2a;
                v[1] = 0x14;
                v[4] = 0x71; // audio play, mode 2 form 1 and 2, multi-session
                             // Lock supported, lock state, eject, tray loading mechanism.
                v[6] = 0x29 | if self.atapi.prevent { 0x02 } else { 0 };
                v[8..10].copy_from_slice(&SPEED_KBS.to_be_bytes());
                v[10..12].copy_from_slice(&256u16.to_be_bytes()); // volume levels
                v[12..14].copy_from_slice(&512u16.to_be_bytes()); // buffer, KiB
                v[14..16].copy_from_slice(&SPEED_KBS.to_be_bytes());
                v
            }
        };
        if changeable {
            v[2..].fill(0);
        }
        v
    }

    /// MODE SENSE (6) and (10): pages 01h, 0Dh, 2Ah, or all of them (3Fh).
    fn mode_sense(&self, cdb: &[u8; CDB_LEN], ctx: &mut Ctx<'_>) -> Result<Reply, Sense> {
        let ten = cdb[0] == op::MODE_SENSE_10;
        let (control, page) = (cdb[2] >> 6, cdb[2] & 0x3f);
        let alloc = if ten { usize::from(be16(cdb, 7)) } else { usize::from(cdb[4]) };
        if control == 3 {
            return Err(SAVING_NOT_SUPPORTED);
        }
        let changeable = control == 1;
        let pages: Vec<u8> = match page {
            0x01 | 0x0d | 0x2a => self.mode_page(page, changeable),
            0x3f => [0x01, 0x0d, 0x2a].iter().flat_map(|&p| self.mode_page(p, changeable)).collect(),
            other => {
                ctx.log.mode_page(other);
                return Err(INVALID_FIELD);
            }
        };
        // Medium type: a data disc, no disc with the tray closed, tray open.
        let medium_type = match (self.atapi.tray_open, self.has_medium()) {
            (true, _) => 0x71,
            (false, true) => 0x01,
            (false, false) => 0x70,
        };
        let mut v = if ten {
            let len = (6 + pages.len()) as u16;
            let [hi, lo] = len.to_be_bytes();
            vec![hi, lo, medium_type, 0, 0, 0, 0, 0]
        } else {
            vec![(3 + pages.len()) as u8, medium_type, 0, 0]
        };
        v.extend(pages);
        reply(v, alloc)
    }

    /// GET CONFIGURATION: the CD-ROM profile and the features Linux's sr
    /// and cdrom drivers ask for.
    fn get_configuration(&self, cdb: &[u8; CDB_LEN]) -> Result<Reply, Sense> {
        let request = cdb[1] & 0x03;
        if request == 3 {
            return Err(INVALID_FIELD);
        }
        let start = be16(cdb, 2);
        let alloc = usize::from(be16(cdb, 7));
        let medium = self.medium_sectors().is_ok();
        // (feature, version, persistent, current, data)
        let features: [(u16, u8, bool, bool, Vec<u8>); 6] = [
            // Profile list: CD-ROM, current with a medium.
            (0x0000, 0, true, true, vec![0x00, 0x08, u8::from(medium), 0]),
            // Core: ATAPI physical interface (2).
            (0x0001, 1, true, true, vec![0, 0, 0, 2, 0, 0, 0, 0]),
            // Morphing: operational change events.
            (0x0002, 1, true, true, vec![0x02, 0, 0, 0]),
            // Removable medium: tray, eject, lock.
            (0x0003, 0, true, true, vec![0x29, 0, 0, 0]),
            // Random readable: 2048-byte blocks, blocking 1.
            (0x0010, 0, false, medium, vec![0, 0, 0x08, 0x00, 0, 1, 0, 0]),
            // CD read.
            (0x001e, 2, false, medium, vec![0, 0, 0, 0]),
        ];
        let mut v = vec![0u8; 8];
        let profile = if medium { PROFILE_CD_ROM } else { 0 };
        v[6..8].copy_from_slice(&profile.to_be_bytes());
        for (number, version, persistent, current, data) in features {
            let wanted = match request {
                0 => number >= start,
                1 => number >= start && current,
                _ => number == start,
            };
            if wanted {
                v.extend(number.to_be_bytes());
                v.push((version << 2) | (u8::from(persistent) << 1) | u8::from(current));
                v.push(data.len() as u8);
                v.extend(data);
            }
        }
        let len = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&len.to_be_bytes());
        reply(v, alloc)
    }

    /// GET EVENT STATUS NOTIFICATION, polled: the media class.
    fn get_event_status_notification(&mut self, cdb: &[u8; CDB_LEN]) -> Result<Reply, Sense> {
        if cdb[1] & 0x01 == 0 {
            // Asynchronous notification is not supported.
            return Err(INVALID_FIELD);
        }
        const MEDIA_CLASS: u8 = 0x10;
        let alloc = usize::from(be16(cdb, 7));
        if cdb[4] & MEDIA_CLASS == 0 {
            // No event class asked for that the drive supports.
            return reply(vec![0, 2, 0x80, MEDIA_CLASS], alloc);
        }
        let event = std::mem::replace(&mut self.atapi.event, EVENT_NONE);
        let present = self.has_medium() && !self.atapi.tray_open;
        let status = (u8::from(present) << 1) | u8::from(self.atapi.tray_open);
        reply(vec![0, 6, 0x04, MEDIA_CLASS, event, status, 0, 0], alloc)
    }

    /// READ DISC INFORMATION: a complete disc, one session, one track.
    fn read_disc_information(&self, cdb: &[u8; CDB_LEN]) -> Result<Reply, Sense> {
        self.medium_sectors()?;
        if cdb[1] & 0x07 != 0 {
            return Err(INVALID_FIELD);
        }
        let mut v = vec![0u8; 34];
        v[1] = 32; // length of what follows
        v[2] = 0x0e; // last session complete, disc complete
        v[3] = 1; // first track
        v[4] = 1; // sessions
        v[5] = 1; // first track of the last session
        v[6] = 1; // last track of the last session
        v[16..24].fill(0xff); // lead-in and last lead-out: none
        reply(v, usize::from(be16(cdb, 7)))
    }

    /// READ TRACK INFORMATION (MMC-5 6.27) of the one data track: asked
    /// for by an address in it (type 0), as track 1 (type 1) or as the
    /// first track of session 1 (type 2). The track is complete, so there
    /// is no open track to report (the Open bit is refused) and no
    /// writable address.
    fn read_track_information(&self, cdb: &[u8; CDB_LEN]) -> Result<Reply, Sense> {
        let sectors = self.medium_sectors()?;
        const OPEN: u8 = 0x04;
        if cdb[1] & OPEN != 0 {
            return Err(INVALID_FIELD);
        }
        let number = be32(cdb, 2);
        match cdb[1] & 0x03 {
            0 if u64::from(number) < sectors => {}
            0 => return Err(LBA_OUT_OF_RANGE),
            1 | 2 if number == 1 => {}
            _ => return Err(INVALID_FIELD),
        }
        let size = sectors.min(u64::from(u32::MAX)) as u32;
        let mut v = vec![0u8; 48];
        v[1] = 46; // length of what follows
        v[2] = 1; // track number
        v[3] = 1; // session number
        v[5] = 0x04; // track mode: data, recorded uninterrupted
        v[6] = 0x01; // data mode 1; not blank, not packet, no reserved track
                     // Byte 7: neither the last recorded nor the next writable address
                     // is valid; track start (8..12), next writable address (12..16),
                     // free blocks (16..20) and packet size (20..24) are 0.
        v[24..28].copy_from_slice(&size.to_be_bytes());
        reply(v, usize::from(be16(cdb, 7)))
    }

    /// IDENTIFY PACKET DEVICE data (ATA/ATAPI-6, IDENTIFY PACKET DEVICE).
    pub(crate) fn identify_packet_device(&self) -> Vec<u8> {
        let mut w = [0u16; 256];
        // ATAPI (15:14 = 10), CD-ROM (12:8 = 5), removable, accelerated
        // DRQ (6:5 = 10), 12-byte packets.
        w[0] = 0x85c0;
        put_string(&mut w, 10, 10, self.serial());
        put_string(&mut w, 23, 4, FIRMWARE);
        put_string(&mut w, 27, 20, MODEL);
        common_identify_words(&mut w, self.settings.dma_mode, self.device);
        // Typical PACKET-to-bus-release and service times, ns.
        w[71] = 30;
        w[72] = 30;
        // NOP (14), DEVICE RESET (9), the PACKET feature set (4).
        let commands = (1 << 14) | (1 << 9) | (1 << 4);
        w[82] = commands;
        w[83] = 1 << 14;
        w[84] = 1 << 14;
        w[85] = commands;
        w[87] = 1 << 14;
        identify_bytes(w)
    }

    /// Puts `medium` in the drive (none: empties it) and closes the tray;
    /// returns the medium that was in.
    pub(crate) fn swap_medium(&mut self, medium: Option<Box<dyn BlockBackend>>) -> Option<Box<dyn BlockBackend>> {
        let Media::Cdrom(cd) = &mut self.media else { return medium };
        let old = std::mem::replace(&mut cd.medium, medium);
        let present = cd.medium.is_some();
        self.atapi.tray_open = false;
        self.atapi.unit_attention = present;
        self.atapi.event = if present { EVENT_NEW_MEDIA } else { EVENT_MEDIA_REMOVAL };
        // A read of the old medium under way fails with the change.
        let reading = match self.xfer {
            Transfer::PioIn(PioNext::Atapi { source, .. }) | Transfer::Dma(DmaJob::Atapi { source, .. }) => {
                source.sectors > 0
            }
            _ => false,
        };
        if reading {
            self.atapi.unit_attention = false;
            self.check_condition(if present { MEDIUM_CHANGED } else { NOT_READY_NO_MEDIUM }, true);
        }
        old
    }
}
