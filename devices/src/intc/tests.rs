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
        let intc = InterruptController::new(clock.clone(), Arc::new(Tsc::new(1_000_000_000)), &[0]);
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
    assert!(!m.intc.interrupt_pending(0));
    line.set_level(true);
    assert!(m.intc.interrupt_pending(0));
    assert_eq!(m.intc.ack_interrupt(0), Some(0x34));
    assert!(!m.intc.interrupt_pending(0));
    assert_eq!(m.intc.ack_interrupt(0), None);
    m.outb(0x20, 0x20);
    line.set_level(false);
    // Masking LINT0 cuts the 8259A off.
    m.lapic_w(0x350, 0x0001_0700);
    line.set_level(true);
    assert!(!m.intc.interrupt_pending(0));
    m.lapic_w(0x350, 0x0000_0700);
    assert!(m.intc.interrupt_pending(0));
}

#[test]
fn hardware_disabled_apic_passes_the_pic_through() {
    let m = Machine::new();
    m.init_pic();
    m.lapic_w(0x350, 0x0001_0700);
    assert!(m.intc.msr_write(0, MSR_IA32_APIC_BASE, 0xfee0_0100));
    m.intc.irq_line(1).pulse();
    assert_eq!(m.intc.ack_interrupt(0), Some(0x31));
}

#[test]
fn irq0_goes_to_ioapic_pin_2_and_eoi_is_edge_free() {
    let m = Machine::new();
    m.init_pic();
    m.symmetric_io();
    m.ioapic_w(0x10 + 2 * 2, 0x30);
    let timer = m.intc.irq_line(0);
    timer.pulse();
    assert!(m.intc.interrupt_pending(0));
    assert_eq!(m.intc.ack_interrupt(0), Some(0x30));
    assert_eq!(m.lapic_r(0x100 + 0x10), 1 << 16, "ISR bit of 0x30");
    m.lapic_w(0xb0, 0);
    assert_eq!(m.lapic_r(0x100 + 0x10), 0);
    assert!(!m.intc.interrupt_pending(0));
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
    assert_eq!(m.intc.ack_interrupt(0), Some(0x51));
    assert_ne!(m.ioapic_r(0x10 + 2 * 10) & (1 << 14), 0, "remote IRR");
    assert_eq!(m.lapic_r(0x180 + 0x20), 1 << 17, "TMR bit of 0x51");
    a.set_level(false);
    m.lapic_w(0xb0, 0);
    assert_eq!(m.intc.ack_interrupt(0), Some(0x51), "b still holds the line");
    b.set_level(false);
    m.lapic_w(0xb0, 0);
    assert_eq!(m.ioapic_r(0x10 + 2 * 10) & (1 << 14), 0);
    assert_eq!(m.intc.ack_interrupt(0), None);
}

#[test]
fn pci_gsis_reach_only_the_ioapic() {
    let m = Machine::new();
    m.init_pic();
    m.ioapic_w(0x10 + 2 * 17, 0x0000_8061);
    m.intc.irq_line(17).set_level(true);
    assert_eq!(m.intc.ack_interrupt(0), Some(0x61));
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
    assert_eq!(m.intc.ack_interrupt(0), Some(0x45), "the APIC's vector first");
    assert_eq!(m.intc.ack_interrupt(0), Some(0x35), "then the 8259A's");
}

#[test]
fn extint_through_ioapic_pin_0() {
    let m = Machine::new();
    m.init_pic();
    m.lapic_w(0x350, 0x0001_0700); // LINT0 masked
    m.ioapic_w(0x10, 0x0000_0700); // pin 0 ExtINT
    m.intc.irq_line(0).pulse();
    assert!(m.intc.interrupt_pending(0));
    assert_eq!(m.intc.ack_interrupt(0), Some(0x30));
    assert!(!m.intc.interrupt_pending(0));
}

#[test]
fn self_ipi_and_nmi() {
    let m = Machine::new();
    m.lapic_w(0x300, 0x0004_0042);
    assert_eq!(m.intc.ack_interrupt(0), Some(0x42));
    m.lapic_w(0xb0, 0);
    m.lapic_w(0x300, 0x0004_0400);
    assert!(m.intc.nmi_pending(0));
    assert!(m.intc.take_nmi(0));
    assert!(!m.intc.nmi_pending(0));
    // INIT to another CPU is dropped.
    m.lapic_w(0x310, 0x0100_0000);
    m.lapic_w(0x300, 0x0000_4500);
    assert!(!m.intc.interrupt_pending(0));
    // Fixed to APIC ID 0 by destination.
    m.lapic_w(0x310, 0);
    m.lapic_w(0x300, 0x0000_4043);
    assert_eq!(m.intc.ack_interrupt(0), Some(0x43));
}

