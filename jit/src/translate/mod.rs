//! Translation of a region (guest blocks of one code page) into one
//! Cranelift function.
//!
//! The function takes `(ctx, entry)` in the tail-call convention
//! ([`crate::ctx::region_signature`]; the run loop enters it through a
//! trampoline from the host's convention): it loads the guest
//! registers it uses into SSA variables, jumps to the guest block `entry`,
//! and runs until a branch leaves the region, the budget runs out at a back
//! edge, or an instruction asks it to leave. Exits write back the registers
//! it changed, the lazy flags and RIP.
//!
//! - Integer moves, ALU operations, shifts by an immediate, IMUL, stack
//!   operations, calls, returns and branches are translated, and so are the
//!   SSE and AVX forms string and memory functions use, and CRC32,
//!   PCLMULQDQ and PCMPESTRI (pure helpers of [`crate::ctx`]). Everything else
//!   is a call of the interpreter's handler for that one instruction
//!   ([`crate::ctx::fallback`]), with the state written back before and
//!   read again after.
//! - Memory accesses test the soft TLB inline (one compare on the entry's
//!   tag, then the host address); a miss, MMIO, a store to a code page or a
//!   segment that is not flat calls a helper, which may fault, or (a store
//!   or read-modify-write that read nothing before, a vector operand) runs
//!   the instruction through the interpreter's handler and leaves after
//!   it. A fault leaves
//!   the region at the instruction with the state from before it, and the run
//!   loop delivers the exception: faults are precise.
//! - With other host threads on guest memory, guest atomics (LOCK
//!   read-modify-writes, XCHG with memory) on a naturally aligned operand
//!   that the TLB finds writable in RAM without code are one host atomic
//!   (Cranelift's `atomic_rmw` or `atomic_cas`), and MFENCE a host fence;
//!   any other operand runs through the interpreter's locked handler.
//! - Flags stay lazy, as the interpreter keeps them (`LazyFlags`): a
//!   flag-setting instruction defines the record's variables; a condition
//!   whose producer is known in the same guest block is computed from them
//!   directly, otherwise by a pure helper.
//!
//! This module plans a region and drives its translation. The rest is
//! split by concern: `classify` decides each instruction's form (or the
//! interpreter's handler) from the decoded instruction alone; `state` holds
//! the function under construction, the guest registers and the ways out of
//! the region; `mem` emits memory accesses; `flags` keeps the lazy flags;
//! `emit` emits each form, in a module per instruction family.

mod classify;
mod emit;
mod flags;
mod mem;
mod state;

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, Block, InstBuilder, Signature, Type, Value};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::FunctionBuilder;

use cpu::Decoded;

use crate::ctx::off;
use classify::{classify, classify_atomic, writes_memory, FlagsEffect, Form};
use flags::Known;
use state::{mem_flags, Tx, RIP_OFF};

/// A guest block of a region.
#[derive(Clone)]
pub struct GuestBlock {
    pub rip: u64,
    pub insns: Vec<Decoded>,
}

/// What a region is made of.
#[derive(Clone)]
pub struct RegionSpec {
    /// Code size: 64, or 32 with flat data segments.
    pub bits: u32,
    /// The guest blocks; each is an entry.
    pub blocks: Vec<GuestBlock>,
    /// Plain exits probe the jump cache and go straight on into the next
    /// region (a tail call) instead of returning to the run loop.
    pub chain: bool,
    /// Where a memory access's slow path calls.
    pub access: AccessCalls,
    /// Other host threads share guest memory ([`crate::Config::shared_memory`]):
    /// guest atomics become host atomics (or the interpreter's locked
    /// handler, where they cannot) and MFENCE a host fence.
    pub shared_memory: bool,
    /// The CPU model offers AVX ([`cpu::Cpu::avx`]): the VEX vector forms
    /// are translated, testing the state that enables them inline (CR4,
    /// XCR0, CR0.TS). Without it they go to the interpreter, which raises
    /// #UD.
    pub avx: bool,
    /// The CPU model offers AES-NI and PCLMULQDQ ([`cpu::Cpu::crypto`]):
    /// PCLMULQDQ (and VPCLMULQDQ, with AVX) is translated. Without it the
    /// interpreter raises #UD.
    pub crypto: bool,
    /// 64-bit code whose guest addresses (exit RIPs, return addresses,
    /// RIP-relative operands, the RIPs handed to helpers) are relocations
    /// against the region's page ([`RegionSpec::relative_base`]) rather than
    /// constants: the code serves the same instructions wherever the guest
    /// maps them (a kernel placed by KASLR, a position-independent program),
    /// which the persistent translation cache keys on ([`crate::disk`]).
    pub position_independent: bool,
}

