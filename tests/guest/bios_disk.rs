//! The test disk of scripts/guest-images.sh (`bios-disk.img`: MBR,
//! SYSLINUX on a FAT partition, Debian's generic kernel, an ext4
//! partition): what a boot of it must show, checked on the serial output
//! and, after it, on the image itself. Shared by tests/bios.rs and
//! tests/qemu_cli.rs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use iced_x86::code_asm::*;

/// Where [`printing_sector`] keeps its message, after its code.
pub const SECTOR_MSG_AT: usize = 0x180;

/// A 512-byte boot sector (loaded at 0000:7C00 in real mode) that sets its
/// stack below itself, enables interrupts, prints `msg` and a line end
/// through INT 10h AH=0Eh (teletype; SeaBIOS's serial console copies it
/// to COM1 from its timer interrupt), and then runs the code `then`
/// assembles, which must not return.
pub fn printing_sector(msg: &str, then: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    printing_sector_after(|_| Ok(()), msg, then)
}

/// A [`printing_sector`] that first runs the code `first` assembles (with
/// the registers and stack as the loader left them), which must fall
/// through; it may leave a result in DL, which the printing keeps.
pub fn printing_sector_after(
    first: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    msg: &str,
    then: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut print = a.create_label();
    let mut next = a.create_label();
    first(&mut a).unwrap();
    a.cli().unwrap();
    a.cld().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7c00u32).unwrap();
    a.sti().unwrap();
    a.mov(si, 0x7c00 + SECTOR_MSG_AT as u32).unwrap();
    a.jmp(next).unwrap();
    a.set_label(&mut print).unwrap();
    a.mov(ah, 0x0eu32).unwrap();
    a.mov(bx, 7u32).unwrap();
    a.int(0x10).unwrap();
    a.set_label(&mut next).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jnz(print).unwrap();
    // `then` may start with a label of its own: no label here.
    then(&mut a).unwrap();
    let mut code = a.assemble(0x7c00).unwrap();
    assert!(code.len() <= SECTOR_MSG_AT, "the boot sector's code fits before its message");
    code.resize(SECTOR_MSG_AT, 0);
    code.extend_from_slice(msg.as_bytes());
    code.extend_from_slice(b"\r\n\0");
    assert!(code.len() <= 510, "the message fits in the sector");
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code
}

/// A [`printing_sector`] tail: wait `ticks` timer interrupts (55 ms each)
/// with HLT, which lets SeaBIOS's serial console send what was printed.
pub fn wait_ticks(a: &mut CodeAssembler, ticks: u16) -> Result<(), IcedError> {
    let mut wait = a.create_label();
    a.mov(cx, u32::from(ticks))?;
    a.set_label(&mut wait)?;
    a.hlt()?;
    a.loop_(wait)
}

/// A [`printing_sector`] tail: halt for good, taking interrupts.
pub fn halt_forever(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut wait = a.create_label();
    a.set_label(&mut wait)?;
    a.hlt()?;
    a.jmp(wait)
}

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

/// Byte offset of partition `n` (1-4) from the MBR's table of the image
/// at `path`.
pub fn partition_offset(path: &Path, n: usize) -> u64 {
    use std::io::Read;
    let mut mbr = [0u8; 512];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut mbr)).unwrap();
    let e = 446 + 16 * (n - 1);
    u64::from(u32::from_le_bytes(mbr[e + 8..e + 12].try_into().unwrap())) * 512
}

pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
}

