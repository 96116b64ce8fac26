//! Saved states end to end, through the ferrovm binary: a Linux guest
//! paused mid-computation and migrated through `exec:cat > FILE` finishes
//! its computation on another process started with `--incoming` (under
//! the JIT, the interpreter and KVM, through `exec:`, `tcp:` and `unix:`),
//! without booting again; `savevm` and
//! `loadvm` through HMP on a running guest; `--restore` from a snapshot
//! directory; ten clones of one snapshot in less memory than half again
//! the guest's; and damaged state files and streams refused with a clear
//! error and exit status 1.
//!
//! One guest boots (under the JIT) for all of them but the clone tests,
//! which boot their own: it saves a snapshot, is migrated, and loads its
//! snapshot back; the receivers and restores run what is left of its
//! script. Without the guest images the tests say
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
  echo "T:step $i $h $(cut -d' ' -f1 /proc/uptime)"
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
        // One folder per run (streams and RAM images of a few tens of
        // MiB): those of runs that ended go when the next one starts, and
        // runs at the same time keep theirs.
        let top = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for e in std::fs::read_dir(top).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("snapshot-tests-") else { continue };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let d = top.join(format!("snapshot-tests-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("a scratch directory");
        d
    })
}

/// `ferrovm run` with the guest's kernel, initrd and script, and `extra`
/// (which may set another `--mem`).
fn ferrovm(images: &Path, accel: &str, extra: &[&str]) -> Command {
    ferrovm_running(images, accel, SCRIPT, extra)
}

/// [`ferrovm`] with another script.
fn ferrovm_running(images: &Path, accel: &str, script: &str, extra: &[&str]) -> Command {
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(script.as_bytes()));
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrovm"));
    c.args(["run", "--accel", accel, "--timeout", "120", "--stats"]);
    // One model under every engine, for the guests that move between the
    // JIT and KVM: the JIT's default (max) is not KVM's (v2).
    if !extra.contains(&"--cpu") {
        c.args(["--cpu", "v2"]);
    }
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

/// A guest running `script` under `accel`, with its serial output, its
/// QMP socket and its snapshot directory in `dir`: the VM, its QMP
/// session, the serial file and the snapshot directory.
fn saving_guest(images: &Path, accel: &str, script: &str, dir: &Path) -> (Vm, Qmp, PathBuf, PathBuf) {
    let (serial, qmp, snapshots) = (dir.join("source.out"), dir.join("source.qmp"), dir.join("snapshots"));
    let serial_arg = format!("file:{}", serial.display());
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
    let snap_arg = snapshots.display().to_string();
    let vm = Vm(Some(
        ferrovm_running(
            images,
            accel,
            script,
            &["--serial", &serial_arg, "--qmp", &qmp_arg, "--snapshot-dir", &snap_arg],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrovm runs"),
    ));
    let q = Qmp::connect(&qmp);
    (vm, q, serial, snapshots)
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
    /// The guest's uptime (from its clock) at its first step, before the
    /// state it was migrated in.
    uptime: f64,
}

/// The uptime each `T:step` line of `text` carries, in order.
fn step_uptimes(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').split_once("T:step ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((format!("step {}", f.first()?), f.get(2)?.parse().ok()?))
        })
        .collect()
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
            let stream = dir.join("stream");
            let t = Instant::now();
            let (vm, mut q, serial, snapshots) = saving_guest(&images, accel, SCRIPT, &dir);
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
            // The loaded snapshot, and so the migrated guest, is from
            // after the first step.
            let uptime = step_uptimes(&text).iter().find(|(s, _)| s == "step 1").map_or(0.0, |&(_, u)| u);
            Some(Source { images, stream, snapshots, expected, from: accel.to_string(), uptime })
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
    // The guest's clock goes on from where it stopped (no jump of its
    // time-stamp counter when another engine takes it).
    for (step, up) in step_uptimes(&text) {
        assert!(
            up >= src.uptime && up < src.uptime + 300.0,
            "{step} at uptime {up} s, the source's step 1 at {} s: the guest's clock jumped",
            src.uptime
        );
    }
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

