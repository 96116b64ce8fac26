//! Tests of the 16550A model.

use super::*;
use crate::irq::RecordingIrq;
use parking_lot::Mutex;

/// A host output the test can inspect.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn uart() -> (Serial, Arc<RecordingIrq>, Output) {
    let irq = Arc::new(RecordingIrq::new());
    let out = Output::default();
    let serial = Serial::new(irq.clone(), Box::new(out.clone()));
    (serial, irq, out)
}

fn iir(s: &mut Serial) -> u8 {
    s.read_register(IIR_FCR)
}

#[test]
fn reset_values() {
    let (mut s, irq, _) = uart();
    assert_eq!(s.read_register(IER_DLM), 0x00, "IER");
    assert_eq!(s.read_register(IIR_FCR), 0x01, "IIR");
    assert_eq!(s.read_register(LCR), 0x00, "LCR");
    assert_eq!(s.read_register(MCR), 0x00, "MCR");
    assert_eq!(s.read_register(LSR), 0x60, "LSR");
    assert_eq!(s.read_register(MSR), 0xb0, "MSR: DCD, DSR and CTS from the host");
    assert_eq!(s.read_register(SCR), 0x00, "SCR");
    assert_eq!(s.read_register(RBR_THR_DLL), 0x00, "RBR with nothing received");
    s.write_register(LCR, LCR_DLAB);
    assert_eq!(s.read_register(RBR_THR_DLL), 12, "DLL: 9600 baud");
    assert_eq!(s.read_register(IER_DLM), 0, "DLM");
    assert!(!irq.level());
    assert_eq!(irq.raises(), 0);
}

#[test]
fn reset_keeps_divisor_and_scratch() {
    let (mut s, _, _) = uart();
    s.write_register(LCR, LCR_DLAB);
    s.write_register(RBR_THR_DLL, 1);
    s.write_register(LCR, 0x03);
    s.write_register(SCR, 0x5a);
    s.write_register(IER_DLM, IER_ETBEI);
    s.write_register(MCR, MCR_OUT2);
    s.reset();
    let state = s.save();
    assert_eq!((state.dll, state.scr), (1, 0x5a));
    assert_eq!((state.lcr, state.ier, state.mcr), (0, 0, 0));
    assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);
}

#[test]
fn thr_empty_interrupt() {
    let (mut s, irq, out) = uart();
    s.write_register(MCR, MCR_OUT2);
    assert_eq!(iir(&mut s), IIR_NO_INT_PENDING, "nothing enabled yet");

    // Enabling ETBEI while THR is empty raises the interrupt at once.
    s.write_register(IER_DLM, IER_ETBEI);
    assert!(irq.level());
    // Reading IIR reports it and acknowledges it.
    assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY);
    assert!(!irq.level());
    assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);
    // Writing ETBEI again (1 -> 1) does not re-raise it.
    s.write_register(IER_DLM, IER_ETBEI);
    assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);

    // A THR write transmits and THR empties again: a new interrupt.
    s.write_register(RBR_THR_DLL, b'A');
    assert_eq!(*out.0.lock(), b"A");
    assert!(irq.level());
    assert_eq!(irq.raises(), 2);
    assert_eq!(s.read_register(LSR) & LSR_THR_EMPTY, LSR_THR_EMPTY);
    assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY);
    assert!(!irq.level());

    // Disabling and re-enabling ETBEI raises it again.
    s.write_register(IER_DLM, 0);
    s.write_register(IER_DLM, IER_ETBEI);
    assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY);

    // With ETBEI off, transmitting raises nothing.
    s.write_register(IER_DLM, 0);
    s.write_register(RBR_THR_DLL, b'B');
    assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);
    assert!(!irq.level());
    assert_eq!(*out.0.lock(), b"AB");
}

#[test]
fn divisor_latch() {
    let (mut s, _, out) = uart();
    s.write_register(IER_DLM, IER_ERBFI);
    assert_eq!(s.enqueue_input(b"x"), 1);

    s.write_register(LCR, LCR_DLAB | 0x03);
    s.write_register(RBR_THR_DLL, 0x01);
    s.write_register(IER_DLM, 0x02);
    assert_eq!(s.read_register(RBR_THR_DLL), 0x01);
    assert_eq!(s.read_register(IER_DLM), 0x02);
    assert!(out.0.lock().is_empty(), "a DLL write transmits nothing");
    assert_eq!(s.read_register(LCR), LCR_DLAB | 0x03);

    s.write_register(LCR, 0x03);
    assert_eq!(s.read_register(IER_DLM), IER_ERBFI, "IER is untouched by DLM writes");
    assert_eq!(s.read_register(RBR_THR_DLL), b'x', "RBR is back");
    s.write_register(RBR_THR_DLL, b'y');
    assert_eq!(*out.0.lock(), b"y");
    let state = s.save();
    assert_eq!((state.dll, state.dlm), (0x01, 0x02));
}

