//! The state file's checks, the RAM image, the stream, and snapshots of a
//! running machine.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;
use crate::config::{EngineKind, KvmPit, SerialOut, SplitMode};

fn config(out: Arc<Mutex<Vec<u8>>>) -> MachineConfig {
    MachineConfig {
        mem: 64 << 20,
        firmware: Firmware::Builtin,
        serial: SerialOut::Capture(out),
        no_reboot: true,
        timeout: Some(Duration::from_secs(60)),
        kvm_split: SplitMode::Off,
        kvm_pit: KvmPit::InKernel,
        cpu_model: cpu::cpuid::Model::V2,
        topology: Default::default(),
        vcpu_threads: Default::default(),
        vga: Default::default(),
        usb: None,
    }
}

fn machine() -> Machine {
    Machine::new(config(Arc::default())).expect("a machine")
}

/// A state of a machine whose built-in guest ran to its end.
fn ran_state() -> (Machine, SavedState) {
    let m = machine();
    m.run(EngineKind::Interp).expect("the run");
    let stopped = Stopped { vcpus: vec![CpuState::reset()], paused: true, engine_blocker: None };
    let s = m.capture(&stopped).expect("a state");
    (m, s)
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
    assert_eq!(e.to_string(), "the state file has format version 2; this ferrovm reads version 1");
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
    // xorshift: the same inputs on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
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

#[test]
fn ram_goes_through_a_sparse_image_and_a_stream() {
    let (src, _) = ran_state();
    src.mem.write(0x30_0000, b"page one").unwrap();
    src.mem.write(0x3f_f000, &[0xaa; 4096]).unwrap();
    let dir = std::env::temp_dir().join(format!("ferrovm-snapshot-test-{}", std::process::id()));
    let stopped = Stopped { vcpus: vec![CpuState::reset()], paused: false, engine_blocker: None };
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
    assert_eq!(date(0), "1970-01-01 00:00:00");
    assert_eq!(date(1_700_000_000), "2023-11-14 22:13:20");
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
            tx.send(save_to(m, s, &d).map(|r| r.ram.written)).unwrap();
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
