//! AVX and AVX2 in their VEX encodings (SDM Vol. 1 chapter 14; Vol. 2 §2.3
//! and the instruction pages; Vol. 2 §2.8 for the exception classes).
//!
//! Registers: YMMi is `xmm[i]` (bits 127:0) and `ymm_hi[i]` (bits 255:128).
//! A VEX.128 instruction that writes an XMM register zeroes bits 255:128 of
//! it; a VEX.256 one writes all 256 bits. Most 256-bit operations are the
//! 128-bit operation on each half, so the lane helpers of the legacy SSE
//! families serve both.
//!
//! Availability, checked in this order: #UD unless the model's AVX is on
//! ([`Cpu::set_avx`]), in protected mode outside virtual-8086 mode, with
//! CR4.OSXSAVE = 1 and XCR0 bits 2:1 = 11b, and without a LOCK prefix;
//! then #NM when CR0.TS = 1. CR0.EM and CR4.OSFXSR do not matter. (A VEX
//! prefix after 66/F2/F3/REX, a VEX.vvvv other than 1111b where the
//! instruction has no such operand and a VEX.L the instruction does not
//! take are invalid encodings: iced-x86 decodes them as such, which is #UD.)
//!
//! Memory: VMOVDQA, VMOVAPS and VMOVAPD need their 16- or 32-byte operand
//! aligned to its size (#GP(0)); the other VEX memory operands may be
//! misaligned. A VEX code without a handler here raises #UD and is logged
//! by name, as every unimplemented instruction is.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::int::{mask_if, pshufb};
use super::shuffle::{interleave, shuf4};
use super::{lane, lin_addr, map2};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault, GP0};
use crate::ops::xsave::{SSE, YMM};
use crate::ops::{ea, mem_seg, reg_read, reg_write, Handler};
use crate::state::cr;
use crate::state::flags::{ARITH, CF, ZF};

/// A 256-bit value: bits 127:0, then bits 255:128.
type Y = [u128; 2];

const XMM0: usize = Register::XMM0 as usize;
const YMM0: usize = Register::YMM0 as usize;

// ---- availability -------------------------------------------------------------

/// The #UD and #NM checks of every VEX-encoded vector instruction.
#[inline]
fn check(cpu: &Cpu, insn: &Instruction) -> Fault<()> {
    let s = &cpu.state;
    if !cpu.avx()
        || !s.protected()
        || s.v86()
        || s.cr4 & cr::CR4_OSXSAVE == 0
        || s.xcr0 & (SSE | YMM) != SSE | YMM
        || insn.has_lock_prefix()
    {
        return Err(Exception::InvalidOpcode);
    }
    if s.cr0 & cr::CR0_TS != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    Ok(())
}

// ---- registers ----------------------------------------------------------------

/// The register number of an XMM or YMM register.
#[inline(always)]
fn index(r: Register) -> usize {
    if r.is_ymm() {
        r as usize - YMM0
    } else {
        r as usize - XMM0
    }
}

/// Read an XMM (upper half 0) or YMM register.
#[inline(always)]
fn get(cpu: &Cpu, r: Register) -> Y {
    let i = index(r);
    if r.is_ymm() {
        [cpu.state.xmm[i], cpu.state.ymm_hi[i]]
    } else {
        [cpu.state.xmm[i], 0]
    }
}

/// Write an XMM register (bits 255:128 zeroed) or a YMM register.
#[inline(always)]
fn set(cpu: &mut Cpu, r: Register, v: Y) {
    let i = index(r);
    cpu.state.xmm[i] = v[0];
    cpu.state.ymm_hi[i] = if r.is_ymm() { v[1] } else { 0 };
}

/// How many 128-bit halves an operation on `r` covers.
#[inline(always)]
fn halves(r: Register) -> usize {
    if r.is_ymm() {
        2
    } else {
        1
    }
}

// ---- memory -------------------------------------------------------------------

/// The instructions whose memory operand must be aligned to its size.
fn aligned(m: Mnemonic) -> bool {
    matches!(m, Mnemonic::Vmovdqa | Mnemonic::Vmovaps | Mnemonic::Vmovapd)
}

/// The memory operand's segment and offset, after the alignment rule.
#[inline]
fn operand(cpu: &Cpu, insn: &Instruction, n: usize) -> Fault<(usize, u64)> {
    let seg = mem_seg(insn);
    let off = ea(&cpu.state, insn);
    if aligned(insn.mnemonic()) && lin_addr(cpu, seg, off) & (n as u64 - 1) != 0 {
        return Err(GP0);
    }
    Ok((seg, off))
}

/// Read `n` bytes (1 to 32) of the memory operand, zero-extended.
fn load(cpu: &mut Cpu, insn: &Instruction, n: usize) -> Fault<Y> {
    let (seg, off) = operand(cpu, insn, n)?;
    if n <= 8 {
        return Ok([u128::from(cpu.read_mem(seg, off, n as u32)?), 0]);
    }
    let mut b = [0u8; 32];
    cpu.read_mem_buf_aligned(seg, off, &mut b[..n], ac_align(n))?;
    let lo = u128::from_le_bytes(b[..16].try_into().expect("16 bytes"));
    let hi = u128::from_le_bytes(b[16..].try_into().expect("16 bytes"));
    Ok([lo, hi])
}

