//! Running the `ferrovm` binary from a test.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A path for `name` in this test process's own temporary folder.
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrovm-{suite}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Run the binary with `args`, no standard input, and collect its output.
pub fn ferrovm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrovm")).args(args).stdin(Stdio::null()).output().expect("ferrovm runs")
}

/// Whether KVM can run guests here; says why not when it cannot.
#[allow(dead_code, reason = "not every suite has KVM runs")]
pub fn kvm_usable() -> bool {
    match hvf_kvm_accel::open() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping the KVM run: {e}");
            false
        }
    }
}

/// Reads `child`'s standard output until `done` says what it printed is
/// enough, it ends, or `secs` pass; then kills it. What it printed, and
/// whether it was still running when it was stopped.
#[allow(dead_code, reason = "not every suite watches a run")]
pub fn run_until(mut child: Child, done: impl Fn(&str) -> bool, secs: u64) -> (String, bool) {
    let rx = read_in_chunks(child.stdout.take().expect("piped stdout"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(b) => out.extend(b),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        if done(&String::from_utf8_lossy(&out)) {
            break;
        }
    }
    let running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    (String::from_utf8_lossy(&out).into_owned(), running)
}

/// Reads `child`'s standard output until it exits (or `secs` pass, or,
/// with `stop_when_all`, every marker has appeared; then it is killed):
/// what it printed, its exit status, and when (after this call) each of
/// `markers` first appeared in the output.
#[allow(dead_code, reason = "not every suite times a run")]
pub fn watch_markers(
    mut child: Child,
    markers: &[&str],
    secs: u64,
    stop_when_all: bool,
) -> (String, Option<i32>, Vec<Option<Duration>>) {
    let start = Instant::now();
    let rx = read_in_chunks(child.stdout.take().expect("piped stdout"));
    let deadline = start + Duration::from_secs(secs);
    let mut out = Vec::new();
    let mut marks = vec![None; markers.len()];
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(b) => out.extend(b),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&out);
        for (m, at) in markers.iter().zip(marks.iter_mut()) {
            if at.is_none() && text.contains(m) {
                *at = Some(start.elapsed());
            }
        }
        if stop_when_all && marks.iter().all(Option::is_some) {
            break;
        }
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let status = child.wait().ok().and_then(|s| s.code());
    (String::from_utf8_lossy(&out).into_owned(), status, marks)
}

/// What `stdout` gives, chunk by chunk, from a thread of its own.
#[allow(dead_code, reason = "not every suite watches a run")]
fn read_in_chunks(mut stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<Vec<u8>> {
    use std::io::Read;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// A VNC display number whose port (5900 + N) was free a moment ago.
#[allow(dead_code, reason = "not every suite runs a VNC server")]
pub fn free_display() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert!(port > 5900, "an ephemeral port above 5900: {port}");
    port - 5900
}
