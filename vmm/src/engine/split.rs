//! Split execution: the guest kernel (CPL 0) in the JIT (its interpreter for
//! cold code), user code (CPL 3) in KVM.
//!
//! On hosts whose KVM runs CPL-0 guest code in its own software instruction
//! emulator (kvm_pvm: nested virtualization without VT-x/AMD-V), a kernel
//! runs at about 1 µs per instruction there and stops on the instructions
//! that emulator lacks; the interpreter runs it two orders of magnitude
//! faster. User code still runs natively. The guest moves between the two:
//!
//! - **Interpreter → KVM.** The interpreter runs with
//!   [`SplitPolicy`]. At CPL 3 it runs user code itself for up to
//!   [`USER_BUDGET`] instructions, as a hand-over costs about that much: a
//!   loop of short system calls never leaves the interpreter. Past the
//!   budget (that address space then goes to KVM at once, until a short
//!   stint there shows otherwise or 64 hand-overs have passed: on kvm_pvm a
//!   hand-over alone can take longer than a "short" stint), or at a user
//!   instruction that raises #UD in the interpreter (AVX: kvm_pvm runs user
//!   code with the host's features), the state goes to the vCPU. On the way
//!   back the user pages whose bytes KVM changed lose their decoded blocks
//!   ([`Cpu::recheck_user_code`]).
//!   If the interpreter changed translations since the last hand-over (it
//!   executed a TLB flush: INVLPG, INVPCID, a CR3 or CR4 load), KVM's
//!   shadow page tables are dropped first ([`Vm::flush_translations`]):
//!   KVM learns of page-table changes by trapping the guest's writes, and
//!   the interpreter's writes are not trapped.
//! - **KVM → interpreter.** The kernel's code pages are hidden from KVM
//!   ([`Vm::hide`]), so the first instruction the vCPU would run in the
//!   kernel cannot be fetched and KVM stops with an emulation failure.
//!   They are the `.text` of a kernel the host loaded; a kernel the host
//!   did not see (a BIOS boot) runs with the firmware and boot loader
//!   wholly in the JIT and interpreter until user code first runs, when
//!   its code is found from the entry points the CPU state names
//!   ([`kernel_code::find`]: the IDT's gates and the SYSCALL/SYSENTER
//!   targets, through the guest's page tables); it is found again before a
//!   hand-over when those change, and after a reset. KVM stops:
//!   - after an exception or interrupt delivered from user mode, at the
//!     handler's first instruction, with the frame pushed: the interpreter
//!     goes on from there;
//!   - after a SYSCALL, at the entry point with RCX/R11 set but the
//!     segments not yet switched (found so by an emulation failure or a
//!     kick): the interpreter performs the SYSCALL's transition itself
//!     ([`Cpu::enter_syscall`]) and goes on;
//!   - an `int n` whose handler is hidden comes back as #UD at that
//!     instruction: the #UD frame is unwound and the interpreter executes
//!     the `int n`.
//!
//!   A device interrupt kicks the vCPU out of KVM, and so do the slice's
//!   deadline (the next timer) and machine events: the machine's run loop
//!   gets control back while the vCPU still holds the state, and the next
//!   [`Engine::run`] goes on in KVM, or, when an interrupt waits, takes the
//!   state back so that the interpreter delivers it.
//! - The interrupt controllers and timers are the machine's own (KVM's
//!   userspace irqchip mode), so one set of devices serves both engines.
//!   The machine's TSC follows KVM's (its rate and value), so the guest
//!   reads one counter in both.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpu::state::{cr, flags, reg, sreg, CpuState};
use cpu::{Cpu, FxEvent, Platform, StopReason};

use super::split_policy::SplitPolicy;
use hvf_kvm_accel::kvm::{ExtendedState, KvmVcpu, KvmVm};
use hvf_kvm_accel::{Vcpu, VcpuKicker, Vm, VmExit};

use super::alarm::Alarm;
use super::interp::exit_of;
use super::kernel_code::{self, EntryRegisters, KernelCode, NotFound};
use super::{Engine, EngineContext, EngineStats, Exit, Kicker, MachineIo, Slice};
use crate::config::SplitMode;
use crate::error::Error;

/// How far (in milliseconds of the counter) KVM's TSC may lie from the
/// value it was given before the machine takes KVM's instead.
const TSC_SLACK_MS: u64 = 10;

/// Whether this host's KVM runs CPL-0 guest code in software (kvm_pvm).
pub fn kvm_emulates_cpl0() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Counters for `--stats`.
#[derive(Default)]
struct SplitStats {
    /// Hand-overs to KVM.
    to_kvm: u64,
    /// Returns to the interpreter, by cause.
    kernel_entries: u64,
    syscalls: u64,
    int_n: u64,
    kicks: u64,
    user_steps: u64,
    flushes: u64,
    /// AVX/AVX-512 state put back for a save area the kernel restored.
    extended_restores: u64,
    in_kvm: Duration,
}

