//! Tests of the IDE controller through its ports, its configuration space
//! and guest memory, as a driver sees it.

mod atapi;
mod dma;
mod saved;

use std::collections::BTreeMap;
use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use super::*;
use crate::irq::RecordingIrq;
use crate::pci::config::{PCI_COMMAND, PCI_HEADER_TYPE, PCI_INTERRUPT_PIN};

/// Guest RAM of the tests.
pub(super) const RAM: u64 = 4 << 20;

/// What a test image does besides storing bytes.
#[derive(Default)]
pub(super) struct ImageState {
    size: u64,
    /// 512-byte blocks written so far; the rest reads as the pattern.
    blocks: BTreeMap<u64, Vec<u8>>,
    pub(super) read_only: bool,
    /// Reads touching these bytes fail.
    pub(super) fail_reads: Option<std::ops::Range<u64>>,
    pub(super) fail_writes: bool,
    pub(super) fail_flush: bool,
    pub(super) flushes: u32,
}

/// A sparse image in memory that the test keeps a handle on. Unwritten
/// bytes read as a pattern of their offset ([`pattern`]).
#[derive(Clone)]
pub(super) struct TestImage(pub(super) Arc<Mutex<ImageState>>);

/// The byte at `offset` of an unwritten test image.
pub(super) fn pattern(offset: u64) -> u8 {
    (offset ^ (offset >> 9) ^ (offset >> 17)) as u8
}

impl TestImage {
    pub(super) fn new(size: u64) -> Self {
        Self(Arc::new(Mutex::new(ImageState { size, ..ImageState::default() })))
    }

    pub(super) fn backend(&self) -> Box<dyn BlockBackend> {
        Box::new(self.clone())
    }

    /// `len` bytes at `offset`, as the guest would read them.
    pub(super) fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let s = self.0.lock();
        (offset..offset + len as u64)
            .map(|o| s.blocks.get(&(o / 512)).map_or(pattern(o), |b| b[(o % 512) as usize]))
            .collect()
    }

    fn store(s: &mut ImageState, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let o = offset + i as u64;
            let block =
                s.blocks.entry(o / 512).or_insert_with(|| (0..512).map(|k| pattern(o / 512 * 512 + k)).collect());
            block[(o % 512) as usize] = v;
        }
    }
}

impl BlockBackend for TestImage {
    fn size(&self) -> u64 {
        self.0.lock().size
    }
    fn read_only(&self) -> bool {
        self.0.lock().read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        {
            let s = self.0.lock();
            assert!(end <= s.size, "a read past the end of the image");
            if s.fail_reads.as_ref().is_some_and(|r| r.start < end && offset < r.end) {
                return Err(std::io::Error::other("injected read error"));
            }
        }
        buf.copy_from_slice(&self.bytes(offset, buf.len()));
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut s = self.0.lock();
        assert!(offset + buf.len() as u64 <= s.size, "a write past the end of the image");
        assert!(!s.read_only, "a write to a read-only image");
        if s.fail_writes {
            return Err(std::io::Error::other("injected write error"));
        }
        Self::store(&mut s, offset, buf);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> std::io::Result<()> {
        self.write_at(&vec![0; len as usize], offset)
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let mut s = self.0.lock();
        s.flushes += 1;
        if s.fail_flush {
            return Err(std::io::Error::other("injected flush error"));
        }
        Ok(())
    }
}

/// Port numbers of the tests (the bus master BAR is placed at 0xc000).
pub(super) const BM: u16 = 0xc000;

/// The data a PACKET command returned, and how it ended.
#[derive(Debug)]
pub(super) struct PacketReply {
    pub(super) status: u8,
    pub(super) error: u8,
    pub(super) reason: u8,
    pub(super) data: Vec<u8>,
    pub(super) chunks: Vec<usize>,
}

/// A controller with its interrupt lines and guest memory, reached
/// through port numbers as a guest reaches it.
pub(super) struct Rig {
    pub(super) ide: IdeController,
    pub(super) mem: Arc<GuestMemory>,
    pub(super) irqs: [Arc<RecordingIrq>; 2],
}

impl Rig {
    /// The controller with `drives`, its I/O space and bus mastering on.
    pub(super) fn new(drives: [IdeDrive; 4]) -> Self {
        let mem = Arc::new(GuestMemory::new(RAM).unwrap());
        let irqs = [Arc::new(RecordingIrq::new()), Arc::new(RecordingIrq::new())];
        let mut ide = IdeController::new(drives, irqs[0].clone(), irqs[1].clone(), mem.clone());
        ide.write_config(0x20, &u32::from(BM).to_le_bytes());
        ide.write_config(PCI_COMMAND, &[0x05, 0x00]);
        Self { ide, mem, irqs }
    }

    /// A disk of `sectors` sectors at the primary master, nothing else.
    pub(super) fn disk(sectors: u64) -> (Self, TestImage) {
        let img = TestImage::new(sectors * 512);
        let rig = Self::new([
            IdeDrive::Disk(img.backend(), "SN-TEST-1".into()),
            IdeDrive::Empty,
            IdeDrive::Empty,
            IdeDrive::Empty,
        ]);
        (rig, img)
    }