#[test]
fn msi_messages_reach_the_local_apic_without_the_ioapic() {
    let m = Machine::new();
    m.symmetric_io();
    let kicks = Arc::new(AtomicU32::new(0));
    let k = kicks.clone();
    m.intc.set_kick(
        0,
        Box::new(move || {
            k.fetch_add(1, Ordering::SeqCst);
        }),
    );
    m.intc.send(MsiMessage { address: 0xfee0_0000, data: 0x0061 });
    assert!(m.intc.interrupt_pending(0));
    assert_eq!(kicks.load(Ordering::SeqCst), 1);
    assert_eq!(m.intc.ack_interrupt(0), Some(0x61));
    m.lapic_w(0xb0, 0);
    // To another APIC ID: nobody takes it.
    m.intc.send(MsiMessage { address: 0xfee0_3000, data: 0x0062 });
    assert!(!m.intc.interrupt_pending(0));
    // Outside the window: dropped, logged once.
    m.intc.send(MsiMessage { address: 0x1000, data: 0x0063 });
    m.intc.send(MsiMessage { address: 0xfed0_0000, data: 0x0063 });
    assert!(!m.intc.interrupt_pending(0));
    // NMI by message.
    m.intc.send(MsiMessage { address: 0xfee0_0000, data: 0x0400 });
    assert!(m.intc.take_nmi(0));
    // A software-disabled local APIC takes no fixed interrupt.
    m.lapic_w(0xf0, 0x0ff);
    m.intc.send(MsiMessage { address: 0xfee0_0000, data: 0x0064 });
    assert_eq!(m.intc.ack_interrupt(0), None);
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
    assert!(!m.intc.interrupt_pending(0), "the emulated local APIC saw nothing");
}

#[test]
fn kick_runs_when_an_interrupt_becomes_pending() {
    let m = Machine::new();
    m.init_pic();
    let kicks = Arc::new(AtomicU32::new(0));
    let k = kicks.clone();
    m.intc.set_kick(
        0,
        Box::new(move || {
            k.fetch_add(1, Ordering::SeqCst);
        }),
    );
    let line = m.intc.irq_line(3);
    line.set_level(true);
    line.set_level(false);
    m.intc.irq_line(6).pulse();
    assert_eq!(kicks.load(Ordering::SeqCst), 1, "only the rising edge of pending kicks");
    m.intc.ack_interrupt(0);
    m.outb(0x20, 0x20);
    m.intc.ack_interrupt(0);
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
    assert_eq!(m.intc.ack_interrupt(0), Some(0xef));
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
    assert_eq!(m.intc.msr_read(0, 0x1b), Some(0xfee0_0900));
    assert_eq!(m.intc.msr_read(0, 0x802), None, "xAPIC mode: #GP");
    assert!(m.intc.msr_write(0, 0x1b, 0xfee0_0d00));
    assert_eq!(m.intc.msr_read(0, 0x802), Some(0));
    assert!(m.intc.msr_write(0, 0x83f, 0x55));
    assert_eq!(m.intc.ack_interrupt(0), Some(0x55));
    assert!(m.intc.msr_write(0, 0x80b, 0));
    assert!(!m.intc.msr_write(0, 0x80b, 1));
    assert_eq!(m.intc.msr_read(0, 0x6e0), Some(0));
    m.intc.set_cr8(0, 0x9);
    assert_eq!(m.intc.cr8(0), 9);
    assert_eq!(m.intc.msr_read(0, 0x808), Some(0x90));
    assert!(!m.intc.msr_write(0, 0x1b, 0xfee0_0900), "x2APIC to xAPIC");
}

#[test]
fn cascade_and_bad_lines() {
    let m = Machine::new();
    m.init_pic();
    m.intc.irq_line(2).set_level(true);
    m.intc.irq_line(99).pulse();
    assert!(!m.intc.interrupt_pending(0));
    m.intc.irq_line(12).pulse();
    assert_eq!(m.intc.ack_interrupt(0), Some(0x3c));
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
    assert!(m.intc.interrupt_pending(0));
}

/// The lines [`configured`] hands out, in order.
const CONFIGURED_LINES: [u32; 6] = [4, 9, 9, 17, 1, 10];

/// A controller that is nobody else's, with the lines of a machine wired
/// as [`configured`] handed out (and dropped: their numbering stays).
fn owned(clock: Arc<ManualClock>) -> InterruptController {
    let intc = InterruptController::new(clock, Arc::new(Tsc::new(1_000_000_000)), &[0]);
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
    assert_eq!(m.intc.ack_interrupt(0), Some(0x39), "the local APIC's vector first");
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
    assert!(fresh.intc.interrupt_pending(0));
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
        let v = m.intc.ack_interrupt(0);
        assert_eq!(fresh.intc.ack_interrupt(0), v, "round {round}");
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
    assert!(target.interrupt_pending(0), "a refused restore leaves the pending flag alone");
}

// ---- several CPUs ----

/// APIC IDs of two sockets of three cores.
const SIX_CPUS: [u32; 6] = [0, 1, 2, 4, 5, 6];

