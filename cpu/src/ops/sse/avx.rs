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
//! Memory: VMOVDQA, VMOVAPS, VMOVAPD and the non-temporal moves (VMOVNTDQA,
//! VMOVNTPS/PD/DQ) need their 16- or 32-byte operand aligned to its size
//! (#GP(0)); the other VEX memory operands may be
//! misaligned. A VEX code without a handler here raises #UD and is logged
//! by name, as every unimplemented instruction is.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::convert::{conv, elem_size, D, I32, I64, S};
use super::float::{PD, PS, SD, SS};
use super::shuffle::{blend, blendv_lanes, insertps_lanes, sign_bits, widen};
use super::softfloat::{Env, F16, F32};
use super::{commit, lane, lin_addr, with_lane};
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
    use Mnemonic as M;
    matches!(m, M::Vmovdqa | M::Vmovaps | M::Vmovapd | M::Vmovntdqa | M::Vmovntps | M::Vmovntpd | M::Vmovntdq)
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
pub(super) fn ternary(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128, u128) -> u128) -> Fault<()> {
    ternary_imm(cpu, insn, 0, |a, b, _| f(a, b))
}

/// `dest = f(src1, src2, imm8)` on each 128-bit half; the upper half of a
/// 256-bit operation sees `imm8 >> k`.
#[inline(always)]
pub(super) fn ternary_imm(cpu: &mut Cpu, insn: &Instruction, k: u32, f: impl Fn(u128, u128, u8) -> u128) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 2)?;
    let a = get(cpu, insn.op1_register());
    let d = insn.op0_register();
    let imm = insn.immediate8();
    let mut r = [0u128; 2];
    for h in 0..halves(d) {
        r[h] = f(a[h], b[h], imm >> (k * h as u32));
    }
    set(cpu, d, r);
    Ok(())
}

/// `dest = f(src)` on each 128-bit half.
#[inline(always)]
pub(super) fn unary(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128) -> u128) -> Fault<()> {
    unary_imm(cpu, insn, |b, _| f(b))
}

/// `dest = f(src, imm8)` on each 128-bit half.
#[inline(always)]
pub(super) fn unary_imm(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128, u8) -> u128) -> Fault<()> {
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

/// Shifts of each half of src1 by one count: imm8, or the low 64 bits of
/// an XMM register or 128-bit memory operand.
#[inline(always)]
pub(super) fn shift(cpu: &mut Cpu, insn: &Instruction, f: impl Fn(u128, u64) -> u128) -> Fault<()> {
    check(cpu, insn)?;
    let count =
        if insn.op2_kind() == OpKind::Immediate8 { u64::from(insn.immediate8()) } else { src(cpu, insn, 2)?[0] as u64 };
    let a = src(cpu, insn, 1)?;
    let d = insn.op0_register();
    let mut r = [0u128; 2];
    for h in 0..halves(d) {
        r[h] = f(a[h], count);
    }
    set(cpu, d, r);
    Ok(())
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

/// VMOVSS/VMOVSD (`W` = 4, 8): a load zeroes bits 255:`W`*8, a store writes
/// the low element, and the three-register form takes the low element from
/// the last operand and bits 127:`W`*8 from VEX.vvvv.
fn mov_scalar<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    if insn.op_count() == 3 {
        let a = cpu.state.xmm[index(insn.op1_register())];
        let b = cpu.state.xmm[index(insn.op2_register())];
        set(cpu, insn.op0_register(), [with_lane(a, W, 0, lane(b, W, 0)), 0]);
        Ok(())
    } else if insn.op0_kind() == OpKind::Register {
        let v = load(cpu, insn, W)?;
        set(cpu, insn.op0_register(), v);
        Ok(())
    } else {
        let v = cpu.state.xmm[index(insn.op1_register())];
        store(cpu, insn, W, [v, 0])
    }
}

/// VMOVLPS/VMOVLPD (`H` = 0) and VMOVHPS/VMOVHPD (`H` = 1): a load puts the
/// quadword in element `H` and takes the other from VEX.vvvv; a store
/// writes element `H`.
fn mov_half<const H: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    if insn.op0_kind() == OpKind::Register {
        let v = load(cpu, insn, 8)?[0] as u64;
        let a = cpu.state.xmm[index(insn.op1_register())];
        set(cpu, insn.op0_register(), [with_lane(a, 8, H, v), 0]);
        Ok(())
    } else {
        let v = lane(cpu.state.xmm[index(insn.op1_register())], 8, H);
        store(cpu, insn, 8, [u128::from(v), 0])
    }
}

/// VMOVHLPS (`HL` true): src2's high quadword, then src1's high quadword;
/// VMOVLHPS: src1's low quadword, then src2's low quadword.
fn mov_hl<const HL: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let a = cpu.state.xmm[index(insn.op1_register())];
    let b = cpu.state.xmm[index(insn.op2_register())];
    let r = if HL { (b >> 64) | (a >> 64 << 64) } else { (a & u128::from(u64::MAX)) | (b << 64) };
    set(cpu, insn.op0_register(), [r, 0]);
    Ok(())
}

/// VMASKMOVDQU: the legacy byte-masked store at DS:rDI, after the checks
/// of a store of all 16 bytes (segment, alignment on 8 bytes, then a page
/// fault at the first byte of the 16, whatever the mask, as the CPUs the
/// differential harness runs on do).
fn maskmovdqu(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let (off, amask) = match insn.op0_kind() {
        OpKind::MemorySegRDI => (cpu.state.gpr[crate::state::reg::RDI], u64::MAX),
        OpKind::MemorySegEDI => (cpu.state.gpr[crate::state::reg::RDI] & 0xffff_ffff, 0xffff_ffff),
        _ => (cpu.state.gpr[crate::state::reg::RDI] & 0xffff, 0xffff),
    };
    let seg = mem_seg(insn);
    let lin = cpu.linear(seg, off, 16, true)?;
    cpu.check_alignment(lin, 8)?;
    probe_store(cpu, seg, off, 16, amask)?;
    super::mov::maskmov_store(cpu, insn, false)
}

// ---- inserts, extracts, blends, widening -------------------------------------

/// VPEXTRB/W/D/Q and VEXTRACTPS: an element to a general register
/// (zero-extended) or to memory.
fn pextr<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let v = lane(cpu.state.xmm[index(insn.op1_register())], W, usize::from(insn.immediate8()) & (16 / W - 1));
    if insn.op0_kind() == OpKind::Register {
        reg_write(&mut cpu.state, insn.op0_register(), v);
        Ok(())
    } else {
        store(cpu, insn, W, [u128::from(v), 0])
    }
}

/// VPINSRB/W/D/Q: src1 with one element from a general register or memory.
fn pinsr<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let v = if insn.op2_kind() == OpKind::Register {
        reg_read(&cpu.state, insn.op2_register())
    } else {
        load(cpu, insn, W)?[0] as u64
    };
    let a = cpu.state.xmm[index(insn.op1_register())];
    set(cpu, insn.op0_register(), [with_lane(a, W, usize::from(insn.immediate8()) & (16 / W - 1), v), 0]);
    Ok(())
}

/// VINSERTPS.
fn insertps(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let imm = insn.immediate8();
    let v = if insn.op2_kind() == OpKind::Register {
        lane(cpu.state.xmm[index(insn.op2_register())], 4, usize::from(imm >> 6))
    } else {
        load(cpu, insn, 4)?[0] as u64
    };
    let a = cpu.state.xmm[index(insn.op1_register())];
    set(cpu, insn.op0_register(), [insertps_lanes(a, v, imm), 0]);
    Ok(())
}

/// VBLENDVPS/VBLENDVPD/VPBLENDVB: the mask is the lane sign bits of the
/// fourth operand (imm8\[7:4\]).
fn blendv<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 2)?;
    let a = get(cpu, insn.op1_register());
    let m = get(cpu, insn.op3_register());
    let d = insn.op0_register();
    let mut r = [0u128; 2];
    for h in 0..halves(d) {
        r[h] = blendv_lanes(a[h], b[h], m[h], W);
    }
    set(cpu, d, r);
    Ok(())
}

/// VPMOVSX/VPMOVZX: the low `F`-byte elements of the source widened to `T`
/// bytes; the 256-bit form widens twice as many (a 128-bit source).
fn pmovx<const F: usize, const T: usize, const SIGNED: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 1)?[0];
    let d = insn.op0_register();
    let hi = if d.is_ymm() { widen(b, F, T, SIGNED, 16 / T) } else { 0 };
    set(cpu, d, [widen(b, F, T, SIGNED, 0), hi]);
    Ok(())
}

/// VMOVMSKPS/VMOVMSKPD/VPMOVMSKB: the lane sign bits into a general
/// register.
fn movmsk<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let s = insn.op1_register();
    let v = get(cpu, s);
    let mut m = sign_bits(v[0], W, 16);
    if s.is_ymm() {
        m |= sign_bits(v[1], W, 16) << (16 / W);
    }
    reg_write(&mut cpu.state, insn.op0_register(), m);
    Ok(())
}

/// VPCMPESTRI/VPCMPESTRM/VPCMPISTRI/VPCMPISTRM: the SSE4.2 operation; the
/// mask forms zero bits 255:128 of XMM0.
fn pcmpstr<const EXPLICIT: bool, const INDEX: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 1)?[0];
    super::string::pcmpstr_run::<EXPLICIT, INDEX>(cpu, insn, b)?;
    if !INDEX {
        cpu.state.ymm_hi[0] = 0;
    }
    Ok(())
}

// ---- integer ------------------------------------------------------------------

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

// ---- floating point -----------------------------------------------------------

/// A floating-point operation: the kernel `(src1, src2, imm8, env)` on each
/// 128-bit half, src1 being VEX.vvvv (zero for the two-operand forms, whose
/// kernels ignore it); the flags of every lane are committed (#XM before
/// any write) and the destination written.
#[inline(always)]
pub(super) fn fp(cpu: &mut Cpu, insn: &Instruction, k: impl Fn(u128, u128, u8, &mut Env) -> u128) -> Fault<()> {
    check(cpu, insn)?;
    let imm = insn.immediate8();
    let n = insn.op_count() - u32::from(insn.op_kind(insn.op_count() - 1) == OpKind::Immediate8);
    let (a, b) = if n == 3 {
        let b = src(cpu, insn, 2)?;
        (get(cpu, insn.op1_register()), b)
    } else {
        ([0, 0], src(cpu, insn, 1)?)
    };
    let d = insn.op0_register();
    let mut env = Env::from_mxcsr(cpu.state.mxcsr);
    let mut r = [0u128; 2];
    for h in 0..halves(d) {
        r[h] = k(a[h], b[h], imm, &mut env);
    }
    super::commit_env(cpu, &env)?;
    set(cpu, d, r);
    Ok(())
}

/// VDPPS: the 256-bit form multiplies in both halves before it sums in
/// either ([`super::float::dpps256`]).
fn vdpps(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let d = insn.op0_register();
    if halves(d) == 1 {
        return fp(cpu, insn, super::float::dp::<PS>);
    }
    check(cpu, insn)?;
    let b = src(cpu, insn, 2)?;
    let a = get(cpu, insn.op1_register());
    let mut env = Env::from_mxcsr(cpu.state.mxcsr);
    let r = super::float::dpps256(a, b, insn.immediate8(), &mut env);
    super::commit_env(cpu, &env)?;
    set(cpu, d, r);
    Ok(())
}

/// VCOMISS/VCOMISD/VUCOMISS/VUCOMISD.
fn comi<const DOUBLE: bool, const SIGNAL: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 1)?[0];
    let a = cpu.state.xmm[index(insn.op0_register())];
    super::float::comi_flags::<DOUBLE, SIGNAL>(cpu, a, b)
}

fn ldmxcsr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    super::float::ldmxcsr_body(cpu, insn)
}

fn stmxcsr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    super::float::stmxcsr_body(cpu, insn)
}

