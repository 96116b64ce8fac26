//! The JIT tier: hot guest code compiled by Cranelift.
//!
//! The interpreter (`cpu`) runs cold code and counts runs of each decoded
//! block. When a block has run [`Config::threshold`] times, the run loop
//! gathers a region around it (the blocks of its code page that direct
//! branches reach), and a background thread translates the region into one
//! Cranelift function and compiles it ([`compiler`]) while the interpreter
//! goes on. The code is copied into the code cache ([`code`]); from then
//! on the interpreter stops before any block of the region and the region
//! runs instead, entered at that block.
//!
//! - [`translate`]: guest instructions to Cranelift IR; what it does not
//!   translate calls the interpreter's handler for that one instruction.
//! - [`ctx`]: the context a region runs with, and the helpers it calls.
//! - [`Jit::run`]: the run loop shared with the interpreter.
//!
//! Regions are keyed by (RIP, guest physical address, mode). A write to a
//! page that holds translated code (by the CPU or by a device) drops the
//! page's regions, through the decode cache's code-page tracking.

pub mod code;
pub mod compiler;
pub mod ctx;
pub mod disk;
pub mod reloc;
pub mod shared;
pub mod translate;

use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cpu::state::{cr, flags, seg_attr, sreg, CpuState};
use cpu::{Block, Cpu, FastMap, Invalidation, StopReason};
use iced_x86::FlowControl;
use parking_lot::Mutex;

use code::{CodeCache, RegionFn, Trampoline};
use compiler::{Compiler, Done, Job, Settings};
use ctx::{jump_set, jump_slot, jump_tag, jump_tag_global, JitCtx, JumpSet, JumpSlot, JUMP_SETS};
use shared::Shared;
use translate::{AccessCalls, GuestBlock, RegionSpec};

/// How the JIT is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Runs of a block after which its region is compiled.
    pub threshold: u32,
    pub settings: Settings,
    /// Code cache size in bytes.
    pub cache_bytes: usize,
    /// Instructions one region holds at most.
    pub max_region_insns: usize,
    /// Compile on the caller's thread and install at once (tests).
    pub synchronous: bool,
    /// Name each compiled region in `/tmp/perf-PID.map` for `perf`.
    pub perf_map: bool,
    /// A region's exit goes straight on into the next region through the
    /// jump cache (off: every exit returns to the run loop, which chains).
    pub chain: bool,
    /// Only CPL 0 code is compiled and run compiled (split execution: user
    /// code goes to another engine); the interpreter's hooks hear of each
    /// region entry as of a kernel block.
    pub kernel_only: bool,
    /// Other host threads run vCPUs on the same guest memory: the common
    /// LOCK read-modify-writes and XCHG with memory on a naturally aligned
    /// operand in writable RAM without code are host atomics in the
    /// translated code, others run through the interpreter's locked
    /// handler, and MFENCE is a host fence (one thread alone needs
    /// neither).
    pub shared_memory: bool,
    /// A folder that keeps compiled regions between runs (`--jit-cache`,
    /// [`disk`]).
    pub disk_cache: Option<std::path::PathBuf>,
    /// 64-bit regions are compiled position-independent and kept by what
    /// their code is made of, so the same instructions at another page
    /// take the code already compiled ([`shared`]; off with
    /// `FERROVM_JIT_CONTENT=0`, for measurements).
    pub content_cache: bool,
    /// With `content_cache`: runs after which a block that has no region
    /// looks once for a region compiled for the same instructions at
    /// another page (found by its first block's instructions relative to
    /// their page, then compared block by block), and takes it at once
    /// instead of running on to `threshold` in the interpreter (0: never;
    /// `FERROVM_JIT_PROBE`).
    pub probe: u32,
}

/// The runs after which a new block first stops the interpreter: the
/// probe where there is one, else the threshold.
fn initial_heat(cfg: &Config) -> u32 {
    let threshold = cfg.threshold.max(1);
    if cfg.content_cache && cfg.probe > 0 && cfg.probe < threshold {
        cfg.probe
    } else {
        threshold
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 1000,
            settings: Settings::default(),
            cache_bytes: 64 << 20,
            max_region_insns: 256,
            synchronous: false,
            perf_map: false,
            chain: true,
            kernel_only: false,
            shared_memory: false,
            disk_cache: None,
            content_cache: true,
            probe: 32,
        }
    }
}

/// Counters for `--stats` and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct JitStats {
    pub regions_compiled: u64,
    /// Regions whose code is a copy of an earlier compile of the same
    /// code (another vCPU's, or this one's before an invalidation).
    pub shared_compiles: u64,
    /// Regions asked for at [`Config::probe`] runs, found by their
    /// instructions at another page.
    pub early_regions: u64,
    pub compile_failures: u64,
    pub compile_nanos: u64,
    /// Regions compiled but dropped before installation (their code changed).
    pub stale: u64,
    pub code_bytes: u64,
    pub native_insns: u64,
    pub fallback_insns: u64,
    /// Region entries from the run loop.
    pub entries: u64,
    /// Regions entered by the run loop after the exit of another, without
    /// going back to the interpreter.
    pub chained: u64,
    /// Regions entered straight from the exit of another (a tail call).
    pub linked: u64,
    pub fault_exits: u64,
    pub step_exits: u64,
    pub invalidated_pages: u64,
    pub invalidated_regions: u64,
    pub full_flushes: u64,
    pub cache_flushes: u64,
}

