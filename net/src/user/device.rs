//! The smoltcp device of the NAT: two frame queues, one towards the stack
//! (guest frames that passed the filter) and one towards the guest (what the
//! stack and the NAT's own services answer).
//!
//! The guest queue is bounded: when it is full, smoltcp gets no transmit
//! token and keeps its data (TCP retransmits later); the NAT's own answers
//! (DHCP, DNS, RST) are dropped and counted, as a full NIC ring would.

use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub(crate) struct Queues {
    pub to_stack: VecDeque<Vec<u8>>,
    pub to_guest: VecDeque<Vec<u8>>,
    pub guest_limit: usize,
    pub guest_dropped: u64,
    pub mtu: usize,
}

impl Queues {
    pub fn new(guest_limit: usize, mtu: usize) -> Self {
        Queues { to_stack: VecDeque::new(), to_guest: VecDeque::new(), guest_limit, guest_dropped: 0, mtu }
    }

    /// Queues a frame for the guest; false (and counted) when full.
    pub fn push_guest(&mut self, frame: Vec<u8>) -> bool {
        if self.to_guest.len() >= self.guest_limit {
            self.guest_dropped += 1;
            return false;
        }
        self.to_guest.push_back(frame);
        true
    }

    pub fn guest_full(&self) -> bool {
        self.to_guest.len() >= self.guest_limit
    }
}

pub(crate) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

pub(crate) struct TxToken<'a>(&'a mut Queues);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push_guest(frame);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        // A reply to this frame must have room, or the frame waits.
        if self.guest_full() {
            return None;
        }
        let frame = self.to_stack.pop_front()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.guest_full() {
            return None;
        }
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + crate::frame::ETH_HEADER_LEN;
        // Bursts are bounded by the guest queue, not by smoltcp.
        caps.max_burst_size = None;
        caps
    }
}
