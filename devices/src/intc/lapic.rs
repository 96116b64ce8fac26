//! The local APIC of one CPU: xAPIC MMIO, x2APIC MSRs, priorities, the LVT
//! and the APIC timer.
//!
//! Reference: Intel 64 and IA-32 Architectures Software Developer's Manual,
//! Volume 3A, chapter 10 (11 in later editions) "Advanced Programmable
//! Interrupt Controller (APIC)": 10.4.4 IA32_APIC_BASE, Table 10-1 "Local
//! APIC Register Address Map", 10.5.1 the LVT (Figure 10-8), 10.5.3 the ESR,
//! 10.5.4 the APIC timer (one-shot, periodic, TSC-deadline), 10.6.1 the ICR
//! (Figure 10-12), 10.6.2 destinations (LDR/DFR), 10.8.3 TPR/PPR, 10.8.5
//! EOI, 10.9 the spurious-interrupt vector register, and 10.12 x2APIC mode
//! (Table 10-6, the MSR map).
//!
//! ```text
//! offset  MSR   register                        offset  MSR   register
//! 0x020   0x802 ID                              0x280   0x828 ESR
//! 0x030   0x803 version (RO)                    0x300   0x830 ICR low (ICR, 64-bit, in x2APIC)
//! 0x080   0x808 TPR                             0x310   -     ICR high
//! 0x090   -     APR (RO)                        0x320   0x832 LVT timer
//! 0x0A0   0x80A PPR (RO)                        0x330   0x833 LVT thermal
//! 0x0B0   0x80B EOI (WO)                        0x340   0x834 LVT performance counter
//! 0x0D0   0x80D LDR (RO in x2APIC)              0x350   0x835 LVT LINT0
//! 0x0E0   -     DFR                             0x360   0x836 LVT LINT1
//! 0x0F0   0x80F spurious-interrupt vector       0x370   0x837 LVT error
//! 0x100+  0x810 ISR 0-7 (RO)                    0x380   0x838 timer initial count
//! 0x180+  0x818 TMR 0-7 (RO)                    0x390   0x839 timer current count (RO)
//! 0x200+  0x820 IRR 0-7 (RO)                    0x3E0   0x83E timer divide configuration
//!                                               -       0x83F SELF IPI (WO)
//! LVT entry: 18:17 timer mode | 16 mask | 15 trigger | 14 remote IRR |
//!            13 polarity | 12 delivery status | 10:8 delivery mode | 7:0 vector
//! ```
//!
//! Model choices:
//! - Version 0x14 with six LVT entries (max LVT entry 5: no CMCI), and no
//!   EOI-broadcast suppression: every EOI of a level-triggered vector goes
//!   to the I/O APIC.
//! - The timer counts at [`APIC_TIMER_HZ`] (1 GHz, as KVM and QEMU count)
//!   before the divider, computed from the clock on every read; a periodic
//!   timer fires at most once per [`MIN_PERIODIC_NS`] and coalesces missed
//!   periods, so an idle host sees at most one wakeup per period.
//! - Sending is instant: the ICR's delivery status always reads idle, and
//!   the interrupt controller has delivered the IPI to every destination
//!   before the ICR write returns.
//! - An INIT resets the registers as 10.4.7.3 says ([`LocalApic::init_reset`]:
//!   the power-up state, the ID register and IA32_APIC_BASE kept). The
//!   CPU's wait-for-SIPI state and the start-up events are the interrupt
//!   controller's, not the APIC's.
//! - Lowest-priority arbitration uses the processor priority (PPR); the
//!   focus processor check (SVR bit 9) is not modelled.
//! - The core only keeps registers. The interrupt controller delivers the
//!   IPIs and EOI broadcasts it returns as [`LapicEffect`]s.

use std::sync::Arc;

use persist::{Persist, PersistError};

use crate::clock::{ns_for_ticks, ticks_in, Tsc};
use crate::intc::ioapic::DeliveryMode;
use crate::log_once::{LogOnce, Misuse};

/// Default physical base of the xAPIC MMIO page.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// The xAPIC register page.
pub const LAPIC_MMIO_LEN: u64 = 0x1000;
/// Frequency the APIC timer counts at before its divider.
pub const APIC_TIMER_HZ: u64 = 1_000_000_000;
/// The shortest interval at which a periodic APIC timer raises interrupts.
pub const MIN_PERIODIC_NS: u64 = 100_000;

/// IA32_APIC_BASE.
pub const MSR_IA32_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// First MSR of the x2APIC register space.
pub const MSR_X2APIC_FIRST: u32 = 0x800;
/// Last MSR of the x2APIC register space this model decodes.
pub const MSR_X2APIC_LAST: u32 = 0x8ff;

// IA32_APIC_BASE bits.
pub(crate) const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
/// The page frame, up to a 52-bit physical address.
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const APIC_BASE_WRITABLE: u64 = APIC_BASE_ADDR_MASK | APIC_BASE_ENABLE | APIC_BASE_EXTD;

// Register offsets (Table 10-1).
const REG_ID: u32 = 0x020;
const REG_VERSION: u32 = 0x030;
const REG_TPR: u32 = 0x080;
const REG_APR: u32 = 0x090;
const REG_PPR: u32 = 0x0a0;
const REG_EOI: u32 = 0x0b0;
const REG_RRD: u32 = 0x0c0;
const REG_LDR: u32 = 0x0d0;
const REG_DFR: u32 = 0x0e0;
const REG_SVR: u32 = 0x0f0;
const REG_ISR_FIRST: u32 = 0x100;
const REG_ISR_LAST: u32 = 0x170;
const REG_TMR_FIRST: u32 = 0x180;
const REG_TMR_LAST: u32 = 0x1f0;
const REG_IRR_FIRST: u32 = 0x200;
const REG_IRR_LAST: u32 = 0x270;
const REG_ESR: u32 = 0x280;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_THERMAL: u32 = 0x330;
const REG_LVT_PERF: u32 = 0x340;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_LINT1: u32 = 0x360;
const REG_LVT_ERROR: u32 = 0x370;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;
const REG_SELF_IPI: u32 = 0x3f0;

/// x2APIC MSR of the 64-bit ICR.
const MSR_X2APIC_ICR: u32 = 0x830;

/// Version 0x14 (integrated APIC), max LVT entry 5 in bits 23:16.
const VERSION_VALUE: u32 = 0x0005_0014;

