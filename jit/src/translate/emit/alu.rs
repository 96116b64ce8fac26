//! Arithmetic and logic: the ALU operations, INC, DEC, NEG, NOT, IMUL, MUL
//! and DIV, bit counts and scans, and the bit tests.

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
            Form::MulDiv { div, src, size } => {
                let d = self.read(src, insn, size, rip);
                let (ra, rd) = if size == 8 { (Register::RAX, Register::RDX) } else { (Register::EAX, Register::EDX) };
                let (ra, rd) = (reg(ra).expect("a GPR"), reg(rd).expect("a GPR"));
                let a = self.read_reg(ra);
                let (lo, hi) = if div {
                    // The instructions before count, in case the slow path
                    // leaves.
                    self.flush_count();
                    // Without overflow (or a zero divisor) at once; else
                    // the interpreter raises #DE or divides 128 bits.
                    let hi = self.read_reg(rd);
                    if size == 8 {
                        // hi < d: the quotient fits 64 bits (and d != 0).
                        // A 64-bit dividend divides inline, a wider one in
                        // a helper.
                        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, hi, d);
                        self.slow_unless(ok, rip);
                        let narrow = self.b.create_block();
                        let wide = self.b.create_block();
                        let join = self.b.create_block();
                        let i64t = types::I64;
                        self.b.append_block_param(join, i64t);
                        self.b.append_block_param(join, i64t);
                        self.b.ins().brif(hi, wide, &[], narrow, &[]);
                        self.enter_block(narrow);
                        let q = self.b.ins().udiv(a, d);
                        let r = self.b.ins().urem(a, d);
                        self.b.ins().jump(join, &[q.into(), r.into()]);
                        self.enter_block(wide);
                        let callee = self.helper(Helper::Udiv128);
                        let out = self.b.ins().iadd_imm_s(self.ctx, i64::from(off::SCRATCH));
                        let call = self.b.ins().call_indirect(self.sig_div, callee, &[hi, a, d, out]);
                        let q = self.b.inst_results(call)[0];
                        let r = self.b.ins().load(i64t, mem_flags(), self.ctx, off::SCRATCH);
                        self.b.ins().jump(join, &[q.into(), r.into()]);
                        self.enter_block(join);
                        let p = self.b.block_params(join);
                        (p[0], p[1])
                    } else {
                        // hi < d: the quotient fits 32 bits (and d != 0).
                        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, hi, d);
                        self.slow_unless(ok, rip);
                        let h = self.b.ins().ishl_imm_s(hi, 32);
                        let n = self.b.ins().bor(h, a);
                        (self.b.ins().udiv(n, d), self.b.ins().urem(n, d))
                    }
                } else if size == 8 {
                    (self.b.ins().imul(a, d), self.b.ins().umulhi(a, d))
                } else {
                    let p = self.b.ins().imul(a, d);
                    (self.b.ins().band_imm_s(p, 0xffff_ffff), self.b.ins().ushr_imm_s(p, 32))
                };
                self.write_reg(ra, lo);
                self.write_reg(rd, hi);
                if !div {
                    // CF = OF = a high half; SF, ZF, PF of the low (as the
                    // interpreter sets them); AF clear.
                    let ovf = self.b.ins().icmp_imm_s(IntCC::NotEqual, hi, 0);
                    let ovf = self.b.ins().uextend(types::I64, ovf);
                    let cfo = self.b.ins().imul_imm_s(ovf, (flags::CF | flags::OF) as i64);
                    let szp = self.szp(lo, size);
                    let f = self.b.ins().bor(cfo, szp);
                    self.set_all(f);
                }
            }
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
