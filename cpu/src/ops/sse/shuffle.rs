//! Packs, unpacks, shuffles, blends, inserts and extracts (SDM Vol. 2:
//! PACKSSWB, PACKSSDW, PACKUSWB, PACKUSDW, PUNPCKL*/PUNPCKH*, UNPCKLPS/PD,
//! UNPCKHPS/PD, PSHUFW, PSHUFD, PSHUFHW, PSHUFLW, SHUFPS, SHUFPD, PALIGNR,
//! PBLENDW, BLENDPS, BLENDPD, BLENDVPS, BLENDVPD, PBLENDVB, INSERTPS,
//! EXTRACTPS, PINSRB/W/D/Q, PEXTRB/W/D/Q, PMOVSX*/PMOVZX*, MOVMSKPS,
//! MOVMSKPD, PMOVMSKB, MOVDDUP, MOVSLDUP, MOVSHDUP).

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::int::{binary_imm, sat_s, sat_u};
use super::{check, done, get, lane, load, set, src, store, sx, with_lane, xmm, Uses};
use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::ops::{reg_read, reg_write, Handler};

sse_ops! {
    bin [] Packsswb Vpacksswb |a, b, n| pack(a, b, 2, n, |v| sat_s(v, 1));
    bin [] Packssdw Vpackssdw |a, b, n| pack(a, b, 4, n, |v| sat_s(v, 2));
    bin [] Packuswb Vpackuswb |a, b, n| pack(a, b, 2, n, |v| sat_u(v, 1));
    bin [] Packusdw Vpackusdw |a, b, n| pack(a, b, 4, n, |v| sat_u(v, 2));
    bin [] Punpcklbw Vpunpcklbw |a, b, n| interleave(a, b, 1, n, false);
    bin [] Punpcklwd Vpunpcklwd |a, b, n| interleave(a, b, 2, n, false);
    bin [] Punpckldq Vpunpckldq |a, b, n| interleave(a, b, 4, n, false);
    bin [] Unpcklps Vunpcklps |a, b, n| interleave(a, b, 4, n, false);
    bin [] Punpcklqdq Vpunpcklqdq |a, b, n| interleave(a, b, 8, n, false);
    bin [] Unpcklpd Vunpcklpd |a, b, n| interleave(a, b, 8, n, false);
    bin [] Punpckhbw Vpunpckhbw |a, b, n| interleave(a, b, 1, n, true);
    bin [] Punpckhwd Vpunpckhwd |a, b, n| interleave(a, b, 2, n, true);
    bin [] Punpckhdq Vpunpckhdq |a, b, n| interleave(a, b, 4, n, true);
    bin [] Unpckhps Vunpckhps |a, b, n| interleave(a, b, 4, n, true);
    bin [] Punpckhqdq Vpunpckhqdq |a, b, n| interleave(a, b, 8, n, true);
    bin [] Unpckhpd Vunpckhpd |a, b, n| interleave(a, b, 8, n, true);
    unimm [] Pshufd Vpshufd |b, _, imm| shuf4(b, 4, imm);
    unimm [] Pshuflw Vpshuflw |b, _, imm| (b & !0xffff_ffff_ffff_ffff) | shuf4(b, 2, imm);
    unimm [] Pshufhw Vpshufhw |b, _, imm| (b & 0xffff_ffff_ffff_ffff) | (shuf4(b >> 64, 2, imm) << 64);
    imm [0] Shufps Vshufps |a, b, _, imm| shufps(a, b, imm);
    imm [2] Shufpd Vshufpd |a, b, _, imm| {
        u128::from(lane(a, 8, usize::from(imm & 1))) | u128::from(lane(b, 8, usize::from((imm >> 1) & 1))) << 64
    };
    imm [0] Palignr Vpalignr palignr;
    imm [0] Pblendw Vpblendw |a, b, _, imm| blend(a, b, 2, u16::from(imm));
    imm [4] Blendps Vblendps |a, b, _, imm| blend(a, b, 4, u16::from(imm));
    imm [2] Blendpd Vblendpd |a, b, _, imm| blend(a, b, 8, u16::from(imm));
    un [] Movddup Vmovddup |b, _| (b & 0xffff_ffff_ffff_ffff) | (b << 64);
    un [] Movsldup Vmovsldup |b, _| dup(b, 0);
    un [] Movshdup Vmovshdup |b, _| dup(b, 1);
}

