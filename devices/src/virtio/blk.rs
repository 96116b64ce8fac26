//! virtio-blk: a disk over the virtio PCI transport, like QEMU's
//! virtio-blk-pci (transitional device 1001h, modern 1042h).
//!
//! Reference: VIRTIO 1.1, 5.2 "Block Device": 5.2.3 feature bits, 5.2.4 the
//! configuration layout, 5.2.6 device operation.
//!
//! ```text
//! queue        0 requestq (one queue, no MQ)
//! config       0 le64 capacity (sectors)   16 geometry (unused)      36 le32 max_discard_sectors
//!              8 le32 size_max              20 le32 blk_size          40 le32 max_discard_seg
//!             12 le32 seg_max               24 topology (unused)      44 le32 discard_sector_alignment
//!                                           32 u8 writeback           48 le32 max_write_zeroes_sectors
//!                                           34 le16 num_queues        52 le32 max_write_zeroes_seg
//!                                                                     56 u8 write_zeroes_may_unmap
//! request      le32 type | le32 reserved | le64 sector | data... | u8 status (device-writable)
//!              types: 0 IN, 1 OUT, 4 FLUSH, 8 GET_ID, 11 DISCARD, 13 WRITE_ZEROES
//!              status: 0 OK, 1 IOERR, 2 UNSUPP
//! DISCARD and WRITE_ZEROES data: segments of le64 sector | le32 num_sectors | le32 flags (1 UNMAP)
//! ```
//!
//! Model choices:
//! - The request is read as byte streams: the readable buffers hold the
//!   header (and the data of OUT, DISCARD and WRITE_ZEROES); the writable
//!   buffers hold the data of IN and GET_ID, and their last byte is the
//!   status. Where the driver splits them into descriptors does not matter.
//! - Every sector, length and segment is checked against the capacity and
//!   the limits the configuration announces (SEG_MAX and SIZE_MAX when the
//!   driver accepted them, the discard and write-zeroes limits, a request's
//!   total of SEG_MAX * SIZE_MAX bytes); a request that breaks one completes
//!   with IOERR, and the backend never sees it. A chain without a writable
//!   status byte cannot be answered: the device sets DEVICE_NEEDS_RESET.
//! - A notification serves every available chain in one pass, and
//!   signals the driver once for all of them; with `VIRTIO_F_EVENT_IDX` the
//!   device publishes `avail_event` only when it finds the ring empty, and
//!   interrupts only when the driver's `used_event` lies among the chains
//!   just used ([`crate::virtio::Queue::needs_notification`]), so a driver
//!   that keeps the queue full neither notifies nor is interrupted once per
//!   request.
//! - Reads, writes and GET_ID are served where the notification arrives:
//!   a notification written by the vCPU (the BAR's register) serves them on
//!   the vCPU thread, at once, without handing them to the machine's I/O
//!   thread and waiting for it to wake up and raise the interrupt (that
//!   round trip cost more than the request: a 4 KiB read from the host's
//!   page cache takes a few microseconds). The vCPU thread serves for at
//!   most [`INLINE_BUDGET`], and never a FLUSH (an `fdatasync`), DISCARD or
//!   WRITE_ZEROES: from such a chain on, the queue goes to the I/O thread
//!   ([`IoKick`]), which serves it in order; until it has, further
//!   notifications only kick it. Under KVM the notification reaches the
//!   I/O thread by ioeventfd without the vCPU, and is served there.
//!   Without an I/O thread (`IoKick::none()`, in tests) every request runs
//!   at once. Either way a request is complete (its used element written)
//!   before the lock on the device is let go, so a saved state never holds
//!   a request in flight: only `pending`, a queue the I/O thread has yet to
//!   serve, whose chains are still in the available ring.
//! - FLUSH writes the image's metadata and `fdatasync`s every file of the
//!   chain ([`BlockBackend::flush`]).

use std::time::{Duration, Instant};

use persist::{Persist, PersistError};

use crate::block::{BlockBackend, SECTOR_SIZE};
use crate::nic::{IoKick, IoPoll};
use crate::virtio::{
    Context, DescriptorChain, QueueError, VirtioDevice, VirtioPci, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
};

