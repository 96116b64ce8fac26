//! The interpreter's processor: state, memory access through segmentation and
//! the soft TLB, the decoded-block cache, and the execution loop.
//!
//! The loop is shaped as QEMU's `cpu_exec`: exceptions and interrupts are
//! delivered in the outer loop, and the inner loop finds (or decodes) the block
//! at RIP and runs its instructions, each through its handler. A handler sees
//! RIP already advanced to the next instruction; a fault rewinds it, so faults
//! are precise.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction};
use mmu::{Access, GuestMemory, Mmu, PagingCtx, PagingMode, Privilege};

use crate::exception::{Exception, Fault, GP0};
use crate::ops::{self, Handler};
use crate::state::{cr, flags, seg_attr, sreg, CpuState, Segment};

/// What the CPU calls for everything outside RAM: port I/O, MMIO and the
/// interrupt controller. The machine implements it over its device buses.
pub trait Platform {
    fn io_read(&mut self, port: u16, size: u8) -> u32;
    fn io_write(&mut self, port: u16, size: u8, value: u32);
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]);
    /// Whether an external interrupt is waiting (INTR asserted).
    fn interrupt_pending(&mut self) -> bool {
        false
    }
    /// Acknowledge the pending external interrupt and return its vector.
    fn ack_interrupt(&mut self) -> Option<u8> {
        None
    }
    /// RDMSR of an MSR the platform owns (x2APIC, TSC deadline); `None` if not its.
    fn msr_read(&mut self, _msr: u32) -> Option<u64> {
        None
    }
    /// WRMSR of an MSR the platform owns; `false` if not its.
    fn msr_write(&mut self, _msr: u32, _value: u64) -> bool {
        false
    }
    /// The platform's time-stamp counter, if it keeps one (before the guest's
    /// TSC offset is applied).
    fn tsc(&mut self) -> Option<u64> {
        None
    }
    /// Moves the platform's time-stamp counter by `delta` (two's complement),
    /// for a WRMSR to the TSC or IA32_TSC_ADJUST; `false` if it keeps none
    /// (the CPU then keeps the offset itself).
    fn shift_tsc(&mut self, _delta: u64) -> bool {
        false
    }
    /// Checked after every I/O access and between blocks: leave the run loop.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Why [`Cpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The instruction budget ran out.
    Budget,
    /// HLT: the CPU waits for an interrupt.
    Halted,
    /// The platform asked to stop (an exit request, a device event).
    Requested,
    /// A triple fault: the processor shut down. The string names the fault chain.
    Shutdown(String),
    /// The CPU is at CPL 3 and [`Cpu::yield_at_user`] is set.
    UserMode,
}

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
    /// changed, or the cache was flushed), so a [`Chain`] to it is dead.
    live: Cell<bool>,
    /// The block that ran after this one last time, while the TLB and the
    /// cache had not changed: the next lookup from here tries it first.
    next: RefCell<Option<Chain>>,
    /// Instructions in use at the front of `slots`.
    len: usize,
    slots: T,
}

/// A memo of one block lookup in 64-bit mode: at `rip`, with this privilege
/// and the MMU at this generation, the block was `block`.
struct Chain {
    rip: u64,
    user: bool,
    generation: u64,
    block: Weak<Block>,
}

impl Block {
    /// A block of `insns` (at least one).
    fn new(insns: Vec<Decoded>) -> Rc<Block> {
        fn sized<const N: usize>(insns: &[Decoded]) -> Rc<Block> {
            let last = insns.last().copied().unwrap_or_else(|| Decoded::new(Instruction::default()));
            let slots: [Decoded; N] = std::array::from_fn(|i| insns.get(i).copied().unwrap_or(last));
            Rc::new(BlockOf { live: Cell::new(false), next: RefCell::new(None), len: insns.len().min(N), slots })
        }
        debug_assert!(!insns.is_empty() && insns.len() <= MAX_BLOCK_INSNS, "a block of {} instructions", insns.len());
        match insns.len() {
            0..=1 => sized::<1>(&insns),
            2 => sized::<2>(&insns),
            3 => sized::<3>(&insns),
            4 => sized::<4>(&insns),
            5..=6 => sized::<6>(&insns),
            7..=8 => sized::<8>(&insns),
            9..=12 => sized::<12>(&insns),
            13..=16 => sized::<16>(&insns),
            17..=24 => sized::<24>(&insns),
            25..=32 => sized::<32>(&insns),
            33..=48 => sized::<48>(&insns),
            _ => sized::<MAX_BLOCK_INSNS>(&insns),
        }
    }

    /// The block's instructions.
    #[inline]
    pub fn insns(&self) -> &[Decoded] {
        &self.slots[..self.len]
    }

    /// Asks the host CPU to fetch the block's first cache lines (header and
    /// first instructions), so they are there when it runs.
    #[inline]
    fn prefetch(this: *const Block) {
        let p = this.cast::<u8>();
        mmu::prefetch(p);
        mmu::prefetch(p.wrapping_add(64));
        mmu::prefetch(p.wrapping_add(128));
    }
}

/// Instructions one block holds at most.
const MAX_BLOCK_INSNS: usize = 64;

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
    fn new(mut insn: Instruction) -> Self {
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

#[derive(Default)]
struct FxHasher(u64);

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

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Block key: physical address of the first byte, RIP's page (branch targets
/// and RIP-relative operands are decoded as absolute addresses), and bitness.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct BlockKey {
    phys: u64,
    rip_page: u64,
    bits: u32,
}

/// Yields at once of an address space marked compute-bound (see
/// [`Cpu::user_stint`]) before its user code runs here again, up to the
/// budget: a wrong mark costs at most this many hand-overs, a right one one
/// budget's worth of instructions per this many.
const EAGER_RETRY: u32 = 64;

