//! The PC's interrupt routing: the 8259A pair, the I/O APIC and the local
//! APICs behind one lock, and the two questions a CPU asks of them.
//!
//! References: Intel MultiProcessor Specification 1.4, section 3.6.2
//! "Interrupt Modes" (PIC mode, virtual wire mode, symmetric I/O mode) and
//! 5.1 "Default Configurations"; ACPI 6.5, 5.2.12.5 "Interrupt Source
//! Override Structure" (ISA IRQ0 on GSI 2).
//!
//! ```text
//!  device lines ──► input n (0-15: ISA IRQs, 16-23: I/O APIC pins only)
//!     ISA IRQ n ──► 8259A input n            (IRQ2 is the cascade: no device)
//!               └─► I/O APIC pin n           (IRQ0 goes to pin 2, the MADT override)
//!  8259A INTR  ──► LINT0 of CPU 0 (ExtINT, virtual wire)
//!               └─► I/O APIC pin 0           (for an ExtINT redirection entry)
//!  I/O APIC    ──► local APICs (fixed, lowest priority, NMI, ExtINT messages)
//!  MSI, MSI-X  ──► local APICs (the same messages, sent by PCI functions)
//!  local APIC  ──► EOI of a level vector ──► I/O APIC remote IRR
//! ```
//!
//! A line handed out by [`InterruptController::irq_line`] is one source on
//! its input; an input is asserted while any of its sources is (wired-OR), so
//! level-triggered lines can be shared.
//!
//! The CPU asks [`InterruptController::interrupt_pending`] (one atomic load)
//! and takes a vector with [`InterruptController::ack_interrupt`]: the local
//! APIC's highest deliverable vector first, else the 8259A's INTA cycle when
//! its INTR reaches the CPU. A kick callback wakes a CPU sleeping in HLT when
//! an interrupt becomes pending. The local APIC timers are polled through
//! [`TimerSource`].
//!
//! Only CPU 0 exists for now. The local APICs sit in a vector and routing
//! goes through destination matching, so more CPUs mean more entries and a
//! CPU index on the per-CPU calls.

pub mod ioapic;
pub mod lapic;
pub mod msi;
pub mod pic;

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
    Ipi, LapicEffect, LapicState, LocalApic, Shorthand, LAPIC_BASE, LAPIC_MMIO_LEN, MSR_IA32_APIC_BASE,
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

/// Where device lines go when a hypervisor models the controllers.
type Forward = Arc<dyn Fn(u32, bool) + Send + Sync>;
/// Where message-signalled interrupts go when a hypervisor models the controllers.
type MsiForward = Arc<dyn Fn(MsiMessage) + Send + Sync>;

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
    /// The asserted sources of each input, bit n for the n-th line handed
    /// out on it (the devices' line levels the inputs are the OR of).
    pub sources: [u64; NUM_IRQ_INPUTS],
}

/// The part name the interrupt controller's errors carry.
const PART: &str = "interrupt controller";

struct Inner {
    pic: PicPair,
    ioapic: IoApic,
    lapics: Vec<LocalApic>,
    /// Asserted sources of each input, bit n for the n-th line handed out.
    sources: [u64; NUM_IRQ_INPUTS],
    /// Lines handed out per input.
    allocated: [u32; NUM_IRQ_INPUTS],
}

/// The interrupt controllers of a PC.
pub struct InterruptController {
    inner: Mutex<Inner>,
    clock: SharedClock,
    intr_pending: AtomicBool,
    nmi_pending: AtomicBool,
    kick: RwLock<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// When set, device lines drive this instead of the emulated controllers
    /// (a hypervisor's in-kernel irqchip takes them by input number).
    forward: RwLock<Option<Forward>>,
    /// The same for message-signalled interrupts.
    msi_forward: RwLock<Option<MsiForward>>,
    log: LogOnce,
}

