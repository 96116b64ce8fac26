//! Tests of the HPET model.

use super::*;
use crate::clock::{Clock, ManualClock, NANOS_PER_SEC};
use crate::irq::RecordingIrq;
use std::sync::atomic::{AtomicU32, Ordering};

/// An HPET on a fake clock whose lines are recorded per controller input.
struct Rig {
    hpet: Hpet,
    clock: Arc<ManualClock>,
    inputs: Arc<Vec<Arc<RecordingIrq>>>,
    legacy_on: Arc<AtomicU32>,
    legacy_off: Arc<AtomicU32>,
}

const TIMER0_ROUTED_TO_PIN2: u64 = 2 << TN_INT_ROUTE_CNF_SHIFT;

impl Rig {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(1_000));
        let inputs: Arc<Vec<Arc<RecordingIrq>>> = Arc::new((0..24).map(|_| Arc::new(RecordingIrq::new())).collect());
        let legacy_on = Arc::new(AtomicU32::new(0));
        let legacy_off = Arc::new(AtomicU32::new(0));
        let lines = Arc::clone(&inputs);
        let (on, off) = (Arc::clone(&legacy_on), Arc::clone(&legacy_off));
        let hpet = Hpet::new(
            clock.clone(),
            &move |irq| -> Arc<dyn IrqLine> { lines[irq as usize].clone() },
            Box::new(move |legacy| {
                if legacy {
                    on.fetch_add(1, Ordering::SeqCst);
                } else {
                    off.fetch_add(1, Ordering::SeqCst);
                }
            }),
        );
        Self { hpet, clock, inputs, legacy_on, legacy_off }
    }
    fn r64(&mut self, reg: u64) -> u64 {
        let mut d = [0u8; 8];
        self.hpet.read(reg, &mut d);
        u64::from_le_bytes(d)
    }
    fn r32(&mut self, reg: u64) -> u32 {
        let mut d = [0u8; 4];
        self.hpet.read(reg, &mut d);
        u32::from_le_bytes(d)
    }
    fn w64(&mut self, reg: u64, v: u64) {
        self.hpet.write(reg, &v.to_le_bytes());
    }
    fn w32(&mut self, reg: u64, v: u32) {
        self.hpet.write(reg, &v.to_le_bytes());
    }
    fn conf(n: u64) -> u64 {
        TIMER_BASE + n * TIMER_STRIDE + TN_CONF_CAP
    }
    fn cmp(n: u64) -> u64 {
        TIMER_BASE + n * TIMER_STRIDE + TN_COMPARATOR
    }
    /// The run loop: move the clock to `t` ns after the start and poll.
    fn run_to(&mut self, t: u64) {
        let now = 1_000 + t;
        self.clock.set(now);
        if self.hpet.next_deadline_ns().is_some_and(|d| d <= now) {
            self.hpet.tick(now);
        }
    }
    fn pulses(&self, input: usize) -> u32 {
        self.inputs[input].pulses()
    }
    fn level(&self, input: usize) -> bool {
        self.inputs[input].level()
    }
}

#[test]
fn capabilities_name_a_100_mhz_64_bit_counter_with_three_timers() {
    let mut h = Rig::new();
    assert_eq!(h.r64(GCAP_ID), 0x0098_9680_8086_a201);
    assert_eq!(h.r32(GCAP_ID), 0x8086_a201, "the event timer block ID the ACPI table repeats");
    assert_eq!(u64::from(h.r32(GCAP_ID + 4)), HPET_PERIOD_FS);
    assert_eq!(HPET_HZ, 100_000_000);
    h.w64(GCAP_ID, 0);
    assert_eq!(h.r64(GCAP_ID), HPET_GCAP_ID, "read-only");
    for n in 0..3 {
        let caps = h.r64(Rig::conf(n));
        assert_eq!(caps & (TN_PER_INT_CAP | TN_SIZE_CAP), TN_PER_INT_CAP | TN_SIZE_CAP);
        assert_eq!(caps >> 32, u64::from(HPET_INT_ROUTE_CAP));
        assert_eq!(caps & (1 << 15), 0, "no FSB delivery");
        assert_eq!(h.r64(Rig::cmp(n)), u64::MAX, "comparators reset to all ones");
    }
    assert_eq!(h.r64(GEN_CONF), 0);
    assert_eq!(h.r64(0x0f8), 0, "reserved space reads as zero");
    h.w64(0x0f8, u64::MAX);
    assert_eq!(h.r64(0x0f8), 0);
}

