//! The PC's interrupt routing: the 8259A pair, the I/O APIC and one local
//! APIC per CPU behind one lock, and the questions a CPU asks of them.
//!
//! References: Intel MultiProcessor Specification 1.4, section 3.6.2
//! "Interrupt Modes" (PIC mode, virtual wire mode, symmetric I/O mode) and
//! 5.1 "Default Configurations"; ACPI 6.5, 5.2.12.5 "Interrupt Source
//! Override Structure" (ISA IRQ0 on GSI 2); Intel SDM volume 3A, 10.6.1
//! "Interrupt Command Register" (INIT, start-up), 10.4.7.3 (the APIC after
//! INIT) and 8.4.4 "MP Initialization Example" (INIT-SIPI-SIPI).
//!
//! ```text
//!  device lines ──► input n (0-15: ISA IRQs, 16-23: I/O APIC pins only)
//!     ISA IRQ n ──► 8259A input n            (IRQ2 is the cascade: no device)
//!               └─► I/O APIC pin n           (IRQ0 goes to pin 2, the MADT override)
//!  8259A INTR  ──► LINT0 of CPU 0 (ExtINT, virtual wire)
//!               └─► I/O APIC pin 0           (for an ExtINT redirection entry)
//!  I/O APIC    ──► local APICs (fixed, lowest priority, NMI, ExtINT messages)
//!  MSI, MSI-X  ──► local APICs (the same messages, sent by PCI functions)
//!  local APIC  ──► other local APICs (IPIs: fixed, lowest priority, NMI, INIT, SIPI)
//!              ──► EOI of a level vector ──► I/O APIC remote IRR
//! ```
//!
//! A line handed out by [`InterruptController::irq_line`] is one source on
//! its input; an input is asserted while any of its sources is (wired-OR), so
//! level-triggered lines can be shared.
//!
//! CPUs are numbered by index, 0 to [`InterruptController::cpus`] - 1; CPU
//! `i` has the APIC ID given for it at construction, and CPU 0 is the
//! bootstrap processor (BSP). Each CPU asks
//! [`InterruptController::interrupt_pending`] (one atomic load) and takes a
//! vector with [`InterruptController::ack_interrupt`]: its local APIC's
//! highest deliverable vector first, else the 8259A's INTA cycle when the
//! 8259A's INTR reaches it (LINT0 of CPU 0 only; another CPU only for an
//! ExtINT message). Each CPU has a kick callback that wakes it when an
//! interrupt or NMI becomes pending for it or a start-up event is queued.
//! The local APIC timers of every CPU are polled through [`TimerSource`].
//!
//! The local APIC page at 0xFEE00000 is the APIC of the CPU that accesses
//! it: the bus device reads [`current_cpu`], a per-thread value the run
//! loop sets with [`set_current_cpu`] before it runs a CPU.
//!
//! Start-up: the BSP runs from power-on; the application processors (APs)
//! wait for a start-up IPI (SIPI). An INIT IPI to an AP resets its local
//! APIC and puts it back to waiting; a SIPI to a waiting CPU starts it. The
//! run loop polls [`InterruptController::take_startup`] for the
//! [`Startup`] events of each CPU. There is no system management mode: SMI
//! IPIs are dropped.

pub mod ioapic;
pub mod lapic;
pub mod msi;
pub mod pic;

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use persist::{Persist, PersistError};

use crate::access::fill_le;
use crate::bus::{BusDevice, SharedDevice};
use crate::clock::{SharedClock, TimerSource, Tsc};
use crate::intc::ioapic::{
    DeliveryMode, InterruptMessage, IoApic, IoApicState, IOAPIC_BASE, IOAPIC_MMIO_LEN, IOAPIC_NUM_PINS,
};
use crate::intc::lapic::{
    Ipi, LapicEffect, LapicState, LocalApic, Shorthand, APIC_BASE_BSP, LAPIC_BASE, LAPIC_MMIO_LEN, MSR_IA32_APIC_BASE,
    MSR_IA32_TSC_DEADLINE, MSR_X2APIC_FIRST, MSR_X2APIC_LAST,
};
use crate::intc::msi::{MsiMessage, MsiSink};
use crate::intc::pic::{
    PicChip, PicPair, PicState, CASCADE_IRQ, ELCR_PORT, ELCR_PORT_LEN, PIC_MASTER_PORT, PIC_PORT_LEN, PIC_SLAVE_PORT,
};
use crate::irq::IrqLine;
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::BusMapping;

/// Number of interrupt inputs: the 16 ISA IRQs, then I/O APIC pins 16-23.
pub const NUM_IRQ_INPUTS: usize = IOAPIC_NUM_PINS;
/// Number of ISA IRQs, wired to both the 8259A pair and the I/O APIC.
pub const NUM_ISA_IRQS: usize = 16;
/// The I/O APIC pin of ISA IRQ0, as the MADT's interrupt source override says.
pub const IRQ0_IOAPIC_PIN: usize = 2;
/// The I/O APIC pin the 8259A's INTR output drives (for ExtINT entries).
pub const PIC_INTR_IOAPIC_PIN: usize = 0;
/// APIC ID of the I/O APIC, as the MADT and MP table give it.
pub const IOAPIC_ID: u8 = 0;
/// The most CPUs a controller has: xAPIC IDs are bytes, and 0xFF is the
/// broadcast, so IDs run from 0 to 254.
pub const MAX_CPUS: usize = 255;
/// The xAPIC broadcast destination; no CPU has it as its APIC ID.
const XAPIC_BROADCAST: u32 = 0xff;
/// Sources per input a machine may hand out; more share the last one.
const MAX_SOURCES: u32 = 64;

/// The I/O APIC pin ISA IRQ `irq` reaches.
pub fn ioapic_pin_of_isa_irq(irq: usize) -> usize {
    if irq == 0 {
        IRQ0_IOAPIC_PIN
    } else {
        irq
    }
}

thread_local! {
    /// The CPU index whose local APIC the xAPIC page of this thread reaches.
    static CURRENT_CPU: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread's accesses to the local APIC page (0xFEE00000) reach
/// the local APIC of CPU `cpu`, as a CPU's own accesses do on hardware. A
/// run loop calls it on each vCPU thread, or before each vCPU's slice when
/// one thread runs several. An index past the last CPU makes the page read
/// as all ones and ignore writes.
pub fn set_current_cpu(cpu: usize) {
    CURRENT_CPU.with(|c| c.set(cpu));
}

/// The CPU index [`set_current_cpu`] last set on this thread (0 until then).
pub fn current_cpu() -> usize {
    CURRENT_CPU.with(Cell::get)
}

/// Where device lines go when a hypervisor models the controllers.
type Forward = Arc<dyn Fn(u32, bool) + Send + Sync>;
/// Where message-signalled interrupts go when a hypervisor models the controllers.
type MsiForward = Arc<dyn Fn(MsiMessage) + Send + Sync>;
/// What wakes a CPU.
type Kick = Arc<dyn Fn() + Send + Sync>;

/// A start-up event for the run loop of one CPU, from
/// [`InterruptController::take_startup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Startup {
    /// An INIT: reset the CPU (its registers to their INIT values; the
    /// local APIC is already reset) and stop running it until a SIPI.
    Init,
    /// A start-up IPI with this vector: start the CPU in real mode at
    /// CS selector `vector << 8`, CS base `vector << 12`, IP 0.
    Sipi(u8),
}