/// Entries in the direct-mapped block lookup in front of the hash map.
const JUMP_CACHE: usize = 4096;

/// The decoded-instruction cache, per guest physical page.
///
/// A small direct-mapped table (as QEMU's `tb_jmp_cache`) answers most
/// lookups with one compare; the hash map behind it holds every block.
struct DecodeCache {
    blocks: FastMap<BlockKey, Rc<Block>>,
    /// Blocks that start in each physical page.
    by_page: FastMap<u64, Vec<BlockKey>>,
    jump: Vec<Option<(BlockKey, Rc<Block>)>>,
    /// Split execution: the bytes of each page holding blocks decoded at
    /// CPL 3, as they were decoded (see [`Cpu::recheck_user_code`]).
    user_pages: FastMap<u64, Box<[u8]>>,
    /// Instructions held in `blocks`.
    insns: usize,
}

/// Decoded instructions the cache holds at most (48 bytes each, and up to
/// half as much again in the spare slots of the size classes): when a new
/// block would pass it, the whole cache is dropped and refills with the
/// code that runs from then on, as a translation cache is flushed when its
/// buffer is full. A kernel's boot runs far more distinct code than it
/// keeps running.
const MAX_CACHED_INSNS: usize = 128 * 1024;

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
            insns: 0,
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
                return Some(b.clone());
            }
        }
        let b = self.blocks.get(key)?.clone();
        self.jump[slot] = Some((*key, b.clone()));
        Some(b)
    }

    /// Add a block; `user` holds its page's bytes when it was decoded at
    /// CPL 3 under split execution (see [`DecodeCache::recheck_user`]).
    /// True if the cache was full and dropped everything first.
    fn insert(&mut self, key: BlockKey, block: Rc<Block>, user: Option<&[u8]>) -> bool {
        let full = self.insns + block.insns().len() > MAX_CACHED_INSNS;
        if full {
            *self = DecodeCache::default();
        }
        self.insns += block.insns().len();
        block.live.set(true);
        let page = key.phys & !0xfff;
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
        full
    }

    fn invalidate_page(&mut self, page: u64) {
        self.user_pages.remove(&page);
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
    /// those they were decoded from.
    fn recheck_user(&mut self, mem: &GuestMemory) {
        let mut now = [0u8; 4096];
        let changed: Vec<u64> = self
            .user_pages
            .iter()
            .filter(|(page, was)| mem.read(**page, &mut now).is_err() || now[..] != was[..])
            .map(|(page, _)| *page)
            .collect();
        for page in changed {
            self.invalidate_page(page);
        }
    }
}

/// Counters for `--stats` and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuStats {
    pub instructions: u64,
    pub blocks_decoded: u64,
    /// Times the decode cache filled up and was dropped whole.
    pub cache_flushes: u64,
    pub exceptions: u64,
    pub interrupts: u64,
    /// Split execution: user instructions that raised #UD here and were
    /// handed to the engine that runs user code instead.
    pub user_ud_yields: u64,
    /// Split execution: instructions run here at CPL 3.
    pub user_instructions: u64,
}

/// One x86 processor run by the interpreter.
pub struct Cpu {
    pub state: CpuState,
    pub mmu: Mmu,
    /// Port I/O, MMIO and interrupts.
    pub platform: Box<dyn Platform + Send>,
    pub stats: CpuStats,
    pub(crate) paging: PagingCtx,
    cache: DecodeCache,
    /// The block run last, whose [`Block::next`] the next lookup tries.
    prev_block: Option<Rc<Block>>,
    /// RIP of the instruction being executed (for rewinding on faults).
    pub(crate) insn_start: u64,
    /// Set by handlers that change how code decodes or where it lives (mode
    /// switches, CS loads, CR/EFER writes): the block loop stops after them.
    pub(crate) block_break: bool,
    /// Set when the platform asked to stop (checked after I/O).
    pub(crate) stop: bool,
    /// Exception being delivered, for double/triple fault escalation.
    pub(crate) delivering: Option<Exception>,
    pub(crate) shutdown: Option<String>,
    /// Extra MSRs kept by value (see [`crate::msr`]).
    pub(crate) msrs: crate::msr::MsrTable,
    /// Host time base of the TSC.
    pub(crate) tsc_epoch: std::time::Instant,
    /// TSC ticks per nanosecond times 2^32 (fixed-point).
    pub(crate) tsc_per_ns_fp: u64,
    /// Debug-register, NMI and random-number state (see [`crate::ops::debug`]).
    pub(crate) sys: crate::ops::debug::SysState,
    /// When set, [`Cpu::run`] returns [`StopReason::UserMode`] instead of
    /// executing code at CPL 3 (split execution: another engine runs user
    /// code) once [`Cpu::user_budget`] user instructions have run since the
    /// CPU last entered CPL 3, or at once at an instruction that raises #UD
    /// at CPL 3 (the other engine may implement it). Interrupts are still
    /// delivered first.
    pub yield_at_user: bool,
    /// With [`Cpu::yield_at_user`]: user instructions the interpreter runs
    /// itself before yielding (0: yield on reaching CPL 3). Code that
    /// enters the kernel again within the budget never costs a hand-over.
    pub user_budget: u64,
    /// The instruction count when the CPU was first seen at CPL 3 since it
    /// last ran at CPL 0.
    user_since: Option<u64>,
    /// Address spaces (CR3 without PCID) whose last user stretch here ran
    /// out of [`Cpu::user_budget`]: compute-bound code, which yields at once
    /// on reaching CPL 3 until [`Cpu::user_stint`] reports a short stint or
    /// [`EAGER_RETRY`] yields have passed. The count of those yields.
    user_eager: FastMap<u64, u32>,
    /// An instruction at CPL 3 raised #UD under [`Cpu::yield_at_user`]: it
    /// was not delivered, RIP is at the instruction, and `run` yields.
    pub(crate) user_ud: bool,
    /// With [`Cpu::yield_at_user`] set: each FXSAVE and FXRSTOR at CPL 0 (the
    /// kernel switching tasks' state), in order,
    /// with its operand's linear address (the engine running user code
    /// keeps the state FXSAVE does not cover per save area).
    pub fx_log: Vec<FxEvent>,
}