impl RegionSpec {
    /// The linear page of the region's first block: what its
    /// position-independent code's guest addresses are relative to.
    pub fn guest_base(&self) -> u64 {
        self.blocks.first().map_or(0, |g| g.rip & !0xfff)
    }

    /// The page position-independent code's guest addresses are relative
    /// to; `None` for code whose guest addresses are constants.
    pub fn relative_base(&self) -> Option<u64> {
        (self.position_independent && self.bits == 64).then(|| self.guest_base())
    }
}

/// Whether `insn` is a guest atomic (a LOCK read-modify-write, or XCHG
/// with memory, locked with or without the prefix) or MFENCE: what must be
/// a host atomic or fence when vCPUs run on several host threads.
pub(crate) fn is_guest_atomic(insn: &iced_x86::Instruction) -> bool {
    use iced_x86::{Mnemonic, OpKind};
    insn.has_lock_prefix()
        || insn.mnemonic() == Mnemonic::Mfence
        || (insn.mnemonic() == Mnemonic::Xchg
            && (insn.op0_kind() == OpKind::Memory || insn.op1_kind() == OpKind::Memory))
}

/// The entry points of the memory helpers ([`ctx::load`],
/// [`ctx::load_rmw`], [`ctx::store`]) through trampolines that save every
/// register ([`crate::compiler::compile_saving_call`]): a region calls
/// them with nothing clobbered, and reads a load's value from the
/// context's `result` word and the status from its `status` word.
///
/// [`ctx::load`]: crate::ctx::load
/// [`ctx::load_rmw`]: crate::ctx::load_rmw
/// [`ctx::store`]: crate::ctx::store
#[derive(Clone, Copy, Debug)]
pub struct AccessCalls {
    pub load: usize,
    pub load_rmw: usize,
    pub store: usize,
}

/// Counts of one translation.
#[derive(Debug, Default, Clone, Copy)]
pub struct TxStats {
    pub native: u64,
    pub fallback: u64,
}

/// Whether a guest block sets every arithmetic flag before anything can
/// read them: before a flag reader, a fault, an exit or a fallback. An
/// edge into such a block need not store the lazy record it leaves.
fn flags_dead_on_entry(plan: &[Planned]) -> bool {
    for p in plan {
        match p.form.as_ref().map_or(FlagsEffect::Other, Form::flags_effect) {
            FlagsEffect::Kills => return true,
            FlagsEffect::Ignores => {}
            FlagsEffect::Other => return false,
        }
    }
    false
}

/// The planned instructions of a region: each one translated or a fallback.
struct Planned {
    rip: u64,
    form: Option<Form>,
    /// Index into the fallback table.
    fallback: usize,
}

/// A translated region: the function built, its fallback table and counts.
pub struct Translated {
    pub fallbacks: Vec<Decoded>,
    pub stats: TxStats,
}

/// The fallback table and counts of `spec`'s translation, without building
/// its function: what a region's code kept from an earlier run needs
/// ([`crate::disk`]).
pub fn fallbacks(spec: &RegionSpec) -> Translated {
    let (_, fallbacks, stats) = plan(spec);
    Translated { fallbacks, stats }
}