#[test]
fn fifo_overflow_from_the_wire() {
    let (mut s, _, _) = uart();
    s.write_register(IIR_FCR, FCR_FIFO_ENABLE);
    let bytes: Vec<u8> = (0..17).collect();
    s.receive(&bytes);
    assert_eq!(s.read_register(LSR), LSR_DATA_READY | LSR_OVERRUN_ERROR | 0x60);
    assert_eq!(s.read_register(LSR) & LSR_OVERRUN_ERROR, 0, "reading LSR clears OE");
    let got: Vec<u8> = (0..16).map(|_| s.read_register(RBR_THR_DLL)).collect();
    assert_eq!(got, bytes[..16], "the 17th byte is dropped");
    assert_eq!(s.read_register(LSR) & LSR_DATA_READY, 0);
}

#[test]
fn fifo_overflow_in_loopback() {
    let (mut s, _, out) = uart();
    s.write_register(IIR_FCR, FCR_FIFO_ENABLE);
    s.write_register(MCR, MCR_LOOP);
    for b in 0..17 {
        s.write_register(RBR_THR_DLL, b);
    }
    assert!(out.0.lock().is_empty());
    assert_eq!(s.read_register(LSR) & LSR_OVERRUN_ERROR, LSR_OVERRUN_ERROR);
    assert_eq!(s.save().rx_fifo, (0..16).collect::<Vec<u8>>());
}

#[test]
fn host_input_is_flow_controlled() {
    let (mut s, _, _) = uart();
    assert_eq!(s.rx_space(), 1, "16450 mode holds one byte");
    s.write_register(IIR_FCR, FCR_FIFO_ENABLE);
    assert_eq!(s.rx_space(), FIFO_SIZE);
    assert_eq!(s.enqueue_input(&[7; 17]), 16);
    assert_eq!(s.rx_space(), 0);
    assert_eq!(s.enqueue_input(b"z"), 0);
    assert_eq!(s.read_register(LSR) & LSR_OVERRUN_ERROR, 0, "no overrun from the host");
    s.read_register(RBR_THR_DLL);
    assert_eq!(s.rx_space(), 1);
}

#[test]
fn overrun_without_fifo_overwrites_rbr() {
    let (mut s, _, _) = uart();
    s.receive(b"ab");
    assert_eq!(s.read_register(LSR), LSR_DATA_READY | LSR_OVERRUN_ERROR | 0x60);
    assert_eq!(s.read_register(RBR_THR_DLL), b'b');
    assert_eq!(s.read_register(LSR), 0x60);
}

#[test]
fn rx_trigger_levels() {
    for (bits, level) in [(FCR_RX_TRIGGER_1, 1), (FCR_RX_TRIGGER_4, 4), (FCR_RX_TRIGGER_8, 8), (FCR_RX_TRIGGER_14, 14)]
    {
        let (mut s, irq, _) = uart();
        s.write_register(IIR_FCR, FCR_FIFO_ENABLE | bits);
        s.write_register(IER_DLM, IER_ERBFI);
        s.write_register(MCR, MCR_OUT2);
        assert_eq!(s.enqueue_input(&vec![0; level - 1]), level - 1);
        let below = if level == 1 { IIR_NO_INT_PENDING } else { IIR_ID_CHARACTER_TIMEOUT };
        assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | below, "trigger {level}, one byte short");
        assert_eq!(irq.level(), level > 1);
        s.enqueue_input(&[0]);
        assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_ID_RECEIVED_DATA, "trigger {level}");
        assert!(irq.level());
        // Draining the FIFO clears it.
        for _ in 0..level {
            s.read_register(RBR_THR_DLL);
        }
        assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_NO_INT_PENDING);
        assert!(!irq.level());
    }
}

