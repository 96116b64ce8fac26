//! The soft TLB and the CPU's view of memory through it.
//!
//! [`Mmu`] pairs guest memory with a direct-mapped TLB of 4 KiB entries. There
//! are three entry sets, one per access privilege (user, supervisor, and
//! supervisor with EFLAGS.AC for SMAP), so a CPL change needs no flush. Each
//! entry keeps one tag per access kind; a hit is one compare of the tag with the
//! page address, then a host-pointer access. A tag is set only when that kind of
//! access is allowed and needs no page-table update (a write tag requires the
//! dirty bit), so the walker runs for everything else.
//!
//! Writes through the fast path still honour code-page tracking: a store to a
//! page with cached decoded code takes the slow path, which queues the page for
//! invalidation.

use std::sync::Arc;

use crate::memory::{CodeWatch, GuestMemory, PAGE_SIZE};
use crate::paging::{Access, PageFault, PagingCtx, Privilege, Translation};

const ENTRIES: usize = 1024;
/// Entries evicted from the direct-mapped sets are kept in a small fully
/// associative victim buffer per set, looked at before a page walk, so two
/// pages that share an index do not walk the tables at every switch.
const VICTIMS: usize = 8;
/// Slots filled since the last full flush that a flush visits instead of
/// scanning every slot; past this many it scans them all.
const TOUCHED_MAX: usize = 768;
const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
/// Set in a tag that is valid; page addresses have this bit clear.
const VALID: u64 = 1;

/// Physical pages translated code never writes straight to: the BIOS
/// shadow that the PAM registers turn read-only
/// ([`GuestMemory::set_shadow_read_only`] marks them as code pages without
/// reaching this TLB).
const JIT_NO_WRITE: std::ops::Range<u64> = 0xc_0000..0x10_0000;

/// 64 bytes (a cache line, and a shift rather than a multiply for the
/// index in translated code).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Entry {
    tag_read: u64,
    tag_write: u64,
    tag_exec: u64,
    /// Physical address of the 4 KiB page, with [`GLOBAL`] in bit 0 for a
    /// global translation (one that a CR3 load keeps).
    phys_g: u64,
    /// Host address of the page, or null when neither RAM nor ROM backs it.
    host: *mut u8,
    /// The linear page's distance to `host` (wrapping), for translated
    /// code: the host address of `lin` is `lin + addend`.
    addend: u64,
    /// The tags translated code compares, for accesses it may do straight
    /// through `host`: the linear page (without [`VALID`]; [`JIT_NONE`]
    /// otherwise) where `host` is not null and `tag_read` is valid, and
    /// where `tag_write` is valid and the page holds no code either (a page
    /// that gets code loses its entries, [`Mmu::flush_phys`]) and is not
    /// BIOS shadow (`JIT_NO_WRITE`).
    jit_read: u64,
    jit_write: u64,
}

/// Bit 0 of [`Entry::phys_g`]: the translation is global.
const GLOBAL: u64 = 1;

/// A `jit_read` or `jit_write` that no access matches (no page address
/// has bits 11:0 set).
const JIT_NONE: u64 = 1;

impl Entry {
    /// Any of its tags is valid.
    #[inline]
    fn live(&self) -> bool {
        (self.tag_read | self.tag_write | self.tag_exec) & VALID != 0
    }

    /// The physical page.
    #[inline]
    fn phys(&self) -> u64 {
        self.phys_g & PAGE_MASK
    }

    /// Whether the translation is global.
    #[inline]
    fn global(&self) -> bool {
        self.phys_g & GLOBAL != 0
    }
}

const EMPTY: Entry = Entry {
    tag_read: 0,
    tag_write: 0,
    tag_exec: 0,
    phys_g: 0,
    host: std::ptr::null_mut(),
    addend: 0,
    jit_read: JIT_NONE,
    jit_write: JIT_NONE,
};

fn set_index(p: Privilege) -> usize {
    match p {
        Privilege::User => 0,
        Privilege::Supervisor => 1,
        Privilege::SupervisorAc => 2,
    }
}

/// Where translated code finds the parts of a TLB entry it tests inline
/// (byte offsets into an entry; see [`Mmu::tlb_set`]). A hit for an access
/// of `n` bytes at `lin` is `jit_read` (or `jit_write`) `== (lin + n - 1)
/// & !0xfff` on the entry at index `(lin >> 12) % entries` (the tag of a
/// page the access leaves never matches); the access then goes straight to
/// host address `lin + addend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbLayout {
    pub entries: usize,
    pub entry_size: usize,
    pub tag_read: usize,
    pub tag_write: usize,
    /// Tags that also promise a host page (reads) and a page without code
    /// (writes): a hit needs no further test.
    pub jit_read: usize,
    pub jit_write: usize,
    pub addend: usize,
}

/// The layout of this build's TLB entries.
pub const TLB_LAYOUT: TlbLayout = TlbLayout {
    entries: ENTRIES,
    entry_size: std::mem::size_of::<Entry>(),
    tag_read: std::mem::offset_of!(Entry, tag_read),
    tag_write: std::mem::offset_of!(Entry, tag_write),
    jit_read: std::mem::offset_of!(Entry, jit_read),
    jit_write: std::mem::offset_of!(Entry, jit_write),
    addend: std::mem::offset_of!(Entry, addend),
};

