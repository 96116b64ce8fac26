//! Specialized handlers for the most frequent operand forms.
//!
//! The family handlers read their operands generically (operand kinds,
//! register names, sizes decided at run time). For the forms that dominate
//! real code (32- and 64-bit register, immediate and simple memory operands of
//! MOV, the ALU group, INC/DEC, shifts by an immediate, IMUL, LEA, Jcc/JMP,
//! PUSH/POP), the block decoder picks one of these instead: the size and the
//! operation are compile-time constants and registers are indexed directly.
//! Their results, flags and faults are exactly those of the family handlers
//! (the unit tests below compare the two on random inputs).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::{ea, mask, mem_seg, sext, Handler};
use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::flags::{szp, FlagOp};
use crate::ops::stack::check_target;
use crate::state::flags::{ARITH, CF, OF};

const ADD: u8 = 0;
const OR: u8 = 1;
const AND: u8 = 2;
const SUB: u8 = 3;
const XOR: u8 = 4;
const CMP: u8 = 5;
const TEST: u8 = 6;

const SHL: u8 = 0;
const SHR: u8 = 1;
const SAR: u8 = 2;
const ROL: u8 = 3;
const ROR: u8 = 4;

/// Register index of a 32- or 64-bit general register.
#[inline(always)]
fn gi<const S: u32>(r: Register) -> usize {
    if S == 8 {
        r as usize - Register::RAX as usize
    } else {
        r as usize - Register::EAX as usize
    }
}

fn size_of_gpr(r: Register) -> Option<u32> {
    if r.is_gpr64() {
        Some(8)
    } else if r.is_gpr32() {
        Some(4)
    } else {
        None
    }
}

