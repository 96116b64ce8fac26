//! MMX, SSE, SSE2, SSE3, SSSE3, SSE4.1 and SSE4.2 in their legacy (non-VEX)
//! encodings (SDM Vol. 1 chapters 9–12; Vol. 2 instruction pages; Vol. 3A
//! §13.1–13.2 and Vol. 3B §22.25.3 for the exception conditions).
//!
//! Families, one file each under `sse/`:
//! - `mov`: data movement, non-temporal and masked stores, fences;
//! - `float`: floating-point arithmetic, compares, MXCSR;
//! - `convert`: the CVT* conversions;
//! - `int`: integer SIMD arithmetic, compares, logic and shifts;
//! - `shuffle`: packs, unpacks, shuffles, blends, inserts and extracts;
//! - `string`: PCMPESTRx/PCMPISTRx and CRC32;
//! - [`softfloat`]: IEEE binary32/binary64 with MXCSR rounding and flags;
//! - `avx`: the VEX-encoded (AVX, AVX2) forms, on XMM and YMM registers;
//! - `crypto`: AES-NI and PCLMULQDQ, legacy and VEX.128 forms.
//!
//! Availability (Vol. 3A Table 13-1, Vol. 3B Tables 22-4..22-8), checked in
//! this order: a LOCK prefix or CR0.EM=1 is #UD; an instruction with an XMM
//! operand (or LDMXCSR/STMXCSR) is #UD when CR4.OSFXSR=0; CR0.TS=1 is #NM; an
//! instruction with an MMX register operand raises #MF while FSW.ES is set.
//! Instructions with an MMX register operand switch the x87 unit to MMX
//! state when they complete (TOP=0, all tags valid); writing MMi stores
//! R\[i\]'s mantissa and sets its exponent field to all ones.
//!
//! 16-byte memory operands must be 16-byte aligned (#GP(0)) except for
//! MOVUPS, MOVUPD, MOVDQU, LDDQU and the SSE4.2 string compares.

use iced_x86::{Code, EncodingKind, Instruction, Mnemonic, OpKind, Register};

use super::{ea, mem_seg, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault, GP0};
use crate::state::{cr, sreg};

/// One list of operations that have a legacy SSE form and a VEX form, each
/// `shape [args] Legacy Vex kernel;`, made into two handler tables:
/// `legacy(Mnemonic)` and `vex(Mnemonic)`. The legacy handler runs the
/// kernel on the MMX or XMM destination (`n` = 8 or 16 bytes); the VEX one
/// runs it on each 128-bit half of an XMM or YMM destination (`n` = 16),
/// VEX.vvvv being the first source. Shapes:
/// - `lanes [w]`: `|x, y|` on each `w`-byte lane of the two sources;
/// - `bin []`: `|a, b, n|` on the two sources;
/// - `un []`: `|b, n|` on the last source only;
/// - `imm [k]`: `|a, b, n, imm|`, where the upper half of a 256-bit
///   operation sees `imm >> k`;
/// - `unimm []`: `|b, n, imm|`;
/// - `sh []`: `|a, count, n|`, the count being imm8 or the low 64 bits of
///   the count operand.
macro_rules! sse_ops {
    ($($shape:ident [$($arg:expr),*] $l:ident $v:ident $f:expr;)*) => {
        fn legacy(m: iced_x86::Mnemonic) -> Option<$crate::ops::Handler> {
            Some(match m {
                $(iced_x86::Mnemonic::$l => sse_op!(legacy $shape [$($arg),*] $f),)*
                _ => return None,
            })
        }

        /// The VEX forms of this family's operations.
        pub(super) fn vex(m: iced_x86::Mnemonic) -> Option<$crate::ops::Handler> {
            Some(match m {
                $(iced_x86::Mnemonic::$v => sse_op!(vex $shape [$($arg),*] $f),)*
                _ => return None,
            })
        }
    };
}

