//! `ferrovm bench --smp N`: a parallel job inside a Linux guest with N
//! vCPUs, against the same job alone, under the JIT (a host thread per
//! vCPU, and round-robin on one), KVM and QEMU TCG with the same `-smp`,
//! in one run. It prints the boot time to init, the times, the throughput
//! scaling (N jobs' work over their time, against one job's) and the
//! ratios to QEMU.

use std::path::Path;
use std::time::Duration;

use crate::work::{base64, BOOTED, DONE, START};

/// Made before the timed part: the 64 MiB file the jobs hash, in the
/// initramfs's root (page cache, no disk).
const PREPARE: &str = "dd if=/dev/zero of=/job.bin bs=1M count=64 2>/dev/null";

/// The job each vCPU runs: one process hashing 64 MiB, CPU-bound. (A
/// `dd | sha256sum` pipe would be two processes, and one job would already
/// keep two vCPUs busy.)
const JOB: &str = "sha256sum /job.bin >/dev/null";

/// `n` copies of the job at once, then a wait for all of them.
fn parallel(n: u32) -> String {
    let jobs: Vec<String> = (0..n).map(|_| format!("( {JOB} ) &")).collect();
    format!("{} wait; echo jobs {n}", jobs.join(" "))
}

/// The command line that boots the guest with a kernel command line.
type Command = Box<dyn Fn(&str) -> Vec<String>>;

/// An engine of the table: its row name and the command for a guest.
struct Engine {
    name: &'static str,
    cmd: Command,
}

/// A row: the engine, and the median boot, one-job and N-jobs times.
type Row<'a> = (&'a str, Option<Duration>, Option<Duration>, Option<Duration>);

