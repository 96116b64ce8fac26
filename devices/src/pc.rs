//! The PC chipset assembled: every legacy device, the interrupt
//! controllers, the ACPI hardware and PCI bus 0, wired as the firmware's
//! tables describe them.
//!
//! ```text
//! device                  ports / MMIO                      interrupt
//! 8259A pair, ELCR        0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1  (INTR -> LINT0, I/O APIC pin 0)
//! 8254 PIT                0x40-0x43, port B 0x61              ISA IRQ0 (I/O APIC pin 2)
//! i8042                   0x60, 0x64                          IRQ1, IRQ12 (PS/2 mouse)
//! MC146818 RTC/CMOS       0x70-0x71                           IRQ8
//! POST code               0x80                                -
//! debug console           0x402 (firmware log, --trace firmware) -
//! port 0x92 (fast A20)    0x92                                -
//! ACPI PM1a EVT/CNT, TMR  PMBA of 00:01.3 (SeaBIOS: 0x600)   SCI, IRQ9 (level)
//! PCI config, reset reg.  0xCF8-0xCFF (0xCF9 reset control)   -
//! I/O APIC                0xFEC00000, 4 KiB                   -
//! local APICs             0xFEE00000, 4 KiB (per CPU)         -
//! HPET                    0xFED00000, 1 KiB                   IRQ0 and IRQ8 in legacy replacement
//!                                                             mode (then the 8254's and the RTC's
//!                                                             are disconnected), else GSI 2, 8, 16-23
//! PCI INTx                via PIRQA-D                         IRQ 10, 10, 11, 11 (level)
//! ```
//!
//! The UARTs and the debug-exit port are wired by the machine itself
//! (COM1 on IRQ4 through [`PcChipset::irq_line`]).
//!
//! Saved state: [`PcChipsetState`] holds the state of every device the
//! chipset owns, each part's own state type. A restore checks every part
//! before it loads any, then loads them, the interrupt controller last so
//! that the line levels the other restores drive end as saved. Restore the
//! machine's clock first ([`crate::clock::Clock::restore_time`]): the
//! devices' times are guest times of that clock.

use std::sync::Arc;

use parking_lot::Mutex;
use persist::{Persist, PersistError};

use crate::bus::{Bus, BusError, SharedDevice};
use crate::clock::{SharedClock, Timers, Tsc, TscState};
use crate::intc::{InterruptController, InterruptControllerState};
use crate::irq::{IrqLine, SwitchedIrq};
use crate::legacy::acpi_pm::{AcpiPm, AcpiPmState, ResetControl, ResetControlState, SCI_IRQ};
use crate::legacy::debugcon::{DebugCon, DEBUGCON_PORT, DEBUGCON_PORT_LEN};
use crate::legacy::hpet::{Hpet, HpetState, HPET_BASE, HPET_MMIO_LEN};
use crate::legacy::i8042::{I8042State, AUX_IRQ, I8042, KEYBOARD_IRQ};
use crate::legacy::pit::{Pit, PitState, PIT_IRQ};
use crate::legacy::port92::{A20Gate, Port92, Port92State, PORT92, PORT92_LEN};
use crate::legacy::post_code::{PostCode, PostCodeState, POST_CODE_PORT, POST_CODE_PORT_LEN};
use crate::legacy::rtc::{RamSize, Rtc, RtcState, RTC_IRQ, RTC_PORT, RTC_PORT_LEN};
use crate::mapping::{AddressSpace, BusMapping};
use crate::pci::config::PCI_INTERRUPT_LINE;
use crate::pci::i440fx::I440fxState;
use crate::pci::piix::{PciIntxRouterState, PiixState, PIIX_ISA_ADDRESS};
use crate::pci::piix4_pm::{Piix4Pm, Piix4PmState, PmDecode, PIIX4_PM_ADDRESS, PM_IO_BASE};
use crate::pci::root::PciRootState;
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

