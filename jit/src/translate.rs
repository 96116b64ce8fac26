//! Translation of a region (guest blocks of one code page) into one
//! Cranelift function.
//!
//! The function is `extern "C" fn(ctx, entry)`: it loads the guest
//! registers it uses into SSA variables, jumps to the guest block `entry`,
//! and runs until a branch leaves the region, the budget runs out at a back
//! edge, or an instruction asks it to leave. Exits write back the registers
//! it changed, the lazy flags and RIP.
//!
//! - Integer moves, ALU operations, shifts by an immediate, IMUL, stack
//!   operations, calls, returns and branches are translated. Everything else
//!   is a call of the interpreter's handler for that one instruction
//!   ([`crate::ctx::fallback`]), with the state written back before and
//!   read again after.
//! - Memory accesses test the soft TLB inline (one compare on the entry's
//!   tag, then the host address); a miss, MMIO, a store to a code page or a
//!   segment that is not flat calls a helper, which may fault. A fault leaves
//!   the region at the instruction with the state from before it, and the run
//!   loop delivers the exception: faults are precise.
//! - Flags stay lazy, as the interpreter keeps them (`LazyFlags`): a
//!   flag-setting instruction defines the record's variables; a condition
//!   whose producer is known in the same guest block is computed from them
//!   directly, otherwise by a pure helper.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, Block, InstBuilder, MemFlagsData, Signature, Type, Value};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, Variable};
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use cpu::flags::FlagOp;
use cpu::state::{cr, flags, sreg, CpuState};
use cpu::Decoded;

use crate::ctx::{self, exit, off, status};

/// A guest block of a region.
#[derive(Clone)]
pub struct GuestBlock {
    pub rip: u64,
    pub insns: Vec<Decoded>,
}

/// What a region is made of.
#[derive(Clone)]
pub struct RegionSpec {
    /// Code size: 64, or 32 with flat data segments.
    pub bits: u32,
    /// The guest blocks; each is an entry.
    pub blocks: Vec<GuestBlock>,
    /// Plain exits probe the jump cache and go straight on into the next
    /// region (a tail call) instead of returning to the run loop.
    pub chain: bool,
    /// Where a memory access's slow path calls.
    pub access: AccessCalls,
}

/// The entry points of the memory helpers ([`ctx::load`],
/// [`ctx::load_rmw`], [`ctx::store`]) through trampolines that save every
/// register ([`crate::compiler::compile_saving_call`]): a region calls
/// them with nothing clobbered, and reads a load's value from the
/// context's `result` word and the status from its `status` word.
#[derive(Clone, Copy, Debug)]
pub struct AccessCalls {
    pub load: usize,
    pub load_rmw: usize,
    pub store: usize,
}

/// Counts of one translation.
#[derive(Debug, Default, Clone, Copy)]
pub struct TxStats {
    pub native: u64,
    pub fallback: u64,
}

/// A general-register operand.
#[derive(Clone, Copy, Debug)]
struct Reg {
    idx: usize,
    size: u32,
    /// AH, CH, DH, BH.
    high: bool,
}

fn reg(r: Register) -> Option<Reg> {
    let (idx, size, high) = if r.is_gpr64() {
        (r as usize - Register::RAX as usize, 8, false)
    } else if r.is_gpr32() {
        (r as usize - Register::EAX as usize, 4, false)
    } else if r.is_gpr16() {
        (r as usize - Register::AX as usize, 2, false)
    } else if r.is_gpr8() {
        let v = r as usize;
        if (Register::AH as usize..=Register::BH as usize).contains(&v) {
            (v - Register::AH as usize, 1, true)
        } else if v >= Register::SPL as usize {
            (v - Register::SPL as usize + 4, 1, false)
        } else {
            (v - Register::AL as usize, 1, false)
        }
    } else {
        return None;
    };
    Some(Reg { idx, size, high })
}

