//! The CD-ROM drive: the PACKET protocol and its commands.

use super::*;

/// Sectors of the test medium.
const SECTORS: u64 = 100;

/// A disk at the primary master and a CD-ROM drive with a 100-sector
/// medium at the secondary master.
fn rig() -> (Rig, TestImage) {
    let cd = TestImage::new(SECTORS * 2048);
    let rig = Rig::new([
        IdeDrive::Disk(TestImage::new(2048 * 512).backend(), "d".into()),
        IdeDrive::Empty,
        IdeDrive::Cdrom(Some(cd.backend())),
        IdeDrive::Empty,
    ]);
    (rig, cd)
}

/// A CDB of `code` with `fields` (offset, byte) set.
fn cdb(code: u8, fields: &[(usize, u8)]) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = code;
    for &(at, v) in fields {
        c[at] = v;
    }
    c
}

fn read10(lba: u32, count: u16) -> [u8; 12] {
    let l = lba.to_be_bytes();
    let n = count.to_be_bytes();
    cdb(0x28, &[(2, l[0]), (3, l[1]), (4, l[2]), (5, l[3]), (7, n[0]), (8, n[1])])
}

/// Asserts a CHECK CONDITION with sense `want`.
fn check_condition(rig: &mut Rig, r: &PacketReply, want: (u8, u8, u8)) {
    assert_eq!((r.status & 0x89, r.error >> 4, r.reason), (0x01, want.0, 0x03), "{r:?}");
    assert_eq!(rig.sense(1, 0), want);
}

fn good(r: &PacketReply) {
    assert_eq!((r.status, r.reason), (0x40, 0x03), "{r:?}");
}

#[test]
fn identify_packet_device_and_the_ata_probes() {
    let (mut rig, _) = rig();
    rig.select(1, 0);
    rig.command(1, 0xec);
    assert_eq!((rig.status(1), rig.error(1)), (0x41, 0x04), "IDENTIFY DEVICE aborts");
    assert_eq!((rig.reg(1, 4), rig.reg(1, 5)), (0x14, 0xeb), "with the packet signature");
    let w = rig.identify(1, 0, 0xa1);
    assert_eq!(w[0], 0x85c0, "ATAPI CD-ROM, removable, accelerated DRQ, 12-byte packets");
    assert_eq!(id_string(&w, 27, 20).trim_end(), "FERROVM CD-ROM");
    assert_eq!(id_string(&w, 10, 10).trim_end(), "FVMCD0002");
    assert_eq!(w[49] & 0x0300, 0x0300);
    assert_eq!(w[63], 0x0407);
    assert_ne!(w[82] & (1 << 4), 0, "PACKET feature set");
    // The disk aborts the packet probes.
    rig.select(0, 0);
    rig.command(0, 0xa1);
    assert_eq!((rig.status(0), rig.error(0)), (0x51, 0x04));
    // Overlapped PACKET is not supported.
    rig.select(1, 0);
    rig.outb(0x171, 0x02);
    rig.command(1, 0xa0);
    assert_eq!((rig.status(1), rig.error(1)), (0x41, 0x04));
}

#[test]
fn inquiry_and_read_capacity() {
    let (mut rig, _) = rig();
    let r = rig.packet(1, 0, &cdb(0x12, &[(4, 96)]), 0xfffe);
    good(&r);
    assert_eq!(r.data.len(), 36);
    assert_eq!(&r.data[..5], &[0x05, 0x80, 0x00, 0x21, 31]);
    assert_eq!(&r.data[8..16], b"FERROVM ");
    assert_eq!(&r.data[16..32], b"FERROVM CD-ROM  ");
    let r = rig.packet(1, 0, &cdb(0x12, &[(4, 5)]), 0xfffe);
    assert_eq!(r.data.len(), 5, "cut to the allocation length");
    let r = rig.packet(1, 0, &cdb(0x12, &[(1, 1), (2, 0x80), (4, 64)]), 0xfffe);
    assert_eq!(&r.data[..4], &[0x05, 0x80, 0, 9]);
    assert_eq!(&r.data[4..], b"FVMCD0002");
    let r = rig.packet(1, 0, &cdb(0x12, &[(1, 1), (2, 0x83), (4, 64)]), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x24, 0));
    let r = rig.packet(1, 0, &cdb(0x25, &[]), 0xfffe);
    good(&r);
    assert_eq!(r.data, [0, 0, 0, 99, 0, 0, 8, 0]);
}

