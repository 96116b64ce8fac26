//! QEMU's command line: ferrovm started as `qemu-system-x86_64`, through a
//! symlink of that name in a folder first on PATH (ahead of a real QEMU
//! where one is installed), runs QEMU command lines unchanged:
//!
//! - the lines `ferrovm bench` gives QEMU: the built-in guest through
//!   `-bios` and isa-debug-exit, and Debian's cloud kernel (`-accel tcg`,
//!   which is ferrovm's JIT), which SeaBIOS boots through QEMU's linuxboot
//!   ROM as QEMU does (the kernel's real-mode setup code probes EDD through
//!   the BIOS) up to its init;
//! - `-netdev user,...,hostfwd=... -device virtio-net-pci|e1000,netdev=n0`:
//!   DHCP, HTTP through the NAT's gateway, a host port forward and the
//!   NIC's MAC address (the network guest of tests/net.rs);
//! - `-drive file=...,if=virtio,format=raw`: the BIOS test disk of
//!   tests/bios.rs through SeaBIOS and SYSLINUX;
//! - a multiboot test kernel with `-device isa-debug-exit,...`, which exits
//!   with QEMU's status, and `-no-reboot`, booted through SeaBIOS and QEMU's
//!   multiboot ROM;
//! - options ferrovm cannot honour, refused by name with status 1.
//!
//! Without the guest images the Linux tests say so and pass.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use iced_x86::code_asm::*;

#[path = "guest/bios_disk.rs"]
mod bios_disk;
#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/multiboot.rs"]
mod multiboot;
#[path = "guest/nat.rs"]
mod nat;

/// One guest at a time: the host has few cores.
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// A folder of this test process's own.
fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrovm-qemu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// PATH with a folder holding `qemu-system-x86_64 -> ferrovm` first.
fn path_with_qemu() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let bin = tmp("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let link = bin.join("qemu-system-x86_64");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferrovm"), &link).unwrap();
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        std::env::join_paths(dirs).unwrap()
    })
}

/// `qemu-system-x86_64 args`, found on the PATH above.
fn qemu(args: &[&str]) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.env("PATH", path_with_qemu()).args(args).stdin(Stdio::null());
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("qemu-system-x86_64 (ferrovm) runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn images() -> Option<PathBuf> {
    images::images(&["initramfs.cpio.gz", "vmlinuz-cloud"])
}

#[test]
fn the_name_on_path_is_ferrovm() {
    let o = output(qemu(&["-version"]));
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).starts_with("ferrovm "), "{}", text(&o.stdout));
}

/// `ferrovm bench`'s QEMU line for the built-in guest (bench/src/demo.rs).
#[test]
fn the_bench_line_for_the_builtin_guest() {
    let rom = tmp("builtin.rom");
    std::fs::write(&rom, firmware::builtin::build().unwrap().rom).unwrap();
    let mut c = qemu(&["-bios"]);
    c.arg(&rom);
    c.args(["-m", "64", "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"]);
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    let o = output(c);
    let out = text(&o.stdout);
    assert_eq!(
        firmware::builtin::parse_checksum(&out),
        Some(firmware::builtin::expected_checksum()),
        "stdout: {out}\nstderr: {}",
        text(&o.stderr)
    );
    // The guest writes 0 to debug-exit: (0 << 1) | 1, as under QEMU.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
}

/// `ferrovm bench`'s QEMU line for a Linux boot (bench/src/demo.rs, and the same
/// in src/bench_work.rs), its kernel command line given a script that
/// checks the guest and powers it off.
#[test]
fn the_bench_line_for_linux_boots_the_cloud_kernel() {
    let Some(dir) = images() else { return };
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let script = "echo \"T:uname $(uname -r)\"\necho \"T:seq $(seq 1 10000 | sha256sum | cut -d' ' -f1)\"\n";
    let append = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(script.as_bytes()));
    let mut c = qemu(&["-accel", "tcg", "-cpu", "max", "-m", "512", "-nodefaults", "-display", "none"]);
    c.args(["-serial", "stdio", "-no-reboot", "-kernel"]).arg(dir.join("vmlinuz-cloud"));
    c.arg("-initrd").arg(dir.join("initramfs.cpio.gz")).args(["-append", &append]);
    let t = Instant::now();
    let o = output(c);
    let out = text(&o.stdout);
    let field = |k: &str| out.lines().find_map(|l| l.trim_end().strip_prefix(&format!("T:{k} ")).map(str::to_string));
    assert!(out.contains("ferrovm-init: start"), "stdout: {out}\nstderr: {}", text(&o.stderr));
    // QEMU's -kernel: SeaBIOS runs the linuxboot ROM, which enters the
    // kernel's real-mode setup code, which asks the BIOS for its disks.
    for through_the_bios in ["SeaBIOS (version", "Booting from ROM", "Probing EDD"] {
        assert!(out.contains(through_the_bios), "{through_the_bios:?} in stdout: {out}");
    }
    assert!(field("uname").is_some_and(|u| u.ends_with("-cloud-amd64")), "{out}");
    let host = Command::new("sh").args(["-c", "seq 1 10000 | sha256sum | cut -d' ' -f1"]).output().unwrap();
    assert_eq!(field("seq"), Some(text(&host.stdout).trim().to_string()), "{out}");
    assert_eq!(o.status.code(), Some(0), "poweroff ends the run with 0; stderr: {}", text(&o.stderr));
    eprintln!("cloud kernel through the QEMU line: {:.1} s", t.elapsed().as_secs_f64());
}

