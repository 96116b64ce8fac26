//! Tests of the floppy controller through its ports, the 8237 and guest
//! memory, as a driver sees them.

mod data;
mod saved;

use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use ::persist::Persist;

use super::*;
use crate::bus::Bus;
use crate::irq::RecordingIrq;

/// Guest RAM of the tests.
pub(super) const RAM: u64 = 2 << 20;

/// The byte at `offset` of an unwritten test image.
pub(super) fn pattern(offset: u64) -> u8 {
    (offset ^ (offset >> 9) ^ (offset >> 17)) as u8
}

/// What a test image does besides storing bytes.
pub(super) struct ImageState {
    pub(super) data: Vec<u8>,
    pub(super) read_only: bool,
    pub(super) fail_reads: bool,
    pub(super) fail_writes: bool,
}

/// An image in memory that the test keeps a handle on, filled with
/// [`pattern`].
#[derive(Clone)]
pub(super) struct TestImage(pub(super) Arc<Mutex<ImageState>>);

impl TestImage {
    pub(super) fn new(format: FloppyFormat) -> Self {
        Self::sized(format.size())
    }

    pub(super) fn sized(size: u64) -> Self {
        let data = (0..size).map(pattern).collect();
        Self(Arc::new(Mutex::new(ImageState { data, read_only: false, fail_reads: false, fail_writes: false })))
    }

    pub(super) fn read_only(self) -> Self {
        self.0.lock().read_only = true;
        self
    }

    pub(super) fn backend(&self) -> Box<dyn BlockBackend> {
        Box::new(self.clone())
    }

    pub(super) fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        self.0.lock().data[offset as usize..offset as usize + len].to_vec()
    }
}

