//! UDP through the NAT: one connected host socket per guest flow (guest
//! endpoint, destination endpoint), and host port forwards whose peers
//! become associations on a gateway port.
//!
//! Datagrams are carried whole; one larger than a single unfragmented frame
//! for the guest is dropped and counted (the NAT does not fragment).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::frame::{MAX_UDP6_PAYLOAD, MAX_UDP_PAYLOAD};
use crate::poller::{Poller, Token};
use crate::Error;

/// Datagrams taken from one host socket per poll.
const READS_PER_POLL: usize = 64;

/// A datagram for the guest: source (as the guest sees it), guest endpoint, payload.
pub(crate) type ToGuest = (SocketAddr, SocketAddr, Vec<u8>);

struct Flow {
    guest: SocketAddr,
    remote: SocketAddr,
    sock: UdpSocket,
    last: Instant,
    readable: bool,
}

struct Listener {
    sock: UdpSocket,
    guest: SocketAddrV4,
    readable: bool,
}

struct Assoc {
    listener: usize,
    peer: SocketAddr,
    guest: SocketAddrV4,
    last: Instant,
}

pub(crate) struct UdpTable {
    flows: HashMap<u64, Flow>,
    by_key: HashMap<(SocketAddr, SocketAddr), u64>,
    next_id: u64,
    listeners: Vec<Listener>,
    /// Host-forward associations by the gateway port the guest sees.
    assocs: HashMap<u16, Assoc>,
    assoc_by_peer: HashMap<(usize, SocketAddr), u16>,
    idle: Duration,
    pub oversize_dropped: u64,
    pub evicted: u64,
}

