//! The decoded-block cache: blocks of decoded instructions keyed by the
//! guest physical address of their first byte, a direct-mapped lookup in
//! front of the hash map, chains from each block to the one that ran after
//! it, and decoding on a miss. Code pages are tracked in guest memory, so a
//! store (by this CPU, another one, or a device) into a page drops its
//! blocks: each CPU has its own [`mmu::CodeWatch`], which guest memory feeds
//! every written code page, and drains it before it looks up a block and
//! after its own writes.
//!
//! A page is marked as a code page before its bytes are read for decoding,
//! so that a write landing after the read finds the mark and reaches every
//! CPU's watch (see [`mmu::memory`]).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::{Rc, Weak};

use iced_x86::{Decoder, DecoderOptions, Instruction};
use mmu::{Access, GuestMemory, Privilege};

use crate::cpu::Cpu;
use crate::exception::{Fault, GP0};
use crate::ops::{self, Handler};
use crate::state::sreg;

/// A run of decoded instructions that ends at a control transfer or a page
/// edge, held as `Rc<Block>`.
///
/// The instructions sit inline behind the header, in the block's one
/// allocation: running a block touches one run of cache lines, found with
/// no pointer to follow. Their count is rounded up to a size class (the
/// spare slots repeat the last instruction and are never run).
pub type Block = BlockOf<[Decoded]>;

/// [`Block`] before its instruction array is unsized.
pub struct BlockOf<T: ?Sized> {
    /// Still in the decode cache: cleared when the cache drops it (its code
    /// changed, its page was evicted, or the cache was flushed), so a
    /// [`Chain`] to it is dead.
    pub(crate) live: Cell<bool>,
    /// Looked up since the cache last swept its page for eviction: the
    /// page gets a second chance ([`DecodeCache::make_room`]).
    used: Cell<bool>,
    /// The block that ran after this one last time, while the TLB and the
    /// cache had not changed: the next lookup from here tries it first.
    pub(crate) next: RefCell<Option<Chain>>,
    /// Runs left before the block is hot (see [`Cpu::set_hot_threshold`]):
    /// the run loop counts it down and stops at a block whose count is 0.
    heat: Cell<u32>,
    /// The tier above has looked once for code it already has for this
    /// block's instructions ([`Block::take_probe`]).
    probed: Cell<bool>,
    /// Instructions in use at the front of `slots`.
    len: usize,
    slots: T,
}

/// A memo of one block lookup in 64-bit mode: at `rip`, with this privilege
/// and the MMU at this generation, the block was `block`.
pub(crate) struct Chain {
    pub(crate) rip: u64,
    pub(crate) user: bool,
    pub(crate) generation: u64,
    pub(crate) block: Weak<Block>,
}

impl Block {
    /// A block of `insns` (at least one), hot after `heat` runs.
    pub(crate) fn new(insns: Vec<Decoded>, heat: u32) -> Rc<Block> {
        fn sized<const N: usize>(insns: &[Decoded], heat: u32) -> Rc<Block> {
            let last = insns.last().copied().unwrap_or_else(|| Decoded::new(Instruction::default()));
            let slots: [Decoded; N] = std::array::from_fn(|i| insns.get(i).copied().unwrap_or(last));
            Rc::new(BlockOf {
                live: Cell::new(false),
                used: Cell::new(true),
                next: RefCell::new(None),
                heat: Cell::new(heat),
                probed: Cell::new(false),
                len: insns.len().min(N),
                slots,
            })
        }
        debug_assert!(!insns.is_empty() && insns.len() <= MAX_BLOCK_INSNS, "a block of {} instructions", insns.len());
        match insns.len() {
            0..=1 => sized::<1>(&insns, heat),
            2 => sized::<2>(&insns, heat),
            3 => sized::<3>(&insns, heat),
            4 => sized::<4>(&insns, heat),
            5..=6 => sized::<6>(&insns, heat),
            7..=8 => sized::<8>(&insns, heat),
            9..=12 => sized::<12>(&insns, heat),
            13..=16 => sized::<16>(&insns, heat),
            17..=24 => sized::<24>(&insns, heat),
            25..=32 => sized::<32>(&insns, heat),
            33..=48 => sized::<48>(&insns, heat),
            _ => sized::<MAX_BLOCK_INSNS>(&insns, heat),
        }
    }

    /// Runs left before the block is hot; 0: the run loop stops before it
    /// with [`StopReason::Hot`](crate::StopReason::Hot).
    #[inline]
    pub fn heat(&self) -> u32 {
        self.heat.get()
    }

    /// True the first time only: the tier above uses it to look for code
    /// it has for the same instructions elsewhere once, early, before the
    /// block counts on to its full threshold.
    #[inline]
    pub fn take_probe(&self) -> bool {
        !self.probed.replace(true)
    }

    /// Whether [`Block::take_probe`] was called.
    #[inline]
    pub fn probed(&self) -> bool {
        self.probed.get()
    }

    /// Set the runs left before the block is hot: 0 makes the run loop stop
    /// before it every time (another tier runs it), a large count lets it
    /// run on in the interpreter.
    #[inline]
    pub fn set_heat(&self, heat: u32) {
        self.heat.set(heat);
    }

