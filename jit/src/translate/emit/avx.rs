//! The VEX-encoded AVX/AVX2 forms: packed-integer and bitwise operations
//! with three operands, moves of 16 and 32 bytes, VMOVD/VMOVQ, VPMOVMSKB,
//! the broadcasts, VPTEST and VZEROUPPER, the quadword moves
//! VMOVLPS/VMOVLPD/VMOVHPS/VMOVHPD and VMOVHLPS/VMOVLHPS, and VPCLMULQDQ
//! (VEX.128).
//!
//! YMMi is `xmm[i]` (bits 127:0) and `ymm_hi[i]` (bits 255:128) in the
//! state; a 256-bit operation is two 128-bit ones, one on each half (the
//! AVX2 integer operations here all work within 128-bit lanes). A VEX.128
//! form that writes a vector register zeroes its bits 255:128, as the
//! interpreter's `cpu::ops::sse::avx` does.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use iced_x86::Instruction;

use cpu::state::cr;

use super::sse::{op_type, vec_type};
use crate::translate::classify::{Avx, Form, Quad, VecOp, VecSrc};
use crate::translate::mem::int_type;
use crate::translate::state::{guest_flags, mem_flags, Tx, CR0_OFF, CR4_OFF, XCR0_OFF, XMM_OFF, YMM_HI_OFF};

/// XCR0's SSE and YMM bits, which must both be set for AVX.
const XCR0_SSE_YMM: i64 = 6;

/// A vector value: bits 127:0 and, for a 256-bit one, bits 255:128.
type Halves = (Value, Option<Value>);

