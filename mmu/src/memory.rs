//! Guest physical memory: RAM and ROM regions over anonymous mappings.
//!
//! Layout of a PC with `N` bytes of RAM:
//!
//! ```text
//!   0 .. min(N, PCI_HOLE_START)            low RAM
//!   PCI_HOLE_START .. 4 GiB                the PCI hole: MMIO and ROMs, never RAM
//!   4 GiB .. 4 GiB + (N - PCI_HOLE_START)  high RAM, only when N is above the hole
//! ```
//!
//! Regions never overlap; that is checked when one is added. Reads and writes
//! that touch anything but RAM or ROM fail with [`MemError::Unmapped`], so device
//! models can never reach outside guest memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions};
use parking_lot_free::SpinQueue;

/// The name read-only shadow pages give in [`MemError::ReadOnly`].
const SHADOW_NAME: &str = "shadow RAM (write-protected by PAM)";

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;
/// Where low RAM ends and the PCI hole begins (3 GiB).
pub const PCI_HOLE_START: u64 = 0xC000_0000;
/// Where RAM above the PCI hole is mapped.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// The largest guest RAM this build accepts (1 TiB).
pub const MAX_RAM: u64 = 1 << 40;

/// Errors from guest memory accesses and setup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The access touches an address that no RAM or ROM region backs.
    #[error("guest physical address {addr:#x} (+{len}) is not backed by RAM or ROM")]
    Unmapped { addr: u64, len: u64 },
    /// A write to a read-only region.
    #[error("guest physical address {addr:#x} is read-only ({name})")]
    ReadOnly { addr: u64, name: &'static str },
    /// A region overlaps one that is already mapped, or wraps the address space.
    #[error("memory region {name} at {base:#x}+{len:#x} overlaps another region or wraps")]
    Overlap { name: &'static str, base: u64, len: u64 },
    /// The requested RAM size cannot be used.
    #[error("invalid guest RAM size {0:#x}: it must be at least 1 MiB, at most 1 TiB, and a multiple of 4 KiB")]
    BadSize(u64),
    /// The host refused the mapping.
    #[error("cannot map {len:#x} bytes of guest memory: {reason}")]
    Map { len: u64, reason: String },
}

/// What a region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Guest RAM: readable and writable.
    Ram,
    /// Firmware ROM: readable, guest writes are refused.
    Rom,
}

struct Region {
    base: u64,
    len: u64,
    kind: RegionKind,
    name: &'static str,
    /// Start of the mapping. Captured once so writes can go through `&self`.
    ptr: *mut u8,
    _map: MmapMut,
}

impl Region {
    fn end(&self) -> u64 {
        self.base + self.len
    }
}

/// A guest physical address range that resolves to host memory.
#[derive(Debug, Clone, Copy)]
pub struct HostRange {
    /// Host address of the first byte.
    pub ptr: *mut u8,
    /// Bytes available from `ptr` to the end of the region.
    pub len: u64,
    /// Whether the guest may write it.
    pub writable: bool,
}

/// A RAM region as a KVM memory slot or JIT wants it.
#[derive(Debug, Clone, Copy)]
pub struct RegionInfo {
    pub base: u64,
    pub len: u64,
    pub kind: RegionKind,
    pub name: &'static str,
    /// Host address of the region's first byte.
    pub host_addr: u64,
}

/// All of guest physical memory.
pub struct GuestMemory {
    regions: Vec<Region>,
    ram_size: u64,
    /// One bit per guest page: set while decoded or translated code for the
    /// page is cached somewhere.
    code_bits: Vec<AtomicU64>,
    /// Set when `invalidated` has pages in it.
    invalidation_pending: AtomicBool,
    invalidated: SpinQueue,
    /// One bit per page of the first megabyte: set while the chipset maps
    /// the page read-only (BIOS shadowing, [`GuestMemory::set_shadow_read_only`]).
    shadow_ro: [AtomicU64; SHADOW_WORDS],
    /// Bumped whenever a page's shadow protection changes.
    shadow_generation: AtomicU64,
}