/// An operand of a translated instruction.
#[derive(Clone, Copy, Debug)]
enum Opnd {
    Reg(Reg),
    Mem,
    Imm(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alu {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BtOp {
    Test,
    Set,
    Reset,
    Complement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shift {
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
}

/// A translated instruction form, checked before anything is emitted.
#[derive(Clone, Copy, Debug)]
enum Form {
    Nop,
    Mov {
        dst: Opnd,
        src: Opnd,
        size: u32,
    },
    /// MOVZX, MOVSX, MOVSXD.
    Movx {
        dst: Reg,
        src: Opnd,
        from: u32,
        signed: bool,
    },
    Lea {
        dst: Reg,
    },
    Alu {
        op: Alu,
        dst: Opnd,
        src: Opnd,
        size: u32,
    },
    IncDec {
        inc: bool,
        dst: Opnd,
        size: u32,
    },
    Neg {
        dst: Opnd,
        size: u32,
    },
    Not {
        dst: Opnd,
        size: u32,
    },
    Shift {
        op: Shift,
        dst: Reg,
        count: u32,
    },
    /// SHL, SHR, SAR of memory by an immediate from 1 to the width less one.
    ShiftMem {
        op: Shift,
        size: u32,
        count: u32,
    },
    /// SHL, SHR, SAR of a 32- or 64-bit register by CL.
    ShiftCl {
        op: Shift,
        dst: Reg,
    },
    /// SHLD (`left`) or SHRD of a 32- or 64-bit register with a register,
    /// by an immediate (`count`) or by CL.
    DoubleShift {
        left: bool,
        dst: Reg,
        src: Reg,
        count: Option<u32>,
    },
    /// TZCNT, LZCNT, POPCNT (32 and 64 bits).
    Count {
        kind: CountKind,
        dst: Reg,
        src: Opnd,
    },
    /// COMISS/COMISD/UCOMISS/UCOMISD (`double`): ordered operands that are
    /// neither denormal nor NaN at once (no MXCSR flag), else the slow path.
    Comis {
        double: bool,
        a: u8,
        b: VecSrc,
    },
    /// ADDSS/SD, SUBSS/SD, MULSS/SD, DIVSS/SD (`double`): at once where no
    /// MXCSR flag can change (PE already set and masked, round to nearest,
    /// operands and result neither NaN, infinite nor denormal, no
    /// underflow), else the slow path.
    ScalarFp {
        op: FpOp,
        double: bool,
        dst: u8,
        src: VecSrc,
    },
    /// CVTSI2SS/SD (`double`) from a 32- or 64-bit register or memory: at
    /// once where it is exact or PE is already set and masked under round
    /// to nearest, else the slow path.
    CvtInt {
        double: bool,
        dst: u8,
        src: Opnd,
        size: u32,
    },
    /// REP STOSB/STOSQ (`movs` false) and REP MOVSB/MOVSQ in 64-bit
    /// addressing: at once through host pointers for a forward run that
    /// stays within a page on each side (no overlap that repeats a
    /// pattern), else through the interpreter's handler, going on after.
    RepString {
        movs: bool,
        size: u32,
    },
    /// BSF, BSR (32 and 64 bits).
    BitScan {
        reverse: bool,
        dst: Reg,
        src: Opnd,
    },
    Imul {
        dst: Reg,
        src: Opnd,
        imm: Option<u64>,
    },
    Push {
        src: Opnd,
        size: u32,
    },
    Pop {
        dst: Reg,
    },
    Leave,
    CallRel {
        target: u64,
    },
    CallInd {
        src: Opnd,
    },
    Ret {
        pop: u64,
    },
    JmpRel {
        target: u64,
    },
    JmpInd {
        src: Opnd,
    },
    Jcc {
        cc: u8,
        target: u64,
    },
    Setcc {
        cc: u8,
        dst: Opnd,
    },
    Cmov {
        cc: u8,
        dst: Reg,
        src: Opnd,
    },
    /// CWDE (2 -> 4), CDQE (4 -> 8).
    WidenAcc {
        from: u32,
    },
    /// CDQ (4), CQO (8).
    SignAcc {
        size: u32,
    },
    /// MUL (`div` false) or DIV r/m of 32 or 64 bits: rDX:rAX.
    MulDiv {
        div: bool,
        src: Opnd,
        size: u32,
    },
    /// RDTSC, and with `aux` RDTSCP (the counter from a helper; RDTSCP
    /// also loads ECX with IA32_TSC_AUX).
    Rdtsc {
        aux: bool,
    },
    /// FNSTCW m16 (#NM through the slow path).
    Fnstcw,
    /// CLI where IOPL allows it (else #GP through the slow path).
    Cli,
    /// STI where IOPL allows it (else #GP through the slow path). The
    /// interrupt shadow matters only when an interrupt waits: the region
    /// then leaves after STI and the run loop runs the next instruction
    /// under the shadow; otherwise it goes on.
    Sti,
    /// MOV r/m, Sreg: the selector, zero-extended into a register of the
    /// operand size, or 16 bits to memory.
    MovFromSreg {
        seg: usize,
        dst: Opnd,
    },
    /// PUSHF/PUSHFD/PUSHFQ of the stack's width.
    Pushf,
    /// SWAPGS at CPL 0 (else #GP through the slow path).
    Swapgs,
    /// STAC (`set`) or CLAC at CPL 0 (else #UD through the slow path). The
    /// data TLB set changes with AC, and the region's is fixed, so the
    /// region leaves after it, into the region of the next instruction.
    Ac {
        set: bool,
    },
    /// BSWAP r32/r64.
    Bswap {
        dst: Reg,
    },
    /// XCHG r/m, reg.
    Xchg {
        dst: Opnd,
        src: Reg,
        size: u32,
    },
    /// CMPXCHG r/m, reg.
    Cmpxchg {
        dst: Opnd,
        src: Reg,
        size: u32,
    },
    /// BT, BTS, BTR, BTC of a register (bit by register or immediate) or
    /// of memory (bit by immediate).
    Bt {
        op: BtOp,
        dst: Opnd,
        src: Opnd,
        size: u32,
    },
    /// A packed-integer or bitwise SSE operation, `dst = dst op src`.
    Vec {
        op: VecOp,
        dst: u8,
        src: VecSrc,
    },
    /// MOVDQA, MOVDQU, MOVAPS, MOVUPS (load, store or register move).
    VecMov {
        dst: VecSrc,
        src: VecSrc,
        aligned: bool,
    },
    /// MOVSS, MOVSD and MOVQ between XMM registers and memory: the low
    /// `width` bytes; a load, or MOVQ, zeroes the rest of the destination
    /// register, a register-to-register MOVSS/MOVSD (`merge`) keeps it.
    VecScalar {
        dst: VecSrc,
        src: VecSrc,
        width: u8,
        merge: bool,
    },
    /// PMOVMSKB r32/r64, xmm.
    Pmovmskb {
        dst: Reg,
        src: u8,
    },
    /// MOVD/MOVQ xmm, r32/r64 (zero-extended to 128 bits).
    MovToVec {
        dst: u8,
        src: Reg,
    },
    /// MOVD/MOVQ r32/r64, xmm.
    MovFromVec {
        dst: Reg,
        src: u8,
    },
    /// PCMPISTRI xmm, xmm/m128, imm8 (the compare in a helper).
    Pcmpistri {
        a: u8,
        b: VecSrc,
        imm: u8,
    },
}

impl Form {
    /// What the form does with the flags before anything else can see
    /// them, for [`flags_dead_on_entry`].
    fn flags_effect(&self) -> FlagsEffect {
        let plain = |o: &Opnd| matches!(o, Opnd::Reg(_) | Opnd::Imm(_));
        match self {
            // Every arithmetic flag from the operands alone, with no memory
            // access that could fault first.
            Form::Alu { op, dst: Opnd::Reg(_), src, .. } if plain(src) && !matches!(op, Alu::Adc | Alu::Sbb) => {
                FlagsEffect::Kills
            }
            Form::Neg { dst: Opnd::Reg(_), .. } => FlagsEffect::Kills,
            // Neither reads nor writes the flags, and cannot fault or leave.
            Form::Nop | Form::Lea { .. } | Form::Not { dst: Opnd::Reg(_), .. } => FlagsEffect::Ignores,
            Form::Mov { dst: Opnd::Reg(_), src, .. } if plain(src) => FlagsEffect::Ignores,
            Form::Movx { src: Opnd::Reg(_), .. } => FlagsEffect::Ignores,
            _ => FlagsEffect::Other,
        }
    }

    /// Whether the form has a slow path that runs the instruction through
    /// the interpreter (and leaves the region after it).
    fn may_slow(&self) -> bool {
        matches!(
            self,
            Form::Vec { .. }
                | Form::VecMov { .. }
                | Form::VecScalar { .. }
                | Form::Pmovmskb { .. }
                | Form::MovToVec { .. }
                | Form::MovFromVec { .. }
                | Form::Pcmpistri { .. }
                | Form::MulDiv { div: true, .. }
                | Form::Comis { .. }
                | Form::Fnstcw
                | Form::ScalarFp { .. }
                | Form::CvtInt { .. }
                | Form::RepString { .. }
                | Form::Cli
                | Form::Sti
                | Form::Ac { .. }
                | Form::Swapgs
        )
    }
}

/// See [`Form::flags_effect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagsEffect {
    /// Sets all six arithmetic flags, reading none, and cannot fault.
    Kills,
    /// Leaves the flags alone and cannot fault or leave the region.
    Ignores,
    /// Anything else: may read the flags, fault, leave or run through the
    /// interpreter.
    Other,
}

/// Whether a guest block sets every arithmetic flag before anything can
/// read them: before a flag reader, a fault, an exit or a fallback. An
/// edge into such a block need not store the lazy record it leaves.
fn flags_dead_on_entry(plan: &[Planned]) -> bool {
    for p in plan {
        match p.form.as_ref().map_or(FlagsEffect::Other, Form::flags_effect) {
            FlagsEffect::Kills => return true,
            FlagsEffect::Ignores => {}
            FlagsEffect::Other => return false,
        }
    }
    false
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FpOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CountKind {
    Tz,
    Lz,
    Pop,
}

/// Packed operations on an XMM register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VecOp {
    /// PCMPEQB/W/D: lanes of this many bytes.
    CmpEq(u8),
    Add(u8),
    Sub(u8),
    Xor,
    Or,
    And,
    AndNot,
    MinUb,
    MaxUb,
    /// PSHUFB.
    Shuffle,
    /// PUNPCKL*: interleave the low halves' lanes of this many bytes.
    UnpackLo(u8),
    /// PUNPCKH*: the high halves.
    UnpackHi(u8),
    /// PSHUFD with its immediate (the destination's old value is unused).
    ShufD(u8),
}

/// An XMM operand: a register or the 16-byte memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VecSrc {
    Xmm(u8),
    Mem,
}

fn xmm(r: Register) -> Option<u8> {
    r.is_xmm().then(|| (r.number() & 15) as u8)
}

/// The SSE forms: legacy encodings on XMM registers, 16-byte memory
/// operands (aligned unless `MOVDQU`/`MOVUPS`).
fn classify_vec(insn: &Instruction, bits: u32) -> Option<Form> {
    use Code as C;
    if insn.encoding() != iced_x86::EncodingKind::Legacy {
        return None;
    }
    let src = |i: u32| -> Option<VecSrc> {
        match insn.op_kind(i) {
            OpKind::Register => xmm(insn.op_register(i)).map(VecSrc::Xmm),
            OpKind::Memory
                if addr_ok(insn, bits)
                    && insn.memory_size().size() == 16
                    && (bits == 64 || !matches!(cpu::ops::mem_seg(insn), sreg::FS | sreg::GS | sreg::CS)) =>
            {
                // (32-bit code: the inline path takes flat DS, ES and SS.)
                Some(VecSrc::Mem)
            }
            _ => None,
        }
    };
    let op = match insn.code() {
        C::Pcmpeqb_xmm_xmmm128 => VecOp::CmpEq(1),
        C::Pcmpeqw_xmm_xmmm128 => VecOp::CmpEq(2),
        C::Pcmpeqd_xmm_xmmm128 => VecOp::CmpEq(4),
        C::Paddb_xmm_xmmm128 => VecOp::Add(1),
        C::Paddw_xmm_xmmm128 => VecOp::Add(2),
        C::Paddd_xmm_xmmm128 => VecOp::Add(4),
        C::Paddq_xmm_xmmm128 => VecOp::Add(8),
        C::Psubb_xmm_xmmm128 => VecOp::Sub(1),
        C::Psubw_xmm_xmmm128 => VecOp::Sub(2),
        C::Psubd_xmm_xmmm128 => VecOp::Sub(4),
        C::Psubq_xmm_xmmm128 => VecOp::Sub(8),
        C::Pxor_xmm_xmmm128 | C::Xorps_xmm_xmmm128 | C::Xorpd_xmm_xmmm128 => VecOp::Xor,
        C::Por_xmm_xmmm128 | C::Orps_xmm_xmmm128 | C::Orpd_xmm_xmmm128 => VecOp::Or,
        C::Pand_xmm_xmmm128 | C::Andps_xmm_xmmm128 | C::Andpd_xmm_xmmm128 => VecOp::And,
        C::Pandn_xmm_xmmm128 | C::Andnps_xmm_xmmm128 | C::Andnpd_xmm_xmmm128 => VecOp::AndNot,
        C::Pminub_xmm_xmmm128 => VecOp::MinUb,
        C::Pmaxub_xmm_xmmm128 => VecOp::MaxUb,
        C::Pshufb_xmm_xmmm128 => VecOp::Shuffle,
        C::Punpcklbw_xmm_xmmm128 => VecOp::UnpackLo(1),
        C::Punpcklwd_xmm_xmmm128 => VecOp::UnpackLo(2),
        C::Punpckldq_xmm_xmmm128 => VecOp::UnpackLo(4),
        C::Punpcklqdq_xmm_xmmm128 => VecOp::UnpackLo(8),
        C::Punpckhbw_xmm_xmmm128 => VecOp::UnpackHi(1),
        C::Punpckhwd_xmm_xmmm128 => VecOp::UnpackHi(2),
        C::Punpckhdq_xmm_xmmm128 => VecOp::UnpackHi(4),
        C::Punpckhqdq_xmm_xmmm128 => VecOp::UnpackHi(8),
        C::Pshufd_xmm_xmmm128_imm8 => VecOp::ShufD(insn.immediate8()),
        C::Movdqa_xmm_xmmm128 | C::Movaps_xmm_xmmm128 | C::Movapd_xmm_xmmm128 => {
            return Some(Form::VecMov { dst: src(0)?, src: src(1)?, aligned: true });
        }
        C::Movdqu_xmm_xmmm128 | C::Movups_xmm_xmmm128 | C::Movupd_xmm_xmmm128 => {
            return Some(Form::VecMov { dst: src(0)?, src: src(1)?, aligned: false });
        }
        C::Movdqa_xmmm128_xmm | C::Movaps_xmmm128_xmm | C::Movapd_xmmm128_xmm => {
            return Some(Form::VecMov { dst: src(0)?, src: src(1)?, aligned: true });
        }
        C::Movdqu_xmmm128_xmm | C::Movups_xmmm128_xmm | C::Movupd_xmmm128_xmm => {
            return Some(Form::VecMov { dst: src(0)?, src: src(1)?, aligned: false });
        }
        C::Movss_xmm_xmmm32
        | C::Movss_xmmm32_xmm
        | C::Movsd_xmm_xmmm64
        | C::Movsd_xmmm64_xmm
        | C::Movq_xmm_xmmm64
        | C::Movq_xmmm64_xmm => {
            let (dst, src) = (scalar_operand(insn, 0, bits)?, scalar_operand(insn, 1, bits)?);
            let movq = matches!(insn.code(), C::Movq_xmm_xmmm64 | C::Movq_xmmm64_xmm);
            let width = if matches!(insn.code(), C::Movss_xmm_xmmm32 | C::Movss_xmmm32_xmm) { 4 } else { 8 };
            let merge = !movq && matches!((dst, src), (VecSrc::Xmm(_), VecSrc::Xmm(_)));
            return Some(Form::VecScalar { dst, src, width, merge });
        }
        C::Pmovmskb_r32_xmm | C::Pmovmskb_r64_xmm => {
            let dst = reg(insn.op0_register())?;
            return Some(Form::Pmovmskb { dst, src: xmm(insn.op1_register())? });
        }
        C::Movd_xmm_rm32 | C::Movq_xmm_rm64 if insn.op1_kind() == OpKind::Register => {
            return Some(Form::MovToVec { dst: xmm(insn.op0_register())?, src: reg(insn.op1_register())? });
        }
        C::Movd_rm32_xmm | C::Movq_rm64_xmm if insn.op0_kind() == OpKind::Register => {
            return Some(Form::MovFromVec { dst: reg(insn.op0_register())?, src: xmm(insn.op1_register())? });
        }
        C::Comisd_xmm_xmmm64 | C::Ucomisd_xmm_xmmm64 | C::Comiss_xmm_xmmm32 | C::Ucomiss_xmm_xmmm32 => {
            let double = matches!(insn.code(), C::Comisd_xmm_xmmm64 | C::Ucomisd_xmm_xmmm64);
            return Some(Form::Comis { double, a: xmm(insn.op0_register())?, b: scalar_operand(insn, 1, bits)? });
        }
        C::Addsd_xmm_xmmm64
        | C::Subsd_xmm_xmmm64
        | C::Mulsd_xmm_xmmm64
        | C::Divsd_xmm_xmmm64
        | C::Addss_xmm_xmmm32
        | C::Subss_xmm_xmmm32
        | C::Mulss_xmm_xmmm32
        | C::Divss_xmm_xmmm32 => {
            let op = match insn.mnemonic() {
                Mnemonic::Addsd | Mnemonic::Addss => FpOp::Add,
                Mnemonic::Subsd | Mnemonic::Subss => FpOp::Sub,
                Mnemonic::Mulsd | Mnemonic::Mulss => FpOp::Mul,
                _ => FpOp::Div,
            };
            let double =
                matches!(insn.mnemonic(), Mnemonic::Addsd | Mnemonic::Subsd | Mnemonic::Mulsd | Mnemonic::Divsd);
            return Some(Form::ScalarFp {
                op,
                double,
                dst: xmm(insn.op0_register())?,
                src: scalar_operand(insn, 1, bits)?,
            });
        }
        C::Cvtsi2sd_xmm_rm32 | C::Cvtsi2sd_xmm_rm64 | C::Cvtsi2ss_xmm_rm32 | C::Cvtsi2ss_xmm_rm64 => {
            let src = opnd(insn, 1, bits)?;
            let size = if matches!(insn.code(), C::Cvtsi2sd_xmm_rm64 | C::Cvtsi2ss_xmm_rm64) { 8 } else { 4 };
            if matches!(src, Opnd::Imm(_)) {
                return None;
            }
            let double = matches!(insn.code(), C::Cvtsi2sd_xmm_rm32 | C::Cvtsi2sd_xmm_rm64);
            return Some(Form::CvtInt { double, dst: xmm(insn.op0_register())?, src, size });
        }
        C::Pcmpistri_xmm_xmmm128_imm8 => {
            let VecSrc::Xmm(a) = src(0)? else { return None };
            return Some(Form::Pcmpistri { a, b: src(1)?, imm: insn.immediate8() });
        }
        _ => return None,
    };
    let VecSrc::Xmm(dst) = src(0)? else { return None };
    Some(Form::Vec { op, dst, src: src(1)? })
}

/// Operand `i` of a scalar SSE instruction: an XMM register, or memory the
/// inline path can address (in 32-bit code: flat DS, ES and SS).
fn scalar_operand(insn: &Instruction, i: u32, bits: u32) -> Option<VecSrc> {
    match insn.op_kind(i) {
        OpKind::Register => xmm(insn.op_register(i)).map(VecSrc::Xmm),
        OpKind::Memory
            if addr_ok(insn, bits)
                && (bits == 64 || !matches!(cpu::ops::mem_seg(insn), sreg::FS | sreg::GS | sreg::CS)) =>
        {
            Some(VecSrc::Mem)
        }
        _ => None,
    }
}

fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

/// The operand at `i`, if a translated form can take it.
fn opnd(insn: &Instruction, i: u32, bits: u32) -> Option<Opnd> {
    match insn.op_kind(i) {
        OpKind::Register => reg(insn.op_register(i)).map(Opnd::Reg),
        OpKind::Memory => mem_ok(insn, bits).then_some(Opnd::Mem),
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Some(Opnd::Imm(insn.immediate(i))),
        _ => None,
    }
}

/// Whether the memory operand's address can be computed here: 32- or
/// 64-bit addressing with general registers (or RIP), and an access of 1,
/// 2, 4 or 8 bytes.
fn mem_ok(insn: &Instruction, bits: u32) -> bool {
    addr_ok(insn, bits) && matches!(insn.memory_size().size(), 1 | 2 | 4 | 8) && !insn.is_broadcast()
}

/// Whether the memory operand's address can be computed here (LEA: no
/// access at all).
fn addr_ok(insn: &Instruction, bits: u32) -> bool {
    let base = insn.memory_base();
    let index = insn.memory_index();
    let base_ok = base == Register::None
        || (bits == 64 && (base == Register::RIP || base.is_gpr64()))
        || base == Register::EIP
        || base.is_gpr32();
    let index_ok = index == Register::None || (bits == 64 && index.is_gpr64()) || index.is_gpr32();
    base_ok && index_ok
}

fn opsize(o: Opnd, insn: &Instruction) -> u32 {
    match o {
        Opnd::Reg(r) => r.size,
        Opnd::Mem => insn.memory_size().size() as u32,
        Opnd::Imm(_) => 0,
    }
}

/// The translated form of `insn`, or `None` for the interpreter's handler.
fn classify(insn: &Instruction, bits: u32) -> Option<Form> {
    let form = classify_any(insn, bits)?;
    // LOCK: allowed on a read-modify-write of memory, where it changes
    // nothing for one CPU; elsewhere the interpreter raises #UD.
    if insn.has_lock_prefix() {
        let rmw = match form {
            Form::Alu { op, dst: Opnd::Mem, .. } => !matches!(op, Alu::Cmp | Alu::Test),
            Form::IncDec { dst: Opnd::Mem, .. }
            | Form::Neg { dst: Opnd::Mem, .. }
            | Form::Not { dst: Opnd::Mem, .. }
            | Form::Xchg { dst: Opnd::Mem, .. }
            | Form::Cmpxchg { dst: Opnd::Mem, .. } => true,
            Form::Bt { op, dst: Opnd::Mem, .. } => op != BtOp::Test,
            _ => false,
        };
        if !rmw {
            return None;
        }
    }
    Some(form)
}

fn classify_any(insn: &Instruction, bits: u32) -> Option<Form> {
    // Mandatory F3/F2 prefixes are part of an SSE opcode.
    if let Some(f) = classify_vec(insn, bits) {
        return Some(f);
    }
    // PAUSE (F3 90) and ENDBR are hints: no architectural effect here.
    if matches!(insn.mnemonic(), Mnemonic::Pause | Mnemonic::Endbr32 | Mnemonic::Endbr64) {
        return Some(Form::Nop);
    }
    let rep_string = matches!(insn.mnemonic(), Mnemonic::Stosb | Mnemonic::Stosq | Mnemonic::Movsb | Mnemonic::Movsq)
        && insn.has_rep_prefix();
    if (insn.has_rep_prefix() || insn.has_repne_prefix()) && !rep_string {
        return None;
    }
    let n = insn.op_count();
    let stack = if bits == 64 { 8 } else { 4 };
    let form = match insn.mnemonic() {
        Mnemonic::Nop => Form::Nop,
        Mnemonic::Mov
            if n == 2 && !(insn.op1_kind() == OpKind::Register && insn.op1_register().is_segment_register()) =>
        {
            let dst = opnd(insn, 0, bits)?;
            let src = opnd(insn, 1, bits)?;
            let size = opsize(dst, insn);
            if matches!(dst, Opnd::Imm(_)) || matches!((dst, src), (Opnd::Mem, Opnd::Mem)) {
                return None;
            }
            if let Opnd::Reg(r) = src {
                if r.size != size {
                    return None;
                }
            }
            Form::Mov { dst, src, size }
        }
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd if n == 2 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let src = opnd(insn, 1, bits)?;
            let from = opsize(src, insn);
            if matches!(src, Opnd::Imm(_)) || from > dst.size {
                return None;
            }
            Form::Movx { dst, src, from, signed: insn.mnemonic() != Mnemonic::Movzx }
        }
        Mnemonic::Lea if n == 2 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            if dst.size < 4 || insn.op1_kind() != OpKind::Memory || !addr_ok(insn, bits) {
                return None;
            }
            Form::Lea { dst }
        }
        Mnemonic::Add
        | Mnemonic::Or
        | Mnemonic::Adc
        | Mnemonic::Sbb
        | Mnemonic::And
        | Mnemonic::Sub
        | Mnemonic::Xor
        | Mnemonic::Cmp
        | Mnemonic::Test
            if n == 2 =>
        {
            let op = match insn.mnemonic() {
                Mnemonic::Add => Alu::Add,
                Mnemonic::Or => Alu::Or,
                Mnemonic::Adc => Alu::Adc,
                Mnemonic::Sbb => Alu::Sbb,
                Mnemonic::And => Alu::And,
                Mnemonic::Sub => Alu::Sub,
                Mnemonic::Xor => Alu::Xor,
                Mnemonic::Cmp => Alu::Cmp,
                _ => Alu::Test,
            };
            let dst = opnd(insn, 0, bits)?;
            let src = opnd(insn, 1, bits)?;
            let size = opsize(dst, insn);
            if matches!(dst, Opnd::Imm(_)) || size == 0 {
                return None;
            }
            Form::Alu { op, dst, src, size }
        }
        Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Neg | Mnemonic::Not if n == 1 => {
            let dst = opnd(insn, 0, bits)?;
            let size = opsize(dst, insn);
            if matches!(dst, Opnd::Imm(_)) {
                return None;
            }
            match insn.mnemonic() {
                Mnemonic::Inc => Form::IncDec { inc: true, dst, size },
                Mnemonic::Dec => Form::IncDec { inc: false, dst, size },
                Mnemonic::Neg => Form::Neg { dst, size },
                _ => Form::Not { dst, size },
            }
        }
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar
            if n == 2 && matches!(opnd(insn, 0, bits)?, Opnd::Mem) && insn.op1_kind() == OpKind::Immediate8 =>
        {
            // A memory destination, by an immediate from 1 to the width
            // less one (a count of 0 still checks the access).
            let size = opsize(Opnd::Mem, insn);
            let count = u32::from(insn.immediate8()) & if size == 8 { 0x3f } else { 0x1f };
            if count == 0 || count >= size * 8 || insn.has_lock_prefix() {
                return None;
            }
            let op = match insn.mnemonic() {
                Mnemonic::Shr => Shift::Shr,
                Mnemonic::Sar => Shift::Sar,
                _ => Shift::Shl,
            };
            Form::ShiftMem { op, size, count }
        }
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar | Mnemonic::Rol | Mnemonic::Ror if n == 2 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let op = match insn.mnemonic() {
                Mnemonic::Shr => Shift::Shr,
                Mnemonic::Sar => Shift::Sar,
                Mnemonic::Rol => Shift::Rol,
                Mnemonic::Ror => Shift::Ror,
                _ => Shift::Shl,
            };
            match insn.op1_kind() {
                OpKind::Immediate8 => {
                    let count = u32::from(insn.immediate8()) & if dst.size == 8 { 0x3f } else { 0x1f };
                    // 8- and 16-bit registers: shifts (not rotates) by less
                    // than the width.
                    if dst.size < 4 && (matches!(op, Shift::Rol | Shift::Ror) || count >= dst.size * 8) {
                        return None;
                    }
                    Form::Shift { op, dst, count }
                }
                _ if dst.size < 4 => return None,
                // Rotates by CL go through the interpreter.
                OpKind::Register if insn.op1_register() == Register::CL && !matches!(op, Shift::Rol | Shift::Ror) => {
                    Form::ShiftCl { op, dst }
                }
                _ => return None,
            }
        }
        Mnemonic::Fnstcw if insn.op0_kind() == OpKind::Memory && mem_ok(insn, bits) => Form::Fnstcw,
        // Hints and fences: no architectural effect for one CPU.
        Mnemonic::Prefetchnta
        | Mnemonic::Prefetcht0
        | Mnemonic::Prefetcht1
        | Mnemonic::Prefetcht2
        | Mnemonic::Prefetchw
        | Mnemonic::Lfence
        | Mnemonic::Mfence
        | Mnemonic::Sfence => Form::Nop,
        Mnemonic::Mov if n == 2 && insn.op1_kind() == OpKind::Register && insn.op1_register().is_segment_register() => {
            let seg = insn.op1_register() as usize - Register::ES as usize;
            let dst = opnd(insn, 0, bits)?;
            if seg > sreg::GS || matches!(dst, Opnd::Imm(_)) {
                return None;
            }
            Form::MovFromSreg { seg, dst }
        }
        Mnemonic::Cli => Form::Cli,
        Mnemonic::Sti => Form::Sti,
        Mnemonic::Swapgs if bits == 64 => Form::Swapgs,
        Mnemonic::Stac => Form::Ac { set: true },
        Mnemonic::Clac => Form::Ac { set: false },
        Mnemonic::Pushfq if bits == 64 => Form::Pushf,
        Mnemonic::Pushfd if bits == 32 => Form::Pushf,
        Mnemonic::Stosb | Mnemonic::Stosq | Mnemonic::Movsb | Mnemonic::Movsq
            if bits == 64
                && insn.has_rep_prefix()
                && insn.op0_kind() == OpKind::MemoryESRDI
                && cpu::ops::mem_seg(insn) < sreg::FS =>
        {
            let movs = matches!(insn.mnemonic(), Mnemonic::Movsb | Mnemonic::Movsq);
            if movs && insn.op1_kind() != OpKind::MemorySegRSI {
                return None;
            }
            let size = if matches!(insn.mnemonic(), Mnemonic::Stosq | Mnemonic::Movsq) { 8 } else { 1 };
            Form::RepString { movs, size }
        }
        Mnemonic::Shld | Mnemonic::Shrd if n == 3 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let Opnd::Reg(src) = opnd(insn, 1, bits)? else { return None };
            if dst.size < 4 || src.size != dst.size {
                return None;
            }
            let count = match insn.op2_kind() {
                OpKind::Immediate8 => Some(u32::from(insn.immediate8()) & if dst.size == 8 { 0x3f } else { 0x1f }),
                OpKind::Register if insn.op2_register() == Register::CL => None,
                _ => return None,
            };
            Form::DoubleShift { left: insn.mnemonic() == Mnemonic::Shld, dst, src, count }
        }
        Mnemonic::Tzcnt | Mnemonic::Lzcnt | Mnemonic::Popcnt if n == 2 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let src = opnd(insn, 1, bits)?;
            if dst.size < 4 || matches!(src, Opnd::Imm(_)) || opsize(src, insn) != dst.size {
                return None;
            }
            let kind = match insn.mnemonic() {
                Mnemonic::Tzcnt => CountKind::Tz,
                Mnemonic::Lzcnt => CountKind::Lz,
                _ => CountKind::Pop,
            };
            Form::Count { kind, dst, src }
        }
        Mnemonic::Bsf | Mnemonic::Bsr if n == 2 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let src = opnd(insn, 1, bits)?;
            if dst.size < 4 || matches!(src, Opnd::Imm(_)) || opsize(src, insn) != dst.size {
                return None;
            }
            Form::BitScan { reverse: insn.mnemonic() == Mnemonic::Bsr, dst, src }
        }
        Mnemonic::Imul if n == 2 || n == 3 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let src = opnd(insn, 1, bits)?;
            if dst.size < 4 || matches!(src, Opnd::Imm(_)) || opsize(src, insn) != dst.size {
                return None;
            }
            let imm = if n == 3 {
                match opnd(insn, 2, bits)? {
                    Opnd::Imm(v) => Some(v),
                    _ => return None,
                }
            } else {
                None
            };
            Form::Imul { dst, src, imm }
        }
        Mnemonic::Push if n == 1 => {
            let ok = matches!(
                insn.code(),
                Code::Push_r64
                    | Code::Push_rm64
                    | Code::Push_rm32
                    | Code::Pushq_imm32
                    | Code::Pushq_imm8
                    | Code::Push_r32
                    | Code::Pushd_imm32
                    | Code::Pushd_imm8
            );
            if !ok {
                return None;
            }
            Form::Push { src: opnd(insn, 0, bits)?, size: stack }
        }
        Mnemonic::Pop if n == 1 && matches!(insn.code(), Code::Pop_r64 | Code::Pop_r32) => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            Form::Pop { dst }
        }
        Mnemonic::Leave if matches!(insn.code(), Code::Leaveq | Code::Leaved) => Form::Leave,
        Mnemonic::Call if n == 1 => match insn.code() {
            Code::Call_rel32_64 | Code::Call_rel32_32 => {
                let t = insn.near_branch_target();
                if bits == 64 && !canonical(t) {
                    return None;
                }
                Form::CallRel { target: t }
            }
            Code::Call_rm64 | Code::Call_rm32 => {
                let src = opnd(insn, 0, bits)?;
                if opsize(src, insn) != stack {
                    return None;
                }
                Form::CallInd { src }
            }
            _ => return None,
        },
        Mnemonic::Ret => match insn.code() {
            Code::Retnq | Code::Retnd => Form::Ret { pop: 0 },
            Code::Retnq_imm16 | Code::Retnd_imm16 => Form::Ret { pop: u64::from(insn.immediate16()) },
            _ => return None,
        },
        Mnemonic::Jmp if n == 1 => match insn.code() {
            Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Jmp_rel8_32 | Code::Jmp_rel32_32 => {
                let t = insn.near_branch_target();
                if bits == 64 && !canonical(t) {
                    return None;
                }
                Form::JmpRel { target: t }
            }
            Code::Jmp_rm64 | Code::Jmp_rm32 => {
                let src = opnd(insn, 0, bits)?;
                if opsize(src, insn) != stack {
                    return None;
                }
                Form::JmpInd { src }
            }
            _ => return None,
        },
        _ if insn.is_jcc_short_or_near() => {
            let t = insn.near_branch_target();
            let ok_size = matches!(insn.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32);
            if !ok_size || (bits == 64 && !canonical(t)) {
                return None;
            }
            Form::Jcc { cc: cpu::ops::mov::condition(insn), target: t }
        }
        m if (Mnemonic::Seta..=Mnemonic::Sets).contains(&m) && n == 1 => {
            let dst = opnd(insn, 0, bits)?;
            if opsize(dst, insn) != 1 {
                return None;
            }
            Form::Setcc { cc: cpu::ops::mov::condition(insn), dst }
        }
        m if (Mnemonic::Cmova..=Mnemonic::Cmovs).contains(&m) && n == 2 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let src = opnd(insn, 1, bits)?;
            if dst.size < 2 || matches!(src, Opnd::Imm(_)) || opsize(src, insn) != dst.size {
                return None;
            }
            Form::Cmov { cc: cpu::ops::mov::condition(insn), dst, src }
        }
        Mnemonic::Rdtsc => Form::Rdtsc { aux: false },
        Mnemonic::Rdtscp => Form::Rdtsc { aux: true },
        Mnemonic::Cwde => Form::WidenAcc { from: 2 },
        Mnemonic::Cdqe => Form::WidenAcc { from: 4 },
        Mnemonic::Cdq => Form::SignAcc { size: 4 },
        Mnemonic::Cqo => Form::SignAcc { size: 8 },
        Mnemonic::Bswap if n == 1 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            if dst.size < 4 {
                return None;
            }
            Form::Bswap { dst }
        }
        Mnemonic::Mul | Mnemonic::Div if n == 1 => {
            let src = opnd(insn, 0, bits)?;
            let size = opsize(src, insn);
            if matches!(src, Opnd::Imm(_)) || size < 4 {
                return None;
            }
            Form::MulDiv { div: insn.mnemonic() == Mnemonic::Div, src, size }
        }
        Mnemonic::Xchg | Mnemonic::Cmpxchg if n == 2 => {
            let dst = opnd(insn, 0, bits)?;
            let Opnd::Reg(src) = opnd(insn, 1, bits)? else { return None };
            let size = opsize(dst, insn);
            if matches!(dst, Opnd::Imm(_)) || size != src.size {
                return None;
            }
            if insn.mnemonic() == Mnemonic::Xchg {
                Form::Xchg { dst, src, size }
            } else {
                Form::Cmpxchg { dst, src, size }
            }
        }
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc if n == 2 => {
            let op = match insn.mnemonic() {
                Mnemonic::Bt => BtOp::Test,
                Mnemonic::Bts => BtOp::Set,
                Mnemonic::Btr => BtOp::Reset,
                _ => BtOp::Complement,
            };
            let dst = opnd(insn, 0, bits)?;
            let src = opnd(insn, 1, bits)?;
            let size = opsize(dst, insn);
            // A memory operand with a register bit offset addresses
            // outside the operand: the interpreter runs it.
            match (dst, src) {
                (Opnd::Reg(_), Opnd::Reg(r)) if r.size == size => {}
                (Opnd::Reg(_) | Opnd::Mem, Opnd::Imm(_)) => {}
                _ => return None,
            }
            if size < 2 {
                return None;
            }
            Form::Bt { op, dst, src, size }
        }
        _ => return None,
    };
    Some(form)
}

