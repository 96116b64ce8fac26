//! Conversions (SDM Vol. 2: CVTPI2PS, CVTPI2PD, CVTSI2SS, CVTSI2SD, CVTPS2PI,
//! CVTTPS2PI, CVTPD2PI, CVTTPD2PI, CVTSS2SI, CVTTSS2SI, CVTSD2SI, CVTTSD2SI,
//! CVTPS2PD, CVTPD2PS, CVTSS2SD, CVTSD2SS, CVTDQ2PS, CVTPS2DQ, CVTTPS2DQ,
//! CVTDQ2PD, CVTPD2DQ, CVTTPD2DQ).
//!
//! Float-to-integer conversions round by MXCSR.RC (the CVTT forms truncate)
//! and give the integer indefinite (only the sign bit set) with IE for NaN,
//! infinity and out-of-range values. Integer-to-float conversions round by
//! MXCSR.RC. Scalar forms and the MMX-source forms keep the destination's
//! other lanes; the others zero what they do not write.

use iced_x86::{Code, Instruction, OpKind};

use super::softfloat::{self as sf, Env, F32, F64, RZ};
use super::{check, commit, done, get, lane, load, set, with_lane, Uses};
use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::ops::{reg_read, reg_write, Handler};

/// Element types.
pub(super) const I32: u8 = 0;
pub(super) const I64: u8 = 1;
pub(super) const S: u8 = 2;
pub(super) const D: u8 = 3;

pub fn handler(code: Code) -> Option<Handler> {
    use Code as C;
    Some(match code {
        C::Cvtpi2ps_xmm_mmm64 => cvt::<I32, S, 2, false, true>,
        C::Cvtpi2pd_xmm_mmm64 => cvt::<I32, D, 2, false, false>,
        C::Cvtsi2ss_xmm_rm32 => cvt::<I32, S, 1, false, true>,
        C::Cvtsi2ss_xmm_rm64 => cvt::<I64, S, 1, false, true>,
        C::Cvtsi2sd_xmm_rm32 => cvt::<I32, D, 1, false, true>,
        C::Cvtsi2sd_xmm_rm64 => cvt::<I64, D, 1, false, true>,
        C::Cvtps2pi_mm_xmmm64 => cvt::<S, I32, 2, false, false>,
        C::Cvttps2pi_mm_xmmm64 => cvt::<S, I32, 2, true, false>,
        C::Cvtpd2pi_mm_xmmm128 => cvt::<D, I32, 2, false, false>,
        C::Cvttpd2pi_mm_xmmm128 => cvt::<D, I32, 2, true, false>,
        C::Cvtss2si_r32_xmmm32 => cvt::<S, I32, 1, false, false>,
        C::Cvtss2si_r64_xmmm32 => cvt::<S, I64, 1, false, false>,
        C::Cvttss2si_r32_xmmm32 => cvt::<S, I32, 1, true, false>,
        C::Cvttss2si_r64_xmmm32 => cvt::<S, I64, 1, true, false>,
        C::Cvtsd2si_r32_xmmm64 => cvt::<D, I32, 1, false, false>,
        C::Cvtsd2si_r64_xmmm64 => cvt::<D, I64, 1, false, false>,
        C::Cvttsd2si_r32_xmmm64 => cvt::<D, I32, 1, true, false>,
        C::Cvttsd2si_r64_xmmm64 => cvt::<D, I64, 1, true, false>,
        C::Cvtps2pd_xmm_xmmm64 => cvt::<S, D, 2, false, false>,
        C::Cvtpd2ps_xmm_xmmm128 => cvt::<D, S, 2, false, false>,
        C::Cvtss2sd_xmm_xmmm32 => cvt::<S, D, 1, false, true>,
        C::Cvtsd2ss_xmm_xmmm64 => cvt::<D, S, 1, false, true>,
        C::Cvtdq2ps_xmm_xmmm128 => cvt::<I32, S, 4, false, false>,
        C::Cvtps2dq_xmm_xmmm128 => cvt::<S, I32, 4, false, false>,
        C::Cvttps2dq_xmm_xmmm128 => cvt::<S, I32, 4, true, false>,
        C::Cvtdq2pd_xmm_xmmm64 => cvt::<I32, D, 2, false, false>,
        C::Cvtpd2dq_xmm_xmmm128 => cvt::<D, I32, 2, false, false>,
        C::Cvttpd2dq_xmm_xmmm128 => cvt::<D, I32, 2, true, false>,
        _ => return None,
    })
}

#[inline(always)]
pub(super) const fn elem_size(t: u8) -> usize {
    match t {
        I32 | S => 4,
        _ => 8,
    }
}

