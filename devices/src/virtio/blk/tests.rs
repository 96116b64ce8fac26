use std::io;
use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use super::*;
use crate::irq::RecordingIrq;
use crate::pci::config::PCI_COMMAND;
use crate::pci::PciDevice;
use crate::virtio::pci::MODERN_BAR;
use crate::virtio::queue::testing::DriverRing;
use crate::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

/// A disk in memory that counts flushes.
#[derive(Default)]
struct MemDisk {
    data: Vec<u8>,
    read_only: bool,
    flushes: u32,
}

#[derive(Clone)]
struct SharedDisk(Arc<Mutex<MemDisk>>);

impl BlockBackend for SharedDisk {
    fn size(&self) -> u64 {
        self.0.lock().data.len() as u64
    }
    fn read_only(&self) -> bool {
        self.0.lock().read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.0.lock();
        // A device bug would show as a panic here: the test fails.
        buf.copy_from_slice(&d.data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.0.lock();
        assert!(!d.read_only, "a write reached a read-only disk");
        d.data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.0.lock().data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().flushes += 1;
        Ok(())
    }
}

const DISK: usize = 1 << 20;
const HDR: u64 = 0x40000;
const DATA: u64 = 0x50000;
const STATUS: u64 = 0x3f000;

struct Rig {
    dev: VirtioBlkPci,
    disk: Arc<Mutex<MemDisk>>,
    mem: Arc<GuestMemory>,
    ring: DriverRing,
    irq: Arc<RecordingIrq>,
}

fn w(dev: &mut VirtioBlkPci, off: u64, v: u64, len: usize) {
    dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
}

fn rig(read_only: bool) -> Rig {
    rig_with(read_only, DISK, 0)
}

/// A rig with a disk of `disk_len` bytes whose driver declines the features `decline`.
fn rig_with(read_only: bool, disk_len: usize, decline: u64) -> Rig {
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    let data: Vec<u8> = (0..disk_len).map(|i| (i / 512) as u8).collect();
    let disk = Arc::new(Mutex::new(MemDisk { data, read_only, flushes: 0 }));
    let blk = VirtioBlk::new(Box::new(SharedDisk(disk.clone())), "ferrovm-disk-serial-number", IoKick::none());
    let features = blk.features() & !decline;
    let irq = Arc::new(RecordingIrq::new());
    let mut dev = VirtioPci::new(blk, mem.clone(), irq.clone());
    dev.write_config(PCI_COMMAND, &[0x06, 0]);
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(&mut dev, 0x08, 0, 4);
    w(&mut dev, 0x0c, features & 0xffff_ffff, 4);
    w(&mut dev, 0x08, 1, 4);
    w(&mut dev, 0x0c, features >> 32, 4);
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    let ring = DriverRing::new(&mem, 0x10000, 16);
    w(&mut dev, 0x16, 0, 2);
    w(&mut dev, 0x18, 16, 2);
    w(&mut dev, 0x20, ring.desc, 8);
    w(&mut dev, 0x28, ring.avail, 8);
    w(&mut dev, 0x30, ring.used, 8);
    w(&mut dev, 0x1c, 1, 2);
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK), 1);
    Rig { dev, disk, mem, ring, irq }
}

impl Rig {
    fn header(&self, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(HDR, &h).unwrap();
        self.mem.write(STATUS, &[0xff]).unwrap();
    }

    /// Sends a chain and returns (status byte, used length).
    fn send(&mut self, bufs: &[(u64, u32, bool)]) -> (u8, u32) {
        self.ring.add_chain(&self.mem, bufs);
        w(&mut self.dev, 0x3000, 0, 2);
        let used = self.ring.take_used(&self.mem);
        assert_eq!(used.len(), 1, "one request, one used element");
        (self.mem.read_u8(STATUS).unwrap(), used[0].1)
    }

    fn status(&self) -> u8 {
        self.dev.status()
    }

    /// Makes available a read of `sector` into its own buffers (request
    /// `k`: header, 512 bytes of data and status apart from the others').
    fn add_read(&mut self, k: u64, sector: u64) {
        let mut h = [0u8; 16];
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(HDR + 0x100 * k, &h).unwrap();
        self.mem.write(STATUS + k, &[0xff]).unwrap();
        self.ring.add_chain(
            &self.mem,
            &[(HDR + 0x100 * k, 16, false), (DATA + 0x1000 * k, 512, true), (STATUS + k, 1, true)],
        );
    }

