//! Tests of the MC146818 model.

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::irq::RecordingIrq;

/// 2024-02-29 23:59:58 UTC, a Thursday.
const LEAP_DAY: i64 = 1_709_251_198;

struct Rig {
    clock: Arc<ManualClock>,
    irq: Arc<RecordingIrq>,
    rtc: Rtc,
}

impl Rig {
    /// An RTC showing `secs` + 0.5 s at clock time 10 s.
    fn at(secs: i64) -> Self {
        let clock = Arc::new(ManualClock::new(10 * NANOS_PER_SEC));
        let irq = Arc::new(RecordingIrq::new());
        let ram = RamSize::split(3 << 30, 0xc000_0000);
        let unix_ns = i128::from(secs) * 1_000_000_000 + 500_000_000;
        let rtc = Rtc::with_wall_clock(clock.clone(), irq.clone(), ram, unix_ns);
        Self { clock, irq, rtc }
    }
    fn get(&mut self, index: u8) -> u8 {
        self.rtc.write(0, &[index]);
        let mut b = [0u8];
        self.rtc.read(1, &mut b);
        b[0]
    }
    fn set(&mut self, index: u8, value: u8) {
        self.rtc.write(0, &[index]);
        self.rtc.write(1, &[value]);
    }
    fn advance_ms(&mut self, ms: u64) {
        self.clock.advance(ms * 1_000_000);
        let now = self.clock.now_ns();
        if self.rtc.next_deadline_ns().is_some_and(|d| d <= now) {
            self.rtc.tick(now);
        }
    }
}

#[test]
fn calendar_conversions() {
    for secs in [0, LEAP_DAY, 951_782_400 /* 2000-02-29 */, 4_102_444_800, -86_400] {
        assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
    }
    let t = DateTime::from_unix(LEAP_DAY);
    assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
    assert_eq!((t.hour, t.minute, t.second), (23, 59, 58));
    assert_eq!(t.weekday, 4, "Thursday");
    assert_eq!(DateTime::from_unix(0).weekday, 4, "1970-01-01 was a Thursday");
}

#[test]
fn time_reads_in_bcd_24_hour_mode() {
    let mut r = Rig::at(LEAP_DAY);
    assert_eq!(r.get(REG_A), 0x26);
    assert_eq!(r.get(REG_B), 0x02);
    assert_eq!(r.get(REG_SECONDS), 0x58);
    assert_eq!(r.get(REG_MINUTES), 0x59);
    assert_eq!(r.get(REG_HOURS), 0x23);
    assert_eq!(r.get(REG_DAY_OF_WEEK), 5, "Thursday is day 5 (Sunday = 1)");
    assert_eq!(r.get(REG_DAY_OF_MONTH), 0x29);
    assert_eq!(r.get(REG_MONTH), 0x02);
    assert_eq!(r.get(REG_YEAR), 0x24);
    assert_eq!(r.get(CMOS_CENTURY), 0x20);
    assert_eq!(r.get(REG_D), 0x80);
    // Two seconds later it is March.
    r.advance_ms(2000);
    assert_eq!(r.get(REG_SECONDS), 0x00);
    assert_eq!(r.get(REG_DAY_OF_MONTH), 0x01);
    assert_eq!(r.get(REG_MONTH), 0x03);
}

#[test]
fn binary_and_12_hour_formats() {
    let mut r = Rig::at(LEAP_DAY);
    r.set(REG_B, B_DM_BINARY);
    assert_eq!(r.get(REG_HOURS), 11 | HOURS_PM);
    assert_eq!(r.get(REG_SECONDS), 58);
    assert_eq!(r.get(REG_YEAR), 24);
    r.set(REG_B, 0);
    assert_eq!(r.get(REG_HOURS), 0x11 | HOURS_PM);
    r.set(REG_HOURS, 0x12); // 12 AM
    assert_eq!(r.get(REG_HOURS), 0x12);
    r.set(REG_B, B_24H);
    assert_eq!(r.get(REG_HOURS), 0x00, "12 AM is hour 0");
}

