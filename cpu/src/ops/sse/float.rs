//! SIMD floating-point arithmetic (SDM Vol. 2: ADDPS/PD/SS/SD, SUB*, MUL*,
//! DIV*, SQRT*, MIN*, MAX*, RCPPS/SS, RSQRTPS/SS, CMPPS/PD/SS/SD, COMISS/SD,
//! UCOMISS/SD, ADDSUBPS/PD, HADDPS/PD, HSUBPS/PD, ROUNDPS/PD/SS/SD, DPPS,
//! DPPD, LDMXCSR, STMXCSR; Vol. 1 §10.2.3 MXCSR and §11.5 exceptions).
//!
//! Every lane goes through [`softfloat`](super::softfloat) under the MXCSR
//! controls; the flags of all lanes are ORed and folded in by
//! [`commit`](super::commit), which faults (#XM, or #UD without
//! CR4.OSXMMEXCPT) before any destination is written.

use iced_x86::{Code, Instruction, Mnemonic};

use super::softfloat::{self as sf, Cmp, Env, Fmt, F32, F64};
use super::{check, commit, get, lane, set, src, store, with_lane, Uses};
use crate::cpu::Cpu;
use crate::exception::{Fault, GP0};
use crate::ops::Handler;
use crate::state::flags::{AF, CF, OF, PF, SF, ZF};

/// Operand shapes: packed single, packed double, scalar single, scalar double.
pub(super) const PS: u8 = 0;
pub(super) const PD: u8 = 1;
pub(super) const SS: u8 = 2;
pub(super) const SD: u8 = 3;

/// Format, lane width in bytes and lane count of a shape.
#[inline(always)]
pub(super) fn shape(k: u8) -> (Fmt, usize, usize) {
    match k {
        PS => (F32, 4, 4),
        PD => (F64, 8, 2),
        SS => (F32, 4, 1),
        _ => (F64, 8, 1),
    }
}

const ADD: u8 = 0;
const SUB: u8 = 1;
const MUL: u8 = 2;
const DIV: u8 = 3;
const MIN: u8 = 4;
const MAX: u8 = 5;

/// MXCSR bits software may set (MXCSR_MASK with DAZ supported).
pub const MXCSR_MASK: u32 = 0xffff;

/// The operations with a legacy and a VEX form, each a kernel on one
/// 128-bit half `(a, b, imm8, env)`: the legacy handler runs it on the
/// destination and the source, the VEX one on VEX.vvvv (or nothing, for the
/// two-operand forms) and the last source, half by half, then commits the
/// flags of all lanes once.
macro_rules! fp_ops {
    ($($l:ident $v:ident $k:expr;)*) => {
        fn legacy(m: Mnemonic) -> Option<Handler> {
            Some(match m {
                $(Mnemonic::$l => {
                    fn h(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
                        legacy_fp(cpu, insn, $k)
                    }
                    h as Handler
                })*
                _ => return None,
            })
        }

        /// The VEX forms of this family's operations.
        pub(super) fn vex(m: Mnemonic) -> Option<Handler> {
            Some(match m {
                $(Mnemonic::$v => {
                    fn h(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
                        super::avx::fp(cpu, insn, $k)
                    }
                    h as Handler
                })*
                Mnemonic::Vcmpps => vcmp::<PS>,
                Mnemonic::Vcmppd => vcmp::<PD>,
                Mnemonic::Vcmpss => vcmp::<SS>,
                Mnemonic::Vcmpsd => vcmp::<SD>,
                _ => return None,
            })
        }
    };
}

