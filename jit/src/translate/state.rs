//! The translator's state: the function under construction, the guest
//! registers it holds, the layout of the CPU state it reads and writes, and
//! the ways out of the region.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::immediates::Imm64;
use cranelift_codegen::ir::{
    types, Block, ExternalName, GlobalValue, GlobalValueData, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::{FunctionBuilder, Variable};

use cpu::flags::FlagOp;
use cpu::state::CpuState;
use cpu::Decoded;

use super::classify::Reg;
use super::flags::Known;
use crate::ctx::{self, off};
use crate::reloc::{Helper, Import};

/// The region's function under construction.
pub(super) struct Tx<'a, 'b> {
    pub(super) b: &'a mut FunctionBuilder<'b>,
    pub(super) bits: u32,
    pub(super) ctx: Value,
    pub(super) state: Value,
    pub(super) tlb: Value,
    pub(super) budget: Value,
    pub(super) icount: Variable,
    pub(super) exit_rip: Variable,
    pub(super) known: Known,
    /// The guest block's registers held in SSA values (full 64 bits), and
    /// which of them differ from the state in memory.
    pub(super) regs: [Option<Value>; 16],
    pub(super) dirty: u16,
    /// `known` is a lazy record the state does not hold yet.
    pub(super) lazy_dirty: bool,
    /// `known` is an INC/DEC whose carry-in (the CF before it) is still
    /// the state's record: computed only where something needs it (most
    /// often nothing does: the next producer replaces the record).
    pub(super) cin_deferred: bool,
    /// SSE instructions may run (CR0 and CR4 were checked) since the last
    /// code that could change them.
    pub(super) sse_ok: bool,
    /// AVX instructions may run (CR4.OSXSAVE, XCR0 and CR0.TS were
    /// checked) since the last code that could change them.
    pub(super) avx_ok: bool,
    /// In a region with AVX forms: whether the state lets AVX run, computed
    /// at the region's entry and again after each fallback (nothing else in
    /// a region can change CR0, CR4 or XCR0), so that a guest block's test
    /// is one branch.
    pub(super) avx_usable: Option<Variable>,
    /// The current instruction's entry in the fallback table, for a slow
    /// path that runs it through the interpreter.
    pub(super) slow_insn: Option<usize>,
    /// The instruction being translated read memory (a helper's read may
    /// have had effects: its stores keep their own helper).
    pub(super) insn_loaded: bool,
    /// Its read-modify-write load left through the interpreter on a miss,
    /// so the host address it hands on is always good.
    pub(super) rmw_direct: bool,
    /// Native instructions completed since the last update of `icount`.
    pub(super) pending: i64,
    pub(super) exit_block: Block,
    pub(super) leave_block: Block,
    /// Per guest block: [`super::flags_dead_on_entry`].
    pub(super) flags_dead: Vec<bool>,
    pub(super) blocks: HashMap<u64, (Block, usize)>,
    pub(super) sig_fallback: cranelift_codegen::ir::SigRef,
    pub(super) sig_flags: cranelift_codegen::ir::SigRef,
    pub(super) sig_pcmp: cranelift_codegen::ir::SigRef,
    /// [`ctx::pcmpestri`]: `(&a, &b, imm, la, lb) -> index | flags << 32`.
    pub(super) sig_pcmpe: cranelift_codegen::ir::SigRef,
    pub(super) sig_div: cranelift_codegen::ir::SigRef,
    pub(super) sig_copy: cranelift_codegen::ir::SigRef,
    pub(super) sig_fill: cranelift_codegen::ir::SigRef,
    /// [`ctx::crc32c`]: `(acc, value, bytes) -> crc`.
    pub(super) sig_crc: cranelift_codegen::ir::SigRef,
    /// [`ctx::clmul`]: `(a, b, &hi) -> lo`.
    pub(super) sig_clmul: cranelift_codegen::ir::SigRef,
    pub(super) sig_load_saving: cranelift_codegen::ir::SigRef,
    pub(super) sig_store_saving: cranelift_codegen::ir::SigRef,
    /// The symbols of the addresses the code holds so far, by import and
    /// addend (see [`crate::reloc`]).
    pub(super) imports: HashMap<(Import, i64), GlobalValue>,
    /// Position-independent code ([`super::RegionSpec::position_independent`]):
    /// the page guest addresses are relocated against.
    pub(super) rip_base: Option<u64>,
}

pub(super) const GPR_OFF: i32 = std::mem::offset_of!(CpuState, gpr) as i32;
pub(super) const RIP_OFF: i32 = std::mem::offset_of!(CpuState, rip) as i32;
pub(super) const RFLAGS_OFF: i32 = std::mem::offset_of!(CpuState, rflags) as i32;
const LAZY_OFF: i32 = std::mem::offset_of!(CpuState, lazy) as i32;
pub(super) const XMM_OFF: i32 = std::mem::offset_of!(CpuState, xmm) as i32;
/// Bits 255:128 of YMM0-15.
pub(super) const YMM_HI_OFF: i32 = std::mem::offset_of!(CpuState, ymm_hi) as i32;
pub(super) const XCR0_OFF: i32 = std::mem::offset_of!(CpuState, xcr0) as i32;
pub(super) const CR0_OFF: i32 = std::mem::offset_of!(CpuState, cr0) as i32;
pub(super) const CR2_OFF: i32 = std::mem::offset_of!(CpuState, cr2) as i32;
pub(super) const CR3_OFF: i32 = std::mem::offset_of!(CpuState, cr3) as i32;
pub(super) const CR4_OFF: i32 = std::mem::offset_of!(CpuState, cr4) as i32;
pub(super) const PKRU_OFF: i32 = std::mem::offset_of!(CpuState, pkru) as i32;
pub(super) const MXCSR_OFF: i32 = std::mem::offset_of!(CpuState, mxcsr) as i32;
pub(super) const CPL_OFF: i32 = std::mem::offset_of!(CpuState, cpl) as i32;
pub(super) const KERNEL_GS_OFF: i32 =
    (std::mem::offset_of!(CpuState, msr) + std::mem::offset_of!(cpu::state::MsrState, kernel_gs_base)) as i32;
pub(super) const TSC_AUX_OFF: i32 =
    (std::mem::offset_of!(CpuState, msr) + std::mem::offset_of!(cpu::state::MsrState, tsc_aux)) as i32;
pub(super) const FCW_OFF: i32 =
    (std::mem::offset_of!(CpuState, fpu) + std::mem::offset_of!(cpu::state::FpuState, fcw)) as i32;
pub(super) const SEG_OFF: i32 = std::mem::offset_of!(CpuState, seg) as i32;
pub(super) const SEG_SIZE: i32 = std::mem::size_of::<cpu::state::Segment>() as i32;
pub(super) const SEG_BASE_OFF: i32 = std::mem::offset_of!(cpu::state::Segment, base) as i32;
pub(super) const SEG_SEL_OFF: i32 = std::mem::offset_of!(cpu::state::Segment, selector) as i32;
/// Offsets in `LazyFlags` of op (u32), size (u32), res, src1, src2, carry_in.
pub(super) const LZ_OFF: [i32; 6] = [
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, op) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, size) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, res) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, src1) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, src2) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, carry_in) as i32,
];
pub(super) const OP: usize = 0;
pub(super) const RES: usize = 2;
pub(super) const SRC1: usize = 3;
pub(super) const SRC2: usize = 4;
pub(super) const CIN: usize = 5;

