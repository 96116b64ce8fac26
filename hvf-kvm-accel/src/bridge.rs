//! The state bridge: [`CpuState`] ⇄ KVM's register structures.
//!
//! Two pure functions do the work, one each way: [`cpu_to_kvm`] and
//! [`kvm_to_cpu`]. They touch no vCPU, so they are unit-tested without KVM;
//! the vCPU code only moves [`KvmCpuState`] through the ioctls.
//!
//! | `CpuState`                         | KVM                                        |
//! | ---------------------------------- | ------------------------------------------ |
//! | gpr, rip, rflags                   | `kvm_regs`                                 |
//! | seg, ldtr, tr, gdtr, idtr          | `kvm_sregs` segments and tables            |
//! | cr0, cr2, cr3, cr4, cr8, efer      | `kvm_sregs`                                |
//! | msr.apic_base                      | `kvm_sregs.apic_base`                      |
//! | fpu, xmm, mxcsr                    | XSAVE legacy area ([`fpu_to_xsave`]), or `kvm_fpu` |
//! | ymm_hi                             | XSAVE component 2 at byte 576 ([`ymm_to_xsave`]), where the guest's CPUID offers it |
//! | xcr0                               | `kvm_xcrs` (XCR0)                          |
//! | dr                                 | `kvm_debugregs`                            |
//! | msr.* (see [`BRIDGE_MSRS`])        | `KVM_{GET,SET}_MSRS`                       |
//! | msr_table: MTRRs, BIOS_SIGN_ID, MCG_STATUS | `KVM_{GET,SET}_MSRS`               |
//! | interrupt_shadow, nmi_blocked      | `kvm_vcpu_events`                          |
//! | events.nmi_pending                 | `kvm_vcpu_events.nmi.pending`              |
//! | halted                             | `kvm_mp_state` (in-kernel LAPIC only)      |
//!
//! `KVM_GET_FPU`/`KVM_SET_FPU` do not carry MXCSR, so the vCPU moves the
//! `kvm_fpu` through the XSAVE image when KVM has `KVM_CAP_XSAVE`.
//!
//! Not carried, and kept from the state the caller passes to [`kvm_to_cpu`]:
//! - `ymm_hi` where the vCPU's CPUID does not offer the YMM component
//!   (`KvmCpuState::ymm_hi` is `None` then).
//! - `fpu.fcs` / `fpu.fds`: KVM keeps the 64-bit FXSAVE image, which has no
//!   selector fields (and CPUs with "FCS/FDS deprecated" store zero anyway).
//! - `msr.tsc_offset`: the guest TSC is KVM's own; the interpreter's offset
//!   has another base.
//! - Any MSR KVM refused (the vCPU leaves it out of the list).
//! - The rest of `msr_table`: read-only model constants (PLATFORM_ID,
//!   FEATURE_CONTROL, MTRRCAP, MCG_CAP), the machine-check bank (KVM has
//!   none until `KVM_X86_SETUP_MCE`) and AMD model registers, the legacy
//!   performance counters among them (a KVM without a virtual PMU takes
//!   writes to PerfEvtSel0-3/PerfCtr0-3 and reads back 0, which would wipe
//!   the interpreter's values on every round trip).
//! - `events.deferred_debug`, `events.mov_ss`, `events.task_trap`: the
//!   interpreter's debug-trap bookkeeping between two instructions, which
//!   KVM keeps in its own pending debug exceptions.
//!
//! Lazy flags: `CpuState.rflags` is stale for the six arithmetic flags while
//! `lazy.op != 0`. [`cpu_to_kvm`] refuses such a state; the caller
//! materialises the flags first. [`kvm_to_cpu`] sets `lazy.op = 0`.

