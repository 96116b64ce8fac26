//! CPUID: one documented CPU model that advertises exactly what the
//! interpreter implements.
//!
//! The vendor is "AuthenticAMD", as QEMU's `qemu64` model reports, so guests
//! take the AMD paths (SYSCALL in compatibility mode) that also match the
//! hosts the differential harness runs on. Each feature bit is set only when
//! its instructions and registers are implemented; the list grows with the
//! interpreter.
//!
//! The processor's place in the machine ([`Topology`], its APIC ID) shows in
//! leaves 1, 4 (the caches and who shares them), 0Bh (x2APIC topology),
//! 8000_0001h and 8000_0008h; see [`with_topology`].

use crate::state::CpuState;

/// The CPU models a machine can be given (`ferrovm run --cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Model {
    /// x86-64-v2 (SSE4.2, POPCNT, CX16, LAHF) with XSAVE for the x87 and
    /// SSE state, plus MOVBE, LZCNT, BMI1/BMI2 and the system features
    /// below; no AVX. The default of a [`crate::Cpu`] (`ferrovm run`'s
    /// under KVM).
    #[default]
    V2,
    /// Everything the interpreter implements: x86-64-v3 (AVX, AVX2, FMA,
    /// F16C and the YMM state in XSAVE) on top of [`Model::V2`], and AES-NI
    /// and PCLMULQDQ, and the protection keys (PKU and PKS). `ferrovm
    /// run`'s default under the interpreter and the JIT.
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
            Model::Max => "x86-64-v3: v2 plus AVX, AVX2, FMA, F16C, XSAVE with YMM; AES-NI, PCLMULQDQ; PKU, PKS",
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

    /// Whether the model has the protection keys, PKU and PKS.
    pub fn pku(self) -> bool {
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

/// The most processors a [`Topology`] may have.
pub const MAX_CPUS: u32 = 255;

/// How the machine's processors are laid out: `sockets` packages of `cores`
/// cores of `threads` logical processors (SMT threads) each.
///
/// APIC IDs follow the layout Intel documents (SDM vol. 3, 8.9) and QEMU
/// uses: the thread in the low [`smt_bits`](Topology::smt_bits), the core
/// above it in [`core_bits`](Topology::core_bits), the socket above both,
/// each field as wide as its count rounded up to a power of two. Processors
/// are numbered thread first, then core, then socket, so IDs can have gaps
/// (2 sockets of 3 cores: 0, 1, 2, 4, 5, 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Packages.
    pub sockets: u32,
    /// Cores per package.
    pub cores: u32,
    /// Logical processors per core.
    pub threads: u32,
}

impl Default for Topology {
    /// One processor.
    fn default() -> Self {
        Topology { sockets: 1, cores: 1, threads: 1 }
    }
}

/// Why a [`Topology`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A count is zero.
    #[error("sockets={sockets}, cores={cores}, threads={threads}: every count must be at least 1")]
    Zero { sockets: u32, cores: u32, threads: u32 },
    /// More processors than [`MAX_CPUS`].
    #[error("sockets={sockets}, cores={cores}, threads={threads} make {cpus} CPUs; at most {MAX_CPUS} are supported")]
    TooMany { sockets: u32, cores: u32, threads: u32, cpus: u64 },
    /// The layout needs an APIC ID past 254 (xAPIC IDs are 8 bits and 0xff
    /// is the broadcast).
    #[error(
        "sockets={sockets}, cores={cores}, threads={threads} need APIC IDs up to {max_id}; \
         xAPIC IDs stop at 254 (0xff is the broadcast): use fewer sockets or powers of two"
    )]
    ApicIds { sockets: u32, cores: u32, threads: u32, max_id: u64 },
}