#[test]
fn counter_runs_at_the_advertised_period_only_while_enabled() {
    let mut h = Rig::new();
    h.run_to(NANOS_PER_SEC);
    assert_eq!(h.r64(MAIN_CNT), 0, "halted at power-on");
    h.w64(GEN_CONF, ENABLE_CNF);
    h.run_to(2 * NANOS_PER_SEC);
    assert_eq!(h.r64(MAIN_CNT), HPET_HZ, "one second of 10 ns ticks");
    h.run_to(2 * NANOS_PER_SEC + 25);
    assert_eq!(h.r64(MAIN_CNT), HPET_HZ + 2);
    h.w64(MAIN_CNT, 5);
    assert_eq!(h.r64(MAIN_CNT), HPET_HZ + 2, "not writable while running");
    h.w64(GEN_CONF, 0);
    h.run_to(3 * NANOS_PER_SEC);
    assert_eq!(h.r64(MAIN_CNT), HPET_HZ + 2, "halted");
    h.w32(MAIN_CNT + 4, 0xffff_ffff);
    h.w32(MAIN_CNT, 0xffff_fffe);
    assert_eq!(h.r64(MAIN_CNT), u64::MAX - 1, "writable in halves while halted");
    assert_eq!(h.r32(MAIN_CNT + 4), 0xffff_ffff);
    h.w64(GEN_CONF, ENABLE_CNF);
    h.run_to(3 * NANOS_PER_SEC + 30);
    assert_eq!(h.r64(MAIN_CNT), 1, "the 64-bit counter wraps");
}

#[test]
fn one_shot_fires_once() {
    let mut h = Rig::new();
    h.w64(Rig::conf(0), TN_INT_ENB_CNF | TIMER0_ROUTED_TO_PIN2);
    h.w64(Rig::cmp(0), 1_000);
    assert_eq!(h.hpet.next_deadline_ns(), None, "the counter is halted");
    h.w64(GEN_CONF, ENABLE_CNF);
    assert_eq!(h.hpet.next_deadline_ns(), Some(1_000 + 10_000), "1000 ticks of 10 ns");
    h.run_to(9_999);
    assert_eq!(h.pulses(0), 0);
    h.run_to(10_000);
    assert_eq!(h.pulses(0), 1, "pin 2 is ISA IRQ0's input");
    for t in 1..=10 {
        h.run_to(10_000 + t * NANOS_PER_SEC);
    }
    assert_eq!(h.pulses(0), 1, "a 64-bit comparator matches once in 5,800 years");
    assert_eq!(h.hpet.next_deadline_ns(), None);
    assert_eq!(h.r64(Rig::cmp(0)), 1_000, "a one-shot comparator stays put");
    assert_eq!(h.r64(GINTR_STA), 0, "edge mode sets no status");
    // Rearming: a new comparator value.
    let now = h.r64(MAIN_CNT);
    h.w64(Rig::cmp(0), now + 100);
    h.run_to(10_000 + 10 * NANOS_PER_SEC + 1_000);
    assert_eq!(h.pulses(0), 2);
    // Interrupts disabled: the match happens, nothing is raised.
    h.w64(Rig::conf(0), TIMER0_ROUTED_TO_PIN2);
    let now = h.r64(MAIN_CNT);
    h.w64(Rig::cmp(0), now + 100);
    h.run_to(10_000 + 11 * NANOS_PER_SEC);
    assert_eq!(h.pulses(0), 2);
}