/// Guest memory as one CPU sees it: translation, the soft TLB and fast accessors.
pub struct Mmu {
    mem: Arc<GuestMemory>,
    sets: Box<[[Entry; ENTRIES]; 3]>,
    victims: [[Entry; VICTIMS]; 3],
    /// The victim slot each set fills next (round robin).
    victim_next: [usize; 3],
    /// Unless `touched_all`: every live slot (`set * ENTRIES + index`) is
    /// on one of these lists (and some empty ones), so a flush visits only
    /// these: slots filled with a global translation on the second, the
    /// others on the first. Context switches flush often and fill few slots
    /// between flushes, and a CR3 load keeps global entries: it visits the
    /// first list only.
    touched: Vec<u16>,
    touched_global: Vec<u16>,
    touched_all: bool,
    /// A large page was split into TLB entries since the last full flush, so
    /// INVLPG must flush everything (it cannot tell which 4 KiB entries belong
    /// to the large page).
    has_large: bool,
    /// Walks performed (TLB misses), for statistics.
    pub walks: u64,
    /// Guest-requested flushes so far ([`Mmu::flush`], [`Mmu::flush_page`]):
    /// another engine sharing the page tables compares it to learn whether
    /// the guest changed translations.
    pub flushes: u64,
    /// Bumped whenever an entry may have lost its translation (every flush,
    /// INVLPG and [`Mmu::flush_phys`]): a memo of a translation taken at the
    /// same generation still holds.
    pub generation: u64,
    /// Bumped whenever a global entry may have lost its translation (a
    /// flush of global pages, INVLPG, [`Mmu::flush_phys`]), not at CR3
    /// loads that keep them: a memo of a global translation
    /// ([`Mmu::exec_global`]) taken at the same global generation still
    /// holds.
    pub global_generation: u64,
    /// The owner's code watch ([`Mmu::set_watch`]): while dirty logging is
    /// on, translated code gets write entries only through an `Mmu` that
    /// has one, which it tells first ([`CodeWatch::note_fast_writes`]).
    watch: Option<Arc<CodeWatch>>,
}

// SAFETY: the host pointers in the entries point into mappings owned by `mem`,
// which this struct keeps alive through its `Arc`; they are only used to copy
// bytes (see `GuestMemory`'s Send/Sync reasoning).
unsafe impl Send for Mmu {}

impl Mmu {
    pub fn new(mem: Arc<GuestMemory>) -> Self {
        Mmu {
            mem,
            sets: Box::new([[EMPTY; ENTRIES]; 3]),
            victims: [[EMPTY; VICTIMS]; 3],
            victim_next: [0; 3],
            touched: Vec::with_capacity(TOUCHED_MAX),
            touched_global: Vec::with_capacity(TOUCHED_MAX),
            touched_all: false,
            has_large: false,
            walks: 0,
            flushes: 0,
            generation: 0,
            global_generation: 0,
            watch: None,
        }
    }

    /// The code watch of the CPU that owns this TLB, which answers the
    /// write syncs of dirty logging ([`GuestMemory::request_write_sync`])
    /// by dropping its entries for translated stores
    /// ([`Mmu::drop_fast_writes`]).
    pub fn set_watch(&mut self, watch: Arc<CodeWatch>) {
        self.watch = Some(watch);
    }

    /// Whether translated code may store to physical page `phys` straight
    /// through an entry, as far as dirty logging goes: always while it is
    /// off; while it is on, only to a page dirty already (its first store
    /// of a round takes the checked path, which logs it), and only after
    /// the watch was told (which it is of every such entry).
    ///
    /// A page of the decoded VRAM is tracked whether logging is on or not,
    /// by its own bits ([`crate::vram`]): only through an `Mmu` with a
    /// watch, and only while the page's bit is set.
    #[inline]
    fn fast_write_logged(&self, phys: u64) -> bool {
        if self.mem.is_vram(phys) {
            let Some(w) = &self.watch else { return false };
            w.note_vram_fast_writes();
            return self.mem.vram_page_dirty(phys) == Some(true);
        }
        match &self.watch {
            Some(w) => {
                // Also while logging is off (the entry may outlive its
                // start), and before the dirty bit is read: a write sync
                // that swapped the bit out then waits for this TLB.
                w.note_fast_writes();
                !self.mem.dirty_logging() || self.mem.is_dirty(phys)
            }
            None => !self.mem.dirty_logging(),
        }
    }

    /// Drops every entry's tag for translated stores (a write sync of
    /// dirty logging): the next translated store to each page takes the
    /// checked path. The other tags stay.
    pub fn drop_fast_writes(&mut self) {
        let clear = |e: &mut Entry| e.jit_write = JIT_NONE;
        if self.touched_all {
            self.sets.iter_mut().flat_map(|s| s.iter_mut()).for_each(clear);
        } else {
            for &t in self.touched.iter().chain(&self.touched_global) {
                clear(&mut self.sets[usize::from(t) / ENTRIES][usize::from(t) % ENTRIES]);
            }
        }
        self.victims.iter_mut().flatten().for_each(clear);
    }

