//! TCP through the NAT: each flow pairs a smoltcp socket (the guest side)
//! with a non-blocking host socket.
//!
//! smoltcp has no wildcard listener, so a flow is made when the guest's first
//! SYN for a new 4-tuple arrives: the host connect starts, the SYN is held,
//! and only when the host accepts does a smoltcp socket listen on that exact
//! destination and get the SYN. A refused connect answers the SYN with an
//! RST at once. A host port forward works the other way round: an accepted
//! host connection makes smoltcp connect to the guest.
//!
//! Flow control: bytes move from the smoltcp receive buffer to the host only
//! as fast as the host socket takes them (so a slow host peer closes the
//! guest's window), and from the host only into free smoltcp send buffer
//! (so a slow guest leaves the data in the host kernel). Nothing
//! acknowledged is ever dropped.
//!
//! Closing: a guest FIN becomes `shutdown(SHUT_WR)` on the host socket, a
//! host EOF becomes a FIN to the guest; a guest RST closes the host socket
//! with SO_LINGER 0 (an RST), a host reset aborts the smoltcp socket (an RST).
//! After the guest's FIN (CLOSE-WAIT), the host's EOF closes the smoltcp
//! socket only once the guest has acknowledged every byte before it:
//! smoltcp, in LAST-ACK, takes an ACK that acknowledges nothing new for a
//! duplicate of its FIN and ignores the window it carries, so a guest that
//! had closed its window and reopened it would get the rest of the data
//! only after the zero-window probe, a second later. (A guest whose reader
//! half-closes at once, as busybox `nc` does with its input at /dev/null,
//! receives everything in CLOSE-WAIT.)

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use crate::poller::{Poller, Token};
use crate::Error;

/// Host connections a forward listener accepts per poll.
const ACCEPTS_PER_POLL: usize = 16;

/// A flow is named by the guest's endpoint and the remote endpoint as the
/// guest sees it (both IPv4 or both IPv6).
pub(crate) type Key = (SocketAddr, SocketAddr);

enum Phase {
    /// The host connect is under way; the guest's SYN waits here, and
    /// `fallback` is where to connect if this connect is refused.
    Connecting { syn: Vec<u8>, fallback: Option<SocketAddr> },
    /// The smoltcp socket exists.
    Open(SocketHandle),
}

struct Flow {
    key: Key,
    host: TcpStream,
    phase: Phase,
    readable: bool,
    writable: bool,
    /// The guest's FIN was passed on (host write side shut down).
    guest_eof: bool,
    /// The host's EOF was read (passed on as a FIN: `fin_queued`).
    host_eof: bool,
    /// The smoltcp socket was closed after the host's EOF (its FIN queued).
    fin_queued: bool,
    /// The host socket failed or was reset; it is closed abortively.
    host_dead: bool,
    started: Instant,
    last: Instant,
}

struct Listener {
    sock: TcpListener,
    guest: SocketAddrV4,
    readable: bool,
}

/// What happened to a guest SYN for a new flow.
pub(crate) enum SynOutcome {
    /// The host connect is under way (or done).
    Started,
    /// The host refused at once: answer with an RST.
    Refused,
}

pub(crate) struct TcpTable {
    flows: HashMap<u64, Flow>,
    by_key: HashMap<Key, u64>,
    next_id: u64,
    listeners: Vec<Listener>,
    next_fwd_port: u16,
    buffer: usize,
    idle: Duration,
    connect_timeout: Duration,
    /// SYN frames whose host connect failed: each wants an RST.
    pub refused: Vec<Vec<u8>>,
    pub evicted: u64,
    pub accepted: u64,
}

fn connect_nonblocking(dst: SocketAddr) -> std::io::Result<TcpStream> {
    let family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let s = TcpStream::from(fd);
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Makes the coming close of `s` send an RST instead of a FIN.
fn set_abortive(s: &TcpStream) {
    let _ = setsockopt(s, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 });
}

