//! The server: listeners, the refresh thread and the per-client threads.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{debug, warn};

use crate::conn::{bind_unix, socket_identity, Conn, Listener};
use crate::encode::{enc, split_rect, Encoder, Encoding};
use crate::pixel::PixelFormat;
use crate::proto::{self, ClientMsg, MessageParser};
use crate::ws::{self, Out, WsReader};
use crate::{Frame, FrameSource, InputSink, Rect, VncConfig, VncStats};

/// Most clients served at once; more connections are closed at once.
pub const MAX_CLIENTS: usize = 32;
/// Most dirty rectangles kept per client before they collapse into their bounding box.
const MAX_DIRTY: usize = 32;
/// Time allowed for the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a write may block before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest framebuffer dimension RFB can express; larger frames are cut.
const MAX_DIM: u32 = 65535;
/// Output is handed to the socket in pieces of about this size.
const WRITE_CHUNK: usize = 256 * 1024;

impl Rect {
    /// The intersection of two rectangles (empty rectangles have zero width or height).
    pub fn intersect(&self, o: &Rect) -> Rect {
        let x0 = self.x.max(o.x);
        let y0 = self.y.max(o.y);
        let x1 = (self.x.saturating_add(self.w)).min(o.x.saturating_add(o.w));
        let y1 = (self.y.saturating_add(self.h)).min(o.y.saturating_add(o.h));
        if x1 <= x0 || y1 <= y0 {
            Rect { x: x0, y: y0, w: 0, h: 0 }
        } else {
            Rect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
        }
    }

    /// Whether the rectangle has no pixels.
    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// Whether `o` lies entirely inside `self`.
    pub fn contains(&self, o: &Rect) -> bool {
        o.x >= self.x
            && o.y >= self.y
            && o.x.saturating_add(o.w) <= self.x.saturating_add(self.w)
            && o.y.saturating_add(o.h) <= self.y.saturating_add(self.h)
    }

    fn union(&self, o: &Rect) -> Rect {
        let x0 = self.x.min(o.x);
        let y0 = self.y.min(o.y);
        let x1 = (self.x.saturating_add(self.w)).max(o.x.saturating_add(o.w));
        let y1 = (self.y.saturating_add(self.h)).max(o.y.saturating_add(o.h));
        Rect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
    }
}

/// A bounded set of dirty rectangles.
#[derive(Default, Debug)]
pub(crate) struct Region {
    rects: Vec<Rect>,
}

impl Region {
    pub(crate) fn add(&mut self, r: Rect) {
        if r.is_empty() || self.rects.iter().any(|o| o.contains(&r)) {
            return;
        }
        self.rects.retain(|o| !r.contains(o));
        self.rects.push(r);
        if self.rects.len() > MAX_DIRTY {
            let b = self.rects.iter().skip(1).fold(self.rects[0], |a, r| a.union(r));
            self.rects.clear();
            self.rects.push(b);
        }
    }

    pub(crate) fn intersects(&self, area: &Rect) -> bool {
        self.rects.iter().any(|r| !r.intersect(area).is_empty())
    }

    /// Removes and returns the parts inside `area`; rectangles reaching outside stay.
    pub(crate) fn take_within(&mut self, area: &Rect) -> Vec<Rect> {
        let mut out = Vec::new();
        self.rects.retain(|r| {
            let i = r.intersect(area);
            if !i.is_empty() {
                out.push(i);
            }
            !area.contains(r)
        });
        out
    }
}

/// A pending FramebufferUpdateRequest (merged when several arrive).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub incremental: bool,
    pub area: Rect,
}

/// Per-client state shared by its reader and sender threads and the refresh thread.
pub(crate) struct ClientState {
    pub pf: PixelFormat,
    pub encoding: Encoding,
    pub desktop_size: bool,
    pub level: Option<u32>,
    pub request: Option<Request>,
    pub dirty: Region,
    pub closed: bool,
}

impl ClientState {
    pub(crate) fn new() -> ClientState {
        ClientState {
            pf: PixelFormat::XRGB32,
            encoding: Encoding::Raw,
            desktop_size: false,
            level: None,
            request: None,
            dirty: Region::default(),
            closed: false,
        }
    }

