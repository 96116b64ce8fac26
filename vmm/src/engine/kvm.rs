//! KVM as an engine (`--accel kvm`, the whole guest in KVM).
//!
//! Port and MMIO exits go to the machine's I/O interface. An emulation
//! failure (an instruction the host's KVM cannot run, on hosts whose KVM
//! emulates ring-0 code in software) moves the vCPU state into an
//! interpreter `Cpu`, which executes that one instruction and moves it
//! back ([`hvf_kvm_accel::fallback::emulate_one`]). With KVM's in-kernel
//! interrupt controllers, the machine's device lines and messages go to
//! them (lines by `KVM_IRQ_LINE`, messages by irqfd) and virtio queue
//! notifications reach the NIC thread by ioeventfd. The BIOS shadow's
//! write protection (the PAM registers) becomes read-only memory slots
//! before each run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cpu::{Cpu, CpuState, StopReason};
use devices::intc::InterruptController;
use devices::legacy::pit::Pit;
use hvf_kvm_accel::fallback::{emulate_one, Emulated};
use hvf_kvm_accel::kvm::debug::{hit_slot, GuestDebug, HwStop, DR6_BS};
use hvf_kvm_accel::kvm::KvmVcpu;
use hvf_kvm_accel::{IrqChip, Vcpu, VcpuKicker, Vm, VmExit};
use persist::Persist;

use super::alarm::Alarm;
use super::io::DeadlineWatch;
use super::{clock_ns_at, Engine, EngineContext, EngineStats, Exit, Kicker, MachineIo, Slice};
use crate::config::KvmPit;
use crate::error::Error;
use devices::intc::lapic::LapicState;

use super::kvm_chips;

/// What the vCPUs of one guest in KVM share: the VM, its message irqfds
/// and the virtio doorbells attached to it.
pub struct KvmShared<'m> {
    vm: Arc<dyn Vm>,
    /// The same VM, for what the trait does not cover (its in-kernel
    /// interrupt controllers' state).
    kvm: Arc<hvf_kvm_accel::kvm::KvmVm>,
    msi: Option<Arc<hvf_kvm_accel::irqfd::MsiIrqfds>>,
    /// Detaches the virtio doorbells from KVM when the VM goes.
    doorbells: Option<crate::device_manager::AttachedDoorbells<'m>>,
    /// Whether the vCPUs get the model's AVX part.
    avx: bool,
    /// The CPU model as KVM gives it, for `--stats`.
    model_line: String,
}

/// One vCPU of the guest in KVM.
pub struct KvmEngine<'m> {
    index: u32,
    mem: Arc<mmu::GuestMemory>,
    clock: devices::clock::SharedClock,
    shared: Arc<KvmShared<'m>>,
    vm: Arc<dyn Vm>,
    vcpu: KvmVcpu,
    io: MachineIo,
    /// The machine's interrupt controllers and PIT, which hold the state of
    /// KVM's while no VM runs the guest ([`Engine::save_chips`]).
    intc: Arc<InterruptController>,
    pit: Arc<parking_lot::Mutex<Pit>>,
    watch: Arc<DeadlineWatch>,
    /// Runs the instructions KVM cannot, on the same buses.
    fallback: Cpu,
    emulated: BTreeMap<String, u64>,
    fallback_time: Duration,
    kicker: VcpuKicker,
    alarm: Alarm,
    /// The shadow-protection generation the memory slots follow.
    shadow_seen: Arc<AtomicU64>,
    /// The VRAM base the VM's VRAM slot follows, for the run's stop test
    /// (`u64::MAX` for none).
    vram_seen: Arc<AtomicU64>,
    /// Which 16 KiB chunks of 0xC0000-0xFFFFF are read-only slots.
    shadow_ro: [bool; SHADOW_CHUNKS],
    /// A debugger's stops, while armed ([`Engine::set_debug`]).
    debug: Option<DebugArm>,
    /// The watchpoint the last debug stop hit.
    watch_hit: Option<cpu::WatchHit>,
}

