//! Hardware-assisted execution: hand the guest CPU to the host's hypervisor.
//!
//! The machine sees three objects, whatever the backend:
//!
//! - [`Hypervisor`]: the host facility (today KVM on Linux), opened once. It
//!   creates a [`Vm`] over the same [`GuestMemory`] the interpreter uses, so
//!   both run the same RAM and ROM.
//! - [`Vm`]: one guest. It creates vCPUs and, when the interrupt controllers
//!   live in the hypervisor, drives their input lines ([`IrqChip`] says which).
//! - [`Vcpu`]: one virtual processor. Its state moves in and out as a plain
//!   [`CpuState`], the interpreter's own type, so a guest can hop between the
//!   interpreter and the hypervisor. [`Vcpu::run`] runs the guest and serves
//!   port and MMIO accesses inline through the machine's I/O interface
//!   ([`Platform`], the interpreter's too); it returns only
//!   on an exit the machine must decide about ([`VmExit`]).
//!
//! Around a run:
//!
//! - [`VcpuKicker`] (from [`Vcpu::kicker`]) makes a running vCPU return
//!   [`VmExit::Interrupted`] from another thread: for a timeout, a machine
//!   event, or a device that needs the run loop.
//! - [`Vcpu::stats`] counts exits by kind and the time spent in the guest.
//! - [`fallback::emulate_one`] runs an instruction the hypervisor could not
//!   run in the interpreter, on the same state, and hands the state back.
//! - On Linux, [`Vm::register_irqfd`] (or [`Vm::register_msi_irqfd`], for a
//!   message) and [`Vm::register_ioeventfd`] (or
//!   [`Vm::set_ioeventfd`], with an eventfd the device owns) connect
//!   eventfds to the in-kernel interrupt controllers and to guest writes, for
//!   devices served outside the vCPU thread (virtio).
//!
//! The device side ([`Platform`]) and everything in this file except the
//! eventfd methods are free of hypervisor types, so a second backend (for
//! instance macOS Hypervisor.framework) can implement the same traits.
//!
//! On Linux, [`kvm`] is the KVM backend and [`bridge`] converts between
//! [`CpuState`] and KVM's register structures.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cpu::state::CpuState;
use mmu::GuestMemory;

mod error;
pub mod fallback;

#[cfg(target_os = "linux")]
pub mod bridge;
#[cfg(target_os = "linux")]
pub mod irqfd;
#[cfg(target_os = "linux")]
pub mod kvm;

pub use error::AccelError;
/// The notifier of [`Vm::register_irqfd`] and [`Vm::register_ioeventfd`].
#[cfg(target_os = "linux")]
pub use vmm_sys_util::eventfd::EventFd;

/// A host hypervisor that can run guests.
pub trait Hypervisor: Send + Sync {
    /// Create a guest over `mem`. Every RAM and ROM region of `mem` becomes
    /// guest-physical memory of the VM; the VM keeps `mem` alive.
    fn create_vm(&self, mem: Arc<GuestMemory>) -> Result<Box<dyn Vm>, AccelError>;
    /// Short name for messages and statistics ("kvm").
    fn name(&self) -> &'static str;
}

/// Where the interrupt controllers (PIC, IOAPIC, LAPIC) and the PIT live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChip {
    /// Emulated inside the hypervisor. Device interrupt lines go to
    /// [`Vm::set_irq_line`]. `pit` tells whether the PIT is in there too; when
    /// it is not, the machine keeps its own PIT and raises IRQ 0 itself.
    InKernel { pit: bool },
    /// Emulated by the machine; the LAPIC page and the PIC/IOAPIC ports reach
    /// the machine as MMIO and port exits.
    Userspace,
}

impl fmt::Display for IrqChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrqChip::InKernel { pit: true } => f.write_str("in-kernel PIC/IOAPIC/LAPIC and PIT"),
            IrqChip::InKernel { pit: false } => f.write_str("in-kernel PIC/IOAPIC/LAPIC, userspace PIT"),
            IrqChip::Userspace => f.write_str("userspace PIC/IOAPIC/LAPIC and PIT"),
        }
    }
}

