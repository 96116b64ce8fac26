//! Shifts and rotates: by an immediate or by CL, of registers and memory,
//! and the double shifts.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use iced_x86::Instruction;

use cpu::state::flags;

use super::mask;
use crate::translate::classify::{Form, Reg, Shift};
use crate::translate::flags::Known;
use crate::translate::state::Tx;

impl Tx<'_, '_> {
    /// Translate the shift or rotate form `f`. True if it ended the guest
    /// block.
    pub(super) fn emit_shift(&mut self, f: &Form, insn: &Instruction, rip: u64, next: u64) -> bool {
        match *f {
            Form::Shift { op, dst, count } => {
                let size = dst.size;
                let a = self.read_reg(dst);
                if count == 0 {
                    self.write_reg(dst, a);
                    return false;
                }
                let bits = i64::from(size * 8);
                let c = i64::from(count);
                let (r, cf, of) = match op {
                    Shift::Shl | Shift::Shr | Shift::Sar => self.shift_imm(op, a, size, count),
                    Shift::Rol | Shift::Ror => {
                        // Rotates change CF and OF only: the other four
                        // come from the flags as they are.
                        let v = if size == 8 { a } else { self.b.ins().ireduce(types::I32, a) };
                        let amount = self.b.ins().iconst(types::I32, c);
                        let rv =
                            if op == Shift::Rol { self.b.ins().rotl(v, amount) } else { self.b.ins().rotr(v, amount) };
                        let r = if size == 8 { rv } else { self.b.ins().uextend(types::I64, rv) };
                        let msb = self.sign_bit(r, size);
                        let (cf, of) = if op == Shift::Rol {
                            let cf = self.b.ins().band_imm_s(r, 1);
                            (cf, self.b.ins().bxor(msb, cf))
                        } else {
                            let next = self.b.ins().ushr_imm_s(r, bits - 2);
                            let next = self.b.ins().band_imm_s(next, 1);
                            (msb, self.b.ins().bxor(msb, next))
                        };
                        self.write_reg(dst, r);
                        let ofb = self.b.ins().ishl_imm_s(of, 11);
                        let f = self.b.ins().bor(cf, ofb);
                        self.set_partial(flags::ARITH & !(flags::CF | flags::OF), f);
                        return false;
                    }
                };
                self.write_reg(dst, r);
                let ofb = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, ofb);
                let szp = self.szp(r, size);
                let f = self.b.ins().bor(f, szp);
                self.set_all(f);
            }
            Form::ShiftCl { op, dst } => {
                let size = dst.size;
                let bits = i64::from(size * 8);
                let m = mask(size) as i64;
                let a = self.read_reg(dst);
                let cl = self.gpr64(1);
                let count = self.b.ins().band_imm_s(cl, bits - 1);
                let sa = if size == 8 {
                    a
                } else {
                    let t = self.b.ins().ishl_imm_s(a, 32);
                    self.b.ins().sshr_imm_s(t, 32)
                };
                // Where the count is 0 these are not used.
                let before = self.b.ins().iadd_imm_s(count, -1);
                let (r, cf, of) = match op {
                    Shift::Shl => {
                        let r = self.b.ins().ishl(a, count);
                        let r = self.b.ins().band_imm_s(r, m);
                        // The last bit out: bit `bits - count` of `a`.
                        let t = self.b.ins().ishl(a, before);
                        let cf = self.b.ins().ushr_imm_s(t, bits - 1);
                        let cf = self.b.ins().band_imm_s(cf, 1);
                        let msb = self.sign_bit(r, size);
                        (r, cf, self.b.ins().bxor(msb, cf))
                    }
                    Shift::Shr => {
                        let r = self.b.ins().ushr(a, count);
                        let t = self.b.ins().ushr(a, before);
                        let cf = self.b.ins().band_imm_s(t, 1);
                        (r, cf, self.sign_bit(a, size))
                    }
                    _ => {
                        let r = self.b.ins().sshr(sa, count);
                        let r = self.b.ins().band_imm_s(r, m);
                        let t = self.b.ins().sshr(sa, before);
                        let cf = self.b.ins().band_imm_s(t, 1);
                        (r, cf, self.iconst(0))
                    }
                };
                let ofb = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, ofb);
                let szp = self.szp(r, size);
                let f = self.b.ins().bor(f, szp);
                self.shifted_by(count, dst, a, r, f);
            }
            Form::ShiftMem { op, size, count } => {
                let (a, haddr) = self.load(insn, size, rip, true);
                let (r, cf, of) = self.shift_imm(op, a, size, count);
                let seg = cpu::ops::mem_seg(insn);
                let o = self.ea(insn);
                let leave = self.store_at(seg, o, size, r, rip, Some(haddr));
                let ofb = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, ofb);
                let szp = self.szp(r, size);
                let f = self.b.ins().bor(f, szp);
                self.set_all(f);
                self.after_store(leave, next);
            }
            Form::DoubleShift { left, dst, src, count } => {
                let size = dst.size;
                let bits = i64::from(size * 8);
                let m = mask(size) as i64;
                let a = self.read_reg(dst);
                let b = self.read_reg(src);
                let c = match count {
                    Some(0) => {
                        // No flag changes; a 32-bit register is still
                        // written (zero-extended).
                        self.write_reg(dst, a);
                        return false;
                    }
                    Some(n) => self.iconst(u64::from(n)),
                    None => {
                        let cl = self.gpr64(1);
                        self.b.ins().band_imm_s(cl, bits - 1)
                    }
                };
                // Where the count is 0 these are not used (the shifts stay
                // below 64 whatever it is).
                let c1 = self.b.ins().iadd_imm_s(c, -1);
                let c1 = self.b.ins().band_imm_s(c1, 63);
                let (r, cf) = if size == 8 {
                    let back = self.iconst(64);
                    let back = self.b.ins().isub(back, c);
                    let back = self.b.ins().band_imm_s(back, 63);
                    if left {
                        let hi = self.b.ins().ishl(a, c);
                        let lo = self.b.ins().ushr(b, back);
                        let r = self.b.ins().bor(hi, lo);
                        let cf = self.b.ins().ushr(a, back);
                        (r, self.b.ins().band_imm_s(cf, 1))
                    } else {
                        let lo = self.b.ins().ushr(a, c);
                        let hi = self.b.ins().ishl(b, back);
                        let r = self.b.ins().bor(hi, lo);
                        let cf = self.b.ins().ushr(a, c1);
                        (r, self.b.ins().band_imm_s(cf, 1))
                    }
                } else if left {
                    // dst:src as 64 bits, shifted left; the result is its
                    // high half.
                    let hi = self.b.ins().ishl_imm_s(a, 32);
                    let wide = self.b.ins().bor(hi, b);
                    let sh = self.b.ins().ishl(wide, c);
                    let r = self.b.ins().ushr_imm_s(sh, 32);
                    let back = self.iconst(64);
                    let back = self.b.ins().isub(back, c);
                    let back = self.b.ins().band_imm_s(back, 63);
                    let cf = self.b.ins().ushr(wide, back);
                    (r, self.b.ins().band_imm_s(cf, 1))
                } else {
                    // src:dst as 64 bits, shifted right; the result is its
                    // low half.
                    let hi = self.b.ins().ishl_imm_s(b, 32);
                    let wide = self.b.ins().bor(hi, a);
                    let sh = self.b.ins().ushr(wide, c);
                    let r = self.b.ins().band_imm_s(sh, m);
                    let cf = self.b.ins().ushr(wide, c1);
                    (r, self.b.ins().band_imm_s(cf, 1))
                };
                // CF the last bit out, OF where the sign changed, SF, ZF,
                // PF of the result, AF clear (as the interpreter sets them).
                let x = self.b.ins().bxor(r, a);
                let of = self.b.ins().ushr_imm_s(x, bits - 1);
                let of = self.b.ins().band_imm_s(of, 1);
                let ofb = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, ofb);
                let szp = self.szp(r, size);
                let f = self.b.ins().bor(f, szp);
                match count {
                    Some(_) => {
                        self.write_reg(dst, r);
                        self.set_all(f);
                    }
                    None => self.shifted_by(c, dst, a, r, f),
                }
            }
            _ => unreachable!("not a shift form: {f:?}"),
        }
        false
    }

    /// SHL, SHR or SAR of `a` (`size` bytes) by `count` (1 to the width
    /// less one): the result, CF and OF (0 or 1).
    fn shift_imm(&mut self, op: Shift, a: Value, size: u32, count: u32) -> (Value, Value, Value) {
        let m = mask(size) as i64;
        let bits = i64::from(size * 8);
        let c = i64::from(count);
        match op {
            Shift::Shl => {
                let r = self.b.ins().ishl_imm_s(a, c);
                let r = self.b.ins().band_imm_s(r, m);
                let cf = self.b.ins().ushr_imm_s(a, bits - c);
                let cf = self.b.ins().band_imm_s(cf, 1);
                let msb = self.sign_bit(r, size);
                let of = self.b.ins().bxor(msb, cf);
                (r, cf, of)
            }
            Shift::Shr => {
                let r = self.b.ins().ushr_imm_s(a, c);
                let cf = self.b.ins().ushr_imm_s(a, c - 1);
                let cf = self.b.ins().band_imm_s(cf, 1);
                let of = self.sign_bit(a, size);
                (r, cf, of)
            }
            Shift::Sar => {
                let sh = 64 - bits;
                let sa = if sh > 0 {
                    let t = self.b.ins().ishl_imm_s(a, sh);
                    self.b.ins().sshr_imm_s(t, sh)
                } else {
                    a
                };
                let r = self.b.ins().sshr_imm_s(sa, c);
                let r = self.b.ins().band_imm_s(r, m);
                let cf = self.b.ins().sshr_imm_s(sa, c - 1);
                let cf = self.b.ins().band_imm_s(cf, 1);
                (r, cf, self.iconst(0))
            }
            _ => unreachable!("rotates are not shifts"),
        }
    }

    /// The end of a shift by a computed `count`: `dst` becomes `r` with
    /// flags `f`, except that a count of 0 changes no flag (the register
    /// is still written: a 32-bit one is zero-extended from `a`).
    fn shifted_by(&mut self, count: Value, dst: Reg, a: Value, r: Value, f: Value) {
        let zero = self.b.ins().icmp_imm_s(IntCC::Equal, count, 0);
        let out = self.b.ins().select(zero, a, r);
        self.write_reg(dst, out);
        self.sync();
        let set = self.b.create_block();
        let join = self.b.create_block();
        self.b.ins().brif(zero, join, &[], set, &[]);
        self.enter_block(set);
        self.store_eager(f);
        self.b.ins().jump(join, &[]);
        self.enter_block(join);
        self.known = Known::Unknown;
    }
}