/// A debugger's stops as KVM holds them.
struct DebugArm {
    stops: cpu::DebugStops,
    /// The same stops in KVM's terms: the watchpoints and breakpoints in
    /// the debug registers, in `stops`' order (breakpoints first).
    guest: GuestDebug,
    /// The first instruction runs even at a breakpoint (a resume goes past
    /// it): the next run steps over one there first.
    resume: bool,
}

/// The debug-register stops of `breakpoints` (one per address) and
/// `watchpoints`, in that order: a watchpoint for writes only stops on
/// writes; one for reads stops on any access (x86 watches no reads alone).
fn hw_stops(breakpoints: &[u64], watchpoints: &[cpu::Watchpoint]) -> Vec<HwStop> {
    let mut addrs = breakpoints.to_vec();
    addrs.sort_unstable();
    addrs.dedup();
    let mut hw: Vec<HwStop> = addrs.into_iter().map(HwStop::Exec).collect();
    hw.extend(watchpoints.iter().map(|w| {
        if w.write && !w.read {
            HwStop::Write { addr: w.addr, len: w.len }
        } else {
            HwStop::Access { addr: w.addr, len: w.len }
        }
    }));
    hw
}

/// Whether KVM's debug registers can hold `breakpoints` and `watchpoints`
/// (four in all, each watchpoint 1, 2, 4 or 8 bytes, aligned); why not.
/// kvm_pvm stops at no data breakpoint, so there a watchpoint is refused.
pub fn debug_stops_fit(breakpoints: &[u64], watchpoints: &[cpu::Watchpoint]) -> Result<(), String> {
    if !watchpoints.is_empty() && super::split::kvm_emulates_cpl0() {
        return Err("this host's KVM (kvm_pvm) does not stop at data breakpoints: watchpoints need the JIT, the \
                    interpreter or split execution"
            .into());
    }
    let d = GuestDebug { step: false, block_irq: false, hw: hw_stops(breakpoints, watchpoints) };
    hvf_kvm_accel::kvm::debug::guest_debug(&d).map(|_| ())
}

/// The CPU model as KVM gives it, as a `--stats` line; `missing` are the
/// x86-64-v3 features the vCPUs' CPUID lacks. Under `--cpu max` the guest
/// gets what KVM offers, as under QEMU's `-cpu max`, and what it lacks is
/// also logged as a warning.
pub(crate) fn model_under_kvm(model: cpu::cpuid::Model, missing: &[&str], emulated_cpl0: bool) -> String {
    let list = if missing.is_empty() { "none".to_string() } else { missing.join(" ") };
    if model != cpu::cpuid::Model::Max {
        return format!("CPU model {model} under KVM: KVM's CPUID, filtered; x86-64-v3 features missing: {list}");
    }
    let why = if emulated_cpl0 && !missing.is_empty() {
        " (this host's KVM runs the guest kernel in its instruction emulator, which has no XSAVE, AVX or CMPXCHG16B)"
    } else {
        ""
    };
    let line = format!("CPU model max under KVM: what KVM offers; x86-64-v3 features missing: {list}{why}");
    if !missing.is_empty() {
        tracing::warn!(target: "accel", "{line}");
    }
    line
}

/// The BIOS shadow area (the i440FX's PAM segments), in 16 KiB chunks.
const SHADOW_START: u64 = devices::pci::pam::SHADOW_START;
const SHADOW_CHUNK: u64 = 0x4000;
const SHADOW_CHUNKS: usize = ((0x10_0000 - SHADOW_START) / SHADOW_CHUNK) as usize;