    fn window(port: u16) -> (u8, u64) {
        match port {
            0x1f0..=0x1f7 => (0, u64::from(port - 0x1f0)),
            0x3f6 => (1, 0),
            0x170..=0x177 => (2, u64::from(port - 0x170)),
            0x376 => (3, 0),
            p if (BM..BM + 16).contains(&p) => (4, u64::from(p - BM)),
            p => panic!("port {p:#x} is not the controller's"),
        }
    }

    pub(super) fn outb(&mut self, port: u16, v: u8) {
        let (w, o) = Self::window(port);
        self.ide.io_write(w, o, &[v]);
    }
    pub(super) fn outw(&mut self, port: u16, v: u16) {
        let (w, o) = Self::window(port);
        self.ide.io_write(w, o, &v.to_le_bytes());
    }
    pub(super) fn outl(&mut self, port: u16, v: u32) {
        let (w, o) = Self::window(port);
        self.ide.io_write(w, o, &v.to_le_bytes());
    }
    pub(super) fn inb(&mut self, port: u16) -> u8 {
        let (w, o) = Self::window(port);
        let mut b = [0u8];
        self.ide.io_read(w, o, &mut b);
        b[0]
    }
    pub(super) fn inw(&mut self, port: u16) -> u16 {
        let (w, o) = Self::window(port);
        let mut b = [0u8; 2];
        self.ide.io_read(w, o, &mut b);
        u16::from_le_bytes(b)
    }
    pub(super) fn inl(&mut self, port: u16) -> u32 {
        let (w, o) = Self::window(port);
        let mut b = [0u8; 4];
        self.ide.io_read(w, o, &mut b);
        u32::from_le_bytes(b)
    }

    /// The command block base of channel `ch`.
    pub(super) fn base(ch: usize) -> u16 {
        [0x1f0, 0x170][ch]
    }
    pub(super) fn ctl(ch: usize) -> u16 {
        [0x3f6, 0x376][ch]
    }

    pub(super) fn select(&mut self, ch: usize, dev: usize) {
        self.outb(Self::base(ch) + 6, 0xa0 | (dev as u8) << 4);
    }
    pub(super) fn status(&mut self, ch: usize) -> u8 {
        self.inb(Self::base(ch) + 7)
    }
    pub(super) fn alt_status(&mut self, ch: usize) -> u8 {
        self.inb(Self::ctl(ch))
    }
    pub(super) fn error(&mut self, ch: usize) -> u8 {
        self.inb(Self::base(ch) + 1)
    }
    pub(super) fn reg(&mut self, ch: usize, r: u16) -> u8 {
        self.inb(Self::base(ch) + r)
    }

    /// Programs a 28-bit LBA command's registers for device `dev`.
    pub(super) fn lba28(&mut self, ch: usize, dev: usize, lba: u32, count: u8) {
        let b = Self::base(ch);
        self.outb(b + 6, 0xe0 | (dev as u8) << 4 | ((lba >> 24) as u8 & 0x0f));
        self.outb(b + 2, count);
        self.outb(b + 3, lba as u8);
        self.outb(b + 4, (lba >> 8) as u8);
        self.outb(b + 5, (lba >> 16) as u8);
    }

    /// Programs a 48-bit LBA command's registers: each register twice,
    /// high-order byte first.
    pub(super) fn lba48(&mut self, ch: usize, dev: usize, lba: u64, count: u16) {
        let b = Self::base(ch);
        self.outb(b + 6, 0x40 | (dev as u8) << 4);
        let l = lba.to_le_bytes();
        let [clo, chi] = count.to_le_bytes();
        for (reg, hi, lo) in [(2, chi, clo), (3, l[3], l[0]), (4, l[4], l[1]), (5, l[5], l[2])] {
            self.outb(b + reg, hi);
            self.outb(b + reg, lo);
        }
    }

    pub(super) fn command(&mut self, ch: usize, code: u8) {
        self.outb(Self::base(ch) + 7, code);
    }

    /// Reads `len` bytes from the data port, 16 bits at a time.
    pub(super) fn read_data(&mut self, ch: usize, len: usize) -> Vec<u8> {
        (0..len.div_ceil(2)).flat_map(|_| self.inw(Self::base(ch)).to_le_bytes()).take(len).collect()
    }

    pub(super) fn write_data(&mut self, ch: usize, data: &[u8]) {
        for pair in data.chunks(2) {
            let w = u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            self.outw(Self::base(ch), w);
        }
    }

    /// IDENTIFY (PACKET) DEVICE of device `dev`, as words.
    pub(super) fn identify(&mut self, ch: usize, dev: usize, code: u8) -> Vec<u16> {
        self.select(ch, dev);
        self.command(ch, code);
        assert_eq!(self.status(ch) & 0x89, 0x08, "IDENTIFY offers its data");
        let bytes = self.read_data(ch, 512);
        assert_eq!(self.alt_status(ch) & 0x08, 0, "DRQ ends with the block");
        bytes.chunks(2).map(|w| u16::from_le_bytes([w[0], w[1]])).collect()
    }

