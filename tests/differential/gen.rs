//! The generator: instruction templates for every group CPL3 can reach, and
//! random sequences built from them with the iced-x86 encoder.
//!
//! Templates are found by decoding every opcode of the legacy maps (1-byte,
//! 0F, 0F38, 0F3A) under each mandatory prefix, with and without REX.W, in
//! register and memory ModRM forms, plus the VEX 0F, 0F38 and 0F3A maps
//! (BMI1/BMI2, and AVX/AVX2 with VEX.L 0 and 1).
//! That yields one decoded `Instruction` per iced `Code` and operand form. A
//! sequence instantiates templates: register operands are replaced by random
//! registers of the same class (where the encoding allows it), immediates by
//! random values, and memory operands by an address chosen in the data page
//! (base + displacement, base + index*scale + displacement, absolute,
//! RIP-relative, 32-bit address size), sometimes at a page edge, in a
//! read-only, supervisor or missing page, or non-canonical. Near branches
//! jump forward to a later instruction of the sequence (never backward, so a
//! sequence always ends). The sequence is assembled by `BlockEncoder` and
//! decoded back to check that every instruction kept its `Code`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cpu::state::{flags, reg, CpuState, F80};
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, CpuidFeature, Decoder, DecoderOptions, Encoder, FlowControl, Instruction,
    InstructionBlock, MemorySize, Mnemonic, OpKind, Register, RflagsBits,
};

use crate::machine::{self, Mode, CODE, DATA, KDATA, PAGE, RODATA};
use crate::rng::Rng;

/// Instruction groups, for generation weights and the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Alu,
    Mov,
    Flags,
    Shift,
    MulDiv,
    Bit,
    Bmi,
    Atomic,
    String,
    Stack,
    Branch,
    Bcd,
    Segment,
    System,
    Misc,
    X87,
    Mmx,
    Sse,
    Sse2,
    Sse3,
    Ssse3,
    Sse41,
    Sse42,
    Pcmpstr,
    Crc32,
    Crypto,
    Movbe,
    Xsave,
    Avx,
}

impl Group {
    pub const ALL: [Group; 29] = [
        Group::Alu,
        Group::Mov,
        Group::Flags,
        Group::Shift,
        Group::MulDiv,
        Group::Bit,
        Group::Bmi,
        Group::Atomic,
        Group::String,
        Group::Stack,
        Group::Branch,
        Group::Bcd,
        Group::Segment,
        Group::System,
        Group::Misc,
        Group::X87,
        Group::Mmx,
        Group::Sse,
        Group::Sse2,
        Group::Sse3,
        Group::Ssse3,
        Group::Sse41,
        Group::Sse42,
        Group::Pcmpstr,
        Group::Crc32,
        Group::Crypto,
        Group::Movbe,
        Group::Xsave,
        Group::Avx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Group::Alu => "alu",
            Group::Mov => "mov",
            Group::Flags => "flags",
            Group::Shift => "shift",
            Group::MulDiv => "muldiv",
            Group::Bit => "bit",
            Group::Bmi => "bmi",
            Group::Atomic => "atomic",
            Group::String => "string",
            Group::Stack => "stack",
            Group::Branch => "branch",
            Group::Bcd => "bcd",
            Group::Segment => "segment",
            Group::System => "system",
            Group::Misc => "misc",
            Group::X87 => "x87",
            Group::Mmx => "mmx",
            Group::Sse => "sse",
            Group::Sse2 => "sse2",
            Group::Sse3 => "sse3",
            Group::Ssse3 => "ssse3",
            Group::Sse41 => "sse4.1",
            Group::Sse42 => "sse4.2",
            Group::Pcmpstr => "pcmpxstrx",
            Group::Crc32 => "crc32",
            Group::Crypto => "aes/clmul/sha",
            Group::Movbe => "movbe",
            Group::Xsave => "xsave",
            Group::Avx => "avx",
        }
    }

    pub fn from_name(s: &str) -> Option<Group> {
        Group::ALL.iter().copied().find(|g| g.name() == s)
    }

    /// Groups whose sequences mostly use the FPU/SIMD state.
    fn is_fp(self) -> bool {
        matches!(
            self,
            Group::X87
                | Group::Mmx
                | Group::Sse
                | Group::Sse2
                | Group::Sse3
                | Group::Ssse3
                | Group::Sse41
                | Group::Sse42
                | Group::Pcmpstr
                | Group::Crypto
                | Group::Xsave
                | Group::Avx
        )
    }
}

/// Features whose instructions the harness generates (everything else iced
/// knows is out: AVX-512 and later, other vendors' extensions,
/// SGX/VMX/SVM...). AVX, AVX2, FMA and F16C codes the interpreter has no
/// handler for are listed as unimplemented.
const ALLOWED_FEATURES: &[CpuidFeature] = &[
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL486,
    CpuidFeature::X64,
    CpuidFeature::CMOV,
    CpuidFeature::CX8,
    CpuidFeature::CMPXCHG16B,
    CpuidFeature::FPU,
    CpuidFeature::FPU287,
    CpuidFeature::FPU387,
    CpuidFeature::MMX,
    CpuidFeature::SSE,
    CpuidFeature::SSE2,
    CpuidFeature::SSE3,
    CpuidFeature::SSSE3,
    CpuidFeature::SSE4_1,
    CpuidFeature::SSE4_2,
    CpuidFeature::POPCNT,
    CpuidFeature::LZCNT,
    CpuidFeature::BMI1,
    CpuidFeature::BMI2,
    CpuidFeature::MOVBE,
    CpuidFeature::ADX,
    CpuidFeature::CLFSH,
    CpuidFeature::CLFLUSHOPT,
    CpuidFeature::CLWB,
    CpuidFeature::AES,
    CpuidFeature::PCLMULQDQ,
    CpuidFeature::SHA,
    CpuidFeature::PAUSE,
    CpuidFeature::MULTIBYTENOP,
    CpuidFeature::PREFETCHW,
    CpuidFeature::MSR,
    CpuidFeature::INVPCID,
    CpuidFeature::SMAP,
    CpuidFeature::XSAVE,
    CpuidFeature::XSAVEOPT,
    CpuidFeature::XSAVEC,
    CpuidFeature::AVX,
    CpuidFeature::AVX2,
    CpuidFeature::FMA,
    CpuidFeature::F16C,
];

/// Instructions CPL3 can execute that the harness does not generate, each
/// with the reason. Printed in the report; nothing is left out silently.
pub fn exclusion(code: Code) -> Option<&'static str> {
    use Mnemonic::*;
    let m = code.mnemonic();
    Some(match m {
        Int | Int1 => "kvm_pvm raises #UD for INT n at CPL3 instead of delivering it (issue 5); INT1 likewise",
        Syscall | Sysenter | Sysexitq | Sysexit | Sysretq | Sysret | Iret | Iretd | Iretq | Retf => {
            "far transfers and system calls change CS/CPL: covered by unit tests, not at CPL3"
        }
        Cpuid | Rdtsc | Rdtscp | Rdpmc | Rdrand | Rdseed | Rdpid | Rdpru => {
            "result depends on the host model or on time"
        }
        Xgetbv => "kvm_pvm runs ring 3 with the host's XCR0, which XGETBV reads",
        Xsaves | Xsaves64 | Xrstors | Xrstors64 => "supervisor state: XSAVES/XRSTORS are not in the model",
        Fxsave | Fxsave64 | Fxrstor | Fxrstor64 => {
            "FXSAVE images hold FIP/FDP/FOP, which AMD saves only with an unmasked exception pending"
        }
        Fnstenv | Fstenv | Fnsave | Fsave => {
            "the stored environment holds FIP/FDP/FOP, saved differently by AMD and Intel"
        }
        Rdfsbase | Rdgsbase | Wrfsbase | Wrgsbase => {
            "kvm_pvm runs ring 3 with the host's CR4.FSGSBASE, not the guest's"
        }
        Monitor | Mwait | Monitorx | Mwaitx | Umonitor | Umwait | Tpause => {
            "CPL3 behaviour depends on host MSR settings"
        }
        F2xm1 | Fyl2x | Fyl2xp1 | Fptan | Fpatan | Fsin | Fcos | Fsincos => {
            "transcendental results are specified to about 1 ulp: they differ between vendors"
        }
        Rcpps | Rcpss | Rsqrtps | Rsqrtss | Vrcpps | Vrcpss | Vrsqrtps | Vrsqrtss => {
            "approximations whose exact bits differ between vendors"
        }
        Sgdt | Sidt | Sldt | Str | Smsw => "kvm_pvm runs ring 3 with the host's CR4.UMIP, not the guest's",
        Lfs | Lgs | Lss | Lds | Les => "loads a far pointer from memory: random selectors, covered by segment loads",
        Swapgs => "privileged, but kvm_pvm treats it specially",
        Salc => "undocumented",
        _ => return None,
    })
}

