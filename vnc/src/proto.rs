//! The RFB handshake and the client-to-server message parser.

use std::io::{self, Read, Write};

use des::cipher::{BlockEncrypt, KeyInit};

use crate::pixel::PixelFormat;

/// Longest ClientCutText accepted; a longer one closes the connection.
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// Longest client message kept in the parser's buffer (a SetEncodings with 65535 entries).
const MAX_MESSAGE: usize = 4 + 65535 * 4;
/// Most encodings remembered from one SetEncodings.
pub const MAX_ENCODINGS: usize = 64;

/// A client-to-server message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// SetPixelFormat.
    SetPixelFormat(PixelFormat),
    /// SetEncodings (only the first [`MAX_ENCODINGS`] are kept).
    SetEncodings(Vec<i32>),
    /// FramebufferUpdateRequest.
    UpdateRequest {
        /// Only changes are wanted.
        incremental: bool,
        /// X.
        x: u16,
        /// Y.
        y: u16,
        /// Width.
        w: u16,
        /// Height.
        h: u16,
    },
    /// KeyEvent.
    Key {
        /// Pressed.
        down: bool,
        /// X11 keysym.
        keysym: u32,
    },
    /// PointerEvent.
    Pointer {
        /// Button mask.
        buttons: u8,
        /// X.
        x: u16,
        /// Y.
        y: u16,
    },
    /// ClientCutText (the text itself is discarded).
    CutText {
        /// Its length.
        len: u32,
    },
}

/// A protocol violation by the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Unknown message type.
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    /// ClientCutText too long.
    #[error("client cut text of {0} bytes is too long")]
    CutTextTooLong(u32),
}

/// Incremental parser for client messages: feed it bytes as they arrive.
#[derive(Default)]
pub struct MessageParser {
    buf: Vec<u8>,
    skip: usize,
}

impl MessageParser {
    /// A parser at a message boundary.
    pub fn new() -> MessageParser {
        MessageParser::default()
    }

    /// Feeds bytes; calls `out` for each complete message. After an error the parser must not be
    /// used again (the connection is to be closed).
    pub fn push(&mut self, mut data: &[u8], out: &mut dyn FnMut(ClientMsg)) -> Result<(), ProtoError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip > 0 {
                    return Ok(());
                }
            }
            if data.is_empty() && self.buf.is_empty() {
                return Ok(());
            }
            // Take just enough bytes to complete the current message.
            let need = loop {
                match message_len(&self.buf)? {
                    Needed::Total(n) if self.buf.len() >= n => break Some(n),
                    Needed::Total(n) | Needed::AtLeast(n) => {
                        if data.is_empty() {
                            break None;
                        }
                        let take = (n - self.buf.len()).min(data.len());
                        self.buf.extend_from_slice(&data[..take]);
                        data = &data[take..];
                    }
                }
            };
            let Some(n) = need else { return Ok(()) };
            debug_assert!(n <= MAX_MESSAGE);
            let msg = decode(&self.buf[..n]);
            self.buf.clear();
            if let ClientMsg::CutText { len } = msg {
                self.skip = len as usize;
            }
            out(msg);
        }
    }
}

enum Needed {
    /// The message is exactly this long.
    Total(usize),
    /// At least this many bytes are needed to know the length.
    AtLeast(usize),
}

