//! Tests of the 8254 model.

use super::*;
use crate::bus::Bus;
use crate::clock::{Clock, ManualClock};
use crate::irq::RecordingIrq;
use parking_lot::Mutex;

struct Rig {
    clock: Arc<ManualClock>,
    irq: Arc<RecordingIrq>,
    pit: Arc<Mutex<Pit>>,
    bus: Bus,
}

impl Rig {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let irq = Arc::new(RecordingIrq::new());
        let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), irq.clone())));
        let mut bus = Bus::new();
        let mut mmio = Bus::new();
        let shared: SharedDevice = pit.clone();
        for m in Pit::bus_mappings(&shared) {
            m.insert_into(&mut bus, &mut mmio).unwrap();
        }
        Self { clock, irq, pit, bus }
    }
    fn outb(&self, port: u64, v: u8) {
        self.bus.write(port, &[v]);
    }
    fn inb(&self, port: u64) -> u8 {
        let mut b = [0u8];
        self.bus.read(port, &mut b);
        b[0]
    }
    /// Advances the clock by `ticks` PIT ticks and polls like the run loop.
    fn run_ticks(&self, ticks: u64) {
        let now = self.clock.now_ns();
        let start = self.pit.lock().channels[0].s.start_ns.unwrap_or(now);
        let target = ticks_in(now - start, PIT_HZ) + ticks;
        self.clock.set(start + ns_for_ticks(target, PIT_HZ));
        self.poll();
    }
    fn poll(&self) {
        let now = self.clock.now_ns();
        let mut pit = self.pit.lock();
        if pit.next_deadline_ns().is_some_and(|d| d <= now) {
            pit.tick(now);
        }
    }
    fn read_word(&self, port: u64) -> u16 {
        let lo = self.inb(port);
        let hi = self.inb(port);
        u16::from_le_bytes([lo, hi])
    }
}

#[test]
fn mode_2_rate_generator_fires_periodically() {
    let r = Rig::new();
    r.outb(0x43, 0x34); // counter 0, LSB/MSB, mode 2
    r.outb(0x40, 0x9c); // 1193182 / 100 Hz = 11932 = 0x2e9c
    r.outb(0x40, 0x2e);
    let start = r.pit.lock().channels[0].s.start_ns.unwrap();
    assert_eq!(r.pit.lock().next_deadline_ns(), Some(start + ns_for_ticks(11932, PIT_HZ)));
    r.run_ticks(11931);
    assert_eq!(r.irq.pulses(), 0);
    r.run_ticks(1);
    assert_eq!(r.irq.pulses(), 1);
    r.run_ticks(11932);
    assert_eq!(r.irq.pulses(), 2);
    // Ten missed periods give ten edges, one per poll.
    r.run_ticks(11932 * 10);
    assert_eq!(r.irq.pulses(), 3);
    for _ in 0..9 {
        r.poll();
    }
    assert_eq!(r.irq.pulses(), 12);
    r.poll();
    assert_eq!(r.irq.pulses(), 12);
    assert!(r.pit.lock().next_deadline_ns().unwrap() > r.clock.now_ns());
    // More than a second behind: the backlog is dropped.
    r.run_ticks(11932 * 150);
    r.poll();
    r.poll();
    assert_eq!(r.irq.pulses(), 13);
    assert!(r.pit.lock().next_deadline_ns().unwrap() > r.clock.now_ns());
}

#[test]
fn live_count_reads_follow_time() {
    let r = Rig::new();
    r.outb(0x43, 0x34);
    r.outb(0x40, 0x00);
    r.outb(0x40, 0x10); // 0x1000
    r.run_ticks(0x100);
    assert_eq!(r.read_word(0x40), 0x0f00);
    r.outb(0x43, 0x00); // latch counter 0
    r.run_ticks(0x10);
    assert_eq!(r.read_word(0x40), 0x0f00, "the latch holds");
    assert_eq!(r.read_word(0x40), 0x0ef0, "then reads go live again");
}

#[test]
fn lsb_only_and_msb_only_access() {
    let r = Rig::new();
    r.outb(0x43, 0x14); // counter 0, LSB only, mode 2
    r.outb(0x40, 0x80);
    assert_eq!(r.inb(0x40), 0x80);
    r.outb(0x43, 0x24); // MSB only
    r.outb(0x40, 0x02);
    r.run_ticks(1);
    assert_eq!(r.inb(0x40), 0x01, "0x0200 - 1 = 0x01ff: MSB 0x01");
}

#[test]
fn mode_0_fires_once_at_terminal_count() {
    let r = Rig::new();
    r.outb(0x43, 0x30);
    assert!(r.pit.lock().next_deadline_ns().is_none(), "no count yet");
    r.outb(0x40, 100);
    r.outb(0x40, 0);
    r.run_ticks(99);
    assert_eq!(r.irq.pulses(), 0);
    r.run_ticks(1);
    assert_eq!(r.irq.pulses(), 1);
    assert!(r.pit.lock().next_deadline_ns().is_none());
    r.run_ticks(1000);
    assert_eq!(r.irq.pulses(), 1);
    // The count wraps on past zero.
    assert_eq!(r.read_word(0x40), (0x1_0000u64 - 1000) as u16);
}

