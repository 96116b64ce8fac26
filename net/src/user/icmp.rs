//! ICMP echo to hosts outside, through unprivileged ICMP sockets
//! (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`, and `AF_INET6` with
//! `IPPROTO_ICMPV6` for ICMPv6 echo; both allowed for the groups in
//! /proc/sys/net/ipv4/ping_group_range). The kernel picks the echo
//! identifier; answers get the guest's identifier back.
//!
//! Where the host does not allow such sockets, echo requests are dropped
//! and that is logged once.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

use crate::poller::{Poller, Token};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
const ECHO6_REQUEST: u8 = 128;
const ECHO6_REPLY: u8 = 129;
const ECHO_HEADER_LEN: usize = 8;
/// An echo socket with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(10);
const READS_PER_POLL: usize = 16;

/// An echo reply for the guest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Source as the guest sees it (of the guest's family).
    pub from: IpAddr,
    pub guest: IpAddr,
    pub ident: u16,
    pub seq_no: u16,
    pub data: Vec<u8>,
}

struct Echo {
    guest: IpAddr,
    ident: u16,
    remote: IpAddr,
    sock: UdpSocket,
    last: Instant,
    readable: bool,
}

pub(crate) struct IcmpProxy {
    /// `Some(false)` once the host refused an ICMP socket (IPv4, IPv6).
    allowed: [Option<bool>; 2],
    socks: HashMap<u64, Echo>,
    by_key: HashMap<(IpAddr, u16, IpAddr), u64>,
    next_id: u64,
    max: usize,
    pub dropped: u64,
}

fn open(dst: IpAddr) -> std::io::Result<UdpSocket> {
    let (family, proto) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, proto)?;
    let sock = UdpSocket::from(fd);
    sock.connect(SocketAddr::new(dst, 0))?;
    Ok(sock)
}

/// The index of `addr`'s family in [`IcmpProxy::allowed`].
fn family(addr: IpAddr) -> usize {
    usize::from(addr.is_ipv6())
}

impl IcmpProxy {
    pub fn new(max: usize) -> Self {
        IcmpProxy { allowed: [None; 2], socks: HashMap::new(), by_key: HashMap::new(), next_id: 0, max, dropped: 0 }
    }

    /// Sends the guest's echo request to `host_dst` (`remote` as the guest
    /// sees it; all three of one family).
    #[allow(clippy::too_many_arguments)]
    pub fn echo(
        &mut self,
        poller: &Poller,
        guest: IpAddr,
        remote: IpAddr,
        host_dst: IpAddr,
        ident: u16,
        seq_no: u16,
        data: &[u8],
        now: Instant,
    ) {
        if self.allowed[family(host_dst)] == Some(false) {
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
                            self.allowed[family(host_dst)] = Some(false);
                        }
                        self.dropped += 1;
                        return;
                    }
                };
                self.allowed[family(host_dst)] = Some(true);
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
            let kind = if host_dst.is_ipv4() { ECHO_REQUEST } else { ECHO6_REQUEST };
            pkt.extend_from_slice(&[kind, 0, 0, 0]);
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
            let reply = if e.guest.is_ipv4() { ECHO_REPLY } else { ECHO6_REPLY };
            for _ in 0..READS_PER_POLL {
                match e.sock.recv(&mut buf) {
                    Ok(n) if n >= ECHO_HEADER_LEN && buf[0] == reply => out.push(Reply {
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
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// An echo from `guest` to `remote`, sent to `host` through an ICMP
    /// socket, comes back as a reply from `remote` with the guest's identifier.
    fn echo_through(guest: IpAddr, remote: IpAddr, host: IpAddr) {
        if let Err(e) = open(host) {
            println!("skipped: this host refuses unprivileged ICMP sockets to {host} ({e})");
            return;
        }
        let poller = Poller::new().unwrap();
        let mut p = IcmpProxy::new(4);
        let now = Instant::now();
        p.echo(&poller, guest, remote, host, 0x4242, 7, b"ping!", now);
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

    #[test]
    fn echo_to_loopback_through_an_icmp_socket() {
        echo_through(
            Ipv4Addr::new(10, 0, 2, 15).into(),
            Ipv4Addr::new(10, 0, 2, 99).into(),
            Ipv4Addr::LOCALHOST.into(),
        );
    }

    #[test]
    fn echo6_to_loopback_through_an_icmpv6_socket() {
        let guest = "fec0::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap();
        let remote = "2001:db8::1".parse::<Ipv6Addr>().unwrap();
        echo_through(guest.into(), remote.into(), Ipv6Addr::LOCALHOST.into());
    }
}