/// One handler of [`sse_ops`].
macro_rules! sse_op {
    (legacy lanes [$w:expr] $f:expr) => {
        sse_op!(legacy bin [] |a, b, n| $crate::ops::sse::map2(a, b, $w, n, $f))
    };
    (legacy bin [] $f:expr) => {
        sse_op!(@h |cpu, insn| super::int::binary(cpu, insn, $f))
    };
    (legacy un [] $f:expr) => {
        sse_op!(@h |cpu, insn| {
            let f = $crate::ops::sse::kernel::un($f);
            super::int::binary(cpu, insn, |_, b, n| f(b, n))
        })
    };
    (legacy imm [$k:expr] $f:expr) => {
        sse_op!(@h |cpu, insn| super::int::binary_imm(cpu, insn, $f))
    };
    (legacy unimm [] $f:expr) => {
        sse_op!(@h |cpu, insn| {
            let f = $crate::ops::sse::kernel::unimm($f);
            super::int::binary_imm(cpu, insn, |_, b, n, imm| f(b, n, imm))
        })
    };
    (legacy sh [] $f:expr) => {
        sse_op!(@h |cpu, insn| super::int::shift(cpu, insn, $f))
    };
    (vex lanes [$w:expr] $f:expr) => {
        sse_op!(vex bin [] |a, b, n| $crate::ops::sse::map2(a, b, $w, n, $f))
    };
    (vex bin [] $f:expr) => {
        sse_op!(@h |cpu, insn| {
            let f = $crate::ops::sse::kernel::bin($f);
            super::avx::ternary(cpu, insn, |a, b| f(a, b, 16))
        })
    };
    (vex un [] $f:expr) => {
        sse_op!(@h |cpu, insn| {
            let f = $crate::ops::sse::kernel::un($f);
            super::avx::unary(cpu, insn, |b| f(b, 16))
        })
    };
    (vex imm [$k:expr] $f:expr) => {
        sse_op!(@h |cpu, insn| {
            let f = $crate::ops::sse::kernel::imm($f);
            super::avx::ternary_imm(cpu, insn, $k, |a, b, imm| f(a, b, 16, imm))
        })
    };
    (vex unimm [] $f:expr) => {
        sse_op!(@h |cpu, insn| {
            let f = $crate::ops::sse::kernel::unimm($f);
            super::avx::unary_imm(cpu, insn, |b, imm| f(b, 16, imm))
        })
    };
    (vex sh [] $f:expr) => {
        sse_op!(@h |cpu, insn| {
            let f = $crate::ops::sse::kernel::sh($f);
            super::avx::shift(cpu, insn, |a, c| f(a, c, 16))
        })
    };
    (@h |$cpu:ident, $insn:ident| $body:expr) => {{
        fn h($cpu: &mut $crate::cpu::Cpu, $insn: &iced_x86::Instruction) -> $crate::exception::Fault<()> {
            $body
        }
        h as $crate::ops::Handler
    }};
}

/// Identity functions that give the kernels of [`sse_ops`] their types.
mod kernel {
    #[inline(always)]
    pub fn bin(f: impl Fn(u128, u128, usize) -> u128) -> impl Fn(u128, u128, usize) -> u128 {
        f
    }

    #[inline(always)]
    pub fn un(f: impl Fn(u128, usize) -> u128) -> impl Fn(u128, usize) -> u128 {
        f
    }

    #[inline(always)]
    pub fn imm(f: impl Fn(u128, u128, usize, u8) -> u128) -> impl Fn(u128, u128, usize, u8) -> u128 {
        f
    }

    #[inline(always)]
    pub fn unimm(f: impl Fn(u128, usize, u8) -> u128) -> impl Fn(u128, usize, u8) -> u128 {
        f
    }

    #[inline(always)]
    pub fn sh(f: impl Fn(u128, u64, usize) -> u128) -> impl Fn(u128, u64, usize) -> u128 {
        f
    }
}

mod avx;
mod convert;
mod crypto;
mod float;
mod int;
mod mov;
mod shuffle;
pub mod softfloat;
mod string;
pub use string::{pcmpistri, pcmpistri_outputs};

pub use float::MXCSR_MASK;
pub use string::{crc32c, CRC32C};

