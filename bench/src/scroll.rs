//! `ferrovm bench --scroll`: a scrolling Linux framebuffer console.
//! Debian's generic kernel boots directly with the standard VGA and an
//! initrd that also holds the bochs DRM modules; the guest loads them,
//! waits for its framebuffer (fb0), and times by its own /proc/uptime
//! `seq 1 20000` written to the framebuffer console (tty0), then the same
//! written to the serial port (ttyS0), printing each phase's bounds on the
//! serial console. ferrovm's JIT and, when it is installed, QEMU TCG run
//! the same guest at the same 1024x768 mode (QEMU's EDID is given that
//! size); each also runs once with a VNC viewer connected for the whole
//! run, since a viewer makes the emulator track and send the screen's
//! changes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::work::base64;

/// The generic kernel's modules for the bochs DRM driver, in insmod order
/// (each after the modules it depends on).
const MODULES: &[&str] = &["drm", "drm_kms_helper", "ttm", "drm_ttm_helper", "drm_vram_helper", "bochs"];

/// The lines `seq` writes in each phase.
const LINES: u32 = 20_000;

/// The framebuffer's size as the guest's fb0 reports it: the EDID's
/// preferred mode under both emulators, not bochs's 800x600 fallback.
const MODE: &str = "1024,768";

/// How long one run may take, boot included.
const LIMIT: Duration = Duration::from_secs(300);

/// What the guest runs: the DRM stack and bochs, a wait for fb0, then the
/// two timed phases, each printed as `T:<phase> <start> <end>` in seconds
/// of uptime.
fn script() -> String {
    let (helpers, driver) = MODULES.split_at(MODULES.len() - 1);
    format!(
        r#"for m in {helpers}; do insmod /lib/modules/$m.ko; done
insmod /lib/modules/{driver}.ko defx=800 defy=600
i=0; while [ ! -e /sys/class/graphics/fb0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "T:fb0 $(cat /sys/class/graphics/fb0/virtual_size)"
sleep 1
a=$(cut -d' ' -f1 /proc/uptime); seq 1 {LINES} > /dev/tty0; b=$(cut -d' ' -f1 /proc/uptime); echo "T:fb $a $b"
a=$(cut -d' ' -f1 /proc/uptime); seq 1 {LINES} > /dev/ttyS0; b=$(cut -d' ' -f1 /proc/uptime); echo "T:serial $a $b"
"#,
        helpers = helpers.join(" "),
        driver = driver[0],
    )
}

/// The module `name` under `<images>/modules-generic/kernel`, decompressed
/// when it is stored compressed.
fn module(images: &Path, name: &str) -> Result<Vec<u8>, String> {
    let root = images.join("modules-generic/kernel");
    let candidates: Vec<String> = ["", ".xz", ".zst", ".gz"].iter().map(|ext| format!("{name}.ko{ext}")).collect();
    let path = find_file(&root, &candidates).ok_or_else(|| format!("{name}.ko is not under {}", root.display()))?;
    let tool: &[&str] = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => &["xz", "-dc"],
        Some("zst") => &["zstd", "-qdc"],
        Some("gz") => &["gzip", "-dc"],
        _ => return std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display())),
    };
    let out = std::process::Command::new(tool[0])
        .args(&tool[1..])
        .arg(&path)
        .output()
        .map_err(|e| format!("cannot start {} for {}: {e}", tool[0], path.display()))?;
    if !out.status.success() {
        return Err(format!("{} could not decompress {}", tool[0], path.display()));
    }
    Ok(out.stdout)
}

/// The first file under `dir` (searched depth first) named one of `names`.
fn find_file(dir: &Path, names: &[String]) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let kind = e.file_type().ok()?;
        if kind.is_dir() {
            if let Some(found) = find_file(&path, names) {
                return Some(found);
            }
        } else if names.iter().any(|n| e.file_name() == n.as_str()) {
            return Some(path);
        }
    }
    None
}