    /// Sends a PACKET command with `cdb` to device `dev` (PIO, byte count
    /// limit `limit`) and reads every chunk of its data.
    pub(super) fn packet(&mut self, ch: usize, dev: usize, cdb: &[u8], limit: u16) -> PacketReply {
        self.send_packet(ch, dev, cdb, limit);
        self.collect(ch, Vec::new())
    }

    /// Sends a PACKET command with `cdb` (PIO, byte count limit `limit`).
    pub(super) fn send_packet(&mut self, ch: usize, dev: usize, cdb: &[u8], limit: u16) {
        let b = Self::base(ch);
        self.select(ch, dev);
        self.outb(b + 1, 0);
        self.outb(b + 4, limit as u8);
        self.outb(b + 5, (limit >> 8) as u8);
        self.command(ch, 0xa0);
        assert_eq!(self.alt_status(ch) & 0x88, 0x08, "PACKET waits for the command packet");
        assert_eq!(self.reg(ch, 2) & 3, 1, "interrupt reason CoD");
        let mut packet = [0u8; 12];
        packet[..cdb.len()].copy_from_slice(cdb);
        self.write_data(ch, &packet);
    }

    /// Reads the chunks of a packet command's data from a chunk boundary
    /// on, after `data`, and its completion.
    pub(super) fn collect(&mut self, ch: usize, mut data: Vec<u8>) -> PacketReply {
        let mut chunks = Vec::new();
        loop {
            let status = self.status(ch);
            if status & 0x08 == 0 {
                let (error, reason) = (self.error(ch), self.reg(ch, 2));
                return PacketReply { status, error, reason, data, chunks };
            }
            assert_eq!(self.reg(ch, 2) & 3, 2, "a data chunk: IO, not CoD");
            let n = usize::from(self.reg(ch, 4)) | usize::from(self.reg(ch, 5)) << 8;
            chunks.push(n);
            let mut chunk = self.read_data(ch, n);
            data.append(&mut chunk);
            assert!(chunks.len() < 100_000, "endless data");
        }
    }

    /// REQUEST SENSE: key, ASC, ASCQ.
    pub(super) fn sense(&mut self, ch: usize, dev: usize) -> (u8, u8, u8) {
        let r = self.packet(ch, dev, &[0x03, 0, 0, 0, 18], 0xfffe);
        assert_eq!(r.status & 0x01, 0, "REQUEST SENSE itself succeeds");
        assert_eq!(r.data.len(), 18);
        assert_eq!(r.data[0], 0x70);
        (r.data[2], r.data[12], r.data[13])
    }

    /// Writes PRD entries (address, byte count, EOT) at `table`.
    pub(super) fn prd(&self, table: u64, entries: &[(u32, u32, bool)]) {
        for (i, &(addr, count, eot)) in entries.iter().enumerate() {
            let flags = count | if eot { 1 << 31 } else { 0 };
            self.mem.write(table + 8 * i as u64, &addr.to_le_bytes()).unwrap();
            self.mem.write(table + 8 * i as u64 + 4, &flags.to_le_bytes()).unwrap();
        }
    }

    /// Programs channel `ch`'s bus master with `table` and the direction,
    /// and clears its interrupt and error bits.
    pub(super) fn bm_setup(&mut self, ch: usize, table: u32, to_memory: bool) {
        let base = BM + 8 * ch as u16;
        self.outl(base + 4, table);
        self.outb(base, if to_memory { 0x08 } else { 0x00 });
        self.outb(base + 2, 0x06);
    }

    pub(super) fn bm_start(&mut self, ch: usize) {
        let base = BM + 8 * ch as u16;
        let c = self.inb(base);
        self.outb(base, c | 0x01);
    }

    pub(super) fn bm_stop(&mut self, ch: usize) {
        let base = BM + 8 * ch as u16;
        let c = self.inb(base);
        self.outb(base, c & !0x01);
    }

