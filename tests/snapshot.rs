//! Saved states end to end, through the ferrovm binary: a Linux guest
//! paused mid-computation and migrated through `exec:cat > FILE` finishes
//! its computation on another process started with `--incoming` (under
//! the JIT, the interpreter and KVM, through `exec:`, `tcp:` and `unix:`),
//! without booting again; `savevm` and
//! `loadvm` through HMP on a running guest; `--restore` from a snapshot
//! directory; and damaged state files and streams refused with a clear
//! error and exit status 1.
//!
//! One guest boots (under the JIT) for all of them: it saves a snapshot,
//! is migrated, and loads its snapshot back; the receivers and restores
//! run what is left of its script. Without the guest images the tests say
//! so and pass.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/kvm.rs"]
mod kvm;
use encode::base64;

/// A computation in steps, a checkpoint line each, then its result.
const SCRIPT: &str = r#"h=start
i=1
while [ $i -le 5 ]; do
  h=$(seq 1 4000 | sed "s/^/$h$i/" | sha256sum | cut -d' ' -f1)
  echo "T:step $i $h"
  i=$((i+1))
done
echo "T:final $h"
"#;

const MEM: &str = "256M";

fn images() -> Option<PathBuf> {
    images::images(&["initramfs.cpio.gz", "vmlinuz-cloud"])
}

/// The script's result, computed on the host.
fn expected_final() -> String {
    let o = Command::new("sh").arg("-c").arg(SCRIPT).output().expect("the host's shell");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    field(&out, "final").expect("the host's run of the script").to_string()
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.trim_end_matches('\r').split_once(&format!("T:{key} ")).map(|(_, v)| v.trim()))
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One run's files at a time (streams and RAM images of a few tens
        // of MiB): the last run's go when the next one starts.
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshot-tests");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("a scratch directory");
        d
    })
}

/// `ferrovm run` with the guest's kernel, initrd and script, and `extra`
/// (which may set another `--mem`).
fn ferrovm(images: &Path, accel: &str, extra: &[&str]) -> Command {
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(SCRIPT.as_bytes()));
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrovm"));
    c.args(["run", "--accel", accel, "--timeout", "120", "--stats"]);
    if !extra.contains(&"--mem") {
        c.args(["--mem", MEM]);
    }
    c.args(extra)
        .arg("--kernel")
        .arg(images.join("vmlinuz-cloud"))
        .arg("--initrd")
        .arg(images.join("initramfs.cpio.gz"))
        .arg("--append")
        .arg(cmdline)
        .stdin(Stdio::null());
    c
}

/// A running ferrovm, killed if a test fails before it ends.
struct Vm(Option<Child>);

impl Vm {
    fn wait(mut self) -> Output {
        self.0.take().expect("a child").wait_with_output().expect("ferrovm ends")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            if std::thread::panicking() {
                if let Ok(out) = c.wait_with_output() {
                    eprintln!("--- the failed run's stderr:\n{}", String::from_utf8_lossy(&out.stderr));
                }
            } else {
                let _ = c.wait();
            }
        }
    }
}