    /// Reads the ISR (which lowers INTx); whether the queue's bit was set.
    fn take_isr(&mut self) -> bool {
        let mut isr = [0u8];
        self.dev.bar_read(MODERN_BAR, 0x1000, &mut isr);
        isr[0] & 1 != 0
    }

    /// The driver's used_event (in the available ring, after its entries).
    fn set_used_event(&self, v: u16) {
        self.mem.write_u16(self.ring.avail + 4 + 2 * u64::from(self.ring.size), v).unwrap();
    }

    /// The device's avail_event (in the used ring, after its entries).
    fn avail_event(&self) -> u16 {
        self.mem.read_u16(self.ring.used + 4 + 8 * u64::from(self.ring.size)).unwrap()
    }
}

#[test]
fn one_notification_serves_every_chain_and_interrupts_once() {
    let mut r = rig(false);
    for k in 0..5 {
        r.add_read(k, 3 + k);
    }
    w(&mut r.dev, 0x3000, 0, 2);
    let used = r.ring.take_used(&r.mem);
    assert_eq!(used, (0..5).map(|k| (3 * k, 513)).collect::<Vec<_>>(), "in order, each head of three descriptors");
    for k in 0..5 {
        assert_eq!(r.mem.read_u8(STATUS + k).unwrap(), VIRTIO_BLK_S_OK);
        assert_eq!(r.mem.read_u8(DATA + 0x1000 * k).unwrap(), 3 + k as u8, "request {k} read its sector");
    }
    assert_eq!(r.irq.raises(), 1, "one interrupt for the batch");
    assert!(r.take_isr());
    assert!(!r.irq.level());
    // The device found the ring empty and asked to hear of the next chain.
    assert_eq!(r.avail_event(), 5);
    assert_eq!(r.dev.device().stats().reads, 5);
}

#[test]
fn used_event_decides_the_interrupt() {
    let mut r = rig(false);
    assert_ne!(r.dev.driver_features() & VIRTIO_F_EVENT_IDX, 0, "the device offers EVENT_IDX");
    r.add_read(0, 1);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.ring.take_used(&r.mem).len(), 1);
    assert!(r.take_isr(), "the first decision always interrupts");
    let raised = r.irq.raises();
    // used_event far ahead: two chains used (1 -> 3) bring no interrupt.
    r.set_used_event(10);
    r.add_read(1, 2);
    r.add_read(2, 3);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.ring.take_used(&r.mem).len(), 2);
    assert_eq!(r.irq.raises(), raised, "used_event 10 is not among used 1..3");
    assert!(!r.take_isr());
    assert_eq!(r.avail_event(), 3);
    // used_event 3: the driver waits for the 4th used chain; (3 -> 5) holds it.
    r.set_used_event(3);
    r.add_read(3, 4);
    r.add_read(4, 5);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.ring.take_used(&r.mem).len(), 2);
    assert_eq!(r.irq.raises(), raised + 1);
    assert!(r.take_isr());
    // used_event just behind: already passed, no interrupt.
    r.set_used_event(4);
    r.add_read(5, 6);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.ring.take_used(&r.mem).len(), 1);
    assert_eq!(r.irq.raises(), raised + 1);
    // Far behind or half the index space away: none; the 9th used chain
    // (event 8): one.
    for (k, ev) in [(6u64, 0xffffu16), (7, 0x8000), (8, 8)] {
        r.set_used_event(ev);
        r.add_read(k % 8, k);
        w(&mut r.dev, 0x3000, 0, 2);
        assert_eq!(r.ring.take_used(&r.mem).len(), 1);
        let hit = ev == 8;
        assert_eq!(r.take_isr(), hit, "used_event {ev:#x} after {} used", 1 + k);
    }
    assert_eq!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_bad_index_in_a_batch_stops_it_after_the_good_chains() {
    // A head past the table after two good chains.
    let mut r = rig(false);
    r.add_read(0, 1);
    r.add_read(1, 2);
    r.ring.publish(&r.mem, 16);
    r.add_read(2, 3);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.ring.take_used(&r.mem), vec![(0, 513), (3, 513)]);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.mem.read_u8(STATUS + 2).unwrap(), 0xff, "nothing after the bad chain was served");
    // Further notifications do nothing until a reset.
    w(&mut r.dev, 0x3000, 0, 2);
    assert!(r.ring.take_used(&r.mem).is_empty());
    // An available index that jumps by more than the queue size.
    let mut r = rig(false);
    r.add_read(0, 1);
    r.ring.set_avail_idx(&r.mem, 17);
    w(&mut r.dev, 0x3000, 0, 2);
    assert!(r.ring.take_used(&r.mem).is_empty());
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.dev.device().stats().reads, 0);
    // A next index past the table in the middle of a chain.
    let mut r = rig(false);
    r.header(VIRTIO_BLK_T_IN, 0);
    r.ring.write_desc(&r.mem, 0, HDR, 16, 1, 1);
    r.ring.write_desc(&r.mem, 1, DATA, 512, 3, 0x4000);
    r.ring.publish(&r.mem, 0);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.dev.device().stats().reads, 0);
}

