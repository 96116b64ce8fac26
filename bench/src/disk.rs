//! `ferrovm bench --disk`: virtio-blk inside a Linux guest (Debian's
//! generic kernel with its virtio-blk module), under each engine and under
//! QEMU's virtio-blk on the same kind of raw image, with Debian's `ioping`
//! as the load generator (`ioping.cpio.gz` of `scripts/guest-images.sh`,
//! appended to the initramfs). One boot per engine and run does, on
//! `/dev/vda` with O_DIRECT and no pause between requests:
//!
//! - sequential write: 128 requests of 1 MiB;
//! - sequential read: the same 128 MiB back;
//! - 4 KiB random read: 4,000 requests over those 128 MiB (queue depth 1).
//!
//! The figures are ioping's own (`-B`: requests, guest time, IOPS and
//! bytes/s, its first request left out as a warm-up). The host also times
//! the three together between two lines the guest prints, and the table
//! gives ioping's total over that host time, which is near 1 when the
//! guest's clock keeps time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::work::{base64, time_work, DONE, START};

/// The guest's virtio modules, in insmod order.
const MODULES: &[&str] =
    &["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk"];
const IMAGE_MIB: u64 = 256;
const SEQ_MIB: u64 = 128;
const RANDOM_READS: u32 = 4000;

/// Load the modules and wait for the disk (the driver probes it
/// asynchronously), before the timed part.
fn insmods() -> String {
    let mut s: String = MODULES.iter().map(|m| format!("insmod /lib/modules/{m}.ko; ")).collect();
    s.push_str("i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 1; i=$((i+1)); done;");
    s
}

/// The workloads: name, the key of their line, and the ioping arguments
/// (each on /dev/vda, direct, with no interval, batch output). ioping
/// counts its warm-up request in `-c`: one more than measured.
fn workloads() -> [(&'static str, &'static str, String); 3] {
    let seq = format!("-L -s 1m -S {SEQ_MIB}m -c {}", SEQ_MIB + 1);
    [
        ("sequential write, MiB/s", "seqw", format!("-WWW {seq}")),
        ("sequential read, MiB/s", "seqr", seq),
        ("4 KiB random read, IOPS", "rand", format!("-s 4k -S {SEQ_MIB}m -c {}", RANDOM_READS + 1)),
    ]
}

/// The guest's script: the modules, then the three workloads between the
/// marks, each printing `T:<key> <ioping -B line>`.
fn script() -> String {
    let mut s = insmods();
    s.push_str(&format!(" echo {START};"));
    for (_, key, args) in workloads() {
        s.push_str(&format!(" echo \"T:{key} $(ioping -D -i 0 -q -B {args} /dev/vda 2>&1)\";"));
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
    let prefix = format!("T:{key} ");
    let line = out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))?;
    let f: Vec<f64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    (f.len() >= 10).then(|| Batch { requests: f[0] as u64, iops: f[2], bytes_per_sec: f[3], total_ns: f[9] })
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

