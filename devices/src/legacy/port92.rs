//! Port 0x92, "System Control Port A" (fast A20 and fast reset), and the A20
//! gate it shares with the i8042.
//!
//! Reference: Intel 82371SB (PIIX3) datasheet 290550 lists port 92h as "Port
//! 92 Register" (bit 0 FAST_INIT/fast reset, bit 1 FAST_A20); the IBM PS/2
//! Model 50/60 technical reference defines the rest (bit 3 CMOS lock, bits
//! 7:6 the fixed-disk activity lights).
//!
//! ```text
//! port 0x92  7:6 disk activity LEDs | 5:4 reserved | 3 security lock |
//!            2 reserved | 1 A20 enable | 0 fast reset (0 -> 1 resets the CPU)
//! ```
//!
//! The A20 line is the OR of the i8042's output port bit 1 and port 0x92
//! bit 1: the address line is forced to 0 only when both are off. The CPU
//! side reads [`A20Gate::enabled`] and may install a callback to flush its
//! TLB when the line changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use persist::{Persist, PersistError};

use crate::bus::BusDevice;
use crate::log_once::{LogOnce, Misuse};
use crate::power::{VmEvent, VmEvents};

/// I/O port of System Control Port A.
pub const PORT92: u16 = 0x92;
/// One port.
pub const PORT92_LEN: u64 = 1;

const P92_FAST_RESET: u8 = 0b0000_0001;
const P92_A20: u8 = 0b0000_0010;
/// Bits that read back: the LEDs, the lock and A20 (reset reads back too,
/// as QEMU's port does, until the machine resets).
const P92_KEPT: u8 = 0b1100_1011;

type A20Notify = Arc<dyn Fn(bool) + Send + Sync>;

/// The A20 gate: enabled when the keyboard controller or port 0x92 says so.
///
/// It has no state of its own to save: its inputs are the i8042's output
/// port and port 0x92's register, whose restores set them.
#[derive(Default)]
pub struct A20Gate {
    kbc: AtomicBool,
    fast: AtomicBool,
    notify: RwLock<Option<A20Notify>>,
}

impl std::fmt::Debug for A20Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("A20Gate")
            .field("kbc", &self.kbc.load(Ordering::Relaxed))
            .field("fast", &self.fast.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl A20Gate {
    /// A gate whose keyboard-controller input starts at `enabled` (firmware
    /// that boots a kernel directly leaves A20 on) and port 0x92's off.
    pub fn new(enabled: bool) -> Arc<Self> {
        Arc::new(Self { kbc: AtomicBool::new(enabled), fast: AtomicBool::new(false), notify: RwLock::new(None) })
    }

    /// Whether address line 20 passes through.
    pub fn enabled(&self) -> bool {
        self.kbc.load(Ordering::Acquire) || self.fast.load(Ordering::Acquire)
    }

    /// The keyboard controller's output port bit 1.
    pub fn kbc(&self) -> bool {
        self.kbc.load(Ordering::Acquire)
    }

    /// Port 0x92 bit 1.
    pub fn fast(&self) -> bool {
        self.fast.load(Ordering::Acquire)
    }

    /// Installs the callback run when [`A20Gate::enabled`] changes.
    pub fn set_notify(&self, notify: Box<dyn Fn(bool) + Send + Sync>) {
        *self.notify.write() = Some(Arc::from(notify));
    }

    fn set(&self, which: &AtomicBool, on: bool) {
        let before = self.enabled();
        which.store(on, Ordering::Release);
        let after = self.enabled();
        if before != after {
            tracing::debug!(target: "devices", enabled = after, "A20 gate");
            let notify = self.notify.read().clone();
            if let Some(notify) = notify {
                notify(after);
            }
        }
    }

    /// Sets the keyboard controller's input.
    pub fn set_kbc(&self, on: bool) {
        self.set(&self.kbc, on);
    }

    /// Sets port 0x92's input.
    pub fn set_fast(&self, on: bool) {
        self.set(&self.fast, on);
    }
}

/// The state of port 0x92, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Port92State {
    /// The register's kept bits.
    pub value: u8,
}

/// System Control Port A.
pub struct Port92 {
    value: u8,
    a20: Arc<A20Gate>,
    events: Arc<VmEvents>,
    log: LogOnce,
}

impl std::fmt::Debug for Port92 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port92").field("value", &self.value).finish_non_exhaustive()
    }
}

impl Port92 {
    /// Port 0x92 driving `a20` and filing resets with `events`.
    pub fn new(a20: Arc<A20Gate>, events: Arc<VmEvents>) -> Self {
        let value = if a20.fast() { P92_A20 } else { 0 };
        Self { value, a20, events, log: LogOnce::new() }
    }
}

/// Restore refuses bits the register does not keep (5:4 and 2) and sets
/// the A20 gate's port 0x92 input from bit 1. It files no reset: bit 0 as
/// saved is the level a later write's edge is measured from.
impl Persist for Port92 {
    type State = Port92State;