/// The conversions: `N` elements of type `FROM` to `TO` in the 128-bit form
/// of a packed conversion (twice as many when an operand is 256 bits); a
/// `MERGE` (scalar) form takes the rest of bits 127:0 from VEX.vvvv.
fn cvt<const FROM: u8, const TO: u8, const N: usize, const TRUNC: bool, const MERGE: bool>(
    cpu: &mut Cpu,
    insn: &Instruction,
) -> Fault<()> {
    check(cpu, insn)?;
    let si = if MERGE { 2 } else { 1 };
    let (s, wide) = match insn.op_kind(si) {
        OpKind::Register => {
            let r = insn.op_register(si);
            if r.is_gpr() {
                ([u128::from(reg_read(&cpu.state, r)), 0], false)
            } else {
                (get(cpu, r), r.is_ymm())
            }
        }
        _ => (load(cpu, insn, insn.memory_size().size())?, insn.memory_size().size() == 32),
    };
    let d = insn.op0_register();
    let n = if N > 1 && (wide || d.is_ymm()) { 2 * N } else { N };
    let (fw, tw) = (elem_size(FROM), elem_size(TO));
    let mut env = Env::from_mxcsr(cpu.state.mxcsr);
    let mut r = if MERGE { [cpu.state.xmm[index(insn.op1_register())], 0] } else { [0, 0] };
    for i in 0..n {
        with_elem(&mut r, tw, i, conv(FROM, TO, elem(s, fw, i), TRUNC, &mut env));
    }
    commit(cpu, env.flags)?;
    if d.is_gpr() {
        reg_write(&mut cpu.state, d, r[0] as u64);
    } else {
        set(cpu, d, r);
    }
    Ok(())
}

/// The conversion handlers, by code (the integer width is in the code).
fn cvt_handler(code: Code) -> Option<Handler> {
    use Code as C;
    Some(match code {
        C::VEX_Vcvtsi2ss_xmm_xmm_rm32 => cvt::<I32, S, 1, false, true>,
        C::VEX_Vcvtsi2ss_xmm_xmm_rm64 => cvt::<I64, S, 1, false, true>,
        C::VEX_Vcvtsi2sd_xmm_xmm_rm32 => cvt::<I32, D, 1, false, true>,
        C::VEX_Vcvtsi2sd_xmm_xmm_rm64 => cvt::<I64, D, 1, false, true>,
        C::VEX_Vcvtss2si_r32_xmmm32 => cvt::<S, I32, 1, false, false>,
        C::VEX_Vcvtss2si_r64_xmmm32 => cvt::<S, I64, 1, false, false>,
        C::VEX_Vcvttss2si_r32_xmmm32 => cvt::<S, I32, 1, true, false>,
        C::VEX_Vcvttss2si_r64_xmmm32 => cvt::<S, I64, 1, true, false>,
        C::VEX_Vcvtsd2si_r32_xmmm64 => cvt::<D, I32, 1, false, false>,
        C::VEX_Vcvtsd2si_r64_xmmm64 => cvt::<D, I64, 1, false, false>,
        C::VEX_Vcvttsd2si_r32_xmmm64 => cvt::<D, I32, 1, true, false>,
        C::VEX_Vcvttsd2si_r64_xmmm64 => cvt::<D, I64, 1, true, false>,
        C::VEX_Vcvtss2sd_xmm_xmm_xmmm32 => cvt::<S, D, 1, false, true>,
        C::VEX_Vcvtsd2ss_xmm_xmm_xmmm64 => cvt::<D, S, 1, false, true>,
        _ => match code.mnemonic() {
            Mnemonic::Vcvtps2pd => cvt::<S, D, 2, false, false>,
            Mnemonic::Vcvtpd2ps => cvt::<D, S, 2, false, false>,
            Mnemonic::Vcvtdq2ps => cvt::<I32, S, 4, false, false>,
            Mnemonic::Vcvtps2dq => cvt::<S, I32, 4, false, false>,
            Mnemonic::Vcvttps2dq => cvt::<S, I32, 4, true, false>,
            Mnemonic::Vcvtdq2pd => cvt::<I32, D, 2, false, false>,
            Mnemonic::Vcvtpd2dq => cvt::<D, I32, 2, false, false>,
            Mnemonic::Vcvttpd2dq => cvt::<D, I32, 2, true, false>,
            _ => return None,
        },
    })
}

// ---- FMA3 and F16C -------------------------------------------------------------

/// FMA3 (VFMADD/VFMSUB/VFNMADD/VFNMSUB/VFMADDSUB/VFMSUBADD 132/213/231,
/// PS/PD/SS/SD): with src1 the destination, src2 VEX.vvvv and src3 the
/// r/m operand, `ORD` 132 computes src1 × src3 ± src2, 213 src2 × src1 ±
/// src3 and 231 src2 × src3 ± src1, each element rounded once. `NEG_P`
/// negates the product; `C` picks the sign of the addend: 0 added, 1
/// subtracted, 2 subtracted in even elements and added in odd ones
/// (FMADDSUB), 3 the other way round (FMSUBADD). The scalar forms keep
/// bits 127:W*8 of src1. A NaN result is the first NaN of the two factors
/// and the addend, in that order (as the CPU picks it).
fn fma<const ORD: u16, const K: u8, const NEG_P: bool, const C: u8>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let s3 = src(cpu, insn, 2)?;
    let s1 = get(cpu, insn.op0_register());
    let s2 = get(cpu, insn.op1_register());
    let d = insn.op0_register();
    let (f, w, n) = super::float::shape(K);
    let scalar = n == 1;
    let count = if scalar { 1 } else { n * halves(d) };
    let mut env = Env::from_mxcsr(cpu.state.mxcsr);
    let mut r = if scalar { [s1[0], 0] } else { [0, 0] };
    for i in 0..count {
        let x = [elem(s1, w, i), elem(s2, w, i), elem(s3, w, i)];
        let (a, b, c) = match ORD {
            132 => (x[0], x[2], x[1]),
            213 => (x[1], x[0], x[2]),
            _ => (x[1], x[2], x[0]),
        };
        let neg_c = match C {
            0 => false,
            1 => true,
            2 => i % 2 == 0,
            _ => i % 2 == 1,
        };
        with_elem(&mut r, w, i, super::softfloat::fma(f, a, b, c, NEG_P, neg_c, &mut env));
    }
    commit(cpu, env.flags)?;
    set(cpu, d, r);
    Ok(())
}

/// VCVTPH2PS: binary16 to binary32, exact; DAZ does not apply and a
/// denormal input raises no DE; an SNaN raises IE.
fn cvtph2ps(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let s = src(cpu, insn, 1)?[0];
    let d = insn.op0_register();
    let mut env = Env { daz: false, ..Env::from_mxcsr(cpu.state.mxcsr) };
    let mut r = [0u128; 2];
    for i in 0..4 * halves(d) {
        with_elem(&mut r, 4, i, super::softfloat::convert(F16, F32, lane(s, 2, i), &mut env));
    }
    commit(cpu, env.flags & !super::softfloat::DE)?;
    set(cpu, d, r);
    Ok(())
}

/// VCVTPS2PH: binary32 to binary16, rounded by imm8\[1:0\] (or MXCSR.RC
/// when imm8\[2\] is set); FTZ does not apply: tiny results are denormals.
fn cvtps2ph(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let s = get(cpu, insn.op1_register());
    let imm = u32::from(insn.immediate8());
    let mut env = Env { ftz: false, ..Env::from_mxcsr(cpu.state.mxcsr) };
    if imm & 4 == 0 {
        env.rc = imm & 3;
    }
    let n = 4 * halves(insn.op1_register());
    let mut r = 0u128;
    for i in 0..n {
        r = with_lane(r, 2, i, super::softfloat::convert(F32, F16, elem(s, 4, i), &mut env));
    }
    // A store that faults leaves MXCSR alone: its checks come first.
    if insn.op0_kind() == OpKind::Memory {
        let (seg, off) = operand(cpu, insn, 2 * n)?;
        cpu.probe_write(seg, off, 2 * n as u32)?;
    }
    commit(cpu, env.flags)?;
    if insn.op0_kind() == OpKind::Register {
        set(cpu, insn.op0_register(), [r, 0]);
        Ok(())
    } else {
        store(cpu, insn, 2 * n, [r, 0])
    }
}

// ---- AVX and AVX2 additions --------------------------------------------------

/// A 256-bit value as eight dwords (`W` = 4) or four qwords (`W` = 8).
#[inline(always)]
fn elem(v: Y, w: usize, i: usize) -> u64 {
    let per = 16 / w;
    lane(v[i / per], w, i % per)
}

#[inline(always)]
fn with_elem(v: &mut Y, w: usize, i: usize, x: u64) {
    let per = 16 / w;
    v[i / per] = with_lane(v[i / per], w, i % per, x);
}

/// VPERMD/VPERMPS: each dword of the result is the dword of src2 that the
/// low three bits of the same dword of src1 (VEX.vvvv) select.
fn permd(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let t = src(cpu, insn, 2)?;
    let idx = get(cpu, insn.op1_register());
    let mut r = [0u128; 2];
    for i in 0..8 {
        with_elem(&mut r, 4, i, elem(t, 4, elem(idx, 4, i) as usize & 7));
    }
    set(cpu, insn.op0_register(), r);
    Ok(())
}

/// VPERMQ/VPERMPD: each qword of the result is the qword of the source that
/// a 2-bit field of imm8 selects.
fn permq(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let t = src(cpu, insn, 1)?;
    let imm = insn.immediate8();
    let mut r = [0u128; 2];
    for i in 0..4 {
        with_elem(&mut r, 8, i, elem(t, 8, usize::from(imm >> (2 * i)) & 3));
    }
    set(cpu, insn.op0_register(), r);
    Ok(())
}

/// VPERMILPS (`W` = 4) and VPERMILPD (`W` = 8), within each 128-bit half:
/// the selectors come from imm8 (VPERMILPS: the 2-bit fields, the same for
/// both halves; VPERMILPD: one bit per qword) or from the elements of a
/// control operand (bits 1:0 of each dword, bit 1 of each qword).
fn permil<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let (a, ctl) = if insn.op2_kind() == OpKind::Immediate8 {
        let imm = u64::from(insn.immediate8());
        let ctl = if W == 4 {
            [0, 1, 2, 3].map(|i| (imm >> (2 * i)) & 3)
        } else {
            [0, 1, 2, 3].map(|i| ((imm >> i) & 1) << 1)
        };
        let mut c = [0u128; 2];
        for h in 0..2 {
            for i in 0..16 / W {
                c[h] = with_lane(c[h], W, i, ctl[h * (16 / W) % 4 + i]);
            }
        }
        (src(cpu, insn, 1)?, c)
    } else {
        let c = src(cpu, insn, 2)?;
        (get(cpu, insn.op1_register()), c)
    };
    let d = insn.op0_register();
    let mut r = [0u128; 2];
    for h in 0..halves(d) {
        for i in 0..16 / W {
            let sel = lane(ctl[h], W, i) as usize;
            let sel = if W == 4 { sel & 3 } else { (sel >> 1) & 1 };
            r[h] = with_lane(r[h], W, i, lane(a[h], W, sel));
        }
    }
    set(cpu, d, r);
    Ok(())
}

/// VPSLLVD/Q (`K` = 0), VPSRLVD/Q (1), VPSRAVD (2): each `W`-byte element
/// shifted by the count in the same element of src2; a count past the
/// element width gives 0 (or the sign, for VPSRAVD).
fn vshift<const W: usize, const K: u8>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let bits = (8 * W) as u64;
    ternary(cpu, insn, |a, b| {
        super::map2(a, b, W, 16, |x, c| match K {
            0 if c < bits => x << c,
            1 if c < bits => x >> c,
            2 => (super::sx(x, W) >> c.min(bits - 1)) as u64,
            _ => 0,
        })
    })
}

/// VBROADCASTF128/VBROADCASTI128: 16 bytes of memory into both halves.
fn broadcast128(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let v = load(cpu, insn, 16)?[0];
    set(cpu, insn.op0_register(), [v, v]);
    Ok(())
}

