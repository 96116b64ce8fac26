//! Saved state: round trips in the middle of transfers, and refusals.

use ::persist::Persist;

use super::*;

/// A rig over the same images as a fresh machine would have them.
fn same_drives(disk: &TestImage, cd: Option<&TestImage>) -> Rig {
    Rig::new([
        IdeDrive::Disk(disk.backend(), "SN-TEST-1".into()),
        IdeDrive::Empty,
        IdeDrive::Cdrom(cd.map(TestImage::backend)),
        IdeDrive::Empty,
    ])
}

#[test]
fn a_state_saved_in_a_pio_read_resumes() {
    let disk = TestImage::new(2048 * 512);
    let mut rig = same_drives(&disk, None);
    rig.lba28(0, 0, 20, 4);
    rig.command(0, 0x20);
    let mut got = rig.read_data(0, 700);
    let state = rig.ide.save();
    let mut other = same_drives(&disk, None);
    other.ide.restore(&state).unwrap();
    assert_eq!(other.ide.save(), state);
    assert!(other.irqs[0].level(), "the second block's interrupt is pending");
    got.extend(other.read_data(0, 2048 - 700));
    assert_eq!(got, disk.bytes(20 * 512, 2048));
    assert_eq!(other.status(0), 0x50);
    // The original goes on the same way.
    assert_eq!(rig.read_data(0, 2048 - 700), disk.bytes(20 * 512 + 700, 2048 - 700));
}

#[test]
fn a_state_saved_in_a_multiple_write_resumes() {
    let disk = TestImage::new(2048 * 512);
    let mut rig = same_drives(&disk, None);
    rig.outb(0x1f2, 4);
    rig.command(0, 0xc6);
    let data: Vec<u8> = (0..6 * 512).map(|i| (i * 5 + 9) as u8).collect();
    rig.lba28(0, 0, 50, 6);
    rig.command(0, 0xc5);
    rig.write_data(0, &data[..2048 + 300]);
    let state = rig.ide.save();
    let mut other = same_drives(&disk, None);
    ::persist::assert_round_trip(&rig.ide, &mut other.ide);
    other.write_data(0, &data[2048 + 300..]);
    assert_eq!(other.status(0), 0x50);
    assert_eq!(disk.bytes(50 * 512, data.len()), data);
    assert_eq!(state.channels[0].drives[0].settings.multiple, 4);
}

#[test]
fn a_state_saved_in_a_packet_chunk_resumes() {
    let disk = TestImage::new(2048 * 512);
    let cd = TestImage::new(100 * 2048);
    let mut rig = same_drives(&disk, Some(&cd));
    rig.send_packet(1, 0, &[0x28, 0, 0, 0, 0, 9, 0, 0, 3], 1000);
    let mut got = rig.read_data(1, 600);
    let state = rig.ide.save();
    let mut other = same_drives(&disk, Some(&cd));
    other.ide.restore(&state).unwrap();
    got.extend(other.read_data(1, 400));
    let r = other.collect(1, got);
    assert_eq!((r.status, r.reason), (0x40, 0x03));
    assert_eq!(r.data, cd.bytes(9 * 2048, 3 * 2048));
    // A packet not yet all written, too.
    let mut other = same_drives(&disk, Some(&cd));
    rig.select(1, 0);
    rig.outb(0x171, 0);
    rig.command(1, 0xa0);
    rig.write_data(1, &[0x25, 0, 0, 0]);
    other.ide.restore(&rig.ide.save()).unwrap();
    other.write_data(1, &[0; 8]);
    let r = other.collect(1, Vec::new());
    assert_eq!(r.data, [0, 0, 0, 99, 0, 0, 8, 0], "READ CAPACITY, its packet split by the save");
}

#[test]
fn a_state_saved_while_dma_waits_resumes() {
    let disk = TestImage::new(2048 * 512);
    let mut rig = same_drives(&disk, None);
    rig.prd(0x1000, &[(0x10_000, 2048, true)]);
    rig.bm_setup(0, 0x1000, true);
    rig.lba28(0, 0, 30, 4);
    rig.command(0, 0xc8);
    let state = rig.ide.save();
    let mut other = same_drives(&disk, None);
    other.prd(0x1000, &[(0x10_000, 2048, true)]);
    other.ide.restore(&state).unwrap();
    other.bm_start(0);
    assert_eq!((other.bm_status(0), other.status(0)), (0x04, 0x50));
    let mut got = vec![0u8; 2048];
    other.mem.read(0x10_000, &mut got).unwrap();
    assert_eq!(got, disk.bytes(30 * 512, 2048));
}

#[test]
fn other_drives_refuse_the_state() {
    let disk = TestImage::new(2048 * 512);
    let cd = TestImage::new(100 * 2048);
    let rig = same_drives(&disk, Some(&cd));
    let state = rig.ide.save();
    let bigger = TestImage::new(4096 * 512);
    let read_only = TestImage::new(2048 * 512);
    read_only.0.lock().read_only = true;
    let other_cd = TestImage::new(50 * 2048);
    let cases = [
        same_drives(&bigger, Some(&cd)),
        same_drives(&read_only, Some(&cd)),
        same_drives(&disk, None),
        same_drives(&disk, Some(&other_cd)),
        Rig::new([IdeDrive::Cdrom(None), IdeDrive::Empty, IdeDrive::Cdrom(Some(cd.backend())), IdeDrive::Empty]),
        Rig::new([
            IdeDrive::Disk(disk.backend(), "x".into()),
            IdeDrive::Disk(disk.backend(), "y".into()),
            IdeDrive::Cdrom(Some(cd.backend())),
            IdeDrive::Empty,
        ]),
    ];
    for mut other in cases {
        let e = ::persist::assert_refused(&mut other.ide, &state);
        assert_eq!((e.part, e.field), ("PIIX3 IDE", "drives"), "{e}");
    }
}