pub fn handler(code: Code) -> Option<Handler> {
    use Mnemonic as M;
    legacy(code.mnemonic()).or_else(|| {
        Some(match code.mnemonic() {
            M::Pshufw => {
                fn h(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
                    binary_imm(cpu, insn, |_, b, _, imm| shuf4(b, 2, imm))
                }
                h
            }
            M::Blendvps => blendv::<4>,
            M::Blendvpd => blendv::<8>,
            M::Pblendvb => blendv::<1>,
            M::Insertps => insertps,
            M::Extractps => pextr::<4>,
            M::Pextrb => pextr::<1>,
            M::Pextrw => pextr::<2>,
            M::Pextrd => pextr::<4>,
            M::Pextrq => pextr::<8>,
            M::Pinsrb => pinsr::<1>,
            M::Pinsrw => pinsr::<2>,
            M::Pinsrd => pinsr::<4>,
            M::Pinsrq => pinsr::<8>,
            M::Pmovsxbw => pmovx::<1, 2, true>,
            M::Pmovsxbd => pmovx::<1, 4, true>,
            M::Pmovsxbq => pmovx::<1, 8, true>,
            M::Pmovsxwd => pmovx::<2, 4, true>,
            M::Pmovsxwq => pmovx::<2, 8, true>,
            M::Pmovsxdq => pmovx::<4, 8, true>,
            M::Pmovzxbw => pmovx::<1, 2, false>,
            M::Pmovzxbd => pmovx::<1, 4, false>,
            M::Pmovzxbq => pmovx::<1, 8, false>,
            M::Pmovzxwd => pmovx::<2, 4, false>,
            M::Pmovzxwq => pmovx::<2, 8, false>,
            M::Pmovzxdq => pmovx::<4, 8, false>,
            M::Movmskps => movmsk::<4>,
            M::Movmskpd => movmsk::<8>,
            M::Pmovmskb => movmsk::<1>,
            _ => return None,
        })
    })
}

/// SHUFPS: two lanes of `a`, then two of `b`, picked by imm8's 2-bit fields.
fn shufps(a: u128, b: u128, imm: u8) -> u128 {
    let s = |v: u128, k: u8| lane(v, 4, usize::from(imm >> k) & 3);
    u128::from(s(a, 0)) | u128::from(s(a, 2)) << 32 | u128::from(s(b, 4)) << 64 | u128::from(s(b, 6)) << 96
}

/// Saturating pack of `w`-byte lanes of `a` then `b` into `w/2`-byte lanes.
fn pack(a: u128, b: u128, w: usize, n: usize, f: impl Fn(i64) -> u64) -> u128 {
    let k = n / w;
    let h = w / 2;
    let mut r = 0u128;
    for (j, v) in [a, b].into_iter().enumerate() {
        for i in 0..k {
            r = with_lane(r, h, j * k + i, f(sx(lane(v, w, i), w)));
        }
    }
    r
}

/// Interleave the low (or high) halves of `a` and `b`, `a` first.
pub(super) fn interleave(a: u128, b: u128, w: usize, n: usize, high: bool) -> u128 {
    let k = n / w / 2;
    let base = if high { k } else { 0 };
    let mut r = 0u128;
    for i in 0..k {
        r = with_lane(r, w, 2 * i, lane(a, w, base + i));
        r = with_lane(r, w, 2 * i + 1, lane(b, w, base + i));
    }
    r
}