/// Which instructions of `spec` are translated and which fall back: the
/// plan per guest block, the fallback table and the counts.
fn plan(spec: &RegionSpec) -> (Vec<Vec<Planned>>, Vec<Decoded>, TxStats) {
    let total: usize = spec.blocks.iter().map(|g| g.insns.len()).sum();
    let mut fallbacks: Vec<Decoded> = Vec::with_capacity(total.max(1));
    let mut plan: Vec<Vec<Planned>> = Vec::new();
    let mut stats = TxStats::default();
    for g in &spec.blocks {
        let mut v = Vec::new();
        for d in &g.insns {
            let rip = d.next_rip().wrapping_sub(d.insn.len() as u64);
            // (An instruction that crosses into the next page is
            // translated too: the region holds that page, runs only while
            // it maps as it did, and is dropped when it is written.)
            // With other threads on guest memory, a guest atomic takes
            // its atomic form (or the interpreter's locked handler).
            let form = if spec.shared_memory && is_guest_atomic(&d.insn) {
                classify_atomic(&d.insn, spec.bits)
            } else {
                classify(&d.insn, spec.bits)
            };
            let form = form.filter(|f| (spec.avx || !f.needs_avx()) && (spec.crypto || !f.needs_crypto()));
            let mut fb = usize::MAX;
            match &form {
                Some(f) => {
                    stats.native += 1;
                    if f.may_slow() || writes_memory(&d.insn) {
                        // The slow path runs it through the interpreter
                        // (for a store, the path of a TLB miss).
                        fb = fallbacks.len();
                        fallbacks.push(*d);
                    }
                }
                None => {
                    fb = fallbacks.len();
                    fallbacks.push(*d);
                    stats.fallback += 1;
                }
            }
            v.push(Planned { rip, form, fallback: fb });
        }
        plan.push(v);
    }
    (plan, fallbacks, stats)
}

