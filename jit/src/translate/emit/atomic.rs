//! Guest atomics when other host threads share guest memory: LOCK
//! read-modify-writes and XCHG with memory as one host atomic on the
//! operand's host address, MFENCE as a host fence; and CMPXCHG8B/16B, one
//! host compare-and-swap on any number of threads.
//!
//! The operand's host address comes from the TLB entry for writing, as a
//! store's does: a miss, MMIO, a page with code, a read-only shadow page or
//! a page crossing fails the test, and so does a host address that is not
//! naturally aligned (Cranelift's atomics promise nothing there, and an
//! AArch64 host faults). Those run through the interpreter's locked
//! handler ([`Tx::atomic_addr`]; its plain one for CMPXCHG8B/16B without
//! LOCK), which makes them host atomics too or stops the other processors,
//! and the region leaves after them.
//!
//! Cranelift's `atomic_rmw` and `atomic_cas` are sequentially consistent,
//! full barriers, as a locked instruction is. They return the old value,
//! from which the flags are those the instruction's plain translation
//! gives: the same lazy records. NEG, ADC and SBB, which `atomic_rmw` has
//! no operation for, are a loop of `atomic_cas` from the value last seen
//! until the value is still the one the result was computed from. LOCK
//! CMPXCHG and CMPXCHG8B/16B that fail write nothing (the processor writes
//! the old value back, which no other processor can tell from no write:
//! the page was checked writable).
//!
//! BTS, BTR and BTC by a register address a bit string: the signed offset
//! selects the unit (`EA + (offset >> log2(bits)) * size`), whose address
//! is tested as any other. CMPXCHG8B and CMPXCHG16B (locked or not) are one
//! compare-and-swap of 64 or 128 bits; the 128-bit one exists only where
//! Cranelift lowers it
//! ([`cas128`](crate::translate::classify::cas128)), and CMPXCHG16B of a
//! misaligned operand fails the alignment test: the interpreter raises its
//! #GP.

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
        if op == AtomicOp::CmpxchgWide {
            self.emit_cmpxchg_wide(insn, size, rip);
            return false;
        }
        let m = mask(size);
        // The register or immediate operand (masked to the size).
        let bv = match src {
            Opnd::Reg(r) => self.read_reg(r),
            Opnd::Imm(v) => self.iconst(v & m),
            Opnd::Mem => unreachable!("classify_atomic takes no memory source"),
        };
        let addr = match (op, src) {
            (AtomicOp::Bt(_), Opnd::Reg(_)) => {
                // A bit string: the unit the offset selects.
                let o = self.bit_string_offset(insn, bv, size);
                self.atomic_addr_at(cpu::ops::mem_seg(insn), o, size, rip)
            }
            _ => self.atomic_addr(insn, size, rip),
        };
        match op {
            AtomicOp::Alu(alu @ (Alu::Adc | Alu::Sbb)) => {
                let cin = self.cf();
                let adc = alu == Alu::Adc;
                let old = self.cas_loop(size, addr, |tx, a| {
                    let t = if adc { tx.b.ins().iadd(a, bv) } else { tx.b.ins().isub(a, bv) };
                    if adc {
                        tx.b.ins().iadd(t, cin)
                    } else {
                        tx.b.ins().isub(t, cin)
                    }
                });
                let t = if adc { self.b.ins().iadd(old, bv) } else { self.b.ins().isub(old, bv) };
                let r = if adc { self.b.ins().iadd(t, cin) } else { self.b.ins().isub(t, cin) };
                let r = self.b.ins().band_imm_s(r, m as i64);
                self.set_lazy(if adc { FlagOp::Adc } else { FlagOp::Sbb }, size, r, old, bv, Some(cin));
            }
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
            AtomicOp::Neg => {
                let old = self.cas_loop(size, addr, |tx, a| tx.b.ins().ineg(a));
                let r = self.b.ins().ineg(old);
                let r = self.b.ins().band_imm_s(r, m as i64);
                let zero = self.iconst(0);
                self.set_lazy(FlagOp::Sub, size, r, zero, old, None);
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
                // The bit within the unit: an immediate, or the low bits of
                // the register offset.
                let bits = u64::from(size * 8);
                let (old, bit) = match src {
                    Opnd::Imm(v) => {
                        let bit = v & (bits - 1);
                        let bitm = 1u64 << bit;
                        let (rop, operand) = match bt {
                            BtOp::Set => (AtomicRmwOp::Or, bitm),
                            BtOp::Reset => (AtomicRmwOp::And, !bitm & m),
                            BtOp::Complement => (AtomicRmwOp::Xor, bitm),
                            BtOp::Test => unreachable!("BT is no atomic"),
                        };
                        let operand = self.iconst(operand);
                        (self.rmw(rop, size, addr, operand), self.iconst(bit))
                    }
                    _ => {
                        let bit = self.b.ins().band_imm_s(bv, (bits - 1) as i64);
                        let one = self.iconst(1);
                        let bitm = self.b.ins().ishl(one, bit);
                        let (rop, operand) = match bt {
                            BtOp::Set => (AtomicRmwOp::Or, bitm),
                            BtOp::Reset => (AtomicRmwOp::And, self.b.ins().bnot(bitm)),
                            BtOp::Complement => (AtomicRmwOp::Xor, bitm),
                            BtOp::Test => unreachable!("BT is no atomic"),
                        };
                        (self.rmw(rop, size, addr, operand), bit)
                    }
                };
                let cf = self.b.ins().ushr(old, bit);
                let cf = self.b.ins().band_imm_s(cf, 1);
                // Only CF changes.
                self.set_partial(flags::ARITH & !flags::CF, cf);
            }
            AtomicOp::CmpxchgWide => unreachable!("emitted above"),
        }
        false
    }

    /// CMPXCHG8B (`size` 8) or CMPXCHG16B (16), locked or not: one
    /// compare-and-swap of rDX:rAX with rCX:rBX. Equal sets ZF; not equal
    /// clears it and loads rDX:rAX with what memory held (zero-extended
    /// from 32 bits for CMPXCHG8B). No other flag changes.
    fn emit_cmpxchg_wide(&mut self, insn: &Instruction, size: u32, rip: u64) {
        let addr = self.atomic_addr(insn, size, rip);
        let (rax, rdx) = (self.gpr64(0), self.gpr64(2));
        let (rbx, rcx) = (self.gpr64(3), self.gpr64(1));
        let (eq, lo, hi) = if size == 16 {
            let e = self.b.ins().iconcat(rax, rdx);
            let x = self.b.ins().iconcat(rbx, rcx);
            let old = self.b.ins().atomic_cas(guest_flags(), addr, e, x);
            let (lo, hi) = self.b.ins().isplit(old);
            let eq_lo = self.b.ins().icmp(IntCC::Equal, lo, rax);
            let eq_hi = self.b.ins().icmp(IntCC::Equal, hi, rdx);
            (self.b.ins().band(eq_lo, eq_hi), lo, hi)
        } else {
            let pair = |tx: &mut Self, lo: Value, hi: Value| {
                let l = tx.b.ins().band_imm_s(lo, 0xffff_ffff);
                let h = tx.b.ins().ishl_imm_s(hi, 32);
                tx.b.ins().bor(l, h)
            };
            let e = pair(self, rax, rdx);
            let x = pair(self, rbx, rcx);
            let old = self.b.ins().atomic_cas(guest_flags(), addr, e, x);
            let eq = self.b.ins().icmp(IntCC::Equal, old, e);
            let lo = self.b.ins().band_imm_s(old, 0xffff_ffff);
            let hi = self.b.ins().ushr_imm_s(old, 32);
            (eq, lo, hi)
        };
        let a = self.b.ins().select(eq, rax, lo);
        let d = self.b.ins().select(eq, rdx, hi);
        self.set_gpr64(0, a);
        self.set_gpr64(2, d);
        let zf = self.b.ins().uextend(types::I64, eq);
        let zf = self.b.ins().ishl_imm_s(zf, i64::from(flags::ZF.trailing_zeros()));
        self.set_partial(flags::ARITH & !flags::ZF, zf);
    }

    /// A read-modify-write of `size` bytes at the host address `addr` that
    /// `atomic_rmw` has no operation for: `f` computes the new value from
    /// the old one (both zero-extended; bits above the size ignored), and a
    /// compare-and-swap stores it if memory still holds the old one, else
    /// `f` runs again on what it found. The old value the update replaced.
    fn cas_loop(&mut self, size: u32, addr: Value, f: impl Fn(&mut Self, Value) -> Value) -> Value {
        let ty = int_type(size);
        let first = self.b.ins().atomic_load(ty, guest_flags(), addr);
        let head = self.b.create_block();
        let cur = self.b.append_block_param(head, ty);
        let done = self.b.create_block();
        self.b.ins().jump(head, &[first.into()]);
        // (Sealed once the edge back into it is made.)
        self.b.switch_to_block(head);
        let a = if size == 8 { cur } else { self.b.ins().uextend(types::I64, cur) };
        let new = f(self, a);
        let new = if size == 8 { new } else { self.b.ins().ireduce(ty, new) };
        let found = self.b.ins().atomic_cas(guest_flags(), addr, cur, new);
        let same = self.b.ins().icmp(IntCC::Equal, found, cur);
        self.b.ins().brif(same, done, &[], head, &[found.into()]);
        self.b.seal_block(head);
        self.enter_block(done);
        a
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