/// Four `w`-byte lanes of `v` picked by the 2-bit fields of `imm`.
pub(super) fn shuf4(v: u128, w: usize, imm: u8) -> u128 {
    let mut r = 0u128;
    for i in 0..4 {
        r = with_lane(r, w, i, lane(v, w, usize::from(imm >> (2 * i)) & 3));
    }
    r
}

/// Lanes of `b` where `imm`'s bit is set, else of `a`.
pub(super) fn blend(a: u128, b: u128, w: usize, imm: u16) -> u128 {
    let mut r = a;
    for i in 0..16 / w {
        if imm & (1 << i) != 0 {
            r = with_lane(r, w, i, lane(b, w, i));
        }
    }
    r
}

/// PALIGNR: the `n`-byte window at byte `imm` of the concatenation dest:src.
fn palignr(a: u128, b: u128, n: usize, imm: u8) -> u128 {
    let s = usize::from(imm);
    if n == 8 {
        let cat = (a << 64) | (b & 0xffff_ffff_ffff_ffff);
        return if s >= 16 { 0 } else { (cat >> (8 * s)) & 0xffff_ffff_ffff_ffff };
    }
    match s {
        0 => b,
        1..=15 => (b >> (8 * s)) | (a << (128 - 8 * s)),
        16..=31 => a >> (8 * (s - 16)),
        _ => 0,
    }
}

/// MOVSLDUP (0) / MOVSHDUP (1).
fn dup(b: u128, odd: usize) -> u128 {
    let lo = u128::from(lane(b, 4, odd));
    let hi = u128::from(lane(b, 4, 2 + odd));
    lo | (lo << 32) | (hi << 64) | (hi << 96)
}

/// BLENDVPS/BLENDVPD/PBLENDVB: the mask is XMM0's lane sign bits.
fn blendv<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    let b = src(cpu, insn, 1)?;
    let d = insn.op0_register();
    let r = blendv_lanes(get(cpu, d), b, xmm(cpu, 0), W);
    set(cpu, d, r);
    Ok(())
}

/// The `w`-byte lanes of `b` where the lane of `m` has its sign bit set,
/// else of `a`.
pub(super) fn blendv_lanes(a: u128, b: u128, m: u128, w: usize) -> u128 {
    let mut r = a;
    for i in 0..16 / w {
        if lane(m, w, i) >> (w * 8 - 1) != 0 {
            r = with_lane(r, w, i, lane(b, w, i));
        }
    }
    r
}

fn insertps(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    let imm = insn.immediate8();
    let v = if insn.op1_kind() == OpKind::Register {
        lane(get(cpu, insn.op1_register()), 4, usize::from(imm >> 6))
    } else {
        load(cpu, insn, 4)? as u64
    };
    let d = insn.op0_register();
    let r = insertps_lanes(get(cpu, d), v, imm);
    set(cpu, d, r);
    Ok(())
}

/// INSERTPS: `v` into lane imm8\[5:4\] of `d`, then the lanes of imm8\[3:0\]
/// zeroed.
pub(super) fn insertps_lanes(d: u128, v: u64, imm: u8) -> u128 {
    let mut r = with_lane(d, 4, usize::from(imm >> 4) & 3, v);
    for i in 0..4 {
        if imm & (1 << i) != 0 {
            r = with_lane(r, 4, i, 0);
        }
    }
    r
}

/// PEXTRB/W/D/Q and EXTRACTPS: an element to a general register
/// (zero-extended) or to memory.
fn pextr<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    let s = insn.op1_register();
    let count = super::width(s) / W;
    let v = lane(get(cpu, s), W, usize::from(insn.immediate8()) & (count - 1));
    if insn.op0_kind() == OpKind::Register {
        reg_write(&mut cpu.state, insn.op0_register(), v);
    } else {
        store(cpu, insn, W, u128::from(v))?;
    }
    done(cpu, mm)
}

