//! The context a compiled region runs with, and the helpers it calls.
//!
//! A region is a function of `(ctx: *mut JitCtx, entry: u32)` in the
//! tail-call convention ([`region_signature`]), entered from the host's
//! convention through a trampoline. It reads the fields before `cpu` at
//! fixed offsets. The helpers are plain `extern "C"` functions: the code
//! holds none of their addresses as a constant but loads each from a
//! relocation that [`crate::reloc::link`] fills in before the region is
//! installed. Those that need the machine reach the CPU through `cpu`; the
//! pure ones ([`crc32c`], [`clmul`], [`pcmpistri`], [`pcmpestri`],
//! [`udiv128`], [`idiv128`]) take their operands and return the result,
//! with no state written back. A helper that meets a fault does not
//! deliver it: it stores it in `fault` and says so in `status`, the region
//! leaves with the state as it was before the instruction, and the run
//! loop delivers it.

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
        __m128i, _mm_cmpeq_epi16, _mm_cmpeq_epi8, _mm_cmpestrm, _mm_cmpistrm, _mm_cvtsi128_si32, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_setzero_si128,
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

    /// IntRes2 of PCMPESTRM with the explicit lengths `la` and `lb` (already
    /// saturated to the element count).
    #[target_feature(enable = "sse4.2")]
    fn int_res2_explicit<const I: i32>(a: __m128i, la: i32, b: __m128i, lb: i32) -> u32 {
        (_mm_cvtsi128_si32(_mm_cmpestrm::<I>(a, la, b, lb)) as u32) & 0xffff
    }

    /// `$f::<I>($args)` for the control bits 5:0 in `$ctl` (the intrinsics
    /// take the control byte as a constant).
    macro_rules! int_res2_of {
        ($f:ident, $ctl:expr, $args:tt; $($i:literal)*) => {
            match $ctl {
                $($i => $f::<$i> $args,)*
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
        let res = int_res2_of!(int_res2, imm & 0x3f, (va, vb);
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
            32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
        cpu::ops::sse::pcmpistri_outputs(res, implicit_len(va, words), implicit_len(vb, words), imm)
    }

    /// PCMPESTRI's index and six arithmetic flags for the lengths `len1`
    /// and `len2` (saturated to the element count, as the interpreter's
    /// `explicit_len` gives them), or `None` when the host lacks SSE4.2.
    pub(crate) fn pcmpestri(a: u128, b: u128, len1: usize, len2: usize, imm: u8) -> Option<(u32, u64)> {
        static SSE42: OnceLock<bool> = OnceLock::new();
        if !*SSE42.get_or_init(|| std::arch::is_x86_feature_detected!("sse4.2")) {
            return None;
        }
        // SAFETY: the host has SSE4.2 (checked above), which these
        // functions and the intrinsics in them need.
        Some(unsafe { run_explicit(a, b, len1, len2, imm) })
    }

    /// # Safety
    /// The host has SSE4.2.
    #[target_feature(enable = "sse4.2")]
    unsafe fn run_explicit(a: u128, b: u128, len1: usize, len2: usize, imm: u8) -> (u32, u64) {
        let (pa, pb) = (a.to_le_bytes(), b.to_le_bytes());
        // SAFETY: each pointer is to 16 bytes of a local array; the loads
        // are unaligned ones.
        let (va, vb) = unsafe { (_mm_loadu_si128(pa.as_ptr().cast()), _mm_loadu_si128(pb.as_ptr().cast())) };
        let (la, lb) = (len1 as i32, len2 as i32);
        let res = int_res2_of!(int_res2_explicit, imm & 0x3f, (va, la, vb, lb);
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
            32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
        cpu::ops::sse::pcmpistri_outputs(res, len1, len2, imm)
    }
}

/// Elsewhere the interpreter's comparison runs.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod host_pcmp {
    pub(crate) fn pcmpistri(_: u128, _: u128, _: u8) -> Option<(u32, u64)> {
        None
    }

    pub(crate) fn pcmpestri(_: u128, _: u128, _: usize, _: usize, _: u8) -> Option<(u32, u64)> {
        None
    }
}

/// What [`pcmpestri`] returns when it cannot give the result: the region
/// takes the slow path.
pub const PCMPESTRI_SLOW: u64 = 1 << 63;

/// PCMPESTRI of the 16 bytes at `a` (xmm1, in the state) and at `b` (xmm2
/// in the state, or the host address of an m128 operand the region's TLB
/// test found in one RAM page) with control byte `imm` (bits 7:0) and the
/// explicit lengths `la` and `lb` (RAX and RDX; EAX and EDX, signed,
/// unless bit 8 of `imm` is set for the REX.W form): the index for ECX in
/// the low 32 bits, the six arithmetic flags above, as the interpreter
/// gives them. On an x86-64 host with SSE4.2 the host's PCMPESTRM gives
/// the result mask; elsewhere [`pcmpestri_soft`], which may return
/// [`PCMPESTRI_SLOW`] instead.
///
/// # Safety
/// Called only by compiled regions: `a` and `b` each point to 16 readable
/// bytes (any alignment).
pub unsafe extern "C" fn pcmpestri(a: *const u8, b: *const u8, imm: u32, la: u64, lb: u64) -> u64 {
    // SAFETY: see the function's contract; the reads are unaligned.
    let (x, y) = unsafe { (a.cast::<u128>().read_unaligned(), b.cast::<u128>().read_unaligned()) };
    let wide = imm & 0x100 != 0;
    let imm = imm as u8;
    let count = if imm & 1 != 0 { 8 } else { 16 };
    let (len1, len2) = (explicit_len(la, wide, count), explicit_len(lb, wide, count));
    match host_pcmp::pcmpestri(x, y, len1, len2, imm).or_else(|| pcmpestri_soft(x, y, len1, len2, imm)) {
        Some((idx, f)) => u64::from(idx) | (f << 32),
        None => PCMPESTRI_SLOW,
    }
}

/// The number of valid elements an explicit length gives, as the
/// interpreter counts them: the absolute value of the register (32 bits,
/// or 64 with REX.W), at most `count`.
fn explicit_len(v: u64, wide: bool, count: usize) -> usize {
    let abs = if wide { (v as i64).unsigned_abs() } else { u64::from((v as i32).unsigned_abs()) };
    abs.min(count as u64) as usize
}

/// PCMPESTRI through the interpreter's PCMPISTRI
/// ([`cpu::ops::sse::pcmpistri`]), where no element within a length is
/// zero: then the operands with every element past their lengths zeroed
/// have those lengths as their implicit ones, and the compare reads no
/// element past a length. `None` otherwise.
pub fn pcmpestri_soft(a: u128, b: u128, len1: usize, len2: usize, imm: u8) -> Option<(u32, u64)> {
    let w = if imm & 1 != 0 { 2 } else { 1 };
    let cut = |v: u128, len: usize| -> Option<u128> {
        let bits = len * w * 8;
        let valid = if bits >= 128 { v } else { v & ((1u128 << bits) - 1) };
        let zero_within = (0..len).any(|i| (valid >> (i * w * 8)) & ((1u128 << (w * 8)) - 1) == 0);
        (!zero_within).then_some(valid)
    };
    Some(cpu::ops::sse::pcmpistri(cut(a, len1)?, cut(b, len2)?, imm))
}

/// CRC32 (SSE4.2): the CRC-32C (Castagnoli, reflected polynomial
/// 0x82F63B78) state in the low 32 bits of `acc` with the low `bytes` bytes
/// of `value` (1, 2, 4 or 8) folded in, the first byte the lowest, with no
/// pre- or post-inversion, as the instruction does; zero-extended. A pure
/// function of its arguments: on an x86-64 host with SSE4.2 the host's
/// CRC32, elsewhere [`crc32c_soft`], which gives the same values.
pub extern "C" fn crc32c(acc: u64, value: u64, bytes: u32) -> u64 {
    let crc = acc as u32;
    u64::from(host_crc::crc32c(crc, value, bytes).unwrap_or_else(|| crc32c_soft(crc, value, bytes)))
}

/// The tables of [`crc32c_soft`]: `CRC32C_SLICES[0]` is the byte-at-a-time
/// table, and `CRC32C_SLICES[k][i]` the state of byte `i` after `k` more
/// zero bytes.
const CRC32C_SLICES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    t[0] = cpu::ops::sse::CRC32C;
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
};

/// [`crc32c`] in software, the bytes at once (slicing by up to eight):
/// each byte of `crc ^ value` picks the state it leaves after the bytes
/// that follow it, and the states add up (the CRC is linear over GF(2)).
pub fn crc32c_soft(crc: u32, value: u64, bytes: u32) -> u32 {
    let n = bytes.min(8) as usize;
    let x = u64::from(crc) ^ value;
    // The state's bytes past the data's shift out unchanged.
    let mut r = if n >= 4 { 0 } else { crc >> (8 * n) };
    for j in 0..n {
        r ^= CRC32C_SLICES[n - 1 - j][((x >> (8 * j)) & 0xff) as usize];
    }
    r
}

/// The host's CRC32, where the host is x86-64 with SSE4.2.
#[cfg(target_arch = "x86_64")]
pub(crate) mod host_crc {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    use std::sync::OnceLock;

    /// [`super::crc32c`] of 1, 2, 4 or 8 bytes on the host's instruction,
    /// or `None` when the host lacks SSE4.2 (or for another size).
    pub(crate) fn crc32c(crc: u32, value: u64, bytes: u32) -> Option<u32> {
        static SSE42: OnceLock<bool> = OnceLock::new();
        if !*SSE42.get_or_init(|| std::arch::is_x86_feature_detected!("sse4.2")) {
            return None;
        }
        // SAFETY: the host has SSE4.2 (checked above), which the function
        // and the intrinsics in it need.
        unsafe { run(crc, value, bytes) }
    }

    #[target_feature(enable = "sse4.2")]
    fn run(crc: u32, value: u64, bytes: u32) -> Option<u32> {
        Some(match bytes {
            1 => _mm_crc32_u8(crc, value as u8),
            2 => _mm_crc32_u16(crc, value as u16),
            4 => _mm_crc32_u32(crc, value as u32),
            8 => _mm_crc32_u64(u64::from(crc), value) as u32,
            _ => return None,
        })
    }
}

/// Elsewhere the software CRC runs.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod host_crc {
    pub(crate) fn crc32c(_: u32, _: u64, _: u32) -> Option<u32> {
        None
    }
}

