//! Live migration: pre-copy of guest RAM while the guest runs.
//!
//! # The stream
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..16 | [`LIVE_MAGIC`] |
//! | 16..20 | the stream's version, [`LIVE_VERSION`] |
//! | 20..24 | zero |
//! | 24..32 | the RAM's size in bytes |
//! | 32.. | RAM records, the end record, the records' CRC-64, then a state file |
//!
//! A RAM record is a RAM image offset (u64, page aligned,
//! [`GuestMemory::ram_image_offset`]) and a length (u64): a multiple of
//! the page size, at most [`MAX_RECORD`], the record inside the RAM. When
//! bit 63 of the length ([`ZERO_RECORD`]) is set, the pages are zeros and
//! no bytes follow; otherwise the bytes follow. A page may come many
//! times: the last record that holds it wins. Offset `u64::MAX` with
//! length 0 ends the records, and the CRC-64/XZ of everything from the
//! magic to the end record follows. The state file ([`super::encode`])
//! comes last, with its own header and checksum, since the devices' and
//! vCPUs' states are taken once the guest stopped.
//!
//! Over a socket the receiver answers a stream it took whole and whose
//! machine state it loaded with [`READY`]; the sender counts the downtime
//! until then.
//!
//! # The rounds
//!
//! [`LiveSender`] turns dirty logging on ([`GuestMemory::start_dirty_log`],
//! which also has a KVM VM over the memory log its RAM slots), sends every
//! page that is not all zeros, then, round after round, the pages written
//! since the round before ([`GuestMemory::take_dirty`], with KVM's log
//! merged in; after which every vCPU drops the soft-TLB entries through
//! which compiled code stores without logging:
//! [`GuestMemory::request_write_sync`]), until the
//! pages left would take less than the downtime limit at the bandwidth
//! measured. It then asks for the machine to stop ([`crate::RunControl::request`])
//! and, on the machine's thread, sends the last dirty pages and the state.
//! Under auto-converge, a round that finds more bytes dirtied than half of
//! those sent meanwhile (twice) throttles the vCPUs
//! ([`crate::RunControl::set_throttle`]) by 20 %, then 10 % more each time.
//! Where logging cannot start (a KVM that keeps no dirty log), the guest
//! stops first and all of its RAM goes in the stopped phase.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmu::{DirtyBitmap, GuestMemory, PAGE_SIZE};
use parking_lot::Mutex;

use super::{encode, io, RamStats, SnapshotError, CRC64_FAST, MAX_RECORD};
use crate::machine::{Machine, RunControl, Stopped};

/// The first bytes of a live migration stream.
pub const LIVE_MAGIC: [u8; 16] = *b"FERROVM\0MIGRATE\0";
/// The live stream's version.
pub const LIVE_VERSION: u32 = 3;
/// Bit 63 of a record's length: the pages are zeros, no bytes follow.
pub const ZERO_RECORD: u64 = 1 << 63;
/// The receiver's answer once its guest may run.
pub const READY: [u8; 8] = *b"FVMREADY";

/// A write sync waits at most this long for the vCPUs before the round's
/// pages are counted dirty again (sent once more in the next round).
const SYNC_WAIT: Duration = Duration::from_millis(200);

/// How a live migration goes (QMP `migrate-set-parameters` and
/// `migrate-set-capabilities`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// The longest the guest may stand still at the end (`downtime-limit`,
    /// QEMU's default 300 ms).
    pub downtime_limit: Duration,
    /// Bytes per second at most (`max-bandwidth`; 0: as fast as the link).
    pub max_bandwidth: u64,
    /// Throttle the vCPUs when the guest dirties faster than the link.
    pub auto_converge: bool,
    /// The first throttle and each step (QEMU's `cpu-throttle-initial`
    /// and `cpu-throttle-increment`).
    pub throttle_initial: u32,
    pub throttle_increment: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            downtime_limit: Duration::from_millis(300),
            max_bandwidth: 0,
            auto_converge: false,
            throttle_initial: 20,
            throttle_increment: 10,
        }
    }
}