/// PINSRB/W/D/Q: a general register's low bits or memory into an element.
fn pinsr<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    let v = if insn.op1_kind() == OpKind::Register {
        reg_read(&cpu.state, insn.op1_register())
    } else {
        load(cpu, insn, W)? as u64
    };
    let d = insn.op0_register();
    let count = super::width(d) / W;
    let r = with_lane(get(cpu, d), W, usize::from(insn.immediate8()) & (count - 1), v);
    set(cpu, d, r);
    done(cpu, mm)
}

/// PMOVSX/PMOVZX: widen the low `F`-byte elements to `T` bytes.
fn pmovx<const F: usize, const T: usize, const SIGNED: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    let b = src(cpu, insn, 1)?;
    set(cpu, insn.op0_register(), widen(b, F, T, SIGNED, 0));
    Ok(())
}

/// The `f`-byte elements of `b` from element `first` on, sign- or
/// zero-extended to `t` bytes: one 16-byte result.
pub(super) fn widen(b: u128, f: usize, t: usize, signed: bool, first: usize) -> u128 {
    let mut r = 0u128;
    for i in 0..16 / t {
        let x = lane(b, f, first + i);
        r = with_lane(r, t, i, if signed { sx(x, f) as u64 } else { x });
    }
    r
}

/// MOVMSKPS/MOVMSKPD/PMOVMSKB: lane sign bits to a general register.
fn movmsk<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    let s = insn.op1_register();
    let m = sign_bits(get(cpu, s), W, super::width(s));
    reg_write(&mut cpu.state, insn.op0_register(), m);
    done(cpu, mm)
}