/// A QMP client.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    /// Connects once the socket is there (a receiver opens it after the stream).
    fn connect(path: &Path) -> Qmp {
        let t = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if t.elapsed() < Duration::from_secs(60) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("QMP at {}: {e}", path.display()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut q = Qmp { r: BufReader::new(s.try_clone().unwrap()), w: s };
        assert!(q.line().starts_with(r#"{"QMP":"#));
        assert_eq!(q.cmd(r#"{"execute":"qmp_capabilities"}"#), r#"{"return":{}}"#);
        q
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("a QMP line");
        l.trim().to_string()
    }

    /// Sends `json` and returns the reply, skipping events.
    fn cmd(&mut self, json: &str) -> String {
        // One write: the monitor parses JSON as it comes, and after a
        // `quit` a separate newline could find it gone.
        self.w.write_all(format!("{json}\n").as_bytes()).unwrap();
        loop {
            let l = self.line();
            // Events carry "event" (after "data", keys being sorted).
            if !(l.starts_with(r#"{"data""#) || l.starts_with(r#"{"event""#)) {
                return l;
            }
        }
    }

    /// An HMP command through `human-monitor-command`; its text.
    fn hmp(&mut self, line: &str) -> String {
        self.cmd(&format!(r#"{{"execute":"human-monitor-command","arguments":{{"command-line":"{line}"}}}}"#))
    }
}

/// Waits until `file` holds `what`.
fn wait_for(file: &Path, what: &str) {
    let t = Instant::now();
    while !std::fs::read_to_string(file).unwrap_or_default().contains(what) {
        assert!(t.elapsed() < Duration::from_secs(120), "no {what:?} in {}", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the one source guest left: the migration stream, the snapshot
/// directory, and the expected result.
struct Source {
    images: PathBuf,
    stream: PathBuf,
    snapshots: PathBuf,
    expected: String,
    /// The engine it ran under.
    from: String,
}

/// The guest booted under the JIT once ([`boot_source`]).
fn source() -> Option<&'static Source> {
    static SOURCE: OnceLock<Option<Source>> = OnceLock::new();
    SOURCE.get_or_init(|| boot_source("jit")).as_ref()
}

/// Boots the guest under `accel`: after its first checkpoint, saves
/// snapshot `one` through HMP while it runs; after the second, loads it
/// back (the guest goes on from before the second); then stops it and
/// migrates it to `exec:cat > FILE`, resumes it and lets it finish.
fn boot_source(accel: &str) -> Option<Source> {
    {
        {
            let images = images()?;
            let dir = scratch().join(format!("source-{accel}"));
            std::fs::create_dir_all(&dir).expect("a scratch directory");
            let (serial, qmp, stream, snapshots) =
                (dir.join("source.out"), dir.join("source.qmp"), dir.join("stream"), dir.join("snapshots"));
            let serial_arg = format!("file:{}", serial.display());
            let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
            let snap_arg = snapshots.display().to_string();
            let t = Instant::now();
            let vm = Vm(Some(
                ferrovm(&images, accel, &["--serial", &serial_arg, "--qmp", &qmp_arg, "--snapshot-dir", &snap_arg])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("ferrovm runs"),
            ));
            let mut q = Qmp::connect(&qmp);
            wait_for(&serial, "T:step 1");
            eprintln!("the source's first checkpoint after {:?}", t.elapsed());
            let t = Instant::now();
            assert_eq!(q.hmp("savevm one"), r#"{"return":""}"#);
            eprintln!("savevm of a running {MEM} guest: {:?}", t.elapsed());
            let info = q.hmp("info snapshots");
            assert!(info.contains(" one "), "{info}");
            wait_for(&serial, "T:step 2");
            let t = Instant::now();
            assert_eq!(q.hmp("loadvm one"), r#"{"return":""}"#);
            eprintln!("loadvm on a running {MEM} guest: {:?}", t.elapsed());
            assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""status":"running""#));
            assert_eq!(q.cmd(r#"{"execute":"stop"}"#), r#"{"return":{}}"#);
            let uri = format!("exec:cat > {}", stream.display());
            let t = Instant::now();
            let reply = q.cmd(&format!(r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#));
            assert_eq!(reply, r#"{"return":{}}"#);
            let done = loop {
                let r = q.cmd(r#"{"execute":"query-migrate"}"#);
                if r.contains(r#""status":"completed""#) || r.contains(r#""status":"failed""#) {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(done.contains(r#""status":"completed""#), "{done}");
            eprintln!("migration of a {MEM} guest to a file: {:?}: {done}", t.elapsed());
            let status = q.cmd(r#"{"execute":"query-status"}"#);
            assert!(status.contains(r#""status":"postmigrate""#), "{status}");
            // The source may go on (QEMU's `cont` after a migration).
            assert_eq!(q.cmd(r#"{"execute":"cont"}"#), r#"{"return":{}}"#);
            let out = vm.wait();
            assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            let expected = expected_final();
            assert_eq!(field(&text, "final"), Some(expected.as_str()), "{text}");
            let step2 = text.matches("T:step 2 ").count();
            assert_eq!(step2, 2, "the loaded snapshot ran the second step again: {text}");
            assert_eq!(text.matches("T:step 1 ").count(), 1, "{text}");
            eprintln!("stream: {} bytes", std::fs::metadata(&stream).map(|m| m.len()).unwrap_or(0));
            Some(Source { images, stream, snapshots, expected, from: accel.to_string() })
        }
    }
}

/// How a receiver gets its stream.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// `exec:cat STREAM`.
    Exec,
    /// `tcp:127.0.0.1:PORT`, the test sending the stream.
    Tcp,
    /// `unix:PATH`, the test sending the stream.
    Unix,
}

/// Sends the stream to a receiver listening at `connect`'s address.
fn feed<S: Write>(stream: &Path, mut connect: impl FnMut() -> std::io::Result<S>) {
    let t = Instant::now();
    let mut s = loop {
        match connect() {
            Ok(s) => break s,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(60), "the receiver does not listen: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    s.write_all(&std::fs::read(stream).expect("the stream")).expect("the receiver reads the stream");
}

/// Starts a receiver under `accel` taking the stream through `how`,
/// checks that it waits paused, continues it and checks that it finishes
/// the computation without booting.
fn receive(src: Option<&Source>, accel: &str, how: Transport) {
    let Some(src) = src else { return };
    let dir = scratch();
    let tag = format!("{}-to-{accel}", src.from);
    let serial = dir.join(format!("receiver-{tag}.out"));
    let qmp = dir.join(format!("receiver-{tag}.qmp"));
    let serial_arg = format!("file:{}", serial.display());
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
    let socket = dir.join(format!("receiver-{tag}.migration"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let incoming = match how {
        Transport::Exec => format!("exec:cat {}", src.stream.display()),
        Transport::Tcp => format!("tcp:127.0.0.1:{port}"),
        Transport::Unix => format!("unix:{}", socket.display()),
    };
    let t = Instant::now();
    let vm = Vm(Some(
        ferrovm(&src.images, accel, &["--serial", &serial_arg, "--qmp", &qmp_arg, "--incoming", &incoming])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrovm runs"),
    ));
    match how {
        Transport::Exec => {}
        Transport::Tcp => feed(&src.stream, || std::net::TcpStream::connect(("127.0.0.1", port))),
        Transport::Unix => feed(&src.stream, || UnixStream::connect(&socket)),
    }
    let mut q = Qmp::connect(&qmp);
    let status = q.cmd(r#"{"execute":"query-status"}"#);
    assert!(status.contains(r#""status":"paused""#), "the source was paused: {status}");
    assert!(std::fs::read_to_string(&serial).unwrap_or_default().is_empty(), "nothing ran before cont");
    assert_eq!(q.cmd(r#"{"execute":"cont"}"#), r#"{"return":{}}"#);
    let out = vm.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- receiver {tag} through {how:?} ({:?}):\n{stderr}", t.elapsed());
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(field(&text, "final"), Some(src.expected.as_str()), "{text}");
    assert!(!text.contains("T:step 1 "), "the first step ran before the migration: {text}");
    assert!(text.contains("T:step 5 "), "{text}");
    for boot in ["Linux version", "Run /init", "ferrovm-init: start"] {
        assert!(!text.contains(boot), "the receiver booted ({boot:?}): {text}");
    }
}

#[test]
fn a_guest_migrated_from_the_jit_finishes_under_the_jit() {
    receive(source(), "jit", Transport::Exec);
}

#[test]
fn a_guest_migrated_from_the_jit_finishes_under_the_interpreter() {
    receive(source(), "interp", Transport::Tcp);
}

/// Under KVM; on a kvm_pvm host (KVM runs ring 0 in software) that is
/// split execution, whose interrupt controllers are the machine's.
#[test]
fn a_guest_migrated_from_the_jit_finishes_under_kvm() {
    if !kvm::usable() {
        return;
    }
    receive(source(), "kvm", Transport::Unix);
}

/// The other way: a guest booted under KVM (split execution on a kvm_pvm
/// host), saved, loaded and migrated there, finishes under the JIT.
#[test]
fn a_guest_migrated_from_kvm_finishes_under_the_jit() {
    if !kvm::usable() {
        return;
    }
    let src = boot_source("kvm");
    receive(src.as_ref(), "jit", Transport::Exec);
}

/// Runs a receiver or a restore that must fail before its guest runs;
/// returns its stderr.
fn refused(src: &Source, extra: &[&str]) -> String {
    let out = ferrovm(&src.images, "jit", &[&["--serial", "none"][..], extra].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("ferrovm runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("internal error"), "{stderr}");
    stderr
}

#[test]
fn a_snapshot_restores_in_a_new_process_and_damaged_ones_are_refused() {
    let Some(src) = source() else { return };
    let dir = scratch();
    let one = src.snapshots.join("one");
    let serial = dir.join("restore.out");
    let out = ferrovm(&src.images, "jit", &["--serial", &format!("file:{}", serial.display())])
        .arg("--restore")
        .arg(&one)
        .output()
        .expect("ferrovm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- restore:\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("the restored guest runs"), "{stderr}");
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(field(&text, "final"), Some(src.expected.as_str()), "{text}");
    assert!(!text.contains("Linux version") && !text.contains("T:step 1 "), "{text}");

    // `ferrovm snapshot list`.
    let list = Command::new(env!("CARGO_BIN_EXE_ferrovm")).arg("snapshot").arg("list").arg(&src.snapshots).output();
    let list = String::from_utf8_lossy(&list.expect("ferrovm runs").stdout).into_owned();
    assert!(list.lines().any(|l| l.starts_with("one ")), "{list}");

    let copy = |name: &str| -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(one.join("state"), d.join("state")).unwrap();
        std::fs::hard_link(one.join("memory"), d.join("memory")).unwrap();
        d
    };
    let restore = |d: &Path| refused(src, &["--restore", &d.display().to_string()]);
    let corrupt = copy("corrupt");
    let mut state = std::fs::read(corrupt.join("state")).unwrap();
    let n = state.len();
    state[n / 2] ^= 0x55;
    std::fs::write(corrupt.join("state"), &state).unwrap();
    let e = restore(&corrupt);
    assert!(e.contains("the state file is corrupt: its checksum does not match"), "{e}");
    let truncated = copy("truncated");
    std::fs::write(truncated.join("state"), &state[..n - 10]).unwrap();
    let e = restore(&truncated);
    assert!(e.contains("the state file is truncated"), "{e}");
    std::fs::write(truncated.join("state"), b"#!/bin/sh\necho hello\n").unwrap();
    let e = restore(&truncated);
    assert!(e.contains("not a ferrovm state file"), "{e}");
    let e = refused(src, &["--mem", "128M", "--restore", &one.display().to_string()]);
    assert!(e.contains("another machine: 256 MiB of RAM there, 128 MiB here (--mem)"), "{e}");

    // A stream cut short, and one damaged in its RAM.
    let e = refused(src, &["--incoming", &format!("exec:head -c 100000 {}", src.stream.display())]);
    assert!(e.contains("truncated") && e.contains("migration stream ended"), "{e}");
    let damaged = dir.join("damaged-stream");
    let mut bytes = std::fs::read(&src.stream).unwrap();
    let n = bytes.len();
    bytes[n - 4096] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    let e = refused(src, &["--incoming", &format!("exec:cat {}", damaged.display())]);
    assert!(e.contains("checksum does not match"), "{e}");
}

#[test]
fn savevm_without_a_snapshot_dir_says_to_give_one() {
    let Some(images) = images() else { return };
    let dir = scratch();
    let qmp = dir.join("nodir.qmp");
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
    let vm = Vm(Some(
        ferrovm(&images, "jit", &["--serial", "none", "--paused", "--qmp", &qmp_arg])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrovm runs"),
    ));
    let mut q = Qmp::connect(&qmp);
    let r = q.hmp("savevm x");
    assert!(r.contains("--snapshot-dir DIR"), "{r}");
    let r = q.cmd(r#"{"execute":"migrate","arguments":{"uri":"rdma:host:1"}}"#);
    assert!(r.contains("exec:CMD, unix:PATH or tcp:HOST:PORT"), "{r}");
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    assert_eq!(vm.wait().status.code(), Some(0));
}