pub(super) fn mem_flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Guest memory through a host pointer: may be unaligned.
pub(super) fn guest_flags() -> MemFlagsData {
    let mut f = MemFlagsData::new();
    f.set_notrap();
    f
}

impl Tx<'_, '_> {
    /// Continue in `blk`, whose predecessors are all emitted: sealing it
    /// at once keeps SSA construction from adding parameters for every
    /// variable to every block.
    pub(super) fn enter_block(&mut self, blk: Block) {
        self.b.switch_to_block(blk);
        self.b.seal_block(blk);
    }

    pub(super) fn iconst(&mut self, v: u64) -> Value {
        self.b.ins().iconst(types::I64, v as i64)
    }

    /// The address of `import` plus `addend`, as a relocation the code is
    /// linked at ([`crate::reloc::link`]).
    pub(super) fn addr(&mut self, import: Import, addend: i64) -> Value {
        let gv = match self.imports.get(&(import, addend)) {
            Some(gv) => *gv,
            None => {
                let name = self.b.func.declare_imported_user_function(import.name());
                let gv = self.b.create_global_value(GlobalValueData::Symbol {
                    name: ExternalName::User(name),
                    offset: Imm64::new(addend),
                    colocated: false,
                    tls: false,
                });
                self.imports.insert((import, addend), gv);
                gv
            }
        };
        self.b.ins().symbol_value(types::I64, gv)
    }

    /// The guest linear address `v` (a RIP, a return address, a
    /// RIP-relative operand): a constant, or in position-independent code
    /// a relocation against the region's page.
    pub(super) fn guest_addr(&mut self, v: u64) -> Value {
        match self.rip_base {
            Some(base) => self.addr(Import::GuestBase, v.wrapping_sub(base) as i64),
            None => self.iconst(v),
        }
    }