pub fn handler(code: Code) -> Option<Handler> {
    if let Some(h) = crypto::handler(code) {
        return Some(h);
    }
    match code.encoding() {
        EncodingKind::Legacy => {}
        EncodingKind::VEX => return avx::handler(code),
        _ => return None,
    }
    mov::handler(code)
        .or_else(|| float::handler(code))
        .or_else(|| convert::handler(code))
        .or_else(|| int::handler(code))
        .or_else(|| shuffle::handler(code))
        .or_else(|| string::handler(code))
}

// ---- availability -------------------------------------------------------------

/// FSW.ES: an unmasked x87 exception is pending.
const FSW_ES: u16 = 1 << 7;
const FSW_TOP: u16 = 7 << 11;

/// Which register file an instruction touches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Uses {
    /// Derive from the register operands.
    Operands,
    /// An SSE instruction whatever its operands (LDMXCSR, STMXCSR).
    Sse,
}

/// The #UD/#NM/#MF checks. Returns whether the instruction has an MMX
/// register operand (and so must end with [`mmx_enter`]).
#[inline]
pub(super) fn check(cpu: &Cpu, insn: &Instruction, uses: Uses) -> Fault<bool> {
    let mut mm = false;
    let mut xmm = uses == Uses::Sse;
    for i in 0..insn.op_count() {
        if insn.op_kind(i) == OpKind::Register {
            let r = insn.op_register(i);
            mm |= r.is_mm();
            xmm |= r.is_xmm();
        }
    }
    let s = &cpu.state;
    if insn.has_lock_prefix() || s.cr0 & cr::CR0_EM != 0 {
        return Err(Exception::InvalidOpcode);
    }
    if xmm && s.cr4 & cr::CR4_OSFXSR == 0 {
        return Err(Exception::InvalidOpcode);
    }
    if s.cr0 & cr::CR0_TS != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    if mm && s.fpu.fsw & FSW_ES != 0 {
        return Err(Exception::FpuError);
    }
    Ok(mm)
}

/// The x87-to-MMX transition: TOP = 0 and every register tagged valid.
#[inline]
pub(super) fn mmx_enter(cpu: &mut Cpu) {
    cpu.state.fpu.fsw &= !FSW_TOP;
    cpu.state.fpu.ftw = 0;
}

/// Finish an instruction: the MMX transition if it used MMX registers.
#[inline]
pub(super) fn done(cpu: &mut Cpu, mm: bool) -> Fault<()> {
    if mm {
        mmx_enter(cpu);
    }
    Ok(())
}

/// The exception an unmasked SIMD floating-point condition raises.
#[inline]
pub(super) fn simd_fault(cpu: &Cpu) -> Exception {
    if cpu.state.cr4 & cr::CR4_OSXMMEXCPT != 0 {
        Exception::SimdFp
    } else {
        Exception::InvalidOpcode
    }
}

/// Fold the flags an instruction raised into MXCSR (Vol. 1 §11.5.1): with an
/// unmasked pre-computation exception only IE/DE/ZE are recorded. Any unmasked
/// flag faults, and the caller then writes no destination.
#[inline]
pub(super) fn commit(cpu: &mut Cpu, flags: u32) -> Fault<()> {
    let unmasked = flags & !(cpu.state.mxcsr >> 7) & 0x3f;
    let set = if unmasked & softfloat::PRE != 0 { flags & softfloat::PRE } else { flags };
    cpu.state.mxcsr |= set;
    if unmasked != 0 {
        Err(simd_fault(cpu))
    } else {
        Ok(())
    }
}

/// [`commit`] of an operation's flags, with those of its finished steps
/// ([`softfloat::Env::done`]) set whatever a later step raised.
#[inline]
pub(super) fn commit_env(cpu: &mut Cpu, env: &softfloat::Env) -> Fault<()> {
    cpu.state.mxcsr |= env.done;
    commit(cpu, env.flags)
}

// ---- registers ----------------------------------------------------------------

const XMM0: usize = Register::XMM0 as usize;
const MM0: usize = Register::MM0 as usize;

