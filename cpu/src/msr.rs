//! Model-specific registers (SDM Vol. 4), kept in one table.
//!
//! The MSRs that Linux and common firmware touch are listed in `KNOWN`:
//! the architectural ones the CPU acts on live in [`crate::state::MsrState`]
//! and EFER, the rest are stored by value. The platform (the local APIC) gets
//! the x2APIC range and the TSC deadline first. Any other MSR raises #GP, as
//! hardware does.

use crate::cpu::Cpu;
use crate::exception::{Fault, GP0};
use crate::state::sreg;

pub const IA32_TSC: u32 = 0x10;
pub const IA32_PLATFORM_ID: u32 = 0x17;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_TSC_ADJUST: u32 = 0x3b;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
pub const IA32_MTRRCAP: u32 = 0xfe;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MCG_CAP: u32 = 0x179;
pub const IA32_MCG_STATUS: u32 = 0x17a;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// The protection-key rights of supervisor-mode pages (PKS).
pub const IA32_PKRS: u32 = 0x6e1;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_STAR: u32 = 0xc000_0081;
pub const IA32_LSTAR: u32 = 0xc000_0082;
pub const IA32_CSTAR: u32 = 0xc000_0083;
pub const IA32_FMASK: u32 = 0xc000_0084;
pub const IA32_FS_BASE: u32 = 0xc000_0100;
pub const IA32_GS_BASE: u32 = 0xc000_0101;
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const IA32_TSC_AUX: u32 = 0xc000_0103;

/// PerfEvtSel0 (AMD); PerfEvtSel1-3 follow.
pub const PERF_EVT_SEL0: u32 = 0xc001_0000;
/// PerfCtr0 (AMD); PerfCtr1-3 follow.
pub const PERF_CTR0: u32 = 0xc001_0004;
/// PerfEvtSel bits that are reserved (APM Vol. 2: bits 63:36 but for the
/// Host/Guest-only pair at 41:40, and bits 21 and 19): writing one is #GP.
/// Host/Guest-only are refused too, as on a CPU without SVM.
const PERF_EVT_SEL_RESERVED: u64 = 0xffff_fff0_0028_0000;
/// The counters are 48 bits wide.
const PERF_CTR_MASK: u64 = (1 << 48) - 1;

/// The variable-range MTRRs (base/mask pairs, 8 of them).
const MTRR_PHYS: u32 = 0x200;
/// The fixed-range MTRRs.
const MTRR_FIX64K_00000: u32 = 0x250;
const MTRR_FIX16K_80000: u32 = 0x258;
const MTRR_FIX16K_A0000: u32 = 0x259;
const MTRR_FIX4K_C0000: u32 = 0x268;

