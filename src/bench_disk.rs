//! `ferrovm bench --disk`: virtio-blk throughput inside a Linux guest
//! (Debian's generic kernel with its virtio-blk module), under each engine
//! and under QEMU's virtio-blk on the same kind of raw image, timed by the
//! host between two lines the guest prints around the work (boot time left
//! out).
//!
//! - sequential write: `dd` of 128 MiB in 1 MiB blocks, O_DIRECT, then fsync;
//! - sequential read: the same 128 MiB back, O_DIRECT;
//! - 4 KiB random reads: 256 `dd` processes each reading one 4 KiB block
//!   at a pseudo-random offset with O_DIRECT; the same loop reading
//!   /dev/zero is timed in another boot and subtracted, so the figure is
//!   the disk's (queue depth 1), not the cost of starting `dd`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bench_work::{base64, time_work, DONE, START};

/// The guest's virtio modules, in insmod order.
const MODULES: &[&str] =
    &["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk"];
const IMAGE_MIB: u64 = 256;
const SEQ_MIB: u64 = 128;
const RANDOM_READS: u32 = 256;

/// Load the modules and wait for the disk (the driver probes it
/// asynchronously), before the timed part.
fn insmods() -> String {
    let mut s: String = MODULES.iter().map(|m| format!("insmod /lib/modules/{m}.ko; ")).collect();
    s.push_str("i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 1; i=$((i+1)); done;");
    s
}

/// What a failed command prints inside the timed part.
const FAILED: &str = "ferrovm-bench: FAILED";

/// The workloads: name, script (between the marks), and how a duration
/// becomes the figure.
fn workloads() -> Vec<(&'static str, String)> {
    let rand = |src: &str, flag: &str| {
        format!(
            "i=0; while [ $i -lt {RANDOM_READS} ]; do dd if={src} of=/dev/null bs=4k count=1 skip=$(( (i * 7919) % {} )) {flag} 2>/dev/null || echo {FAILED}; i=$((i+1)); done",
            IMAGE_MIB * 256
        )
    };
    vec![
        (
            "sequential write, MiB/s",
            format!("dd if=/dev/zero of=/dev/vda bs=1M count={SEQ_MIB} oflag=direct conv=fsync 2>/dev/null || echo {FAILED}"),
        ),
        (
            "sequential read, MiB/s",
            format!("dd if=/dev/vda of=/dev/null bs=1M count={SEQ_MIB} iflag=direct 2>/dev/null || echo {FAILED}"),
        ),
        ("(dd start-up, reading /dev/zero)", rand("/dev/zero", "")),
        ("4 KiB random read, IOPS", rand("/dev/vda", "iflag=direct")),
    ]
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

/// initramfs.cpio.gz with the virtio modules appended, in `dir`.
fn initrd(images: &Path, dir: &Path) -> Result<PathBuf, String> {
    let mut data = std::fs::read(images.join("initramfs.cpio.gz")).map_err(|e| format!("initramfs.cpio.gz: {e}"))?;
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
pub fn run(args: &crate::cli::BenchArgs) -> i32 {
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
        "ferrovm bench --disk: virtio-blk on a {IMAGE_MIB} MiB raw image inside Debian's generic kernel, median of \
         {runs} run(s), timed between two lines the guest prints (QEMU: TCG, virtio-blk, cache=writeback)\n"
    );
    if q.is_none() {
        println!("QEMU column skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n");
    }
    print!("{:<26}", "workload");
    for e in &engines {
        print!(" {e:>10}");
    }
    println!(" {:>10} {:>11}", "jit/qemu", "interp/qemu");
    let limit = Duration::from_secs(args.boot_timeout);
    let mut status = 0;
    let work = workloads();
    let mut table: Vec<Vec<Option<f64>>> = vec![Vec::new(); work.len()];
    // Seconds of each workload, per engine (the medians).
    for e in &engines {
        // One image per engine: the reads read what its write wrote.
        let disk = dir.join(format!("disk-{e}.img"));
        let made = std::fs::File::create(&disk).and_then(|f| f.set_len(IMAGE_MIB << 20));
        if let Err(err) = made {
            eprintln!("ferrovm bench --disk: {}: {err}", disk.display());
            return 1;
        }
        for (w, (name, script)) in work.iter().enumerate() {
            let body = format!("{} echo {START}; {script}; echo {DONE}", insmods());
            let append = format!("console=ttyS0 quiet ferrovm.poweroff=1 ferrovm.cmd={}", base64(body.as_bytes()));
            let cmd = command(e, q.as_deref(), &kernel, &initrd, &disk, &append);
            let mut figures = Vec::new();
            for _ in 0..runs {
                match time_work(&cmd, limit) {
                    Ok((_, out)) if out.contains(FAILED) => {
                        eprintln!("ferrovm bench --disk: {name} under {e}: a dd in the guest failed");
                        status = 1;
                        break;
                    }
                    Ok((d, _)) => figures.push(Some(d.as_secs_f64())),
                    Err(err) => {
                        eprintln!("ferrovm bench --disk: {name} under {e}: {err}");
                        if *e != "qemu" {
                            status = 1;
                        }
                        break;
                    }
                }
            }
            let f: Vec<f64> = figures.into_iter().flatten().collect();
            table[w].push((f.len() == runs).then(|| median(f)));
        }
    }
    // Rates from the times: MiB/s, and reads per second over what the
    // start-up of `dd` alone took.
    let rates: Vec<Vec<Option<f64>>> = (0..work.len())
        .map(|w| {
            (0..engines.len())
                .map(|i| match w {
                    0 | 1 => table[w][i].map(|t| SEQ_MIB as f64 / t),
                    2 => table[w][i],
                    _ => match (table[w][i], table[2][i]) {
                        (Some(t), Some(c)) if t > c => Some(f64::from(RANDOM_READS) / (t - c)),
                        _ => None,
                    },
                })
                .collect()
        })
        .collect();
    for (w, (name, _)) in work.iter().enumerate() {
        if w == 2 {
            continue;
        }
        print!("{name:<26}");
        for v in &rates[w] {
            match v {
                Some(x) => print!(" {x:>10.1}"),
                None => print!(" {:>10}", "-"),
            }
        }
        let of = |e: &str| engines.iter().position(|x| *x == e).and_then(|i| rates[w][i]);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(" {:>10} {:>11}", ratio(of("jit"), of("qemu")), ratio(of("interp"), of("qemu")));
    }
    println!("\nratios of rates (above 1: ferrovm is faster)");
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
