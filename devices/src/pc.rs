//! The PC chipset assembled: every legacy device, the interrupt
//! controllers, the ACPI hardware and PCI bus 0, wired as the firmware's
//! tables describe them.
//!
//! ```text
//! device                  ports / MMIO                      interrupt
//! 8259A pair, ELCR        0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1  (INTR -> LINT0, I/O APIC pin 0)
//! 8254 PIT                0x40-0x43, port B 0x61              ISA IRQ0 (I/O APIC pin 2)
//! i8042                   0x60, 0x64                          IRQ1 (IRQ12 unused)
//! MC146818 RTC/CMOS       0x70-0x71                           IRQ8
//! POST code               0x80                                -
//! debug console           0x402 (firmware log, --trace firmware) -
//! port 0x92 (fast A20)    0x92                                -
//! ACPI PM1a EVT/CNT, TMR  0x600-0x60B                         SCI, IRQ9 (level)
//! PCI config, reset reg.  0xCF8-0xCFF (0xCF9 reset control)   -
//! I/O APIC                0xFEC00000, 4 KiB                   -
//! local APIC              0xFEE00000, 4 KiB                   -
//! HPET                    0xFED00000, 1 KiB                   IRQ0 and IRQ8 in legacy replacement
//!                                                             mode (then the 8254's and the RTC's
//!                                                             are disconnected), else GSI 2, 8, 16-23
//! PCI INTx                via PIRQA-D                         IRQ 10, 10, 11, 11 (level)
//! ```
//!
//! The UARTs and the debug-exit port are wired by the machine itself
//! (COM1 on IRQ4 through [`PcChipset::irq_line`]).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::bus::{Bus, BusError, SharedDevice};
use crate::clock::{SharedClock, Timers, Tsc};
use crate::intc::InterruptController;
use crate::irq::{IrqLine, SwitchedIrq};
use crate::legacy::acpi_pm::{
    AcpiPm, AcpiPmState, ResetControl, ResetControlState, ACPI_PM_BASE, ACPI_PM_LEN, SCI_IRQ,
};
use crate::legacy::debugcon::{DebugCon, DEBUGCON_PORT, DEBUGCON_PORT_LEN};
use crate::legacy::hpet::{Hpet, HpetState, HPET_BASE, HPET_MMIO_LEN};
use crate::legacy::i8042::{I8042State, AUX_IRQ, I8042, KEYBOARD_IRQ};
use crate::legacy::pit::{Pit, PitState, PIT_IRQ};
use crate::legacy::port92::{A20Gate, Port92, Port92State, PORT92, PORT92_LEN};
use crate::legacy::post_code::{PostCode, POST_CODE_PORT, POST_CODE_PORT_LEN};
use crate::legacy::rtc::{RamSize, Rtc, RTC_IRQ, RTC_PORT, RTC_PORT_LEN};
use crate::mapping::BusMapping;
use crate::pci::config::PCI_INTERRUPT_LINE;
use crate::pci::piix::PIIX_ISA_ADDRESS;
use crate::pci::{
    I440fxHostBridge, PciAddress, PciError, PciInterruptPin, PciIntxRouter, PciRoot, PiixIsaBridge, SharedPciDevice,
    DEFAULT_PIRQ_IRQS,
};
use crate::power::VmEvents;

/// Where the host bridge sits.
pub const HOST_BRIDGE_ADDRESS: PciAddress = PciAddress { bus: 0, device: 0, function: 0 };

/// ELCR bits a BIOS sets for the level-triggered ISA IRQs: the SCI (9) and
/// the PCI IRQs (10, 11). ELCR1 covers IRQ0-7, ELCR2 IRQ8-15.
const ELCR_LEVEL_IRQS: u16 = (1 << SCI_IRQ) | (1 << 10) | (1 << 11);

/// The devices' power-on states, for a system reset.
struct InitialStates {
    pit: PitState,
    i8042: I8042State,
    port92: Port92State,
    acpi_pm: AcpiPmState,
    reset_control: ResetControlState,
    hpet: HpetState,
}

