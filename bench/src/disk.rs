//! `ferrovm bench --disk`: a disk inside a Linux guest (Debian's generic
//! kernel with its modules), under each engine and under QEMU on the same
//! kind of raw image and the same bus, with Debian's `ioping` as the load
//! generator (`ioping.cpio.gz` of `scripts/guest-images.sh`, appended to
//! the initramfs). Two tables: virtio-blk (`/dev/vda`, virtio_blk), and
//! the PIIX3 IDE controller (`/dev/sda`, ata_piix and sd_mod: QEMU's
//! `-drive if=ide`, its bus-master DMA). One boot per engine and run (the
//! engines taking turns, run after run) does, on the disk with O_DIRECT and
//! no pause between requests:
//!
//! - sequential write: 128 requests of 1 MiB;
//! - sequential read: the same 128 MiB back, twice, then 4 GiB of it in
//!   one run (32 times over), the rate at which the I/O path runs once an
//!   engine that compiles hot code has compiled it;
//! - 4 KiB random read: 4,000 requests over those 128 MiB (queue depth 1);
//! - 4 KiB random read at queue depth 32: 32 ioping processes at once, each
//!   with 300 random requests in its own 4 MiB of those 128 MiB (the
//!   driver then has up to 32 requests in the queue). The figure is their
//!   requests together over the longest process's time (its warm-up
//!   request included), which no interleaving of their runs can inflate.
//!
//! The figures are ioping's own (`-B`: requests, guest time, IOPS and
//! bytes/s, its first request left out as a warm-up). The host also times
//! the workloads together between two lines the guest prints, and the table
//! gives ioping's total over that host time, which is near 1 when the
//! guest's clock keeps time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::work::{base64, time_work, DONE, START};

/// A disk bus of the benchmark: the guest's modules for it (in insmod
/// order), the disk's device, the `-drive` interface that puts the disk
/// on it, and whether its table has the interpreter's row.
struct Bus {
    name: &'static str,
    modules: &'static [&'static str],
    dev: &'static str,
    interface: &'static str,
    interp: bool,
}

/// The generic kernel's modules for a virtio-blk disk, in insmod order.
pub const VIRTIO_MODULES: &[&str] =
    &["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk"];

/// The generic kernel's modules for an IDE disk on the PIIX3, in insmod
/// order.
pub const IDE_MODULES: &[&str] = &[
    "scsi_common",
    "scsi_mod",
    "libata",
    "ata_piix",
    "crct10dif_common",
    "crct10dif_generic",
    "crc-t10dif",
    "crc64",
    "crc64_rocksoft_generic",
    "crc64-rocksoft",
    "t10-pi",
    "sd_mod",
];

const VIRTIO: Bus =
    Bus { name: "virtio-blk", modules: VIRTIO_MODULES, dev: "/dev/vda", interface: "virtio", interp: true };

/// The interpreter's figures are a property of the interpreter, not of
/// the bus: the IDE table leaves its minutes-long boot out.
const IDE: Bus =
    Bus { name: "IDE (PIIX3, bus-master DMA)", modules: IDE_MODULES, dev: "/dev/sda", interface: "ide", interp: false };

const IMAGE_MIB: u64 = 256;
const SEQ_MIB: u64 = 128;
const RANDOM_READS: u32 = 4000;
/// Requests of 1 MiB in the long sequential read: 4 GiB, long past the
/// JIT's compile threshold (a block's 1,000th run) for code run once per
/// request.
const LONG_READS: u64 = 4096;
/// ioping processes of the queue-depth-32 workload, and each one's requests.
const QD: u64 = 32;
const QD_READS: u64 = 300;

/// Load the modules and wait for the disk (the driver probes it
/// asynchronously), before the timed part.
fn insmods(bus: &Bus) -> String {
    let mut s: String = bus.modules.iter().map(|m| format!("insmod /lib/modules/{m}.ko; ")).collect();
    s.push_str(&format!("i=0; while [ ! -b {0} ] && [ $i -lt 50 ]; do sleep 1; i=$((i+1)); done;", bus.dev));
    s
}