/// The ACPI PM block's ports: wherever the PIIX4 PM function's PMBA
/// places it (SeaBIOS at 0x600, OVMF at 0xB000), so not a fixed range of
/// the port bus. The machine's port I/O asks it first; one atomic load
/// when the block is elsewhere.
#[derive(Clone)]
pub struct PmPorts {
    decode: Arc<PmDecode>,
    pm: Arc<Mutex<AcpiPm>>,
}

impl PmPorts {
    /// Reads port `port` when the block holds it; false otherwise.
    #[inline]
    pub fn read(&self, port: u64, data: &mut [u8]) -> bool {
        match self.decode.offset_of(port) {
            Some(off) => {
                crate::bus::BusDevice::read(&mut *self.pm.lock(), off, data);
                true
            }
            None => false,
        }
    }

    /// Writes port `port` when the block holds it; false otherwise.
    #[inline]
    pub fn write(&self, port: u64, data: &[u8]) -> bool {
        match self.decode.offset_of(port) {
            Some(off) => {
                crate::bus::BusDevice::write(&mut *self.pm.lock(), off, data);
                true
            }
            None => false,
        }
    }
}

/// The saved state of the chipset: every device it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PcChipsetState {
    /// The TSC shared with the CPUs.
    pub tsc: TscState,
    /// The 8259A pair, the I/O APIC, the local APICs, the CPUs' start-up
    /// states and the inputs.
    pub intc: InterruptControllerState,
    /// The 8254 and port 0x61.
    pub pit: PitState,
    /// The RTC and its CMOS.
    pub rtc: RtcState,
    /// The HPET.
    pub hpet: HpetState,
    /// The keyboard controller.
    pub i8042: I8042State,
    /// Port 0x92.
    pub port92: Port92State,
    /// Port 0x80.
    pub post_code: PostCodeState,
    /// The ACPI PM registers.
    pub acpi_pm: AcpiPmState,
    /// The reset control register.
    pub reset_control: ResetControlState,
    /// The PCI root's CONFIG_ADDRESS latch.
    pub pci: PciRootState,
    /// The host bridge (and the BIOS shadow it switches).
    pub host_bridge: I440fxState,
    /// The ISA bridge (the PIRQ routes).
    pub isa_bridge: PiixState,
    /// The power-management function (where the ACPI block is decoded).
    pub pm_function: Piix4PmState,
    /// The PCI INTx lines' levels.
    pub pci_irqs: PciIntxRouterState,
}

/// The devices' power-on states, for a system reset.
struct InitialStates {
    pit: PitState,
    i8042: I8042State,
    port92: Port92State,
    acpi_pm: AcpiPmState,
    reset_control: ResetControlState,
    hpet: HpetState,
}