/// The chipset of a one-CPU PC.
pub struct PcChipset {
    /// The 8259A pair, the I/O APIC and the local APIC.
    pub intc: Arc<InterruptController>,
    /// The 8254 PIT and port 0x61.
    pub pit: Arc<Mutex<Pit>>,
    /// The RTC and CMOS.
    pub rtc: Arc<Mutex<Rtc>>,
    /// The HPET.
    pub hpet: Arc<Mutex<Hpet>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// Port 0x92.
    pub port92: Arc<Mutex<Port92>>,
    /// Port 0x80.
    pub post_code: Arc<Mutex<PostCode>>,
    /// The ACPI PM registers.
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    /// The reset control register (reached through the PCI root at 0xCF9).
    pub reset_control: Arc<Mutex<ResetControl>>,
    /// PCI bus 0 with the host and ISA bridges.
    pub pci: Arc<Mutex<PciRoot>>,
    /// The host bridge (its PAM registers switch BIOS shadowing).
    pub host_bridge: Arc<Mutex<I440fxHostBridge>>,
    /// PCI INTx to ISA IRQ routing.
    pub pci_irqs: Arc<PciIntxRouter>,
    /// The A20 gate (i8042 output port and port 0x92).
    pub a20: Arc<A20Gate>,
    /// The TSC shared by the CPU and the TSC-deadline timer.
    pub tsc: Arc<Tsc>,
    /// The timer devices, for the run loop's `poll`.
    pub timers: Timers,
    mappings: Vec<BusMapping>,
    initial: InitialStates,
}

impl std::fmt::Debug for PcChipset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcChipset").field("mappings", &self.mappings).finish_non_exhaustive()
    }
}

impl PcChipset {
    /// Builds and wires the chipset. `ram` fills the CMOS memory bytes;
    /// `tsc` is the counter the CPU's RDTSC reads. A20 starts enabled, as
    /// firmware that boots a kernel directly leaves it.
    pub fn new(clock: SharedClock, events: Arc<VmEvents>, tsc: Arc<Tsc>, ram: RamSize) -> Self {
        let intc = InterruptController::new(Arc::clone(&clock), Arc::clone(&tsc));
        let a20 = A20Gate::new(true);

        // The HPET's legacy replacement route disconnects the 8254's IRQ0
        // and the RTC's IRQ8 (IA-PC HPET 1.0a, 2.3.9.1).
        let pit_irq = Arc::new(SwitchedIrq::new(intc.irq_line(PIT_IRQ)));
        let rtc_irq = Arc::new(SwitchedIrq::new(intc.irq_line(RTC_IRQ)));
        let pit = Arc::new(Mutex::new(Pit::new(Arc::clone(&clock), pit_irq.clone())));
        let rtc = Arc::new(Mutex::new(Rtc::new(Arc::clone(&clock), rtc_irq.clone(), ram)));
        let hpet_intc = Arc::clone(&intc);
        let hpet = Arc::new(Mutex::new(Hpet::new(
            Arc::clone(&clock),
            &move |irq| hpet_intc.irq_line(irq),
            Box::new(move |legacy| {
                pit_irq.set_connected(!legacy);
                rtc_irq.set_connected(!legacy);
            }),
        )));
        let i8042 = Arc::new(Mutex::new(I8042::new(
            intc.irq_line(KEYBOARD_IRQ),
            intc.irq_line(AUX_IRQ),
            Arc::clone(&a20),
            Arc::clone(&events),
        )));
        let port92 = Arc::new(Mutex::new(Port92::new(Arc::clone(&a20), Arc::clone(&events))));
        let post_code = Arc::new(Mutex::new(PostCode::new()));
        let acpi_pm =
            Arc::new(Mutex::new(AcpiPm::new(Arc::clone(&clock), intc.irq_line(SCI_IRQ), Arc::clone(&events))));
        let reset_control = Arc::new(Mutex::new(ResetControl::new(Arc::clone(&events))));

        let router_intc = Arc::clone(&intc);
        let pci_irqs = PciIntxRouter::new(move |irq| router_intc.irq_line(u32::from(irq)));
        let mut isa_bridge = PiixIsaBridge::new(Arc::clone(&pci_irqs));
        for (pirq, &irq) in DEFAULT_PIRQ_IRQS.iter().enumerate() {
            isa_bridge.set_pirq_route(pirq, Some(irq));
        }
        let mut root = PciRoot::new();
        let host_bridge = Arc::new(Mutex::new(I440fxHostBridge::new()));
        let host: SharedPciDevice = host_bridge.clone();
        let isa: SharedPciDevice = Arc::new(Mutex::new(isa_bridge));
        // Two fixed slots on an empty bus: these cannot collide.
        let _ = root.add_device(HOST_BRIDGE_ADDRESS, host);
        let _ = root.add_device(PIIX_ISA_ADDRESS, isa);
        let reset_shared: SharedDevice = reset_control.clone();
        root.set_reset_register(reset_shared);
        let pci = Arc::new(Mutex::new(root));

        let [elcr1, elcr2] = ELCR_LEVEL_IRQS.to_le_bytes();
        intc.write_elcr(0, elcr1);
        intc.write_elcr(1, elcr2);

        let mut mappings = intc.bus_mappings();
        let pit_shared: SharedDevice = pit.clone();
        mappings.extend(Pit::bus_mappings(&pit_shared));
        let i8042_shared: SharedDevice = i8042.clone();
        mappings.extend(I8042::bus_mappings(&i8042_shared));
        let pci_shared: SharedDevice = pci.clone();
        mappings.extend(PciRoot::bus_mappings(&pci_shared));
        mappings.push(BusMapping::pio(u64::from(RTC_PORT), RTC_PORT_LEN, rtc.clone()));
        mappings.push(BusMapping::pio(u64::from(POST_CODE_PORT), POST_CODE_PORT_LEN, post_code.clone()));
        let debugcon: SharedDevice = Arc::new(Mutex::new(DebugCon::new()));
        mappings.push(BusMapping::pio(u64::from(DEBUGCON_PORT), DEBUGCON_PORT_LEN, debugcon));
        mappings.push(BusMapping::pio(u64::from(PORT92), PORT92_LEN, port92.clone()));
        mappings.push(BusMapping::pio(u64::from(ACPI_PM_BASE), ACPI_PM_LEN, acpi_pm.clone()));
        mappings.push(BusMapping::mmio(HPET_BASE, HPET_MMIO_LEN, hpet.clone()));

        let mut timers = Timers::new();
        timers.add(intc.clone());
        timers.add(pit.clone());
        timers.add(rtc.clone());
        timers.add(acpi_pm.clone());
        timers.add(hpet.clone());

        let initial = InitialStates {
            pit: pit.lock().save(),
            i8042: i8042.lock().save(),
            port92: port92.lock().save(),
            acpi_pm: acpi_pm.lock().save(),
            reset_control: reset_control.lock().save(),
            hpet: hpet.lock().save(),
        };
        Self {
            intc,
            pit,
            rtc,
            hpet,
            i8042,
            port92,
            post_code,
            acpi_pm,
            reset_control,
            pci,
            host_bridge,
            pci_irqs,
            a20,
            tsc,
            timers,
            mappings,
            initial,
        }
    }

