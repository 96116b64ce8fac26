//! `ferrovm bench --distro`: a whole Debian 12 system, as a user runs one.
//!
//! `guest-images/distro.img` (built by scripts/distro-image.sh) is a raw
//! disk with SYSLINUX's MBR and EXTLINUX booting Debian's generic kernel and
//! its own initramfs (made by update-initramfs) from an ext4 root on
//! virtio-blk, into systemd. Once multi-user.target is reached, a service
//! of the image prints `T:multi-user <uptime>` on the serial console, runs
//! the workloads an SMBIOS OEM string (type 11) `ferrovm.bench=LIST` names,
//! each between `T:<name>-start <uptime>` and `T:<name> <start> <end>`, and
//! powers the machine off through systemd (poweroff.target). The workloads:
//! - `dpkg`: `dpkg -i` of a set of Debian packages kept in the image (jq,
//!   bc, file, less, tree, rsync, perl and what they need), then
//!   `dpkg --purge` of them;
//! - `build`: zlib's source (Debian's .orig tarball): `./configure`,
//!   `make -j2` and `make test`, a fork/exec-heavy parallel build with gcc.
//!
//! One boot per run and emulator runs them all: ferrovm's JIT (`--accel
//! jit`) and, when it is installed, QEMU's TCG, each with 1 GiB, one vCPU,
//! `-cpu max`, the disk on virtio-blk with its writes kept in a temporary
//! overlay (the image is only read) and the serial console on stdout. The
//! host times each phase: from the emulator's start to the multi-user mark
//! (firmware, SYSLINUX, kernel, initramfs and systemd), and from each
//! workload's start mark to its end mark. ferrovm runs with `--stats`, and
//! the last run's statistics (the JIT's share of the guest's instructions,
//! its flushes, the blocks decoded) are printed after the table.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The image, in the images folder.
pub const IMAGE: &str = "distro.img";

/// The workloads a bench run has the guest run, in order.
pub const WORKLOADS: &[&str] = &["dpkg", "build"];

/// Guest RAM in MiB, the same under both emulators.
pub const MEM_MIB: u32 = 1024;

/// A line of the guest's serial console that the image's service printed.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    /// `T:multi-user <uptime>`: multi-user.target was reached.
    MultiUser(f64),
    /// `T:workloads <list>`: what the guest will run.
    Workloads(Vec<String>),
    /// `T:<name>-start <uptime>`: a workload starts.
    Start(String, f64),
    /// `T:<name> <start> <end>`: a workload ended well.
    Done(String, f64, f64),
    /// `T:<name>-failed <status>`: a workload failed.
    Failed(String, String),
    /// `T:poweroff <uptime>`: the guest powers off.
    Poweroff(f64),
}

/// The mark in one line of the guest's serial console, if it holds one.
/// Other output may come before it on the same line (a kernel message, or
/// systemd's status line ended by a carriage return), itself holding `T:`
/// (`NET: Registered ...`): the first `T:` that starts a whole mark is
/// taken.
pub fn parse_mark(line: &str) -> Option<Mark> {
    line.match_indices("T:").find_map(|(at, _)| parse_at(&line[at..]))
}

/// The mark at the start of `s` (which starts with `T:`), if there is one.
fn parse_at(s: &str) -> Option<Mark> {
    let mut words = s[2..].split_whitespace();
    let tag = words.next()?;
    let rest: Vec<&str> = words.collect();
    let num = |i: usize| rest.get(i).and_then(|w| w.parse::<f64>().ok());
    let named = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    match tag {
        "multi-user" => num(0).map(Mark::MultiUser),
        "poweroff" => num(0).map(Mark::Poweroff),
        "workloads" => {
            Some(Mark::Workloads(rest.first().map_or(Vec::new(), |l| l.split(',').map(str::to_string).collect())))
        }
        _ => {
            if let Some(name) = tag.strip_suffix("-start").filter(|n| named(n)) {
                num(0).map(|t| Mark::Start(name.to_string(), t))
            } else if let Some(name) = tag.strip_suffix("-failed").filter(|n| named(n)) {
                Some(Mark::Failed(name.to_string(), rest.first().unwrap_or(&"?").to_string()))
            } else if named(tag) {
                Some(Mark::Done(tag.to_string(), num(0)?, num(1)?))
            } else {
                None
            }
        }
    }
}

/// One boot's measurements.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Host seconds from the emulator's start to the multi-user mark.
    pub boot: f64,
    /// The guest's uptime at the multi-user mark.
    pub boot_uptime: f64,
    /// Each workload run: its name, host seconds and guest seconds.
    pub workloads: Vec<(String, f64, f64)>,
    /// Whether the guest printed its poweroff mark and the emulator then
    /// exited with status 0.
    pub clean_poweroff: bool,
    /// What the emulator wrote to stderr (ferrovm: its `--stats`).
    pub stderr: Vec<String>,
}