/// Bits a field counting `n` values takes: ceil(log2(n)), 0 for 0 or 1.
fn width(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// `v << bits`, 0 when the shift is 32 or more (only for counts
/// [`Topology::new`] refuses).
fn shl(v: u32, bits: u32) -> u32 {
    v.checked_shl(bits).unwrap_or(0)
}

impl Topology {
    /// A topology of `sockets` packages of `cores` cores of `threads`
    /// threads, checked: each count at least 1, at most [`MAX_CPUS`]
    /// processors, and every APIC ID below 0xff.
    pub fn new(sockets: u32, cores: u32, threads: u32) -> Result<Self, TopologyError> {
        if sockets == 0 || cores == 0 || threads == 0 {
            return Err(TopologyError::Zero { sockets, cores, threads });
        }
        let cpus = u64::from(sockets).saturating_mul(u64::from(cores)).saturating_mul(u64::from(threads));
        if cpus > u64::from(MAX_CPUS) {
            return Err(TopologyError::TooMany { sockets, cores, threads, cpus });
        }
        let t = Topology { sockets, cores, threads };
        let max_id = (u64::from(sockets - 1) << t.package_shift())
            | (u64::from(cores - 1) << t.smt_bits())
            | u64::from(threads - 1);
        if max_id >= 0xff {
            return Err(TopologyError::ApicIds { sockets, cores, threads, max_id });
        }
        Ok(t)
    }

    /// The number of processors.
    pub fn cpus(&self) -> u32 {
        self.sockets.saturating_mul(self.cores).saturating_mul(self.threads)
    }

    /// Logical processors in one package.
    pub fn per_package(&self) -> u32 {
        self.cores.saturating_mul(self.threads)
    }

    /// APIC ID bits that number the threads of a core.
    pub fn smt_bits(&self) -> u32 {
        width(self.threads)
    }

    /// APIC ID bits that number the cores of a package.
    pub fn core_bits(&self) -> u32 {
        width(self.cores)
    }

    /// Where the socket's number starts in an APIC ID.
    pub fn package_shift(&self) -> u32 {
        self.smt_bits() + self.core_bits()
    }

    /// The APIC ID of the processor numbered `cpu_index` (0 is the
    /// bootstrap processor; threads count first, then cores, then sockets).
    pub fn apic_id(&self, cpu_index: u32) -> u32 {
        let threads = self.threads.max(1);
        let cores = self.cores.max(1);
        let thread = cpu_index % threads;
        let core = (cpu_index / threads) % cores;
        let socket = cpu_index / threads / cores;
        shl(socket, self.package_shift()) | shl(core, self.smt_bits()) | thread
    }
}

/// Leaf 4's caches: (type, level, ways, sets, shared by a whole package).
/// Type 1 is data, 2 instructions, 3 unified; 64-byte lines, one partition.
/// L1d and L1i 32 KiB 8-way, L2 1 MiB 16-way per core, L3 16 MiB 16-way
/// per package.
const CACHES: [(u32, u32, u32, u32, bool); 4] =
    [(1, 1, 8, 64, false), (2, 1, 8, 64, false), (3, 2, 16, 1024, false), (3, 3, 16, 16384, true)];

/// Cache line size, in bytes (also CLFLUSH's, leaf 1 EBX\[15:8\] in 8-byte units).
const LINE: u32 = 64;

/// `regs`, CPUID's answer for `leaf`/`sub`, as the processor with APIC ID
/// `apic_id` in `topology` answers it: leaf 1's initial APIC ID (EBX\[31:24\]),
/// addressable IDs per package (EBX\[23:16\]) and HTT; leaf 4's caches and
/// who shares them; leaf 0Bh's SMT and core levels; leaf 8000_0001h's
/// CmpLegacy and leaf 8000_0008h's NC and ApicIdCoreIdSize (ECX). Other
/// leaves, and the other bits of these, are left as they are.
pub fn with_topology(topology: &Topology, apic_id: u32, leaf: u32, sub: u32, regs: [u32; 4]) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = regs;
    let smt = topology.smt_bits();
    let shift = topology.package_shift();
    let per_package = topology.per_package();
    match leaf {
        1 => {
            let mut ebx = (ebx & 0xffff) | (apic_id & 0xff) << 24;
            let mut edx = edx & !edx1::HTT;
            if per_package > 1 {
                // A power of two (the IDs the package's fields can hold);
                // the field is a byte.
                ebx |= (shl(1, shift).wrapping_sub(1).min(0xfe) + 1) << 16;
                edx |= edx1::HTT;
            }
            [eax, ebx, ecx, edx]
        }
        4 => {
            let Some(&(kind, level, ways, sets, package)) = CACHES.get(sub as usize) else {
                // Past the last cache: type 0, no more caches.
                return [0; 4];
            };
            // IDs sharing the cache and core IDs in the package, less one,
            // in fields of 12 and 6 bits.
            let sharing = shl(1, if package { shift } else { smt }).wrapping_sub(1).min(0xfff);
            let cores = shl(1, topology.core_bits()).wrapping_sub(1).min(0x3f);
            // Bit 8: self-initializing.
            let eax = kind | level << 5 | 1 << 8 | sharing << 14 | cores << 26;
            [eax, (ways - 1) << 22 | (LINE - 1), sets - 1, 0]
        }
        0xb => {
            let level = match sub {
                // SMT: the shift to the core's number, threads per core.
                0 => Some((smt, topology.threads, 1)),
                // Core: the shift to the package's number, threads per package.
                1 => Some((shift, per_package, 2)),
                _ => None,
            };
            match level {
                Some((eax, count, kind)) => [eax, count & 0xffff, kind << 8 | sub, apic_id],
                None => [0, 0, sub & 0xff, apic_id],
            }
        }
        0x8000_0001 => {
            let cmp = if per_package > 1 { ecx81::CMP_LEGACY } else { 0 };
            [eax, ebx, (ecx & !ecx81::CMP_LEGACY) | cmp, edx]
        }
        0x8000_0008 => {
            let nc = per_package.saturating_sub(1).min(0xff);
            [eax, ebx, (ecx & !0xf0ff) | shift.min(0xf) << 12 | nc, edx]
        }
        _ => regs,
    }
}

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
    /// More than one logical processor per package: EBX\[23:16\] counts
    /// their IDs.
    pub const HTT: u32 = 1 << 28;
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
    /// Protection keys for user-mode pages (CR4.PKE, PKRU, RDPKRU, WRPKRU).
    pub const PKU: u32 = 1 << 3;
    /// CR4.PKE is set (the OS enabled PKU).
    pub const OSPKE: u32 = 1 << 4;
    pub const RDPID: u32 = 1 << 22;
    /// Protection keys for supervisor-mode pages (CR4.PKS, IA32_PKRS).
    pub const PKS: u32 = 1 << 31;
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
    /// CmpLegacy: the logical processors of a package are cores (AMD), set
    /// when a package has more than one, as QEMU sets it for AMD models.
    pub const CMP_LEGACY: u32 = 1 << 1;
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
        (0xd, 1) => [regs[0], crate::ops::xsave::compacted_size(state.xcr0), regs[2], regs[3]],
        // Offset 576, user state, no 64-byte alignment in the compacted form.
        (0xd, 2) => [YMM_SIZE, YMM_OFFSET, 0, 0],
        _ => regs,
    }
}

