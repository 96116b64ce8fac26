//! Instruction handlers, one module per instruction family, and the table that
//! maps every iced-x86 [`Code`] to its handler.
//!
//! A handler is a plain `fn(&mut Cpu, &Instruction) -> Fault<()>`: state lives
//! in [`CpuState`], memory goes through the MMU, and RIP has already been
//! advanced to the next instruction. The JIT calls the same handlers for
//! instructions it does not translate. Codes without a handler raise #UD and
//! are logged once by mnemonic.
//!
//! The read-modify-write handlers are generic over `const L: bool`: the
//! `L = true` instance is their locked form ([`locked_handler`]), whose
//! destination accesses are atomic against other processors (see
//! [`crate::atomic`]); [`select`] gives locked instructions [`locked`].

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use iced_x86::{Code, CodeSize, Instruction, Mnemonic, OpKind, Register};

use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::state::CpuState;

pub mod arith;
pub mod bits;
pub mod branch;
pub mod debug;
pub mod desc;
pub mod fast;
pub mod misc;
pub mod mov;
#[cfg(test)]
mod pkeys_tests;
pub mod shift;
pub mod sse;
pub mod stack;
pub mod string;
pub mod system;
pub mod task;
/// Test scaffolding, for this crate's tests and (with the `testutil`
/// feature) other tiers' tests.
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod x87;
pub mod xsave;

/// An instruction handler.
pub type Handler = fn(&mut Cpu, &Instruction) -> Fault<()>;

fn undefined(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    cpu.unimplemented(insn)
}

fn invalid(_cpu: &mut Cpu, _insn: &Instruction) -> Fault<()> {
    Err(Exception::InvalidOpcode)
}

struct Table {
    handlers: Vec<Handler>,
    implemented: Vec<bool>,
    /// The locked forms ([`locked_handler`]).
    locked: Vec<Option<Handler>>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let codes: Vec<Code> = Code::values().collect();
        let n = codes.len();
        let mut handlers: Vec<Handler> = vec![undefined; n];
        let mut implemented = vec![false; n];
        let mut locked = vec![None; n];
        for (i, slot) in handlers.iter_mut().enumerate() {
            let code: Code = codes[i];
            let h = if code == Code::INVALID { Some(invalid as Handler) } else { lookup(code) };
            if let Some(h) = h {
                *slot = h;
                implemented[i] = true;
                locked[i] = lookup_locked(code);
            }
        }
        Table { handlers, implemented, locked }
    })
}

/// The family handler for a code, if any family implements it.
fn lookup(code: Code) -> Option<Handler> {
    arith::handler(code)
        .or_else(|| mov::handler(code))
        .or_else(|| shift::handler(code))
        .or_else(|| stack::handler(code))
        .or_else(|| branch::handler(code))
        .or_else(|| string::handler(code))
        .or_else(|| system::handler(code))
        .or_else(|| bits::handler(code))
        .or_else(|| misc::handler(code))
        .or_else(|| desc::handler(code))
        .or_else(|| x87::handler(code))
        .or_else(|| sse::handler(code))
        .or_else(|| xsave::handler(code))
}

/// The locked form of the read-modify-write family handler for a code, if
/// it has one: the same handler whose destination accesses are a locked
/// read and a compare-exchange (see [`crate::atomic`]).
fn lookup_locked(code: Code) -> Option<Handler> {
    arith::locked_handler(code).or_else(|| bits::locked_handler(code)).or_else(|| mov::locked_handler(code))
}

/// The handler for `code`.
#[inline]
pub fn handler(code: Code) -> Handler {
    table().handlers[code as usize]
}

/// The locked form of the handler for `code` (see [`crate::atomic`]):
/// the instructions a LOCK prefix may precede (ADD, ADC, SUB, SBB, AND,
/// OR, XOR, INC, DEC, NEG, NOT, BTS, BTR, BTC, XADD, CMPXCHG, CMPXCHG8B,
/// CMPXCHG16B) and XCHG.
#[inline]
pub fn locked_handler(code: Code) -> Option<Handler> {
    table().locked[code as usize]
}

/// Whether `insn` is a locked instruction: LOCK-prefixed, or XCHG with a
/// memory operand (locked with or without the prefix).
#[inline]
pub fn is_locked(insn: &Instruction) -> bool {
    insn.has_lock_prefix()
        || (insn.mnemonic() == Mnemonic::Xchg && (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory))
}

/// The handler for one decoded instruction: [`locked`] for a locked
/// instruction with a locked form, else a specialized fast path for its
/// operand forms when one exists, else the family handler for its code.
#[inline]
pub fn select(insn: &Instruction) -> Handler {
    if is_locked(insn) && locked_handler(insn.code()).is_some() {
        return locked;
    }
    fast::select(insn).unwrap_or_else(|| handler(insn.code()))
}

/// The handler of locked instructions: their locked form, run until its
/// update of memory is one host atomic, or with the other processors
/// stopped (see [`crate::atomic`]).
pub fn locked(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    match locked_handler(insn.code()) {
        Some(h) => cpu.run_locked(h, insn),
        None => handler(insn.code())(cpu, insn),
    }
}

