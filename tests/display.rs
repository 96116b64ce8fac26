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
//! - noVNC (Debian's `novnc`) in headless Chromium opens the server's
//!   WebSocket and shows the screen; OCR of the browser's screenshot must
//!   hold the BIOS banner.
//! - A USB tablet (`--usb-device tablet`, QEMU's `-usb -device
//!   usb-tablet`) reaches Linux's input layer: uhci-hcd enumerates it,
//!   usbhid makes it an input device, and the pointer a VNC client moves
//!   comes out of its `/dev/input/event*` as absolute (EV_ABS) events.
//! - A USB mouse (`--usb-device mouse`, QEMU's `-device usb-mouse`) the
//!   same way, its motion coming out as relative (EV_REL) events.
//! - `-vnc unix:PATH`: the server listens on a Unix socket (replacing a
//!   stale one), a client reads the screen through it, and the socket is
//!   gone after `quit`.
//! - A VNC server with `password=on` refuses every client until a password
//!   is set over QMP, then refuses a wrong one and takes the right one.
//! - Linux's bochs DRM driver (the generic kernel's modules) drives the
//!   standard VGA: fbcon comes up at the EDID's preferred 1024x768, the
//!   VNC client is told that size, and OCR reads a line written to tty0.
//! - `ferrovm demo --vnc`: the built-in guest sets text mode 3 itself and
//!   its lines show on the VGA; OCR reads them on the last run's screen.
//!
//! Without vncsnapshot, tesseract, SeaBIOS (or, for the browser test,
//! novnc and chromium) the tests say so and are skipped; scripts/test.sh
//! installs them.

#[path = "guest/bios_disk.rs"]
mod bios_disk;
#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/qmp.rs"]
mod qmp;
#[path = "guest/run.rs"]
#[allow(dead_code, reason = "this suite spawns ferrovm itself")]
mod run;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bios_disk::{partition_offset, seabios, set_mib, sh, test_disk};
use qmp::Qmp;
use run::{free_display, tmp};
use vnc::client::{Client, ClientEncoding};

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

/// A running ferrovm with COM1 in a file and a QMP socket.
struct Vm {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
    display: u16,
}

impl Vm {
    fn start(name: &str, vnc_options: &str, args: &[&str]) -> Vm {
        let display = free_display();
        Vm::start_on(name, &format!("127.0.0.1:{display}{vnc_options}"), display, args)
    }

    /// A run with `--vnc vnc`; `display` is its number for TCP clients.
    fn start_on(name: &str, vnc: &str, display: u16, args: &[&str]) -> Vm {
        let serial = tmp("display", &format!("{name}.serial"));
        let qmp = tmp("display", &format!("{name}.qmp"));
        let _ = std::fs::remove_file(&serial);
        let serial_arg = format!("file:{}", serial.display());
        let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
        let mut all = vec!["run", "--accel", "jit", "--mem", "256M", "--vnc", vnc, "--serial", &serial_arg];
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
        ocr(&jpg, &[])
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
        // A failed test shows what the emulator said.
        if std::thread::panicking() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            eprintln!("ferrovm's stderr:\n{err}");
        }
    }
}

