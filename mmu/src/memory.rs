//! Guest physical memory: RAM and ROM regions over anonymous mappings (or,
//! for RAM restored from a saved state, a private mapping of its image).
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
//!
//! # Code pages
//!
//! Guest memory keeps one bit per page: set while some consumer (a vCPU's
//! decoded-block cache, its translated code) holds code made from the page.
//! Each consumer registers its own [`CodeWatch`] ([`GuestMemory::code_watch`]).
//! A write to a marked page, by a CPU or a device (DMA through
//! [`GuestMemory::write`], [`load`](GuestMemory::load),
//! [`copy`](GuestMemory::copy) or [`fill`](GuestMemory::fill); a locked
//! store through [`crate::atomic`] that changes bytes too), clears the
//! bit and queues the page on every watch, setting every watch's flag; each
//! consumer checks its own flag and drains its own queue. A write to a page
//! without code costs one relaxed load of its bit.
//!
//! A page newly marked by one consumer is also queued on the others, as
//! [`CodeChanges::marked`]: a vCPU whose soft TLB lets translated code store
//! to the page without looking at the bit drops those entries.
//!
//! # Dirty logging
//!
//! For live migration, guest memory also keeps one dirty bit per page
//! while logging is on ([`GuestMemory::start_dirty_log`]): every write
//! through this module (CPU stores on their checked paths, DMA, the
//! atomics) sets the bits of the pages it wrote once its bytes are in
//! place, with a read-modify-write that orders the bytes before the bit.
//! [`GuestMemory::take_dirty`] swaps the bitmap out, word by word, for
//! zeros, so a page written after the swap is dirty again.
//!
//! A writer whose stores bypass this module and that logs them itself (a
//! hypervisor's VM) registers as a [`DirtyLogSource`]: it starts and stops
//! logging with the bitmap, and [`GuestMemory::take_dirty`] first merges
//! its log into the bitmap.
//!
//! Translated code stores through a soft-TLB entry without calling here,
//! so while logging is on a TLB gives a page a write entry for translated
//! code only when the page is dirty already, and a vCPU that holds such
//! entries says so on its watch ([`CodeWatch::note_fast_writes`]) before it
//! looks at the dirty bit. After a swap, [`GuestMemory::request_write_sync`]
//! asks every watch's owner to drop those entries; once
//! [`GuestMemory::write_sync_done`] says each did (or held none), every
//! store through an entry made before the swap is in memory, its page is
//! among the pages the swap returned, and later stores go through the
//! checked path and set the bit again.
//!
//! Ordering: a consumer marks a page (a read-modify-write of its bit) before
//! it reads the page's bytes to decode them, and the writes of this module
//! look at the bit only once their bytes are in place. A consumer told of a
//! page that decodes it again reads the new bytes, and a write that begins
//! after the mark finds the bit set. What stays open is a store that found
//! the bit clear just before another vCPU marked the page and whose bytes
//! reach memory only after that vCPU read them: a store racing with the
//! decode of its own page (closing it would take a fence on every store).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use memmap2::{MmapMut, MmapOptions};

use crate::vram::Vram;

/// The name read-only shadow pages give in [`MemError::ReadOnly`].
const SHADOW_NAME: &str = "shadow RAM (write-protected by PAM)";

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;
/// The legacy VGA window, which a PC with a VGA adapter decodes on the
/// adapter ([`GuestMemory::with_vga_window`]).
pub const VGA_WINDOW: std::ops::Range<u64> = 0xA_0000..0xC_0000;
/// Where low RAM ends and the PCI hole begins (3 GiB).
pub const PCI_HOLE_START: u64 = 0xC000_0000;
/// Where RAM above the PCI hole is mapped.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// Where the video memory may be decoded: below 4 GiB (a 32-bit BAR).
pub const VRAM_LIMIT: u64 = 1 << 32;
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
    /// An atomic access this host cannot make as one host atomic (a
    /// misaligned one on a host without split locks, a 16-byte one on a
    /// host without a 16-byte compare-exchange, or a size other than 1, 2,
    /// 4, 8 or 16 bytes); see [`crate::atomic`].
    #[error("guest physical address {addr:#x} (+{len}) cannot be accessed atomically on this host")]
    NotAtomic { addr: u64, len: u64 },
}

/// What a region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Guest RAM: readable and writable.
    Ram,
    /// Firmware ROM: readable, guest writes are refused.
    Rom,
}

/// Where an address lies: a region, or the decoded VRAM.
#[derive(Clone, Copy)]
struct Span {
    base: u64,
    len: u64,
    kind: RegionKind,
    name: &'static str,
    ptr: *mut u8,
}

impl Span {
    fn end(&self) -> u64 {
        self.base + self.len
    }
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
    /// The consumers of code-page changes ([`GuestMemory::code_watch`]);
    /// dropped ones are skipped, and pruned at the next registration.
    watches: RwLock<Vec<Weak<CodeWatch>>>,
    /// One bit per page of the first megabyte: set while the chipset maps
    /// the page read-only (BIOS shadowing, [`GuestMemory::set_shadow_read_only`]).
    shadow_ro: [AtomicU64; SHADOW_WORDS],
    /// Bumped whenever a page's shadow protection changes.
    shadow_generation: AtomicU64,
    /// One bit per guest page: written since the last
    /// [`GuestMemory::take_dirty`], while `dirty_logging` is set.
    dirty_bits: Vec<AtomicU64>,
    /// Set while writes are logged ([`GuestMemory::start_dirty_log`]).
    dirty_logging: AtomicBool,
    /// The last write sync asked ([`GuestMemory::request_write_sync`]).
    write_sync: AtomicU64,
    /// Writers of RAM that keep their own dirty log
    /// ([`GuestMemory::add_dirty_source`]); dropped ones are skipped, and
    /// pruned at the next registration. The lock also orders a source's
    /// registration against logging being turned on or off.
    dirty_sources: Mutex<Vec<Weak<dyn DirtyLogSource>>>,
    /// Why a source's log failed while logging was on, since logging began
    /// ([`GuestMemory::dirty_log_error`]).
    dirty_log_error: Mutex<Option<String>>,
    /// A display adapter's video memory, decoded where its BAR puts it
    /// ([`GuestMemory::add_vram`]).
    vram: Option<Arc<Vram>>,
}

