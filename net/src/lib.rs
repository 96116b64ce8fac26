//! Networking: the `NetBackend` trait that NIC models move whole Ethernet frames
//! through, the user-mode NAT (ARP, DHCP, DNS forwarding, TCP/UDP/ICMP to host
//! sockets, port forwards; and IPv6 as libslirp has it: router advertisements
//! with the prefix and RDNSS, NDP, ICMPv6 echo, DNS, TCP and UDP over host
//! IPv6 sockets), the hub between VMs, host TAP interfaces (alone or on a
//! bridge) and the pcap writer.
//!
//! A NIC model owns a `Box<dyn NetBackend>` and drives it like this:
//!
//! ```no_run
//! use std::time::Instant;
//! use net::{NetBackend, UserNet, UserNetConfig};
//!
//! let mut backend: Box<dyn NetBackend> = Box::new(UserNet::new(UserNetConfig::default())?);
//! # let guest_frame = [0u8; 60];
//! // The guest transmitted a frame (checksums complete):
//! backend.send(&guest_frame);
//! // The machine's loop, whenever the wake fd is readable, a frame was sent,
//! // or the returned delay ran out:
//! let _next = backend.poll(Instant::now());
//! let mut buf = [0u8; 1514];
//! while let Some(len) = backend.recv(&mut buf) {
//!     // hand buf[..len] to the guest's receive ring
//! #   let _ = len;
//! }
//! # Ok::<(), net::Error>(())
//! ```
//!
//! The wake fd ([`NetBackend::wake_fd`]) becomes readable when a host socket
//! has something for the backend; the machine adds it to its own poll set
//! instead of spinning.

#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

pub mod config;
mod error;
mod frame;
mod fuzz;
pub mod hub;
pub mod offload;
pub mod pcap;
mod poller;
pub mod tap;
pub mod user;

pub use config::{
    Allow, BackendSpec, DnsUpstream, HostFwd, HubConfig, Limits, MacAddr, NicRom, NicSpec, Proto, UserNetConfig,
};
pub use error::Error;
pub use fuzz::fuzz_frame;
pub use hub::HubNet;
pub use pcap::PcapWriter;
pub use tap::{TapConfig, TapNet};
pub use user::{DhcpLease, UserNet, UserNetState, UserNetStats};

/// The largest Ethernet frame a backend produces or accepts: a 1500-byte IP
/// MTU plus the 14-byte Ethernet header (no FCS, no VLAN tag).
pub const MAX_FRAME_LEN: usize = 1514;

/// A network behind a NIC model: whole Ethernet frames in and out.
///
/// Frames carry no FCS. Frames that the guest sends must have complete
/// checksums: a NIC model that offers checksum offload fills them in first.
/// Frames for the guest always have complete checksums.
pub trait NetBackend: Send {
    /// Hands one frame that the guest transmitted to the backend. Malformed
    /// frames are counted and dropped; this never fails and never blocks.
    fn send(&mut self, frame: &[u8]);

    /// Takes the next frame for the guest. Copies it into `buf` and returns
    /// the number of bytes copied; a frame longer than `buf` is truncated.
    /// `None` when nothing is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize>;

    /// Length of the frame that the next [`recv`](Self::recv) would return.
    fn peek_len(&self) -> Option<usize>;

    /// Whether the last [`poll`](Self::poll) left frames for the guest
    /// unmade for want of room in the queue [`recv`](Self::recv) drains:
    /// once the guest has taken frames, a poll lets more through. False
    /// means the backend holds nothing back, and a NIC that was handed
    /// fresh receive buffers need not have it polled. The default, true,
    /// is always safe.
    fn holding_back(&self) -> bool {
        true
    }

    /// Does the pending work: frames the guest sent, host sockets, timers.
    /// Call it after [`send`](Self::send), when the wake fd is readable, when
    /// the guest has freed receive buffers, and at the latest when the
    /// returned delay has passed (`None`: no timer is pending).
    fn poll(&mut self, now: Instant) -> Option<Duration>;

    /// A file descriptor that becomes readable when host-side work is waiting
    /// for [`poll`](Self::poll). `None` for backends with no host side.
    fn wake_fd(&self) -> Option<BorrowedFd<'_>>;

    /// A short name for logs ("user", "hub:lan0", ...).
    fn debug_label(&self) -> &str;
}

impl<B: NetBackend + ?Sized> NetBackend for Box<B> {
    fn send(&mut self, frame: &[u8]) {
        (**self).send(frame)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        (**self).recv(buf)
    }
    fn peek_len(&self) -> Option<usize> {
        (**self).peek_len()
    }
    fn holding_back(&self) -> bool {
        (**self).holding_back()
    }
    fn poll(&mut self, now: Instant) -> Option<Duration> {
        (**self).poll(now)
    }
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).wake_fd()
    }
    fn debug_label(&self) -> &str {
        (**self).debug_label()
    }
}

/// A NIC on no network (QEMU's NIC without a peer): what the guest sends
/// goes nowhere and nothing arrives.
#[derive(Debug, Default)]
pub struct Unconnected {
    /// Frames the guest sent.
    pub dropped: u64,
}

impl NetBackend for Unconnected {
    fn send(&mut self, _frame: &[u8]) {
        self.dropped += 1;
    }
    fn recv(&mut self, _buf: &mut [u8]) -> Option<usize> {
        None
    }
    fn peek_len(&self) -> Option<usize> {
        None
    }
    fn poll(&mut self, _now: Instant) -> Option<Duration> {
        None
    }
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn debug_label(&self) -> &str {
        "unconnected"
    }
}

/// Moves the first frame of a backend's queue for the guest into `buf`
/// (truncated to it), for [`NetBackend::recv`]; its length, or `None` when
/// the queue is empty.
pub(crate) fn pop_frame(rx: &mut std::collections::VecDeque<Vec<u8>>, buf: &mut [u8]) -> Option<usize> {
    let f = rx.pop_front()?;
    let n = f.len().min(buf.len());
    buf[..n].copy_from_slice(&f[..n]);
    Some(n)
}

/// Opens the backend that a parsed `--nic` option names, wrapped in a
/// [`PcapWriter`] when `pcap=` was given.
pub fn open(spec: &NicSpec) -> Result<Box<dyn NetBackend>, Error> {
    let backend: Box<dyn NetBackend> = match &spec.backend {
        BackendSpec::User(cfg) => Box::new(UserNet::new((**cfg).clone())?),
        BackendSpec::Hub(cfg) => Box::new(HubNet::open(cfg)?),
        BackendSpec::Tap(cfg) => Box::new(TapNet::open(cfg)?),
        BackendSpec::Unconnected => Box::new(Unconnected::default()),
    };
    Ok(match &spec.pcap {
        Some(path) => Box::new(PcapWriter::create(backend, path)?),
        None => backend,
    })
}