/// Appends one newc cpio entry to `out`, whose length so far is a multiple
/// of four, as newc's alignment is counted from the archive's start.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let size = u32::try_from(data.len()).expect("a cpio entry below 4 GiB");
    let name_size = u32::try_from(name.len() + 1).expect("a short name");
    out.extend_from_slice(b"070701");
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check.
    for field in [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_size, 0] {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// `<images>/initramfs.cpio.gz` followed by an uncompressed newc archive
/// with `modules` in lib/modules. Linux unpacks each archive of an initrd
/// in turn, the next one starting after zero padding at a multiple of four
/// bytes.
fn initrd_with_modules(images: &Path, modules: &[&str]) -> Result<Vec<u8>, String> {
    let base = images.join("initramfs.cpio.gz");
    let mut out = std::fs::read(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    out.resize(out.len().next_multiple_of(4), 0);
    cpio_entry(&mut out, 1, 0o040_755, "lib", &[]);
    cpio_entry(&mut out, 2, 0o040_755, "lib/modules", &[]);
    for (ino, m) in (3..).zip(modules) {
        cpio_entry(&mut out, ino, 0o100_644, &format!("lib/modules/{m}.ko"), &module(images, m)?);
    }
    cpio_entry(&mut out, 0, 0, "TRAILER!!!", &[]);
    Ok(out)
}

/// A directory of this process's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("ferrovm-bench-scroll-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A display number whose port (5900 + N) was free a moment ago.
fn free_display() -> Option<u16> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    port.checked_sub(5900)
}

/// A viewer on `display` from the emulator's start until `stop`: it
/// connects as soon as the server listens, then asks for an incremental
/// update after each one it gets. The updates it got.
fn viewer(display: u16, stop: Arc<AtomicBool>) -> JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let addr = ([127, 0, 0, 1], 5900 + display).into();
        let since = Instant::now();
        let mut c = loop {
            match vnc::client::Client::connect(addr, None, vnc::client::ClientEncoding::Raw) {
                Ok(c) => break c,
                Err(_) if !stop.load(Ordering::Acquire) && since.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("VNC client: {e}")),
            }
        };
        let mut updates = 0;
        c.request(false).map_err(|e| format!("VNC client: {e}"))?;
        while !stop.load(Ordering::Acquire) {
            match c.read_update() {
                Ok(_) => {
                    updates += 1;
                    c.request(true).map_err(|e| format!("VNC client: {e}"))?;
                }
                // The emulator is ended after the run: the connection with it.
                Err(_) if stop.load(Ordering::Acquire) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(format!("VNC client: {e}")),
            }
        }
        Ok(updates)
    })
}

/// What the guest printed on its serial console, as the run goes.
enum Mark {
    /// fb0's size (`T:fb0`).
    Mode(String),
    /// The framebuffer phase's seconds (`T:fb`).
    Fb(f64),
    /// The serial phase's seconds (`T:serial`).
    Serial(f64),
}

/// The seconds between the two uptimes after `tag` in `line`.
fn span(line: &str, tag: &str) -> Option<f64> {
    let rest = &line[line.find(tag)? + tag.len()..];
    let mut t = rest.split_whitespace().map(|w| w.parse::<f64>().ok());
    let (a, b) = (t.next()??, t.next()??);
    Some(b - a)
}

/// The marks in one line of the guest's output.
fn parse(line: &str) -> Option<Mark> {
    if let Some(at) = line.find("T:fb0 ") {
        let mode = line[at + "T:fb0 ".len()..].trim();
        return Some(Mark::Mode(if mode.is_empty() { "none".into() } else { mode.to_string() }));
    }
    if let Some(s) = span(line, "T:fb ") {
        return Some(Mark::Fb(s));
    }
    span(line, "T:serial ").map(Mark::Serial)
}

/// One run's result.
#[derive(Debug, Clone)]
struct Sample {
    /// fb0's size as the guest printed it.
    mode: String,
    /// Seconds of `seq` on the framebuffer console.
    fb: f64,
    /// Seconds of `seq` on the serial port.
    serial: f64,
    /// The updates the viewer got, when one was connected.
    updates: Option<u64>,
}