use cpu::msr::MsrTable;
use cpu::state::{reg, seg_attr, sreg, CpuState, DescTable, LazyFlags, Segment, F80};
use kvm_bindings::{kvm_debugregs, kvm_dtable, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

use crate::AccelError;

/// MSR numbers (SDM Vol. 4).
pub mod msr_index {
    pub const TSC_ADJUST: u32 = 0x3b;
    pub const SPEC_CTRL: u32 = 0x48;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const MCG_STATUS: u32 = 0x17a;
    /// IA32_MTRR_PHYSBASE0; PHYSMASKn is PHYSBASEn + 1, up to PHYSMASK7.
    pub const MTRR_PHYSBASE0: u32 = 0x200;
    pub const MTRR_FIX64K_00000: u32 = 0x250;
    pub const MTRR_FIX16K_80000: u32 = 0x258;
    pub const MTRR_FIX16K_A0000: u32 = 0x259;
    /// IA32_MTRR_FIX4K_C0000; the seven others follow, up to F8000.
    pub const MTRR_FIX4K_C0000: u32 = 0x268;
}

/// The MSRs the bridge moves through `KVM_{GET,SET}_MSRS`, with their names
/// for messages. EFER and APIC_BASE travel in `kvm_sregs` instead.
pub const BRIDGE_MSRS: &[(u32, &str)] = &[
    (msr_index::STAR, "STAR"),
    (msr_index::LSTAR, "LSTAR"),
    (msr_index::CSTAR, "CSTAR"),
    (msr_index::SFMASK, "SFMASK"),
    (msr_index::KERNEL_GS_BASE, "KERNEL_GS_BASE"),
    (msr_index::SYSENTER_CS, "SYSENTER_CS"),
    (msr_index::SYSENTER_ESP, "SYSENTER_ESP"),
    (msr_index::SYSENTER_EIP, "SYSENTER_EIP"),
    (msr_index::TSC_AUX, "TSC_AUX"),
    (msr_index::PAT, "PAT"),
    (msr_index::MISC_ENABLE, "MISC_ENABLE"),
    (msr_index::MTRR_DEF_TYPE, "MTRR_DEF_TYPE"),
    (msr_index::TSC_ADJUST, "TSC_ADJUST"),
    (msr_index::SPEC_CTRL, "SPEC_CTRL"),
    (msr_index::BIOS_SIGN_ID, "BIOS_SIGN_ID"),
    (msr_index::MCG_STATUS, "MCG_STATUS"),
    (msr_index::MTRR_PHYSBASE0, "MTRR_PHYSBASE0"),
    (msr_index::MTRR_PHYSBASE0 + 1, "MTRR_PHYSMASK0"),
    (msr_index::MTRR_PHYSBASE0 + 2, "MTRR_PHYSBASE1"),
    (msr_index::MTRR_PHYSBASE0 + 3, "MTRR_PHYSMASK1"),
    (msr_index::MTRR_PHYSBASE0 + 4, "MTRR_PHYSBASE2"),
    (msr_index::MTRR_PHYSBASE0 + 5, "MTRR_PHYSMASK2"),
    (msr_index::MTRR_PHYSBASE0 + 6, "MTRR_PHYSBASE3"),
    (msr_index::MTRR_PHYSBASE0 + 7, "MTRR_PHYSMASK3"),
    (msr_index::MTRR_PHYSBASE0 + 8, "MTRR_PHYSBASE4"),
    (msr_index::MTRR_PHYSBASE0 + 9, "MTRR_PHYSMASK4"),
    (msr_index::MTRR_PHYSBASE0 + 10, "MTRR_PHYSBASE5"),
    (msr_index::MTRR_PHYSBASE0 + 11, "MTRR_PHYSMASK5"),
    (msr_index::MTRR_PHYSBASE0 + 12, "MTRR_PHYSBASE6"),
    (msr_index::MTRR_PHYSBASE0 + 13, "MTRR_PHYSMASK6"),
    (msr_index::MTRR_PHYSBASE0 + 14, "MTRR_PHYSBASE7"),
    (msr_index::MTRR_PHYSBASE0 + 15, "MTRR_PHYSMASK7"),
    (msr_index::MTRR_FIX64K_00000, "MTRR_FIX64K_00000"),
    (msr_index::MTRR_FIX16K_80000, "MTRR_FIX16K_80000"),
    (msr_index::MTRR_FIX16K_A0000, "MTRR_FIX16K_A0000"),
    (msr_index::MTRR_FIX4K_C0000, "MTRR_FIX4K_C0000"),
    (msr_index::MTRR_FIX4K_C0000 + 1, "MTRR_FIX4K_C8000"),
    (msr_index::MTRR_FIX4K_C0000 + 2, "MTRR_FIX4K_D0000"),
    (msr_index::MTRR_FIX4K_C0000 + 3, "MTRR_FIX4K_D8000"),
    (msr_index::MTRR_FIX4K_C0000 + 4, "MTRR_FIX4K_E0000"),
    (msr_index::MTRR_FIX4K_C0000 + 5, "MTRR_FIX4K_E8000"),
    (msr_index::MTRR_FIX4K_C0000 + 6, "MTRR_FIX4K_F0000"),
    (msr_index::MTRR_FIX4K_C0000 + 7, "MTRR_FIX4K_F8000"),
];

/// The name of a bridged MSR, or "MSR" for others.
pub fn msr_name(index: u32) -> &'static str {
    BRIDGE_MSRS.iter().find(|(i, _)| *i == index).map_or("MSR", |(_, n)| n)
}

/// Where `CpuState` keeps the bridged MSR `index`: a field of `msr`, or
/// its entry in `msr_table`.
fn msr_slot(s: &mut CpuState, index: u32) -> Option<&mut u64> {
    use msr_index::*;
    let m = &mut s.msr;
    Some(match index {
        STAR => &mut m.star,
        LSTAR => &mut m.lstar,
        CSTAR => &mut m.cstar,
        SFMASK => &mut m.sfmask,
        KERNEL_GS_BASE => &mut m.kernel_gs_base,
        SYSENTER_CS => &mut m.sysenter_cs,
        SYSENTER_ESP => &mut m.sysenter_esp,
        SYSENTER_EIP => &mut m.sysenter_eip,
        TSC_AUX => &mut m.tsc_aux,
        PAT => &mut m.pat,
        MISC_ENABLE => &mut m.misc_enable,
        MTRR_DEF_TYPE => &mut m.mtrr_def_type,
        TSC_ADJUST => &mut m.tsc_adjust,
        SPEC_CTRL => &mut m.spec_ctrl,
        _ => {
            let i = MsrTable::slot(index)?;
            &mut s.msr_table.values[i]
        }
    })
}