const ID_SHIFT: u32 = 24;
const TPR_MASK: u32 = 0xff;
const LDR_XAPIC_MASK: u32 = 0xff00_0000;
/// DFR bits 27:0 read as ones.
const DFR_RESERVED_ONES: u32 = 0x0fff_ffff;
const DFR_MODEL_MASK: u32 = 0xf000_0000;
const DFR_MODEL_FLAT: u32 = 0xf000_0000;

// Spurious-interrupt vector register.
const SVR_VECTOR: u32 = 0xff;
const SVR_APIC_ENABLED: u32 = 1 << 8;
const SVR_FOCUS_DISABLED: u32 = 1 << 9;
const SVR_WRITABLE: u32 = SVR_VECTOR | SVR_APIC_ENABLED | SVR_FOCUS_DISABLED;
const SVR_RESET: u32 = 0xff;

// ESR bits (10.5.3).
const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

// LVT bits (Figure 10-8).
const LVT_VECTOR: u32 = 0xff;
const LVT_DELIVERY_MODE: u32 = 0b111 << 8;
const LVT_DELIVERY_MODE_SHIFT: u32 = 8;
const LVT_POLARITY: u32 = 1 << 13;
const LVT_LEVEL: u32 = 1 << 15;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_MODE_SHIFT: u32 = 17;
const LVT_TIMER_MODE: u32 = 0b11 << LVT_TIMER_MODE_SHIFT;
const LVT_TIMER_WRITABLE: u32 = LVT_VECTOR | LVT_MASKED | LVT_TIMER_MODE;
const LVT_THERMAL_PERF_WRITABLE: u32 = LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED;
const LVT_LINT_WRITABLE: u32 = LVT_VECTOR | LVT_DELIVERY_MODE | LVT_POLARITY | LVT_LEVEL | LVT_MASKED;
const LVT_ERROR_WRITABLE: u32 = LVT_VECTOR | LVT_MASKED;
const LVT_RESET: u32 = LVT_MASKED;
/// LINT0 as a PC BIOS leaves it: ExtINT, unmasked (virtual wire mode).
const LVT_LINT0_VIRTUAL_WIRE: u32 = 0b111 << LVT_DELIVERY_MODE_SHIFT;
/// LINT1 as a PC BIOS leaves it: NMI.
const LVT_LINT1_NMI: u32 = 0b100 << LVT_DELIVERY_MODE_SHIFT;

// LVT indices.
const LVT_TIMER: usize = 0;
const LVT_THERMAL: usize = 1;
const LVT_PERF: usize = 2;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;
/// Number of LVT entries.
pub const LVT_COUNT: usize = 6;
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    LVT_TIMER_WRITABLE,
    LVT_THERMAL_PERF_WRITABLE,
    LVT_THERMAL_PERF_WRITABLE,
    LVT_LINT_WRITABLE,
    LVT_LINT_WRITABLE,
    LVT_ERROR_WRITABLE,
];

// ICR (Figure 10-12).
const ICR_VECTOR: u64 = 0xff;
const ICR_DELIVERY_MODE_SHIFT: u32 = 8;
const ICR_DEST_LOGICAL: u64 = 1 << 11;
const ICR_LEVEL_ASSERT: u64 = 1 << 14;
const ICR_TRIGGER_LEVEL: u64 = 1 << 15;
const ICR_SHORTHAND_SHIFT: u32 = 18;
const ICR_XAPIC_LOW_WRITABLE: u32 = 0x000c_cfff;
const ICR_XAPIC_DEST_MASK: u32 = 0xff00_0000;

// Divide configuration: bits 3, 1, 0.
const DIVIDE_WRITABLE: u32 = 0b1011;

/// Vectors 0-15 are reserved and illegal for fixed interrupts.
const FIRST_LEGAL_VECTOR: u8 = 16;

/// The timer mode field of the LVT timer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// Counts down once from the initial count.
    OneShot,
    /// Reloads the initial count at zero.
    Periodic,
    /// Fires when the TSC reaches IA32_TSC_DEADLINE.
    TscDeadline,
}

/// The ICR's destination shorthand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    /// The destination field says.
    None,
    /// The sender only.
    SelfOnly,
    /// Every APIC, the sender included.
    AllIncludingSelf,
    /// Every APIC but the sender.
    AllExcludingSelf,
}

/// An inter-processor interrupt written to the ICR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipi {
    /// The vector (the start page for a startup IPI).
    pub vector: u8,
    /// What the destination does with it.
    pub delivery_mode: DeliveryMode,
    /// The destination field is a logical set.
    pub logical: bool,
    /// The destination field (8 bits in xAPIC mode, 32 in x2APIC mode).
    pub destination: u32,
    /// The destination shorthand.
    pub shorthand: Shorthand,
    /// Level-triggered (only INIT level de-assert uses it).
    pub level_triggered: bool,
    /// The level bit (0 only for an INIT level de-assert).
    pub assert: bool,
}

/// Work a register write leaves for the interrupt controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicEffect {
    /// An EOI for a level-triggered vector: broadcast to the I/O APICs.
    EoiBroadcast(u8),
    /// An IPI to deliver.
    Ipi(Ipi),
}

/// An x2APIC MSR access the CPU must answer with #GP(0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the local APIC refuses this MSR access; raise #GP(0)")]
pub struct MsrFault;

/// The guest-visible state of a local APIC, for save and restore. Times are
/// clock nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LapicState {
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// The xAPIC ID register (ID in bits 31:24).
    pub id: u32,
    /// TPR.
    pub tpr: u32,
    /// LDR (xAPIC mode).
    pub ldr: u32,
    /// DFR.
    pub dfr: u32,
    /// Spurious-interrupt vector register.
    pub svr: u32,
    /// In-service register, 256 bits.
    pub isr: [u32; 8],
    /// Trigger mode register, 256 bits.
    pub tmr: [u32; 8],
    /// Interrupt request register, 256 bits.
    pub irr: [u32; 8],
    /// ESR as last latched.
    pub esr: u32,
    /// Errors seen since the last ESR write.
    pub esr_pending: u32,
    /// ICR, high dword in bits 63:32.
    pub icr: u64,
    /// LVT: timer, thermal, performance, LINT0, LINT1, error.
    pub lvt: [u32; LVT_COUNT],
    /// Timer initial count.
    pub timer_initial: u32,
    /// Timer divide configuration.
    pub timer_divide: u32,
    /// When the timer was last (re)started or its divider changed.
    pub timer_start_ns: u64,
    /// Counts already elapsed at `timer_start_ns` (non-zero after a divider change).
    pub timer_start_count: u64,
    /// When the one-shot or periodic timer next fires.
    pub timer_next_ns: Option<u64>,
    /// IA32_TSC_DEADLINE (0 = disarmed).
    pub tsc_deadline: u64,
    /// An NMI waits for the CPU.
    pub nmi_pending: bool,
    /// An ExtINT message from the I/O APIC waits for the CPU's INTA cycle.
    pub extint_pending: bool,
}