impl std::fmt::Debug for InterruptController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptController")
            .field("intr_pending", &self.intr_pending.load(Ordering::Relaxed))
            .field("nmi_pending", &self.nmi_pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Sends an interrupt message (from the I/O APIC or a device's MSI) to the
/// local APICs; true if one accepted it.
fn deliver(lapics: &mut [LocalApic], msg: InterruptMessage, log: &LogOnce) -> bool {
    let dest = |l: &&mut LocalApic| l.matches(msg.destination, msg.logical, 0xff);
    match msg.delivery_mode {
        DeliveryMode::Fixed => {
            lapics.iter_mut().filter(dest).fold(false, |any, l| l.accept_fixed(msg.vector, msg.level_triggered) | any)
        }
        DeliveryMode::LowestPriority => lapics
            .iter_mut()
            .filter(dest)
            .filter(|l| l.enabled())
            .min_by_key(|l| l.tpr())
            .is_some_and(|l| l.accept_fixed(msg.vector, msg.level_triggered)),
        DeliveryMode::Nmi => lapics.iter_mut().filter(dest).fold(false, |any, l| l.accept_nmi() | any),
        DeliveryMode::ExtInt => lapics.iter_mut().filter(dest).fold(false, |any, l| l.accept_extint() | any),
        mode => {
            if log.first(Misuse::Unimplemented) {
                tracing::warn!(target: "devices", ?mode, "I/O APIC: delivery mode not supported; message dropped (logged once)");
            }
            false
        }
    }
}

impl Inner {
    fn new(tsc: &Arc<Tsc>) -> Self {
        let mut bsp = LocalApic::new(0, true, Arc::clone(tsc));
        // There is no BIOS: leave the APIC as one leaves it for the OS.
        bsp.bios_virtual_wire();
        Self {
            pic: PicPair::new(),
            ioapic: IoApic::new(IOAPIC_ID),
            lapics: vec![bsp],
            sources: [0; NUM_IRQ_INPUTS],
            allocated: [0; NUM_IRQ_INPUTS],
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
        let bit = 1u64 << source.min(MAX_SOURCES - 1);
        let before = self.sources[irq] != 0;
        if level {
            self.sources[irq] |= bit;
        } else {
            self.sources[irq] &= !bit;
        }
        let after = self.sources[irq] != 0;
        if before == after {
            return;
        }
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

    fn apply(&mut self, cpu: usize, effect: Option<LapicEffect>, log: &LogOnce) {
        match effect {
            None => {}
            Some(LapicEffect::EoiBroadcast(vector)) => {
                let Inner { ioapic, lapics, .. } = self;
                ioapic.end_of_interrupt(vector, &mut |m| deliver(lapics, m, log));
            }
            Some(LapicEffect::Ipi(ipi)) => self.send_ipi(cpu, ipi, log),
        }
    }

    fn send_ipi(&mut self, from: usize, ipi: Ipi, log: &LogOnce) {
        let broadcast = if self.lapics[from].x2apic() { u32::MAX } else { 0xff };
        let targets: Vec<usize> = (0..self.lapics.len())
            .filter(|&i| match ipi.shorthand {
                Shorthand::SelfOnly => i == from,
                Shorthand::AllIncludingSelf => true,
                Shorthand::AllExcludingSelf => i != from,
                Shorthand::None => self.lapics[i].matches(ipi.destination, ipi.logical, broadcast),
            })
            .collect();
        match ipi.delivery_mode {
            DeliveryMode::Fixed => {
                for i in targets {
                    self.lapics[i].accept_fixed(ipi.vector, false);
                }
            }
            DeliveryMode::LowestPriority => {
                if let Some(&i) = targets.iter().min_by_key(|&&i| self.lapics[i].tpr()) {
                    self.lapics[i].accept_fixed(ipi.vector, false);
                }
            }
            DeliveryMode::Nmi => {
                for i in targets {
                    self.lapics[i].accept_nmi();
                }
            }
            // The de-assert half of an INIT is a no-op on modern processors.
            DeliveryMode::Init if !ipi.assert && ipi.level_triggered => {}
            mode => {
                if log.first(Misuse::Unimplemented) {
                    tracing::warn!(
                        target: "devices",
                        ?mode,
                        destination = ipi.destination,
                        shorthand = ?ipi.shorthand,
                        "local APIC: IPI not supported (no other CPUs; INIT, SIPI and SMI are not modelled); dropped (logged once)"
                    );
                }
            }
        }
    }

    fn intr_pending(&self, cpu: usize) -> bool {
        let lapic = &self.lapics[cpu];
        lapic.deliverable().is_some() || (cpu == 0 && lapic.accepts_pic_interrupts() && self.pic.output())
    }

    fn save(&self) -> InterruptControllerState {
        InterruptControllerState {
            pic: self.pic.save(),
            ioapic: self.ioapic.save(),
            lapics: self.lapics.iter().map(LocalApic::save).collect(),
            sources: self.sources,
        }
    }

    /// The checks of a restore, changing nothing: each controller's state,
    /// the number of local APICs, sources only on lines this machine handed
    /// out, and the 8259A's and the I/O APIC's input lines as the sources
    /// (and, for I/O APIC pin 0, the 8259A's INTR) drive them.
    fn check_state(&self, state: &InterruptControllerState) -> Result<(), PersistError> {
        self.pic.check_state(&state.pic)?;
        IoApic::check_state(&state.ioapic)?;
        PersistError::check_len(PART, "lapics", state.lapics.len(), self.lapics.len())?;
        for lapic in &state.lapics {
            LocalApic::check_state(lapic)?;
        }
        for (input, (&sources, &allocated)) in state.sources.iter().zip(&self.allocated).enumerate() {
            let handed_out = if allocated >= u64::BITS { u64::MAX } else { (1u64 << allocated) - 1 };
            PersistError::check(sources & !handed_out == 0, PART, "sources", || {
                format!("of input {input} are {sources:#x}, but this machine has {allocated} lines on it")
            })?;
        }
        let mut pic = PicPair::new();
        pic.load_state(&state.pic);
        let line = |input: usize| state.sources[input] != 0;
        for irq in (0..NUM_ISA_IRQS).filter(|&i| i != usize::from(CASCADE_IRQ)) {
            let lines = if irq < 8 { state.pic.master.lines } else { state.pic.slave.lines };
            PersistError::check(((lines >> (irq % 8)) & 1 != 0) == line(irq), PART, "pic", || {
                format!("input line {irq} is not what its sources ({:#x}) drive", state.sources[irq])
            })?;
        }
        for pin in 0..IOAPIC_NUM_PINS {
            let want = match pin {
                PIC_INTR_IOAPIC_PIN => pic.output(),
                IRQ0_IOAPIC_PIN => line(0),
                _ => line(pin),
            };
            PersistError::check(((state.ioapic.lines >> pin) & 1 != 0) == want, PART, "ioapic", || {
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
        self.sources = state.sources;
    }

    fn acknowledge(&mut self, cpu: usize, log: &LogOnce) -> Option<u8> {
        if let Some(vector) = self.lapics[cpu].acknowledge() {
            return Some(vector);
        }
        if cpu == 0 && self.lapics[cpu].accepts_pic_interrupts() && self.pic.output() {
            self.lapics[cpu].pic_acknowledged();
            let vector = self.pic.acknowledge();
            self.sync_pic_intr(log);
            return Some(vector);
        }
        None
    }
}

impl InterruptController {
    /// The interrupt controllers of a one-CPU PC, as firmware leaves them:
    /// the 8259A pair uninitialised, every I/O APIC entry masked, and the
    /// BSP's local APIC enabled in virtual wire mode (LINT0 ExtINT, LINT1 NMI).
    /// `tsc` is the counter the TSC-deadline timer compares with.
    pub fn new(clock: SharedClock, tsc: Arc<Tsc>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::new(&tsc)),
            clock,
            intr_pending: AtomicBool::new(false),
            nmi_pending: AtomicBool::new(false),
            kick: RwLock::new(None),
            forward: RwLock::new(None),
            msi_forward: RwLock::new(None),
            log: LogOnce::new(),
        })
    }

    /// Runs `f` on the controllers and refreshes the pending flags; kicks the
    /// CPU when one rose.
    fn with<R>(&self, f: impl FnOnce(&mut Inner, u64, &LogOnce) -> R) -> R {
        let now = self.clock.now_ns();
        let (result, intr, nmi) = {
            let mut inner = self.inner.lock();
            let result = f(&mut inner, now, &self.log);
            (result, inner.intr_pending(0), inner.lapics[0].nmi_pending())
        };
        let intr_was = self.intr_pending.swap(intr, Ordering::AcqRel);
        let nmi_was = self.nmi_pending.swap(nmi, Ordering::AcqRel);
        let intr_rose = intr && !intr_was;
        let nmi_rose = nmi && !nmi_was;
        if intr_rose || nmi_rose {
            let kick = self.kick.read().clone();
            if let Some(kick) = kick {
                kick();
            }
        }
        result
    }

    /// Installs the callback that wakes CPU 0 when an interrupt or NMI
    /// becomes pending (it replaces any earlier one). It runs with no lock held.
    pub fn set_kick(&self, kick: Box<dyn Fn() + Send + Sync>) {
        *self.kick.write() = Some(Arc::from(kick));
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

    /// An interrupt is waiting for CPU 0 (it still has to check RFLAGS.IF).
    pub fn interrupt_pending(&self) -> bool {
        self.intr_pending.load(Ordering::Acquire)
    }

    /// CPU 0 accepts an interrupt: the vector to deliver, or `None` if
    /// nothing is pending any more.
    pub fn ack_interrupt(&self) -> Option<u8> {
        self.with(|inner, _, log| inner.acknowledge(0, log))
    }

    /// An NMI is waiting for CPU 0.
    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending.load(Ordering::Acquire)
    }

    /// CPU 0 takes a pending NMI.
    pub fn take_nmi(&self) -> bool {
        self.with(|inner, _, _| inner.lapics[0].take_nmi())
    }

    /// Whether RDMSR/WRMSR of `msr` belongs to the local APIC: IA32_APIC_BASE,
    /// IA32_TSC_DEADLINE and the x2APIC range 0x800-0x8FF.
    pub fn handles_msr(msr: u32) -> bool {
        matches!(msr, MSR_IA32_APIC_BASE | MSR_IA32_TSC_DEADLINE) || (MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr)
    }

    /// RDMSR on CPU 0 of a local APIC MSR. `None` means #GP(0) (an x2APIC
    /// register outside x2APIC mode, a write-only register, an unknown MSR).
    pub fn msr_read(&self, msr: u32) -> Option<u64> {
        self.with(|inner, now, _| {
            let lapic = &inner.lapics[0];
            match msr {
                MSR_IA32_APIC_BASE => Some(lapic.apic_base()),
                MSR_IA32_TSC_DEADLINE => Some(lapic.tsc_deadline()),
                _ => lapic.x2apic_msr_read(msr, now).ok(),
            }
        })
    }

    /// WRMSR on CPU 0 of a local APIC MSR. False means #GP(0).
    pub fn msr_write(&self, msr: u32, value: u64) -> bool {
        self.with(|inner, now, log| match msr {
            MSR_IA32_APIC_BASE => inner.lapics[0].write_apic_base(value).is_ok(),
            MSR_IA32_TSC_DEADLINE => {
                inner.lapics[0].set_tsc_deadline(value);
                true
            }
            _ => match inner.lapics[0].x2apic_msr_write(msr, value, now) {
                Ok(effect) => {
                    inner.apply(0, effect, log);
                    true
                }
                Err(_) => false,
            },
        })
    }

    /// CR8 of CPU 0: the task priority's high nibble.
    pub fn cr8(&self) -> u64 {
        u64::from(self.inner.lock().lapics[0].tpr() >> 4)
    }

    /// A MOV to CR8 on CPU 0 (bits 63:4 must be zero; the CPU checks).
    pub fn set_cr8(&self, value: u64) {
        let tpr = ((value & 0xf) << 4) as u8;
        self.with(|inner, _, _| inner.lapics[0].set_tpr(tpr));
    }

    /// Sets ELCR1 (`index` 0) or ELCR2 (`index` 1), as a BIOS does for the
    /// level-triggered ISA IRQs (PCI and the SCI).
    pub fn write_elcr(&self, index: u8, value: u8) {
        self.with(|inner, _, log| {
            inner.pic.write_elcr(index, value);
            inner.sync_pic_intr(log);
        });
    }

    /// Resets every controller to its power-on state (a system reset). The
    /// lines handed out stay valid; their levels are re-applied.
    pub fn reset(&self, tsc: &Arc<Tsc>) {
        self.with(|inner, _, log| {
            let sources = inner.sources;
            let allocated = inner.allocated;
            *inner = Inner::new(tsc);
            inner.allocated = allocated;
            for (irq, &s) in sources.iter().enumerate() {
                for source in (0..MAX_SOURCES).filter(|b| s & (1 << b) != 0) {
                    inner.set_input(irq, source, true, log);
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
    /// I/O APIC page and the local APIC page.
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
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(target: "devices", ?window, offset, size, "interrupt controller: unsupported access size; ignored (logged once)");
        }
    }
}

/// The aggregate of the 8259A pair, the I/O APIC, the local APICs and the
/// inputs' sources. Restore checks all of it (see each part's checks; the
/// state must have one local APIC per CPU of this machine, sources only on
/// lines it handed out, and input lines that agree with their sources)
/// before it loads any; nothing is delivered on restore, and the pending
/// flags the CPU polls are recomputed.
impl Persist for InterruptController {
    type State = InterruptControllerState;

    fn save(&self) -> InterruptControllerState {
        self.inner.lock().save()
    }

    fn restore(&mut self, state: &InterruptControllerState) -> Result<(), PersistError> {
        self.restore_shared(state)
    }
}

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
            if self.log.first(Misuse::OutOfWindow) {
                tracing::warn!(
                    target: "devices",
                    address = format_args!("{:#x}", msg.address),
                    data = format_args!("{:#x}", msg.data),
                    "MSI: a message outside the local APICs' window 0xfee00000-0xfeefffff; dropped (logged once)"
                );
            }
            return;
        };
        self.with(|inner, _, log| deliver(&mut inner.lapics, m, log));
    }
}

/// One source on one input of the controller.
struct ControllerLine {
    intc: Arc<InterruptController>,
    input: usize,
    source: u32,
}

impl IrqLine for ControllerLine {
    fn set_level(&self, level: bool) {
        let forward = self.intc.forward.read().clone();
        if let Some(f) = forward {
            f(self.input as u32, level);
            return;
        }
        self.intc.with(|inner, _, log| inner.set_input(self.input, self.source, level, log));
    }

    fn pulse(&self) {
        let forward = self.intc.forward.read().clone();
        if let Some(f) = forward {
            f(self.input as u32, true);
            f(self.input as u32, false);
            return;
        }
        self.intc.with(|inner, _, log| {
            inner.set_input(self.input, self.source, true, log);
            inner.set_input(self.input, self.source, false, log);
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
    LocalApic,
}

/// A bus device for one register window.
struct IntcPort {
    intc: Arc<InterruptController>,
    window: Window,
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
        let ok = self.intc.with(|inner, now, log| match window {
            Window::PicMaster | Window::PicSlave => {
                let chip = if window == Window::PicMaster { PicChip::Master } else { PicChip::Slave };
                let [byte] = data else { return false };
                *byte = inner.pic.read(chip, offset as u8);
                inner.sync_pic_intr(log);
                true
            }
            Window::Elcr if offset as usize + data.len() <= ELCR_PORT_LEN as usize => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = inner.pic.read_elcr((offset as usize + i) as u8);
                }
                true
            }
            Window::Elcr => false,
            Window::IoApic => {
                inner.ioapic.read(offset, data);
                true
            }
            Window::LocalApic => {
                inner.lapics[0].mmio_read(offset, data, now);
                true
            }
        });
        if !ok {
            self.intc.log_access(window, offset, data.len());
            fill_le(data, u64::MAX);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let window = self.window;
        let ok = self.intc.with(|inner, now, log| match window {
            Window::PicMaster | Window::PicSlave => {
                let chip = if window == Window::PicMaster { PicChip::Master } else { PicChip::Slave };
                let &[byte] = data else { return false };
                inner.pic.write(chip, offset as u8, byte);
                inner.sync_pic_intr(log);
                true
            }
            Window::Elcr if offset as usize + data.len() <= ELCR_PORT_LEN as usize => {
                for (i, &b) in data.iter().enumerate() {
                    inner.pic.write_elcr((offset as usize + i) as u8, b);
                }
                inner.sync_pic_intr(log);
                true
            }
            Window::Elcr => false,
            Window::IoApic => {
                let Inner { ioapic, lapics, .. } = inner;
                ioapic.write(offset, data, &mut |m| deliver(lapics, m, log));
                true
            }
            Window::LocalApic => {
                let effect = inner.lapics[0].mmio_write(offset, data, now);
                inner.apply(0, effect, log);
                true
            }
        });
        if !ok {
            self.intc.log_access(window, offset, data.len());
        }
    }
}

#[cfg(test)]
mod tests;