fn message_len(b: &[u8]) -> Result<Needed, ProtoError> {
    let Some(&t) = b.first() else { return Ok(Needed::AtLeast(1)) };
    Ok(match t {
        0 => Needed::Total(20),
        2 => {
            if b.len() < 4 {
                Needed::AtLeast(4)
            } else {
                Needed::Total(4 + 4 * u16::from_be_bytes([b[2], b[3]]) as usize)
            }
        }
        3 => Needed::Total(10),
        4 => Needed::Total(8),
        5 => Needed::Total(6),
        6 => {
            if b.len() < 8 {
                Needed::AtLeast(8)
            } else {
                let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                if len > MAX_CUT_TEXT {
                    return Err(ProtoError::CutTextTooLong(len));
                }
                Needed::Total(8)
            }
        }
        other => return Err(ProtoError::UnknownMessage(other)),
    })
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes one complete message (its length was checked by `message_len`).
fn decode(b: &[u8]) -> ClientMsg {
    match b[0] {
        0 => {
            let mut pf = [0u8; 16];
            pf.copy_from_slice(&b[4..20]);
            ClientMsg::SetPixelFormat(PixelFormat::from_bytes(&pf))
        }
        2 => {
            let n = be16(b, 2) as usize;
            ClientMsg::SetEncodings((0..n.min(MAX_ENCODINGS)).map(|i| be32(b, 4 + 4 * i) as i32).collect())
        }
        3 => ClientMsg::UpdateRequest {
            incremental: b[1] != 0,
            x: be16(b, 2),
            y: be16(b, 4),
            w: be16(b, 6),
            h: be16(b, 8),
        },
        4 => ClientMsg::Key { down: b[1] != 0, keysym: be32(b, 4) },
        5 => ClientMsg::Pointer { buttons: b[1], x: be16(b, 2), y: be16(b, 4) },
        _ => ClientMsg::CutText { len: be32(b, 4) },
    }
}

/// The protocol version agreed with a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 3.3: the server picks the security type, no failure reasons.
    V3_3,
    /// 3.7: security type list, no SecurityResult for None.
    V3_7,
    /// 3.8: security type list, SecurityResult always, failure reasons.
    V3_8,
}

/// Parses a ProtocolVersion message.
pub fn parse_version(b: &[u8; 12]) -> Option<Version> {
    if &b[..4] != b"RFB " || b[7] != b'.' || b[11] != b'\n' {
        return None;
    }
    let num = |s: &[u8]| -> Option<u32> {
        if s.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(s).ok()?.parse().ok()
        } else {
            None
        }
    };
    let major = num(&b[4..7])?;
    let minor = num(&b[8..11])?;
    Some(match (major, minor) {
        (3, 7) => Version::V3_7,
        (3, m) if m >= 8 => Version::V3_8,
        (3, _) => Version::V3_3,
        (m, _) if m > 3 => Version::V3_8,
        _ => return None,
    })
}

/// The response a client must give to `challenge` for `password` (VNC Authentication).
pub fn vnc_auth_response(password: &str, challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.bytes()) {
        *k = b.reverse_bits();
    }
    let cipher = des::Des::new_from_slice(&key).expect("DES key is 8 bytes");
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(des::cipher::generic_array::GenericArray::from_mut_slice(block));
    }
    out
}

/// 16 unpredictable bytes for a VNC Authentication challenge.
pub(crate) fn random_challenge() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = [0u8; 16];
    for chunk in out.chunks_exact_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        h.write_u128(t);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// What the handshake learned.
#[derive(Debug)]
pub(crate) struct Handshake {
    pub version: Version,
}

/// Why a handshake ended without a session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("bad protocol version {0:?}")]
    BadVersion(String),
    #[error("client chose unoffered security type {0}")]
    BadSecurityType(u8),
    #[error("authentication failed ({failures} in a row); VNC Authentication refused for {locked:?}")]
    AuthFailed {
        /// Failures in a row, this one included.
        failures: u32,
        /// How long further attempts are refused.
        locked: std::time::Duration,
    },
    #[error("authentication refused for {0:?} more after failed attempts")]
    Throttled(std::time::Duration),
}

/// The refusal after the first failed VNC Authentication.
pub const AUTH_LOCK_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest refusal: the interval doubles with every failure up to this.
pub const AUTH_LOCK_MAX: std::time::Duration = std::time::Duration::from_secs(64);