/// The timer arithmetic, on the state alone.
impl LapicState {
    /// The LVT timer's mode.
    pub fn timer_mode(&self) -> TimerMode {
        match (self.lvt[LVT_TIMER] & LVT_TIMER_MODE) >> LVT_TIMER_MODE_SHIFT {
            0b01 => TimerMode::Periodic,
            0b10 => TimerMode::TscDeadline,
            // 0b11 is reserved; it counts as one-shot.
            _ => TimerMode::OneShot,
        }
    }

    fn divisor(&self) -> u64 {
        let v = self.timer_divide;
        let code = ((v & 0b1000) >> 1) | (v & 0b11);
        if code == 0b111 {
            1
        } else {
            2 << code
        }
    }

    /// Timer counts elapsed since the timer was started.
    fn elapsed_counts(&self, now: u64) -> u64 {
        let since = ticks_in(now.saturating_sub(self.timer_start_ns), APIC_TIMER_HZ) / self.divisor();
        self.timer_start_count.saturating_add(since)
    }

    /// The clock time at which the elapsed counts reach `count`.
    fn time_of_count(&self, count: u64) -> u64 {
        let counts = count.saturating_sub(self.timer_start_count);
        let ticks = counts.saturating_mul(self.divisor());
        self.timer_start_ns.saturating_add(ns_for_ticks(ticks, APIC_TIMER_HZ))
    }