impl Machine {
    fn with_cpus(apic_ids: &[u32]) -> Self {
        let clock = Arc::new(ManualClock::new(0));
        let intc = InterruptController::new(clock.clone(), Arc::new(Tsc::new(1_000_000_000)), apic_ids);
        Self::around(intc, clock)
    }
    /// Runs `f` with this thread's accesses going to CPU `cpu`'s local APIC.
    fn on<R>(&self, cpu: usize, f: impl FnOnce(&Self) -> R) -> R {
        set_current_cpu(cpu);
        let r = f(self);
        set_current_cpu(0);
        r
    }
    fn lapic_w_on(&self, cpu: usize, reg: u64, v: u32) {
        self.on(cpu, |m| m.lapic_w(reg, v));
    }
    fn lapic_r_on(&self, cpu: usize, reg: u64) -> u32 {
        self.on(cpu, |m| m.lapic_r(reg))
    }
    /// Sends an IPI from `from` through the xAPIC ICR.
    fn ipi(&self, from: usize, destination: u8, low: u32) {
        self.lapic_w_on(from, 0x310, u32::from(destination) << 24);
        self.lapic_w_on(from, 0x300, low);
    }
    /// Whether CPU `cpu`'s IRR holds `vector`.
    fn irr_has(&self, cpu: usize, vector: u8) -> bool {
        let word = self.lapic_r_on(cpu, 0x200 + 0x10 * u64::from(vector >> 5));
        word & (1 << (vector & 31)) != 0
    }
    /// A kick counter on every CPU.
    fn count_kicks(&self) -> Vec<Arc<AtomicU32>> {
        (0..self.intc.cpus())
            .map(|cpu| {
                let n = Arc::new(AtomicU32::new(0));
                let k = n.clone();
                self.intc.set_kick(
                    cpu,
                    Box::new(move || {
                        k.fetch_add(1, Ordering::SeqCst);
                    }),
                );
                n
            })
            .collect()
    }
    /// Starts the APs as SeaBIOS does (INIT and SIPI to all but self), as
    /// the run loop takes the events, and software-enables their APICs.
    fn boot_aps(&self) {
        self.ipi(0, 0, 0x000c_4500);
        self.ipi(0, 0, 0x000c_4699);
        for cpu in 1..self.intc.cpus() {
            assert_eq!(self.intc.take_startup(cpu), Some(Startup::Init), "CPU {cpu}");
            assert_eq!(self.intc.take_startup(cpu), Some(Startup::Sipi(0x99)), "CPU {cpu}");
            assert_eq!(self.intc.take_startup(cpu), None);
            self.lapic_w_on(cpu, 0xf0, 0x1ff);
        }
    }
    /// The CPUs with an interrupt pending.
    fn pending(&self) -> Vec<usize> {
        (0..self.intc.cpus()).filter(|&c| self.intc.interrupt_pending(c)).collect()
    }
}

#[test]
fn cpus_get_their_apic_ids_and_the_aps_start_at_reset() {
    let m = Machine::with_cpus(&SIX_CPUS);
    assert_eq!(m.intc.cpus(), 6);
    assert_eq!((0..6).map(|c| m.intc.apic_id(c)).collect::<Vec<_>>(), SIX_CPUS);
    assert_eq!(m.intc.apic_id(6), u32::MAX);
    for (cpu, id) in SIX_CPUS.into_iter().enumerate() {
        assert_eq!(m.lapic_r_on(cpu, 0x20), id << 24, "ID register of CPU {cpu}");
    }
    assert_eq!(m.intc.msr_read(0, 0x1b), Some(0xfee0_0900), "the BSP bit");
    assert_eq!(m.intc.msr_read(3, 0x1b), Some(0xfee0_0800));
    assert_eq!(m.lapic_r_on(0, 0xf0), 0x1ff, "the BSP in virtual wire mode");
    assert_eq!(m.lapic_r_on(0, 0x350), 0x700);
    assert_eq!(m.lapic_r_on(4, 0xf0), 0xff, "an AP software-disabled");
    assert_eq!(m.lapic_r_on(4, 0x350), 0x0001_0000, "its LVT masked");
    assert!(!m.intc.waiting_for_sipi(0));
    assert!((1..6).all(|c| m.intc.waiting_for_sipi(c)));
    assert!((0..6).all(|c| !m.intc.startup_pending(c) && m.intc.take_startup(c).is_none()));
    assert!(format!("{:?}", m.intc).contains("apic_ids"));
}

#[test]
fn bad_apic_id_lists_are_mended() {
    let tsc = Arc::new(Tsc::new(1));
    let clock = || -> SharedClock { Arc::new(ManualClock::new(0)) };
    let one = InterruptController::new(clock(), tsc.clone(), &[]);
    assert_eq!((one.cpus(), one.apic_id(0)), (1, 0));
    let odd = InterruptController::new(clock(), tsc.clone(), &[3, 3, 0xff, u32::MAX, 0]);
    assert_eq!((0..5).map(|c| odd.apic_id(c)).collect::<Vec<_>>(), [3, 1, 2, 4, 0]);
    let ids: Vec<u32> = (0..300).collect();
    let many = InterruptController::new(clock(), tsc.clone(), &ids);
    assert_eq!(many.cpus(), MAX_CPUS);
    assert_eq!(many.apic_id(MAX_CPUS - 1), 254);
    let reversed: Vec<u32> = (0..255).rev().chain([7]).collect();
    let full = InterruptController::new(clock(), tsc, &reversed);
    assert_eq!(full.cpus(), 255);
}

#[test]
fn a_fixed_ipi_reaches_another_cpu_and_kicks_it_only() {
    let m = Machine::with_cpus(&SIX_CPUS);
    m.boot_aps();
    let kicks = m.count_kicks();
    m.ipi(0, 4, 0x0000_4041); // physical APIC ID 4: CPU 3
    assert!(m.irr_has(3, 0x41));
    assert_eq!(m.pending(), [3]);
    let counts: Vec<u32> = kicks.iter().map(|k| k.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, [0, 0, 0, 1, 0, 0]);
    assert_eq!(m.intc.ack_interrupt(0), None, "not the sender's");
    assert_eq!(m.intc.ack_interrupt(3), Some(0x41));
    assert_eq!(m.lapic_r_on(3, 0x100 + 0x20), 1 << 1, "in service on CPU 3");
    m.lapic_w_on(3, 0xb0, 0);
    // APIC ID 3 does not exist: nobody takes it.
    m.ipi(1, 3, 0x0000_4042);
    assert!(m.pending().is_empty());
    // An MSI to APIC ID 6 reaches CPU 5.
    m.intc.send(MsiMessage { address: 0xfee0_6000, data: 0x0061 });
    assert_eq!(m.pending(), [5]);
    assert_eq!(kicks[5].load(Ordering::SeqCst), 1);
}

