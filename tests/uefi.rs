//! UEFI: Debian's OVMF (package ovmf) run as the machine's firmware.
//!
//! - OVMF reaches its UEFI shell and runs a command typed on the serial
//!   console: under the JIT, the interpreter and KVM. OVMF finds the ACPI
//!   PM timer through the PIIX4 PM function (00:01.3), which it programs
//!   at 0xB000.
//! - OVMF boots a GRUB x86_64-efi disk built here from Debian's
//!   grub-efi-amd64-bin (a standalone GRUB in a folder that ferrovm shows
//!   as a FAT disk, QEMU's `fat:rw:`, reached through OVMF's IDE driver)
//!   into the cloud kernel, which finds the EFI
//!   runtime services and powers off through ACPI: under the JIT and KVM;
//!   under the interpreter outside CI for time (`-- --ignored`, about 50 s).
//! - The firmware from QEMU's two flash drives (`-drive if=pflash`): the
//!   code read-only, the variables writable; a variable the shell sets is
//!   in the variables file after the run.
//! - A network boot (`-boot n`) of a 256 MiB guest: OVMF places the e1000's
//!   BARs at 2 GiB, loads the EFI driver in its iPXE ROM (Debian's
//!   ipxe-qemu), which configures through the NAT's DHCP and fetches an
//!   EFI program by TFTP (Debian's ipxe.efi), which runs.

#[path = "guest/console.rs"]
mod console;
#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/kvm.rs"]
mod kvm;
#[path = "guest/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use console::Console;

/// Debian's OVMF with its variables in the same image (`-bios`).
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// Debian's split OVMF: code and a variables template (`-drive if=pflash`).
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn ovmf() -> bool {
    let ok = Path::new(OVMF).is_file();
    if !ok {
        eprintln!("skipping: {OVMF} is missing (Debian package ovmf)");
    }
    ok
}

/// The accelerators a test runs under: the JIT and the interpreter, and KVM
/// where it can run (else the reason is printed).
fn accels(interp: bool) -> Vec<&'static str> {
    let mut v = vec!["jit"];
    if interp {
        v.push("interp");
    }
    if kvm::usable() {
        v.push("kvm");
    }
    v
}

/// Skips the shell's five-second wait for `startup.nsh`, runs `echo` and
/// checks its output line; the console's text so far.
fn shell_echo(c: &mut Console, word: &str, secs: u64) -> String {
    c.wait_for("startup.nsh", 1, secs);
    c.type_keys(b"\x1b");
    c.wait_for("Shell> ", 1, 30);
    c.type_keys(format!("echo {word}\r").as_bytes());
    // The shell echoes each typed key with a cursor move between them; the
    // command's output is the word whole, on a line of its own.
    let t = c.wait_for(word, 1, 30);
    assert!(t.lines().any(|l| l.trim_end() == word), "the command's output line: {t}");
    t
}

