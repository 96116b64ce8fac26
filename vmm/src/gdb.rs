//! The gdb stub (QEMU's `-s`, `-gdb DEV` and, with it, `-S`): gdb's
//! remote serial protocol on a TCP or Unix socket, each vCPU a thread.
//!
//! The protocol is the `gdbstub` crate's, with `gdbstub_arch`'s x86-64
//! description (general registers, RIP, RFLAGS, segment selectors, x87
//! and SSE). gdb's `monitor info registers` prints what that description
//! leaves out: control registers, EFER, segment bases and descriptor
//! tables.
//!
//! How the machine stops for gdb: the stub asks the run for work on the
//! whole machine ([`crate::RunControl::request`]), as a snapshot does.
//! Every vCPU stops, and the work, a *session*, runs on the machine's
//! thread until gdb resumes: it answers the stub's reads and writes of
//! registers (the stopped vCPUs' states) and of memory (through the
//! stopped vCPU's page tables), while no device moves. When gdb resumes,
//! the run's new engines take the breakpoints and the step
//! ([`crate::engine::Engine::set_debug`]): the interpreter, the JIT and
//! split execution then run one instruction at a time in the interpreter
//! (compiled code does not stop at breakpoints), and return
//! [`crate::engine::Exit::Debug`] at a breakpoint or after the step. The
//! run loop holds the machine there (`GuestDebug::hit`) and the stub
//! reports the stop.

