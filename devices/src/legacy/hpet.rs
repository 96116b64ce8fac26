//! The high precision event timer block of a PC: one 64-bit main counter and
//! three comparators.
//!
//! Specification: Intel "IA-PC HPET (High Precision Event Timers)
//! Specification", revision 1.0a: 2.3.4 "Register Summary", 2.3.5 "General
//! Capabilities and ID Register", 2.3.6 "General Configuration Register",
//! 2.3.7 "General Interrupt Status Register", 2.3.8 "Main Counter Register",
//! 2.3.9 "Timer N Configuration and Capabilities Register" (2.3.9.1 "Mapping
//! Interrupts to the I/O APIC / Legacy Replacement Option", 2.3.9.2.1
//! "Non-Periodic Mode", 2.3.9.2.2 "Periodic Mode"), 2.3.10 "Timer N
//! Comparator Value Register", 2.3.11 "Timer N FSB Interrupt Route Register".
//!
//! ```text
//! offset  register (64-bit)                  bits
//! 0x000   GCAP_ID  capabilities and ID, RO   63:32 COUNTER_CLK_PERIOD (fs)  31:16 VENDOR_ID
//!                                            15 LEG_RT_CAP  13 COUNT_SIZE_CAP  12:8 NUM_TIM_CAP  7:0 REV_ID
//! 0x010   GEN_CONF general configuration     1 LEG_RT_CNF  0 ENABLE_CNF
//! 0x020   GINTR_STA interrupt status         n Tn_INT_STS (level mode; write 1 to clear)
//! 0x0f0   MAIN_CNT main counter              writable while ENABLE_CNF is 0
//! 0x100 + 0x20 n  Tn_CONF_CAP                63:32 Tn_INT_ROUTE_CAP  15 Tn_FSB_INT_DEL_CAP  14 Tn_FSB_EN_CNF
//!                                            13:9 Tn_INT_ROUTE_CNF  8 Tn_32MODE_CNF  6 Tn_VAL_SET_CNF
//!                                            5 Tn_SIZE_CAP  4 Tn_PER_INT_CAP  3 Tn_TYPE_CNF (periodic)
//!                                            2 Tn_INT_ENB_CNF  1 Tn_INT_TYPE_CNF (level)
//! 0x108 + 0x20 n  Tn_COMPARATOR
//! 0x110 + 0x20 n  Tn_FSB_INT_ROUTE           63:32 address  31:0 value
//! ```
//!
//! The block is the one QEMU's `pc` machine has: vendor 0x8086, revision 1,
//! a 100 MHz (10 ns) counter, three timers that are all periodic- and
//! 64-bit-capable, LegacyReplacement capable, no FSB (MSI) delivery.
//!
//! Interrupts. A timer whose Tn_INT_ROUTE_CNF names I/O APIC input `p`
//! drives that input (input 2 is ISA IRQ0's pin, so it is reached through
//! IRQ0). With LEG_RT_CNF set, timer 0 drives ISA IRQ0 (8259A input 0, I/O
//! APIC pin 2) and timer 1 ISA IRQ8 whatever their routes say, and the 8254's
//! IRQ0 and the RTC's IRQ8 are disconnected: the device tells the chipset
//! through its legacy-replacement callback. An edge-mode timer pulses its
//! line at each match; a level-mode timer sets its Tn_INT_STS bit and holds
//! its line until software writes 1 to that bit.
//!
//! Time. The counter is computed from the machine's clock, so reads need no
//! polling. Each timer keeps the counter value of its next match, unwrapped
//! (a `u128` that does not wrap at 2^64); [`Timed::next_deadline_ns`] gives
//! the clock time of the earliest. A non-periodic timer matches again once
//! the counter has wrapped (after 2^32 ticks, 42.9 s, in 32-bit mode), as
//! the specification says. A periodic timer whose matches fell behind (a
//! slow host) raises one late interrupt per poll, up to a second's worth,
//! as the 8254 model does, then skips to the next match in the future.
//!
//! Accesses are 32 or 64 bits wide and naturally aligned; others are logged
//! once and ignored (reads return all ones). Reserved offsets read as zero.

use std::sync::Arc;

use persist::{Persist, PersistError};

use crate::access::fill_le;
use crate::bus::BusDevice;
use crate::clock::{ns_for_ticks, ticks_in, SharedClock, Timed};
use crate::irq::IrqLine;
use crate::log_once::{LogOnce, Misuse};

