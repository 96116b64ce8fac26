//! Data movement (SDM Vol. 2: MOV, MOVZX, MOVSX, MOVSXD, LEA, XCHG, CMOVcc,
//! SETcc, BSWAP, NOP, and MOV to and from segment registers).

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::{ea, mask, op_size, read_op, reg_read, reg_write, sext, size0, write_op, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::state::sreg;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Mov => {
            if matches!(code, Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_r64m16) {
                mov_to_sreg
            } else if matches!(code, Code::Mov_rm16_Sreg | Code::Mov_r32m16_Sreg | Code::Mov_r64m16_Sreg) {
                mov_from_sreg
            } else if matches!(
                code,
                Code::Mov_r32_cr
                    | Code::Mov_r64_cr
                    | Code::Mov_cr_r32
                    | Code::Mov_cr_r64
                    | Code::Mov_r32_dr
                    | Code::Mov_r64_dr
                    | Code::Mov_dr_r32
                    | Code::Mov_dr_r64
                    | Code::Mov_r32_tr
                    | Code::Mov_tr_r32
            ) {
                return None; // system family
            } else {
                mov
            }
        }
        Mnemonic::Movzx => movzx,
        Mnemonic::Movsx | Mnemonic::Movsxd => movsx,
        Mnemonic::Lea => lea,
        Mnemonic::Movnti => mov,
        Mnemonic::Les | Mnemonic::Lds | Mnemonic::Lss | Mnemonic::Lfs | Mnemonic::Lgs => load_far_pointer,
        Mnemonic::Xchg => xchg::<false>,
        Mnemonic::Pause => pause,
        Mnemonic::Nop | Mnemonic::Endbr32 | Mnemonic::Endbr64 => nop,
        Mnemonic::Prefetchnta
        | Mnemonic::Prefetcht0
        | Mnemonic::Prefetcht1
        | Mnemonic::Prefetcht2
        | Mnemonic::Prefetchw => nop,
        Mnemonic::Bswap => bswap,
        Mnemonic::Cmova
        | Mnemonic::Cmovae
        | Mnemonic::Cmovb
        | Mnemonic::Cmovbe
        | Mnemonic::Cmove
        | Mnemonic::Cmovg
        | Mnemonic::Cmovge
        | Mnemonic::Cmovl
        | Mnemonic::Cmovle
        | Mnemonic::Cmovne
        | Mnemonic::Cmovno
        | Mnemonic::Cmovnp
        | Mnemonic::Cmovns
        | Mnemonic::Cmovo
        | Mnemonic::Cmovp
        | Mnemonic::Cmovs => cmov,
        Mnemonic::Seta
        | Mnemonic::Setae
        | Mnemonic::Setb
        | Mnemonic::Setbe
        | Mnemonic::Sete
        | Mnemonic::Setg
        | Mnemonic::Setge
        | Mnemonic::Setl
        | Mnemonic::Setle
        | Mnemonic::Setne
        | Mnemonic::Setno
        | Mnemonic::Setnp
        | Mnemonic::Setns
        | Mnemonic::Seto
        | Mnemonic::Setp
        | Mnemonic::Sets => setcc,
        _ => return None,
    })
}

/// The locked form of XCHG (see [`crate::atomic`]).
pub fn locked_handler(code: Code) -> Option<Handler> {
    (code.mnemonic() == Mnemonic::Xchg).then_some(xchg::<true> as Handler)
}

fn nop(_: &mut Cpu, _: &Instruction) -> Fault<()> {
    Ok(())
}

/// Pauses a host thread runs before it gives its core away.
const PAUSES_PER_YIELD: u32 = 64;

