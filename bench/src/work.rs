//! `ferrovm bench --work`: compute-bound work inside a Linux guest (a shell
//! loop, hashes of 64 MiB, a gzip round trip) under each engine and under
//! QEMU TCG when it is installed, timed by the host between two lines the
//! guest prints around the work, so boot time is left out.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

/// One workload: its name and the shell command the guest runs.
const WORKLOADS: &[(&str, &str)] = &[
    ("shell loop, 200k iterations", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo $i"),
    ("sha256 of 64 MiB", "dd if=/dev/zero bs=1M count=64 2>/dev/null | sha256sum"),
    ("md5 of 64 MiB", "dd if=/dev/zero bs=1M count=64 2>/dev/null | md5sum"),
    ("seq 400k | gzip -6 | gunzip | md5sum", "seq 1 400000 | gzip -6 | gunzip | md5sum"),
];

pub(crate) const START: &str = "ferrovm-bench: start";
pub(crate) const DONE: &str = "ferrovm-bench: done";

pub(crate) fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kernel command line that runs `work` between the two marks.
fn append(work: &str) -> String {
    let script = format!("echo {START}; {work}; echo {DONE}");
    format!("console=ttyS0 quiet ferrovm.poweroff=1 ferrovm.cmd={}", base64(script.as_bytes()))
}

/// Start `cmd` and time from the start mark to the done mark; returns the
/// time and what the guest printed between them.
pub(crate) fn time_work(cmd: &[String], limit: Duration) -> Result<(Duration, String), String> {
    time_marks(cmd, limit).map(|m| (m.work, m.out))
}

/// Printed by a guest script once it runs, before anything it prepares
/// for the timed work: what comes before it is the boot.
pub(crate) const BOOTED: &str = "ferrovm-bench: booted";

/// What [`time_marks`] measured.
pub(crate) struct Marks {
    /// From the process's start to the [`BOOTED`] mark, if the guest
    /// printed one.
    pub booted: Option<Duration>,
    /// From the start mark to the done mark.
    pub work: Duration,
    /// What the guest printed between them.
    pub out: String,
}

/// Start `cmd` and time the boot (to the [`BOOTED`] mark, when printed) and
/// the work (from the start mark to the done mark).
pub(crate) fn time_marks(cmd: &[String], limit: Duration) -> Result<Marks, String> {
    let spawned = Instant::now();
    let (mut child, stdout) = crate::spawn_piped(cmd)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut booted, mut start) = (None, None);
        let mut out = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(BOOTED) && !line.contains("echo") {
                booted.get_or_insert(spawned.elapsed());
            } else if line.contains(START) && !line.contains("echo") {
                start = Some(Instant::now());
            } else if line.contains(DONE) && !line.contains("echo") {
                if let Some(s) = start {
                    let _ = tx.send(Marks { booted, work: s.elapsed(), out: out.trim().to_string() });
                }
                return;
            } else if start.is_some() {
                out.push_str(line.trim());
                out.push('\n');
            }
        }
    });
    let r = match rx.recv_timeout(limit) {
        Ok(v) => Ok(v),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!("not done within {} s", limit.as_secs())),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err("exited before the work was done".into()),
    };
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn ferrovm(kernel: &Path, initrd: &Path, accel: &str, append: &str) -> Vec<String> {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
    [&exe, "run", "--accel", accel, "--mem", "512M", "--serial", "stdio", "--kernel"]
        .iter()
        .map(|s| s.to_string())
        .chain([kernel.display().to_string(), "--initrd".into(), initrd.display().to_string(), "--append".into()])
        .chain([append.to_string()])
        .collect()
}

fn qemu(q: &Path, kernel: &Path, initrd: &Path, append: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "512",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.insert(0, q.display().to_string());
    v.extend([kernel.display().to_string(), "-initrd".into(), initrd.display().to_string(), "-append".into()]);
    v.push(append.to_string());
    v
}

/// `ferrovm bench --work`.
pub fn run(args: &crate::BenchArgs) -> i32 {
    let runs = args.runs.max(1);
    let kernel = args.images.join("vmlinuz-cloud");
    let initrd = args.images.join("initramfs.cpio.gz");
    if !kernel.is_file() || !initrd.is_file() {
        eprintln!(
            "ferrovm bench --work: {} or {} is missing (run scripts/guest-images.sh)",
            kernel.display(),
            initrd.display()
        );
        return 1;
    }
    let q = crate::demo::which("qemu-system-x86_64");
    let kvm = hvf_kvm_accel::open().is_ok();
    println!("ferrovm bench --work: in-guest work on the Debian cloud kernel, median of {runs} run(s), timed between two lines the guest prints\n");
    if q.is_none() {
        println!("QEMU column skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n");
    }
    let mut engines: Vec<&str> = vec!["interp", "jit"];
    if kvm {
        engines.push("kvm");
    }
    if q.is_some() {
        engines.push("qemu");
    }
    let limit = Duration::from_secs(args.boot_timeout);
    print!("{:<38}", "workload");
    for e in &engines {
        print!(" {:>10}", format!("{e} s"));
    }
    println!(" {:>10} {:>10} {:>11}", "jit/qemu", "interp/qemu", "interp/jit");
    let mut status = 0;
    for (name, work) in WORKLOADS {
        let app = append(work);
        let mut times: Vec<Option<Duration>> = Vec::new();
        let mut outputs: Vec<String> = Vec::new();
        for e in &engines {
            let cmd = match (*e, &q) {
                ("qemu", Some(q)) => qemu(q, &kernel, &initrd, &app),
                _ => ferrovm(&kernel, &initrd, e, &app),
            };
            let mut t = Vec::new();
            for _ in 0..runs {
                match time_work(&cmd, limit) {
                    Ok((d, out)) => {
                        t.push(d);
                        outputs.push(out);
                    }
                    Err(err) => {
                        eprintln!("ferrovm bench --work: {name} under {e}: {err}");
                        if *e != "qemu" {
                            status = 1;
                        }
                        break;
                    }
                }
            }
            times.push((t.len() == runs).then(|| {
                t.sort();
                t[t.len() / 2]
            }));
        }
        print!("{name:<38}");
        for t in &times {
            match t {
                Some(d) => print!(" {:>10.2}", d.as_secs_f64()),
                None => print!(" {:>10}", "-"),
            }
        }
        let of = |e: &str| engines.iter().position(|x| *x == e).and_then(|i| times[i]);
        let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        };
        println!(
            " {:>10} {:>10} {:>11}",
            ratio(of("jit"), of("qemu")),
            ratio(of("interp"), of("qemu")),
            ratio(of("interp"), of("jit"))
        );
        outputs.dedup();
        if outputs.len() > 1 {
            println!("  the engines printed different results: {outputs:?}");
            status = 1;
        }
    }
    println!("\nratios of times (below 1: the first is faster)");
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b"echo hi"), "ZWNobyBoaQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
