//! The machine's screen and its input: the standard VGA's picture for VNC
//! clients and screendumps, and their keys and pointer for the guest's
//! PS/2 keyboard and mouse.
//!
//! [`Screen`] is the one reader of the adapter's picture. The adapter keeps
//! track of what changed since its last render; the screen renders into a
//! frame of its own and hands the changed rectangles to the VNC server's
//! refresh thread ([`VgaSource`]). A screendump renders through the same
//! screen, and the rectangles it brought up to date stay pending for the
//! server, so neither reader steals changes from the other.
//!
//! Keys arrive as X11 keysyms and go to the keyboard as scancode set 1
//! make codes (`vnc::keysym_to_set1`); the i8042 presents them in the set
//! the guest asked for. VNC's pointer is absolute; a USB tablet takes it
//! as it is, and a relative mouse (a USB mouse, else the PS/2 mouse) gets
//! from [`GuestInput`] the difference from the last position, so the
//! guest's pointer follows the client's as long as the guest does not
//! accelerate or clamp it. As in QEMU, the tablet wins when there are both.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use devices::display::StdVga;
use devices::legacy::i8042::I8042;
use devices::usb::Uhci;
use parking_lot::Mutex;

/// The format of a screendump file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// Binary PPM (P6), QEMU's default.
    Ppm,
    /// PNG.
    Png,
}

impl DumpFormat {
    /// Parses QEMU's `format` argument of `screendump`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ppm" => Ok(Self::Ppm),
            "png" => Ok(Self::Png),
            _ => Err(format!("screendump format '{s}' is not supported (ppm or png)")),
        }
    }
}

/// How often, and how long apart, a refresh looks again for VRAM pages
/// whose write sync is not answered yet ([`StdVga::vram_settling`]).
const SETTLE_TRIES: usize = 4;
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_micros(250);

/// The adapter's picture, rendered for every reader.
pub struct Screen {
    /// The adapter shown; [`Screen::show`] puts another in its place.
    vga: Mutex<Arc<Mutex<StdVga>>>,
    inner: Mutex<Rendered>,
}

#[derive(Default)]
struct Rendered {
    frame: vnc::Frame,
    /// Rectangles a screendump brought up to date that the VNC server has
    /// not taken yet.
    pending: Vec<vnc::Rect>,
    /// Whether the frame changed size since the server's last update.
    resized: bool,
}

impl Screen {
    /// The screen of `vga`.
    pub fn new(vga: Arc<Mutex<StdVga>>) -> Arc<Self> {
        Arc::new(Self { vga: Mutex::new(vga), inner: Mutex::new(Rendered::default()) })
    }

    /// Shows `vga` from now on, in place of the adapter shown so far (the
    /// demo's machines, one after another, on one VNC server): its whole
    /// picture goes to the clients with the next update.
    pub fn show(&self, vga: Arc<Mutex<StdVga>>) {
        let mut r = self.inner.lock();
        vga.lock().mark_all_dirty();
        *self.vga.lock() = vga;
        r.resized = true;
    }

    /// Renders the adapter's changes into the screen's frame.
    fn refresh(&self, r: &mut Rendered) -> Vec<vnc::Rect> {
        let vga = Arc::clone(&self.vga.lock());
        let (mut w, mut h, mut rects) = vga.lock().render(&mut r.frame.pixels);
        // Stores the guest made through translated code's entries for the
        // VRAM land before the vCPUs answer a write sync, which they do
        // within microseconds when they run: look again for those pages
        // (a parked vCPU is answered for at once).
        for _ in 0..SETTLE_TRIES {
            if !vga.lock().vram_settling() {
                break;
            }
            std::thread::sleep(SETTLE_WAIT);
            let (nw, nh, more) = vga.lock().render(&mut r.frame.pixels);
            (w, h) = (nw, nh);
            rects.extend(more);
        }
        if (w, h) != (r.frame.width, r.frame.height) {
            r.frame.width = w;
            r.frame.height = h;
            r.resized = true;
        }
        rects.into_iter().map(|d| vnc::Rect { x: d.x, y: d.y, w: d.w, h: d.h }).collect()
    }

    /// The size of the picture as last rendered.
    pub fn size(&self) -> (u32, u32) {
        let r = self.inner.lock();
        (r.frame.width, r.frame.height)
    }