/// One guest.
///
/// `create_vcpu` takes `&self` and the trait is `Sync` because some
/// hypervisors (Hypervisor.framework) bind a vCPU to the thread that created
/// it: the machine creates each vCPU on the thread that will run it.
pub trait Vm: Send + Sync {
    /// Create vCPU number `id` (the APIC ID it reports), in its reset state.
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, AccelError>;
    /// Drive interrupt line `irq` of the in-kernel PIC/IOAPIC. Fails when the
    /// interrupt controllers are in userspace ([`IrqChip::Userspace`]).
    fn set_irq_line(&self, irq: u32, level: bool) -> Result<(), AccelError>;
    /// Send a message-signalled interrupt (a device's MSI or MSI-X write of
    /// `data` to `address`) to the in-kernel local APICs. Fails when the
    /// interrupt controllers are in userspace ([`IrqChip::Userspace`]).
    fn signal_msi(&self, address: u64, data: u32) -> Result<(), AccelError>;
    /// Which interrupt controllers this VM uses.
    fn irqchip(&self) -> IrqChip;
    /// Put the interrupt controllers and the PIT the hypervisor emulates
    /// back in their state at creation (a machine reset); nothing to do
    /// when they are the machine's own ([`IrqChip::Userspace`]).
    fn reset_devices(&self) -> Result<(), AccelError> {
        Ok(())
    }
    /// Take the page-aligned guest-physical range `start..end` out of the
    /// memory the hypervisor maps for the guest. The machine's own view of
    /// the memory (devices, interpreter) is unchanged. Guest data accesses
    /// there become MMIO exits; an instruction fetch there cannot be
    /// emulated and ends the run with [`VmExit::InternalError`]. Used to
    /// make a vCPU leave the hypervisor when it starts executing a given
    /// range (split execution, see the machine's split engine).
    fn hide(&self, start: u64, end: u64) -> Result<(), AccelError>;
    /// Make the page-aligned guest-physical range `start..end` of RAM (inside
    /// one region) read-only to the guest, or writable again: guest writes
    /// there become MMIO exits, which the machine drops, as a chipset drops
    /// writes to write-protected shadow RAM (the i440FX's PAM registers).
    /// Reads and instruction fetches are unchanged. Fails where the
    /// hypervisor has no read-only memory. Writable again also brings back
    /// a range [`Vm::hide`] took away.
    fn protect(&self, start: u64, end: u64, read_only: bool) -> Result<(), AccelError>;
    /// Make the hypervisor forget every translation it derived from the
    /// guest's page tables. Needed after the page tables were changed by
    /// anything but the vCPU itself (the interpreter), on hypervisors that
    /// shadow the guest's page tables and learn of changes by trapping the
    /// guest's own writes. The vCPUs must not be running.
    fn flush_translations(&self) -> Result<(), AccelError>;
    /// Map a display adapter's VRAM where guest memory decodes it now
    /// ([`mmu::GuestMemory::map_vram`]), if it moved since the last call,
    /// so that the guest's stores to it land in it and are logged. Called
    /// before a vCPU enters. Without it (the default) the VRAM is MMIO to
    /// the hypervisor, and its stores exit to the adapter.
    fn follow_vram(&self) -> Result<(), AccelError> {
        Ok(())
    }
    /// An eventfd that raises interrupt line `gsi` of the in-kernel
    /// PIC/IOAPIC (an edge: assert, then deassert) each time it is written,
    /// without a trip through the vCPU thread. GSIs 0-15 reach the PIC and
    /// the IOAPIC, 16-23 the IOAPIC. Fails with [`IrqChip::Userspace`].
    #[cfg(target_os = "linux")]
    fn register_irqfd(&self, gsi: u32) -> Result<EventFd, AccelError>;
    /// Detach an eventfd that [`Vm::register_irqfd`] gave for `gsi`.
    #[cfg(target_os = "linux")]
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), AccelError>;
    /// An eventfd that sends the message-signalled interrupt `data` to
    /// `address` to the in-kernel local APICs each time it is written: an
    /// irqfd on a GSI of its own, routed to that message. A write does what
    /// [`Vm::signal_msi`] does, from any thread. Returns the eventfd and its
    /// GSI. Fails with [`IrqChip::Userspace`], and when every GSI for
    /// messages is taken.
    #[cfg(target_os = "linux")]
    fn register_msi_irqfd(&self, address: u64, data: u32) -> Result<(EventFd, u32), AccelError>;
    /// Detach an eventfd that [`Vm::register_msi_irqfd`] gave, and free its GSI.
    #[cfg(target_os = "linux")]
    fn unregister_msi_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), AccelError>;
    /// An eventfd signalled (its counter incremented) by each guest write of
    /// `len` bytes to `addr`, instead of an exit to the vCPU's
    /// [`Platform`]. `len` is 1, 2, 4 or 8, or 0 for any size (MMIO only).
    /// With `datamatch`, only writes of that value count; other writes exit
    /// as usual. Reads at `addr` still exit.
    #[cfg(target_os = "linux")]
    fn register_ioeventfd(&self, addr: IoEventAddr, len: u32, datamatch: Option<u64>) -> Result<EventFd, AccelError>;
    /// Detach an eventfd that [`Vm::register_ioeventfd`] gave; the same
    /// `addr`, `len` and `datamatch` select it.
    #[cfg(target_os = "linux")]
    fn unregister_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddr,
        len: u32,
        datamatch: Option<u64>,
    ) -> Result<(), AccelError>;
    /// Attach (`on`) or detach an eventfd the caller owns, as
    /// [`Vm::register_ioeventfd`] and [`Vm::unregister_ioeventfd`] do with
    /// theirs: for a device that keeps one eventfd per queue and moves it
    /// with its BARs.
    #[cfg(target_os = "linux")]
    fn set_ioeventfd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        addr: IoEventAddr,
        len: u32,
        datamatch: Option<u64>,
        on: bool,
    ) -> Result<(), AccelError>;
}