/// Pick a specialized handler for `insn`, if one fits its operand forms.
pub fn select(insn: &Instruction) -> Option<Handler> {
    if insn.has_lock_prefix() || insn.has_rep_prefix() || insn.has_repne_prefix() {
        return None;
    }
    let n = insn.op_count();
    let k0 = insn.op0_kind();
    let k1 = if n >= 2 { insn.op1_kind() } else { OpKind::Register };
    let s0 = if k0 == OpKind::Register { size_of_gpr(insn.op0_register()) } else { None };
    let s1 = if n >= 2 && k1 == OpKind::Register { size_of_gpr(insn.op1_register()) } else { None };
    let msize = if k0 == OpKind::Memory || k1 == OpKind::Memory { insn.memory_size().size() as u32 } else { 0 };
    macro_rules! by_size {
        ($s:expr, $f:ident $(, $c:expr)*) => {
            match $s {
                Some(8) => Some($f::<$($c,)* 8> as Handler),
                Some(4) => Some($f::<$($c,)* 4> as Handler),
                _ => None,
            }
        };
    }
    let alu_op = match insn.mnemonic() {
        Mnemonic::Add => Some(ADD),
        Mnemonic::Or => Some(OR),
        Mnemonic::And => Some(AND),
        Mnemonic::Sub => Some(SUB),
        Mnemonic::Xor => Some(XOR),
        Mnemonic::Cmp => Some(CMP),
        Mnemonic::Test => Some(TEST),
        _ => None,
    };
    if let Some(op) = alu_op {
        if n != 2 {
            return None;
        }
        macro_rules! alu_form {
            ($f:ident, $s:expr) => {
                match op {
                    ADD => by_size!($s, $f, ADD),
                    OR => by_size!($s, $f, OR),
                    AND => by_size!($s, $f, AND),
                    SUB => by_size!($s, $f, SUB),
                    XOR => by_size!($s, $f, XOR),
                    CMP => by_size!($s, $f, CMP),
                    _ => by_size!($s, $f, TEST),
                }
            };
        }
        return match (k0, k1) {
            (OpKind::Register, OpKind::Register) if s0.is_some() && s0 == s1 => alu_form!(alu_rr, s0),
            (OpKind::Register, OpKind::Immediate8to64 | OpKind::Immediate32to64) if s0 == Some(8) => {
                alu_form!(alu_ri, s0)
            }
            (OpKind::Register, OpKind::Immediate8to32 | OpKind::Immediate32) if s0 == Some(4) => alu_form!(alu_ri, s0),
            (OpKind::Register, OpKind::Memory) if s0.is_some() && s0 == Some(msize) => alu_form!(alu_rm, s0),
            (OpKind::Memory, OpKind::Register) if s1.is_some() && s1 == Some(msize) => alu_form!(alu_mr, s1),
            _ => None,
        };
    }
    match insn.mnemonic() {
        Mnemonic::Mov if n == 2 => match (k0, k1) {
            (OpKind::Register, OpKind::Register) if s0.is_some() && s0 == s1 => by_size!(s0, mov_rr),
            (OpKind::Register, OpKind::Memory) if s0.is_some() && s0 == Some(msize) => by_size!(s0, mov_rm),
            (OpKind::Memory, OpKind::Register) if s1.is_some() && s1 == Some(msize) => by_size!(s1, mov_mr),
            (OpKind::Register, OpKind::Immediate64 | OpKind::Immediate32to64) if s0 == Some(8) => by_size!(s0, mov_ri),
            (OpKind::Register, OpKind::Immediate32) if s0 == Some(4) => by_size!(s0, mov_ri),
            _ => None,
        },
        Mnemonic::Inc if n == 1 && k0 == OpKind::Register => by_size!(s0, incdec, true),
        Mnemonic::Dec if n == 1 && k0 == OpKind::Register => by_size!(s0, incdec, false),
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar | Mnemonic::Rol | Mnemonic::Ror
            if n == 2 && k0 == OpKind::Register && k1 == OpKind::Immediate8 =>
        {
            match insn.mnemonic() {
                Mnemonic::Shl | Mnemonic::Sal => by_size!(s0, shift_ri, SHL),
                Mnemonic::Shr => by_size!(s0, shift_ri, SHR),
                Mnemonic::Sar => by_size!(s0, shift_ri, SAR),
                Mnemonic::Rol => by_size!(s0, shift_ri, ROL),
                _ => by_size!(s0, shift_ri, ROR),
            }
        }
        Mnemonic::Imul if n == 2 && k0 == OpKind::Register => match k1 {
            OpKind::Register if s0 == s1 => by_size!(s0, imul_rr),
            OpKind::Memory if s0 == Some(msize) => by_size!(s0, imul_rm),
            _ => None,
        },
        Mnemonic::Lea if k0 == OpKind::Register => by_size!(s0, lea),
        Mnemonic::Jmp if matches!(k0, OpKind::NearBranch32 | OpKind::NearBranch64) => Some(jmp_rel as Handler),
        Mnemonic::Push if insn.code() == iced_x86::Code::Push_r64 => Some(push_r64 as Handler),
        Mnemonic::Pop if insn.code() == iced_x86::Code::Pop_r64 => Some(pop_r64 as Handler),
        _ if insn.is_jcc_short_or_near() => Some(match super::mov::condition(insn) {
            0 => jcc::<0>,
            1 => jcc::<1>,
            2 => jcc::<2>,
            3 => jcc::<3>,
            4 => jcc::<4>,
            5 => jcc::<5>,
            6 => jcc::<6>,
            7 => jcc::<7>,
            8 => jcc::<8>,
            9 => jcc::<9>,
            10 => jcc::<10>,
            11 => jcc::<11>,
            12 => jcc::<12>,
            13 => jcc::<13>,
            14 => jcc::<14>,
            _ => jcc::<15>,
        } as Handler),
        _ => None,
    }
}

/// Apply an ALU operation, record its flags, and return the result to store
/// (`None` for CMP and TEST).
#[inline(always)]
fn alu<const OP: u8, const S: u32>(cpu: &mut Cpu, a: u64, b: u64) -> Option<u64> {
    let m = mask(S);
    let (a, b) = (a & m, b & m);
    match OP {
        ADD => {
            let r = a.wrapping_add(b) & m;
            cpu.state.set_lazy(FlagOp::Add, S, r, a, b);
            Some(r)
        }
        SUB | CMP => {
            let r = a.wrapping_sub(b) & m;
            cpu.state.set_lazy(FlagOp::Sub, S, r, a, b);
            (OP == SUB).then_some(r)
        }
        _ => {
            let r = match OP {
                OR => a | b,
                XOR => a ^ b,
                _ => a & b,
            };
            cpu.state.set_lazy(FlagOp::Logic, S, r, a, b);
            (OP != TEST).then_some(r)
        }
    }
}

fn alu_rr<const OP: u8, const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let d = gi::<S>(insn.op0_register());
    let s = gi::<S>(insn.op1_register());
    let (a, b) = (cpu.state.gpr[d], cpu.state.gpr[s]);
    if let Some(r) = alu::<OP, S>(cpu, a, b) {
        cpu.state.gpr[d] = r;
    }
    Ok(())
}