/// QEMU's `-boot n` under OVMF: the NIC's ROM (QEMU's default,
/// efi-e1000.rom) gives OVMF its network boot option, and the EFI program
/// the NAT's DHCP names comes over TFTP and runs: iPXE's own EFI build,
/// which says so ("initialising devices", which the ROM's iPXE does not
/// print) and then configures the NIC again.
#[test]
fn ovmf_boots_an_efi_program_from_the_network() {
    if !ovmf() {
        return;
    }
    let (rom, program) = ("/usr/lib/ipxe/qemu/efi-e1000.rom", "/usr/lib/ipxe/ipxe.efi");
    for (f, pkg) in [(rom, "ipxe-qemu"), (program, "ipxe")] {
        if !Path::new(f).is_file() {
            eprintln!("skipping: {f} is missing (Debian package {pkg})");
            return;
        }
    }
    let dir = run::tmp("uefi", "netboot");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(program, dir.join("boot.efi")).unwrap();
    let netdev = format!("user,id=n0,tftp={},bootfile=boot.efi", dir.display());
    let start = Instant::now();
    let mut c = Console::start(&[
        "qemu",
        "-bios",
        OVMF,
        "-m",
        "256",
        "-nographic",
        "-netdev",
        &netdev,
        "-device",
        "e1000,netdev=n0",
        "-boot",
        "n",
    ]);
    let t = c.wait_for("iPXE initialising devices...ok", 1, 240);
    assert!(t.contains("using 82540em on 0000:00:03.0"), "the ROM's driver found the e1000: {t}");
    assert!(t.contains("net0: 10.0.2.15/255.255.255.0 gw 10.0.2.2"), "DHCP from the NAT: {t}");
    assert!(t.contains("tftp://10.0.2.2/boot.efi... ok"), "the program came over TFTP: {t}");
    assert!(t.contains(" bytes [EFI]"), "iPXE took it as an EFI program: {t}");
    eprintln!("OVMF network-booted an EFI program in {:.1} s", start.elapsed().as_secs_f64());
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ovmf_reaches_its_shell_and_runs_a_command() {
    if !ovmf() {
        return;
    }
    for accel in accels(true) {
        let start = Instant::now();
        let mut c = Console::start(&["run", "--bios", OVMF, "--mem", "256", "--accel", accel, "--timeout", "300"]);
        let t = shell_echo(&mut c, "ferrovm-uefi-shell", 200);
        assert!(t.contains("UEFI Interactive Shell"), "{accel}: {t}");
        eprintln!("{accel}: OVMF's shell ran a command after {:.1} s", start.elapsed().as_secs_f64());
    }
}

/// A folder for QEMU's `fat:` (an EFI system partition as UEFI developers
/// keep one) with a standalone GRUB for x86_64-efi as
/// `EFI/BOOT/BOOTX64.EFI` (its grub.cfg inside: serial console, then the
/// kernel and initramfs from the same disk), the kernel and the initramfs;
/// `None` (said why) when the tools or images are missing.
fn grub_efi_folder(dir: &Path, cmdline: &str) -> Option<PathBuf> {
    for (tool, pkg) in [("grub-mkstandalone", "grub-common")] {
        if Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map_or(true, |o| !o.status.success())
        {
            eprintln!("skipping: {tool} is missing (Debian package {pkg})");
            return None;
        }
    }
    if !Path::new("/usr/lib/grub/x86_64-efi/linux.mod").is_file() {
        eprintln!("skipping: GRUB's x86_64-efi modules are missing (Debian package grub-efi-amd64-bin)");
        return None;
    }
    let images = images::images(&["initramfs.cpio.gz", "vmlinuz-cloud"])?;
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("grub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
             search --no-floppy --file --set=root /vmlinuz\necho \"grub: loading linux\"\n\
             linux /vmlinuz {cmdline}\ninitrd /initramfs.cpio.gz\nboot\n"
        ),
    )
    .unwrap();
    let esp = dir.join("esp");
    let _ = std::fs::remove_dir_all(&esp);
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    let script = format!(
        "set -e; \
         grub-mkstandalone -O x86_64-efi -o '{efi}' --locales= --fonts= --themes= \
           --modules='part_msdos part_gpt fat linux serial terminal echo search search_fs_file' 'boot/grub/grub.cfg={cfg}'; \
         cp '{kernel}' '{esp}/vmlinuz'; cp '{initrd}' '{esp}/initramfs.cpio.gz'",
        efi = esp.join("EFI/BOOT/BOOTX64.EFI").display(),
        cfg = cfg.display(),
        esp = esp.display(),
        kernel = images.join("vmlinuz-cloud").display(),
        initrd = images.join("initramfs.cpio.gz").display(),
    );
    let o = Command::new("sh").arg("-c").arg(&script).output().expect("sh runs");
    assert!(o.status.success(), "building the GRUB folder: {}", String::from_utf8_lossy(&o.stderr));
    Some(esp)
}

/// The initramfs's command (base64 on the kernel command line): whether
/// Linux runs on EFI with its runtime services mapped.
const EFI_CHECK: &str =
    "[ -d /sys/firmware/efi/runtime-map ] && echo T:efi-runtime-$(ls /sys/firmware/efi/runtime-map | wc -l)";

