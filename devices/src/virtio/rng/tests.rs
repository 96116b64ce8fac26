use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use super::*;
use crate::irq::RecordingIrq;
use crate::pci::config::PCI_COMMAND;
use crate::pci::PciDevice;
use crate::virtio::pci::MODERN_BAR;
use crate::virtio::queue::testing::DriverRing;
use crate::virtio::queue::{Queue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

/// How a [`Counting`] source answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Every byte asked for.
    Full,
    /// Half of them.
    Half,
    /// An error.
    Fail,
}

/// What a [`Counting`] source was asked for.
#[derive(Default)]
struct Asked {
    /// The length of each call's buffer.
    lens: Vec<usize>,
}

/// A source giving 0, 1, 2, ... (wrapping) across its calls.
struct Counting {
    next: u8,
    mode: Mode,
    asked: Arc<Mutex<Asked>>,
}

impl EntropySource for Counting {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.asked.lock().lens.push(buf.len());
        let n = match self.mode {
            Mode::Full => buf.len(),
            Mode::Half => buf.len() / 2,
            Mode::Fail => return Err(io::Error::other("the test source fails")),
        };
        for b in &mut buf[..n] {
            *b = self.next;
            self.next = self.next.wrapping_add(1);
        }
        Ok(n)
    }
}