    /// The picture now.
    pub fn frame(&self) -> vnc::Frame {
        let mut r = self.inner.lock();
        let rects = self.refresh(&mut r);
        r.pending.extend(rects);
        r.frame.clone()
    }

    /// Writes the picture now to `path` as `format`.
    pub fn dump(&self, path: &Path, format: DumpFormat) -> std::io::Result<()> {
        let frame = self.frame();
        if frame.width == 0 || frame.height == 0 {
            return Err(std::io::Error::other("the display shows nothing yet (no mode is set)"));
        }
        match format {
            DumpFormat::Ppm => vnc::write_ppm(&frame, path),
            DumpFormat::Png => vnc::write_png(&frame, path),
        }
    }

    /// The VNC server's source of frames.
    pub fn source(self: &Arc<Self>) -> VgaSource {
        VgaSource { screen: Arc::clone(self) }
    }
}

/// The VNC server's view of a [`Screen`].
pub struct VgaSource {
    screen: Arc<Screen>,
}

impl vnc::FrameSource for VgaSource {
    fn update(&mut self, frame: &mut vnc::Frame) -> Vec<vnc::Rect> {
        let mut r = self.screen.inner.lock();
        let mut rects = self.screen.refresh(&mut r);
        rects.append(&mut r.pending);
        let whole = r.resized || (frame.width, frame.height) != (r.frame.width, r.frame.height);
        r.resized = false;
        if whole {
            frame.clone_from(&r.frame);
            return vec![vnc::Rect { x: 0, y: 0, w: frame.width, h: frame.height }];
        }
        let width = frame.width as usize;
        for d in &rects {
            // The renderer clips its rectangles to the frame; clip again
            // rather than trust that across crates.
            let x0 = (d.x as usize).min(width);
            let x1 = (d.x.saturating_add(d.w) as usize).min(width);
            for y in d.y..d.y.saturating_add(d.h).min(frame.height) {
                let row = y as usize * width;
                if let (Some(dst), Some(src)) =
                    (frame.pixels.get_mut(row + x0..row + x1), r.frame.pixels.get(row + x0..row + x1))
                {
                    dst.copy_from_slice(src);
                }
            }
        }
        rects
    }
}

/// Keys and pointer from a display client, for the guest: to the USB
/// keyboard and tablet (or mouse) when the machine has them (as QEMU routes
/// input to a `usb-kbd`, a `usb-tablet` and a `usb-mouse`, the absolute
/// tablet before the relative mouse), else to the PS/2 keyboard and mouse.
pub struct GuestInput {
    i8042: Arc<Mutex<I8042>>,
    usb: Option<Arc<Mutex<Uhci>>>,
    /// The screen whose size the tablet's coordinates scale from.
    screen: Option<Arc<Screen>>,
    /// The pointer's last position and buttons.
    last: Mutex<Option<(u16, u16, u8)>>,
}

impl GuestInput {
    /// Input into `i8042`'s keyboard and mouse, or into `usb`'s keyboard
    /// and tablet where it has them; the tablet scales positions from the
    /// size of `screen`.
    pub fn new(i8042: Arc<Mutex<I8042>>, usb: Option<Arc<Mutex<Uhci>>>, screen: Option<Arc<Screen>>) -> Arc<Self> {
        Arc::new(Self { i8042, usb, screen, last: Mutex::new(None) })
    }

    /// The USB controller, when it has a device of `kind`.
    fn usb_with(&self, kind: devices::usb::UsbDeviceKind) -> Option<&Arc<Mutex<Uhci>>> {
        use devices::usb::UsbDeviceKind;
        self.usb.as_ref().filter(|u| {
            let u = u.lock();
            match kind {
                UsbDeviceKind::Tablet => u.has_tablet(),
                UsbDeviceKind::Mouse => u.has_mouse(),
                UsbDeviceKind::Keyboard => u.has_keyboard(),
            }
        })
    }

