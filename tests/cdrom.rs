//! Installer media: an El Torito CD built here (ISOLINUX, Debian's
//! generic kernel, the test initramfs with the IDE and CD-ROM modules, and
//! a data file) boots from `-cdrom` with `-boot d` through SeaBIOS. Linux
//! then drives the PIIX3 IDE controller (ata_piix), finds the ATAPI drive
//! (sr_mod), mounts the disc (isofs) and reads the data file, whose hash
//! must be the host's. Debian's GRUB rescue images (package
//! grub-rescue-pc) boot too: its hybrid ISO from `-cdrom`, its floppy
//! image from `-fda`. A broken ISO and bad drive options are refused by
//! name.
//!
//! `-boot`: with a disk and a CD whose boot records only print their name,
//! `once=d,order=c` boots the CD, and after a QMP `system_reset` the disk;
//! `menu=on,splash-time=` has SeaBIOS wait for ESC on the serial console,
//! and the menu it then shows boots the CD picked by its number.
//!
//! Building the ISO needs xorriso and ISOLINUX (Debian packages `xorriso`
//! and `isolinux`, with `syslinux-common`), which scripts/test.sh
//! installs; without them the tests say so and are skipped.

#[path = "guest/bios_disk.rs"]
mod bios_disk;
#[path = "guest/console.rs"]
mod console;
#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/qmp.rs"]
mod qmp;
#[path = "guest/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use bios_disk::{halt_forever, interleaved, printing_sector, seabios};
use console::Console;
use encode::base64;
use images::images;
use qmp::Qmp;
use run::{ferrovm, run_until, tmp};

const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// The generic kernel's modules for an ATAPI CD-ROM on the PIIX3, in
/// insmod order.
const MODULES: &[&str] = &["scsi_common", "scsi_mod", "libata", "ata_piix", "cdrom", "sr_mod", "isofs"];

/// What the guest runs: load the drivers, wait for /dev/sr0, mount the
/// disc and hash the data file. The kernel's own markers are matched case
/// for case: "MP-BIOS bug: 8254 timer not connected" is Linux falling back
/// to another timer route when its timer check (five ticks within 160 M TSC
/// cycles) lost the race on a host starved of CPU; the boot goes on.
const SCRIPT: &str = r#"
for m in scsi_common scsi_mod libata ata_piix cdrom sr_mod isofs; do
    insmod /lib/modules/$m.ko || echo "T:insmod $m failed"
done
i=0
while [ ! -b /dev/sr0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "T:model $(cat /sys/block/sr0/device/model 2>/dev/null)"
echo "T:vendor $(cat /sys/block/sr0/device/vendor 2>/dev/null)"
mkdir -p /mnt
mount -t iso9660 -o ro /dev/sr0 /mnt && echo "T:mounted"
echo "T:sha $(sha256sum /mnt/data/blob.bin | cut -d' ' -f1)"
echo "T:label $(cat /mnt/data/label.txt)"
echo "T:size $(cat /sys/block/sr0/size)"
dmesg | grep -iE 'ata[0-9]|scsi |sr0' | sed 's/^/T:dmesg /'
dmesg | grep -E 'Oops|BUG:|WARNING:|I/O error|exception Emask' | sed 's/^/T:bad /'
echo "T:done"
"#;

/// The tools an ISO is made with, or why the test is skipped.
fn tools() -> bool {
    if Command::new("xorriso").arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        eprintln!("skipping: xorriso is not installed (Debian package xorriso)");
        return false;
    }
    for f in [ISOLINUX_BIN, LDLINUX_C32] {
        if !Path::new(f).is_file() {
            eprintln!("skipping: {f} is missing (Debian packages isolinux and syslinux-common)");
            return false;
        }
    }
    seabios()
}