#[test]
fn logical_destinations_flat_and_cluster() {
    let m = Machine::with_cpus(&[0, 1, 2, 3]);
    m.boot_aps();
    for cpu in 0..4 {
        m.lapic_w_on(cpu, 0xd0, 1 << (24 + cpu));
    }
    m.ipi(0, 0b0110, 0x0000_4851); // logical, flat
    assert_eq!(m.pending(), [1, 2]);
    for cpu in [1, 2] {
        assert_eq!(m.intc.ack_interrupt(cpu), Some(0x51));
        m.lapic_w_on(cpu, 0xb0, 0);
    }
    // The cluster model: clusters 1 and 2 of two CPUs each.
    for (cpu, ldr) in [0x11u32, 0x12, 0x21, 0x22].into_iter().enumerate() {
        m.lapic_w_on(cpu, 0xe0, 0x0fff_ffff);
        m.lapic_w_on(cpu, 0xd0, ldr << 24);
    }
    m.ipi(3, 0x13, 0x0000_4852);
    assert_eq!(m.pending(), [0, 1]);
    for cpu in [0, 1] {
        assert_eq!(m.intc.ack_interrupt(cpu), Some(0x52));
        m.lapic_w_on(cpu, 0xb0, 0);
    }
    m.ipi(0, 0x22, 0x0000_4853);
    assert_eq!(m.pending(), [3]);
    assert_eq!(m.intc.ack_interrupt(3), Some(0x53));
    m.lapic_w_on(3, 0xb0, 0);
    m.ipi(0, 0xff, 0x0000_4854); // the logical broadcast
    assert_eq!(m.pending(), [0, 1, 2, 3]);
}

#[test]
fn x2apic_physical_and_logical_cluster_destinations() {
    let ids = [0, 1, 0x10, 0x11];
    let m = Machine::with_cpus(&ids);
    m.boot_aps();
    for (cpu, id) in ids.into_iter().enumerate() {
        let bsp = if cpu == 0 { 0x100 } else { 0 };
        assert!(m.intc.msr_write(cpu, 0x1b, 0xfee0_0c00 | bsp));
        assert_eq!(m.intc.msr_read(cpu, 0x802), Some(u64::from(id)), "x2APIC ID");
    }
    assert_eq!(m.intc.msr_read(2, 0x80d), Some(0x0001_0001), "LDR: cluster 1, bit 0");
    assert!(m.intc.msr_write(0, 0x830, (0x11 << 32) | 0x0060));
    assert_eq!(m.pending(), [3]);
    assert_eq!(m.intc.ack_interrupt(3), Some(0x60));
    assert!(m.intc.msr_write(3, 0x80b, 0));
    // Logical: cluster 1, members 0 and 1 (x2APIC IDs 0x10 and 0x11).
    assert!(m.intc.msr_write(1, 0x830, (0x0001_0003 << 32) | 0x0861));
    assert_eq!(m.pending(), [2, 3]);
    for cpu in [2, 3] {
        assert_eq!(m.intc.ack_interrupt(cpu), Some(0x61));
        assert!(m.intc.msr_write(cpu, 0x80b, 0));
    }
    // Cluster 0, member 1.
    assert!(m.intc.msr_write(3, 0x830, (0x0000_0002 << 32) | 0x0862));
    assert_eq!(m.pending(), [1]);
    assert_eq!(m.intc.ack_interrupt(1), Some(0x62));
    assert!(m.intc.msr_write(1, 0x80b, 0));
    // The x2APIC broadcast; 0xff is an ordinary ID in x2APIC mode.
    assert!(m.intc.msr_write(0, 0x830, (0xff << 32) | 0x0063));
    assert!(m.pending().is_empty());
    assert!(m.intc.msr_write(0, 0x830, (0xffff_ffff << 32) | 0x0064));
    assert_eq!(m.pending(), [0, 1, 2, 3]);
    // The SELF IPI register.
    assert!(m.intc.msr_write(2, 0x83f, 0x65));
    assert!(m.irr_has_x2(2, 0x65));
    assert!(!m.irr_has_x2(1, 0x65));
}

impl Machine {
    fn irr_has_x2(&self, cpu: usize, vector: u8) -> bool {
        let word = self.intc.msr_read(cpu, 0x820 + u32::from(vector >> 5)).unwrap();
        word & (1 << (vector & 31)) != 0
    }
}