/// Physical base of the register block, as the ACPI HPET table gives it.
pub const HPET_BASE: u64 = 0xfed0_0000;
/// Length of the register block: 1 KiB.
pub const HPET_MMIO_LEN: u64 = 0x400;
/// Number of comparators.
pub const HPET_NUM_TIMERS: usize = 3;
/// Main counter tick period in femtoseconds: 10 ns, as QEMU's.
pub const HPET_PERIOD_FS: u64 = 10_000_000;
/// Main counter frequency: 10^15 fs / period = 100 MHz.
pub const HPET_HZ: u64 = 1_000_000_000_000_000 / HPET_PERIOD_FS;
/// PCI vendor ID in GCAP_ID: Intel's, as QEMU reports.
pub const HPET_VENDOR_ID: u16 = 0x8086;
/// Revision of the implemented function.
pub const HPET_REV_ID: u8 = 0x01;
/// ISA IRQ timer 0 drives in legacy replacement mode (I/O APIC pin 2).
pub const HPET_LEGACY_TIMER0_IRQ: u32 = 0;
/// ISA IRQ timer 1 drives in legacy replacement mode.
pub const HPET_LEGACY_TIMER1_IRQ: u32 = 8;
/// I/O APIC inputs a timer may be routed to (Tn_INT_ROUTE_CAP): pin 2 (ISA
/// IRQ0's), pin 8 and the free GSIs 16-23, the set QEMU advertises on
/// machines with free I/O APIC pins. Linux routes the legacy timers itself
/// and uses the others only through /dev/hpet, which picks from these.
pub const HPET_INT_ROUTE_CAP: u32 = 0x00ff_0104;

// Register offsets (2.3.4).
const GCAP_ID: u64 = 0x000;
const GEN_CONF: u64 = 0x010;
const GINTR_STA: u64 = 0x020;
const MAIN_CNT: u64 = 0x0f0;
const TIMER_BASE: u64 = 0x100;
const TIMER_STRIDE: u64 = 0x20;
const TN_CONF_CAP: u64 = 0x00;
const TN_COMPARATOR: u64 = 0x08;
const TN_FSB_INT_ROUTE: u64 = 0x10;

// GCAP_ID (2.3.5).
const GCAP_NUM_TIM_SHIFT: u32 = 8;
const GCAP_COUNT_SIZE_CAP: u64 = 1 << 13;
const GCAP_LEG_RT_CAP: u64 = 1 << 15;
const GCAP_VENDOR_ID_SHIFT: u32 = 16;
const GCAP_COUNTER_CLK_PERIOD_SHIFT: u32 = 32;
/// The capabilities register: 0x0098_9680_8086_a201.
pub const HPET_GCAP_ID: u64 = (HPET_PERIOD_FS << GCAP_COUNTER_CLK_PERIOD_SHIFT)
    | ((HPET_VENDOR_ID as u64) << GCAP_VENDOR_ID_SHIFT)
    | GCAP_LEG_RT_CAP
    | GCAP_COUNT_SIZE_CAP
    | (((HPET_NUM_TIMERS - 1) as u64) << GCAP_NUM_TIM_SHIFT)
    | HPET_REV_ID as u64;

// GEN_CONF (2.3.6).
const ENABLE_CNF: u64 = 1 << 0;
const LEG_RT_CNF: u64 = 1 << 1;
const GEN_CONF_WRITABLE: u64 = ENABLE_CNF | LEG_RT_CNF;

// Tn_CONF_CAP (2.3.9).
const TN_INT_TYPE_CNF: u64 = 1 << 1;
const TN_INT_ENB_CNF: u64 = 1 << 2;
const TN_TYPE_CNF: u64 = 1 << 3;
const TN_PER_INT_CAP: u64 = 1 << 4;
const TN_SIZE_CAP: u64 = 1 << 5;
const TN_VAL_SET_CNF: u64 = 1 << 6;
const TN_32MODE_CNF: u64 = 1 << 8;
const TN_INT_ROUTE_CNF_SHIFT: u32 = 9;
const TN_INT_ROUTE_CNF_MASK: u64 = 0x1f << TN_INT_ROUTE_CNF_SHIFT;
const TN_INT_ROUTE_CAP_SHIFT: u32 = 32;
/// Read-only bits every timer reports: periodic and 64-bit capable, the route capabilities.
const TN_CAPS: u64 = TN_PER_INT_CAP | TN_SIZE_CAP | ((HPET_INT_ROUTE_CAP as u64) << TN_INT_ROUTE_CAP_SHIFT);
/// Bits software may write (Tn_FSB_EN_CNF stays 0: no FSB delivery).
const TN_WRITABLE: u64 =
    TN_INT_TYPE_CNF | TN_INT_ENB_CNF | TN_TYPE_CNF | TN_VAL_SET_CNF | TN_32MODE_CNF | TN_INT_ROUTE_CNF_MASK;

