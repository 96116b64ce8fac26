//! Interrupt lines as devices see them.
//!
//! A device raises or lowers its line through [`IrqLine`]; the machine decides
//! what is behind it (the emulated PIC/IOAPIC, or an in-kernel irqchip). Device
//! code is the same either way.

use std::sync::Arc;

use parking_lot::Mutex;

/// One interrupt request line driven by a device.
pub trait IrqLine: Send + Sync {
    /// Drives the line to `level` (true = asserted).
    fn set_level(&self, level: bool);

    /// Asserts the line and releases it again: one edge for edge-triggered inputs.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// A line that goes nowhere, for devices the machine leaves unwired.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoIrq;

impl IrqLine for NoIrq {
    fn set_level(&self, _level: bool) {}
}

/// A line with a switch between the device and the controller: while the
/// switch is open nothing the device does reaches the controller, and the
/// line reads low there. The chipset uses it for the 8254's IRQ0 and the
/// RTC's IRQ8, which the HPET's legacy replacement route disconnects
/// (IA-PC HPET specification 1.0a, 2.3.9.1).
///
/// It saves nothing of its own: the level is the device's, which its
/// restore drives again, and the switch is the HPET's LegacyReplacement
/// bit, which the HPET's restore sets again.
pub struct SwitchedIrq {
    inner: Arc<dyn IrqLine>,
    /// The level the device drives, and whether the switch is closed.
    state: Mutex<(bool, bool)>,
}

impl std::fmt::Debug for SwitchedIrq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (level, connected) = *self.state.lock();
        f.debug_struct("SwitchedIrq").field("level", &level).field("connected", &connected).finish()
    }
}

impl SwitchedIrq {
    /// A connected switch in front of `inner`.
    pub fn new(inner: Arc<dyn IrqLine>) -> Self {
        Self { inner, state: Mutex::new((false, true)) }
    }

    /// Closes (`true`) or opens the switch. Closing it passes on the level
    /// the device drives; opening it lowers the line.
    pub fn set_connected(&self, connected: bool) {
        let mut state = self.state.lock();
        if state.1 == connected {
            return;
        }
        state.1 = connected;
        if state.0 {
            self.inner.set_level(connected);
        }
    }

    /// Whether the switch is closed.
    pub fn connected(&self) -> bool {
        self.state.lock().1
    }
}

impl IrqLine for SwitchedIrq {
    fn set_level(&self, level: bool) {
        let mut state = self.state.lock();
        let changed = state.0 != level;
        state.0 = level;
        if state.1 && changed {
            self.inner.set_level(level);
        }
    }

    fn pulse(&self) {
        let state = self.state.lock();
        if state.1 {
            self.inner.pulse();
        }
    }
}

#[cfg(any(test, feature = "test-utils"))]
pub use recording::RecordingIrq;

#[cfg(any(test, feature = "test-utils"))]
mod recording {
    use super::IrqLine;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A test double that records what a device did to its line.
    #[derive(Debug, Default)]
    pub struct RecordingIrq {
        level: AtomicBool,
        raises: AtomicU32,
        lowers: AtomicU32,
        pulses: AtomicU32,
    }

    impl RecordingIrq {
        /// A line that starts low with nothing recorded.
        pub fn new() -> Self {
            Self::default()
        }

        /// The level the line is driven to now.
        pub fn level(&self) -> bool {
            self.level.load(Ordering::SeqCst)
        }

        /// How many times the line went from low to high (pulses included).
        pub fn raises(&self) -> u32 {
            self.raises.load(Ordering::SeqCst)
        }

        /// How many times the line went from high to low (pulses included).
        pub fn lowers(&self) -> u32 {
            self.lowers.load(Ordering::SeqCst)
        }

        /// How many times [`IrqLine::pulse`] was called.
        pub fn pulses(&self) -> u32 {
            self.pulses.load(Ordering::SeqCst)
        }
    }

    impl IrqLine for RecordingIrq {
        fn set_level(&self, level: bool) {
            let was = self.level.swap(level, Ordering::SeqCst);
            if level && !was {
                self.raises.fetch_add(1, Ordering::SeqCst);
            }
            if !level && was {
                self.lowers.fetch_add(1, Ordering::SeqCst);
            }
        }

        fn pulse(&self) {
            self.pulses.fetch_add(1, Ordering::SeqCst);
            self.set_level(true);
            self.set_level(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_irq_counts_edges_not_repeats() {
        let irq = RecordingIrq::new();
        assert!(!irq.level());
        irq.set_level(true);
        irq.set_level(true);
        assert!(irq.level());
        assert_eq!(irq.raises(), 1);
        irq.set_level(false);
        assert_eq!(irq.lowers(), 1);
        irq.pulse();
        assert!(!irq.level());
        assert_eq!((irq.raises(), irq.lowers(), irq.pulses()), (2, 2, 1));
    }

    #[test]
    fn switched_irq_holds_the_level_while_open_and_restores_it() {
        let inner = Arc::new(RecordingIrq::new());
        let line = SwitchedIrq::new(inner.clone());
        assert!(line.connected());
        line.pulse();
        assert_eq!(inner.pulses(), 1);
        line.set_level(true);
        assert!(inner.level());
        line.set_connected(false);
        assert!(!line.connected());
        assert!(!inner.level(), "opening the switch lowers the line");
        line.pulse();
        line.set_level(false);
        line.set_level(true);
        assert_eq!((inner.pulses(), inner.raises()), (1, 2), "nothing passes while open");
        line.set_connected(true);
        assert!(inner.level(), "closing it passes the device's level on");
        line.set_level(false);
        line.set_connected(false);
        line.set_connected(true);
        assert!(!inner.level());
        assert!(format!("{line:?}").contains("connected: true"));
    }

    #[test]
    fn default_pulse_is_raise_then_lower() {
        struct Levels(parking_lot::Mutex<Vec<bool>>);
        impl IrqLine for Levels {
            fn set_level(&self, level: bool) {
                self.0.lock().push(level);
            }
        }
        let line = Levels(parking_lot::Mutex::new(Vec::new()));
        line.pulse();
        assert_eq!(*line.0.lock(), vec![true, false]);
    }
}