#[test]
fn the_vcpu_serves_reads_and_writes_and_leaves_flushes_to_the_io_thread() {
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    let data: Vec<u8> = (0..DISK).map(|i| (i / 512) as u8).collect();
    let disk = Arc::new(Mutex::new(MemDisk { data, read_only: false, flushes: 0 }));
    // An I/O thread that never runs: what is left to it waits.
    let io = crate::nic::IoThread::new().unwrap();
    let (mut dev, mut ring) = bring_up(&mem, &disk, "s", io.kick());
    let read = |ring: &mut DriverRing, k: u64, sector: u64| {
        mem.write(HDR + 0x100 * k, &[0u8; 16]).unwrap();
        mem.write_u64(HDR + 0x100 * k + 8, sector).unwrap();
        ring.add_chain(&mem, &[(HDR + 0x100 * k, 16, false), (DATA + 0x1000 * k, 512, true), (STATUS + k, 1, true)])
    };
    read(&mut ring, 0, 9);
    w(&mut dev, 0x3000, 0, 2);
    assert_eq!(ring.take_used(&mem), vec![(0, 513)], "served at the notification");
    assert_eq!(mem.read_u8(DATA).unwrap(), 9);
    // A read, a FLUSH, a read: the first now, the rest on the I/O thread.
    read(&mut ring, 1, 10);
    mem.write(HDR + 0x200, &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let flush = ring.add_chain(&mem, &[(HDR + 0x200, 16, false), (STATUS + 2, 1, true)]);
    let last = read(&mut ring, 3, 11);
    w(&mut dev, 0x3000, 0, 2);
    assert_eq!(ring.take_used(&mem), vec![(3, 513)]);
    assert_eq!(disk.lock().flushes, 0, "no fdatasync on the vCPU thread");
    assert!(dev.device().save().pending);
    // Another notification meanwhile leaves the order to the I/O thread.
    let after = read(&mut ring, 4, 12);
    w(&mut dev, 0x3000, 0, 2);
    assert!(ring.take_used(&mem).is_empty());
    dev.poll(Instant::now());
    assert_eq!(ring.take_used(&mem), vec![(u32::from(flush), 1), (u32::from(last), 513), (u32::from(after), 513)]);
    assert_eq!(disk.lock().flushes, 1);
    assert_eq!(mem.read_u8(DATA + 0x4000).unwrap(), 12);
    assert!(!dev.device().save().pending);
    // A doorbell (KVM's ioeventfd) is served in full on the I/O thread.
    mem.write(HDR + 0x200, &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let flush = ring.add_chain(&mem, &[(HDR + 0x200, 16, false), (STATUS + 2, 1, true)]);
    IoPoll::doorbell(&mut dev, 0, 1);
    assert_eq!(ring.take_used(&mem), vec![(u32::from(flush), 1)]);
    assert_eq!(disk.lock().flushes, 2);
}

#[test]
fn the_vcpu_hands_over_once_its_budget_is_spent() {
    /// A disk whose reads take longer than the budget.
    struct Slow(SharedDisk);
    impl BlockBackend for Slow {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            std::thread::sleep(INLINE_BUDGET + Duration::from_millis(1));
            self.0.read_at(buf, offset)
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.0.write_at(buf, offset)
        }
        fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
            self.0.write_zeroes(offset, len, unmap)
        }
        fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
            self.0.discard(offset, len)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    let disk = Arc::new(Mutex::new(MemDisk { data: vec![7; DISK], ..MemDisk::default() }));
    let io = crate::nic::IoThread::new().unwrap();
    let blk = VirtioBlk::new(Box::new(Slow(SharedDisk(disk))), "s", io.kick());
    let mut dev = VirtioPci::new(blk, mem.clone(), Arc::new(RecordingIrq::new()));
    let mut ring = start_without_features(&mut dev, &mem);
    for k in 0..3u64 {
        mem.write(HDR + 0x100 * k, &[0u8; 16]).unwrap();
        ring.add_chain(&mem, &[(HDR + 0x100 * k, 16, false), (DATA + 0x1000 * k, 512, true), (STATUS + k, 1, true)]);
    }
    w(&mut dev, 0x3000, 0, 2);
    assert_eq!(ring.take_used(&mem).len(), 1, "one request, then the budget was spent");
    dev.poll(Instant::now());
    assert_eq!(ring.take_used(&mem).len(), 2, "the I/O thread served the rest");
}

#[test]
fn config_space_announces_capacity_and_limits() {
    let r = rig(false);
    let mut c = [0u8; 60];
    r.dev.device().read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), (DISK / 512) as u64);
    assert_eq!(u32::from_le_bytes(c[8..12].try_into().unwrap()), SIZE_MAX);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
    let f = r.dev.driver_features();
    assert!(f & VIRTIO_BLK_F_FLUSH != 0 && f & VIRTIO_BLK_F_DISCARD != 0 && f & VIRTIO_BLK_F_RO == 0);
    let mut past = [0xffu8; 4];
    r.dev.device().read_config(usize::MAX - 1, &mut past);
    assert_eq!(past, [0; 4]);
    // Transitional and modern IDs as QEMU's virtio-blk-pci.
    assert_eq!(r.dev.config().read_dword(0), 0x1001_1af4);
    assert_eq!(rig(true).dev.driver_features() & VIRTIO_BLK_F_RO, VIRTIO_BLK_F_RO);
}