/// The text OCR (tesseract, with `args`) reads in the picture at `image`.
fn ocr(image: &Path, args: &[&str]) -> String {
    let o = Command::new("tesseract").arg(image).arg("-").args(args).output().unwrap();
    assert!(o.status.success(), "tesseract: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The screen a VNC client holds, read by OCR (tesseract) as dark text on
/// white, three times its size and with a margin: the built-in guest's
/// small font at the screen's edge is read far better so.
fn ocr_scaled(c: &Client, name: &str) -> String {
    const SCALE: usize = 3;
    const MARGIN: usize = 24;
    let (w, h) = (usize::from(c.size.0), usize::from(c.size.1));
    let (sw, sh) = (w * SCALE + 2 * MARGIN, h * SCALE + 2 * MARGIN);
    let mut img = format!("P5\n{sw} {sh}\n255\n").into_bytes();
    let start = img.len();
    img.resize(start + sw * sh, 255);
    for y in 0..h * SCALE {
        for x in 0..w * SCALE {
            let p = c.pixels[(y / SCALE) * w + x / SCALE];
            let luma = (((p >> 16) & 0xff) * 3 + ((p >> 8) & 0xff) * 6 + (p & 0xff)) / 10;
            img[start + (y + MARGIN) * sw + x + MARGIN] = 255 - luma as u8;
        }
    }
    let pgm = tmp("display", &format!("{name}.pgm"));
    std::fs::write(&pgm, img).unwrap();
    // One column of lines of one size (--psm 4).
    ocr(&pgm, &["--psm", "4"])
}

/// A VNC client of the VM's display.
fn rfb_connect(display: u16, password: Option<&str>) -> std::io::Result<Client> {
    Client::connect(([127, 0, 0, 1], 5900 + display).into(), password, ClientEncoding::Raw)
}

/// Types `keysyms` (pressed and released) as RFB key events.
fn type_keys(c: &mut Client, keysyms: &[u32]) {
    for &k in keysyms {
        for down in [true, false] {
            c.key(k, down).unwrap();
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
    assert!(q.greeting.contains(r#""qemu":{"#), "greeting: {}", q.greeting);
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
    let refused = rfb_connect(vm.display, Some("")).err().expect("no password set yet: every client is refused");
    eprintln!("before set_password: {refused}");
    let mut q = Qmp::connect(&vm.qmp);
    let set = r#"{"execute":"set_password","arguments":{"protocol":"vnc","password":"s3cret"}}"#;
    assert_eq!(q.cmd(set), r#"{"return":{}}"#);
    let wrong = rfb_connect(vm.display, Some("guess")).err().expect("a wrong password is refused");
    eprintln!("a wrong password: {wrong}");
    // After a failure, every attempt is refused for a second, even the right one.
    let t = Instant::now();
    let locked = rfb_connect(vm.display, Some("s3cret")).err().expect("refused right after a failure");
    assert!(locked.to_string().contains("Too many authentication failures"), "{locked}");
    let mut c = loop {
        match rfb_connect(vm.display, Some("s3cret")) {
            Ok(c) => break c,
            Err(e) => assert!(t.elapsed() < Duration::from_secs(3), "the lock-out ends: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(t.elapsed() >= Duration::from_millis(800), "taken only after the lock-out: {:?}", t.elapsed());
    // The BIOS draws its banner soon; updates come as it does.
    c.request(false).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        c.read_update().unwrap();
        if c.pixels.iter().any(|&p| p != 0) {
            break;
        }
        assert!(Instant::now() < until, "the screen ({:?}) shows something within 60 s", c.size);
        c.request(true).unwrap();
    }
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    vm.wait(20);
}

#[test]
fn a_vnc_client_reads_the_screen_over_a_unix_socket() {
    if !seabios() {
        return;
    }
    let sock = tmp("display", "vnc.sock");
    let _ = std::fs::remove_file(&sock);
    // A socket left by a server that is gone is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let vnc = format!("unix:{},password=on", sock.display());
    let vm = Vm::start_on("unix", &vnc, 0, &["--bios", SEABIOS]);
    let mut q = Qmp::connect(&vm.qmp);
    let set = r#"{"execute":"set_password","arguments":{"protocol":"vnc","password":"s0ck"}}"#;
    assert_eq!(q.cmd(set), r#"{"return":{}}"#);
    let mut c =
        Client::connect_unix(&sock, Some("s0ck"), ClientEncoding::Raw).expect("a client connects over the socket");
    // SeaBIOS's text screen: 720x400, with its banner drawn in white and
    // grey on black.
    let until = Instant::now() + Duration::from_secs(60);
    c.request(false).unwrap();
    loop {
        c.read_update().unwrap();
        let lit = c.pixels.iter().filter(|&&p| p & 0x00ff_ffff != 0).count();
        if c.size == (720, 400) && lit > 500 {
            eprintln!("{lit} lit pixels of {:?} over the Unix socket", c.size);
            break;
        }
        assert!(Instant::now() < until, "the text screen ({:?}, {lit} lit) within 60 s", c.size);
        c.request(true).unwrap();
    }
    drop(c);
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    let (status, err) = vm.wait(20);
    assert_eq!(status, Some(0), "quit ends the run: {err}");
    assert!(std::fs::symlink_metadata(&sock).is_err(), "the socket is removed at exit");
    // A path holding another kind of file is refused, and the file stays.
    std::fs::write(&sock, b"not a socket").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--mem", "64M", "--bios", SEABIOS, "--vnc", &format!("unix:{}", sock.display())])
        .args(["--serial", "none", "--timeout", "10"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
    let _ = std::fs::remove_file(&sock);
}

/// A TCP port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Debian's noVNC page, and the browser that loads it.
const NOVNC_PAGE: &str = "/usr/share/novnc/vnc_lite.html";

#[test]
fn novnc_in_headless_chromium_shows_the_guest_screen_over_websocket() {
    if !tools() {
        return;
    }
    if !Path::new(NOVNC_PAGE).is_file() {
        eprintln!("skipping: {NOVNC_PAGE} is missing (Debian package novnc)");
        return;
    }
    if Command::new("chromium").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        eprintln!("skipping: chromium is not installed (Debian package chromium)");
        return;
    }
    let ws = free_port();
    let vm = Vm::start("novnc", &format!(",websocket={ws}"), &["--bios", SEABIOS]);
    vm.wait_screen("novnc-vnc", "SeaBIOS", 60);
    // The page comes from the disk; noVNC's modules load from file:// with
    // --allow-file-access-from-files, and the page opens the VNC server's
    // WebSocket itself: no proxy.
    let url = format!("file://{NOVNC_PAGE}?host=127.0.0.1&port={ws}");
    let shot = tmp("display", "novnc.png");
    let profile = tmp("display", "chromium-profile");
    let mut seen = String::new();
    for attempt in 1..=3 {
        let _ = std::fs::remove_file(&shot);
        let o = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"])
            .args(["--window-size=900,600", "--virtual-time-budget=5000"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url)
            .output()
            .unwrap();
        assert!(shot.is_file(), "chromium wrote a screenshot: {}", String::from_utf8_lossy(&o.stderr));
        seen = ocr(&shot, &[]);
        if seen.contains("SeaBIOS") {
            eprintln!("OCR of the browser's screenshot (attempt {attempt}):\n{seen}");
            break;
        }
    }
    assert!(seen.contains("SeaBIOS"), "noVNC shows the guest's screen; OCR read:\n{seen}");
    let _ = std::fs::remove_dir_all(&profile);
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
    let mut c = rfb_connect(vm.display, None).expect("a VNC client connects");
    eprintln!("VNC screen {:?}", c.size);
    // "ferro42" and Return, as X11 keysyms.
    let word: Vec<u32> = "ferro42".bytes().map(u32::from).chain([0xff0d]).collect();
    type_keys(&mut c, &word);
    vm.wait_serial("T:typed ferro42", 60);
    vm.wait_serial("T:unmounted", 120);
    let (status, err) = vm.wait(60);
    assert_eq!(status, Some(0), "the guest powers off: {err}");
    let _ = std::fs::remove_file(&disk);
}

/// The generic kernel's modules for a USB tablet on the UHCI controller,
/// in insmod order.
const USB_MODULES: &[&str] = &["usb-common", "usbcore", "uhci-hcd", "hid", "usbhid", "hid-generic", "evdev"];

/// What the guest runs: load the drivers, wait for the tablet, and dump
/// the first input events it reports.
const TABLET_SCRIPT: &str = r#"
for m in usb-common usbcore uhci-hcd hid usbhid hid-generic evdev; do
    insmod /lib/modules/$m.ko || echo "T:insmod $m failed"
done
i=0
while ! grep -q "USB Tablet" /proc/bus/input/devices && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
grep -B1 -A8 "USB Tablet" /proc/bus/input/devices | sed 's/^/T:dev /'
ev=$(grep -A8 "USB Tablet" /proc/bus/input/devices | grep -o 'event[0-9]*' | head -1)
echo "T:tablet $ev"
dd if=/dev/input/$ev bs=24 count=6 2>/dev/null | od -An -tx1 -v | tr -s ' \n' '  ' | sed 's/^/T:events /'
echo
echo "T:done"
"#;

/// An input event as the guest read it: type, code and value.
type InputEvent = (u16, u16, i32);

/// The input events (type, code) in the guest's `T:events` line: struct
/// input_event on x86-64 is 16 bytes of time, then type, code (16 bits
/// each) and a 32-bit value.
fn input_events(out: &str) -> Vec<InputEvent> {
    let events = out.lines().find_map(|l| l.strip_prefix("T:events ")).expect("the guest read events");
    let words: Vec<u8> = events.split_whitespace().map(|w| u8::from_str_radix(w, 16).unwrap()).collect();
    words
        .chunks_exact(24)
        .map(|e| {
            (
                u16::from_le_bytes([e[16], e[17]]),
                u16::from_le_bytes([e[18], e[19]]),
                i32::from_le_bytes([e[20], e[21], e[22], e[23]]),
            )
        })
        .collect()
}

/// The initramfs with `modules` appended (decompressed, in lib/modules).
fn initrd_with(images: &Path, modules: &[&str], name: &str) -> PathBuf {
    let initrd = tmp("display", &format!("{name}.cpio.gz"));
    images::initrd_with_modules(images, modules, &tmp("display", &format!("{name}-mods")), &initrd);
    initrd
}

/// Boots the generic kernel with the USB HID pointer `device` (`tablet`
/// or `mouse`, which Linux lists as `USB {name}`), moves the pointer over
/// VNC to `at(i, screen size)` for moves `i` = 0..6, and returns the input
/// events the guest read (type, code, value) and its serial output. The
/// guest reads six events and powers off, which may close the connection
/// before the last moves are sent: at least `min_moves` must get through.
fn usb_pointer_events(
    device: &str,
    name: &str,
    min_moves: u16,
    at: impl Fn(u16, (u16, u16)) -> (u16, u16),
) -> Option<(Vec<InputEvent>, String)> {
    if !tools() {
        return None;
    }
    let dir = images::images(&["vmlinuz-generic", "initramfs.cpio.gz", "modules-generic/modules.order"])?;
    let initrd = initrd_with(&dir, USB_MODULES, &format!("usb-{device}"));
    let script =
        TABLET_SCRIPT.replace("USB Tablet", &format!("USB {name}")).replace("T:tablet", &format!("T:{device}"));
    let append = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(script.as_bytes()));
    let kernel = dir.join("vmlinuz-generic");
    let args = ["--usb-device", device, "--kernel", kernel.to_str().unwrap(), "--initrd", initrd.to_str().unwrap()];
    let vm = Vm::start(&format!("usb-{device}"), "", &[&args[..], &["--append", &append]].concat());
    vm.wait_serial(&format!("T:{device} event"), 240);
    assert!(vm.serial().contains(&format!("QEMU USB {name}")), "the {device}'s name:\n{}", vm.serial());
    let mut c = rfb_connect(vm.display, None).expect("a VNC client connects");
    c.request(false).unwrap();
    let _ = c.read_update();
    eprintln!("screen {}x{}", c.size.0, c.size.1);
    for i in 0..6u16 {
        let (x, y) = at(i, c.size);
        if c.pointer(x, y, 0).is_err() {
            assert!(i >= min_moves, "the connection closed after {i} moves");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    vm.wait_serial("T:done", 60);
    let out = vm.serial();
    for l in out.lines().filter(|l| l.starts_with("T:")) {
        eprintln!("{l}");
    }
    assert!(!out.contains("T:insmod"), "the modules load:\n{out}");
    let events = input_events(&out);
    eprintln!("input events (type, code, value): {events:?}");
    let (status, err) = vm.wait(60);
    assert_eq!(status, Some(0), "the guest powers off: {err}");
    Some((events, out))
}

#[test]
fn a_usb_tablet_moved_over_vnc_reaches_linux_input_layer() {
    let Some((events, out)) = usb_pointer_events("tablet", "Tablet", 2, |i, (w, h)| (w / 8 * (i + 1), h / 8 * (i + 1)))
    else {
        return;
    };
    // EV_ABS (3) with ABS_X (0) and ABS_Y (1).
    let has = |code| events.iter().any(|&(t, c, _)| (t, c) == (3, code));
    assert!(has(0) && has(1), "EV_ABS X and Y from the tablet: {events:?}\n{out}");
}

#[test]
fn a_usb_mouse_moved_over_vnc_reaches_linux_input_layer_as_relative_motion() {
    // The first position only sets where the pointer is; each move after
    // it is 10 right and 5 down.
    let Some((events, out)) = usb_pointer_events("mouse", "Mouse", 3, |i, _| (100 + 10 * i, 80 + 5 * i)) else {
        return;
    };
    // EV_REL (2): REL_X (0) right, REL_Y (1) down; no EV_ABS (3).
    assert!(events.iter().any(|&(t, c, v)| (t, c) == (2, 0) && v > 0), "EV_REL X from the mouse: {events:?}\n{out}");
    assert!(events.iter().any(|&(t, c, v)| (t, c) == (2, 1) && v > 0), "EV_REL Y from the mouse: {events:?}\n{out}");
    assert!(events.iter().all(|&(t, _, _)| t != 3), "a mouse reports no absolute axes: {events:?}");
}

#[test]
fn the_curses_display_draws_the_bios_text_on_the_terminal() {
    if !seabios() {
        return;
    }
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--accel", "jit", "--mem", "64M", "--bios", SEABIOS, "--display", "curses"])
        .args(["--serial", "none", "--timeout", "6"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(124), "the run ends at the timeout: {}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("\x1b[2J"), "the terminal is cleared for the text mode: {out:?}");
    // Light grey on black (VGA attribute 07): ANSI 37 on 40.
    assert!(out.contains("\x1b[0;37;40mSeaBIOS (version"), "the banner in the BIOS's colours: {out:?}");
    // COM1 on stdio as well would mix two outputs on one terminal.
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--bios", SEABIOS, "--display", "curses"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("put COM1 elsewhere"));
}

/// Debian's GRUB rescue CD (grub-rescue-pc).
const GRUB_ISO: &str = "/usr/lib/grub-rescue/grub-rescue-cdrom.iso";

#[test]
fn qmp_ejects_and_changes_the_cdrom() {
    if !tools() {
        return;
    }
    if !Path::new(GRUB_ISO).is_file() {
        eprintln!("skipping: {GRUB_ISO} is missing (Debian package grub-rescue-pc)");
        return;
    }
    let vm = Vm::start("cdrom", "", &["--cdrom", GRUB_ISO, "--boot", "d"]);
    let mut q = Qmp::connect(&vm.qmp);
    let block = q.cmd(r#"{"execute":"query-block"}"#);
    assert!(block.contains(r#""device":"ide1-cd0""#) && block.contains(r#""inserted""#), "{block}");
    assert!(q.cmd(r#"{"execute":"eject","arguments":{"device":"ide1-cd9"}}"#).contains("DeviceNotFound"));
    // The guest may lock the tray; force as QEMU's users do.
    assert_eq!(q.cmd(r#"{"execute":"eject","arguments":{"device":"ide1-cd0","force":true}}"#), r#"{"return":{}}"#);
    let block = q.cmd(r#"{"execute":"query-block"}"#);
    assert!(block.contains(r#""device":"ide1-cd0""#) && !block.contains(r#""inserted""#), "empty: {block}");
    let change = format!(
        r#"{{"execute":"blockdev-change-medium","arguments":{{"device":"ide1-cd0","filename":"{GRUB_ISO}","format":"raw"}}}}"#
    );
    assert_eq!(q.cmd(&change), r#"{"return":{}}"#);
    let block = q.cmd(r#"{"execute":"query-block"}"#);
    assert!(block.contains(r#""inserted""#), "a disc again: {block}");
    let missing =
        r#"{"execute":"blockdev-change-medium","arguments":{"device":"ide1-cd0","filename":"/nonexistent.iso"}}"#;
    assert!(q.cmd(missing).contains("/nonexistent.iso"), "a missing image is named");
    // The same through HMP.
    let hmp = q.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"info block"}}"#);
    assert!(hmp.contains("ide1-cd0"), "{hmp}");
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    vm.wait(20);
}

/// The generic kernel's modules for the bochs DRM driver, in insmod order
/// (each after the modules its `depends=` names: bochs needs
/// drm_vram_helper, which needs drm_ttm_helper, ttm, drm_kms_helper and
/// drm).
const BOCHS_MODULES: &[&str] = &["drm", "drm_kms_helper", "ttm", "drm_ttm_helper", "drm_vram_helper", "bochs"];

/// The line the guest writes on its framebuffer console.
const BOCHS_LINE: &str = "ferrovm draws this line through the bochs drm framebuffer";

/// What the guest runs: load the DRM stack and bochs, wait for its
/// framebuffer, and write a line on the console (tty0) fbcon draws there.
/// bochs's own fallback mode (`defx`/`defy`, used when the adapter has no
/// EDID) is set to 800x600, so a 1024x768 screen is the EDID's preferred
/// mode. The guest then waits; the test ends the run over QMP.
fn bochs_script() -> String {
    format!(
        r#"
for m in drm drm_kms_helper ttm drm_ttm_helper drm_vram_helper; do
    insmod /lib/modules/$m.ko || echo "T:insmod $m failed"
done
insmod /lib/modules/bochs.ko defx=800 defy=600 || echo "T:insmod bochs failed"
i=0
while [ ! -e /sys/class/graphics/fb0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "T:fb0 $(cat /sys/class/graphics/fb0/name) $(cat /sys/class/graphics/fb0/virtual_size)"
printf '\033[2J\033[H\n\n{BOCHS_LINE}\n' > /dev/tty0
echo "T:written"
sleep 600
"#
    )
}

#[test]
fn linux_bochs_drm_framebuffer_console_at_1024x768_reaches_a_vnc_client() {
    if !tools() {
        return;
    }
    let Some(dir) = images::images(&["vmlinuz-generic", "initramfs.cpio.gz", "modules-generic/modules.order"]) else {
        return;
    };
    let initrd = initrd_with(&dir, BOCHS_MODULES, "bochs");
    let append = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(bochs_script().as_bytes()));
    let kernel = dir.join("vmlinuz-generic");
    let args = ["--kernel", kernel.to_str().unwrap(), "--initrd", initrd.to_str().unwrap(), "--append", &append];
    let vm = Vm::start("bochs", "", &args);
    let t = Instant::now();
    vm.wait_serial("T:written", 240);
    for l in vm.serial().lines().filter(|l| l.starts_with("T:")) {
        eprintln!("{l}");
    }
    // The words of the line; OCR of fbcon's 8x16 font reads "m" as "n" at
    // times, and "v" as "u".
    let seen = vm.wait_screen("bochs", "this line through the bochs drm", 60);
    assert!(seen.contains("buffer"), "OCR read:\n{seen}");
    eprintln!("OCR of the bochs framebuffer console after {:.1} s:\n{seen}", t.elapsed().as_secs_f64());
    // A client that connects now is told the picture's size, and gets
    // lit pixels of the console's text in it.
    let mut c = rfb_connect(vm.display, None).expect("a VNC client connects");
    assert_eq!(c.size, (1024, 768), "the EDID's preferred mode, not bochs's 800x600 fallback");
    c.request(false).unwrap();
    c.read_update().unwrap();
    let lit = c.pixels.iter().filter(|&&p| p & 0x00ff_ffff != 0).count();
    eprintln!("VNC screen {:?}, {lit} lit pixels", c.size);
    assert!(lit > 1000, "the console's text is drawn: {lit} lit pixels");
    drop(c);
    let mut q = Qmp::connect(&vm.qmp);
    assert_eq!(q.cmd(r#"{"execute":"quit"}"#), r#"{"return":{}}"#);
    let (status, err) = vm.wait(20);
    assert_eq!(status, Some(0), "quit ends the run: {err}");
}

/// `ferrovm demo --vnc`: the built-in guest, which has no VGA BIOS, sets
/// text mode 3 on the standard VGA itself and writes its lines there as
/// well as on COM1; one VNC server shows each run in turn, and after the
/// table the last guest's screen stays up until Enter.
#[test]
fn the_demo_shows_the_builtin_guest_text_to_a_vnc_client() {
    use std::io::{BufRead, Write};
    if !tools() {
        return;
    }
    let display = free_display();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["demo", "--vnc", &format!("127.0.0.1:{display}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrovm starts");
    let t = Instant::now();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("press Enter") {
        assert!(err.read_line(&mut said).unwrap() > 0, "the demo waits with its screen up; it said:\n{said}");
    }
    let mut c = rfb_connect(display, None).expect("a VNC client connects");
    assert_eq!(c.size, (720, 400), "text mode 3 at 9x16 cells");
    c.request(false).unwrap();
    c.read_update().unwrap();
    let seen = ocr_scaled(&c, "demo");
    eprintln!("OCR of the demo's last screen after {:.1} s:\n{seen}", t.elapsed().as_secs_f64());
    // OCR of the 8x8 font reads "r" as "p" and "v" as "y" at times: the
    // words without them.
    for words in ["guest: ", "protected -", "mode ok", "guest: checksum"] {
        assert!(seen.contains(words), "the screen shows {words:?}; OCR read:\n{seen}");
    }
    drop(c);
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "Enter ends the demo, every checksum ok:\n{out}");
    for accel in ["interp", "jit"] {
        let row = out.lines().find(|l| l.starts_with(accel)).unwrap_or_else(|| panic!("a {accel} row:\n{out}"));
        assert!(row.trim_end().ends_with("ok"), "{row}");
    }
}
