//! A guest for the NAT tests: a second smoltcp stack whose Ethernet frames
//! go through a `NetBackend`, as a NIC model would move them.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use net::NetBackend;
use nix::poll::{poll, PollFd, PollFlags};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};

use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint};

pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);

mod wire;
pub use wire::Wire;

pub struct Guest {
    pub iface: Interface,
    pub wire: Wire,
    pub sockets: SocketSet<'static>,
    epoch: Instant,
    next_port: u16,
    /// Frames the guest received (for tests that look at raw frames).
    pub seen: Vec<Vec<u8>>,
    pub keep_seen: bool,
}

impl Guest {
    /// A guest configured statically as DHCP would configure it.
    pub fn new() -> Guest {
        let mut g = Guest::unconfigured();
        g.iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(GUEST_IP.into(), 24)).unwrap();
        });
        g.iface.routes_mut().add_default_ipv4_route(GATEWAY).unwrap();
        g
    }

    /// A guest with no address (for DHCP).
    pub fn unconfigured() -> Guest {
        let mut wire = Wire::default();
        let epoch = Instant::now();
        let cfg = Config::new(HardwareAddress::Ethernet(GUEST_MAC));
        let iface = Interface::new(cfg, &mut wire, smoltcp::time::Instant::from_micros(0));
        Guest {
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
            epoch,
            next_port: 40000,
            seen: Vec::new(),
            keep_seen: false,
        }
    }

    pub fn ts(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// One round: guest stack, frames to the NAT, NAT, frames back, guest stack.
    /// Returns whether any frame moved.
    pub fn step(&mut self, nat: &mut dyn NetBackend) -> (bool, Option<Duration>) {
        let ts = self.ts();
        self.iface.poll(ts, &mut self.wire, &mut self.sockets);
        let mut moved = false;
        while let Some(f) = self.wire.tx.pop_front() {
            nat.send(&f);
            moved = true;
        }
        let delay = nat.poll(Instant::now());
        let mut buf = [0u8; 2048];
        while let Some(n) = nat.recv(&mut buf) {
            if self.keep_seen {
                self.seen.push(buf[..n].to_vec());
            }
            self.wire.rx.push_back(buf[..n].to_vec());
            moved = true;
        }
        let ts = self.ts();
        self.iface.poll(ts, &mut self.wire, &mut self.sockets);
        moved |= !self.wire.tx.is_empty();
        (moved, delay)
    }

    /// Steps until `done` says so or `timeout` passes; between idle steps it
    /// sleeps on the NAT's wake fd. Returns whether `done` was reached.
    pub fn run(
        &mut self,
        nat: &mut dyn NetBackend,
        timeout: Duration,
        mut done: impl FnMut(&mut Guest) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        for _ in 0..50_000_000u64 {
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let (moved, delay) = self.step(nat);
            if !moved {
                let ts = self.ts();
                let guest_delay =
                    self.iface.poll_delay(ts, &self.sockets).map(|d| Duration::from_micros(d.total_micros()));
                let wait = [delay, guest_delay, Some(Duration::from_millis(2))]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(Duration::ZERO);
                let ms = wait.as_millis().min(2) as u16;
                if ms > 0 {
                    if let Some(fd) = nat.wake_fd() {
                        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                        let _ = poll(&mut fds, ms);
                    } else {
                        std::thread::sleep(Duration::from_millis(u64::from(ms)));
                    }
                }
            }
        }
        false
    }

    /// A TCP socket with `buf` bytes of buffer each way.
    pub fn tcp_socket(&mut self, buf: usize) -> SocketHandle {
        let s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buf]), tcp::SocketBuffer::new(vec![0; buf]));
        self.sockets.add(s)
    }

    /// Connects a new socket to `dst`.
    pub fn connect(&mut self, dst: SocketAddrV4, buf: usize) -> SocketHandle {
        let h = self.tcp_socket(buf);
        self.next_port += 1;
        let port = self.next_port;
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, IpEndpoint::new((*dst.ip()).into(), dst.port()), port)
            .unwrap();
        h
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha(data: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).to_vec()
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Feeds `data` into the socket as far as it takes it; returns the new offset.
pub fn feed(s: &mut tcp::Socket<'static>, data: &[u8], off: usize) -> usize {
    if off < data.len() && s.can_send() {
        off + s.send_slice(&data[off..]).unwrap_or(0)
    } else {
        off
    }
}

/// Drains the socket into `out`.
pub fn drain(s: &mut tcp::Socket<'static>, out: &mut Vec<u8>) {
    while s.can_recv() {
        let r = s.recv(|b| {
            out.extend_from_slice(b);
            (b.len(), b.len())
        });
        if !matches!(r, Ok(n) if n > 0) {
            break;
        }
    }
}

pub fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}