use std::net::{TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use parking_lot::{Condvar, Mutex};

use cpu::state::{reg as gpr, sreg};
use cpu::{CpuState, DebugStops, WatchHit, Watchpoint};
use devices::power::{VmEvent, VmEvents};
use mmu::{Access, GuestMemory, Privilege};

use crate::error::Error;
use crate::machine::{Machine, RunControl, Stopped};

/// A debugger's hold on the machine: its breakpoints and step, for the
/// engines the run builds, and the stops the run loops report.
#[derive(Default)]
pub struct GuestDebug {
    /// A debugger is attached (the run loops look no further otherwise).
    attached: AtomicBool,
    /// The run is over.
    ended: AtomicBool,
    inner: Mutex<DebugInner>,
    cv: Condvar,
}

/// Whether an engine can hold a set of breakpoints and watchpoints; why
/// not ([`GuestDebug::limit_stops`]).
pub type StopsFit = fn(&[u64], &[Watchpoint]) -> Result<(), String>;

#[derive(Default)]
struct DebugInner {
    /// What the run's engine can hold, when it cannot hold any number.
    fits: Option<StopsFit>,
    /// Linear addresses, gdb's software and hardware breakpoints alike.
    breakpoints: Vec<u64>,
    /// gdb's watchpoints.
    watchpoints: Vec<Watchpoint>,
    /// The vCPU that steps one instruction while the others stand.
    step: Option<u32>,
    /// Only the vCPUs gdb resumed run (its scheduler locking).
    locked: bool,
    /// The vCPUs gdb resumed.
    resumed: Vec<u32>,
    /// The vCPU that stopped, not yet told to the debugger, and the
    /// watchpoint it hit.
    hit: Option<(u32, Option<WatchHit>)>,
}

impl DebugInner {
    /// Whether the run's engine can hold these stops; why not.
    fn fit(&self, breakpoints: &[u64], watchpoints: &[Watchpoint]) -> Result<(), String> {
        self.fits.map_or(Ok(()), |fits| fits(breakpoints, watchpoints))
    }
}

impl GuestDebug {
    /// The stops for vCPU `index`'s next engine, while a debugger is
    /// attached and has a breakpoint or a step (without them the guest
    /// runs at full speed).
    pub fn stops_for(&self, index: u32) -> Option<DebugStops> {
        if !self.attached.load(Ordering::Acquire) {
            return None;
        }
        let d = self.inner.lock();
        let step = d.step == Some(index);
        (step || !d.breakpoints.is_empty() || !d.watchpoints.is_empty()).then(|| DebugStops {
            breakpoints: d.breakpoints.clone(),
            step,
            watchpoints: d.watchpoints.clone(),
        })
    }

    /// Whether vCPU `index` may run: while another steps, or while gdb
    /// locks the scheduler to others, it stands.
    pub fn may_run(&self, index: u32) -> bool {
        if !self.attached.load(Ordering::Acquire) {
            return true;
        }
        let d = self.inner.lock();
        match d.step {
            Some(s) => s == index,
            None => !d.locked || d.resumed.contains(&index),
        }
    }

    /// vCPU `index` stopped for the debugger ([`crate::engine::Exit::Debug`]):
    /// the machine holds still until the debugger has looked.
    pub(crate) fn hit(&self, index: u32, watch: Option<WatchHit>, control: &RunControl) {
        control.hold();
        let mut d = self.inner.lock();
        d.hit.get_or_insert((index, watch));
        self.cv.notify_all();
    }

    /// The run is over: a waiting debugger hears of it.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let _d = self.inner.lock();
        self.cv.notify_all();
    }

    /// A stop the run loops reported, waiting up to `wait` for one.
    fn take_hit(&self, wait: Duration) -> Option<(u32, Option<WatchHit>)> {
        let mut d = self.inner.lock();
        if d.hit.is_none() && !self.ended.load(Ordering::Acquire) {
            self.cv.wait_for(&mut d, wait);
        }
        d.hit.take()
    }

    fn attach(&self) {
        let mut d = self.inner.lock();
        *d = DebugInner { fits: d.fits, ..DebugInner::default() };
        self.attached.store(true, Ordering::Release);
    }

    /// No debugger any more: no breakpoint or step is left for the engines.
    fn detach(&self) {
        let mut d = self.inner.lock();
        *d = DebugInner { fits: d.fits, ..DebugInner::default() };
        self.attached.store(false, Ordering::Release);
    }

    /// gdb's resume actions start again: every vCPU continues.
    fn clear_actions(&self) {
        let mut d = self.inner.lock();
        d.step = None;
        d.locked = false;
        d.resumed.clear();
    }

    fn resume_one(&self, index: u32, step: bool) {
        let mut d = self.inner.lock();
        d.resumed.push(index);
        if step {
            d.step = Some(index);
        }
    }

    fn lock_scheduler(&self) {
        self.inner.lock().locked = true;
    }

    fn stepping(&self) -> bool {
        self.inner.lock().step.is_some()
    }

    /// A breakpoint at `at` (software and hardware ones at the same
    /// address are two, removed one by one), unless the engine cannot hold
    /// it (false).
    fn add_breakpoint(&self, at: u64) -> bool {
        let mut d = self.inner.lock();
        let mut breakpoints = d.breakpoints.clone();
        breakpoints.push(at);
        if let Err(e) = d.fit(&breakpoints, &d.watchpoints) {
            tracing::warn!(target: "gdb", "breakpoint at {at:#x} refused: {e}");
            return false;
        }
        d.breakpoints = breakpoints;
        true
    }

    /// Holds the debugger to what the run's engine can stop at: a
    /// breakpoint or watchpoint past it is refused (gdb says it could not
    /// insert it) instead of failing the run.
    pub fn limit_stops(&self, fits: StopsFit) {
        self.inner.lock().fits = Some(fits);
    }

    /// Adds a watchpoint, unless the engine cannot hold it (false).
    fn add_watchpoint(&self, w: Watchpoint) -> bool {
        let mut d = self.inner.lock();
        if d.watchpoints.contains(&w) {
            return true;
        }
        let mut watchpoints = d.watchpoints.clone();
        watchpoints.push(w);
        if let Err(e) = d.fit(&d.breakpoints, &watchpoints) {
            tracing::warn!(target: "gdb", "watchpoint of {} bytes at {:#x} refused: {e}", w.len, w.addr);
            return false;
        }
        d.watchpoints = watchpoints;
        true
    }

    fn remove_watchpoint(&self, w: Watchpoint) -> bool {
        let mut d = self.inner.lock();
        let before = d.watchpoints.len();
        d.watchpoints.retain(|x| *x != w);
        d.watchpoints.len() != before
    }

    fn remove_breakpoint(&self, at: u64) -> bool {
        let mut d = self.inner.lock();
        match d.breakpoints.iter().position(|&b| b == at) {
            Some(i) => {
                d.breakpoints.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// Where the stub listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbEndpoint {
    /// A TCP port on a host (empty: every interface).
    Tcp(String, u16),
    /// A Unix socket at a path.
    Unix(PathBuf),
}

/// QEMU's `-gdb DEV`: `tcp::PORT`, `tcp:HOST:PORT` or `unix:PATH`, with
/// the socket options QEMU takes for it (`server`, `server=on`, `nowait`,
/// `wait=off`, `nodelay`); `none` gives `None`.
pub fn parse_gdb_dev(spec: &str) -> Result<Option<GdbEndpoint>, String> {
    if spec == "none" {
        return Ok(None);
    }
    let mut parts = spec.split(',');
    let dev = parts.next().unwrap_or_default();
    for o in parts {
        if !matches!(o, "server" | "server=on" | "nowait" | "wait=off" | "nodelay" | "nodelay=on") {
            return Err(format!("gdb device {spec}: option '{o}' is not taken (the stub listens and does not wait)"));
        }
    }
    if let Some(path) = dev.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!("gdb device {spec}: missing socket path"));
        }
        return Ok(Some(GdbEndpoint::Unix(PathBuf::from(path))));
    }
    let Some(addr) = dev.strip_prefix("tcp:") else {
        return Err(format!("gdb device {spec}: expected tcp::PORT, tcp:HOST:PORT, unix:PATH or none"));
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("gdb device {spec}: expected tcp:HOST:PORT"))?;
    let port = port.parse::<u16>().map_err(|_| format!("gdb device {spec}: '{port}' is not a port number"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Ok(Some(GdbEndpoint::Tcp(host.to_string(), port)))
}

/// A listening stub.
pub struct GdbServer {
    /// The TCP address it listens on (the port chosen when 0 was asked).
    pub local_addr: Option<std::net::SocketAddr>,
    unix: Option<PathBuf>,
}

impl GdbServer {
    /// Listens at `at` and serves one gdb at a time for `machine`, on a
    /// thread of its own.
    pub fn start(machine: &Machine, at: &GdbEndpoint) -> Result<GdbServer, Error> {
        let listener = match at {
            GdbEndpoint::Tcp(host, port) => {
                let host = if host.is_empty() { "0.0.0.0" } else { host.as_str() };
                Listener::Tcp(
                    TcpListener::bind((host, *port))
                        .map_err(|e| Error::Config(format!("-gdb tcp:{host}:{port}: {e}")))?,
                )
            }
            GdbEndpoint::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(path);
                }
                Listener::Unix(
                    UnixListener::bind(path)
                        .map_err(|e| Error::Config(format!("-gdb unix:{}: {e}", path.display())))?,
                )
            }
        };
        let local_addr = match &listener {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        };
        let unix = match at {
            GdbEndpoint::Unix(p) => Some(p.clone()),
            GdbEndpoint::Tcp(..) => None,
        };
        let parts = Parts {
            control: machine.control(),
            debug: machine.debug.clone(),
            events: machine.events.clone(),
            cpus: u32::try_from(machine.config.cpus()).unwrap_or(1),
        };
        std::thread::Builder::new()
            .name("gdb-stub".into())
            .spawn(move || loop {
                let conn = match &listener {
                    Listener::Tcp(l) => l.accept().map(|(s, _)| {
                        let _ = s.set_nodelay(true);
                        Conn::new(Stream::Tcp(s))
                    }),
                    Listener::Unix(l) => l.accept().map(|(s, _)| Conn::new(Stream::Unix(s))),
                };
                match conn {
                    Ok(c) => serve(&parts, c),
                    Err(e) => {
                        tracing::warn!(target: "gdb", "accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                if parts.debug.ended.load(Ordering::Acquire) {
                    break;
                }
            })
            .map_err(|source| Error::Thread { what: "gdb-stub", source })?;
        Ok(GdbServer { local_addr, unix })
    }
}

impl Drop for GdbServer {
    fn drop(&mut self) {
        if let Some(p) = &self.unix {
            let _ = std::fs::remove_file(p);
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// What the stub's thread holds of the machine.
#[derive(Clone)]
struct Parts {
    control: Arc<RunControl>,
    debug: Arc<GuestDebug>,
    events: Arc<VmEvents>,
    cpus: u32,
}

/// One gdb connection, from attach to detach.
fn serve(parts: &Parts, conn: Conn) {
    tracing::info!(target: "gdb", "gdb attached: the machine stops");
    parts.debug.attach();
    let mut target = Stub { parts: parts.clone(), session: None, resumed: false };
    if let Err(e) = target.stop() {
        tracing::warn!(target: "gdb", "cannot stop the machine for gdb: {e}");
        parts.debug.detach();
        return;
    }
    let stub = GdbStub::new(conn);
    let end = stub.run_blocking::<EventLoop>(&mut target);
    let kill = match &end {
        Ok(DisconnectReason::Kill) => true,
        Ok(why) => {
            tracing::info!(target: "gdb", "gdb left ({why:?}): the machine goes on");
            false
        }
        Err(e) => {
            tracing::warn!(target: "gdb", "gdb connection: {e}");
            false
        }
    };
    parts.debug.detach();
    if kill {
        tracing::info!(target: "gdb", "gdb killed the guest: the run ends");
        parts.events.request(VmEvent::Quit);
    }
    // Ending the session rebuilds the engines without stops; a machine
    // that ran under them is stopped once more to lose them.
    match target.session.take() {
        // A gdb that never let the guest run leaves it as it was (held
        // by --paused, say); one that did, running.
        Some(s) if !target.resumed && !kill => s.leave(),
        Some(s) => s.resume(),
        None if !parts.debug.ended.load(Ordering::Acquire) => {
            if let Ok(()) = target.stop() {
                if let Some(s) = target.session.take() {
                    s.resume();
                }
            }
        }
        None => {}
    }
}

/// Work the stub sends to the session that holds the machine stopped.
type Work = Box<dyn FnOnce(&mut Machine, &mut Stopped) + Send>;

enum SessionMsg {
    Work(Work),
    /// gdb resumes the guest.
    Resume,
    /// gdb went away without resuming: the vCPUs go on as it found them,
    /// running, or paused (by `--paused` or a monitor).
    Leave,
}

/// The machine stopped for gdb: the work that holds it, by its channel.
struct Session {
    tx: Sender<SessionMsg>,
}

impl Session {
    /// Runs `f` on the stopped machine and gives its result; `None` when
    /// the session is gone.
    fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut Machine, &mut Stopped) -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = channel();
        self.tx
            .send(SessionMsg::Work(Box::new(move |m, s| {
                let _ = tx.send(f(m, s));
            })))
            .ok()?;
        rx.recv().ok()
    }

    /// Lets the machine go on.
    fn resume(self) {
        let _ = self.tx.send(SessionMsg::Resume);
    }

    /// Lets the machine go on as the session found it.
    fn leave(self) {
        let _ = self.tx.send(SessionMsg::Leave);
    }
}

/// The session's side, on the machine's thread: answers the stub's work
/// until it resumes or goes.
fn session(m: &mut Machine, stopped: &mut Stopped, ready: Sender<()>, rx: Receiver<SessionMsg>) {
    let _ = ready.send(());
    let run = loop {
        match rx.recv() {
            Ok(SessionMsg::Work(f)) => f(m, stopped),
            Ok(SessionMsg::Resume) => break true,
            Ok(SessionMsg::Leave) => break !stopped.paused,
            Err(_) => {
                m.debug.detach();
                break !stopped.paused;
            }
        }
    };
    m.control().set_pause(!run);
}

/// The gdbstub target: the machine, stopped or running.
struct Stub {
    parts: Parts,
    session: Option<Session>,
    /// gdb has let the guest run at least once.
    resumed: bool,
}

impl Stub {
    /// Stops the machine and holds it in a session.
    fn stop(&mut self) -> Result<(), String> {
        if self.session.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.parts.debug.ended.load(Ordering::Acquire) {
                return Err("the run is over".into());
            }
            let (tx, rx) = channel();
            let (ready_tx, ready_rx) = channel();
            let asked = self.parts.control.request(Box::new(move |m, s| session(m, s, ready_tx, rx)));
            match asked {
                Ok(()) => {
                    // The run stops at its next check: a slice at most.
                    while Instant::now() < deadline {
                        match ready_rx.recv_timeout(Duration::from_millis(50)) {
                            Ok(()) => {
                                self.session = Some(Session { tx });
                                return Ok(());
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                if self.parts.debug.ended.load(Ordering::Acquire) {
                                    return Err("the run is over".into());
                                }
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                }
                // Not running yet (the machine is being built), or a
                // snapshot is under way: try again.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            if Instant::now() >= deadline {
                return Err("the machine did not stop within 30 s".into());
            }
        }
    }

    fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut Machine, &mut Stopped) -> R + Send + 'static) -> Option<R> {
        self.session.as_ref()?.with(f)
    }

    /// The stopped state of the vCPU of `tid`.
    fn state(&self, tid: Tid) -> Option<CpuState> {
        let i = tid.get() - 1;
        self.with(move |_, s| s.vcpus.get(i).copied()).flatten()
    }
}

fn tid(index: u32) -> Tid {
    NonZeroUsize::new(index as usize + 1).unwrap_or(NonZeroUsize::MIN)
}

/// gdb's order of the general registers, as ferrovm's indices.
const GDB_GPRS: [usize; 16] =
    [gpr::RAX, gpr::RBX, gpr::RCX, gpr::RDX, gpr::RSI, gpr::RDI, gpr::RBP, gpr::RSP, 8, 9, 10, 11, 12, 13, 14, 15];

/// gdb's order of the segment registers.
const GDB_SEGS: [usize; 6] = [sreg::CS, sreg::SS, sreg::DS, sreg::ES, sreg::FS, sreg::GS];

fn f80_bytes(f: cpu::state::F80) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&f.mantissa.to_le_bytes());
    b[8..].copy_from_slice(&f.sign_exp.to_le_bytes());
    b
}

fn regs_of(mut s: CpuState) -> X86_64CoreRegs {
    let mut r = X86_64CoreRegs::default();
    for (g, &i) in r.regs.iter_mut().zip(&GDB_GPRS) {
        *g = s.gpr[i];
    }
    r.rip = s.rip;
    r.eflags = s.flags() as u32;
    r.segments.cs = u32::from(s.seg[sreg::CS].selector);
    r.segments.ss = u32::from(s.seg[sreg::SS].selector);
    r.segments.ds = u32::from(s.seg[sreg::DS].selector);
    r.segments.es = u32::from(s.seg[sreg::ES].selector);
    r.segments.fs = u32::from(s.seg[sreg::FS].selector);
    r.segments.gs = u32::from(s.seg[sreg::GS].selector);
    let top = usize::from((s.fpu.fsw >> 11) & 7);
    for (i, st) in r.st.iter_mut().enumerate() {
        *st = f80_bytes(s.fpu.regs[(top + i) & 7]);
    }
    r.fpu.fctrl = u32::from(s.fpu.fcw);
    r.fpu.fstat = u32::from(s.fpu.fsw);
    r.fpu.ftag = u32::from(s.fpu.ftw);
    r.fpu.fiseg = u32::from(s.fpu.fcs);
    r.fpu.fioff = s.fpu.fip as u32;
    r.fpu.foseg = u32::from(s.fpu.fds);
    r.fpu.fooff = s.fpu.fdp as u32;
    r.fpu.fop = u32::from(s.fpu.fop);
    r.xmm = s.xmm;
    r.mxcsr = s.mxcsr;
    r
}

/// `s` with gdb's registers written in. Segment selectors are not taken
/// (a selector alone does not load a descriptor); a write that changes
/// one is refused.
fn write_regs(s: &mut CpuState, r: &X86_64CoreRegs) -> Result<(), ()> {
    let segs = [r.segments.cs, r.segments.ss, r.segments.ds, r.segments.es, r.segments.fs, r.segments.gs];
    if GDB_SEGS.iter().zip(segs).any(|(&i, v)| u32::from(s.seg[i].selector) != v) {
        return Err(());
    }
    for (g, &i) in r.regs.iter().zip(&GDB_GPRS) {
        s.gpr[i] = *g;
    }
    s.rip = r.rip;
    s.materialize_flags();
    // Bit 1 is always set; the rest of the upper half stays.
    s.rflags = (s.rflags & !0xffff_ffff) | u64::from(r.eflags) | 2;
    s.fpu.fcw = r.fpu.fctrl as u16;
    s.fpu.fsw = r.fpu.fstat as u16;
    s.fpu.ftw = r.fpu.ftag as u16;
    let top = usize::from((s.fpu.fsw >> 11) & 7);
    for (i, st) in r.st.iter().enumerate() {
        let reg = &mut s.fpu.regs[(top + i) & 7];
        reg.mantissa = u64::from_le_bytes(st[..8].try_into().map_err(|_| ())?);
        reg.sign_exp = u16::from_le_bytes([st[8], st[9]]);
    }
    s.xmm = r.xmm;
    s.mxcsr = r.mxcsr;
    Ok(())
}

/// Copies between guest memory at linear `addr`, as vCPU state `s` maps
/// it, and `buf`: reads when `write` is `None`. Supervisor accesses that
/// neither SMAP nor write protection stop, as a debugger's are; the
/// bytes done before the first unmapped page.
fn access(mem: &GuestMemory, s: &CpuState, addr: u64, buf: &mut [u8], write: bool) -> usize {
    let mut paging = cpu::paging_of(s);
    paging.smap = false;
    paging.smep = false;
    paging.wp = false;
    let how = if write { Access::Write } else { Access::Read };
    let mut done = 0;
    while done < buf.len() {
        let lin = addr.wrapping_add(done as u64);
        let Ok(t) = paging.translate(mem, lin, how, Privilege::Supervisor) else { break };
        let n = (buf.len() - done).min((0x1000 - (lin & 0xfff)) as usize);
        let chunk = &mut buf[done..done + n];
        let ok = if write { mem.write(t.phys, chunk).is_ok() } else { mem.read(t.phys, chunk).is_ok() };
        if !ok {
            break;
        }
        done += n;
    }
    done
}

impl Target for Stub {
    type Arch = X86_64_SSE;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for Stub {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let s = self.state(tid).ok_or(TargetError::NonFatal)?;
        *regs = regs_of(s);
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let i = tid.get() - 1;
        let regs = regs.clone();
        let done = self.with(move |_, s| s.vcpus.get_mut(i).map(|st| write_regs(st, &regs)));
        match done.flatten() {
            Some(Ok(())) => Ok(()),
            _ => Err(TargetError::NonFatal),
        }
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let i = tid.get() - 1;
        let len = data.len();
        let got = self.with(move |m, s| {
            let st = s.vcpus.get(i)?;
            let mut buf = vec![0u8; len];
            let n = access(&m.mem, st, start, &mut buf, false);
            buf.truncate(n);
            Some(buf)
        });
        match got.flatten() {
            Some(b) if !b.is_empty() => {
                data[..b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            _ => Err(TargetError::NonFatal),
        }
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let i = tid.get() - 1;
        let mut buf = data.to_vec();
        let done = self.with(move |m, s| {
            let st = s.vcpus.get(i)?;
            let n = buf.len();
            Some(access(&m.mem, st, start, &mut buf, true) == n)
        });
        match done.flatten() {
            Some(true) => Ok(()),
            _ => Err(TargetError::NonFatal),
        }
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for i in 0..self.parts.cpus {
            thread_is_active(tid(i));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for Stub {
    fn resume(&mut self) -> Result<(), Self::Error> {
        match self.session.take() {
            Some(s) => {
                self.resumed = true;
                s.resume();
                Ok(())
            }
            None => Err("the machine is not stopped".into()),
        }
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.parts.debug.clear_actions();
        Ok(())
    }

    fn set_resume_action_continue(&mut self, tid: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("a guest takes no signals".into());
        }
        self.parts.debug.resume_one((tid.get() - 1) as u32, false);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for Stub {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.parts.debug.lock_scheduler();
        Ok(())
    }
}

impl MultiThreadSingleStep for Stub {
    fn set_resume_action_step(&mut self, tid: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("a guest takes no signals".into());
        }
        self.parts.debug.resume_one((tid.get() - 1) as u32, true);
        Ok(())
    }
}

impl Breakpoints for Stub {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

fn watchpoint(addr: u64, len: u64, kind: WatchKind) -> Watchpoint {
    let (read, write) = match kind {
        WatchKind::Write => (false, true),
        WatchKind::Read => (true, false),
        WatchKind::ReadWrite => (true, true),
    };
    Watchpoint { addr, len: len.max(1), read, write }
}

impl HwWatchpoint for Stub {
    fn add_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        Ok(self.parts.debug.add_watchpoint(watchpoint(addr, len, kind)))
    }

    fn remove_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        Ok(self.parts.debug.remove_watchpoint(watchpoint(addr, len, kind)))
    }
}

impl SwBreakpoint for Stub {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.parts.debug.add_breakpoint(addr))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.parts.debug.remove_breakpoint(addr))
    }
}

impl HwBreakpoint for Stub {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.parts.debug.add_breakpoint(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.parts.debug.remove_breakpoint(addr))
    }
}