const LOW_32: u64 = 0xffff_ffff;

/// The state of one timer, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HpetTimerState {
    /// Tn_CONF_CAP's writable bits.
    pub config: u64,
    /// Tn_COMPARATOR: the counter value of the next match.
    pub comparator: u64,
    /// The periodic accumulator: what the comparator grows by at each match.
    pub period: u64,
    /// Tn_FSB_INT_ROUTE (kept, unused: FSB delivery is not offered).
    pub fsb_route: u64,
    /// Unwrapped counter value of the next match, `None` while the counter is halted.
    pub next_match: Option<u128>,
}

/// The state of the HPET, for save and restore. Times are clock nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HpetState {
    /// GEN_CONF.
    pub config: u64,
    /// GINTR_STA.
    pub status: u64,
    /// The main counter at `base_ns` (its value while halted).
    pub counter_base: u64,
    /// When the counter last started or was written.
    pub base_ns: u64,
    /// The timers.
    pub timers: [HpetTimerState; HPET_NUM_TIMERS],
}

impl HpetState {
    /// The power-on state: counter halted at 0, timers one-shot, edge,
    /// disabled, comparators all ones.
    pub fn power_on() -> Self {
        let timer = HpetTimerState { config: 0, comparator: u64::MAX, period: 0, fsb_route: 0, next_match: None };
        Self { config: 0, status: 0, counter_base: 0, base_ns: 0, timers: [timer; HPET_NUM_TIMERS] }
    }
}

/// Which line a timer drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Legacy replacement: ISA IRQ0 for timer 0, IRQ8 for timer 1.
    Legacy,
    /// I/O APIC input `n` (Tn_INT_ROUTE_CNF).
    Pin(u8),
}

/// The lines of one timer.
struct TimerLines {
    /// Its legacy replacement line (timers 0 and 1).
    legacy: Option<Arc<dyn IrqLine>>,
    /// One line per I/O APIC input in [`HPET_INT_ROUTE_CAP`], by pin.
    pins: Vec<Option<Arc<dyn IrqLine>>>,
    /// The line held asserted now (level mode).
    asserted: Option<Route>,
}

impl TimerLines {
    fn line(&self, route: Route) -> Option<&Arc<dyn IrqLine>> {
        match route {
            Route::Legacy => self.legacy.as_ref(),
            Route::Pin(p) => self.pins.get(usize::from(p)).and_then(Option::as_ref),
        }
    }
}

/// Called with true when LEG_RT_CNF is set and false when it is cleared.
pub type LegacyReplacementHook = Box<dyn Fn(bool) + Send + Sync>;

/// The HPET.
pub struct Hpet {
    s: HpetState,
    /// The clock time of the earliest next match, kept up to date by every
    /// change, so the run loop's frequent polls cost one load.
    deadline: Option<u64>,
    clock: SharedClock,
    lines: Vec<TimerLines>,
    legacy_hook: LegacyReplacementHook,
    log: LogOnce,
}

impl std::fmt::Debug for Hpet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hpet").field("state", &self.s).finish_non_exhaustive()
    }
}

/// The interrupt controller input of I/O APIC pin `pin`: pin 2 is fed by ISA IRQ0.
fn input_of_pin(pin: u32) -> u32 {
    if pin == 2 {
        HPET_LEGACY_TIMER0_IRQ
    } else {
        pin
    }
}