#[test]
fn periodic_reloads_from_the_accumulator() {
    let mut h = Rig::new();
    // Linux's sequence: VAL_SET, the first comparator, then the period.
    h.w64(Rig::conf(2), TN_INT_ENB_CNF | TN_TYPE_CNF | TN_VAL_SET_CNF | (16 << TN_INT_ROUTE_CNF_SHIFT));
    h.w64(Rig::cmp(2), 1_000);
    assert_eq!(h.r64(Rig::conf(2)) & TN_VAL_SET_CNF, 0, "VAL_SET clears itself");
    h.w64(Rig::cmp(2), 500);
    assert_eq!(h.r64(Rig::cmp(2)), 1_000, "without VAL_SET only the accumulator changes");
    h.w64(GEN_CONF, ENABLE_CNF);
    h.run_to(10_000);
    assert_eq!(h.pulses(16), 1);
    assert_eq!(h.r64(Rig::cmp(2)), 1_500, "the comparator grew by the period");
    for (t, n) in [(14_999, 1), (15_000, 2), (20_000, 3), (25_000, 4)] {
        h.run_to(t);
        assert_eq!(h.pulses(16), n, "at {t} ns");
    }
    assert_eq!(h.hpet.next_deadline_ns(), Some(1_000 + 30_000));
    // A slow host: late periods come one per poll, in order.
    h.run_to(42_000);
    assert_eq!(h.pulses(16), 5);
    h.run_to(42_000);
    assert_eq!(h.pulses(16), 6);
    h.run_to(42_000);
    assert_eq!(h.pulses(16), 7);
    h.run_to(42_000);
    assert_eq!(h.pulses(16), 7, "caught up");
    // More than a second behind: skip to the next period in the future.
    h.run_to(5 * NANOS_PER_SEC + 2_000);
    assert_eq!(h.pulses(16), 8);
    assert_eq!(h.hpet.next_deadline_ns(), Some(1_000 + 5 * NANOS_PER_SEC + 5_000));
    assert_eq!(h.r64(Rig::cmp(2)), 500 * 1_000_001);
    // Back to one-shot: it fires at the comparator once.
    h.w64(Rig::conf(2), TN_INT_ENB_CNF | (16 << TN_INT_ROUTE_CNF_SHIFT));
    h.run_to(5 * NANOS_PER_SEC + 5_000);
    h.run_to(6 * NANOS_PER_SEC);
    assert_eq!(h.pulses(16), 9);
}

#[test]
fn thirty_two_bit_mode_wraps() {
    let mut h = Rig::new();
    h.w64(MAIN_CNT, 0xffff_ff00);
    h.w64(Rig::conf(1), TN_INT_ENB_CNF | TN_32MODE_CNF | (8 << TN_INT_ROUTE_CNF_SHIFT));
    assert_eq!(h.r64(Rig::cmp(1)), 0xffff_ffff, "the comparator's upper half is cleared");
    h.w32(Rig::cmp(1) + 4, 0x1234);
    assert_eq!(h.r32(Rig::cmp(1) + 4), 0, "and stays zero in 32-bit mode");
    h.w64(Rig::cmp(1), 0xdead_0000_0010);
    assert_eq!(h.r64(Rig::cmp(1)), 0x10);
    h.w64(GEN_CONF, ENABLE_CNF);
    // 0x110 ticks to the low 32 bits' wrap to 0x10.
    assert_eq!(h.hpet.next_deadline_ns(), Some(1_000 + 0x110 * 10));
    h.run_to(0x110 * 10);
    assert_eq!(h.pulses(8), 1);
    assert_eq!(h.r64(MAIN_CNT), 0x1_0000_0010, "the main counter itself has 64 bits");
    // One-shot in 32-bit mode matches again when the low half comes round.
    let again = 1_000 + (0x110 + (1u64 << 32)) * 10;
    assert_eq!(h.hpet.next_deadline_ns(), Some(again));
    h.run_to(again - 1_000 - 1);
    assert_eq!(h.pulses(8), 1);
    h.run_to(again - 1_000);
    assert_eq!(h.pulses(8), 2);

    // Periodic in 32-bit mode: the comparator wraps with the counter.
    let mut h = Rig::new();
    h.w64(MAIN_CNT, 0xffff_ff00);
    h.w64(Rig::conf(0), TN_INT_ENB_CNF | TN_TYPE_CNF | TN_VAL_SET_CNF | TN_32MODE_CNF | TIMER0_ROUTED_TO_PIN2);
    h.w32(Rig::cmp(0), 0xffff_ff80);
    h.w32(Rig::cmp(0), 0x100);
    h.w64(GEN_CONF, ENABLE_CNF);
    h.run_to(0x80 * 10);
    assert_eq!(h.r64(Rig::cmp(0)), 0x80, "0xffffff80 + 0x100 in 32 bits");
    h.run_to(0x180 * 10);
    assert_eq!(h.pulses(0), 2);
    assert_eq!(h.r64(Rig::cmp(0)), 0x180);
}

