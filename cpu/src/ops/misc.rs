//! Miscellaneous general-purpose instructions (SDM Vol. 2): the BCD
//! adjustments (DAA, DAS, AAA, AAS, AAM, AAD), SALC, XLAT, BOUND, MOVBE,
//! RDRAND and RDSEED, INT1, the fences, cache-line flushes, and the hint-space
//! NOPs and prefetches.
//!
//! The BCD instructions, SALC and BOUND do not exist in 64-bit mode (the
//! decoder gives #UD there). Flags the SDM leaves undefined are computed from
//! the result (SF, ZF, PF) or cleared (OF, AF, CF where undefined).

use iced_x86::{Code, Instruction, Mnemonic};
use mmu::Access;

use super::{ea, mask, mem_seg, read_op, reg_read, reg_write, sext, size0, write_op, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::flags::szp;
use crate::state::flags::*;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Daa => |c, _| decimal_adjust(c, false),
        Mnemonic::Das => |c, _| decimal_adjust(c, true),
        Mnemonic::Aaa => |c, _| ascii_adjust(c, false),
        Mnemonic::Aas => |c, _| ascii_adjust(c, true),
        Mnemonic::Aam => aam,
        Mnemonic::Aad => aad,
        Mnemonic::Salc => salc,
        Mnemonic::Xlatb => xlat,
        Mnemonic::Bound => bound,
        Mnemonic::Movbe => movbe,
        Mnemonic::Rdrand => |c, i| random(c, i, false),
        Mnemonic::Rdseed => |c, i| random(c, i, true),
        Mnemonic::Int1 => |_, _| Err(Exception::DebugTrap),
        Mnemonic::Mfence => mfence,
        Mnemonic::Lfence => lfence,
        Mnemonic::Sfence => sfence,
        Mnemonic::Clflush | Mnemonic::Clflushopt | Mnemonic::Clwb => clflush,
        // Hint space: prefetches and reserved NOPs never fault and never access memory.
        Mnemonic::Prefetch
        | Mnemonic::Prefetchw
        | Mnemonic::Prefetchwt1
        | Mnemonic::Prefetchit0
        | Mnemonic::Prefetchit1
        | Mnemonic::Cldemote
        | Mnemonic::Reservednop => nop,
        _ => return None,
    })
}

fn nop(_: &mut Cpu, _: &Instruction) -> Fault<()> {
    Ok(())
}

/// MFENCE: every access before it is visible to every processor before
/// any access after it: a full host fence (`mfence` on x86_64 hosts; see
/// [`mmu::atomic`] for how guest accesses are ordered).
fn mfence(_: &mut Cpu, _: &Instruction) -> Fault<()> {
    mmu::atomic::full_fence();
    Ok(())
}

/// LFENCE: loads before it complete before any access after it: an
/// acquire fence (free on x86_64 hosts, whose loads are ordered so).
fn lfence(_: &mut Cpu, _: &Instruction) -> Fault<()> {
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    Ok(())
}

/// SFENCE: stores before it are visible before any store after it (what
/// it adds on x86 concerns non-temporal stores, ordinary stores here): a
/// release fence (free on x86_64 hosts).
fn sfence(_: &mut Cpu, _: &Instruction) -> Fault<()> {
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    Ok(())
}

/// MFENCE, LFENCE or SFENCE, by mnemonic.
pub(crate) fn fence(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    match insn.mnemonic() {
        Mnemonic::Mfence => mfence(cpu, insn),
        Mnemonic::Lfence => lfence(cpu, insn),
        _ => sfence(cpu, insn),
    }
}

