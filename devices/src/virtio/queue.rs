//! The split virtqueue, device side.
//!
//! Reference: Virtual I/O Device (VIRTIO) Version 1.1, section 2.6 "Split
//! Virtqueues": 2.6.5 the descriptor table, 2.6.6 the available ring, 2.6.8
//! the used ring, 2.6.5.3 indirect descriptors, 2.6.7 and 2.6.10 used-buffer
//! and available-buffer notification suppression (`VIRTIO_F_EVENT_IDX`).
//!
//! ```text
//! descriptor (16 bytes)   le64 addr | le32 len | le16 flags | le16 next
//!                         flags: 1 NEXT, 2 WRITE (device writes), 4 INDIRECT
//! available ring          le16 flags | le16 idx | le16 ring[size] | le16 used_event
//! used ring               le16 flags | le16 idx | {le32 id, le32 len}[size] | le16 avail_event
//! ```
//!
//! Everything the driver wrote is untrusted: the available index may jump
//! by more than the queue size, a head or `next` may point past the table,
//! a chain may loop, an indirect table may be empty, misaligned or nested,
//! and any address may lie outside guest RAM. Each of these is a
//! [`QueueError`]; the transport then marks the device as needing a reset
//! (2.1.1) instead of trusting the ring any further. Guest memory is only
//! touched through [`GuestMemory::read`] and [`GuestMemory::write`], which
//! check every range.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use mmu::GuestMemory;
use persist::{Persist, PersistError};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver asks for no used-buffer notifications.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks for no available-buffer notifications.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// The largest queue a split virtqueue may have (2.6).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// The most descriptors one indirect table may hold here. Linux uses at
/// most MAX_SKB_FRAGS + 2 per packet; a table this large is a hostile one.
const MAX_INDIRECT: u32 = 1024;

/// What is wrong with a ring the driver set up.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// The queue size is zero, too large or not a power of two.
    #[error("queue size {0} is not a power of two from 1 to {max}", max = MAX_QUEUE_SIZE)]
    BadSize(u16),
    /// A ring area is misaligned or not in guest RAM.
    #[error("the {area} at {addr:#x} ({len} bytes) is misaligned or outside guest RAM")]
    BadRing { area: &'static str, addr: u64, len: u64 },
    /// The available index moved further than the queue holds.
    #[error("the available index moved from {last} to {now}, more than the queue size {size}")]
    AvailOverrun { last: u16, now: u16, size: u16 },
    /// A head or `next` index points past the descriptor table.
    #[error("descriptor index {index} is outside the table of {size}")]
    BadIndex { index: u32, size: u32 },
    /// A chain revisits a descriptor or is longer than its table.
    #[error("a descriptor chain is longer than its table ({0} descriptors): it loops")]
    ChainLoop(u32),
    /// An indirect table that is empty, misaligned in size, too large or nested.
    #[error("indirect table at {addr:#x} of {len} bytes is empty, not a multiple of 16, too large or nested")]
    BadIndirect { addr: u64, len: u32 },
    /// A buffer lies (partly) outside guest RAM.
    #[error("buffer at {addr:#x} ({len} bytes) lies outside guest RAM")]
    BadBuffer { addr: u64, len: u32 },
    /// A chain's buffers add up to more than 4 GiB.
    #[error("a descriptor chain's buffers add up to more than 4 GiB")]
    ChainTooLong,
    /// Guest memory refused an access to the rings themselves.
    #[error("the ring at {0:#x} cannot be accessed")]
    RingAccess(u64),
    /// A request chain has no device-writable byte for its status.
    #[error("a request has no writable buffer for its status")]
    NoStatus,
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A descriptor chain taken from the available ring: the buffers the
/// device reads, then those it writes, each already checked to lie in RAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescriptorChain {
    /// The head index, which goes back in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Buffer>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Buffer>,
}

