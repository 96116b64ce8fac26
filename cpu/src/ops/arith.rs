//! Integer arithmetic and logic (SDM Vol. 2: ADD, ADC, SUB, SBB, CMP, AND, OR,
//! XOR, TEST, INC, DEC, NEG, NOT, MUL, IMUL, DIV, IDIV, CBW family, XADD,
//! CMPXCHG, CMPXCHG8B, CMPXCHG16B, and the flag instructions
//! CLC/STC/CMC/LAHF/SAHF).

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::{check_lock, mask, read_dst, read_op, reg_write, sext, size0, write_dst, write_op, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::flags::{szp, FlagOp};
use crate::state::flags::*;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Add => add::<false>,
        Mnemonic::Adc => adc::<false>,
        Mnemonic::Sub => sub::<false>,
        Mnemonic::Sbb => sbb::<false>,
        Mnemonic::Cmp => cmp::<false>,
        Mnemonic::And => and::<false>,
        Mnemonic::Or => or::<false>,
        Mnemonic::Xor => xor::<false>,
        Mnemonic::Test => test::<false>,
        Mnemonic::Inc => inc::<false>,
        Mnemonic::Dec => dec::<false>,
        Mnemonic::Neg => neg::<false>,
        Mnemonic::Not => not::<false>,
        Mnemonic::Mul => mul,
        Mnemonic::Imul => imul,
        Mnemonic::Div => div,
        Mnemonic::Idiv => idiv,
        Mnemonic::Cbw | Mnemonic::Cwde | Mnemonic::Cdqe => cbw,
        Mnemonic::Cwd | Mnemonic::Cdq | Mnemonic::Cqo => cwd,
        Mnemonic::Clc => |c, _| flag_op(c, CF, 0),
        Mnemonic::Stc => |c, _| flag_op(c, CF, CF),
        Mnemonic::Cmc => cmc,
        Mnemonic::Lahf => lahf,
        Mnemonic::Sahf => sahf,
        Mnemonic::Xadd => xadd::<false>,
        Mnemonic::Cmpxchg => cmpxchg::<false>,
        Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => cmpxchg_wide::<false>,
        _ => return None,
    })
}

/// The locked forms of the instructions here that a LOCK prefix may
/// precede (see [`crate::atomic`]).
pub fn locked_handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Add => add::<true>,
        Mnemonic::Adc => adc::<true>,
        Mnemonic::Sub => sub::<true>,
        Mnemonic::Sbb => sbb::<true>,
        Mnemonic::And => and::<true>,
        Mnemonic::Or => or::<true>,
        Mnemonic::Xor => xor::<true>,
        Mnemonic::Inc => inc::<true>,
        Mnemonic::Dec => dec::<true>,
        Mnemonic::Neg => neg::<true>,
        Mnemonic::Not => not::<true>,
        Mnemonic::Xadd => xadd::<true>,
        Mnemonic::Cmpxchg => cmpxchg::<true>,
        Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => cmpxchg_wide::<true>,
        _ => return None,
    })
}

/// Read op0 and op1 at op0's size.
#[inline]
fn operands(cpu: &mut Cpu, insn: &Instruction) -> Fault<(u32, u64, u64)> {
    let size = size0(insn);
    let b = read_op(cpu, insn, 1, size)?;
    let a = read_op(cpu, insn, 0, size)?;
    Ok((size, a, b))
}

/// Operands of an instruction that writes op0: op0 is read as a write
/// (locked with `L`).
#[inline]
fn operands_rmw<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<(u32, u64, u64)> {
    let size = size0(insn);
    let b = read_op(cpu, insn, 1, size)?;
    let a = read_dst::<L>(cpu, insn, 0, size)?;
    Ok((size, a, b))
}

