//! Tests of the chipset assembled.

use super::*;
use crate::clock::{Clock, ManualClock, TimerSource, NANOS_PER_SEC};
use crate::pci::config::PciConfigSpace;
use crate::pci::PciDevice;
use crate::power::VmEvent;

struct Pc {
    chipset: PcChipset,
    clock: Arc<ManualClock>,
    events: Arc<VmEvents>,
    pio: Bus,
    mmio: Bus,
}

impl Pc {
    fn new() -> Self {
        Self::with_apic_ids(&[0])
    }
    fn with_apic_ids(apic_ids: &[u32]) -> Self {
        let clock = Arc::new(ManualClock::new(0));
        let events = Arc::new(VmEvents::new());
        let chipset = PcChipset::new(
            clock.clone(),
            events.clone(),
            Arc::new(Tsc::new(1_000_000_000)),
            RamSize::split(1 << 30, 0xc000_0000),
            apic_ids,
        );
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        chipset.install(&mut pio, &mut mmio).unwrap();
        chipset.program_pm_block();
        Self { chipset, clock, events, pio, mmio }
    }
    /// A port read as the machine's port I/O makes it: the ACPI PM block
    /// where PMBA puts it, then the bus.
    fn io_read(&self, port: u64, data: &mut [u8]) -> bool {
        self.chipset.pm_ports().read(port, data) || self.pio.read(port, data)
    }
    fn io_write(&self, port: u64, data: &[u8]) -> bool {
        self.chipset.pm_ports().write(port, data) || self.pio.write(port, data)
    }
    fn outb(&self, port: u64, v: u8) {
        assert!(self.pio.write(port, &[v]), "port {port:#x} is claimed");
    }
    fn inb(&self, port: u64) -> u8 {
        let mut b = [0u8];
        assert!(self.pio.read(port, &mut b), "port {port:#x} is claimed");
        b[0]
    }
    fn ioapic_route(&self, pin: u8, low: u32) {
        self.mmio.write(0xfec0_0000, &[0x10 + 2 * pin, 0, 0, 0]);
        self.mmio.write(0xfec0_0010, &low.to_le_bytes());
    }
    fn eoi(&self) {
        self.mmio.write(0xfee0_00b0, &0u32.to_le_bytes());
    }
    /// The run loop: tick what is due and return the next deadline.
    fn run_until(&self, t: u64) -> Option<u64> {
        self.clock.set(t);
        self.chipset.timers.poll(t)
    }
    /// Symmetric I/O mode as Linux sets it up.
    fn apic_mode(&self) {
        self.outb(0x21, 0xff);
        self.outb(0xa1, 0xff);
        self.mmio.write(0xfee0_0350, &0x0001_0700u32.to_le_bytes());
    }
}