/// Codes excluded individually (aliases of a mnemonic we do generate).
pub fn code_exclusion(code: Code) -> Option<&'static str> {
    match code {
        Code::Fcom_st0_sti_DCD0
        | Code::Fcomp_st0_sti_DCD8
        | Code::Fcomp_st0_sti_DED0
        | Code::Ffreep_sti
        | Code::Fstp_sti_DFD0
        | Code::Fstp_sti_DFD8
        | Code::Fstpnce_sti
        | Code::Fxch_st0_sti_DDC8
        | Code::Fxch_st0_sti_DFC8 => {
            Some("undocumented x87 alias opcodes (D9 D8+i, DC D0+i, DD C8+i, ...): vendors differ (D9 D8+i stores without the underflow check on AMD)")
        }
        Code::Movsxd_r16_rm16 => Some("MOVSXD with a 16-bit operand size: AMD reads a 32-bit source, Intel 16 bits"),
        _ => None,
    }
}

/// Instructions excluded in one mode only, with the reason.
pub fn mode_exclusion(code: Code, t: &Instruction, mode: Mode) -> Option<&'static str> {
    use Mnemonic::*;
    let m = code.mnemonic();
    let seg_reg = (0..t.op_count()).any(|i| t.op_kind(i) == OpKind::Register && t.op_register(i).is_segment_register());
    match mode {
        Mode::Long64 if seg_reg || matches!(m, Lar | Lsl | Verr | Verw) => Some(
            "64-bit mode: kvm_pvm runs ring 3 with the host's selectors and GDT (MOV from DS reads 0, LAR reads the host GDT)",
        ),
        Mode::Compat32 if matches!(m, Lzcnt | Tzcnt) => {
            Some("compat32: KVM's emulator (the reference there) runs LZCNT/TZCNT as BSR/BSF")
        }
        _ => None,
    }
}

/// Which group a code belongs to, if it is generated at all.
fn classify(code: Code, t: &Instruction) -> Option<Group> {
    use Mnemonic::*;
    let feats = code.cpuid_features();
    let m = code.mnemonic();
    let has = |f: CpuidFeature| feats.contains(&f);
    let mm_reg = (0..t.op_count()).any(|i| t.op_kind(i) == OpKind::Register && t.op_register(i).is_mm());
    let seg_reg = (0..t.op_count()).any(|i| t.op_kind(i) == OpKind::Register && t.op_register(i).is_segment_register());
    if is_xsave_family(m) {
        return Some(Group::Xsave);
    }
    if has(CpuidFeature::AVX) || has(CpuidFeature::AVX2) || has(CpuidFeature::FMA) || has(CpuidFeature::F16C) {
        return Some(Group::Avx);
    }
    if t.is_privileged() {
        return Some(Group::System);
    }
    if has(CpuidFeature::FPU) || has(CpuidFeature::FPU287) || has(CpuidFeature::FPU387) {
        return Some(Group::X87);
    }
    if matches!(m, Crc32) {
        return Some(Group::Crc32);
    }
    if matches!(m, Pcmpestri | Pcmpestri64 | Pcmpestrm | Pcmpestrm64 | Pcmpistri | Pcmpistrm) {
        return Some(Group::Pcmpstr);
    }
    if matches!(
        m,
        Lfence
            | Mfence
            | Sfence
            | Clflush
            | Clflushopt
            | Clwb
            | Prefetchnta
            | Prefetcht0
            | Prefetcht1
            | Prefetcht2
            | Prefetchw
            | Prefetch
            | Pause
            | Nop
    ) {
        return Some(Group::Misc);
    }
    if matches!(m, Tzcnt | Lzcnt | Popcnt) {
        return Some(Group::Bit);
    }
    if has(CpuidFeature::BMI1) || has(CpuidFeature::BMI2) {
        return Some(Group::Bmi);
    }
    if has(CpuidFeature::AES) || has(CpuidFeature::PCLMULQDQ) || has(CpuidFeature::SHA) {
        return Some(Group::Crypto);
    }
    if mm_reg || (has(CpuidFeature::MMX) && !has(CpuidFeature::SSE2)) {
        return Some(Group::Mmx);
    }
    for (f, g) in [
        (CpuidFeature::SSE4_2, Group::Sse42),
        (CpuidFeature::SSE4_1, Group::Sse41),
        (CpuidFeature::SSSE3, Group::Ssse3),
        (CpuidFeature::SSE3, Group::Sse3),
        (CpuidFeature::SSE2, Group::Sse2),
        (CpuidFeature::SSE, Group::Sse),
    ] {
        if has(f) {
            return Some(g);
        }
    }
    if has(CpuidFeature::ADX) {
        return Some(Group::Alu);
    }
    if has(CpuidFeature::MOVBE) {
        return Some(Group::Movbe);
    }
    if seg_reg || matches!(m, Lar | Lsl | Verr | Verw | Arpl) {
        return Some(Group::Segment);
    }
    Some(match m {
        Add | Or | Adc | Sbb | And | Sub | Xor | Cmp | Test | Inc | Dec | Neg | Not => Group::Alu,
        Mov | Movzx | Movsx | Movsxd | Lea | Xlatb | Bswap | Cbw | Cwde | Cdqe | Cwd | Cdq | Cqo => Group::Mov,
        Cmovo | Cmovno | Cmovb | Cmovae | Cmove | Cmovne | Cmovbe | Cmova | Cmovs | Cmovns | Cmovp | Cmovnp | Cmovl
        | Cmovge | Cmovle | Cmovg => Group::Mov,
        Seto | Setno | Setb | Setae | Sete | Setne | Setbe | Seta | Sets | Setns | Setp | Setnp | Setl | Setge
        | Setle | Setg => Group::Mov,
        Lahf | Sahf | Clc | Stc | Cmc | Cld | Std | Cli | Sti | Pushf | Pushfd | Pushfq | Popf | Popfd | Popfq
        | Clac | Stac => Group::Flags,
        Shl | Shr | Sar | Sal | Rol | Ror | Rcl | Rcr | Shld | Shrd => Group::Shift,
        Mul | Imul | Div | Idiv => Group::MulDiv,
        Bt | Bts | Btr | Btc | Bsf | Bsr => Group::Bit,
        Xchg | Xadd | Cmpxchg | Cmpxchg8b | Cmpxchg16b => Group::Atomic,
        Movsb | Movsw | Movsd | Movsq | Cmpsb | Cmpsw | Cmpsd | Cmpsq | Scasb | Scasw | Scasd | Scasq | Lodsb
        | Lodsw | Lodsd | Lodsq | Stosb | Stosw | Stosd | Stosq => Group::String,
        Push | Pop | Pusha | Pushad | Popa | Popad | Enter | Leave => Group::Stack,
        Jmp | Call | Ret => Group::Branch,
        Aaa | Aas | Aam | Aad | Daa | Das => Group::Bcd,
        Hlt | Ud0 | Ud1 | Ud2 | Int3 | Into | Bound | Wait => Group::System,
        // IOPL is 0 and the TSS has no I/O bitmap: #GP(0) at CPL3.
        In | Out | Insb | Insw | Insd | Outsb | Outsw | Outsd => Group::System,
        _ => return None,
    })
}

/// The AVX and AVX2 instructions of the C library's string and memory
/// functions, weighted up in the avx group.
const HOT_AVX: &[Mnemonic] = &[
    Mnemonic::Vmovdqu,
    Mnemonic::Vmovdqa,
    Mnemonic::Vmovups,
    Mnemonic::Vmovaps,
    Mnemonic::Vmovntdq,
    Mnemonic::Vmovntdqa,
    Mnemonic::Vlddqu,
    Mnemonic::Vpcmpeqb,
    Mnemonic::Vpcmpeqw,
    Mnemonic::Vpcmpeqd,
    Mnemonic::Vpcmpeqq,
    Mnemonic::Vpcmpgtb,
    Mnemonic::Vpminub,
    Mnemonic::Vpmaxub,
    Mnemonic::Vpxor,
    Mnemonic::Vpor,
    Mnemonic::Vpand,
    Mnemonic::Vpandn,
    Mnemonic::Vxorps,
    Mnemonic::Vpaddb,
    Mnemonic::Vpaddd,
    Mnemonic::Vpsubb,
    Mnemonic::Vpsubq,
    Mnemonic::Vpshufb,
    Mnemonic::Vpshufd,
    Mnemonic::Vpunpcklbw,
    Mnemonic::Vpunpckhqdq,
    Mnemonic::Vpmovmskb,
    Mnemonic::Vpbroadcastb,
    Mnemonic::Vpbroadcastw,
    Mnemonic::Vpbroadcastd,
    Mnemonic::Vpbroadcastq,
    Mnemonic::Vbroadcastss,
    Mnemonic::Vmovd,
    Mnemonic::Vmovq,
    Mnemonic::Vptest,
    Mnemonic::Vzeroupper,
];