/// The start-up state of one CPU, for save and restore.
///
/// A SIPI marks a waiting CPU running, so a queued SIPI never goes with
/// `waiting_for_sipi`; an INIT puts the CPU to waiting, so a queued INIT on
/// a running CPU always has a SIPI after it. The BSP always runs with
/// nothing queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CpuStartupState {
    /// The CPU is in the wait-for-SIPI state: the run loop does not run it.
    pub waiting_for_sipi: bool,
    /// An INIT waits for the run loop ([`Startup::Init`], taken first).
    pub init_pending: bool,
    /// The vector of a SIPI that waits for the run loop ([`Startup::Sipi`]).
    pub sipi_pending: Option<u8>,
}

impl CpuStartupState {
    /// A running CPU with nothing queued (the BSP at power-on).
    const RUNNING: Self = Self { waiting_for_sipi: false, init_pending: false, sipi_pending: None };
    /// A CPU waiting for SIPI with nothing queued (an AP at power-on).
    const WAITING: Self = Self { waiting_for_sipi: true, init_pending: false, sipi_pending: None };

    /// Something waits for the run loop.
    fn queued(&self) -> bool {
        self.init_pending || self.sipi_pending.is_some()
    }

    /// Whether the controller can reach this state (see the type's docs).
    fn reachable(&self, bsp: bool) -> bool {
        if bsp {
            return *self == Self::RUNNING;
        }
        let sipi_while_waiting = self.waiting_for_sipi && self.sipi_pending.is_some();
        let init_without_sipi = !self.waiting_for_sipi && self.init_pending && self.sipi_pending.is_none();
        !sipi_while_waiting && !init_without_sipi
    }
}

/// The IPIs the local APICs have sent, by delivery mode, for statistics.
/// Each ICR write that sends counts once, whatever the number of
/// destinations (the x2APIC SELF IPI register counts as fixed); an INIT
/// level de-assert, which does nothing, and an IPI refused for an illegal
/// vector do not count. The counts survive a machine reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpiCounts {
    /// Fixed IPIs.
    pub fixed: u64,
    /// Lowest-priority IPIs.
    pub lowest_priority: u64,
    /// NMI IPIs.
    pub nmi: u64,
    /// INIT IPIs (level assert).
    pub init: u64,
    /// Start-up IPIs.
    pub sipi: u64,
    /// SMI IPIs (dropped: there is no system management mode).
    pub smi: u64,
}

/// One line: `IPIs: 12 fixed, 0 lowest-priority, 1 NMI, 3 INIT, 6 SIPI, 0 SMI`.
impl fmt::Display for IpiCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPIs: {} fixed, {} lowest-priority, {} NMI, {} INIT, {} SIPI, {} SMI",
            self.fixed, self.lowest_priority, self.nmi, self.init, self.sipi, self.smi
        )
    }
}

/// The state of the whole interrupt controller, for save and restore.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InterruptControllerState {
    /// The 8259A pair.
    pub pic: PicState,
    /// The I/O APIC.
    pub ioapic: IoApicState,
    /// The local APICs, by CPU index.
    pub lapics: Vec<LapicState>,
    /// The start-up state of each CPU, by CPU index.
    pub cpus: Vec<CpuStartupState>,
    /// The asserted sources of each input, bit n for the n-th line handed
    /// out on it (the devices' line levels the inputs are the OR of).
    pub sources: [u64; NUM_IRQ_INPUTS],
}

/// The part name the interrupt controller's errors carry.
const PART: &str = "interrupt controller";

/// What the controller logs once each.
#[derive(Debug, Default)]
struct Logs {
    /// Odd accesses and unsupported message delivery modes.
    general: LogOnce,
    /// SMI IPIs.
    smi: LogOnce,
    /// INIT IPIs to the BSP.
    init_bsp: LogOnce,
    /// IPIs with a reserved delivery mode.
    ipi_mode: LogOnce,
}

struct Inner {
    pic: PicPair,
    ioapic: IoApic,
    lapics: Vec<LocalApic>,
    /// The start-up state of each CPU (as many as `lapics`).
    cpus: Vec<CpuStartupState>,
    /// Asserted sources of each input, bit n for the n-th line handed out.
    sources: [u64; NUM_IRQ_INPUTS],
    /// Lines handed out per input.
    allocated: [u32; NUM_IRQ_INPUTS],
    ipis: IpiCounts,
}

/// What each CPU polls, and what wakes it.
struct CpuSignals {
    intr: AtomicBool,
    nmi: AtomicBool,
    startup: AtomicBool,
    /// The CPU waits for a start-up IPI.
    waiting: AtomicBool,
    kick: RwLock<Option<Kick>>,
}

impl CpuSignals {
    fn new(waiting: bool) -> Self {
        Self {
            intr: AtomicBool::new(false),
            nmi: AtomicBool::new(false),
            startup: AtomicBool::new(false),
            waiting: AtomicBool::new(waiting),
            kick: RwLock::new(None),
        }
    }

    /// Stores the flags; true if one rose.
    fn update(&self, intr: bool, nmi: bool, startup: bool) -> bool {
        let intr_was = self.intr.swap(intr, Ordering::AcqRel);
        let nmi_was = self.nmi.swap(nmi, Ordering::AcqRel);
        let startup_was = self.startup.swap(startup, Ordering::AcqRel);
        (intr && !intr_was) || (nmi && !nmi_was) || (startup && !startup_was)
    }
}

/// The interrupt controllers of a PC.
pub struct InterruptController {
    inner: Mutex<Inner>,
    clock: SharedClock,
    /// The APIC ID of each CPU.
    apic_ids: Vec<u32>,
    /// The flags and kick of each CPU.
    signals: Vec<CpuSignals>,
    /// When set, device lines drive this instead of the emulated controllers
    /// (a hypervisor's in-kernel irqchip takes them by input number).
    forward: RwLock<Option<Forward>>,
    /// The same for message-signalled interrupts.
    msi_forward: RwLock<Option<MsiForward>>,
    logs: Logs,
}

impl fmt::Debug for InterruptController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags: Vec<_> = self
            .signals
            .iter()
            .map(|s| (s.intr.load(Ordering::Relaxed), s.nmi.load(Ordering::Relaxed), s.startup.load(Ordering::Relaxed)))
            .collect();
        f.debug_struct("InterruptController")
            .field("apic_ids", &self.apic_ids)
            .field("intr_nmi_startup_pending", &flags)
            .finish_non_exhaustive()
    }
}

