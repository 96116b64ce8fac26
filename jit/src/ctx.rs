//! The context a compiled region runs with, and the helpers it calls.
//!
//! A region is a function of `(ctx: *mut JitCtx, entry: u32)` in the
//! tail-call convention ([`region_signature`]), entered from the host's
//! convention through a trampoline. It reads the
//! fields before `cpu` at fixed offsets; the helpers, plain `extern "C"`
//! functions whose addresses the code holds as constants, reach the CPU
//! through `cpu`. A helper that meets a fault does not deliver it: it
//! stores it in `fault` and says so in `status`, the region leaves with the
//! state as it was before the instruction, and the run loop delivers it.

use cranelift_codegen::ir::{types, AbiParam, Signature};
use cranelift_codegen::isa::CallConv;

use cpu::flags::{compute, FlagOp};
use cpu::state::{flags, LazyFlags};
use cpu::{Cpu, CpuState, Decoded, Exception, Executed};

/// How a region left, in [`JitCtx::exit`].
pub mod exit {
    /// At RIP, with the state written back.
    pub const NORMAL: u32 = 0;
    /// At the instruction at RIP, which the interpreter must run (one
    /// step) before more translated code: a case the region does not
    /// handle (a branch to a non-canonical address).
    pub const STEP: u32 = 1;
}

/// What a helper reports in [`JitCtx::status`] and returns.
pub mod status {
    /// Go on.
    pub const OK: u32 = 0;
    /// The access completed, but code after the instruction may have
    /// changed or the platform asked to stop: leave after the instruction.
    pub const LEAVE: u32 = 1;
    /// The access faulted ([`super::JitCtx::fault`]): leave at the
    /// instruction, with the state before it.
    pub const FAULT: u32 = 2;
}

/// A compiled region's view of the machine.
#[repr(C)]
pub struct JitCtx {
    /// The CPU's state.
    pub state: *mut CpuState,
    /// Entry 0 of the soft-TLB set of the current data privilege.
    pub tlb: *const u8,
    /// Instructions the region may run before it leaves at a back edge.
    /// Every exit stores what is left (less the instructions it ran
    /// natively; below zero it wraps), which is what the next region gets
    /// when the exit goes straight on, and how the run loop counts.
    pub budget: u64,
    /// A helper's status ([`status`]), then how the region left
    /// ([`exit`]): side by side, so that an exit reads both at once.
    pub status: u32,
    pub exit: u32,
    /// The jump cache that a region's exit probes to go straight on into
    /// the next region ([`JumpSet`]s, [`JUMP_SETS`] of them).
    pub jump: *const JumpSet,
    /// What a slot's `tag` must equal to be used now: the TLB generation,
    /// the CPL and the code mode ([`jump_tag`]).
    pub tag: u64,
    /// What a slot filled for kernel code on a global page
    /// ([`jump_tag_global`]) must equal to be used now.
    pub tag_global: u64,
    /// Exits that went straight on into the next region since the run
    /// loop entered one (for `--stats`).
    pub hops: u64,
    // ---- below: the helpers' side only ----
    pub cpu: *mut Cpu,
    /// Instructions run natively (the run loop adds what each entry ran).
    pub native: u64,
    /// A fault a helper met, for the run loop to deliver.
    pub fault: Option<Exception>,
    /// Instructions run through the interpreter's handlers.
    pub fallbacks: u64,
    /// Those instructions by mnemonic (`iced_x86::Mnemonic` as index).
    pub by_mnemonic: Vec<u64>,
    /// Where a helper leaves a second result ([`udiv128`]'s remainder).
    pub scratch: u64,
    /// A helper's result when compiled code called it through a
    /// register-saving trampoline ([`crate::compiler::compile_saving_call`]).
    pub result: u64,
}