/// XSETBV and the instructions that take an XSAVE area.
pub fn is_xsave_family(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(m, Xsetbv | Xsave | Xsave64 | Xsaveopt | Xsaveopt64 | Xsavec | Xsavec64 | Xrstor | Xrstor64)
}

/// The instructions that take an XSAVE area and EDX:EAX as their mask.
fn takes_xsave_area(m: Mnemonic) -> bool {
    is_xsave_family(m) && m != Mnemonic::Xsetbv
}

/// One template: a decoded instruction, and which of its register operands
/// may be replaced by another register of the same class.
#[derive(Clone, Debug)]
pub struct Template {
    pub insn: Instruction,
    pub group: Group,
    /// Bit i: operand i is a register the encoding lets us choose.
    pub free_regs: u8,
}

/// Everything the generator can use, per mode.
pub struct Catalog {
    pub templates: BTreeMap<(Mode, Group), Vec<Template>>,
    /// Near relative branches (Jcc, JMP, CALL, LOOPcc, JrCXZ) per mode.
    pub branches: HashMap<Mode, Vec<Code>>,
    /// Codes left out on purpose, with the reason.
    pub excluded: BTreeMap<&'static str, BTreeSet<Mnemonic>>,
    /// Codes the interpreter has no handler for (not generated; listed).
    pub unimplemented: BTreeSet<Mnemonic>,
    pub unimplemented_codes: usize,
    /// CPUID features outside [`ALLOWED_FEATURES`] met while enumerating
    /// (AVX and later, XSAVE, FXSR, TSC, RDRAND, CPUID, SYSCALL, ...).
    pub other_features: BTreeSet<String>,
}

fn decode_first(bitness: u32, bytes: &[u8]) -> Option<Instruction> {
    let mut d = Decoder::with_ip(bitness, bytes, CODE, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        None
    } else {
        Some(i)
    }
}

/// Decode every opcode of the maps we generate from; one instruction per
/// (code, has-memory-operand).
fn enumerate(bitness: u32) -> Vec<Instruction> {
    let mut seen: HashMap<(Code, bool), Instruction> = HashMap::new();
    let mut order: Vec<(Code, bool)> = Vec::new();
    let mut add = |i: Instruction| {
        let mem = (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory);
        let key = (i.code(), mem);
        if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(key) {
            e.insert(i);
            order.push(key);
        }
    };
    let mut modrms: Vec<u8> = Vec::new();
    for reg in 0..8u8 {
        for rm in 0..8u8 {
            modrms.push(0xc0 | (reg << 3) | rm);
        }
        modrms.push(reg << 3);
    }
    let prefixes: [&[u8]; 4] = [&[], &[0x66], &[0xf2], &[0xf3]];
    let rexes: &[&[u8]] = if bitness == 64 { &[&[], &[0x48]] } else { &[&[]] };
    let maps: [&[u8]; 4] = [&[], &[0x0f], &[0x0f, 0x38], &[0x0f, 0x3a]];
    let mut buf = Vec::with_capacity(32);
    for p in prefixes {
        for rex in rexes {
            for map in maps {
                for op in 0..=255u8 {
                    if map.is_empty()
                        && matches!(
                            op,
                            0x0f | 0x26
                                | 0x2e
                                | 0x36
                                | 0x3e
                                | 0x64
                                | 0x65
                                | 0x66
                                | 0x67
                                | 0xf0
                                | 0xf2
                                | 0xf3
                                | 0xc4
                                | 0xc5
                                | 0x62
                                | 0x8f
                        )
                    {
                        continue;
                    }
                    if bitness == 64 && map.is_empty() && (0x40..0x50).contains(&op) {
                        continue;
                    }
                    for &modrm in &modrms {
                        buf.clear();
                        buf.extend_from_slice(p);
                        buf.extend_from_slice(rex);
                        buf.extend_from_slice(map);
                        buf.push(op);
                        buf.push(modrm);
                        buf.extend_from_slice(&[0; 10]);
                        if let Some(i) = decode_first(bitness, &buf) {
                            add(i);
                        }
                    }
                }
            }
        }
    }
    // VEX 0F / 0F38 / 0F3A: BMI1 and BMI2 (L=0, a VEX.vvvv operand), AVX
    // and AVX2 (L=0 and 1, with and without a VEX.vvvv operand).
    for mmmmm in [1u8, 2, 3] {
        for (l, vvvv) in [(0u8, 0xeu8), (0, 0xf), (1, 0xe), (1, 0xf)] {
            for (w, pp) in (0..2u8).flat_map(|w| (0..4u8).map(move |pp| (w, pp))) {
                for op in 0..=255u8 {
                    // With a SIB byte too, for the VSIB forms (the gathers).
                    for modrm in modrms.iter().copied().chain((0..8u8).map(|reg| (reg << 3) | 4)) {
                        buf.clear();
                        buf.extend_from_slice(&[0xc4, 0xe0 | mmmmm, (w << 7) | (vvvv << 3) | (l << 2) | pp, op, modrm]);
                        buf.extend_from_slice(&[0; 10]);
                        if let Some(i) = decode_first(bitness, &buf) {
                            add(i);
                        }
                    }
                }
            }
        }
    }
    order.into_iter().map(|k| seen[&k]).collect()
}

/// Register class of `r`, as the list of registers it may be replaced by.
fn register_class(r: Register, mode: Mode) -> Option<Vec<Register>> {
    let n = if mode == Mode::Long64 { 16 } else { 8 };
    let seq = |first: Register, count: usize| -> Vec<Register> {
        (0..count).map(|i| Register::try_from(first as usize + i).unwrap()).collect()
    };
    if r.is_gpr64() {
        Some(seq(Register::RAX, n))
    } else if r.is_gpr32() {
        Some(seq(Register::EAX, n))
    } else if r.is_gpr16() {
        Some(seq(Register::AX, n))
    } else if r.is_gpr8() {
        let mut v = seq(Register::AL, 4);
        v.extend(seq(Register::AH, 4));
        if mode == Mode::Long64 {
            v.extend(seq(Register::SPL, 4));
            v.extend(seq(Register::R8L, 8));
        }
        Some(v)
    } else if r.is_xmm() {
        Some(seq(Register::XMM0, n))
    } else if r.is_ymm() {
        Some(seq(Register::YMM0, n))
    } else if r.is_mm() {
        Some(seq(Register::MM0, 8))
    } else if r.is_st() {
        Some(seq(Register::ST0, 8))
    } else if r.is_segment_register() {
        Some(seq(Register::ES, 6))
    } else {
        None
    }
}

fn encodes_as(insn: &Instruction, bitness: u32, code: Code) -> bool {
    let mut e = Encoder::new(bitness);
    match e.encode(insn, CODE) {
        Ok(_) => {
            let bytes = e.take_buffer();
            decode_first(bitness, &bytes).is_some_and(|d| d.code() == code)
        }
        Err(_) => false,
    }
}

/// Which register operands of `t` can be changed without changing its code.
fn free_registers(t: &Instruction, mode: Mode) -> u8 {
    let mut free = 0u8;
    for op in 0..t.op_count() {
        if t.op_kind(op) != OpKind::Register {
            continue;
        }
        let r = t.op_register(op);
        let Some(class) = register_class(r, mode) else { continue };
        // Free when two other registers of the class both keep the code.
        let others: Vec<Register> = class.iter().copied().filter(|&x| x != r).take(3).collect();
        let ok = others.iter().filter(|&&o| {
            let mut i = *t;
            i.set_op_register(op, o);
            encodes_as(&i, mode.bitness(), t.code())
        });
        if ok.count() >= 2 {
            free |= 1 << op;
        }
    }
    free
}