/// Sends an interrupt message (from the I/O APIC or a device's MSI) to the
/// local APICs; true if one accepted it. A lowest-priority message goes to
/// the software-enabled destination with the lowest processor priority, the
/// lowest CPU index among equals.
fn deliver(lapics: &mut [LocalApic], msg: InterruptMessage, log: &LogOnce) -> bool {
    let dest = |l: &&mut LocalApic| l.matches(msg.destination, msg.logical, XAPIC_BROADCAST);
    match msg.delivery_mode {
        DeliveryMode::Fixed => {
            lapics.iter_mut().filter(dest).fold(false, |any, l| l.accept_fixed(msg.vector, msg.level_triggered) | any)
        }
        DeliveryMode::LowestPriority => lapics
            .iter_mut()
            .filter(dest)
            .filter(|l| l.enabled())
            .min_by_key(|l| l.ppr())
            .is_some_and(|l| l.accept_fixed(msg.vector, msg.level_triggered)),
        DeliveryMode::Nmi => lapics.iter_mut().filter(dest).fold(false, |any, l| l.accept_nmi() | any),
        DeliveryMode::ExtInt => lapics.iter_mut().filter(dest).fold(false, |any, l| l.accept_extint() | any),
        mode => {
            if log.first(Misuse::Unimplemented) {
                tracing::warn!(target: "devices", ?mode, "I/O APIC or MSI: delivery mode not supported (SMI, INIT and start-up come only as IPIs); message dropped (logged once)");
            }
            false
        }
    }
}

/// The APIC IDs a controller uses for `ids`: at least one CPU (an empty
/// list is one CPU with ID 0), at most [`MAX_CPUS`] (more are left out),
/// and each ID below 0xFF and unique (an ID that is not gets the lowest
/// free one). Each change is logged.
fn usable_apic_ids(ids: &[u32]) -> Vec<u32> {
    if ids.is_empty() {
        tracing::warn!(target: "devices", "interrupt controller: no CPUs given; one CPU with APIC ID 0");
        return vec![0];
    }
    let ids = match ids.get(..MAX_CPUS) {
        Some(first) if ids.len() > MAX_CPUS => {
            tracing::warn!(target: "devices", cpus = ids.len(), max = MAX_CPUS, "interrupt controller: too many CPUs; the last ones are left out");
            first
        }
        _ => ids,
    };
    let mut used = [false; MAX_CPUS];
    let mut keep = vec![false; ids.len()];
    for (k, &id) in keep.iter_mut().zip(ids) {
        if let Some(u) = usize::try_from(id).ok().and_then(|i| used.get_mut(i)) {
            *k = !*u;
            *u = true;
        }
    }
    ids.iter()
        .zip(keep)
        .enumerate()
        .map(|(cpu, (&id, keep))| {
            if keep {
                return id;
            }
            // At most MAX_CPUS CPUs: a free ID is left for each refused one.
            let free = used.iter().position(|&u| !u).unwrap_or(0);
            if let Some(u) = used.get_mut(free) {
                *u = true;
            }
            let free = free as u32;
            tracing::warn!(target: "devices", cpu, id, free, "interrupt controller: an APIC ID that is 0xff or more or taken; the CPU gets a free one");
            free
        })
        .collect()
}

impl Inner {
    /// The power-on state: the BSP's local APIC as firmware leaves it
    /// (virtual wire mode), the APs' at reset, the APs waiting for SIPI.
    fn new(tsc: &Arc<Tsc>, apic_ids: &[u32]) -> Self {
        let lapics = apic_ids
            .iter()
            .enumerate()
            .map(|(cpu, &id)| {
                let mut lapic = LocalApic::new(id, cpu == 0, Arc::clone(tsc));
                if cpu == 0 {
                    lapic.bios_virtual_wire();
                }
                lapic
            })
            .collect();
        let cpus = (0..apic_ids.len())
            .map(|cpu| if cpu == 0 { CpuStartupState::RUNNING } else { CpuStartupState::WAITING })
            .collect();
        Self {
            pic: PicPair::new(),
            ioapic: IoApic::new(IOAPIC_ID),
            lapics,
            cpus,
            sources: [0; NUM_IRQ_INPUTS],
            allocated: [0; NUM_IRQ_INPUTS],
            ipis: IpiCounts::default(),
        }
    }

    fn ioapic_set(&mut self, pin: usize, level: bool, log: &LogOnce) {
        let Inner { ioapic, lapics, .. } = self;
        ioapic.set_irq(pin, level, &mut |m| deliver(lapics, m, log));
    }

    /// Mirrors the 8259A's INTR onto I/O APIC pin 0.
    fn sync_pic_intr(&mut self, log: &LogOnce) {
        let intr = self.pic.output();
        self.ioapic_set(PIC_INTR_IOAPIC_PIN, intr, log);
    }

    /// Drives input `irq` to the OR of its sources.
    fn set_input(&mut self, irq: usize, source: u32, level: bool, log: &LogOnce) {
        let Some(after) = self.record_source(irq, source, level) else { return };
        if irq < NUM_ISA_IRQS {
            if irq != usize::from(CASCADE_IRQ) {
                self.pic.set_irq(irq as u8, after);
                self.sync_pic_intr(log);
            }
            self.ioapic_set(ioapic_pin_of_isa_irq(irq), after, log);
        } else {
            self.ioapic_set(irq, after, log);
        }
    }

    /// Records `source`'s level on input `irq`; the input's level (the OR
    /// of its sources) when that changed.
    fn record_source(&mut self, irq: usize, source: u32, level: bool) -> Option<bool> {
        let bit = 1u64 << source.min(MAX_SOURCES - 1);
        let before = self.sources[irq] != 0;
        if level {
            self.sources[irq] |= bit;
        } else {
            self.sources[irq] &= !bit;
        }
        let after = self.sources[irq] != 0;
        (before != after).then_some(after)
    }

    fn apply(&mut self, cpu: usize, effect: Option<LapicEffect>, logs: &Logs) {
        match effect {
            None => {}
            Some(LapicEffect::EoiBroadcast(vector)) => {
                let Inner { ioapic, lapics, .. } = self;
                ioapic.end_of_interrupt(vector, &mut |m| deliver(lapics, m, &logs.general));
            }
            Some(LapicEffect::Ipi(ipi)) => self.send_ipi(cpu, ipi, logs),
        }
    }