    pub(super) fn bm_status(&mut self, ch: usize) -> u8 {
        self.inb(BM + 8 * ch as u16 + 2)
    }
}

/// Words `first..first+count` of IDENTIFY data as the ASCII string they hold.
pub(super) fn id_string(words: &[u16], first: usize, count: usize) -> String {
    words[first..first + count].iter().flat_map(|w| w.to_be_bytes()).map(char::from).collect()
}

#[test]
fn configuration_space_is_a_piix3_ide_function() {
    let (mut rig, _) = Rig::disk(16);
    let ide = &mut rig.ide;
    assert_eq!(ide.read_config(0), 0x7010_8086);
    assert_eq!(ide.read_config(2), 0x0101_8000, "class 01h, IDE, prog-if 80h, revision 0");
    assert_eq!(ide.config().u8_at(PCI_HEADER_TYPE), 0);
    assert_eq!(ide.config().u8_at(PCI_INTERRUPT_PIN), 0, "legacy mode: no INTx pin");
    assert_eq!(ide.read_config(1) >> 16, 0x0280, "fast back-to-back, medium DEVSEL");
    ide.write_config(PCI_COMMAND, &[0xff, 0xff]);
    assert_eq!(ide.config().command(), 0x0005, "I/O space and bus master only");
    // BAR4: 16 bytes of I/O space; the other BARs do not exist.
    ide.write_config(0x20, &[0xff; 4]);
    assert_eq!(ide.read_config(8), 0xffff_fff1);
    ide.write_config(0x10, &[0xff; 4]);
    assert_eq!(ide.read_config(4), 0);
    ide.write_config(0x20, &0xd000u32.to_le_bytes());
    assert_eq!(ide.config().bar_region(BMDMA_BAR).map(|(b, at)| (b.size, at)), Some((16, 0xd000)));
    // IDETIM: decode enabled on both channels at power-on; bits 11:10 reserved.
    assert_eq!(ide.read_config(0x10), 0x8000_8000);
    ide.write_config(0x40, &[0xff; 4]);
    assert_eq!(ide.read_config(0x10), 0xf3ff_f3ff);
    ide.write_config(0x44, &[0x5a]);
    assert_eq!(ide.config().u8_at(0x44), 0x5a);
    assert_eq!(ide.config().u8_at(0x45), 0, "reserved");
    ide.reset();
    assert_eq!(ide.read_config(0x10), 0x8000_8000);
    assert_eq!(ide.config().u8_at(0x44), 0);
    assert_eq!(ide.read_config(8), 0xd001, "the PCI header is kept");
    assert_eq!(ide.config().command(), 0x0005);
    assert_eq!(PIIX_IDE_ADDRESS.to_string(), "00:01.1");
}

#[test]
fn a_channel_with_decode_off_floats() {
    let (mut rig, _) = Rig::disk(16);
    assert_eq!(rig.status(0), 0x50);
    rig.ide.write_config(0x41, &[0x00]);
    assert_eq!(rig.status(0), 0xff);
    assert_eq!(rig.alt_status(0), 0xff);
    rig.command(0, 0xec);
    rig.ide.write_config(0x41, &[0x80]);
    assert_eq!(rig.status(0), 0x50, "the command was not seen");
    // The bus master is a BAR, gated by the machine's mapping, not IDETIM.
    rig.ide.write_config(0x41, &[0x00]);
    rig.outb(BM + 2, 0x60);
    assert_eq!(rig.bm_status(0), 0x60);
}

#[test]
fn identify_device_describes_the_disk() {
    let (mut rig, _) = Rig::disk(2048);
    let w = rig.identify(0, 0, 0xec);
    assert_eq!(w[0], 0x0040, "fixed ATA device");
    assert_eq!((w[1], w[3], w[6]), (2, 16, 63), "default CHS");
    assert_eq!(id_string(&w, 10, 10).trim_end(), "SN-TEST-1");
    assert_eq!(id_string(&w, 23, 4).trim_end(), "1.0");
    assert_eq!(id_string(&w, 27, 20).trim_end(), "FERROVM HARDDISK");
    assert_eq!(w[47], 0x8010, "READ/WRITE MULTIPLE up to 16 sectors");
    assert_eq!(w[49] & 0x0300, 0x0300, "LBA and DMA");
    assert_eq!(w[53], 0x0007);
    assert_eq!((w[54], w[55], w[56]), (2, 16, 63));
    assert_eq!(u32::from(w[57]) | u32::from(w[58]) << 16, 2016);
    assert_eq!(w[59], 0, "multiple mode off");
    assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, 2048);
    assert_eq!(w[63], 0x0407, "multiword DMA 0-2, mode 2 selected");
    assert_eq!(w[64], 0x0003);
    assert_eq!(w[80] & 0x01f0, 0x01f0);
    assert_ne!(w[83] & (1 << 10), 0, "48-bit addresses");
    assert_eq!(w[83] & 0xc000, 0x4000);
    assert_eq!(w[83] & 0x3000, 0x3000, "FLUSH CACHE and FLUSH CACHE EXT");
    assert_eq!(w[86] & 0x3400, 0x3400, "enabled too");
    assert_ne!(w[82] & (1 << 5), 0, "write cache supported");
    assert_ne!(w[85] & (1 << 5), 0, "write cache on");
    assert_eq!(w[88], 0x003f, "Ultra DMA 0-5, none selected");
    assert_ne!(w[93] & 0xdf61, 0x4041, "SeaBIOS must not read 'device 1 absent' here");
    let lba48: u64 = (0..4).map(|i| u64::from(w[100 + i]) << (16 * i)).sum();
    assert_eq!(lba48, 2048);
    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(bytes[510], 0xa5);
    assert_eq!(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0, "checksum");
    assert_eq!(rig.status(0), 0x50);
}

