//! virtio-rng: an entropy device over the virtio PCI transport, like QEMU's
//! virtio-rng-pci (virtio device type 4).
//!
//! Reference: VIRTIO 1.1, 5.4 "Entropy Device": 5.4.2 the one queue, 5.4.3
//! no device feature bits, 5.4.4 no configuration space, 5.4.6 device
//! operation.
//!
//! ```text
//! queue        0 requestq (one queue)
//! config       none
//! request      device-writable buffers; the device fills them with entropy, and the used
//!              length is the number of bytes it wrote
//! ```
//!
//! Model choices:
//! - The bytes come from an [`EntropySource`] the device owns: a host file
//!   ([`FileSource`], `/dev/urandom` by default, as QEMU's `rng-builtin`
//!   and `rng-random` read it), or any other implementation.
//! - A chain's writable buffers are filled in order, at most
//!   [`MAX_REQUEST`] bytes per chain, whatever the driver posted: the
//!   guest decides neither how much the host reads nor how much it keeps
//!   in memory. Readable buffers (5.4.6.1 forbids them) are ignored; a
//!   chain without a writable byte is returned with length 0.
//! - A source that fails or gives fewer bytes than asked completes the
//!   request with what it gave (possibly nothing), and this is logged once.
//!   [`FileSource`] reads without blocking, so a source with nothing to
//!   give (a hardware generator still working, a FIFO without a writer)
//!   never stalls the thread that serves the queue.
//! - Requests are served on the thread that notifies the queue (the vCPU's,
//!   or the I/O thread's for doorbells); reading the host's random device
//!   costs no more than copying the bytes.
//! - An optional [`RateLimit`] works as QEMU's `max-bytes` and `period`: a
//!   period starts with the first bytes delivered after the budget was
//!   refilled, and once `max_bytes` are delivered in it the device takes
//!   no request until it ends. [`VirtioDevice::poll`] returns how long
//!   that is, and serves what waits once it has ended. A request that the
//!   remaining budget cannot fill gets what is left of it.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use persist::{Persist, PersistError};

use crate::nic::{IoKick, IoPoll};
use crate::virtio::{
    Context, QueueError, VirtioDevice, VirtioPci, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
    VIRTIO_ID_RNG,
};

/// Entries of the request queue (as virtio-blk's).
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets, however large its buffers.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The host file QEMU's `rng-builtin` and `rng-random` read by default.
pub const DEFAULT_SOURCE: &str = "/dev/urandom";

/// Where the device takes its bytes from.
pub trait EntropySource: Send {
    /// Fills `buf` from its start and returns how many bytes it filled:
    /// fewer than `buf.len()` when the source has no more to give now.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// A short name for logs.
    fn debug_label(&self) -> String {
        "entropy source".into()
    }
}

/// An entropy source reading a host file, as QEMU's
/// `-object rng-random,filename=PATH` (usually `/dev/urandom` or
/// `/dev/random`; a regular file gives its bytes once, then nothing).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
}

impl FileSource {
    /// Opens `path` for reading, without blocking on it. The error names
    /// the path; a directory is refused.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let named =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot open entropy source {}: {e}", path.display()));
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(named)?;
        if file.metadata().map_err(named)?.is_dir() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("cannot use entropy source {}: it is a directory", path.display()),
            ));
        }
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// The path it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl EntropySource for FileSource {
    /// Reads until `buf` is full, the file ends or it has nothing more to
    /// give without blocking. An error after some bytes returns those
    /// bytes; the next call meets the error again.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) if n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn debug_label(&self) -> String {
        self.path.display().to_string()
    }
}

/// A limit on the bytes the guest gets: at most `max_bytes` per `period`
/// (QEMU's virtio-rng `max-bytes` and `period`, the latter in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes one period delivers at most (at least 1).
    pub max_bytes: u64,
    /// The length of a period, from [`RateLimit::MIN_PERIOD`] to
    /// [`RateLimit::MAX_PERIOD`].
    pub period: Duration,
}

impl RateLimit {
    /// The shortest period (QEMU's `period` is a positive number of milliseconds).
    pub const MIN_PERIOD: Duration = Duration::from_millis(1);
    /// The longest period (QEMU's `period` is a 32-bit number of milliseconds).
    pub const MAX_PERIOD: Duration = Duration::from_millis(u32::MAX as u64);