/// A region entry: RIP, the guest physical address of its code, and the mode.
pub(crate) type Key = (u64, u64, u8);

/// A key no region has (RIP past the canonical range).
const NO_KEY: Key = (u64::MAX, u64::MAX, 0);

/// An installed region.
struct Region {
    /// Instructions the code runs through the interpreter; it holds their
    /// addresses, so the table lives as long as the code.
    _fallbacks: Arc<Vec<cpu::Decoded>>,
    keys: Vec<Key>,
    live: bool,
    /// The linear and physical page of each page its code comes from, the
    /// entry's first: a region of more than one page runs only while each
    /// of its linear pages still maps to the same physical page.
    pages: Vec<(u64, u64)>,
    /// The TLB generation at which that was last found to hold (and
    /// whether every page was then a global translation).
    checked: Option<(u64, bool)>,
}

/// A region's blocks as gathered, with their keys and pages.
struct Gathered {
    spec: RegionSpec,
    weak: Vec<Weak<Block>>,
    keys: Vec<Key>,
    pages: Vec<(u64, u64)>,
}

/// A region being compiled.
struct Pending {
    keys: Vec<Key>,
    pages: Vec<(u64, u64)>,
    /// Each physical page's write generation when the code was read.
    page_gens: Vec<u64>,
    gen: u64,
    blocks: Vec<Weak<Block>>,
}

/// Compile the memory helpers' register-saving entries into `code` (a
/// mapping that is never flushed).
pub(crate) fn install_access_calls(
    isa: &cranelift_codegen::isa::OwnedTargetIsa,
    code: &mut CodeCache,
) -> Result<AccessCalls, String> {
    use cranelift_codegen::ir::types::{I32, I64};
    let ptr = isa.pointer_type();
    let mut entry = |target: usize, params: &[cranelift_codegen::ir::Type], ret| -> Result<usize, String> {
        let bytes = compiler::compile_saving_call(isa, target, params, ret)?;
        let at = code.install(&bytes).ok_or("cannot install the JIT's helper entries")?;
        Ok(at as usize)
    };
    Ok(AccessCalls {
        load: entry(ctx::load as *const () as usize, &[ptr, I32, I64, I32, I64], Some(I64))?,
        load_rmw: entry(ctx::load_rmw as *const () as usize, &[ptr, I32, I64, I32, I64], Some(I64))?,
        store: entry(ctx::store as *const () as usize, &[ptr, I32, I64, I32, I64, I64], None)?,
    })
}

/// The code mode a region is compiled for, or 0 when translated code may
/// not run now (single-step, breakpoints, alignment checks, real or
/// virtual-8086 mode, 32-bit code with segments that are not flat).
pub fn native_mode(s: &CpuState) -> u8 {
    if s.rflags & (flags::TF | flags::RF) != 0 || s.dr[7] & 0xff != 0 || s.events.deferred_debug != 0 {
        return 0;
    }
    if s.cpl == 3 && s.cr0 & cr::CR0_AM != 0 && s.rflags & flags::AC != 0 {
        return 0;
    }
    if s.code64() {
        return 64;
    }
    if !s.protected() || s.v86() {
        return 0;
    }
    let flat = |seg: &cpu::state::Segment| seg.base == 0 && seg.limit == 0xffff_ffff;
    let cs = &s.seg[sreg::CS];
    if !flat(cs) || cs.attr & seg_attr::DB == 0 {
        return 0;
    }
    for i in [sreg::DS, sreg::ES, sreg::SS] {
        let g = &s.seg[i];
        let a = g.attr;
        let data_rw =
            a & (seg_attr::UNUSABLE | seg_attr::TYPE_CODE | seg_attr::TYPE_DC) == 0 && a & seg_attr::TYPE_RW != 0;
        if !flat(g) || !data_rw || (i == sreg::SS && a & seg_attr::DB == 0) {
            return 0;
        }
    }
    32
}

/// The JIT of one CPU.
pub struct Jit {
    cfg: Config,
    compiler: Option<Compiler>,
    isa: Option<cranelift_codegen::isa::OwnedTargetIsa>,
    cache: CodeCache,
    ctx: Box<JitCtx>,
    regions: Vec<Region>,
    /// Each region's code, by region id (dense: the chaining loop reads it
    /// at every hop).
    fns: Vec<RegionFn>,
    map: FastMap<Key, (u32, u32)>,
    /// A direct-mapped cache in front of `map`, by RIP.
    jump: Vec<(Key, u32, u32)>,
    /// The jump cache that compiled exits probe (by linear RIP and a tag).
    links: Box<[JumpSet]>,
    /// The entry from the run loop into compiled code, and the mapping
    /// that holds it (never flushed).
    trampoline: Trampoline,
    /// The memory helpers' register-saving entries, in the same mapping.
    access: AccessCalls,
    /// What this JIT shares with the other vCPUs' (the mapping above, and
    /// compiled regions).
    shared: Arc<Shared>,
    by_page: FastMap<u64, Vec<u32>>,
    queued: FastMap<Key, u64>,
    pending: FastMap<u64, Pending>,
    next_job: u64,
    page_gen: FastMap<u64, u64>,
    gen: u64,
    inval: Arc<Mutex<Vec<Invalidation>>>,
    inval_flag: Arc<AtomicBool>,
    /// `/tmp/perf-PID.map`, for `perf` to name compiled regions.
    perf_map: Option<std::io::BufWriter<std::fs::File>>,
    pub stats: JitStats,
}