fp_ops! {
    Addps Vaddps arith::<ADD, PS>;
    Addpd Vaddpd arith::<ADD, PD>;
    Addss Vaddss arith::<ADD, SS>;
    Addsd Vaddsd arith::<ADD, SD>;
    Subps Vsubps arith::<SUB, PS>;
    Subpd Vsubpd arith::<SUB, PD>;
    Subss Vsubss arith::<SUB, SS>;
    Subsd Vsubsd arith::<SUB, SD>;
    Mulps Vmulps arith::<MUL, PS>;
    Mulpd Vmulpd arith::<MUL, PD>;
    Mulss Vmulss arith::<MUL, SS>;
    Mulsd Vmulsd arith::<MUL, SD>;
    Divps Vdivps arith::<DIV, PS>;
    Divpd Vdivpd arith::<DIV, PD>;
    Divss Vdivss arith::<DIV, SS>;
    Divsd Vdivsd arith::<DIV, SD>;
    Minps Vminps arith::<MIN, PS>;
    Minpd Vminpd arith::<MIN, PD>;
    Minss Vminss arith::<MIN, SS>;
    Minsd Vminsd arith::<MIN, SD>;
    Maxps Vmaxps arith::<MAX, PS>;
    Maxpd Vmaxpd arith::<MAX, PD>;
    Maxss Vmaxss arith::<MAX, SS>;
    Maxsd Vmaxsd arith::<MAX, SD>;
    Sqrtps Vsqrtps sqrt::<PS>;
    Sqrtpd Vsqrtpd sqrt::<PD>;
    Sqrtss Vsqrtss sqrt::<SS>;
    Sqrtsd Vsqrtsd sqrt::<SD>;
    Rcpps Vrcpps approx::<false, false>;
    Rcpss Vrcpss approx::<false, true>;
    Rsqrtps Vrsqrtps approx::<true, false>;
    Rsqrtss Vrsqrtss approx::<true, true>;
    Addsubps Vaddsubps horizontal::<0, PS>;
    Addsubpd Vaddsubpd horizontal::<0, PD>;
    Haddps Vhaddps horizontal::<1, PS>;
    Haddpd Vhaddpd horizontal::<1, PD>;
    Hsubps Vhsubps horizontal::<2, PS>;
    Hsubpd Vhsubpd horizontal::<2, PD>;
    Roundps Vroundps round::<PS>;
    Roundpd Vroundpd round::<PD>;
    Roundss Vroundss round::<SS>;
    Roundsd Vroundsd round::<SD>;
    Dpps Vdpps dp::<PS>;
    Dppd Vdppd dp::<PD>;
}

pub fn handler(code: Code) -> Option<Handler> {
    use Mnemonic as M;
    legacy(code.mnemonic()).or_else(|| {
        Some(match code.mnemonic() {
            M::Cmpps => cmp::<PS>,
            M::Cmppd => cmp::<PD>,
            M::Cmpss => cmp::<SS>,
            M::Cmpsd if code == Code::Cmpsd_xmm_xmmm64_imm8 => cmp::<SD>,
            M::Comiss => comi::<false, true>,
            M::Comisd => comi::<true, true>,
            M::Ucomiss => comi::<false, false>,
            M::Ucomisd => comi::<true, false>,
            M::Ldmxcsr => ldmxcsr,
            M::Stmxcsr => stmxcsr,
            _ => return None,
        })
    })
}

/// A legacy SSE floating-point operation: the kernel on the destination and
/// the source; the flags committed before the destination is written.
#[inline(always)]
fn legacy_fp(cpu: &mut Cpu, insn: &Instruction, k: impl Fn(u128, u128, u8, &mut Env) -> u128) -> Fault<()> {
    let (a, b) = operands(cpu, insn)?;
    let mut env = Env::from_mxcsr(cpu.state.mxcsr);
    let r = k(a, b, insn.immediate8(), &mut env);
    finish(cpu, insn, &env, r)
}

#[inline(always)]
fn binop(op: u8, f: Fmt, a: u64, b: u64, env: &mut Env) -> u64 {
    match op {
        ADD => sf::add(f, a, b, env),
        SUB => sf::sub(f, a, b, env),
        MUL => sf::mul(f, a, b, env),
        DIV => sf::div(f, a, b, env),
        MIN => sf::min(f, a, b, env),
        _ => sf::max(f, a, b, env),
    }
}

/// Run `f` over the lanes of shape `k`; scalar shapes keep `a`'s upper lanes.
#[inline(always)]
pub(super) fn lanes(k: u8, a: u128, b: u128, env: &mut Env, f: impl Fn(Fmt, u64, u64, &mut Env) -> u64) -> u128 {
    let (fmt, w, n) = shape(k);
    let mut r = a;
    for i in 0..n {
        r = with_lane(r, w, i, f(fmt, lane(a, w, i), lane(b, w, i), env));
    }
    r
}

/// Read the destination register and the source (register or memory).
#[inline(always)]
fn operands(cpu: &mut Cpu, insn: &Instruction) -> Fault<(u128, u128)> {
    check(cpu, insn, Uses::Operands)?;
    let b = src(cpu, insn, 1)?;
    Ok((get(cpu, insn.op0_register()), b))
}

/// Commit the flags, then write the destination register.
#[inline(always)]
fn finish(cpu: &mut Cpu, insn: &Instruction, env: &Env, r: u128) -> Fault<()> {
    super::commit_env(cpu, env)?;
    set(cpu, insn.op0_register(), r);
    Ok(())
}

fn arith<const OP: u8, const K: u8>(a: u128, b: u128, _: u8, env: &mut Env) -> u128 {
    lanes(K, a, b, env, |f, x, y, e| binop(OP, f, x, y, e))
}