    /// Delivers an IPI CPU `from` sent, to every destination the ICR names.
    fn send_ipi(&mut self, from: usize, ipi: Ipi, logs: &Logs) {
        let Some(sender) = self.lapics.get(from) else { return };
        let broadcast = if sender.x2apic() { u32::MAX } else { XAPIC_BROADCAST };
        let is_target = |cpu: usize, lapic: &LocalApic| match ipi.shorthand {
            Shorthand::SelfOnly => cpu == from,
            Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => cpu != from,
            Shorthand::None => lapic.matches(ipi.destination, ipi.logical, broadcast),
        };
        let Inner { lapics, cpus, ipis, .. } = self;
        let count = |n: &mut u64| *n = n.saturating_add(1);
        match ipi.delivery_mode {
            DeliveryMode::Fixed => {
                count(&mut ipis.fixed);
                for (cpu, lapic) in lapics.iter_mut().enumerate() {
                    if is_target(cpu, lapic) {
                        lapic.accept_fixed(ipi.vector, false);
                    }
                }
            }
            DeliveryMode::LowestPriority => {
                count(&mut ipis.lowest_priority);
                let chosen = lapics
                    .iter_mut()
                    .enumerate()
                    .filter(|(cpu, lapic)| is_target(*cpu, lapic) && lapic.enabled())
                    .min_by_key(|(_, lapic)| lapic.ppr());
                if let Some((_, lapic)) = chosen {
                    lapic.accept_fixed(ipi.vector, false);
                }
            }
            DeliveryMode::Nmi => {
                count(&mut ipis.nmi);
                for (cpu, lapic) in lapics.iter_mut().enumerate() {
                    if is_target(cpu, lapic) {
                        lapic.accept_nmi();
                    }
                }
            }
            // The de-assert half of an INIT is a no-op on modern processors.
            DeliveryMode::Init if !ipi.assert && ipi.level_triggered => {}
            DeliveryMode::Init => {
                count(&mut ipis.init);
                for (cpu, (lapic, state)) in lapics.iter_mut().zip(cpus.iter_mut()).enumerate() {
                    if !is_target(cpu, lapic) || !lapic.hw_enabled() {
                        continue;
                    }
                    if lapic.is_bsp() {
                        // The BSP would restart at the reset vector, which
                        // a start-up event cannot say.
                        if logs.init_bsp.first(Misuse::Unimplemented) {
                            tracing::warn!(target: "devices", cpu, "local APIC: INIT IPI to the bootstrap processor is not modelled; dropped (logged once)");
                        }
                        continue;
                    }
                    lapic.init_reset();
                    *state = CpuStartupState { waiting_for_sipi: true, init_pending: true, sipi_pending: None };
                }
            }
            DeliveryMode::StartUp => {
                count(&mut ipis.sipi);
                for (cpu, (lapic, state)) in lapics.iter_mut().zip(cpus.iter_mut()).enumerate() {
                    if is_target(cpu, lapic) && lapic.hw_enabled() && state.waiting_for_sipi {
                        state.waiting_for_sipi = false;
                        state.sipi_pending = Some(ipi.vector);
                    }
                }
            }
            DeliveryMode::Smi => {
                count(&mut ipis.smi);
                if logs.smi.first(Misuse::Unimplemented) {
                    tracing::warn!(
                        target: "devices",
                        destination = ipi.destination,
                        shorthand = ?ipi.shorthand,
                        "local APIC: SMI IPI dropped: system management mode is not modelled (logged once)"
                    );
                }
            }
            mode => {
                if logs.ipi_mode.first(Misuse::Unimplemented) {
                    tracing::warn!(
                        target: "devices",
                        ?mode,
                        destination = ipi.destination,
                        shorthand = ?ipi.shorthand,
                        "local APIC: IPI with a reserved delivery mode (ExtINT or reserved encoding); dropped (logged once)"
                    );
                }
            }
        }
    }

    /// Whether CPU `cpu` waits for SIPI (false past the last CPU).
    fn waiting(&self, cpu: usize) -> bool {
        self.cpus.get(cpu).is_some_and(|s| s.waiting_for_sipi)
    }

    /// Whether the 8259A's INTR reaches CPU `cpu`: CPU 0 through LINT0 (or
    /// an ExtINT message), another CPU through an ExtINT message only.
    fn pic_reaches(&self, cpu: usize) -> bool {
        let Some(lapic) = self.lapics.get(cpu) else { return false };
        let wired = if cpu == 0 { lapic.accepts_pic_interrupts() } else { lapic.extint_pending() };
        wired && self.pic.output()
    }

    fn intr_pending(&self, cpu: usize) -> bool {
        let Some(lapic) = self.lapics.get(cpu) else { return false };
        !self.waiting(cpu) && (lapic.deliverable().is_some() || self.pic_reaches(cpu))
    }

    fn nmi_pending(&self, cpu: usize) -> bool {
        !self.waiting(cpu) && self.lapics.get(cpu).is_some_and(LocalApic::nmi_pending)
    }

    fn save(&self) -> InterruptControllerState {
        InterruptControllerState {
            pic: self.pic.save(),
            ioapic: self.ioapic.save(),
            lapics: self.lapics.iter().map(LocalApic::save).collect(),
            cpus: self.cpus.clone(),
            sources: self.sources,
        }
    }

    /// The checks of a restore, changing nothing: each controller's state,
    /// one local APIC and one start-up state per CPU, the BSP bit on CPU 0
    /// only, start-up states the controller can reach, sources only on
    /// lines this machine handed out, and the 8259A's and the I/O APIC's
    /// input lines as the sources (and, for I/O APIC pin 0, the 8259A's
    /// INTR) drive them.
    fn check_state(&self, state: &InterruptControllerState) -> Result<(), PersistError> {
        self.pic.check_state(&state.pic)?;
        IoApic::check_state(&state.ioapic)?;
        PersistError::check_len(PART, "lapics", state.lapics.len(), self.lapics.len())?;
        for (cpu, lapic) in state.lapics.iter().enumerate() {
            LocalApic::check_state(lapic)?;
            PersistError::check((lapic.apic_base & APIC_BASE_BSP != 0) == (cpu == 0), PART, "lapics", || {
                format!("CPU {cpu} has IA32_APIC_BASE {:#x}; the BSP bit is CPU 0's only", lapic.apic_base)
            })?;
        }
        PersistError::check_len(PART, "cpus", state.cpus.len(), self.cpus.len())?;
        for (cpu, s) in state.cpus.iter().enumerate() {
            PersistError::check(s.reachable(cpu == 0), PART, "cpus", || {
                format!("CPU {cpu} has the start-up state {s:?}, which INIT and SIPI never leave")
            })?;
        }
        for (input, (&sources, &allocated)) in state.sources.iter().zip(&self.allocated).enumerate() {
            let handed_out = if allocated >= u64::BITS { u64::MAX } else { (1u64 << allocated) - 1 };
            PersistError::check(sources & !handed_out == 0, PART, "sources", || {
                format!("of input {input} are {sources:#x}, but this machine has {allocated} lines on it")
            })?;
        }
        let line = |input: usize| state.sources[input] != 0;
        for irq in (0..NUM_ISA_IRQS).filter(|&i| i != usize::from(CASCADE_IRQ)) {
            let lines = if irq < 8 { state.pic.master.lines } else { state.pic.slave.lines };
            PersistError::check(((lines >> (irq % 8)) & 1 != 0) == line(irq), PART, "pic", || {
                format!("input line {irq} is not what its sources ({:#x}) drive", state.sources[irq])
            })?;
        }
        let want = ioapic_lines(&state.sources, &state.pic);
        for pin in 0..IOAPIC_NUM_PINS {
            PersistError::check((state.ioapic.lines ^ want) & (1 << pin) == 0, PART, "ioapic", || {
                format!("input line {pin} is not what drives it")
            })?;
        }
        Ok(())
    }