/// Where an ioeventfd listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddr {
    /// A port.
    Pio(u16),
    /// A guest-physical address outside RAM.
    Mmio(u64),
}

/// One virtual processor.
pub trait Vcpu {
    /// Load `s` into the vCPU.
    ///
    /// The six arithmetic flags of `s.rflags` must be materialised
    /// (`s.lazy.op == 0`); otherwise this fails with [`AccelError::LazyFlags`].
    ///
    /// An event the hypervisor holds for the guest ([`Vcpu::pending_event`])
    /// is kept: it is delivered at the next entry.
    fn set_state(&mut self, s: &CpuState) -> Result<(), AccelError>;
    /// Read the vCPU's state. The flags come back materialised (`lazy.op == 0`).
    fn get_state(&mut self) -> Result<CpuState, AccelError>;
    /// An exception, interrupt or NMI the hypervisor has accepted for the
    /// guest but not yet delivered through the IDT. [`CpuState`] has no room
    /// for it: it stays in the vCPU and is delivered at the next entry, before
    /// the instruction at RIP runs. While there is one, the state is not at an
    /// instruction boundary, so no instruction may be run elsewhere on it.
    fn pending_event(&mut self) -> Result<Option<PendingEvent>, AccelError>;
    /// Run the guest until an exit the caller must handle.
    ///
    /// Port and MMIO accesses are served through `io` and the guest resumes.
    /// `io.stop_requested()` is polled before each entry into the guest; when it
    /// is true, `run` returns [`VmExit::Interrupted`]. So does a kick from
    /// [`Vcpu::kicker`], whether it comes during the run or before it.
    fn run(&mut self, io: &mut dyn Platform) -> Result<VmExit, AccelError>;
    /// Bring the vCPU back to its state at creation (its local APIC, where
    /// the hypervisor keeps it), then load `s`: a machine reset.
    fn reset(&mut self, s: &CpuState) -> Result<(), AccelError> {
        self.set_state(s)
    }
    /// Queue a non-maskable interrupt for the guest; it is delivered at the
    /// next entry, as the hypervisor's NMI blocking allows.
    fn inject_nmi(&mut self) -> Result<(), AccelError>;
    /// The guest's time-stamp counter now, and its rate in kHz, as the
    /// hypervisor keeps them (split execution keeps the interpreter's
    /// counter equal to it).
    fn tsc(&mut self) -> Result<(u64, u64), AccelError>;
    /// Sets the guest's time-stamp counter to `value` (a restored guest's
    /// goes on from where it was saved).
    fn set_tsc(&mut self, value: u64) -> Result<(), AccelError>;
    /// A handle that other threads use to make the current or the next
    /// [`Vcpu::run`] return [`VmExit::Interrupted`].
    fn kicker(&self) -> Result<VcpuKicker, AccelError>;
    /// Exits by kind and time spent in the guest since the vCPU was created.
    fn stats(&self) -> VcpuStats;
}

/// An event accepted for the guest and not yet delivered
/// ([`Vcpu::pending_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingEvent {
    /// An exception. `injected`: its delivery has begun (it is re-injected
    /// after an exit that interrupted the delivery); otherwise it is queued.
    Exception { vector: u8, error_code: Option<u32>, injected: bool },
    /// An external interrupt (`soft == false`) or an `int n` being delivered.
    Interrupt { vector: u8, soft: bool },
    /// A non-maskable interrupt, queued or being delivered.
    Nmi,
}