impl Catalog {
    pub fn build() -> Catalog {
        let mut templates: BTreeMap<(Mode, Group), Vec<Template>> = BTreeMap::new();
        let mut branches: HashMap<Mode, Vec<Code>> = HashMap::new();
        let mut excluded: BTreeMap<&'static str, BTreeSet<Mnemonic>> = BTreeMap::new();
        let mut unimplemented = BTreeSet::new();
        let mut unimplemented_codes = BTreeSet::new();
        let mut other_features = BTreeSet::new();
        for mode in Mode::ALL {
            let mut branch_codes = BTreeSet::new();
            for t in enumerate(mode.bitness()) {
                let code = t.code();
                if let Some(f) = code.cpuid_features().iter().find(|f| !ALLOWED_FEATURES.contains(f)) {
                    other_features.insert(format!("{f:?}"));
                    continue;
                }
                if let Some(why) =
                    exclusion(code).or_else(|| code_exclusion(code)).or_else(|| mode_exclusion(code, &t, mode))
                {
                    excluded.entry(why).or_default().insert(code.mnemonic());
                    continue;
                }
                let fc = t.flow_control();
                let near_rel =
                    (0..t.op_count()).any(|i| matches!(t.op_kind(i), OpKind::NearBranch64 | OpKind::NearBranch32));
                let far = (0..t.op_count())
                    .any(|i| matches!(t.op_kind(i), OpKind::FarBranch16 | OpKind::FarBranch32 | OpKind::NearBranch16))
                    || matches!(t.memory_size(), MemorySize::SegPtr16 | MemorySize::SegPtr32 | MemorySize::SegPtr64);
                if far {
                    excluded
                        .entry("far or 16-bit branches change CS or truncate RIP: covered by unit tests")
                        .or_default()
                        .insert(code.mnemonic());
                    continue;
                }
                match fc {
                    FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call
                        if near_rel =>
                    {
                        if t.is_jcc_short_or_near()
                            || t.is_jmp_short_or_near()
                            || t.is_call_near()
                            || t.is_loop()
                            || t.is_loopcc()
                            || t.is_jcx_short()
                        {
                            if !cpu::Cpu::implemented(code) {
                                unimplemented.insert(code.mnemonic());
                                unimplemented_codes.insert(code);
                            } else {
                                branch_codes.insert(code);
                            }
                        } else {
                            excluded.entry("other branch forms (XBEGIN)").or_default().insert(code.mnemonic());
                        }
                        continue;
                    }
                    FlowControl::Next
                    | FlowControl::Exception
                    | FlowControl::Interrupt
                    | FlowControl::Return
                    | FlowControl::IndirectBranch
                    | FlowControl::IndirectCall => {}
                    _ => {
                        excluded.entry("other control transfers").or_default().insert(code.mnemonic());
                        continue;
                    }
                }
                let Some(group) = classify(code, &t) else {
                    excluded.entry("not classified into a group").or_default().insert(code.mnemonic());
                    continue;
                };
                if !cpu::Cpu::implemented(code) {
                    unimplemented.insert(code.mnemonic());
                    unimplemented_codes.insert(code);
                    continue;
                }
                let free_regs = free_registers(&t, mode);
                let mut insn = t;
                insn.set_has_rep_prefix(false);
                insn.set_has_repne_prefix(false);
                insn.set_has_lock_prefix(false);
                templates.entry((mode, group)).or_default().push(Template { insn, group, free_regs });
            }
            branches.insert(mode, branch_codes.into_iter().collect());
        }
        Catalog {
            templates,
            branches,
            excluded,
            unimplemented,
            unimplemented_codes: unimplemented_codes.len(),
            other_features,
        }
    }

    pub fn groups(&self, mode: Mode) -> Vec<Group> {
        let mut g: Vec<Group> = self.templates.keys().filter(|(m, _)| *m == mode).map(|(_, g)| *g).collect();
        if self.branches.get(&mode).is_some_and(|b| !b.is_empty()) && !g.contains(&Group::Branch) {
            g.push(Group::Branch);
        }
        g.sort();
        g
    }

    pub fn count(&self, mode: Mode, group: Group) -> usize {
        self.templates.get(&(mode, group)).map_or(0, Vec::len)
    }
}

// ---- sequences --------------------------------------------------------------

/// One instruction of a sequence; `target` is the index of the item a near
/// branch jumps to (`items.len()` is the final `hlt`).
#[derive(Clone, Debug)]
pub struct Item {
    pub insn: Instruction,
    pub target: Option<usize>,
}

/// A generated test case: the instructions, where they go, and the state and
/// data page they start from.
#[derive(Clone)]
pub struct Case {
    pub seed: u64,
    pub mode: Mode,
    pub group: Group,
    pub items: Vec<Item>,
    pub code_addr: u64,
    pub init: CpuState,
    pub data: Vec<u8>,
}

/// For the JIT harness: now and then (by the case's seed) an avx-group
/// case starts with AVX unusable, which every VEX instruction must find:
/// CR0.TS set (#NM), or XCR0 without YMM (#UD; the upper halves are then
/// zero, as nothing could have written them). Not against KVM: kvm_pvm
/// runs guest user code under the host's CR0.TS and XCR0.
pub fn with_avx_unusable(case: &mut Case) {
    if case.group != Group::Avx {
        return;
    }
    match crate::rng::splitmix(&mut case.seed.clone()) % 32 {
        0 => case.init.cr0 |= cpu::state::cr::CR0_TS,
        1 => {
            case.init.xcr0 = 3;
            case.init.ymm_hi = [0; 16];
        }
        _ => {}
    }
}

/// A sequence in bytes, and decoded back.
#[derive(Clone)]
pub struct Assembled {
    pub bytes: Vec<u8>,
    /// The decoded instructions, the final `hlt` last.
    pub insns: Vec<Instruction>,
}

const LABEL_BASE: u64 = 0x4000_0000;

/// The last instruction of every sequence: `hlt`, #GP(0) at CPL3.
fn end_instruction() -> Instruction {
    Instruction::with(Code::Hlt)
}

impl Case {
    /// Assemble at `code_addr`, with branch targets resolved.
    pub fn assemble(&self) -> Result<Assembled, String> {
        let bitness = self.mode.bitness();
        let n = self.items.len();
        let mut insns = Vec::with_capacity(n + 1);
        for (i, it) in self.items.iter().enumerate() {
            let mut insn = match it.target {
                Some(t) => {
                    Instruction::with_branch(it.insn.code(), LABEL_BASE + t as u64).map_err(|e| e.to_string())?
                }
                None => it.insn,
            };
            insn.set_ip(LABEL_BASE + i as u64);
            insns.push(insn);
        }
        let mut end = end_instruction();
        end.set_ip(LABEL_BASE + n as u64);
        insns.push(end);
        let block = InstructionBlock::new(&insns, self.code_addr);
        let r = BlockEncoder::encode(bitness, block, BlockEncoderOptions::DONT_FIX_BRANCHES)
            .map_err(|e| format!("block encoder: {e}"))?;
        let bytes = r.code_buffer;
        let mut d = Decoder::with_ip(bitness, &bytes, self.code_addr, DecoderOptions::NONE);
        let decoded: Vec<Instruction> = d.iter().collect();
        if decoded.len() != n + 1 {
            return Err(format!("decoded {} instructions, expected {}", decoded.len(), n + 1));
        }
        for (i, (a, b)) in decoded.iter().zip(insns.iter()).enumerate() {
            if a.code() != b.code() {
                return Err(format!("item {i}: encoded {:?}, decoded {:?}", b.code(), a.code()));
            }
        }
        Ok(Assembled { bytes, insns: decoded })
    }
}

/// The iced arithmetic flags as RFLAGS bits.
pub fn iced_to_rflags(bits: u32) -> u64 {
    let mut f = 0;
    for (i, r) in [
        (RflagsBits::OF, flags::OF),
        (RflagsBits::SF, flags::SF),
        (RflagsBits::ZF, flags::ZF),
        (RflagsBits::AF, flags::AF),
        (RflagsBits::CF, flags::CF),
        (RflagsBits::PF, flags::PF),
        (RflagsBits::DF, flags::DF),
        (RflagsBits::IF, flags::IF),
        (RflagsBits::AC, flags::AC),
    ] {
        if bits & i != 0 {
            f |= r;
        }
    }
    f
}

