//! The host side of the NICs: one thread that waits for backend readiness,
//! guest kicks and timers, and polls the NIC models.
//!
//! The thread sleeps in `ppoll(2)` on:
//! - each backend's wake fd (a duplicate, so the model keeps its backend),
//! - the read end of a socket pair that [`IoKick::kick`] writes one byte
//!   to (coalesced: at most one byte is in flight), and
//! - the nearest deadline any model returned (nanosecond precision, for
//!   interrupt throttling).
//!
//! The backends' wake fds are edge-triggered epoll sets, readable until the
//! backend polls them; the models' [`NicPoll::poll`] always polls the
//! backend, so a readable fd never makes the thread spin.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use parking_lot::Mutex;

use super::NicPoll;

/// A NIC model shared between its BAR handlers and the I/O thread.
pub type SharedNic = Arc<Mutex<dyn NicPoll>>;

struct KickInner {
    pending: AtomicBool,
    stop: AtomicBool,
    tx: Mutex<UnixStream>,
}

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

    /// Asks the I/O thread to poll the models soon.
    pub fn kick(&self) {
        let Some(inner) = &self.inner else { return };
        if !inner.pending.swap(true, Ordering::AcqRel) {
            // A full socket buffer means the thread has a wake-up queued anyway.
            let _ = inner.tx.lock().write(&[1]);
        }
    }
}

/// The I/O thread, from creation (so that models can get their kick) to
/// its end when this value is dropped.
pub struct NetIoThread {
    inner: Arc<KickInner>,
    rx: Option<UnixStream>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NetIoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetIoThread").field("running", &self.handle.is_some()).finish()
    }
}

impl NetIoThread {
    /// Creates the kick channel; [`NetIoThread::start`] starts the thread.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Self {
            inner: Arc::new(KickInner {
                pending: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                tx: Mutex::new(tx),
            }),
            rx: Some(rx),
            handle: None,
        })
    }

    /// A kick for a model.
    pub fn kick(&self) -> IoKick {
        IoKick { inner: Some(Arc::clone(&self.inner)) }
    }

    /// Starts the thread over `nics`, each with its backend's wake fd.
    pub fn start(&mut self, nics: Vec<(SharedNic, Option<OwnedFd>)>) -> std::io::Result<()> {
        let Some(rx) = self.rx.take() else {
            return Err(std::io::Error::new(ErrorKind::AlreadyExists, "the NIC I/O thread is already running"));
        };
        let inner = Arc::clone(&self.inner);
        let handle = std::thread::Builder::new().name("nic-io".into()).spawn(move || run(inner, rx, nics))?;
        self.handle = Some(handle);
        Ok(())
    }
}

impl Drop for NetIoThread {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.pending.store(false, Ordering::Release);
        IoKick { inner: Some(Arc::clone(&self.inner)) }.kick();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(inner: Arc<KickInner>, mut rx: UnixStream, nics: Vec<(SharedNic, Option<OwnedFd>)>) {
    // Poll everything once at the start.
    let mut deadline: Option<Instant> = Some(Instant::now());
    let mut drain = [0u8; 64];
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            TimeSpec::from_duration(left)
        });
        {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(nics.len() + 1);
            fds.push(PollFd::new(rx.as_fd(), PollFlags::POLLIN));
            for (_, fd) in &nics {
                if let Some(fd) = fd {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            match ppoll(&mut fds, timeout, None) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(target: "net", "NIC I/O thread: ppoll failed: {e}; networking stops");
                    return;
                }
            }
        }
        if inner.stop.load(Ordering::Acquire) {
            return;
        }
        // Drain the kick bytes, then clear the flag, then poll: a kick
        // before the clear is covered by the polls below, and a kick after
        // it writes a new byte that wakes the next ppoll. (Clearing first
        // and draining after could swallow a kick's byte with the flag left
        // set, and no kick would wake the thread again.)
        loop {
            match rx.read(&mut drain) {
                Ok(0) => return,
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
    }
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

    impl NicPoll for Counter {
        fn poll(&mut self, _now: Instant) -> Option<Duration> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.again.take()
        }
        fn nic_label(&self) -> String {
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
        let nic: SharedNic =
            Arc::new(Mutex::new(Counter { polls: polls.clone(), again: Some(Duration::from_millis(2)) }));
        let mut io = NetIoThread::new().unwrap();
        let kick = io.kick();
        io.start(vec![(nic, None)]).unwrap();
        assert!(io.start(Vec::new()).is_err());
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
    fn a_readable_wake_fd_wakes_the_thread() {
        let polls = Arc::new(AtomicU32::new(0));
        let nic: SharedNic = Arc::new(Mutex::new(Counter { polls: polls.clone(), again: None }));
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut io = NetIoThread::new().unwrap();
        io.start(vec![(nic, Some(OwnedFd::from(b)))]).unwrap();
        wait_for(&polls, 1);
        a.write_all(&[1]).unwrap();
        // The fd stays readable (the counter never reads it): the thread
        // polls repeatedly, which is what a backend that does not consume
        // its readiness would cause. It must still stop when dropped.
        wait_for(&polls, 3);
        drop(io);
    }
}
