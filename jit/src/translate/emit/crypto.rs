//! CRC32 and the carry-less multiplication of PCLMULQDQ: each a call of a
//! pure helper of [`crate::ctx`] on operands the region loads itself, with
//! nothing written back around the call.

use cranelift_codegen::ir::{types, InstBuilder, Value};
use iced_x86::Instruction;

use crate::ctx::off;
use crate::reloc::Helper;
use crate::translate::classify::{Form, VecSrc};
use crate::translate::state::{guest_flags, mem_flags, Tx, XMM_OFF};

impl Tx<'_, '_> {
    /// Translate CRC32 or PCLMULQDQ. True if it ended the guest block.
    pub(super) fn emit_crypto(&mut self, f: &Form, insn: &Instruction, rip: u64) -> bool {
        match *f {
            Form::Crc32 { dst, src, size } => {
                // The state is the destination's low 32 bits (the helper
                // truncates); the source, zero-extended from its size.
                let v = self.read(src, insn, size, rip);
                let acc = self.gpr64(dst.idx);
                let callee = self.helper(Helper::Crc32c);
                let n = self.b.ins().iconst(types::I32, i64::from(size));
                let call = self.b.ins().call_indirect(self.sig_crc, callee, &[acc, v, n]);
                let r = self.b.inst_results(call)[0];
                // Zero-extended from 32 bits whatever the destination's size.
                self.write_reg(dst, r);
            }
            Form::Pclmul { dst, src, imm } => {
                self.sse_check(rip);
                // A legacy SSE operand of 16 bytes: aligned, or #GP.
                let (lo, hi) = self.clmul(dst, src, imm, insn, true, rip);
                self.store_xmm_quads(dst, lo, hi);
            }
            _ => unreachable!("not a CRC32 or PCLMULQDQ form: {f:?}"),
        }
        false
    }

    /// The carry-less product of the quadword of XMM register `a` that
    /// imm8 bit 0 picks and that of `b` (a register, or the 16-byte memory
    /// operand through the inline TLB test, `aligned` to 16 bytes if asked,
    /// else the slow path) that bit 4 picks: its low and high quadwords.
    /// Nothing is written: a slow path leaves with the state as it was.
    pub(super) fn clmul(
        &mut self,
        a: u8,
        b: VecSrc,
        imm: u8,
        insn: &Instruction,
        aligned: bool,
        rip: u64,
    ) -> (Value, Value) {
        let fl = guest_flags();
        let qa = if imm & 0x01 != 0 { 8 } else { 0 };
        let qb = if imm & 0x10 != 0 { 8 } else { 0 };
        let y = match b {
            VecSrc::Xmm(x) => self.b.ins().load(types::I64, fl, self.state, XMM_OFF + 16 * i32::from(x) + qb),
            VecSrc::Mem => {
                let addr = self.vec_host_addr(insn, 16, aligned, false, rip);
                self.b.ins().load(types::I64, fl, addr, qb)
            }
        };
        let x = self.b.ins().load(types::I64, fl, self.state, XMM_OFF + 16 * i32::from(a) + qa);
        let callee = self.helper(Helper::Clmul);
        let hi_at = self.b.ins().iadd_imm_s(self.ctx, i64::from(off::SCRATCH));
        let call = self.b.ins().call_indirect(self.sig_clmul, callee, &[x, y, hi_at]);
        let lo = self.b.inst_results(call)[0];
        let hi = self.b.ins().load(types::I64, mem_flags(), self.ctx, off::SCRATCH);
        (lo, hi)
    }

    /// Bits 127:0 of XMM register `x` from two quadwords (bits 255:128
    /// untouched).
    pub(super) fn store_xmm_quads(&mut self, x: u8, lo: Value, hi: Value) {
        let fl = guest_flags();
        let at = XMM_OFF + 16 * i32::from(x);
        self.b.ins().store(fl, lo, self.state, at);
        self.b.ins().store(fl, hi, self.state, at + 8);
    }
}
