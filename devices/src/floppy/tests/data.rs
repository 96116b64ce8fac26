//! The data commands: READ DATA, WRITE DATA and FORMAT TRACK over DMA and
//! through the FIFO, their ends and their errors.

use super::*;

/// DMA mode 0x46: single, increment, device to memory, channel 2.
const TO_MEMORY: u8 = 0x46;
/// DMA mode 0x4a: single, increment, memory to device, channel 2.
const FROM_MEMORY: u8 = 0x4a;
const READ_MT: u8 = 0xe6;
const READ: u8 = 0x66;
const WRITE: u8 = 0xc5;

impl Rig {
    /// The DMA channel 2 count register.
    fn dma_count(&self) -> u16 {
        self.outb(0x0c, 0);
        let lo = self.inb(0x05);
        let hi = self.inb(0x05);
        u16::from_le_bytes([lo, hi])
    }

    /// Non-DMA mode (SPECIFY ND).
    fn pio_mode(&self) {
        self.cmd(&[0x03, 0xaf, 0x03]);
    }
}

#[test]
fn read_data_moves_sectors_into_guest_memory_over_dma() {
    let (rig, img) = Rig::a_144();
    rig.init();
    rig.seek(0, 0, 2);
    rig.dma(0x2_0000, 3 * 512, TO_MEMORY);
    let raises = rig.irq.raises();
    assert_eq!(rig.rw(READ_MT, 2, 0, 4, 18), [0x00, 0, 0, 2, 0, 7, 2], "TC after sector 6: R+1");
    assert_eq!(rig.irq.raises(), raises + 1, "one interrupt, at the result phase");
    assert_eq!(rig.memory(0x2_0000, 3 * 512), img.bytes(offset_144(2, 0, 4), 3 * 512));
    assert_eq!(rig.memory(0x2_0000 + 3 * 512, 16), [0; 16]);
    assert_eq!(rig.dma_count(), 0xffff, "the whole count moved");
    assert_eq!(rig.inb(0x08) & 0x04, 0x04, "channel 2 reached terminal count");
    assert!(!rig.dma.lock().channel_ready(2), "and masked itself");
    let stats = rig.fdc.lock().stats();
    assert_eq!((stats.reads, stats.read_bytes, stats.errors), (1, 3 * 512, 0));
}

#[test]
fn multi_track_reads_go_on_to_head_1() {
    let (rig, img) = Rig::a_144();
    rig.init();
    rig.seek(0, 0, 2);
    rig.dma(0x3_0000, 4 * 512, TO_MEMORY);
    assert_eq!(rig.rw(READ_MT, 2, 0, 17, 18), [0x04, 0, 0, 2, 1, 3, 2]);
    let mut want = img.bytes(offset_144(2, 0, 17), 2 * 512);
    want.extend(img.bytes(offset_144(2, 1, 1), 2 * 512));
    assert_eq!(rig.memory(0x3_0000, 4 * 512), want);
    // TC on the last sector of head 1: the cylinder steps on, H flips back.
    rig.dma(0x3_0000, 512, TO_MEMORY);
    assert_eq!(rig.rw(READ_MT, 2, 1, 18, 18), [0x04, 0, 0, 3, 0, 1, 2]);
    // TC on the last sector of head 0: H flips, same cylinder.
    rig.dma(0x3_0000, 512, TO_MEMORY);
    assert_eq!(rig.rw(READ_MT, 2, 0, 18, 18), [0x00, 0, 0, 2, 1, 1, 2]);
    // Without MT, the last sector ends the cylinder.
    rig.dma(0x3_0000, 2 * 512, TO_MEMORY);
    assert_eq!(rig.rw(READ, 2, 0, 17, 18), [0x00, 0, 0, 3, 0, 1, 2]);
}

