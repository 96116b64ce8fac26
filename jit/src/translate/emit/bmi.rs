//! BMI1 and BMI2 on general registers: BZHI, SARX/SHLX/SHRX, RORX,
//! BLSI/BLSMSK/BLSR and ANDN, with the flags the interpreter's
//! `cpu::ops::bits` gives (none for the shifts and RORX).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder};
use iced_x86::Instruction;

use cpu::flags::FlagOp;

use super::mask;
use crate::translate::classify::{BlsKind, Form, Shift};
use crate::translate::state::Tx;

impl Tx<'_, '_> {
    /// Translate the BMI form `f`. True if it ended the guest block.
    pub(super) fn emit_bmi(&mut self, f: &Form, insn: &Instruction, rip: u64) -> bool {
        match *f {
            Form::Bzhi { dst, src, index } => {
                let size = dst.size;
                let v = self.read(src, insn, size, rip);
                let n = self.read_reg(index);
                let n = self.b.ins().band_imm_s(n, 0xff);
                // An index of the width or more keeps every bit and sets CF.
                let past = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, n, i64::from(size * 8));
                let ones = self.iconst(u64::MAX);
                let high = self.b.ins().ishl(ones, n);
                let below = self.b.ins().bnot(high);
                let all = self.iconst(mask(size));
                let m = self.b.ins().select(past, all, below);
                let r = self.b.ins().band(v, m);
                self.write_reg(dst, r);
                let f = self.szp(r, size);
                let cf = self.b.ins().uextend(types::I64, past);
                let f = self.b.ins().bor(f, cf);
                self.set_all(f);
            }
            Form::ShiftX { op, dst, src, count } => {
                let size = dst.size;
                let v = self.read(src, insn, size, rip);
                let c = self.read_reg(count);
                let c = self.b.ins().band_imm_s(c, i64::from(size * 8 - 1));
                let r = match op {
                    Shift::Shl => self.b.ins().ishl(v, c),
                    Shift::Shr => self.b.ins().ushr(v, c),
                    _ => {
                        let v = if size == 4 {
                            let t = self.b.ins().ireduce(types::I32, v);
                            self.b.ins().sextend(types::I64, t)
                        } else {
                            v
                        };
                        self.b.ins().sshr(v, c)
                    }
                };
                // (A 32-bit write keeps the low half.)
                self.write_reg(dst, r);
            }
            Form::Rorx { dst, src, count } => {
                let v = self.read(src, insn, dst.size, rip);
                let r = if dst.size == 8 {
                    self.b.ins().rotr_imm_s(v, i64::from(count))
                } else {
                    let t = self.b.ins().ireduce(types::I32, v);
                    let t = self.b.ins().rotr_imm_s(t, i64::from(count));
                    self.b.ins().uextend(types::I64, t)
                };
                self.write_reg(dst, r);
            }
            Form::Bls { kind, dst, src } => {
                let size = dst.size;
                let m = mask(size) as i64;
                let v = self.read(src, insn, size, rip);
                let dec = self.b.ins().iadd_imm_s(v, -1);
                let dec = self.b.ins().band_imm_s(dec, m);
                let (r, cf_if_zero) = match kind {
                    BlsKind::I => {
                        let neg = self.b.ins().ineg(v);
                        let r = self.b.ins().band(neg, v);
                        (self.b.ins().band_imm_s(r, m), false)
                    }
                    BlsKind::Msk => (self.b.ins().bxor(v, dec), true),
                    BlsKind::R => (self.b.ins().band(v, dec), true),
                };
                self.write_reg(dst, r);
                // CF: BLSI for a source that is not zero, BLSMSK and BLSR
                // for a zero one.
                let cc = if cf_if_zero { IntCC::Equal } else { IntCC::NotEqual };
                let cf = self.b.ins().icmp_imm_s(cc, v, 0);
                let cf = self.b.ins().uextend(types::I64, cf);
                let f = self.szp(r, size);
                let f = self.b.ins().bor(f, cf);
                self.set_all(f);
            }
            Form::Andn { dst, src1, src2 } => {
                let size = dst.size;
                let b = self.read(src2, insn, size, rip);
                let a = self.read_reg(src1);
                let r = self.b.ins().band_not(b, a);
                let r = self.b.ins().band_imm_s(r, mask(size) as i64);
                self.write_reg(dst, r);
                self.set_lazy(FlagOp::Logic, size, r, a, b, None);
            }
            _ => unreachable!("not a BMI form: {f:?}"),
        }
        false
    }
}