#[test]
fn mode_4_strobe_fires_one_tick_after_terminal_count() {
    let r = Rig::new();
    r.outb(0x43, 0x38);
    r.outb(0x40, 10);
    r.outb(0x40, 0);
    r.run_ticks(10);
    assert_eq!(r.irq.pulses(), 0);
    r.run_ticks(1);
    assert_eq!(r.irq.pulses(), 1);
    r.run_ticks(100);
    assert_eq!(r.irq.pulses(), 1);
}

#[test]
fn mode_3_square_wave_on_counter_2_and_port_b() {
    let r = Rig::new();
    r.outb(0x61, 0x03); // gate on, speaker on
    r.outb(0x43, 0xb6); // counter 2, LSB/MSB, mode 3
    r.outb(0x42, 100);
    r.outb(0x42, 0);
    let s = r.pit.lock().channels[2].s.start_ns.unwrap();
    let out = |t: u64| {
        r.clock.set(s + ns_for_ticks(t, PIT_HZ));
        r.inb(0x61) & PORT_B_OUT2 != 0
    };
    assert!(out(0));
    assert!(out(49));
    assert!(!out(50));
    assert!(!out(99));
    assert!(out(100));
    assert_eq!(r.irq.pulses(), 0, "counter 2 has no IRQ");
    assert_eq!(r.inb(0x61) & 0x0f, 0x03);
}

#[test]
fn counter_2_gate_holds_mode_0_as_linux_calibration_expects() {
    let r = Rig::new();
    r.outb(0x61, 0x00); // gate off
    r.outb(0x43, 0xb0); // counter 2, LSB/MSB, mode 0
    r.outb(0x42, 0xff);
    r.outb(0x42, 0xff);
    r.clock.advance(10_000_000);
    assert_eq!(r.read_word(0x42), 0xffff, "gate low: not counting");
    assert_eq!(r.inb(0x61) & PORT_B_OUT2, 0);
    r.outb(0x61, 0x01);
    r.clock.advance(ns_for_ticks(0x100, PIT_HZ));
    assert_eq!(r.read_word(0x42), 0xfeff);
    r.outb(0x61, 0x00);
    r.clock.advance(50_000_000);
    assert_eq!(r.read_word(0x42), 0xfeff, "paused");
    r.outb(0x61, 0x01);
    r.clock.advance(ns_for_ticks(0xfeff, PIT_HZ));
    assert_ne!(r.inb(0x61) & PORT_B_OUT2, 0, "terminal count reached");
}

#[test]
fn refresh_bit_toggles_on_reads() {
    let r = Rig::new();
    let a = r.inb(0x61) & PORT_B_REFRESH;
    let b = r.inb(0x61) & PORT_B_REFRESH;
    assert_ne!(a, b);
    r.outb(0x61, 0xff);
    assert_eq!(r.inb(0x61) & 0xcf, 0x0f, "bits 7:6 read 0");
}

#[test]
fn read_back_latches_status_then_count() {
    let r = Rig::new();
    r.outb(0x43, 0x34);
    assert_eq!(
        {
            r.outb(0x43, 0xe2); // read-back status of counter 0
            r.inb(0x40)
        },
        0x80 | 0x40 | 0x34,
        "OUT high after the control word, null count before a count is written"
    );
    r.outb(0x40, 0x00);
    r.outb(0x40, 0x01);
    r.run_ticks(0x10);
    r.outb(0x43, 0xc2); // count and status
    assert_eq!(r.inb(0x40), 0x80 | 0x34, "OUT high, count loaded");
    assert_eq!(r.read_word(0x40), 0x00f0);
    // A second latch before reading is ignored.
    r.outb(0x43, 0xd2);
    r.run_ticks(0x10);
    r.outb(0x43, 0xd2);
    assert_eq!(r.read_word(0x40), 0x00f0, "the first latch holds");
    assert_eq!(r.read_word(0x40), 0x00e0, "live again");
}

#[test]
fn bcd_counting() {
    let r = Rig::new();
    r.outb(0x43, 0x35); // mode 2, BCD
    r.outb(0x40, 0x00);
    r.outb(0x40, 0x10); // 1000 decimal
    r.run_ticks(1);
    assert_eq!(r.read_word(0x40), 0x0999);
    assert_eq!(to_bcd(1234), 0x1234);
    assert_eq!(from_bcd(0x9999), 9999);
    r.outb(0x43, 0x31); // mode 0, BCD, count 0 = 10000
    r.outb(0x40, 0);
    r.outb(0x40, 0);
    r.run_ticks(1);
    assert_eq!(r.read_word(0x40), 0x9999);
}