macro_rules! binop {
    ($name:ident, $op:expr, $compute:expr, $store:expr) => {
        fn $name<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
            check_lock(insn)?;
            let (size, a, b) = if $store { operands_rmw::<L>(cpu, insn)? } else { operands(cpu, insn)? };
            let r: u64 = $compute(a, b) & mask(size);
            if $store {
                write_dst::<L>(cpu, insn, 0, size, r)?;
            }
            cpu.state.set_lazy($op, size, r, a, b);
            Ok(())
        }
    };
}

binop!(add, FlagOp::Add, |a: u64, b: u64| a.wrapping_add(b), true);
binop!(sub, FlagOp::Sub, |a: u64, b: u64| a.wrapping_sub(b), true);
binop!(cmp, FlagOp::Sub, |a: u64, b: u64| a.wrapping_sub(b), false);
binop!(and, FlagOp::Logic, |a: u64, b: u64| a & b, true);
binop!(or, FlagOp::Logic, |a: u64, b: u64| a | b, true);
binop!(xor, FlagOp::Logic, |a: u64, b: u64| a ^ b, true);
binop!(test, FlagOp::Logic, |a: u64, b: u64| a & b, false);

fn adc<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_lock(insn)?;
    let (size, a, b) = operands_rmw::<L>(cpu, insn)?;
    let c = u64::from(cpu.state.cf());
    let r = a.wrapping_add(b).wrapping_add(c) & mask(size);
    write_dst::<L>(cpu, insn, 0, size, r)?;
    cpu.state.set_lazy_carry(FlagOp::Adc, size, r, a, b, c);
    Ok(())
}

fn sbb<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_lock(insn)?;
    let (size, a, b) = operands_rmw::<L>(cpu, insn)?;
    let c = u64::from(cpu.state.cf());
    let r = a.wrapping_sub(b).wrapping_sub(c) & mask(size);
    write_dst::<L>(cpu, insn, 0, size, r)?;
    cpu.state.set_lazy_carry(FlagOp::Sbb, size, r, a, b, c);
    Ok(())
}

fn inc<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_lock(insn)?;
    let size = size0(insn);
    let a = read_dst::<L>(cpu, insn, 0, size)?;
    let r = a.wrapping_add(1) & mask(size);
    write_dst::<L>(cpu, insn, 0, size, r)?;
    let cf = cpu.state.flags() & CF;
    cpu.state.set_lazy_carry(FlagOp::Inc, size, r, a, 1, cf);
    Ok(())
}

fn dec<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_lock(insn)?;
    let size = size0(insn);
    let a = read_dst::<L>(cpu, insn, 0, size)?;
    let r = a.wrapping_sub(1) & mask(size);
    write_dst::<L>(cpu, insn, 0, size, r)?;
    let cf = cpu.state.flags() & CF;
    cpu.state.set_lazy_carry(FlagOp::Dec, size, r, a, 1, cf);
    Ok(())
}

fn neg<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_lock(insn)?;
    let size = size0(insn);
    let a = read_dst::<L>(cpu, insn, 0, size)?;
    let r = 0u64.wrapping_sub(a) & mask(size);
    write_dst::<L>(cpu, insn, 0, size, r)?;
    cpu.state.set_lazy(FlagOp::Sub, size, r, 0, a);
    Ok(())
}

fn not<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_lock(insn)?;
    let size = size0(insn);
    let a = read_dst::<L>(cpu, insn, 0, size)?;
    write_dst::<L>(cpu, insn, 0, size, !a & mask(size))
}

/// The accumulator pair for MUL/DIV of `size`: (low register value, high).
fn acc(cpu: &Cpu, size: u32) -> (u64, u64) {
    let g = &cpu.state.gpr;
    match size {
        1 => (g[0] & 0xff, (g[0] >> 8) & 0xff),
        _ => (g[0] & mask(size), g[2] & mask(size)),
    }
}