    /// Checks that a period delivers something and has a length in range.
    pub fn check(&self) -> io::Result<()> {
        let invalid =
            |what: String| Err(io::Error::new(ErrorKind::InvalidInput, format!("virtio-rng rate limit: {what}")));
        if self.max_bytes == 0 {
            return invalid("max_bytes is 0: the guest would never get a byte".into());
        }
        if !(Self::MIN_PERIOD..=Self::MAX_PERIOD).contains(&self.period) {
            return invalid(format!(
                "a period of {:?} is not from {:?} to {:?}",
                self.period,
                Self::MIN_PERIOD,
                Self::MAX_PERIOD
            ));
        }
        Ok(())
    }
}

/// The budget of the current period of a [`RateLimit`].
#[derive(Debug)]
struct Budget {
    limit: RateLimit,
    /// Bytes the current period still delivers.
    left: u64,
    /// When the current period started: at its first delivery (None
    /// until then).
    started: Option<Instant>,
}

impl Budget {
    fn new(limit: RateLimit) -> Self {
        Self { limit, left: limit.max_bytes, started: None }
    }

    /// Starts a new period if the current one is over at `now`.
    fn refill(&mut self, now: Instant) {
        // An instant before the start (the caller's clock read earlier) is
        // inside the period.
        let over = self.started.is_some_and(|s| now.checked_duration_since(s).is_some_and(|d| d >= self.limit.period));
        if over {
            self.left = self.limit.max_bytes;
            self.started = None;
        }
    }

    /// Bytes the period still delivers at `now`.
    fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.left
    }

    /// `n` bytes were delivered at `now`.
    fn spend(&mut self, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        self.started.get_or_insert(now);
        self.left = self.left.saturating_sub(n);
    }

    /// How long from `now` until the current period ends.
    fn until_refill(&self, now: Instant) -> Duration {
        let period = self.limit.period;
        self.started.map_or(period, |s| period.saturating_sub(now.saturating_duration_since(s)))
    }
}

/// The saved state of the device model: empty. What the guest sees of the
/// device is its queue, which the transport saves; the source and the rate
/// limit are the host's configuration, and a restored device starts a
/// fresh period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VirtioRngState {}

/// What one step through the queue did.
enum Step {
    /// A chain was filled and returned.
    Served,
    /// The queue has no chain (or is not usable).
    Empty,
    /// A chain waits and the period's budget is spent.
    Throttled,
}

/// The virtio-rng device model.
pub struct VirtioRng {
    source: Box<dyn EntropySource>,
    budget: Option<Budget>,
    kick: IoKick,
    /// A chain waits for the next period's budget: `poll` serves it then.
    waiting: bool,
    /// Restored: `poll` serves what the driver made available before the save.
    resume: bool,
    warned: bool,
    /// The bytes of one request, on their way from the source to the guest.
    scratch: Vec<u8>,
}

/// virtio-rng on PCI: what the machine plugs in.
pub type VirtioRngPci = VirtioPci<VirtioRng>;

impl VirtioRng {
    /// A device taking its bytes from `source`, without a rate limit;
    /// `kick` wakes the I/O thread, which polls the device (see
    /// [`VirtioDevice::poll`]) to serve what waits after a restore or the
    /// end of a rate-limit period.
    pub fn new(source: Box<dyn EntropySource>, kick: IoKick) -> Self {
        Self { source, budget: None, kick, waiting: false, resume: false, warned: false, scratch: vec![0; MAX_REQUEST] }
    }

    /// Limits the bytes the guest gets to `limit`; refuses a limit that
    /// fails [`RateLimit::check`].
    pub fn with_rate_limit(mut self, limit: RateLimit) -> io::Result<Self> {
        limit.check()?;
        self.budget = Some(Budget::new(limit));
        Ok(self)
    }

