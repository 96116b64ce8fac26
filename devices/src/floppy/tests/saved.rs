//! Saved state: round trips in the middle of commands, refusals, and the
//! fuzz entry point.

use ::persist::Persist;

use super::*;

/// A rig over `img` in A:, nothing in B:.
fn rig_over(img: &TestImage) -> Rig {
    Rig::new([FloppyDrive::Disk(img.backend()), FloppyDrive::Absent])
}

#[test]
fn a_state_saved_in_a_non_dma_read_resumes() {
    let img = TestImage::new(FloppyFormat::Kb1440);
    let rig = rig_over(&img);
    rig.init();
    rig.cmd(&[0x03, 0xaf, 0x03]);
    rig.seek(0, 0, 1);
    rig.cmd(&[0x66, 0x00, 1, 0, 1, 2, 2, 0x1b, 0xff]);
    let mut got: Vec<u8> = (0..700).map(|_| rig.inb(FIFO)).collect();
    let state = rig.fdc.lock().save();
    assert_eq!(state.phase, FdcPhase::Execution);
    let other = rig_over(&img);
    other.fdc.lock().restore(&state).unwrap();
    assert!(other.irq.level(), "the restore drives INT as saved");
    assert_eq!(other.inb(MSR), 0xf0);
    while other.inb(MSR) & 0xe0 == 0xe0 {
        got.push(other.inb(FIFO));
    }
    assert_eq!(got, img.bytes(offset_144(1, 0, 1), 1024));
    assert_eq!(other.results(), [0x40, 0x80, 0, 2, 0, 1, 2]);
    // The original goes on the same way.
    let rest: Vec<u8> = (0..324).map(|_| rig.inb(FIFO)).collect();
    assert_eq!(rest, img.bytes(offset_144(1, 0, 1) + 700, 324));
}

#[test]
fn a_state_saved_in_a_non_dma_write_resumes() {
    let img = TestImage::new(FloppyFormat::Kb1440);
    let rig = rig_over(&img);
    rig.init();
    rig.cmd(&[0x03, 0xaf, 0x03]);
    rig.cmd(&[0x45, 0x00, 0, 0, 3, 2, 3, 0x1b, 0xff]);
    for i in 0..200u32 {
        rig.outb(FIFO, i as u8);
    }
    let other = rig_over(&img);
    ::persist::assert_round_trip(&*rig.fdc.lock(), &mut *other.fdc.lock());
    for i in 200..512u32 {
        other.outb(FIFO, i as u8);
    }
    assert_eq!(other.results(), [0x40, 0x80, 0, 1, 0, 1, 2]);
    assert_eq!(img.bytes(offset_144(0, 0, 3), 512), (0..512u32).map(|i| i as u8).collect::<Vec<_>>());
}

#[test]
fn a_state_saved_between_command_bytes_or_results_resumes() {
    let img = TestImage::new(FloppyFormat::Kb1440);
    let rig = rig_over(&img);
    rig.init();
    rig.cmd(&[0x13, 0x00]);
    let other = rig_over(&img);
    other.fdc.lock().restore(&rig.fdc.lock().save()).unwrap();
    assert_eq!(other.inb(MSR), 0x90, "a command under way");
    other.cmd(&[0x57, 0x11]);
    other.cmd(&[0x0e]);
    assert_eq!(other.inb(FIFO), 0);
    let state = other.fdc.lock().save();
    let third = rig_over(&img);
    third.fdc.lock().restore(&state).unwrap();
    assert_eq!(third.results(), [0, 0, 0, 0xaf, 0x02, 0, 0, 0x57, 0x11], "the rest of DUMPREG");
    // Held in reset, with the polling statuses pending.
    rig.outb(DOR, 0x18);
    let held = rig_over(&img);
    held.fdc.lock().restore(&rig.fdc.lock().save()).unwrap();
    assert_eq!(held.inb(MSR), 0);
    held.outb(DOR, 0x1c);
    assert_eq!(held.sense_interrupt(), [0xc0, 0]);
}

#[test]
fn other_drives_refuse_the_state() {
    let img = TestImage::new(FloppyFormat::Kb1440);
    let rig = Rig::new([FloppyDrive::Disk(img.backend()), FloppyDrive::Empty(FloppyFormat::Kb720)]);
    let state = rig.fdc.lock().save();
    let cases = [
        Rig::new([
            FloppyDrive::Disk(TestImage::new(FloppyFormat::Kb720).backend()),
            FloppyDrive::Empty(FloppyFormat::Kb720),
        ]),
        Rig::new([FloppyDrive::Disk(img.clone().read_only().backend()), FloppyDrive::Empty(FloppyFormat::Kb720)]),
        Rig::new([FloppyDrive::Empty(FloppyFormat::Kb1440), FloppyDrive::Empty(FloppyFormat::Kb720)]),
        Rig::new([FloppyDrive::Disk(TestImage::new(FloppyFormat::Kb1440).backend()), FloppyDrive::Absent]),
        Rig::new([
            FloppyDrive::Disk(TestImage::new(FloppyFormat::Kb1440).backend()),
            FloppyDrive::Empty(FloppyFormat::Kb1440),
        ]),
    ];
    for other in cases {
        let e = ::persist::assert_refused(&mut *other.fdc.lock(), &state);
        assert_eq!((e.part, e.field), ("82077AA floppy controller", "drives"), "{e}");
    }
}