/// The iced x87 condition bits as FSW bits.
pub fn iced_to_fsw(bits: u32) -> u16 {
    let mut f = 0;
    for (i, r) in
        [(RflagsBits::C0, 1u16 << 8), (RflagsBits::C1, 1 << 9), (RflagsBits::C2, 1 << 10), (RflagsBits::C3, 1 << 14)]
    {
        if bits & i != 0 {
            f |= r;
        }
    }
    f
}

const ARITH_ICED: u32 =
    RflagsBits::OF | RflagsBits::SF | RflagsBits::ZF | RflagsBits::AF | RflagsBits::CF | RflagsBits::PF;
const FPU_ICED: u32 = RflagsBits::C0 | RflagsBits::C1 | RflagsBits::C2 | RflagsBits::C3;

/// A generator for one case.
struct Gen<'a> {
    rng: Rng,
    mode: Mode,
    cat: &'a Catalog,
    /// Registers whose initial value is fixed (pointers, indexes, counts).
    claimed: [Option<u64>; 16],
    /// Registers an earlier item may write (not used as address registers).
    clobbered: u16,
    /// Where the XSAVE areas of the sequence's XSAVE/XRSTOR forms are.
    areas: Vec<u64>,
}

fn gpr_index(r: Register) -> usize {
    r.full_register() as usize - Register::RAX as usize
}

fn gpr(index: usize, size: u32) -> Register {
    let first = match size {
        8 => Register::RAX,
        4 => Register::EAX,
        _ => Register::AX,
    };
    Register::try_from(first as usize + index).unwrap()
}

/// Interesting 32-bit float patterns.
fn f32_pattern(rng: &mut Rng) -> u32 {
    const SPECIAL: [u32; 16] = [
        0x0000_0000,
        0x8000_0000,
        0x3f80_0000,
        0xbf80_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0xffc0_0000,
        0x7fa0_0000,
        0x0000_0001,
        0x807f_ffff,
        0x7f7f_ffff,
        0x4f00_0000,
        0xcf00_0000,
        0x3f00_0000,
        0x4b00_0000,
    ];
    match rng.below(6) {
        0 => *rng.pick(&SPECIAL),
        1 => (rng.next_u64() as u32 & 0x807f_ffff) | ((rng.range(100, 160) as u32) << 23),
        2 => rng.next_u64() as u32,
        _ => {
            let v = (rng.next_u64() as i32 as f32) / (1u32 << rng.below(24)) as f32;
            v.to_bits()
        }
    }
}

fn f64_pattern(rng: &mut Rng) -> u64 {
    const SPECIAL: [u64; 14] = [
        0,
        0x8000_0000_0000_0000,
        0x3ff0_0000_0000_0000,
        0xbff0_0000_0000_0000,
        0x7ff0_0000_0000_0000,
        0xfff0_0000_0000_0000,
        0x7ff8_0000_0000_0000,
        0xfff8_0000_0000_0000,
        0x7ff4_0000_0000_0000,
        1,
        0x800f_ffff_ffff_ffff,
        0x7fef_ffff_ffff_ffff,
        0x43e0_0000_0000_0000,
        0x41e0_0000_0000_0000,
    ];
    match rng.below(6) {
        0 => *rng.pick(&SPECIAL),
        1 => (rng.next_u64() & 0x800f_ffff_ffff_ffff) | (rng.range(900, 1150) << 52),
        2 => rng.next_u64(),
        _ => {
            let v = (rng.next_u64() as i64 as f64) / (1u64 << rng.below(60)) as f64;
            v.to_bits()
        }
    }
}

fn f80_pattern(rng: &mut Rng) -> F80 {
    let (mantissa, sign_exp) = match rng.below(10) {
        // Zero, infinity, QNaN indefinite, SNaN, denormal, pseudo-denormal.
        0 => (0, 0),
        1 => (0x8000_0000_0000_0000, 0x7fff),
        2 => (0xc000_0000_0000_0000, 0xffff),
        3 => (0xa000_0000_0000_0000 | (rng.next_u64() >> 4), 0x7fff),
        4 => (rng.next_u64() >> 1, 0),
        5 => {
            // Small integers, exactly representable.
            let v = rng.range(1, 1000);
            let lz = v.leading_zeros();
            (v << lz, (0x3fff + 63 - lz) as u16)
        }
        _ => (rng.next_u64() | 0x8000_0000_0000_0000, rng.range(0x3fc0, 0x4040) as u16),
    };
    let sign = if rng.chance(30) { 0x8000 } else { 0 };
    F80 { mantissa, sign_exp: sign_exp | sign, _pad: [0; 3] }
}