    /// Applies a message's effect on the connection state; input events go to `input`.
    /// Returns an error for messages that end the connection.
    pub(crate) fn apply(&mut self, msg: ClientMsg, input: &dyn InputSink) -> Result<(), String> {
        match msg {
            ClientMsg::SetPixelFormat(pf) => {
                if !pf.is_supported() {
                    return Err(format!(
                        "unsupported pixel format ({} bpp, true colour {})",
                        pf.bits_per_pixel, pf.true_colour
                    ));
                }
                self.pf = pf;
            }
            ClientMsg::SetEncodings(list) => {
                self.encoding = list.iter().find_map(|&e| Encoding::from_number(e)).unwrap_or(Encoding::Raw);
                self.desktop_size = list.contains(&enc::DESKTOP_SIZE);
                self.level = list
                    .iter()
                    .find(|&&e| (enc::COMPRESS_LEVEL_0..=enc::COMPRESS_LEVEL_9).contains(&e))
                    .map(|&e| (e - enc::COMPRESS_LEVEL_0) as u32);
            }
            ClientMsg::UpdateRequest { incremental, x, y, w, h } => {
                let area = Rect { x: x as u32, y: y as u32, w: w as u32, h: h as u32 };
                self.request = Some(match self.request {
                    Some(old) => Request { incremental: old.incremental && incremental, area: old.area.union(&area) },
                    None => Request { incremental, area },
                });
            }
            ClientMsg::Key { down, keysym } => input.key(keysym, down),
            ClientMsg::Pointer { buttons, x, y } => input.pointer(x, y, buttons),
            ClientMsg::CutText { .. } => {}
        }
        Ok(())
    }

    /// Whether an update is due for a client whose framebuffer is `client_size` while the
    /// frame is `frame_size`.
    pub(crate) fn ready(&self, client_size: (u32, u32), frame_size: (u32, u32)) -> bool {
        match self.request {
            None => false,
            Some(r) => {
                !r.incremental || self.dirty.intersects(&r.area) || (self.desktop_size && client_size != frame_size)
            }
        }
    }
}

/// One update's worth of work, taken from the client state.
pub(crate) struct Work {
    pub request: Request,
    pub dirty: Vec<Rect>,
    pub pf: PixelFormat,
    pub encoding: Encoding,
    pub desktop_size: bool,
}

impl ClientState {
    pub(crate) fn take_work(&mut self) -> Option<Work> {
        let request = self.request.take()?;
        let dirty = if request.incremental {
            self.dirty.take_within(&request.area)
        } else {
            self.dirty.take_within(&request.area);
            Vec::new()
        };
        Some(Work { request, dirty, pf: self.pf, encoding: self.encoding, desktop_size: self.desktop_size })
    }
}

/// Builds the FramebufferUpdate for `work` against `frame`, updating `client_size` when a
/// DesktopSize is sent. Returns the rectangles with their pixels, ready to encode.
pub(crate) fn gather(work: &Work, frame: &Frame, client_size: &mut (u32, u32)) -> (bool, Vec<(Rect, Vec<u32>)>) {
    let fsize = (frame.width.min(MAX_DIM), frame.height.min(MAX_DIM));
    let mut resized = false;
    let mut areas = Vec::new();
    if fsize != *client_size && work.desktop_size {
        *client_size = fsize;
        resized = true;
        areas.push(Rect { x: 0, y: 0, w: fsize.0, h: fsize.1 });
    } else {
        let bound = Rect { x: 0, y: 0, w: fsize.0.min(client_size.0), h: fsize.1.min(client_size.1) };
        if work.request.incremental {
            areas.extend(work.dirty.iter().map(|r| r.intersect(&bound)).filter(|r| !r.is_empty()));
        } else {
            let r = work.request.area.intersect(&bound);
            if !r.is_empty() {
                areas.push(r);
            }
        }
    }
    let mut pieces = Vec::new();
    for a in areas {
        split_rect(a, &mut pieces);
    }
    let stride = frame.width as usize;
    let rects = pieces
        .into_iter()
        .map(|r| {
            let mut px = Vec::with_capacity((r.w * r.h) as usize);
            for y in r.y..r.y + r.h {
                let start = y as usize * stride + r.x as usize;
                px.extend_from_slice(&frame.pixels[start..start + r.w as usize]);
            }
            (r, px)
        })
        .collect();
    (resized, rects)
}