impl Jit {
    /// A JIT for `cpu`: starts the compiler thread, reserves the code
    /// cache, and turns on hot-block counting in the CPU.
    pub fn new(cpu: &mut Cpu, cfg: Config) -> Result<Self, String> {
        let shared = Shared::with_disk_cache(&cfg.settings, cfg.disk_cache.as_deref())?;
        Self::with_shared(cpu, cfg, shared)
    }

    /// A JIT for `cpu` that shares `shared` with the JITs of the other
    /// vCPUs of its machine (made with the same settings): one vCPU's
    /// compiled region serves every vCPU that asks for the same one.
    pub fn with_shared(cpu: &mut Cpu, cfg: Config, shared: Arc<Shared>) -> Result<Self, String> {
        let (compiler, isa) = if cfg.synchronous {
            (None, Some(compiler::host_isa(&cfg.settings)?))
        } else {
            (Some(Compiler::start(cfg.settings.clone(), shared.clone())?), None)
        };
        let cache = CodeCache::new(cfg.cache_bytes).map_err(|e| format!("cannot reserve the code cache: {e}"))?;
        let (trampoline, access) = (shared.trampoline, shared.access);
        let inval: Arc<Mutex<Vec<Invalidation>>> = Arc::default();
        let inval_flag = Arc::new(AtomicBool::new(false));
        {
            let (q, f) = (inval.clone(), inval_flag.clone());
            cpu.add_invalidation_listener(Box::new(move |i| {
                q.lock().push(i);
                f.store(true, Ordering::Release);
            }));
        }
        cpu.set_hot_threshold(initial_heat(&cfg));
        let cfg_perf_map = cfg.perf_map;
        Ok(Jit {
            cfg,
            compiler,
            isa,
            cache,
            ctx: Box::default(),
            regions: Vec::new(),
            fns: Vec::new(),
            map: FastMap::default(),
            jump: vec![(NO_KEY, 0, 0); 2 * JUMP_SETS],
            links: vec![JumpSet::EMPTY; JUMP_SETS].into_boxed_slice(),
            trampoline,
            access,
            shared,
            by_page: FastMap::default(),
            queued: FastMap::default(),
            pending: FastMap::default(),
            next_job: 0,
            page_gen: FastMap::default(),
            gen: 0,
            inval,
            inval_flag,
            perf_map: if cfg_perf_map {
                let path = format!("/tmp/perf-{}.map", std::process::id());
                match std::fs::File::create(&path) {
                    Ok(f) => Some(std::io::BufWriter::new(f)),
                    Err(e) => {
                        tracing::warn!(target: "jit", "cannot write {path}: {e}");
                        None
                    }
                }
            } else {
                None
            },
            stats: JitStats::default(),
        })
    }

    /// Instructions run so far, by the interpreter and translated code.
    pub fn instructions(&self, cpu: &Cpu) -> u64 {
        cpu.stats.instructions + self.ctx.native
    }

    /// Code cache bytes in use and reserved.
    pub fn cache_use(&self) -> (usize, usize) {
        (self.cache.used(), self.cache.capacity())
    }

    /// Compile time so far.
    pub fn compile_time(&self) -> Duration {
        Duration::from_nanos(self.stats.compile_nanos)
    }

    /// Drop every region (a reset, a state load).
    pub fn flush(&mut self) {
        self.regions.clear();
        self.fns.clear();
        self.map.clear();
        self.jump.fill((NO_KEY, 0, 0));
        self.links.fill(JumpSet::EMPTY);
        self.by_page.clear();
        self.queued.clear();
        self.gen += 1;
        self.cache.flush();
        self.stats.full_flushes += 1;
    }

    /// Run at most about `budget` instructions, in translated code where it
    /// exists and in the interpreter elsewhere.
    pub fn run(&mut self, cpu: &mut Cpu, budget: u64) -> StopReason {
        self.run_split(cpu, budget, budget)
    }