/// A stay of user code in KVM: the vCPU holds the guest's state.
struct Stint {
    /// The state handed over (the vCPU got [`for_kvm`] of it).
    entry: CpuState,
    start: Instant,
}

/// The kernel in the JIT (the interpreter for cold code) or, where the JIT
/// cannot start, the interpreter alone; user code in KVM.
pub struct SplitEngine {
    cpu: Cpu,
    /// Compiles and runs CPL 0 code only.
    jit: Option<jit::Jit>,
    vm: KvmVm,
    vcpu: KvmVcpu,
    io: MachineIo,
    kicker: VcpuKicker,
    alarm: Alarm,
    stint: Option<Stint>,
    /// The interpreter's TLB flush count at the last hand-over.
    flushes_at_handover: Option<u64>,
    /// User code's extended state, by FXSAVE area.
    extended: HashMap<u64, ExtendedState>,
    /// The CPU model the guest gets, for `--stats`.
    model_line: String,
    /// Bytes of kernel code hidden from KVM.
    hidden: u64,
    /// Where the hidden kernel code comes from.
    kernel: KernelSource,
    st: SplitStats,
}

/// How split execution knows the kernel's code.
enum KernelSource {
    /// The host loaded the kernel: its `.text`, hidden from the start.
    Loaded,
    /// Found in the guest ([`kernel_code::find`]) once user code runs.
    Found(Found),
}

/// The kernel's code as found in the guest.
#[derive(Default)]
struct Found {
    /// The entry registers the hidden pages were found from; `None`: not
    /// found (yet, or since a reset).
    from: Option<EntryRegisters>,
    /// The physical pages hidden from KVM.
    pages: BTreeSet<u64>,
    /// Entry points that led there, and those that led elsewhere.
    entries: usize,
    skipped: usize,
    /// Scans so far, and the instruction count at the first that found code.
    scans: u64,
    found_at: Option<u64>,
    /// Why the last scan that failed did.
    missed: Option<NotFound>,
    /// Kernel entries KVM made outside the hidden pages (they ran in KVM
    /// until a kick or an instruction it could not run).
    escapes: u64,
}

/// Instructions the interpreter runs before looking for the kernel's code
/// again, after a scan that found none.
const RESCAN_AFTER: u64 = 10_000_000;

impl SplitEngine {
    /// Whether `--accel kvm` splits execution on this machine.
    /// `auto`: where KVM runs CPL 0 in software, for a kernel the host
    /// loaded, a BIOS boot or a restored guest (whose kernel's code is
    /// found in the guest).
    pub fn wanted(m: &EngineContext<'_>) -> bool {
        match m.config.kvm_split {
            SplitMode::Off => false,
            SplitMode::On => true,
            SplitMode::Auto => (!m.kernel_code.is_empty() || m.kernel_in_guest()) && kvm_emulates_cpl0(),
        }
    }

