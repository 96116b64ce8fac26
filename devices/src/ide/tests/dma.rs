//! The bus master: PRD tables, good and hostile.

use super::*;

fn mem_bytes(rig: &Rig, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rig.mem.read(at, &mut v).unwrap();
    v
}

#[test]
fn dma_reads_and_writes_through_several_regions() {
    let (mut rig, img) = Rig::disk(2048);
    rig.prd(0x1000, &[(0x10_000, 1024, false), (0x20_000, 2048, false), (0x30_000, 1024, true)]);
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 5, 8);
    rig.command(0, 0xc8);
    assert_eq!(rig.alt_status(0), 0x58, "the device waits for the bus master");
    assert!(!rig.irqs[0].level());
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x04, "done: interrupt, not active, no error");
    assert!(rig.irqs[0].level());
    rig.bm_stop(0);
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(rig.reg(0, 3), 12, "the last sector");
    assert_eq!(mem_bytes(&rig, 0x10_000, 1024), img.bytes(5 * 512, 1024));
    assert_eq!(mem_bytes(&rig, 0x20_000, 2048), img.bytes(7 * 512, 2048));
    assert_eq!(mem_bytes(&rig, 0x30_000, 1024), img.bytes(11 * 512, 1024));
    // WRITE DMA, with the bus master started before the command.
    let data: Vec<u8> = (0..4096).map(|i| (i * 31 + 7) as u8).collect();
    rig.mem.write(0x10_000, &data[..1024]).unwrap();
    rig.mem.write(0x20_000, &data[1024..3072]).unwrap();
    rig.mem.write(0x30_000, &data[3072..]).unwrap();
    rig.bm_setup(0, 0x1000, false);
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x01, "active, waiting for the device");
    rig.lba28(0, 0, 100, 8);
    rig.command(0, 0xca);
    assert_eq!(rig.bm_status(0), 0x04);
    rig.bm_stop(0);
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(img.bytes(100 * 512, 4096), data);
    let s = rig.ide.stats();
    assert_eq!((s.reads, s.read_bytes, s.writes, s.write_bytes, s.errors), (1, 4096, 1, 4096, 0));
}

#[test]
fn a_zero_byte_count_is_64_kib_and_ext_commands_take_dma() {
    let (mut rig, img) = Rig::disk(4096);
    rig.prd(0x2000, &[(0x10_0000, 0, false), (0x20_0000, 0, true)]);
    rig.bm_setup(0, 0x2000, true);
    rig.lba48(0, 0, 1000, 256);
    rig.command(0, 0x25);
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x04);
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(mem_bytes(&rig, 0x10_0000, 0x1_0000), img.bytes(1000 * 512, 0x1_0000));
    assert_eq!(mem_bytes(&rig, 0x20_0000, 0x1_0000), img.bytes(1128 * 512, 0x1_0000));
    // WRITE DMA EXT back from the first region to sector 3000.
    rig.bm_stop(0);
    rig.prd(0x2000, &[(0x10_0000, 0x400, true)]);
    rig.bm_setup(0, 0x2000, false);
    rig.lba48(0, 0, 3000, 2);
    rig.command(0, 0x35);
    rig.bm_start(0);
    assert_eq!((rig.bm_status(0), rig.status(0)), (0x04, 0x50));
    assert_eq!(img.bytes(3000 * 512, 1024), img.bytes(1000 * 512, 1024));
}

#[test]
fn a_larger_table_leaves_the_engine_active() {
    let (mut rig, img) = Rig::disk(2048);
    rig.prd(0x1000, &[(0x10_000, 0x2000, true)]);
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 0, 8);
    rig.command(0, 0xc8);
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x05, "interrupt and still active: the table was larger");
    assert_eq!(rig.status(0), 0x50);
    assert_eq!(mem_bytes(&rig, 0x10_000, 4096), img.bytes(0, 4096));
    rig.bm_stop(0);
    assert_eq!(rig.bm_status(0), 0x04);
}

#[test]
fn a_short_table_stops_without_an_interrupt() {
    let (mut rig, img) = Rig::disk(2048);
    rig.prd(0x1000, &[(0x10_000, 1024, true)]);
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 0, 4);
    rig.command(0, 0xc8);
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x00, "neither active nor interrupt nor error: the table was short");
    assert!(!rig.irqs[0].level());
    assert_eq!((rig.alt_status(0), rig.error(0)), (0x51, 0x04), "the device gave up");
    assert_eq!(mem_bytes(&rig, 0x10_000, 1024), img.bytes(0, 1024));
    assert_eq!(rig.ide.stats().errors, 1);
}