    /// The block's instructions.
    #[inline]
    pub fn insns(&self) -> &[Decoded] {
        &self.slots[..self.len]
    }

    /// Asks the host CPU to fetch the block's first cache lines (header and
    /// first instructions), so they are there when it runs.
    #[inline]
    pub(crate) fn prefetch(this: *const Block) {
        let p = this.cast::<u8>();
        mmu::prefetch(p);
        mmu::prefetch(p.wrapping_add(64));
        mmu::prefetch(p.wrapping_add(128));
    }
}

/// Instructions one block holds at most.
pub(crate) const MAX_BLOCK_INSNS: usize = 64;

/// One cached instruction: the decoded form and its handler (chosen once,
/// for the instruction's operand forms). The instruction's next IP is
/// already wrapped to the code size, so it is the RIP after it (and its
/// `ip()` is not used). 48 bytes: the interpreter's speed on large code
/// (a kernel's network stack) is bound by fetching these from memory.
#[derive(Clone, Copy)]
pub struct Decoded {
    pub insn: Instruction,
    pub handler: Handler,
}

impl Decoded {
    /// `insn` ready to run: its handler chosen for its operand forms, its
    /// next IP wrapped to its code size. `insn` must have been decoded at
    /// the RIP it will run at, with the bitness of the code segment it will
    /// run in (an iced `Decoder` with that IP and bitness).
    pub fn new(mut insn: Instruction) -> Self {
        let next = insn.next_ip();
        let next_rip = match insn.code_size() {
            iced_x86::CodeSize::Code16 => next & 0xffff,
            iced_x86::CodeSize::Code32 => next & 0xffff_ffff,
            _ => next,
        };
        insn.set_next_ip(next_rip);
        Decoded { insn, handler: ops::select(&insn) }
    }

    /// RIP after the instruction.
    #[inline(always)]
    pub fn next_rip(&self) -> u64 {
        self.insn.next_ip()
    }
}

/// A fast hasher for integer keys (the decode cache's and other tiers' maps).
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

/// A hash map with [`FxHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A change that cost guest physical code its decoded form, as told to the
/// listeners of [`Cpu::add_invalidation_listener`]. Another tier that keeps
/// code translated from guest memory drops what it made from the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// The 4 KiB page at this guest physical address changed: a CPU store
    /// or a device's DMA into a tracked code page, or (split execution)
    /// bytes found changed after another engine ran user code.
    Page(u64),
    /// All decoded code was dropped ([`Cpu::flush_code_cache`]: a reset or
    /// a state load).
    All,
}

/// A listener for [`Invalidation`]s.
pub type InvalidationListener = Box<dyn FnMut(Invalidation) + Send>;

/// Block key: physical address of the first byte, RIP's page (branch targets
/// and RIP-relative operands are decoded as absolute addresses), and bitness.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey {
    phys: u64,
    rip_page: u64,
    bits: u32,
}

/// Entries in the direct-mapped block lookup in front of the hash map.
const JUMP_CACHE: usize = 4096;

/// The decoded-instruction cache, per guest physical page.
///
/// A small direct-mapped table (as QEMU's `tb_jmp_cache`) answers most
/// lookups with one compare; the hash map behind it holds every block.
pub(crate) struct DecodeCache {
    pub(crate) blocks: FastMap<BlockKey, Rc<Block>>,
    /// Blocks that start in each physical page.
    pub(crate) by_page: FastMap<u64, Vec<BlockKey>>,
    jump: Vec<Option<(BlockKey, Rc<Block>)>>,
    /// Split execution: the bytes of each page holding blocks decoded at
    /// CPL 3, as they were decoded (see [`Cpu::recheck_user_code`]).
    pub(crate) user_pages: FastMap<u64, Box<[u8]>>,
    /// Single instructions that cross into the next page, with the
    /// physical page their tail was fetched from (checked at each lookup:
    /// the two pages map independently).
    crossing: FastMap<BlockKey, (u64, Rc<Block>)>,
    /// The keys of `crossing` by each of their two pages.
    crossing_by_page: FastMap<u64, Vec<BlockKey>>,
    /// Instructions held in `blocks` and `crossing`.
    insns: usize,
    /// Pages in the order they got their first block (or page-crossing
    /// instruction), each with the number it was given then: the eviction
    /// order. An entry whose number is no longer the page's in `page_seq`
    /// is stale (the page was dropped since) and skipped.
    order: VecDeque<(u64, u64)>,
    /// Each page that holds blocks or page-crossing instructions starting
    /// in it, and its number in `order`.
    page_seq: FastMap<u64, u64>,
    /// The number the next page gets.
    next_seq: u64,
}

/// Decoded instructions the cache holds at most (48 bytes each, and up to
/// half as much again in the spare slots of the size classes: 48 to 72 MiB
/// when full). When a new block would pass it, the cache evicts whole pages
/// of blocks, oldest first, down to [`EVICT_TO`]; a page with a block that
/// was looked up since the last sweep is passed over once (the clock
/// algorithm), so code that keeps running stays and code that ran once
/// (a kernel's init, a process that exited) goes. Dropping everything
/// instead, as a translation cache is flushed when its buffer is full, also
/// forgot how often each hot block ran, so code that runs often but less
/// than the JIT's threshold between two drops was never compiled: a guest
/// that starts many processes (each maps its libraries at other addresses,
/// so their code is decoded anew) fills the cache again and again.
const MAX_CACHED_INSNS: usize = 1024 * 1024;

