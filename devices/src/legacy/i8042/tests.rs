//! Tests of the i8042, its keyboard and its mouse.

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
    // The aux loopback comes back as aux data, and the aux port passes its test.
    r.cmd(CMD_WRITE_AUX_OUTPUT);
    r.data(0x5a);
    let s = r.status();
    assert_eq!(s & (STATUS_OBF | STATUS_AUXB), STATUS_OBF | STATUS_AUXB, "aux data");
    assert_eq!(r.drain(), vec![0x5a]);
    assert_eq!(r.command(CMD_AUX_TEST, &[]), vec![INTERFACE_OK]);
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
    assert_eq!(r.drain(), vec![KBD_ACK, KBD_RESEND, KBD_ACK, KBD_ACK, 2], "set 3 refused");
    r.data(KBD_SCAN_CODE_SET);
    r.data(1);
    r.data(KBD_SCAN_CODE_SET);
    r.data(0);
    assert_eq!(r.drain(), vec![KBD_ACK, KBD_ACK, KBD_ACK, KBD_ACK, 1]);
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
    assert_eq!(r.command(CMD_WRITE_AUX_DEVICE, &[0xff]), vec![0xfa, 0xaa, 0x00], "mouse reset");
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
    // One in the output buffer, the rest held by the keyboard.
    assert_eq!(r.drain().len(), 1 + KBD_REPLY_LEN);
    for _ in 0..20 {
        r.cmd(CMD_READ_CTR);
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
    assert_eq!(state.queue.len(), 1);
    assert_eq!(state.kbd_reply, [0xab, 0x83]);
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
    r.data(1);
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
    assert_eq!(state.queue, [(KBD_ECHO, Source::Keyboard)]);
    assert_eq!(state.kbd_reply, [KBD_ACK]);
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
    assert_eq!(fresh.drain(), vec![KBD_ACK, KBD_ACK, 0x43], "set 1, translated");
    assert_eq!(fresh.kbc.save().kbd_leds, 2);
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let mut r = configured();
    let good = r.kbc.save();
    let cases: [Corruption<I8042State>; 22] = [
        ("ctr", |b| b.ctr = 0x80),
        ("queue", |b| b.queue = vec![(0, Source::Aux); QUEUE_LEN + 1]),
        ("data_target", |b| b.data_target = DataTarget::Ram(0)),
        ("data_target", |b| b.data_target = DataTarget::Ram(32)),
        ("kbd_scan_set", |b| b.kbd_scan_set = 0),
        ("kbd_scan_set", |b| b.kbd_scan_set = 3),
        ("kbd_scan_set", |b| b.kbd_scan_set = 4),
        ("kbd_leds", |b| b.kbd_leds = 8),
        ("kbd_typematic", |b| b.kbd_typematic = 0x80),
        ("kbd_reply", |b| b.kbd_reply = vec![KBD_ACK; KBD_REPLY_LEN + 1]),
        ("kbd_keys", |b| b.kbd_keys = vec![0x1c; KBD_BUFFER + 2]),
        ("mouse.sample_rate", |b| b.mouse.sample_rate = 0),
        ("mouse.sample_rate", |b| b.mouse.sample_rate = 150),
        ("mouse.resolution", |b| b.mouse.resolution = 4),
        ("mouse.id", |b| b.mouse.id = 1),
        ("mouse.recent_rates", |b| b.mouse.recent_rates = [200, 100, 81]),
        ("mouse.buttons", |b| b.mouse.buttons = 0x20),
        ("mouse.pending", |b| b.mouse.pending = vec![MouseMotion { dx: 1, dy: 0, dz: 0, buttons: 0 }; 9]),
        ("mouse.pending", |b| b.mouse.pending = vec![MouseMotion { dx: 5000, dy: 0, dz: 0, buttons: 0 }]),
        ("mouse.pending", |b| b.mouse.pending = vec![MouseMotion { dx: 0, dy: 0, dz: 0, buttons: 0x40 }]),
        ("mouse.sending", |b| b.mouse.sending = vec![0; 4]),
        ("mouse.reply", |b| b.mouse.reply = vec![0xfa; 17]),
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

impl Rig {
    /// Reads one byte with the status it came with.
    fn read(&mut self) -> (u8, u8) {
        let status = self.status();
        let mut b = [0u8];
        self.kbc.read(0, &mut b);
        (b[0], status)
    }
    /// Sends bytes to the mouse (D4h each) and reads everything back,
    /// checking each byte came as aux data.
    fn aux(&mut self, bytes: &[u8]) -> Vec<u8> {
        for &b in bytes {
            self.cmd(CMD_WRITE_AUX_DEVICE);
            self.data(b);
        }
        self.drain_aux()
    }
    /// Reads everything, checking each byte is aux data.
    fn drain_aux(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.status() & STATUS_OBF != 0 {
            let (b, s) = self.read();
            assert_ne!(s & STATUS_AUXB, 0, "byte {b:#04x} is not aux data");
            out.push(b);
        }
        out
    }
    /// A controller with the aux port and IRQ12 enabled.
    fn with_mouse() -> Self {
        let mut r = Self::new();
        r.command(CMD_WRITE_CTR, &[(CTR_BIOS & !CTR_AUX_DISABLE) | CTR_AUX_INT]);
        r
    }
    /// The same with mouse reporting on.
    fn reporting() -> Self {
        let mut r = Self::with_mouse();
        assert_eq!(r.aux(&[0xf4]), vec![mouse::ACK]);
        r
    }
    /// Untranslated (set 2 reaches the guest).
    fn untranslated() -> Self {
        let mut r = Self::new();
        r.command(CMD_WRITE_CTR, &[CTR_KBD_INT | CTR_SYS]);
        r
    }
}

const LEFT: u8 = 1;
const RIGHT: u8 = 2;
const MIDDLE: u8 = 4;

#[test]
fn a_typed_key_reaches_the_guest_in_set_1_through_the_translation() {
    let mut r = Rig::new();
    r.kbc.key_event(0x1e, true);
    assert!(r.irq1.level(), "IRQ1 rises");
    assert_eq!(r.status() & (STATUS_OBF | STATUS_AUXB), STATUS_OBF);
    assert_eq!(r.drain(), vec![0x1e]);
    assert!(!r.irq1.level());
    r.kbc.key_event(0x1e, false);
    assert_eq!(r.drain(), vec![0x9e]);
    r.kbc.key_event(0xe01d, true);
    r.kbc.key_event(0xe01d, false);
    assert_eq!(r.drain(), vec![0xe0, 0x1d, 0xe0, 0x9d], "right Ctrl");
    r.kbc.key_event(0x41, true);
    assert_eq!(r.drain(), vec![0x41], "F7 (set 2 83h)");
    r.kbc.pause_key();
    assert_eq!(r.drain(), vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]);
    assert_eq!(r.irq12.raises(), 0);
}

#[test]
fn without_translation_the_guest_reads_set_2() {
    let mut r = Rig::untranslated();
    r.kbc.key_event(0x1e, true);
    r.kbc.key_event(0x1e, false);
    assert_eq!(r.drain(), vec![0x1c, 0xf0, 0x1c]);
    r.kbc.key_event(0xe01d, true);
    r.kbc.key_event(0xe01d, false);
    assert_eq!(r.drain(), vec![0xe0, 0x14, 0xe0, 0xf0, 0x14]);
    r.kbc.pause_key();
    assert_eq!(r.drain(), vec![0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77]);
    // Set 1 selected on the keyboard itself.
    r.data(KBD_SCAN_CODE_SET);
    r.data(1);
    assert_eq!(r.drain(), vec![KBD_ACK, KBD_ACK]);
    r.kbc.key_event(0x1e, true);
    r.kbc.key_event(0x1e, false);
    assert_eq!(r.drain(), vec![0x1e, 0x9e]);
    // Codes that are not keys are ignored.
    for code in [0x0000, 0x0080, 0xe100, 0xffff] {
        r.kbc.key_event(code, true);
    }
    assert!(r.drain().is_empty());
}

#[test]
fn keys_wait_while_the_keyboard_interface_is_disabled() {
    let mut r = Rig::new();
    r.cmd(CMD_KBD_DISABLE);
    r.kbc.key_event(0x1e, true);
    r.kbc.key_event(0x1e, false);
    assert_eq!(r.status() & STATUS_OBF, 0);
    assert!(!r.irq1.level());
    assert_eq!(r.command(CMD_READ_CTR, &[]), vec![CTR_BIOS | CTR_KBD_DISABLE], "controller answers still come");
    r.cmd(CMD_KBD_ENABLE);
    assert!(r.irq1.level());
    assert_eq!(r.drain(), vec![0x1e, 0x9e]);
    // The same through the command byte.
    r.command(CMD_WRITE_CTR, &[CTR_BIOS | CTR_KBD_DISABLE]);
    r.kbc.key_event(0x30, true);
    assert!(r.drain().is_empty());
    r.cmd(CMD_WRITE_CTR);
    r.data(CTR_BIOS);
    assert_eq!(r.drain(), vec![0x30]);
}

#[test]
fn a_keyboard_disabled_by_f5_ignores_keys_and_f4_restarts_it() {
    let mut r = Rig::new();
    r.data(KBD_DISABLE);
    assert_eq!(r.drain(), vec![KBD_ACK]);
    r.kbc.key_event(0x1e, true);
    assert!(r.drain().is_empty());
    r.data(KBD_ENABLE);
    assert_eq!(r.drain(), vec![KBD_ACK]);
    r.kbc.key_event(0x1e, true);
    assert_eq!(r.drain(), vec![0x1e]);
}

#[test]
fn a_full_key_buffer_ends_with_the_overrun_code() {
    for (translated, overrun) in [(false, 0x00), (true, 0xff)] {
        let mut r = if translated { Rig::new() } else { Rig::untranslated() };
        for _ in 0..40 {
            r.kbc.key_event(0x1e, true);
        }
        let out = r.drain();
        // One in the output buffer, a full buffer, the overrun code.
        assert_eq!(out.len(), 1 + KBD_BUFFER + 1, "{out:02x?}");
        assert_eq!(out.last(), Some(&overrun));
        // A multi-byte key that does not fit is dropped whole.
        r.cmd(CMD_KBD_DISABLE);
        for _ in 0..10 {
            r.kbc.key_event(0x1e, true);
        }
        r.kbc.pause_key();
        r.kbc.key_event(0x1e, true);
        r.cmd(CMD_KBD_ENABLE);
        let out = r.drain();
        assert_eq!(out.len(), 12, "{out:02x?}");
        assert_eq!(out[10], overrun);
        assert_eq!(out[11], out[0], "a key that fits comes after the overrun code");
    }
}

#[test]
fn a_keyboard_reset_clears_queued_keys() {
    let mut r = Rig::new();
    r.cmd(CMD_KBD_DISABLE);
    r.kbc.key_event(0x1e, true);
    r.kbc.key_event(0x1f, true);
    r.data(KBD_RESET);
    assert_eq!(r.drain(), vec![KBD_ACK, KBD_BAT_OK]);
}

#[test]
fn an_answer_never_splits_a_key_sequence() {
    let mut r = Rig::untranslated();
    r.cmd(CMD_KBD_DISABLE);
    r.kbc.key_event(0xe01d, false);
    r.kbc.key_event(0x1e, true);
    r.cmd(CMD_KBD_ENABLE);
    r.data(KBD_ECHO);
    assert_eq!(r.drain(), vec![0xe0, 0xf0, 0x14, KBD_ECHO, 0x1c], "the answer goes before the next key");
    // Through the translation the F0h is swallowed, but the sequence still holds.
    let mut r = Rig::new();
    r.cmd(CMD_KBD_DISABLE);
    r.kbc.key_event(0x1e, false);
    r.cmd(CMD_KBD_ENABLE);
    r.data(KBD_ECHO);
    assert_eq!(r.drain(), vec![0x9e, KBD_ECHO]);
}

#[test]
fn the_aux_port_is_tested_looped_back_and_raises_irq12() {
    let mut r = Rig::new();
    assert_eq!(r.command(CMD_AUX_TEST, &[]), vec![0x00]);
    // Linux's IRQ delivery test: aux enabled with IRQ12, then D3h.
    r.command(CMD_WRITE_CTR, &[(CTR_BIOS & !CTR_AUX_DISABLE) | CTR_AUX_INT]);
    r.cmd(CMD_WRITE_AUX_OUTPUT);
    r.data(0xa5);
    assert!(r.irq12.level());
    assert!(!r.irq1.level());
    let (b, s) = r.read();
    assert_eq!((b, s & (STATUS_OBF | STATUS_AUXB)), (0xa5, STATUS_OBF | STATUS_AUXB));
    assert!(!r.irq12.level());
    let out = r.command(CMD_READ_OUTPUT_PORT, &[]);
    assert_eq!(out[0] & OUT_OBF_AUX, 0);
}

#[test]
fn the_mouse_is_enabled_through_d4_and_acks_as_aux_data() {
    let mut r = Rig::new();
    // D4h enables the aux interface; IRQ12 stays off until the command byte asks.
    r.cmd(CMD_WRITE_AUX_DEVICE);
    r.data(0xf4);
    assert_eq!(r.status() & (STATUS_OBF | STATUS_AUXB), STATUS_OBF | STATUS_AUXB);
    assert!(!r.irq12.level(), "IRQ12 off in the command byte");
    assert_eq!(r.drain_aux(), vec![mouse::ACK]);
    let mut r = Rig::with_mouse();
    r.cmd(CMD_WRITE_AUX_DEVICE);
    r.data(0xf4);
    assert!(r.irq12.level());
    assert!(!r.irq1.level());
    assert_eq!(r.drain_aux(), vec![mouse::ACK]);
    assert_eq!(r.irq12.raises(), 1);
    // A disabled aux interface holds the mouse's bytes.
    r.cmd(CMD_AUX_DISABLE);
    r.kbc.mouse_event(1, 0, 0, 0);
    assert_eq!(r.status() & STATUS_OBF, 0);
    r.cmd(CMD_AUX_ENABLE);
    assert_eq!(r.drain_aux(), vec![0x08, 0x01, 0x00]);
}

#[test]
fn movement_makes_three_byte_packets_with_9_bit_deltas() {
    let mut r = Rig::reporting();
    // Screen convention: dy negative is up, which PS/2 reports as positive.
    r.kbc.mouse_event(10, -5, 0, LEFT);
    assert!(r.irq12.level());
    assert_eq!(r.drain_aux(), vec![0x09, 10, 5]);
    r.kbc.mouse_event(-3, 4, 0, 0);
    assert_eq!(r.drain_aux(), vec![0x38, 0xfd, 0xfc]);
    r.kbc.mouse_event(0, 0, 0, RIGHT | MIDDLE);
    assert_eq!(r.drain_aux(), vec![0x0e, 0, 0], "a button alone is a packet");
    r.kbc.mouse_event(0, 0, 0, RIGHT | MIDDLE);
    assert!(r.drain_aux().is_empty(), "nothing changed");
    r.kbc.mouse_event(0, 0, 5, RIGHT | MIDDLE);
    assert!(r.drain_aux().is_empty(), "a standard mouse has no wheel");
    // -256 fits; a bigger move is split, never overflowing.
    r.kbc.mouse_event(-256, 0, 0, 0);
    assert_eq!(r.drain_aux(), vec![0x18, 0x00, 0x00]);
    r.kbc.mouse_event(300, -600, 0, 0);
    assert_eq!(r.drain_aux(), vec![0x08, 255, 255, 0x08, 45, 255, 0x08, 0, 90], "300 right, 600 up in three packets");
    // Moves while the guest is slow add up in one packet.
    r.cmd(CMD_AUX_DISABLE);
    for _ in 0..10 {
        r.kbc.mouse_event(2, 1, 0, 0);
    }
    r.cmd(CMD_AUX_ENABLE);
    assert_eq!(r.drain_aux(), vec![0x28, 20, 0xf6]);
}

#[test]
fn scaling_2_to_1_maps_small_moves_and_doubles_big_ones() {
    let mut r = Rig::reporting();
    assert_eq!(r.aux(&[0xe7]), vec![mouse::ACK]);
    for (d, want) in [(1, 1u8), (2, 1), (3, 3), (4, 6), (5, 9), (6, 12), (-4, 0xfa)] {
        r.kbc.mouse_event(d, 0, 0, 0);
        let p = r.drain_aux();
        assert_eq!(p[1], want, "{d}");
    }
    r.kbc.mouse_event(200, 0, 0, 0);
    assert_eq!(r.drain_aux(), vec![0x08, 254, 0, 0x08, 146, 0], "127 then 73, doubled");
    assert_eq!(r.aux(&[0xe6]), vec![mouse::ACK]);
    r.kbc.mouse_event(4, 0, 0, 0);
    assert_eq!(r.drain_aux(), vec![0x08, 4, 0]);
}

#[test]
fn the_intellimouse_knocks_give_ids_3_and_4() {
    let mut r = Rig::with_mouse();
    assert_eq!(r.aux(&[0xf2]), vec![mouse::ACK, 0]);
    let ack = mouse::ACK;
    assert_eq!(r.aux(&[0xf3, 200, 0xf3, 100, 0xf3, 80]), vec![ack; 6]);
    assert_eq!(r.aux(&[0xf2]), vec![ack, 3]);
    assert_eq!(r.aux(&[0xf4]), vec![ack]);
    // Wheel up (away from the user) is negative in the packet.
    r.kbc.mouse_event(1, 0, -1, 0);
    assert_eq!(r.drain_aux(), vec![0x08, 1, 0, 0xff]);
    r.kbc.mouse_event(0, 0, 20, 0);
    assert_eq!(r.drain_aux(), vec![0x08, 0, 0, 7, 0x08, 0, 0, 7, 0x08, 0, 0, 6], "split by 7");
    r.kbc.mouse_event(0, 0, 0, 0b1_1000);
    assert_eq!(r.drain_aux(), vec![0x08, 0, 0, 0], "ID 3 has no buttons 4 and 5");
    assert_eq!(r.aux(&[0xf3, 200, 0xf3, 200, 0xf3, 80, 0xf2]), vec![ack, ack, ack, ack, ack, ack, ack, 4]);
    r.kbc.mouse_event(0, 0, 2, 0b0_1001);
    assert_eq!(r.drain_aux(), vec![0x09, 0, 0, 0x12]);
    r.kbc.mouse_event(0, 0, -1, 0b1_0000);
    assert_eq!(r.drain_aux(), vec![0x08, 0, 0, 0x2f]);
    // The second knock does nothing on a standard mouse.
    assert_eq!(r.aux(&[0xff]), vec![ack, mouse::BAT_OK, 0]);
    r.aux(&[0xf3, 200, 0xf3, 200, 0xf3, 80]);
    assert_eq!(r.aux(&[0xf2]), vec![ack, 0]);
}

#[test]
fn no_packets_while_reporting_is_off() {
    let mut r = Rig::with_mouse();
    r.kbc.mouse_event(5, 5, 0, LEFT);
    assert!(r.drain_aux().is_empty());
    assert_eq!(r.aux(&[0xf4]), vec![mouse::ACK]);
    assert!(r.drain_aux().is_empty(), "nothing was kept from before");
    r.kbc.mouse_event(1, 0, 0, LEFT);
    assert_eq!(r.drain_aux(), vec![0x09, 1, 0]);
    assert_eq!(r.aux(&[0xf5]), vec![mouse::ACK]);
    r.kbc.mouse_event(1, 0, 0, 0);
    assert!(r.drain_aux().is_empty());
    assert_eq!(r.irq1.raises(), 0);
}

#[test]
fn mouse_reset_defaults_and_status() {
    let mut r = Rig::with_mouse();
    let ack = mouse::ACK;
    assert_eq!(r.aux(&[0xff]), vec![ack, mouse::BAT_OK, 0x00]);
    assert_eq!(r.aux(&[0xe9]), vec![ack, 0x00, 2, 100]);
    assert_eq!(r.aux(&[0xf3, 40, 0xe8, 3, 0xe7, 0xf4]), vec![ack; 6]);
    r.kbc.mouse_event(0, 0, 0, LEFT | MIDDLE);
    r.drain_aux();
    assert_eq!(r.aux(&[0xe9]), vec![ack, 0x20 | 0x10 | 0x04 | 0x02, 3, 40]);
    assert_eq!(r.aux(&[0xf6, 0xe9]), vec![ack, ack, 0x06, 2, 100]);
    // Bad parameters and unknown commands get FEh.
    assert_eq!(r.aux(&[0xf3, 55, 0xe8, 4, 0xe1, 0x00]), vec![ack, 0xfe, ack, 0xfe, 0xfe, 0xfe]);
    assert_eq!(r.aux(&[0xfe]), vec![0xfe], "resend repeats the last byte");
}

#[test]
fn remote_mode_and_wrap_mode() {
    let mut r = Rig::with_mouse();
    let ack = mouse::ACK;
    assert_eq!(r.aux(&[0xf0]), vec![ack]);
    r.kbc.mouse_event(300, 0, 0, LEFT);
    r.kbc.mouse_event(10, -2, 0, 0);
    assert!(r.drain_aux().is_empty(), "remote mode streams nothing");
    assert_eq!(r.aux(&[0xe9])[1] & 0x40, 0x40);
    assert_eq!(r.aux(&[0xeb]), vec![ack, 0x08 | 0x40, 255, 2], "all in one packet, X overflowed");
    assert_eq!(r.aux(&[0xeb]), vec![ack, 0x08, 0, 0]);
    assert_eq!(r.aux(&[0xea]), vec![ack]);
    assert_eq!(r.aux(&[0xee, 0x12, 0xf2, 0xec, 0xf2]), vec![ack, 0x12, 0xf2, ack, ack, 0]);
}

#[test]
fn linux_psmouse_probe_and_init() {
    let mut r = Rig::new();
    let ack = mouse::ACK;
    // i8042_check_aux: loopback, disable/enable bit test.
    assert_eq!(r.command(CMD_WRITE_AUX_OUTPUT, &[0x5a]), vec![0x5a]);
    r.cmd(CMD_AUX_DISABLE);
    assert_ne!(r.command(CMD_READ_CTR, &[])[0] & CTR_AUX_DISABLE, 0);
    r.cmd(CMD_AUX_ENABLE);
    assert_eq!(r.command(CMD_READ_CTR, &[])[0] & CTR_AUX_DISABLE, 0);
    let ctr = (r.command(CMD_READ_CTR, &[])[0] & !CTR_AUX_DISABLE) | CTR_AUX_INT;
    r.command(CMD_WRITE_CTR, &[ctr]);
    // psmouse_probe: reset, get ID, reset-disable.
    assert_eq!(r.aux(&[0xff]), vec![ack, mouse::BAT_OK, 0x00]);
    assert_eq!(r.aux(&[0xf2]), vec![ack, 0x00]);
    assert_eq!(r.aux(&[0xf6]), vec![ack]);
    assert_eq!(r.aux(&[0xf5]), vec![ack]);
    // Synaptics: a sliced identify query (E6h, E8h x4), then E9h: not 47h.
    let q = r.aux(&[0xe6, 0xe8, 0, 0xe8, 0, 0xe8, 0, 0xe8, 0, 0xe9]);
    assert_eq!(q.len(), 13);
    assert_ne!(q[11], 0x47, "not a Synaptics pad");
    // ALPS / Logitech: E6h x3 or E7h x3, then E9h.
    let q = r.aux(&[0xe7, 0xe7, 0xe7, 0xe9]);
    assert_eq!(q, vec![ack, ack, ack, ack, 0x10, 0, 100]);
    r.aux(&[0xe6]);
    // TrackPoint's read ID is not a mouse command.
    assert_eq!(r.aux(&[0xe1]), vec![0xfe]);
    // IntelliMouse and Explorer knocks, then the horizontal-wheel knock.
    assert_eq!(r.aux(&[0xf3, 200, 0xf3, 100, 0xf3, 80, 0xf2]), [vec![ack; 7], vec![3]].concat());
    assert_eq!(r.aux(&[0xf3, 200, 0xf3, 200, 0xf3, 80, 0xf2]), [vec![ack; 7], vec![4]].concat());
    assert_eq!(r.aux(&[0xf3, 200, 0xf3, 80, 0xf3, 40]), vec![ack; 6]);
    // psmouse_initialize: rate, resolution, scaling; then enable.
    assert_eq!(r.aux(&[0xf3, 100, 0xe8, 3, 0xe6, 0xf4]), vec![ack; 6]);
    assert_eq!(r.aux(&[0xe9]), vec![ack, 0x20, 3, 100]);
    r.kbc.mouse_event(1, 1, 1, RIGHT);
    assert_eq!(r.drain_aux(), vec![0x2a, 1, 0xff, 0x01]);
}

#[test]
fn a_mouse_packet_is_never_split_by_a_mouse_answer() {
    let mut r = Rig::reporting();
    r.kbc.mouse_event(1, 0, 0, 0);
    r.kbc.mouse_event(2, 0, 0, LEFT);
    // The first packet's first byte is in the output buffer; F5h now.
    assert_eq!(r.read().0, 0x08);
    r.cmd(CMD_WRITE_AUX_DEVICE);
    r.data(0xf5);
    assert_eq!(r.drain_aux(), vec![1, 0, mouse::ACK], "the packet ends, the rest is dropped");
    // Keyboard bytes go first when both wait.
    let mut r = Rig::reporting();
    r.cmd(CMD_KBD_DISABLE);
    r.cmd(CMD_AUX_DISABLE);
    r.kbc.mouse_event(1, 0, 0, 0);
    r.kbc.key_event(0x1e, true);
    r.cmd(CMD_WRITE_CTR);
    r.data((CTR_BIOS & !CTR_AUX_DISABLE) | CTR_AUX_INT);
    assert_eq!(r.read(), (0x1e, STATUS_NOT_INHIBITED | STATUS_SYS | STATUS_OBF));
    assert!(r.irq12.level());
    assert_eq!(r.drain_aux(), vec![0x08, 1, 0]);
}

#[test]
fn pending_motion_is_bounded_and_folds() {
    let mut r = Rig::reporting();
    r.cmd(CMD_AUX_DISABLE);
    for i in 0..1000 {
        r.kbc.mouse_event(i32::MAX, i32::MIN, i32::MIN, (i % 3) as u8);
        r.kbc.key_event((i % 0x10000) as u16, i % 2 == 0);
    }
    let state = r.kbc.save();
    assert_eq!(state.mouse.pending.len(), mouse::PENDING_LEN);
    assert!(state.kbd_keys.len() <= KBD_BUFFER + 1);
    let mut fresh = Rig::new();
    persist::assert_round_trip(&r.kbc, &mut fresh.kbc);
    r.cmd(CMD_AUX_ENABLE);
    let out = r.drain();
    assert!(out.len() < 600, "{}", out.len());
}

#[test]
fn a_queued_key_and_a_half_sent_packet_survive_a_save() {
    let mut r = Rig::reporting();
    let ack = mouse::ACK;
    assert_eq!(r.aux(&[0xf3, 200, 0xf3, 100, 0xf3]), vec![ack; 5]);
    r.cmd(CMD_KBD_DISABLE);
    r.kbc.key_event(0x1e, true);
    r.kbc.mouse_event(-1, 0, 0, LEFT);
    assert_eq!(r.read().0, 0x19);
    r.cmd(CMD_WRITE_AUX_DEVICE); // the D4h flag is pending
    let mut fresh = Rig::new();
    let state = persist::assert_round_trip(&r.kbc, &mut fresh.kbc);
    assert_eq!(state.kbd_keys, [0x1c]);
    assert_eq!(state.data_target, DataTarget::AuxDevice);
    assert_eq!(state.queue, [(0xff, Source::Aux)]);
    assert_eq!(state.mouse.sending, [0x00]);
    assert_eq!(state.mouse.recent_rates, [0, 200, 100]);
    assert_eq!(state.mouse.param, Some(MouseParam::SampleRate));
    assert!(fresh.irq12.level(), "IRQ12 follows the aux byte");
    assert_eq!(fresh.status(), r.status());
    for rig in [&mut r, &mut fresh] {
        rig.data(0x50); // the third knock rate, through the pending D4h
        assert_eq!(rig.drain_aux(), vec![0xff, 0x00, ack]);
        assert_eq!(rig.aux(&[0xf2]), vec![ack, 3]);
        rig.cmd(CMD_KBD_ENABLE);
        assert_eq!(rig.drain(), vec![0x1e]);
    }
}

/// Whatever the guest and the host do, nothing panics, the queues stay
/// bounded and the state restores.
#[test]
fn random_guest_and_host_input_leave_a_restorable_state() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut r = Rig::new();
    for _ in 0..20_000 {
        let v = next();
        let byte = (v >> 8) as u8;
        match v % 8 {
            // Avoid the reset lines: they only file an event.
            0 => r.cmd(if byte >= 0xf0 { 0xff } else { byte }),
            1 | 2 => {
                if r.kbc.save().data_target == DataTarget::OutputPort {
                    r.data(byte | OUT_RESET_HIGH);
                } else {
                    r.data(byte);
                }
            }
            3 => {
                r.read();
            }
            4 => r.kbc.key_event((v >> 16) as u16, v & 0x100 != 0),
            5 => r.kbc.mouse_event((v >> 16) as i32, (v >> 24) as i32 >> 8, (v >> 40) as i8 as i32, byte),
            6 => {
                r.cmd(CMD_WRITE_AUX_DEVICE);
                r.data(byte);
            }
            _ => r.kbc.pause_key(),
        }
        let s = r.kbc.save();
        I8042::check_state(&s).unwrap();
    }
    let mut fresh = Rig::new();
    persist::assert_round_trip(&r.kbc, &mut fresh.kbc);
    assert_eq!(fresh.drain(), r.drain());
}