    pub fn new(m: &EngineContext<'_>) -> Result<Self, Error> {
        let io = m.io.clone();
        let mut cpu = super::interp::boot_cpu(m);
        // kvm_pvm runs user code with the host's XCR0, whatever the guest
        // set: an XSAVE area a user program sized from this CPU's CPUID
        // (glibc's dynamic linker sizes its XSAVEC area so) would be
        // overrun by the host's AVX-512 state. The guest gets FXSAVE only,
        // and so no AVX.
        cpu.set_xsave(false);
        let missing = missing_v3(&cpu);
        let model_line = format!(
            "CPU model {} (split execution, one CPUID for kernel and user code): x86-64-v3 features missing: {}",
            m.config.cpu_model,
            if missing.is_empty() { "none".to_string() } else { missing.join(" ") }
        );
        if m.config.cpu_model == cpu::cpuid::Model::Max {
            tracing::warn!(
                target: "accel",
                "--cpu max under split execution: the kernel and user code see one CPU without XSAVE (this host's \
                 KVM runs user code with the host's XCR0, which the kernel's save areas could not hold), so the \
                 guest lacks {}; --accel jit runs the whole model",
                missing.join(" ")
            );
        }
        let mut kvm = hvf_kvm_accel::kvm::Kvm::new()?;
        kvm.set_in_kernel_irqchip(false);
        kvm.restrict_cpuid(Some(interpreter_features(&cpu)));
        let vm = kvm.create_kvm_vm(m.mem.clone())?;
        let mut hidden = 0;
        for &(s, e) in m.kernel_code {
            // Whole pages: Linux frees the pages after `.text` from the first
            // page boundary past its end, never the page `.text` ends in.
            let (s, e) = (s & !0xfff, (e + 0xfff) & !0xfff);
            if s < e {
                vm.hide(s, e)?;
                hidden += e - s;
            }
        }
        let mut vcpu = vm.create_kvm_vcpu(0)?;
        // One time-stamp counter for both engines, at KVM's rate, going on
        // from the machine's (a restored guest's from where it was saved).
        let (_, khz) = vcpu.tsc()?;
        let now = m.clock.now_ns();
        let tsc = m.tsc.read(now);
        m.tsc.retune(now, khz * 1000, tsc);
        vcpu.set_tsc(tsc)?;
        // Where KVM keeps its own counter whatever it is told (kvm_pvm:
        // the host's), the machine's follows KVM's instead: otherwise user
        // code in KVM reads a TSC far from the kernel's, and the vDSO's
        // clock jumps by minutes between the two engines.
        let (kvm_tsc, _) = vcpu.tsc()?;
        let now = m.clock.now_ns();
        if kvm_tsc.abs_diff(m.tsc.read(now)) > khz * TSC_SLACK_MS {
            if m.tsc.read(now) > khz * 1000 {
                // A guest that ran before (restored, or migrated in) keeps
                // its own clock: a jump would break its timekeeping.
                tracing::warn!(
                    target: "vmm",
                    "KVM does not take the guest's TSC here: user code in KVM reads KVM's own counter, not the \
                     guest's, and clocks read through the vDSO there are off"
                );
            } else {
                m.tsc.retune(now, khz * 1000, kvm_tsc);
            }
        }
        let kicker = vcpu.kicker()?;
        let k = kicker.clone();
        let alarm = Alarm::new(Arc::new(move || k.kick()))?;
        let mut policy = SplitPolicy::new(USER_BUDGET);
        let kernel = if m.kernel_code.is_empty() {
            // Everything stays in the interpreter until user code runs.
            policy.find_kernel_at = Some(0);
            KernelSource::Found(Found::default())
        } else {
            KernelSource::Loaded
        };
        cpu.set_hooks(Some(Box::new(policy)));
        let jit = match crate::engine::jit::config_from_env(m.config) {
            Ok(mut cfg) => {
                cfg.kernel_only = true;
                match jit::Jit::new(&mut cpu, cfg) {
                    Ok(j) => Some(j),
                    Err(e) => {
                        tracing::warn!(target: "accel", "split execution: the JIT cannot start ({e}); the kernel runs in the interpreter");
                        None
                    }
                }
            }
            Err(e) => return Err(e),
        };
        Ok(SplitEngine {
            cpu,
            jit,
            vm,
            vcpu,
            io,
            kicker,
            alarm,
            stint: None,
            flushes_at_handover: None,
            extended: HashMap::new(),
            model_line,
            hidden,
            kernel,
            st: SplitStats::default(),
        })
    }

    /// Whether the hidden pages are the kernel's code as the CPU state now
    /// names it, looking for it first if the kernel was found in the guest
    /// and its entry registers changed since (or it was not found yet).
    /// `false`: not found; user code stays in the interpreter for now.
    fn kernel_code_current(&mut self) -> Result<bool, Error> {
        let KernelSource::Found(f) = &mut self.kernel else { return Ok(true) };
        let now = EntryRegisters::of(&self.cpu.state);
        if f.from == Some(now) {
            return Ok(true);
        }
        f.scans += 1;
        let (pages, from) = match kernel_code::find(&self.cpu.state, self.cpu.paging(), self.cpu.mem()) {
            Ok(code) => {
                (f.entries, f.skipped, f.missed) = (code.entries, code.skipped, None);
                f.found_at.get_or_insert(self.cpu.stats.instructions);
                (code.pages, Some(now))
            }
            Err(why) => {
                tracing::debug!(target: "accel", "split execution: no kernel code found yet: {why}");
                f.missed = Some(why);
                (BTreeSet::new(), None)
            }
        };
        self.hide_found(pages, from)?;
        Ok(from.is_some())
    }

    /// Hide `pages` (the kernel's code found from `from`) from KVM instead
    /// of those hidden so far; with `from` `None` (none found) user code
    /// stays in the interpreter until [`RESCAN_AFTER`] more instructions.
    fn hide_found(&mut self, pages: BTreeSet<u64>, from: Option<EntryRegisters>) -> Result<(), Error> {
        let KernelSource::Found(f) = &mut self.kernel else { return Ok(()) };
        let gone: BTreeSet<u64> = f.pages.difference(&pages).copied().collect();
        let new: BTreeSet<u64> = pages.difference(&f.pages).copied().collect();
        for (s, e) in KernelCode::ranges(&gone) {
            self.vm.protect(s, e, false)?;
        }
        for (s, e) in KernelCode::ranges(&new) {
            self.vm.hide(s, e)?;
        }
        if !gone.is_empty() || !new.is_empty() {
            tracing::debug!(target: "accel", "split execution: {} kernel code pages hidden from KVM ({} ranges)", pages.len(), KernelCode::ranges(&pages).len());
        }
        self.hidden = pages.len() as u64 * 0x1000;
        f.pages = pages;
        f.from = from;
        let instructions = self.cpu.stats.instructions;
        if let Some(p) = SplitPolicy::of(&mut self.cpu) {
            p.find_kernel_at = if from.is_some() { None } else { Some(instructions + RESCAN_AFTER) };
        }
        Ok(())
    }