/// Read an MMX or XMM register (MMX zero-extended).
#[inline]
pub(super) fn get(cpu: &Cpu, r: Register) -> u128 {
    if r.is_xmm() {
        cpu.state.xmm[r as usize - XMM0]
    } else {
        u128::from(cpu.state.fpu.regs[r as usize - MM0].mantissa)
    }
}

/// Write an MMX or XMM register (MMX keeps the low 64 bits).
#[inline]
pub(super) fn set(cpu: &mut Cpu, r: Register, v: u128) {
    if r.is_xmm() {
        cpu.state.xmm[r as usize - XMM0] = v;
    } else {
        let reg = &mut cpu.state.fpu.regs[r as usize - MM0];
        reg.mantissa = v as u64;
        reg.sign_exp = 0xffff;
    }
}

/// Width in bytes of a vector register: 8 (MMX) or 16 (XMM).
#[inline]
pub(super) fn width(r: Register) -> usize {
    if r.is_xmm() {
        16
    } else {
        8
    }
}

#[inline]
pub(super) fn xmm(cpu: &Cpu, i: usize) -> u128 {
    cpu.state.xmm[i]
}

// ---- memory -------------------------------------------------------------------

/// Instructions whose 16-byte memory operand may be unaligned.
fn unaligned_ok(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Movups
            | Mnemonic::Movupd
            | Mnemonic::Movdqu
            | Mnemonic::Lddqu
            | Mnemonic::Pcmpestri
            | Mnemonic::Pcmpestri64
            | Mnemonic::Pcmpestrm
            | Mnemonic::Pcmpestrm64
            | Mnemonic::Pcmpistri
            | Mnemonic::Pcmpistrm
    )
}

/// #GP(0) unless the memory operand's linear address is 16-byte aligned.
#[inline]
fn check_align(cpu: &Cpu, insn: &Instruction, seg: usize, off: u64) -> Fault<()> {
    if unaligned_ok(insn.mnemonic()) {
        return Ok(());
    }
    if lin_addr(cpu, seg, off) & 15 != 0 {
        return Err(GP0);
    }
    Ok(())
}

/// The linear address of `seg:off`, without the segment checks.
#[inline]
pub(super) fn lin_addr(cpu: &Cpu, seg: usize, off: u64) -> u64 {
    let base = if cpu.state.code64() && seg < sreg::FS { 0 } else { cpu.state.seg[seg].base };
    base.wrapping_add(off)
}

/// Read `n` bytes (1, 2, 4, 8 or 16) of the memory operand, zero-extended.
pub(super) fn load(cpu: &mut Cpu, insn: &Instruction, n: usize) -> Fault<u128> {
    let seg = mem_seg(insn);
    let off = ea(&cpu.state, insn);
    if n == 16 {
        // A 16-byte operand that may be misaligned is alignment-checked
        // (#AC) on its full size; one that must be aligned raises #GP first.
        check_align(cpu, insn, seg, off)?;
        let mut b = [0u8; 16];
        cpu.read_mem_buf_aligned(seg, off, &mut b, 16)?;
        return Ok(u128::from_le_bytes(b));
    }
    Ok(u128::from(cpu.read_mem(seg, off, n as u32)?))
}

/// Write the low `n` bytes (1, 2, 4, 8 or 16) of `v` to the memory operand.
pub(super) fn store(cpu: &mut Cpu, insn: &Instruction, n: usize, v: u128) -> Fault<()> {
    let seg = mem_seg(insn);
    let off = ea(&cpu.state, insn);
    if n == 16 {
        check_align(cpu, insn, seg, off)?;
        return cpu.write_mem_buf_aligned(seg, off, &v.to_le_bytes(), 16);
    }
    cpu.write_mem(seg, off, n as u32, v as u64)
}

/// Operand `i` as a vector: an MMX/XMM register, or the memory operand at the
/// instruction's memory size.
#[inline]
pub(super) fn src(cpu: &mut Cpu, insn: &Instruction, i: u32) -> Fault<u128> {
    if insn.op_kind(i) == OpKind::Register {
        Ok(get(cpu, insn.op_register(i)))
    } else {
        let n = insn.memory_size().size();
        load(cpu, insn, n)
    }
}

