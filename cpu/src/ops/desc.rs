//! Descriptor inspection (SDM Vol. 2: LAR, LSL, VERR, VERW, ARPL).
//!
//! LAR, LSL, VERR and VERW report through ZF instead of faulting: a null
//! selector, a selector beyond the descriptor table, a descriptor of the wrong
//! type or one the current privilege may not see clears ZF and leaves the
//! destination alone. Only the operand fetch and the descriptor read itself
//! (a page fault on the table) fault. All of them, and ARPL, are #UD in real
//! and virtual-8086 mode.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::{read_op, reg_read, reg_write, size0, write_op, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::segment::Descriptor;
use crate::state::flags::ZF;
use crate::state::seg_attr;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Lar => |c, i| lar_lsl(c, i, true),
        Mnemonic::Lsl => |c, i| lar_lsl(c, i, false),
        Mnemonic::Verr => |c, i| verify(c, i, false),
        Mnemonic::Verw => |c, i| verify(c, i, true),
        Mnemonic::Arpl => arpl,
        _ => return None,
    })
}

fn protected_only(cpu: &Cpu) -> Fault<()> {
    if !cpu.state.protected() || cpu.state.v86() {
        return Err(Exception::InvalidOpcode);
    }
    Ok(())
}

/// The descriptor for `sel`, or `None` if the selector is null or outside its table.
fn probe(cpu: &mut Cpu, sel: u16) -> Fault<Option<Descriptor>> {
    if sel & !3 == 0 {
        return Ok(None);
    }
    match cpu.read_descriptor(sel) {
        Ok(d) => Ok(Some(d)),
        Err(Exception::GeneralProtection(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// DPL ≥ CPL and DPL ≥ RPL, except for conforming code segments.
fn visible(cpu: &Cpu, d: &Descriptor, sel: u16) -> bool {
    let conforming_code = d.is_code() && d.typ() & seg_attr::TYPE_DC != 0;
    conforming_code || (d.dpl() >= cpu.state.cpl && d.dpl() >= (sel & 3) as u8)
}

fn set_zf(cpu: &mut Cpu, ok: bool) {
    cpu.state.set_arith_flags(ZF, if ok { ZF } else { 0 });
}

fn lar_lsl(cpu: &mut Cpu, insn: &Instruction, lar: bool) -> Fault<()> {
    protected_only(cpu)?;
    let sel = read_op(cpu, insn, 1, 2)? as u16;
    let Some(d) = probe(cpu, sel)? else {
        set_zf(cpu, false);
        return Ok(());
    };
    let long = cpu.state.long_mode();
    let type_ok = d.is_code_data()
        || match (lar, long) {
            (true, false) => matches!(d.typ(), 1 | 2 | 3 | 4 | 5 | 9 | 11 | 12),
            (true, true) => matches!(d.typ(), 2 | 9 | 11 | 12),
            (false, false) => matches!(d.typ(), 1 | 2 | 3 | 9 | 11),
            (false, true) => matches!(d.typ(), 2 | 9 | 11),
        };
    if !type_ok || !visible(cpu, &d, sel) {
        set_zf(cpu, false);
        return Ok(());
    }
    let size = size0(insn);
    let v = if lar {
        let ar = (d.raw >> 32) & 0x00f0_ff00;
        if size == 2 {
            ar & 0xff00
        } else {
            ar
        }
    } else {
        u64::from(d.limit()) & super::mask(size)
    };
    reg_write(&mut cpu.state, insn.op0_register(), v);
    set_zf(cpu, true);
    Ok(())
}

fn verify(cpu: &mut Cpu, insn: &Instruction, write: bool) -> Fault<()> {
    protected_only(cpu)?;
    let sel = read_op(cpu, insn, 0, 2)? as u16;
    let ok = match probe(cpu, sel)? {
        None => false,
        Some(d) => {
            let rw = d.typ() & seg_attr::TYPE_RW != 0;
            let type_ok =
                if write { d.is_code_data() && !d.is_code() && rw } else { d.is_code_data() && (!d.is_code() || rw) };
            type_ok && visible(cpu, &d, sel)
        }
    };
    set_zf(cpu, ok);
    Ok(())
}

fn arpl(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    protected_only(cpu)?;
    let dest = read_op(cpu, insn, 0, 2)?;
    let src = reg_read(&cpu.state, insn.op1_register());
    if dest & 3 < src & 3 {
        let v = (dest & !3) | (src & 3);
        if insn.op0_kind() == OpKind::Register {
            let r = insn.op0_register();
            let full = reg_read(&cpu.state, r);
            reg_write(&mut cpu.state, r, (full & !0xffff) | v);
        } else {
            write_op(cpu, insn, 0, 2, v)?;
        }
        set_zf(cpu, true);
    } else {
        set_zf(cpu, false);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::exception::Exception;
    use crate::state::flags::ZF;
    use iced_x86::code_asm::*;

    #[test]
    fn lar_lsl_report_through_zf() {
        let mut c = prot_mode();
        // Entry 10: data, DPL 2, base 0, limit 0xfffff with G (4 GiB - 1).
        set_gdt(&c, 10, seg_desc(0, 0xfffff, 0xd3, 0xc));
        // Entry 11: call gate (system type 12), DPL 3.
        set_gdt(&c, 11, gate(SEL_CODE32, 0x1234, 12, 3, 0));
        // Entry 12: an LDT descriptor (type 2) with a byte limit.
        set_gdt(&c, 12, seg_desc(0x9000, 0x37, 0x82, 0));
        // Entry 13: an interrupt gate (type 14): invalid for both.
        set_gdt(&c, 13, gate(SEL_CODE32, 0, 14, 3, 0));
        c.state.gpr[1] = 0x50;
        exec_asm(&mut c, |a| a.lar(eax, ecx)).unwrap();
        assert_eq!(c.state.gpr[0], 0x00c0_d300);
        assert_ne!(c.state.flags() & ZF, 0);
        exec_asm(&mut c, |a| a.lsl(edx, ecx)).unwrap();
        assert_eq!(c.state.gpr[2], 0xffff_ffff);
        exec_asm(&mut c, |a| a.lsl(dx, cx)).unwrap();
        assert_eq!(c.state.gpr[2], 0xffff_ffff);
        exec_asm(&mut c, |a| a.lar(dx, cx)).unwrap();
        assert_eq!(c.state.gpr[2], 0xffff_d300);
        // The call gate has access rights but no limit.
        c.state.gpr[1] = 0x58;
        exec_asm(&mut c, |a| a.lar(eax, ecx)).unwrap();
        assert_eq!(c.state.gpr[0], 0x0000_ec00);
        c.state.gpr[2] = 7;
        exec_asm(&mut c, |a| a.lsl(edx, ecx)).unwrap();
        assert_eq!(c.state.flags() & ZF, 0);
        assert_eq!(c.state.gpr[2], 7);
        c.state.gpr[1] = 0x60;
        exec_asm(&mut c, |a| a.lsl(edx, ecx)).unwrap();
        assert_eq!(c.state.gpr[2], 0x37);
        for sel in [0x68u64, 0, 0x800, 0x4] {
            c.state.gpr[1] = sel;
            c.state.set_arith_flags(ZF, ZF);
            exec_asm(&mut c, |a| a.lar(eax, ecx)).unwrap();
            assert_eq!(c.state.flags() & ZF, 0, "{sel:#x}");
        }
        // From CPL 3, the DPL-2 segment is invisible; with RPL 3 at CPL 0 too.
        c.state.gpr[1] = 0x53;
        exec_asm(&mut c, |a| a.lar(eax, ecx)).unwrap();
        assert_eq!(c.state.flags() & ZF, 0);
        to_user(&mut c, SEL_UCODE32);
        c.state.gpr[1] = 0x50;
        exec_asm(&mut c, |a| a.lsl(eax, ecx)).unwrap();
        assert_eq!(c.state.flags() & ZF, 0);
        // The selector operand can fault.
        c.state.gpr[3] = 0xffff_fff0;
        c.state.seg[crate::state::sreg::DS].limit = 0xfffff;
        assert_eq!(exec_asm(&mut c, |a| a.lsl(eax, word_ptr(ebx))), Err(Exception::GeneralProtection(0)));
    }

    #[test]
    fn verr_verw() {
        let mut c = prot_mode();
        set_gdt(&c, 10, seg_desc(0, 0xffff, 0xf1, 0)); // read-only data, DPL 3
        set_gdt(&c, 11, seg_desc(0, 0xffff, 0x9a, 0)); // readable code, DPL 0
        set_gdt(&c, 12, seg_desc(0, 0xffff, 0x98, 0)); // execute-only code
        set_gdt(&c, 13, seg_desc(0, 0xffff, 0x9e, 0)); // conforming readable code, DPL 0
        let check = |c: &mut crate::cpu::Cpu, sel: u16, r: bool, w: bool| {
            c.state.gpr[1] = u64::from(sel);
            exec_asm(c, |a| a.verr(cx)).unwrap();
            assert_eq!(c.state.flags() & ZF != 0, r, "verr {sel:#x}");
            exec_asm(c, |a| a.verw(cx)).unwrap();
            assert_eq!(c.state.flags() & ZF != 0, w, "verw {sel:#x}");
        };
        check(&mut c, SEL_DATA, true, true);
        check(&mut c, 0x53, true, false);
        check(&mut c, 0x58, true, false);
        check(&mut c, 0x60, false, false);
        check(&mut c, 0, false, false);
        to_user(&mut c, SEL_UCODE32);
        check(&mut c, SEL_DATA, false, false);
        check(&mut c, 0x58, false, false);
        check(&mut c, 0x6b, true, false); // conforming: no privilege check
        check(&mut c, SEL_UDATA, true, true);
    }

    #[test]
    fn arpl_raises_the_rpl() {
        let mut c = prot_mode();
        c.state.gpr[0] = 0xabcd_0010;
        c.state.gpr[1] = 3;
        exec_asm(&mut c, |a| a.arpl(ax, cx)).unwrap();
        assert_eq!(c.state.gpr[0], 0xabcd_0013);
        assert_ne!(c.state.flags() & ZF, 0);
        exec_asm(&mut c, |a| a.arpl(ax, cx)).unwrap();
        assert_eq!(c.state.flags() & ZF, 0);
        c.mem().write_u16(DATA, 0x21).unwrap();
        c.state.gpr[3] = DATA;
        exec_asm(&mut c, |a| a.arpl(word_ptr(ebx), cx)).unwrap();
        assert_eq!(c.mem().read_u16(DATA).unwrap(), 0x23);
    }

    #[test]
    fn descriptor_instructions_are_undefined_in_real_and_v86_mode() {
        let mut c = real_mode();
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x02, 0xc1]), Err(Exception::InvalidOpcode)); // lar ax, cx
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x00, 0xe1]), Err(Exception::InvalidOpcode)); // verr cx
        assert_eq!(exec_bytes(&mut c, &[0x63, 0xc8]), Err(Exception::InvalidOpcode)); // arpl ax, cx
        let mut c = v86_mode(3);
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x03, 0xc1]), Err(Exception::InvalidOpcode)); // lsl ax, cx
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x00, 0xe9]), Err(Exception::InvalidOpcode));
        // verw cx
    }

    #[test]
    fn long_mode_lar_sees_long_mode_types() {
        let mut c = long_mode();
        // The 64-bit TSS (type 9, busy after LTR) is valid for LSL.
        c.state.gpr[1] = u64::from(SEL_TSS);
        exec_asm(&mut c, |a| a.lsl(rax, rcx)).unwrap();
        assert_eq!(c.state.gpr[0], IOMAP + 0x2000);
        // A 16-bit TSS type (1) is not valid in IA-32e mode.
        set_gdt(&c, 12, seg_desc(0, 0x67, 0x81, 0));
        c.state.gpr[1] = 0x60;
        exec_asm(&mut c, |a| a.lsl(rax, rcx)).unwrap();
        assert_eq!(c.state.flags() & ZF, 0);
    }
}