#[test]
fn setting_the_time_with_set() {
    let mut r = Rig::at(LEAP_DAY);
    r.set(REG_B, B_SET | B_24H | B_UIE);
    assert_eq!(r.get(REG_B), B_SET | B_24H, "SET clears UIE");
    r.set(REG_YEAR, 0x99);
    r.set(CMOS_CENTURY, 0x19);
    r.set(REG_MONTH, 0x12);
    r.set(REG_DAY_OF_MONTH, 0x31);
    r.set(REG_HOURS, 0x23);
    r.set(REG_MINUTES, 0x59);
    r.set(REG_SECONDS, 0x59);
    r.advance_ms(5000);
    assert_eq!(r.get(REG_SECONDS), 0x59, "halted while SET");
    r.set(REG_B, B_24H);
    r.advance_ms(999);
    assert_eq!(r.get(REG_SECONDS), 0x59);
    r.advance_ms(1);
    assert_eq!(r.get(REG_SECONDS), 0x00, "the first update is one second after SET clears");
    assert_eq!(r.get(REG_YEAR), 0x00);
    assert_eq!(r.get(CMOS_CENTURY), 0x20);
    r.set(REG_DAY_OF_WEEK, 1);
    assert_eq!(r.get(REG_DAY_OF_WEEK), 1);
}

#[test]
fn uip_rises_before_each_update() {
    let mut r = Rig::at(LEAP_DAY); // half a second into a second
    assert_eq!(r.get(REG_A) & A_UIP, 0);
    r.advance_ms(499);
    r.clock.advance(800_000);
    assert_ne!(r.get(REG_A) & A_UIP, 0, "200 us before the update");
    r.clock.advance(200_000);
    assert_eq!(r.get(REG_A) & A_UIP, 0, "after the update");
    r.set(REG_A, 0x76); // divider in reset
    r.clock.advance(999_900_000);
    assert_eq!(r.get(REG_A), 0x76, "no UIP while the divider is held");
}

#[test]
fn periodic_interrupt_at_the_programmed_rate() {
    let mut r = Rig::at(LEAP_DAY);
    assert_eq!(r.rtc.next_deadline_ns(), None, "no interrupt enabled");
    r.set(REG_A, 0x2f); // 2 Hz
    r.set(REG_B, B_24H | B_PIE);
    let deadline = r.rtc.next_deadline_ns().unwrap();
    assert_eq!(deadline, r.clock.now_ns() + 500_000_000, "the next 500 ms boundary");
    r.advance_ms(499);
    assert!(!r.irq.level());
    r.advance_ms(1);
    assert!(r.irq.level());
    assert_eq!(r.rtc.next_deadline_ns(), None, "IRQ8 high: nothing to do");
    assert_eq!(r.get(REG_C), C_IRQF | C_PF | C_UF, "a second boundary too");
    assert!(!r.irq.level());
    assert_eq!(r.get(REG_C), 0);
    r.advance_ms(499);
    assert!(!r.irq.level());
    r.advance_ms(1);
    assert!(r.irq.level());
    assert_eq!(r.irq.raises(), 2);
}

#[test]
fn periodic_rates_follow_table_4() {
    let mut r = Rig::at(0);
    for (rs, ticks) in [(1, 128), (2, 256), (3, 4), (6, 32), (15, 16_384)] {
        r.set(REG_A, 0x20 | rs);
        assert_eq!(r.rtc.periodic_ticks(), Some(ticks), "RS {rs}");
    }
    r.set(REG_A, 0x20);
    assert_eq!(r.rtc.periodic_ticks(), None);
}

#[test]
fn update_ended_and_alarm_interrupts() {
    let mut r = Rig::at(LEAP_DAY);
    r.set(REG_A, A_DV_32KHZ); // no periodic flag
    r.set(REG_SECONDS_ALARM, 0x00);
    r.set(REG_MINUTES_ALARM, 0xc0); // any minute
    r.set(REG_HOURS_ALARM, 0xff); // any hour
    r.set(REG_B, B_24H | B_AIE);
    r.advance_ms(500);
    assert!(!r.irq.level(), "58 -> 59: no alarm");
    assert_eq!(r.get(REG_C), C_UF, "UF is set without UIE");
    r.advance_ms(1000);
    assert!(r.irq.level(), "59 -> 00 matches");
    assert_eq!(r.get(REG_C), C_IRQF | C_AF | C_UF);
    r.set(REG_B, B_24H | B_UIE);
    r.advance_ms(1000);
    assert_eq!(r.get(REG_C), C_IRQF | C_UF);
    // An alarm missed while nobody polled is still found.
    r.set(REG_B, B_24H);
    r.clock.advance(120 * NANOS_PER_SEC);
    assert_eq!(r.get(REG_C), C_AF | C_UF);
}

