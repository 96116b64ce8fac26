//! Shifts and rotates (SDM Vol. 2: SAL/SAR/SHL/SHR, ROL/ROR/RCL/RCR, SHLD/SHRD).
//!
//! The count is masked to 5 bits (6 for 64-bit operands). A masked count of
//! zero changes no flags. CF is the last bit shifted out; OF is defined for a
//! count of one and computed the same way for larger counts (where the SDM
//! leaves it undefined).

use iced_x86::{Code, Instruction, Mnemonic};

use super::{check_lock, mask, read_op, read_op_rmw, size0, write_op, Handler};
use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::flags::szp;
use crate::state::flags::*;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Shl | Mnemonic::Sal => |c, i| shift(c, i, Kind::Shl),
        Mnemonic::Shr => |c, i| shift(c, i, Kind::Shr),
        Mnemonic::Sar => |c, i| shift(c, i, Kind::Sar),
        Mnemonic::Rol => |c, i| shift(c, i, Kind::Rol),
        Mnemonic::Ror => |c, i| shift(c, i, Kind::Ror),
        Mnemonic::Rcl => |c, i| shift(c, i, Kind::Rcl),
        Mnemonic::Rcr => |c, i| shift(c, i, Kind::Rcr),
        Mnemonic::Shld => |c, i| double(c, i, true),
        Mnemonic::Shrd => |c, i| double(c, i, false),
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
    Rcl,
    Rcr,
}

fn count_of(cpu: &mut Cpu, insn: &Instruction, size: u32) -> Fault<u32> {
    let raw = if insn.op_count() < 2 { 1 } else { read_op(cpu, insn, 1, 1)? as u32 };
    Ok(raw & if size == 8 { 0x3f } else { 0x1f })
}

/// A shift by a masked count of zero changes no flags, but a 32-bit register
/// destination is written back, which zeroes bits 63:32.
fn zero_count(cpu: &mut Cpu, insn: &Instruction, size: u32, a: u64) -> Fault<()> {
    if size == 4 && insn.op0_kind() == iced_x86::OpKind::Register {
        write_op(cpu, insn, 0, size, a)?;
    }
    Ok(())
}

fn shift(cpu: &mut Cpu, insn: &Instruction, kind: Kind) -> Fault<()> {
    check_lock(insn)?;
    let size = size0(insn);
    let bits = size * 8;
    let count = count_of(cpu, insn, size)?;
    let a = read_op_rmw(cpu, insn, 0, size)?;
    if count == 0 {
        // A 32-bit register destination is still written (zero-extended).
        return zero_count(cpu, insn, size, a);
    }
    let m = mask(size);
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let cf_in = u64::from(cpu.state.cf());
    let (r, cf, of, szp_flags) = match kind {
        Kind::Shl => {
            let r = if count >= bits { 0 } else { (a << count) & m };
            let cf = if count > bits { 0 } else { (a >> (bits - count)) & 1 };
            (r, cf, msb(r) ^ cf, true)
        }
        Kind::Shr => {
            let r = if count >= bits { 0 } else { a >> count };
            let cf = if count > bits { 0 } else { (a >> (count - 1)) & 1 };
            (r, cf, msb(a), true)
        }
        Kind::Sar => {
            let sa = super::sext(a, size) as i64;
            let c = count.min(bits - 1 + 1).min(63);
            let r = ((sa >> c.min(63)) as u64) & m;
            let cf = ((sa >> (count - 1).min(63)) as u64) & 1;
            (r, cf, 0, true)
        }
        Kind::Rol => {
            let c = count % bits;
            let r = if c == 0 { a } else { ((a << c) | (a >> (bits - c))) & m };
            let cf = r & 1;
            (r, cf, msb(r) ^ cf, false)
        }
        Kind::Ror => {
            let c = count % bits;
            let r = if c == 0 { a } else { ((a >> c) | (a << (bits - c))) & m };
            let cf = msb(r);
            (r, cf, msb(r) ^ ((r >> (bits - 2)) & 1), false)
        }
        Kind::Rcl | Kind::Rcr => {
            let c = count % (bits + 1);
            if c == 0 {
                return Ok(());
            }
            // Rotate through a (bits+1)-bit value with CF on top.
            let wide = (u128::from(cf_in) << bits) | u128::from(a);
            let n = bits + 1;
            let wm = (1u128 << n) - 1;
            let rot = if kind == Kind::Rcl {
                ((wide << c) | (wide >> (n - c))) & wm
            } else {
                ((wide >> c) | (wide << (n - c))) & wm
            };
            let r = (rot as u64) & m;
            let cf = ((rot >> bits) & 1) as u64;
            let of = if kind == Kind::Rcl { msb(r) ^ cf } else { msb(r) ^ ((r >> (bits - 2)) & 1) };
            (r, cf, of, false)
        }
    };
    write_op(cpu, insn, 0, size, r)?;
    let mut f = if cf != 0 { CF } else { 0 };
    if of != 0 {
        f |= OF;
    }
    if szp_flags {
        f |= szp(r, size);
        cpu.state.set_arith_flags(ARITH, f);
    } else {
        cpu.state.set_arith_flags(CF | OF, f);
    }
    Ok(())
}

fn double(cpu: &mut Cpu, insn: &Instruction, left: bool) -> Fault<()> {
    let size = size0(insn);
    let bits = size * 8;
    let raw = read_op(cpu, insn, 2, 1)? as u32;
    let count = raw & if size == 8 { 0x3f } else { 0x1f };
    let a = read_op_rmw(cpu, insn, 0, size)?;
    let b = read_op(cpu, insn, 1, size)?;
    if count == 0 {
        return zero_count(cpu, insn, size, a);
    }
    let m = mask(size);
    // For 16-bit operands a count above 16 is undefined; shift the 48-bit
    // concatenation as silicon does for counts up to 31.
    let (r, cf) = if left {
        let wide = (u128::from(a) << bits) | u128::from(b);
        let sh = wide << count;
        (((sh >> bits) as u64) & m, ((wide >> (2 * bits - count).min(127)) & 1) as u64)
    } else {
        let wide = (u128::from(b) << bits) | u128::from(a);
        ((((wide >> count) as u64) & m), ((wide >> (count - 1)) & 1) as u64)
    };
    write_op(cpu, insn, 0, size, r)?;
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let mut f = szp(r, size);
    if cf != 0 {
        f |= CF;
    }
    if msb(r) != msb(a) {
        f |= OF;
    }
    cpu.state.set_arith_flags(ARITH, f);
    Ok(())
}
