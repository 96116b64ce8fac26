//! QEMU's isa-debug-exit device: a port a test guest writes to end the run.
//!
//! Reference: QEMU `hw/misc/debugexit.c` (the device behind
//! `-device isa-debug-exit,iobase=0xf4,iosize=0x04`). A write of value `v`
//! ends the emulator with exit status `(v << 1) | 1`; see
//! [`VmEvent::exit_status`]. Writes of 1, 2 or 4 bytes at any offset inside
//! the 4-port window count, as in QEMU, whose handler ignores the offset.
//! Reads return all-ones; the device has no readable register.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::log_once::{LogOnce, Misuse};
use crate::power::{VmEvent, VmEvents};

/// I/O port the test kernels of this field write to.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Width of the window, as `iosize=0x04` gives it.
pub const DEBUG_EXIT_PORT_LEN: u64 = 4;

/// The isa-debug-exit port.
///
/// It has no state: a write files an exit at once and reads return all
/// ones, so there is nothing to save and it does not implement
/// [`persist::Persist`].
pub struct DebugExit {
    events: Arc<VmEvents>,
    log: LogOnce,
}

impl std::fmt::Debug for DebugExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugExit").finish_non_exhaustive()
    }
}

impl DebugExit {
    /// A debug-exit port that files its exits with `events`.
    pub fn new(events: Arc<VmEvents>) -> Self {
        Self { events, log: LogOnce::new() }
    }

    fn log_access_size(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(
                target: "devices",
                offset,
                size,
                "isa-debug-exit takes 1-, 2- or 4-byte writes; access ignored (logged once)"
            );
        }
    }
}

impl BusDevice for DebugExit {
    fn debug_label(&self) -> String {
        "isa-debug-exit".to_string()
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match *data {
            [b0] => u32::from(b0),
            [b0, b1] => u32::from(u16::from_le_bytes([b0, b1])),
            [b0, b1, b2, b3] => u32::from_le_bytes([b0, b1, b2, b3]),
            _ => {
                self.log_access_size(offset, data.len());
                return;
            }
        };
        tracing::info!(target: "devices", value, "guest wrote the debug-exit port");
        self.events.request(VmEvent::DebugExit(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use parking_lot::Mutex;

    fn port() -> (Bus, Arc<VmEvents>) {
        let events = Arc::new(VmEvents::new());
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(DebugExit::new(events.clone())));
        bus.insert(dev, u64::from(DEBUG_EXIT_PORT), DEBUG_EXIT_PORT_LEN).unwrap();
        (bus, events)
    }

    #[test]
    fn writes_of_each_size_request_an_exit() {
        for (data, value) in
            [(&[0x10][..], 0x10), (&[0x34, 0x12][..], 0x1234), (&[0x78, 0x56, 0x34, 0x12][..], 0x1234_5678)]
        {
            let (bus, events) = port();
            assert!(bus.write(0xf4, data));
            assert_eq!(events.take(), Some(VmEvent::DebugExit(value)));
        }
    }

    #[test]
    fn the_exit_status_follows_qemu() {
        let (bus, events) = port();
        bus.write(0xf4, &[0x10]);
        assert_eq!(events.take().and_then(VmEvent::exit_status), Some(0x21));
    }

    #[test]
    fn a_write_at_an_offset_inside_the_window_counts() {
        let (bus, events) = port();
        assert!(bus.write(0xf5, &[3]));
        assert_eq!(events.take(), Some(VmEvent::DebugExit(3)));
    }

    #[test]
    fn other_sizes_and_reads_do_nothing() {
        let (bus, events) = port();
        assert!(bus.write(0xf4, &[1, 2, 3]));
        assert!(!events.pending());
        let mut data = [0u8; 4];
        assert!(bus.read(0xf4, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!events.pending());
    }

    #[test]
    fn the_first_exit_wins() {
        let (bus, events) = port();
        bus.write(0xf4, &[1]);
        bus.write(0xf4, &[2]);
        assert_eq!(events.take(), Some(VmEvent::DebugExit(1)));
    }

    #[test]
    fn it_names_itself() {
        let dev = DebugExit::new(Arc::new(VmEvents::new()));
        assert_eq!(dev.debug_label(), "isa-debug-exit");
        assert!(format!("{dev:?}").contains("DebugExit"));
    }
}