/// Pages of the first megabyte, whose writability the chipset switches.
const SHADOW_PAGES: u64 = (1 << 20) / PAGE_SIZE;
const SHADOW_WORDS: usize = (SHADOW_PAGES / 64) as usize;

// SAFETY: the raw pointers in `Region` point into mappings owned by the same
// `GuestMemory`, which live as long as it does. Guest memory is shared memory by
// nature: every access through these pointers copies bytes with
// `copy_nonoverlapping` (never forms a Rust reference to guest memory), so
// concurrent access from several threads is no more than racing guest stores.
unsafe impl Send for GuestMemory {}
// SAFETY: see the `Send` impl; no method hands out references into guest memory.
unsafe impl Sync for GuestMemory {}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for r in &self.regions {
            l.entry(&format_args!("{} {:?} {:#x}..{:#x}", r.name, r.kind, r.base, r.end()));
        }
        l.finish()
    }
}

fn map_anon(len: u64) -> Result<MmapMut, MemError> {
    let size = usize::try_from(len).map_err(|_| MemError::BadSize(len))?;
    MmapOptions::new().len(size).map_anon().map_err(|e| MemError::Map { len, reason: e.to_string() })
}

impl GuestMemory {
    /// Guest RAM of `ram_size` bytes laid out as a PC lays it out.
    pub fn new(ram_size: u64) -> Result<Self, MemError> {
        if !((1 << 20)..=MAX_RAM).contains(&ram_size) || !ram_size.is_multiple_of(PAGE_SIZE) {
            return Err(MemError::BadSize(ram_size));
        }
        let mut mem = GuestMemory {
            regions: Vec::new(),
            ram_size,
            code_bits: Vec::new(),
            invalidation_pending: AtomicBool::new(false),
            invalidated: SpinQueue::default(),
            shadow_ro: Default::default(),
            shadow_generation: AtomicU64::new(0),
        };
        let low = ram_size.min(PCI_HOLE_START);
        mem.add_region(0, low, RegionKind::Ram, "low-ram", None)?;
        if ram_size > PCI_HOLE_START {
            mem.add_region(HIGH_RAM_START, ram_size - PCI_HOLE_START, RegionKind::Ram, "high-ram", None)?;
        }
        Ok(mem)
    }

    /// Total RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// Map a ROM of `size` bytes at `base`, holding `data` at its start.
    pub fn add_rom(&mut self, name: &'static str, base: u64, size: u64, data: &[u8]) -> Result<(), MemError> {
        if data.len() as u64 > size || size == 0 {
            return Err(MemError::Overlap { name, base, len: size });
        }
        self.add_region(base, size, RegionKind::Rom, name, Some(data))
    }