/// Encodes a FramebufferUpdate and writes it, in pieces, to `w`. Returns bytes written.
pub(crate) fn write_update(
    w: &mut dyn Write,
    encoder: &mut Encoder,
    work: &Work,
    resized: Option<(u32, u32)>,
    rects: &[(Rect, Vec<u32>)],
) -> io::Result<u64> {
    let count = rects.len() + resized.is_some() as usize;
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(count.min(65535) as u16).to_be_bytes());
    if let Some((fw, fh)) = resized {
        crate::encode::push_header(&mut out, Rect { x: 0, y: 0, w: fw, h: fh }, enc::DESKTOP_SIZE);
    }
    let mut total = 0u64;
    for (r, px) in rects.iter().take(65535 - resized.is_some() as usize) {
        encoder.encode(work.encoding, &work.pf, *r, px, &mut out)?;
        if out.len() >= WRITE_CHUNK {
            w.write_all(&out)?;
            total += out.len() as u64;
            out.clear();
        }
    }
    w.write_all(&out)?;
    w.flush()?;
    Ok(total + out.len() as u64)
}

/// A connected client as seen by the rest of the server.
pub(crate) struct Client {
    state: Mutex<ClientState>,
    cv: Condvar,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    auth_failures: AtomicU64,
    auth_refused: AtomicU64,
    updates: AtomicU64,
    rects: AtomicU64,
    bytes: AtomicU64,
    frame_updates: AtomicU64,
}

pub(crate) struct Shared {
    frame: RwLock<Frame>,
    /// Registered (post-handshake) clients; the refresh thread sleeps on `refresh_cv` with it.
    clients: Mutex<Vec<Arc<Client>>>,
    refresh_cv: Condvar,
    /// Frame generation (bumped after each `update`), with `frame_cv` to wait for the first.
    generation: Mutex<u64>,
    frame_cv: Condvar,
    /// Every open socket (for shutting them down on drop), by connection id.
    sockets: Mutex<HashMap<u64, Conn>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    password: Mutex<Option<String>>,
    /// Failed VNC Authentication: the refusals that follow.
    auth_limit: proto::AuthLimit,
    name: String,
    stop: AtomicBool,
    size: AtomicU64,
    next_id: AtomicU64,
    counters: Counters,
    input: Arc<dyn InputSink>,
}

impl Shared {
    fn frame_size(&self) -> (u32, u32) {
        let v = self.size.load(Ordering::Acquire);
        ((v >> 32) as u32, v as u32)
    }
}

/// A Unix socket listener's path and the (device, inode) of the file it made.
type UnixSocket = (PathBuf, Option<(u64, u64)>);

/// A running VNC server. Dropping it stops its threads and closes its sockets.
pub struct VncServer {
    shared: Arc<Shared>,
    local: Vec<SocketAddr>,
    websocket: Option<SocketAddr>,
    /// The Unix socket listener's path and the (device, inode) it was
    /// created with, until it is removed.
    unix: Mutex<Option<UnixSocket>>,
    unix_path: Option<PathBuf>,
    threads: Vec<JoinHandle<()>>,
}

impl VncServer {
    /// Binds the listeners (errors such as a port in use are returned here) and starts the
    /// accept threads and the refresh thread. A Unix socket is created with the process's
    /// umask; a stale one (no server behind it) is replaced, anything else at its path is an
    /// error. The socket file is removed when the server is dropped.
    pub fn start(config: VncConfig, source: Box<dyn FrameSource>, input: Arc<dyn InputSink>) -> io::Result<VncServer> {
        let mut tcp = Vec::new();
        for addr in &config.listen {
            let l = TcpListener::bind(addr)?;
            tcp.push((l, false));
        }
        if let Some(addr) = config.websocket {
            tcp.push((TcpListener::bind(addr)?, true));
        }
        let local: Vec<SocketAddr> =
            tcp.iter().filter(|(_, ws)| !ws).map(|(l, _)| l.local_addr()).collect::<io::Result<_>>()?;
        let websocket = tcp.iter().find(|(_, ws)| *ws).map(|(l, _)| l.local_addr()).transpose()?;
        let mut listeners: Vec<(Listener, bool)> = tcp.into_iter().map(|(l, ws)| (Listener::Tcp(l), ws)).collect();
        let mut unix = None;
        if let Some(path) = &config.unix {
            let l = bind_unix(path)?;
            unix = Some((path.clone(), socket_identity(path)));
            listeners.push((Listener::Unix(l), false));
        }
        let shared = Arc::new(Shared {
            frame: RwLock::new(Frame { width: 0, height: 0, pixels: Vec::new() }),
            clients: Mutex::new(Vec::new()),
            refresh_cv: Condvar::new(),
            generation: Mutex::new(0),
            frame_cv: Condvar::new(),
            sockets: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            password: Mutex::new(config.password),
            auth_limit: proto::AuthLimit::default(),
            name: config.name,
            stop: AtomicBool::new(false),
            size: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            counters: Counters::default(),
            input,
        });
        let mut threads = Vec::new();
        for (l, ws) in listeners {
            let sh = shared.clone();
            threads.push(std::thread::Builder::new().name("vnc-accept".into()).spawn(move || accept_loop(sh, l, ws))?);
        }
        let sh = shared.clone();
        let refresh = config.refresh.max(Duration::from_millis(1));
        threads.push(
            std::thread::Builder::new().name("vnc-refresh".into()).spawn(move || refresh_loop(sh, source, refresh))?,
        );
        let unix_path = config.unix;
        Ok(VncServer { shared, local, websocket, unix: Mutex::new(unix), unix_path, threads })
    }