#[test]
fn every_device_answers_at_its_ports() {
    let pc = Pc::new();
    for port in [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x61, 0x60, 0x64, 0x71, 0x80, 0x92] {
        pc.inb(port);
    }
    let mut d = [0u8; 4];
    assert!(pc.io_read(0x608, &mut d));
    assert!(pc.pio.read(0xcf8, &mut d));
    assert!(pc.mmio.read(0xfec0_0000, &mut d));
    assert!(pc.mmio.read(0xfee0_0030, &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x0005_0014);
    assert_eq!(pc.inb(0x4d1), 0x0e, "IRQ 9, 10 and 11 are level-triggered");
    assert!(format!("{:?}", pc.chipset).contains("BusMapping"));
}

#[test]
fn the_cpus_reach_the_interrupt_controller_and_the_cmos() {
    let cmos = |pc: &Pc| {
        pc.outb(0x70, 0x5f);
        pc.inb(0x71)
    };
    assert_eq!(cmos(&Pc::new()), 0, "one CPU");
    let pc = Pc::with_apic_ids(&[0, 1, 2, 4, 5, 6]);
    assert_eq!(cmos(&pc), 5, "the count minus one");
    assert_eq!(pc.chipset.intc.cpus(), 6);
    assert_eq!(pc.chipset.intc.apic_id(3), 4);
    assert_eq!(pc.chipset.save().intc.lapics.len(), 6);
    pc.chipset.reset();
    assert_eq!(cmos(&pc), 5, "battery-backed");
}

#[test]
fn pit_timer_interrupt_through_the_ioapic() {
    let pc = Pc::new();
    pc.apic_mode();
    pc.ioapic_route(2, 0x30);
    pc.outb(0x43, 0x34);
    pc.outb(0x40, 0x9c);
    pc.outb(0x40, 0x2e); // 100 Hz
    let next = pc.run_until(0).unwrap();
    assert!((10_000_000..10_001_000).contains(&next), "{next}");
    assert!(!pc.chipset.intc.interrupt_pending(0));
    let next2 = pc.run_until(next).unwrap();
    assert!(pc.chipset.intc.interrupt_pending(0));
    assert_eq!(pc.chipset.intc.ack_interrupt(0), Some(0x30));
    pc.eoi();
    assert!(next2 > next);
    // An idle guest: nothing is due before the next period.
    pc.run_until(next2 - 1);
    assert!(!pc.chipset.intc.interrupt_pending(0));
}

#[test]
fn pit_timer_interrupt_through_the_pic_in_virtual_wire_mode() {
    let pc = Pc::new();
    for (cmd, data, base, cascade) in [(0x20, 0x21, 0x30, 0x04), (0xa0, 0xa1, 0x38, 0x02)] {
        pc.outb(cmd, 0x11);
        pc.outb(data, base);
        pc.outb(data, cascade);
        pc.outb(data, 0x01);
        pc.outb(data, 0x00);
    }
    pc.outb(0x43, 0x34);
    pc.outb(0x40, 0x9c);
    pc.outb(0x40, 0x2e);
    let next = pc.run_until(0).unwrap();
    pc.run_until(next);
    assert_eq!(pc.chipset.intc.ack_interrupt(0), Some(0x30));
}

#[test]
fn rtc_periodic_interrupt_on_irq8() {
    let pc = Pc::new();
    pc.apic_mode();
    pc.ioapic_route(8, 0x38);
    pc.outb(0x70, 0x0b);
    pc.outb(0x71, 0x42); // PIE, 24h
    let next = pc.run_until(0).unwrap();
    assert!(next <= 976_563, "1024 Hz: {next}");
    pc.run_until(next);
    assert_eq!(pc.chipset.intc.ack_interrupt(0), Some(0x38));
    pc.eoi();
    pc.outb(0x70, 0x0c);
    assert_eq!(pc.inb(0x71) & 0xc0, 0xc0);
}

/// With the HPET's legacy replacement route on, IRQ0 and IRQ8 come from
/// HPET timers 0 and 1 and the 8254's and the RTC's are not delivered.
#[test]
fn hpet_legacy_replacement_mutes_the_pit_and_the_rtc() {
    let pc = Pc::new();
    pc.apic_mode();
    pc.ioapic_route(2, 0x30);
    pc.ioapic_route(8, 0x38);
    let hpet_w = |offset: u64, v: u64| assert!(pc.mmio.write(0xfed0_0000 + offset, &v.to_le_bytes()));
    let mut d = [0u8; 8];
    assert!(pc.mmio.read(0xfed0_0000, &mut d), "the HPET answers at 0xfed00000");
    assert_eq!(u64::from_le_bytes(d) & 0xffff_ffff, 0x8086_a201);
    // The PIT at 100 Hz and the RTC's periodic interrupt.
    pc.outb(0x43, 0x34);
    pc.outb(0x40, 0x9c);
    pc.outb(0x40, 0x2e);
    pc.outb(0x70, 0x0b);
    pc.outb(0x71, 0x42);
    // LEG_RT_CNF with the counter halted: nothing may reach IRQ0 or IRQ8.
    hpet_w(0x10, 0b10);
    for ms in 1..=50 {
        pc.run_until(ms * 1_000_000);
    }
    assert!(!pc.chipset.intc.interrupt_pending(0), "the 8254 and the RTC are muted");
    // HPET timer 0 (one-shot at 1 ms) then drives IRQ0, timer 1 IRQ8.
    hpet_w(0x100, 1 << 2);
    hpet_w(0x108, 100_000);
    hpet_w(0x120, 1 << 2);
    hpet_w(0x128, 200_000);
    hpet_w(0x10, 0b11);
    pc.run_until(51_000_000);
    assert_eq!(pc.chipset.intc.ack_interrupt(0), Some(0x30), "HPET timer 0 on IRQ0");
    pc.eoi();
    pc.run_until(52_000_000);
    assert_eq!(pc.chipset.intc.ack_interrupt(0), Some(0x38), "HPET timer 1 on IRQ8");
    pc.eoi();
    assert!(!pc.chipset.intc.interrupt_pending(0));
    // Legacy replacement off: the 8254 and the RTC are heard again (the
    // RTC's IRQ8 level held through the mute reaches the I/O APIC).
    hpet_w(0x10, 0b01);
    let mut vectors = Vec::new();
    for ms in 53..=80 {
        pc.run_until(ms * 1_000_000);
        while let Some(v) = pc.chipset.intc.ack_interrupt(0) {
            vectors.push(v);
            pc.eoi();
        }
    }
    assert!(vectors.contains(&0x30) && vectors.contains(&0x38), "{vectors:x?}");
    // A reset turns legacy replacement off with the rest of the HPET.
    hpet_w(0x10, 0b10);
    pc.chipset.reset();
    assert!(pc.mmio.read(0xfed0_0010, &mut d));
    assert_eq!(u64::from_le_bytes(d), 0);
}

struct Nic {
    config: PciConfigSpace,
}

impl PciDevice for Nic {
    fn debug_label(&self) -> String {
        "nic".into()
    }
    fn config(&self) -> &PciConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }
}

