//! Stack instructions (SDM Vol. 2: PUSH, POP, PUSHF, POPF, PUSHA, POPA, CALL
//! and RET near, ENTER, LEAVE).

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::{mask, read_op, reg_read, reg_write, sext, write_op, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault, GP0};
use crate::state::{flags, sreg};

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Push => push,
        Mnemonic::Pop => pop,
        Mnemonic::Pushf | Mnemonic::Pushfd | Mnemonic::Pushfq => pushf,
        Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq => popf,
        Mnemonic::Pusha | Mnemonic::Pushad => pusha,
        Mnemonic::Popa | Mnemonic::Popad => popa,
        Mnemonic::Call => match code {
            Code::Call_rel16
            | Code::Call_rel32_32
            | Code::Call_rel32_64
            | Code::Call_rm16
            | Code::Call_rm32
            | Code::Call_rm64 => call,
            _ => return None,
        },
        Mnemonic::Ret => ret,
        Mnemonic::Leave => leave,
        Mnemonic::Enter => enter,
        _ => return None,
    })
}

/// Operand size of a stack operation, from iced's stack-pointer increment.
#[inline]
fn stack_op_size(insn: &Instruction) -> u32 {
    insn.stack_pointer_increment().unsigned_abs()
}

fn sreg_of(r: Register) -> Option<usize> {
    if r.is_segment_register() {
        Some(r as usize - Register::ES as usize)
    } else {
        None
    }
}

fn push(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = stack_op_size(insn);
    let v = match insn.op0_kind() {
        OpKind::Register => {
            let r = insn.op0_register();
            match sreg_of(r) {
                Some(s) => u64::from(cpu.state.seg[s].selector),
                None => reg_read(&cpu.state, r),
            }
        }
        OpKind::Memory => read_op(cpu, insn, 0, size)?,
        // Immediates are sign-extended to the operand size.
        _ => insn.immediate(0) & mask(size),
    };
    cpu.push(size, v)
}

fn pop(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = stack_op_size(insn);
    match insn.op0_kind() {
        OpKind::Register => {
            let r = insn.op0_register();
            if let Some(s) = sreg_of(r) {
                let v = cpu.peek(0, size)?;
                cpu.load_segment(s, v as u16)?;
                cpu.pop(size)?;
                if s == sreg::SS {
                    cpu.block_break = true;
                }
                return Ok(());
            }
            let v = cpu.pop(size)?;
            reg_write(&mut cpu.state, r, v);
            Ok(())
        }
        _ => {
            // POP to memory: the address is computed after RSP is incremented.
            let v = cpu.peek(0, size)?;
            let saved = cpu.state.gpr[4];
            cpu.pop(size)?;
            if let Err(e) = write_op(cpu, insn, 0, size, v) {
                cpu.state.gpr[4] = saved;
                return Err(e);
            }
            Ok(())
        }
    }
}

fn iopl(cpu: &Cpu) -> u8 {
    ((cpu.state.rflags & flags::IOPL) >> flags::IOPL_SHIFT) as u8
}

fn pushf(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.v86() && iopl(cpu) < 3 {
        return Err(GP0);
    }
    let size = stack_op_size(insn);
    // VM and RF are pushed as zero.
    let v = cpu.state.flags() & !(flags::VM | flags::RF);
    cpu.push(size, v)
}

fn popf(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.v86() && iopl(cpu) < 3 {
        return Err(GP0);
    }
    let size = stack_op_size(insn);
    let v = cpu.pop(size)?;
    cpu.set_flags_from_pop(v, size);
    Ok(())
}

impl Cpu {
    /// Load RFLAGS from a POPF/IRET image with the privilege rules of POPF.
    pub(crate) fn set_flags_from_pop(&mut self, v: u64, size: u32) {
        let cur = self.state.flags();
        let mut changeable = flags::CF
            | flags::PF
            | flags::AF
            | flags::ZF
            | flags::SF
            | flags::TF
            | flags::DF
            | flags::OF
            | flags::NT
            | flags::AC
            | flags::ID
            | flags::IF
            | flags::IOPL;
        if self.state.protected() {
            let cpl = self.state.cpl;
            if cpl > 0 {
                changeable &= !flags::IOPL;
            }
            if u64::from(cpl) > (cur & flags::IOPL) >> flags::IOPL_SHIFT {
                changeable &= !flags::IF;
            }
        }
        if size == 2 {
            changeable &= 0xffff;
        }
        let old_if = cur & flags::IF;
        self.state.rflags = ((cur & !changeable) | (v & changeable) | flags::FIXED) & !flags::RF;
        if old_if == 0 && self.state.rflags & flags::IF != 0 {
            self.block_break = true;
        }
    }
}

