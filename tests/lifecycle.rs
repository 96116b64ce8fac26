//! The VM's life around the guest's own, through QEMU's command line
//! (`ferrovm qemu ...`, and `qemu-system-x86_64` through a symlink):
//!
//! - `-no-shutdown`: a guest that powers off stops, and the process stays;
//!   QMP sees `SHUTDOWN` (guest-shutdown) and `STOP`, `query-status` says
//!   "shutdown", `cont` is refused until `system_reset` ("prelaunch"),
//!   after which `cont` boots the guest again; `quit` ends the process
//!   with status 0.
//! - `-daemonize` with `-pidfile`: the command returns 0 while the VM runs
//!   on in the background (its own session, stdio on /dev/null, in /), a
//!   QMP client finds it running and quits it, and the pidfile goes with
//!   it; a set-up error (a missing disk) makes the command fail with the
//!   error instead, and stdio with -daemonize is refused.
//! - SIGTERM and SIGINT quit cleanly (`SHUTDOWN`, cause host-signal,
//!   status 0, the pidfile removed), running or stopped; under
//!   `-no-reboot` `system_reset` is a shutdown (host-qmp-system-reset),
//!   a stop with `-no-shutdown`.
//! - `-serial mon:stdio` (and `-nographic`, which means it): `Ctrl-A c`
//!   gives the keys to the human monitor (`info status`, `stop`, `cont`)
//!   and back to the guest, `Ctrl-A Ctrl-A` sends one Ctrl-A, and
//!   `Ctrl-A x` ends the process.
//! - `-chardev pty` under `-serial chardev:`: the pseudo-terminal named on
//!   stderr carries COM1 both ways, Ctrl-A included.
//!
//! The guests are 64 KiB firmware images the tests assemble: each writes
//! a line to COM1, then powers off through the ACPI PM1a control register,
//! waits halted, or echoes what COM1 receives.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

#[path = "guest/console.rs"]
mod console;
#[path = "guest/qmp.rs"]
mod qmp;
use console::Console;
use qmp::Qmp;