impl Gen<'_> {
    fn nregs(&self) -> usize {
        if self.mode == Mode::Long64 {
            16
        } else {
            8
        }
    }

    /// A target address for a memory access of `size` bytes.
    fn pick_target(&mut self, size: u64, align: u64) -> u64 {
        let r = self.rng.below(1000);
        let size = size.clamp(1, 512);
        if r < 880 || size >= PAGE {
            let max = PAGE.saturating_sub(size);
            let mut off = self.rng.below(max + 1);
            if align > 1 && self.rng.chance(80) {
                off &= !(align - 1);
            }
            DATA + off
        } else if r < 910 {
            // Crossing into the missing page after the data page.
            DATA + PAGE - self.rng.range(1, size.max(2) - 1).min(size)
        } else if r < 930 {
            // Starting in the missing page before it.
            DATA - self.rng.range(1, size.max(2) - 1).min(size)
        } else if r < 960 {
            RODATA + self.rng.below(PAGE - size)
        } else if r < 980 {
            KDATA + self.rng.below(PAGE - size)
        } else {
            // A page that is not mapped at all.
            0x40000 + self.rng.below(PAGE)
        }
    }

    /// An address register with initial value chosen so that `want` is
    /// reached with a small displacement: (register index, value).
    fn address_register(&mut self, no_rsp: bool) -> Option<usize> {
        let n = self.nregs();
        for _ in 0..8 {
            let i = self.rng.below(n as u64) as usize;
            if no_rsp && i == reg::RSP {
                continue;
            }
            if self.clobbered & (1 << i) != 0 {
                continue;
            }
            return Some(i);
        }
        None
    }

    /// A VSIB operand (the gathers): a base register that reaches `target`
    /// with the displacement, and a random vector index register of the
    /// template's width, whose elements (small in some registers of the
    /// avx group's initial state) are added scaled.
    fn vsib_operand(&mut self, insn: &mut Instruction, target: u64) {
        let n = self.nregs();
        let first = if insn.memory_index().is_ymm() { Register::YMM0 } else { Register::XMM0 };
        let index = Register::try_from(first as usize + self.rng.below(n as u64) as usize).unwrap();
        let asize = if self.mode == Mode::Long64 && self.rng.chance(90) { 8 } else { 4 };
        insn.set_segment_prefix(Register::None);
        insn.set_memory_index(index);
        insn.set_memory_index_scale(*self.rng.pick(&[1u32, 2, 4, 8]));
        let Some(b) = self.address_register(false) else {
            insn.set_memory_base(Register::None);
            insn.set_memory_displ_size(4);
            insn.set_memory_displacement64(target);
            return;
        };
        let base_val = *self.claimed[b].get_or_insert(target.wrapping_sub(self.rng.below(256)));
        let disp = target.wrapping_sub(base_val);
        let disp = if (disp as i64) < i64::from(i32::MIN) || (disp as i64) > i64::from(i32::MAX) {
            (self.rng.next_u64() as i8) as i64 as u64
        } else {
            disp
        };
        let disp = if asize == 4 { disp & 0xffff_ffff } else { disp };
        insn.set_memory_base(gpr(b, asize));
        insn.set_memory_displ_size(if disp == 0 { 0 } else { 1 });
        insn.set_memory_displacement64(disp);
    }

    /// Make operand `op` of `insn` a memory operand at a chosen address.
    fn memory_operand(&mut self, insn: &mut Instruction) {
        let code = insn.code();
        let xsave_area = takes_xsave_area(insn.mnemonic());
        // An XSAVE area of the model's components (the legacy region and
        // the header), 64-byte aligned.
        let msize = if xsave_area { 576 } else { insn.memory_size().size() as u64 };
        let align = match msize {
            576 => 64,
            16 | 32 | 64 | 512 => 16,
            8 | 10 => 8,
            4 => 4,
            2 => 2,
            _ => 1,
        };
        let target = self.pick_target(msize.max(1), align);
        if xsave_area {
            self.areas.push(target);
        }
        // moffs forms keep their shape: only the address changes.
        if matches!(
            code,
            Code::Mov_AL_moffs8
                | Code::Mov_AX_moffs16
                | Code::Mov_EAX_moffs32
                | Code::Mov_RAX_moffs64
                | Code::Mov_moffs8_AL
                | Code::Mov_moffs16_AX
                | Code::Mov_moffs32_EAX
                | Code::Mov_moffs64_RAX
        ) {
            insn.set_memory_displacement64(target);
            return;
        }
        // XLAT's operand is [rBX + AL]: keep it.
        if insn.mnemonic() == Mnemonic::Xlatb {
            return;
        }
        if insn.is_vsib() {
            self.vsib_operand(insn, target);
            return;
        }
        let long = self.mode == Mode::Long64;
        let form = self.rng.below(100);
        insn.set_segment_prefix(Register::None);
        if long && form < 25 {
            insn.set_memory_base(Register::RIP);
            insn.set_memory_index(Register::None);
            insn.set_memory_index_scale(1);
            insn.set_memory_displ_size(8);
            insn.set_memory_displacement64(target);
            return;
        }
        if form < 35 {
            insn.set_memory_base(Register::None);
            insn.set_memory_index(Register::None);
            insn.set_memory_index_scale(1);
            insn.set_memory_displ_size(4);
            insn.set_memory_displacement64(target);
            return;
        }
        // Address size: 64 in 64-bit mode (sometimes 32), 32 in compat mode.
        let asize = if long && self.rng.chance(90) { 8 } else { 4 };
        let amask = if asize == 8 { u64::MAX } else { 0xffff_ffff };
        let Some(b) = self.address_register(false) else {
            insn.set_memory_base(Register::None);
            insn.set_memory_index(Register::None);
            insn.set_memory_index_scale(1);
            insn.set_memory_displ_size(4);
            insn.set_memory_displacement64(target);
            return;
        };
        let with_index = form >= 80;
        let mut index_part = 0u64;
        let mut index_reg = Register::None;
        let mut scale = 1u32;
        if with_index {
            if let Some(x) = self.address_register(true) {
                let v = match self.claimed[x] {
                    Some(v) => v,
                    None => {
                        let small = self.rng.below(64);
                        self.claimed[x] = Some(small);
                        small
                    }
                };
                scale = *self.rng.pick(&[1u32, 2, 4, 8]);
                index_part = v.wrapping_mul(u64::from(scale));
                index_reg = gpr(x, asize);
            }
        }
        // Base value: reuse a claimed one, else choose it (sometimes
        // non-canonical in 64-bit mode).
        let disp_choice: i64 = match self.rng.below(4) {
            0 => 0,
            1 => (self.rng.next_u64() as i8) as i64,
            2 => (self.rng.next_u64() as i16) as i64,
            _ => (self.rng.next_u64() as i32 >> 4) as i64,
        };
        let base_val = match self.claimed[b] {
            Some(v) => v,
            None => {
                let v = if long && asize == 8 && self.rng.chance(2) {
                    // Non-canonical: #GP (or #SS through RSP/RBP).
                    0x0000_8000_0000_0000u64.wrapping_add(self.rng.below(1 << 40))
                        ^ if self.rng.chance(50) { 0xffff_0000_0000_0000 } else { 0 }
                } else {
                    target.wrapping_sub(index_part).wrapping_sub(disp_choice as u64)
                };
                // In compat mode the upper halves start at zero.
                let v = if long { v } else { v & 0xffff_ffff };
                self.claimed[b] = Some(v);
                v
            }
        };
        let disp = target.wrapping_sub(base_val).wrapping_sub(index_part) & amask;
        let disp = if asize == 8 {
            let d = disp as i64;
            if d < i64::from(i32::MIN) || d > i64::from(i32::MAX) {
                // Unreachable from this base: use the base as is (far away).
                (self.rng.next_u64() as i8) as i64 as u64
            } else {
                disp
            }
        } else {
            (disp as u32 as i32) as i64 as u64
        };
        insn.set_memory_base(gpr(b, asize));
        insn.set_memory_index(index_reg);
        insn.set_memory_index_scale(scale);
        insn.set_memory_displ_size(if disp == 0 { 0 } else { 1 });
        insn.set_memory_displacement64(disp);
        if self.rng.chance(4) {
            let seg =
                *self.rng.pick(&[Register::ES, Register::CS, Register::SS, Register::DS, Register::FS, Register::GS]);
            insn.set_segment_prefix(seg);
        }
    }

    fn immediate8(&mut self, m: Mnemonic, size_bits: u32) -> u8 {
        use Mnemonic::*;
        match m {
            Shl | Shr | Sar | Sal | Rol | Ror | Rcl | Rcr | Shld | Shrd | Psllw | Pslld | Psllq | Psrlw | Psrld
            | Psrlq | Psraw | Psrad | Pslldq | Psrldq | Rorx
                if self.rng.chance(70) =>
            {
                self.rng.below(u64::from(size_bits) + 3) as u8
            }
            Enter => self.rng.below(4) as u8,
            _ => self.rng.next_u64() as u8,
        }
    }

    /// Instantiate a template with random operands.
    fn instantiate(&mut self, t: &Template) -> Option<Instruction> {
        let bitness = self.mode.bitness();
        for attempt in 0..6 {
            let mut insn = t.insn;
            let m = insn.mnemonic();
            let size_bits = (0..insn.op_count())
                .find(|&i| insn.op_kind(i) == OpKind::Register)
                .map(|i| insn.op_register(i).size() as u32 * 8)
                .unwrap_or(insn.memory_size().size() as u32 * 8)
                .max(8);
            for op in 0..insn.op_count() {
                match insn.op_kind(op) {
                    OpKind::Register if attempt < 5 && t.free_regs & (1 << op) != 0 => {
                        let r = insn.op_register(op);
                        if let Some(class) = register_class(r, self.mode) {
                            let mut pick = *self.rng.pick(&class);
                            // Keep the stack pointer mostly intact.
                            if (pick.is_gpr() && gpr_index(pick) == reg::RSP) && self.rng.chance(85) {
                                pick = r;
                            }
                            insn.set_op_register(op, pick);
                        }
                    }
                    OpKind::Memory => self.memory_operand(&mut insn),
                    OpKind::Immediate8 => {
                        let v = self.immediate8(m, size_bits);
                        insn.set_immediate8(v);
                    }
                    OpKind::Immediate8_2nd => {
                        let v = if self.rng.chance(85) { self.rng.below(3) as u8 } else { self.rng.below(32) as u8 };
                        insn.set_immediate8_2nd(v);
                    }
                    OpKind::Immediate16 => {
                        let v = if matches!(m, Mnemonic::Enter | Mnemonic::Ret) {
                            (self.rng.below(64) as u16) & !1
                        } else {
                            self.rng.interesting() as u16
                        };
                        insn.set_immediate16(v);
                    }
                    OpKind::Immediate32 => insn.set_immediate32(self.rng.interesting() as u32),
                    OpKind::Immediate64 => insn.set_immediate64(self.rng.interesting()),
                    OpKind::Immediate8to16 => insn.set_immediate8to16(self.rng.next_u64() as i8 as i16),
                    OpKind::Immediate8to32 => insn.set_immediate8to32(self.rng.next_u64() as i8 as i32),
                    OpKind::Immediate8to64 => insn.set_immediate8to64(self.rng.next_u64() as i8 as i64),
                    OpKind::Immediate32to64 => insn.set_immediate32to64(self.rng.interesting() as i32 as i64),
                    _ => {}
                }
            }
            if insn.is_string_instruction() && self.rng.chance(60) {
                if is_cmps_scas(m) && self.rng.chance(50) {
                    insn.set_has_repne_prefix(true);
                } else {
                    insn.set_has_rep_prefix(true);
                }
            }
            let has_mem = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
            if has_mem && self.rng.chance(if t.group == Group::Atomic { 40 } else { 3 }) {
                insn.set_has_lock_prefix(true);
            }
            if encodes_as(&insn, bitness, t.insn.code()) {
                return Some(insn);
            }
        }
        None
    }

    fn written_gprs(insn: &Instruction) -> u16 {
        let mut factory = iced_x86::InstructionInfoFactory::new();
        let info = factory.info(insn);
        let mut mask = 0u16;
        for r in info.used_registers() {
            let reg = r.register();
            if reg.is_gpr()
                && !matches!(
                    r.access(),
                    iced_x86::OpAccess::Read
                        | iced_x86::OpAccess::CondRead
                        | iced_x86::OpAccess::NoMemAccess
                        | iced_x86::OpAccess::None
                )
            {
                mask |= 1 << gpr_index(reg);
            }
        }
        mask
    }

    fn template(&mut self, group: Group) -> Option<Template> {
        let list = self.cat.templates.get(&(self.mode, group))?;
        if list.is_empty() {
            return None;
        }
        // Half the AVX instructions from the forms string and memory
        // functions use (which the JIT translates), of both widths.
        if group == Group::Avx && self.rng.chance(50) {
            let hot: Vec<&Template> = list.iter().filter(|t| HOT_AVX.contains(&t.insn.mnemonic())).collect();
            if !hot.is_empty() {
                return Some((*self.rng.pick(&hot)).clone());
            }
        }
        Some(self.rng.pick(list).clone())
    }

    fn filler_group(&mut self, main: Group) -> Group {
        if main.is_fp() && self.rng.chance(50) {
            return main;
        }
        // Legacy SSE among VEX code: it must leave the upper halves alone.
        if main == Group::Avx && self.rng.chance(50) {
            return Group::Sse2;
        }
        *self.rng.pick(&[Group::Alu, Group::Mov, Group::Shift, Group::Bit, Group::Flags])
    }
}