/// A writer of guest RAM whose stores bypass this module and that keeps
/// its own log of the pages it writes: a hypervisor's VM (KVM's
/// `KVM_MEM_LOG_DIRTY_PAGES`). While dirty logging is on, its log is
/// merged into the bitmap at each [`GuestMemory::take_dirty`].
pub trait DirtyLogSource: Send + Sync {
    /// Starts (`true`) or stops (`false`) logging its writes. Starting
    /// fails when the source cannot log them.
    fn set_dirty_logging(&self, on: bool) -> Result<(), String>;
    /// Marks every page it wrote since the last call (or since logging
    /// began) with [`GuestMemory::mark_dirty`] on `mem`, and clears its
    /// log.
    fn collect_dirty(&self, mem: &GuestMemory) -> Result<(), String>;
    /// Marks every page of the VRAM it wrote since the last call with
    /// [`crate::Vram::mark_written`], and clears that log: for a source
    /// that maps the VRAM itself ([`crate::vram`]). Whether migration's
    /// logging is on or not.
    fn collect_vram(&self, _mem: &GuestMemory) -> Result<(), String> {
        Ok(())
    }
}

/// Pages of the first megabyte, whose writability the chipset switches.
const SHADOW_PAGES: u64 = (1 << 20) / PAGE_SIZE;
const SHADOW_WORDS: usize = (SHADOW_PAGES / 64) as usize;