fn set_acc(cpu: &mut Cpu, size: u32, lo: u64, hi: u64) {
    use iced_x86::Register as R;
    match size {
        1 => reg_write(&mut cpu.state, R::AX, (lo & 0xff) | ((hi & 0xff) << 8)),
        2 => {
            reg_write(&mut cpu.state, R::AX, lo);
            reg_write(&mut cpu.state, R::DX, hi);
        }
        4 => {
            reg_write(&mut cpu.state, R::EAX, lo);
            reg_write(&mut cpu.state, R::EDX, hi);
        }
        _ => {
            cpu.state.gpr[0] = lo;
            cpu.state.gpr[2] = hi;
        }
    }
}

/// Flags after MUL/IMUL: CF = OF = `overflow`; SF, ZF, PF from the low result
/// (architecturally undefined; this matches common silicon), AF cleared.
fn mul_flags(cpu: &mut Cpu, size: u32, lo: u64, overflow: bool) {
    let mut f = szp(lo, size);
    if overflow {
        f |= CF | OF;
    }
    cpu.state.set_arith_flags(ARITH, f);
}

fn mul(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    let src = read_op(cpu, insn, 0, size)?;
    let (a, _) = acc(cpu, size);
    let p = u128::from(a) * u128::from(src);
    let bits = size * 8;
    let lo = (p as u64) & mask(size);
    let hi = ((p >> bits) as u64) & mask(size);
    set_acc(cpu, size, lo, hi);
    mul_flags(cpu, size, lo, hi != 0);
    Ok(())
}

fn imul(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    match insn.op_count() {
        1 => {
            let src = sext(read_op(cpu, insn, 0, size)?, size) as i64;
            let (a, _) = acc(cpu, size);
            let p = i128::from(sext(a, size) as i64) * i128::from(src);
            let bits = size * 8;
            let lo = (p as u64) & mask(size);
            let hi = ((p >> bits) as u64) & mask(size);
            set_acc(cpu, size, lo, hi);
            let fits = i128::from(sext(lo, size) as i64) == p;
            mul_flags(cpu, size, lo, !fits);
        }
        n => {
            let (x, y) = if n == 2 {
                (read_op(cpu, insn, 0, size)?, read_op(cpu, insn, 1, size)?)
            } else {
                (read_op(cpu, insn, 1, size)?, read_op(cpu, insn, 2, size)?)
            };
            let p = i128::from(sext(x, size) as i64) * i128::from(sext(y, size) as i64);
            let lo = (p as u64) & mask(size);
            write_op(cpu, insn, 0, size, lo)?;
            let fits = i128::from(sext(lo, size) as i64) == p;
            mul_flags(cpu, size, lo, !fits);
        }
    }
    Ok(())
}

fn div(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    let d = read_op(cpu, insn, 0, size)?;
    if d == 0 {
        return Err(Exception::DivideError);
    }
    let (lo, hi) = acc(cpu, size);
    let n = (u128::from(hi) << (size * 8)) | u128::from(lo);
    let q = n / u128::from(d);
    let r = n % u128::from(d);
    if q > u128::from(mask(size)) {
        return Err(Exception::DivideError);
    }
    set_acc(cpu, size, q as u64, r as u64);
    Ok(())
}

fn idiv(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = size0(insn);
    let d = sext(read_op(cpu, insn, 0, size)?, size) as i64;
    if d == 0 {
        return Err(Exception::DivideError);
    }
    let (lo, hi) = acc(cpu, size);
    let bits = size * 8;
    let raw = (u128::from(hi) << bits) | u128::from(lo);
    // Sign-extend the 2*size-byte dividend.
    let n = ((raw << (128 - 2 * bits)) as i128) >> (128 - 2 * bits);
    let q = n / i128::from(d);
    let r = n % i128::from(d);
    let max = i128::from((mask(size) >> 1) as i64);
    if q > max || q < -max - 1 {
        return Err(Exception::DivideError);
    }
    set_acc(cpu, size, (q as u64) & mask(size), (r as u64) & mask(size));
    Ok(())
}