impl Hpet {
    /// An HPET in its power-on state. `irq_line(n)` hands out a line for
    /// interrupt controller input `n` (ISA IRQs 0-15, GSIs 16-23); one is
    /// taken per timer and route. `legacy_hook` hears LEG_RT_CNF changes, to
    /// disconnect the 8254's IRQ0 and the RTC's IRQ8.
    pub fn new(
        clock: SharedClock,
        irq_line: &dyn Fn(u32) -> Arc<dyn IrqLine>,
        legacy_hook: LegacyReplacementHook,
    ) -> Self {
        let lines = (0..HPET_NUM_TIMERS)
            .map(|n| TimerLines {
                legacy: match n {
                    0 => Some(irq_line(HPET_LEGACY_TIMER0_IRQ)),
                    1 => Some(irq_line(HPET_LEGACY_TIMER1_IRQ)),
                    _ => None,
                },
                pins: (0..32u32)
                    .map(|p| (HPET_INT_ROUTE_CAP & (1 << p) != 0).then(|| irq_line(input_of_pin(p))))
                    .collect(),
                asserted: None,
            })
            .collect();
        Self { s: HpetState::power_on(), deadline: None, clock, lines, legacy_hook, log: LogOnce::new() }
    }

    fn enabled(&self) -> bool {
        self.s.config & ENABLE_CNF != 0
    }

    fn legacy(&self) -> bool {
        self.s.config & LEG_RT_CNF != 0
    }

    /// The main counter, unwrapped, at `now`.
    fn counter_unwrapped(&self, now: u64) -> u128 {
        let base = u128::from(self.s.counter_base);
        if self.enabled() {
            base + u128::from(ticks_in(now.saturating_sub(self.s.base_ns), HPET_HZ))
        } else {
            base
        }
    }

    /// The main counter register at `now`.
    pub fn counter(&self, now: u64) -> u64 {
        // The low 64 bits: the register wraps.
        self.counter_unwrapped(now) as u64
    }

    /// Clock time at which the unwrapped counter reaches `value`, `None` past `u64::MAX` ns.
    fn time_of(&self, value: u128) -> Option<u64> {
        let ticks = u64::try_from(value.saturating_sub(u128::from(self.s.counter_base))).ok()?;
        let ns = self.s.base_ns.checked_add(ns_for_ticks(ticks, HPET_HZ))?;
        (ns != u64::MAX).then_some(ns)
    }

    /// The bits of the counter timer `n` compares: 32 in 32-bit mode, else 64.
    fn width_mask(&self, n: usize) -> u64 {
        if self.s.timers[n].config & TN_32MODE_CNF != 0 {
            LOW_32
        } else {
            u64::MAX
        }
    }

    /// Sets timer `n`'s next match from the counter at `now`.
    fn arm(&mut self, n: usize, now: u64) {
        if !self.enabled() {
            self.s.timers[n].next_match = None;
            return;
        }
        let counter = self.counter_unwrapped(now);
        let mask = self.width_mask(n);
        let ahead = self.s.timers[n].comparator.wrapping_sub(counter as u64) & mask;
        self.s.timers[n].next_match = Some(counter + u128::from(ahead));
    }

    fn arm_all(&mut self, now: u64) {
        for n in 0..HPET_NUM_TIMERS {
            self.arm(n, now);
        }
    }

    /// The line timer `n` drives now, if any.
    fn route(&self, n: usize) -> Route {
        if self.legacy() && n < 2 {
            Route::Legacy
        } else {
            let pin = (self.s.timers[n].config & TN_INT_ROUTE_CNF_MASK) >> TN_INT_ROUTE_CNF_SHIFT;
            Route::Pin(pin as u8)
        }
    }

    /// Drives every level-mode line to what the registers say.
    fn update_lines(&mut self) {
        for n in 0..HPET_NUM_TIMERS {
            let config = self.s.timers[n].config;
            let active = self.enabled()
                && config & TN_INT_ENB_CNF != 0
                && config & TN_INT_TYPE_CNF != 0
                && self.s.status & (1 << n) != 0;
            let want = active.then(|| self.route(n)).filter(|&r| self.lines[n].line(r).is_some());
            let lines = &mut self.lines[n];
            if lines.asserted == want {
                continue;
            }
            if let Some(line) = lines.asserted.and_then(|r| lines.line(r)) {
                line.set_level(false);
            }
            if let Some(line) = want.and_then(|r| lines.line(r)) {
                line.set_level(true);
            }
            lines.asserted = want;
        }
    }