/// The signature of every region: `(ctx, entry)` in the tail-call
/// convention, so that a region's exit can jump into the next region.
pub fn region_signature(ptr: types::Type) -> Signature {
    let mut sig = Signature::new(CallConv::Tail);
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I32));
    sig
}

/// Byte offsets of the fields compiled code reads and writes.
pub mod off {
    use super::JitCtx;
    use std::mem::offset_of;
    pub const STATE: i32 = offset_of!(JitCtx, state) as i32;
    pub const TLB: i32 = offset_of!(JitCtx, tlb) as i32;
    pub const BUDGET: i32 = offset_of!(JitCtx, budget) as i32;
    pub const STATUS: i32 = offset_of!(JitCtx, status) as i32;
    pub const EXIT: i32 = offset_of!(JitCtx, exit) as i32;
    pub const JUMP: i32 = offset_of!(JitCtx, jump) as i32;
    pub const TAG: i32 = offset_of!(JitCtx, tag) as i32;
    pub const TAG_GLOBAL: i32 = offset_of!(JitCtx, tag_global) as i32;
    pub const HOPS: i32 = offset_of!(JitCtx, hops) as i32;
    pub const SCRATCH: i32 = offset_of!(JitCtx, scratch) as i32;
    pub const RESULT: i32 = offset_of!(JitCtx, result) as i32;
    pub const SLOT_RIP: i32 = offset_of!(super::JumpSlot, rip) as i32;
    pub const SLOT_TAG: i32 = offset_of!(super::JumpSlot, tag) as i32;
    pub const SLOT_CODE: i32 = offset_of!(super::JumpSlot, code) as i32;
    pub const SLOT_ENTRY: i32 = offset_of!(super::JumpSlot, entry) as i32;
}

/// Sets of the jump cache (a power of two).
pub const JUMP_SETS: usize = 2048;
/// log2 of `size_of::<JumpSlot>()`.
pub const JUMP_SLOT_SHIFT: u32 = 5;
/// log2 of `size_of::<JumpSet>()`.
pub const JUMP_SET_SHIFT: u32 = JUMP_SLOT_SHIFT + 1;

/// One entry of the jump cache that compiled exits probe: the region entry
/// for guest RIP `rip`, valid while the context's tag equals `tag`. It is
/// keyed by the linear RIP alone: the tag holds the TLB generation, so any
/// change of translation (a flush, INVLPG, a CR3 load) retires every slot
/// at once, and the run loop empties the cache when regions are dropped.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug)]
pub struct JumpSlot {
    pub rip: u64,
    pub tag: u64,
    pub code: *const u8,
    pub entry: u32,
}

impl JumpSlot {
    /// A slot no RIP matches (RIP past any address).
    pub const EMPTY: JumpSlot = JumpSlot { rip: u64::MAX, tag: 0, code: std::ptr::null(), entry: 0 };
}

const _: () = assert!(std::mem::size_of::<JumpSlot>() == 1 << JUMP_SLOT_SHIFT);

/// A set of the jump cache: two slots in one cache line, the one filled
/// last first. Hot entries whose RIPs hash alike (a call and the return
/// after it, a loop and the function it calls) then both stay.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct JumpSet(pub [JumpSlot; 2]);

const _: () = assert!(std::mem::size_of::<JumpSet>() == 1 << JUMP_SET_SHIFT);

impl JumpSet {
    pub const EMPTY: JumpSet = JumpSet([JumpSlot::EMPTY; 2]);

    /// Fill the slot of `s.rip`: it becomes the first, and the other one
    /// the second (unless that was the same RIP, whose old slot goes).
    #[inline]
    pub fn fill(&mut self, s: JumpSlot) {
        if self.0[0].rip != s.rip {
            self.0[1] = self.0[0];
        }
        self.0[0] = s;
    }
}

/// The hash of `rip` that both caches of region entries index by (and
/// compiled exits compute the same way).
#[inline]
fn rip_hash(rip: u64) -> usize {
    (rip ^ (rip >> 12)) as usize
}

