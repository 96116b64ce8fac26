//! The NAT's read-only TFTP server (QEMU's `tftp=DIR`), on the gateway's
//! port 69 (RFC 1350), with the block-size, transfer-size and timeout
//! options (RFCs 2347, 2348, 2349) that PXE loaders and busybox ask for.
//!
//! A read request names a file under the served folder. The name is the
//! guest's: it may not leave the folder (no `..`, no absolute paths, and a
//! symbolic link that resolves outside is refused like a missing file), and
//! only regular files are served. Writes are refused, as QEMU refuses them.
//!
//! Each transfer answers from a port of its own on the gateway (its TID)
//! and sends one block at a time: the next goes when the guest
//! acknowledges the last, and the last is sent again when the guest stays
//! silent past the timeout, a few times, before the transfer is given up.
//! Duplicate acknowledgements are ignored (no "sorcerer's apprentice").

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddrV4;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) const TFTP_PORT: u16 = 69;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

const ERR_UNDEFINED: u16 = 0;
const ERR_NOT_FOUND: u16 = 1;
const ERR_ACCESS: u16 = 2;
const ERR_ILLEGAL: u16 = 4;
const ERR_UNKNOWN_TID: u16 = 5;
const ERR_OPTION: u16 = 8;

/// The block size without the option.
const DEFAULT_BLKSIZE: usize = 512;
/// The largest block that fits one 1500-byte IP packet (IP 20, UDP 8,
/// TFTP 4): a larger request is answered with this.
const MAX_BLKSIZE: usize = 1468;
/// The smallest block RFC 2348 allows.
const MIN_BLKSIZE: usize = 8;
/// Retransmission timeout without the option.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Sends of one packet before the transfer is given up.
const MAX_TRIES: u8 = 6;
/// Transfers at once; a request past them gets an error.
const MAX_TRANSFERS: usize = 32;
/// The first port transfers answer from.
const FIRST_TID: u16 = 49152;

/// One read in progress.
struct Transfer {
    file: File,
    size: u64,
    blksize: usize,
    timeout: Duration,
    /// The block last sent (0: the OACK, waiting for its ACK 0).
    block: u16,
    /// Bytes of the file sent up to and including `block`.
    sent: u64,
    /// The packet last sent, sent again on timeout.
    last: Vec<u8>,
    /// When `last` goes again.
    resend_at: Instant,
    tries: u8,
    /// `last` is the final block (shorter than `blksize`): its ACK ends the
    /// transfer.
    final_block: bool,
}

