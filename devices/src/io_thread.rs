//! The host side of the NICs and disks: one thread that waits for backend
//! readiness, guest kicks and timers, and polls the device models (NIC
//! models, and virtio-blk, which serves here the requests its doorbells
//! bring and those the vCPU thread leaves to it: FLUSH and the like, and
//! what is left once its time for a notification is spent), each through
//! [`IoPoll`].
//!
//! The thread sleeps in `ppoll(2)` on:
//! - each backend's wake fd (a duplicate, so the model keeps its backend),
//! - the read end of a socket pair that [`IoKick::kick`] writes one byte
//!   to (coalesced: at most one byte is in flight),
//! - each doorbell eventfd ([`Doorbell`]): KVM signals one instead of
//!   exiting when the guest writes a queue notification it is attached to,
//!   and the thread passes the notification to the model, and
//! - the nearest deadline any model returned (nanosecond precision, for
//!   interrupt throttling).
//!
//! The backends' wake fds are edge-triggered epoll sets, readable until the
//! backend polls them; the models' [`IoPoll::poll`] always polls the
//! backend, so a readable fd never makes the thread spin.
//!
//! [`IoThread::hold`] stands the thread still between two rounds of work,
//! for as long as the returned [`IoHold`] lives: while the machine saves
//! or loads its state, no frame or disk request moves guest memory or a
//! model's state behind it.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;
use parking_lot::{Condvar, Mutex};

/// A device model as the I/O thread drives it: a NIC, or a disk that serves
/// its requests here.
pub trait IoPoll: Send {
    /// Polls the backend (always, so that its readiness is consumed even
    /// while the guest has the NIC disabled), delivers waiting frames and
    /// fires due timers (interrupt throttling). Returns when to call again
    /// at the latest.
    fn poll(&mut self, now: Instant) -> Option<Duration>;

    /// The guest notified `queue` through a doorbell eventfd
    /// ([`Doorbell`]) instead of a register write, `rings` times since the
    /// last call (the eventfd's count: writes that came before the I/O
    /// thread read it arrive together). Only models that hand out
    /// doorbells (virtio-net, virtio-blk) get these.
    fn doorbell(&mut self, queue: u16, rings: u64) {
        tracing::warn!(
            target: "devices",
            "{}: {rings} doorbell rings for queue {queue}, which it has none of",
            self.io_label()
        );
    }

    /// A short name for logs.
    fn io_label(&self) -> String;
}

/// A device model shared between its BAR handlers and the I/O thread.
pub type SharedIoDevice = Arc<Mutex<dyn IoPoll>>;

/// An eventfd that stands for the guest's notifications of one queue of a
/// NIC: whoever signals it (KVM, for the guest writes it is attached to)
/// makes the I/O thread call [`IoPoll::doorbell`] of `nic` with `queue`.
#[derive(Clone)]
pub struct Doorbell {
    pub fd: Arc<EventFd>,
    pub nic: SharedIoDevice,
    pub queue: u16,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell").field("nic", &self.nic.lock().io_label()).field("queue", &self.queue).finish()
    }
}

impl Doorbell {
    /// A doorbell for `queue` of `nic`, with a fresh non-blocking eventfd.
    pub fn new(nic: SharedIoDevice, queue: u16) -> std::io::Result<Self> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self { fd: Arc::new(fd), nic, queue })
    }
}

struct KickInner {
    pending: AtomicBool,
    stop: AtomicBool,
    /// The thread is not asleep in `ppoll`: it works, or it watches for
    /// work for a moment ([`SPIN`]) before it sleeps, and sees `pending`
    /// without a byte on the socket.
    awake: AtomicBool,
    tx: Mutex<UnixStream>,
    /// [`IoThread::hold`]'s gate.
    gate: Mutex<Gate>,
    gate_cv: Condvar,
}

/// Holders of the I/O thread, and whether it is in a round of work.
#[derive(Default)]
struct Gate {
    holders: u32,
    working: bool,
}

impl KickInner {
    /// Enters a round of work once no one holds the thread (or it stops).
    fn enter_round(&self) {
        let mut g = self.gate.lock();
        while g.holders > 0 && !self.stop.load(Ordering::Acquire) {
            self.gate_cv.wait(&mut g);
        }
        g.working = true;
    }

    fn leave_round(&self) {
        self.gate.lock().working = false;
        self.gate_cv.notify_all();
    }
}