fn pusha(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = if insn.code() == Code::Pushaw { 2 } else { 4 };
    let sp = cpu.state.gpr[4];
    let saved = sp;
    for i in 0..8 {
        let v = if i == 4 { sp } else { cpu.state.gpr[i] };
        if let Err(e) = cpu.push(size, v & mask(size)) {
            cpu.state.gpr[4] = saved;
            return Err(e);
        }
    }
    Ok(())
}

fn popa(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = if insn.code() == Code::Popaw { 2 } else { 4 };
    // The image is read from the stack top upward: (E)DI first, (E)AX last,
    // so a fault is reported at the lowest address that faults.
    let mut vals = [0u64; 8];
    for i in (0..8).rev() {
        vals[i] = cpu.peek(u64::from(size) * (7 - i as u64), size)?;
    }
    let regs16 = [
        Register::AX,
        Register::CX,
        Register::DX,
        Register::BX,
        Register::SP,
        Register::BP,
        Register::SI,
        Register::DI,
    ];
    let regs32 = [
        Register::EAX,
        Register::ECX,
        Register::EDX,
        Register::EBX,
        Register::ESP,
        Register::EBP,
        Register::ESI,
        Register::EDI,
    ];
    for i in 0..8 {
        if i == 4 {
            continue;
        }
        let r = if size == 2 { regs16[i] } else { regs32[i] };
        reg_write(&mut cpu.state, r, vals[i]);
    }
    let sp_mask = if cpu.stack_size() == 2 { 0xffff } else { 0xffff_ffff };
    let sp = cpu.state.gpr[4];
    cpu.state.gpr[4] = (sp & !sp_mask) | (sp.wrapping_add(u64::from(size) * 8) & sp_mask);
    Ok(())
}

/// Check a near branch target against CS (limit, or canonical form in 64-bit mode).
pub(crate) fn check_target(cpu: &Cpu, target: u64) -> Fault<()> {
    if cpu.state.code64() {
        if !crate::cpu::is_canonical(target) {
            return Err(GP0);
        }
    } else if target > u64::from(cpu.state.seg[sreg::CS].limit) {
        return Err(GP0);
    }
    Ok(())
}

fn near_target(cpu: &mut Cpu, insn: &Instruction, size: u32) -> Fault<u64> {
    match insn.op0_kind() {
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => Ok(insn.near_branch_target()),
        _ => Ok(read_op(cpu, insn, 0, size)? & mask(size)),
    }
}

fn call(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = stack_op_size(insn);
    let target = near_target(cpu, insn, size)?;
    check_target(cpu, target)?;
    let ret = cpu.state.rip;
    cpu.push(size, ret)?;
    cpu.state.rip = target;
    Ok(())
}

fn ret(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = match insn.code() {
        Code::Retnw | Code::Retnw_imm16 => 2,
        Code::Retnd | Code::Retnd_imm16 => 4,
        _ => 8,
    };
    let target = cpu.peek(0, size)?;
    check_target(cpu, target)?;
    cpu.pop(size)?;
    if insn.op_count() == 1 {
        let n = u64::from(insn.immediate16());
        let m = cpu_sp_mask(cpu);
        let sp = cpu.state.gpr[4];
        cpu.state.gpr[4] = (sp & !m) | (sp.wrapping_add(n) & m);
    }
    cpu.state.rip = target;
    Ok(())
}

fn leave(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = stack_op_size(insn).max(2);
    let size = match insn.code() {
        Code::Leavew => 2,
        Code::Leaved => 4,
        _ => size.max(8),
    };
    let m = cpu_sp_mask(cpu);
    let saved = cpu.state.gpr[4];
    cpu.state.gpr[4] = (saved & !m) | (cpu.state.gpr[5] & m);
    match cpu.pop(size) {
        Ok(v) => {
            let r = match size {
                2 => Register::BP,
                4 => Register::EBP,
                _ => Register::RBP,
            };
            reg_write(&mut cpu.state, r, v);
            Ok(())
        }
        Err(e) => {
            cpu.state.gpr[4] = saved;
            Err(e)
        }
    }
}

