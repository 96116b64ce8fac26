//! `ferrovm bench --uefi`: Debian's OVMF (`/usr/share/ovmf/OVMF.fd`,
//! package ovmf) from the reset vector to its shell, under each engine and
//! under QEMU TCG when it is installed, in the same run. Two marks, each
//! the time from the process's start to the first time it is printed on
//! the serial console: the shell's banner ("UEFI Interactive Shell"), and
//! its prompt ("Shell>"), which comes after the shell's five-second wait
//! for `startup.nsh` (both emulators wait the same guest time). Both run
//! with 256 MiB and no network (QEMU's default NIC would have OVMF try
//! PXE and HTTP boot first).

use std::time::Duration;

use crate::migration::median;

/// Debian's OVMF with its variables inside.
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// The marks, in the order they are printed.
const MARKS: [&str; 2] = ["UEFI Interactive Shell", "Shell>"];
/// How long one run may take.
const LIMIT: Duration = Duration::from_secs(300);

/// One run of `cmd`: the time to each of [`MARKS`], or why it failed.
fn one_run(cmd: &[String]) -> Result<[Duration; 2], String> {
    let mut w = crate::watch(cmd, &MARKS)?;
    let mut times = [Duration::ZERO; 2];
    let mut got = 0;
    while got < MARKS.len() {
        match w.marks.recv_timeout(LIMIT.saturating_sub(w.started.elapsed())) {
            Ok((i, t)) => {
                times[i] = t;
                got += 1;
            }
            Err(_) => break,
        }
    }
    let _ = w.child.kill();
    let _ = w.child.wait();
    if got < MARKS.len() {
        return Err(format!("no '{}' within {} s", MARKS[got], LIMIT.as_secs()));
    }
    Ok(times)
}

/// The medians of `runs` runs of `cmd`.
fn measure(cmd: &[String], runs: usize) -> Result<[Duration; 2], String> {
    let mut all = Vec::new();
    for _ in 0..runs.max(1) {
        all.push(one_run(cmd)?);
    }
    let col = |i: usize| median(all.iter().map(|t| t[i]).collect()).unwrap_or_default();
    Ok([col(0), col(1)])
}

/// Runs the bench; the process exit status.
pub fn run(args: &crate::BenchArgs) -> i32 {
    if !std::path::Path::new(OVMF).is_file() {
        eprintln!("{OVMF} is missing: install Debian's ovmf package");
        return 1;
    }
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
    let ferrovm = |accel: &str| -> Vec<String> {
        [exe.as_str(), "run", "--bios", OVMF, "--mem", "256", "--accel", accel].map(String::from).to_vec()
    };
    let mut rows: Vec<(String, Vec<String>)> =
        vec![("ferrovm jit".into(), ferrovm("jit")), ("ferrovm interp".into(), ferrovm("interp"))];
    match hvf_kvm_accel::open() {
        Ok(_) => rows.push(("ferrovm kvm".into(), ferrovm("kvm"))),
        Err(e) => println!("kvm row skipped: {e}"),
    }
    let qemu = crate::demo::which("qemu-system-x86_64");
    match &qemu {
        Some(q) => rows.push((
            "qemu tcg".into(),
            [
                q.display().to_string().as_str(),
                "-bios",
                OVMF,
                "-m",
                "256",
                "-nographic",
                "-net",
                "none",
                "-accel",
                "tcg",
            ]
            .map(String::from)
            .to_vec(),
        )),
        None => println!("QEMU row skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)"),
    }
    println!("OVMF ({OVMF}) to its shell, median of {} runs, seconds from the process's start", args.runs);
    println!("  {:<16} {:>10} {:>10}", "", "banner", "prompt");
    let mut results = Vec::new();
    let mut status = 0;
    for (name, cmd) in &rows {
        match measure(cmd, args.runs) {
            Ok(t) => {
                println!("  {name:<16} {:>10.2} {:>10.2}", t[0].as_secs_f64(), t[1].as_secs_f64());
                results.push((name.clone(), t));
            }
            Err(e) => {
                println!("  {name:<16} failed: {e}");
                status = 1;
            }
        }
    }
    if let Some((_, q)) = results.iter().find(|(n, _)| n == "qemu tcg") {
        for (name, t) in results.iter().filter(|(n, _)| n.starts_with("ferrovm")) {
            println!(
                "  {name} / qemu tcg: banner {:.2}, prompt {:.2}",
                t[0].as_secs_f64() / q[0].as_secs_f64(),
                t[1].as_secs_f64() / q[1].as_secs_f64()
            );
        }
    }
    status
}