    /// Types `keysym` (pressed or released).
    pub fn key(&self, keysym: u32, down: bool) {
        let usb = self.usb_with(devices::usb::UsbDeviceKind::Keyboard);
        if keysym == vnc::XK_PAUSE {
            match (usb, down) {
                (Some(u), _) => u.lock().key_event(0xe045, down),
                (None, true) => self.i8042.lock().pause_key(),
                (None, false) => {}
            }
            return;
        }
        match (vnc::keysym_to_set1(keysym), usb) {
            (Some(code), Some(u)) => u.lock().key_event(code, down),
            (Some(code), None) => self.i8042.lock().key_event(code, down),
            (None, _) => tracing::debug!(target: "devices", "display input: keysym {keysym:#x} has no PC key; dropped"),
        }
    }
}

impl vnc::InputSink for GuestInput {
    fn key(&self, keysym: u32, down: bool) {
        GuestInput::key(self, keysym, down);
    }

    fn pointer(&self, x: u16, y: u16, buttons: u8) {
        let mut last = self.last.lock();
        let (dx, dy) = match *last {
            Some((lx, ly, _)) => (i32::from(x) - i32::from(lx), i32::from(y) - i32::from(ly)),
            None => (0, 0),
        };
        let old_buttons = last.map_or(0, |l| l.2);
        *last = Some((x, y, buttons));
        // RFB: bit 0 left, 1 middle, 2 right, 3 wheel up, 4 wheel down,
        // a wheel notch being a press and a release.
        let dz = match (buttons & !old_buttons) & 0x18 {
            0x08 => -1,
            0x10 => 1,
            _ => 0,
        };
        // Left, right, middle: the order of PS/2's and HID's bits.
        let lrm = (buttons & 1) | ((buttons >> 1) & 2) | ((buttons << 1) & 4);
        if dx == 0 && dy == 0 && dz == 0 && buttons & 7 == old_buttons & 7 {
            return;
        }
        if let Some(u) = self.usb_with(devices::usb::UsbDeviceKind::Tablet) {
            let (w, h) = self.screen.as_ref().map_or((0, 0), |s| s.size());
            // The tablet's wheel turns away from the user for a positive value.
            u.lock().tablet_event(u32::from(x), u32::from(y), w, h, lrm, -dz);
        } else if let Some(u) = self.usb_with(devices::usb::UsbDeviceKind::Mouse) {
            // So does the USB mouse's.
            u.lock().mouse_event(dx, dy, -dz, lrm);
        } else {
            self.i8042.lock().mouse_event(dx, dy, dz, lrm);
        }
    }
}

/// A running VNC server and the screen it shows.
pub struct Display {
    /// The screen, for screendumps.
    pub screen: Arc<Screen>,
    /// The server; `None` with `-vnc none` (a display without a listener).
    pub server: Option<vnc::VncServer>,
}

/// The period of the VNC server's refresh: at most this late, a change of
/// the picture reaches the clients.
const REFRESH: std::time::Duration = std::time::Duration::from_millis(20);

