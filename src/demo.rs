//! `ferrovm demo` and `ferrovm bench`: the built-in guest under every
//! accelerator, side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::machine::{Firmware, Machine, MachineConfig, RunReport, SerialOut};

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
    run_builtin(timeout, false)
}

/// Boot the built-in guest under KVM with serial output captured.
pub fn run_builtin_kvm(timeout: Duration) -> Result<(RunReport, String), String> {
    hvf_kvm_accel::open().map_err(|e| format!("not available: {e}"))?;
    run_builtin(timeout, true)
}

fn run_builtin(timeout: Duration, kvm: bool) -> Result<(RunReport, String), String> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let config = MachineConfig {
        mem: 64 << 20,
        firmware: Firmware::Builtin,
        serial: SerialOut::Capture(buf.clone()),
        no_reboot: true,
        timeout: Some(timeout),
    };
    let m = Machine::new(config).map_err(|e| e.to_string())?;
    let report = if kvm { m.run_kvm().map_err(|e| e.to_string())? } else { m.run_interp() };
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

/// Collect one row per accelerator.
pub fn rows() -> Vec<Row> {
    vec![
        Row { accel: "interp", outcome: run_builtin_interp(Duration::from_secs(60)) },
        Row { accel: "jit", outcome: Err("not available yet: the Cranelift JIT is not built".into()) },
        Row { accel: "kvm", outcome: run_builtin_kvm(Duration::from_secs(60)) },
    ]
}

/// `ferrovm demo`.
pub fn demo() -> i32 {
    println!("ferrovm demo: the built-in guest (real -> protected -> long mode, ring-3 checksum over 4 MiB)\n");
    let rows = rows();
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

/// `ferrovm bench`: the built-in guest, median of three runs per engine, and
/// QEMU TCG on the same ROM when `qemu-system-x86_64` is installed.
pub fn bench() -> i32 {
    const RUNS: usize = 3;
    let mut interp = Vec::new();
    let mut mips = Vec::new();
    for _ in 0..RUNS {
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
    interp.sort();
    mips.sort_by(f64::total_cmp);
    let med = interp[RUNS / 2];
    println!("built-in guest, median of {RUNS}:");
    println!("  interp  {:>10}  ({:.1} guest MIPS)", fmt_dur(Some(med)), mips[RUNS / 2]);
    match qemu_builtin(RUNS) {
        Some(Ok(q)) => {
            println!("  qemu    {:>10}  (qemu-system-x86_64 TCG, same ROM, includes its start-up)", fmt_dur(Some(q)));
            println!("  ratio interp/qemu: {:.2}", med.as_secs_f64() / q.as_secs_f64());
        }
        Some(Err(e)) => println!("  qemu    failed: {e}"),
        None => println!("  qemu    not installed (Debian package qemu-system-x86): no comparison"),
    }
    0
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

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
