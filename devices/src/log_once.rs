//! Log-once bookkeeping for guest misbehaviour.
//!
//! A guest that loops on a bad access must not flood the log: each device
//! reports each kind of misuse once, then stays quiet.

use std::sync::atomic::{AtomicU32, Ordering};

/// The kinds of guest misuse a device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Misuse {
    /// An access whose size the device does not implement.
    AccessSize,
    /// An access to a register the device does not implement.
    Unimplemented,
    /// An access that starts inside a device's range and runs past its end.
    CrossesEnd,
    /// A host-side write failed (the output went away).
    OutputError,
    /// A message or DMA address outside the window it must fall in.
    OutOfWindow,
    /// A register value the device cannot take in its current state.
    BadValue,
}

impl Misuse {
    fn bit(self) -> u32 {
        match self {
            Misuse::AccessSize => 1 << 0,
            Misuse::Unimplemented => 1 << 1,
            Misuse::CrossesEnd => 1 << 2,
            Misuse::OutputError => 1 << 3,
            Misuse::OutOfWindow => 1 << 4,
            Misuse::BadValue => 1 << 5,
        }
    }
}

/// Remembers which kinds of misuse one device has already logged.
#[derive(Debug, Default)]
pub(crate) struct LogOnce {
    seen: AtomicU32,
}

impl LogOnce {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// True the first time `kind` is reported, false afterwards.
    pub(crate) fn first(&self, kind: Misuse) -> bool {
        let bit = kind.bit();
        self.seen.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_first_once() {
        let log = LogOnce::new();
        assert!(log.first(Misuse::AccessSize));
        assert!(!log.first(Misuse::AccessSize));
        assert!(log.first(Misuse::Unimplemented));
        assert!(log.first(Misuse::CrossesEnd));
        assert!(log.first(Misuse::OutputError));
        assert!(!log.first(Misuse::CrossesEnd));
    }
}