/// The jump cache's set for `rip`.
#[inline]
pub fn jump_set(rip: u64) -> usize {
    rip_hash(rip) & (JUMP_SETS - 1)
}

/// The slot for `rip` in the run loop's own cache of region entries, which
/// has [`JUMP_SETS`] × 2 slots.
#[inline]
pub fn jump_slot(rip: u64) -> usize {
    rip_hash(rip) & (2 * JUMP_SETS - 1)
}

/// The tag of jump-cache slots filled now: TLB generation `gen`, `cpl`
/// and code mode `mode` (16, 32 or 64).
#[inline]
pub fn jump_tag(gen: u64, cpl: u8, mode: u8) -> u64 {
    (gen << 16) | (u64::from(cpl) << 8) | u64::from(mode)
}

/// The tag of a slot filled now for code whose page a global translation
/// maps ([`mmu::Mmu::exec_global`]): the TLB's global generation instead,
/// which CR3 loads that keep global pages leave alone, so the slot
/// outlives an address-space switch. Bit 63 keeps the two kinds apart.
#[inline]
pub fn jump_tag_global(global_gen: u64, cpl: u8, mode: u8) -> u64 {
    jump_tag(global_gen, cpl, mode) | 1 << 63
}

impl JitCtx {
    pub fn new() -> Self {
        JitCtx {
            state: std::ptr::null_mut(),
            tlb: std::ptr::null(),
            budget: 0,
            status: 0,
            exit: 0,
            jump: std::ptr::null(),
            tag: 0,
            tag_global: 0,
            hops: 0,
            cpu: std::ptr::null_mut(),
            native: 0,
            fault: None,
            fallbacks: 0,
            by_mnemonic: vec![0; iced_x86::Mnemonic::values().len()],
            scratch: 0,
            result: 0,
        }
    }
}

impl Default for JitCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// The CPU behind a context.
///
/// # Safety
/// `ctx` is the context the run loop passed to the running region, with
/// `cpu` pointing at the CPU the loop lent it; no other reference to that
/// CPU is in use while the region runs.
unsafe fn cpu_of<'a>(ctx: *mut JitCtx) -> (&'a mut JitCtx, &'a mut Cpu) {
    // SAFETY: as the caller guarantees; the context and the CPU are
    // distinct objects.
    unsafe { (&mut *ctx, &mut *(*ctx).cpu) }
}

/// Read `size` bytes at `seg:off` for the instruction at `rip`.
///
/// # Safety
/// Called only by compiled regions, with the context they were given.
pub unsafe extern "C" fn load(ctx: *mut JitCtx, seg: u32, off: u64, size: u32, rip: u64) -> u64 {
    // SAFETY: see the function's contract.
    let (ctx, cpu) = unsafe { cpu_of(ctx) };
    cpu.begin_access(rip);
    match cpu.read_mem(seg as usize, off, size) {
        Ok(v) => {
            cpu.end_access();
            ctx.status = status::OK;
            v
        }
        Err(e) => {
            ctx.fault = Some(e);
            ctx.status = status::FAULT;
            0
        }
    }
}

/// Read the destination of a read-modify-write at `seg:off` (checked as
/// a write) for the instruction at `rip`.
///
/// # Safety
/// Called only by compiled regions, with the context they were given.
pub unsafe extern "C" fn load_rmw(ctx: *mut JitCtx, seg: u32, off: u64, size: u32, rip: u64) -> u64 {
    // SAFETY: see the function's contract.
    let (ctx, cpu) = unsafe { cpu_of(ctx) };
    cpu.begin_access(rip);
    match cpu.read_mem_rmw(seg as usize, off, size) {
        Ok(v) => {
            cpu.end_access();
            ctx.status = status::OK;
            v
        }
        Err(e) => {
            ctx.fault = Some(e);
            ctx.status = status::FAULT;
            0
        }
    }
}