/// Whether `code` has a real handler.
pub fn implemented(code: Code) -> bool {
    table().implemented[code as usize]
}

/// Instructions after which decoding must restart (they change the mode, the
/// code segment, paging, or the interrupt flag).
pub fn ends_block(code: Code) -> bool {
    system::ends_block(code.mnemonic())
}

/// Log an unimplemented instruction once per mnemonic.
pub fn log_unimplemented(insn: &Instruction) {
    static SEEN: Mutex<Option<HashSet<Mnemonic>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(insn.mnemonic()) {
        tracing::warn!(target: "cpu", "unimplemented instruction {:?} ({:?}) at {:#x}: raising #UD", insn.mnemonic(), insn.code(), insn.ip());
    }
}

// ---- operands -----------------------------------------------------------------

const AL: usize = Register::AL as usize;
const R15L: usize = Register::R15L as usize;
const AH: usize = Register::AH as usize;
const BH: usize = Register::BH as usize;
const SPL: usize = Register::SPL as usize;
const AX: usize = Register::AX as usize;
const R15W: usize = Register::R15W as usize;
const EAX: usize = Register::EAX as usize;
const R15D: usize = Register::R15D as usize;
const RAX: usize = Register::RAX as usize;
const R15: usize = Register::R15 as usize;

/// Read a general register by its iced name.
#[inline]
pub fn reg_read(s: &CpuState, r: Register) -> u64 {
    let v = r as usize;
    match v {
        RAX..=R15 => s.gpr[v - RAX],
        EAX..=R15D => s.gpr[v - EAX] & 0xffff_ffff,
        AX..=R15W => s.gpr[v - AX] & 0xffff,
        AH..=BH => (s.gpr[v - AH] >> 8) & 0xff,
        AL..=R15L => {
            let i = if v >= SPL { v - SPL + 4 } else { v - AL };
            s.gpr[i] & 0xff
        }
        _ => 0,
    }
}

/// Write a general register with the architectural size rules: 8- and 16-bit
/// writes merge, 32-bit writes zero the upper half, 64-bit writes replace.
#[inline]
pub fn reg_write(s: &mut CpuState, r: Register, val: u64) {
    let v = r as usize;
    match v {
        RAX..=R15 => s.gpr[v - RAX] = val,
        EAX..=R15D => s.gpr[v - EAX] = val & 0xffff_ffff,
        AX..=R15W => {
            let g = &mut s.gpr[v - AX];
            *g = (*g & !0xffff) | (val & 0xffff);
        }
        AH..=BH => {
            let g = &mut s.gpr[v - AH];
            *g = (*g & !0xff00) | ((val & 0xff) << 8);
        }
        AL..=R15L => {
            let i = if v >= SPL { v - SPL + 4 } else { v - AL };
            let g = &mut s.gpr[i];
            *g = (*g & !0xff) | (val & 0xff);
        }
        _ => {}
    }
}

/// Mask of `size` bytes.
#[inline]
pub fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// Sign-extend the low `size` bytes of `v`.
#[inline]
pub fn sext(v: u64, size: u32) -> u64 {
    let sh = 64 - size * 8;
    (((v << sh) as i64) >> sh) as u64
}

/// Effective address (offset within the segment) of the memory operand.
#[inline]
pub fn ea(s: &CpuState, insn: &Instruction) -> u64 {
    let base = insn.memory_base();
    let index = insn.memory_index();
    let mut a = insn.memory_displacement64();
    if base == Register::RIP {
        return a;
    }
    if base == Register::EIP {
        return a & 0xffff_ffff;
    }
    let mut asize = 0;
    if base != Register::None {
        a = a.wrapping_add(reg_read(s, base));
        asize = base.size();
    }
    if index != Register::None {
        a = a.wrapping_add(reg_read(s, index).wrapping_mul(u64::from(insn.memory_index_scale())));
        asize = index.size();
    }
    match asize {
        2 => a & 0xffff,
        4 => a & 0xffff_ffff,
        _ => a,
    }
}

/// Segment register number of the memory operand.
///
/// In 64-bit mode the bases of ES, CS, DS and SS are 0 and the segment only
/// decides between #SS(0) and #GP(0) for a non-canonical address: an SS
/// override selects #SS(0), an ES, CS or DS override is ignored and the
/// default segment decides (SS for an RSP or RBP base), as the CPU does.
#[inline]
pub fn mem_seg(insn: &Instruction) -> usize {
    let seg = insn.memory_segment();
    let seg = if insn.code_size() == CodeSize::Code64 && matches!(seg, Register::ES | Register::CS | Register::DS) {
        match insn.memory_base() {
            Register::RSP | Register::RBP | Register::ESP | Register::EBP => Register::SS,
            _ => Register::DS,
        }
    } else {
        seg
    };
    seg as usize - Register::ES as usize
}

/// Size in bytes of operand `i`.
#[inline]
pub fn op_size(insn: &Instruction, i: u32) -> u32 {
    match insn.op_kind(i) {
        OpKind::Register => insn.op_register(i).size() as u32,
        OpKind::Memory => insn.memory_size().size() as u32,
        OpKind::Immediate8 | OpKind::Immediate8_2nd => 1,
        OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
        OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
        _ => 8,
    }
}