// SAFETY: the raw pointers in `Region` point into mappings owned by the same
// `GuestMemory`, which live as long as it does. Guest memory is shared memory by
// nature: every access through these pointers copies bytes with
// `copy_nonoverlapping` or is a host atomic (`crate::atomic`), never forming a
// Rust reference to guest memory, so concurrent access from several threads is
// no more than racing guest accesses.
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
        Self::build(ram_size, false)
    }

    /// Guest RAM as [`GuestMemory::new`] lays it out, less the legacy VGA
    /// window ([`VGA_WINDOW`]): a PC with a VGA adapter decodes
    /// 0xA0000..0xC0000 on the adapter, so those addresses are left to the
    /// MMIO bus, which reaches the adapter's planes.
    pub fn with_vga_window(ram_size: u64) -> Result<Self, MemError> {
        Self::build(ram_size, true)
    }

    fn build(ram_size: u64, vga_window: bool) -> Result<Self, MemError> {
        if !((1 << 20)..=MAX_RAM).contains(&ram_size) || !ram_size.is_multiple_of(PAGE_SIZE) {
            return Err(MemError::BadSize(ram_size));
        }
        let mut mem = GuestMemory {
            regions: Vec::new(),
            ram_size,
            code_bits: Vec::new(),
            watches: RwLock::new(Vec::new()),
            shadow_ro: Default::default(),
            shadow_generation: AtomicU64::new(0),
            dirty_bits: Vec::new(),
            dirty_logging: AtomicBool::new(false),
            write_sync: AtomicU64::new(0),
            dirty_sources: Mutex::new(Vec::new()),
            dirty_log_error: Mutex::new(None),
            vram: None,
        };
        let low = ram_size.min(PCI_HOLE_START);
        if vga_window {
            let (start, end) = (VGA_WINDOW.start, VGA_WINDOW.end);
            mem.add_region(0, start, RegionKind::Ram, "low-ram", None)?;
            mem.add_region(end, low - end, RegionKind::Ram, "low-ram-above-vga", None)?;
        } else {
            mem.add_region(0, low, RegionKind::Ram, "low-ram", None)?;
        }
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
        self.size_bitmaps();
        Ok(())
    }

    /// Sizes the per-page bitmaps to every page a region or the VRAM can
    /// be at.
    fn size_bitmaps(&mut self) {
        let mut end = self.regions.iter().map(|r| r.end()).max().unwrap_or(0);
        if self.vram.is_some() {
            end = end.max(VRAM_LIMIT);
        }
        let words = (end / PAGE_SIZE).div_ceil(64) as usize;
        self.code_bits.resize_with(words, || AtomicU64::new(0));
        self.dirty_bits.resize_with(words, || AtomicU64::new(0));
    }

    // ---- video memory ----------------------------------------------------------

    /// Gives guest memory a display adapter's video memory of `len` bytes,
    /// not decoded anywhere until [`GuestMemory::map_vram`] puts it at its
    /// BAR's address. One per machine.
    pub fn add_vram(&mut self, len: u64) -> Result<Arc<Vram>, MemError> {
        if self.vram.is_some() {
            return Err(MemError::Overlap { name: "vram", base: 0, len });
        }
        let v = Arc::new(Vram::new(len)?);
        self.vram = Some(Arc::clone(&v));
        self.size_bitmaps();
        Ok(v)
    }

    /// The video memory, if the machine has one ([`GuestMemory::add_vram`]).
    pub fn vram(&self) -> Option<&Arc<Vram>> {
        self.vram.as_ref()
    }

    /// Decodes the video memory at `base` (its BAR's address), or nowhere.
    /// A base that is not page-aligned, that puts it past 4 GiB or over a
    /// RAM or ROM region is refused, and the VRAM is then decoded nowhere
    /// (the adapter's bus device still answers there). When the address
    /// changes, every vCPU drops its soft TLB (a rare event: firmware
    /// places the BAR once).
    pub fn map_vram(&self, base: Option<u64>) -> Result<(), MemError> {
        let Some(v) = &self.vram else { return Ok(()) };
        let len = v.len();
        let bad = base.filter(|&b| {
            !b.is_multiple_of(PAGE_SIZE)
                || b.checked_add(len).is_none_or(|end| end > VRAM_LIMIT)
                || self.regions.iter().any(|r| b < r.end() && r.base < b + len)
        });
        let new = if bad.is_some() { None } else { base };
        if v.set_base(new) != new {
            self.flush_all_watches();
        }
        match bad {
            Some(b) => Err(MemError::Overlap { name: "vram", base: b, len }),
            None => Ok(()),
        }
    }

    /// The pages of the VRAM stored to since the last call
    /// ([`Vram::take_dirty`]), with the logs of the [`DirtyLogSource`]s
    /// that map it merged in first. A source whose log fails is reported
    /// once per failure, and the VRAM is then taken as all written.
    pub fn take_vram_dirty(&self) -> Vec<u64> {
        let Some(v) = &self.vram else { return Vec::new() };
        let live: Vec<_> = self.sources().iter().filter_map(Weak::upgrade).collect();
        for s in live {
            if let Err(e) = s.collect_vram(self) {
                tracing::warn!(target: "mmu", "the VRAM's dirty log could not be fetched: {e}");
                v.mark_written(0, v.len());
            }
        }
        v.take_dirty()
    }

    /// Whether guest physical `addr` is in the decoded VRAM.
    #[inline]
    pub fn is_vram(&self, addr: u64) -> bool {
        self.vram.as_ref().is_some_and(|v| v.offset_of(addr).is_some())
    }

    /// Whether guest physical `phys` is in the decoded VRAM, and if so
    /// whether its page was stored to since the adapter last looked.
    #[inline]
    pub fn vram_page_dirty(&self, phys: u64) -> Option<bool> {
        let v = self.vram.as_ref()?;
        v.offset_of(phys).map(|off| v.is_dirty(off))
    }

    /// Makes every watch's owner drop its whole soft TLB and its code.
    #[cold]
    fn flush_all_watches(&self) {
        let all = self.watches.read().unwrap_or_else(|e| e.into_inner());
        for w in all.iter().filter_map(Weak::upgrade) {
            w.overflow();
        }
    }

    /// The regions, for KVM memory slots and diagnostics.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.regions
            .iter()
            .map(|r| RegionInfo { base: r.base, len: r.len, kind: r.kind, name: r.name, host_addr: r.ptr as u64 })
            .collect()
    }

    /// The region or the decoded VRAM holding `addr`.
    #[inline]
    fn find(&self, addr: u64) -> Option<Span> {
        // Few regions (two or three): a linear scan beats a tree.
        if let Some(r) = self.regions.iter().find(|r| addr >= r.base && addr - r.base < r.len) {
            return Some(Span { base: r.base, len: r.len, kind: r.kind, name: r.name, ptr: r.ptr });
        }
        let v = self.vram.as_ref()?;
        let off = v.offset_of(addr)?;
        Some(Span { base: addr - off, len: v.len(), kind: RegionKind::Ram, name: "vram", ptr: v.host(0) })
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

    fn check(&self, addr: u64, len: u64) -> Result<Span, MemError> {
        let unmapped = MemError::Unmapped { addr, len };
        let r = self.find(addr).ok_or(unmapped.clone())?;
        let end = addr.checked_add(len).ok_or(unmapped.clone())?;
        if end > r.end() {
            return Err(unmapped);
        }
        Ok(r)
    }

    /// The host address of `addr..addr+len` when guest writes may change
    /// all of it: RAM (not ROM), in one region, on no read-only shadow page.
    /// Refused as [`GuestMemory::write`] refuses it. For the atomics.
    pub(crate) fn writable_ram(&self, addr: u64, len: u64) -> Result<*mut u8, MemError> {
        let r = self.check(addr, len)?;
        if r.kind != RegionKind::Ram {
            return Err(MemError::ReadOnly { addr, name: r.name });
        }
        if let Some(at) = self.shadow_read_only_in(addr, len) {
            return Err(MemError::ReadOnly { addr: at, name: SHADOW_NAME });
        }
        // `check` proved `addr - r.base + len <= r.len`: the offset stays
        // inside the mapping.
        Ok(r.ptr.wrapping_add((addr - r.base) as usize))
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
        unsafe { crate::atomic::load_guest(r.ptr.add(off), buf) };
        crate::atomic::after_guest_load();
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
        crate::atomic::before_guest_store();
        // SAFETY: `check` proved the destination lies inside the live mapping;
        // `data` is a distinct Rust buffer.
        unsafe { crate::atomic::store_guest(r.ptr.add(off), data) };
        self.note_write(addr, data.len() as u64);
        Ok(())
    }

    /// Load an image into any region, ROM included (firmware setup, not guest writes).
    pub fn load(&self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        if data.is_empty() {
            return Ok(());
        }
        let r = self.check(addr, data.len() as u64)?;
        let off = (addr - r.base) as usize;
        crate::atomic::before_guest_store();
        // SAFETY: as in `write`; ROM is host-writable for loading.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), r.ptr.add(off), data.len()) };
        self.note_write(addr, data.len() as u64);
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
        crate::atomic::before_guest_store();
        // SAFETY: `check` proved both ranges lie inside live mappings;
        // `ptr::copy` allows them to overlap.
        unsafe { std::ptr::copy(s.ptr.add((src - s.base) as usize), d.ptr.add((dst - d.base) as usize), len as usize) };
        self.note_write(dst, len);
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
        crate::atomic::before_guest_store();
        // SAFETY: `check` proved the range lies inside the live mapping.
        unsafe { std::ptr::write_bytes(r.ptr.add(off), byte, len as usize) };
        self.note_write(addr, len);
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

    // ---- RAM as a whole: saved states ---------------------------------------

    /// Where the RAM byte at guest physical `addr` sits in a RAM image (a
    /// saved state's memory file): below the PCI hole at `addr` itself,
    /// above 4 GiB after the low RAM, so an image is [`GuestMemory::ram_size`]
    /// bytes long. The legacy VGA window ([`VGA_WINDOW`]) keeps its place in
    /// the image, as a hole.
    pub fn ram_image_offset(addr: u64) -> u64 {
        if addr >= HIGH_RAM_START {
            addr - HIGH_RAM_START + PCI_HOLE_START
        } else {
            addr
        }
    }

    /// The guest physical address of offset `offset` of a RAM image: the
    /// inverse of [`GuestMemory::ram_image_offset`].
    pub fn ram_image_addr(offset: u64) -> u64 {
        if offset >= PCI_HOLE_START {
            offset - PCI_HOLE_START + HIGH_RAM_START
        } else {
            offset
        }
    }

    /// The RAM regions' guest physical ranges, in address order.
    pub fn ram_ranges(&self) -> Vec<std::ops::Range<u64>> {
        self.regions.iter().filter(|r| r.kind == RegionKind::Ram).map(|r| r.base..r.end()).collect()
    }

    /// Replaces all of RAM with a private, copy-on-write mapping of `file`,
    /// a RAM image ([`GuestMemory::ram_image_offset`]) at least
    /// [`GuestMemory::ram_size`] bytes long: the guest sees the file's
    /// bytes, its writes stay in this process, and pages are read from the
    /// file as they are first touched, so the cost does not grow with the
    /// RAM's size. The host addresses stay the same.
    ///
    /// Nothing may run guest code meanwhile, and the caches made from the
    /// old bytes (decoded blocks, compiled code, soft TLBs) must go with
    /// their engines. The file must not change while it is mapped: replace
    /// it by renaming a new one over it.
    pub fn map_ram_image(&self, file: &std::fs::File) -> Result<(), MemError> {
        let size = file.metadata().map_err(|e| MemError::Map { len: self.ram_size, reason: e.to_string() })?.len();
        if size < self.ram_size {
            return Err(MemError::Map {
                len: self.ram_size,
                reason: format!("the RAM image has {size} bytes, fewer than the RAM's {}", self.ram_size),
            });
        }
        use std::os::fd::AsRawFd;
        for r in self.regions.iter().filter(|r| r.kind == RegionKind::Ram) {
            let offset = libc::off_t::try_from(Self::ram_image_offset(r.base))
                .map_err(|_| MemError::Map { len: r.len, reason: "offset out of range".into() })?;
            // SAFETY: `r.ptr..r.ptr + r.len` is this region's own mapping,
            // which `GuestMemory` owns for its lifetime; MAP_FIXED replaces
            // exactly those pages with a private mapping of the same length
            // and protection, so the pointer stays valid, and its `MmapMut`
            // unmaps the same range when dropped. No Rust reference into
            // guest memory exists (see the `Send` impl).
            let p = unsafe {
                libc::mmap(
                    r.ptr.cast(),
                    r.len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    offset,
                )
            };
            if p == libc::MAP_FAILED || p.cast::<u8>() != r.ptr {
                return Err(MemError::Map { len: r.len, reason: std::io::Error::last_os_error().to_string() });
            }
        }
        Ok(())
    }

    /// Replaces all of RAM with fresh zero pages (anonymous memory), as
    /// before a RAM image is loaded into it page by page; the host
    /// addresses stay the same. As for [`GuestMemory::map_ram_image`],
    /// nothing may run guest code meanwhile.
    pub fn zero_ram(&self) -> Result<(), MemError> {
        for r in self.regions.iter().filter(|r| r.kind == RegionKind::Ram) {
            // SAFETY: as in `map_ram_image`: the region's own range, replaced
            // by an anonymous private mapping of the same length.
            let p = unsafe {
                libc::mmap(
                    r.ptr.cast(),
                    r.len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED || p.cast::<u8>() != r.ptr {
                return Err(MemError::Map { len: r.len, reason: std::io::Error::last_os_error().to_string() });
            }
            #[cfg(target_os = "linux")]
            // SAFETY: advice on the region's own, just mapped range; it changes
            // no contents.
            unsafe {
                libc::madvise(r.ptr.cast(), r.len as usize, libc::MADV_HUGEPAGE);
            }
        }
        Ok(())
    }

    // ---- code-page tracking -------------------------------------------------

    /// Register a consumer of code-page changes: from now on every write to
    /// a code page queues the page on the returned watch and sets its flag,
    /// as it does on every other live watch. Each vCPU (its decoded blocks,
    /// its translated code, its soft TLB) holds one. Dropping the watch
    /// unregisters it.
    pub fn code_watch(&self) -> Arc<CodeWatch> {
        let watch = Arc::new(CodeWatch::default());
        let mut all = self.watches.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&watch));
        watch
    }

    /// The live watches ([`GuestMemory::code_watch`]).
    pub fn code_watches(&self) -> usize {
        self.watches.read().unwrap_or_else(|e| e.into_inner()).iter().filter(|w| w.strong_count() > 0).count()
    }

    /// Queue `page` on every live watch but `except`.
    #[cold]
    fn tell_watches(&self, page: u64, written: bool, except: Option<&CodeWatch>) {
        let all = self.watches.read().unwrap_or_else(|e| e.into_inner());
        for w in all.iter() {
            let Some(w) = w.upgrade() else { continue };
            if except.is_some_and(|e| std::ptr::eq(e, &*w)) {
                continue;
            }
            w.push(page, written);
        }
    }

    /// Record that code made from the page holding `addr` is cached; true
    /// if the page was not marked before. Every watch is told of a newly
    /// marked page ([`CodeChanges::marked`]).
    pub fn mark_code_page(&self, addr: u64) -> bool {
        self.mark(addr, None)
    }

    /// [`GuestMemory::mark_code_page`] by the owner of `by`: the other
    /// watches are told of a newly marked page, `by` is not (its owner
    /// drops its own soft-TLB entries for the page).
    ///
    /// A consumer marks a page before it reads the bytes it decodes, so
    /// that a write landing after the read finds the bit set.
    pub fn mark_code_page_for(&self, addr: u64, by: &CodeWatch) -> bool {
        self.mark(addr, Some(by))
    }

    fn mark(&self, addr: u64, by: Option<&CodeWatch>) -> bool {
        let page = addr / PAGE_SIZE;
        let bit = 1 << (page % 64);
        let Some(w) = self.code_bits.get((page / 64) as usize) else { return false };
        // A read-modify-write, ordered before the caller's read of the
        // page's bytes. A bit already set needs none: whoever clears it
        // queues the page on every watch, the caller's included.
        let new = w.load(Ordering::Relaxed) & bit == 0 && w.fetch_or(bit, Ordering::SeqCst) & bit == 0;
        if new {
            self.tell_watches(page * PAGE_SIZE, false, by);
        }
        new
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

    // ---- dirty logging --------------------------------------------------------

    /// Starts logging writes to guest RAM: from now on each write sets its
    /// pages' dirty bits, and soft TLBs give translated code write entries
    /// only for dirty pages; every [`DirtyLogSource`] starts its own log.
    /// The bitmap starts empty. The caller then drops the write entries
    /// made before ([`GuestMemory::request_write_sync`]). Fails, with
    /// logging left off, when a source cannot log its writes.
    pub fn start_dirty_log(&self) -> Result<(), String> {
        let sources = self.sources();
        *self.dirty_log_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        for w in &self.dirty_bits {
            w.store(0, Ordering::Relaxed);
        }
        self.dirty_logging.store(true, Ordering::SeqCst);
        let live: Vec<_> = sources.iter().filter_map(Weak::upgrade).collect();
        for (i, s) in live.iter().enumerate() {
            if let Err(e) = s.set_dirty_logging(true) {
                for done in &live[..i] {
                    let _ = done.set_dirty_logging(false);
                }
                self.dirty_logging.store(false, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops logging writes (every [`DirtyLogSource`] too); the bitmap is
    /// cleared.
    pub fn stop_dirty_log(&self) {
        let sources = self.sources();
        self.dirty_logging.store(false, Ordering::SeqCst);
        for s in sources.iter().filter_map(Weak::upgrade) {
            if let Err(e) = s.set_dirty_logging(false) {
                tracing::warn!(target: "mmu", "dirty logging could not be turned off: {e}");
            }
        }
        for w in &self.dirty_bits {
            w.store(0, Ordering::Relaxed);
        }
    }

    fn sources(&self) -> MutexGuard<'_, Vec<Weak<dyn DirtyLogSource>>> {
        self.dirty_sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a writer of RAM that keeps its own dirty log (a
    /// hypervisor's VM); it stays registered while it lives. When logging
    /// is on already, the source starts logging now; if it cannot,
    /// [`GuestMemory::dirty_log_error`] says why from then on.
    pub fn add_dirty_source(&self, source: Weak<dyn DirtyLogSource>) {
        let mut sources = self.sources();
        sources.retain(|w| w.strong_count() > 0);
        if self.dirty_logging.load(Ordering::SeqCst) {
            if let Some(s) = source.upgrade() {
                if let Err(e) = s.set_dirty_logging(true) {
                    self.note_dirty_log_error(e);
                }
            }
        }
        sources.push(source);
    }

    /// Says that a [`DirtyLogSource`]'s log failed while logging was on
    /// (some of its writes may be missing from the bitmaps): the first
    /// failure since logging began is kept for
    /// [`GuestMemory::dirty_log_error`].
    pub fn note_dirty_log_error(&self, e: String) {
        if self.dirty_logging.load(Ordering::SeqCst) {
            self.dirty_log_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
        }
    }

    /// Why the log of some [`DirtyLogSource`] failed since logging began
    /// (its writes may then be missing from the bitmaps), if one did.
    pub fn dirty_log_error(&self) -> Option<String> {
        self.dirty_log_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether writes are logged.
    #[inline]
    pub fn dirty_logging(&self) -> bool {
        self.dirty_logging.load(Ordering::Relaxed)
    }

    /// Sets the dirty bits of the pages of `addr..addr+len` while logging
    /// is on, after the bytes are in place (the read-modify-write orders
    /// them before the bit for [`GuestMemory::take_dirty`]'s reader). For
    /// writers that reach RAM by other ways than this module's (a
    /// hypervisor's own dirty log).
    ///
    /// Stores to the decoded VRAM set its own bits instead, whether logging
    /// is on or not ([`Vram::take_dirty`]).
    #[inline]
    pub fn mark_dirty(&self, addr: u64, len: u64) {
        if let Some(v) = &self.vram {
            if let Some(off) = v.offset_of(addr) {
                v.mark(off, len);
                return;
            }
        }
        if !self.dirty_logging.load(Ordering::SeqCst) {
            return;
        }
        let first = addr / PAGE_SIZE;
        let last = addr.saturating_add(len.max(1) - 1) / PAGE_SIZE;
        for page in first..=last {
            let Some(w) = self.dirty_bits.get((page / 64) as usize) else { break };
            w.fetch_or(1 << (page % 64), Ordering::SeqCst);
        }
    }

    /// Whether the page holding `addr` was written since the last
    /// [`GuestMemory::take_dirty`] (false while logging is off).
    #[inline]
    pub fn is_dirty(&self, addr: u64) -> bool {
        let page = addr / PAGE_SIZE;
        self.dirty_bits.get((page / 64) as usize).is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (page % 64)) != 0)
    }

    /// The dirty bitmap since the last call (bit `n` of word `w`: the page
    /// at guest physical `(64 * w + n) * PAGE_SIZE`), cleared for the next
    /// round. Pages outside RAM never appear. The logs of the
    /// [`DirtyLogSource`]s are merged in first.
    pub fn take_dirty(&self) -> DirtyBitmap {
        if self.dirty_logging.load(Ordering::SeqCst) {
            let sources = self.sources();
            for s in sources.iter().filter_map(Weak::upgrade) {
                if let Err(e) = s.collect_dirty(self) {
                    self.note_dirty_log_error(e);
                }
            }
        }
        let words = self.dirty_bits.iter().map(|w| w.swap(0, Ordering::SeqCst)).collect();
        DirtyBitmap { words }
    }

    /// Asks every watch's owner to drop the soft-TLB entries through which
    /// translated code stores without setting dirty bits (after a
    /// [`GuestMemory::take_dirty`], and when logging starts); returns the
    /// request's number for [`GuestMemory::write_sync_done`].
    pub fn request_write_sync(&self) -> u64 {
        let n = self.write_sync.fetch_add(1, Ordering::SeqCst) + 1;
        let all = self.watches.read().unwrap_or_else(|e| e.into_inner());
        for w in all.iter().filter_map(Weak::upgrade) {
            w.ask_sync(n);
        }
        n
    }

    /// Whether every live watch's owner answered write sync `n` (took its
    /// queue since), or holds no such entries.
    pub fn write_sync_done(&self, n: u64) -> bool {
        let all = self.watches.read().unwrap_or_else(|e| e.into_inner());
        all.iter().filter_map(Weak::upgrade).all(|w| w.synced(n))
    }

    /// Whether every live watch's owner answered write sync `n` or holds
    /// no entry through which translated code stores into the VRAM: every
    /// such store made before the sync is in the VRAM, and its page was
    /// among the pages of the take before the sync ([`crate::vram`]).
    pub fn vram_sync_done(&self, n: u64) -> bool {
        let all = self.watches.read().unwrap_or_else(|e| e.into_inner());
        all.iter().filter_map(Weak::upgrade).all(|w| w.vram_synced(n))
    }

    /// Called after every write, once its bytes are in place: queue each
    /// written page that holds code on every watch, and log it.
    #[inline]
    pub(crate) fn note_write(&self, addr: u64, len: u64) {
        self.mark_dirty(addr, len);
        let first = addr / PAGE_SIZE;
        let last = (addr + len.max(1) - 1) / PAGE_SIZE;
        for page in first..=last {
            let Some(w) = self.code_bits.get((page / 64) as usize) else { continue };
            let bit = 1u64 << (page % 64);
            if w.load(Ordering::Relaxed) & bit != 0 && w.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
                self.tell_watches(page * PAGE_SIZE, true, None);
            }
        }
    }
}

/// The pages written in one round of dirty logging
/// ([`GuestMemory::take_dirty`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
}

impl DirtyBitmap {
    /// How many pages are dirty.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether no page is dirty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Whether the page holding `addr` is dirty.
    pub fn contains(&self, addr: u64) -> bool {
        let page = addr / PAGE_SIZE;
        self.words.get((page / 64) as usize).is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Adds the dirty pages of `other`.
    pub fn merge(&mut self, other: &DirtyBitmap) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// The guest physical addresses of the dirty pages, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = u64::from(w.trailing_zeros());
                w &= w - 1;
                Some((i as u64 * 64 + bit) * PAGE_SIZE)
            })
        })
    }
}