fn enter(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = match insn.code() {
        Code::Enterw_imm16_imm8 => 2,
        Code::Enterd_imm16_imm8 => 4,
        _ => 8,
    };
    let alloc = u64::from(insn.immediate16());
    let level = u64::from(insn.immediate8_2nd() & 31);
    let saved_sp = cpu.state.gpr[4];
    let saved_bp = cpu.state.gpr[5];
    let res = (|| {
        cpu.push(size, cpu.state.gpr[5])?;
        let frame = cpu.state.gpr[4];
        if level > 0 {
            let mut bp = saved_bp;
            for _ in 1..level {
                bp = bp.wrapping_sub(u64::from(size));
                let v = cpu.read_mem(sreg::SS, bp & cpu_sp_mask(cpu), size)?;
                cpu.push(size, v)?;
            }
            cpu.push(size, frame)?;
        }
        let m = cpu_sp_mask(cpu);
        let sp = cpu.state.gpr[4];
        let new_sp = sp.wrapping_sub(alloc) & m;
        // The final stack top is checked as a write of one operand.
        cpu.probe_write(sreg::SS, new_sp, size)?;
        let r = match size {
            2 => Register::BP,
            4 => Register::EBP,
            _ => Register::RBP,
        };
        reg_write(&mut cpu.state, r, frame & mask(size));
        cpu.state.gpr[4] = (sp & !m) | new_sp;
        Ok(())
    })();
    if res.is_err() {
        cpu.state.gpr[4] = saved_sp;
        cpu.state.gpr[5] = saved_bp;
    }
    let _ = sext;
    let _: Option<Exception> = None;
    res
}