// ---- snapshots inside qcow2 disks, and clones ------------------------------

/// The generic kernel with the initramfs that carries the virtio disk and
/// NIC modules.
fn disk_images() -> Option<PathBuf> {
    images::images(&["vmlinuz-generic", "initramfs-net.cpio.gz"])
}

/// Whether `tool` runs here; says why a test is skipped when it does not.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !ok {
        eprintln!("skipping: {tool} is not installed (Debian: qemu-utils)");
    }
    ok
}

/// Runs `program` with `args`; its stdout, after checking it succeeded.
fn run_ok(program: &str, args: &[&str]) -> String {
    let o = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        o.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// sha256 of the first `len` bytes of `path`.
fn sha256_head(path: &Path, len: u64) -> String {
    let o =
        Command::new("sh").arg("-c").arg(format!("head -c {len} '{}' | sha256sum", path.display())).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Every value of `T:key` lines, in order.
fn fields<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("T:{key} ");
    out.lines().filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str())).map(str::trim).collect()
}

/// `ferrovm run` on the generic kernel with `script` and `extra`.
fn disk_guest(images: &Path, script: &str, extra: &[&str]) -> Command {
    let cmdline = format!("console=ttyS0 quiet ferrovm.poweroff=1 ferrovm.cmd={}", base64(script.as_bytes()));
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrovm"));
    c.args(["run", "--accel", "jit", "--timeout", "600", "--mem", MEM])
        .args(extra)
        .arg("--kernel")
        .arg(images.join("vmlinuz-generic"))
        .arg("--initrd")
        .arg(images.join("initramfs-net.cpio.gz"))
        .arg("--append")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

const LOAD_DISK: &str = r#"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net; do
    insmod /lib/modules/$m.ko 2>/dev/null || grep -q "^$m " /proc/modules || echo "T:insmod-failed $m"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
"#;

/// The guest of the qcow2 test: writes 4 MiB (A), waits for `savevm`,
/// reads the disk back, writes 2 MiB over its middle (B), waits for
/// `loadvm`, and reads the disk back once more. Each read drops the page
/// cache first, so it sees the disk.
const QCOW2_SCRIPT: &str = r#"
head -c 4194304 /dev/urandom > /tmp/a
dd if=/tmp/a of=/dev/vda bs=1M conv=fsync 2>/dev/null || echo "T:write-failed a"
echo "T:a $(sha256sum < /tmp/a | cut -d' ' -f1)"
echo "T:saveme now"
sleep 3
sync; echo 3 > /proc/sys/vm/drop_caches
echo "T:before-b $(dd if=/dev/vda bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)"
head -c 2097152 /dev/urandom > /tmp/b
dd if=/tmp/b of=/dev/vda bs=1M seek=1 conv=fsync 2>/dev/null || echo "T:write-failed b"
echo "T:expect $({ head -c 1048576 /tmp/a; cat /tmp/b; tail -c 1048576 /tmp/a; } | sha256sum | cut -d' ' -f1)"
echo "T:wrote-b now"
sleep 3
sync; echo 3 > /proc/sys/vm/drop_caches
echo "T:final $(dd if=/dev/vda bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)"
"#;

/// `savevm` into a qcow2 disk, as QEMU keeps it: the guest writes its disk,
/// `savevm s1` (HMP through QMP), writes more, `loadvm s1`: the guest sees
/// its disk as it was and goes on. Then `qemu-img` lists the snapshot,
/// reads its disk, and finds the image clean; a snapshot QEMU made is
/// listed by ferrovm, and deleted through `delvm`.
#[test]
fn savevm_and_loadvm_inside_a_qcow2_disk() {
    let Some(images) = disk_images() else { return };
    if !have("qemu-img") {
        return;
    }
    let dir = scratch().join("qcow2");
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.qcow2");
    let _ = std::fs::remove_file(&disk);
    run_ok("qemu-img", &["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"]);
    run_ok("qemu-img", &["snapshot", "-c", "from-qemu", disk.to_str().unwrap()]);
    // ferrovm lists what QEMU made.
    let list = Command::new(env!("CARGO_BIN_EXE_ferrovm")).args(["snapshot", "list"]).arg(&disk).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.starts_with("Snapshot list:\nID        TAG") && list.contains("from-qemu"), "{list}");

    let (serial, qmp) = (dir.join("guest.out"), dir.join("guest.qmp"));
    let script = format!("{LOAD_DISK}{QCOW2_SCRIPT}");
    let vm = Vm(Some(
        disk_guest(
            &images,
            &script,
            &[
                "--serial",
                &format!("file:{}", serial.display()),
                "--qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
                "--disk",
                &disk.display().to_string(),
            ],
        )
        .spawn()
        .expect("ferrovm runs"),
    ));
    let mut q = Qmp::connect(&qmp);
    wait_for(&serial, "T:saveme");
    let t = Instant::now();
    assert_eq!(q.hmp("savevm s1"), r#"{"return":""}"#);
    let savevm = t.elapsed();
    let info = q.hmp("info snapshots");
    eprintln!("info snapshots: {info}");
    assert!(info.contains("List of snapshots present on all disks:\\r\\nID        TAG"), "{info}");
    assert!(info.contains("--        s1 ") && info.contains("--        from-qemu "), "{info}");
    wait_for(&serial, "T:wrote-b");
    let t = Instant::now();
    assert_eq!(q.hmp("loadvm s1"), r#"{"return":""}"#);
    let loadvm = t.elapsed();
    assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""status":"running""#));
    assert_eq!(q.hmp("delvm from-qemu"), r#"{"return":""}"#);
    let r = q.hmp("loadvm from-qemu");
    assert!(r.contains("does not have the requested snapshot 'from-qemu'"), "{r}");
    let out = vm.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    let ctx = format!("--- serial:\n{text}\n--- stderr:\n{stderr}");
    assert!(!text.contains("T:insmod-failed") && !text.contains("T:write-failed"), "{ctx}");
    let a = fields(&text, "a");
    assert_eq!(a.len(), 1, "A was written once, before the snapshot\n{ctx}");
    assert_eq!(fields(&text, "saveme").len(), 1, "{ctx}");
    assert_eq!(
        fields(&text, "before-b"),
        [a[0], a[0]],
        "the guest read A before writing B, and again after loadvm\n{ctx}"
    );
    assert_eq!(fields(&text, "wrote-b").len(), 2, "the loaded guest went on from the snapshot\n{ctx}");
    let expect = fields(&text, "expect");
    assert_eq!(expect.len(), 2, "{ctx}");
    assert_eq!(fields(&text, "final"), [expect[1]], "the guest's second B is on the disk\n{ctx}");

    // QEMU's view of the image.
    let list = run_ok("qemu-img", &["snapshot", "-l", disk.to_str().unwrap()]);
    eprintln!("qemu-img snapshot -l:\n{list}");
    assert!(list.lines().any(|l| l.split_whitespace().nth(1) == Some("s1")), "{list}");
    assert!(!list.contains("from-qemu"), "{list}");
    let check = Command::new("qemu-img").arg("check").arg(&disk).output().unwrap();
    let check_out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && check_out.contains("No errors were found"), "qemu-img check: {check_out}");
    let snap_raw = dir.join("s1.raw");
    let _ = std::fs::remove_file(&snap_raw);
    run_ok(
        "qemu-img",
        &["convert", "-O", "raw", "-l", "snapshot.name=s1", disk.to_str().unwrap(), snap_raw.to_str().unwrap()],
    );
    assert_eq!(sha256_head(&snap_raw, 4 << 20), a[0], "the snapshot's disk holds A");
    let vm_size = list.lines().find(|l| l.contains(" s1 ")).unwrap_or_default().to_string();
    eprintln!(
        "a {MEM} guest on a qcow2 disk: savevm {:.3} s, loadvm {:.3} s; {vm_size}",
        savevm.as_secs_f64(),
        loadvm.as_secs_f64()
    );

    // A new process starts from the snapshot (QEMU's -loadvm): the guest
    // goes on from `savevm` without booting, on the disk as it was then.
    let serial2 = dir.join("loadvm.out");
    let out = disk_guest(
        &images,
        &script,
        &["--serial", &format!("file:{}", serial2.display()), "--disk", &disk.display().to_string(), "--loadvm", "s1"],
    )
    .output()
    .expect("ferrovm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&serial2).unwrap_or_default();
    let ctx = format!("--- serial:\n{text}\n--- stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{ctx}");
    assert!(!text.contains("ferrovm-init: start") && !text.contains("T:saveme"), "it did not boot\n{ctx}");
    assert_eq!(fields(&text, "before-b"), [a[0]], "{ctx}");
    let expect = fields(&text, "expect");
    assert_eq!(fields(&text, "final"), expect, "{ctx}");
    let check = Command::new("qemu-img").arg("check").arg(&disk).output().unwrap();
    assert!(String::from_utf8_lossy(&check.stdout).contains("No errors were found"));
    let r =
        disk_guest(&images, &script, &["--serial", "none", "--disk", &disk.display().to_string(), "--loadvm", "nope"])
            .output()
            .expect("ferrovm runs");
    let e = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{e}");
    assert!(e.contains("--loadvm nope") && e.contains("does not have the requested snapshot 'nope'"), "{e}");
}

/// The guest of the clone test. Before the snapshot it writes a marker to
/// its disk, keeps a random token in a shell variable and fills 64 MiB of
/// tmpfs, then sleeps; the snapshot is taken there. A clone wakes up,
/// prints the token (from memory), writes 1 MiB of its own to its disk,
/// re-binds its NIC's driver and prints the address it then reads from
/// the NIC, waits to be measured, and powers off.
const CLONE_SCRIPT: &str = r#"
printf 'base-data' | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null || echo "T:write-failed base"
token=$(head -c 16 /dev/urandom | sha256sum | cut -d' ' -f1)
head -c 67108864 /dev/urandom > /tmp/ballast
echo "T:ready now"
sleep 5
echo "T:token $token"
sync; echo 3 > /proc/sys/vm/drop_caches
echo "T:base $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 9)"
head -c 1048576 /dev/urandom > /tmp/mine
dd if=/tmp/mine of=/dev/vda bs=1M seek=2 conv=fsync 2>/dev/null || echo "T:write-failed mine"
echo "T:mine $(sha256sum < /tmp/mine | cut -d' ' -f1)"
d=$(basename $(readlink /sys/class/net/eth0/device))
echo $d > /sys/bus/virtio/drivers/virtio_net/unbind
echo $d > /sys/bus/virtio/drivers/virtio_net/bind
sleep 1
echo "T:mac $(cat /sys/class/net/eth*/address | head -n 1)"
echo "T:measure now"
sleep 4
"#;

/// A field of /proc/PID/smaps_rollup, in KiB.
fn smaps_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Ten clones of a sleeping guest's snapshot run side by side in less
/// host memory than 1.5 times the guest booted once (the sum of their
/// proportional set sizes, a page ten share counting a tenth in each):
/// what a clone's guest only reads stays the snapshot's memory file's.
/// `ferrovm bench --restore` measures the same with 512 MiB.
#[test]
fn ten_clones_of_a_sleeping_guest_take_less_than_half_again_its_memory() {
    let Some(images) = images() else { return };
    let dir = scratch().join("ten-clones");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = "echo T:ready; sleep 600";
    let (source, mut q, serial, snapshots) = saving_guest(&images, "jit", script, &dir);
    wait_for(&serial, "T:ready");
    std::thread::sleep(Duration::from_millis(500));
    let booted = smaps_kib(source.0.as_ref().unwrap().id(), "Pss");
    assert_eq!(q.hmp("savevm sleeping"), r#"{"return":""}"#);
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    let out = source.wait();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let snap = snapshots.join("sleeping").display().to_string();
    let mut clones = Vec::new();
    for i in 0..10 {
        let err = dir.join(format!("clone{i}.err"));
        let clone_dir = dir.join(format!("clone{i}")).display().to_string();
        let child = ferrovm_running(
            &images,
            "jit",
            script,
            &["--serial", "none", "--restore", &snap, "--clone", "--clone-dir", &clone_dir],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("ferrovm runs");
        clones.push((Vm(Some(child)), err));
    }
    for (_, err) in &clones {
        wait_for(err, "the restored guest is ready");
    }
    // A while of sleeping, as the guests go on.
    std::thread::sleep(Duration::from_secs(1));
    let pss: Vec<u64> = clones.iter().map(|(vm, _)| smaps_kib(vm.0.as_ref().unwrap().id(), "Pss")).collect();
    for (vm, err) in &mut clones {
        let running = vm.0.as_mut().unwrap().try_wait().unwrap().is_none();
        assert!(running, "a clone ended: {}", std::fs::read_to_string(err).unwrap_or_default());
    }
    let sum: u64 = pss.iter().sum();
    eprintln!(
        "ten clones of a sleeping {MEM} guest: PSS {pss:?} KiB, {sum} KiB in all, {:.2}x the booted guest's {booted} KiB",
        sum as f64 / booted.max(1) as f64
    );
    assert!(pss.iter().all(|&p| p > 0), "a clone's memory could not be read: {pss:?}");
    assert!(sum * 2 < booted * 3, "ten clones take {sum} KiB, the booted guest {booted} KiB");
}

/// Three clones of one snapshot run at once: each sees the snapshot's
/// memory, writes its own overlay, gets its own MAC address, and shares
/// the snapshot's pages; the snapshot's disk copy is never written.
#[test]
fn three_clones_of_one_snapshot_run_side_by_side() {
    let Some(images) = disk_images() else { return };
    if !have("qemu-img") {
        return;
    }
    let dir = scratch().join("clones");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(32 << 20).unwrap();
    let snapshots = dir.join("snapshots");
    let script = format!("{LOAD_DISK}{CLONE_SCRIPT}");
    let nic = "user,model=virtio";
    let (serial, qmp) = (dir.join("source.out"), dir.join("source.qmp"));
    let vm = Vm(Some(
        disk_guest(
            &images,
            &script,
            &[
                "--serial",
                &format!("file:{}", serial.display()),
                "--qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
                "--snapshot-dir",
                &snapshots.display().to_string(),
                "--nic",
                nic,
                "--disk",
                &format!("{},format=raw", disk.display()),
            ],
        )
        .spawn()
        .expect("ferrovm runs"),
    ));
    let mut q = Qmp::connect(&qmp);
    wait_for(&serial, "T:ready");
    let source_private = smaps_kib(vm.0.as_ref().unwrap().id(), "Private_Dirty");
    eprintln!("the booted source (its 64 MiB of tmpfs written): Private_Dirty {source_private} KiB");
    let t = Instant::now();
    assert_eq!(q.hmp("savevm snap"), r#"{"return":""}"#);
    eprintln!("savevm of a {MEM} guest with a 32 MiB raw disk into a directory: {:?}", t.elapsed());
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    let out = vm.wait();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let snap = snapshots.join("snap");
    let base = snap.join("disk0.raw");
    assert!(std::fs::metadata(&base).unwrap().permissions().readonly(), "the disk copy is read-only");
    let base_hash = sha256_head(&base, 32 << 20);
    assert_eq!(std::fs::read(&base).unwrap()[..9], *b"base-data", "the copy holds what the guest wrote");

    // Three clones at once.
    let mut clones = Vec::new();
    for i in 0..3 {
        let serial = dir.join(format!("clone{i}.out"));
        let clone_dir = dir.join(format!("clone{i}"));
        let child = disk_guest(
            &images,
            &script,
            &[
                "--serial",
                &format!("file:{}", serial.display()),
                "--nic",
                nic,
                "--restore",
                &snap.display().to_string(),
                "--clone",
                "--clone-dir",
                &clone_dir.display().to_string(),
            ],
        )
        .spawn()
        .expect("ferrovm runs");
        clones.push((Vm(Some(child)), serial, clone_dir));
    }
    let mut private = Vec::new();
    for (vm, serial, _) in &clones {
        wait_for(serial, "T:measure");
        let pid = vm.0.as_ref().unwrap().id();
        let (dirty, rss, pss) = (smaps_kib(pid, "Private_Dirty"), smaps_kib(pid, "Rss"), smaps_kib(pid, "Pss"));
        private.push(dirty);
        eprintln!("clone pid {pid}: Private_Dirty {dirty} KiB, Rss {rss} KiB, Pss {pss} KiB ({MEM} of guest RAM)");
    }
    let mut tokens = Vec::new();
    let mut macs = Vec::new();
    for (vm, serial, clone_dir) in clones {
        let out = vm.wait();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        let ctx = format!("--- serial:\n{text}\n--- stderr:\n{stderr}");
        assert_eq!(out.status.code(), Some(0), "{ctx}");
        assert!(stderr.contains(&format!("its disk overlays are in {}", clone_dir.display())), "{ctx}");
        assert!(!text.contains("T:write-failed") && !text.contains("Linux version"), "a clone does not boot\n{ctx}");
        assert_eq!(fields(&text, "base"), ["base-data"], "{ctx}");
        tokens.push(fields(&text, "token").first().copied().unwrap_or_default().to_string());
        // The MAC the NIC now reports is the one ferrovm gave the clone.
        let given = stderr.lines().find_map(|l| l.strip_prefix("ferrovm: clone NIC with MAC ")).unwrap_or_default();
        let seen = fields(&text, "mac").first().copied().unwrap_or_default().to_string();
        assert_eq!(seen, given, "{ctx}");
        let first = u8::from_str_radix(&given[..2], 16).unwrap();
        assert_eq!(first & 3, 2, "a locally administered unicast address: {given}");
        macs.push(given.to_string());
        // Its writes are in its own overlay, over the snapshot's copy.
        let overlay = clone_dir.join("disk0.qcow2");
        let info = run_ok("qemu-img", &["info", "--output=json", overlay.to_str().unwrap()]);
        assert!(info.contains(&base.canonicalize().unwrap().display().to_string()), "{info}");
        let check = run_ok("qemu-img", &["check", overlay.to_str().unwrap()]);
        assert!(check.contains("No errors were found"), "{check}");
        let raw = clone_dir.join("converted.raw");
        run_ok("qemu-img", &["convert", "-O", "raw", overlay.to_str().unwrap(), raw.to_str().unwrap()]);
        let mine = Command::new("sh")
            .arg("-c")
            .arg(format!("tail -c +2097153 '{}' | head -c 1048576 | sha256sum", raw.display()))
            .output()
            .unwrap();
        let mine = String::from_utf8_lossy(&mine.stdout).split_whitespace().next().unwrap_or_default().to_string();
        assert_eq!(fields(&text, "mine"), [mine.as_str()], "{ctx}");
    }
    assert!(
        tokens.iter().all(|t| t.len() == 64 && *t == tokens[0]),
        "every clone has the snapshot's memory: {tokens:?}"
    );
    macs.sort();
    macs.dedup();
    assert_eq!(macs.len(), 3, "each clone has its own MAC: {macs:?}");
    assert_eq!(sha256_head(&base, 32 << 20), base_hash, "the snapshot's disk copy is unchanged");
    // The snapshot is in use only while clones run: now it can go.
    eprintln!(
        "clones' Private_Dirty: {private:?} KiB, each of a {MEM} guest; the booted source's: {source_private} KiB"
    );
    assert!(private.iter().all(|&p| p < source_private), "a clone shares the snapshot's pages: {private:?} KiB");
}
