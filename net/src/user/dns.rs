//! The DNS forwarder behind the NAT's DNS address (RFC 1035 §4.1 wire format).
//!
//! Header (12 bytes): ID, flags (QR, opcode, AA, TC, RD, RA, Z, RCODE),
//! QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT; then the question: QNAME as length
//! prefixed labels ending in a zero byte, QTYPE, QCLASS.
//!
//! A query is re-sent upstream under a fresh ID; an answer is accepted only
//! from the server it went to, with that ID and the same question, and goes
//! back to the guest under the guest's ID. With no upstream, or when every
//! upstream stays silent past the timeout, the guest gets SERVFAIL.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::frame::{MAX_UDP6_PAYLOAD, MAX_UDP_PAYLOAD};
use crate::poller::{Poller, Token};
use crate::DnsUpstream;

pub(crate) const DNS_PORT: u16 = 53;
const HEADER_LEN: usize = 12;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;
const RCODE_SERVFAIL: u16 = 2;
/// Datagrams read from one upstream socket per poll.
const READS_PER_POLL: usize = 256;

/// The nameservers of a resolv.conf text.
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

/// Where the question section ends (offset past QTYPE/QCLASS), for a
/// message with exactly one question written without compression.
fn question_end(msg: &[u8]) -> Option<usize> {
    if msg.len() < HEADER_LEN || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = HEADER_LEN;
    for _ in 0..128 {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            let end = i + 1 + 4;
            return (end <= msg.len() && end - HEADER_LEN <= 255 + 4 + 1).then_some(end);
        }
        if len > 63 {
            return None;
        }
        i += 1 + len;
    }
    None
}

/// An answer carrying only the header and question of `query`, with `rcode`
/// and extra `flags`.
fn header_only_reply(query: &[u8], rcode: u16, flags: u16) -> Vec<u8> {
    let end = question_end(query).unwrap_or(HEADER_LEN);
    let mut r = query[..end].to_vec();
    let qflags = u16::from_be_bytes([query[2], query[3]]);
    let f = FLAG_QR | (qflags & (OPCODE_MASK | FLAG_RD)) | FLAG_RA | flags | rcode;
    r[2..4].copy_from_slice(&f.to_be_bytes());
    let qd: u16 = if end > HEADER_LEN { 1 } else { 0 };
    r[4..6].copy_from_slice(&qd.to_be_bytes());
    r[6..12].fill(0);
    r
}

/// The SERVFAIL answer to `query` (at least a header long).
pub(crate) fn servfail(query: &[u8]) -> Vec<u8> {
    header_only_reply(query, RCODE_SERVFAIL, 0)
}

struct Pending {
    guest: SocketAddr,
    guest_id: u16,
    query: Vec<u8>,
    upstream: usize,
    deadline: Instant,
}

pub(crate) struct DnsForwarder {
    upstreams: Vec<SocketAddr>,
    sock4: Option<UdpSocket>,
    sock6: Option<UdpSocket>,
    readable: [bool; 2],
    pending: HashMap<u16, Pending>,
    rng: u64,
    timeout: Duration,
    max_pending: usize,
    pub queries: u64,
    pub servfails: u64,
}

/// A reply for the guest: to whom, and the DNS message.
pub(crate) type GuestReply = (SocketAddr, Vec<u8>);