impl BlockBackend for TestImage {
    fn size(&self) -> u64 {
        self.0.lock().data.len() as u64
    }
    fn read_only(&self) -> bool {
        self.0.lock().read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let s = self.0.lock();
        assert!(offset as usize + buf.len() <= s.data.len(), "a read past the end of the image");
        if s.fail_reads {
            return Err(std::io::Error::other("injected read error"));
        }
        buf.copy_from_slice(&s.data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut s = self.0.lock();
        assert!(offset as usize + buf.len() <= s.data.len(), "a write past the end of the image");
        assert!(!s.read_only, "a write to a read-only image");
        if s.fail_writes {
            return Err(std::io::Error::other("injected write error"));
        }
        s.data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> std::io::Result<()> {
        self.write_at(&vec![0; len as usize], offset)
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The controller, the 8237 pair and guest memory on a port bus, as a
/// guest reaches them.
pub(super) struct Rig {
    pub(super) fdc: Arc<Mutex<FloppyController>>,
    pub(super) dma: Arc<Mutex<IsaDma>>,
    pub(super) mem: Arc<GuestMemory>,
    pub(super) irq: Arc<RecordingIrq>,
    pub(super) bus: Bus,
}

pub(super) const DOR: u16 = 0x3f2;
pub(super) const MSR: u16 = 0x3f4;
pub(super) const FIFO: u16 = 0x3f5;
pub(super) const DIR: u16 = 0x3f7;

impl Rig {
    pub(super) fn new(drives: [FloppyDrive; 2]) -> Self {
        let mem = Arc::new(GuestMemory::new(RAM).unwrap());
        let dma = Arc::new(Mutex::new(IsaDma::new(mem.clone())));
        let irq = Arc::new(RecordingIrq::new());
        let fdc = Arc::new(Mutex::new(FloppyController::new(drives, irq.clone(), dma.clone()).unwrap()));
        let mut bus = Bus::new();
        let mut mmio = Bus::new();
        for m in FloppyController::bus_mappings(&fdc).into_iter().chain(IsaDma::bus_mappings(&dma)) {
            m.insert_into(&mut bus, &mut mmio).unwrap();
        }
        Self { fdc, dma, mem, irq, bus }
    }

    /// A 1.44 MB disk in A:, nothing in B:.
    pub(super) fn a_144() -> (Self, TestImage) {
        let img = TestImage::new(FloppyFormat::Kb1440);
        (Self::new([FloppyDrive::Disk(img.backend()), FloppyDrive::Absent]), img)
    }

    pub(super) fn outb(&self, port: u16, v: u8) {
        assert!(self.bus.write(u64::from(port), &[v]), "port {port:#x} unclaimed");
    }

    pub(super) fn inb(&self, port: u16) -> u8 {
        let mut b = [0u8];
        self.bus.read(u64::from(port), &mut b);
        b[0]
    }

    /// Writes a command, each byte once the MSR asks for it.
    pub(super) fn cmd(&self, bytes: &[u8]) {
        for &b in bytes {
            let msr = self.inb(MSR);
            assert_eq!(msr & 0xe0, 0x80, "MSR {msr:#04x} before command byte {b:#04x} of {bytes:02x?}");
            self.outb(FIFO, b);
        }
    }

    /// Reads the result phase.
    pub(super) fn results(&self) -> Vec<u8> {
        let mut v = Vec::new();
        while self.inb(MSR) & 0xe0 == 0xc0 {
            v.push(self.inb(FIFO));
            assert!(v.len() <= 10, "an endless result phase");
        }
        assert_eq!(self.inb(MSR), 0x80, "idle after the result");
        v
    }

    pub(super) fn sense_interrupt(&self) -> Vec<u8> {
        self.cmd(&[0x08]);
        self.results()
    }

    /// Out of reset with DMA and interrupts on, the four polling statuses
    /// sensed, DMA mode, the disk's data rate (500 kbps).
    pub(super) fn init(&self) {
        self.outb(DOR, 0x00);
        self.outb(DOR, 0x1c);
        for d in 0..4 {
            assert_eq!(self.sense_interrupt(), [0xc0 | d, 0]);
        }
        self.cmd(&[0x03, 0xaf, 0x02]);
        self.outb(DIR, 0x00);
    }

    /// SEEK with its SENSE INTERRUPT STATUS; gives ST0 and PCN.
    pub(super) fn seek(&self, drive: u8, head: u8, cylinder: u8) -> Vec<u8> {
        self.cmd(&[0x0f, head << 2 | drive, cylinder]);
        self.sense_interrupt()
    }

    /// Programs DMA channel 2 for `len` bytes at `addr` in `mode` (0x46 to
    /// memory, 0x4a from memory).
    pub(super) fn dma(&self, addr: u32, len: u32, mode: u8) {
        let count = len - 1;
        self.outb(0x0a, 0x06);
        self.outb(0x0c, 0);
        self.outb(0x04, addr as u8);
        self.outb(0x04, (addr >> 8) as u8);
        self.outb(0x05, count as u8);
        self.outb(0x05, (count >> 8) as u8);
        self.outb(0x0b, mode);
        self.outb(0x81, (addr >> 16) as u8);
        self.outb(0x0a, 0x02);
    }

    /// A READ DATA or WRITE DATA command with its result: (C, H, R) start,
    /// EOT, on drive 0, head `h`.
    pub(super) fn rw(&self, opcode: u8, c: u8, h: u8, r: u8, eot: u8) -> Vec<u8> {
        self.cmd(&[opcode, h << 2, c, h, r, 2, eot, 0x1b, 0xff]);
        self.results()
    }

    pub(super) fn memory(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read(addr, &mut v).unwrap();
        v
    }
}

/// The offset of (c, h, r) on a 1.44 MB disk.
pub(super) fn offset_144(c: u64, h: u64, r: u64) -> u64 {
    ((c * 2 + h) * 18 + r - 1) * 512
}

#[test]
fn the_constructor_refuses_other_image_sizes_and_gives_the_cmos_byte() {
    let irq = Arc::new(RecordingIrq::new());
    let mem = Arc::new(GuestMemory::new(RAM).unwrap());
    let dma = Arc::new(Mutex::new(IsaDma::new(mem)));
    let bad = TestImage::sized(1_000_000);
    let e = FloppyController::new([FloppyDrive::Absent, FloppyDrive::Disk(bad.backend())], irq.clone(), dma.clone())
        .unwrap_err();
    assert_eq!(e, FloppyError::ImageSize { drive: 'B', size: 1_000_000 });
    assert!(e.to_string().contains("drive B: is 1000000 bytes"), "{e}");
    assert!(e.to_string().contains("1474560 (1.44 MB)"), "{e}");
    for (format, cmos) in [
        (FloppyFormat::Kb360, 1),
        (FloppyFormat::Kb1200, 2),
        (FloppyFormat::Kb720, 3),
        (FloppyFormat::Kb1440, 4),
        (FloppyFormat::Kb2880, 5),
    ] {
        let img = TestImage::new(format);
        let fdc = FloppyController::new(
            [FloppyDrive::Disk(img.backend()), FloppyDrive::Empty(FloppyFormat::Kb1440)],
            irq.clone(),
            dma.clone(),
        )
        .unwrap();
        assert_eq!(fdc.cmos_type(), cmos << 4 | 4, "{format}");
        assert_eq!(format.cmos_type(), cmos);
        assert_eq!(FloppyFormat::from_size(format.size()), Some(format));
        assert_eq!((fdc.drive_format(0), fdc.media_format(0), fdc.media_format(1)), (Some(format), Some(format), None));
    }
    let one =
        FloppyController::new([FloppyDrive::Empty(FloppyFormat::Kb720), FloppyDrive::Absent], irq.clone(), dma.clone())
            .unwrap();
    assert_eq!((one.cmos_type(), one.cmos_equipment()), (0x30, 0x01));
    let two = FloppyController::new(
        [FloppyDrive::Empty(FloppyFormat::Kb720), FloppyDrive::Empty(FloppyFormat::Kb2880)],
        irq.clone(),
        dma.clone(),
    )
    .unwrap();
    assert_eq!((two.cmos_type(), two.cmos_equipment()), (0x35, 0x41));
    let none = FloppyController::new([FloppyDrive::Absent, FloppyDrive::Absent], irq, dma).unwrap();
    assert_eq!((none.cmos_type(), none.cmos_equipment()), (0, 0));
    assert_eq!(none.drive_format(5), None);
    assert_eq!(FloppyFormat::Kb1440.size(), 1_474_560);
    assert_eq!(FloppyFormat::Kb2880.size(), 2_949_120);
    assert_eq!(FloppyFormat::Kb360.to_string(), "360 KB");
    assert!(format!("{:?}", FloppyDrive::Disk(TestImage::new(FloppyFormat::Kb720).backend())).contains("737280"));
}

#[test]
fn it_powers_on_in_reset_and_a_reset_leaves_four_polling_statuses() {
    let (rig, _img) = Rig::a_144();
    assert_eq!(rig.inb(MSR), 0x00, "held in reset until DOR bit 2");
    rig.outb(FIFO, 0x10);
    assert_eq!(rig.inb(MSR), 0x00, "a command byte in reset is dropped");
    rig.outb(DOR, 0x0c);
    assert_eq!(rig.inb(MSR), 0x80);
    assert!(rig.irq.level(), "the end of the reset interrupts");
    assert_eq!(rig.irq.raises(), 1);
    assert_eq!(rig.sense_interrupt(), [0xc0, 0]);
    assert!(!rig.irq.level(), "SENSE INTERRUPT STATUS lowers INT");
    assert_eq!(rig.sense_interrupt(), [0xc1, 0]);
    assert_eq!(rig.sense_interrupt(), [0xc2, 0]);
    assert_eq!(rig.sense_interrupt(), [0xc3, 0]);
    assert_eq!(rig.sense_interrupt(), [0x80], "nothing pending: invalid");
    // The DSR's software reset does the same, in one write.
    rig.outb(MSR, 0x80);
    assert_eq!(rig.irq.raises(), 2);
    assert_eq!(rig.sense_interrupt(), [0xc0, 0]);
    // A host that senses one drive only still gets its next interrupt as an edge.
    rig.cmd(&[0x07, 0x00]);
    assert_eq!(rig.irq.raises(), 3);
    assert_eq!(rig.sense_interrupt(), [0x20, 0], "the seek end comes first");
    assert_eq!(rig.sense_interrupt(), [0xc1, 0]);
}

#[test]
fn the_dma_gate_holds_int_back() {
    let (rig, _img) = Rig::a_144();
    rig.outb(DOR, 0x04);
    assert!(!rig.irq.level(), "no DMA gate: INT stays off the bus");
    rig.outb(DOR, 0x0c);
    assert!(rig.irq.level(), "opening the gate passes the pending interrupt");
    rig.outb(DOR, 0x00);
    assert!(!rig.irq.level(), "a reset drops it");
    assert_eq!(rig.inb(DOR), 0x00);
}

#[test]
fn version_configure_lock_dumpreg_and_perpendicular() {
    let (rig, _img) = Rig::a_144();
    rig.init();
    rig.cmd(&[0x10]);
    assert_eq!(rig.results(), [0x90]);
    rig.cmd(&[0x13, 0x00, 0x57, 0x20]);
    rig.cmd(&[0x12, 0x87]);
    rig.cmd(&[0x03, 0xdf, 0x04]);
    rig.cmd(&[0x0f, 0x01, 0x11]);
    rig.sense_interrupt();
    rig.cmd(&[0x0e]);
    assert_eq!(rig.results(), [0, 0x11, 0, 0, 0xdf, 0x04, 0, 0x07, 0x57, 0x20]);
    // PERPENDICULAR without OW keeps D3-D0 and takes GAP and WGATE.
    rig.cmd(&[0x12, 0x00]);
    rig.cmd(&[0x0e]);
    assert_eq!(rig.results()[7], 0x04);
    // LOCK answers its bit, and keeps EFIFO, FIFOTHR and PRETRK through a software reset.
    rig.cmd(&[0x94]);
    assert_eq!(rig.results(), [0x10]);
    rig.outb(MSR, 0x80);
    for _ in 0..4 {
        rig.sense_interrupt();
    }
    rig.cmd(&[0x0e]);
    let regs = rig.results();
    assert_eq!(&regs[7..], [0x84, 0x07, 0x20], "EIS and POLL reset, the locked FIFO settings kept");
    assert_eq!(regs[4..6], [0xdf, 0x04], "SPECIFY survives a software reset");
    rig.cmd(&[0x14]);
    assert_eq!(rig.results(), [0x00]);
    rig.outb(DOR, 0x18);
    rig.outb(DOR, 0x1c);
    for _ in 0..4 {
        rig.sense_interrupt();
    }
    rig.cmd(&[0x0e]);
    assert_eq!(&rig.results()[7..], [0x04, 0x20, 0x00], "unlocked: the FIFO settings reset too");
    // A hardware reset clears everything, LOCK included.
    rig.cmd(&[0x94]);
    rig.results();
    rig.fdc.lock().reset();
    assert_eq!(rig.inb(MSR), 0);
    rig.outb(DOR, 0x0c);
    for _ in 0..4 {
        rig.sense_interrupt();
    }
    rig.cmd(&[0x0e]);
    assert_eq!(rig.results(), [0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0]);
}

#[test]
fn invalid_commands_answer_0x80() {
    let (rig, _img) = Rig::a_144();
    rig.init();
    for code in [0x18, 0x16, 0x02, 0x0c, 0x8e, 0x00, 0xff, 0x43, 0x4f, 0x18] {
        rig.cmd(&[code]);
        assert_eq!(rig.results(), [0x80], "command {code:#04x}");
    }
    assert!(!rig.irq.level(), "an invalid command does not interrupt");
    assert_eq!(fdc::invalid_name(0x56), "VERIFY");
    assert_eq!(fdc::invalid_name(0x00), "no command of the 82077AA");
}

#[test]
fn seek_recalibrate_and_sense_interrupt() {
    let (rig, _img) = Rig::a_144();
    rig.init();
    assert_eq!(rig.seek(0, 1, 40), [0x20, 40], "H reads 0 in the seek status");
    assert!(!rig.irq.level());
    rig.cmd(&[0x04, 0x04]);
    assert_eq!(rig.results(), [0x2c], "ST3: RDY, two-sided, head 1, not track 0, writable");
    rig.cmd(&[0x07, 0x00]);
    assert!(rig.irq.level());
    assert_eq!(rig.sense_interrupt(), [0x20, 0]);
    rig.cmd(&[0x04, 0x00]);
    assert_eq!(rig.results(), [0x38], "ST3: track 0");
    // Relative seeks, as raw commands (fdutils) send them.
    rig.cmd(&[0xcf, 0x00, 10]);
    assert_eq!(rig.sense_interrupt(), [0x20, 10]);
    rig.cmd(&[0x8f, 0x00, 3]);
    assert_eq!(rig.sense_interrupt(), [0x20, 7]);
    rig.cmd(&[0x8f, 0x00, 9]);
    assert_eq!(rig.sense_interrupt(), [0x70, 0], "out past cylinder 0: equipment check");
    // An absent drive never finds track 0.
    rig.cmd(&[0x07, 0x02]);
    assert_eq!(rig.sense_interrupt(), [0x72, 0]);
    assert_eq!(rig.seek(3, 0, 5), [0x23, 5]);
    // Several seeks pending: lowest drive first.
    rig.cmd(&[0x0f, 0x01, 4]);
    rig.cmd(&[0x0f, 0x00, 6]);
    assert_eq!(rig.sense_interrupt(), [0x20, 6]);
    assert_eq!(rig.sense_interrupt(), [0x21, 4]);
    assert_eq!(rig.sense_interrupt(), [0x80]);
    // A seek beyond the drive stops the head at its last cylinder; PCN
    // says what the controller stepped to.
    assert_eq!(rig.seek(0, 0, 90), [0x20, 90]);
    assert_eq!(rig.fdc.lock().save().drives[0].track, 79);
}

#[test]
fn read_id_reports_the_sector_under_the_head() {
    let (rig, _img) = Rig::a_144();
    rig.init();
    rig.seek(0, 0, 5);
    rig.cmd(&[0x4a, 0x04]);
    assert!(rig.irq.level());
    assert_eq!(rig.results(), [0x04, 0, 0, 5, 1, 1, 2]);
    assert!(!rig.irq.level(), "reading the result answers INT");
    rig.cmd(&[0xea, 0x00]);
    assert_eq!(rig.results(), [0x00, 0, 0, 5, 0, 2, 2], "Linux's 0xEA is READ ID too");
    // FM, or a rate the disk does not have: no address mark.
    rig.cmd(&[0x0a, 0x00]);
    assert_eq!(rig.results(), [0x40, 0x01, 0, 5, 0, 0, 0]);
    rig.outb(DIR, 0x02);
    rig.cmd(&[0x4a, 0x00]);
    assert_eq!(rig.results()[..2], [0x40, 0x01]);
    rig.outb(DIR, 0x00);
    // No disk in B:.
    rig.cmd(&[0x4a, 0x01]);
    assert_eq!(rig.results()[..2], [0x41, 0x01]);
    assert_eq!(rig.fdc.lock().stats().errors, 3);
}

#[test]
fn the_disk_change_line_follows_the_disk() {
    let img = TestImage::new(FloppyFormat::Kb1440);
    let rig = Rig::new([FloppyDrive::Disk(img.backend()), FloppyDrive::Empty(FloppyFormat::Kb1440)]);
    rig.init();
    assert_eq!(rig.inb(DIR), 0xff, "set at power-on");
    rig.seek(0, 0, 0);
    assert_eq!(rig.inb(DIR) & 0x80, 0x80, "no step pulse: still set");
    rig.seek(0, 0, 1);
    assert_eq!(rig.inb(DIR), 0x7f, "a step with the disk in clears it");
    let old = rig.fdc.lock().eject(0).unwrap();
    assert!(old.is_some());
    assert_eq!(rig.inb(DIR) & 0x80, 0x80);
    rig.seek(0, 0, 2);
    assert_eq!(rig.inb(DIR) & 0x80, 0x80, "without a disk a step does not clear it");
    let bigger = TestImage::new(FloppyFormat::Kb720);
    assert!(rig.fdc.lock().change_media(0, Some(bigger.backend())).unwrap().is_none());
    assert_eq!(rig.fdc.lock().media_format(0), Some(FloppyFormat::Kb720));
    rig.seek(0, 0, 3);
    assert_eq!(rig.inb(DIR) & 0x80, 0);
    // DIR shows the drive the DOR selects.
    rig.outb(DOR, 0x1d);
    assert_eq!(rig.inb(DIR) & 0x80, 0x80, "B: still has its power-on change");
    rig.outb(DOR, 0x1e);
    assert_eq!(rig.inb(DIR) & 0x80, 0, "no drive C:");
    // What a drive refuses.
    let mut fdc = rig.fdc.lock();
    let e = fdc.change_media(1, Some(TestImage::new(FloppyFormat::Kb2880).backend())).err().unwrap();
    assert_eq!(
        e,
        FloppyError::Incompatible { drive: 'B', drive_format: FloppyFormat::Kb1440, disk: FloppyFormat::Kb2880 }
    );
    assert!(e.to_string().contains("1.44 MB drive"), "{e}");
    assert!(matches!(fdc.change_media(1, Some(TestImage::sized(512).backend())), Err(FloppyError::ImageSize { .. })));
    assert_eq!(fdc.change_media(2, None).err(), Some(FloppyError::NoDrive { drive: 'C' }));
    assert!(FloppyFormat::Kb2880.drive_takes(FloppyFormat::Kb720));
    assert!(!FloppyFormat::Kb1200.drive_takes(FloppyFormat::Kb360));
}

#[test]
fn random_port_writes_never_panic() {
    let (rig, _img) = Rig::a_144();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = [0x3f0, 0x3f1, 0x3f2, 0x3f3, 0x3f4, 0x3f5, 0x3f5, 0x3f5, 0x3f7][(x % 9) as usize];
        if x & 0x100 != 0 {
            rig.inb(port);
        } else {
            // Keep the controller out of reset most of the time.
            let v = (x >> 16) as u8;
            let v = if port == DOR { v | 0x04 } else { v };
            rig.outb(port, v);
        }
    }
    // Word and dword accesses split into bytes.
    let mut b = [0u8; 4];
    rig.bus.read(0x3f2, &mut b);
    rig.bus.write(0x3f2, &[0x0c, 0, 0, 0]);
    assert_eq!(rig.fdc.lock().debug_label(), "82077AA floppy controller");
    assert!(format!("{:?}", rig.fdc.lock()).contains("FloppyController"));
}