#[test]
fn past_eot_without_terminal_count_is_end_of_cylinder() {
    let (rig, img) = Rig::a_144();
    rig.init();
    rig.seek(0, 0, 7);
    rig.dma(0x4_0000, 8 * 512, TO_MEMORY);
    assert_eq!(rig.rw(READ, 7, 0, 17, 18), [0x40, 0x80, 0, 8, 0, 1, 2]);
    assert_eq!(rig.memory(0x4_0000, 1024), img.bytes(offset_144(7, 0, 17), 1024));
    assert_eq!(rig.dma_count(), 6 * 512 - 1, "two sectors moved");
    rig.dma(0x4_0000, 8 * 512, TO_MEMORY);
    assert_eq!(rig.rw(READ_MT, 7, 1, 18, 18), [0x44, 0x80, 0, 8, 0, 1, 2]);
    // EOT below R: the sector numbers run on until one is missing.
    rig.dma(0x4_0000, 8 * 512, TO_MEMORY);
    assert_eq!(rig.rw(READ, 7, 0, 18, 5), [0x40, 0x04, 0, 7, 0, 19, 2]);
}

#[test]
fn write_data_round_trips() {
    let (rig, img) = Rig::a_144();
    rig.init();
    rig.seek(0, 0, 3);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 5) as u8).collect();
    rig.mem.write(0x5_0000, &data).unwrap();
    rig.dma(0x5_0000, 1024, FROM_MEMORY);
    assert_eq!(rig.rw(WRITE, 3, 1, 1, 18), [0x04, 0, 0, 3, 1, 3, 2]);
    assert_eq!(img.bytes(offset_144(3, 1, 1), 1024), data);
    assert_eq!(img.bytes(offset_144(3, 1, 3), 512), (offset_144(3, 1, 3)..).take(512).map(pattern).collect::<Vec<_>>());
    rig.dma(0x6_0000, 1024, TO_MEMORY);
    assert_eq!(rig.rw(READ_MT, 3, 1, 1, 18), [0x04, 0, 0, 3, 1, 3, 2]);
    assert_eq!(rig.memory(0x6_0000, 1024), data);
    // TC in the middle of a sector: the rest of it is written as zeroes.
    rig.dma(0x5_0000, 100, FROM_MEMORY);
    assert_eq!(rig.rw(WRITE, 3, 0, 9, 18), [0x00, 0, 0, 3, 0, 10, 2]);
    let sector = img.bytes(offset_144(3, 0, 9), 512);
    assert_eq!(sector[..100], data[..100]);
    assert!(sector[100..].iter().all(|&b| b == 0));
    let stats = rig.fdc.lock().stats();
    assert_eq!((stats.writes, stats.write_bytes), (2, 1536));
}

#[test]
fn sectors_the_track_does_not_have() {
    let (rig, _img) = Rig::a_144();
    rig.init();
    rig.seek(0, 0, 2);
    rig.dma(0x2_0000, 512, TO_MEMORY);
    assert_eq!(rig.rw(READ, 3, 0, 1, 18), [0x40, 0x04, 0x10, 3, 0, 1, 2], "wrong cylinder");
    assert_eq!(rig.rw(READ, 2, 0, 19, 19), [0x40, 0x04, 0, 2, 0, 19, 2], "no sector 19");
    assert_eq!(rig.rw(READ, 2, 0, 0, 18), [0x40, 0x04, 0, 2, 0, 0, 2], "no sector 0");
    rig.cmd(&[READ, 0x00, 2, 1, 1, 2, 18, 0x1b, 0xff]);
    assert_eq!(rig.results(), [0x40, 0x04, 0, 2, 1, 1, 2], "H does not match the head");
    rig.cmd(&[READ, 0x00, 2, 0, 1, 3, 18, 0x1b, 0xff]);
    assert_eq!(rig.results(), [0x40, 0x04, 0, 2, 0, 1, 3], "no 1 KiB sectors");
    rig.cmd(&[0x26, 0x00, 2, 0, 1, 2, 18, 0x1b, 0xff]);
    assert_eq!(rig.results()[..2], [0x40, 0x01], "FM finds no address mark");
    rig.outb(DIR, 0x03);
    assert_eq!(rig.rw(READ, 2, 0, 1, 18)[..2], [0x40, 0x01], "1 Mbps on a 1.44 MB disk");
    rig.outb(DIR, 0x00);
    rig.seek(0, 0, 85);
    assert_eq!(rig.rw(READ, 85, 0, 1, 18), [0x40, 0x04, 0x10, 85, 0, 1, 2], "the head stopped at cylinder 79");
    rig.cmd(&[READ, 0x01, 0, 0, 1, 2, 18, 0x1b, 0xff]);
    assert_eq!(rig.results()[..2], [0x41, 0x01], "no disk in B:");
    assert_eq!(rig.fdc.lock().stats().errors, 9);
}

