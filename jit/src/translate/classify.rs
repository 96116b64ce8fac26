//! The instruction classifier: which instructions a region translates, and
//! in which form. It decides from the decoded instruction alone, before
//! anything is emitted, and knows nothing of the code generator.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use cpu::state::sreg;

/// A general-register operand.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reg {
    pub(super) idx: usize,
    pub(super) size: u32,
    /// AH, CH, DH, BH.
    pub(super) high: bool,
}

pub(super) fn reg(r: Register) -> Option<Reg> {
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
pub(super) enum Opnd {
    Reg(Reg),
    Mem,
    Imm(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Alu {
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
pub(super) enum BtOp {
    Test,
    Set,
    Reset,
    Complement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shift {
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
}

/// A translated instruction form, checked before anything is emitted.
#[derive(Clone, Copy, Debug)]
pub(super) enum Form {
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
    /// MUL, one-operand IMUL (`signed`), DIV and IDIV (`div`) of r/m8,
    /// 16, 32 or 64: AX, or rDX:rAX. A divide takes the slow path where
    /// the interpreter raises #DE (a zero divisor, a quotient that does
    /// not fit).
    MulDiv {
        div: bool,
        signed: bool,
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
    /// MOV r32/r64, CR0/CR2/CR3/CR4: a read of the state at CPL 0 (else
    /// the slow path raises #GP).
    MovFromCr {
        dst: Reg,
        cr: u8,
    },
    /// RDPKRU: EAX = PKRU, EDX = 0, where CR4.PKE is set and ECX is 0
    /// (else the slow path raises #UD or #GP).
    Rdpkru,
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
    /// XADD r/m, reg.
    Xadd {
        dst: Opnd,
        src: Reg,
        size: u32,
    },
    /// BT, BTS, BTR, BTC of a register or of memory, the bit by a register
    /// or an immediate. With memory and a register the bit offset is signed
    /// and selects the operand-sized unit of a bit string
    /// ([`bit_string_mask`]).
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
    /// MOVLPS/MOVLPD and MOVHPS/MOVHPD (`high`: the register's upper
    /// quadword) move 8 bytes between memory and one half of the register,
    /// keeping the other half (`merge`).
    VecScalar {
        dst: VecSrc,
        src: VecSrc,
        width: u8,
        merge: bool,
        high: bool,
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
    /// PCMPESTRI xmm, xmm/m128, imm8 (`wide`: the REX.W form, whose
    /// lengths are RAX and RDX rather than EAX and EDX): the compare in a
    /// pure helper ([`crate::ctx::pcmpestri`]).
    Pcmpestri {
        a: u8,
        b: VecSrc,
        imm: u8,
        wide: bool,
    },
    /// MOVHLPS (`from_high`: the source's upper quadword into the
    /// destination's lower one) and MOVLHPS (the source's lower quadword
    /// into the destination's upper one); the other quadword stays.
    MovHalves {
        dst: u8,
        src: u8,
        from_high: bool,
    },
    /// PCLMULQDQ xmm, xmm/m128, imm8: the carry-less product of the
    /// quadwords imm8 bits 0 (the destination's) and 4 (the source's) pick,
    /// in a pure helper ([`crate::ctx::clmul`]). Translated only where the
    /// CPU model offers it ([`Form::needs_crypto`]).
    Pclmul {
        dst: u8,
        src: VecSrc,
        imm: u8,
    },
    /// CRC32 r32/r64, r/m8/16/32/64 (`size`: the source's bytes): the
    /// source folded into the CRC-32C in the destination's low 32 bits by a
    /// pure helper ([`crate::ctx::crc32c`]), the result zero-extended to 64
    /// bits; no flags.
    Crc32 {
        dst: Reg,
        src: Opnd,
        size: u32,
    },
    /// A VEX-encoded AVX/AVX2 form ([`Avx`]): translated only where the
    /// CPU model offers AVX, after an inline test of CR4.OSXSAVE, XCR0 and
    /// CR0.TS once per guest block (else the interpreter raises #UD or #NM).
    Avx(Avx),
    /// BZHI r, r/m, r (32 and 64 bits): the bits of the source below the
    /// index in the low byte of the third operand; the flags as a logic
    /// result, with CF for an index past the width.
    Bzhi {
        dst: Reg,
        src: Opnd,
        index: Reg,
    },
    /// SARX, SHLX, SHRX r, r/m, r (32 and 64 bits): no flags.
    ShiftX {
        op: Shift,
        dst: Reg,
        src: Opnd,
        count: Reg,
    },
    /// RORX r, r/m, imm8 (32 and 64 bits): no flags.
    Rorx {
        dst: Reg,
        src: Opnd,
        count: u32,
    },
    /// BLSI, BLSMSK, BLSR r, r/m (32 and 64 bits).
    Bls {
        kind: BlsKind,
        dst: Reg,
        src: Opnd,
    },
    /// ANDN r, r, r/m (32 and 64 bits): `dst = !src1 & src2`, the flags of
    /// a logic result.
    Andn {
        dst: Reg,
        src1: Reg,
        src2: Opnd,
    },
    /// MOVBE r, m or m, r (2, 4 or 8 bytes): the bytes reversed; no flags.
    Movbe {
        dst: Opnd,
        src: Opnd,
        size: u32,
    },
    /// A guest atomic on memory when other host threads share guest memory
    /// ([`classify_atomic`]), and CMPXCHG8B/16B always: one host atomic
    /// through the host address of a naturally aligned operand found in the
    /// TLB for writing, else the slow path (the interpreter's handler, the
    /// locked one for a LOCK).
    Atomic {
        op: AtomicOp,
        /// The register or immediate operand (unused by INC, DEC, NEG, NOT
        /// and CMPXCHG8B/16B).
        src: Opnd,
        /// The operand's bytes: 1 to 8, 16 for CMPXCHG16B.
        size: u32,
    },
    /// MFENCE when other host threads share guest memory: a host fence.
    Fence,
}

/// The operation of a [`Form::Atomic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AtomicOp {
    /// LOCK ADD, SUB, AND, OR, XOR, ADC, SBB.
    Alu(Alu),
    /// LOCK INC (`true`) or DEC.
    IncDec(bool),
    /// LOCK NEG.
    Neg,
    /// LOCK NOT.
    Not,
    /// LOCK XADD m, reg.
    Xadd,
    /// XCHG m, reg (locked with or without the prefix).
    Xchg,
    /// LOCK CMPXCHG m, reg.
    Cmpxchg,
    /// CMPXCHG8B m64 (`size` 8) and CMPXCHG16B m128 (`size` 16), with or
    /// without LOCK.
    CmpxchgWide,
    /// LOCK BTS, BTR, BTC m, imm or m, reg (a bit string).
    Bt(BtOp),
}

impl Form {
    /// What the form does with the flags before anything else can see
    /// them, for [`super::flags_dead_on_entry`].
    pub(super) fn flags_effect(&self) -> FlagsEffect {
        let plain = |o: &Opnd| matches!(o, Opnd::Reg(_) | Opnd::Imm(_));
        match self {
            // Every arithmetic flag from the operands alone, with no memory
            // access that could fault first.
            Form::Alu { op, dst: Opnd::Reg(_), src, .. } if plain(src) && !matches!(op, Alu::Adc | Alu::Sbb) => {
                FlagsEffect::Kills
            }
            Form::Neg { dst: Opnd::Reg(_), .. }
            | Form::Count { src: Opnd::Reg(_), .. }
            | Form::Bzhi { src: Opnd::Reg(_), .. }
            | Form::Bls { src: Opnd::Reg(_), .. }
            | Form::Andn { src2: Opnd::Reg(_), .. } => FlagsEffect::Kills,
            // Neither reads nor writes the flags, and cannot fault or leave.
            Form::Nop | Form::Fence | Form::Lea { .. } | Form::Not { dst: Opnd::Reg(_), .. } => FlagsEffect::Ignores,
            Form::Mov { dst: Opnd::Reg(_), src, .. } if plain(src) => FlagsEffect::Ignores,
            Form::Movx { src: Opnd::Reg(_), .. }
            | Form::Crc32 { src: Opnd::Reg(_), .. }
            | Form::ShiftX { src: Opnd::Reg(_), .. }
            | Form::Rorx { src: Opnd::Reg(_), .. } => FlagsEffect::Ignores,
            _ => FlagsEffect::Other,
        }
    }

    /// Whether the form is an AVX instruction, translated only where the
    /// CPU model offers AVX (elsewhere the interpreter raises #UD).
    pub(super) fn needs_avx(&self) -> bool {
        matches!(self, Form::Avx(_))
    }

    /// Whether the form is PCLMULQDQ or VPCLMULQDQ, translated only where
    /// the CPU model offers PCLMULQDQ (elsewhere the interpreter raises
    /// #UD).
    pub(super) fn needs_crypto(&self) -> bool {
        matches!(self, Form::Pclmul { .. } | Form::Avx(Avx::Clmul { .. }))
    }

    /// Whether the form has a slow path that runs the instruction through
    /// the interpreter (and leaves the region after it).
    pub(super) fn may_slow(&self) -> bool {
        matches!(
            self,
            Form::Vec { .. }
                | Form::VecMov { .. }
                | Form::VecScalar { .. }
                | Form::Pmovmskb { .. }
                | Form::MovToVec { .. }
                | Form::MovFromVec { .. }
                | Form::Pcmpistri { .. }
                | Form::Pcmpestri { .. }
                | Form::MovHalves { .. }
                | Form::Pclmul { .. }
                | Form::Avx(_)
                | Form::MulDiv { div: true, .. }
                | Form::MovFromCr { .. }
                | Form::Rdpkru
                | Form::Comis { .. }
                | Form::Fnstcw
                | Form::ScalarFp { .. }
                | Form::CvtInt { .. }
                | Form::RepString { .. }
                | Form::Cli
                | Form::Sti
                | Form::Ac { .. }
                | Form::Swapgs
                | Form::Atomic { .. }
        )
    }
}

/// See [`Form::flags_effect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FlagsEffect {
    /// Sets all six arithmetic flags, reading none, and cannot fault.
    Kills,
    /// Leaves the flags alone and cannot fault or leave the region.
    Ignores,
    /// Anything else: may read the flags, fault, leave or run through the
    /// interpreter.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FpOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CountKind {
    Tz,
    Lz,
    Pop,
}

/// BLSI, BLSMSK, BLSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BlsKind {
    /// BLSI: the lowest set bit.
    I,
    /// BLSMSK: the bits up to the lowest set bit.
    Msk,
    /// BLSR: the lowest set bit cleared.
    R,
}

/// The VEX-encoded AVX/AVX2 forms. `wide` is VEX.256 (YMM: bits 127:0 in
/// the XMM register, bits 255:128 in `ymm_hi`); a VEX.128 form that
/// writes a vector register zeroes its bits 255:128. A memory operand is
/// 16 or 32 bytes (the element for a broadcast, 4 or 8 for VMOVD/VMOVQ),
/// misaligned unless `aligned`, found in the TLB inline; anything else
/// takes the slow path.
#[derive(Clone, Copy, Debug)]
pub(super) enum Avx {
    /// `dst = src1 op src2` on each 128-bit half (VPSHUFD reads `src2`
    /// only).
    Op { op: VecOp, dst: u8, src1: u8, src2: VecSrc, wide: bool },
    /// VMOVDQA/VMOVDQU/VMOVAPS/VMOVUPS/VMOVAPD/VMOVUPD, VLDDQU, VMOVNTDQA
    /// (loads) and VMOVNTDQ/VMOVNTPS/VMOVNTPD (stores).
    Mov { dst: VecSrc, src: VecSrc, wide: bool, aligned: bool },
    /// VMOVD/VMOVQ between XMM registers and memory (`width` 4 or 8): a
    /// register destination is zero-extended to 256 bits.
    Scalar { dst: VecSrc, src: VecSrc, width: u8 },
    /// VMOVD/VMOVQ xmm, r32/r64 (zero-extended to 256 bits).
    ToVec { dst: u8, src: Reg },
    /// VMOVD/VMOVQ r32/r64, xmm.
    FromVec { dst: Reg, src: u8 },
    /// VPMOVMSKB r32/r64, xmm/ymm: 16 or 32 bits.
    MovMsk { dst: Reg, src: u8, wide: bool },
    /// VPBROADCASTB/W/D/Q, VBROADCASTSS/SD: the low `lane`-byte element of
    /// an XMM register or memory in every element.
    Broadcast { lane: u8, dst: u8, src: VecSrc, wide: bool },
    /// VPTEST: ZF and CF from the operands, the other four flags cleared.
    Test { a: u8, b: VecSrc, wide: bool },
    /// VZEROUPPER: bits 255:128 of YMM0-15 (YMM0-7 outside 64-bit code)
    /// zeroed.
    ZeroUpper,
    /// VMOVLPS/VMOVLPD/VMOVHPS/VMOVHPD xmm, xmm, m64 and VMOVHLPS/VMOVLHPS:
    /// the destination's low and high quadwords, each a quadword of a
    /// register or the 8-byte memory operand; bits 255:128 zeroed.
    Quads { dst: u8, lo: Quad, hi: Quad },
    /// VMOVLPS/VMOVLPD (`high` false) and VMOVHPS/VMOVHPD m64, xmm: one
    /// quadword of the register to memory.
    StoreQuad { src: u8, high: bool },
    /// VPCLMULQDQ xmm, xmm, xmm/m128, imm8 (VEX.128): PCLMULQDQ of `src1`
    /// and `src2` into `dst`, bits 255:128 zeroed. Needs the model's
    /// PCLMULQDQ as well ([`Form::needs_crypto`]).
    Clmul { dst: u8, src1: u8, src2: VecSrc, imm: u8 },
}

/// A quadword operand of [`Avx::Quads`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Quad {
    /// The upper (`high`) or lower quadword of XMM register `x`.
    Xmm { x: u8, high: bool },
    /// The instruction's 8-byte memory operand.
    Mem,
}

/// Packed operations on an XMM register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VecOp {
    /// PCMPEQB/W/D(/Q): lanes of this many bytes.
    CmpEq(u8),
    /// PCMPGTB/W/D(/Q): signed, lanes of this many bytes.
    CmpGt(u8),
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
    /// SHUFPS with its immediate: two dwords of the destination, then two
    /// of the source.
    ShufPs(u8),
    /// SHUFPD with its immediate: a quadword of the destination, then one
    /// of the source.
    ShufPd(u8),
    /// PSLLW/D/Q, PSRLW/D/Q, PSRAW/D by an immediate count: lanes of
    /// `lane` bytes of the destination (the source is unused).
    ShiftImm {
        kind: ShiftKind,
        lane: u8,
        count: u8,
    },
    /// PSLLDQ (`left`) and PSRLDQ: the whole register shifted by `count`
    /// bytes, zeros shifted in (the source is unused).
    ByteShift {
        left: bool,
        count: u8,
    },
}

/// The direction and fill of a packed shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ShiftKind {
    Left,
    RightLogical,
    RightArith,
}

/// An XMM operand: a register or the 16-byte memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VecSrc {
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
        C::Pcmpgtb_xmm_xmmm128 => VecOp::CmpGt(1),
        C::Pcmpgtw_xmm_xmmm128 => VecOp::CmpGt(2),
        C::Pcmpgtd_xmm_xmmm128 => VecOp::CmpGt(4),
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
        C::Shufps_xmm_xmmm128_imm8 => VecOp::ShufPs(insn.immediate8()),
        C::Shufpd_xmm_xmmm128_imm8 => VecOp::ShufPd(insn.immediate8()),
        C::Psllw_xmm_imm8
        | C::Pslld_xmm_imm8
        | C::Psllq_xmm_imm8
        | C::Psrlw_xmm_imm8
        | C::Psrld_xmm_imm8
        | C::Psrlq_xmm_imm8
        | C::Psraw_xmm_imm8
        | C::Psrad_xmm_imm8 => {
            let (kind, lane) = match insn.code() {
                C::Psllw_xmm_imm8 => (ShiftKind::Left, 2),
                C::Pslld_xmm_imm8 => (ShiftKind::Left, 4),
                C::Psllq_xmm_imm8 => (ShiftKind::Left, 8),
                C::Psrlw_xmm_imm8 => (ShiftKind::RightLogical, 2),
                C::Psrld_xmm_imm8 => (ShiftKind::RightLogical, 4),
                C::Psrlq_xmm_imm8 => (ShiftKind::RightLogical, 8),
                C::Psraw_xmm_imm8 => (ShiftKind::RightArith, 2),
                _ => (ShiftKind::RightArith, 4),
            };
            let dst = xmm(insn.op0_register())?;
            let op = VecOp::ShiftImm { kind, lane, count: insn.immediate8() };
            return Some(Form::Vec { op, dst, src: VecSrc::Xmm(dst) });
        }
        C::Pslldq_xmm_imm8 | C::Psrldq_xmm_imm8 => {
            let dst = xmm(insn.op0_register())?;
            let op = VecOp::ByteShift { left: insn.code() == C::Pslldq_xmm_imm8, count: insn.immediate8() };
            return Some(Form::Vec { op, dst, src: VecSrc::Xmm(dst) });
        }
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
            return Some(Form::VecScalar { dst, src, width, merge, high: false });
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
        // With memory: MOVSS's and MOVQ's loads (the rest of the register
        // zeroed) and stores (the low lane).
        C::Movd_xmm_rm32 | C::Movq_xmm_rm64 => {
            let width = if insn.code() == C::Movd_xmm_rm32 { 4 } else { 8 };
            let dst = VecSrc::Xmm(xmm(insn.op0_register())?);
            return Some(Form::VecScalar {
                dst,
                src: scalar_operand(insn, 1, bits)?,
                width,
                merge: false,
                high: false,
            });
        }
        C::Movd_rm32_xmm | C::Movq_rm64_xmm => {
            let width = if insn.code() == C::Movd_rm32_xmm { 4 } else { 8 };
            let src = VecSrc::Xmm(xmm(insn.op1_register())?);
            return Some(Form::VecScalar {
                dst: scalar_operand(insn, 0, bits)?,
                src,
                width,
                merge: false,
                high: false,
            });
        }
        C::Movlps_xmm_m64 | C::Movlpd_xmm_m64 | C::Movhps_xmm_m64 | C::Movhpd_xmm_m64 => {
            let high = matches!(insn.code(), C::Movhps_xmm_m64 | C::Movhpd_xmm_m64);
            let dst = VecSrc::Xmm(xmm(insn.op0_register())?);
            let VecSrc::Mem = scalar_operand(insn, 1, bits)? else { return None };
            return Some(Form::VecScalar { dst, src: VecSrc::Mem, width: 8, merge: true, high });
        }
        C::Movlps_m64_xmm | C::Movlpd_m64_xmm | C::Movhps_m64_xmm | C::Movhpd_m64_xmm => {
            let high = matches!(insn.code(), C::Movhps_m64_xmm | C::Movhpd_m64_xmm);
            let src = VecSrc::Xmm(xmm(insn.op1_register())?);
            let VecSrc::Mem = scalar_operand(insn, 0, bits)? else { return None };
            return Some(Form::VecScalar { dst: VecSrc::Mem, src, width: 8, merge: true, high });
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
        C::Pcmpestri_xmm_xmmm128_imm8 | C::Pcmpestri64_xmm_xmmm128_imm8 => {
            let VecSrc::Xmm(a) = src(0)? else { return None };
            let wide = insn.code() == C::Pcmpestri64_xmm_xmmm128_imm8;
            return Some(Form::Pcmpestri { a, b: src(1)?, imm: insn.immediate8(), wide });
        }
        C::Movhlps_xmm_xmm | C::Movlhps_xmm_xmm => {
            let (dst, src) = (xmm(insn.op0_register())?, xmm(insn.op1_register())?);
            return Some(Form::MovHalves { dst, src, from_high: insn.code() == C::Movhlps_xmm_xmm });
        }
        C::Pclmulqdq_xmm_xmmm128_imm8 => {
            let VecSrc::Xmm(dst) = src(0)? else { return None };
            return Some(Form::Pclmul { dst, src: src(1)?, imm: insn.immediate8() });
        }
        _ => return None,
    };
    let VecSrc::Xmm(dst) = src(0)? else { return None };
    Some(Form::Vec { op, dst, src: src(1)? })
}