/// DAA and DAS.
fn decimal_adjust(cpu: &mut Cpu, sub: bool) -> Fault<()> {
    let f = cpu.state.flags();
    let old_al = cpu.state.gpr[0] & 0xff;
    let old_cf = f & CF != 0;
    let mut al = old_al;
    let mut cf = false;
    let mut af = false;
    if al & 0xf > 9 || f & AF != 0 {
        if sub {
            cf = old_cf || al < 6;
            al = al.wrapping_sub(6) & 0xff;
        } else {
            cf = old_cf || al + 6 > 0xff;
            al = (al + 6) & 0xff;
        }
        af = true;
    }
    if old_al > 0x99 || old_cf {
        al = if sub { al.wrapping_sub(0x60) & 0xff } else { (al + 0x60) & 0xff };
        cf = true;
    } else if !sub {
        cf = false;
    }
    reg_write(&mut cpu.state, iced_x86::Register::AL, al);
    let mut nf = szp(al, 1);
    if cf {
        nf |= CF;
    }
    if af {
        nf |= AF;
    }
    cpu.state.set_arith_flags(ARITH, nf);
    Ok(())
}

/// AAA and AAS.
fn ascii_adjust(cpu: &mut Cpu, sub: bool) -> Fault<()> {
    let f = cpu.state.flags();
    let ax = cpu.state.gpr[0] & 0xffff;
    let adjust = ax & 0xf > 9 || f & AF != 0;
    let ax = if !adjust {
        ax
    } else if sub {
        let al = ax.wrapping_sub(6) & 0xff;
        let ah = ((ax >> 8).wrapping_sub(1)) & 0xff;
        (ah << 8) | al
    } else {
        ax.wrapping_add(0x106) & 0xffff
    };
    let ax = ax & 0xff0f;
    reg_write(&mut cpu.state, iced_x86::Register::AX, ax);
    let nf = szp(ax & 0xff, 1) | if adjust { AF | CF } else { 0 };
    cpu.state.set_arith_flags(ARITH, nf);
    Ok(())
}

fn aam(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let base = u64::from(insn.immediate8());
    if base == 0 {
        return Err(Exception::DivideError);
    }
    let al = cpu.state.gpr[0] & 0xff;
    let ax = ((al / base) << 8) | (al % base);
    reg_write(&mut cpu.state, iced_x86::Register::AX, ax);
    cpu.state.set_arith_flags(ARITH, szp(ax & 0xff, 1));
    Ok(())
}

fn aad(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let base = u64::from(insn.immediate8());
    let ax = cpu.state.gpr[0];
    let al = ((ax & 0xff) + ((ax >> 8) & 0xff) * base) & 0xff;
    reg_write(&mut cpu.state, iced_x86::Register::AX, al);
    cpu.state.set_arith_flags(ARITH, szp(al, 1));
    Ok(())
}

fn salc(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    let v = if cpu.state.cf() { 0xff } else { 0 };
    reg_write(&mut cpu.state, iced_x86::Register::AL, v);
    Ok(())
}

fn xlat(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let base = insn.memory_base();
    let m = mask(base.size() as u32);
    let a = reg_read(&cpu.state, base).wrapping_add(cpu.state.gpr[0] & 0xff) & m;
    let v = cpu.read_mem(mem_seg(insn), a, 1)?;
    reg_write(&mut cpu.state, iced_x86::Register::AL, v);
    Ok(())
}

fn bound(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = op_size_reg(insn);
    let seg = mem_seg(insn);
    let a = ea(&cpu.state, insn);
    let lower = sext(cpu.read_mem(seg, a, size)?, size) as i64;
    let upper = sext(cpu.read_mem(seg, a.wrapping_add(u64::from(size)) & addr_mask(insn), size)?, size) as i64;
    let idx = sext(reg_read(&cpu.state, insn.op0_register()), size) as i64;
    if idx < lower || idx > upper {
        return Err(Exception::BoundRange);
    }
    Ok(())
}

fn op_size_reg(insn: &Instruction) -> u32 {
    insn.op0_register().size() as u32
}