    /// Every range the chipset answers on.
    pub fn bus_mappings(&self) -> &[BusMapping] {
        &self.mappings
    }

    /// Registers every range on the machine's port I/O and MMIO buses.
    pub fn install(&self, pio: &mut Bus, mmio: &mut Bus) -> Result<(), BusError> {
        self.mappings.iter().try_for_each(|m| m.insert_into(pio, mmio))
    }

    /// A line for ISA IRQ or GSI `irq` (see [`InterruptController::irq_line`]).
    pub fn irq_line(&self, irq: u32) -> Arc<dyn IrqLine> {
        self.intc.irq_line(irq)
    }

    /// A line for INTx pin `pin` of the PCI function in slot `slot`.
    pub fn pci_intx_line(&self, slot: u8, pin: PciInterruptPin) -> Arc<dyn IrqLine> {
        self.pci_irqs.intx_line(slot, pin)
    }

    /// Plugs a PCI function in and fills its Interrupt Line register with
    /// the routed IRQ, as a BIOS does.
    pub fn add_pci_device(&self, address: PciAddress, device: SharedPciDevice) -> Result<(), PciError> {
        let mut root = self.pci.lock();
        root.add_device(address, Arc::clone(&device))?;
        let line = root.routed_irq(address).unwrap_or(0xff);
        device.lock().config_mut().set_u8(PCI_INTERRUPT_LINE, line);
        Ok(())
    }