#[test]
fn legacy_replacement_routes_timers_0_and_1_to_irq0_and_irq8() {
    let mut h = Rig::new();
    h.w64(Rig::conf(0), TN_INT_ENB_CNF | (16 << TN_INT_ROUTE_CNF_SHIFT));
    h.w64(Rig::conf(1), TN_INT_ENB_CNF | (17 << TN_INT_ROUTE_CNF_SHIFT));
    h.w64(Rig::conf(2), TN_INT_ENB_CNF | (18 << TN_INT_ROUTE_CNF_SHIFT));
    for n in 0..3 {
        h.w64(Rig::cmp(n), 100 * (n + 1));
    }
    h.w64(GEN_CONF, ENABLE_CNF | LEG_RT_CNF);
    assert_eq!(h.legacy_on.load(Ordering::SeqCst), 1, "the 8254 and RTC lines are disconnected");
    assert_eq!(h.r64(GEN_CONF), ENABLE_CNF | LEG_RT_CNF);
    h.run_to(3_000);
    assert_eq!((h.pulses(0), h.pulses(8), h.pulses(16), h.pulses(17)), (1, 1, 0, 0));
    assert_eq!(h.pulses(18), 1, "timer 2 keeps its own route");
    h.w64(GEN_CONF, ENABLE_CNF);
    assert_eq!(h.legacy_off.load(Ordering::SeqCst), 1, "reconnected");
    let now = h.r64(MAIN_CNT);
    h.w64(Rig::cmp(0), now + 10);
    h.w64(Rig::cmp(1), now + 10);
    h.run_to(4_000);
    assert_eq!((h.pulses(0), h.pulses(8), h.pulses(16), h.pulses(17)), (1, 1, 1, 1));
    // Level mode: switching the route moves the asserted line.
    h.w64(Rig::conf(0), TN_INT_ENB_CNF | TN_INT_TYPE_CNF | (16 << TN_INT_ROUTE_CNF_SHIFT));
    let now = h.r64(MAIN_CNT);
    h.w64(Rig::cmp(0), now + 10);
    h.run_to(5_000);
    assert!(h.level(16));
    h.w64(GEN_CONF, ENABLE_CNF | LEG_RT_CNF);
    assert!(!h.level(16) && h.level(0), "the held interrupt follows the legacy route");
    h.w64(GINTR_STA, 1);
    assert!(!h.level(0));
}

#[test]
fn level_status_is_write_one_to_clear_and_holds_the_line() {
    let mut h = Rig::new();
    let route = 20 << TN_INT_ROUTE_CNF_SHIFT;
    h.w64(Rig::conf(2), TN_INT_TYPE_CNF | route);
    h.w64(Rig::cmp(2), 100);
    h.w64(GEN_CONF, ENABLE_CNF);
    h.run_to(1_000);
    assert_eq!(h.r64(GINTR_STA), 1 << 2, "the status is set with interrupts disabled");
    assert!(!h.level(20), "but the line stays low");
    h.w64(Rig::conf(2), TN_INT_TYPE_CNF | TN_INT_ENB_CNF | route);
    assert!(h.level(20), "enabling the interrupt asserts it");
    h.run_to(NANOS_PER_SEC);
    assert!(h.level(20), "held until cleared");
    h.w64(GINTR_STA, 0b011);
    assert!(h.level(20), "writing 0 to its bit leaves it");
    h.w32(GINTR_STA, 0b100);
    assert_eq!(h.r64(GINTR_STA), 0);
    assert!(!h.level(20));
    assert_eq!(h.inputs[20].raises(), 1);
    // Disabling the whole block lowers a held line; enabling raises it again.
    let now = h.r64(MAIN_CNT);
    h.w64(Rig::cmp(2), now + 1);
    h.run_to(NANOS_PER_SEC + 100);
    assert!(h.level(20));
    h.w64(GEN_CONF, 0);
    assert!(!h.level(20));
    assert_eq!(h.r64(GINTR_STA), 1 << 2);
    h.w64(GEN_CONF, ENABLE_CNF);
    assert!(h.level(20));
}

