//! Branches: calls, returns, jumps and conditional jumps, which end the
//! guest block.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use iced_x86::Instruction;

use crate::ctx::{exit, off};
use crate::translate::classify::Form;
use crate::translate::state::{mem_flags, Tx};

impl Tx<'_, '_> {
    /// Translate the branch form `f`: a call, a return, a jump or a
    /// conditional jump. Each ends the guest block: true.
    pub(super) fn emit_branch(&mut self, f: &Form, insn: &Instruction, rip: u64, next: u64) -> bool {
        let stack = self.stack_size();
        match *f {
            Form::CallRel { target } => {
                let ret = self.guest_addr(next);
                let leave = self.push(ret, stack, rip);
                self.after_store(leave, target);
                self.pending += 1;
                self.goto(target, rip);
                true
            }
            Form::CallInd { src } => {
                let t = self.read(src, insn, stack, rip);
                self.check_target(t, rip);
                let ret = self.guest_addr(next);
                let leave = self.push(ret, stack, rip);
                self.after_store_value(leave, t);
                self.exit_to_value(t, 1);
                true
            }
            Form::Ret { pop } => {
                let (t, _) = self.stack_read(0, stack, rip);
                self.check_target(t, rip);
                self.sp_add(i64::from(stack) + pop as i64);
                self.exit_to_value(t, 1);
                true
            }
            Form::JmpRel { target } => {
                self.pending += 1;
                self.goto(target, rip);
                true
            }
            Form::JmpInd { src } => {
                let t = self.read(src, insn, stack, rip);
                self.check_target(t, rip);
                self.exit_to_value(t, 1);
                true
            }
            Form::Jcc { cc, target } => {
                let c = self.condition(cc);
                self.pending += 1;
                self.flush_count();
                // The lazy record is stored once here when both ways need
                // it, otherwise only on the way that does.
                if self.flags_dead_at(target) || self.flags_dead_at(next) {
                    self.sync_regs();
                } else {
                    self.sync();
                }
                let flags = (self.known, self.lazy_dirty, self.cin_deferred);
                let taken = self.b.create_block();
                let not = self.b.create_block();
                self.b.ins().brif(c, taken, &[], not, &[]);
                self.enter_block(taken);
                self.goto(target, rip);
                (self.known, self.lazy_dirty, self.cin_deferred) = flags;
                self.enter_block(not);
                self.goto(next, rip);
                true
            }
            _ => unreachable!("not a branch form: {f:?}"),
        }
    }

    /// A branch target that is not canonical: the interpreter runs the
    /// instruction (it raises #GP with the state before it).
    fn check_target(&mut self, t: Value, rip: u64) {
        if self.bits != 64 {
            return;
        }
        let s = self.b.ins().ishl_imm_s(t, 16);
        let s = self.b.ins().sshr_imm_s(s, 16);
        let ok = self.b.ins().icmp(IntCC::Equal, s, t);
        let good = self.b.create_block();
        let bad = self.b.create_block();
        self.b.ins().brif(ok, good, &[], bad, &[]);
        self.enter_block(bad);
        let st = self.b.ins().iconst(types::I32, i64::from(exit::STEP));
        self.b.ins().store(mem_flags(), st, self.ctx, off::EXIT);
        self.exit_to(rip, 0);
        self.enter_block(good);
    }

    /// [`Tx::after_store`] for a branch with a computed target.
    fn after_store_value(&mut self, leave: Option<Value>, target: Value) {
        let Some(leave) = leave else { return };
        let out = self.b.create_block();
        let cont = self.b.create_block();
        self.b.ins().brif(leave, out, &[], cont, &[]);
        self.enter_block(out);
        self.exit_to_value(target, 1);
        self.enter_block(cont);
    }
}