    /// The rate limit, if the device has one.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.budget.as_ref().map(|b| b.limit)
    }

    fn warn_once(&mut self, what: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(target: "devices", "virtio-rng: {what} (logged once)");
        }
    }

    /// Bytes the next request may get at `now`.
    fn allowance(&mut self, now: Instant) -> usize {
        match &mut self.budget {
            None => MAX_REQUEST,
            Some(b) => usize::try_from(b.available(now)).unwrap_or(usize::MAX).min(MAX_REQUEST),
        }
    }

    /// Serves the available chains, as long as the budget lasts.
    fn process(&mut self, ctx: &mut Context<'_>, now: Instant) {
        self.waiting = false;
        if !ctx.running {
            return;
        }
        let mut used = false;
        loop {
            match self.step(ctx, now) {
                Ok(Step::Served) => used = true,
                Ok(Step::Throttled) => {
                    self.waiting = true;
                    break;
                }
                Ok(Step::Empty) => {
                    let Some(q) = ctx.queues.first_mut() else { break };
                    // With EVENT_IDX, a chain made available before the
                    // driver sees the new avail_event brings no
                    // notification: look at the ring once more after it.
                    match q.rearm(ctx.mem) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => {
                            q.mark_broken();
                            ctx.fail(&e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    if let Some(q) = ctx.queues.first_mut() {
                        q.mark_broken();
                    }
                    ctx.fail(&e);
                    break;
                }
            }
        }
        if used {
            ctx.signal_used(0);
        }
    }

    /// Takes one chain, fills its writable buffers and returns it.
    fn step(&mut self, ctx: &mut Context<'_>, now: Instant) -> Result<Step, QueueError> {
        let allowed = self.allowance(now);
        let mem = ctx.mem;
        let Some(q) = ctx.queues.first_mut().filter(|q| q.is_usable()) else { return Ok(Step::Empty) };
        if allowed == 0 {
            return Ok(if q.pending(mem)? > 0 { Step::Throttled } else { Step::Empty });
        }
        let Some(chain) = q.pop(mem)? else { return Ok(Step::Empty) };
        let want = usize::try_from(chain.writable_len()).unwrap_or(usize::MAX).min(allowed);
        let got = if want == 0 { 0 } else { self.read_entropy(want) };
        let written = chain.write_at(mem, 0, &self.scratch[..got])?;
        // At most MAX_REQUEST.
        q.add_used(mem, chain.head, u32::try_from(written).unwrap_or(u32::MAX))?;
        if let Some(b) = &mut self.budget {
            b.spend(written as u64, now);
        }
        Ok(Step::Served)
    }

    /// Reads up to `len` bytes (at most [`MAX_REQUEST`]) into the scratch
    /// buffer; returns how many there are.
    fn read_entropy(&mut self, len: usize) -> usize {
        let len = len.min(self.scratch.len());
        match self.source.fill(&mut self.scratch[..len]) {
            Ok(n) if n >= len => len,
            Ok(n) => {
                let what =
                    format!("{} gave {n} of {len} bytes; the request gets what it gave", self.source.debug_label());
                self.warn_once(&what);
                n
            }
            Err(e) => {
                let what = format!("reading {} failed: {e}; the request gets no bytes", self.source.debug_label());
                self.warn_once(&what);
                0
            }
        }
    }
}

/// Every state is taken (there is nothing in it to check). The device then
/// serves, at its next poll, what the driver made available before the
/// save: the I/O thread is kicked.
impl Persist for VirtioRng {
    type State = VirtioRngState;

    fn save(&self) -> VirtioRngState {
        VirtioRngState {}
    }

    fn restore(&mut self, _state: &VirtioRngState) -> Result<(), PersistError> {
        self.waiting = false;
        self.resume = true;
        self.kick.kick();
        Ok(())
    }
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_RNG
    }

    fn debug_label(&self) -> String {
        format!("virtio-rng ({})", self.source.debug_label())
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC
    }

    fn config_len(&self) -> usize {
        0
    }

    fn read_config(&self, _offset: usize, data: &mut [u8]) {
        data.fill(0);
    }

    /// Forgets the work that waited for the queue, which the reset
    /// empties. The period's budget stays spent: resetting the device does
    /// not get the guest more bytes.
    fn reset(&mut self) {
        self.waiting = false;
        self.resume = false;
    }

    fn notify(&mut self, _queue: usize, ctx: &mut Context<'_>) {
        // The context carries no time; the budget's periods are host time.
        self.process(ctx, Instant::now());
    }

    fn poll(&mut self, ctx: &mut Context<'_>, now: Instant) -> Option<Duration> {
        if self.waiting || self.resume {
            self.resume = false;
            self.process(ctx, now);
        }
        if self.waiting {
            self.budget.as_ref().map(|b| b.until_refill(now))
        } else {
            None
        }
    }
}

/// The I/O thread resumes a rate-limited device and serves what a restored
/// one finds waiting. The entropy device hands out no doorbells: its
/// notifications are rare and arrive as register writes.
impl IoPoll for VirtioPci<VirtioRng> {
    fn poll(&mut self, now: Instant) -> Option<Duration> {
        VirtioPci::poll(self, now)
    }

    fn io_label(&self) -> String {
        self.device().debug_label()
    }
}

#[cfg(test)]
mod tests;