// ---- lanes --------------------------------------------------------------------

/// Mask of a `w`-byte lane.
#[inline(always)]
pub(super) fn lane_mask(w: usize) -> u64 {
    if w >= 8 {
        u64::MAX
    } else {
        (1u64 << (w * 8)) - 1
    }
}

/// Lane `i` of width `w` bytes.
#[inline(always)]
pub(super) fn lane(v: u128, w: usize, i: usize) -> u64 {
    (v >> (i * w * 8)) as u64 & lane_mask(w)
}

/// `v` with lane `i` of width `w` replaced by `x`.
#[inline(always)]
pub(super) fn with_lane(v: u128, w: usize, i: usize, x: u64) -> u128 {
    let sh = i * w * 8;
    let m = u128::from(lane_mask(w)) << sh;
    (v & !m) | ((u128::from(x & lane_mask(w)) << sh) & m)
}

/// Sign-extend a `w`-byte lane value.
#[inline(always)]
pub(super) fn sx(v: u64, w: usize) -> i64 {
    let sh = 64 - w * 8;
    ((v << sh) as i64) >> sh
}

/// Apply `f` lane by lane over the low `n` bytes of `a` and `b`.
#[inline(always)]
pub(super) fn map2(a: u128, b: u128, w: usize, n: usize, f: impl Fn(u64, u64) -> u64) -> u128 {
    let mut r = 0u128;
    for i in 0..n / w {
        r |= u128::from(f(lane(a, w, i), lane(b, w, i)) & lane_mask(w)) << (i * w * 8);
    }
    r
}

/// Apply `f` lane by lane over the low `n` bytes of `a`.
#[inline(always)]
pub(super) fn map1(a: u128, w: usize, n: usize, f: impl Fn(u64) -> u64) -> u128 {
    map2(a, 0, w, n, |x, _| f(x))
}

/// Keep the low `n` bytes.
#[inline(always)]
pub(super) fn trunc(v: u128, n: usize) -> u128 {
    if n >= 16 {
        v
    } else {
        v & ((1u128 << (n * 8)) - 1)
    }
}

#[cfg(test)]
pub(super) mod testing {
    //! A 64-bit CPU with identity-mapped low memory for the family tests.

    use std::sync::Arc;

    use iced_x86::code_asm::CodeAssembler;
    use iced_x86::{Decoder, DecoderOptions, IcedError, Instruction};
    use mmu::GuestMemory;

    use crate::cpu::Cpu;
    use crate::exception::Fault;
    use crate::state::{cr, seg_attr, sreg, CpuState};

    /// Linear page that is not present (for #PF tests).
    pub const UNMAPPED: u64 = 0x1f_f000;
    /// Scratch data area, 16-byte aligned.
    pub const DATA: u64 = 0x10_0000;

