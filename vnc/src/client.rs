//! A small RFB client, for tests and benchmarks that look at a server from
//! the outside: the 3.8 handshake (None or VNC authentication), key and
//! pointer events, update requests, and FramebufferUpdates read in Raw
//! (decoded) or Tight (skipped by their lengths) encodings.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::conn::Conn;
use crate::proto::vnc_auth_response;

/// Encodings the client can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEncoding {
    /// Raw: the pixels themselves, decoded into [`Client::pixels`].
    Raw,
    /// Tight: read and skipped (the update's area is still counted).
    Tight,
}

/// A client past the handshake.
pub struct Client {
    stream: Conn,
    /// The screen's width and height, as ServerInit (and DesktopSize) said.
    pub size: (u16, u16),
    /// The screen's pixels (XRGB), kept up to date by Raw updates.
    pub pixels: Vec<u32>,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Client {
    /// Connects to `addr`, with VNC authentication when `password` is
    /// given, and asks for `encoding` (with DesktopSize). A refused
    /// authentication is an error of kind `PermissionDenied` carrying the
    /// server's reason.
    pub fn connect(addr: SocketAddr, password: Option<&str>, encoding: ClientEncoding) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        Self::handshake(Conn::Tcp(s), password, encoding)
    }

    /// [`Client::connect`] over the Unix socket at `path`.
    pub fn connect_unix(path: &Path, password: Option<&str>, encoding: ClientEncoding) -> io::Result<Client> {
        let s = UnixStream::connect(path)?;
        Self::handshake(Conn::Unix(s), password, encoding)
    }