#[test]
fn identify_follows_set_features_and_large_disks() {
    let (mut rig, _) = Rig::disk(1 << 29);
    let w = rig.identify(0, 0, 0xec);
    assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, 0x0fff_ffff, "LBA28 capacity saturates");
    assert_eq!(u32::from(w[100]) | u32::from(w[101]) << 16, 1 << 29);
    assert_eq!(w[1], 16383);
    let b = Rig::base(0);
    for (feature, count) in [(0x03u8, 0x45u8), (0x82, 0), (0x03, 0x0c)] {
        rig.outb(b + 1, feature);
        rig.outb(b + 2, count);
        rig.command(0, 0xef);
        assert_eq!(rig.status(0), 0x50, "SET FEATURES {feature:#x} {count:#x}");
    }
    let w = rig.identify(0, 0, 0xec);
    assert_eq!(w[88], 0x203f, "Ultra DMA 5 selected");
    assert_eq!(w[63], 0x0007, "multiword DMA no longer selected");
    assert_eq!(w[85] & (1 << 5), 0, "write cache off");
    for (feature, count) in [(0x03u8, 0x46u8), (0x03, 0x23), (0x05, 0x80), (0x99, 0)] {
        rig.outb(b + 1, feature);
        rig.outb(b + 2, count);
        rig.command(0, 0xef);
        assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x04), "SET FEATURES {feature:#x} {count:#x} aborts");
    }
}

#[test]
fn pio_sectors_round_trip_with_lba28() {
    let (mut rig, img) = Rig::disk(2048);
    let data: Vec<u8> = (0..3 * 512).map(|i| (i * 7 + 3) as u8).collect();
    rig.lba28(0, 0, 10, 3);
    rig.command(0, 0x30);
    assert_eq!(rig.alt_status(0), 0x58, "the first block needs no interrupt");
    assert!(!rig.irqs[0].level());
    for (i, block) in data.chunks(512).enumerate() {
        rig.write_data(0, block);
        assert!(rig.irqs[0].level(), "an interrupt after block {i}");
        assert!(rig.irqs[0].level(), "the alternate status leaves it");
        let status = rig.alt_status(0);
        assert!(rig.irqs[0].level(), "the alternate status leaves it");
        assert_eq!(status, if i < 2 { 0x58 } else { 0x50 });
        rig.status(0);
        assert!(!rig.irqs[0].level(), "Status releases it");
    }
    assert_eq!(img.bytes(10 * 512, data.len()), data);
    assert_eq!(img.bytes(9 * 512, 512), (9 * 512..10 * 512).map(pattern).collect::<Vec<_>>());
    rig.lba28(0, 0, 10, 3);
    rig.command(0, 0x20);
    assert!(rig.irqs[0].level());
    assert_eq!(rig.status(0), 0x58);
    let back = rig.read_data(0, data.len());
    assert_eq!(back, data);
    assert_eq!(rig.status(0), 0x50);
    assert_eq!((rig.reg(0, 3), rig.reg(0, 4), rig.reg(0, 6) & 0x0f), (12, 0, 0), "the last sector read");
    let s = rig.ide.stats();
    assert_eq!((s.reads, s.read_bytes, s.writes, s.write_bytes, s.errors), (1, 1536, 1, 1536, 0));
    // Past the end: IDNF before the image is touched.
    rig.lba28(0, 0, 2047, 2);
    rig.command(0, 0x20);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x10));
    assert_eq!(rig.ide.stats().errors, 1);
}

#[test]
fn pio_sectors_round_trip_with_lba48_and_hob_reads_back() {
    let (mut rig, img) = Rig::disk(1 << 29);
    let lba = 0x1234_5678u64;
    let data: Vec<u8> = (0..2 * 512).map(|i| (i * 13 + 1) as u8).collect();
    rig.lba48(0, 0, lba, 2);
    rig.outb(0x3f6, 0x80);
    assert_eq!((rig.reg(0, 3), rig.reg(0, 2)), (0x12, 0x00), "HOB: the previous writes");
    rig.outb(0x3f6, 0x00);
    assert_eq!((rig.reg(0, 3), rig.reg(0, 2)), (0x78, 0x02));
    rig.command(0, 0x34);
    rig.write_data(0, &data);
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(img.bytes(lba * 512, data.len()), data);
    rig.lba48(0, 0, lba, 2);
    rig.command(0, 0x24);
    assert_eq!(rig.read_data(0, data.len()), data);
    assert_eq!(rig.status(0), 0x50);
    // The last sector read, high-order bytes behind HOB.
    assert_eq!((rig.reg(0, 3), rig.reg(0, 4), rig.reg(0, 5)), (0x79, 0x56, 0x34));
    rig.outb(0x3f6, 0x80);
    assert_eq!(rig.reg(0, 3), 0x12);
    // A write to a command block register clears HOB.
    rig.outb(0x1f1, 0);
    assert_eq!(rig.reg(0, 3), 0x79);
    // A count of 0 is 65536 sectors: past the end here.
    rig.lba48(0, 0, (1 << 29) - 100, 0);
    rig.command(0, 0x24);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x10));
}