#[test]
fn a_channel_that_does_not_move_is_an_overrun() {
    let (rig, _img) = Rig::a_144();
    rig.init();
    rig.dma(0x2_0000, 512, TO_MEMORY);
    rig.outb(0x0a, 0x06);
    assert_eq!(rig.rw(READ, 0, 0, 1, 18), [0x40, 0x10, 0, 0, 0, 1, 2], "channel 2 masked");
    rig.outb(0x0a, 0x02);
    rig.outb(DOR, 0x14);
    rig.cmd(&[READ, 0x00, 0, 0, 1, 2, 18, 0x1b, 0xff]);
    assert!(!rig.irq.level(), "no DMA gate: no INT either");
    assert_eq!(rig.results(), [0x40, 0x10, 0, 0, 0, 1, 2], "the DMA gate shut");
    rig.outb(DOR, 0x1c);
    assert_eq!(rig.rw(READ, 0, 0, 1, 1), [0x00, 0, 0, 1, 0, 1, 2]);
}

#[test]
fn a_guest_pointing_dma_outside_ram_harms_nothing() {
    let (rig, img) = Rig::a_144();
    rig.init();
    // Page 0x7f: far above the 2 MiB of RAM.
    rig.dma(0x7f_0000, 18 * 512, TO_MEMORY);
    assert_eq!(rig.rw(READ_MT, 0, 0, 1, 18), [0x00, 0, 0, 0, 1, 1, 2], "the bus cycles run");
    // Half in RAM, half past its end.
    rig.dma(0x1f_fe00, 1024, TO_MEMORY);
    assert_eq!(rig.rw(READ, 0, 0, 1, 18), [0x00, 0, 0, 0, 0, 3, 2]);
    assert_eq!(rig.memory(0x1f_fe00, 512), img.bytes(0, 512));
    // Writing from outside RAM writes what the bus floats.
    rig.dma(0x7f_0000, 512, FROM_MEMORY);
    assert_eq!(rig.rw(WRITE, 0, 0, 5, 18), [0x00, 0, 0, 0, 0, 6, 2]);
    assert_eq!(img.bytes(offset_144(0, 0, 5), 512), [0xff; 512]);
}

#[test]
fn non_dma_read_through_the_fifo() {
    let (rig, img) = Rig::a_144();
    rig.init();
    rig.pio_mode();
    rig.seek(0, 0, 4);
    let raises = rig.irq.raises();
    rig.cmd(&[READ, 0x00, 4, 0, 2, 2, 3, 0x1b, 0xff]);
    assert_eq!(rig.inb(MSR), 0xf0, "RQM, DIO, NDMA, CB");
    assert!(rig.irq.level(), "INT asks for service");
    let mut got = Vec::new();
    while rig.inb(MSR) & 0xe0 == 0xe0 {
        got.push(rig.inb(FIFO));
    }
    assert_eq!(got, img.bytes(offset_144(4, 0, 2), 1024));
    assert_eq!(rig.irq.raises(), raises + 1, "INT stays up through the execution phase into the result");
    assert_eq!(rig.results(), [0x40, 0x80, 0, 5, 0, 1, 2], "no terminal count in non-DMA mode: EN at EOT");
    assert!(!rig.irq.level());
}