#[test]
fn reads_and_writes_across_several_descriptors() {
    let mut r = rig(false);
    // Read sectors 3-5 into two buffers (512 + 1024) and a status byte.
    r.header(VIRTIO_BLK_T_IN, 3);
    let (s, len) = r.send(&[(HDR, 16, false), (DATA, 512, true), (DATA + 0x1000, 1024, true), (STATUS, 1, true)]);
    assert_eq!((s, len), (VIRTIO_BLK_S_OK, 1537));
    assert_eq!(r.mem.read_u8(DATA).unwrap(), 3);
    assert_eq!(r.mem.read_u8(DATA + 0x1000 + 1023).unwrap(), 5);
    // Write two sectors from two buffers, the status in the same buffer as
    // nothing else.
    r.mem.fill(DATA, 512, 0xaa).unwrap();
    r.mem.fill(DATA + 0x1000, 512, 0xbb).unwrap();
    r.header(VIRTIO_BLK_T_OUT, 100);
    let (s, len) = r.send(&[(HDR, 16, false), (DATA, 512, false), (DATA + 0x1000, 512, false), (STATUS, 1, true)]);
    assert_eq!((s, len), (VIRTIO_BLK_S_OK, 1));
    let d = r.disk.lock();
    assert!(d.data[100 * 512..101 * 512].iter().all(|&b| b == 0xaa));
    assert!(d.data[101 * 512..102 * 512].iter().all(|&b| b == 0xbb));
    assert_eq!(d.data[102 * 512], 102);
    drop(d);
    // Header and data in one readable buffer (legacy drivers may do that).
    r.mem.write(HDR + 16, &[0xcc; 512]).unwrap();
    r.header(VIRTIO_BLK_T_OUT, 7);
    assert_eq!(r.send(&[(HDR, 16 + 512, false), (STATUS, 1, true)]).0, VIRTIO_BLK_S_OK);
    assert_eq!(r.disk.lock().data[7 * 512 + 511], 0xcc);
    let st = r.dev.device().stats();
    assert_eq!((st.reads, st.read_bytes, st.writes, st.write_bytes, st.errors), (1, 1536, 2, 1536, 0));
}