#[test]
fn read_and_write_multiple_move_blocks() {
    let (mut rig, img) = Rig::disk(2048);
    rig.lba28(0, 0, 0, 0);
    rig.command(0, 0xc4);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x04), "multiple mode is off");
    for bad in [3u8, 32] {
        rig.outb(0x1f2, bad);
        rig.command(0, 0xc6);
        assert_eq!(rig.status(0), 0x51, "SET MULTIPLE {bad}");
    }
    rig.outb(0x1f2, 4);
    rig.command(0, 0xc6);
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(rig.identify(0, 0, 0xec)[59], 0x0104);
    let data: Vec<u8> = (0..10 * 512).map(|i| (i % 251) as u8).collect();
    let raises = rig.irqs[0].raises();
    rig.lba28(0, 0, 100, 10);
    rig.command(0, 0xc5);
    for (i, block) in [4usize, 4, 2]
        .iter()
        .scan(0, |at, n| {
            let b = &data[*at * 512..(*at + n) * 512];
            *at += n;
            Some(b)
        })
        .enumerate()
    {
        assert_eq!(rig.status(0) & 0x08, 0x08, "block {i}");
        rig.write_data(0, block);
    }
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(rig.irqs[0].raises() - raises, 3, "one interrupt per block after the first, and one at the end");
    assert_eq!(img.bytes(100 * 512, data.len()), data);
    let raises = rig.irqs[0].raises();
    rig.lba28(0, 0, 100, 10);
    rig.command(0, 0xc4);
    let mut back = Vec::new();
    for n in [4usize, 4, 2] {
        assert_eq!(rig.status(0), 0x58);
        back.extend(rig.read_data(0, n * 512));
    }
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(back, data);
    assert_eq!(rig.irqs[0].raises() - raises, 3, "one interrupt per block");
}

#[test]
fn chs_addressing_follows_initialize_device_parameters() {
    let (mut rig, _) = Rig::disk(2048);
    rig.outb(0x1f2, 16);
    rig.outb(0x1f6, 0xa3);
    rig.command(0, 0x91);
    assert_eq!(rig.status(0), 0x50);
    let w = rig.identify(0, 0, 0xec);
    assert_eq!((w[54], w[55], w[56]), (32, 4, 16));
    // Cylinder 1, head 2, sector 5: LBA (1 * 4 + 2) * 16 + 4 = 100.
    rig.outb(0x1f6, 0xa2);
    rig.outb(0x1f2, 2);
    rig.outb(0x1f3, 5);
    rig.outb(0x1f4, 1);
    rig.outb(0x1f5, 0);
    rig.command(0, 0x20);
    let data = rig.read_data(0, 1024);
    assert_eq!(data, (100 * 512..102 * 512).map(pattern).collect::<Vec<_>>());
    assert_eq!((rig.reg(0, 3), rig.reg(0, 4), rig.reg(0, 6) & 0x0f), (6, 1, 2), "the last sector in CHS");
    // Sector 0 and a head past the translation do not exist.
    rig.outb(0x1f3, 0);
    rig.command(0, 0x20);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x10));
    rig.outb(0x1f6, 0xa7);
    rig.outb(0x1f3, 1);
    rig.command(0, 0x20);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x10));
}

#[test]
fn the_data_port_takes_32_bit_accesses() {
    let (mut rig, _) = Rig::disk(2048);
    let by16 = rig.identify(0, 0, 0xec);
    rig.command(0, 0xec);
    let by32: Vec<u16> = (0..128)
        .flat_map(|_| {
            let d = rig.inl(0x1f0);
            [d as u16, (d >> 16) as u16]
        })
        .collect();
    assert_eq!(by32, by16);
    assert_eq!(rig.status(0), 0x50);
    // Outside a data phase the port reads zeroes and takes nothing.
    assert_eq!(rig.inl(0x1f0), 0);
    rig.outl(0x1f0, 0xdead_beef);
    assert_eq!(rig.status(0), 0x50);
}