/// The limit on failed VNC Authentication, shared by every client of a
/// server: after a failure, attempts from any client are refused for
/// [`AUTH_LOCK_FIRST`], doubling with each failure in a row up to
/// [`AUTH_LOCK_MAX`]; a success ends the series.
#[derive(Debug, Default)]
pub(crate) struct AuthLimit {
    state: parking_lot::Mutex<AuthLimitState>,
}

#[derive(Debug, Default)]
struct AuthLimitState {
    failures: u32,
    until: Option<std::time::Instant>,
}

impl AuthLimit {
    /// `Err` with the time left while attempts are refused at `now`.
    pub(crate) fn check(&self, now: std::time::Instant) -> Result<(), std::time::Duration> {
        match self.state.lock().until {
            Some(t) if t > now => Err(t - now),
            _ => Ok(()),
        }
    }

    /// Records a failure at `now`: the failures in a row and the refusal.
    pub(crate) fn failed(&self, now: std::time::Instant) -> (u32, std::time::Duration) {
        let mut st = self.state.lock();
        st.failures = st.failures.saturating_add(1);
        let shift = (st.failures - 1).min(31);
        let locked = AUTH_LOCK_FIRST.saturating_mul(1u32 << shift).min(AUTH_LOCK_MAX);
        st.until = Some(now + locked);
        (st.failures, locked)
    }

    /// A success (or a new password): the series ends.
    pub(crate) fn reset(&self) {
        *self.state.lock() = AuthLimitState::default();
    }
}

const SEC_NONE: u8 = 1;
const SEC_VNC_AUTH: u8 = 2;

/// Runs the server side of the handshake up to (not including) ClientInit. `password` is
/// `None` for no authentication; `Some("")` means authentication is required but no password
/// is set, so every attempt fails.
pub(crate) fn server_handshake<S: Read + Write>(
    s: &mut S,
    password: Option<&str>,
    limit: &AuthLimit,
) -> Result<Handshake, HandshakeError> {
    s.write_all(b"RFB 003.008\n")?;
    s.flush()?;
    let mut v = [0u8; 12];
    s.read_exact(&mut v)?;
    let version = parse_version(&v).ok_or_else(|| HandshakeError::BadVersion(String::from_utf8_lossy(&v).into()))?;
    let sec = if password.is_some() { SEC_VNC_AUTH } else { SEC_NONE };
    if password.is_some() {
        if let Err(left) = limit.check(std::time::Instant::now()) {
            // No security type: the connection failed, with a reason.
            let reason = too_many(left);
            if version == Version::V3_3 {
                s.write_all(&0u32.to_be_bytes())?;
            } else {
                s.write_all(&[0])?;
            }
            s.write_all(&(reason.len() as u32).to_be_bytes())?;
            s.write_all(reason.as_bytes())?;
            s.flush()?;
            return Err(HandshakeError::Throttled(left));
        }
    }
    match version {
        Version::V3_3 => {
            s.write_all(&(sec as u32).to_be_bytes())?;
            s.flush()?;
        }
        _ => {
            s.write_all(&[1, sec])?;
            s.flush()?;
            let mut chosen = [0u8];
            s.read_exact(&mut chosen)?;
            if chosen[0] != sec {
                if version == Version::V3_8 {
                    fail(s, "security type not offered")?;
                }
                return Err(HandshakeError::BadSecurityType(chosen[0]));
            }
        }
    }
    if let Some(pw) = password {
        let challenge = random_challenge();
        s.write_all(&challenge)?;
        s.flush()?;
        let mut resp = [0u8; 16];
        s.read_exact(&mut resp)?;
        let now = std::time::Instant::now();
        // Another client failed while this one answered: refused unread.
        let blocked = limit.check(now).err();
        let expected = vnc_auth_response(pw, &challenge);
        let ok = blocked.is_none()
            && !pw.is_empty()
            && resp.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !ok {
            let (reason, err) = match blocked {
                Some(left) => (too_many(left), HandshakeError::Throttled(left)),
                None => {
                    let (failures, locked) = limit.failed(now);
                    ("Authentication failed".to_string(), HandshakeError::AuthFailed { failures, locked })
                }
            };
            if version == Version::V3_8 {
                fail(s, &reason)?;
            } else {
                s.write_all(&1u32.to_be_bytes())?;
                s.flush()?;
            }
            return Err(err);
        }
        limit.reset();
        s.write_all(&0u32.to_be_bytes())?;
    } else if version == Version::V3_8 {
        s.write_all(&0u32.to_be_bytes())?;
    }
    s.flush()?;
    Ok(Handshake { version })
}