impl MonitorCmd for Stub {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(cmd);
        match cmd.trim() {
            "info registers" | "info cpus" => {
                let states = self.with(|_, s| s.vcpus.clone()).unwrap_or_default();
                for (i, mut s) in states.into_iter().enumerate() {
                    gdbstub::outputln!(out, "{}", describe(i, &mut s));
                }
            }
            "help" | "" => {
                gdbstub::outputln!(out, "monitor commands: info registers (control registers, EFER, segments with bases, descriptor tables, per vCPU)");
            }
            other => {
                gdbstub::outputln!(out, "unknown command '{other}': monitor help lists them");
            }
        }
        Ok(())
    }
}

/// `monitor info registers`: what gdb's register description leaves out
/// (the control and debug registers, EFER, the segments' bases and
/// limits, the descriptor tables), in the dump of QEMU's `info registers`.
fn describe(i: usize, s: &mut CpuState) -> String {
    let rflags = s.flags();
    let halted = if s.halted != 0 { " HLT" } else { "" };
    format!("CPU#{i}: RIP={:016x} RFL={rflags:08x} CPL={}{halted}\n{}", s.rip, s.cpl, cpu::guestlog::dump_state(s))
}

/// The connection to gdb, with the byte a look ahead read.
struct Conn {
    stream: Stream,
    ahead: Option<u8>,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn { stream, ahead: None }
    }

    fn io(&mut self) -> &mut dyn ReadWrite {
        match &mut self.stream {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

impl Connection for Conn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.io().write_all(&[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.io().write_all(buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.io().flush()
    }
}

impl ConnectionExt for Conn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        if let Some(b) = self.ahead.take() {
            return Ok(b);
        }
        let mut b = [0u8];
        self.io().read_exact(&mut b)?;
        Ok(b[0])
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if self.ahead.is_some() {
            return Ok(self.ahead);
        }
        self.set_nonblocking(true)?;
        let mut b = [0u8];
        let r = match self.io().read(&mut b) {
            Ok(0) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "gdb closed the connection")),
            Ok(_) => {
                self.ahead = Some(b[0]);
                Ok(self.ahead)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        };
        self.set_nonblocking(false)?;
        r
    }
}