impl UdpTable {
    pub fn new(idle: Duration) -> Self {
        UdpTable {
            flows: HashMap::new(),
            by_key: HashMap::new(),
            next_id: 0,
            listeners: Vec::new(),
            assocs: HashMap::new(),
            assoc_by_peer: HashMap::new(),
            idle,
            oversize_dropped: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len() + self.assocs.len()
    }

    /// Binds a host port forward. Returns the bound address.
    pub fn add_listener(
        &mut self,
        poller: &Poller,
        host: SocketAddrV4,
        guest: SocketAddrV4,
        index: u64,
    ) -> Result<SocketAddr, Error> {
        let (sock, addr) = super::bind_forward::<UdpSocket>(poller, host, index)?;
        self.listeners.push(Listener { sock, guest, readable: true });
        Ok(addr)
    }

    /// A guest datagram for a forward association (`dst_port` on the
    /// gateway). `true` when it was one.
    pub fn forward_to_peer(&mut self, guest: SocketAddr, dst_port: u16, payload: &[u8], now: Instant) -> bool {
        let Some(a) = self.assocs.get_mut(&dst_port) else { return false };
        if SocketAddr::V4(a.guest) != guest {
            return false;
        }
        a.last = now;
        if let Some(l) = self.listeners.get(a.listener) {
            let _ = l.sock.send_to(payload, a.peer);
        }
        true
    }

    /// Whether a flow for this pair exists.
    pub fn has_flow(&self, guest: SocketAddr, remote: SocketAddr) -> bool {
        self.by_key.contains_key(&(guest, remote))
    }

    /// Drops the least recently used flow; false when there is none.
    pub fn evict_oldest(&mut self, poller: &Poller) -> bool {
        let Some((&id, _)) = self.flows.iter().min_by_key(|(_, f)| f.last) else {
            return false;
        };
        self.remove(poller, id);
        self.evicted += 1;
        true
    }

    fn remove(&mut self, poller: &Poller, id: u64) {
        if let Some(f) = self.flows.remove(&id) {
            poller.remove(&f.sock);
            self.by_key.remove(&(f.guest, f.remote));
        }
    }

    /// Sends a guest datagram to `host_dst` through the flow's socket,
    /// opening the flow if needed (the caller has checked the bounds); a
    /// new flow goes to `fallback` when no socket can reach `host_dst`.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        poller: &Poller,
        guest: SocketAddr,
        remote: SocketAddr,
        host_dst: SocketAddr,
        fallback: Option<SocketAddr>,
        payload: &[u8],
        now: Instant,
    ) {
        let id = match self.by_key.get(&(guest, remote)) {
            Some(id) => *id,
            None => {
                let opened = open_connected(host_dst).or_else(|e| match fallback {
                    Some(f) => open_connected(f),
                    None => Err(e),
                });
                let sock = match opened {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(target: "net", "udp {guest} -> {remote}: {e}");
                        return;
                    }
                };
                let id = self.next_id;
                self.next_id += 1;
                if poller.add(&sock, Token::Udp(id)).is_err() {
                    return;
                }
                self.flows.insert(id, Flow { guest, remote, sock, last: now, readable: true });
                self.by_key.insert((guest, remote), id);
                id
            }
        };
        if let Some(f) = self.flows.get_mut(&id) {
            f.last = now;
            // A full socket buffer drops the datagram, as a network would.
            let _ = f.sock.send(payload);
        }
    }

    pub fn set_flow_readable(&mut self, id: u64) {
        if let Some(f) = self.flows.get_mut(&id) {
            f.readable = true;
        }
    }

    pub fn set_listener_readable(&mut self, index: usize) {
        if let Some(l) = self.listeners.get_mut(index) {
            l.readable = true;
        }
    }

    /// Whether a socket still has unread datagrams (a read bound was hit).
    pub fn busy(&self) -> bool {
        self.flows.values().any(|f| f.readable) || self.listeners.iter().any(|l| l.readable)
    }

    /// Reads what the host sent; `room` bounds how many datagrams are taken.
    pub fn read(
        &mut self,
        gateway: Ipv4Addr,
        max_assocs: usize,
        now: Instant,
        mut room: usize,
        out: &mut Vec<ToGuest>,
    ) {
        let mut buf = vec![0u8; 65536];
        for f in self.flows.values_mut().filter(|f| f.readable) {
            for _ in 0..READS_PER_POLL {
                if room == 0 {
                    return;
                }
                let max = if f.guest.is_ipv4() { MAX_UDP_PAYLOAD } else { MAX_UDP6_PAYLOAD };
                match f.sock.recv(&mut buf) {
                    Ok(n) if n > max => self.oversize_dropped += 1,
                    Ok(n) => {
                        f.last = now;
                        room -= 1;
                        out.push((f.remote, f.guest, buf[..n].to_vec()));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        f.readable = false;
                        break;
                    }
                    // ECONNREFUSED from an earlier datagram and the like.
                    Err(_) => continue,
                }
            }
        }
        for idx in 0..self.listeners.len() {
            if !self.listeners[idx].readable {
                continue;
            }
            for _ in 0..READS_PER_POLL {
                if room == 0 {
                    return;
                }
                let l = &mut self.listeners[idx];
                let (n, peer) = match l.sock.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        l.readable = false;
                        break;
                    }
                    Err(_) => continue,
                };
                if n > MAX_UDP_PAYLOAD {
                    self.oversize_dropped += 1;
                    continue;
                }
                let guest = l.guest;
                let port = match self.assoc_by_peer.get(&(idx, peer)) {
                    Some(p) => *p,
                    None => {
                        if self.assocs.len() >= max_assocs {
                            continue;
                        }
                        let Some(p) = self.free_gateway_port() else { continue };
                        self.assocs.insert(p, Assoc { listener: idx, peer, guest, last: now });
                        self.assoc_by_peer.insert((idx, peer), p);
                        p
                    }
                };
                if let Some(a) = self.assocs.get_mut(&port) {
                    a.last = now;
                }
                room -= 1;
                out.push((SocketAddr::V4(SocketAddrV4::new(gateway, port)), SocketAddr::V4(guest), buf[..n].to_vec()));
            }
        }
    }

    fn free_gateway_port(&self) -> Option<u16> {
        // Forward associations live in the upper half of the ephemeral range.
        let start = 57344 + (self.assocs.len() as u16 % 8192);
        (0..8192u16).map(|i| 57344 + (start - 57344 + i) % 8192).find(|p| !self.assocs.contains_key(p))
    }

    /// Closes flows and associations idle for too long.
    pub fn expire(&mut self, poller: &Poller, now: Instant) {
        let idle = self.idle;
        let dead: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.last) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.remove(poller, id);
        }
        let by_peer = &mut self.assoc_by_peer;
        self.assocs.retain(|_, a| {
            let keep = now.saturating_duration_since(a.last) < idle;
            if !keep {
                by_peer.remove(&(a.listener, a.peer));
            }
            keep
        });
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let f = self.flows.values().map(|f| f.last);
        let a = self.assocs.values().map(|a| a.last);
        f.chain(a).min().map(|t| t + self.idle)
    }
}

fn open_connected(dst: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr =
        if dst.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(any)?;
    sock.connect(dst)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}