/// `regs`, CPUID's answer for `leaf`/`sub` (after [`with_avx`] when AVX is
/// on), as the model with the protection keys answers it (see
/// [`crate::Cpu::set_model`]): CPUID.(7,0):ECX.PKU and PKS, OSPKE from
/// CR4.PKE, and in leaf 0Dh the PKRU component (XCR0 bit 9, 8 bytes at
/// offset 2688 in the standard format), with the area sizes for the XCR0
/// in `state`.
pub fn with_pku(state: &CpuState, leaf: u32, sub: u32, regs: [u32; 4]) -> [u32; 4] {
    use crate::ops::xsave::{area_size, compacted_size, PKRU, PKRU_OFFSET, PKRU_SIZE};
    match (leaf, sub) {
        (7, 0) => {
            let os = if state.cr4 & crate::state::cr::CR4_PKE != 0 { ecx7::OSPKE } else { 0 };
            [regs[0], regs[1], regs[2] | ecx7::PKU | ecx7::PKS | os, regs[3]]
        }
        (0xd, 0) => {
            let supported = (u64::from(regs[3]) << 32 | u64::from(regs[0])) | PKRU;
            [supported as u32, area_size(state.xcr0), area_size(supported), (supported >> 32) as u32]
        }
        (0xd, 1) => [regs[0], compacted_size(state.xcr0), regs[2], regs[3]],
        // User state, no 64-byte alignment in the compacted form.
        (0xd, 9) => [PKRU_SIZE, PKRU_OFFSET, 0, 0],
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

/// Execute CPUID for `leaf`/`sub` on the only processor of a one-CPU
/// machine: returns EAX, EBX, ECX, EDX. [`with_topology`] places it in a
/// larger one.
pub fn cpuid(state: &CpuState, leaf: u32, sub: u32) -> [u32; 4] {
    with_topology(&Topology::default(), 0, leaf, sub, model(state, leaf, sub))
}

/// The model's answer, before [`with_topology`].
fn model(state: &CpuState, leaf: u32, sub: u32) -> [u32; 4] {
    let [b, d, c] = vendor_regs();
    match leaf {
        // Leaves up to 0Dh: 4 and 0Bh come from `with_topology`.
        0 => [0xd, b, c, d],
        1 => {
            // CLFLUSH line size 8 (64 bytes); the APIC ID and the logical
            // processor count come from `with_topology`.
            let ebx = (LINE / 8) << 8;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(sockets: u32, cores: u32, threads: u32) -> Topology {
        Topology::new(sockets, cores, threads).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ids(t: &Topology) -> Vec<u32> {
        (0..t.cpus()).map(|i| t.apic_id(i)).collect()
    }

    /// CPUID of the processor numbered `index` in `t`.
    fn leaf(t: &Topology, index: u32, leaf: u32, sub: u32) -> [u32; 4] {
        let mut c = crate::ops::testutil::long_mode();
        c.set_topology(*t, index);
        c.cpuid(leaf, sub)
    }

    #[test]
    fn apic_ids_follow_the_sockets_cores_and_threads() {
        assert_eq!(ids(&Topology::default()), [0]);
        assert_eq!(ids(&topo(1, 2, 1)), [0, 1]);
        assert_eq!(ids(&topo(1, 4, 1)), [0, 1, 2, 3]);
        assert_eq!(ids(&topo(2, 3, 1)), [0, 1, 2, 4, 5, 6], "gaps between the sockets");
        assert_eq!(ids(&topo(2, 2, 2)), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(ids(&topo(1, 3, 3)), [0, 1, 2, 4, 5, 6, 8, 9, 10]);
        assert_eq!(ids(&topo(4, 1, 1)), [0, 1, 2, 3]);
        let t = topo(2, 3, 1);
        assert_eq!((t.cpus(), t.per_package(), t.smt_bits(), t.core_bits()), (6, 3, 0, 2));
        let t = topo(2, 2, 2);
        assert_eq!((t.cpus(), t.per_package(), t.smt_bits(), t.core_bits()), (8, 4, 1, 1));
    }

    #[test]
    fn topologies_that_do_not_fit_are_refused() {
        for (s, c, t) in [(0, 1, 1), (1, 0, 1), (1, 1, 0)] {
            let e = Topology::new(s, c, t).unwrap_err();
            assert!(matches!(e, TopologyError::Zero { .. }), "{e}");
            assert!(e.to_string().contains("at least 1"), "{e}");
        }
        let e = Topology::new(1, 256, 1).unwrap_err();
        assert!(e.to_string().contains("256 CPUs") && e.to_string().contains("255"), "{e}");
        let e = Topology::new(u32::MAX, u32::MAX, u32::MAX).unwrap_err();
        assert!(matches!(e, TopologyError::TooMany { .. }), "{e}");
        // 165 CPUs, but socket 4's last core would be APIC ID 288.
        let e = Topology::new(5, 33, 1).unwrap_err();
        assert_eq!(e, TopologyError::ApicIds { sockets: 5, cores: 33, threads: 1, max_id: 288 });
        assert!(e.to_string().contains("broadcast"), "{e}");
        // The edges: ID 254 is the largest there may be.
        assert_eq!(ids(&topo(1, 255, 1)).last(), Some(&254));
        assert_eq!(ids(&topo(2, 127, 1)).last(), Some(&254));
        assert!(Topology::new(2, 128, 1).is_err());
        assert!(Topology::new(1, 1, 255).is_ok());
    }

    /// One processor answers as the model always has: only leaves 4 and
    /// 0Bh, which read zero before, describe something.
    #[test]
    fn one_cpu_answers_as_before() {
        let t = Topology::default();
        let l1 = leaf(&t, 0, 1, 0);
        assert_eq!(l1[1], 0x800, "CLFLUSH size only");
        assert_eq!(l1[3] & edx1::HTT, 0);
        assert_eq!(leaf(&t, 0, 0x8000_0001, 0)[2], LEAF81_ECX);
        assert_eq!(leaf(&t, 0, 0x8000_0008, 0), [(48 << 8) | mmu::paging::MAXPHYADDR, 0, 0, 0]);
        assert_eq!(leaf(&t, 0, 0, 0)[0], 0xd, "leaves 4 and 0Bh are below the maximum");
        // The caches: L1d, L1i, L2, L3, then none.
        assert_eq!(leaf(&t, 0, 4, 0), [0x121, (7 << 22) | 63, 63, 0]);
        assert_eq!(leaf(&t, 0, 4, 1), [0x122, (7 << 22) | 63, 63, 0]);
        assert_eq!(leaf(&t, 0, 4, 2), [0x143, (15 << 22) | 63, 1023, 0]);
        assert_eq!(leaf(&t, 0, 4, 3), [0x163, (15 << 22) | 63, 16383, 0]);
        assert_eq!(leaf(&t, 0, 4, 4), [0; 4]);
        assert_eq!(leaf(&t, 0, 0xb, 0), [0, 1, 0x100, 0]);
        assert_eq!(leaf(&t, 0, 0xb, 1), [0, 1, 0x201, 0]);
        assert_eq!(leaf(&t, 0, 0xb, 2), [0, 0, 2, 0]);
        // The free function is the one-CPU machine.
        let s = CpuState::reset();
        for (l, sub) in [(1, 0), (4, 0), (4, 3), (0xb, 1), (0x8000_0008, 0)] {
            assert_eq!(cpuid(&s, l, sub), leaf(&t, 0, l, sub), "leaf {l:#x}.{sub}");
        }
    }

    /// The cache sizes leaf 4 describes: ways * partitions * line * sets.
    #[test]
    fn leaf_4_describes_plausible_caches() {
        let sizes: Vec<u32> = (0..4)
            .map(|sub| {
                let [_, b, c, _] = leaf(&Topology::default(), 0, 4, sub);
                ((b >> 22) + 1) * (((b >> 12) & 0x3ff) + 1) * ((b & 0xfff) + 1) * (c + 1)
            })
            .collect();
        assert_eq!(sizes, [32 << 10, 32 << 10, 1 << 20, 16 << 20]);
    }

    /// What leaves 1, 4, 0Bh, 8000_0001h and 8000_0008h say of processor
    /// `index` of `t`: (APIC ID, leaf 1 EBX[23:16], HTT, leaf 4 EAX[31:26]
    /// and EAX[25:14] of L1d and L3, leaf 0Bh subleaves 0 and 1 as
    /// (EAX, EBX), leaf 8000_0008h ECX, CmpLegacy).
    #[allow(clippy::type_complexity)]
    fn described(t: &Topology, index: u32) -> (u32, u32, bool, [u32; 3], [(u32, u32); 2], u32, bool) {
        let l1 = leaf(t, index, 1, 0);
        let apic = l1[1] >> 24;
        let l4 = |sub| leaf(t, index, 4, sub)[0];
        let b0 = leaf(t, index, 0xb, 0);
        let b1 = leaf(t, index, 0xb, 1);
        let b2 = leaf(t, index, 0xb, 2);
        // Every 0Bh subleaf gives the x2APIC ID, the same as leaf 1's.
        assert_eq!([b0[3], b1[3], b2[3]], [apic; 3]);
        assert_eq!([b0[2], b1[2], b2[2]], [0x100, 0x201, 2], "level types and numbers");
        assert_eq!(&b2[..2], [0, 0], "no level past the core");
        assert_eq!(l1[1] & 0xffff, 0x800, "CLFLUSH size kept");
        assert_eq!(l4(0) >> 26, l4(3) >> 26, "core IDs the same in every cache");
        (
            apic,
            (l1[1] >> 16) & 0xff,
            l1[3] & edx1::HTT != 0,
            [l4(0) >> 26, (l4(0) >> 14) & 0xfff, (l4(3) >> 14) & 0xfff],
            [(b0[0], b0[1]), (b1[0], b1[1])],
            leaf(t, index, 0x8000_0008, 0)[2],
            leaf(t, index, 0x8000_0001, 0)[2] & ecx81::CMP_LEGACY != 0,
        )
    }

    #[test]
    fn the_topology_shows_in_cpuid() {
        // -smp 2: two cores.
        let t = topo(1, 2, 1);
        assert_eq!(described(&t, 1), (1, 2, true, [1, 0, 1], [(0, 1), (1, 2)], (1 << 12) | 1, true));
        // -smp 4: four cores.
        let t = topo(1, 4, 1);
        assert_eq!(described(&t, 3), (3, 4, true, [3, 0, 3], [(0, 1), (2, 4)], (2 << 12) | 3, true));
        // Two sockets of three cores: the fifth CPU is core 1 of socket 1.
        let t = topo(2, 3, 1);
        assert_eq!(described(&t, 4), (5, 4, true, [3, 0, 3], [(0, 1), (2, 3)], (2 << 12) | 2, true));
        // Two sockets of two cores of two threads: threads share L1 and L2.
        let t = topo(2, 2, 2);
        assert_eq!(described(&t, 7), (7, 4, true, [1, 1, 3], [(1, 2), (2, 4)], (2 << 12) | 3, true));
        assert_eq!(leaf(&t, 7, 4, 2)[0] >> 14 & 0xfff, 1, "L2 per core");
        // Sockets of one core each: one logical processor per package.
        let t = topo(4, 1, 1);
        assert_eq!(described(&t, 2), (2, 0, false, [0, 0, 0], [(0, 1), (0, 1)], 0, false));
    }

    /// The model's other parts still post-process the same leaves.
    #[test]
    fn the_model_variants_keep_the_topology() {
        let mut c = crate::ops::testutil::long_mode();
        c.set_model(Model::Max);
        c.set_topology(topo(2, 2, 2), 5);
        assert_eq!(c.apic_id(), 5);
        let [_, b, ecx, d] = c.cpuid(1, 0);
        assert_eq!(b >> 24, 5);
        assert_eq!(d & edx1::HTT, edx1::HTT);
        assert_eq!(ecx & (ecx1::AVX | ecx1::AES), ecx1::AVX | ecx1::AES);
        c.set_xsave(false);
        let [_, b, ecx, _] = c.cpuid(1, 0);
        assert_eq!((b >> 24, ecx & ecx1::XSAVE), (5, 0));
        assert_eq!(c.cpuid(0xb, 1)[3], 5);
    }

    /// The CPUID instruction gives the processor's answers.
    #[test]
    fn the_instruction_reports_the_processor() {
        use crate::ops::testutil::*;
        let mut c = long_mode();
        c.set_topology(topo(2, 3, 1), 5);
        c.state.gpr[0] = 0xb;
        c.state.gpr[1] = 1;
        exec_bytes(&mut c, &[0x0f, 0xa2]).unwrap();
        let regs = [c.state.gpr[0], c.state.gpr[3], c.state.gpr[1], c.state.gpr[2]];
        assert_eq!(regs, [2, 3, 0x201, 6]);
    }
}
