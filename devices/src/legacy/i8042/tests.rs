//! Tests of the i8042 and its keyboard.

use super::*;
use crate::irq::RecordingIrq;

struct Rig {
    kbc: I8042,
    irq1: Arc<RecordingIrq>,
    irq12: Arc<RecordingIrq>,
    a20: Arc<A20Gate>,
    events: Arc<VmEvents>,
}

impl Rig {
    fn new() -> Self {
        let irq1 = Arc::new(RecordingIrq::new());
        let irq12 = Arc::new(RecordingIrq::new());
        let a20 = A20Gate::new(true);
        let events = Arc::new(VmEvents::new());
        let kbc = I8042::new(irq1.clone(), irq12.clone(), a20.clone(), events.clone());
        Self { kbc, irq1, irq12, a20, events }
    }
    fn cmd(&mut self, c: u8) {
        self.kbc.write(COMMAND_OFFSET, &[c]);
    }
    fn data(&mut self, d: u8) {
        self.kbc.write(0, &[d]);
    }
    fn status(&mut self) -> u8 {
        let mut b = [0u8];
        self.kbc.read(COMMAND_OFFSET, &mut b);
        b[0]
    }
    /// Reads everything in the output buffer.
    fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.status() & STATUS_OBF != 0 {
            let mut b = [0u8];
            self.kbc.read(0, &mut b);
            out.push(b[0]);
        }
        out
    }
    /// Runs a controller command as Linux's i8042_command does.
    fn command(&mut self, c: u8, params: &[u8]) -> Vec<u8> {
        self.cmd(c);
        for &p in params {
            self.data(p);
        }
        self.drain()
    }
}

#[test]
fn linux_probe_sequence() {
    let mut r = Rig::new();
    assert!(r.drain().is_empty(), "flush finds nothing");
    assert_eq!(r.command(CMD_SELF_TEST, &[]), vec![0x55]);
    // Read the command byte twice (Linux wants two equal reads).
    let ctr = r.command(CMD_READ_CTR, &[]);
    assert_eq!(ctr, r.command(CMD_READ_CTR, &[]));
    assert_eq!(ctr, vec![CTR_BIOS]);
    let ctr = (ctr[0] & !CTR_KBD_INT) | CTR_KBD_DISABLE;
    assert!(r.command(CMD_WRITE_CTR, &[ctr]).is_empty());
    assert_eq!(r.command(CMD_READ_CTR, &[]), vec![ctr]);
    // The aux checks say "no AUX port" without a timeout.
    r.cmd(CMD_WRITE_AUX_OUTPUT);
    r.data(0x5a);
    let s = r.status();
    assert_eq!(s & (STATUS_OBF | STATUS_AUXB), STATUS_OBF, "not aux data");
    r.drain();
    assert_eq!(r.command(CMD_AUX_TEST, &[]), vec![AUX_INTERFACE_NO_DEVICE]);
    // The keyboard port.
    assert_eq!(r.command(CMD_KBD_TEST, &[]), vec![0x00]);
    let ctr = (ctr & !CTR_KBD_DISABLE) | CTR_KBD_INT;
    r.command(CMD_WRITE_CTR, &[ctr]);
    assert_eq!(r.irq12.raises(), 0);
}

#[test]
fn keyboard_answers_atkbd_probe() {
    let mut r = Rig::new();
    r.data(KBD_RESET);
    assert_eq!(r.drain(), vec![KBD_ACK, KBD_BAT_OK]);
    r.data(KBD_IDENTIFY);
    assert_eq!(r.drain(), vec![KBD_ACK, 0xab, 0x41], "translated ID");
    r.command(CMD_WRITE_CTR, &[CTR_KBD_INT]);
    r.data(KBD_IDENTIFY);
    assert_eq!(r.drain(), vec![KBD_ACK, 0xab, 0x83], "untranslated ID");
    r.data(KBD_DISABLE);
    r.data(KBD_SET_LEDS);
    r.data(0x07);
    r.data(KBD_SET_TYPEMATIC);
    r.data(0x20);
    r.data(KBD_ENABLE);
    assert_eq!(r.drain(), vec![KBD_ACK; 6]);
    assert_eq!(r.kbc.save().kbd_leds, 7);
    r.data(KBD_SCAN_CODE_SET);
    r.data(3);
    r.data(KBD_SCAN_CODE_SET);
    r.data(0);
    assert_eq!(r.drain(), vec![KBD_ACK, KBD_ACK, KBD_ACK, KBD_ACK, 3]);
    r.data(KBD_SCAN_CODE_SET);
    r.data(9);
    assert_eq!(r.drain(), vec![KBD_ACK, KBD_RESEND]);
    r.data(KBD_ECHO);
    r.data(KBD_RESEND);
    r.data(0x12);
    r.data(0xf8);
    r.data(KBD_SET_DEFAULT);
    assert_eq!(r.drain(), vec![KBD_ECHO, KBD_ECHO, KBD_RESEND, KBD_ACK, KBD_ACK]);
}

