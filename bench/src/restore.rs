//! `ferrovm bench --restore`: how soon a saved guest runs again, and what
//! its clones cost in host memory.
//!
//! A 512 MiB Linux guest (the cloud kernel and the test initramfs) boots
//! under the JIT, prints a line and sleeps. There it is saved into a
//! snapshot directory (`savevm`) and then, stopped, migrated to a file
//! (`migrate exec:cat > FILE`). QEMU TCG, when installed, boots the same
//! guest and migrates it to a file the same way, in the same run. Then,
//! `--runs` times each:
//! - `--restore DIR/NAME`: from the process's start to the first guest
//!   instruction (as ferrovm's `--stats` reports it);
//! - `-incoming exec:cat FILE`, ferrovm's and QEMU's: from the process's
//!   start until QMP's `query-status` shows the migrated guest, paused as
//!   it left (no longer `inmigrate`), polled every 2 ms;
//!
//! and once, ten clones of the snapshot (`--restore --clone`) side by
//! side: the sum of their proportional set sizes (PSS: a page shared by
//! ten counts a tenth in each) against the booted guest's, while the
//! clones' guests sleep.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::migration::{median, qmp, qmp_connect, Proc};

/// Guest RAM.
const MEM: &str = "512M";
/// Clones run side by side.
const CLONES: usize = 10;

/// The guest's script: a line to save after, then a long sleep (a
/// restored guest is quit, or killed, before it ends).
const SCRIPT: &str = "echo T:ready; sleep 600; echo T:woke";