#[test]
fn read_10_and_12_by_pio_honour_the_byte_count_limit() {
    let (mut rig, cd) = rig();
    let r = rig.packet(1, 0, &read10(3, 3), 0xfffe);
    good(&r);
    assert_eq!(r.chunks, [6144]);
    assert_eq!(r.data, cd.bytes(3 * 2048, 6144));
    // An odd limit gives even chunks but the last.
    let r = rig.packet(1, 0, &read10(10, 2), 1001);
    good(&r);
    assert_eq!(r.chunks, [1000, 1000, 1000, 1000, 96]);
    assert_eq!(r.data, cd.bytes(10 * 2048, 4096));
    // A limit of 0 means 0xFFFE.
    let r = rig.packet(1, 0, &read10(0, 40), 0);
    assert_eq!(r.chunks, [0xfffe, 81920 - 0xfffe]);
    assert_eq!(r.data, cd.bytes(0, 81920));
    let r = rig.packet(1, 0, &cdb(0xa8, &[(5, 99), (9, 1)]), 0xfffe);
    good(&r);
    assert_eq!(r.data, cd.bytes(99 * 2048, 2048));
    let r = rig.packet(1, 0, &read10(0, 0), 0xfffe);
    good(&r);
    assert!(r.data.is_empty());
    let r = rig.packet(1, 0, &read10(99, 2), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x21, 0));
    let s = rig.ide.drive_stats(IdeSlot::SecondaryMaster);
    assert_eq!((s.reads, s.read_bytes), (4, 6144 + 4096 + 81920 + 2048));
}

#[test]
fn read_10_by_dma() {
    let (mut rig, cd) = rig();
    rig.prd(0x1000, &[(0x10_000, 0x1000, false), (0x20_000, 0x1000, true)]);
    rig.bm_setup(1, 0x1000, true);
    rig.select(1, 0);
    rig.outb(0x171, 0x01);
    rig.command(1, 0xa0);
    rig.write_data(1, &read10(7, 4));
    assert_eq!(rig.alt_status(1) & 0x08, 0x08, "waiting for the bus master");
    rig.bm_start(1);
    assert_eq!(rig.bm_status(1), 0x04, "interrupt, not active");
    rig.bm_stop(1);
    assert!(rig.irqs[1].level());
    assert_eq!((rig.status(1), rig.reg(1, 2)), (0x40, 0x03));
    let mut got = vec![0u8; 0x2000];
    rig.mem.read(0x10_000, &mut got[..0x1000]).unwrap();
    rig.mem.read(0x20_000, &mut got[0x1000..]).unwrap();
    assert_eq!(got, cd.bytes(7 * 2048, 0x2000));
    // INQUIRY by DMA too.
    rig.bm_setup(1, 0x1000, true);
    rig.command(1, 0xa0);
    rig.write_data(1, &cdb(0x12, &[(4, 36)]));
    rig.bm_start(1);
    assert_eq!(rig.bm_status(1), 0x05, "a table larger than the data leaves the engine active");
    let mut b = [0u8; 2];
    rig.mem.read(0x10_000, &mut b).unwrap();
    assert_eq!(b, [0x05, 0x80]);
}

#[test]
fn read_toc_formats() {
    let (mut rig, _) = rig();
    let r = rig.packet(1, 0, &cdb(0x43, &[(8, 0xff)]), 0xfffe);
    good(&r);
    assert_eq!(r.data, [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xaa, 0, 0, 0, 0, 100]);
    let r = rig.packet(1, 0, &cdb(0x43, &[(1, 2), (8, 0xff)]), 0xfffe);
    assert_eq!(&r.data[8..12], &[0, 0, 2, 0], "track 1 at 00:02:00");
    assert_eq!(&r.data[16..20], &[0, 0, 3, 25], "lead-out at 250 frames");
    let r = rig.packet(1, 0, &cdb(0x43, &[(6, 0xaa), (8, 0xff)]), 0xfffe);
    assert_eq!(r.data, [0, 10, 1, 1, 0, 0x14, 0xaa, 0, 0, 0, 0, 100], "from the lead-out");
    let r = rig.packet(1, 0, &cdb(0x43, &[(6, 2), (8, 0xff)]), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x24, 0));
    let r = rig.packet(1, 0, &cdb(0x43, &[(2, 1), (8, 0xff)]), 0xfffe);
    assert_eq!(r.data, [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0], "session information");
    // SFF-8020i's format in byte 9.
    let r = rig.packet(1, 0, &cdb(0x43, &[(8, 0xff), (9, 0x40)]), 0xfffe);
    assert_eq!(r.data.len(), 12);
    let r = rig.packet(1, 0, &cdb(0x43, &[(1, 2), (2, 2), (8, 0xff)]), 0xfffe);
    assert_eq!(r.data.len(), 4 + 4 * 11);
    assert_eq!(&r.data[..4], &[0, 46, 1, 1]);
    assert_eq!(&r.data[4..15], &[1, 0x14, 0, 0xa0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(&r.data[26..37], &[1, 0x14, 0, 0xa2, 0, 0, 0, 0, 0, 3, 25]);
    assert_eq!(&r.data[37..48], &[1, 0x14, 0, 1, 0, 0, 0, 0, 0, 2, 0]);
    let r = rig.packet(1, 0, &cdb(0x43, &[(2, 5), (8, 0xff)]), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x24, 0));
    let r = rig.packet(1, 0, &cdb(0x43, &[(8, 4)]), 0xfffe);
    assert_eq!(r.data, [0, 18, 1, 1], "cut to the allocation length");
}