/// The reason given while attempts are refused.
fn too_many(left: std::time::Duration) -> String {
    format!("Too many authentication failures; try again in {} ms", left.as_millis().max(1))
}

fn fail<W: Write>(s: &mut W, reason: &str) -> io::Result<()> {
    s.write_all(&1u32.to_be_bytes())?;
    s.write_all(&(reason.len() as u32).to_be_bytes())?;
    s.write_all(reason.as_bytes())?;
    s.flush()
}

/// Reads ClientInit and writes ServerInit.
pub(crate) fn server_init<S: Read + Write>(s: &mut S, width: u32, height: u32, name: &str) -> io::Result<()> {
    let mut shared = [0u8];
    s.read_exact(&mut shared)?;
    let mut out = Vec::with_capacity(24 + name.len());
    out.extend_from_slice(&(width.min(65535) as u16).to_be_bytes());
    out.extend_from_slice(&(height.min(65535) as u16).to_be_bytes());
    out.extend_from_slice(&PixelFormat::XRGB32.to_bytes());
    let name = &name.as_bytes()[..name.len().min(4096)];
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    s.write_all(&out)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_auth_lock_out_doubles_to_its_cap_and_a_success_ends_it() {
        let limit = AuthLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.check(t0), Ok(()));
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for n in 1..=10u32 {
            let (count, locked) = limit.failed(t0);
            assert_eq!(count, n);
            got.push(locked.as_secs());
            expected.push((1u64 << (n - 1)).min(64));
        }
        assert_eq!(got, expected, "1, 2, 4 ... 64 s");
        assert_eq!(limit.check(t0 + Duration::from_secs(63)), Err(Duration::from_secs(1)));
        assert_eq!(limit.check(t0 + Duration::from_secs(64)), Ok(()));
        limit.reset();
        assert_eq!(limit.check(t0), Ok(()));
        assert_eq!(limit.failed(t0), (1, AUTH_LOCK_FIRST));
        // Failures far beyond the cap neither overflow nor grow it.
        for _ in 0..100 {
            limit.failed(t0);
        }
        assert_eq!(limit.failed(t0).1, AUTH_LOCK_MAX);
    }

    #[test]
    fn a_client_in_the_lock_out_gets_no_security_type_and_a_reason() {
        struct Mem(std::io::Cursor<Vec<u8>>, Vec<u8>);
        impl Read for Mem {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Write for Mem {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.1.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let limit = AuthLimit::default();
        limit.failed(Instant::now());
        let mut m = Mem(std::io::Cursor::new(b"RFB 003.008\n".to_vec()), Vec::new());
        let e = server_handshake(&mut m, Some("pw"), &limit).unwrap_err();
        assert!(matches!(e, HandshakeError::Throttled(d) if d <= AUTH_LOCK_FIRST), "{e}");
        assert_eq!(m.1[12], 0, "no security type");
        let reason = String::from_utf8_lossy(&m.1[17..]);
        assert!(reason.starts_with("Too many authentication failures"), "{reason}");
        // Without a password there is nothing to guess: no refusal.
        let mut m = Mem(std::io::Cursor::new(b"RFB 003.008\n\x01".to_vec()), Vec::new());
        assert!(server_handshake(&mut m, None, &limit).is_ok());
    }
}
