//! Scalar floating point: COMIS, the scalar arithmetic and the conversions
//! from integers, at once where MXCSR would not change.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use iced_x86::Instruction;

use crate::translate::classify::{Form, FpOp, VecSrc};
use crate::translate::state::{guest_flags, mem_flags, Tx, MXCSR_OFF, XMM_OFF};

impl Tx<'_, '_> {
    /// Translate the scalar floating-point form `f`: COMIS, scalar
    /// arithmetic, a conversion from an integer. True if it ended the guest
    /// block.
    pub(super) fn emit_fp(&mut self, f: &Form, insn: &Instruction, rip: u64) -> bool {
        match *f {
            Form::Comis { double, a, b } => {
                let (x, y) = self.scalar_operands(double, a, b, insn, rip);
                let fty = if double { types::F64 } else { types::F32 };
                // Neither a NaN nor a denormal (which set MXCSR flags): a
                // zero fraction (zeros, infinities) or a normal number.
                let (_, xn, xf) = self.fp_class(x, double);
                let (_, yn, yf) = self.fp_class(y, double);
                let px = self.b.ins().bor(xf, xn);
                let py = self.b.ins().bor(yf, yn);
                let ok = self.b.ins().band(px, py);
                self.slow_unless(ok, rip);
                let fx = self.b.ins().bitcast(fty, MemFlagsData::new(), x);
                let fy = self.b.ins().bitcast(fty, MemFlagsData::new(), y);
                let eq = self.b.ins().fcmp(FloatCC::Equal, fx, fy);
                let lt = self.b.ins().fcmp(FloatCC::LessThan, fx, fy);
                let eq = self.b.ins().uextend(types::I64, eq);
                let lt = self.b.ins().uextend(types::I64, lt);
                let zf = self.b.ins().ishl_imm_s(eq, 6);
                let f = self.b.ins().bor(zf, lt);
                self.set_eager(f);
            }
            Form::ScalarFp { op, double, dst, src } => {
                let (x, y) = self.scalar_operands(double, dst, src, insn, rip);
                let (ity, fty) = if double { (types::I64, types::F64) } else { (types::I32, types::F32) };
                let fx = self.b.ins().bitcast(fty, MemFlagsData::new(), x);
                let fy = self.b.ins().bitcast(fty, MemFlagsData::new(), y);
                let fr = match op {
                    FpOp::Add => self.b.ins().fadd(fx, fy),
                    FpOp::Sub => self.b.ins().fsub(fx, fy),
                    FpOp::Mul => self.b.ins().fmul(fx, fy),
                    FpOp::Div => self.b.ins().fdiv(fx, fy),
                };
                let r = self.b.ins().bitcast(ity, MemFlagsData::new(), fr);
                // Finite operands that are zero or normal (a divisor
                // normal); a finite result, zero or normal, and zero only
                // where exact (a sum, or a zero among the factors, or a
                // zero dividend).
                let (xz, xn, _) = self.fp_class(x, double);
                let (yz, yn, _) = self.fp_class(y, double);
                let (rz, rn, _) = self.fp_class(r, double);
                let x_ok = self.b.ins().bor(xz, xn);
                let y_ok = if op == FpOp::Div { yn } else { self.b.ins().bor(yz, yn) };
                let zero_ok = match op {
                    FpOp::Add | FpOp::Sub => self.b.ins().iconst(types::I8, 1),
                    FpOp::Mul => self.b.ins().bor(xz, yz),
                    FpOp::Div => xz,
                };
                let r_zero = self.b.ins().band(rz, zero_ok);
                let r_ok = self.b.ins().bor(rn, r_zero);
                let plain = self.b.ins().band(x_ok, y_ok);
                let plain = self.b.ins().band(plain, r_ok);
                // With PE set and masked, inexact is fine; else the result
                // must be exact (no flag at all).
                let (quiet, nearest) = self.fp_env();
                let ok = self.b.ins().band(plain, quiet);
                let done = self.b.create_block();
                let check = self.b.create_block();
                self.b.ins().brif(ok, done, &[], check, &[]);
                self.enter_block(check);
                let exact = match op {
                    FpOp::Add => self.fp_sum_exact(fx, fy, fr),
                    FpOp::Sub => {
                        let ny = self.b.ins().fneg(fy);
                        self.fp_sum_exact(fx, ny, fr)
                    }
                    FpOp::Mul => {
                        let e = self.fp_product_error(fx, fy, fr, double);
                        let any_zero = self.b.ins().bor(xz, yz);
                        self.b.ins().bor(e, any_zero)
                    }
                    FpOp::Div => {
                        // q * y == x exactly.
                        let e = self.fp_product_error(fr, fy, fx, double);
                        self.b.ins().bor(e, xz)
                    }
                };
                let ok = self.b.ins().band(plain, nearest);
                let ok = self.b.ins().band(ok, exact);
                self.slow_unless(ok, rip);
                self.b.ins().jump(done, &[]);
                self.enter_block(done);
                let st = self.state;
                self.b.ins().store(guest_flags(), r, st, XMM_OFF + 16 * i32::from(dst));
            }
            Form::CvtInt { double, dst, src, size } => {
                self.sse_check(rip);
                let v = self.read(src, insn, size, rip);
                let v = if size == 8 { v } else { self.b.ins().ireduce(types::I32, v) };
                let (ity, fty) = if double { (types::I64, types::F64) } else { (types::I32, types::F32) };
                let f = self.b.ins().fcvt_from_sint(fty, v);
                // A 32-bit integer is exact in a double; otherwise only a
                // precision flag can arise: exact (the conversion back
                // gives the integer, which is not the largest one, where
                // the conversion back saturates), or PE already set and
                // masked.
                if !(double && size == 4) {
                    let (quiet, nearest) = self.fp_env();
                    let vty = if size == 8 { types::I64 } else { types::I32 };
                    let back = self.b.ins().fcvt_to_sint_sat(vty, f);
                    let same = self.b.ins().icmp(IntCC::Equal, back, v);
                    let max = if size == 8 { i64::MAX } else { i64::from(i32::MAX) };
                    let below = self.b.ins().icmp_imm_s(IntCC::NotEqual, v, max);
                    let exact = self.b.ins().band(same, below);
                    let exact = self.b.ins().band(exact, nearest);
                    let ok = self.b.ins().bor(exact, quiet);
                    self.slow_unless(ok, rip);
                }
                let r = self.b.ins().bitcast(ity, MemFlagsData::new(), f);
                let st = self.state;
                self.b.ins().store(guest_flags(), r, st, XMM_OFF + 16 * i32::from(dst));
            }
            _ => unreachable!("not a scalar floating-point form: {f:?}"),
        }
        false
    }