impl<'m> KvmShared<'m> {
    /// The VM of the machine of `m`, with its interrupt routing and doorbells.
    pub fn new(m: &EngineContext<'m>) -> Result<Arc<Self>, Error> {
        let mut kvm = hvf_kvm_accel::kvm::Kvm::new()?;
        kvm.set_in_kernel_pit(m.config.kvm_pit == KvmPit::InKernel);
        kvm.set_in_kernel_irqchip(m.config.kvm_irqchip == crate::config::KvmIrqchip::InKernel);
        let model = m.config.cpu_model;
        // KVM's instruction emulator, which runs ring 0 on kvm_pvm hosts,
        // has no XSAVE: the AVX part of the model needs the kernel in
        // hardware.
        let emulated_cpl0 = super::split::kvm_emulates_cpl0();
        let avx = model.avx() && !emulated_cpl0;
        kvm.set_avx(avx);
        let t = m.config.topology;
        kvm.set_topology(hvf_kvm_accel::kvm::cpuid::Topology { threads: t.threads, cores: t.cores });
        let kvm_vm = Arc::new(kvm.create_kvm_vm(m.mem.clone())?);
        let missing = hvf_kvm_accel::kvm::cpuid::missing_v3(kvm_vm.cpuid());
        let model_line = model_under_kvm(model, &missing, emulated_cpl0);
        let vm: Arc<dyn Vm> = kvm_vm.clone();
        let in_kernel = matches!(vm.irqchip(), IrqChip::InKernel { .. });
        let intc = &m.intc;
        let mut msi = None;
        if in_kernel {
            // KVM models the PIC, I/O APIC and local APIC: device lines go there.
            let v = vm.clone();
            intc.set_forward(Box::new(move |irq, level| {
                if let Err(e) = v.set_irq_line(irq, level) {
                    tracing::warn!(target: "accel", "KVM refused IRQ {irq}: {e}");
                }
            }));
            // Messages (MSI-X) go to the in-kernel local APICs by irqfd.
            let irqfds = Arc::new(hvf_kvm_accel::irqfd::MsiIrqfds::new(vm.clone()));
            let i = irqfds.clone();
            intc.set_msi_forward(Box::new(move |message| {
                if let Err(e) = i.send(message.address, message.data) {
                    tracing::warn!(target: "accel", "KVM refused MSI {:#x}/{:#x}: {e}", message.address, message.data);
                }
            }));
            msi = Some(irqfds);
        }
        // Virtio queue notifications signal the NIC I/O thread's eventfds
        // instead of exiting to this thread (until the engine goes).
        let doorbells = m.devices.map(|n| {
            let v = vm.clone();
            n.attach_doorbells(Box::new(move |fd, site, attach| {
                let addr = if site.pio {
                    let port = u16::try_from(site.addr).map_err(|_| format!("port {:#x} is past 0xffff", site.addr))?;
                    hvf_kvm_accel::IoEventAddr::Pio(port)
                } else {
                    hvf_kvm_accel::IoEventAddr::Mmio(site.addr)
                };
                v.set_ioeventfd(fd, addr, site.len, site.datamatch, attach).map_err(|e| e.to_string())
            }))
        });
        Ok(Arc::new(KvmShared { vm, kvm: kvm_vm, msi, doorbells, avx, model_line }))
    }
}

impl<'m> KvmEngine<'m> {
    /// A one-vCPU guest in KVM: the VM and its vCPU 0.
    pub fn new(m: &EngineContext<'m>) -> Result<Self, Error> {
        Self::on(m, KvmShared::new(m)?)
    }

