//! CPUID: one documented CPU model that advertises exactly what the
//! interpreter implements.
//!
//! The vendor is "AuthenticAMD", as QEMU's `qemu64` model reports, so guests
//! take the AMD paths (SYSCALL in compatibility mode) that also match the
//! hosts the differential harness runs on. Each feature bit is set only when
//! its instructions and registers are implemented; the list grows with the
//! interpreter.

use crate::state::CpuState;

/// The CPU models a machine can be given (`ferrovm run --cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Model {
    /// x86-64-v2 (SSE4.2, POPCNT, CX16, LAHF) with XSAVE for the x87 and
    /// SSE state, plus MOVBE, LZCNT, BMI1/BMI2 and the system features
    /// below; no AVX. The default.
    #[default]
    V2,
    /// Everything the interpreter implements: x86-64-v3 (AVX, AVX2, FMA,
    /// F16C and the YMM state in XSAVE) on top of [`Model::V2`], and AES-NI
    /// and PCLMULQDQ.
    Max,
}

impl Model {
    /// Every model, in the order the help text lists them.
    pub const ALL: [Model; 2] = [Model::V2, Model::Max];

    /// The model's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Model::V2 => "v2",
            Model::Max => "max",
        }
    }

    /// A one-line description for logs and `--stats`.
    pub fn describe(self) -> &'static str {
        match self {
            Model::V2 => "x86-64-v2: SSE4.2, XSAVE (x87/SSE), MOVBE, LZCNT, BMI1/2; no AVX",
            Model::Max => "x86-64-v3: v2 plus AVX, AVX2, FMA, F16C, XSAVE with YMM; AES-NI, PCLMULQDQ",
        }
    }

    /// Whether the model has AVX (and AVX2, FMA, F16C, the YMM state).
    pub fn avx(self) -> bool {
        self == Model::Max
    }

    /// Whether the model has AES-NI and PCLMULQDQ.
    pub fn crypto(self) -> bool {
        self == Model::Max
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Model {
    type Err = String;

    fn from_str(s: &str) -> Result<Model, String> {
        Model::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Model::ALL.iter().map(|m| m.name()).collect();
            format!("unknown CPU model '{s}': the models are {}", names.join(", "))
        })
    }
}

/// TSC frequency of the model, in kHz (2 GHz).
pub const TSC_KHZ: u64 = 2_000_000;

/// Leaf 1 EDX bits.
pub mod edx1 {
    pub const FPU: u32 = 1 << 0;
    pub const DE: u32 = 1 << 2;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const PAE: u32 = 1 << 6;
    /// CMPXCHG8B.
    pub const CX8: u32 = 1 << 8;
    pub const APIC: u32 = 1 << 9;
    pub const SEP: u32 = 1 << 11;
    pub const MTRR: u32 = 1 << 12;
    pub const PGE: u32 = 1 << 13;
    pub const CMOV: u32 = 1 << 15;
    pub const PAT: u32 = 1 << 16;
    pub const PSE36: u32 = 1 << 17;
    /// CLFLUSH (the line size is in EBX\[15:8\]).
    pub const CLFSH: u32 = 1 << 19;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
}