/// Write the low `size` bytes of `value` at `seg:off` for the instruction
/// at `rip`; returns a [`status`].
///
/// # Safety
/// Called only by compiled regions, with the context they were given.
pub unsafe extern "C" fn store(ctx: *mut JitCtx, seg: u32, off: u64, size: u32, value: u64, rip: u64) -> u32 {
    // SAFETY: see the function's contract.
    let (ctx, cpu) = unsafe { cpu_of(ctx) };
    cpu.begin_access(rip);
    ctx.status = match cpu.write_mem(seg as usize, off, size, value) {
        Ok(()) if cpu.end_access() => status::LEAVE,
        Ok(()) => status::OK,
        Err(e) => {
            ctx.fault = Some(e);
            status::FAULT
        }
    };
    ctx.status
}

/// The flags bits that decide whether translated code may go on after an
/// instruction the interpreter ran: all but the arithmetic ones and DF.
const MODE_FLAGS: u64 = !(flags::ARITH | flags::DF);

/// Run one instruction through the interpreter's handler. The state in
/// memory is current (the region wrote it back, RIP included). Returns
/// [`status::OK`] if translated code may go on at the next instruction
/// with the state reloaded, else [`status::LEAVE`] (the state stands as it
/// is: a branch, an exception delivered, a mode change, HLT, an interrupt
/// shadow, a stop request or changed code).
///
/// # Safety
/// Called only by compiled regions, with the context they were given;
/// `d` points into the region's own table of instructions.
pub unsafe extern "C" fn fallback(ctx: *mut JitCtx, d: *const Decoded) -> u32 {
    // SAFETY: see the function's contract.
    let (ctx, cpu) = unsafe { cpu_of(ctx) };
    // SAFETY: the region's table lives as long as the region's code.
    let d = unsafe { &*d };
    run_one(ctx, cpu, d)
}

/// RDTSC: the counter, or the #GP it raises (in `fault`, with status
/// FAULT).
///
/// # Safety
/// Called only by compiled regions, with the context they were given.
pub unsafe extern "C" fn rdtsc(ctx: *mut JitCtx) -> u64 {
    // SAFETY: see the function's contract.
    let (ctx, cpu) = unsafe { cpu_of(ctx) };
    match cpu::ops::system::rdtsc_value(cpu) {
        Ok(t) => {
            ctx.status = status::OK;
            t
        }
        Err(e) => {
            ctx.fault = Some(e);
            ctx.status = status::FAULT;
            0
        }
    }
}

/// STI that set IF (the region stored it), when the next instruction runs
/// in the same region: whether an interrupt, an NMI or anything else wants
/// the run loop now. Then the one-instruction shadow applies: it is set,
/// the status says LEAVE, and the run loop runs the next instruction under
/// it before delivering. Otherwise the shadow has nothing to hold off and
/// is cleared, and the region goes on into the next instruction (an
/// interrupt that arrives later is taken at the region's next return, as
/// any is).
///
/// # Safety
/// Called only by compiled regions, with the context they were given.
pub unsafe extern "C" fn sti(ctx: *mut JitCtx) -> u64 {
    // SAFETY: see the function's contract.
    let (ctx, cpu) = unsafe { cpu_of(ctx) };
    sti_window(ctx, cpu, false)
}

/// [`sti`] when the next instruction is outside the region: the shadow
/// stays set, so that whatever runs the next instruction (a chained
/// region, or the run loop) runs it before any interrupt. A shadow that
/// outlives that instruction only delays the next interrupt by one.
///
/// # Safety
/// Called only by compiled regions, with the context they were given.
pub unsafe extern "C" fn sti_exit(ctx: *mut JitCtx) -> u64 {
    // SAFETY: see the function's contract.
    let (ctx, cpu) = unsafe { cpu_of(ctx) };
    sti_window(ctx, cpu, true)
}