    /// [`Jit::run`] with a smaller budget for the instructions the
    /// interpreter runs: at most about `budget` instructions in all, of
    /// which at most about `interpreted` outside translated code. A caller
    /// that looks at its timers every slice gives compiled code, which runs
    /// an instruction in a fraction of the interpreter's time, a longer
    /// slice than cold code.
    pub fn run_split(&mut self, cpu: &mut Cpu, budget: u64, interpreted: u64) -> StopReason {
        if cpu.debugged() {
            // A debugger's breakpoints and steps are the interpreter's.
            return cpu.run(budget.min(interpreted));
        }
        let start = self.instructions(cpu);
        let mut interp_used = 0u64;
        loop {
            self.poll(cpu);
            let used = self.instructions(cpu) - start;
            if used >= budget || interp_used >= interpreted {
                return StopReason::Budget;
            }
            if cpu.take_stop() {
                return StopReason::Requested;
            }
            if !cpu.needs_boundary() {
                if let Some(at) = self.lookup(cpu) {
                    self.enter(cpu, at, budget - used);
                    continue;
                }
            }
            let before = self.instructions(cpu);
            let ran = cpu.run((budget - used).min(interpreted - interp_used));
            interp_used += self.instructions(cpu) - before;
            match ran {
                StopReason::Hot => {
                    // What the interpreter ran may have written code: take
                    // invalidations before any region runs.
                    self.poll(cpu);
                    match self.lookup(cpu) {
                        Some(at) => self.enter(cpu, at, budget - used),
                        None => self.hot(cpu),
                    }
                }
                why => return why,
            }
        }
    }

    /// The region entry for the code at RIP now, if one is installed.
    fn lookup(&mut self, cpu: &mut Cpu) -> Option<(u32, u32)> {
        let mode = native_mode(&cpu.state);
        if mode == 0 || (self.cfg.kernel_only && cpu.state.cpl != 0) {
            return None;
        }
        let rip = cpu.state.rip;
        let phys = cpu.code_phys_walk(rip)?;
        self.probe(cpu, (rip, phys, mode))
    }

    /// The region entry of `key`: the jump cache, then the map (which
    /// refills the jump cache's slot).
    #[inline]
    fn probe(&mut self, cpu: &mut Cpu, key: Key) -> Option<(u32, u32)> {
        let slot = jump_slot(key.0);
        let j = self.jump[slot];
        let found = if j.0 == key {
            (j.1, j.2)
        } else {
            let found = self.map.get(&key).copied()?;
            self.jump[slot] = (key, found.0, found.1);
            found
        };
        self.maps_as_compiled(cpu, found.0).then_some(found)
    }

    /// Whether each page of region `id` still maps to the physical page
    /// its code came from (the entry's page always does: its key holds
    /// it); remembered for the TLB generation.
    #[inline]
    fn maps_as_compiled(&mut self, cpu: &mut Cpu, id: u32) -> bool {
        let r = &self.regions[id as usize];
        if r.pages.len() <= 1 || r.checked.is_some_and(|(g, _)| g == cpu.mmu.generation) {
            return true;
        }
        self.check_pages(cpu, id)
    }

    #[cold]
    fn check_pages(&mut self, cpu: &mut Cpu, id: u32) -> bool {
        let r = &mut self.regions[id as usize];
        let supervisor = cpu.state.cpl == 0;
        let mut global = supervisor;
        for &(lin, phys) in &r.pages {
            if cpu.code_phys_walk(lin).map(|p| p & !0xfff) != Some(phys) {
                r.checked = None;
                return false;
            }
            global &= supervisor && cpu.mmu.exec_global(mmu::Privilege::Supervisor, lin);
        }
        r.checked = Some((cpu.mmu.generation, global));
        true
    }

