//! Tests of the interrupt routing.

use super::*;
use crate::bus::Bus;
use crate::clock::ManualClock;
use std::sync::atomic::AtomicU32;

struct Machine {
    intc: Arc<InterruptController>,
    clock: Arc<ManualClock>,
    pio: Bus,
    mmio: Bus,
}

impl Machine {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(0));
        let intc = InterruptController::new(clock.clone(), Arc::new(Tsc::new(1_000_000_000)));
        Self::around(intc, clock)
    }
    /// The buses around an existing controller.
    fn around(intc: Arc<InterruptController>, clock: Arc<ManualClock>) -> Self {
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        for m in intc.bus_mappings() {
            m.insert_into(&mut pio, &mut mmio).unwrap();
        }
        Self { intc, clock, pio, mmio }
    }
    fn outb(&self, port: u64, v: u8) {
        self.pio.write(port, &[v]);
    }
    fn inb(&self, port: u64) -> u8 {
        let mut b = [0u8];
        self.pio.read(port, &mut b);
        b[0]
    }
    fn lapic_w(&self, reg: u64, v: u32) {
        self.mmio.write(LAPIC_BASE + reg, &v.to_le_bytes());
    }
    fn lapic_r(&self, reg: u64) -> u32 {
        let mut d = [0u8; 4];
        self.mmio.read(LAPIC_BASE + reg, &mut d);
        u32::from_le_bytes(d)
    }
    fn ioapic_w(&self, index: u8, v: u32) {
        self.mmio.write(IOAPIC_BASE, &[index, 0, 0, 0]);
        self.mmio.write(IOAPIC_BASE + 0x10, &v.to_le_bytes());
    }
    fn ioapic_r(&self, index: u8) -> u32 {
        self.mmio.write(IOAPIC_BASE, &[index, 0, 0, 0]);
        let mut d = [0u8; 4];
        self.mmio.read(IOAPIC_BASE + 0x10, &mut d);
        u32::from_le_bytes(d)
    }
    /// Programs the 8259A pair as Linux does, everything unmasked.
    fn init_pic(&self) {
        for (cmd, data, base, cascade) in [(0x20, 0x21, 0x30, 0x04), (0xa0, 0xa1, 0x38, 0x02)] {
            self.outb(cmd, 0x11);
            self.outb(data, base);
            self.outb(data, cascade);
            self.outb(data, 0x01);
            self.outb(data, 0x00);
        }
    }
    /// Masks the 8259A and masks LINT0, as Linux does in symmetric I/O mode.
    fn symmetric_io(&self) {
        self.outb(0x21, 0xff);
        self.outb(0xa1, 0xff);
        self.lapic_w(0x350, 0x0001_0700);
    }
}

#[test]
fn pic_interrupts_reach_the_cpu_through_virtual_wire() {
    let m = Machine::new();
    m.init_pic();
    let line = m.intc.irq_line(4);
    assert!(!m.intc.interrupt_pending());
    line.set_level(true);
    assert!(m.intc.interrupt_pending());
    assert_eq!(m.intc.ack_interrupt(), Some(0x34));
    assert!(!m.intc.interrupt_pending());
    assert_eq!(m.intc.ack_interrupt(), None);
    m.outb(0x20, 0x20);
    line.set_level(false);
    // Masking LINT0 cuts the 8259A off.
    m.lapic_w(0x350, 0x0001_0700);
    line.set_level(true);
    assert!(!m.intc.interrupt_pending());
    m.lapic_w(0x350, 0x0000_0700);
    assert!(m.intc.interrupt_pending());
}

#[test]
fn hardware_disabled_apic_passes_the_pic_through() {
    let m = Machine::new();
    m.init_pic();
    m.lapic_w(0x350, 0x0001_0700);
    assert!(m.intc.msr_write(MSR_IA32_APIC_BASE, 0xfee0_0100));
    m.intc.irq_line(1).pulse();
    assert_eq!(m.intc.ack_interrupt(), Some(0x31));
}