#[test]
fn soft_reset_shows_each_signature() {
    let img = TestImage::new(2048 * 512);
    let cd = TestImage::new(100 * 2048);
    let mut rig = Rig::new([
        IdeDrive::Disk(img.backend(), "d".into()),
        IdeDrive::Cdrom(Some(cd.backend())),
        IdeDrive::Empty,
        IdeDrive::Empty,
    ]);
    rig.select(0, 1);
    rig.outb(0x3f6, 0x06);
    assert_eq!(rig.alt_status(0), 0x80, "busy while SRST is set");
    rig.outb(0x1f2, 0x33);
    rig.outb(0x3f6, 0x02);
    assert_eq!(rig.reg(0, 6), 0x00, "device 0 selected after a reset");
    assert_eq!(
        (rig.status(0), rig.error(0), rig.reg(0, 2), rig.reg(0, 3), rig.reg(0, 4), rig.reg(0, 5)),
        (0x50, 0x01, 1, 1, 0x00, 0x00),
        "ATA signature"
    );
    rig.select(0, 1);
    assert_eq!(
        (rig.status(0), rig.error(0), rig.reg(0, 2), rig.reg(0, 3), rig.reg(0, 4), rig.reg(0, 5)),
        (0x00, 0x01, 1, 1, 0x14, 0xeb),
        "ATAPI signature, DRDY clear"
    );
    assert!(!rig.irqs[0].level(), "no interrupt from a soft reset");
    // EXECUTE DEVICE DIAGNOSTIC reaches both; device 0 interrupts.
    rig.outb(0x3f6, 0x00);
    rig.outb(0x1f4, 0x99);
    rig.command(0, 0x90);
    assert!(rig.irqs[0].level());
    assert_eq!(rig.reg(0, 6), 0);
    assert_eq!((rig.status(0), rig.reg(0, 4)), (0x50, 0x00));
    rig.select(0, 1);
    assert_eq!((rig.status(0), rig.error(0), rig.reg(0, 4), rig.reg(0, 5)), (0x00, 0x01, 0x14, 0xeb));
    // DEVICE RESET resets the packet device alone, without an interrupt.
    rig.outb(0x1f4, 0x77);
    rig.command(0, 0x08);
    assert_eq!((rig.reg(0, 4), rig.alt_status(0)), (0x14, 0x00));
    assert!(!rig.irqs[0].level());
}

#[test]
fn an_absent_slave_reads_as_absent() {
    let (mut rig, _) = Rig::disk(2048);
    // SeaBIOS ata_detect and Linux ata_devchk: select, write 55h/AAh, read back.
    rig.select(0, 1);
    assert_eq!(rig.status(0), 0x00);
    rig.outb(0x1f2, 0x55);
    rig.outb(0x1f3, 0xaa);
    assert_eq!((rig.reg(0, 2), rig.reg(0, 3)), (0, 0), "nothing echoes the pattern");
    assert_eq!(rig.reg(0, 6), 0xb0, "the Device register reads back as written");
    assert_eq!((rig.error(0), rig.reg(0, 4), rig.reg(0, 5)), (0, 0, 0));
    rig.command(0, 0xa1);
    rig.command(0, 0xec);
    assert_eq!((rig.status(0), rig.alt_status(0)), (0, 0), "commands to it go nowhere");
    assert!(!rig.irqs[0].level());
    // The master latched the writes.
    rig.select(0, 0);
    assert_eq!((rig.reg(0, 2), rig.reg(0, 3)), (0x55, 0xaa));
    // An empty channel reads zeroes throughout, never busy.
    assert_eq!((rig.status(1), rig.alt_status(1), rig.reg(1, 2)), (0, 0, 0));
}

#[test]
fn interrupts_follow_nien_status_and_selection() {
    let (mut rig, _) = Rig::disk(2048);
    rig.outb(0x3f6, 0x02);
    rig.command(0, 0xe7);
    assert!(!rig.irqs[0].level(), "nIEN masks the line");
    assert_eq!(rig.bm_status(0) & 0x04, 0, "no assertion reached the bus master");
    rig.outb(0x3f6, 0x00);
    assert!(rig.irqs[0].level(), "the pending interrupt shows once nIEN clears");
    rig.alt_status(0);
    assert!(rig.irqs[0].level());
    rig.status(0);
    assert!(!rig.irqs[0].level());
    rig.command(0, 0xe7);
    assert!(rig.irqs[0].level());
    assert_eq!(rig.bm_status(0) & 0x04, 0x04, "the bus master saw it");
    rig.outb(BM + 2, 0x04);
    assert_eq!(rig.bm_status(0) & 0x04, 0);
    rig.select(0, 1);
    assert!(!rig.irqs[0].level(), "only the selected device drives the line");
    rig.select(0, 0);
    assert!(rig.irqs[0].level());
    rig.command(0, 0xe5);
    assert_eq!(rig.reg(0, 2), 0xff, "writing a command released the old interrupt and raised a new one");
    assert!(!rig.irqs[1].level(), "the other channel's line is untouched");
}