#[test]
fn a_transfer_larger_than_one_image_access_moves_every_sector() {
    let (mut rig, img) = Rig::disk(16384);
    // 2 MiB in 32 regions of 64 KiB (a byte count of 0), two image accesses.
    let entries: Vec<(u32, u32, bool)> = (0..32).map(|i| (0x10_0000 + 0x1_0000 * i, 0, i == 31)).collect();
    rig.prd(0x1000, &entries);
    rig.bm_setup(0, 0x1000, true);
    rig.lba48(0, 0, 100, 4096);
    rig.command(0, 0x25);
    rig.bm_start(0);
    assert_eq!((rig.bm_status(0), rig.status(0)), (0x04, 0x50));
    assert_eq!(mem_bytes(&rig, 0x10_0000, 2 << 20), img.bytes(100 * 512, 2 << 20));
    assert_eq!(rig.reg(0, 3), (100 + 4095) as u8, "the last sector");
    rig.bm_stop(0);
    // Back to sector 9000.
    rig.bm_setup(0, 0x1000, false);
    rig.lba48(0, 0, 9000, 4096);
    rig.command(0, 0x35);
    rig.bm_start(0);
    assert_eq!((rig.bm_status(0), rig.status(0)), (0x04, 0x50));
    assert_eq!(img.bytes(9000 * 512, 2 << 20), img.bytes(100 * 512, 2 << 20));
    let s = rig.ide.stats();
    assert_eq!((s.read_bytes, s.write_bytes, s.errors), (2 << 20, 2 << 20, 0));
}

#[test]
fn a_failed_transfer_stops_at_the_first_sector_not_moved() {
    let (mut rig, img) = Rig::disk(2048);
    // 1.5 sectors of RAM, then a region past its end.
    let table = [(0x10_000, 768, false), (RAM as u32 - 256, 1024, true)];
    rig.prd(0x1000, &table);
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 40, 4);
    rig.command(0, 0xc8);
    rig.bm_start(0);
    assert_eq!((rig.bm_status(0), rig.status(0), rig.error(0)), (0x06, 0x51, 0x04));
    assert_eq!(rig.reg(0, 3), 41, "sector 40 was moved, 41 was not");
    assert_eq!(mem_bytes(&rig, 0x10_000, 768), img.bytes(40 * 512, 768));
    rig.bm_stop(0);
    // A write through the same table: the whole sector the table gave
    // reaches the image, the rest does not.
    let data: Vec<u8> = (0..768).map(|i| (i * 13 + 1) as u8).collect();
    rig.mem.write(0x10_000, &data).unwrap();
    rig.bm_setup(0, 0x1000, false);
    rig.lba28(0, 0, 200, 4);
    rig.command(0, 0xca);
    rig.bm_start(0);
    assert_eq!((rig.bm_status(0), rig.status(0), rig.error(0)), (0x06, 0x51, 0x04));
    assert_eq!(rig.reg(0, 3), 201);
    assert_eq!(img.bytes(200 * 512, 512), data[..512]);
    assert_eq!(img.bytes(201 * 512, 1536), (201 * 512..204 * 512).map(pattern).collect::<Vec<_>>());
    let s = rig.ide.stats();
    assert_eq!((s.write_bytes, s.errors), (512, 2));
}

#[test]
fn regions_outside_ram_are_bus_errors() {
    let (mut rig, img) = Rig::disk(2048);
    let cases: [&[(u32, u32, bool)]; 3] = [
        &[(0xf000_0000, 1024, true)],
        &[(0x10_000, 512, false), (RAM as u32 - 256, 1024, true)],
        &[(0xffff_fffe, 2, false), (0x10_000, 2046, true)],
    ];
    for (i, entries) in cases.into_iter().enumerate() {
        rig.prd(0x1000, entries);
        rig.bm_setup(0, 0x1000, true);
        rig.lba28(0, 0, 0, 2);
        rig.command(0, 0xc8);
        rig.bm_start(0);
        assert_eq!(rig.bm_status(0), 0x06, "case {i}: error and interrupt, not active");
        assert!(rig.irqs[0].level());
        assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x04), "case {i}");
        rig.bm_stop(0);
    }
    // A write from outside RAM leaves the image alone.
    rig.prd(0x1000, &[(0x8000_0000, 1024, true)]);
    rig.bm_setup(0, 0x1000, false);
    rig.lba28(0, 0, 9, 2);
    rig.command(0, 0xca);
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x06);
    assert_eq!(img.bytes(9 * 512, 1024), (9 * 512..11 * 512).map(pattern).collect::<Vec<_>>());
}

