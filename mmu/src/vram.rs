//! Video memory that the guest's stores reach at the speed of RAM.
//!
//! A display adapter's linear framebuffer is memory on the adapter that the
//! CPU sees through a PCI BAR. [`Vram`] is that memory as one anonymous
//! mapping, shared by the adapter's model (which reads and writes it through
//! the safe accessors here) and by guest memory, which decodes it at the
//! BAR's address while the guest has the BAR on
//! ([`GuestMemory::map_vram`](crate::GuestMemory::map_vram)). There the
//! soft TLB gives it host entries as it gives RAM, so the interpreter and
//! translated code load and store it directly.
//!
//! What the guest stores there is tracked per 4 KiB page in a bitmap of
//! the VRAM's own, apart from live migration's log (the VRAM travels with
//! the adapter's state): the checked store paths set a page's bit once the
//! bytes are in place, and translated code gets a write entry for a page
//! only while the page's bit is set, as dirty logging gives them (see
//! [`crate::memory`]). The adapter takes the bitmap
//! ([`Vram::take_dirty`]) when it draws; after a take that returned pages,
//! a write sync ([`GuestMemory::request_write_sync`](crate::GuestMemory::request_write_sync))
//! makes every vCPU drop those entries, and once it is answered every store
//! made through one is in the VRAM. A screen that does not change costs
//! one swap of the bitmap per look.
//!
//! Guest memory's checked accessors reach it too (a CPU's stores that
//! cross a page, string moves, DMA), and set the same bits. Beyond that
//! VRAM is not RAM: no code is cached from it (the adapter writes it
//! without the code-page tracking; decoders fetch from it uncached) and it
//! is not in the RAM image of a saved state.
//!
//! A hypervisor maps it as a memory slot of its own that always logs the
//! guest's writes (KVM's `KVM_MEM_LOG_DIRTY_PAGES`), and follows the BAR
//! when it moves; [`GuestMemory::take_vram_dirty`](crate::GuestMemory::take_vram_dirty)
//! fetches that log into the bitmap before it takes it
//! ([`crate::DirtyLogSource::collect_vram`]). A fetch is exact: the
//! hypervisor write-protects the pages again as it clears its log.

use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

use crate::memory::{MemError, PAGE_SIZE};

/// `base` while the VRAM is not decoded in guest memory.
const NOWHERE: u64 = u64::MAX;

/// An adapter's video memory; see the module documentation.
pub struct Vram {
    /// Start of the mapping, captured once so accesses go through `&self`.
    ptr: *mut u8,
    len: u64,
    _map: MmapMut,
    /// The guest physical address it is decoded at, or [`NOWHERE`].
    base: AtomicU64,
    /// One bit per page stored to through guest memory since the last
    /// [`Vram::take_dirty`].
    dirty: Vec<AtomicU64>,
}

// SAFETY: `ptr` points into `_map`, which the struct owns and which lives as
// long as it does. Every access through it copies bytes with
// `copy_nonoverlapping` or `write_bytes` after a bounds check, never forming
// a Rust reference into the mapping, so concurrent access from several
// threads (the adapter, vCPUs storing through their TLBs) is no more than
// racing guest accesses, as for guest RAM.
unsafe impl Send for Vram {}
// SAFETY: see the `Send` impl; no method hands out references into the mapping.
unsafe impl Sync for Vram {}

impl std::fmt::Debug for Vram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vram").field("len", &self.len).field("base", &self.base()).finish()
    }
}