#[test]
fn power_management_and_legacy_commands() {
    let (mut rig, img) = Rig::disk(2048);
    for (code, count) in [(0xe0u8, 0x00u8), (0xe1, 0xff), (0xe2, 0x00), (0xe3, 0xff)] {
        rig.command(0, code);
        assert_eq!(rig.status(0), 0x50);
        rig.command(0, 0xe5);
        assert_eq!((rig.status(0), rig.reg(0, 2)), (0x50, count), "after {code:#x}");
    }
    rig.command(0, 0xe0);
    rig.lba28(0, 0, 0, 1);
    rig.command(0, 0x40);
    assert_eq!(rig.status(0), 0x50, "READ VERIFY");
    rig.command(0, 0xe5);
    assert_eq!(rig.reg(0, 2), 0xff, "a media access leaves standby");
    rig.command(0, 0x10);
    assert_eq!(rig.status(0), 0x50, "RECALIBRATE");
    rig.lba28(0, 0, 2047, 1);
    rig.command(0, 0x70);
    assert_eq!(rig.status(0), 0x50, "SEEK inside the disk");
    rig.lba28(0, 0, 2048, 1);
    rig.command(0, 0x70);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x10));
    for code in [0x00u8, 0xa0, 0xa1, 0x08, 0xb0, 0xf8, 0x2f] {
        rig.command(0, code);
        assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x04), "{code:#x} aborts");
    }
    // FLUSH CACHE (EXT) flushes the image.
    rig.command(0, 0xe7);
    rig.command(0, 0xea);
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(img.0.lock().flushes, 2);
    assert_eq!(rig.ide.stats().flushes, 2);
    // With the write cache off every write is flushed.
    rig.outb(0x1f1, 0x82);
    rig.command(0, 0xef);
    rig.lba28(0, 0, 5, 1);
    rig.command(0, 0x30);
    rig.write_data(0, &[1; 512]);
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(img.0.lock().flushes, 3);
}

#[test]
fn read_only_disks_refuse_writes() {
    let img = TestImage::new(2048 * 512);
    img.0.lock().read_only = true;
    let mut rig =
        Rig::new([IdeDrive::Disk(img.backend(), "ro".into()), IdeDrive::Empty, IdeDrive::Empty, IdeDrive::Empty]);
    for code in [0x30u8, 0x34, 0xc5, 0x39, 0xca, 0x35] {
        if code == 0x34 || code == 0x39 || code == 0x35 {
            rig.lba48(0, 0, 1, 1);
        } else {
            rig.lba28(0, 0, 1, 1);
        }
        rig.outb(0x1f2, 1);
        rig.command(0, code);
        assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x04), "{code:#x} is refused");
    }
    rig.lba28(0, 0, 1, 1);
    rig.command(0, 0x20);
    assert_eq!(rig.read_data(0, 512), (512..1024).map(pattern).collect::<Vec<_>>(), "reads work");
    assert!(img.0.lock().blocks.is_empty());
}

#[test]
fn image_errors_end_commands_with_an_error_status() {
    let (mut rig, img) = Rig::disk(2048);
    img.0.lock().fail_reads = Some(7 * 512..8 * 512);
    rig.lba28(0, 0, 5, 4);
    rig.command(0, 0x20);
    assert_eq!(rig.read_data(0, 1024).len(), 1024);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x40), "UNC at the bad sector");
    assert_eq!(rig.reg(0, 3), 7, "the LBA registers name it");
    assert_eq!(rig.inw(0x1f0), 0, "no more data");
    img.0.lock().fail_writes = true;
    rig.lba28(0, 0, 5, 1);
    rig.command(0, 0x30);
    rig.write_data(0, &[0; 512]);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x04));
    img.0.lock().fail_flush = true;
    rig.command(0, 0xe7);
    assert_eq!((rig.status(0), rig.error(0)), (0x71, 0x04), "DF with the failed flush");
    rig.lba28(0, 0, 6, 4);
    rig.command(0, 0x40);
    assert_eq!((rig.status(0), rig.error(0), rig.reg(0, 3)), (0x51, 0x40, 7), "READ VERIFY finds it too");
    assert_eq!(rig.ide.stats().errors, 4);
}

#[test]
fn random_register_traffic_never_panics() {
    for (i, input) in crate::fuzz::pseudo_random_inputs(0x1de, 1000, 1024, &[]).iter().enumerate() {
        let img = TestImage::new(64 * 512);
        let cd = TestImage::new(16 * 2048);
        let mut rig = Rig::new([
            IdeDrive::Disk(img.backend(), "p".into()),
            IdeDrive::Cdrom(Some(cd.backend())),
            IdeDrive::Cdrom(None),
            IdeDrive::Disk(TestImage::new(512).backend(), "q".into()),
        ]);
        let mut bytes = input.chunks_exact(8);
        for op in &mut bytes {
            let window = op[0] % 5;
            let span = [8u64, 1, 8, 1, 16][usize::from(window)];
            let offset = u64::from(op[1]) % span;
            let len = [1usize, 2, 4][usize::from(op[2] % 3)].min((span - offset) as usize);
            if op[3] & 1 == 0 {
                rig.ide.io_write(window, offset, &op[4..4 + len]);
            } else {
                let mut b = [0u8; 4];
                rig.ide.io_read(window, offset, &mut b[..len]);
            }
            if op[3] & 0x0e == 0x0e {
                // A random PRD entry in the table region.
                let at = 0x1000 + 8 * u64::from(op[4] % 16);
                let _ = rig.mem.write(at, &[op[5], op[6], op[7], op[1], op[2], op[3], 0, op[0] & 0x80]);
            }
        }
        crate::fuzz::assert_restorable(&mut rig.ide);
        assert!(rig.bm_status(0) & 0x98 == 0, "input {i}: reserved bits");
    }
}