    /// The address of the helper `h`.
    pub(super) fn helper(&mut self, h: Helper) -> Value {
        self.addr(Import::Helper(h), 0)
    }

    /// The address of entry `index` of the fallback table.
    pub(super) fn fallback_entry(&mut self, index: usize) -> Value {
        self.addr(Import::Fallbacks, (index * std::mem::size_of::<Decoded>()) as i64)
    }

    /// Add the pending count to `icount`.
    pub(super) fn flush_count(&mut self) {
        if self.pending != 0 {
            let c = self.b.use_var(self.icount);
            let c = self.b.ins().iadd_imm_s(c, self.pending);
            self.b.def_var(self.icount, c);
            self.pending = 0;
        }
    }

    /// `ctx.budget = budget - icount`: what is left for the next region,
    /// and how the run loop counts the instructions run.
    pub(super) fn count_out(&mut self) {
        let c = self.b.use_var(self.icount);
        let left = self.b.ins().isub(self.budget, c);
        self.b.ins().store(mem_flags(), left, self.ctx, off::BUDGET);
    }

    /// The end of a plain exit at `rip` (the state is written back and the
    /// count added): go straight on into the region of `rip` when the jump
    /// cache has it for the current tag, nothing asked to leave (a helper's
    /// status, code pages written), the budget lasts and hops are left;
    /// otherwise return to the run loop.
    pub(super) fn chain_exit(&mut self, rip: Value, ptr: Type) {
        let fl = mem_flags();
        let i64t = types::I64;
        let ret = self.b.create_block();
        let probe = self.b.create_block();
        let go = self.b.create_block();
        let c = self.b.use_var(self.icount);
        let spent = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, c, self.budget);
        // The status and the exit kind, side by side.
        let st = self.b.ins().load(i64t, fl, self.ctx, off::STATUS);
        let stop = self.b.ins().icmp_imm_s(IntCC::NotEqual, st, 0);
        let stop = self.b.ins().bor(stop, spent);
        self.b.ins().brif(stop, ret, &[], probe, &[]);

        self.enter_block(probe);
        let jump = self.b.ins().load(ptr, fl, self.ctx, off::JUMP);
        let h = self.b.ins().ushr_imm_s(rip, 12);
        let h = self.b.ins().bxor(h, rip);
        let h = self.b.ins().band_imm_s(h, (ctx::JUMP_SETS - 1) as i64);
        let h = self.b.ins().ishl_imm_s(h, i64::from(ctx::JUMP_SET_SHIFT));
        let set = self.b.ins().iadd(jump, h);
        let tag = self.b.ins().load(i64t, fl, self.ctx, off::TAG);
        let tag_g = self.b.ins().load(i64t, fl, self.ctx, off::TAG_GLOBAL);
        // The set's first slot, then its second.
        let second = self.b.create_block();
        let slot = self.b.append_block_param(go, ptr);
        let miss = self.slot_miss(set, rip, tag, tag_g);
        self.b.ins().brif(miss, second, &[], go, &[set.into()]);
        self.enter_block(second);
        let slot2 = self.b.ins().iadd_imm_s(set, 1 << ctx::JUMP_SLOT_SHIFT);
        let miss = self.slot_miss(slot2, rip, tag, tag_g);
        self.b.ins().brif(miss, ret, &[], go, &[slot2.into()]);

        self.enter_block(go);
        let code = self.b.ins().load(ptr, fl, slot, off::SLOT_CODE);
        let entry = self.b.ins().load(types::I32, fl, slot, off::SLOT_ENTRY);
        let hops = self.b.ins().load(i64t, fl, self.ctx, off::HOPS);
        let hops = self.b.ins().iadd_imm_s(hops, 1);
        self.b.ins().store(fl, hops, self.ctx, off::HOPS);
        let sig = self.b.import_signature(ctx::region_signature(ptr));
        self.b.ins().return_call_indirect(sig, code, &[self.ctx, entry]);