/// initramfs.cpio.gz, ioping.cpio.gz and the virtio modules, in `dir`.
fn initrd(images: &Path, dir: &Path) -> Result<PathBuf, String> {
    let mut data = std::fs::read(images.join("initramfs.cpio.gz")).map_err(|e| format!("initramfs.cpio.gz: {e}"))?;
    data.extend(std::fs::read(images.join("ioping.cpio.gz")).map_err(|e| format!("ioping.cpio.gz: {e}"))?);
    let mut files = Vec::new();
    for m in MODULES {
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

fn command(engine: &str, q: Option<&Path>, kernel: &Path, initrd: &Path, disk: &Path, append: &str) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (k, i, d) = (kernel.display().to_string(), initrd.display().to_string(), disk.display().to_string());
    match (engine, q) {
        ("qemu", Some(q)) => {
            let mut v = vec![q.display().to_string()];
            v.extend(s(&["-accel", "tcg", "-cpu", "max", "-m", "512", "-nodefaults", "-display", "none"]));
            v.extend(s(&["-serial", "stdio", "-no-reboot", "-kernel", &k, "-initrd", &i, "-append", append]));
            v.extend(s(&["-drive", &format!("file={d},if=virtio,format=raw,cache=writeback")]));
            v
        }
        _ => {
            let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
            let mut v = vec![exe];
            v.extend(s(&["run", "--accel", engine, "--mem", "512M", "--serial", "stdio", "--kernel", &k]));
            v.extend(s(&["--initrd", &i, "--append", append, "--disk", &format!("{d},format=raw")]));
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
    let mut engines: Vec<&str> = vec!["interp", "jit"];
    if hvf_kvm_accel::open().is_ok() {
        engines.push("kvm");
    }
    if q.is_some() {
        engines.push("qemu");
    }
    println!(
        "ferrovm bench --disk: virtio-blk on a {IMAGE_MIB} MiB raw image inside Debian's generic kernel, ioping \
         with O_DIRECT at queue depth 1, median of {runs} run(s) (QEMU: TCG, virtio-blk, cache=writeback)\n"
    );
    if q.is_none() {
        println!("QEMU column skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n");
    }
    let limit = Duration::from_secs(args.boot_timeout);
    let append = format!("console=ttyS0 quiet ferrovm.poweroff=1 ferrovm.cmd={}", base64(script().as_bytes()));
    let mut status = 0;
    // Per engine: the median of each workload's figure, and of ioping's
    // time over the host's.
    let work = workloads();
    let mut table: Vec<Vec<Option<f64>>> = vec![Vec::new(); work.len()];
    let mut clock: Vec<Option<f64>> = Vec::new();
    for e in &engines {
        // One image per engine: the reads read what its write wrote.
        let disk = dir.join(format!("disk-{e}.img"));
        let made = std::fs::File::create(&disk).and_then(|f| f.set_len(IMAGE_MIB << 20));
        if let Err(err) = made {
            eprintln!("ferrovm bench --disk: {}: {err}", disk.display());
            return 1;
        }
        let cmd = command(e, q.as_deref(), &kernel, &initrd, &disk, &append);
        let mut figures: Vec<Vec<f64>> = vec![Vec::new(); work.len()];
        let mut ratios = Vec::new();
        for _ in 0..runs {
            let out = match time_work(&cmd, limit) {
                Ok(v) => v,
                Err(err) => {
                    eprintln!("ferrovm bench --disk: under {e}: {err}");
                    if *e != "qemu" {
                        status = 1;
                    }
                    break;
                }
            };
            let (host, text) = out;
            let mut guest_ns = 0.0;
            for (w, (name, key, _)) in work.iter().enumerate() {
                match parse_batch(&text, key) {
                    Some(b) if b.requests > 0 => {
                        figures[w].push(if w == 2 { b.iops } else { b.bytes_per_sec / f64::from(1 << 20) });
                        guest_ns += b.total_ns;
                    }
                    _ => {
                        let line = text.lines().find(|l| l.starts_with(&format!("T:{key}"))).unwrap_or("no line");
                        eprintln!("ferrovm bench --disk: {name} under {e}: ioping failed: {line}");
                        status = 1;
                    }
                }
            }
            ratios.push(guest_ns / 1e9 / host.as_secs_f64().max(1e-6));
        }
        for (w, f) in figures.into_iter().enumerate() {
            table[w].push((f.len() == runs).then(|| median(f)));
        }
        clock.push((ratios.len() == runs).then(|| median(ratios)));
    }
    print!("{:<26}", "workload");
    for e in &engines {
        print!(" {e:>10}");
    }
    println!(" {:>10} {:>11}", "jit/qemu", "interp/qemu");
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
        println!(" {:>10} {:>11}", ratio(of("jit"), of("qemu")), ratio(of("interp"), of("qemu")));
    }
    print!("{:<26}", "ioping time / host time");
    for v in &clock {
        match v {
            Some(x) => print!(" {x:>10.2}"),
            None => print!(" {:>10}", "-"),
        }
    }
    println!("\n\nratios of rates (above 1: ferrovm is faster)");
    let _ = std::fs::remove_dir_all(&dir);
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
    fn the_script_runs_each_workload_between_the_marks() {
        let s = script();
        let (start, done) = (s.find(START).unwrap(), s.find(DONE).unwrap());
        for (_, key, _) in workloads() {
            let at = s.find(&format!("T:{key} $(ioping -D -i 0 -q -B")).unwrap();
            assert!(start < at && at < done, "{key}");
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
