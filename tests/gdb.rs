//! The gdb stub (`--gdb`, QEMU's `-gdb` and `-s`, with `--paused`, QEMU's
//! `-S`), driven by Debian's gdb against Debian's cloud kernel booted with
//! `nokaslr`:
//!
//! - gdb attaches before the guest's first instruction (the kernel's entry
//!   at 0x1000000); a hardware breakpoint at `start_kernel`, whose address
//!   the guest's own /proc/kallsyms gave in an earlier boot, is hit under
//!   the JIT, the interpreter and KVM (split execution here); the kernel's
//!   banner is read through its page tables; `stepi` moves RIP; `monitor
//!   info registers` shows the control registers; `kill` ends the run.
//! - Under the JIT a watchpoint on `jiffies` stops at the timer's write
//!   (old and new values), and after `detach` the guest runs on to its end.
//! - A running guest stops for gdb's Ctrl-C (the byte 0x03) on a Unix
//!   socket, and the protocol's `k` ends the run.
//! - Wholly in KVM (`--kvm-split off`, guests assembled here: KVM runs
//!   every instruction, their kernels' too), gdb's steps, breakpoints and
//!   watchpoints go into KVM's debug registers: a step moves RIP, a
//!   hardware breakpoint stops at the PIT's interrupt handler, a fifth
//!   breakpoint is refused without harm, and a watchpoint stops after a
//!   user program's write (on kvm_pvm, which stops at no data breakpoint,
//!   it is refused).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/kvm.rs"]
mod kvm;
#[path = "guest/multiboot.rs"]
mod multiboot;
#[path = "guest/pm32.rs"]
mod pm32;
#[path = "guest/run.rs"]
mod run;
#[path = "guest/ticker.rs"]
mod ticker;

/// One guest at a time: they share two cores with the build.
static GUESTS: Mutex<()> = Mutex::new(());

fn has_gdb() -> bool {
    let ok = Command::new("gdb").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: gdb is not installed (Debian package gdb)");
    }
    ok
}

/// The cloud kernel under `accel` with `extra` flags, running `script`
/// as its command, COM1 into `serial`.
fn guest(images: &Path, accel: &str, extra: &[&str], script: &str, serial: &Path) -> Child {
    let cmdline =
        format!("console=ttyS0 quiet nokaslr ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(script.as_bytes()));
    let serial = format!("file:{}", serial.display());
    Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--accel", accel, "--mem", "512M", "--timeout", "300", "--serial", &serial])
        .args(extra)
        .arg("--kernel")
        .arg(images.join("vmlinuz-cloud"))
        .arg("--initrd")
        .arg(images.join("initramfs.cpio.gz"))
        .arg("--append")
        .arg(&cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrovm runs")
}

/// The guest's /proc/kallsyms entries of `names`, from a boot under the JIT.
fn kallsyms(images: &Path, names: &[&str]) -> Vec<u64> {
    let serial = run::tmp("gdb", "kallsyms.txt");
    let pattern: Vec<String> = names.iter().map(|n| format!("-e {n}")).collect();
    let script = format!("grep -w {} /proc/kallsyms", pattern.join(" "));
    let out = guest(images, "jit", &[], &script, &serial).wait_with_output().expect("ferrovm runs");
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(out.status.success(), "the kallsyms boot: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    names
        .iter()
        .map(|n| {
            text.lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.trim_end_matches('\r').split_whitespace().collect();
                    (f.len() == 3 && f[2] == *n).then(|| u64::from_str_radix(f[0], 16).ok()).flatten()
                })
                .unwrap_or_else(|| panic!("{n} in the guest's /proc/kallsyms:\n{text}"))
        })
        .collect()
}

/// A TCP port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether a socket listens on TCP `port` (/proc/net/tcp, state 0A).
fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
    })
}

/// Runs gdb in batch mode with `commands` against the stub at `port`;
/// what it printed.
fn gdb(port: u16, commands: &[String]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx", "-ex", "set confirm off", "-ex", &format!("target remote 127.0.0.1:{port}")]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("gdb runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("--- gdb:\n{text}");
    text
}

