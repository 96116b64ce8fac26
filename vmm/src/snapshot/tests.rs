//! The state file's checks, the RAM image, the stream, and snapshots of a
//! running machine.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;
use crate::config::EngineKind;

fn config(out: Arc<Mutex<Vec<u8>>>) -> MachineConfig {
    MachineConfig::for_test(out)
}

fn machine() -> Machine {
    Machine::new(config(Arc::default())).expect("a machine")
}

/// A state of a machine whose built-in guest ran to its end.
fn ran_state() -> (Machine, SavedState) {
    let m = machine();
    m.run(EngineKind::Interp).expect("the run");
    let stopped = Stopped { vcpus: vec![CpuState::reset()], paused: true };
    let s = m.capture(&stopped).expect("a state");
    (m, s)
}

/// Pseudo-random numbers (xorshift) from `seed`: the same inputs on every
/// run.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// `data` with its header's checksum made right for its body.
fn fix_crc(data: &mut [u8]) {
    let crc = CRC64.checksum(&data[HEADER_LEN..]);
    data[32..40].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn a_state_file_round_trips_and_every_kind_of_damage_is_named() {
    let (_, state) = ran_state();
    let file = encode(&state).unwrap();
    assert_eq!(decode(&file).unwrap(), state);

    let mut bad = file.clone();
    bad[0] = b'X';
    assert!(matches!(decode(&bad), Err(SnapshotError::NotAStateFile)));
    assert!(matches!(decode(b"hello"), Err(SnapshotError::NotAStateFile)));
    assert!(matches!(decode(b""), Err(SnapshotError::Truncated(_))), "{:?}", decode(b""));
    assert!(matches!(decode(&file[..20]), Err(SnapshotError::Truncated(_))));
    assert!(matches!(decode(&file[..file.len() - 1]), Err(SnapshotError::Truncated(_))));
    let mut longer = file.clone();
    longer.push(0);
    assert!(matches!(decode(&longer), Err(SnapshotError::Corrupt(_))));
    let mut v2 = file.clone();
    v2[16] = 2;
    let e = decode(&v2).unwrap_err();
    assert_eq!(e.to_string(), "the state file has format version 2; this ferrovm reads version 3");
    let mut reserved = file.clone();
    reserved[21] = 1;
    assert!(matches!(decode(&reserved), Err(SnapshotError::Corrupt(_))), "the header's zero bytes are checked");
    let mut flipped = file.clone();
    let mid = HEADER_LEN + (file.len() - HEADER_LEN) / 2;
    flipped[mid] ^= 0x40;
    assert!(matches!(decode(&flipped), Err(SnapshotError::Checksum)));
    // A body cut short, with a matching checksum: it does not decode.
    let mut cut = file[..HEADER_LEN + 100].to_vec();
    cut[24..32].copy_from_slice(&100u64.to_le_bytes());
    fix_crc(&mut cut);
    assert!(matches!(decode(&cut), Err(SnapshotError::Corrupt(_))), "{:?}", decode(&cut));
}

#[test]
fn a_state_of_another_machine_is_refused_and_changes_nothing() {
    let (_, state) = ran_state();
    let mut other = config(Arc::default());
    other.mem = 128 << 20;
    let mut m = Machine::new(other).unwrap();
    let before = m.save().chipset;
    let e = m.load_saved(&state, |_| Ok(())).unwrap_err();
    assert_eq!(e.to_string(), "the saved state is of another machine: 64 MiB of RAM there, 128 MiB here (--mem)");
    assert_eq!(m.save().chipset, before);

    // Two vCPU states for one vCPU.
    let mut two = state.clone();
    two.vcpus.push(CpuState::reset());
    let mut m = machine();
    assert!(matches!(m.load_saved(&two, |_| Ok(())), Err(SnapshotError::Persist(_))));
    // A CPU state that fails its own checks.
    let mut bad_cpu = state.clone();
    bad_cpu.vcpus[0].cpl = 7;
    assert!(matches!(m.load_saved(&bad_cpu, |_| Ok(())), Err(SnapshotError::Persist(_))));
    // The RAM step failing hands the devices their states back.
    let before = m.save().chipset;
    let e = m.load_saved(&state, |_| Err(SnapshotError::Io("no RAM".into()))).unwrap_err();
    assert_eq!(e.to_string(), "no RAM");
    assert_eq!(m.save().chipset, before);
    m.load_saved(&state, |_| Ok(())).expect("the state of a machine built alike");
    assert_eq!(m.save().chipset, state.machine.chipset);
}

#[test]
fn the_fuzz_entry_takes_random_and_mutated_inputs_without_panicking() {
    let (_, state) = ran_state();
    let file = encode(&state).unwrap();
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    for i in 0..200 {
        let len = (next() % 200) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && data.len() >= HEADER_LEN {
            // A good header over random bytes.
            data[..16].copy_from_slice(&MAGIC);
            data[16..20].copy_from_slice(&VERSION.to_le_bytes());
            data[24..32].copy_from_slice(&((len - HEADER_LEN) as u64).to_le_bytes());
            fix_crc(&mut data);
        }
        fuzz_state_decoder(&data);
    }
    for _ in 0..150 {
        let mut data = file.clone();
        for _ in 0..1 + next() % 4 {
            let at = HEADER_LEN + (next() as usize) % (data.len() - HEADER_LEN);
            data[at] = next() as u8;
        }
        fix_crc(&mut data);
        fuzz_state_decoder(&data);
    }
}

/// A live migration stream for [`small_machine`], as `LiveSender` writes
/// one: the header, a page of data, a zero record, the end, the RAM's
/// checksum, then the state file.
fn live_stream(state: &SavedState, ram_size: u64) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&live::LIVE_MAGIC);
    s.extend_from_slice(&live::LIVE_VERSION.to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes());
    s.extend_from_slice(&ram_size.to_le_bytes());
    s.extend_from_slice(&0x2000u64.to_le_bytes());
    s.extend_from_slice(&4096u64.to_le_bytes());
    s.extend((0..4096u32).map(|i| (i % 251) as u8));
    s.extend_from_slice(&0x4000u64.to_le_bytes());
    s.extend_from_slice(&(8192 | live::ZERO_RECORD).to_le_bytes());
    s.extend_from_slice(&u64::MAX.to_le_bytes());
    s.extend_from_slice(&0u64.to_le_bytes());
    let sum = CRC64_FAST.checksum(&s);
    s.extend_from_slice(&sum.to_le_bytes());
    s.extend(encode(state).unwrap());
    s
}