/// The I/O thread held still ([`IoThread::hold`]) until this is dropped.
pub struct IoHold {
    inner: Arc<KickInner>,
}

impl std::fmt::Debug for IoHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IoHold")
    }
}

impl Drop for IoHold {
    fn drop(&mut self) {
        let mut g = self.inner.gate.lock();
        g.holders -= 1;
        let last = g.holders == 0;
        drop(g);
        if last {
            self.inner.gate_cv.notify_all();
            // What came meanwhile (a frame, a doorbell) is looked at now.
            IoKick { inner: Some(Arc::clone(&self.inner)) }.kick();
        }
    }
}

/// How long the thread keeps watching after its last work before it
/// sleeps. A guest that streams kicks (a transmit, then the receive buffers
/// its ACKs used) many thousands of times a second then never pays for a
/// wake-up, which costs the vCPU thread more than the work it hands over
/// (the kick's write enters the kernel's wake-up path).
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Wakes the I/O thread (after a guest transmit, or when the guest gave the
/// device fresh receive buffers).
#[derive(Clone)]
pub struct IoKick {
    inner: Option<Arc<KickInner>>,
}

impl std::fmt::Debug for IoKick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoKick").field("connected", &self.inner.is_some()).finish()
    }
}

impl IoKick {
    /// A kick that goes nowhere (device tests, machines without a thread).
    pub fn none() -> Self {
        Self { inner: None }
    }

    /// Whether an I/O thread listens (devices that defer work to it run
    /// the work at once without one).
    pub fn is_connected(&self) -> bool {
        self.inner.is_some()
    }

    /// Asks the I/O thread to poll the models soon.
    pub fn kick(&self) {
        let Some(inner) = &self.inner else { return };
        // Sequentially consistent with the thread's `awake` store and
        // `pending` load before it sleeps: either this sees it awake (and
        // it then sees `pending`), or the byte wakes it.
        if !inner.pending.swap(true, Ordering::SeqCst) && !inner.awake.load(Ordering::SeqCst) {
            // A full socket buffer means the thread has a wake-up queued anyway.
            let _ = inner.tx.lock().write(&[1]);
        }
    }
}

/// The I/O thread, from creation (so that models can get their kick) to
/// its end when this value is dropped.
pub struct IoThread {
    inner: Arc<KickInner>,
    rx: Option<UnixStream>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread").field("running", &self.handle.is_some()).finish()
    }
}