impl fmt::Display for PendingEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingEvent::Exception { vector, error_code, injected } => {
                let state = if *injected { "being delivered" } else { "queued" };
                write!(f, "exception {vector} {state}")?;
                if let Some(e) = error_code {
                    write!(f, " (error code {e:#x})")?;
                }
                Ok(())
            }
            PendingEvent::Interrupt { vector, soft: false } => {
                write!(f, "external interrupt {vector:#x} being delivered")
            }
            PendingEvent::Interrupt { vector, soft: true } => {
                write!(f, "software interrupt {vector:#x} being delivered")
            }
            PendingEvent::Nmi => f.write_str("NMI pending"),
        }
    }
}

/// The backend side of a [`VcpuKicker`].
pub trait Kick: Send + Sync {
    /// Make the vCPU's current or next run return [`VmExit::Interrupted`].
    /// Must not block for long: it may run on any thread, under locks.
    fn kick(&self);
}

/// Makes a running vCPU return to its caller. Cheap to clone; any thread may
/// hold one. A kick after the vCPU is gone does nothing.
#[derive(Clone)]
pub struct VcpuKicker(Arc<dyn Kick>);

impl VcpuKicker {
    /// Wrap a backend's kick.
    pub fn new(kick: Arc<dyn Kick>) -> Self {
        VcpuKicker(kick)
    }

    /// Make the vCPU's current run return [`VmExit::Interrupted`] promptly,
    /// or, when it is not running, its next run return that at once. Kicks
    /// that come before the run returns merge into one.
    pub fn kick(&self) {
        self.0.kick();
    }
}

impl fmt::Debug for VcpuKicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VcpuKicker")
    }
}

/// Exits from the guest by kind: each one the hypervisor reported, before
/// [`Vcpu::run`] decided whether to serve it or return it. A string port
/// instruction is one exit however many elements it moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts {
    pub pio_in: u64,
    pub pio_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    pub shutdown: u64,
    /// Internal errors; emulation failures are most of them.
    pub internal_error: u64,
    pub fail_entry: u64,
    /// `KVM_RUN` interrupted by a kick or another signal. (A run that ends
    /// because `stop_requested()` was true before an entry is not an exit.)
    pub interrupted: u64,
    /// `KVM_EXIT_IRQ_WINDOW_OPEN`: the guest can take an interrupt the
    /// machine's own controllers hold.
    pub irq_window: u64,
    pub system_event: u64,
    /// `KVM_EXIT_DEBUG`: a debugger's step, breakpoint or watchpoint.
    pub debug: u64,
    pub other: u64,
}

impl ExitCounts {
    /// `(name, count)` for each kind, in a fixed order, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("pio-in", self.pio_in),
            ("pio-out", self.pio_out),
            ("mmio-read", self.mmio_read),
            ("mmio-write", self.mmio_write),
            ("hlt", self.hlt),
            ("shutdown", self.shutdown),
            ("internal-error", self.internal_error),
            ("fail-entry", self.fail_entry),
            ("interrupted", self.interrupted),
            ("irq-window", self.irq_window),
            ("system-event", self.system_event),
            ("debug", self.debug),
            ("other", self.other),
        ]
        .into_iter()
    }

    /// All exits.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for ExitCounts {
    /// The non-zero kinds: "12 pio-out, 1 hlt" ("none" when there are none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, n) in self.iter().filter(|(_, n)| *n > 0) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n} {name}")?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// What [`Vcpu::stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuStats {
    pub exits: ExitCounts,
    /// Entries into the guest (`KVM_RUN` calls).
    pub entries: u64,
    /// Wall time inside the hypervisor's run call: guest execution, and on
    /// hosts that emulate guest code in software, that emulation too.
    pub in_guest: Duration,
    /// Wall time serving exits through the [`Platform`] inside
    /// [`Vcpu::run`] (device emulation).
    pub in_handlers: Duration,
    /// Kicks received from [`VcpuKicker`]s.
    pub kicks: u64,
    /// Interrupts injected from the machine's own controllers
    /// (`KVM_INTERRUPT`).
    pub injected: u64,
}