#[test]
fn flush_get_id_discard_and_write_zeroes() {
    let mut r = rig(false);
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(r.send(&[(HDR, 16, false), (STATUS, 1, true)]), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(r.disk.lock().flushes, 1);
    r.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(r.send(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]), (VIRTIO_BLK_S_OK, 21));
    let mut id = [0u8; 20];
    r.mem.read(DATA, &mut id).unwrap();
    assert_eq!(&id, b"ferrovm-disk-serial-");
    // Two segments: sectors 10-11 and 20.
    for ty in [VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD] {
        r.disk.lock().data.fill(0x11);
        let mut segs = [0u8; 32];
        segs[0..8].copy_from_slice(&10u64.to_le_bytes());
        segs[8..12].copy_from_slice(&2u32.to_le_bytes());
        segs[16..24].copy_from_slice(&20u64.to_le_bytes());
        segs[24..28].copy_from_slice(&1u32.to_le_bytes());
        r.mem.write(DATA, &segs).unwrap();
        r.header(ty, 0);
        assert_eq!(r.send(&[(HDR, 16, false), (DATA, 32, false), (STATUS, 1, true)]).0, VIRTIO_BLK_S_OK);
        let d = r.disk.lock();
        assert!(d.data[10 * 512..12 * 512].iter().all(|&b| b == 0));
        assert!(d.data[20 * 512..21 * 512].iter().all(|&b| b == 0));
        assert_eq!((d.data[12 * 512], d.data[19 * 512], d.data[21 * 512]), (0x11, 0x11, 0x11));
    }
    // An unknown type is UNSUPP.
    r.header(99, 0);
    assert_eq!(r.send(&[(HDR, 16, false), (STATUS, 1, true)]).0, VIRTIO_BLK_S_UNSUPP);
    assert_eq!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn hostile_requests_get_ioerr_and_never_reach_the_disk() {
    let mut r = rig(false);
    let before = r.disk.lock().data.clone();
    let last = (DISK / 512) as u64;
    type Case = (&'static str, u32, u64, Vec<(u64, u32, bool)>);
    let cases: Vec<Case> = vec![
        ("read past the end", VIRTIO_BLK_T_IN, last, vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
        (
            "write straddling the end",
            VIRTIO_BLK_T_OUT,
            last - 1,
            vec![(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
        ),
        (
            "sector overflowing u64",
            VIRTIO_BLK_T_OUT,
            u64::MAX,
            vec![(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        ),
        (
            "sector whose bytes overflow",
            VIRTIO_BLK_T_IN,
            u64::MAX / 512 + 1,
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        ),
        ("partial sector", VIRTIO_BLK_T_OUT, 0, vec![(HDR, 16, false), (DATA, 100, false), (STATUS, 1, true)]),
        ("short header", VIRTIO_BLK_T_OUT, 0, vec![(HDR, 8, false), (STATUS, 1, true)]),
        (
            "buffer over size_max",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 16, false), (0x100000, SIZE_MAX + 512, true), (STATUS, 1, true)],
        ),
        ("discard with no segment", VIRTIO_BLK_T_DISCARD, 0, vec![(HDR, 16, false), (STATUS, 1, true)]),
        (
            "discard with a partial segment",
            VIRTIO_BLK_T_DISCARD,
            0,
            vec![(HDR, 16, false), (DATA, 15, false), (STATUS, 1, true)],
        ),
    ];
    for (what, ty, sector, bufs) in cases {
        r.mem.fill(DATA, 0x2000, 0).unwrap();
        r.header(ty, sector);
        let (s, len) = r.send(&bufs);
        assert_eq!(s, VIRTIO_BLK_S_IOERR, "{what}");
        assert_eq!(len, 1, "{what}: only the status is written");
    }
    // A segment past the end, and one too long.
    for (sector, n) in [(last - 1, 2u32), (0, MAX_DISCARD_SECTORS + 1), (u64::MAX, 1)] {
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&n.to_le_bytes());
        r.mem.write(DATA, &seg).unwrap();
        r.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
        assert_eq!(r.send(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]).0, VIRTIO_BLK_S_IOERR);
    }
    // Too many data buffers (seg_max).
    let mut many = vec![(HDR, 16, false)];
    many.extend((0..SEG_MAX + 1).map(|i| (0x100000 + u64::from(i) * 512, 512, true)));
    many.push((STATUS, 1, true));
    r.ring = DriverRing::new(&r.mem, 0x10000, 16);
    // A fresh ring of 256 entries for the long chain.
    let mut big = DriverRing::new(&r.mem, 0x200000, 256);
    {
        // Re-plug the queue onto the large ring: reset, then set up again.
        let features = r.dev.driver_features();
        w(&mut r.dev, 0x14, 0, 1);
        w(&mut r.dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        w(&mut r.dev, 0x08, 0, 4);
        w(&mut r.dev, 0x0c, features & 0xffff_ffff, 4);
        w(&mut r.dev, 0x08, 1, 4);
        w(&mut r.dev, 0x0c, features >> 32, 4);
        w(&mut r.dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
        w(&mut r.dev, 0x16, 0, 2);
        w(&mut r.dev, 0x18, 256, 2);
        w(&mut r.dev, 0x20, big.desc, 8);
        w(&mut r.dev, 0x28, big.avail, 8);
        w(&mut r.dev, 0x30, big.used, 8);
        w(&mut r.dev, 0x1c, 1, 2);
        w(&mut r.dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK), 1);
    }
    r.header(VIRTIO_BLK_T_IN, 0);
    big.add_chain(&r.mem, &many);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(big.take_used(&r.mem), vec![(0, 1)]);
    assert_eq!(r.mem.read_u8(STATUS).unwrap(), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.disk.lock().data, before, "no hostile request changed the disk");
    assert_eq!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0, "bad requests are answered, not fatal");
    assert!(r.dev.device().stats().errors >= 13);
}

/// A driver that accepts neither SIZE_MAX nor SEG_MAX (OVMF's) may send a
/// data buffer larger than size_max: it is served.
#[test]
fn size_max_binds_only_a_driver_that_accepted_it() {
    let mut r = rig_with(false, 3 << 20, VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX);
    let len = 2 << 20;
    r.header(VIRTIO_BLK_T_IN, 0);
    let (s, used) = r.send(&[(HDR, 16, false), (0x100000, len, true), (STATUS, 1, true)]);
    assert_eq!((s, used), (VIRTIO_BLK_S_OK, len + 1));
    let mut got = vec![0u8; len as usize];
    r.mem.read(0x100000, &mut got).unwrap();
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i / 512) as u8), "the disk's first 2 MiB");
}