/// Feature: `size_max` is the largest buffer of a request.
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
/// Feature: `seg_max` is the most data buffers of a request.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: `blk_size` holds the logical block size.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature: FLUSH requests.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature: DISCARD requests.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
/// Feature: WRITE_ZEROES requests.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Request status.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// DISCARD / WRITE_ZEROES segment flag: the device may unmap.
const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Entries of the request queue (QEMU's default).
pub const QUEUE_SIZE: u16 = 256;
/// Data buffers per request (QEMU: queue size - 2).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The largest data buffer.
pub const SIZE_MAX: u32 = 1 << 20;
/// The largest request: the data buffers at their limits.
const MAX_REQUEST: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Sectors per DISCARD or WRITE_ZEROES segment (32 MiB), and segments.
pub const MAX_DISCARD_SECTORS: u32 = 65536;
pub const MAX_DISCARD_SEG: u32 = 32;
/// Length of the request header and of a discard segment.
const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;
/// Length of the configuration space.
const CONFIG_LEN: usize = 60;
/// How long a notification serves requests on the vCPU thread before it
/// hands the rest of the queue to the I/O thread. A 1 MiB read from the
/// page cache takes about 100 µs.
pub const INLINE_BUDGET: Duration = Duration::from_micros(300);

/// Counters of the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BlkStats {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    /// Requests answered IOERR or UNSUPP.
    pub errors: u64,
}

/// The virtio-blk device model.
pub struct VirtioBlk {
    disk: Box<dyn BlockBackend>,
    id: [u8; ID_LEN],
    kick: IoKick,
    /// The driver notified the queue; the I/O thread has not served it yet.
    pending: bool,
    /// A notification being passed on by the I/O thread (a doorbell):
    /// served in full, there.
    io_side: bool,
    stats: BlkStats,
    warned: bool,
    buf: Vec<u8>,
}

/// virtio-blk on PCI: what the machine plugs in.
pub type VirtioBlkPci = VirtioPci<VirtioBlk>;

/// The saved state of the device model (the transport saves the queue and
/// the negotiated features). The disk's contents are the image's, not part
/// of the state; its capacity and whether it is read-only are what the
/// guest saw of it, and a restore needs the same on the disk behind the
/// device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VirtioBlkState {
    /// The capacity in sectors the configuration space announced.
    pub capacity: u64,
    /// Whether the device offered `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// The GET_ID answer (the serial, padded with zeros).
    pub id: [u8; ID_LEN],
    /// The driver notified the queue and the I/O thread has not served it.
    pub pending: bool,
    /// The request counters.
    pub stats: BlkStats,
}

/// What a [`PersistError`] of the device model names.
const PART: &str = "virtio-blk";

/// What went wrong with one request.
enum ReqError {
    /// Answer with this status.
    Status(u8, String),
    /// The chain cannot carry an answer: the driver broke the protocol.
    Broken(QueueError),
}

impl VirtioBlk {
    /// A device in front of `disk`, answering GET_ID with `serial` (cut to
    /// 20 bytes); `kick` wakes the I/O thread that serves the requests.
    pub fn new(disk: Box<dyn BlockBackend>, serial: &str, kick: IoKick) -> Self {
        let mut id = [0u8; ID_LEN];
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Self {
            disk,
            id,
            kick,
            pending: false,
            io_side: false,
            stats: BlkStats::default(),
            warned: false,
            buf: Vec::new(),
        }
    }

    /// The request counters.
    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    /// The capacity in sectors.
    fn capacity(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    fn warn_once(&mut self, what: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(target: "devices", "virtio-blk: {what} (logged once)");
        }
    }