    /// The path of the Unix socket listener, if any.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }

    /// Removes the Unix socket file, if it is still the one the server created (the process
    /// is about to exit; dropping the server does it too). New clients cannot connect after.
    pub fn remove_unix_socket(&self) {
        if let Some((path, identity)) = self.unix.lock().take() {
            if identity.is_some() && socket_identity(&path) == identity {
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!("vnc: cannot remove the socket {}: {e}", path.display());
                }
            }
        }
    }

    /// The addresses the RFB listeners are bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local.clone()
    }

    /// The address of the WebSocket listener, if any.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket
    }

    /// Changes the password for new connections. `None` disables authentication; `Some("")`
    /// requires authentication that always fails (no password set yet). Failed attempts
    /// against the old password no longer hold new ones back.
    pub fn set_password(&self, password: Option<String>) {
        *self.shared.password.lock() = password;
        self.shared.auth_limit.reset();
    }

    /// Clients past the handshake.
    pub fn clients(&self) -> usize {
        self.shared.clients.lock().len()
    }

    /// Counters since the start.
    pub fn stats(&self) -> VncStats {
        let c = &self.shared.counters;
        VncStats {
            clients: self.clients(),
            connections: c.connections.load(Ordering::Relaxed),
            auth_failures: c.auth_failures.load(Ordering::Relaxed),
            auth_refused: c.auth_refused.load(Ordering::Relaxed),
            updates_sent: c.updates.load(Ordering::Relaxed),
            rects_sent: c.rects.load(Ordering::Relaxed),
            bytes_sent: c.bytes.load(Ordering::Relaxed),
            frame_updates: c.frame_updates.load(Ordering::Relaxed),
        }
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.stop.store(true, Ordering::SeqCst);
        {
            let _g = sh.clients.lock();
            sh.refresh_cv.notify_all();
        }
        for c in sh.clients.lock().iter() {
            c.state.lock().closed = true;
            c.cv.notify_all();
        }
        for s in sh.sockets.lock().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept threads with a connection of our own.
        let mut woken = true;
        for addr in self.local.iter().chain(self.websocket.iter()) {
            let mut a = *addr;
            if a.ip().is_unspecified() {
                a.set_ip(if a.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
            }
            woken &= TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok();
        }
        // Only through a socket that is still the server's own: once removed, another
        // process may listen at the path.
        let own = self.unix.lock().as_ref().is_some_and(|(path, id)| id.is_some() && socket_identity(path) == *id);
        if let Some(path) = &self.unix_path {
            woken &= own && UnixStream::connect(path).is_ok();
        }
        self.remove_unix_socket();
        for t in self.threads.drain(..) {
            if woken || t.thread().name() != Some("vnc-accept") {
                let _ = t.join();
            }
        }
        let client_threads: Vec<_> = sh.threads.lock().drain(..).collect();
        for t in client_threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(sh: Arc<Shared>, listener: Listener, ws: bool) {
    loop {
        let conn = listener.accept();
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!("vnc: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = stream.peer();
        if sh.sockets.lock().len() >= MAX_CLIENTS {
            warn!("vnc: refusing connection from {peer}: too many clients");
            continue;
        }
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let Ok(clone) = stream.try_clone() else { continue };
        sh.sockets.lock().insert(id, clone);
        sh.counters.connections.fetch_add(1, Ordering::Relaxed);
        debug!("vnc: connection {id} from {peer}{}", if ws { " (websocket)" } else { "" });
        let sh2 = sh.clone();
        let spawned = std::thread::Builder::new().name(format!("vnc-client-{id}")).spawn(move || {
            if let Err(e) = run_client(&sh2, id, stream, ws) {
                debug!("vnc: connection {id} ended: {e}");
            }
            if let Some(s) = sh2.sockets.lock().remove(&id) {
                let _ = s.shutdown(Shutdown::Both);
            }
        });
        let mut threads = sh.threads.lock();
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                warn!("vnc: cannot start a client thread: {e}");
                sh.sockets.lock().remove(&id);
            }
        }
    }
}

fn refresh_loop(sh: Arc<Shared>, mut source: Box<dyn FrameSource>, period: Duration) {
    loop {
        {
            let mut clients = sh.clients.lock();
            while clients.is_empty() && !sh.stop.load(Ordering::SeqCst) {
                sh.refresh_cv.wait(&mut clients);
            }
        }
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let (rects, resized, size) = {
            let mut f = sh.frame.write();
            let old = (f.width, f.height);
            let rects = source.update(&mut f);
            let n = f.width as usize * f.height as usize;
            if f.pixels.len() != n {
                f.pixels.resize(n, 0);
            }
            let bound = Rect { x: 0, y: 0, w: f.width, h: f.height };
            let rects: Vec<Rect> = rects.iter().map(|r| r.intersect(&bound)).filter(|r| !r.is_empty()).collect();
            (rects, old != (f.width, f.height), (f.width.min(MAX_DIM), f.height.min(MAX_DIM)))
        };
        sh.size.store(((size.0 as u64) << 32) | size.1 as u64, Ordering::Release);
        if resized || !rects.is_empty() {
            sh.counters.frame_updates.fetch_add(1, Ordering::Relaxed);
            let full = Rect { x: 0, y: 0, w: size.0, h: size.1 };
            for c in sh.clients.lock().iter() {
                let mut st = c.state.lock();
                if resized {
                    st.dirty = Region::default();
                    st.dirty.add(full);
                } else {
                    for r in &rects {
                        st.dirty.add(*r);
                    }
                }
                c.cv.notify_one();
            }
        }
        // Bumped after the dirty regions are marked, so that a client that saw the new frame
        // also has its changes in its region.
        {
            let mut g = sh.generation.lock();
            *g += 1;
            sh.frame_cv.notify_all();
        }
        let mut clients = sh.clients.lock();
        if !sh.stop.load(Ordering::SeqCst) {
            sh.refresh_cv.wait_for(&mut clients, period);
        }
    }
}

/// The receiving half of a connection.
enum In {
    Tcp(Conn),
    Ws(WsReader),
}

impl Read for In {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            In::Tcp(s) => s.read(buf),
            In::Ws(r) => r.read(buf),
        }
    }
}