#[test]
fn read_only_disks_refuse_writes() {
    let mut r = rig(true);
    r.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(r.send(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]).0, VIRTIO_BLK_S_IOERR);
    r.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(r.send(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]).0, VIRTIO_BLK_S_IOERR);
    r.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(r.send(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]).0, VIRTIO_BLK_S_OK);
}

#[test]
fn broken_chains_need_a_reset() {
    // No writable byte for the status.
    let mut r = rig(false);
    r.header(VIRTIO_BLK_T_IN, 0);
    r.ring.add_chain(&r.mem, &[(HDR, 16, false), (DATA, 512, false)]);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // A buffer outside guest RAM, and a descriptor index past the table.
    let mut r = rig(false);
    r.header(VIRTIO_BLK_T_IN, 0);
    r.ring.add_chain(&r.mem, &[(HDR, 16, false), (0xffff_ffff_f000, 512, true), (STATUS, 1, true)]);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    let mut r = rig(false);
    r.ring.publish(&r.mem, 200);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // A loop.
    let mut r = rig(false);
    r.ring.write_desc(&r.mem, 0, HDR, 16, 1, 1);
    r.ring.write_desc(&r.mem, 1, STATUS, 1, 3, 0);
    r.ring.publish(&r.mem, 0);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // Whatever happened, the disk is untouched.
    assert_eq!(r.disk.lock().data[0], 0);
}

#[test]
fn requests_wait_for_the_io_thread_when_there_is_one() {
    let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
    let disk = Arc::new(Mutex::new(MemDisk { data: vec![0; 4096], ..MemDisk::default() }));
    let mut io = crate::nic::IoThread::new().unwrap();
    let blk = VirtioBlk::new(Box::new(SharedDisk(disk)), "x", io.kick());
    let mut dev = VirtioPci::new(blk, mem.clone(), Arc::new(RecordingIrq::new()));
    let mut ring = start_without_features(&mut dev, &mem);
    // A FLUSH: never served on the vCPU thread.
    mem.write(HDR, &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    ring.add_chain(&mem, &[(HDR, 16, false), (STATUS, 1, true)]);
    w(&mut dev, 0x3000, 0, 2);
    assert!(ring.take_used(&mem).is_empty(), "the vCPU thread did no fdatasync");
    let dev = Arc::new(Mutex::new(dev));
    let shared: crate::io_thread::SharedIoDevice = dev.clone();
    io.start(vec![(shared, None)], Vec::new()).unwrap();
    let t = Instant::now();
    while ring.take_used(&mem).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "the I/O thread never served the request");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(mem.read_u8(STATUS).unwrap(), VIRTIO_BLK_S_OK);
}