/// The bytes a fresh [`Counting`] source gives first.
fn counting(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

/// Where the tests put their buffers.
const BUF: u64 = 0x40000;
/// A byte no source gives at the start: marks memory the device must not write.
const UNTOUCHED: u8 = 0xee;

struct Rig {
    dev: VirtioRngPci,
    mem: Arc<GuestMemory>,
    ring: DriverRing,
    asked: Arc<Mutex<Asked>>,
}

fn w(dev: &mut VirtioRngPci, off: u64, v: u64, len: usize) {
    dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
}

fn rig() -> Rig {
    rig_with(Mode::Full, None, true)
}

/// A device over a [`Counting`] source answering as `mode`, limited by
/// `limit`, brought up with every feature it offers and its queue of 16
/// entries at 0x10000; DRIVER_OK is set when `start`.
fn rig_with(mode: Mode, limit: Option<RateLimit>, start: bool) -> Rig {
    let asked = Arc::new(Mutex::new(Asked::default()));
    let source = Counting { next: 0, mode, asked: asked.clone() };
    let mut rig = rig_over(Box::new(source), limit, start);
    rig.asked = asked;
    rig
}

/// A device over `source`, brought up as [`rig_with`] does.
fn rig_over(source: Box<dyn EntropySource>, limit: Option<RateLimit>, start: bool) -> Rig {
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    mem.fill(BUF, 0x20000, UNTOUCHED).unwrap();
    let mut rng = VirtioRng::new(source, IoKick::none());
    if let Some(l) = limit {
        rng = rng.with_rate_limit(l).unwrap();
    }
    let mut dev = VirtioPci::new(rng, mem.clone(), Arc::new(RecordingIrq::new()));
    dev.write_config(PCI_COMMAND, &[0x06, 0]);
    let ring = set_up(&mut dev, &mem);
    let mut rig = Rig { dev, mem, ring, asked: Arc::default() };
    if start {
        rig.driver_ok();
    }
    rig
}

/// Negotiates every feature `dev` offers and enables its queue of 16
/// entries at 0x10000, up to FEATURES_OK.
fn set_up(dev: &mut VirtioRngPci, mem: &GuestMemory) -> DriverRing {
    let features = dev.device().features();
    crate::virtio::pci::testing::negotiate(dev, features);
    crate::virtio::pci::testing::enable_queue(dev, mem, 0, 0x10000)
}

impl Rig {
    fn driver_ok(&mut self) {
        let all = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(&mut self.dev, 0x14, u64::from(all), 1);
    }

    fn notify(&mut self) {
        w(&mut self.dev, 0x3000, 0, 2);
    }

    /// Posts a chain of (addr, len, writable) buffers, notifies, and
    /// returns the used elements that came back.
    fn send(&mut self, bufs: &[(u64, u32, bool)]) -> Vec<(u32, u32)> {
        self.ring.add_chain(&self.mem, bufs);
        self.notify();
        self.ring.take_used(&self.mem)
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(addr, &mut v).unwrap();
        v
    }

    fn asked(&self) -> Vec<usize> {
        self.asked.lock().lens.clone()
    }
}

#[test]
fn identity_features_and_no_configuration() {
    let r = rig();
    // Red Hat's vendor ID, the entropy device's transitional ID, the
    // device type in the subsystem ID, and class "other" (ffh), as QEMU's
    // virtio-rng-pci.
    assert_eq!(r.dev.config().read_dword(0), 0x1005_1af4, "transitional device ID 1005h");
    assert_eq!(r.dev.config().read_dword(11), 0x0004_1af4);
    assert_eq!(r.dev.config().read_dword(2) >> 8, 0xff_00_00);
    let d = r.dev.device();
    assert_eq!((d.device_type(), d.queue_max_sizes(), d.config_len()), (4, vec![QUEUE_SIZE], 0));
    let ring = VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC;
    assert_eq!(r.dev.driver_features(), ring, "the driver accepted every transport feature offered");
    let mut c = [0xffu8; 4];
    d.read_config(0, &mut c);
    assert_eq!(c, [0; 4]);
    assert!(d.debug_label().starts_with("virtio-rng"));
}

#[test]
fn fills_a_posted_buffer_with_source_bytes() {
    let mut r = rig();
    assert_eq!(r.send(&[(BUF, 16, true)]), vec![(0, 16)]);
    assert_eq!(r.bytes(BUF, 17), [counting(16), vec![UNTOUCHED]].concat(), "16 bytes, none past the buffer");
    assert_eq!(r.asked(), vec![16]);
    // The next request gets the source's next bytes.
    assert_eq!(r.send(&[(BUF + 0x100, 4, true)]), vec![(1, 4)]);
    assert_eq!(r.bytes(BUF + 0x100, 4), [16, 17, 18, 19]);
    // EVENT_IDX: the driver is asked to notify for the next chain.
    let avail_event = r.ring.used + 4 + 8 * u64::from(r.ring.size);
    assert_eq!(r.mem.read_u16(avail_event).unwrap(), 2);
    assert_eq!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn fills_every_writable_descriptor_of_a_chain() {
    let mut r = rig();
    // A readable buffer (which the driver must not send) is left alone.
    r.mem.fill(BUF + 0x1000, 8, 0xaa).unwrap();
    let used = r.send(&[(BUF, 3, true), (BUF + 0x1000, 8, false), (BUF + 0x200, 5, true), (BUF + 0x300, 8, true)]);
    assert_eq!(used, vec![(0, 16)]);
    let want = counting(16);
    assert_eq!(r.bytes(BUF, 4), [&want[0..3], &[UNTOUCHED]].concat());
    assert_eq!(r.bytes(BUF + 0x200, 6), [&want[3..8], &[UNTOUCHED]].concat());
    assert_eq!(r.bytes(BUF + 0x300, 9), [&want[8..16], &[UNTOUCHED]].concat());
    assert_eq!(r.bytes(BUF + 0x1000, 8), [0xaa; 8]);
    // Two writable buffers in an indirect table.
    let table = BUF + 0x2000;
    let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        r.mem.write_u64(table + 16 * i, addr).unwrap();
        r.mem.write_u32(table + 16 * i + 8, len).unwrap();
        r.mem.write_u16(table + 16 * i + 12, flags).unwrap();
        r.mem.write_u16(table + 16 * i + 14, next).unwrap();
    };
    desc(0, BUF + 0x400, 2, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    desc(1, BUF + 0x500, 2, VIRTQ_DESC_F_WRITE, 0);
    r.ring.write_desc(&r.mem, 8, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
    r.ring.publish(&r.mem, 8);
    r.notify();
    assert_eq!(r.ring.take_used(&r.mem), vec![(8, 4)]);
    assert_eq!((r.bytes(BUF + 0x400, 3), r.bytes(BUF + 0x500, 3)), (vec![16, 17, UNTOUCHED], vec![18, 19, UNTOUCHED]));
}

#[test]
fn a_chain_without_a_writable_buffer_gets_length_zero() {
    let mut r = rig();
    r.mem.fill(BUF, 64, 0x55).unwrap();
    assert_eq!(r.send(&[(BUF, 64, false)]), vec![(0, 0)]);
    assert_eq!(r.bytes(BUF, 64), [0x55; 64], "nothing was written");
    assert!(r.asked().is_empty(), "the source was not read");
    // A writable buffer of no bytes is no better.
    assert_eq!(r.send(&[(BUF + 0x100, 0, true)]), vec![(1, 0)]);
    assert!(r.asked().is_empty());
    assert_eq!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0, "answered, not fatal");
}

#[test]
fn an_oversized_buffer_is_capped() {
    let mut r = rig();
    let big: u32 = 1 << 20;
    let at = 0x100000;
    r.mem.fill(at, u64::from(big), UNTOUCHED).unwrap();
    assert_eq!(r.send(&[(at, big, true)]), vec![(0, MAX_REQUEST as u32)]);
    assert_eq!(r.asked(), vec![MAX_REQUEST], "the host read no more than the cap");
    assert_eq!(r.bytes(at, MAX_REQUEST), counting(MAX_REQUEST));
    assert!(r.bytes(at + MAX_REQUEST as u64, 4096).iter().all(|&b| b == UNTOUCHED));
    // Across several buffers the cap holds for the chain: two of 32 KiB
    // are filled, the third gets nothing.
    let bufs: Vec<_> = (0..3).map(|i| (at + 0x40000 + i * 0x10000, 0x8000, true)).collect();
    assert_eq!(r.send(&bufs), vec![(1, MAX_REQUEST as u32)]);
    assert_eq!(r.asked(), vec![MAX_REQUEST, MAX_REQUEST]);
    assert_eq!(r.bytes(at + 0x50000 + 0x7fff, 1), [counting(MAX_REQUEST)[MAX_REQUEST - 1]]);
    assert!(r.bytes(at + 0x60000, 0x8000).iter().all(|&b| b == UNTOUCHED));
}

#[test]
fn the_queue_is_untouched_before_driver_ok() {
    let mut r = rig_with(Mode::Full, None, false);
    r.ring.add_chain(&r.mem, &[(BUF, 16, true)]);
    r.notify();
    assert_eq!(r.dev.poll(Instant::now()), None);
    assert!(r.ring.take_used(&r.mem).is_empty());
    assert!(r.asked().is_empty());
    assert_eq!(r.bytes(BUF, 16), [UNTOUCHED; 16]);
    // DRIVER_OK serves what was made available before it.
    r.driver_ok();
    assert_eq!(r.ring.take_used(&r.mem), vec![(0, 16)]);

    // The device's own check, whatever its transport does: a context that
    // is not running, through notify and through the poll after a restore.
    let mem = GuestMemory::new(1 << 20).unwrap();
    let mut ring = DriverRing::new(&mem, 0x10000, 16);
    let mut queues = vec![Queue::new(QUEUE_SIZE)];
    ring.attach(&mut queues[0]);
    ring.add_chain(&mem, &[(BUF, 16, true)]);
    let asked = Arc::new(Mutex::new(Asked::default()));
    let source = Counting { next: 0, mode: Mode::Full, asked: asked.clone() };
    let mut rng = VirtioRng::new(Box::new(source), IoKick::none());
    let (mut isr, mut events, mut needs_reset) = (0, 0, false);
    let mut ctx = Context {
        mem: &mem,
        queues: &mut queues,
        features: 0,
        running: false,
        isr: &mut isr,
        events: &mut events,
        needs_reset: &mut needs_reset,
    };
    rng.notify(0, &mut ctx);
    rng.restore(&VirtioRngState {}).unwrap();
    assert_eq!(rng.poll(&mut ctx, Instant::now()), None);
    assert!(ring.take_used(&mem).is_empty());
    assert!(asked.lock().lens.is_empty());
    ctx.running = true;
    rng.notify(0, &mut ctx);
    assert_eq!(ring.take_used(&mem), vec![(0, 16)]);
}

#[test]
fn a_failing_or_short_source_completes_with_what_it_gave() {
    let mut r = rig_with(Mode::Fail, None, true);
    assert_eq!(r.send(&[(BUF, 16, true)]), vec![(0, 0)]);
    assert_eq!(r.send(&[(BUF, 16, true)]), vec![(1, 0)], "and again");
    assert_eq!(r.bytes(BUF, 16), [UNTOUCHED; 16]);
    assert_eq!(r.asked(), vec![16, 16]);
    assert_eq!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    let mut r = rig_with(Mode::Half, None, true);
    assert_eq!(r.send(&[(BUF, 16, true)]), vec![(0, 8)]);
    assert_eq!(r.bytes(BUF, 9), [counting(8), vec![UNTOUCHED]].concat());
}

#[test]
fn the_rate_limit_delivers_max_bytes_per_period_and_resumes_in_poll() {
    let period = Duration::from_secs(60);
    let mut r = rig_with(Mode::Full, Some(RateLimit { max_bytes: 100, period }), true);
    let before = Instant::now();
    for i in 0..3 {
        r.ring.add_chain(&r.mem, &[(BUF + i * 0x100, 64, true)]);
    }
    r.notify();
    let after = Instant::now();
    // 64 bytes, then the 36 left of the budget; the third chain waits.
    assert_eq!(r.ring.take_used(&r.mem), vec![(0, 64), (1, 36)]);
    assert_eq!(r.bytes(BUF + 0x100, 37), [(64..100).collect(), vec![UNTOUCHED]].concat());
    // Another notification within the period changes nothing.
    r.notify();
    assert!(r.ring.take_used(&r.mem).is_empty());
    // Polls before the period ends say when it does.
    let wait = r.dev.poll(after).expect("the device waits for the next period");
    assert!(wait <= period && wait >= period - (after - before), "{wait:?}");
    assert_eq!(r.dev.poll(after + period / 2).map(|d| d <= period / 2), Some(true));
    assert!(r.ring.take_used(&r.mem).is_empty());
    assert_eq!(r.asked(), vec![64, 36]);
    // At the next period the waiting chain is served, and nothing more waits.
    let next = after + period;
    assert_eq!(r.dev.poll(next), None);
    assert_eq!(r.ring.take_used(&r.mem), vec![(2, 64)]);
    assert_eq!(r.bytes(BUF + 0x200, 64), (100..164).collect::<Vec<u8>>());
    // That period (from `next`, later than the clock now) has 36 bytes left.
    assert_eq!(r.send(&[(BUF + 0x300, 64, true)]), vec![(3, 36)]);
    assert_eq!(r.send(&[(BUF + 0x400, 64, true)]), vec![]);
}

#[test]
fn a_reset_forgets_the_waiting_queue_but_not_the_spent_budget() {
    let period = Duration::from_secs(60);
    let mut r = rig_with(Mode::Full, Some(RateLimit { max_bytes: 16, period }), true);
    assert_eq!(r.send(&[(BUF, 16, true)]), vec![(0, 16)]);
    assert_eq!(r.send(&[(BUF, 16, true)]), vec![]);
    let after = Instant::now();
    assert!(r.dev.poll(after).is_some(), "waiting");
    w(&mut r.dev, 0x14, 0, 1);
    assert_eq!(r.dev.poll(after), None, "a reset device waits for nothing");
    // Set up again: the period's budget is still spent.
    r.ring = set_up(&mut r.dev, &r.mem);
    r.driver_ok();
    assert_eq!(r.send(&[(BUF, 16, true)]), vec![], "the reset got the guest no bytes");
    assert_eq!(r.dev.poll(after + period), None);
    assert_eq!(r.ring.take_used(&r.mem), vec![(0, 16)]);
    assert_eq!(r.asked(), vec![16, 16]);
}

#[test]
fn rate_limits_out_of_range_are_refused() {
    let ok = RateLimit { max_bytes: 1024, period: Duration::from_secs(1) };
    ok.check().unwrap();
    RateLimit { period: RateLimit::MIN_PERIOD, ..ok }.check().unwrap();
    RateLimit { period: RateLimit::MAX_PERIOD, ..ok }.check().unwrap();
    for bad in [
        RateLimit { max_bytes: 0, ..ok },
        RateLimit { period: Duration::ZERO, ..ok },
        RateLimit { period: Duration::from_micros(999), ..ok },
        RateLimit { period: RateLimit::MAX_PERIOD + Duration::from_millis(1), ..ok },
    ] {
        let e = bad.check().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
        let dev =
            VirtioRng::new(Box::new(Counting { next: 0, mode: Mode::Full, asked: Arc::default() }), IoKick::none());
        assert!(dev.with_rate_limit(bad).is_err(), "{bad:?}");
    }
    let dev = VirtioRng::new(Box::new(Counting { next: 0, mode: Mode::Full, asked: Arc::default() }), IoKick::none());
    assert_eq!(dev.with_rate_limit(ok).unwrap().rate_limit(), Some(ok));
}

#[test]
fn broken_rings_need_a_reset() {
    // A head past the descriptor table.
    let mut r = rig();
    r.ring.publish(&r.mem, 200);
    r.notify();
    assert_ne!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(r.asked().is_empty());
    // A buffer outside guest RAM.
    let mut r = rig();
    r.ring.add_chain(&r.mem, &[(0xffff_ffff_f000, 16, true)]);
    r.notify();
    assert_ne!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(r.asked().is_empty());
    // The broken queue is not touched again.
    r.ring.add_chain(&r.mem, &[(BUF, 16, true)]);
    r.notify();
    assert!(r.ring.take_used(&r.mem).is_empty());
}

#[test]
fn file_source_reads_dev_urandom() {
    let mut src = FileSource::open(DEFAULT_SOURCE).unwrap();
    assert_eq!(src.path(), Path::new("/dev/urandom"));
    let mut buf = [0u8; 4096];
    assert_eq!(src.fill(&mut buf).unwrap(), buf.len());
    assert!(buf.iter().any(|&b| b != 0));
    // Through the device.
    let mut r = rig_over(Box::new(src), None, true);
    assert!(r.dev.device().debug_label().contains("/dev/urandom"));
    assert_eq!(r.send(&[(BUF, 256, true)]), vec![(0, 256)]);
    assert!(r.bytes(BUF, 256).iter().any(|&b| b != UNTOUCHED));
    assert_eq!(r.mem.read_u8(BUF + 256).unwrap(), UNTOUCHED);
}

#[test]
fn a_file_that_ends_gives_its_bytes_then_nothing() {
    let path = std::env::temp_dir().join(format!("ferrovm-rng-test-{}", std::process::id()));
    std::fs::write(&path, [7u8; 10]).unwrap();
    let src = FileSource::open(&path);
    std::fs::remove_file(&path).unwrap();
    let mut r = rig_over(Box::new(src.unwrap()), None, true);
    assert_eq!(r.send(&[(BUF, 64, true)]), vec![(0, 10)]);
    assert_eq!(r.bytes(BUF, 11), [vec![7; 10], vec![UNTOUCHED]].concat());
    assert_eq!(r.send(&[(BUF + 0x100, 64, true)]), vec![(1, 0)]);
}

#[test]
fn opening_a_missing_path_names_it() {
    let path = "/nonexistent/ferrovm-entropy";
    let e = FileSource::open(path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains(path), "{e}");
    let e = FileSource::open("/").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("/: it is a directory"), "{e}");
}

#[test]
fn a_restored_device_serves_what_waited_in_the_ring() {
    let period = Duration::from_secs(60);
    let mut r = rig_with(Mode::Full, Some(RateLimit { max_bytes: 8, period }), true);
    assert_eq!(r.send(&[(BUF, 8, true)]), vec![(0, 8)]);
    assert_eq!(r.send(&[(BUF + 0x100, 8, true)]), vec![], "waits for the next period");
    // A device without a limit takes the state and serves the chain at its
    // first poll, in the next used slot.
    let asked = Arc::new(Mutex::new(Asked::default()));
    let source = Counting { next: 0, mode: Mode::Full, asked: asked.clone() };
    let rng = VirtioRng::new(Box::new(source), IoKick::none());
    let mut other = VirtioPci::new(rng, r.mem.clone(), Arc::new(RecordingIrq::new()));
    let s = persist::assert_round_trip(&r.dev, &mut other);
    assert_eq!(s.device, VirtioRngState {});
    assert!(r.ring.take_used(&r.mem).is_empty());
    assert_eq!(other.poll(Instant::now()), None);
    assert_eq!(r.ring.take_used(&r.mem), vec![(1, 8)]);
    assert_eq!(asked.lock().lens, vec![8]);
    assert_eq!(other.poll(Instant::now()), None, "once");
    assert_eq!(asked.lock().lens, vec![8]);
}

#[test]
fn corrupt_states_are_refused_by_the_transport() {
    // The device's own state holds nothing to check; the transport's is
    // checked before the device sees it.
    let mut r = rig();
    let good = r.dev.save();
    let mut bad = good.clone();
    bad.driver_features |= 1 << 0;
    let e = persist::assert_refused(&mut r.dev, &bad);
    assert_eq!((e.part, e.field), ("virtio PCI function", "driver_features"));
    let mut bad = good.clone();
    bad.queues[0].size = 3;
    let e = persist::assert_refused(&mut r.dev, &bad);
    assert_eq!((e.part, e.field), ("virtio queue", "size"));
    assert_eq!(r.send(&[(BUF, 4, true)]), vec![(0, 4)], "the device still works");
}
