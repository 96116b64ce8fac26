//! Message-signalled interrupts as devices send them.
//!
//! A PCI function signals an MSI or MSI-X vector by writing a 32-bit data
//! word to an address; on a PC, writes into the 1 MiB window at 0xFEE0_0000
//! are interrupt messages to the local APICs. A device hands the pair to an
//! [`MsiSink`], and the machine decides what is behind it: the emulated
//! local APICs ([`crate::InterruptController`]) or a hypervisor's in-kernel
//! irqchip.
//!
//! Reference: Intel SDM Vol. 3A, 11.11 "Message Signalled Interrupts":
//!
//! ```text
//! address  31:20 0FEEh | 19:12 destination ID | 11:4 reserved | 3 RH | 2 DM | 1:0 xx
//! data     15 trigger mode (1 level) | 14 level (1 assert) | 10:8 delivery mode | 7:0 vector
//! ```
//!
//! RH (redirection hint) with DM selects lowest-priority arbitration among
//! the destinations; the delivery mode field says it too, and only the
//! delivery mode is used here (one CPU).

use crate::intc::ioapic::{DeliveryMode, InterruptMessage};

/// Base of the local APICs' message window.
pub const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;
/// Size of the window.
pub const MSI_ADDRESS_LEN: u64 = 0x10_0000;

const ADDR_DEST_SHIFT: u32 = 12;
const ADDR_DEST_LOGICAL: u64 = 1 << 2;
const DATA_VECTOR: u32 = 0xff;
const DATA_DELIVERY_SHIFT: u32 = 8;
const DATA_TRIGGER_LEVEL: u32 = 1 << 15;

/// One message: the address and data a function writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// The 64-bit message address.
    pub address: u64,
    /// The message data (MSI-X data is 32 bits; the upper 16 are reserved).
    pub data: u32,
}

impl MsiMessage {
    /// The interrupt this message asks for, or `None` when the address is
    /// outside the local APICs' window (on real hardware that is a plain
    /// memory write, which no driver asks for).
    pub fn interrupt(&self) -> Option<InterruptMessage> {
        if !(MSI_ADDRESS_BASE..MSI_ADDRESS_BASE + MSI_ADDRESS_LEN).contains(&self.address) {
            return None;
        }
        Some(InterruptMessage {
            vector: (self.data & DATA_VECTOR) as u8,
            delivery_mode: DeliveryMode::from_bits((self.data >> DATA_DELIVERY_SHIFT) as u8),
            logical: self.address & ADDR_DEST_LOGICAL != 0,
            destination: ((self.address >> ADDR_DEST_SHIFT) & 0xff) as u32,
            level_triggered: self.data & DATA_TRIGGER_LEVEL != 0,
        })
    }
}

/// Where a device's messages go.
pub trait MsiSink: Send + Sync {
    /// Sends one message.
    fn send(&self, msg: MsiMessage);
}

#[cfg(any(test, feature = "test-utils"))]
pub use recording::RecordingMsi;

#[cfg(any(test, feature = "test-utils"))]
mod recording {
    use super::{MsiMessage, MsiSink};
    use parking_lot::Mutex;

    /// A test double that keeps every message sent to it.
    #[derive(Debug, Default)]
    pub struct RecordingMsi {
        sent: Mutex<Vec<MsiMessage>>,
    }

    impl RecordingMsi {
        /// A sink with nothing recorded.
        pub fn new() -> Self {
            Self::default()
        }

        /// The messages sent since the last call, oldest first.
        pub fn take(&self) -> Vec<MsiMessage> {
            std::mem::take(&mut *self.sent.lock())
        }
    }

    impl MsiSink for RecordingMsi {
        fn send(&self, msg: MsiMessage) {
            self.sent.lock().push(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_as_the_sdm_lays_them_out() {
        // Linux's usual form: physical destination 0, fixed, edge, vector 0x22.
        let m = MsiMessage { address: 0xfee0_0000, data: 0x0022 }.interrupt().unwrap();
        assert_eq!(m.vector, 0x22);
        assert_eq!(m.delivery_mode, DeliveryMode::Fixed);
        assert!(!m.logical && !m.level_triggered);
        assert_eq!(m.destination, 0);
        // Logical destination 0x01, lowest priority, level.
        let m = MsiMessage { address: 0xfee0_100c, data: 0xc141 }.interrupt().unwrap();
        assert_eq!((m.vector, m.destination), (0x41, 1));
        assert_eq!(m.delivery_mode, DeliveryMode::LowestPriority);
        assert!(m.logical && m.level_triggered);
        // NMI.
        let m = MsiMessage { address: 0xfeef_f000, data: 0x0400 }.interrupt().unwrap();
        assert_eq!((m.delivery_mode, m.destination), (DeliveryMode::Nmi, 0xff));
    }

    #[test]
    fn addresses_outside_the_window_are_not_interrupts() {
        for address in [0, 0xfedf_fffc, 0xfef0_0000, 0x1_fee0_0000] {
            assert_eq!(MsiMessage { address, data: 0x30 }.interrupt(), None, "{address:#x}");
        }
    }

    #[test]
    fn the_recording_sink_keeps_messages_in_order() {
        let s = RecordingMsi::new();
        s.send(MsiMessage { address: MSI_ADDRESS_BASE, data: 1 });
        s.send(MsiMessage { address: MSI_ADDRESS_BASE, data: 2 });
        assert_eq!(s.take().iter().map(|m| m.data).collect::<Vec<_>>(), [1, 2]);
        assert!(s.take().is_empty());
    }
}