    /// Run a region from one of its entries, then the regions its exits
    /// lead to, for as long as nothing needs the run loop. A compiled exit
    /// finds its successor in the jump cache and jumps there itself; when
    /// the cache misses, a helper asked to leave or the budget is spent, the
    /// region returns here, and this loop looks the successor up and goes
    /// on.
    fn enter(&mut self, cpu: &mut Cpu, (mut region, mut entry): (u32, u32), budget: u64) {
        if self.cfg.kernel_only {
            cpu.note_kernel_block();
        }
        let mode = native_mode(&cpu.state);
        let cp: *mut Cpu = cpu;
        let ctx = &mut *self.ctx;
        // SAFETY: `cp` comes from the `&mut Cpu` this function holds and
        // does not use while a region runs; both pointers below derive
        // from it.
        unsafe {
            ctx.state = std::ptr::addr_of_mut!((*cp).state);
            ctx.tlb = (*cp).mmu.tlb_set((*cp).data_privilege());
        }
        ctx.cpu = cp;
        ctx.jump = self.links.as_ptr();
        let mut left = budget;
        let mut first = true;
        loop {
            let code = self.fns[region as usize];
            // Fill the slot of this entry, for exits that lead here: kernel
            // code on a global page keeps its slot across CR3 loads.
            let (cpl, rip) = (cpu.state.cpl, cpu.state.rip);
            let tag = jump_tag(cpu.mmu.generation, cpl, mode);
            let tag_global = jump_tag_global(cpu.mmu.global_generation, cpl, mode);
            let r = &self.regions[region as usize];
            let global = if r.pages.len() <= 1 {
                cpl == 0 && cpu.mmu.exec_global(mmu::Privilege::Supervisor, rip)
            } else {
                // Checked at this generation by `probe`.
                r.checked.is_some_and(|(g, gl)| g == cpu.mmu.generation && gl)
            };
            self.links[jump_set(rip)].fill(JumpSlot { rip, tag: if global { tag_global } else { tag }, code, entry });
            let ctx = &mut *self.ctx;
            ctx.tag = tag;
            ctx.tag_global = tag_global;
            ctx.hops = 0;
            ctx.budget = left;
            ctx.exit = ctx::exit::NORMAL;
            ctx.fault = None;
            ctx.status = 0;
            let fallbacks = ctx.fallbacks;
            let ctx_ptr: *mut JitCtx = ctx;
            // SAFETY: `code` is an installed region (of the signature the
            // trampoline calls), compiled from this CPU's code for its
            // current mode (the key looked up matched); the context points
            // at this CPU, which nothing else touches while the code runs;
            // the regions it links to through the jump cache are installed
            // too (the cache is emptied whenever a region is dropped), and
            // their fallback tables are alive (regions are only dropped
            // between runs).
            unsafe { (self.trampoline)(ctx_ptr, code, entry) };
            // Each exit leaves the budget less what it ran (wrapping).
            let ran_native = left.wrapping_sub(self.ctx.budget);
            self.ctx.native += ran_native;
            let ran_fallback = self.ctx.fallbacks - fallbacks;
            if first {
                self.stats.entries += 1;
                first = false;
            } else {
                self.stats.chained += 1;
            }
            self.stats.linked += self.ctx.hops;
            self.stats.native_insns += ran_native;
            self.stats.fallback_insns += ran_fallback;
            // The helpers counted fallbacks in `cpu.stats.instructions` too.
            if let Some(e) = self.ctx.fault.take() {
                self.stats.fault_exits += 1;
                let rip = cpu.state.rip;
                cpu.raise_at(e, rip);
                return;
            }
            if self.ctx.exit == ctx::exit::STEP {
                self.stats.step_exits += 1;
                cpu.step();
                return;
            }
            // Go on in the next region only when the mode, the privilege
            // and the code are as they were (no helper asked to leave),
            // the slice lasts, and no event, stop or invalidation waits.
            left = left.saturating_sub(ran_native + ran_fallback);
            // What changes the CPU's own state (HLT, an interrupt shadow,
            // a stop, a mode change, a write to code) ends a region with a
            // helper's LEAVE; an interrupt raised from outside, or a
            // device's write to code, is looked for here, once the chain's
            // budget (the run's slice) is spent.
            if self.ctx.status != ctx::status::OK
                || left == 0
                || self.inval_flag.load(Ordering::Relaxed)
                || cpu.code_changes_pending()
                || cpu.needs_boundary()
            {
                return;
            }
            let rip = cpu.state.rip;
            let Some(phys) = cpu.code_phys(rip) else { return };
            let Some(next) = self.probe(cpu, (rip, phys, mode)) else { return };
            (region, entry) = next;
        }
    }

    /// The block at RIP is hot and has no region: compile one.
    fn hot(&mut self, cpu: &mut Cpu) {
        let Ok(block) = cpu.block_at_rip() else { return };
        // Until the region is installed, the block runs on in the
        // interpreter.
        block.set_heat(u32::MAX);
        let mode = native_mode(&cpu.state);
        let rip = cpu.state.rip;
        let Some(phys) = cpu.code_phys_walk(rip) else { return };
        if mode == 0 || (self.cfg.kernel_only && cpu.state.cpl != 0) {
            return;
        }
        let key = (rip, phys, mode);
        if self.queued.contains_key(&key) {
            return;
        }
        // Another vCPU's region for this block, when this vCPU sees the
        // same code: its compile serves both.
        let page = rip & !0xfff;
        if let Some(g) = self.shared.offered(&key).and_then(|spec| self.regather(cpu, &spec, mode, page)) {
            self.submit(g);
            return;
        }
        // Early ([`Config::probe`]): a region compiled for the same
        // instructions at another page is taken now; otherwise the block
        // counts on to the threshold.
        if self.initial_heat() != self.cfg.threshold.max(1) && block.take_probe() {
            if self.position_independent(mode) {
                let h = disk::block_hash(block.insns(), page);
                if let Some(g) =
                    self.shared.offered_by_content(h).and_then(|spec| self.regather(cpu, &spec, mode, page))
                {
                    self.stats.early_regions += 1;
                    self.submit(g);
                    return;
                }
            }
            block.set_heat(self.cfg.threshold.max(1) - self.initial_heat());
            return;
        }
        let g = self.gather(cpu, rip, mode, false);
        if g.spec.blocks.is_empty() {
            return;
        }
        self.submit(g);
    }

    /// Queue a gathered region for the compiler (or, with a synchronous
    /// JIT, compile and install it now), keyed by its blocks' RIPs and
    /// physical addresses.
    fn submit(&mut self, g: Gathered) {
        let Gathered { spec, weak, keys, pages } = g;
        // One copy of the spec serves the job, the shared table and its
        // index.
        let spec = Arc::new(spec);
        let id = self.next_job;
        self.next_job += 1;
        for k in &keys {
            self.queued.insert(*k, id);
        }
        let page_gens = pages.iter().map(|&(_, p)| self.page_gen.get(&p).copied().unwrap_or(0)).collect();
        let pend = Pending { keys, pages, page_gens, gen: self.gen, blocks: weak };
        self.shared.publish(&pend.keys, &spec);
        self.pending.insert(id, pend);
        if let Some(c) = &mut self.compiler {
            if !c.send(Job { id, spec }) {
                self.pending.remove(&id);
            }
        } else if let Some(isa) = &self.isa {
            let t0 = std::time::Instant::now();
            let (result, shared) = self.shared.compile(&mut compiler::Workspace::default(), isa, id, spec);
            let nanos = t0.elapsed().as_nanos() as u64;
            self.install(Done { id, result, nanos, shared });
        }
    }

