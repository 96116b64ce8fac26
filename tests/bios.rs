//! Booting disks through SeaBIOS (Debian's bios-256k.bin): `--disk` with
//! no `--kernel`.
//!
//! - A one-sector boot loader (assembled here) on a raw disk: SeaBIOS
//!   loads it through its virtio-blk driver (in the interpreter also its
//!   ATA driver, from an IDE disk) and INT 13h; it prints through
//!   INT 10h (SeaBIOS's serial console copies it to COM1), checks that the
//!   ACPI RSDP the table loader placed is in the F segment and that the
//!   BIOS at 0xFFFF0 is write-protected (the PAM registers as SeaBIOS left
//!   them; under KVM a read-only memory slot), and ends the run through the
//!   debug-exit port. Interpreter, JIT and KVM: seconds
//!   each.
//! - The test disk of scripts/guest-images.sh (`bios-disk.img`): MBR,
//!   SYSLINUX on a FAT partition, Debian's generic kernel; the guest mounts
//!   the ext4 partition, writes a file (64 MiB, or the count the test puts
//!   in the partition's `/mib.txt`), prints its hash, unmounts and powers
//!   off. The host reads the file back with debugfs (no mount), compares
//!   the hash and runs `e2fsck -fn`; through a qcow2 overlay made by
//!   `qemu-img create -b` it also checks the overlay (`qemu-img check`),
//!   reads the file from `qemu-img convert` of it, and checks the base byte
//!   for byte. 64 MiB raw and through an overlay under the JIT; in the
//!   interpreter outside CI (`-- --ignored`): 8 MiB through an overlay
//!   (about three minutes: SeaBIOS, SYSLINUX and the kernel's own xz
//!   decompressor run in the guest) and 64 MiB (about five minutes a run);
//!   under KVM, the disk on IDE through an overlay (16 MiB; the virtio-blk
//!   run is outside CI): where KVM runs ring 0 in software (kvm_pvm),
//!   split execution, which must find the kernel's code in the guest
//!   (`--stats`; about half a minute a run on a 2-core host).
//! - Network boot (`--boot n`): SeaBIOS runs the NIC's iPXE ROM (Debian's
//!   ipxe-qemu) from its ROM BAR; iPXE takes IPv4 (DHCP) and IPv6 (the
//!   router advertisement) addresses from the NAT, fetches a boot program
//!   assembled here over TFTP (`bootfile=`) and starts it, which checks
//!   the PXENV+ and !PXE structures it is handed and reports through the
//!   debug-exit port. e1000 and virtio-net under the JIT; virtio-net in
//!   the interpreter; the e1000 under KVM. Then Linux the way installers
//!   boot it: iPXE loads PXELINUX, which loads Debian's kernel and the
//!   test initramfs over TFTP through iPXE's PXE API.
//! - Debian's iPXE (`ipxe.lkrn`, its own NIC drivers) booted as QEMU's
//!   `-kernel`, ten times on each NIC: every run configures IPv4 and IPv6
//!   from the NAT.
//! - A multiboot kernel (assembled here, `tests/guest/multiboot.rs`) with a
//!   module, booted through SeaBIOS and QEMU's multiboot option ROM
//!   (`--kernel-boot bios`) in the interpreter, under the JIT and KVM, and
//!   through QEMU's command line in ferrovm and in QEMU itself when it is
//!   installed: EAX, the information structure's flags, `mem_lower` and
//!   `mem_upper`, the memory map the BIOS gave, the command line, the
//!   module's bytes and command line, the BIOS's INT 08h vector, and its
//!   timer handler moving the BDA's tick count once the kernel goes back to
//!   real mode.

#[path = "guest/bios_disk.rs"]
mod bios_disk;
#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/kvm.rs"]
mod kvm;
#[path = "guest/multiboot.rs"]
mod multiboot;
#[path = "guest/run.rs"]
mod run;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use iced_x86::code_asm::*;

use bios_disk::{
    check_boot, check_image, halt_forever, printing_sector, printing_sector_after, seabios, set_mib, sh, sha256_file,
    test_disk, wait_ticks,
};

/// The value the boot sector writes to the debug-exit port when every
/// check passed; ferrovm exits with `(v << 1) | 1`.
const MBR_OK: u8 = 0x10;
const MBR_BIOS_WRITABLE: u8 = 0x11;
const MBR_NO_RSDP: u8 = 0x12;