/// Leaf 1 ECX bits.
pub mod ecx1 {
    pub const SSE3: u32 = 1 << 0;
    pub const SSSE3: u32 = 1 << 9;
    pub const SSE41: u32 = 1 << 19;
    pub const SSE42: u32 = 1 << 20;
    /// Running under a hypervisor: guests then know that model-specific
    /// hardware (performance counters, machine-check banks) is virtual, as
    /// QEMU's models tell them too.
    pub const HYPERVISOR: u32 = 1 << 31;
    /// PCLMULQDQ (the full model only).
    pub const PCLMULQDQ: u32 = 1 << 1;
    /// AES-NI (the full model only).
    pub const AES: u32 = 1 << 25;
    /// CMPXCHG16B.
    pub const CX16: u32 = 1 << 13;
    /// Process-context identifiers (CR4.PCIDE).
    pub const PCID: u32 = 1 << 17;
    pub const MOVBE: u32 = 1 << 22;
    pub const POPCNT: u32 = 1 << 23;
    /// XSAVE, XRSTOR, XGETBV, XSETBV and CR4.OSXSAVE.
    pub const XSAVE: u32 = 1 << 26;
    /// Mirrors CR4.OSXSAVE.
    pub const OSXSAVE: u32 = 1 << 27;
    /// AVX: VEX-encoded 128- and 256-bit vector instructions and the YMM
    /// state (advertised only with [`crate::Cpu::set_avx`]).
    pub const AVX: u32 = 1 << 28;
    /// FMA3: the fused multiply-adds (advertised with AVX).
    pub const FMA: u32 = 1 << 12;
    /// F16C: VCVTPH2PS and VCVTPS2PH (advertised with AVX).
    pub const F16C: u32 = 1 << 29;
    pub const RDRAND: u32 = 1 << 30;
}

/// Leaf 7 subleaf 0 EBX bits.
pub mod ebx7 {
    /// RDFSBASE/RDGSBASE/WRFSBASE/WRGSBASE and CR4.FSGSBASE.
    pub const FSGSBASE: u32 = 1 << 0;
    /// The IA32_TSC_ADJUST MSR.
    pub const TSC_ADJUST: u32 = 1 << 1;
    pub const BMI1: u32 = 1 << 3;
    /// AVX2: the 256-bit integer forms, permutes, variable shifts and
    /// gathers (advertised with AVX).
    pub const AVX2: u32 = 1 << 5;
    pub const SMEP: u32 = 1 << 7;
    pub const BMI2: u32 = 1 << 8;
    /// Enhanced REP MOVSB/STOSB: the byte forms are the fast way to copy and
    /// fill (the interpreter moves them a page at a time).
    pub const ERMS: u32 = 1 << 9;
    pub const INVPCID: u32 = 1 << 10;
    pub const RDSEED: u32 = 1 << 18;
    /// ADCX and ADOX.
    pub const ADX: u32 = 1 << 19;
    /// SMAP, with CLAC and STAC.
    pub const SMAP: u32 = 1 << 20;
    pub const CLFLUSHOPT: u32 = 1 << 23;
    pub const CLWB: u32 = 1 << 24;
}

/// Leaf 7 subleaf 0 ECX bits.
pub mod ecx7 {
    /// User-mode instruction prevention (CR4.UMIP): SGDT, SIDT, SLDT, SMSW
    /// and STR are #GP(0) at CPL > 0.
    pub const UMIP: u32 = 1 << 2;
    pub const RDPID: u32 = 1 << 22;
}

/// Leaf 0Dh subleaf 1 EAX bits.
pub mod eax_d1 {
    pub const XSAVEOPT: u32 = 1 << 0;
    /// XSAVEC and the compacted form of XRSTOR.
    pub const XSAVEC: u32 = 1 << 1;
}

/// Leaf 8000_0007 EDX bits (advanced power management).
pub mod edx87 {
    /// Invariant TSC: the counter runs at a constant rate in every P-, C- and T-state.
    pub const INVARIANT_TSC: u32 = 1 << 8;
}

/// Leaf 8000_0001 EDX bits.
pub mod edx81 {
    pub const SYSCALL: u32 = 1 << 11;
    pub const NX: u32 = 1 << 20;
    /// RDTSCP and IA32_TSC_AUX.
    pub const RDTSCP: u32 = 1 << 27;
    pub const LM: u32 = 1 << 29;
}

/// Leaf 8000_0001 ECX bits.
pub mod ecx81 {
    pub const LAHF_LM: u32 = 1 << 0;
    /// ABM: LZCNT (and POPCNT).
    pub const ABM: u32 = 1 << 5;
    /// 3DNowPrefetch: PREFETCH and PREFETCHW.
    pub const PREFETCHW: u32 = 1 << 8;
    /// PerfCtrExtCore: six core counters at C001_0200h-C001_020Bh. Not
    /// advertised: the model has the four legacy counters only
    /// (C001_0000h-C001_0007h, which every AMD64 CPU has).
    pub const PERF_CTR_EXT_CORE: u32 = 1 << 23;
}

