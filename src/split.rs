//! Split execution: the guest kernel (CPL 0) in the interpreter, user code
//! (CPL 3) in KVM.
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
//!   kernel cannot be fetched and KVM stops with an emulation failure:
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
//!   A device interrupt, a timer deadline or a machine event kicks the vCPU
//!   out of KVM; the interpreter then delivers the interrupt.
//! - The interrupt controllers and timers are the machine's own (KVM's
//!   userspace irqchip mode), so one set of devices serves both engines.
//!   The machine's TSC follows KVM's (its rate and value), so the guest
//!   reads one counter in both.

use std::sync::{Arc, Condvar, Mutex as StdMutex};
use std::time::{Duration, Instant};

use cpu::state::{cr, flags, reg, sreg, CpuState};
use std::collections::HashMap;

use cpu::{Cpu, FxEvent, StopReason};

use crate::machine::split_policy::SplitPolicy;
use hvf_kvm_accel::kvm::ExtendedState;
use hvf_kvm_accel::{Vcpu, VcpuKicker, Vm, VmExit};

use super::{KvmIo, Machine, Next, RunReport, SplitMode, SLICE};
use crate::error::Error;

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

/// Kicks the vCPU out of KVM at a deadline (the next timer), from a thread.
struct Alarm {
    state: Arc<(StdMutex<AlarmState>, Condvar)>,
}

#[derive(Default)]
struct AlarmState {
    deadline: Option<Instant>,
    quit: bool,
}

impl Alarm {
    fn new(kicker: VcpuKicker) -> Result<Self, Error> {
        let state = Arc::new((StdMutex::new(AlarmState::default()), Condvar::new()));
        let s = state.clone();
        std::thread::Builder::new()
            .name("split-alarm".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if st.quit {
                        return;
                    }
                    match st.deadline {
                        None => st = cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                st.deadline = None;
                                kicker.kick();
                            } else {
                                st = cv.wait_timeout(st, d - now).unwrap_or_else(|p| p.into_inner()).0;
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::Accel(format!("cannot start the timer thread: {e}")))?;
        Ok(Alarm { state })
    }

    fn set(&self, deadline: Option<Instant>) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).deadline = deadline;
        cv.notify_one();
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).quit = true;
        cv.notify_one();
    }
}

/// What a stay in KVM ended with.
enum Back {
    /// The interpreter's state is the guest's; go on.
    Continue,
    /// The guest triple-faulted (in KVM).
    Shutdown(String),
}

impl Machine {
    /// Whether `run_kvm` should split execution.
    pub(super) fn use_split(&self) -> bool {
        match self.config.kvm_split {
            SplitMode::Off => false,
            SplitMode::On => true,
            SplitMode::Auto => !self.kernel_code.is_empty() && kvm_emulates_cpl0(),
        }
    }

