//! Fuzzing the NIC models as a hostile guest drives them: arbitrary bytes
//! become register accesses, bytes written anywhere in guest memory (rings,
//! descriptors, buffers), frames arriving from the network and polls.
//! [`crate::nic::e1000::fuzz_rings`] and [`crate::virtio::net::fuzz_rings`] bring
//! their device up as a driver would (so the input starts with working
//! rings) and hand the rest of the input to `drive`.
//!
//! The IDE controller has its own drivers, which speak its port protocol
//! ([`crate::ide::fuzz_atapi_packets`] for the ATAPI packet parser,
//! [`crate::ide::fuzz_prd_tables`] for the bus master's PRD walker) and use
//! `Input` and `assert_restorable` from here.
//!
//! The cargo-fuzz targets in `fuzz/` call those functions; so do unit
//! tests, over pseudo-random inputs ([`pseudo_random_inputs`]). After the
//! input, each entry point saves the device and restores the state into it
//! (`assert_restorable`): whatever state a guest can drive a device into,
//! a saved copy of it must restore.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmu::GuestMemory;
use parking_lot::Mutex;

/// Guest RAM of a fuzzed device. Rings and buffers the input names are
/// taken modulo a little more than this, so some land outside RAM.
pub(crate) const FUZZ_RAM: u64 = 1 << 20;
/// Operations per input at most.
const MAX_OPS: usize = 512;
/// The largest frame the fuzzed network delivers.
const MAX_FRAME: usize = 9000;
/// Frames waiting in the fuzzed network at most.
const MAX_QUEUED: usize = 64;

/// A disk image in memory for the fuzz drivers; an access past its end
/// is a bug of the model under test and panics, naming `model`.
pub(crate) struct FuzzImage {
    data: Vec<u8>,
    read_only: bool,
    model: &'static str,
}

impl FuzzImage {
    /// An image of `len` bytes of `fill`.
    pub(crate) fn boxed(
        model: &'static str,
        len: usize,
        fill: u8,
        read_only: bool,
    ) -> Box<dyn crate::block::BlockBackend> {
        Box::new(FuzzImage { data: vec![fill; len], read_only, model })
    }

    fn range(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.data.len() as u64);
        assert!(end.is_some(), "the {} model accessed {len} bytes at {offset:#x}, past the image", self.model);
        offset as usize..offset as usize + len
    }
}