fn grub_into_linux(accels: &[&str]) {
    if !ovmf() {
        return;
    }
    let dir = run::tmp("uefi", "grub");
    let cmd = encode::base64(EFI_CHECK.as_bytes());
    let cmdline = format!("console=ttyS0 panic=-1 ferrovm.cmd={cmd} ferrovm.poweroff=1");
    let Some(esp) = grub_efi_folder(&dir, &cmdline) else { return };
    // QEMU's `-drive format=raw,file=fat:rw:esp`: an IDE disk by default.
    let drive = format!("fat:rw:{},format=raw,if=ide", esp.display());
    for &accel in accels {
        let start = Instant::now();
        let mut c = Console::start(&[
            "run",
            "--bios",
            OVMF,
            "--mem",
            "256",
            "--accel",
            accel,
            "--disk",
            &drive,
            "--timeout",
            "300",
        ]);
        c.wait_for("grub: loading linux", 1, 200);
        let t = c.wait_for("T:efi-runtime-", 1, 250);
        assert!(t.contains("efi: EFI v2"), "{accel}: Linux runs on EFI: {t}");
        let (status, err) = c.wait_end(60);
        assert_eq!(status, Some(0), "{accel}: the guest powers off through ACPI: {err}");
        eprintln!("{accel}: OVMF, GRUB and Linux to power-off in {:.1} s", start.elapsed().as_secs_f64());
    }
}

#[test]
fn ovmf_boots_a_grub_efi_disk_into_linux() {
    grub_into_linux(&accels(false));
}

#[test]
#[ignore = "about 50 s: OVMF, GRUB and the kernel's boot in the interpreter"]
fn ovmf_boots_a_grub_efi_disk_into_linux_in_the_interpreter() {
    grub_into_linux(&["interp"]);
}

/// UTF-16LE bytes of `s`, as UEFI stores a variable's name.
fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// QEMU's two flash drives: the code read-only, the variables a CFI flash
/// that OVMF detects and programs. A variable the shell sets is in the
/// file after the run, and a second run reads it back; `reset -s` powers
/// the machine off through the PIIX4's soft-off state.
#[test]
fn uefi_variables_persist_in_the_flash_file() {
    if !Path::new(OVMF_CODE).is_file() || !Path::new(OVMF_VARS).is_file() {
        eprintln!("skipping: {OVMF_CODE} or {OVMF_VARS} is missing (Debian package ovmf)");
        return;
    }
    let vars = run::tmp("uefi", "vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let template = std::fs::read(OVMF_VARS).unwrap();
    let code = format!("if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on");
    let data = format!("if=pflash,format=raw,unit=1,file={}", vars.display());
    let args = ["qemu", "-drive", &code, "-drive", &data, "-m", "256", "-nographic", "-net", "none"];
    const GUID: &str = "3c6c4d2f-4a6e-4c1e-9c5b-0f1e2d3c4b5a";
    let mut c = Console::start(&args);
    shell_echo(&mut c, "ferrovm-flash-first", 200);
    c.type_keys(format!("setvar FerrovmFlash -guid {GUID} -nv -bs =L\"kept\"\r").as_bytes());
    c.wait_for("Shell> ", 3, 30);
    c.type_keys(b"reset -s\r");
    let (status, err) = c.wait_end(60);
    assert_eq!(status, Some(0), "reset -s powers off: {err}");
    let after = std::fs::read(&vars).unwrap();
    assert_eq!(after.len(), template.len(), "the file keeps its size");
    assert_ne!(after, template, "the variable store was written back");
    let name = utf16("FerrovmFlash");
    assert!(after.windows(name.len()).any(|w| w == name), "the variable's name is in the file");

    // A second run reads it from the flash.
    let mut c = Console::start(&args);
    shell_echo(&mut c, "ferrovm-flash-second", 200);
    c.type_keys(format!("setvar FerrovmFlash -guid {GUID}\r").as_bytes());
    // `setvar` without a value prints the variable's bytes: L"kept".
    let t = c.wait_for("6B 00 65 00 70 00 74 00", 1, 30);
    assert!(t.contains("FerrovmFlash"), "{t}");
}

#[test]
fn flash_drives_are_checked_on_the_command_line() {
    if !Path::new(OVMF_VARS).is_file() {
        eprintln!("skipping: {OVMF_VARS} is missing (Debian package ovmf)");
        return;
    }
    let data = format!("if=pflash,format=raw,unit=1,file={OVMF_VARS}");
    let o = run::ferrovm(&["qemu", "-drive", &data, "-nographic"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("unit 1 without unit 0"), "{err}");
    // The variables alone are no firmware: nothing at the reset vector.
    let o = run::ferrovm(&["run", "--pflash", OVMF_VARS, "--timeout", "5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("reset vector"), "{err}");
    let o = run::ferrovm(&["run", "--pflash", &format!("{OVMF_VARS},bogus=1")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown option bogus=1"));
}