    /// Timer `n` matched: set its status or pulse its line.
    fn fire(&mut self, n: usize) {
        let config = self.s.timers[n].config;
        if config & TN_INT_TYPE_CNF != 0 {
            self.s.status |= 1 << n;
            self.update_lines();
            return;
        }
        if !self.enabled() || config & TN_INT_ENB_CNF == 0 {
            return;
        }
        let route = self.route(n);
        match self.lines[n].line(route) {
            Some(line) => line.pulse(),
            None => self.log_no_route(n),
        }
    }

    /// Advances timer `n` past the match at `at` (unwrapped), the counter being `counter`.
    fn advance(&mut self, n: usize, at: u128, counter: u128) {
        let mask = self.width_mask(n);
        let t = &mut self.s.timers[n];
        let period = t.period & mask;
        if t.config & TN_TYPE_CNF == 0 || period == 0 {
            // Non-periodic: the next match is when the counter comes round again.
            t.next_match = Some(at + u128::from(mask) + 1);
            return;
        }
        let behind = counter.saturating_sub(at);
        let steps = if behind < u128::from(HPET_HZ) { 1 } else { behind / u128::from(period) + 1 };
        let step = u128::from(period) * steps;
        // The comparator register holds the low bits of the next match.
        t.comparator = (u128::from(t.comparator) + step) as u64 & mask;
        t.next_match = Some(at + step);
    }

    /// Recomputes [`Hpet::deadline`] after a change of state.
    fn refresh_deadline(&mut self) {
        self.deadline = self.s.timers.iter().filter_map(|t| t.next_match.and_then(|m| self.time_of(m))).min();
    }

    /// Reads the 64-bit register at `reg` (8-byte aligned).
    fn read_register(&mut self, reg: u64, now: u64) -> u64 {
        self.tick(now);
        match reg {
            GCAP_ID => HPET_GCAP_ID,
            GEN_CONF => self.s.config,
            GINTR_STA => self.s.status,
            MAIN_CNT => self.counter(now),
            _ => match self.timer_register(reg) {
                Some((n, TN_CONF_CAP)) => self.s.timers[n].config | TN_CAPS,
                Some((n, TN_COMPARATOR)) => self.s.timers[n].comparator,
                Some((n, TN_FSB_INT_ROUTE)) => self.s.timers[n].fsb_route,
                _ => {
                    self.log_reserved(reg);
                    0
                }
            },
        }
    }

    /// Timer index and register offset of `reg`, if it is a timer's.
    fn timer_register(&self, reg: u64) -> Option<(usize, u64)> {
        let rel = reg.checked_sub(TIMER_BASE)?;
        let n = usize::try_from(rel / TIMER_STRIDE).ok().filter(|&n| n < HPET_NUM_TIMERS)?;
        Some((n, rel % TIMER_STRIDE))
    }

    /// Writes the bits `mask` of the 64-bit register at `reg` with `value`'s.
    fn write_register(&mut self, reg: u64, value: u64, mask: u64, now: u64) {
        self.tick(now);
        self.apply_write(reg, value, mask, now);
        self.refresh_deadline();
    }

    fn apply_write(&mut self, reg: u64, value: u64, mask: u64, now: u64) {
        let merge = |old: u64, writable: u64| (old & !(mask & writable)) | (value & mask & writable);
        match reg {
            GCAP_ID => {}
            GEN_CONF => {
                let old = self.s.config;
                let new = merge(old, GEN_CONF_WRITABLE);
                if (old ^ new) & ENABLE_CNF != 0 {
                    // Freeze or restart the counter where it stands.
                    self.s.counter_base = self.counter(now);
                    self.s.base_ns = now;
                }
                self.s.config = new;
                if (old ^ new) & ENABLE_CNF != 0 {
                    self.arm_all(now);
                }
                if (old ^ new) & LEG_RT_CNF != 0 {
                    (self.legacy_hook)(new & LEG_RT_CNF != 0);
                }
                self.update_lines();
            }
            GINTR_STA => {
                self.s.status &= !(value & mask & ((1 << HPET_NUM_TIMERS) - 1));
                self.update_lines();
            }
            MAIN_CNT => {
                if self.enabled() {
                    self.log_counter_running();
                    return;
                }
                self.s.counter_base = merge(self.s.counter_base, u64::MAX);
                self.s.base_ns = now;
            }
            _ => match self.timer_register(reg) {
                Some((n, TN_CONF_CAP)) => self.write_timer_config(n, merge(self.s.timers[n].config, TN_WRITABLE), now),
                Some((n, TN_COMPARATOR)) => self.write_comparator(n, value, mask, now),
                Some((n, TN_FSB_INT_ROUTE)) => {
                    self.s.timers[n].fsb_route = merge(self.s.timers[n].fsb_route, u64::MAX);
                }
                _ => self.log_reserved(reg),
            },
        }
    }