/// CBW/CWDE/CDQE: sign-extend the low half of the accumulator into all of it.
fn cbw(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = match insn.code() {
        Code::Cbw => 2,
        Code::Cwde => 4,
        _ => 8,
    };
    let v = sext(cpu.state.gpr[0] & mask(size / 2), size / 2) & mask(size);
    let r = match size {
        2 => iced_x86::Register::AX,
        4 => iced_x86::Register::EAX,
        _ => iced_x86::Register::RAX,
    };
    reg_write(&mut cpu.state, r, v);
    Ok(())
}

/// CWD/CDQ/CQO: sign of the accumulator into rDX.
fn cwd(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = match insn.code() {
        Code::Cwd => 2,
        Code::Cdq => 4,
        _ => 8,
    };
    let neg = cpu.state.gpr[0] & (1u64 << (size * 8 - 1)) != 0;
    let (_, hi_reg) = match size {
        2 => ((), iced_x86::Register::DX),
        4 => ((), iced_x86::Register::EDX),
        _ => ((), iced_x86::Register::RDX),
    };
    reg_write(&mut cpu.state, hi_reg, if neg { mask(size) } else { 0 });
    Ok(())
}

fn flag_op(cpu: &mut Cpu, m: u64, v: u64) -> Fault<()> {
    cpu.state.set_arith_flags(m, v);
    Ok(())
}

fn cmc(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    let f = cpu.state.flags();
    cpu.state.rflags = f ^ CF;
    Ok(())
}

fn lahf(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    let f = cpu.state.flags() & 0xff;
    reg_write(&mut cpu.state, iced_x86::Register::AH, f);
    Ok(())
}

fn sahf(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    let ah = (cpu.state.gpr[0] >> 8) & (CF | PF | AF | ZF | SF);
    cpu.state.set_arith_flags(CF | PF | AF | ZF | SF, ah);
    Ok(())
}

fn xadd<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_lock(insn)?;
    let (size, a, b) = operands_rmw::<L>(cpu, insn)?;
    let r = a.wrapping_add(b) & mask(size);
    // The sum goes to the destination last, so XADD r, r leaves the sum; a
    // memory destination is written first so a fault leaves the source intact.
    if insn.op0_kind() == OpKind::Memory {
        write_dst::<L>(cpu, insn, 0, size, r)?;
        write_op(cpu, insn, 1, size, a)?;
    } else {
        write_op(cpu, insn, 1, size, a)?;
        write_op(cpu, insn, 0, size, r)?;
    }
    cpu.state.set_lazy(FlagOp::Add, size, r, a, b);
    Ok(())
}

fn cmpxchg<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_lock(insn)?;
    let (size, dest, src) = operands_rmw::<L>(cpu, insn)?;
    let a = cpu.state.gpr[0] & mask(size);
    let r = a.wrapping_sub(dest) & mask(size);
    if a == dest {
        write_dst::<L>(cpu, insn, 0, size, src)?;
    } else {
        // The destination is written back even on failure (a locked RMW;
        // locked, an exchange of the value with itself, which confirms
        // that the value the accumulator gets was current).
        if insn.op0_kind() == OpKind::Memory {
            write_dst::<L>(cpu, insn, 0, size, dest)?;
        }
        let acc_reg = match size {
            1 => iced_x86::Register::AL,
            2 => iced_x86::Register::AX,
            4 => iced_x86::Register::EAX,
            _ => iced_x86::Register::RAX,
        };
        reg_write(&mut cpu.state, acc_reg, dest);
    }
    cpu.state.set_lazy(FlagOp::Sub, size, r, a, dest);
    Ok(())
}