/// How the stub waits while the machine runs: for a stop the run loops
/// report, the run's end, or gdb's next byte (its Ctrl-C).
enum EventLoop {}

impl BlockingEventLoop for EventLoop {
    type Target = Stub;
    type Connection = Conn;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Stub,
        conn: &mut Conn,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<String, std::io::Error>> {
        loop {
            if let Some((i, watch)) = target.parts.debug.take_hit(Duration::from_millis(10)) {
                let stepped = target.parts.debug.stepping();
                target.stop().map_err(WaitForStopReasonError::Target)?;
                let why = match watch {
                    Some(w) => MultiThreadStopReason::Watch {
                        tid: tid(i),
                        kind: if w.write { WatchKind::Write } else { WatchKind::Read },
                        addr: w.addr,
                    },
                    None if stepped => MultiThreadStopReason::DoneStep,
                    None => MultiThreadStopReason::SignalWithThread { tid: tid(i), signal: Signal::SIGTRAP },
                };
                return Ok(Event::TargetStopped(why));
            }
            if target.parts.debug.ended.load(Ordering::Acquire) {
                return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(0)));
            }
            if conn.peek().map_err(WaitForStopReasonError::Connection)?.is_some() {
                let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(b));
            }
        }
    }

    fn on_interrupt(target: &mut Stub) -> Result<Option<Self::StopReason>, String> {
        target.stop()?;
        Ok(Some(MultiThreadStopReason::SignalWithThread { tid: tid(0), signal: Signal::SIGINT }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdb_devices_parse_as_qemu_takes_them() {
        assert_eq!(parse_gdb_dev("tcp::1234"), Ok(Some(GdbEndpoint::Tcp(String::new(), 1234))));
        assert_eq!(
            parse_gdb_dev("tcp:127.0.0.1:4321,server,nowait"),
            Ok(Some(GdbEndpoint::Tcp("127.0.0.1".into(), 4321)))
        );
        assert_eq!(
            parse_gdb_dev("unix:/tmp/g.sock,server=on,wait=off"),
            Ok(Some(GdbEndpoint::Unix("/tmp/g.sock".into())))
        );
        assert_eq!(parse_gdb_dev("none"), Ok(None));
        for bad in ["tcp::x", "udp::1", "unix:", "tcp::1,telnet", "/dev/ttyS0"] {
            assert!(parse_gdb_dev(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registers_go_to_gdb_and_back() {
        let mut s = CpuState::reset();
        for (i, g) in s.gpr.iter_mut().enumerate() {
            *g = 0x1111 * (i as u64 + 1);
        }
        s.rip = 0xffff_ffff_8100_0000;
        s.xmm[3] = 0x1234;
        let r = regs_of(s);
        assert_eq!(r.regs[0], s.gpr[gpr::RAX]);
        assert_eq!(r.regs[1], s.gpr[gpr::RBX]);
        assert_eq!(r.regs[7], s.gpr[gpr::RSP]);
        assert_eq!(r.regs[15], s.gpr[15]);
        assert_eq!(r.rip, s.rip);
        assert_eq!(r.segments.cs, 0xf000);
        let mut back = CpuState::reset();
        let mut r2 = r.clone();
        r2.regs[2] = 0xdead;
        write_regs(&mut back, &r2).unwrap();
        assert_eq!(back.gpr[gpr::RCX], 0xdead);
        assert_eq!(back.gpr[gpr::RDI], s.gpr[gpr::RDI]);
        assert_eq!(back.xmm[3], 0x1234);
        // A selector alone cannot be loaded.
        r2.segments.ds = 0x18;
        assert!(write_regs(&mut back, &r2).is_err());
    }
}