#[test]
fn routes_outside_the_capabilities_do_not_take() {
    let mut h = Rig::new();
    h.w64(Rig::conf(0), TN_INT_ENB_CNF | (16 << TN_INT_ROUTE_CNF_SHIFT));
    h.w64(Rig::conf(0), TN_INT_ENB_CNF | (5 << TN_INT_ROUTE_CNF_SHIFT));
    assert_eq!((h.r64(Rig::conf(0)) & TN_INT_ROUTE_CNF_MASK) >> TN_INT_ROUTE_CNF_SHIFT, 16);
    // FSB enable and the capability bits are read-only.
    h.w64(Rig::conf(0), u64::MAX);
    let c = h.r64(Rig::conf(0));
    assert_eq!(c & (1 << 14), 0);
    assert_eq!(c >> 32, u64::from(HPET_INT_ROUTE_CAP));
    // Route 0 (the power-on value) reaches no line: the interrupt is dropped.
    let mut h = Rig::new();
    h.w64(Rig::conf(2), TN_INT_ENB_CNF);
    h.w64(Rig::cmp(2), 1);
    h.w64(GEN_CONF, ENABLE_CNF);
    h.run_to(1_000);
    assert!(h.inputs.iter().all(|l| l.pulses() == 0));
    // The FSB route register keeps what is written.
    h.w64(TIMER_BASE + 2 * TIMER_STRIDE + TN_FSB_INT_ROUTE, 0xfee0_0000_0000_0041);
    assert_eq!(h.r64(TIMER_BASE + 2 * TIMER_STRIDE + TN_FSB_INT_ROUTE), 0xfee0_0000_0000_0041);
}

#[test]
fn bad_sizes_and_misaligned_accesses_are_ignored() {
    let mut h = Rig::new();
    for size in [1usize, 2, 3, 16] {
        let mut d = vec![0u8; size];
        h.hpet.read(GCAP_ID, &mut d);
        assert!(d.iter().all(|&b| b == 0xff), "{size}-byte read");
        h.hpet.write(GEN_CONF, &vec![0xffu8; size]);
    }
    let mut d = [0u8; 8];
    h.hpet.read(GCAP_ID + 4, &mut d);
    assert_eq!(d, [0xff; 8], "a misaligned 8-byte read");
    h.hpet.write(GEN_CONF + 4, &[0xff; 8]);
    h.hpet.write(GEN_CONF + 2, &[0xff; 4]);
    h.hpet.read(HPET_MMIO_LEN, &mut d);
    assert_eq!(h.r64(GEN_CONF), 0, "none of those writes landed");
    assert_eq!(h.legacy_on.load(Ordering::SeqCst), 0);
}

#[test]
fn state_saves_and_restores() {
    let mut h = Rig::new();
    h.w64(Rig::conf(0), TN_INT_ENB_CNF | TN_TYPE_CNF | TN_VAL_SET_CNF | TIMER0_ROUTED_TO_PIN2);
    h.w64(Rig::cmp(0), 1_000);
    h.w64(Rig::cmp(0), 1_000);
    h.w64(Rig::conf(2), TN_INT_ENB_CNF | TN_INT_TYPE_CNF | (21 << TN_INT_ROUTE_CNF_SHIFT));
    h.w64(Rig::cmp(2), 50);
    h.w64(GEN_CONF, ENABLE_CNF | LEG_RT_CNF);
    h.run_to(10_000);
    let saved = h.hpet.save();
    assert_eq!(saved.status, 1 << 2);
    assert!(h.level(21));

    let mut other = Rig::new();
    other.clock.set(h.clock.now_ns());
    other.hpet.restore(&saved).unwrap();
    assert_eq!(other.hpet.save(), saved);
    assert!(other.level(21), "the held level interrupt is driven again");
    assert_eq!(other.legacy_on.load(Ordering::SeqCst), 1, "and the legacy switch");
    assert_eq!(other.r64(MAIN_CNT), h.r64(MAIN_CNT));
    assert_eq!(other.hpet.next_deadline_ns(), h.hpet.next_deadline_ns());
    other.run_to(20_000);
    assert_eq!(other.pulses(0), 1, "timer 0 goes on with its period on IRQ0");

    // Back to power-on: everything off and the legacy lines reconnected.
    other.hpet.restore(&HpetState::power_on()).unwrap();
    assert!(!other.level(21));
    assert_eq!(other.legacy_off.load(Ordering::SeqCst), 1);
    // Garbage no hardware could hold is refused and changes nothing.
    let mut bad = saved;
    bad.config = u64::MAX;
    assert_eq!(persist::assert_refused(&mut other.hpet, &bad).field, "config");
    bad = saved;
    bad.status = u64::MAX;
    assert_eq!(persist::assert_refused(&mut other.hpet, &bad).field, "status");
    bad = saved;
    bad.timers[1].config = u64::MAX;
    assert_eq!(persist::assert_refused(&mut other.hpet, &bad).field, "timers.config");
    bad.timers[1].config = TN_WRITABLE;
    let e = persist::assert_refused(&mut other.hpet, &bad);
    assert!(e.problem.contains("input 31"), "route 31 is not a capability: {e}");
    assert_eq!(other.hpet.save(), HpetState::power_on());
    assert_eq!(other.legacy_on.load(Ordering::SeqCst), 1, "no legacy switch either");
    assert!(format!("{:?}", other.hpet).contains("Hpet"));
}

