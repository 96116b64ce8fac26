//! The machine's one I/O interface, as every engine sees it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cpu::Platform;
use devices::{Bus, VmEvents};
use parking_lot::Mutex;

/// Accesses no device claimed: a count, and each address logged once.
#[derive(Default)]
pub struct Unclaimed {
    pub count: u64,
    seen: HashSet<(bool, u64)>,
}

/// The machine's buses, interrupt controller and time-stamp counter, as
/// the interpreter calls them and KVM's exits are served. Clones share
/// everything, the count of unclaimed accesses too.
#[derive(Clone)]
pub struct MachineIo {
    /// The vCPU whose accesses these are (its local APIC answers).
    pub(crate) cpu: usize,
    pub(crate) pio: Arc<Bus>,
    /// The ACPI PM block, wherever the PIIX4 PM function placed it: asked
    /// before the port bus.
    pub(crate) pm: devices::pc::PmPorts,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) events: Arc<VmEvents>,
    pub(crate) unclaimed: Arc<Mutex<Unclaimed>>,
    pub(crate) intc: Arc<devices::intc::InterruptController>,
    pub(crate) tsc: Arc<devices::clock::Tsc>,
    pub(crate) clock: devices::clock::SharedClock,
    /// Set by the machine's control (a pause request): engines return.
    pub(crate) attention: Arc<AtomicBool>,
    /// Set while a vCPU waits to run alone: engines return.
    pub(crate) exclusive_request: Arc<AtomicBool>,
    /// For engines that do not return by themselves: notes a device write
    /// that brought a timer deadline before the slice's end.
    pub(crate) watch: Option<Arc<DeadlineWatch>>,
    /// For an engine that maps guest memory itself (KVM): the memory and
    /// the shadow-protection generation its mappings follow; a change
    /// (a PAM write) stops the run so the engine can remap.
    pub(crate) shadow: Option<(Arc<mmu::GuestMemory>, Arc<AtomicU64>)>,
    /// With `shadow`'s memory: the VRAM base the engine's mappings follow
    /// (`u64::MAX` for none); a move (a BAR0 write) stops the run so the
    /// engine can map it ([`crate::engine::kvm`]).
    pub(crate) vram_seen: Option<Arc<AtomicU64>>,
}

/// Watches the machine's timers across the device writes of one slice.
///
/// An engine that runs the guest until something stops it (KVM) learns
/// the next timer deadline only when the slice starts; a guest that then
/// programs a timer (the PIT, the RTC) for an earlier instant would wait
/// in the hypervisor past it. After each device write the watch looks at
/// the timers again, and the engine's run ends when a deadline moved
/// before the slice's end.
pub(crate) struct DeadlineWatch {
    timers: devices::clock::Timers,
    clock: devices::clock::SharedClock,
    /// The slice's end, in the clock's nanoseconds.
    until_ns: AtomicU64,
    moved: AtomicBool,
}

impl DeadlineWatch {
    pub(crate) fn new(timers: devices::clock::Timers, clock: devices::clock::SharedClock) -> Self {
        DeadlineWatch { timers, clock, until_ns: AtomicU64::new(u64::MAX), moved: AtomicBool::new(false) }
    }

    /// A slice that ends at `until_ns` begins.
    pub(crate) fn arm(&self, until_ns: u64) {
        self.until_ns.store(until_ns, Ordering::Relaxed);
        self.moved.store(false, Ordering::Relaxed);
    }

    fn after_write(&self) {
        let next = self.timers.poll(self.clock.now_ns());
        if next.is_some_and(|t| t < self.until_ns.load(Ordering::Relaxed)) {
            self.moved.store(true, Ordering::Relaxed);
        }
    }

    fn moved(&self) -> bool {
        self.moved.load(Ordering::Relaxed)
    }
}