fn ferrovm(kernel: &Path, initrd: &Path, cpus: u32, accel: &str, extra: &[&str], append: &str) -> Vec<String> {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
    let mut v: Vec<String> = vec![exe, "run".into(), "--accel".into(), accel.into(), "--cpus".into(), cpus.to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.extend(["--mem", "512M", "--serial", "stdio", "--kernel"].iter().map(|s| s.to_string()));
    v.extend([kernel.display().to_string(), "--initrd".into(), initrd.display().to_string(), "--append".into()]);
    v.push(append.to_string());
    v
}

fn qemu(q: &Path, kernel: &Path, initrd: &Path, cpus: u32, append: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![q.display().to_string(), "-accel".into(), "tcg".into()];
    v.extend(["-smp".to_string(), cpus.to_string()]);
    v.extend(
        ["-cpu", "max", "-m", "512", "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel"]
            .iter()
            .map(|s| s.to_string()),
    );
    v.extend([kernel.display().to_string(), "-initrd".into(), initrd.display().to_string(), "-append".into()]);
    v.push(append.to_string());
    v
}

/// Runs `cmd` and times the boot (start to the guest's booted mark, before
/// the job's file is made) and the work (between its marks).
fn time_boot_and_work(cmd: &[String], limit: Duration) -> Result<(Duration, Duration), String> {
    let m = crate::work::time_marks(cmd, limit)?;
    let booted = m.booted.ok_or("the guest printed no booted mark")?;
    Ok((booted, m.work))
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

/// `ferrovm bench --smp N`.
pub fn run(args: &crate::BenchArgs, cpus: u32) -> i32 {
    let runs = args.runs.max(1);
    let kernel = args.images.join("vmlinuz-cloud");
    let initrd = args.images.join("initramfs.cpio.gz");
    if !kernel.is_file() || !initrd.is_file() {
        eprintln!(
            "ferrovm bench --smp: {} or {} is missing (run scripts/guest-images.sh)",
            kernel.display(),
            initrd.display()
        );
        return 1;
    }
    if !(2..=64).contains(&cpus) {
        eprintln!("ferrovm bench --smp {cpus}: give 2 to 64 vCPUs");
        return 2;
    }
    let host_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "ferrovm bench --smp {cpus}: {cpus} parallel sha256 jobs of 64 MiB against one, in a guest with {cpus} vCPUs \
         (Debian cloud kernel), on {host_cores} host cores; median of {runs} run(s)\n"
    );
    let mut engines: Vec<Engine> = Vec::new();
    let (k, i) = (kernel.clone(), initrd.clone());
    engines.push(Engine {
        name: "jit",
        cmd: Box::new(move |a| ferrovm(&k, &i, cpus, "jit", &["--vcpu-threads", "multi"], a)),
    });
    let (k, i) = (kernel.clone(), initrd.clone());
    engines.push(Engine {
        name: "jit-1thread",
        cmd: Box::new(move |a| ferrovm(&k, &i, cpus, "jit", &["--vcpu-threads", "single"], a)),
    });
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        println!(
            "KVM row skipped: this host's KVM (kvm_pvm) runs the guest kernel in its instruction emulator, where \
             Linux does not boot; --accel kvm with several vCPUs runs the guest in the JIT here\n"
        );
    } else if hvf_kvm_accel::open().is_ok() {
        let (k, i) = (kernel.clone(), initrd.clone());
        engines.push(Engine {
            name: "kvm",
            cmd: Box::new(move |a| ferrovm(&k, &i, cpus, "kvm", &["--kvm-split", "off"], a)),
        });
    }
    match crate::demo::which("qemu-system-x86_64") {
        Some(q) => {
            let (k, i) = (kernel.clone(), initrd.clone());
            engines.push(Engine { name: "qemu", cmd: Box::new(move |a| qemu(&q, &k, &i, cpus, a)) });
        }
        None => println!("QEMU row skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n"),
    }
    let limit = Duration::from_secs(args.boot_timeout);
    let append = |work: &str| {
        let script = format!("echo {BOOTED}; {PREPARE}; echo {START}; {work}; echo {DONE}");
        format!("console=ttyS0 quiet ferrovm.poweroff=1 ferrovm.cmd={}", base64(script.as_bytes()))
    };
    let (one, all) = (append(&parallel(1)), append(&parallel(cpus)));
    let mut status = 0;
    // engine -> (boot, one job, N jobs)
    let mut rows: Vec<Row<'_>> = Vec::new();
    for e in &engines {
        let mut boots = Vec::new();
        let mut measure = |app: &str| -> Option<Duration> {
            let mut t = Vec::new();
            for _ in 0..runs {
                match time_boot_and_work(&(e.cmd)(app), limit) {
                    Ok((b, w)) => {
                        boots.push(b);
                        t.push(w);
                    }
                    Err(err) => {
                        eprintln!(
                            "ferrovm bench --smp: {} under {}: {err}",
                            if app == one { "one job" } else { "all jobs" },
                            e.name
                        );
                        return None;
                    }
                }
            }
            median(t)
        };
        let (t1, tn) = (measure(&one), measure(&all));
        if (t1.is_none() || tn.is_none()) && e.name != "qemu" {
            status = 1;
        }
        rows.push((e.name, median(boots), t1, tn));
    }
    let qemu_row = rows.iter().find(|r| r.0 == "qemu").copied();
    let secs = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64()));
    let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if b > Duration::ZERO => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    };
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>9} {:>11} {:>12} {:>12}",
        "engine",
        "boot s",
        "1 job s",
        format!("{cpus} jobs s"),
        "scaling",
        "N/1 time",
        "boot/qemu",
        "N jobs/qemu"
    );
    for (name, boot, t1, tn) in &rows {
        let scaling = match (t1, tn) {
            (Some(a), Some(b)) if *b > Duration::ZERO => {
                format!("{:.2}", f64::from(cpus) * a.as_secs_f64() / b.as_secs_f64())
            }
            _ => "-".into(),
        };
        println!(
            "{:<12} {:>10} {:>10} {:>10} {:>9} {:>11} {:>12} {:>12}",
            name,
            secs(*boot),
            secs(*t1),
            secs(*tn),
            scaling,
            ratio(*tn, *t1),
            ratio(*boot, qemu_row.and_then(|q| q.1)),
            ratio(*tn, qemu_row.and_then(|q| q.3)),
        );
    }
    println!(
        "\nscaling: {cpus} x (1 job's time) / ({cpus} jobs' time), {cpus}.00 at best on {cpus} free host cores; \
         N/1 time: the jobs' time over one job's (1.00: no cost for running them at once); \
         ratios to QEMU below 1: ferrovm is faster"
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parallel_script_starts_n_jobs_and_waits() {
        let s = parallel(3);
        assert_eq!(s.matches("sha256sum").count(), 3);
        assert!(s.ends_with("wait; echo jobs 3"), "{s}");
    }
}