#[test]
fn shorthands_self_all_and_all_but_self() {
    let m = Machine::with_cpus(&[0, 1, 2, 3]);
    m.boot_aps();
    let kicks = m.count_kicks();
    m.ipi(2, 0, 0x0004_0070);
    assert_eq!(m.pending(), [2]);
    assert_eq!(kicks[2].load(Ordering::SeqCst), 1);
    assert_eq!(m.intc.ack_interrupt(2), Some(0x70));
    m.lapic_w_on(2, 0xb0, 0);
    m.ipi(1, 0, 0x0008_0071);
    assert_eq!(m.pending(), [0, 1, 2, 3]);
    for cpu in 0..4 {
        assert_eq!(m.intc.ack_interrupt(cpu), Some(0x71));
        m.lapic_w_on(cpu, 0xb0, 0);
    }
    m.ipi(1, 1, 0x000c_0072);
    assert_eq!(m.pending(), [0, 2, 3]);
    // The destination field is ignored with a shorthand.
    for cpu in [0, 2, 3] {
        assert_eq!(m.intc.ack_interrupt(cpu), Some(0x72));
        m.lapic_w_on(cpu, 0xb0, 0);
    }
    // NMI to all but self.
    m.ipi(0, 0, 0x000c_0400);
    assert_eq!((0..4).map(|c| m.intc.nmi_pending(c)).collect::<Vec<_>>(), [false, true, true, true]);
    assert!(m.intc.take_nmi(3));
    assert!(!m.intc.nmi_pending(3));
}

#[test]
fn lowest_priority_picks_the_lowest_priority_cpu() {
    let m = Machine::with_cpus(&[0, 1, 2, 3]);
    m.boot_aps();
    for (cpu, tpr) in [0x20, 0x10, 0x10, 0x30].into_iter().enumerate() {
        m.lapic_w_on(cpu, 0x80, tpr);
    }
    m.ipi(3, 0xff, 0x0000_0155); // to everyone, physical
    assert!(m.irr_has(1, 0x55), "the lowest TPR, the lowest index among equals");
    assert!((0..4).filter(|&c| c != 1).all(|c| !m.irr_has(c, 0x55)));
    m.intc.set_cr8(1, 4);
    m.ipi(3, 0xff, 0x0000_0156);
    assert!(m.irr_has(2, 0x56));
    // Through an MSI (destination 0xff) and an I/O APIC pin the same way.
    m.intc.set_cr8(2, 5);
    m.intc.send(MsiMessage { address: 0xfeef_f000, data: 0x0157 });
    assert!(m.irr_has(0, 0x57));
    m.symmetric_io();
    m.ioapic_w(0x10 + 2 * 5, 0x0000_0958); // lowest priority, logical
    m.ioapic_w(0x11 + 2 * 5, 0xff00_0000);
    for cpu in 0..4 {
        m.lapic_w_on(cpu, 0xd0, 1 << (24 + cpu));
    }
    m.intc.set_cr8(0, 6);
    m.intc.irq_line(5).pulse();
    assert!(m.irr_has(3, 0x58), "TPR 0x30 is now the lowest");
    // A software-disabled APIC takes no part.
    m.lapic_w_on(3, 0xf0, 0xff);
    m.ipi(1, 0xff, 0x0000_0159);
    assert!(m.irr_has(1, 0x59), "TPR 0x40 below 0x50 and 0x60");
}

#[test]
fn an_nmi_ipi_to_self_is_pending_at_once() {
    let m = Machine::with_cpus(&[0, 1, 2, 3]);
    m.boot_aps();
    let kicks = m.count_kicks();
    m.on(2, |m| {
        m.lapic_w(0x300, 0x0004_0400);
        assert!(m.intc.nmi_pending(2), "right after the ICR write");
    });
    assert!(!m.intc.nmi_pending(0));
    assert_eq!(kicks[2].load(Ordering::SeqCst), 1);
    assert!(m.intc.take_nmi(2));
    assert!(m.intc.msr_write(3, 0x1b, 0xfee0_0c00));
    assert!(m.intc.msr_write(3, 0x830, 0x0004_0400));
    assert!(m.intc.nmi_pending(3), "right after the WRMSR");
    assert!(!m.intc.nmi_pending(2));
    assert!(m.intc.take_nmi(3));
    assert!(!m.intc.take_nmi(3));
}

#[test]
fn linux_init_sipi_sipi_starts_one_ap() {
    let m = Machine::with_cpus(&SIX_CPUS);
    let kicks = m.count_kicks();
    // INIT level assert, INIT level de-assert, SIPI, SIPI, to APIC ID 5.
    m.ipi(0, 5, 0x0000_c500);
    assert_eq!(kicks[4].load(Ordering::SeqCst), 1, "the INIT kicks CPU 4");
    assert!(m.intc.startup_pending(4));
    m.ipi(0, 5, 0x0000_8500);
    m.ipi(0, 5, 0x0000_0699);
    m.ipi(0, 5, 0x0000_0699);
    assert!(!m.intc.waiting_for_sipi(4));
    assert_eq!(m.intc.take_startup(4), Some(Startup::Init));
    assert!(m.intc.startup_pending(4));
    assert_eq!(m.intc.take_startup(4), Some(Startup::Sipi(0x99)));
    assert_eq!(m.intc.take_startup(4), None, "the second SIPI is ignored");
    assert!(!m.intc.startup_pending(4));
    assert!((0..6).filter(|&c| c != 4).all(|c| m.intc.take_startup(c).is_none()));
    assert!(m.intc.waiting_for_sipi(1), "the others still wait");
    // The same with the run loop taking each event as it comes.
    m.ipi(0, 1, 0x0000_c500);
    assert_eq!(m.intc.take_startup(1), Some(Startup::Init));
    assert!(m.intc.waiting_for_sipi(1));
    m.ipi(0, 1, 0x0000_8500);
    assert_eq!(m.intc.take_startup(1), None, "the de-assert does nothing");
    m.ipi(0, 1, 0x0000_0610);
    assert_eq!(m.intc.take_startup(1), Some(Startup::Sipi(0x10)));
    m.ipi(0, 1, 0x0000_0610);
    assert_eq!(m.intc.take_startup(1), None);
    assert!(!m.intc.waiting_for_sipi(1));
    let c = m.intc.ipi_counts();
    assert_eq!((c.init, c.sipi), (2, 4), "de-asserts are not counted");
}