impl MachineIo {
    /// Whether guest memory decodes the VRAM elsewhere than where the
    /// engine's mappings follow it.
    fn vram_moved(&self) -> bool {
        let (Some((m, _)), Some(seen)) = (&self.shadow, &self.vram_seen) else { return false };
        m.vram().is_some_and(|v| v.base().unwrap_or(u64::MAX) != seen.load(Ordering::Acquire))
    }

    fn note_unclaimed(&self, mmio: bool, addr: u64, write: bool) {
        let mut u = self.unclaimed.lock();
        u.count += 1;
        if u.seen.insert((mmio, addr)) {
            let kind = if mmio { "MMIO" } else { "port" };
            let dir = if write { "write to" } else { "read from" };
            tracing::info!(target: "devices", "ignored {dir} unclaimed {kind} {addr:#x} (logged once)");
        }
    }
}

impl Platform for MachineIo {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        let mut buf = [0xffu8; 4];
        let n = usize::from(size).clamp(1, 4);
        if !self.pm.read(u64::from(port), &mut buf[..n]) && !self.pio.read(u64::from(port), &mut buf[..n]) {
            self.note_unclaimed(false, u64::from(port), false);
        }
        u32::from_le_bytes(buf) & (u32::MAX >> (32 - 8 * n as u32))
    }

    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        let n = usize::from(size).clamp(1, 4);
        let bytes = &value.to_le_bytes()[..n];
        if !self.pm.write(u64::from(port), bytes) && !self.pio.write(u64::from(port), bytes) {
            self.note_unclaimed(false, u64::from(port), true);
        }
        if let Some(w) = &self.watch {
            w.after_write();
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0xff);
        // The local APIC page answers for the vCPU that reads it.
        devices::intc::set_current_cpu(self.cpu);
        if !self.mmio.read(addr, data) {
            self.note_unclaimed(true, addr & !0xfff, false);
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        devices::intc::set_current_cpu(self.cpu);
        if !self.mmio.write(addr, data) {
            self.note_unclaimed(true, addr & !0xfff, true);
        }
        if let Some(w) = &self.watch {
            w.after_write();
        }
    }

    fn interrupt_pending(&mut self) -> bool {
        self.intc.interrupt_pending(self.cpu)
    }

    fn ack_interrupt(&mut self) -> Option<u8> {
        self.intc.ack_interrupt(self.cpu)
    }

    fn cr8(&mut self) -> Option<u64> {
        Some(self.intc.cr8(self.cpu))
    }

    fn set_cr8(&mut self, value: u64) -> bool {
        self.intc.set_cr8(self.cpu, value);
        true
    }

    fn msr_read(&mut self, msr: u32) -> Option<u64> {
        if devices::intc::InterruptController::handles_msr(msr) {
            // `None` from the controller means the MSR faults: report 0 rather
            // than falling through to the CPU's table for APIC-owned MSRs.
            return Some(self.intc.msr_read(self.cpu, msr).unwrap_or(0));
        }
        None
    }

    fn msr_write(&mut self, msr: u32, value: u64) -> bool {
        devices::intc::InterruptController::handles_msr(msr) && self.intc.msr_write(self.cpu, msr, value)
    }

    fn tsc(&mut self) -> Option<u64> {
        Some(self.tsc.read(self.clock.now_ns()))
    }

    fn shift_tsc(&mut self, delta: u64) -> bool {
        self.tsc.shift(delta);
        true
    }

    fn stop_requested(&self) -> bool {
        // An NMI for this vCPU (one it sent itself too) is taken before
        // its next instruction: the engine returns, and the run loop
        // passes it on.
        self.intc.nmi_pending(self.cpu)
            || self.events.pending()
            || self.attention.load(Ordering::Relaxed)
            || self.exclusive_request.load(Ordering::Relaxed)
            || self.watch.as_ref().is_some_and(|w| w.moved())
            || self.shadow.as_ref().is_some_and(|(m, seen)| m.shadow_generation() != seen.load(Ordering::Acquire))
            || self.vram_moved()
    }
}
