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
//! the guest asked for. VNC's pointer is absolute and the PS/2 mouse is
//! relative: [`GuestInput`] sends the difference from the last position,
//! so the guest's pointer follows the client's as long as the guest does
//! not accelerate or clamp it.

use std::path::Path;
use std::sync::Arc;

use devices::display::StdVga;
use devices::legacy::i8042::I8042;
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

/// The adapter's picture, rendered for every reader.
pub struct Screen {
    vga: Arc<Mutex<StdVga>>,
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
        Arc::new(Self { vga, inner: Mutex::new(Rendered::default()) })
    }

    /// Renders the adapter's changes into the screen's frame.
    fn refresh(&self, r: &mut Rendered) -> Vec<vnc::Rect> {
        let (w, h, rects) = self.vga.lock().render(&mut r.frame.pixels);
        if (w, h) != (r.frame.width, r.frame.height) {
            r.frame.width = w;
            r.frame.height = h;
            r.resized = true;
        }
        rects.into_iter().map(|d| vnc::Rect { x: d.x, y: d.y, w: d.w, h: d.h }).collect()
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

/// Keys and pointer from a display client, for the guest.
pub struct GuestInput {
    i8042: Arc<Mutex<I8042>>,
    /// The pointer's last position and buttons.
    last: Mutex<Option<(u16, u16, u8)>>,
}

impl GuestInput {
    /// Input into `i8042`'s keyboard and mouse.
    pub fn new(i8042: Arc<Mutex<I8042>>) -> Arc<Self> {
        Arc::new(Self { i8042, last: Mutex::new(None) })
    }

    /// Types `keysym` (pressed or released).
    pub fn key(&self, keysym: u32, down: bool) {
        if keysym == vnc::XK_PAUSE {
            if down {
                self.i8042.lock().pause_key();
            }
            return;
        }
        match vnc::keysym_to_set1(keysym) {
            Some(code) => self.i8042.lock().key_event(code, down),
            None => tracing::debug!(target: "devices", "display input: keysym {keysym:#x} has no PC key; dropped"),
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
        let ps2 = (buttons & 1) | ((buttons >> 1) & 2) | ((buttons << 1) & 4);
        if dx != 0 || dy != 0 || dz != 0 || buttons & 7 != old_buttons & 7 {
            self.i8042.lock().mouse_event(dx, dy, dz, ps2);
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

/// Starts a VNC server on `spec` (QEMU's `-vnc` value) showing `vga` and
/// typing into `i8042`. A listener beyond loopback without a password gets
/// a warning on stderr: a VNC client is a keyboard into the guest.
pub fn start_vnc(spec: &str, vga: Arc<Mutex<StdVga>>, i8042: Arc<Mutex<I8042>>) -> Result<Display, String> {
    let parsed = vnc::parse_vnc_spec(spec).map_err(|e| format!("-vnc {spec}: {e}"))?;
    let screen = Screen::new(vga);
    let input = GuestInput::new(i8042);
    let websocket = parsed.websocket_addr().map_err(|e| format!("-vnc {spec}: websocket address: {e}"))?;
    let password = parsed.password.then(String::new);
    let displays = match &parsed.listen {
        vnc::VncListen::None => return Ok(Display { screen, server: None }),
        vnc::VncListen::Unix(p) => {
            return Err(format!(
                "-vnc unix:{}: a VNC server on a Unix socket is not supported (use HOST:N)",
                p.display()
            ))
        }
        vnc::VncListen::Tcp { .. } => parsed.displays(),
    };
    let mut last_err = None;
    for d in displays {
        let listen = parsed.rfb_addrs(d).map_err(|e| format!("-vnc {spec}: {e}"))?;
        let config = vnc::VncConfig {
            listen: listen.clone(),
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