impl Sample {
    /// The host seconds of workload `name`, if it ran.
    pub fn workload(&self, name: &str) -> Option<f64> {
        self.workloads.iter().find(|w| w.0 == name).map(|w| w.1)
    }
}

/// Whether the marks so far say the run is over (the poweroff mark).
fn over(marks: &[(Mark, Duration)]) -> bool {
    marks.iter().any(|(m, _)| matches!(m, Mark::Poweroff(_)))
}

/// What one run's marks (each with its host time since the start) and the
/// emulator's exit say: the sample, or why the run failed. `out` is the
/// tail of the serial console, for the error.
pub fn sample(marks: &[(Mark, Duration)], exited_ok: bool, want: &[&str], out: &str) -> Result<Sample, String> {
    let tail = || {
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    let mut s = Sample::default();
    let Some((boot_uptime, boot)) =
        marks.iter().find_map(|(m, t)| if let Mark::MultiUser(u) = m { Some((*u, *t)) } else { None })
    else {
        return Err(format!("no T:multi-user mark; the console's last lines:\n{}", tail()));
    };
    s.boot = boot.as_secs_f64();
    s.boot_uptime = boot_uptime;
    for name in want {
        if let Some(st) = marks.iter().find_map(|(m, _)| match m {
            Mark::Failed(n, st) if n == name => Some(st),
            _ => None,
        }) {
            return Err(format!("workload {name} failed (status {st}); the console's last lines:\n{}", tail()));
        }
        let start = marks.iter().find_map(|(m, t)| matches!(m, Mark::Start(n, _) if n == name).then_some(*t));
        let done = marks.iter().find_map(|(m, t)| match m {
            Mark::Done(n, a, b) if n == name => Some((*t, b - a)),
            _ => None,
        });
        match (start, done) {
            (Some(a), Some((b, guest))) => s.workloads.push((name.to_string(), (b - a).as_secs_f64(), guest)),
            _ => return Err(format!("workload {name} did not finish; the console's last lines:\n{}", tail())),
        }
    }
    s.clean_poweroff = over(marks) && exited_ok;
    Ok(s)
}

/// The SMBIOS OEM string that picks the workloads, as QEMU's and ferrovm's
/// `-smbios` take it (a comma within the value doubled).
pub fn smbios(workloads: &[&str]) -> String {
    format!("type=11,value=ferrovm.bench={}", if workloads.is_empty() { "boot".into() } else { workloads.join(",,") })
}

/// ferrovm's command line for the image under `accel`.
pub fn ferrovm_cmd(exe: &Path, image: &Path, accel: &str, workloads: &[&str], limit: Duration) -> Vec<String> {
    let disk = format!("{},format=raw,if=virtio,snapshot=on", image.display());
    let mem = format!("{MEM_MIB}M");
    let timeout = limit.as_secs().to_string();
    let s = [
        "run",
        "--accel",
        accel,
        "--mem",
        mem.as_str(),
        "--cpus",
        "1",
        "--cpu",
        "max",
        "--disk",
        disk.as_str(),
        "--serial",
        "stdio",
        "--no-reboot",
        "--smbios",
        &smbios(workloads),
        "--timeout",
        timeout.as_str(),
        "--stats",
    ]
    .map(str::to_string);
    std::iter::once(exe.display().to_string()).chain(s).collect()
}

/// QEMU's command line for the image under TCG.
pub fn qemu_cmd(q: &Path, image: &Path, workloads: &[&str]) -> Vec<String> {
    let drive = format!("file={},if=virtio,format=raw,snapshot=on", image.display());
    let mem = MEM_MIB.to_string();
    let s = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        mem.as_str(),
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-drive",
        drive.as_str(),
        "-smbios",
        &smbios(workloads),
    ]
    .map(str::to_string);
    std::iter::once(q.display().to_string()).chain(s).collect()
}