/// The value gdb's `info registers rip` printed, the `n`th time.
fn rip(text: &str, n: usize) -> u64 {
    let line = text.lines().filter(|l| l.starts_with("rip ")).nth(n).unwrap_or_else(|| panic!("rip #{n} in:\n{text}"));
    let hex = line.split_whitespace().nth(1).unwrap_or_default();
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("{line}"))
}

/// Waits for `child` to end within `secs`; its exit status and stderr.
fn finish(mut child: Child, secs: u64) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("ferrovm ends");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether `accel` can run here (KVM says why not).
fn usable(accel: &str) -> bool {
    accel != "kvm" || run::kvm_usable()
}

#[test]
fn gdb_stops_the_kernel_at_start_kernel_under_each_engine() {
    let Some(images) = images::images(&["vmlinuz-cloud", "initramfs.cpio.gz"]) else { return };
    if !has_gdb() {
        return;
    }
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let syms = kallsyms(&images, &["start_kernel", "linux_banner", "jiffies"]);
    let (start_kernel, banner, jiffies) = (syms[0], syms[1], syms[2]);
    for accel in ["jit", "interp", "kvm"] {
        if !usable(accel) {
            continue;
        }
        let t = Instant::now();
        let port = free_port();
        let serial = run::tmp("gdb", &format!("serial-{accel}.txt"));
        let gdb_at = format!("tcp:127.0.0.1:{port}");
        let child = guest(&images, accel, &["--gdb", &gdb_at, "--paused"], "echo the guest ran on", &serial);
        // The stub listens once the machine is built. (A connection
        // would be a gdb attaching.)
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening(port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut commands = vec![
            "info registers rip".to_string(),
            format!("hbreak *{start_kernel:#x}"),
            "continue".into(),
            "info registers rip".into(),
            format!("x/s {banner:#x}"),
            "stepi".into(),
            "info registers rip".into(),
            "monitor info registers".into(),
        ];
        let jit = accel == "jit";
        if jit {
            commands.extend([
                "delete".into(),
                format!("watch *(long *){jiffies:#x}"),
                "continue".into(),
                "info registers rip".into(),
                "delete".into(),
                "detach".into(),
            ]);
        } else {
            commands.push("kill".into());
        }
        let text = gdb(port, &commands);
        let (status, stderr) = finish(child, if jit { 120 } else { 30 });
        let serial_text = std::fs::read_to_string(&serial).unwrap_or_default();
        eprintln!("--- {accel} ({:?}) stderr:\n{stderr}", t.elapsed());
        // Attached before the first instruction: the kernel's entry.
        assert_eq!(rip(&text, 0), 0x100_0000, "{accel}: stopped at the entry");
        assert!(!serial_text.contains("Linux version"), "{accel}: nothing ran before gdb continued");
        assert!(text.contains("Hardware assisted breakpoint 1"), "{accel}: {text}");
        assert_eq!(rip(&text, 1), start_kernel, "{accel}: stopped at start_kernel");
        assert!(text.contains("\"Linux version 6."), "{accel}: the banner through the page tables: {text}");
        let stepped = rip(&text, 2);
        assert!(stepped != start_kernel && stepped >> 32 == 0xffff_ffff, "{accel}: stepi moved RIP to {stepped:#x}");
        assert!(text.contains("CPU#0: RIP=") && text.contains("CR0=8"), "{accel}: monitor info registers: {text}");
        if jit {
            assert!(text.contains("Hardware watchpoint 2") && text.contains("New value = "), "{text}");
            assert!(rip(&text, 3) >> 32 == 0xffff_ffff, "the timer's write is kernel code");
            assert_eq!(status, Some(0), "the guest ran on to its end after detach: {stderr}");
            assert!(serial_text.contains("the guest ran on"), "{serial_text}");
        } else {
            assert!(status.is_some(), "{accel}: gdb's kill ended the run: {stderr}");
            assert!(!serial_text.contains("the guest ran on"), "{accel}: killed before its command: {serial_text}");
        }
    }
}

/// One packet of gdb's remote protocol, with its checksum.
fn packet(data: &str) -> Vec<u8> {
    let sum = data.bytes().fold(0u8, u8::wrapping_add);
    format!("${data}#{sum:02x}").into_bytes()
}

/// The next reply packet's data (acknowledged).
fn reply(s: &mut UnixStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).expect("a reply");
        got.push(b[0]);
        if let Some(h) = got.iter().position(|&c| c == b'#') {
            if got.len() >= h + 3 {
                break;
            }
        }
    }
    s.write_all(b"+").unwrap();
    let text = String::from_utf8_lossy(&got).into_owned();
    let start = text.find('$').map_or(0, |i| i + 1);
    text[start..text.rfind('#').unwrap_or(text.len())].to_string()
}

