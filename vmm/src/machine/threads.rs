//! Several vCPUs on a host thread each: under KVM, and under the
//! interpreter and the JIT with `--vcpu-threads multi` (QEMU's MTTCG).
//!
//! The calling thread runs the bootstrap processor and the machine's work
//! (the run loop of [`Machine::run_vcpus`]: input, timers, events, the
//! deadline, resets); each application processor runs on a thread of its
//! own. Under KVM, KVM's local APICs bring it up with INIT and start-up
//! IPIs; otherwise the machine's do, and the thread waits, parked, for its
//! start-up IPI, and while its vCPU is halted, for an interrupt (the
//! interrupt controller's kick for that CPU unparks it). The threads meet
//! at a barrier three times: once every vCPU exists (so no start-up IPI
//! goes to a vCPU not yet created), and twice around a machine reset
//! (every vCPU stopped and reset, then all go on).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use cpu::CpuState;

use super::{ap_reset_state, Machine, Outcome};
use crate::config::EngineKind;
use crate::engine::{Engine, EngineContext, Exit, Kicker, Slice};
use crate::error::Error;
use crate::vcpu::{Vcpu, SLICE};

/// How long an application processor's thread runs the guest before it
/// looks at the machine's flags, when nothing kicks it sooner.
const AP_SLICE: Duration = Duration::from_millis(100);

/// Which vCPUs run guest code, and the one (if any) that runs alone: the
/// stop-the-world side of the interpreter's exclusive fallback (a locked
/// instruction that cannot be one host atomic runs while no other vCPU
/// runs; QEMU's `start_exclusive`). A vCPU counts as running from
/// [`World::enter`] to [`World::leave`] around each slice; a request
/// raises the machine's `exclusive_request` flag, which makes every
/// engine's `stop_requested` true, so the others leave at their next
/// check (at most a slice), and waits for them.
///
/// Entering and leaving a slice touch only the count and the flag while no
/// request is made (the lock is taken when one is): a vCPU that counts
/// itself in and then sees no request runs, and a requester that raises
/// the flag and then sees no vCPU counted in has the machine to itself.
pub(crate) struct World {
    state: parking_lot::Mutex<WorldState>,
    cv: parking_lot::Condvar,
    request: Arc<std::sync::atomic::AtomicBool>,
    /// vCPUs between [`World::enter`] and [`World::leave`].
    running: AtomicUsize,
}

#[derive(Default)]
struct WorldState {
    /// Requests made and not yet served.
    pending: usize,
    /// A vCPU runs alone now.
    exclusive: bool,
}

impl World {
    fn new(request: Arc<std::sync::atomic::AtomicBool>) -> Self {
        World {
            state: parking_lot::Mutex::new(WorldState::default()),
            cv: parking_lot::Condvar::new(),
            request,
            running: AtomicUsize::new(0),
        }
    }