/// Write the low `n` bytes (4, 8, 16 or 32) of `v` to the memory operand.
fn store(cpu: &mut Cpu, insn: &Instruction, n: usize, v: Y) -> Fault<()> {
    let (seg, off) = operand(cpu, insn, n)?;
    if n <= 8 {
        return cpu.write_mem(seg, off, n as u32, v[0] as u64);
    }
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(&v[0].to_le_bytes());
    b[16..].copy_from_slice(&v[1].to_le_bytes());
    cpu.write_mem_buf_aligned(seg, off, &b[..n], ac_align(n))
}

/// The alignment #AC checks a 16- or 32-byte operand for: 16 bytes (a
/// 32-byte operand at an odd multiple of 16 raises no #AC on the CPUs the
/// differential harness runs on; one misaligned to 16 does).
#[inline(always)]
fn ac_align(n: usize) -> u32 {
    n.min(16) as u32
}

/// Operand `i` as a vector: an XMM/YMM register or the memory operand at
/// the instruction's memory size.
#[inline]
fn src(cpu: &mut Cpu, insn: &Instruction, i: u32) -> Fault<Y> {
    if insn.op_kind(i) == OpKind::Register {
        Ok(get(cpu, insn.op_register(i)))
    } else {
        load(cpu, insn, insn.memory_size().size())
    }
}

// ---- handler shapes -----------------------------------------------------------

/// `dest = f(src1, src2)` on each 128-bit half (VEX.vvvv is src1).
#[inline(always)]
fn ternary(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128, u128) -> u128) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 2)?;
    let a = get(cpu, insn.op1_register());
    let d = insn.op0_register();
    let mut r = [0u128; 2];
    for h in 0..halves(d) {
        r[h] = f(a[h], b[h]);
    }
    set(cpu, d, r);
    Ok(())
}

/// `dest = f(src, imm8)` on each 128-bit half.
#[inline(always)]
fn unary_imm(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128, u8) -> u128) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 1)?;
    let d = insn.op0_register();
    let imm = insn.immediate8();
    let mut r = [0u128; 2];
    for h in 0..halves(d) {
        r[h] = f(b[h], imm);
    }
    set(cpu, d, r);
    Ok(())
}

/// A handler from a `(src1, src2)` closure applied to each half.
macro_rules! v3 {
    ($f:expr) => {{
        fn h(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
            ternary(cpu, insn, $f)
        }
        h as Handler
    }};
}

/// A lane-wise handler: lane width in bytes and `(a, b)` per lane.
macro_rules! vlanes {
    ($w:expr, $f:expr) => {
        v3!(|a, b| map2(a, b, $w, 16, $f))
    };
}

// ---- data movement ------------------------------------------------------------

/// VMOVDQA/VMOVDQU/VMOVAPS/VMOVUPS/VMOVAPD/VMOVUPD, every direction.
fn mov(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let v = src(cpu, insn, 1)?;
    if insn.op0_kind() == OpKind::Register {
        set(cpu, insn.op0_register(), v);
        Ok(())
    } else {
        store(cpu, insn, 16 * halves(insn.op1_register()), v)
    }
}

/// VMOVD (`N` = 4) and VMOVQ (`N` = 8) between XMM registers, general
/// registers and memory: an XMM destination is zero-extended to 256 bits.
fn movdq<const N: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let keep = if N == 8 { u128::from(u64::MAX) } else { u128::from(u32::MAX) };
    let v = match insn.op1_kind() {
        OpKind::Register if insn.op1_register().is_xmm() => cpu.state.xmm[index(insn.op1_register())],
        OpKind::Register => u128::from(reg_read(&cpu.state, insn.op1_register())),
        _ => load(cpu, insn, N)?[0],
    } & keep;
    match insn.op0_kind() {
        OpKind::Register if insn.op0_register().is_xmm() => set(cpu, insn.op0_register(), [v, 0]),
        OpKind::Register => reg_write(&mut cpu.state, insn.op0_register(), v as u64),
        _ => store(cpu, insn, N, [v, 0])?,
    }
    Ok(())
}

/// VPBROADCASTB/W/D/Q, VBROADCASTSS/SD: the low `W`-byte lane of an XMM
/// register or memory operand into every lane of the destination.
fn broadcast<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let x = lane(src(cpu, insn, 1)?[0], W, 0);
    let mut v = 0u128;
    for i in 0..16 / W {
        v |= u128::from(x) << (8 * W * i);
    }
    set(cpu, insn.op0_register(), [v, v]);
    Ok(())
}

/// VINSERTF128/VINSERTI128: src1 with the half imm8[0] replaced by src2.
fn insert128(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 2)?;
    let mut r = get(cpu, insn.op1_register());
    r[usize::from(insn.immediate8() & 1)] = b[0];
    set(cpu, insn.op0_register(), r);
    Ok(())
}