/// A packet for the guest: from the gateway's `src_port`, to `dst`.
pub(crate) struct Reply {
    pub src_port: u16,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// The TFTP server.
pub(crate) struct TftpServer {
    /// The served folder, resolved.
    root: PathBuf,
    transfers: HashMap<(SocketAddrV4, u16), Transfer>,
    next_tid: u16,
    /// Requests refused and transfers given up, for the stats.
    pub errors: u64,
    /// Transfers completed.
    pub completed: u64,
}

fn error_packet(code: u16, msg: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + msg.len());
    p.extend_from_slice(&OP_ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// The NUL-terminated strings of a request after its opcode.
fn strings(body: &[u8]) -> Option<Vec<&str>> {
    if body.last() != Some(&0) {
        return None;
    }
    body[..body.len() - 1].split(|&b| b == 0).map(|s| std::str::from_utf8(s).ok()).collect()
}

impl TftpServer {
    /// Serves `root`, which must be a folder.
    pub(crate) fn new(root: &Path) -> Result<Self, String> {
        let root = root.canonicalize().map_err(|e| format!("tftp={}: {e}", root.display())).and_then(|r| {
            if r.is_dir() {
                Ok(r)
            } else {
                Err(format!("tftp={}: not a folder", root.display()))
            }
        })?;
        Ok(TftpServer { root, transfers: HashMap::new(), next_tid: FIRST_TID, errors: 0, completed: 0 })
    }

    /// Whether a datagram to the gateway's `port` is this server's: a
    /// request, or a packet of a transfer from `guest`.
    pub(crate) fn claims(&self, guest: SocketAddrV4, port: u16) -> bool {
        port == TFTP_PORT || self.transfers.contains_key(&(guest, port))
    }

    /// The file a guest's name stands for, if it is under the root.
    fn resolve(&self, name: &str) -> Result<PathBuf, (u16, &'static str)> {
        let rel = Path::new(name.trim_start_matches('/'));
        if name.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err((ERR_ACCESS, "Access violation"));
        }
        let path = self.root.join(rel).canonicalize().map_err(|_| (ERR_NOT_FOUND, "File not found"))?;
        if !path.starts_with(&self.root) {
            // A link out of the folder: as if it were not there.
            return Err((ERR_NOT_FOUND, "File not found"));
        }
        if !path.is_file() {
            return Err((ERR_NOT_FOUND, "File not found"));
        }
        Ok(path)
    }

    fn tid(&mut self, guest: SocketAddrV4) -> u16 {
        loop {
            let t = self.next_tid;
            self.next_tid = if t == u16::MAX { FIRST_TID } else { t + 1 };
            if !self.transfers.contains_key(&(guest, t)) {
                return t;
            }
        }
    }

    /// A datagram from `guest` to the gateway's `port`: what goes back.
    pub(crate) fn handle(&mut self, guest: SocketAddrV4, port: u16, msg: &[u8], now: Instant) -> Option<Reply> {
        let refuse = |s: &mut Self, src_port: u16, code: u16, text: &str| {
            s.errors += 1;
            Some(Reply { src_port, dst: guest, payload: error_packet(code, text) })
        };
        if msg.len() < 2 {
            return None;
        }
        let op = u16::from_be_bytes([msg[0], msg[1]]);
        if port != TFTP_PORT {
            return self.transfer_packet(guest, port, op, &msg[2..], now);
        }
        match op {
            OP_RRQ => {}
            OP_WRQ => return refuse(self, TFTP_PORT, ERR_ACCESS, "Writes are not allowed"),
            _ => return refuse(self, TFTP_PORT, ERR_ILLEGAL, "Illegal TFTP operation"),
        }
        let Some(fields) = strings(&msg[2..]) else {
            return refuse(self, TFTP_PORT, ERR_ILLEGAL, "Malformed request");
        };
        if fields.len() < 2 || fields.len() % 2 != 0 {
            return refuse(self, TFTP_PORT, ERR_ILLEGAL, "Malformed request");
        }
        if !fields[1].eq_ignore_ascii_case("octet") {
            return refuse(self, TFTP_PORT, ERR_ILLEGAL, "Only octet mode is supported");
        }
        if self.transfers.len() >= MAX_TRANSFERS {
            return refuse(self, TFTP_PORT, ERR_UNDEFINED, "Too many transfers");
        }
        let path = match self.resolve(fields[0]) {
            Ok(p) => p,
            Err((code, text)) => return refuse(self, TFTP_PORT, code, text),
        };
        let Ok(file) = File::open(&path) else { return refuse(self, TFTP_PORT, ERR_ACCESS, "Cannot open the file") };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // The options the server takes, echoed in the OACK.
        let mut oack = Vec::new();
        let (mut blksize, mut timeout) = (DEFAULT_BLKSIZE, DEFAULT_TIMEOUT);
        for pair in fields[2..].chunks(2) {
            let (name, value) = (pair[0].to_ascii_lowercase(), pair[1]);
            let accepted = match name.as_str() {
                "blksize" => match value.parse::<usize>() {
                    Ok(n) if n >= MIN_BLKSIZE => {
                        blksize = n.min(MAX_BLKSIZE);
                        Some(blksize.to_string())
                    }
                    _ => return refuse(self, TFTP_PORT, ERR_OPTION, "Bad blksize"),
                },
                "tsize" => Some(size.to_string()),
                "timeout" => match value.parse::<u64>() {
                    Ok(n @ 1..=255) => {
                        timeout = Duration::from_secs(n);
                        Some(n.to_string())
                    }
                    _ => return refuse(self, TFTP_PORT, ERR_OPTION, "Bad timeout"),
                },
                // Unknown options are left out of the OACK (RFC 2347).
                _ => None,
            };
            if let Some(v) = accepted {
                for s in [name.as_str(), v.as_str()] {
                    oack.extend_from_slice(s.as_bytes());
                    oack.push(0);
                }
            }
        }
        let tid = self.tid(guest);
        let mut t = Transfer {
            file,
            size,
            blksize,
            timeout,
            block: 0,
            sent: 0,
            last: Vec::new(),
            resend_at: now,
            tries: 0,
            final_block: false,
        };
        if oack.is_empty() {
            if !t.next_block(now) {
                return refuse(self, TFTP_PORT, ERR_UNDEFINED, "Read error");
            }
        } else {
            let mut p = OP_OACK.to_be_bytes().to_vec();
            p.extend_from_slice(&oack);
            t.send(p, now);
        }
        let payload = t.last.clone();
        self.transfers.insert((guest, tid), t);
        Some(Reply { src_port: tid, dst: guest, payload })
    }

    fn transfer_packet(&mut self, guest: SocketAddrV4, tid: u16, op: u16, body: &[u8], now: Instant) -> Option<Reply> {
        let key = (guest, tid);
        let Some(t) = self.transfers.get_mut(&key) else {
            self.errors += 1;
            return Some(Reply {
                src_port: tid,
                dst: guest,
                payload: error_packet(ERR_UNKNOWN_TID, "Unknown transfer ID"),
            });
        };
        match op {
            OP_ACK if body.len() >= 2 => {
                let acked = u16::from_be_bytes([body[0], body[1]]);
                if acked != t.block {
                    // An old block's ACK again: the current one is on its way.
                    return None;
                }
                if t.final_block {
                    self.transfers.remove(&key);
                    self.completed += 1;
                    return None;
                }
                if !t.next_block(now) {
                    self.transfers.remove(&key);
                    self.errors += 1;
                    return Some(Reply {
                        src_port: tid,
                        dst: guest,
                        payload: error_packet(ERR_UNDEFINED, "Read error"),
                    });
                }
                Some(Reply { src_port: tid, dst: guest, payload: t.last.clone() })
            }
            // The guest gave up.
            OP_ERROR => {
                self.transfers.remove(&key);
                self.errors += 1;
                None
            }
            _ => {
                self.transfers.remove(&key);
                self.errors += 1;
                Some(Reply { src_port: tid, dst: guest, payload: error_packet(ERR_ILLEGAL, "Illegal TFTP operation") })
            }
        }
    }

    /// Packets due again, and transfers given up, at `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Reply> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (key, t) in &mut self.transfers {
            if now < t.resend_at {
                continue;
            }
            if t.tries >= MAX_TRIES {
                gone.push(*key);
                continue;
            }
            t.tries += 1;
            t.resend_at = now + t.timeout;
            out.push(Reply { src_port: key.1, dst: key.0, payload: t.last.clone() });
        }
        for key in gone {
            tracing::debug!(target: "net", "tftp: the guest at {} stopped acknowledging; transfer dropped", key.0);
            self.transfers.remove(&key);
            self.errors += 1;
        }
        out
    }

    /// When [`TftpServer::expire`] has work next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.transfers.values().map(|t| t.resend_at).min()
    }
}