    /// Loads a state [`Inner::check_state`] passed. Nothing is delivered.
    fn load_state(&mut self, state: &InterruptControllerState) {
        self.pic.load_state(&state.pic);
        self.ioapic.load_state(&state.ioapic);
        for (lapic, s) in self.lapics.iter_mut().zip(&state.lapics) {
            lapic.load_state(s);
        }
        self.cpus.clone_from(&state.cpus);
        self.sources = state.sources;
    }

    fn acknowledge(&mut self, cpu: usize, log: &LogOnce) -> Option<u8> {
        if self.waiting(cpu) {
            return None;
        }
        if let Some(vector) = self.lapics.get_mut(cpu)?.acknowledge() {
            return Some(vector);
        }
        if self.pic_reaches(cpu) {
            self.lapics.get_mut(cpu)?.pic_acknowledged();
            let vector = self.pic.acknowledge();
            self.sync_pic_intr(log);
            return Some(vector);
        }
        None
    }
}

impl InterruptController {
    /// The interrupt controllers of a PC with one CPU per entry of
    /// `apic_ids`, CPU `i` with APIC ID `apic_ids[i]` (IDs need not be
    /// contiguous), as firmware leaves them: the 8259A pair uninitialised,
    /// every I/O APIC entry masked, the BSP's (CPU 0's) local APIC enabled
    /// in virtual wire mode (LINT0 ExtINT, LINT1 NMI), the APs' local APICs
    /// at their power-on reset (software-disabled, the LVT masked) and the
    /// APs waiting for SIPI. `tsc` is the counter the TSC-deadline timers
    /// compare with.
    ///
    /// Bad lists are mended, with a warning, rather than refused: an empty
    /// list is one CPU with APIC ID 0, CPUs past [`MAX_CPUS`] are left out,
    /// and a CPU whose ID is 0xFF or more, or an earlier CPU's, gets the
    /// lowest free ID. [`InterruptController::apic_id`] tells the IDs used.
    pub fn new(clock: SharedClock, tsc: Arc<Tsc>, apic_ids: &[u32]) -> Arc<Self> {
        let apic_ids = usable_apic_ids(apic_ids);
        let inner = Inner::new(&tsc, &apic_ids);
        let signals = (0..apic_ids.len()).map(|cpu| CpuSignals::new(inner.waiting(cpu))).collect();
        Arc::new(Self {
            inner: Mutex::new(inner),
            clock,
            signals,
            apic_ids,
            forward: RwLock::new(None),
            msi_forward: RwLock::new(None),
            logs: Logs::default(),
        })
    }

    /// The number of CPUs.
    pub fn cpus(&self) -> usize {
        self.apic_ids.len()
    }

    /// The APIC ID of CPU `cpu` (its x2APIC ID, and its xAPIC ID at reset);
    /// `u32::MAX`, which no CPU has, past the last CPU.
    pub fn apic_id(&self, cpu: usize) -> u32 {
        self.apic_ids.get(cpu).copied().unwrap_or(u32::MAX)
    }

