//! The guest's CPUID model: `KVM_GET_SUPPORTED_CPUID`, filtered into one
//! consistent processor.
//!
//! KVM reports what it *can* virtualise. A guest shown all of it goes looking
//! for paravirtual interfaces (which invite `vmcall`, and on kvm_pvm hosts
//! `KVM_RUN` never returns from one), enables XSAVE-managed state, and at CPL0
//! runs instructions that KVM's instruction emulator cannot execute (on hosts
//! where ring-0 guest code runs through that emulator, every such instruction
//! ends the run with an emulation failure). Each item below is hidden for the
//! reason written beside it; [`HIDDEN_BITS`] and [`HIDDEN_LEAVES`] are the
//! table, and the code applies them as data.
//!
//! Hidden bits:
//!
//! | leaf.sub:reg bit | feature | why hidden |
//! | --- | --- | --- |
//! | 1:ECX 31 | hypervisor | tells the guest to probe the 0x4000_0000 leaves for paravirtual interfaces (kvmclock, PV EOI, PV spinlock kick, PV IPI, PV sched-yield); the hypercall ones are `vmcall`/`vmmcall` |
//! | 1:ECX 5 | VMX | nested virtualisation: a guest hypervisor would issue VMX instructions and `vmcall` |
//! | 0x8000_0001:ECX 2 | SVM | the same for AMD (`vmrun`, `vmmcall`) |
//! | 1:ECX 3 | MONITOR/MWAIT | idle must be HLT, which the host handles by sleeping; `mwait` at CPL0 is not executed by KVM's emulator |
//! | 1:ECX 13 | CX16 | `cmpxchg16b` at CPL0 fails in KVM's emulator (Linux uses it for `this_cpu_cmpxchg_double` and SLUB) |
//! | 1:ECX 26, 27 | XSAVE, OSXSAVE | `xgetbv`/`xsave`/`xsaveopt`/`xrstor` at CPL0 fail in KVM's emulator; without XSAVE the guest switches FPU state with `fxsave`/`fxrstor`, which the emulator has |
//! | 1:ECX 12, 28, 29 | FMA, AVX, F16C | need XSAVE-managed YMM state, which the guest cannot enable without XSAVE |
//! | 7.0:EBX 5, 16, 17, 21, 26, 27, 28, 30, 31 | AVX2, AVX-512 family | the same: XSAVE-managed state |
//! | 7.0:EBX 14 | MPX | XSAVE-managed bound registers |
//! | 7.0:ECX 1, 6, 9, 10, 11, 12, 14 | AVX-512 VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ, VAES, VPCLMULQDQ | VEX/EVEX encodings needing XSAVE-managed state |
//! | 7.0:EDX 2, 3, 8, 22, 23, 24, 25 | AVX-512 4VNNIW/4FMAPS/VP2INTERSECT/FP16, AMX | XSAVE-managed state |
//! | 7.1:EAX 4, 5 | AVX-VNNI, AVX512-BF16 | XSAVE-managed state |
//! | 0x8000_0001:ECX 11, 16 | XOP, FMA4 | AMD VEX-style encodings needing YMM state |
//! | 7.0:ECX 3, 4 | PKU, OSPKE | protection keys live in XSAVE state (PKRU); Linux requires XSAVE for them |
//! | 7.0:ECX 31 | PKS | supervisor protection keys live in IA32_PKRS, which the state bridge does not carry |
//! | 7.0:EBX 0 | FSGSBASE | `rdgsbase`/`wrgsbase` run at CPL0 in Linux's entry code; KVM's emulator has no register forms of 0F AE |
//! | 7.0:EBX 10 | INVPCID | run at CPL0 for TLB flushes; not in KVM's emulator |
//! | 7.0:EBX 20 | SMAP | Linux then runs `stac`/`clac` around every user-memory access at CPL0; KVM's emulator has neither |
//! | 7.0:ECX 5 | WAITPKG | `umwait`/`tpause` let the guest pause on its own terms; idle must be HLT |
//! | 7.0:ECX 22 | RDPID | reads TSC_AUX like `rdtscp` and is not in KVM's emulator; Linux uses it at CPL0 in entry code |
//! | 0x8000_0001:EDX 27 | RDTSCP | `rdtscp` at CPL0 fails in KVM's emulator (Linux's vgetcpu setup and sched clock may use it) |
//! | 7.0:EDX 14 | SERIALIZE | Linux's `sync_core()` prefers it, at CPL0; not in KVM's emulator |
//! | 7.0:EDX 29 | ARCH_CAPABILITIES | announces MSR 0x10A, which this host's KVM refuses (QEMU `-cpu host` fails on it); the guest then assumes nothing about mitigations |
//! | 7.0:EDX 30 | CORE_CAPABILITIES | announces MSR 0xCF, same class as ARCH_CAPABILITIES |
//! | 1:ECX 21, 24 | x2APIC, TSC-deadline | only with a userspace irqchip: the machine's own LAPIC is xAPIC with the one-shot and periodic timer modes |
//!
//! Removed leaves: 0x4000_0000..=0x4fff_ffff (the hypervisor range: KVM's
//! signature and PV feature bits), 0xD (XSAVE enumeration; XSAVE is hidden),
//! 0x12 (SGX), 0x14 (processor trace), 0x19 (Key Locker), 0x8000_000A (SVM).
//!
//! Kept and patched: the initial APIC ID in leaf 1 EBX\[31:24\] and the x2APIC
//! ID in leaves 0xB and 0x1F EDX are the vCPU's number.
//!
//! Limits on kvm_pvm hosts (software nested virtualisation), observed:
//! - `KVM_GET_SUPPORTED_CPUID` lists few features, yet the vCPU's CPUID
//!   (`KVM_GET_CPUID2`, and CPUID run at CPL0) also shows host features it
//!   did not list: XSAVE, AVX, AVX2, AVX-512, FMA, F16C, FSGSBASE, SMAP.
//!   Those cannot be hidden from here; [`still_visible`] names them and the
//!   vCPU warns. A Linux guest then needs `noxsave` (and the interpreter
//!   fallback for what remains).
//! - CPUID at CPL3 is not intercepted: user code sees the host's CPUID.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One hidden feature bit.
#[derive(Debug, Clone, Copy)]
pub struct HiddenBit {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u32,
    pub name: &'static str,
    /// Hidden only when the interrupt controllers are in userspace.
    pub userspace_irqchip_only: bool,
}