fn sqrt<const K: u8>(a: u128, b: u128, _: u8, env: &mut Env) -> u128 {
    // Scalar: the low lane from the source, the rest from the destination.
    let (_, w, _) = shape(K);
    let base = if K >= SS { with_lane(a, w, 0, 0) } else { 0 };
    lanes(K, base, b, env, |f, _, y, e| sf::sqrt(f, y, e))
}

/// RCPPS/RCPSS/RSQRTPS/RSQRTSS: no exceptions, MXCSR untouched.
fn approx<const ROOT: bool, const SCALAR: bool>(a: u128, b: u128, _: u8, _: &mut Env) -> u128 {
    let n = if SCALAR { 1 } else { 4 };
    let mut r = a;
    for i in 0..n {
        let x = lane(b, 4, i) as u32;
        let y = if ROOT { sf::rsqrt(x) } else { sf::rcp(x) };
        r = with_lane(r, 4, i, u64::from(y));
    }
    r
}

/// CMPPS predicate (imm8 bits 4:0; the legacy forms have bits 2:0 only)
/// on an ordering; the second value says whether a QNaN operand signals.
/// Predicates 8-15 are the negations of 0-7 in the other ordering
/// convention (EQ_UQ, NGE_US, NGT_US, FALSE_OQ, NEQ_OQ, GE_OS, GT_OS,
/// TRUE_UQ); 16-31 are 0-15 with the QNaN signalling flipped.
fn predicate(p: u8) -> (fn(Cmp) -> bool, bool) {
    let (test, signals): (fn(Cmp) -> bool, bool) = match p & 15 {
        0 => (|c| c == Cmp::Eq, false),
        1 => (|c| c == Cmp::Lt, true),
        2 => (|c| matches!(c, Cmp::Lt | Cmp::Eq), true),
        3 => (|c| c == Cmp::Unordered, false),
        4 => (|c| c != Cmp::Eq, false),
        5 => (|c| c != Cmp::Lt, true),
        6 => (|c| !matches!(c, Cmp::Lt | Cmp::Eq), true),
        7 => (|c| c != Cmp::Unordered, false),
        8 => (|c| matches!(c, Cmp::Eq | Cmp::Unordered), false),
        9 => (|c| matches!(c, Cmp::Lt | Cmp::Unordered), true),
        10 => (|c| c != Cmp::Gt, true),
        11 => (|_| false, false),
        12 => (|c| matches!(c, Cmp::Lt | Cmp::Gt), false),
        13 => (|c| matches!(c, Cmp::Gt | Cmp::Eq), true),
        14 => (|c| c == Cmp::Gt, true),
        _ => (|_| true, false),
    };
    (test, signals ^ (p & 16 != 0))
}

fn compare<const K: u8>(a: u128, b: u128, imm: u8, env: &mut Env) -> u128 {
    let (test, signals) = predicate(imm);
    lanes(K, a, b, env, |f, x, y, e| if test(sf::compare(f, x, y, signals, e)) { u64::MAX } else { 0 })
}

fn cmp<const K: u8>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let (a, b) = operands(cpu, insn)?;
    let mut env = Env::from_mxcsr(cpu.state.mxcsr);
    let r = compare::<K>(a, b, insn.immediate8() & 7, &mut env);
    finish(cpu, insn, &env, r)
}

/// VCMPPS/PD/SS/SD: the 32 predicates.
fn vcmp<const K: u8>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    super::avx::fp(cpu, insn, |a, b, imm, env| compare::<K>(a, b, imm & 31, env))
}

/// COMISS/COMISD (QNaN signals) and UCOMISS/UCOMISD: ZF, PF, CF from the
/// comparison; OF, SF and AF cleared.
fn comi<const DOUBLE: bool, const SIGNAL: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let (a, b) = operands(cpu, insn)?;
    comi_flags::<DOUBLE, SIGNAL>(cpu, a, b)
}

/// The flags of (U)COMISS/SD, and their VEX forms, from the low lanes.
pub(super) fn comi_flags<const DOUBLE: bool, const SIGNAL: bool>(cpu: &mut Cpu, a: u128, b: u128) -> Fault<()> {
    let (f, w) = if DOUBLE { (F64, 8) } else { (F32, 4) };
    let mut env = Env::from_mxcsr(cpu.state.mxcsr);
    let c = sf::compare(f, lane(a, w, 0), lane(b, w, 0), SIGNAL, &mut env);
    commit(cpu, env.flags)?;
    let fl = match c {
        Cmp::Unordered => ZF | PF | CF,
        Cmp::Gt => 0,
        Cmp::Lt => CF,
        Cmp::Eq => ZF,
    };
    cpu.state.set_arith_flags(ZF | PF | CF | OF | SF | AF, fl);
    Ok(())
}