#[test]
fn pci_intx_reaches_the_ioapic_as_a_level_interrupt() {
    let pc = Pc::new();
    pc.apic_mode();
    let mut config = PciConfigSpace::new(0x1af4, 0x1000, 0x02_00_00, 0);
    config.set_interrupt_pin(Some(PciInterruptPin::IntA));
    let nic: SharedPciDevice = Arc::new(Mutex::new(Nic { config }));
    let address = PciAddress::new(3, 0).unwrap();
    pc.chipset.add_pci_device(address, nic.clone()).unwrap();
    assert_eq!(nic.lock().config().u8_at(PCI_INTERRUPT_LINE), 11, "slot 3 INTA -> PIRQC -> 11");
    assert_eq!(pc.chipset.pci.lock().routed_irq(address), Some(11));
    pc.ioapic_route(11, 0x0000_8041);
    let line = pc.chipset.pci_intx_line(3, PciInterruptPin::IntA);
    line.set_level(true);
    assert_eq!(pc.chipset.intc.ack_interrupt(0), Some(0x41));
    line.set_level(false);
    pc.eoi();
    assert!(!pc.chipset.intc.interrupt_pending(0));
    // The guest sees the bridges through 0xCF8/0xCFC.
    pc.pio.write(0xcf8, &0x8000_0000u32.to_le_bytes());
    let mut d = [0u8; 4];
    pc.pio.read(0xcfc, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x1237_8086);
    pc.pio.write(0xcf8, &0x8000_0860u32.to_le_bytes());
    pc.pio.read(0xcfc, &mut d);
    assert_eq!(d, [10, 10, 11, 11], "PIRQA-D as routed");
}

/// Firmware moves the ACPI PM block with PMBA and PMREGMISC of 00:01.3,
/// through configuration mechanism #1; its registers follow.
#[test]
fn the_pm_block_is_where_pmba_puts_it() {
    let pc = Pc::new();
    pc.clock.set(NANOS_PER_SEC);
    let mut d = [0u8; 4];
    pc.pio.write(0xcf8, &0x8000_0b00u32.to_le_bytes());
    pc.pio.read(0xcfc, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x7113_8086, "the PIIX4 PM function at 00:01.3");
    pc.pio.write(0xcf8, &0x8000_0b40u32.to_le_bytes());
    pc.pio.write(0xcfc, &0xb001u32.to_le_bytes());
    assert!(!pc.io_read(0x608, &mut d), "no longer at 0x600");
    assert!(pc.io_read(0xb008, &mut d));
    assert_eq!(u32::from_le_bytes(d), 3_579_545, "the PM timer at OVMF's base");
    pc.pio.write(0xcf8, &0x8000_0b80u32.to_le_bytes());
    pc.pio.write(0xcfc, &[0]);
    assert!(!pc.io_read(0xb008, &mut d), "PMIOSE off: not decoded");
    // The state carries where the block is.
    let saved = pc.chipset.save();
    let fresh = Pc::new();
    fresh.chipset.pm_function.lock().load_state(&saved.pm_function);
    assert_eq!(fresh.chipset.pm_decode.base(), None);
}