impl IoThread {
    /// Creates the kick channel; [`IoThread::start`] starts the thread.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Self {
            inner: Arc::new(KickInner {
                pending: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                awake: AtomicBool::new(true),
                tx: Mutex::new(tx),
                gate: Mutex::new(Gate::default()),
                gate_cv: Condvar::new(),
            }),
            rx: Some(rx),
            handle: None,
        })
    }

    /// Holds the thread still once its round of work (if it is in one)
    /// ends, and until the returned value is dropped: it then polls no
    /// model and passes on no doorbell. Holds nest.
    pub fn hold(&self) -> IoHold {
        let mut g = self.inner.gate.lock();
        g.holders += 1;
        while g.working {
            self.inner.gate_cv.wait(&mut g);
        }
        drop(g);
        IoHold { inner: Arc::clone(&self.inner) }
    }

    /// A kick for a model.
    pub fn kick(&self) -> IoKick {
        IoKick { inner: Some(Arc::clone(&self.inner)) }
    }

    /// Starts the thread over `nics`, each with its backend's wake fd, and
    /// their `doorbells`.
    pub fn start(
        &mut self,
        nics: Vec<(SharedIoDevice, Option<OwnedFd>)>,
        doorbells: Vec<Doorbell>,
    ) -> std::io::Result<()> {
        let Some(rx) = self.rx.take() else {
            return Err(std::io::Error::new(ErrorKind::AlreadyExists, "the NIC I/O thread is already running"));
        };
        let inner = Arc::clone(&self.inner);
        let handle =
            std::thread::Builder::new().name("pci-io".into()).spawn(move || run(inner, rx, nics, doorbells))?;
        self.handle = Some(handle);
        Ok(())
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.gate_cv.notify_all();
        self.inner.pending.store(false, Ordering::Release);
        IoKick { inner: Some(Arc::clone(&self.inner)) }.kick();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    inner: Arc<KickInner>,
    mut rx: UnixStream,
    nics: Vec<(SharedIoDevice, Option<OwnedFd>)>,
    doorbells: Vec<Doorbell>,
) {
    // Poll everything once at the start.
    let mut deadline: Option<Instant> = Some(Instant::now());
    let mut drain = [0u8; 64];
    let mut rung = vec![false; doorbells.len()];
    // When the last poll round ended (the thread watches for `SPIN` after).
    let mut worked = Instant::now();
    loop {
        let now = Instant::now();
        let spinning = now.saturating_duration_since(worked) < SPIN;
        if spinning && inner.pending.load(Ordering::Acquire) {
            // A kick while the thread watched: straight to the polls.
            rung.fill(false);
        } else {
            if !spinning {
                inner.awake.store(false, Ordering::SeqCst);
                if inner.pending.load(Ordering::SeqCst) {
                    // A kick that saw the thread awake: it has no byte.
                    inner.awake.store(true, Ordering::SeqCst);
                    worked = Instant::now();
                    continue;
                }
            }
            // Watching: look at the fds without sleeping, until the spin
            // ends or the deadline comes.
            let timeout = if spinning {
                Some(TimeSpec::from_duration(std::time::Duration::ZERO))
            } else {
                deadline.map(|d| TimeSpec::from_duration(d.saturating_duration_since(now)))
            };
            let ready = wait(&rx, &nics, &doorbells, &mut rung, timeout);
            inner.awake.store(true, Ordering::SeqCst);
            let Some(ready) = ready else { return };
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            if spinning && !ready && !due && !inner.pending.load(Ordering::Acquire) {
                std::hint::spin_loop();
                continue;
            }
        }
        inner.enter_round();
        if inner.stop.load(Ordering::Acquire) {
            inner.leave_round();
            return;
        }
        // Reading an eventfd resets it, so a notification after the read
        // rings it again; the model sees every queue at least once after
        // each guest write.
        for (d, _) in doorbells.iter().zip(&rung).filter(|(_, r)| **r) {
            if let Ok(rings) = d.fd.read() {
                d.nic.lock().doorbell(d.queue, rings);
            }
        }
        // Drain the kick bytes, then clear the flag, then poll: a kick
        // before the clear is covered by the polls below, and a kick after
        // it writes a new byte that wakes the next ppoll. (Clearing first
        // and draining after could swallow a kick's byte with the flag left
        // set, and no kick would wake the thread again.)
        loop {
            match rx.read(&mut drain) {
                Ok(0) => {
                    inner.leave_round();
                    return;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        inner.pending.store(false, Ordering::Release);
        let now = Instant::now();
        deadline = None;
        for (nic, _) in &nics {
            if let Some(d) = nic.lock().poll(now) {
                let at = now + d;
                deadline = Some(deadline.map_or(at, |x| x.min(at)));
            }
        }
        inner.leave_round();
        worked = Instant::now();
    }
}

/// One `ppoll` over the doorbells, the kick socket and the backends' wake
/// fds; `rung` gets which doorbells are readable. Some(whether anything
/// is readable), or None when polling failed (the thread then ends).
fn wait(
    rx: &UnixStream,
    nics: &[(SharedIoDevice, Option<OwnedFd>)],
    doorbells: &[Doorbell],
    rung: &mut [bool],
    timeout: Option<TimeSpec>,
) -> Option<bool> {
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(doorbells.len() + nics.len() + 1);
    for d in doorbells {
        fds.push(PollFd::new(d.fd.as_fd(), PollFlags::POLLIN));
    }
    fds.push(PollFd::new(rx.as_fd(), PollFlags::POLLIN));
    for (_, fd) in nics {
        if let Some(fd) = fd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
    }
    let n = match ppoll(&mut fds, timeout, None) {
        Ok(n) => n,
        Err(nix::errno::Errno::EINTR) => 0,
        Err(e) => {
            tracing::error!(target: "net", "device I/O thread: ppoll failed: {e}; NICs and disks stop");
            return None;
        }
    };
    for (r, fd) in rung.iter_mut().zip(&fds) {
        *r = fd.revents().is_some_and(|e| e.contains(PollFlags::POLLIN));
    }
    Some(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    struct Counter {
        polls: Arc<AtomicU32>,
        again: Option<Duration>,
    }

    impl IoPoll for Counter {
        fn poll(&mut self, _now: Instant) -> Option<Duration> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.again.take()
        }
        fn io_label(&self) -> String {
            "counter".into()
        }
    }

    fn wait_for(polls: &AtomicU32, at_least: u32) {
        let t = Instant::now();
        while polls.load(Ordering::SeqCst) < at_least {
            assert!(t.elapsed() < Duration::from_secs(5), "the I/O thread never polled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn polls_at_start_on_kicks_and_at_deadlines() {
        let polls = Arc::new(AtomicU32::new(0));
        let nic: SharedIoDevice =
            Arc::new(Mutex::new(Counter { polls: polls.clone(), again: Some(Duration::from_millis(2)) }));
        let mut io = IoThread::new().unwrap();
        let kick = io.kick();
        io.start(vec![(nic, None)], Vec::new()).unwrap();
        assert!(io.start(Vec::new(), Vec::new()).is_err());
        // Once at start, once 2 ms later (the returned deadline).
        wait_for(&polls, 2);
        kick.kick();
        kick.kick();
        wait_for(&polls, 3);
        IoKick::none().kick();
        assert!(format!("{io:?} {kick:?}").contains("running"));
        drop(io);
    }

    #[test]
    fn a_held_thread_polls_nothing_until_the_hold_ends() {
        let polls = Arc::new(AtomicU32::new(0));
        let nic: SharedIoDevice = Arc::new(Mutex::new(Counter { polls: polls.clone(), again: None }));
        let mut io = IoThread::new().unwrap();
        let kick = io.kick();
        io.start(vec![(nic, None)], Vec::new()).unwrap();
        wait_for(&polls, 1);
        let hold = io.hold();
        let inner = io.hold();
        let held_at = polls.load(Ordering::SeqCst);
        kick.kick();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(polls.load(Ordering::SeqCst), held_at, "a kick got through a hold");
        drop(hold);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(polls.load(Ordering::SeqCst), held_at, "a kick got through the hold still held");
        drop(inner);
        // The kick that came while held is answered once the hold ends.
        wait_for(&polls, held_at + 1);
        // A thread that stops while held ends all the same.
        let _held = io.hold();
        drop(io);
    }

    /// A model that records its doorbells.
    struct Bells(Arc<Mutex<Vec<u16>>>);

    impl IoPoll for Bells {
        fn poll(&mut self, _now: Instant) -> Option<Duration> {
            None
        }
        fn doorbell(&mut self, queue: u16, _rings: u64) {
            self.0.lock().push(queue);
        }
        fn io_label(&self) -> String {
            "bells".into()
        }
    }

    #[test]
    fn doorbells_reach_their_queues() {
        let rings = Arc::new(Mutex::new(Vec::new()));
        let nic: SharedIoDevice = Arc::new(Mutex::new(Bells(rings.clone())));
        let bells = [Doorbell::new(nic.clone(), 0).unwrap(), Doorbell::new(nic.clone(), 1).unwrap()];
        assert!(format!("{:?}", bells[1]).contains("queue: 1"));
        let mut io = IoThread::new().unwrap();
        io.start(vec![(nic, None)], bells.to_vec()).unwrap();
        let wait = |n: usize| {
            let t = Instant::now();
            while rings.lock().len() < n {
                assert!(t.elapsed() < Duration::from_secs(5), "the I/O thread missed a doorbell");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        bells[1].fd.write(1).unwrap();
        wait(1);
        bells[0].fd.write(1).unwrap();
        wait(2);
        // Rings that pile up before the thread reads the eventfd count once.
        bells[1].fd.write(1).unwrap();
        bells[1].fd.write(1).unwrap();
        wait(3);
        std::thread::sleep(Duration::from_millis(20));
        let r = rings.lock().clone();
        assert!(r == [1, 0, 1] || r == [1, 0, 1, 1], "{r:?}");
        drop(io);
    }

    #[test]
    fn a_readable_wake_fd_wakes_the_thread() {
        let polls = Arc::new(AtomicU32::new(0));
        let nic: SharedIoDevice = Arc::new(Mutex::new(Counter { polls: polls.clone(), again: None }));
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut io = IoThread::new().unwrap();
        io.start(vec![(nic, Some(OwnedFd::from(b)))], Vec::new()).unwrap();
        wait_for(&polls, 1);
        a.write_all(&[1]).unwrap();
        // The fd stays readable (the counter never reads it): the thread
        // polls repeatedly, which is what a backend that does not consume
        // its readiness would cause. It must still stop when dropped.
        wait_for(&polls, 3);
        drop(io);
    }
}