    /// Long mode, CPL0, paging on (the first 2 MiB identity-mapped with 4 KiB
    /// pages except [`UNMAPPED`]), CR4.OSFXSR and OSXMMEXCPT set.
    pub fn cpu() -> Cpu {
        let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
        mem.write_u64(0x1000, 0x2000 | 3).unwrap();
        mem.write_u64(0x2000, 0x3000 | 3).unwrap();
        mem.write_u64(0x3000, 0x4000 | 3).unwrap();
        for i in 0..512u64 {
            let pte = if i * 4096 == UNMAPPED { 0 } else { (i * 4096) | 3 };
            mem.write_u64(0x4000 + i * 8, pte).unwrap();
        }
        let mut cpu = Cpu::new(mem, Box::new(crate::platform::NoDevices));
        let mut s = CpuState::reset();
        s.cr0 = cr::CR0_PE | cr::CR0_MP | cr::CR0_ET | cr::CR0_NE | cr::CR0_PG;
        s.cr3 = 0x1000;
        s.cr4 = cr::CR4_PAE | cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT;
        s.efer = cr::EFER_LME | cr::EFER_LMA;
        s.seg[sreg::CS].attr = seg_attr::P | seg_attr::S | seg_attr::TYPE_CODE | seg_attr::TYPE_RW | seg_attr::L;
        for i in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
            s.seg[i].base = 0;
            s.seg[i].limit = u32::MAX;
            s.seg[i].attr = seg_attr::P | seg_attr::S | seg_attr::TYPE_RW | seg_attr::DB | seg_attr::G;
        }
        s.rip = 0x8000;
        cpu.set_state(s);
        cpu
    }

    /// Turn alignment checking on: CR0.AM, RFLAGS.AC and CPL 3.
    pub fn check_alignment(cpu: &mut Cpu) {
        cpu.state.cr0 |= cr::CR0_AM;
        cpu.state.rflags |= crate::state::flags::AC;
        cpu.state.cpl = 3;
    }

    /// Assemble one instruction in 64-bit mode and decode it back.
    pub fn insn(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Instruction {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        let bytes = a.assemble(0x8000).unwrap();
        decode(&bytes)
    }

    pub fn decode(bytes: &[u8]) -> Instruction {
        let mut d = Decoder::with_ip(64, bytes, 0x8000, DecoderOptions::NONE);
        d.decode()
    }

    /// Execute one decoded instruction through the dispatch table.
    pub fn exec_insn(cpu: &mut Cpu, i: &Instruction) -> Fault<()> {
        assert!(crate::ops::implemented(i.code()), "{:?} has no handler", i.code());
        cpu.state.rip = i.next_ip();
        crate::ops::handler(i.code())(cpu, i)
    }

    /// Assemble and execute one instruction.
    pub fn exec(cpu: &mut Cpu, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Fault<()> {
        let i = insn(f);
        exec_insn(cpu, &i)
    }

    pub fn write(cpu: &Cpu, addr: u64, data: &[u8]) {
        cpu.mem().write(addr, data).unwrap();
    }

    pub fn read<const N: usize>(cpu: &Cpu, addr: u64) -> [u8; N] {
        cpu.mem().read_bytes::<N>(addr).unwrap()
    }

    pub fn f32x4(v: [f32; 4]) -> u128 {
        v.iter().enumerate().fold(0, |acc, (i, x)| acc | (u128::from(x.to_bits()) << (32 * i)))
    }

    pub fn f64x2(v: [f64; 2]) -> u128 {
        u128::from(v[0].to_bits()) | (u128::from(v[1].to_bits()) << 64)
    }

    pub fn u32x4(v: [u32; 4]) -> u128 {
        v.iter().enumerate().fold(0, |acc, (i, x)| acc | (u128::from(*x) << (32 * i)))
    }

    pub fn u16x8(v: [u16; 8]) -> u128 {
        v.iter().enumerate().fold(0, |acc, (i, x)| acc | (u128::from(*x) << (16 * i)))
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::testing::*;
    use crate::exception::{Exception, Fault};
    use crate::state::cr;

    /// Every legacy-encoded MMX/SSE..SSE4.2 instruction has a handler here,
    /// except the ones other families own (FISTTP and EMMS with the x87,
    /// PREFETCHh with the moves).
    #[test]
    fn every_legacy_simd_code_has_a_handler() {
        use iced_x86::{Code, CpuidFeature as F, EncodingKind, Mnemonic as M};
        let mut missing = Vec::new();
        let mut count = 0;
        for c in Code::values() {
            if c.encoding() != EncodingKind::Legacy {
                continue;
            }
            let simd = c
                .cpuid_features()
                .iter()
                .any(|f| matches!(f, F::MMX | F::SSE | F::SSE2 | F::SSE3 | F::SSSE3 | F::SSE4_1 | F::SSE4_2));
            if !simd
                || matches!(
                    c.mnemonic(),
                    M::Fisttp | M::Emms | M::Prefetchnta | M::Prefetcht0 | M::Prefetcht1 | M::Prefetcht2
                )
            {
                continue;
            }
            count += 1;
            if super::handler(c).is_none() {
                missing.push(c);
            }
        }
        assert!(missing.is_empty(), "no handler: {missing:?}");
        assert!(count > 400, "{count}");
    }

    #[test]
    fn availability_checks() {
        let mut c = cpu();
        c.state.cr0 |= cr::CR0_EM;
        assert_eq!(exec(&mut c, |a| a.addps(xmm0, xmm1)), Err(Exception::InvalidOpcode));
        assert_eq!(exec(&mut c, |a| a.paddb(mm0, mm1)), Err(Exception::InvalidOpcode));
        c.state.cr0 &= !cr::CR0_EM;
        c.state.cr4 &= !cr::CR4_OSFXSR;
        assert_eq!(exec(&mut c, |a| a.paddb(xmm0, xmm1)), Err(Exception::InvalidOpcode));
        assert_eq!(exec(&mut c, |a| a.stmxcsr(dword_ptr(0x100000))), Err(Exception::InvalidOpcode));
        // MMX forms (including the SSE and SSSE3 ones on MMX registers) do not need OSFXSR.
        assert_eq!(exec(&mut c, |a| a.paddb(mm0, mm1)), Ok(()));
        assert_eq!(exec(&mut c, |a| a.pshufw(mm0, mm1, 0x1b)), Ok(()));
        assert_eq!(exec(&mut c, |a| a.pshufb(mm0, mm1)), Ok(()));
        c.state.cr4 |= cr::CR4_OSFXSR;
        c.state.cr0 |= cr::CR0_TS;
        assert_eq!(exec(&mut c, |a| a.movaps(xmm0, xmm1)), Err(Exception::DeviceNotAvailable));
        assert_eq!(exec(&mut c, |a| a.movq(mm0, mm1)), Err(Exception::DeviceNotAvailable));
        assert_eq!(exec(&mut c, |a| a.pcmpistri(xmm0, xmm1, 0)), Err(Exception::DeviceNotAvailable));
        assert_eq!(exec(&mut c, |a| a.ldmxcsr(dword_ptr(0x100000))), Err(Exception::DeviceNotAvailable));
        // CRC32 is a general-register instruction: no CR0/CR4 checks.
        assert_eq!(exec(&mut c, |a| a.crc32(eax, ecx)), Ok(()));
        c.state.cr0 |= cr::CR0_EM;
        assert_eq!(exec(&mut c, |a| a.crc32(eax, ecx)), Ok(()));
        c.state.cr0 &= !(cr::CR0_TS | cr::CR0_EM);
        // A pending x87 exception: #MF for MMX-register instructions only.
        c.state.fpu.fsw |= 0x80;
        assert_eq!(exec(&mut c, |a| a.por(mm0, mm1)), Err(Exception::FpuError));
        assert_eq!(exec(&mut c, |a| a.cvtpi2ps(xmm0, mm1)), Err(Exception::FpuError));
        assert_eq!(exec(&mut c, |a| a.cvtpi2ps(xmm0, qword_ptr(0x100000))), Ok(()));
        assert_eq!(exec(&mut c, |a| a.por(xmm0, xmm1)), Ok(()));
        c.state.fpu.fsw &= !0x80;
        // LOCK is #UD.
        let i = decode(&[0xf0, 0x0f, 0x58, 0x00]);
        assert_eq!(exec_insn(&mut c, &i), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn mmx_transition_and_aliasing() {
        let mut c = cpu();
        c.state.fpu.fsw = 5 << 11;
        c.state.fpu.ftw = 0xffff;
        c.state.fpu.regs[3].mantissa = 0x0102_0304_0506_0708;
        exec(&mut c, |a| a.movq(mm5, mm3)).unwrap();
        assert_eq!(c.state.fpu.regs[5].mantissa, 0x0102_0304_0506_0708);
        assert_eq!(c.state.fpu.regs[5].sign_exp, 0xffff);
        assert_eq!(c.state.fpu.fsw & (7 << 11), 0);
        assert_eq!(c.state.fpu.ftw, 0);
        // A faulting MMX instruction leaves the x87 state alone.
        c.state.fpu.ftw = 0xffff;
        assert!(exec(&mut c, |a| a.movq(mm1, qword_ptr(UNMAPPED))).is_err());
        assert_eq!(c.state.fpu.ftw, 0xffff);
    }

    #[test]
    fn alignment_rules() {
        let mut c = cpu();
        c.state.gpr[0] = DATA + 8;
        assert_eq!(exec(&mut c, |a| a.movaps(xmm0, xmmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.movdqa(xmmword_ptr(rax), xmm0)), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.paddb(xmm0, xmmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.addps(xmm0, xmmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.movups(xmm0, xmmword_ptr(rax))), Ok(()));
        assert_eq!(exec(&mut c, |a| a.movdqu(xmmword_ptr(rax), xmm0)), Ok(()));
        assert_eq!(exec(&mut c, |a| a.lddqu(xmm0, xmmword_ptr(rax))), Ok(()));
        assert_eq!(exec(&mut c, |a| a.pcmpistri(xmm0, xmmword_ptr(rax), 0)), Ok(()));
        // Scalar and 64-bit operands have no alignment rule.
        assert_eq!(exec(&mut c, |a| a.addss(xmm0, dword_ptr(rax + 1))), Ok(()));
        assert_eq!(exec(&mut c, |a| a.movq(xmm0, qword_ptr(rax + 1))), Ok(()));
        assert_eq!(exec(&mut c, |a| a.movntps(xmmword_ptr(rax), xmm0)), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.movntdqa(xmm0, xmmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.palignr(xmm0, xmmword_ptr(rax), 3)), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.cvtpd2pi(mm0, xmmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec(&mut c, |a| a.psllw(xmm0, xmmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        // 8-byte MMX operands and the m64/m32 forms of SSE instructions are exempt.
        assert_eq!(exec(&mut c, |a| a.paddb(mm0, qword_ptr(rax + 1))), Ok(()));
        assert_eq!(exec(&mut c, |a| a.pmovzxbw(xmm0, qword_ptr(rax + 1))), Ok(()));
        assert_eq!(exec(&mut c, |a| a.cvtps2pd(xmm0, qword_ptr(rax + 1))), Ok(()));
        c.state.gpr[0] = DATA;
        assert_eq!(exec(&mut c, |a| a.movaps(xmm0, xmmword_ptr(rax))), Ok(()));
        // A page fault on an unmapped operand.
        c.state.gpr[0] = UNMAPPED;
        assert!(matches!(exec(&mut c, |a| a.movaps(xmm0, xmmword_ptr(rax))), Err(Exception::PageFault { .. })));
    }

    #[test]
    fn alignment_check_of_vector_operands() {
        let mut c = cpu();
        check_alignment(&mut c);
        // 16-byte operands that may be misaligned are checked on 16 bytes,
        // before paging; those that must be aligned raise #GP(0) first.
        c.state.gpr[0] = DATA + 8;
        assert_eq!(exec(&mut c, |a| a.movups(xmm0, xmmword_ptr(rax))), Err(Exception::AlignmentCheck));
        assert_eq!(exec(&mut c, |a| a.movdqu(xmmword_ptr(rax), xmm0)), Err(Exception::AlignmentCheck));
        assert_eq!(exec(&mut c, |a| a.movaps(xmm0, xmmword_ptr(rax))), Err(Exception::GeneralProtection(0)));
        c.state.gpr[0] = UNMAPPED + 8;
        assert_eq!(exec(&mut c, |a| a.movupd(xmmword_ptr(rax), xmm0)), Err(Exception::AlignmentCheck));
        // Smaller operands on their size. (The pages here are supervisor
        // pages: a #PF shows the alignment check passed.)
        let past = |r: Fault<()>| matches!(r, Err(Exception::PageFault { .. }));
        c.state.gpr[0] = DATA + 4;
        assert_eq!(exec(&mut c, |a| a.movq(xmm0, qword_ptr(rax))), Err(Exception::AlignmentCheck));
        assert!(past(exec(&mut c, |a| a.movss(xmm0, dword_ptr(rax)))));
        c.state.gpr[0] = DATA;
        assert!(past(exec(&mut c, |a| a.movups(xmm0, xmmword_ptr(rax)))));
    }
}