/// The second stage of the network guest (after tests/guest/nat.rs's
/// DHCP and first stage): the MAC address, 1 MiB over HTTP through the
/// gateway, 1 MiB in through a host port forward.
const NET_STAGE2: &str = r#"
echo "T:mac $(cat /sys/class/net/eth0/address)"
wget -q -O /tmp/blob http://10.0.2.2:@HTTP@/blob || echo "T:wget-failed $?"
echo "T:wget $(sha256sum < /tmp/blob | cut -d' ' -f1) $(wc -c < /tmp/blob)"
nc -l -p 5555 < /dev/null > /tmp/in &
pid=$!
echo "T:ready-in"
wait $pid
echo "T:in $(sha256sum < /tmp/in | cut -d' ' -f1) $(wc -c < /tmp/in)"
echo "T:done"
"#;

/// `ferrovm bench --net`'s QEMU line (bench/src/net.rs) with `device`.
fn network(device: &str) {
    let Some(dir) = images() else { return };
    if !dir.join("initramfs-net.cpio.gz").is_file() || !dir.join("vmlinuz-generic").is_file() {
        eprintln!("skipping: guest-images/initramfs-net.cpio.gz or vmlinuz-generic is missing");
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let blob = nat::pattern(1 << 20, 7);
    let (http, stage2) = nat::http_server(blob.clone());
    *stage2.lock().unwrap() = NET_STAGE2.replace("@HTTP@", &http.to_string());
    let script = format!("{}{}", nat::MODULES_AND_DHCP, nat::STAGE1.replace("@HTTP@", &http.to_string()));
    let fwd = nat::free_port();
    let mac = "52:54:00:12:34:99";
    let pidfile = tmp(&format!("{device}.pid"));
    let mut c = qemu(&["-accel", "tcg", "-m", "512", "-nodefaults", "-display", "none", "-serial", "stdio"]);
    c.args(["-monitor", "none", "-no-reboot"]);
    c.args(["-netdev", &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{fwd}-:5555")]);
    c.args(["-device", &format!("{device},netdev=n0,mac={mac}")]);
    c.arg("-pidfile").arg(&pidfile);
    c.arg("-kernel").arg(dir.join("vmlinuz-generic"));
    c.arg("-initrd").arg(dir.join("initramfs-net.cpio.gz"));
    c.arg("-append").arg(nat::net_cmdline(&script));
    let mut g = nat::Guest::start(device, c);

    let (addr, _) = g.wait_for("addr");
    g.check(addr == "10.0.2.15", "udhcpc's address is not 10.0.2.15");
    let pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
    g.check(pid.trim() == g.pid().to_string(), &format!("-pidfile holds {pid:?}"));
    let (m, _) = g.wait_for("mac");
    g.check(m == mac, &format!("eth0's address is {m}, not the -device mac="));
    let (wget, _) = g.wait_for("wget");
    g.check(wget == format!("{} {}", nat::sha256(&blob), blob.len()), &format!("HTTP through the NAT: {wget}"));
    g.wait_for("ready-in");
    let data = nat::pattern(1 << 20, 8);
    nat::send_through(fwd, &data, &mut g);
    let (got, _) = g.wait_for("in");
    g.check(got == format!("{} {}", nat::sha256(&data), data.len()), &format!("host -> guest through hostfwd: {got}"));
    g.finish();
    assert!(!pidfile.exists(), "the pidfile is removed at exit");
    eprintln!("{device} through the QEMU line: {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn netdev_user_with_virtio_net_pci() {
    network("virtio-net-pci");
}

#[test]
fn netdev_user_with_e1000() {
    network("e1000");
}

/// `-drive file=...,if=virtio,format=raw` with no kernel: SeaBIOS boots
/// the test disk, as in tests/bios.rs.
#[test]
fn a_virtio_drive_boots_the_test_disk() {
    let Some(src) = bios_disk::test_disk() else { return };
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let disk = tmp("bios-disk.img");
    std::fs::copy(&src, &disk).unwrap();
    // A short write: the full 64 MiB runs in tests/bios.rs.
    bios_disk::set_mib(&disk, 4);
    let log = tmp("bios-disk.log");
    let t = Instant::now();
    let mut c = qemu(&["-accel", "tcg", "-m", "512", "-nodefaults", "-display", "none", "-no-reboot"]);
    c.args(["-serial", &format!("file:{}", log.display())]);
    c.args(["-drive", &format!("file={},if=virtio,format=raw", disk.display())]);
    let o = output(c);
    let out = text(&std::fs::read(&log).unwrap_or_default());
    bios_disk::check(&o, &out, &disk, 4);
    let _ = std::fs::remove_file(&disk);
    eprintln!("the test disk through the QEMU line: {:.1} s", t.elapsed().as_secs_f64());
}

/// A multiboot kernel that prints a line and writes `value` to port 0xf4.
fn debug_exit_kernel(value: u8) -> PathBuf {
    let mut a = CodeAssembler::new(32).unwrap();
    multiboot::print32(&mut a, "qemu-cli: hello\n").unwrap();
    a.mov(al, u32::from(value)).unwrap();
    a.out(0xf4u32, al).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(u64::from(multiboot::LOAD + multiboot::CODE_OFF)).unwrap();
    let path = tmp(&format!("exit-{value:#x}.elf"));
    std::fs::write(&path, multiboot::multiboot_elf(&code)).unwrap();
    path
}

#[test]
fn a_test_kernel_exits_with_qemus_debug_exit_status() {
    let k = debug_exit_kernel(0x21);
    let mut c = qemu(&["-kernel"]);
    c.arg(&k).args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-display", "none", "-serial", "stdio"]);
    let o = output(c);
    assert!(text(&o.stdout).contains("qemu-cli: hello"), "stdout: {}\nstderr: {}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("SeaBIOS (version"), "through the BIOS: {}", text(&o.stdout));
    assert_eq!(o.status.code(), Some(0x43), "(0x21 << 1) | 1; stderr: {}", text(&o.stderr));
    // `ferrovm qemu ...`, `--` spellings and iosize=0x04 say the same.
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .arg("qemu")
        .arg("--kernel")
        .arg(debug_exit_kernel(0x7f))
        .args(["--device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-vga", "none", "-nographic", "-nodefaults"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0xff), "stderr: {}", text(&o.stderr));
}

#[test]
fn no_reboot_ends_the_run_at_a_triple_fault_with_status_0() {
    // `lidt` of a zero pseudo-descriptor (untouched RAM at 2 MiB), then
    // `int3`: #GP, #DF, shutdown.
    let mut a = CodeAssembler::new(32).unwrap();
    a.lidt(ptr(0x20_0000u32)).unwrap();
    a.int3().unwrap();
    a.hlt().unwrap();
    let code = a.assemble(u64::from(multiboot::LOAD + multiboot::CODE_OFF)).unwrap();
    let k = tmp("triple.elf");
    std::fs::write(&k, multiboot::multiboot_elf(&code)).unwrap();
    let mut c = qemu(&["-no-reboot", "-nographic", "-nodefaults", "-kernel"]);
    c.arg(&k);
    let o = output(c);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains("triple fault"), "{}", text(&o.stderr));
}

#[test]
fn unsupported_options_are_refused_by_name() {
    for (args, name) in [
        (&["-S", "-nodefaults"][..], "needs a monitor"),
        (&["-vga", "cirrus"][..], "-vga std"),
        (&["-device", "usb-tablet"][..], "no USB bus"),
        (&["-gdb", "udp::1234", "-kernel", "k"][..], "expected tcp::PORT"),
        (&["-frobnicate"][..], "-frobnicate"),
        (&["-smp", "4,maxcpus=8"][..], "hotplug"),
        (&["-netdev", "vde,id=t0"][..], "vde"),
        (&["-netdev", "user,id=n0", "-device", "rtl8139,netdev=n0"][..], "rtl8139"),
        (&["-drive", "file=x.img,if=scsi"][..], "if=scsi"),
        (&["-display", "gtk"][..], "-display"),
        (&["-device", "isa-debug-exit,iobase=0x501,iosize=2"][..], "iobase=0x501"),
    ] {
        let o = output(qemu(args));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(name), "{args:?}: expected {name:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A missing kernel is named, as in `ferrovm run`.
    let o = output(qemu(&["-kernel", "/nonexistent/bzImage", "-nodefaults"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("/nonexistent/bzImage"), "{}", text(&o.stderr));
}