/// Instructions left after an eviction: a quarter of the cache is freed at
/// once, so that the sweep's cost is shared by many insertions.
const EVICT_TO: usize = MAX_CACHED_INSNS / 4 * 3;

/// User pages whose bytes the cache keeps for split execution (16 MiB): past
/// it, the user pages' blocks are dropped.
const MAX_USER_PAGES: usize = 4096;

impl Default for DecodeCache {
    fn default() -> Self {
        DecodeCache {
            blocks: FastMap::default(),
            by_page: FastMap::default(),
            jump: vec![None; JUMP_CACHE],
            user_pages: FastMap::default(),
            crossing: FastMap::default(),
            crossing_by_page: FastMap::default(),
            insns: 0,
            order: VecDeque::new(),
            page_seq: FastMap::default(),
            next_seq: 0,
        }
    }
}

impl Drop for DecodeCache {
    /// Whatever replaces or drops the cache: no block it held may be chained
    /// to any more.
    fn drop(&mut self) {
        for b in self.blocks.values() {
            b.live.set(false);
        }
        for (_, b) in self.crossing.values() {
            b.live.set(false);
        }
    }
}

impl DecodeCache {
    #[inline]
    fn slot(key: &BlockKey) -> usize {
        ((key.phys ^ (key.phys >> 12) ^ u64::from(key.bits)) as usize) % JUMP_CACHE
    }

    #[inline]
    fn get(&mut self, key: &BlockKey) -> Option<Rc<Block>> {
        let slot = Self::slot(key);
        if let Some((k, b)) = &self.jump[slot] {
            if k == key {
                b.used.set(true);
                return Some(b.clone());
            }
        }
        let b = self.blocks.get(key)?.clone();
        b.used.set(true);
        self.jump[slot] = Some((*key, b.clone()));
        Some(b)
    }

    /// Add a block; `user` holds its page's bytes when it was decoded at
    /// CPL 3 under split execution (see [`DecodeCache::recheck_user`]).
    /// The pages evicted first to make room for it.
    fn insert(&mut self, key: BlockKey, block: Rc<Block>, user: Option<&[u8]>) -> u64 {
        let page = key.phys & !0xfff;
        let evicted = self.make_room(block.insns().len());
        self.insns += block.insns().len();
        block.live.set(true);
        self.enlist(page);
        self.jump[Self::slot(&key)] = Some((key, block.clone()));
        match self.blocks.insert(key, block) {
            Some(old) => {
                old.live.set(false);
                self.insns -= old.insns().len();
            }
            None => self.by_page.entry(page).or_default().push(key),
        }
        if let Some(bytes) = user {
            if !self.user_pages.contains_key(&page) {
                if self.user_pages.len() >= MAX_USER_PAGES {
                    let pages: Vec<u64> = self.user_pages.keys().copied().filter(|p| *p != page).collect();
                    for p in pages {
                        self.invalidate_page(p);
                    }
                }
                self.user_pages.insert(page, bytes.into());
            }
        }
        evicted
    }

