//! Minimal RFC 6455 WebSocket transport: the HTTP upgrade, a reader that unwraps client frames
//! into a byte stream, and a writer that wraps bytes into binary frames.

use crate::conn::Conn;
use std::io::{self, Read, Write};
use std::sync::Arc;

use base64::Engine;
use parking_lot::Mutex;
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Longest HTTP upgrade request accepted.
const MAX_REQUEST: usize = 8192;
/// Largest payload written in one frame.
const MAX_FRAME_OUT: usize = 1 << 16;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// The `Sec-WebSocket-Accept` value for a key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Reads the client's HTTP upgrade request and answers it. Anything but a WebSocket upgrade
/// gets a 400 and an error.
pub(crate) fn server_upgrade(s: &mut Conn) -> io::Result<()> {
    let mut req = Vec::with_capacity(512);
    let mut byte = [0u8];
    while !req.ends_with(b"\r\n\r\n") {
        if req.len() >= MAX_REQUEST {
            return Err(bad("HTTP request too long"));
        }
        if s.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        req.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&req);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut key = None;
    let mut upgrade = false;
    let mut binary = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "sec-websocket-key" => key = Some(value.to_string()),
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "sec-websocket-protocol" => binary = value.split(',').any(|p| p.trim() == "binary"),
            _ => {}
        }
    }
    let (Some(key), true, true) = (key, upgrade, request_line.starts_with("GET ")) else {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Err(bad("not a WebSocket upgrade request"));
    };
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(&key)
    );
    if binary {
        resp.push_str("Sec-WebSocket-Protocol: binary\r\n");
    }
    resp.push_str("\r\n");
    s.write_all(resp.as_bytes())?;
    s.flush()
}

/// Appends a frame header (server frames are never masked).
fn frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The sending half of a connection: plain TCP or WebSocket binary frames.
pub(crate) enum Out {
    Tcp(Conn),
    Ws(Conn),
}

impl Out {
    /// Sends a control frame (WebSocket only).
    fn control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        if let Out::Ws(s) = self {
            let mut f = Vec::with_capacity(payload.len() + 2);
            frame_header(&mut f, opcode, payload.len());
            f.extend_from_slice(payload);
            s.write_all(&f)?;
        }
        Ok(())
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Tcp(s) => s.write(buf),
            Out::Ws(s) => {
                if buf.is_empty() {
                    return Ok(0);
                }
                let n = buf.len().min(MAX_FRAME_OUT);
                let mut f = Vec::with_capacity(n + 10);
                frame_header(&mut f, 2, n);
                f.extend_from_slice(&buf[..n]);
                s.write_all(&f)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Tcp(s) | Out::Ws(s) => s.flush(),
        }
    }
}

/// Reads the payload bytes of client frames as one stream, answering pings and closes.
pub(crate) struct WsReader {
    s: Conn,
    out: Arc<Mutex<Out>>,
    remaining: u64,
    mask: [u8; 4],
    pos: usize,
    closed: bool,
}

impl WsReader {
    pub(crate) fn new(s: Conn, out: Arc<Mutex<Out>>) -> WsReader {
        WsReader { s, out, remaining: 0, mask: [0; 4], pos: 0, closed: false }
    }

    /// Reads a frame header; returns the opcode and sets up payload reading.
    fn header(&mut self) -> io::Result<u8> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h)?;
        let opcode = h[0] & 0x0f;
        if h[1] & 0x80 == 0 {
            return Err(bad("unmasked client frame"));
        }
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            self.s.read_exact(&mut b)?;
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.s.read_exact(&mut b)?;
            len = u64::from_be_bytes(b);
        }
        self.s.read_exact(&mut self.mask)?;
        self.remaining = len;
        self.pos = 0;
        Ok(opcode)
    }

    fn read_payload(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.s.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        for b in &mut buf[..n] {
            *b ^= self.mask[self.pos & 3];
            self.pos += 1;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl Read for WsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.closed {
                return Ok(0);
            }
            if self.remaining > 0 {
                return self.read_payload(buf);
            }
            let opcode = self.header()?;
            match opcode {
                0..=2 => continue, // continuation, text, binary: payload is RFB data
                8..=10 => {
                    if self.remaining > 125 {
                        return Err(bad("control frame too long"));
                    }
                    let mut p = [0u8; 125];
                    let len = self.remaining as usize;
                    let mut got = 0;
                    while got < len {
                        got += self.read_payload(&mut p[got..len])?;
                    }
                    match opcode {
                        8 => {
                            let _ = self.out.lock().control(8, &p[..len.min(2)]);
                            self.closed = true;
                        }
                        9 => self.out.lock().control(10, &p[..len])?,
                        _ => {}
                    }
                }
                other => return Err(bad(&format!("unknown WebSocket opcode {other}"))),
            }
        }
    }
}
