//! Bit tests, scans and counts, BMI1/BMI2 and ADX (SDM Vol. 2: BT, BTS, BTR,
//! BTC, BSF, BSR, TZCNT, LZCNT, POPCNT, ANDN, BEXTR, BLSI, BLSMSK, BLSR, BZHI,
//! MULX, PDEP, PEXT, RORX, SARX, SHLX, SHRX, ADCX, ADOX).
//!
//! BT* with a memory operand and a register bit offset address a bit string:
//! the offset is a signed operand-size value, its high part selects the
//! operand-sized unit at `EA + (offset >> log2(bits)) * size`, computed in the
//! address size. An immediate offset is taken modulo the operand size.
//!
//! Flags the SDM leaves undefined are computed from the result (SF, PF) or
//! left as they were (BT's OF, SF, AF, PF; BSF/BSR's all but ZF).

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::{ea, mask, mem_seg, read_op, reg_read, reg_write, sext, size0, write_op, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::flags::{szp, FlagOp};
use crate::state::flags::*;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Bt => |c, i| bit_test::<false>(c, i, BtOp::Test),
        Mnemonic::Bts => |c, i| bit_test::<false>(c, i, BtOp::Set),
        Mnemonic::Btr => |c, i| bit_test::<false>(c, i, BtOp::Reset),
        Mnemonic::Btc => |c, i| bit_test::<false>(c, i, BtOp::Complement),
        Mnemonic::Bsf => |c, i| bit_scan(c, i, false),
        Mnemonic::Bsr => |c, i| bit_scan(c, i, true),
        Mnemonic::Tzcnt => |c, i| count(c, i, Count::Tz),
        Mnemonic::Lzcnt => |c, i| count(c, i, Count::Lz),
        Mnemonic::Popcnt => |c, i| count(c, i, Count::Pop),
        Mnemonic::Andn => andn,
        Mnemonic::Bextr if matches!(code, Code::VEX_Bextr_r32_rm32_r32 | Code::VEX_Bextr_r64_rm64_r64) => bextr,
        Mnemonic::Blsi => |c, i| bls(c, i, Bls::I),
        Mnemonic::Blsmsk => |c, i| bls(c, i, Bls::Msk),
        Mnemonic::Blsr => |c, i| bls(c, i, Bls::R),
        Mnemonic::Bzhi => bzhi,
        Mnemonic::Mulx => mulx,
        Mnemonic::Pdep => |c, i| deposit(c, i, true),
        Mnemonic::Pext => |c, i| deposit(c, i, false),
        Mnemonic::Rorx => rorx,
        Mnemonic::Sarx => |c, i| shiftx(c, i, 0),
        Mnemonic::Shlx => |c, i| shiftx(c, i, 1),
        Mnemonic::Shrx => |c, i| shiftx(c, i, 2),
        Mnemonic::Adcx => |c, i| adx(c, i, CF),
        Mnemonic::Adox => |c, i| adx(c, i, OF),
        _ => return None,
    })
}

/// The locked forms of BTS, BTR and BTC (see [`crate::atomic`]).
pub fn locked_handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Bts => |c, i| bit_test::<true>(c, i, BtOp::Set),
        Mnemonic::Btr => |c, i| bit_test::<true>(c, i, BtOp::Reset),
        Mnemonic::Btc => |c, i| bit_test::<true>(c, i, BtOp::Complement),
        _ => return None,
    })
}