const fn hide(leaf: u32, subleaf: u32, reg: Reg, bit: u32, name: &'static str) -> HiddenBit {
    HiddenBit { leaf, subleaf, reg, bit, name, userspace_irqchip_only: false }
}

/// Every hidden bit; the module comment gives the reason for each.
pub const HIDDEN_BITS: &[HiddenBit] = &[
    hide(1, 0, Reg::Ecx, 31, "hypervisor"),
    hide(1, 0, Reg::Ecx, 5, "vmx"),
    hide(0x8000_0001, 0, Reg::Ecx, 2, "svm"),
    hide(1, 0, Reg::Ecx, 3, "monitor"),
    hide(1, 0, Reg::Ecx, 13, "cx16"),
    hide(1, 0, Reg::Ecx, 26, "xsave"),
    hide(1, 0, Reg::Ecx, 27, "osxsave"),
    hide(1, 0, Reg::Ecx, 12, "fma"),
    hide(1, 0, Reg::Ecx, 28, "avx"),
    hide(1, 0, Reg::Ecx, 29, "f16c"),
    hide(7, 0, Reg::Ebx, 5, "avx2"),
    hide(7, 0, Reg::Ebx, 16, "avx512f"),
    hide(7, 0, Reg::Ebx, 17, "avx512dq"),
    hide(7, 0, Reg::Ebx, 21, "avx512ifma"),
    hide(7, 0, Reg::Ebx, 26, "avx512pf"),
    hide(7, 0, Reg::Ebx, 27, "avx512er"),
    hide(7, 0, Reg::Ebx, 28, "avx512cd"),
    hide(7, 0, Reg::Ebx, 30, "avx512bw"),
    hide(7, 0, Reg::Ebx, 31, "avx512vl"),
    hide(7, 0, Reg::Ebx, 14, "mpx"),
    hide(7, 0, Reg::Ecx, 1, "avx512vbmi"),
    hide(7, 0, Reg::Ecx, 6, "avx512_vbmi2"),
    hide(7, 0, Reg::Ecx, 9, "vaes"),
    hide(7, 0, Reg::Ecx, 10, "vpclmulqdq"),
    hide(7, 0, Reg::Ecx, 11, "avx512_vnni"),
    hide(7, 0, Reg::Ecx, 12, "avx512_bitalg"),
    hide(7, 0, Reg::Ecx, 14, "avx512_vpopcntdq"),
    hide(7, 0, Reg::Edx, 2, "avx512_4vnniw"),
    hide(7, 0, Reg::Edx, 3, "avx512_4fmaps"),
    hide(7, 0, Reg::Edx, 8, "avx512_vp2intersect"),
    hide(7, 0, Reg::Edx, 22, "amx_bf16"),
    hide(7, 0, Reg::Edx, 23, "avx512_fp16"),
    hide(7, 0, Reg::Edx, 24, "amx_tile"),
    hide(7, 0, Reg::Edx, 25, "amx_int8"),
    hide(7, 1, Reg::Eax, 4, "avx_vnni"),
    hide(7, 1, Reg::Eax, 5, "avx512_bf16"),
    hide(0x8000_0001, 0, Reg::Ecx, 11, "xop"),
    hide(0x8000_0001, 0, Reg::Ecx, 16, "fma4"),
    hide(7, 0, Reg::Ecx, 3, "pku"),
    hide(7, 0, Reg::Ecx, 4, "ospke"),
    hide(7, 0, Reg::Ecx, 31, "pks"),
    hide(7, 0, Reg::Ebx, 0, "fsgsbase"),
    hide(7, 0, Reg::Ebx, 10, "invpcid"),
    hide(7, 0, Reg::Ebx, 20, "smap"),
    hide(7, 0, Reg::Ecx, 5, "waitpkg"),
    hide(7, 0, Reg::Ecx, 22, "rdpid"),
    hide(0x8000_0001, 0, Reg::Edx, 27, "rdtscp"),
    hide(7, 0, Reg::Edx, 14, "serialize"),
    hide(7, 0, Reg::Edx, 29, "arch_capabilities"),
    hide(7, 0, Reg::Edx, 30, "core_capabilities"),
    HiddenBit { leaf: 1, subleaf: 0, reg: Reg::Ecx, bit: 21, name: "x2apic", userspace_irqchip_only: true },
    HiddenBit { leaf: 1, subleaf: 0, reg: Reg::Ecx, bit: 24, name: "tsc_deadline_timer", userspace_irqchip_only: true },
];

