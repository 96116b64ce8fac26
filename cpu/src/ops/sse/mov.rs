//! Data movement (SDM Vol. 2: MOVAPS, MOVAPD, MOVDQA, MOVUPS, MOVUPD, MOVDQU,
//! LDDQU, MOVNTDQA, MOVNTPS, MOVNTPD, MOVNTDQ, MOVNTQ, MOVNTI, MOVSS, MOVSD,
//! MOVLPS, MOVLPD, MOVHPS, MOVHPD, MOVHLPS, MOVLHPS, MOVD, MOVQ, MOVQ2DQ,
//! MOVDQ2Q, MASKMOVQ, MASKMOVDQU, LFENCE, MFENCE, SFENCE).
//!
//! Loads into a register zero-extend to the register's width except the
//! merging forms (MOVSS/MOVSD between registers, MOVLPx/MOVHPx, MOVHLPS,
//! MOVLHPS). Non-temporal hints have no effect here.

use iced_x86::{Code, Instruction, OpKind};

use super::{check, done, get, lane, lin_addr, load, mem_seg, set, store, trunc, width, with_lane, Uses};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::ops::{reg_read, reg_write, Handler};

pub fn handler(code: Code) -> Option<Handler> {
    use Code as C;
    Some(match code {
        C::Movaps_xmm_xmmm128
        | C::Movaps_xmmm128_xmm
        | C::Movapd_xmm_xmmm128
        | C::Movapd_xmmm128_xmm
        | C::Movdqa_xmm_xmmm128
        | C::Movdqa_xmmm128_xmm
        | C::Movups_xmm_xmmm128
        | C::Movups_xmmm128_xmm
        | C::Movupd_xmm_xmmm128
        | C::Movupd_xmmm128_xmm
        | C::Movdqu_xmm_xmmm128
        | C::Movdqu_xmmm128_xmm
        | C::Lddqu_xmm_m128
        | C::Movntdqa_xmm_m128
        | C::Movntps_m128_xmm
        | C::Movntpd_m128_xmm
        | C::Movntdq_m128_xmm => mov::<16>,
        C::Movd_mm_rm32 | C::Movd_rm32_mm | C::Movd_xmm_rm32 | C::Movd_rm32_xmm => mov::<4>,
        C::Movq_mm_rm64
        | C::Movq_rm64_mm
        | C::Movq_xmm_rm64
        | C::Movq_rm64_xmm
        | C::Movq_mm_mmm64
        | C::Movq_mmm64_mm
        | C::Movq_xmm_xmmm64
        | C::Movq_xmmm64_xmm
        | C::Movq2dq_xmm_mm
        | C::Movdq2q_mm_xmm
        | C::Movntq_m64_mm => mov::<8>,
        C::Movss_xmm_xmmm32 | C::Movss_xmmm32_xmm => mov_scalar::<4>,
        C::Movsd_xmm_xmmm64 | C::Movsd_xmmm64_xmm => mov_scalar::<8>,
        C::Movlps_xmm_m64 | C::Movlpd_xmm_m64 | C::Movlps_m64_xmm | C::Movlpd_m64_xmm => mov_half::<0>,
        C::Movhps_xmm_m64 | C::Movhpd_xmm_m64 | C::Movhps_m64_xmm | C::Movhpd_m64_xmm => mov_half::<1>,
        C::Movhlps_xmm_xmm => movhlps,
        C::Movlhps_xmm_xmm => movlhps,
        C::Movnti_m32_r32 => movnti::<4>,
        C::Movnti_m64_r64 => movnti::<8>,
        C::Maskmovq_rDI_mm_mm | C::Maskmovdqu_rDI_xmm_xmm => maskmov,
        _ => match code.mnemonic() {
            iced_x86::Mnemonic::Lfence | iced_x86::Mnemonic::Mfence | iced_x86::Mnemonic::Sfence => fence,
            _ => return None,
        },
    })
}

/// Read operand `i` as `n` bytes: a vector or general register, or memory.
#[inline]
fn read(cpu: &mut Cpu, insn: &Instruction, i: u32, n: usize) -> Fault<u128> {
    if insn.op_kind(i) == OpKind::Register {
        let r = insn.op_register(i);
        let v = if r.is_gpr() { u128::from(reg_read(&cpu.state, r)) } else { get(cpu, r) };
        Ok(trunc(v, n))
    } else {
        load(cpu, insn, n)
    }
}