impl Vram {
    /// `len` bytes of zeroed video memory (a whole number of pages), not
    /// decoded anywhere.
    pub fn new(len: u64) -> Result<Self, MemError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MemError::BadSize(len));
        }
        let size = usize::try_from(len).map_err(|_| MemError::BadSize(len))?;
        let mut map = memmap2::MmapOptions::new()
            .len(size)
            .map_anon()
            .map_err(|e| MemError::Map { len, reason: e.to_string() })?;
        let ptr = map.as_mut_ptr();
        let words = (len / PAGE_SIZE).div_ceil(64) as usize;
        Ok(Vram {
            ptr,
            len,
            _map: map,
            base: AtomicU64::new(NOWHERE),
            dirty: (0..words).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Its size in bytes.
    #[inline]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: a VRAM has at least a page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where guest memory decodes it now.
    pub fn base(&self) -> Option<u64> {
        Some(self.base.load(Ordering::Acquire)).filter(|&b| b != NOWHERE)
    }

    pub(crate) fn set_base(&self, base: Option<u64>) -> Option<u64> {
        let old = self.base.swap(base.unwrap_or(NOWHERE), Ordering::AcqRel);
        Some(old).filter(|&b| b != NOWHERE)
    }

    /// The offset of guest physical `phys` in the VRAM, while it is decoded
    /// there.
    #[inline]
    pub(crate) fn offset_of(&self, phys: u64) -> Option<u64> {
        let base = self.base.load(Ordering::Acquire);
        let off = phys.wrapping_sub(base);
        (base != NOWHERE && off < self.len).then_some(off)
    }

    /// The host address of byte `off` (`off < len`), for soft-TLB entries.
    #[inline]
    pub(crate) fn host(&self, off: u64) -> *mut u8 {
        debug_assert!(off < self.len);
        self.ptr.wrapping_add(off as usize)
    }

    /// The host address of the first byte, for a hypervisor's memory slot.
    /// Rust code outside this crate must not dereference it.
    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Sets the bits of the pages of `off..off+len` (clipped to the end):
    /// for a writer that logs its own stores (a hypervisor's memory slot,
    /// [`crate::DirtyLogSource::collect_vram`]).
    pub fn mark_written(&self, off: u64, len: u64) {
        if off < self.len {
            self.mark(off, len);
        }
    }

    /// Whether `off..off+n` lies inside.
    #[inline]
    fn inside(&self, off: u64, n: usize) -> bool {
        off.checked_add(n as u64).is_some_and(|end| end <= self.len)
    }

    /// Copies the bytes at `off` into `buf`; false (and `buf` untouched)
    /// when they are not all inside.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> bool {
        if !self.inside(off, buf.len()) {
            return false;
        }
        if !buf.is_empty() {
            // SAFETY: `inside` proved `off + buf.len() <= len`: the source
            // lies in the live mapping; `buf` is a distinct Rust buffer.
            unsafe { crate::atomic::load_guest(self.ptr.add(off as usize), buf) };
        }
        true
    }

    /// Copies `data` to `off`; false (and nothing written) when it does not
    /// fit. The adapter's own writes: they do not set the page bits, which
    /// track the guest's stores through memory.
    pub fn write(&self, off: u64, data: &[u8]) -> bool {
        if !self.inside(off, data.len()) {
            return false;
        }
        if !data.is_empty() {
            // SAFETY: `inside` proved the destination lies in the live
            // mapping; `data` is a distinct Rust buffer.
            unsafe { crate::atomic::store_guest(self.ptr.add(off as usize), data) };
        }
        true
    }

    /// The byte at `off`, if inside.
    #[inline]
    pub fn byte(&self, off: u64) -> Option<u8> {
        let mut b = [0u8];
        self.read(off, &mut b).then_some(b[0])
    }

    /// Sets `len` bytes at `off` to `v`, clipped to the end.
    pub fn fill(&self, off: u64, len: u64, v: u8) {
        let end = off.saturating_add(len).min(self.len);
        if off < end {
            // SAFETY: `off < end <= self.len`: the range lies in the live mapping.
            unsafe { std::ptr::write_bytes(self.ptr.add(off as usize), v, (end - off) as usize) };
        }
    }

    /// A copy of all of it.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len as usize];
        self.read(0, &mut v);
        v
    }

    /// The pages stored to through guest memory since the last call (bit
    /// `n` of word `w`: the page at offset `(64 * w + n) * 4096`), cleared
    /// for the next; see the module documentation for the write sync that
    /// must follow a take that returned any.
    pub fn take_dirty(&self) -> Vec<u64> {
        self.dirty.iter().map(|w| w.swap(0, Ordering::SeqCst)).collect()
    }

    /// Sets the bits of the pages of `off..off+len` (clipped to the end),
    /// after the bytes are in place.
    #[inline]
    pub(crate) fn mark(&self, off: u64, len: u64) {
        let first = off / PAGE_SIZE;
        let last = off.saturating_add(len.max(1) - 1).min(self.len - 1) / PAGE_SIZE;
        for page in first..=last {
            if let Some(w) = self.dirty.get((page / 64) as usize) {
                w.fetch_or(1 << (page % 64), Ordering::SeqCst);
            }
        }
    }

    /// Whether the page holding `off` was stored to since the last take.
    #[inline]
    pub(crate) fn is_dirty(&self, off: u64) -> bool {
        let page = off / PAGE_SIZE;
        self.dirty.get((page / 64) as usize).is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (page % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_bounded_and_only_memory_stores_set_bits() {
        let v = Vram::new(2 * PAGE_SIZE).unwrap();
        assert!(Vram::new(0).is_err() && Vram::new(100).is_err());
        assert!(v.write(PAGE_SIZE - 2, &[1, 2, 3, 4]));
        assert!(!v.write(2 * PAGE_SIZE - 2, &[1, 2, 3]));
        assert!(!v.write(u64::MAX, &[1]));
        let mut b = [0u8; 4];
        assert!(v.read(PAGE_SIZE - 2, &mut b));
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(!v.read(2 * PAGE_SIZE, &mut b));
        assert_eq!(v.byte(2 * PAGE_SIZE - 1), Some(0));
        assert_eq!(v.byte(2 * PAGE_SIZE), None);
        v.fill(PAGE_SIZE, u64::MAX, 7);
        assert_eq!(v.byte(2 * PAGE_SIZE - 1), Some(7));
        assert_eq!(v.take_dirty(), vec![0], "the adapter's own writes are not the guest's stores");
        v.mark(PAGE_SIZE - 1, 2);
        assert!(v.is_dirty(0) && v.is_dirty(PAGE_SIZE));
        assert_eq!(v.take_dirty(), vec![0b11]);
        assert!(!v.is_dirty(0));
        assert_eq!(v.offset_of(0), None);
        v.set_base(Some(0xe000_0000));
        assert_eq!(v.offset_of(0xe000_1000), Some(PAGE_SIZE));
        assert_eq!(v.offset_of(0xe000_2000), None);
        assert_eq!(v.offset_of(0xdfff_ffff), None);
    }
}
