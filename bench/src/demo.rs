//! `ferrovm demo` and `ferrovm bench`: the built-in guest under every
//! accelerator, side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use vmm::{EngineKind, Machine, MachineConfig, RunReport, SerialOut};

/// One accelerator's result on the built-in guest.
pub struct Row {
    pub accel: &'static str,
    pub outcome: Result<(RunReport, String), String>,
}

impl Row {
    fn checksum_ok(&self) -> bool {
        match &self.outcome {
            Ok((_, out)) => firmware::builtin::parse_checksum(out) == Some(firmware::builtin::expected_checksum()),
            Err(_) => false,
        }
    }
}

/// Boot the built-in guest in the interpreter with serial output captured.
pub fn run_builtin_interp(timeout: Duration) -> Result<(RunReport, String), String> {
    run_builtin(timeout, EngineKind::Interp)
}

/// Boot the built-in guest under the JIT with serial output captured.
pub fn run_builtin_jit(timeout: Duration) -> Result<(RunReport, String), String> {
    run_builtin(timeout, EngineKind::Jit)
}

/// Boot the built-in guest under KVM with serial output captured.
pub fn run_builtin_kvm(timeout: Duration) -> Result<(RunReport, String), String> {
    run_builtin(timeout, EngineKind::Kvm)
}

fn run_builtin(timeout: Duration, kind: EngineKind) -> Result<(RunReport, String), String> {
    run_builtin_shown(timeout, kind, &mut Screen::none())
}

/// What the demo's machines are shown on besides COM1.
pub struct Screen<'a> {
    /// The display adapter each machine gets (with [`vmm::Vga::Std`] the
    /// built-in guest writes its lines into the VGA's text mode too).
    pub vga: vmm::Vga,
    /// Called with each machine before it runs, to open a display of its
    /// VGA; what it returns is kept until the run ends, then dropped.
    pub show: Option<&'a mut Show<'a>>,
}

/// What opens a display of a machine ([`Screen::show`]).
pub type Show<'a> = dyn FnMut(&Machine) -> Result<Box<dyn std::any::Any>, String> + 'a;

impl Screen<'_> {
    /// No display adapter and nothing to show: COM1 only.
    pub fn none() -> Self {
        Screen { vga: vmm::Vga::None, show: None }
    }
}