/// A vCPU's state in KVM's terms: what the ioctls read and write.
#[derive(Debug, Clone, Copy)]
pub struct KvmCpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    /// The upper halves of YMM0-15 (XSAVE component 2); `None` where KVM
    /// does not hold them for this guest.
    pub ymm_hi: Option<[u128; 16]>,
    pub xcr0: u64,
    pub debugregs: kvm_debugregs,
    /// `(index, value)` for every entry of [`BRIDGE_MSRS`], in that order.
    pub msrs: [(u32, u64); BRIDGE_MSRS.len()],
    /// Interrupts blocked for one instruction (after STI or MOV SS).
    pub interrupt_shadow: bool,
    /// NMIs blocked until the next IRET.
    pub nmi_masked: bool,
    /// An NMI waits for delivery (`kvm_vcpu_events.nmi.pending`).
    pub nmi_pending: bool,
    /// Waiting in HLT for an interrupt (`KVM_MP_STATE_HALTED`).
    pub halted: bool,
}

impl Default for KvmCpuState {
    fn default() -> Self {
        KvmCpuState {
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            fpu: kvm_fpu::default(),
            ymm_hi: None,
            xcr0: 0,
            debugregs: kvm_debugregs::default(),
            msrs: [(0, 0); BRIDGE_MSRS.len()],
            interrupt_shadow: false,
            nmi_masked: false,
            nmi_pending: false,
            halted: false,
        }
    }
}

/// Segment attributes ([`seg_attr`], the VMX access-rights layout) to KVM's
/// unpacked fields.
pub fn segment_to_kvm(s: &Segment) -> kvm_segment {
    let a = s.attr;
    let bit = |m: u32| u8::from(a & m != 0);
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & seg_attr::TYPE_MASK) as u8,
        s: bit(seg_attr::S),
        dpl: ((a & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8,
        present: bit(seg_attr::P),
        avl: bit(seg_attr::AVL),
        l: bit(seg_attr::L),
        db: bit(seg_attr::DB),
        g: bit(seg_attr::G),
        unusable: bit(seg_attr::UNUSABLE),
        padding: 0,
    }
}

/// KVM's unpacked segment fields to [`seg_attr`] attributes.
pub fn segment_from_kvm(k: &kvm_segment) -> Segment {
    let flag = |v: u8, m: u32| if v != 0 { m } else { 0 };
    let attr = (u32::from(k.type_) & seg_attr::TYPE_MASK)
        | flag(k.s, seg_attr::S)
        | ((u32::from(k.dpl) & 3) << seg_attr::DPL_SHIFT)
        | flag(k.present, seg_attr::P)
        | flag(k.avl, seg_attr::AVL)
        | flag(k.l, seg_attr::L)
        | flag(k.db, seg_attr::DB)
        | flag(k.g, seg_attr::G)
        | flag(k.unusable, seg_attr::UNUSABLE);
    Segment { base: k.base, limit: k.limit, attr, selector: k.selector, _pad: [0; 3] }
}

fn dtable_to_kvm(t: &DescTable) -> kvm_dtable {
    // GDTR and IDTR limits are 16 bits wide architecturally.
    kvm_dtable { base: t.base, limit: u16::try_from(t.limit).unwrap_or(u16::MAX), padding: [0; 3] }
}

fn dtable_from_kvm(t: &kvm_dtable) -> DescTable {
    DescTable { base: t.base, limit: u32::from(t.limit), _pad: 0 }
}

/// x87 tag values in the full tag word.
const TAG_VALID: u16 = 0;
const TAG_ZERO: u16 = 1;
const TAG_SPECIAL: u16 = 2;
const TAG_EMPTY: u16 = 3;

/// The full tag word to FXSAVE's abridged one (bit i set: R[i] not empty).
fn abridged_tags(ftw: u16) -> u8 {
    (0..8).fold(0u8, |acc, i| if (ftw >> (2 * i)) & 3 != TAG_EMPTY { acc | (1 << i) } else { acc })
}

/// The tag FXRSTOR derives for a non-empty register from its contents.
fn tag_of(r: &F80) -> u16 {
    let exp = r.sign_exp & 0x7fff;
    let integer_bit = r.mantissa >> 63 != 0;
    if exp == 0 && r.mantissa == 0 {
        TAG_ZERO
    } else if exp == 0x7fff || exp == 0 || !integer_bit {
        // NaN, infinity, denormal, pseudo-denormal or unnormal.
        TAG_SPECIAL
    } else {
        TAG_VALID
    }
}

/// FXSAVE's abridged tag word back to the full one.
fn full_tags(abridged: u8, regs: &[F80; 8]) -> u16 {
    (0..8).fold(0u16, |acc, i| {
        let tag = if abridged & (1 << i) != 0 { tag_of(&regs[i]) } else { TAG_EMPTY };
        acc | (tag << (2 * i))
    })
}

/// The x87 stack top (FSW bits 13:11).
fn fpu_top(fsw: u16) -> usize {
    usize::from((fsw >> 11) & 7)
}

fn f80_to_bytes(r: &F80) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&r.mantissa.to_le_bytes());
    b[8..10].copy_from_slice(&r.sign_exp.to_le_bytes());
    b
}

fn f80_from_bytes(b: &[u8; 16]) -> F80 {
    let mut m = [0u8; 8];
    m.copy_from_slice(&b[..8]);
    F80 { mantissa: u64::from_le_bytes(m), sign_exp: u16::from_le_bytes([b[8], b[9]]), _pad: [0; 3] }
}