    /// Give `page` its place in the eviction order when it has none.
    fn enlist(&mut self, page: u64) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.page_seq.entry(page) {
            e.insert(self.next_seq);
            self.order.push_back((page, self.next_seq));
            self.next_seq += 1;
            // Pages dropped and decoded again leave stale entries behind.
            if self.order.len() > 2 * self.page_seq.len() + 4096 {
                let live = &self.page_seq;
                self.order.retain(|(p, n)| live.get(p) == Some(n));
            }
        }
    }

    /// Evict pages until `need` more instructions fit; the number of pages
    /// evicted. Oldest pages go first; a page with a block looked up since
    /// the last sweep has its marks cleared and goes to the back once.
    /// Should the order run out with the cache still full (it cannot: every
    /// page that holds instructions is in it), the cache is dropped whole.
    fn make_room(&mut self, need: usize) -> u64 {
        if self.insns + need <= MAX_CACHED_INSNS {
            return 0;
        }
        let mut evicted = 0;
        let mut chances = self.order.len();
        while self.insns + need > EVICT_TO {
            let Some((page, n)) = self.order.pop_front() else { break };
            if self.page_seq.get(&page) != Some(&n) {
                continue;
            }
            if chances > 0 && self.take_used(page) {
                chances -= 1;
                self.order.push_back((page, n));
                continue;
            }
            self.invalidate_page(page);
            evicted += 1;
        }
        if self.insns + need > MAX_CACHED_INSNS {
            evicted += self.page_seq.len() as u64;
            *self = DecodeCache::default();
        }
        evicted
    }

    /// Whether a block starting in `page` was looked up since the last
    /// sweep, clearing the marks.
    fn take_used(&self, page: u64) -> bool {
        let mut used = false;
        for k in self.by_page.get(&page).into_iter().flatten() {
            if let Some(b) = self.blocks.get(k) {
                used |= b.used.replace(false);
            }
        }
        used
    }

    /// The instruction at `key` that crosses into the page at physical
    /// `next`, when it is cached for that page.
    fn get_crossing(&self, key: &BlockKey, next: u64) -> Option<Rc<Block>> {
        match self.crossing.get(key) {
            Some((n, b)) if *n == next => Some(b.clone()),
            _ => None,
        }
    }

    /// Cache a page-crossing instruction at `key` whose tail lies in the
    /// physical page `next`; the pages evicted first to make room.
    fn insert_crossing(&mut self, key: BlockKey, next: u64, block: Rc<Block>) -> u64 {
        let evicted = self.make_room(1);
        self.enlist(key.phys & !0xfff);
        self.insns += 1;
        block.live.set(true);
        if let Some((_, old)) = self.crossing.insert(key, (next, block)) {
            old.live.set(false);
            self.insns -= 1;
        }
        for page in [key.phys & !0xfff, next] {
            let keys = self.crossing_by_page.entry(page).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        evicted
    }

    pub(crate) fn invalidate_page(&mut self, page: u64) {
        self.page_seq.remove(&page);
        self.user_pages.remove(&page);
        if let Some(keys) = self.crossing_by_page.remove(&page) {
            for k in keys {
                if let Some((_, b)) = self.crossing.remove(&k) {
                    b.live.set(false);
                    self.insns -= 1;
                }
            }
        }
        if let Some(keys) = self.by_page.remove(&page) {
            for k in keys {
                self.remove(&k);
            }
        }
    }

    fn remove(&mut self, k: &BlockKey) {
        if let Some(b) = self.blocks.remove(k) {
            b.live.set(false);
            self.insns -= b.insns().len();
        }
        let slot = Self::slot(k);
        if matches!(&self.jump[slot], Some((jk, _)) if jk == k) {
            self.jump[slot] = None;
        }
    }

    /// Drop the blocks of each user page whose bytes in `mem` are no longer
    /// those they were decoded from; the pages dropped.
    pub(crate) fn recheck_user(&mut self, mem: &GuestMemory) -> Vec<u64> {
        let mut now = [0u8; 4096];
        let changed: Vec<u64> = self
            .user_pages
            .iter()
            .filter(|(page, was)| mem.read(**page, &mut now).is_err() || now[..] != was[..])
            .map(|(page, _)| *page)
            .collect();
        for page in &changed {
            self.invalidate_page(*page);
        }
        changed
    }
}

impl Cpu {
    // ---- decoding ------------------------------------------------------------

    /// The block at the current RIP (for the current CS, CPL and paging),
    /// decoded and cached on a miss. Its instructions run one by one through
    /// [`Cpu::exec_decoded`]. A fetch fault (a page fault, #GP past the CS
    /// limit) is returned, not delivered.
    pub fn block_at_rip(&mut self) -> Fault<Rc<Block>> {
        // A device may have written a code page since (DMA).
        self.note_code_writes();
        let bits = self.state.code_bits();
        let rip = self.state.rip;
        let user = self.state.cpl == 3;
        // The block that ran last remembers what followed it. In 64-bit
        // mode (no CS limit; RIP was canonical when remembered), with no
        // TLB change since, the same RIP finds the same block.
        if bits == 64 {
            if let Some(prev) = &self.prev_block {
                if let Some(c) = &*prev.next.borrow() {
                    if c.rip == rip && c.user == user && c.generation == self.mmu.generation {
                        if let Some(b) = c.block.upgrade().filter(|b| b.live.get()) {
                            b.used.set(true);
                            return Ok(b);
                        }
                    }
                }
            }
        }
        let b = self.lookup_block(bits, rip)?;
        if bits == 64 && b.live.get() {
            if let Some(prev) = &self.prev_block {
                *prev.next.borrow_mut() =
                    Some(Chain { rip, user, generation: self.mmu.generation, block: Rc::downgrade(&b) });
            }
        }
        Ok(b)
    }

    /// [`Cpu::block_at_rip`] through the TLB and the decode cache.
    fn lookup_block(&mut self, bits: u32, rip: u64) -> Fault<Rc<Block>> {
        let lin = self.linear(sreg::CS, rip, 1, false).map_err(|_| GP0)?;
        let p = if self.state.cpl == 3 { Privilege::User } else { Privilege::Supervisor };
        let phys = match self.mmu.lookup(p, lin, Access::Execute) {
            Some(ph) => ph,
            None => self.translate(lin, Access::Execute, p)?,
        };
        let key = BlockKey { phys, rip_page: rip & !0xfff, bits };
        if let Some(b) = self.cache.get(&key) {
            return Ok(b);
        }
        if phys & 0xfff > 0x1000 - 15 {
            // Perhaps an instruction that crosses into the next page: cached
            // for the page its tail came from, if that is still the one.
            let next_lin = self.next_page_linear(lin);
            let next = match self.mmu.lookup(p, next_lin, Access::Execute) {
                Some(n) => Some(n),
                None => self.translate(next_lin, Access::Execute, p).ok(),
            };
            if let Some(next) = next {
                if let Some(b) = self.cache.get_crossing(&key, next & !0xfff) {
                    return Ok(b);
                }
            }
        }
        self.decode_block(key, lin, p)
    }