impl Tx<'_, '_> {
    /// Translate the AVX form `f`. True if it ended the guest block.
    pub(super) fn emit_avx(&mut self, f: &Form, insn: &Instruction, rip: u64) -> bool {
        let Form::Avx(a) = *f else { unreachable!("not an AVX form: {f:?}") };
        self.avx_check(rip);
        match a {
            Avx::Op { op, dst, src1, src2, wide } => {
                let ty = op_type(op);
                let (b0, b1) = self.vex_operand(src2, insn, wide, ty, false, rip);
                // VPSHUFD reads its source alone.
                let reads_a = !matches!(op, VecOp::ShufD(_));
                let a0 = if reads_a { self.xmm_load(src1, ty) } else { b0 };
                let r0 = self.vec_apply(op, a0, b0);
                let r1 = b1.map(|b1| {
                    let a1 = if reads_a { self.ymm_hi_load(src1, ty) } else { b1 };
                    self.vec_apply(op, a1, b1)
                });
                self.vex_store(dst, (r0, r1));
            }
            Avx::Mov { dst, src, wide, aligned } => {
                let v = self.vex_operand(src, insn, wide, types::I8X16, aligned, rip);
                match dst {
                    VecSrc::Xmm(x) => self.vex_store(x, v),
                    VecSrc::Mem => {
                        let size = if wide { 32 } else { 16 };
                        let addr = self.vec_host_addr(insn, size, aligned, true, rip);
                        self.b.ins().store(guest_flags(), v.0, addr, 0);
                        if let Some(hi) = v.1 {
                            self.b.ins().store(guest_flags(), hi, addr, 16);
                        }
                    }
                }
            }
            Avx::Scalar { dst, src, width } => {
                let ty = if width == 4 { types::I32 } else { types::I64 };
                let v = match src {
                    VecSrc::Xmm(x) => self.xmm_load(x, ty),
                    VecSrc::Mem => {
                        let addr = self.vec_host_addr(insn, u32::from(width), false, false, rip);
                        self.b.ins().load(ty, guest_flags(), addr, 0)
                    }
                };
                match dst {
                    VecSrc::Xmm(x) => {
                        let v = if width == 4 { self.b.ins().uextend(types::I64, v) } else { v };
                        self.store_low_qword(x, v);
                    }
                    VecSrc::Mem => {
                        let addr = self.vec_host_addr(insn, u32::from(width), false, true, rip);
                        self.b.ins().store(guest_flags(), v, addr, 0);
                    }
                }
            }
            Avx::ToVec { dst, src } => {
                let v = self.read_reg(src);
                self.store_low_qword(dst, v);
            }
            Avx::FromVec { dst, src } => {
                let v = self.xmm_load(src, types::I64);
                self.write_reg(dst, v);
            }
            Avx::MovMsk { dst, src, wide } => {
                let lo = self.xmm_load(src, types::I8X16);
                let mut m = self.b.ins().vhigh_bits(types::I64, lo);
                if wide {
                    let hi = self.ymm_hi_load(src, types::I8X16);
                    let h = self.b.ins().vhigh_bits(types::I64, hi);
                    let h = self.b.ins().ishl_imm_s(h, 16);
                    m = self.b.ins().bor(m, h);
                }
                self.write_reg(dst, m);
            }
            Avx::Broadcast { lane, dst, src, wide } => {
                let ty = int_type(u32::from(lane));
                let s = match src {
                    VecSrc::Xmm(x) => self.xmm_load(x, ty),
                    VecSrc::Mem => {
                        let addr = self.vec_host_addr(insn, u32::from(lane), false, false, rip);
                        self.b.ins().load(ty, guest_flags(), addr, 0)
                    }
                };
                let v = self.b.ins().splat(vec_type(lane), s);
                self.vex_store(dst, (v, wide.then_some(v)));
            }
            Avx::Test { a, b, wide } => {
                let ty = types::I64X2;
                let (b0, b1) = self.vex_operand(b, insn, wide, ty, false, rip);
                let a0 = self.xmm_load(a, ty);
                let mut and = self.b.ins().band(a0, b0);
                let mut andn = self.b.ins().band_not(b0, a0);
                if let Some(b1) = b1 {
                    let a1 = self.ymm_hi_load(a, ty);
                    let t = self.b.ins().band(a1, b1);
                    and = self.b.ins().bor(and, t);
                    let t = self.b.ins().band_not(b1, a1);
                    andn = self.b.ins().bor(andn, t);
                }
                // ZF: src1 AND src2 is zero; CF: NOT src1 AND src2 is zero;
                // AF, OF, PF and SF cleared.
                let any = self.b.ins().vany_true(and);
                let zf = self.b.ins().icmp_imm_s(IntCC::Equal, any, 0);
                let zf = self.b.ins().uextend(types::I64, zf);
                let zf = self.b.ins().ishl_imm_s(zf, 6);
                let any = self.b.ins().vany_true(andn);
                let cf = self.b.ins().icmp_imm_s(IntCC::Equal, any, 0);
                let cf = self.b.ins().uextend(types::I64, cf);
                let f = self.b.ins().bor(zf, cf);
                self.set_all(f);
            }
            Avx::Quads { dst, lo, hi } => {
                // Both read before the destination is written (it may be a
                // source), the memory operand through the TLB test.
                let lo = self.quad(lo, insn, rip);
                let hi = self.quad(hi, insn, rip);
                self.store_xmm_quads(dst, lo, hi);
                let zv = self.zero_vector();
                self.b.ins().store(guest_flags(), zv, self.state, YMM_HI_OFF + 16 * i32::from(dst));
            }
            Avx::StoreQuad { src, high } => {
                let at = XMM_OFF + 16 * i32::from(src) + if high { 8 } else { 0 };
                let v = self.b.ins().load(types::I64, guest_flags(), self.state, at);
                let addr = self.vec_host_addr(insn, 8, false, true, rip);
                self.b.ins().store(guest_flags(), v, addr, 0);
            }
            Avx::Clmul { dst, src1, src2, imm } => {
                // VEX: no alignment rule.
                let (lo, hi) = self.clmul(src1, src2, imm, insn, false, rip);
                self.store_xmm_quads(dst, lo, hi);
                let zv = self.zero_vector();
                self.b.ins().store(guest_flags(), zv, self.state, YMM_HI_OFF + 16 * i32::from(dst));
            }
            Avx::ZeroUpper => {
                // YMM0-15 in 64-bit code, YMM0-7 elsewhere.
                let n = if self.bits == 64 { 16 } else { 8 };
                let z = self.zero_vector();
                for x in 0..n {
                    self.b.ins().store(guest_flags(), z, self.state, YMM_HI_OFF + 16 * x);
                }
            }
        }
        false
    }

    /// AVX may run: CR4.OSXSAVE set, XCR0's SSE and YMM bits set, CR0.TS
    /// clear (else the interpreter raises #UD or #NM). The CPU model's AVX
    /// was settled when the region was planned, and the region's mode is
    /// protected and not virtual-8086, as the other #UD checks want. The
    /// test itself is [`Self::update_avx_usable`]'s, made at the region's
    /// entry and after each fallback.
    fn avx_check(&mut self, rip: u64) {
        // The instructions before count, in case the slow path leaves.
        self.flush_count();
        if self.avx_ok {
            return;
        }
        let var = self.avx_usable.expect("a region with AVX forms tests the AVX state");
        let ok = self.b.use_var(var);
        self.slow_unless(ok, rip);
        self.avx_ok = true;
    }