impl crate::block::BlockBackend for FuzzImage {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let r = self.range(offset, buf.len());
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        assert!(!self.read_only, "the {} model wrote a read-only image", self.model);
        let r = self.range(offset, buf.len());
        self.data[r].copy_from_slice(buf);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> std::io::Result<()> {
        let r = self.range(offset, len as usize);
        self.data[r].fill(0);
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Frames the fuzzed network holds for the guest.
pub(crate) type Inbox = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// Where a fuzzed device's MSI-X messages go: decoded and dropped.
#[derive(Debug)]
pub(crate) struct FuzzMsi;

impl crate::intc::msi::MsiSink for FuzzMsi {
    fn send(&self, msg: crate::intc::msi::MsiMessage) {
        let _ = msg.interrupt();
    }
}

/// A backend that delivers what the input queues and swallows what the
/// device sends (checking only that each frame has a sane length).
pub(crate) struct FuzzBackend {
    inbox: Inbox,
}

impl FuzzBackend {
    /// The backend, and the queue to push frames for the guest into.
    pub(crate) fn with_inbox() -> (Box<dyn net::NetBackend>, Inbox) {
        let inbox = Inbox::default();
        (Box::new(FuzzBackend { inbox: inbox.clone() }), inbox)
    }
}

impl net::NetBackend for FuzzBackend {
    fn send(&mut self, frame: &[u8]) {
        assert!(frame.len() <= 65536 + 1024, "a device sent a {}-byte frame", frame.len());
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let f = self.inbox.lock().pop_front()?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Some(n)
    }
    fn peek_len(&self) -> Option<usize> {
        self.inbox.lock().front().map(Vec::len)
    }
    fn poll(&mut self, _now: Instant) -> Option<Duration> {
        None
    }
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn debug_label(&self) -> &str {
        "fuzz"
    }
}

/// A device as the fuzz driver sees it.
pub(crate) trait FuzzDevice {
    /// BAR numbers and sizes the driver may access.
    fn bars(&self) -> &'static [(usize, u64)];
    /// Registers (BAR, offset) worth hitting more often than chance would.
    fn hot_regs(&self) -> &'static [(usize, u64)];
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// A write to PCI configuration space.
    fn config_write(&mut self, offset: usize, data: &[u8]);
    fn poll(&mut self, now: Instant);
}

/// Reads the input front to back; past its end every read is zero.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        let (first, rest) = self.data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.data = rest;
        first
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// Runs the operations `input` encodes against `dev`. Each starts with a
/// selector byte:
///
/// | selector % 8 | operation | operands |
/// | --- | --- | --- |
/// | 0, 1 | write a BAR register | BAR index (high bit: a hot register instead), offset (u16), value (u32), size |
/// | 2 | read a BAR register | BAR index, offset (u16), size |
/// | 3 | write guest memory | address (u32), length (u8), bytes |
/// | 4 | write a descriptor-sized word near `hot` | index, value (u64) |
/// | 5 | a frame from the network | length (u16), fill byte, bytes |
/// | 6 | write PCI configuration | offset (u8), value (u16) |
/// | 7 | poll | - |
///
/// `hot` are the guest addresses the device's rings were set up at, so
/// that small inputs hit the rings instead of empty memory.
pub(crate) fn drive(dev: &mut dyn FuzzDevice, mem: &GuestMemory, inbox: &Inbox, hot: &[u64], mut input: Input<'_>) {
    let now = Instant::now();
    let bars = dev.bars();
    for step in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        let size = |b: u8| [1usize, 2, 4, 4][usize::from(b & 3)];
        match sel % 8 {
            0 | 1 => {
                let which = input.u8();
                let (bar, bar_len) = bars[usize::from(which) % bars.len()];
                let mut offset = u64::from(input.u16()) % bar_len;
                let hot_regs = dev.hot_regs();
                let bar = if which & 0x80 != 0 && !hot_regs.is_empty() {
                    let (b, o) = hot_regs[usize::from(offset as u8) % hot_regs.len()];
                    offset = o;
                    b
                } else {
                    bar
                };
                let value = input.u32();
                let len = size(input.u8());
                dev.bar_write(bar, offset, &value.to_le_bytes()[..len]);
            }
            2 => {
                let (bar, bar_len) = bars[usize::from(input.u8()) % bars.len()];
                let offset = u64::from(input.u16()) % bar_len;
                let mut b = [0u8; 4];
                let len = size(input.u8());
                dev.bar_read(bar, offset, &mut b[..len]);
            }
            3 => {
                let addr = u64::from(input.u32()) % (FUZZ_RAM + 0x1000);
                let len = usize::from(input.u8());
                let _ = mem.write(addr, input.bytes(len));
            }
            4 => {
                let base = hot.get(usize::from(sel >> 3) % hot.len().max(1)).copied().unwrap_or(0);
                let at = base + 8 * u64::from(input.u8() % 64);
                let value = u64::from(input.u32()) | u64::from(input.u32()) << 32;
                let _ = mem.write(at, &value.to_le_bytes());
            }
            5 => {
                let len = usize::from(input.u16()) % MAX_FRAME;
                let fill = input.u8();
                let mut frame = input.bytes(len.min(64)).to_vec();
                frame.resize(len, fill);
                let mut q = inbox.lock();
                if q.len() < MAX_QUEUED {
                    q.push_back(frame);
                }
            }
            6 => {
                let offset = usize::from(input.u8());
                let value = input.u16();
                dev.config_write(offset, &value.to_le_bytes());
            }
            _ => dev.poll(now + Duration::from_micros(step as u64 * 50)),
        }
    }
    dev.poll(now + Duration::from_secs(1));
}

/// Saves `dev` and restores the state into it: a state the guest reached
/// must pass every check of the restore, and come back whole.
///
/// # Panics
/// When the restore refuses the state or changes it.
pub(crate) fn assert_restorable<T: persist::Persist>(dev: &mut T) {
    let state = dev.save();
    if let Err(e) = dev.restore(&state) {
        panic!("a state the guest reached cannot be restored: {e}");
    }
    assert_eq!(dev.save(), state, "a restored device saves another state");
}

/// `count` pseudo-random inputs (xorshift from `seed`) of up to `max_len`
/// bytes for the unit tests that run the fuzz entry points; some are
/// mutations of `seeds`.
pub fn pseudo_random_inputs(seed: u64, count: usize, max_len: usize, seeds: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|i| {
            let mut v: Vec<u8> = match seeds.get(i % (seeds.len() + 1)) {
                Some(s) => s.to_vec(),
                None => {
                    let len = (rnd() % (max_len as u64 + 1)) as usize;
                    (0..len).map(|_| rnd() as u8).collect()
                }
            };
            for _ in 0..rnd() % 8 {
                if v.is_empty() {
                    break;
                }
                let at = (rnd() % v.len() as u64) as usize;
                v[at] ^= rnd() as u8;
            }
            v.truncate(max_len);
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_zero_past_the_end() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.u32(), 3);
        assert!(i.is_empty());
        assert_eq!(i.bytes(10), &[] as &[u8]);
        assert_eq!(i.u8(), 0);
    }

    #[test]
    fn pseudo_random_inputs_are_reproducible_and_bounded() {
        let a = pseudo_random_inputs(7, 50, 100, &[&[1, 2, 3]]);
        assert_eq!(a, pseudo_random_inputs(7, 50, 100, &[&[1, 2, 3]]));
        assert!(a.iter().all(|v| v.len() <= 100));
        assert!(a.iter().any(|v| v.len() > 50), "some long inputs");
        assert_ne!(a, pseudo_random_inputs(8, 50, 100, &[&[1, 2, 3]]));
    }
}