    /// The current-count register at clock time `now`.
    pub fn current_count(&self, now: u64) -> u32 {
        let initial = u64::from(self.timer_initial);
        if initial == 0 || self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let elapsed = self.elapsed_counts(now);
        let count = match self.timer_mode() {
            TimerMode::Periodic => initial - elapsed % initial,
            _ => initial.saturating_sub(elapsed),
        };
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Sets the timer so that its current-count register reads `current`
    /// at clock time `now` (a one-shot count of 0 has expired; a periodic
    /// one starts a new period).
    pub fn set_current_count(&mut self, now: u64, current: u32) {
        self.timer_start_ns = now;
        self.timer_start_count = 0;
        self.timer_next_ns = None;
        let initial = self.timer_initial;
        if initial == 0 || self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        let current = current.min(initial);
        match self.timer_mode() {
            TimerMode::OneShot if current == 0 => self.timer_start_count = u64::from(initial),
            TimerMode::Periodic if current == 0 => {
                self.timer_next_ns = Some(self.time_of_count(u64::from(initial)));
            }
            _ => {
                self.timer_start_count = u64::from(initial - current);
                self.timer_next_ns = Some(self.time_of_count(u64::from(initial)));
            }
        }
    }

    /// The state of a local APIC whose registers are the xAPIC register
    /// page `page` (register `r` at byte `r`, little-endian, 1 KiB; the
    /// current-count register as read at clock time `now`), with
    /// IA32_APIC_BASE `apic_base` and IA32_TSC_DEADLINE `tsc_deadline`, as
    /// a hypervisor's in-kernel APIC gives it. Reserved and read-only bits
    /// are dropped; `None` for a page shorter than 1 KiB.
    pub fn from_register_page(page: &[u8], apic_base: u64, tsc_deadline: u64, now: u64) -> Option<LapicState> {
        let reg = |r: u32| -> Option<u32> {
            let at = usize::try_from(r).ok()?;
            let b = page.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let block = |first: u32| -> Option<[u32; 8]> {
            let mut out = [0u32; 8];
            for (i, w) in out.iter_mut().enumerate() {
                *w = reg(first + 0x10 * i as u32)?;
            }
            // Vectors 0-15 are illegal.
            out[0] &= !0xffff;
            Some(out)
        };
        let x2apic = apic_base & APIC_BASE_ENABLE != 0 && apic_base & APIC_BASE_EXTD != 0;
        let mut lvt = [0u32; LVT_COUNT];
        for (i, (v, writable)) in lvt.iter_mut().zip(LVT_WRITABLE).enumerate() {
            *v = reg(REG_LVT_TIMER + 0x10 * i as u32)? & writable;
        }
        let mut s = LapicState {
            apic_base: apic_base & (APIC_BASE_WRITABLE | APIC_BASE_BSP),
            id: reg(REG_ID)? & LDR_XAPIC_MASK,
            tpr: reg(REG_TPR)? & TPR_MASK,
            // In x2APIC mode the LDR follows from the ID.
            ldr: if x2apic { 0 } else { reg(REG_LDR)? & LDR_XAPIC_MASK },
            dfr: reg(REG_DFR)? | DFR_RESERVED_ONES,
            svr: reg(REG_SVR)? & SVR_WRITABLE,
            isr: block(REG_ISR_FIRST)?,
            tmr: block(REG_TMR_FIRST)?,
            irr: block(REG_IRR_FIRST)?,
            esr: reg(REG_ESR)? & ESR_KNOWN,
            esr_pending: 0,
            icr: ((u64::from(reg(REG_ICR_HIGH)?) << 32) | u64::from(reg(REG_ICR_LOW)?)) & ICR_KEPT,
            lvt,
            timer_initial: reg(REG_TIMER_INITIAL)?,
            timer_divide: reg(REG_TIMER_DIVIDE)? & DIVIDE_WRITABLE,
            timer_start_ns: now,
            timer_start_count: 0,
            timer_next_ns: None,
            tsc_deadline: 0,
            nmi_pending: false,
            extint_pending: false,
        };
        if s.timer_mode() == TimerMode::TscDeadline {
            s.timer_initial = 0;
            s.tsc_deadline = tsc_deadline;
        } else {
            s.set_current_count(now, reg(REG_TIMER_CURRENT)?);
        }
        Some(s)
    }

    /// Writes the registers into the xAPIC register page `page` (as
    /// [`LapicState::from_register_page`] reads it; the registers the
    /// state does not hold, such as the version, are left as they are),
    /// the current count as at clock time `now`. Returns false, writing
    /// nothing, for a page shorter than 1 KiB.
    pub fn to_register_page(&self, page: &mut [u8], now: u64) -> bool {
        if page.len() < 0x400 {
            return false;
        }
        let mut set = |r: u32, v: u32| {
            let at = r as usize;
            page[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        set(REG_ID, self.id);
        set(REG_TPR, self.tpr);
        set(REG_LDR, self.ldr);
        set(REG_DFR, self.dfr);
        set(REG_SVR, self.svr);
        for i in 0..8u32 {
            set(REG_ISR_FIRST + 0x10 * i, self.isr[i as usize]);
            set(REG_TMR_FIRST + 0x10 * i, self.tmr[i as usize]);
            set(REG_IRR_FIRST + 0x10 * i, self.irr[i as usize]);
        }
        set(REG_ESR, self.esr);
        set(REG_ICR_LOW, self.icr as u32);
        set(REG_ICR_HIGH, (self.icr >> 32) as u32);
        for (i, v) in self.lvt.iter().enumerate() {
            set(REG_LVT_TIMER + 0x10 * i as u32, *v);
        }
        set(REG_TIMER_INITIAL, self.timer_initial);
        set(REG_TIMER_CURRENT, self.current_count(now));
        set(REG_TIMER_DIVIDE, self.timer_divide);
        true
    }
}

/// One CPU's local APIC.
#[derive(Debug)]
pub struct LocalApic {
    s: LapicState,
    /// The APIC ID the hardware assigned (the x2APIC ID).
    initial_id: u32,
    tsc: Arc<Tsc>,
    log: LogOnce,
}

fn bit_set(regs: &mut [u32; 8], vector: u8, on: bool) {
    let (word, bit) = (usize::from(vector >> 5), vector & 31);
    if on {
        regs[word] |= 1 << bit;
    } else {
        regs[word] &= !(1 << bit);
    }
}

fn bit_test(regs: &[u32; 8], vector: u8) -> bool {
    regs[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
}

/// The highest vector set in a 256-bit register.
fn highest(regs: &[u32; 8]) -> Option<u8> {
    (0..8u8)
        .rev()
        .find(|&w| regs[usize::from(w)] != 0)
        .map(|w| w * 32 + (31 - regs[usize::from(w)].leading_zeros()) as u8)
}

impl LocalApic {
    /// The APIC of the CPU with APIC ID `id`, in its power-on state (10.4.7.1).
    /// `bsp` marks the bootstrap processor in IA32_APIC_BASE.
    pub fn new(id: u32, bsp: bool, tsc: Arc<Tsc>) -> Self {
        let mut apic = Self {
            s: LapicState {
                apic_base: LAPIC_BASE | APIC_BASE_ENABLE | if bsp { APIC_BASE_BSP } else { 0 },
                id: 0,
                tpr: 0,
                ldr: 0,
                dfr: 0,
                svr: 0,
                isr: [0; 8],
                tmr: [0; 8],
                irr: [0; 8],
                esr: 0,
                esr_pending: 0,
                icr: 0,
                lvt: [0; LVT_COUNT],
                timer_initial: 0,
                timer_divide: 0,
                timer_start_ns: 0,
                timer_start_count: 0,
                timer_next_ns: None,
                tsc_deadline: 0,
                nmi_pending: false,
                extint_pending: false,
            },
            initial_id: id,
            tsc,
            log: LogOnce::new(),
        };
        apic.reset_registers();
        apic
    }

    /// The register reset of 10.4.7.1 (power-up, INIT, or a hardware disable).
    fn reset_registers(&mut self) {
        let s = &mut self.s;
        s.id = (self.initial_id & 0xff) << ID_SHIFT;
        s.tpr = 0;
        s.ldr = 0;
        s.dfr = u32::MAX;
        s.svr = SVR_RESET;
        s.isr = [0; 8];
        s.tmr = [0; 8];
        s.irr = [0; 8];
        s.esr = 0;
        s.esr_pending = 0;
        s.icr = 0;
        s.lvt = [LVT_RESET; LVT_COUNT];
        s.timer_initial = 0;
        s.timer_divide = 0;
        s.timer_next_ns = None;
        s.tsc_deadline = 0;
        s.nmi_pending = false;
        s.extint_pending = false;
    }

    /// The reset an INIT (the INIT# pin or an INIT IPI) makes (10.4.7.3):
    /// the power-up state of the registers, except that the ID register and
    /// IA32_APIC_BASE (the global enable, x2APIC mode, the BSP bit) are kept.
    pub fn init_reset(&mut self) {
        let id = self.s.id;
        self.reset_registers();
        self.s.id = id;
    }

    /// Puts the APIC in the state a PC BIOS leaves the bootstrap processor's
    /// in (MP specification 3.6.2.2, virtual wire mode): software-enabled,
    /// LINT0 as ExtINT for the 8259A, LINT1 as NMI.
    pub fn bios_virtual_wire(&mut self) {
        self.s.svr = SVR_RESET | SVR_APIC_ENABLED;
        self.s.lvt[LVT_LINT0] = LVT_LINT0_VIRTUAL_WIRE;
        self.s.lvt[LVT_LINT1] = LVT_LINT1_NMI;
    }

    /// The hardware-assigned APIC ID.
    pub fn initial_id(&self) -> u32 {
        self.initial_id
    }

    /// The CPU is the bootstrap processor (IA32_APIC_BASE bit 8).
    pub fn is_bsp(&self) -> bool {
        self.s.apic_base & APIC_BASE_BSP != 0
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.s.apic_base
    }

    /// The APIC is globally enabled (IA32_APIC_BASE bit 11).
    pub fn hw_enabled(&self) -> bool {
        self.s.apic_base & APIC_BASE_ENABLE != 0
    }

    /// The APIC is in x2APIC mode.
    pub fn x2apic(&self) -> bool {
        self.hw_enabled() && self.s.apic_base & APIC_BASE_EXTD != 0
    }

    /// The APIC is enabled in hardware and software: it accepts interrupts.
    pub fn enabled(&self) -> bool {
        self.hw_enabled() && self.s.svr & SVR_APIC_ENABLED != 0
    }

    /// Writes IA32_APIC_BASE, enforcing the mode transitions of 10.12.5:
    /// x2APIC needs the global enable and is left only by disabling.
    pub fn write_apic_base(&mut self, value: u64) -> Result<(), MsrFault> {
        let reserved = !(APIC_BASE_WRITABLE | APIC_BASE_BSP);
        if value & reserved != 0 {
            return Err(MsrFault);
        }
        let enable = value & APIC_BASE_ENABLE != 0;
        let extd = value & APIC_BASE_EXTD != 0;
        if extd && !enable {
            return Err(MsrFault);
        }
        if self.x2apic() && enable && !extd {
            return Err(MsrFault);
        }
        if !self.hw_enabled() && extd {
            return Err(MsrFault);
        }
        let was_enabled = self.hw_enabled();
        let old_addr = self.s.apic_base & APIC_BASE_ADDR_MASK;
        self.s.apic_base = (value & APIC_BASE_WRITABLE) | (self.s.apic_base & APIC_BASE_BSP);
        if was_enabled && !enable {
            // A globally disabled APIC forgets its programming.
            self.reset_registers();
        }
        let new_addr = self.s.apic_base & APIC_BASE_ADDR_MASK;
        if new_addr != old_addr && self.log.first(Misuse::Unimplemented) {
            tracing::warn!(
                target: "devices",
                base = new_addr,
                "local APIC: relocating the xAPIC page is not supported; it stays at 0xfee00000 (logged once)"
            );
        }
        Ok(())
    }

    fn isrv(&self) -> u8 {
        highest(&self.s.isr).unwrap_or(0)
    }

    /// The processor priority (10.8.3.1).
    pub fn ppr(&self) -> u8 {
        let tpr = (self.s.tpr & TPR_MASK) as u8;
        let isrv = self.isrv();
        if tpr >> 4 >= isrv >> 4 {
            tpr
        } else {
            isrv & 0xf0
        }
    }

    fn apr(&self) -> u8 {
        let tpr = (self.s.tpr & TPR_MASK) as u8;
        let isrv = self.isrv();
        let irrv = highest(&self.s.irr).unwrap_or(0);
        if tpr >> 4 >= irrv >> 4 && tpr >> 4 > isrv >> 4 {
            tpr
        } else {
            (tpr & 0xf0).max(isrv & 0xf0).max(irrv & 0xf0)
        }
    }

    /// The task priority (CR8 is its high nibble).
    pub fn tpr(&self) -> u8 {
        (self.s.tpr & TPR_MASK) as u8
    }

    /// Sets the task priority (a MOV to CR8 writes `cr8 << 4`).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.s.tpr = u32::from(tpr);
    }

    /// The vector the APIC would hand the CPU now: the highest IRR vector
    /// whose priority class is above the PPR's.
    pub fn deliverable(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        let irrv = highest(&self.s.irr)?;
        (irrv >> 4 > self.ppr() >> 4).then_some(irrv)
    }

    /// The CPU takes the deliverable vector: IRR to ISR.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.deliverable()?;
        bit_set(&mut self.s.irr, vector, false);
        bit_set(&mut self.s.isr, vector, true);
        Some(vector)
    }

    /// A fixed (or lowest-priority) interrupt arrives. False if the APIC
    /// cannot take it (disabled).
    pub fn accept_fixed(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < FIRST_LEGAL_VECTOR {
            self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return true;
        }
        bit_set(&mut self.s.irr, vector, true);
        bit_set(&mut self.s.tmr, vector, level_triggered);
        true
    }

    /// An NMI arrives. False if the APIC is globally disabled.
    pub fn accept_nmi(&mut self) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        self.s.nmi_pending = true;
        true
    }

    /// An ExtINT message arrives: the CPU is to run an INTA cycle on the 8259A.
    pub fn accept_extint(&mut self) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        self.s.extint_pending = true;
        true
    }

    /// Takes a pending NMI.
    pub fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.s.nmi_pending)
    }

    /// Whether an NMI waits.
    pub fn nmi_pending(&self) -> bool {
        self.s.nmi_pending
    }

    /// Whether the 8259A's INTR reaches the CPU: through LINT0 programmed as
    /// unmasked ExtINT (virtual wire), an ExtINT message, or directly when the
    /// APIC is globally disabled.
    pub fn accepts_pic_interrupts(&self) -> bool {
        if !self.hw_enabled() {
            return true;
        }
        let lint0 = self.s.lvt[LVT_LINT0];
        let extint = (lint0 & LVT_DELIVERY_MODE) >> LVT_DELIVERY_MODE_SHIFT == 0b111;
        self.s.extint_pending || (extint && lint0 & LVT_MASKED == 0)
    }

    /// Whether an ExtINT message waits for the CPU's INTA cycle on the 8259A.
    pub fn extint_pending(&self) -> bool {
        self.s.extint_pending
    }

    /// The CPU ran an INTA cycle on the 8259A.
    pub fn pic_acknowledged(&mut self) {
        self.s.extint_pending = false;
    }

    /// Whether this APIC is a destination of a message with `destination`
    /// (physical APIC ID or logical set). `broadcast` is the all-ones value
    /// of the message's destination width.
    pub fn matches(&self, destination: u32, logical: bool, broadcast: u32) -> bool {
        if destination == broadcast {
            return true;
        }
        if self.x2apic() {
            if logical {
                let ldr = self.x2apic_ldr();
                destination >> 16 == ldr >> 16 && destination & ldr & 0xffff != 0
            } else {
                destination == self.initial_id
            }
        } else if logical {
            let ldr = (self.s.ldr >> ID_SHIFT) & 0xff;
            let dest = destination & 0xff;
            if self.s.dfr & DFR_MODEL_MASK == DFR_MODEL_FLAT {
                ldr & dest != 0
            } else {
                // Cluster model: cluster in the high nibble, members in the low one.
                dest >> 4 == ldr >> 4 && dest & ldr & 0xf != 0
            }
        } else {
            destination & 0xff == self.s.id >> ID_SHIFT
        }
    }

    fn x2apic_ldr(&self) -> u32 {
        ((self.initial_id >> 4) << 16) | (1 << (self.initial_id & 0xf))
    }

    fn error(&mut self, bits: u32) {
        let new = bits & !self.s.esr_pending;
        self.s.esr_pending |= bits;
        if new != 0 {
            self.raise_lvt(LVT_ERROR);
        }
    }

    /// Raises the local interrupt of LVT entry `index` (timer, error).
    fn raise_lvt(&mut self, index: usize) {
        let lvt = self.s.lvt[index];
        if lvt & LVT_MASKED != 0 || !self.enabled() {
            return;
        }
        let vector = (lvt & LVT_VECTOR) as u8;
        if vector < FIRST_LEGAL_VECTOR {
            // An illegal vector in the error LVT would loop; record it only.
            self.s.esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR;
            return;
        }
        bit_set(&mut self.s.irr, vector, true);
        bit_set(&mut self.s.tmr, vector, false);
    }

    fn eoi(&mut self) -> Option<LapicEffect> {
        let vector = highest(&self.s.isr)?;
        bit_set(&mut self.s.isr, vector, false);
        bit_test(&self.s.tmr, vector).then_some(LapicEffect::EoiBroadcast(vector))
    }

    // ---- timer ----

    /// The LVT timer's mode.
    pub fn timer_mode(&self) -> TimerMode {
        self.s.timer_mode()
    }

    fn start_timer(&mut self, now: u64) {
        self.s.timer_start_ns = now;
        self.s.timer_start_count = 0;
        self.s.timer_next_ns =
            (self.s.timer_initial != 0).then(|| self.s.time_of_count(u64::from(self.s.timer_initial)));
    }

    fn timer_masked(&self) -> bool {
        self.s.lvt[LVT_TIMER] & LVT_MASKED != 0 || !self.enabled()
    }

    /// The next periodic expiry strictly after `now`, no sooner than
    /// [`MIN_PERIODIC_NS`] from now.
    fn next_period_after(&self, now: u64) -> Option<u64> {
        let initial = u64::from(self.s.timer_initial);
        if initial == 0 {
            return None;
        }
        let elapsed = self.s.elapsed_counts(now);
        let target = (elapsed / initial).saturating_add(1).saturating_mul(initial);
        let boundary = self.s.time_of_count(target);
        let period = ns_for_ticks(initial.saturating_mul(self.s.divisor()), APIC_TIMER_HZ);
        if period < MIN_PERIODIC_NS {
            Some(boundary.max(now.saturating_add(MIN_PERIODIC_NS)))
        } else {
            Some(boundary)
        }
    }

    /// When the timer next needs a tick: `None` when it is disarmed or its
    /// interrupt masked.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.timer_masked() {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.s.tsc_deadline != 0).then(|| self.tsc.ns_at(self.s.tsc_deadline)),
            _ => self.s.timer_next_ns,
        }
    }

    /// Fires the timer if it is due at `now`.
    pub fn tick(&mut self, now: u64) {
        match self.timer_mode() {
            TimerMode::TscDeadline => {
                if self.s.tsc_deadline != 0 && self.tsc.read(now) >= self.s.tsc_deadline {
                    self.s.tsc_deadline = 0;
                    self.raise_lvt(LVT_TIMER);
                }
            }
            TimerMode::OneShot => {
                if self.s.timer_next_ns.is_some_and(|t| t <= now) {
                    self.s.timer_next_ns = None;
                    self.raise_lvt(LVT_TIMER);
                }
            }
            TimerMode::Periodic => {
                if self.s.timer_next_ns.is_some_and(|t| t <= now) && self.s.timer_initial != 0 {
                    self.s.timer_next_ns = self.next_period_after(now);
                    self.raise_lvt(LVT_TIMER);
                }
            }
        }
    }

    /// Re-derives the next expiry after the timer interrupt was unmasked:
    /// expiries that passed while it was masked are dropped.
    fn resync_timer(&mut self, now: u64) {
        match self.timer_mode() {
            TimerMode::OneShot => {
                if self.s.timer_next_ns.is_some_and(|t| t <= now) {
                    self.s.timer_next_ns = None;
                }
            }
            TimerMode::Periodic => {
                if self.s.timer_initial != 0 && self.s.timer_next_ns.is_none_or(|t| t <= now) {
                    self.s.timer_next_ns = self.next_period_after(now);
                }
            }
            TimerMode::TscDeadline => {}
        }
    }

    fn write_lvt_timer(&mut self, value: u32, now: u64) {
        let old_mode = self.timer_mode();
        let was_masked = self.timer_masked();
        self.s.lvt[LVT_TIMER] = value & LVT_TIMER_WRITABLE;
        let new_mode = self.timer_mode();
        if (old_mode == TimerMode::TscDeadline) != (new_mode == TimerMode::TscDeadline) {
            // Switching to or from TSC-deadline mode disarms the timer.
            self.s.timer_initial = 0;
            self.s.timer_next_ns = None;
            self.s.tsc_deadline = 0;
        } else if old_mode != new_mode && new_mode == TimerMode::Periodic {
            self.resync_timer(now);
        }
        if was_masked && !self.timer_masked() {
            self.resync_timer(now);
        }
    }

    fn write_divide(&mut self, value: u32, now: u64) {
        // Keep the count where it is and continue at the new rate.
        let elapsed = self.s.elapsed_counts(now);
        self.s.timer_divide = value & DIVIDE_WRITABLE;
        self.s.timer_start_ns = now;
        self.s.timer_start_count = elapsed;
        if self.s.timer_next_ns.is_none() || self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        self.s.timer_next_ns = match self.timer_mode() {
            TimerMode::Periodic => self.next_period_after(now),
            _ => Some(self.s.time_of_count(u64::from(self.s.timer_initial))),
        };
    }

    /// Reads IA32_TSC_DEADLINE: 0 outside TSC-deadline mode.
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.s.tsc_deadline
        } else {
            0
        }
    }

    /// Writes IA32_TSC_DEADLINE: arms (or with 0 disarms) the timer in
    /// TSC-deadline mode; ignored in the other modes.
    pub fn set_tsc_deadline(&mut self, value: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.s.tsc_deadline = value;
        }
    }

    // ---- registers ----

    /// Reads register `reg` (an xAPIC offset). `Err` for a register this
    /// mode does not have.
    fn read_register(&self, reg: u32, now: u64) -> Result<u32, MsrFault> {
        let x2 = self.x2apic();
        let value = match reg {
            REG_ID if x2 => self.initial_id,
            REG_ID => self.s.id,
            REG_VERSION => VERSION_VALUE,
            REG_TPR => self.s.tpr,
            REG_APR if !x2 => u32::from(self.apr()),
            REG_PPR => u32::from(self.ppr()),
            REG_EOI | REG_RRD if !x2 => 0,
            REG_LDR if x2 => self.x2apic_ldr(),
            REG_LDR => self.s.ldr,
            REG_DFR if !x2 => self.s.dfr | DFR_RESERVED_ONES,
            REG_SVR => self.s.svr,
            REG_ISR_FIRST..=REG_ISR_LAST if reg & 0xf == 0 => self.s.isr[((reg - REG_ISR_FIRST) >> 4) as usize],
            REG_TMR_FIRST..=REG_TMR_LAST if reg & 0xf == 0 => self.s.tmr[((reg - REG_TMR_FIRST) >> 4) as usize],
            REG_IRR_FIRST..=REG_IRR_LAST if reg & 0xf == 0 => self.s.irr[((reg - REG_IRR_FIRST) >> 4) as usize],
            REG_ESR => self.s.esr,
            REG_ICR_LOW => self.s.icr as u32,
            REG_ICR_HIGH if !x2 => (self.s.icr >> 32) as u32,
            REG_LVT_TIMER => self.s.lvt[LVT_TIMER],
            REG_LVT_THERMAL => self.s.lvt[LVT_THERMAL],
            REG_LVT_PERF => self.s.lvt[LVT_PERF],
            REG_LVT_LINT0 => self.s.lvt[LVT_LINT0],
            REG_LVT_LINT1 => self.s.lvt[LVT_LINT1],
            REG_LVT_ERROR => self.s.lvt[LVT_ERROR],
            REG_TIMER_INITIAL => self.s.timer_initial,
            REG_TIMER_CURRENT => self.s.current_count(now),
            REG_TIMER_DIVIDE => self.s.timer_divide,
            _ => return Err(MsrFault),
        };
        Ok(value)
    }

    /// Writes register `reg` (an xAPIC offset). `Err` for a register this
    /// mode does not have or cannot write.
    fn write_register(&mut self, reg: u32, value: u32, now: u64) -> Result<Option<LapicEffect>, MsrFault> {
        let x2 = self.x2apic();
        match reg {
            REG_ID if !x2 => self.s.id = value & LDR_XAPIC_MASK,
            REG_TPR => self.s.tpr = value & TPR_MASK,
            REG_EOI => {
                if x2 && value != 0 {
                    return Err(MsrFault);
                }
                return Ok(self.eoi());
            }
            REG_LDR if !x2 => self.s.ldr = value & LDR_XAPIC_MASK,
            REG_DFR if !x2 => self.s.dfr = (value & DFR_MODEL_MASK) | DFR_RESERVED_ONES,
            REG_SVR => {
                self.s.svr = value & SVR_WRITABLE;
                if self.s.svr & SVR_APIC_ENABLED == 0 {
                    // Software disable masks every LVT entry (10.4.7.2).
                    for lvt in &mut self.s.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
            }
            REG_ESR => {
                if x2 && value != 0 {
                    return Err(MsrFault);
                }
                self.s.esr = std::mem::take(&mut self.s.esr_pending);
            }
            REG_ICR_LOW if !x2 => {
                let low = value & ICR_XAPIC_LOW_WRITABLE;
                self.s.icr = (self.s.icr & 0xffff_ffff_0000_0000) | u64::from(low);
                return Ok(self.send_ipi());
            }
            REG_ICR_HIGH if !x2 => {
                let high = value & ICR_XAPIC_DEST_MASK;
                self.s.icr = (self.s.icr & 0xffff_ffff) | (u64::from(high) << 32);
            }
            REG_LVT_TIMER => self.write_lvt_timer(value, now),
            REG_LVT_THERMAL | REG_LVT_PERF | REG_LVT_LINT0 | REG_LVT_LINT1 | REG_LVT_ERROR => {
                let index = ((reg - REG_LVT_TIMER) >> 4) as usize;
                let mut v = value & LVT_WRITABLE[index];
                if !self.enabled() {
                    v |= LVT_MASKED;
                }
                self.s.lvt[index] = v;
            }
            REG_TIMER_INITIAL => {
                if self.timer_mode() != TimerMode::TscDeadline {
                    self.s.timer_initial = value;
                    self.start_timer(now);
                }
            }
            REG_TIMER_DIVIDE => self.write_divide(value, now),
            REG_SELF_IPI if x2 => {
                let vector = (value & 0xff) as u8;
                return Ok(Some(LapicEffect::Ipi(Ipi {
                    vector,
                    delivery_mode: DeliveryMode::Fixed,
                    logical: false,
                    destination: 0,
                    shorthand: Shorthand::SelfOnly,
                    level_triggered: false,
                    assert: true,
                })));
            }
            // Read-only registers: writes are ignored in xAPIC mode.
            REG_VERSION | REG_APR | REG_PPR | REG_RRD | REG_ISR_FIRST..=REG_IRR_LAST | REG_TIMER_CURRENT if !x2 => {}
            _ => return Err(MsrFault),
        }
        Ok(None)
    }

    /// Decodes the ICR into an IPI, checking the vector of fixed interrupts.
    fn send_ipi(&mut self) -> Option<LapicEffect> {
        let icr = self.s.icr;
        let delivery_mode = DeliveryMode::from_bits(((icr >> ICR_DELIVERY_MODE_SHIFT) & 0b111) as u8);
        let vector = (icr & ICR_VECTOR) as u8;
        if matches!(delivery_mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < FIRST_LEGAL_VECTOR {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            return None;
        }
        let destination = if self.x2apic() { (icr >> 32) as u32 } else { (icr >> 56) as u32 };
        let shorthand = match (icr >> ICR_SHORTHAND_SHIFT) & 0b11 {
            0b00 => Shorthand::None,
            0b01 => Shorthand::SelfOnly,
            0b10 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        Some(LapicEffect::Ipi(Ipi {
            vector,
            delivery_mode,
            logical: icr & ICR_DEST_LOGICAL != 0,
            destination,
            shorthand,
            level_triggered: icr & ICR_TRIGGER_LEVEL != 0,
            assert: icr & ICR_LEVEL_ASSERT != 0,
        }))
    }

    /// An xAPIC MMIO read at `offset` in the register page. Reads inside a
    /// register return its bytes; an unknown register reads 0 and sets the
    /// ESR's illegal-register bit.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8], now: u64) {
        if !self.hw_enabled() || self.x2apic() {
            // The page is not decoded in these modes (10.12.1.2).
            data.fill(0xff);
            return;
        }
        let reg = (offset & 0xff0) as u32;
        let byte = offset & 0xf;
        if offset >= LAPIC_MMIO_LEN || byte + data.len() as u64 > 4 {
            self.log_access(offset, data.len());
            data.fill(0xff);
            return;
        }
        let value = match self.read_register(reg, now) {
            Ok(v) => v,
            Err(MsrFault) => {
                self.s.esr_pending |= ESR_ILLEGAL_REGISTER;
                0
            }
        };
        crate::access::fill_le(data, u64::from(value >> (8 * byte)));
    }

    /// An xAPIC MMIO write at `offset`. Only aligned 32-bit writes reach a register.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], now: u64) -> Option<LapicEffect> {
        if !self.hw_enabled() || self.x2apic() {
            return None;
        }
        let &[b0, b1, b2, b3] = data else {
            self.log_access(offset, data.len());
            return None;
        };
        if offset & 0xf != 0 || offset >= LAPIC_MMIO_LEN {
            self.log_access(offset, data.len());
            return None;
        }
        let value = u32::from_le_bytes([b0, b1, b2, b3]);
        match self.write_register(offset as u32, value, now) {
            Ok(effect) => effect,
            Err(MsrFault) => {
                self.error(ESR_ILLEGAL_REGISTER);
                None
            }
        }
    }

    /// RDMSR of an x2APIC register (0x800-0x8FF). `Err` means #GP.
    pub fn x2apic_msr_read(&self, msr: u32, now: u64) -> Result<u64, MsrFault> {
        if !self.x2apic() || !(MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr) {
            return Err(MsrFault);
        }
        if msr == MSR_X2APIC_ICR {
            return Ok(self.s.icr);
        }
        let reg = (msr - MSR_X2APIC_FIRST) << 4;
        if reg == REG_EOI || reg == REG_SELF_IPI {
            return Err(MsrFault);
        }
        self.read_register(reg, now).map(u64::from)
    }

    /// WRMSR of an x2APIC register (0x800-0x8FF). `Err` means #GP.
    pub fn x2apic_msr_write(&mut self, msr: u32, value: u64, now: u64) -> Result<Option<LapicEffect>, MsrFault> {
        if !self.x2apic() || !(MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr) {
            return Err(MsrFault);
        }
        if msr == MSR_X2APIC_ICR {
            self.s.icr = value & (0xffff_ffff_0000_0000 | u64::from(ICR_XAPIC_LOW_WRITABLE));
            return Ok(self.send_ipi());
        }
        let value = u32::try_from(value).map_err(|_| MsrFault)?;
        self.write_register((msr - MSR_X2APIC_FIRST) << 4, value, now)
    }

    fn log_access(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(
                target: "devices",
                offset,
                size,
                "local APIC: registers take aligned 32-bit writes and reads within one register; access ignored (logged once)"
            );
        }
    }
}