    /// The low lanes (32 or 64 bits, as integers) of XMM `a` and of `b`
    /// for a scalar SSE instruction, after the SSE check.
    fn scalar_operands(&mut self, double: bool, a: u8, b: VecSrc, insn: &Instruction, rip: u64) -> (Value, Value) {
        self.sse_check(rip);
        let (ity, w) = if double { (types::I64, 8) } else { (types::I32, 4) };
        let x = self.xmm_load(a, ity);
        let y = match b {
            VecSrc::Xmm(r) => self.xmm_load(r, ity),
            VecSrc::Mem => {
                let at = self.vec_host_addr(insn, w, false, false, rip);
                self.b.ins().load(ity, guest_flags(), at, 0)
            }
        };
        (x, y)
    }

    /// Of the float bits `v`: whether it is a zero, whether it is a normal
    /// number (neither zero, denormal, infinite nor NaN), and whether its
    /// fraction is zero (zeros and infinities).
    fn fp_class(&mut self, v: Value, double: bool) -> (Value, Value, Value) {
        let (ebits, fbits) = if double { (11, 52) } else { (8, 23) };
        let top = (1i64 << ebits) - 1;
        let e = self.b.ins().ushr_imm_s(v, fbits);
        let e = self.b.ins().band_imm_s(e, top);
        let frac = self.b.ins().band_imm_s(v, (1i64 << fbits) - 1);
        let e_zero = self.b.ins().icmp_imm_s(IntCC::Equal, e, 0);
        let f_zero = self.b.ins().icmp_imm_s(IntCC::Equal, frac, 0);
        let zero = self.b.ins().band(e_zero, f_zero);
        let e_low = self.b.ins().icmp_imm_s(IntCC::NotEqual, e, 0);
        let e_high = self.b.ins().icmp_imm_s(IntCC::NotEqual, e, top);
        (zero, self.b.ins().band(e_low, e_high), f_zero)
    }