impl Transfer {
    fn send(&mut self, packet: Vec<u8>, now: Instant) {
        self.last = packet;
        self.tries = 1;
        self.resend_at = now + self.timeout;
    }

    /// Reads and sends the block after `block`. False on a read error.
    fn next_block(&mut self, now: Instant) -> bool {
        let want = usize::try_from(self.size.saturating_sub(self.sent)).unwrap_or(usize::MAX).min(self.blksize);
        let mut p = Vec::with_capacity(4 + want);
        let block = self.block.wrapping_add(1);
        p.extend_from_slice(&OP_DATA.to_be_bytes());
        p.extend_from_slice(&block.to_be_bytes());
        p.resize(4 + want, 0);
        if self.file.seek(SeekFrom::Start(self.sent)).is_err() || self.file.read_exact(&mut p[4..]).is_err() {
            return false;
        }
        self.block = block;
        self.sent += want as u64;
        self.final_block = want < self.blksize;
        self.send(p, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const GUEST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 2000);

    fn folder(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrovm-tftp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("root/sub")).unwrap();
        std::fs::write(d.join("secret"), b"outside").unwrap();
        d
    }

    fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut p = OP_RRQ.to_be_bytes().to_vec();
        for s in [name, "octet"].into_iter().chain(opts.iter().flat_map(|(k, v)| [*k, *v])) {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
        p
    }

    fn ack(n: u16) -> Vec<u8> {
        let mut p = OP_ACK.to_be_bytes().to_vec();
        p.extend_from_slice(&n.to_be_bytes());
        p
    }

    fn error_code(p: &[u8]) -> Option<u16> {
        (u16::from_be_bytes([p[0], p[1]]) == OP_ERROR).then(|| u16::from_be_bytes([p[2], p[3]]))
    }

    /// Reads `name` to the end as a client that acknowledges every block.
    fn fetch(s: &mut TftpServer, name: &str, opts: &[(&str, &str)]) -> Result<Vec<u8>, u16> {
        let now = Instant::now();
        let r = s.handle(GUEST, TFTP_PORT, &rrq(name, opts), now).unwrap();
        if let Some(code) = error_code(&r.payload) {
            return Err(code);
        }
        let tid = r.src_port;
        let mut data = Vec::new();
        let mut p = r.payload;
        let mut blksize = DEFAULT_BLKSIZE;
        loop {
            match u16::from_be_bytes([p[0], p[1]]) {
                OP_OACK => {
                    let f = strings(&p[2..]).unwrap();
                    if let Some(i) = f.iter().position(|k| *k == "blksize") {
                        blksize = f[i + 1].parse().unwrap();
                    }
                    match s.handle(GUEST, tid, &ack(0), now) {
                        Some(r) => p = r.payload,
                        None => return Ok(data),
                    }
                }
                OP_DATA => {
                    let n = u16::from_be_bytes([p[2], p[3]]);
                    data.extend_from_slice(&p[4..]);
                    let last = p.len() - 4 < blksize;
                    let next = s.handle(GUEST, tid, &ack(n), now);
                    if last {
                        assert!(next.is_none());
                        return Ok(data);
                    }
                    p = next.unwrap().payload;
                }
                _ => return Err(error_code(&p).unwrap()),
            }
        }
    }