/// Read operand `i` as `size` bytes (zero-extended).
#[inline]
pub fn read_op(cpu: &mut Cpu, insn: &Instruction, i: u32, size: u32) -> Fault<u64> {
    match insn.op_kind(i) {
        OpKind::Register => Ok(reg_read(&cpu.state, insn.op_register(i))),
        OpKind::Memory => {
            let a = ea(&cpu.state, insn);
            cpu.read_mem(mem_seg(insn), a, size)
        }
        _ => Ok(insn.immediate(i) & mask(size)),
    }
}

/// Read operand `i` that the instruction will also write: a memory operand
/// is checked as a write first (see [`Cpu::read_mem_rmw`]).
#[inline]
pub fn read_op_rmw(cpu: &mut Cpu, insn: &Instruction, i: u32, size: u32) -> Fault<u64> {
    match insn.op_kind(i) {
        OpKind::Memory => {
            let a = ea(&cpu.state, insn);
            cpu.read_mem_rmw(mem_seg(insn), a, size)
        }
        _ => read_op(cpu, insn, i, size),
    }
}

/// Read the destination operand `i` of a read-modify-write, locked (`L`,
/// `Cpu::read_mem_locked`) or as [`read_op_rmw`] reads it.
#[inline(always)]
pub fn read_dst<const L: bool>(cpu: &mut Cpu, insn: &Instruction, i: u32, size: u32) -> Fault<u64> {
    if L && insn.op_kind(i) == OpKind::Memory {
        let a = ea(&cpu.state, insn);
        return cpu.read_mem_locked(mem_seg(insn), a, size);
    }
    read_op_rmw(cpu, insn, i, size)
}

/// Write the destination operand `i` of a read-modify-write that
/// [`read_dst`] read: locked (`L`, a compare-exchange,
/// `Cpu::write_mem_locked`) or as [`write_op`] writes it.
#[inline(always)]
pub fn write_dst<const L: bool>(cpu: &mut Cpu, insn: &Instruction, i: u32, size: u32, v: u64) -> Fault<()> {
    if L && insn.op_kind(i) == OpKind::Memory {
        let a = ea(&cpu.state, insn);
        return cpu.write_mem_locked(mem_seg(insn), a, size, v);
    }
    write_op(cpu, insn, i, size, v)
}

/// Write operand `i` (register or memory) as `size` bytes.
#[inline]
pub fn write_op(cpu: &mut Cpu, insn: &Instruction, i: u32, size: u32, v: u64) -> Fault<()> {
    match insn.op_kind(i) {
        OpKind::Register => {
            reg_write(&mut cpu.state, insn.op_register(i), v);
            Ok(())
        }
        OpKind::Memory => {
            let a = ea(&cpu.state, insn);
            cpu.write_mem(mem_seg(insn), a, size, v)
        }
        _ => Err(Exception::InvalidOpcode),
    }
}

/// Operand size for instructions whose size is their first operand's.
#[inline]
pub fn size0(insn: &Instruction) -> u32 {
    op_size(insn, 0)
}

/// Check that a LOCK prefix is allowed (memory destination); #UD otherwise.
#[inline]
pub fn check_lock(insn: &Instruction) -> Fault<()> {
    if insn.has_lock_prefix() && insn.op0_kind() != OpKind::Memory {
        return Err(Exception::InvalidOpcode);
    }
    Ok(())
}

/// Write the accumulator (AL, AX, EAX or RAX) with the size rules.
pub fn write_acc(cpu: &mut Cpu, size: u32, v: u64) {
    let r = match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    reg_write(&mut cpu.state, r, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_mapping_matches_iced() {
        let mut s = CpuState::reset();
        for (i, g) in s.gpr.iter_mut().enumerate() {
            *g = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1) ^ 0x0807_0605_0403_0201;
        }
        for r in Register::values() {
            if !r.is_gpr() {
                continue;
            }
            let full = r.full_register() as usize - RAX;
            let g = s.gpr[full];
            let expect = match r {
                Register::AH | Register::CH | Register::DH | Register::BH => (g >> 8) & 0xff,
                _ => g & mask(r.size() as u32),
            };
            assert_eq!(reg_read(&s, r), expect, "{r:?}");
        }
        reg_write(&mut s, Register::EAX, 0xffff_ffff_1234);
        assert_eq!(s.gpr[0], 0xffff_1234);
        reg_write(&mut s, Register::AH, 0xab);
        assert_eq!(s.gpr[0], 0xffff_ab34);
        reg_write(&mut s, Register::SIL, 0x77);
        assert_eq!(s.gpr[6] & 0xff, 0x77);
    }

    #[test]
    fn table_has_core_codes() {
        for c in [Code::Add_rm32_r32, Code::Mov_r64_rm64, Code::Jne_rel8_64, Code::Syscall, Code::Out_DX_AL] {
            assert!(implemented(c), "{c:?}");
        }
    }
}