    /// In a region with AVX forms, test the state that lets AVX run into
    /// [`Tx::avx_usable`].
    pub(in crate::translate) fn update_avx_usable(&mut self) {
        let Some(var) = self.avx_usable else { return };
        let fl = mem_flags();
        let cr0 = self.b.ins().load(types::I64, fl, self.state, CR0_OFF);
        let cr4 = self.b.ins().load(types::I64, fl, self.state, CR4_OFF);
        let xcr0 = self.b.ins().load(types::I64, fl, self.state, XCR0_OFF);
        let ts = self.b.ins().band_imm_s(cr0, cr::CR0_TS as i64);
        let ok0 = self.b.ins().icmp_imm_s(IntCC::Equal, ts, 0);
        let os = self.b.ins().band_imm_s(cr4, cr::CR4_OSXSAVE as i64);
        let ok4 = self.b.ins().icmp_imm_s(IntCC::NotEqual, os, 0);
        let x = self.b.ins().band_imm_s(xcr0, XCR0_SSE_YMM);
        let okx = self.b.ins().icmp_imm_s(IntCC::Equal, x, XCR0_SSE_YMM);
        let ok = self.b.ins().band(ok0, ok4);
        let ok = self.b.ins().band(ok, okx);
        self.b.def_var(var, ok);
    }

    /// A quadword operand of [`Avx::Quads`]: a register's half, or the
    /// 8-byte memory operand through the inline TLB test (else the slow
    /// path).
    fn quad(&mut self, q: Quad, insn: &Instruction, rip: u64) -> Value {
        match q {
            Quad::Xmm { x, high } => {
                let at = XMM_OFF + 16 * i32::from(x) + if high { 8 } else { 0 };
                self.b.ins().load(types::I64, guest_flags(), self.state, at)
            }
            Quad::Mem => {
                let addr = self.vec_host_addr(insn, 8, false, false, rip);
                self.b.ins().load(types::I64, guest_flags(), addr, 0)
            }
        }
    }

    fn ymm_hi_load(&mut self, x: u8, ty: Type) -> Value {
        self.b.ins().load(ty, guest_flags(), self.state, YMM_HI_OFF + 16 * i32::from(x))
    }

    fn zero_vector(&mut self) -> Value {
        let z = self.iconst(0);
        self.b.ins().splat(types::I64X2, z)
    }

    /// Write vector register `x`: bits 127:0, and bits 255:128 (zero for a
    /// 128-bit value).
    fn vex_store(&mut self, x: u8, v: Halves) {
        let fl = guest_flags();
        self.b.ins().store(fl, v.0, self.state, XMM_OFF + 16 * i32::from(x));
        let hi = match v.1 {
            Some(h) => h,
            None => self.zero_vector(),
        };
        self.b.ins().store(fl, hi, self.state, YMM_HI_OFF + 16 * i32::from(x));
    }

    /// Write vector register `x` with the quadword `v` zero-extended to 256
    /// bits.
    fn store_low_qword(&mut self, x: u8, v: Value) {
        let fl = guest_flags();
        let at = XMM_OFF + 16 * i32::from(x);
        self.b.ins().store(fl, v, self.state, at);
        let z = self.iconst(0);
        self.b.ins().store(fl, z, self.state, at + 8);
        let zv = self.zero_vector();
        self.b.ins().store(fl, zv, self.state, YMM_HI_OFF + 16 * i32::from(x));
    }

    /// A 16- or 32-byte (`wide`) operand as `ty`: a register's halves, or
    /// memory through the inline TLB test (aligned to its size if
    /// `aligned`), else the slow path.
    fn vex_operand(
        &mut self,
        src: VecSrc,
        insn: &Instruction,
        wide: bool,
        ty: Type,
        aligned: bool,
        rip: u64,
    ) -> Halves {
        match src {
            VecSrc::Xmm(x) => {
                let lo = self.xmm_load(x, ty);
                (lo, wide.then(|| self.ymm_hi_load(x, ty)))
            }
            VecSrc::Mem => {
                let size = if wide { 32 } else { 16 };
                let addr = self.vec_host_addr(insn, size, aligned, false, rip);
                let lo = self.b.ins().load(ty, guest_flags(), addr, 0);
                (lo, wide.then(|| self.b.ins().load(ty, guest_flags(), addr, 16)))
            }
        }
    }
}