/// Pages a watch queues at most: past it the queue is dropped and the watch
/// reports [`CodeChanges::overflowed`] (its owner drops all its code), so a
/// consumer that does not look for a while (a halted vCPU) holds no
/// unbounded list.
const WATCH_QUEUE_MAX: usize = 4096;

/// One consumer's queue of code-page changes ([`GuestMemory::code_watch`]).
///
/// Its flag is set whenever a page is queued; the owner tests it where it
/// may run cached code ([`CodeWatch::pending`], or translated code through
/// [`CodeWatch::flag`]) and takes the queue ([`CodeWatch::take`]).
#[derive(Debug, Default)]
pub struct CodeWatch {
    /// Set, under the lock, while `queue` holds something.
    pending: AtomicBool,
    queue: Mutex<CodeChanges>,
    /// The last write sync asked of this watch, and the last its owner
    /// answered by taking the queue ([`GuestMemory::request_write_sync`]).
    sync_asked: AtomicU64,
    sync_done: AtomicU64,
    /// Set by the owner before its soft TLB gives translated code a write
    /// entry while logging is on; cleared when it drops them all.
    fast_writes: AtomicBool,
    /// Set by the owner before its soft TLB gives translated code a write
    /// entry into the VRAM; cleared when it drops them all.
    vram_fast: AtomicBool,
}