#[test]
fn init_resets_the_ap_and_spares_the_bsp() {
    let m = Machine::with_cpus(&[0, 1, 2]);
    m.boot_aps();
    m.lapic_w_on(1, 0x20, 0x0700_0000); // software moves the xAPIC ID
    m.lapic_w_on(1, 0x80, 0x20);
    m.ipi(1, 0, 0x0004_0400); // an NMI waits on CPU 1
    m.ipi(0, 7, 0x0000_4500); // INIT to APIC ID 7 (edge, as SeaBIOS does)
    assert!(m.intc.waiting_for_sipi(1));
    assert!(!m.intc.nmi_pending(1), "INIT clears it");
    assert_eq!(m.lapic_r_on(1, 0x20), 0x0700_0000, "the ID register is kept");
    assert_eq!(m.lapic_r_on(1, 0x80), 0, "TPR reset");
    assert_eq!(m.lapic_r_on(1, 0xf0), 0xff, "software-disabled");
    assert_eq!(m.intc.take_startup(1), Some(Startup::Init));
    // A waiting CPU takes no interrupts and reports none.
    m.ipi(0, 7, 0x0000_0400);
    assert!(!m.intc.nmi_pending(1));
    assert!(!m.intc.take_nmi(1));
    assert_eq!(m.intc.ack_interrupt(1), None);
    // An INIT to the BSP is dropped (logged once); so is a SIPI to a running CPU.
    m.ipi(0, 0, 0x0004_4500); // to self
    m.ipi(2, 0, 0x0000_4500);
    m.ipi(2, 0, 0x0000_4608);
    m.ipi(1, 2, 0x0000_4608);
    assert!(!m.intc.waiting_for_sipi(0));
    assert_eq!(m.intc.take_startup(0), None);
    assert_eq!(m.lapic_r_on(0, 0xf0), 0x1ff, "the BSP's APIC is untouched");
    assert_eq!(m.intc.take_startup(2), None);
    // SMIs are counted and dropped.
    m.ipi(0, 1, 0x0000_4200);
    assert_eq!(m.intc.ipi_counts().smi, 1);
    // A globally disabled APIC ignores INIT.
    assert!(m.intc.msr_write(2, 0x1b, 0xfee0_0000));
    m.ipi(0, 2, 0x0000_4500);
    assert!(!m.intc.waiting_for_sipi(2));
}

#[test]
fn seabios_broadcast_starts_every_ap() {
    let m = Machine::with_cpus(&SIX_CPUS);
    let kicks = m.count_kicks();
    m.ipi(0, 0, 0x000c_4500);
    m.ipi(0, 0, 0x000c_4699);
    assert_eq!(kicks[0].load(Ordering::SeqCst), 0);
    for (cpu, kicked) in kicks.iter().enumerate().skip(1) {
        assert_eq!(kicked.load(Ordering::SeqCst), 1, "CPU {cpu}");
        assert!(!m.intc.waiting_for_sipi(cpu));
        assert_eq!(m.intc.take_startup(cpu), Some(Startup::Init));
        assert_eq!(m.intc.take_startup(cpu), Some(Startup::Sipi(0x99)));
    }
    assert_eq!(m.intc.take_startup(0), None);
}

#[test]
fn reset_sends_the_aps_back_to_wait_for_sipi() {
    let m = Machine::with_cpus(&[0, 1, 2, 3]);
    m.boot_aps();
    m.ipi(0, 0, 0x000c_4500); // INIT queued, not taken
    m.ipi(0, 0, 0x000c_4608);
    m.intc.reset(&Arc::new(Tsc::new(1)));
    assert!(!m.intc.waiting_for_sipi(0));
    for cpu in 1..4 {
        assert!(m.intc.waiting_for_sipi(cpu));
        assert!(!m.intc.startup_pending(cpu));
        assert_eq!(m.intc.take_startup(cpu), None);
        assert_eq!(m.lapic_r_on(cpu, 0xf0), 0xff);
    }
    assert_eq!(m.lapic_r_on(0, 0xf0), 0x1ff);
    assert_eq!(m.intc.ipi_counts().init, 2, "the counts survive a reset");
    m.boot_aps();
}

#[test]
fn ipi_counts_by_delivery_mode() {
    let m = Machine::with_cpus(&[0, 1]);
    assert_eq!(m.intc.ipi_counts(), IpiCounts::default());
    m.boot_aps();
    m.ipi(0, 1, 0x0000_4040);
    m.ipi(0, 1, 0x0000_4041);
    m.ipi(1, 0, 0x0000_4142);
    m.ipi(1, 0, 0x0000_4400);
    m.ipi(1, 0, 0x0000_4200);
    m.ipi(1, 0, 0x0000_4005); // an illegal vector is not sent
    m.ipi(1, 0, 0x0000_4300); // a reserved mode is dropped
    let c = m.intc.ipi_counts();
    assert_eq!(c, IpiCounts { fixed: 2, lowest_priority: 1, nmi: 1, init: 1, sipi: 1, smi: 1 });
    assert_eq!(c.to_string(), "IPIs: 2 fixed, 1 lowest-priority, 1 NMI, 1 INIT, 1 SIPI, 1 SMI");
}