#[test]
fn fcr_semantics() {
    let (mut s, _, _) = uart();
    // Bits other than bit 0 are ignored while bit 0 is written as 0.
    s.write_register(IIR_FCR, FCR_RX_TRIGGER_8);
    assert_eq!(s.save().fcr, 0);
    assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);

    s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_8);
    assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_NO_INT_PENDING);
    s.enqueue_input(b"abc");
    s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_8 | FCR_RX_FIFO_RESET);
    assert_eq!(s.save().rx_fifo, b"");
    assert_eq!(s.save().fcr, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_8, "reset bits clear themselves");

    // Resetting the transmit FIFO raises THR empty.
    s.write_register(IER_DLM, IER_ETBEI);
    assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_ID_THR_EMPTY);
    s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_TX_FIFO_RESET);
    assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_ID_THR_EMPTY);

    // Leaving FIFO mode empties the FIFO.
    s.enqueue_input(b"abc");
    s.write_register(IIR_FCR, 0);
    assert_eq!(s.save().rx_fifo, b"");
    assert_eq!(s.rx_space(), 1);
}

#[test]
fn writable_bits() {
    let (mut s, _, _) = uart();
    s.write_register(IER_DLM, 0xff);
    assert_eq!(s.read_register(IER_DLM), 0x0f);
    s.write_register(MCR, 0xff);
    assert_eq!(s.read_register(MCR), 0x1f);
    s.write_register(SCR, 0xa5);
    assert_eq!(s.read_register(SCR), 0xa5);
    // LSR and MSR ignore writes.
    s.write_register(MCR, 0);
    s.read_register(MSR);
    s.write_register(LSR, 0);
    s.write_register(MSR, 0);
    assert_eq!(s.read_register(LSR), 0x60);
    assert_eq!(s.read_register(MSR), 0xb0);
}

#[test]
fn loopback() {
    let (mut s, irq, out) = uart();
    s.write_register(IER_DLM, IER_ERBFI);
    s.write_register(MCR, MCR_LOOP);
    // Modem inputs now come from the (inactive) outputs: DSR, CTS and DCD fell.
    assert_eq!(s.read_register(MSR), MSR_DELTA_CTS | MSR_DELTA_DSR | MSR_DELTA_DCD, "inputs low, deltas set");
    assert_eq!(s.read_register(MSR), 0, "reading MSR clears the deltas");

    // Each output loops to its input.
    for (out_bit, in_bit) in [(MCR_DTR, MSR_DSR), (MCR_RTS, MSR_CTS), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD)] {
        s.write_register(MCR, MCR_LOOP | out_bit);
        assert_eq!(s.read_register(MSR) & 0xf0, in_bit);
        s.write_register(MCR, MCR_LOOP);
        s.read_register(MSR);
    }
    // RI gives a delta only on its trailing edge.
    s.write_register(MCR, MCR_LOOP | MCR_OUT1);
    assert_eq!(s.read_register(MSR), MSR_RI);
    s.write_register(MCR, MCR_LOOP);
    assert_eq!(s.read_register(MSR), MSR_TRAILING_EDGE_RI);
    // Linux's probe: LOOP | OUT2 | RTS must read DCD | CTS.
    s.write_register(MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
    assert_eq!(s.read_register(MSR) & 0xf0, 0x90);

    // THR goes to RBR, not to the host; host input is disconnected.
    s.write_register(RBR_THR_DLL, b'L');
    assert!(out.0.lock().is_empty());
    assert_eq!(s.rx_space(), 0);
    assert_eq!(s.enqueue_input(b"h"), 0);
    s.receive(b"h");
    // The interrupt is identified, but the OUT2 pin is forced inactive.
    assert_eq!(iir(&mut s), IIR_ID_RECEIVED_DATA);
    assert!(!irq.level());
    assert_eq!(s.read_register(RBR_THR_DLL), b'L');
    assert_eq!(s.read_register(LSR) & LSR_DATA_READY, 0);

    // Leaving loopback restores the host inputs and the host output.
    s.write_register(MCR, MCR_OUT2);
    assert_eq!(s.read_register(MSR) & 0xf0, MSR_HOST_INPUTS);
    s.write_register(RBR_THR_DLL, b'T');
    assert_eq!(*out.0.lock(), b"T");
}