/// CMPXCHG8B m64 and CMPXCHG16B m128: compare rDX:rAX with the operand; equal
/// stores rCX:rBX and sets ZF, else loads rDX:rAX and clears ZF. The operand is
/// written in both cases (a locked read-modify-write), so a read-only page
/// faults even when the comparison fails. CMPXCHG16B needs a 16-byte aligned
/// operand (#GP(0)).
///
/// Locked (`L`), the comparison and the store are one compare-exchange of
/// all 8 or 16 bytes, whose mismatch gives the value rDX:rAX receive.
fn cmpxchg_wide<const L: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let half: u32 = if insn.mnemonic() == Mnemonic::Cmpxchg16b { 8 } else { 4 };
    let seg = super::mem_seg(insn);
    let a = super::ea(&cpu.state, insn);
    let lin = cpu.linear(seg, a, u64::from(2 * half), true)?;
    if half == 8 && lin & 15 != 0 {
        return Err(crate::exception::GP0);
    }
    cpu.check_access(lin, 2 * half, true)?;
    if L {
        return cmpxchg_wide_locked(cpu, seg, a, half);
    }
    let mut buf = [0u8; 16];
    let n = (2 * half) as usize;
    // The operand is always written: check both halves as a write first.
    cpu.read_mem_rmw(seg, a, half)?;
    cpu.read_mem_rmw(seg, a.wrapping_add(u64::from(half)), half)?;
    cpu.read_mem_buf(seg, a, &mut buf[..n])?;
    let m = mask(half);
    let (lo, hi) = if half == 8 {
        (
            u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default()),
        )
    } else {
        let v = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
        (v & m, v >> 32)
    };
    let g = &cpu.state.gpr;
    let equal = lo == g[0] & m && hi == g[2] & m;
    let (new_lo, new_hi) = if equal { (g[3] & m, g[1] & m) } else { (lo, hi) };
    let mut out = [0u8; 16];
    if half == 8 {
        out[..8].copy_from_slice(&new_lo.to_le_bytes());
        out[8..].copy_from_slice(&new_hi.to_le_bytes());
    } else {
        out[..8].copy_from_slice(&(new_lo | (new_hi << 32)).to_le_bytes());
    }
    cpu.write_mem_buf(seg, a, &out[..n])?;
    if !equal {
        // 32-bit register writes zero-extend in 64-bit mode.
        cpu.state.gpr[0] = lo;
        cpu.state.gpr[2] = hi;
    }
    cpu.state.set_arith_flags(ZF, if equal { ZF } else { 0 });
    Ok(())
}

/// The locked CMPXCHG8B/16B at `seg:a` (its segment, alignment and
/// breakpoint checks made): both halves are checked as writes as the
/// unlocked form checks them, then one compare-exchange of the whole
/// operand.
fn cmpxchg_wide_locked(cpu: &mut Cpu, seg: usize, a: u64, half: u32) -> Fault<()> {
    cpu.probe_write(seg, a, half)?;
    cpu.probe_write(seg, a.wrapping_add(u64::from(half)), half)?;
    let (_, Some(phys)) = cpu.probe_write_at(seg, a, 2 * half)? else {
        // Across a page (CMPXCHG8B only: CMPXCHG16B is aligned).
        cpu.lock_exclusive();
        return Ok(());
    };
    let m = mask(half);
    let g = &cpu.state.gpr;
    let (cur_lo, cur_hi, new_lo, new_hi) = (g[0] & m, g[2] & m, g[3] & m, g[1] & m);
    let found = if half == 8 {
        let cur = u128::from(cur_lo) | (u128::from(cur_hi) << 64);
        let new = u128::from(new_lo) | (u128::from(new_hi) << 64);
        cpu.mem().compare_exchange_u128(phys, cur, new).map(|r| r.map(drop).map_err(|v| (v as u64, (v >> 64) as u64)))
    } else {
        let cur = cur_lo | (cur_hi << 32);
        cpu.mem()
            .compare_exchange(phys, 8, cur, new_lo | (new_hi << 32))
            .map(|r| r.map(drop).map_err(|v| (v & m, v >> 32)))
    };
    let equal = match found {
        Ok(Ok(_)) => true,
        Ok(Err((lo, hi))) => {
            // 32-bit register writes zero-extend in 64-bit mode.
            cpu.state.gpr[0] = lo;
            cpu.state.gpr[2] = hi;
            false
        }
        Err(_) => {
            cpu.lock_exclusive();
            return Ok(());
        }
    };
    cpu.lock_done();
    cpu.state.set_arith_flags(ZF, if equal { ZF } else { 0 });
    Ok(())
}

