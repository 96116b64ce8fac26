//! System instructions: CLI, STI, STAC, CLAC, SWAPGS, RDTSC(P), FNSTCW,
//! reads of CR0, CR2, CR3 and CR4, and RDPKRU, each with a slow path for
//! what the interpreter must raise.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use iced_x86::{Instruction, Register};

use cpu::state::{cr, flags, sreg};

use crate::ctx::off;
use crate::reloc::Helper;
use crate::translate::classify::{reg, Form};
use crate::translate::state::{
    mem_flags, Tx, CPL_OFF, CR0_OFF, CR2_OFF, CR3_OFF, CR4_OFF, FCW_OFF, KERNEL_GS_OFF, PKRU_OFF, RFLAGS_OFF,
    SEG_BASE_OFF, SEG_OFF, SEG_SIZE, TSC_AUX_OFF,
};

impl Tx<'_, '_> {
    /// Translate the system form `f`: CLI, STI, STAC, CLAC, SWAPGS, RDTSC,
    /// RDTSCP, FNSTCW, MOV from CR0/CR2/CR3/CR4, RDPKRU. True if it ended
    /// the guest block.
    pub(super) fn emit_system(&mut self, f: &Form, insn: &Instruction, rip: u64, next: u64) -> bool {
        match *f {
            Form::Cli => {
                let st = self.state;
                let rf = self.if_allowed(rip);
                // The arithmetic bits stay as they are (the lazy record
                // may stand for them).
                let rf = self.b.ins().band_imm_s(rf, !(flags::IF as i64));
                self.b.ins().store(mem_flags(), rf, st, RFLAGS_OFF);
            }
            Form::Sti => {
                let st = self.state;
                let rf = self.if_allowed(rip);
                let was = self.b.ins().band_imm_s(rf, flags::IF as i64);
                let rf = self.b.ins().bor_imm_s(rf, flags::IF as i64);
                self.b.ins().store(mem_flags(), rf, st, RFLAGS_OFF);
                // IF was clear: ask whether the CPU would take an interrupt
                // now (which the shadow holds off for one instruction).
                let check = self.b.create_block();
                let cont = self.b.create_block();
                self.b.ins().brif(was, cont, &[], check, &[]);
                self.enter_block(check);
                // The next instruction runs in this region only on an
                // edge into one of its blocks (forward: no budget check).
                let helper = if self.blocks.contains_key(&next) { Helper::Sti } else { Helper::StiExit };
                let callee = self.helper(helper);
                let call = self.b.ins().call_indirect(self.sig_flags, callee, &[self.ctx]);
                let leave = self.b.inst_results(call)[0];
                let out = self.b.create_block();
                self.b.ins().brif(leave, out, &[], cont, &[]);
                self.enter_block(out);
                self.exit_to(next, 1);
                self.enter_block(cont);
            }
            Form::Ac { set } => {
                self.cpl0_only(rip);
                let st = self.state;
                let rf = self.b.ins().load(types::I64, mem_flags(), st, RFLAGS_OFF);
                let rf = if set {
                    self.b.ins().bor_imm_s(rf, flags::AC as i64)
                } else {
                    self.b.ins().band_imm_s(rf, !(flags::AC as i64))
                };
                self.b.ins().store(mem_flags(), rf, st, RFLAGS_OFF);
                let callee = self.helper(Helper::DataTlbChanged);
                self.b.ins().call_indirect(self.sig_flags, callee, &[self.ctx]);
                self.exit_to(next, 1);
                return true;
            }
            Form::Swapgs => {
                self.cpl0_only(rip);
                let st = self.state;
                let at = SEG_OFF + SEG_SIZE * sreg::GS as i32 + SEG_BASE_OFF;
                let gs = self.b.ins().load(types::I64, mem_flags(), st, at);
                let k = self.b.ins().load(types::I64, mem_flags(), st, KERNEL_GS_OFF);
                self.b.ins().store(mem_flags(), k, st, at);
                self.b.ins().store(mem_flags(), gs, st, KERNEL_GS_OFF);
            }
            Form::Fnstcw => {
                // The instructions before count, in case the slow path
                // leaves.
                self.flush_count();
                let st = self.state;
                let cr0 = self.b.ins().load(types::I64, mem_flags(), st, CR0_OFF);
                let bad = self.b.ins().band_imm_s(cr0, (cr::CR0_EM | cr::CR0_TS) as i64);
                let ok = self.b.ins().icmp_imm_s(IntCC::Equal, bad, 0);
                self.slow_unless(ok, rip);
                let cw = self.b.ins().uload16(types::I64, mem_flags(), st, FCW_OFF);
                let seg = cpu::ops::mem_seg(insn);
                let o = self.ea(insn);
                let leave = self.store_at(seg, o, 2, cw, rip, None);
                self.after_store(leave, next);
            }
            Form::Rdtsc { aux } => {
                let callee = self.helper(Helper::Rdtsc);
                let call = self.b.ins().call_indirect(self.sig_flags, callee, &[self.ctx]);
                let t = self.b.inst_results(call)[0];
                let st = self.b.ins().load(types::I32, mem_flags(), self.ctx, off::STATUS);
                let (ok, bad) = (self.b.create_block(), self.b.create_block());
                self.b.ins().brif(st, bad, &[], ok, &[]);
                self.enter_block(bad);
                self.fault_exit(rip);
                self.enter_block(ok);
                let lo = self.b.ins().band_imm_s(t, 0xffff_ffff);
                let hi = self.b.ins().ushr_imm_s(t, 32);
                self.write_reg(reg(Register::RAX).expect("a GPR"), lo);
                self.write_reg(reg(Register::RDX).expect("a GPR"), hi);
                if aux {
                    let a = self.b.ins().load(types::I64, mem_flags(), self.state, TSC_AUX_OFF);
                    let a = self.b.ins().band_imm_s(a, 0xffff_ffff);
                    self.write_reg(reg(Register::RCX).expect("a GPR"), a);
                }
            }
            Form::MovFromCr { dst, cr } => {
                self.cpl0_only(rip);
                let at = match cr {
                    0 => CR0_OFF,
                    2 => CR2_OFF,
                    3 => CR3_OFF,
                    _ => CR4_OFF,
                };
                let v = self.b.ins().load(types::I64, mem_flags(), self.state, at);
                self.write_reg(dst, v);
            }
            Form::Rdpkru => {
                // CR4.PKE set (else #UD) and ECX 0 (else #GP).
                self.flush_count();
                let cr4 = self.b.ins().load(types::I64, mem_flags(), self.state, CR4_OFF);
                let pke = self.b.ins().band_imm_s(cr4, cr::CR4_PKE as i64);
                let pke = self.b.ins().icmp_imm_s(IntCC::NotEqual, pke, 0);
                let ecx = self.read_reg(reg(Register::ECX).expect("a GPR"));
                let zero = self.b.ins().icmp_imm_s(IntCC::Equal, ecx, 0);
                let ok = self.b.ins().band(pke, zero);
                self.slow_unless(ok, rip);
                let pkru = self.b.ins().uload32(mem_flags(), self.state, PKRU_OFF);
                let z = self.iconst(0);
                self.write_reg(reg(Register::RAX).expect("a GPR"), pkru);
                self.write_reg(reg(Register::RDX).expect("a GPR"), z);
            }
            _ => unreachable!("not a system form: {f:?}"),
        }
        false
    }

    /// CLI and STI: IOPL at least the CPL (protected mode, not
    /// virtual-8086: the only modes compiled code runs in), else the slow
    /// path raises #GP. The RFLAGS in memory.
    fn if_allowed(&mut self, rip: u64) -> Value {
        self.flush_count();
        let st = self.state;
        let rf = self.b.ins().load(types::I64, mem_flags(), st, RFLAGS_OFF);
        let cpl = self.b.ins().uload8(types::I64, mem_flags(), st, CPL_OFF);
        let iopl = self.b.ins().ushr_imm_s(rf, flags::IOPL_SHIFT as i64);
        let iopl = self.b.ins().band_imm_s(iopl, 3);
        let ok = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, iopl, cpl);
        self.slow_unless(ok, rip);
        rf
    }

    /// STAC, CLAC, SWAPGS and MOV from a control register: CPL 0, else the
    /// slow path raises what the instruction raises there.
    fn cpl0_only(&mut self, rip: u64) {
        self.flush_count();
        let cpl = self.b.ins().uload8(types::I64, mem_flags(), self.state, CPL_OFF);
        let ok = self.b.ins().icmp_imm_s(IntCC::Equal, cpl, 0);
        self.slow_unless(ok, rip);
    }
}
