//! Guest atomics when other host threads share guest memory: LOCK
//! read-modify-writes and XCHG with memory as one host atomic on the
//! operand's host address, MFENCE as a host fence.
//!
//! The operand's host address comes from the TLB entry for writing, as a
//! store's does: a miss, MMIO, a page with code, a read-only shadow page or
//! a page crossing fails the test, and so does a host address that is not
//! naturally aligned (Cranelift's atomics promise nothing there, and an
//! AArch64 host faults). Those run through the interpreter's locked
//! handler ([`Tx::atomic_addr`]), which makes them host atomics too or
//! stops the other processors, and the region leaves after them.
//!
//! Cranelift's `atomic_rmw` and `atomic_cas` are sequentially consistent,
//! full barriers, as a locked instruction is. They return the old value,
//! from which the flags are those the instruction's plain translation
//! gives: the same lazy records. LOCK CMPXCHG that fails writes nothing
//! (the processor writes the old value back, which no other processor can
//! tell from no write: the page was checked writable).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AtomicRmwOp, InstBuilder, Value};
use iced_x86::{Instruction, Register};

use cpu::flags::FlagOp;
use cpu::state::flags;

use super::mask;
use crate::translate::classify::{reg, Alu, AtomicOp, BtOp, Form, Opnd};
use crate::translate::flags::Known;
use crate::translate::mem::int_type;
use crate::translate::state::{guest_flags, Tx};