#[test]
fn irq0_goes_to_ioapic_pin_2_and_eoi_is_edge_free() {
    let m = Machine::new();
    m.init_pic();
    m.symmetric_io();
    m.ioapic_w(0x10 + 2 * 2, 0x30);
    let timer = m.intc.irq_line(0);
    timer.pulse();
    assert!(m.intc.interrupt_pending());
    assert_eq!(m.intc.ack_interrupt(), Some(0x30));
    assert_eq!(m.lapic_r(0x100 + 0x10), 1 << 16, "ISR bit of 0x30");
    m.lapic_w(0xb0, 0);
    assert_eq!(m.lapic_r(0x100 + 0x10), 0);
    assert!(!m.intc.interrupt_pending());
}

#[test]
fn level_interrupts_are_shared_and_wait_for_eoi() {
    let m = Machine::new();
    m.symmetric_io();
    m.ioapic_w(0x10 + 2 * 10, 0x0000_a051); // level, active low, vector 0x51
    let a = m.intc.irq_line(10);
    let b = m.intc.irq_line(10);
    a.set_level(true);
    b.set_level(true);
    assert_eq!(m.intc.ack_interrupt(), Some(0x51));
    assert_ne!(m.ioapic_r(0x10 + 2 * 10) & (1 << 14), 0, "remote IRR");
    assert_eq!(m.lapic_r(0x180 + 0x20), 1 << 17, "TMR bit of 0x51");
    a.set_level(false);
    m.lapic_w(0xb0, 0);
    assert_eq!(m.intc.ack_interrupt(), Some(0x51), "b still holds the line");
    b.set_level(false);
    m.lapic_w(0xb0, 0);
    assert_eq!(m.ioapic_r(0x10 + 2 * 10) & (1 << 14), 0);
    assert_eq!(m.intc.ack_interrupt(), None);
}

#[test]
fn pci_gsis_reach_only_the_ioapic() {
    let m = Machine::new();
    m.init_pic();
    m.ioapic_w(0x10 + 2 * 17, 0x0000_8061);
    m.intc.irq_line(17).set_level(true);
    assert_eq!(m.intc.ack_interrupt(), Some(0x61));
    let s = m.intc.save();
    assert_eq!(s.pic.master.irr, 0);
    assert_eq!(s.pic.slave.irr, 0);
}

#[test]
fn local_apic_wins_over_the_pic() {
    let m = Machine::new();
    m.init_pic();
    m.ioapic_w(0x10 + 2 * 5, 0x45);
    let line = m.intc.irq_line(5);
    line.set_level(true);
    assert_eq!(m.intc.ack_interrupt(), Some(0x45), "the APIC's vector first");
    assert_eq!(m.intc.ack_interrupt(), Some(0x35), "then the 8259A's");
}

#[test]
fn extint_through_ioapic_pin_0() {
    let m = Machine::new();
    m.init_pic();
    m.lapic_w(0x350, 0x0001_0700); // LINT0 masked
    m.ioapic_w(0x10, 0x0000_0700); // pin 0 ExtINT
    m.intc.irq_line(0).pulse();
    assert!(m.intc.interrupt_pending());
    assert_eq!(m.intc.ack_interrupt(), Some(0x30));
    assert!(!m.intc.interrupt_pending());
}

#[test]
fn self_ipi_and_nmi() {
    let m = Machine::new();
    m.lapic_w(0x300, 0x0004_0042);
    assert_eq!(m.intc.ack_interrupt(), Some(0x42));
    m.lapic_w(0xb0, 0);
    m.lapic_w(0x300, 0x0004_0400);
    assert!(m.intc.nmi_pending());
    assert!(m.intc.take_nmi());
    assert!(!m.intc.nmi_pending());
    // INIT to another CPU is dropped.
    m.lapic_w(0x310, 0x0100_0000);
    m.lapic_w(0x300, 0x0000_4500);
    assert!(!m.intc.interrupt_pending());
    // Fixed to APIC ID 0 by destination.
    m.lapic_w(0x310, 0);
    m.lapic_w(0x300, 0x0000_4043);
    assert_eq!(m.intc.ack_interrupt(), Some(0x43));
}