    fn decode_block(&mut self, key: BlockKey, lin: u64, p: Privilege) -> Fault<Rc<Block>> {
        let page = key.phys & !0xfff;
        let off = (key.phys & 0xfff) as usize;
        let mut bytes = [0u8; 4096];
        // Code in the VRAM is not cached: the display adapter writes it
        // without the code-page tracking (`mmu::vram`).
        let cacheable = self.mem().is_backed(page, 4096) && !self.mem().is_vram(page);
        if cacheable {
            // Marked before the bytes are read: a write that lands after
            // the read then finds the mark and drops the block again.
            self.mark_code(page);
        }
        if !cacheable || self.mem().read(page, &mut bytes).is_err() {
            // Code in MMIO space: fetch it through the platform, uncached.
            self.platform_mmio_read(page, &mut bytes);
        }
        let mut decoder = Decoder::with_ip(key.bits, &bytes[off..], self.state.rip, DecoderOptions::NONE);
        let mut insns = Vec::new();
        let mut insn = Instruction::default();
        let limit = self.state.seg[sreg::CS].limit;
        while decoder.can_decode() {
            decoder.decode_out(&mut insn);
            if decoder.last_error() == iced_x86::DecoderError::NoMoreBytes {
                break;
            }
            let ends = insn.flow_control() != iced_x86::FlowControl::Next || ops::ends_block(insn.code());
            insns.push(Decoded::new(insn));
            if ends || insns.len() >= MAX_BLOCK_INSNS || (key.bits != 64 && insn.next_ip() > u64::from(limit)) {
                break;
            }
        }
        if insns.is_empty() {
            // The instruction crosses into the next page: decode it from a
            // fetch that spans both pages, and do not cache it.
            let mut buf = [0u8; 15];
            let avail = 4096 - off;
            buf[..avail].copy_from_slice(&bytes[off..]);
            let next_lin = self.next_page_linear(lin);
            // Cached when both pages are RAM whose writes are tracked (and
            // not a user page that split execution rechecks by its bytes);
            // the tail's page is marked before its bytes are read.
            let next = self.translate(next_lin, Access::Execute, p)? & !0xfff;
            let user_kept = p == Privilege::User && self.keep_user_pages;
            let cache = cacheable && !user_kept && self.mem().is_backed(next, 4096) && !self.mem().is_vram(next);
            if cache {
                self.mark_code(next);
            }
            let mut rest = [0u8; 15];
            self.read_slow(next_lin, &mut rest[..15 - avail], p, Access::Execute)?;
            buf[avail..].copy_from_slice(&rest[..15 - avail]);
            let mut d = Decoder::with_ip(key.bits, &buf, self.state.rip, DecoderOptions::NONE);
            let insn = d.decode();
            let block = Block::new(vec![Decoded::new(insn)], u32::MAX);
            if cache {
                self.stats.blocks_decoded += 1;
                self.stats.cache_evictions += self.cache.insert_crossing(key, next, block.clone());
            }
            return Ok(block);
        }
        self.stats.blocks_decoded += 1;
        if let Some(log) = self.guest_log.as_ref().filter(|l| l.in_asm) {
            let mut fmt = iced_x86::FastFormatter::new();
            let listing: Vec<(u64, Vec<u8>, String)> = insns
                .iter()
                .map(|d| {
                    let at = off + (d.insn.ip().wrapping_sub(self.state.rip) as usize);
                    let raw = bytes.get(at..at + d.insn.len()).unwrap_or_default().to_vec();
                    let mut text = String::new();
                    fmt.format(&d.insn, &mut text);
                    (self.state.seg[crate::state::sreg::CS].base.wrapping_add(d.insn.ip()), raw, text)
                })
                .collect();
            log.block(&listing);
        }
        let block = Block::new(insns, if self.hot_threshold == 0 { u32::MAX } else { self.hot_threshold });
        if cacheable {
            let user = (p == Privilege::User && self.keep_user_pages).then_some(&bytes[..]);
            self.stats.cache_evictions += self.cache.insert(key, block.clone(), user);
        }
        Ok(block)
    }

    /// Mark `page` as holding code, before its bytes are read for decoding.
    /// Write tags for a newly tracked page must stop bypassing the tracking
    /// check (a page tracked already has none since): this CPU drops its
    /// own, other CPUs are told through their watches.
    fn mark_code(&mut self, page: u64) {
        if self.mmu.mem().mark_code_page_for(page, &self.code_watch) {
            self.mmu.flush_phys(page);
        }
    }

    /// The linear address of the page after the one of `lin`.
    fn next_page_linear(&self, lin: u64) -> u64 {
        let next = (lin & !0xfff).wrapping_add(4096);
        if self.state.long_mode() {
            next
        } else {
            next & 0xffff_ffff
        }
    }

    /// Drop all decoded code (after a reset, or a state load). Code-page
    /// writes queued for this CPU so far are taken with it: nothing made
    /// from those pages is left.
    pub fn flush_code_cache(&mut self) {
        let changes = self.code_watch.take();
        self.forget_write_paths(&changes);
        self.drop_code();
    }

    /// Drop all decoded code, telling the listeners.
    pub(crate) fn drop_code(&mut self) {
        self.cache = DecodeCache::default();
        self.tell_invalidation(Invalidation::All);
    }