/// Leaves removed whole, as inclusive ranges; the module comment says why.
pub const HIDDEN_LEAVES: &[(u32, u32, &str)] = &[
    (0x4000_0000, 0x4fff_ffff, "hypervisor leaves (KVM signature, PV features)"),
    (0xd, 0xd, "XSAVE enumeration"),
    (0x12, 0x12, "SGX"),
    (0x14, 0x14, "processor trace"),
    (0x19, 0x19, "Key Locker"),
    (0x8000_000a, 0x8000_000a, "SVM"),
];

/// What the model depends on besides KVM's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelOptions {
    /// The interrupt controllers are the machine's, not KVM's.
    pub userspace_irqchip: bool,
    /// The guest's kernel runs in hardware (not in KVM's instruction
    /// emulator) and wants the x86-64-v3 model (`--cpu max`): the bits of
    /// [`AVX_BITS`] are not hidden, and leaf 0Dh is kept, cut to the x87,
    /// SSE and YMM components ([`xsave_leaf`]).
    pub avx: bool,
}

/// The hidden bits that [`ModelOptions::avx`] shows: XSAVE and the AVX
/// features whose state it manages (x86-64-v3).
pub const AVX_BITS: &[&str] = &["xsave", "osxsave", "avx", "fma", "f16c", "avx2"];

