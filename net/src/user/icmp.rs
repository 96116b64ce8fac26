//! ICMP echo to hosts outside, through unprivileged ICMP sockets
//! (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`, allowed for the groups in
//! /proc/sys/net/ipv4/ping_group_range). The kernel picks the echo
//! identifier; answers get the guest's identifier back.
//!
//! Where the host does not allow such sockets, echo requests are dropped
//! and that is logged once.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

use crate::poller::{Poller, Token};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
const ECHO_HEADER_LEN: usize = 8;
/// An echo socket with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(10);
const READS_PER_POLL: usize = 16;

/// An echo reply for the guest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Source as the guest sees it.
    pub from: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub ident: u16,
    pub seq_no: u16,
    pub data: Vec<u8>,
}

struct Echo {
    guest: Ipv4Addr,
    ident: u16,
    remote: Ipv4Addr,
    sock: UdpSocket,
    last: Instant,
    readable: bool,
}

pub(crate) struct IcmpProxy {
    /// `Some(false)` once the host refused an ICMP socket.
    allowed: Option<bool>,
    socks: HashMap<u64, Echo>,
    by_key: HashMap<(Ipv4Addr, u16, Ipv4Addr), u64>,
    next_id: u64,
    max: usize,
    pub dropped: u64,
}

fn open(dst: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )?;
    let sock = UdpSocket::from(fd);
    sock.connect(SocketAddrV4::new(dst, 0))?;
    Ok(sock)
}

impl IcmpProxy {
    pub fn new(max: usize) -> Self {
        IcmpProxy { allowed: None, socks: HashMap::new(), by_key: HashMap::new(), next_id: 0, max, dropped: 0 }
    }

    /// Sends the guest's echo request to `host_dst` (`remote` as the guest sees it).
    #[allow(clippy::too_many_arguments)]
    pub fn echo(
        &mut self,
        poller: &Poller,
        guest: Ipv4Addr,
        remote: Ipv4Addr,
        host_dst: Ipv4Addr,
        ident: u16,
        seq_no: u16,
        data: &[u8],
        now: Instant,
    ) {
        if self.allowed == Some(false) {
            self.dropped += 1;
            return;
        }
        let key = (guest, ident, remote);
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => {
                if self.socks.len() >= self.max {
                    // Make room: the least recently used echo socket goes.
                    if let Some((&old, _)) = self.socks.iter().min_by_key(|(_, e)| e.last) {
                        self.remove(poller, old);
                    }
                }
                let sock = match open(host_dst) {
                    Ok(s) => s,
                    Err(e) => {
                        if matches!(e.kind(), ErrorKind::PermissionDenied) || e.raw_os_error() == Some(libc::EACCES) {
                            tracing::warn!(
                                target: "net",
                                "ICMP echo to outside hosts is off: the host refuses ICMP sockets \
                                 (widen /proc/sys/net/ipv4/ping_group_range to allow them)"
                            );
                            self.allowed = Some(false);
                        }
                        self.dropped += 1;
                        return;
                    }
                };
                self.allowed = Some(true);
                let id = self.next_id;
                self.next_id += 1;
                if poller.add(&sock, Token::Icmp(id)).is_err() {
                    return;
                }
                self.socks.insert(id, Echo { guest, ident, remote, sock, last: now, readable: true });
                self.by_key.insert(key, id);
                id
            }
        };
        if let Some(e) = self.socks.get_mut(&id) {
            e.last = now;
            let mut pkt = Vec::with_capacity(ECHO_HEADER_LEN + data.len());
            pkt.extend_from_slice(&[ECHO_REQUEST, 0, 0, 0]);
            pkt.extend_from_slice(&ident.to_be_bytes());
            pkt.extend_from_slice(&seq_no.to_be_bytes());
            pkt.extend_from_slice(data);
            // The kernel fills in the checksum and identifier.
            let _ = e.sock.send(&pkt);
        }
    }

    fn remove(&mut self, poller: &Poller, id: u64) {
        if let Some(e) = self.socks.remove(&id) {
            poller.remove(&e.sock);
            self.by_key.remove(&(e.guest, e.ident, e.remote));
        }
    }

    pub fn set_readable(&mut self, id: u64) {
        if let Some(e) = self.socks.get_mut(&id) {
            e.readable = true;
        }
    }

    pub fn busy(&self) -> bool {
        self.socks.values().any(|e| e.readable)
    }

    pub fn read(&mut self, out: &mut Vec<Reply>) {
        let mut buf = [0u8; 2048];
        for e in self.socks.values_mut().filter(|e| e.readable) {
            for _ in 0..READS_PER_POLL {
                match e.sock.recv(&mut buf) {
                    Ok(n) if n >= ECHO_HEADER_LEN && buf[0] == ECHO_REPLY => out.push(Reply {
                        from: e.remote,
                        guest: e.guest,
                        ident: e.ident,
                        seq_no: u16::from_be_bytes([buf[6], buf[7]]),
                        data: buf[ECHO_HEADER_LEN..n].to_vec(),
                    }),
                    Ok(_) => {}
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        e.readable = false;
                        break;
                    }
                    Err(_) => {}
                }
            }
        }
    }

    pub fn expire(&mut self, poller: &Poller, now: Instant) {
        let dead: Vec<u64> = self
            .socks
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last) >= IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.remove(poller, id);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.socks.values().map(|e| e.last + IDLE).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_to_loopback_through_an_icmp_socket() {
        if let Err(e) = open(Ipv4Addr::LOCALHOST) {
            println!("skipped: this host refuses unprivileged ICMP sockets ({e})");
            return;
        }
        let poller = Poller::new().unwrap();
        let mut p = IcmpProxy::new(4);
        let guest = Ipv4Addr::new(10, 0, 2, 15);
        let remote = Ipv4Addr::new(10, 0, 2, 99);
        let now = Instant::now();
        p.echo(&poller, guest, remote, Ipv4Addr::LOCALHOST, 0x4242, 7, b"ping!", now);
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while out.is_empty() && Instant::now() < deadline {
            p.set_readable(0);
            p.read(&mut out);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out, vec![Reply { from: remote, guest, ident: 0x4242, seq_no: 7, data: b"ping!".to_vec() }]);
        p.expire(&poller, now + IDLE);
        assert!(p.socks.is_empty());
    }
}