/// An XMM or YMM register: its number and whether it is a YMM register.
fn vreg(r: Register) -> Option<(u8, bool)> {
    if r.is_xmm() || r.is_ymm() {
        Some(((r.number() & 15) as u8, r.is_ymm()))
    } else {
        None
    }
}

/// The VEX-encoded AVX/AVX2 forms ([`Avx`]), decided from the mnemonic and
/// the operands (iced-x86 decodes a VEX.L or VEX.vvvv the instruction does
/// not take as an invalid instruction, which never gets here).
fn classify_avx(insn: &Instruction, bits: u32) -> Option<Avx> {
    use Mnemonic as M;
    if insn.encoding() != iced_x86::EncodingKind::VEX {
        return None;
    }
    // A memory operand of `size` bytes the inline path can address (in
    // 32-bit code: flat DS, ES and SS).
    let mem = |size: usize| {
        addr_ok(insn, bits)
            && insn.memory_size().size() == size
            && (bits == 64 || !matches!(cpu::ops::mem_seg(insn), sreg::FS | sreg::GS | sreg::CS))
    };
    // Operand `i` as a vector register of the width `wide`, or memory of
    // `size` bytes.
    let operand = |i: u32, wide: bool, size: usize| -> Option<VecSrc> {
        match insn.op_kind(i) {
            OpKind::Register => match vreg(insn.op_register(i))? {
                (x, w) if w == wide => Some(VecSrc::Xmm(x)),
                _ => None,
            },
            OpKind::Memory if mem(size) => Some(VecSrc::Mem),
            _ => None,
        }
    };
    let full = |wide: bool| if wide { 32 } else { 16 };
    let m = insn.mnemonic();
    let op = match m {
        M::Vpcmpeqb => VecOp::CmpEq(1),
        M::Vpcmpeqw => VecOp::CmpEq(2),
        M::Vpcmpeqd => VecOp::CmpEq(4),
        M::Vpcmpeqq => VecOp::CmpEq(8),
        M::Vpcmpgtb => VecOp::CmpGt(1),
        M::Vpcmpgtw => VecOp::CmpGt(2),
        M::Vpcmpgtd => VecOp::CmpGt(4),
        M::Vpcmpgtq => VecOp::CmpGt(8),
        M::Vpaddb => VecOp::Add(1),
        M::Vpaddw => VecOp::Add(2),
        M::Vpaddd => VecOp::Add(4),
        M::Vpaddq => VecOp::Add(8),
        M::Vpsubb => VecOp::Sub(1),
        M::Vpsubw => VecOp::Sub(2),
        M::Vpsubd => VecOp::Sub(4),
        M::Vpsubq => VecOp::Sub(8),
        M::Vpxor | M::Vxorps | M::Vxorpd => VecOp::Xor,
        M::Vpor | M::Vorps | M::Vorpd => VecOp::Or,
        M::Vpand | M::Vandps | M::Vandpd => VecOp::And,
        M::Vpandn | M::Vandnps | M::Vandnpd => VecOp::AndNot,
        M::Vpminub => VecOp::MinUb,
        M::Vpmaxub => VecOp::MaxUb,
        M::Vpshufb => VecOp::Shuffle,
        M::Vpunpcklbw => VecOp::UnpackLo(1),
        M::Vpunpcklwd => VecOp::UnpackLo(2),
        M::Vpunpckldq => VecOp::UnpackLo(4),
        M::Vpunpcklqdq => VecOp::UnpackLo(8),
        M::Vpunpckhbw => VecOp::UnpackHi(1),
        M::Vpunpckhwd => VecOp::UnpackHi(2),
        M::Vpunpckhdq => VecOp::UnpackHi(4),
        M::Vpunpckhqdq => VecOp::UnpackHi(8),
        M::Vpshufd if insn.op_count() == 3 && insn.op2_kind() == OpKind::Immediate8 => {
            let (dst, wide) = vreg(insn.op0_register())?;
            let src2 = operand(1, wide, full(wide))?;
            return Some(Avx::Op { op: VecOp::ShufD(insn.immediate8()), dst, src1: dst, src2, wide });
        }
        M::Vmovdqa
        | M::Vmovdqu
        | M::Vmovaps
        | M::Vmovups
        | M::Vmovapd
        | M::Vmovupd
        | M::Vlddqu
        | M::Vmovntdqa
        | M::Vmovntdq
        | M::Vmovntps
        | M::Vmovntpd
            if insn.op_count() == 2 =>
        {
            let r = if insn.op0_kind() == OpKind::Register { insn.op0_register() } else { insn.op1_register() };
            let (_, wide) = vreg(r)?;
            let (dst, src) = (operand(0, wide, full(wide))?, operand(1, wide, full(wide))?);
            let aligned = matches!(
                m,
                M::Vmovdqa | M::Vmovaps | M::Vmovapd | M::Vmovntdqa | M::Vmovntdq | M::Vmovntps | M::Vmovntpd
            );
            return Some(Avx::Mov { dst, src, wide, aligned });
        }
        M::Vmovd | M::Vmovq if insn.op_count() == 2 => {
            let width = if m == M::Vmovd { 4 } else { 8 };
            let gpr = |i: u32| (insn.op_kind(i) == OpKind::Register).then(|| reg(insn.op_register(i))).flatten();
            let xmm_or_mem = |i: u32| match insn.op_kind(i) {
                OpKind::Register => xmm(insn.op_register(i)).map(VecSrc::Xmm),
                OpKind::Memory if mem(width) => Some(VecSrc::Mem),
                _ => None,
            };
            return match (gpr(0), gpr(1)) {
                (Some(dst), None) => Some(Avx::FromVec { dst, src: xmm(insn.op1_register())? }),
                (None, Some(src)) => Some(Avx::ToVec { dst: xmm(insn.op0_register())?, src }),
                (None, None) => Some(Avx::Scalar { dst: xmm_or_mem(0)?, src: xmm_or_mem(1)?, width: width as u8 }),
                (Some(_), Some(_)) => None,
            };
        }
        M::Vpmovmskb if insn.op_count() == 2 && insn.op1_kind() == OpKind::Register => {
            let (src, wide) = vreg(insn.op1_register())?;
            return Some(Avx::MovMsk { dst: reg(insn.op0_register())?, src, wide });
        }
        M::Vpbroadcastb | M::Vpbroadcastw | M::Vpbroadcastd | M::Vpbroadcastq | M::Vbroadcastss | M::Vbroadcastsd
            if insn.op_count() == 2 =>
        {
            let lane = match m {
                M::Vpbroadcastb => 1,
                M::Vpbroadcastw => 2,
                M::Vpbroadcastd | M::Vbroadcastss => 4,
                _ => 8,
            };
            let (dst, wide) = vreg(insn.op0_register())?;
            let src = match insn.op1_kind() {
                OpKind::Register => VecSrc::Xmm(xmm(insn.op1_register())?),
                OpKind::Memory if mem(lane) => VecSrc::Mem,
                _ => return None,
            };
            return Some(Avx::Broadcast { lane: lane as u8, dst, src, wide });
        }
        M::Vptest if insn.op_count() == 2 => {
            let (a, wide) = vreg(insn.op0_register())?;
            return Some(Avx::Test { a, b: operand(1, wide, full(wide))?, wide });
        }
        M::Vzeroupper => return Some(Avx::ZeroUpper),
        M::Vmovlps | M::Vmovlpd | M::Vmovhps | M::Vmovhpd => {
            let high = matches!(m, M::Vmovhps | M::Vmovhpd);
            return match insn.op_count() {
                // A load: the other quadword from VEX.vvvv.
                3 if insn.op2_kind() == OpKind::Memory && mem(8) => {
                    let dst = xmm(insn.op0_register())?;
                    let keep = Quad::Xmm { x: xmm(insn.op1_register())?, high: !high };
                    let (lo, hi) = if high { (keep, Quad::Mem) } else { (Quad::Mem, keep) };
                    Some(Avx::Quads { dst, lo, hi })
                }
                2 if insn.op0_kind() == OpKind::Memory && mem(8) => {
                    Some(Avx::StoreQuad { src: xmm(insn.op1_register())?, high })
                }
                _ => None,
            };
        }
        M::Vmovhlps | M::Vmovlhps if insn.op_count() == 3 && insn.op2_kind() == OpKind::Register => {
            let dst = xmm(insn.op0_register())?;
            let (a, b) = (xmm(insn.op1_register())?, xmm(insn.op2_register())?);
            // VMOVHLPS: src2's high quadword, then src1's; VMOVLHPS: src1's
            // low quadword, then src2's.
            let (lo, hi) = if m == M::Vmovhlps {
                (Quad::Xmm { x: b, high: true }, Quad::Xmm { x: a, high: true })
            } else {
                (Quad::Xmm { x: a, high: false }, Quad::Xmm { x: b, high: false })
            };
            return Some(Avx::Quads { dst, lo, hi });
        }
        // The VEX.256 form is VPCLMULQDQ proper, which the model lacks.
        M::Vpclmulqdq if insn.code() == Code::VEX_Vpclmulqdq_xmm_xmm_xmmm128_imm8 => {
            let (dst, src1) = (xmm(insn.op0_register())?, xmm(insn.op1_register())?);
            let src2 = operand(2, false, 16)?;
            return Some(Avx::Clmul { dst, src1, src2, imm: insn.immediate8() });
        }
        _ => return None,
    };
    // The three-operand forms: dst, src1 (VEX.vvvv), src2.
    if insn.op_count() != 3 {
        return None;
    }
    let (dst, wide) = vreg(insn.op0_register())?;
    let VecSrc::Xmm(src1) = operand(1, wide, full(wide))? else { return None };
    let src2 = operand(2, wide, full(wide))?;
    Some(Avx::Op { op, dst, src1, src2, wide })
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
pub(super) fn classify(insn: &Instruction, bits: u32) -> Option<Form> {
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
            | Form::Cmpxchg { dst: Opnd::Mem, .. }
            | Form::Xadd { dst: Opnd::Mem, .. }
            | Form::Atomic { op: AtomicOp::CmpxchgWide, .. } => true,
            Form::Bt { op, dst: Opnd::Mem, .. } => op != BtOp::Test,
            _ => false,
        };
        if !rmw {
            return None;
        }
    }
    Some(form)
}