    /// Compile the region at RIP now (every block of its page that direct
    /// branches reach, run or not) and install it before returning, with a
    /// synchronous JIT ([`Config::synchronous`]). False when the code at RIP
    /// cannot be translated now (mode, fetch fault) or compiling failed.
    pub fn compile_now(&mut self, cpu: &mut Cpu) -> bool {
        let mode = native_mode(&cpu.state);
        let rip = cpu.state.rip;
        if mode == 0 || self.isa.is_none() || cpu.block_at_rip().is_err() {
            return false;
        }
        // (Empty when RIP's code does not translate to a physical page.)
        let g = self.gather(cpu, rip, mode, true);
        if g.spec.blocks.is_empty() {
            return false;
        }
        let compiled = self.stats.regions_compiled;
        self.submit(g);
        self.stats.regions_compiled > compiled
    }

    /// `spec` (a region another vCPU gathered, or a position-independent
    /// region gathered at another page) as this vCPU's region at `page`:
    /// `None` unless each of its blocks decodes here to the same
    /// instructions, bit for bit (relative to their page when the pages
    /// differ, [`disk::same_relative`]), and this JIT would compile it the
    /// same.
    fn regather(&self, cpu: &mut Cpu, spec: &RegionSpec, mode: u8, page: u64) -> Option<Gathered> {
        if spec.bits != u32::from(mode)
            || spec.chain != self.cfg.chain
            || spec.shared_memory != self.cfg.shared_memory
            || spec.position_independent != self.position_independent(mode)
        {
            return None;
        }
        let first = spec.blocks.first()?;
        let old_page = first.rip & !0xfff;
        if page != old_page && spec.relative_base().is_none() {
            return None;
        }
        let moved = page.wrapping_sub(old_page);
        let phys = cpu.code_phys_walk(first.rip.wrapping_add(moved))? & !0xfff;
        let mut g = Gathered {
            spec: RegionSpec {
                access: self.access,
                avx: cpu.avx(),
                crypto: cpu.crypto(),
                blocks: Vec::with_capacity(spec.blocks.len()),
                ..spec.clone()
            },
            weak: Vec::with_capacity(spec.blocks.len()),
            keys: Vec::with_capacity(spec.blocks.len()),
            pages: vec![(page, phys)],
        };
        for gb in &spec.blocks {
            if gb.rip & !0xfff != old_page {
                return None;
            }
            let rip = gb.rip.wrapping_add(moved);
            let b = cpu.block_at(rip).ok()?;
            let list = b.insns();
            let same = if moved == 0 {
                list.iter().zip(&gb.insns).all(|(x, y)| x.insn.eq_all_bits(&y.insn))
            } else {
                list.iter().zip(&gb.insns).all(|(x, y)| disk::same_relative(&x.insn, page, &y.insn, old_page))
            };
            if list.len() != gb.insns.len() || !same {
                return None;
            }
            g.spec.blocks.push(translate::GuestBlock { rip, insns: list.to_vec() });
            let last = list.last()?;
            if last.next_rip().wrapping_sub(page) > 4096 {
                let next = page.wrapping_add(0x1000);
                if !g.pages.iter().any(|p| p.0 == next) {
                    let p = cpu.code_phys_walk(next)?;
                    g.pages.push((next, p & !0xfff));
                }
            }
            g.weak.push(Rc::downgrade(&b));
            g.keys.push((rip, phys | (rip & 0xfff), mode));
        }
        Some(g)
    }

    /// The runs after which a new block first stops the interpreter.
    fn initial_heat(&self) -> u32 {
        initial_heat(&self.cfg)
    }

    /// Whether regions of code of `mode` are compiled position-independent:
    /// 64-bit code, where compiled code is kept by content or between runs.
    fn position_independent(&self, mode: u8) -> bool {
        (self.cfg.content_cache || self.cfg.disk_cache.is_some()) && mode == 64
    }