/// Make every flag read well defined: where an item reads a flag an earlier
/// item (on some path) left undefined, insert an instruction that defines
/// them first (`cmp` for the arithmetic flags, `fxam` for C0-C3).
fn fix_undefined_reads(items: &mut Vec<Item>, mode: Mode, rng: &mut Rng) {
    for _ in 0..64 {
        let n = items.len();
        let mut undef_in = vec![0u32; n + 1];
        let mut bad = None;
        for i in 0..n {
            let insn = &items[i].insn;
            if insn.rflags_read() & undef_in[i] != 0 {
                bad = Some((i, insn.rflags_read() & undef_in[i]));
                break;
            }
            let out = (undef_in[i] & !insn.rflags_modified()) | insn.rflags_undefined();
            if let Some(t) = items[i].target {
                undef_in[t] |= out;
            }
            let falls_through = !(insn.flow_control() == FlowControl::UnconditionalBranch && items[i].target.is_some());
            if falls_through {
                undef_in[i + 1] |= out;
            }
        }
        let Some((i, what)) = bad else { return };
        let fixer = if what & ARITH_ICED != 0 {
            let r = if mode == Mode::Long64 { gpr(rng.below(16) as usize, 4) } else { gpr(rng.below(8) as usize, 4) };
            Instruction::with2(Code::Cmp_rm32_imm8, r, rng.next_u64() as i8 as i32).unwrap()
        } else {
            debug_assert!(what & FPU_ICED != 0);
            Instruction::with(Code::Fxam)
        };
        for it in items.iter_mut() {
            if let Some(t) = it.target.as_mut() {
                if *t > i {
                    *t += 1;
                }
            }
        }
        items.insert(i, Item { insn: fixer, target: None });
    }
}

/// Put `mov eax, mask` before every XSAVE-area instruction. kvm_pvm runs
/// ring 3 with the host's XCR0 (x87, SSE, AVX and AVX-512 on the hosts
/// here), the model's XCR0 is x87|SSE: with a mask of bits 0 and 1 only
/// the requested-feature bitmap (EDX:EAX & XCR0) is the same on both.
fn set_xsave_masks(items: &mut Vec<Item>, rng: &mut Rng) {
    let mut i = 0;
    while i < items.len() {
        if !takes_xsave_area(items[i].insn.mnemonic()) {
            i += 1;
            continue;
        }
        let mask = rng.below(4) as u32;
        let mov = Instruction::with2(Code::Mov_r32_imm32, Register::EAX, mask).unwrap();
        for it in items.iter_mut() {
            if let Some(t) = it.target.as_mut() {
                if *t > i {
                    *t += 1;
                }
            }
        }
        items.insert(i, Item { insn: mov, target: None });
        i += 2;
    }
}

/// The XSAVE group's state and areas: CR4.OSXSAVE with XCR0 = x87|SSE, and
/// at each area a legacy region and header an XRSTOR may load: MXCSR
/// within the model's MXCSR_MASK, FOP/FIP/FDP and their selectors zero
/// (AMD stores them only while an x87 exception is pending), XSTATE_BV
/// within bits 0-1, in the standard or the compacted format, now and then
/// with a reserved header byte set (#GP on both sides).
fn xsave_setup(s: &mut CpuState, data: &mut [u8], areas: &[u64], rng: &mut Rng) {
    s.cr4 |= cpu::state::cr::CR4_OSXSAVE;
    s.xcr0 = 3;
    // The mask in EAX is safe before the first `mov eax` too (the reducer
    // may remove those).
    s.gpr[reg::RAX] = (s.gpr[reg::RAX] & !0xffff_ffff) | rng.below(4);
    let put = |data: &mut [u8], o: usize, b: &[u8]| {
        for (k, &x) in b.iter().enumerate() {
            if let Some(d) = data.get_mut(o + k) {
                *d = x;
            }
        }
    };
    // Only 64-byte aligned areas get a header (the others raise #GP): two
    // headers are then the same or apart.
    let offsets: Vec<usize> =
        areas.iter().filter_map(|&a| a.checked_sub(DATA)).map(|o| o as usize).filter(|o| o % 64 == 0).collect();
    // Headers first, then the legacy fields: where one area's header is
    // another's legacy region, the pointers stay zero.
    for &off in &offsets {
        let xstate_bv = rng.below(4);
        let xcomp_bv = if rng.chance(50) { 0 } else { (1 << 63) | xstate_bv | rng.below(4) };
        let mut hdr = [0u8; 64];
        hdr[..8].copy_from_slice(&xstate_bv.to_le_bytes());
        hdr[8..16].copy_from_slice(&xcomp_bv.to_le_bytes());
        if rng.chance(5) {
            hdr[rng.range(16, 63) as usize] = 1 + rng.below(255) as u8;
        }
        put(data, off + 512, &hdr);
    }
    // The legacy fields leave every XSTATE_BV and XCOMP_BV alone: an MXCSR
    // written over one could name a component only the host's XCR0 has.
    let in_bitmaps = |o: usize| offsets.iter().any(|&h| (h + 512..h + 528).contains(&o));
    for &off in &offsets {
        let mxcsr = if rng.chance(50) { 0x1f80 } else { rng.next_u64() as u32 & 0xffff };
        let mut fields = [0u8; 22];
        fields[18..22].copy_from_slice(&mxcsr.to_le_bytes());
        for (k, &b) in fields.iter().enumerate() {
            if !in_bitmaps(off + 6 + k) {
                put(data, off + 6 + k, &[b]);
            }
        }
    }
}