/// What `query-migrate` reports, updated as the migration goes.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// "setup", "active", "completed", "failed", "cancelling", "cancelled".
    pub status: String,
    pub started: Option<Instant>,
    /// Milliseconds from the start to the end (while active, from the
    /// start to now).
    pub total_ms: u64,
    /// Milliseconds from the start until the first page went.
    pub setup_ms: u64,
    /// Milliseconds the guest stood still (at the end).
    pub downtime_ms: Option<u64>,
    /// Bytes the stream carried so far.
    pub transferred: u64,
    /// Bytes of RAM still dirty (as of the last round).
    pub remaining: u64,
    /// Guest RAM in bytes.
    pub total: u64,
    /// Pages of zeros sent as such.
    pub duplicate: u64,
    /// Pages sent with their bytes.
    pub normal: u64,
    /// Bytes of pages sent while the guest ran (the first pass and the
    /// rounds), and while it stood still (the pages dirtied since the last
    /// round, or all of RAM when the guest stopped first).
    pub precopy_bytes: u64,
    pub downtime_bytes: u64,
    /// Pages dirtied per second in the last round.
    pub dirty_pages_rate: u64,
    /// Rounds of dirty logging so far.
    pub dirty_sync_count: u64,
    /// The link's speed in the last round, in megabits per second.
    pub mbps: f64,
    /// The vCPU throttle in percent (auto-converge).
    pub throttle: u32,
    /// Whether this was a live migration (false: the guest stopped first
    /// and all of its RAM went at once, as where a hypervisor cannot log
    /// the guest's writes).
    pub live: bool,
    pub error: Option<String>,
}

/// A writer that counts and checksums what goes through it, for the RAM
/// records of a stream.
struct Records<W: Write> {
    out: W,
    digest: crc::Digest<'static, u64, crc::Table<16>>,
    bytes: u64,
}

impl<W: Write> Records<W> {
    fn put(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        self.digest.update(data);
        self.bytes += data.len() as u64;
        self.out.write_all(data).map_err(|e| io("sending the migration stream", e))
    }

    fn record(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<(), SnapshotError> {
        self.put(&offset.to_le_bytes())?;
        match data {
            Some(d) => {
                self.put(&len.to_le_bytes())?;
                self.put(d)
            }
            None => self.put(&(len | ZERO_RECORD).to_le_bytes()),
        }
    }
}

/// The sending side of a live migration. Runs on a thread of its own;
/// the machine runs meanwhile.
pub struct LiveSender<W: Write + Send + 'static> {
    mem: Arc<GuestMemory>,
    control: Arc<RunControl>,
    params: Params,
    progress: Arc<Mutex<Progress>>,
    cancel: Arc<AtomicBool>,
    records: Records<W>,
    /// Pages whose round's write sync did not finish: sent again.
    suspect: DirtyBitmap,
    buf: Vec<u8>,
    /// Bytes sent in the current period, for the link's speed.
    period_bytes: u64,
    /// Set once the guest stood still (the stopped phase).
    stopped: bool,
}

/// The result of the stopped phase: the stream's writer back, when the
/// guest stopped, and the RAM sent.
type Finish<W> = Result<(Records<W>, Instant, RamStats), SnapshotError>;