#[test]
fn acpi_s5_and_every_reset_path() {
    let pc = Pc::new();
    pc.io_write(0x604, &((5u16 << 10) | (1 << 13)).to_le_bytes());
    assert_eq!(pc.events.take(), None, "SLP_TYP 5 is no sleep state of the PIIX4");
    pc.io_write(0x604, &(1u16 << 13).to_le_bytes());
    assert_eq!(pc.events.take(), Some(VmEvent::PowerOff));
    pc.outb(0xcf9, 0x06);
    assert_eq!(pc.events.take(), Some(VmEvent::Reset));
    pc.outb(0x64, 0xfe);
    assert_eq!(pc.events.take(), Some(VmEvent::Reset));
    pc.outb(0x92, 0x01);
    assert_eq!(pc.events.take(), Some(VmEvent::Reset));
    pc.chipset.reset();
    assert_eq!(pc.inb(0x92), 0);
    assert!(pc.chipset.a20.enabled());
}

/// A hostile guest: random accesses of every size to every chipset
/// port and register page, and random APIC MSRs, with time passing.
/// A hostile guest: random accesses of every size to every chipset port
/// and register page, and random APIC MSRs, with time passing.
fn hostile_guest(pc: &Pc, mut seed: u64, rounds: u64) {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let windows: Vec<(bool, u64, u64)> = pc
        .chipset
        .bus_mappings()
        .iter()
        .map(|m| (m.space == crate::mapping::AddressSpace::Pio, m.base, m.len))
        .collect();
    for round in 0..rounds {
        let r = next();
        let (pio, base, len) = windows[(r % windows.len() as u64) as usize];
        let addr = base + (r >> 8) % len;
        let size = [1usize, 2, 3, 4, 8][((r >> 32) % 5) as usize];
        let bus = if pio { &pc.pio } else { &pc.mmio };
        let mut data = vec![0u8; size];
        if r & (1 << 40) != 0 {
            data.iter_mut().for_each(|b| *b = (next() & 0xff) as u8);
            bus.write(addr, &data);
        } else {
            bus.read(addr, &mut data);
        }
        let msr = [0x1b, 0x6e0, 0x800 + (r >> 48) as u32 % 0x100][(r % 3) as usize];
        if r & (1 << 41) != 0 {
            pc.chipset.intc.msr_write(0, msr, next());
        } else {
            pc.chipset.intc.msr_read(0, msr);
        }
        pc.chipset.intc.ack_interrupt(0);
        pc.chipset.intc.take_nmi(0);
        if round % 64 == 0 {
            pc.run_until(round * 1_000_000 + (r & 0xffff));
        }
    }
}

#[test]
fn garbage_everywhere_never_panics() {
    let pc = Pc::new();
    hostile_guest(&pc, 0x9e37_79b9_7f4a_7c15, 20_000);
    // Whatever the guest did, the machine still answers.
    assert!(pc.pio.read(0x70, &mut [0u8]));
}

#[test]
fn pm_timer_and_sci() {
    let pc = Pc::new();
    pc.clock.set(NANOS_PER_SEC);
    let mut d = [0u8; 4];
    pc.io_read(0x608, &mut d);
    assert_eq!(u32::from_le_bytes(d), 3_579_545);
    pc.apic_mode();
    pc.ioapic_route(9, 0x0000_8049);
    pc.chipset.acpi_pm.lock().power_button();
    pc.io_write(0x602, &0x0100u16.to_le_bytes());
    assert_eq!(pc.chipset.intc.ack_interrupt(0), Some(0x49));
    assert!(pc.chipset.intc.next_deadline_ns().is_none());
}