    /// vCPU `m.index` of the guest in `shared`, with KVM's vCPU ID its
    /// local APIC ID. The bootstrap processor starts in `m.boot_state`;
    /// with KVM's interrupt controllers, the others wait in KVM for their
    /// INIT and start-up IPIs.
    pub fn on(m: &EngineContext<'m>, shared: Arc<KvmShared<'m>>) -> Result<Self, Error> {
        let vm = shared.vm.clone();
        let in_kernel = matches!(vm.irqchip(), IrqChip::InKernel { .. });
        if !in_kernel && m.config.cpus() > 1 {
            return Err(Error::Accel(if m.config.kvm_irqchip == crate::config::KvmIrqchip::User {
                "several vCPUs under KVM need KVM's interrupt controllers (--kvm-irqchip kernel, QEMU's \
                 kernel-irqchip=on)"
                    .into()
            } else {
                "several vCPUs under KVM need KVM's interrupt controllers, which this host's KVM does not offer".into()
            }));
        }
        let mut vcpu = shared.kvm.create_kvm_vcpu(m.config.topology.apic_id(m.index))?;
        // With the machine's own controllers, their interrupts go in
        // before each entry.
        vcpu.set_injects_interrupts(true);
        if m.index == 0 || !in_kernel {
            vcpu.set_state(&m.boot_state)?;
        }
        let kicker = vcpu.kicker()?;
        let k = kicker.clone();
        let alarm = Alarm::new(Arc::new(move || k.kick()))?;
        let (mut io, watch) = m.io_watching_timers();
        let shadow_seen = Arc::new(AtomicU64::new(0));
        io.shadow = Some((m.mem.clone(), shadow_seen.clone()));
        let vram_seen = Arc::new(AtomicU64::new(u64::MAX));
        io.vram_seen = Some(vram_seen.clone());
        let mut fallback = Cpu::new(m.mem.clone(), Box::new(m.io.clone()));
        fallback.set_model(m.config.cpu_model);
        fallback.set_topology(m.config.topology, m.index);
        fallback.set_avx(shared.avx);
        Ok(KvmEngine {
            index: m.index,
            mem: m.mem.clone(),
            clock: m.clock.clone(),
            shared,
            vm,
            vcpu,
            io,
            intc: m.intc.clone(),
            pit: m.pit.clone(),
            watch,
            fallback,
            emulated: BTreeMap::new(),
            fallback_time: Duration::ZERO,
            kicker,
            alarm,
            shadow_seen,
            vram_seen,
            shadow_ro: [false; SHADOW_CHUNKS],
            debug: None,
            watch_hit: None,
        })
    }

    /// Follow the BIOS shadow's write protection (the PAM registers) with
    /// read-only memory slots, 16 KiB at a time, before the vCPU runs again.
    fn sync_shadow(&mut self) -> Result<(), Error> {
        let mem = &self.mem;
        let g = mem.shadow_generation();
        if g == self.shadow_seen.load(Ordering::Acquire) {
            return Ok(());
        }
        self.shadow_seen.store(g, Ordering::Release);
        for (i, was) in self.shadow_ro.iter_mut().enumerate() {
            let base = SHADOW_START + i as u64 * SHADOW_CHUNK;
            let ro = mem.is_shadow_read_only(base);
            if ro != *was {
                self.vm.protect(base, base + SHADOW_CHUNK, ro)?;
                *was = ro;
            }
        }
        Ok(())
    }

    /// Maps the VRAM where guest memory decodes it now (a BAR0 write
    /// stops the run for it), before the vCPU runs again. A slot KVM
    /// refuses leaves the VRAM MMIO: its stores reach the adapter.
    fn follow_vram(&mut self) {
        let Some(v) = self.mem.vram() else { return };
        let base = v.base().unwrap_or(u64::MAX);
        if base == self.vram_seen.load(Ordering::Acquire) {
            return;
        }
        self.vram_seen.store(base, Ordering::Release);
        if let Err(e) = self.vm.follow_vram() {
            tracing::warn!(target: "vmm", "the VRAM stays MMIO to KVM: {e}");
        }
    }

