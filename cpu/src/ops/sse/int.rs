//! Integer SIMD on MMX and XMM registers (SDM Vol. 2: PADD*/PSUB* with and
//! without saturation, PMULLW/PMULHW/PMULHUW/PMULLD/PMULUDQ/PMULDQ, PMADDWD,
//! PMADDUBSW, PMULHRSW, PSADBW, PAVGB/W, PMIN*/PMAX*, PCMPEQ*/PCMPGT*,
//! PAND/PANDN/POR/PXOR and ANDPS/ANDNPS/ORPS/XORPS/..PD, PSIGN*, PABS*,
//! PHADD*/PHSUB*, PSLL*/PSRL*/PSRA* by register and immediate, PSLLDQ/PSRLDQ,
//! MPSADBW, PHMINPOSUW, PTEST).
//!
//! Each instruction is one lane-wise closure over `(dest, src, width)`; the
//! same handler serves the MMX (8-byte) and XMM (16-byte) forms, and the
//! VEX form (on each 128-bit half of an XMM or YMM register) comes from the
//! same list (`sse_ops!`).

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::{check, done, get, lane, map1, set, src, sx, trunc, width, Uses};
use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::ops::Handler;
use crate::state::flags::{ARITH, CF, ZF};

/// `dest = f(dest, src, width)`.
#[inline(always)]
pub(super) fn binary(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128, u128, usize) -> u128) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    let b = src(cpu, insn, 1)?;
    let d = insn.op0_register();
    let r = f(get(cpu, d), b, width(d));
    set(cpu, d, r);
    done(cpu, mm)
}

/// `dest = f(dest, src, width, imm8)`.
#[inline(always)]
pub(super) fn binary_imm(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128, u128, usize, u8) -> u128) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    let b = src(cpu, insn, 1)?;
    let d = insn.op0_register();
    let r = f(get(cpu, d), b, width(d), insn.immediate8());
    set(cpu, d, r);
    done(cpu, mm)
}

/// Shifts: the count is imm8, or the low 64 bits of the source operand.
#[inline(always)]
pub(super) fn shift(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128, u64, usize) -> u128) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    let count =
        if insn.op1_kind() == OpKind::Immediate8 { u64::from(insn.immediate8()) } else { src(cpu, insn, 1)? as u64 };
    let d = insn.op0_register();
    let r = f(get(cpu, d), count, width(d));
    set(cpu, d, r);
    done(cpu, mm)
}

/// Signed saturation to `w` bytes.
#[inline(always)]
pub(super) fn sat_s(v: i64, w: usize) -> u64 {
    let max = (1i64 << (w * 8 - 1)) - 1;
    v.clamp(-max - 1, max) as u64
}

/// Unsigned saturation to `w` bytes.
#[inline(always)]
pub(super) fn sat_u(v: i64, w: usize) -> u64 {
    v.clamp(0, (1i64 << (w * 8)) - 1) as u64
}

#[inline(always)]
fn smin(x: u64, y: u64, w: usize) -> u64 {
    if sx(x, w) < sx(y, w) {
        x
    } else {
        y
    }
}

#[inline(always)]
fn smax(x: u64, y: u64, w: usize) -> u64 {
    if sx(x, w) > sx(y, w) {
        x
    } else {
        y
    }
}

#[inline(always)]
pub(super) fn mask_if(c: bool) -> u64 {
    if c {
        u64::MAX
    } else {
        0
    }
}

#[inline(always)]
fn sign(x: u64, y: u64, w: usize) -> u64 {
    match sx(y, w) {
        v if v < 0 => x.wrapping_neg(),
        0 => 0,
        _ => x,
    }
}

/// Horizontal pairs: the low half of the result from `a`'s pairs, the high
/// half from `b`'s (PHADD/PHSUB).
#[inline(always)]
fn horiz(a: u128, b: u128, w: usize, n: usize, f: impl Fn(u64, u64) -> u64) -> u128 {
    let lanes = n / w;
    let half = lanes / 2;
    let mut r = 0u128;
    for i in 0..lanes {
        let (s, j) = if i < half { (a, i) } else { (b, i - half) };
        let v = f(lane(s, w, 2 * j), lane(s, w, 2 * j + 1)) & super::lane_mask(w);
        r |= u128::from(v) << (i * w * 8);
    }
    r
}

/// Logical shift left of `w`-byte lanes; counts past the lane width give zero.
#[inline(always)]
fn sll(a: u128, c: u64, w: usize, n: usize) -> u128 {
    if c >= (w * 8) as u64 {
        0
    } else {
        map1(a, w, n, |x| x << c)
    }
}