#[cfg(test)]
mod wide_tests {
    use super::super::testutil::*;
    use crate::exception::{Exception, GP0};
    use crate::state::flags::ZF;

    #[test]
    fn cmpxchg8b_success_and_failure() {
        let mut c = prot_mode();
        c.mem().write_u64(DATA, 0x1111_1111_2222_2222).unwrap();
        c.state.gpr[7] = DATA;
        c.state.gpr[0] = 0x2222_2222;
        c.state.gpr[2] = 0x1111_1111;
        c.state.gpr[3] = 0xbbbb_bbbb;
        c.state.gpr[1] = 0xcccc_cccc;
        exec_bytes(&mut c, &[0xf0, 0x0f, 0xc7, 0x0f]).unwrap(); // lock cmpxchg8b [edi]
        assert_eq!(c.mem().read_u64(DATA).unwrap(), 0xcccc_cccc_bbbb_bbbb);
        assert_ne!(c.state.flags() & ZF, 0);
        exec_bytes(&mut c, &[0x0f, 0xc7, 0x0f]).unwrap();
        assert_eq!(c.state.flags() & ZF, 0);
        assert_eq!((c.state.gpr[0], c.state.gpr[2]), (0xbbbb_bbbb, 0xcccc_cccc));
        assert_eq!(c.mem().read_u64(DATA).unwrap(), 0xcccc_cccc_bbbb_bbbb);
        // The register form does not exist.
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0xc7, 0xcf]), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn cmpxchg16b_alignment_and_write_on_failure() {
        let mut c = long_mode();
        c.mem().write_u64(DATA, 1).unwrap();
        c.mem().write_u64(DATA + 8, 2).unwrap();
        c.state.gpr[7] = DATA;
        c.state.gpr[0] = 1;
        c.state.gpr[2] = 2;
        c.state.gpr[3] = 0xaaaa_0000_0000_0003;
        c.state.gpr[1] = 0xbbbb_0000_0000_0004;
        let insn = [0xf0, 0x48, 0x0f, 0xc7, 0x0f]; // lock cmpxchg16b [rdi]
        exec_bytes(&mut c, &insn).unwrap();
        assert_ne!(c.state.flags() & ZF, 0);
        assert_eq!(c.mem().read_u64(DATA + 8).unwrap(), 0xbbbb_0000_0000_0004);
        exec_bytes(&mut c, &insn).unwrap();
        assert_eq!(c.state.flags() & ZF, 0);
        assert_eq!((c.state.gpr[0], c.state.gpr[2]), (0xaaaa_0000_0000_0003, 0xbbbb_0000_0000_0004));
        c.state.gpr[7] = DATA + 8;
        assert_eq!(exec_bytes(&mut c, &insn), Err(GP0));
        // A read-only page faults as a write even when the comparison fails.
        c.state.gpr[7] = READONLY;
        c.state.gpr[0] = 99;
        assert_eq!(exec_bytes(&mut c, &insn), Err(Exception::PageFault { addr: READONLY, error_code: 3 }));
        assert_eq!(c.state.gpr[0], 99);
        // CMPXCHG8B in 64-bit mode zero-extends EAX and EDX on failure.
        c.state.gpr[7] = DATA;
        c.state.gpr[0] = u64::MAX;
        c.state.gpr[2] = u64::MAX;
        exec_bytes(&mut c, &[0x0f, 0xc7, 0x0f]).unwrap();
        assert_eq!((c.state.gpr[0], c.state.gpr[2]), (0x0000_0003, 0xaaaa_0000));
    }
}