const VENDOR: &[u8; 12] = b"AuthenticAMD";
const BRAND: &[u8; 48] = b"ferrovm x86-64 interpreter CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

fn vendor_regs() -> [u32; 3] {
    let w = |i: usize| u32::from_le_bytes([VENDOR[i], VENDOR[i + 1], VENDOR[i + 2], VENDOR[i + 3]]);
    // EBX, EDX, ECX order.
    [w(0), w(4), w(8)]
}

/// The features advertised in leaf 1 EDX.
pub const LEAF1_EDX: u32 = edx1::DE
    | edx1::PSE
    | edx1::TSC
    | edx1::MSR
    | edx1::PAE
    | edx1::APIC
    | edx1::SEP
    | edx1::MTRR
    | edx1::PGE
    | edx1::CMOV
    | edx1::PAT
    | edx1::PSE36
    | edx1::CX8
    | edx1::CLFSH
    | edx1::FPU
    | edx1::MMX
    | edx1::FXSR
    | edx1::SSE
    | edx1::SSE2;
/// The features advertised in leaf 1 ECX.
pub const LEAF1_ECX: u32 = ecx1::CX16
    | ecx1::PCID
    | ecx1::MOVBE
    | ecx1::POPCNT
    | ecx1::XSAVE
    | ecx1::RDRAND
    | ecx1::SSE3
    | ecx1::SSSE3
    | ecx1::SSE41
    | ecx1::SSE42
    | ecx1::HYPERVISOR;
/// Structured extended features (leaf 7 subleaf 0).
pub const LEAF7_EBX: u32 = ebx7::FSGSBASE
    | ebx7::TSC_ADJUST
    | ebx7::BMI1
    | ebx7::SMEP
    | ebx7::BMI2
    | ebx7::ERMS
    | ebx7::INVPCID
    | ebx7::RDSEED
    | ebx7::ADX
    | ebx7::SMAP
    | ebx7::CLFLUSHOPT
    | ebx7::CLWB;
pub const LEAF7_ECX: u32 = ecx7::UMIP | ecx7::RDPID;
/// Extended features (leaf 8000_0001).
pub const LEAF81_EDX: u32 = edx81::SYSCALL | edx81::NX | edx81::RDTSCP | edx81::LM;
pub const LEAF81_ECX: u32 = ecx81::LAHF_LM | ecx81::ABM | ecx81::PREFETCHW;

/// `regs`, CPUID's answer for `leaf`, as a model without the XSAVE feature
/// set answers it (see [`crate::Cpu::set_xsave`]).
pub fn without_xsave(leaf: u32, regs: [u32; 4]) -> [u32; 4] {
    match leaf {
        1 => [regs[0], regs[1], regs[2] & !(ecx1::XSAVE | ecx1::OSXSAVE), regs[3]],
        0xd => [0; 4],
        _ => regs,
    }
}

/// `regs`, CPUID's answer for `leaf`/`sub`, as the model with AVX answers
/// it (see [`crate::Cpu::set_avx`]): CPUID.1:ECX.AVX, FMA and F16C,
/// CPUID.(7,0):EBX.AVX2, and in leaf 0Dh the
/// YMM component (XCR0 bit 2, 256 bytes at offset 576 in the standard
/// format), with the area sizes for the XCR0 in `state`.
pub fn with_avx(state: &CpuState, leaf: u32, sub: u32, regs: [u32; 4]) -> [u32; 4] {
    use crate::ops::xsave::{area_size, SUPPORTED_AVX, YMM_OFFSET, YMM_SIZE};
    match (leaf, sub) {
        (1, _) => [regs[0], regs[1], regs[2] | ecx1::AVX | ecx1::FMA | ecx1::F16C, regs[3]],
        (7, 0) => [regs[0], regs[1] | ebx7::AVX2, regs[2], regs[3]],
        (0xd, 0) => {
            let max = area_size(SUPPORTED_AVX);
            [SUPPORTED_AVX as u32, area_size(state.xcr0), max, (SUPPORTED_AVX >> 32) as u32]
        }
        // The compacted size of the components enabled in XCR0.
        (0xd, 1) => [regs[0], area_size(state.xcr0), regs[2], regs[3]],
        // Offset 576, user state, no 64-byte alignment in the compacted form.
        (0xd, 2) => [YMM_SIZE, YMM_OFFSET, 0, 0],
        _ => regs,
    }
}