fn alu_ri<const OP: u8, const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let d = gi::<S>(insn.op0_register());
    let a = cpu.state.gpr[d];
    if let Some(r) = alu::<OP, S>(cpu, a, insn.immediate(1)) {
        cpu.state.gpr[d] = r;
    }
    Ok(())
}

fn alu_rm<const OP: u8, const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let d = gi::<S>(insn.op0_register());
    let addr = ea(&cpu.state, insn);
    let b = cpu.read_mem(mem_seg(insn), addr, S)?;
    let a = cpu.state.gpr[d];
    if let Some(r) = alu::<OP, S>(cpu, a, b) {
        cpu.state.gpr[d] = r;
    }
    Ok(())
}

fn alu_mr<const OP: u8, const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let s = gi::<S>(insn.op1_register());
    let addr = ea(&cpu.state, insn);
    let seg = mem_seg(insn);
    let a = if OP == CMP || OP == TEST { cpu.read_mem(seg, addr, S)? } else { cpu.read_mem_rmw(seg, addr, S)? };
    let b = cpu.state.gpr[s];
    // Compute first, store, then commit the flags: a faulting store leaves
    // the flags as they were.
    let saved = cpu.state.lazy;
    let saved_flags = cpu.state.rflags;
    if let Some(r) = alu::<OP, S>(cpu, a, b) {
        if let Err(e) = cpu.write_mem(seg, addr, S, r) {
            cpu.state.lazy = saved;
            cpu.state.rflags = saved_flags;
            return Err(e);
        }
    }
    Ok(())
}

fn mov_rr<const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let v = cpu.state.gpr[gi::<S>(insn.op1_register())] & mask(S);
    cpu.state.gpr[gi::<S>(insn.op0_register())] = v;
    Ok(())
}

fn mov_rm<const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let addr = ea(&cpu.state, insn);
    let v = cpu.read_mem(mem_seg(insn), addr, S)?;
    cpu.state.gpr[gi::<S>(insn.op0_register())] = v;
    Ok(())
}

fn mov_mr<const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let addr = ea(&cpu.state, insn);
    let v = cpu.state.gpr[gi::<S>(insn.op1_register())];
    cpu.write_mem(mem_seg(insn), addr, S, v)
}

fn mov_ri<const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    cpu.state.gpr[gi::<S>(insn.op0_register())] = insn.immediate(1) & mask(S);
    Ok(())
}

fn incdec<const INC: bool, const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let d = gi::<S>(insn.op0_register());
    let a = cpu.state.gpr[d] & mask(S);
    let r = if INC { a.wrapping_add(1) } else { a.wrapping_sub(1) } & mask(S);
    let cf = cpu.state.flags() & CF;
    cpu.state.gpr[d] = r;
    let op = if INC { FlagOp::Inc } else { FlagOp::Dec };
    cpu.state.set_lazy_carry(op, S, r, a, 1, cf);
    Ok(())
}

fn shift_ri<const OP: u8, const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let bits = S * 8;
    let count = u32::from(insn.immediate8()) & if S == 8 { 0x3f } else { 0x1f };
    let d = gi::<S>(insn.op0_register());
    if count == 0 {
        // No flags change, but a 32-bit destination is zero-extended.
        cpu.state.gpr[d] &= mask(S);
        return Ok(());
    }
    let m = mask(S);
    let a = cpu.state.gpr[d] & m;
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let (r, cf, of) = match OP {
        SHL => {
            let r = (a << count) & m;
            let cf = (a >> (bits - count)) & 1;
            (r, cf, msb(r) ^ cf)
        }
        SHR => (a >> count, (a >> (count - 1)) & 1, msb(a)),
        SAR => {
            let sa = sext(a, S) as i64;
            (((sa >> count) as u64) & m, ((sa >> (count - 1)) as u64) & 1, 0)
        }
        ROL => {
            let c = count % bits;
            let r = if c == 0 { a } else { ((a << c) | (a >> (bits - c))) & m };
            (r, r & 1, msb(r) ^ (r & 1))
        }
        _ => {
            let c = count % bits;
            let r = if c == 0 { a } else { ((a >> c) | (a << (bits - c))) & m };
            (r, msb(r), msb(r) ^ ((r >> (bits - 2)) & 1))
        }
    };
    cpu.state.gpr[d] = r;
    let mut f = if cf != 0 { CF } else { 0 };
    if of != 0 {
        f |= OF;
    }
    if OP == ROL || OP == ROR {
        cpu.state.set_arith_flags(CF | OF, f);
    } else {
        cpu.state.set_arith_flags(ARITH, f | szp(r, S));
    }
    Ok(())
}

