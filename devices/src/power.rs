//! Machine-level events raised by devices and host threads.
//!
//! A device that wants the machine to stop, reset or exit (the debug-exit
//! port, an ACPI poweroff, the console's quit key) files a [`VmEvent`] with the
//! shared [`VmEvents`]. The CPU loop polls [`VmEvents::pending`], one relaxed
//! atomic load, and takes the event when it sees one. A kick callback lets a
//! requester interrupt a vCPU that sleeps in HLT or in an accelerator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// Something the machine as a whole must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
    /// The guest powered the machine off.
    PowerOff,
    /// The guest asked for a system reset.
    Reset,
    /// The user asked to quit (console escape, signal).
    Quit,
}

impl VmEvent {
    /// The process exit status this event ends the run with, or `None` when
    /// the machine goes on (a reset).
    ///
    /// A debug exit of value `v` exits with `(v << 1) | 1`, as QEMU's
    /// isa-debug-exit does, so a guest cannot fake a clean exit status of 0.
    pub fn exit_status(self) -> Option<i32> {
        match self {
            VmEvent::DebugExit(v) => Some(((v << 1) | 1).cast_signed()),
            VmEvent::PowerOff | VmEvent::Quit => Some(0),
            VmEvent::Reset => None,
        }
    }
}

type Kick = Arc<dyn Fn() + Send + Sync>;

/// The one pending machine event, shared between devices, host threads and the CPU loop.
///
/// It holds no device state: a pending event is the machine's to act on
/// (a reset, an exit) before it saves, so it does not implement
/// [`persist::Persist`].
#[derive(Default)]
pub struct VmEvents {
    pending: AtomicBool,
    event: Mutex<Option<VmEvent>>,
    kick: RwLock<Option<Kick>>,
}

impl std::fmt::Debug for VmEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmEvents")
            .field("event", &*self.event.lock())
            .field("has_kick", &self.kick.read().is_some())
            .finish()
    }
}

impl VmEvents {
    /// No event pending and no kick installed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Files `ev`. The first request wins: while an event is pending, later
    /// ones are ignored. Returns whether `ev` was taken; if so, the kick runs.
    pub fn request(&self, ev: VmEvent) -> bool {
        {
            let mut slot = self.event.lock();
            if slot.is_some() {
                tracing::debug!(target: "devices", ?ev, pending = ?*slot, "machine event ignored: another is pending");
                return false;
            }
            *slot = Some(ev);
            self.pending.store(true, Ordering::Release);
        }
        // Clone the kick out so it runs with no lock held.
        let kick = self.kick.read().clone();
        if let Some(kick) = kick {
            kick();
        }
        true
    }

    /// Whether an event waits to be taken. Cheap enough for every loop turn.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Takes the pending event, if any; new requests are accepted again afterwards.
    pub fn take(&self) -> Option<VmEvent> {
        let mut slot = self.event.lock();
        self.pending.store(false, Ordering::Relaxed);
        slot.take()
    }

    /// Installs the callback that wakes the CPU when an event is requested
    /// (it replaces any earlier one).
    pub fn set_kick(&self, kick: Box<dyn Fn() + Send + Sync>) {
        *self.kick.write() = Some(Arc::from(kick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn first_request_wins_until_taken() {
        let events = VmEvents::new();
        assert!(!events.pending());
        assert_eq!(events.take(), None);
        assert!(events.request(VmEvent::DebugExit(3)));
        assert!(events.pending());
        assert!(!events.request(VmEvent::Quit));
        assert_eq!(events.take(), Some(VmEvent::DebugExit(3)));
        assert!(!events.pending());
        assert_eq!(events.take(), None);
        assert!(events.request(VmEvent::Reset));
        assert_eq!(events.take(), Some(VmEvent::Reset));
    }

    #[test]
    fn kick_runs_once_per_accepted_request() {
        let events = Arc::new(VmEvents::new());
        let kicks = Arc::new(AtomicU32::new(0));
        let k = kicks.clone();
        events.set_kick(Box::new(move || {
            k.fetch_add(1, Ordering::SeqCst);
        }));
        events.request(VmEvent::PowerOff);
        events.request(VmEvent::Quit);
        assert_eq!(kicks.load(Ordering::SeqCst), 1);
        events.take();
        events.request(VmEvent::Quit);
        assert_eq!(kicks.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn kick_may_look_at_the_events() {
        let events = Arc::new(VmEvents::new());
        let seen = Arc::new(AtomicBool::new(false));
        let (e, s) = (Arc::downgrade(&events), seen.clone());
        events.set_kick(Box::new(move || {
            if let Some(e) = e.upgrade() {
                s.store(e.pending(), Ordering::SeqCst);
            }
        }));
        events.request(VmEvent::Quit);
        assert!(seen.load(Ordering::SeqCst));
    }

    #[test]
    fn requests_from_many_threads_leave_exactly_one() {
        let events = Arc::new(VmEvents::new());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let e = events.clone();
                std::thread::spawn(move || e.request(VmEvent::DebugExit(i)))
            })
            .collect();
        let accepted = handles.into_iter().map(|h| h.join().unwrap()).filter(|&a| a).count();
        assert_eq!(accepted, 1);
        assert!(matches!(events.take(), Some(VmEvent::DebugExit(_))));
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(VmEvent::DebugExit(0).exit_status(), Some(1));
        assert_eq!(VmEvent::DebugExit(0x10).exit_status(), Some(0x21));
        assert_eq!(VmEvent::DebugExit(0x7fff_ffff).exit_status(), Some(-1));
        assert_eq!(VmEvent::DebugExit(u32::MAX).exit_status(), Some(-1));
        assert_eq!(VmEvent::PowerOff.exit_status(), Some(0));
        assert_eq!(VmEvent::Quit.exit_status(), Some(0));
        assert_eq!(VmEvent::Reset.exit_status(), None);
    }
}