/// Runs `cmd` once (with a viewer on `display` when `watched`) until the
/// guest's serial mark, within [`LIMIT`], and ends it.
fn once(cmd: &[String], display: u16, watched: bool) -> Result<Sample, String> {
    let started = Instant::now();
    let (mut child, out) = crate::spawn_piped(cmd)?;
    let stop = Arc::new(AtomicBool::new(false));
    let v = watched.then(|| viewer(display, stop.clone()));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut line = Vec::new();
        while matches!(out.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            if let Some(m) = parse(&String::from_utf8_lossy(&line)) {
                if tx.send(m).is_err() {
                    break;
                }
            }
            line.clear();
        }
    });
    let (mut mode, mut fb) = (None, None);
    let r = loop {
        let left = LIMIT.saturating_sub(started.elapsed());
        let missing = match (&mode, fb) {
            (None, _) => "T:fb0",
            (Some(_), None) => "T:fb",
            (Some(_), Some(_)) => "T:serial",
        };
        match rx.recv_timeout(left) {
            Ok(Mark::Mode(m)) => mode = Some(m),
            Ok(Mark::Fb(s)) => fb = Some(s),
            Ok(Mark::Serial(serial)) => match (mode.take(), fb) {
                (Some(mode), Some(fb)) => break Ok(Sample { mode, fb, serial, updates: None }),
                _ => break Err(format!("{missing} was not printed before T:serial")),
            },
            Err(RecvTimeoutError::Timeout) => break Err(format!("no {missing} within {} s", LIMIT.as_secs())),
            Err(RecvTimeoutError::Disconnected) => break Err(format!("the emulator exited before {missing}")),
        }
    };
    stop.store(true, Ordering::Release);
    let _ = child.kill();
    let _ = child.wait();
    let updates = match v.map(|v| v.join().map_err(|_| "the viewer panicked".to_string())) {
        Some(Ok(Ok(n))) => Some(n),
        Some(Ok(Err(e)) | Err(e)) => return r.and(Err(e)),
        None => None,
    };
    r.map(|s| Sample { updates, ..s })
}

/// The emulators measured, each one's command given a VNC display number.
struct Emulator {
    name: &'static str,
    cmd: Box<dyn Fn(u16) -> Vec<String>>,
}

fn ferrovm(kernel: &Path, initrd: &Path, append: &str) -> Emulator {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
    let (kernel, initrd, append) = (kernel.display().to_string(), initrd.display().to_string(), append.to_string());
    Emulator {
        name: "ferrovm jit",
        cmd: Box::new(move |d| {
            let vnc = format!("127.0.0.1:{d}");
            [exe.as_str(), "run", "--accel", "jit", "--mem", "256M", "--vnc", vnc.as_str(), "--serial", "stdio"]
                .into_iter()
                .chain(["--kernel", kernel.as_str(), "--initrd", initrd.as_str(), "--append", append.as_str()])
                .map(str::to_string)
                .collect()
        }),
    }
}

fn qemu(q: &Path, kernel: &Path, initrd: &Path, append: &str) -> Emulator {
    let q = q.display().to_string();
    let (kernel, initrd, append) = (kernel.display().to_string(), initrd.display().to_string(), append.to_string());
    Emulator {
        name: "QEMU TCG",
        cmd: Box::new(move |d| {
            let vnc = format!("127.0.0.1:{d}");
            [q.as_str(), "-accel", "tcg", "-m", "256", "-nodefaults", "-device", "VGA,xres=1024,yres=768"]
                .into_iter()
                .chain(["-serial", "stdio", "-vnc", vnc.as_str()])
                .chain(["-kernel", kernel.as_str(), "-initrd", initrd.as_str(), "-append", append.as_str()])
                .map(str::to_string)
                .collect()
        }),
    }
}

