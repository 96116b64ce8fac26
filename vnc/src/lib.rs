//! A VNC server (RFB protocol 3.8, also 3.7 and 3.3) for an emulated display, over TCP and
//! optionally WebSocket (RFC 6455, for browser clients such as noVNC).
//!
//! # Protocol subset
//!
//! - Security: None when no password is set, otherwise VNC Authentication (DES of a random
//!   16-byte challenge keyed by the bit-reversed first 8 password bytes). A failed attempt
//!   gets SecurityResult "failed" (with a reason string under 3.8) and the connection is closed.
//!   After a failure, VNC Authentication from any client is refused (no security type, with a
//!   reason) for [`AUTH_LOCK_FIRST`], doubling with each failure in a row up to
//!   [`AUTH_LOCK_MAX`]; a success, or a new password, ends the series. A response that
//!   arrives while attempts are refused is not checked.
//! - ServerInit offers 32 bpp, depth 24, little-endian true colour (0x00RRGGBB). SetPixelFormat
//!   is honoured for any true-colour 8/16/32 bpp format (any maxima, shifts and byte order);
//!   colour-map formats close the connection.
//! - Encodings sent: Raw (0), Zlib (6, one zlib stream per connection), Tight (7: fill for
//!   solid rectangles, basic compression with the copy filter on stream 0, no JPEG) and ZRLE
//!   (16: solid and raw tiles). The first of these in the client's SetEncodings list is used
//!   (Raw when none is listed). CopyRect (1) is accepted but never sent. Pseudo-encodings:
//!   DesktopSize (-223) on a size change and the compression levels (-256..-247).
//!   Rectangles are split to at most 2048 pixels wide and 65536 pixels in all.
//! - Client messages: SetPixelFormat, SetEncodings (first 64 entries kept),
//!   FramebufferUpdateRequest (clipped to the frame), KeyEvent and PointerEvent (passed to
//!   the [`InputSink`]), ClientCutText (discarded; longer than 1 MiB closes the connection).
//!   Any other message type closes the connection. Unsupported: colour maps, the Hextile,
//!   RRE and JPEG encodings, CopyRect scroll detection, ExtendedDesktopSize, QEMU extended
//!   key events, continuous updates and fences (none of them is announced to clients).
//!
//! # Threads
//!
//! Listeners: TCP (RFB and WebSocket) and a Unix socket (RFB). One accept thread per listener; a refresh thread that calls [`FrameSource::update`] every
//! `refresh` period while at least one client is connected (and sleeps on a condition variable
//! when none is) and merges the changed rectangles into each client's dirty region; and two
//! threads per client: a reader (handshake, then message parsing and input) and a sender that
//! sleeps until the client has asked for an update and something is pending, then copies the
//! pixels under a read lock, encodes them and writes them. A slow client only delays its own
//! sender: changes coalesce into its dirty region, never into a queue of frames.
//!
//! # Limits
//!
//! At most [`MAX_CLIENTS`] connections; a handshake must finish within 30 s; a write blocked
//! for 30 s drops the client; dirty regions keep at most 32 rectangles (then collapse to their
//! bounding box); a WebSocket upgrade request is limited to 8 KiB; control frames to 125 bytes.
//! Every length and value a client sends is checked; errors end only that client's threads.
#![forbid(unsafe_code)]

pub mod client;
mod conn;
mod encode;
mod image;
mod keysym;
mod pixel;
mod proto;
mod server;
mod spec;
mod ws;

use std::net::SocketAddr;
use std::time::Duration;

pub use encode::Encoding;
pub use image::{encode_png, encode_ppm, write_png, write_ppm};
pub use keysym::{keysym_to_set1, PAUSE_SET1, XK_PAUSE};
pub use pixel::PixelFormat;
pub use proto::{
    parse_version, vnc_auth_response, ClientMsg, MessageParser, ProtoError, Version, AUTH_LOCK_FIRST, AUTH_LOCK_MAX,
    MAX_CUT_TEXT, MAX_ENCODINGS,
};
pub use server::{VncServer, MAX_CLIENTS};
pub use spec::{parse_vnc_spec, VncListen, VncSpec, RFB_BASE_PORT, WEBSOCKET_BASE_PORT};
pub use ws::accept_key as websocket_accept_key;

/// A picture: XRGB pixels (0x00RRGGBB), row-major, `width * height` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The pixels.
    pub pixels: Vec<u32>,
}