#[inline(always)]
fn srl(a: u128, c: u64, w: usize, n: usize) -> u128 {
    if c >= (w * 8) as u64 {
        0
    } else {
        map1(a, w, n, |x| x >> c)
    }
}

/// Arithmetic shift right; counts past the lane width fill with the sign.
#[inline(always)]
fn sra(a: u128, c: u64, w: usize, n: usize) -> u128 {
    let c = c.min((w * 8 - 1) as u64);
    map1(a, w, n, |x| (sx(x, w) >> c) as u64)
}

pub(super) fn pshufb(a: u128, b: u128, n: usize) -> u128 {
    let mut r = 0u128;
    for i in 0..n {
        let sel = lane(b, 1, i) as usize;
        if sel & 0x80 == 0 {
            r |= u128::from(lane(a, 1, sel & (n - 1))) << (8 * i);
        }
    }
    r
}

fn psadbw(x: u64, y: u64) -> u64 {
    (0..8).map(|i| ((x >> (8 * i)) as u8).abs_diff((y >> (8 * i)) as u8) as u64).sum()
}

fn mpsadbw(a: u128, b: u128, imm: u8) -> u128 {
    let so = usize::from(imm & 3) * 4;
    let dof = usize::from((imm >> 2) & 1) * 4;
    let mut r = 0u128;
    for i in 0..8 {
        let s: u64 = (0..4).map(|j| (lane(a, 1, dof + i + j) as u8).abs_diff(lane(b, 1, so + j) as u8) as u64).sum();
        r |= u128::from(s) << (16 * i);
    }
    r
}

fn phminposuw(b: u128) -> u128 {
    let (mut min, mut idx) = (lane(b, 2, 0), 0);
    for i in 1..8 {
        let v = lane(b, 2, i);
        if v < min {
            min = v;
            idx = i;
        }
    }
    u128::from(min) | ((idx as u128) << 16)
}

/// PTEST: ZF = (dest AND src) == 0, CF = (NOT dest AND src) == 0; the other
/// arithmetic flags cleared.
fn ptest(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    let b = src(cpu, insn, 1)?;
    let a = get(cpu, insn.op0_register());
    let mut f = 0;
    if a & b == 0 {
        f |= ZF;
    }
    if !a & b == 0 {
        f |= CF;
    }
    cpu.state.set_arith_flags(ARITH, f);
    Ok(())
}