fn sh(script: &str) {
    let o = Command::new("sh").arg("-c").arg(script).output().expect("sh runs");
    assert!(
        o.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().expect("sha256sum runs");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Builds the bootable ISO in `dir`: ISOLINUX with the generic kernel,
/// the initramfs plus the CD-ROM modules, the script on the command line,
/// and a 3 MiB data file. Returns the ISO and the data file's hash.
fn build_iso(images: &Path, dir: &Path) -> (PathBuf, String) {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["isolinux", "data", "mods/lib/modules"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // The modules, decompressed, in a cpio archive appended to the initramfs.
    let initrd = root.join("isolinux/initrd.gz");
    images::initrd_with_modules(images, MODULES, &dir.join("mods"), &initrd);
    std::fs::copy(images.join("vmlinuz-generic"), root.join("isolinux/vmlinuz")).unwrap();
    std::fs::copy(ISOLINUX_BIN, root.join("isolinux/isolinux.bin")).unwrap();
    std::fs::copy(LDLINUX_C32, root.join("isolinux/ldlinux.c32")).unwrap();
    // Data that is not all one byte, for the hash.
    let blob: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(root.join("data/blob.bin"), &blob).unwrap();
    std::fs::write(root.join("data/label.txt"), "ferrovm-cdrom-test\n").unwrap();
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(SCRIPT.as_bytes()));
    std::fs::write(
        root.join("isolinux/isolinux.cfg"),
        format!(
            "SERIAL 0 115200\nSAY ferrovm-isolinux: booting vmlinuz from the CD\nDEFAULT linux\nTIMEOUT 1\n\
             PROMPT 0\nLABEL linux\n  KERNEL vmlinuz\n  INITRD initrd.gz\n  APPEND {cmdline}\n"
        ),
    )
    .unwrap();
    let iso = dir.join("boot.iso");
    let _ = std::fs::remove_file(&iso);
    sh(&format!(
        "xorriso -as mkisofs -quiet -o '{}' -V FERROVM_CD -b isolinux/isolinux.bin -c isolinux/boot.cat \
         -no-emul-boot -boot-load-size 4 -boot-info-table -R -J '{}'",
        iso.display(),
        root.display()
    ));
    (iso, sha256(&root.join("data/blob.bin")))
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(key)).map(str::trim)
}

fn boot(args: &[&str]) -> (Output, String, f64) {
    let t = Instant::now();
    let o = ferrovm(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o, out, t.elapsed().as_secs_f64())
}

/// Boots `iso` as QEMU's command line asks (`-cdrom ... -boot d`) under
/// `accel` and checks what the guest read.
fn boot_iso(accel: &str) {
    let Some(images) = images(&["vmlinuz-generic", "initramfs.cpio.gz", "modules-generic/modules.order"]) else {
        return;
    };
    if !tools() {
        return;
    }
    let dir = tmp("cdrom", accel);
    let (iso, want) = build_iso(&images, &dir);
    let iso_s = iso.display().to_string();
    let accel_opt = if accel == "kvm" { "kvm" } else { "tcg" };
    let (o, out, secs) = boot(&[
        "qemu",
        "-accel",
        accel_opt,
        "-m",
        "512",
        "-nodefaults",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-cdrom",
        &iso_s,
        "-boot",
        "d",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("CD-ROM boot under {accel}: {secs:.1} s");
    let tail: String = out.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let ctx = format!("stderr:\n{err}\nserial tail:\n{tail}");
    assert!(out.contains("SeaBIOS (version"), "SeaBIOS ran: {ctx}");
    assert!(out.contains("Booting from DVD/CD"), "SeaBIOS booted the CD: {ctx}");
    // SeaBIOS's serial console copies ISOLINUX's screen writes to COM1 too,
    // and may flush one of them between a character and its cursor move.
    assert!(interleaved(&out, "ferrovm-isolinux: booting vmlinuz from the CD"), "ISOLINUX ran from the CD: {ctx}");
    assert!(out.contains("ferrovm-init: start"), "the kernel reached init: {ctx}");
    assert!(out.contains("T:done"), "the script ran to its end: {ctx}");
    let bad: Vec<&str> = out.lines().filter(|l| l.starts_with("T:insmod") || l.starts_with("T:bad")).collect();
    assert!(bad.is_empty(), "{bad:?}: {ctx}");
    assert!(out.contains("T:mounted"), "the disc mounted: {ctx}");
    assert_eq!(field(&out, "T:sha "), Some(want.as_str()), "the data file read back: {ctx}");
    assert_eq!(field(&out, "T:label "), Some("ferrovm-cdrom-test"), "{ctx}");
    let iso_sectors = std::fs::metadata(&iso).unwrap().len() / 512;
    assert_eq!(field(&out, "T:size ").and_then(|s| s.parse::<u64>().ok()), Some(iso_sectors), "the disc's size: {ctx}");
    assert!(out.lines().any(|l| l.starts_with("T:dmesg") && l.contains("ATAPI")), "libata found an ATAPI drive: {ctx}");
    // Every packet command Linux sent (sr_mod's probe, the mount) is answered.
    assert!(!err.contains("IDE CD-ROM: packet command"), "a packet command is not implemented: {ctx}");
    assert_eq!(o.status.code(), Some(0), "{ctx}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_el_torito_cd_boots_and_linux_reads_it_under_the_jit() {
    boot_iso("jit");
}

/// Debian's GRUB rescue images, when grub-rescue-pc is installed.
fn grub_rescue(file: &str) -> Option<String> {
    let p = Path::new("/usr/lib/grub-rescue").join(file);
    if !p.is_file() {
        eprintln!("skipping: {} is missing (Debian package grub-rescue-pc)", p.display());
        return None;
    }
    seabios().then(|| p.display().to_string())
}

/// Boots a GRUB rescue image from the QEMU line `drive` with `-boot
/// boot` under the JIT until GRUB shows its menu, which SeaBIOS copies
/// from the screen to COM1; the run is then stopped.
fn boot_grub(drive: &[&str], boot: &str, booting: &str) {
    let mut args = vec!["qemu", "-m", "256", "-nodefaults", "-nographic", "-serial", "stdio"];
    args.extend_from_slice(drive);
    args.extend(["-boot", boot]);
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrovm runs");
    let (out, _) = run_until(o, |out| interleaved(out, "Memtest86+"), 120);
    eprintln!("{booting}: GRUB's menu after {:.1} s", t.elapsed().as_secs_f64());
    assert!(out.contains(booting), "SeaBIOS booted the drive:\n{out}");
    // GRUB writes a character, then moves the cursor: SeaBIOS's serial
    // console may copy the two with a cursor escape between them.
    assert!(interleaved(&out, "Memtest86+"), "GRUB's menu reached COM1:\n{out}");
}

/// Debian's hybrid GRUB rescue ISO (grub-mkrescue's El Torito image)
/// from `-cdrom`.
#[test]
fn debians_grub_rescue_iso_boots_from_the_cdrom() {
    let Some(iso) = grub_rescue("grub-rescue-cdrom.iso") else { return };
    boot_grub(&["-cdrom", &iso], "d", "Booting from DVD/CD");
}

/// Debian's GRUB rescue floppy image from `-fda` (1,296,384 bytes: a
/// 1.44 MB disk whose tail reads as zeroes): SeaBIOS's floppy driver
/// through the 82077AA and the 8237's channel 2.
#[test]
fn debians_grub_rescue_floppy_boots_from_fda() {
    let Some(img) = grub_rescue("grub-rescue-floppy.img") else { return };
    boot_grub(&["-drive", &format!("file={img},if=floppy,format=raw,readonly=on")], "a", "Booting from Floppy");
}

/// Not an ISO, and drives placed twice: named errors before the guest
/// starts.
#[test]
fn bad_media_and_drive_options_are_refused() {
    let dir = tmp("cdrom", "bad");
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.iso");
    std::fs::write(&junk, vec![0x5au8; 64 * 1024]).unwrap();
    let missing = dir.join("missing.iso");
    let junk_s = junk.display().to_string();
    let missing_s = missing.display().to_string();
    let o = ferrovm(&["run", "--cdrom", &missing_s, "--timeout", "5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("missing.iso"), "the missing image is named: {err}");
    let other = dir.join("other.img");
    std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
    let clash = format!("{},format=raw,if=ide,index=2", other.display());
    let o = ferrovm(&["run", "--cdrom", &junk_s, "--disk", &clash, "--timeout", "5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("position 2 is given twice"), "{err}");
    // Network boot needs a NIC to boot from.
    let o = ferrovm(&["run", "--boot", "n", "--cdrom", &junk_s]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--nic"), "{}", String::from_utf8_lossy(&o.stderr));
    // A disc that is no ISO: SeaBIOS finds no boot record on it and says so;
    // the machine keeps running until the timeout.
    if seabios() {
        let (o, out, _) =
            boot(&["run", "--cdrom", &junk_s, "--boot", "d", "--serial", "stdio", "--timeout", "8", "--mem", "128M"]);
        assert_eq!(o.status.code(), Some(124), "only the timeout ends the run: {out}");
        assert!(out.contains("Booting from DVD/CD"), "{out}");
        assert!(out.contains("Boot failed"), "SeaBIOS names the failed CD boot: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bootable disk and a bootable CD whose boot records only print which
/// they are: `(disk, iso)`.
fn disk_and_cd(dir: &Path) -> (PathBuf, PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let disk = dir.join("disk.img");
    let mut img = printing_sector("ferrovm-boot: the hard disk", halt_forever);
    img.resize(1 << 20, 0);
    std::fs::write(&disk, img).unwrap();
    let mut boot = printing_sector("ferrovm-boot: the CD", halt_forever);
    boot.resize(2048, 0);
    std::fs::write(dir.join("root/boot.bin"), boot).unwrap();
    let iso = dir.join("cd.iso");
    sh(&format!(
        "xorriso -as mkisofs -quiet -o '{}' -V FERROVM_BOOT -b boot.bin -no-emul-boot -boot-load-size 4 '{}'",
        iso.display(),
        dir.join("root").display()
    ));
    (disk, iso)
}

/// `ferrovm qemu ARGS`, its serial console on standard input and output.
fn qemu_console(args: &[String]) -> Console {
    let mut a = vec!["qemu"];
    a.extend(args.iter().map(String::as_str));
    Console::start(&a)
}

/// Sends `system_reset` through the QMP socket at `sock`.
fn qmp_system_reset(sock: &Path) {
    let mut q = Qmp::connect(sock);
    assert_eq!(q.cmd(r#"{"execute":"system_reset"}"#), r#"{"return":{}}"#);
}

/// `ferrovm qemu` arguments for the printing disk (IDE, first) and CD of
/// [`disk_and_cd`], in TCG with COM1 on standard input and output, and
/// then `boot` as the `-boot` option.
fn disk_and_cd_args(disk: &Path, iso: &Path, boot: &str) -> Vec<String> {
    let hda = format!("file={},format=raw,if=ide,index=0", disk.display());
    let fixed = ["-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none", "-serial", "stdio", "-drive"];
    let mut args: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    args.extend([hda, "-cdrom".into(), iso.display().to_string(), "-boot".into(), boot.into()]);
    args
}

/// `-boot once=d,order=c`: the CD boots first although the disk comes
/// first in `order=`; after a `system_reset` (QMP) the disk boots, and
/// again after a second one.
#[test]
fn boot_once_boots_the_cd_then_the_disk_after_a_reset() {
    if !tools() {
        return;
    }
    let t = Instant::now();
    let dir = tmp("cdrom", "once");
    let (disk, iso) = disk_and_cd(&dir);
    let sock = dir.join("qmp.sock");
    let mut args = disk_and_cd_args(&disk, &iso, "once=d,order=c");
    args.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", sock.display())]);
    let mut c = qemu_console(&args);
    let out = c.wait_for("ferrovm-boot: the CD", 1, 60);
    assert!(out.contains("Booting from DVD/CD"), "{out}");
    assert!(!out.contains("ferrovm-boot: the hard disk"), "the disk booted first:\n{out}");
    assert!(!out.contains("Press ESC for boot menu"), "no boot menu without menu=on:\n{out}");
    qmp_system_reset(&sock);
    let out = c.wait_for("ferrovm-boot: the hard disk", 1, 60);
    assert_eq!(out.matches("SeaBIOS (version").count(), 2, "{out}");
    assert!(out.contains("Booting from Hard Disk"), "{out}");
    qmp_system_reset(&sock);
    let out = c.wait_for("ferrovm-boot: the hard disk", 2, 60);
    assert_eq!(out.matches("ferrovm-boot: the CD").count(), 1, "once= is for the first boot only:\n{out}");
    c.stop();
    eprintln!("-boot once=d,order=c and two resets: {:.1} s", t.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-boot menu=on,splash-time=`: SeaBIOS offers its boot menu on the
/// serial console and waits; ESC opens it, and the CD's number boots the
/// CD although `order=c` puts the disk first. Without a key the menu's
/// wait ends and the disk boots.
#[test]
fn the_boot_menu_is_offered_and_boots_the_device_picked() {
    if !tools() {
        return;
    }
    let dir = tmp("cdrom", "menu");
    let (disk, iso) = disk_and_cd(&dir);
    let args = |wait: &str| disk_and_cd_args(&disk, &iso, &format!("order=c,menu=on,splash-time={wait}"));
    // No key: the disk boots after the wait.
    let a = args("1500");
    let mut c = qemu_console(&a);
    c.wait_for("Press ESC for boot menu.", 1, 60);
    let shown = Instant::now();
    let out = c.wait_for("ferrovm-boot: the hard disk", 1, 60);
    let waited = shown.elapsed().as_secs_f64();
    assert!(waited >= 1.2, "SeaBIOS waited {waited:.2} s for ESC, not splash-time=1500:\n{out}");
    assert!(!out.contains("ferrovm-boot: the CD"), "{out}");
    c.stop();
    // ESC, then the CD's entry.
    let a = args("20000");
    let mut c = qemu_console(&a);
    c.wait_for("Press ESC for boot menu.", 1, 60);
    c.type_keys(b"\x1b");
    let out = c.wait_for("Select boot device:", 1, 30);
    // The entries are listed once SeaBIOS has printed them all.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = c.text().split_off(out.find("Select boot device:").unwrap());
    let entry = out
        .lines()
        .find(|l| l.contains("DVD/CD"))
        .and_then(|l| l.trim().split_once('.'))
        .map(|(n, _)| n.trim().to_string())
        .unwrap_or_else(|| panic!("no DVD/CD entry in the menu:\n{out}"));
    assert!(out.lines().any(|l| l.contains("ata0-0")), "the disk is listed too:\n{out}");
    c.type_keys(entry.as_bytes());
    let out = c.wait_for("ferrovm-boot: the CD", 1, 60);
    assert!(!out.contains("ferrovm-boot: the hard disk"), "{out}");
    c.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