    /// A resume at a breakpoint: runs the one instruction there with the
    /// debug registers off, then arms them again. `Some` when the run ends
    /// there: the step was the debugger's own, or the vCPU was asked to
    /// stop first (the step over is then tried again at the next run).
    fn step_over_breakpoint(&mut self, slice: &Slice) -> Result<Option<Exit>, Error> {
        let Some(arm) = self.debug.as_mut() else { return Ok(None) };
        arm.resume = false;
        let s = self.vcpu.get_state()?;
        let pc = s.seg[cpu::state::sreg::CS].base.wrapping_add(s.rip);
        if !arm.stops.breakpoints.contains(&pc) {
            return Ok(None);
        }
        let user_step = arm.stops.step;
        let guest = arm.guest.clone();
        self.vcpu.set_guest_debug(Some(&GuestDebug { step: true, block_irq: true, hw: Vec::new() }))?;
        let exit = self.enter(slice);
        self.vcpu.set_guest_debug(Some(&guest))?;
        match exit? {
            VmExit::Debug { dr6, .. } if dr6 & DR6_BS != 0 => Ok(user_step.then_some(Exit::Debug)),
            VmExit::Interrupted => {
                if let Some(arm) = self.debug.as_mut() {
                    arm.resume = true;
                }
                Ok(Some(Exit::Budget))
            }
            other => self.exit_of(other).map(Some),
        }
    }

    /// One entry into KVM, kicked out by the slice's deadline.
    fn enter(&mut self, slice: &Slice) -> Result<VmExit, Error> {
        self.alarm.set(slice.until);
        self.watch.arm(slice.until.map_or(u64::MAX, |t| clock_ns_at(&self.clock, t)));
        let exit = self.vcpu.run(&mut self.io);
        self.alarm.set(None);
        Ok(exit?)
    }

    /// What the run loop makes of a return from KVM.
    fn exit_of(&mut self, exit: VmExit) -> Result<Exit, Error> {
        match exit {
            VmExit::Hlt => Ok(Exit::Halted),
            VmExit::Interrupted => Ok(Exit::Budget),
            VmExit::Shutdown => Ok(Exit::Shutdown("triple fault under KVM".into())),
            VmExit::InternalError { suberror: 1, .. } => self.emulate(),
            VmExit::Debug { dr6, .. } => Ok(self.debug_stop(dr6)),
            other => Err(Error::Accel(format!("{other}"))),
        }
    }

    /// A debug exit: which stop it was (a watchpoint's hit is kept for
    /// [`Engine::take_watch_hit`]).
    fn debug_stop(&mut self, dr6: u64) -> Exit {
        if let (Some(arm), Some(slot)) = (&self.debug, hit_slot(dr6)) {
            self.watch_hit = match arm.guest.hw.get(slot) {
                Some(HwStop::Write { addr, .. }) => Some(cpu::WatchHit { addr: *addr, write: true }),
                Some(HwStop::Access { addr, .. }) => Some(cpu::WatchHit { addr: *addr, write: false }),
                _ => None,
            };
        }
        Exit::Debug
    }

    /// Run the instruction KVM could not in the interpreter.
    fn emulate(&mut self) -> Result<Exit, Error> {
        Ok(match emulate_one(&mut self.vcpu, &mut self.fallback)? {
            Emulated::Ran { mnemonic, stop, took } => {
                *self.emulated.entry(mnemonic).or_default() += 1;
                self.fallback_time += took;
                match stop {
                    StopReason::Shutdown(chain) => Exit::Shutdown(format!("{chain} in the fallback interpreter")),
                    // An emulated HLT: KVM's userspace irqchip mode does not wait by itself.
                    StopReason::Halted if self.vm.irqchip() == IrqChip::Userspace => Exit::Halted,
                    _ => Exit::Budget,
                }
            }
            // KVM delivers the event at the next entry, before the instruction.
            Emulated::EventPending(ev) => {
                tracing::debug!(target: "accel", "fallback deferred: {ev}");
                Exit::Budget
            }
        })
    }
}