/// MSRs stored by value in [`MsrTable`]: (index, reset value, writable).
pub const TABLE: [(u32, u64, bool); MSR_TABLE_LEN] = [
    (IA32_PLATFORM_ID, 0, false),
    // Locked with VMX off: guests must not try to enable VMX.
    (IA32_FEATURE_CONTROL, 1, false),
    (IA32_BIOS_SIGN_ID, 0, true),
    // Variable-range MTRR count 8, fixed ranges and WC supported.
    (IA32_MTRRCAP, 0x508, false),
    // One machine-check bank, no MCG_CTL.
    (IA32_MCG_CAP, 1, false),
    (IA32_MCG_STATUS, 0, true),
    (0x400, 0, true), // MC0_CTL
    (0x401, 0, true), // MC0_STATUS
    (0x402, 0, true), // MC0_ADDR
    (0x403, 0, true), // MC0_MISC
    // AMD K7/K8 registers that Linux reads on AuthenticAMD parts.
    (0xc001_0015, 0, true), // HWCR
    // K7 CLK_CTL: 32-bit Linux's init_amd_k7 (family 6, model > 8) reads it
    // and rewrites it unless bits 31:20 hold 0x200 (AMD technical note 27212).
    (0xc001_001b, 0x2000_0000, true),
    (0xc001_0010, 0, true), // SYSCFG
    (0xc001_001f, 0, true), // NB_CFG
    (0xc001_1029, 0, true), // DE_CFG
    (0xc001_0114, 0, true), // VM_CR
    (0xc001_0117, 0, true), // VM_HSAVE_PA
    (0xc001_0140, 0, true), // OSVW_ID_LENGTH
    (0xc001_0141, 0, true), // OSVW_STATUS
    // The legacy performance counters every AMD64 CPU has (APM Vol. 2,
    // "Performance-Monitoring Counters"): PerfEvtSel0-3 then PerfCtr0-3.
    // They count nothing; [`Cpu::write_msr`] checks what is written.
    (PERF_EVT_SEL0, 0, true),
    (PERF_EVT_SEL0 + 1, 0, true),
    (PERF_EVT_SEL0 + 2, 0, true),
    (PERF_EVT_SEL0 + 3, 0, true),
    (PERF_CTR0, 0, true),
    (PERF_CTR0 + 1, 0, true),
    (PERF_CTR0 + 2, 0, true),
    (PERF_CTR0 + 3, 0, true),
    (MTRR_PHYS, 0, true),
    (MTRR_PHYS + 1, 0, true),
    (MTRR_PHYS + 2, 0, true),
    (MTRR_PHYS + 3, 0, true),
    (MTRR_PHYS + 4, 0, true),
    (MTRR_PHYS + 5, 0, true),
    (MTRR_PHYS + 6, 0, true),
    (MTRR_PHYS + 7, 0, true),
    (MTRR_PHYS + 8, 0, true),
    (MTRR_PHYS + 9, 0, true),
    (MTRR_PHYS + 10, 0, true),
    (MTRR_PHYS + 11, 0, true),
    (MTRR_PHYS + 12, 0, true),
    (MTRR_PHYS + 13, 0, true),
    (MTRR_PHYS + 14, 0, true),
    (MTRR_PHYS + 15, 0, true),
    (MTRR_FIX64K_00000, 0, true),
    (MTRR_FIX16K_80000, 0, true),
    (MTRR_FIX16K_A0000, 0, true),
    (MTRR_FIX4K_C0000, 0, true),
    (MTRR_FIX4K_C0000 + 1, 0, true),
    (MTRR_FIX4K_C0000 + 2, 0, true),
    (MTRR_FIX4K_C0000 + 3, 0, true),
    (MTRR_FIX4K_C0000 + 4, 0, true),
    (MTRR_FIX4K_C0000 + 5, 0, true),
    (MTRR_FIX4K_C0000 + 6, 0, true),
    (MTRR_FIX4K_C0000 + 7, 0, true),
];

/// Entries of [`TABLE`].
pub const MSR_TABLE_LEN: usize = 54;

/// Values of the MSRs kept by value (model registers, machine check, the
/// MTRRs), entry `i` holding `TABLE[i]`: plain data inside
/// [`CpuState`](crate::CpuState).
///
/// With the `serde` feature it is written as a map from MSR index to value,
/// and read back only when it lists every MSR of [`TABLE`] once and no
/// other.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MsrTable {
    #[cfg_attr(feature = "serde", serde(with = "by_index"))]
    pub values: [u64; MSR_TABLE_LEN],
}

/// [`MsrTable::values`] as a map from MSR index to value.
#[cfg(feature = "serde")]
mod by_index {
    use std::fmt;