#[test]
fn msi_messages_reach_the_local_apic_without_the_ioapic() {
    let m = Machine::new();
    m.symmetric_io();
    let kicks = Arc::new(AtomicU32::new(0));
    let k = kicks.clone();
    m.intc.set_kick(Box::new(move || {
        k.fetch_add(1, Ordering::SeqCst);
    }));
    m.intc.send(MsiMessage { address: 0xfee0_0000, data: 0x0061 });
    assert!(m.intc.interrupt_pending());
    assert_eq!(kicks.load(Ordering::SeqCst), 1);
    assert_eq!(m.intc.ack_interrupt(), Some(0x61));
    m.lapic_w(0xb0, 0);
    // To another APIC ID: nobody takes it.
    m.intc.send(MsiMessage { address: 0xfee0_3000, data: 0x0062 });
    assert!(!m.intc.interrupt_pending());
    // Outside the window: dropped, logged once.
    m.intc.send(MsiMessage { address: 0x1000, data: 0x0063 });
    m.intc.send(MsiMessage { address: 0xfed0_0000, data: 0x0063 });
    assert!(!m.intc.interrupt_pending());
    // NMI by message.
    m.intc.send(MsiMessage { address: 0xfee0_0000, data: 0x0400 });
    assert!(m.intc.take_nmi());
    // A software-disabled local APIC takes no fixed interrupt.
    m.lapic_w(0xf0, 0x0ff);
    m.intc.send(MsiMessage { address: 0xfee0_0000, data: 0x0064 });
    assert_eq!(m.intc.ack_interrupt(), None);
}

#[test]
fn msi_messages_go_to_the_forward_when_one_is_set() {
    let m = Machine::new();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s = seen.clone();
    m.intc.set_msi_forward(Box::new(move |msg| s.lock().push(msg)));
    let msg = MsiMessage { address: 0xfee0_0000, data: 0x0071 };
    m.intc.send(msg);
    assert_eq!(*seen.lock(), [msg]);
    assert!(!m.intc.interrupt_pending(), "the emulated local APIC saw nothing");
}

#[test]
fn kick_runs_when_an_interrupt_becomes_pending() {
    let m = Machine::new();
    m.init_pic();
    let kicks = Arc::new(AtomicU32::new(0));
    let k = kicks.clone();
    m.intc.set_kick(Box::new(move || {
        k.fetch_add(1, Ordering::SeqCst);
    }));
    let line = m.intc.irq_line(3);
    line.set_level(true);
    line.set_level(false);
    m.intc.irq_line(6).pulse();
    assert_eq!(kicks.load(Ordering::SeqCst), 1, "only the rising edge of pending kicks");
    m.intc.ack_interrupt();
    m.outb(0x20, 0x20);
    m.intc.ack_interrupt();
    m.intc.irq_line(7).pulse();
    assert_eq!(kicks.load(Ordering::SeqCst), 2);
}

#[test]
fn apic_timer_is_polled_as_a_timer_source() {
    let m = Machine::new();
    m.lapic_w(0x3e0, 0b1011);
    m.lapic_w(0x320, 0x0002_00ef);
    m.lapic_w(0x380, 1_000_000);
    assert_eq!(m.intc.next_deadline_ns(), Some(1_000_000));
    m.clock.set(1_000_000);
    m.intc.poll(1_000_000);
    assert_eq!(m.intc.ack_interrupt(), Some(0xef));
    assert_eq!(m.lapic_r(0x390), 1_000_000);
    m.clock.set(1_250_000);
    assert_eq!(m.lapic_r(0x390), 750_000);
}