#[test]
fn each_byte_raises_irq1_anew() {
    let mut r = Rig::new();
    r.data(KBD_RESET);
    assert!(r.irq1.level());
    assert_eq!(r.irq1.raises(), 1);
    r.drain();
    assert_eq!(r.irq1.raises(), 2, "the second byte is a second edge");
    assert!(!r.irq1.level());
    r.cmd(CMD_WRITE_CTR);
    r.data(0);
    r.data(KBD_ECHO);
    assert!(!r.irq1.level(), "IRQ1 disabled in the command byte");
    assert_eq!(r.status() & STATUS_OBF, STATUS_OBF);
}

#[test]
fn status_bits() {
    let mut r = Rig::new();
    assert_eq!(r.status(), STATUS_NOT_INHIBITED | STATUS_SYS);
    r.cmd(CMD_READ_CTR);
    assert_eq!(r.status(), STATUS_NOT_INHIBITED | STATUS_SYS | STATUS_CMD | STATUS_OBF);
    r.drain();
    r.command(CMD_WRITE_CTR, &[0]);
    assert_eq!(r.status(), STATUS_NOT_INHIBITED);
}

#[test]
fn port_enables_ram_and_misc_commands() {
    let mut r = Rig::new();
    r.cmd(CMD_KBD_DISABLE);
    r.cmd(CMD_AUX_ENABLE);
    let ctr = r.command(CMD_READ_CTR, &[])[0];
    assert_eq!(ctr & (CTR_KBD_DISABLE | CTR_AUX_DISABLE), CTR_KBD_DISABLE);
    r.cmd(CMD_KBD_ENABLE);
    r.cmd(CMD_AUX_DISABLE);
    let ctr = r.command(CMD_READ_CTR, &[])[0];
    assert_eq!(ctr & (CTR_KBD_DISABLE | CTR_AUX_DISABLE), CTR_AUX_DISABLE);
    r.command(0x65, &[0x99]);
    assert_eq!(r.command(0x25, &[]), vec![0x99]);
    assert_eq!(r.command(CMD_PASSWORD_INSTALLED, &[]), vec![NO_PASSWORD]);
    assert_eq!(r.command(CMD_READ_INPUT_PORT, &[]), vec![INPUT_PORT]);
    assert_eq!(r.command(CMD_READ_TEST_INPUTS, &[]), vec![0]);
    assert_eq!(r.command(CMD_WRITE_KBD_OUTPUT, &[0x1c]), vec![0x1c]);
    assert!(r.command(CMD_WRITE_AUX_DEVICE, &[0xff]).is_empty());
    assert!(r.command(0xc8, &[]).is_empty(), "unknown command");
    // A write to the keyboard re-enables its port.
    r.cmd(CMD_KBD_DISABLE);
    r.data(KBD_ECHO);
    let ctr = r.command(CMD_READ_CTR, &[]);
    assert_eq!(ctr[0] & CTR_KBD_DISABLE, 0, "{ctr:?}");
    assert_eq!(r.irq12.raises(), 0);
}

#[test]
fn a20_through_the_output_port() {
    let mut r = Rig::new();
    let out = r.command(CMD_READ_OUTPUT_PORT, &[])[0];
    assert_eq!(out & (OUT_A20 | OUT_RESET_HIGH), OUT_A20 | OUT_RESET_HIGH);
    r.command(CMD_WRITE_OUTPUT_PORT, &[0xdd]);
    assert!(!r.a20.enabled());
    r.command(CMD_WRITE_OUTPUT_PORT, &[0xdf]);
    assert!(r.a20.enabled());
    r.cmd(CMD_A20_DISABLE);
    assert!(!r.a20.enabled());
    r.cmd(CMD_A20_ENABLE);
    assert!(r.a20.enabled());
    assert!(!r.events.pending());
    r.cmd(CMD_READ_OUTPUT_PORT);
    let mut b = [0u8];
    r.kbc.read(0, &mut b);
    assert_eq!(b[0] & OUT_OBF_KBD, 0, "the buffer emptied by this read");
}

#[test]
fn reset_lines() {
    let mut r = Rig::new();
    r.cmd(0xff); // pulse nothing
    assert!(!r.events.pending());
    r.cmd(0xfe);
    assert_eq!(r.events.take(), Some(VmEvent::Reset));
    r.command(CMD_WRITE_OUTPUT_PORT, &[0x02]);
    assert_eq!(r.events.take(), Some(VmEvent::Reset));
}

#[test]
fn output_buffer_overflow_drops_bytes() {
    let mut r = Rig::new();
    for _ in 0..20 {
        r.data(KBD_ECHO);
    }
    assert_eq!(r.drain().len(), QUEUE_LEN);
    let mut b = [0u8];
    r.kbc.read(0, &mut b);
    assert_eq!(b, [0], "empty buffer");
}