    /// The blocks of RIP's page that direct branches reach from RIP (with
    /// `all` false, only blocks that ran). An instruction that crosses
    /// into the next page is a block of its own, and that page is one of
    /// the region's too.
    fn gather(&self, cpu: &mut Cpu, rip: u64, mode: u8, all: bool) -> Gathered {
        let initial = self.initial_heat();
        let page = rip & !0xfff;
        let mut work = vec![rip];
        let mut seen = std::collections::HashSet::new();
        let mut g = Gathered {
            spec: RegionSpec {
                bits: u32::from(mode),
                blocks: Vec::new(),
                chain: self.cfg.chain,
                access: self.access,
                shared_memory: self.cfg.shared_memory,
                avx: cpu.avx(),
                crypto: cpu.crypto(),
                position_independent: self.position_independent(mode),
            },
            weak: Vec::new(),
            keys: Vec::new(),
            pages: Vec::new(),
        };
        let Some(phys) = cpu.code_phys_walk(rip).map(|p| p & !0xfff) else { return g };
        g.pages.push((page, phys));
        let mut insns = 0usize;
        // Blocks after an STI: the interpreter runs their first instruction
        // under the shadow, which does not count as a run, yet they run
        // whenever the STI does.
        let mut after_sti = Vec::new();
        while let Some(r) = work.pop() {
            if !seen.insert(r) || insns >= self.cfg.max_region_insns {
                continue;
            }
            // A block that another region already has (or will have) is
            // left to it: this region exits there.
            if !all && r != rip {
                let key = (r, phys | (r & 0xfff), mode);
                if self.map.contains_key(&key) || self.queued.contains_key(&key) {
                    continue;
                }
            }
            let Ok(b): Result<Rc<Block>, _> = cpu.block_at(r) else { continue };
            // Only code that ran: a block still at its first count never did
            // (padding after a HLT or a jump, cold error paths).
            if !all && r != rip && b.heat() == initial && !b.probed() && !after_sti.contains(&r) {
                continue;
            }
            let list = b.insns();
            let Some(last) = list.last() else { continue };
            if last.next_rip().wrapping_sub(page) > 4096 {
                // Only a lone instruction runs on into the next page,
                // whose physical page the region then holds too.
                if list.len() != 1 {
                    continue;
                }
                let next = page.wrapping_add(0x1000);
                if !g.pages.iter().any(|p| p.0 == next) {
                    let Some(p) = cpu.code_phys_walk(next) else { continue };
                    g.pages.push((next, p & !0xfff));
                }
            }
            insns += list.len();
            g.spec.blocks.push(GuestBlock { rip: r, insns: list.to_vec() });
            g.weak.push(Rc::downgrade(&b));
            g.keys.push((r, phys | (r & 0xfff), mode));
            let mut next = Vec::new();
            let i = &last.insn;
            match i.flow_control() {
                FlowControl::Next => {
                    if i.mnemonic() == iced_x86::Mnemonic::Sti {
                        after_sti.push(last.next_rip());
                    }
                    next.push(last.next_rip());
                }
                FlowControl::ConditionalBranch => {
                    if i.is_jcc_short_or_near() {
                        next.push(i.near_branch_target());
                    }
                    next.push(last.next_rip());
                }
                FlowControl::UnconditionalBranch if i.is_jmp_short_or_near() => next.push(i.near_branch_target()),
                FlowControl::Call => {
                    if i.is_call_near() {
                        next.push(i.near_branch_target());
                    }
                    next.push(last.next_rip());
                }
                _ => {}
            }
            // Depth first, the fall-through path last pushed first.
            for t in next.into_iter().rev() {
                if t & !0xfff == page && !seen.contains(&t) {
                    work.push(t);
                }
            }
        }
        g
    }

    /// Take invalidations and finished compiles (the run loop does this
    /// before each region it enters).
    pub fn poll(&mut self, cpu: &mut Cpu) {
        cpu.sync_code();
        if self.inval_flag.load(Ordering::Relaxed) && self.inval_flag.swap(false, Ordering::Acquire) {
            let list = std::mem::take(&mut *self.inval.lock());
            let mut dropped = false;
            for i in list {
                match i {
                    Invalidation::Page(p) => dropped |= self.invalidate_page(p & !0xfff),
                    Invalidation::All => self.flush(),
                }
            }
            if dropped {
                // Compiled exits may link to the dropped regions: retire
                // every link, once for the whole batch.
                self.links.fill(JumpSet::EMPTY);
            }
        }
        if let Some(c) = &mut self.compiler {
            if c.in_flight > 0 {
                let mut done = Vec::new();
                while let Some(d) = c.try_recv() {
                    done.push(d);
                }
                for d in done {
                    self.install(d);
                }
            }
        }
    }

    /// Drop the regions of `page`; whether it had any (the caller then
    /// empties the inline jump cache).
    fn invalidate_page(&mut self, page: u64) -> bool {
        self.stats.invalidated_pages += 1;
        *self.page_gen.entry(page).or_insert(0) += 1;
        let Some(ids) = self.by_page.remove(&page) else { return false };
        for id in ids {
            let r = &mut self.regions[id as usize];
            if r.live {
                r.live = false;
                self.stats.invalidated_regions += 1;
                for k in &r.keys {
                    if self.map.get(k).is_some_and(|(rid, _)| *rid == id) {
                        self.map.remove(k);
                    }
                    let slot = jump_slot(k.0);
                    if self.jump[slot].0 == *k {
                        self.jump[slot] = (NO_KEY, 0, 0);
                    }
                }
            }
        }
        true
    }