#[test]
fn msrs_and_cr8() {
    let m = Machine::new();
    assert!(InterruptController::handles_msr(0x1b));
    assert!(InterruptController::handles_msr(0x830));
    assert!(!InterruptController::handles_msr(0x10));
    assert_eq!(m.intc.msr_read(0x1b), Some(0xfee0_0900));
    assert_eq!(m.intc.msr_read(0x802), None, "xAPIC mode: #GP");
    assert!(m.intc.msr_write(0x1b, 0xfee0_0d00));
    assert_eq!(m.intc.msr_read(0x802), Some(0));
    assert!(m.intc.msr_write(0x83f, 0x55));
    assert_eq!(m.intc.ack_interrupt(), Some(0x55));
    assert!(m.intc.msr_write(0x80b, 0));
    assert!(!m.intc.msr_write(0x80b, 1));
    assert_eq!(m.intc.msr_read(0x6e0), Some(0));
    m.intc.set_cr8(0x9);
    assert_eq!(m.intc.cr8(), 9);
    assert_eq!(m.intc.msr_read(0x808), Some(0x90));
    assert!(!m.intc.msr_write(0x1b, 0xfee0_0900), "x2APIC to xAPIC");
}

#[test]
fn cascade_and_bad_lines() {
    let m = Machine::new();
    m.init_pic();
    m.intc.irq_line(2).set_level(true);
    m.intc.irq_line(99).pulse();
    assert!(!m.intc.interrupt_pending());
    m.intc.irq_line(12).pulse();
    assert_eq!(m.intc.ack_interrupt(), Some(0x3c));
}