impl DescriptorChain {
    /// Total bytes of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Total bytes of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Copies the readable buffers into `out` (appending), at most `limit`
    /// bytes. Returns false if the chain held more than `limit`.
    pub fn read_all(&self, mem: &GuestMemory, out: &mut Vec<u8>, limit: usize) -> Result<bool, QueueError> {
        let mut complete = true;
        for b in &self.readable {
            let room = limit.saturating_sub(out.len());
            let take = (b.len as usize).min(room);
            if take < b.len as usize {
                complete = false;
            }
            let start = out.len();
            out.resize(start + take, 0);
            mem.read(b.addr, &mut out[start..]).map_err(|_| QueueError::BadBuffer { addr: b.addr, len: b.len })?;
            if !complete {
                break;
            }
        }
        Ok(complete)
    }

    /// Fills `out` from the readable buffers, from byte `offset` of the
    /// chain's readable space. Returns how many bytes the chain had for it
    /// (less than `out.len()` when it ends first).
    pub fn read_at(&self, mem: &GuestMemory, mut offset: u64, out: &mut [u8]) -> Result<usize, QueueError> {
        let mut read = 0;
        for b in &self.readable {
            if read == out.len() {
                break;
            }
            let len = u64::from(b.len);
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = ((len - offset) as usize).min(out.len() - read);
            let addr = b.addr + offset;
            mem.read(addr, &mut out[read..read + n]).map_err(|_| QueueError::BadBuffer { addr: b.addr, len: b.len })?;
            read += n;
            offset = 0;
        }
        Ok(read)
    }

    /// Writes `data` into the writable buffers from byte `offset` of the
    /// chain's writable space. Returns how many bytes fitted.
    pub fn write_at(&self, mem: &GuestMemory, mut offset: u64, mut data: &[u8]) -> Result<usize, QueueError> {
        let mut written = 0;
        for b in &self.writable {
            if data.is_empty() {
                break;
            }
            let len = u64::from(b.len);
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = ((len - offset) as usize).min(data.len());
            let addr = b.addr + offset;
            mem.write(addr, &data[..n]).map_err(|_| QueueError::BadBuffer { addr: b.addr, len: b.len })?;
            written += n;
            data = &data[n..];
            offset = 0;
        }
        Ok(written)
    }
}

/// The saved state of a queue: what the driver programmed and how far the
/// device has gone through the rings. The rings themselves are guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QueueState {
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver enabled the queue.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// The next available entry the device takes.
    pub next_avail: u16,
    /// The next used entry the device fills.
    pub next_used: u16,
    /// `VIRTIO_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// The used index at the last notification decision.
    pub signalled_used: Option<u16>,
    /// The driver broke the ring.
    pub broken: bool,
}

/// One split virtqueue as the device sees it.
#[derive(Debug, Clone)]
pub struct Queue {
    /// The largest size the device offers.
    pub max_size: u16,
    /// The size the driver chose (the maximum until it writes another).
    pub size: u16,
    /// Whether the driver enabled the queue.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring ("driver area").
    pub avail_ring: u64,
    /// Guest address of the used ring ("device area").
    pub used_ring: u64,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// `VIRTIO_F_EVENT_IDX` was negotiated.
    event_idx: bool,
    /// The used index at the last notification decision.
    signalled_used: Option<Wrapping<u16>>,
    /// The driver broke the ring; nothing more is taken from it until a reset.
    broken: bool,
}