/// Both halves, for the handshake.
struct Duplex<'a> {
    r: &'a mut In,
    w: &'a Mutex<Out>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.lock().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.lock().flush()
    }
}

fn run_client(sh: &Arc<Shared>, id: u64, mut stream: Conn, ws: bool) -> io::Result<()> {
    stream.set_nodelay()?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    if ws {
        ws::server_upgrade(&mut stream)?;
    }
    let out = Arc::new(Mutex::new(if ws { Out::Ws(stream.try_clone()?) } else { Out::Tcp(stream.try_clone()?) }));
    let mut input =
        if ws { In::Ws(WsReader::new(stream.try_clone()?, out.clone())) } else { In::Tcp(stream.try_clone()?) };
    let password = sh.password.lock().clone();
    let mut duplex = Duplex { r: &mut input, w: &out };
    match proto::server_handshake(&mut duplex, password.as_deref(), &sh.auth_limit) {
        Ok(h) => debug!("vnc: connection {id}: {:?} handshake done", h.version),
        Err(proto::HandshakeError::AuthFailed { failures, locked }) => {
            sh.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            warn!(
                "vnc: connection {id}: authentication failed ({failures} in a row); VNC Authentication from any \
                 client is refused for the next {} s",
                locked.as_secs_f64()
            );
            return Ok(());
        }
        Err(proto::HandshakeError::Throttled(left)) => {
            sh.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
            debug!("vnc: connection {id}: refused after failed authentication ({} ms to go)", left.as_millis());
            return Ok(());
        }
        Err(e) => return Err(io::Error::other(e.to_string())),
    }
    // Register, so that the refresh thread produces a frame, then wait for the first one.
    let client = Arc::new(Client { state: Mutex::new(ClientState::new()), cv: Condvar::new() });
    {
        let mut clients = sh.clients.lock();
        if sh.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        clients.push(client.clone());
        sh.refresh_cv.notify_all();
    }
    let result = serve(sh, id, &client, &mut input, &out, &stream);
    sh.clients.lock().retain(|c| !Arc::ptr_eq(c, &client));
    client.state.lock().closed = true;
    client.cv.notify_all();
    let _ = stream.shutdown(Shutdown::Both);
    result
}