thread_local! {
    /// PAUSEs run on this host thread, for [`pause`].
    static PAUSES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// PAUSE: a spin-wait hint, passed on to the host. The processor the guest
/// waits for may be another vCPU whose host thread is not running now
/// (more vCPUs than host cores), so every [`PAUSES_PER_YIELD`]th pause on a
/// thread yields the host core to the other threads, as a processor's
/// pause-loop exiting hands a spinning vCPU's time back to its hypervisor.
/// Nothing the guest or the run loop sees changes.
fn pause(_: &mut Cpu, _: &Instruction) -> Fault<()> {
    std::hint::spin_loop();
    let n = PAUSES.with(|p| {
        let n = p.get().wrapping_add(1);
        p.set(n);
        n
    });
    if n.is_multiple_of(PAUSES_PER_YIELD) {
        std::thread::yield_now();
    }
    Ok(())
}

fn mov(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    let v = match insn.op1_kind() {
        // MOV AL/AX/EAX/RAX, moffs: the operand is a memory reference.
        OpKind::Memory => {
            let a = ea(&cpu.state, insn);
            cpu.read_mem(super::mem_seg(insn), a, size)?
        }
        _ => read_op(cpu, insn, 1, size)?,
    };
    write_op(cpu, insn, 0, size, v)
}

fn movzx(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let ssize = op_size(insn, 1);
    let v = read_op(cpu, insn, 1, ssize)?;
    write_op(cpu, insn, 0, size0(insn), v)
}

fn movsx(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let ssize = op_size(insn, 1);
    let dsize = size0(insn);
    let v = read_op(cpu, insn, 1, ssize)?;
    write_op(cpu, insn, 0, dsize, sext(v, ssize) & mask(dsize))
}

fn lea(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    let a = ea(&cpu.state, insn);
    reg_write(&mut cpu.state, insn.op0_register(), a & mask(size));
    Ok(())
}

/// XCHG; with a memory operand it is locked (`L`, which the decoder
/// gives it whether or not a LOCK prefix is there).
fn xchg<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    let a = super::read_dst::<L>(cpu, insn, 0, size)?;
    let b = read_op(cpu, insn, 1, size)?;
    // Memory first, so a fault leaves the register untouched.
    if insn.op0_kind() == OpKind::Memory {
        super::write_dst::<L>(cpu, insn, 0, size, b)?;
        write_op(cpu, insn, 1, size, a)
    } else {
        write_op(cpu, insn, 1, size, a)?;
        write_op(cpu, insn, 0, size, b)
    }
}

fn bswap(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let r = insn.op0_register();
    let v = reg_read(&cpu.state, r);
    let out = match r.size() {
        4 => u64::from((v as u32).swap_bytes()),
        8 => v.swap_bytes(),
        // BSWAP of a 16-bit register is undefined; silicon gives zero.
        _ => 0,
    };
    reg_write(&mut cpu.state, r, out);
    Ok(())
}

fn cc_of(insn: &Instruction) -> u8 {
    use iced_x86::ConditionCode as C;
    match insn.condition_code() {
        C::o => 0,
        C::no => 1,
        C::b => 2,
        C::ae => 3,
        C::e => 4,
        C::ne => 5,
        C::be => 6,
        C::a => 7,
        C::s => 8,
        C::ns => 9,
        C::p => 10,
        C::np => 11,
        C::l => 12,
        C::ge => 13,
        C::le => 14,
        _ => 15,
    }
}

/// Condition-code number (0..15) of a Jcc/SETcc/CMOVcc instruction.
pub fn condition(insn: &Instruction) -> u8 {
    cc_of(insn)
}

fn cmov(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    // The source is read (and may fault) whatever the condition.
    let v = read_op(cpu, insn, 1, size)?;
    let r = insn.op0_register();
    if cpu.state.condition(cc_of(insn)) {
        reg_write(&mut cpu.state, r, v);
    } else if size == 4 {
        // A 32-bit CMOV zero-extends its destination even when not taken.
        let cur = reg_read(&cpu.state, r);
        reg_write(&mut cpu.state, r, cur);
    }
    Ok(())
}

fn setcc(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let v = u64::from(cpu.state.condition(cc_of(insn)));
    write_op(cpu, insn, 0, 1, v)
}

fn sreg_index(r: Register) -> usize {
    r as usize - Register::ES as usize
}

fn mov_to_sreg(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let seg = sreg_index(insn.op0_register());
    if seg == sreg::CS {
        return Err(Exception::InvalidOpcode);
    }
    let sel = read_op(cpu, insn, 1, 2)? as u16;
    cpu.load_segment(seg, sel)?;
    if seg == sreg::SS {
        cpu.block_break = true;
    }
    Ok(())
}