/// A 512-byte MBR boot sector: it prints a line, lets SeaBIOS's serial
/// console send it, then checks the BIOS's tables and shadow RAM and
/// reports through port 0xF4 (`MBR_*`).
fn boot_sector() -> Vec<u8> {
    printing_sector("ferrovm-mbr: booted by the BIOS", |a| {
        let mut scan = a.create_label();
        let mut next = a.create_label();
        let mut found = a.create_label();
        let mut exit = a.create_label();
        wait_ticks(a, 4)?;
        // "RSD PTR " on a 16-byte boundary of F000:0000-FFFF.
        a.mov(ax, 0xf000u32)?;
        a.mov(es, ax)?;
        a.xor(di, di)?;
        a.set_label(&mut scan)?;
        a.cmp(dword_ptr(di).es(), u32::from_le_bytes(*b"RSD "))?;
        a.jne(next)?;
        a.cmp(dword_ptr(di + 4).es(), u32::from_le_bytes(*b"PTR "))?;
        a.je(found)?;
        a.set_label(&mut next)?;
        a.add(di, 16u32)?;
        a.jnz(scan)?;
        a.mov(al, MBR_NO_RSDP as u32)?;
        a.jmp(exit)?;
        a.set_label(&mut found)?;
        // The BIOS segment is read-only shadow RAM: a write there is dropped.
        a.mov(al, byte_ptr(0xfff0).es())?;
        a.mov(bl, al)?;
        a.not(al)?;
        a.mov(byte_ptr(0xfff0).es(), al)?;
        a.mov(al, byte_ptr(0xfff0).es())?;
        a.cmp(al, bl)?;
        a.mov(al, MBR_BIOS_WRITABLE as u32)?;
        a.jne(exit)?;
        a.mov(al, MBR_OK as u32)?;
        a.set_label(&mut exit)?;
        a.out(0xf4, al)?;
        a.hlt()
    })
}

/// Boot the raw `disk` through SeaBIOS under `accel` (with the options
/// `extra`): the process's output, what the guest printed on COM1, and the
/// seconds it took.
fn boot_disk(
    accel: &str,
    disk: &Path,
    format: &str,
    mem: &str,
    timeout: &str,
    extra: &[&str],
) -> (std::process::Output, String, f64) {
    let serial = disk.with_extension("log");
    let t = Instant::now();
    let disk_arg = format!("{},format={format}", disk.display());
    let serial_arg = format!("file:{}", serial.display());
    let mut args =
        vec!["run", "--accel", accel, "--mem", mem, "--disk", &disk_arg, "--serial", &serial_arg, "--timeout", timeout];
    args.extend_from_slice(extra);
    let o = run::ferrovm(&args);
    let secs = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    (o, out, secs)
}

/// Boot a one-sector disk on `bus` (`virtio` or `ide`) under `accel`; the
/// serial output and the status.
fn boot_mbr_on(accel: &str, bus: &str) -> (String, i32) {
    boot_mbr_with(accel, bus, &[])
}

/// [`boot_mbr_on`] with `args` added to ferrovm's.
fn boot_mbr_with(accel: &str, bus: &str, args: &[&str]) -> (String, i32) {
    let tag: String = args.concat().chars().filter(char::is_ascii_alphanumeric).collect();
    let disk = run::tmp("bios", &format!("mbr-{accel}-{bus}{tag}.img"));
    let mut img = boot_sector();
    img.resize(1 << 20, 0);
    std::fs::write(&disk, &img).unwrap();
    // Under KVM the whole guest in KVM, even where split execution would
    // run it all in the JIT (no user code): the BIOS shadow's protection
    // is then KVM's read-only memory slots.
    let mut extra: Vec<&str> = if accel == "kvm" { vec!["--kvm-split", "off"] } else { vec![] };
    extra.extend_from_slice(args);
    let (o, out, secs) = boot_disk(accel, &disk, &format!("raw,if={bus}"), "128M", "60", &extra);
    eprintln!("boot sector on {bus} under {accel}: {secs:.1} s");
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    (out, o.status.code().unwrap_or(-1))
}

fn check_mbr(accel: &str) {
    check_mbr_on(accel, "virtio");
}

fn check_mbr_on(accel: &str, bus: &str) {
    let (out, status) = boot_mbr_on(accel, bus);
    let code = |v: u8| (i32::from(v) << 1) | 1;
    assert!(out.contains("SeaBIOS (version"), "SeaBIOS's banner on COM1: {out}");
    assert!(out.contains("ferrovm-mbr: booted by the BIOS"), "INT 10h text on COM1: {out}");
    assert_ne!(status, code(MBR_BIOS_WRITABLE), "a write to F000:FFF0 went through: the PAM protection failed");
    assert_ne!(status, code(MBR_NO_RSDP), "no RSDP in the F segment: the table loader did not run");
    assert_eq!(status, code(MBR_OK), "exit status; serial: {out}");
}