    use serde::de::{Error, MapAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use super::{MsrTable, MSR_TABLE_LEN, TABLE};

    pub fn serialize<S: Serializer>(values: &[u64; MSR_TABLE_LEN], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(TABLE.iter().zip(values).map(|(e, v)| (e.0, *v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; MSR_TABLE_LEN], D::Error> {
        d.deserialize_map(Entries)
    }

    struct Entries;

    impl<'de> Visitor<'de> for Entries {
        type Value = [u64; MSR_TABLE_LEN];

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a map of the {MSR_TABLE_LEN} MSRs kept by value, from index to value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut values = [0; MSR_TABLE_LEN];
            let mut seen = [false; MSR_TABLE_LEN];
            while let Some((msr, v)) = map.next_entry::<u32, u64>()? {
                let i = MsrTable::slot(msr)
                    .ok_or_else(|| A::Error::custom(format_args!("msr_table: MSR {msr:#x} is not one it keeps")))?;
                if std::mem::replace(&mut seen[i], true) {
                    return Err(A::Error::custom(format_args!("msr_table: MSR {msr:#x} is listed twice")));
                }
                values[i] = v;
            }
            if let Some(i) = seen.iter().position(|&s| !s) {
                return Err(A::Error::custom(format_args!("msr_table: MSR {:#x} is missing", TABLE[i].0)));
            }
            Ok(values)
        }
    }
}

impl Default for MsrTable {
    fn default() -> Self {
        MsrTable { values: TABLE.map(|(_, reset, _)| reset) }
    }
}

impl MsrTable {
    /// The entry of `msr` in [`TABLE`].
    pub fn slot(msr: u32) -> Option<usize> {
        TABLE.iter().position(|e| e.0 == msr)
    }

    /// The value of `msr`, if the table holds it.
    pub fn get(&self, msr: u32) -> Option<u64> {
        Self::slot(msr).map(|i| self.values[i])
    }

    /// Store `v` in `msr` whatever its writability (a state load); `false`
    /// if the table does not hold it.
    pub fn set(&mut self, msr: u32, v: u64) -> bool {
        match Self::slot(msr) {
            Some(i) => {
                self.values[i] = v;
                true
            }
            None => false,
        }
    }

    /// `(index, value)` of every entry.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        TABLE.iter().zip(&self.values).map(|(e, v)| (e.0, *v))
    }
}

/// The value WRMSR keeps when `v` is written to `msr`, or #GP(0): the
/// checks and masks of [`Cpu::write_msr`] that depend on the value alone
/// (canonical addresses, PAT memory types, the widths of SYSENTER_CS,
/// FMASK, TSC_AUX and the performance counters, PerfEvtSel's reserved
/// bits). `v` itself for the MSRs without such a check. A value a state
/// holds for `msr` is one WRMSR can leave there when this returns it
/// unchanged.
pub(crate) fn written_value(msr: u32, v: u64) -> Fault<u64> {
    let canonical = |v: u64| if crate::cpu::is_canonical(v) { Ok(v) } else { Err(GP0) };
    match msr {
        IA32_SYSENTER_CS => Ok(v & 0xffff),
        IA32_SYSENTER_ESP | IA32_SYSENTER_EIP | IA32_LSTAR | IA32_CSTAR | IA32_FS_BASE | IA32_GS_BASE
        | IA32_KERNEL_GS_BASE => canonical(v),
        // Each byte must be a valid memory type (0, 1, 4, 5, 6, 7).
        IA32_PAT if (0..8).any(|i| matches!((v >> (i * 8)) & 0xff, 2 | 3 | 8..=0xff)) => Err(GP0),
        IA32_FMASK | IA32_TSC_AUX => Ok(v & 0xffff_ffff),
        PERF_EVT_SEL0..=0xc001_0003 if v & PERF_EVT_SEL_RESERVED != 0 => Err(GP0),
        PERF_CTR0..=0xc001_0007 => Ok(v & PERF_CTR_MASK),
        _ => Ok(v),
    }
}

impl Cpu {
    /// The guest TSC: host monotonic time scaled to the model's frequency.
    /// The platform's counter when it keeps one (so RDTSC and the local
    /// APIC's TSC-deadline timer agree), else host time at the model's rate.
    pub fn tsc(&mut self) -> u64 {
        let raw = match self.platform.tsc() {
            Some(t) => t,
            None => {
                let ns = self.tsc_epoch.elapsed().as_nanos() as u64;
                ((u128::from(ns) * u128::from(self.tsc_per_ns_fp)) >> 32) as u64
            }
        };
        raw.wrapping_add(self.state.msr.tsc_offset)
    }

    /// Moves the TSC by `delta` and IA32_TSC_ADJUST with it (SDM 17.17.3:
    /// a write to either MSR changes both by the same amount).
    fn shift_tsc(&mut self, delta: u64) {
        if !self.platform.shift_tsc(delta) {
            self.state.msr.tsc_offset = self.state.msr.tsc_offset.wrapping_add(delta);
        }
        self.state.msr.tsc_adjust = self.state.msr.tsc_adjust.wrapping_add(delta);
    }

    /// RDMSR.
    pub fn read_msr(&mut self, msr: u32) -> Fault<u64> {
        if let Some(v) = self.platform.msr_read(msr) {
            return Ok(v);
        }
        let m = &self.state.msr;
        Ok(match msr {
            IA32_TSC => self.tsc(),
            IA32_APIC_BASE => m.apic_base,
            IA32_TSC_ADJUST => m.tsc_adjust,
            IA32_SYSENTER_CS => m.sysenter_cs,
            IA32_SYSENTER_ESP => m.sysenter_esp,
            IA32_SYSENTER_EIP => m.sysenter_eip,
            IA32_MISC_ENABLE => m.misc_enable,
            IA32_PAT => m.pat,
            IA32_MTRR_DEF_TYPE => m.mtrr_def_type,
            IA32_EFER => self.state.efer,
            IA32_STAR => m.star,
            IA32_LSTAR => m.lstar,
            IA32_CSTAR => m.cstar,
            IA32_FMASK => m.sfmask,
            IA32_FS_BASE => self.state.seg[sreg::FS].base,
            IA32_GS_BASE => self.state.seg[sreg::GS].base,
            IA32_KERNEL_GS_BASE => m.kernel_gs_base,
            IA32_TSC_AUX => m.tsc_aux,
            IA32_PKRS if self.pku() => u64::from(self.state.pkrs),
            _ => match self.state.msr_table.get(msr) {
                Some(v) => v,
                None => {
                    tracing::debug!(target: "cpu", "rdmsr {msr:#x}: unknown MSR, #GP");
                    return Err(GP0);
                }
            },
        })
    }

    /// WRMSR.
    pub fn write_msr(&mut self, msr: u32, v: u64) -> Fault<()> {
        if self.platform.msr_write(msr, v) {
            if msr == IA32_APIC_BASE {
                self.state.msr.apic_base = v;
            }
            // A platform MSR can raise an event for this CPU (an x2APIC
            // self-NMI through the ICR): it is taken before the next
            // instruction, as after a port or MMIO write.
            if self.platform.stop_requested() {
                self.stop = true;
                self.block_break = true;
            }
            return Ok(());
        }
        let v = match written_value(msr, v) {
            Ok(kept) => kept,
            Err(e) => {
                tracing::debug!(target: "cpu", "wrmsr {msr:#x} <- {v:#x}: reserved bits or a non-canonical address, #GP");
                return Err(e);
            }
        };
        match msr {
            IA32_TSC => {
                let delta = v.wrapping_sub(self.tsc());
                self.shift_tsc(delta);
            }
            IA32_APIC_BASE => self.state.msr.apic_base = v,
            IA32_TSC_ADJUST => self.shift_tsc(v.wrapping_sub(self.state.msr.tsc_adjust)),
            IA32_SYSENTER_CS => self.state.msr.sysenter_cs = v,
            IA32_SYSENTER_ESP => self.state.msr.sysenter_esp = v,
            IA32_SYSENTER_EIP => self.state.msr.sysenter_eip = v,
            IA32_MISC_ENABLE => self.state.msr.misc_enable = v,
            IA32_PAT => self.state.msr.pat = v,
            IA32_MTRR_DEF_TYPE => self.state.msr.mtrr_def_type = v,
            IA32_EFER => self.write_efer(v)?,
            IA32_STAR => self.state.msr.star = v,
            IA32_LSTAR => self.state.msr.lstar = v,
            IA32_CSTAR => self.state.msr.cstar = v,
            IA32_FMASK => self.state.msr.sfmask = v,
            IA32_FS_BASE => self.state.seg[sreg::FS].base = v,
            IA32_GS_BASE => self.state.seg[sreg::GS].base = v,
            IA32_KERNEL_GS_BASE => self.state.msr.kernel_gs_base = v,
            IA32_TSC_AUX => self.state.msr.tsc_aux = v,
            // Bits 63:32 are reserved.
            IA32_PKRS if self.pku() && v >> 32 == 0 => self.set_pkrs(v as u32),
            PERF_CTR0..=0xc001_0007 => {
                let i = MsrTable::slot(msr).expect("the counters are in the table");
                self.state.msr_table.values[i] = v;
            }
            _ => match MsrTable::slot(msr) {
                Some(i) if TABLE[i].2 => self.state.msr_table.values[i] = v,
                _ => {
                    tracing::debug!(target: "cpu", "wrmsr {msr:#x} <- {v:#x}: unknown or read-only MSR, #GP");
                    return Err(GP0);
                }
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::new_cpu;

    /// Half a second of the model's TSC: slack for time passing mid-test.
    const SLACK: u64 = crate::cpuid::TSC_KHZ * 500;

    #[test]
    fn tsc_adjust_moves_the_tsc_and_a_tsc_write_moves_tsc_adjust() {
        let (mut cpu, _) = new_cpu();
        assert_eq!(cpu.read_msr(IA32_TSC_ADJUST), Ok(0));
        let t0 = cpu.read_msr(IA32_TSC).unwrap();

        cpu.write_msr(IA32_TSC_ADJUST, 1 << 40).unwrap();
        let t1 = cpu.read_msr(IA32_TSC).unwrap();
        assert!((1 << 40..(1 << 40) + SLACK).contains(&(t1 - t0)), "TSC moved by {}", t1 - t0);

        cpu.write_msr(IA32_TSC, 5).unwrap();
        let t2 = cpu.read_msr(IA32_TSC).unwrap();
        let adjust = cpu.read_msr(IA32_TSC_ADJUST).unwrap();
        assert!((5..5 + SLACK).contains(&t2));
        // The counter without any adjustment keeps running from t0.
        let unadjusted = t2.wrapping_sub(adjust);
        assert!((t0..t0 + SLACK).contains(&unadjusted), "TSC_ADJUST {adjust:#x} did not follow the write");

        cpu.write_msr(IA32_TSC_ADJUST, 0).unwrap();
        let t3 = cpu.read_msr(IA32_TSC).unwrap();
        assert!((t0..t0 + SLACK).contains(&t3), "clearing TSC_ADJUST restores the unadjusted counter");
    }

    #[test]
    fn cpuid_advertises_an_invariant_tsc_and_tsc_adjust() {
        let (cpu, _) = new_cpu();
        let [_, ebx, _, _] = crate::cpuid::cpuid(&cpu.state, 7, 0);
        assert_ne!(ebx & crate::cpuid::ebx7::TSC_ADJUST, 0);
        let [_, _, _, edx] = crate::cpuid::cpuid(&cpu.state, 0x8000_0007, 0);
        assert_ne!(edx & crate::cpuid::edx87::INVARIANT_TSC, 0);
    }

    #[test]
    fn the_legacy_amd_performance_counters_hold_values_and_check_reserved_bits() {
        let (mut cpu, _) = new_cpu();
        for i in 0..4 {
            assert_eq!(cpu.read_msr(PERF_EVT_SEL0 + i), Ok(0));
            assert_eq!(cpu.read_msr(PERF_CTR0 + i), Ok(0));
            // Event 0xC0 (retired instructions), USR|OS|EN.
            cpu.write_msr(PERF_EVT_SEL0 + i, 0x43_00c0 + u64::from(i)).unwrap();
            assert_eq!(cpu.read_msr(PERF_EVT_SEL0 + i), Ok(0x43_00c0 + u64::from(i)));
            cpu.write_msr(PERF_CTR0 + i, u64::MAX).unwrap();
            assert_eq!(cpu.read_msr(PERF_CTR0 + i), Ok(PERF_CTR_MASK), "48-bit counter");
        }
        assert_eq!(cpu.write_msr(PERF_EVT_SEL0, 1 << 21), Err(GP0), "reserved bit 21");
        assert_eq!(cpu.write_msr(PERF_EVT_SEL0 + 3, 1 << 50), Err(GP0), "reserved bit 50");
        assert_eq!(cpu.read_msr(PERF_EVT_SEL0), Ok(0x43_00c0), "a refused write changes nothing");
        // Without CPUID 8000_0001h ECX[23] (PerfCtrExtCore) the extended
        // counters do not exist.
        let [_, _, ecx, _] = crate::cpuid::cpuid(&cpu.state, 0x8000_0001, 0);
        assert_eq!(ecx & crate::cpuid::ecx81::PERF_CTR_EXT_CORE, 0);
        for msr in 0xc001_0200..=0xc001_020b {
            assert_eq!(cpu.read_msr(msr), Err(GP0), "{msr:#x}");
            assert_eq!(cpu.write_msr(msr, 0), Err(GP0), "{msr:#x}");
        }
    }

    /// WRMSR refuses what [`written_value`] refuses and keeps what it
    /// gives: the value checks a state's restore makes are WRMSR's.
    #[test]
    fn wrmsr_keeps_the_written_value() {
        let cases = [
            (IA32_SYSENTER_CS, 0x1_0010, Ok(0x10)),
            (IA32_SYSENTER_ESP, 0xffff_8000_0000_0000, Ok(0xffff_8000_0000_0000)),
            (IA32_SYSENTER_EIP, 0x8000_0000_0000, Err(GP0)),
            (IA32_LSTAR, 1 << 63, Err(GP0)),
            (IA32_CSTAR, 0x7fff_ffff_ffff, Ok(0x7fff_ffff_ffff)),
            (IA32_KERNEL_GS_BASE, 0x0001_0000_0000_0000, Err(GP0)),
            (IA32_FS_BASE, 0xffff_7fff_ffff_ffff, Err(GP0)),
            (IA32_GS_BASE, 0x1000, Ok(0x1000)),
            (IA32_PAT, 0x0007_0406_0007_0406, Ok(0x0007_0406_0007_0406)),
            (IA32_PAT, 0x0003_0000, Err(GP0)),
            (IA32_FMASK, 0x1_0004_7700, Ok(0x4_7700)),
            (IA32_TSC_AUX, u64::MAX, Ok(0xffff_ffff)),
            (PERF_EVT_SEL0 + 2, 1 << 40, Err(GP0)),
            (PERF_CTR0 + 1, u64::MAX, Ok(PERF_CTR_MASK)),
            (IA32_STAR, u64::MAX, Ok(u64::MAX)),
        ];
        for (msr, v, kept) in cases {
            assert_eq!(written_value(msr, v), kept, "{msr:#x} <- {v:#x}");
            let (mut cpu, _) = new_cpu();
            assert_eq!(cpu.write_msr(msr, v).and_then(|()| cpu.read_msr(msr)), kept, "{msr:#x} <- {v:#x}");
        }
    }

    #[test]
    fn the_msr_table_lists_each_msr_once_and_keeps_values_in_the_state() {
        for (i, e) in TABLE.iter().enumerate() {
            assert_eq!(MsrTable::slot(e.0), Some(i), "{:#x} listed twice", e.0);
        }
        let (mut cpu, _) = new_cpu();
        assert_eq!(cpu.read_msr(IA32_MTRRCAP), Ok(0x508));
        assert_eq!(cpu.write_msr(IA32_MTRRCAP, 0), Err(GP0), "read-only");
        cpu.write_msr(0x20f, 0xfff_f800).unwrap();
        cpu.write_msr(0x26f, 0x0606_0606_0606_0606).unwrap();
        assert_eq!(cpu.state.msr_table.get(0x20f), Some(0xfff_f800));
        assert_eq!(cpu.write_msr(0x210, 1), Err(GP0), "past the variable MTRRs");
        // The value travels with the state.
        let s = cpu.state;
        let (mut other, _) = new_cpu();
        other.set_state(s);
        assert_eq!(other.read_msr(0x26f), Ok(0x0606_0606_0606_0606));
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use serde::de::value::{Error, MapDeserializer};

    use super::*;

    fn read(entries: &[(u32, u64)]) -> Result<[u64; MSR_TABLE_LEN], String> {
        by_index::deserialize(MapDeserializer::<_, Error>::new(entries.iter().copied())).map_err(|e| e.to_string())
    }

    #[test]
    fn the_table_is_read_back_only_whole() {
        let mut t = MsrTable::default();
        t.set(0x201, 0xfff_f800);
        let all: Vec<(u32, u64)> = t.iter().collect();
        assert_eq!(read(&all), Ok(t.values));
        // In another order.
        let reversed: Vec<_> = all.iter().rev().copied().collect();
        assert_eq!(read(&reversed), Ok(t.values));
        let unknown = [all.as_slice(), &[(IA32_TSC, 0)]].concat();
        assert_eq!(read(&unknown), Err("msr_table: MSR 0x10 is not one it keeps".into()));
        let twice = [all.as_slice(), &[all[3]]].concat();
        assert_eq!(read(&twice), Err(format!("msr_table: MSR {:#x} is listed twice", all[3].0)));
        assert_eq!(read(&all[1..]), Err(format!("msr_table: MSR {:#x} is missing", TABLE[0].0)));
    }
}