/// What is statically known about the lazy flags at a point.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Known {
    Unknown,
    /// The record's operation, size and values, as SSA values that
    /// dominate the point.
    Lazy {
        op: FlagOp,
        size: u32,
        res: Value,
        a: Value,
        b: Value,
        cin: Value,
    },
    /// The record is empty and RFLAGS is this value.
    Eager(Value),
    /// The old flags with the bits outside `keep` replaced by `bits`: an
    /// instruction that changes some flags only (a rotate, BT, BSF). The
    /// old flags are the producer `base` (a lazy record in SSA values, as
    /// in `Lazy`: op, size, res, a, b, cin), or without one the state's
    /// (its record, or RFLAGS). They are computed only where something
    /// needs them; most often the next producer replaces them all first.
    Partial {
        keep: u64,
        bits: Value,
        base: Option<(FlagOp, u32, [Value; 4])>,
    },
}

fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// The planned instructions of a region: each one translated or a fallback.
struct Planned {
    rip: u64,
    form: Option<Form>,
    /// Index into the fallback table.
    fallback: usize,
}

/// A translated region: the function built, its fallback table and counts.
pub struct Translated {
    pub fallbacks: Vec<Decoded>,
    pub stats: TxStats,
}

/// The region's function under construction.
struct Tx<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    bits: u32,
    ctx: Value,
    state: Value,
    tlb: Value,
    budget: Value,
    icount: Variable,
    exit_rip: Variable,
    known: Known,
    /// The guest block's registers held in SSA values (full 64 bits), and
    /// which of them differ from the state in memory.
    regs: [Option<Value>; 16],
    dirty: u16,
    /// `known` is a lazy record the state does not hold yet.
    lazy_dirty: bool,
    /// `known` is an INC/DEC whose carry-in (the CF before it) is still
    /// the state's record: computed only where something needs it (most
    /// often nothing does: the next producer replaces the record).
    cin_deferred: bool,
    /// SSE instructions may run (CR0 and CR4 were checked) since the last
    /// code that could change them.
    sse_ok: bool,
    /// The current instruction's entry in the fallback table, for a slow
    /// path that runs it through the interpreter.
    slow_insn: Option<*const Decoded>,
    /// The instruction being translated read memory (a helper's read may
    /// have had effects: its stores keep their own helper).
    insn_loaded: bool,
    /// Its read-modify-write load left through the interpreter on a miss,
    /// so the host address it hands on is always good.
    rmw_direct: bool,
    /// Native instructions completed since the last update of `icount`.
    pending: i64,
    exit_block: Block,
    leave_block: Block,
    /// Per guest block: [`flags_dead_on_entry`].
    flags_dead: Vec<bool>,
    blocks: HashMap<u64, (Block, usize)>,
    sig_fallback: cranelift_codegen::ir::SigRef,
    sig_flags: cranelift_codegen::ir::SigRef,
    sig_pcmp: cranelift_codegen::ir::SigRef,
    sig_div: cranelift_codegen::ir::SigRef,
    sig_copy: cranelift_codegen::ir::SigRef,
    sig_fill: cranelift_codegen::ir::SigRef,
    sig_load_saving: cranelift_codegen::ir::SigRef,
    sig_store_saving: cranelift_codegen::ir::SigRef,
    access: AccessCalls,
}

const GPR_OFF: i32 = std::mem::offset_of!(CpuState, gpr) as i32;
const RIP_OFF: i32 = std::mem::offset_of!(CpuState, rip) as i32;
const RFLAGS_OFF: i32 = std::mem::offset_of!(CpuState, rflags) as i32;
const LAZY_OFF: i32 = std::mem::offset_of!(CpuState, lazy) as i32;
const XMM_OFF: i32 = std::mem::offset_of!(CpuState, xmm) as i32;
const CR0_OFF: i32 = std::mem::offset_of!(CpuState, cr0) as i32;
const CR4_OFF: i32 = std::mem::offset_of!(CpuState, cr4) as i32;
const MXCSR_OFF: i32 = std::mem::offset_of!(CpuState, mxcsr) as i32;
const CPL_OFF: i32 = std::mem::offset_of!(CpuState, cpl) as i32;
const KERNEL_GS_OFF: i32 =
    (std::mem::offset_of!(CpuState, msr) + std::mem::offset_of!(cpu::state::MsrState, kernel_gs_base)) as i32;
const TSC_AUX_OFF: i32 =
    (std::mem::offset_of!(CpuState, msr) + std::mem::offset_of!(cpu::state::MsrState, tsc_aux)) as i32;
const FCW_OFF: i32 = (std::mem::offset_of!(CpuState, fpu) + std::mem::offset_of!(cpu::state::FpuState, fcw)) as i32;
const SEG_OFF: i32 = std::mem::offset_of!(CpuState, seg) as i32;
const SEG_SIZE: i32 = std::mem::size_of::<cpu::state::Segment>() as i32;
const SEG_BASE_OFF: i32 = std::mem::offset_of!(cpu::state::Segment, base) as i32;
const SEG_SEL_OFF: i32 = std::mem::offset_of!(cpu::state::Segment, selector) as i32;
/// Offsets in `LazyFlags` of op (u32), size (u32), res, src1, src2, carry_in.
const LZ_OFF: [i32; 6] = [
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, op) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, size) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, res) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, src1) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, src2) as i32,
    LAZY_OFF + std::mem::offset_of!(cpu::state::LazyFlags, carry_in) as i32,
];
const OP: usize = 0;
const RES: usize = 2;
const SRC1: usize = 3;
const SRC2: usize = 4;
const CIN: usize = 5;

fn mem_flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Guest memory through a host pointer: may be unaligned.
fn guest_flags() -> MemFlagsData {
    let mut f = MemFlagsData::new();
    f.set_notrap();
    f
}

/// Build the function of `spec` into `b` (a fresh function with the
/// signature `(ptr ctx, i32 entry)`).
pub fn translate(b: &mut FunctionBuilder, spec: &RegionSpec, call_conv: CallConv, ptr: Type) -> Translated {
    // Plan: which instructions are translated, which fall back.
    let total: usize = spec.blocks.iter().map(|g| g.insns.len()).sum();
    let mut fallbacks: Vec<Decoded> = Vec::with_capacity(total.max(1));
    let mut plan: Vec<Vec<Planned>> = Vec::new();
    let mut stats = TxStats::default();
    for g in &spec.blocks {
        let mut v = Vec::new();
        for d in &g.insns {
            let rip = d.next_rip().wrapping_sub(d.insn.len() as u64);
            // (An instruction that crosses into the next page is
            // translated too: the region holds that page, runs only while
            // it maps as it did, and is dropped when it is written.)
            let form = classify(&d.insn, spec.bits);
            let mut fb = usize::MAX;
            match &form {
                Some(f) => {
                    stats.native += 1;
                    if f.may_slow() || writes_memory(&d.insn) {
                        // The slow path runs it through the interpreter
                        // (for a store, the path of a TLB miss).
                        fb = fallbacks.len();
                        fallbacks.push(*d);
                    }
                }
                None => {
                    fb = fallbacks.len();
                    fallbacks.push(*d);
                    stats.fallback += 1;
                }
            }
            v.push(Planned { rip, form, fallback: fb });
        }
        plan.push(v);
    }

    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let ctx_v = b.block_params(entry)[0];
    let entry_idx = b.block_params(entry)[1];

    let sig = |params: &[Type], ret: Option<Type>| {
        let mut s = Signature::new(call_conv);
        for p in params {
            s.params.push(AbiParam::new(*p));
        }
        if let Some(r) = ret {
            s.returns.push(AbiParam::new(r));
        }
        s
    };
    let i64t = types::I64;
    let i32t = types::I32;
    let s_fb = sig(&[ptr, ptr], Some(i32t));
    let s_flags = sig(&[ptr], Some(i64t));
    let sig_fallback = b.import_signature(s_fb);
    let sig_flags = b.import_signature(s_flags);
    let sig_pcmp = b.import_signature(sig(&[ptr, ptr, i32t], Some(i64t)));
    let sig_div = b.import_signature(sig(&[i64t, i64t, i64t, ptr], Some(i64t)));
    let sig_copy = b.import_signature(sig(&[i64t, i64t, i64t], None));
    let sig_fill = b.import_signature(sig(&[i64t, i64t, i64t, i64t], None));
    let saving = |params: &[Type]| {
        let mut s = Signature::new(CallConv::PreserveAll);
        s.params.extend(params.iter().map(|&p| AbiParam::new(p)));
        s
    };
    let sig_load_saving = b.import_signature(saving(&[ptr, i32t, i64t, i32t, i64t]));
    let sig_store_saving = b.import_signature(saving(&[ptr, i32t, i64t, i32t, i64t, i64t]));

    let state = b.ins().load(ptr, mem_flags(), ctx_v, off::STATE);
    let tlb = b.ins().load(ptr, mem_flags(), ctx_v, off::TLB);
    let budget = b.ins().load(i64t, mem_flags(), ctx_v, off::BUDGET);
    let icount = b.declare_var(i64t);
    let exit_rip = b.declare_var(i64t);
    let exit_block = b.create_block();
    let leave_block = b.create_block();
    let mut tx = Tx {
        b,
        bits: spec.bits,
        ctx: ctx_v,
        state,
        tlb,
        budget,
        icount,
        exit_rip,
        known: Known::Unknown,
        regs: [None; 16],
        dirty: 0,
        lazy_dirty: false,
        cin_deferred: false,
        sse_ok: false,
        slow_insn: None,
        insn_loaded: false,
        rmw_direct: false,
        pending: 0,
        exit_block,
        leave_block,
        flags_dead: plan.iter().map(|p| flags_dead_on_entry(p)).collect(),
        blocks: HashMap::new(),
        sig_fallback,
        sig_flags,
        sig_pcmp,
        sig_div,
        sig_copy,
        sig_fill,
        sig_load_saving,
        sig_store_saving,
        access: spec.access,
    };
    let zero = tx.b.ins().iconst(i64t, 0);
    tx.b.def_var(icount, zero);
    tx.b.def_var(exit_rip, zero);

    // The guest blocks, and the entry switch.
    let mut ir_blocks = Vec::new();
    for (i, g) in spec.blocks.iter().enumerate() {
        let blk = tx.b.create_block();
        tx.blocks.entry(g.rip).or_insert((blk, i));
        ir_blocks.push(blk);
    }
    // The entry switch: block 0 (where the region was gathered, the
    // commonest way in) first, then a binary search of conditional
    // branches. With a jump table instead, samples gathered at its
    // indirect jump, and a run of `seq` (glibc's printf: short calls, a
    // region entry every ~30 instructions) took about 4% longer.
    if ir_blocks.len() > 2 {
        let rest = tx.b.create_block();
        let first = tx.b.ins().icmp_imm_s(IntCC::Equal, entry_idx, 0);
        tx.b.ins().brif(first, ir_blocks[0], &[], rest, &[]);
        tx.enter_block(rest);
        entry_switch(tx.b, entry_idx, &ir_blocks[1..], 1, leave_block);
    } else {
        entry_switch(tx.b, entry_idx, &ir_blocks, 0, leave_block);
    }

    let fb_base = fallbacks.as_ptr();
    for (i, g) in spec.blocks.iter().enumerate() {
        tx.b.switch_to_block(ir_blocks[i]);
        tx.known = Known::Unknown;
        tx.forget();
        tx.pending = 0;
        let mut ended = false;
        for (j, p) in plan[i].iter().enumerate() {
            let d = &g.insns[j];
            let next = d.next_rip();
            match &p.form {
                Some(f) => {
                    // SAFETY (pointer arithmetic only): as below.
                    tx.slow_insn = (p.fallback != usize::MAX).then(|| fb_base.wrapping_add(p.fallback));
                    tx.insn_loaded = false;
                    tx.rmw_direct = false;
                    ended = tx.emit(f, &d.insn, p.rip, next);
                    if !ended {
                        tx.pending += 1;
                    }
                }
                None => {
                    // SAFETY (pointer arithmetic only): `fallback < len`; the
                    // table is never pushed to again, so it does not move.
                    let dp = fb_base.wrapping_add(p.fallback);
                    tx.emit_fallback(dp, p.rip);
                }
            }
            if ended {
                break;
            }
        }
        if !ended {
            // Fall through to the code after the block.
            let last = g.insns.last().map(|d| d.next_rip()).unwrap_or(g.rip);
            tx.goto(last, g.rip);
        }
    }

    // The exits.
    tx.b.switch_to_block(exit_block);
    let rip = tx.b.use_var(exit_rip);
    tx.count_out();
    if spec.chain {
        tx.chain_exit(rip, ptr);
    } else {
        tx.b.ins().store(mem_flags(), rip, tx.state, RIP_OFF);
        tx.b.ins().return_(&[]);
    }

    tx.b.switch_to_block(leave_block);
    tx.count_out();
    tx.b.ins().return_(&[]);

    tx.b.seal_all_blocks();
    Translated { fallbacks, stats }
}

/// Branch on `idx` to `blocks[i]` for `idx == base + i`, and to `other`
/// for any other value: a binary search of conditional branches.
fn entry_switch(b: &mut FunctionBuilder, idx: Value, blocks: &[Block], base: usize, other: Block) {
    match blocks.len() {
        0 => {
            b.ins().jump(other, &[]);
        }
        1 => {
            let hit = b.ins().icmp_imm_s(IntCC::Equal, idx, base as i64);
            b.ins().brif(hit, blocks[0], &[], other, &[]);
        }
        n => {
            let half = n / 2;
            let lo = b.create_block();
            let hi = b.create_block();
            let below = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, idx, (base + half) as i64);
            b.ins().brif(below, lo, &[], hi, &[]);
            b.switch_to_block(lo);
            b.seal_block(lo);
            entry_switch(b, idx, &blocks[..half], base, other);
            b.switch_to_block(hi);
            b.seal_block(hi);
            entry_switch(b, idx, &blocks[half..], base + half, other);
        }
    }
}

impl Tx<'_, '_> {
    /// Continue in `blk`, whose predecessors are all emitted: sealing it
    /// at once keeps SSA construction from adding parameters for every
    /// variable to every block.
    fn enter_block(&mut self, blk: Block) {
        self.b.switch_to_block(blk);
        self.b.seal_block(blk);
    }

    fn iconst(&mut self, v: u64) -> Value {
        self.b.ins().iconst(types::I64, v as i64)
    }

    /// Add the pending count to `icount`.
    fn flush_count(&mut self) {
        if self.pending != 0 {
            let c = self.b.use_var(self.icount);
            let c = self.b.ins().iadd_imm_s(c, self.pending);
            self.b.def_var(self.icount, c);
            self.pending = 0;
        }
    }

    /// `ctx.budget = budget - icount`: what is left for the next region,
    /// and how the run loop counts the instructions run.
    fn count_out(&mut self) {
        let c = self.b.use_var(self.icount);
        let left = self.b.ins().isub(self.budget, c);
        self.b.ins().store(mem_flags(), left, self.ctx, off::BUDGET);
    }

    /// The end of a plain exit at `rip` (the state is written back and the
    /// count added): go straight on into the region of `rip` when the jump
    /// cache has it for the current tag, nothing asked to leave (a helper's
    /// status, code pages written), the budget lasts and hops are left;
    /// otherwise return to the run loop.
    fn chain_exit(&mut self, rip: Value, ptr: Type) {
        let fl = mem_flags();
        let i64t = types::I64;
        let ret = self.b.create_block();
        let probe = self.b.create_block();
        let go = self.b.create_block();
        let c = self.b.use_var(self.icount);
        let spent = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, c, self.budget);
        // The status and the exit kind, side by side.
        let st = self.b.ins().load(i64t, fl, self.ctx, off::STATUS);
        let stop = self.b.ins().icmp_imm_s(IntCC::NotEqual, st, 0);
        let stop = self.b.ins().bor(stop, spent);
        self.b.ins().brif(stop, ret, &[], probe, &[]);