fn serve(
    sh: &Arc<Shared>,
    id: u64,
    client: &Arc<Client>,
    input: &mut In,
    out: &Arc<Mutex<Out>>,
    stream: &Conn,
) -> io::Result<()> {
    {
        let mut g = sh.generation.lock();
        if *g == 0 {
            sh.frame_cv.wait_for(&mut g, Duration::from_secs(2));
        }
    }
    let client_size = sh.frame_size();
    let mut duplex = Duplex { r: input, w: out };
    proto::server_init(&mut duplex, client_size.0, client_size.1, &sh.name)?;
    stream.set_read_timeout(None)?;
    debug!("vnc: connection {id}: serving {}x{}", client_size.0, client_size.1);

    let sender = {
        let sh = sh.clone();
        let client = client.clone();
        let out = out.clone();
        let s = stream.try_clone()?;
        std::thread::Builder::new().name(format!("vnc-send-{id}")).spawn(move || {
            if let Err(e) = send_loop(&sh, &client, &out, client_size) {
                debug!("vnc: connection {id}: send ended: {e}");
            }
            client.state.lock().closed = true;
            let _ = s.shutdown(Shutdown::Both);
        })?
    };

    let mut parser = MessageParser::new();
    let mut buf = vec![0u8; 16 * 1024];
    let result = loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        };
        let mut err = None;
        let mut wake = false;
        let parsed = parser.push(&buf[..n], &mut |msg| {
            if err.is_some() {
                return;
            }
            // Input goes straight to the sink, without holding the client's lock.
            match msg {
                ClientMsg::Key { down, keysym } => return sh.input.key(keysym, down),
                ClientMsg::Pointer { buttons, x, y } => return sh.input.pointer(x, y, buttons),
                ClientMsg::CutText { .. } => return,
                _ => {}
            }
            let mut st = client.state.lock();
            if matches!(msg, ClientMsg::UpdateRequest { .. } | ClientMsg::SetEncodings(_)) {
                wake = true;
            }
            let log =
                matches!(msg, ClientMsg::SetEncodings(_) | ClientMsg::SetPixelFormat(_)).then(|| format!("{msg:?}"));
            if let Err(e) = st.apply(msg, &*sh.input) {
                err = Some(e);
            } else if let Some(m) = log {
                debug!("vnc: connection {id}: {m} -> {:?}", st.encoding);
            }
        });
        if let Err(e) = parsed {
            warn!("vnc: connection {id}: {e}; closing");
            break Ok(());
        }
        if let Some(e) = err {
            warn!("vnc: connection {id}: {e}; closing");
            break Ok(());
        }
        let st = client.state.lock();
        if st.closed {
            break Ok(());
        }
        if wake {
            client.cv.notify_one();
        }
    };
    client.state.lock().closed = true;
    client.cv.notify_all();
    let _ = stream.shutdown(Shutdown::Both);
    let _ = sender.join();
    result
}

fn send_loop(sh: &Shared, client: &Client, out: &Mutex<Out>, mut client_size: (u32, u32)) -> io::Result<()> {
    let mut encoder = Encoder::new();
    let mut level_set = false;
    loop {
        let work = {
            let mut st = client.state.lock();
            loop {
                if st.closed || sh.stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if st.ready(client_size, sh.frame_size()) {
                    if !level_set {
                        if let Some(l) = st.level {
                            encoder.set_level(l);
                        }
                    }
                    break st.take_work().expect("ready implies a request");
                }
                client.cv.wait(&mut st);
            }
        };
        level_set = true;
        let (resized, rects) = {
            let f = sh.frame.read();
            gather(&work, &f, &mut client_size)
        };
        let resized = resized.then_some(client_size);
        let n = write_update(&mut *out.lock(), &mut encoder, &work, resized, &rects)?;
        let c = &sh.counters;
        c.updates.fetch_add(1, Ordering::Relaxed);
        c.rects.fetch_add(rects.len() as u64, Ordering::Relaxed);
        c.bytes.fetch_add(n, Ordering::Relaxed);
    }
}