/// The chipset of a PC with one or more CPUs.
pub struct PcChipset {
    /// The 8259A pair, the I/O APIC and the CPUs' local APICs.
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
    /// The ACPI PM registers, decoded where the PIIX4 PM function's PMBA
    /// says ([`PcChipset::pm_ports`]).
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    /// The PIIX4 power-management function at 00:01.3.
    pub pm_function: Arc<Mutex<Piix4Pm>>,
    /// Where the ACPI PM block is decoded.
    pub pm_decode: Arc<PmDecode>,
    /// The reset control register (reached through the PCI root at 0xCF9).
    pub reset_control: Arc<Mutex<ResetControl>>,
    /// PCI bus 0 with the host and ISA bridges.
    pub pci: Arc<Mutex<PciRoot>>,
    /// The host bridge (its PAM registers switch BIOS shadowing).
    pub host_bridge: Arc<Mutex<I440fxHostBridge>>,
    /// The ISA bridge (its PIRQ registers route PCI INTx).
    pub isa_bridge: Arc<Mutex<PiixIsaBridge>>,
    /// PCI INTx to ISA IRQ routing.
    pub pci_irqs: Arc<PciIntxRouter>,
    /// The A20 gate (i8042 output port and port 0x92).
    pub a20: Arc<A20Gate>,
    /// The TSC shared by the CPUs and the TSC-deadline timers.
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
    /// `tsc` is the counter the CPUs' RDTSC reads. `apic_ids` has one entry
    /// per CPU, by CPU index, the CPU's APIC ID (CPU 0 is the bootstrap
    /// processor); the interrupt controller gets a local APIC per CPU (see
    /// [`InterruptController::new`] for how a bad list is mended) and the
    /// CMOS CPU-count byte the number of CPUs. A20 starts enabled, as
    /// firmware that boots a kernel directly leaves it.
    pub fn new(clock: SharedClock, events: Arc<VmEvents>, tsc: Arc<Tsc>, ram: RamSize, apic_ids: &[u32]) -> Self {
        let intc = InterruptController::new(Arc::clone(&clock), Arc::clone(&tsc), apic_ids);
        let a20 = A20Gate::new(true);

        // The HPET's legacy replacement route disconnects the 8254's IRQ0
        // and the RTC's IRQ8 (IA-PC HPET 1.0a, 2.3.9.1).
        let pit_irq = Arc::new(SwitchedIrq::new(intc.irq_line(PIT_IRQ)));
        let rtc_irq = Arc::new(SwitchedIrq::new(intc.irq_line(RTC_IRQ)));
        let pit = Arc::new(Mutex::new(Pit::new(Arc::clone(&clock), pit_irq.clone())));
        let mut rtc = Rtc::new(Arc::clone(&clock), rtc_irq.clone(), ram);
        rtc.set_cpu_count(intc.cpus());
        let rtc = Arc::new(Mutex::new(rtc));
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
        let isa_bridge = Arc::new(Mutex::new(isa_bridge));
        let isa: SharedPciDevice = isa_bridge.clone();
        let pm_function = Piix4Pm::new();
        let pm_decode = pm_function.decode();
        let pm_function = Arc::new(Mutex::new(pm_function));
        let pm: SharedPciDevice = pm_function.clone();
        // Three fixed slots on an empty bus: these cannot collide.
        let _ = root.add_device(HOST_BRIDGE_ADDRESS, host);
        let _ = root.add_device(PIIX_ISA_ADDRESS, isa);
        let _ = root.add_device(PIIX4_PM_ADDRESS, pm);
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
            pm_function,
            pm_decode,
            reset_control,
            pci,
            host_bridge,
            isa_bridge,
            pci_irqs,
            a20,
            tsc,
            timers,
            mappings,
            initial,
        }
    }

    /// A PC without an HPET (QEMU's `-no-hpet`): its registers are not
    /// mapped, so it is never enabled and never interrupts. Call it before
    /// [`PcChipset::install`].
    pub fn unmap_hpet(&mut self) {
        self.mappings.retain(|m| !(m.space == AddressSpace::Mmio && m.base == HPET_BASE));
    }

    /// A PC without ACPI (QEMU's `-no-acpi`): no PIIX4 PM function at
    /// 00:01.3, so its PM block (and the power button and sleep states
    /// behind it) never decodes.
    pub fn remove_acpi_pm(&mut self) {
        self.pci.lock().remove_device(PIIX4_PM_ADDRESS);
    }

    /// Every range the chipset answers on.
    pub fn bus_mappings(&self) -> &[BusMapping] {
        &self.mappings
    }

    /// Programs the ACPI PM block at [`PM_IO_BASE`] and turns it on, as
    /// SeaBIOS does: for a machine that boots a kernel without firmware.
    pub fn program_pm_block(&self) {
        self.pm_function.lock().set_programmed(PM_IO_BASE);
    }

    /// The ACPI PM block where the PIIX4 PM function decodes it, for the
    /// machine's port I/O to ask before its bus ([`PmPorts`]).
    pub fn pm_ports(&self) -> PmPorts {
        PmPorts { decode: Arc::clone(&self.pm_decode), pm: self.acpi_pm.clone() }
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

    /// A system reset: the interrupt controllers (the APs back to waiting
    /// for SIPI, see [`InterruptController::reset`]), the PIT, the HPET, the
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
        // The devices' own power-on states, saved at construction: they
        // pass the checks, so they are loaded without.
        let initial = &self.initial;
        self.pit.lock().load_state(&initial.pit);
        self.hpet.lock().load_state(&initial.hpet);
        self.i8042.lock().load_state(&initial.i8042);
        self.port92.lock().load_state(&initial.port92);
        self.acpi_pm.lock().load_state(&initial.acpi_pm);
        self.reset_control.lock().load_state(&initial.reset_control);
        self.a20.set_kbc(true);
    }

    /// The checks of [`Persist::restore`], changing nothing: every part's.
    fn check_state(&self, state: &PcChipsetState) -> Result<(), PersistError> {
        Tsc::check_state(&state.tsc)?;
        self.intc.check_shared(&state.intc)?;
        Pit::check_state(&state.pit)?;
        Rtc::check_state(&state.rtc)?;
        Hpet::check_state(&state.hpet)?;
        I8042::check_state(&state.i8042)?;
        Port92::check_state(&state.port92)?;
        AcpiPm::check_state(&state.acpi_pm)?;
        ResetControl::check_state(&state.reset_control)?;
        PciRoot::check_state(&state.pci)?;
        self.host_bridge.lock().check_state(&state.host_bridge)?;
        self.isa_bridge.lock().check_state(&state.isa_bridge)?;
        self.pm_function.lock().check_state(&state.pm_function)?;
        self.pci_irqs.check_state(&state.pci_irqs)
    }
}