/// The device side of a vCPU is the machine's one I/O interface,
/// [`cpu::Platform`], the same the interpreter calls: port I/O and MMIO
/// exits go to its `io_*` and `mmio_*` methods, and
/// [`cpu::Platform::stop_requested`] is polled before each guest entry.
/// A string instruction (`rep outsb`) arrives as one call per element.
pub use cpu::Platform;

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest executed HLT (only with a userspace irqchip; an in-kernel
    /// LAPIC waits for the interrupt itself).
    Hlt,
    /// The guest triple-faulted or asked for a shutdown.
    Shutdown,
    /// The hypervisor could not run an instruction at `rip`. `insn_bytes`
    /// starts with that instruction: KVM gives its whole fetch window (up to
    /// 15 bytes, possibly running past the instruction); empty when unknown.
    /// The vCPU state is intact, so the instruction can be run elsewhere.
    InternalError { suberror: u32, insn_bytes: Vec<u8>, rip: u64 },
    /// The hardware refused to enter the guest (invalid guest state).
    FailEntry { reason: u64 },
    /// `stop_requested()` returned true, a [`VcpuKicker`] kicked the vCPU, or
    /// another signal interrupted the run.
    Interrupted,
    /// A debugger's stop (a step, or a breakpoint or watchpoint in the
    /// debug registers): `dr6` says which, `pc` is the linear RIP.
    Debug { dr6: u64, pc: u64 },
    /// Any other exit, described.
    Other(String),
}

/// KVM's suberror for an instruction its emulator could not run.
const SUBERROR_EMULATION: u32 = 1;

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Hlt => f.write_str("the guest halted (HLT)"),
            VmExit::Shutdown => f.write_str("the guest shut down (triple fault)"),
            VmExit::InternalError { suberror, insn_bytes, rip } => {
                let what = if *suberror == SUBERROR_EMULATION { "emulation failure" } else { "internal error" };
                write!(f, "the hypervisor could not run the instruction at rip {rip:#x}: {what} (suberror {suberror}), bytes [")?;
                for (i, b) in insn_bytes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                f.write_str("]")
            }
            VmExit::Debug { dr6, pc } => write!(f, "a debug stop at {pc:#x} (DR6 {dr6:#x})"),
            VmExit::FailEntry { reason } => {
                write!(f, "the hypervisor refused to enter the guest: hardware entry failure reason {reason:#x}")
            }
            VmExit::Interrupted => f.write_str("the run was interrupted"),
            VmExit::Other(s) => write!(f, "unexpected exit: {s}"),
        }
    }
}

/// Open the best hardware accelerator this host has.
///
/// On Linux that is KVM; the error says why it cannot be used (missing,
/// permission denied, API mismatch) and what to do instead.
pub fn open() -> Result<Box<dyn Hypervisor>, AccelError> {
    #[cfg(target_os = "linux")]
    {
        Ok(Box::new(kvm::Kvm::new()?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(AccelError::NoBackend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_message_names_rip_and_bytes() {
        let e = VmExit::InternalError {
            suberror: 1,
            insn_bytes: vec![0xf0, 0x48, 0x0f, 0xc7, 0x0e],
            rip: 0xffff_ffff_8100_0000,
        };
        let s = e.to_string();
        assert!(s.contains("0xffffffff81000000"), "{s}");
        assert!(s.contains("f0 48 0f c7 0e"), "{s}");
        assert!(s.contains("emulation failure"), "{s}");
    }

    #[test]
    fn kicker_is_shareable_across_threads() {
        fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync_clone::<VcpuKicker>();
        struct Count(std::sync::atomic::AtomicU32);
        impl Kick for Count {
            fn kick(&self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let c = Arc::new(Count(0.into()));
        let k = VcpuKicker::new(c.clone());
        let k2 = k.clone();
        std::thread::spawn(move || k2.kick()).join().unwrap();
        k.kick();
        assert_eq!(c.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn pending_event_display() {
        let e = PendingEvent::Exception { vector: 14, error_code: Some(2), injected: true };
        assert_eq!(e.to_string(), "exception 14 being delivered (error code 0x2)");
        assert_eq!(
            PendingEvent::Interrupt { vector: 0x20, soft: false }.to_string(),
            "external interrupt 0x20 being delivered"
        );
    }

    #[test]
    fn irqchip_display() {
        assert_eq!(IrqChip::Userspace.to_string(), "userspace PIC/IOAPIC/LAPIC and PIT");
        assert!(IrqChip::InKernel { pit: true }.to_string().contains("PIT"));
    }
}