impl<W: Write + Send + 'static> LiveSender<W> {
    pub fn new(
        mem: Arc<GuestMemory>,
        control: Arc<RunControl>,
        params: Params,
        progress: Arc<Mutex<Progress>>,
        cancel: Arc<AtomicBool>,
        out: W,
    ) -> Self {
        LiveSender {
            mem,
            control,
            params,
            progress,
            cancel,
            records: Records { out, digest: CRC64_FAST.digest(), bytes: 0 },
            suspect: DirtyBitmap::default(),
            buf: vec![0u8; MAX_RECORD as usize],
            period_bytes: 0,
            stopped: false,
        }
    }

    fn cancelled(&self) -> Result<(), SnapshotError> {
        if self.cancel.load(Ordering::Acquire) {
            return Err(SnapshotError::Refused("the migration was cancelled".into()));
        }
        Ok(())
    }

    /// Takes the pages dirtied since the last round (KVM's log too), and
    /// waits for every vCPU to drop its unlogged write paths. Fails when a
    /// hypervisor's log failed: its writes could be missing.
    fn sync(&mut self) -> Result<DirtyBitmap, SnapshotError> {
        let mut dirty = self.mem.take_dirty();
        if let Some(e) = self.mem.dirty_log_error() {
            return Err(SnapshotError::Refused(format!("dirty logging failed: {e}")));
        }
        dirty.merge(&std::mem::take(&mut self.suspect));
        let n = self.mem.request_write_sync();
        let until = Instant::now() + SYNC_WAIT;
        while !self.mem.write_sync_done(n) {
            if Instant::now() >= until {
                tracing::debug!(target: "vmm", "migration: a vCPU did not answer a round in {SYNC_WAIT:?}");
                self.suspect = dirty.clone();
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(dirty)
    }

    /// Keeps to `max-bandwidth`: sleeps while the period's bytes are ahead
    /// of it.
    fn pace(&self, period: Instant) {
        if self.params.max_bandwidth == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.period_bytes as f64 / self.params.max_bandwidth as f64);
        let spent = period.elapsed();
        if due > spent {
            std::thread::sleep(due - spent);
        }
    }

    /// Sends every page of `pages` (guest addresses, in order): runs of
    /// pages that are not all zeros with their bytes, pages of zeros as
    /// zero records (or skipped, for the first pass over RAM the receiver
    /// cleared).
    fn send_pages(
        &mut self,
        pages: &mut dyn Iterator<Item = u64>,
        skip_zeros: bool,
        stats: &mut RamStats,
        period: Option<Instant>,
    ) -> Result<(), SnapshotError> {
        let mut run: Option<(u64, usize)> = None; // (first address, bytes in buf)
        let mut zeros: Option<(u64, u64)> = None;
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let mut count = 0u64;
        for addr in pages {
            count += 1;
            if count.is_multiple_of(256) {
                if period.is_some() {
                    self.cancelled()?;
                }
                if let Some(p) = period {
                    self.pace(p);
                }
            }
            self.mem.read(addr, &mut page).map_err(|e| io("reading guest RAM", e))?;
            let zero = page.iter().all(|&b| b == 0);
            // Close the open runs that `addr` does not extend.
            if let Some((start, n)) = run {
                if zero || start + n as u64 != addr || n as u64 == MAX_RECORD {
                    self.flush_run(start, n, stats)?;
                    run = None;
                }
            }
            if let Some((start, len)) = zeros {
                if !zero || start + len != addr || len == MAX_RECORD {
                    if !skip_zeros {
                        self.records.record(GuestMemory::ram_image_offset(start), len, None)?;
                    }
                    zeros = None;
                }
            }
            if zero {
                stats.zero_pages += 1;
                zeros = Some(zeros.map_or((addr, PAGE_SIZE), |(s, l)| (s, l + PAGE_SIZE)));
            } else {
                let (start, n) = run.unwrap_or((addr, 0));
                self.buf[n..n + PAGE_SIZE as usize].copy_from_slice(&page);
                run = Some((start, n + PAGE_SIZE as usize));
            }
        }
        if let Some((start, n)) = run {
            self.flush_run(start, n, stats)?;
        }
        if let (Some((start, len)), false) = (zeros, skip_zeros) {
            self.records.record(GuestMemory::ram_image_offset(start), len, None)?;
        }
        Ok(())
    }

    fn flush_run(&mut self, start: u64, n: usize, stats: &mut RamStats) -> Result<(), SnapshotError> {
        let offset = GuestMemory::ram_image_offset(start);
        let before = self.records.bytes;
        let data = std::mem::take(&mut self.buf);
        let r = self.records.record(offset, n as u64, Some(&data[..n]));
        self.buf = data;
        r?;
        stats.written += n as u64;
        self.period_bytes += self.records.bytes - before;
        let mut p = self.progress.lock();
        p.transferred = self.records.bytes;
        p.normal = stats.written / PAGE_SIZE;
        p.duplicate = stats.zero_pages;
        if !self.stopped {
            p.precopy_bytes = stats.written;
        }
        Ok(())
    }

    /// Every page of RAM, in order.
    fn all_pages(mem: &GuestMemory) -> Vec<std::ops::Range<u64>> {
        mem.ram_ranges()
    }

    /// Runs the migration: the rounds while the guest runs (when dirty
    /// logging can start; otherwise the guest stops first), then the
    /// stopped phase on the machine's thread. Returns when the stream is
    /// whole and, with `reply`, the receiver said it is ready.
    pub fn run(mut self, reply: Option<Box<dyn Read + Send>>) -> Result<(), SnapshotError> {
        let start = Instant::now();
        let total = self.mem.ram_size();
        {
            let mut p = self.progress.lock();
            p.total = total;
            p.remaining = total;
            p.live = true;
        }
        let mut header = Vec::with_capacity(32);
        header.extend_from_slice(&LIVE_MAGIC);
        header.extend_from_slice(&LIVE_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&total.to_le_bytes());
        self.records.put(&header)?;
        let mut stats = RamStats { total, ..Default::default() };
        let mut sent_all = false;
        let live = match self.mem.start_dirty_log() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(target: "vmm", "migration: {e}; the guest stops first and all of its RAM goes at once");
                self.progress.lock().live = false;
                false
            }
        };
        if live {
            // Write paths made before logging began go first.
            if let Err(e) = self.sync() {
                self.mem.stop_dirty_log();
                return Err(e);
            }
            self.progress.lock().dirty_sync_count += 1;
            {
                let mut p = self.progress.lock();
                p.setup_ms = start.elapsed().as_millis() as u64;
                p.status = "active".into();
            }
            let r = self.precopy(&mut stats);
            if let Err(e) = r {
                self.mem.stop_dirty_log();
                self.control.set_throttle(0);
                return Err(e);
            }
            sent_all = true;
        } else {
            let mut p = self.progress.lock();
            p.setup_ms = start.elapsed().as_millis() as u64;
            p.status = "active".into();
        }
        let precopy_bytes = stats.written;
        // The stopped phase, on the machine's thread.
        let (mem, control, progress) = (self.mem.clone(), self.control.clone(), self.progress.clone());
        let (tx, rx) = std::sync::mpsc::channel::<Finish<W>>();
        let mut me = self;
        let op = Box::new(move |m: &mut Machine, s: &mut Stopped| {
            let stopped_at = Instant::now();
            let r = me.finish(m, s, sent_all, &mut stats);
            if r.is_ok() {
                // The guest must not run on here once the receiver may
                // run it; a failure later resumes it.
                m.control().set_pause(true);
                s.paused = true;
            }
            let _ = tx.send(r.map(|()| (me.records, stopped_at, stats)));
        });
        let finished = match control.request(op) {
            Ok(()) => rx.recv().unwrap_or_else(|_| {
                Err(SnapshotError::Refused("the machine stopped running before the migration ended".into()))
            }),
            Err(e) => Err(SnapshotError::Refused(e)),
        };
        mem.stop_dirty_log();
        control.set_throttle(0);
        let (mut records, stopped_at, stats) = finished?;
        if let Some(mut r) = reply {
            let mut answer = [0u8; 8];
            match r.read_exact(&mut answer) {
                Ok(()) if answer == READY => {}
                Ok(()) => return Err(SnapshotError::Corrupt("the receiver did not answer that it is ready".into())),
                Err(e) => return Err(io("the receiver did not take the migration", e)),
            }
        }
        let downtime = stopped_at.elapsed();
        let _ = records.out.flush();
        let mut p = progress.lock();
        p.downtime_ms = Some(downtime.as_millis() as u64);
        p.transferred = records.bytes;
        p.remaining = 0;
        p.normal = stats.written / PAGE_SIZE;
        p.duplicate = stats.zero_pages;
        p.downtime_bytes = stats.written - precopy_bytes;
        p.total_ms = start.elapsed().as_millis() as u64;
        Ok(())
    }

    /// The stopped phase: the last dirty pages (all of RAM when the
    /// rounds did not run), the end of the records and their checksum,
    /// then the machine's state.
    fn finish(&mut self, m: &Machine, s: &Stopped, sent_all: bool, stats: &mut RamStats) -> Result<(), SnapshotError> {
        self.stopped = true;
        if sent_all {
            // Every engine is gone (a KVM VM handed its log over as it
            // went): no write path is left unlogged.
            let mut dirty = self.mem.take_dirty();
            let failed = self.mem.dirty_log_error();
            dirty.merge(&std::mem::take(&mut self.suspect));
            self.mem.stop_dirty_log();
            if let Some(e) = failed {
                return Err(SnapshotError::Refused(format!("dirty logging failed: {e}")));
            }
            self.send_pages(&mut dirty.pages(), false, stats, None)?;
        } else {
            let ranges = Self::all_pages(&self.mem);
            let mut pages = ranges.into_iter().flat_map(|r| (r.start..r.end).step_by(PAGE_SIZE as usize));
            self.send_pages(&mut pages, true, stats, None)?;
        }
        self.records.put(&u64::MAX.to_le_bytes())?;
        self.records.put(&0u64.to_le_bytes())?;
        let crc = self.records.digest.clone().finalize();
        let state = encode(&m.capture(s)?)?;
        let fail = |e: std::io::Error| io("sending the migration stream", e);
        self.records.out.write_all(&crc.to_le_bytes()).map_err(fail)?;
        self.records.out.write_all(&state).map_err(fail)?;
        self.records.bytes += 8 + state.len() as u64;
        self.records.out.flush().map_err(fail)
    }

    /// The rounds while the guest runs.
    fn precopy(&mut self, stats: &mut RamStats) -> Result<(), SnapshotError> {
        // The first pass: all of RAM.
        let mut period = Instant::now();
        self.period_bytes = 0;
        let ranges = Self::all_pages(&self.mem);
        let mut pages = ranges.into_iter().flat_map(|r| (r.start..r.end).step_by(PAGE_SIZE as usize));
        self.send_pages(&mut pages, true, stats, Some(period))?;
        let mut high_dirty = 0;
        loop {
            self.cancelled()?;
            let elapsed = period.elapsed().as_secs_f64().max(1e-6);
            let bandwidth = self.period_bytes as f64 / elapsed; // bytes per second
            let dirty = self.sync()?;
            let dirty_bytes = dirty.count() * PAGE_SIZE;
            {
                let mut p = self.progress.lock();
                p.dirty_sync_count += 1;
                p.remaining = dirty_bytes;
                p.dirty_pages_rate = (dirty.count() as f64 / elapsed) as u64;
                p.mbps = bandwidth * 8.0 / 1e6;
            }
            let limit = self.params.downtime_limit.as_secs_f64();
            if bandwidth > 0.0 && dirty_bytes as f64 / bandwidth <= limit || dirty_bytes == 0 {
                // Put back what this round took: the stopped phase sends it.
                self.suspect.merge(&dirty);
                return Ok(());
            }
            if self.params.auto_converge && dirty_bytes * 2 > self.period_bytes {
                high_dirty += 1;
                if high_dirty >= 2 {
                    high_dirty = 0;
                    let now = self.control.throttle();
                    let next =
                        if now == 0 { self.params.throttle_initial } else { now + self.params.throttle_increment };
                    let next = next.min(99);
                    self.control.set_throttle(next);
                    self.progress.lock().throttle = next;
                }
            }
            period = Instant::now();
            self.period_bytes = 0;
            self.send_pages(&mut dirty.pages(), false, stats, Some(period))?;
        }
    }
}

