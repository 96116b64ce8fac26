//! Data movement: MOV and its extending forms, LEA, selector reads, SETcc,
//! CMOVcc, the accumulator's sign extensions, BSWAP, MOVBE, XCHG, CMPXCHG and
//! XADD.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder};
use iced_x86::{Instruction, Register};

use cpu::flags::FlagOp;

use super::mask;
use crate::translate::classify::{reg, Form, Opnd};
use crate::translate::state::{mem_flags, Tx, SEG_OFF, SEG_SEL_OFF, SEG_SIZE};

impl Tx<'_, '_> {
    /// Translate the data-movement form `f`: a move, an exchange, SETcc,
    /// CMOVcc, a sign extension of the accumulator. True if it ended the
    /// guest block.
    pub(super) fn emit_mov(&mut self, f: &Form, insn: &Instruction, rip: u64, next: u64) -> bool {
        match *f {
            Form::Mov { dst, src, size } => {
                let v = self.read(src, insn, size, rip);
                match dst {
                    Opnd::Reg(r) => self.write_reg(r, v),
                    Opnd::Mem => {
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, size, v, rip, None);
                        self.after_store(leave, next);
                    }
                    Opnd::Imm(_) => {}
                }
            }
            Form::Movx { dst, src, from, signed } => {
                let v = self.read(src, insn, from, rip);
                let v = if signed && from < 8 {
                    let sh = i64::from(64 - from * 8);
                    let t = self.b.ins().ishl_imm_s(v, sh);
                    self.b.ins().sshr_imm_s(t, sh)
                } else {
                    v
                };
                let v = self.b.ins().band_imm_s(v, mask(dst.size) as i64);
                self.write_reg(dst, v);
            }
            Form::Lea { dst } => {
                let a = self.ea(insn);
                let a = self.b.ins().band_imm_s(a, mask(dst.size) as i64);
                self.write_reg(dst, a);
            }
            Form::MovFromSreg { seg, dst } => {
                let st = self.state;
                let at = SEG_OFF + SEG_SIZE * seg as i32 + SEG_SEL_OFF;
                let sel = self.b.ins().uload16(types::I64, mem_flags(), st, at);
                match dst {
                    Opnd::Reg(r) => self.write_reg(r, sel),
                    _ => {
                        let segm = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(segm, o, 2, sel, rip, None);
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Setcc { cc, dst } => {
                let c = self.condition(cc);
                let v = self.b.ins().uextend(types::I64, c);
                let v = self.b.ins().band_imm_s(v, 1);
                match dst {
                    Opnd::Reg(r) => self.write_reg(r, v),
                    _ => {
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, 1, v, rip, None);
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Cmov { cc, dst, src } => {
                let v = self.read(src, insn, dst.size, rip);
                let c = self.condition(cc);
                let cur = self.read_reg(dst);
                let out = self.b.ins().select(c, v, cur);
                // A 32-bit CMOV zero-extends even when not taken; a 16-bit
                // one merges (write_reg does both).
                self.write_reg(dst, out);
            }
            Form::WidenAcc { from } => {
                let a = self.gpr64(0);
                let sh = i64::from(64 - from * 8);
                let t = self.b.ins().ishl_imm_s(a, sh);
                let v = self.b.ins().sshr_imm_s(t, sh);
                let r = reg(if from == 2 { Register::EAX } else { Register::RAX }).expect("a GPR");
                self.write_reg(r, v);
            }
            Form::Bswap { dst } => {
                let v = self.read_reg(dst);
                let v = if dst.size == 8 {
                    self.b.ins().bswap(v)
                } else {
                    let t = self.b.ins().ireduce(types::I32, v);
                    let t = self.b.ins().bswap(t);
                    self.b.ins().uextend(types::I64, t)
                };
                self.write_reg(dst, v);
            }
            Form::Movbe { dst, src, size } => {
                let v = self.read(src, insn, size, rip);
                let v = if size == 8 {
                    self.b.ins().bswap(v)
                } else {
                    let t = self.b.ins().ireduce(if size == 4 { types::I32 } else { types::I16 }, v);
                    let t = self.b.ins().bswap(t);
                    self.b.ins().uextend(types::I64, t)
                };
                match dst {
                    // (A 16-bit register keeps its upper bits.)
                    Opnd::Reg(r) => self.write_reg(r, v),
                    _ => {
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, size, v, rip, None);
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Xchg { dst, src, size } => {
                let b = self.read_reg(src);
                match dst {
                    Opnd::Reg(r) => {
                        let a = self.read_reg(r);
                        self.write_reg(src, a);
                        self.write_reg(r, b);
                    }
                    _ => {
                        // Memory first: a fault leaves the register.
                        let (a, haddr) = self.load(insn, size, rip, true);
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, size, b, rip, Some(haddr));
                        self.write_reg(src, a);
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Xadd { dst, src, size } => {
                // TEMP = DEST + SRC; SRC = DEST; DEST = TEMP (the sum wins
                // when both are one register).
                let b = self.read_reg(src);
                let (a, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    _ => {
                        // Memory first: a fault leaves the register.
                        let (a, h) = self.load(insn, size, rip, true);
                        (a, Some(h))
                    }
                };
                let r = self.b.ins().iadd(a, b);
                let r = self.b.ins().band_imm_s(r, mask(size) as i64);
                match dst {
                    Opnd::Reg(rg) => {
                        self.write_reg(src, a);
                        self.write_reg(rg, r);
                        self.set_lazy(FlagOp::Add, size, r, a, b, None);
                    }
                    _ => {
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, size, r, rip, haddr);
                        self.write_reg(src, a);
                        self.set_lazy(FlagOp::Add, size, r, a, b, None);
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Cmpxchg { dst, src, size } => {
                let m = mask(size) as i64;
                let acc = reg(match size {
                    1 => Register::AL,
                    2 => Register::AX,
                    4 => Register::EAX,
                    _ => Register::RAX,
                })
                .expect("a GPR");
                let a = self.read_reg(acc);
                let sv = self.read_reg(src);
                let (d, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    _ => {
                        let (d, h) = self.load(insn, size, rip, true);
                        (d, Some(h))
                    }
                };
                let eq = self.b.ins().icmp(IntCC::Equal, a, d);
                let r = self.b.ins().isub(a, d);
                let r = self.b.ins().band_imm_s(r, m);
                let mut leave = None;
                match dst {
                    Opnd::Reg(rg) => {
                        // Equal: the destination takes the source.
                        let old = self.gpr64(rg.idx);
                        let new = self.merged(rg, sv);
                        let v = self.b.ins().select(eq, new, old);
                        self.set_gpr64(rg.idx, v);
                    }
                    _ => {
                        // Memory is written either way (a locked RMW).
                        let v = self.b.ins().select(eq, sv, d);
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        leave = Some(self.store_at(seg, o, size, v, rip, haddr));
                    }
                }
                // Not equal: the accumulator takes the destination.
                let old = self.gpr64(acc.idx);
                let new = self.merged(acc, d);
                let v = self.b.ins().select(eq, old, new);
                self.set_gpr64(acc.idx, v);
                self.set_lazy(FlagOp::Sub, size, r, a, d, None);
                if let Some(l) = leave {
                    self.after_store(l, next);
                }
            }
            Form::SignAcc { size } => {
                let a = self.gpr64(0);
                let sh = i64::from(64 - size * 8);
                let t = self.b.ins().ishl_imm_s(a, sh);
                let v = self.b.ins().sshr_imm_s(t, 63);
                let r = reg(if size == 4 { Register::EDX } else { Register::RDX }).expect("a GPR");
                self.write_reg(r, v);
            }
            _ => unreachable!("not a data-movement form: {f:?}"),
        }
        false
    }
}