#[test]
fn odd_accesses_and_state_round_trip() {
    let mut r = Rig::new();
    let mut w = [0u8; 2];
    r.kbc.read(0, &mut w);
    assert_eq!(w, [0xff, 0xff]);
    r.kbc.write(0, &[1, 2]);
    r.kbc.write(2, &[1]);
    let mut b = [0u8];
    r.kbc.read(2, &mut b);
    assert_eq!(b, [0xff]);
    r.data(KBD_IDENTIFY);
    let state = r.kbc.save();
    assert_eq!(state.queue.len(), 3);
    let irq = Arc::new(RecordingIrq::new());
    let mut other = I8042::new(irq.clone(), irq.clone(), A20Gate::new(false), r.events.clone());
    other.restore(&state).unwrap();
    assert_eq!(other.save(), state);
    assert!(irq.level());
    assert_eq!(other.debug_label(), "i8042");
    assert!(format!("{other:?}").contains("I8042"));
}

#[test]
fn mappings_cover_both_ports() {
    let r = Rig::new();
    let dev: SharedDevice = Arc::new(parking_lot::Mutex::new(r.kbc));
    let maps = I8042::bus_mappings(&dev);
    let mut pio = crate::bus::Bus::new();
    let mut mmio = crate::bus::Bus::new();
    for m in &maps {
        m.insert_into(&mut pio, &mut mmio).unwrap();
    }
    pio.write(0x64, &[CMD_SELF_TEST]);
    let mut b = [0u8];
    pio.read(0x60, &mut b);
    assert_eq!(b, [SELF_TEST_OK]);
}

/// A controller with its command byte, RAM and keyboard programmed, A20
/// turned off by command, bytes queued, and both a keyboard parameter and
/// a RAM write pending.
fn configured() -> Rig {
    let mut r = Rig::new();
    r.command(CMD_WRITE_CTR, &[CTR_KBD_INT | CTR_SYS | CTR_XLATE]);
    r.command(0x65, &[0x99]);
    r.data(KBD_SCAN_CODE_SET);
    r.data(3);
    r.data(KBD_SET_TYPEMATIC);
    r.data(0x20);
    r.drain();
    r.cmd(CMD_A20_DISABLE);
    r.data(KBD_ECHO);
    r.data(KBD_SET_LEDS);
    r.cmd(0x67);
    assert!(!r.a20.enabled());
    r
}

#[test]
fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
    let mut r = configured();
    let mut fresh = Rig::new();
    assert!(fresh.a20.enabled());
    let state = persist::assert_round_trip(&r.kbc, &mut fresh.kbc);
    assert_eq!(state.queue, [(KBD_ECHO, Source::Keyboard), (KBD_ACK, Source::Keyboard)]);
    assert_eq!(state.output_port & OUT_A20, 0, "the A20 input DDh turned off is saved");
    assert_eq!(state.data_target, DataTarget::Ram(7));
    assert!(!fresh.a20.enabled(), "the restore sets the A20 gate's keyboard input");
    assert!(fresh.irq1.level(), "IRQ1 follows the queued byte");
    assert_eq!(fresh.status(), r.status());
    for rig in [&mut r, &mut fresh] {
        rig.data(0x05); // RAM byte 7
        rig.data(0x02); // the LEDs
    }
    assert_eq!(fresh.drain(), r.drain());
    assert_eq!(fresh.command(0x27, &[]), vec![0x05]);
    assert_eq!(fresh.command(0x25, &[]), vec![0x99]);
    assert_eq!(fresh.command(CMD_READ_CTR, &[]), vec![CTR_KBD_INT | CTR_SYS | CTR_XLATE]);
    fresh.data(KBD_SCAN_CODE_SET);
    fresh.data(0);
    assert_eq!(fresh.drain(), vec![KBD_ACK, KBD_ACK, SCAN_SET_TRANSLATED[2]]);
    assert_eq!(fresh.kbc.save().kbd_leds, 2);
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let mut r = configured();
    let good = r.kbc.save();
    let cases: [Corruption<I8042State>; 8] = [
        ("ctr", |b| b.ctr = 0x80),
        ("queue", |b| b.queue = vec![(0, Source::Aux); QUEUE_LEN + 1]),
        ("data_target", |b| b.data_target = DataTarget::Ram(0)),
        ("data_target", |b| b.data_target = DataTarget::Ram(32)),
        ("kbd_scan_set", |b| b.kbd_scan_set = 0),
        ("kbd_scan_set", |b| b.kbd_scan_set = 4),
        ("kbd_leds", |b| b.kbd_leds = 8),
        ("kbd_typematic", |b| b.kbd_typematic = 0x80),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        bad.output_port |= OUT_A20;
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut r.kbc, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    assert!(!r.a20.enabled(), "a refused restore leaves A20 alone");
    assert!(r.irq1.level());
}