impl Pc {
    /// A new machine at the same clock time as `self`, as a restore in
    /// another process starts: its clock resumed from the saved guest time.
    fn twin(&self) -> Pc {
        let fresh = Pc::new();
        fresh.clock.restore_time(&self.clock.save_time()).unwrap();
        fresh
    }
    /// Takes and EOIs what is pending, at most 16 vectors (a held level
    /// line comes back at each EOI); reads RTC register C after its vector.
    fn ack_all(&self) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(vector) = self.chipset.intc.ack_interrupt(0) {
            v.push(vector);
            if vector == 0x38 {
                self.outb(0x70, 0x0c);
                self.inb(0x71);
            }
            self.eoi();
            self.outb(0xa0, 0x20);
            self.outb(0x20, 0x20);
            if v.len() == 16 {
                break;
            }
        }
        v
    }
    /// Plugs in the PCI device of [`configured`] and takes its INTx line.
    fn wire_pci_device(&self) -> Arc<dyn IrqLine> {
        let mut config = PciConfigSpace::new(0x1af4, 0x1000, 0x02_00_00, 0);
        config.set_interrupt_pin(Some(PciInterruptPin::IntA));
        let nic: SharedPciDevice = Arc::new(Mutex::new(Nic { config }));
        self.chipset.add_pci_device(PciAddress::new(4, 0).unwrap(), nic).unwrap();
        self.chipset.pci_intx_line(4, PciInterruptPin::IntA)
    }
}

/// A machine with every chipset device programmed and time gone by: the
/// 8259A pair and the I/O APIC routing, the PIT at 100 Hz, the RTC's
/// periodic interrupt, an HPET timer, the i8042 with A20 off and a byte
/// queued, port 0x92, a POST code, the ACPI PM enables, the reset control
/// register, a PCI device with its INTx asserted on a rerouted PIRQ, the
/// CONFIG_ADDRESS latch and the TSC written.
fn configured() -> (Pc, Arc<dyn IrqLine>) {
    let pc = Pc::new();
    for (cmd, data, base, cascade) in [(0x20, 0x21, 0x30, 0x04), (0xa0, 0xa1, 0x38, 0x02)] {
        pc.outb(cmd, 0x11);
        pc.outb(data, base);
        pc.outb(data, cascade);
        pc.outb(data, 0x01);
        pc.outb(data, 0x00);
    }
    pc.outb(0x21, 0x01); // the 8259A leaves IRQ0 to the I/O APIC
    pc.mmio.write(0xfee0_0350, &0x0001_0700u32.to_le_bytes());
    pc.ioapic_route(2, 0x30);
    pc.ioapic_route(8, 0x38);
    pc.ioapic_route(5, 0x0000_8025); // below the timers' class: they come first
    pc.outb(0x43, 0x34);
    pc.outb(0x40, 0x9c);
    pc.outb(0x40, 0x2e);
    pc.outb(0x70, 0x0b);
    pc.outb(0x71, 0x42);
    let hpet_w = |offset: u64, v: u64| assert!(pc.mmio.write(0xfed0_0000 + offset, &v.to_le_bytes()));
    hpet_w(0x140, (1 << 2) | (1 << 3) | (1 << 6) | (20 << 9));
    hpet_w(0x148, 300_000);
    hpet_w(0x148, 300_000);
    hpet_w(0x10, 1);
    pc.ioapic_route(20, 0x50);
    pc.outb(0x64, 0xdd); // A20 off through the i8042
    pc.outb(0x60, 0xee); // echo: a byte queued
    pc.outb(0x92, 0x40);
    pc.outb(0x80, 0x2b);
    pc.pio.write(0x602, &0x0101u16.to_le_bytes());
    pc.outb(0xcf9, 0x02);
    let intx = pc.wire_pci_device();
    pc.pio.write(0xcf8, &0x8000_0860u32.to_le_bytes());
    pc.pio.write(0xcfc, &[10, 10, 11, 5]); // PIRQD (slot 4 INTA) to IRQ 5
    intx.set_level(true);
    pc.pio.write(0xcf8, &0x8000_0008u32.to_le_bytes());
    pc.chipset.tsc.write(0, 77);
    pc.mmio.write(0xfee0_03e0, &0x0bu32.to_le_bytes());
    pc.mmio.write(0xfee0_0320, &0x0002_00efu32.to_le_bytes());
    pc.mmio.write(0xfee0_0380, &2_500_000u32.to_le_bytes());
    for t in 1..=25 {
        pc.run_until(t * 1_000_000 + 3);
        pc.ack_all();
    }
    assert!(!pc.chipset.a20.enabled());
    (pc, intx)
}