/// The sending end of a migration: the stream, and where the receiver's
/// answer comes from (sockets) or the command to wait for (`exec:`).
pub struct Outgoing {
    pub writer: Box<dyn Write + Send>,
    pub reply: Option<Box<dyn Read + Send>>,
    pub child: Option<std::process::Child>,
}

/// Opens the sending end of `uri`: runs an `exec:` command with the
/// stream on its stdin, connects to `unix:` and `tcp:`.
pub fn connect(uri: &super::MigrationUri) -> Result<Outgoing, SnapshotError> {
    use super::MigrationUri;
    const BUF: usize = 1 << 20;
    match uri {
        MigrationUri::Exec(cmd) => {
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| io(format!("exec:{cmd}"), e))?;
            let stdin = child.stdin.take().ok_or_else(|| SnapshotError::Io(format!("exec:{cmd}: no stdin")))?;
            Ok(Outgoing {
                writer: Box::new(std::io::BufWriter::with_capacity(BUF, stdin)),
                reply: None,
                child: Some(child),
            })
        }
        MigrationUri::Unix(path) => {
            let what = || format!("unix:{}", path.display());
            let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| io(what(), e))?;
            let r = s.try_clone().map_err(|e| io(what(), e))?;
            Ok(Outgoing {
                writer: Box::new(std::io::BufWriter::with_capacity(BUF, s)),
                reply: Some(Box::new(r)),
                child: None,
            })
        }
        MigrationUri::Tcp(addr) => {
            let s = std::net::TcpStream::connect(addr).map_err(|e| io(format!("tcp:{addr}"), e))?;
            let _ = s.set_nodelay(true);
            let r = s.try_clone().map_err(|e| io(format!("tcp:{addr}"), e))?;
            Ok(Outgoing {
                writer: Box::new(std::io::BufWriter::with_capacity(BUF, s)),
                reply: Some(Box::new(r)),
                child: None,
            })
        }
    }
}