/// PCLMULQDQ's multiplication: the carry-less product of `a` and `b`
/// (64 × 64 → 128 bits), its low quadword returned and its high one
/// stored at `hi`. On an x86-64 host with PCLMULQDQ the host's
/// instruction, elsewhere [`clmul_soft`], which gives the same values.
///
/// # Safety
/// Called only by compiled regions: `hi` points to the context's scratch
/// word.
pub unsafe extern "C" fn clmul(a: u64, b: u64, hi: *mut u64) -> u64 {
    let p = host_clmul::clmul(a, b).unwrap_or_else(|| clmul_soft(a, b));
    // SAFETY: see the function's contract.
    unsafe { hi.write((p >> 64) as u64) };
    p as u64
}

/// The carry-less product of `a` and `b` in software, four bits of `b` at
/// a time: the products of `a` with every polynomial of four bits, then
/// one of them per nibble of `b`, shifted into place.
pub fn clmul_soft(a: u64, b: u64) -> u128 {
    let mut t = [0u128; 16];
    for k in 1..16 {
        t[k] = if k & 1 != 0 { t[k ^ 1] ^ u128::from(a) } else { t[k >> 1] << 1 };
    }
    let mut r = 0u128;
    for i in 0..16 {
        r ^= t[((b >> (4 * i)) & 15) as usize] << (4 * i);
    }
    r
}