sse_ops! {
    lanes [1] Paddb Vpaddb |x, y| x.wrapping_add(y);
    lanes [2] Paddw Vpaddw |x, y| x.wrapping_add(y);
    lanes [4] Paddd Vpaddd |x, y| x.wrapping_add(y);
    lanes [8] Paddq Vpaddq |x, y| x.wrapping_add(y);
    lanes [1] Psubb Vpsubb |x, y| x.wrapping_sub(y);
    lanes [2] Psubw Vpsubw |x, y| x.wrapping_sub(y);
    lanes [4] Psubd Vpsubd |x, y| x.wrapping_sub(y);
    lanes [8] Psubq Vpsubq |x, y| x.wrapping_sub(y);
    lanes [1] Paddsb Vpaddsb |x, y| sat_s(sx(x, 1) + sx(y, 1), 1);
    lanes [2] Paddsw Vpaddsw |x, y| sat_s(sx(x, 2) + sx(y, 2), 2);
    lanes [1] Psubsb Vpsubsb |x, y| sat_s(sx(x, 1) - sx(y, 1), 1);
    lanes [2] Psubsw Vpsubsw |x, y| sat_s(sx(x, 2) - sx(y, 2), 2);
    lanes [1] Paddusb Vpaddusb |x, y| (x + y).min(0xff);
    lanes [2] Paddusw Vpaddusw |x, y| (x + y).min(0xffff);
    lanes [1] Psubusb Vpsubusb |x, y| x.saturating_sub(y);
    lanes [2] Psubusw Vpsubusw |x, y| x.saturating_sub(y);
    lanes [2] Pmullw Vpmullw |x, y| (sx(x, 2) * sx(y, 2)) as u64;
    lanes [2] Pmulhw Vpmulhw |x, y| ((sx(x, 2) * sx(y, 2)) >> 16) as u64;
    lanes [2] Pmulhuw Vpmulhuw |x, y| (x * y) >> 16;
    lanes [4] Pmulld Vpmulld |x, y| x.wrapping_mul(y);
    lanes [8] Pmuludq Vpmuludq |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff);
    lanes [8] Pmuldq Vpmuldq |x, y| (sx(x, 4) * sx(y, 4)) as u64;
    lanes [4] Pmaddwd Vpmaddwd |x, y| (sx(x, 2) * sx(y, 2) + sx(x >> 16, 2) * sx(y >> 16, 2)) as u64;
    lanes [2] Pmaddubsw Vpmaddubsw
        |x, y| sat_s((x & 0xff) as i64 * sx(y, 1) + ((x >> 8) & 0xff) as i64 * sx(y >> 8, 1), 2);
    lanes [2] Pmulhrsw Vpmulhrsw |x, y| ((((sx(x, 2) * sx(y, 2)) >> 14) + 1) >> 1) as u64;
    lanes [8] Psadbw Vpsadbw psadbw;
    lanes [1] Pavgb Vpavgb |x, y| (x + y + 1) >> 1;
    lanes [2] Pavgw Vpavgw |x, y| (x + y + 1) >> 1;
    lanes [1] Pminub Vpminub |x, y| x.min(y);
    lanes [2] Pminuw Vpminuw |x, y| x.min(y);
    lanes [4] Pminud Vpminud |x, y| x.min(y);
    lanes [1] Pminsb Vpminsb |x, y| smin(x, y, 1);
    lanes [2] Pminsw Vpminsw |x, y| smin(x, y, 2);
    lanes [4] Pminsd Vpminsd |x, y| smin(x, y, 4);
    lanes [1] Pmaxub Vpmaxub |x, y| x.max(y);
    lanes [2] Pmaxuw Vpmaxuw |x, y| x.max(y);
    lanes [4] Pmaxud Vpmaxud |x, y| x.max(y);
    lanes [1] Pmaxsb Vpmaxsb |x, y| smax(x, y, 1);
    lanes [2] Pmaxsw Vpmaxsw |x, y| smax(x, y, 2);
    lanes [4] Pmaxsd Vpmaxsd |x, y| smax(x, y, 4);
    lanes [1] Pcmpeqb Vpcmpeqb |x, y| mask_if(x == y);
    lanes [2] Pcmpeqw Vpcmpeqw |x, y| mask_if(x == y);
    lanes [4] Pcmpeqd Vpcmpeqd |x, y| mask_if(x == y);
    lanes [8] Pcmpeqq Vpcmpeqq |x, y| mask_if(x == y);
    lanes [1] Pcmpgtb Vpcmpgtb |x, y| mask_if(sx(x, 1) > sx(y, 1));
    lanes [2] Pcmpgtw Vpcmpgtw |x, y| mask_if(sx(x, 2) > sx(y, 2));
    lanes [4] Pcmpgtd Vpcmpgtd |x, y| mask_if(sx(x, 4) > sx(y, 4));
    lanes [8] Pcmpgtq Vpcmpgtq |x, y| mask_if(sx(x, 8) > sx(y, 8));
    bin [] Pand Vpand |a, b, n| trunc(a & b, n);
    bin [] Andps Vandps |a, b, n| trunc(a & b, n);
    bin [] Andpd Vandpd |a, b, n| trunc(a & b, n);
    bin [] Pandn Vpandn |a, b, n| trunc(!a & b, n);
    bin [] Andnps Vandnps |a, b, n| trunc(!a & b, n);
    bin [] Andnpd Vandnpd |a, b, n| trunc(!a & b, n);
    bin [] Por Vpor |a, b, n| trunc(a | b, n);
    bin [] Orps Vorps |a, b, n| trunc(a | b, n);
    bin [] Orpd Vorpd |a, b, n| trunc(a | b, n);
    bin [] Pxor Vpxor |a, b, n| trunc(a ^ b, n);
    bin [] Xorps Vxorps |a, b, n| trunc(a ^ b, n);
    bin [] Xorpd Vxorpd |a, b, n| trunc(a ^ b, n);
    lanes [1] Psignb Vpsignb |x, y| sign(x, y, 1);
    lanes [2] Psignw Vpsignw |x, y| sign(x, y, 2);
    lanes [4] Psignd Vpsignd |x, y| sign(x, y, 4);
    un [] Pabsb Vpabsb |b, n| map1(b, 1, n, |y| sx(y, 1).unsigned_abs());
    un [] Pabsw Vpabsw |b, n| map1(b, 2, n, |y| sx(y, 2).unsigned_abs());
    un [] Pabsd Vpabsd |b, n| map1(b, 4, n, |y| sx(y, 4).unsigned_abs());
    bin [] Phaddw Vphaddw |a, b, n| horiz(a, b, 2, n, |x, y| x.wrapping_add(y));
    bin [] Phaddd Vphaddd |a, b, n| horiz(a, b, 4, n, |x, y| x.wrapping_add(y));
    bin [] Phaddsw Vphaddsw |a, b, n| horiz(a, b, 2, n, |x, y| sat_s(sx(x, 2) + sx(y, 2), 2));
    bin [] Phsubw Vphsubw |a, b, n| horiz(a, b, 2, n, |x, y| x.wrapping_sub(y));
    bin [] Phsubd Vphsubd |a, b, n| horiz(a, b, 4, n, |x, y| x.wrapping_sub(y));
    bin [] Phsubsw Vphsubsw |a, b, n| horiz(a, b, 2, n, |x, y| sat_s(sx(x, 2) - sx(y, 2), 2));
    bin [] Pshufb Vpshufb pshufb;
    imm [3] Mpsadbw Vmpsadbw |a, b, _, imm| mpsadbw(a, b, imm);
    un [] Phminposuw Vphminposuw |b, _| phminposuw(b);
    sh [] Psllw Vpsllw |a, c, n| sll(a, c, 2, n);
    sh [] Pslld Vpslld |a, c, n| sll(a, c, 4, n);
    sh [] Psllq Vpsllq |a, c, n| sll(a, c, 8, n);
    sh [] Psrlw Vpsrlw |a, c, n| srl(a, c, 2, n);
    sh [] Psrld Vpsrld |a, c, n| srl(a, c, 4, n);
    sh [] Psrlq Vpsrlq |a, c, n| srl(a, c, 8, n);
    sh [] Psraw Vpsraw |a, c, n| sra(a, c, 2, n);
    sh [] Psrad Vpsrad |a, c, n| sra(a, c, 4, n);
    sh [] Pslldq Vpslldq |a, c, _| if c > 15 { 0 } else { a << (8 * c) };
    sh [] Psrldq Vpsrldq |a, c, _| if c > 15 { 0 } else { a >> (8 * c) };
}