    /// Whether translated code may store into the VRAM through an entry
    /// given out since the owner last dropped them all: a vCPU that
    /// parks drops them, so that the adapter's write syncs need nothing
    /// from it while it does not run.
    pub fn holds_vram_fast_writes(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.holds_vram_fast_writes())
    }

    /// After a store through [`Mmu::write_fast`] at `lin`: gives the entry
    /// its tag for translated stores where it lacks one that it may have
    /// now (dirty logging withholds it until the page is dirty, and drops
    /// it at each round), so compiled stores to the page stop leaving
    /// their region.
    #[inline]
    pub fn grant_fast_write(&mut self, p: Privilege, lin: u64) {
        let set = set_index(p);
        let i = ((lin >> 12) as usize) % ENTRIES;
        let e = &self.sets[set][i];
        if e.jit_write != JIT_NONE || e.tag_write != (lin & PAGE_MASK) | VALID || e.host.is_null() {
            return;
        }
        let phys = e.phys();
        if JIT_NO_WRITE.contains(&phys) || !self.mem.holds_no_code(phys) || !self.fast_write_logged(phys) {
            return;
        }
        self.sets[set][i].jit_write = lin & PAGE_MASK;
    }

    /// The first entry of the set for privilege `p`, for translated code that
    /// tests the TLB inline ([`TLB_LAYOUT`]). The address is stable for the
    /// life of the `Mmu`; the entries change under it with every fill and
    /// flush, so code reading them runs only while no `&mut Mmu` is in use.
    pub fn tlb_set(&self, p: Privilege) -> *const u8 {
        self.sets[set_index(p)].as_ptr().cast()
    }

    /// The guest memory behind this MMU.
    #[inline]
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Drop every entry (`keep_global`: keep global pages, as a CR3 load does with CR4.PGE).
    pub fn flush(&mut self, keep_global: bool) {
        self.flushes += 1;
        self.generation += 1;
        if !keep_global {
            self.global_generation += 1;
        }
        let drop = |e: &Entry| !(keep_global && e.global());
        if self.touched_all {
            // Every slot; the ones kept (global) are the list from now on.
            self.touched.clear();
            self.touched_global.clear();
            self.touched_all = false;
            for (si, set) in self.sets.iter_mut().enumerate() {
                for (i, e) in set.iter_mut().enumerate() {
                    if drop(e) {
                        *e = EMPTY;
                    } else if e.live() {
                        Self::touch_into(&mut self.touched_global, &mut self.touched_all, si, i);
                    }
                }
            }
        } else {
            // A slot on the first list that holds a global entry now is on
            // the second too (it was put there when it became global).
            for &t in &self.touched {
                let e = &mut self.sets[usize::from(t) / ENTRIES][usize::from(t) % ENTRIES];
                if drop(e) {
                    *e = EMPTY;
                }
            }
            self.touched.clear();
            if !keep_global {
                for &t in &self.touched_global {
                    self.sets[usize::from(t) / ENTRIES][usize::from(t) % ENTRIES] = EMPTY;
                }
                self.touched_global.clear();
            }
        }
        for set in self.victims.iter_mut() {
            for e in set.iter_mut() {
                if !(keep_global && e.global()) {
                    *e = EMPTY;
                }
            }
        }
        if !keep_global {
            self.has_large = false;
        }
    }

    /// INVLPG: drop the entries for the page holding `lin`.
    pub fn flush_page(&mut self, lin: u64) {
        self.flushes += 1;
        self.generation += 1;
        // The page may be one that global translations map.
        self.global_generation += 1;
        if self.has_large {
            self.flush(false);
            return;
        }
        let idx = ((lin >> 12) as usize) % ENTRIES;
        let holds = |e: &Entry| {
            e.tag_read | VALID == (lin & PAGE_MASK) | VALID
                || e.tag_write | VALID == (lin & PAGE_MASK) | VALID
                || e.tag_exec | VALID == (lin & PAGE_MASK) | VALID
        };
        for set in self.sets.iter_mut() {
            if holds(&set[idx]) {
                set[idx] = EMPTY;
            }
        }
        for set in self.victims.iter_mut() {
            for e in set.iter_mut() {
                if holds(e) {
                    *e = EMPTY;
                }
            }
        }
    }

    /// Drop entries whose physical page is `phys_page` (used when a code page is
    /// first cached, so its write tags stop bypassing the tracking check).
    pub fn flush_phys(&mut self, phys_page: u64) {
        self.generation += 1;
        self.global_generation += 1;
        let hit = |e: &mut Entry| {
            if e.phys() == phys_page & PAGE_MASK {
                *e = EMPTY;
            }
        };
        if self.touched_all {
            self.sets.iter_mut().flat_map(|s| s.iter_mut()).for_each(hit);
        } else {
            for &t in self.touched.iter().chain(&self.touched_global) {
                hit(&mut self.sets[usize::from(t) / ENTRIES][usize::from(t) % ENTRIES]);
            }
        }
        self.victims.iter_mut().flatten().for_each(hit);
    }

    /// Slot `i` of set `si` is about to hold an entry (global or not): put
    /// it on that kind's list unless it is there already (a live entry of
    /// the same kind holds it).
    #[inline]
    fn touch(&mut self, si: usize, i: usize, global: bool) {
        let old = &self.sets[si][i];
        if old.live() && old.global() == global {
            return;
        }
        let list = if global { &mut self.touched_global } else { &mut self.touched };
        Self::touch_into(list, &mut self.touched_all, si, i);
    }

    /// Note that slot `i` of set `si` was filled.
    #[inline]
    fn touch_into(list: &mut Vec<u16>, all: &mut bool, si: usize, i: usize) {
        if *all {
            return;
        }
        if list.len() >= TOUCHED_MAX {
            *all = true;
            return;
        }
        list.push((si * ENTRIES + i) as u16);
    }

    #[inline]
    fn entry(&self, p: Privilege, lin: u64) -> &Entry {
        &self.sets[set_index(p)][((lin >> 12) as usize) % ENTRIES]
    }

    /// The physical address for `lin` if the TLB holds it for this access.
    #[inline]
    /// Whether the TLB holds a global translation of `lin` for
    /// instruction fetches at `p` (one that a CR3 load keeps).
    pub fn exec_global(&self, p: Privilege, lin: u64) -> bool {
        let e = self.entry(p, lin);
        e.global() && e.tag_exec == (lin & PAGE_MASK) | VALID
    }

    pub fn lookup(&self, p: Privilege, lin: u64, access: Access) -> Option<u64> {
        let e = self.entry(p, lin);
        let tag = match access {
            Access::Read => e.tag_read,
            Access::Write => e.tag_write,
            Access::Execute => e.tag_exec,
        };
        (tag == (lin & PAGE_MASK) | VALID).then_some(e.phys() | (lin & !PAGE_MASK))
    }

    /// Translate `lin`, from the TLB or by walking the page tables (filling the TLB).
    pub fn translate(&mut self, ctx: &PagingCtx, p: Privilege, lin: u64, access: Access) -> Result<u64, PageFault> {
        if let Some(phys) = self.lookup(p, lin, access) {
            return Ok(phys);
        }
        if let Some(phys) = self.take_victim(p, lin, access) {
            return Ok(phys);
        }
        self.walks += 1;
        let t = ctx.translate(&self.mem, lin, access, p)?;
        self.insert(ctx, p, lin, &t);
        Ok(t.phys)
    }

    fn insert(&mut self, ctx: &PagingCtx, p: Privilege, lin: u64, t: &Translation) {
        if t.page_size > PAGE_SIZE {
            self.has_large = true;
        }
        let phys = t.phys & PAGE_MASK;
        let tag = (lin & PAGE_MASK) | VALID;
        let host = self.mem.host_range(phys);
        let allow = |a| ctx.permits(t, a, p);
        let tag_read = if allow(Access::Read) { tag } else { 0 };
        let tag_write = if allow(Access::Write) && t.dirty && host.is_some_and(|h| h.writable) { tag } else { 0 };
        let host_ptr = host.map_or(std::ptr::null_mut(), |h| h.ptr);
        let page = lin & PAGE_MASK;
        let jit_tag = |t: u64| if t == tag { page } else { JIT_NONE };
        let fast_write = tag_write == tag
            && !JIT_NO_WRITE.contains(&phys)
            && self.mem.holds_no_code(phys)
            && self.fast_write_logged(phys);
        let e = Entry {
            tag_read,
            tag_write,
            tag_exec: if allow(Access::Execute) { tag } else { 0 },
            phys_g: phys | if t.global { GLOBAL } else { 0 },
            host: host_ptr,
            addend: (host_ptr as u64).wrapping_sub(page),
            jit_read: if host.is_some() { jit_tag(tag_read) } else { JIT_NONE },
            jit_write: if fast_write { jit_tag(tag_write) } else { JIT_NONE },
        };
        self.place(p, lin, e);
    }

    /// Put `e` in its slot; a valid entry there for another page moves to
    /// the victim buffer.
    fn place(&mut self, p: Privilege, lin: u64, e: Entry) {
        let set = set_index(p);
        let i = ((lin >> 12) as usize) % ENTRIES;
        self.touch(set, i, e.global());
        let slot = &mut self.sets[set][i];
        let old = std::mem::replace(slot, e);
        let page = |x: &Entry| (x.tag_read | x.tag_write | x.tag_exec) & PAGE_MASK;
        let valid = (old.tag_read | old.tag_write | old.tag_exec) & VALID != 0;
        if valid && page(&old) != lin & PAGE_MASK {
            let n = self.victim_next[set];
            self.victims[set][n] = old;
            self.victim_next[set] = (n + 1) % VICTIMS;
        }
    }

    /// A victim entry that holds `lin` for `access`: swapped back into its
    /// slot (the entry there becomes the victim).
    fn take_victim(&mut self, p: Privilege, lin: u64, access: Access) -> Option<u64> {
        let set = set_index(p);
        let want = (lin & PAGE_MASK) | VALID;
        let i = self.victims[set].iter().position(|e| {
            let tag = match access {
                Access::Read => e.tag_read,
                Access::Write => e.tag_write,
                Access::Execute => e.tag_exec,
            };
            tag == want
        })?;
        let e = self.victims[set][i];
        let si = ((lin >> 12) as usize) % ENTRIES;
        self.touch(set, si, e.global());
        let slot = &mut self.sets[set][si];
        self.victims[set][i] = std::mem::replace(slot, e);
        Some(e.phys() | (lin & !PAGE_MASK))
    }

    /// Read `N` bytes at `lin` if the TLB hits, the access stays in one page and
    /// RAM or ROM backs it. `None` sends the caller to the slow path.
    #[inline]
    pub fn read_fast<const N: usize>(&self, p: Privilege, lin: u64) -> Option<[u8; N]> {
        let off = (lin & !PAGE_MASK) as usize;
        if off + N > PAGE_SIZE as usize {
            return None;
        }
        let e = self.entry(p, lin);
        if e.tag_read != (lin & PAGE_MASK) | VALID || e.host.is_null() {
            return None;
        }
        let mut out = [0u8; N];
        // SAFETY: `e.host` points at a 4 KiB page inside a live mapping owned by
        // `self.mem` (entries are built from `GuestMemory::host_range`, whose
        // regions are page-aligned), and `off + N <= 4096` was checked above.
        unsafe { crate::atomic::load_guest(e.host.add(off), &mut out) };
        crate::atomic::after_guest_load();
        Some(out)
    }

    /// Write `data` at `lin` if the TLB hits for writes, the access stays in one
    /// page, RAM backs it and the page holds no cached code. Returns whether it
    /// wrote.
    #[inline]
    pub fn write_fast(&self, p: Privilege, lin: u64, data: &[u8]) -> bool {
        let off = (lin & !PAGE_MASK) as usize;
        if off + data.len() > PAGE_SIZE as usize {
            return false;
        }
        let e = self.entry(p, lin);
        if e.tag_write != (lin & PAGE_MASK) | VALID || e.host.is_null() || self.mem.is_code_page(e.phys()) {
            return false;
        }
        crate::atomic::before_guest_store();
        // SAFETY: as in `read_fast`; write tags are only set for writable RAM.
        unsafe { crate::atomic::store_guest(e.host.add(off), data) };
        self.mem.mark_dirty(e.phys(), PAGE_SIZE);
        true
    }

    /// The host address of the `n` bytes at `lin` if the TLB holds the
    /// page for writes at `p`, the bytes stay in the page, and the page is
    /// RAM without cached code: where [`Mmu::write_fast`] would write.
    #[inline]
    fn host_for_write(&self, p: Privilege, lin: u64, n: usize) -> Option<*mut u8> {
        let off = (lin & !PAGE_MASK) as usize;
        if off + n > PAGE_SIZE as usize {
            return None;
        }
        let e = self.entry(p, lin);
        if e.tag_write != (lin & PAGE_MASK) | VALID || e.host.is_null() || self.mem.is_code_page(e.phys()) {
            return None;
        }
        // `off + n <= 4096`: inside the entry's page.
        Some(e.host.wrapping_add(off))
    }

    /// [`GuestMemory::atomic_load`] at linear address `lin` through the
    /// TLB, where [`Mmu::write_fast`] would write; `None` sends the caller
    /// to the slow path (also for a misaligned `lin` on hosts without split
    /// locks, and sizes other than 1, 2, 4 and 8).
    #[inline]
    pub fn atomic_load_fast(&self, p: Privilege, lin: u64, size: u8) -> Option<u64> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let host = self.host_for_write(p, lin, usize::from(size))?;
        let v = if (host as usize).is_multiple_of(usize::from(size)) {
            // SAFETY: `host_for_write` found the bytes inside a page of a
            // live RAM mapping owned by `self.mem`; the pointer is aligned.
            unsafe { crate::atomic::load_aligned(host, size) }
        } else if cfg!(target_arch = "x86_64") {
            let mut b = [0u8; 8];
            // SAFETY: as above; `b` is a distinct buffer of 8 >= `size` bytes.
            unsafe { crate::atomic::load_guest(host, &mut b[..usize::from(size)]) };
            u64::from_le_bytes(b)
        } else {
            return None;
        };
        crate::atomic::after_guest_load();
        Some(v)
    }

    /// [`GuestMemory::compare_exchange`] at linear address `lin` through
    /// the TLB, where [`Mmu::write_fast`] would write (the page holds no
    /// code, so nothing is noted for the code-page tracking); `None` sends
    /// the caller to the slow path, as [`Mmu::atomic_load_fast`].
    #[inline]
    pub fn compare_exchange_fast(
        &self,
        p: Privilege,
        lin: u64,
        size: u8,
        current: u64,
        new: u64,
    ) -> Option<Result<u64, u64>> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let host = self.host_for_write(p, lin, usize::from(size))?;
        let m = if size == 8 { u64::MAX } else { (1u64 << (u32::from(size) * 8)) - 1 };
        let (current, new) = (current & m, new & m);
        let r = if (host as usize).is_multiple_of(usize::from(size)) {
            // SAFETY: `host_for_write` found the bytes inside a page of a
            // live RAM mapping owned by `self.mem`; the pointer is aligned.
            Some(unsafe { crate::atomic::cas_aligned(host, size, current, new) })
        } else {
            // SAFETY: as above.
            unsafe { crate::atomic::cas_misaligned(host, size, current, new) }
        };
        if matches!(r, Some(Ok(_))) && new != current {
            self.mem.mark_dirty(self.entry(p, lin).phys(), PAGE_SIZE);
        }
        r
    }
}