#[test]
fn non_dma_write_and_format_through_the_fifo() {
    let (rig, img) = Rig::a_144();
    rig.init();
    rig.pio_mode();
    rig.seek(0, 0, 6);
    rig.cmd(&[WRITE, 0x04, 6, 1, 7, 2, 7, 0x1b, 0xff]);
    assert_eq!(rig.inb(MSR), 0xb0, "RQM, NDMA, CB; host to controller");
    for i in 0..512u32 {
        rig.outb(FIFO, (i * 3) as u8);
    }
    assert_eq!(rig.results(), [0x44, 0x80, 0, 7, 0, 1, 2], "MT past head 1's EOT: C+1, H flipped");
    let want: Vec<u8> = (0..512u32).map(|i| (i * 3) as u8).collect();
    assert_eq!(img.bytes(offset_144(6, 1, 7), 512), want);
    // FORMAT TRACK, interleaved IDs, through the FIFO.
    rig.cmd(&[0x4d, 0x00, 2, 18, 0x54, 0xe5]);
    assert_eq!(rig.inb(MSR), 0xb0);
    for i in 0..18u8 {
        let r = (i * 2) % 18 + 1 + u8::from(i >= 9);
        for b in [6, 0, r, 2] {
            rig.outb(FIFO, b);
        }
    }
    let result = rig.results();
    assert_eq!(result[..3], [0x00, 0, 0]);
    assert!(img.bytes(offset_144(6, 0, 1), 18 * 512).iter().all(|&b| b == 0xe5));
    assert_eq!(img.bytes(offset_144(6, 1, 1), 16), (offset_144(6, 1, 1)..).take(16).map(pattern).collect::<Vec<_>>());
    rig.cmd(&[0x0e]);
    assert_eq!(rig.results()[6], 18, "DUMPREG's SC");
}

#[test]
fn format_track_over_dma() {
    let (rig, img) = Rig::a_144();
    rig.init();
    rig.seek(0, 0, 9);
    let ids: Vec<u8> = (1..=18u8).flat_map(|r| [9, 1, r, 2]).collect();
    rig.mem.write(0x7000, &ids).unwrap();
    rig.dma(0x7000, ids.len() as u32, FROM_MEMORY);
    rig.cmd(&[0x4d, 0x04, 2, 18, 0x54, 0x00]);
    assert_eq!(rig.results(), [0x04, 0, 0, 9, 1, 18, 2]);
    assert!(img.bytes(offset_144(9, 1, 1), 18 * 512).iter().all(|&b| b == 0));
    // IDs a flat image cannot hold are skipped, the others written.
    let ids = [9, 0, 1, 2, 12, 0, 2, 2, 9, 0, 3, 3, 9, 0, 40, 2];
    rig.mem.write(0x7000, &ids).unwrap();
    rig.dma(0x7000, 16, FROM_MEMORY);
    rig.cmd(&[0x4d, 0x00, 2, 4, 0x54, 0xaa]);
    assert_eq!(rig.results()[..3], [0x00, 0, 0]);
    assert_eq!(img.bytes(offset_144(9, 0, 1), 4), [0xaa; 4]);
    assert_ne!(img.bytes(offset_144(9, 0, 2), 4), [0xaa; 4]);
    assert_eq!(rig.fdc.lock().stats().writes, 2);
}

#[test]
fn a_write_protected_disk() {
    let img = TestImage::new(FloppyFormat::Kb1440).read_only();
    let rig = Rig::new([FloppyDrive::Disk(img.backend()), FloppyDrive::Absent]);
    rig.init();
    rig.cmd(&[0x04, 0x00]);
    assert_eq!(rig.results(), [0x78], "ST3: WP, RDY, T0, two-sided");
    rig.dma(0x2_0000, 512, FROM_MEMORY);
    assert_eq!(rig.rw(WRITE, 0, 0, 1, 18), [0x40, 0x02, 0, 0, 0, 1, 2]);
    rig.cmd(&[0x4d, 0x00, 2, 18, 0x54, 0xe5]);
    assert_eq!(rig.results()[..2], [0x40, 0x02]);
    assert_eq!(img.bytes(0, 512), (0..512).map(pattern).collect::<Vec<_>>());
    rig.dma(0x2_0000, 512, TO_MEMORY);
    assert_eq!(rig.rw(READ, 0, 0, 1, 1), [0x00, 0, 0, 1, 0, 1, 2], "reads work");
    // An empty drive reports write protection too.
    let rig = Rig::new([FloppyDrive::Empty(FloppyFormat::Kb1440), FloppyDrive::Absent]);
    rig.init();
    rig.cmd(&[0x04, 0x00]);
    assert_eq!(rig.results(), [0x78]);
    rig.cmd(&[0x04, 0x01]);
    assert_eq!(rig.results(), [0x29], "no drive B:");
}