fn cpu_sp_mask(cpu: &Cpu) -> u64 {
    match cpu.stack_size() {
        8 => u64::MAX,
        4 => 0xffff_ffff,
        _ => 0xffff,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::exception::Exception;
    use crate::state::sreg;

    #[test]
    fn push_pop_fs_gs() {
        let mut c = long_mode();
        c.state.seg[sreg::FS].selector = SEL_DATA;
        c.state.seg[sreg::GS].base = 0x1234;
        c.mem().write_u64(KSTACK - 8, 0xffff_ffff_ffff_ffff).unwrap();
        exec_bytes(&mut c, &[0x0f, 0xa0]).unwrap(); // push fs
        assert_eq!(c.state.gpr[4], KSTACK - 8);
        assert_eq!(c.mem().read_u64(KSTACK - 8).unwrap(), u64::from(SEL_DATA));
        exec_bytes(&mut c, &[0x0f, 0xa9]).unwrap(); // pop gs
        assert_eq!(c.state.gpr[4], KSTACK);
        assert_eq!(c.state.seg[sreg::GS].selector, SEL_DATA);
        // Loading GS from the GDT replaces its base.
        assert_eq!(c.state.seg[sreg::GS].base, 0);
        exec_bytes(&mut c, &[0x66, 0x0f, 0xa8]).unwrap(); // push gs (16-bit)
        assert_eq!(c.state.gpr[4], KSTACK - 2);
        c.mem().write_u16(KSTACK - 2, 0x800).unwrap();
        assert_eq!(exec_bytes(&mut c, &[0x66, 0x0f, 0xa1]), Err(Exception::GeneralProtection(0x800)));
        assert_eq!(c.state.gpr[4], KSTACK - 2);
        // PUSH CS / POP SS / PUSH ES do not exist in 64-bit mode.
        for b in [0x0eu8, 0x17, 0x06, 0x1f] {
            assert_eq!(exec_bytes(&mut c, &[b]), Err(Exception::InvalidOpcode), "{b:#x}");
        }
    }

    #[test]
    fn pop_ss_sets_the_shadow() {
        let mut c = prot_mode();
        c.mem().write_u32(KSTACK - 4, u32::from(SEL_DATA)).unwrap();
        c.state.gpr[4] = KSTACK - 4;
        exec_bytes(&mut c, &[0x17]).unwrap();
        assert_eq!(c.state.interrupt_shadow, 1);
        assert_eq!(c.state.gpr[4], KSTACK);
    }

    #[test]
    fn popa_reads_from_the_stack_top_up() {
        let mut c = long_mode();
        to_user(&mut c, SEL_UCODE32);
        // The whole image in a missing page: the first read, at ESP, faults.
        c.state.gpr[4] = UNMAPPED + 0x10;
        assert_eq!(exec_bytes(&mut c, &[0x61]), Err(Exception::PageFault { addr: UNMAPPED + 0x10, error_code: 4 }));
        // The image runs into the missing page: EDI..EBX are read, EDX faults.
        c.state.gpr[4] = UNMAPPED - 0x10;
        for i in 0..8u64 {
            c.mem().write_u32(UNMAPPED - 0x10 + 4 * i, i as u32).ok();
        }
        c.state.gpr[0] = 0xaa;
        assert_eq!(exec_bytes(&mut c, &[0x61]), Err(Exception::PageFault { addr: UNMAPPED, error_code: 4 }));
        assert_eq!((c.state.gpr[0], c.state.gpr[4]), (0xaa, UNMAPPED - 0x10));
        c.state.gpr[4] = USTACK - 0x20;
        for i in 0..8u64 {
            c.mem().write_u32(USTACK - 0x20 + 4 * i, 0x100 + i as u32).unwrap();
        }
        exec_bytes(&mut c, &[0x61]).unwrap();
        assert_eq!((c.state.gpr[7], c.state.gpr[0], c.state.gpr[4]), (0x100, 0x107, USTACK));
    }

    #[test]
    fn enter_checks_the_final_stack_top_as_a_write() {
        let mut c = long_mode();
        c.state.cr0 |= crate::state::cr::CR0_AM;
        to_user(&mut c, SEL_UCODE64);
        // enter 20h,0: RBP is pushed on a user page, RSP - 28h is on a
        // supervisor page: a user write fault (P, W, U).
        c.state.gpr[4] = SUPERVISOR + 0x1010;
        c.state.gpr[5] = 0x1234;
        let enter = [0xc8, 0x20, 0x00, 0x00];
        assert_eq!(exec_bytes(&mut c, &enter), Err(Exception::PageFault { addr: SUPERVISOR + 0xfe8, error_code: 7 }));
        assert_eq!((c.state.gpr[4], c.state.gpr[5]), (SUPERVISOR + 0x1010, 0x1234));
        // With RFLAGS.AC=1 the probe is an aligned-operand access: enter 16h,0
        // from an aligned RSP leaves a misaligned stack top.
        c.state.gpr[4] = USTACK;
        c.state.rflags |= crate::state::flags::AC;
        assert_eq!(exec_bytes(&mut c, &[0xc8, 0x16, 0x00, 0x00]), Err(Exception::AlignmentCheck));
        assert_eq!(c.state.gpr[4], USTACK);
        exec_bytes(&mut c, &[0xc8, 0x18, 0x00, 0x00]).unwrap();
        assert_eq!((c.state.gpr[4], c.state.gpr[5]), (USTACK - 0x20, USTACK - 8));
    }

    #[test]
    fn overrides_do_not_choose_the_fault_in_64_bit_mode() {
        let mut c = long_mode();
        c.state.gpr[0] = 0x8000_0000_0000_0000;
        c.state.gpr[5] = 0x8000_0000_0000_0000;
        // mov eax,es:[rbp]: the default segment, SS, decides.
        assert_eq!(exec_bytes(&mut c, &[0x26, 0x8b, 0x45, 0x00]), Err(Exception::StackFault(0)));
        assert_eq!(exec_bytes(&mut c, &[0x3e, 0x8b, 0x45, 0x00]), Err(Exception::StackFault(0)));
        assert_eq!(exec_bytes(&mut c, &[0x8b, 0x4d, 0x00]), Err(Exception::StackFault(0)));
        // An SS override does select #SS(0): mov ecx,ss:[rax].
        assert_eq!(exec_bytes(&mut c, &[0x36, 0x8b, 0x08]), Err(Exception::StackFault(0)));
        assert_eq!(exec_bytes(&mut c, &[0x8b, 0x08]), Err(crate::exception::GP0));
        assert_eq!(exec_bytes(&mut c, &[0x2e, 0x8b, 0x08]), Err(crate::exception::GP0));
    }

    #[test]
    fn stack_limit_violations_are_ss_faults() {
        let mut c = prot_mode();
        // A 16-bit expand-up stack segment limited to 0x0fff.
        set_gdt(&c, 10, seg_desc(0x60000, 0x0fff, 0x93, 0));
        load_cache(&mut c, sreg::SS, 0x50);
        c.state.gpr[4] = 0x1002;
        assert_eq!(exec_bytes(&mut c, &[0x50]), Err(Exception::StackFault(0))); // push eax
        assert_eq!(c.state.gpr[4], 0x1002);
        c.state.gpr[4] = 0x0ffe;
        assert_eq!(exec_bytes(&mut c, &[0x58]), Err(Exception::StackFault(0))); // pop eax
                                                                                // Delivered with an error code.
        step_bytes(&mut c, &[0x58]);
        assert_eq!(c.state.rip, stub(12));
    }
}