/// The translated form of a guest atomic (see `super::is_guest_atomic`)
/// when other host threads share guest memory, or `None` for the
/// interpreter's handler: MFENCE, and LOCK ADD, ADC, SUB, SBB, AND, OR,
/// XOR, INC, DEC, NEG, NOT, XADD, CMPXCHG, BTS/BTR/BTC (by an immediate or
/// a register) and XCHG on a memory operand of 1 to 8 bytes, and LOCK
/// CMPXCHG8B/16B (16B where the host has a 128-bit compare-and-swap,
/// [`cas128`]). In 32-bit code, operands in FS, GS or CS (whose base and
/// limit only the interpreter checks) stay with the interpreter.
pub(super) fn classify_atomic(insn: &Instruction, bits: u32) -> Option<Form> {
    if insn.mnemonic() == Mnemonic::Mfence {
        return Some(Form::Fence);
    }
    if insn.op0_kind() != OpKind::Memory
        || (bits == 32 && matches!(cpu::ops::mem_seg(insn), sreg::FS | sreg::GS | sreg::CS))
    {
        return None;
    }
    // (`classify` has refused a LOCK the instruction does not allow.)
    let locked = insn.has_lock_prefix();
    let (op, src, size) = match classify(insn, bits)? {
        Form::Alu { op, dst: Opnd::Mem, src, size } if !matches!(op, Alu::Cmp | Alu::Test) && locked => {
            (AtomicOp::Alu(op), src, size)
        }
        Form::IncDec { inc, dst: Opnd::Mem, size } if locked => (AtomicOp::IncDec(inc), Opnd::Imm(1), size),
        Form::Neg { dst: Opnd::Mem, size } if locked => (AtomicOp::Neg, Opnd::Imm(0), size),
        Form::Not { dst: Opnd::Mem, size } if locked => (AtomicOp::Not, Opnd::Imm(0), size),
        Form::Xadd { dst: Opnd::Mem, src, size } if locked => (AtomicOp::Xadd, Opnd::Reg(src), size),
        Form::Xchg { dst: Opnd::Mem, src, size } => (AtomicOp::Xchg, Opnd::Reg(src), size),
        Form::Cmpxchg { dst: Opnd::Mem, src, size } if locked => (AtomicOp::Cmpxchg, Opnd::Reg(src), size),
        f @ Form::Atomic { op: AtomicOp::CmpxchgWide, .. } => return Some(f),
        Form::Bt { op, dst: Opnd::Mem, src, size } if op != BtOp::Test && locked => (AtomicOp::Bt(op), src, size),
        _ => return None,
    };
    Some(Form::Atomic { op, src, size })
}