    /// Run the guest with its kernel in the interpreter and its user code in
    /// KVM (see the module documentation).
    pub(super) fn run_split(&self) -> Result<RunReport, Error> {
        let start = Instant::now();
        if self.kernel_code.is_empty() {
            return Err(Error::Config(
                "--kvm-split on needs a kernel whose code the host loaded (a vmlinux, or a bzImage with --kernel-boot fast)"
                    .into(),
            ));
        }
        let mut kvm = hvf_kvm_accel::kvm::Kvm::new()?;
        kvm.set_in_kernel_irqchip(false);
        kvm.restrict_cpuid(Some(interpreter_features(&self.boot_state)));
        let vm = kvm.create_kvm_vm(self.mem.clone())?;
        let mut hidden = 0;
        for &(s, e) in &self.kernel_code {
            // Whole pages: Linux frees the pages after `.text` from the first
            // page boundary past its end, never the page `.text` ends in.
            let (s, e) = (s & !0xfff, (e + 0xfff) & !0xfff);
            if s < e {
                vm.hide(s, e)?;
                hidden += e - s;
            }
        }
        let mut vcpu = vm.create_kvm_vcpu(0)?;
        // One time-stamp counter for both engines: the machine's follows KVM's.
        let (tsc, khz) = vcpu.tsc()?;
        self.chipset.tsc.retune(self.clock.now_ns(), khz * 1000, tsc);

        let kicker = vcpu.kicker()?;
        let me = std::thread::current();
        let (k, t) = (kicker.clone(), me.clone());
        self.chipset.intc.set_kick(Box::new(move || {
            k.kick();
            t.unpark();
        }));
        let (k, t) = (kicker.clone(), me);
        self.events.set_kick(Box::new(move || {
            k.kick();
            t.unpark();
        }));
        let alarm = Alarm::new(kicker)?;

        let platform = self.platform();
        let unclaimed = platform.unclaimed.clone();
        let mut io = KvmIo { platform: self.platform_with(unclaimed.clone()) };
        let mut cpu = Cpu::new(self.mem.clone(), Box::new(platform));
        cpu.set_state(self.boot_state);
        cpu.set_hooks(Some(Box::new(SplitPolicy::new(USER_BUDGET))));
        let mut st = SplitStats::default();
        let mut flushes_at_handover = None;
        let mut extended = HashMap::new();
        let deadline = self.config.timeout.map(|t| start + t);

        let finish = |status: i32,
                      message: Option<String>,
                      cpu: &Cpu,
                      vcpu: &hvf_kvm_accel::kvm::KvmVcpu,
                      st: &SplitStats| {
            let total = start.elapsed();
            let policy = SplitPolicy::of_ref(cpu).map(|p| p.stats).unwrap_or_default();
            let v = vcpu.stats();
            let stats = vec![
                format!(
                    "split execution: kernel (CPL 0) in the interpreter, user code (CPL 3) in KVM; {} KiB of kernel code hidden from KVM",
                    hidden >> 10
                ),
                format!(
                    "interpreter: {} instructions ({} of them user code), {} blocks decoded ({} full decode-cache flushes), {} exceptions, {} interrupts; {} user instructions with #UD here handed to KVM",
                    cpu.stats.instructions,
                    policy.user_instructions,
                    cpu.stats.blocks_decoded,
                    cpu.stats.cache_flushes,
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
                self.halted_stat(),
            ];
            let mut r = self.report(start, "kvm", unclaimed.lock().count, stats);
            r.status = status;
            r.message = message;
            r.instructions = Some(cpu.stats.instructions);
            r
        };

        loop {
            self.pump_input();
            if self.chipset.intc.take_nmi() {
                cpu.inject_nmi();
            }
            let why = cpu.run(SLICE);
            let mut next_timer = self.chipset.timers.poll(self.clock.now_ns());
            let mut next = self.pending_event();
            if next == Next::Go {
                next = match why {
                    StopReason::Shutdown(chain) => self.on_shutdown(&chain),
                    StopReason::Halted => {
                        self.idle(next_timer, deadline);
                        Next::Go
                    }
                    StopReason::UserMode => {
                        let back = self.user_mode(
                            &mut cpu,
                            &vm,
                            &mut vcpu,
                            &mut io,
                            &alarm,
                            &mut next_timer,
                            &mut flushes_at_handover,
                            &mut extended,
                            &mut st,
                        )?;
                        match back {
                            Back::Shutdown(chain) => self.on_shutdown(&chain),
                            Back::Continue => Next::Go,
                        }
                    }
                    StopReason::Budget | StopReason::Requested => Next::Go,
                };
            }
            match next.or_else(|| self.past(deadline)) {
                Next::Go => {}
                Next::Reset => self.reset(&mut cpu),
                Next::Finish(status, msg) => return Ok(finish(status, msg, &cpu, &vcpu, &st)),
            }
        }
    }

    /// Run user code in KVM from the interpreter's state until the guest
    /// enters the kernel or must take an interrupt; leave the state in `cpu`.
    #[allow(clippy::too_many_arguments)]
    fn user_mode(
        &self,
        cpu: &mut Cpu,
        vm: &hvf_kvm_accel::kvm::KvmVm,
        vcpu: &mut hvf_kvm_accel::kvm::KvmVcpu,
        io: &mut KvmIo,
        alarm: &Alarm,
        next_timer: &mut Option<u64>,
        flushes_at_handover: &mut Option<u64>,
        extended: &mut HashMap<u64, ExtendedState>,
        st: &mut SplitStats,
    ) -> Result<Back, Error> {
        if *flushes_at_handover != Some(cpu.mmu.flushes) {
            vm.flush_translations()?;
            st.flushes += 1;
        }
        sync_extended(cpu, vcpu, extended, st)?;
        let mut entry = cpu.state;
        entry.materialize_flags();
        vcpu.set_state(&for_kvm(&entry)).map_err(|e| {
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
        st.to_kvm += 1;
        let stint = Instant::now();
        let back = loop {
            let wake = next_timer.map(|t| Instant::now() + Duration::from_nanos(t.saturating_sub(self.clock.now_ns())));
            alarm.set(wake);
            let t = Instant::now();
            let exit = vcpu.run(io)?;
            st.in_kvm += t.elapsed();
            alarm.set(None);
            *next_timer = self.chipset.timers.poll(self.clock.now_ns());
            match exit {
                VmExit::Interrupted | VmExit::Hlt => {
                    if vcpu.pending_event()?.is_some() {
                        // KVM is delivering an exception: let it finish.
                        continue;
                    }
                    if self.events.pending()
                        || self.chipset.intc.interrupt_pending()
                        || !self.input.lock().is_empty()
                        || exit == VmExit::Hlt
                    {
                        st.kicks += 1;
                        let s = vcpu.get_state()?;
                        if half_done_syscall(&s, &entry) {
                            // Kicked between a SYSCALL's two halves.
                            finish_syscall(cpu, s, &entry, st);
                            break Back::Continue;
                        }
                        let kernel = s.cpl == 0;
                        take_back(cpu, s, &entry);
                        if kernel {
                            // Kicked right after KVM entered the kernel.
                            kernel_entry(cpu, &entry, st);
                        }
                        break Back::Continue;
                    }
                }
                VmExit::Shutdown => break Back::Shutdown("triple fault in user mode under KVM".into()),
                VmExit::InternalError { suberror: 1, .. } => {
                    if vcpu.pending_event()?.is_some() {
                        // Not at an instruction boundary: KVM delivers first.
                        continue;
                    }
                    let s = vcpu.get_state()?;
                    if s.cpl == 0 {
                        take_back(cpu, s, &entry);
                        kernel_entry(cpu, &entry, st);
                        user_stint(cpu, stint.elapsed() < SHORT_STINT);
                        break Back::Continue;
                    }
                    if half_done_syscall(&s, &entry) {
                        finish_syscall(cpu, s, &entry, st);
                        user_stint(cpu, stint.elapsed() < SHORT_STINT);
                        break Back::Continue;
                    }
                    // A user instruction KVM could not run: the interpreter runs it.
                    take_back(cpu, s, &entry);
                    cpu.flush_code_cache();
                    cpu.step();
                    st.user_steps += 1;
                    break Back::Continue;
                }
                other => return Err(Error::Accel(format!("{other}"))),
            }
        };
        *flushes_at_handover = Some(cpu.mmu.flushes);
        Ok(back)
    }

    /// Wait, halted, for an interrupt, a timer, an event or input.
    pub(super) fn idle(&self, next_timer: Option<u64>, deadline: Option<Instant>) {
        if !self.chipset.intc.interrupt_pending() && self.input.lock().is_empty() {
            let now = self.clock.now_ns();
            let mut wait = Duration::from_millis(50);
            if let Some(t) = next_timer {
                wait = wait.min(Duration::from_nanos(t.saturating_sub(now)));
            }
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            let t = Instant::now();
            std::thread::park_timeout(wait);
            let mut h = self.halted.lock();
            h.0 += t.elapsed();
            h.1 += 1;
        }
        // Fire what came due while asleep before the CPU runs again.
        self.chipset.timers.poll(self.clock.now_ns());
    }
}

/// User instructions the interpreter runs itself after the kernel returns to
/// user mode, before it hands the CPU to KVM: code that enters the kernel
/// again within them (a loop of short system calls) costs no hand-over.
const USER_BUDGET: u64 = 10_000;

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

/// The feature bits the interpreter's CPUID advertises.
fn interpreter_features(state: &CpuState) -> hvf_kvm_accel::kvm::cpuid::FeatureMasks {
    let id = |leaf, sub| cpu::cpuid::cpuid(state, leaf, sub);
    let (l1, l7, l81) = (id(1, 0), id(7, 0), id(0x8000_0001, 0));
    hvf_kvm_accel::kvm::cpuid::FeatureMasks {
        leaf1: [l1[2], l1[3] | cpu::cpuid::edx1::APIC],
        leaf7: [l7[1], l7[2], l7[3]],
        leaf81: [l81[2], l81[3]],
    }
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

    #[test]
    fn the_alarm_kicks_at_its_deadline_and_not_after_a_reset() {
        struct Count(std::sync::atomic::AtomicU32);
        impl hvf_kvm_accel::Kick for Count {
            fn kick(&self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(Default::default()));
        let alarm = Alarm::new(VcpuKicker::new(count.clone())).unwrap();
        alarm.set(Some(Instant::now() + Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        alarm.set(Some(Instant::now() + Duration::from_millis(100)));
        alarm.set(None);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1, "a cleared alarm does not kick");
    }
}