    /// Serves every available request of the queue. `inline`: on the
    /// vCPU thread, until this deadline; a request that may block (FLUSH,
    /// DISCARD, WRITE_ZEROES) or the deadline passed hands the rest of the
    /// queue to the I/O thread, the chain left in the available ring.
    fn process(&mut self, ctx: &mut Context<'_>, inline: Option<Instant>) {
        self.pending = false;
        if !ctx.running {
            return;
        }
        let mut used = false;
        while let Some(q) = ctx.queues.first_mut().filter(|q| q.is_usable()) {
            let chain = match q.pop(ctx.mem) {
                Ok(Some(c)) => c,
                // Empty: wait for a notification, unless chains came in
                // before the driver could see that the device waits.
                Ok(None) => match q.rearm(ctx.mem) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        q.mark_broken();
                        ctx.fail(&e);
                        break;
                    }
                },
                Err(e) => {
                    q.mark_broken();
                    ctx.fail(&e);
                    break;
                }
            };
            if let Some(deadline) = inline {
                if !Self::quick(&chain, ctx.mem) || (used && Instant::now() >= deadline) {
                    q.undo_pop(1);
                    self.pending = true;
                    self.kick.kick();
                    break;
                }
            }
            let done = self
                .request(&chain, ctx)
                .and_then(|len| ctx.queues.first_mut().map_or(Ok(()), |q| q.add_used(ctx.mem, chain.head, len)));
            if let Err(e) = done {
                if let Some(q) = ctx.queues.first_mut() {
                    q.mark_broken();
                }
                ctx.fail(&e);
                break;
            }
            used = true;
        }
        if used {
            ctx.signal_used(0);
        }
    }

    /// Whether the request is one the vCPU thread may serve: a read, a
    /// write or GET_ID (an unreadable header too: it only gets IOERR).
    fn quick(chain: &DescriptorChain, mem: &mmu::GuestMemory) -> bool {
        let mut head = Vec::with_capacity(4);
        match chain.read_all(mem, &mut head, 4) {
            Ok(_) if head.len() == 4 => {
                let ty = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                matches!(ty, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_GET_ID)
            }
            _ => true,
        }
    }

    /// Serves one request and writes its status; returns the bytes written
    /// to the chain's writable buffers.
    fn request(&mut self, chain: &DescriptorChain, ctx: &Context<'_>) -> Result<u32, QueueError> {
        let writable = chain.writable_len();
        if writable == 0 {
            return Err(QueueError::NoStatus);
        }
        let (status, written) = match self.serve(chain, ctx) {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(ReqError::Status(s, why)) => {
                self.stats.errors += 1;
                self.warn_once(&format!("request failed: {why}"));
                (s, 0)
            }
            Err(ReqError::Broken(e)) => return Err(e),
        };
        chain.write_at(ctx.mem, writable - 1, &[status])?;
        // The data written and the status byte.
        Ok(u32::try_from(written + 1).unwrap_or(u32::MAX))
    }

    /// Serves one request; returns the data bytes written to the guest.
    fn serve(&mut self, chain: &DescriptorChain, ctx: &Context<'_>) -> Result<u64, ReqError> {
        let ioerr = |why: String| ReqError::Status(VIRTIO_BLK_S_IOERR, why);
        let mut head = Vec::with_capacity(HEADER_LEN);
        chain.read_all(ctx.mem, &mut head, HEADER_LEN).map_err(ReqError::Broken)?;
        if head.len() < HEADER_LEN {
            return Err(ioerr(format!("a request of {} bytes has no complete header", head.len())));
        }
        let ty = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&head[8..16]);
        let sector = u64::from_le_bytes(s);
        // The data the driver gives (after the header) or takes (before the status).
        let out_len = chain.readable_len() - HEADER_LEN as u64;
        let in_len = chain.writable_len() - 1;
        match ty {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let len = if ty == VIRTIO_BLK_T_IN { in_len } else { out_len };
                self.check_segments(chain, ty == VIRTIO_BLK_T_IN, ctx.features)?;
                let offset = self.check_range(sector, len)?;
                if ty == VIRTIO_BLK_T_IN {
                    self.read(chain, ctx, offset, len)
                } else {
                    self.write(chain, ctx, offset, len).map(|()| 0)
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                self.stats.flushes += 1;
                self.disk.flush().map_err(|e| ioerr(format!("flush: {e}")))?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = (ID_LEN as u64).min(in_len) as usize;
                chain.write_at(ctx.mem, 0, &self.id[..n]).map_err(ReqError::Broken)?;
                Ok(n as u64)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => self.ranges(chain, ctx, ty, out_len).map(|()| 0),
            other => Err(ReqError::Status(VIRTIO_BLK_S_UNSUPP, format!("request type {other} is not supported"))),
        }
    }

    /// Checks the data buffers against SEG_MAX and SIZE_MAX, each when the
    /// driver accepted it: a driver that did not (OVMF's asks for neither)
    /// may send buffers of any size and number, and only the request's
    /// total ([`MAX_REQUEST`]) is bounded.
    fn check_segments(&self, chain: &DescriptorChain, read: bool, features: u64) -> Result<(), ReqError> {
        // The header is readable and the status writable: they are no data.
        let bufs = if read { &chain.writable } else { &chain.readable };
        if features & VIRTIO_BLK_F_SEG_MAX != 0 && bufs.len() > SEG_MAX as usize + 1 {
            return Err(ReqError::Status(
                VIRTIO_BLK_S_IOERR,
                format!("{} data buffers, more than seg_max {SEG_MAX}", bufs.len() - 1),
            ));
        }
        let size_max = features & VIRTIO_BLK_F_SIZE_MAX != 0;
        if let Some(b) = bufs.iter().find(|b| size_max && b.len > SIZE_MAX + HEADER_LEN as u32) {
            return Err(ReqError::Status(
                VIRTIO_BLK_S_IOERR,
                format!("a buffer of {} bytes, more than size_max {SIZE_MAX}", b.len),
            ));
        }
        Ok(())
    }

    /// Checks that `len` bytes from `sector` are whole sectors inside the
    /// disk; returns the byte offset.
    fn check_range(&self, sector: u64, len: u64) -> Result<u64, ReqError> {
        let ioerr = |why: String| ReqError::Status(VIRTIO_BLK_S_IOERR, why);
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(ioerr(format!("a data length of {len} bytes is not whole sectors")));
        }
        if len > MAX_REQUEST {
            return Err(ioerr(format!("{len} bytes are more than a request may carry")));
        }
        let end = sector.checked_add(len / SECTOR_SIZE);
        if end.is_none_or(|e| e > self.capacity()) {
            return Err(ioerr(format!(
                "sectors {sector}+{} lie past the end of the disk ({} sectors)",
                len / SECTOR_SIZE,
                self.capacity()
            )));
        }
        Ok(sector * SECTOR_SIZE)
    }

    /// The bounce buffer, at least `len` bytes long (kept at its largest
    /// size, so that it is cleared once, not for every request).
    fn bounce(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
        if buf.len() < len {
            buf.resize(len, 0);
        }
        &mut buf[..len]
    }

    fn read(&mut self, chain: &DescriptorChain, ctx: &Context<'_>, offset: u64, len: u64) -> Result<u64, ReqError> {
        let buf = Self::bounce(&mut self.buf, len as usize);
        self.disk
            .read_at(buf, offset)
            .map_err(|e| ReqError::Status(VIRTIO_BLK_S_IOERR, format!("read at {offset:#x}: {e}")))?;
        let n = chain.write_at(ctx.mem, 0, &self.buf[..len as usize]).map_err(ReqError::Broken)?;
        self.stats.reads += 1;
        self.stats.read_bytes += len;
        Ok(n as u64)
    }

    fn write(&mut self, chain: &DescriptorChain, ctx: &Context<'_>, offset: u64, len: u64) -> Result<(), ReqError> {
        if self.disk.read_only() {
            return Err(ReqError::Status(VIRTIO_BLK_S_IOERR, "a write to a read-only disk".into()));
        }
        let buf = Self::bounce(&mut self.buf, len as usize);
        // `check_range` took `len` from the readable buffers past the header.
        chain.read_at(ctx.mem, HEADER_LEN as u64, buf).map_err(ReqError::Broken)?;
        self.disk
            .write_at(&self.buf[..len as usize], offset)
            .map_err(|e| ReqError::Status(VIRTIO_BLK_S_IOERR, format!("write at {offset:#x}: {e}")))?;
        self.stats.writes += 1;
        self.stats.write_bytes += len;
        Ok(())
    }

    /// DISCARD and WRITE_ZEROES: each segment checked, then applied.
    fn ranges(&mut self, chain: &DescriptorChain, ctx: &Context<'_>, ty: u32, len: u64) -> Result<(), ReqError> {
        let ioerr = |why: String| ReqError::Status(VIRTIO_BLK_S_IOERR, why);
        if self.disk.read_only() {
            return Err(ioerr("a discard or write-zeroes on a read-only disk".into()));
        }
        if len == 0 || !len.is_multiple_of(SEGMENT_LEN as u64) || len / SEGMENT_LEN as u64 > u64::from(MAX_DISCARD_SEG)
        {
            return Err(ioerr(format!("{len} bytes of segments (1 to {MAX_DISCARD_SEG} of 16 bytes)")));
        }
        let mut raw = Vec::with_capacity(HEADER_LEN + len as usize);
        chain.read_all(ctx.mem, &mut raw, HEADER_LEN + len as usize).map_err(ReqError::Broken)?;
        let segs: Vec<(u64, u32, u32)> = raw[HEADER_LEN..]
            .chunks_exact(SEGMENT_LEN)
            .map(|s| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&s[0..8]);
                let n = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
                let flags = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
                (u64::from_le_bytes(b), n, flags)
            })
            .collect();
        for &(sector, n, flags) in &segs {
            if n > MAX_DISCARD_SECTORS {
                return Err(ioerr(format!("a segment of {n} sectors, more than {MAX_DISCARD_SECTORS}")));
            }
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (ty == VIRTIO_BLK_T_DISCARD && flags != 0) {
                return Err(ReqError::Status(VIRTIO_BLK_S_UNSUPP, format!("segment flags {flags:#x}")));
            }
            self.check_range(sector, u64::from(n) * SECTOR_SIZE)?;
        }
        for (sector, n, flags) in segs {
            let (offset, bytes) = (sector * SECTOR_SIZE, u64::from(n) * SECTOR_SIZE);
            let r = if ty == VIRTIO_BLK_T_DISCARD {
                self.stats.discards += 1;
                self.disk.discard(offset, bytes)
            } else {
                self.stats.write_zeroes += 1;
                self.disk.write_zeroes(offset, bytes, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)
            };
            r.map_err(|e| ioerr(format!("discard or write-zeroes at {offset:#x}: {e}")))?;
        }
        Ok(())
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity().to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[56] = 1;
        c
    }
}