#[test]
fn the_persisted_chipset_round_trips_and_the_copy_behaves_alike() {
    let (pc, _intx) = configured();
    let mut fresh = pc.twin();
    // The same wiring: the PCI device and its INTx line.
    let _fresh_intx = fresh.wire_pci_device();
    assert!(fresh.chipset.a20.enabled());
    let state = persist::assert_round_trip(&pc.chipset, &mut fresh.chipset);
    assert_eq!(state.pci_irqs.lines, [true]);
    assert_eq!(state.pci.config_address, 0x8000_0008);
    assert_eq!(state.post_code.last, 0x2b);
    assert!(!fresh.chipset.a20.enabled(), "A20 follows the i8042 and port 0x92");
    assert_eq!(fresh.chipset.tsc.read(fresh.clock.now_ns()), pc.chipset.tsc.read(pc.clock.now_ns()));
    assert_eq!(fresh.chipset.timers.poll(fresh.clock.now_ns()), pc.chipset.timers.poll(pc.clock.now_ns()));
    let first = pc.ack_all();
    assert!(first.contains(&0x25), "the level interrupt of the PCI device (IRQ 5): {first:x?}");
    assert_eq!(fresh.ack_all(), first);
    for port in [0x21, 0xa1, 0x4d0, 0x4d1, 0x64, 0x60, 0x92, 0x80, 0xcf9] {
        assert_eq!(fresh.inb(port), pc.inb(port), "port {port:#x}");
    }
    let mut a = [0u8; 4];
    let mut b = [0u8; 4];
    for port in [0x600, 0x602, 0xcf8, 0xcfc] {
        pc.io_read(port, &mut a);
        fresh.io_read(port, &mut b);
        assert_eq!(a, b, "port {port:#x}");
    }
    // A second of guest time later both have taken the same interrupts.
    let (mut seen, mut fresh_seen) = (Vec::new(), Vec::new());
    let start = pc.clock.now_ns();
    for ms in 1..=1_000 {
        let t = start + ms * 1_000_000;
        pc.run_until(t);
        fresh.run_until(t);
        seen.extend(pc.ack_all());
        fresh_seen.extend(fresh.ack_all());
    }
    assert_eq!(fresh_seen, seen);
    let mut kinds = seen.clone();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, [0x25, 0x30, 0x38, 0x50, 0xef], "the PCI device, the PIT, the RTC, the HPET, the APIC timer");
    assert_eq!(fresh.chipset.save(), pc.chipset.save());
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn a_corrupt_part_is_refused_before_any_part_is_loaded() {
    let (pc, _intx) = configured();
    let good = pc.chipset.save();
    let mut target = pc.twin();
    let _target_intx = target.wire_pci_device();
    let cases: [Corruption<PcChipsetState>; 8] = [
        ("hz", |s| s.tsc.hz = 0),
        ("lapics", |s| s.intc.lapics.clear()),
        ("mode", |s| s.pit.channels[0].mode = 7),
        ("cmos", |s| {
            s.rtc.cmos.pop();
        }),
        ("config", |s| s.hpet.config = 4),
        ("queue", |s| s.i8042.queue = vec![(0, crate::legacy::i8042::Source::Keyboard); 17]),
        ("config_address", |s| s.pci.config_address = 3),
        ("lines", |s| s.pci_irqs.lines.push(false)),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut target.chipset, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    assert!(target.chipset.a20.enabled(), "nothing was loaded");
}

/// Whatever a guest does, the state it leaves is one a restore takes.
#[test]
fn a_state_a_hostile_guest_left_restores() {
    for seed in [0x9e37_79b9_7f4a_7c15, 0x0123_4567_89ab_cdef, 0x5555_aaaa_3333_cccc] {
        let pc = Pc::new();
        hostile_guest(&pc, seed, 5_000);
        let mut fresh = pc.twin();
        persist::assert_round_trip(&pc.chipset, &mut fresh.chipset);
    }
}