/// Write `n` bytes to operand 0; registers are zero-extended.
#[inline]
fn write(cpu: &mut Cpu, insn: &Instruction, n: usize, v: u128) -> Fault<()> {
    if insn.op0_kind() == OpKind::Register {
        let r = insn.op0_register();
        if r.is_gpr() {
            reg_write(&mut cpu.state, r, v as u64);
        } else {
            set(cpu, r, v);
        }
        Ok(())
    } else {
        store(cpu, insn, n, v)
    }
}

/// A zero-extending move of `N` bytes.
fn mov<const N: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    let v = read(cpu, insn, 1, N)?;
    write(cpu, insn, N, v)?;
    done(cpu, mm)
}

/// MOVSS/MOVSD: register to register merges the low element; a load zeroes
/// the rest; a store writes the low element.
fn mov_scalar<const W: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    match (insn.op0_kind(), insn.op1_kind()) {
        (OpKind::Register, OpKind::Register) => {
            let d = insn.op0_register();
            let v = with_lane(get(cpu, d), W, 0, lane(get(cpu, insn.op1_register()), W, 0));
            set(cpu, d, v);
            Ok(())
        }
        _ => {
            let v = read(cpu, insn, 1, W)?;
            write(cpu, insn, W, v)
        }
    }
}

/// MOVLPS/MOVLPD (`H` = 0) and MOVHPS/MOVHPD (`H` = 1): the low or high
/// quadword to or from memory.
fn mov_half<const H: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    if insn.op0_kind() == OpKind::Register {
        let v = load(cpu, insn, 8)? as u64;
        let d = insn.op0_register();
        let r = with_lane(get(cpu, d), 8, H, v);
        set(cpu, d, r);
        Ok(())
    } else {
        let v = lane(get(cpu, insn.op1_register()), 8, H);
        store(cpu, insn, 8, u128::from(v))
    }
}

fn movhlps(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    let d = insn.op0_register();
    let r = with_lane(get(cpu, d), 8, 0, lane(get(cpu, insn.op1_register()), 8, 1));
    set(cpu, d, r);
    Ok(())
}

fn movlhps(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    let d = insn.op0_register();
    let r = with_lane(get(cpu, d), 8, 1, lane(get(cpu, insn.op1_register()), 8, 0));
    set(cpu, d, r);
    Ok(())
}

/// MOVNTI: a general-register store, unaffected by CR0.EM/TS and CR4.OSFXSR.
fn movnti<const N: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if insn.has_lock_prefix() {
        return Err(Exception::InvalidOpcode);
    }
    let v = reg_read(&cpu.state, insn.op1_register());
    store(cpu, insn, N, u128::from(v))
}

/// MASKMOVQ/MASKMOVDQU: store the bytes of the first register whose mask
/// byte (second register) has its top bit set, at DS:rDI (segment
/// overridable). Contiguous selected bytes are written together.
fn maskmov(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let mm = check(cpu, insn, Uses::Operands)?;
    maskmov_store(cpu, insn, mm)
}

/// The stores of MASKMOVQ/MASKMOVDQU/VMASKMOVDQU, after the availability
/// checks (`mm`: the instruction has MMX operands).
pub(super) fn maskmov_store(cpu: &mut Cpu, insn: &Instruction, mm: bool) -> Fault<()> {
    let data = get(cpu, insn.op1_register());
    let sel = get(cpu, insn.op2_register());
    let n = width(insn.op1_register());
    let rdi = cpu.state.gpr[crate::state::reg::RDI];
    let addr = match insn.op0_kind() {
        OpKind::MemorySegRDI => rdi,
        OpKind::MemorySegEDI => rdi & 0xffff_ffff,
        _ => rdi & 0xffff,
    };
    let seg = mem_seg(insn);
    // MASKMOVQ makes the MMX transition before it writes: a fault finds it
    // made, as on the CPU.
    done(cpu, mm)?;
    // The operand is alignment-checked whatever the mask, as quadwords (a
    // MASKMOVDQU operand 8-byte aligned raises no #AC on the CPU).
    cpu.check_alignment(lin_addr(cpu, seg, addr), n.min(8) as u32)?;
    let bytes = data.to_le_bytes();
    let mut i = 0;
    while i < n {
        if lane(sel, 1, i) & 0x80 == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && lane(sel, 1, i) & 0x80 != 0 {
            i += 1;
        }
        cpu.write_mem_buf(seg, addr.wrapping_add(start as u64), &bytes[start..i])?;
    }
    Ok(())
}