#[test]
fn a_boot_sector_boots_through_seabios_in_the_interpreter() {
    if seabios() {
        check_mbr("interp");
    }
}

/// SeaBIOS's ATA driver in the interpreter: the sector comes from an IDE
/// disk (the whole test disk from IDE takes minutes there; see
/// [`the_test_disk_boots_from_ide_in_the_interpreter`]).
#[test]
fn a_boot_sector_boots_from_ide_through_seabios_in_the_interpreter() {
    if seabios() {
        check_mbr_on("interp", "ide");
    }
}

/// A PC without ACPI (QEMU's `-no-acpi`): SeaBIOS gets no tables to
/// load, so the boot sector finds no RSDP, and the rest is as before.
#[test]
fn without_acpi_the_bios_places_no_rsdp() {
    if !seabios() {
        return;
    }
    let (out, status) = boot_mbr_with("jit", "virtio", &["--no-acpi"]);
    assert!(out.contains("ferrovm-mbr: booted by the BIOS"), "INT 10h text on COM1: {out}");
    assert_eq!(status, (i32::from(MBR_NO_RSDP) << 1) | 1, "the boot sector found an RSDP; serial: {out}");
}

#[test]
fn a_boot_sector_boots_through_seabios_under_the_jit() {
    if seabios() {
        check_mbr("jit");
    }
}

#[test]
fn a_boot_sector_boots_through_seabios_under_kvm() {
    if seabios() && kvm::usable() {
        check_mbr("kvm");
    }
}

/// A boot sector that prints a line, lets SeaBIOS's serial console send
/// it, and resets the machine through port 0xCF9: every reset must bring
/// the BIOS back from ROM (the PAM registers go back to 0) and boot again.
fn rebooting_sector() -> Vec<u8> {
    printing_sector("ferrovm-mbr: again", |a| {
        wait_ticks(a, 4)?;
        a.mov(dx, 0xcf9u32)?;
        a.mov(al, 6u32)?;
        a.out(dx, al)?;
        a.hlt()
    })
}

#[test]
fn a_reset_boots_the_bios_again() {
    if !seabios() {
        return;
    }
    let disk = run::tmp("bios", "reboot.img");
    let mut img = rebooting_sector();
    img.resize(1 << 20, 0);
    std::fs::write(&disk, &img).unwrap();
    let serial = run::tmp("bios", "reboot.log");
    let o = run::ferrovm(&[
        "run",
        "--accel",
        "interp",
        "--mem",
        "64M",
        "--disk",
        &format!("{},format=raw", disk.display()),
        "--serial",
        &format!("file:{}", serial.display()),
        "--timeout",
        "4",
    ]);
    assert_eq!(o.status.code(), Some(124), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&std::fs::read(&serial).unwrap()).into_owned();
    // About 0.4 s a boot here.
    let boots = out.matches("ferrovm-mbr: again").count();
    assert!(boots >= 3, "{boots} boots in 4 s: {out}");
    assert!(out.matches("SeaBIOS (version").count() >= boots);
}