    /// Call `listener` with every [`Invalidation`] from now on: each guest
    /// physical page whose decoded code is dropped because its bytes
    /// changed, and each whole flush. (Blocks the cache drops only to make
    /// room are not reported: their code is unchanged.) A tier that keeps
    /// its own code for a page marks the page with
    /// [`GuestMemory::mark_code_page_for`] (and this CPU's
    /// [`Cpu::code_watch`]) so that writes to it are tracked.
    pub fn add_invalidation_listener(&mut self, listener: InvalidationListener) {
        self.invalidation_listeners.push(listener);
    }

    /// Drop the blocks of a page whose bytes changed, and tell the listeners.
    pub(crate) fn code_page_changed(&mut self, page: u64) {
        self.cache.invalidate_page(page);
        self.tell_invalidation(Invalidation::Page(page));
    }

    fn tell_invalidation(&mut self, what: Invalidation) {
        for l in &mut self.invalidation_listeners {
            l(what);
        }
    }

    /// Split execution, after user code ran in another engine: its writes
    /// to guest memory bypassed the tracking of code pages, and only user
    /// code can have made them. Drop the blocks decoded at CPL 3 from each
    /// page whose bytes changed since (one compare per page).
    pub fn recheck_user_code(&mut self) {
        let mem = self.mem().clone();
        for page in self.cache.recheck_user(&mem) {
            self.tell_invalidation(Invalidation::Page(page));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Code;

    fn block(n: usize) -> Rc<Block> {
        Block::new(vec![Decoded::new(Instruction::default()); n], u32::MAX)
    }

    fn key(phys: u64) -> BlockKey {
        BlockKey { phys, rip_page: phys & !0xfff, bits: 64 }
    }

    #[test]
    fn a_full_decode_cache_evicts_its_oldest_unused_pages() {
        let mut c = DecodeCache::default();
        let per = MAX_BLOCK_INSNS;
        let fit = MAX_CACHED_INSNS / per;
        for i in 0..fit as u64 {
            assert_eq!(c.insert(key(i * 0x1000), block(per), None), 0);
        }
        assert_eq!(c.insns, fit * per);
        // Invalidating a page gives its instructions back.
        c.invalidate_page(0);
        assert_eq!(c.insns, (fit - 1) * per);
        assert!(c.get(&key(0)).is_none());
        // Re-inserting a key replaces the block without counting it twice.
        assert_eq!(c.insert(key(0x1000), block(per), None), 0);
        assert_eq!(c.insns, (fit - 1) * per);
        assert_eq!(c.insert(key(0), block(per), None), 0);
        // Every block was looked up or inserted since: a sweep clears the
        // marks. Then pages 1 and 2 run again.
        for i in 0..fit as u64 {
            c.take_used(i * 0x1000);
        }
        assert!(c.get(&key(0x1000)).is_some() && c.get(&key(0x2000)).is_some());
        // Full: the next block evicts a quarter of the cache, oldest first,
        // passing over the pages that ran.
        let evicted = c.insert(key(0xfff_f000), block(per), None);
        let freed = MAX_CACHED_INSNS - EVICT_TO;
        assert_eq!(evicted as usize, freed / per + 1);
        assert_eq!(c.insns, EVICT_TO);
        assert!(c.get(&key(0x1000)).is_some() && c.get(&key(0x2000)).is_some(), "the pages that ran stay");
        assert!(c.get(&key(0x3000)).is_none(), "the oldest unused pages went");
        assert!(c.get(&key(0)).is_some(), "decoded again last, it is the newest");
        assert!(c.get(&key(0xfff_f000)).is_some());
        let last_evicted = (evicted + 2) * 0x1000;
        assert!(c.get(&key(last_evicted)).is_none() && c.get(&key(last_evicted + 0x1000)).is_some());
        // The eviction order stays bounded while pages are dropped and
        // decoded again.
        for _ in 0..20_000 {
            c.invalidate_page(0x1000);
            c.insert(key(0x1000), block(1), None);
        }
        assert!(c.order.len() <= 2 * c.page_seq.len() + 4096 + 1);
    }

    /// Each size class holds exactly the instructions it was given.
    #[test]
    fn blocks_keep_their_instructions_in_every_size_class() {
        for n in 1..=MAX_BLOCK_INSNS {
            let insns: Vec<Decoded> = (0..n)
                .map(|i| {
                    let mut insn = Instruction::with(Code::Nopd);
                    insn.set_next_ip(0x1000 + i as u64);
                    Decoded::new(insn)
                })
                .collect();
            let b = Block::new(insns, u32::MAX);
            let rips: Vec<u64> = b.insns().iter().map(Decoded::next_rip).collect();
            assert_eq!(rips, (0..n as u64).map(|i| 0x1000 + i).collect::<Vec<_>>(), "{n} instructions");
        }
    }

    #[test]
    fn blocks_the_cache_drops_are_dead() {
        let block = || Block::new(vec![Decoded::new(Instruction::default()); 4], u32::MAX);
        let key = |phys| BlockKey { phys, rip_page: phys, bits: 64 };
        let mut c = DecodeCache::default();
        let a = block();
        c.insert(key(0x1000), a.clone(), None);
        assert!(a.live.get());
        c.invalidate_page(0x1000);
        assert!(!a.live.get(), "invalidated");
        let (b, b2) = (block(), block());
        c.insert(key(0x2000), b.clone(), None);
        c.insert(key(0x2000), b2.clone(), None);
        assert!(!b.live.get() && b2.live.get(), "replaced");
        c = DecodeCache::default();
        assert!(!b2.live.get(), "the cache was dropped");
        assert!(c.blocks.is_empty());
    }

    /// Decodes the code at `at` (the page after the test code) into the
    /// cache, leaving RIP where it was.
    fn decode_at(c: &mut Cpu, at: u64) {
        let rip = c.state.rip;
        c.state.rip = at;
        c.block_at_rip().unwrap();
        c.state.rip = rip;
        assert!(c.cache.by_page.contains_key(&at));
    }

    fn listened(c: &mut Cpu) -> std::sync::Arc<std::sync::Mutex<Vec<Invalidation>>> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tell = seen.clone();
        c.add_invalidation_listener(Box::new(move |i| tell.lock().unwrap().push(i)));
        seen
    }

    #[test]
    fn a_store_into_a_code_page_reaches_the_invalidation_listeners() {
        use crate::ops::testutil::*;
        use iced_x86::code_asm::*;
        let mut c = long_mode();
        let f = (c.state.rip & !0xfff) + 0x1000;
        let code = assemble(&c, |a| {
            a.mov(rdx, f)?;
            a.mov(byte_ptr(rdx), 0xcc)?;
            a.hlt()
        });
        place(&mut c, &code);
        c.mem().write(f, &[0x90, 0xf4]).unwrap();
        decode_at(&mut c, f);
        let seen = listened(&mut c);
        assert_eq!(c.run(100), crate::StopReason::Halted);
        assert_eq!(*seen.lock().unwrap(), [Invalidation::Page(f)]);
        assert!(!c.cache.by_page.contains_key(&f), "the page's blocks are gone");
        // A device's write (DMA) is found at the next lookup.
        decode_at(&mut c, f);
        c.mem().write(f + 1, &[0x90]).unwrap();
        c.block_at_rip().unwrap();
        assert_eq!(*seen.lock().unwrap(), [Invalidation::Page(f); 2]);
        // A page without decoded code is not reported.
        c.mem().write(f + 0x1000, &[0x90]).unwrap();
        c.block_at_rip().unwrap();
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    /// An instruction that crosses into the next page is decoded once, and
    /// again when either page is written or the next page maps elsewhere.
    #[test]
    fn an_instruction_across_pages_is_cached_for_the_page_of_its_tail() {
        use crate::ops::testutil::*;
        let mut c = long_mode();
        // add ebx, imm32 at the end of a page: its immediate's last three
        // bytes are in the next page.
        let at = CODE + 0x1ffd;
        let next = at + 3;
        c.mem().write(at, &[0x81, 0xc3, 1, 0, 0, 0]).unwrap();
        let other = DATA + 0x8000;
        c.mem().write(other, &[5, 0, 0]).unwrap();
        c.state.rip = at;
        let imm = |c: &mut Cpu| {
            let b = c.block_at_rip().unwrap();
            assert_eq!(b.insns().len(), 1);
            b.insns()[0].insn.immediate32()
        };
        let decoded = c.stats.blocks_decoded;
        assert_eq!(imm(&mut c), 1);
        assert_eq!(imm(&mut c), 1);
        assert_eq!(c.stats.blocks_decoded, decoded + 1, "decoded once");
        // A write into the tail's page.
        c.mem().write(next, &[2]).unwrap();
        assert_eq!(imm(&mut c), 0x201);
        assert_eq!(c.stats.blocks_decoded, decoded + 2);
        // The next page mapped elsewhere (a new translation after a flush).
        c.mem().write_u64(PT + (next >> 12) * 8, other | 7).unwrap();
        c.mmu.flush(false);
        assert_eq!(imm(&mut c), 0x501);
        // Unmapped: the fetch faults.
        c.mem().write_u64(PT + (next >> 12) * 8, 0).unwrap();
        c.mmu.flush(false);
        assert!(c.block_at_rip().is_err());
    }

    #[test]
    fn a_whole_cache_flush_reaches_the_invalidation_listeners() {
        let mut c = crate::ops::testutil::long_mode();
        let seen = listened(&mut c);
        c.block_at_rip().unwrap();
        assert!(!c.cache.blocks.is_empty());
        c.flush_code_cache();
        assert!(c.cache.blocks.is_empty());
        assert_eq!(*seen.lock().unwrap(), [Invalidation::All]);
    }

    /// A second processor on the same guest memory, in the same state.
    fn sibling(c: &Cpu) -> Cpu {
        let mut b = Cpu::new(c.mem().clone(), Box::new(crate::NoDevices));
        b.set_state(c.state);
        b
    }

    /// Run `c` from `at` until it halts.
    fn run_at(c: &mut Cpu, at: u64) {
        c.state.rip = at;
        c.state.halted = 0;
        assert_eq!(c.run(1000), crate::StopReason::Halted);
    }

    /// CPU A runs code in a page, CPU B (on the same memory, with its own
    /// decoded blocks) stores into that page: A then runs the new code, not
    /// the block it decoded before.
    #[test]
    fn a_store_by_another_cpu_reaches_the_decoded_code() {
        use crate::ops::testutil::*;
        use iced_x86::code_asm::*;
        let mut a = long_mode();
        let f = CODE + 0x1000;
        // f: mov eax, imm32; hlt.
        a.mem().write(f, &[0xb8, 1, 0, 0, 0, 0xf4]).unwrap();
        let mut b = sibling(&a);
        assert_eq!(a.mem().code_watches(), 2);
        let code = assemble(&b, |x| {
            x.mov(rdx, f + 1)?;
            x.mov(dword_ptr(rdx), 2)?;
            x.hlt()
        });
        place(&mut b, &code);
        let seen = listened(&mut a);
        run_at(&mut a, f);
        assert_eq!(a.state.gpr[0], 1);
        // B fills its TLB for the page before it stores, then stores.
        run_at(&mut b, CODE);
        assert!(a.code_changes_pending(), "A is told");
        run_at(&mut a, f);
        assert_eq!(a.state.gpr[0], 2, "A runs the new code");
        assert_eq!(*seen.lock().unwrap(), [Invalidation::Page(f)]);
        // And the other way round: B decodes f, A stores into it.
        run_at(&mut b, f);
        assert_eq!(b.state.gpr[0], 2);
        a.mem().write_u32(f + 1, 3).unwrap();
        for c in [&mut a, &mut b] {
            run_at(c, f);
            assert_eq!(c.state.gpr[0], 3, "a device's write reaches both");
        }
    }

    /// A page one CPU begins to hold code for loses the other CPUs' write
    /// paths through their soft TLBs (translated code stores through them
    /// without looking at the code-page bit).
    #[test]
    fn a_new_code_page_drops_the_other_cpus_write_paths() {
        use crate::ops::testutil::*;
        let mut a = long_mode();
        let mut b = sibling(&a);
        let f = CODE + 0x1000;
        a.mem().write(f, &[0x90, 0xf4]).unwrap();
        // B's TLB holds a writable translation of f (its dirty bit set).
        b.write_mem(sreg::DS, f + 0x800, 1, 0).unwrap();
        assert!(b.mmu.lookup(Privilege::Supervisor, f, Access::Write).is_some());
        run_at(&mut a, f);
        assert!(b.code_changes_pending() && !a.code_changes_pending());
        b.sync_code();
        assert!(b.mmu.lookup(Privilege::Supervisor, f, Access::Write).is_none());
        assert!(!b.code_changes_pending());
    }

    /// A dropped CPU's watch is not fed, and does not stay registered.
    #[test]
    fn a_dropped_cpu_leaves_the_watches() {
        let a = crate::ops::testutil::long_mode();
        let b = sibling(&a);
        let watch = std::sync::Arc::downgrade(b.code_watch());
        assert_eq!(a.mem().code_watches(), 2);
        drop(b);
        assert!(watch.upgrade().is_none());
        assert_eq!(a.mem().code_watches(), 1);
    }

    /// A flush of the whole cache takes what the watch queued: nothing is
    /// left to drop page by page.
    #[test]
    fn a_whole_flush_takes_the_queued_pages() {
        let mut c = crate::ops::testutil::long_mode();
        c.block_at_rip().unwrap();
        let at = c.state.rip;
        c.mem().write_u8(at, 0x90).unwrap();
        assert!(c.code_changes_pending());
        let seen = listened(&mut c);
        c.flush_code_cache();
        assert!(!c.code_changes_pending());
        c.sync_code();
        assert_eq!(*seen.lock().unwrap(), [Invalidation::All]);
    }

    #[test]
    fn one_decoded_instruction_runs_through_exec_decoded() {
        use crate::exec::Executed;
        use crate::ops::testutil::*;
        use iced_x86::code_asm::*;
        let mut c = long_mode();
        let f = (c.state.rip & !0xfff) + 0x1000;
        let code = assemble(&c, |a| {
            a.add(eax, 7)?;
            a.mov(rdx, f)?;
            a.mov(byte_ptr(rdx), 0xcc)?;
            a.ud2()
        });
        place(&mut c, &code);
        c.mem().write(f, &[0x90, 0xf4]).unwrap();
        decode_at(&mut c, f);
        let start = c.state.rip;
        let mut decoder = Decoder::with_ip(64, &code, c.state.rip, DecoderOptions::NONE);
        let insns: Vec<Decoded> = (0..4).map(|_| Decoded::new(decoder.decode())).collect();
        assert_eq!(c.exec_decoded(&insns[0]), Executed::Done);
        assert_eq!((c.state.gpr[0], c.state.rip), (7, insns[0].next_rip()));
        assert_eq!(c.exec_decoded(&insns[1]), Executed::Done);
        // The store hits decoded code: the caller must look up RIP again.
        assert_eq!(c.exec_decoded(&insns[2]), Executed::BlockEnd);
        assert_eq!(c.stats.instructions, 3);
        assert_eq!(c.exec_decoded(&insns[3]), Executed::Raised);
        assert_eq!((c.stats.instructions, c.stats.exceptions), (3, 1));
        assert_eq!(c.state.rip, stub(6), "#UD delivered");
        // The block at RIP holds the same instructions.
        c.state.rip = start;
        let b = c.block_at_rip().unwrap();
        let codes: Vec<Code> = b.insns().iter().map(|d| d.insn.code()).collect();
        assert_eq!(codes, insns.iter().map(|d| d.insn.code()).collect::<Vec<_>>());
    }
}