impl DnsForwarder {
    pub fn new(upstream: &DnsUpstream, timeout: Duration, max_pending: usize) -> Self {
        let upstreams = match upstream {
            DnsUpstream::System => {
                std::fs::read_to_string("/etc/resolv.conf").map(|t| parse_resolv_conf(&t)).unwrap_or_default()
            }
            DnsUpstream::Servers(list) => list.clone(),
            DnsUpstream::Disabled => Vec::new(),
        };
        if upstreams.is_empty() {
            tracing::info!(target: "net", "dns: no upstream server; queries get SERVFAIL");
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        DnsForwarder {
            upstreams,
            sock4: None,
            sock6: None,
            readable: [false; 2],
            pending: HashMap::new(),
            rng: seed | 1,
            timeout,
            max_pending,
            queries: 0,
            servfails: 0,
        }
    }

    fn next_id(&mut self) -> u16 {
        // xorshift64; IDs only need to be hard to guess and unique while pending.
        for _ in 0..64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let id = (self.rng >> 16) as u16;
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
        (0..=u16::MAX).find(|id| !self.pending.contains_key(id)).unwrap_or(0)
    }

    fn socket_for(&mut self, poller: &Poller, server: SocketAddr) -> Option<&UdpSocket> {
        let (slot, idx, bind): (&mut Option<UdpSocket>, u64, SocketAddr) = if server.is_ipv4() {
            (&mut self.sock4, 0, (Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&mut self.sock6, 1, (Ipv6Addr::UNSPECIFIED, 0).into())
        };
        if slot.is_none() {
            let s = UdpSocket::bind(bind).ok()?;
            s.set_nonblocking(true).ok()?;
            poller.add(&s, Token::Dns(idx)).ok()?;
            *slot = Some(s);
        }
        slot.as_ref()
    }

    /// Takes a guest query. Returns an immediate reply (SERVFAIL) or `None`
    /// when the query went upstream (or was not a query at all).
    pub fn query(&mut self, poller: &Poller, guest: SocketAddr, msg: &[u8], now: Instant) -> Option<Vec<u8>> {
        if msg.len() < HEADER_LEN || u16::from_be_bytes([msg[2], msg[3]]) & FLAG_QR != 0 {
            return None;
        }
        self.queries += 1;
        if self.upstreams.is_empty() || self.pending.len() >= self.max_pending {
            self.servfails += 1;
            return Some(servfail(msg));
        }
        let id = self.next_id();
        let mut query = msg.to_vec();
        query[0..2].copy_from_slice(&id.to_be_bytes());
        let p = Pending {
            guest,
            guest_id: u16::from_be_bytes([msg[0], msg[1]]),
            query,
            upstream: 0,
            deadline: now + self.timeout,
        };
        self.send_from(poller, id, p, now)
    }

    /// Sends a pending query to its upstream or the next that works;
    /// SERVFAIL when none is left.
    fn send_from(&mut self, poller: &Poller, id: u16, mut p: Pending, now: Instant) -> Option<Vec<u8>> {
        while p.upstream < self.upstreams.len() {
            let server = self.upstreams[p.upstream];
            let sent = self.socket_for(poller, server).map(|s| s.send_to(&p.query, server).is_ok()).unwrap_or(false);
            if sent {
                p.deadline = now + self.timeout;
                self.pending.insert(id, p);
                return None;
            }
            p.upstream += 1;
        }
        self.servfails += 1;
        let mut r = servfail(&p.query);
        r[0..2].copy_from_slice(&p.guest_id.to_be_bytes());
        Some(r)
    }

    pub fn set_readable(&mut self, idx: u64) {
        if let Some(r) = self.readable.get_mut(idx as usize) {
            *r = true;
        }
    }

    /// Whether a socket still has unread answers (a read bound was hit).
    pub fn busy(&self) -> bool {
        self.readable.iter().any(|r| *r)
    }

    /// Reads upstream answers; returns the replies for the guest.
    pub fn read_answers(&mut self, out: &mut Vec<GuestReply>) {
        let mut buf = [0u8; 4096];
        for idx in 0..2 {
            if !self.readable[idx] {
                continue;
            }
            let sock = if idx == 0 { &self.sock4 } else { &self.sock6 };
            let Some(sock) = sock else {
                self.readable[idx] = false;
                continue;
            };
            let mut drained = false;
            let mut answers = Vec::new();
            for _ in 0..READS_PER_POLL {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => answers.push((from, buf[..n].to_vec())),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(_) => continue,
                }
            }
            if drained {
                self.readable[idx] = false;
            }
            for (from, msg) in answers {
                if let Some(r) = self.answer(from, &msg) {
                    out.push(r);
                }
            }
        }
    }

    fn answer(&mut self, from: SocketAddr, msg: &[u8]) -> Option<GuestReply> {
        if msg.len() < HEADER_LEN || u16::from_be_bytes([msg[2], msg[3]]) & FLAG_QR == 0 {
            return None;
        }
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let p = self.pending.get(&id)?;
        if self.upstreams.get(p.upstream) != Some(&from) {
            return None;
        }
        // The question must be the one asked.
        if let Some(end) = question_end(&p.query) {
            if msg.get(HEADER_LEN..end) != p.query.get(HEADER_LEN..end) {
                return None;
            }
        }
        let p = self.pending.remove(&id)?;
        let max = if p.guest.is_ipv4() { MAX_UDP_PAYLOAD } else { MAX_UDP6_PAYLOAD };
        let mut r = if msg.len() > max {
            // Too big for one unfragmented datagram: tell the guest to retry over TCP.
            header_only_reply(&p.query, 0, FLAG_TC)
        } else {
            msg.to_vec()
        };
        r[0..2].copy_from_slice(&p.guest_id.to_be_bytes());
        Some((p.guest, r))
    }

    /// Moves timed-out queries to the next upstream or answers SERVFAIL.
    pub fn expire(&mut self, poller: &Poller, now: Instant, out: &mut Vec<GuestReply>) {
        let due: Vec<u16> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            if let Some(mut p) = self.pending.remove(&id) {
                let guest = p.guest;
                p.upstream += 1;
                if let Some(r) = self.send_from(poller, id, p, now) {
                    out.push((guest, r));
                }
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query for `name` (type A, class IN, RD set).
    pub(crate) fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&FLAG_RD.to_be_bytes());
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn servfail_keeps_id_and_question() {
        let q = query(0x1234, "example.com");
        let r = servfail(&q);
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        let flags = u16::from_be_bytes([r[2], r[3]]);
        assert_eq!(flags & 0xf, RCODE_SERVFAIL);
        assert_ne!(flags & FLAG_QR, 0);
        assert_ne!(flags & FLAG_RD, 0);
        assert_eq!(&r[12..], &q[12..]);
        // A header alone still gets an answer.
        assert_eq!(servfail(&q[..12]).len(), 12);
        // Truncated or looping names do not panic.
        for len in 12..q.len() {
            let _ = servfail(&q[..len]);
        }
        let mut bad = q.clone();
        bad[12] = 0xc0;
        assert_eq!(servfail(&bad).len(), 12);
    }

    #[test]
    fn resolv_conf() {
        let t = "# comment\nsearch lan\nnameserver 127.0.0.53\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(parse_resolv_conf(t), vec!["127.0.0.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
    }

    #[test]
    fn no_upstream_is_servfail() {
        let poller = Poller::new().unwrap();
        let mut f = DnsForwarder::new(&DnsUpstream::Disabled, Duration::from_secs(1), 4);
        let guest = SocketAddr::from((Ipv4Addr::new(10, 0, 2, 15), 5000));
        let r = f.query(&poller, guest, &query(7, "a.b"), Instant::now()).unwrap();
        assert_eq!(u16::from_be_bytes([r[2], r[3]]) & 0xf, RCODE_SERVFAIL);
        // Answers (QR set) from the guest are not queries.
        assert!(f.query(&poller, guest, &r, Instant::now()).is_none());
    }

    #[test]
    fn silent_upstream_times_out_to_servfail() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let poller = Poller::new().unwrap();
        let up = DnsUpstream::Servers(vec![silent.local_addr().unwrap()]);
        let mut f = DnsForwarder::new(&up, Duration::from_millis(50), 4);
        let guest = SocketAddr::from((Ipv4Addr::new(10, 0, 2, 15), 5000));
        let now = Instant::now();
        assert!(f.query(&poller, guest, &query(9, "x.y"), now).is_none());
        let mut out = Vec::new();
        f.expire(&poller, now + Duration::from_millis(10), &mut out);
        assert!(out.is_empty());
        f.expire(&poller, now + Duration::from_millis(60), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].1[0..2], &9u16.to_be_bytes());
        assert_eq!(f.next_deadline(), None);
    }
}