fn addr_mask(insn: &Instruction) -> u64 {
    match insn.memory_base().size().max(insn.memory_index().size()) {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn movbe(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    let v = read_op(cpu, insn, 1, size)?;
    let swapped = match size {
        2 => u64::from((v as u16).swap_bytes()),
        4 => u64::from((v as u32).swap_bytes()),
        _ => v.swap_bytes(),
    };
    write_op(cpu, insn, 0, size, swapped)
}

/// RDRAND and RDSEED: CF = 1 with a random value, or CF = 0 and zero when no
/// entropy is available; OF, SF, ZF, AF and PF are cleared.
fn random(cpu: &mut Cpu, insn: &Instruction, seed: bool) -> Fault<()> {
    let size = size0(insn);
    let v = if seed { cpu.rdseed_u64() } else { Some(cpu.rdrand_u64()) };
    reg_write(&mut cpu.state, insn.op0_register(), v.unwrap_or(0) & mask(size));
    cpu.state.set_arith_flags(ARITH, if v.is_some() { CF } else { 0 });
    Ok(())
}

/// CLFLUSH, CLFLUSHOPT, CLWB: the line is checked like a one-byte read
/// (segment checks, then paging), but no data is read. Guest memory is always
/// coherent here, so nothing else happens.
fn clflush(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let a = ea(&cpu.state, insn);
    let lin = cpu.linear(mem_seg(insn), a, 1, false)?;
    let ctx = cpu.paging;
    let p = cpu.privilege();
    cpu.mmu
        .translate(&ctx, p, lin, Access::Read)
        .map_err(|f| Exception::PageFault { addr: f.addr, error_code: f.error_code })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::cpu::StopReason;
    use crate::exception::Exception;
    use crate::state::flags::*;
    use crate::state::sreg;
    use iced_x86::code_asm::*;

    fn run32(
        c: &mut crate::cpu::Cpu,
        f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
    ) -> crate::exception::Fault<()> {
        exec_asm(c, f)
    }

    #[test]
    fn daa_das_follow_the_sdm_examples() {
        let mut c = prot_mode();
        // 0x79 + 0x35 = 0xAE; DAA gives 0x14 with CF (79 + 35 = 114).
        c.state.gpr[0] = 0x79;
        exec_asm(&mut c, |a| a.add(al, 0x35)).unwrap();
        run32(&mut c, |a| a.daa()).unwrap();
        assert_eq!(c.state.gpr[0] & 0xff, 0x14);
        assert_eq!(c.state.flags() & (CF | AF), CF | AF);
        // 0x35 - 0x47 = 0xEE; DAS gives 0x88 with CF (35 - 47 = -12 -> 88 borrow).
        c.state.gpr[0] = 0x35;
        exec_asm(&mut c, |a| a.sub(al, 0x47)).unwrap();
        run32(&mut c, |a| a.das()).unwrap();
        assert_eq!(c.state.gpr[0] & 0xff, 0x88);
        assert_eq!(c.state.flags() & (CF | AF | SF), CF | AF | SF);
        // 0x12 + 0x34 = 0x46: no adjustment, flags cleared.
        c.state.gpr[0] = 0x12;
        exec_asm(&mut c, |a| a.add(al, 0x34)).unwrap();
        run32(&mut c, |a| a.daa()).unwrap();
        assert_eq!(c.state.gpr[0] & 0xff, 0x46);
        assert_eq!(c.state.flags() & (CF | AF), 0);
    }

    #[test]
    fn aaa_aas_aam_aad_salc() {
        let mut c = prot_mode();
        // '8' + '5' = 0x6D; AAA: AX = 0x0103.
        c.state.gpr[0] = 0x38;
        exec_asm(&mut c, |a| a.add(al, 0x35)).unwrap();
        run32(&mut c, |a| a.aaa()).unwrap();
        assert_eq!(c.state.gpr[0] & 0xffff, 0x0103);
        assert_eq!(c.state.flags() & (CF | AF), CF | AF);
        // 0x0102 - 5: AL = 0xFD with AF; AAS gives AX = 0x0007.
        c.state.gpr[0] = 0x0102;
        exec_asm(&mut c, |a| a.sub(al, 5)).unwrap();
        run32(&mut c, |a| a.aas()).unwrap();
        assert_eq!(c.state.gpr[0] & 0xffff, 0x0007);
        assert_eq!(c.state.flags() & CF, CF);
        c.state.gpr[0] = 63;
        run32(&mut c, |a| a.aam(10)).unwrap();
        assert_eq!(c.state.gpr[0] & 0xffff, 0x0603);
        run32(&mut c, |a| a.aad(10)).unwrap();
        assert_eq!(c.state.gpr[0] & 0xffff, 63);
        assert_eq!(run32(&mut c, |a| a.aam(0)), Err(Exception::DivideError));
        assert_eq!(c.state.rip, CODE);
        // AAD with another base (D5 ib).
        c.state.gpr[0] = 0x0207;
        exec_bytes(&mut c, &[0xd5, 0x10]).unwrap();
        assert_eq!(c.state.gpr[0] & 0xffff, 0x27);
        c.state.set_arith_flags(CF, CF);
        exec_bytes(&mut c, &[0xd6]).unwrap();
        assert_eq!(c.state.gpr[0] & 0xff, 0xff);
        c.state.set_arith_flags(CF, 0);
        exec_bytes(&mut c, &[0xd6]).unwrap();
        assert_eq!(c.state.gpr[0] & 0xff, 0);
    }

    #[test]
    fn bcd_and_salc_are_undefined_in_64_bit_mode() {
        let mut c = long_mode();
        for b in [0x27u8, 0x2f, 0x37, 0x3f, 0xd6] {
            place(&mut c, &[b, 0x90, 0x90]);
            assert_eq!(exec_bytes(&mut c, &[b, 0x90, 0x90]), Err(Exception::InvalidOpcode), "{b:#x}");
        }
        assert_eq!(exec_bytes(&mut c, &[0xd4, 0x0a, 0x90]), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn xlat_uses_the_address_size() {
        let mut c = long_mode();
        c.mem().write_u8(DATA + 0x80, 0x5a).unwrap();
        c.state.gpr[3] = DATA;
        c.state.gpr[0] = 0x1234_5680;
        exec_bytes(&mut c, &[0xd7]).unwrap();
        assert_eq!(c.state.gpr[0], 0x1234_565a);
        // 32-bit address size: EBX + AL wraps at 4 GiB.
        c.mem().write_u8(0x10, 0xa5).unwrap();
        c.state.gpr[3] = 0x1_ffff_fff0;
        c.state.gpr[0] = 0x20;
        exec_bytes(&mut c, &[0x67, 0xd7]).unwrap();
        assert_eq!(c.state.gpr[0] & 0xff, 0xa5);
        // 16-bit in real mode with a segment override.
        let mut c = real_mode();
        c.state.seg[sreg::ES] = crate::state::Segment::real(0x2000, c.state.seg[sreg::ES].attr);
        c.mem().write_u8(0x20000 + 0x0005, 0x77).unwrap();
        c.state.gpr[3] = 0xfff0;
        c.state.gpr[0] = 0x15;
        exec_bytes(&mut c, &[0x26, 0xd7]).unwrap();
        assert_eq!(c.state.gpr[0] & 0xff, 0x77);
    }

    #[test]
    fn bound_raises_br_outside_the_range() {
        let mut c = prot_mode();
        c.mem().write_u32(DATA, (-5i32) as u32).unwrap();
        c.mem().write_u32(DATA + 4, 10).unwrap();
        c.state.gpr[3] = DATA;
        for (v, ok) in [(-5i64, true), (10, true), (0, true), (-6, false), (11, false)] {
            c.state.gpr[0] = v as u64 & 0xffff_ffff;
            let r = exec_bytes(&mut c, &[0x62, 0x03]); // bound eax, [ebx]
            assert_eq!(r.is_ok(), ok, "{v}");
            if !ok {
                assert_eq!(r, Err(Exception::BoundRange));
                assert_eq!(c.state.rip, CODE);
            }
        }
        // 16-bit form: bound ax, [ebx] with 0x66.
        c.mem().write_u32(DATA, 0x0010_0002).unwrap();
        c.state.gpr[0] = 0x11;
        assert_eq!(exec_bytes(&mut c, &[0x66, 0x62, 0x03]), Err(Exception::BoundRange));
        c.state.gpr[0] = 0x10;
        assert!(exec_bytes(&mut c, &[0x66, 0x62, 0x03]).is_ok());
        // Delivered through the IDT as vector 5, a fault.
        c.state.gpr[0] = 0x20;
        assert_eq!(step_bytes(&mut c, &[0x66, 0x62, 0x03]), StopReason::Budget);
        assert_eq!(c.state.rip, stub(5));
        assert_eq!(c.read_mem(sreg::SS, c.state.gpr[4], 4).unwrap(), CODE);
    }

    #[test]
    fn movbe_swaps_bytes() {
        let mut c = long_mode();
        c.mem().write_u64(DATA, 0x0102_0304_0506_0708).unwrap();
        c.state.gpr[3] = DATA;
        exec_asm(&mut c, |a| a.movbe(rax, qword_ptr(rbx))).unwrap();
        assert_eq!(c.state.gpr[0], 0x0807_0605_0403_0201);
        c.state.gpr[0] = 0xffff_ffff_ffff_1122;
        exec_asm(&mut c, |a| a.movbe(word_ptr(rbx), ax)).unwrap();
        assert_eq!(c.mem().read_u16(DATA).unwrap(), 0x2211);
        exec_asm(&mut c, |a| a.movbe(ecx, dword_ptr(rbx))).unwrap();
        assert_eq!(c.state.gpr[1], 0x1122_0605);
        // Register-register MOVBE does not exist.
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x38, 0xf0, 0xc1]), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn movbe_forms_and_faults() {
        let mut c = long_mode();
        c.mem().write_u64(DATA, 0x1122_3344_5566_7788).unwrap();
        c.state.gpr[3] = DATA;
        // Stores of each size, with the bytes reversed; the register stays.
        c.state.gpr[0] = 0x0102_0304_0506_0708;
        exec_asm(&mut c, |a| a.movbe(qword_ptr(rbx), rax)).unwrap();
        assert_eq!(c.mem().read_u64(DATA).unwrap(), 0x0807_0605_0403_0201);
        exec_asm(&mut c, |a| a.movbe(dword_ptr(rbx + 8), eax)).unwrap();
        assert_eq!(c.mem().read_u32(DATA + 8).unwrap(), 0x0807_0605);
        assert_eq!(c.state.gpr[0], 0x0102_0304_0506_0708);
        // A 16-bit load keeps the upper 48 bits; a 32-bit load zeroes the upper half.
        c.state.gpr[2] = u64::MAX;
        exec_asm(&mut c, |a| a.movbe(dx, word_ptr(rbx))).unwrap();
        assert_eq!(c.state.gpr[2], 0xffff_ffff_ffff_0102);
        exec_asm(&mut c, |a| a.movbe(edx, dword_ptr(rbx))).unwrap();
        assert_eq!(c.state.gpr[2], 0x0102_0304);
        exec_asm(&mut c, |a| a.movbe(r9, qword_ptr(rbx))).unwrap();
        assert_eq!(c.state.gpr[9], 0x0102_0304_0506_0708);
        // LOCK is #UD (MOVBE is not a read-modify-write).
        assert_eq!(exec_bytes(&mut c, &[0xf0, 0x0f, 0x38, 0xf0, 0x03]), Err(Exception::InvalidOpcode));
        assert_eq!(exec_bytes(&mut c, &[0xf0, 0x0f, 0x38, 0xf1, 0x03]), Err(Exception::InvalidOpcode));
        // Faults leave memory and registers alone.
        c.state.gpr[3] = READONLY;
        let ro = c.mem().read_u64(READONLY).unwrap();
        let r = exec_asm(&mut c, |a| a.movbe(qword_ptr(rbx), rax));
        assert!(matches!(r, Err(Exception::PageFault { addr: READONLY, .. })), "{r:?}");
        assert_eq!(c.mem().read_u64(READONLY).unwrap(), ro);
        c.state.gpr[3] = UNMAPPED - 2;
        c.state.gpr[2] = 0x55;
        let r = exec_asm(&mut c, |a| a.movbe(edx, dword_ptr(rbx)));
        assert!(matches!(r, Err(Exception::PageFault { addr: UNMAPPED, .. })), "{r:?}");
        assert_eq!(c.state.gpr[2], 0x55);
        // 32-bit protected mode.
        let mut c = prot_mode();
        c.mem().write_u32(DATA, 0xa1b2_c3d4).unwrap();
        c.state.gpr[3] = DATA;
        exec_asm(&mut c, |a| a.movbe(ecx, dword_ptr(ebx))).unwrap();
        assert_eq!(c.state.gpr[1], 0xd4c3_b2a1);
        exec_asm(&mut c, |a| a.movbe(word_ptr(ebx + 4), cx)).unwrap();
        assert_eq!(c.mem().read_u16(DATA + 4).unwrap(), 0xa1b2);
    }

    #[test]
    fn rdrand_rdseed_set_cf_and_vary() {
        let mut c = long_mode();
        c.state.set_arith_flags(ARITH, ZF | OF);
        exec_asm(&mut c, |a| a.rdrand(rax)).unwrap();
        assert_eq!(c.state.flags() & ARITH, CF);
        let first = c.state.gpr[0];
        exec_asm(&mut c, |a| a.rdrand(rax)).unwrap();
        assert_ne!(first, c.state.gpr[0]);
        c.state.gpr[1] = u64::MAX;
        exec_asm(&mut c, |a| a.rdseed(cx)).unwrap();
        assert_eq!(c.state.gpr[1] >> 16, 0xffff_ffff_ffff);
        assert_eq!(c.state.flags() & CF, CF);
        exec_asm(&mut c, |a| a.rdrand(ecx)).unwrap();
        assert_eq!(c.state.gpr[1] >> 32, 0);
        // A fixed seed makes both reproducible.
        c.seed_random(7);
        exec_asm(&mut c, |a| a.rdseed(rax)).unwrap();
        let x = c.state.gpr[0];
        c.seed_random(7);
        exec_asm(&mut c, |a| a.rdrand(rax)).unwrap();
        assert_eq!(x, c.state.gpr[0]);
    }

    #[test]
    fn clflush_faults_like_a_read_and_fences_do_nothing() {
        let mut c = long_mode();
        c.state.gpr[3] = DATA;
        for f in [
            (|a: &mut CodeAssembler| a.clflush(byte_ptr(rbx)))
                as fn(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
            |a| a.clflushopt(byte_ptr(rbx)),
            |a| a.clwb(byte_ptr(rbx)),
            |a| a.lfence(),
            |a| a.mfence(),
            |a| a.sfence(),
            |a| a.prefetchw(byte_ptr(rbx)),
        ] {
            exec_asm(&mut c, f).unwrap();
        }
        c.state.gpr[3] = UNMAPPED + 3;
        assert_eq!(
            exec_asm(&mut c, |a| a.clflush(byte_ptr(rbx))),
            Err(Exception::PageFault { addr: UNMAPPED + 3, error_code: 0 })
        );
        // Prefetches never fault.
        exec_asm(&mut c, |a| a.prefetcht0(byte_ptr(rbx))).unwrap();
        exec_asm(&mut c, |a| a.prefetchw(byte_ptr(rbx))).unwrap();
        // Non-canonical: #GP(0).
        c.state.gpr[3] = 0x8000_0000_0000_0000;
        assert_eq!(exec_asm(&mut c, |a| a.clflush(byte_ptr(rbx))), Err(Exception::GeneralProtection(0)));
        // A supervisor page from CPL 3: #PF with U set.
        to_user(&mut c, SEL_UCODE64);
        c.state.gpr[3] = SUPERVISOR;
        assert_eq!(
            exec_asm(&mut c, |a| a.clflush(byte_ptr(rbx))),
            Err(Exception::PageFault { addr: SUPERVISOR, error_code: 5 })
        );
    }

    #[test]
    fn ud0_ud1_ud2() {
        let mut c = long_mode();
        for code in [&[0x0f, 0x0b][..], &[0x0f, 0xb9, 0xc0], &[0x0f, 0xff, 0xc0]] {
            assert_eq!(exec_bytes(&mut c, code), Err(Exception::InvalidOpcode), "{code:02x?}");
        }
        step_bytes(&mut c, &[0x0f, 0x0b]);
        assert_eq!(c.state.rip, stub(6));
        assert_eq!(c.read_mem(sreg::SS, c.state.gpr[4], 8).unwrap(), CODE);
    }

    #[test]
    fn int1_is_a_debug_trap_without_the_dpl_check() {
        let mut c = prot_mode();
        // Gate 1 with DPL 0: INT 1 from CPL 3 faults, ICEBP does not.
        c.mem().write_u64(IDT + 8, gate(SEL_CODE32, stub(1) as u32, 0xe, 0, 0)).unwrap();
        to_user(&mut c, SEL_UCODE32);
        let old_dr6 = c.state.dr[6];
        assert_eq!(step_bytes(&mut c, &[0xf1]), StopReason::Budget);
        assert_eq!(c.state.rip, stub(1));
        // The pushed return address is the next instruction (a trap).
        assert_eq!(c.read_mem(sreg::SS, c.state.gpr[4], 4).unwrap(), CODE + 1);
        assert_eq!(c.state.dr[6], old_dr6);
        let mut c = prot_mode();
        c.mem().write_u64(IDT + 8, gate(SEL_CODE32, stub(1) as u32, 0xe, 0, 0)).unwrap();
        to_user(&mut c, SEL_UCODE32);
        step_bytes(&mut c, &[0xcd, 0x01]);
        assert_eq!(c.state.rip, stub(13));
        assert_eq!(error_code(&mut c, 4), 8 + 2); // IDT vector 1, IDT bit
    }

    /// Every legacy- or VEX-encoded code whose CPUID features are all
    /// general-purpose, BMI or system features has a handler. Excluded: codes
    /// of processors other than x86-64 ones (`*_ONLY`, IA64 JMPE, UMOV, MOV to
    /// test registers, Cyrix/VIA extensions), assembler pseudo-codes, and WAIT
    /// (part of the x87 family).
    #[test]
    fn general_purpose_and_system_codes_are_all_implemented() {
        use iced_x86::{Code, CpuidFeature as F, EncodingKind, Mnemonic};
        let mine = [
            F::INTEL8086,
            F::INTEL186,
            F::INTEL286,
            F::INTEL386,
            F::INTEL486,
            F::X64,
            F::CMOV,
            F::CPUID,
            F::CX8,
            F::CMPXCHG16B,
            F::MOVBE,
            F::POPCNT,
            F::LZCNT,
            F::BMI1,
            F::BMI2,
            F::ADX,
            F::RDRAND,
            F::RDSEED,
            F::RDTSCP,
            F::RDPID,
            F::RDPMC,
            F::CLFSH,
            F::CLFLUSHOPT,
            F::CLWB,
            F::FSGSBASE,
            F::INVPCID,
            F::SMAP,
            F::MULTIBYTENOP,
            F::PREFETCHW,
            F::PAUSE,
            F::TSC,
            F::MSR,
            F::SYSCALL,
            F::SEP,
            F::WBNOINVD,
        ];
        // General-purpose instructions listed under SSE/SSE2 feature bits.
        let gp_in_sse = [
            Mnemonic::Lfence,
            Mnemonic::Mfence,
            Mnemonic::Sfence,
            Mnemonic::Movnti,
            Mnemonic::Prefetchnta,
            Mnemonic::Prefetcht0,
            Mnemonic::Prefetcht1,
            Mnemonic::Prefetcht2,
        ];
        let mut missing = Vec::new();
        let mut checked = 0;
        for code in Code::values() {
            if !matches!(code.encoding(), EncodingKind::Legacy | EncodingKind::VEX) {
                continue;
            }
            let feats = code.cpuid_features();
            let ours =
                (!feats.is_empty() && feats.iter().all(|f| mine.contains(f))) || gp_in_sse.contains(&code.mnemonic());
            let excluded = matches!(
                code.mnemonic(),
                Mnemonic::Wait | Mnemonic::Db | Mnemonic::Dw | Mnemonic::Dd | Mnemonic::Dq | Mnemonic::Zero_bytes
            );
            if ours && !excluded {
                checked += 1;
                if !crate::ops::implemented(code) {
                    missing.push(format!("{code:?}"));
                }
            }
        }
        assert!(checked > 1000, "only {checked} codes checked");
        assert!(missing.is_empty(), "unimplemented general-purpose/system codes: {}", missing.join(" "));
    }
}