/// Starts a VNC server on `spec` (QEMU's `-vnc` value: `HOST:N`,
/// `unix:PATH` or `none`, with its options) showing `vga` and typing into
/// `i8042` (or `usb`'s keyboard, tablet and mouse). A listener beyond
/// loopback without a password gets a warning on stderr: a VNC client is a
/// keyboard into the guest. A Unix socket is created with the process's
/// umask and removed when the server goes (a stale socket at the path is
/// replaced; any other file is an error).
pub fn start_vnc(
    spec: &str,
    vga: Arc<Mutex<StdVga>>,
    i8042: Arc<Mutex<I8042>>,
    usb: Option<Arc<Mutex<Uhci>>>,
) -> Result<Display, String> {
    let parsed = vnc::parse_vnc_spec(spec).map_err(|e| format!("-vnc {spec}: {e}"))?;
    let screen = Screen::new(vga);
    let input = GuestInput::new(i8042, usb, Some(Arc::clone(&screen)));
    let websocket = parsed.websocket_addr().map_err(|e| format!("-vnc {spec}: websocket address: {e}"))?;
    let password = parsed.password.then(String::new);
    let displays = match &parsed.listen {
        vnc::VncListen::None => return Ok(Display { screen, server: None }),
        vnc::VncListen::Unix(path) => {
            let config = vnc::VncConfig {
                listen: Vec::new(),
                unix: Some(path.clone()),
                websocket,
                password: password.clone(),
                name: "ferrovm".to_string(),
                refresh: REFRESH,
            };
            let server = vnc::VncServer::start(config, Box::new(screen.source()), input)
                .map_err(|e| format!("-vnc {spec}: cannot listen on the Unix socket: {e}"))?;
            if let (None, Some(ws)) = (&password, server.websocket_addr()) {
                if !ws.ip().is_loopback() {
                    eprintln!(
                        "ferrovm: warning: the VNC WebSocket on {ws} has no password: anyone who can reach it sees \
                         the guest's screen and types into it (add password=on)"
                    );
                }
            }
            tracing::info!(target: "devices", "VNC server on unix:{}", path.display());
            return Ok(Display { screen, server: Some(server) });
        }
        vnc::VncListen::Tcp { .. } => parsed.displays(),
    };
    let mut last_err = None;
    for d in displays {
        let listen = parsed.rfb_addrs(d).map_err(|e| format!("-vnc {spec}: {e}"))?;
        let config = vnc::VncConfig {
            listen: listen.clone(),
            unix: None,
            websocket,
            password: password.clone(),
            name: "ferrovm".to_string(),
            refresh: REFRESH,
        };
        let source: Box<dyn vnc::FrameSource> = Box::new(screen.source());
        let sink: Arc<dyn vnc::InputSink> = input.clone();
        match vnc::VncServer::start(config, source, sink) {
            Ok(server) => {
                let open: Vec<_> = server.local_addrs().into_iter().chain(server.websocket_addr()).collect();
                if password.is_none() && open.iter().any(|a| !a.ip().is_loopback()) {
                    eprintln!(
                        "ferrovm: warning: the VNC server on {} has no password: anyone who can reach it sees \
                         the guest's screen and types into it (listen on 127.0.0.1, or add password=on)",
                        open.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    );
                }
                tracing::info!(target: "devices", "VNC server on {open:?}");
                return Ok(Display { screen, server: Some(server) });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_err = Some(format!("{listen:?}: {e}")),
            Err(e) => return Err(format!("-vnc {spec}: cannot listen on {listen:?}: {e}")),
        }
    }
    Err(format!("-vnc {spec}: cannot listen: {}", last_err.unwrap_or_else(|| "no display to try".into())))
}

/// QEMU's `-display curses`: the VGA's text mode drawn on a terminal with
/// ANSI escapes, and the terminal's keys typed on the PS/2 (or USB)
/// keyboard.
///
/// A drawing thread reads the text screen every 50 ms, and once more when
/// the display is dropped (so the terminal keeps the screen the run left),
/// and redraws the rows that changed since the last look (the whole screen
/// when the mode changed), with the VGA's colours as the 16 ANSI colours,
/// and moves the terminal's cursor to the VGA's. A graphics mode shows a
/// line that says so. An input thread turns the terminal's bytes into key
/// presses: characters of a US keyboard (with Shift where the character
/// needs it), Return, Backspace, Tab, Escape, the arrow keys and Ctrl with
/// a letter; `Ctrl-A x` ends the run, as on the serial console.
pub struct TerminalDisplay {
    stop: Arc<std::sync::atomic::AtomicBool>,
    draw: Option<std::thread::JoinHandle<()>>,
}

/// How often the terminal display looks at the screen.
const TERMINAL_REFRESH: std::time::Duration = std::time::Duration::from_millis(50);

impl Drop for TerminalDisplay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.draw.take() {
            let _ = t.join();
        }
    }
}

/// The ANSI colour (0-7) of a VGA colour (0-7): the VGA numbers blue as 1,
/// ANSI as 4.
const VGA_TO_ANSI: [u8; 8] = [0, 4, 2, 6, 1, 5, 3, 7];

/// The SGR sequence of a text attribute: foreground in bits 0-3,
/// background in bits 4-6 (bit 7 blinks; drawn steady).
fn sgr(attr: u8) -> String {
    let fg = attr & 7;
    let bright = attr & 8 != 0;
    let bg = (attr >> 4) & 7;
    let fg_code = if bright { 90 } else { 30 } + VGA_TO_ANSI[usize::from(fg)];
    format!("\x1b[0;{fg_code};{}m", 40 + VGA_TO_ANSI[usize::from(bg)])
}

