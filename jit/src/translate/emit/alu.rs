//! Arithmetic and logic: the ALU operations, INC, DEC, NEG, NOT, IMUL, MUL,
//! DIV and IDIV, bit counts and scans, and the bit tests.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use iced_x86::{Instruction, Register};

use cpu::flags::FlagOp;
use cpu::state::flags;

use super::mask;
use crate::ctx::off;
use crate::reloc::Helper;
use crate::translate::classify::{bit_string_mask, reg, Alu, BtOp, CountKind, Form, Opnd};
use crate::translate::flags::Known;
use crate::translate::state::{mem_flags, Tx};

impl Tx<'_, '_> {
    /// Translate the arithmetic or logic form `f`: an ALU operation, INC,
    /// DEC, NEG, NOT, a multiply or divide, a bit count or scan, a bit test.
    /// True if it ended the guest block.
    pub(super) fn emit_alu(&mut self, f: &Form, insn: &Instruction, rip: u64, next: u64) -> bool {
        match *f {
            Form::Alu { op, dst, src, size } => {
                let m = mask(size) as i64;
                let bv = self.read(src, insn, size, rip);
                let bv = self.b.ins().band_imm_s(bv, m);
                let stores = !matches!(op, Alu::Cmp | Alu::Test);
                let (a, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    Opnd::Mem => {
                        let (a, h) = self.load(insn, size, rip, stores);
                        (a, Some(h))
                    }
                    Opnd::Imm(_) => unreachable!("classify refuses an immediate destination"),
                };
                let cin = if matches!(op, Alu::Adc | Alu::Sbb) { Some(self.cf()) } else { None };
                let r = match (op, cin) {
                    (Alu::Add, _) => self.b.ins().iadd(a, bv),
                    (Alu::Adc, Some(c)) => {
                        let t = self.b.ins().iadd(a, bv);
                        self.b.ins().iadd(t, c)
                    }
                    (Alu::Sub | Alu::Cmp, _) => self.b.ins().isub(a, bv),
                    (Alu::Sbb, Some(c)) => {
                        let t = self.b.ins().isub(a, bv);
                        self.b.ins().isub(t, c)
                    }
                    (Alu::Adc | Alu::Sbb, None) => unreachable!("ADC and SBB read CF above"),
                    (Alu::And | Alu::Test, _) => self.b.ins().band(a, bv),
                    (Alu::Or, _) => self.b.ins().bor(a, bv),
                    (Alu::Xor, _) => self.b.ins().bxor(a, bv),
                };
                let r = self.b.ins().band_imm_s(r, m);
                if stores {
                    match dst {
                        Opnd::Reg(rg) => self.write_reg(rg, r),
                        Opnd::Mem => {
                            let seg = cpu::ops::mem_seg(insn);
                            let o = self.ea(insn);
                            let leave = self.store_at(seg, o, size, r, rip, haddr);
                            self.alu_flags(op, size, r, a, bv, cin);
                            self.after_store(leave, next);
                            return false;
                        }
                        Opnd::Imm(_) => {}
                    }
                }
                self.alu_flags(op, size, r, a, bv, cin);
            }
            Form::IncDec { inc, dst, size } => {
                let (a, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    _ => {
                        let (a, h) = self.load(insn, size, rip, true);
                        (a, Some(h))
                    }
                };
                let r = if inc { self.b.ins().iadd_imm_s(a, 1) } else { self.b.ins().iadd_imm_s(a, -1) };
                let r = self.b.ins().band_imm_s(r, mask(size) as i64);
                // The CF before: known here, or else left in the state's
                // record until something reads it.
                let deferred = self.known == Known::Unknown;
                let cf = if deferred { self.iconst(0) } else { self.cf() };
                let one = self.iconst(1);
                let op = if inc { FlagOp::Inc } else { FlagOp::Dec };
                match dst {
                    Opnd::Reg(rg) => {
                        self.write_reg(rg, r);
                        self.set_lazy(op, size, r, a, one, Some(cf));
                        self.cin_deferred = deferred;
                    }
                    _ => {
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, size, r, rip, haddr);
                        self.set_lazy(op, size, r, a, one, Some(cf));
                        self.cin_deferred = deferred;
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Neg { dst, size } | Form::Not { dst, size } => {
                let neg = matches!(f, Form::Neg { .. });
                let (a, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    _ => {
                        let (a, h) = self.load(insn, size, rip, true);
                        (a, Some(h))
                    }
                };
                let r = if neg { self.b.ins().ineg(a) } else { self.b.ins().bnot(a) };
                let r = self.b.ins().band_imm_s(r, mask(size) as i64);
                let zero = self.iconst(0);
                match dst {
                    Opnd::Reg(rg) => {
                        self.write_reg(rg, r);
                        if neg {
                            self.set_lazy(FlagOp::Sub, size, r, zero, a, None);
                        }
                    }
                    _ => {
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, size, r, rip, haddr);
                        if neg {
                            self.set_lazy(FlagOp::Sub, size, r, zero, a, None);
                        }
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Count { kind, dst, src } => {
                let size = dst.size;
                let v = self.read(src, insn, size, rip);
                let ty = if size == 8 { types::I64 } else { types::I32 };
                let n = if size == 8 { v } else { self.b.ins().ireduce(types::I32, v) };
                let r = match kind {
                    CountKind::Tz => self.b.ins().ctz(n),
                    CountKind::Lz => self.b.ins().clz(n),
                    CountKind::Pop => self.b.ins().popcnt(n),
                };
                let r = if ty == types::I64 { r } else { self.b.ins().uextend(types::I64, r) };
                self.write_reg(dst, r);
                // TZCNT, LZCNT: CF for a zero source, ZF for a zero result;
                // POPCNT: ZF for a zero source; the rest clear.
                let src_zero = self.b.ins().icmp_imm_s(IntCC::Equal, v, 0);
                let src_zero = self.b.ins().uextend(types::I64, src_zero);
                let f = if kind == CountKind::Pop {
                    self.b.ins().ishl_imm_s(src_zero, 6)
                } else {
                    let rz = self.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
                    let rz = self.b.ins().uextend(types::I64, rz);
                    let zf = self.b.ins().ishl_imm_s(rz, 6);
                    self.b.ins().bor(src_zero, zf)
                };
                self.set_all(f);
            }
            Form::BitScan { reverse, dst, src } => {
                let size = dst.size;
                let v = self.read(src, insn, size, rip);
                let zero = self.b.ins().icmp_imm_s(IntCC::Equal, v, 0);
                let idx = if reverse {
                    let lz = self.b.ins().clz(v);
                    let top = self.iconst(63);
                    self.b.ins().isub(top, lz)
                } else {
                    self.b.ins().ctz(v)
                };
                // A zero source leaves the destination as it is (all 64
                // bits) and sets ZF; only ZF changes.
                let old = self.gpr64(dst.idx);
                let out = self.b.ins().select(zero, old, idx);
                self.set_gpr64(dst.idx, out);
                let zf = self.b.ins().uextend(types::I64, zero);
                let zf = self.b.ins().ishl_imm_s(zf, 6);
                self.set_partial(flags::ARITH & !flags::ZF, zf);
            }
            Form::Imul { dst, src, imm } => {
                let size = dst.size;
                let y = self.read(src, insn, size, rip);
                let x = match imm {
                    Some(v) => self.iconst(v & mask(size)),
                    None => self.read_reg(dst),
                };
                let (lo, ovf) = if size == 8 {
                    let lo = self.b.ins().imul(x, y);
                    let hi = self.b.ins().smulhi(x, y);
                    let sign = self.b.ins().sshr_imm_s(lo, 63);
                    (lo, self.b.ins().icmp(IntCC::NotEqual, hi, sign))
                } else {
                    let sx = |tx: &mut Self, v: Value| {
                        let t = tx.b.ins().ishl_imm_s(v, 32);
                        tx.b.ins().sshr_imm_s(t, 32)
                    };
                    let (xs, ys) = (sx(self, x), sx(self, y));
                    let p = self.b.ins().imul(xs, ys);
                    let lo = self.b.ins().band_imm_s(p, 0xffff_ffff);
                    let back = sx(self, lo);
                    (lo, self.b.ins().icmp(IntCC::NotEqual, back, p))
                };
                self.write_reg(dst, lo);
                let ovf = self.b.ins().uextend(types::I64, ovf);
                let cfo = self.b.ins().imul_imm_s(ovf, (flags::CF | flags::OF) as i64);
                let szp = self.szp(lo, size);
                let fv = self.b.ins().bor(cfo, szp);
                self.set_all(fv);
            }
            Form::MulDiv { div, signed, src, size } => self.emit_mul_div(div, signed, src, size, insn, rip),
            Form::Bt { op, dst, src, size } => {
                let bits = i64::from(size * 8);
                // A memory operand with a register bit offset: the unit of
                // the bit string the offset selects.
                let mut at = None;
                let bit = match src {
                    Opnd::Imm(v) => self.iconst(v & (bits as u64 - 1)),
                    Opnd::Reg(r) => {
                        let v = self.read_reg(r);
                        if matches!(dst, Opnd::Mem) {
                            at = Some(self.bit_string_offset(insn, v, size));
                        }
                        self.b.ins().band_imm_s(v, bits - 1)
                    }
                    Opnd::Mem => unreachable!("classify refuses a memory bit offset"),
                };
                let seg = cpu::ops::mem_seg(insn);
                let (v, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    _ => {
                        let o = match at {
                            Some(o) => o,
                            None => self.ea(insn),
                        };
                        at = Some(o);
                        let (v, h) = self.load_at(seg, o, size, rip, op != BtOp::Test);
                        (v, Some(h))
                    }
                };
                let cf = self.b.ins().ushr(v, bit);
                let cf = self.b.ins().band_imm_s(cf, 1);
                let one = self.iconst(1);
                let m = self.b.ins().ishl(one, bit);
                let out = match op {
                    BtOp::Test => None,
                    BtOp::Set => Some(self.b.ins().bor(v, m)),
                    BtOp::Reset => Some(self.b.ins().band_not(v, m)),
                    BtOp::Complement => Some(self.b.ins().bxor(v, m)),
                };
                // Only CF changes.
                let keep = flags::ARITH & !flags::CF;
                match (dst, out, at) {
                    (Opnd::Reg(r), Some(o), _) => {
                        self.write_reg(r, o);
                        self.set_partial(keep, cf);
                    }
                    (_, Some(o), Some(ea)) => {
                        let leave = self.store_at(seg, ea, size, o, rip, haddr);
                        self.set_partial(keep, cf);
                        self.after_store(leave, next);
                    }
                    _ => self.set_partial(keep, cf),
                }
            }
            _ => unreachable!("not an arithmetic form: {f:?}"),
        }
        false
    }

    /// MUL, one-operand IMUL, DIV and IDIV of `size` bytes: the
    /// accumulator (AL, or rAX with rDX for a divide's dividend) with the
    /// source, into AX (AL and AH) or rDX:rAX, as the interpreter's
    /// `cpu::ops::arith`. A multiply sets CF = OF (the product does not fit
    /// the low half), SF, ZF and PF of the low half, and clears AF; a divide
    /// leaves the flags and takes the slow path where the interpreter raises
    /// #DE.
    fn emit_mul_div(&mut self, div: bool, signed: bool, src: Opnd, size: u32, insn: &Instruction, rip: u64) {
        let d = self.read(src, insn, size, rip);
        let (ra, rd) = match size {
            1 => (Register::AX, Register::AX),
            2 => (Register::AX, Register::DX),
            4 => (Register::EAX, Register::EDX),
            _ => (Register::RAX, Register::RDX),
        };
        let (ra, rd) = (reg(ra).expect("a GPR"), reg(rd).expect("a GPR"));
        // The accumulator's low half (AL, AX, EAX, RAX) and, for a divide,
        // the dividend's high half (AH, DX, EDX, RDX).
        let acc = self.read_reg(ra);
        let a = if size == 1 { self.b.ins().band_imm_s(acc, 0xff) } else { acc };
        let (lo, hi) = if div {
            let hi = if size == 1 { self.b.ins().ushr_imm_s(acc, 8) } else { self.read_reg(rd) };
            // The instructions before count, in case the slow path leaves.
            self.flush_count();
            if signed {
                self.signed_divide(a, hi, d, size, rip)
            } else {
                self.unsigned_divide(a, hi, d, size, rip)
            }
        } else {
            let (lo, hi, ovf) = self.multiply(signed, a, d, size);
            let ovf = self.b.ins().uextend(types::I64, ovf);
            let cfo = self.b.ins().imul_imm_s(ovf, (flags::CF | flags::OF) as i64);
            let szp = self.szp(lo, size);
            let f = self.b.ins().bor(cfo, szp);
            self.set_all(f);
            (lo, hi)
        };
        if size == 1 {
            // AL the low half, AH the high one.
            let h = self.b.ins().ishl_imm_s(hi, 8);
            let ax = self.b.ins().bor(lo, h);
            self.write_reg(ra, ax);
        } else {
            self.write_reg(ra, lo);
            self.write_reg(rd, hi);
        }
    }

    /// The product of `a` and `d` (`size` bytes each, zero-extended;
    /// signed for IMUL): its low and high halves (masked to `size`), and
    /// whether it does not fit the low half.
    fn multiply(&mut self, signed: bool, a: Value, d: Value, size: u32) -> (Value, Value, Value) {
        let m = mask(size) as i64;
        if size == 8 {
            let lo = self.b.ins().imul(a, d);
            if signed {
                let hi = self.b.ins().smulhi(a, d);
                let sign = self.b.ins().sshr_imm_s(lo, 63);
                let ovf = self.b.ins().icmp(IntCC::NotEqual, hi, sign);
                return (lo, hi, ovf);
            }
            let hi = self.b.ins().umulhi(a, d);
            let ovf = self.b.ins().icmp_imm_s(IntCC::NotEqual, hi, 0);
            return (lo, hi, ovf);
        }
        // Up to 32 × 32 bits: the whole product in 64.
        let bits = i64::from(size * 8);
        let (x, y) = if signed { (self.sext(a, size), self.sext(d, size)) } else { (a, d) };
        let p = self.b.ins().imul(x, y);
        let lo = self.b.ins().band_imm_s(p, m);
        let hi = if signed { self.b.ins().sshr_imm_s(p, bits) } else { self.b.ins().ushr_imm_s(p, bits) };
        let hi = self.b.ins().band_imm_s(hi, m);
        let ovf = if signed {
            let back = self.sext(lo, size);
            self.b.ins().icmp(IntCC::NotEqual, back, p)
        } else {
            self.b.ins().icmp_imm_s(IntCC::NotEqual, hi, 0)
        };
        (lo, hi, ovf)
    }

    /// `v` (its low `size` bytes) sign-extended to 64 bits.
    fn sext(&mut self, v: Value, size: u32) -> Value {
        if size == 8 {
            return v;
        }
        let sh = i64::from(64 - size * 8);
        let t = self.b.ins().ishl_imm_s(v, sh);
        self.b.ins().sshr_imm_s(t, sh)
    }

    /// DIV of `hi:lo` (each `size` bytes) by `d`: the quotient and the
    /// remainder. `hi < d` is the whole test: the quotient fits (and `d` is
    /// not zero); else the slow path.
    fn unsigned_divide(&mut self, lo: Value, hi: Value, d: Value, size: u32, rip: u64) -> (Value, Value) {
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, hi, d);
        self.slow_unless(ok, rip);
        if size < 8 {
            let h = self.b.ins().ishl_imm_s(hi, i64::from(size * 8));
            let n = self.b.ins().bor(h, lo);
            return (self.b.ins().udiv(n, d), self.b.ins().urem(n, d));
        }
        // A 64-bit dividend divides inline, a wider one in a helper.
        let narrow = self.b.create_block();
        let wide = self.b.create_block();
        let join = self.b.create_block();
        let i64t = types::I64;
        self.b.append_block_param(join, i64t);
        self.b.append_block_param(join, i64t);
        self.b.ins().brif(hi, wide, &[], narrow, &[]);
        self.enter_block(narrow);
        let q = self.b.ins().udiv(lo, d);
        let r = self.b.ins().urem(lo, d);
        self.b.ins().jump(join, &[q.into(), r.into()]);
        self.enter_block(wide);
        let callee = self.helper(Helper::Udiv128);
        let out = self.b.ins().iadd_imm_s(self.ctx, i64::from(off::SCRATCH));
        let call = self.b.ins().call_indirect(self.sig_div, callee, &[hi, lo, d, out]);
        let q = self.b.inst_results(call)[0];
        let r = self.b.ins().load(i64t, mem_flags(), self.ctx, off::SCRATCH);
        self.b.ins().jump(join, &[q.into(), r.into()]);
        self.enter_block(join);
        let p = self.b.block_params(join);
        (p[0], p[1])
    }

    /// IDIV of `hi:lo` (each `size` bytes, the dividend signed) by `d`: the
    /// quotient and the remainder (truncated division), masked to `size`.
    /// A zero divisor or a quotient outside the signed range of `size`
    /// takes the slow path.
    fn signed_divide(&mut self, lo: Value, hi: Value, d: Value, size: u32, rip: u64) -> (Value, Value) {
        let i64t = types::I64;
        let ds = self.sext(d, size);
        if size < 8 {
            // The dividend (at most 64 bits) and the divisor sign-extended:
            // a zero divisor, and for 32 bits the one 64-bit division that
            // overflows (-2^63 / -1), go to the slow path first.
            let h = self.b.ins().ishl_imm_s(hi, i64::from(size * 8));
            let n = self.b.ins().bor(h, lo);
            let n = if size == 4 { n } else { self.sext(n, size * 2) };
            let mut ok = self.b.ins().icmp_imm_s(IntCC::NotEqual, ds, 0);
            if size == 4 {
                let min = self.b.ins().icmp_imm_s(IntCC::Equal, n, i64::MIN);
                let minus1 = self.b.ins().icmp_imm_s(IntCC::Equal, ds, -1);
                let both = self.b.ins().band(min, minus1);
                ok = self.b.ins().band_not(ok, both);
            }
            self.slow_unless(ok, rip);
            let q = self.b.ins().sdiv(n, ds);
            let r = self.b.ins().srem(n, ds);
            // The quotient must fit `size` bytes, signed.
            let m = mask(size) as i64;
            let ql = self.b.ins().band_imm_s(q, m);
            let back = self.sext(ql, size);
            let fits = self.b.ins().icmp(IntCC::Equal, back, q);
            self.slow_unless(fits, rip);
            let rl = self.b.ins().band_imm_s(r, m);
            return (ql, rl);
        }
        // 128 bits: a dividend that is RAX sign-extended divides inline
        // (only -2^63 / -1 overflows, and 0 has no quotient); a wider one in
        // a helper, which reports #DE as a remainder of -2^63.
        let narrow = self.b.create_block();
        let wide = self.b.create_block();
        let join = self.b.create_block();
        self.b.append_block_param(join, i64t);
        self.b.append_block_param(join, i64t);
        let sign = self.b.ins().sshr_imm_s(lo, 63);
        let fits = self.b.ins().icmp(IntCC::Equal, hi, sign);
        self.b.ins().brif(fits, narrow, &[], wide, &[]);
        self.enter_block(narrow);
        let nonzero = self.b.ins().icmp_imm_s(IntCC::NotEqual, ds, 0);
        let min = self.b.ins().icmp_imm_s(IntCC::Equal, lo, i64::MIN);
        let minus1 = self.b.ins().icmp_imm_s(IntCC::Equal, ds, -1);
        let both = self.b.ins().band(min, minus1);
        let ok = self.b.ins().band_not(nonzero, both);
        self.slow_unless(ok, rip);
        let q = self.b.ins().sdiv(lo, ds);
        let r = self.b.ins().srem(lo, ds);
        self.b.ins().jump(join, &[q.into(), r.into()]);
        self.enter_block(wide);
        let callee = self.helper(Helper::Idiv128);
        let out = self.b.ins().iadd_imm_s(self.ctx, i64::from(off::SCRATCH));
        let call = self.b.ins().call_indirect(self.sig_div, callee, &[hi, lo, d, out]);
        let q = self.b.inst_results(call)[0];
        let r = self.b.ins().load(i64t, mem_flags(), self.ctx, off::SCRATCH);
        let ok = self.b.ins().icmp_imm_s(IntCC::NotEqual, r, i64::MIN);
        self.slow_unless(ok, rip);
        self.b.ins().jump(join, &[q.into(), r.into()]);
        self.enter_block(join);
        let p = self.b.block_params(join);
        (p[0], p[1])
    }

    /// The offset in its segment of the unit of a bit string that BT, BTS,
    /// BTR or BTC with a memory operand and the bit offset `v` (a register
    /// of `size` bytes, zero-extended) address: the offset is signed, and
    /// `EA + (offset >> log2(size * 8)) * size` wraps in the address size.
    pub(super) fn bit_string_offset(&mut self, insn: &Instruction, v: Value, size: u32) -> Value {
        let ext = i64::from(64 - size * 8);
        let t = self.b.ins().ishl_imm_s(v, ext);
        let off = self.b.ins().sshr_imm_s(t, ext);
        let unit = self.b.ins().sshr_imm_s(off, i64::from((size * 8).trailing_zeros()));
        let disp = self.b.ins().ishl_imm_s(unit, i64::from(size.trailing_zeros()));
        let ea = self.ea(insn);
        let a = self.b.ins().iadd(ea, disp);
        match bit_string_mask(insn, self.bits) {
            u64::MAX => a,
            m => self.b.ins().band_imm_s(a, m as i64),
        }
    }

    fn alu_flags(&mut self, op: Alu, size: u32, r: Value, a: Value, bv: Value, cin: Option<Value>) {
        match op {
            Alu::Add => self.set_lazy(FlagOp::Add, size, r, a, bv, None),
            Alu::Sub | Alu::Cmp => self.set_lazy(FlagOp::Sub, size, r, a, bv, None),
            Alu::Adc => self.set_lazy(FlagOp::Adc, size, r, a, bv, cin),
            Alu::Sbb => self.set_lazy(FlagOp::Sbb, size, r, a, bv, cin),
            Alu::And | Alu::Or | Alu::Xor | Alu::Test => self.set_lazy(FlagOp::Logic, size, r, a, bv, None),
        }
    }
}