/// A folder of this test's own.
fn tmp(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lifecycle").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What a test firmware does after its line.
#[derive(Clone, Copy)]
enum Then {
    /// Places the ACPI PM block at 0xB000 and writes S5 and SLP_EN to
    /// PM1a_CNT (0xB004): the machine powers off.
    PowerOff,
    /// Waits halted with interrupts off.
    Halt,
    /// Echoes every byte COM1 receives.
    Echo,
}

/// A 64 KiB firmware image: real-mode code at the ROM's offset 0xe000,
/// which the reset vector (offset 0xfff0) jumps to. It writes `line` to
/// COM1, then does `then`.
fn firmware(dir: &Path, line: &str, then: Then) -> PathBuf {
    firmware_on(dir, 0x3f8, line, then)
}

/// [`firmware`] writing its line to I/O port `port` instead of COM1.
fn firmware_on(dir: &Path, port: u16, line: &str, then: Then) -> PathBuf {
    const CODE: usize = 0xe000;
    let mut a = CodeAssembler::new(16).unwrap();
    a.cli().unwrap();
    a.mov(dx, u32::from(port)).unwrap();
    for b in line.bytes() {
        a.mov(al, u32::from(b)).unwrap();
        a.out(dx, al).unwrap();
    }
    let mut top = a.create_label();
    match then {
        Then::PowerOff => {
            // Place the ACPI PM block as firmware does (PMBA of the PIIX4 PM
            // function at 00:01.3, then PMIOSE), then PM1a_CNT at 0xB004.
            for (reg, value) in [(0x40u32, 0xb001u32), (0x80, 1)] {
                a.mov(dx, 0xcf8u32).unwrap();
                a.mov(eax, 0x8000_0b00 | reg).unwrap();
                a.out(dx, eax).unwrap();
                a.mov(dx, 0xcfcu32).unwrap();
                a.mov(eax, value).unwrap();
                a.out(dx, eax).unwrap();
            }
            a.mov(dx, 0xb004u32).unwrap();
            // SLP_TYP 0 (soft off, the DSDT's \_S5) with SLP_EN.
            a.mov(ax, 1u32 << 13).unwrap();
            a.out(dx, ax).unwrap();
            a.set_label(&mut top).unwrap();
            a.hlt().unwrap();
            a.jmp(top).unwrap();
        }
        Then::Halt => {
            a.set_label(&mut top).unwrap();
            a.hlt().unwrap();
            a.jmp(top).unwrap();
        }
        Then::Echo => {
            a.set_label(&mut top).unwrap();
            a.mov(dx, 0x3fdu32).unwrap();
            a.in_(al, dx).unwrap();
            a.test(al, 1).unwrap();
            a.jz(top).unwrap();
            a.mov(dx, 0x3f8u32).unwrap();
            a.in_(al, dx).unwrap();
            a.out(dx, al).unwrap();
            a.jmp(top).unwrap();
        }
    }
    let code = a.assemble(CODE as u64).unwrap();
    let mut rom = vec![0xffu8; 0x1_0000];
    rom[CODE..CODE + code.len()].copy_from_slice(&code);
    // jmp near CODE from 0xfff0 (the next instruction is at 0xfff3).
    let rel = (CODE as u16).wrapping_sub(0xfff3);
    rom[0xfff0..0xfff3].copy_from_slice(&[0xe9, rel as u8, (rel >> 8) as u8]);
    let path = dir.join("firmware.bin");
    std::fs::write(&path, rom).unwrap();
    path
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ferrovm qemu args`, with `-accel tcg` (the JIT) and 128 MiB.
fn qemu(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrovm"));
    c.arg("qemu").args(["-accel", "tcg", "-m", "128"]).args(args);
    c
}

/// Waits for `cond`, checking every 20 ms.
fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, killed (if still there) when the test ends, with its
/// stderr shown if the test failed.
struct Proc(Child);

impl Proc {
    /// Waits up to `secs` for the process to end.
    fn wait(&mut self, secs: u64) -> Option<i32> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!("ferrovm's stderr:\n{}", self.stderr());
        }
    }
}

/// `ferrovm qemu -nodefaults -bios ROM` with `extra`, COM1 into `serial`
/// and QMP on `sock`, connected.
fn with_qmp(rom: &Path, serial: &Path, sock: &Path, extra: &[&str]) -> (Proc, Qmp) {
    let vm = Proc(
        qemu(&["-nodefaults", "-bios", rom.to_str().unwrap()])
            .args(extra)
            .args(["-serial", &format!("file:{}", serial.display())])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", sock.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrovm starts"),
    );
    let q = Qmp::connect(sock);
    (vm, q)
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn no_shutdown_keeps_a_powered_off_guest_until_reset_and_quit() {
    let t = Instant::now();
    let dir = tmp("no-shutdown");
    let rom = firmware(&dir, "lifecycle: boot\n", Then::PowerOff);
    let (serial, sock) = (dir.join("serial.log"), dir.join("qmp.sock"));
    let (mut vm, mut q) = with_qmp(&rom, &serial, &sock, &["-no-shutdown", "-S"]);
    let status = |q: &mut Qmp| q.cmd(r#"{"execute":"query-status"}"#);
    assert_eq!(status(&mut q), r#"{"return":{"running":false,"singlestep":false,"status":"prelaunch"}}"#);
    assert_eq!(q.cmd(r#"{"execute":"cont"}"#), r#"{"return":{}}"#);
    q.event("RESUME");
    let shutdown = q.event("SHUTDOWN");
    assert!(shutdown.contains(r#""guest":true"#) && shutdown.contains(r#""reason":"guest-shutdown""#), "{shutdown}");
    q.event("STOP");
    assert_eq!(status(&mut q), r#"{"return":{"running":false,"singlestep":false,"status":"shutdown"}}"#);
    assert_eq!(
        q.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}"#),
        r#"{"return":"VM status: paused (shutdown)\r\n"}"#
    );
    // The guest stays stopped, the process alive.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.wait(0), None, "the process ended after the guest powered off");
    assert_eq!(count(&text(&std::fs::read(&serial).unwrap()), "lifecycle: boot"), 1);
    let refused = q.cmd(r#"{"execute":"cont"}"#);
    assert!(refused.contains("Resetting the Virtual Machine is required"), "{refused}");
    assert_eq!(q.cmd(r#"{"execute":"stop"}"#), r#"{"return":{}}"#, "stop changes nothing");
    assert!(status(&mut q).contains(r#""status":"shutdown""#));
    // A reset, then cont: the firmware boots again and powers off again.
    assert_eq!(q.cmd(r#"{"execute":"system_reset"}"#), r#"{"return":{}}"#);
    let reset = q.event("RESET");
    assert!(reset.contains(r#""guest":false"#) && reset.contains("host-qmp-system-reset"), "{reset}");
    assert_eq!(status(&mut q), r#"{"return":{"running":false,"singlestep":false,"status":"prelaunch"}}"#);
    assert_eq!(count(&text(&std::fs::read(&serial).unwrap()), "lifecycle: boot"), 1, "nothing ran before cont");
    assert_eq!(q.cmd(r#"{"execute":"cont"}"#), r#"{"return":{}}"#);
    q.event("RESUME");
    assert!(q.event("SHUTDOWN").contains("guest-shutdown"));
    q.event("STOP");
    assert_eq!(count(&text(&std::fs::read(&serial).unwrap()), "lifecycle: boot"), 2, "booted again");
    assert!(status(&mut q).contains(r#""status":"shutdown""#));
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    assert_eq!(vm.wait(20), Some(0), "quit ends the run with status 0");
    eprintln!("-no-shutdown: {:.1} s", t.elapsed().as_secs_f64());
}

/// Sends `signal` (a name `kill` takes) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let st = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill runs");
    assert!(st.success(), "kill -{signal} {pid}");
}

/// SIGTERM and SIGINT end the run as QMP's `quit` does, with QEMU's words
/// and cause (`host-signal`), a running guest's and a stopped one's, and
/// the pidfile goes. Under `-no-reboot` a monitor's `system_reset` is a
/// shutdown (cause `host-qmp-system-reset`, no `RESET`): the run ends, or
/// with `-no-shutdown` stops.
#[test]
fn signals_quit_cleanly_and_system_reset_under_no_reboot_shuts_down() {
    let t = Instant::now();
    let dir = tmp("signals");
    let rom = firmware(&dir, "lifecycle: boot\n", Then::Halt);
    let (serial, sock, pidfile) = (dir.join("serial.log"), dir.join("qmp.sock"), dir.join("vm.pid"));
    let start = |extra: &[&str]| {
        let _ = std::fs::remove_file(&serial);
        with_qmp(&rom, &serial, &sock, extra)
    };
    let booted = || std::fs::read(&serial).map(|b| text(&b).contains("lifecycle: boot")).unwrap_or(false);

    // A running guest, SIGTERM.
    let (mut vm, mut q) = start(&["-pidfile", pidfile.to_str().unwrap()]);
    wait_until("the guest's line", 30, booted);
    assert!(pidfile.exists());
    signal(vm.0.id(), "TERM");
    let shutdown = q.event("SHUTDOWN");
    assert!(shutdown.contains(r#""guest":false"#) && shutdown.contains(r#""reason":"host-signal""#), "{shutdown}");
    assert_eq!(vm.wait(20), Some(0), "SIGTERM ends the run with status 0");
    let err = vm.stderr();
    assert!(err.contains("terminating on signal 15"), "{err}");
    assert!(!pidfile.exists(), "the pidfile goes with the process");

    // A guest stopped before it ran (-S), SIGINT.
    let (mut vm, mut q) = start(&["-S"]);
    assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""status":"prelaunch""#));
    signal(vm.0.id(), "INT");
    assert!(q.event("SHUTDOWN").contains(r#""reason":"host-signal""#));
    assert_eq!(vm.wait(20), Some(0), "SIGINT ends a stopped run with status 0");
    assert!(vm.stderr().contains("terminating on signal 2"));
    assert!(!booted(), "the stopped guest never ran");

    // -no-reboot: system_reset ends the run.
    let (mut vm, mut q) = start(&["-no-reboot"]);
    wait_until("the guest's line", 30, booted);
    assert_eq!(q.cmd(r#"{"execute":"system_reset"}"#), r#"{"return":{}}"#);
    let shutdown = q.event("SHUTDOWN");
    assert!(
        shutdown.contains(r#""guest":false"#) && shutdown.contains(r#""reason":"host-qmp-system-reset""#),
        "{shutdown}"
    );
    assert_eq!(vm.wait(20), Some(0));
    assert!(!q.events.iter().any(|e| e.contains(r#""event":"RESET""#)), "no RESET under -no-reboot: {:?}", q.events);

    // -no-reboot -no-shutdown: system_reset stops it.
    let (mut vm, mut q) = start(&["-no-reboot", "-no-shutdown"]);
    wait_until("the guest's line", 30, booted);
    assert_eq!(q.cmd(r#"{"execute":"system_reset"}"#), r#"{"return":{}}"#);
    let shutdown = q.event("SHUTDOWN");
    assert!(
        shutdown.contains(r#""guest":false"#) && shutdown.contains(r#""reason":"host-qmp-system-reset""#),
        "{shutdown}"
    );
    q.event("STOP");
    assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""status":"shutdown""#));
    assert_eq!(vm.wait(0), None, "-no-shutdown keeps the process");
    assert_eq!(count(&text(&std::fs::read(&serial).unwrap()), "lifecycle: boot"), 1, "no reboot");
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    assert_eq!(vm.wait(20), Some(0));
    eprintln!("signals and system_reset under -no-reboot: {:.1} s", t.elapsed().as_secs_f64());
}

/// The state field of /proc/PID/stat, and the session ID.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp session ...
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let session = f.nth(2)?.parse().ok()?;
    Some((state, session))
}

/// Whether `pid` is gone (or a zombie nobody reaps).
fn gone(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|(state, _)| state == 'Z' || state == 'X')
}

/// Ends a background VM the test started, if it is still there.
struct Daemon(Option<u32>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|&p| !gone(p)) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    }
}

/// Runs `c` to its end (at most 60 s), collecting its output.
fn finish(mut c: Command) -> Output {
    let child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("it starts");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the command returns").expect("its output")
}

#[test]
fn daemonize_returns_once_the_vm_runs_in_the_background() {
    let t = Instant::now();
    let dir = tmp("daemonize");
    let rom = firmware(&dir, "lifecycle: hello\n", Then::Halt);
    let (serial, sock, pidfile) = (dir.join("serial.log"), dir.join("qmp.sock"), dir.join("vm.pid"));
    // Under QEMU's name, as a management script would start it.
    let link = dir.join("qemu-system-x86_64");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ferrovm"), &link).unwrap();
    let mut c = Command::new(&link);
    c.args(["-accel", "tcg", "-m", "128", "-nodefaults", "-daemonize", "-bios", rom.to_str().unwrap()]);
    c.args(["-pidfile", pidfile.to_str().unwrap(), "-serial", &format!("file:{}", serial.display())]);
    c.args(["-qmp", &format!("unix:{},server=on,wait=off", sock.display())]);
    let out = finish(c);
    let mut daemon = Daemon(None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    // The VM is set up when the command returns: its pidfile and socket are there.
    let pid: u32 = std::fs::read_to_string(&pidfile).expect("the pidfile").trim().parse().expect("a process ID");
    daemon.0 = Some(pid);
    assert!(sock.exists(), "the QMP socket exists when -daemonize returns");
    let (state, session) = proc_stat(pid).expect("the background process runs");
    assert_ne!(state, 'Z', "the background process runs");
    assert_eq!(session, pid, "the background process leads a session of its own");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"));
    for fd in 0..3 {
        assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(), Path::new("/dev/null"), "fd {fd}");
    }
    let mut q = Qmp::connect(&sock);
    assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""status":"running""#));
    wait_until("the guest's line", 20, || {
        text(&std::fs::read(&serial).unwrap_or_default()).contains("lifecycle: hello")
    });
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    wait_until("the background process's end", 20, || gone(pid));
    wait_until("the pidfile's removal", 5, || !pidfile.exists());
    eprintln!("-daemonize: {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn daemonize_reports_a_set_up_error_and_refuses_stdio() {
    let dir = tmp("daemonize-error");
    let rom = firmware(&dir, "lifecycle: hello\n", Then::Halt);
    let pidfile = dir.join("vm.pid");
    // A missing disk: the background process fails, the command says why.
    let mut c = qemu(&["-nodefaults", "-daemonize", "-bios", rom.to_str().unwrap()]);
    c.args(["-pidfile", pidfile.to_str().unwrap()]);
    c.args(["-drive", "file=/nonexistent/lifecycle.img,if=virtio,format=raw"]);
    let out = finish(c);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/lifecycle.img"), "the error names the disk: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!pidfile.exists(), "the failed VM's pidfile is removed");
    // Stdio has no terminal behind it in the background.
    for (args, want) in [
        (&["-serial", "stdio"][..], "-serial stdio: cannot use stdio with -daemonize"),
        (&["-serial", "mon:stdio"][..], "cannot use stdio with -daemonize"),
        (&["-monitor", "stdio"][..], "cannot use stdio with -daemonize"),
        (&["-nographic"][..], "-nographic cannot be used with -daemonize"),
    ] {
        let mut c = qemu(&["-daemonize", "-bios", rom.to_str().unwrap()]);
        c.args(args);
        let out = finish(c);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // ferrovm's own command line: COM1 is on stdio by default.
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrovm"));
    c.args(["run", "--daemonize", "--bios", rom.to_str().unwrap()]);
    let out = finish(c);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--daemonize: COM1 is on stdio"), "{err}");
}

/// `ferrovm qemu args` (as [`qemu`] gives it) with COM1 on this test's
/// pipes.
fn qemu_console(args: &[&str]) -> Console {
    let mut a = vec!["qemu", "-accel", "tcg", "-m", "128"];
    a.extend_from_slice(args);
    Console::start(&a)
}

#[test]
fn mon_stdio_switches_the_console_between_guest_and_monitor() {
    let t = Instant::now();
    let dir = tmp("mon-stdio");
    let rom = firmware(&dir, "lifecycle: echo\n", Then::Echo);
    let mut c = qemu_console(&["-nodefaults", "-serial", "mon:stdio", "-bios", rom.to_str().unwrap()]);
    wait_until("the guest's line", 20, || c.text().contains("lifecycle: echo\n"));
    // The guest has the keys first: it echoes them.
    c.typed(b"ab", "ab");
    let shown = c.typed(b"\x01c", "(qemu) ");
    assert_eq!(shown, "ferrovm monitor - type 'help' for more information\r\n(qemu) ");
    assert_eq!(c.typed(b"info status\r", "(qemu) "), "info status\r\nVM status: running\r\n(qemu) ");
    assert_eq!(c.typed(b"stop\r", "(qemu) "), "stop\r\n(qemu) ");
    assert_eq!(c.typed(b"info status\r", "(qemu) "), "info status\r\nVM status: paused\r\n(qemu) ");
    assert_eq!(c.typed(b"cont\r", "(qemu) "), "cont\r\n(qemu) ");
    // Back to the guest: a new line, then the guest's echo again.
    assert_eq!(c.typed(b"\x01c", "\r\n"), "\r\n");
    c.typed(b"cd", "cd");
    // Ctrl-A Ctrl-A sends one Ctrl-A, which the guest echoes.
    c.typed(b"\x01\x01z", "\x01z");
    // Again to the monitor: the prompt, without the banner.
    assert_eq!(c.typed(b"\x01c", "(qemu) "), "(qemu) ");
    c.typed(b"\x01c", "\r\n");
    let out = c.text();
    assert_eq!(count(&out, "info status"), 2, "the monitor's echo only; the guest got none of it: {out:?}");
    assert_eq!(count(&out, "ferrovm monitor"), 1, "{out:?}");
    c.type_keys(b"\x01h\x01x");
    let (status, err) = c.wait_end(20);
    assert_eq!(status, Some(0), "Ctrl-A x ends the run with status 0: {err}");
    assert!(err.contains("C-a c    switch between console and monitor"), "the help: {err}");
    eprintln!("-serial mon:stdio: {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn nographic_shares_stdio_between_the_guest_and_the_monitor() {
    let dir = tmp("nographic");
    let rom = firmware(&dir, "lifecycle: echo\n", Then::Echo);
    let mut c = qemu_console(&["-nographic", "-nic", "none", "-bios", rom.to_str().unwrap()]);
    wait_until("the guest's line", 20, || c.text().contains("lifecycle: echo\n"));
    c.typed(b"\x01c", "(qemu) ");
    assert_eq!(c.typed(b"info status\r", "(qemu) "), "info status\r\nVM status: running\r\n(qemu) ");
    // `quit` in the monitor ends the run as Ctrl-A x does.
    c.type_keys(b"quit\r");
    let (status, err) = c.wait_end(20);
    assert_eq!(status, Some(0), "quit ends the run with status 0: {err}");
}

/// `-debugcon` puts a console at port 0xE9: what the guest writes there
/// reaches the file or stdio it names, byte for byte; on stdio it takes
/// COM1's place.
#[test]
fn debugcon_writes_what_the_guest_sends_to_port_0xe9() {
    let dir = tmp("debugcon");
    let rom = firmware_on(&dir, 0xe9, "lifecycle: to 0xe9\n", Then::PowerOff);
    let log = dir.join("debugcon.log");
    let c = qemu(&["-nodefaults", "-debugcon", &format!("file:{}", log.display()), "-bios", rom.to_str().unwrap()]);
    let out = finish(c);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "lifecycle: to 0xe9\n");
    let out = finish(qemu(&["-debugcon", "stdio", "-bios", rom.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "lifecycle: to 0xe9\n");
}

/// QEMU's `-chardev pty` under `-serial chardev:`: ferrovm names the new
/// pseudo-terminal on stderr in QEMU's words, the guest's line comes out
/// of it, what is typed on it reaches the guest (which echoes it), and a
/// Ctrl-A there is the guest's byte, not an escape.
#[test]
fn serial_pty_carries_com1_both_ways() {
    use std::io::{BufRead, Write};
    let t = Instant::now();
    let dir = tmp("pty");
    let rom = firmware(&dir, "lifecycle: pty\n", Then::Echo);
    let mut vm = Proc(
        qemu(&["-nodefaults", "-chardev", "pty,id=p0", "-serial", "chardev:p0", "-bios", rom.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrovm starts"),
    );
    let mut err = std::io::BufReader::new(vm.0.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let path = line
        .strip_prefix("char device redirected to ")
        .and_then(|l| l.trim_end().strip_suffix(" (label p0)"))
        .unwrap_or_else(|| panic!("QEMU's line naming the pty: {line:?}"));
    assert!(path.starts_with("/dev/pts/"), "{path}");
    let mut pty = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut reader = pty.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |want: &[u8], seen: &mut Vec<u8>| {
        let until = Instant::now() + Duration::from_secs(20);
        while !seen.windows(want.len()).any(|w| w == want) {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.extend(b),
                Err(_) => panic!("waited for {:?} on the pty; got {:?}", text(want), text(seen)),
            }
        }
    };
    wait_for(b"lifecycle: pty\n", &mut seen);
    pty.write_all(b"hello").unwrap();
    wait_for(b"hello", &mut seen);
    pty.write_all(b"\x01x!").unwrap();
    wait_for(b"\x01x!", &mut seen);
    assert_eq!(vm.wait(0), None, "Ctrl-A x on a pty does not end the run");
    eprintln!("-chardev pty: {:.1} s", t.elapsed().as_secs_f64());
}