        self.enter_block(probe);
        let jump = self.b.ins().load(ptr, fl, self.ctx, off::JUMP);
        let h = self.b.ins().ushr_imm_s(rip, 12);
        let h = self.b.ins().bxor(h, rip);
        let h = self.b.ins().band_imm_s(h, (ctx::JUMP_SETS - 1) as i64);
        let h = self.b.ins().ishl_imm_s(h, i64::from(ctx::JUMP_SET_SHIFT));
        let set = self.b.ins().iadd(jump, h);
        let tag = self.b.ins().load(i64t, fl, self.ctx, off::TAG);
        let tag_g = self.b.ins().load(i64t, fl, self.ctx, off::TAG_GLOBAL);
        // The set's first slot, then its second.
        let second = self.b.create_block();
        let slot = self.b.append_block_param(go, ptr);
        let miss = self.slot_miss(set, rip, tag, tag_g);
        self.b.ins().brif(miss, second, &[], go, &[set.into()]);
        self.enter_block(second);
        let slot2 = self.b.ins().iadd_imm_s(set, 1 << ctx::JUMP_SLOT_SHIFT);
        let miss = self.slot_miss(slot2, rip, tag, tag_g);
        self.b.ins().brif(miss, ret, &[], go, &[slot2.into()]);

        self.enter_block(go);
        let code = self.b.ins().load(ptr, fl, slot, off::SLOT_CODE);
        let entry = self.b.ins().load(types::I32, fl, slot, off::SLOT_ENTRY);
        let hops = self.b.ins().load(i64t, fl, self.ctx, off::HOPS);
        let hops = self.b.ins().iadd_imm_s(hops, 1);
        self.b.ins().store(fl, hops, self.ctx, off::HOPS);
        let sig = self.b.import_signature(crate::compiler::region_signature(ptr));
        self.b.ins().return_call_indirect(sig, code, &[self.ctx, entry]);