/// Draws `screen` on `out`, the rows that differ from `last` (all of them
/// when `last` is another size).
fn draw_text(
    out: &mut dyn Write,
    screen: &devices::display::TextScreen,
    last: &Option<devices::display::TextScreen>,
) -> std::io::Result<()> {
    let whole = last.as_ref().is_none_or(|l| (l.cols, l.rows) != (screen.cols, screen.rows));
    let mut buf = String::new();
    if whole {
        buf.push_str("\x1b[0m\x1b[2J");
    }
    let cols = screen.cols as usize;
    for row in 0..screen.rows as usize {
        let cells = screen.cells.get(row * cols..(row + 1) * cols).unwrap_or(&[]);
        if !whole && last.as_ref().and_then(|l| l.cells.get(row * cols..(row + 1) * cols)) == Some(cells) {
            continue;
        }
        buf.push_str(&format!("\x1b[{};1H", row + 1));
        let text = screen.line(row as u32);
        let mut attr = None;
        for (ch, &(_, a)) in text.chars().zip(cells) {
            if attr != Some(a) {
                buf.push_str(&sgr(a));
                attr = Some(a);
            }
            buf.push(ch);
        }
    }
    buf.push_str("\x1b[0m");
    match screen.cursor {
        Some((x, y)) => buf.push_str(&format!("\x1b[{};{}H\x1b[?25h", y + 1, x + 1)),
        None => buf.push_str("\x1b[?25l"),
    }
    out.write_all(buf.as_bytes())?;
    out.flush()
}

/// Starts the terminal display: `vga`'s text drawn on `out`, and with
/// `input` the keys read from it typed into `i8042`; `events` takes the
/// `Ctrl-A x` quit.
pub fn start_terminal(
    vga: Arc<Mutex<StdVga>>,
    i8042: Arc<Mutex<I8042>>,
    usb: Option<Arc<Mutex<Uhci>>>,
    events: Arc<devices::VmEvents>,
    mut out: Box<dyn Write + Send>,
    input: Option<Box<dyn std::io::Read + Send>>,
) -> Result<TerminalDisplay, String> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let draw = std::thread::Builder::new()
        .name("terminal-display".into())
        .spawn(move || {
            let mut last: Option<devices::display::TextScreen> = None;
            let mut graphics = false;
            loop {
                // One last look once told to stop: the screen as the run left it.
                let stopping = flag.load(std::sync::atomic::Ordering::Acquire);
                let screen = vga.lock().text_screen();
                let result = match screen {
                    Some(s) => {
                        graphics = false;
                        let r = draw_text(&mut *out, &s, &last);
                        last = Some(s);
                        r
                    }
                    None if !graphics => {
                        graphics = true;
                        last = None;
                        out.write_all(
                            b"\x1b[0m\x1b[2J\x1b[1;1H[the guest is in a graphics mode: see it over VNC (--vnc)]",
                        )
                        .and_then(|()| out.flush())
                    }
                    None => Ok(()),
                };
                if result.is_err() {
                    // The terminal is gone; the guest goes on without it.
                    return;
                }
                if stopping {
                    break;
                }
                std::thread::sleep(TERMINAL_REFRESH);
            }
            let _ = out.write_all(b"\x1b[0m\x1b[?25h\r\n");
            let _ = out.flush();
        })
        .map_err(|e| format!("cannot start the terminal display: {e}"))?;
    if let Some(input) = input {
        let keys = GuestInput::new(i8042, usb, None);
        std::thread::Builder::new()
            .name("terminal-keys".into())
            .spawn(move || terminal_keys(input, &keys, &events))
            .map_err(|e| format!("cannot start the terminal display's input: {e}"))?;
    }
    Ok(TerminalDisplay { stop, draw: Some(draw) })
}

/// X11 keysyms of the keys the terminal display types.
mod xk {
    pub const RETURN: u32 = 0xff0d;
    pub const BACKSPACE: u32 = 0xff08;
    pub const TAB: u32 = 0xff09;
    pub const ESCAPE: u32 = 0xff1b;
    pub const LEFT: u32 = 0xff51;
    pub const UP: u32 = 0xff52;
    pub const RIGHT: u32 = 0xff53;
    pub const DOWN: u32 = 0xff54;
    pub const SHIFT: u32 = 0xffe1;
    pub const CONTROL: u32 = 0xffe3;
}

