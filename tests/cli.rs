//! The command line as a user meets it: the built-in guest, the demo, and bad
//! input that must end with a clear message and exit status 1, never a panic.

use std::process::{Command, Output, Stdio};

fn ferrovm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the ferrovm binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in stderr: {err}");
    assert!(!err.contains("panicked"), "panic in stderr: {err}");
}

#[test]
fn builtin_guest_runs_in_the_interpreter() {
    let o = ferrovm(&["run", "--accel", "interp", "--serial", "stdio", "--timeout", "60"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(firmware::builtin::BANNER), "stdout: {out}\nstderr: {}", stderr(&o));
    assert_eq!(firmware::builtin::parse_checksum(&out), Some(firmware::builtin::expected_checksum()), "stdout: {out}");
    // The guest writes 0 to debug-exit: status (0 << 1) | 1.
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn serial_to_a_file() {
    let dir = std::env::temp_dir().join(format!("ferrovm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serial.log");
    let spec = format!("file:{}", path.display());
    let o = ferrovm(&["run", "--accel", "interp", "--serial", &spec, "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains(firmware::builtin::BANNER), "{log}");
    assert!(o.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_prints_its_table_with_the_checksum_ok() {
    let t = std::time::Instant::now();
    let o = ferrovm(&["demo"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let interp = out.lines().find(|l| l.starts_with("interp")).expect("an interp row");
    assert!(interp.trim_end().ends_with("ok"), "{interp}");
    assert!(out.contains(firmware::builtin::BANNER), "{out}");
    assert!(t.elapsed().as_secs() < 10, "demo took {:?}", t.elapsed());
}

#[test]
fn missing_kernel_names_the_path() {
    assert_clean_error(&ferrovm(&["run", "--kernel", "/nonexistent"]), "/nonexistent");
}

#[test]
fn zero_memory_is_refused() {
    assert_clean_error(&ferrovm(&["run", "--mem", "0"]), "--mem");
}

#[test]
fn bad_memory_unit_is_refused() {
    assert_clean_error(&ferrovm(&["run", "--mem", "5Q"]), "5Q");
}

#[test]
fn unknown_accelerator_is_refused() {
    assert_clean_error(&ferrovm(&["run", "--accel", "warp"]), "warp");
}

#[test]
fn bad_serial_backend_is_refused() {
    assert_clean_error(&ferrovm(&["run", "--serial", "tcp:1234"]), "tcp:1234");
}

#[test]
fn too_little_memory_for_the_builtin_guest() {
    assert_clean_error(&ferrovm(&["run", "--mem", "8M"]), "at least");
}

#[test]
fn unbuilt_options_are_refused_not_ignored() {
    assert_clean_error(&ferrovm(&["run", "--disk", "x.img"]), "--disk");
    // --nic is built; a bad one is refused with its reason.
    assert_clean_error(&ferrovm(&["run", "--nic", "vde,sock=x"]), "unknown");
    assert_clean_error(&ferrovm(&["run", "--nic", "tap,ifname=a/b"]), "interface name");
    assert_clean_error(&ferrovm(&["run", "--nic", "user,tftp=/nonexistent/tftp"]), "/nonexistent/tftp");
    assert_clean_error(&ferrovm(&["run", "--nic", "user,model=rtl8139"]), "model");
    // A topology that does not add up is refused, named.
    for (spec, why) in [("4,maxcpus=8", "hotplug"), ("0", "positive"), ("3,sockets=2", "divide"), ("300", "255")] {
        let o = ferrovm(&["run", "--cpus", spec]);
        assert_clean_error(&o, why);
        assert!(stderr(&o).contains("--cpus"), "--cpus {spec}: {}", stderr(&o));
    }
}

/// NICs on no network (QEMU's NIC without a peer) are on the PCI bus and
/// the guest runs as it does without them.
#[test]
fn unconnected_nics_are_on_the_bus() {
    let o = ferrovm(&[
        "run",
        "--accel",
        "interp",
        "--serial",
        "stdio",
        "--timeout",
        "60",
        "--stats",
        "--nic",
        "unconnected,model=e1000",
        "--nic",
        "unconnected,model=virtio",
    ]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(out.contains(firmware::builtin::BANNER), "stdout: {out}\nstderr: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    for nic in ["00:03.0 e1000", "00:04.0 virtio-net"] {
        assert!(err.contains(nic), "{nic} in --stats: {err}");
    }
}

#[test]
fn network_boot_refuses_what_it_cannot_boot() {
    // n is the first NIC's boot ROM: there must be a NIC.
    assert_clean_error(&ferrovm(&["run", "--boot", "n"]), "--nic");
    assert_clean_error(&ferrovm(&["run", "--boot", "cp", "--nic", "user", "--nic", "user"]), "NIC 3");
    // A ROM file that is missing, or is not a ROM.
    assert_clean_error(
        &ferrovm(&["run", "--boot", "n", "--nic", "user,romfile=/nonexistent/boot.rom"]),
        "/nonexistent/boot.rom",
    );
    let dir = std::env::temp_dir().join(format!("ferrovm-rom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_rom = dir.join("not.rom");
    std::fs::write(&not_rom, b"MZ this is not an option ROM").unwrap();
    let nic = format!("user,romfile={}", not_rom.display());
    assert_clean_error(&ferrovm(&["run", "--boot", "n", "--nic", &nic]), "55 AA");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_builtin_guest_runs_on_the_first_of_several_vcpus() {
    // The others wait for a start-up IPI the guest never sends.
    for threads in ["single", "multi"] {
        let o = ferrovm(&["run", "--accel", "interp", "--cpus", "2", "--vcpu-threads", threads, "--timeout", "60"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(firmware::builtin::BANNER), "{threads}: stdout: {out}\nstderr: {}", stderr(&o));
        assert_eq!(o.status.code(), Some(1), "{threads}: {}", stderr(&o));
    }
}

#[test]
fn timeout_exits_124() {
    // A ROM that spins forever at the reset vector: `jmp $` (EB FE).
    let dir = std::env::temp_dir().join(format!("ferrovm-spin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rom = vec![0xf4u8; 0x10000];
    rom[0xfff0] = 0xeb;
    rom[0xfff1] = 0xfe;
    let path = dir.join("spin.rom");
    std::fs::write(&path, &rom).unwrap();
    let o = ferrovm(&[
        "run",
        "--accel",
        "interp",
        "--bios",
        path.to_str().unwrap(),
        "--serial",
        "none",
        "--timeout",
        "0.3",
    ]);
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(stderr(&o).contains("timeout"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn triple_fault_with_no_reboot_names_the_chain() {
    // Real mode with an IVT limit of 0 (`lidt` of a zero pseudo-descriptor)
    // then `int3`: #GP, #DF, shutdown.
    let dir = std::env::temp_dir().join(format!("ferrovm-tf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rom = vec![0u8; 0x10000];
    // At FFF0: cs lidt [cs:0xfff8]; int3 ; pseudo-descriptor at FFF8 (all zero).
    let code = [0x2e, 0x0f, 0x01, 0x1e, 0xf8, 0xff, 0xcc];
    rom[0xfff0..0xfff0 + code.len()].copy_from_slice(&code);
    let path = dir.join("tf.rom");
    std::fs::write(&path, &rom).unwrap();
    let o = ferrovm(&[
        "run",
        "--accel",
        "interp",
        "--bios",
        path.to_str().unwrap(),
        "--serial",
        "none",
        "--no-reboot",
        "--timeout",
        "10",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("triple fault"), "{err}");
    assert!(err.contains("#DF"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--log int,in_asm` (QEMU's `-d`) with `--log-file` (`-D`): the built-in
/// guest's INT3 at CPL 3 is logged as QEMU logs it, with the register
/// dump, and its first block is the reset vector's jump.
#[test]
fn the_guest_log_reads_as_qemus() {
    let log = std::env::temp_dir().join(format!("ferrovm-log-{}.txt", std::process::id()));
    let path = log.to_str().unwrap();
    let o = ferrovm(&[
        "run",
        "--accel",
        "interp",
        "--serial",
        "none",
        "--timeout",
        "60",
        "--log",
        "int,in_asm",
        "--log-file",
        path,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(text.starts_with("----------------\nIN: \n0x00000000fffffff0:  "), "{}", &text[..text.len().min(300)]);
    let int = text.lines().position(|l| l.contains(": v=03 e=0000 i=1 cpl=3 IP=0033:")).expect("the INT3 line");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[int].trim_start().starts_with("0: v=03"), "{}", lines[int]);
    assert!(lines[int + 1].starts_with("RAX=") && lines[int + 5].starts_with("RIP="), "{}", lines[int + 1]);
    let bad = ferrovm(&["run", "--log", "int,exec"]);
    assert_clean_error(&bad, "'exec' is not a log item");
}