fn sti_window(ctx: &mut JitCtx, cpu: &mut Cpu, keep: bool) -> u64 {
    cpu.state.interrupt_shadow = 0;
    if cpu.needs_boundary() {
        cpu.state.interrupt_shadow = 1;
        ctx.status = status::LEAVE;
        return 1;
    }
    cpu.state.interrupt_shadow = u8::from(keep);
    0
}

/// STAC or CLAC changed EFLAGS.AC at CPL 0 (the region stored it): data
/// accesses use the TLB set of the new privilege (SMAP applies with AC
/// clear) from the next region on. Returns 0.
///
/// # Safety
/// Called only by compiled regions, with the context they were given.
pub unsafe extern "C" fn data_tlb_changed(ctx: *mut JitCtx) -> u64 {
    // SAFETY: see the function's contract.
    let (ctx, cpu) = unsafe { cpu_of(ctx) };
    ctx.tlb = cpu.mmu.tlb_set(cpu.data_privilege());
    0
}

/// [`fallback`] of the decoded instruction `d`.
fn run_one(ctx: &mut JitCtx, cpu: &mut Cpu, d: &Decoded) -> u32 {
    ctx.fallbacks += 1;
    if let Some(n) = ctx.by_mnemonic.get_mut(d.insn.mnemonic() as usize) {
        *n += 1;
    }
    let mode = crate::native_mode(&cpu.state);
    let before = cpu.state.rflags & MODE_FLAGS;
    let (cpl, tlb_gen) = (cpu.state.cpl, cpu.mmu.generation);
    let next = d.next_rip();
    let s = match cpu.exec_decoded(d) {
        Executed::Done => {
            let st = &cpu.state;
            // A new privilege or translation (MOV CR3, INVLPG) also
            // leaves: the jump cache's tag and the TLB set in the context
            // were taken for the old ones.
            if st.rip != next
                || st.rflags & MODE_FLAGS != before
                || st.interrupt_shadow != 0
                || st.halted != 0
                || crate::native_mode(st) != mode
                || st.cpl != cpl
                || cpu.mmu.generation != tlb_gen
            {
                status::LEAVE
            } else {
                status::OK
            }
        }
        Executed::BlockEnd | Executed::Raised => status::LEAVE,
    };
    ctx.status = s;
    s
}

/// PCMPISTRI of the 16 bytes at `a` (xmm1, in the state) and at `b` (xmm2
/// in the state, or the host address of an m128 operand the region's TLB
/// test found in one RAM page) with control byte `imm`: the index for ECX
/// in the low 32 bits, the six arithmetic flags above.
///
/// # Safety
/// Called only by compiled regions: `a` and `b` each point to 16 readable
/// bytes (any alignment).
pub unsafe extern "C" fn pcmpistri(a: *const u8, b: *const u8, imm: u32) -> u64 {
    // SAFETY: see the function's contract; the reads are unaligned.
    let (x, y) = unsafe { (a.cast::<u128>().read_unaligned(), b.cast::<u128>().read_unaligned()) };
    let (idx, f) = host_pcmp::pcmpistri(x, y, imm as u8).unwrap_or_else(|| cpu::ops::sse::pcmpistri(x, y, imm as u8));
    u64::from(idx) | (f << 32)
}