/// LES, LDS, LSS, LFS, LGS: offset and selector from memory; the segment is
/// loaded (with its checks) before the register is written, so a fault leaves
/// both unchanged. LSS creates no interrupt shadow.
fn load_far_pointer(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let seg = match insn.mnemonic() {
        Mnemonic::Les => sreg::ES,
        Mnemonic::Lds => sreg::DS,
        Mnemonic::Lss => sreg::SS,
        Mnemonic::Lfs => sreg::FS,
        _ => sreg::GS,
    };
    let r = insn.op0_register();
    let size = r.size() as u32;
    let ms = super::mem_seg(insn);
    let a = ea(&cpu.state, insn);
    let off = cpu.read_mem(ms, a, size)?;
    let amask = crate::ops::bits::addr_mask(cpu, insn);
    let sel = cpu.read_mem(ms, a.wrapping_add(u64::from(size)) & amask, 2)? as u16;
    let shadow = cpu.state.interrupt_shadow;
    cpu.load_segment(seg, sel)?;
    if seg == sreg::SS {
        cpu.state.interrupt_shadow = shadow;
        cpu.state.events.mov_ss = false;
        cpu.block_break = true;
    }
    reg_write(&mut cpu.state, r, off);
    Ok(())
}

fn mov_from_sreg(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let seg = sreg_index(insn.op1_register());
    let sel = u64::from(cpu.state.seg[seg].selector);
    match insn.op0_kind() {
        OpKind::Memory => write_op(cpu, insn, 0, 2, sel),
        // To a register: zero-extended to the operand size.
        _ => write_op(cpu, insn, 0, size0(insn), sel),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::exception::{Exception, GP0};
    use crate::state::sreg;

    #[test]
    fn load_far_pointers() {
        let mut c = prot_mode();
        c.mem().write_u32(DATA, 0x6000).unwrap();
        c.mem().write_u16(DATA + 4, SEL_DATA).unwrap();
        c.state.gpr[3] = DATA;
        exec_bytes(&mut c, &[0x0f, 0xb2, 0x23]).unwrap(); // lss esp, [ebx]
        assert_eq!(c.state.gpr[4], 0x6000);
        assert_eq!(c.state.seg[sreg::SS].selector, SEL_DATA);
        assert_eq!(c.state.interrupt_shadow, 0);
        // A bad selector leaves the register alone.
        c.mem().write_u16(DATA + 4, SEL_CODE32).unwrap();
        c.state.gpr[6] = 5;
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0xb4, 0x33]), Ok(())); // lfs esi, [ebx]: readable code is fine
        assert_eq!(c.state.gpr[6], 0x6000);
        c.state.gpr[6] = 5;
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0xb2, 0x33]), Err(Exception::GeneralProtection(SEL_CODE32))); // lss
        assert_eq!(c.state.gpr[6], 5);
        // 16-bit operand size: m16:16.
        c.mem().write_u16(DATA + 2, SEL_DATA).unwrap();
        exec_bytes(&mut c, &[0x66, 0xc5, 0x33]).unwrap(); // lds si, [ebx]
        assert_eq!(c.state.gpr[6], 0x6000);
        // Real mode.
        let mut c = real_mode();
        c.mem().write_u32(0x100, 0x2000_0010).unwrap();
        c.state.gpr[3] = 0x100;
        exec_bytes(&mut c, &[0xc4, 0x3f]).unwrap(); // les di, [bx]
        assert_eq!((c.state.gpr[7], c.state.seg[sreg::ES].base), (0x10, 0x20000));
        // 64-bit mode: LFS with REX.W takes m16:64; LES/LDS do not exist.
        let mut c = long_mode();
        c.mem().write_u64(DATA, 0x1_2345_6789).unwrap();
        c.mem().write_u16(DATA + 8, SEL_DATA).unwrap();
        c.state.gpr[3] = DATA;
        exec_bytes(&mut c, &[0x48, 0x0f, 0xb4, 0x03]).unwrap(); // lfs rax, [rbx]
        assert_eq!(c.state.gpr[0], 0x1_2345_6789);
        assert_eq!(exec_bytes(&mut c, &[0xc5, 0x03]), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn lock_prefix_rules() {
        let mut c = long_mode();
        c.state.gpr[3] = DATA;
        for bad in [
            &[0xf0, 0x01, 0xc0][..],
            &[0xf0, 0x87, 0xc0],
            &[0xf0, 0x8b, 0x03],
            &[0xf0, 0x90],
            &[0xf0, 0x0f, 0xa3, 0x03],
            &[0xf0, 0x3b, 0x03],
        ] {
            assert_eq!(exec_bytes(&mut c, bad), Err(Exception::InvalidOpcode), "{bad:02x?}");
        }
        for good in [
            &[0xf0, 0x01, 0x03][..],
            &[0xf0, 0x87, 0x03],
            &[0xf0, 0x0f, 0xc1, 0x03],
            &[0xf0, 0xff, 0x03],
            &[0xf0, 0xf7, 0x1b],
            &[0xf0, 0x0f, 0xbb, 0x03],
        ] {
            assert!(exec_bytes(&mut c, good).is_ok(), "{good:02x?}");
        }
        // XCHG with memory swaps with or without LOCK.
        c.mem().write_u32(DATA, 7).unwrap();
        c.state.gpr[0] = 9;
        exec_bytes(&mut c, &[0x87, 0x03]).unwrap();
        assert_eq!((c.mem().read_u32(DATA).unwrap(), c.state.gpr[0]), (9, 7));
        // A faulting XCHG leaves the register alone.
        c.state.gpr[3] = READONLY;
        assert!(exec_bytes(&mut c, &[0xf0, 0x87, 0x03]).is_err());
        assert_eq!(c.state.gpr[0], 7);
    }

    #[test]
    fn register_size_corner_cases() {
        let mut c = long_mode();
        c.state.gpr[0] = 0x1111_1111_1111_1111;
        c.state.gpr[4] = 0x2222_2222_2222_3344;
        exec_bytes(&mut c, &[0x40, 0x88, 0xe0]).unwrap(); // mov al, spl
        assert_eq!(c.state.gpr[0], 0x1111_1111_1111_1144);
        c.state.gpr[0] = 0x1111_1111_1111_5566;
        exec_bytes(&mut c, &[0x88, 0xe0]).unwrap(); // mov al, ah
        assert_eq!(c.state.gpr[0], 0x1111_1111_1111_5555);
        exec_bytes(&mut c, &[0x41, 0x88, 0xc7]).unwrap(); // mov r15b, al
        assert_eq!(c.state.gpr[15] & 0xff, 0x55);
        c.state.gpr[6] = 0xff00;
        exec_bytes(&mut c, &[0x40, 0x88, 0xc6]).unwrap(); // mov sil, al
        assert_eq!(c.state.gpr[6], 0xff55);
        // 16-bit operands keep the upper bits.
        c.state.gpr[0] = 0xaaaa_aaaa_aaaa_fffe;
        c.state.gpr[1] = 3;
        exec_bytes(&mut c, &[0x66, 0x01, 0xc8]).unwrap(); // add ax, cx
        assert_eq!(c.state.gpr[0], 0xaaaa_aaaa_aaaa_0001);
        exec_bytes(&mut c, &[0x66, 0xb8, 0x34, 0x12]).unwrap(); // mov ax, 0x1234
        assert_eq!(c.state.gpr[0], 0xaaaa_aaaa_aaaa_1234);
        // 32-bit writes zero-extend; NOP (90) does not touch EAX.
        exec_bytes(&mut c, &[0x90]).unwrap();
        assert_eq!(c.state.gpr[0], 0xaaaa_aaaa_aaaa_1234);
        exec_bytes(&mut c, &[0x87, 0xc0]).unwrap(); // xchg eax, eax
        assert_eq!(c.state.gpr[0], 0xaaaa_1234);
        c.state.gpr[0] = u64::MAX;
        exec_bytes(&mut c, &[0x01, 0xc8]).unwrap(); // add eax, ecx
        assert_eq!(c.state.gpr[0], 2);
        c.state.gpr[0] = u64::MAX;
        c.state.set_arith_flags(crate::state::flags::ZF, 0);
        exec_bytes(&mut c, &[0x0f, 0x44, 0xc1]).unwrap(); // cmove eax, ecx (not taken)
        assert_eq!(c.state.gpr[0], 0xffff_ffff);
        // MOVNTI is a store.
        c.state.gpr[3] = DATA;
        exec_bytes(&mut c, &[0x48, 0x0f, 0xc3, 0x0b]).unwrap(); // movnti [rbx], rcx
        assert_eq!(c.mem().read_u64(DATA).unwrap(), 3);
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0xc3, 0xc1]), Err(Exception::InvalidOpcode));
        let _ = GP0;
    }
}