#[test]
fn a_media_change_is_a_unit_attention() {
    let (mut rig, _) = rig();
    let fresh = TestImage::new(50 * 2048);
    let old = rig.ide.change_medium(IdeSlot::SecondaryMaster, Some(fresh.backend()), false);
    assert_eq!(old.ok().flatten().map(|m| m.size()), Some(SECTORS * 2048));
    // INQUIRY does not report it.
    good(&rig.packet(1, 0, &cdb(0x12, &[(4, 36)]), 0xfffe));
    let r = rig.packet(1, 0, &cdb(0x00, &[]), 0xfffe);
    check_condition(&mut rig, &r, (6, 0x28, 0));
    good(&rig.packet(1, 0, &cdb(0x00, &[]), 0xfffe));
    assert_eq!(rig.sense(1, 0), (0, 0, 0));
    let r = rig.packet(1, 0, &cdb(0x25, &[]), 0xfffe);
    assert_eq!(&r.data[..4], &[0, 0, 0, 49], "the new medium's capacity");
    // REQUEST SENSE right after a change reports and clears it.
    assert!(rig.ide.change_medium(IdeSlot::SecondaryMaster, Some(fresh.backend()), false).is_ok());
    assert_eq!(rig.sense(1, 0), (6, 0x28, 0));
    good(&rig.packet(1, 0, &cdb(0x00, &[]), 0xfffe));
    // The media event, once.
    let gesn = cdb(0x4a, &[(1, 1), (4, 0x10), (8, 8)]);
    let r = rig.packet(1, 0, &gesn, 0xfffe);
    assert_eq!(r.data, [0, 6, 0x04, 0x10, 2, 0x02, 0, 0], "new media, present");
    let r = rig.packet(1, 0, &gesn, 0xfffe);
    assert_eq!(r.data, [0, 6, 0x04, 0x10, 0, 0x02, 0, 0]);
}

#[test]
fn without_a_medium_the_drive_is_not_ready() {
    let (mut rig, _) = rig();
    assert!(rig.ide.eject(IdeSlot::SecondaryMaster, false).is_ok());
    assert_eq!(rig.ide.kind(IdeSlot::SecondaryMaster), DriveKind::Cdrom { medium_sectors: None });
    for c in [cdb(0x00, &[]), cdb(0x25, &[]), read10(0, 1), cdb(0x43, &[(8, 12)]), cdb(0x51, &[(8, 34)])] {
        let r = rig.packet(1, 0, &c, 0xfffe);
        check_condition(&mut rig, &r, (2, 0x3a, 0));
    }
    let r = rig.packet(1, 0, &cdb(0x46, &[(8, 8)]), 0xfffe);
    assert_eq!(&r.data[6..8], &[0, 0], "no current profile");
    let r = rig.packet(1, 0, &cdb(0x4a, &[(1, 1), (4, 0x10), (8, 8)]), 0xfffe);
    assert_eq!(&r.data[4..6], &[3, 0], "media removal, nothing present");
    let r = rig.packet(1, 0, &cdb(0x5a, &[(2, 0x2a), (8, 64)]), 0xfffe);
    assert_eq!(r.data[2], 0x70, "medium type: no disc");
    assert_eq!(
        rig.ide.change_medium(IdeSlot::PrimaryMaster, None, true).err(),
        Some(MediaError::NotCdrom { slot: IdeSlot::PrimaryMaster })
    );
}