/// Whether a US keyboard needs Shift for the character `c`.
fn needs_shift(c: u8) -> bool {
    c.is_ascii_uppercase() || b"~!@#$%^&*()_+{}|:\"<>?".contains(&c)
}

/// Presses and releases `keysym`, inside `modifier` when there is one.
fn tap(keys: &GuestInput, keysym: u32, modifier: Option<u32>) {
    if let Some(m) = modifier {
        keys.key(m, true);
    }
    keys.key(keysym, true);
    keys.key(keysym, false);
    if let Some(m) = modifier {
        keys.key(m, false);
    }
}

/// Reads the terminal's bytes and types them until the input ends.
fn terminal_keys(mut input: Box<dyn std::io::Read + Send>, keys: &GuestInput, events: &devices::VmEvents) {
    let mut buf = [0u8; 64];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut i = 0;
        while i < pending.len() {
            let b = pending[i];
            i += 1;
            match b {
                // Ctrl-A x quits; Ctrl-A Ctrl-A types Ctrl-A.
                0x01 => match pending.get(i) {
                    Some(b'x') => {
                        events.request(devices::VmEvent::Quit);
                        return;
                    }
                    Some(0x01) => {
                        i += 1;
                        tap(keys, u32::from(b'a'), Some(xk::CONTROL));
                    }
                    Some(_) => i += 1,
                    None => {
                        // The rest of the escape comes with the next read.
                        i -= 1;
                        break;
                    }
                },
                0x1b => match (pending.get(i), pending.get(i + 1)) {
                    (Some(b'['), Some(&c)) => {
                        i += 2;
                        match c {
                            b'A' => tap(keys, xk::UP, None),
                            b'B' => tap(keys, xk::DOWN, None),
                            b'C' => tap(keys, xk::RIGHT, None),
                            b'D' => tap(keys, xk::LEFT, None),
                            _ => {}
                        }
                    }
                    (Some(b'['), None) => {
                        i -= 1;
                        break;
                    }
                    _ => tap(keys, xk::ESCAPE, None),
                },
                b'\r' | b'\n' => tap(keys, xk::RETURN, None),
                0x7f | 0x08 => tap(keys, xk::BACKSPACE, None),
                b'\t' => tap(keys, xk::TAB, None),
                0x02..=0x1a => tap(keys, u32::from(b'a' + b - 1), Some(xk::CONTROL)),
                0x20..=0x7e => tap(keys, u32::from(b), needs_shift(b).then_some(xk::SHIFT)),
                _ => {}
            }
        }
        pending.drain(..i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::display::TextScreen;

    fn screen(rows: &[&str], attr: u8) -> TextScreen {
        let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
        let mut cells = Vec::new();
        for r in rows {
            let mut line: Vec<(u8, u8)> = r.bytes().map(|b| (b, attr)).collect();
            line.resize(cols as usize, (b' ', attr));
            cells.extend(line);
        }
        TextScreen { cols, rows: rows.len() as u32, cells, cursor: Some((2, 1)) }
    }

    #[test]
    fn the_terminal_gets_the_rows_that_changed_in_their_colours() {
        let first = screen(&["SeaBIOS", "booting"], 0x1e);
        let mut out = Vec::new();
        draw_text(&mut out, &first, &None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\x1b[0m\x1b[2J"), "a new screen clears the terminal: {text:?}");
        assert!(text.contains("\x1b[1;1H") && text.contains("\x1b[2;1H"), "both rows: {text:?}");
        // Yellow (VGA 14: bright 6) on blue (VGA 1): ANSI bright 3 on 4.
        assert!(text.contains("\x1b[0;93;44mSeaBIOS"), "{text:?}");
        assert!(text.ends_with("\x1b[2;3H\x1b[?25h"), "the cursor at column 3 of row 2: {text:?}");
        let second = screen(&["SeaBIOS", "done   "], 0x1e);
        let mut out = Vec::new();
        draw_text(&mut out, &second, &Some(first)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("SeaBIOS") && !text.contains("\x1b[2J"), "only the changed row: {text:?}");
        assert!(text.contains("\x1b[2;1H") && text.contains("done"), "{text:?}");
    }

    #[derive(Debug)]
    struct NoIrq;
    impl devices::irq::IrqLine for NoIrq {
        fn set_level(&self, _level: bool) {}
    }

    /// Input for a machine with `usb` devices: the sink and the controller.
    fn input_with(usb: Vec<devices::usb::UsbDeviceKind>) -> (Arc<GuestInput>, Arc<Mutex<Uhci>>) {
        use devices::legacy::port92::A20Gate;
        let irq: Arc<dyn devices::irq::IrqLine> = Arc::new(NoIrq);
        let i8042 = I8042::new(irq.clone(), irq.clone(), A20Gate::new(true), Arc::new(devices::VmEvents::new()));
        let mem = Arc::new(mmu::GuestMemory::new(1 << 20).unwrap());
        let clock = Arc::new(devices::clock::ManualClock::new(0));
        let uhci = Arc::new(Mutex::new(Uhci::new(mem, irq, clock, usb).unwrap()));
        (GuestInput::new(Arc::new(Mutex::new(i8042)), Some(uhci.clone()), None), uhci)
    }

    /// The reports queued at each port.
    fn queued(uhci: &Mutex<Uhci>) -> Vec<Vec<Vec<u8>>> {
        use persist::Persist;
        uhci.lock().save().ports.iter().map(|p| p.device.as_ref().map_or(Vec::new(), |d| d.queue.clone())).collect()
    }

    #[test]
    fn the_pointer_goes_to_the_tablet_before_the_mouse_and_moves_the_mouse_relatively() {
        use devices::usb::UsbDeviceKind::{Mouse, Tablet};
        use vnc::InputSink;
        let (input, uhci) = input_with(vec![Mouse, Tablet]);
        input.pointer(10, 10, 0);
        input.pointer(30, 5, 1);
        let q = queued(&uhci);
        assert!(q[0].is_empty(), "the mouse gets nothing while there is a tablet: {q:?}");
        assert!(!q[1].is_empty(), "the tablet gets the pointer: {q:?}");
        let (input, uhci) = input_with(vec![Mouse]);
        input.pointer(10, 10, 0);
        input.pointer(30, 5, 0);
        input.pointer(30, 5, 1);
        // A wheel notch down: RFB button 5 pressed and released.
        input.pointer(30, 5, 0x11);
        input.pointer(30, 5, 1);
        assert_eq!(queued(&uhci)[0], [vec![0, 20, 0xfb, 0], vec![1, 0, 0, 0xff]], "+20, -5, then left and the wheel");
    }

    #[test]
    fn a_screen_shown_another_adapter_sends_its_whole_picture() {
        use vnc::FrameSource;
        let vga = || Arc::new(Mutex::new(StdVga::new(devices::display::DEFAULT_VRAM).unwrap()));
        let (first, second) = (vga(), vga());
        // The second adapter in a Bochs VBE mode: 320x200 at 32 bits a pixel.
        let vbe = StdVga::bus_devices(&second).vbe_ports;
        for (index, value) in [(1u16, 320u16), (2, 200), (3, 32), (4, 1)] {
            vbe.lock().write(0, &index.to_le_bytes());
            vbe.lock().write(1, &value.to_le_bytes());
        }
        let screen = Screen::new(first);
        let mut source = screen.source();
        let mut frame = vnc::Frame::default();
        source.update(&mut frame);
        assert_eq!((frame.width, frame.height), (640, 480), "the first adapter, in no mode");
        assert!(source.update(&mut frame).is_empty(), "nothing changed");
        screen.show(second);
        assert_eq!(source.update(&mut frame), [vnc::Rect { x: 0, y: 0, w: 320, h: 200 }]);
        assert_eq!((frame.width, frame.height), (320, 200));
        assert!(source.update(&mut frame).is_empty());
    }

    #[test]
    fn shifted_characters_are_typed_with_shift() {
        assert!(needs_shift(b'A') && needs_shift(b'!') && needs_shift(b'"') && needs_shift(b'?'));
        assert!(!needs_shift(b'a') && !needs_shift(b'1') && !needs_shift(b'/') && !needs_shift(b' '));
    }
}