/// The host's PCLMULQDQ, where the host is x86-64 with it.
#[cfg(target_arch = "x86_64")]
pub(crate) mod host_clmul {
    use std::arch::x86_64::{_mm_clmulepi64_si128, _mm_cvtsi128_si64, _mm_cvtsi64_si128, _mm_unpackhi_epi64};
    use std::sync::OnceLock;

    /// The carry-less product of `a` and `b`, or `None` when the host lacks
    /// PCLMULQDQ.
    pub(crate) fn clmul(a: u64, b: u64) -> Option<u128> {
        static PCLMUL: OnceLock<bool> = OnceLock::new();
        if !*PCLMUL.get_or_init(|| std::arch::is_x86_feature_detected!("pclmulqdq")) {
            return None;
        }
        // SAFETY: the host has PCLMULQDQ (checked above; SSE2 is part of
        // x86-64), which the function and the intrinsics in it need.
        Some(unsafe { run(a, b) })
    }

    #[target_feature(enable = "pclmulqdq")]
    fn run(a: u64, b: u64) -> u128 {
        let p = _mm_clmulepi64_si128::<0x00>(_mm_cvtsi64_si128(a as i64), _mm_cvtsi64_si128(b as i64));
        let lo = _mm_cvtsi128_si64(p) as u64;
        let hi = _mm_cvtsi128_si64(_mm_unpackhi_epi64(p, p)) as u64;
        u128::from(lo) | u128::from(hi) << 64
    }
}