#[test]
fn cmos_memory_sizes() {
    let mut r = Rig::at(0);
    r.rtc.set_ram_size(RamSize::split(5 << 30, 0xc000_0000));
    let word = |r: &mut Rig, at: u8| u16::from_le_bytes([r.get(at), r.get(at + 1)]);
    assert_eq!(word(&mut r, 0x15), 640);
    assert_eq!(word(&mut r, 0x17), 0xffff, "capped");
    assert_eq!(word(&mut r, 0x30), 0xffff);
    assert_eq!(word(&mut r, 0x34), ((0xc000_0000u64 - (16 << 20)) >> 16) as u16);
    let above = u32::from_le_bytes([r.get(0x5b), r.get(0x5c), r.get(0x5d), 0]);
    assert_eq!(above, (2u32 << 30) >> 16);
    r.rtc.set_ram_size(RamSize::split(32 << 20, 0xc000_0000));
    assert_eq!(word(&mut r, 0x17), 31 * 1024);
    assert_eq!(word(&mut r, 0x34), 256);
    assert_eq!(r.get(0x5b), 0);
    let sum: u16 = (0x10..=0x2du8).map(|i| u16::from(r.get(i))).sum();
    assert_eq!(u16::from_be_bytes([r.get(0x2e), r.get(0x2f)]), sum);
    r.set(0x40, 0xab);
    assert_eq!(r.get(0x40), 0xab, "free CMOS RAM");
    assert_eq!(r.get(0x5f), 0, "one CPU");
    r.rtc.set_cpu_count(6);
    assert_eq!(r.get(0x5f), 5, "the CPU count minus one");
    r.rtc.set_cpu_count(1000);
    assert_eq!(r.get(0x5f), 0xff);
    assert_eq!(u16::from_be_bytes([r.get(0x2e), r.get(0x2f)]), sum, "outside the checksum");
}

#[test]
fn index_port_and_nmi_mask() {
    let mut r = Rig::at(0);
    r.rtc.write(0, &[0x80 | REG_D]);
    assert!(r.rtc.nmi_masked());
    let mut b = [0u8];
    r.rtc.read(1, &mut b);
    assert_eq!(b, [D_VRT]);
    r.rtc.read(0, &mut b);
    assert_eq!(b, [0xff], "the index port is write-only");
    r.set(REG_C, 0xff);
    r.set(REG_D, 0);
    assert_eq!(r.get(REG_D), D_VRT);
    let mut w = [0u8; 2];
    r.rtc.read(0, &mut w);
    assert_eq!(w, [0xff, 0xff]);
    r.rtc.write(0, &[1, 2]);
    r.rtc.write(5, &[1]);
    assert!(!r.rtc.nmi_masked() || r.rtc.s.index == 0x0c);
}

#[test]
fn state_round_trips() {
    let mut r = Rig::at(LEAP_DAY);
    r.set(REG_B, B_24H | B_PIE);
    r.advance_ms(600);
    let state = r.rtc.save();
    let clock = Arc::new(ManualClock::new(r.clock.now_ns()));
    let irq = Arc::new(RecordingIrq::new());
    let mut other = Rtc::new(clock, irq.clone(), RamSize::default());
    other.restore(&state).unwrap();
    assert_eq!(other.save(), state);
    assert!(irq.level(), "IRQ8 follows the restored flags");
    assert!(format!("{other:?}").contains("Rtc"));
    assert_eq!(other.debug_label(), "MC146818 RTC");
}

/// An RTC set by the guest (binary, 12-hour, a new date), with an alarm,
/// the periodic and update interrupts on, a CMOS byte written, the
/// weekday moved, NMI masked, and flags pending.
fn configured() -> Rig {
    let mut r = Rig::at(LEAP_DAY);
    r.set(REG_B, B_SET | B_DM_BINARY);
    r.set(REG_YEAR, 30);
    r.set(REG_MONTH, 7);
    r.set(REG_DAY_OF_MONTH, 14);
    r.set(REG_HOURS, 9 | HOURS_PM);
    r.set(REG_DAY_OF_WEEK, 2);
    r.set(REG_SECONDS_ALARM, 0xff);
    r.set(REG_MINUTES_ALARM, 0xff);
    r.set(REG_HOURS_ALARM, 0xff);
    r.set(REG_A, A_DV_32KHZ | 0x0d); // 8 Hz
    r.set(REG_B, B_DM_BINARY | B_PIE | B_AIE | B_UIE);
    r.set(0x45, 0x77);
    r.advance_ms(1_300);
    r.rtc.write(0, &[INDEX_NMI_DISABLE | REG_SECONDS]);
    assert!(r.irq.level());
    r
}