    #[test]
    fn files_are_served_with_and_without_options() {
        let d = folder("serve");
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(d.join("root/sub/big"), &big).unwrap();
        std::fs::write(d.join("root/exact"), vec![9u8; 1024]).unwrap();
        let mut s = TftpServer::new(&d.join("root")).unwrap();
        assert_eq!(fetch(&mut s, "sub/big", &[]).unwrap(), big);
        assert_eq!(fetch(&mut s, "/sub/big", &[("blksize", "1468"), ("tsize", "0")]).unwrap(), big);
        // A larger block than fits is answered with the largest that does.
        assert_eq!(fetch(&mut s, "sub/big", &[("blksize", "65464")]).unwrap(), big);
        // A file of whole blocks ends with an empty one.
        assert_eq!(fetch(&mut s, "exact", &[]).unwrap(), vec![9u8; 1024]);
        assert_eq!(s.completed, 4);
        assert!(s.transfers.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn names_outside_the_folder_and_writes_are_refused() {
        let d = folder("refuse");
        std::os::unix::fs::symlink(d.join("secret"), d.join("root/link")).unwrap();
        let mut s = TftpServer::new(&d.join("root")).unwrap();
        assert_eq!(fetch(&mut s, "../secret", &[]), Err(ERR_ACCESS));
        assert_eq!(fetch(&mut s, "sub/../../secret", &[]), Err(ERR_ACCESS));
        assert_eq!(fetch(&mut s, "link", &[]), Err(ERR_NOT_FOUND));
        assert_eq!(fetch(&mut s, "sub", &[]), Err(ERR_NOT_FOUND));
        assert_eq!(fetch(&mut s, "missing", &[]), Err(ERR_NOT_FOUND));
        assert_eq!(fetch(&mut s, "", &[]), Err(ERR_ACCESS));
        let mut wrq = rrq("x", &[]);
        wrq[1] = OP_WRQ as u8;
        let r = s.handle(GUEST, TFTP_PORT, &wrq, Instant::now()).unwrap();
        assert_eq!(error_code(&r.payload), Some(ERR_ACCESS));
        assert!(s.transfers.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn garbage_gets_errors_and_never_panics() {
        let d = folder("garbage");
        std::fs::write(d.join("root/f"), b"hello").unwrap();
        let mut s = TftpServer::new(&d.join("root")).unwrap();
        let now = Instant::now();
        for msg in [
            &b""[..],
            &b"\x00"[..],
            &b"\x00\x01"[..],
            &b"\x00\x01f"[..],
            &b"\x00\x01f\x00"[..],
            &b"\x00\x01f\x00netascii\x00"[..],
            &b"\x00\x01f\x00octet\x00blksize\x00"[..],
            &b"\x00\x01f\x00octet\x00blksize\x007\x00"[..],
            &b"\x00\x01f\x00octet\x00timeout\x000\x00"[..],
            &b"\x00\x01\xff\xfe\x00octet\x00"[..],
            &b"\x00\x09junk"[..],
        ] {
            if let Some(r) = s.handle(GUEST, TFTP_PORT, msg, now) {
                assert!(error_code(&r.payload).is_some(), "{msg:?}");
            }
        }
        // A packet to a transfer that does not exist.
        let r = s.handle(GUEST, 50000, &ack(1), now).unwrap();
        assert_eq!(error_code(&r.payload), Some(ERR_UNKNOWN_TID));
        assert!(s.transfers.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_silent_guest_gets_the_block_again_then_is_given_up() {
        let d = folder("resend");
        std::fs::write(d.join("root/f"), vec![1u8; 2000]).unwrap();
        let mut s = TftpServer::new(&d.join("root")).unwrap();
        let t0 = Instant::now();
        let first = s.handle(GUEST, TFTP_PORT, &rrq("f", &[]), t0).unwrap();
        assert_eq!(s.next_deadline(), Some(t0 + DEFAULT_TIMEOUT));
        // A duplicate ACK of nothing sent yet changes nothing.
        assert!(s.handle(GUEST, first.src_port, &ack(7), t0).is_none());
        let again = s.expire(t0 + DEFAULT_TIMEOUT);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].payload, first.payload);
        let mut t = t0 + DEFAULT_TIMEOUT;
        for _ in 0..MAX_TRIES {
            t += DEFAULT_TIMEOUT;
            s.expire(t);
        }
        assert!(s.transfers.is_empty(), "given up");
        assert!(s.next_deadline().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let e = TftpServer::new(Path::new("/nonexistent/tftp")).err().unwrap();
        assert!(e.contains("/nonexistent/tftp"), "{e}");
    }
}
