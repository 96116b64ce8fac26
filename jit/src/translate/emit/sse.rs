//! Packed-integer, bitwise and move SSE instructions, and XMM access.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use iced_x86::{Instruction, Register};

use cpu::state::cr;

use crate::reloc::Helper;
use crate::translate::classify::{reg, Form, ShiftKind, VecOp, VecSrc};
use crate::translate::state::{guest_flags, mem_flags, Tx, CR0_OFF, CR4_OFF, XMM_OFF};

impl Tx<'_, '_> {
    /// Translate the packed, bitwise or move SSE form `f`. True if it ended
    /// the guest block.
    pub(super) fn emit_sse(&mut self, f: &Form, insn: &Instruction, rip: u64) -> bool {
        match *f {
            Form::Vec { op, dst, src } => {
                self.sse_check(rip);
                let ty = op_type(op);
                let b = match src {
                    VecSrc::Xmm(x) => self.xmm_load(x, ty),
                    VecSrc::Mem => self.vec_mem_load(insn, ty, true, rip),
                };
                let a = self.xmm_load(dst, ty);
                let r = self.vec_apply(op, a, b);
                self.xmm_store(dst, r);
            }
            Form::VecMov { dst, src, aligned } => {
                self.sse_check(rip);
                let ty = types::I8X16;
                let v = match src {
                    VecSrc::Xmm(x) => self.xmm_load(x, ty),
                    VecSrc::Mem => self.vec_mem_load(insn, ty, aligned, rip),
                };
                match dst {
                    VecSrc::Xmm(x) => self.xmm_store(x, v),
                    VecSrc::Mem => self.vec_mem_store(insn, v, aligned, rip),
                }
            }
            Form::VecScalar { dst, src, width, merge, high } => {
                self.sse_check(rip);
                let ty = if width == 4 { types::I32 } else { types::I64 };
                let w = u32::from(width);
                // The register's bytes moved: its low ones, or (MOVHPS/PD)
                // its upper quadword.
                let half = if high { 8 } else { 0 };
                let v = match src {
                    VecSrc::Xmm(x) => {
                        self.b.ins().load(ty, guest_flags(), self.state, XMM_OFF + 16 * i32::from(x) + half)
                    }
                    VecSrc::Mem => {
                        let a = self.vec_host_addr(insn, w, false, false, rip);
                        self.b.ins().load(ty, guest_flags(), a, 0)
                    }
                };
                match dst {
                    VecSrc::Xmm(x) => {
                        let fl = guest_flags();
                        let at = XMM_OFF + 16 * i32::from(x) + half;
                        self.b.ins().store(fl, v, self.state, at);
                        if !merge {
                            if width == 4 {
                                let z = self.b.ins().iconst(types::I32, 0);
                                self.b.ins().store(fl, z, self.state, at + 4);
                            }
                            let z = self.iconst(0);
                            self.b.ins().store(fl, z, self.state, at + 8);
                        }
                    }
                    VecSrc::Mem => {
                        let a = self.vec_host_addr(insn, w, false, true, rip);
                        self.b.ins().store(guest_flags(), v, a, 0);
                    }
                }
            }
            Form::Pmovmskb { dst, src } => {
                self.sse_check(rip);
                let v = self.xmm_load(src, types::I8X16);
                let m = self.b.ins().vhigh_bits(types::I64, v);
                self.write_reg(dst, m);
            }
            Form::MovToVec { dst, src } => {
                self.sse_check(rip);
                let v = self.read_reg(src);
                let z = self.iconst(0);
                let fl = guest_flags();
                self.b.ins().store(fl, v, self.state, XMM_OFF + 16 * i32::from(dst));
                self.b.ins().store(fl, z, self.state, XMM_OFF + 16 * i32::from(dst) + 8);
            }
            Form::MovFromVec { dst, src } => {
                self.sse_check(rip);
                let v = self.b.ins().load(types::I64, guest_flags(), self.state, XMM_OFF + 16 * i32::from(src));
                self.write_reg(dst, v);
            }
            Form::Pcmpistri { a, b, imm } => {
                self.sse_check(rip);
                let pa = self.b.ins().iadd_imm_s(self.state, i64::from(XMM_OFF + 16 * i32::from(a)));
                let pb = match b {
                    VecSrc::Xmm(x) => self.b.ins().iadd_imm_s(self.state, i64::from(XMM_OFF + 16 * i32::from(x))),
                    VecSrc::Mem => self.vec_host_addr(insn, 16, false, false, rip),
                };
                let callee = self.helper(Helper::Pcmpistri);
                let immv = self.b.ins().iconst(types::I32, i64::from(imm));
                let call = self.b.ins().call_indirect(self.sig_pcmp, callee, &[pa, pb, immv]);
                let r = self.b.inst_results(call)[0];
                let ecx = reg(Register::ECX).expect("a GPR");
                self.write_reg(ecx, r);
                let f = self.b.ins().ushr_imm_s(r, 32);
                self.set_eager(f);
            }
            Form::Pcmpestri { a, b, imm, wide } => {
                self.sse_check(rip);
                let pa = self.b.ins().iadd_imm_s(self.state, i64::from(XMM_OFF + 16 * i32::from(a)));
                let pb = match b {
                    VecSrc::Xmm(x) => self.b.ins().iadd_imm_s(self.state, i64::from(XMM_OFF + 16 * i32::from(x))),
                    VecSrc::Mem => self.vec_host_addr(insn, 16, false, false, rip),
                };
                // The lengths: RAX and RDX (the helper takes their low
                // halves unless `wide`).
                let la = self.gpr64(0);
                let lb = self.gpr64(2);
                let callee = self.helper(Helper::Pcmpestri);
                let ctl = u32::from(imm) | if wide { 0x100 } else { 0 };
                let immv = self.b.ins().iconst(types::I32, i64::from(ctl));
                let call = self.b.ins().call_indirect(self.sig_pcmpe, callee, &[pa, pb, immv, la, lb]);
                let r = self.b.inst_results(call)[0];
                // (A helper that cannot compare says so in bit 63.)
                let ok = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, r, 0);
                self.slow_unless(ok, rip);
                let ecx = reg(Register::ECX).expect("a GPR");
                self.write_reg(ecx, r);
                let f = self.b.ins().ushr_imm_s(r, 32);
                self.set_eager(f);
            }
            Form::MovHalves { dst, src, from_high } => {
                self.sse_check(rip);
                let fl = guest_flags();
                let (from, to) = if from_high { (8, 0) } else { (0, 8) };
                let v = self.b.ins().load(types::I64, fl, self.state, XMM_OFF + 16 * i32::from(src) + from);
                self.b.ins().store(fl, v, self.state, XMM_OFF + 16 * i32::from(dst) + to);
            }
            _ => unreachable!("not an SSE form: {f:?}"),
        }
        false
    }

    /// `op` on one 128-bit half: `a` (the destination, or VEX.vvvv) and
    /// `b` (the source), both of [`op_type`]'s type.
    pub(super) fn vec_apply(&mut self, op: VecOp, a: Value, b: Value) -> Value {
        match op {
            VecOp::CmpEq(_) => self.b.ins().icmp(IntCC::Equal, a, b),
            VecOp::CmpGt(_) => self.b.ins().icmp(IntCC::SignedGreaterThan, a, b),
            VecOp::Add(_) => self.b.ins().iadd(a, b),
            VecOp::Sub(_) => self.b.ins().isub(a, b),
            VecOp::Xor => self.b.ins().bxor(a, b),
            VecOp::Or => self.b.ins().bor(a, b),
            VecOp::And => self.b.ins().band(a, b),
            // PANDN: dst = !dst & src.
            VecOp::AndNot => self.b.ins().band_not(b, a),
            VecOp::MinUb => self.b.ins().umin(a, b),
            VecOp::MaxUb => self.b.ins().umax(a, b),
            VecOp::Shuffle => {
                // PSHUFB: an index with bit 7 set gives 0, else its
                // low four bits pick the byte; out-of-range indices
                // of `swizzle` give 0 too.
                let m = self.b.ins().iconst(types::I8, 0x8f);
                let m = self.b.ins().splat(types::I8X16, m);
                let idx = self.b.ins().band(b, m);
                self.b.ins().swizzle(a, idx)
            }
            VecOp::UnpackLo(n) | VecOp::UnpackHi(n) => {
                // Lane i of the half goes to lane 2i, the source's
                // lane i to lane 2i + 1 (byte 16 + k of `shuffle`
                // is byte k of its second operand).
                let (n, half) = (usize::from(n), if matches!(op, VecOp::UnpackHi(_)) { 8 } else { 0 });
                let mut mask = [0u8; 16];
                for lane in 0..8 / n {
                    for k in 0..n {
                        let from = (half + lane * n + k) as u8;
                        mask[2 * lane * n + k] = from;
                        mask[2 * lane * n + n + k] = 16 + from;
                    }
                }
                self.shuffle(a, b, mask)
            }
            VecOp::ShufD(imm) => {
                let mut mask = [0u8; 16];
                for (i, m) in mask.iter_mut().enumerate() {
                    let dword = (imm >> (2 * (i / 4))) & 3;
                    *m = dword * 4 + (i % 4) as u8;
                }
                self.shuffle(b, b, mask)
            }
            VecOp::ShufPs(imm) => {
                // Dwords 0 and 1 from `a`, 2 and 3 from `b` (bytes 16..32).
                let mut mask = [0u8; 16];
                for (i, m) in mask.iter_mut().enumerate() {
                    let dword = (imm >> (2 * (i / 4))) & 3;
                    let from = if i < 8 { 0 } else { 16 };
                    *m = from + dword * 4 + (i % 4) as u8;
                }
                self.shuffle(a, b, mask)
            }
            VecOp::ShufPd(imm) => {
                // Quadword 0 from `a` (imm8 bit 0), 1 from `b` (bit 1).
                let mut mask = [0u8; 16];
                for (i, m) in mask.iter_mut().enumerate() {
                    let (from, bit) = if i < 8 { (0, imm & 1) } else { (16, (imm >> 1) & 1) };
                    *m = from + bit * 8 + (i % 8) as u8;
                }
                self.shuffle(a, b, mask)
            }
            VecOp::ShiftImm { kind, lane, count } => {
                // A count past the lane's last bit empties a logical
                // shift's lanes and fills an arithmetic one's with the
                // sign (Cranelift's shifts take the count modulo the lane).
                let bits = u32::from(lane) * 8;
                let count = u32::from(count);
                match kind {
                    ShiftKind::Left | ShiftKind::RightLogical if count >= bits => self.b.ins().bxor(a, a),
                    _ => {
                        let n = self.b.ins().iconst(types::I32, i64::from(count.min(bits - 1)));
                        match kind {
                            ShiftKind::Left => self.b.ins().ishl(a, n),
                            ShiftKind::RightLogical => self.b.ins().ushr(a, n),
                            ShiftKind::RightArith => self.b.ins().sshr(a, n),
                        }
                    }
                }
            }
            VecOp::ByteShift { left, count } => {
                // Bytes of `a` (0..16) and zeros (16..32, the second
                // operand): a count past 15 gives zero.
                let zero = self.b.ins().bxor(a, a);
                let n = usize::from(count);
                let mut mask = [16u8; 16];
                for (i, m) in mask.iter_mut().enumerate() {
                    if left && i >= n {
                        *m = (i - n) as u8;
                    } else if !left && i + n < 16 {
                        *m = (i + n) as u8;
                    }
                }
                self.shuffle(a, zero, mask)
            }
        }
    }

    /// The bytes of `a` (0..16) and `b` (16..32) that `mask` names.
    fn shuffle(&mut self, a: Value, b: Value, mask: [u8; 16]) -> Value {
        let imm = self.b.func.dfg.immediates.push(mask.to_vec().into());
        self.b.ins().shuffle(a, b, imm)
    }

    /// SSE may run: CR0.EM and CR0.TS clear, CR4.OSFXSR set (else the
    /// interpreter raises #UD or #NM).
    pub(super) fn sse_check(&mut self, rip: u64) {
        // The instructions before count, in case the slow path leaves.
        self.flush_count();
        if self.sse_ok {
            return;
        }
        let fl = mem_flags();
        let cr0 = self.b.ins().load(types::I64, fl, self.state, CR0_OFF);
        let cr4 = self.b.ins().load(types::I64, fl, self.state, CR4_OFF);
        let bad0 = self.b.ins().band_imm_s(cr0, (cr::CR0_EM | cr::CR0_TS) as i64);
        let ok4 = self.b.ins().band_imm_s(cr4, cr::CR4_OSFXSR as i64);
        let ok0 = self.b.ins().icmp_imm_s(IntCC::Equal, bad0, 0);
        let ok4 = self.b.ins().icmp_imm_s(IntCC::NotEqual, ok4, 0);
        let ok = self.b.ins().band(ok0, ok4);
        self.slow_unless(ok, rip);
        self.sse_ok = true;
    }

    pub(super) fn xmm_load(&mut self, x: u8, ty: Type) -> Value {
        self.b.ins().load(ty, guest_flags(), self.state, XMM_OFF + 16 * i32::from(x))
    }

    fn xmm_store(&mut self, x: u8, v: Value) {
        self.b.ins().store(guest_flags(), v, self.state, XMM_OFF + 16 * i32::from(x));
    }

    /// The host address of the memory operand of `size` bytes, through the
    /// inline TLB test; anything else (a miss, MMIO, a page crossing, an
    /// operand that must be aligned to its size and is not, a code page
    /// written) takes the slow path.
    pub(super) fn vec_host_addr(
        &mut self,
        insn: &Instruction,
        size: u32,
        aligned: bool,
        write: bool,
        rip: u64,
    ) -> Value {
        let seg = cpu::ops::mem_seg(insn);
        let off_v = self.ea(insn);
        let lin = self.linear(seg, off_v).expect("classify_vec takes segments with an inline linear address");
        if aligned {
            let low = self.b.ins().band_imm_s(lin, i64::from(size) - 1);
            let ok = self.b.ins().icmp_imm_s(IntCC::Equal, low, 0);
            self.slow_unless(ok, rip);
        }
        let l = mmu::TLB_LAYOUT;
        let (entry, hit) = self.tlb_hit(lin, size, if write { l.jit_write } else { l.jit_read });
        self.slow_unless(hit, rip);
        self.host_addr(entry, lin)
    }

    fn vec_mem_load(&mut self, insn: &Instruction, ty: Type, aligned: bool, rip: u64) -> Value {
        let a = self.vec_host_addr(insn, 16, aligned, false, rip);
        self.b.ins().load(ty, guest_flags(), a, 0)
    }

    fn vec_mem_store(&mut self, insn: &Instruction, v: Value, aligned: bool, rip: u64) {
        let a = self.vec_host_addr(insn, 16, aligned, true, rip);
        self.b.ins().store(guest_flags(), v, a, 0);
    }
}

/// The type `op` works on: lanes of its width, bytes for the bitwise and
/// byte-shuffling operations.
pub(super) fn op_type(op: VecOp) -> Type {
    match op {
        VecOp::CmpEq(n) | VecOp::CmpGt(n) | VecOp::Add(n) | VecOp::Sub(n) => vec_type(n),
        VecOp::ShiftImm { lane, .. } => vec_type(lane),
        _ => types::I8X16,
    }
}

/// The vector type of 16 bytes in lanes of `lane_bytes`.
pub(super) fn vec_type(lane_bytes: u8) -> Type {
    match lane_bytes {
        1 => types::I8X16,
        2 => types::I16X8,
        4 => types::I32X4,
        _ => types::I64X2,
    }
}