        self.enter_block(ret);
        self.b.ins().store(fl, rip, self.state, RIP_OFF);
        self.b.ins().return_(&[]);
    }

    /// Whether the jump-cache slot at `slot` does not hold `rip` for the
    /// current tag.
    fn slot_miss(&mut self, slot: Value, rip: Value, tag: Value, tag_g: Value) -> Value {
        let fl = mem_flags();
        let i64t = types::I64;
        let srip = self.b.ins().load(i64t, fl, slot, off::SLOT_RIP);
        let stag = self.b.ins().load(i64t, fl, slot, off::SLOT_TAG);
        let m1 = self.b.ins().icmp(IntCC::NotEqual, srip, rip);
        let m2 = self.b.ins().icmp(IntCC::NotEqual, stag, tag);
        let m3 = self.b.ins().icmp(IntCC::NotEqual, stag, tag_g);
        let m23 = self.b.ins().band(m2, m3);
        self.b.ins().bor(m1, m23)
    }

    /// Leave the region at `rip` (with `extra` more instructions counted).
    fn exit_to(&mut self, rip: u64, extra: i64) {
        self.emit_stores();
        let c = self.b.use_var(self.icount);
        let c = self.b.ins().iadd_imm_s(c, self.pending + extra);
        self.b.def_var(self.icount, c);
        let r = self.iconst(rip);
        self.b.def_var(self.exit_rip, r);
        self.b.ins().jump(self.exit_block, &[]);
    }

    /// Leave the region at a computed RIP.
    fn exit_to_value(&mut self, rip: Value, extra: i64) {
        self.emit_stores();
        let c = self.b.use_var(self.icount);
        let c = self.b.ins().iadd_imm_s(c, self.pending + extra);
        self.b.def_var(self.icount, c);
        self.b.def_var(self.exit_rip, rip);
        self.b.ins().jump(self.exit_block, &[]);
    }

    /// Continue at `target`: in the region (with a budget check on edges
    /// that may close a loop) or out of it. Terminates the current block.
    fn goto(&mut self, target: u64, from_rip: u64) {
        self.flush_count();
        if self.flags_dead_at(target) {
            // The record stays unstored on the way in (an exit at the back
            // edge below stores it).
            self.sync_regs();
        } else {
            self.sync();
        }
        match self.blocks.get(&target).copied() {
            Some((blk, _)) if target > from_rip => {
                self.b.ins().jump(blk, &[]);
            }
            Some((blk, _)) => {
                let c = self.b.use_var(self.icount);
                let over = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, c, self.budget);
                let out = self.b.create_block();
                self.b.ins().brif(over, out, &[], blk, &[]);
                self.enter_block(out);
                self.exit_to(target, 0);
            }
            None => self.exit_to(target, 0),
        }
    }

    // ---- registers -------------------------------------------------------

    /// Store what the state in memory lacks (dirty registers, a pending
    /// lazy record) without forgetting it: for paths that leave while the
    /// main path goes on with the same values.
    fn emit_stores(&mut self) {
        let fl = mem_flags();
        self.store_regs();
        if self.lazy_dirty {
            if let Known::Partial { .. } = self.known {
                // The state's flags with the new bits: into RFLAGS, the
                // record emptied.
                let f = self.materialize();
                self.store_eager(f);
            }
            if let Known::Lazy { op, size, res, a, b, cin } = self.known {
                // Read the record before it is overwritten.
                let cin = if self.cin_deferred { self.cf_from_state() } else { cin };
                // op (u32) and size (u32) side by side: one 64-bit store.
                let opsize = self.iconst(u64::from(op as u32) | (u64::from(size) << 32));
                self.b.ins().store(fl, opsize, self.state, LZ_OFF[OP]);
                self.b.ins().store(fl, res, self.state, LZ_OFF[RES]);
                // Only what `cpu::flags::compute` reads for the operation.
                if !matches!(op, FlagOp::Logic | FlagOp::Inc | FlagOp::Dec) {
                    self.b.ins().store(fl, a, self.state, LZ_OFF[SRC1]);
                    self.b.ins().store(fl, b, self.state, LZ_OFF[SRC2]);
                }
                if matches!(op, FlagOp::Adc | FlagOp::Sbb | FlagOp::Inc | FlagOp::Dec) {
                    self.b.ins().store(fl, cin, self.state, LZ_OFF[CIN]);
                }
            }
        }
    }

    /// Bring the state in memory up to date on the main path: the values
    /// stay held, now clean.
    fn sync(&mut self) {
        if self.lazy_dirty && matches!(self.known, Known::Partial { .. }) {
            let f = self.materialize();
            let rf = self.store_eager(f);
            self.known = Known::Eager(rf);
            self.lazy_dirty = false;
        }
        if self.lazy_dirty && self.cin_deferred {
            if let Known::Lazy { op, size, res, a, b, .. } = self.known {
                let cin = self.cf_from_state();
                self.known = Known::Lazy { op, size, res, a, b, cin };
            }
        }
        self.cin_deferred = false;
        self.emit_stores();
        self.dirty = 0;
        self.lazy_dirty = false;
    }

    /// Store the dirty registers (they stay held, now clean); the lazy
    /// record stays as it is.
    fn sync_regs(&mut self) {
        self.store_regs();
        self.dirty = 0;
    }

    /// Store the dirty registers.
    fn store_regs(&mut self) {
        for i in 0..16 {
            if self.dirty & (1 << i) != 0 {
                let v = self.regs[i].expect("a dirty register has a value");
                self.b.ins().store(mem_flags(), v, self.state, GPR_OFF + 8 * i as i32);
            }
        }
    }

    /// Whether `target` is a block of the region that sets every flag
    /// before anything reads them.
    fn flags_dead_at(&self, target: u64) -> bool {
        self.blocks.get(&target).is_some_and(|&(_, i)| self.flags_dead[i])
    }

    /// Hold nothing (after code that may change any register, and at the
    /// start of a guest block, which several paths may reach).
    fn forget(&mut self) {
        self.regs = [None; 16];
        self.dirty = 0;
        self.lazy_dirty = false;
        self.cin_deferred = false;
        self.sse_ok = false;
    }

    fn zext32(&mut self, v: Value) -> Value {
        let t = self.b.ins().ireduce(types::I32, v);
        self.b.ins().uextend(types::I64, t)
    }

    /// A register's value, zero-extended from its size.
    fn read_reg(&mut self, r: Reg) -> Value {
        let full = self.gpr64(r.idx);
        match r.size {
            8 => full,
            4 => self.zext32(full),
            2 => self.b.ins().band_imm_s(full, 0xffff),
            _ if r.high => {
                let t = self.b.ins().ushr_imm_s(full, 8);
                self.b.ins().band_imm_s(t, 0xff)
            }
            _ => self.b.ins().band_imm_s(full, 0xff),
        }
    }

    /// Write with the architectural size rules (8- and 16-bit writes merge,
    /// 32-bit writes zero the upper half); `v` may hold bits above the size.
    fn write_reg(&mut self, r: Reg, v: Value) {
        let new = self.merged(r, v);
        self.set_gpr64(r.idx, new);
    }

    /// The full register after writing `v` to `r` with the size rules.
    fn merged(&mut self, r: Reg, v: Value) -> Value {
        match r.size {
            8 => v,
            4 => self.zext32(v),
            size => {
                let old = self.gpr64(r.idx);
                let (m, sh) = if size == 2 {
                    (0xffffi64, 0)
                } else if r.high {
                    (0xff, 8)
                } else {
                    (0xff, 0)
                };
                let keep = self.b.ins().band_imm_s(old, !(m << sh));
                let low = self.b.ins().band_imm_s(v, m);
                let low = if sh != 0 { self.b.ins().ishl_imm_s(low, sh) } else { low };
                self.b.ins().bor(keep, low)
            }
        }
    }

    fn gpr64(&mut self, idx: usize) -> Value {
        if let Some(v) = self.regs[idx] {
            return v;
        }
        let v = self.b.ins().load(types::I64, mem_flags(), self.state, GPR_OFF + 8 * idx as i32);
        self.regs[idx] = Some(v);
        v
    }

    fn set_gpr64(&mut self, idx: usize, v: Value) {
        self.regs[idx] = Some(v);
        self.dirty |= 1 << idx;
    }

    // ---- memory ------------------------------------------------------------

    /// The effective address (offset in the segment), as `cpu::ops::ea`.
    fn ea(&mut self, insn: &Instruction) -> Value {
        let base = insn.memory_base();
        let index = insn.memory_index();
        let disp = insn.memory_displacement64();
        if base == Register::RIP {
            return self.iconst(disp);
        }
        if base == Register::EIP {
            return self.iconst(disp & 0xffff_ffff);
        }
        let mut a = self.iconst(disp);
        let mut asize = 0;
        if let Some(r) = reg(base) {
            let v = self.gpr64(r.idx);
            let v = if r.size == 4 { self.b.ins().band_imm_s(v, 0xffff_ffff) } else { v };
            a = self.b.ins().iadd(a, v);
            asize = r.size;
        }
        if let Some(r) = reg(index) {
            let v = self.gpr64(r.idx);
            let v = if r.size == 4 { self.b.ins().band_imm_s(v, 0xffff_ffff) } else { v };
            let scale = insn.memory_index_scale();
            let v = if scale > 1 { self.b.ins().ishl_imm_s(v, i64::from(scale.trailing_zeros())) } else { v };
            a = self.b.ins().iadd(a, v);
            asize = r.size;
        }
        if asize == 4 {
            a = self.b.ins().band_imm_s(a, 0xffff_ffff);
        }
        a
    }

    /// The linear address for the inline TLB test, or `None` when the
    /// helper must compute it (a segment with a base in 32-bit code).
    fn linear(&mut self, seg: usize, off_v: Value) -> Option<Value> {
        if self.bits == 64 {
            if seg >= sreg::FS {
                let base = self.b.ins().load(
                    types::I64,
                    mem_flags(),
                    self.state,
                    SEG_OFF + SEG_SIZE * seg as i32 + SEG_BASE_OFF,
                );
                return Some(self.b.ins().iadd(off_v, base));
            }
            return Some(off_v);
        }
        // Flat DS, ES and SS (the region's mode guarantees them); FS and GS
        // have bases and limits, and CS is not writable: the helper checks.
        if seg >= sreg::FS || seg == sreg::CS {
            return None;
        }
        Some(self.b.ins().band_imm_s(off_v, 0xffff_ffff))
    }

    /// The TLB entry for `lin` and whether its tag for `tag_off` matches an
    /// access of `size` bytes.
    fn tlb_hit(&mut self, lin: Value, size: u32, tag_off: usize) -> (Value, Value) {
        let l = mmu::TLB_LAYOUT;
        // The entry's byte offset, `((lin >> 12) % entries) * entry_size`,
        // in two steps (the size is a power of two below 4 KiB).
        const { assert!(mmu::TLB_LAYOUT.entry_size.is_power_of_two() && mmu::TLB_LAYOUT.entry_size < 4096) };
        let shift = 12 - l.entry_size.trailing_zeros();
        let byte = self.b.ins().ushr_imm_s(lin, i64::from(shift));
        let byte = self.b.ins().band_imm_s(byte, ((l.entries - 1) * l.entry_size) as i64);
        let entry = self.b.ins().iadd(self.tlb, byte);
        let tag = self.b.ins().load(types::I64, mem_flags(), entry, tag_off as i32);
        let last = self.b.ins().iadd_imm_s(lin, i64::from(size) - 1);
        let want = self.b.ins().band_imm_s(last, !0xfffi64);
        let hit = self.b.ins().icmp(IntCC::Equal, tag, want);
        (entry, hit)
    }

    /// The host address of `lin` from its TLB entry (after a hit).
    fn host_addr(&mut self, entry: Value, lin: Value) -> Value {
        let addend = self.b.ins().load(types::I64, mem_flags(), entry, mmu::TLB_LAYOUT.addend as i32);
        self.b.ins().iadd(lin, addend)
    }

    fn load_host(&mut self, addr: Value, size: u32) -> Value {
        let t = int_type(size);
        let v = self.b.ins().load(t, guest_flags(), addr, 0);
        if size == 8 {
            v
        } else {
            self.b.ins().uextend(types::I64, v)
        }
    }

    fn store_host(&mut self, addr: Value, size: u32, v: Value) {
        let v = if size == 8 { v } else { self.b.ins().ireduce(int_type(size), v) };
        self.b.ins().store(guest_flags(), v, addr, 0);
    }

    /// A fault from a helper: leave at the instruction.
    fn fault_exit(&mut self, rip: u64) {
        self.exit_to(rip, 0);
    }

    /// Read `size` bytes of the memory operand (zero-extended).
    fn load(&mut self, insn: &Instruction, size: u32, rip: u64, rmw: bool) -> (Value, Value) {
        let seg = cpu::ops::mem_seg(insn);
        let off_v = self.ea(insn);
        self.load_at(seg, off_v, size, rip, rmw)
    }

    /// Read at `seg:off_v`. With `rmw`, the access is checked as a write and
    /// the second value is the host address for the store (0 when the
    /// store must go through the helper).
    fn load_at(&mut self, seg: usize, off_v: Value, size: u32, rip: u64, rmw: bool) -> (Value, Value) {
        // An RMW whose load misses runs whole through the interpreter (unless
        // the instruction read memory before, which must not happen twice):
        // its store then always has the host address.
        let direct = rmw && self.slow_insn.is_some() && !self.insn_loaded;
        self.rmw_direct = direct;
        self.insn_loaded = true;
        let join = self.b.create_block();
        let val = self.b.append_block_param(join, types::I64);
        // (Only an RMW load hands on the host address.)
        let haddr = if rmw { Some(self.b.append_block_param(join, types::I64)) } else { None };
        let slow = self.b.create_block();
        if let Some(lin) = self.linear(seg, off_v) {
            let l = mmu::TLB_LAYOUT;
            let addr = self.tlb_host_addr(lin, size, if rmw { l.jit_write } else { l.jit_read }, slow);
            let v = self.load_host(addr, size);
            self.jump_join(join, v, rmw.then_some(addr));
        } else {
            self.b.ins().jump(slow, &[]);
        }
        self.enter_block(slow);
        if direct {
            self.access_slow_exit(rip);
            self.enter_block(join);
            return (val, haddr.expect("an RMW load has a host address"));
        }
        let f = if rmw { self.access.load_rmw } else { self.access.load };
        let callee = self.iconst(f as u64);
        let segv = self.b.ins().iconst(types::I32, seg as i64);
        let sz = self.b.ins().iconst(types::I32, i64::from(size));
        let ripv = self.iconst(rip);
        self.b.ins().call_indirect(self.sig_load_saving, callee, &[self.ctx, segv, off_v, sz, ripv]);
        let v = self.b.ins().load(types::I64, mem_flags(), self.ctx, off::RESULT);
        let st = self.b.ins().load(types::I32, mem_flags(), self.ctx, off::STATUS);
        let ok = self.b.create_block();
        let bad = self.b.create_block();
        self.b.ins().brif(st, bad, &[], ok, &[]);
        self.enter_block(bad);
        self.fault_exit(rip);
        self.enter_block(ok);
        let z = rmw.then(|| self.iconst(0));
        self.jump_join(join, v, z);
        self.enter_block(join);
        let haddr = haddr.unwrap_or_else(|| self.iconst(0));
        (val, haddr)
    }

    /// The TLB test for `size` bytes at `lin` (the entry's tag at
    /// `tag_off`): on a hit, in a new block, the host address; on a miss,
    /// on to `slow`.
    fn tlb_host_addr(&mut self, lin: Value, size: u32, tag_off: usize, slow: Block) -> Value {
        let (entry, hit) = self.tlb_hit(lin, size, tag_off);
        let fast = self.b.create_block();
        self.b.ins().brif(hit, fast, &[], slow, &[]);
        self.enter_block(fast);
        self.host_addr(entry, lin)
    }

    /// Jump to a load's `join` with the value and, for an RMW load, the
    /// host address.
    fn jump_join(&mut self, join: Block, v: Value, haddr: Option<Value>) {
        match haddr {
            Some(a) => self.b.ins().jump(join, &[v.into(), a.into()]),
            None => self.b.ins().jump(join, &[v.into()]),
        };
    }

    /// Write `v` at `seg:off_v`; `haddr` from an RMW load (or 0). Where a
    /// miss goes through the store's helper, returns a value that is
    /// non-zero when the region must leave after the instruction; `None`
    /// where a miss runs the instruction through the interpreter and
    /// leaves (the hit then needs no test).
    fn store_at(
        &mut self,
        seg: usize,
        off_v: Value,
        size: u32,
        v: Value,
        rip: u64,
        haddr: Option<Value>,
    ) -> Option<Value> {
        if let Some(a) = haddr.filter(|_| self.rmw_direct) {
            self.store_host(a, size, v);
            return None;
        }
        if haddr.is_none() && !self.insn_loaded && self.slow_insn.is_some() {
            // A miss runs the instruction through the interpreter, which
            // stores and leaves: the hit goes on with nothing to check.
            match self.linear(seg, off_v) {
                Some(lin) => {
                    let slow = self.b.create_block();
                    let addr = self.tlb_host_addr(lin, size, mmu::TLB_LAYOUT.jit_write, slow);
                    self.store_host(addr, size, v);
                    let cont = self.b.create_block();
                    self.b.ins().jump(cont, &[]);
                    self.enter_block(slow);
                    self.access_slow_exit(rip);
                    self.enter_block(cont);
                }
                None => self.access_slow_exit_here(rip),
            }
            return None;
        }
        let join = self.b.create_block();
        let leave = self.b.append_block_param(join, types::I32);
        let slow = self.b.create_block();
        let fast = self.b.create_block();
        let fast_addr = self.b.append_block_param(fast, types::I64);
        match haddr {
            Some(a) => {
                self.b.ins().brif(a, fast, &[a.into()], slow, &[]);
            }
            None => match self.linear(seg, off_v) {
                Some(lin) => {
                    let addr = self.tlb_host_addr(lin, size, mmu::TLB_LAYOUT.jit_write, slow);
                    self.b.ins().jump(fast, &[addr.into()]);
                }
                None => {
                    self.b.ins().jump(slow, &[]);
                }
            },
        }
        self.enter_block(fast);
        self.store_host(fast_addr, size, v);
        let z = self.b.ins().iconst(types::I32, 0);
        self.b.ins().jump(join, &[z.into()]);

        self.enter_block(slow);
        let callee = self.iconst(self.access.store as u64);
        let segv = self.b.ins().iconst(types::I32, seg as i64);
        let sz = self.b.ins().iconst(types::I32, i64::from(size));
        let ripv = self.iconst(rip);
        self.b.ins().call_indirect(self.sig_store_saving, callee, &[self.ctx, segv, off_v, sz, v, ripv]);
        let st = self.b.ins().load(types::I32, mem_flags(), self.ctx, off::STATUS);
        let is_fault = self.b.ins().icmp_imm_s(IntCC::Equal, st, i64::from(status::FAULT));
        let bad = self.b.create_block();
        let ok = self.b.create_block();
        self.b.ins().brif(is_fault, bad, &[], ok, &[]);
        self.enter_block(bad);
        self.fault_exit(rip);
        self.enter_block(ok);
        self.b.ins().jump(join, &[st.into()]);
        self.enter_block(join);
        Some(leave)
    }

    /// The slow path of a memory access: the instruction runs through the
    /// interpreter (which raises its faults) and the region leaves after
    /// it. The instructions before it count on this path (the main path
    /// keeps its pending count).
    fn access_slow_exit(&mut self, rip: u64) {
        let c = self.b.use_var(self.icount);
        let c = self.b.ins().iadd_imm_s(c, self.pending);
        self.b.def_var(self.icount, c);
        self.slow_exit(rip);
    }

    /// [`Self::access_slow_exit`] as the only way on (a segment that needs
    /// the interpreter's checks): the code after it is unreachable, in a
    /// block of its own.
    fn access_slow_exit_here(&mut self, rip: u64) {
        self.access_slow_exit(rip);
        let dead = self.b.create_block();
        self.enter_block(dead);
    }

    /// After an instruction that stored: leave after it if the store asked.
    fn after_store(&mut self, leave: Option<Value>, next: u64) {
        let Some(leave) = leave else { return };
        let out = self.b.create_block();
        let cont = self.b.create_block();
        self.b.ins().brif(leave, out, &[], cont, &[]);
        self.enter_block(out);
        self.exit_to(next, 1);
        self.enter_block(cont);
    }

    // ---- operands ------------------------------------------------------------

    /// Read operand `o` (masked to `size`).
    fn read(&mut self, o: Opnd, insn: &Instruction, size: u32, rip: u64) -> Value {
        match o {
            Opnd::Reg(r) => self.read_reg(r),
            Opnd::Imm(v) => self.iconst(v & mask(size)),
            Opnd::Mem => self.load(insn, size, rip, false).0,
        }
    }

    // ---- flags ---------------------------------------------------------------

    fn set_lazy(&mut self, op: FlagOp, size: u32, res: Value, a: Value, b: Value, cin: Option<Value>) {
        let c = match cin {
            Some(c) => c,
            None => self.iconst(0),
        };
        self.known = Known::Lazy { op, size, res, a, b, cin: c };
        self.lazy_dirty = true;
        self.cin_deferred = false;
    }

    /// Set the arithmetic flags eagerly (`f`: the six bits), as
    /// `set_arith_flags(ARITH, f)` does.
    fn set_eager(&mut self, f: Value) {
        let rf = self.store_eager(f);
        self.known = Known::Eager(rf);
        self.lazy_dirty = false;
        self.cin_deferred = false;
    }

    /// Flags outside `keep` (of the six) become `bits`, the rest stay:
    /// computed now where the producer is known, else deferred.
    fn set_partial(&mut self, keep: u64, bits: Value) {
        match self.known {
            Known::Unknown => {
                self.known = Known::Partial { keep, bits, base: None };
                self.lazy_dirty = true;
                self.cin_deferred = false;
            }
            Known::Partial { keep: k0, bits: b0, base } => {
                let old = self.b.ins().band_imm_s(b0, keep as i64);
                let bits = self.b.ins().bor(old, bits);
                self.known = Known::Partial { keep: k0 & keep, bits, base };
            }
            Known::Lazy { op, size, res, a, b, cin } => {
                // An INC/DEC base keeps its deferred carry-in: the state's
                // record is not written until the flags are.
                self.known = Known::Partial { keep, bits, base: Some((op, size, [res, a, b, cin])) };
                self.lazy_dirty = true;
            }
            _ => {
                let prev = self.materialize();
                let kept = self.b.ins().band_imm_s(prev, keep as i64);
                let f = self.b.ins().bor(kept, bits);
                self.set_eager(f);
            }
        }
    }

    /// Store the six flags `f` into RFLAGS and empty the lazy record;
    /// returns the new RFLAGS.
    fn store_eager(&mut self, f: Value) -> Value {
        let fl = mem_flags();
        let rf = self.b.ins().load(types::I64, fl, self.state, RFLAGS_OFF);
        let rf = self.b.ins().band_imm_s(rf, !(flags::ARITH as i64));
        let rf = self.b.ins().bor(rf, f);
        self.b.ins().store(fl, rf, self.state, RFLAGS_OFF);
        let none = self.b.ins().iconst(types::I32, 0);
        self.b.ins().store(fl, none, self.state, LZ_OFF[OP]);
        rf
    }

    /// The six flags now, through the helper (the producer is not known
    /// here: the state's record or RFLAGS holds them).
    fn flags_by_helper(&mut self) -> Value {
        if self.lazy_dirty {
            // The helper reads the record from the state.
            self.sync();
        }
        self.raw_state_flags()
    }

    /// The six flags of the state's record (or RFLAGS) by the helper.
    fn raw_state_flags(&mut self) -> Value {
        let callee = self.iconst(ctx::state_flags as *const () as usize as u64);
        let call = self.b.ins().call_indirect(self.sig_flags, callee, &[self.state]);
        self.b.inst_results(call)[0]
    }

    /// The six arithmetic flags now (RFLAGS bits), computed from the known
    /// producer where there is one, else by the helper.
    fn materialize(&mut self) -> Value {
        match self.known {
            Known::Eager(rf) => self.b.ins().band_imm_s(rf, flags::ARITH as i64),
            Known::Unknown => self.flags_by_helper(),
            Known::Partial { keep, bits, base } => {
                let prev = match base {
                    Some((op, size, [res, a, b, cin])) => {
                        let now = self.known;
                        self.known = Known::Lazy { op, size, res, a, b, cin };
                        let f = self.materialize();
                        self.known = now;
                        f
                    }
                    // The state's record still holds the old flags.
                    None => self.raw_state_flags(),
                };
                let kept = self.b.ins().band_imm_s(prev, keep as i64);
                self.b.ins().bor(kept, bits)
            }
            Known::Lazy { op, size, res, a, b: bv, .. } => {
                let cf = self.cf();
                let szp = self.szp(res, size);
                let f = self.b.ins().bor(cf, szp);
                let (of, af) = match op {
                    FlagOp::Add | FlagOp::Adc => {
                        let x = self.b.ins().bxor(a, res);
                        let y = self.b.ins().bxor(bv, res);
                        let o = self.b.ins().band(x, y);
                        (Some(self.sign_bit(o, size)), true)
                    }
                    FlagOp::Sub | FlagOp::Sbb => {
                        let x = self.b.ins().bxor(a, bv);
                        let y = self.b.ins().bxor(a, res);
                        let o = self.b.ins().band(x, y);
                        (Some(self.sign_bit(o, size)), true)
                    }
                    FlagOp::Logic | FlagOp::None => (None, false),
                    FlagOp::Inc | FlagOp::Dec => {
                        let s = 1u64 << (size * 8 - 1);
                        let want = if op == FlagOp::Inc { s } else { s - 1 };
                        let o = self.b.ins().icmp_imm_s(IntCC::Equal, res, want as i64);
                        let o = self.b.ins().uextend(types::I64, o);
                        let lo = self.b.ins().band_imm_s(res, 0xf);
                        let nib = if op == FlagOp::Inc { 0 } else { 0xf };
                        let afv = self.b.ins().icmp_imm_s(IntCC::Equal, lo, nib);
                        let afv = self.b.ins().uextend(types::I64, afv);
                        let afv = self.b.ins().ishl_imm_s(afv, 4);
                        let f2 = self.b.ins().ishl_imm_s(o, 11);
                        let f2 = self.b.ins().bor(f2, afv);
                        return self.b.ins().bor(f, f2);
                    }
                };
                let mut f = f;
                if let Some(o) = of {
                    let o = self.b.ins().ishl_imm_s(o, 11);
                    f = self.b.ins().bor(f, o);
                }
                if af {
                    let x = self.b.ins().bxor(a, bv);
                    let x = self.b.ins().bxor(x, res);
                    let x = self.b.ins().band_imm_s(x, 0x10);
                    f = self.b.ins().bor(f, x);
                }
                f
            }
        }
    }

    fn sign_bit(&mut self, v: Value, size: u32) -> Value {
        let s = self.b.ins().ushr_imm_s(v, i64::from(size * 8 - 1));
        self.b.ins().band_imm_s(s, 1)
    }

    /// CF as 0/1 (i64).
    fn cf(&mut self) -> Value {
        match self.known {
            Known::Lazy { op, res, a, b: bv, cin, .. } => {
                let c = match op {
                    FlagOp::Add => self.b.ins().icmp(IntCC::UnsignedLessThan, res, a),
                    FlagOp::Sub => self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv),
                    FlagOp::Adc => {
                        let lt = self.b.ins().icmp(IntCC::UnsignedLessThan, res, a);
                        let le = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, res, a);
                        self.b.ins().select(cin, le, lt)
                    }
                    FlagOp::Sbb => {
                        let lt = self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv);
                        let le = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, a, bv);
                        self.b.ins().select(cin, le, lt)
                    }
                    FlagOp::Logic | FlagOp::None => return self.iconst(0),
                    FlagOp::Inc | FlagOp::Dec if self.cin_deferred => return self.cf_from_state(),
                    FlagOp::Inc | FlagOp::Dec => return self.b.ins().band_imm_s(cin, 1),
                };
                self.b.ins().uextend(types::I64, c)
            }
            Known::Eager(rf) => self.b.ins().band_imm_s(rf, 1),
            Known::Unknown => self.cf_from_state(),
            Known::Partial { keep, bits, .. } if keep & flags::CF == 0 => self.b.ins().band_imm_s(bits, 1),
            Known::Partial { .. } => {
                let f = self.materialize();
                self.b.ins().band_imm_s(f, 1)
            }
        }
    }

    /// CF (0/1, i64) from the state's lazy record, inline for every
    /// producer but ADC and SBB (those through the helper).
    fn cf_from_state(&mut self) -> Value {
        // SUB/CMP and the logic operations first, by branches: at one
        // place in the code the record's producer is nearly always the
        // same, so the branches predict, where the select chain below
        // costs some twenty instructions every time.
        let fl = mem_flags();
        let op = self.b.ins().load(types::I32, fl, self.state, LZ_OFF[OP]);
        let join = self.b.create_block();
        let out = self.b.append_block_param(join, types::I64);
        let sub_blk = self.b.create_block();
        let rest = self.b.create_block();
        let general = self.b.create_block();
        let is_sub = self.b.ins().icmp_imm_s(IntCC::Equal, op, FlagOp::Sub as i64);
        self.b.ins().brif(is_sub, sub_blk, &[], rest, &[]);
        self.enter_block(sub_blk);
        let [a, bv] = self.record_values([LZ_OFF[SRC1], LZ_OFF[SRC2]]);
        let c = self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv);
        let c = self.b.ins().uextend(types::I64, c);
        self.b.ins().jump(join, &[c.into()]);
        self.enter_block(rest);
        let is_logic = self.b.ins().icmp_imm_s(IntCC::Equal, op, FlagOp::Logic as i64);
        let zero = self.iconst(0);
        self.b.ins().brif(is_logic, join, &[zero.into()], general, &[]);
        self.enter_block(general);
        let c = self.cf_from_state_general();
        self.b.ins().jump(join, &[c.into()]);
        self.enter_block(join);
        out
    }

    /// [`Self::cf_from_state`] for any producer.
    fn cf_from_state_general(&mut self) -> Value {
        let (op, res, a, bv) = self.state_record();
        let fl = mem_flags();
        let cin = self.b.ins().load(types::I64, fl, self.state, LZ_OFF[CIN]);
        let rf = self.b.ins().load(types::I64, fl, self.state, RFLAGS_OFF);
        let sub = self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv);
        let sub = self.b.ins().uextend(types::I64, sub);
        let add = self.b.ins().icmp(IntCC::UnsignedLessThan, res, a);
        let add = self.b.ins().uextend(types::I64, add);
        let kept = self.b.ins().band_imm_s(cin, 1);
        let none = self.b.ins().band_imm_s(rf, 1);
        let zero = self.iconst(0);
        let is = |tx: &mut Self, o: FlagOp| tx.b.ins().icmp_imm_s(IntCC::Equal, op, o as i64);
        let is_none = is(self, FlagOp::None);
        let v = self.b.ins().select(is_none, none, zero);
        let is_inc = is(self, FlagOp::Inc);
        let is_dec = is(self, FlagOp::Dec);
        let incdec = self.b.ins().bor(is_inc, is_dec);
        let v = self.b.ins().select(incdec, kept, v);
        let is_add = is(self, FlagOp::Add);
        let v = self.b.ins().select(is_add, add, v);
        let is_sub = is(self, FlagOp::Sub);
        let v = self.b.ins().select(is_sub, sub, v);
        let is_adc = is(self, FlagOp::Adc);
        let is_sbb = is(self, FlagOp::Sbb);
        let slow_op = self.b.ins().bor(is_adc, is_sbb);
        let join = self.b.create_block();
        let out = self.b.append_block_param(join, types::I64);
        let slow = self.b.create_block();
        self.b.ins().brif(slow_op, slow, &[], join, &[v.into()]);
        self.enter_block(slow);
        // The state's record as it stands (not the known producer's, which
        // may be an INC whose carry-in this computes).
        let f = self.raw_state_flags();
        let c = self.b.ins().band_imm_s(f, 1);
        self.b.ins().jump(join, &[c.into()]);
        self.enter_block(join);
        out
    }

    /// Evaluate condition code `cc` as an i8 (non-zero: true).
    fn condition(&mut self, cc: u8) -> Value {
        let neg = cc & 1 != 0;
        let v = self.condition_pos(cc & !1);
        if neg {
            self.b.ins().icmp_imm_s(IntCC::Equal, v, 0)
        } else {
            v
        }
    }

    fn condition_pos(&mut self, cc: u8) -> Value {
        if let Known::Lazy { op, size, res, a, b: bv, .. } = self.known {
            let sx = |tx: &mut Self, v: Value| {
                if size == 8 {
                    v
                } else {
                    let sh = i64::from(64 - size * 8);
                    let t = tx.b.ins().ishl_imm_s(v, sh);
                    tx.b.ins().sshr_imm_s(t, sh)
                }
            };
            match (op, cc) {
                (_, 4) => return self.b.ins().icmp_imm_s(IntCC::Equal, res, 0),
                (_, 8) => {
                    let s = self.sign_bit(res, size);
                    return self.b.ins().icmp_imm_s(IntCC::NotEqual, s, 0);
                }
                (FlagOp::Sub, 2) => return self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv),
                (FlagOp::Sub, 6) => return self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, a, bv),
                (FlagOp::Sub, 12) => {
                    let (x, y) = (sx(self, a), sx(self, bv));
                    return self.b.ins().icmp(IntCC::SignedLessThan, x, y);
                }
                (FlagOp::Sub, 14) => {
                    let (x, y) = (sx(self, a), sx(self, bv));
                    return self.b.ins().icmp(IntCC::SignedLessThanOrEqual, x, y);
                }
                (FlagOp::Logic, 0 | 2) => return self.b.ins().iconst(types::I8, 0),
                (FlagOp::Logic, 6) => return self.b.ins().icmp_imm_s(IntCC::Equal, res, 0),
                (FlagOp::Logic, 12) => {
                    let s = self.sign_bit(res, size);
                    return self.b.ins().icmp_imm_s(IntCC::NotEqual, s, 0);
                }
                (FlagOp::Logic, 14) => {
                    let z = self.b.ins().icmp_imm_s(IntCC::Equal, res, 0);
                    let s = self.sign_bit(res, size);
                    let s = self.b.ins().icmp_imm_s(IntCC::NotEqual, s, 0);
                    return self.b.ins().bor(z, s);
                }
                (_, 2) => {
                    let c = self.cf();
                    return self.b.ins().icmp_imm_s(IntCC::NotEqual, c, 0);
                }
                (_, 6) => {
                    let c = self.cf();
                    let c = self.b.ins().icmp_imm_s(IntCC::NotEqual, c, 0);
                    let z = self.b.ins().icmp_imm_s(IntCC::Equal, res, 0);
                    return self.b.ins().bor(c, z);
                }
                _ => {}
            }
        }
        if self.known == Known::Unknown && matches!(cc, 2 | 4 | 6 | 8 | 12 | 14) {
            return self.condition_from_state(cc);
        }
        self.condition_by_flags(cc)
    }

    /// The state's lazy record: its operation (i32) and its result and
    /// operands moved to the top of the register, so that comparing them
    /// compares the values at their size, bits above it ignored.
    fn state_record(&mut self) -> (Value, Value, Value, Value) {
        let op = self.b.ins().load(types::I32, mem_flags(), self.state, LZ_OFF[OP]);
        let [res, a, bv] = self.record_values([LZ_OFF[RES], LZ_OFF[SRC1], LZ_OFF[SRC2]]);
        (op, res, a, bv)
    }

    /// The state's lazy-record fields at `offs`, moved to the top of the
    /// register by the record's size.
    fn record_values<const N: usize>(&mut self, offs: [i32; N]) -> [Value; N] {
        let fl = mem_flags();
        let size = self.b.ins().uload32(fl, self.state, LZ_OFF[1]);
        let bits = self.b.ins().ishl_imm_s(size, 3);
        let sixty_four = self.iconst(64);
        let sh = self.b.ins().isub(sixty_four, bits);
        offs.map(|o| {
            let v = self.b.ins().load(types::I64, fl, self.state, o);
            self.b.ins().ishl(v, sh)
        })
    }

    /// Condition `cc` (2, 4, 6, 8, 12 or 14) from the state's lazy record
    /// without a call when its producer is a SUB/CMP or a logic operation
    /// (any producer for ZF and SF), else through the helper.
    fn condition_from_state(&mut self, cc: u8) -> Value {
        let (op, res, a, bv) = self.state_record();
        let zf = self.b.ins().icmp_imm_s(IntCC::Equal, res, 0);
        let sf = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, res, 0);
        let is_sub = self.b.ins().icmp_imm_s(IntCC::Equal, op, FlagOp::Sub as i64);
        let is_logic = self.b.ins().icmp_imm_s(IntCC::Equal, op, FlagOp::Logic as i64);
        let (fast, v) = match cc {
            4 | 8 => {
                let lazy = self.b.ins().icmp_imm_s(IntCC::NotEqual, op, FlagOp::None as i64);
                (lazy, if cc == 4 { zf } else { sf })
            }
            _ => {
                let (sub, logic) = match cc {
                    2 => (self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv), self.b.ins().iconst(types::I8, 0)),
                    6 => (self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, a, bv), zf),
                    12 => (self.b.ins().icmp(IntCC::SignedLessThan, a, bv), sf),
                    _ => (self.b.ins().icmp(IntCC::SignedLessThanOrEqual, a, bv), self.b.ins().bor(zf, sf)),
                };
                let fast = self.b.ins().bor(is_sub, is_logic);
                (fast, self.b.ins().select(is_sub, sub, logic))
            }
        };
        let join = self.b.create_block();
        let out = self.b.append_block_param(join, types::I8);
        let slow = self.b.create_block();
        self.b.ins().brif(fast, join, &[v.into()], slow, &[]);
        self.enter_block(slow);
        let c = self.condition_by_flags(cc);
        self.b.ins().jump(join, &[c.into()]);
        self.enter_block(join);
        out
    }

    /// Condition `cc` (even: the positive form) from the six flags.
    fn condition_by_flags(&mut self, cc: u8) -> Value {
        let need = match cc {
            0 => flags::OF,
            2 => flags::CF,
            4 => flags::ZF,
            6 => flags::CF | flags::ZF,
            8 => flags::SF,
            10 => flags::PF,
            12 => flags::SF | flags::OF,
            _ => flags::SF | flags::OF | flags::ZF,
        };
        let f = match self.known {
            Known::Eager(rf) => rf,
            // The condition reads only new bits: no old flags needed.
            Known::Partial { keep, bits, .. } if need & keep == 0 => bits,
            Known::Partial { .. } => self.materialize(),
            _ => self.flags_by_helper(),
        };
        let bit = |tx: &mut Self, m: u64| {
            let t = tx.b.ins().band_imm_s(f, m as i64);
            tx.b.ins().icmp_imm_s(IntCC::NotEqual, t, 0)
        };
        match cc {
            0 => bit(self, flags::OF),
            2 => bit(self, flags::CF),
            4 => bit(self, flags::ZF),
            6 => bit(self, flags::CF | flags::ZF),
            8 => bit(self, flags::SF),
            10 => bit(self, flags::PF),
            _ => {
                let s = bit(self, flags::SF);
                let o = bit(self, flags::OF);
                let lt = self.b.ins().bxor(s, o);
                if cc == 12 {
                    lt
                } else {
                    let z = bit(self, flags::ZF);
                    self.b.ins().bor(lt, z)
                }
            }
        }
    }

    /// ZF, SF and PF of `r` (masked to `size`) as RFLAGS bits.
    fn szp(&mut self, r: Value, size: u32) -> Value {
        let z = self.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
        let z = self.b.ins().uextend(types::I64, z);
        let z = self.b.ins().ishl_imm_s(z, 6);
        let s = self.sign_bit(r, size);
        let s = self.b.ins().ishl_imm_s(s, 7);
        let low = self.b.ins().band_imm_s(r, 0xff);
        let pc = self.b.ins().popcnt(low);
        let odd = self.b.ins().band_imm_s(pc, 1);
        let p = self.b.ins().bxor_imm_s(odd, 1);
        let p = self.b.ins().ishl_imm_s(p, 2);
        let zs = self.b.ins().bor(z, s);
        self.b.ins().bor(zs, p)
    }

    // ---- instructions --------------------------------------------------------

    /// A fallback: the state goes to memory, the interpreter runs the
    /// instruction, and the state comes back.
    fn emit_fallback(&mut self, d: *const Decoded, rip: u64) {
        self.flush_count();
        self.sync();
        let st = self.call_fallback(d, rip);
        let cont = self.b.create_block();
        self.b.ins().brif(st, self.leave_block, &[], cont, &[]);
        self.enter_block(cont);
        self.known = Known::Unknown;
        self.forget();
    }

    /// Translate one instruction; true if it ended the guest block (a
    /// terminator was emitted).
    fn emit(&mut self, f: &Form, insn: &Instruction, rip: u64, next: u64) -> bool {
        let stack = if self.bits == 64 { 8u32 } else { 4 };
        match *f {
            Form::Nop => {}
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
            Form::Alu { op, dst, src, size } => {
                let m = mask(size) as i64;
                let bv = self.read(src, insn, size, rip);
                let bv = self.b.ins().band_imm_s(bv, m);
                let stores = !matches!(op, Alu::Cmp | Alu::Test);
                let (a, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    Opnd::Mem => {
                        let (a, h) = self.load(insn, size, rip, stores);
                        (a, Some(h))
                    }
                    Opnd::Imm(_) => unreachable!("classify refuses an immediate destination"),
                };
                let cin = if matches!(op, Alu::Adc | Alu::Sbb) { Some(self.cf()) } else { None };
                let r = match (op, cin) {
                    (Alu::Add, _) => self.b.ins().iadd(a, bv),
                    (Alu::Adc, Some(c)) => {
                        let t = self.b.ins().iadd(a, bv);
                        self.b.ins().iadd(t, c)
                    }
                    (Alu::Sub | Alu::Cmp, _) => self.b.ins().isub(a, bv),
                    (Alu::Sbb, Some(c)) => {
                        let t = self.b.ins().isub(a, bv);
                        self.b.ins().isub(t, c)
                    }
                    (Alu::Adc | Alu::Sbb, None) => unreachable!("ADC and SBB read CF above"),
                    (Alu::And | Alu::Test, _) => self.b.ins().band(a, bv),
                    (Alu::Or, _) => self.b.ins().bor(a, bv),
                    (Alu::Xor, _) => self.b.ins().bxor(a, bv),
                };
                let r = self.b.ins().band_imm_s(r, m);
                if stores {
                    match dst {
                        Opnd::Reg(rg) => self.write_reg(rg, r),
                        Opnd::Mem => {
                            let seg = cpu::ops::mem_seg(insn);
                            let o = self.ea(insn);
                            let leave = self.store_at(seg, o, size, r, rip, haddr);
                            self.alu_flags(op, size, r, a, bv, cin);
                            self.after_store(leave, next);
                            return false;
                        }
                        Opnd::Imm(_) => {}
                    }
                }
                self.alu_flags(op, size, r, a, bv, cin);
            }
            Form::IncDec { inc, dst, size } => {
                let (a, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    _ => {
                        let (a, h) = self.load(insn, size, rip, true);
                        (a, Some(h))
                    }
                };
                let r = if inc { self.b.ins().iadd_imm_s(a, 1) } else { self.b.ins().iadd_imm_s(a, -1) };
                let r = self.b.ins().band_imm_s(r, mask(size) as i64);
                // The CF before: known here, or else left in the state's
                // record until something reads it.
                let deferred = self.known == Known::Unknown;
                let cf = if deferred { self.iconst(0) } else { self.cf() };
                let one = self.iconst(1);
                let op = if inc { FlagOp::Inc } else { FlagOp::Dec };
                match dst {
                    Opnd::Reg(rg) => {
                        self.write_reg(rg, r);
                        self.set_lazy(op, size, r, a, one, Some(cf));
                        self.cin_deferred = deferred;
                    }
                    _ => {
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, size, r, rip, haddr);
                        self.set_lazy(op, size, r, a, one, Some(cf));
                        self.cin_deferred = deferred;
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Neg { dst, size } | Form::Not { dst, size } => {
                let neg = matches!(f, Form::Neg { .. });
                let (a, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    _ => {
                        let (a, h) = self.load(insn, size, rip, true);
                        (a, Some(h))
                    }
                };
                let r = if neg { self.b.ins().ineg(a) } else { self.b.ins().bnot(a) };
                let r = self.b.ins().band_imm_s(r, mask(size) as i64);
                let zero = self.iconst(0);
                match dst {
                    Opnd::Reg(rg) => {
                        self.write_reg(rg, r);
                        if neg {
                            self.set_lazy(FlagOp::Sub, size, r, zero, a, None);
                        }
                    }
                    _ => {
                        let seg = cpu::ops::mem_seg(insn);
                        let o = self.ea(insn);
                        let leave = self.store_at(seg, o, size, r, rip, haddr);
                        if neg {
                            self.set_lazy(FlagOp::Sub, size, r, zero, a, None);
                        }
                        self.after_store(leave, next);
                    }
                }
            }
            Form::Shift { op, dst, count } => {
                let size = dst.size;
                let a = self.read_reg(dst);
                if count == 0 {
                    self.write_reg(dst, a);
                    return false;
                }
                let bits = i64::from(size * 8);
                let c = i64::from(count);
                let (r, cf, of) = match op {
                    Shift::Shl | Shift::Shr | Shift::Sar => self.shift_imm(op, a, size, count),
                    Shift::Rol | Shift::Ror => {
                        // Rotates change CF and OF only: the other four
                        // come from the flags as they are.
                        let v = if size == 8 { a } else { self.b.ins().ireduce(types::I32, a) };
                        let amount = self.b.ins().iconst(types::I32, c);
                        let rv =
                            if op == Shift::Rol { self.b.ins().rotl(v, amount) } else { self.b.ins().rotr(v, amount) };
                        let r = if size == 8 { rv } else { self.b.ins().uextend(types::I64, rv) };
                        let msb = self.sign_bit(r, size);
                        let (cf, of) = if op == Shift::Rol {
                            let cf = self.b.ins().band_imm_s(r, 1);
                            (cf, self.b.ins().bxor(msb, cf))
                        } else {
                            let next = self.b.ins().ushr_imm_s(r, bits - 2);
                            let next = self.b.ins().band_imm_s(next, 1);
                            (msb, self.b.ins().bxor(msb, next))
                        };
                        self.write_reg(dst, r);
                        let ofb = self.b.ins().ishl_imm_s(of, 11);
                        let f = self.b.ins().bor(cf, ofb);
                        self.set_partial(flags::ARITH & !(flags::CF | flags::OF), f);
                        return false;
                    }
                };
                self.write_reg(dst, r);
                let ofb = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, ofb);
                let szp = self.szp(r, size);
                let f = self.b.ins().bor(f, szp);
                self.set_eager(f);
            }
            Form::ShiftCl { op, dst } => {
                let size = dst.size;
                let bits = i64::from(size * 8);
                let m = mask(size) as i64;
                let a = self.read_reg(dst);
                let cl = self.gpr64(1);
                let count = self.b.ins().band_imm_s(cl, bits - 1);
                let sa = if size == 8 {
                    a
                } else {
                    let t = self.b.ins().ishl_imm_s(a, 32);
                    self.b.ins().sshr_imm_s(t, 32)
                };
                // Where the count is 0 these are not used.
                let before = self.b.ins().iadd_imm_s(count, -1);
                let (r, cf, of) = match op {
                    Shift::Shl => {
                        let r = self.b.ins().ishl(a, count);
                        let r = self.b.ins().band_imm_s(r, m);
                        // The last bit out: bit `bits - count` of `a`.
                        let t = self.b.ins().ishl(a, before);
                        let cf = self.b.ins().ushr_imm_s(t, bits - 1);
                        let cf = self.b.ins().band_imm_s(cf, 1);
                        let msb = self.sign_bit(r, size);
                        (r, cf, self.b.ins().bxor(msb, cf))
                    }
                    Shift::Shr => {
                        let r = self.b.ins().ushr(a, count);
                        let t = self.b.ins().ushr(a, before);
                        let cf = self.b.ins().band_imm_s(t, 1);
                        (r, cf, self.sign_bit(a, size))
                    }
                    _ => {
                        let r = self.b.ins().sshr(sa, count);
                        let r = self.b.ins().band_imm_s(r, m);
                        let t = self.b.ins().sshr(sa, before);
                        let cf = self.b.ins().band_imm_s(t, 1);
                        (r, cf, self.iconst(0))
                    }
                };
                let ofb = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, ofb);
                let szp = self.szp(r, size);
                let f = self.b.ins().bor(f, szp);
                self.shifted_by(count, dst, a, r, f);
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
                let helper = if self.blocks.contains_key(&next) {
                    ctx::sti as *const () as usize
                } else {
                    ctx::sti_exit as *const () as usize
                };
                let callee = self.iconst(helper as u64);
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
                let callee = self.iconst(ctx::data_tlb_changed as *const () as usize as u64);
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
            Form::ShiftMem { op, size, count } => {
                let (a, haddr) = self.load(insn, size, rip, true);
                let (r, cf, of) = self.shift_imm(op, a, size, count);
                let seg = cpu::ops::mem_seg(insn);
                let o = self.ea(insn);
                let leave = self.store_at(seg, o, size, r, rip, Some(haddr));
                let ofb = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, ofb);
                let szp = self.szp(r, size);
                let f = self.b.ins().bor(f, szp);
                self.set_eager(f);
                self.after_store(leave, next);
            }
            Form::DoubleShift { left, dst, src, count } => {
                let size = dst.size;
                let bits = i64::from(size * 8);
                let m = mask(size) as i64;
                let a = self.read_reg(dst);
                let b = self.read_reg(src);
                let c = match count {
                    Some(0) => {
                        // No flag changes; a 32-bit register is still
                        // written (zero-extended).
                        self.write_reg(dst, a);
                        return false;
                    }
                    Some(n) => self.iconst(u64::from(n)),
                    None => {
                        let cl = self.gpr64(1);
                        self.b.ins().band_imm_s(cl, bits - 1)
                    }
                };
                // Where the count is 0 these are not used (the shifts stay
                // below 64 whatever it is).
                let c1 = self.b.ins().iadd_imm_s(c, -1);
                let c1 = self.b.ins().band_imm_s(c1, 63);
                let (r, cf) = if size == 8 {
                    let back = self.iconst(64);
                    let back = self.b.ins().isub(back, c);
                    let back = self.b.ins().band_imm_s(back, 63);
                    if left {
                        let hi = self.b.ins().ishl(a, c);
                        let lo = self.b.ins().ushr(b, back);
                        let r = self.b.ins().bor(hi, lo);
                        let cf = self.b.ins().ushr(a, back);
                        (r, self.b.ins().band_imm_s(cf, 1))
                    } else {
                        let lo = self.b.ins().ushr(a, c);
                        let hi = self.b.ins().ishl(b, back);
                        let r = self.b.ins().bor(hi, lo);
                        let cf = self.b.ins().ushr(a, c1);
                        (r, self.b.ins().band_imm_s(cf, 1))
                    }
                } else if left {
                    // dst:src as 64 bits, shifted left; the result is its
                    // high half.
                    let hi = self.b.ins().ishl_imm_s(a, 32);
                    let wide = self.b.ins().bor(hi, b);
                    let sh = self.b.ins().ishl(wide, c);
                    let r = self.b.ins().ushr_imm_s(sh, 32);
                    let back = self.iconst(64);
                    let back = self.b.ins().isub(back, c);
                    let back = self.b.ins().band_imm_s(back, 63);
                    let cf = self.b.ins().ushr(wide, back);
                    (r, self.b.ins().band_imm_s(cf, 1))
                } else {
                    // src:dst as 64 bits, shifted right; the result is its
                    // low half.
                    let hi = self.b.ins().ishl_imm_s(b, 32);
                    let wide = self.b.ins().bor(hi, a);
                    let sh = self.b.ins().ushr(wide, c);
                    let r = self.b.ins().band_imm_s(sh, m);
                    let cf = self.b.ins().ushr(wide, c1);
                    (r, self.b.ins().band_imm_s(cf, 1))
                };
                // CF the last bit out, OF where the sign changed, SF, ZF,
                // PF of the result, AF clear (as the interpreter sets them).
                let x = self.b.ins().bxor(r, a);
                let of = self.b.ins().ushr_imm_s(x, bits - 1);
                let of = self.b.ins().band_imm_s(of, 1);
                let ofb = self.b.ins().ishl_imm_s(of, 11);
                let f = self.b.ins().bor(cf, ofb);
                let szp = self.szp(r, size);
                let f = self.b.ins().bor(f, szp);
                match count {
                    Some(_) => {
                        self.write_reg(dst, r);
                        self.set_eager(f);
                    }
                    None => self.shifted_by(c, dst, a, r, f),
                }
            }
            Form::Count { kind, dst, src } => {
                let size = dst.size;
                let v = self.read(src, insn, size, rip);
                let ty = if size == 8 { types::I64 } else { types::I32 };
                let n = if size == 8 { v } else { self.b.ins().ireduce(types::I32, v) };
                let r = match kind {
                    CountKind::Tz => self.b.ins().ctz(n),
                    CountKind::Lz => self.b.ins().clz(n),
                    CountKind::Pop => self.b.ins().popcnt(n),
                };
                let r = if ty == types::I64 { r } else { self.b.ins().uextend(types::I64, r) };
                self.write_reg(dst, r);
                // TZCNT, LZCNT: CF for a zero source, ZF for a zero result;
                // POPCNT: ZF for a zero source; the rest clear.
                let src_zero = self.b.ins().icmp_imm_s(IntCC::Equal, v, 0);
                let src_zero = self.b.ins().uextend(types::I64, src_zero);
                let f = if kind == CountKind::Pop {
                    self.b.ins().ishl_imm_s(src_zero, 6)
                } else {
                    let rz = self.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
                    let rz = self.b.ins().uextend(types::I64, rz);
                    let zf = self.b.ins().ishl_imm_s(rz, 6);
                    self.b.ins().bor(src_zero, zf)
                };
                self.set_eager(f);
            }
            Form::Comis { double, a, b } => {
                let (x, y) = self.scalar_operands(double, a, b, insn, rip);
                let fty = if double { types::F64 } else { types::F32 };
                // Neither a NaN nor a denormal (which set MXCSR flags): a
                // zero fraction (zeros, infinities) or a normal number.
                let (_, xn, xf) = self.fp_class(x, double);
                let (_, yn, yf) = self.fp_class(y, double);
                let px = self.b.ins().bor(xf, xn);
                let py = self.b.ins().bor(yf, yn);
                let ok = self.b.ins().band(px, py);
                self.slow_unless(ok, rip);
                let fx = self.b.ins().bitcast(fty, MemFlagsData::new(), x);
                let fy = self.b.ins().bitcast(fty, MemFlagsData::new(), y);
                let eq = self.b.ins().fcmp(FloatCC::Equal, fx, fy);
                let lt = self.b.ins().fcmp(FloatCC::LessThan, fx, fy);
                let eq = self.b.ins().uextend(types::I64, eq);
                let lt = self.b.ins().uextend(types::I64, lt);
                let zf = self.b.ins().ishl_imm_s(eq, 6);
                let f = self.b.ins().bor(zf, lt);
                self.set_eager(f);
            }
            Form::ScalarFp { op, double, dst, src } => {
                let (x, y) = self.scalar_operands(double, dst, src, insn, rip);
                let (ity, fty) = if double { (types::I64, types::F64) } else { (types::I32, types::F32) };
                let fx = self.b.ins().bitcast(fty, MemFlagsData::new(), x);
                let fy = self.b.ins().bitcast(fty, MemFlagsData::new(), y);
                let fr = match op {
                    FpOp::Add => self.b.ins().fadd(fx, fy),
                    FpOp::Sub => self.b.ins().fsub(fx, fy),
                    FpOp::Mul => self.b.ins().fmul(fx, fy),
                    FpOp::Div => self.b.ins().fdiv(fx, fy),
                };
                let r = self.b.ins().bitcast(ity, MemFlagsData::new(), fr);
                // Finite operands that are zero or normal (a divisor
                // normal); a finite result, zero or normal, and zero only
                // where exact (a sum, or a zero among the factors, or a
                // zero dividend).
                let (xz, xn, _) = self.fp_class(x, double);
                let (yz, yn, _) = self.fp_class(y, double);
                let (rz, rn, _) = self.fp_class(r, double);
                let x_ok = self.b.ins().bor(xz, xn);
                let y_ok = if op == FpOp::Div { yn } else { self.b.ins().bor(yz, yn) };
                let zero_ok = match op {
                    FpOp::Add | FpOp::Sub => self.b.ins().iconst(types::I8, 1),
                    FpOp::Mul => self.b.ins().bor(xz, yz),
                    FpOp::Div => xz,
                };
                let r_zero = self.b.ins().band(rz, zero_ok);
                let r_ok = self.b.ins().bor(rn, r_zero);
                let plain = self.b.ins().band(x_ok, y_ok);
                let plain = self.b.ins().band(plain, r_ok);
                // With PE set and masked, inexact is fine; else the result
                // must be exact (no flag at all).
                let (quiet, nearest) = self.fp_env();
                let ok = self.b.ins().band(plain, quiet);
                let done = self.b.create_block();
                let check = self.b.create_block();
                self.b.ins().brif(ok, done, &[], check, &[]);
                self.enter_block(check);
                let exact = match op {
                    FpOp::Add => self.fp_sum_exact(fx, fy, fr),
                    FpOp::Sub => {
                        let ny = self.b.ins().fneg(fy);
                        self.fp_sum_exact(fx, ny, fr)
                    }
                    FpOp::Mul => {
                        let e = self.fp_product_error(fx, fy, fr, double);
                        let any_zero = self.b.ins().bor(xz, yz);
                        self.b.ins().bor(e, any_zero)
                    }
                    FpOp::Div => {
                        // q * y == x exactly.
                        let e = self.fp_product_error(fr, fy, fx, double);
                        self.b.ins().bor(e, xz)
                    }
                };
                let ok = self.b.ins().band(plain, nearest);
                let ok = self.b.ins().band(ok, exact);
                self.slow_unless(ok, rip);
                self.b.ins().jump(done, &[]);
                self.enter_block(done);
                let st = self.state;
                self.b.ins().store(guest_flags(), r, st, XMM_OFF + 16 * i32::from(dst));
            }
            Form::CvtInt { double, dst, src, size } => {
                self.sse_check(rip);
                let v = self.read(src, insn, size, rip);
                let v = if size == 8 { v } else { self.b.ins().ireduce(types::I32, v) };
                let (ity, fty) = if double { (types::I64, types::F64) } else { (types::I32, types::F32) };
                let f = self.b.ins().fcvt_from_sint(fty, v);
                // A 32-bit integer is exact in a double; otherwise only a
                // precision flag can arise: exact (the conversion back
                // gives the integer, which is not the largest one, where
                // the conversion back saturates), or PE already set and
                // masked.
                if !(double && size == 4) {
                    let (quiet, nearest) = self.fp_env();
                    let vty = if size == 8 { types::I64 } else { types::I32 };
                    let back = self.b.ins().fcvt_to_sint_sat(vty, f);
                    let same = self.b.ins().icmp(IntCC::Equal, back, v);
                    let max = if size == 8 { i64::MAX } else { i64::from(i32::MAX) };
                    let below = self.b.ins().icmp_imm_s(IntCC::NotEqual, v, max);
                    let exact = self.b.ins().band(same, below);
                    let exact = self.b.ins().band(exact, nearest);
                    let ok = self.b.ins().bor(exact, quiet);
                    self.slow_unless(ok, rip);
                }
                let r = self.b.ins().bitcast(ity, MemFlagsData::new(), f);
                let st = self.state;
                self.b.ins().store(guest_flags(), r, st, XMM_OFF + 16 * i32::from(dst));
            }
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
                        let callee = self.iconst(ctx::host_copy as *const () as usize as u64);
                        self.b.ins().call_indirect(self.sig_copy, callee, &[dst, src, bytes]);
                        let nsi = self.b.ins().iadd(rsi, bytes);
                        self.b.ins().store(mem_flags(), nsi, st, GPR_OFF + 8 * 6);
                    }
                    _ => {
                        let rax = self.gpr64(0);
                        let v = if size == 1 { self.b.ins().band_imm_s(rax, 0xff) } else { rax };
                        let callee = self.iconst(ctx::host_fill as *const () as usize as u64);
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
            Form::BitScan { reverse, dst, src } => {
                let size = dst.size;
                let v = self.read(src, insn, size, rip);
                let zero = self.b.ins().icmp_imm_s(IntCC::Equal, v, 0);
                let idx = if reverse {
                    let lz = self.b.ins().clz(v);
                    let top = self.iconst(63);
                    self.b.ins().isub(top, lz)
                } else {
                    self.b.ins().ctz(v)
                };
                // A zero source leaves the destination as it is (all 64
                // bits) and sets ZF; only ZF changes.
                let old = self.gpr64(dst.idx);
                let out = self.b.ins().select(zero, old, idx);
                self.set_gpr64(dst.idx, out);
                let zf = self.b.ins().uextend(types::I64, zero);
                let zf = self.b.ins().ishl_imm_s(zf, 6);
                self.set_partial(flags::ARITH & !flags::ZF, zf);
            }
            Form::Imul { dst, src, imm } => {
                let size = dst.size;
                let y = self.read(src, insn, size, rip);
                let x = match imm {
                    Some(v) => self.iconst(v & mask(size)),
                    None => self.read_reg(dst),
                };
                let (lo, ovf) = if size == 8 {
                    let lo = self.b.ins().imul(x, y);
                    let hi = self.b.ins().smulhi(x, y);
                    let sign = self.b.ins().sshr_imm_s(lo, 63);
                    (lo, self.b.ins().icmp(IntCC::NotEqual, hi, sign))
                } else {
                    let sx = |tx: &mut Self, v: Value| {
                        let t = tx.b.ins().ishl_imm_s(v, 32);
                        tx.b.ins().sshr_imm_s(t, 32)
                    };
                    let (xs, ys) = (sx(self, x), sx(self, y));
                    let p = self.b.ins().imul(xs, ys);
                    let lo = self.b.ins().band_imm_s(p, 0xffff_ffff);
                    let back = sx(self, lo);
                    (lo, self.b.ins().icmp(IntCC::NotEqual, back, p))
                };
                self.write_reg(dst, lo);
                let ovf = self.b.ins().uextend(types::I64, ovf);
                let cfo = self.b.ins().imul_imm_s(ovf, (flags::CF | flags::OF) as i64);
                let szp = self.szp(lo, size);
                let fv = self.b.ins().bor(cfo, szp);
                self.set_eager(fv);
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
            Form::CallRel { target } => {
                let ret = self.iconst(next);
                let leave = self.push(ret, stack, rip);
                self.after_store(leave, target);
                self.pending += 1;
                self.goto(target, rip);
                return true;
            }
            Form::CallInd { src } => {
                let t = self.read(src, insn, stack, rip);
                self.check_target(t, rip);
                let ret = self.iconst(next);
                let leave = self.push(ret, stack, rip);
                self.after_store_value(leave, t);
                self.exit_to_value(t, 1);
                return true;
            }
            Form::Ret { pop } => {
                let (t, _) = self.stack_read(0, stack, rip);
                self.check_target(t, rip);
                self.sp_add(i64::from(stack) + pop as i64);
                self.exit_to_value(t, 1);
                return true;
            }
            Form::JmpRel { target } => {
                self.pending += 1;
                self.goto(target, rip);
                return true;
            }
            Form::JmpInd { src } => {
                let t = self.read(src, insn, stack, rip);
                self.check_target(t, rip);
                self.exit_to_value(t, 1);
                return true;
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
                return true;
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
            Form::Vec { op, dst, src } => {
                self.sse_check(rip);
                let ty = match op {
                    VecOp::CmpEq(n) | VecOp::Add(n) | VecOp::Sub(n) => vec_type(n),
                    _ => types::I8X16,
                };
                let b = match src {
                    VecSrc::Xmm(x) => self.xmm_load(x, ty),
                    VecSrc::Mem => self.vec_mem_load(insn, ty, true, rip),
                };
                let a = self.xmm_load(dst, ty);
                let r = match op {
                    VecOp::CmpEq(_) => self.b.ins().icmp(IntCC::Equal, a, b),
                    VecOp::Add(_) => self.b.ins().iadd(a, b),
                    VecOp::Sub(_) => self.b.ins().isub(a, b),
                    VecOp::Xor => self.b.ins().bxor(a, b),
                    VecOp::Or => self.b.ins().bor(a, b),
                    VecOp::And => self.b.ins().band(a, b),
                    // PANDN: dst = !dst & src.
                    VecOp::AndNot => self.b.ins().band_not(b, a),
                    VecOp::MinUb => self.b.ins().umin(a, b),
                    VecOp::MaxUb => self.b.ins().umax(a, b),
                    VecOp::Shuffle => {
                        // PSHUFB: an index with bit 7 set gives 0, else its
                        // low four bits pick the byte; out-of-range indices
                        // of `swizzle` give 0 too.
                        let m = self.b.ins().iconst(types::I8, 0x8f);
                        let m = self.b.ins().splat(types::I8X16, m);
                        let idx = self.b.ins().band(b, m);
                        self.b.ins().swizzle(a, idx)
                    }
                    VecOp::UnpackLo(n) | VecOp::UnpackHi(n) => {
                        // Lane i of the half goes to lane 2i, the source's
                        // lane i to lane 2i + 1 (byte 16 + k of `shuffle`
                        // is byte k of its second operand).
                        let (n, half) = (usize::from(n), if matches!(op, VecOp::UnpackHi(_)) { 8 } else { 0 });
                        let mut mask = [0u8; 16];
                        for lane in 0..8 / n {
                            for k in 0..n {
                                let from = (half + lane * n + k) as u8;
                                mask[2 * lane * n + k] = from;
                                mask[2 * lane * n + n + k] = 16 + from;
                            }
                        }
                        self.shuffle(a, b, mask)
                    }
                    VecOp::ShufD(imm) => {
                        let mut mask = [0u8; 16];
                        for (i, m) in mask.iter_mut().enumerate() {
                            let dword = (imm >> (2 * (i / 4))) & 3;
                            *m = dword * 4 + (i % 4) as u8;
                        }
                        self.shuffle(b, b, mask)
                    }
                };
                self.xmm_store(dst, r);
            }
            Form::VecMov { dst, src, aligned } => {
                self.sse_check(rip);
                let ty = types::I8X16;
                let v = match src {
                    VecSrc::Xmm(x) => self.xmm_load(x, ty),
                    VecSrc::Mem => self.vec_mem_load(insn, ty, aligned, rip),
                };
                match dst {
                    VecSrc::Xmm(x) => self.xmm_store(x, v),
                    VecSrc::Mem => self.vec_mem_store(insn, v, aligned, rip),
                }
            }
            Form::VecScalar { dst, src, width, merge } => {
                self.sse_check(rip);
                let ty = if width == 4 { types::I32 } else { types::I64 };
                let w = u32::from(width);
                let v = match src {
                    VecSrc::Xmm(x) => self.xmm_load(x, ty),
                    VecSrc::Mem => {
                        let a = self.vec_host_addr(insn, w, false, false, rip);
                        self.b.ins().load(ty, guest_flags(), a, 0)
                    }
                };
                match dst {
                    VecSrc::Xmm(x) => {
                        let fl = guest_flags();
                        let at = XMM_OFF + 16 * i32::from(x);
                        self.b.ins().store(fl, v, self.state, at);
                        if !merge {
                            if width == 4 {
                                let z = self.b.ins().iconst(types::I32, 0);
                                self.b.ins().store(fl, z, self.state, at + 4);
                            }
                            let z = self.iconst(0);
                            self.b.ins().store(fl, z, self.state, at + 8);
                        }
                    }
                    VecSrc::Mem => {
                        let a = self.vec_host_addr(insn, w, false, true, rip);
                        self.b.ins().store(guest_flags(), v, a, 0);
                    }
                }
            }
            Form::Pmovmskb { dst, src } => {
                self.sse_check(rip);
                let v = self.xmm_load(src, types::I8X16);
                let m = self.b.ins().vhigh_bits(types::I64, v);
                self.write_reg(dst, m);
            }
            Form::MovToVec { dst, src } => {
                self.sse_check(rip);
                let v = self.read_reg(src);
                let z = self.iconst(0);
                let fl = guest_flags();
                self.b.ins().store(fl, v, self.state, XMM_OFF + 16 * i32::from(dst));
                self.b.ins().store(fl, z, self.state, XMM_OFF + 16 * i32::from(dst) + 8);
            }
            Form::MovFromVec { dst, src } => {
                self.sse_check(rip);
                let v = self.b.ins().load(types::I64, guest_flags(), self.state, XMM_OFF + 16 * i32::from(src));
                self.write_reg(dst, v);
            }
            Form::MulDiv { div, src, size } => {
                let d = self.read(src, insn, size, rip);
                let (ra, rd) = if size == 8 { (Register::RAX, Register::RDX) } else { (Register::EAX, Register::EDX) };
                let (ra, rd) = (reg(ra).expect("a GPR"), reg(rd).expect("a GPR"));
                let a = self.read_reg(ra);
                let (lo, hi) = if div {
                    // The instructions before count, in case the slow path
                    // leaves.
                    self.flush_count();
                    // Without overflow (or a zero divisor) at once; else
                    // the interpreter raises #DE or divides 128 bits.
                    let hi = self.read_reg(rd);
                    if size == 8 {
                        // hi < d: the quotient fits 64 bits (and d != 0).
                        // A 64-bit dividend divides inline, a wider one in
                        // a helper.
                        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, hi, d);
                        self.slow_unless(ok, rip);
                        let narrow = self.b.create_block();
                        let wide = self.b.create_block();
                        let join = self.b.create_block();
                        let i64t = types::I64;
                        self.b.append_block_param(join, i64t);
                        self.b.append_block_param(join, i64t);
                        self.b.ins().brif(hi, wide, &[], narrow, &[]);
                        self.enter_block(narrow);
                        let q = self.b.ins().udiv(a, d);
                        let r = self.b.ins().urem(a, d);
                        self.b.ins().jump(join, &[q.into(), r.into()]);
                        self.enter_block(wide);
                        let callee = self.iconst(ctx::udiv128 as *const () as usize as u64);
                        let out = self.b.ins().iadd_imm_s(self.ctx, i64::from(off::SCRATCH));
                        let call = self.b.ins().call_indirect(self.sig_div, callee, &[hi, a, d, out]);
                        let q = self.b.inst_results(call)[0];
                        let r = self.b.ins().load(i64t, mem_flags(), self.ctx, off::SCRATCH);
                        self.b.ins().jump(join, &[q.into(), r.into()]);
                        self.enter_block(join);
                        let p = self.b.block_params(join);
                        (p[0], p[1])
                    } else {
                        // hi < d: the quotient fits 32 bits (and d != 0).
                        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, hi, d);
                        self.slow_unless(ok, rip);
                        let h = self.b.ins().ishl_imm_s(hi, 32);
                        let n = self.b.ins().bor(h, a);
                        (self.b.ins().udiv(n, d), self.b.ins().urem(n, d))
                    }
                } else if size == 8 {
                    (self.b.ins().imul(a, d), self.b.ins().umulhi(a, d))
                } else {
                    let p = self.b.ins().imul(a, d);
                    (self.b.ins().band_imm_s(p, 0xffff_ffff), self.b.ins().ushr_imm_s(p, 32))
                };
                self.write_reg(ra, lo);
                self.write_reg(rd, hi);
                if !div {
                    // CF = OF = a high half; SF, ZF, PF of the low (as the
                    // interpreter sets them); AF clear.
                    let ovf = self.b.ins().icmp_imm_s(IntCC::NotEqual, hi, 0);
                    let ovf = self.b.ins().uextend(types::I64, ovf);
                    let cfo = self.b.ins().imul_imm_s(ovf, (flags::CF | flags::OF) as i64);
                    let szp = self.szp(lo, size);
                    let f = self.b.ins().bor(cfo, szp);
                    self.set_eager(f);
                }
            }
            Form::Rdtsc { aux } => {
                let callee = self.iconst(ctx::rdtsc as *const () as usize as u64);
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
            Form::Bt { op, dst, src, size } => {
                let bits = i64::from(size * 8);
                let bit = match src {
                    Opnd::Imm(v) => self.iconst(v & (bits as u64 - 1)),
                    Opnd::Reg(r) => {
                        let v = self.read_reg(r);
                        self.b.ins().band_imm_s(v, bits - 1)
                    }
                    Opnd::Mem => unreachable!("classify refuses a memory bit offset"),
                };
                let (v, haddr) = match dst {
                    Opnd::Reg(r) => (self.read_reg(r), None),
                    _ => {
                        let (v, h) = self.load(insn, size, rip, op != BtOp::Test);
                        (v, Some(h))
                    }
                };
                let cf = self.b.ins().ushr(v, bit);
                let cf = self.b.ins().band_imm_s(cf, 1);
                let one = self.iconst(1);
                let m = self.b.ins().ishl(one, bit);
                let out = match op {
                    BtOp::Test => None,
                    BtOp::Set => Some(self.b.ins().bor(v, m)),
                    BtOp::Reset => Some(self.b.ins().band_not(v, m)),
                    BtOp::Complement => Some(self.b.ins().bxor(v, m)),
                };
                // Only CF changes.
                let keep = flags::ARITH & !flags::CF;
                match (dst, out) {
                    (Opnd::Reg(r), Some(o)) => {
                        self.write_reg(r, o);
                        self.set_partial(keep, cf);
                    }
                    (_, Some(o)) => {
                        let seg = cpu::ops::mem_seg(insn);
                        let ea = self.ea(insn);
                        let leave = self.store_at(seg, ea, size, o, rip, haddr);
                        self.set_partial(keep, cf);
                        self.after_store(leave, next);
                    }
                    (_, None) => self.set_partial(keep, cf),
                }
            }
            Form::Pcmpistri { a, b, imm } => {
                self.sse_check(rip);
                let pa = self.b.ins().iadd_imm_s(self.state, i64::from(XMM_OFF + 16 * i32::from(a)));
                let pb = match b {
                    VecSrc::Xmm(x) => self.b.ins().iadd_imm_s(self.state, i64::from(XMM_OFF + 16 * i32::from(x))),
                    VecSrc::Mem => self.vec_host_addr(insn, 16, false, false, rip),
                };
                let callee = self.iconst(ctx::pcmpistri as *const () as usize as u64);
                let immv = self.b.ins().iconst(types::I32, i64::from(imm));
                let call = self.b.ins().call_indirect(self.sig_pcmp, callee, &[pa, pb, immv]);
                let r = self.b.inst_results(call)[0];
                let ecx = reg(Register::ECX).expect("a GPR");
                self.write_reg(ecx, r);
                let f = self.b.ins().ushr_imm_s(r, 32);
                self.set_eager(f);
            }
            Form::SignAcc { size } => {
                let a = self.gpr64(0);
                let sh = i64::from(64 - size * 8);
                let t = self.b.ins().ishl_imm_s(a, sh);
                let v = self.b.ins().sshr_imm_s(t, 63);
                let r = reg(if size == 4 { Register::EDX } else { Register::RDX }).expect("a GPR");
                self.write_reg(r, v);
            }
        }
        false
    }

    // ---- SSE ------------------------------------------------------------------

    /// The bytes of `a` (0..16) and `b` (16..32) that `mask` names.
    fn shuffle(&mut self, a: Value, b: Value, mask: [u8; 16]) -> Value {
        let imm = self.b.func.dfg.immediates.push(mask.to_vec().into());
        self.b.ins().shuffle(a, b, imm)
    }

    /// Leave through the interpreter: the current instruction runs there
    /// (which raises what it must) and the region returns after it. The
    /// current block ends.
    fn slow_exit(&mut self, rip: u64) {
        let d = self.slow_insn.expect("a form with a slow path has a fallback entry");
        self.emit_stores();
        self.call_fallback(d, rip);
        self.b.ins().jump(self.leave_block, &[]);
    }

    /// Store RIP and run the instruction `d` through the interpreter's
    /// handler (the state in memory must be current); its status.
    fn call_fallback(&mut self, d: *const Decoded, rip: u64) -> Value {
        self.call_helper_at(ctx::fallback, d, rip)
    }

    /// Call `helper` for the instruction `d` at `rip` (stored to the
    /// state's RIP first): its status.
    fn call_helper_at(
        &mut self,
        helper: unsafe extern "C" fn(*mut ctx::JitCtx, *const Decoded) -> u32,
        d: *const Decoded,
        rip: u64,
    ) -> Value {
        let r = self.iconst(rip);
        self.b.ins().store(mem_flags(), r, self.state, RIP_OFF);
        let callee = self.iconst(helper as *const () as usize as u64);
        let dv = self.iconst(d as usize as u64);
        let call = self.b.ins().call_indirect(self.sig_fallback, callee, &[self.ctx, dv]);
        self.b.inst_results(call)[0]
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

    /// STAC, CLAC and SWAPGS: CPL 0, else the slow path raises what the
    /// instruction raises there.
    fn cpl0_only(&mut self, rip: u64) {
        self.flush_count();
        let cpl = self.b.ins().uload8(types::I64, mem_flags(), self.state, CPL_OFF);
        let ok = self.b.ins().icmp_imm_s(IntCC::Equal, cpl, 0);
        self.slow_unless(ok, rip);
    }

    /// Branch to the slow path unless `ok`.
    fn slow_unless(&mut self, ok: Value, rip: u64) {
        let fast = self.b.create_block();
        let slow = self.b.create_block();
        self.b.ins().brif(ok, fast, &[], slow, &[]);
        self.enter_block(slow);
        self.slow_exit(rip);
        self.enter_block(fast);
    }

    /// SSE may run: CR0.EM and CR0.TS clear, CR4.OSFXSR set (else the
    /// interpreter raises #UD or #NM).
    fn sse_check(&mut self, rip: u64) {
        // The instructions before count, in case the slow path leaves.
        self.flush_count();
        if self.sse_ok {
            return;
        }
        let fl = mem_flags();
        let cr0 = self.b.ins().load(types::I64, fl, self.state, CR0_OFF);
        let cr4 = self.b.ins().load(types::I64, fl, self.state, CR4_OFF);
        let bad0 = self.b.ins().band_imm_s(cr0, (cr::CR0_EM | cr::CR0_TS) as i64);
        let ok4 = self.b.ins().band_imm_s(cr4, cr::CR4_OSFXSR as i64);
        let ok0 = self.b.ins().icmp_imm_s(IntCC::Equal, bad0, 0);
        let ok4 = self.b.ins().icmp_imm_s(IntCC::NotEqual, ok4, 0);
        let ok = self.b.ins().band(ok0, ok4);
        self.slow_unless(ok, rip);
        self.sse_ok = true;
    }

    /// The low lanes (32 or 64 bits, as integers) of XMM `a` and of `b`
    /// for a scalar SSE instruction, after the SSE check.
    fn scalar_operands(&mut self, double: bool, a: u8, b: VecSrc, insn: &Instruction, rip: u64) -> (Value, Value) {
        self.sse_check(rip);
        let (ity, w) = if double { (types::I64, 8) } else { (types::I32, 4) };
        let x = self.xmm_load(a, ity);
        let y = match b {
            VecSrc::Xmm(r) => self.xmm_load(r, ity),
            VecSrc::Mem => {
                let at = self.vec_host_addr(insn, w, false, false, rip);
                self.b.ins().load(ity, guest_flags(), at, 0)
            }
        };
        (x, y)
    }

    /// Of the float bits `v`: whether it is a zero, whether it is a normal
    /// number (neither zero, denormal, infinite nor NaN), and whether its
    /// fraction is zero (zeros and infinities).
    fn fp_class(&mut self, v: Value, double: bool) -> (Value, Value, Value) {
        let (ebits, fbits) = if double { (11, 52) } else { (8, 23) };
        let top = (1i64 << ebits) - 1;
        let e = self.b.ins().ushr_imm_s(v, fbits);
        let e = self.b.ins().band_imm_s(e, top);
        let frac = self.b.ins().band_imm_s(v, (1i64 << fbits) - 1);
        let e_zero = self.b.ins().icmp_imm_s(IntCC::Equal, e, 0);
        let f_zero = self.b.ins().icmp_imm_s(IntCC::Equal, frac, 0);
        let zero = self.b.ins().band(e_zero, f_zero);
        let e_low = self.b.ins().icmp_imm_s(IntCC::NotEqual, e, 0);
        let e_high = self.b.ins().icmp_imm_s(IntCC::NotEqual, e, top);
        (zero, self.b.ins().band(e_low, e_high), f_zero)
    }

    /// Of MXCSR: whether it rounds to nearest with PE set and masked (an
    /// inexact result changes nothing and raises nothing), and whether it
    /// rounds to nearest (an exact result is the host's).
    fn fp_env(&mut self) -> (Value, Value) {
        let st = self.state;
        let mx = self.b.ins().uload32(mem_flags(), st, MXCSR_OFF);
        let m = self.b.ins().band_imm_s(mx, 0x7020);
        let quiet = self.b.ins().icmp_imm_s(IntCC::Equal, m, 0x1020);
        let rc = self.b.ins().band_imm_s(mx, 0x6000);
        (quiet, self.b.ins().icmp_imm_s(IntCC::Equal, rc, 0))
    }

    /// Whether `s`, the rounded `a + b` (finite), is exact: the error term
    /// of the two-sum is zero (round to nearest on the host).
    fn fp_sum_exact(&mut self, a: Value, b: Value, s: Value) -> Value {
        let bb = self.b.ins().fsub(s, a);
        let ab = self.b.ins().fsub(s, bb);
        let ea = self.b.ins().fsub(a, ab);
        let eb = self.b.ins().fsub(b, bb);
        let err = self.b.ins().fadd(ea, eb);
        let zero = self.fp_zero(err);
        self.b.ins().fcmp(FloatCC::Equal, err, zero)
    }

    /// Whether `p == a * b` exactly (all normal): the product's error term
    /// by Dekker's splitting is zero and the rounded product is `p`. Only
    /// for magnitudes where no step overflows or underflows (exponents
    /// within ±400 for doubles, ±40 for singles); false elsewhere.
    fn fp_product_error(&mut self, a: Value, b: Value, p: Value, double: bool) -> Value {
        let (ity, fbits, bias, k, split) = if double {
            (types::I64, 52, 1023i64, 400i64, 134_217_729.0f64)
        } else {
            (types::I32, 23, 127, 40, 4097.0)
        };
        let c = if double { self.b.ins().f64const(split) } else { self.b.ins().f32const(split as f32) };
        let mut in_range = self.b.ins().iconst(types::I8, 1);
        for v in [a, b, p] {
            let bits = self.b.ins().bitcast(ity, MemFlagsData::new(), v);
            let e = self.b.ins().ushr_imm_s(bits, fbits);
            let e = self.b.ins().band_imm_s(e, if double { 0x7ff } else { 0xff });
            let lo = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, e, bias - k);
            let hi = self.b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, e, bias + k);
            let r = self.b.ins().band(lo, hi);
            in_range = self.b.ins().band(in_range, r);
        }
        let mut halves = |x: Value| {
            let t = self.b.ins().fmul(c, x);
            let d = self.b.ins().fsub(t, x);
            let hi = self.b.ins().fsub(t, d);
            (hi, self.b.ins().fsub(x, hi))
        };
        let (ah, al) = halves(a);
        let (bh, bl) = halves(b);
        let q = self.b.ins().fmul(a, b);
        let hh = self.b.ins().fmul(ah, bh);
        let e = self.b.ins().fsub(hh, q);
        let hl = self.b.ins().fmul(ah, bl);
        let e = self.b.ins().fadd(e, hl);
        let lh = self.b.ins().fmul(al, bh);
        let e = self.b.ins().fadd(e, lh);
        let ll = self.b.ins().fmul(al, bl);
        let e = self.b.ins().fadd(e, ll);
        let zero = self.fp_zero(e);
        let no_err = self.b.ins().fcmp(FloatCC::Equal, e, zero);
        let same = self.b.ins().fcmp(FloatCC::Equal, q, p);
        let ok = self.b.ins().band(no_err, same);
        self.b.ins().band(ok, in_range)
    }

    fn fp_zero(&mut self, like: Value) -> Value {
        if self.b.func.dfg.value_type(like) == types::F64 {
            self.b.ins().f64const(0.0)
        } else {
            self.b.ins().f32const(0.0)
        }
    }

    fn xmm_load(&mut self, x: u8, ty: Type) -> Value {
        self.b.ins().load(ty, guest_flags(), self.state, XMM_OFF + 16 * i32::from(x))
    }

    fn xmm_store(&mut self, x: u8, v: Value) {
        self.b.ins().store(guest_flags(), v, self.state, XMM_OFF + 16 * i32::from(x));
    }

    /// The host address of the 16-byte memory operand, through the inline
    /// TLB test; anything else (a miss, MMIO, a page crossing, a
    /// misaligned operand that must be aligned, a code page written) takes
    /// the slow path.
    fn vec_host_addr(&mut self, insn: &Instruction, size: u32, aligned: bool, write: bool, rip: u64) -> Value {
        let seg = cpu::ops::mem_seg(insn);
        let off_v = self.ea(insn);
        let lin = self.linear(seg, off_v).expect("classify_vec takes segments with an inline linear address");
        if aligned {
            let low = self.b.ins().band_imm_s(lin, 15);
            let ok = self.b.ins().icmp_imm_s(IntCC::Equal, low, 0);
            self.slow_unless(ok, rip);
        }
        let l = mmu::TLB_LAYOUT;
        let (entry, hit) = self.tlb_hit(lin, size, if write { l.jit_write } else { l.jit_read });
        self.slow_unless(hit, rip);
        self.host_addr(entry, lin)
    }

    fn vec_mem_load(&mut self, insn: &Instruction, ty: Type, aligned: bool, rip: u64) -> Value {
        let a = self.vec_host_addr(insn, 16, aligned, false, rip);
        self.b.ins().load(ty, guest_flags(), a, 0)
    }

    fn vec_mem_store(&mut self, insn: &Instruction, v: Value, aligned: bool, rip: u64) {
        let a = self.vec_host_addr(insn, 16, aligned, true, rip);
        self.b.ins().store(guest_flags(), v, a, 0);
    }

    fn alu_flags(&mut self, op: Alu, size: u32, r: Value, a: Value, bv: Value, cin: Option<Value>) {
        match op {
            Alu::Add => self.set_lazy(FlagOp::Add, size, r, a, bv, None),
            Alu::Sub | Alu::Cmp => self.set_lazy(FlagOp::Sub, size, r, a, bv, None),
            Alu::Adc => self.set_lazy(FlagOp::Adc, size, r, a, bv, cin),
            Alu::Sbb => self.set_lazy(FlagOp::Sbb, size, r, a, bv, cin),
            Alu::And | Alu::Or | Alu::Xor | Alu::Test => self.set_lazy(FlagOp::Logic, size, r, a, bv, None),
        }
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

    fn sp_add(&mut self, n: i64) {
        let sp = self.gpr64(4);
        let new = self.b.ins().iadd_imm_s(sp, n);
        let v = self.sp_merge(sp, new);
        self.set_gpr64(4, v);
    }

    /// Read `size` bytes at SS:RSP+depth.
    fn stack_read(&mut self, depth: i64, size: u32, rip: u64) -> (Value, Value) {
        let sp = self.gpr64(4);
        self.stack_read_from(sp, depth, size, rip)
    }

    fn stack_read_from(&mut self, sp: Value, depth: i64, size: u32, rip: u64) -> (Value, Value) {
        let a = self.b.ins().iadd_imm_s(sp, depth);
        let a = if self.bits == 64 { a } else { self.b.ins().band_imm_s(a, 0xffff_ffff) };
        self.load_at(sreg::SS, a, size, rip, false)
    }

    /// PUSH: store at SS:RSP-size, then move RSP (a fault leaves RSP).
    fn push(&mut self, v: Value, size: u32, rip: u64) -> Option<Value> {
        let sp = self.gpr64(4);
        let new = self.b.ins().iadd_imm_s(sp, -i64::from(size));
        let a = if self.bits == 64 { new } else { self.b.ins().band_imm_s(new, 0xffff_ffff) };
        let leave = self.store_at(sreg::SS, a, size, v, rip, None);
        let nsp = self.sp_merge(sp, new);
        self.set_gpr64(4, nsp);
        leave
    }

    /// SHL, SHR or SAR of `a` (`size` bytes) by `count` (1 to the width
    /// less one): the result, CF and OF (0 or 1).
    fn shift_imm(&mut self, op: Shift, a: Value, size: u32, count: u32) -> (Value, Value, Value) {
        let m = mask(size) as i64;
        let bits = i64::from(size * 8);
        let c = i64::from(count);
        match op {
            Shift::Shl => {
                let r = self.b.ins().ishl_imm_s(a, c);
                let r = self.b.ins().band_imm_s(r, m);
                let cf = self.b.ins().ushr_imm_s(a, bits - c);
                let cf = self.b.ins().band_imm_s(cf, 1);
                let msb = self.sign_bit(r, size);
                let of = self.b.ins().bxor(msb, cf);
                (r, cf, of)
            }
            Shift::Shr => {
                let r = self.b.ins().ushr_imm_s(a, c);
                let cf = self.b.ins().ushr_imm_s(a, c - 1);
                let cf = self.b.ins().band_imm_s(cf, 1);
                let of = self.sign_bit(a, size);
                (r, cf, of)
            }
            Shift::Sar => {
                let sh = 64 - bits;
                let sa = if sh > 0 {
                    let t = self.b.ins().ishl_imm_s(a, sh);
                    self.b.ins().sshr_imm_s(t, sh)
                } else {
                    a
                };
                let r = self.b.ins().sshr_imm_s(sa, c);
                let r = self.b.ins().band_imm_s(r, m);
                let cf = self.b.ins().sshr_imm_s(sa, c - 1);
                let cf = self.b.ins().band_imm_s(cf, 1);
                (r, cf, self.iconst(0))
            }
            _ => unreachable!("rotates are not shifts"),
        }
    }

    /// The end of a shift by a computed `count`: `dst` becomes `r` with
    /// flags `f`, except that a count of 0 changes no flag (the register
    /// is still written: a 32-bit one is zero-extended from `a`).
    fn shifted_by(&mut self, count: Value, dst: Reg, a: Value, r: Value, f: Value) {
        let zero = self.b.ins().icmp_imm_s(IntCC::Equal, count, 0);
        let out = self.b.ins().select(zero, a, r);
        self.write_reg(dst, out);
        self.sync();
        let set = self.b.create_block();
        let join = self.b.create_block();
        self.b.ins().brif(zero, join, &[], set, &[]);
        self.enter_block(set);
        self.store_eager(f);
        self.b.ins().jump(join, &[]);
        self.enter_block(join);
        self.known = Known::Unknown;
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

/// Whether the instruction may write memory through its first operand or
/// the stack: its store's slow path runs it through the interpreter.
fn writes_memory(insn: &Instruction) -> bool {
    insn.op0_kind() == OpKind::Memory || insn.stack_pointer_increment() < 0
}

fn vec_type(lane_bytes: u8) -> Type {
    match lane_bytes {
        1 => types::I8X16,
        2 => types::I16X8,
        4 => types::I32X4,
        _ => types::I64X2,
    }
}

fn int_type(size: u32) -> Type {
    match size {
        1 => types::I8,
        2 => types::I16,
        4 => types::I32,
        _ => types::I64,
    }
}