/// The aggregate of every device the chipset owns. Restore checks all the
/// parts (each with its own checks) before it loads any; then it loads them
/// in an order where the interrupt controller comes last, so that the
/// line levels the other devices drive as they load end as saved, and
/// nothing delivered meanwhile survives. The debug console has no state
/// (see [`DebugCon`]).
impl Persist for PcChipset {
    type State = PcChipsetState;

    fn save(&self) -> PcChipsetState {
        PcChipsetState {
            tsc: self.tsc.save(),
            intc: self.intc.save(),
            pit: self.pit.lock().save(),
            rtc: self.rtc.lock().save(),
            hpet: self.hpet.lock().save(),
            i8042: self.i8042.lock().save(),
            port92: self.port92.lock().save(),
            post_code: self.post_code.lock().save(),
            acpi_pm: self.acpi_pm.lock().save(),
            reset_control: self.reset_control.lock().save(),
            pci: self.pci.lock().save(),
            host_bridge: self.host_bridge.lock().save(),
            isa_bridge: self.isa_bridge.lock().save(),
            pm_function: self.pm_function.lock().save(),
            pci_irqs: self.pci_irqs.save(),
        }
    }

    fn restore(&mut self, state: &PcChipsetState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.tsc.load_state(&state.tsc);
        self.pci.lock().load_state(&state.pci);
        self.host_bridge.lock().load_state(&state.host_bridge);
        self.isa_bridge.lock().load_state(&state.isa_bridge);
        self.pm_function.lock().load_state(&state.pm_function);
        self.pci_irqs.load_state(&state.pci_irqs);
        self.pit.lock().load_state(&state.pit);
        self.rtc.lock().load_state(&state.rtc);
        self.hpet.lock().load_state(&state.hpet);
        self.i8042.lock().load_state(&state.i8042);
        self.port92.lock().load_state(&state.port92);
        self.post_code.lock().load_state(&state.post_code);
        self.acpi_pm.lock().load_state(&state.acpi_pm);
        self.reset_control.lock().load_state(&state.reset_control);
        self.intc.load_shared(&state.intc);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