/// ADDSUB (0), HADD (1), HSUB (2).
fn horizontal<const KIND: u8, const K: u8>(a: u128, b: u128, _: u8, env: &mut Env) -> u128 {
    let (f, w, n) = shape(K);
    let mut r = 0u128;
    for i in 0..n {
        let v = match KIND {
            0 => {
                let (x, y) = (lane(a, w, i), lane(b, w, i));
                if i % 2 == 0 {
                    sf::sub(f, x, y, env)
                } else {
                    sf::add(f, x, y, env)
                }
            }
            _ => {
                let half = n / 2;
                let (s, j) = if i < half { (a, i) } else { (b, i - half) };
                let (x, y) = (lane(s, w, 2 * j), lane(s, w, 2 * j + 1));
                if KIND == 1 {
                    sf::add(f, x, y, env)
                } else {
                    sf::sub(f, x, y, env)
                }
            }
        };
        r = with_lane(r, w, i, v);
    }
    r
}

/// ROUNDPS/PD/SS/SD: imm8 bits 1:0 rounding, bit 2 use MXCSR.RC instead,
/// bit 3 suppress the precision exception.
fn round<const K: u8>(a: u128, b: u128, imm: u8, env: &mut Env) -> u128 {
    let imm = u32::from(imm);
    let rc = if imm & 4 != 0 { env.rc } else { imm & 3 };
    let no_pe = imm & 8 != 0;
    lanes(K, a, b, env, |f, _, y, e| sf::round_int(f, y, rc, no_pe, e))
}

/// Sum of products for DPPS/DPPD: each product and each sum is rounded, as
/// the SDM's DP_primitive describes. The sums see the products as computed
/// (no DAZ, no denormal-operand report on intermediates). An unmasked
/// exception of the products stops the operation there: the sums add no
/// flags (the CPU reports the products' exceptions only).
fn dot(f: Fmt, w: usize, n: usize, a: u128, b: u128, imm: u8, env: &mut Env) -> u64 {
    let p = dot_products(f, w, n, a, b, imm, env);
    if env.flags & !env.masks & 0x3f != 0 {
        return 0;
    }
    env.done |= env.flags;
    dot_sum(f, n, p, env)
}

/// The first step of DPPS/DPPD: the products of the lanes imm8[7:4]
/// selects (the others stay +0).
fn dot_products(f: Fmt, w: usize, n: usize, a: u128, b: u128, imm: u8, env: &mut Env) -> [u64; 4] {
    let mut p = [0u64; 4];
    for (i, pi) in p.iter_mut().enumerate().take(n) {
        if imm & (0x10 << i) != 0 {
            *pi = sf::mul(f, lane(a, w, i), lane(b, w, i), env);
        }
    }
    p
}

/// The second step: the sum of the products (pairwise for four), with no
/// DAZ on the products and no DE from the sums.
fn dot_sum(f: Fmt, n: usize, p: [u64; 4], env: &mut Env) -> u64 {
    let mut inner = Env { daz: false, ..*env };
    let s = if n == 4 {
        let s1 = sf::add(f, p[0], p[1], &mut inner);
        let s2 = sf::add(f, p[2], p[3], &mut inner);
        sf::add(f, s1, s2, &mut inner)
    } else {
        sf::add(f, p[0], p[1], &mut inner)
    };
    env.flags |= inner.flags & !sf::DE;
    s
}

/// VDPPS ymm: each half's dot product, the multiplies of both halves
/// first. An unmasked exception in any product stops the instruction
/// before any sum, so the flags the sums would raise in the other half are
/// not reported (as the CPU does).
pub(super) fn dpps256(a: [u128; 2], b: [u128; 2], imm: u8, env: &mut Env) -> [u128; 2] {
    let (f, w, n) = shape(PS);
    let p = [dot_products(f, w, n, a[0], b[0], imm, env), dot_products(f, w, n, a[1], b[1], imm, env)];
    if env.flags & !env.masks & 0x3f != 0 {
        return [0; 2];
    }
    env.done |= env.flags;
    p.map(|p| dot_lanes(w, n, imm, dot_sum(f, n, p, env)))
}

/// The dot product `s` in the lanes imm8[3:0] selects, zero elsewhere.
fn dot_lanes(w: usize, n: usize, imm: u8, s: u64) -> u128 {
    (0..n).filter(|i| imm & (1 << i) != 0).fold(0u128, |r, i| with_lane(r, w, i, s))
}