/// One row of the table: an emulator with or without a viewer, and its runs.
struct Row {
    emulator: usize,
    watched: bool,
    runs: Vec<Result<Sample, String>>,
}

impl Row {
    /// The median framebuffer and serial seconds of the runs that gave
    /// their marks, the modes they saw, and the viewer's updates (median).
    fn summary(&self) -> Option<(f64, f64, Vec<String>, Option<u64>)> {
        let ok: Vec<&Sample> = self.runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        if ok.is_empty() {
            return None;
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let fb = median(ok.iter().map(|s| s.fb).collect());
        let serial = median(ok.iter().map(|s| s.serial).collect());
        let mut modes: Vec<String> = ok.iter().map(|s| s.mode.clone()).collect();
        modes.dedup();
        let mut updates: Vec<u64> = ok.iter().filter_map(|s| s.updates).collect();
        updates.sort_unstable();
        Some((fb, serial, modes, updates.get(updates.len() / 2).copied()))
    }
}

/// Runs the bench; the exit status.
pub fn run(args: &crate::BenchArgs) -> i32 {
    let runs = args.runs.max(1);
    let kernel = args.images.join("vmlinuz-generic");
    let base = args.images.join("initramfs.cpio.gz");
    let modules = args.images.join("modules-generic");
    for needed in [&kernel, &base] {
        if !needed.is_file() {
            eprintln!("ferrovm bench --scroll needs {} (scripts/guest-images.sh)", needed.display());
            return 1;
        }
    }
    if !modules.is_dir() {
        eprintln!("ferrovm bench --scroll needs {} (scripts/guest-images.sh)", modules.display());
        return 1;
    }
    let tmp = match TempDir::new() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ferrovm bench --scroll: a temporary directory: {e}");
            return 1;
        }
    };
    let initrd = tmp.0.join("initrd-bochs.img");
    let data = match initrd_with_modules(&args.images, MODULES) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ferrovm bench --scroll needs the bochs DRM modules (scripts/guest-images.sh): {e}");
            return 1;
        }
    };
    if let Err(e) = std::fs::write(&initrd, data) {
        eprintln!("ferrovm bench --scroll: {}: {e}", initrd.display());
        return 1;
    }
    let append = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(script().as_bytes()));
    let mut emulators = vec![ferrovm(&kernel, &initrd, &append)];
    let q = crate::demo::which("qemu-system-x86_64");
    if let Some(q) = &q {
        emulators.push(qemu(q, &kernel, &initrd, &append));
    }
    let mut rows: Vec<Row> = (0..emulators.len())
        .flat_map(|emulator| [false, true].map(|watched| Row { emulator, watched, runs: Vec::new() }))
        .collect();
    // The runs without a viewer alternate between the emulators, so a
    // change in the host's load falls on both; then one run each with a
    // viewer.
    let order: Vec<usize> = (0..runs)
        .flat_map(|_| rows.iter().enumerate().filter(|(_, r)| !r.watched).map(|(i, _)| i).collect::<Vec<_>>())
        .chain(rows.iter().enumerate().filter(|(_, r)| r.watched).map(|(i, _)| i))
        .collect();
    for i in order {
        let row = &mut rows[i];
        let e = &emulators[row.emulator];
        let viewer = if row.watched { "one viewer" } else { "no viewer" };
        let r = match free_display() {
            Some(d) => once(&(e.cmd)(d), d, row.watched),
            None => Err("no free TCP port for the VNC server".into()),
        };
        match &r {
            Ok(s) => eprintln!(
                "{}, {viewer}: fb0 {}, framebuffer {:.2} s, serial {:.2} s{}",
                e.name,
                s.mode,
                s.fb,
                s.serial,
                s.updates.map(|n| format!(", {n} updates")).unwrap_or_default()
            ),
            Err(err) => eprintln!("{}, {viewer}: failed: {err}", e.name),
        }
        row.runs.push(r);
    }

    println!(
        "ferrovm bench --scroll: `seq 1 {LINES}` on Linux's framebuffer console (bochs DRM, tty0), then on its serial port (ttyS0), timed by the guest's /proc/uptime; median of {runs} run(s) without a viewer, one run with a VNC viewer\n"
    );
    if q.is_none() {
        println!("QEMU rows skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n");
    }
    println!(
        "{:<12} {:<11} {:>10} {:>15} {:>10} {:>10} {:>8}",
        "emulator", "viewer", "fb0", "framebuffer s", "serial s", "fb/serial", "updates"
    );
    let mut status = 0;
    let mut modes_off = Vec::new();
    let mut fb_of = vec![[None, None]; emulators.len()];
    for row in &rows {
        let name = emulators[row.emulator].name;
        let viewer = if row.watched { "one" } else { "none" };
        let failed = row.runs.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            status = 1;
        }
        match row.summary() {
            Some((fb, serial, modes, updates)) => {
                fb_of[row.emulator][usize::from(row.watched)] = Some(fb);
                let mode = modes.join(" ");
                if modes.iter().any(|m| m != MODE) {
                    modes_off.push(format!("{name} ({viewer} viewer) saw fb0 at {mode}"));
                }
                println!(
                    "{name:<12} {viewer:<11} {mode:>10} {fb:>15.2} {serial:>10.2} {:>10.2} {:>8}{}",
                    fb / serial,
                    updates.map_or("-".into(), |n| n.to_string()),
                    if failed > 0 { format!("  ({failed} of {} runs failed)", row.runs.len()) } else { String::new() }
                );
            }
            None => println!("{name:<12} {viewer:<11} failed"),
        }
    }
    if let [f, q] = fb_of[..] {
        let ratio = |i: usize| match (f[i], q[i]) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!("\nferrovm/QEMU, framebuffer phase: {} without a viewer, {} with one", ratio(0), ratio(1));
    }
    println!(
        "\nThe goal of the display issue: the framebuffer run within 10% of the serial run (fb/serial at most 1.10)."
    );
    for m in &modes_off {
        println!("note: {m}, not {MODE}: the phases are not comparable");
    }
    let errors: Vec<String> = rows
        .iter()
        .flat_map(|row| {
            let e = &emulators[row.emulator];
            row.runs.iter().filter_map(move |r| r.as_ref().err().map(|err| format!("{}: {err}", e.name)))
        })
        .collect();
    for e in errors {
        println!("failed run: {e}");
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_parsed_from_the_guest_lines() {
        assert!(matches!(parse("T:fb0 1024,768\r"), Some(Mark::Mode(m)) if m == "1024,768"));
        assert!(matches!(parse("T:fb 10.50 18.50"), Some(Mark::Fb(s)) if (s - 8.0).abs() < 1e-9));
        assert!(matches!(parse("[ 3.1] x T:serial 20.00 20.42\r"), Some(Mark::Serial(s)) if (s - 0.42).abs() < 1e-9));
        assert!(parse("T:fb 10.50").is_none());
        assert!(parse("19999").is_none());
    }

    #[test]
    fn the_cpio_entries_are_newc_and_aligned() {
        let mut out = Vec::new();
        cpio_entry(&mut out, 3, 0o100_644, "lib/modules/x.ko", b"hello");
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[6..14], b"00000003");
        assert_eq!(&out[14..22], b"000081A4");
        // The file size and the name's size with its NUL.
        assert_eq!(&out[54..62], b"00000005");
        assert_eq!(&out[94..102], b"00000011");
        // 110 bytes of header and 17 of name make 128; the data follows.
        assert_eq!(&out[128..133], b"hello");
        assert_eq!(out.len(), 136);
    }

    #[test]
    fn the_script_loads_the_helpers_then_bochs() {
        let s = script();
        assert!(s.starts_with("for m in drm drm_kms_helper ttm drm_ttm_helper drm_vram_helper; do"));
        assert!(s.contains("insmod /lib/modules/bochs.ko defx=800 defy=600"));
        assert!(s.contains("seq 1 20000 > /dev/tty0"));
    }
}