/// Build the function of `spec` into `b` (a fresh function with the
/// signature `(ptr ctx, i32 entry)`).
pub fn translate(b: &mut FunctionBuilder, spec: &RegionSpec, call_conv: CallConv, ptr: Type) -> Translated {
    // Plan: which instructions are translated, which fall back.
    let (plan, fallbacks, stats) = plan(spec);

    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let ctx_v = b.block_params(entry)[0];
    let entry_idx = b.block_params(entry)[1];

    let sig = |params: &[Type], ret: Option<Type>| {
        let mut s = Signature::new(call_conv);
        for p in params {
            s.params.push(AbiParam::new(*p));
        }
        if let Some(r) = ret {
            s.returns.push(AbiParam::new(r));
        }
        s
    };
    let i64t = types::I64;
    let i32t = types::I32;
    let s_fb = sig(&[ptr, ptr], Some(i32t));
    let s_flags = sig(&[ptr], Some(i64t));
    let sig_fallback = b.import_signature(s_fb);
    let sig_flags = b.import_signature(s_flags);
    let sig_pcmp = b.import_signature(sig(&[ptr, ptr, i32t], Some(i64t)));
    let sig_pcmpe = b.import_signature(sig(&[ptr, ptr, i32t, i64t, i64t], Some(i64t)));
    let sig_div = b.import_signature(sig(&[i64t, i64t, i64t, ptr], Some(i64t)));
    let sig_copy = b.import_signature(sig(&[i64t, i64t, i64t], None));
    let sig_fill = b.import_signature(sig(&[i64t, i64t, i64t, i64t], None));
    let sig_crc = b.import_signature(sig(&[i64t, i64t, i32t], Some(i64t)));
    let sig_clmul = b.import_signature(sig(&[i64t, i64t, ptr], Some(i64t)));
    let saving = |params: &[Type]| {
        let mut s = Signature::new(CallConv::PreserveAll);
        s.params.extend(params.iter().map(|&p| AbiParam::new(p)));
        s
    };
    let sig_load_saving = b.import_signature(saving(&[ptr, i32t, i64t, i32t, i64t]));
    let sig_store_saving = b.import_signature(saving(&[ptr, i32t, i64t, i32t, i64t, i64t]));

    let state = b.ins().load(ptr, mem_flags(), ctx_v, off::STATE);
    let tlb = b.ins().load(ptr, mem_flags(), ctx_v, off::TLB);
    let budget = b.ins().load(i64t, mem_flags(), ctx_v, off::BUDGET);
    let icount = b.declare_var(i64t);
    let exit_rip = b.declare_var(i64t);
    let exit_block = b.create_block();
    let leave_block = b.create_block();
    let mut tx = Tx {
        b,
        bits: spec.bits,
        ctx: ctx_v,
        state,
        tlb,
        budget,
        icount,
        exit_rip,
        known: Known::Unknown,
        regs: [None; 16],
        dirty: 0,
        lazy_dirty: false,
        cin_deferred: false,
        sse_ok: false,
        avx_ok: false,
        avx_usable: None,
        slow_insn: None,
        insn_loaded: false,
        rmw_direct: false,
        pending: 0,
        exit_block,
        leave_block,
        flags_dead: plan.iter().map(|p| flags_dead_on_entry(p)).collect(),
        blocks: HashMap::new(),
        sig_fallback,
        sig_flags,
        sig_pcmp,
        sig_pcmpe,
        sig_div,
        sig_copy,
        sig_fill,
        sig_crc,
        sig_clmul,
        sig_load_saving,
        sig_store_saving,
        imports: HashMap::new(),
        rip_base: spec.relative_base(),
    };
    let zero = tx.b.ins().iconst(i64t, 0);
    tx.b.def_var(icount, zero);
    tx.b.def_var(exit_rip, zero);
    if plan.iter().flatten().any(|p| p.form.as_ref().is_some_and(Form::needs_avx)) {
        let v = tx.b.declare_var(types::I8);
        tx.avx_usable = Some(v);
        tx.update_avx_usable();
    }

    // The guest blocks, and the entry switch.
    let mut ir_blocks = Vec::new();
    for (i, g) in spec.blocks.iter().enumerate() {
        let blk = tx.b.create_block();
        tx.blocks.entry(g.rip).or_insert((blk, i));
        ir_blocks.push(blk);
    }
    // The entry switch: block 0 (where the region was gathered, the
    // commonest way in) first, then a binary search of conditional
    // branches. With a jump table instead, samples gathered at its
    // indirect jump, and a run of `seq` (glibc's printf: short calls, a
    // region entry every ~30 instructions) took about 4% longer.
    if ir_blocks.len() > 2 {
        let rest = tx.b.create_block();
        let first = tx.b.ins().icmp_imm_s(IntCC::Equal, entry_idx, 0);
        tx.b.ins().brif(first, ir_blocks[0], &[], rest, &[]);
        tx.enter_block(rest);
        entry_switch(tx.b, entry_idx, &ir_blocks[1..], 1, leave_block);
    } else {
        entry_switch(tx.b, entry_idx, &ir_blocks, 0, leave_block);
    }

    for (i, g) in spec.blocks.iter().enumerate() {
        tx.b.switch_to_block(ir_blocks[i]);
        tx.known = Known::Unknown;
        tx.forget();
        tx.pending = 0;
        let mut ended = false;
        for (j, p) in plan[i].iter().enumerate() {
            let d = &g.insns[j];
            let next = d.next_rip();
            match &p.form {
                Some(f) => {
                    tx.slow_insn = (p.fallback != usize::MAX).then_some(p.fallback);
                    tx.insn_loaded = false;
                    tx.rmw_direct = false;
                    ended = tx.emit(f, &d.insn, p.rip, next);
                    if !ended {
                        tx.pending += 1;
                    }
                }
                None => tx.emit_fallback(p.fallback, p.rip),
            }
            if ended {
                break;
            }
        }
        if !ended {
            // Fall through to the code after the block.
            let last = g.insns.last().map(|d| d.next_rip()).unwrap_or(g.rip);
            tx.goto(last, g.rip);
        }
    }

    // The exits.
    tx.b.switch_to_block(exit_block);
    let rip = tx.b.use_var(exit_rip);
    tx.count_out();
    if spec.chain {
        tx.chain_exit(rip, ptr);
    } else {
        tx.b.ins().store(mem_flags(), rip, tx.state, RIP_OFF);
        tx.b.ins().return_(&[]);
    }

    tx.b.switch_to_block(leave_block);
    tx.count_out();
    tx.b.ins().return_(&[]);

    tx.b.seal_all_blocks();
    Translated { fallbacks, stats }
}

/// Branch on `idx` to `blocks[i]` for `idx == base + i`, and to `other`
/// for any other value: a binary search of conditional branches.
fn entry_switch(b: &mut FunctionBuilder, idx: Value, blocks: &[Block], base: usize, other: Block) {
    match blocks.len() {
        0 => {
            b.ins().jump(other, &[]);
        }
        1 => {
            let hit = b.ins().icmp_imm_s(IntCC::Equal, idx, base as i64);
            b.ins().brif(hit, blocks[0], &[], other, &[]);
        }
        n => {
            let half = n / 2;
            let lo = b.create_block();
            let hi = b.create_block();
            let below = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, idx, (base + half) as i64);
            b.ins().brif(below, lo, &[], hi, &[]);
            b.switch_to_block(lo);
            b.seal_block(lo);
            entry_switch(b, idx, &blocks[..half], base, other);
            b.switch_to_block(hi);
            b.seal_block(hi);
            entry_switch(b, idx, &blocks[half..], base + half, other);
        }
    }
}