/// PCMPISTRI on the host's own instruction, where the host is x86-64 with
/// SSE4.2: the same result as the interpreter's
/// [`cpu::ops::sse::pcmpistri`], which runs its comparison element by
/// element (a string routine's inner loop calls it once per 16 bytes).
#[cfg(target_arch = "x86_64")]
pub(crate) mod host_pcmp {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi16, _mm_cmpeq_epi8, _mm_cmpistrm, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_movemask_epi8,
        _mm_setzero_si128,
    };
    use std::sync::OnceLock;

    /// IntRes2 of the comparison that control bits 5:0 select (bit 6 only
    /// picks between the outputs, which the caller derives from the mask).
    #[target_feature(enable = "sse4.2")]
    fn int_res2<const I: i32>(a: __m128i, b: __m128i) -> u32 {
        (_mm_cvtsi128_si32(_mm_cmpistrm::<I>(a, b)) as u32) & 0xffff
    }

    /// The implicit length of `v`: the elements before its first zero one
    /// (bytes, or words with `words`), or all of them.
    #[target_feature(enable = "sse4.2")]
    fn implicit_len(v: __m128i, words: bool) -> usize {
        let z = _mm_setzero_si128();
        let eq = if words { _mm_cmpeq_epi16(v, z) } else { _mm_cmpeq_epi8(v, z) };
        let bytes = ((_mm_movemask_epi8(eq) as u32) | 1 << 16).trailing_zeros() as usize;
        if words {
            bytes / 2
        } else {
            bytes
        }
    }

    macro_rules! int_res2_of {
        ($ctl:expr, $a:expr, $b:expr; $($i:literal)*) => {
            match $ctl {
                $($i => int_res2::<$i>($a, $b),)*
                _ => unreachable!("control bits 5:0"),
            }
        };
    }

    /// The index and the six arithmetic flags, or `None` when the host
    /// lacks SSE4.2.
    pub(crate) fn pcmpistri(a: u128, b: u128, imm: u8) -> Option<(u32, u64)> {
        static SSE42: OnceLock<bool> = OnceLock::new();
        if !*SSE42.get_or_init(|| std::arch::is_x86_feature_detected!("sse4.2")) {
            return None;
        }
        // SAFETY: the host has SSE4.2 (checked above), which these
        // functions and the intrinsics in them need.
        Some(unsafe { run(a, b, imm) })
    }

    /// # Safety
    /// The host has SSE4.2.
    #[target_feature(enable = "sse4.2")]
    unsafe fn run(a: u128, b: u128, imm: u8) -> (u32, u64) {
        let (pa, pb) = (a.to_le_bytes(), b.to_le_bytes());
        // SAFETY: each pointer is to 16 bytes of a local array; the loads
        // are unaligned ones.
        let (va, vb) = unsafe { (_mm_loadu_si128(pa.as_ptr().cast()), _mm_loadu_si128(pb.as_ptr().cast())) };
        let words = imm & 1 != 0;
        let res = int_res2_of!(imm & 0x3f, va, vb;
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
            32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
        cpu::ops::sse::pcmpistri_outputs(res, implicit_len(va, words), implicit_len(vb, words), imm)
    }
}

/// Elsewhere the interpreter's comparison runs.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod host_pcmp {
    pub(crate) fn pcmpistri(_: u128, _: u128, _: u8) -> Option<(u32, u64)> {
        None
    }
}

/// DIV of 64 bits with a dividend of 128: `hi:lo / d`, the remainder
/// stored at `rem`.
///
/// # Safety
/// Called only by compiled regions: `d` is not zero and `hi < d` (the
/// quotient fits 64 bits), and `rem` points to the context's scratch word.
pub unsafe extern "C" fn udiv128(hi: u64, lo: u64, d: u64, rem: *mut u64) -> u64 {
    let (q, r) = div_128_by_64(hi, lo, d);
    // SAFETY: see the function's contract.
    unsafe { rem.write(r) };
    q
}

/// `hi:lo / d` and its remainder, for `hi < d` (the quotient fits 64 bits).
/// The host's own DIV on x86-64: the general 128-bit division of the
/// compiler's runtime takes several times as long, and glibc's printf
/// divides this way for every number it prints.
#[cfg(target_arch = "x86_64")]
fn div_128_by_64(hi: u64, lo: u64, d: u64) -> (u64, u64) {
    if hi >= d {
        // Outside the contract (DIV would raise #DE): the saturated values.
        return (u64::MAX, u64::MAX);
    }
    let (q, r): (u64, u64);
    // SAFETY: DIV with `hi < d` neither faults nor touches memory; it
    // writes RAX and RDX, which are its outputs.
    unsafe {
        std::arch::asm!("div {d}", d = in(reg) d, inout("rax") lo => q, inout("rdx") hi => r,
            options(pure, nomem, nostack));
    }
    (q, r)
}