    fn add_region(
        &mut self,
        base: u64,
        len: u64,
        kind: RegionKind,
        name: &'static str,
        data: Option<&[u8]>,
    ) -> Result<(), MemError> {
        let end = base.checked_add(len).ok_or(MemError::Overlap { name, base, len })?;
        if len == 0 || !base.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MemError::Overlap { name, base, len });
        }
        if self.regions.iter().any(|r| base < r.end() && r.base < end) {
            return Err(MemError::Overlap { name, base, len });
        }
        let mut map = map_anon(len)?;
        if kind == RegionKind::Ram {
            // Guest RAM on transparent huge pages where the host allows them
            // (`madvise` mode): every guest access goes through the host's
            // TLB too, and 4 KiB pages miss it. Best effort.
            #[cfg(target_os = "linux")]
            if let Err(e) = map.advise(memmap2::Advice::HugePage) {
                tracing::debug!(target: "mmu", "{name}: no transparent huge pages: {e}");
            }
        }
        if let Some(d) = data {
            map[..d.len()].copy_from_slice(d);
        }
        let ptr = map.as_mut_ptr();
        self.regions.push(Region { base, len, kind, name, ptr, _map: map });
        self.regions.sort_by_key(|r| r.base);
        let pages = self.regions.iter().map(|r| r.end()).max().unwrap_or(0) / PAGE_SIZE;
        let words = pages.div_ceil(64) as usize;
        self.code_bits.resize_with(words, || AtomicU64::new(0));
        Ok(())
    }

    /// The regions, for KVM memory slots and diagnostics.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.regions
            .iter()
            .map(|r| RegionInfo { base: r.base, len: r.len, kind: r.kind, name: r.name, host_addr: r.ptr as u64 })
            .collect()
    }

    #[inline]
    fn find(&self, addr: u64) -> Option<&Region> {
        // Few regions (two or three): a linear scan beats a tree.
        self.regions.iter().find(|r| addr >= r.base && addr - r.base < r.len)
    }

    /// The host range behind `addr`, if RAM or ROM backs it.
    ///
    /// The pointer is for the soft TLB, KVM memory slots and JIT code. Rust code
    /// outside this crate must not dereference it.
    #[inline]
    pub fn host_range(&self, addr: u64) -> Option<HostRange> {
        let r = self.find(addr)?;
        let off = addr - r.base;
        // `off < r.len`, so the offset stays inside the mapping.
        let writable = r.kind == RegionKind::Ram && !self.is_shadow_read_only(addr);
        Some(HostRange { ptr: r.ptr.wrapping_add(off as usize), len: r.len - off, writable })
    }

    // ---- shadow RAM below 1 MiB ----------------------------------------------

    /// Make the RAM pages of `addr..addr+len` below 1 MiB read-only to the
    /// guest (`read_only`) or writable again: the chipset's PAM registers
    /// write-protect the BIOS shadow. Writes to a read-only page fail with
    /// [`MemError::ReadOnly`] (the CPU drops them, as a PC drops writes to
    /// ROM); [`GuestMemory::load`] still writes it.
    ///
    /// A page made read-only is also marked as a code page, so stores stop
    /// using the fast paths that bypass this check (soft-TLB write tags
    /// filled before the switch, and translated code, test the code-page
    /// bit before every store) and take the checked path. Pages past
    /// 1 MiB are ignored.
    pub fn set_shadow_read_only(&self, addr: u64, len: u64, read_only: bool) {
        let first = addr / PAGE_SIZE;
        let end = addr.saturating_add(len).div_ceil(PAGE_SIZE).min(SHADOW_PAGES);
        for page in first..end {
            let (w, bit) = (&self.shadow_ro[(page / 64) as usize], 1u64 << (page % 64));
            let old = if read_only {
                self.mark_code_page(page * PAGE_SIZE);
                w.fetch_or(bit, Ordering::AcqRel)
            } else {
                w.fetch_and(!bit, Ordering::AcqRel)
            };
            if (old & bit != 0) != read_only {
                self.shadow_generation.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// A count that changes whenever [`GuestMemory::set_shadow_read_only`]
    /// changes a page: a hypervisor that maps the memory itself (KVM)
    /// compares it to learn when to change its mappings.
    #[inline]
    pub fn shadow_generation(&self) -> u64 {
        self.shadow_generation.load(Ordering::Acquire)
    }

    /// Whether the page holding `addr` is shadow RAM made read-only.
    #[inline]
    pub fn is_shadow_read_only(&self, addr: u64) -> bool {
        let page = addr / PAGE_SIZE;
        page < SHADOW_PAGES && self.shadow_ro[(page / 64) as usize].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// The first read-only shadow page `addr..addr+len` touches, if any.
    #[inline]
    fn shadow_read_only_in(&self, addr: u64, len: u64) -> Option<u64> {
        if addr >= SHADOW_PAGES * PAGE_SIZE {
            return None;
        }
        let last = addr.saturating_add(len.max(1) - 1);
        (addr / PAGE_SIZE..=last / PAGE_SIZE)
            .map(|p| p * PAGE_SIZE)
            .find(|&a| self.is_shadow_read_only(a))
            .map(|a| a.max(addr))
    }

    /// Whether RAM or ROM backs the whole of `addr..addr+len`.
    pub fn is_backed(&self, addr: u64, len: u64) -> bool {
        self.check(addr, len).is_ok()
    }

    fn check(&self, addr: u64, len: u64) -> Result<&Region, MemError> {
        let unmapped = MemError::Unmapped { addr, len };
        let r = self.find(addr).ok_or(unmapped.clone())?;
        let end = addr.checked_add(len).ok_or(unmapped.clone())?;
        if end > r.end() {
            return Err(unmapped);
        }
        Ok(r)
    }

    /// Copy guest memory at `addr` into `buf`. An empty `buf` always succeeds.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if buf.is_empty() {
            return Ok(());
        }
        let r = self.check(addr, buf.len() as u64)?;
        let off = (addr - r.base) as usize;
        // SAFETY: `check` proved `off + buf.len() <= r.len`, so the source lies
        // inside the live mapping; `buf` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(r.ptr.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copy `data` into guest RAM at `addr`. ROM refuses the write.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        if data.is_empty() {
            return Ok(());
        }
        let r = self.check(addr, data.len() as u64)?;
        if r.kind != RegionKind::Ram {
            return Err(MemError::ReadOnly { addr, name: r.name });
        }
        if let Some(at) = self.shadow_read_only_in(addr, data.len() as u64) {
            return Err(MemError::ReadOnly { addr: at, name: SHADOW_NAME });
        }
        let off = (addr - r.base) as usize;
        self.note_write(addr, data.len() as u64);
        // SAFETY: `check` proved the destination lies inside the live mapping;
        // `data` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), r.ptr.add(off), data.len()) };
        Ok(())
    }

    /// Load an image into any region, ROM included (firmware setup, not guest writes).
    pub fn load(&self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        if data.is_empty() {
            return Ok(());
        }
        let r = self.check(addr, data.len() as u64)?;
        let off = (addr - r.base) as usize;
        self.note_write(addr, data.len() as u64);
        // SAFETY: as in `write`; ROM is host-writable for loading.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), r.ptr.add(off), data.len()) };
        // `note_write` cleared the code-page bits of read-only shadow pages:
        // set them again, so stores keep taking the checked path.
        if self.shadow_read_only_in(addr, data.len() as u64).is_some() {
            let last = addr + data.len() as u64 - 1;
            for page in addr / PAGE_SIZE..=last / PAGE_SIZE {
                if self.is_shadow_read_only(page * PAGE_SIZE) {
                    self.mark_code_page(page * PAGE_SIZE);
                }
            }
        }
        Ok(())
    }

    /// Copy `len` bytes from `src` (RAM or ROM) to `dst` in RAM, as
    /// `memmove` does when the two overlap. ROM refuses the write.
    pub fn copy(&self, src: u64, dst: u64, len: u64) -> Result<(), MemError> {
        if len == 0 {
            return Ok(());
        }
        let s = self.check(src, len)?;
        let d = self.check(dst, len)?;
        if d.kind != RegionKind::Ram {
            return Err(MemError::ReadOnly { addr: dst, name: d.name });
        }
        if let Some(at) = self.shadow_read_only_in(dst, len) {
            return Err(MemError::ReadOnly { addr: at, name: SHADOW_NAME });
        }
        self.note_write(dst, len);
        // SAFETY: `check` proved both ranges lie inside live mappings;
        // `ptr::copy` allows them to overlap.
        unsafe { std::ptr::copy(s.ptr.add((src - s.base) as usize), d.ptr.add((dst - d.base) as usize), len as usize) };
        Ok(())
    }

    /// Fill `len` bytes at `addr` with `byte`.
    pub fn fill(&self, addr: u64, len: u64, byte: u8) -> Result<(), MemError> {
        if len == 0 {
            return Ok(());
        }
        let r = self.check(addr, len)?;
        if r.kind != RegionKind::Ram {
            return Err(MemError::ReadOnly { addr, name: r.name });
        }
        if let Some(at) = self.shadow_read_only_in(addr, len) {
            return Err(MemError::ReadOnly { addr: at, name: SHADOW_NAME });
        }
        let off = (addr - r.base) as usize;
        self.note_write(addr, len);
        // SAFETY: `check` proved the range lies inside the live mapping.
        unsafe { std::ptr::write_bytes(r.ptr.add(off), byte, len as usize) };
        Ok(())
    }

    /// Read a little-endian value of `N` bytes.
    #[inline]
    pub fn read_bytes<const N: usize>(&self, addr: u64) -> Result<[u8; N], MemError> {
        let mut b = [0u8; N];
        self.read(addr, &mut b)?;
        Ok(b)
    }

    pub fn read_u8(&self, addr: u64) -> Result<u8, MemError> {
        Ok(self.read_bytes::<1>(addr)?[0])
    }
    pub fn read_u16(&self, addr: u64) -> Result<u16, MemError> {
        Ok(u16::from_le_bytes(self.read_bytes(addr)?))
    }
    pub fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        Ok(u32::from_le_bytes(self.read_bytes(addr)?))
    }
    pub fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        Ok(u64::from_le_bytes(self.read_bytes(addr)?))
    }
    pub fn write_u8(&self, addr: u64, v: u8) -> Result<(), MemError> {
        self.write(addr, &[v])
    }
    pub fn write_u16(&self, addr: u64, v: u16) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }
    pub fn write_u32(&self, addr: u64, v: u32) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }
    pub fn write_u64(&self, addr: u64, v: u64) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }

    // ---- code-page tracking -------------------------------------------------

    /// Record that code decoded from the page holding `addr` is cached;
    /// true if the page was not marked before.
    pub fn mark_code_page(&self, addr: u64) -> bool {
        let page = addr / PAGE_SIZE;
        let bit = 1 << (page % 64);
        match self.code_bits.get((page / 64) as usize) {
            Some(w) => w.load(Ordering::Relaxed) & bit == 0 && w.fetch_or(bit, Ordering::Relaxed) & bit == 0,
            None => false,
        }
    }

    /// Whether the page holding `addr` is tracked and holds no cached code
    /// (a store there needs no tracking).
    #[inline]
    pub fn holds_no_code(&self, addr: u64) -> bool {
        let page = addr / PAGE_SIZE;
        self.code_bits.get((page / 64) as usize).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (page % 64)) == 0)
    }

    /// Whether the page holding `addr` has cached code.
    #[inline]
    pub fn is_code_page(&self, addr: u64) -> bool {
        let page = addr / PAGE_SIZE;
        self.code_bits.get((page / 64) as usize).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (page % 64)) != 0)
    }

    /// Called before every write: queue each written page that holds code.
    #[inline]
    pub(crate) fn note_write(&self, addr: u64, len: u64) {
        let first = addr / PAGE_SIZE;
        let last = (addr + len.max(1) - 1) / PAGE_SIZE;
        for page in first..=last {
            let Some(w) = self.code_bits.get((page / 64) as usize) else { continue };
            let bit = 1u64 << (page % 64);
            if w.load(Ordering::Relaxed) & bit != 0 && w.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
                self.invalidated.push(page * PAGE_SIZE);
                self.invalidation_pending.store(true, Ordering::Release);
            }
        }
    }

    /// Whether some code page was written since the last [`take_invalidated`](Self::take_invalidated).
    #[inline]
    pub fn invalidation_pending(&self) -> bool {
        self.invalidation_pending.load(Ordering::Acquire)
    }

    /// The flag behind [`invalidation_pending`](Self::invalidation_pending),
    /// for translated code that reads it itself.
    pub fn invalidation_flag(&self) -> &AtomicBool {
        &self.invalidation_pending
    }

    /// The physical page addresses of code pages written since the last call.
    pub fn take_invalidated(&self) -> Vec<u64> {
        self.invalidation_pending.store(false, Ordering::Release);
        self.invalidated.take()
    }
}