#[test]
fn corrupt_states_are_refused() {
    let img = TestImage::new(FloppyFormat::Kb1440);
    let rig = rig_over(&img);
    rig.init();
    rig.cmd(&[0x03, 0xaf, 0x03]);
    rig.cmd(&[0x66, 0x00, 0, 0, 1, 2, 2, 0x1b, 0xff]);
    rig.inb(FIFO);
    let good = rig.fdc.lock().save();
    let target = rig_over(&img);
    type Corrupt = fn(&mut FloppyState);
    let cases: [(&str, Corrupt); 14] = [
        ("track", |s| s.drives[0].track = 80),
        ("rate", |s| s.rate = 4),
        ("tdr", |s| s.tdr = 4),
        ("dsr", |s| s.dsr = 0x80),
        ("config", |s| s.config = 0x80),
        ("perpendicular", |s| s.perpendicular = 0x40),
        ("phase", |s| s.dor = 0x18),
        ("pending", |s| s.pending[1] = Some(0xc0)),
        ("command", |s| s.command = vec![0x10]),
        ("result", |s| s.result = vec![1]),
        ("cursor", |s| s.cursor = None),
        ("fifo", |s| s.fifo_pos = 512),
        ("fifo", |s| s.fifo.truncate(100)),
        ("fifo", |s| {
            if let Some(c) = s.cursor.as_mut() {
                c.drive = 2;
            }
        }),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = ::persist::assert_refused(&mut *target.fdc.lock(), &bad);
        assert_eq!(e.field, field, "{e}");
    }
    // A result phase that was all read, and a command that is complete.
    let mut bad = good.clone();
    bad.phase = FdcPhase::Result;
    bad.cursor = None;
    bad.fifo.clear();
    bad.fifo_pos = 0;
    bad.result = vec![0x90];
    bad.result_pos = 1;
    assert_eq!(::persist::assert_refused(&mut *target.fdc.lock(), &bad).field, "result");
    let mut bad = good.clone();
    bad.phase = FdcPhase::Command;
    bad.cursor = None;
    bad.fifo.clear();
    bad.fifo_pos = 0;
    bad.command = vec![0x03, 0xaf, 0x02];
    assert_eq!(::persist::assert_refused(&mut *target.fdc.lock(), &bad).field, "command");
    target.fdc.lock().restore(&good).unwrap();
}

#[test]
fn a_reset_keeps_the_disks() {
    let img = TestImage::new(FloppyFormat::Kb1440);
    let rig = rig_over(&img);
    rig.init();
    rig.seek(0, 0, 7);
    rig.fdc.lock().reset();
    assert!(!rig.irq.level());
    let s = rig.fdc.lock().save();
    assert_eq!((s.phase, s.pcn[0], s.drives[0].track), (FdcPhase::Reset, 0, 7));
    rig.init();
    rig.cmd(&[0x07, 0x00]);
    assert_eq!(rig.sense_interrupt(), [0x20, 0]);
    rig.dma(0x2_0000, 512, 0x46);
    assert_eq!(rig.rw(0x66, 0, 0, 1, 1), [0x00, 0, 0, 1, 0, 1, 2]);
}

#[test]
fn the_fuzz_entry_point_survives_pseudo_random_inputs() {
    // 500 kbps; RECALIBRATE, SENSE INTERRUPT; READ DATA of cylinder 0
    // over DMA; non-DMA mode; WRITE DATA (MT) of two sectors a head with their bytes;
    // FORMAT TRACK with its IDs; a 720 KB disk into A:.
    let seed: &[u8] = &[
        0x04, 4, 0x00, 0x10, 6, 0x00, 0x00, 7, 0x02, 1, 0x80, 0, 0x00, 0, 0, 1, 2, 18, 0x1b, 0xff, 0x02, 2, 0x20, 8,
        0xaf, 0x03, 0x80, 2, 0x00, 0, 0, 1, 2, 2, 0x1b, 0xff, 0x03, 0x00, 0x08, 0x77, 0x02, 1, 0x50, 5, 0x00, 2, 18,
        0x54, 0xe5, 0x03, 0x48, 0x00, 0x00, 0x02, 1, 0x07, 0, 2,
    ];
    for input in crate::fuzz::pseudo_random_inputs(0xf10c, 1500, 768, &[seed]) {
        fuzz_fdc_commands(&input);
    }
    let stats = fuzz_fdc_commands(seed);
    assert_eq!((stats.reads, stats.read_bytes, stats.writes, stats.write_bytes), (1, 18432, 2, 2048), "{stats:?}");
}