#[test]
fn every_cpu_apic_timer_fires_and_kicks_its_cpu() {
    let m = Machine::with_cpus(&[0, 1, 2]);
    m.boot_aps();
    let kicks = m.count_kicks();
    m.lapic_w_on(2, 0x3e0, 0b1011);
    m.lapic_w_on(2, 0x320, 0x0000_00e1);
    m.lapic_w_on(2, 0x380, 2_000);
    m.lapic_w_on(1, 0x3e0, 0b1011);
    m.lapic_w_on(1, 0x320, 0x0002_00e2); // periodic
    m.lapic_w_on(1, 0x380, 500_000);
    assert!(m.intc.msr_write(0, 0x1b, 0xfee0_0d00));
    assert!(m.intc.msr_write(0, 0x832, 0x0004_00e3)); // TSC-deadline
    assert!(m.intc.msr_write(0, 0x6e0, 1_000));
    assert_eq!(m.intc.next_deadline_ns(), Some(1_000));
    m.clock.set(1_000);
    m.intc.poll(1_000);
    assert_eq!(m.pending(), [0]);
    assert_eq!(m.intc.next_deadline_ns(), Some(2_000));
    m.clock.set(2_000);
    m.intc.poll(2_000);
    assert_eq!(m.pending(), [0, 2]);
    m.clock.set(500_000);
    m.intc.poll(500_000);
    assert_eq!(m.pending(), [0, 1, 2]);
    assert_eq!(kicks.iter().map(|k| k.load(Ordering::SeqCst)).collect::<Vec<_>>(), [1, 1, 1]);
    assert_eq!(m.intc.ack_interrupt(0), Some(0xe3));
    assert_eq!(m.intc.ack_interrupt(1), Some(0xe2));
    assert_eq!(m.intc.ack_interrupt(2), Some(0xe1));
    assert_eq!(m.intc.next_deadline_ns(), Some(1_000_000), "the periodic one");
}

#[test]
fn an_out_of_range_cpu_index_never_panics() {
    let m = Machine::with_cpus(&[0, 1]);
    for cpu in [2, 255, usize::MAX] {
        assert!(!m.intc.interrupt_pending(cpu));
        assert_eq!(m.intc.ack_interrupt(cpu), None);
        assert!(!m.intc.nmi_pending(cpu));
        assert!(!m.intc.take_nmi(cpu));
        assert_eq!(m.intc.msr_read(cpu, 0x1b), None);
        assert!(!m.intc.msr_write(cpu, 0x1b, 0xfee0_0800));
        assert_eq!(m.intc.cr8(cpu), 0);
        m.intc.set_cr8(cpu, 3);
        m.intc.set_kick(cpu, Box::new(|| {}));
        assert_eq!(m.intc.take_startup(cpu), None);
        assert!(!m.intc.startup_pending(cpu));
        assert!(!m.intc.waiting_for_sipi(cpu));
        // The local APIC page from a thread whose CPU does not exist.
        m.on(cpu, |m| {
            assert_eq!(m.lapic_r(0x20), u32::MAX);
            m.lapic_w(0x300, 0x0008_0400);
        });
    }
    assert!(!m.intc.nmi_pending(0), "the write went nowhere");
    assert_eq!(current_cpu(), 0);
}

#[test]
fn garbage_icrs_and_destinations_never_panic() {
    let m = Machine::with_cpus(&SIX_CPUS);
    m.boot_aps();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..20_000u64 {
        let r = next();
        let cpu = (r % 8) as usize; // two past the last CPU
        let v = next();
        match (r >> 8) % 6 {
            0 => m.on(cpu, |m| m.lapic_w(0x310, v as u32)),
            1 => m.on(cpu, |m| m.lapic_w(0x300, v as u32)),
            2 => {
                m.intc.msr_write(cpu, 0x830, v);
            }
            3 => {
                m.intc.msr_write(cpu, 0x1b, 0xfee0_0000 | (v & 0xd00));
            }
            4 => m.on(cpu, |m| m.lapic_w(v & 0xff0, (v >> 32) as u32)),
            _ => m.intc.send(MsiMessage { address: 0xfee0_0000 | (v & 0xf_fff0), data: (v >> 32) as u32 }),
        }
        m.intc.ack_interrupt(cpu);
        m.intc.take_nmi(cpu);
        while m.intc.take_startup(cpu).is_some() {}
        if round % 256 == 0 {
            m.clock.set(round * 1_000);
            m.intc.poll(round * 1_000);
            if round % 4096 == 0 {
                m.intc.reset(&Arc::new(Tsc::new(1)));
            }
        }
    }
    let state = m.intc.save();
    m.intc.restore_shared(&state).unwrap();
}

/// A 4-CPU controller nobody else holds.
fn owned4() -> InterruptController {
    let intc =
        InterruptController::new(Arc::new(ManualClock::new(0)), Arc::new(Tsc::new(1_000_000_000)), &[0, 1, 2, 3]);
    Arc::try_unwrap(intc).map_err(|_| "shared").unwrap()
}