pub fn handler(code: Code) -> Option<Handler> {
    legacy(code.mnemonic()).or_else(|| match code.mnemonic() {
        Mnemonic::Ptest => Some(ptest as Handler),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::testing::*;
    use crate::state::flags;

    fn bytes(v: [u8; 16]) -> u128 {
        u128::from_le_bytes(v)
    }

    #[test]
    fn add_sub_saturation() {
        let mut c = cpu();
        c.state.xmm[0] = bytes([0x7f, 0x80, 0xff, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0]);
        c.state.xmm[1] = bytes([1, 0xff, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20]);
        let (a, b) = (c.state.xmm[0], c.state.xmm[1]);
        exec(&mut c, |x| x.paddb(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], bytes([0x80, 0x7f, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.paddsb(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], bytes([0x7f, 0x80, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.paddusb(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], bytes([0x80, 0xff, 0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.psubusb(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], bytes([0x7e, 0, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xd0]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.psubsb(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0] as u32, u32::from_le_bytes([0x7e, 0x81, 0xfe, 0]));
        let _ = b;
        // MMX: only 64 bits, wrap.
        c.state.fpu.regs[0].mantissa = 0xffff_0001_7fff_8000;
        c.state.fpu.regs[1].mantissa = 0x0001_0001_0001_ffff;
        exec(&mut c, |x| x.paddsw(mm0, mm1)).unwrap();
        assert_eq!(c.state.fpu.regs[0].mantissa, 0x0000_0002_7fff_8000);
        exec(&mut c, |x| x.paddq(mm0, mm1)).unwrap();
        assert_eq!(c.state.fpu.regs[0].mantissa, 0x0001_0003_8001_7fff);
    }

    #[test]
    fn multiplies() {
        let mut c = cpu();
        c.state.xmm[0] = u16x8([0x8000, 3, 0xffff, 100, 0x4000, 0, 0, 0]);
        c.state.xmm[1] = u16x8([0x8000, 5, 2, 200, 0x4000, 0, 0, 0]);
        let (a, b) = (c.state.xmm[0], c.state.xmm[1]);
        exec(&mut c, |x| x.pmullw(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([0, 15, 0xfffe, 20000, 0, 0, 0, 0]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.pmulhw(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([0x4000, 0, 0xffff, 0, 0x1000, 0, 0, 0]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.pmulhuw(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([0x4000, 0, 1, 0, 0x1000, 0, 0, 0]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.pmaddwd(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([0x4000_0000 + 15, (-2i32 + 20000) as u32, 0x1000_0000, 0]));
        c.state.xmm[0] = u16x8([0x8000, 0x8000, 0, 0, 0, 0, 0, 0]);
        exec(&mut c, |x| x.pmaddwd(xmm0, xmm0)).unwrap();
        assert_eq!(c.state.xmm[0] as u32, 0x8000_0000);
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.pmulhrsw(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0] as u16, 0x8000); // -1 * -1 rounds to 0x8000
        c.state.xmm[2] = u32x4([0xffff_ffff, 9, 2, 7]);
        c.state.xmm[3] = u32x4([2, 9, 0xffff_fffd, 7]);
        exec(&mut c, |x| x.pmuludq(xmm2, xmm3)).unwrap();
        assert_eq!(c.state.xmm[2], 0x1_ffff_fffe | (u128::from(0x1_ffff_fffau64) << 64));
        c.state.xmm[2] = u32x4([0xffff_ffff, 9, 2, 7]);
        exec(&mut c, |x| x.pmuldq(xmm2, xmm3)).unwrap();
        assert_eq!(c.state.xmm[2], u128::from((-2i64) as u64) | (u128::from((-6i64) as u64) << 64));
        c.state.xmm[4] = bytes([255, 255, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        c.state.xmm[5] = bytes([127, 127, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        exec(&mut c, |x| x.pmaddubsw(xmm4, xmm5)).unwrap();
        assert_eq!(c.state.xmm[4] as u32, 0x7fff | (((-256i32 + 3) as u32 & 0xffff) << 16));
        let _ = b;
    }

    #[test]
    fn compare_min_max_avg_sad() {
        let mut c = cpu();
        c.state.xmm[0] = u32x4([1, 0x8000_0000, 5, 5]);
        c.state.xmm[1] = u32x4([1, 0, 6, 4]);
        let a = c.state.xmm[0];
        exec(&mut c, |x| x.pcmpeqd(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([u32::MAX, 0, 0, 0]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.pcmpgtd(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([0, 0, 0, u32::MAX]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.pminsd(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([1, 0x8000_0000, 5, 4]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.pmaxud(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([1, 0x8000_0000, 6, 5]));
        c.state.xmm[2] = u128::from(u64::MAX) << 64 | 5;
        c.state.xmm[3] = (u128::from((-1i64) as u64) << 64) | 6;
        exec(&mut c, |x| x.pcmpgtq(xmm2, xmm3)).unwrap();
        assert_eq!(c.state.xmm[2], 0);
        c.state.fpu.regs[0].mantissa = 0x00ff_1020;
        c.state.fpu.regs[1].mantissa = 0x00ff_2010;
        exec(&mut c, |x| x.pavgb(mm0, mm1)).unwrap();
        assert_eq!(c.state.fpu.regs[0].mantissa, 0x00ff_1818);
        c.state.fpu.regs[0].mantissa = 0x0000_0000_0000_ff00;
        exec(&mut c, |x| x.psadbw(mm0, mm1)).unwrap();
        assert_eq!(c.state.fpu.regs[0].mantissa, 0x10 + (0xff - 0x20) + 0xff);
    }

    #[test]
    fn sign_abs_horizontal_shuffle() {
        let mut c = cpu();
        c.state.xmm[0] = u16x8([5, 5, 5, 0x8000, 1, 2, 3, 4]);
        c.state.xmm[1] = u16x8([0xffff, 0, 7, 0xffff, 1, 1, 1, 1]);
        exec(&mut c, |x| x.psignw(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([0xfffb, 0, 5, 0x8000, 1, 2, 3, 4]));
        exec(&mut c, |x| x.pabsw(xmm2, xmm1)).unwrap();
        assert_eq!(c.state.xmm[2], u16x8([1, 0, 7, 1, 1, 1, 1, 1]));
        c.state.xmm[0] = u16x8([1, 2, 3, 4, 0x7fff, 1, 8, 9]);
        c.state.xmm[1] = u16x8([10, 20, 30, 40, 50, 60, 70, 80]);
        let a = c.state.xmm[0];
        exec(&mut c, |x| x.phaddw(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([3, 7, 0x8000, 17, 30, 70, 110, 150]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.phaddsw(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([3, 7, 0x7fff, 17, 30, 70, 110, 150]));
        c.state.fpu.regs[0].mantissa = 0x0004_0003_0002_0001;
        c.state.fpu.regs[1].mantissa = 0x0040_0030_0020_0010;
        exec(&mut c, |x| x.phsubw(mm0, mm1)).unwrap();
        assert_eq!(c.state.fpu.regs[0].mantissa, 0xfff0_fff0_ffff_ffff);
        c.state.xmm[3] = bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        c.state.xmm[4] = bytes([15, 0x80, 3, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        exec(&mut c, |x| x.pshufb(xmm3, xmm4)).unwrap();
        assert_eq!(c.state.xmm[3], bytes([15, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn shifts() {
        let mut c = cpu();
        c.state.xmm[0] = u16x8([0x8001, 2, 3, 4, 5, 6, 7, 8]);
        exec(&mut c, |x| x.psllw(xmm0, 1)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([2, 4, 6, 8, 10, 12, 14, 16]));
        c.state.xmm[0] = u16x8([0x8000, 2, 3, 4, 5, 6, 7, 8]);
        exec(&mut c, |x| x.psraw(xmm0, 20)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([0xffff, 0, 0, 0, 0, 0, 0, 0]));
        c.state.xmm[0] = u32x4([0x8000_0000, 1, 2, 3]);
        c.state.xmm[1] = u128::from(31u64) | (u128::from(u64::MAX) << 64);
        exec(&mut c, |x| x.psrld(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([1, 0, 0, 0]));
        c.state.xmm[1] = 1 << 32; // count = 2^32: everything shifted out
        c.state.xmm[0] = u32x4([1, 1, 1, 1]);
        exec(&mut c, |x| x.pslld(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], 0);
        c.state.xmm[0] = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10;
        exec(&mut c, |x| x.psrldq(xmm0, 3)).unwrap();
        assert_eq!(c.state.xmm[0], 0x0000_0001_0203_0405_0607_0809_0a0b_0c0d);
        exec(&mut c, |x| x.pslldq(xmm0, 16)).unwrap();
        assert_eq!(c.state.xmm[0], 0);
        c.state.fpu.regs[2].mantissa = 0x8000_0000_0000_0001;
        exec(&mut c, |x| x.psrlq(mm2, 63)).unwrap();
        assert_eq!(c.state.fpu.regs[2].mantissa, 1);
        c.state.fpu.regs[2].mantissa = 0xf000_0000_8000_0000;
        c.state.fpu.regs[3].mantissa = 4;
        exec(&mut c, |x| x.psrad(mm2, mm3)).unwrap();
        assert_eq!(c.state.fpu.regs[2].mantissa, 0xff00_0000_f800_0000);
    }

    #[test]
    fn logic_ptest_mpsadbw_phminposuw() {
        let mut c = cpu();
        c.state.xmm[0] = 0xf0f0;
        c.state.xmm[1] = 0xff00;
        exec(&mut c, |x| x.andnps(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], 0x0f00);
        exec(&mut c, |x| x.xorpd(xmm0, xmm0)).unwrap();
        assert_eq!(c.state.xmm[0], 0);
        c.state.xmm[0] = 0b1100;
        c.state.xmm[1] = 0b0011;
        c.state.rflags |= flags::OF | flags::SF;
        exec(&mut c, |x| x.ptest(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.flags() & flags::ARITH, flags::ZF);
        c.state.xmm[1] = 0b0100;
        exec(&mut c, |x| x.ptest(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.flags() & flags::ARITH, flags::CF);
        c.state.xmm[2] = bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        c.state.xmm[3] = bytes([1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        exec(&mut c, |x| x.mpsadbw(xmm2, xmm3, 0)).unwrap();
        // Block i: |b[i..i+4] - 1|.
        assert_eq!(c.state.xmm[2], u16x8([4, 6, 10, 14, 18, 22, 26, 30]));
        c.state.xmm[2] = bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        exec(&mut c, |x| x.mpsadbw(xmm2, xmm3, 5)).unwrap();
        // Source block 1 (all 2s), destination from byte 4.
        assert_eq!(c.state.xmm[2] as u16, 2 + 3 + 4 + 5);
        c.state.xmm[4] = u16x8([9, 7, 3, 8, 3, 100, 5, 6]);
        exec(&mut c, |x| x.phminposuw(xmm5, xmm4)).unwrap();
        assert_eq!(c.state.xmm[5], 3 | (2 << 16));
    }
}