impl Queue {
    /// A queue of at most `max_size` entries, disabled.
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            next_avail: Wrapping(0),
            next_used: Wrapping(0),
            event_idx: false,
            signalled_used: None,
            broken: false,
        }
    }

    /// Back to the state after a device reset.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Enables or disables `VIRTIO_F_EVENT_IDX` handling.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether the driver broke the ring.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the queue is enabled and intact.
    pub fn is_usable(&self) -> bool {
        self.ready && !self.broken
    }

    /// Marks the ring as broken (the transport reports it to the driver).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// The next available index the device will read.
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// The next used index the device will write.
    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Checks the size and that the three areas are aligned and in RAM,
    /// as the driver enables the queue.
    pub fn validate(&self, mem: &GuestMemory) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || size > self.max_size.min(MAX_QUEUE_SIZE) || !size.is_power_of_two() {
            return Err(QueueError::BadSize(size));
        }
        let n = u64::from(size);
        let areas = [
            ("descriptor table", self.desc_table, DESC_SIZE * n, 16),
            ("available ring", self.avail_ring, 6 + 2 * n, 2),
            ("used ring", self.used_ring, 6 + 8 * n, 4),
        ];
        for (area, addr, len, align) in areas {
            if addr % align != 0 || !mem.is_backed(addr, len) {
                return Err(QueueError::BadRing { area, addr, len });
            }
        }
        Ok(())
    }

    fn read_u16(mem: &GuestMemory, addr: u64) -> Result<u16, QueueError> {
        mem.read_u16(addr).map_err(|_| QueueError::RingAccess(addr))
    }

    fn write_u16(mem: &GuestMemory, addr: u64, v: u16) -> Result<(), QueueError> {
        mem.write_u16(addr, v).map_err(|_| QueueError::RingAccess(addr))
    }

    /// The driver's available index.
    fn avail_idx(&self, mem: &GuestMemory) -> Result<Wrapping<u16>, QueueError> {
        Ok(Wrapping(Self::read_u16(mem, self.avail_ring + 2)?))
    }

    /// How many chains wait in the available ring.
    pub fn pending(&self, mem: &GuestMemory) -> Result<u16, QueueError> {
        if !self.is_usable() {
            return Ok(0);
        }
        let idx = self.avail_idx(mem)?;
        let pending = (idx - self.next_avail).0;
        if pending > self.size {
            return Err(QueueError::AvailOverrun { last: self.next_avail.0, now: idx.0, size: self.size });
        }
        Ok(pending)
    }

    /// Takes the next available chain, or `None` when the ring is empty.
    pub fn pop(&mut self, mem: &GuestMemory) -> Result<Option<DescriptorChain>, QueueError> {
        if self.pending(mem)? == 0 {
            return Ok(None);
        }
        // The ring entry is read after the index (2.6.13: the driver writes
        // the entry, then a barrier, then the index).
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail.0 % self.size);
        let head = Self::read_u16(mem, self.avail_ring + 4 + 2 * slot)?;
        let chain = self.walk(mem, head)?;
        self.next_avail += Wrapping(1);
        Ok(Some(chain))
    }

    /// Puts the last `count` popped chains back (they were not used).
    pub fn undo_pop(&mut self, count: u16) {
        self.next_avail -= Wrapping(count);
    }

    /// Follows the chain starting at `head`, checking every step.
    fn walk(&self, mem: &GuestMemory, head: u16) -> Result<DescriptorChain, QueueError> {
        let size = u32::from(self.size);
        let mut chain = DescriptorChain { head, ..Default::default() };
        let mut total: u64 = 0;
        // (table address, table length in descriptors) of where `index` lives.
        let mut table = (self.desc_table, size);
        let mut in_indirect = false;
        let mut index = u32::from(head);
        let mut visited: u32 = 0;
        loop {
            if index >= table.1 {
                return Err(QueueError::BadIndex { index, size: table.1 });
            }
            visited += 1;
            if visited > table.1 {
                return Err(QueueError::ChainLoop(table.1));
            }
            let at = table.0 + DESC_SIZE * u64::from(index);
            let mut raw = [0u8; 16];
            mem.read(at, &mut raw).map_err(|_| QueueError::RingAccess(at))?;
            let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            let next = u16::from_le_bytes([raw[14], raw[15]]);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                // 2.6.5.3.1: no nesting, not combined with NEXT, a whole
                // number of descriptors.
                let count = len / 16;
                if in_indirect
                    || flags & VIRTQ_DESC_F_NEXT != 0
                    || len == 0
                    || len % 16 != 0
                    || count > MAX_INDIRECT
                    || addr % 16 != 0
                    || !mem.is_backed(addr, u64::from(len))
                {
                    return Err(QueueError::BadIndirect { addr, len });
                }
                table = (addr, count);
                in_indirect = true;
                index = 0;
                visited = 0;
                continue;
            }
            if len > 0 && !mem.is_backed(addr, u64::from(len)) {
                return Err(QueueError::BadBuffer { addr, len });
            }
            total += u64::from(len);
            if total > u64::from(u32::MAX) {
                return Err(QueueError::ChainTooLong);
            }
            let buf = Buffer { addr, len };
            if flags & VIRTQ_DESC_F_WRITE != 0 {
                chain.writable.push(buf);
            } else {
                chain.readable.push(buf);
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            index = u32::from(next);
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        let slot = u64::from(self.next_used.0 % self.size);
        let at = self.used_ring + 4 + 8 * slot;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(at, &elem).map_err(|_| QueueError::RingAccess(at))?;
        self.next_used += Wrapping(1);
        // The element must be visible before the index that publishes it.
        fence(Ordering::Release);
        Self::write_u16(mem, self.used_ring + 2, self.next_used.0)
    }

    /// With `VIRTIO_F_EVENT_IDX`, asks the driver to notify once it makes
    /// available the entry after those the device has taken (2.6.10).
    pub fn publish_avail_event(&self, mem: &GuestMemory) -> Result<(), QueueError> {
        if !self.event_idx || !self.is_usable() {
            return Ok(());
        }
        let at = self.used_ring + 4 + 8 * u64::from(self.size);
        Self::write_u16(mem, at, self.next_avail.0)?;
        // The next look at the available index must come after this store.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Before the device waits for a notification: publishes avail_event
    /// ([`Queue::publish_avail_event`]), then returns how many chains wait
    /// now. With `VIRTIO_F_EVENT_IDX` a chain the driver made available
    /// before it saw the new event brings no notification (the driver took
    /// the device for busy), so a device that finds any must serve them
    /// instead of waiting.
    pub fn rearm(&self, mem: &GuestMemory) -> Result<u16, QueueError> {
        self.publish_avail_event(mem)?;
        self.pending(mem)
    }

    /// Whether the driver wants a notification for the buffers used since
    /// the last decision (2.6.7.2).
    pub fn needs_notification(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        fence(Ordering::SeqCst);
        let new = self.next_used;
        let old = self.signalled_used.replace(new);
        if self.event_idx {
            let Some(old) = old else { return Ok(true) };
            let at = self.avail_ring + 4 + 2 * u64::from(self.size);
            let used_event = Wrapping(Self::read_u16(mem, at)?);
            // vring_need_event: the event index lies in (old, new].
            Ok((new - used_event - Wrapping(1)).0 < (new - old).0)
        } else {
            let flags = Self::read_u16(mem, self.avail_ring)?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Checks `s` for this queue before [`Persist::restore`] takes it. A
    /// queue the device uses (enabled and intact) must have a power-of-two
    /// size up to the device's maximum, rings aligned as 2.6 asks whose
    /// areas do not wrap the address space, and at most a queue's worth of
    /// chains taken and not yet used. A queue the device does not use holds
    /// whatever the driver wrote; it is checked when the driver enables it.
    /// Whether the rings lie in guest RAM is the transport's check, which
    /// knows the memory.
    pub(crate) fn check(&self, s: &QueueState) -> Result<(), PersistError> {
        if !s.ready || s.broken {
            return Ok(());
        }
        PersistError::check(s.size.is_power_of_two(), PART, "size", || {
            format!("is {}, not a power of two, in a queue the device uses", s.size)
        })?;
        PersistError::check_max(PART, "size", s.size, self.max_size.min(MAX_QUEUE_SIZE))?;
        let n = u64::from(s.size);
        let areas = [
            ("desc_table", s.desc_table, DESC_SIZE * n, 16),
            ("avail_ring", s.avail_ring, 6 + 2 * n, 2),
            ("used_ring", s.used_ring, 6 + 8 * n, 4),
        ];
        for (field, addr, len, align) in areas {
            PersistError::check(addr % align == 0 && addr.checked_add(len).is_some(), PART, field, || {
                format!("is {addr:#x}: not {align}-byte aligned, or its {len} bytes wrap the address space")
            })?;
        }
        let in_flight = s.next_avail.wrapping_sub(s.next_used);
        PersistError::check(in_flight <= s.size, PART, "next_avail", || {
            format!(
                "is {}, {in_flight} chains ahead of next_used {}: more than the queue size {}",
                s.next_avail, s.next_used, s.size
            )
        })
    }

    /// Takes a state [`Queue::check`] accepted.
    pub(crate) fn load(&mut self, s: &QueueState) {
        self.size = s.size;
        self.ready = s.ready;
        self.desc_table = s.desc_table;
        self.avail_ring = s.avail_ring;
        self.used_ring = s.used_ring;
        self.next_avail = Wrapping(s.next_avail);
        self.next_used = Wrapping(s.next_used);
        self.event_idx = s.event_idx;
        self.signalled_used = s.signalled_used.map(Wrapping);
        self.broken = s.broken;
    }
}

/// What a [`PersistError`] of a queue names.
const PART: &str = "virtio queue";

impl Persist for Queue {
    type State = QueueState;

    fn save(&self) -> QueueState {
        QueueState {
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
            next_avail: self.next_avail.0,
            next_used: self.next_used.0,
            event_idx: self.event_idx,
            signalled_used: self.signalled_used.map(|w| w.0),
            broken: self.broken,
        }
    }

    fn restore(&mut self, s: &QueueState) -> Result<(), PersistError> {
        self.check(s)?;
        self.load(s);
        Ok(())
    }
}

/// A driver's view of a split ring, for tests of the device side.
#[cfg(any(test, feature = "test-utils"))]
pub mod testing {
    use super::*;

    /// Lays out a ring in guest memory and plays the driver.
    pub struct DriverRing {
        pub size: u16,
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        next_desc: u16,
        avail_idx: u16,
        used_seen: u16,
    }

    impl DriverRing {
        /// A ring of `size` entries at `base` (desc, then avail, then used at the next 4 KiB).
        pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Self {
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
            mem.fill(base, used + 6 + 8 * u64::from(size) - base, 0).unwrap();
            Self { size, desc, avail, used, next_desc: 0, avail_idx: 0, used_seen: 0 }
        }

        /// Points `q` at this ring and enables it.
        pub fn attach(&self, q: &mut Queue) {
            q.size = self.size;
            q.desc_table = self.desc;
            q.avail_ring = self.avail;
            q.used_ring = self.used;
            q.ready = true;
        }

        /// Writes descriptor `i` raw.
        pub fn write_desc(&self, mem: &GuestMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let at = self.desc + 16 * u64::from(i);
            mem.write_u64(at, addr).unwrap();
            mem.write_u32(at + 8, len).unwrap();
            mem.write_u16(at + 12, flags).unwrap();
            mem.write_u16(at + 14, next).unwrap();
        }

        /// Adds a chain of (addr, len, writable) buffers; returns its head.
        pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_desc;
            for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                let i = (self.next_desc + k as u16) % self.size;
                let last = k + 1 == bufs.len();
                let flags = if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                self.write_desc(mem, i, addr, len, flags, (i + 1) % self.size);
            }
            self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
            self.publish(mem, head);
            head
        }

        /// Puts `head` in the available ring and bumps the index.
        pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
            let slot = u64::from(self.avail_idx % self.size);
            mem.write_u16(self.avail + 4 + 2 * slot, head).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_u16(self.avail + 2, self.avail_idx).unwrap();
        }

        /// Sets the available index directly.
        pub fn set_avail_idx(&mut self, mem: &GuestMemory, idx: u16) {
            self.avail_idx = idx;
            mem.write_u16(self.avail + 2, idx).unwrap();
        }

        /// Used elements not seen yet: (id, len).
        pub fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u32, u32)> {
            let idx = mem.read_u16(self.used + 2).unwrap();
            let mut out = Vec::new();
            while self.used_seen != idx {
                let slot = u64::from(self.used_seen % self.size);
                let at = self.used + 4 + 8 * slot;
                out.push((mem.read_u32(at).unwrap(), mem.read_u32(at + 4).unwrap()));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests;