    /// After a kernel entry from KVM (the interpreter holds the state at
    /// the kernel's first instruction): count it if KVM ran it outside the
    /// hidden pages found in the guest.
    fn note_escape(&mut self) {
        let KernelSource::Found(f) = &mut self.kernel else { return };
        let rip = self.cpu.state.rip;
        let hidden = self.cpu.code_phys_walk(rip).is_some_and(|p| f.pages.contains(&(p & !0xfff)));
        if !hidden {
            f.escapes += 1;
        }
    }

    /// Hand the state to the vCPU.
    fn hand_over(&mut self) -> Result<(), Error> {
        if self.flushes_at_handover != Some(self.cpu.mmu.flushes) {
            self.vm.flush_translations()?;
            self.st.flushes += 1;
        }
        sync_extended(&mut self.cpu, &self.vcpu, &mut self.extended, &mut self.st)?;
        let mut entry = self.cpu.state;
        entry.materialize_flags();
        self.vcpu.set_state(&for_kvm(&entry)).map_err(|e| {
            Error::Accel(format!(
                "{e} (handing over CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} CS {:#x} RIP {:#x})",
                entry.cr0,
                entry.cr3,
                entry.cr4,
                entry.efer,
                entry.seg[sreg::CS].selector,
                entry.rip
            ))
        })?;
        self.st.to_kvm += 1;
        self.stint = Some(Stint { entry, start: Instant::now() });
        Ok(())
    }

    /// The stint is over; the interpreter holds the state.
    fn end_stint(&mut self) {
        self.stint = None;
        self.flushes_at_handover = Some(self.cpu.mmu.flushes);
    }

    /// Take the state back from a vCPU stopped between instructions (by a
    /// kick, or for the machine): go on in the interpreter.
    fn take_back_now(&mut self) -> Result<(), Error> {
        let Some(stint) = &self.stint else { return Ok(()) };
        let entry = stint.entry;
        let s = self.vcpu.get_state()?;
        if half_done_syscall(&s, &entry) {
            // Stopped between a SYSCALL's two halves.
            finish_syscall(&mut self.cpu, s, &entry, &mut self.st);
        } else {
            let kernel = s.cpl == 0;
            take_back(&mut self.cpu, s, &entry);
            if kernel {
                // Stopped right after KVM entered the kernel.
                self.note_escape();
                kernel_entry(&mut self.cpu, &entry, &mut self.st);
            }
        }
        self.end_stint();
        Ok(())
    }

    /// Go on with the stint in KVM.
    fn in_kvm(&mut self, slice: &Slice) -> Result<Exit, Error> {
        // An interrupt for the kernel to take: the interpreter delivers it.
        if self.io.interrupt_pending() && self.vcpu.pending_event()?.is_none() {
            self.st.kicks += 1;
            self.take_back_now()?;
            return Ok(Exit::Budget);
        }
        // The VRAM where the kernel (in the JIT) last put BAR0: user code
        // stores to it through KVM's slot.
        if let Err(e) = hvf_kvm_accel::Vm::follow_vram(&self.vm) {
            tracing::warn!(target: "accel", "the VRAM stays MMIO to KVM: {e}");
        }
        self.alarm.set(slice.until);
        let t = Instant::now();
        let exit = self.vcpu.run(&mut self.io);
        self.st.in_kvm += t.elapsed();
        self.alarm.set(None);
        let Some(stint) = &self.stint else { return Ok(Exit::Budget) };
        let (entry, short) = (stint.entry, stint.start.elapsed() < SHORT_STINT);
        match exit? {
            VmExit::Interrupted | VmExit::Hlt if self.vcpu.pending_event()?.is_some() => {
                // KVM is delivering an exception: the next run lets it finish.
            }
            exit @ (VmExit::Interrupted | VmExit::Hlt) => {
                if exit == VmExit::Hlt || self.io.interrupt_pending() {
                    self.st.kicks += 1;
                    self.take_back_now()?;
                }
                // Otherwise (the slice's deadline, a machine event) the
                // vCPU keeps the state: the machine looks at its timers
                // and events, and the next run goes on in KVM.
            }
            VmExit::Shutdown => {
                self.end_stint();
                return Ok(Exit::Shutdown("triple fault in user mode under KVM".into()));
            }
            VmExit::InternalError { suberror: 1, .. } => {
                if self.vcpu.pending_event()?.is_some() {
                    // Not at an instruction boundary: KVM delivers first.
                    return Ok(Exit::Budget);
                }
                let s = self.vcpu.get_state()?;
                if s.cpl == 0 {
                    take_back(&mut self.cpu, s, &entry);
                    self.note_escape();
                    kernel_entry(&mut self.cpu, &entry, &mut self.st);
                    user_stint(&mut self.cpu, short);
                } else if half_done_syscall(&s, &entry) {
                    finish_syscall(&mut self.cpu, s, &entry, &mut self.st);
                    user_stint(&mut self.cpu, short);
                } else {
                    // A user instruction KVM could not run: the interpreter runs it.
                    take_back(&mut self.cpu, s, &entry);
                    self.cpu.flush_code_cache();
                    self.cpu.step();
                    self.st.user_steps += 1;
                }
                self.end_stint();
            }
            other => return Err(Error::Accel(format!("{other}"))),
        }
        Ok(Exit::Budget)
    }
}