#[test]
fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
    let mut r = configured();
    let mut fresh = Rig::at(0);
    fresh.clock.set(r.clock.now_ns());
    let state = persist::assert_round_trip(&r.rtc, &mut fresh.rtc);
    assert_eq!(state.cmos[0x45], 0x77);
    assert_ne!(state.flags, 0);
    assert!(fresh.irq.level(), "IRQ8 follows the restored flags");
    assert!(fresh.rtc.nmi_masked());
    assert_eq!(fresh.rtc.next_deadline_ns(), r.rtc.next_deadline_ns());
    let registers = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x01, 0x0a, 0x0b, 0x0c, 0x0d, 0x45, 0x15];
    for reg in registers {
        assert_eq!(fresh.get(reg), r.get(reg), "register {reg:#04x}");
    }
    assert_eq!(fresh.get(REG_HOURS), 9 | HOURS_PM);
    assert_eq!(fresh.get(REG_DAY_OF_WEEK), 2);
    assert!(!fresh.irq.level(), "reading C lowered IRQ8");
    for rig in [&mut r, &mut fresh] {
        rig.advance_ms(125);
    }
    assert!(fresh.irq.level() && r.irq.level(), "the next periodic interrupt comes for both");
    assert_eq!(fresh.get(REG_C), r.get(REG_C));
    for rig in [&mut r, &mut fresh] {
        rig.advance_ms(2_000);
    }
    for reg in registers {
        assert_eq!(fresh.get(reg), r.get(reg), "register {reg:#04x}, two seconds on");
    }
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let r = configured();
    let good = r.rtc.save();
    let mut target = configured().rtc;
    let a = usize::from(REG_A);
    let b = usize::from(REG_B);
    let cases: [Corruption<RtcState>; 11] = [
        ("cmos", |s| s.cmos.truncate(127)),
        ("cmos", |s| s.cmos.push(0)),
        ("cmos", |s| s.cmos[usize::from(REG_A)] |= A_UIP),
        ("cmos", |s| {
            s.cmos[usize::from(REG_B)] |= B_SET | B_UIE;
            s.halted_secs = Some(0);
        }),
        ("cmos", |s| s.cmos[usize::from(CMOS_CENTURY)] = 0x20),
        ("cmos", |s| s.cmos[usize::from(REG_C)] = C_PF),
        ("halted_secs", |s| s.halted_secs = Some(5)),
        ("halted_secs", |s| s.cmos[usize::from(REG_A)] = 0x70),
        ("skew_ns", |s| s.skew_ns = NANOS_PER_SEC),
        ("weekday_adjust", |s| s.weekday_adjust = 7),
        ("flags", |s| s.flags |= C_IRQF),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut target, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    // Halted under SET with the time kept: a state a guest can reach.
    let mut halted = good.clone();
    halted.cmos[b] |= B_SET;
    halted.cmos[b] &= !B_UIE;
    halted.halted_secs = Some(LEAP_DAY);
    target.restore(&halted).unwrap();
    assert_eq!(target.save(), halted);
    let mut stopped = good;
    stopped.cmos[a] = 0x60;
    stopped.halted_secs = Some(0);
    target.restore(&stopped).unwrap();
}

#[test]
fn a_wall_clock_set_at_power_on_keeps_the_cmos_memory() {
    let mut r = Rig::at(LEAP_DAY);
    r.set(0x40, 0x5a);
    let ext = r.get(CMOS_EXT_MEM as u8);
    // 2000-01-01 12:00:00, as -rtc base=2000-01-01T12:00:00 starts it.
    r.rtc.set_wall_clock(946_728_000 * 1_000_000_000);
    assert_eq!((r.get(REG_YEAR), r.get(REG_MONTH), r.get(REG_DAY_OF_MONTH)), (0x00, 0x01, 0x01));
    assert_eq!((r.get(REG_HOURS), r.get(REG_MINUTES), r.get(REG_SECONDS)), (0x12, 0x00, 0x00));
    assert_eq!(r.get(0x40), 0x5a, "the CMOS memory stays");
    assert_eq!(r.get(CMOS_EXT_MEM as u8), ext);
    r.advance_ms(1000);
    assert_eq!(r.get(REG_SECONDS), 0x01, "and the clock runs on from there");
}
