//! What the NIC models ([`crate::nic::e1000`], [`crate::virtio::net`]) share:
//! the offloads they perform for the guest ([`offload`]) and the host side
//! that drives their backends ([`crate::io_thread`]).
//!
//! Who runs what:
//! - The vCPU thread runs the guest's register accesses. A transmit takes
//!   the frames off the guest's ring, hands them to the backend
//!   ([`net::NetBackend::send`]) and kicks the I/O thread.
//! - The I/O thread ([`IoThread`]) sleeps in `ppoll` on every
//!   backend's wake fd, the kick, the doorbells and the nearest timer; when
//!   one fires it calls each model's [`IoPoll::poll`], which polls the
//!   backend and moves waiting frames into the guest's receive buffers,
//!   raising the interrupt. The interrupt line wakes a halted CPU.
//! - Under KVM, a virtio queue notification can skip the vCPU thread: KVM
//!   signals the queue's doorbell eventfd ([`Doorbell`]) instead of
//!   exiting, and the I/O thread does what the register write would have
//!   done ([`IoPoll::doorbell`]): transmits, or takes fresh receive buffers.
//!
//! A model is behind one mutex, which both threads take; the backend lives
//! inside the model.

pub mod e1000;
pub mod merge;
pub mod offload;

pub use crate::io_thread::{Doorbell, IoKick, IoPoll, IoThread};

/// Traffic counters of a NIC model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NicStats {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Bytes handed to the backend.
    pub tx_bytes: u64,
    /// Guest sends dropped (malformed, too long, or a failed offload).
    pub tx_dropped: u64,
    /// Packets delivered to the guest (a merged run counts once).
    pub rx_frames: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames dropped on the way in (filtered, disabled, or larger than
    /// every buffer the guest offers).
    pub rx_dropped: u64,
    /// Frames merged into the packet before them (virtio-net with GUEST_TSO4).
    pub rx_merged: u64,
    /// Merged packets delivered with a GSO header.
    pub rx_gso_packets: u64,
}

/// A frame buffer large enough for any frame a backend hands over.
pub(crate) const RX_SCRATCH: usize = 65536;

/// Computes the default MAC address of the `index`-th NIC: `base` with
/// `index` added to its last three bytes (QEMU's 52:54:00:12:34:56, :57, ...).
pub fn nth_mac(base: [u8; 6], index: u32) -> [u8; 6] {
    let low = u32::from_be_bytes([0, base[3], base[4], base[5]]).wrapping_add(index) & 0x00ff_ffff;
    let b = low.to_be_bytes();
    [base[0], base[1], base[2], b[1], b[2], b[3]]
}

#[cfg(test)]
pub(crate) mod testing {
    //! A backend that records what the NIC sent and replays queued frames.

    use std::collections::VecDeque;
    use std::os::fd::BorrowedFd;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    #[derive(Default)]
    pub(crate) struct Wire {
        pub sent: Vec<Vec<u8>>,
        pub to_guest: VecDeque<Vec<u8>>,
        pub polls: u32,
        /// What `holding_back` answers is the opposite of this.
        pub holds_nothing: bool,
    }

    pub(crate) struct FakeBackend(pub Arc<Mutex<Wire>>);

    impl net::NetBackend for FakeBackend {
        fn send(&mut self, frame: &[u8]) {
            self.0.lock().sent.push(frame.to_vec());
        }
        fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
            let f = self.0.lock().to_guest.pop_front()?;
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            Some(n)
        }
        fn peek_len(&self) -> Option<usize> {
            self.0.lock().to_guest.front().map(Vec::len)
        }
        fn holding_back(&self) -> bool {
            !self.0.lock().holds_nothing
        }
        fn poll(&mut self, _now: Instant) -> Option<Duration> {
            self.0.lock().polls += 1;
            None
        }
        fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn debug_label(&self) -> &str {
            "fake"
        }
    }

    pub(crate) fn backend() -> (Box<dyn net::NetBackend>, Arc<Mutex<Wire>>) {
        let wire = Arc::new(Mutex::new(Wire::default()));
        (Box::new(FakeBackend(wire.clone())), wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_macs_count_up() {
        let base = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(nth_mac(base, 0), base);
        assert_eq!(nth_mac(base, 1), [0x52, 0x54, 0x00, 0x12, 0x34, 0x57]);
        assert_eq!(nth_mac([2, 0, 0, 0xff, 0xff, 0xff], 1), [2, 0, 0, 0, 0, 0], "wraps in the low 24 bits");
    }
}