    /// A system reset: the interrupt controllers, the PIT, the HPET, the
    /// i8042, port 0x92, the ACPI registers, A20 and the PAM registers (the
    /// BIOS is read from ROM again) go back to their power-on state. The
    /// RTC and CMOS keep running (they are battery-backed) and the rest of
    /// PCI configuration is kept.
    pub fn reset(&self) {
        self.host_bridge.lock().reset();
        self.intc.reset(&self.tsc);
        let [elcr1, elcr2] = ELCR_LEVEL_IRQS.to_le_bytes();
        self.intc.write_elcr(0, elcr1);
        self.intc.write_elcr(1, elcr2);
        self.pit.lock().restore(&self.initial.pit);
        self.hpet.lock().restore(&self.initial.hpet);
        self.i8042.lock().restore(&self.initial.i8042);
        self.port92.lock().restore(&self.initial.port92);
        self.acpi_pm.lock().restore(&self.initial.acpi_pm);
        self.reset_control.lock().restore(&self.initial.reset_control);
        self.a20.set_kbc(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, TimerSource, NANOS_PER_SEC};
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
            let clock = Arc::new(ManualClock::new(0));
            let events = Arc::new(VmEvents::new());
            let chipset = PcChipset::new(
                clock.clone(),
                events.clone(),
                Arc::new(Tsc::new(1_000_000_000)),
                RamSize::split(1 << 30, 0xc000_0000),
            );
            let mut pio = Bus::new();
            let mut mmio = Bus::new();
            chipset.install(&mut pio, &mut mmio).unwrap();
            Self { chipset, clock, events, pio, mmio }
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
        assert!(pc.pio.read(0x608, &mut d));
        assert!(pc.pio.read(0xcf8, &mut d));
        assert!(pc.mmio.read(0xfec0_0000, &mut d));
        assert!(pc.mmio.read(0xfee0_0030, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0x0005_0014);
        assert_eq!(pc.inb(0x4d1), 0x0e, "IRQ 9, 10 and 11 are level-triggered");
        assert!(format!("{:?}", pc.chipset).contains("BusMapping"));
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
        assert!(!pc.chipset.intc.interrupt_pending());
        let next2 = pc.run_until(next).unwrap();
        assert!(pc.chipset.intc.interrupt_pending());
        assert_eq!(pc.chipset.intc.ack_interrupt(), Some(0x30));
        pc.eoi();
        assert!(next2 > next);
        // An idle guest: nothing is due before the next period.
        pc.run_until(next2 - 1);
        assert!(!pc.chipset.intc.interrupt_pending());
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
        assert_eq!(pc.chipset.intc.ack_interrupt(), Some(0x30));
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
        assert_eq!(pc.chipset.intc.ack_interrupt(), Some(0x38));
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
        assert!(!pc.chipset.intc.interrupt_pending(), "the 8254 and the RTC are muted");
        // HPET timer 0 (one-shot at 1 ms) then drives IRQ0, timer 1 IRQ8.
        hpet_w(0x100, 1 << 2);
        hpet_w(0x108, 100_000);
        hpet_w(0x120, 1 << 2);
        hpet_w(0x128, 200_000);
        hpet_w(0x10, 0b11);
        pc.run_until(51_000_000);
        assert_eq!(pc.chipset.intc.ack_interrupt(), Some(0x30), "HPET timer 0 on IRQ0");
        pc.eoi();
        pc.run_until(52_000_000);
        assert_eq!(pc.chipset.intc.ack_interrupt(), Some(0x38), "HPET timer 1 on IRQ8");
        pc.eoi();
        assert!(!pc.chipset.intc.interrupt_pending());
        // Legacy replacement off: the 8254 and the RTC are heard again (the
        // RTC's IRQ8 level held through the mute reaches the I/O APIC).
        hpet_w(0x10, 0b01);
        let mut vectors = Vec::new();
        for ms in 53..=80 {
            pc.run_until(ms * 1_000_000);
            while let Some(v) = pc.chipset.intc.ack_interrupt() {
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
        assert_eq!(pc.chipset.intc.ack_interrupt(), Some(0x41));
        line.set_level(false);
        pc.eoi();
        assert!(!pc.chipset.intc.interrupt_pending());
        // The guest sees the bridges through 0xCF8/0xCFC.
        pc.pio.write(0xcf8, &0x8000_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        pc.pio.read(0xcfc, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1237_8086);
        pc.pio.write(0xcf8, &0x8000_0860u32.to_le_bytes());
        pc.pio.read(0xcfc, &mut d);
        assert_eq!(d, [10, 10, 11, 11], "PIRQA-D as routed");
    }

    #[test]
    fn acpi_s5_and_every_reset_path() {
        let pc = Pc::new();
        pc.pio.write(0x604, &((5u16 << 10) | (1 << 13)).to_le_bytes());
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
    #[test]
    fn garbage_everywhere_never_panics() {
        let pc = Pc::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
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
        for round in 0..20_000u64 {
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
                pc.chipset.intc.msr_write(msr, next());
            } else {
                pc.chipset.intc.msr_read(msr);
            }
            pc.chipset.intc.ack_interrupt();
            pc.chipset.intc.take_nmi();
            if round % 64 == 0 {
                pc.run_until(round * 1_000_000 + (r & 0xffff));
            }
        }
        // Whatever the guest did, the machine still answers.
        assert!(pc.pio.read(0x70, &mut [0u8]));
    }

    #[test]
    fn pm_timer_and_sci() {
        let pc = Pc::new();
        pc.clock.set(NANOS_PER_SEC);
        let mut d = [0u8; 4];
        pc.pio.read(0x608, &mut d);
        assert_eq!(u32::from_le_bytes(d), 3_579_545);
        pc.apic_mode();
        pc.ioapic_route(9, 0x0000_8049);
        pc.chipset.acpi_pm.lock().power_button();
        pc.pio.write(0x602, &0x0100u16.to_le_bytes());
        assert_eq!(pc.chipset.intc.ack_interrupt(), Some(0x49));
        assert!(pc.chipset.intc.next_deadline_ns().is_none());
    }
}