    /// Runs `f` on the controllers and refreshes every CPU's pending flags;
    /// kicks, with no lock held, each CPU whose flag rose.
    fn with<R>(&self, f: impl FnOnce(&mut Inner, u64, &Logs) -> R) -> R {
        let now = self.clock.now_ns();
        let mut rose = [0u64; MAX_CPUS.div_ceil(64)];
        let result = {
            let mut inner = self.inner.lock();
            let result = f(&mut inner, now, &self.logs);
            for (cpu, signals) in self.signals.iter().enumerate() {
                let startup = inner.cpus.get(cpu).is_some_and(CpuStartupState::queued);
                signals.waiting.store(inner.waiting(cpu), Ordering::Release);
                if signals.update(inner.intr_pending(cpu), inner.nmi_pending(cpu), startup) {
                    if let Some(word) = rose.get_mut(cpu / 64) {
                        *word |= 1 << (cpu % 64);
                    }
                }
            }
            result
        };
        for (word, &bits) in rose.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let cpu = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let kick = self.signals.get(cpu).and_then(|s| s.kick.read().clone());
                if let Some(kick) = kick {
                    kick();
                }
            }
        }
        result
    }

    /// Installs the callback that wakes CPU `cpu` when an interrupt or NMI
    /// becomes pending for it or a start-up event is queued for it (it
    /// replaces any earlier one; an index past the last CPU is ignored). It
    /// runs with no lock held, on whatever thread raised the event.
    pub fn set_kick(&self, cpu: usize, kick: Box<dyn Fn() + Send + Sync>) {
        if let Some(signals) = self.signals.get(cpu) {
            *signals.kick.write() = Some(Arc::from(kick));
        }
    }

    /// Route every device line to `forward(input, level)` instead of the
    /// emulated PIC and I/O APIC: used when KVM's in-kernel irqchip models
    /// them. Input numbers are ISA IRQs 0-15 and GSIs 16-23, as KVM's default
    /// routing numbers them.
    pub fn set_forward(&self, forward: Box<dyn Fn(u32, bool) + Send + Sync>) {
        *self.forward.write() = Some(Arc::from(forward));
    }

    /// Send message-signalled interrupts to `forward` instead of the emulated
    /// local APICs: used when KVM's in-kernel irqchip models them.
    pub fn set_msi_forward(&self, forward: Box<dyn Fn(MsiMessage) + Send + Sync>) {
        *self.msi_forward.write() = Some(Arc::from(forward));
    }

    /// Ends [`InterruptController::set_forward`] and
    /// [`InterruptController::set_msi_forward`]: lines and messages reach
    /// the emulated controllers again (the in-kernel ones went, and their
    /// state is here now).
    pub fn clear_forward(&self) {
        *self.forward.write() = None;
        *self.msi_forward.write() = None;
    }

    /// Replaces the 8259A pair's and the I/O APIC's state with the state
    /// of the controllers that stood in for them (a hypervisor's). Their
    /// input lines are set from the sources kept here, which stay as they
    /// are. The whole state is checked first; on an error nothing changes.
    pub fn set_chip_state(&self, mut pic: PicState, mut ioapic: IoApicState) -> Result<(), PersistError> {
        self.with(|inner, _, _| {
            let mut state = inner.save();
            let line = |input: usize| state.sources[input] != 0;
            for irq in (0..NUM_ISA_IRQS).filter(|&i| i != usize::from(CASCADE_IRQ)) {
                let chip = if irq < 8 { &mut pic.master } else { &mut pic.slave };
                let bit = 1u8 << (irq % 8);
                if line(irq) {
                    chip.lines |= bit;
                } else {
                    chip.lines &= !bit;
                }
            }
            ioapic.lines = ioapic_lines(&state.sources, &pic);
            state.pic = pic;
            state.ioapic = ioapic;
            inner.check_state(&state)?;
            inner.load_state(&state);
            Ok(())
        })
    }

    /// CPU `cpu`'s local APIC and start-up state, `None` past the last CPU.
    pub fn cpu_state(&self, cpu: usize) -> Option<(LapicState, CpuStartupState)> {
        let inner = self.inner.lock();
        Some((inner.lapics.get(cpu)?.save(), *inner.cpus.get(cpu)?))
    }

    /// Replaces CPU `cpu`'s local APIC and start-up state (with those of
    /// the APIC that stood in for it). The whole state is checked first;
    /// on an error nothing changes.
    pub fn set_cpu_state(&self, cpu: usize, lapic: LapicState, startup: CpuStartupState) -> Result<(), PersistError> {
        self.with(|inner, _, _| {
            let mut state = inner.save();
            PersistError::check(cpu < state.lapics.len(), PART, "lapics", || format!("there is no CPU {cpu}"))?;
            state.lapics[cpu] = lapic;
            state.cpus[cpu] = startup;
            inner.check_state(&state)?;
            inner.load_state(&state);
            Ok(())
        })
    }

    /// A line driving input `irq`: 0-15 are ISA IRQs (8259A input `irq` and
    /// I/O APIC pin `irq`, IRQ0 on pin 2), 16-23 are I/O APIC pins only, as
    /// GSIs. Each call adds one source; the input is asserted while any
    /// source is. IRQ2 (the cascade) and numbers past 23 give a line that
    /// drives nothing.
    pub fn irq_line(self: &Arc<Self>, irq: u32) -> Arc<dyn IrqLine> {
        let valid = usize::try_from(irq).ok().filter(|&i| i < NUM_IRQ_INPUTS && i != usize::from(CASCADE_IRQ));
        let Some(input) = valid else {
            tracing::warn!(target: "devices", irq, "no device may use this interrupt input; the line is left unconnected");
            return Arc::new(crate::irq::NoIrq);
        };
        let source = {
            let mut inner = self.inner.lock();
            let n = inner.allocated[input];
            inner.allocated[input] = n.saturating_add(1);
            if n >= MAX_SOURCES {
                tracing::warn!(target: "devices", irq, "more than 64 lines on one input; they share one source");
            }
            n.min(MAX_SOURCES - 1)
        };
        Arc::new(ControllerLine { intc: Arc::clone(self), input, source })
    }

    /// An interrupt is waiting for CPU `cpu` (it still has to check
    /// RFLAGS.IF). One atomic load; false past the last CPU and while the
    /// CPU waits for SIPI.
    pub fn interrupt_pending(&self, cpu: usize) -> bool {
        self.signals.get(cpu).is_some_and(|s| s.intr.load(Ordering::Acquire))
    }

    /// CPU `cpu` accepts an interrupt: the vector to deliver, or `None` if
    /// nothing is pending any more (or the index is past the last CPU, or
    /// the CPU waits for SIPI).
    pub fn ack_interrupt(&self, cpu: usize) -> Option<u8> {
        self.with(|inner, _, logs| inner.acknowledge(cpu, &logs.general))
    }

    /// An NMI is waiting for CPU `cpu` (one atomic load; false past the
    /// last CPU and while the CPU waits for SIPI).
    pub fn nmi_pending(&self, cpu: usize) -> bool {
        self.signals.get(cpu).is_some_and(|s| s.nmi.load(Ordering::Acquire))
    }

    /// CPU `cpu` takes a pending NMI (false when none is, past the last
    /// CPU, and while the CPU waits for SIPI).
    pub fn take_nmi(&self, cpu: usize) -> bool {
        // The flag is kept with the controller's state, under its lock: the
        // lock is only worth taking when it is up.
        if !self.nmi_pending(cpu) {
            return false;
        }
        self.with(|inner, _, _| !inner.waiting(cpu) && inner.lapics.get_mut(cpu).is_some_and(LocalApic::take_nmi))
    }

    /// CPU `cpu` takes its next start-up event: an INIT first, then a SIPI
    /// (both may be queued when the run loop was slow to look; call again
    /// until `None`). `None` when nothing is queued or past the last CPU.
    pub fn take_startup(&self, cpu: usize) -> Option<Startup> {
        let signals = self.signals.get(cpu)?;
        if !signals.startup.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = self.inner.lock();
        let state = inner.cpus.get_mut(cpu)?;
        let taken = if std::mem::take(&mut state.init_pending) {
            Some(Startup::Init)
        } else {
            state.sipi_pending.take().map(Startup::Sipi)
        };
        signals.startup.store(state.queued(), Ordering::Release);
        taken
    }

    /// A start-up event waits for CPU `cpu` (one atomic load; false past
    /// the last CPU).
    pub fn startup_pending(&self, cpu: usize) -> bool {
        self.signals.get(cpu).is_some_and(|s| s.startup.load(Ordering::Acquire))
    }

    /// CPU `cpu` is in the wait-for-SIPI state: the run loop must not run
    /// it (an AP from power-on or a reset, and after an INIT, until a SIPI).
    /// False past the last CPU.
    pub fn waiting_for_sipi(&self, cpu: usize) -> bool {
        self.signals.get(cpu).is_some_and(|s| s.waiting.load(Ordering::Acquire))
    }

    /// The IPIs sent so far, by delivery mode.
    pub fn ipi_counts(&self) -> IpiCounts {
        self.inner.lock().ipis
    }

    /// Whether RDMSR/WRMSR of `msr` belongs to the local APIC: IA32_APIC_BASE,
    /// IA32_TSC_DEADLINE and the x2APIC range 0x800-0x8FF.
    pub fn handles_msr(msr: u32) -> bool {
        matches!(msr, MSR_IA32_APIC_BASE | MSR_IA32_TSC_DEADLINE) || (MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr)
    }

    /// RDMSR on CPU `cpu` of a local APIC MSR. `None` means #GP(0) (an
    /// x2APIC register outside x2APIC mode, a write-only register, an
    /// unknown MSR, a CPU index past the last CPU).
    pub fn msr_read(&self, cpu: usize, msr: u32) -> Option<u64> {
        let now = self.clock.now_ns();
        let inner = self.inner.lock();
        let lapic = inner.lapics.get(cpu)?;
        match msr {
            MSR_IA32_APIC_BASE => Some(lapic.apic_base()),
            MSR_IA32_TSC_DEADLINE => Some(lapic.tsc_deadline()),
            _ => lapic.x2apic_msr_read(msr, now).ok(),
        }
    }

    /// WRMSR on CPU `cpu` of a local APIC MSR. False means #GP(0) (as for
    /// [`InterruptController::msr_read`]). An IPI sent through the x2APIC
    /// ICR is delivered, and the destinations' flags set, before it returns.
    pub fn msr_write(&self, cpu: usize, msr: u32, value: u64) -> bool {
        self.with(|inner, now, logs| {
            let Some(lapic) = inner.lapics.get_mut(cpu) else { return false };
            match msr {
                MSR_IA32_APIC_BASE => lapic.write_apic_base(value).is_ok(),
                MSR_IA32_TSC_DEADLINE => {
                    lapic.set_tsc_deadline(value);
                    true
                }
                _ => match lapic.x2apic_msr_write(msr, value, now) {
                    Ok(effect) => {
                        inner.apply(cpu, effect, logs);
                        true
                    }
                    Err(_) => false,
                },
            }
        })
    }

    /// CR8 of CPU `cpu`: the task priority's high nibble (0 past the last CPU).
    pub fn cr8(&self, cpu: usize) -> u64 {
        self.inner.lock().lapics.get(cpu).map_or(0, |l| u64::from(l.tpr() >> 4))
    }

    /// A MOV to CR8 on CPU `cpu` (bits 63:4 must be zero; the CPU checks).
    /// Ignored past the last CPU.
    pub fn set_cr8(&self, cpu: usize, value: u64) {
        let tpr = ((value & 0xf) << 4) as u8;
        self.with(|inner, _, _| {
            if let Some(lapic) = inner.lapics.get_mut(cpu) {
                lapic.set_tpr(tpr);
            }
        });
    }

    /// Sets ELCR1 (`index` 0) or ELCR2 (`index` 1), as a BIOS does for the
    /// level-triggered ISA IRQs (PCI and the SCI).
    pub fn write_elcr(&self, index: u8, value: u8) {
        self.with(|inner, _, logs| {
            inner.pic.write_elcr(index, value);
            inner.sync_pic_intr(&logs.general);
        });
    }

    /// Resets every controller to its power-on state (a system reset): the
    /// BSP's local APIC in virtual wire mode, the APs' at reset and the APs
    /// waiting for SIPI, no start-up event queued. The lines handed out
    /// stay valid; their levels are re-applied. The IPI counts are kept.
    pub fn reset(&self, tsc: &Arc<Tsc>) {
        self.with(|inner, _, logs| {
            let sources = inner.sources;
            let allocated = inner.allocated;
            let ipis = inner.ipis;
            *inner = Inner::new(tsc, &self.apic_ids);
            inner.allocated = allocated;
            inner.ipis = ipis;
            for (irq, &s) in sources.iter().enumerate() {
                for source in (0..MAX_SOURCES).filter(|b| s & (1 << b) != 0) {
                    inner.set_input(irq, source, true, &logs.general);
                }
            }
        });
    }

    /// [`Persist::restore`] through a shared reference, as the machine holds
    /// the controller (`Arc<InterruptController>`).
    pub fn restore_shared(&self, state: &InterruptControllerState) -> Result<(), PersistError> {
        self.check_shared(state)?;
        self.load_shared(state);
        Ok(())
    }

    /// Loads a state [`InterruptController::check_shared`] passed and
    /// recomputes the pending flags. Nothing is delivered.
    pub(crate) fn load_shared(&self, state: &InterruptControllerState) {
        self.with(|inner, _, _| inner.load_state(state));
    }

    /// The checks of a restore, changing nothing (for a machine that checks
    /// every part before it loads any).
    pub(crate) fn check_shared(&self, state: &InterruptControllerState) -> Result<(), PersistError> {
        self.inner.lock().check_state(state)
    }

    /// The ranges the controllers answer on: the 8259A ports, the ELCR, the
    /// I/O APIC page and the local APIC page (the APIC of the accessing
    /// thread's [`current_cpu`]).
    pub fn bus_mappings(self: &Arc<Self>) -> Vec<BusMapping> {
        let port = |window| -> SharedDevice { Arc::new(Mutex::new(IntcPort { intc: Arc::clone(self), window })) };
        vec![
            BusMapping::pio(u64::from(PIC_MASTER_PORT), PIC_PORT_LEN, port(Window::PicMaster)),
            BusMapping::pio(u64::from(PIC_SLAVE_PORT), PIC_PORT_LEN, port(Window::PicSlave)),
            BusMapping::pio(u64::from(ELCR_PORT), ELCR_PORT_LEN, port(Window::Elcr)),
            BusMapping::mmio(IOAPIC_BASE, IOAPIC_MMIO_LEN, port(Window::IoApic)),
            BusMapping::mmio(LAPIC_BASE, LAPIC_MMIO_LEN, port(Window::LocalApic)),
        ]
    }

    fn log_access(&self, window: Window, offset: u64, size: usize) {
        if self.logs.general.first(Misuse::AccessSize) {
            tracing::warn!(target: "devices", ?window, offset, size, "interrupt controller: unsupported access size; ignored (logged once)");
        }
    }

    fn log_no_cpu(&self, cpu: usize) {
        if self.logs.general.first(Misuse::BadValue) {
            tracing::warn!(target: "devices", cpu, cpus = self.cpus(), "local APIC page: the accessing thread's current CPU does not exist; reads as ones, writes ignored (logged once)");
        }
    }
}