#[inline(always)]
pub(super) fn conv(from: u8, to: u8, x: u64, trunc: bool, env: &mut Env) -> u64 {
    let rc = if trunc { RZ } else { env.rc };
    match (from, to) {
        (I32, S) => sf::from_int(F32, i64::from(x as u32 as i32), env),
        (I32, D) => sf::from_int(F64, i64::from(x as u32 as i32), env),
        (I64, S) => sf::from_int(F32, x as i64, env),
        (I64, D) => sf::from_int(F64, x as i64, env),
        (S, I32) => sf::to_int(F32, x, 32, rc, env),
        (S, I64) => sf::to_int(F32, x, 64, rc, env),
        (D, I32) => sf::to_int(F64, x, 32, rc, env),
        (D, I64) => sf::to_int(F64, x, 64, rc, env),
        (S, D) => sf::convert(F32, F64, x, env),
        _ => sf::convert(F64, F32, x, env),
    }
}

/// Convert `N` elements from type `FROM` to `TO`; `MERGE` keeps the
/// destination's bits above the converted lanes.
fn cvt<const FROM: u8, const TO: u8, const N: usize, const TRUNC: bool, const MERGE: bool>(
    cpu: &mut Cpu,
    insn: &Instruction,
) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    let s = match insn.op_kind(1) {
        OpKind::Register => {
            let r = insn.op_register(1);
            if r.is_gpr() {
                u128::from(reg_read(&cpu.state, r))
            } else {
                get(cpu, r)
            }
        }
        _ => load(cpu, insn, insn.memory_size().size())?,
    };
    let d = insn.op0_register();
    let mut env = Env::from_mxcsr(cpu.state.mxcsr);
    let (fw, tw) = (elem_size(FROM), elem_size(TO));
    let mut r = if MERGE { get(cpu, d) } else { 0 };
    for i in 0..N {
        r = with_lane(r, tw, i, conv(FROM, TO, lane(s, fw, i), TRUNC, &mut env));
    }
    if let Err(e) = commit(cpu, env.flags) {
        // An unmasked exception (#XM) finds the MMX transition made.
        done(cpu, mm)?;
        return Err(e);
    }
    if d.is_gpr() {
        reg_write(&mut cpu.state, d, r as u64);
    } else {
        set(cpu, d, r);
    }
    done(cpu, mm)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::testing::*;
    use crate::exception::Exception;

    #[test]
    fn float_to_int_with_indefinite() {
        let mut c = cpu();
        c.state.xmm[1] = f32x4([1.5, -2.5, 3e9, f32::NAN]);
        exec(&mut c, |a| a.cvtps2dq(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([2, (-2i32) as u32, 0x8000_0000, 0x8000_0000]));
        assert_eq!(c.state.mxcsr & 0x3f, 0x21);
        c.state.mxcsr = 0x1f80;
        exec(&mut c, |a| a.cvttps2dq(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([1, (-2i32) as u32, 0x8000_0000, 0x8000_0000]));
        c.state.xmm[2] = f64x2([-7.9, 1e20]);
        c.state.gpr[3] = u64::MAX;
        exec(&mut c, |a| a.cvttsd2si(ebx, xmm2)).unwrap();
        assert_eq!(c.state.gpr[3], 0xffff_fff9);
        exec(&mut c, |a| a.cvtsd2si(rbx, xmm2)).unwrap();
        assert_eq!(c.state.gpr[3], (-8i64) as u64);
        c.state.xmm[2] = f64x2([1e20, 0.0]);
        exec(&mut c, |a| a.cvttsd2si(rbx, xmm2)).unwrap();
        assert_eq!(c.state.gpr[3], 1 << 63);
        // Unmasked IE: no write.
        c.state.mxcsr = 0x1f80 & !(1 << 7);
        c.state.gpr[3] = 5;
        assert_eq!(exec(&mut c, |a| a.cvttsd2si(rbx, xmm2)), Err(Exception::SimdFp));
        assert_eq!(c.state.gpr[3], 5);
    }

    #[test]
    fn int_to_float_and_widths() {
        let mut c = cpu();
        c.state.gpr[0] = 0x1_0000_0005;
        c.state.xmm[0] = f32x4([9.0, 9.0, 9.0, 9.0]);
        exec(&mut c, |a| a.cvtsi2ss(xmm0, eax)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([5.0, 9.0, 9.0, 9.0]));
        assert_eq!(c.state.mxcsr & 0x3f, 0);
        exec(&mut c, |a| a.cvtsi2ss(xmm0, rax)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([4294967296.0, 9.0, 9.0, 9.0]));
        assert_eq!(c.state.mxcsr & 0x3f, 0x20);
        c.state.gpr[0] = 0xffff_fffd;
        exec(&mut c, |a| a.cvtsi2sd(xmm0, eax)).unwrap();
        assert_eq!(c.state.xmm[0] as u64, (-3.0f64).to_bits());
        c.state.xmm[1] = u32x4([1, (-2i32) as u32, 7, 8]);
        exec(&mut c, |a| a.cvtdq2pd(xmm2, xmm1)).unwrap();
        assert_eq!(c.state.xmm[2], f64x2([1.0, -2.0]));
        exec(&mut c, |a| a.cvtdq2ps(xmm2, xmm1)).unwrap();
        assert_eq!(c.state.xmm[2], f32x4([1.0, -2.0, 7.0, 8.0]));
        c.state.xmm[3] = f64x2([0.1, 1e300]);
        c.state.mxcsr = 0x1f80;
        exec(&mut c, |a| a.cvtpd2ps(xmm4, xmm3)).unwrap();
        assert_eq!(c.state.xmm[4], u128::from(0.1f32.to_bits()) | (u128::from(f32::INFINITY.to_bits()) << 32));
        assert_eq!(c.state.mxcsr & 0x3f, 0x28); // OE and PE
        exec(&mut c, |a| a.cvtps2pd(xmm5, xmm4)).unwrap();
        assert_eq!(c.state.xmm[5], f64x2([f64::from(0.1f32), f64::INFINITY]));
        c.state.xmm[6] = f64x2([5.0, 6.0]);
        exec(&mut c, |a| a.cvtss2sd(xmm6, xmm4)).unwrap();
        assert_eq!(c.state.xmm[6], f64x2([f64::from(0.1f32), 6.0]));
    }

    #[test]
    fn mmx_forms() {
        let mut c = cpu();
        c.state.fpu.regs[1].mantissa = u64::from(7u32) | (u64::from((-1i32) as u32) << 32);
        c.state.xmm[0] = f32x4([9.0; 4]);
        c.state.fpu.ftw = 0xffff;
        exec(&mut c, |a| a.cvtpi2ps(xmm0, mm1)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([7.0, -1.0, 9.0, 9.0]));
        assert_eq!(c.state.fpu.ftw, 0);
        exec(&mut c, |a| a.cvtpi2pd(xmm1, mm1)).unwrap();
        assert_eq!(c.state.xmm[1], f64x2([7.0, -1.0]));
        c.state.xmm[2] = f64x2([2.5, -3.5]);
        exec(&mut c, |a| a.cvtpd2pi(mm2, xmm2)).unwrap();
        assert_eq!(c.state.fpu.regs[2].mantissa, 2 | (u64::from((-4i32) as u32) << 32));
        exec(&mut c, |a| a.cvttpd2pi(mm2, xmm2)).unwrap();
        assert_eq!(c.state.fpu.regs[2].mantissa, 2 | (u64::from((-3i32) as u32) << 32));
        c.state.xmm[3] = f32x4([1.5, 2.5, 0.0, 0.0]);
        exec(&mut c, |a| a.cvtps2pi(mm3, xmm3)).unwrap();
        assert_eq!(c.state.fpu.regs[3].mantissa, 2 | (2 << 32));
        // A memory source for CVTPI2PS needs no x87 transition.
        c.state.fpu.ftw = 0xffff;
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[1, 0, 0, 0, 2, 0, 0, 0]);
        exec(&mut c, |a| a.cvtpi2ps(xmm0, qword_ptr(rax))).unwrap();
        assert_eq!(c.state.fpu.ftw, 0xffff);
        assert_eq!(c.state.xmm[0], f32x4([1.0, 2.0, 9.0, 9.0]));
    }

    #[test]
    fn an_xm_fault_finds_the_mmx_transition_made() {
        let mut c = cpu();
        // CVTPS2PI of a NaN with the invalid-operation exception unmasked.
        c.state.mxcsr = 0x1f00;
        c.state.xmm[1] = f32x4([f32::NAN, 1.0, 0.0, 0.0]);
        c.state.fpu.fsw = 3 << 11;
        c.state.fpu.ftw = 0xffff;
        assert_eq!(exec(&mut c, |a| a.cvtps2pi(mm0, xmm1)), Err(Exception::SimdFp));
        assert_eq!((c.state.fpu.fsw, c.state.fpu.ftw), (0, 0));
        // CVTPI2PS of an inexact integer with the precision exception unmasked.
        c.state.mxcsr = 0x0f80;
        c.state.fpu.fsw = 3 << 11;
        c.state.fpu.ftw = 0xffff;
        c.state.fpu.regs[1].mantissa = 0x7fff_ffff;
        assert_eq!(exec(&mut c, |a| a.cvtpi2ps(xmm0, mm1)), Err(Exception::SimdFp));
        assert_eq!((c.state.fpu.fsw, c.state.fpu.ftw), (0, 0));
    }
}
