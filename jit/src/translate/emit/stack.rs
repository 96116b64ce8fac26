//! The stack: PUSH, POP, LEAVE and PUSHF, and the stack accesses calls and
//! returns share.

use cranelift_codegen::ir::{types, InstBuilder, Value};
use iced_x86::{Instruction, Register};

use cpu::state::{flags, sreg};

use crate::translate::classify::{reg, Form};
use crate::translate::state::{mem_flags, Tx, RFLAGS_OFF};

impl Tx<'_, '_> {
    /// The stack's width in bytes: 8 in 64-bit code, else 4.
    pub(super) fn stack_size(&self) -> u32 {
        if self.bits == 64 {
            8
        } else {
            4
        }
    }

    /// Translate the stack form `f`: PUSH, POP, LEAVE, PUSHF. True if it
    /// ended the guest block.
    pub(super) fn emit_stack(&mut self, f: &Form, insn: &Instruction, rip: u64, next: u64) -> bool {
        let stack = self.stack_size();
        match *f {
            Form::Pushf => {
                // VM and RF are pushed as zero.
                self.sync();
                let f = self.materialize();
                let st = self.state;
                let rf = self.b.ins().load(types::I64, mem_flags(), st, RFLAGS_OFF);
                let rest = self.b.ins().band_imm_s(rf, !((flags::ARITH | flags::VM | flags::RF) as i64));
                let image = self.b.ins().bor(rest, f);
                let leave = self.push(image, stack, rip);
                self.after_store(leave, next);
            }
            Form::Push { src, size } => {
                let v = self.read(src, insn, size, rip);
                let leave = self.push(v, size, rip);
                self.after_store(leave, next);
            }
            Form::Pop { dst } => {
                let (v, _) = self.stack_read(0, stack, rip);
                self.sp_add(i64::from(stack));
                self.write_reg(dst, v);
            }
            Form::Leave => {
                // RSP = RBP, then POP RBP; a fault leaves RSP as it was.
                let bp = self.gpr64(5);
                let (v, _) = self.stack_read_from(bp, 0, stack, rip);
                let sp = self.gpr64(4);
                let above = self.b.ins().iadd_imm_s(bp, i64::from(stack));
                let newsp = self.sp_merge(sp, above);
                self.set_gpr64(4, newsp);
                let r = reg(if stack == 8 { Register::RBP } else { Register::EBP }).expect("a GPR");
                self.write_reg(r, v);
            }
            _ => unreachable!("not a stack form: {f:?}"),
        }
        false
    }

    /// The stack-pointer mask: 64-bit code uses RSP; 32-bit code (SS.B set,
    /// as the flat check requires) uses ESP.
    fn sp_merge(&mut self, old: Value, new_low: Value) -> Value {
        if self.bits == 64 {
            new_low
        } else {
            let hi = self.b.ins().band_imm_s(old, !0xffff_ffffi64);
            let lo = self.b.ins().band_imm_s(new_low, 0xffff_ffff);
            self.b.ins().bor(hi, lo)
        }
    }

    pub(super) fn sp_add(&mut self, n: i64) {
        let sp = self.gpr64(4);
        let new = self.b.ins().iadd_imm_s(sp, n);
        let v = self.sp_merge(sp, new);
        self.set_gpr64(4, v);
    }

    /// Read `size` bytes at SS:RSP+depth.
    pub(super) fn stack_read(&mut self, depth: i64, size: u32, rip: u64) -> (Value, Value) {
        let sp = self.gpr64(4);
        self.stack_read_from(sp, depth, size, rip)
    }

    fn stack_read_from(&mut self, sp: Value, depth: i64, size: u32, rip: u64) -> (Value, Value) {
        let a = self.b.ins().iadd_imm_s(sp, depth);
        let a = if self.bits == 64 { a } else { self.b.ins().band_imm_s(a, 0xffff_ffff) };
        self.load_at(sreg::SS, a, size, rip, false)
    }

    /// PUSH: store at SS:RSP-size, then move RSP (a fault leaves RSP).
    pub(super) fn push(&mut self, v: Value, size: u32, rip: u64) -> Option<Value> {
        let sp = self.gpr64(4);
        let new = self.b.ins().iadd_imm_s(sp, -i64::from(size));
        let a = if self.bits == 64 { new } else { self.b.ins().band_imm_s(new, 0xffff_ffff) };
        let leave = self.store_at(sreg::SS, a, size, v, rip, None);
        let nsp = self.sp_merge(sp, new);
        self.set_gpr64(4, nsp);
        leave
    }
}