/// The migration stream's fuzz entry: a good live stream restores, and
/// every damaged, cut or random stream is an error, never a panic.
#[test]
fn the_migration_stream_fuzz_entry_refuses_damage_without_panicking() {
    let mut src = small_machine().unwrap();
    let stopped = Stopped { vcpus: vec![CpuState::reset()], paused: true };
    let state = src.capture(&stopped).unwrap();
    let ram = src.mem.ram_size();
    let good = live_stream(&state, ram);
    src.mem.write(0x4000, &[0xee; 16]).unwrap();
    let (restored, stats, live) = receive_stream(&mut src, &mut &good[..]).unwrap();
    assert!(live);
    assert_eq!((restored.vcpus.len(), stats.written), (1, 4096));
    assert_eq!(src.mem.read_u8(0x2000 + 252).unwrap(), 1);
    assert_eq!(src.mem.read_u8(0x4000).unwrap(), 0, "a zero record clears its pages");
    fuzz_migration_stream(&good);

    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    for _ in 0..120 {
        let mut bad = good.clone();
        let at = (next() as usize) % bad.len();
        bad[at] ^= 1 + (next() % 255) as u8;
        assert!(receive_stream(&mut small_machine().unwrap(), &mut &bad[..]).is_err(), "byte {at} changed");
        fuzz_migration_stream(&bad);
        let cut = (next() as usize) % good.len();
        assert!(receive_stream(&mut small_machine().unwrap(), &mut &good[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..60 {
        let len = (next() % 300) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && len >= 32 {
            // A good header over random records.
            data[..16].copy_from_slice(&live::LIVE_MAGIC);
            data[16..20].copy_from_slice(&live::LIVE_VERSION.to_le_bytes());
            data[24..32].copy_from_slice(&ram.to_le_bytes());
        }
        fuzz_migration_stream(&data);
    }
}

#[test]
fn ram_goes_through_a_sparse_image_and_a_stream() {
    let (src, _) = ran_state();
    src.mem.write(0x30_0000, b"page one").unwrap();
    src.mem.write(0x3f_f000, &[0xaa; 4096]).unwrap();
    let dir = std::env::temp_dir().join(format!("ferrovm-snapshot-test-{}", std::process::id()));
    let stopped = Stopped { vcpus: vec![CpuState::reset()], paused: false };
    let report = save_to(&src, &stopped, &dir.join("one")).unwrap();
    assert_eq!(report.ram.total, 64 << 20);
    assert!(report.ram.written < 8 << 20, "zero pages skipped: {:?}", report.ram);
    let mut dst = machine();
    let restored = restore_from(&mut dst, &dir.join("one")).unwrap();
    assert_eq!(restored.run_state, RunState::Running);
    let mut buf = [0u8; 8];
    dst.mem.read(0x30_0000, &mut buf).unwrap();
    assert_eq!(&buf, b"page one");
    assert_eq!(dst.mem.read_u8(0x3f_f123).unwrap(), 0xaa);

    let list = SnapshotDir::new(&dir).list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].ram, list[0].problem.as_deref()), ("one", 64 << 20, None));
    assert!(SnapshotDir::new(&dir).info_text().unwrap().contains("one"));
    SnapshotDir::new(&dir).delete("one").unwrap();
    assert!(SnapshotDir::new(&dir).delete("one").is_err());
    assert!(SnapshotDir::new(&dir).entry("../x").is_err());
    let _ = std::fs::remove_dir_all(&dir);

    let mut stream = Vec::new();
    let (stats, total) = send(&src, &stopped, &mut stream).unwrap();
    assert_eq!(total, stream.len() as u64);
    let mut dst = machine();
    dst.mem.write(0x50_0000, b"old").unwrap();
    let (restored, got) = receive(&mut dst, &mut &stream[..]).unwrap();
    assert_eq!(got.written, stats.written);
    assert_eq!(restored.vcpus.len(), 1);
    dst.mem.read(0x30_0000, &mut buf).unwrap();
    assert_eq!(&buf, b"page one");
    assert_eq!(dst.mem.read_u8(0x50_0000).unwrap(), 0, "pages of zeros are zeros");
    // A damaged RAM byte, then a stream cut short.
    let mut bad = stream.clone();
    let n = bad.len();
    bad[n - 100] ^= 1;
    assert!(matches!(receive(&mut machine(), &mut &bad[..]), Err(SnapshotError::Checksum)));
    assert!(matches!(receive(&mut machine(), &mut &stream[..n - 9]), Err(SnapshotError::Truncated(_))));
    assert!(matches!(receive(&mut machine(), &mut &b""[..]), Err(SnapshotError::Truncated(_))));
}

#[test]
fn migration_uris_parse() {
    assert_eq!("exec:cat > f".parse::<MigrationUri>(), Ok(MigrationUri::Exec("cat > f".into())));
    assert_eq!("unix:/tmp/s".parse::<MigrationUri>(), Ok(MigrationUri::Unix("/tmp/s".into())));
    assert_eq!("tcp:127.0.0.1:4444".parse::<MigrationUri>(), Ok(MigrationUri::Tcp("127.0.0.1:4444".into())));
    assert!("tcp:nohost".parse::<MigrationUri>().is_err());
    assert!("rdma:x".parse::<MigrationUri>().is_err());
    // Dates are the host's local time, as QEMU's.
    for secs in [0, 1_700_000_000] {
        let local = chrono::DateTime::from_timestamp(secs, 0).unwrap().with_timezone(&chrono::Local);
        assert_eq!(date(secs as u64), local.format("%Y-%m-%d %H:%M:%S").to_string());
    }
}

/// The built-in guest under `kind`, on a thread of its own under
/// `run_lifecycle`, with its control and output.
fn spawn(kind: EngineKind) -> (Arc<crate::RunControl>, Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<crate::RunReport>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let o = out.clone();
    let runner = std::thread::spawn(move || {
        let mut m = Machine::new(config(o)).expect("a machine");
        tx.send(m.control()).unwrap();
        m.run_lifecycle(kind, None).expect("the run")
    });
    (rx.recv().unwrap(), out, runner)
}

#[test]
fn a_running_guest_saved_and_restored_mid_run_ends_as_an_unbroken_run_does() {
    let dir = std::env::temp_dir().join(format!("ferrovm-lifecycle-test-{}", std::process::id()));
    let (control, out, runner) = spawn(EngineKind::Interp);
    std::thread::sleep(Duration::from_millis(30));
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    control
        .request(Box::new(move |m: &mut Machine, s: &mut Stopped| {
            let saved = save_to(m, s, &d).map(|r| r.ram.written);
            // Paused, the guest cannot reach its end before the restore
            // (on a fast host the built-in guest's whole run is shorter
            // than these sleeps).
            m.control().set_pause(true);
            tx.send(saved).unwrap();
        }))
        .expect("a request");
    rx.recv_timeout(Duration::from_secs(20)).unwrap().expect("the save");
    let at_save = out.lock().len();
    std::thread::sleep(Duration::from_millis(30));
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    control
        .request(Box::new(move |m: &mut Machine, s: &mut Stopped| {
            let r = restore_from(m, &d).map(|r| {
                s.vcpus = r.vcpus;
                m.control().set_pause(r.run_state == RunState::Paused);
            });
            tx.send(r).unwrap();
        }))
        .expect("a request");
    rx.recv_timeout(Duration::from_secs(20)).unwrap().expect("the restore");
    let report = runner.join().unwrap();
    let text = String::from_utf8_lossy(&out.lock()).into_owned();
    assert_eq!(report.status, 1, "the guest's own debug exit: {text}");
    // The restored guest printed what it had printed after the save again.
    let tail = String::from_utf8_lossy(&out.lock()[at_save..]).into_owned();
    assert_eq!(firmware::builtin::parse_checksum(&tail), Some(firmware::builtin::expected_checksum()), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- snapshots inside qcow2 disks; disks of snapshot directories; clones ----

/// Runs qemu-img; `None` (with a note) when it is not installed.
fn qemu_img(args: &[&str]) -> Option<String> {
    match std::process::Command::new("qemu-img").args(args).output() {
        Ok(o) => {
            assert!(o.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(_) => {
            eprintln!("skipping: qemu-img is not installed (Debian: qemu-utils)");
            None
        }
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferrovm-vmm-snapshot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn drive(path: &std::path::Path, format: devices::block::ImageFormat) -> crate::storage::Drive {
    let spec = devices::block::DiskSpec { path: path.to_path_buf(), format: Some(format), ..Default::default() };
    // An image closed a moment ago stays locked while a child that another
    // test thread forks (to run qemu-img) holds its descriptor, until the
    // child's exec closes it: a reopen waits that moment out.
    let t = std::time::Instant::now();
    let image = loop {
        match devices::block::open(&spec, false) {
            Err(devices::block::OpenError::Locked { .. }) if t.elapsed() < std::time::Duration::from_secs(5) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => break r.unwrap(),
        }
    };
    crate::storage::Drive {
        label: image.label().to_string(),
        image: Some(Box::new(image)),
        interface: devices::block::DiskInterface::Virtio,
        media: devices::block::DiskMedia::Disk,
        index: None,
    }
}

/// The built-in guest, run to its end, with `drives`.
fn machine_with(drives: Vec<crate::storage::Drive>) -> Machine {
    let storage = crate::storage::Storage { drives, ..Default::default() };
    let m = Machine::with_devices(config(Arc::default()), &[], storage).expect("a machine");
    m.run(EngineKind::Interp).expect("the run");
    m
}

fn disk_write(m: &Machine, data: &[u8], offset: u64) {
    let disk = m.disks()[0].disk.clone().unwrap();
    let mut d = disk.lock();
    d.write_at(data, offset).unwrap();
    d.flush().unwrap();
}

fn disk_read(m: &Machine, len: usize, offset: u64) -> Vec<u8> {
    let disk = m.disks()[0].disk.clone().unwrap();
    let mut b = vec![0u8; len];
    disk.lock().read_at(&mut b, offset).unwrap();
    b
}

fn stopped() -> Stopped {
    Stopped { vcpus: vec![CpuState::reset()], paused: false }
}

#[test]
fn a_machine_snapshot_lives_inside_its_qcow2_disk() {
    let d = scratch("qcow2");
    let path = d.join("disk.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "16M"]).is_none() {
        return;
    }
    let mut m = machine_with(vec![drive(&path, devices::block::ImageFormat::Qcow2)]);
    let disks = qcow2::snapshot_disks(m.disks()).unwrap().expect("a qcow2 disk the guest writes");
    m.mem.write(0x30_0000, b"memory A").unwrap();
    disk_write(&m, &[0xa1; 200_000], 4096);
    let report = qcow2::save(&m, &stopped(), &disks, "one").unwrap();
    assert_eq!(report.ram.total, 64 << 20);
    assert!(report.ram.written < 8 << 20, "pages of zeros are left out: {:?}", report.ram);
    m.mem.write(0x30_0000, b"memory B").unwrap();
    disk_write(&m, &[0xb2; 100_000], 8192);

    // Damaged or foreign VM states are refused before anything changes.
    {
        let disk = m.disks()[0].disk.clone().unwrap();
        let mut guard = disk.lock();
        let img = guard.image_mut().unwrap();
        let new = |name: &str| devices::block::internal::NewSnapshot {
            name: name.into(),
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec: 0,
            icount: u64::MAX,
        };
        img.create_snapshot(&new("disk-only"), None).unwrap();
        let mut qemu = |w: &mut devices::block::internal::VmStateWriter<'_>| w.write(0, b"QEVM\0\0\0\x03 not ours");
        img.create_snapshot(&new("qemu-state"), Some(&mut qemu)).unwrap();
        let mut bad = |w: &mut devices::block::internal::VmStateWriter<'_>| {
            let mut h = qcow2::tests_header(100, 1 << 20, 64 << 20);
            h[60] ^= 1;
            w.write(0, &h)
        };
        img.create_snapshot(&new("bad-header"), Some(&mut bad)).unwrap();
        let mut garbage = |w: &mut devices::block::internal::VmStateWriter<'_>| {
            w.write(0, &qcow2::tests_header(100, 1 << 20, 64 << 20))?;
            w.write(qcow2::STATE_AT, &[7; 100])?;
            w.set_size((1 << 20) + (64 << 20));
            Ok(())
        };
        img.create_snapshot(&new("garbage"), Some(&mut garbage)).unwrap();
    }
    for (name, want) in [
        ("disk-only", "disk-only snapshot"),
        ("qemu-state", "did not write"),
        ("bad-header", "checksum"),
        ("garbage", "not a ferrovm state file"),
        ("nope", "does not have the requested snapshot 'nope'"),
    ] {
        let e = qcow2::load(&mut m, &disks, name).unwrap_err().to_string();
        assert!(e.contains(want), "{name}: {e}");
        let mut b = [0u8; 8];
        m.mem.read(0x30_0000, &mut b).unwrap();
        assert_eq!(&b, b"memory B", "{name}: the machine is as it was");
        assert_eq!(disk_read(&m, 4, 8192), [0xb2; 4], "{name}: the disk is as it was");
    }

    let info = qcow2::info_text(&disks).unwrap();
    assert!(info.starts_with("List of snapshots present on all disks:\nID        TAG               VM SIZE"), "{info}");
    assert!(info.lines().any(|l| l.starts_with("--        one              ")), "{info}");
    let restored = qcow2::load(&mut m, &disks, "one").unwrap();
    assert_eq!(restored.run_state, RunState::Running);
    let mut b = [0u8; 8];
    m.mem.read(0x30_0000, &mut b).unwrap();
    assert_eq!(&b, b"memory A");
    assert_eq!(disk_read(&m, 200_000, 4096), vec![0xa1; 200_000], "the disk went back");
    // savevm of a name that exists replaces it, as QEMU's HMP does.
    qcow2::save(&m, &stopped(), &disks, "one").unwrap();
    for name in ["one", "disk-only", "qemu-state", "bad-header", "garbage"] {
        qcow2::delete(&disks, name).unwrap();
    }
    assert!(qcow2::delete(&disks, "one").unwrap_err().to_string().contains("not found"));
    assert_eq!(qcow2::info_text(&disks).unwrap(), "There is no snapshot available.\n");
    drop(disks);
    drop(m);
    let check = qemu_img(&["check", path.to_str().unwrap()]).unwrap();
    assert!(check.contains("No errors were found"), "{check}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn qemu_sizes_and_mixed_disks() {
    assert_eq!(qcow2::qemu_size(0), "0 B");
    assert_eq!(qcow2::qemu_size(999), "999 B");
    assert_eq!(qcow2::qemu_size(1000), "0.977 KiB");
    assert_eq!(qcow2::qemu_size(1024), "1 KiB");
    assert_eq!(qcow2::qemu_size(1000 * 1024), "0.977 MiB");
    assert_eq!(qcow2::qemu_size(256 << 20), "256 MiB");
    assert_eq!(qcow2::qemu_size(1536 << 20), "1.5 GiB");
    assert_eq!(qcow2::qemu_size(12_345_678), "11.8 MiB");

    let d = scratch("mixed");
    let q = d.join("a.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1M"]).is_none() {
        return;
    }
    let raw = d.join("b.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let m = Machine::with_devices(
        config(Arc::default()),
        &[],
        crate::storage::Storage {
            drives: vec![drive(&q, devices::block::ImageFormat::Qcow2), drive(&raw, devices::block::ImageFormat::Raw)],
            ..Default::default()
        },
    )
    .unwrap();
    let e = qcow2::snapshot_disks(m.disks()).unwrap_err().to_string();
    assert!(e.contains("disk #2") && e.contains("raw image"), "{e}");
    drop(m);
    // A raw disk alone: the snapshots go to the directory.
    let m = machine_with(vec![drive(&raw, devices::block::ImageFormat::Raw)]);
    assert!(qcow2::snapshot_disks(m.disks()).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_snapshot_directory_keeps_its_disks_and_clones_run_on_overlays() {
    let d = scratch("clone");
    let raw = d.join("disk.raw");
    std::fs::write(&raw, vec![0u8; 4 << 20]).unwrap();
    let m = machine_with(vec![drive(&raw, devices::block::ImageFormat::Raw)]);
    disk_write(&m, b"saved data", 1 << 20);
    m.mem.write(0x30_0000, b"the page").unwrap();
    let snap = d.join("snaps").join("one");
    save_to(&m, &stopped(), &snap).unwrap();
    // The machine goes on writing its disk; the snapshot keeps its copy.
    disk_write(&m, b"later data", 1 << 20);
    let records = clone::read_disks(&snap).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].copy.as_deref(), records[0].read_only, records[0].size),
        (Some("disk0.raw"), false, 4 << 20)
    );
    let copy = snap.join("disk0.raw");
    assert!(std::fs::metadata(&copy).unwrap().permissions().readonly());
    let copied = std::fs::read(&copy).unwrap();
    assert_eq!(&copied[1 << 20..(1 << 20) + 10], b"saved data");
    drop(m);

    if qemu_img(&["--version"]).is_none() {
        return;
    }
    let c = clone::clone_disks(&snap, Some(&d.join("c1"))).unwrap();
    assert_eq!(c.dir, d.join("c1"));
    let mut clone = Machine::with_devices(
        config(Arc::default()),
        &[],
        crate::storage::Storage { drives: c.drives, ..Default::default() },
    )
    .unwrap();
    let (restored, macs) = clone::restore_clone(&mut clone, &snap).unwrap();
    assert!(macs.is_empty(), "the built-in guest has no NIC");
    assert_eq!(restored.vcpus.len(), 1);
    let mut b = [0u8; 8];
    clone.mem.read(0x30_0000, &mut b).unwrap();
    assert_eq!(&b, b"the page");
    assert_eq!(disk_read(&clone, 10, 1 << 20), b"saved data");
    disk_write(&clone, b"clone data", 1 << 20);
    assert_eq!(disk_read(&clone, 10, 1 << 20), b"clone data");
    // While a clone reads the copy, the snapshot is neither replaced nor deleted.
    let e = SnapshotDir::new(d.join("snaps")).delete("one").unwrap_err().to_string();
    assert!(e.contains("in use"), "{e}");
    let e = clone::clone_disks(&snap, Some(&d.join("c1"))).err().unwrap().to_string();
    assert!(e.contains("exists already"), "{e}");
    drop(clone);
    assert!(std::fs::read(&copy).unwrap() == copied, "the copy is unchanged");
    let check = qemu_img(&["check", d.join("c1/disk0.qcow2").to_str().unwrap()]).unwrap();
    assert!(check.contains("No errors were found"), "{check}");
    // Without --clone-dir: a new directory beside the snapshot.
    let c2 = clone::clone_disks(&snap, None).unwrap();
    assert_eq!(c2.dir, d.join("snaps").join("one.clone-1"));
    drop(c2);
    SnapshotDir::new(d.join("snaps")).delete("one").unwrap();
    assert!(!copy.exists() && !snap.exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn every_disk_the_guest_writes_takes_the_snapshot_and_the_first_holds_the_state() {
    let d = scratch("two-disks");
    let (a, b) = (d.join("a.qcow2"), d.join("b.qcow2"));
    for p in [&a, &b] {
        if qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "4M"]).is_none() {
            return;
        }
    }
    let mut m = machine_with(vec![
        drive(&a, devices::block::ImageFormat::Qcow2),
        drive(&b, devices::block::ImageFormat::Qcow2),
    ]);
    let disks = qcow2::snapshot_disks(m.disks()).unwrap().unwrap();
    assert_eq!(disks.disks.len(), 2);
    let write = |m: &Machine, i: usize, byte: u8| {
        let disk = m.disks()[i].disk.clone().unwrap();
        let mut g = disk.lock();
        g.write_at(&[byte; 4096], 0).unwrap();
    };
    let read = |m: &Machine, i: usize| {
        let disk = m.disks()[i].disk.clone().unwrap();
        let mut buf = [0u8; 1];
        disk.lock().read_at(&mut buf, 0).unwrap();
        buf[0]
    };
    write(&m, 0, 1);
    write(&m, 1, 2);
    qcow2::save(&m, &stopped(), &disks, "both").unwrap();
    let sizes: Vec<u64> = m
        .disks()
        .iter()
        .map(|d| d.disk.as_ref().unwrap().lock().image().unwrap().snapshots().unwrap()[0].vm_state_size)
        .collect();
    assert!(sizes[0] > 64 << 20 && sizes[1] == 0, "the VM state is on the first disk: {sizes:?}");
    write(&m, 0, 3);
    write(&m, 1, 4);
    // A snapshot only the second disk has cannot be loaded; nothing changes.
    {
        let disk = m.disks()[1].disk.clone().unwrap();
        let mut g = disk.lock();
        let new = devices::block::internal::NewSnapshot {
            name: "partial".into(),
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec: 0,
            icount: u64::MAX,
        };
        g.image_mut().unwrap().create_snapshot(&new, None).unwrap();
    }
    let e = qcow2::load(&mut m, &disks, "partial").unwrap_err().to_string();
    assert!(e.contains("disk #1") && e.contains("does not have the requested snapshot 'partial'"), "{e}");
    assert_eq!((read(&m, 0), read(&m, 1)), (3, 4));
    let info = qcow2::info_text(&disks).unwrap();
    assert!(
        info.contains("--        both ") && info.contains("List of partial (non-loadable) snapshots on 'disk #2"),
        "{info}"
    );
    qcow2::load(&mut m, &disks, "both").unwrap();
    assert_eq!((read(&m, 0), read(&m, 1)), (1, 2), "both disks went back");
    qcow2::delete(&disks, "both").unwrap();
    qcow2::delete(&disks, "partial").unwrap();
    drop(disks);
    drop(m);
    for p in [&a, &b] {
        let check = qemu_img(&["check", p.to_str().unwrap()]).unwrap();
        assert!(check.contains("No errors were found"), "{check}");
        assert!(qemu_img(&["snapshot", "-l", p.to_str().unwrap()]).unwrap().is_empty());
    }
    let _ = std::fs::remove_dir_all(&d);
}