#[test]
fn irq_gated_by_out2() {
    let (mut s, irq, _) = uart();
    s.write_register(IER_DLM, IER_ERBFI);
    s.enqueue_input(b"k");
    assert_eq!(iir(&mut s), IIR_ID_RECEIVED_DATA);
    assert!(!irq.level(), "OUT2 clear: the IRQ is not driven");
    s.write_register(MCR, MCR_DTR | MCR_RTS);
    assert!(!irq.level());
    s.write_register(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    assert!(irq.level());
    s.write_register(MCR, MCR_DTR | MCR_RTS);
    assert!(!irq.level());
    s.write_register(MCR, MCR_OUT2);
    assert!(irq.level());
    s.read_register(RBR_THR_DLL);
    assert!(!irq.level());
    assert_eq!(irq.raises(), 2);
}

#[test]
fn iir_priority_order() {
    let (mut s, irq, _) = uart();
    // A modem-status delta: into loopback and back out.
    s.write_register(MCR, MCR_LOOP);
    s.write_register(MCR, MCR_OUT2);
    // An overrun with data held (16450 mode).
    s.receive(b"12");
    // Everything enabled; ETBEI 0 -> 1 latches THR empty.
    s.write_register(IER_DLM, IER_WRITABLE);
    assert!(irq.level());

    assert_eq!(iir(&mut s), IIR_ID_RECEIVER_LINE_STATUS);
    assert_eq!(iir(&mut s), IIR_ID_RECEIVER_LINE_STATUS, "IIR reads do not clear it");
    s.read_register(LSR);
    assert_eq!(iir(&mut s), IIR_ID_RECEIVED_DATA);
    s.read_register(RBR_THR_DLL);
    assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY);
    assert_eq!(iir(&mut s), IIR_ID_MODEM_STATUS, "the IIR read acknowledged THR empty");
    assert!(irq.level());
    s.read_register(MSR);
    assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);
    assert!(!irq.level());
}

#[test]
fn iir_reports_thr_empty_only_when_it_is_the_top_source() {
    let (mut s, _, _) = uart();
    s.write_register(IER_DLM, IER_ERBFI | IER_ETBEI);
    s.enqueue_input(b"d");
    assert_eq!(iir(&mut s), IIR_ID_RECEIVED_DATA);
    s.read_register(RBR_THR_DLL);
    assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY, "still latched behind received data");
}

#[test]
fn save_restore_round_trip() {
    let (mut s, _, _) = uart();
    s.write_register(LCR, LCR_DLAB);
    s.write_register(RBR_THR_DLL, 3);
    s.write_register(LCR, 0x1b);
    s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_4);
    s.write_register(SCR, 0x42);
    s.write_register(MCR, MCR_LOOP);
    s.write_register(MCR, MCR_OUT2 | MCR_DTR);
    s.write_register(IER_DLM, IER_ERBFI | IER_ETBEI);
    s.enqueue_input(b"hello");
    let state = s.save();

    let (mut t, irq, _) = uart();
    t.restore(&state).unwrap();
    assert_eq!(t.save(), state);
    assert!(irq.level(), "restore drives the line to match the state");
    assert_eq!(iir(&mut t), IIR_FIFOS_ENABLED | IIR_ID_RECEIVED_DATA);
    assert_eq!(t.read_register(RBR_THR_DLL), b'h');

    let mut bad = state.clone();
    bad.fcr = 0;
    let e = t.restore(&bad).unwrap_err();
    assert_eq!((e.part, e.field), ("16550A UART", "rx_fifo"));
    assert_eq!(e.problem, "holds 5 bytes but the saved FIFO mode holds at most 1");
}

/// A UART with every register programmed, loopback traffic and host input
/// queued, a modem-status delta and an overrun pending.
fn configured() -> (Serial, Arc<RecordingIrq>) {
    let (mut s, irq, _) = uart();
    s.write_register(LCR, LCR_DLAB);
    s.write_register(RBR_THR_DLL, 0x30);
    s.write_register(IER_DLM, 0x01);
    s.write_register(LCR, 0x1b);
    s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_8 | FCR_DMA_MODE);
    s.write_register(SCR, 0x5a);
    s.write_register(MCR, MCR_LOOP);
    s.write_register(MCR, MCR_OUT2 | MCR_RTS);
    s.write_register(IER_DLM, IER_ERBFI | IER_ELSI | IER_EDSSI);
    s.receive(&[0x55; FIFO_SIZE + 1]);
    assert!(irq.level());
    (s, irq)
}