#[test]
fn elcr_and_odd_accesses_through_the_bus() {
    let m = Machine::new();
    m.outb(0x4d1, 0xff);
    assert_eq!(m.inb(0x4d1), 0xde);
    let mut w = [0u8; 2];
    m.pio.read(0x4d0, &mut w);
    assert_eq!(w, [0, 0xde]);
    m.pio.write(0x4d0, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(m.inb(0x4d1), 0xde, "a dword write is refused");
    m.pio.write(0x20, &[1, 2]);
    m.pio.read(0x20, &mut w);
    assert_eq!(w, [0xff, 0xff]);
    assert_eq!(m.inb(0x21), 0);
}

#[test]
fn reset_and_state_round_trip() {
    let m = Machine::new();
    m.init_pic();
    m.ioapic_w(0x10 + 2 * 9, 0x0000_8039);
    let line = m.intc.irq_line(9);
    line.set_level(true);
    let state = m.intc.save();
    assert_eq!(state.lapics.len(), 1);
    m.intc.reset(&Arc::new(Tsc::new(1)));
    assert_eq!(m.ioapic_r(0x10 + 2 * 9), 0x0001_0000);
    assert_eq!(m.intc.save().pic.slave.lines, 1 << 1, "the line is still held");
    m.intc.restore_shared(&state).unwrap();
    assert_eq!(m.intc.save(), state);
    assert!(m.intc.interrupt_pending());
}

/// The lines [`configured`] hands out, in order.
const CONFIGURED_LINES: [u32; 6] = [4, 9, 9, 17, 1, 10];

/// A controller that is nobody else's, with the lines of a machine wired
/// as [`configured`] handed out (and dropped: their numbering stays).
fn owned(clock: Arc<ManualClock>) -> InterruptController {
    let intc = InterruptController::new(clock, Arc::new(Tsc::new(1_000_000_000)));
    for irq in CONFIGURED_LINES {
        drop(intc.irq_line(irq));
    }
    Arc::try_unwrap(intc).map_err(|_| "shared").unwrap()
}

/// The 8259A pair initialised with IRQ10 level-triggered, the I/O APIC
/// routing a level and an edge pin, COM1's IRQ4 pending at the 8259A, a
/// shared level line waiting for its EOI in the local APIC, IRQ10 held,
/// and the APIC timer armed.
fn configured() -> (Machine, Vec<Arc<dyn IrqLine>>) {
    let m = Machine::new();
    m.init_pic();
    m.intc.write_elcr(1, 0x04);
    m.ioapic_w(0x10 + 2 * 9, 0x0000_8039);
    m.ioapic_w(0x10 + 2 * 17, 0x0000_0061);
    let lines: Vec<_> = CONFIGURED_LINES.iter().map(|&irq| m.intc.irq_line(irq)).collect();
    lines[2].set_level(true); // the second source of input 9
    lines[0].set_level(true);
    lines[5].set_level(true);
    m.lapic_w(0x3e0, 0b1011);
    m.lapic_w(0x320, 0x0000_00ef);
    m.lapic_w(0x380, 5_000);
    assert_eq!(m.intc.ack_interrupt(), Some(0x39), "the local APIC's vector first");
    m.clock.set(1_000);
    (m, lines)
}

#[test]
fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
    let (m, _lines) = configured();
    let clock = Arc::new(ManualClock::new(1_000));
    let mut fresh = owned(clock.clone());
    let state = persist::assert_round_trip(&*m.intc, &mut fresh);
    assert_eq!(state.sources[9], 0b10);
    assert_eq!(state.sources[4], 1);
    assert_eq!(state.pic.slave.lines, 0b110, "IRQ9 and IRQ10 held");
    let fresh = Machine::around(Arc::new(fresh), clock);
    assert!(fresh.intc.interrupt_pending());
    assert_eq!(fresh.intc.next_deadline_ns(), m.intc.next_deadline_ns());
    assert_eq!(fresh.ioapic_r(0x10 + 2 * 9), m.ioapic_r(0x10 + 2 * 9), "the remote IRR too");
    assert_eq!(fresh.lapic_r(0x100 + 0x10), 1 << 25, "0x39 in service");
    // Both take the same interrupts in the same order, EOIs and the timer included.
    let mut seen = Vec::new();
    for round in 0..6 {
        for x in [&m, &fresh] {
            if round == 2 {
                x.clock.set(5_000);
                x.intc.poll(5_000);
            }
            if round == 3 {
                x.ioapic_w(0x10 + 2 * 9, 0x0001_8039);
            }
        }
        let v = m.intc.ack_interrupt();
        assert_eq!(fresh.intc.ack_interrupt(), v, "round {round}");
        seen.push(v);
        for x in [&m, &fresh] {
            x.lapic_w(0xb0, 0);
            x.outb(0xa0, 0x20);
            x.outb(0x20, 0x20);
        }
    }
    // 0x39 from the 8259A (IRQ9) then twice from the I/O APIC (the held
    // level line is delivered again at each EOI until its pin is masked),
    // the timer between them, then the 8259A's IRQ10.
    let want = [0x39, 0x39, 0xef, 0x39, 0x3a, 0x3a].map(Some);
    assert_eq!(seen, want, "{seen:x?}");
    assert_eq!(fresh.intc.save(), m.intc.save());
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let (m, _lines) = configured();
    let good = m.intc.save();
    let mut target = owned(Arc::new(ManualClock::new(0)));
    target.restore_shared(&good).unwrap();
    let cases: [Corruption<InterruptControllerState>; 10] = [
        ("vector_base", |s| s.pic.master.vector_base = 0x31),
        ("id", |s| s.ioapic.id = 1),
        ("tpr", |s| s.lapics[0].tpr = 0x100),
        ("lapics", |s| s.lapics.push(s.lapics[0].clone())),
        ("lapics", |s| s.lapics.clear()),
        ("sources", |s| s.sources[5] = 1),
        ("sources", |s| s.sources[9] = 0b100),
        ("pic", |s| s.sources[4] = 0),
        ("ioapic", |s| s.ioapic.lines ^= 1 << 17),
        ("ioapic", |s| s.ioapic.lines ^= 1 << PIC_INTR_IOAPIC_PIN),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut target, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    assert!(target.interrupt_pending(), "a refused restore leaves the pending flag alone");
}