impl PagingCtx {
    /// Whether a translation allows `access` at `privilege` (the walker's checks,
    /// repeated so the TLB can tag each access kind).
    pub fn permits(&self, t: &Translation, access: Access, privilege: Privilege) -> bool {
        if t.pkey.is_some_and(|k| self.keys.deny(k, t.user, access, privilege, self.wp)) {
            return false;
        }
        match (access, privilege) {
            (Access::Read, Privilege::User) => t.user,
            (Access::Write, Privilege::User) => t.user && t.writable,
            (Access::Execute, Privilege::User) => t.user && !t.nx,
            (Access::Read, p) => !(self.smap && t.user && p == Privilege::Supervisor),
            (Access::Write, p) => !((self.wp && !t.writable) || (self.smap && t.user && p == Privilege::Supervisor)),
            (Access::Execute, _) => !(t.nx || (self.smep && t.user)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Mmu, PagingCtx) {
        let mem = Arc::new(GuestMemory::new(1 << 22).unwrap());
        // PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000; 0x0 -> 0x5000 rw user, 0x1000 -> 0x6000 read-only.
        mem.write_u64(0x1000, 0x2000 | 7).unwrap();
        mem.write_u64(0x2000, 0x3000 | 7).unwrap();
        mem.write_u64(0x3000, 0x4000 | 7).unwrap();
        mem.write_u64(0x4000, 0x5000 | 7).unwrap();
        mem.write_u64(0x4008, 0x6000 | 5).unwrap();
        let ctx = PagingCtx::level4(0x1000);
        (Mmu::new(mem), ctx)
    }

    /// The `jit_write` tag of the entry for `lin`.
    fn jit_write_of(m: &Mmu, p: Privilege, lin: u64) -> u64 {
        m.entry(p, lin).jit_write
    }

    /// 4 MiB of RAM, flat paging, and a TLB that answers to the memory's
    /// write syncs through its watch.
    fn watched_tlb() -> (Arc<GuestMemory>, PagingCtx, Arc<CodeWatch>, Mmu) {
        let mem = Arc::new(GuestMemory::new(1 << 22).unwrap());
        let ctx = PagingCtx::OFF;
        let watch = mem.code_watch();
        let mut m = Mmu::new(mem.clone());
        m.set_watch(watch.clone());
        (mem, ctx, watch, m)
    }

    /// While dirty logging is on, translated code gets a write entry only
    /// for a page dirty already; the interpreter's fast store logs its
    /// page and grants the entry; a write sync drops every such entry and
    /// is answered by the owner's take of its watch.
    #[test]
    fn dirty_logging_withholds_and_drops_translated_write_entries() {
        let (mem, ctx, watch, mut m) = watched_tlb();
        let s = Privilege::Supervisor;
        // Logging off: a fill gives the tag at once.
        m.translate(&ctx, s, 0x10_0000, Access::Write).unwrap();
        assert_eq!(jit_write_of(&m, s, 0x10_0000), 0x10_0000);
        mem.start_dirty_log().unwrap();
        let sync = mem.request_write_sync();
        assert!(!mem.write_sync_done(sync), "the TLB held a write entry when logging began");
        let changes = watch.take();
        assert!(changes.drop_fast_writes);
        m.drop_fast_writes();
        assert!(mem.write_sync_done(sync));
        assert_eq!(jit_write_of(&m, s, 0x10_0000), JIT_NONE);
        // A fill of a clean page gives no tag; the interpreter's store logs
        // the page and then grants it.
        m.translate(&ctx, s, 0x20_0000, Access::Write).unwrap();
        assert_eq!(jit_write_of(&m, s, 0x20_0000), JIT_NONE);
        assert!(m.write_fast(s, 0x20_0010, &[1, 2, 3]));
        assert!(mem.is_dirty(0x20_0000));
        m.grant_fast_write(s, 0x20_0010);
        assert_eq!(jit_write_of(&m, s, 0x20_0000), 0x20_0000);
        // A fill of a page dirty already gives the tag.
        mem.write_u8(0x30_0000, 1).unwrap();
        m.translate(&ctx, s, 0x30_0000, Access::Write).unwrap();
        assert_eq!(jit_write_of(&m, s, 0x30_0000), 0x30_0000);
        // A new round: the pages come back once, and the sync waits for
        // this TLB until its owner takes the watch's queue.
        let round = mem.take_dirty();
        assert_eq!(round.pages().collect::<Vec<_>>(), [0x20_0000, 0x30_0000]);
        assert!(mem.take_dirty().is_empty());
        let sync = mem.request_write_sync();
        assert!(!mem.write_sync_done(sync));
        assert!(watch.take().drop_fast_writes);
        m.drop_fast_writes();
        assert!(mem.write_sync_done(sync));
        assert_eq!(jit_write_of(&m, s, 0x20_0000), JIT_NONE);
        assert_eq!(jit_write_of(&m, s, 0x30_0000), JIT_NONE);
        // The compare-exchange fast path logs its page; a failed one does not.
        m.translate(&ctx, s, 0x40_0000 - 0x1000, Access::Write).unwrap();
        assert_eq!(m.compare_exchange_fast(s, 0x3f_f000, 4, 5, 6), Some(Err(0)));
        assert!(!mem.is_dirty(0x3f_f000));
        assert_eq!(m.compare_exchange_fast(s, 0x3f_f000, 4, 0, 6), Some(Ok(0)));
        assert!(mem.is_dirty(0x3f_f000));
        // Without a watch an `Mmu` gives translated code no write entry
        // while logging is on.
        let mut bare = Mmu::new(mem.clone());
        bare.translate(&ctx, s, 0x3f_f000, Access::Write).unwrap();
        assert_eq!(jit_write_of(&bare, s, 0x3f_f000), JIT_NONE);
        // Logging off again: tags as before.
        mem.stop_dirty_log();
        m.grant_fast_write(s, 0x20_0000);
        assert_eq!(jit_write_of(&m, s, 0x20_0000), 0x20_0000);
        assert!(!mem.is_dirty(0x20_0000));
    }

    /// The decoded VRAM: a host entry like RAM's, its stores tracked by
    /// its own bits whether logging is on or not; translated code gets a
    /// write entry only for a page whose bit is set, and the adapter's
    /// write sync waits only for a TLB that gave one out.
    #[test]
    fn vram_stores_are_tracked_by_its_own_bits() {
        let mut mem = GuestMemory::new(1 << 22).unwrap();
        let vram = mem.add_vram(1 << 20).unwrap();
        let mem = Arc::new(mem);
        let ctx = PagingCtx::OFF;
        let watch = mem.code_watch();
        let mut m = Mmu::new(mem.clone());
        m.set_watch(watch.clone());
        let s = Privilege::Supervisor;
        const FB: u64 = 0xe000_0000;
        // Not decoded: no host entry, and the checked paths refuse it.
        m.translate(&ctx, s, FB, Access::Write).unwrap();
        assert!(m.read_fast::<1>(s, FB).is_none());
        assert!(mem.write_u8(FB, 1).is_err());
        // Over RAM, past 4 GiB or misaligned: refused, decoded nowhere.
        assert!(mem.map_vram(Some(0x20_0000)).is_err());
        assert!(mem.map_vram(Some(0xfff0_0000 + 0x1000)).is_err());
        assert!(mem.map_vram(Some(FB + 1)).is_err());
        assert_eq!(vram.base(), None);
        mem.map_vram(Some(FB)).unwrap();
        assert!(watch.take().overflowed, "a move drops every TLB");
        m.flush(false);
        // A fill gives reads but no translated store to a clean page.
        m.translate(&ctx, s, FB + 0x1000, Access::Write).unwrap();
        assert_eq!(jit_write_of(&m, s, FB + 0x1000), JIT_NONE);
        // The interpreter's store lands in the VRAM, sets the page's bit
        // (not migration's) and grants the entry.
        assert!(m.write_fast(s, FB + 0x1004, &[9]));
        assert_eq!(vram.byte(0x1004), Some(9));
        assert!(!mem.is_dirty(FB + 0x1000));
        m.grant_fast_write(s, FB + 0x1004);
        assert_eq!(jit_write_of(&m, s, FB + 0x1000), FB + 0x1000);
        assert!(m.holds_vram_fast_writes());
        // DMA (the checked path) reaches it too, and sets its bit.
        mem.write(FB + 0x3000, &[1, 2]).unwrap();
        assert_eq!(mem.read_u8(FB + 0x3001).unwrap(), 2);
        let taken = vram.take_dirty();
        assert_eq!(taken[0], 0b1010);
        // The adapter's sync waits for this TLB, which drops the entry.
        let sync = mem.request_write_sync();
        assert!(!mem.vram_sync_done(sync));
        assert!(watch.take().drop_fast_writes);
        m.drop_fast_writes();
        assert!(mem.vram_sync_done(sync));
        assert!(!m.holds_vram_fast_writes());
        assert_eq!(jit_write_of(&m, s, FB + 0x1000), JIT_NONE);
        // A TLB that never stored into the VRAM holds no sync up.
        mem.write_u8(0x10_0000, 1).unwrap();
        m.translate(&ctx, s, 0x10_0000, Access::Write).unwrap();
        assert_eq!(jit_write_of(&m, s, 0x10_0000), 0x10_0000);
        let sync = mem.request_write_sync();
        assert!(mem.vram_sync_done(sync));
        assert!(!mem.write_sync_done(sync));
        // Moved away: the old address is no longer the VRAM.
        mem.map_vram(None).unwrap();
        assert!(mem.write_u8(FB, 1).is_err());
        assert!(mem.host_range(FB).is_none());
    }

    /// A TLB whose owner stopped running drops its translated stores'
    /// entries once and says so: every later write sync is answered
    /// without it, until it gives out an entry again.
    #[test]
    fn a_parked_owner_answers_every_later_write_sync() {
        let (mem, ctx, watch, mut m) = watched_tlb();
        let s = Privilege::Supervisor;
        mem.start_dirty_log().unwrap();
        mem.write_u8(0x10_0000, 1).unwrap();
        m.translate(&ctx, s, 0x10_0000, Access::Write).unwrap();
        assert_eq!(jit_write_of(&m, s, 0x10_0000), 0x10_0000);
        // Parked: nothing was asked yet, so the queue says nothing.
        assert!(!watch.take().drop_fast_writes);
        m.drop_fast_writes();
        watch.fast_writes_dropped();
        assert_eq!(jit_write_of(&m, s, 0x10_0000), JIT_NONE);
        for _ in 0..3 {
            let sync = mem.request_write_sync();
            assert!(mem.write_sync_done(sync), "a round waits for a parked TLB");
        }
        // Running again: an entry given out makes the next sync wait.
        mem.write_u8(0x20_0000, 1).unwrap();
        m.translate(&ctx, s, 0x20_0000, Access::Write).unwrap();
        assert_eq!(jit_write_of(&m, s, 0x20_0000), 0x20_0000);
        let sync = mem.request_write_sync();
        assert!(!mem.write_sync_done(sync));
    }

    /// A flush visits the slots filled since the last full scan; past
    /// `TOUCHED_MAX` of them it scans all. Either way global entries stay
    /// on a CR3 load and everything else goes.
    #[test]
    fn flushes_drop_what_was_filled_and_keep_global_pages() {
        let mem = Arc::new(GuestMemory::new(1 << 24).unwrap());
        // Identity map of the first 4 MiB through two page tables (0x7000
        // for 0..2 MiB, 0x8000 for 2..4 MiB); pages >= 1 MiB are global.
        mem.write_u64(0x1000, 0x2000 | 7).unwrap();
        mem.write_u64(0x2000, 0x3000 | 7).unwrap();
        mem.write_u64(0x3000, 0x7000 | 7).unwrap();
        mem.write_u64(0x3008, 0x8000 | 7).unwrap();
        for i in 0..1024u64 {
            let g = if i >= 256 { 0x100 } else { 0 };
            let pt = if i < 512 { 0x7000 } else { 0x8000 };
            mem.write_u64(pt + 8 * (i % 512), (i << 12) | 7 | g).unwrap();
        }
        let ctx = PagingCtx::level4(0x1000);
        let mut m = Mmu::new(mem);
        for fill in [8u64, 1000] {
            let pages: Vec<u64> = (0..fill).map(|k| (k * 3 % 1024) << 12).collect();
            for &lin in &pages {
                m.translate(&ctx, Privilege::Supervisor, lin, Access::Read).unwrap();
                m.translate(&ctx, Privilege::User, lin, Access::Read).unwrap();
            }
            assert_eq!(m.touched_all, fill > 300, "fill {fill}");
            m.flush(true);
            for &lin in &pages {
                let hit = m.read_fast::<1>(Privilege::Supervisor, lin).is_some();
                assert_eq!(hit, lin >= 1 << 20, "fill {fill}, page {lin:#x} after a CR3 load");
            }
            m.flush(false);
            assert!(m.touched.is_empty() && m.touched_global.is_empty() && !m.touched_all);
            for &lin in &pages {
                assert!(m.read_fast::<1>(Privilege::Supervisor, lin).is_none(), "page {lin:#x} after a full flush");
                assert!(m.read_fast::<1>(Privilege::User, lin).is_none());
            }
        }
    }

    /// A slot that held a global entry and now holds another page's
    /// non-global one (or the other way round) goes with a CR3 load (or
    /// stays).
    #[test]
    fn a_slot_that_changes_kind_is_flushed_by_its_new_kind() {
        let mem = Arc::new(GuestMemory::new(1 << 24).unwrap());
        // Pages 256..512 global (first page table), pages 1024.. 1536 not
        // (third): page 256 + 1024 shares page 256's slot.
        mem.write_u64(0x1000, 0x2000 | 7).unwrap();
        mem.write_u64(0x2000, 0x3000 | 7).unwrap();
        mem.write_u64(0x3000, 0x7000 | 7).unwrap();
        mem.write_u64(0x3010, 0x9000 | 7).unwrap();
        for i in 0..512u64 {
            mem.write_u64(0x7000 + 8 * i, (i << 12) | 7 | 0x100).unwrap();
            mem.write_u64(0x9000 + 8 * i, ((i + 1024) << 12) | 7).unwrap();
        }
        let ctx = PagingCtx::level4(0x1000);
        let (global, local) = (256u64 << 12, (256u64 + 1024) << 12);
        let mut m = Mmu::new(mem);
        m.translate(&ctx, Privilege::Supervisor, global, Access::Read).unwrap();
        m.translate(&ctx, Privilege::Supervisor, local, Access::Read).unwrap();
        m.flush(true);
        assert!(m.read_fast::<1>(Privilege::Supervisor, local).is_none(), "the non-global page went");
        m.translate(&ctx, Privilege::Supervisor, local, Access::Read).unwrap();
        m.translate(&ctx, Privilege::Supervisor, global, Access::Read).unwrap();
        m.flush(true);
        assert!(m.read_fast::<1>(Privilege::Supervisor, global).is_some(), "the global page stayed");
        m.flush(false);
        assert!(m.read_fast::<1>(Privilege::Supervisor, global).is_none());
    }

    #[test]
    fn hit_after_walk_and_dirty_gating() {
        let (mut m, ctx) = setup();
        assert!(m.read_fast::<4>(Privilege::User, 0x10).is_none());
        assert_eq!(m.translate(&ctx, Privilege::User, 0x10, Access::Read).unwrap(), 0x5010);
        m.mem().write_u32(0x5010, 0x1234_5678).unwrap();
        assert_eq!(m.read_fast::<4>(Privilege::User, 0x10), Some(0x1234_5678u32.to_le_bytes()));
        // The read walk did not set D, so writes still miss.
        assert!(!m.write_fast(Privilege::User, 0x10, &[1]));
        m.translate(&ctx, Privilege::User, 0x10, Access::Write).unwrap();
        assert!(m.write_fast(Privilege::User, 0x10, &[0xaa]));
        assert_eq!(m.mem().read_u8(0x5010).unwrap(), 0xaa);
        // Page-crossing accesses go slow.
        assert!(m.read_fast::<8>(Privilege::User, 0xffc).is_none());
        // Other privilege sets are separate.
        assert!(m.read_fast::<1>(Privilege::Supervisor, 0x10).is_none());
    }

    #[test]
    fn read_only_pages_never_get_write_tags_and_invlpg_drops() {
        let (mut m, ctx) = setup();
        assert!(m.translate(&ctx, Privilege::User, 0x1000, Access::Write).is_err());
        m.translate(&ctx, Privilege::User, 0x1000, Access::Read).unwrap();
        assert!(!m.write_fast(Privilege::User, 0x1000, &[1]));
        assert!(m.lookup(Privilege::User, 0x1000, Access::Read).is_some());
        m.flush_page(0x1234);
        assert!(m.lookup(Privilege::User, 0x1000, Access::Read).is_none());
    }

    #[test]
    fn code_pages_take_the_slow_path() {
        let (mut m, ctx) = setup();
        m.translate(&ctx, Privilege::User, 0x0, Access::Write).unwrap();
        m.mem().mark_code_page(0x5000);
        assert!(!m.write_fast(Privilege::User, 0x0, &[1]));
    }

    /// A global translation outlives a CR3 load and keeps the global
    /// generation; a flush of global pages, INVLPG and `flush_phys` move
    /// it on.
    #[test]
    fn the_global_generation_survives_cr3_loads_only() {
        let (mut m, ctx) = setup();
        // Linear 0x2000 maps 0x7000 as a global supervisor page.
        m.mem().write_u64(0x4010, 0x7000 | 0x103).unwrap();
        m.translate(&ctx, Privilege::Supervisor, 0x2000, Access::Execute).unwrap();
        m.translate(&ctx, Privilege::User, 0x0, Access::Execute).unwrap();
        assert!(m.exec_global(Privilege::Supervisor, 0x2000));
        assert!(!m.exec_global(Privilege::User, 0x0), "not global");
        let (g, gg) = (m.generation, m.global_generation);
        m.flush(true);
        assert!(m.generation > g);
        assert_eq!(m.global_generation, gg, "a CR3 load keeps global pages");
        assert!(m.exec_global(Privilege::Supervisor, 0x2000));
        m.flush_page(0x5000);
        assert!(m.global_generation > gg, "INVLPG may drop a global page");
        let gg = m.global_generation;
        m.flush_phys(0x9000);
        assert!(m.global_generation > gg);
        let gg = m.global_generation;
        m.flush(false);
        assert!(m.global_generation > gg);
        assert!(!m.exec_global(Privilege::Supervisor, 0x2000), "gone with a global flush");
    }

    /// The tags translated code compares: a write tag only for a page
    /// without code, gone once the page gets code (`flush_phys`), back at
    /// the next fill once the code is gone; none for BIOS shadow.
    #[test]
    fn translated_code_tags_leave_out_code_pages_and_the_bios_shadow() {
        let (mut m, ctx) = setup();
        let slot = |m: &Mmu, lin: u64| m.sets[set_index(Privilege::User)][((lin >> 12) as usize) % ENTRIES];
        m.translate(&ctx, Privilege::User, 0x0, Access::Write).unwrap();
        let e = slot(&m, 0x0);
        assert_eq!((e.jit_read, e.jit_write), (0, 0), "RAM without code: the linear page");
        assert_eq!(0x123u64.wrapping_add(e.addend), e.host as u64 + 0x123, "lin + addend is the host address");
        assert!(m.mem().mark_code_page(0x5000));
        m.flush_phys(0x5000);
        assert_eq!(slot(&m, 0x0).jit_write, JIT_NONE, "flushed when the page got code");
        m.translate(&ctx, Privilege::User, 0x0, Access::Write).unwrap();
        let e = slot(&m, 0x0);
        assert_eq!((e.jit_read, e.jit_write), (0, JIT_NONE), "a code page: reads only");
        m.mem().write_u8(0x5000, 1).unwrap();
        assert!(m.mem().holds_no_code(0x5000), "the write dropped the code");
        m.flush(false);
        m.translate(&ctx, Privilege::User, 0x0, Access::Write).unwrap();
        assert_eq!(slot(&m, 0x0).jit_write, 0);
        // Linear 0x3000 maps the shadow page at 0xf0000.
        m.mem().write_u64(0x4018, 0xf_0000 | 0x67).unwrap();
        m.translate(&ctx, Privilege::User, 0x3000, Access::Write).unwrap();
        let e = slot(&m, 0x3000);
        assert_eq!((e.tag_write, e.jit_write), (0x3000 | VALID, JIT_NONE), "BIOS shadow: no straight writes");
        assert_eq!(e.jit_read, 0x3000);
    }

    /// The locked accesses take the TLB where a plain store would, and
    /// leave everything else (read-only pages, code pages, accesses
    /// across a page) to the slow path.
    #[test]
    fn atomics_through_the_tlb() {
        let (mut m, ctx) = setup();
        let p = Privilege::User;
        assert_eq!(m.atomic_load_fast(p, 0x10, 4), None, "nothing translated yet");
        m.translate(&ctx, p, 0x10, Access::Write).unwrap();
        m.translate(&ctx, p, 0x1010, Access::Read).unwrap();
        m.mem().write_u32(0x5010, 7).unwrap();
        assert_eq!(m.atomic_load_fast(p, 0x10, 4), Some(7));
        assert_eq!(m.compare_exchange_fast(p, 0x10, 4, 6, 9), Some(Err(7)));
        assert_eq!(m.compare_exchange_fast(p, 0x10, 4, 7, 9), Some(Ok(7)));
        assert_eq!(m.mem().read_u32(0x5010).unwrap(), 9);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(m.compare_exchange_fast(p, 0x13, 2, 0, 0x0101), Some(Ok(0)), "misaligned");
            assert_eq!(m.mem().read_u32(0x5012).unwrap(), 0x0001_0100);
        }
        assert_eq!(m.atomic_load_fast(p, 0xffe, 4), None, "across the page");
        assert_eq!(m.atomic_load_fast(p, 0x10, 3), None, "no such size");
        assert_eq!(m.atomic_load_fast(p, 0x1010, 4), None, "read-only");
        assert_eq!(m.compare_exchange_fast(p, 0x1010, 4, 0, 1), None);
        m.mem().mark_code_page(0x5000);
        assert_eq!(m.compare_exchange_fast(p, 0x10, 1, 9, 1), None, "a code page");
        assert_eq!(m.mem().read_u8(0x5010).unwrap(), 9);
    }
}