#[test]
fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
    let (mut s, _) = configured();
    let (mut t, irq) = uart_only();
    let state = persist::assert_round_trip(&s, &mut t);
    assert_eq!(state.rx_fifo.len(), FIFO_SIZE);
    assert_eq!(state.lsr_errors, LSR_OVERRUN_ERROR);
    assert!(irq.level(), "the restored UART drives its line as the original does");
    // Every register reads the same, side effects included.
    for reg in [IIR_FCR, LSR, IIR_FCR, MSR, MSR, LCR, MCR, SCR, IER_DLM, RBR_THR_DLL, LSR, IIR_FCR] {
        assert_eq!(t.read_register(reg), s.read_register(reg), "register {reg}");
    }
    s.write_register(LCR, 0x9b);
    t.write_register(LCR, 0x9b);
    assert_eq!((t.read_register(RBR_THR_DLL), t.read_register(IER_DLM)), (0x30, 0x01), "the divisor latch");
    assert_eq!(t.save(), s.save());
}

/// A fresh UART whose output nobody reads.
fn uart_only() -> (Serial, Arc<RecordingIrq>) {
    let (s, irq, _) = uart();
    (s, irq)
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let (s, _) = configured();
    let good = s.save();
    let (mut t, irq) = configured();
    let cases: [Corruption<SerialState>; 7] = [
        ("ier", |b| b.ier = 0x10),
        ("mcr", |b| b.mcr = 0x20),
        ("fcr", |b| b.fcr = FCR_RX_FIFO_RESET | FCR_FIFO_ENABLE),
        ("fcr", |b| {
            b.fcr = FCR_RX_TRIGGER_14;
            b.rx_fifo.clear();
        }),
        ("lsr_errors", |b| b.lsr_errors = LSR_DATA_READY),
        ("msr_deltas", |b| b.msr_deltas = MSR_CTS),
        ("rx_fifo", |b| b.rx_fifo.push(0)),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut t, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    assert!(irq.level(), "a refused restore leaves the line alone");
}

#[test]
fn bus_accesses_of_the_wrong_size_are_ignored() {
    let (mut s, _, out) = uart();
    let mut word = [0u8; 2];
    BusDevice::read(&mut s, 0, &mut word);
    assert_eq!(word, [0xff, 0xff]);
    BusDevice::write(&mut s, 0, b"ab");
    BusDevice::write(&mut s, 0, &[]);
    assert!(out.0.lock().is_empty());

    let mut byte = [0u8; 1];
    BusDevice::read(&mut s, 5, &mut byte);
    assert_eq!(byte, [0x60]);
    BusDevice::read(&mut s, 8, &mut byte);
    assert_eq!(byte, [0xff], "past the last register");
    BusDevice::read(&mut s, 0x1_0000_0000, &mut byte);
    assert_eq!(byte, [0xff]);
    BusDevice::write(&mut s, 0x1_0000_0000, &[1]);
    BusDevice::write(&mut s, 0, b"Z");
    assert_eq!(*out.0.lock(), b"Z");
    assert_eq!(s.debug_label(), "serial");
    assert_eq!(s.with_label("serial (COM1)").debug_label(), "serial (COM1)");
}

#[test]
fn a_failing_output_does_not_panic() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut s = Serial::new(Arc::new(RecordingIrq::new()), Box::new(Broken));
    s.write_register(RBR_THR_DLL, b'a');
    s.write_register(RBR_THR_DLL, b'b');
    assert_eq!(s.read_register(LSR), 0x60);
}

#[test]
fn works_behind_the_bus() {
    let (s, irq, out) = uart();
    let dev = Arc::new(Mutex::new(s));
    let mut bus = crate::bus::Bus::new();
    bus.insert(dev.clone(), u64::from(COM1_PORT), SERIAL_PORT_LEN).unwrap();
    assert!(bus.write(u64::from(COM1_PORT) + 4, &[MCR_OUT2]));
    assert!(bus.write(u64::from(COM1_PORT) + 1, &[IER_ERBFI]));
    assert_eq!(dev.lock().enqueue_input(b"q"), 1);
    assert!(irq.level());
    let mut b = [0u8];
    assert!(bus.read(u64::from(COM1_PORT), &mut b));
    assert_eq!(b, *b"q");
    assert!(bus.write(u64::from(COM1_PORT), b"w"));
    assert_eq!(*out.0.lock(), b"w");
}