#[test]
fn hostile_tables_are_bus_errors() {
    let (mut rig, _) = Rig::disk(2048);
    fn run(rig: &mut Rig, table: u32, what: &str) {
        rig.bm_setup(0, table, true);
        rig.lba28(0, 0, 0, 2);
        rig.command(0, 0xc8);
        rig.bm_start(0);
        assert_eq!(rig.bm_status(0), 0x06, "{what}");
        assert_eq!(rig.status(0), 0x51, "{what}");
        rig.bm_stop(0);
    }
    run(&mut rig, 0xe000_0000, "a table outside RAM");
    // No EOT, and the next entry lies past the end of RAM.
    let table = RAM - 8;
    rig.prd(table, &[(0x10_000, 512, false)]);
    run(&mut rig, table as u32, "a table running off the end of RAM");
    // No EOT, and the next entry lies past the table's 64 KiB page.
    rig.prd(0x1_fff8, &[(0x10_000, 512, false)]);
    rig.prd(0x2_0000, &[(0x10_200, 512, true)]);
    run(&mut rig, 0x1_fff8, "a table crossing 64 KiB");
    // The table register ignores bits 1:0.
    rig.outl(BM + 4, 0x1003);
    assert_eq!(rig.inl(BM + 4), 0x1000);
    // Entries of 2 bytes walk many regions: fine.
    let entries: Vec<(u32, u32, bool)> = (0..512).map(|i| (0x40_000 + 2 * i, 2, i == 511)).collect();
    rig.prd(0x8000, &entries);
    rig.bm_setup(0, 0x8000, true);
    rig.lba28(0, 0, 0, 2);
    rig.command(0, 0xc8);
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x04);
    assert_eq!(mem_bytes(&rig, 0x40_000, 1024), (0..1024).map(pattern).collect::<Vec<_>>());
}

#[test]
fn the_direction_must_match_the_command() {
    let (mut rig, img) = Rig::disk(2048);
    rig.prd(0x1000, &[(0x10_000, 1024, true)]);
    rig.bm_setup(0, 0x1000, false);
    rig.lba28(0, 0, 0, 2);
    rig.command(0, 0xc8);
    rig.bm_start(0);
    assert_eq!((rig.bm_status(0), rig.status(0), rig.error(0)), (0x06, 0x51, 0x04));
    rig.bm_stop(0);
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 0, 2);
    rig.command(0, 0xca);
    rig.bm_start(0);
    assert_eq!((rig.bm_status(0), rig.status(0)), (0x06, 0x51));
    assert_eq!(img.bytes(0, 1024), (0..1024).map(pattern).collect::<Vec<_>>());
}

#[test]
fn dma_needs_bus_mastering_and_a_reset_abandons_it() {
    let (mut rig, img) = Rig::disk(2048);
    rig.ide.write_config(PCI_COMMAND, &[0x01, 0]);
    rig.prd(0x1000, &[(0x10_000, 1024, true)]);
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 0, 2);
    rig.command(0, 0xc8);
    rig.bm_start(0);
    assert_eq!((rig.bm_status(0), rig.alt_status(0)), (0x01, 0x58), "the function may not master the bus");
    rig.ide.write_config(PCI_COMMAND, &[0x05, 0]);
    assert_eq!((rig.bm_status(0), rig.alt_status(0)), (0x04, 0x50), "it runs once it may");
    assert_eq!(mem_bytes(&rig, 0x10_000, 1024), img.bytes(0, 1024));
    rig.bm_stop(0);
    // Stopping the engine before the command: the device waits.
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 4, 2);
    rig.command(0, 0xc8);
    assert_eq!((rig.bm_status(0), rig.alt_status(0)), (0x00, 0x58));
    // SRST abandons a command that waits for the engine.
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x04);
    rig.bm_stop(0);
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 4, 2);
    rig.command(0, 0xc8);
    rig.outb(0x3f6, 0x04);
    rig.outb(0x3f6, 0x00);
    assert_eq!(rig.status(0), 0x50);
    rig.bm_start(0);
    assert_eq!(rig.bm_status(0), 0x01, "active, with nothing to run");
    assert_eq!(rig.alt_status(0), 0x50);
}

#[test]
fn bus_master_registers_take_any_access_size() {
    let (mut rig, _) = Rig::disk(16);
    rig.outl(BM + 8 + 4, 0x0012_3456);
    assert_eq!(rig.inl(BM + 12), 0x0012_3454);
    assert_eq!(rig.inw(BM + 12), 0x3454);
    assert_eq!(rig.inb(BM + 14), 0x12);
    rig.outb(BM + 8 + 2, 0xff);
    assert_eq!(rig.inb(BM + 10), 0x60, "only the capable bits are writable");
    rig.outb(BM + 8, 0xff);
    assert_eq!(rig.inb(BM + 8), 0x09);
    assert_eq!(rig.inb(BM + 10), 0x61, "started: active");
    assert_eq!(rig.inl(BM + 8), 0x0061_0009);
    assert_eq!((rig.inb(BM + 9), rig.inb(BM + 11)), (0, 0));
    rig.outw(BM + 8, 0x0000);
    assert_eq!(rig.inb(BM + 10), 0x60);
    assert_eq!(rig.bm_status(0), 0, "the primary is untouched");
}