/// VEXTRACTF128/VEXTRACTI128: half imm8[0] of the source to an XMM
/// register (zero-extended) or 16 bytes of memory.
fn extract128(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let v = [get(cpu, insn.op1_register())[usize::from(insn.immediate8() & 1)], 0];
    if insn.op0_kind() == OpKind::Register {
        set(cpu, insn.op0_register(), v);
        Ok(())
    } else {
        store(cpu, insn, 16, v)
    }
}

/// VPERM2F128/VPERM2I128: each half of the result is one of the four halves
/// of the sources (imm8 bits 1:0 and 5:4), or zero (bits 3 and 7).
fn perm2x128(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 2)?;
    let a = get(cpu, insn.op1_register());
    let imm = insn.immediate8();
    let pick = |sel: u8| {
        if sel & 8 != 0 {
            0
        } else {
            [a[0], a[1], b[0], b[1]][usize::from(sel & 3)]
        }
    };
    set(cpu, insn.op0_register(), [pick(imm), pick(imm >> 4)]);
    Ok(())
}

/// VZEROUPPER (`ALL` false) and VZEROALL: registers 0-15 in 64-bit mode,
/// 0-7 elsewhere.
fn zero<const ALL: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let n = if cpu.state.code64() { 16 } else { 8 };
    cpu.state.ymm_hi[..n].fill(0);
    if ALL {
        cpu.state.xmm[..n].fill(0);
    }
    Ok(())
}

// ---- integer ------------------------------------------------------------------

/// VPMOVMSKB: the top bit of each byte into a general register.
fn pmovmskb(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let s = insn.op1_register();
    let v = get(cpu, s);
    let mut m = 0u64;
    for (h, half) in v.iter().take(halves(s)).enumerate() {
        for i in 0..16 {
            m |= ((half >> (8 * i + 7)) as u64 & 1) << (16 * h + i);
        }
    }
    reg_write(&mut cpu.state, insn.op0_register(), m);
    Ok(())
}

/// VPTEST: ZF = (src1 AND src2) == 0, CF = (NOT src1 AND src2) == 0 over
/// the whole width; AF, OF, PF and SF cleared.
fn ptest(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 1)?;
    let a = get(cpu, insn.op0_register());
    let mut f = 0;
    if a[0] & b[0] == 0 && a[1] & b[1] == 0 {
        f |= ZF;
    }
    if !a[0] & b[0] == 0 && !a[1] & b[1] == 0 {
        f |= CF;
    }
    cpu.state.set_arith_flags(ARITH, f);
    Ok(())
}

