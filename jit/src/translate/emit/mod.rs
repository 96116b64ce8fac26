//! Emission of the translated forms, by family: the dispatch of
//! [`Tx::emit`] hands each form to the module of its family.

mod alu;
mod atomic;
mod avx;
mod bmi;
mod branch;
mod crypto;
mod fp;
mod mov;
mod shift;
mod sse;
mod stack;
mod string;
mod system;

use cranelift_codegen::ir::{InstBuilder, Value};
use iced_x86::Instruction;

use super::classify::{Form, Opnd};
use super::flags::Known;
use super::state::Tx;

fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

impl Tx<'_, '_> {
    /// A fallback: the state goes to memory, the interpreter runs the
    /// instruction, and the state comes back.
    pub(super) fn emit_fallback(&mut self, d: usize, rip: u64) {
        self.flush_count();
        self.sync();
        let st = self.call_fallback(d, rip);
        let cont = self.b.create_block();
        self.b.ins().brif(st, self.leave_block, &[], cont, &[]);
        self.enter_block(cont);
        self.known = Known::Unknown;
        self.forget();
        // (The handler may have changed CR0, CR4 or XCR0.)
        self.update_avx_usable();
    }

    /// Translate one instruction; true if it ended the guest block (a
    /// terminator was emitted).
    pub(super) fn emit(&mut self, f: &Form, insn: &Instruction, rip: u64, next: u64) -> bool {
        match f {
            Form::Nop => false,
            Form::Mov { .. }
            | Form::Movx { .. }
            | Form::Lea { .. }
            | Form::MovFromSreg { .. }
            | Form::Setcc { .. }
            | Form::Cmov { .. }
            | Form::WidenAcc { .. }
            | Form::Bswap { .. }
            | Form::Movbe { .. }
            | Form::Xchg { .. }
            | Form::Cmpxchg { .. }
            | Form::Xadd { .. }
            | Form::SignAcc { .. } => self.emit_mov(f, insn, rip, next),
            Form::Alu { .. }
            | Form::IncDec { .. }
            | Form::Neg { .. }
            | Form::Not { .. }
            | Form::Count { .. }
            | Form::BitScan { .. }
            | Form::Imul { .. }
            | Form::MulDiv { .. }
            | Form::Bt { .. } => self.emit_alu(f, insn, rip, next),
            Form::Shift { .. } | Form::ShiftCl { .. } | Form::ShiftMem { .. } | Form::DoubleShift { .. } => {
                self.emit_shift(f, insn, rip, next)
            }
            Form::Pushf | Form::Push { .. } | Form::Pop { .. } | Form::Leave => self.emit_stack(f, insn, rip, next),
            Form::CallRel { .. }
            | Form::CallInd { .. }
            | Form::Ret { .. }
            | Form::JmpRel { .. }
            | Form::JmpInd { .. }
            | Form::Jcc { .. } => self.emit_branch(f, insn, rip, next),
            Form::Cli
            | Form::Sti
            | Form::Ac { .. }
            | Form::Swapgs
            | Form::Fnstcw
            | Form::Rdtsc { .. }
            | Form::MovFromCr { .. }
            | Form::Rdpkru => self.emit_system(f, insn, rip, next),
            Form::RepString { .. } => self.emit_string(f, rip),
            Form::Vec { .. }
            | Form::VecMov { .. }
            | Form::VecScalar { .. }
            | Form::Pmovmskb { .. }
            | Form::MovToVec { .. }
            | Form::MovFromVec { .. }
            | Form::Pcmpistri { .. }
            | Form::Pcmpestri { .. }
            | Form::MovHalves { .. } => self.emit_sse(f, insn, rip),
            Form::Crc32 { .. } | Form::Pclmul { .. } => self.emit_crypto(f, insn, rip),
            Form::Avx(_) => self.emit_avx(f, insn, rip),
            Form::Bzhi { .. } | Form::ShiftX { .. } | Form::Rorx { .. } | Form::Bls { .. } | Form::Andn { .. } => {
                self.emit_bmi(f, insn, rip)
            }
            Form::Comis { .. } | Form::ScalarFp { .. } | Form::CvtInt { .. } => self.emit_fp(f, insn, rip),
            Form::Atomic { .. } | Form::Fence => self.emit_atomic(f, insn, rip),
        }
    }

    /// Read operand `o` (masked to `size`).
    fn read(&mut self, o: Opnd, insn: &Instruction, size: u32, rip: u64) -> Value {
        match o {
            Opnd::Reg(r) => self.read_reg(r),
            Opnd::Imm(v) => self.iconst(v & mask(size)),
            Opnd::Mem => self.load(insn, size, rip, false).0,
        }
    }
}