#[test]
fn fuzz_entry_point_over_pseudo_random_inputs() {
    let all = [0xff; 8];
    // A read of sector 1: descriptors 0 (header at 0x10000, 16 bytes),
    // 1 (data at 0x10100, 512, writable), 2 (status at 0x10400, 1,
    // writable); the header (type 0, sector 1); avail idx 1; notify.
    let mut read = all.to_vec();
    let desc = |i: u8, addr: u32, len: u16, flags: u16, next: u16| {
        let mut v = vec![4u8, 2 * i, 0, 0, 0, 0, 0, 0, 0, 0];
        v[2..6].copy_from_slice(&addr.to_le_bytes());
        let mut w = vec![4u8, 2 * i + 1, 0, 0, 0, 0, 0, 0, 0, 0];
        w[2..4].copy_from_slice(&len.to_le_bytes());
        w[6..8].copy_from_slice(&flags.to_le_bytes());
        w[8..10].copy_from_slice(&next.to_le_bytes());
        [v, w].concat()
    };
    read.extend(desc(0, 0x10000, 16, 1, 1));
    read.extend(desc(1, 0x10100, 512, 3, 2));
    read.extend(desc(2, 0x10400, 1, 2, 0));
    read.extend_from_slice(&[3, 0, 0, 1, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    read.extend_from_slice(&[4 | (1 << 3), 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    read.extend_from_slice(&[0, 0x80, 0, 0, 0, 0, 0, 0, 1]);
    let stats = fuzz_requests(&read);
    assert_eq!((stats.reads, stats.read_bytes, stats.errors), (1, 512, 0), "the read seed reads");
    for input in &crate::fuzz::pseudo_random_inputs(0xb10c, 3000, 600, &[&read]) {
        fuzz_requests(input);
    }
}

#[test]
fn qcow2_header_parser_over_pseudo_random_inputs() {
    // A minimal valid v3 header: 64 KiB clusters, 1 MiB disk, L1 at
    // 0x30000, refcount table at 0x10000 (its block at 0x20000).
    let mut img = vec![0u8; 0x40000];
    img[0..4].copy_from_slice(b"QFI\xfb");
    img[4..8].copy_from_slice(&3u32.to_be_bytes());
    img[20..24].copy_from_slice(&16u32.to_be_bytes());
    img[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    img[36..40].copy_from_slice(&1u32.to_be_bytes());
    img[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
    img[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
    img[56..60].copy_from_slice(&1u32.to_be_bytes());
    img[96..100].copy_from_slice(&4u32.to_be_bytes());
    img[100..104].copy_from_slice(&104u32.to_be_bytes());
    img[0x10000..0x10008].copy_from_slice(&0x20000u64.to_be_bytes());
    crate::block::header::check_bytes(&img).expect("the seed is valid");
    let head: Vec<u8> = img[..128].to_vec();
    let mut ok = 0;
    for mut input in crate::fuzz::pseudo_random_inputs(0x9c0, 5000, 128, &[&head]) {
        input.resize(128, 0);
        let mut m = img.clone();
        m[..128].copy_from_slice(&input);
        if crate::block::header::check_bytes(&m).is_ok() {
            ok += 1;
        }
        crate::block::header::check_bytes(&input).unwrap_err();
    }
    assert!(ok > 0, "some mutations stay valid");
}

/// Brings `dev` up without negotiating features: its queue of 16 entries
/// at 0x10000.
fn start_without_features(dev: &mut VirtioBlkPci, mem: &Arc<GuestMemory>) -> DriverRing {
    dev.write_config(PCI_COMMAND, &[0x06, 0]);
    w(dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    let ring = DriverRing::new(mem, 0x10000, 16);
    w(dev, 0x20, ring.desc, 8);
    w(dev, 0x28, ring.avail, 8);
    w(dev, 0x30, ring.used, 8);
    w(dev, 0x18, 16, 2);
    w(dev, 0x1c, 1, 2);
    w(dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK), 1);
    ring
}

/// A device over `disk` with `serial` and `kick`, brought up with every
/// feature it offers and its queue of 16 entries at 0x10000.
fn bring_up(
    mem: &Arc<GuestMemory>,
    disk: &Arc<Mutex<MemDisk>>,
    serial: &str,
    kick: IoKick,
) -> (VirtioBlkPci, DriverRing) {
    let blk = VirtioBlk::new(Box::new(SharedDisk(disk.clone())), serial, kick);
    let features = blk.features();
    let mut dev = VirtioPci::new(blk, mem.clone(), Arc::new(RecordingIrq::new()));
    dev.write_config(PCI_COMMAND, &[0x06, 0]);
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(&mut dev, 0x08, 0, 4);
    w(&mut dev, 0x0c, features & 0xffff_ffff, 4);
    w(&mut dev, 0x08, 1, 4);
    w(&mut dev, 0x0c, features >> 32, 4);
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    let ring = DriverRing::new(mem, 0x10000, 16);
    w(&mut dev, 0x16, 0, 2);
    w(&mut dev, 0x18, 16, 2);
    w(&mut dev, 0x20, ring.desc, 8);
    w(&mut dev, 0x28, ring.avail, 8);
    w(&mut dev, 0x30, ring.used, 8);
    w(&mut dev, 0x1c, 1, 2);
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK), 1);
    (dev, ring)
}

#[test]
fn a_restored_device_serves_the_request_left_pending() {
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    let data: Vec<u8> = (0..DISK).map(|i| (i / 512) as u8).collect();
    let disk = Arc::new(Mutex::new(MemDisk { data, read_only: false, flushes: 0 }));
    // I/O threads that never run: the kicks are connected, so requests wait.
    let (io, other_io) = (crate::nic::IoThread::new().unwrap(), crate::nic::IoThread::new().unwrap());
    let (mut dev, mut ring) = bring_up(&mem, &disk, "saved-serial", io.kick());
    // A read that was served, then a FLUSH and a GET_ID left pending (the
    // vCPU thread serves no FLUSH, nor what comes after one).
    mem.write(HDR, &[0u8; 16]).unwrap();
    mem.write_u64(HDR + 8, 7).unwrap();
    ring.add_chain(&mem, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    w(&mut dev, 0x3000, 0, 2);
    dev.poll(Instant::now());
    assert_eq!(ring.take_used(&mem), vec![(0, 513)]);
    mem.write(HDR + 0x200, &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    ring.add_chain(&mem, &[(HDR + 0x200, 16, false), (STATUS + 2, 1, true)]);
    mem.write(HDR + 0x100, &[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    ring.add_chain(&mem, &[(HDR + 0x100, 16, false), (DATA + 0x1000, 20, true), (STATUS + 1, 1, true)]);
    w(&mut dev, 0x3000, 0, 2);
    assert!(ring.take_used(&mem).is_empty(), "waits for the I/O thread");

    let blk = VirtioBlk::new(Box::new(SharedDisk(disk.clone())), "other", other_io.kick());
    let mut other = VirtioPci::new(blk, mem.clone(), Arc::new(RecordingIrq::new()));
    let s = persist::assert_round_trip(&dev, &mut other);
    assert!(s.device.pending);
    assert_eq!(&s.device.id[..12], b"saved-serial");
    assert_eq!((s.device.capacity, s.device.read_only), ((DISK / 512) as u64, false));
    // The restored device serves it from its I/O thread's poll, with the
    // saved serial, in the next used slot.
    other.poll(Instant::now());
    assert_eq!(ring.take_used(&mem), vec![(3, 1), (5, 21)]);
    assert_eq!(disk.lock().flushes, 1);
    assert_eq!(mem.read_u8(STATUS + 1).unwrap(), VIRTIO_BLK_S_OK);
    let mut id = [0u8; 20];
    mem.read(DATA + 0x1000, &mut id).unwrap();
    assert_eq!(&id[..13], b"saved-serial\0");
    let st = other.device().stats();
    assert_eq!((st.reads, st.read_bytes), (1, 512), "the counters came along");
    assert!(!other.device().save().pending);
}

#[test]
fn corrupt_virtio_blk_states_are_refused() {
    let mut r = rig(false);
    let good = r.dev.save();
    let bigger = VirtioBlkState { capacity: good.device.capacity + 1, ..good.device };
    let e = persist::assert_refused(r.dev.device_mut(), &bigger);
    assert_eq!((e.part, e.field), ("virtio-blk", "capacity"));
    let e = persist::assert_refused(r.dev.device_mut(), &VirtioBlkState { read_only: true, ..good.device });
    assert_eq!((e.part, e.field), ("virtio-blk", "read_only"));
    // Through the transport, which is left as it was.
    let mut bad = good.clone();
    bad.device.capacity /= 2;
    let e = persist::assert_refused(&mut r.dev, &bad);
    assert_eq!((e.part, e.field), ("virtio-blk", "capacity"));
    // A writable disk's state on a read-only disk: DISCARD and WRITE_ZEROES
    // were negotiated, which a read-only disk does not offer.
    assert_ne!(good.driver_features & VIRTIO_BLK_F_DISCARD, 0);
    let mut ro = rig(true);
    let e = persist::assert_refused(&mut ro.dev, &good);
    assert_eq!((e.part, e.field), ("virtio PCI function", "driver_features"));
    let e = persist::assert_refused(&mut r.dev, &ro.dev.save());
    assert_eq!(e.field, "driver_features", "VIRTIO_BLK_F_RO is not offered by a writable disk");
    // Without negotiated features, only the disk's access tells them apart.
    let mut quiet = ro.dev.save();
    quiet.driver_features = 0;
    let e = persist::assert_refused(&mut r.dev, &quiet);
    assert_eq!((e.part, e.field), ("virtio-blk", "read_only"));
}