/// A rectangle of the frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// Where the screen comes from. Called from the server's refresh thread only.
pub trait FrameSource: Send + 'static {
    /// Brings `frame` up to date; returns the rectangles that changed since the previous call
    /// (the server treats a size change as a full change and sends DesktopSize where the
    /// client supports it). Rectangles are clipped to the frame; a pixel vector of the wrong
    /// length is padded or cut to `width * height`.
    fn update(&mut self, frame: &mut Frame) -> Vec<Rect>;
}

/// Where input goes.
pub trait InputSink: Send + Sync + 'static {
    /// A key press or release, as an X11 keysym (see [`keysym_to_set1`]).
    fn key(&self, keysym: u32, down: bool);
    /// Absolute position in the frame, buttons as RFB's mask (bit 0 left, bit 1 middle,
    /// bit 2 right, bits 3/4 wheel up/down). The position is passed as the client sent it:
    /// it can lie outside the frame (for example just after a size change), so clamp it.
    fn pointer(&self, x: u16, y: u16, buttons: u8);
}

/// Server configuration.
#[derive(Clone, Debug)]
pub struct VncConfig {
    /// RFB listeners.
    pub listen: Vec<SocketAddr>,
    /// An RFB listener on a Unix socket at this path.
    pub unix: Option<std::path::PathBuf>,
    /// WebSocket listener.
    pub websocket: Option<SocketAddr>,
    /// VNC Authentication password (only the first 8 bytes count); `None` for no
    /// authentication, `Some("")` to require authentication that always fails until a password
    /// is set with [`VncServer::set_password`].
    pub password: Option<String>,
    /// Desktop name sent in ServerInit.
    pub name: String,
    /// Period of the refresh thread (for example 30 ms).
    pub refresh: Duration,
}

/// Server counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VncStats {
    /// Clients past the handshake now.
    pub clients: usize,
    /// Connections accepted since the start.
    pub connections: u64,
    /// Failed VNC Authentication attempts.
    pub auth_failures: u64,
    /// Connections refused because of recent failed attempts.
    pub auth_refused: u64,
    /// FramebufferUpdate messages sent.
    pub updates_sent: u64,
    /// Rectangles sent (excluding pseudo-rectangles).
    pub rects_sent: u64,
    /// Bytes of FramebufferUpdate messages sent.
    pub bytes_sent: u64,
    /// Refreshes in which the frame changed.
    pub frame_updates: u64,
}

/// Drives the whole server-side protocol over in-memory data, for fuzzing: `data` is what a
/// client sends (handshake included; the first byte selects no authentication or a password).
/// Updates for a small test frame are encoded into memory for every request. Must never panic
/// nor allocate without bound, whatever `data` is.
pub fn fuzz_client_messages(data: &[u8]) {
    use std::io::{Cursor, Read, Write};

    struct Mem<'a> {
        input: Cursor<&'a [u8]>,
        output: Vec<u8>,
    }
    impl Read for Mem<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Mem<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.output.len() > 1 << 16 {
                self.output.clear();
            }
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    struct NoInput;
    impl InputSink for NoInput {
        fn key(&self, _: u32, _: bool) {}
        fn pointer(&self, _: u16, _: u16, _: u8) {}
    }

    let Some((&mode, rest)) = data.split_first() else { return };
    let mut mem = Mem { input: Cursor::new(rest), output: Vec::new() };
    let password = (mode & 1 == 1).then_some("secret");
    if mode & 2 == 2 {
        // Handshake path.
        if proto::server_handshake(&mut mem, password, &proto::AuthLimit::default()).is_err() {
            return;
        }
        if proto::server_init(&mut mem, 37, 23, "fuzz").is_err() {
            return;
        }
    }
    let pos = mem.input.position() as usize;
    let rest = &rest[pos.min(rest.len())..];

    let frame =
        Frame { width: 37, height: 23, pixels: (0..37 * 23u32).map(|i| i.wrapping_mul(2654435761) >> 8).collect() };
    let mut state = server::ClientState::new();
    let mut encoder = encode::Encoder::new();
    let mut client_size = if mode & 4 == 4 { (20, 30) } else { (37, 23) };
    let mut parser = MessageParser::new();
    let chunk = 1 + (mode >> 3) as usize;
    for piece in rest.chunks(chunk) {
        let mut err = false;
        let r = parser.push(piece, &mut |msg| {
            if !err && state.apply(msg, &NoInput).is_err() {
                err = true;
            }
        });
        if r.is_err() || err {
            return;
        }
        if let Some(work) = state.take_work() {
            let (resized, rects) = server::gather(&work, &frame, &mut client_size);
            let _ = server::write_update(&mut mem, &mut encoder, &work, resized.then_some(client_size), &rects);
        }
        state.dirty.add(Rect { x: 3, y: 4, w: 50, h: 7 });
    }
}