    /// Before a slice: waits while a vCPU runs alone or asked to.
    pub(crate) fn enter(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
        if !self.request.load(Ordering::SeqCst) {
            return;
        }
        // A request is being served: count out again, and wait for it.
        self.leave();
        let mut s = self.state.lock();
        while s.exclusive || s.pending > 0 {
            self.cv.wait(&mut s);
        }
        // Under the lock: a new request counts this vCPU and waits for it.
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    /// After a slice.
    pub(crate) fn leave(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.request.load(Ordering::SeqCst) {
            // A requester may be waiting for the count to reach zero.
            let _s = self.state.lock();
            self.cv.notify_all();
        }
    }

    /// Runs `f` on the calling vCPU's thread (inside its slice) while no
    /// other vCPU runs. The caller stands still while it waits, so two
    /// requests are served one after the other.
    fn exclusive(&self, f: &mut dyn FnMut(), kick: &dyn Fn()) {
        let mut s = self.state.lock();
        s.pending += 1;
        self.request.store(true, Ordering::SeqCst);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.cv.notify_all();
        drop(s);
        // Engines inside a hypervisor do not look at the flag by themselves.
        kick();
        let mut s = self.state.lock();
        while s.exclusive {
            self.cv.wait(&mut s);
        }
        s.exclusive = true;
        while self.running.load(Ordering::SeqCst) > 0 {
            self.cv.wait(&mut s);
        }
        drop(s);
        f();
        let mut s = self.state.lock();
        s.exclusive = false;
        s.pending -= 1;
        if s.pending == 0 {
            self.request.store(false, Ordering::SeqCst);
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        self.cv.notify_all();
    }
}

/// A vCPU's engine, built from its context on the vCPU's thread.
type NewEngine<'m> = Result<Box<dyn Engine + 'm>, Error>;

/// What the bootstrap processor's thread and the others share.
pub(crate) struct ThreadCtl {
    /// Who runs guest code, for the exclusive fallback.
    pub(crate) world: Arc<World>,
    /// The run is over: every thread returns.
    finish: AtomicBool,
    /// Bumped for each machine reset.
    reset_gen: AtomicU64,
    /// Every vCPU's thread: at start, and twice around a reset.
    barrier: Barrier,
    /// A triple fault on an application processor, for the run loop.
    shutdown: Mutex<Option<String>>,
    /// The first engine failure on an application processor.
    error: Mutex<Option<Error>>,
    /// The application processors' kickers.
    kicks: Mutex<Vec<Kicker>>,
    /// The bootstrap processor's thread and kicker, woken by an AP's news.
    bsp: Mutex<Option<(Thread, Option<Kicker>)>>,
}

impl ThreadCtl {
    fn new(cpus: usize, request: Arc<std::sync::atomic::AtomicBool>) -> Self {
        ThreadCtl {
            world: Arc::new(World::new(request)),
            finish: AtomicBool::new(false),
            reset_gen: AtomicU64::new(0),
            barrier: Barrier::new(cpus),
            shutdown: Mutex::new(None),
            error: Mutex::new(None),
            kicks: Mutex::new(Vec::new()),
            bsp: Mutex::new(None),
        }
    }

    /// Makes every application processor's running slice return.
    pub(crate) fn kick_all(&self) {
        for k in self.kicks.lock().iter() {
            k();
        }
    }

    fn wake_bsp(&self) {
        if let Some((t, k)) = &*self.bsp.lock() {
            if let Some(k) = k {
                k();
            }
            t.unpark();
        }
    }

    fn fail(&self, e: Error) {
        self.error.lock().get_or_insert(e);
        self.wake_bsp();
    }

    /// What an application processor reported since the last look: an
    /// engine failure, or a triple fault's chain.
    pub(crate) fn take_news(&self) -> Result<Option<String>, Error> {
        if let Some(e) = self.error.lock().take() {
            return Err(e);
        }
        Ok(self.shutdown.lock().take())
    }

    /// A machine reset, from the bootstrap processor's thread: stops every
    /// application processor, lets `reset` reset the machine and the
    /// bootstrap processor while they wait (each has reset its own vCPU),
    /// then lets them go on.
    pub(crate) fn reset_all(&self, reset: impl FnOnce() -> Result<(), Error>) -> Result<(), Error> {
        self.reset_gen.fetch_add(1, Ordering::AcqRel);
        self.kick_all();
        self.barrier.wait();
        let r = reset();
        self.barrier.wait();
        r
    }
}

impl Machine {
    /// Runs the guest under `kind` with `cpus` vCPUs, a thread each.
    /// With `states`, each vCPU starts in its own; the run stops, every
    /// thread returning its vCPU's state, for a request of
    /// [`super::RunControl::request`].
    pub(super) fn run_threads<'m>(
        &'m self,
        kind: EngineKind,
        cpus: u32,
        start: Instant,
        states: Option<&[CpuState]>,
    ) -> Result<Outcome, Error> {
        #[cfg(target_os = "linux")]
        let kvm = match kind {
            EngineKind::Kvm => Some(crate::engine::kvm::KvmShared::new(&self.engine_context(0))?),
            _ => None,
        };
        let make = |ctx: &EngineContext<'m>| -> Result<Box<dyn Engine + 'm>, Error> {
            Ok(match kind {
                #[cfg(target_os = "linux")]
                EngineKind::Kvm => {
                    let shared = kvm.clone().ok_or_else(|| Error::Accel("no KVM VM".into()))?;
                    Box::new(crate::engine::kvm::KvmEngine::on(ctx, shared)?)
                }
                EngineKind::Jit => {
                    let mut cfg = crate::engine::jit::config_from_env(ctx.config)?;
                    cfg.shared_memory = true;
                    Box::new(crate::engine::jit::JitEngine::new(ctx, cfg)?)
                }
                _ => Box::new(crate::engine::interp::InterpEngine::new(ctx)),
            })
        };
        // The local APICs are the machine's, except KVM's own.
        let machine_apic = kind != EngineKind::Kvm;
        let ctx = self.engine_context(0);
        let mut bsp = make(&ctx)?;
        if let Some(s) = states.and_then(|s| s.first()) {
            bsp.start_from(s)?;
        }
        if let Some(stops) = self.debug.stops_for(0) {
            bsp.set_debug(Some(stops))?;
        }
        let ctl = Arc::new(ThreadCtl::new(cpus as usize, self.exclusive_request.clone()));
        let c = ctl.clone();
        let exclusive: cpu::ExclusiveFn = Arc::new(move |f: &mut dyn FnMut()| {
            c.world.exclusive(f, &|| {
                c.kick_all();
                c.wake_bsp();
            })
        });
        bsp.set_exclusive(exclusive.clone());
        *ctl.bsp.lock() = Some((std::thread::current(), bsp.kicker()));
        std::thread::scope(|scope| {
            let threads: Vec<_> = (1..cpus)
                .map(|index| {
                    let (ctl, make, exclusive) = (ctl.clone(), &make, exclusive.clone());
                    std::thread::Builder::new().name(format!("vcpu{index}")).spawn_scoped(scope, move || {
                        let state = states.and_then(|s| s.get(index as usize)).copied();
                        self.ap_thread(index, start, &ctl, machine_apic, &|ctx| {
                            let mut e = make(ctx)?;
                            e.set_exclusive(exclusive.clone());
                            if let Some(s) = &state {
                                e.start_from(s)?;
                            }
                            if let Some(stops) = self.debug.stops_for(index) {
                                e.set_debug(Some(stops))?;
                            }
                            Ok(e)
                        })
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Accel(format!("cannot start a vCPU thread: {e}")))?;
            ctl.barrier.wait();
            let mut vcpus = [Vcpu::new(0, bsp)];
            let result = self.run_vcpus(&mut vcpus, start, Some(ctl.clone()));
            ctl.finish.store(true, Ordering::Release);
            ctl.kick_all();
            let mut lines = Vec::new();
            let mut instructions = None;
            let mut ap_states = Vec::new();
            for t in threads {
                match t.join() {
                    Ok((n, l, state)) => {
                        lines.extend(l);
                        if let Some(n) = n {
                            instructions = Some(instructions.unwrap_or(0) + n);
                        }
                        ap_states.push(state);
                    }
                    Err(_) => return Err(Error::Accel("a vCPU thread panicked".into())),
                }
            }
            let mut report = match result? {
                Outcome::Done(r) => r,
                Outcome::Stopped(op, mut states) => {
                    for s in ap_states {
                        states.push(s.ok_or_else(|| Error::Accel("a vCPU failed; its state is lost".into()))?);
                    }
                    return Ok(Outcome::Stopped(op, states));
                }
            };
            if let (Some(a), Some(b)) = (report.instructions, instructions) {
                report.instructions = Some(a + b);
            }
            // The application processors' lines go before the machine's last ones.
            let at = report.stats.len().saturating_sub(1);
            report.stats.splice(at..at, lines);
            Ok(Outcome::Done(report))
        })
    }

    /// An application processor's thread: builds its engine with `make`,
    /// then runs it until the run ends, taking part in resets. With
    /// `machine_apic`, it passes the machine's start-up IPIs and NMIs on
    /// and waits, parked, while its vCPU waits for a SIPI or an interrupt.
    /// Returns its instruction count, `--stats` lines and its vCPU's last
    /// state.
    fn ap_thread<'m>(
        &'m self,
        index: u32,
        start: Instant,
        ctl: &ThreadCtl,
        machine_apic: bool,
        make: &(dyn Fn(&EngineContext<'m>) -> NewEngine<'m> + Sync),
    ) -> (Option<u64>, Vec<String>, Option<CpuState>) {
        let cpu = index as usize;
        devices::intc::set_current_cpu(cpu);
        let ctx = self.engine_context(index);
        let mut engine = match make(&ctx) {
            Ok(e) => Some(e),
            Err(e) => {
                ctl.fail(e);
                None
            }
        };
        let kick = engine.as_ref().and_then(|e| e.kicker());
        if let Some(k) = &kick {
            ctl.kicks.lock().push(k.clone());
        }
        let intc = &self.chipset.intc;
        let me = std::thread::current();
        {
            let me = me.clone();
            ctl.kicks.lock().push(Arc::new(move || me.unpark()));
        }
        if machine_apic {
            let k = engine.as_ref().filter(|e| e.kicks_for_interrupts()).and(kick.clone());
            intc.set_kick(
                cpu,
                Box::new(move || {
                    if let Some(k) = &k {
                        k();
                    }
                    me.unpark();
                }),
            );
        }
        ctl.barrier.wait();
        let mut seen_reset = 0;
        let mut halted = Duration::ZERO;
        let mut ran_since_throttle = Duration::ZERO;
        loop {
            if ctl.finish.load(Ordering::Acquire) {
                break;
            }
            let g = ctl.reset_gen.load(Ordering::Acquire);
            if g != seen_reset {
                seen_reset = g;
                if let Some(e) = engine.as_mut() {
                    if let (Some(log), Ok(s)) = (self.config.guest_log.as_ref().filter(|l| l.cpu_reset), e.state()) {
                        log.reset(index, &s);
                    }
                    if let Err(err) = e.reset(&ap_reset_state()) {
                        ctl.fail(err);
                        engine = None;
                    }
                }
                ctl.barrier.wait();
                ctl.barrier.wait();
                continue;
            }
            let Some(e) = engine.as_mut() else {
                std::thread::park_timeout(Duration::from_millis(10));
                continue;
            };
            // The bootstrap processor's thread answers events and pauses.
            if self.events.pending() || self.control.attention.load(Ordering::Acquire) {
                e.sync_memory();
                std::thread::park_timeout(Duration::from_millis(1));
                continue;
            }
            if !self.debug.may_run(index) {
                // Another vCPU steps for the debugger.
                std::thread::park_timeout(Duration::from_millis(1));
                continue;
            }
            if machine_apic {
                if let Err(err) = super::start_up(intc, cpu, &mut **e) {
                    ctl.fail(err);
                    engine = None;
                    continue;
                }
                if intc.waiting_for_sipi(cpu) {
                    e.sync_memory();
                    let t = Instant::now();
                    std::thread::park_timeout(Duration::from_millis(50));
                    halted += t.elapsed();
                    continue;
                }
            }
            if intc.take_nmi(cpu) {
                if let Err(err) = e.inject_nmi() {
                    ctl.fail(err);
                    engine = None;
                    continue;
                }
            }
            let t = Instant::now();
            let slice = Slice {
                instructions: SLICE,
                until: Some(self.control.throttle_until(t + AP_SLICE, ran_since_throttle)),
            };
            ctl.world.enter();
            let ran = e.run(&slice);
            ctl.world.leave();
            ran_since_throttle += t.elapsed();
            self.control.throttle_point(&mut ran_since_throttle);
            match ran {
                Ok(Exit::Budget) => {}
                Ok(Exit::Debug) => {
                    let watch = e.take_watch_hit();
                    self.debug.hit(index, watch, &self.control);
                }
                Ok(Exit::Halted) => {
                    let work = intc.interrupt_pending(cpu) || intc.nmi_pending(cpu) || intc.startup_pending(cpu);
                    if work {
                        std::thread::yield_now();
                    } else {
                        e.sync_memory();
                        let t = Instant::now();
                        std::thread::park_timeout(Duration::from_millis(50));
                        halted += t.elapsed();
                    }
                }
                Ok(Exit::Shutdown(chain)) => {
                    ctl.shutdown.lock().get_or_insert(format!("CPU {index}: {chain}"));
                    ctl.wake_bsp();
                    // Wait for the reset (or the end) that answers it.
                    while !ctl.finish.load(Ordering::Acquire) && ctl.reset_gen.load(Ordering::Acquire) == seen_reset {
                        std::thread::park_timeout(Duration::from_millis(1));
                    }
                }
                Err(err) => {
                    ctl.fail(err);
                    engine = None;
                }
            }
        }
        let Some(mut e) = engine else { return (None, vec![format!("cpu {index}: failed")], None) };
        // The state, and the controllers' state the engine kept, for a
        // stop for work on the whole machine.
        let state = e.state().and_then(|s| e.save_chips().map(|()| s)).ok();
        let st = e.stats(start.elapsed());
        let mut lines: Vec<String> = st.lines.into_iter().map(|l| format!("cpu {index}: {l}")).collect();
        if machine_apic {
            lines.push(format!("cpu {index}: halted {:.3} s", halted.as_secs_f64()));
        }
        (st.instructions, lines, state)
    }
}