#[test]
fn a_missing_or_bad_bios_is_named() {
    let disk = run::tmp("bios", "tiny.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let bad = run::tmp("bios", "bad.bin");
    std::fs::write(&bad, vec![0u8; 1000]).unwrap();
    let d = format!("{},format=raw", disk.display());
    let o = run::ferrovm(&["run", "--accel", "interp", "--disk", &d, "--bios", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("1000 bytes") && err.contains("multiple of 64 KiB"), "{err}");
    std::fs::write(&bad, vec![0u8; 0x1_0000]).unwrap();
    let o = run::ferrovm(&["run", "--accel", "interp", "--disk", &d, "--bios", bad.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("reset vector"));
    if seabios() {
        let o = run::ferrovm(&["run", "--accel", "interp", "--disk", &d, "--mem", "4M"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && err.contains("at least 16 MiB") && err.contains("--mem"), "{err}");
    }
}

// ---- the test disk: SYSLINUX, Debian's kernel, ext4 ----------------------------

/// How the guest's disk is given to ferrovm.
#[derive(Clone, Copy, PartialEq)]
enum Image {
    /// A copy of the test disk, raw.
    Raw,
    /// A qcow2 overlay made by `qemu-img create -b` over a copy of the
    /// test disk.
    Overlay,
}

/// Boot the test disk under `accel`; the guest writes `mib` MiB to the ext4
/// partition (64 unless a smaller count is put in its `/mib.txt` with
/// debugfs here), hashes, syncs, unmounts and powers off. The host reads
/// the file back with debugfs (no mount), compares the hash and runs
/// `e2fsck -fn`; through an overlay it first checks it (`qemu-img check`),
/// converts it to raw (`qemu-img convert`) and checks that the base is
/// unchanged, byte for byte.
fn boot_test_disk(accel: &str, image: Image, mib: u32) {
    boot_test_disk_on(accel, image, mib, false);
}

/// [`boot_test_disk`] with the disk on the PIIX3 IDE controller (`ide`)
/// instead of virtio-blk: SeaBIOS boots it as an ATA disk and Linux drives
/// it with ata_piix and sd_mod (/dev/sda).
fn boot_test_disk_on(accel: &str, image: Image, mib: u32, ide: bool) {
    let Some(src) = test_disk() else { return };
    if image == Image::Overlay && Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("skipping: qemu-img is not installed (qemu-utils)");
        return;
    }
    let kind = if image == Image::Raw { "raw" } else { "qcow2" };
    let bus = if ide { "ide" } else { "virtio" };
    let base = run::tmp("bios", &format!("disk-{accel}-{kind}-{bus}-{mib}.img"));
    std::fs::copy(&src, &base).unwrap();
    set_mib(&base, mib);
    let (disk, format) = match image {
        Image::Raw => (base.clone(), "raw"),
        Image::Overlay => {
            let overlay = base.with_extension("qcow2");
            let _ = std::fs::remove_file(&overlay);
            sh(&format!("qemu-img create -q -f qcow2 -b '{}' -F raw '{}'", base.display(), overlay.display()));
            (overlay, "qcow2")
        }
    };
    let base_hash = (image == Image::Overlay).then(|| sha256_file(&base));
    let format = if ide { format!("{format},if=ide") } else { format.to_string() };
    let serial = "ds=nocloud;s=http://10.0.2.2:8000/";
    let smbios = format!("type=1,serial={serial}");
    let (o, out, secs) = boot_disk(accel, &disk, &format, "512M", "900", &["--stats", "--smbios", &smbios]);
    eprintln!("test disk ({kind} on {bus}, {mib} MiB written) under {accel}: {secs:.1} s to power-off");
    let guest_sha = check_boot(&o, &out, mib);
    let partition = if ide { "/dev/sda2" } else { "/dev/vda2" };
    assert!(out.contains(&format!("T:partition {partition}")), "the ext4 partition is {partition}:\n{out}");
    // ferrovm's SMBIOS tables, placed by SeaBIOS with its own BIOS entry.
    assert!(out.contains(&format!("T:dmi ferrovm|{serial}|SeaBIOS")), "the guest reads the SMBIOS tables:\n{out}");
    if ide {
        let stats = String::from_utf8_lossy(&o.stderr);
        assert!(stats.contains("PIIX3 IDE"), "--stats has the IDE controller's line:\n{stats}");
    }
    let stats = String::from_utf8_lossy(&o.stderr);
    if accel == "kvm" && kvm::emulates_ring0() {
        kvm::check_kernel_code_found(&stats);
    }
    // The image the host reads: the raw disk, or the overlay converted.
    let raw = match image {
        Image::Raw => disk.clone(),
        Image::Overlay => {
            let check = Command::new("qemu-img").arg("check").arg(&disk).output().unwrap();
            let check_out = String::from_utf8_lossy(&check.stdout);
            assert!(check.status.success() && check_out.contains("No errors"), "qemu-img check: {check_out}");
            assert_eq!(Some(sha256_file(&base)), base_hash, "the base is unchanged, byte for byte");
            let converted = base.with_extension("converted");
            sh(&format!("qemu-img convert -O raw '{}' '{}'", disk.display(), converted.display()));
            let _ = std::fs::remove_file(&disk);
            converted
        }
    };
    check_image(&raw, mib, &guest_sha);
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&base);
}

/// The full size under the JIT, to a raw disk and through a qcow2 overlay.
#[test]
fn the_test_disk_boots_through_seabios_and_syslinux_under_the_jit() {
    boot_test_disk("jit", Image::Raw, 64);
}

#[test]
fn the_test_disk_boots_through_a_qcow2_overlay_under_the_jit() {
    boot_test_disk("jit", Image::Overlay, 64);
}

/// The test disk as an IDE hard disk (QEMU's `-hda`), through a qcow2
/// overlay with 16 MiB written: SeaBIOS's ATA driver loads SYSLINUX and
/// the kernel, Linux's ata_piix writes through the bus master.
#[test]
fn the_test_disk_boots_from_ide_under_the_jit() {
    boot_test_disk_on("jit", Image::Overlay, 16, true);
}

/// The same in the interpreter, 8 MiB to the raw image (about a minute).
#[test]
fn the_test_disk_boots_from_ide_in_the_interpreter() {
    boot_test_disk_on("interp", Image::Raw, 8, true);
}

/// Under KVM (split execution on kvm_pvm), through a qcow2 overlay with
/// 16 MiB written: SeaBIOS, SYSLINUX and ata_piix's bus-master DMA.
#[test]
fn the_test_disk_boots_from_ide_under_kvm() {
    if !kvm::usable() {
        return;
    }
    boot_test_disk_on("kvm", Image::Overlay, 16, true);
}

/// In the interpreter: the whole path (SeaBIOS, SYSLINUX, the kernel,
/// ext4, the qcow2 overlay) with 8 MiB written. About three minutes, so
/// outside the CI run (`cargo test --test bios -- --ignored`); in CI the
/// interpreter boots the boot sector through SeaBIOS.
#[test]
#[ignore = "about three minutes in the interpreter"]
fn the_test_disk_boots_through_a_qcow2_overlay_in_the_interpreter() {
    boot_test_disk("interp", Image::Overlay, 8);
}

/// The full size in the interpreter: outside the CI run (`cargo test
/// --test bios -- --ignored`).
#[test]
#[ignore = "long in the interpreter"]
fn the_full_test_disk_boots_through_seabios_and_syslinux_in_the_interpreter() {
    boot_test_disk("interp", Image::Raw, 64);
    boot_test_disk("interp", Image::Overlay, 64);
}

/// Where KVM runs ring 0 in software (kvm_pvm), split execution: the
/// BIOS, SYSLINUX and the kernel in the JIT, user code in KVM once the
/// kernel's code is found in the guest. Through a qcow2 overlay with
/// 16 MiB written (the JIT's runs write 64 MiB to both kinds of image):
/// on kvm_pvm each boot takes minutes.
#[test]
#[ignore = "outside CI for time: the IDE test disk boots under KVM in CI, and virtio-blk runs under KVM in tests/disk.rs"]
fn the_test_disk_boots_through_seabios_and_syslinux_under_kvm() {
    if !kvm::usable() {
        return;
    }
    boot_test_disk("kvm", Image::Overlay, 16);
}

/// The values the network boot program writes to the debug-exit port.
const NBP_OK: u8 = 0x20;
const NBP_NO_PXENV: u8 = 0x21;
const NBP_NO_BANG_PXE: u8 = 0x22;

/// Where Debian's ipxe-qemu puts the NICs' boot ROMs.
const IPXE_ROMS: &str = "/usr/lib/ipxe/qemu";

/// A PXE network boot program (loaded at 0000:7C00 by the NIC's boot ROM):
/// it checks what the PXE specification (4.4.5) hands it, ES:BX at the
/// PXENV+ structure and the far pointer at SS:SP+4 at the !PXE one, then
/// prints a line and reports through the debug-exit port (`NBP_*`).
fn network_boot_program() -> Vec<u8> {
    printing_sector_after(
        |a| {
            let mut done = a.create_label();
            a.mov(dl, u32::from(NBP_NO_PXENV))?;
            a.cmp(dword_ptr(bx).es(), u32::from_le_bytes(*b"PXEN"))?;
            a.jne(done)?;
            a.cmp(word_ptr(bx + 4).es(), u32::from(u16::from_le_bytes(*b"V+")))?;
            a.jne(done)?;
            a.mov(dl, u32::from(NBP_NO_BANG_PXE))?;
            a.mov(bp, sp)?;
            a.les(di, dword_ptr(bp + 4))?;
            a.cmp(dword_ptr(di).es(), u32::from_le_bytes(*b"!PXE"))?;
            a.jne(done)?;
            a.mov(dl, u32::from(NBP_OK))?;
            a.set_label(&mut done)
        },
        "ferrovm-nbp: started by the boot ROM",
        |a| {
            wait_ticks(a, 4)?;
            a.mov(al, dl)?;
            a.out(0xf4, al)?;
            halt_forever(a)
        },
    )
}

/// Whether the NICs' iPXE ROMs are installed; says so when not.
fn ipxe_roms() -> bool {
    let ok = Path::new(IPXE_ROMS).join("efi-e1000.rom").is_file();
    if !ok {
        eprintln!("skipping: {IPXE_ROMS}/efi-e1000.rom is missing (Debian package ipxe-qemu)");
    }
    ok
}

/// Boots from the network (`--boot n`) with `model`'s iPXE ROM under
/// `accel`: SeaBIOS runs the ROM from the NIC's ROM BAR, iPXE configures
/// the NIC from the NAT's DHCP and router advertisements, fetches the boot
/// program named by `bootfile=` over TFTP and starts it. The seconds from
/// iPXE's "Configuring" to its addresses, and from start to the program.
fn network_boot(accel: &str, model: &str) -> (f64, f64) {
    let tftp = run::tmp("bios", &format!("tftp-{accel}-{model}"));
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::write(tftp.join("ferrovm.nbp"), network_boot_program()).unwrap();
    let nic = format!("user,model={model},tftp={},bootfile=ferrovm.nbp", tftp.display());
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--accel", accel, "--mem", "128M", "--boot", "n", "--nic", &nic, "--serial", "stdio"])
        .args(["--timeout", "90"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ferrovm runs");
    let (out, status, marks) =
        run::watch_markers(child, &["Configuring", "net0: 10.0.2.15", "ferrovm-nbp"], 120, false);
    let code = |v: u8| (i32::from(v) << 1) | 1;
    assert!(out.contains("iPXE"), "iPXE's banner on COM1: {out}");
    assert!(out.contains("net0: 10.0.2.15/255.255.255.0 gw 10.0.2.2"), "iPXE's IPv4 address from the NAT: {out}");
    assert!(out.contains("net0: fec0::5054:ff:fe12:3456/64 gw fe80::2"), "iPXE's IPv6 address (SLAAC): {out}");
    assert!(out.contains("Next server: 10.0.2.2") && out.contains("Filename: ferrovm.nbp"), "DHCP's boot file: {out}");
    assert!(out.contains("ferrovm-nbp: started by the boot ROM"), "the boot program's line: {out}");
    assert_ne!(status, Some(code(NBP_NO_PXENV)), "ES:BX did not point at PXENV+");
    assert_ne!(status, Some(code(NBP_NO_BANG_PXE)), "SS:SP+4 did not point at !PXE");
    assert_eq!(status, Some(code(NBP_OK)), "exit status; serial: {out}");
    let (Some(conf), Some(addr), Some(nbp)) = (marks[0], marks[1], marks[2]) else {
        panic!("iPXE's lines came out of order: {marks:?}; serial: {out}");
    };
    let configured = (addr - conf).as_secs_f64();
    eprintln!(
        "network boot, {model} under {accel}: iPXE configured the NIC in {configured:.2} s; the boot program ran {:.2} s \
         after start",
        nbp.as_secs_f64()
    );
    (configured, nbp.as_secs_f64())
}

#[test]
fn e1000_and_virtio_net_boot_from_the_network_through_ipxe_under_the_jit() {
    if seabios() && ipxe_roms() {
        network_boot("jit", "e1000");
        network_boot("jit", "virtio");
    }
}

#[test]
fn the_network_boot_runs_in_the_interpreter() {
    if seabios() && ipxe_roms() {
        network_boot("interp", "virtio");
    }
}

#[test]
fn the_network_boot_runs_under_kvm() {
    if seabios() && ipxe_roms() && kvm::usable() {
        network_boot("kvm", "e1000");
    }
}

/// Debian's iPXE as a Linux-format kernel (package ipxe).
const IPXE_LKRN: &str = "/usr/lib/ipxe/ipxe.lkrn";
/// QEMU's ROM with which SeaBIOS boots a `-kernel` (qemu-system-data).
const LINUXBOOT_ROM: &str = "/usr/share/qemu/linuxboot_dma.bin";
/// What iPXE's `route` prints for the NAT's IPv4 and IPv6 configuration.
const IPXE_ROUTE4: &str = "net0: 10.0.2.15/255.255.255.0 gw 10.0.2.2";
const IPXE_ROUTE6: &str = "net0: fec0::5054:ff:fe12:3456/64 gw fe80::2";

/// Runs Debian's iPXE (`ipxe.lkrn`, which SeaBIOS boots through QEMU's
/// linuxboot ROM, as QEMU's `-kernel` does: iPXE drives the NIC with its
/// own driver and runs its command line as a script) on `model` under
/// `accel`, `runs` times: every run must configure IPv4 (DHCP) and IPv6
/// (the router advertisement) within a minute. The seconds each run took
/// from "Configuring" to both addresses.
fn debian_ipxe_configures(accel: &str, model: &str, runs: usize) -> Vec<f64> {
    let nic = format!("user,model={model}");
    (0..runs)
        .map(|i| {
            let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
                .args(["run", "--accel", accel, "--mem", "128M", "--nic", &nic, "--kernel", IPXE_LKRN])
                .args(["--kernel-boot", "bios", "--append", "dhcp && route", "--serial", "stdio", "--timeout", "60"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("ferrovm runs");
            let (out, _, marks) = run::watch_markers(child, &["Configuring", IPXE_ROUTE4, IPXE_ROUTE6], 60, true);
            let [Some(conf), Some(v4), Some(v6)] = marks[..] else {
                panic!("{model} under {accel}, run {}: iPXE did not configure IPv4 and IPv6 ({marks:?}): {out}", i + 1);
            };
            (v4.max(v6) - conf).as_secs_f64()
        })
        .collect()
}

/// Whether Debian's iPXE kernel is installed; says so when not.
fn debian_ipxe() -> bool {
    let ok = Path::new(IPXE_LKRN).is_file() && Path::new(LINUXBOOT_ROM).is_file();
    if !ok {
        eprintln!("skipping: {IPXE_LKRN} or {LINUXBOOT_ROM} is missing (Debian packages ipxe, qemu-system-data)");
    }
    ok
}

#[test]
fn debian_ipxe_configures_ipv4_and_ipv6_on_both_nics_ten_times_each_under_the_jit() {
    if !(seabios() && debian_ipxe()) {
        return;
    }
    for model in ["e1000", "virtio"] {
        let mut t = debian_ipxe_configures("jit", model, 10);
        t.sort_by(f64::total_cmp);
        eprintln!(
            "Debian's iPXE on {model} under jit, 10 runs: configured in {:.2} s (fastest), {:.2} s (median), {:.2} s (slowest)",
            t[0],
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
}

/// PXELINUX (Debian's pxelinux and syslinux-common) and its modules.
const PXELINUX: &str = "/usr/lib/PXELINUX/pxelinux.0";
const LDLINUX: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// The network boot as installers use it: iPXE (the e1000's ROM) loads
/// PXELINUX over TFTP, PXELINUX fetches its configuration, Debian's
/// generic kernel and the test initramfs through iPXE's PXE API, and the
/// kernel runs the initramfs's script, which prints a line and powers off.
#[test]
fn linux_boots_from_the_network_through_pxelinux_under_the_jit() {
    if !(seabios() && ipxe_roms()) {
        return;
    }
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images");
    let (kernel, initrd) = (images.join("vmlinuz-generic"), images.join("initramfs.cpio.gz"));
    for f in [Path::new(PXELINUX), Path::new(LDLINUX), &kernel, &initrd] {
        if !f.is_file() {
            eprintln!(
                "skipping: {} is missing (Debian packages pxelinux, syslinux-common; scripts/guest-images.sh)",
                f.display()
            );
            return;
        }
    }
    let tftp = run::tmp("bios", "tftp-pxelinux");
    std::fs::create_dir_all(tftp.join("pxelinux.cfg")).unwrap();
    for (from, name) in [(Path::new(PXELINUX), "pxelinux.0"), (Path::new(LDLINUX), "ldlinux.c32")] {
        std::fs::copy(from, tftp.join(name)).unwrap();
    }
    std::fs::copy(&kernel, tftp.join("vmlinuz")).unwrap();
    std::fs::copy(&initrd, tftp.join("initrd.gz")).unwrap();
    let script = encode::base64(b"echo T:pxe-linux-up; poweroff -f");
    std::fs::write(
        tftp.join("pxelinux.cfg/default"),
        format!(
            "SERIAL 0 115200\nDEFAULT linux\nLABEL linux\n  KERNEL vmlinuz\n  INITRD initrd.gz\n  \
             APPEND console=ttyS0 quiet ferrovm.cmd={script}\n"
        ),
    )
    .unwrap();
    let serial = run::tmp("bios", "pxelinux.log");
    let nic = format!("user,model=e1000,tftp={},bootfile=pxelinux.0", tftp.display());
    let t = Instant::now();
    let o = run::ferrovm(&[
        "run",
        "--accel",
        "jit",
        "--mem",
        "256M",
        "--boot",
        "n",
        "--nic",
        &nic,
        "--serial",
        &format!("file:{}", serial.display()),
        "--timeout",
        "180",
    ]);
    let secs = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    assert!(out.contains("PXELINUX"), "PXELINUX's banner: {out}");
    assert!(out.contains("T:pxe-linux-up"), "the kernel's init ran: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("Linux through PXE and PXELINUX (e1000, jit): {secs:.1} s to power-off");
    let _ = std::fs::remove_dir_all(&tftp);
}

/// QEMU's ROM with which SeaBIOS boots a multiboot `-kernel` (qemu-system-data).
const MULTIBOOT_ROM: &str = "/usr/share/qemu/multiboot_dma.bin";

/// Whether the BIOS and QEMU's multiboot ROM are installed; says so when not.
fn multiboot_through_the_bios_can_run() -> bool {
    let rom = Path::new(MULTIBOOT_ROM).is_file();
    if !rom {
        eprintln!("skipping: {MULTIBOOT_ROM} is missing (Debian package qemu-system-data)");
    }
    seabios() && rom
}

/// The probe kernel and its module written for `tag`: the kernel's path,
/// the module's `-initrd` entry (its path and an argument), its bytes.
fn probe_files(tag: &str) -> (String, String, Vec<u8>) {
    let kernel = run::tmp("bios", &format!("probe-{tag}.elf"));
    std::fs::write(&kernel, multiboot::bios_probe_kernel()).unwrap();
    let module = run::tmp("bios", &format!("probe-{tag}.mod"));
    let data: Vec<u8> = (0..12_345u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&module, &data).unwrap();
    (kernel.display().to_string(), format!("{} arg=1", module.display()), data)
}

/// The command line the probe kernel gets after its file's name.
const PROBE_APPEND: &str = "probe console=ttyS0";

/// `ferrovm run --kernel-boot bios` of the probe kernel under `accel`.
fn multiboot_through_seabios(accel: &str) {
    let (kernel, initrd, data) = probe_files(accel);
    let t = Instant::now();
    let o = run::ferrovm(&[
        "run",
        "--accel",
        accel,
        "--mem",
        "128M",
        "--kernel",
        &kernel,
        "--kernel-boot",
        "bios",
        "--initrd",
        &initrd,
        "--append",
        PROBE_APPEND,
        "--serial",
        "stdio",
        "--timeout",
        "60",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("SeaBIOS (version"), "SeaBIOS ran: {out}\n{err}");
    multiboot::check_bios_probe(&out, &kernel, PROBE_APPEND, (&data, &initrd), 128 << 20, "ferrovm");
    assert_eq!(o.status.code(), Some(0x21), "debug-exit 0x10; stderr: {err}");
    eprintln!("multiboot through SeaBIOS under {accel}: {:.2} s", t.elapsed().as_secs_f64());
}

#[test]
fn a_multiboot_kernel_boots_through_seabios_in_the_interpreter() {
    if multiboot_through_the_bios_can_run() {
        multiboot_through_seabios("interp");
    }
}

#[test]
fn a_multiboot_kernel_boots_through_seabios_under_the_jit() {
    if multiboot_through_the_bios_can_run() {
        multiboot_through_seabios("jit");
    }
}

#[test]
fn a_multiboot_kernel_boots_through_seabios_under_kvm() {
    if multiboot_through_the_bios_can_run() && kvm::usable() {
        multiboot_through_seabios("kvm");
    }
}

/// QEMU's command line for the probe kernel, its module and `-m 128`.
fn probe_qemu_line(kernel: &str, initrd: &str) -> Vec<String> {
    ["-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"]
        .into_iter()
        .chain(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", kernel, "-initrd", initrd])
        .chain(["-append", PROBE_APPEND])
        .map(str::to_string)
        .collect()
}

/// QEMU's `-kernel` line boots the probe kernel through SeaBIOS in
/// ferrovm (`ferrovm qemu`) as it does in QEMU 7.2 (when installed): the
/// same checks pass, the loader's name aside.
#[test]
fn the_probe_kernel_reads_the_same_through_qemus_line_in_ferrovm_and_in_qemu() {
    if !multiboot_through_the_bios_can_run() {
        return;
    }
    let (kernel, initrd, data) = probe_files("qemu-line");
    let line = probe_qemu_line(&kernel, &initrd);
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .arg("qemu")
        .args(&line)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    multiboot::check_bios_probe(&out, &kernel, PROBE_APPEND, (&data, &initrd), 128 << 20, "ferrovm");
    assert_eq!(o.status.code(), Some(0x21), "(0x10 << 1) | 1; stderr: {}", String::from_utf8_lossy(&o.stderr));
    let qemu = ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    let Some(qemu) = qemu else {
        eprintln!("skipping the QEMU run: qemu-system-x86_64 is not installed");
        return;
    };
    let o = Command::new(qemu).args(&line).stdin(std::process::Stdio::null()).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    multiboot::check_bios_probe(&out, &kernel, PROBE_APPEND, (&data, &initrd), 128 << 20, "qemu");
    assert_eq!(o.status.code(), Some(0x21), "QEMU: stderr: {}", String::from_utf8_lossy(&o.stderr));
}