/// The part name the local APIC's errors carry.
const PART: &str = "local APIC";

/// The ESR bits the model sets.
const ESR_KNOWN: u32 = ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR | ESR_ILLEGAL_REGISTER;
/// The bits of the 64-bit ICR that hold anything.
const ICR_KEPT: u64 = 0xffff_ffff_0000_0000 | ICR_XAPIC_LOW_WRITABLE as u64;

/// Fails unless `value` sets only bits of `allowed`.
fn check_bits(field: &'static str, value: u64, allowed: u64) -> Result<(), PersistError> {
    PersistError::check(value & !allowed == 0, PART, field, || {
        format!("is {value:#x}, with reserved bits outside {allowed:#x} set")
    })
}

/// Restore checks every register's reserved bits (IA32_APIC_BASE, ID, TPR,
/// LDR, DFR, SVR, ESR, ICR, each LVT entry, the divide configuration), the
/// APIC mode (x2APIC only when enabled), the vectors in IRR, ISR and TMR
/// (0-15 are illegal and never set) and the timer's consistency with its
/// mode (a TSC deadline only in TSC-deadline mode, a count and a
/// next expiry only in the others, an expiry only with a count).
impl Persist for LocalApic {
    type State = LapicState;

    fn save(&self) -> LapicState {
        self.s.clone()
    }