/// What a [`CodeWatch`] collected since it was last taken.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CodeChanges {
    /// Guest physical addresses of code pages written: code made from them
    /// is stale.
    pub written: Vec<u64>,
    /// Pages another consumer marked as code: a soft-TLB entry that lets
    /// stores to them skip the code-page check must go.
    pub marked: Vec<u64>,
    /// The queue filled up and was dropped: treat every page as written and
    /// as marked.
    pub overflowed: bool,
    /// Dirty logging asks for a write sync: every soft-TLB entry through
    /// which translated code stores must go
    /// ([`GuestMemory::request_write_sync`]).
    pub drop_fast_writes: bool,
}

impl CodeChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.marked.is_empty() && !self.overflowed && !self.drop_fast_writes
    }
}

impl CodeWatch {
    fn lock(&self) -> MutexGuard<'_, CodeChanges> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, page: u64, written: bool) {
        let mut q = self.lock();
        if !q.overflowed {
            if q.written.len() + q.marked.len() >= WATCH_QUEUE_MAX {
                let drop_fast_writes = q.drop_fast_writes;
                *q = CodeChanges { overflowed: true, drop_fast_writes, ..Default::default() };
            } else if written {
                q.written.push(page);
            } else {
                q.marked.push(page);
            }
        }
        self.pending.store(true, Ordering::Release);
    }

    /// Whether something was queued since the last [`take`](Self::take).
    #[inline]
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The flag behind [`pending`](Self::pending), for translated code that
    /// reads it itself. It lives as long as the watch.
    pub fn flag(&self) -> &AtomicBool {
        &self.pending
    }

    /// Everything queued since the last call; clears the flag. The owner
    /// acts on all of it before it runs guest code again (a write sync
    /// counts as answered here).
    pub fn take(&self) -> CodeChanges {
        let mut q = self.lock();
        // Under the lock, as `push` sets it: a page queued after this take
        // sets the flag again.
        self.pending.store(false, Ordering::Release);
        if q.drop_fast_writes {
            self.fast_writes.store(false, Ordering::SeqCst);
            self.vram_fast.store(false, Ordering::SeqCst);
            self.sync_done.store(self.sync_asked.load(Ordering::Acquire), Ordering::Release);
        }
        std::mem::take(&mut *q)
    }

    /// Marks the queue overflowed: the owner drops its whole soft TLB and
    /// its code.
    fn overflow(&self) {
        let mut q = self.lock();
        let drop_fast_writes = q.drop_fast_writes;
        *q = CodeChanges { overflowed: true, drop_fast_writes, ..Default::default() };
        self.pending.store(true, Ordering::Release);
    }

    /// Queues a write sync ([`GuestMemory::request_write_sync`]).
    fn ask_sync(&self, n: u64) {
        let mut q = self.lock();
        self.sync_asked.store(n, Ordering::Release);
        q.drop_fast_writes = true;
        self.pending.store(true, Ordering::Release);
    }

    /// Whether write sync `n` needs nothing more from this watch's owner.
    fn synced(&self, n: u64) -> bool {
        self.sync_done.load(Ordering::Acquire) >= n || !self.fast_writes.load(Ordering::SeqCst)
    }

    /// Said by the owner, while it does not run, once its soft TLB holds
    /// no entry for translated stores: write syncs need nothing from it
    /// until it gives one out again ([`CodeWatch::note_fast_writes`]).
    pub fn fast_writes_dropped(&self) {
        self.fast_writes.store(false, Ordering::SeqCst);
        self.vram_fast.store(false, Ordering::SeqCst);
    }

    /// Said by the owner before its soft TLB gives translated code a write
    /// entry into the VRAM, and before it reads the page's bit there: the
    /// adapter's write syncs then wait for it
    /// ([`GuestMemory::vram_sync_done`]).
    #[inline]
    pub fn note_vram_fast_writes(&self) {
        self.note_fast_writes();
        if !self.vram_fast.load(Ordering::Relaxed) {
            self.vram_fast.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the owner may hold soft-TLB entries through which
    /// translated code stores into the VRAM.
    #[inline]
    pub fn holds_vram_fast_writes(&self) -> bool {
        self.vram_fast.load(Ordering::Relaxed)
    }

    /// Whether write sync `n` needs nothing more from this watch's owner
    /// as far as the VRAM goes.
    fn vram_synced(&self, n: u64) -> bool {
        self.sync_done.load(Ordering::Acquire) >= n || !self.vram_fast.load(Ordering::SeqCst)
    }

    /// Said by the owner before its soft TLB gives translated code a write
    /// entry while dirty logging is on, and before it reads the page's
    /// dirty bit: a write sync then waits for it.
    #[inline]
    pub fn note_fast_writes(&self) {
        if !self.fast_writes.load(Ordering::Relaxed) {
            self.fast_writes.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_ram_image_maps_copy_on_write_and_zero_ram_clears_it() {
        use std::io::Write;
        let m = GuestMemory::with_vga_window(PCI_HOLE_START + 2 * MIB).unwrap();
        let path = std::env::temp_dir().join(format!("mmu-ram-image-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        // Sparse: only the pages that hold something.
        f.set_len(PCI_HOLE_START + 2 * MIB).unwrap();
        for (off, byte) in [(0x1000u64, 0x11u8), (VGA_WINDOW.end, 0x22), (PCI_HOLE_START + MIB, 0x33)] {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(off)).unwrap();
            f.write_all(&[byte]).unwrap();
        }
        drop(f);
        m.write_u8(0x2000, 0x99).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        m.map_ram_image(&f).unwrap();
        assert_eq!(m.read_u8(0x1000).unwrap(), 0x11);
        assert_eq!(m.read_u8(0x2000).unwrap(), 0, "the old bytes are gone");
        assert_eq!(m.read_u8(VGA_WINDOW.end).unwrap(), 0x22);
        assert_eq!(m.read_u8(HIGH_RAM_START + MIB).unwrap(), 0x33, "high RAM follows the low RAM in the image");
        m.write_u8(0x1000, 0x44).unwrap();
        let mut byte = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, 0x1000).unwrap();
        assert_eq!(byte[0], 0x11, "guest writes stay in the process");
        m.zero_ram().unwrap();
        assert_eq!(m.read_u8(0x1000).unwrap(), 0);
        assert_eq!(m.read_u8(HIGH_RAM_START + MIB).unwrap(), 0);
        let short = std::fs::File::create(&path).unwrap();
        assert!(m.map_ram_image(&short).is_err(), "an image shorter than the RAM");
        let _ = std::fs::remove_file(&path);
        assert_eq!(GuestMemory::ram_image_addr(GuestMemory::ram_image_offset(HIGH_RAM_START + 5)), HIGH_RAM_START + 5);
    }

    /// Every kind of write sets the dirty bits of the pages it touched,
    /// only while logging is on; a round takes and clears them.
    #[test]
    fn every_write_path_logs_its_pages() {
        let mut m = GuestMemory::new(4 * MIB).unwrap();
        m.add_rom("bios", 0xffff_0000, 0x10000, &[]).unwrap();
        m.write_u8(0x1000, 1).unwrap();
        assert!(!m.is_dirty(0x1000), "nothing is logged while logging is off");
        m.start_dirty_log().unwrap();
        assert!(m.dirty_logging());
        type Write<'a> = (&'a str, &'a dyn Fn(), &'a [u64]);
        let writes: [Write; 9] = [
            ("write", &|| m.write(0x1ff0, &[1; 32]).unwrap(), &[0x1000, 0x2000]),
            ("load", &|| m.load(0x5008, &[2]).unwrap(), &[0x5000]),
            ("copy", &|| m.copy(0x7000, 0x8100, 64).unwrap(), &[0x8000]),
            ("fill", &|| m.fill(0x9ff0, 0x2020, 7).unwrap(), &[0x9000, 0xa000, 0xb000, 0xc000]),
            ("compare_exchange", &|| assert_eq!(m.compare_exchange(0xd000, 4, 0, 9).unwrap(), Ok(0)), &[0xd000]),
            ("fetch_or", &|| assert_eq!(m.fetch_or(0xe000, 8, 0x60).unwrap(), 0), &[0xe000]),
            (
                "compare_exchange_u128",
                &|| {
                    // A host without a 16-byte exchange refuses it (see below).
                    let _ = m.compare_exchange_u128(0xf000, 0, 1);
                },
                &[0xf000],
            ),
            ("a failed exchange", &|| assert!(m.compare_exchange(0xd000, 4, 0, 1).unwrap().is_err()), &[]),
            ("a refused write", &|| assert!(m.write(0xffff_0000, &[1]).is_err()), &[]),
        ];
        for (what, write, pages) in writes {
            write();
            let got: Vec<u64> = m.take_dirty().pages().collect();
            if what == "compare_exchange_u128" && got.is_empty() {
                continue; // a host without a 16-byte exchange
            }
            assert_eq!(got, pages, "{what}");
        }
        m.write_u8(0x3000, 1).unwrap();
        m.write_u8(0x3fff, 1).unwrap();
        let round = m.take_dirty();
        assert_eq!((round.count(), round.contains(0x3000), round.contains(0x4000)), (1, true, false));
        assert!(m.take_dirty().is_empty(), "a round clears the bitmap");
        let mut merged = round.clone();
        m.write_u8(0x20_0000, 1).unwrap();
        merged.merge(&m.take_dirty());
        assert_eq!(merged.pages().collect::<Vec<_>>(), [0x3000, 0x20_0000]);
        m.stop_dirty_log();
        m.write_u8(0x3000, 1).unwrap();
        assert!(m.take_dirty().is_empty());
    }

    /// A source's own log: started and stopped with the bitmap's, merged
    /// in at each round; one that cannot log keeps logging off, and one
    /// that fails later is reported.
    #[test]
    fn dirty_log_sources_join_the_rounds() {
        #[derive(Default)]
        struct Source {
            on: Mutex<bool>,
            refuse: bool,
            fail_collect: bool,
            written: Mutex<Vec<u64>>,
        }
        impl DirtyLogSource for Source {
            fn set_dirty_logging(&self, on: bool) -> Result<(), String> {
                if on && self.refuse {
                    return Err("no dirty log here".into());
                }
                *self.on.lock().unwrap() = on;
                Ok(())
            }
            fn collect_dirty(&self, mem: &GuestMemory) -> Result<(), String> {
                if self.fail_collect {
                    return Err("the log is gone".into());
                }
                for a in std::mem::take(&mut *self.written.lock().unwrap()) {
                    mem.mark_dirty(a, 1);
                }
                Ok(())
            }
        }
        let m = GuestMemory::new(4 * MIB).unwrap();
        let s = Arc::new(Source::default());
        m.add_dirty_source(Arc::downgrade(&s) as Weak<dyn DirtyLogSource>);
        m.start_dirty_log().unwrap();
        assert!(*s.on.lock().unwrap());
        s.written.lock().unwrap().extend([0x5000, 0x20_0010]);
        m.write_u8(0x1000, 1).unwrap();
        assert_eq!(m.take_dirty().pages().collect::<Vec<_>>(), [0x1000, 0x5000, 0x20_0000]);
        assert!(m.take_dirty().is_empty());
        // Registered while logging is on: it starts at once.
        let late = Arc::new(Source::default());
        m.add_dirty_source(Arc::downgrade(&late) as Weak<dyn DirtyLogSource>);
        assert!(*late.on.lock().unwrap());
        late.written.lock().unwrap().push(0x9000);
        assert_eq!(m.take_dirty().pages().collect::<Vec<_>>(), [0x9000]);
        m.stop_dirty_log();
        assert!(!*s.on.lock().unwrap() && !*late.on.lock().unwrap());
        assert_eq!(m.dirty_log_error(), None);
        // One that cannot log: logging stays off, the others stop again.
        let refusing = Arc::new(Source { refuse: true, ..Default::default() });
        m.add_dirty_source(Arc::downgrade(&refusing) as Weak<dyn DirtyLogSource>);
        assert_eq!(m.start_dirty_log(), Err("no dirty log here".to_string()));
        assert!(!m.dirty_logging() && !*s.on.lock().unwrap());
        drop(refusing);
        // One whose log fails during the rounds is reported.
        let failing = Arc::new(Source { fail_collect: true, ..Default::default() });
        m.add_dirty_source(Arc::downgrade(&failing) as Weak<dyn DirtyLogSource>);
        m.start_dirty_log().unwrap();
        let _ = m.take_dirty();
        assert_eq!(m.dirty_log_error().as_deref(), Some("the log is gone"));
        m.stop_dirty_log();
        m.start_dirty_log().unwrap_or_default();
        assert_eq!(m.dirty_log_error(), None, "a new start forgets the old failure");
        m.stop_dirty_log();
    }

    /// A write sync is answered by each live watch's take, or needs
    /// nothing from a watch whose owner holds no translated write entry.
    #[test]
    fn write_syncs_wait_for_watches_with_fast_writes() {
        let m = GuestMemory::new(MIB).unwrap();
        let (a, b) = (m.code_watch(), m.code_watch());
        m.start_dirty_log().unwrap();
        let n = m.request_write_sync();
        assert!(a.pending() && b.pending());
        assert!(m.write_sync_done(n), "neither holds a translated write entry");
        a.note_fast_writes();
        let n = m.request_write_sync();
        assert!(!m.write_sync_done(n));
        assert!(b.take().drop_fast_writes);
        assert!(!m.write_sync_done(n), "a has not answered");
        let c = a.take();
        assert!(c.drop_fast_writes && !c.is_empty());
        assert!(m.write_sync_done(n));
        a.note_fast_writes();
        drop(a);
        assert!(m.write_sync_done(m.request_write_sync()), "a dropped watch is not waited for");
    }

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
    fn the_vga_window_is_left_to_the_bus() {
        let m = GuestMemory::with_vga_window(2 * MIB).unwrap();
        let r = m.regions();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].base, r[0].len), (0, VGA_WINDOW.start));
        assert_eq!((r[1].base, r[1].len), (VGA_WINDOW.end, 2 * MIB - VGA_WINDOW.end));
        assert!(!m.is_backed(VGA_WINDOW.start, 1) && !m.is_backed(VGA_WINDOW.end - 1, 1));
        assert!(m.write_u8(0xb_8000, 0x41).is_err(), "text memory is the adapter's");
        m.write_u8(VGA_WINDOW.start - 1, 1).unwrap();
        m.write_u8(VGA_WINDOW.end, 2).unwrap();
        assert_eq!(m.read_u8(VGA_WINDOW.end).unwrap(), 2);
        assert_eq!(m.ram_size(), 2 * MIB);
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
        let w = m.code_watch();
        assert!(m.mark_code_page_for(0x3000, &w));
        assert!(!w.pending(), "the marker is not told of its own mark");
        assert!(m.is_code_page(0x3fff));
        m.write_u8(0x2fff, 1).unwrap();
        assert!(!w.pending());
        m.write_u16(0x2fff, 1).unwrap();
        assert!(w.pending());
        m.write_u8(0x3001, 1).unwrap();
        assert_eq!(w.take(), CodeChanges { written: vec![0x3000], ..Default::default() });
        assert!(!w.pending());
        assert!(!m.is_code_page(0x3000));
        assert!(w.take().is_empty());
    }

    #[test]
    fn every_watch_sees_a_write_to_a_code_page() {
        let m = GuestMemory::new(MIB).unwrap();
        let (a, b) = (m.code_watch(), m.code_watch());
        assert_eq!(m.code_watches(), 2);
        // A marks: B is told, so that its TLB drops write paths to the page.
        assert!(m.mark_code_page_for(0x5000, &a));
        assert!(!a.pending() && b.pending());
        assert_eq!(b.take(), CodeChanges { marked: vec![0x5000], ..Default::default() });
        // Marking a marked page tells nobody.
        assert!(!m.mark_code_page_for(0x5000, &b));
        assert!(!a.pending() && !b.pending());
        // A CPU's store (through `write`) reaches both.
        m.write_u32(0x5010, 7).unwrap();
        assert!(a.pending() && b.pending());
        assert_eq!(a.take().written, [0x5000]);
        assert_eq!(b.take().written, [0x5000]);
        // Device writes (DMA) reach both too: each kind of write.
        let dma: [&dyn Fn(); 4] = [
            &|| m.write(0x5ff0, &[1; 32]).unwrap(),
            &|| m.load(0x5008, &[2]).unwrap(),
            &|| m.copy(0x7000, 0x5100, 64).unwrap(),
            &|| m.fill(0x4ff0, 0x20, 0).unwrap(),
        ];
        for (i, write) in dma.iter().enumerate() {
            m.mark_code_page(0x5000);
            m.mark_code_page(0x6000);
            a.take();
            b.take();
            write();
            for w in [&a, &b] {
                assert!(w.pending(), "write {i}");
                let mut written = w.take().written;
                written.sort_unstable();
                let want: &[u64] = if i == 0 { &[0x5000, 0x6000] } else { &[0x5000] };
                assert_eq!(written, want, "write {i}");
            }
            m.write_u8(0x6000, 0).unwrap();
        }
    }

    #[test]
    fn a_dropped_watch_is_not_fed() {
        let m = GuestMemory::new(MIB).unwrap();
        let a = m.code_watch();
        let b = m.code_watch();
        let weak = Arc::downgrade(&b);
        drop(b);
        assert!(weak.upgrade().is_none(), "memory keeps no strong reference");
        assert_eq!(m.code_watches(), 1);
        m.mark_code_page(0x3000);
        m.write_u8(0x3000, 1).unwrap();
        assert_eq!(a.take().written, [0x3000]);
        // Registering prunes the dead entries: the list stays as long as
        // the live watches.
        for _ in 0..100 {
            drop(m.code_watch());
        }
        let _c = m.code_watch();
        assert!(m.watches.read().unwrap().len() <= 2);
    }

    #[test]
    fn a_full_watch_queue_overflows_into_one_flag() {
        let m = GuestMemory::new(64 * MIB).unwrap();
        let w = m.code_watch();
        for i in 0..WATCH_QUEUE_MAX as u64 + 10 {
            m.mark_code_page_for(i * PAGE_SIZE, &w);
            m.write_u8(i * PAGE_SIZE, 1).unwrap();
        }
        let c = w.take();
        assert!(c.overflowed && c.written.is_empty() && !c.is_empty());
        assert!(w.take().is_empty());
    }
}