    fn save(&self) -> Port92State {
        Port92State { value: self.value }
    }

    fn restore(&mut self, state: &Port92State) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl Port92 {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &Port92State) -> Result<(), PersistError> {
        PersistError::check(state.value & !P92_KEPT == 0, "port 0x92", "value", || {
            format!("is {:#04x}, with bits outside {P92_KEPT:#04x} set", state.value)
        })
    }

    /// Loads a state [`Port92::check_state`] passed and sets the A20 input.
    pub(crate) fn load_state(&mut self, state: &Port92State) {
        self.value = state.value;
        self.a20.set_fast(self.value & P92_A20 != 0);
    }
}

impl BusDevice for Port92 {
    fn debug_label(&self) -> String {
        "port 0x92".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match data {
            [byte] => *byte = self.value,
            _ => {
                if self.log.first(Misuse::AccessSize) {
                    tracing::warn!(target: "devices", offset, size = data.len(), "port 0x92 is one byte wide; access ignored (logged once)");
                }
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            if self.log.first(Misuse::AccessSize) {
                tracing::warn!(target: "devices", offset, size = data.len(), "port 0x92 is one byte wide; access ignored (logged once)");
            }
            return;
        };
        let old = self.value;
        self.value = value & P92_KEPT;
        self.a20.set_fast(value & P92_A20 != 0);
        if value & P92_FAST_RESET != 0 && old & P92_FAST_RESET == 0 {
            tracing::info!(target: "devices", "guest reset the machine through port 0x92");
            self.events.request(VmEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn a20_is_the_or_of_both_inputs_and_notifies_changes() {
        let gate = A20Gate::new(false);
        let changes = Arc::new(AtomicU32::new(0));
        let c = changes.clone();
        gate.set_notify(Box::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(!gate.enabled());
        gate.set_fast(true);
        assert!(gate.enabled());
        gate.set_kbc(true);
        gate.set_fast(false);
        assert!(gate.enabled(), "the keyboard controller still enables it");
        assert_eq!(changes.load(Ordering::SeqCst), 1);
        gate.set_kbc(false);
        assert!(!gate.enabled());
        assert_eq!(changes.load(Ordering::SeqCst), 2);
        assert!(format!("{gate:?}").contains("kbc"));
    }

    #[test]
    fn port92_sets_a20_and_resets_on_a_rising_bit_0() {
        let gate = A20Gate::new(false);
        let events = Arc::new(VmEvents::new());
        let mut p = Port92::new(gate.clone(), events.clone());
        p.write(0, &[P92_A20]);
        assert!(gate.fast());
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b, [P92_A20]);
        assert!(!events.pending());
        p.write(0, &[P92_A20 | P92_FAST_RESET]);
        assert_eq!(events.take(), Some(VmEvent::Reset));
        p.write(0, &[P92_A20 | P92_FAST_RESET]);
        assert!(!events.pending(), "no new edge");
        p.write(0, &[0xff]);
        p.read(0, &mut b);
        assert_eq!(b, [P92_KEPT]);
        let state = p.save();
        p.write(0, &[0]);
        p.restore(&state).unwrap();
        assert_eq!(p.save(), state);
        assert!(gate.fast());
        let mut w = [0u8; 2];
        p.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        p.write(0, &[0, 0]);
        assert!(gate.fast());
        assert_eq!(p.debug_label(), "port 0x92");
    }

    #[test]
    fn the_persisted_state_round_trips_and_drives_a20() {
        let events = Arc::new(VmEvents::new());
        let gate = A20Gate::new(false);
        let mut p = Port92::new(gate.clone(), events.clone());
        p.write(0, &[0xc0 | P92_A20 | P92_FAST_RESET]);
        assert_eq!(events.take(), Some(VmEvent::Reset));
        let fresh_gate = A20Gate::new(false);
        let mut fresh = Port92::new(fresh_gate.clone(), events.clone());
        let state = persist::assert_round_trip(&p, &mut fresh);
        assert_eq!(state.value, 0xc0 | P92_A20 | P92_FAST_RESET);
        assert!(fresh_gate.fast() && fresh_gate.enabled(), "the restore drives A20");
        assert!(!events.pending(), "restoring bit 0 set is no reset");
        let mut b = [0u8];
        fresh.read(0, &mut b);
        assert_eq!(b, [0xc0 | P92_A20 | P92_FAST_RESET]);
        // Bit 0 is already set: writing it again is no new edge, as on the original.
        fresh.write(0, &[P92_A20 | P92_FAST_RESET]);
        assert!(!events.pending());
    }

    #[test]
    fn reserved_bits_are_refused() {
        let gate = A20Gate::new(false);
        let mut p = Port92::new(gate.clone(), Arc::new(VmEvents::new()));
        for bad in [0x04, 0x10, 0x20, P92_A20 | 0x30] {
            let e = persist::assert_refused(&mut p, &Port92State { value: bad });
            assert_eq!(e.field, "value");
        }
        assert!(!gate.fast(), "a refused restore leaves A20 alone");
    }
}