/// VTESTPS (`W` = 4) and VTESTPD (`W` = 8): VPTEST on the element sign bits
/// only.
fn testp<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let b = src(cpu, insn, 1)?;
    let a = get(cpu, insn.op0_register());
    let signs = u128::from(super::lane_mask(W) ^ (super::lane_mask(W) >> 1));
    let m = (0..16 / W).fold(0u128, |m, i| m | signs << (8 * W * i));
    let mut f = 0;
    if a[0] & b[0] & m == 0 && a[1] & b[1] & m == 0 {
        f |= ZF;
    }
    if !a[0] & b[0] & m == 0 && !a[1] & b[1] & m == 0 {
        f |= CF;
    }
    cpu.state.set_arith_flags(ARITH, f);
    Ok(())
}

/// VMASKMOVPS/PD and VPMASKMOVD/Q (`W` = 4, 8): the elements whose mask
/// element (VEX.vvvv) has its sign bit set are loaded (the others are
/// zeroed) or stored (the others left alone). Masked-off elements are not
/// accessed, so they raise no fault; a store checks every selected element
/// before it writes any. No #AC for misaligned elements.
fn maskmov<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let mask = get(cpu, insn.op1_register());
    let n = 16 * halves(insn.op1_register()) / W;
    let sel = |i: usize| elem(mask, W, i) >> (8 * W - 1) != 0;
    let seg = mem_seg(insn);
    let off = ea(&cpu.state, insn);
    let addr = |i: usize| off.wrapping_add((i * W) as u64) & addr_mask(insn);
    if insn.op0_kind() == OpKind::Register {
        let mut r = [0u128; 2];
        for i in (0..n).filter(|&i| sel(i)) {
            with_elem(&mut r, W, i, read_elem(cpu, seg, addr(i), W)?);
        }
        set(cpu, insn.op0_register(), r);
        return Ok(());
    }
    let v = get(cpu, insn.op2_register());
    for i in (0..n).filter(|&i| sel(i)) {
        probe_store(cpu, seg, addr(i), W, addr_mask(insn))?;
    }
    for i in (0..n).filter(|&i| sel(i)) {
        cpu.write_mem_buf(seg, addr(i), &elem(v, W, i).to_le_bytes()[..W])?;
    }
    Ok(())
}

/// The checks of an `n`-byte store at `seg:off` without the alignment
/// check: the segment checks, then the page walk of the first byte and, if
/// the store crosses into the next page, of that page's first byte.
fn probe_store(cpu: &mut Cpu, seg: usize, off: u64, n: usize, amask: u64) -> Fault<()> {
    cpu.linear(seg, off, n as u64, true)?;
    cpu.probe_write(seg, off, 1)?;
    let to_end = 0x1000 - (lin_addr(cpu, seg, off) & 0xfff);
    if n as u64 > to_end {
        cpu.probe_write(seg, off.wrapping_add(to_end) & amask, 1)?;
    }
    Ok(())
}

/// Read one `w`-byte element of a masked load or a gather. These raise no
/// #AC for a misaligned element (as the CPUs the differential harness runs
/// on do).
fn read_elem(cpu: &mut Cpu, seg: usize, off: u64, w: usize) -> Fault<u64> {
    let mut b = [0u8; 8];
    cpu.read_mem_buf(seg, off, &mut b[..w])?;
    Ok(u64::from_le_bytes(b))
}

/// The mask of the memory operand's address size.
fn addr_mask(insn: &Instruction) -> u64 {
    let base = insn.memory_base();
    let size = if base != Register::None && !base.is_ip() {
        base.size()
    } else if insn.code_size() == iced_x86::CodeSize::Code64 {
        8
    } else {
        4
    };
    match size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// The gathers (VPGATHERDD/DQ/QD/QQ, VGATHERDPS/DPD/QPS/QPD): `I`-byte
/// indexes, `W`-byte elements. Elements complete in order from element 0:
/// one whose mask element has its sign bit set is loaded from base +
/// sign-extended index × scale + displacement, and each completed element
/// (loaded or not) has its mask element cleared. A fault leaves the
/// elements completed before it so and the rest of both registers as they
/// were (upper halves included); a completed gather leaves the mask all
/// zero and zeroes the destination past the elements it gathers (bits
/// 255:128 for VEX.128). #UD when two of the destination, index and mask
/// registers are the same.
fn gather<const I: usize, const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn)?;
    let (d, m, x) = (insn.op0_register(), insn.op2_register(), insn.memory_index());
    let (di, mi, xi) = (index(d), index(m), index(x));
    if di == mi || di == xi || mi == xi {
        return Err(Exception::InvalidOpcode);
    }
    let n = (16 * halves(x) / I).min(16 * halves(d) / W);
    let idx = get(cpu, x);
    let seg = mem_seg(insn);
    let base = insn.memory_base();
    let mut a = insn.memory_displacement64();
    if base != Register::None {
        a = a.wrapping_add(reg_read(&cpu.state, base));
    }
    let scale = u64::from(insn.memory_index_scale());
    let amask = addr_mask(insn);
    // Both registers whole (256 bits), written back whole at a fault.
    let mut dest = [cpu.state.xmm[di], cpu.state.ymm_hi[di]];
    let mut mask = [cpu.state.xmm[mi], cpu.state.ymm_hi[mi]];
    let mut loaded = false;
    for i in 0..n {
        if elem(mask, W, i) >> (8 * W - 1) != 0 {
            let off = super::sx(elem(idx, I, i), I) as u64;
            let addr = a.wrapping_add(off.wrapping_mul(scale)) & amask;
            match read_elem(cpu, seg, addr, W) {
                Ok(v) => with_elem(&mut dest, W, i, v),
                Err(e) => {
                    (cpu.state.xmm[di], cpu.state.ymm_hi[di]) = (dest[0], dest[1]);
                    (cpu.state.xmm[mi], cpu.state.ymm_hi[mi]) = (mask[0], mask[1]);
                    // Single-stepping, a fault after some elements were
                    // gathered is replaced by the #DB of the step, with
                    // RIP at the gather (so it resumes where it stopped).
                    if loaded && cpu.state.rflags & crate::state::flags::TF != 0 {
                        cpu.state.dr[6] |= crate::ops::debug::dr6::BS;
                        return Err(Exception::Debug);
                    }
                    return Err(e);
                }
            }
            loaded = true;
        }
        with_elem(&mut mask, W, i, 0);
    }
    for i in n..32 / W {
        with_elem(&mut dest, W, i, 0);
    }
    set(cpu, d, dest);
    set(cpu, m, [0, 0]);
    Ok(())
}