/// The workloads: name, the key of their line, and the ioping arguments
/// (each on the disk, direct, with no interval, batch output). ioping
/// counts its warm-up request in `-c`: one more than measured. The
/// sequential read runs three times: the first pass is the guest's I/O
/// path still cold (run a hundred times, an emulator that compiles hot
/// code runs much of it in its interpreter then), the second a hundred
/// requests later, and the long run reads the same 128 MiB over and over
/// ([`LONG_READS`] requests), the rate once the path runs compiled.
fn workloads() -> [(&'static str, &'static str, String); 6] {
    let seq = format!("-L -s 1m -S {SEQ_MIB}m -c {}", SEQ_MIB + 1);
    let long = format!("-L -s 1m -S {SEQ_MIB}m -c {}", LONG_READS + 1);
    [
        ("sequential write, MiB/s", "seqw", format!("-WWW {seq}")),
        ("sequential read, MiB/s", "seqr", seq.clone()),
        ("seq. read, 2nd pass, MiB/s", "seqr2", seq),
        ("seq. read, 4 GiB run, MiB/s", "seqrl", long),
        ("4 KiB random read, IOPS", "rand", format!("-s 4k -S {SEQ_MIB}m -c {}", RANDOM_READS + 1)),
        // The offset of each process's region is added by `script`.
        ("4 KiB random read, qd32", QD_KEY, format!("-s 4k -S {}m -c {}", SEQ_MIB / QD, QD_READS + 1)),
    ]
}

/// The key of the queue-depth-32 workload: [`QD`] processes, one line each.
const QD_KEY: &str = "rq32";

/// The guest's script: the modules, then the workloads between the
/// marks, each printing `T:<key> <ioping -B line>`.
fn script(bus: &Bus) -> String {
    let mut s = insmods(bus);
    s.push_str(&format!(" echo {START};"));
    for (_, key, args) in workloads() {
        if key == QD_KEY {
            // All at once, each into its own file, then their lines.
            let region = SEQ_MIB / QD;
            s.push_str(&format!(
                " mkdir -p /tmp; i=0; while [ $i -lt {QD} ]; do ioping -D -i 0 -q -B {args} -o $((i*{region}))m {} \
                 >/tmp/qd.$i 2>&1 & i=$((i+1)); done; wait; i=0; while [ $i -lt {QD} ]; do echo \"T:{key} \
                 $(cat /tmp/qd.$i)\"; i=$((i+1)); done;",
                bus.dev
            ));
            continue;
        }
        s.push_str(&format!(" echo \"T:{key} $(ioping -D -i 0 -q -B {args} {} 2>&1)\";", bus.dev));
    }
    s.push_str(&format!(" echo {DONE}"));
    s
}

/// ioping's batch line (ioping 1.3, times in nanoseconds): requests, their
/// time, IOPS, bytes/s, then min, avg, max and mdev of a request, then every
/// request (the warm-up too) and the whole run's time.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Batch {
    requests: u64,
    iops: f64,
    bytes_per_sec: f64,
    total_ns: f64,
}

fn parse_batch(out: &str, key: &str) -> Option<Batch> {
    parse_line(out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&format!("T:{key} ")))?)
}

fn parse_line(line: &str) -> Option<Batch> {
    let f: Vec<f64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    (f.len() >= 10).then(|| Batch { requests: f[0] as u64, iops: f[2], bytes_per_sec: f[3], total_ns: f[9] })
}

/// The `procs` lines of the parallel workload as one batch: all their
/// requests over the longest run's whole time (its warm-up request
/// included), so its IOPS are a lower bound of the rate while they ran
/// together. None unless every process printed a batch line.
fn parse_parallel(out: &str, key: &str, procs: u64) -> Option<Batch> {
    let prefix = format!("T:{key} ");
    let lines: Vec<&str> = out.lines().filter_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix)).collect();
    if lines.len() as u64 != procs {
        return None;
    }
    let batches = lines.into_iter().map(parse_line).collect::<Option<Vec<Batch>>>()?;
    let requests: u64 = batches.iter().map(|b| b.requests).sum();
    let total_ns = batches.iter().map(|b| b.total_ns).fold(0.0, f64::max);
    let bytes: f64 = batches.iter().map(|b| b.bytes_per_sec * b.requests as f64 / b.iops.max(1e-9)).sum();
    (total_ns > 0.0).then(|| Batch {
        requests,
        iops: requests as f64 * 1e9 / total_ns,
        bytes_per_sec: bytes * 1e9 / total_ns,
        total_ns,
    })
}

