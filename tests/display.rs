//! The display, read back as a user sees it: the standard VGA's screen
//! through the VNC server, taken by a VNC client (Debian's `vncsnapshot`)
//! and read by OCR (Debian's `tesseract-ocr`), and keys typed over VNC
//! reaching the guest. The QMP monitor drives the same runs: its
//! greeting, `stop`/`cont`, `screendump`, an unknown command, malformed
//! JSON, `set_password` and `quit`.
//!
//! - SeaBIOS, with no disk to boot, shows its banner through the VGA BIOS
//!   in text mode; the OCR'd screen must hold it.
//! - The BIOS test disk boots Linux, whose VGA console (tty0) shows a line
//!   the guest writes there; the OCR'd screen must hold it. A word typed
//!   over VNC (RFB key events) reaches the guest's PS/2 keyboard, and the
//!   guest prints it on COM1.
//! - A VNC server with `password=on` refuses every client until a password
//!   is set over QMP, then refuses a wrong one and takes the right one.
//!
//! Without vncsnapshot, tesseract or SeaBIOS the tests say so and are
//! skipped; scripts/test.sh installs them.

#[path = "guest/bios_disk.rs"]
mod bios_disk;
#[path = "guest/run.rs"]
#[allow(dead_code, reason = "this suite spawns ferrovm itself")]
mod run;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bios_disk::{partition_offset, seabios, set_mib, sh, test_disk};
use run::tmp;

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// Whether the VNC client and the OCR engine are installed.
fn tools() -> bool {
    for (tool, arg, package) in [("vncsnapshot", "-h", "vncsnapshot"), ("tesseract", "--version", "tesseract-ocr")] {
        if Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            eprintln!("skipping: {tool} is not installed (Debian package {package})");
            return false;
        }
    }
    seabios()
}

/// A display number whose port (5900 + N) was free a moment ago.
fn free_display() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert!(port > 5900, "an ephemeral port above 5900: {port}");
    port - 5900
}

/// A running ferrovm with COM1 in a file and a QMP socket.
struct Vm {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
    display: u16,
}

impl Vm {
    fn start(name: &str, vnc_options: &str, args: &[&str]) -> Vm {
        let serial = tmp("display", &format!("{name}.serial"));
        let qmp = tmp("display", &format!("{name}.qmp"));
        let _ = std::fs::remove_file(&serial);
        let display = free_display();
        let vnc = format!("127.0.0.1:{display}{vnc_options}");
        let serial_arg = format!("file:{}", serial.display());
        let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
        let mut all = vec!["run", "--accel", "jit", "--mem", "256M", "--vnc", &vnc, "--serial", &serial_arg];
        all.extend(["--qmp", &qmp_arg, "--timeout", "300"]);
        all.extend(args);
        let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
            .args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrovm starts");
        let vm = Vm { child, serial, qmp, display };
        let until = Instant::now() + Duration::from_secs(20);
        while !vm.qmp.exists() {
            assert!(Instant::now() < until, "the QMP socket appears");
            std::thread::sleep(Duration::from_millis(50));
        }
        vm
    }

    fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until COM1 shows `line`.
    fn wait_serial(&self, line: &str, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !self.serial().contains(line) {
            assert!(Instant::now() < until, "COM1 shows {line:?} within {secs} s:\n{}", self.serial());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The screen as a VNC client sees it, read by OCR.
    fn screen_text(&self, name: &str) -> String {
        let jpg = tmp("display", &format!("{name}.jpg"));
        let _ = std::fs::remove_file(&jpg);
        let o = Command::new("vncsnapshot")
            .args(["-quiet", "-allowblank", "-quality", "100"])
            .arg(format!("127.0.0.1:{}", self.display))
            .arg(&jpg)
            .output()
            .unwrap();
        assert!(o.status.success(), "vncsnapshot: {}", String::from_utf8_lossy(&o.stderr));
        let o = Command::new("tesseract").arg(&jpg).arg("-").output().unwrap();
        assert!(o.status.success(), "tesseract: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until the OCR'd screen holds `text`; the screen's text.
    fn wait_screen(&self, name: &str, text: &str, secs: u64) -> String {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let seen = self.screen_text(name);
            if seen.contains(text) {
                return seen;
            }
            assert!(Instant::now() < until, "the screen shows {text:?} within {secs} s; OCR read:\n{seen}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits for the process to end; its status and stderr.
    fn wait(mut self, secs: u64) -> (Option<i32>, String) {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                return (status.code(), err);
            }
            assert!(Instant::now() < until, "ferrovm ends within {secs} s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A QMP client.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    /// Connects and negotiates capabilities; checks the greeting.
    fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).expect("QMP connects");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut q = Qmp { r: BufReader::new(s.try_clone().unwrap()), w: s };
        let greeting = q.line();
        assert!(greeting.starts_with(r#"{"QMP":"#) && greeting.contains(r#""qemu":{"#), "greeting: {greeting}");
        assert_eq!(q.cmd(r#"{"execute":"qmp_capabilities"}"#), r#"{"return":{}}"#);
        q
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("a QMP line");
        l.trim().to_string()
    }

    /// Sends `json` and returns the reply, skipping events.
    fn cmd(&mut self, json: &str) -> String {
        writeln!(self.w, "{json}").unwrap();
        loop {
            let l = self.line();
            if !l.starts_with(r#"{"event""#) {
                return l;
            }
        }
    }
}

/// An RFB client, past the handshake: (stream, width, height).
fn rfb_connect(display: u16, password: Option<&str>) -> Result<(TcpStream, u16, u16), String> {
    let mut s = TcpStream::connect(("127.0.0.1", 5900 + display)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    assert_eq!(&version, b"RFB 003.008\n");
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    let mut types = vec![0u8; usize::from(n[0])];
    s.read_exact(&mut types).unwrap();
    match password {
        None => {
            assert!(types.contains(&1), "security None offered: {types:?}");
            s.write_all(&[1]).unwrap();
        }
        Some(p) => {
            assert!(types.contains(&2), "VNC authentication offered: {types:?}");
            s.write_all(&[2]).unwrap();
            let mut challenge = [0u8; 16];
            s.read_exact(&mut challenge).unwrap();
            s.write_all(&vnc::vnc_auth_response(p, &challenge)).unwrap();
        }
    }
    let mut result = [0u8; 4];
    s.read_exact(&mut result).unwrap();
    if result != [0; 4] {
        let mut len = [0u8; 4];
        let reason = match s.read_exact(&mut len) {
            Ok(()) => {
                let mut r = vec![0u8; u32::from_be_bytes(len).min(1024) as usize];
                s.read_exact(&mut r).unwrap();
                String::from_utf8_lossy(&r).into_owned()
            }
            Err(_) => String::new(),
        };
        return Err(format!("refused: {reason}"));
    }
    s.write_all(&[1]).unwrap();
    let mut init = [0u8; 24];
    s.read_exact(&mut init).unwrap();
    let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    let mut name = vec![0u8; name_len];
    s.read_exact(&mut name).unwrap();
    Ok((s, u16::from_be_bytes([init[0], init[1]]), u16::from_be_bytes([init[2], init[3]])))
}

/// Types `keysyms` (pressed and released) as RFB key events.
fn type_keys(s: &mut TcpStream, keysyms: &[u32]) {
    for &k in keysyms {
        for down in [1u8, 0] {
            let mut m = vec![4, down, 0, 0];
            m.extend(k.to_be_bytes());
            s.write_all(&m).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
    }
}

#[test]
fn the_bios_banner_reaches_a_vnc_client_and_qmp_drives_the_run() {
    if !tools() {
        return;
    }
    let vm = Vm::start("banner", "", &["--bios", SEABIOS]);
    let t = Instant::now();
    let seen = vm.wait_screen("banner", "SeaBIOS", 60);
    eprintln!("OCR of the BIOS screen after {:.1} s:\n{seen}", t.elapsed().as_secs_f64());
    // `ferrovm screendump` through the QMP socket (one client at a time).
    let cli_png = tmp("display", "cli.png");
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["screendump", "--qmp"])
        .arg(&vm.qmp)
        .arg(&cli_png)
        .output()
        .unwrap();
    assert!(o.status.success(), "ferrovm screendump: {}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&cli_png).unwrap().starts_with(b"\x89PNG"), "a PNG from the file's extension");
    let mut q = Qmp::connect(&vm.qmp);
    assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""status":"running""#));
    // The screen as a PNG file: a 720x400 text mode.
    let png = tmp("display", "banner.png");
    let reply =
        q.cmd(&format!(r#"{{"execute":"screendump","arguments":{{"filename":"{}","format":"png"}}}}"#, png.display()));
    assert_eq!(reply, r#"{"return":{}}"#);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) =
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (720, 400), "text mode 3 at 9x16 glyphs");
    let ppm = tmp("display", "banner.ppm");
    assert_eq!(
        q.cmd(&format!(r#"{{"execute":"screendump","arguments":{{"filename":"{}"}}}}"#, ppm.display())),
        r#"{"return":{}}"#
    );
    assert!(std::fs::read(&ppm).unwrap().starts_with(b"P6\n720 400\n255\n"), "PPM by default, as QEMU");
    // Bad input is answered, and the connection stays.
    assert!(q.cmd(r#"{"execute":"no-such-command"}"#).contains("CommandNotFound"));
    assert!(q.cmd(r#"{"execute": "stop", oops}"#).contains("GenericError"));
    assert!(q.cmd(r#"{"execute":"screendump"}"#).contains("Parameter 'filename' is missing"));
    // Stopped, the screen holds still and the status says so.
    assert_eq!(q.cmd(r#"{"execute":"stop"}"#), r#"{"return":{}}"#);
    assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""status":"paused""#));
    assert_eq!(q.cmd(r#"{"execute":"cont"}"#), r#"{"return":{}}"#);
    assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""running":true"#));
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    let (status, err) = vm.wait(20);
    assert_eq!(status, Some(0), "quit ends the run: {err}");
}

#[test]
fn a_vnc_password_is_set_over_qmp_and_a_wrong_one_is_refused() {
    if !tools() {
        return;
    }
    let vm = Vm::start("password", ",password=on", &["--bios", SEABIOS]);
    let refused = rfb_connect(vm.display, Some("")).expect_err("no password set yet: every client is refused");
    eprintln!("before set_password: {refused}");
    let mut q = Qmp::connect(&vm.qmp);
    let set = r#"{"execute":"set_password","arguments":{"protocol":"vnc","password":"s3cret"}}"#;
    assert_eq!(q.cmd(set), r#"{"return":{}}"#);
    let wrong = rfb_connect(vm.display, Some("guess")).expect_err("a wrong password is refused");
    eprintln!("a wrong password: {wrong}");
    let (_s, w, h) = rfb_connect(vm.display, Some("s3cret")).expect("the right password is taken");
    assert!(w > 0 && h > 0, "a screen of {w}x{h}");
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    vm.wait(20);
}

/// Puts `/keyboard.txt` on the test disk's ext4 partition: the guest then
/// waits for a word typed on its console.
fn ask_for_a_word(disk: &Path) {
    let at = partition_offset(disk, 2);
    let f = disk.with_extension("kbd");
    std::fs::write(&f, "type a word\n").unwrap();
    sh(&format!("debugfs -w -R 'write {} keyboard.txt' '{}?offset={at}'", f.display(), disk.display()));
    let _ = std::fs::remove_file(&f);
}

#[test]
fn linux_shows_its_vga_console_and_takes_keys_typed_over_vnc() {
    if !tools() {
        return;
    }
    let Some(src) = test_disk() else { return };
    let disk = tmp("display", "disk.img");
    std::fs::copy(&src, &disk).unwrap();
    set_mib(&disk, 1);
    ask_for_a_word(&disk);
    let spec = format!("{},format=raw", disk.display());
    let vm = Vm::start("linux", "", &["--disk", &spec]);
    let t = Instant::now();
    vm.wait_serial("T:type a word", 240);
    assert!(vm.serial().contains("T:tty0"), "the guest wrote to tty0");
    // OCR of the VGA font reads "V" as "U" at times: the words around it.
    let seen = vm.wait_screen("linux", "this line is on the", 30);
    assert!(seen.contains("console"), "OCR read:\n{seen}");
    eprintln!("OCR of Linux's VGA console after {:.1} s:\n{seen}", t.elapsed().as_secs_f64());
    let (mut s, w, h) = rfb_connect(vm.display, None).expect("a VNC client connects");
    eprintln!("VNC screen {w}x{h}");
    // "ferro42" and Return, as X11 keysyms.
    let word: Vec<u32> = "ferro42".bytes().map(u32::from).chain([0xff0d]).collect();
    type_keys(&mut s, &word);
    vm.wait_serial("T:typed ferro42", 60);
    vm.wait_serial("T:unmounted", 120);
    let (status, err) = vm.wait(60);
    assert_eq!(status, Some(0), "the guest powers off: {err}");
    let _ = std::fs::remove_file(&disk);
}