    fn write_timer_config(&mut self, n: usize, mut new: u64, now: u64) {
        let route = (new & TN_INT_ROUTE_CNF_MASK) >> TN_INT_ROUTE_CNF_SHIFT;
        if HPET_INT_ROUTE_CAP & (1 << route) == 0 {
            // The route does not take: it reads back unchanged (2.3.9, Tn_INT_ROUTE_CNF).
            if route != (self.s.timers[n].config & TN_INT_ROUTE_CNF_MASK) >> TN_INT_ROUTE_CNF_SHIFT {
                self.log_bad_route(n, route);
            }
            new = (new & !TN_INT_ROUTE_CNF_MASK) | (self.s.timers[n].config & TN_INT_ROUTE_CNF_MASK);
        }
        let t = &mut self.s.timers[n];
        if new & TN_32MODE_CNF != 0 {
            t.comparator &= LOW_32;
            t.period &= LOW_32;
        }
        let rearm = (t.config ^ new) & (TN_TYPE_CNF | TN_32MODE_CNF) != 0;
        t.config = new;
        if rearm {
            self.arm(n, now);
        }
        self.update_lines();
    }

    /// A comparator write (2.3.9.2.2): in periodic mode it sets the
    /// accumulator, and also the comparator while Tn_VAL_SET_CNF is set,
    /// which the write clears.
    fn write_comparator(&mut self, n: usize, value: u64, mask: u64, now: u64) {
        let width = self.width_mask(n);
        let t = &mut self.s.timers[n];
        let mask = mask & width;
        let merge = |old: u64| (old & !mask) | (value & mask);
        if t.config & TN_TYPE_CNF == 0 || t.config & TN_VAL_SET_CNF != 0 {
            t.comparator = merge(t.comparator);
        }
        t.period = merge(t.period);
        t.config &= !TN_VAL_SET_CNF;
        self.arm(n, now);
    }

    fn log_access(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(
                target: "devices",
                offset = format_args!("{offset:#x}"),
                size,
                "HPET: registers take aligned 4- or 8-byte accesses; access ignored (logged once)"
            );
        }
    }

    fn log_reserved(&self, reg: u64) {
        if self.log.first(Misuse::Unimplemented) {
            tracing::warn!(
                target: "devices",
                offset = format_args!("{reg:#x}"),
                "HPET: reserved register; reads as 0, writes ignored (logged once)"
            );
        }
    }

    fn log_counter_running(&self) {
        if self.log.first(Misuse::BadValue) {
            tracing::warn!(
                target: "devices",
                "HPET: main counter written while ENABLE_CNF is set; clear it first; write ignored (logged once)"
            );
        }
    }

    fn log_bad_route(&self, n: usize, route: u64) {
        if self.log.first(Misuse::OutOfWindow) {
            tracing::warn!(
                target: "devices",
                timer = n,
                route,
                caps = format_args!("{HPET_INT_ROUTE_CAP:#x}"),
                "HPET: Tn_INT_ROUTE_CNF names an I/O APIC input outside Tn_INT_ROUTE_CAP; route unchanged (logged once)"
            );
        }
    }

    fn log_no_route(&self, n: usize) {
        if self.log.first(Misuse::Unimplemented) {
            tracing::warn!(
                target: "devices",
                timer = n,
                "HPET: a timer with interrupts enabled has no route set; interrupt dropped (logged once)"
            );
        }
    }
}

/// The part name the HPET's errors carry.
const PART: &str = "HPET";

/// Fails unless `value` sets only bits of `allowed`.
fn check_bits(field: &'static str, value: u64, allowed: u64) -> Result<(), PersistError> {
    PersistError::check(value & !allowed == 0, PART, field, || {
        format!("is {value:#x}, with bits outside {allowed:#x} set")
    })
}