/// An FXSAVE or FXRSTOR and the linear address of its 512-byte area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FxEvent {
    Save(u64),
    Restore(u64),
}

impl Cpu {
    pub fn new(mem: Arc<GuestMemory>, platform: Box<dyn Platform + Send>) -> Self {
        let state = CpuState::reset();
        let mut cpu = Cpu {
            state,
            mmu: Mmu::new(mem),
            platform,
            stats: CpuStats::default(),
            paging: PagingCtx { mode: PagingMode::Off, cr3: 0, wp: false, nxe: false, smep: false, smap: false },
            cache: DecodeCache::default(),
            prev_block: None,
            insn_start: 0,
            block_break: false,
            stop: false,
            delivering: None,
            shutdown: None,
            msrs: crate::msr::MsrTable::default(),
            tsc_epoch: std::time::Instant::now(),
            tsc_per_ns_fp: crate::cpuid::TSC_KHZ * (1 << 32) / 1_000_000,
            sys: Default::default(),
            yield_at_user: false,
            user_budget: 0,
            user_since: None,
            user_eager: FastMap::default(),
            user_ud: false,
            fx_log: Vec::new(),
        };
        cpu.update_paging();
        cpu
    }

    /// Replace the whole architectural state (loaders, the KVM bridge).
    pub fn set_state(&mut self, s: CpuState) {
        self.state = s;
        self.update_paging();
        self.mmu.flush(false);
    }

    /// Guest memory.
    #[inline]
    pub fn mem(&self) -> &Arc<GuestMemory> {
        self.mmu.mem()
    }