/// An uncompressed newc cpio archive of `files` (path, bytes), which Linux
/// unpacks after the gzip'd initramfs it follows.
fn cpio(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    // Linux creates no parent folders: each comes first, as an entry.
    let mut dirs: Vec<&str> = Vec::new();
    for (name, _) in files {
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            let d = &name[..at + i];
            if !dirs.contains(&d) {
                dirs.push(d);
            }
            at += i + 1;
        }
    }
    let mut ino = 1;
    for d in dirs {
        entry(d, 0o040755, &[], ino);
        ino += 1;
    }
    for (name, data) in files {
        entry(name, 0o100644, data, ino);
        ino += 1;
    }
    entry("TRAILER!!!", 0, &[], 0);
    out
}

/// initramfs.cpio.gz, ioping.cpio.gz and both buses' modules, in `dir`.
fn initrd(images: &Path, dir: &Path) -> Result<PathBuf, String> {
    let mut data = std::fs::read(images.join("initramfs.cpio.gz")).map_err(|e| format!("initramfs.cpio.gz: {e}"))?;
    data.extend(std::fs::read(images.join("ioping.cpio.gz")).map_err(|e| format!("ioping.cpio.gz: {e}"))?);
    let mut files = Vec::new();
    for m in VIRTIO_MODULES.iter().chain(IDE_MODULES) {
        let ko = find_module(&images.join("modules-generic/kernel"), m).ok_or(format!("module {m}.ko not found"))?;
        files.push((format!("lib/modules/{m}.ko"), std::fs::read(&ko).map_err(|e| format!("{}: {e}", ko.display()))?));
    }
    // Linux reads an archive that follows a compressed one only from a
    // 4-byte boundary, skipping zeroes up to it.
    data.resize(data.len().next_multiple_of(4), 0);
    data.extend(cpio(&files));
    let path = dir.join("initrd-disk.cpio");
    std::fs::write(&path, data).map_err(|e| e.to_string())?;
    Ok(path)
}

fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_module(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|f| f == format!("{name}.ko").as_str()) {
            return Some(p);
        }
    }
    None
}

fn command(
    engine: &str,
    q: Option<&Path>,
    kernel: &Path,
    initrd: &Path,
    (disk, bus): (&Path, &Bus),
    append: &str,
) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (k, i, d) = (kernel.display().to_string(), initrd.display().to_string(), disk.display().to_string());
    match (engine, q) {
        ("qemu", Some(q)) => {
            let mut v = vec![q.display().to_string()];
            v.extend(s(&["-accel", "tcg", "-cpu", "max", "-m", "512", "-nodefaults", "-display", "none"]));
            v.extend(s(&["-serial", "stdio", "-no-reboot", "-kernel", &k, "-initrd", &i, "-append", append]));
            v.extend(s(&["-drive", &format!("file={d},if={},format=raw,cache=writeback", bus.interface)]));
            v
        }
        _ => {
            let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
            let mut v = vec![exe];
            v.extend(s(&["run", "--accel", engine, "--mem", "512M", "--serial", "stdio", "--kernel", &k]));
            let drive = format!("{d},format=raw,if={}", bus.interface);
            v.extend(s(&["--initrd", &i, "--append", append, "--disk", &drive]));
            v
        }
    }
}

/// `ferrovm bench --disk`.
pub fn run(args: &crate::BenchArgs) -> i32 {
    let runs = args.runs.max(1);
    let kernel = args.images.join("vmlinuz-generic");
    if !kernel.is_file() {
        eprintln!("ferrovm bench --disk: {} is missing (run scripts/guest-images.sh)", kernel.display());
        return 1;
    }
    let dir = std::env::temp_dir().join(format!("ferrovm-bench-disk-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("ferrovm bench --disk: {}: {e}", dir.display());
        return 1;
    }
    let initrd = match initrd(&args.images, &dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ferrovm bench --disk: {e} (run scripts/guest-images.sh)");
            return 1;
        }
    };
    let q = crate::demo::which("qemu-system-x86_64");
    let kvm = hvf_kvm_accel::open().is_ok();
    println!(
        "ferrovm bench --disk: a {IMAGE_MIB} MiB raw image inside Debian's generic kernel, ioping with O_DIRECT at \
         queue depth 1 (qd32: {QD} processes at once), median of {runs} run(s) (QEMU: TCG, the same bus, cache=writeback)\n"
    );
    if q.is_none() {
        println!("QEMU column skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n");
    }
    let mut status = 0;
    let limit = Duration::from_secs(args.boot_timeout);
    let ctx = Ctx { q: q.as_deref(), kernel: &kernel, initrd: &initrd, dir: &dir, runs, limit };
    for bus in [&VIRTIO, &IDE] {
        if args.disk_bus.as_deref().is_some_and(|b| b != bus.interface) {
            continue;
        }
        let mut engines: Vec<&str> = if bus.interp { vec!["interp", "jit"] } else { vec!["jit"] };
        if kvm {
            engines.push("kvm");
        }
        if q.is_some() {
            engines.push("qemu");
        }
        status |= table(&ctx, bus, &engines);
    }
    println!("ratios of rates (above 1: ferrovm is faster)");
    let _ = std::fs::remove_dir_all(&dir);
    status
}

