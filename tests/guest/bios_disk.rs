//! The test disk of scripts/guest-images.sh (`bios-disk.img`: MBR,
//! SYSLINUX on a FAT partition, Debian's generic kernel, an ext4
//! partition): what a boot of it must show, checked on the serial output
//! and, after it, on the image itself. Shared by tests/bios.rs and
//! tests/qemu_cli.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Debian's SeaBIOS, which boots the disk.
pub const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// Whether SeaBIOS is installed; says so when not.
pub fn seabios() -> bool {
    let ok = Path::new(SEABIOS).is_file();
    if !ok {
        eprintln!("skipping: {SEABIOS} is missing (Debian package seabios)");
    }
    ok
}

/// The test disk, when it and the tools that check it are there.
pub fn test_disk() -> Option<PathBuf> {
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/bios-disk.img");
    if !img.is_file() {
        eprintln!("skipping: guest-images/bios-disk.img is missing (run scripts/guest-images.sh)");
        return None;
    }
    for tool in ["debugfs", "e2fsck"] {
        if Command::new(tool).arg("-V").output().is_err() {
            eprintln!("skipping: {tool} is not installed (e2fsprogs)");
            return None;
        }
    }
    seabios().then_some(img)
}

/// Byte offset of partition `n` (1-4) from the MBR's table.
fn partition_offset(img: &[u8], n: usize) -> u64 {
    let e = 446 + 16 * (n - 1);
    u64::from(u32::from_le_bytes(img[e + 8..e + 12].try_into().unwrap())) * 512
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
}

/// Checks a boot of (a copy of) the test disk at `disk` that printed `out`
/// on COM1 and ended as `o`: SeaBIOS, SYSLINUX and the kernel ran, the
/// guest mounted the ext4 partition, wrote 4 MiB and powered off; the host
/// reads the file back with debugfs (no mount), compares the hash and runs
/// `e2fsck -fn`.
pub fn check(o: &Output, out: &str, disk: &Path) {
    let tail: String = out.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert_eq!(o.status.code(), Some(0), "status; stderr {}; serial tail:\n{tail}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("SeaBIOS (version"), "SeaBIOS's banner: {tail}");
    assert!(out.contains("ferrovm-syslinux: booting vmlinuz"), "SYSLINUX's SAY line on COM1: {tail}");
    assert!(out.contains("ferrovm-init: start"), "the kernel reached init: {tail}");
    assert_eq!(field(out, "T:hello "), Some("made by mke2fs -d"), "the ext4 partition mounted: {tail}");
    assert!(out.contains("T:unmounted"), "{tail}");
    let guest_sha = field(out, "T:sha ").expect("the guest's hash").trim().to_string();
    let img = std::fs::read(disk).unwrap();
    let part = format!("{}?offset={}", disk.display(), partition_offset(&img, 2));
    let cat = Command::new("debugfs").args(["-R", "cat /guest.bin", &part]).output().unwrap();
    assert_eq!(cat.stdout.len(), 4 << 20, "debugfs: {}", String::from_utf8_lossy(&cat.stderr));
    let host_sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&cat.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    let host_sha = String::from_utf8_lossy(&host_sha.stdout).split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(host_sha, guest_sha, "the file the guest wrote, read back by debugfs");
    let fsck = Command::new("e2fsck").args(["-fn", &part]).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}