    /// Recompute the paging context after CR0, CR3, CR4 or EFER change.
    pub(crate) fn update_paging(&mut self) {
        let s = &self.state;
        let mode = if s.cr0 & cr::CR0_PG == 0 {
            PagingMode::Off
        } else if s.efer & cr::EFER_LMA != 0 {
            if s.cr4 & cr::CR4_LA57 != 0 {
                PagingMode::Level5
            } else {
                PagingMode::Level4
            }
        } else if s.cr4 & cr::CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Legacy { pse: s.cr4 & cr::CR4_PSE != 0 }
        };
        self.paging = PagingCtx {
            mode,
            cr3: s.cr3,
            wp: s.cr0 & cr::CR0_WP != 0,
            nxe: s.efer & cr::EFER_NXE != 0,
            smep: s.cr4 & cr::CR4_SMEP != 0,
            smap: s.cr4 & cr::CR4_SMAP != 0,
        };
    }

    /// The privilege of explicit data accesses at the current CPL.
    #[inline]
    pub(crate) fn privilege(&self) -> Privilege {
        if self.state.cpl == 3 {
            Privilege::User
        } else if self.state.rflags & flags::AC != 0 && self.paging.smap {
            Privilege::SupervisorAc
        } else {
            Privilege::Supervisor
        }
    }

    // ---- segmentation --------------------------------------------------------

    /// Linear address of `offset` in segment `seg` for an access of `len` bytes,
    /// with the segment checks of the current mode.
    #[inline]
    pub(crate) fn linear(&self, seg: usize, offset: u64, len: u64, write: bool) -> Fault<u64> {
        let s = &self.state.seg[seg];
        if self.state.code64() {
            let base = if seg >= sreg::FS { s.base } else { 0 };
            let lin = base.wrapping_add(offset);
            if !is_canonical(lin) || !is_canonical(lin.wrapping_add(len - 1)) {
                return Err(if seg == sreg::SS { Exception::StackFault(0) } else { GP0 });
            }
            return Ok(lin);
        }
        let fault = if seg == sreg::SS { Exception::StackFault(0) } else { GP0 };
        if self.state.protected() && !self.state.v86() {
            if s.attr & seg_attr::UNUSABLE != 0 {
                return Err(fault);
            }
            if write && (s.attr & seg_attr::TYPE_CODE != 0 || s.attr & seg_attr::TYPE_RW == 0) {
                return Err(fault);
            }
        }
        let last = offset.wrapping_add(len - 1);
        let expand_down = s.attr & (seg_attr::TYPE_CODE | seg_attr::TYPE_DC) == seg_attr::TYPE_DC;
        if expand_down {
            let upper = if s.attr & seg_attr::DB != 0 { 0xffff_ffffu64 } else { 0xffff };
            if offset <= u64::from(s.limit) || last > upper || last < offset {
                return Err(fault);
            }
        } else if last > u64::from(s.limit) || last < offset {
            return Err(fault);
        }
        Ok(s.base.wrapping_add(offset) & 0xffff_ffff)
    }

    // ---- linear memory -------------------------------------------------------

    pub(crate) fn translate(&mut self, lin: u64, access: Access, p: Privilege) -> Fault<u64> {
        let ctx = self.paging;
        self.mmu
            .translate(&ctx, p, lin, access)
            .map_err(|f| Exception::PageFault { addr: f.addr, error_code: f.error_code })
    }

    /// Read `N` bytes at a linear address with privilege `p`.
    #[inline]
    pub(crate) fn read_lin_p<const N: usize>(&mut self, lin: u64, p: Privilege) -> Fault<[u8; N]> {
        if let Some(b) = self.mmu.read_fast::<N>(p, lin) {
            return Ok(b);
        }
        let mut buf = [0u8; N];
        self.read_slow(lin, &mut buf, p, Access::Read)?;
        Ok(buf)
    }

    fn read_slow(&mut self, lin: u64, buf: &mut [u8], p: Privilege, access: Access) -> Fault<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = lin.wrapping_add(done as u64);
            let a = if self.state.long_mode() { a } else { a & 0xffff_ffff };
            let in_page = (4096 - (a & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            let phys = self.translate(a, access, p)?;
            let chunk = &mut buf[done..done + n];
            if self.mem().read(phys, chunk).is_err() {
                self.platform_mmio_read(phys, chunk);
            }
            done += n;
        }
        Ok(())
    }

    /// Write `data` at a linear address with privilege `p`. Every page is
    /// translated before any byte is written, so a fault leaves memory untouched.
    pub(crate) fn write_lin_p(&mut self, lin: u64, data: &[u8], p: Privilege) -> Fault<()> {
        if self.mmu.write_fast(p, lin, data) {
            return Ok(());
        }
        let first = self.translate(lin, Access::Write, p)?;
        let in_page = (4096 - (lin & 0xfff)) as usize;
        if data.len() <= in_page {
            return self.write_phys(first, data);
        }
        let next = lin.wrapping_add(in_page as u64);
        let next = if self.state.long_mode() { next } else { next & 0xffff_ffff };
        let second = self.translate(next, Access::Write, p)?;
        self.write_phys(first, &data[..in_page])?;
        self.write_phys(second, &data[in_page..])
    }

    pub(crate) fn write_phys(&mut self, phys: u64, data: &[u8]) -> Fault<()> {
        match self.mem().write(phys, data) {
            Ok(()) => {}
            // Writes to ROM are dropped, as on a PC.
            Err(mmu::MemError::ReadOnly { .. }) => {}
            Err(_) => self.platform_mmio_write(phys, data),
        }
        if self.mem().invalidation_pending() {
            self.drain_invalidations();
        }
        Ok(())
    }

    pub(crate) fn drain_invalidations(&mut self) {
        for page in self.mem().take_invalidated() {
            self.cache.invalidate_page(page);
        }
        // The running block may have been overwritten: stop after this instruction.
        self.block_break = true;
    }

    /// Read at a linear address with the current privilege.
    #[inline]
    pub(crate) fn read_lin<const N: usize>(&mut self, lin: u64) -> Fault<[u8; N]> {
        let p = self.privilege();
        self.read_lin_p::<N>(lin, p)
    }

    /// Read a supervisor (implicit) access: descriptor tables, TSS, IDT.
    pub(crate) fn read_sys<const N: usize>(&mut self, lin: u64) -> Fault<[u8; N]> {
        self.read_lin_p::<N>(lin, Privilege::Supervisor)
    }

    pub(crate) fn write_sys(&mut self, lin: u64, data: &[u8]) -> Fault<()> {
        self.write_lin_p(lin, data, Privilege::Supervisor)
    }

    /// Read `size` bytes (1, 2, 4 or 8) at `seg:offset`, zero-extended.
    #[inline]
    pub fn read_mem(&mut self, seg: usize, offset: u64, size: u32) -> Fault<u64> {
        let lin = self.linear(seg, offset, u64::from(size), false)?;
        self.check_access(lin, size, false)?;
        Ok(match size {
            1 => u64::from(self.read_lin::<1>(lin)?[0]),
            2 => u64::from(u16::from_le_bytes(self.read_lin::<2>(lin)?)),
            4 => u64::from(u32::from_le_bytes(self.read_lin::<4>(lin)?)),
            _ => u64::from_le_bytes(self.read_lin::<8>(lin)?),
        })
    }

    /// Read the destination of a read-modify-write instruction: the access is
    /// checked as a write (segment and page permissions, the W bit of a page
    /// fault's error code, the dirty bit), as hardware checks it, then read.
    pub fn read_mem_rmw(&mut self, seg: usize, offset: u64, size: u32) -> Fault<u64> {
        self.probe_write(seg, offset, size)?;
        self.read_mem(seg, offset, size)
    }

    /// Check a write of `size` bytes at `seg:offset` without writing: the
    /// segment checks, the alignment check, data breakpoints and the page
    /// walk of every page it touches, as a write.
    pub fn probe_write(&mut self, seg: usize, offset: u64, size: u32) -> Fault<()> {
        let lin = self.linear(seg, offset, u64::from(size), true)?;
        // Alignment check (#AC) and data breakpoints come before paging.
        self.check_access(lin, size, true)?;
        let p = self.privilege();
        self.translate(lin, Access::Write, p)?;
        let last = lin.wrapping_add(u64::from(size) - 1);
        if (last ^ lin) & !0xfff != 0 {
            // The second page faults at its first byte, as hardware reports it.
            let next = last & !0xfff;
            let next = if self.state.long_mode() { next } else { next & 0xffff_ffff };
            self.translate(next, Access::Write, p)?;
        }
        Ok(())
    }

    /// Write the low `size` bytes of `value` at `seg:offset`.
    #[inline]
    pub fn write_mem(&mut self, seg: usize, offset: u64, size: u32, value: u64) -> Fault<()> {
        let lin = self.linear(seg, offset, u64::from(size), true)?;
        self.check_access(lin, size, true)?;
        let p = self.privilege();
        self.write_lin_p(lin, &value.to_le_bytes()[..size as usize], p)
    }

    /// Read a byte buffer at `seg:offset` (descriptor operands, FXSAVE areas).
    pub fn read_mem_buf(&mut self, seg: usize, offset: u64, buf: &mut [u8]) -> Fault<()> {
        self.read_mem_buf_aligned(seg, offset, buf, 1)
    }

    /// [`Cpu::read_mem_buf`] of an operand whose alignment requirement is
    /// `align` bytes (a power of two): a misaligned one raises #AC(0) when
    /// alignment checking is on.
    pub fn read_mem_buf_aligned(&mut self, seg: usize, offset: u64, buf: &mut [u8], align: u32) -> Fault<()> {
        let lin = self.linear(seg, offset, buf.len() as u64, false)?;
        self.check_alignment(lin, align)?;
        self.check_access_buf(lin, buf.len(), false);
        let p = self.privilege();
        if let Some(b) = self.mmu.read_fast::<1>(p, lin) {
            if buf.len() == 1 {
                buf[0] = b[0];
                return Ok(());
            }
        }
        self.read_slow(lin, buf, p, Access::Read)
    }

    /// Write a byte buffer at `seg:offset`.
    pub fn write_mem_buf(&mut self, seg: usize, offset: u64, data: &[u8]) -> Fault<()> {
        self.write_mem_buf_aligned(seg, offset, data, 1)
    }

    /// [`Cpu::write_mem_buf`] of an operand whose alignment requirement is
    /// `align` bytes (see [`Cpu::read_mem_buf_aligned`]).
    pub fn write_mem_buf_aligned(&mut self, seg: usize, offset: u64, data: &[u8], align: u32) -> Fault<()> {
        let lin = self.linear(seg, offset, data.len() as u64, true)?;
        self.check_alignment(lin, align)?;
        self.check_access_buf(lin, data.len(), true);
        let p = self.privilege();
        if data.len() <= 4096 - (lin & 0xfff) as usize || data.len() <= 4096 {
            return self.write_lin_p(lin, data, p);
        }
        for (i, chunk) in data.chunks(4096).enumerate() {
            self.write_lin_p(lin + (i * 4096) as u64, chunk, p)?;
        }
        Ok(())
    }

    // ---- the platform --------------------------------------------------------

    fn platform_mmio_read(&mut self, phys: u64, data: &mut [u8]) {
        self.platform.mmio_read(phys, data);
    }

    fn platform_mmio_write(&mut self, phys: u64, data: &[u8]) {
        self.platform.mmio_write(phys, data);
        if self.platform.stop_requested() {
            self.stop = true;
            self.block_break = true;
        }
    }

    pub(crate) fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.platform.io_read(port, size)
    }

    pub(crate) fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.platform.io_write(port, size, value);
        if self.platform.stop_requested() {
            self.stop = true;
            self.block_break = true;
        }
    }

    // ---- decoding ------------------------------------------------------------

    /// Fetch the block at the current RIP, decoding and caching it on a miss.
    fn block_at_rip(&mut self) -> Fault<Rc<Block>> {
        // A device may have written a code page since (DMA).
        if self.mem().invalidation_pending() {
            self.drain_invalidations();
        }
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
        self.decode_block(key, lin, p)
    }

    fn decode_block(&mut self, key: BlockKey, lin: u64, p: Privilege) -> Fault<Rc<Block>> {
        let page = key.phys & !0xfff;
        let off = (key.phys & 0xfff) as usize;
        let mut bytes = [0u8; 4096];
        let cacheable = self.mem().read(page, &mut bytes).is_ok();
        if !cacheable {
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
            let next_lin = (lin & !0xfff).wrapping_add(4096);
            let next_lin = if self.state.long_mode() { next_lin } else { next_lin & 0xffff_ffff };
            let mut rest = [0u8; 15];
            self.read_slow(next_lin, &mut rest[..15 - avail], p, Access::Execute)?;
            buf[avail..].copy_from_slice(&rest[..15 - avail]);
            let mut d = Decoder::with_ip(key.bits, &buf, self.state.rip, DecoderOptions::NONE);
            let insn = d.decode();
            return Ok(Block::new(vec![Decoded::new(insn)]));
        }
        self.stats.blocks_decoded += 1;
        let block = Block::new(insns);
        if cacheable {
            self.mem().mark_code_page(page);
            // Write tags for this page must stop bypassing the tracking check.
            self.mmu.flush_phys(page);
            let user = (p == Privilege::User && self.yield_at_user).then_some(&bytes[..]);
            if self.cache.insert(key, block.clone(), user) {
                self.stats.cache_flushes += 1;
            }
        }
        Ok(block)
    }

    /// Finish a SYSCALL that another engine began: the state is the one
    /// right after the instruction (RIP past it, RFLAGS as they were), and
    /// this performs the instruction's whole transition to the kernel
    /// (RCX, R11, CS, SS, RFLAGS, RIP, CPL), as executing it would.
    pub fn enter_syscall(&mut self) -> Fault<()> {
        crate::ops::system::syscall_entry(self)
    }

    /// Drop all decoded code (after a reset, or a state load).
    pub fn flush_code_cache(&mut self) {
        self.cache = DecodeCache::default();
    }

    /// Split execution, after user code ran in another engine: its writes
    /// to guest memory bypassed the tracking of code pages, and only user
    /// code can have made them. Drop the blocks decoded at CPL 3 from each
    /// page whose bytes changed since (one compare per page).
    pub fn recheck_user_code(&mut self) {
        let mem = self.mem().clone();
        self.cache.recheck_user(&mem);
    }

    /// Take the state back from an engine that ran user code under the same
    /// paging (CR0, CR3, CR4 and EFER unchanged): user code cannot change
    /// page-table entries other than their accessed and dirty bits, so the
    /// soft TLB stays. Any other change of paging flushes it.
    pub fn resume_state(&mut self, s: CpuState) {
        let o = &self.state;
        let same = (o.cr0, o.cr3, o.cr4, o.efer) == (s.cr0, s.cr3, s.cr4, s.efer);
        if same {
            self.state = s;
        } else {
            self.set_state(s);
        }
    }

    // ---- execution -----------------------------------------------------------

    /// Run at most `budget` instructions.
    pub fn run(&mut self, budget: u64) -> StopReason {
        self.stop = false;
        let start = self.stats.instructions;
        while self.stats.instructions - start < budget {
            if let Some(why) = self.shutdown.take() {
                return StopReason::Shutdown(why);
            }
            if self.stop {
                self.stop = false;
                return StopReason::Requested;
            }
            if self.sys.nmi_pending && self.poll_nmi() {
                continue;
            }
            // Interrupt window: IF set and no shadow.
            if self.state.interrupt_shadow == 0
                && self.state.rflags & flags::IF != 0
                && self.platform.interrupt_pending()
            {
                if let Some(vector) = self.platform.ack_interrupt() {
                    self.state.halted = 0;
                    self.stats.interrupts += 1;
                    self.deliver_external(vector);
                    continue;
                }
            }
            if self.state.halted != 0 {
                return StopReason::Halted;
            }
            if self.yield_at_user {
                if self.state.cpl == 3 {
                    if self.user_yield() {
                        return StopReason::UserMode;
                    }
                } else if let Some(since) = self.user_since.take() {
                    self.stats.user_instructions += self.stats.instructions - since;
                    self.user_ud = false;
                }
            }
            self.state.interrupt_shadow = 0;
            match self.block_at_rip() {
                Ok(block) => {
                    // The block that followed this one last time is likely
                    // next again: its lines arrive while this one runs.
                    if let Some(c) = &*block.next.borrow() {
                        Block::prefetch(c.block.as_ptr());
                    }
                    self.run_block(&block);
                    self.prev_block = Some(block);
                }
                Err(e) => {
                    self.insn_start = self.state.rip;
                    self.raise_fetch_fault(e);
                }
            }
        }
        if let Some(why) = self.shutdown.take() {
            return StopReason::Shutdown(why);
        }
        StopReason::Budget
    }

    /// At CPL 3 under [`Cpu::yield_at_user`]: whether to yield now.
    fn user_yield(&mut self) -> bool {
        let since = match self.user_since {
            Some(s) => s,
            None => {
                let space = self.address_space();
                if let Some(n) = self.user_eager.get_mut(&space) {
                    *n += 1;
                    if *n < EAGER_RETRY {
                        return true;
                    }
                    // Try the interpreter again: the code may have become a
                    // loop of short system calls, which a stint elsewhere
                    // cannot always show (where a hand-over alone takes
                    // longer than a short stint).
                    self.user_eager.remove(&space);
                }
                *self.user_since.insert(self.stats.instructions)
            }
        };
        let ran = self.stats.instructions - since;
        let ud = std::mem::take(&mut self.user_ud);
        if !ud && ran < self.user_budget {
            return false;
        }
        self.user_since = None;
        self.stats.user_instructions += ran;
        // Out of budget: compute-bound code, which yields at once from now on.
        if !ud && self.user_budget > 0 {
            if self.user_eager.len() >= 4096 {
                self.user_eager.clear();
            }
            self.user_eager.insert(self.address_space(), 0);
        }
        true
    }

    /// CR3 without the PCID and flag bits.
    fn address_space(&self) -> u64 {
        self.state.cr3 & !0xfff
    }

    /// Split execution: the other engine ran user code of the current
    /// address space and gave it back after a short stint that ended in the
    /// kernel (a system call or a fault), which the interpreter could have
    /// run without a hand-over: its user code runs here again first.
    pub fn user_stint(&mut self, short: bool) {
        if short && !self.user_eager.is_empty() {
            self.user_eager.remove(&self.address_space());
        }
    }

    /// Execute one instruction at RIP (the JIT's and the KVM fallback's entry).
    pub fn step(&mut self) -> StopReason {
        self.stop = false;
        match self.block_at_rip() {
            Ok(block) => {
                let d = block.insns()[0];
                if self.exec_one(&d) {
                    self.stats.instructions += 1;
                }
            }
            Err(e) => {
                self.insn_start = self.state.rip;
                self.raise_fetch_fault(e);
            }
        }
        if let Some(why) = self.shutdown.take() {
            StopReason::Shutdown(why)
        } else if self.stop {
            StopReason::Requested
        } else if self.state.halted != 0 {
            StopReason::Halted
        } else {
            StopReason::Budget
        }
    }

    /// Execute one decoded instruction; `false` if it raised an exception
    /// (already delivered). Traps count as executed.
    #[inline(always)]
    fn exec_one(&mut self, d: &Decoded) -> bool {
        if (self.state.rflags & (flags::TF | flags::RF)) | (self.state.dr[7] & 0xff) | self.sys.deferred != 0 {
            return self.exec_one_debug(d);
        }
        self.insn_start = self.state.rip;
        self.state.rip = d.next_rip();
        match (d.handler)(self, &d.insn) {
            Ok(()) => true,
            Err(e) => {
                if e.is_trap() {
                    self.stats.instructions += 1;
                } else {
                    self.state.rip = self.insn_start;
                }
                self.raise(e);
                false
            }
        }
    }

    fn run_block(&mut self, block: &Block) {
        self.block_break = false;
        let mut done = 0u64;
        for d in block.insns() {
            if !self.exec_one(d) {
                break;
            }
            done += 1;
            if self.block_break {
                break;
            }
        }
        self.stats.instructions += done;
    }

    /// Log an instruction the interpreter does not implement (once per mnemonic)
    /// and raise #UD.
    pub(crate) fn unimplemented(&mut self, insn: &Instruction) -> Fault<()> {
        ops::log_unimplemented(insn);
        Err(Exception::InvalidOpcode)
    }

    /// The mnemonic of the instruction at RIP, decoded but not executed (for
    /// statistics and diagnostics); `None` if it cannot be fetched.
    pub fn mnemonic_at_rip(&mut self) -> Option<String> {
        let block = self.block_at_rip().ok()?;
        let d = block.insns().first()?;
        Some(format!("{:?}", d.insn.mnemonic()).to_lowercase())
    }

    /// The current Code being executed at `insn_start` (for diagnostics).
    pub fn describe_rip(&self) -> String {
        let s = &self.state;
        format!("{:04x}:{:016x} (cpl {}, {}-bit)", s.seg[sreg::CS].selector, s.rip, s.cpl, s.code_bits())
    }

    /// Load a segment register in real or virtual-8086 style (base = selector * 16).
    pub(crate) fn load_real_segment(&mut self, seg: usize, selector: u16) {
        let s = &mut self.state.seg[seg];
        s.selector = selector;
        s.base = u64::from(selector) << 4;
        if self.state.rflags & flags::VM != 0 {
            *s = Segment::real(
                selector,
                seg_attr::P | seg_attr::S | seg_attr::TYPE_RW | seg_attr::TYPE_ACCESSED | (3 << seg_attr::DPL_SHIFT),
            );
            if seg == sreg::CS {
                s.attr |= seg_attr::TYPE_CODE;
            }
        }
    }

    /// Whether a `Code` has a handler (for coverage reports).
    pub fn implemented(code: Code) -> bool {
        ops::implemented(code)
    }
}