impl Engine for KvmEngine<'_> {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn run(&mut self, slice: &Slice) -> Result<Exit, Error> {
        self.sync_shadow()?;
        self.follow_vram();
        if self.debug.as_ref().is_some_and(|d| d.resume) {
            if let Some(exit) = self.step_over_breakpoint(slice)? {
                return Ok(exit);
            }
        }
        let exit = self.enter(slice)?;
        self.exit_of(exit)
    }

    fn kicker(&self) -> Option<Kicker> {
        let k = self.kicker.clone();
        Some(Arc::new(move || k.kick()))
    }

    fn kicks_for_interrupts(&self) -> bool {
        // In-kernel controllers get their lines directly; the machine's
        // own are looked at before each entry, so a vCPU in KVM is kicked
        // out for a new interrupt.
        self.vm.irqchip() == IrqChip::Userspace
    }

    fn reset(&mut self, state: &CpuState) -> Result<(), Error> {
        // The VM's interrupt controllers and PIT once, with the
        // bootstrap processor; each vCPU resets its own local APIC.
        if self.index == 0 {
            self.vm.reset_devices()?;
        }
        self.vcpu.reset(state)?;
        self.fallback.flush_code_cache();
        Ok(())
    }

    fn state(&mut self) -> Result<CpuState, Error> {
        Ok(self.vcpu.get_state()?)
    }

    fn set_state(&mut self, state: &CpuState) -> Result<(), Error> {
        let mut s = *state;
        s.materialize_flags();
        Ok(self.vcpu.set_state(&s)?)
    }

    fn inject_nmi(&mut self) -> Result<(), Error> {
        Ok(self.vcpu.inject_nmi()?)
    }

    fn set_debug(&mut self, stops: Option<cpu::DebugStops>) -> Result<(), Error> {
        self.watch_hit = None;
        let Some(stops) = stops else {
            self.debug = None;
            return Ok(self.vcpu.set_guest_debug(None)?);
        };
        let hw = hw_stops(&stops.breakpoints, &stops.watchpoints);
        let guest = GuestDebug { step: stops.step, block_irq: true, hw };
        self.vcpu.set_guest_debug(Some(&guest))?;
        self.debug = Some(DebugArm { stops, guest, resume: true });
        Ok(())
    }

    fn take_watch_hit(&mut self) -> Option<cpu::WatchHit> {
        self.watch_hit.take()
    }

    fn save_chips(&mut self) -> Result<(), Error> {
        let Some(regs) = self.vcpu.lapic()? else { return Ok(()) };
        let cpu = self.index as usize;
        let state = self.vcpu.get_state()?;
        let now = self.clock.now_ns();
        let chip_error = |what: &str, e: persist::PersistError| {
            Error::Accel(format!("KVM's {what} does not fit the machine's model: {e}"))
        };
        let lapic = LapicState::from_register_page(&regs.page, state.msr.apic_base, regs.tsc_deadline, now)
            .ok_or_else(|| Error::Accel("KVM's local APIC page is short".into()))?;
        let startup = kvm_chips::startup_from_kvm(regs.mp_state, cpu == 0);
        self.intc.set_cpu_state(cpu, lapic, startup).map_err(|e| chip_error("local APIC", e))?;
        if cpu != 0 {
            return Ok(());
        }
        let Some(chips) = self.shared.kvm.chips()? else { return Ok(()) };
        let model = self.intc.save();
        let pic = kvm_chips::pics_from_kvm(&chips.pic, &model.pic);
        self.intc
            .set_chip_state(pic, kvm_chips::ioapic_from_kvm(&chips.ioapic))
            .map_err(|e| chip_error("8259A pair or I/O APIC", e))?;
        if let Some(kpit) = &chips.pit {
            let mut pit = self.pit.lock();
            let state = kvm_chips::pit_from_kvm(kpit, &pit.save(), now);
            pit.restore(&state).map_err(|e| chip_error("PIT", e))?;
        }
        Ok(())
    }

    fn load_chips(&mut self) -> Result<(), Error> {
        let Some(mut regs) = self.vcpu.lapic()? else { return Ok(()) };
        let cpu = self.index as usize;
        let now = self.clock.now_ns();
        let (mut lapic, startup) =
            self.intc.cpu_state(cpu).ok_or_else(|| Error::Accel(format!("the machine has no CPU {cpu}")))?;
        // IA32_APIC_BASE first: KVM reads the page in the mode it sets.
        let mut state = self.vcpu.get_state()?;
        state.msr.apic_base = lapic.apic_base;
        self.vcpu
            .set_state(&state)
            .map_err(|e| Error::Accel(format!("IA32_APIC_BASE {:#x} of CPU {cpu}: {e}", lapic.apic_base)))?;
        if !lapic.to_register_page(&mut regs.page, now) {
            return Err(Error::Accel("KVM's local APIC page is short".into()));
        }
        regs.tsc_deadline = lapic.tsc_deadline;
        regs.mp_state = kvm_chips::startup_to_kvm(&startup, state.halted != 0, cpu);
        self.vcpu.set_lapic(&regs)?;
        if lapic.nmi_pending {
            self.vcpu.inject_nmi()?;
        }
        // The model's timer stands while KVM's runs the guest's.
        lapic.timer_initial = 0;
        lapic.timer_next_ns = None;
        lapic.tsc_deadline = 0;
        lapic.nmi_pending = false;
        lapic.extint_pending = false;
        self.intc
            .set_cpu_state(cpu, lapic, startup)
            .map_err(|e| Error::Accel(format!("the machine's local APIC {cpu}: {e}")))?;
        if cpu != 0 {
            return Ok(());
        }
        let Some(mut chips) = self.shared.kvm.chips()? else { return Ok(()) };
        let model = self.intc.save();
        chips.pic = kvm_chips::pics_to_kvm(&model.pic, &chips.pic);
        chips.ioapic = kvm_chips::ioapic_to_kvm(&model.ioapic);
        if let Some(kpit) = &mut chips.pit {
            let mut pit = self.pit.lock();
            *kpit = kvm_chips::pit_to_kvm(&pit.save(), kpit, now);
            // KVM's PIT raises IRQ0 now; the model's stands.
            pit.restore(&Pit::power_on_state()).map_err(|e| Error::Accel(format!("the machine's PIT: {e}")))?;
        }
        self.shared.kvm.set_chips(&chips)?;
        Ok(())
    }

    fn set_exclusive(&mut self, run: cpu::ExclusiveFn) {
        self.fallback.set_exclusive(Some(run));
    }

    fn stats(&mut self, total: Duration) -> EngineStats {
        let st = self.vcpu.stats();
        let mut lines = vec![format!("exits: {} ({} entries into KVM)", st.exits, st.entries)];
        if self.vm.irqchip() == IrqChip::Userspace && st.injected > 0 {
            lines.push(format!("interrupts injected from the machine's controllers: {}", st.injected));
        }
        if self.index == 0 {
            lines.insert(0, self.shared.model_line.clone());
        }
        lines.push(if self.emulated.is_empty() {
            "fallback emulations: none".to_string()
        } else {
            format!(
                "fallback emulations: {} ({:.3} s)",
                self.emulated.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "),
                self.fallback_time.as_secs_f64()
            )
        });
        lines.push(format!(
            "time in KVM {:.3} s, in userspace {:.3} s (devices {:.3} s)",
            st.in_guest.as_secs_f64(),
            total.saturating_sub(st.in_guest).as_secs_f64(),
            st.in_handlers.as_secs_f64()
        ));
        if self.index == 0 {
            lines.push(format!("interrupt controllers: {}", self.vm.irqchip()));
            if let Some(d) = &self.shared.doorbells {
                lines.push(format!("virtio doorbells on ioeventfd: {} attached", d.count()));
            }
            if let Some(m) = &self.shared.msi {
                lines.push(m.summary());
            }
        }
        EngineStats { instructions: None, lines }
    }
}