/// What every table's runs share.
struct Ctx<'a> {
    q: Option<&'a Path>,
    kernel: &'a Path,
    initrd: &'a Path,
    dir: &'a Path,
    runs: usize,
    /// How long one boot may take to print its results.
    limit: Duration,
}

/// Measure and print one bus's table; its exit status.
fn table(c: &Ctx<'_>, bus: &Bus, engines: &[&str]) -> i32 {
    println!("{}, {}:", bus.name, bus.dev);
    let append = format!("console=ttyS0 quiet ferrovm.poweroff=1 ferrovm.cmd={}", base64(script(bus).as_bytes()));
    let mut status = 0;
    // Per engine, each run's figure of each workload and each run's ioping
    // time over the host's. The engines take turns, run after run, so that
    // a change in the host's load falls on all of them alike.
    let work = workloads();
    let mut figures: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); work.len()]; engines.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); engines.len()];
    let mut failed = vec![false; engines.len()];
    let mut runs = Vec::new();
    for e in engines {
        // One image per engine: the reads read what its write wrote.
        let disk = c.dir.join(format!("disk-{e}-{}.img", bus.interface));
        let made = std::fs::File::create(&disk).and_then(|f| f.set_len(IMAGE_MIB << 20));
        if let Err(err) = made {
            eprintln!("ferrovm bench --disk: {}: {err}", disk.display());
            return 1;
        }
        let cmd = command(e, c.q, c.kernel, c.initrd, (&disk, bus), &append);
        runs.push((disk, cmd));
    }
    for _ in 0..c.runs {
        for (i, e) in engines.iter().enumerate() {
            if failed[i] {
                continue;
            }
            let (host, text) = match time_work(&runs[i].1, c.limit) {
                Ok(v) => v,
                Err(err) => {
                    eprintln!("ferrovm bench --disk: {} under {e}: {err}", bus.name);
                    if *e != "qemu" {
                        status = 1;
                    }
                    failed[i] = true;
                    continue;
                }
            };
            let mut guest_ns = 0.0;
            for (w, (name, key, _)) in work.iter().enumerate() {
                let batch = if *key == QD_KEY { parse_parallel(&text, key, QD) } else { parse_batch(&text, key) };
                match batch {
                    Some(b) if b.requests > 0 => {
                        let iops = *key == "rand" || *key == QD_KEY;
                        figures[i][w].push(if iops { b.iops } else { b.bytes_per_sec / f64::from(1 << 20) });
                        guest_ns += b.total_ns;
                    }
                    _ => {
                        let line = text.lines().find(|l| l.starts_with(&format!("T:{key}"))).unwrap_or("no line");
                        eprintln!("ferrovm bench --disk: {name} on {} under {e}: ioping failed: {line}", bus.name);
                        status = 1;
                    }
                }
            }
            ratios[i].push(guest_ns / 1e9 / host.as_secs_f64().max(1e-6));
        }
    }
    for (disk, _) in &runs {
        let _ = std::fs::remove_file(disk);
    }
    // The medians: table[workload][engine].
    let complete = |v: &Vec<f64>| (v.len() == c.runs).then(|| median(v.clone()));
    let table: Vec<Vec<Option<f64>>> =
        (0..work.len()).map(|w| figures.iter().map(|f| complete(&f[w])).collect()).collect();
    let clock: Vec<Option<f64>> = ratios.iter().map(complete).collect();
    print!("{:<26}", "workload");
    for e in engines {
        print!(" {e:>10}");
    }
    let interp = engines.contains(&"interp");
    print!(" {:>10}", "jit/qemu");
    if interp {
        print!(" {:>11}", "interp/qemu");
    }
    println!();
    let cell = |v: &Option<f64>| match v {
        Some(x) => format!(" {x:>10.1}"),
        None => format!(" {:>10}", "-"),
    };
    for (w, (name, _, _)) in work.iter().enumerate() {
        print!("{name:<26}");
        for v in &table[w] {
            print!("{}", cell(v));
        }
        let of = |e: &str| engines.iter().position(|x| *x == e).and_then(|i| table[w][i]);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        print!(" {:>10}", ratio(of("jit"), of("qemu")));
        if interp {
            print!(" {:>11}", ratio(of("interp"), of("qemu")));
        }
        println!();
    }
    print!("{:<26}", "ioping time / host time");
    for v in &clock {
        match v {
            Some(x) => print!(" {x:>10.2}"),
            None => print!(" {:>10}", "-"),
        }
    }
    println!("\n");
    status
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioping_batch_lines_are_read() {
        let out =
            "x\nT:rand 3999 1234567000 3240.2 13271859 180000 308000 2100000 40000 4000 1300000000\r\nT:seqw oops\n";
        let b = parse_batch(out, "rand").unwrap();
        assert_eq!(b.requests, 3999);
        assert_eq!(b.iops, 3240.2);
        assert_eq!(b.bytes_per_sec, 13271859.0);
        assert_eq!(b.total_ns, 1.3e9);
        assert_eq!(parse_batch(out, "seqw"), None, "a failed ioping prints its error instead");
        assert_eq!(parse_batch(out, "seqr"), None);
    }

    #[test]
    fn parallel_batch_lines_are_summed_over_the_longest_run() {
        // Two processes: 300 requests each, the second slower and longer.
        let out = "T:rq32 300 300000000 1000.0 4096000 1 2 3 4 301 400000000\n\
                   junk\n\
                   T:rq32 300 600000000 500.0 2048000 1 2 3 4 301 800000000\r\n";
        let b = parse_parallel(out, "rq32", 2).unwrap();
        assert_eq!(b.requests, 600);
        assert_eq!(b.total_ns, 8e8);
        assert!((b.iops - 750.0).abs() < 1e-6, "{}", b.iops);
        // 600 requests of 4 KiB over 0.8 s.
        assert!((b.bytes_per_sec - 600.0 * 4096.0 / 0.8).abs() < 1e-3, "{}", b.bytes_per_sec);
        assert_eq!(parse_parallel(out, "rq32", 3), None, "a process printed no line");
        let failed = format!("{out}T:rq32 ioping: No such device\n");
        assert_eq!(parse_parallel(&failed, "rq32", 3), None, "a process failed");
        assert_eq!(parse_parallel("", "rq32", 0), None);
    }

    #[test]
    fn the_script_runs_each_workload_between_the_marks() {
        for bus in [&VIRTIO, &IDE] {
            let s = script(bus);
            let (start, done) = (s.find(START).unwrap(), s.find(DONE).unwrap());
            assert!(s.find(&format!("insmod /lib/modules/{}.ko", bus.modules[0])).unwrap() < start);
            for (_, key, _) in workloads().iter().filter(|w| w.1 != QD_KEY) {
                let at = s.find(&format!("T:{key} $(ioping -D -i 0 -q -B")).unwrap();
                assert!(start < at && at < done, "{key}");
                assert!(s[at..].split(';').next().unwrap().contains(bus.dev), "{key} on {}", bus.dev);
            }
            // The 32 processes in the background, each in its own region,
            // all waited for before their lines are printed.
            let at = s.find(&format!("-o $((i*{}))m {} >/tmp/qd.$i 2>&1 &", SEQ_MIB / QD, bus.dev)).unwrap();
            let wait = s[at..].find("; wait;").unwrap() + at;
            let echo = s.find(&format!("echo \"T:{QD_KEY} $(cat /tmp/qd.$i)\"")).unwrap();
            assert!(start < at && at < wait && wait < echo && echo < done);
            assert!(s.contains(&format!("while [ $i -lt {QD} ]; do ioping -D -i 0 -q -B -s 4k -S 4m -c 301")));
        }
    }

    #[test]
    fn cpio_entries_are_newc() {
        let a = cpio(&[("lib/x.ko".into(), vec![1, 2, 3])]);
        assert!(a.starts_with(b"070701"));
        // The folder first: header (110), "lib" and NUL, padded to 4.
        assert_eq!(&a[110..114], b"lib\0");
        assert_eq!(&a[14..22], b"000041ed", "a folder, 0755");
        let f = 116;
        assert_eq!(&a[f + 110..f + 118], b"lib/x.ko");
        // Header (110) + name and NUL (9), padded to 4; data padded to 4.
        assert_eq!(&a[f + 120..f + 123], &[1, 2, 3]);
        assert_eq!(a.len() % 4, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