pub fn sh(script: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(script).output().expect("sh runs");
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sha256_file(path: &Path) -> String {
    sh(&format!("sha256sum '{}'", path.display())).split_whitespace().next().unwrap().to_string()
}

/// Make the guest on (a copy of) the test disk at `disk` write `mib` MiB
/// instead of 64: the count goes into the ext4 partition's `/mib.txt`.
pub fn set_mib(disk: &Path, mib: u32) {
    if mib == 64 {
        return;
    }
    let data_at = partition_offset(disk, 2);
    let count = disk.with_extension("mib");
    std::fs::write(&count, format!("{mib}\n")).unwrap();
    sh(&format!("debugfs -w -R 'write {} mib.txt' '{}?offset={data_at}'", count.display(), disk.display()));
    let _ = std::fs::remove_file(&count);
}

/// Whether `line` was printed into `out`, perhaps with other output mixed
/// into it: SYSLINUX writes its text to COM1 itself and through INT 10h,
/// which SeaBIOS's serial console copies to COM1 at times of its own (a
/// boot's log shows `Loading vmlinuz...Loading vmlinuz...  ook` and `k`
/// on the next line), so one copy can land in the middle of the other.
/// The characters of `line` in order, within a stretch of `out` three
/// times its length.
pub fn interleaved(out: &str, line: &str) -> bool {
    let out = out.as_bytes();
    let line = line.as_bytes();
    let Some(&first) = line.first() else { return true };
    (0..out.len()).filter(|&i| out[i] == first).any(|start| {
        let end = out.len().min(start + 3 * line.len());
        let mut want = line.iter().peekable();
        for c in &out[start..end] {
            if want.peek() == Some(&c) {
                want.next();
            }
        }
        want.peek().is_none()
    })
}

/// Checks a boot of the test disk that printed `out` on COM1 and ended as
/// `o`: SeaBIOS, SYSLINUX and the kernel ran, the guest mounted the ext4
/// partition, wrote `mib` MiB, unmounted and powered off. The guest's hash
/// of the file.
pub fn check_boot(o: &Output, out: &str, mib: u32) -> String {
    let tail: String = out.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert_eq!(o.status.code(), Some(0), "status; stderr {}; serial tail:\n{tail}", String::from_utf8_lossy(&o.stderr));
    // What SeaBIOS and SYSLINUX print comes before the kernel's lines.
    let head: String = out.lines().take(40).collect::<Vec<_>>().join("\n");
    assert!(out.contains("SeaBIOS (version"), "SeaBIOS's banner: {head}");
    assert!(interleaved(out, "ferrovm-syslinux: booting vmlinuz"), "SYSLINUX's SAY line on COM1: {head}");
    assert!(out.contains("ferrovm-init: start"), "the kernel reached init: {tail}");
    assert_eq!(field(out, "T:hello "), Some("made by mke2fs -d"), "the ext4 partition mounted: {tail}");
    assert_eq!(field(out, "T:mib "), Some(mib.to_string().as_str()), "the size the guest wrote: {tail}");
    assert!(out.contains("T:unmounted"), "{tail}");
    field(out, "T:sha ").expect("the guest's hash").trim().to_string()
}

/// The host reads the ext4 partition of the raw image at `raw` itself (no
/// mount): `/guest.bin` is `mib` MiB with the guest's hash `guest_sha`, and
/// `e2fsck -fn` is clean.
pub fn check_image(raw: &Path, mib: u32, guest_sha: &str) {
    let part = format!("{}?offset={}", raw.display(), partition_offset(raw, 2));
    let cat = Command::new("debugfs").args(["-R", "cat /guest.bin", &part]).output().unwrap();
    assert_eq!(cat.stdout.len(), (mib as usize) << 20, "debugfs: {}", String::from_utf8_lossy(&cat.stderr));
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

/// [`check_boot`] and [`check_image`] for a boot of the raw disk `disk`.
pub fn check(o: &Output, out: &str, disk: &Path, mib: u32) {
    let sha = check_boot(o, out, mib);
    check_image(disk, mib, &sha);
}

#[test]
fn a_line_with_other_output_mixed_in_is_found() {
    assert!(interleaved("..SAY l\x1b[0mi..ne\r\n", "SAY line"));
    assert!(interleaved("SAY line", "SAY line"));
    assert!(!interleaved("SAY lie", "SAY line"));
    assert!(!interleaved(&format!("SAY l{}ine", " ".repeat(40)), "SAY line"), "too far apart");
}