/// Four CPUs: CPU 1 running with an interrupt pending and its timer armed,
/// CPU 2 started with its SIPI not yet taken, CPU 3 sent back to wait with
/// its INIT not yet taken.
fn four_cpus() -> Machine {
    let m = Machine::with_cpus(&[0, 1, 2, 3]);
    m.boot_aps();
    m.ipi(0, 1, 0x0000_4045);
    m.lapic_w_on(1, 0x320, 0x0000_00e4);
    m.lapic_w_on(1, 0x380, 7_000);
    m.ipi(0, 2, 0x0000_4500);
    assert_eq!(m.intc.take_startup(2), Some(Startup::Init));
    m.ipi(0, 2, 0x0000_4620);
    m.ipi(0, 3, 0x0000_4500);
    m.intc.set_cr8(3, 2);
    m
}

#[test]
fn the_state_of_four_cpus_round_trips() {
    let m = four_cpus();
    let mut fresh = owned4();
    let state = persist::assert_round_trip(&*m.intc, &mut fresh);
    assert_eq!(state.lapics.len(), 4);
    let want = [
        CpuStartupState::default(),
        CpuStartupState::default(),
        CpuStartupState { waiting_for_sipi: false, init_pending: false, sipi_pending: Some(0x20) },
        CpuStartupState { waiting_for_sipi: true, init_pending: true, sipi_pending: None },
    ];
    assert_eq!(state.cpus, want);
    assert_eq!(fresh.interrupt_pending(1), m.intc.interrupt_pending(1));
    assert!(fresh.interrupt_pending(1));
    assert!(fresh.startup_pending(2) && fresh.startup_pending(3));
    assert!(fresh.waiting_for_sipi(3));
    assert_eq!(fresh.next_deadline_ns(), Some(14_000), "7000 counts divided by 2");
    assert_eq!(fresh.take_startup(2), Some(Startup::Sipi(0x20)));
    assert_eq!(fresh.take_startup(3), Some(Startup::Init));
    assert_eq!(fresh.ack_interrupt(1), Some(0x45));
    // A one-CPU machine refuses the state.
    let mut one = owned(Arc::new(ManualClock::new(0)));
    let before = one.save();
    assert_eq!(persist::assert_refused(&mut one, &state).field, "lapics");
    assert_eq!(one.save(), before);
}

#[test]
fn corrupt_start_up_states_are_refused() {
    let m = four_cpus();
    let good = m.intc.save();
    let mut target = owned4();
    target.restore_shared(&good).unwrap();
    let cases: [Corruption<InterruptControllerState>; 7] = [
        ("cpus", |s| s.cpus.truncate(3)),
        ("cpus", |s| s.cpus.push(CpuStartupState::default())),
        ("cpus", |s| s.cpus[0].waiting_for_sipi = true),
        ("cpus", |s| s.cpus[0].sipi_pending = Some(1)),
        ("cpus", |s| s.cpus[3].sipi_pending = Some(1)),
        ("cpus", |s| s.cpus[1].init_pending = true),
        ("lapics", |s| s.lapics[2].apic_base |= 0x100),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut target, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    let mut no_bsp = good.clone();
    no_bsp.lapics[0].apic_base &= !0x100;
    assert_eq!(persist::assert_refused(&mut target, &no_bsp).field, "lapics");
    assert_eq!(target.save(), good, "a refused restore changes nothing");
    assert!(target.interrupt_pending(1));
}

#[test]
fn forwarded_lines_keep_their_sources_and_forward_the_input_level() {
    let m = Machine::new();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s = seen.clone();
    m.intc.set_forward(Box::new(move |irq, level| s.lock().push((irq, level))));
    let (a, b) = (m.intc.irq_line(11), m.intc.irq_line(11));
    a.set_level(true);
    b.set_level(true);
    a.set_level(false);
    assert_eq!(*seen.lock(), [(11, true)], "the input stays high while a source holds it");
    b.set_level(false);
    assert_eq!(*seen.lock(), [(11, true), (11, false)]);
    a.set_level(true);
    // Handed back: the forwarded controllers' state, with the lines the
    // sources drive.
    m.intc.clear_forward();
    let state = m.intc.save();
    assert_eq!(state.sources[11], 1);
    let mut ioapic = state.ioapic.clone();
    ioapic.lines = 0;
    m.intc.set_chip_state(state.pic, ioapic).expect("a state the controller takes");
    let after = m.intc.save();
    assert_eq!(after.ioapic.lines & (1 << 11), 1 << 11, "pin 11 follows its source");
    assert_eq!(after.pic.slave.lines & (1 << 3), 1 << 3, "IRQ11 on the slave too");
    // Not forwarded any more: the emulated controllers see the line.
    let len = seen.lock().len();
    a.set_level(false);
    assert_eq!(seen.lock().len(), len);
    assert_eq!(m.intc.save().ioapic.lines & (1 << 11), 0);
}

#[test]
fn a_cpu_state_that_fails_the_checks_changes_nothing() {
    let m = Machine::new();
    let (lapic, startup) = m.intc.cpu_state(0).expect("CPU 0");
    let mut bad = lapic.clone();
    bad.irr[0] = 1; // vector 0 is illegal
    assert!(m.intc.set_cpu_state(0, bad, startup).is_err());
    assert_eq!(m.intc.cpu_state(0), Some((lapic.clone(), startup)));
    assert!(m.intc.set_cpu_state(5, lapic, startup).is_err(), "no such CPU");
}
