//! The persistent translation cache (`--jit-cache DIR`): Debian's generic
//! kernel boots under the JIT three times on one folder. The first run
//! compiles and stores its regions; the second takes them from the folder
//! and computes the same results; the third finds every entry damaged,
//! refuses each one, compiles afresh and still computes the same results.
//! The images come from `scripts/guest-images.sh`; without them the test
//! says so and passes.

use std::path::Path;

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/run.rs"]
mod run;

/// What the guest computes: enough code (the kernel's boot, busybox's
/// applets, compression) that most of it runs compiled.
const SCRIPT: &str = r#"
echo "T:seq $(seq 1 20000 | sha256sum | cut -d' ' -f1)"
echo "T:gzip $(seq 1 20000 | gzip -c | gzip -dc | md5sum | cut -d' ' -f1)"
"#;

/// One boot with the cache in `dir`: the guest's `T:` lines, and the
/// counts of the `--stats` line of the translation cache (loaded, stored,
/// refused).
fn boot(images: &Path, dir: &Path) -> (Vec<String>, [u64; 3]) {
    let cmdline = format!("console=ttyS0 quiet ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(SCRIPT.as_bytes()));
    let kernel = images.join("vmlinuz-generic");
    let initrd = images.join("initramfs.cpio.gz");
    let out = run::ferrovm(&[
        "run",
        "--accel",
        "jit",
        "--mem",
        "256M",
        "--timeout",
        "600",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        &cmdline,
        "--stats",
        "--jit-cache",
        dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferrovm failed: {stderr}\n{stdout}");
    let marks: Vec<String> = stdout.lines().filter(|l| l.starts_with("T:")).map(|l| l.trim().to_string()).collect();
    let line = stderr
        .lines()
        .find(|l| l.contains("jit: translation cache"))
        .unwrap_or_else(|| panic!("no translation cache line in --stats: {stderr}"));
    let count = |what: &str| -> u64 {
        let at = line.find(what).unwrap_or_else(|| panic!("no `{what}` in {line}"));
        line[..at].split_whitespace().last().and_then(|n| n.parse().ok()).unwrap()
    };
    eprintln!("{line}");
    (marks, [count(" regions loaded"), count(" compiled and stored"), count(" entries refused")])
}

#[test]
fn a_second_boot_takes_its_compiled_code_from_the_cache_and_a_damaged_cache_is_refused() {
    let Some(images) = images::images(&["vmlinuz-generic", "initramfs.cpio.gz"]) else { return };
    let dir = run::tmp("jit-cache", "regions");
    let _ = std::fs::remove_dir_all(&dir);

    let (first, [loaded, stored, refused]) = boot(&images, &dir);
    assert_eq!(first.len(), 2, "the guest's results: {first:?}");
    assert_eq!((loaded, refused), (0, 0));
    assert!(stored > 100, "{stored} regions stored");

    let (second, [loaded, stored2, refused]) = boot(&images, &dir);
    assert_eq!(second, first, "the same results from code taken from the cache");
    assert_eq!(refused, 0);
    // A boot runs much the same code: most regions come back.
    assert!(loaded > stored / 2, "{loaded} regions loaded of {stored} stored (then {stored2} more)");

    // Damage every entry: one byte of each file flipped.
    let mut damaged = 0;
    for sub in std::fs::read_dir(&dir).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged >= stored);
    let (third, [loaded, _, refused]) = boot(&images, &dir);
    assert_eq!(third, first, "the same results with every entry refused");
    assert_eq!(loaded, 0, "no damaged entry is taken");
    assert!(refused > 100, "{refused} entries refused");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}