/// Whether `a` is canonical for 48-bit linear addresses.
#[inline]
pub fn is_canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn block(n: usize) -> Rc<Block> {
        Block::new(vec![Decoded::new(Instruction::default()); n])
    }

    fn key(phys: u64) -> BlockKey {
        BlockKey { phys, rip_page: phys & !0xfff, bits: 64 }
    }

    #[test]
    fn the_decode_cache_is_dropped_when_full_and_counts_invalidations() {
        let mut c = DecodeCache::default();
        let per = MAX_BLOCK_INSNS;
        let fit = MAX_CACHED_INSNS / per;
        for i in 0..fit as u64 {
            assert!(!c.insert(key(i * 0x1000), block(per), None));
        }
        assert_eq!(c.insns, fit * per);
        // Invalidating a page gives its instructions back.
        c.invalidate_page(0);
        assert_eq!(c.insns, (fit - 1) * per);
        assert!(c.get(&key(0)).is_none());
        // Re-inserting a key replaces the block without counting it twice.
        assert!(!c.insert(key(0x1000), block(per), None));
        assert_eq!(c.insns, (fit - 1) * per);
        assert!(!c.insert(key(0), block(per), None));
        // Full: the next block drops everything else, and says so.
        assert!(c.insert(key(0xfff_f000), block(per), None));
        assert_eq!(c.insns, per);
        assert_eq!(c.blocks.len(), 1);
        assert!(c.get(&key(0x1000)).is_none());
        assert!(c.get(&key(0xfff_f000)).is_some());
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::ops::testutil::*;
    use iced_x86::code_asm::*;

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
            let b = Block::new(insns);
            let rips: Vec<u64> = b.insns().iter().map(Decoded::next_rip).collect();
            assert_eq!(rips, (0..n as u64).map(|i| 0x1000 + i).collect::<Vec<_>>(), "{n} instructions");
        }
    }

    #[test]
    fn blocks_the_cache_drops_are_dead() {
        let block = || Block::new(vec![Decoded::new(Instruction::default()); 4]);
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

    /// A loop calls a function on another page and, halfway, rewrites the
    /// function's immediate: the calling block remembers the old function,
    /// but every later call runs the new code.
    #[test]
    fn rewritten_code_is_not_reached_through_a_remembered_block() {
        let mut c = long_mode();
        let f = (c.state.rip & !0xfff) + 0x1000;
        let code = assemble(&c, |a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            a.mov(ecx, 6)?;
            a.xor(ebx, ebx)?;
            a.set_label(&mut top)?;
            a.call(f)?;
            a.cmp(ecx, 4)?;
            a.jne(skip)?;
            a.mov(rdx, f + 1)?;
            a.mov(byte_ptr(rdx), 5)?;
            a.set_label(&mut skip)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        place(&mut c, &code);
        // f: mov eax, 1; add ebx, eax; ret
        c.mem().write(f, &[0xb8, 1, 0, 0, 0, 0x01, 0xc3, 0xc3]).unwrap();
        let mut runs = 0;
        while c.run(1000) != StopReason::Halted {
            runs += 1;
            assert!(runs < 100, "the loop did not end");
        }
        assert_eq!(c.state.gpr[3], 3 + 3 * 5);
        assert_eq!(c.stats.exceptions, 0);
    }

    /// A block that loops on itself remembers itself; when a device rewrites
    /// it (DMA: no CPU write follows to notice), the block the CPU still
    /// holds is dead and not run again.
    #[test]
    fn a_block_rewritten_under_its_own_loop_is_decoded_again() {
        let mut c = long_mode();
        let top = c.state.rip;
        let code = assemble(&c, |a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.add(ebx, 1)?;
            a.dec(ecx)?;
            a.jnz(l)?;
            a.hlt()
        });
        place(&mut c, &code);
        assert_eq!(code[..3], [0x83, 0xc3, 0x01]);
        c.state.gpr[1] = 1000;
        assert_eq!(c.run(10), StopReason::Budget);
        let done = 1000 - c.state.gpr[1];
        assert!(done > 1 && c.state.rip == top);
        // add ebx, 16
        c.mem().write(top + 2, &[0x10]).unwrap();
        assert_eq!(c.run(1_000_000), StopReason::Halted);
        assert_eq!(c.state.gpr[3], done + (1000 - done) * 16);
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::ops::testutil::*;
    use iced_x86::code_asm::*;

    /// A CPU at CPL 3 in 64-bit mode, with `code` at RIP.
    fn user_cpu(code: &[u8]) -> Cpu {
        let mut c = long_mode();
        to_user(&mut c, SEL_UCODE64);
        place(&mut c, code);
        c.yield_at_user = true;
        c
    }

    /// `l: inc rax; jmp l`.
    fn spin(c: &Cpu) -> Vec<u8> {
        assemble(c, |a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.inc(rax)?;
            a.jmp(l)
        })
    }

    /// [`user_cpu`] running [`spin`].
    fn spinning_user_cpu() -> Cpu {
        let mut c = long_mode();
        to_user(&mut c, SEL_UCODE64);
        let code = spin(&c);
        user_cpu(&code)
    }

    #[test]
    fn user_code_runs_here_until_the_budget_is_spent() {
        let mut c = spinning_user_cpu();
        // Budget 0: nothing runs at CPL 3.
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!((c.stats.instructions, c.state.gpr[0]), (0, 0));
        c.user_budget = 100;
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.stats.instructions, 100);
        assert_eq!(c.state.gpr[0], 50);
        assert_eq!(c.stats.user_instructions, 100);
        // The address space ran out of budget: it yields at once now,
        // after a long stint elsewhere too...
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.stats.instructions, 100);
        c.user_stint(false);
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.stats.instructions, 100);
        // ...until a short stint elsewhere ended in the kernel.
        c.user_stint(true);
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.stats.instructions, 200);
        assert_eq!(c.stats.exceptions, 0);
        // Another address space is not affected.
        c.user_stint(true);
        c.run(1_000_000);
        c.state.cr3 += 0x1000;
        c.user_budget = 1_000_000;
        assert_eq!(c.run(500), StopReason::Budget);
        assert_eq!(c.stats.instructions, 800);
    }

    #[test]
    fn a_compute_bound_mark_is_retried_after_a_number_of_yields() {
        let mut c = spinning_user_cpu();
        c.user_budget = 100;
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.stats.instructions, 100);
        for _ in 1..EAGER_RETRY {
            assert_eq!(c.run(1_000_000), StopReason::UserMode);
        }
        assert_eq!(c.stats.instructions, 100, "marked: yields at once");
        // The next time it runs here again, up to the budget, and is
        // marked again.
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.stats.instructions, 200);
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.stats.instructions, 200);
    }

    #[test]
    fn an_invalid_opcode_at_cpl3_goes_to_the_other_engine_undelivered() {
        let mut c = long_mode();
        to_user(&mut c, SEL_UCODE64);
        let code = assemble(&c, |a| {
            a.nop()?;
            a.ud2()
        });
        let mut c = user_cpu(&code);
        c.user_budget = 1_000;
        let ud2 = c.state.rip + 1;
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.state.rip, ud2);
        assert_eq!((c.stats.instructions, c.stats.exceptions, c.stats.user_ud_yields), (1, 0, 1));
        assert_eq!(c.state.cpl, 3);
        // Without split execution the #UD is delivered.
        let mut c = user_cpu(&code);
        c.yield_at_user = false;
        c.step();
        c.step();
        assert_eq!((c.stats.exceptions, c.stats.user_ud_yields, c.state.cpl), (1, 0, 0));
        assert_eq!(c.state.rip, stub(6));
    }

    #[test]
    fn user_blocks_are_dropped_when_their_bytes_changed_behind_the_tracking() {
        let mut c = long_mode();
        c.yield_at_user = true;
        let kernel = c.state.rip;
        let kcode = assemble(&c, |a| a.nop());
        place(&mut c, &kcode);
        c.block_at_rip().unwrap();
        to_user(&mut c, SEL_UCODE64);
        let user = kernel + 0x1000;
        c.state.rip = user;
        let ucode = spin(&c);
        c.mem().write(user, &ucode).unwrap();
        c.block_at_rip().unwrap();
        assert_eq!(c.cache.blocks.len(), 2);
        assert_eq!(c.cache.user_pages.len(), 1);
        // Unchanged bytes: the block stays.
        c.recheck_user_code();
        let decoded = c.stats.blocks_decoded;
        c.block_at_rip().unwrap();
        assert_eq!(c.stats.blocks_decoded, decoded);
        // Bytes changed by a write the tracking did not see (as another
        // engine's): only the user page's block goes.
        // The same guest memory with one byte of the user page changed.
        let mut bytes = [0u8; 4096];
        c.mem().read(user, &mut bytes).unwrap();
        bytes[0] ^= 0xff;
        let other = GuestMemory::new(1 << 20).unwrap();
        other.write(user, &bytes).unwrap();
        c.cache.recheck_user(&other);
        assert_eq!(c.cache.blocks.len(), 1);
        assert!(c.cache.user_pages.is_empty());
        assert!(c.cache.by_page.contains_key(&(kernel & !0xfff)));
        assert!(!c.cache.by_page.contains_key(&user));
    }

    #[test]
    fn resuming_keeps_the_tlb_only_under_the_same_paging() {
        let mut c = long_mode();
        let s = c.state;
        let flushes = c.mmu.flushes;
        c.resume_state(s);
        assert_eq!(c.mmu.flushes, flushes);
        let mut other = s;
        other.cr4 |= crate::state::cr::CR4_PGE;
        c.resume_state(other);
        assert_eq!(c.mmu.flushes, flushes + 1);
        assert_eq!(c.state.cr4, other.cr4);
    }
}
