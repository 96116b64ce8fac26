//! Near branches (SDM Vol. 2: JMP near, Jcc, LOOP/LOOPE/LOOPNE, JCXZ family).

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::{mask, read_op, size0, Handler};
use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::ops::stack::check_target;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Jmp => match code {
            Code::Jmp_rel8_16
            | Code::Jmp_rel8_32
            | Code::Jmp_rel8_64
            | Code::Jmp_rel16
            | Code::Jmp_rel32_32
            | Code::Jmp_rel32_64
            | Code::Jmp_rm16
            | Code::Jmp_rm32
            | Code::Jmp_rm64 => jmp,
            _ => return None,
        },
        Mnemonic::Jo
        | Mnemonic::Jno
        | Mnemonic::Jb
        | Mnemonic::Jae
        | Mnemonic::Je
        | Mnemonic::Jne
        | Mnemonic::Jbe
        | Mnemonic::Ja
        | Mnemonic::Js
        | Mnemonic::Jns
        | Mnemonic::Jp
        | Mnemonic::Jnp
        | Mnemonic::Jl
        | Mnemonic::Jge
        | Mnemonic::Jle
        | Mnemonic::Jg => jcc,
        Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz => {
            // The count register (by address size) is in the code's name.
            let name = format!("{code:?}");
            match (code.mnemonic(), &name[name.len() - 3..]) {
                (Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz, _) => match code.mnemonic() {
                    Mnemonic::Jcxz => jcxz::<0xffff>,
                    Mnemonic::Jecxz => jcxz::<0xffff_ffff>,
                    _ => jcxz::<{ u64::MAX }>,
                },
                (_, "_CX") => loop_::<0xffff>,
                (_, "ECX") => loop_::<0xffff_ffff>,
                _ => loop_::<{ u64::MAX }>,
            }
        }
        _ => return None,
    })
}

fn jmp(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let target = match insn.op0_kind() {
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => insn.near_branch_target(),
        _ => {
            let size = size0(insn);
            read_op(cpu, insn, 0, size)? & mask(size)
        }
    };
    check_target(cpu, target)?;
    cpu.state.rip = target;
    Ok(())
}

fn jcc(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.condition(crate::ops::mov::condition(insn)) {
        let target = insn.near_branch_target();
        check_target(cpu, target)?;
        cpu.state.rip = target;
    }
    Ok(())
}

/// LOOP family; `M` masks the count register to the address size.
fn loop_<const M: u64>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let m = M;
    let c = cpu.state.gpr[1];
    let n = c.wrapping_sub(1) & m;
    let cond = match insn.mnemonic() {
        Mnemonic::Loope => cpu.state.zf(),
        Mnemonic::Loopne => !cpu.state.zf(),
        _ => true,
    };
    if n != 0 && cond {
        let target = insn.near_branch_target();
        check_target(cpu, target)?;
        cpu.state.rip = target;
    }
    cpu.state.gpr[1] = (c & !m) | n;
    Ok(())
}

fn jcxz<const M: u64>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let m = M;
    if cpu.state.gpr[1] & m == 0 {
        let target = insn.near_branch_target();
        check_target(cpu, target)?;
        cpu.state.rip = target;
    }
    Ok(())
}