/// LFENCE/MFENCE/SFENCE: host fences (see [`crate::ops::misc`]).
fn fence(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    crate::ops::misc::fence(cpu, insn)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::testing::*;
    use crate::exception::Exception;
    use crate::state::cr;

    #[test]
    fn full_moves() {
        let mut c = cpu();
        c.state.xmm[1] = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff;
        c.state.gpr[0] = DATA;
        exec(&mut c, |a| a.movaps(xmmword_ptr(rax), xmm1)).unwrap();
        assert_eq!(u128::from_le_bytes(read::<16>(&c, DATA)), c.state.xmm[1]);
        exec(&mut c, |a| a.movdqu(xmm2, xmmword_ptr(rax))).unwrap();
        assert_eq!(c.state.xmm[2], c.state.xmm[1]);
        exec(&mut c, |a| a.movntdq(xmmword_ptr(rax + 16), xmm1)).unwrap();
        exec(&mut c, |a| a.movntdqa(xmm3, xmmword_ptr(rax + 16))).unwrap();
        assert_eq!(c.state.xmm[3], c.state.xmm[1]);
        exec(&mut c, |a| a.movapd(xmm4, xmm3)).unwrap();
        assert_eq!(c.state.xmm[4], c.state.xmm[1]);
        // Unaligned store across a page edge into an unmapped page writes nothing.
        c.state.gpr[0] = UNMAPPED - 8;
        assert!(matches!(exec(&mut c, |a| a.movups(xmmword_ptr(rax), xmm1)), Err(Exception::PageFault { .. })));
        assert_eq!(read::<8>(&c, UNMAPPED - 8), [0; 8]);
    }

    #[test]
    fn scalar_and_half_moves() {
        let mut c = cpu();
        c.state.xmm[0] = u32x4([1, 2, 3, 4]);
        c.state.xmm[1] = u32x4([5, 6, 7, 8]);
        exec(&mut c, |a| a.movss(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([5, 2, 3, 4]));
        exec(&mut c, |a| a.movsd_2(xmm0, xmm1)).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([5, 6, 3, 4]));
        c.state.gpr[0] = DATA;
        write(&c, DATA, &[9, 0, 0, 0, 10, 0, 0, 0]);
        exec(&mut c, |a| a.movss(xmm0, dword_ptr(rax))).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([9, 0, 0, 0]));
        c.state.xmm[0] = u32x4([1, 2, 3, 4]);
        exec(&mut c, |a| a.movsd_2(xmm0, qword_ptr(rax))).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([9, 10, 0, 0]));
        exec(&mut c, |a| a.movss(dword_ptr(rax + 4), xmm1)).unwrap();
        assert_eq!(read::<8>(&c, DATA), [9, 0, 0, 0, 5, 0, 0, 0]);
        c.state.xmm[0] = u32x4([1, 2, 3, 4]);
        exec(&mut c, |a| a.movhps(xmm0, qword_ptr(rax))).unwrap();
        assert_eq!(c.state.xmm[0], u32x4([1, 2, 9, 5]));
        exec(&mut c, |a| a.movlpd(qword_ptr(rax + 8), xmm0)).unwrap();
        assert_eq!(read::<8>(&c, DATA + 8), [1, 0, 0, 0, 2, 0, 0, 0]);
        exec(&mut c, |a| a.movhlps(xmm1, xmm0)).unwrap();
        assert_eq!(c.state.xmm[1], u32x4([9, 5, 7, 8]));
        exec(&mut c, |a| a.movlhps(xmm1, xmm0)).unwrap();
        assert_eq!(c.state.xmm[1], u32x4([9, 5, 1, 2]));
    }

    #[test]
    fn movd_movq_forms() {
        let mut c = cpu();
        c.state.gpr[0] = 0x8877_6655_4433_2211;
        c.state.xmm[0] = u128::MAX;
        exec(&mut c, |a| a.movd(xmm0, eax)).unwrap();
        assert_eq!(c.state.xmm[0], 0x4433_2211);
        exec(&mut c, |a| a.movq(xmm0, rax)).unwrap();
        assert_eq!(c.state.xmm[0], 0x8877_6655_4433_2211);
        exec(&mut c, |a| a.movd(mm1, eax)).unwrap();
        assert_eq!(c.state.fpu.regs[1].mantissa, 0x4433_2211);
        exec(&mut c, |a| a.movq(mm1, rax)).unwrap();
        c.state.gpr[3] = u64::MAX;
        exec(&mut c, |a| a.movd(ebx, mm1)).unwrap();
        assert_eq!(c.state.gpr[3], 0x4433_2211);
        exec(&mut c, |a| a.movq(rbx, xmm0)).unwrap();
        assert_eq!(c.state.gpr[3], 0x8877_6655_4433_2211);
        c.state.xmm[2] = u128::MAX;
        exec(&mut c, |a| a.movq(xmm2, xmm0)).unwrap();
        assert_eq!(c.state.xmm[2], 0x8877_6655_4433_2211);
        // 66 0F D6 /r: MOVQ xmm2/m64, xmm1 (register form zeroes the upper half).
        let i = decode(&[0x66, 0x0f, 0xd6, 0xc3]); // movq xmm3, xmm0
        c.state.xmm[3] = u128::MAX;
        exec_insn(&mut c, &i).unwrap();
        assert_eq!(c.state.xmm[3], 0x8877_6655_4433_2211);
        c.state.gpr[0] = DATA;
        exec(&mut c, |a| a.movq(qword_ptr(rax), mm1)).unwrap();
        assert_eq!(read::<8>(&c, DATA), 0x8877_6655_4433_2211u64.to_le_bytes());
        exec(&mut c, |a| a.movd(dword_ptr(rax + 8), xmm3)).unwrap();
        assert_eq!(read::<4>(&c, DATA + 8), 0x4433_2211u32.to_le_bytes());
        c.state.xmm[4] = u128::MAX;
        exec(&mut c, |a| a.movq2dq(xmm4, mm1)).unwrap();
        assert_eq!(c.state.xmm[4], 0x8877_6655_4433_2211);
        c.state.xmm[4] = 0x1234 | (5 << 64);
        exec(&mut c, |a| a.movdq2q(mm2, xmm4)).unwrap();
        assert_eq!(c.state.fpu.regs[2].mantissa, 0x1234);
    }

    #[test]
    fn masked_and_nontemporal_stores() {
        let mut c = cpu();
        c.state.gpr[7] = DATA;
        write(&c, DATA, &[0xee; 16]);
        c.state.xmm[1] = u128::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        c.state.xmm[2] = u128::from_le_bytes([0x80, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        exec(&mut c, |a| a.maskmovdqu(xmm1, xmm2)).unwrap();
        assert_eq!(
            read::<16>(&c, DATA),
            [1, 0xee, 3, 4, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 16]
        );
        c.state.fpu.regs[0].mantissa = 0x1111_1111_1111_1111;
        c.state.fpu.regs[1].mantissa = 0x8000_0000_0000_0080;
        exec(&mut c, |a| a.maskmovq(mm0, mm1)).unwrap();
        assert_eq!(read::<8>(&c, DATA), [0x11, 0xee, 3, 4, 0xee, 0xee, 0xee, 0x11]);
        c.state.gpr[0] = DATA;
        c.state.gpr[3] = 0x0102_0304_0506_0708;
        exec(&mut c, |a| a.movnti(qword_ptr(rax), rbx)).unwrap();
        assert_eq!(read::<8>(&c, DATA), 0x0102_0304_0506_0708u64.to_le_bytes());
        // MOVNTI and the fences ignore CR0.EM/TS.
        c.state.cr0 |= cr::CR0_EM | cr::CR0_TS;
        assert_eq!(exec(&mut c, |a| a.movnti(dword_ptr(rax), ebx)), Ok(()));
        assert_eq!(exec(&mut c, |a| a.sfence()), Ok(()));
        assert_eq!(exec(&mut c, |a| a.mfence()), Ok(()));
        assert_eq!(exec(&mut c, |a| a.movntq(qword_ptr(rax), mm0)), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn maskmov_alignment_and_the_mmx_transition() {
        let mut c = cpu();
        check_alignment(&mut c);
        c.state.fpu.fsw = 5 << 11;
        c.state.fpu.ftw = 0xffff;
        c.state.gpr[7] = DATA + 1;
        c.state.fpu.regs[1].mantissa = 0x80;
        assert_eq!(exec(&mut c, |a| a.maskmovq(mm0, mm1)), Err(Exception::AlignmentCheck));
        // MASKMOVQ has made the MMX transition when it faults.
        assert_eq!((c.state.fpu.fsw, c.state.fpu.ftw), (0, 0));
        // MASKMOVDQU is checked as quadwords (the pages here are supervisor
        // pages: a #PF shows the alignment check passed).
        c.state.xmm[2] = 0x80;
        c.state.gpr[7] = DATA + 8;
        assert!(matches!(exec(&mut c, |a| a.maskmovdqu(xmm1, xmm2)), Err(Exception::PageFault { .. })));
        c.state.gpr[7] = DATA + 4;
        assert_eq!(exec(&mut c, |a| a.maskmovdqu(xmm1, xmm2)), Err(Exception::AlignmentCheck));
    }
}
