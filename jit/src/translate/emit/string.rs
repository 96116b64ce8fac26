//! REP STOS and REP MOVS through host pointers.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};

use cpu::state::flags;

use crate::reloc::Helper;
use crate::translate::classify::Form;
use crate::translate::flags::Known;
use crate::translate::state::{mem_flags, Tx, GPR_OFF, RFLAGS_OFF};

impl Tx<'_, '_> {
    /// Translate the string form `f`: REP STOS or REP MOVS. True if it ended
    /// the guest block.
    pub(super) fn emit_string(&mut self, f: &Form, rip: u64) -> bool {
        match *f {
            Form::RepString { movs, size } => {
                self.flush_count();
                self.sync();
                let i64t = types::I64;
                let l = mmu::TLB_LAYOUT;
                let rcx = self.gpr64(1);
                let rdi = self.gpr64(7);
                let st = self.state;
                let rf = self.b.ins().load(i64t, mem_flags(), st, RFLAGS_OFF);
                let df = self.b.ins().band_imm_s(rf, flags::DF as i64);
                let forward = self.b.ins().icmp_imm_s(IntCC::Equal, df, 0);
                // 1 to a page's worth of elements.
                let some = self.b.ins().icmp_imm_s(IntCC::NotEqual, rcx, 0);
                let few = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThanOrEqual, rcx, 4096 / i64::from(size));
                let bytes = self.b.ins().imul_imm_s(rcx, i64::from(size));
                let ok = self.b.ins().band(forward, some);
                let ok = self.b.ins().band(ok, few);
                // The run stays in its page on each side.
                let in_page = |tx: &mut Self, at: Value| {
                    let o = tx.b.ins().band_imm_s(at, 0xfff);
                    let end = tx.b.ins().iadd(o, bytes);
                    tx.b.ins().icmp_imm_s(IntCC::UnsignedLessThanOrEqual, end, 4096)
                };
                let d_in = in_page(self, rdi);
                let ok = self.b.ins().band(ok, d_in);
                let (d_entry, d_hit) = self.tlb_hit(rdi, 1, l.jit_write);
                let ok = self.b.ins().band(ok, d_hit);
                let rsi = if movs { Some(self.gpr64(6)) } else { None };
                let s_check = rsi.map(|rsi| {
                    let s_in = in_page(self, rsi);
                    let (e, hit) = self.tlb_hit(rsi, 1, l.jit_read);
                    (self.b.ins().band(s_in, hit), e)
                });
                let ok = match s_check {
                    Some((c, _)) => self.b.ins().band(ok, c),
                    None => ok,
                };
                let fast = self.b.create_block();
                let slow = self.b.create_block();
                self.b.ins().brif(ok, fast, &[], slow, &[]);

                self.enter_block(fast);
                let dst = self.host_addr(d_entry, rdi);
                let done = self.b.create_block();
                match (rsi, s_check) {
                    (Some(rsi), Some((_, s_entry))) => {
                        let src = self.host_addr(s_entry, rsi);
                        // A destination just above the source repeats a
                        // pattern, element by element: the interpreter's.
                        let gap = self.b.ins().isub(dst, src);
                        let above = self.b.ins().icmp_imm_s(IntCC::NotEqual, gap, 0);
                        let near = self.b.ins().icmp(IntCC::UnsignedLessThan, gap, bytes);
                        let repeats = self.b.ins().band(above, near);
                        let go = self.b.create_block();
                        self.b.ins().brif(repeats, slow, &[], go, &[]);
                        self.enter_block(go);
                        let callee = self.helper(Helper::HostCopy);
                        self.b.ins().call_indirect(self.sig_copy, callee, &[dst, src, bytes]);
                        let nsi = self.b.ins().iadd(rsi, bytes);
                        self.b.ins().store(mem_flags(), nsi, st, GPR_OFF + 8 * 6);
                    }
                    _ => {
                        let rax = self.gpr64(0);
                        let v = if size == 1 { self.b.ins().band_imm_s(rax, 0xff) } else { rax };
                        let callee = self.helper(Helper::HostFill);
                        let unit = self.iconst(u64::from(size));
                        self.b.ins().call_indirect(self.sig_fill, callee, &[dst, v, rcx, unit]);
                    }
                }
                let ndi = self.b.ins().iadd(rdi, bytes);
                self.b.ins().store(mem_flags(), ndi, st, GPR_OFF + 8 * 7);
                let zero = self.iconst(0);
                self.b.ins().store(mem_flags(), zero, st, GPR_OFF + 8);
                self.b.ins().jump(done, &[]);

                // The interpreter's handler, which counts the instruction
                // itself: take it off the region's count.
                self.enter_block(slow);
                let d = self.slow_insn.expect("a form with a slow path has a fallback entry");
                let status = self.call_fallback(d, rip);
                let back = self.b.create_block();
                self.b.ins().brif(status, self.leave_block, &[], back, &[]);
                self.enter_block(back);
                let c = self.b.use_var(self.icount);
                let c = self.b.ins().iadd_imm_s(c, -1);
                self.b.def_var(self.icount, c);
                self.b.ins().jump(done, &[]);

                self.enter_block(done);
                self.known = Known::Unknown;
                self.forget();
            }
            _ => unreachable!("not a string form: {f:?}"),
        }
        false
    }
}