impl Persist for VirtioBlk {
    type State = VirtioBlkState;

    fn save(&self) -> VirtioBlkState {
        VirtioBlkState {
            capacity: self.capacity(),
            read_only: self.disk.read_only(),
            id: self.id,
            pending: self.pending,
            stats: self.stats,
        }
    }

    /// Restores the model in front of a disk of the saved capacity and
    /// access. A notification not yet served is served: the I/O thread is
    /// kicked.
    fn restore(&mut self, s: &VirtioBlkState) -> Result<(), PersistError> {
        PersistError::check(s.capacity == self.capacity(), PART, "capacity", || {
            format!("is {} sectors, the disk has {}", s.capacity, self.capacity())
        })?;
        PersistError::check(s.read_only == self.disk.read_only(), PART, "read_only", || {
            format!("is {}, the disk is {}", s.read_only, if self.disk.read_only() { "read-only" } else { "writable" })
        })?;
        self.id = s.id;
        self.pending = s.pending;
        self.stats = s.stats;
        if self.pending {
            self.kick.kick();
        }
        Ok(())
    }
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn debug_label(&self) -> String {
        "virtio-blk".into()
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_EVENT_IDX
            | VIRTIO_F_INDIRECT_DESC
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only() {
            f |= VIRTIO_BLK_F_RO;
        } else {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset.checked_add(i).and_then(|o| c.get(o)).copied().unwrap_or(0);
        }
    }