/// `regs`, CPUID's answer for `leaf`, as the model with AES-NI and
/// PCLMULQDQ answers it (see [`crate::Cpu::set_model`]).
pub fn with_crypto(leaf: u32, regs: [u32; 4]) -> [u32; 4] {
    match leaf {
        1 => [regs[0], regs[1], regs[2] | ecx1::AES | ecx1::PCLMULQDQ, regs[3]],
        _ => regs,
    }
}

/// Family 6, model 0x0f, stepping 1 (the signature reset leaves in EDX).
pub const SIGNATURE: u32 = 0x0000_06f1;

/// Execute CPUID for `leaf`/`sub`: returns EAX, EBX, ECX, EDX.
pub fn cpuid(state: &CpuState, leaf: u32, sub: u32) -> [u32; 4] {
    let [b, d, c] = vendor_regs();
    match leaf {
        0 => [0xd, b, c, d],
        1 => {
            // APIC ID 0, one logical processor, CLFLUSH line size 8 (64 bytes).
            let ebx = 8 << 8;
            // EDX.APIC mirrors IA32_APIC_BASE's global enable.
            let mut edx = LEAF1_EDX;
            if state.msr.apic_base & (1 << 11) == 0 {
                edx &= !edx1::APIC;
            }
            let mut ecx = LEAF1_ECX;
            if state.cr4 & crate::state::cr::CR4_OSXSAVE != 0 {
                ecx |= ecx1::OSXSAVE;
            }
            [SIGNATURE, ebx, ecx, edx]
        }
        // Structured extended features: subleaf 0 only (EAX = the last subleaf).
        7 if sub == 0 => [0, LEAF7_EBX, LEAF7_ECX, 0],
        // XSAVE enumeration: the supported XCR0 bits and area sizes (x87 and
        // SSE, both in the legacy region: 576 bytes in either format).
        0xd => match sub {
            0 => {
                let supported = crate::ops::xsave::SUPPORTED;
                let size = crate::ops::xsave::AREA_SIZE;
                [supported as u32, size, size, (supported >> 32) as u32]
            }
            1 => [eax_d1::XSAVEOPT | eax_d1::XSAVEC, crate::ops::xsave::AREA_SIZE, 0, 0],
            // Components 0 and 1 live in the legacy region, which has no
            // subleaf; no other component is supported.
            _ => [0, 0, 0, 0],
        },
        0x8000_0000 => [0x8000_0008, b, c, d],
        0x8000_0001 => [SIGNATURE, 0, LEAF81_ECX, LEAF81_EDX],
        0x8000_0002..=0x8000_0004 => {
            let off = (leaf - 0x8000_0002) as usize * 16;
            let w = |i: usize| {
                u32::from_le_bytes([BRAND[off + i], BRAND[off + i + 1], BRAND[off + i + 2], BRAND[off + i + 3]])
            };
            [w(0), w(4), w(8), w(12)]
        }
        // Physical and linear address widths.
        // The TSC follows the host's monotonic clock at a fixed rate.
        0x8000_0007 => [0, 0, 0, edx87::INVARIANT_TSC],
        0x8000_0008 => [(48 << 8) | mmu::paging::MAXPHYADDR, 0, 0, 0],
        // Leaves up to the maximum that describe nothing implemented read as zero.
        _ => [0, 0, 0, 0],
    }
}