#[test]
fn removal_can_be_prevented() {
    let (mut rig, _) = rig();
    good(&rig.packet(1, 0, &cdb(0x1e, &[(4, 1)]), 0xfffe));
    assert!(rig.ide.medium_locked(IdeSlot::SecondaryMaster));
    let r = rig.packet(1, 0, &cdb(0x1b, &[(4, 0x02)]), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x53, 0x02));
    let r = rig.packet(1, 0, &cdb(0x5a, &[(2, 0x2a), (8, 64)]), 0xfffe);
    assert_eq!(r.data[8 + 6] & 0x03, 0x03, "page 2Ah: lock supported and locked");
    let err = rig.ide.change_medium(IdeSlot::SecondaryMaster, None, false).err();
    assert_eq!(err, Some(MediaError::Locked { slot: IdeSlot::SecondaryMaster }));
    let r = rig.packet(1, 0, &cdb(0x4a, &[(1, 1), (4, 0x10), (8, 8)]), 0xfffe);
    assert_eq!(r.data[4], 1, "the guest is asked to eject");
    good(&rig.packet(1, 0, &cdb(0x00, &[]), 0xfffe));
    // Allowed again: the tray opens and closes.
    good(&rig.packet(1, 0, &cdb(0x1e, &[(4, 0)]), 0xfffe));
    good(&rig.packet(1, 0, &cdb(0x1b, &[(4, 0x02)]), 0xfffe));
    let r = rig.packet(1, 0, &cdb(0x00, &[]), 0xfffe);
    check_condition(&mut rig, &r, (2, 0x3a, 0x02));
    let r = rig.packet(1, 0, &cdb(0xbd, &[(9, 8)]), 0xfffe);
    assert_eq!(r.data, [0, 0x10, 0, 0, 0, 0, 0, 0], "MECHANISM STATUS: door open");
    good(&rig.packet(1, 0, &cdb(0x1b, &[(4, 0x03)]), 0xfffe));
    let r = rig.packet(1, 0, &cdb(0x00, &[]), 0xfffe);
    check_condition(&mut rig, &r, (6, 0x28, 0));
    // A forced change ignores the lock.
    good(&rig.packet(1, 0, &cdb(0x1e, &[(4, 1)]), 0xfffe));
    assert!(rig.ide.eject(IdeSlot::SecondaryMaster, true).is_ok_and(|m| m.is_some()));
}