    fn reset(&mut self) {
        self.pending = false;
    }

    fn notify(&mut self, _queue: usize, ctx: &mut Context<'_>) {
        if !self.kick.is_connected() || self.io_side {
            self.process(ctx, None);
        } else if self.pending {
            // The I/O thread has the queue: it serves it in order.
            self.kick.kick();
        } else {
            // Reads and writes now, on the vCPU thread; the rest goes to
            // the I/O thread (`poll`).
            self.process(ctx, Some(Instant::now() + INLINE_BUDGET));
        }
    }

    fn poll(&mut self, ctx: &mut Context<'_>, _now: Instant) -> Option<Duration> {
        if self.pending {
            self.process(ctx, None);
        }
        None
    }
}

impl IoPoll for VirtioPci<VirtioBlk> {
    fn poll(&mut self, now: Instant) -> Option<Duration> {
        VirtioPci::poll(self, now)
    }

    fn doorbell(&mut self, queue: u16, rings: u64) {
        // On the I/O thread already: serve at once.
        self.device_mut().io_side = true;
        VirtioPci::doorbell(self, queue, rings);
        self.device_mut().io_side = false;
        VirtioPci::poll(self, Instant::now());
    }

    fn io_label(&self) -> String {
        self.device().debug_label()
    }
}

/// A disk in memory for the fuzzer: every access the device makes must
/// lie inside it (an access outside is a device bug, and panics).
#[cfg(any(test, feature = "fuzz"))]
struct FuzzDisk {
    data: Vec<u8>,
}

#[cfg(any(test, feature = "fuzz"))]
impl FuzzDisk {
    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.checked_add(len).filter(|&e| e <= self.data.len() as u64);
        assert!(end.is_some(), "virtio-blk accessed {len} bytes at {offset:#x}, past the disk");
        offset as usize..(offset + len) as usize
    }
}