/// Generate the case for `seed` (mode and group drawn from it unless given).
pub fn generate(cat: &Catalog, seed: u64, mode: Option<Mode>, groups: &[Group]) -> Option<Case> {
    let mut rng = Rng::new(seed);
    let mode = mode.unwrap_or_else(|| *rng.pick(&Mode::ALL));
    let available: Vec<Group> =
        cat.groups(mode).into_iter().filter(|g| groups.is_empty() || groups.contains(g)).collect();
    if available.is_empty() {
        return None;
    }
    let group = *rng.pick(&available);
    let mut g = Gen { rng, mode, cat, claimed: [None; 16], clobbered: 0, areas: Vec::new() };
    if group == Group::Xsave {
        // EAX is set before each XSAVE-area instruction (below): never an
        // address register.
        g.clobbered |= 1 << reg::RAX;
    }
    let long = mode == Mode::Long64;

    // Fixed pointers first: the stack, the string registers, RBX and RBP.
    let rsp = DATA + 0x100 + (g.rng.below(0xe00) & !7) + if g.rng.chance(5) { 4 } else { 0 };
    g.claimed[reg::RSP] = Some(rsp);
    g.claimed[reg::RSI] = Some(DATA + g.rng.below(0xf80));
    g.claimed[reg::RDI] = Some(DATA + g.rng.below(0xf80));
    if g.rng.chance(50) {
        g.claimed[reg::RBX] = Some(DATA + g.rng.below(0xf00));
    }
    if g.rng.chance(50) {
        g.claimed[reg::RBP] = Some(DATA + 0x200 + (g.rng.below(0xc00) & !7));
    }

    let n = 1 + g.rng.below(8) as usize;
    let mut items: Vec<Item> = Vec::with_capacity(n);
    let branch_codes = cat.branches.get(&mode).cloned().unwrap_or_default();
    let mut guard = 0;
    while items.len() < n && guard < 64 {
        guard += 1;
        let i = items.len();
        if (group == Group::Branch && g.rng.chance(50) || g.rng.chance(4)) && !branch_codes.is_empty() {
            let code = *g.rng.pick(&branch_codes);
            // Forward only: to a later item or to the final `hlt`.
            let target = g.rng.range(i as u64 + 1, n as u64) as usize;
            let Ok(insn) = Instruction::with_branch(code, LABEL_BASE + target as u64) else { continue };
            items.push(Item { insn, target: Some(target) });
            continue;
        }
        let gr = if g.rng.chance(75) { group } else { g.filler_group(group) };
        let Some(t) = g.template(gr).or_else(|| g.template(group)) else { continue };
        let Some(insn) = g.instantiate(&t) else { continue };
        // The XSAVE group's mask in EAX stays one of bits 0-1 (see
        // `set_xsave_masks`): nothing else writes RAX.
        if group == Group::Xsave && Gen::written_gprs(&insn) & (1 << reg::RAX) != 0 {
            continue;
        }
        g.clobbered |= Gen::written_gprs(&insn);
        items.push(Item { insn, target: None });
    }
    if items.is_empty() {
        return None;
    }
    // Branch targets past the end (after a shorter fill) go to the end.
    let len = items.len();
    for it in items.iter_mut() {
        if let Some(t) = it.target.as_mut() {
            *t = (*t).min(len);
        }
    }
    fix_undefined_reads(&mut items, mode, &mut g.rng);
    if group == Group::Xsave {
        set_xsave_masks(&mut items, &mut g.rng);
    }

    // Initial state.
    let mut s = machine::base_state(mode);
    for i in 0..16 {
        let v = match g.claimed[i] {
            Some(v) => v,
            None => g.rng.interesting(),
        };
        s.gpr[i] = if long || i >= 8 { v } else { v & 0xffff_ffff };
    }
    let uses = |ms: &[Mnemonic]| items.iter().any(|it| ms.contains(&it.insn.mnemonic()));
    let rep_or_loop = items
        .iter()
        .any(|it| it.insn.has_rep_prefix() || it.insn.has_repne_prefix() || it.insn.is_loop() || it.insn.is_loopcc());
    if rep_or_loop && g.claimed[reg::RCX].is_none() {
        s.gpr[reg::RCX] = g.rng.below(24);
    }
    if uses(&[Mnemonic::Div, Mnemonic::Idiv]) && g.claimed[reg::RDX].is_none() && g.rng.chance(70) {
        let rax = s.gpr[reg::RAX];
        s.gpr[reg::RDX] = match g.rng.below(3) {
            0 => 0,
            1 => g.rng.below(16),
            _ => {
                if (rax as i64) < 0 {
                    u64::MAX
                } else {
                    0
                }
            }
        };
        if !long {
            s.gpr[reg::RDX] &= 0xffff_ffff;
        }
    }
    let arith = flags::CF | flags::PF | flags::AF | flags::ZF | flags::SF | flags::OF;
    s.rflags |= g.rng.next_u64() & arith;
    if g.rng.chance(20) {
        s.rflags |= flags::DF;
    }
    // Alignment checks: CR0.AM is set; KVM's emulator (compat32) has none.
    if long && g.rng.chance(12) {
        s.rflags |= flags::AC;
    }
    if g.rng.chance(30) {
        s.rflags |= flags::ID;
    }
    // SSE state.
    for x in s.xmm.iter_mut() {
        let lanes = match g.rng.below(3) {
            0 => [
                f32_pattern(&mut g.rng) as u64 | (u64::from(f32_pattern(&mut g.rng)) << 32),
                f32_pattern(&mut g.rng) as u64 | (u64::from(f32_pattern(&mut g.rng)) << 32),
            ],
            1 => [f64_pattern(&mut g.rng), f64_pattern(&mut g.rng)],
            _ => [g.rng.interesting(), g.rng.next_u64()],
        };
        *x = u128::from(lanes[0]) | (u128::from(lanes[1]) << 64);
    }
    if group == Group::Avx {
        // The AVX state enabled (XCR0 = x87|SSE|YMM) and busy upper halves.
        s.cr4 |= cpu::state::cr::CR4_OSXSAVE;
        s.xcr0 = 7;
        for y in s.ymm_hi.iter_mut() {
            *y = if g.rng.chance(10) {
                0
            } else {
                u128::from(g.rng.interesting()) | (u128::from(g.rng.next_u64()) << 64)
            };
        }
        // Some registers hold small qwords (small dwords too, read as
        // dwords): gather indexes that reach the data page.
        for i in 0..16 {
            if g.rng.chance(25) {
                let mut small = || u128::from(g.rng.below(64)) | (u128::from(g.rng.below(64)) << 64);
                s.xmm[i] = small();
                s.ymm_hi[i] = small();
            }
        }
    }
    let masks = if g.rng.chance(80) { 0x1f80 } else { (g.rng.next_u64() as u32) & 0x1f80 };
    s.mxcsr = masks
        | ((g.rng.below(4) as u32) << 13)
        | if g.rng.chance(20) { 1 << 15 } else { 0 }
        | if g.rng.chance(20) { 1 << 6 } else { 0 }
        | if g.rng.chance(30) { (g.rng.next_u64() as u32) & 0x3f } else { 0 };
    // x87 state: TOP, some valid registers, a random control word.
    let top = g.rng.below(8) as u16;
    let valid = g.rng.below(9) as usize;
    let mut ftw = 0xffffu16;
    for k in 0..valid {
        let phys = (usize::from(top) + k) & 7;
        s.fpu.regs[phys] = f80_pattern(&mut g.rng);
        let tag = tag_of(&s.fpu.regs[phys]);
        ftw = (ftw & !(3 << (2 * phys))) | (tag << (2 * phys));
    }
    for r in s.fpu.regs.iter_mut() {
        if r.mantissa == 0 && r.sign_exp == 0 && g.rng.chance(50) {
            *r = f80_pattern(&mut g.rng);
        }
    }
    s.fpu.ftw = ftw;
    let fmask = if g.rng.chance(80) { 0x3f } else { g.rng.next_u64() as u16 & 0x3f };
    let pc = *g.rng.pick(&[0u16, 2, 3, 3]);
    s.fpu.fcw = 0x40 | fmask | (pc << 8) | ((g.rng.below(4) as u16) << 10);
    s.fpu.fsw = (top << 11) | (g.rng.next_u64() as u16 & 0x4700);

    let mut data = vec![0u8; PAGE as usize];
    g.rng.fill(&mut data);
    for q in data.chunks_mut(8) {
        let v = match g.rng.below(10) {
            0..=2 => g.rng.interesting(),
            3 => f64_pattern(&mut g.rng),
            4 => u64::from(f32_pattern(&mut g.rng)) | (u64::from(f32_pattern(&mut g.rng)) << 32),
            5 => DATA + g.rng.below(PAGE),
            _ => continue,
        };
        q.copy_from_slice(&v.to_le_bytes());
    }

    if group == Group::Xsave {
        xsave_setup(&mut s, &mut data, &g.areas, &mut g.rng);
    }

    let mut case = Case { seed, mode, group, items, code_addr: CODE + g.rng.below(192), init: s, data };
    let asm = case.assemble().ok()?;
    if g.rng.chance(2) {
        // Let the sequence run into the missing page after the code page.
        let len = asm.bytes.len() as u64;
        case.code_addr = CODE + PAGE - (len / 2).max(1);
        case.assemble().ok()?;
    }
    case.init.rip = case.code_addr;
    Some(case)
}

/// The tag an FPU register's contents give it (valid, zero, special).
pub fn tag_of(r: &F80) -> u16 {
    let exp = r.sign_exp & 0x7fff;
    if exp == 0x7fff {
        2
    } else if exp == 0 {
        if r.mantissa == 0 {
            1
        } else {
            2
        }
    } else if r.mantissa & (1 << 63) == 0 {
        2
    } else {
        0
    }
}

/// CMPS or SCAS: the string instructions that compare, and so take REPNE
/// as well as REPE.
pub fn is_cmps_scas(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Cmpsb
            | Mnemonic::Cmpsw
            | Mnemonic::Cmpsd
            | Mnemonic::Cmpsq
            | Mnemonic::Scasb
            | Mnemonic::Scasw
            | Mnemonic::Scasd
            | Mnemonic::Scasq
    )
}