#[test]
fn mode_1_waits_for_a_gate_trigger() {
    let r = Rig::new();
    r.outb(0x61, 0x00);
    r.outb(0x43, 0xb2); // counter 2, mode 1
    r.outb(0x42, 10);
    r.outb(0x42, 0);
    assert_ne!(r.inb(0x61) & PORT_B_OUT2, 0, "high while waiting");
    r.outb(0x61, 0x01);
    assert_eq!(r.inb(0x61) & PORT_B_OUT2, 0, "low after the trigger");
    r.clock.advance(ns_for_ticks(10, PIT_HZ));
    assert_ne!(r.inb(0x61) & PORT_B_OUT2, 0);
}

#[test]
fn odd_accesses_are_ignored() {
    let r = Rig::new();
    let mut w = [0u8; 2];
    r.bus.read(0x40, &mut w);
    assert_eq!(w, [0xff, 0xff]);
    r.bus.write(0x40, &[1, 2]);
    assert_eq!(r.inb(0x43), 0xff);
    let mut pit = r.pit.lock();
    let mut b = [0u8];
    pit.read(0x10, &mut b);
    pit.write(0x10, &[1]);
    assert_eq!(b, [0xff]);
    assert_eq!(pit.debug_label(), "8254 PIT");
}

#[test]
fn state_round_trips() {
    let r = Rig::new();
    r.outb(0x43, 0x34);
    r.outb(0x40, 0x9c);
    r.outb(0x40, 0x2e);
    r.outb(0x61, 0x01);
    let state = r.pit.lock().save();
    let clock = Arc::new(ManualClock::new(0));
    let mut other = Pit::new(clock, Arc::new(RecordingIrq::new()));
    other.restore(&state).unwrap();
    assert_eq!(other.save(), state);
    assert!(format!("{other:?}").contains("Pit"));
}

/// Counter 0 periodic at 100 Hz with a count latched and half read,
/// counter 1 waiting for the MSB of a count, counter 2 a BCD square wave
/// gated on with its status latched, and time gone by.
fn configured() -> Rig {
    let r = Rig::new();
    r.outb(0x43, 0x34);
    r.outb(0x40, 0x9c);
    r.outb(0x40, 0x2e);
    r.run_ticks(5_000);
    r.outb(0x43, 0x00);
    r.inb(0x40);
    r.outb(0x43, 0x70); // counter 1, LSB then MSB, mode 0
    r.outb(0x41, 0x34);
    r.outb(0x61, 0x03);
    r.outb(0x43, 0xb7); // counter 2, LSB then MSB, mode 3, BCD
    r.outb(0x42, 0x00);
    r.outb(0x42, 0x50);
    r.run_ticks(7_000);
    r.outb(0x43, 0xe8); // read-back: status of counter 2
    r
}

#[test]
fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
    let r = configured();
    let fresh = Rig::new();
    fresh.clock.set(r.clock.now_ns());
    let state = persist::assert_round_trip(&*r.pit.lock(), &mut *fresh.pit.lock());
    assert!(state.channels[0].latched_count.is_some() && state.channels[0].read_msb_next);
    assert!(state.channels[1].write_msb_next);
    assert!(state.channels[2].bcd && state.channels[2].latched_status.is_some());
    assert_eq!(fresh.pit.lock().next_deadline_ns(), r.pit.lock().next_deadline_ns());
    for port in [0x40, 0x40, 0x42, 0x42, 0x42] {
        assert_eq!(fresh.inb(port), r.inb(port), "port {port:#x}");
    }
    assert_eq!(fresh.inb(0x61) & 0x2f, r.inb(0x61) & 0x2f, "port 0x61: gate, speaker, OUT2");
    for rig in [&r, &fresh] {
        rig.outb(0x41, 0x12);
        for _ in 0..3 {
            rig.run_ticks(11_932);
        }
    }
    assert_eq!(fresh.irq.pulses(), 3);
    assert_eq!(fresh.irq.pulses(), r.irq.pulses() - 1, "the original had fired once before the save");
    assert_eq!(fresh.read_word(0x41), r.read_word(0x41));
    assert_eq!(fresh.read_word(0x42), r.read_word(0x42));
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let r = configured();
    let good = r.pit.lock().save();
    let cases: [Corruption<PitState>; 9] = [
        ("mode", |b| b.channels[1].mode = 6),
        ("rw", |b| b.channels[0].rw = 0),
        ("rw", |b| b.channels[1].rw = RW_LSB),
        ("reload", |b| b.channels[2].reload = 0),
        ("reload", |b| b.channels[0].reload = 0x1_0001),
        ("paused_ticks", |b| {
            b.channels[1].start_ns = None;
            b.channels[1].paused_ticks = Some(3);
        }),
        ("port_b", |b| b.port_b = 0x13),
        ("gate", |b| b.channels[0].gate = false),
        ("gate", |b| b.port_b &= !PORT_B_GATE2),
    ];
    let mut pit = r.pit.lock();
    for (field, corrupt) in cases {
        let mut bad = good;
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut *pit, &bad);
        assert_eq!(e.field, field, "{e}");
    }
}