#[cfg(any(test, feature = "fuzz"))]
impl BlockBackend for FuzzDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let r = self.range(offset, buf.len() as u64);
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let r = self.range(offset, buf.len() as u64);
        self.data[r].copy_from_slice(buf);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> std::io::Result<()> {
        let r = self.range(offset, len);
        self.data[r].fill(0);
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(any(test, feature = "fuzz"))]
impl crate::fuzz::FuzzDevice for VirtioBlkPci {
    fn bars(&self) -> &'static [(usize, u64)] {
        use crate::virtio::pci::{LEGACY_BAR, MODERN_BAR, MODERN_BAR_SIZE, MSIX_BAR};
        &[(MODERN_BAR, MODERN_BAR_SIZE), (LEGACY_BAR, 0x80), (MSIX_BAR, crate::pci::msix::MSIX_BAR_SIZE)]
    }
    fn hot_regs(&self) -> &'static [(usize, u64)] {
        use crate::virtio::pci::{LEGACY_BAR, MODERN_BAR};
        // The queue's notification (most of all), status, queue fields,
        // the ISR; legacy: PFN, notify, status, ISR.
        const R: &[(usize, u64)] = &[
            (MODERN_BAR, 0x3000),
            (MODERN_BAR, 0x3000),
            (MODERN_BAR, 0x3000),
            (MODERN_BAR, 0x14),
            (MODERN_BAR, 0x16),
            (MODERN_BAR, 0x18),
            (MODERN_BAR, 0x1c),
            (MODERN_BAR, 0x1000),
            (LEGACY_BAR, 0x08),
            (LEGACY_BAR, 0x10),
            (LEGACY_BAR, 0x12),
            (LEGACY_BAR, 0x13),
        ];
        R
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        VirtioPci::bar_read(self, bar, offset, data);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        VirtioPci::bar_write(self, bar, offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        crate::pci::PciDevice::write_config(self, offset, data);
    }
    fn poll(&mut self, now: Instant) {
        IoPoll::poll(self, now);
    }
}

/// Sectors of the fuzzed disk (64 KiB).
#[cfg(any(test, feature = "fuzz"))]
const FUZZ_SECTORS: usize = 128;

/// The fuzzing entry point for the request parser: a virtio-blk device
/// over a 64 KiB disk in memory, brought up as Linux's driver does (the
/// features the first eight bytes of `data` leave, VERSION_1 always; the
/// queue of 16 entries at 0x1000), then the rest of `data` as a hostile
/// guest's actions (`crate::fuzz::drive`: register accesses, writes
/// to the rings, descriptors and buffers, polls). Panics only if the model
/// does, if it touches the disk outside its size, or if the state the input
/// left does not restore. Returns the counters.
#[cfg(any(test, feature = "fuzz"))]
pub fn fuzz_requests(data: &[u8]) -> BlkStats {
    use crate::fuzz::{drive, FuzzBackend, Input, FUZZ_RAM};
    use crate::virtio::pci::MODERN_BAR;
    use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
    let Ok(mem) = mmu::GuestMemory::new(FUZZ_RAM) else { return BlkStats::default() };
    let mem = std::sync::Arc::new(mem);
    let disk = FuzzDisk { data: vec![0x5a; FUZZ_SECTORS * SECTOR_SIZE as usize] };
    let blk = VirtioBlk::new(Box::new(disk), "fuzz", IoKick::none());
    let mut dev = VirtioPci::new(blk, mem.clone(), std::sync::Arc::new(crate::irq::NoIrq));
    crate::pci::PciDevice::write_config(&mut dev, crate::pci::config::PCI_COMMAND, &[0x07, 0]);
    let mut input = Input::new(data);
    let features =
        (u64::from(input.u32()) | u64::from(input.u32()) << 32 | VIRTIO_F_VERSION_1) & dev.device().features();
    let mut w = |off: u64, v: u64, len: usize| dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
    w(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(0x08, 0, 4);
    w(0x0c, features & 0xffff_ffff, 4);
    w(0x08, 1, 4);
    w(0x0c, features >> 32, 4);
    w(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    let desc = 0x1000u64;
    w(0x16, 0, 2);
    w(0x18, 16, 2);
    w(0x20, desc, 8);
    w(0x28, desc + 0x400, 8);
    w(0x30, desc + 0x800, 8);
    w(0x1c, 1, 2);
    w(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK), 1);
    // The rings, and the buffers at 0x10000 (request headers and data).
    let hot = [desc, desc + 0x400, desc + 0x800, 0x10000, 0x10010];
    let (_, inbox) = FuzzBackend::with_inbox();
    drive(&mut dev, &mem, &inbox, &hot, input);
    crate::fuzz::assert_restorable(&mut dev);
    dev.device().stats()
}

#[cfg(test)]
mod tests;