/// XCR0 bits of the x87, SSE and YMM state components.
const XCR0_X87_SSE_YMM: u32 = 0b111;

/// Leaf 0Dh cut to the x87, SSE and YMM components, for the model with
/// [`ModelOptions::avx`]; `None` for the sub-leaves of other components.
/// KVM computes the sizes that depend on the guest's XCR0 (sub-leaf 0 and
/// 1 EBX) when the guest reads them; the maximum (sub-leaf 0 ECX) is that
/// of the three components. Sub-leaf 1 keeps XSAVEOPT, XSAVEC and XGETBV
/// with ECX = 1, without XSAVES (no supervisor components).
pub fn xsave_leaf(e: &kvm_cpuid_entry2) -> Option<kvm_cpuid_entry2> {
    let mut e = *e;
    match e.index {
        0 => {
            e.eax &= XCR0_X87_SSE_YMM;
            e.edx = 0;
            e.ecx = if e.eax & 0b100 != 0 { 576 + 256 } else { 576 };
        }
        1 => {
            e.eax &= 0b111;
            e.ecx = 0;
            e.edx = 0;
        }
        2 => {}
        _ => return None,
    }
    Some(e)
}

/// Whether the model hides `h` under `opts`.
fn hides(h: &HiddenBit, opts: ModelOptions) -> bool {
    (!h.userspace_irqchip_only || opts.userspace_irqchip) && !(opts.avx && AVX_BITS.contains(&h.name))
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Filter KVM's supported CPUID into the guest's model.
pub fn model(supported: &[kvm_cpuid_entry2], opts: ModelOptions) -> Vec<kvm_cpuid_entry2> {
    let mut out = without_hidden_leaves(supported);
    if opts.avx {
        out.extend(supported.iter().filter(|e| e.function == 0xd).filter_map(xsave_leaf));
    }
    for e in &mut out {
        for h in HIDDEN_BITS {
            if !hides(h, opts) {
                continue;
            }
            if e.function == h.leaf && e.index == h.subleaf {
                *reg_mut(e, h.reg) &= !(1 << h.bit);
            }
        }
    }
    out
}

/// `supported` without the leaves in [`HIDDEN_LEAVES`].
pub fn without_hidden_leaves(supported: &[kvm_cpuid_entry2]) -> Vec<kvm_cpuid_entry2> {
    supported
        .iter()
        .filter(|e| !HIDDEN_LEAVES.iter().any(|&(lo, hi, _)| (lo..=hi).contains(&e.function)))
        .copied()
        .collect()
}

/// Feature bits another model (the interpreter's) advertises, for
/// [`restrict`]: leaf 1 ECX/EDX, leaf 7.0 EBX/ECX/EDX, leaf 8000_0001h ECX/EDX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureMasks {
    pub leaf1: [u32; 2],
    pub leaf7: [u32; 3],
    pub leaf81: [u32; 2],
}

/// Clear every feature bit of `entries` that `masks` does not advertise, so
/// that code running in KVM sees no feature that code running in the
/// interpreter does not (split execution: the kernel decides what to enable
/// from the interpreter's CPUID, user code asks KVM's).
pub fn restrict(entries: &mut [kvm_cpuid_entry2], masks: &FeatureMasks) {
    for e in entries {
        match (e.function, e.index) {
            (1, _) => {
                e.ecx &= masks.leaf1[0];
                e.edx &= masks.leaf1[1];
            }
            (7, 0) => {
                e.ebx &= masks.leaf7[0];
                e.ecx &= masks.leaf7[1];
                e.edx &= masks.leaf7[2];
            }
            (7, _) => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            (0x8000_0001, _) => {
                e.ecx &= masks.leaf81[0];
                e.edx &= masks.leaf81[1];
            }
            _ => {}
        }
    }
}

/// The CPU topology the guest sees: threads per core and cores per
/// package (each package one socket). APIC IDs are laid out as Intel's
/// and QEMU's are: the thread in the low `smt_bits`, the core above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub threads: u32,
    pub cores: u32,
}

impl Topology {
    fn bits(n: u32) -> u32 {
        n.max(1).next_power_of_two().trailing_zeros()
    }