/// Waits until `file` holds `want`.
fn wait_for(file: &Path, want: &str, secs: u64) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(secs);
    while !std::fs::read_to_string(file).unwrap_or_default().contains(want) {
        if Instant::now() > until {
            return Err(format!("no {want:?} in {} within {secs} s", file.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// PSS of process `pid` in KiB (/proc/PID/smaps_rollup).
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn spawn(args: &[String], stderr: Option<&Path>) -> Result<Proc, String> {
    let (exe, rest) = args.split_first().ok_or("no command")?;
    let err = match stderr {
        Some(p) => Stdio::from(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Stdio::null(),
    };
    Command::new(exe)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map(Proc)
        .map_err(|e| format!("{exe}: {e}"))
}

/// Stops the guest behind `qmp_path` and migrates it to `stream`.
fn migrate_to_file(qmp_path: &Path, stream: &Path) -> Result<(), String> {
    let mut q = qmp_connect(qmp_path)?;
    qmp(&mut q, r#"{"execute":"stop"}"#)?;
    qmp(&mut q, &format!(r#"{{"execute":"migrate","arguments":{{"uri":"exec:cat > {}"}}}}"#, stream.display()))?;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let r = qmp(&mut q, r#"{"execute":"query-migrate"}"#)?.replace(": ", ":");
        if r.contains(r#""status":"completed""#) {
            break;
        }
        if r.contains(r#""status":"failed""#) || Instant::now() > until {
            return Err(format!("the migration to {} did not complete: {}", stream.display(), r.trim()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = qmp(&mut q, r#"{"execute":"quit"}"#);
    Ok(())
}

/// From spawning `args` (a receiver with `-incoming` and its QMP socket
/// at `qmp_path`) until `query-status` shows the guest out of `inmigrate`.
fn incoming_time(args: &[String], qmp_path: &Path) -> Result<Duration, String> {
    let _ = std::fs::remove_file(qmp_path);
    let t = Instant::now();
    let _p = spawn(args, None)?;
    let until = t + Duration::from_secs(60);
    // ferrovm opens its monitor once the stream is in, QEMU at once.
    let s = loop {
        match std::os::unix::net::UnixStream::connect(qmp_path) {
            Ok(s) => break s,
            Err(e) if Instant::now() > until => return Err(format!("QMP at {}: {e}", qmp_path.display())),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut r, &mut greeting).map_err(|e| e.to_string())?;
    let mut q = (r, s);
    qmp(&mut q, r#"{"execute":"qmp_capabilities"}"#)?;
    loop {
        let st = qmp(&mut q, r#"{"execute":"query-status"}"#)?.replace(": ", ":");
        if !st.contains("inmigrate") {
            let took = t.elapsed();
            if !st.contains(r#""status":"paused""#) {
                return Err(format!("the received guest is not paused as it left: {}", st.trim()));
            }
            let _ = qmp(&mut q, r#"{"execute":"quit"}"#);
            return Ok(took);
        }
        if Instant::now() > until {
            return Err("still receiving after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One `--restore`: the first instruction's time after the process's
/// start, from `--stats`; the guest is quit through QMP once running.
fn restore_time(base: &[String], snap: &Path, dir: &Path, i: usize) -> Result<Duration, String> {
    let (qmp_path, err) = (dir.join(format!("restore-{i}.qmp")), dir.join(format!("restore-{i}.err")));
    let mut args = base.to_vec();
    args.extend(["--stats".into(), "--restore".into(), snap.display().to_string()]);
    args.extend(["--qmp".into(), format!("unix:{},server=on,wait=off", qmp_path.display())]);
    let mut p = spawn(&args, Some(&err))?;
    let mut q = qmp_connect(&qmp_path)?;
    // The guest runs a moment before the quit.
    std::thread::sleep(Duration::from_millis(200));
    let _ = qmp(&mut q, r#"{"execute":"quit"}"#);
    let _ = p.0.wait();
    let mut text = String::new();
    std::fs::File::open(&err).and_then(|mut f| f.read_to_string(&mut text)).map_err(|e| e.to_string())?;
    let key = "its first instruction ";
    text.lines()
        .find_map(|l| l.split_once(key)?.1.split_once(" ms")?.0.parse::<f64>().ok())
        .map(|v| Duration::from_secs_f64(v / 1e3))
        .ok_or_else(|| format!("no {key:?} line in the restored run's --stats:\n{text}"))
}

/// Ten clones at once: their PSS in KiB each, measured once every one
/// runs.
fn clones(base: &[String], snap: &Path, dir: &Path) -> Result<Vec<u64>, String> {
    let mut procs = Vec::new();
    let mut errs = Vec::new();
    for i in 0..CLONES {
        let err = dir.join(format!("clone-{i}.err"));
        let mut args = base.to_vec();
        args.extend(["--stats".into(), "--restore".into(), snap.display().to_string(), "--clone".into()]);
        args.extend(["--clone-dir".into(), dir.join(format!("clone-{i}")).display().to_string()]);
        procs.push(spawn(&args, Some(&err))?);
        errs.push(err);
    }
    for e in &errs {
        wait_for(e, "the restored guest is ready", 60)?;
    }
    // Let each run a while, as a sleeping guest does.
    std::thread::sleep(Duration::from_secs(2));
    procs.iter().map(|p| pss_kib(p.0.id()).ok_or_else(|| "a clone ended early".to_string())).collect()
}

fn ms1(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

/// `ferrovm bench --restore`.
pub fn run(args: &crate::BenchArgs) -> i32 {
    let (kernel, initrd) = (args.images.join("vmlinuz-cloud"), args.images.join("initramfs.cpio.gz"));
    if !kernel.is_file() || !initrd.is_file() {
        eprintln!(
            "bench --restore: {} and {} are needed (scripts/guest-images.sh builds them)",
            kernel.display(),
            initrd.display()
        );
        return 1;
    }
    let dir = std::env::temp_dir().join(format!("ferrovm-bench-restore-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench --restore: {}: {e}", dir.display());
        return 1;
    }
    let r = measure(args, &kernel, &initrd, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench --restore: {e}");
            1
        }
    }
}

fn measure(args: &crate::BenchArgs, kernel: &Path, initrd: &Path, dir: &Path) -> Result<(), String> {
    let append =
        format!("console=ttyS0 quiet ferrovm.poweroff=1 ferrovm.cmd={}", crate::work::base64(SCRIPT.as_bytes()));
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
    let (k, i) = (kernel.display().to_string(), initrd.display().to_string());
    let serial = |name: &str| dir.join(format!("{name}.serial"));
    let ferrovm = |serial: &Path| -> Vec<String> {
        [&exe, "run", "--accel", "jit", "--mem", MEM, "--kernel", &k, "--initrd", &i, "--append", &append]
            .iter()
            .map(|s| s.to_string())
            .chain(["--serial".into(), format!("file:{}", serial.display())])
            .collect()
    };
    let qemu_bin = crate::demo::which("qemu-system-x86_64");
    let qemu = |bin: &Path, serial: &Path, qmp: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            &bin.display().to_string(),
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nodefaults",
            "-display",
            "none",
            "-kernel",
            &k,
            "-initrd",
            &i,
            "-append",
            &append,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(["-serial".into(), format!("file:{}", serial.display())]);
        v.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", qmp.display())]);
        v
    };

    // The source: booted, measured, saved, migrated to a file.
    let (snaps, stream, src_qmp) = (dir.join("snapshots"), dir.join("ferrovm.stream"), dir.join("source.qmp"));
    let mut src = ferrovm(&serial("source"));
    src.extend(["--snapshot-dir".into(), snaps.display().to_string()]);
    src.extend(["--qmp".into(), format!("unix:{},server=on,wait=off", src_qmp.display())]);
    let p = spawn(&src, None)?;
    wait_for(&serial("source"), "T:ready", 300)?;
    std::thread::sleep(Duration::from_millis(500));
    let one_guest = pss_kib(p.0.id()).ok_or("the booted guest ended early")?;
    {
        let mut q = qmp_connect(&src_qmp)?;
        let t = Instant::now();
        qmp(&mut q, r#"{"execute":"human-monitor-command","arguments":{"command-line":"savevm booted"}}"#)?;
        println!("savevm of the booted {MEM} guest into a directory: {}", ms1(Some(t.elapsed())));
    }
    migrate_to_file(&src_qmp, &stream)?;
    drop(p);
    let snap = snaps.join("booted");
    let mut qemu_stream = None;
    let mut qemu_guest = None;
    match &qemu_bin {
        Some(bin) => {
            let (qs, qq) = (dir.join("qemu.stream"), dir.join("qemu-source.qmp"));
            let p = spawn(&qemu(bin, &serial("qemu-source"), &qq), None)?;
            wait_for(&serial("qemu-source"), "T:ready", 300)?;
            std::thread::sleep(Duration::from_millis(500));
            qemu_guest = pss_kib(p.0.id());
            migrate_to_file(&qq, &qs)?;
            drop(p);
            qemu_stream = Some(qs);
        }
        None => println!("QEMU column skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)"),
    }

    let runs = args.runs.max(1);
    let (mut restores, mut fin, mut qin) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..runs {
        restores.push(restore_time(&ferrovm(&serial("restore")), &snap, dir, n)?);
        let q = dir.join("incoming.qmp");
        let mut recv = ferrovm(&serial("incoming"));
        recv.extend(["--qmp".into(), format!("unix:{},server=on,wait=off", q.display())]);
        recv.extend(["--incoming".into(), format!("exec:cat {}", stream.display())]);
        fin.push(incoming_time(&recv, &q)?);
        if let (Some(bin), Some(qs)) = (&qemu_bin, &qemu_stream) {
            let q = dir.join("qemu-incoming.qmp");
            let mut recv = qemu(bin, &serial("qemu-incoming"), &q);
            recv.extend(["-incoming".into(), format!("exec:cat {}", qs.display())]);
            qin.push(incoming_time(&recv, &q)?);
        }
        println!(
            "  run {n}: --restore {}, -incoming ferrovm {}, qemu {}",
            ms1(restores.last().copied()),
            ms1(fin.last().copied()),
            ms1(qin.last().copied())
        );
    }
    let each = clones(&ferrovm(&serial("clone")), &snap, dir)?;
    let sum: u64 = each.iter().sum();

    let (restore, fm, qm) = (median(restores), median(fin), median(qin));
    let stream_mib = std::fs::metadata(&stream).map(|m| m.len() as f64 / f64::from(1 << 20)).unwrap_or(0.0);
    println!("\nrestore of a {MEM} Linux guest, median of {runs} runs (stream {stream_mib:.0} MiB)\n");
    println!("{:<44} {:>10} {:>10} {:>8}", "", "ferrovm", "qemu", "ratio");
    println!("{:<44} {:>10} {:>10} {:>8}", "--restore DIR/NAME to its first instruction", ms1(restore), "-", "-");
    let ratio = match (fm, qm) {
        (Some(f), Some(q)) => format!("{:.2}x", f.as_secs_f64() / q.as_secs_f64().max(1e-9)),
        _ => "-".into(),
    };
    println!("{:<44} {:>10} {:>10} {:>8}", "-incoming exec:cat FILE to the paused guest", ms1(fm), ms1(qm), ratio);
    let mib = |k: u64| format!("{:.0} MiB", k as f64 / 1024.0);
    println!(
        "{:<44} {:>10} {:>10}",
        "one booted guest's memory (PSS)",
        mib(one_guest),
        qemu_guest.map_or("-".into(), mib)
    );
    println!(
        "{:<44} {:>10}   ({:.2}x one booted guest; each {})",
        format!("{CLONES} clones of its snapshot at once (sum of PSS)"),
        mib(sum),
        sum as f64 / one_guest.max(1) as f64,
        each.iter().map(|&k| mib(k)).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