/// The aggregate of the 8259A pair, the I/O APIC, the local APICs, the
/// CPUs' start-up states and the inputs' sources. Restore checks all of it
/// (see each part's checks; the state must have one local APIC and one
/// start-up state per CPU of this machine, the BSP bit on CPU 0 only, a
/// start-up state INIT and SIPI can leave, sources only on lines it handed
/// out, and input lines that agree with their sources) before it loads any;
/// nothing is delivered on restore, and the flags the CPUs poll are
/// recomputed.
impl Persist for InterruptController {
    type State = InterruptControllerState;

    fn save(&self) -> InterruptControllerState {
        self.inner.lock().save()
    }

    fn restore(&mut self, state: &InterruptControllerState) -> Result<(), PersistError> {
        self.restore_shared(state)
    }
}

/// The I/O APIC's input lines, bit n for pin n, as the inputs' `sources`
/// and the 8259A pair in `pic` drive them: pin 0 is the pair's INTR, pin 2
/// IRQ0, the others their own inputs.
fn ioapic_lines(sources: &[u64; NUM_IRQ_INPUTS], pic: &PicState) -> u32 {
    let mut pair = PicPair::new();
    pair.load_state(pic);
    (0..IOAPIC_NUM_PINS)
        .map(|pin| {
            let on = match pin {
                PIC_INTR_IOAPIC_PIN => pair.output(),
                IRQ0_IOAPIC_PIN => sources[0] != 0,
                _ => sources[pin] != 0,
            };
            u32::from(on) << pin
        })
        .sum()
}