/// DPPS (`K` = PS) and DPPD (`K` = PD).
pub(super) fn dp<const K: u8>(a: u128, b: u128, imm: u8, env: &mut Env) -> u128 {
    let (f, w, n) = shape(K);
    dot_lanes(w, n, imm, dot(f, w, n, a, b, imm, env))
}

fn ldmxcsr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Sse)?;
    ldmxcsr_body(cpu, insn)
}

/// LDMXCSR and VLDMXCSR after their availability checks.
pub(super) fn ldmxcsr_body(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let v = super::load(cpu, insn, 4)? as u32;
    if v & !MXCSR_MASK != 0 {
        return Err(GP0);
    }
    cpu.state.mxcsr = v;
    Ok(())
}

fn stmxcsr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Sse)?;
    stmxcsr_body(cpu, insn)
}

/// STMXCSR and VSTMXCSR after their availability checks.
pub(super) fn stmxcsr_body(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let v = cpu.state.mxcsr;
    store(cpu, insn, 4, u128::from(v))
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::testing::*;
    use crate::exception::Exception;
    use crate::state::{cr, flags};

    #[test]
    fn packed_and_scalar_arithmetic() {
        let mut c = cpu();
        c.state.xmm[0] = f32x4([1.0, 2.0, 3.0, 4.0]);
        c.state.xmm[1] = f32x4([0.5, 0.25, -3.0, 10.0]);
        exec(&mut c, |a| a.addps(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([1.5, 2.25, 0.0, 14.0]));
        assert_eq!(c.state.mxcsr, 0x1f80);
        exec(&mut c, |a| a.mulss(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([0.75, 2.25, 0.0, 14.0]));
        c.state.xmm[2] = f64x2([1.0, 9.0]);
        c.state.xmm[3] = f64x2([3.0, 0.0]);
        exec(&mut c, |a| a.sqrtpd(xmm3, xmm2)).unwrap();
        assert_eq!(c.state.xmm[3], f64x2([1.0, 3.0]));
        c.state.xmm[3] = f64x2([5.0, 7.0]);
        exec(&mut c, |a| a.sqrtsd(xmm3, xmm2)).unwrap();
        assert_eq!(c.state.xmm[3], f64x2([1.0, 7.0]));
        // 1/3 is inexact: PE.
        c.state.xmm[4] = f64x2([1.0, 1.0]);
        c.state.xmm[5] = f64x2([3.0, 1.0]);
        exec(&mut c, |a| a.divsd(xmm4, xmm5)).unwrap();
        assert_eq!(c.state.xmm[4], f64x2([1.0 / 3.0, 1.0]));
        assert_eq!(c.state.mxcsr, 0x1f80 | 0x20);
        // Memory source.
        write(&c, DATA, &2.5f64.to_le_bytes());
        c.state.gpr[0] = DATA;
        exec(&mut c, |a| a.addsd(xmm5, qword_ptr(rax))).unwrap();
        assert_eq!(c.state.xmm[5], f64x2([5.5, 1.0]));
    }

    #[test]
    fn rounding_control_applies() {
        let mut c = cpu();
        c.state.xmm[0] = f32x4([1.0, -1.0, 1.0, -1.0]);
        c.state.xmm[1] = f32x4([3.0; 4]);
        c.state.mxcsr = 0x1f80 | (1 << 13); // round down
        exec(&mut c, |a| a.divps(xmm0, xmm1)).unwrap();
        let v = c.state.xmm[0];
        assert_eq!(v as u32, 0x3eaa_aaaa); // 1/3 rounded down
        assert_eq!((v >> 32) as u32, 0xbeaa_aaab); // -1/3 rounded down
        c.state.xmm[0] = f32x4([1.0, -1.0, 1.0, -1.0]);
        c.state.mxcsr = 0x1f80 | (2 << 13); // round up
        exec(&mut c, |a| a.divps(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0] as u32, 0x3eaa_aaab);
    }

    #[test]
    fn unmasked_exceptions_fault_without_writing() {
        let mut c = cpu();
        c.state.xmm[0] = f32x4([1.0, 1.0, 1.0, 1.0]);
        c.state.xmm[1] = f32x4([1.0, 0.0, 1.0, 1.0]);
        c.state.mxcsr = 0x1f80 & !(1 << 9); // unmask ZE
        assert_eq!(exec(&mut c, |a| a.divps(xmm0, xmm1)), Err(Exception::SimdFp));
        assert_eq!(c.state.xmm[0], f32x4([1.0; 4]));
        assert_eq!(c.state.mxcsr & 0x3f, 0x04);
        // Without CR4.OSXMMEXCPT the fault is #UD.
        c.state.cr4 &= !cr::CR4_OSXMMEXCPT;
        assert_eq!(exec(&mut c, |a| a.divps(xmm0, xmm1)), Err(Exception::InvalidOpcode));
        c.state.cr4 |= cr::CR4_OSXMMEXCPT;
        // Unmasked precision: the inexact quotient is not stored.
        c.state.mxcsr = 0x1f80 & !(1 << 12);
        c.state.xmm[1] = f32x4([3.0; 4]);
        assert_eq!(exec(&mut c, |a| a.divss(xmm0, xmm1)), Err(Exception::SimdFp));
        assert_eq!(c.state.xmm[0], f32x4([1.0; 4]));
        assert_eq!(c.state.mxcsr & 0x3f, 0x20);
        // A masked pre-computation flag with an unmasked one: only IE/DE/ZE recorded.
        c.state.mxcsr = 0x1f80 & !(1 << 7); // unmask IE
        c.state.xmm[0] = f32x4([f32::INFINITY, 1.0, 1.0, 1.0]);
        c.state.xmm[1] = f32x4([f32::INFINITY, 0.0, 3.0, 1.0]);
        assert_eq!(exec(&mut c, |a| a.mulps(xmm0, xmm1)), Ok(()));
        c.state.xmm[1] = f32x4([f32::NEG_INFINITY, 1.0, 3.0, f32::from_bits(1)]);
        assert_eq!(exec(&mut c, |a| a.addps(xmm0, xmm1)), Err(Exception::SimdFp));
        assert_eq!(c.state.mxcsr & 0x3f, 0x01 | 0x02); // IE and DE, no PE
                                                       // Unmasked overflow.
        c.state.mxcsr = 0x1f80 & !(1 << 10);
        c.state.xmm[0] = f32x4([f32::MAX; 4]);
        c.state.xmm[1] = f32x4([2.0; 4]);
        assert_eq!(exec(&mut c, |a| a.mulss(xmm0, xmm1)), Err(Exception::SimdFp));
        assert_eq!(c.state.mxcsr & 0x3f, 0x08 | 0x20);
        // Unmasked underflow reports even exact tiny results.
        c.state.mxcsr = 0x1f80 & !(1 << 11);
        c.state.xmm[0] = f32x4([f32::MIN_POSITIVE; 4]);
        c.state.xmm[1] = f32x4([0.5; 4]);
        assert_eq!(exec(&mut c, |a| a.mulss(xmm0, xmm1)), Err(Exception::SimdFp));
        assert_eq!(c.state.mxcsr & 0x3f, 0x10);
    }

    #[test]
    fn ftz_and_daz() {
        let mut c = cpu();
        let tiny = f32::from_bits(0x0040_0000);
        c.state.xmm[0] = f32x4([f32::MIN_POSITIVE, 1.0, 1.0, 1.0]);
        c.state.xmm[1] = f32x4([0.5, 1.0, 1.0, 1.0]);
        c.state.mxcsr = 0x1f80 | (1 << 15);
        exec(&mut c, |a| a.mulps(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0] as u32, 0);
        assert_eq!(c.state.mxcsr & 0x3f, 0x30);
        c.state.xmm[0] = f32x4([tiny, 1.0, 1.0, 1.0]);
        c.state.xmm[1] = f32x4([1.0, 1.0, 1.0, 1.0]);
        c.state.mxcsr = 0x1f80;
        exec(&mut c, |a| a.mulss(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0] as u32, tiny.to_bits());
        assert_eq!(c.state.mxcsr & 0x3f, 0x02); // DE
        c.state.mxcsr = 0x1f80 | (1 << 6);
        exec(&mut c, |a| a.mulss(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0] as u32, 0);
        assert_eq!(c.state.mxcsr & 0x3f, 0);
    }

    #[test]
    fn min_max_nan_and_zero_rules() {
        let mut c = cpu();
        let qnan = f32::from_bits(0x7fc0_0001);
        c.state.xmm[0] = f32x4([qnan, 1.0, 0.0, -0.0]);
        c.state.xmm[1] = f32x4([2.0, qnan, -0.0, 0.0]);
        exec(&mut c, |a| a.minps(xmm0, xmm1)).unwrap();
        let r = c.state.xmm[0];
        assert_eq!(r as u32, 2.0f32.to_bits());
        assert_eq!((r >> 32) as u32, 0x7fc0_0001);
        assert_eq!((r >> 64) as u32, 0x8000_0000);
        assert_eq!((r >> 96) as u32, 0);
        assert_eq!(c.state.mxcsr & 1, 1);
    }

    #[test]
    fn compare_predicates() {
        let mut c = cpu();
        let nan = f32::NAN;
        let base = f32x4([1.0, 2.0, nan, 1.0]);
        let other = f32x4([1.0, 1.0, 1.0, 2.0]);
        let expect: [[bool; 4]; 8] = [
            [true, false, false, false], // eq
            [false, false, false, true], // lt
            [true, false, false, true],  // le
            [false, false, true, false], // unord
            [false, true, true, true],   // neq
            [true, true, true, false],   // nlt
            [false, true, true, false],  // nle
            [true, true, false, true],   // ord
        ];
        for (p, e) in expect.iter().enumerate() {
            c.state.xmm[0] = base;
            c.state.xmm[1] = other;
            c.state.mxcsr = 0x1f80;
            exec(&mut c, |a| a.cmpps(xmm0, xmm1, p as u32)).unwrap();
            for (i, &want) in e.iter().enumerate() {
                let got = (c.state.xmm[0] >> (32 * i)) as u32;
                assert_eq!(got, if want { u32::MAX } else { 0 }, "predicate {p} lane {i}");
            }
            // Signaling predicates raise IE on the QNaN.
            let ie = c.state.mxcsr & 1 != 0;
            assert_eq!(ie, matches!(p, 1 | 2 | 5 | 6), "predicate {p}");
        }
        // CMPSD keeps the upper lane.
        c.state.xmm[2] = f64x2([1.0, 5.0]);
        c.state.xmm[3] = f64x2([1.0, 6.0]);
        exec(&mut c, |a| a.cmpsd_3(xmm2, xmm3, 0)).unwrap();
        assert_eq!(c.state.xmm[2], u128::from(u64::MAX) | (u128::from(5.0f64.to_bits()) << 64));
    }

    #[test]
    fn comis_flags() {
        let mut c = cpu();
        let cases = [
            (1.0f32, 2.0f32, flags::CF),
            (2.0, 1.0, 0),
            (1.0, 1.0, flags::ZF),
            (f32::NAN, 1.0, flags::ZF | flags::PF | flags::CF),
        ];
        for (x, y, want) in cases {
            c.state.xmm[0] = f32x4([x, 0.0, 0.0, 0.0]);
            c.state.xmm[1] = f32x4([y, 0.0, 0.0, 0.0]);
            c.state.rflags |= flags::OF | flags::SF | flags::AF;
            c.state.mxcsr = 0x1f80;
            exec(&mut c, |a| a.ucomiss(xmm0, xmm1)).unwrap();
            let f = c.state.flags() & flags::ARITH;
            assert_eq!(f, want, "{x} {y}");
            assert_eq!(c.state.mxcsr & 1, 0);
        }
        c.state.xmm[0] = f32x4([f32::NAN, 0.0, 0.0, 0.0]);
        exec(&mut c, |a| a.comiss(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.mxcsr & 1, 1);
        // Unmasked invalid: #XM and EFLAGS untouched.
        c.state.mxcsr = 0x1f80 & !(1 << 7);
        c.state.set_arith_flags(flags::ARITH, 0);
        assert_eq!(exec(&mut c, |a| a.comiss(xmm0, xmm1)), Err(Exception::SimdFp));
        assert_eq!(c.state.flags() & flags::ARITH, 0);
    }

    #[test]
    fn horizontal_and_addsub() {
        let mut c = cpu();
        c.state.xmm[0] = f32x4([1.0, 2.0, 3.0, 4.0]);
        c.state.xmm[1] = f32x4([10.0, 20.0, 30.0, 40.0]);
        exec(&mut c, |a| a.haddps(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([3.0, 7.0, 30.0, 70.0]));
        c.state.xmm[0] = f32x4([1.0, 2.0, 3.0, 4.0]);
        exec(&mut c, |a| a.hsubps(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([-1.0, -1.0, -10.0, -10.0]));
        c.state.xmm[0] = f32x4([1.0, 2.0, 3.0, 4.0]);
        exec(&mut c, |a| a.addsubps(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([-9.0, 22.0, -27.0, 44.0]));
        c.state.xmm[2] = f64x2([1.0, 2.0]);
        c.state.xmm[3] = f64x2([5.0, 7.0]);
        exec(&mut c, |a| a.haddpd(xmm2, xmm3)).unwrap();
        assert_eq!(c.state.xmm[2], f64x2([3.0, 12.0]));
    }

    #[test]
    fn round_and_dot_product() {
        let mut c = cpu();
        c.state.xmm[1] = f32x4([1.5, -1.5, 2.5, -0.2]);
        for (imm, want) in [
            (0, [2.0, -2.0, 2.0, -0.0]),
            (1, [1.0, -2.0, 2.0, -1.0]),
            (2, [2.0, -1.0, 3.0, -0.0]),
            (3, [1.0, -1.0, 2.0, -0.0]),
        ] {
            c.state.mxcsr = 0x1f80;
            exec(&mut c, |a| a.roundps(xmm0, xmm1, imm)).unwrap();
            assert_eq!(c.state.xmm[0], f32x4(want), "imm {imm}");
            assert_eq!(c.state.mxcsr & 0x20, 0x20);
        }
        // imm bit 3 suppresses PE; bit 2 takes MXCSR.RC (round up here).
        c.state.mxcsr = 0x1f80 | (2 << 13);
        exec(&mut c, |a| a.roundss(xmm0, xmm1, 0x0c)).unwrap();
        assert_eq!(c.state.xmm[0] as u32, 2.0f32.to_bits());
        assert_eq!(c.state.mxcsr & 0x20, 0);
        c.state.xmm[0] = f32x4([1.0, 2.0, 3.0, 4.0]);
        c.state.xmm[1] = f32x4([5.0, 6.0, 7.0, 8.0]);
        exec(&mut c, |a| a.dpps(xmm0, xmm1, 0xf5)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([70.0, 0.0, 70.0, 0.0]));
        c.state.xmm[0] = f32x4([1.0, 2.0, 3.0, 4.0]);
        exec(&mut c, |a| a.dpps(xmm0, xmm1, 0x31)).unwrap();
        assert_eq!(c.state.xmm[0], f32x4([17.0, 0.0, 0.0, 0.0]));
        c.state.xmm[2] = f64x2([1.0, 2.0]);
        c.state.xmm[3] = f64x2([3.0, 4.0]);
        exec(&mut c, |a| a.dppd(xmm2, xmm3, 0x32)).unwrap();
        assert_eq!(c.state.xmm[2], f64x2([0.0, 11.0]));
        // The products overflow (masked) to +inf and -inf; their sum is
        // invalid with IE unmasked: #XM, and the products' OE and PE stay
        // reported beside IE.
        c.state.mxcsr = 0x1f80 & !(1 << 7);
        c.state.xmm[2] = f64x2([1e200, -1e200]);
        c.state.xmm[3] = f64x2([1e200, 1e200]);
        assert_eq!(exec(&mut c, |a| a.dppd(xmm2, xmm3, 0x33)), Err(Exception::SimdFp));
        assert_eq!(c.state.xmm[2], f64x2([1e200, -1e200]));
        assert_eq!(c.state.mxcsr & 0x3f, 0x29, "IE, OE and PE");
    }

    #[test]
    fn mxcsr_load_store() {
        let mut c = cpu();
        c.state.gpr[0] = DATA;
        write(&c, DATA, &0x0000_ffc0u32.to_le_bytes());
        exec(&mut c, |a| a.ldmxcsr(dword_ptr(rax))).unwrap();
        assert_eq!(c.state.mxcsr, 0xffc0);
        exec(&mut c, |a| a.stmxcsr(dword_ptr(rax + 4))).unwrap();
        assert_eq!(read::<4>(&c, DATA + 4), 0xffc0u32.to_le_bytes());
        write(&c, DATA, &0x0001_1f80u32.to_le_bytes());
        assert_eq!(exec(&mut c, |a| a.ldmxcsr(dword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        assert_eq!(c.state.mxcsr, 0xffc0);
    }

    #[test]
    fn approximations() {
        let mut c = cpu();
        c.state.xmm[1] = f32x4([4.0, 0.0, -0.0, 0.25]);
        exec(&mut c, |a| a.rcpps(xmm0, xmm1)).unwrap();
        let r = c.state.xmm[0];
        assert!(((f32::from_bits(r as u32) - 0.25) / 0.25).abs() < 1.5 / 4096.0);
        assert_eq!((r >> 32) as u32, f32::INFINITY.to_bits());
        assert_eq!((r >> 64) as u32, f32::NEG_INFINITY.to_bits());
        exec(&mut c, |a| a.rsqrtss(xmm0, xmm1)).unwrap();
        assert!(((f32::from_bits(c.state.xmm[0] as u32) - 0.5) / 0.5).abs() < 1.5 / 4096.0);
        assert_eq!(c.state.mxcsr, 0x1f80);
    }
}