impl Engine for SplitEngine {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn run(&mut self, slice: &Slice) -> Result<Exit, Error> {
        if self.stint.is_some() {
            return self.in_kvm(slice);
        }
        let why = match &mut self.jit {
            Some(j) => j.run(&mut self.cpu, slice.instructions),
            None => self.cpu.run(slice.instructions),
        };
        match why {
            StopReason::UserMode => {
                if !self.kernel_code_current()? {
                    return Ok(Exit::Budget);
                }
                self.hand_over()?;
                self.in_kvm(slice)
            }
            why => Ok(exit_of(why)),
        }
    }

    fn kicker(&self) -> Option<Kicker> {
        let k = self.kicker.clone();
        Some(Arc::new(move || k.kick()))
    }

    fn kicks_for_interrupts(&self) -> bool {
        // The interpreter delivers every interrupt: user code in KVM must
        // come back for it.
        true
    }

    fn reset(&mut self, state: &CpuState) -> Result<(), Error> {
        self.stint = None;
        self.flushes_at_handover = None;
        self.extended.clear();
        self.cpu.set_state(*state);
        self.cpu.flush_code_cache();
        if matches!(self.kernel, KernelSource::Found(_)) {
            // The next kernel may sit elsewhere (KASLR): the pages hidden so
            // far go back to KVM, and its code is looked for again.
            self.hide_found(BTreeSet::new(), None)?;
            if let Some(p) = SplitPolicy::of(&mut self.cpu) {
                p.find_kernel_at = Some(0);
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<CpuState, Error> {
        if let Some(stint) = &self.stint {
            if self.vcpu.pending_event()?.is_some() {
                // Mid-delivery in KVM: the vCPU's state as it is, left there.
                let mut s = self.vcpu.get_state()?;
                s.cr3 = stint.entry.cr3;
                s.cr4 = stint.entry.cr4;
                return Ok(s);
            }
            self.take_back_now()?;
        }
        Ok(self.cpu.state)
    }

    fn set_state(&mut self, state: &CpuState) -> Result<(), Error> {
        // Whatever the vCPU held is replaced.
        self.stint = None;
        self.flushes_at_handover = None;
        self.cpu.set_state(*state);
        Ok(())
    }

    fn set_debug(&mut self, stops: Option<cpu::DebugStops>) -> Result<(), Error> {
        // Under a debugger the interpreter runs user code too (its stops
        // take no hooks), so nothing goes to KVM.
        self.cpu.set_debug_stops(stops);
        Ok(())
    }

    fn take_watch_hit(&mut self) -> Option<cpu::WatchHit> {
        self.cpu.take_watch_hit()
    }

    fn inject_nmi(&mut self) -> Result<(), Error> {
        // The interpreter delivers it; user code in KVM comes back first.
        if self.stint.is_some() && self.vcpu.pending_event()?.is_none() {
            self.take_back_now()?;
        }
        self.cpu.inject_nmi();
        Ok(())
    }

    fn sync_memory(&mut self) {
        self.cpu.sync_code_parked(false);
    }

    fn park_memory(&mut self) {
        self.cpu.sync_code_parked(true);
    }

    fn stats(&mut self, total: Duration) -> EngineStats {
        let (cpu, st) = (&self.cpu, &self.st);
        let policy = SplitPolicy::of_ref(cpu).map(|p| p.stats).unwrap_or_default();
        let v = self.vcpu.stats();
        let kernel = if self.jit.is_some() { "the JIT" } else { "the interpreter" };
        let found = match &self.kernel {
            KernelSource::Loaded => "the loaded kernel's .text".to_string(),
            KernelSource::Found(f) => found_report(f),
        };
        let mut lines = vec![
            self.model_line.clone(),
            format!(
                "split execution: kernel (CPL 0) in {kernel}, user code (CPL 3) in KVM; {} KiB of kernel code hidden from KVM ({found})",
                self.hidden >> 10
            ),
            format!(
                "interpreter: {} instructions ({} of them user code), {} blocks decoded ({} code pages evicted from the decode cache), {} exceptions, {} interrupts; {} user instructions with #UD here handed to KVM",
                cpu.stats.instructions,
                policy.user_instructions,
                cpu.stats.blocks_decoded,
                cpu.stats.cache_evictions,
                cpu.stats.exceptions,
                cpu.stats.interrupts,
                policy.user_ud_yields
            ),
            format!(
                "hand-overs to KVM: {}; back to the kernel: {} exceptions/interrupts, {} syscalls, {} int n, {} kicks; {} user instructions KVM could not run; {} translation flushes; {} extended-state restores",
                st.to_kvm, st.kernel_entries, st.syscalls, st.int_n, st.kicks, st.user_steps, st.flushes, st.extended_restores
            ),
            format!("KVM exits: {} ({} entries)", v.exits, v.entries),
            format!(
                "time in KVM {:.3} s, in the interpreter and devices {:.3} s",
                st.in_kvm.as_secs_f64(),
                total.saturating_sub(st.in_kvm).as_secs_f64()
            ),
        ];
        let instructions = match &mut self.jit {
            Some(j) => {
                let n = j.instructions(&self.cpu);
                lines.extend(j.report(total, n));
                n
            }
            None => self.cpu.stats.instructions,
        };
        EngineStats { instructions: Some(instructions), lines }
    }
}

/// How the kernel's code was found in the guest, for `--stats`.
fn found_report(f: &Found) -> String {
    match (f.from, f.found_at, &f.missed) {
        (Some(_), Some(at), _) => format!(
            "found in the guest at instruction {at} ({} scans): {} entry points (IDT gates, SYSCALL/SYSENTER targets) on {} pages in {} ranges, {} entry points elsewhere; {} kernel entries in KVM outside them",
            f.scans,
            f.entries,
            f.pages.len(),
            KernelCode::ranges(&f.pages).len(),
            f.skipped,
            f.escapes
        ),
        (_, _, Some(why)) => format!("not found after {} scans: {why}; user code ran in the interpreter", f.scans),
        _ => "not looked for: no user code ran".to_string(),
    }
}

/// User instructions the interpreter runs itself after the kernel returns to
/// user mode, before it hands the CPU to KVM: code that enters the kernel
/// again within them (a loop of short system calls) costs no hand-over.
pub const USER_BUDGET: u64 = 10_000;

/// A stint of user code in KVM shorter than this, ended by entering the
/// kernel, cost about what running it in the interpreter would have: that
/// address space's user code runs in the interpreter first again
/// ([`SplitPolicy::user_stint`]).
const SHORT_STINT: Duration = Duration::from_micros(100);

/// The guest entered the kernel in KVM and the interpreter holds the state:
/// go on from the handler, or first redo what KVM got wrong.
fn kernel_entry(cpu: &mut Cpu, entry: &CpuState, st: &mut SplitStats) {
    match undo_artifact(cpu, entry) {
        Some(Artifact::HalfSyscall) => {
            if let Err(e) = cpu.enter_syscall() {
                tracing::warn!(target: "accel", "SYSCALL from user mode could not be completed: {e:?}");
            }
            st.syscalls += 1;
        }
        Some(Artifact::IntAsUd) => {
            st.int_n += 1;
            // The page's code may have changed while KVM ran it.
            cpu.flush_code_cache();
            cpu.step();
        }
        None => st.kernel_entries += 1,
    }
}

/// Kernel entries that are kvm_pvm's doing, not the guest's.
#[derive(Debug, PartialEq, Eq)]
enum Artifact {
    /// A SYSCALL that KVM began (RIP = LSTAR, RCX and R11 set) without
    /// switching to CPL 0; the fetch at LSTAR, a supervisor page, then
    /// raised #PF in user mode.
    HalfSyscall,
    /// An `int n`, `int3`, `into` or `int1` whose gate's handler is hidden,
    /// turned into #UD at that instruction.
    IntAsUd,
}

/// At a kernel entry from user mode (the interpreter holds the state, at a
/// handler's first instruction with a 64-bit frame pushed), recognise and
/// undo an [`Artifact`]: the state becomes the user state to redo the
/// instruction from (for [`Artifact::HalfSyscall`], the state right after
/// the SYSCALL, for [`Cpu::enter_syscall`]; for [`Artifact::IntAsUd`], the
/// state before the `int n`, for a step). `entry` is the hand-over state:
/// user code changes neither CS, SS (without a far transfer, which is
/// checked) nor CR2 (only a #PF does).
fn undo_artifact(cpu: &mut Cpu, entry: &CpuState) -> Option<Artifact> {
    if !cpu.state.long_mode() {
        return None;
    }
    let read = |cpu: &mut Cpu, addr: u64| cpu.read_mem(sreg::DS, addr, 8).ok();
    let handler = |cpu: &mut Cpu, vector: u64| {
        let gate = cpu.state.idtr.base + vector * 16;
        let (lo, hi) = (read(cpu, gate)?, read(cpu, gate + 8)?);
        Some((lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi << 32))
    };
    let rsp = cpu.state.gpr[reg::RSP];
    let (artifact, frame_at) = if Some(cpu.state.rip) == handler(cpu, 14) {
        (Artifact::HalfSyscall, rsp + 8)
    } else if Some(cpu.state.rip) == handler(cpu, 6) {
        (Artifact::IntAsUd, rsp)
    } else {
        return None;
    };
    let frame: Option<Vec<u64>> = (0..5).map(|i| read(cpu, frame_at + 8 * i)).collect();
    let [rip, cs, rflags, user_rsp, ss] = <[u64; 5]>::try_from(frame?).ok()?;
    if cs as u16 != entry.seg[sreg::CS].selector || ss as u16 != entry.seg[sreg::SS].selector {
        return None;
    }
    let mut s = cpu.state;
    match artifact {
        Artifact::HalfSyscall => {
            let error_code = read(cpu, rsp)?;
            const FETCH: u64 = 1 << 4;
            if rip != entry.msr.lstar || cpu.state.cr2 != entry.msr.lstar || error_code & FETCH == 0 {
                return None;
            }
            s.rip = s.gpr[reg::RCX];
            s.rflags = s.gpr[11] | flags::FIXED;
            s.cr2 = entry.cr2;
        }
        Artifact::IntAsUd => {
            // The instruction's bytes, read as the kernel would with SMAP
            // allowed (RFLAGS.AC); 64-bit code: the linear address is RIP.
            let saved = cpu.state;
            cpu.state.rflags |= flags::AC;
            let mut bytes = [0u8; 2];
            let ok = cpu.read_mem_buf(sreg::DS, rip, &mut bytes).is_ok();
            cpu.state = saved;
            if !(ok && matches!(bytes[0], 0xcd | 0xcc | 0xce | 0xf1)) {
                return None;
            }
            s.rip = rip;
            s.rflags = rflags | flags::FIXED;
        }
    }
    s.gpr[reg::RSP] = user_rsp;
    s.seg[sreg::CS] = entry.seg[sreg::CS];
    s.seg[sreg::SS] = entry.seg[sreg::SS];
    s.cpl = 3;
    cpu.set_state(s);
    Some(artifact)
}

/// Save areas remembered at most; past that the oldest knowledge is dropped
/// (a task then gets its AVX state back in the init state).
const EXTENDED_AREAS: usize = 4096;

/// Keep user code's AVX and AVX-512 state per task. kvm_pvm runs user code
/// with the host's XCR0 and CPUID, whatever the guest set up, so user code
/// uses AVX-512 registers even though the interpreter's CPU (and so the
/// kernel) knows only x87 and SSE. The kernel switches tasks' x87/SSE state
/// with FXSAVE and FXRSTOR, each task with its own save area: the rest of
/// the state is saved and restored here alongside, keyed by that area's
/// address, replaying the interpreter's FXSAVEs and FXRSTORs since the
/// last hand-over ([`SplitPolicy::fx_log`]).
fn sync_extended(
    cpu: &mut Cpu,
    vcpu: &hvf_kvm_accel::kvm::KvmVcpu,
    by_area: &mut HashMap<u64, ExtendedState>,
    st: &mut SplitStats,
) -> Result<(), Error> {
    let Some(policy) = SplitPolicy::of(cpu) else { return Ok(()) };
    if policy.fx_log.is_empty() {
        return Ok(());
    }
    // The state in the registers: KVM's until an FXRSTOR replaces it.
    let mut current: Option<ExtendedState> = None;
    let mut restored = false;
    for ev in std::mem::take(&mut policy.fx_log) {
        match ev {
            FxEvent::Save(area) => {
                let e = match &current {
                    Some(e) => e.clone(),
                    None => {
                        let e = vcpu.extended_state()?.unwrap_or_else(ExtendedState::init);
                        current = Some(e.clone());
                        e
                    }
                };
                if by_area.len() >= EXTENDED_AREAS {
                    by_area.clear();
                }
                by_area.insert(area, e);
            }
            FxEvent::Restore(area) => {
                current = Some(by_area.get(&area).cloned().unwrap_or_else(ExtendedState::init));
                restored = true;
            }
        }
    }
    if let (true, Some(e)) = (restored, current) {
        vcpu.set_extended_state(&e)?;
        st.extended_restores += 1;
    }
    Ok(())
}

/// The state as KVM gets it. kvm_pvm refuses CR4.PCIDE; process-context
/// identifiers only tag TLB entries, which user code cannot see, so KVM
/// runs without them (CR3 then holds only the table's address).
fn for_kvm(s: &CpuState) -> CpuState {
    let mut k = *s;
    if k.cr4 & cr::CR4_PCIDE != 0 {
        k.cr4 &= !cr::CR4_PCIDE;
        k.cr3 &= !0xfff;
    }
    k
}

/// A SYSCALL that kvm_pvm stopped halfway: RIP is LSTAR and RCX and R11
/// are set, but CS, SS, RFLAGS and the privilege level are still the user's.
fn half_done_syscall(s: &CpuState, entry: &CpuState) -> bool {
    s.rip == entry.msr.lstar && s.seg[sreg::CS].selector & 3 == 3
}

/// Undo the first half of a [`half_done_syscall`] and let the interpreter
/// perform the whole instruction.
fn finish_syscall(cpu: &mut Cpu, s: CpuState, entry: &CpuState, st: &mut SplitStats) {
    let mut s = s;
    s.rip = s.gpr[reg::RCX];
    s.rflags = s.gpr[11] | flags::FIXED;
    take_back(cpu, s, entry);
    if let Err(e) = cpu.enter_syscall() {
        tracing::warn!(target: "accel", "SYSCALL from user mode could not be completed: {e:?}");
    }
    st.syscalls += 1;
}

/// Put the vCPU's state into the interpreter. User code cannot change CR3
/// or CR4, nor can entering the kernel: they are those of the hand-over
/// (`entry`), which [`for_kvm`] may have changed for KVM.
fn take_back(cpu: &mut Cpu, s: CpuState, entry: &CpuState) {
    let shadow = s.interrupt_shadow;
    let mut s = s;
    s.cr3 = entry.cr3;
    s.cr4 = entry.cr4;
    cpu.resume_state(s);
    cpu.state.interrupt_shadow = shadow;
    // KVM's writes to guest memory bypassed the tracking of code pages.
    cpu.recheck_user_code();
}

/// The feature bits the interpreter's CPUID advertises (without XSAVE, as
/// the split engine's interpreter has it; with AES-NI and PCLMULQDQ in the
/// full model).
fn interpreter_features(cpu: &Cpu) -> hvf_kvm_accel::kvm::cpuid::FeatureMasks {
    let id = |leaf, sub| cpu.cpuid(leaf, sub);
    let (l1, l7, l81) = (id(1, 0), id(7, 0), id(0x8000_0001, 0));
    hvf_kvm_accel::kvm::cpuid::FeatureMasks {
        leaf1: [l1[2], l1[3] | cpu::cpuid::edx1::APIC],
        leaf7: [l7[1], l7[2], l7[3]],
        leaf81: [l81[2], l81[3]],
    }
}

/// The x86-64-v3 features (with v2's) that `cpu`'s CPUID lacks, by name.
fn missing_v3(cpu: &Cpu) -> Vec<&'static str> {
    use hvf_kvm_accel::kvm::cpuid::{Reg, X86_64_V3};
    X86_64_V3
        .iter()
        .filter(|&&(leaf, sub, r, bit, _)| {
            let v = cpu.cpuid(leaf, sub);
            let x = match r {
                Reg::Eax => v[0],
                Reg::Ebx => v[1],
                Reg::Ecx => v[2],
                Reg::Edx => v[3],
            };
            x & (1 << bit) == 0
        })
        .map(|f| f.4)
        .collect()
}

/// Tell the split policy installed in `cpu` how the stint in KVM went.
fn user_stint(cpu: &mut Cpu, short: bool) {
    let space = cpu.state.cr3 & !0xfff;
    if let Some(p) = SplitPolicy::of(cpu) {
        p.user_stint(space, short);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_models_against_x86_64_v3() {
        let mem = std::sync::Arc::new(mmu::GuestMemory::new(1 << 20).unwrap());
        let mut c = Cpu::new(mem, Box::new(cpu::NoDevices));
        assert_eq!(missing_v3(&c), ["fma", "avx", "f16c", "avx2"], "v2 has XSAVE, not AVX");
        c.set_model(cpu::cpuid::Model::Max);
        assert!(missing_v3(&c).is_empty());
        // Split execution hides XSAVE, and with it AVX; AES stays.
        c.set_xsave(false);
        assert_eq!(missing_v3(&c), ["fma", "xsave", "avx", "f16c", "avx2"]);
        let masks = interpreter_features(&c);
        assert_ne!(masks.leaf1[0] & cpu::cpuid::ecx1::AES, 0);
        assert_eq!(masks.leaf1[0] & cpu::cpuid::ecx1::AVX, 0);
    }

    #[test]
    fn a_half_done_syscall_is_at_lstar_with_the_user_code_selector() {
        let mut entry = CpuState::reset();
        entry.msr.lstar = 0xffff_ffff_81c0_0080;
        let mut s = entry;
        s.rip = entry.msr.lstar;
        s.seg[sreg::CS].selector = 0x33;
        assert!(half_done_syscall(&s, &entry));
        // The kernel at its entry point, and user code elsewhere, are not.
        s.seg[sreg::CS].selector = 0x10;
        assert!(!half_done_syscall(&s, &entry));
        s.seg[sreg::CS].selector = 0x33;
        s.rip = 0x40_1000;
        assert!(!half_done_syscall(&s, &entry));
    }
}