/// A tiny mutex-protected queue, kept separate so `GuestMemory` needs no lock on
/// its hot paths (the queue is touched only when a code page is written).
mod parking_lot_free {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct SpinQueue(Mutex<Vec<u64>>);

    impl SpinQueue {
        pub fn push(&self, v: u64) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(v);
        }
        pub fn take(&self) -> Vec<u64> {
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sizes_are_checked() {
        assert_eq!(GuestMemory::new(0).unwrap_err(), MemError::BadSize(0));
        assert!(GuestMemory::new(MIB + 1).is_err());
        assert!(GuestMemory::new(MAX_RAM + PAGE_SIZE).is_err());
        assert!(GuestMemory::new(MIB).is_ok());
    }

    #[test]
    fn ram_above_the_hole_moves_to_4g() {
        let m = GuestMemory::new(PCI_HOLE_START + 16 * MIB).unwrap();
        let r = m.regions();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].base, r[0].len), (0, PCI_HOLE_START));
        assert_eq!((r[1].base, r[1].len), (HIGH_RAM_START, 16 * MIB));
        m.write_u32(HIGH_RAM_START + 8, 0xdead_beef).unwrap();
        assert_eq!(m.read_u32(HIGH_RAM_START + 8).unwrap(), 0xdead_beef);
        assert!(m.read_u8(PCI_HOLE_START).is_err());
        assert!(m.read_u8(HIGH_RAM_START + 16 * MIB).is_err());
    }

    #[test]
    fn out_of_range_accesses_fail() {
        let m = GuestMemory::new(2 * MIB).unwrap();
        assert!(m.read_u8(2 * MIB).is_err());
        assert!(m.write_u8(2 * MIB, 1).is_err());
        assert!(m.read_u64(u64::MAX - 3).is_err());
        assert!(m.write(u64::MAX, &[1, 2]).is_err());
        assert_eq!(m.read_u8(2 * MIB - 1).unwrap(), 0);
    }

    #[test]
    fn accesses_crossing_a_region_edge_fail() {
        let m = GuestMemory::new(2 * MIB).unwrap();
        assert_eq!(m.read_u32(2 * MIB - 2).unwrap_err(), MemError::Unmapped { addr: 2 * MIB - 2, len: 4 });
        assert!(m.write_u32(2 * MIB - 2, 7).is_err());
        // Nothing was written by the failed access.
        assert_eq!(m.read_u16(2 * MIB - 2).unwrap(), 0);
    }

    #[test]
    fn zero_length_accesses_succeed_anywhere() {
        let m = GuestMemory::new(MIB).unwrap();
        m.read(u64::MAX, &mut []).unwrap();
        m.write(0xdead_0000_0000, &[]).unwrap();
        m.fill(0, 0, 0).unwrap();
    }

    #[test]
    fn copies_move_overlapping_runs_and_refuse_rom() {
        let mut m = GuestMemory::new(MIB).unwrap();
        m.add_rom("bios", 0xffff_0000, 0x10000, &[1, 2, 3, 4]).unwrap();
        m.write(0x1000, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        // Down onto itself, then up onto itself: as `memmove`.
        m.copy(0x1002, 0x1000, 6).unwrap();
        let mut b = [0u8; 8];
        m.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [3, 4, 5, 6, 7, 8, 7, 8]);
        m.copy(0x1000, 0x1002, 6).unwrap();
        m.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [3, 4, 3, 4, 5, 6, 7, 8]);
        // From ROM into RAM, never into ROM, nor past the end of RAM.
        m.copy(0xffff_0000, 0x2000, 4).unwrap();
        assert_eq!(m.read_u32(0x2000).unwrap(), 0x0403_0201);
        assert!(matches!(m.copy(0x2000, 0xffff_0000, 4), Err(MemError::ReadOnly { .. })));
        assert_eq!(m.read_u8(0xffff_0000).unwrap(), 1);
        assert!(m.copy(0x2000, MIB - 2, 4).is_err());
        assert!(m.copy(MIB - 2, 0x2000, 4).is_err());
        m.copy(u64::MAX, u64::MAX, 0).unwrap();
    }

    #[test]
    fn rom_is_read_only_and_regions_do_not_overlap() {
        let mut m = GuestMemory::new(MIB).unwrap();
        m.add_rom("bios", 0xffff_0000, 0x10000, &[0xea, 0x5b]).unwrap();
        assert_eq!(m.read_u16(0xffff_0000).unwrap(), 0x5bea);
        assert!(matches!(m.write_u8(0xffff_0000, 0), Err(MemError::ReadOnly { .. })));
        assert!(m.add_rom("dup", 0xffff_f000, 0x1000, &[]).is_err());
        assert!(m.add_rom("low", 0, 0x1000, &[]).is_err());
        assert!(m.add_rom("wrap", 0xffff_ffff_ffff_f000, 0x2000, &[]).is_err());
        // Loading (firmware setup) may write ROM.
        m.load(0xffff_0002, &[9]).unwrap();
        assert_eq!(m.read_u8(0xffff_0002).unwrap(), 9);
    }

    #[test]
    fn shadow_pages_switch_between_read_only_and_writable() {
        let m = GuestMemory::new(2 * MIB).unwrap();
        m.write_u8(0xf_0000, 1).unwrap();
        assert_eq!(m.shadow_generation(), 0);
        m.set_shadow_read_only(0xf_0000, 0x1_0000, true);
        let g = m.shadow_generation();
        assert_ne!(g, 0);
        m.set_shadow_read_only(0xf_0000, 0x1_0000, true);
        assert_eq!(m.shadow_generation(), g, "no change, no new generation");
        assert!(m.is_shadow_read_only(0xf_ffff) && !m.is_shadow_read_only(0xe_ffff));
        assert!(matches!(m.write_u8(0xf_1234, 2), Err(MemError::ReadOnly { addr: 0xf_1234, .. })));
        assert!(matches!(m.write_u32(0xe_fffe, 2), Err(MemError::ReadOnly { addr: 0xf_0000, .. })));
        assert!(m.fill(0xe_f000, 0x2000, 0).is_err());
        assert_eq!(m.read_u16(0xe_fffe).unwrap(), 0, "a refused write changes nothing");
        assert!(!m.host_range(0xf_0000).unwrap().writable);
        assert!(m.host_range(0xe_0000).unwrap().writable);
        // Stores leave the fast paths: the page counts as a code page, even
        // after the host loads it.
        assert!(m.is_code_page(0xf_8000));
        m.load(0xf_8000, &[9]).unwrap();
        assert!(m.is_code_page(0xf_8000));
        assert_eq!(m.read_u8(0xf_8000).unwrap(), 9);
        m.set_shadow_read_only(0xf_0000, 0x1_0000, false);
        m.write_u8(0xf_1234, 3).unwrap();
        assert_eq!(m.read_u8(0xf_1234).unwrap(), 3);
        // Past 1 MiB nothing changes.
        m.set_shadow_read_only(0x10_0000, 0x1000, true);
        m.write_u8(0x10_0000, 1).unwrap();
    }

    #[test]
    fn writes_to_code_pages_are_queued_once() {
        let m = GuestMemory::new(MIB).unwrap();
        m.mark_code_page(0x3000);
        assert!(m.is_code_page(0x3fff));
        m.write_u8(0x2fff, 1).unwrap();
        assert!(!m.invalidation_pending());
        m.write_u16(0x2fff, 1).unwrap();
        assert!(m.invalidation_pending());
        m.write_u8(0x3001, 1).unwrap();
        assert_eq!(m.take_invalidated(), vec![0x3000]);
        assert!(!m.invalidation_pending());
        assert!(!m.is_code_page(0x3000));
    }
}