#[test]
fn configuration_mode_pages_and_disc_information() {
    let (mut rig, _) = rig();
    let r = rig.packet(1, 0, &cdb(0x46, &[(8, 0xff)]), 0xfffe);
    good(&r);
    assert_eq!(&r.data[6..8], &[0x00, 0x08], "current profile: CD-ROM");
    let len = u32::from_be_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]) as usize;
    assert_eq!(len + 4, r.data.len());
    assert_eq!(&r.data[8..16], &[0, 0, 0x03, 4, 0x00, 0x08, 1, 0], "profile list: CD-ROM, current");
    let numbers: Vec<u16> = {
        let mut at = 8;
        let mut v = Vec::new();
        while at < r.data.len() {
            v.push(u16::from_be_bytes([r.data[at], r.data[at + 1]]));
            at += 4 + usize::from(r.data[at + 3]);
        }
        v
    };
    assert_eq!(numbers, [0x0000, 0x0001, 0x0002, 0x0003, 0x0010, 0x001e]);
    let r = rig.packet(1, 0, &cdb(0x46, &[(1, 2), (3, 3), (8, 0xff)]), 0xfffe);
    assert_eq!(&r.data[8..], &[0, 3, 0x03, 4, 0x29, 0, 0, 0], "one feature: removable medium");
    let r = rig.packet(1, 0, &cdb(0x46, &[(1, 3)]), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x24, 0));
    // MODE SENSE (10) and (6).
    let r = rig.packet(1, 0, &cdb(0x5a, &[(2, 0x2a), (8, 0xff)]), 0xfffe);
    good(&r);
    assert_eq!(r.data.len(), 8 + 22);
    assert_eq!((r.data[1], r.data[2], r.data[8], r.data[9]), (28, 0x01, 0x2a, 0x14));
    assert_eq!(r.data[8 + 6] & 0x08, 0x08, "eject supported");
    let r = rig.packet(1, 0, &cdb(0x5a, &[(2, 0x3f), (8, 0xff)]), 0xfffe);
    assert_eq!(r.data.len(), 8 + 8 + 8 + 22);
    assert_eq!((r.data[8], r.data[16], r.data[24]), (0x01, 0x0d, 0x2a));
    let r = rig.packet(1, 0, &cdb(0x5a, &[(2, 0x40 | 0x01), (8, 0xff)]), 0xfffe);
    assert_eq!(&r.data[8..], &[0x01, 0x06, 0, 0, 0, 0, 0, 0], "nothing is changeable");
    let r = rig.packet(1, 0, &cdb(0x1a, &[(2, 0x01), (4, 0xff)]), 0xfffe);
    assert_eq!(&r.data[..4], &[11, 0x01, 0, 0]);
    for (page, sense) in [(0xc0 | 0x2a, (5, 0x39, 0)), (0x05, (5, 0x24, 0))] {
        let r = rig.packet(1, 0, &cdb(0x5a, &[(2, page), (8, 0xff)]), 0xfffe);
        check_condition(&mut rig, &r, sense);
    }
    // GET EVENT STATUS NOTIFICATION: polled only.
    let r = rig.packet(1, 0, &cdb(0x4a, &[(4, 0x10), (8, 8)]), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x24, 0));
    let r = rig.packet(1, 0, &cdb(0x4a, &[(1, 1), (4, 0x02), (8, 8)]), 0xfffe);
    assert_eq!(r.data, [0, 2, 0x80, 0x10], "no event of an unsupported class");
    // READ DISC INFORMATION.
    let r = rig.packet(1, 0, &cdb(0x51, &[(8, 0xff)]), 0xfffe);
    good(&r);
    assert_eq!(r.data.len(), 34);
    assert_eq!(&r.data[..8], &[0, 32, 0x0e, 1, 1, 1, 1, 0]);
    let r = rig.packet(1, 0, &cdb(0x51, &[(1, 1), (8, 0xff)]), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x24, 0));
    good(&rig.packet(1, 0, &cdb(0xbb, &[(2, 0xff), (3, 0xff)]), 0xfffe));
    good(&rig.packet(1, 0, &cdb(0x2b, &[(5, 50)]), 0xfffe));
    let r = rig.packet(1, 0, &cdb(0x2b, &[(5, 100)]), 0xfffe);
    check_condition(&mut rig, &r, (5, 0x21, 0));
}

#[test]
fn unknown_packet_commands_are_illegal_requests() {
    let (mut rig, _) = rig();
    for code in [0xbeu8, 0x2a, 0x55, 0xff, 0x01] {
        let r = rig.packet(1, 0, &cdb(code, &[]), 0xfffe);
        check_condition(&mut rig, &r, (5, 0x20, 0));
    }
    // Unknown ATA commands abort.
    rig.select(1, 0);
    rig.command(1, 0xc8);
    assert_eq!((rig.status(1), rig.error(1)), (0x41, 0x04));
    rig.command(1, 0xe5);
    assert_eq!((rig.status(1), rig.reg(1, 2)), (0x40, 0xff));
}

#[test]
fn medium_read_errors_are_medium_errors() {
    let (mut rig, cd) = rig();
    cd.0.lock().fail_reads = Some(5 * 2048..6 * 2048);
    let r = rig.packet(1, 0, &read10(4, 2), 0xfffe);
    assert_eq!(r.data.len(), 0, "the whole chunk is read before it is offered");
    check_condition(&mut rig, &r, (3, 0x11, 0));
    let r = rig.packet(1, 0, &read10(4, 2), 2048);
    assert_eq!(r.chunks, [2048], "the first sector arrives");
    check_condition(&mut rig, &r, (3, 0x11, 0));
}