#[inline(always)]
fn imul_common<const S: u32>(cpu: &mut Cpu, d: usize, x: u64, y: u64) {
    let p = i128::from(sext(x, S) as i64) * i128::from(sext(y, S) as i64);
    let lo = (p as u64) & mask(S);
    cpu.state.gpr[d] = lo;
    let mut f = szp(lo, S);
    if i128::from(sext(lo, S) as i64) != p {
        f |= CF | OF;
    }
    cpu.state.set_arith_flags(ARITH, f);
}

fn imul_rr<const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let d = gi::<S>(insn.op0_register());
    let (x, y) = (cpu.state.gpr[d], cpu.state.gpr[gi::<S>(insn.op1_register())]);
    imul_common::<S>(cpu, d, x, y);
    Ok(())
}

fn imul_rm<const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let d = gi::<S>(insn.op0_register());
    let addr = ea(&cpu.state, insn);
    let y = cpu.read_mem(mem_seg(insn), addr, S)?;
    let x = cpu.state.gpr[d];
    imul_common::<S>(cpu, d, x, y);
    Ok(())
}

fn lea<const S: u32>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let a = ea(&cpu.state, insn) & mask(S);
    cpu.state.gpr[gi::<S>(insn.op0_register())] = a;
    Ok(())
}

fn jmp_rel(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let target = insn.near_branch_target();
    check_target(cpu, target)?;
    cpu.state.rip = target;
    Ok(())
}

fn jcc<const CC: u8>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.condition(CC) {
        let target = insn.near_branch_target();
        check_target(cpu, target)?;
        cpu.state.rip = target;
    }
    Ok(())
}

fn push_r64(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let v = cpu.state.gpr[gi::<8>(insn.op0_register())];
    cpu.push(8, v)
}