/// `hi:lo / d` and its remainder, for `hi < d` (the quotient fits 64 bits).
#[cfg(not(target_arch = "x86_64"))]
fn div_128_by_64(hi: u64, lo: u64, d: u64) -> (u64, u64) {
    let n = (u128::from(hi) << 64) | u128::from(lo);
    let d = u128::from(d.max(1));
    (u64::try_from(n / d).unwrap_or(u64::MAX), u64::try_from(n % d).unwrap_or(u64::MAX))
}

/// REP MOVS through host pointers: `n` bytes from `src` to `dst`, as
/// `memmove` (the region sent a destination just above the source, which
/// repeats a pattern, to the interpreter).
///
/// # Safety
/// Called only by compiled regions: `src` and `dst` point to `n` bytes of
/// guest RAM each, within one page each, found through the TLB (the
/// destination writable and not a code page).
pub unsafe extern "C" fn host_copy(dst: *mut u8, src: *const u8, n: u64) {
    // SAFETY: see the function's contract; the ranges may overlap.
    unsafe { std::ptr::copy(src, dst, n as usize) };
}

/// REP STOS through a host pointer: `count` elements of `size` bytes (1
/// or 8) of `value` at `dst`.
///
/// # Safety
/// Called only by compiled regions: `dst` points to `count * size` bytes
/// of guest RAM within one page, found through the TLB (writable and not
/// a code page).
pub unsafe extern "C" fn host_fill(dst: *mut u8, value: u64, count: u64, size: u64) {
    let n = (count * size) as usize;
    // SAFETY: see the function's contract.
    let out = unsafe { std::slice::from_raw_parts_mut(dst, n) };
    if size == 1 {
        out.fill(value as u8);
    } else {
        for c in out.chunks_exact_mut(8) {
            c.copy_from_slice(&value.to_le_bytes());
        }
    }
}

/// The six arithmetic flags (RFLAGS layout) of the state: from its lazy
/// record, or from RFLAGS when the record is empty. Reads only.
///
/// # Safety
/// Called only by compiled regions, with their context's state pointer.
pub unsafe extern "C" fn state_flags(state: *const CpuState) -> u64 {
    // SAFETY: the region passes the state it runs on, which is alive and
    // not written while this reads it.
    let s = unsafe { &*state };
    let l = &s.lazy;
    if l.op == FlagOp::None as u32 {
        return s.rflags & flags::ARITH;
    }
    // A record has a valid size; keep `compute` away from a shift by 64
    // whatever the state holds.
    let size = match l.size {
        1 | 2 | 4 | 8 => l.size,
        _ => 8,
    };
    compute(&LazyFlags { size, ..*l })
}

#[cfg(test)]
mod tests {
    use super::div_128_by_64;

    #[test]
    fn a_128_bit_dividend_divides_as_u128_arithmetic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cases = vec![(0, 0, 1), (0, u64::MAX, 1), (u64::MAX - 1, u64::MAX, u64::MAX), (1, 0, 2), (9, 7, 10)];
        for _ in 0..10_000 {
            let d = next() >> (next() % 64);
            let d = d.max(1);
            cases.push((next() % d, next(), d));
        }
        for (hi, lo, d) in cases {
            let n = (u128::from(hi) << 64) | u128::from(lo);
            let want = ((n / u128::from(d)) as u64, (n % u128::from(d)) as u64);
            assert_eq!(div_128_by_64(hi, lo, d), want, "{hi:#x}:{lo:#x} / {d:#x}");
        }
    }
}