    /// Bits of the APIC ID that number the thread in its core.
    pub fn smt_bits(&self) -> u32 {
        Self::bits(self.threads)
    }

    /// Bits of the APIC ID that number the thread in its package.
    pub fn package_bits(&self) -> u32 {
        self.smt_bits() + Self::bits(self.cores)
    }
}

/// Make the model describe `t` in the leaves that tell the topology, in
/// place of the host's: leaf 1's logical-processor count and HTT flag,
/// leaf 4's core and sharing counts, leaves 0xB and 0x1F (the thread and
/// core levels; 0x1F only where KVM offers it, with the same two levels),
/// and leaf 0x8000_0008's core count. The x2APIC IDs in them are set per
/// vCPU ([`set_apic_id`]).
pub fn set_topology(entries: &mut Vec<kvm_cpuid_entry2>, t: Topology) {
    let (smt, pkg) = (t.smt_bits(), t.package_bits());
    let per_package = 1u32 << pkg;
    let has_1f = entries.iter().any(|e| e.function == 0x1f);
    entries.retain(|e| e.function != 0xb && e.function != 0x1f);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & !0x00ff_0000) | ((per_package.min(255)) << 16);
                if per_package > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { per_package } else { 1 << smt };
                let cores = 1u32 << (pkg - smt);
                e.eax = (e.eax & 0x3fff) | ((sharing - 1) & 0xfff) << 14 | ((cores - 1) & 0x3f) << 26;
            }
            0x8000_0008 => e.ecx = (e.ecx & !0xf0ff) | (pkg << 12) | ((t.threads * t.cores).saturating_sub(1) & 0xff),
            _ => {}
        }
    }
    let leaf = |function: u32, index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        ..Default::default()
    };
    for f in std::iter::once(0xb).chain(has_1f.then_some(0x1f)) {
        entries.push(leaf(f, 0, smt, t.threads, 1));
        entries.push(leaf(f, 1, pkg, t.threads * t.cores, 2));
        entries.push(leaf(f, 2, 0, 0, 0));
    }
}

/// Make the model report vCPU `id`: the initial APIC ID (leaf 1) and the
/// x2APIC ID (leaves 0xB and 0x1F).
pub fn set_apic_id(entries: &mut [kvm_cpuid_entry2], id: u32) {
    for e in entries {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | ((id & 0xff) << 24),
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
}

/// The hidden features a vCPU's effective CPUID (`KVM_GET_CPUID2` after
/// `KVM_SET_CPUID2`) still shows. Ordinary KVM keeps the model as set;
/// kvm_pvm merges host features that `KVM_GET_SUPPORTED_CPUID` does not list
/// (XSAVE, AVX, ...) back in, and they cannot be hidden from there.
pub fn still_visible(effective: &[kvm_cpuid_entry2], opts: ModelOptions) -> Vec<&'static str> {
    HIDDEN_BITS
        .iter()
        .filter(|h| hides(h, opts))
        .filter(|h| has(effective, h.leaf, h.subleaf, h.reg, h.bit))
        .map(|h| h.name)
        .collect()
}

/// The features of x86-64-v3 (with those of v2 it includes), as
/// (leaf, sub-leaf, register, bit, the name Linux shows).
pub const X86_64_V3: &[(u32, u32, Reg, u32, &str)] = &[
    (1, 0, Reg::Ecx, 0, "pni"),
    (1, 0, Reg::Ecx, 9, "ssse3"),
    (1, 0, Reg::Ecx, 12, "fma"),
    (1, 0, Reg::Ecx, 13, "cx16"),
    (1, 0, Reg::Ecx, 19, "sse4_1"),
    (1, 0, Reg::Ecx, 20, "sse4_2"),
    (1, 0, Reg::Ecx, 22, "movbe"),
    (1, 0, Reg::Ecx, 23, "popcnt"),
    (1, 0, Reg::Ecx, 26, "xsave"),
    (1, 0, Reg::Ecx, 28, "avx"),
    (1, 0, Reg::Ecx, 29, "f16c"),
    (7, 0, Reg::Ebx, 3, "bmi1"),
    (7, 0, Reg::Ebx, 5, "avx2"),
    (7, 0, Reg::Ebx, 8, "bmi2"),
    (0x8000_0001, 0, Reg::Ecx, 0, "lahf_lm"),
    (0x8000_0001, 0, Reg::Ecx, 5, "abm"),
];