    /// Of MXCSR: whether it rounds to nearest with PE set and masked (an
    /// inexact result changes nothing and raises nothing), and whether it
    /// rounds to nearest (an exact result is the host's).
    fn fp_env(&mut self) -> (Value, Value) {
        let st = self.state;
        let mx = self.b.ins().uload32(mem_flags(), st, MXCSR_OFF);
        let m = self.b.ins().band_imm_s(mx, 0x7020);
        let quiet = self.b.ins().icmp_imm_s(IntCC::Equal, m, 0x1020);
        let rc = self.b.ins().band_imm_s(mx, 0x6000);
        (quiet, self.b.ins().icmp_imm_s(IntCC::Equal, rc, 0))
    }

    /// Whether `s`, the rounded `a + b` (finite), is exact: the error term
    /// of the two-sum is zero (round to nearest on the host).
    fn fp_sum_exact(&mut self, a: Value, b: Value, s: Value) -> Value {
        let bb = self.b.ins().fsub(s, a);
        let ab = self.b.ins().fsub(s, bb);
        let ea = self.b.ins().fsub(a, ab);
        let eb = self.b.ins().fsub(b, bb);
        let err = self.b.ins().fadd(ea, eb);
        let zero = self.fp_zero(err);
        self.b.ins().fcmp(FloatCC::Equal, err, zero)
    }

    /// Whether `p == a * b` exactly (all normal): the product's error term
    /// by Dekker's splitting is zero and the rounded product is `p`. Only
    /// for magnitudes where no step overflows or underflows (exponents
    /// within ±400 for doubles, ±40 for singles); false elsewhere.
    fn fp_product_error(&mut self, a: Value, b: Value, p: Value, double: bool) -> Value {
        let (ity, fbits, bias, k, split) = if double {
            (types::I64, 52, 1023i64, 400i64, 134_217_729.0f64)
        } else {
            (types::I32, 23, 127, 40, 4097.0)
        };
        let c = if double { self.b.ins().f64const(split) } else { self.b.ins().f32const(split as f32) };
        let mut in_range = self.b.ins().iconst(types::I8, 1);
        for v in [a, b, p] {
            let bits = self.b.ins().bitcast(ity, MemFlagsData::new(), v);
            let e = self.b.ins().ushr_imm_s(bits, fbits);
            let e = self.b.ins().band_imm_s(e, if double { 0x7ff } else { 0xff });
            let lo = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, e, bias - k);
            let hi = self.b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, e, bias + k);
            let r = self.b.ins().band(lo, hi);
            in_range = self.b.ins().band(in_range, r);
        }
        let mut halves = |x: Value| {
            let t = self.b.ins().fmul(c, x);
            let d = self.b.ins().fsub(t, x);
            let hi = self.b.ins().fsub(t, d);
            (hi, self.b.ins().fsub(x, hi))
        };
        let (ah, al) = halves(a);
        let (bh, bl) = halves(b);
        let q = self.b.ins().fmul(a, b);
        let hh = self.b.ins().fmul(ah, bh);
        let e = self.b.ins().fsub(hh, q);
        let hl = self.b.ins().fmul(ah, bl);
        let e = self.b.ins().fadd(e, hl);
        let lh = self.b.ins().fmul(al, bh);
        let e = self.b.ins().fadd(e, lh);
        let ll = self.b.ins().fmul(al, bl);
        let e = self.b.ins().fadd(e, ll);
        let zero = self.fp_zero(e);
        let no_err = self.b.ins().fcmp(FloatCC::Equal, e, zero);
        let same = self.b.ins().fcmp(FloatCC::Equal, q, p);
        let ok = self.b.ins().band(no_err, same);
        self.b.ins().band(ok, in_range)
    }

    fn fp_zero(&mut self, like: Value) -> Value {
        if self.b.func.dfg.value_type(like) == types::F64 {
            self.b.ins().f64const(0.0)
        } else {
            self.b.ins().f32const(0.0)
        }
    }
}