    fn restore(&mut self, state: &LapicState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl LocalApic {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &LapicState) -> Result<(), PersistError> {
        let s = state;
        check_bits("apic_base", s.apic_base, APIC_BASE_WRITABLE | APIC_BASE_BSP)?;
        PersistError::check(
            s.apic_base & APIC_BASE_EXTD == 0 || s.apic_base & APIC_BASE_ENABLE != 0,
            PART,
            "apic_base",
            || format!("is {:#x}: x2APIC mode with the APIC disabled", s.apic_base),
        )?;
        check_bits("id", s.id.into(), LDR_XAPIC_MASK.into())?;
        check_bits("tpr", s.tpr.into(), TPR_MASK.into())?;
        check_bits("ldr", s.ldr.into(), LDR_XAPIC_MASK.into())?;
        PersistError::check(s.dfr & DFR_RESERVED_ONES == DFR_RESERVED_ONES, PART, "dfr", || {
            format!("is {:#010x}; bits 27:0 read as ones", s.dfr)
        })?;
        check_bits("svr", s.svr.into(), SVR_WRITABLE.into())?;
        check_bits("esr", s.esr.into(), ESR_KNOWN.into())?;
        check_bits("esr_pending", s.esr_pending.into(), ESR_KNOWN.into())?;
        check_bits("icr", s.icr, ICR_KEPT)?;
        for (lvt, writable) in s.lvt.iter().zip(LVT_WRITABLE) {
            check_bits("lvt", (*lvt).into(), writable.into())?;
        }
        check_bits("timer_divide", s.timer_divide.into(), DIVIDE_WRITABLE.into())?;
        for (field, regs) in [("irr", &s.irr), ("isr", &s.isr), ("tmr", &s.tmr)] {
            PersistError::check(regs[0] & 0xffff == 0, PART, field, || {
                format!("has vectors 0-15 set ({:#06x}); they are illegal", regs[0] & 0xffff)
            })?;
        }
        let deadline_mode = (s.lvt[LVT_TIMER] & LVT_TIMER_MODE) >> LVT_TIMER_MODE_SHIFT == 0b10;
        if deadline_mode {
            PersistError::check(s.timer_initial == 0 && s.timer_next_ns.is_none(), PART, "timer_initial", || {
                format!(
                    "is {} (next expiry {:?}) in TSC-deadline mode, which has no count",
                    s.timer_initial, s.timer_next_ns
                )
            })?;
        } else {
            PersistError::check(s.tsc_deadline == 0, PART, "tsc_deadline", || {
                format!("is {:#x} outside TSC-deadline mode", s.tsc_deadline)
            })?;
            PersistError::check(s.timer_initial != 0 || s.timer_next_ns.is_none(), PART, "timer_next_ns", || {
                format!("is {:?} with no initial count", s.timer_next_ns)
            })?;
        }
        Ok(())
    }

    /// Loads a state [`LocalApic::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &LapicState) {
        self.s = state.clone();
    }
}

#[cfg(test)]
mod tests;
