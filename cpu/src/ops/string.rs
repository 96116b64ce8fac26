//! String instructions (SDM Vol. 2: MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS)
//! with REP/REPE/REPNE.
//!
//! The address size comes from iced's operand kinds (`MemorySegRSI`,
//! `MemoryESEDI`, ...). A repeated instruction runs a bounded number of
//! iterations per execution and then re-executes itself, so interrupts are
//! taken between chunks and a fault leaves RCX/RSI/RDI at the faulting element,
//! as on hardware.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::{mask, Handler};
use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::flags::FlagOp;
use crate::state::{flags, sreg};

/// Iterations of a REP instruction before it yields to the outer loop.
const REP_CHUNK: u64 = 4096;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsq => string_op,
        Mnemonic::Movsd if code == Code::Movsd_m32_m32 => string_op,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => string_op,
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => string_op,
        Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsq => string_op,
        Mnemonic::Cmpsd if code == Code::Cmpsd_m32_m32 => string_op,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => string_op,
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => string_op,
        Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => string_op,
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
    Ins,
    Outs,
}

fn addr_mask(insn: &Instruction) -> u64 {
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemoryESDI => return 0xffff,
            OpKind::MemorySegESI | OpKind::MemoryESEDI => return 0xffff_ffff,
            OpKind::MemorySegRSI | OpKind::MemoryESRDI => return u64::MAX,
            _ => {}
        }
    }
    u64::MAX
}

fn string_op(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let op = match insn.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => Op::Movs,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => Op::Stos,
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => Op::Lods,
        Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq => Op::Cmps,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => Op::Scas,
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => Op::Ins,
        _ => Op::Outs,
    };
    let size = match insn.memory_size().size() {
        0 => 1,
        n => n as u32,
    } as u64;
    if matches!(op, Op::Ins | Op::Outs) {
        crate::ops::system::check_io(cpu, cpu.state.gpr[2] as u16, size as u32)?;
        cpu.io_breakpoints(cpu.state.gpr[2] as u16, size as u32);
    }
    let am = addr_mask(insn);
    let rep = insn.has_rep_prefix() || insn.has_repe_prefix() || insn.has_repne_prefix();
    let repne = insn.has_repne_prefix();
    let src_seg = if matches!(op, Op::Movs | Op::Lods | Op::Cmps | Op::Outs) { super::mem_seg(insn) } else { sreg::DS };
    let step = if cpu.state.rflags & flags::DF != 0 { size.wrapping_neg() } else { size };
    let s = size as u32;
    let mut n = 0u64;
    // Single-stepping traps after every iteration, so run one at a time.
    let chunk = if cpu.state.rflags & flags::TF != 0 { 1 } else { REP_CHUNK };
    loop {
        if rep {
            if cpu.state.gpr[1] & am == 0 {
                return Ok(());
            }
            // A data breakpoint hit traps after the iteration that hit it.
            if n == chunk || (n > 0 && cpu.sys.hits != 0) {
                // Come back for the rest after the outer loop has looked at
                // interrupts. RF is set as between iterations on hardware: an
                // interrupt taken here saves RF = 1, and the instruction's code
                // breakpoint does not fire again when it resumes.
                cpu.state.rip = cpu.insn_start;
                cpu.state.rflags |= flags::RF;
                cpu.block_break = true;
                return Ok(());
            }
        }
        let si = cpu.state.gpr[6] & am;
        let di = cpu.state.gpr[7] & am;
        let mut stop = false;
        match op {
            Op::Movs => {
                let v = cpu.read_mem(src_seg, si, s)?;
                cpu.write_mem(sreg::ES, di, s, v)?;
            }
            Op::Stos => {
                let v = cpu.state.gpr[0] & mask(s);
                cpu.write_mem(sreg::ES, di, s, v)?;
            }
            Op::Lods => {
                let v = cpu.read_mem(src_seg, si, s)?;
                super::write_acc(cpu, s, v);
            }
            Op::Cmps => {
                let a = cpu.read_mem(src_seg, si, s)?;
                let b = cpu.read_mem(sreg::ES, di, s)?;
                let r = a.wrapping_sub(b) & mask(s);
                cpu.state.set_lazy(FlagOp::Sub, s, r, a, b);
                stop = rep && ((r == 0) == repne);
            }
            Op::Scas => {
                let a = cpu.state.gpr[0] & mask(s);
                let b = cpu.read_mem(sreg::ES, di, s)?;
                let r = a.wrapping_sub(b) & mask(s);
                cpu.state.set_lazy(FlagOp::Sub, s, r, a, b);
                stop = rep && ((r == 0) == repne);
            }
            Op::Ins => {
                let v = cpu.io_read(cpu.state.gpr[2] as u16, s as u8);
                cpu.write_mem(sreg::ES, di, s, u64::from(v))?;
            }
            Op::Outs => {
                let v = cpu.read_mem(src_seg, si, s)?;
                cpu.io_write(cpu.state.gpr[2] as u16, s as u8, v as u32);
            }
        }
        if matches!(op, Op::Movs | Op::Lods | Op::Cmps | Op::Outs) {
            cpu.state.gpr[6] = (cpu.state.gpr[6] & !am) | (si.wrapping_add(step) & am);
        }
        if matches!(op, Op::Movs | Op::Stos | Op::Cmps | Op::Scas | Op::Ins) {
            cpu.state.gpr[7] = (cpu.state.gpr[7] & !am) | (di.wrapping_add(step) & am);
        }
        if !rep {
            return Ok(());
        }
        let c = cpu.state.gpr[1];
        cpu.state.gpr[1] = (c & !am) | (c.wrapping_sub(1) & am);
        n += 1;
        if stop {
            return Ok(());
        }
        if cpu.stop {
            if cpu.state.gpr[1] & am != 0 {
                cpu.state.rip = cpu.insn_start;
                cpu.state.rflags |= flags::RF;
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::state::flags::{RF, TF};

    #[test]
    fn single_step_traps_after_each_rep_iteration() {
        let mut c = prot_mode();
        c.state.gpr[1] = 3;
        c.state.gpr[7] = DATA;
        c.state.rflags |= TF;
        step_bytes(&mut c, &[0xf3, 0xaa]); // rep stosb
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(c.state.gpr[1], 2);
        let sp = c.state.gpr[4];
        // The trap points back at the REP instruction, with RF set in the image.
        assert_eq!(c.mem().read_u32(sp).unwrap() as u64, CODE);
        assert_ne!(u64::from(c.mem().read_u32(sp + 8).unwrap()) & RF, 0);
    }

    #[test]
    fn data_breakpoint_inside_a_rep_stops_after_that_iteration() {
        let mut c = prot_mode();
        c.state.dr[0] = DATA + 5;
        c.state.dr[7] = 0x1 | (0b01 << 16);
        c.state.gpr[1] = 100;
        c.state.gpr[7] = DATA;
        step_bytes(&mut c, &[0xf3, 0xaa]);
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(c.state.gpr[1], 94);
        assert_eq!(c.state.dr[6] & 0xf, 1);
        let _ = TF;
    }
}