/// Byte offsets in the FXSAVE image (64-bit layout), which is also the
/// legacy area at the start of the XSAVE image (SDM Vol. 1 §10.5.1).
mod fxsave {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
    /// XSAVE header: XSTATE_BV.
    pub const XSTATE_BV: usize = 512;
    /// Legacy area plus the XSAVE header's XSTATE_BV.
    pub const LEN: usize = 520;
}

/// XSTATE_BV bits of the x87 and SSE components.
const XSTATE_X87_SSE: u64 = 0b11;

fn region_bytes(region: &[u32]) -> [u8; fxsave::LEN] {
    let mut b = [0u8; fxsave::LEN];
    for (chunk, w) in b.chunks_mut(4).zip(region) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    b
}

fn store_region_bytes(b: &[u8; fxsave::LEN], region: &mut [u32]) {
    for (w, chunk) in region.iter_mut().zip(b.chunks(4)) {
        *w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The x87/SSE part of an XSAVE image (`kvm_xsave.region`, which KVM always
/// returns complete, with init values for components not in use) as a
/// `kvm_fpu`. Unlike `KVM_GET_FPU`, this carries MXCSR.
pub fn fpu_from_xsave(region: &[u32]) -> kvm_fpu {
    let b = region_bytes(region);
    let mut f = kvm_fpu {
        fcw: le_u16(&b, fxsave::FCW),
        fsw: le_u16(&b, fxsave::FSW),
        ftwx: b[fxsave::FTW],
        last_opcode: le_u16(&b, fxsave::FOP),
        last_ip: le_u64(&b, fxsave::FIP),
        last_dp: le_u64(&b, fxsave::FDP),
        mxcsr: le_u32(&b, fxsave::MXCSR),
        ..Default::default()
    };
    for (i, st) in f.fpr.iter_mut().enumerate() {
        st.copy_from_slice(&b[fxsave::ST + 16 * i..][..16]);
    }
    for (i, x) in f.xmm.iter_mut().enumerate() {
        x.copy_from_slice(&b[fxsave::XMM + 16 * i..][..16]);
    }
    f
}

/// Write `f` into the x87/SSE part of an XSAVE image and mark both
/// components in use, leaving MXCSR_MASK and the other components as they
/// are. `KVM_SET_FPU` ignores MXCSR; `KVM_SET_XSAVE` with this does not.
pub fn fpu_to_xsave(f: &kvm_fpu, region: &mut [u32]) {
    let mut b = region_bytes(region);
    b[fxsave::FCW..][..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[fxsave::FSW..][..2].copy_from_slice(&f.fsw.to_le_bytes());
    b[fxsave::FTW] = f.ftwx;
    b[fxsave::FOP..][..2].copy_from_slice(&f.last_opcode.to_le_bytes());
    b[fxsave::FIP..][..8].copy_from_slice(&f.last_ip.to_le_bytes());
    b[fxsave::FDP..][..8].copy_from_slice(&f.last_dp.to_le_bytes());
    b[fxsave::MXCSR..][..4].copy_from_slice(&f.mxcsr.to_le_bytes());
    for (i, st) in f.fpr.iter().enumerate() {
        b[fxsave::ST + 16 * i..][..16].copy_from_slice(st);
    }
    for (i, x) in f.xmm.iter().enumerate() {
        b[fxsave::XMM + 16 * i..][..16].copy_from_slice(x);
    }
    let bv = le_u64(&b, fxsave::XSTATE_BV) | XSTATE_X87_SSE;
    b[fxsave::XSTATE_BV..][..8].copy_from_slice(&bv.to_le_bytes());
    store_region_bytes(&b, region);
}

/// XSTATE_BV bit of the YMM component.
const XSTATE_YMM: u64 = 1 << 2;
/// Where the YMM component sits in the standard-format XSAVE image
/// (CPUID.(0Dh,2).EBX), and its size.
const YMM_OFFSET: usize = 576;
const YMM_SIZE: usize = 256;

/// The upper halves of YMM0-15 in an XSAVE image (`kvm_xsave.region`):
/// the component at byte 576 when XSTATE_BV bit 2 says it is in use, and
/// its init state (zeros) otherwise.
pub fn ymm_from_xsave(region: &[u32]) -> [u128; 16] {
    let mut y = [0u128; 16];
    let words = (YMM_OFFSET + YMM_SIZE) / 4;
    if region.len() < words || le_u64(&region_bytes(region), fxsave::XSTATE_BV) & XSTATE_YMM == 0 {
        return y;
    }
    for (i, v) in y.iter_mut().enumerate() {
        let w = &region[YMM_OFFSET / 4 + 4 * i..][..4];
        *v = w.iter().rev().fold(0u128, |acc, &x| (acc << 32) | u128::from(x));
    }
    y
}

/// Write the upper halves of YMM0-15 into an XSAVE image: the component
/// at byte 576, and XSTATE_BV bit 2 set unless they are all zero (the init
/// state, which XRSTOR then gives without reading the component). The
/// other components and the legacy area stay as they are.
pub fn ymm_to_xsave(y: &[u128; 16], region: &mut [u32]) {
    let words = (YMM_OFFSET + YMM_SIZE) / 4;
    if region.len() < words {
        return;
    }
    for (i, v) in y.iter().enumerate() {
        for k in 0..4 {
            region[YMM_OFFSET / 4 + 4 * i + k] = (v >> (32 * k)) as u32;
        }
    }
    let bv_word = fxsave::XSTATE_BV / 4;
    let bv = u64::from(region[bv_word]) | (u64::from(region[bv_word + 1]) << 32);
    let bv = if y.iter().any(|&v| v != 0) { bv | XSTATE_YMM } else { bv & !XSTATE_YMM };
    region[bv_word] = bv as u32;
    region[bv_word + 1] = (bv >> 32) as u32;
}

/// `CpuState` → KVM. Fails when the arithmetic flags are still lazy.
pub fn cpu_to_kvm(s: &CpuState) -> Result<KvmCpuState, AccelError> {
    if s.lazy.op != 0 {
        return Err(AccelError::LazyFlags { op: s.lazy.op });
    }
    let g = &s.gpr;
    let regs = kvm_regs {
        rax: g[reg::RAX],
        rbx: g[reg::RBX],
        rcx: g[reg::RCX],
        rdx: g[reg::RDX],
        rsi: g[reg::RSI],
        rdi: g[reg::RDI],
        rsp: g[reg::RSP],
        rbp: g[reg::RBP],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: s.rip,
        rflags: s.rflags,
    };
    let sregs = kvm_sregs {
        cs: segment_to_kvm(&s.seg[sreg::CS]),
        ds: segment_to_kvm(&s.seg[sreg::DS]),
        es: segment_to_kvm(&s.seg[sreg::ES]),
        fs: segment_to_kvm(&s.seg[sreg::FS]),
        gs: segment_to_kvm(&s.seg[sreg::GS]),
        ss: segment_to_kvm(&s.seg[sreg::SS]),
        tr: segment_to_kvm(&s.tr),
        ldt: segment_to_kvm(&s.ldtr),
        gdt: dtable_to_kvm(&s.gdtr),
        idt: dtable_to_kvm(&s.idtr),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.msr.apic_base,
        // No pending external interrupt; the vCPU keeps KVM's own.
        interrupt_bitmap: [0; 4],
    };

    // FXSAVE stores the x87 registers in stack order: fpr[i] is ST(i).
    let top = fpu_top(s.fpu.fsw);
    let mut fpu = kvm_fpu {
        fcw: s.fpu.fcw,
        fsw: s.fpu.fsw,
        ftwx: abridged_tags(s.fpu.ftw),
        last_opcode: s.fpu.fop,
        last_ip: s.fpu.fip,
        last_dp: s.fpu.fdp,
        mxcsr: s.mxcsr,
        ..Default::default()
    };
    for (i, st) in fpu.fpr.iter_mut().enumerate() {
        *st = f80_to_bytes(&s.fpu.regs[(top + i) & 7]);
    }
    for (dst, x) in fpu.xmm.iter_mut().zip(&s.xmm) {
        *dst = x.to_le_bytes();
    }

    let debugregs =
        kvm_debugregs { db: [s.dr[0], s.dr[1], s.dr[2], s.dr[3]], dr6: s.dr[6], dr7: s.dr[7], ..Default::default() };

    let mut copy = *s;
    let mut msrs = [(0u32, 0u64); BRIDGE_MSRS.len()];
    for (slot, (index, _)) in msrs.iter_mut().zip(BRIDGE_MSRS) {
        let v = msr_slot(&mut copy, *index).map_or(0, |v| *v);
        *slot = (*index, v);
    }

    Ok(KvmCpuState {
        regs,
        sregs,
        fpu,
        ymm_hi: Some(s.ymm_hi),
        xcr0: s.xcr0,
        debugregs,
        msrs,
        interrupt_shadow: s.interrupt_shadow != 0,
        nmi_masked: s.nmi_blocked != 0,
        nmi_pending: s.events.nmi_pending,
        halted: s.halted != 0,
    })
}

/// KVM → `CpuState`, written over `s`. Fields KVM does not hold (see the
/// module comment) keep their values in `s`. The flags come back
/// materialised: `lazy` is cleared.
pub fn kvm_to_cpu(k: &KvmCpuState, s: &mut CpuState) {
    let r = &k.regs;
    s.gpr =
        [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15];
    s.rip = r.rip;
    s.rflags = r.rflags;
    s.lazy = LazyFlags::default();

    let sr = &k.sregs;
    s.seg[sreg::ES] = segment_from_kvm(&sr.es);
    s.seg[sreg::CS] = segment_from_kvm(&sr.cs);
    s.seg[sreg::SS] = segment_from_kvm(&sr.ss);
    s.seg[sreg::DS] = segment_from_kvm(&sr.ds);
    s.seg[sreg::FS] = segment_from_kvm(&sr.fs);
    s.seg[sreg::GS] = segment_from_kvm(&sr.gs);
    s.tr = segment_from_kvm(&sr.tr);
    s.ldtr = segment_from_kvm(&sr.ldt);
    s.gdtr = dtable_from_kvm(&sr.gdt);
    s.idtr = dtable_from_kvm(&sr.idt);
    s.cr0 = sr.cr0;
    s.cr2 = sr.cr2;
    s.cr3 = sr.cr3;
    s.cr4 = sr.cr4;
    s.cr8 = sr.cr8;
    s.efer = sr.efer;
    s.msr.apic_base = sr.apic_base;
    s.cpl = if !s.protected() {
        0
    } else if s.v86() {
        3
    } else {
        (s.seg[sreg::CS].selector & 3) as u8
    };

    let f = &k.fpu;
    let top = fpu_top(f.fsw);
    for (i, st) in f.fpr.iter().enumerate() {
        s.fpu.regs[(top + i) & 7] = f80_from_bytes(st);
    }
    s.fpu.fcw = f.fcw;
    s.fpu.fsw = f.fsw;
    s.fpu.ftw = full_tags(f.ftwx, &s.fpu.regs);
    s.fpu.fop = f.last_opcode;
    s.fpu.fip = f.last_ip;
    s.fpu.fdp = f.last_dp;
    for (x, src) in s.xmm.iter_mut().zip(&f.xmm) {
        *x = u128::from_le_bytes(*src);
    }
    s.mxcsr = f.mxcsr;
    if let Some(y) = k.ymm_hi {
        s.ymm_hi = y;
    }
    s.xcr0 = k.xcr0;

    let d = &k.debugregs;
    s.dr[..4].copy_from_slice(&d.db);
    // DR4 and DR5 alias DR6 and DR7.
    s.dr[4] = d.dr6;
    s.dr[5] = d.dr7;
    s.dr[6] = d.dr6;
    s.dr[7] = d.dr7;

    for &(index, value) in &k.msrs {
        if let Some(slot) = msr_slot(s, index) {
            *slot = value;
        }
    }

    s.interrupt_shadow = u8::from(k.interrupt_shadow);
    s.nmi_blocked = u8::from(k.nmi_masked);
    s.events.nmi_pending = k.nmi_pending;
    s.halted = u8::from(k.halted);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpu::state::{cr, flags};

    /// A 64-bit CPL3 state with every bridged field away from its default.
    fn busy_state() -> CpuState {
        use seg_attr::*;
        let mut s = CpuState::reset();
        for (i, g) in s.gpr.iter_mut().enumerate() {
            *g = 0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 1) ^ 0x8000_0000_0000_0000;
        }
        s.rip = 0x0000_7fff_1234_5678;
        s.rflags = flags::FIXED | flags::CF | flags::ZF | flags::OF | flags::IF | flags::IOPL | flags::AC;
        let code = P | S | TYPE_CODE | TYPE_RW | TYPE_ACCESSED | L | G | (3 << DPL_SHIFT);
        let data = P | S | TYPE_RW | TYPE_ACCESSED | DB | G | (3 << DPL_SHIFT);
        s.seg = [Segment { base: 0, limit: 0xffff_ffff, attr: data, selector: 0x2b, _pad: [0; 3] }; 6];
        s.seg[sreg::CS] = Segment { base: 0, limit: 0xffff_ffff, attr: code, selector: 0x33, _pad: [0; 3] };
        s.seg[sreg::ES].attr |= UNUSABLE;
        s.seg[sreg::ES].selector = 0;
        s.seg[sreg::FS].base = 0x7f00_dead_b000;
        s.seg[sreg::GS].base = 0xffff_8880_0000_1000;
        s.seg[sreg::GS].attr |= AVL;
        s.tr = Segment { base: 0xffff_fe00_0000_3000, limit: 0x4087, attr: P | 11, selector: 0x40, _pad: [0; 3] };
        s.ldtr = Segment { base: 0x1234_0000, limit: 0xfff, attr: P | 2, selector: 0x50, _pad: [0; 3] };
        s.gdtr = DescTable { base: 0xffff_fe00_0000_1000, limit: 0x7f, _pad: 0 };
        s.idtr = DescTable { base: 0xffff_fe00_0000_0000, limit: 0xfff, _pad: 0 };
        s.cr0 = cr::CR0_PE | cr::CR0_MP | cr::CR0_ET | cr::CR0_NE | cr::CR0_WP | cr::CR0_AM | cr::CR0_PG;
        s.cr2 = 0x0dea_dbee_f000;
        s.cr3 = 0x0123_4000;
        s.cr4 = cr::CR4_PAE | cr::CR4_PGE | cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT;
        s.cr8 = 5;
        s.efer = cr::EFER_SCE | cr::EFER_LME | cr::EFER_LMA | cr::EFER_NXE;
        s.xcr0 = 3;
        s.dr = [0x1000, 0x2000, 0x3000, 0x4000, 0xffff_4ff1, 0x0702, 0xffff_4ff1, 0x0702];
        s.msr.star = 0x0023_0010_0000_0000;
        s.msr.lstar = 0xffff_ffff_8160_0000;
        s.msr.cstar = 0xffff_ffff_8160_1000;
        s.msr.sfmask = 0x4_7700;
        s.msr.kernel_gs_base = 0xffff_8880_7fc0_0000;
        s.msr.sysenter_cs = 0x10;
        s.msr.sysenter_esp = 0xffff_fe00_0000_5000;
        s.msr.sysenter_eip = 0xffff_ffff_8160_2000;
        s.msr.tsc_aux = 3;
        s.msr.apic_base = 0xfee0_0000 | (1 << 11);
        s.msr.pat = 0x0407_0504_0007_0406;
        s.msr.misc_enable = 1;
        s.msr.mtrr_def_type = 0xc06;
        s.msr.tsc_adjust = 77;
        s.msr.spec_ctrl = 1;
        s.msr_table.set(msr_index::MTRR_PHYSBASE0 + 3, 0xf_f000_0800);
        s.msr_table.set(msr_index::MTRR_FIX4K_C0000 + 7, 0x0505_0505_0505_0505);
        s.msr_table.set(msr_index::BIOS_SIGN_ID, 0x1_0000_0000);
        s.msr_table.set(msr_index::MCG_STATUS, 4);
        s.events.nmi_pending = true;
        // x87: TOP = 6, R6 = 1.0, R7 = 0.0, R0 = NaN; the others empty.
        s.fpu.fsw = 6 << 11;
        s.fpu.fcw = 0x027f;
        s.fpu.regs[6] = F80 { mantissa: 1 << 63, sign_exp: 0x3fff, _pad: [0; 3] };
        s.fpu.regs[7] = F80::default();
        s.fpu.regs[0] = F80 { mantissa: 0xc000_0000_0000_0000, sign_exp: 0xffff, _pad: [0; 3] };
        // R6 valid (tag 0), R7 zero, R0 special, R1..R5 empty.
        s.fpu.ftw = 0x0ffc | (TAG_ZERO << 14) | TAG_SPECIAL;
        s.fpu.fop = 0x5d9;
        s.fpu.fip = 0xffff_ffff_8100_0010;
        s.fpu.fdp = 0xffff_8880_0000_0040;
        for (i, x) in s.xmm.iter_mut().enumerate() {
            *x = (0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128 << (i % 8)) ^ i as u128;
        }
        s.mxcsr = 0x1fa0;
        s.cpl = 3;
        s.interrupt_shadow = 1;
        s.nmi_blocked = 1;
        s
    }

    #[test]
    fn round_trip_through_kvm_structures() {
        let s = busy_state();
        let k = cpu_to_kvm(&s).unwrap();
        assert_eq!(k.regs.rbx, s.gpr[reg::RBX]);
        assert_eq!(k.regs.r15, s.gpr[15]);
        assert_eq!(k.sregs.cs.l, 1);
        assert_eq!(k.sregs.cs.dpl, 3);
        assert_eq!(k.sregs.es.unusable, 1);
        assert_eq!(k.sregs.gs.avl, 1);
        assert_eq!(k.sregs.tr.type_, 11);
        assert_eq!(k.sregs.tr.s, 0);
        // ST(0) is R6.
        assert_eq!(k.fpu.fpr[0][7], 0x80);
        assert_eq!(k.fpu.fpr[0][9], 0x3f);
        assert_eq!(k.fpu.ftwx, 0b1100_0001);
        let mut back = CpuState::reset();
        // Fields KVM does not hold come from the base state.
        back.fpu.fcs = s.fpu.fcs;
        back.fpu.fds = s.fpu.fds;
        back.msr.tsc_offset = s.msr.tsc_offset;
        kvm_to_cpu(&k, &mut back);
        assert_eq!(back, s);
    }

    #[test]
    fn table_msrs_and_a_pending_nmi_cross_the_bridge() {
        let s = busy_state();
        let k = cpu_to_kvm(&s).unwrap();
        let msr = |i: u32| k.msrs.iter().find(|e| e.0 == i).map(|e| e.1);
        assert_eq!(msr(msr_index::MTRR_PHYSBASE0 + 3), Some(0xf_f000_0800));
        assert_eq!(msr(msr_index::MTRR_FIX4K_C0000 + 7), Some(0x0505_0505_0505_0505));
        assert_eq!(msr(msr_index::MCG_STATUS), Some(4));
        assert!(k.nmi_pending);
        // Every bridged MSR has a home in CpuState, once.
        let mut t = CpuState::reset();
        for (i, (index, name)) in BRIDGE_MSRS.iter().enumerate() {
            assert!(msr_slot(&mut t, *index).is_some(), "{name} has no field");
            assert!(BRIDGE_MSRS[..i].iter().all(|e| e.0 != *index), "{name} twice");
        }
        // The other way: KVM's values land in the table; an MSR KVM refused
        // (absent from the list) keeps the base state's value.
        let mut k2 = k;
        k2.nmi_pending = false;
        for e in &mut k2.msrs {
            if e.0 == msr_index::MTRR_PHYSBASE0 + 3 {
                e.1 = 0x8000_0006;
            }
        }
        let mut back = s;
        kvm_to_cpu(&k2, &mut back);
        assert_eq!(back.msr_table.get(msr_index::MTRR_PHYSBASE0 + 3), Some(0x8000_0006));
        assert!(!back.events.nmi_pending);
        assert_eq!(back.msr_table.get(0xc001_0015), s.msr_table.get(0xc001_0015));
        // PerfEvtSel2 is not bridged either: the interpreter's value stays.
        let mut s2 = s;
        s2.msr_table.set(0xc001_0002, 0x43_00c0);
        let mut back2 = s2;
        kvm_to_cpu(&cpu_to_kvm(&s2).unwrap(), &mut back2);
        assert_eq!(back2.msr_table.get(0xc001_0002), Some(0x43_00c0));
    }

    #[test]
    fn every_attribute_bit_survives() {
        for bit in 0..17 {
            if (5..7).contains(&bit) || (8..12).contains(&bit) {
                continue; // DPL handled below; bits 8-11 are reserved.
            }
            let s = Segment { base: 1, limit: 2, attr: 1 << bit, selector: 3, _pad: [0; 3] };
            assert_eq!(segment_from_kvm(&segment_to_kvm(&s)), s, "attr bit {bit}");
        }
        for dpl in 0..4 {
            let s = Segment { attr: dpl << seg_attr::DPL_SHIFT, ..Default::default() };
            assert_eq!(segment_to_kvm(&s).dpl, dpl as u8);
            assert_eq!(segment_from_kvm(&segment_to_kvm(&s)), s);
        }
    }

    #[test]
    fn lazy_flags_are_refused() {
        let mut s = busy_state();
        s.lazy.op = 3;
        assert!(matches!(cpu_to_kvm(&s), Err(AccelError::LazyFlags { op: 3 })));
    }

    #[test]
    fn kvm_to_cpu_clears_lazy_flags_and_derives_cpl() {
        let k = cpu_to_kvm(&busy_state()).unwrap();
        let mut s = CpuState::reset();
        s.lazy.op = 9;
        s.cpl = 0;
        kvm_to_cpu(&k, &mut s);
        assert_eq!(s.lazy, LazyFlags::default());
        assert_eq!(s.cpl, 3);
        // Real mode: CPL 0 whatever the selector.
        let k = cpu_to_kvm(&CpuState::reset()).unwrap();
        kvm_to_cpu(&k, &mut s);
        assert_eq!(s.cpl, 0);
        assert_eq!(s, CpuState::reset());
    }

    #[test]
    fn tag_word_conversion() {
        let mut regs = [F80::default(); 8];
        regs[1] = F80 { mantissa: 1 << 63, sign_exp: 0x4000, _pad: [0; 3] }; // valid
        regs[2] = F80 { mantissa: 1, sign_exp: 0, _pad: [0; 3] }; // denormal
        regs[3] = F80::default(); // zero
        let ftw: u16 = 0xff03 | (TAG_VALID << 2) | (TAG_SPECIAL << 4) | (TAG_ZERO << 6);
        let ab = abridged_tags(ftw);
        assert_eq!(ab, 0b1110);
        assert_eq!(full_tags(ab, &regs), ftw);
    }

    #[test]
    fn fpu_through_xsave_image() {
        let k = cpu_to_kvm(&busy_state()).unwrap();
        let mut region = [0u32; 1024];
        // MXCSR_MASK and a component beyond SSE must survive.
        region[7] = 0xffbf;
        region[128] = 0b100;
        region[200] = 0xdead_beef;
        fpu_to_xsave(&k.fpu, &mut region);
        assert_eq!(region[6], 0x1fa0, "MXCSR at byte 24");
        assert_eq!(region[7], 0xffbf);
        assert_eq!(region[128], 0b111, "XSTATE_BV marks x87 and SSE in use");
        assert_eq!(region[200], 0xdead_beef);
        let f = fpu_from_xsave(&region);
        assert_eq!(f.fpr, k.fpu.fpr);
        assert_eq!(f.xmm, k.fpu.xmm);
        assert_eq!((f.fcw, f.fsw, f.ftwx, f.last_opcode), (k.fpu.fcw, k.fpu.fsw, k.fpu.ftwx, k.fpu.last_opcode));
        assert_eq!((f.last_ip, f.last_dp, f.mxcsr), (k.fpu.last_ip, k.fpu.last_dp, k.fpu.mxcsr));
    }

    #[test]
    fn ymm_upper_halves_through_the_xsave_image() {
        let mut region = vec![0u32; 1024];
        // x87 and SSE in use, and a word of another component past YMM.
        region[128] = 0b11;
        region[(576 + 256) / 4] = 0xdead_beef;
        let mut y = [0u128; 16];
        for (i, v) in y.iter_mut().enumerate() {
            *v = (u128::from(i as u32 + 1) << 120) | 0x0002_0304_0506_0708_090a_0b0c_0d0e_0f10;
        }
        ymm_to_xsave(&y, &mut region);
        assert_eq!(region[128], 0b111, "XSTATE_BV bit 2 set");
        // Little-endian: YMM1's upper half starts at byte 592.
        assert_eq!(region[592 / 4], 0x0d0e_0f10);
        assert_eq!(region[592 / 4 + 3] >> 24, 2);
        assert_eq!(ymm_from_xsave(&region), y);
        assert_eq!(region[(576 + 256) / 4], 0xdead_beef, "other components stay");
        // XSTATE_BV bit 2 clear: the init state, whatever the bytes hold.
        region[128] = 0b11;
        assert_eq!(ymm_from_xsave(&region), [0; 16]);
        // All zero: the bit is cleared.
        region[128] = 0b111;
        ymm_to_xsave(&[0; 16], &mut region);
        assert_eq!(region[128], 0b11);
        // Through the whole bridge: CpuState -> KVM -> CpuState.
        let mut s = busy_state();
        s.ymm_hi = y;
        let k = cpu_to_kvm(&s).unwrap();
        assert_eq!(k.ymm_hi, Some(y));
        let mut back = CpuState::reset();
        kvm_to_cpu(&k, &mut back);
        assert_eq!(back.ymm_hi, y);
        // Not held by KVM: the caller's values stay.
        let none = KvmCpuState { ymm_hi: None, ..k };
        let mut kept = CpuState::reset();
        kept.ymm_hi[3] = 9;
        kvm_to_cpu(&none, &mut kept);
        assert_eq!(kept.ymm_hi[3], 9);
    }

    #[test]
    fn gdt_limit_saturates_to_16_bits() {
        let t = DescTable { base: 5, limit: 0x1_0000, _pad: 0 };
        assert_eq!(dtable_to_kvm(&t).limit, 0xffff);
    }
}