/// Whether CMPXCHG16B can be one host compare-and-swap of 128 bits in
/// compiled code: Cranelift lowers `atomic_cas` of I128 on x86-64 hosts
/// with CMPXCHG16B only (its AArch64 back end takes 8 to 64 bits), and the
/// code generator is configured for the host it runs on.
pub(super) fn cas128() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("cmpxchg16b")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The mask of the memory operand's address size, where the address of a
/// bit string's unit wraps (as the interpreter's `cpu::ops::bits::addr_mask`,
/// in code of `bits` bits).
pub(super) fn bit_string_mask(insn: &Instruction, bits: u32) -> u64 {
    let base = insn.memory_base();
    let size = if base != Register::None && base != Register::RIP && base != Register::EIP {
        base.size()
    } else if base == Register::EIP {
        4
    } else if insn.memory_index() != Register::None {
        insn.memory_index().size()
    } else {
        match insn.memory_displ_size() {
            s @ (2 | 4 | 8) => s as usize,
            _ => bits as usize / 8,
        }
    };
    match size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn classify_any(insn: &Instruction, bits: u32) -> Option<Form> {
    // Mandatory F3/F2 prefixes are part of an SSE opcode.
    if let Some(f) = classify_vec(insn, bits) {
        return Some(f);
    }
    if let Some(a) = classify_avx(insn, bits) {
        return Some(Form::Avx(a));
    }
    // CRC32's F2 is a mandatory prefix, not REPNE.
    if insn.mnemonic() == Mnemonic::Crc32 {
        return classify_crc32(insn, bits);
    }
    // ENDBR is a hint: no architectural effect here. PAUSE goes to the
    // interpreter's handler, which gives the host core away now and then.
    if matches!(insn.mnemonic(), Mnemonic::Endbr32 | Mnemonic::Endbr64) {
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
        // Reads of CR0, CR2, CR3 and CR4 (CR8 is the APIC's, the rest #UD):
        // writes change the mode or the TLB and stay with the interpreter.
        Mnemonic::Mov if matches!(insn.code(), Code::Mov_r64_cr | Code::Mov_r32_cr) => {
            let cr = (insn.op1_register() as usize).wrapping_sub(Register::CR0 as usize);
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            if !matches!(cr, 0 | 2 | 3 | 4) {
                return None;
            }
            Form::MovFromCr { dst, cr: cr as u8 }
        }
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
        Mnemonic::Mul | Mnemonic::Imul | Mnemonic::Div | Mnemonic::Idiv if n == 1 => {
            let src = opnd(insn, 0, bits)?;
            let size = opsize(src, insn);
            if matches!(src, Opnd::Imm(_)) || !matches!(size, 1 | 2 | 4 | 8) {
                return None;
            }
            let div = matches!(insn.mnemonic(), Mnemonic::Div | Mnemonic::Idiv);
            let signed = matches!(insn.mnemonic(), Mnemonic::Imul | Mnemonic::Idiv);
            Form::MulDiv { div, signed, src, size }
        }
        Mnemonic::Rdpkru => Form::Rdpkru,
        Mnemonic::Xchg | Mnemonic::Cmpxchg | Mnemonic::Xadd if n == 2 => {
            let dst = opnd(insn, 0, bits)?;
            let Opnd::Reg(src) = opnd(insn, 1, bits)? else { return None };
            let size = opsize(dst, insn);
            if matches!(dst, Opnd::Imm(_)) || size != src.size {
                return None;
            }
            match insn.mnemonic() {
                Mnemonic::Xchg => Form::Xchg { dst, src, size },
                Mnemonic::Cmpxchg => Form::Cmpxchg { dst, src, size },
                _ => Form::Xadd { dst, src, size },
            }
        }
        Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b if n == 1 => {
            // One compare-and-swap of the whole operand, locked or not (an
            // unlocked one is atomic too, which no processor can tell). In
            // 32-bit code an FS or GS operand (per-CPU data) stays a plain
            // fallback: the inline path could only take its slow path.
            let size = if insn.mnemonic() == Mnemonic::Cmpxchg16b { 16 } else { 8 };
            if insn.op0_kind() != OpKind::Memory
                || !addr_ok(insn, bits)
                || (bits == 32 && matches!(cpu::ops::mem_seg(insn), sreg::FS | sreg::GS | sreg::CS))
                || (size == 16 && !cas128())
            {
                return None;
            }
            Form::Atomic { op: AtomicOp::CmpxchgWide, src: Opnd::Imm(0), size }
        }
        Mnemonic::Bzhi | Mnemonic::Sarx | Mnemonic::Shlx | Mnemonic::Shrx if n == 3 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let src = opnd(insn, 1, bits)?;
            let Opnd::Reg(third) = opnd(insn, 2, bits)? else { return None };
            if dst.size < 4 || matches!(src, Opnd::Imm(_)) || opsize(src, insn) != dst.size || third.size != dst.size {
                return None;
            }
            let op = match insn.mnemonic() {
                Mnemonic::Bzhi => return Some(Form::Bzhi { dst, src, index: third }),
                Mnemonic::Sarx => Shift::Sar,
                Mnemonic::Shlx => Shift::Shl,
                _ => Shift::Shr,
            };
            Form::ShiftX { op, dst, src, count: third }
        }
        Mnemonic::Rorx if n == 3 && insn.op2_kind() == OpKind::Immediate8 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let src = opnd(insn, 1, bits)?;
            if dst.size < 4 || matches!(src, Opnd::Imm(_)) || opsize(src, insn) != dst.size {
                return None;
            }
            Form::Rorx { dst, src, count: u32::from(insn.immediate8()) & (dst.size * 8 - 1) }
        }
        Mnemonic::Blsi | Mnemonic::Blsmsk | Mnemonic::Blsr if n == 2 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let src = opnd(insn, 1, bits)?;
            if dst.size < 4 || matches!(src, Opnd::Imm(_)) || opsize(src, insn) != dst.size {
                return None;
            }
            let kind = match insn.mnemonic() {
                Mnemonic::Blsi => BlsKind::I,
                Mnemonic::Blsmsk => BlsKind::Msk,
                _ => BlsKind::R,
            };
            Form::Bls { kind, dst, src }
        }
        Mnemonic::Andn if n == 3 => {
            let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
            let Opnd::Reg(src1) = opnd(insn, 1, bits)? else { return None };
            let src2 = opnd(insn, 2, bits)?;
            if dst.size < 4 || matches!(src2, Opnd::Imm(_)) || opsize(src2, insn) != dst.size || src1.size != dst.size {
                return None;
            }
            Form::Andn { dst, src1, src2 }
        }
        Mnemonic::Movbe if n == 2 => {
            let dst = opnd(insn, 0, bits)?;
            let src = opnd(insn, 1, bits)?;
            let size = opsize(dst, insn);
            match (dst, src) {
                (Opnd::Reg(r), Opnd::Mem) | (Opnd::Mem, Opnd::Reg(r))
                    if r.size >= 2 && opsize(Opnd::Mem, insn) == r.size => {}
                _ => return None,
            }
            Form::Movbe { dst, src, size }
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
            match (dst, src) {
                (Opnd::Reg(_) | Opnd::Mem, Opnd::Reg(r)) if r.size == size => {}
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

/// CRC32 r32/r64, r/m8/16/32/64 ([`Form::Crc32`]).
fn classify_crc32(insn: &Instruction, bits: u32) -> Option<Form> {
    let size = match insn.code() {
        Code::Crc32_r32_rm8 | Code::Crc32_r64_rm8 => 1,
        Code::Crc32_r32_rm16 => 2,
        Code::Crc32_r32_rm32 => 4,
        Code::Crc32_r64_rm64 => 8,
        _ => return None,
    };
    let Opnd::Reg(dst) = opnd(insn, 0, bits)? else { return None };
    let src = opnd(insn, 1, bits)?;
    if dst.size < 4 || matches!(src, Opnd::Imm(_)) || opsize(src, insn) != size {
        return None;
    }
    Some(Form::Crc32 { dst, src, size })
}

/// Whether the instruction may write memory through its first operand or
/// the stack: its store's slow path runs it through the interpreter.
pub(super) fn writes_memory(insn: &Instruction) -> bool {
    insn.op0_kind() == OpKind::Memory || insn.stack_pointer_increment() < 0
}

#[cfg(test)]
mod tests {
    use iced_x86::{Decoder, DecoderOptions, Instruction};

    use super::*;

    const IP: u64 = 0x40_1000;

    /// The one instruction of `bytes`, decoded as `bits`-bit code at [`IP`].
    fn decode_with(bits: u32, bytes: &[u8], options: u32) -> Instruction {
        let insn = Decoder::with_ip(bits, bytes, IP, options).decode();
        assert!(!insn.is_invalid(), "{bytes:02x?} does not decode");
        assert_eq!(insn.len(), bytes.len(), "{bytes:02x?} is not one instruction");
        insn
    }

    fn decode(bits: u32, bytes: &[u8]) -> Instruction {
        decode_with(bits, bytes, DecoderOptions::NONE)
    }

    #[test]
    fn add_of_two_registers_is_an_alu_form_that_sets_every_flag() {
        // ADD RAX, RBX
        let insn = decode(64, &[0x48, 0x01, 0xd8]);
        let f = classify(&insn, 64).expect("ADD of registers is translated");
        match f {
            Form::Alu { op: Alu::Add, dst: Opnd::Reg(d), src: Opnd::Reg(s), size: 8 } => {
                assert_eq!((d.idx, d.size, d.high), (0, 8, false));
                assert_eq!((s.idx, s.size, s.high), (3, 8, false));
            }
            other => panic!("ADD RAX, RBX: {other:?}"),
        }
        assert_eq!(f.flags_effect(), FlagsEffect::Kills);
        assert!(!f.may_slow());
        assert!(!writes_memory(&insn));
    }

    #[test]
    fn add_to_memory_is_an_alu_form_that_stores() {
        // ADD DWORD PTR [RSI], 5
        let insn = decode(64, &[0x83, 0x06, 0x05]);
        let f = classify(&insn, 64).expect("ADD to memory is translated");
        assert!(matches!(f, Form::Alu { op: Alu::Add, dst: Opnd::Mem, src: Opnd::Imm(5), size: 4 }), "{f:?}");
        // The access may fault before the flags are set.
        assert_eq!(f.flags_effect(), FlagsEffect::Other);
        assert!(writes_memory(&insn));
    }

    #[test]
    fn lock_is_taken_on_a_memory_destination_only() {
        // LOCK ADD [RSI], EAX
        let f = classify(&decode(64, &[0xf0, 0x01, 0x06]), 64);
        assert!(matches!(f, Some(Form::Alu { op: Alu::Add, dst: Opnd::Mem, src: Opnd::Reg(_), size: 4 })), "{f:?}");
        // LOCK ADD EAX, EBX: #UD, which the interpreter raises.
        let insn = decode_with(64, &[0xf0, 0x01, 0xd8], DecoderOptions::NO_INVALID_CHECK);
        assert!(classify(&insn, 64).is_none());
    }

    #[test]
    fn guest_atomics_have_atomic_forms_or_go_to_the_interpreter() {
        // LOCK XADD [RSI], EAX
        let f = classify_atomic(&decode(64, &[0xf0, 0x0f, 0xc1, 0x06]), 64);
        assert!(matches!(f, Some(Form::Atomic { op: AtomicOp::Xadd, src: Opnd::Reg(_), size: 4 })), "{f:?}");
        assert!(f.is_some_and(|f| f.may_slow()));
        // XCHG [RSI], RAX: locked without the prefix.
        let f = classify_atomic(&decode(64, &[0x48, 0x87, 0x06]), 64);
        assert!(matches!(f, Some(Form::Atomic { op: AtomicOp::Xchg, size: 8, .. })), "{f:?}");
        // LOCK BTS DWORD PTR [RSI], 9
        let f = classify_atomic(&decode(64, &[0xf0, 0x0f, 0xba, 0x2e, 0x09]), 64);
        assert!(matches!(f, Some(Form::Atomic { op: AtomicOp::Bt(BtOp::Set), src: Opnd::Imm(9), size: 4 })), "{f:?}");
        // MFENCE
        let f = classify_atomic(&decode(64, &[0x0f, 0xae, 0xf0]), 64);
        assert!(matches!(f, Some(Form::Fence)), "{f:?}");
        assert_eq!(f.map(|f| f.flags_effect()), Some(FlagsEffect::Ignores));
        // LOCK ADC [RSI], EAX; LOCK NEG QWORD PTR [RSI]; LOCK BTS [RSI],
        // EAX (a bit string): CAS loops and a bit string's unit.
        let f = classify_atomic(&decode(64, &[0xf0, 0x11, 0x06]), 64);
        assert!(matches!(f, Some(Form::Atomic { op: AtomicOp::Alu(Alu::Adc), size: 4, .. })), "{f:?}");
        let f = classify_atomic(&decode(64, &[0xf0, 0x48, 0xf7, 0x1e]), 64);
        assert!(matches!(f, Some(Form::Atomic { op: AtomicOp::Neg, size: 8, .. })), "{f:?}");
        let f = classify_atomic(&decode(64, &[0xf0, 0x0f, 0xab, 0x06]), 64);
        assert!(matches!(f, Some(Form::Atomic { op: AtomicOp::Bt(BtOp::Set), src: Opnd::Reg(_), size: 4 })), "{f:?}");
        // LOCK CMPXCHG8B [RSI], and CMPXCHG16B [RSI] with or without LOCK
        // where the host has a 128-bit compare-and-swap.
        let f = classify_atomic(&decode(64, &[0xf0, 0x0f, 0xc7, 0x0e]), 64);
        assert!(matches!(f, Some(Form::Atomic { op: AtomicOp::CmpxchgWide, size: 8, .. })), "{f:?}");
        for bytes in [&[0xf0, 0x48, 0x0f, 0xc7, 0x0e][..], &[0x48, 0x0f, 0xc7, 0x0e]] {
            let f = classify(&decode(64, bytes), 64);
            assert_eq!(matches!(f, Some(Form::Atomic { op: AtomicOp::CmpxchgWide, size: 16, .. })), cas128(), "{f:?}");
        }
        // LOCK ADD FS:[ESI], EAX and CMPXCHG8B FS:[ESI] in 32-bit code:
        // the interpreter.
        assert!(classify_atomic(&decode(32, &[0x64, 0xf0, 0x01, 0x06]), 32).is_none());
        assert!(classify(&decode(32, &[0x64, 0x0f, 0xc7, 0x0e]), 32).is_none());
        // XADD without LOCK is not a guest atomic: its plain form; LOCK
        // XADD EAX, EBX raises #UD: no form.
        assert!(classify_atomic(&decode(64, &[0x0f, 0xc1, 0x06]), 64).is_none());
        let f = classify(&decode(64, &[0x0f, 0xc1, 0x06]), 64);
        assert!(matches!(f, Some(Form::Xadd { dst: Opnd::Mem, size: 4, .. })), "{f:?}");
        let insn = decode_with(64, &[0xf0, 0x0f, 0xc1, 0xd8], DecoderOptions::NO_INVALID_CHECK);
        assert!(classify_atomic(&insn, 64).is_none());
        assert!(classify(&insn, 64).is_none());
    }

    #[test]
    fn a_bit_strings_address_wraps_in_the_address_size() {
        // BT [RSI], RAX; BT [ESI], EAX (67h); BT [RIP+0], EAX; BT [EDI] in
        // 32-bit code.
        assert_eq!(bit_string_mask(&decode(64, &[0x48, 0x0f, 0xa3, 0x06]), 64), u64::MAX);
        assert_eq!(bit_string_mask(&decode(64, &[0x67, 0x0f, 0xa3, 0x06]), 64), 0xffff_ffff);
        assert_eq!(bit_string_mask(&decode(64, &[0x0f, 0xa3, 0x05, 0, 0, 0, 0]), 64), u64::MAX);
        assert_eq!(bit_string_mask(&decode(32, &[0x0f, 0xa3, 0x07]), 32), 0xffff_ffff);
        let f = classify(&decode(64, &[0x48, 0x0f, 0xa3, 0x06]), 64);
        assert!(matches!(f, Some(Form::Bt { op: BtOp::Test, dst: Opnd::Mem, src: Opnd::Reg(_), size: 8 })), "{f:?}");
    }

    #[test]
    fn a_byte_register_write_to_ah_is_a_high_byte() {
        // MOV AH, BL
        let f = classify(&decode(64, &[0x88, 0xdc]), 64);
        match f {
            Some(Form::Mov { dst: Opnd::Reg(d), src: Opnd::Reg(s), size: 1 }) => {
                assert_eq!((d.idx, d.size, d.high), (0, 1, true));
                assert_eq!((s.idx, s.size, s.high), (3, 1, false));
            }
            other => panic!("MOV AH, BL: {other:?}"),
        }
    }

    #[test]
    fn a_conditional_jump_has_its_condition_and_target() {
        // JE +5 (short), JNE +0x100 (near)
        let f = classify(&decode(64, &[0x74, 0x05]), 64);
        assert!(matches!(f, Some(Form::Jcc { cc: 4, target }) if target == IP + 2 + 5), "{f:?}");
        let f = classify(&decode(64, &[0x0f, 0x85, 0x00, 0x01, 0x00, 0x00]), 64);
        assert!(matches!(f, Some(Form::Jcc { cc: 5, target }) if target == IP + 6 + 0x100), "{f:?}");
        assert!(!writes_memory(&decode(64, &[0x74, 0x05])));
    }

    #[test]
    fn cpuid_and_port_input_go_to_the_interpreter() {
        // CPUID
        assert!(classify(&decode(64, &[0x0f, 0xa2]), 64).is_none());
        assert!(classify(&decode(32, &[0x0f, 0xa2]), 32).is_none());
        // IN AL, DX
        assert!(classify(&decode(64, &[0xec]), 64).is_none());
    }

    #[test]
    fn vex_forms_have_their_width_and_operands_and_need_avx() {
        // VPCMPEQB YMM1, YMM2, [RSI]
        let f = classify(&decode(64, &[0xc5, 0xed, 0x74, 0x0e]), 64);
        assert!(
            matches!(
                f,
                Some(Form::Avx(Avx::Op { op: VecOp::CmpEq(1), dst: 1, src1: 2, src2: VecSrc::Mem, wide: true }))
            ),
            "{f:?}"
        );
        assert!(f.is_some_and(|f| f.may_slow() && f.needs_avx()));
        // VPXOR XMM0, XMM0, XMM0 (VEX.128)
        let f = classify(&decode(64, &[0xc5, 0xf9, 0xef, 0xc0]), 64);
        assert!(
            matches!(f, Some(Form::Avx(Avx::Op { op: VecOp::Xor, src2: VecSrc::Xmm(0), wide: false, .. }))),
            "{f:?}"
        );
        // VMOVDQU [RSI], YMM0: a store; VMOVDQA YMM0, [RSI]: aligned.
        let insn = decode(64, &[0xc5, 0xfe, 0x7f, 0x06]);
        let f = classify(&insn, 64);
        assert!(
            matches!(
                f,
                Some(Form::Avx(Avx::Mov { dst: VecSrc::Mem, src: VecSrc::Xmm(0), wide: true, aligned: false }))
            ),
            "{f:?}"
        );
        assert!(writes_memory(&insn));
        let f = classify(&decode(64, &[0xc5, 0xfd, 0x6f, 0x06]), 64);
        assert!(matches!(f, Some(Form::Avx(Avx::Mov { dst: VecSrc::Xmm(0), aligned: true, .. }))), "{f:?}");
        // VPMOVMSKB EAX, YMM1; VZEROUPPER
        let f = classify(&decode(64, &[0xc5, 0xfd, 0xd7, 0xc1]), 64);
        assert!(matches!(f, Some(Form::Avx(Avx::MovMsk { src: 1, wide: true, .. }))), "{f:?}");
        let f = classify(&decode(64, &[0xc5, 0xf8, 0x77]), 64);
        assert!(matches!(f, Some(Form::Avx(Avx::ZeroUpper))), "{f:?}");
        // VPBROADCASTB YMM0, XMM1
        let f = classify(&decode(64, &[0xc4, 0xe2, 0x7d, 0x78, 0xc1]), 64);
        assert!(
            matches!(f, Some(Form::Avx(Avx::Broadcast { lane: 1, dst: 0, src: VecSrc::Xmm(1), wide: true }))),
            "{f:?}"
        );
        // VMOVD XMM0, ESI
        let f = classify(&decode(64, &[0xc5, 0xf9, 0x6e, 0xc6]), 64);
        assert!(matches!(f, Some(Form::Avx(Avx::ToVec { dst: 0, .. }))), "{f:?}");
        // In 32-bit code, a memory operand in FS stays with the interpreter.
        assert!(classify(&decode(32, &[0x64, 0xc5, 0xed, 0x74, 0x0e]), 32).is_none());
        // VPCMPEQB YMM1, YMM2, [RSI] with LOCK: #UD in the interpreter.
        let insn = decode_with(64, &[0xf0, 0xc5, 0xed, 0x74, 0x0e], DecoderOptions::NO_INVALID_CHECK);
        assert!(classify(&insn, 64).is_none());
    }

    #[test]
    fn bmi_and_movbe_forms() {
        // BZHI EAX, EBX, ECX
        let f = classify(&decode(64, &[0xc4, 0xe2, 0x70, 0xf5, 0xc3]), 64);
        match f {
            Some(Form::Bzhi { dst, src: Opnd::Reg(s), index }) => {
                assert_eq!((dst.idx, dst.size, s.idx, index.idx), (0, 4, 3, 1));
            }
            other => panic!("BZHI EAX, EBX, ECX: {other:?}"),
        }
        assert!(f.is_some_and(|f| !f.needs_avx() && !f.may_slow()));
        // MOVBE EAX, [RSI]; MOVBE [RSI], RAX
        let f = classify(&decode(64, &[0x0f, 0x38, 0xf0, 0x06]), 64);
        assert!(matches!(f, Some(Form::Movbe { dst: Opnd::Reg(_), src: Opnd::Mem, size: 4 })), "{f:?}");
        let f = classify(&decode(64, &[0x48, 0x0f, 0x38, 0xf1, 0x06]), 64);
        assert!(matches!(f, Some(Form::Movbe { dst: Opnd::Mem, src: Opnd::Reg(_), size: 8 })), "{f:?}");
        // SARX RAX, RBX, RCX; BLSR EAX, EBX
        let f = classify(&decode(64, &[0xc4, 0xe2, 0xf2, 0xf7, 0xc3]), 64);
        assert!(matches!(f, Some(Form::ShiftX { op: Shift::Sar, .. })), "{f:?}");
        let f = classify(&decode(64, &[0xc4, 0xe2, 0x78, 0xf3, 0xcb]), 64);
        assert!(matches!(f, Some(Form::Bls { kind: BlsKind::R, .. })), "{f:?}");
    }

    /// The one instruction `f` assembles, decoded as `bits`-bit code.
    fn asm(
        bits: u32,
        f: impl FnOnce(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>,
    ) -> Instruction {
        let mut a = iced_x86::code_asm::CodeAssembler::new(bits).unwrap();
        f(&mut a).unwrap();
        decode(bits, &a.assemble(IP).unwrap())
    }

    #[test]
    fn crc32_has_a_form_for_each_size_that_ignores_the_flags() {
        use iced_x86::code_asm::*;
        // CRC32 EAX, BYTE PTR [RSI]: F2 is its opcode, not REPNE.
        let insn = decode(64, &[0xf2, 0x0f, 0x38, 0xf0, 0x06]);
        let f = classify(&insn, 64);
        assert!(matches!(f, Some(Form::Crc32 { dst: Reg { idx: 0, size: 4, .. }, src: Opnd::Mem, size: 1 })), "{f:?}");
        assert!(f.is_some_and(|f| !f.may_slow() && !f.needs_crypto() && f.flags_effect() == FlagsEffect::Other));
        for (insn, dst_size, size) in [
            (asm(64, |a| a.crc32(rax, rbx)), 8, 8),
            (asm(64, |a| a.crc32(rax, bl)), 8, 1),
            (asm(64, |a| a.crc32(r9d, r10w)), 4, 2),
            (asm(64, |a| a.crc32(eax, dword_ptr(rsi))), 4, 4),
        ] {
            let f = classify(&insn, 64);
            assert!(
                matches!(f, Some(Form::Crc32 { dst: Reg { size: d, .. }, size: s, .. }) if d == dst_size && s == size),
                "{f:?}"
            );
        }
        let f = classify(&asm(32, |a| a.crc32(ecx, word_ptr(esi))), 32);
        assert!(matches!(f, Some(Form::Crc32 { dst: Reg { idx: 1, size: 4, .. }, src: Opnd::Mem, size: 2 })), "{f:?}");
        // CRC32 EAX, AH; a register source leaves the flags alone.
        let f = classify(&asm(64, |a| a.crc32(eax, ah)), 64);
        assert!(matches!(f, Some(Form::Crc32 { src: Opnd::Reg(Reg { idx: 0, high: true, .. }), .. })), "{f:?}");
        assert_eq!(f.map(|f| f.flags_effect()), Some(FlagsEffect::Ignores));
        // LOCK CRC32: #UD in the interpreter.
        let insn = decode_with(64, &[0xf0, 0xf2, 0x0f, 0x38, 0xf0, 0x06], DecoderOptions::NO_INVALID_CHECK);
        assert!(classify(&insn, 64).is_none());
    }

    #[test]
    fn carry_less_multiplies_and_quadword_moves_have_their_forms() {
        use iced_x86::code_asm::*;
        let f = classify(&asm(64, |a| a.pclmulqdq(xmm1, xmm2, 0x11)), 64);
        assert!(matches!(f, Some(Form::Pclmul { dst: 1, src: VecSrc::Xmm(2), imm: 0x11 })), "{f:?}");
        assert!(f.is_some_and(|f| f.needs_crypto() && !f.needs_avx() && f.may_slow()));
        let f = classify(&asm(64, |a| a.pclmulqdq(xmm9, xmmword_ptr(rsi), 0)), 64);
        assert!(matches!(f, Some(Form::Pclmul { dst: 9, src: VecSrc::Mem, .. })), "{f:?}");
        let f = classify(&asm(64, |a| a.vpclmulqdq(xmm1, xmm2, xmmword_ptr(rsi), 0x10)), 64);
        assert!(matches!(f, Some(Form::Avx(Avx::Clmul { dst: 1, src1: 2, src2: VecSrc::Mem, imm: 0x10 }))), "{f:?}");
        assert!(f.is_some_and(|f| f.needs_crypto() && f.needs_avx()));
        // VEX.256 VPCLMULQDQ is not in the model: the interpreter's #UD.
        assert!(classify(&asm(64, |a| a.vpclmulqdq(ymm1, ymm2, ymm3, 0)), 64).is_none());
        let f = classify(&asm(64, |a| a.movhlps(xmm1, xmm2)), 64);
        assert!(matches!(f, Some(Form::MovHalves { dst: 1, src: 2, from_high: true })), "{f:?}");
        let f = classify(&asm(64, |a| a.movlhps(xmm3, xmm3)), 64);
        assert!(matches!(f, Some(Form::MovHalves { dst: 3, src: 3, from_high: false })), "{f:?}");
        let f = classify(&asm(64, |a| a.vmovhlps(xmm1, xmm2, xmm3)), 64);
        let (b, c) = (Quad::Xmm { x: 3, high: true }, Quad::Xmm { x: 2, high: true });
        assert!(matches!(f, Some(Form::Avx(Avx::Quads { dst: 1, lo, hi })) if lo == b && hi == c), "{f:?}");
        let f = classify(&asm(64, |a| a.vmovhps_3(xmm1, xmm2, qword_ptr(rsi))), 64);
        let keep = Quad::Xmm { x: 2, high: false };
        assert!(matches!(f, Some(Form::Avx(Avx::Quads { lo, hi: Quad::Mem, .. })) if lo == keep), "{f:?}");
        let insn = asm(64, |a| a.vmovlpd(qword_ptr(rsi), xmm4));
        let f = classify(&insn, 64);
        assert!(matches!(f, Some(Form::Avx(Avx::StoreQuad { src: 4, high: false }))), "{f:?}");
        assert!(writes_memory(&insn));
    }

    #[test]
    fn multiplies_and_divides_of_every_size_have_forms() {
        use iced_x86::code_asm::*;
        for (bits, insn, div, signed, size) in [
            (64, asm(64, |a| a.idiv(ecx)), true, true, 4),
            (64, asm(64, |a| a.idiv(qword_ptr(rsi))), true, true, 8),
            (64, asm(64, |a| a.idiv(bh)), true, true, 1),
            (64, asm(64, |a| a.idiv(word_ptr(rsi))), true, true, 2),
            (64, asm(64, |a| a.div(r9b)), true, false, 1),
            (64, asm(64, |a| a.div(cx)), true, false, 2),
            (64, asm(64, |a| a.div(rcx)), true, false, 8),
            (64, asm(64, |a| a.imul(rcx)), false, true, 8),
            (64, asm(64, |a| a.imul(byte_ptr(rsi))), false, true, 1),
            (64, asm(64, |a| a.mul(dx)), false, false, 2),
            (32, asm(32, |a| a.idiv(dword_ptr(esi))), true, true, 4),
        ] {
            let f = classify(&insn, bits);
            assert!(
                matches!(f, Some(Form::MulDiv { div: d, signed: s, size: z, .. }) if d == div && s == signed && z == size),
                "{insn}: {f:?}"
            );
            // A divide has a slow path (#DE); none of them leaves the
            // flags alone.
            assert!(f.is_some_and(|f| f.may_slow() == div && f.flags_effect() == FlagsEffect::Other));
        }
        // The two- and three-operand IMUL keep their form.
        assert!(matches!(classify(&asm(64, |a| a.imul_2(eax, ecx)), 64), Some(Form::Imul { .. })));
    }

    #[test]
    fn control_register_reads_rdpkru_pcmpestri_and_shuffles_have_forms() {
        use iced_x86::code_asm::*;
        for (insn, n) in [
            (asm(64, |a| a.mov(rax, cr0)), 0),
            (asm(64, |a| a.mov(r9, cr2)), 2),
            (asm(64, |a| a.mov(rdx, cr3)), 3),
            (asm(32, |a| a.mov(ecx, cr4)), 4),
        ] {
            let f = classify(&insn, if insn.code() == Code::Mov_r32_cr { 32 } else { 64 });
            assert!(matches!(f, Some(Form::MovFromCr { cr, .. }) if cr == n), "{insn}: {f:?}");
            assert!(f.is_some_and(|f| f.may_slow()));
        }
        // CR8 (the APIC's), writes of control registers, debug registers and
        // segment registers: the interpreter.
        assert!(classify(&asm(64, |a| a.mov(rax, cr8)), 64).is_none());
        assert!(classify(&asm(64, |a| a.mov(cr3, rax)), 64).is_none());
        assert!(classify(&asm(64, |a| a.mov(rax, dr7)), 64).is_none());
        assert!(classify(&asm(64, |a| a.mov(ds, ax)), 64).is_none());
        // MOV with a 64-bit absolute address (A1, A3) is a plain MOV.
        let f = classify(&decode(64, &[0xa1, 0x10, 0, 2, 0, 0, 0, 0, 0]), 64);
        assert!(matches!(f, Some(Form::Mov { dst: Opnd::Reg(_), src: Opnd::Mem, size: 4 })), "{f:?}");
        let f = classify(&decode(64, &[0x48, 0xa3, 0x10, 0, 2, 0, 0, 0, 0, 0]), 64);
        assert!(matches!(f, Some(Form::Mov { dst: Opnd::Mem, src: Opnd::Reg(_), size: 8 })), "{f:?}");
        let f = classify(&decode(32, &[0xa1, 0x10, 0, 2, 0]), 32);
        assert!(matches!(f, Some(Form::Mov { src: Opnd::Mem, size: 4, .. })), "{f:?}");
        let f = classify(&asm(64, |a| a.rdpkru()), 64);
        assert!(matches!(f, Some(Form::Rdpkru)), "{f:?}");
        assert!(f.is_some_and(|f| f.may_slow()));
        let f = classify(&asm(64, |a| a.pcmpestri(xmm1, xmmword_ptr(rsi), 0x0c)), 64);
        assert!(matches!(f, Some(Form::Pcmpestri { a: 1, b: VecSrc::Mem, imm: 0x0c, wide: false })), "{f:?}");
        let f = classify(&asm(64, |a| a.pcmpestri64(xmm2, xmm9, 0x40)), 64);
        assert!(matches!(f, Some(Form::Pcmpestri { a: 2, b: VecSrc::Xmm(9), imm: 0x40, wide: true })), "{f:?}");
        let f = classify(&asm(64, |a| a.shufps(xmm1, xmm2, 0x1b)), 64);
        assert!(matches!(f, Some(Form::Vec { op: VecOp::ShufPs(0x1b), dst: 1, src: VecSrc::Xmm(2) })), "{f:?}");
        let f = classify(&asm(64, |a| a.shufpd(xmm3, xmmword_ptr(rsi), 2)), 64);
        assert!(matches!(f, Some(Form::Vec { op: VecOp::ShufPd(2), dst: 3, src: VecSrc::Mem })), "{f:?}");
    }

    #[test]
    fn sse_and_rep_string_forms_have_slow_paths() {
        // PXOR XMM1, XMM2
        let f = classify(&decode(64, &[0x66, 0x0f, 0xef, 0xca]), 64);
        assert!(matches!(f, Some(Form::Vec { op: VecOp::Xor, dst: 1, src: VecSrc::Xmm(2) })), "{f:?}");
        assert!(f.is_some_and(|f| f.may_slow()));
        // REP MOVSB: translated in 64-bit code only.
        let f = classify(&decode(64, &[0xf3, 0xa4]), 64);
        assert!(matches!(f, Some(Form::RepString { movs: true, size: 1 })), "{f:?}");
        assert!(classify(&decode(32, &[0xf3, 0xa4]), 32).is_none());
    }
}