#[test]
fn a_media_change_fails_a_read_under_way() {
    let (mut rig, _) = rig();
    rig.send_packet(1, 0, &read10(0, 3), 2048);
    rig.read_data(1, 1000);
    let fresh = TestImage::new(10 * 2048);
    assert!(rig.ide.change_medium(IdeSlot::SecondaryMaster, Some(fresh.backend()), false).is_ok());
    assert!(rig.irqs[1].level());
    assert_eq!((rig.status(1), rig.error(1) >> 4, rig.reg(1, 2)), (0x41, 6, 3));
    assert_eq!(rig.sense(1, 0), (6, 0x28, 0));
    good(&rig.packet(1, 0, &cdb(0x00, &[]), 0xfffe));
    // By DMA, waiting for the engine: the medium goes away.
    rig.prd(0x1000, &[(0x10_000, 0x1000, true)]);
    rig.bm_setup(1, 0x1000, true);
    rig.select(1, 0);
    rig.outb(0x171, 0x01);
    rig.command(1, 0xa0);
    rig.write_data(1, &read10(1, 2));
    assert!(rig.ide.eject(IdeSlot::SecondaryMaster, false).is_ok());
    assert!(rig.irqs[1].level(), "the failed command interrupts at once");
    assert_eq!((rig.status(1), rig.error(1) >> 4), (0x41, 2));
    assert_eq!(rig.bm_status(1), 0x04);
    rig.outb(BM + 10, 0x04);
    rig.bm_start(1);
    assert_eq!(rig.bm_status(1), 0x01, "nothing to move");
    crate::fuzz::assert_restorable(&mut rig.ide);
}

/// READ TRACK INFORMATION: the one data track, by address, track or
/// session; anything else (garbage included) is an ILLEGAL REQUEST.
#[test]
fn read_track_information_of_the_data_track() {
    let (mut rig, _) = rig();
    let mut want = vec![0u8; 48];
    want[..8].copy_from_slice(&[0, 46, 1, 1, 0, 0x04, 0x01, 0]);
    want[24..28].copy_from_slice(&(SECTORS as u32).to_be_bytes());
    // By track number, as Linux's cdrom_get_last_written asks: first the
    // header, then the whole block.
    let r = rig.packet(1, 0, &cdb(0x52, &[(1, 1), (5, 1), (8, 8)]), 0xfffe);
    good(&r);
    assert_eq!(r.data, want[..8]);
    for fields in [&[(1, 1), (5, 1)][..], &[(1, 0), (5, 99)], &[(1, 0)], &[(1, 2), (5, 1)]] {
        let mut f = fields.to_vec();
        f.extend([(7, 0), (8, 0xff)]);
        let r = rig.packet(1, 0, &cdb(0x52, &f), 0xfffe);
        good(&r);
        assert_eq!(r.data, want, "{fields:?}");
    }
    let r = rig.packet(1, 0, &cdb(0x52, &[(1, 1), (5, 1)]), 0xfffe);
    good(&r);
    assert!(r.data.is_empty(), "an allocation length of 0");
    // Past the last block, other tracks and sessions, the lead-out (0xff),
    // a reserved type, the Open bit, and garbage everywhere.
    type Case = (&'static [(usize, u8)], (u8, u8, u8));
    let refused: [Case; 8] = [
        (&[(1, 0), (5, 100)], (5, 0x21, 0)),
        (&[(1, 0), (2, 0xff), (3, 0xff), (4, 0xff), (5, 0xff)], (5, 0x21, 0)),
        (&[(1, 1), (5, 2)], (5, 0x24, 0)),
        (&[(1, 1), (5, 0)], (5, 0x24, 0)),
        (&[(1, 1), (5, 0xff)], (5, 0x24, 0)),
        (&[(1, 2), (2, 1), (5, 1)], (5, 0x24, 0)),
        (&[(1, 3), (5, 1)], (5, 0x24, 0)),
        (&[(1, 0x05), (5, 1)], (5, 0x24, 0)),
    ];
    for (fields, sense) in refused {
        let mut f = fields.to_vec();
        f.push((8, 0xff));
        let r = rig.packet(1, 0, &cdb(0x52, &f), 0xfffe);
        check_condition(&mut rig, &r, sense);
    }
    for seed in 0..64u8 {
        let mut c = [0u8; 12];
        for (i, b) in c.iter_mut().enumerate().skip(1) {
            *b = seed.wrapping_mul(37).wrapping_add((i as u8).wrapping_mul(91)) ^ 0xa5;
        }
        c[0] = 0x52;
        let r = rig.packet(1, 0, &c, 0xfffe);
        assert!(r.status & 0x88 == 0 && r.reason == 0x03, "the command ends: {r:?}");
        assert!(r.data.len() <= 48);
    }
    // Without a medium: NOT READY.
    assert!(rig.ide.eject(IdeSlot::SecondaryMaster, false).is_ok());
    let r = rig.packet(1, 0, &cdb(0x52, &[(1, 1), (5, 1), (8, 0xff)]), 0xfffe);
    check_condition(&mut rig, &r, (2, 0x3a, 0));
    crate::fuzz::assert_restorable(&mut rig.ide);
}