/// Runs `cmd` until the emulator exits (after the guest's poweroff) or
/// `limit` passes, and measures it.
pub fn once(cmd: &[String], workloads: &[&str], limit: Duration) -> Result<Sample, String> {
    let program = cmd.first().ok_or("no command")?;
    let started = Instant::now();
    let mut child: Child = std::process::Command::new(program)
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel::<(Option<Mark>, String)>();
    let reader = std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        let mut line = Vec::new();
        while matches!(out.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if tx.send((parse_mark(&text), text)).is_err() {
                break;
            }
            line.clear();
        }
    });
    let errors = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let mut marks: Vec<(Mark, Duration)> = Vec::new();
    let mut out = String::new();
    let mut timed_out = false;
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok((m, text)) => {
                if let Some(m) = m {
                    marks.push((m, started.elapsed()));
                }
                out.push_str(&text);
                out.push('\n');
            }
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    // The guest powered off: the emulator exits on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                break child.wait().ok().filter(|_| false);
            }
        }
    };
    let _ = reader.join();
    let stderr = errors.join().unwrap_or_default();
    // A run that timed out after its workloads has its figures, and no
    // clean power-off.
    let exited_ok = !timed_out && status.is_some_and(|s| s.success());
    sample(&marks, exited_ok, workloads, &out).map(|s| Sample { stderr, ..s }).map_err(|e| {
        let seen: Vec<String> = marks.iter().map(|(m, t)| format!("{m:?} at {:.1} s", t.as_secs_f64())).collect();
        let e = format!("{e}\nthe marks read: {}", seen.join(", "));
        if timed_out {
            format!("not over within {} s: {e}", limit.as_secs())
        } else {
            e
        }
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The error for a missing image, with how to build it.
pub fn missing_image(image: &Path) -> String {
    format!(
        "{} is missing: build it with scripts/distro-image.sh (as root, on Debian, with a loop device: it \
         debootstraps Debian 12 from the archive; about two minutes, 800 MiB of disk)",
        image.display()
    )
}

/// `ferrovm bench --distro`.
pub fn run(args: &crate::BenchArgs) -> i32 {
    let runs = args.runs.max(1);
    let image = args.images.join(IMAGE);
    if !image.is_file() {
        eprintln!("ferrovm bench --distro: {}", missing_image(&image));
        return 1;
    }
    let limit = Duration::from_secs(args.boot_timeout);
    let exe = std::env::current_exe().unwrap_or_else(|_| "ferrovm".into());
    let q = crate::demo::which("qemu-system-x86_64");
    println!(
        "ferrovm bench --distro: {} (Debian 12, SYSLINUX, its own initramfs, systemd, ext4 on virtio-blk), \
         {MEM_MIB} MiB, 1 vCPU, -cpu max, writes to a temporary overlay; host seconds, median of {runs} run(s)\n",
        image.display()
    );
    let mut emulators: Vec<(&str, Vec<String>)> =
        vec![("ferrovm jit", ferrovm_cmd(&exe, &image, "jit", WORKLOADS, limit))];
    match &q {
        Some(q) => emulators.push(("QEMU TCG", qemu_cmd(q, &image, WORKLOADS))),
        None => println!("QEMU column skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n"),
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); emulators.len()];
    let mut status = 0;
    // The emulators alternate, so that a change in the host's load falls on both.
    for run in 0..runs {
        for (i, (name, cmd)) in emulators.iter().enumerate() {
            match once(cmd, WORKLOADS, limit) {
                Ok(s) => {
                    if !s.clean_poweroff {
                        println!("{name} run {}: the guest did not power off cleanly", run + 1);
                        status = 1;
                    }
                    samples[i].push(s);
                }
                Err(e) => {
                    println!("{name} run {}: {e}\n", run + 1);
                    status = 1;
                }
            }
        }
    }
    type Pick = fn(&Sample) -> Option<f64>;
    let rows: [(&str, Pick); 4] = [
        ("boot to multi-user.target", |s| Some(s.boot)),
        ("  (guest uptime then)", |s| Some(s.boot_uptime)),
        ("dpkg -i, dpkg --purge", |s| s.workload("dpkg")),
        ("zlib configure, make -j2, test", |s| s.workload("build")),
    ];
    print!("{:<32}", "");
    for (name, _) in &emulators {
        print!("{name:>14}");
    }
    println!("{:>14}", if emulators.len() > 1 { "ferrovm/QEMU" } else { "" });
    for (label, pick) in rows {
        print!("{label:<32}");
        let meds: Vec<Option<f64>> = samples.iter().map(|v| median(v.iter().filter_map(pick).collect())).collect();
        for m in &meds {
            match m {
                Some(m) => print!("{:>12.1} s", m),
                None => print!("{:>14}", "-"),
            }
        }
        if let (Some(Some(a)), Some(Some(b))) = (meds.first(), meds.get(1)) {
            print!("{:>14.2}", a / b);
        }
        println!();
    }
    if emulators.len() > 1 {
        println!("\nferrovm/QEMU: ferrovm's time over QEMU's (below 1: ferrovm is faster)");
    }
    if let Some(last) = samples.first().and_then(|v| v.last()) {
        println!("\nferrovm --stats of its last run:");
        for line in last.stderr.iter().filter(|l| l.starts_with("ferrovm: ")) {
            println!("  {}", line.trim_start_matches("ferrovm: "));
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_parsed_with_kernel_output_before_them() {
        assert_eq!(parse_mark("T:multi-user 12.34"), Some(Mark::MultiUser(12.34)));
        assert_eq!(parse_mark("[   20.1] random: crng init done\rT:multi-user 7.5"), Some(Mark::MultiUser(7.5)));
        assert_eq!(parse_mark("T:workloads dpkg,build"), Some(Mark::Workloads(vec!["dpkg".into(), "build".into()])));
        assert_eq!(parse_mark("T:dpkg-start 13.01"), Some(Mark::Start("dpkg".into(), 13.01)));
        assert_eq!(parse_mark("T:dpkg 13.01 20.5"), Some(Mark::Done("dpkg".into(), 13.01, 20.5)));
        assert_eq!(parse_mark("T:build-failed 2"), Some(Mark::Failed("build".into(), "2".into())));
        assert_eq!(parse_mark("T:poweroff 99.9"), Some(Mark::Poweroff(99.9)));
        assert_eq!(
            parse_mark("[    1.2] NET: Registered PF_INET6\rT:dpkg-start 1.5"),
            Some(Mark::Start("dpkg".into(), 1.5))
        );
        assert_eq!(
            parse_mark("\r\x1b[K[  *** ] A start job is running for T:x (5s)\r\x1b[KT:multi-user 9.5"),
            Some(Mark::MultiUser(9.5))
        );
    }

    #[test]
    fn lines_without_a_whole_mark_are_not_marks() {
        assert_eq!(parse_mark("Starting systemd-udevd.service"), None);
        assert_eq!(parse_mark("T:multi-user"), None);
        assert_eq!(parse_mark("T:dpkg 13.01"), None);
        assert_eq!(parse_mark("T:dpkg-start soon"), None);
        assert_eq!(parse_mark("T:Some Text"), None);
    }

    fn at(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_run_is_timed_by_the_host_between_its_marks() {
        let marks = vec![
            (Mark::MultiUser(20.0), at(30.0)),
            (Mark::Workloads(vec!["dpkg".into(), "build".into()]), at(30.1)),
            (Mark::Start("dpkg".into(), 20.1), at(30.2)),
            (Mark::Done("dpkg".into(), 20.1, 30.1), at(40.2)),
            (Mark::Start("build".into(), 30.1), at(40.3)),
            (Mark::Done("build".into(), 30.1, 50.1), at(60.5)),
            (Mark::Poweroff(50.2), at(60.6)),
        ];
        let s = sample(&marks, true, WORKLOADS, "").unwrap();
        assert!((s.boot - 30.0).abs() < 1e-9);
        assert!((s.boot_uptime - 20.0).abs() < 1e-9);
        assert!((s.workload("dpkg").unwrap() - 10.0).abs() < 1e-9);
        assert!((s.workload("build").unwrap() - 20.2).abs() < 1e-9);
        assert!((s.workloads[1].2 - 20.0).abs() < 1e-9);
        assert!(s.clean_poweroff);
        assert!(!sample(&marks, false, WORKLOADS, "").unwrap().clean_poweroff);
        assert!(!sample(&marks[..6], true, WORKLOADS, "").unwrap().clean_poweroff);
    }

    #[test]
    fn a_failed_or_missing_workload_fails_the_run() {
        let marks = vec![
            (Mark::MultiUser(20.0), at(30.0)),
            (Mark::Start("dpkg".into(), 20.1), at(30.2)),
            (Mark::Failed("dpkg".into(), "1".into()), at(31.0)),
        ];
        let e = sample(&marks, true, &["dpkg"], "a\nb\nT:dpkg-failed 1").unwrap_err();
        assert!(e.contains("dpkg failed (status 1)") && e.contains("T:dpkg-failed 1"), "{e}");
        let e = sample(&marks[..2], true, &["dpkg"], "").unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        assert!(sample(&[], true, &[], "").unwrap_err().contains("no T:multi-user"));
    }

    #[test]
    fn both_emulators_get_the_same_machine() {
        let f = ferrovm_cmd(Path::new("ferrovm"), Path::new("d.img"), "jit", WORKLOADS, Duration::from_secs(60));
        let q = qemu_cmd(Path::new("qemu"), Path::new("d.img"), WORKLOADS);
        let has = |v: &[String], a: &str, b: &str| v.windows(2).any(|w| w[0] == a && w[1] == b);
        assert!(has(&f, "--disk", "d.img,format=raw,if=virtio,snapshot=on"), "{f:?}");
        assert!(has(&q, "-drive", "file=d.img,if=virtio,format=raw,snapshot=on"), "{q:?}");
        assert!(has(&f, "--mem", "1024M") && has(&q, "-m", "1024"));
        assert!(has(&f, "--smbios", "type=11,value=ferrovm.bench=dpkg,,build"), "{f:?}");
        assert!(has(&q, "-smbios", "type=11,value=ferrovm.bench=dpkg,,build"), "{q:?}");
        assert!(has(&f, "--cpu", "max") && has(&q, "-cpu", "max"));
        assert!(f.iter().any(|a| a == "--stats"));
        assert_eq!(smbios(&[]), "type=11,value=ferrovm.bench=boot");
    }
}