    /// Put a compiled region in the cache, unless its code changed since.
    fn install(&mut self, d: Done) {
        let Some(p) = self.pending.remove(&d.id) else { return };
        for k in &p.keys {
            if self.queued.get(k) == Some(&d.id) {
                self.queued.remove(k);
            }
        }
        self.stats.compile_nanos += d.nanos;
        let out = match d.result {
            Ok(o) => o,
            Err(e) => {
                self.stats.compile_failures += 1;
                tracing::warn!(target: "jit", "region at {:#x} not compiled: {e}", p.keys[0].0);
                return;
            }
        };
        let changed =
            p.pages.iter().zip(&p.page_gens).any(|(&(_, ph), &g)| self.page_gen.get(&ph).copied().unwrap_or(0) != g);
        if p.gen != self.gen || changed {
            self.stats.stale += 1;
            // Blocks that are still cached count their runs again, and
            // ask for a region of their current code once hot.
            let threshold = self.cfg.threshold.max(1);
            for b in p.blocks.iter().filter_map(Weak::upgrade) {
                b.set_heat(threshold);
            }
            return;
        }
        let f = match self.cache.install(&out.code) {
            Some(f) => f,
            None => {
                self.regions.clear();
                self.fns.clear();
                self.map.clear();
                self.jump.fill((NO_KEY, 0, 0));
                self.links.fill(JumpSet::EMPTY);
                self.by_page.clear();
                self.cache.flush();
                self.stats.cache_flushes += 1;
                match self.cache.install(&out.code) {
                    Some(f) => f,
                    None => {
                        self.stats.compile_failures += 1;
                        return;
                    }
                }
            }
        };
        self.stats.regions_compiled += 1;
        self.stats.shared_compiles += u64::from(d.shared);
        self.stats.code_bytes += out.code.len() as u64;
        if let Some(m) = &mut self.perf_map {
            use std::io::Write;
            let _ = writeln!(m, "{:x} {:x} guest_{:x}_{}", f as usize, out.code.len(), p.keys[0].0, p.keys.len());
            let _ = m.flush();
        }
        let id = self.regions.len() as u32;
        for (i, k) in p.keys.iter().enumerate() {
            // The newest region of a key is the one entered (an older one
            // may span a page that now maps elsewhere).
            self.map.insert(*k, (id, i as u32));
            let slot = jump_slot(k.0);
            if self.jump[slot].0 == *k {
                self.jump[slot] = (NO_KEY, 0, 0);
            }
        }
        for &(_, ph) in &p.pages {
            self.by_page.entry(ph).or_default().push(id);
        }
        self.regions.push(Region {
            _fallbacks: out.fallbacks,
            keys: p.keys,
            live: true,
            pages: p.pages,
            checked: None,
        });
        self.fns.push(f);
        // The interpreter stops before the region's blocks from now on.
        for b in p.blocks.iter().filter_map(Weak::upgrade) {
            b.set_heat(0);
        }
    }

    /// One line per measure, for `--stats`.
    pub fn report(&self, total: Duration, instructions: u64) -> Vec<String> {
        let s = &self.stats;
        let share = |part: u64, whole: u64| if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 };
        let compile = self.compile_time();
        let mut lines = vec![
            format!(
                "jit: {} regions compiled ({} of them copied from an earlier compile of the same code, at this page or another, by any vCPU; {} failed, {} stale), compile time {:.3} s ({:.1}% of the run, on the compiler thread)",
                s.regions_compiled,
                s.shared_compiles,
                s.compile_failures,
                s.stale,
                compile.as_secs_f64(),
                share(compile.as_nanos() as u64, total.as_nanos() as u64)
            ),
            format!(
                "jit: {} instructions in compiled code ({:.1}% of all), {} through interpreter handlers from compiled code",
                s.native_insns,
                share(s.native_insns, instructions),
                s.fallback_insns
            ),
            {
                let mut top: Vec<(u64, usize)> =
                    self.ctx.by_mnemonic.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (*n, i)).collect();
                top.sort_unstable_by(|a, b| b.cmp(a));
                let names: Vec<String> = top
                    .iter()
                    .take(12)
                    .map(|(n, i)| {
                        let m = iced_x86::Mnemonic::values().nth(*i).map(|m| format!("{m:?}")).unwrap_or_default();
                        format!("{} {:.1}%", m.to_lowercase(), share(*n, s.fallback_insns))
                    })
                    .collect();
                format!("jit: interpreter handlers most run from compiled code: {}", names.join(", "))
            },
            format!(
                "jit: code cache {} KiB of {} MiB, {} flushes when full, {} full flushes",
                self.cache.used() / 1024,
                self.cache.capacity() >> 20,
                s.cache_flushes,
                s.full_flushes
            ),
            format!(
                "jit: invalidations: {} code pages written ({} regions dropped); exits: {} region entries from the run loop, {} linked in compiled code, {} chained by the run loop, {} for faults, {} to the interpreter for one instruction",
                s.invalidated_pages, s.invalidated_regions, s.entries, s.linked, s.chained, s.fault_exits, s.step_exits
            ),
        ];
        if self.cfg.content_cache {
            lines.push(format!(
                "jit: {} regions took the code of the same instructions compiled at another page (all vCPUs); {} regions asked for early, after {} runs, for such code",
                self.shared.content_hits(),
                s.early_regions,
                self.initial_heat()
            ));
        }
        if let Some((dir, d)) = self.shared.disk_stats() {
            lines.push(format!(
                "jit: translation cache {}: {} regions loaded, {} compiled and stored, {} not found, {} entries refused, {} failed writes (all vCPUs)",
                dir.display(),
                d.loaded,
                d.stored,
                d.missed,
                d.rejected,
                d.write_errors
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests;