#[test]
fn a_running_guest_stops_for_ctrl_c_and_k_ends_the_run() {
    let Some(images) = images::images(&["vmlinuz-cloud", "initramfs.cpio.gz"]) else { return };
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let bad = run::ferrovm(&["run", "--gdb", "udp::1234"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(bad.status.code() == Some(1) && err.contains("udp::1234"), "a bad device is refused: {err}");
    let sock = run::tmp("gdb", "stub.sock");
    let serial = run::tmp("gdb", "serial-ctrl-c.txt");
    let at = format!("unix:{},server,nowait", sock.display());
    let child = guest(&images, "jit", &["--gdb", &at], "sleep 100", &serial);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("the stub's socket: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Attaching stops the running guest.
    s.write_all(&packet("?")).unwrap();
    assert!(reply(&mut s).starts_with("T05"), "stopped for the attach");
    s.write_all(&packet("c")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.write_all(b"\x03").unwrap();
    let stop = reply(&mut s);
    assert!(stop.starts_with("T02"), "Ctrl-C stops it with SIGINT: {stop}");
    s.write_all(&packet("g")).unwrap();
    let regs = reply(&mut s);
    assert!(regs.len() > 16 && !regs.starts_with('E'), "the registers: {regs}");
    s.write_all(&packet("k")).unwrap();
    let (status, stderr) = finish(child, 30);
    assert!(status.is_some(), "k ended the run: {stderr}");
    assert!(!sock.exists(), "the stub's socket is removed");
}

/// A ferrovm running `kernel` wholly in KVM, paused for gdb on `port`.
fn kvm_all(kernel: &[u8], name: &str, port: u16) -> (Child, std::path::PathBuf) {
    let path = run::tmp("gdb", &format!("{name}.elf"));
    std::fs::write(&path, kernel).unwrap();
    let serial = run::tmp("gdb", &format!("serial-{name}.txt"));
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--accel", "kvm", "--kvm-split", "off", "--mem", "64M", "--timeout", "60", "--paused"])
        .args(["--gdb", &format!("tcp:127.0.0.1:{port}"), "--serial", &format!("file:{}", serial.display())])
        .arg("--kernel")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrovm runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listening(port) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, serial)
}

/// Wholly in KVM: the ticking guest, stopped before its first
/// instruction, stepped, and stopped at its PIT interrupt handler by a
/// hardware breakpoint; a fifth breakpoint does not fit KVM's debug
/// registers and gdb is told so; `detach` lets the guest tick on.
#[test]
fn gdb_steps_and_breaks_in_a_guest_wholly_in_kvm() {
    if !has_gdb() || !kvm::usable() {
        return;
    }
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let t = ticker::ticker();
    let port = free_port();
    let (child, serial) = kvm_all(&t.image, "ticker", port);
    let entry = u64::from(multiboot::LOAD + multiboot::CODE_OFF);
    let handler = t.pit_handler;
    let mut commands: Vec<String> = vec![
        "info registers rip".into(),
        "stepi".into(),
        "info registers rip".into(),
        format!("hbreak *{handler:#x}"),
        "continue".into(),
        "info registers rip".into(),
    ];
    // Four in the registers, the handler's among them; a fifth does not fit.
    commands.extend((1..=4).map(|i| format!("hbreak *{:#x}", entry + i)));
    commands.extend(["continue".into(), "delete".into(), "detach".into()]);
    let text = gdb(port, &commands);
    std::thread::sleep(Duration::from_secs(1));
    let (_, stderr) = finish(child, 5);
    let serial_text = std::fs::read_to_string(&serial).unwrap_or_default();
    eprintln!("--- stderr:\n{stderr}");
    assert_eq!(rip(&text, 0), entry, "stopped before the first instruction");
    let stepped = rip(&text, 1);
    assert!(stepped > entry && stepped < entry + 16, "stepi moved RIP to {stepped:#x}");
    assert!(text.contains("Hardware assisted breakpoint 1"), "{text}");
    assert_eq!(rip(&text, 2), handler, "stopped at the PIT handler");
    assert!(text.contains("Could not insert hardware breakpoint"), "the fifth breakpoint was refused: {text}");
    assert!(!stderr.contains("panicked") && !stderr.contains("KVM_SET_GUEST_DEBUG"), "{stderr}");
    assert!(serial_text.contains("T:pit"), "the guest ticked on after detach: {serial_text}");
}

/// A guest whose user code (CPL 3, which KVM runs in hardware on every
/// host) counts in a loop at `COUNTER`; the loop's address.
fn user_counter() -> (Vec<u8>, u64) {
    use iced_x86::code_asm::*;
    let mut k = pm32::Kernel::new("counter");
    let mut user = k.label();
    k.enter_user(user, 0x2).unwrap();
    k.place(&mut user).unwrap();
    k.a.inc(dword_ptr(COUNTER)).unwrap();
    k.a.jmp(user.at).unwrap();
    let (image, at) = k.build_with_labels(&[user.at]);
    (image, at[0])
}

const COUNTER: u32 = pm32::VARS + 0x40;

/// Wholly in KVM: a watchpoint on the counter the guest's user code
/// writes stops right after the write, with the old and new values. On
/// kvm_pvm, which stops at no data breakpoint, gdb is told it cannot
/// insert the watchpoint, and a breakpoint still works.
#[test]
fn gdb_watches_a_write_in_a_guest_wholly_in_kvm() {
    if !has_gdb() || !kvm::usable() {
        return;
    }
    let _one = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let (image, loop_at) = user_counter();
    let (child, _) = kvm_all(&image, "counter", port);
    let commands: Vec<String> = vec![
        format!("watch *(int *){COUNTER:#x}"),
        "continue".into(),
        "info registers rip".into(),
        "continue".into(),
        "info registers rip".into(),
        "delete".into(),
        format!("hbreak *{loop_at:#x}"),
        "continue".into(),
        "info registers rip".into(),
        "kill".into(),
    ];
    let text = gdb(port, &commands);
    let (status, stderr) = finish(child, 10);
    eprintln!("--- stderr:\n{stderr}");
    assert!(text.contains("Hardware watchpoint 1"), "{text}");
    if kvm::emulates_ring0() {
        assert!(text.contains("Could not insert hardware watchpoint"), "kvm_pvm refuses watchpoints: {text}");
        assert!(stderr.contains("does not stop at data breakpoints"), "{stderr}");
        // Refused, the two `continue`s leave the guest where it was.
        assert_eq!((rip(&text, 0), rip(&text, 1)), (0x10_0080, 0x10_0080), "{text}");
        assert_eq!(rip(&text, 2), loop_at, "the breakpoint after the refusal: {text}");
    } else {
        assert!(text.contains("Old value = 0") && text.contains("New value = 1"), "{text}");
        assert!(text.contains("Old value = 1") && text.contains("New value = 2"), "{text}");
        let (first, second) = (rip(&text, 0), rip(&text, 1));
        assert_eq!(first, second, "each stop is right after the loop's write");
        assert_eq!(rip(&text, 2), loop_at, "{text}");
    }
    assert!(status.is_some(), "gdb's kill ended the run: {stderr}");
}