#[test]
fn corrupt_states_are_refused() {
    let disk = TestImage::new(2048 * 512);
    let cd = TestImage::new(100 * 2048);
    let mut rig = same_drives(&disk, Some(&cd));
    rig.lba28(0, 0, 20, 4);
    rig.command(0, 0x20);
    rig.send_packet(1, 0, &[0x28, 0, 0, 0, 0, 9, 0, 0, 3], 1000);
    let good = rig.ide.save();
    let mut target = same_drives(&disk, Some(&cd));
    type Corrupt = fn(&mut IdeState);
    let cases: [(&str, Corrupt); 18] = [
        ("bytes", |s| s.config.bytes[2] ^= 1),
        ("config", |s| s.config.bytes[PCI_COMMAND] = 0x02),
        ("channels", |s| {
            s.channels.pop();
        }),
        ("drives", |s| {
            let extra = s.channels[0].drives[1].clone();
            s.channels[0].drives.push(extra);
        }),
        ("control", |s| s.channels[0].control = 0x08),
        ("selected", |s| s.channels[1].selected = 2),
        ("bus_master", |s| s.channels[0].bus_master.command = 0x10),
        ("bus_master", |s| s.channels[0].bus_master.prdt = 0x1002),
        ("bus_master", |s| s.channels[1].bus_master.status = 0x80),
        ("pos", |s| s.channels[0].drives[0].pos = 600),
        ("buffer", |s| s.channels[0].drives[0].buffer = vec![0; MAX_BUFFER + 1]),
        ("settings", |s| s.channels[0].drives[0].settings.multiple = 3),
        ("settings", |s| s.channels[0].drives[0].settings.dma_mode = 0x30),
        ("atapi", |s| s.channels[1].drives[0].atapi.sense_key = 0x10),
        ("transfer", |s| {
            s.channels[0].drives[0].transfer =
                Transfer::PioIn(PioNext::ReadSectors { lba: 2040, remaining: 20, block: 1, mode: AddrMode::Lba28 })
        }),
        ("transfer", |s| s.channels[0].drives[0].transfer = Transfer::PioOut(PioNext::Packet { dma: false, limit: 0 })),
        ("transfer", |s| {
            s.channels[1].drives[0].transfer =
                Transfer::Dma(DmaJob::Atapi { left: 2048, source: AtapiSource { lba: 100, sectors: 1 } })
        }),
        ("transfer", |s| {
            s.channels[0].drives[1].transfer =
                Transfer::Dma(DmaJob::ReadSectors { lba: 0, count: 1, mode: AddrMode::Lba28 })
        }),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = ::persist::assert_refused(&mut target.ide, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    target.ide.restore(&good).unwrap();
}

#[test]
fn a_reset_returns_to_power_on() {
    let disk = TestImage::new(2048 * 512);
    let cd = TestImage::new(100 * 2048);
    let mut rig = same_drives(&disk, Some(&cd));
    rig.outb(0x1f2, 8);
    rig.command(0, 0xc6);
    rig.packet(1, 0, &[0x1e, 0, 0, 0, 1], 0xfffe);
    rig.lba28(0, 0, 0, 1);
    rig.command(0, 0x20);
    rig.ide.reset();
    assert!(!rig.irqs[0].level());
    let fresh = IdeController::new(
        [
            IdeDrive::Disk(disk.backend(), "SN-TEST-1".into()),
            IdeDrive::Empty,
            IdeDrive::Cdrom(Some(cd.backend())),
            IdeDrive::Empty,
        ],
        Arc::new(crate::irq::NoIrq),
        Arc::new(crate::irq::NoIrq),
        rig.mem.clone(),
    );
    let (mut a, mut b) = (rig.ide.save(), fresh.save());
    b.config = a.config.clone();
    for s in [&mut a, &mut b] {
        for c in &mut s.channels {
            for d in &mut c.drives {
                d.stats = IdeStats::default();
            }
        }
    }
    assert_eq!(a, b);
    assert!(!rig.ide.medium_locked(IdeSlot::SecondaryMaster));
}

#[test]
fn the_fuzz_entry_points_survive_pseudo_random_inputs() {
    // A PACKET READ(10), drained; a DMA READ with a table; a media change.
    let atapi_seed: &[u8] =
        &[0, 0, 0xfe, 0xff, 7, 0, 0, 0, 0, 2, 0, 0, 4, 0, 0, 0, 0, 0, 0xff, 0x0f, 5, 3, 20, 0, 0, 0, 4];
    let prd_seed: &[u8] = &[0, 0, 1, 2, 0, 0, 0x10, 0x00, 0x04, 1, 2, 0, 5, 4, 3, 1, 5, 6, 0, 0, 0x10, 8];
    for input in crate::fuzz::pseudo_random_inputs(0x1de1, 2000, 1024, &[atapi_seed]) {
        fuzz_atapi_packets(&input);
    }
    for input in crate::fuzz::pseudo_random_inputs(0x1de2, 2000, 1024, &[prd_seed]) {
        fuzz_prd_tables(&input);
    }
    assert!(fuzz_atapi_packets(atapi_seed).reads > 0, "the seed reads the medium");
}