/// Every CPU's APIC timer: the earliest deadline of them all, and each
/// CPU's timer fired when due (the CPU it interrupts is kicked).
impl TimerSource for InterruptController {
    fn next_deadline_ns(&self) -> Option<u64> {
        self.inner.lock().lapics.iter().filter_map(LocalApic::next_deadline_ns).min()
    }

    fn poll(&self, now_ns: u64) {
        self.with(|inner, _, _| {
            for lapic in &mut inner.lapics {
                lapic.tick(now_ns);
            }
        });
    }
}

/// A device's MSI or MSI-X message reaches the local APICs (the I/O APIC
/// and the 8259As play no part). A message outside the APIC window is
/// dropped and logged once.
impl MsiSink for InterruptController {
    fn send(&self, msg: MsiMessage) {
        let forward = self.msi_forward.read().clone();
        if let Some(f) = forward {
            f(msg);
            return;
        }
        let Some(m) = msg.interrupt() else {
            if self.logs.general.first(Misuse::OutOfWindow) {
                tracing::warn!(
                    target: "devices",
                    address = format_args!("{:#x}", msg.address),
                    data = format_args!("{:#x}", msg.data),
                    "MSI: a message outside the local APICs' window 0xfee00000-0xfeefffff; dropped (logged once)"
                );
            }
            return;
        };
        self.with(|inner, _, logs| deliver(&mut inner.lapics, m, &logs.general));
    }
}

/// One source on one input of the controller.
struct ControllerLine {
    intc: Arc<InterruptController>,
    input: usize,
    source: u32,
}

impl ControllerLine {
    /// Records this source's level and returns the input's level (the OR
    /// of its sources) when it changed: with the controllers forwarded,
    /// the sources are still kept here, so the forwarded input is their OR
    /// and a saved state has them.
    fn record(&self, level: bool) -> Option<bool> {
        self.intc.inner.lock().record_source(self.input, self.source, level)
    }
}

impl IrqLine for ControllerLine {
    fn set_level(&self, level: bool) {
        let forward = self.intc.forward.read().clone();
        if let Some(f) = forward {
            if let Some(input) = self.record(level) {
                f(self.input as u32, input);
            }
            return;
        }
        self.intc.with(|inner, _, logs| inner.set_input(self.input, self.source, level, &logs.general));
    }

    fn pulse(&self) {
        let forward = self.intc.forward.read().clone();
        if let Some(f) = forward {
            // An edge only where no other source holds the input high.
            if self.record(true) == Some(true) {
                f(self.input as u32, true);
                self.record(false);
                f(self.input as u32, false);
            }
            return;
        }
        self.intc.with(|inner, _, logs| {
            inner.set_input(self.input, self.source, true, &logs.general);
            inner.set_input(self.input, self.source, false, &logs.general);
        });
    }
}

/// The register windows of the controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    PicMaster,
    PicSlave,
    Elcr,
    IoApic,
    /// The local APIC of the accessing thread's [`current_cpu`].
    LocalApic,
}

/// A bus device for one register window.
struct IntcPort {
    intc: Arc<InterruptController>,
    window: Window,
}

/// What an access did.
enum Outcome {
    Done,
    /// An access size the window does not take.
    BadSize,
    /// The local APIC page, from a thread whose current CPU does not exist.
    NoCpu(usize),
}

impl IntcPort {
    fn refused(&self, outcome: Outcome, offset: u64, size: usize) -> bool {
        match outcome {
            Outcome::Done => return false,
            Outcome::BadSize => self.intc.log_access(self.window, offset, size),
            Outcome::NoCpu(cpu) => self.intc.log_no_cpu(cpu),
        }
        true
    }
}

impl BusDevice for IntcPort {
    fn debug_label(&self) -> String {
        match self.window {
            Window::PicMaster => "8259A master",
            Window::PicSlave => "8259A slave",
            Window::Elcr => "ELCR",
            Window::IoApic => "I/O APIC",
            Window::LocalApic => "local APIC",
        }
        .to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let window = self.window;
        let outcome = self.intc.with(|inner, now, logs| match window {
            Window::PicMaster | Window::PicSlave => {
                let chip = if window == Window::PicMaster { PicChip::Master } else { PicChip::Slave };
                let [byte] = data else { return Outcome::BadSize };
                *byte = inner.pic.read(chip, offset as u8);
                inner.sync_pic_intr(&logs.general);
                Outcome::Done
            }
            Window::Elcr if offset as usize + data.len() <= ELCR_PORT_LEN as usize => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = inner.pic.read_elcr((offset as usize + i) as u8);
                }
                Outcome::Done
            }
            Window::Elcr => Outcome::BadSize,
            Window::IoApic => {
                inner.ioapic.read(offset, data);
                Outcome::Done
            }
            Window::LocalApic => {
                let cpu = current_cpu();
                let Some(lapic) = inner.lapics.get_mut(cpu) else { return Outcome::NoCpu(cpu) };
                lapic.mmio_read(offset, data, now);
                Outcome::Done
            }
        });
        if self.refused(outcome, offset, data.len()) {
            fill_le(data, u64::MAX);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let window = self.window;
        let outcome = self.intc.with(|inner, now, logs| match window {
            Window::PicMaster | Window::PicSlave => {
                let chip = if window == Window::PicMaster { PicChip::Master } else { PicChip::Slave };
                let &[byte] = data else { return Outcome::BadSize };
                inner.pic.write(chip, offset as u8, byte);
                inner.sync_pic_intr(&logs.general);
                Outcome::Done
            }
            Window::Elcr if offset as usize + data.len() <= ELCR_PORT_LEN as usize => {
                for (i, &b) in data.iter().enumerate() {
                    inner.pic.write_elcr((offset as usize + i) as u8, b);
                }
                inner.sync_pic_intr(&logs.general);
                Outcome::Done
            }
            Window::Elcr => Outcome::BadSize,
            Window::IoApic => {
                let Inner { ioapic, lapics, .. } = inner;
                ioapic.write(offset, data, &mut |m| deliver(lapics, m, &logs.general));
                Outcome::Done
            }
            Window::LocalApic => {
                let cpu = current_cpu();
                let Some(lapic) = inner.lapics.get_mut(cpu) else { return Outcome::NoCpu(cpu) };
                let effect = lapic.mmio_write(offset, data, now);
                inner.apply(cpu, effect, logs);
                Outcome::Done
            }
        });
        self.refused(outcome, offset, data.len());
    }
}

#[cfg(test)]
mod tests;
