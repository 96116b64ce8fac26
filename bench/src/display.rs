//! `ferrovm bench --display`: what a VNC client costs while the guest
//! shows a still screen. A Linux guest (the cloud kernel, booted directly
//! with the standard VGA) sleeps after its start mark; the host reads the
//! emulator's CPU time (`/proc/PID/stat`) over a window with no client,
//! then over a window with one client that asks for an incremental update
//! after each one it gets, as a viewer does. The difference is the
//! display's idle cost. QEMU TCG runs the same guest with its `-vnc` when
//! it is installed. The latency of a full-screen change is the criterion
//! bench `benches/display.rs`.

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::work::{base64, START};

/// How long each CPU-time window lasts.
const WINDOW: Duration = Duration::from_secs(10);

/// The CPU time (user + system) process `pid` has used.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// The share of one core `pid` used over [`WINDOW`].
fn cpu_share(pid: u32) -> Option<f64> {
    let before = cpu_time(pid)?;
    std::thread::sleep(WINDOW);
    let after = cpu_time(pid)?;
    Some((after - before).as_secs_f64() / WINDOW.as_secs_f64())
}

/// A display number whose port (5900 + N) was free a moment ago.
fn free_display() -> Option<u16> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    port.checked_sub(5900)
}

/// Starts `cmd` and waits for the guest's start mark on its stdout.
fn start(cmd: &[String]) -> Result<Child, String> {
    let mut w = crate::watch(cmd, &[START])?;
    match w.marks.recv_timeout(Duration::from_secs(600)) {
        Ok(_) => Ok(w.child),
        Err(_) => {
            let _ = w.child.kill();
            let _ = w.child.wait();
            Err("the guest did not reach its start mark".into())
        }
    }
}

/// A viewer on `display` that asks for an update after each one until
/// `stop`; the updates it got.
fn viewer(display: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let addr = ([127, 0, 0, 1], 5900 + display).into();
        let mut c = vnc::client::Client::connect(addr, None, vnc::client::ClientEncoding::Raw)
            .map_err(|e| format!("VNC client: {e}"))?;
        let mut updates = 0;
        c.request(false).map_err(|e| e.to_string())?;
        while !stop.load(Ordering::Acquire) {
            match c.read_update() {
                Ok(_) => {
                    updates += 1;
                    c.request(true).map_err(|e| e.to_string())?;
                }
                // The emulator ends after the window: the connection with it.
                Err(_) if stop.load(Ordering::Acquire) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(updates)
    })
}

/// One row: the share of a core without and with a viewer, and the
/// viewer's update count.
type Row = Result<(f64, f64, u64), String>;

/// Measures one emulator's row.
fn measure(name: &str, cmd: &[String], display: u16) -> Row {
    let mut child = start(cmd)?;
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2));
    let alone = cpu_share(pid).ok_or("no /proc stat")?;
    let stop = Arc::new(AtomicBool::new(false));
    let v = viewer(display, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let watched = cpu_share(pid).ok_or("no /proc stat")?;
    stop.store(true, Ordering::Release);
    let _ = child.kill();
    let _ = child.wait();
    let updates = v.join().map_err(|_| "the viewer panicked")??;
    eprintln!("{name}: {:.2}% of a core alone, {:.2}% with a viewer", alone * 100.0, watched * 100.0);
    Ok((alone, watched, updates))
}

/// Runs the bench; the exit status.
pub fn run(args: &crate::BenchArgs) -> i32 {
    let kernel = args.images.join("vmlinuz-cloud");
    let initrd = args.images.join("initramfs.cpio.gz");
    if !kernel.is_file() || !initrd.is_file() {
        eprintln!(
            "ferrovm bench --display needs {} and {} (scripts/guest-images.sh)",
            kernel.display(),
            initrd.display()
        );
        return 1;
    }
    let script = format!("echo {START}; sleep 120");
    let append = format!("console=ttyS0 quiet ferrovm.cmd={}", base64(script.as_bytes()));
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
    let mut rows: Vec<(String, Row)> = Vec::new();
    let Some(d) = free_display() else {
        eprintln!("no free TCP port for the VNC server");
        return 1;
    };
    let ferrovm: Vec<String> = [
        exe.as_str(),
        "run",
        "--accel",
        "jit",
        "--mem",
        "512M",
        "--serial",
        "stdio",
        "--vnc",
        &format!("127.0.0.1:{d}"),
        "--kernel",
        &kernel.display().to_string(),
        "--initrd",
        &initrd.display().to_string(),
        "--append",
        &append,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    rows.push(("ferrovm jit".into(), measure("ferrovm jit", &ferrovm, d)));
    if let Some(q) = crate::demo::which("qemu-system-x86_64") {
        if let Some(d) = free_display() {
            let qemu = qemu_cmd(&q, &kernel, &initrd, &append, d);
            rows.push(("QEMU TCG".into(), measure("QEMU TCG", &qemu, d)));
        }
    }
    println!("display idle cost: a Linux guest sleeping with a still screen, {} s per window", WINDOW.as_secs());
    println!("{:<14} {:>14} {:>16} {:>12} {:>10}", "", "no viewer", "one viewer", "difference", "updates");
    let mut status = 0;
    for (name, r) in &rows {
        match r {
            Ok((alone, watched, updates)) => println!(
                "{name:<14} {:>13.2}% {:>15.2}% {:>11.2}% {updates:>10}",
                alone * 100.0,
                watched * 100.0,
                (watched - alone) * 100.0
            ),
            Err(e) => {
                println!("{name:<14} failed: {e}");
                status = 1;
            }
        }
    }
    println!("(percent of one host core; the goal is a difference of at most 1%)");
    status
}

fn qemu_cmd(q: &Path, kernel: &Path, initrd: &Path, append: &str, display: u16) -> Vec<String> {
    let mut v: Vec<String> = vec![q.display().to_string()];
    v.extend(
        ["-accel", "tcg", "-m", "512", "-nodefaults", "-vga", "std", "-serial", "stdio", "-vnc"]
            .iter()
            .map(|s| s.to_string()),
    );
    v.push(format!("127.0.0.1:{display}"));
    v.extend(["-kernel".into(), kernel.display().to_string(), "-initrd".into(), initrd.display().to_string()]);
    v.extend(["-append".into(), append.to_string()]);
    v
}