#[test]
fn image_errors_end_with_a_data_error() {
    let (rig, img) = Rig::a_144();
    rig.init();
    img.0.lock().fail_reads = true;
    rig.dma(0x2_0000, 512, TO_MEMORY);
    assert_eq!(rig.rw(READ, 0, 0, 1, 18), [0x40, 0x20, 0x20, 0, 0, 1, 2]);
    img.0.lock().fail_writes = true;
    rig.dma(0x2_0000, 512, FROM_MEMORY);
    assert_eq!(rig.rw(WRITE, 0, 0, 1, 18), [0x40, 0x20, 0, 0, 0, 1, 2]);
    rig.pio_mode();
    rig.cmd(&[READ, 0x00, 0, 0, 1, 2, 18, 0x1b, 0xff]);
    assert_eq!(rig.results()[..3], [0x40, 0x20, 0x20]);
    assert_eq!(rig.fdc.lock().stats().errors, 3);
}

#[test]
fn implied_seek_and_the_other_formats() {
    let img = TestImage::new(FloppyFormat::Kb2880);
    let small = TestImage::new(FloppyFormat::Kb360);
    let rig = Rig::new([FloppyDrive::Disk(img.backend()), FloppyDrive::Disk(small.backend())]);
    rig.init();
    rig.cmd(&[0x13, 0x00, 0x50, 0x00]);
    rig.outb(DIR, 0x03);
    rig.dma(0x2_0000, 2 * 512, TO_MEMORY);
    assert_eq!(rig.rw(READ_MT, 10, 0, 36, 36), [0x24, 0, 0, 10, 1, 2, 2], "SE: the implied seek moved the head");
    let off = |c: u64, h: u64, r: u64| ((c * 2 + h) * 36 + r - 1) * 512;
    assert_eq!(rig.memory(0x2_0000, 512), img.bytes(off(10, 0, 36), 512));
    assert_eq!(rig.memory(0x2_0200, 512), img.bytes(off(10, 1, 1), 512));
    rig.cmd(&[0x0e]);
    assert_eq!(rig.results()[0], 10, "PCN follows the implied seek");
    // On the cylinder already: no seek, no SE.
    rig.dma(0x2_0000, 512, TO_MEMORY);
    assert_eq!(rig.rw(READ, 10, 0, 1, 36), [0x00, 0, 0, 10, 0, 2, 2]);
}

#[test]
fn a_360k_disk_reads_at_300_or_250_kbps() {
    let small = TestImage::new(FloppyFormat::Kb360);
    let rig = Rig::new([FloppyDrive::Absent, FloppyDrive::Disk(small.backend())]);
    rig.init();
    for rate in [1, 2] {
        rig.outb(DIR, rate);
        rig.dma(0x2_0000, 512, TO_MEMORY);
        rig.cmd(&[READ, 0x01, 0, 0, 9, 2, 9, 0x1b, 0xff]);
        assert_eq!(rig.results(), [0x01, 0, 0, 1, 0, 1, 2], "rate {rate}");
        assert_eq!(rig.memory(0x2_0000, 512), small.bytes(8 * 512, 512));
    }
    rig.outb(DIR, 0);
    rig.cmd(&[0x4a, 0x01]);
    assert_eq!(rig.results()[..2], [0x41, 0x01]);
    assert_eq!(rig.seek(1, 0, 45), [0x21, 45]);
    assert_eq!(rig.fdc.lock().save().drives[1].track, 39, "a 40-cylinder drive");
}