        self.enter_block(ret);
        self.b.ins().store(fl, rip, self.state, RIP_OFF);
        self.b.ins().return_(&[]);
    }

    /// Whether the jump-cache slot at `slot` does not hold `rip` for the
    /// current tag.
    fn slot_miss(&mut self, slot: Value, rip: Value, tag: Value, tag_g: Value) -> Value {
        let fl = mem_flags();
        let i64t = types::I64;
        let srip = self.b.ins().load(i64t, fl, slot, off::SLOT_RIP);
        let stag = self.b.ins().load(i64t, fl, slot, off::SLOT_TAG);
        let m1 = self.b.ins().icmp(IntCC::NotEqual, srip, rip);
        let m2 = self.b.ins().icmp(IntCC::NotEqual, stag, tag);
        let m3 = self.b.ins().icmp(IntCC::NotEqual, stag, tag_g);
        let m23 = self.b.ins().band(m2, m3);
        self.b.ins().bor(m1, m23)
    }

    /// Leave the region at `rip` (with `extra` more instructions counted).
    pub(super) fn exit_to(&mut self, rip: u64, extra: i64) {
        self.emit_stores();
        let c = self.b.use_var(self.icount);
        let c = self.b.ins().iadd_imm_s(c, self.pending + extra);
        self.b.def_var(self.icount, c);
        let r = self.guest_addr(rip);
        self.b.def_var(self.exit_rip, r);
        self.b.ins().jump(self.exit_block, &[]);
    }

    /// Leave the region at a computed RIP.
    pub(super) fn exit_to_value(&mut self, rip: Value, extra: i64) {
        self.emit_stores();
        let c = self.b.use_var(self.icount);
        let c = self.b.ins().iadd_imm_s(c, self.pending + extra);
        self.b.def_var(self.icount, c);
        self.b.def_var(self.exit_rip, rip);
        self.b.ins().jump(self.exit_block, &[]);
    }

    /// Continue at `target`: in the region (with a budget check on edges
    /// that may close a loop) or out of it. Terminates the current block.
    pub(super) fn goto(&mut self, target: u64, from_rip: u64) {
        self.flush_count();
        if self.flags_dead_at(target) {
            // The record stays unstored on the way in (an exit at the back
            // edge below stores it).
            self.sync_regs();
        } else {
            self.sync();
        }
        match self.blocks.get(&target).copied() {
            Some((blk, _)) if target > from_rip => {
                self.b.ins().jump(blk, &[]);
            }
            Some((blk, _)) => {
                let c = self.b.use_var(self.icount);
                let over = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, c, self.budget);
                let out = self.b.create_block();
                self.b.ins().brif(over, out, &[], blk, &[]);
                self.enter_block(out);
                self.exit_to(target, 0);
            }
            None => self.exit_to(target, 0),
        }
    }

    /// Store what the state in memory lacks (dirty registers, a pending
    /// lazy record) without forgetting it: for paths that leave while the
    /// main path goes on with the same values.
    fn emit_stores(&mut self) {
        let fl = mem_flags();
        self.store_regs();
        if self.lazy_dirty {
            if let Known::Partial { .. } = self.known {
                // The state's flags with the new bits: into RFLAGS, the
                // record emptied.
                let f = self.materialize();
                self.store_eager(f);
            }
            if let Known::Lazy { op, size, res, a, b, cin } = self.known {
                // Read the record before it is overwritten.
                let cin = if self.cin_deferred { self.cf_from_state() } else { cin };
                // op (u32) and size (u32) side by side: one 64-bit store.
                let opsize = self.iconst(u64::from(op as u32) | (u64::from(size) << 32));
                self.b.ins().store(fl, opsize, self.state, LZ_OFF[OP]);
                self.b.ins().store(fl, res, self.state, LZ_OFF[RES]);
                // Only what `cpu::flags::compute` reads for the operation.
                if !matches!(op, FlagOp::Logic | FlagOp::Inc | FlagOp::Dec) {
                    self.b.ins().store(fl, a, self.state, LZ_OFF[SRC1]);
                    self.b.ins().store(fl, b, self.state, LZ_OFF[SRC2]);
                }
                if matches!(op, FlagOp::Adc | FlagOp::Sbb | FlagOp::Inc | FlagOp::Dec) {
                    self.b.ins().store(fl, cin, self.state, LZ_OFF[CIN]);
                }
            }
        }
    }

    /// Bring the state in memory up to date on the main path: the values
    /// stay held, now clean.
    pub(super) fn sync(&mut self) {
        if self.lazy_dirty && matches!(self.known, Known::Partial { .. }) {
            let f = self.materialize();
            let rf = self.store_eager(f);
            self.known = Known::Eager(rf);
            self.lazy_dirty = false;
        }
        if self.lazy_dirty && self.cin_deferred {
            if let Known::Lazy { op, size, res, a, b, .. } = self.known {
                let cin = self.cf_from_state();
                self.known = Known::Lazy { op, size, res, a, b, cin };
            }
        }
        self.cin_deferred = false;
        self.emit_stores();
        self.dirty = 0;
        self.lazy_dirty = false;
    }

    /// Store the dirty registers (they stay held, now clean); the lazy
    /// record stays as it is.
    pub(super) fn sync_regs(&mut self) {
        self.store_regs();
        self.dirty = 0;
    }

    /// Store the dirty registers.
    fn store_regs(&mut self) {
        for i in 0..16 {
            if self.dirty & (1 << i) != 0 {
                let v = self.regs[i].expect("a dirty register has a value");
                self.b.ins().store(mem_flags(), v, self.state, GPR_OFF + 8 * i as i32);
            }
        }
    }

    /// Whether `target` is a block of the region that sets every flag
    /// before anything reads them.
    pub(super) fn flags_dead_at(&self, target: u64) -> bool {
        self.blocks.get(&target).is_some_and(|&(_, i)| self.flags_dead[i])
    }

    /// Hold nothing (after code that may change any register, and at the
    /// start of a guest block, which several paths may reach).
    pub(super) fn forget(&mut self) {
        self.regs = [None; 16];
        self.dirty = 0;
        self.lazy_dirty = false;
        self.cin_deferred = false;
        self.sse_ok = false;
        self.avx_ok = false;
    }

    fn zext32(&mut self, v: Value) -> Value {
        let t = self.b.ins().ireduce(types::I32, v);
        self.b.ins().uextend(types::I64, t)
    }

    /// A register's value, zero-extended from its size.
    pub(super) fn read_reg(&mut self, r: Reg) -> Value {
        let full = self.gpr64(r.idx);
        match r.size {
            8 => full,
            4 => self.zext32(full),
            2 => self.b.ins().band_imm_s(full, 0xffff),
            _ if r.high => {
                let t = self.b.ins().ushr_imm_s(full, 8);
                self.b.ins().band_imm_s(t, 0xff)
            }
            _ => self.b.ins().band_imm_s(full, 0xff),
        }
    }

    /// Write with the architectural size rules (8- and 16-bit writes merge,
    /// 32-bit writes zero the upper half); `v` may hold bits above the size.
    pub(super) fn write_reg(&mut self, r: Reg, v: Value) {
        let new = self.merged(r, v);
        self.set_gpr64(r.idx, new);
    }

    /// The full register after writing `v` to `r` with the size rules.
    pub(super) fn merged(&mut self, r: Reg, v: Value) -> Value {
        match r.size {
            8 => v,
            4 => self.zext32(v),
            size => {
                let old = self.gpr64(r.idx);
                let (m, sh) = if size == 2 {
                    (0xffffi64, 0)
                } else if r.high {
                    (0xff, 8)
                } else {
                    (0xff, 0)
                };
                let keep = self.b.ins().band_imm_s(old, !(m << sh));
                let low = self.b.ins().band_imm_s(v, m);
                let low = if sh != 0 { self.b.ins().ishl_imm_s(low, sh) } else { low };
                self.b.ins().bor(keep, low)
            }
        }
    }

    pub(super) fn gpr64(&mut self, idx: usize) -> Value {
        if let Some(v) = self.regs[idx] {
            return v;
        }
        let v = self.b.ins().load(types::I64, mem_flags(), self.state, GPR_OFF + 8 * idx as i32);
        self.regs[idx] = Some(v);
        v
    }

    pub(super) fn set_gpr64(&mut self, idx: usize, v: Value) {
        self.regs[idx] = Some(v);
        self.dirty |= 1 << idx;
    }

    /// Leave through the interpreter: the current instruction runs there
    /// (which raises what it must) and the region returns after it. The
    /// current block ends.
    pub(super) fn slow_exit(&mut self, rip: u64) {
        let d = self.slow_insn.expect("a form with a slow path has a fallback entry");
        self.emit_stores();
        self.call_fallback(d, rip);
        self.b.ins().jump(self.leave_block, &[]);
    }

    /// Store RIP and run the instruction of fallback entry `d` through the
    /// interpreter's handler (the state in memory must be current); its
    /// status.
    pub(super) fn call_fallback(&mut self, d: usize, rip: u64) -> Value {
        let r = self.guest_addr(rip);
        self.b.ins().store(mem_flags(), r, self.state, RIP_OFF);
        let callee = self.helper(Helper::Fallback);
        let dv = self.fallback_entry(d);
        let call = self.b.ins().call_indirect(self.sig_fallback, callee, &[self.ctx, dv]);
        self.b.inst_results(call)[0]
    }

    /// Branch to the slow path unless `ok`.
    pub(super) fn slow_unless(&mut self, ok: Value, rip: u64) {
        let fast = self.b.create_block();
        let slow = self.b.create_block();
        self.b.ins().brif(ok, fast, &[], slow, &[]);
        self.enter_block(slow);
        self.slow_exit(rip);
        self.enter_block(fast);
    }
}