fn pop_r64(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let v = cpu.pop(8)?;
    cpu.state.gpr[gi::<8>(insn.op0_register())] = v;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each fast handler against the family handler for the same instruction,
    //! over random register values and flags.
    use std::sync::Arc;

    use iced_x86::code_asm::*;
    use iced_x86::Decoder;
    use mmu::GuestMemory;

    use super::*;
    use crate::cpu::Platform;
    use crate::state::{cr, seg_attr, sreg, CpuState, Segment};

    struct NoIo;
    impl Platform for NoIo {
        fn io_read(&mut self, _: u16, _: u8) -> u32 {
            0
        }
        fn io_write(&mut self, _: u16, _: u8, _: u32) {}
        fn mmio_read(&mut self, _: u64, d: &mut [u8]) {
            d.fill(0);
        }
        fn mmio_write(&mut self, _: u64, _: &[u8]) {}
    }

    fn long_mode_cpu() -> Cpu {
        let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
        // Identity map the first 2 MiB with one large page.
        mem.write_u64(0x1000, 0x2000 | 7).unwrap();
        mem.write_u64(0x2000, 0x3000 | 7).unwrap();
        mem.write_u64(0x3000, 0x83 | 4).unwrap();
        let mut cpu = Cpu::new(mem, Box::new(NoIo));
        let mut s = CpuState::reset();
        s.cr0 = cr::CR0_PE | cr::CR0_PG | cr::CR0_ET;
        s.cr4 = cr::CR4_PAE;
        s.cr3 = 0x1000;
        s.efer = cr::EFER_LME | cr::EFER_LMA;
        let code = seg_attr::P | seg_attr::S | seg_attr::TYPE_CODE | seg_attr::TYPE_RW | seg_attr::L;
        s.seg[sreg::CS] = Segment { base: 0, limit: u32::MAX, attr: code, selector: 8, _pad: [0; 3] };
        for i in [sreg::DS, sreg::ES, sreg::SS] {
            s.seg[i] = Segment {
                base: 0,
                limit: u32::MAX,
                attr: seg_attr::P | seg_attr::S | seg_attr::TYPE_RW | seg_attr::DB,
                selector: 16,
                _pad: [0; 3],
            };
        }
        cpu.set_state(s);
        cpu
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn interesting(&mut self) -> u64 {
            match self.next() % 6 {
                0 => 0,
                1 => u64::MAX,
                2 => 0x8000_0000,
                3 => 0x7fff_ffff_ffff_ffff,
                4 => self.next() & 0xff,
                _ => self.next(),
            }
        }
    }

    fn check(asm: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>) {
        let mut a = CodeAssembler::new(64).unwrap();
        asm(&mut a).unwrap();
        let bytes = a.assemble(0x1000).unwrap();
        let insn = Decoder::with_ip(64, &bytes, 0x1000, 0).decode();
        let fast = select(&insn).unwrap_or_else(|| panic!("no fast path for {insn}"));
        let slow = crate::ops::handler(insn.code());
        let mut rng = Rng(0x1234_5678_9abc_def1 ^ insn.code() as u64);
        for _ in 0..200 {
            let mut c1 = long_mode_cpu();
            for g in c1.state.gpr.iter_mut() {
                *g = rng.interesting();
            }
            c1.state.gpr[4] = 0x10_0000;
            c1.state.gpr[3] = 0x8_0000 + (rng.next() & 0xff8);
            c1.state.rflags = 2 | (rng.next() & ARITH);
            let m = rng.interesting();
            c1.mem().write_u64(c1.state.gpr[3], m).unwrap();
            let mut c2 = long_mode_cpu();
            c2.mem().write_u64(c1.state.gpr[3], m).unwrap();
            c2.state = c1.state;
            c1.state.rip = insn.next_ip();
            c2.state.rip = insn.next_ip();
            let r1 = fast(&mut c1, &insn);
            let r2 = slow(&mut c2, &insn);
            assert_eq!(r1, r2, "{insn}");
            assert_eq!(c1.state.gpr, c2.state.gpr, "{insn}");
            assert_eq!(c1.state.rip, c2.state.rip, "{insn}");
            assert_eq!(c1.state.flags(), c2.state.flags(), "{insn}");
            assert_eq!(
                c1.mem().read_u64(c1.state.gpr[3]).unwrap(),
                c2.mem().read_u64(c2.state.gpr[3]).unwrap(),
                "{insn}"
            );
        }
    }

    #[test]
    fn fast_paths_match_family_handlers() {
        check(|a| a.add(rax, rcx));
        check(|a| a.sub(eax, ecx));
        check(|a| a.xor(r9, r10));
        check(|a| a.and(edx, 0x7f));
        check(|a| a.or(rdx, -5));
        check(|a| a.cmp(rsi, rdi));
        check(|a| a.test(eax, eax));
        check(|a| a.add(rax, qword_ptr(rbx)));
        check(|a| a.sub(qword_ptr(rbx), rcx));
        check(|a| a.cmp(dword_ptr(rbx), esi));
        check(|a| a.mov(rax, rcx));
        check(|a| a.mov(eax, dword_ptr(rbx + 4)));
        check(|a| a.mov(qword_ptr(rbx), r8));
        check(|a| a.mov(rax, 0x1234_5678_9abc_def0u64));
        check(|a| a.mov(ecx, 0x8000_0001u32));
        check(|a| a.inc(rax));
        check(|a| a.dec(ecx));
        for n in [1u32, 7, 31, 33, 63] {
            check(|a| a.shl(rax, n));
            check(|a| a.shr(rax, n));
            check(|a| a.sar(rax, n));
            check(|a| a.rol(rax, n));
            check(|a| a.ror(rax, n));
            check(|a| a.shl(eax, n));
            check(|a| a.sar(eax, n));
            check(|a| a.ror(eax, n));
        }
        check(|a| a.imul_2(rax, rcx));
        check(|a| a.imul_2(eax, dword_ptr(rbx)));
        check(|a| a.lea(rax, qword_ptr(rbx + rcx * 4 + 8)));
        check(|a| a.lea(eax, dword_ptr(rbx + rcx - 3)));
        check(|a| a.push(rbx));
        check(|a| a.pop(rcx));
    }

    #[test]
    fn jcc_matches_the_family_handler() {
        for cc in 0..16u8 {
            let mut bytes = vec![0x70 | cc, 0x10];
            bytes.extend_from_slice(&[0x90; 14]);
            let insn = Decoder::with_ip(64, &bytes, 0x1000, 0).decode();
            let fast = select(&insn).unwrap();
            let slow = crate::ops::handler(insn.code());
            let mut rng = Rng(99 + u64::from(cc));
            for _ in 0..64 {
                let mut c1 = long_mode_cpu();
                c1.state.rflags = 2 | (rng.next() & ARITH);
                let mut c2 = long_mode_cpu();
                c2.state = c1.state;
                c1.state.rip = insn.next_ip();
                c2.state.rip = insn.next_ip();
                fast(&mut c1, &insn).unwrap();
                slow(&mut c2, &insn).unwrap();
                assert_eq!(c1.state.rip, c2.state.rip, "cc {cc}");
            }
        }
    }
}