/// Boot the built-in guest under `kind` with serial output captured, on
/// `screen`'s display adapter and shown as it says.
pub fn run_builtin_shown(
    timeout: Duration,
    kind: EngineKind,
    screen: &mut Screen<'_>,
) -> Result<(RunReport, String), String> {
    if kind == EngineKind::Kvm {
        hvf_kvm_accel::open().map_err(|e| format!("not available: {e}"))?;
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let config = MachineConfig {
        timeout: Some(timeout),
        vga: screen.vga,
        ..MachineConfig::builtin(SerialOut::Capture(buf.clone()))
    };
    let m = Machine::new(config).map_err(|e| e.to_string())?;
    let shown = match screen.show.as_mut() {
        Some(show) => Some(show(&m)?),
        None => None,
    };
    let report = m.run(kind).map_err(|e| e.to_string())?;
    drop(shown);
    let out = String::from_utf8_lossy(&buf.lock()).into_owned();
    Ok((report, out))
}

fn fmt_dur(d: Option<Duration>) -> String {
    match d {
        Some(d) if d.as_secs_f64() < 1.0 => format!("{:.1} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "-".into(),
    }
}

/// Collect one row per accelerator, each machine shown on `screen`.
pub fn rows(screen: &mut Screen<'_>) -> Vec<Row> {
    let t = Duration::from_secs(60);
    [("interp", EngineKind::Interp), ("jit", EngineKind::Jit), ("kvm", EngineKind::Kvm)]
        .into_iter()
        .map(|(accel, kind)| Row { accel, outcome: run_builtin_shown(t, kind, screen) })
        .collect()
}

/// `ferrovm demo`: COM1 only.
pub fn demo() -> i32 {
    demo_on(&mut Screen::none())
}

/// `ferrovm demo` with its machines shown on `screen` (`--vnc`,
/// `--display`): the table comes after the runs, below what a terminal
/// display drew.
pub fn demo_on(screen: &mut Screen<'_>) -> i32 {
    let rows = rows(screen);
    println!("ferrovm demo: the built-in guest (real -> protected -> long mode, ring-3 checksum over 4 MiB)\n");
    let mut banner = None;
    // The guest is deterministic: every engine runs the instructions the
    // interpreter counted, so engines that cannot count are rated by that count.
    let counted = rows.iter().find_map(|r| r.outcome.as_ref().ok().and_then(|(rep, _)| rep.instructions));
    println!("{:<8} {:>16} {:>12} {:>14} {:>10}", "accel", "first serial", "total", "guest MIPS", "checksum");
    for r in &rows {
        match &r.outcome {
            Ok((rep, out)) => {
                if banner.is_none() {
                    banner = out.lines().next().map(str::to_string);
                }
                let mips = match (rep.instructions, counted) {
                    (Some(n), _) => format!("{:.1}", n as f64 / rep.total.as_secs_f64() / 1e6),
                    (None, Some(n)) => format!("{:.1}*", n as f64 / rep.total.as_secs_f64() / 1e6),
                    (None, None) => "-".into(),
                };
                println!(
                    "{:<8} {:>16} {:>12} {:>14} {:>10}",
                    r.accel,
                    fmt_dur(rep.first_serial_byte),
                    fmt_dur(Some(rep.total)),
                    mips,
                    if r.checksum_ok() { "ok" } else { "MISMATCH" }
                );
            }
            Err(why) => println!("{:<8} {}", r.accel, why),
        }
    }
    if let Some(b) = banner {
        println!("\nguest said: {b}");
    }
    if rows.iter().any(|r| matches!(&r.outcome, Ok((rep, _)) if rep.instructions.is_none())) {
        println!("* counted by the interpreter on the same deterministic guest, divided by this engine's time");
    }
    let all_ok = rows.iter().filter(|r| r.outcome.is_ok()).all(Row::checksum_ok);
    if all_ok {
        0
    } else {
        1
    }
}

/// `ferrovm bench`: whole guests, median of `runs` runs per engine, with
/// QEMU TCG on the same guest in the same run when `qemu-system-x86_64` is
/// installed.
pub fn bench(args: &crate::BenchArgs) -> i32 {
    let runs = args.runs.max(1);
    println!("ferrovm bench: median of {runs} run(s) each\n");
    println!("built-in guest (reset vector to debug exit, 7.4 M instructions of ring-3 workload):");
    let mut interp = Vec::new();
    let mut mips = Vec::new();
    for _ in 0..runs {
        match run_builtin_interp(Duration::from_secs(120)) {
            Ok((rep, _)) => {
                interp.push(rep.total);
                if let Some(n) = rep.instructions {
                    mips.push(n as f64 / rep.total.as_secs_f64() / 1e6);
                }
            }
            Err(e) => {
                eprintln!("ferrovm bench: interp run failed: {e}");
                return 1;
            }
        }
    }
    let interp = median(interp);
    mips.sort_by(f64::total_cmp);
    println!("  {:<22} {:>10}  ({:.1} guest MIPS)", "interp", fmt_dur(Some(interp)), mips[mips.len() / 2]);
    let mut jit_t = Vec::new();
    for _ in 0..runs {
        match run_builtin_jit(Duration::from_secs(120)) {
            Ok((rep, _)) => jit_t.push(rep.total),
            Err(e) => {
                eprintln!("ferrovm bench: jit run failed: {e}");
                return 1;
            }
        }
    }
    let jit_time = median(jit_t);
    println!("  {:<22} {:>10}", "jit", fmt_dur(Some(jit_time)));
    println!("  ratio interp/jit: {:.2}", interp.as_secs_f64() / jit_time.as_secs_f64());
    let mut kvm_time = None;
    match hvf_kvm_accel::open() {
        Ok(_) => {
            let mut t = Vec::new();
            for _ in 0..runs {
                match run_builtin_kvm(Duration::from_secs(120)) {
                    Ok((rep, _)) => t.push(rep.total),
                    Err(e) => {
                        println!("  kvm                    failed: {e}");
                        break;
                    }
                }
            }
            if t.len() == runs {
                let k = median(t);
                kvm_time = Some(k);
                println!("  {:<22} {:>10}", "kvm", fmt_dur(Some(k)));
                println!("  ratio interp/kvm: {:.2}", interp.as_secs_f64() / k.as_secs_f64());
            }
        }
        Err(e) => println!("  kvm                    not available: {e}"),
    }
    match qemu_builtin(runs) {
        Some(Ok(q)) => {
            println!("  {:<22} {:>10}  (includes QEMU's start-up)", "qemu tcg", fmt_dur(Some(q)));
            println!("  ratio interp/qemu: {:.2}", interp.as_secs_f64() / q.as_secs_f64());
            println!("  ratio jit/qemu: {:.2}", jit_time.as_secs_f64() / q.as_secs_f64());
        }
        Some(Err(e)) => println!("  qemu tcg               failed: {e}"),
        None => println!("  qemu tcg               not installed (Debian package qemu-system-x86): no comparison"),
    }

    let initrd = args.images.join("initramfs.cpio.gz");
    if !initrd.is_file() {
        println!("\nLinux boot: skipped, {} is missing (run scripts/guest-images.sh)", initrd.display());
        return 0;
    }
    println!("\nLinux boot, start to the init's first line (console=ttyS0, 512 MiB):");
    let qemu = which("qemu-system-x86_64");
    for kernel in ["vmlinuz-cloud", "vmlinuz-generic"] {
        let k = args.images.join(kernel);
        if !k.is_file() {
            continue;
        }
        let mut cases: Vec<(String, Vec<String>)> = vec![
            ("interp fast".into(), ferrovm_cmd(&k, &initrd, "interp", "fast")),
            ("interp classic".into(), ferrovm_cmd(&k, &initrd, "interp", "classic")),
            ("jit fast".into(), ferrovm_cmd(&k, &initrd, "jit", "fast")),
        ];
        if args.kvm_linux || kvm_time.is_some() {
            cases.push(("kvm fast".into(), ferrovm_cmd(&k, &initrd, "kvm", "fast")));
        }
        if let Some(q) = &qemu {
            cases.push(("qemu tcg".into(), qemu_cmd(q, &k, &initrd)));
        }
        println!("  {kernel}:");
        let mut results: Vec<(String, Option<Duration>)> = Vec::new();
        for (name, cmd) in cases {
            let mut times = Vec::new();
            let mut err = None;
            for _ in 0..runs {
                match time_to_line(&cmd, "ferrovm-init: start", Duration::from_secs(args.boot_timeout)) {
                    Ok(t) => times.push(t),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            match err {
                None => {
                    let m = median(times);
                    println!("    {name:<20} {:>10}", fmt_dur(Some(m)));
                    results.push((name, Some(m)));
                }
                Some(e) => {
                    println!("    {name:<20} failed: {e}");
                    results.push((name, None));
                }
            }
        }
        let time_of = |which: &str| results.iter().find(|(n, _)| n == which).and_then(|(_, t)| *t);
        if let (Some(i), Some(j)) = (time_of("interp fast"), time_of("jit fast")) {
            println!("    ratio interp fast / jit fast: {:.2}", i.as_secs_f64() / j.as_secs_f64());
        }
        if let (Some(i), Some(k)) = (time_of("interp fast"), time_of("kvm fast")) {
            println!("    ratio interp fast / kvm fast: {:.2}", i.as_secs_f64() / k.as_secs_f64());
        }
        if let Some((_, Some(q))) = results.iter().find(|(n, _)| n == "qemu tcg") {
            for (name, t) in &results {
                if let (Some(t), true) = (t, name != "qemu tcg") {
                    println!("    ratio {name} / qemu tcg: {:.2}", t.as_secs_f64() / q.as_secs_f64());
                }
            }
        }
    }
    0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ferrovm_cmd(kernel: &std::path::Path, initrd: &std::path::Path, accel: &str, path: &str) -> Vec<String> {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
    vec![
        exe,
        "run".into(),
        "--accel".into(),
        accel.into(),
        "--kernel-boot".into(),
        path.into(),
        "--mem".into(),
        "512M".into(),
        "--serial".into(),
        "stdio".into(),
        "--kernel".into(),
        kernel.display().to_string(),
        "--initrd".into(),
        initrd.display().to_string(),
        "--append".into(),
        "console=ttyS0".into(),
    ]
}

fn qemu_cmd(qemu: &std::path::Path, kernel: &std::path::Path, initrd: &std::path::Path) -> Vec<String> {
    vec![
        qemu.display().to_string(),
        "-accel".into(),
        "tcg".into(),
        "-cpu".into(),
        "max".into(),
        "-m".into(),
        "512".into(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        "console=ttyS0".into(),
    ]
}

/// Start `cmd`, and return the time until a line containing `needle`
/// appears on its stdout; the process is killed then.
fn time_to_line(cmd: &[String], needle: &str, limit: Duration) -> Result<Duration, String> {
    use std::io::{BufRead, BufReader};
    let t = Instant::now();
    let (mut child, stdout) = crate::spawn_piped(cmd)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(&needle) {
                let _ = tx.send(());
                return;
            }
        }
    });
    let r = match rx.recv_timeout(limit) {
        Ok(()) => Ok(t.elapsed()),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!("no init line within {} s", limit.as_secs())),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err("exited before the init line".into()),
    };
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn qemu_builtin(runs: usize) -> Option<Result<Duration, String>> {
    let qemu = which("qemu-system-x86_64")?;
    let g = match firmware::builtin::build() {
        Ok(g) => g,
        Err(e) => return Some(Err(e.to_string())),
    };
    let path = std::env::temp_dir().join(format!("ferrovm-bench-{}.rom", std::process::id()));
    if let Err(e) = std::fs::write(&path, &g.rom) {
        return Some(Err(format!("cannot write {}: {e}", path.display())));
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = std::process::Command::new(&qemu)
            .args(["-bios"])
            .arg(&path)
            .args(["-m", "64", "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
            .stdin(std::process::Stdio::null())
            .output();
        let elapsed = t.elapsed();
        match out {
            Ok(o) => {
                let s = String::from_utf8_lossy(&o.stdout);
                if firmware::builtin::parse_checksum(&s) != Some(firmware::builtin::expected_checksum()) {
                    let _ = std::fs::remove_file(&path);
                    return Some(Err(format!("unexpected output: {s:?}")));
                }
                times.push(elapsed);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Some(Err(e.to_string()));
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    times.sort();
    Some(Ok(times[runs / 2]))
}

pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