/// Timer 0 periodic in 32-bit mode on pin 2, timer 1 one-shot on pin 8,
/// timer 2 level-triggered on GSI 20 with its status set, the counter
/// running.
fn configured() -> Rig {
    let mut h = Rig::new();
    h.w64(Rig::conf(0), TN_INT_ENB_CNF | TN_TYPE_CNF | TN_VAL_SET_CNF | TN_32MODE_CNF | TIMER0_ROUTED_TO_PIN2);
    h.w32(Rig::cmp(0), 2_000);
    h.w32(Rig::cmp(0), 2_000);
    h.w64(Rig::conf(1), TN_INT_ENB_CNF | (8 << TN_INT_ROUTE_CNF_SHIFT));
    h.w64(Rig::cmp(1), 1_500);
    h.w64(Rig::conf(2), TN_INT_ENB_CNF | TN_INT_TYPE_CNF | (20 << TN_INT_ROUTE_CNF_SHIFT));
    h.w64(Rig::cmp(2), 700);
    h.w64(TIMER_BASE + 2 * TIMER_STRIDE + TN_FSB_INT_ROUTE, 0xfee0_0000_0000_0033);
    h.w64(GEN_CONF, ENABLE_CNF);
    h.run_to(21_000);
    assert!(h.level(20));
    assert_eq!((h.pulses(0), h.pulses(8)), (1, 1));
    h
}

#[test]
fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
    let mut h = configured();
    let mut fresh = Rig::new();
    fresh.clock.set(h.clock.now_ns());
    let state = persist::assert_round_trip(&h.hpet, &mut fresh.hpet);
    assert_eq!(state.status, 1 << 2);
    assert!(state.timers.iter().all(|t| t.next_match.is_some()));
    assert!(fresh.level(20), "the held level interrupt is driven again");
    assert_eq!(fresh.legacy_on.load(Ordering::SeqCst), 0, "LegacyReplacement stays off");
    assert_eq!(fresh.hpet.next_deadline_ns(), h.hpet.next_deadline_ns());
    for reg in [GEN_CONF, GINTR_STA, MAIN_CNT, Rig::conf(0), Rig::cmp(0), Rig::conf(2), Rig::cmp(1)] {
        assert_eq!(fresh.r64(reg), h.r64(reg), "register {reg:#x}");
    }
    assert_eq!(fresh.r64(TIMER_BASE + 2 * TIMER_STRIDE + TN_FSB_INT_ROUTE), 0xfee0_0000_0000_0033);
    for t in [30_000, 40_000, 60_000, 80_000] {
        h.run_to(t);
        fresh.run_to(t);
    }
    assert_eq!(fresh.pulses(0), 3, "timer 0's period goes on: matches at 40, 60 and 80 us");
    assert_eq!(fresh.pulses(0), h.pulses(0) - 1, "less the match before the save");
    assert_eq!(fresh.r64(Rig::cmp(0)), h.r64(Rig::cmp(0)));
    fresh.w64(GINTR_STA, 1 << 2);
    assert!(!fresh.level(20));
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let mut h = configured();
    let good = h.hpet.save();
    let cases: [Corruption<HpetState>; 9] = [
        ("config", |s| s.config |= 1 << 2),
        ("status", |s| s.status |= 1 << 3),
        ("timers.config", |s| s.timers[0].config |= 1 << 14),
        ("timers.config", |s| s.timers[1].config |= 3 << TN_INT_ROUTE_CNF_SHIFT),
        ("timers.comparator", |s| s.timers[0].comparator = 1 << 32),
        ("timers.period", |s| s.timers[0].period = 1 << 40),
        ("timers.next_match", |s| s.timers[2].next_match = None),
        ("timers.next_match", |s| s.config = 0),
        ("timers.next_match", |s| {
            s.counter_base = 5;
            s.timers[1].next_match = Some(4);
        }),
    ];
    for (field, corrupt) in cases {
        let mut bad = good;
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut h.hpet, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    assert!(h.level(20), "a refused restore leaves the lines alone");
}