impl TcpTable {
    pub fn new(buffer: usize, idle: Duration, connect_timeout: Duration) -> Self {
        TcpTable {
            flows: HashMap::new(),
            by_key: HashMap::new(),
            next_id: 0,
            listeners: Vec::new(),
            next_fwd_port: 49152,
            buffer,
            idle,
            connect_timeout,
            refused: Vec::new(),
            evicted: 0,
            accepted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.by_key.contains_key(key)
    }

    /// Whether the flow's smoltcp socket exists (its segments go to smoltcp).
    pub fn is_open(&self, key: &Key) -> bool {
        self.by_key.get(key).and_then(|id| self.flows.get(id)).is_some_and(|f| matches!(f.phase, Phase::Open(_)))
    }

    /// Binds a host port forward; returns the bound address.
    pub fn add_listener(
        &mut self,
        poller: &Poller,
        host: SocketAddrV4,
        guest: SocketAddrV4,
        index: u64,
    ) -> Result<SocketAddr, Error> {
        let (sock, addr) = super::bind_forward::<TcpListener>(poller, host, index)?;
        self.listeners.push(Listener { sock, guest, readable: true });
        Ok(addr)
    }

    /// Starts a flow for a guest SYN (the caller has checked policy and
    /// bounds): connects to `host_dst`, and to `fallback` if that is refused.
    pub fn guest_syn(
        &mut self,
        poller: &Poller,
        key: Key,
        host_dst: SocketAddr,
        mut fallback: Option<SocketAddr>,
        syn: &[u8],
        now: Instant,
    ) -> SynOutcome {
        let mut dst = host_dst;
        let host = loop {
            match connect_nonblocking(dst) {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(target: "net", "tcp {} -> {}: connect {dst}: {e}", key.0, key.1);
                    match fallback.take() {
                        Some(next) => dst = next,
                        None => return SynOutcome::Refused,
                    }
                }
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        if poller.add(&host, Token::Tcp(id)).is_err() {
            return SynOutcome::Refused;
        }
        self.flows.insert(
            id,
            Flow {
                key,
                host,
                phase: Phase::Connecting { syn: syn.to_vec(), fallback },
                readable: false,
                writable: false,
                guest_eof: false,
                host_eof: false,
                fin_queued: false,
                host_dead: false,
                started: now,
                last: now,
            },
        );
        self.by_key.insert(key, id);
        SynOutcome::Started
    }

    pub fn set_ready(&mut self, id: u64, readable: bool, writable: bool, error: bool) {
        if let Some(f) = self.flows.get_mut(&id) {
            // An error shows up on the next read or write (or take_error).
            f.readable |= readable || error;
            f.writable |= writable || error;
        }
    }

    pub fn set_listener_readable(&mut self, index: usize) {
        if let Some(l) = self.listeners.get_mut(index) {
            l.readable = true;
        }
    }

    fn new_socket(buffer: usize) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
        // The host side already coalesces; small writes go out at once.
        s.set_nagle_enabled(false);
        s
    }

    /// Finishes host connects: a connected flow gets its smoltcp socket and
    /// its held SYN goes to smoltcp (`to_stack`); a refused one is queued in
    /// `refused`.
    pub fn finish_connects(
        &mut self,
        poller: &Poller,
        sockets: &mut SocketSet<'static>,
        to_stack: &mut std::collections::VecDeque<Vec<u8>>,
        now: Instant,
    ) {
        let ids: Vec<u64> =
            self.flows.iter().filter(|(_, f)| matches!(f.phase, Phase::Connecting { .. })).map(|(id, _)| *id).collect();
        let buffer = self.buffer;
        for id in ids {
            let Some(f) = self.flows.get_mut(&id) else { continue };
            let timed_out = now.saturating_duration_since(f.started) >= self.connect_timeout;
            let failed = match f.host.take_error() {
                Ok(Some(_)) | Err(_) => true,
                Ok(None) => false,
            };
            let connected = !failed && f.writable && f.host.peer_addr().is_ok();
            if failed && !timed_out {
                // Refused: the fallback address gets its turn.
                let next = match &mut f.phase {
                    Phase::Connecting { fallback, .. } => fallback.take(),
                    Phase::Open(_) => None,
                };
                if let Some(next) = next {
                    match connect_nonblocking(next) {
                        Ok(s) if poller.add(&s, Token::Tcp(id)).is_ok() => {
                            poller.remove(&f.host);
                            f.host = s;
                            f.readable = false;
                            f.writable = false;
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(target: "net", "tcp {} -> {}: connect {next}: {e}", f.key.0, f.key.1),
                    }
                }
            }
            if failed || (timed_out && !connected) {
                if let Phase::Connecting { syn, .. } =
                    std::mem::replace(&mut f.phase, Phase::Connecting { syn: Vec::new(), fallback: None })
                {
                    self.refused.push(syn);
                }
                self.remove(poller, sockets, id);
                continue;
            }
            if !connected {
                continue;
            }
            let mut sock = Self::new_socket(buffer);
            let (_, remote) = f.key;
            if sock.listen(IpListenEndpoint { addr: Some(remote.ip().into()), port: remote.port() }).is_err() {
                self.remove(poller, sockets, id);
                continue;
            }
            let handle = sockets.add(sock);
            if let Phase::Connecting { syn, .. } = std::mem::replace(&mut f.phase, Phase::Open(handle)) {
                to_stack.push_back(syn);
            }
            f.last = now;
        }
    }

    /// Accepts host connections on the forward listeners while `room` allows.
    pub fn accept(
        &mut self,
        poller: &Poller,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        gateway: Ipv4Addr,
        mut room: usize,
        now: Instant,
    ) {
        for idx in 0..self.listeners.len() {
            for _ in 0..ACCEPTS_PER_POLL {
                if !self.listeners[idx].readable {
                    break;
                }
                let (stream, peer) = match self.listeners[idx].sock.accept() {
                    Ok(r) => r,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.listeners[idx].readable = false;
                        break;
                    }
                    Err(_) => continue,
                };
                if room == 0 {
                    // Over the flow bound: the host client sees the connection reset.
                    set_abortive(&stream);
                    continue;
                }
                let guest = self.listeners[idx].guest;
                let Some(port) = self.free_fwd_port(gateway, guest) else {
                    set_abortive(&stream);
                    continue;
                };
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let mut sock = Self::new_socket(self.buffer);
                let local = IpListenEndpoint { addr: Some(gateway.into()), port };
                let remote = IpEndpoint::new((*guest.ip()).into(), guest.port());
                if sock.connect(iface.context(), remote, local).is_err() {
                    continue;
                }
                sock.set_timeout(Some(smoltcp::time::Duration::from_micros(self.connect_timeout.as_micros() as u64)));
                let id = self.next_id;
                self.next_id += 1;
                if poller.add(&stream, Token::Tcp(id)).is_err() {
                    continue;
                }
                let handle = sockets.add(sock);
                let key = (SocketAddr::V4(guest), SocketAddr::V4(SocketAddrV4::new(gateway, port)));
                tracing::debug!(target: "net", "hostfwd tcp {peer} -> {guest} via {}", key.1);
                self.flows.insert(
                    id,
                    Flow {
                        key,
                        host: stream,
                        phase: Phase::Open(handle),
                        readable: true,
                        writable: true,
                        guest_eof: false,
                        host_eof: false,
                        fin_queued: false,
                        host_dead: false,
                        started: now,
                        last: now,
                    },
                );
                self.by_key.insert(key, id);
                self.accepted += 1;
                room -= 1;
            }
        }
    }

    fn free_fwd_port(&mut self, gateway: Ipv4Addr, guest: SocketAddrV4) -> Option<u16> {
        for _ in 0..8192 {
            let p = self.next_fwd_port;
            self.next_fwd_port = if p >= 57343 { 49152 } else { p + 1 };
            if !self.by_key.contains_key(&(SocketAddr::V4(guest), SocketAddr::V4(SocketAddrV4::new(gateway, p)))) {
                return Some(p);
            }
        }
        None
    }

    /// Moves bytes both ways and follows closes. Returns whether anything moved.
    pub fn pump(&mut self, poller: &Poller, sockets: &mut SocketSet<'static>, now: Instant) -> bool {
        let mut moved = false;
        let mut done = Vec::new();
        for (&id, f) in self.flows.iter_mut() {
            let Phase::Open(handle) = f.phase else { continue };
            let s = sockets.get_mut::<tcp::Socket>(handle);
            if f.host_dead {
                if s.remote_endpoint().is_none() {
                    done.push(id);
                }
                continue;
            }
            let mut progress = false;

            // Guest -> host.
            while f.writable && s.can_recv() {
                let r = s.recv(|buf| match f.host.write(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                });
                match r {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => progress = true,
                    Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => f.writable = false,
                    Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                    Ok(Err(_)) => {
                        f.host_dead = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !f.host_dead
                && !f.guest_eof
                && matches!(s.state(), State::CloseWait | State::LastAck | State::Closing | State::TimeWait)
                && s.recv_queue() == 0
            {
                let _ = f.host.shutdown(Shutdown::Write);
                f.guest_eof = true;
                progress = true;
            }

            // Host -> guest.
            while !f.host_dead && !f.host_eof && f.readable && s.can_send() {
                let r = s.send(|buf| match f.host.read(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                });
                match r {
                    Ok(Ok(0)) => {
                        f.host_eof = true;
                        progress = true;
                    }
                    Ok(Ok(_)) => progress = true,
                    Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => f.readable = false,
                    Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                    Ok(Err(_)) => f.host_dead = true,
                    Err(_) => break,
                }
            }
            if f.host_eof && !f.host_dead && !f.fin_queued && (s.state() != State::CloseWait || s.send_queue() == 0) {
                // In CLOSE-WAIT, only once the data before the FIN is
                // acknowledged (see the module documentation).
                s.close();
                f.fin_queued = true;
                progress = true;
            }
            if f.host_dead {
                // The host side failed: reset the guest side, wait for the RST to leave.
                s.abort();
                set_abortive(&f.host);
                progress = true;
            } else {
                match s.state() {
                    State::Closed => {
                        if !(f.guest_eof && f.host_eof) {
                            // Reset by the guest, or smoltcp gave up on it.
                            set_abortive(&f.host);
                        }
                        if s.remote_endpoint().is_none() {
                            done.push(id);
                        }
                    }
                    State::TimeWait if f.guest_eof && f.host_eof => done.push(id),
                    State::SynReceived | State::SynSent
                        if now.saturating_duration_since(f.started) >= self.connect_timeout =>
                    {
                        s.abort();
                        set_abortive(&f.host);
                        f.host_dead = true;
                    }
                    _ => {}
                }
            }
            if progress {
                f.last = now;
                moved = true;
            } else if now.saturating_duration_since(f.last) >= self.idle {
                tracing::debug!(target: "net", "tcp {} -> {}: idle, reset", f.key.0, f.key.1);
                s.abort();
                set_abortive(&f.host);
                f.host_dead = true;
            }
        }
        for id in done {
            self.remove(poller, sockets, id);
        }
        moved
    }

    fn remove(&mut self, poller: &Poller, sockets: &mut SocketSet<'static>, id: u64) {
        if let Some(f) = self.flows.remove(&id) {
            poller.remove(&f.host);
            if let Phase::Open(handle) = f.phase {
                sockets.remove(handle);
            }
            self.by_key.remove(&f.key);
        }
    }

    /// Drops the oldest flow that the guest has not finished opening;
    /// false when every flow is established.
    pub fn evict_embryonic(&mut self, poller: &Poller, sockets: &mut SocketSet<'static>) -> bool {
        let victim = self
            .flows
            .iter()
            .filter(|(_, f)| match f.phase {
                Phase::Connecting { .. } => true,
                Phase::Open(h) => {
                    matches!(sockets.get::<tcp::Socket>(h).state(), State::SynReceived | State::SynSent)
                }
            })
            .min_by_key(|(_, f)| f.started)
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                if let Some(f) = self.flows.get(&id) {
                    set_abortive(&f.host);
                }
                self.remove(poller, sockets, id);
                self.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// Whether some flow has host data it could not move yet for lack of
    /// room (so the caller should come back soon, not wait for an event).
    pub fn busy(&self) -> bool {
        self.listeners.iter().any(|l| l.readable)
    }

    /// The earliest time a flow times out (idle, connect).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.flows
            .values()
            .map(|f| match f.phase {
                Phase::Connecting { .. } => f.started + self.connect_timeout,
                Phase::Open(_) => f.last + self.idle,
            })
            .min()
    }
}

#[cfg(test)]
mod tests;