/// The x86-64-v3 features ([`X86_64_V3`]) that `entries` lack, by name.
pub fn missing_v3(entries: &[kvm_cpuid_entry2]) -> Vec<&'static str> {
    X86_64_V3.iter().filter(|&&(l, s, r, b, _)| !has(entries, l, s, r, b)).map(|f| f.4).collect()
}

/// Whether the model shows a bit (for tests and diagnostics).
pub fn has(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> bool {
    entries.iter().any(|e| {
        let mut e = *e;
        e.function == leaf && e.index == subleaf && *reg_mut(&mut e, reg) & (1 << bit) != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, flags: 0, eax, ebx, ecx, edx, padding: [0; 3] }
    }

    fn host_like() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            entry(1, 0, 0x000a_0655, 0x0010_0800, 0xffff_ffff, 0xffff_ffff),
            entry(7, 0, 2, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
            entry(7, 1, 0xffff_ffff, 0, 0, 0),
            entry(0xb, 0, 1, 1, 0x100, 0),
            entry(0xb, 1, 4, 1, 0x201, 0),
            entry(0xd, 0, 7, 0x340, 0x340, 0),
            entry(0xd, 1, 0xf, 0, 0, 0),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            entry(0x4000_0001, 0, 0x01ff_ffff, 0, 0, 0),
            entry(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0xffff_ffff, 0xffff_ffff),
        ]
    }

    #[test]
    fn topology_replaces_the_hosts() {
        let mut m = host_like();
        m.push(entry(4, 0, 0x1c00_4121, 0, 0, 0)); // L1d, host's counts
        m.push(entry(4, 1, 0x1c00_4163, 0, 0, 0)); // L3
        m.push(entry(0x1f, 0, 1, 2, 0x100, 7));
        m.push(entry(0x8000_0008, 0, 0x3030, 0, 0x7, 0));
        set_topology(&mut m, Topology { threads: 2, cores: 3 });
        set_apic_id(&mut m, 5);
        let get = |f: u32, i: u32| m.iter().find(|e| e.function == f && e.index == i).copied();
        let l1 = get(1, 0).unwrap();
        assert_eq!((l1.ebx >> 16) & 0xff, 8, "2 threads x 4 core IDs");
        assert_eq!(l1.ebx >> 24, 5);
        assert_ne!(l1.edx & (1 << 28), 0, "HTT");
        for f in [0xb, 0x1f] {
            let (smt, core) = (get(f, 0).unwrap(), get(f, 1).unwrap());
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 5));
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
            assert_eq!(get(f, 2).unwrap().ecx, 2, "the end: level type 0");
            assert_eq!(m.iter().filter(|e| e.function == f).count(), 3, "the host's subleaves are gone");
        }
        let (l1d, l3) = (get(4, 0).unwrap(), get(4, 1).unwrap());
        assert_eq!((l1d.eax >> 26, (l1d.eax >> 14) & 0xfff), (3, 1), "4 core IDs; a core's 2 threads share L1");
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (3, 7), "the package shares L3");
        assert_eq!(l1d.eax & 0x3fff, 0x0121, "the cache's own fields stay");
        let ext = get(0x8000_0008, 0).unwrap();
        assert_eq!((ext.ecx & 0xff, (ext.ecx >> 12) & 0xf), (5, 3));

        let mut one = host_like();
        set_topology(&mut one, Topology { threads: 1, cores: 1 });
        assert_eq!(one.iter().find(|e| e.function == 1).unwrap().edx & (1 << 28), 0, "no HTT alone");
        assert!(!one.iter().any(|e| e.function == 0x1f), "no 0x1F where the host had none");
    }

    #[test]
    fn hidden_items_are_gone() {
        let m = model(&host_like(), ModelOptions { userspace_irqchip: false, avx: false });
        for h in HIDDEN_BITS {
            let present = has(&m, h.leaf, h.subleaf, h.reg, h.bit);
            assert_eq!(present, h.userspace_irqchip_only, "{}", h.name);
        }
        assert!(!m.iter().any(|e| e.function >= 0x4000_0000 && e.function <= 0x4fff_ffff));
        assert!(!m.iter().any(|e| e.function == 0xd));
        // What the guest needs stays: SSE2 (1:EDX 26), LM (0x8000_0001:EDX 29), NX.
        assert!(has(&m, 1, 0, Reg::Edx, 26));
        assert!(has(&m, 0x8000_0001, 0, Reg::Edx, 29));
        assert!(has(&m, 0x8000_0001, 0, Reg::Edx, 20));
        assert_eq!(m.len(), host_like().len() - 4);
    }

    #[test]
    fn userspace_irqchip_also_hides_x2apic_and_deadline_timer() {
        let m = model(&host_like(), ModelOptions { userspace_irqchip: true, avx: false });
        assert!(!has(&m, 1, 0, Reg::Ecx, 21));
        assert!(!has(&m, 1, 0, Reg::Ecx, 24));
        // SSE3 stays.
        assert!(has(&m, 1, 0, Reg::Ecx, 0));
    }

    #[test]
    fn still_visible_names_what_came_back() {
        let opts = ModelOptions { userspace_irqchip: false, avx: false };
        let mut m = model(&host_like(), opts);
        assert!(still_visible(&m, opts).is_empty());
        m.iter_mut().find(|e| e.function == 1).unwrap().ecx |= (1 << 26) | (1 << 21);
        assert_eq!(still_visible(&m, opts), ["xsave"]);
        assert_eq!(
            still_visible(&m, ModelOptions { userspace_irqchip: true, avx: false }),
            ["xsave", "x2apic", "tsc_deadline_timer"]
        );
    }

    #[test]
    fn the_avx_model_shows_xsave_and_avx_with_their_components() {
        let opts = ModelOptions { userspace_irqchip: false, avx: true };
        let mut host = host_like();
        // AVX-512 components (5-7) and their sub-leaves, XSAVES in sub-leaf 1.
        host.iter_mut().find(|e| e.function == 0xd && e.index == 0).unwrap().eax = 0xe7;
        host.push(entry(0xd, 2, 256, 576, 0, 0));
        host.push(entry(0xd, 5, 64, 1088, 0, 0));
        let m = model(&host, opts);
        for name in AVX_BITS {
            let h = HIDDEN_BITS.iter().find(|h| h.name == *name).unwrap();
            assert!(has(&m, h.leaf, h.subleaf, h.reg, h.bit), "{name}");
        }
        // AVX-512 and the rest stay hidden.
        assert!(!has(&m, 7, 0, Reg::Ebx, 16));
        assert!(!has(&m, 1, 0, Reg::Ecx, 5));
        let d: Vec<_> = m.iter().filter(|e| e.function == 0xd).map(|e| (e.index, e.eax, e.ecx, e.edx)).collect();
        assert_eq!(d, [(0, 7, 832, 0), (1, 7, 0, 0), (2, 256, 0, 0)]);
        assert!(still_visible(&m, opts).is_empty());
        assert_eq!(missing_v3(&m), ["cx16"], "CX16 stays hidden (KVM's emulator)");
        // Without it: no leaf 0Dh and the v3 features missing.
        let m = model(&host, ModelOptions::default());
        assert!(!m.iter().any(|e| e.function == 0xd));
        assert_eq!(missing_v3(&m), ["fma", "cx16", "xsave", "avx", "f16c", "avx2"]);
    }

    #[test]
    fn apic_id_patched() {
        let mut m = model(&host_like(), ModelOptions { userspace_irqchip: false, avx: false });
        set_apic_id(&mut m, 3);
        let l1 = m.iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!(l1.ebx & 0x00ff_ffff, 0x0010_0800 & 0x00ff_ffff);
        assert!(m.iter().filter(|e| e.function == 0xb).all(|e| e.edx == 3));
    }
}