pub fn handler(code: Code) -> Option<Handler> {
    use Mnemonic as M;
    let m = code.mnemonic();
    Some(match m {
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
        M::Vptest => ptest,
        M::Vmovss => mov_scalar::<4>,
        M::Vmovsd => mov_scalar::<8>,
        M::Vmovlps | M::Vmovlpd => mov_half::<0>,
        M::Vmovhps | M::Vmovhpd => mov_half::<1>,
        M::Vmovhlps => mov_hl::<true>,
        M::Vmovlhps => mov_hl::<false>,
        M::Vlddqu | M::Vmovntdqa | M::Vmovntps | M::Vmovntpd | M::Vmovntdq => mov,
        M::Vmaskmovdqu => maskmovdqu,
        M::Vextractps | M::Vpextrd => pextr::<4>,
        M::Vpextrb => pextr::<1>,
        M::Vpextrw => pextr::<2>,
        M::Vpextrq => pextr::<8>,
        M::Vpinsrb => pinsr::<1>,
        M::Vpinsrw => pinsr::<2>,
        M::Vpinsrd => pinsr::<4>,
        M::Vpinsrq => pinsr::<8>,
        M::Vinsertps => insertps,
        M::Vblendvps => blendv::<4>,
        M::Vblendvpd => blendv::<8>,
        M::Vpblendvb => blendv::<1>,
        M::Vpmovsxbw => pmovx::<1, 2, true>,
        M::Vpmovsxbd => pmovx::<1, 4, true>,
        M::Vpmovsxbq => pmovx::<1, 8, true>,
        M::Vpmovsxwd => pmovx::<2, 4, true>,
        M::Vpmovsxwq => pmovx::<2, 8, true>,
        M::Vpmovsxdq => pmovx::<4, 8, true>,
        M::Vpmovzxbw => pmovx::<1, 2, false>,
        M::Vpmovzxbd => pmovx::<1, 4, false>,
        M::Vpmovzxbq => pmovx::<1, 8, false>,
        M::Vpmovzxwd => pmovx::<2, 4, false>,
        M::Vpmovzxwq => pmovx::<2, 8, false>,
        M::Vpmovzxdq => pmovx::<4, 8, false>,
        M::Vmovmskps => movmsk::<4>,
        M::Vmovmskpd => movmsk::<8>,
        M::Vpmovmskb => movmsk::<1>,
        M::Vpcmpestri | M::Vpcmpestri64 => pcmpstr::<true, true>,
        M::Vpcmpestrm | M::Vpcmpestrm64 => pcmpstr::<true, false>,
        M::Vpcmpistri => pcmpstr::<false, true>,
        M::Vpcmpistrm => pcmpstr::<false, false>,
        M::Vpblendd => {
            fn h(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
                ternary_imm(cpu, insn, 4, |a, b, imm| blend(a, b, 4, u16::from(imm)))
            }
            h
        }
        M::Vpermd | M::Vpermps => permd,
        M::Vpermq | M::Vpermpd => permq,
        M::Vpermilps => permil::<4>,
        M::Vpermilpd => permil::<8>,
        M::Vpsllvd => vshift::<4, 0>,
        M::Vpsllvq => vshift::<8, 0>,
        M::Vpsrlvd => vshift::<4, 1>,
        M::Vpsrlvq => vshift::<8, 1>,
        M::Vpsravd => vshift::<4, 2>,
        M::Vbroadcastf128 | M::Vbroadcasti128 => broadcast128,
        M::Vtestps => testp::<4>,
        M::Vtestpd => testp::<8>,
        M::Vmaskmovps | M::Vpmaskmovd => maskmov::<4>,
        M::Vmaskmovpd | M::Vpmaskmovq => maskmov::<8>,
        M::Vpgatherdd | M::Vgatherdps => gather::<4, 4>,
        M::Vpgatherdq | M::Vgatherdpd => gather::<4, 8>,
        M::Vpgatherqd | M::Vgatherqps => gather::<8, 4>,
        M::Vpgatherqq | M::Vgatherqpd => gather::<8, 8>,
        M::Vfmadd132ps => fma::<132, PS, false, 0>,
        M::Vfmadd132pd => fma::<132, PD, false, 0>,
        M::Vfmadd132ss => fma::<132, SS, false, 0>,
        M::Vfmadd132sd => fma::<132, SD, false, 0>,
        M::Vfmadd213ps => fma::<213, PS, false, 0>,
        M::Vfmadd213pd => fma::<213, PD, false, 0>,
        M::Vfmadd213ss => fma::<213, SS, false, 0>,
        M::Vfmadd213sd => fma::<213, SD, false, 0>,
        M::Vfmadd231ps => fma::<231, PS, false, 0>,
        M::Vfmadd231pd => fma::<231, PD, false, 0>,
        M::Vfmadd231ss => fma::<231, SS, false, 0>,
        M::Vfmadd231sd => fma::<231, SD, false, 0>,
        M::Vfmsub132ps => fma::<132, PS, false, 1>,
        M::Vfmsub132pd => fma::<132, PD, false, 1>,
        M::Vfmsub132ss => fma::<132, SS, false, 1>,
        M::Vfmsub132sd => fma::<132, SD, false, 1>,
        M::Vfmsub213ps => fma::<213, PS, false, 1>,
        M::Vfmsub213pd => fma::<213, PD, false, 1>,
        M::Vfmsub213ss => fma::<213, SS, false, 1>,
        M::Vfmsub213sd => fma::<213, SD, false, 1>,
        M::Vfmsub231ps => fma::<231, PS, false, 1>,
        M::Vfmsub231pd => fma::<231, PD, false, 1>,
        M::Vfmsub231ss => fma::<231, SS, false, 1>,
        M::Vfmsub231sd => fma::<231, SD, false, 1>,
        M::Vfnmadd132ps => fma::<132, PS, true, 0>,
        M::Vfnmadd132pd => fma::<132, PD, true, 0>,
        M::Vfnmadd132ss => fma::<132, SS, true, 0>,
        M::Vfnmadd132sd => fma::<132, SD, true, 0>,
        M::Vfnmadd213ps => fma::<213, PS, true, 0>,
        M::Vfnmadd213pd => fma::<213, PD, true, 0>,
        M::Vfnmadd213ss => fma::<213, SS, true, 0>,
        M::Vfnmadd213sd => fma::<213, SD, true, 0>,
        M::Vfnmadd231ps => fma::<231, PS, true, 0>,
        M::Vfnmadd231pd => fma::<231, PD, true, 0>,
        M::Vfnmadd231ss => fma::<231, SS, true, 0>,
        M::Vfnmadd231sd => fma::<231, SD, true, 0>,
        M::Vfnmsub132ps => fma::<132, PS, true, 1>,
        M::Vfnmsub132pd => fma::<132, PD, true, 1>,
        M::Vfnmsub132ss => fma::<132, SS, true, 1>,
        M::Vfnmsub132sd => fma::<132, SD, true, 1>,
        M::Vfnmsub213ps => fma::<213, PS, true, 1>,
        M::Vfnmsub213pd => fma::<213, PD, true, 1>,
        M::Vfnmsub213ss => fma::<213, SS, true, 1>,
        M::Vfnmsub213sd => fma::<213, SD, true, 1>,
        M::Vfnmsub231ps => fma::<231, PS, true, 1>,
        M::Vfnmsub231pd => fma::<231, PD, true, 1>,
        M::Vfnmsub231ss => fma::<231, SS, true, 1>,
        M::Vfnmsub231sd => fma::<231, SD, true, 1>,
        M::Vfmaddsub132ps => fma::<132, PS, false, 2>,
        M::Vfmaddsub132pd => fma::<132, PD, false, 2>,
        M::Vfmaddsub213ps => fma::<213, PS, false, 2>,
        M::Vfmaddsub213pd => fma::<213, PD, false, 2>,
        M::Vfmaddsub231ps => fma::<231, PS, false, 2>,
        M::Vfmaddsub231pd => fma::<231, PD, false, 2>,
        M::Vfmsubadd132ps => fma::<132, PS, false, 3>,
        M::Vfmsubadd132pd => fma::<132, PD, false, 3>,
        M::Vfmsubadd213ps => fma::<213, PS, false, 3>,
        M::Vfmsubadd213pd => fma::<213, PD, false, 3>,
        M::Vfmsubadd231ps => fma::<231, PS, false, 3>,
        M::Vfmsubadd231pd => fma::<231, PD, false, 3>,
        M::Vcvtph2ps => cvtph2ps,
        M::Vcvtps2ph => cvtps2ph,
        M::Vcomiss => comi::<false, true>,
        M::Vcomisd => comi::<true, true>,
        M::Vucomiss => comi::<false, false>,
        M::Vucomisd => comi::<true, false>,
        M::Vldmxcsr => ldmxcsr,
        M::Vstmxcsr => stmxcsr,
        M::Vdpps => vdpps,
        _ => {
            return super::int::vex(m)
                .or_else(|| super::shuffle::vex(m))
                .or_else(|| super::float::vex(m))
                .or_else(|| cvt_handler(code))
        }
    })
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;
    use iced_x86::{IcedError, Instruction};

    use super::super::lane;
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
        // VAES (VAESENC on YMM registers) is not implemented: no handler,
        // #UD (logged by name).
        let i = insn(|a| a.vaesenc(ymm0, ymm1, ymm2));
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
        assert_eq!(y(&c, 0), half(a, |p, q| super::super::map2(p, q, 1, 16, |s, t| s.wrapping_add(t))));
        exec(&mut c, |x| x.vpsubq(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), half(a, |p, q| super::super::map2(p, q, 8, 16, |s, t| s.wrapping_sub(t))));
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

    type Asm = fn(&mut CodeAssembler) -> Result<(), IcedError>;

    /// A pseudo-random 256-bit value with some lanes at the edges (0, -1,
    /// the sign bit alone).
    fn noise(seed: u64) -> [u128; 2] {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut b = [0u8; 32];
        for (i, v) in b.chunks_mut(8).enumerate() {
            let r = next();
            let q = match (r >> 60) & 7 {
                0 => 0,
                1 => u64::MAX,
                2 => 0x8000_8000_8000_8000,
                3 => 0x7f80_7fff_8080_0080,
                _ => r,
            };
            v.copy_from_slice(&(q ^ i as u64).to_le_bytes());
        }
        [u128::from_le_bytes(b[..16].try_into().unwrap()), u128::from_le_bytes(b[16..].try_into().unwrap())]
    }

    /// The same instruction with VEX.L cleared: its 128-bit form.
    fn vex128(i: &Instruction) -> Instruction {
        let mut e = iced_x86::Encoder::new(64);
        e.encode(i, 0x8000).unwrap();
        let mut b = e.take_buffer();
        match b[0] {
            0xc5 => b[1] &= !4,
            0xc4 => b[2] &= !4,
            x => panic!("not VEX: {x:#x}"),
        }
        decode(&b)
    }

    /// Run `vex` (destination YMM0, sources YMM1 and YMM2, or YMM2 alone)
    /// and `legacy` (XMM1 op= XMM2) on each half: the results must agree,
    /// and the 128-bit VEX form must give the low half and zero the rest.
    fn per_half(c: &mut Cpu, legacy: Asm, vex: Asm, seed: u64) {
        let (a, b) = (noise(seed), noise(seed + 1000));
        let v = insn(vex);
        let name = format!("{:?}", v.code());
        set_y(c, 1, a);
        set_y(c, 2, b);
        set_y(c, 0, noise(seed + 2000));
        exec_insn(c, &v).unwrap();
        let r = y(c, 0);
        for h in 0..2 {
            set_y(c, 1, [a[h], 0x55]);
            set_y(c, 2, [b[h], 0x66]);
            exec(c, legacy).unwrap();
            assert_eq!(c.state.xmm[1], r[h], "{name}, half {h}, a={:#x} b={:#x}", a[h], b[h]);
        }
        set_y(c, 1, a);
        set_y(c, 2, b);
        set_y(c, 0, noise(seed + 3000));
        exec_insn(c, &vex128(&v)).unwrap();
        assert_eq!(y(c, 0), [r[0], 0], "{name} (VEX.128)");
    }

    /// [`per_half`] of each case, on four seeds from `base` each.
    fn each_per_half(cases: &[(Asm, Asm)], base: u64) {
        let mut c = avx_cpu();
        for (k, &(legacy, vex)) in cases.iter().enumerate() {
            for seed in 0..4 {
                per_half(&mut c, legacy, vex, base + (k * 8 + seed) as u64);
            }
        }
    }

    #[test]
    fn vex_integer_forms_are_the_legacy_operation_on_each_half() {
        let cases: &[(Asm, Asm)] = &[
            (|a| a.paddb(xmm1, xmm2), |a| a.vpaddb(ymm0, ymm1, ymm2)),
            (|a| a.paddw(xmm1, xmm2), |a| a.vpaddw(ymm0, ymm1, ymm2)),
            (|a| a.paddd(xmm1, xmm2), |a| a.vpaddd(ymm0, ymm1, ymm2)),
            (|a| a.paddq(xmm1, xmm2), |a| a.vpaddq(ymm0, ymm1, ymm2)),
            (|a| a.psubb(xmm1, xmm2), |a| a.vpsubb(ymm0, ymm1, ymm2)),
            (|a| a.psubq(xmm1, xmm2), |a| a.vpsubq(ymm0, ymm1, ymm2)),
            (|a| a.paddsb(xmm1, xmm2), |a| a.vpaddsb(ymm0, ymm1, ymm2)),
            (|a| a.paddsw(xmm1, xmm2), |a| a.vpaddsw(ymm0, ymm1, ymm2)),
            (|a| a.psubsb(xmm1, xmm2), |a| a.vpsubsb(ymm0, ymm1, ymm2)),
            (|a| a.psubsw(xmm1, xmm2), |a| a.vpsubsw(ymm0, ymm1, ymm2)),
            (|a| a.paddusb(xmm1, xmm2), |a| a.vpaddusb(ymm0, ymm1, ymm2)),
            (|a| a.paddusw(xmm1, xmm2), |a| a.vpaddusw(ymm0, ymm1, ymm2)),
            (|a| a.psubusb(xmm1, xmm2), |a| a.vpsubusb(ymm0, ymm1, ymm2)),
            (|a| a.psubusw(xmm1, xmm2), |a| a.vpsubusw(ymm0, ymm1, ymm2)),
            (|a| a.pmullw(xmm1, xmm2), |a| a.vpmullw(ymm0, ymm1, ymm2)),
            (|a| a.pmulhw(xmm1, xmm2), |a| a.vpmulhw(ymm0, ymm1, ymm2)),
            (|a| a.pmulhuw(xmm1, xmm2), |a| a.vpmulhuw(ymm0, ymm1, ymm2)),
            (|a| a.pmulld(xmm1, xmm2), |a| a.vpmulld(ymm0, ymm1, ymm2)),
            (|a| a.pmuludq(xmm1, xmm2), |a| a.vpmuludq(ymm0, ymm1, ymm2)),
            (|a| a.pmuldq(xmm1, xmm2), |a| a.vpmuldq(ymm0, ymm1, ymm2)),
            (|a| a.pmaddwd(xmm1, xmm2), |a| a.vpmaddwd(ymm0, ymm1, ymm2)),
            (|a| a.pmaddubsw(xmm1, xmm2), |a| a.vpmaddubsw(ymm0, ymm1, ymm2)),
            (|a| a.pmulhrsw(xmm1, xmm2), |a| a.vpmulhrsw(ymm0, ymm1, ymm2)),
            (|a| a.psadbw(xmm1, xmm2), |a| a.vpsadbw(ymm0, ymm1, ymm2)),
            (|a| a.pavgb(xmm1, xmm2), |a| a.vpavgb(ymm0, ymm1, ymm2)),
            (|a| a.pavgw(xmm1, xmm2), |a| a.vpavgw(ymm0, ymm1, ymm2)),
            (|a| a.pminub(xmm1, xmm2), |a| a.vpminub(ymm0, ymm1, ymm2)),
            (|a| a.pminuw(xmm1, xmm2), |a| a.vpminuw(ymm0, ymm1, ymm2)),
            (|a| a.pminud(xmm1, xmm2), |a| a.vpminud(ymm0, ymm1, ymm2)),
            (|a| a.pminsb(xmm1, xmm2), |a| a.vpminsb(ymm0, ymm1, ymm2)),
            (|a| a.pminsw(xmm1, xmm2), |a| a.vpminsw(ymm0, ymm1, ymm2)),
            (|a| a.pminsd(xmm1, xmm2), |a| a.vpminsd(ymm0, ymm1, ymm2)),
            (|a| a.pmaxub(xmm1, xmm2), |a| a.vpmaxub(ymm0, ymm1, ymm2)),
            (|a| a.pmaxuw(xmm1, xmm2), |a| a.vpmaxuw(ymm0, ymm1, ymm2)),
            (|a| a.pmaxud(xmm1, xmm2), |a| a.vpmaxud(ymm0, ymm1, ymm2)),
            (|a| a.pmaxsb(xmm1, xmm2), |a| a.vpmaxsb(ymm0, ymm1, ymm2)),
            (|a| a.pmaxsw(xmm1, xmm2), |a| a.vpmaxsw(ymm0, ymm1, ymm2)),
            (|a| a.pmaxsd(xmm1, xmm2), |a| a.vpmaxsd(ymm0, ymm1, ymm2)),
            (|a| a.pcmpgtq(xmm1, xmm2), |a| a.vpcmpgtq(ymm0, ymm1, ymm2)),
            (|a| a.pcmpeqw(xmm1, xmm2), |a| a.vpcmpeqw(ymm0, ymm1, ymm2)),
            (|a| a.pandn(xmm1, xmm2), |a| a.vpandn(ymm0, ymm1, ymm2)),
            (|a| a.xorps(xmm1, xmm2), |a| a.vxorps(ymm0, ymm1, ymm2)),
            (|a| a.psignb(xmm1, xmm2), |a| a.vpsignb(ymm0, ymm1, ymm2)),
            (|a| a.psignw(xmm1, xmm2), |a| a.vpsignw(ymm0, ymm1, ymm2)),
            (|a| a.psignd(xmm1, xmm2), |a| a.vpsignd(ymm0, ymm1, ymm2)),
            (|a| a.pabsb(xmm1, xmm2), |a| a.vpabsb(ymm0, ymm2)),
            (|a| a.pabsw(xmm1, xmm2), |a| a.vpabsw(ymm0, ymm2)),
            (|a| a.pabsd(xmm1, xmm2), |a| a.vpabsd(ymm0, ymm2)),
            (|a| a.phaddw(xmm1, xmm2), |a| a.vphaddw(ymm0, ymm1, ymm2)),
            (|a| a.phaddd(xmm1, xmm2), |a| a.vphaddd(ymm0, ymm1, ymm2)),
            (|a| a.phaddsw(xmm1, xmm2), |a| a.vphaddsw(ymm0, ymm1, ymm2)),
            (|a| a.phsubw(xmm1, xmm2), |a| a.vphsubw(ymm0, ymm1, ymm2)),
            (|a| a.phsubd(xmm1, xmm2), |a| a.vphsubd(ymm0, ymm1, ymm2)),
            (|a| a.phsubsw(xmm1, xmm2), |a| a.vphsubsw(ymm0, ymm1, ymm2)),
            (|a| a.pshufb(xmm1, xmm2), |a| a.vpshufb(ymm0, ymm1, ymm2)),
            (|a| a.psllw(xmm1, 3), |a| a.vpsllw(ymm0, ymm1, 3)),
            (|a| a.pslld(xmm1, 31), |a| a.vpslld(ymm0, ymm1, 31)),
            (|a| a.psllq(xmm1, 64), |a| a.vpsllq(ymm0, ymm1, 64)),
            (|a| a.psrlw(xmm1, 15), |a| a.vpsrlw(ymm0, ymm1, 15)),
            (|a| a.psrld(xmm1, 1), |a| a.vpsrld(ymm0, ymm1, 1)),
            (|a| a.psrlq(xmm1, 33), |a| a.vpsrlq(ymm0, ymm1, 33)),
            (|a| a.psraw(xmm1, 200), |a| a.vpsraw(ymm0, ymm1, 200)),
            (|a| a.psrad(xmm1, 7), |a| a.vpsrad(ymm0, ymm1, 7)),
            (|a| a.pslldq(xmm1, 5), |a| a.vpslldq(ymm0, ymm1, 5)),
            (|a| a.psrldq(xmm1, 17), |a| a.vpsrldq(ymm0, ymm1, 17)),
        ];
        each_per_half(cases, 0);
    }

    #[test]
    fn vex_shuffle_forms_are_the_legacy_operation_on_each_half() {
        let cases: &[(Asm, Asm)] = &[
            (|a| a.packsswb(xmm1, xmm2), |a| a.vpacksswb(ymm0, ymm1, ymm2)),
            (|a| a.packssdw(xmm1, xmm2), |a| a.vpackssdw(ymm0, ymm1, ymm2)),
            (|a| a.packuswb(xmm1, xmm2), |a| a.vpackuswb(ymm0, ymm1, ymm2)),
            (|a| a.packusdw(xmm1, xmm2), |a| a.vpackusdw(ymm0, ymm1, ymm2)),
            (|a| a.punpckhwd(xmm1, xmm2), |a| a.vpunpckhwd(ymm0, ymm1, ymm2)),
            (|a| a.unpcklps(xmm1, xmm2), |a| a.vunpcklps(ymm0, ymm1, ymm2)),
            (|a| a.unpckhpd(xmm1, xmm2), |a| a.vunpckhpd(ymm0, ymm1, ymm2)),
            (|a| a.pshufd(xmm1, xmm2, 0x6c), |a| a.vpshufd(ymm0, ymm2, 0x6c)),
            (|a| a.pshuflw(xmm1, xmm2, 0x1b), |a| a.vpshuflw(ymm0, ymm2, 0x1b)),
            (|a| a.pshufhw(xmm1, xmm2, 0xe1), |a| a.vpshufhw(ymm0, ymm2, 0xe1)),
            (|a| a.shufps(xmm1, xmm2, 0x9c), |a| a.vshufps(ymm0, ymm1, ymm2, 0x9c)),
            (|a| a.palignr(xmm1, xmm2, 7), |a| a.vpalignr(ymm0, ymm1, ymm2, 7)),
            (|a| a.palignr(xmm1, xmm2, 20), |a| a.vpalignr(ymm0, ymm1, ymm2, 20)),
            (|a| a.pblendw(xmm1, xmm2, 0xa5), |a| a.vpblendw(ymm0, ymm1, ymm2, 0xa5)),
            (|a| a.movddup(xmm1, xmm2), |a| a.vmovddup(ymm0, ymm2)),
            (|a| a.movsldup(xmm1, xmm2), |a| a.vmovsldup(ymm0, ymm2)),
            (|a| a.movshdup(xmm1, xmm2), |a| a.vmovshdup(ymm0, ymm2)),
        ];
        each_per_half(cases, 5000);
    }

    #[test]
    fn upper_halves_take_their_own_immediate_bits() {
        let mut c = avx_cpu();
        set_y(&mut c, 1, [u32x4([0, 1, 2, 3]), u32x4([4, 5, 6, 7])]);
        set_y(&mut c, 2, [u32x4([10, 11, 12, 13]), u32x4([14, 15, 16, 17])]);
        // VBLENDPS: one bit per dword, eight of them.
        exec(&mut c, |a| a.vblendps(ymm0, ymm1, ymm2, 0b1001_0110)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([0, 11, 12, 3]), u32x4([14, 5, 6, 17])]);
        // VBLENDPD: one bit per qword.
        exec(&mut c, |a| a.vblendpd(ymm0, ymm1, ymm2, 0b1001)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([10, 11, 2, 3]), u32x4([4, 5, 16, 17])]);
        // VSHUFPD: imm8 bits 1:0 for the low half, 3:2 for the upper one.
        exec(&mut c, |a| a.vshufpd(ymm0, ymm1, ymm2, 0b0110)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([0, 1, 12, 13]), u32x4([6, 7, 14, 15])]);
        // VMPSADBW: imm8 bits 2:0 for the low half, 5:3 for the upper one.
        set_y(&mut c, 1, ramp(0));
        set_y(&mut c, 2, [0, u128::from_le_bytes([1; 16])]);
        exec(&mut c, |a| a.vmpsadbw(ymm0, ymm1, ymm2, 0b10_0000)).unwrap();
        // Upper half: bytes 20.. (offset 4 within the half) against four 1s.
        assert_eq!(y(&c, 0)[1] as u16, (20 + 21 + 22 + 23) - 4);
        assert_eq!(y(&c, 0)[0] as u16, 1 + 2 + 3);
    }

    #[test]
    fn shift_counts_from_a_register_apply_to_both_halves() {
        let mut c = avx_cpu();
        set_y(&mut c, 1, [u128::MAX, u128::MAX]);
        set_y(&mut c, 2, [4, 100]);
        exec(&mut c, |a| a.vpsrlw(ymm0, ymm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX / 0xffff * 0x0fff; 2]);
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[40, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        exec(&mut c, |a| a.vpsllq(ymm0, ymm1, xmmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX / u128::from(u64::MAX) * (u64::MAX << 40) as u128; 2]);
        // Counts of 2^64 - 1 clear everything; arithmetic shifts fill.
        write(&c, DATA, &[0xff; 8]);
        set_y(&mut c, 1, [1 << 127, 1]);
        exec(&mut c, |a| a.vpsrad(ymm0, ymm1, xmmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [u128::MAX << 96, 0]);
        exec(&mut c, |a| a.vpslld(ymm0, ymm1, xmmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [0, 0]);
    }

    #[test]
    fn widening_masks_blends_inserts_extracts() {
        let mut c = avx_cpu();
        let v = ramp(0xf0);
        set_y(&mut c, 1, v);
        // VPMOVSXBW ymm: sixteen bytes to sixteen words.
        exec(&mut c, |a| a.vpmovsxbw(ymm0, xmm1)).unwrap();
        let words: Vec<u16> = (0..16u8).map(|i| i8::from_le_bytes([0xf0u8.wrapping_add(i)]) as i16 as u16).collect();
        assert_eq!(y(&c, 0)[0], u16x8(words[..8].try_into().unwrap()));
        assert_eq!(y(&c, 0)[1], u16x8(words[8..].try_into().unwrap()));
        exec(&mut c, |a| a.vpmovzxbq(ymm0, xmm1)).unwrap();
        assert_eq!(y(&c, 0), [0xf1 << 64 | 0xf0, 0xf3 << 64 | 0xf2]);
        exec(&mut c, |a| a.vpmovzxdq(xmm0, xmm1)).unwrap();
        assert_eq!(y(&c, 0), [0xf7f6_f5f4 << 64 | 0xf3f2_f1f0, 0]);
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[0x80, 0xff, 0x7f, 0x01]);
        exec(&mut c, |a| a.vpmovsxbd(ymm0, qword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0)[0], u32x4([0xffff_ff80, 0xffff_ffff, 0x7f, 1]));
        // Masks.
        set_y(&mut c, 2, [u32x4([0x8000_0000, 0, 0, 0x8000_0000]), u32x4([0, 0xffff_ffff, 0, 0])]);
        exec(&mut c, |a| a.vmovmskps(eax, ymm2)).unwrap();
        assert_eq!(c.state.gpr[0], 0b0010_1001);
        exec(&mut c, |a| a.vmovmskpd(rax, ymm2)).unwrap();
        assert_eq!(c.state.gpr[0], 0b0110);
        exec(&mut c, |a| a.vmovmskps(eax, xmm2)).unwrap();
        assert_eq!(c.state.gpr[0], 0b1001);
        // Variable blends: the fourth register's sign bits.
        set_y(&mut c, 3, [0, u128::MAX]);
        set_y(&mut c, 4, [u32x4([0x8000_0000, 0, 0, 0]), u32x4([0, 0, 0, 0x8000_0000])]);
        exec(&mut c, |a| a.vblendvps(ymm0, ymm3, ymm2, ymm4)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([0x8000_0000, 0, 0, 0]), u32x4([u32::MAX, u32::MAX, u32::MAX, 0])]);
        exec(&mut c, |a| a.vpblendvb(xmm0, xmm3, xmm2, xmm4)).unwrap();
        assert_eq!(y(&c, 0), [0x80 << 24, 0]);
        exec(&mut c, |a| a.vblendvpd(ymm0, ymm2, ymm3, ymm4)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([0x8000_0000, 0, 0, 0x8000_0000]), u32x4([0, u32::MAX, u32::MAX, u32::MAX])]);
        // Extracts and inserts (VEX.128 only), from VEX.vvvv.
        set_y(&mut c, 1, ramp(0));
        exec(&mut c, |a| a.vpextrb(eax, xmm1, 17)).unwrap();
        assert_eq!(c.state.gpr[0], 1);
        exec(&mut c, |a| a.vpextrq(rax, xmm1, 1)).unwrap();
        assert_eq!(c.state.gpr[0], 0x0f0e_0d0c_0b0a_0908);
        exec(&mut c, |a| a.vextractps(dword_ptr(rax + 0), xmm1, 3)).unwrap_err();
        c.state.gpr[0] = DATA;
        exec(&mut c, |a| a.vpextrw(word_ptr(rax), xmm1, 2)).unwrap();
        assert_eq!(read::<2>(&c, DATA), [4, 5]);
        c.state.gpr[3] = 0xabcd;
        exec(&mut c, |a| a.vpinsrw(xmm0, xmm1, ebx, 7)).unwrap();
        assert_eq!(y(&c, 0), [(ramp(0)[0] & !(0xffff << 112)) | (0xabcd << 112), 0]);
        exec(&mut c, |a| a.vpinsrd(xmm0, xmm1, dword_ptr(rax), 0)).unwrap();
        assert_eq!(y(&c, 0)[0] as u32, 0x017f_0504);
        set_y(&mut c, 2, [u32x4([1, 2, 3, 4]), 9]);
        exec(&mut c, |a| a.vinsertps(xmm0, xmm2, xmm1, (2 << 6) | (1 << 4) | 0b1000)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([1, 0x0b0a_0908, 3, 0]), 0]);
    }

    #[test]
    fn scalar_half_and_nontemporal_moves() {
        let mut c = avx_cpu();
        set_y(&mut c, 1, [u32x4([1, 2, 3, 4]), 5]);
        set_y(&mut c, 2, [u32x4([6, 7, 8, 9]), 5]);
        exec(&mut c, |a| a.vmovss_3(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([6, 2, 3, 4]), 0]);
        exec(&mut c, |a| a.vmovsd_3(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([6, 7, 3, 4]), 0]);
        // The 0F 11 register form: operands in the other order.
        exec_insn(&mut c, &decode(&[0xc5, 0xf2, 0x11, 0xd0])).unwrap(); // vmovss xmm0, xmm1, xmm2
        assert_eq!(y(&c, 0), [u32x4([6, 2, 3, 4]), 0]);
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[0x11; 16]);
        set_y(&mut c, 0, ramp(0));
        exec(&mut c, |a| a.vmovss(xmm0, dword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [0x1111_1111, 0]);
        exec(&mut c, |a| a.vmovsd(qword_ptr(rax + 8), xmm2)).unwrap();
        assert_eq!(read::<16>(&c, DATA)[8..], [6, 0, 0, 0, 7, 0, 0, 0]);
        exec(&mut c, |a| a.vmovhps_3(xmm0, xmm1, qword_ptr(rax + 8))).unwrap();
        assert_eq!(y(&c, 0), [u32x4([1, 2, 6, 7]), 0]);
        exec(&mut c, |a| a.vmovlpd_3(xmm0, xmm1, qword_ptr(rax + 8))).unwrap();
        assert_eq!(y(&c, 0), [u32x4([6, 7, 3, 4]), 0]);
        exec(&mut c, |a| a.vmovhpd(qword_ptr(rax), xmm1)).unwrap();
        assert_eq!(read::<8>(&c, DATA), [3, 0, 0, 0, 4, 0, 0, 0]);
        exec(&mut c, |a| a.vmovhlps(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([8, 9, 3, 4]), 0]);
        exec(&mut c, |a| a.vmovlhps(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([1, 2, 6, 7]), 0]);
        // Non-temporal moves need alignment; VLDDQU does not.
        set_y(&mut c, 3, ramp(3));
        exec(&mut c, |a| a.vmovntdq(ymmword_ptr(rax), ymm3)).unwrap();
        exec(&mut c, |a| a.vmovntdqa(ymm4, ymmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 4), ramp(3));
        exec(&mut c, |a| a.vlddqu(ymm5, ymmword_ptr(rax + 1))).unwrap();
        assert_eq!(y(&c, 5)[0] as u8, 4);
        assert_eq!(exec(&mut c, |a| a.vmovntps(ymmword_ptr(rax + 16), ymm3)), Err(Exception::GeneralProtection(0)));
        // VMASKMOVDQU: bytes whose mask byte has bit 7 set, at DS:RDI.
        c.state.gpr[7] = DATA;
        write(&c, DATA, &[0; 16]);
        set_y(&mut c, 6, [0x80 << 8 | 0xff, 0]);
        exec(&mut c, |a| a.vmaskmovdqu(xmm3, xmm6)).unwrap();
        assert_eq!(read::<3>(&c, DATA), [3, 4, 0]);
    }

    #[test]
    fn string_compares_zero_the_upper_half_of_xmm0() {
        let mut c = avx_cpu();
        let s = u128::from_le_bytes(*b"hello, world!\0\0\0");
        set_y(&mut c, 1, [u128::from_le_bytes(*b"o\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"), 7]);
        set_y(&mut c, 2, [s, 7]);
        set_y(&mut c, 0, [0, 7]);
        exec(&mut c, |a| a.vpcmpistri(xmm1, xmm2, 0)).unwrap();
        assert_eq!(c.state.gpr[1], 4);
        assert_eq!(y(&c, 0), [0, 7]);
        exec(&mut c, |a| a.vpcmpistrm(xmm1, xmm2, 0)).unwrap();
        assert_eq!(y(&c, 0), [(1 << 4) | (1 << 8), 0]);
        c.state.gpr[0] = 1;
        c.state.gpr[2] = 16;
        exec(&mut c, |a| a.vpcmpestri(xmm1, xmm2, 0x40)).unwrap();
        assert_eq!(c.state.gpr[1], 8);
    }

    #[test]
    fn avx2_permutes_blends_and_variable_shifts() {
        let mut c = avx_cpu();
        let t = [u32x4([10, 11, 12, 13]), u32x4([14, 15, 16, 17])];
        set_y(&mut c, 2, t);
        set_y(&mut c, 1, [u32x4([7, 0, 8 + 3, 0xffff_fff9]), u32x4([1, 1, 6, 5])]);
        exec(&mut c, |a| a.vpermd(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([17, 10, 13, 11]), u32x4([11, 11, 16, 15])]);
        exec(&mut c, |a| a.vpermps(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0)[0], u32x4([17, 10, 13, 11]));
        exec(&mut c, |a| a.vpermq(ymm0, ymm2, 0b00_01_10_11)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([16, 17, 14, 15]), u32x4([12, 13, 10, 11])]);
        exec(&mut c, |a| a.vpblendd(ymm0, ymm1, ymm2, 0b1000_0001)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([10, 0, 11, 0xffff_fff9]), u32x4([1, 1, 6, 17])]);
        exec(&mut c, |a| a.vpblendd(xmm0, xmm1, xmm2, 0b1111_0010)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([7, 11, 11, 0xffff_fff9]), 0]);
        // VPERMILPS/PD: within each half.
        exec(&mut c, |a| a.vpermilps(ymm0, ymm2, 0b00_01_10_11)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([13, 12, 11, 10]), u32x4([17, 16, 15, 14])]);
        exec(&mut c, |a| a.vpermilps(ymm0, ymm2, ymm1)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([13, 10, 13, 11]), u32x4([15, 15, 16, 15])]);
        exec(&mut c, |a| a.vpermilpd(ymm0, ymm2, 0b0110)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([10, 11, 12, 13]), u32x4([16, 17, 14, 15])]);
        set_y(&mut c, 3, [2 << 64, 2]);
        exec(&mut c, |a| a.vpermilpd(ymm0, ymm2, ymm3)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([10, 11, 12, 13]), u32x4([16, 17, 14, 15])]);
        // Variable shifts.
        set_y(&mut c, 1, [u32x4([1, 0x8000_0000, 0x8000_0000, 5]), u32x4([1, 1, 1, 1])]);
        set_y(&mut c, 2, [u32x4([31, 31, 32, 0]), u32x4([0, 1, 33, u32::MAX])]);
        exec(&mut c, |a| a.vpsllvd(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([0x8000_0000, 0, 0, 5]), u32x4([1, 2, 0, 0])]);
        exec(&mut c, |a| a.vpsrlvd(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([0, 1, 0, 5]), u32x4([1, 0, 0, 0])]);
        exec(&mut c, |a| a.vpsravd(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([0, u32::MAX, u32::MAX, 5]), u32x4([1, 0, 0, 0])]);
        set_y(&mut c, 2, [63 | (64 << 64), 1]);
        set_y(&mut c, 1, [u128::MAX, 3]);
        exec(&mut c, |a| a.vpsrlvq(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [1, 0]);
        exec(&mut c, |a| a.vpsllvq(ymm0, ymm1, ymm2)).unwrap();
        assert_eq!(y(&c, 0), [1 << 63, 6]);
        // VBROADCASTI128.
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[7; 16]);
        exec(&mut c, |a| a.vbroadcasti128(ymm0, xmmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [u128::from_le_bytes([7; 16]); 2]);
    }

    #[test]
    fn vtestps_and_vtestpd_see_sign_bits_only() {
        use crate::state::flags::{ARITH, CF, ZF};
        let mut c = avx_cpu();
        let flags = |c: &mut Cpu| {
            c.state.materialize_flags();
            c.state.rflags & ARITH
        };
        set_y(&mut c, 1, [u32x4([0x7fff_ffff, 0, 0, 0]), 0]);
        set_y(&mut c, 2, [u32x4([0x7fff_ffff, 0, 0, 0]), 0]);
        exec(&mut c, |a| a.vtestps(ymm1, ymm2)).unwrap();
        assert_eq!(flags(&mut c), ZF | CF);
        set_y(&mut c, 2, [0, u32x4([0, 0, 0, 0x8000_0000])]);
        exec(&mut c, |a| a.vtestps(ymm1, ymm2)).unwrap();
        assert_eq!(flags(&mut c), ZF);
        exec(&mut c, |a| a.vtestps(xmm1, xmm2)).unwrap();
        assert_eq!(flags(&mut c), ZF | CF);
        set_y(&mut c, 1, [0, u32x4([0, 0, 0, 0x8000_0000])]);
        exec(&mut c, |a| a.vtestpd(ymm1, ymm2)).unwrap();
        assert_eq!(flags(&mut c), CF);
        // Bit 31 is not a sign bit of a double.
        set_y(&mut c, 1, [0x8000_0000, 0]);
        set_y(&mut c, 2, [0x8000_0000, 0]);
        exec(&mut c, |a| a.vtestpd(ymm1, ymm2)).unwrap();
        assert_eq!(flags(&mut c), ZF | CF);
    }

    #[test]
    fn masked_moves_touch_only_selected_elements() {
        let mut c = avx_cpu();
        c.state.gpr[0] = DATA;
        write(&c, DATA, &(0..32).collect::<Vec<u8>>());
        set_y(&mut c, 1, [u32x4([0x8000_0000, 0, 0, 0xffff_ffff]), u32x4([0, 0, 0, 0x8000_0000])]);
        set_y(&mut c, 0, ramp(0x40));
        exec(&mut c, |a| a.vpmaskmovd(ymm0, ymm1, ymmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [u32x4([0x0302_0100, 0, 0, 0x0f0e_0d0c]), u32x4([0, 0, 0, 0x1f1e_1d1c])]);
        exec(&mut c, |a| a.vmaskmovpd(xmm0, xmm1, xmmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [0x0f0e_0d0c_0b0a_0908 << 64, 0]);
        // Stores leave the other bytes alone.
        set_y(&mut c, 2, [u128::MAX, u128::MAX]);
        exec(&mut c, |a| a.vmaskmovps(ymmword_ptr(rax), ymm1, ymm2)).unwrap();
        let m = read::<32>(&c, DATA);
        assert_eq!(m[..4], [0xff; 4]);
        assert_eq!(m[4..12], (4..12).collect::<Vec<u8>>()[..]);
        assert_eq!(m[28..], [0xff; 4]);
        // Masked-off elements on a missing page do not fault; selected ones do,
        // and a store then writes nothing.
        c.state.gpr[0] = UNMAPPED - 16;
        set_y(&mut c, 1, [u128::MAX, 0]);
        exec(&mut c, |a| a.vpmaskmovq(ymm0, ymm1, ymmword_ptr(rax))).unwrap();
        assert_eq!(y(&c, 0), [0, 0]);
        exec(&mut c, |a| a.vpmaskmovq(ymmword_ptr(rax), ymm1, ymm2)).unwrap();
        assert_eq!(read::<16>(&c, UNMAPPED - 16), [0xff; 16]);
        write(&c, UNMAPPED - 16, &[0; 16]);
        set_y(&mut c, 1, [u128::MAX, u128::MAX]);
        assert!(matches!(
            exec(&mut c, |a| a.vpmaskmovd(ymmword_ptr(rax), ymm1, ymm2)),
            Err(Exception::PageFault { .. })
        ));
        assert_eq!(read::<16>(&c, UNMAPPED - 16), [0; 16]);
    }

    #[test]
    fn gathers_update_the_mask_and_stop_at_a_fault() {
        let mut c = avx_cpu();
        let words: Vec<u8> = (0..64u32).flat_map(|i| (i * 3).to_le_bytes()).collect();
        write(&c, DATA, &words);
        c.state.gpr[0] = DATA;
        // VPGATHERDD: dword i at rax + 4 * index i; the mask's sign bits pick.
        set_y(&mut c, 2, [u32x4([5, 0, 63, 2]), u32x4([1, 1, 0xffff_ffff, 9])]);
        set_y(&mut c, 3, [u32x4([u32::MAX, 0x8000_0000, 0x7fff_ffff, u32::MAX]), u128::MAX]);
        set_y(&mut c, 1, ramp(0));
        exec(&mut c, |a| a.vpgatherdd_3(ymm1, dword_ptr(rax + ymm2 * 4), ymm3)).unwrap();
        let old = ramp(0);
        assert_eq!(y(&c, 1)[0], u32x4([15, 0, lane(old[0], 4, 2) as u32, 6]));
        // Index -1 reads the dword below DATA (zero).
        assert_eq!(y(&c, 1)[1], u32x4([3, 3, 0, 27]));
        assert_eq!(y(&c, 3), [0, 0]);
        // VPGATHERQD with a 128-bit index: two dwords, the rest zeroed.
        set_y(&mut c, 2, [1 | (2 << 64), 0]);
        set_y(&mut c, 3, [u128::MAX, u128::MAX]);
        exec(&mut c, |a| a.vpgatherqd_3(xmm1, dword_ptr(rax + xmm2 * 4), xmm3)).unwrap();
        assert_eq!(y(&c, 1), [u32x4([3, 6, 0, 0]), 0]);
        assert_eq!(y(&c, 3), [0, 0]);
        // VGATHERDPD ymm with a 128-bit index.
        set_y(&mut c, 2, [u32x4([0, 2, 4, 6]), 0]);
        set_y(&mut c, 3, [u128::MAX, u128::MAX]);
        exec(&mut c, |a| a.vgatherdpd_3(ymm1, qword_ptr(rax + xmm2 * 4), ymm3)).unwrap();
        assert_eq!(y(&c, 1), [u32x4([0, 3, 6, 9]), u32x4([12, 15, 18, 21])]);
        // A fault at element 2: elements 0 and 1 are done, their masks clear.
        c.state.gpr[0] = UNMAPPED - 8;
        set_y(&mut c, 2, [0, 1 | (2 << 64)]);
        set_y(&mut c, 3, [u128::MAX, u128::MAX]);
        set_y(&mut c, 1, [0, 0]);
        write(&c, UNMAPPED - 8, &[1, 0, 0, 0, 0, 0, 0, 0]);
        let r = exec(&mut c, |a| a.vpgatherqq_3(ymm1, qword_ptr(rax + ymm2 * 8), ymm3));
        assert!(matches!(r, Err(Exception::PageFault { .. })), "{r:?}");
        assert_eq!(y(&c, 1), [1 | (1 << 64), 0]);
        assert_eq!(y(&c, 3), [0, u128::MAX]);
        // VEX.128 at a fault: unselected elements before it complete (mask
        // cleared), and bits 255:128 of both registers are kept.
        set_y(&mut c, 2, [1 << 32, 0]);
        set_y(&mut c, 3, [u32x4([5, 0x8000_0000, 0x8000_0000, 0x8000_0000]), 9]);
        set_y(&mut c, 1, [0, 8]);
        let r = exec(&mut c, |a| a.vpgatherdd_3(xmm1, dword_ptr(rax + xmm2 * 8), xmm3));
        assert!(matches!(r, Err(Exception::PageFault { .. })), "{r:?}");
        assert_eq!(y(&c, 3), [u32x4([0, 0x8000_0000, 0x8000_0000, 0x8000_0000]), 9]);
        assert_eq!(y(&c, 1), [0, 8]);
        // Single-stepping: after a gathered element, the fault becomes the
        // step's #DB (a fault at the gather, DR6.BS set).
        set_y(&mut c, 2, [0, 1 | (2 << 64)]);
        set_y(&mut c, 3, [u128::MAX, u128::MAX]);
        c.state.rflags |= crate::state::flags::TF;
        assert_eq!(exec(&mut c, |a| a.vpgatherqq_3(ymm1, qword_ptr(rax + ymm2 * 8), ymm3)), Err(Exception::Debug));
        assert_ne!(c.state.dr[6] & crate::ops::debug::dr6::BS, 0);
        assert_eq!(y(&c, 3), [0, u128::MAX]);
        c.state.rflags &= !crate::state::flags::TF;
        // The destination, index and mask must be distinct registers.
        assert_eq!(
            exec(&mut c, |a| a.vpgatherdd_3(xmm1, dword_ptr(rax + xmm1 * 4), xmm3)),
            Err(Exception::InvalidOpcode)
        );
        assert_eq!(
            exec(&mut c, |a| a.vpgatherdq_3(ymm1, qword_ptr(rax + xmm2 * 4), ymm2)),
            Err(Exception::InvalidOpcode)
        );
    }

    #[test]
    fn vex_float_forms_are_the_legacy_operation_on_each_half() {
        let cases: &[(Asm, Asm)] = &[
            (|a| a.addps(xmm1, xmm2), |a| a.vaddps(ymm0, ymm1, ymm2)),
            (|a| a.subpd(xmm1, xmm2), |a| a.vsubpd(ymm0, ymm1, ymm2)),
            (|a| a.mulps(xmm1, xmm2), |a| a.vmulps(ymm0, ymm1, ymm2)),
            (|a| a.divpd(xmm1, xmm2), |a| a.vdivpd(ymm0, ymm1, ymm2)),
            (|a| a.minps(xmm1, xmm2), |a| a.vminps(ymm0, ymm1, ymm2)),
            (|a| a.maxpd(xmm1, xmm2), |a| a.vmaxpd(ymm0, ymm1, ymm2)),
            (|a| a.sqrtps(xmm1, xmm2), |a| a.vsqrtps(ymm0, ymm2)),
            (|a| a.sqrtpd(xmm1, xmm2), |a| a.vsqrtpd(ymm0, ymm2)),
            (|a| a.addsubps(xmm1, xmm2), |a| a.vaddsubps(ymm0, ymm1, ymm2)),
            (|a| a.haddpd(xmm1, xmm2), |a| a.vhaddpd(ymm0, ymm1, ymm2)),
            (|a| a.hsubps(xmm1, xmm2), |a| a.vhsubps(ymm0, ymm1, ymm2)),
            (|a| a.roundps(xmm1, xmm2, 1), |a| a.vroundps(ymm0, ymm2, 1)),
            (|a| a.roundpd(xmm1, xmm2, 4), |a| a.vroundpd(ymm0, ymm2, 4)),
            (|a| a.dpps(xmm1, xmm2, 0xf3), |a| a.vdpps(ymm0, ymm1, ymm2, 0xf3)),
            (|a| a.cmpps(xmm1, xmm2, 1), |a| a.vcmpps(ymm0, ymm1, ymm2, 1)),
            (|a| a.cmppd(xmm1, xmm2, 7), |a| a.vcmppd(ymm0, ymm1, ymm2, 7)),
            (|a| a.rcpps(xmm1, xmm2), |a| a.vrcpps(ymm0, ymm2)),
            (|a| a.cvtdq2ps(xmm1, xmm2), |a| a.vcvtdq2ps(ymm0, ymm2)),
            (|a| a.cvtps2dq(xmm1, xmm2), |a| a.vcvtps2dq(ymm0, ymm2)),
            (|a| a.cvttps2dq(xmm1, xmm2), |a| a.vcvttps2dq(ymm0, ymm2)),
        ];
        each_per_half(cases, 9000);
    }

    #[test]
    fn scalar_float_forms_merge_from_vvvv() {
        let cases: &[(Asm, Asm)] = &[
            (|a| a.addss(xmm1, xmm2), |a| a.vaddss(xmm0, xmm1, xmm2)),
            (|a| a.subsd(xmm1, xmm2), |a| a.vsubsd(xmm0, xmm1, xmm2)),
            (|a| a.mulss(xmm1, xmm2), |a| a.vmulss(xmm0, xmm1, xmm2)),
            (|a| a.divsd(xmm1, xmm2), |a| a.vdivsd(xmm0, xmm1, xmm2)),
            (|a| a.minss(xmm1, xmm2), |a| a.vminss(xmm0, xmm1, xmm2)),
            (|a| a.maxsd(xmm1, xmm2), |a| a.vmaxsd(xmm0, xmm1, xmm2)),
            (|a| a.sqrtss(xmm1, xmm2), |a| a.vsqrtss(xmm0, xmm1, xmm2)),
            (|a| a.sqrtsd(xmm1, xmm2), |a| a.vsqrtsd(xmm0, xmm1, xmm2)),
            (|a| a.roundss(xmm1, xmm2, 2), |a| a.vroundss(xmm0, xmm1, xmm2, 2)),
            (|a| a.cmpss(xmm1, xmm2, 5), |a| a.vcmpss(xmm0, xmm1, xmm2, 5)),
            (|a| a.cvtss2sd(xmm1, xmm2), |a| a.vcvtss2sd(xmm0, xmm1, xmm2)),
            (|a| a.cvtsd2ss(xmm1, xmm2), |a| a.vcvtsd2ss(xmm0, xmm1, xmm2)),
            (|a| a.cvtpd2ps(xmm1, xmm2), |a| a.vcvtpd2ps(xmm0, xmm2)),
            (|a| a.cvtps2pd(xmm1, xmm2), |a| a.vcvtps2pd(xmm0, xmm2)),
            (|a| a.cvtdq2pd(xmm1, xmm2), |a| a.vcvtdq2pd(xmm0, xmm2)),
            (|a| a.cvttpd2dq(xmm1, xmm2), |a| a.vcvttpd2dq(xmm0, xmm2)),
        ];
        let mut c = avx_cpu();
        for (k, &(legacy, vex)) in cases.iter().enumerate() {
            for seed in 0..4 {
                let (a, b) = (noise((k * 8 + seed) as u64), noise((k * 8 + seed + 500) as u64));
                set_y(&mut c, 1, a);
                set_y(&mut c, 2, b);
                set_y(&mut c, 0, ramp(9));
                c.state.mxcsr = 0x1f80;
                exec(&mut c, vex).unwrap();
                let (r, flags) = (y(&c, 0), c.state.mxcsr);
                c.state.mxcsr = 0x1f80;
                exec(&mut c, legacy).unwrap();
                assert_eq!(r, [c.state.xmm[1], 0], "case {k}");
                assert_eq!(flags, c.state.mxcsr, "case {k}");
            }
        }
    }

    #[test]
    fn float_predicates_conversions_and_exceptions() {
        let mut c = avx_cpu();
        let nan = f32::NAN;
        set_y(&mut c, 1, [f32x4([1.0, 2.0, nan, 4.0]), f32x4([1.0, 1.0, 1.0, 1.0])]);
        set_y(&mut c, 2, [f32x4([1.0, 1.0, 1.0, 5.0]), f32x4([2.0, 0.5, nan, 1.0])]);
        let t = u32::MAX;
        for (p, lo, hi) in [
            (8u8, [t, 0, t, 0], [0, 0, t, t]), // EQ_UQ
            (9, [0, 0, t, t], [t, 0, t, 0]),   // NGE_US
            (10, [t, 0, t, t], [t, 0, t, t]),  // NGT_US
            (11, [0; 4], [0; 4]),              // FALSE_OQ
            (12, [0, t, 0, t], [t, t, 0, 0]),  // NEQ_OQ
            (13, [t, t, 0, 0], [0, t, 0, t]),  // GE_OS
            (14, [0, t, 0, 0], [0, t, 0, 0]),  // GT_OS
            (15, [t; 4], [t; 4]),              // TRUE_UQ
            (29, [t, t, 0, 0], [0, t, 0, t]),  // GE_OQ
        ] {
            c.state.mxcsr = 0x1f80;
            exec(&mut c, |a| a.vcmpps(ymm0, ymm1, ymm2, p as i32)).unwrap();
            assert_eq!(y(&c, 0), [u32x4(lo), u32x4(hi)], "predicate {p}");
            // QNaN operands: IE for the signalling predicates only.
            assert_eq!(c.state.mxcsr & 1, u32::from(matches!(p, 9 | 10 | 13 | 14)), "predicate {p}");
        }
        // Conversions that change width.
        set_y(&mut c, 3, [f64x2([1.5, -2.5]), f64x2([1e10, 7.0])]);
        c.state.mxcsr = 0x1f80;
        exec(&mut c, |a| a.vcvtpd2dq(xmm0, ymm3)).unwrap();
        assert_eq!(y(&c, 0), [u32x4([2, (-2i32) as u32, 0x8000_0000, 7]), 0]);
        exec(&mut c, |a| a.vcvtpd2ps(xmm0, ymm3)).unwrap();
        assert_eq!(y(&c, 0), [f32x4([1.5, -2.5, 1e10, 7.0]), 0]);
        exec(&mut c, |a| a.vcvtps2pd(ymm4, xmm0)).unwrap();
        assert_eq!(y(&c, 4), [f64x2([1.5, -2.5]), f64x2([1e10, 7.0])]);
        set_y(&mut c, 5, [u32x4([1, 2, 3, (-4i32) as u32]), 0]);
        exec(&mut c, |a| a.vcvtdq2pd(ymm4, xmm5)).unwrap();
        assert_eq!(y(&c, 4), [f64x2([1.0, 2.0]), f64x2([3.0, -4.0])]);
        c.state.gpr[0] = (-7i64) as u64;
        exec(&mut c, |a| a.vcvtsi2sd(xmm0, xmm4, rax)).unwrap();
        assert_eq!(y(&c, 0), [f64x2([-7.0, 2.0]), 0]);
        exec(&mut c, |a| a.vcvttsd2si(ebx, xmm3)).unwrap();
        assert_eq!(c.state.gpr[3], 1);
        // An unmasked exception: #XM, nothing written.
        c.state.cr4 |= cr::CR4_OSXMMEXCPT;
        c.state.mxcsr = 0x1f80 & !(1 << 9); // ZE unmasked
        set_y(&mut c, 0, [5, 5]);
        set_y(&mut c, 6, [f32x4([1.0; 4]), f32x4([1.0; 4])]);
        set_y(&mut c, 7, [f32x4([1.0; 4]), f32x4([1.0, 0.0, 1.0, 1.0])]);
        assert_eq!(exec(&mut c, |a| a.vdivps(ymm0, ymm6, ymm7)), Err(Exception::SimdFp));
        assert_eq!(y(&c, 0), [5, 5]);
        assert_eq!(c.state.mxcsr & 0x3f, 4);
        // VDPPS ymm: the products of both halves come before any sum. The
        // high half's product underflows with UE unmasked; the low half's
        // sum (+inf + -inf) would be invalid, but never runs: no IE.
        c.state.mxcsr = 0x1f80 & !(1 << 11); // UE unmasked
        set_y(&mut c, 0, [5, 5]);
        let inf = f32::INFINITY;
        set_y(&mut c, 6, [f32x4([inf, -inf, 0.0, 0.0]), f32x4([1e-30, 1.0, 0.0, 0.0])]);
        set_y(&mut c, 7, [f32x4([1.0, 1.0, 0.0, 0.0]), f32x4([1e-30, 1.0, 0.0, 0.0])]);
        assert_eq!(exec(&mut c, |a| a.vdpps(ymm0, ymm6, ymm7, 0x31)), Err(Exception::SimdFp));
        assert_eq!(y(&c, 0), [5, 5]);
        assert_eq!(c.state.mxcsr & 0x3f, 0x30, "UE and PE, no IE");
        // Masked, the sums run: IE from the low half, and each half's lane 0.
        c.state.mxcsr = 0x1f80;
        exec(&mut c, |a| a.vdpps(ymm0, ymm6, ymm7, 0x31)).unwrap();
        assert_eq!(c.state.mxcsr & 0x3f, 0x31);
        assert!(f32::from_bits(y(&c, 0)[0] as u32).is_nan());
        assert_eq!(y(&c, 0)[1], f32x4([1.0, 0.0, 0.0, 0.0]));
        // YMM6 and YMM7 as the VDIVPS case left them, for the compare below.
        set_y(&mut c, 6, [f32x4([1.0; 4]), f32x4([1.0; 4])]);
        set_y(&mut c, 7, [f32x4([1.0; 4]), f32x4([1.0, 0.0, 1.0, 1.0])]);
        // VCOMISS, VLDMXCSR/VSTMXCSR.
        c.state.mxcsr = 0x1f80;
        exec(&mut c, |a| a.vucomiss(xmm6, xmm7)).unwrap();
        c.state.materialize_flags();
        assert_eq!(c.state.rflags & crate::state::flags::ARITH, crate::state::flags::ZF);
        c.state.gpr[0] = DATA;
        write(&c, DATA, &0x3f80u32.to_le_bytes());
        exec(&mut c, |a| a.vldmxcsr(dword_ptr(rax))).unwrap();
        assert_eq!(c.state.mxcsr, 0x3f80);
        exec(&mut c, |a| a.vstmxcsr(dword_ptr(rax + 4))).unwrap();
        assert_eq!(read::<4>(&c, DATA + 4), 0x3f80u32.to_le_bytes());
    }

    #[test]
    fn fma_operand_orders_signs_and_single_rounding() {
        let mut c = avx_cpu();
        let f = |v: [f64; 4]| [f64x2([v[0], v[1]]), f64x2([v[2], v[3]])];
        set_y(&mut c, 0, f([2.0, 3.0, 4.0, 5.0]));
        set_y(&mut c, 1, f([10.0, 20.0, 30.0, 40.0]));
        set_y(&mut c, 2, f([0.5, 0.25, 2.0, -1.0]));
        let (s1, s2, s3) = (y(&c, 0), y(&c, 1), y(&c, 2));
        let cases: &[(Asm, [f64; 4])] = &[
            // 132: src1 * src3 + src2.
            (|a| a.vfmadd132pd(ymm0, ymm1, ymm2), [11.0, 20.75, 38.0, 35.0]),
            // 213: src2 * src1 + src3.
            (|a| a.vfmadd213pd(ymm0, ymm1, ymm2), [20.5, 60.25, 122.0, 199.0]),
            // 231: src2 * src3 + src1.
            (|a| a.vfmadd231pd(ymm0, ymm1, ymm2), [7.0, 8.0, 64.0, -35.0]),
            (|a| a.vfmsub231pd(ymm0, ymm1, ymm2), [3.0, 2.0, 56.0, -45.0]),
            (|a| a.vfnmadd231pd(ymm0, ymm1, ymm2), [-3.0, -2.0, -56.0, 45.0]),
            (|a| a.vfnmsub231pd(ymm0, ymm1, ymm2), [-7.0, -8.0, -64.0, 35.0]),
            // FMADDSUB: even elements subtract, odd ones add.
            (|a| a.vfmaddsub231pd(ymm0, ymm1, ymm2), [3.0, 8.0, 56.0, -35.0]),
            (|a| a.vfmsubadd231pd(ymm0, ymm1, ymm2), [7.0, 2.0, 64.0, -45.0]),
        ];
        for (asm, want) in cases {
            set_y(&mut c, 0, s1);
            set_y(&mut c, 1, s2);
            set_y(&mut c, 2, s3);
            exec(&mut c, *asm).unwrap();
            assert_eq!(y(&c, 0), f(*want), "{:?}", insn(*asm).code());
        }
        // Scalar: bits 127:64 from src1, 255:128 zeroed.
        set_y(&mut c, 0, s1);
        exec(&mut c, |a| a.vfmadd213sd(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [f64x2([20.5, 3.0]), 0]);
        // One rounding: (1 + 2^-52) * (1 - 2^-52) - 1 is -2^-104 exactly,
        // where a rounded product would give 0.
        let e = f64::EPSILON;
        set_y(&mut c, 0, [f64x2([1.0 + e, 0.0]), 0]);
        set_y(&mut c, 1, [f64x2([1.0 - e, 0.0]), 0]);
        set_y(&mut c, 2, [f64x2([1.0, 0.0]), 0]);
        c.state.mxcsr = 0x1f80;
        exec(&mut c, |a| a.vfmsub132sd(xmm0, xmm2, xmm1)).unwrap();
        assert_eq!(f64::from_bits(y(&c, 0)[0] as u64), -(e * e));
        assert_eq!(c.state.mxcsr & 0x3f, 0);
        // Single precision, and the invalid infinity * zero.
        set_y(&mut c, 0, [f32x4([f32::INFINITY, 1.0, 2.0, 3.0]), 0]);
        set_y(&mut c, 1, [f32x4([0.0, 1.0, 1.0, 1.0]), 0]);
        set_y(&mut c, 2, [f32x4([1.0, 1.0, 1.0, 1.0]), 0]);
        exec(&mut c, |a| a.vfmadd213ps(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0), [f32x4([f32::from_bits(0xffc0_0000), 2.0, 3.0, 4.0]), 0]);
        assert_eq!(c.state.mxcsr & 1, 1);
        // A NaN result is the first NaN of the factors (here src1, src3)
        // and the addend (src2), quieted.
        let (q1, q2) = (f32::from_bits(0x7fc0_0001), f32::from_bits(0x7f80_0002));
        set_y(&mut c, 0, [f32x4([1.0, 1.0, 1.0, 1.0]), 0]);
        set_y(&mut c, 1, [f32x4([q1, 1.0, 1.0, 1.0]), 0]);
        set_y(&mut c, 2, [f32x4([q2, 1.0, 1.0, 1.0]), 0]);
        exec(&mut c, |a| a.vfnmadd132ss(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0)[0] as u32, 0x7fc0_0002);
        set_y(&mut c, 0, [f32x4([1.0, 1.0, 1.0, 1.0]), 0]);
        exec(&mut c, |a| a.vfnmadd213ss(xmm0, xmm1, xmm2)).unwrap();
        assert_eq!(y(&c, 0)[0] as u32, 0x7fc0_0001);
    }

    #[test]
    fn half_precision_conversions() {
        let mut c = avx_cpu();
        let halves: [u16; 8] = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x7d00, 0x8000, 0x3555];
        let v = halves.iter().enumerate().fold(0u128, |r, (i, &h)| r | u128::from(h) << (16 * i));
        set_y(&mut c, 1, [v, 0]);
        exec(&mut c, |a| a.vcvtph2ps(ymm0, xmm1)).unwrap();
        let want = [1.0, -2.0, 65504.0, 2f32.powi(-24)];
        assert_eq!(y(&c, 0)[0], f32x4(want));
        assert_eq!(y(&c, 0)[1] as u32, f32::INFINITY.to_bits());
        // The SNaN comes back quiet, with IE.
        assert_eq!((y(&c, 0)[1] >> 32) as u32, 0x7fe0_0000);
        assert_eq!(c.state.mxcsr & 0x3f, 1);
        c.state.mxcsr = 0x1f80 | (1 << 6); // DAZ does not apply
        exec(&mut c, |a| a.vcvtph2ps(xmm0, xmm1)).unwrap();
        assert_eq!(y(&c, 0), [f32x4(want), 0]);
        // Back, round to nearest by imm8 (and the MXCSR mode with imm8[2]).
        c.state.mxcsr = 0x1f80;
        exec(&mut c, |a| a.vcvtph2ps(ymm0, xmm1)).unwrap();
        exec(&mut c, |a| a.vcvtps2ph(xmm2, ymm0, 0)).unwrap();
        assert_eq!(y(&c, 2), [v & !(0xffff << 80) | (0x7f00 << 80), 0]);
        set_y(&mut c, 3, [f32x4([1.0 + 2f32.powi(-12), 70000.0, 1e-8, -0.0]), 0]);
        exec(&mut c, |a| a.vcvtps2ph(xmm2, xmm3, 2)).unwrap(); // up
        assert_eq!(y(&c, 2)[0] as u64, 0x8000_0001_7c00_3c01);
        c.state.mxcsr = 0x1f80 | (1 << 13) | (1 << 15); // RC down, FTZ ignored
        exec(&mut c, |a| a.vcvtps2ph(xmm2, xmm3, 4)).unwrap();
        assert_eq!(y(&c, 2)[0] as u64, 0x8000_0000_7bff_3c00);
        c.state.gpr[0] = DATA;
        exec(&mut c, |a| a.vcvtps2ph(qword_ptr(rax), xmm3, 0)).unwrap();
        assert_eq!(read::<8>(&c, DATA), 0x8000_0000_7c00_3c00u64.to_le_bytes());
    }
}