/// The sign bits of the `w`-byte lanes in the low `n` bytes of `v`.
pub(super) fn sign_bits(v: u128, w: usize, n: usize) -> u64 {
    let mut m = 0u64;
    for i in 0..n / w {
        m |= (lane(v, w, i) >> (w * 8 - 1)) << i;
    }
    m
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::testing::*;

    fn bytes(v: [u8; 16]) -> u128 {
        u128::from_le_bytes(v)
    }

    #[test]
    fn packs_and_unpacks() {
        let mut c = cpu();
        c.state.xmm[0] = u16x8([1, 0xff80, 300, 0xfe00, 0, 127, 128, 0x8000]);
        c.state.xmm[1] = u16x8([2; 8]);
        let a = c.state.xmm[0];
        exec(&mut c, |x| x.packsswb(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], bytes([1, 0x80, 0x7f, 0x80, 0, 127, 127, 0x80, 2, 2, 2, 2, 2, 2, 2, 2]));
        c.state.xmm[0] = a;
        exec(&mut c, |x| x.packuswb(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], bytes([1, 0, 0xff, 0, 0, 127, 128, 0, 2, 2, 2, 2, 2, 2, 2, 2]));
        c.state.xmm[2] = u32x4([70000, 0xffff_ffff, 5, 0x8000]);
        exec(&mut c, |x| x.packusdw(xmm2, xmm2)).unwrap();
        assert_eq!(c.state.xmm[2], u16x8([0xffff, 0, 5, 0x8000, 0xffff, 0, 5, 0x8000]));
        c.state.fpu.regs[0].mantissa = 0x0000_8000_0001_ffff;
        c.state.fpu.regs[1].mantissa = 0x7fff_ffff_0000_0000;
        exec(&mut c, |x| x.packssdw(mm0, mm1)).unwrap();
        assert_eq!(c.state.fpu.regs[0].mantissa, 0x7fff_0000_7fff_7fff);
        c.state.xmm[3] = bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        c.state.xmm[4] = bytes([16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]);
        let (a, b) = (c.state.xmm[3], c.state.xmm[4]);
        exec(&mut c, |x| x.punpcklbw(xmm3, xmm4)).unwrap();
        assert_eq!(c.state.xmm[3], bytes([0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23]));
        c.state.xmm[3] = a;
        exec(&mut c, |x| x.punpckhwd(xmm3, xmm4)).unwrap();
        assert_eq!(c.state.xmm[3], bytes([8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31]));
        c.state.xmm[3] = a;
        exec(&mut c, |x| x.unpckhpd(xmm3, xmm4)).unwrap();
        assert_eq!(c.state.xmm[3], (a >> 64) | ((b >> 64) << 64));
        // MMX unpack from a 32-bit memory operand.
        c.state.fpu.regs[2].mantissa = 0x0706_0504_0302_0100;
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[0xa0, 0xa1, 0xa2, 0xa3, 0xff, 0xff, 0xff, 0xff]);
        exec(&mut c, |x| x.punpcklbw(mm2, dword_ptr(rax))).unwrap();
        assert_eq!(c.state.fpu.regs[2].mantissa, 0xa303_a202_a101_a000);
    }

    #[test]
    fn shuffles_and_align() {
        let mut c = cpu();
        c.state.xmm[1] = u32x4([10, 11, 12, 13]);
        exec(&mut c, |x| x.pshufd(xmm0, xmm1, 0x1b)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([13, 12, 11, 10]));
        c.state.xmm[1] = u16x8([0, 1, 2, 3, 4, 5, 6, 7]);
        exec(&mut c, |x| x.pshufhw(xmm0, xmm1, 0x1b)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([0, 1, 2, 3, 7, 6, 5, 4]));
        exec(&mut c, |x| x.pshuflw(xmm0, xmm1, 0x00)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([0, 0, 0, 0, 4, 5, 6, 7]));
        c.state.fpu.regs[1].mantissa = 0x0003_0002_0001_0000;
        exec(&mut c, |x| x.pshufw(mm0, mm1, 0xe4 ^ 0xff)).unwrap();
        assert_eq!(c.state.fpu.regs[0].mantissa, 0x0000_0001_0002_0003);
        c.state.xmm[2] = u32x4([0, 1, 2, 3]);
        c.state.xmm[3] = u32x4([4, 5, 6, 7]);
        exec(&mut c, |x| x.shufps(xmm2, xmm3, 0b01_00_11_10)).unwrap();
        assert_eq!(c.state.xmm[2], u32x4([2, 3, 4, 5]));
        c.state.xmm[2] = u32x4([0, 1, 2, 3]);
        exec(&mut c, |x| x.shufpd(xmm2, xmm3, 0b01)).unwrap();
        assert_eq!(c.state.xmm[2], u32x4([2, 3, 4, 5]));
        c.state.xmm[4] = bytes([16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]);
        c.state.xmm[5] = bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        let a = c.state.xmm[4];
        exec(&mut c, |x| x.palignr(xmm4, xmm5, 5)).unwrap();
        assert_eq!(c.state.xmm[4], bytes([5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]));
        c.state.xmm[4] = a;
        exec(&mut c, |x| x.palignr(xmm4, xmm5, 20)).unwrap();
        assert_eq!(c.state.xmm[4], a >> 32);
        c.state.fpu.regs[0].mantissa = 0x1716_1514_1312_1110;
        c.state.fpu.regs[1].mantissa = 0x0706_0504_0302_0100;
        exec(&mut c, |x| x.palignr(mm0, mm1, 3)).unwrap();
        assert_eq!(c.state.fpu.regs[0].mantissa, 0x1211_1007_0605_0403);
    }

    #[test]
    fn blends_inserts_extracts() {
        let mut c = cpu();
        c.state.xmm[1] = u32x4([0, 1, 2, 3]);
        c.state.xmm[2] = u32x4([4, 5, 6, 7]);
        exec(&mut c, |x| x.blendps(xmm1, xmm2, 0b1010)).unwrap();
        assert_eq!(c.state.xmm[1], u32x4([0, 5, 2, 7]));
        c.state.xmm[0] = u32x4([0x8000_0000, 0, 0xffff_ffff, 1]);
        c.state.xmm[1] = u32x4([0, 1, 2, 3]);
        exec(&mut c, |x| x.blendvps(xmm1, xmm2)).unwrap();
        assert_eq!(c.state.xmm[1], u32x4([4, 1, 6, 3]));
        c.state.xmm[1] = u32x4([0, 1, 2, 3]);
        exec(&mut c, |x| x.pblendvb(xmm1, xmm2)).unwrap();
        assert_eq!(c.state.xmm[1], u32x4([0, 1, 6, 3]));
        c.state.xmm[1] = u32x4([0, 1, 2, 3]);
        exec(&mut c, |x| x.insertps(xmm1, xmm2, (3 << 6) | (1 << 4) | 0b0100)).unwrap();
        assert_eq!(c.state.xmm[1], u32x4([0, 7, 0, 3]));
        c.state.gpr[3] = u64::MAX;
        exec(&mut c, |x| x.extractps(ebx, xmm2, 2)).unwrap();
        assert_eq!(c.state.gpr[3], 6);
        c.state.gpr[0] = DATA;
        exec(&mut c, |x| x.pextrw(word_ptr(rax), xmm2, 2)).unwrap();
        assert_eq!(read::<2>(&c, DATA), [5, 0]);
        exec(&mut c, |x| x.pextrq(rbx, xmm2, 1)).unwrap();
        assert_eq!(c.state.gpr[3], 6 | (7 << 32));
        c.state.fpu.regs[4].mantissa = 0x4444_3333_2222_1111;
        exec(&mut c, |x| x.pextrw(ecx, mm4, 6)).unwrap();
        assert_eq!(c.state.gpr[1], 0x3333);
        c.state.gpr[1] = 0xabcd_ef01;
        exec(&mut c, |x| x.pinsrw(mm4, ecx, 1)).unwrap();
        assert_eq!(c.state.fpu.regs[4].mantissa, 0x4444_3333_ef01_1111);
        exec(&mut c, |x| x.pinsrb(xmm2, ecx, 15)).unwrap();
        assert_eq!(c.state.xmm[2] >> 120, 0x01);
        write(&c, DATA, &0x1122_3344_5566_7788u64.to_le_bytes());
        exec(&mut c, |x| x.pinsrq(xmm2, qword_ptr(rax), 0)).unwrap();
        assert_eq!(c.state.xmm[2] as u64, 0x1122_3344_5566_7788);
    }

    #[test]
    fn widening_moves_and_masks() {
        let mut c = cpu();
        c.state.xmm[1] = bytes([0xff, 2, 0x80, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        exec(&mut c, |x| x.pmovsxbw(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u16x8([0xffff, 2, 0xff80, 4, 5, 6, 7, 8]));
        exec(&mut c, |x| x.pmovzxbd(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([0xff, 2, 0x80, 4]));
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[0xfe, 0xff, 0xff, 0xff, 1, 0, 0, 0]);
        exec(&mut c, |x| x.pmovsxdq(xmm0, qword_ptr(rax))).unwrap();
        assert_eq!(c.state.xmm[0], u128::from((-2i64) as u64) | (1 << 64));
        exec(&mut c, |x| x.pmovmskb(eax, xmm1)).unwrap();
        assert_eq!(c.state.gpr[0], 0b101);
        c.state.xmm[2] = u32x4([0x8000_0000, 0, 0xffff_ffff, 0x8000_0001]);
        exec(&mut c, |x| x.movmskps(rdx, xmm2)).unwrap();
        assert_eq!(c.state.gpr[2], 0b1101);
        exec(&mut c, |x| x.movmskpd(edx, xmm2)).unwrap();
        assert_eq!(c.state.gpr[2], 0b10);
        c.state.xmm[3] = u32x4([1, 2, 3, 4]);
        exec(&mut c, |x| x.movsldup(xmm4, xmm3)).unwrap();
        assert_eq!(c.state.xmm[4], u32x4([1, 1, 3, 3]));
        exec(&mut c, |x| x.movshdup(xmm4, xmm3)).unwrap();
        assert_eq!(c.state.xmm[4], u32x4([2, 2, 4, 4]));
        exec(&mut c, |x| x.movddup(xmm4, xmm3)).unwrap();
        assert_eq!(c.state.xmm[4], u32x4([1, 2, 1, 2]));
    }
}