    fn handshake(mut s: Conn, password: Option<&str>, encoding: ClientEncoding) -> io::Result<Client> {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay()?;
        let mut version = [0u8; 12];
        s.read_exact(&mut version)?;
        if !version.starts_with(b"RFB 003.") {
            return Err(bad(format!("not an RFB server: {:?}", String::from_utf8_lossy(&version))));
        }
        s.write_all(b"RFB 003.008\n")?;
        let mut n = [0u8; 1];
        s.read_exact(&mut n)?;
        if n[0] == 0 {
            // No security type: the server refused the connection.
            let mut len = [0u8; 4];
            s.read_exact(&mut len)?;
            let mut r = vec![0u8; u32::from_be_bytes(len).min(4096) as usize];
            s.read_exact(&mut r)?;
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refused: {}", String::from_utf8_lossy(&r)),
            ));
        }
        let mut types = vec![0u8; usize::from(n[0])];
        s.read_exact(&mut types)?;
        let wanted = if password.is_some() { 2 } else { 1 };
        if !types.contains(&wanted) {
            return Err(bad(format!("the server offers security types {types:?}, not {wanted}")));
        }
        s.write_all(&[wanted])?;
        if let Some(p) = password {
            let mut challenge = [0u8; 16];
            s.read_exact(&mut challenge)?;
            s.write_all(&vnc_auth_response(p, &challenge))?;
        }
        let mut result = [0u8; 4];
        s.read_exact(&mut result)?;
        if result != [0; 4] {
            let mut len = [0u8; 4];
            let reason = match s.read_exact(&mut len) {
                Ok(()) => {
                    let mut r = vec![0u8; u32::from_be_bytes(len).min(4096) as usize];
                    s.read_exact(&mut r)?;
                    String::from_utf8_lossy(&r).into_owned()
                }
                Err(_) => String::new(),
            };
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("refused: {reason}")));
        }
        s.write_all(&[1])?;
        let mut init = [0u8; 24];
        s.read_exact(&mut init)?;
        let mut name = vec![0u8; u32::from_be_bytes([init[20], init[21], init[22], init[23]]).min(4096) as usize];
        s.read_exact(&mut name)?;
        let size = (u16::from_be_bytes([init[0], init[1]]), u16::from_be_bytes([init[2], init[3]]));
        // The default 32-bit format is kept: little-endian XRGB.
        let code: i32 = match encoding {
            ClientEncoding::Raw => 0,
            ClientEncoding::Tight => 7,
        };
        let mut m = vec![2, 0, 0, 2];
        m.extend(code.to_be_bytes());
        m.extend((-223i32).to_be_bytes());
        s.write_all(&m)?;
        let pixels = vec![0; usize::from(size.0) * usize::from(size.1)];
        Ok(Client { stream: s, size, pixels })
    }

    /// Asks for an update of the whole screen.
    pub fn request(&mut self, incremental: bool) -> io::Result<()> {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend(self.size.0.to_be_bytes());
        m.extend(self.size.1.to_be_bytes());
        self.stream.write_all(&m)
    }

    /// Presses (`down`) or releases the key `keysym`.
    pub fn key(&mut self, keysym: u32, down: bool) -> io::Result<()> {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend(keysym.to_be_bytes());
        self.stream.write_all(&m)
    }

    /// Moves the pointer to (`x`, `y`) with `buttons` held.
    pub fn pointer(&mut self, x: u16, y: u16, buttons: u8) -> io::Result<()> {
        let mut m = vec![5, buttons];
        m.extend(x.to_be_bytes());
        m.extend(y.to_be_bytes());
        self.stream.write_all(&m)
    }

    /// Reads one FramebufferUpdate; the number of pixels its rectangles
    /// covered. Other server messages (Bell, ServerCutText) are skipped.
    pub fn read_update(&mut self) -> io::Result<u64> {
        loop {
            let mut t = [0u8; 1];
            self.stream.read_exact(&mut t)?;
            match t[0] {
                0 => break,
                2 => continue,
                3 => {
                    let mut h = [0u8; 7];
                    self.stream.read_exact(&mut h)?;
                    let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]);
                    io::copy(&mut (&mut self.stream).take(u64::from(len)), &mut io::sink())?;
                }
                other => return Err(bad(format!("server message type {other}"))),
            }
        }
        let mut head = [0u8; 3];
        self.stream.read_exact(&mut head)?;
        let rects = u16::from_be_bytes([head[1], head[2]]);
        let mut covered = 0u64;
        for _ in 0..rects {
            let mut r = [0u8; 12];
            self.stream.read_exact(&mut r)?;
            let [x, y, w, h] = [0, 2, 4, 6].map(|i| u16::from_be_bytes([r[i], r[i + 1]]));
            let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
            match enc {
                0 => {
                    let mut px = vec![0u8; usize::from(w) * usize::from(h) * 4];
                    self.stream.read_exact(&mut px)?;
                    let width = usize::from(self.size.0);
                    for (row, line) in px.chunks_exact(usize::from(w) * 4).enumerate() {
                        let at = (usize::from(y) + row) * width + usize::from(x);
                        for (i, p) in line.chunks_exact(4).enumerate() {
                            if let Some(d) = self.pixels.get_mut(at + i) {
                                *d = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                            }
                        }
                    }
                    covered += u64::from(w) * u64::from(h);
                }
                7 => {
                    self.skip_tight(w, h)?;
                    covered += u64::from(w) * u64::from(h);
                }
                -223 => {
                    self.size = (w, h);
                    self.pixels = vec![0; usize::from(w) * usize::from(h)];
                }
                other => return Err(bad(format!("encoding {other}, which was not asked for"))),
            }
        }
        Ok(covered)
    }

    /// Skips a Tight rectangle: a fill, or basic compression (raw below 12
    /// bytes, else a compact length and zlib data).
    fn skip_tight(&mut self, w: u16, h: u16) -> io::Result<()> {
        let mut ctl = [0u8; 1];
        self.stream.read_exact(&mut ctl)?;
        let kind = ctl[0] >> 4;
        if kind == 8 {
            let mut px = [0u8; 3];
            return self.stream.read_exact(&mut px);
        }
        if kind > 8 {
            return Err(bad(format!("Tight control {:#x}: not fill or basic", ctl[0])));
        }
        if kind & 4 != 0 {
            let mut filter = [0u8; 1];
            self.stream.read_exact(&mut filter)?;
            if filter[0] != 0 {
                return Err(bad(format!("Tight filter {}: not the copy filter", filter[0])));
            }
        }
        let raw = usize::from(w) * usize::from(h) * 3;
        let len = if raw < 12 {
            raw
        } else {
            let mut len = 0usize;
            for shift in [0, 7, 14] {
                let mut b = [0u8; 1];
                self.stream.read_exact(&mut b)?;
                // The third byte has no continuation bit.
                let bits = if shift == 14 { b[0] } else { b[0] & 0x7f };
                len |= usize::from(bits) << shift;
                if shift == 14 || b[0] & 0x80 == 0 {
                    break;
                }
            }
            len
        };
        io::copy(&mut (&mut self.stream).take(len as u64), &mut io::sink())?;
        Ok(())
    }

    /// The pixels of a whole screen.
    pub fn area(&self) -> u64 {
        u64::from(self.size.0) * u64::from(self.size.1)
    }
}