/// Address-size mask of the memory operand.
pub(crate) fn addr_mask(cpu: &Cpu, insn: &Instruction) -> u64 {
    let size = if insn.memory_base() != Register::None
        && insn.memory_base() != Register::RIP
        && insn.memory_base() != Register::EIP
    {
        insn.memory_base().size()
    } else if insn.memory_base() == Register::EIP {
        4
    } else if insn.memory_index() != Register::None {
        insn.memory_index().size()
    } else {
        match insn.memory_displ_size() {
            2 => 2,
            4 => 4,
            8 => 8,
            _ => cpu.state.code_bits() as usize / 8,
        }
    };
    match size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BtOp {
    Test,
    Set,
    Reset,
    Complement,
}

fn bit_test<const L: bool>(cpu: &mut Cpu, insn: &Instruction, op: BtOp) -> Fault<()> {
    let size = size0(insn);
    let bits = u64::from(size * 8);
    let apply = |v: u64, bit: u64| -> u64 {
        match op {
            BtOp::Test => v,
            BtOp::Set => v | (1 << bit),
            BtOp::Reset => v & !(1 << bit),
            BtOp::Complement => v ^ (1 << bit),
        }
    };
    let cf = if insn.op0_kind() == OpKind::Register {
        let r = insn.op0_register();
        let v = reg_read(&cpu.state, r);
        let bit = read_op(cpu, insn, 1, size)? & (bits - 1);
        if op != BtOp::Test {
            reg_write(&mut cpu.state, r, apply(v, bit) & mask(size));
        }
        (v >> bit) & 1
    } else {
        let seg = mem_seg(insn);
        let base = ea(&cpu.state, insn);
        let (addr, bit) = if insn.op1_kind() == OpKind::Register {
            let off = sext(reg_read(&cpu.state, insn.op1_register()), size) as i64;
            let unit = off >> bits.trailing_zeros();
            let disp = unit.wrapping_mul(i64::from(size)) as u64;
            (base.wrapping_add(disp) & addr_mask(cpu, insn), (off as u64) & (bits - 1))
        } else {
            (base, u64::from(insn.immediate8()) & (bits - 1))
        };
        let v = if op == BtOp::Test {
            cpu.read_mem(seg, addr, size)?
        } else if L {
            cpu.read_mem_locked(seg, addr, size)?
        } else {
            cpu.read_mem_rmw(seg, addr, size)?
        };
        if op != BtOp::Test {
            if L {
                cpu.write_mem_locked(seg, addr, size, apply(v, bit))?;
            } else {
                cpu.write_mem(seg, addr, size, apply(v, bit))?;
            }
        }
        (v >> bit) & 1
    };
    cpu.state.set_arith_flags(CF, if cf != 0 { CF } else { 0 });
    Ok(())
}

fn bit_scan(cpu: &mut Cpu, insn: &Instruction, reverse: bool) -> Fault<()> {
    let size = size0(insn);
    let src = read_op(cpu, insn, 1, size)? & mask(size);
    if src == 0 {
        // The destination is left unchanged (as AMD documents and silicon does).
        cpu.state.set_arith_flags(ZF, ZF);
        return Ok(());
    }
    let idx = if reverse { 63 - u64::from(src.leading_zeros()) } else { u64::from(src.trailing_zeros()) };
    write_op(cpu, insn, 0, size, idx)?;
    cpu.state.set_arith_flags(ZF, 0);
    Ok(())
}

#[derive(Clone, Copy)]
enum Count {
    Tz,
    Lz,
    Pop,
}

fn count(cpu: &mut Cpu, insn: &Instruction, kind: Count) -> Fault<()> {
    let size = size0(insn);
    let bits = u64::from(size * 8);
    let src = read_op(cpu, insn, 1, size)? & mask(size);
    let (r, f) = match kind {
        Count::Tz => {
            let r = if src == 0 { bits } else { u64::from(src.trailing_zeros()) };
            (r, if src == 0 { CF } else { 0 })
        }
        Count::Lz => {
            let r = if src == 0 { bits } else { u64::from(src.leading_zeros()) - (64 - bits) };
            (r, if src == 0 { CF } else { 0 })
        }
        Count::Pop => (u64::from(src.count_ones()), 0),
    };
    let zf = match kind {
        Count::Pop => src == 0,
        _ => r == 0,
    };
    write_op(cpu, insn, 0, size, r)?;
    cpu.state.set_arith_flags(ARITH, f | if zf { ZF } else { 0 });
    Ok(())
}

/// VEX-encoded general-purpose instructions are #UD in real and virtual-8086 mode.
fn vex_mode(cpu: &Cpu) -> Fault<()> {
    if !cpu.state.protected() || cpu.state.v86() {
        return Err(Exception::InvalidOpcode);
    }
    Ok(())
}

fn andn(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    vex_mode(cpu)?;
    let size = size0(insn);
    let a = read_op(cpu, insn, 1, size)?;
    let b = read_op(cpu, insn, 2, size)?;
    let r = !a & b & mask(size);
    write_op(cpu, insn, 0, size, r)?;
    cpu.state.set_lazy(FlagOp::Logic, size, r, a, b);
    Ok(())
}

fn bextr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    vex_mode(cpu)?;
    let size = size0(insn);
    let bits = size * 8;
    let src = read_op(cpu, insn, 1, size)?;
    let ctl = read_op(cpu, insn, 2, size)?;
    let start = (ctl & 0xff) as u32;
    let len = ((ctl >> 8) & 0xff) as u32;
    let r = if start >= bits {
        0
    } else {
        let v = src >> start;
        if len >= 64 {
            v
        } else {
            v & ((1u64 << len) - 1)
        }
    } & mask(size);
    write_op(cpu, insn, 0, size, r)?;
    cpu.state.set_lazy(FlagOp::Logic, size, r, src, ctl);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bls {
    I,
    Msk,
    R,
}

fn bls(cpu: &mut Cpu, insn: &Instruction, kind: Bls) -> Fault<()> {
    vex_mode(cpu)?;
    let size = size0(insn);
    let m = mask(size);
    let src = read_op(cpu, insn, 1, size)? & m;
    let dec = src.wrapping_sub(1) & m;
    let (r, cf) = match kind {
        Bls::I => (src.wrapping_neg() & src & m, src != 0),
        Bls::Msk => ((src ^ dec) & m, src == 0),
        Bls::R => (src & dec, src == 0),
    };
    write_op(cpu, insn, 0, size, r)?;
    let f = szp(r, size) | if cf { CF } else { 0 };
    cpu.state.set_arith_flags(ARITH, f);
    Ok(())
}

fn bzhi(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    vex_mode(cpu)?;
    let size = size0(insn);
    let bits = u64::from(size * 8);
    let src = read_op(cpu, insn, 1, size)?;
    let n = read_op(cpu, insn, 2, size)? & 0xff;
    let (r, cf) = if n < bits { (src & ((1u64 << n) - 1), 0) } else { (src & mask(size), CF) };
    write_op(cpu, insn, 0, size, r)?;
    cpu.state.set_arith_flags(ARITH, szp(r, size) | cf);
    Ok(())
}

fn mulx(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    vex_mode(cpu)?;
    let size = size0(insn);
    let a = cpu.state.gpr[2] & mask(size);
    let b = read_op(cpu, insn, 2, size)?;
    let p = u128::from(a) * u128::from(b);
    let lo = (p as u64) & mask(size);
    let hi = ((p >> (size * 8)) as u64) & mask(size);
    // When both destinations name the same register it gets the high half.
    reg_write(&mut cpu.state, insn.op1_register(), lo);
    reg_write(&mut cpu.state, insn.op0_register(), hi);
    Ok(())
}

fn deposit(cpu: &mut Cpu, insn: &Instruction, dep: bool) -> Fault<()> {
    vex_mode(cpu)?;
    let size = size0(insn);
    let src = read_op(cpu, insn, 1, size)?;
    let mut m = read_op(cpu, insn, 2, size)? & mask(size);
    let mut r = 0u64;
    let mut k = 0;
    while m != 0 {
        let bit = m.trailing_zeros();
        if dep {
            r |= ((src >> k) & 1) << bit;
        } else {
            r |= ((src >> bit) & 1) << k;
        }
        k += 1;
        m &= m - 1;
    }
    reg_write(&mut cpu.state, insn.op0_register(), r);
    Ok(())
}

fn rorx(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    vex_mode(cpu)?;
    let size = size0(insn);
    let bits = size * 8;
    let v = read_op(cpu, insn, 1, size)?;
    let c = u32::from(insn.immediate8()) & (bits - 1);
    let r = if c == 0 { v } else { ((v >> c) | (v << (bits - c))) & mask(size) };
    reg_write(&mut cpu.state, insn.op0_register(), r);
    Ok(())
}

fn shiftx(cpu: &mut Cpu, insn: &Instruction, kind: u8) -> Fault<()> {
    vex_mode(cpu)?;
    let size = size0(insn);
    let v = read_op(cpu, insn, 1, size)?;
    let c = (read_op(cpu, insn, 2, size)? & u64::from(size * 8 - 1)) as u32;
    let r = match kind {
        0 => (sext(v, size) as i64 >> c) as u64,
        1 => v << c,
        _ => v >> c,
    } & mask(size);
    reg_write(&mut cpu.state, insn.op0_register(), r);
    Ok(())
}

/// ADCX (carry in and out through CF) and ADOX (through OF).
fn adx(cpu: &mut Cpu, insn: &Instruction, flag: u64) -> Fault<()> {
    let size = size0(insn);
    let b = read_op(cpu, insn, 1, size)?;
    let a = reg_read(&cpu.state, insn.op0_register());
    let cin = u128::from(cpu.state.flags() & flag != 0);
    let sum = u128::from(a) + u128::from(b) + cin;
    let r = (sum as u64) & mask(size);
    reg_write(&mut cpu.state, insn.op0_register(), r);
    let out = (sum >> (size * 8)) & 1 != 0;
    cpu.state.set_arith_flags(flag, if out { flag } else { 0 });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::exception::Exception;
    use crate::state::flags::*;
    use iced_x86::code_asm::*;

    #[test]
    fn bt_family_registers_and_flags() {
        let mut c = long_mode();
        c.state.gpr[0] = 0b1010;
        c.state.gpr[1] = 65; // masked to 1 for 64-bit operands
        exec_asm(&mut c, |a| a.bt(rax, rcx)).unwrap();
        assert!(c.state.cf());
        exec_asm(&mut c, |a| a.btr(rax, rcx)).unwrap();
        assert_eq!(c.state.gpr[0], 0b1000);
        assert!(c.state.cf());
        exec_asm(&mut c, |a| a.bts(eax, 31)).unwrap();
        assert_eq!(c.state.gpr[0], 0x8000_0008);
        assert!(!c.state.cf());
        c.state.gpr[0] |= 0xffff_ffff_0000_0000;
        exec_asm(&mut c, |a| a.btc(eax, 3)).unwrap();
        // A 32-bit destination write zero-extends.
        assert_eq!(c.state.gpr[0], 0x8000_0000);
        assert!(c.state.cf());
        exec_asm(&mut c, |a| a.bts(ax, 17)).unwrap(); // 17 mod 16 = 1
        assert_eq!(c.state.gpr[0], 0x8000_0002);
    }

    #[test]
    fn bt_memory_bit_strings_use_signed_offsets() {
        let mut c = long_mode();
        c.mem().write_u64(DATA, 0).unwrap();
        c.mem().write_u64(DATA + 8, 0).unwrap();
        c.state.gpr[3] = DATA + 8;
        c.state.gpr[1] = (-1i64) as u64; // bit 63 of the qword below RBX
        exec_asm(&mut c, |a| a.bts(qword_ptr(rbx), rcx)).unwrap();
        assert_eq!(c.mem().read_u64(DATA).unwrap(), 1 << 63);
        c.state.gpr[1] = 70; // bit 6 of the next qword
        exec_asm(&mut c, |a| a.bts(qword_ptr(rbx), rcx)).unwrap();
        assert_eq!(c.mem().read_u64(DATA + 16).unwrap(), 1 << 6);
        // 16-bit operand: offset -2 is bit 14 of the word at RBX-2.
        c.state.gpr[1] = 0xfffe;
        exec_asm(&mut c, |a| a.btc(word_ptr(rbx), cx)).unwrap();
        assert_eq!(c.mem().read_u64(DATA).unwrap(), (1 << 63) | (1 << 62));
        exec_asm(&mut c, |a| a.bt(word_ptr(rbx), cx)).unwrap();
        assert!(c.state.cf());
        // Immediate offsets wrap within the operand.
        exec_asm(&mut c, |a| a.btr(dword_ptr(rbx + 8), 38)).unwrap();
        assert_eq!(c.mem().read_u64(DATA + 16).unwrap(), 0);
        assert!(c.state.cf());
        // LOCK BTS is allowed; LOCK BT is #UD.
        assert!(exec_bytes(&mut c, &[0xf0, 0x0f, 0xab, 0x0b]).is_ok());
        assert_eq!(exec_bytes(&mut c, &[0xf0, 0x0f, 0xa3, 0x0b]), Err(Exception::InvalidOpcode));
        // The bit string reaches an unmapped page: #PF for the unit actually touched.
        c.state.gpr[3] = UNMAPPED - 8;
        c.state.gpr[1] = 64;
        let e = exec_asm(&mut c, |a| a.bt(qword_ptr(rbx), rcx)).unwrap_err();
        assert_eq!(e, Exception::PageFault { addr: UNMAPPED, error_code: 0 });
    }

    #[test]
    fn bt_bit_string_in_16_bit_addressing_wraps() {
        let mut c = real_mode();
        c.mem().write_u16(0xfffe, 0).unwrap();
        c.state.gpr[3] = 0x0002;
        c.state.gpr[1] = (-17i64) as u64; // word at BX-4 = 0xfffe, bit 15
        exec_bytes(&mut c, &[0x0f, 0xab, 0x0f]).unwrap(); // bts [bx], cx
        assert_eq!(c.mem().read_u16(0xfffe).unwrap(), 0x8000);
    }

    #[test]
    fn bsf_bsr_tzcnt_lzcnt_popcnt() {
        let mut c = long_mode();
        c.state.gpr[1] = 0x0000_0100_0000_1000;
        exec_asm(&mut c, |a| a.bsf(rax, rcx)).unwrap();
        assert_eq!(c.state.gpr[0], 12);
        exec_asm(&mut c, |a| a.bsr(rax, rcx)).unwrap();
        assert_eq!(c.state.gpr[0], 40);
        assert_eq!(c.state.flags() & ZF, 0);
        c.state.gpr[1] = 0;
        c.state.gpr[0] = 0xdead_beef_1234_5678;
        exec_asm(&mut c, |a| a.bsf(eax, ecx)).unwrap();
        assert_eq!(c.state.gpr[0], 0xdead_beef_1234_5678);
        assert_ne!(c.state.flags() & ZF, 0);
        exec_asm(&mut c, |a| a.tzcnt(eax, ecx)).unwrap();
        assert_eq!(c.state.gpr[0], 32);
        assert_eq!(c.state.flags() & (CF | ZF), CF);
        c.state.gpr[1] = 0x8000;
        exec_asm(&mut c, |a| a.lzcnt(cx, cx)).unwrap();
        assert_eq!(c.state.gpr[1], 0);
        assert_eq!(c.state.flags() & (CF | ZF), ZF);
        c.state.gpr[1] = 1;
        exec_asm(&mut c, |a| a.lzcnt(rdx, rcx)).unwrap();
        assert_eq!(c.state.gpr[2], 63);
        c.state.gpr[1] = 0xf0f0_0000_0000_0003;
        exec_asm(&mut c, |a| a.popcnt(rdx, rcx)).unwrap();
        assert_eq!(c.state.gpr[2], 10);
        assert_eq!(c.state.flags() & ARITH, 0);
        c.state.gpr[1] = 0;
        exec_asm(&mut c, |a| a.popcnt(edx, ecx)).unwrap();
        assert_eq!(c.state.flags() & ARITH, ZF);
    }

    #[test]
    fn bmi1() {
        let mut c = long_mode();
        c.state.gpr[1] = 0b1100_1000;
        c.state.gpr[2] = 0xff;
        exec_asm(&mut c, |a| a.andn(rax, rcx, rdx)).unwrap();
        assert_eq!(c.state.gpr[0], 0b0011_0111);
        assert_eq!(c.state.flags() & (CF | OF | ZF), 0);
        exec_asm(&mut c, |a| a.blsi(rax, rcx)).unwrap();
        assert_eq!(c.state.gpr[0], 0b1000);
        assert_eq!(c.state.flags() & CF, CF);
        exec_asm(&mut c, |a| a.blsmsk(rax, rcx)).unwrap();
        assert_eq!(c.state.gpr[0], 0b1111);
        assert_eq!(c.state.flags() & CF, 0);
        exec_asm(&mut c, |a| a.blsr(eax, ecx)).unwrap();
        assert_eq!(c.state.gpr[0], 0b1100_0000);
        c.state.gpr[1] = 0;
        exec_asm(&mut c, |a| a.blsr(eax, ecx)).unwrap();
        assert_eq!(c.state.flags() & (CF | ZF), CF | ZF);
        exec_asm(&mut c, |a| a.blsmsk(eax, ecx)).unwrap();
        assert_eq!(c.state.gpr[0], 0xffff_ffff);
        c.state.gpr[1] = 0x1234_5678_9abc_def0;
        c.state.gpr[2] = (16 << 8) | 8; // 16 bits from bit 8
        exec_asm(&mut c, |a| a.bextr(rax, rcx, rdx)).unwrap();
        assert_eq!(c.state.gpr[0], 0xbcde);
        c.state.gpr[2] = (200 << 8) | 60;
        exec_asm(&mut c, |a| a.bextr(rax, rcx, rdx)).unwrap();
        assert_eq!(c.state.gpr[0], 1);
        c.state.gpr[2] = 64;
        exec_asm(&mut c, |a| a.bextr(rax, rcx, rdx)).unwrap();
        assert_eq!(c.state.gpr[0], 0);
        assert_ne!(c.state.flags() & ZF, 0);
    }

    #[test]
    fn bmi2() {
        let mut c = long_mode();
        c.state.gpr[1] = u64::MAX;
        c.state.gpr[2] = 12;
        exec_asm(&mut c, |a| a.bzhi(rax, rcx, rdx)).unwrap();
        assert_eq!(c.state.gpr[0], 0xfff);
        assert_eq!(c.state.flags() & CF, 0);
        c.state.gpr[2] = 0x140; // index 0x40: no change, CF
        exec_asm(&mut c, |a| a.bzhi(eax, ecx, edx)).unwrap();
        assert_eq!(c.state.gpr[0], 0xffff_ffff);
        assert_eq!(c.state.flags() & CF, CF);
        c.state.gpr[2] = 0xffff_ffff_0000_0003;
        c.state.gpr[1] = 0x1_0000_0001;
        exec_asm(&mut c, |a| a.mulx(rbx, rax, rcx)).unwrap();
        assert_eq!((c.state.gpr[3], c.state.gpr[0]), (0x1_0000_0000, 0x2_0000_0003));
        exec_asm(&mut c, |a| a.mulx(ebx, ebx, ecx)).unwrap();
        assert_eq!(c.state.gpr[3], 0); // 3 * 1: the high half wins
        c.state.gpr[1] = 0b1011;
        c.state.gpr[2] = 0xf0f0;
        exec_asm(&mut c, |a| a.pdep(rax, rcx, rdx)).unwrap();
        assert_eq!(c.state.gpr[0], 0b1011_0000);
        c.state.gpr[1] = 0xabcd;
        c.state.gpr[2] = 0x0ff0;
        exec_asm(&mut c, |a| a.pext(eax, ecx, edx)).unwrap();
        assert_eq!(c.state.gpr[0], 0xbc);
        c.state.gpr[1] = 0x8000_0001;
        exec_asm(&mut c, |a| a.rorx(eax, ecx, 1)).unwrap();
        assert_eq!(c.state.gpr[0], 0xc000_0000);
        c.state.gpr[2] = 33; // masked to 1 for 32-bit
        exec_asm(&mut c, |a| a.sarx(eax, ecx, edx)).unwrap();
        assert_eq!(c.state.gpr[0], 0xc000_0000);
        exec_asm(&mut c, |a| a.shrx(eax, ecx, edx)).unwrap();
        assert_eq!(c.state.gpr[0], 0x4000_0000);
        exec_asm(&mut c, |a| a.shlx(rax, rcx, rdx)).unwrap();
        assert_eq!(c.state.gpr[0], 0x2_0000_0000);
        // Flags are untouched by the BMI2 shifts.
        c.state.set_arith_flags(ARITH, CF | ZF);
        exec_asm(&mut c, |a| a.shlx(rax, rcx, rdx)).unwrap();
        assert_eq!(c.state.flags() & ARITH, CF | ZF);
    }

    #[test]
    fn vex_bmi_is_undefined_in_real_mode() {
        let mut c = real_mode();
        // andn eax, ebx, ecx (VEX.LZ.0F38.W0 F2 /r)
        assert_eq!(exec_bytes(&mut c, &[0xc4, 0xe2, 0x60, 0xf2, 0xc1]), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn adcx_adox_use_separate_carries() {
        let mut c = long_mode();
        c.state.set_arith_flags(ARITH, CF | ZF);
        c.state.gpr[0] = u64::MAX;
        c.state.gpr[1] = 0;
        exec_asm(&mut c, |a| a.adcx(rax, rcx)).unwrap();
        assert_eq!(c.state.gpr[0], 0);
        assert_eq!(c.state.flags() & ARITH, CF | ZF);
        exec_asm(&mut c, |a| a.adox(rax, rcx)).unwrap();
        assert_eq!(c.state.flags() & ARITH, CF | ZF);
        c.state.gpr[0] = 0xffff_ffff;
        c.state.gpr[1] = 1;
        exec_asm(&mut c, |a| a.adox(eax, ecx)).unwrap();
        assert_eq!(c.state.gpr[0], 0);
        assert_eq!(c.state.flags() & (OF | CF), OF | CF);
        exec_asm(&mut c, |a| a.adox(eax, ecx)).unwrap();
        assert_eq!(c.state.gpr[0], 2);
        assert_eq!(c.state.flags() & OF, 0);
    }
}