impl HpetTimerState {
    /// Checks a timer against what its registers can hold: writable
    /// configuration bits, a route in Tn_INT_ROUTE_CAP (or the power-on
    /// route 0), 32-bit values in 32-bit mode, and a next match exactly
    /// while the counter runs, not behind the counter's base.
    fn check(&self, enabled: bool, counter_base: u64) -> Result<(), PersistError> {
        check_bits("timers.config", self.config, TN_WRITABLE)?;
        let route = (self.config & TN_INT_ROUTE_CNF_MASK) >> TN_INT_ROUTE_CNF_SHIFT;
        PersistError::check(route == 0 || HPET_INT_ROUTE_CAP & (1 << route) != 0, PART, "timers.config", || {
            format!("routes to I/O APIC input {route}, outside Tn_INT_ROUTE_CAP {HPET_INT_ROUTE_CAP:#x}")
        })?;
        if self.config & TN_32MODE_CNF != 0 {
            PersistError::check_max(PART, "timers.comparator", self.comparator, LOW_32)?;
            PersistError::check_max(PART, "timers.period", self.period, LOW_32)?;
        }
        PersistError::check(self.next_match.is_some() == enabled, PART, "timers.next_match", || {
            format!("is {:?} while the counter is {}", self.next_match, if enabled { "running" } else { "halted" })
        })?;
        PersistError::check(
            self.next_match.is_none_or(|m| m >= u128::from(counter_base)),
            PART,
            "timers.next_match",
            || format!("{:?} is behind the counter's base {counter_base}", self.next_match),
        )
    }
}

/// Restore checks GEN_CONF's and GINTR_STA's bits and each timer's:
/// writable configuration bits, a route in Tn_INT_ROUTE_CAP (or the
/// power-on route 0), 32-bit values in 32-bit mode, and a next match
/// exactly while the counter runs, not behind the counter's base. Then it
/// tells the chipset about a change of LegacyReplacement, recomputes the
/// next deadline and re-drives every level-mode line from the status bits.
impl Persist for Hpet {
    type State = HpetState;

    fn save(&self) -> HpetState {
        self.s
    }

    fn restore(&mut self, state: &HpetState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl Hpet {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &HpetState) -> Result<(), PersistError> {
        check_bits("config", state.config, GEN_CONF_WRITABLE)?;
        check_bits("status", state.status, (1 << HPET_NUM_TIMERS) - 1)?;
        let enabled = state.config & ENABLE_CNF != 0;
        for t in &state.timers {
            t.check(enabled, state.counter_base)?;
        }
        Ok(())
    }

    /// Loads a state [`Hpet::check_state`] passed, with its side effects
    /// (the legacy switch, the deadline, the lines).
    pub(crate) fn load_state(&mut self, state: &HpetState) {
        let legacy_before = self.legacy();
        self.s = *state;
        if self.legacy() != legacy_before {
            (self.legacy_hook)(self.legacy());
        }
        self.refresh_deadline();
        // Re-drive every line from scratch.
        for lines in &mut self.lines {
            if let Some(line) = lines.asserted.take().and_then(|r| lines.line(r)) {
                line.set_level(false);
            }
        }
        self.update_lines();
    }
}

impl Timed for Hpet {
    fn next_deadline_ns(&self) -> Option<u64> {
        self.deadline
    }

    fn tick(&mut self, now_ns: u64) {
        if !self.enabled() {
            return;
        }
        if self.deadline.is_none_or(|d| d > now_ns) {
            return;
        }
        let counter = self.counter_unwrapped(now_ns);
        for n in 0..HPET_NUM_TIMERS {
            let Some(at) = self.s.timers[n].next_match.filter(|&m| m <= counter) else {
                continue;
            };
            self.advance(n, at, counter);
            self.fire(n);
        }
        self.refresh_deadline();
    }
}

impl BusDevice for Hpet {
    fn debug_label(&self) -> String {
        "HPET".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let size = data.len() as u64;
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(size) || offset >= HPET_MMIO_LEN {
            self.log_access(offset, data.len());
            data.fill(0xff);
            return;
        }
        let now = self.clock.now_ns();
        let value = self.read_register(offset & !7, now);
        let shift = (offset & 4) * 8;
        fill_le(data, value >> shift);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let size = data.len() as u64;
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(size) || offset >= HPET_MMIO_LEN {
            self.log_access(offset, data.len());
            return;
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let shift = (offset & 4) * 8;
        let value = u64::from_le_bytes(bytes) << shift;
        let mask = if size == 8 { u64::MAX } else { LOW_32 << shift };
        let now = self.clock.now_ns();
        self.write_register(offset & !7, value, mask, now);
    }
}

#[cfg(test)]
mod tests;