/// Elsewhere the software product runs.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod host_clmul {
    pub(crate) fn clmul(_: u64, _: u64) -> Option<u128> {
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

/// IDIV of 64 bits with a dividend of 128: `hi:lo / d`, signed and
/// truncated, the remainder (with the dividend's sign) stored at `rem`.
/// Where IDIV raises #DE (`d` zero, or a quotient outside 64 bits) the
/// remainder stored is `i64::MIN`, which no division leaves (its magnitude
/// is below the divisor's, at most 2^63), and the quotient is 0: the region
/// then takes the slow path.
///
/// # Safety
/// Called only by compiled regions: `rem` points to the context's scratch
/// word.
pub unsafe extern "C" fn idiv128(hi: u64, lo: u64, d: u64, rem: *mut u64) -> u64 {
    let (q, r) = idiv_128_by_64(hi, lo, d).unwrap_or((0, i64::MIN as u64));
    // SAFETY: see the function's contract.
    unsafe { rem.write(r) };
    q
}

/// `hi:lo / d` and its remainder as IDIV of 64 bits gives them, or `None`
/// for its #DE: the magnitudes divide as DIV does ([`div_128_by_64`]), and
/// the signs are put back.
pub(crate) fn idiv_128_by_64(hi: u64, lo: u64, d: u64) -> Option<(u64, u64)> {
    let n = (u128::from(hi) << 64) | u128::from(lo);
    let neg_n = (hi as i64) < 0;
    let neg_d = (d as i64) < 0;
    let n_abs = if neg_n { n.wrapping_neg() } else { n };
    let d_abs = (d as i64).unsigned_abs();
    // A zero divisor, or a quotient of 2^64 or more.
    if d_abs == 0 || (n_abs >> 64) as u64 >= d_abs {
        return None;
    }
    let (q_abs, r_abs) = div_128_by_64((n_abs >> 64) as u64, n_abs as u64, d_abs);
    let q = if neg_n != neg_d { (q_abs as i128).wrapping_neg() } else { q_abs as i128 };
    let q = i64::try_from(q).ok()?;
    let r = if neg_n { r_abs.wrapping_neg() } else { r_abs };
    Some((q as u64, r))
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
    use super::{clmul, clmul_soft, crc32c, crc32c_soft, div_128_by_64, host_clmul, host_crc, idiv128, idiv_128_by_64};

    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// The software CRC-32C gives the interpreter's value and, where the
    /// host has SSE4.2, the host's, for every size on random and edge
    /// values (bits above the size ignored); the helper takes the state
    /// from the low 32 bits and zero-extends.
    #[test]
    fn software_crc32c_matches_the_host_and_the_interpreter() {
        let mut crc = !0u32;
        for &b in b"123456789" {
            crc = crc32c_soft(crc, u64::from(b), 1);
        }
        assert_eq!(!crc, 0xe306_9283, "the CRC-32C check value");
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let edges = [0u64, 1, 0x80, 0xff, 0xffff_ffff, 0x8000_0000_0000_0000, u64::MAX];
        let mut cases: Vec<(u32, u64)> = Vec::new();
        for &c in &edges {
            for &v in &edges {
                cases.push((c as u32, v));
            }
        }
        for _ in 0..50_000 {
            cases.push((next() as u32, next()));
        }
        let mut on_host = 0;
        for (crc, v) in cases {
            for n in [1, 2, 4, 8] {
                let soft = crc32c_soft(crc, v, n);
                assert_eq!(soft, cpu::ops::sse::crc32c(crc, v, n), "crc {crc:#x} value {v:#x} bytes {n}");
                if let Some(host) = host_crc::crc32c(crc, v, n) {
                    assert_eq!(host, soft, "host: crc {crc:#x} value {v:#x} bytes {n}");
                    on_host += 1;
                }
                assert_eq!(crc32c(0xdead_beef_0000_0000 | u64::from(crc), v, n), u64::from(soft));
            }
        }
        if on_host == 0 {
            println!("the host has no CRC32: software alone checked");
        }
    }

    /// The carry-less product of a bit at a time.
    fn clmul_bits(a: u64, b: u64) -> u128 {
        (0..64).filter(|i| b >> i & 1 != 0).fold(0, |r, i| r ^ u128::from(a) << i)
    }

    /// The software carry-less product gives the plain one's and, where
    /// the host has PCLMULQDQ, the host's; the helper returns its low half
    /// and stores the high one.
    #[test]
    fn software_carry_less_products_match_the_host() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let edges = [0u64, 1, 2, 3, 0x8000_0000_0000_0000, 0xffff_ffff, u64::MAX, 0x5555_5555_5555_5555];
        let mut cases: Vec<(u64, u64)> = Vec::new();
        for &a in &edges {
            for &b in &edges {
                cases.push((a, b));
            }
        }
        for _ in 0..50_000 {
            cases.push((next(), next() >> (next() % 64)));
        }
        let mut on_host = 0;
        for (a, b) in cases {
            let soft = clmul_soft(a, b);
            assert_eq!(soft, clmul_bits(a, b), "{a:#x} * {b:#x}");
            assert_eq!(clmul_soft(b, a), soft, "commutes");
            if let Some(host) = host_clmul::clmul(a, b) {
                assert_eq!(host, soft, "host: {a:#x} * {b:#x}");
                on_host += 1;
            }
            let mut hi = 0u64;
            // SAFETY: `hi` is a local word.
            let lo = unsafe { clmul(a, b, &mut hi) };
            assert_eq!(u128::from(lo) | u128::from(hi) << 64, soft);
        }
        if on_host == 0 {
            println!("the host has no PCLMULQDQ: software alone checked");
        }
    }

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

    /// The signed 128-by-64 division gives i128 arithmetic's quotient and
    /// remainder where the quotient fits 64 bits, and #DE (`None`, and the
    /// helper's remainder of -2^63) for a zero divisor and every quotient
    /// that does not, -2^63 itself fitting.
    #[test]
    fn a_signed_128_bit_dividend_divides_as_i128_arithmetic() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let min = i64::MIN as u64;
        let mut cases: Vec<(u64, u64, u64)> = vec![
            (0, 0, 0),
            (u64::MAX, 0, 0),
            (u64::MAX, min, u64::MAX),
            (u64::MAX, 0, 2),
            (1, 0, u64::MAX - 1),
            (u64::MAX, 0, u64::MAX - 1),
            (1, 0, 2),
            (min, 0, u64::MAX),
            (min, 0, min),
            (0x3fff_ffff_ffff_ffff, u64::MAX, min),
            (0xc000_0000_0000_0000, 0, min),
            (u64::MAX, 1, 1),
        ];
        for _ in 0..50_000 {
            let d = next() >> (next() % 64);
            let d = if next().is_multiple_of(2) { d.wrapping_neg() } else { d };
            // High halves around the quotient's limit, and any.
            let hi = match next() % 3 {
                0 => next() % (d.max(1) >> 1).max(1),
                1 => (next() % (d.max(1) >> 1).max(1)).wrapping_neg(),
                _ => next(),
            };
            cases.push((hi, next(), d));
        }
        let (mut ok, mut de) = (0, 0);
        for (hi, lo, d) in cases {
            let n = ((u128::from(hi) << 64) | u128::from(lo)) as i128;
            let d_s = i128::from(d as i64);
            let want = n
                .checked_div(d_s)
                .filter(|q| i64::try_from(*q).is_ok())
                .map(|q| (q as i64 as u64, (n % d_s) as i64 as u64));
            assert_eq!(idiv_128_by_64(hi, lo, d), want, "{hi:#x}:{lo:#x} / {d:#x}");
            let mut rem = 0;
            // SAFETY: `rem` is a local word.
            let q = unsafe { idiv128(hi, lo, d, &mut rem) };
            assert_eq!((q, rem), want.unwrap_or((0, min)));
            if want.is_some() {
                ok += 1;
            } else {
                de += 1;
            }
        }
        assert!(ok > 10_000 && de > 10_000, "{ok} divisions, {de} #DE");
    }
}