impl Tx<'_, '_> {
    /// Translate [`Form::Atomic`] or [`Form::Fence`]. Never ends the guest
    /// block.
    pub(super) fn emit_atomic(&mut self, f: &Form, insn: &Instruction, rip: u64) -> bool {
        let (op, src, size) = match *f {
            Form::Fence => {
                self.b.ins().fence();
                return false;
            }
            Form::Atomic { op, src, size } => (op, src, size),
            _ => unreachable!("not an atomic form: {f:?}"),
        };
        let m = mask(size);
        // The register or immediate operand (masked to the size).
        let bv = match src {
            Opnd::Reg(r) => self.read_reg(r),
            Opnd::Imm(v) => self.iconst(v & m),
            Opnd::Mem => unreachable!("classify_atomic takes no memory source"),
        };
        let addr = self.atomic_addr(insn, size, rip);
        match op {
            AtomicOp::Alu(alu) => {
                let (rop, flag_op) = match alu {
                    Alu::Add => (AtomicRmwOp::Add, FlagOp::Add),
                    Alu::Sub => (AtomicRmwOp::Sub, FlagOp::Sub),
                    Alu::And => (AtomicRmwOp::And, FlagOp::Logic),
                    Alu::Or => (AtomicRmwOp::Or, FlagOp::Logic),
                    Alu::Xor => (AtomicRmwOp::Xor, FlagOp::Logic),
                    _ => unreachable!("classify_atomic takes no {alu:?}"),
                };
                let old = self.rmw(rop, size, addr, bv);
                let r = match alu {
                    Alu::Add => self.b.ins().iadd(old, bv),
                    Alu::Sub => self.b.ins().isub(old, bv),
                    Alu::And => self.b.ins().band(old, bv),
                    Alu::Or => self.b.ins().bor(old, bv),
                    _ => self.b.ins().bxor(old, bv),
                };
                let r = self.b.ins().band_imm_s(r, m as i64);
                self.set_lazy(flag_op, size, r, old, bv, None);
            }
            AtomicOp::IncDec(inc) => {
                let one = self.iconst(1);
                let old = self.rmw(if inc { AtomicRmwOp::Add } else { AtomicRmwOp::Sub }, size, addr, one);
                let r = if inc { self.b.ins().iadd_imm_s(old, 1) } else { self.b.ins().iadd_imm_s(old, -1) };
                let r = self.b.ins().band_imm_s(r, m as i64);
                // The CF before, as the plain INC/DEC keeps it.
                let deferred = self.known == Known::Unknown;
                let cf = if deferred { self.iconst(0) } else { self.cf() };
                self.set_lazy(if inc { FlagOp::Inc } else { FlagOp::Dec }, size, r, old, one, Some(cf));
                self.cin_deferred = deferred;
            }
            AtomicOp::Not => {
                // NOT changes no flag.
                let ones = self.iconst(m);
                self.rmw(AtomicRmwOp::Xor, size, addr, ones);
            }
            AtomicOp::Xadd => {
                let Opnd::Reg(rg) = src else { unreachable!("XADD's source is a register") };
                let old = self.rmw(AtomicRmwOp::Add, size, addr, bv);
                let r = self.b.ins().iadd(old, bv);
                let r = self.b.ins().band_imm_s(r, m as i64);
                self.write_reg(rg, old);
                self.set_lazy(FlagOp::Add, size, r, old, bv, None);
            }
            AtomicOp::Xchg => {
                let Opnd::Reg(rg) = src else { unreachable!("XCHG's source is a register") };
                let old = self.rmw(AtomicRmwOp::Xchg, size, addr, bv);
                self.write_reg(rg, old);
            }
            AtomicOp::Cmpxchg => {
                let acc = reg(match size {
                    1 => Register::AL,
                    2 => Register::AX,
                    4 => Register::EAX,
                    _ => Register::RAX,
                })
                .expect("a GPR");
                let a = self.read_reg(acc);
                let ty = int_type(size);
                let (e, x) =
                    if size == 8 { (a, bv) } else { (self.b.ins().ireduce(ty, a), self.b.ins().ireduce(ty, bv)) };
                let old = self.b.ins().atomic_cas(guest_flags(), addr, e, x);
                let d = if size == 8 { old } else { self.b.ins().uextend(types::I64, old) };
                let eq = self.b.ins().icmp(IntCC::Equal, a, d);
                let r = self.b.ins().isub(a, d);
                let r = self.b.ins().band_imm_s(r, m as i64);
                // Not equal: the accumulator takes the destination.
                let cur = self.gpr64(acc.idx);
                let new = self.merged(acc, d);
                let v = self.b.ins().select(eq, cur, new);
                self.set_gpr64(acc.idx, v);
                self.set_lazy(FlagOp::Sub, size, r, a, d, None);
            }
            AtomicOp::Bt(bt) => {
                // An immediate bit offset, within the operand.
                let Opnd::Imm(v) = src else { unreachable!("classify_atomic takes immediate bit offsets") };
                let bit = v & u64::from(size * 8 - 1);
                let bitm = 1u64 << bit;
                let (rop, operand) = match bt {
                    BtOp::Set => (AtomicRmwOp::Or, bitm),
                    BtOp::Reset => (AtomicRmwOp::And, !bitm & m),
                    BtOp::Complement => (AtomicRmwOp::Xor, bitm),
                    BtOp::Test => unreachable!("BT is no atomic"),
                };
                let operand = self.iconst(operand);
                let old = self.rmw(rop, size, addr, operand);
                let cf = self.b.ins().ushr_imm_s(old, bit as i64);
                let cf = self.b.ins().band_imm_s(cf, 1);
                // Only CF changes.
                self.set_partial(flags::ARITH & !flags::CF, cf);
            }
        }
        false
    }

    /// `atomic_rmw` of `size` bytes at the host address `addr` with `x`
    /// (bits above the size ignored): the old value, zero-extended.
    fn rmw(&mut self, op: AtomicRmwOp, size: u32, addr: Value, x: Value) -> Value {
        let ty = int_type(size);
        if size == 8 {
            return self.b.ins().atomic_rmw(ty, guest_flags(), op, addr, x);
        }
        let x = self.b.ins().ireduce(ty, x);
        let old = self.b.ins().atomic_rmw(ty, guest_flags(), op, addr, x);
        self.b.ins().uextend(types::I64, old)
    }
}