pub fn handler(code: Code) -> Option<Handler> {
    use Mnemonic as M;
    Some(match code.mnemonic() {
        M::Vmovdqa | M::Vmovdqu | M::Vmovaps | M::Vmovups | M::Vmovapd | M::Vmovupd => mov,
        M::Vmovd => movdq::<4>,
        M::Vmovq => movdq::<8>,
        M::Vpbroadcastb => broadcast::<1>,
        M::Vpbroadcastw => broadcast::<2>,
        M::Vpbroadcastd | M::Vbroadcastss => broadcast::<4>,
        M::Vpbroadcastq | M::Vbroadcastsd => broadcast::<8>,
        M::Vinsertf128 | M::Vinserti128 => insert128,
        M::Vextractf128 | M::Vextracti128 => extract128,
        M::Vperm2f128 | M::Vperm2i128 => perm2x128,
        M::Vzeroupper => zero::<false>,
        M::Vzeroall => zero::<true>,
        M::Vpand | M::Vandps | M::Vandpd => v3!(|a, b| a & b),
        M::Vpandn | M::Vandnps | M::Vandnpd => v3!(|a, b| !a & b),
        M::Vpor | M::Vorps | M::Vorpd => v3!(|a, b| a | b),
        M::Vpxor | M::Vxorps | M::Vxorpd => v3!(|a, b| a ^ b),
        M::Vpaddb => vlanes!(1, |x, y| x.wrapping_add(y)),
        M::Vpaddw => vlanes!(2, |x, y| x.wrapping_add(y)),
        M::Vpaddd => vlanes!(4, |x, y| x.wrapping_add(y)),
        M::Vpaddq => vlanes!(8, |x, y| x.wrapping_add(y)),
        M::Vpsubb => vlanes!(1, |x, y| x.wrapping_sub(y)),
        M::Vpsubw => vlanes!(2, |x, y| x.wrapping_sub(y)),
        M::Vpsubd => vlanes!(4, |x, y| x.wrapping_sub(y)),
        M::Vpsubq => vlanes!(8, |x, y| x.wrapping_sub(y)),
        M::Vpminub => vlanes!(1, |x, y| x.min(y)),
        M::Vpmaxub => vlanes!(1, |x, y| x.max(y)),
        M::Vpcmpeqb => vlanes!(1, |x, y| mask_if(x == y)),
        M::Vpcmpeqw => vlanes!(2, |x, y| mask_if(x == y)),
        M::Vpcmpeqd => vlanes!(4, |x, y| mask_if(x == y)),
        M::Vpcmpeqq => vlanes!(8, |x, y| mask_if(x == y)),
        M::Vpcmpgtb => vlanes!(1, |x, y| mask_if(x as i8 > y as i8)),
        M::Vpcmpgtw => vlanes!(2, |x, y| mask_if(x as i16 > y as i16)),
        M::Vpcmpgtd => vlanes!(4, |x, y| mask_if(x as i32 > y as i32)),
        M::Vpcmpgtq => vlanes!(8, |x, y| mask_if(x as i64 > y as i64)),
        M::Vpmovmskb => pmovmskb,
        M::Vptest => ptest,
        M::Vpshufb => v3!(|a, b| pshufb(a, b, 16)),
        M::Vpshufd => {
            fn h(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
                unary_imm(cpu, insn, |b, imm| shuf4(b, 4, imm))
            }
            h
        }
        M::Vpunpcklbw => v3!(|a, b| interleave(a, b, 1, 16, false)),
        M::Vpunpcklwd => v3!(|a, b| interleave(a, b, 2, 16, false)),
        M::Vpunpckldq => v3!(|a, b| interleave(a, b, 4, 16, false)),
        M::Vpunpcklqdq => v3!(|a, b| interleave(a, b, 8, 16, false)),
        M::Vpunpckhbw => v3!(|a, b| interleave(a, b, 1, 16, true)),
        M::Vpunpckhwd => v3!(|a, b| interleave(a, b, 2, 16, true)),
        M::Vpunpckhdq => v3!(|a, b| interleave(a, b, 4, 16, true)),
        M::Vpunpckhqdq => v3!(|a, b| interleave(a, b, 8, 16, true)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::testing::*;
    use crate::cpu::Cpu;
    use crate::exception::Exception;
    use crate::state::cr;

    /// [`cpu`] with the model's AVX on, CR4.OSXSAVE and XCR0 = 7.
    fn avx_cpu() -> Cpu {
        let mut c = cpu();
        c.set_avx(true);
        c.state.cr4 |= cr::CR4_OSXSAVE;
        c.state.xcr0 = 7;
        c
    }

    /// Bytes 0..32 + `k` as a 256-bit value.
    fn ramp(k: u8) -> [u128; 2] {
        let b: Vec<u8> = (0..32u8).map(|i| i.wrapping_add(k)).collect();
        [u128::from_le_bytes(b[..16].try_into().unwrap()), u128::from_le_bytes(b[16..].try_into().unwrap())]
    }

    fn set_y(c: &mut Cpu, i: usize, v: [u128; 2]) {
        c.state.xmm[i] = v[0];
        c.state.ymm_hi[i] = v[1];
    }

    fn y(c: &Cpu, i: usize) -> [u128; 2] {
        [c.state.xmm[i], c.state.ymm_hi[i]]
    }

    const VPXOR_XMM0: [u8; 4] = [0xc5, 0xf9, 0xef, 0xc0];

    #[test]
    fn availability() {
        let ud = Err(Exception::InvalidOpcode);
        // The model's AVX off: #UD even with the state enabled.
        let mut c = avx_cpu();
        c.set_avx(false);
        assert_eq!(exec(&mut c, |a| a.vpxor(xmm0, xmm1, xmm2)), ud);
        let mut c = avx_cpu();
        assert_eq!(exec(&mut c, |a| a.vpxor(xmm0, xmm1, xmm2)), Ok(()));
        // XCR0 without YMM or SSE, CR4.OSXSAVE clear.
        for xcr0 in [1, 3, 5] {
            c.state.xcr0 = xcr0;
            assert_eq!(exec(&mut c, |a| a.vpxor(ymm0, ymm1, ymm2)), ud, "xcr0 {xcr0}");
        }
        c.state.xcr0 = 7;
        c.state.cr4 &= !cr::CR4_OSXSAVE;
        assert_eq!(exec(&mut c, |a| a.vzeroupper()), ud);
        c.state.cr4 |= cr::CR4_OSXSAVE;
        // CR0.TS: #NM, after the #UD checks.
        c.state.cr0 |= cr::CR0_TS;
        assert_eq!(exec(&mut c, |a| a.vmovdqu(ymm0, ymm1)), Err(Exception::DeviceNotAvailable));
        c.state.xcr0 = 3;
        assert_eq!(exec(&mut c, |a| a.vmovdqu(ymm0, ymm1)), ud);
        c.state.xcr0 = 7;
        c.state.cr0 &= !cr::CR0_TS;
        // CR0.EM and CR4.OSFXSR do not matter.
        c.state.cr0 |= cr::CR0_EM;
        c.state.cr4 &= !cr::CR4_OSFXSR;
        assert_eq!(exec(&mut c, |a| a.vpxor(ymm0, ymm1, ymm2)), Ok(()));
        // LOCK, and a legacy prefix before VEX, are #UD.
        let mut locked = vec![0xf0];
        locked.extend_from_slice(&VPXOR_XMM0);
        assert_eq!(exec_insn(&mut c, &decode(&locked)), ud);
        let mut prefixed = vec![0x66];
        prefixed.extend_from_slice(&VPXOR_XMM0);
        assert_eq!(exec_insn(&mut c, &decode(&prefixed)), ud);
        // VEX.vvvv must be 1111b where unused (vmovdqa xmm0, xmm0 with vvvv = 0).
        assert_eq!(exec_insn(&mut c, &decode(&[0xc5, 0x81, 0x6f, 0xc0])), ud);
    }

    #[test]
    fn vex_is_ud_in_real_and_v86_mode() {
        use crate::ops::testutil as t;
        let mut c = t::real_mode();
        c.set_avx(true);
        c.state.cr4 |= cr::CR4_OSXSAVE;
        c.state.xcr0 = 7;
        assert_eq!(t::exec_bytes(&mut c, &VPXOR_XMM0), Err(Exception::InvalidOpcode));
        let mut c = t::v86_mode(3);
        c.set_avx(true);
        c.state.cr4 |= cr::CR4_OSXSAVE;
        c.state.xcr0 = 7;
        assert_eq!(t::exec_bytes(&mut c, &VPXOR_XMM0), Err(Exception::InvalidOpcode));
        // Protected mode (32-bit code) runs them.
        let mut c = t::prot_mode();
        c.set_avx(true);
        c.state.cr4 |= cr::CR4_OSXSAVE;
        c.state.xcr0 = 7;
        c.state.xmm[0] = 5;
        c.state.ymm_hi[0] = 5;
        assert_eq!(t::exec_bytes(&mut c, &VPXOR_XMM0), Ok(()));
        assert_eq!((c.state.xmm[0], c.state.ymm_hi[0]), (0, 0));
    }

    #[test]
    fn unimplemented_vex_instructions_are_ud() {
        let mut c = avx_cpu();
        // VADDPS is not implemented yet: no handler, #UD (logged by name).
        let i = insn(|a| a.vaddps(ymm0, ymm1, ymm2));
        assert!(!crate::ops::implemented(i.code()));
        assert_eq!(crate::ops::handler(i.code())(&mut c, &i), Err(Exception::InvalidOpcode));
        // EVEX forms of implemented mnemonics have no handler either.
        let i = insn(|a| a.vpxord(zmm0, zmm1, zmm2));
        assert!(!crate::ops::implemented(i.code()));
    }

    #[test]
    fn vex128_zeroes_the_upper_half_and_legacy_sse_keeps_it() {
        let mut c = avx_cpu();
        set_y(&mut c, 1, ramp(0));
        set_y(&mut c, 2, ramp(0x40));
        exec(&mut c, |a| a.pxor(xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 1), [ramp(0)[0] ^ ramp(0x40)[0], ramp(0)[1]]);
        exec(&mut c, |a| a.vpxor(xmm1, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 1), [ramp(0)[0], 0]);
        set_y(&mut c, 1, ramp(0));
        exec(&mut c, |a| a.vpxor(ymm3, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 3), [ramp(0)[0] ^ ramp(0x40)[0], ramp(0)[1] ^ ramp(0x40)[1]]);
        exec(&mut c, |a| a.vpxor(ymm3, ymm3, ymm3)).unwrap();
        assert_eq!(y(&c, 3), [0, 0]);
    }

    #[test]
    fn moves_in_every_direction() {
        let mut c = avx_cpu();
        c.state.gpr[0] = DATA;
        let v = ramp(1);
        set_y(&mut c, 1, v);
        exec(&mut c, |a| a.vmovdqa(ymmword_ptr(rax), ymm1)).unwrap();
        assert_eq!(read::<32>(&c, DATA)[..], (1..33).collect::<Vec<u8>>()[..]);
        for (i, f) in [
            (2usize, (|a: &mut CodeAssembler| a.vmovdqu(ymm2, ymmword_ptr(rax))) as fn(&mut CodeAssembler) -> _),
            (3, |a| a.vmovaps(ymm3, ymmword_ptr(rax))),
            (4, |a| a.vmovupd(ymm4, ymmword_ptr(rax))),
            (5, |a| a.vmovapd(ymm5, ymmword_ptr(rax))),
            (6, |a| a.vmovups(ymm6, ymmword_ptr(rax))),
        ] {
            exec(&mut c, f).unwrap();
            assert_eq!(y(&c, i), v, "ymm{i}");
        }
        // 128-bit load: the upper half zeroed.
        exec(&mut c, |a| a.vmovdqu(xmm2, xmmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 2), [v[0], 0]);
        // Register to register, both encodings.
        exec(&mut c, |a| a.vmovaps(ymm7, ymm1)).unwrap();
        assert_eq!(y(&c, 7), v);
        let store_form = decode(&[0xc5, 0xfd, 0x7f, 0xcf]); // vmovdqa ymm7, ymm1 (7F)
        exec_insn(&mut c, &store_form).unwrap();
        assert_eq!(y(&c, 7), v);
        // 128-bit store: 16 bytes.
        write(&c, DATA, &[0xee; 32]);
        exec(&mut c, |a| a.vmovups(xmmword_ptr(rax), xmm1)).unwrap();
        assert_eq!(read::<32>(&c, DATA)[16..], [0xee; 16]);
        // Alignment: the A forms need 32 (or 16) bytes, the U forms nothing.
        c.state.gpr[0] = DATA + 16;
        assert_eq!(exec(&mut c, |a| a.vmovdqa(ymm0, ymmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.vmovaps(ymmword_ptr(rax), ymm0)), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.vmovapd(xmm0, xmmword_ptr(rax))), Ok(()));
        c.state.gpr[0] = DATA + 3;
        assert_eq!(exec(&mut c, |a| a.vmovapd(xmm0, xmmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.vmovdqu(ymm0, ymmword_ptr(rax))), Ok(()));
        assert_eq!(exec(&mut c, |a| a.vpor(ymm0, ymm0, ymmword_ptr(rax))), Ok(()));
        // A page fault on the second page of a 32-byte operand.
        c.state.gpr[0] = UNMAPPED - 16;
        assert!(matches!(exec(&mut c, |a| a.vmovdqu(ymmword_ptr(rax), ymm1)), Err(Exception::PageFault { .. })));
    }

    #[test]
    fn movd_and_movq() {
        let mut c = avx_cpu();
        set_y(&mut c, 1, ramp(0x80));
        c.state.gpr[0] = 0x1122_3344_5566_7788;
        exec(&mut c, |a| a.vmovd(xmm1, eax)).unwrap();
        assert_eq!(y(&c, 1), [0x5566_7788, 0]);
        set_y(&mut c, 1, ramp(0x80));
        exec(&mut c, |a| a.vmovq(xmm1, rax)).unwrap();
        assert_eq!(y(&c, 1), [0x1122_3344_5566_7788, 0]);
        c.state.xmm[2] = u128::MAX;
        exec(&mut c, |a| a.vmovd(ebx, xmm2)).unwrap();
        assert_eq!(c.state.gpr[3], 0xffff_ffff);
        exec(&mut c, |a| a.vmovq(rbx, xmm1)).unwrap();
        assert_eq!(c.state.gpr[3], 0x1122_3344_5566_7788);
        set_y(&mut c, 3, ramp(0));
        exec(&mut c, |a| a.vmovq(xmm3, xmm2)).unwrap();
        assert_eq!(y(&c, 3), [u128::from(u64::MAX), 0]);
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[0xaa; 16]);
        exec(&mut c, |a| a.vmovq(qword_ptr(rax), xmm1)).unwrap();
        exec(&mut c, |a| a.vmovd(dword_ptr(rax + 8), xmm1)).unwrap();
        assert_eq!(
            read::<16>(&c, DATA),
            [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x88, 0x77, 0x66, 0x55, 0xaa, 0xaa, 0xaa, 0xaa]
        );
        set_y(&mut c, 4, ramp(0));
        exec(&mut c, |a| a.vmovd(xmm4, dword_ptr(rax + 4))).unwrap();
        assert_eq!(y(&c, 4), [0x1122_3344, 0]);
    }

    #[test]
    fn integer_lanes_on_both_halves() {
        let mut c = avx_cpu();
        let (a, b) = (ramp(0xf8), ramp(0x04));
        set_y(&mut c, 1, a);
        set_y(&mut c, 2, b);
        // Each half is the SSE operation on that half.
        let half = |x: [u128; 2], f: fn(u128, u128) -> u128| [f(x[0], b[0]), f(x[1], b[1])];
        exec(&mut c, |x| x.vpaddb(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), half(a, |p, q| super::map2(p, q, 1, 16, |s, t| s.wrapping_add(t))));
        exec(&mut c, |x| x.vpsubq(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), half(a, |p, q| super::map2(p, q, 8, 16, |s, t| s.wrapping_sub(t))));
        exec(&mut c, |x| x.vpaddw(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0)[1] & 0xffff, u128::from(u16::from_le_bytes([0x08, 0x09]).wrapping_add(0x1514)));
        exec(&mut c, |x| x.vpminub(ymm0, ymm1, ymm2)).unwrap();
        // a = f8..17, b = 04..23: a < b only where a did not wrap.
        assert_eq!(y(&c, 0)[0] as u8, 0x04);
        assert_eq!(y(&c, 0)[1] as u8, 0x08);
        exec(&mut c, |x| x.vpmaxub(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(((y(&c, 0)[0] >> 120) as u8, (y(&c, 0)[1] >> 120) as u8), (0x13, 0x23));
        // Compares.
        set_y(&mut c, 3, [a[0] ^ 0xff, a[1] ^ (0xff << 120)]);
        exec(&mut c, |x| x.vpcmpeqb(ymm0, ymm1, ymm3)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX << 8, u128::MAX >> 8]);
        exec(&mut c, |x| x.vpcmpeqq(ymm0, ymm1, ymm3)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX << 64, u128::MAX >> 64]);
        exec(&mut c, |x| x.vpcmpgtb(ymm0, ymm1, ymm2)).unwrap();
        // Byte 0: f8 (-8) > 04? no. Byte 16 of the upper half: 08 > 14? no.
        assert_eq!(y(&c, 0)[0] & 0xff, 0);
        set_y(&mut c, 4, [1, 1]);
        set_y(&mut c, 5, [u128::MAX, 2]);
        exec(&mut c, |x| x.vpcmpgtd(ymm0, ymm4, ymm5)).unwrap();
        // Low half: 1 > -1 and 0 > -1; upper half: 1 > 2 no, 0 > 0 no.
        assert_eq!(y(&c, 0), [u128::MAX, 0]);
        exec(&mut c, |x| x.vpcmpgtq(ymm0, ymm5, ymm4)).unwrap();
        assert_eq!(y(&c, 0), [0, u128::from(u64::MAX)]);
        exec(&mut c, |x| x.vpcmpeqw(xmm0, xmm4, xmm4)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX, 0]);
        exec(&mut c, |x| x.vpcmpeqd(ymm0, ymm4, ymm5)).unwrap();
        assert_eq!(y(&c, 0), [0, u128::MAX << 32]);
        exec(&mut c, |x| x.vpcmpgtw(ymm0, ymm4, ymm5)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX, 0]);
        // Logic.
        exec(&mut c, |x| x.vpandn(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [!a[0] & b[0], !a[1] & b[1]]);
        exec(&mut c, |x| x.vandps(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [a[0] & b[0], a[1] & b[1]]);
        exec(&mut c, |x| x.vorpd(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [a[0] | b[0], a[1] | b[1]]);
        exec(&mut c, |x| x.vxorps(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [a[0] ^ b[0], 0]);
        exec(&mut c, |x| x.vandnpd(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [!a[0] & b[0], !a[1] & b[1]]);
    }

    #[test]
    fn pmovmskb_and_ptest() {
        let mut c = avx_cpu();
        set_y(&mut c, 1, [0x80 | (0x80 << 120), 0x8000 | (0x80 << 112)]);
        c.state.gpr[0] = u64::MAX;
        exec(&mut c, |a| a.vpmovmskb(eax, ymm1)).unwrap();
        assert_eq!(c.state.gpr[0], 0x4002_8001);
        exec(&mut c, |a| a.vpmovmskb(rax, xmm1)).unwrap();
        assert_eq!(c.state.gpr[0], 0x8001);
        use crate::state::flags::{ARITH, CF, ZF};
        let flags = |c: &mut Cpu| {
            c.state.materialize_flags();
            c.state.rflags & ARITH
        };
        set_y(&mut c, 2, [0x81, 0]);
        c.state.rflags |= ARITH;
        exec(&mut c, |a| a.vptest(ymm1, ymm2)).unwrap();
        assert_eq!(flags(&mut c), 0);
        set_y(&mut c, 2, [0, 1]);
        exec(&mut c, |a| a.vptest(ymm1, ymm2)).unwrap();
        assert_eq!(flags(&mut c), ZF);
        exec(&mut c, |a| a.vptest(xmm1, xmm2)).unwrap();
        assert_eq!(flags(&mut c), ZF | CF);
        set_y(&mut c, 2, [0x80, 0x8000]);
        exec(&mut c, |a| a.vptest(ymm1, ymm2)).unwrap();
        assert_eq!(flags(&mut c), CF);
    }

    #[test]
    fn shuffles_within_each_half() {
        let mut c = avx_cpu();
        let a = ramp(0);
        set_y(&mut c, 1, a);
        // VPSHUFB: indexes pick within the same 128-bit half; bit 7 zeroes.
        let mut sel = [0u8; 32];
        sel[0] = 15;
        sel[1] = 0x80;
        sel[16] = 1;
        sel[17] = 0x1f; // low four bits: 15
        set_y(
            &mut c,
            2,
            [u128::from_le_bytes(sel[..16].try_into().unwrap()), u128::from_le_bytes(sel[16..].try_into().unwrap())],
        );
        exec(&mut c, |x| x.vpshufb(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0)[0] & 0xffff, 15);
        assert_eq!(y(&c, 0)[1] & 0xffff, 17 | (31 << 8));
        // VPSHUFD.
        exec(&mut c, |x| x.vpshufd(ymm0, ymm1, 0x1b)).unwrap();
        assert_eq!(y(&c, 0)[0] as u32, 0x0f0e_0d0c);
        assert_eq!(y(&c, 0)[1] as u32, 0x1f1e_1d1c);
        exec(&mut c, |x| x.vpshufd(xmm0, xmm1, 0)).unwrap();
        assert_eq!(y(&c, 0), [0x0302_0100_0302_0100_0302_0100_0302_0100, 0]);
        // Unpacks.
        set_y(&mut c, 2, ramp(0x40));
        exec(&mut c, |x| x.vpunpcklbw(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0)[0] as u32, 0x4101_4000);
        assert_eq!(y(&c, 0)[1] as u32, 0x5111_5010);
        exec(&mut c, |x| x.vpunpckhqdq(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(
            y(&c, 0),
            [(a[0] >> 64) | ((ramp(0x40)[0] >> 64) << 64), (a[1] >> 64) | ((ramp(0x40)[1] >> 64) << 64)]
        );
        exec(&mut c, |x| x.vpunpckldq(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [0x4746_4544_0706_0504_4342_4140_0302_0100, 0]);
        for f in [
            (|x: &mut CodeAssembler| x.vpunpcklwd(ymm0, ymm1, ymm2)) as fn(&mut CodeAssembler) -> _,
            |x| x.vpunpcklqdq(ymm0, ymm1, ymm2),
            |x| x.vpunpckhbw(ymm0, ymm1, ymm2),
            |x| x.vpunpckhwd(ymm0, ymm1, ymm2),
            |x| x.vpunpckhdq(ymm0, ymm1, ymm2),
        ] {
            exec(&mut c, f).unwrap();
            assert_ne!(y(&c, 0)[1], 0);
        }
    }

    #[test]
    fn broadcasts_inserts_extracts_and_permutes() {
        let mut c = avx_cpu();
        c.state.xmm[1] = 0x1122_3344_5566_7788;
        exec(&mut c, |a| a.vpbroadcastb(ymm0, xmm1)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX / 255 * 0x88; 2]);
        exec(&mut c, |a| a.vpbroadcastw(xmm0, xmm1)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX / 0xffff * 0x7788, 0]);
        exec(&mut c, |a| a.vpbroadcastd(ymm0, xmm1)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX / 0xffff_ffff * 0x5566_7788; 2]);
        exec(&mut c, |a| a.vpbroadcastq(ymm0, xmm1)).unwrap();
        assert_eq!(y(&c, 0), [0x1122_3344_5566_7788_1122_3344_5566_7788; 2]);
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[1, 2, 3, 4, 5, 6, 7, 8]);
        exec(&mut c, |a| a.vbroadcastss(ymm0, dword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [0x0403_0201_0403_0201_0403_0201_0403_0201; 2]);
        exec(&mut c, |a| a.vbroadcastsd(ymm0, qword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [0x0807_0605_0403_0201_0807_0605_0403_0201; 2]);
        exec(&mut c, |a| a.vpbroadcastb(xmm0, byte_ptr(rax + 7))).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX / 255 * 8, 0]);
        exec(&mut c, |a| a.vbroadcastss(xmm0, xmm1)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX / 0xffff_ffff * 0x5566_7788, 0]);
        // Insert and extract.
        set_y(&mut c, 2, [10, 20]);
        c.state.xmm[3] = 30;
        exec(&mut c, |a| a.vinsertf128(ymm0, ymm2, xmm3, 1)).unwrap();
        assert_eq!(y(&c, 0), [10, 30]);
        exec(&mut c, |a| a.vinserti128(ymm0, ymm2, xmm3, 2)).unwrap();
        assert_eq!(y(&c, 0), [30, 20]);
        exec(&mut c, |a| a.vextractf128(xmm4, ymm2, 1)).unwrap();
        assert_eq!(y(&c, 4), [20, 0]);
        exec(&mut c, |a| a.vextracti128(xmmword_ptr(rax), ymm2, 0)).unwrap();
        assert_eq!(u128::from_le_bytes(read::<16>(&c, DATA)), 10);
        exec(&mut c, |a| a.vinserti128(ymm5, ymm2, xmmword_ptr(rax + 1), 1)).unwrap();
        // Permutes.
        set_y(&mut c, 3, [30, 40]);
        exec(&mut c, |a| a.vperm2f128(ymm0, ymm2, ymm3, 0x31)).unwrap();
        assert_eq!(y(&c, 0), [20, 40]);
        exec(&mut c, |a| a.vperm2i128(ymm0, ymm2, ymm3, 0x82)).unwrap();
        assert_eq!(y(&c, 0), [30, 0]);
        exec(&mut c, |a| a.vperm2i128(ymm0, ymm2, ymm3, 0x08)).unwrap();
        assert_eq!(y(&c, 0), [0, 10]);
    }

    #[test]
    fn vzeroupper_and_vzeroall() {
        let mut c = avx_cpu();
        for i in 0..16 {
            set_y(&mut c, i, ramp(i as u8));
        }
        exec(&mut c, |a| a.vzeroupper()).unwrap();
        assert!((0..16).all(|i| y(&c, i) == [ramp(i as u8)[0], 0]));
        exec(&mut c, |a| a.vzeroall()).unwrap();
        assert_eq!((c.state.xmm, c.state.ymm_hi), ([0; 16], [0; 16]));
        // Outside 64-bit mode, registers 0-7 only.
        let mut c = crate::ops::testutil::prot_mode();
        c.set_avx(true);
        c.state.cr4 |= cr::CR4_OSXSAVE;
        c.state.xcr0 = 7;
        c.state.xmm = [1; 16];
        c.state.ymm_hi = [2; 16];
        crate::ops::testutil::exec_bytes(&mut c, &[0xc5, 0xfc, 0x77]).unwrap();
        assert_eq!(c.state.xmm[..8], [0; 8]);
        assert_eq!(c.state.ymm_hi[..8], [0; 8]);
        assert_eq!((c.state.xmm[8], c.state.ymm_hi[8]), (1, 2));
    }
}
