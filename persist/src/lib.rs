//! Saved state: one trait for every part of the machine that has some.
//!
//! A device, the CPU state or the machine's own bookkeeping implements
//! [`Persist`]: [`Persist::save`] returns a plain value type (its `State`)
//! that holds everything the guest can observe, and [`Persist::restore`]
//! loads one back into an existing instance. What is derived from the state
//! (an interrupt line's level, a decoded register, a timer's next deadline)
//! is recomputed on restore and not saved. Caches (the soft TLB, decoded
//! blocks, compiled code) are never saved; their owners flush them on restore.
//!
//! `restore` trusts nothing: a state may come from a file written by another
//! build, or be corrupt. Every index is checked against its table, every
//! length against its capacity and every enumeration against its known
//! values, and a state that cannot be taken whole is refused with a
//! [`PersistError`] before anything is changed, so a failed restore leaves
//! the instance as it was.
//!
//! Time in a state is guest time: nanoseconds of the machine's clock, which
//! itself saves the guest time it had reached and resumes from it on restore
//! (the devices' `Clock`), so a state means the same in another process.
//!
//! The state types derive serde's traits when the `serde` feature of the
//! crate that defines them is on; the wire format is the caller's choice.

#![forbid(unsafe_code)]

#[cfg(feature = "serde")]
pub use serde;

use std::fmt::Debug;

/// A part of the machine whose guest-visible state can be saved and restored.
pub trait Persist {
    /// Everything [`Persist::restore`] needs to bring a fresh instance to
    /// the saved one's guest-visible state.
    type State: Clone + Debug + PartialEq;

    /// The current state.
    fn save(&self) -> Self::State;

    /// Loads `state`, after checking all of it. On an error nothing changed.
    fn restore(&mut self, state: &Self::State) -> Result<(), PersistError>;
}

/// Why a saved state was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("cannot restore {part}: {field} {problem}; the state is corrupt or from an incompatible build")]
pub struct PersistError {
    /// What was being restored ("16550A UART", "virtio queue").
    pub part: &'static str,
    /// The field, or the relation between fields, that failed the check.
    pub field: &'static str,
    /// What is wrong with it, with the values.
    pub problem: String,
}

impl PersistError {
    /// An error about `field` of `part`.
    pub fn new(part: &'static str, field: &'static str, problem: impl Into<String>) -> Self {
        Self { part, field, problem: problem.into() }
    }

    /// Fails with "is `value`, above the largest allowed `max`" unless `value <= max`.
    pub fn check_max<T: PartialOrd + Debug>(
        part: &'static str,
        field: &'static str,
        value: T,
        max: T,
    ) -> Result<(), Self> {
        if value <= max {
            Ok(())
        } else {
            Err(Self::new(part, field, format!("is {value:?}, above the largest allowed {max:?}")))
        }
    }

    /// Fails with "has length `len`, not `want`" unless they are equal.
    pub fn check_len(part: &'static str, field: &'static str, len: usize, want: usize) -> Result<(), Self> {
        if len == want {
            Ok(())
        } else {
            Err(Self::new(part, field, format!("has length {len}, not {want}")))
        }
    }

    /// Fails with `problem` unless `ok`.
    pub fn check(
        ok: bool,
        part: &'static str,
        field: &'static str,
        problem: impl FnOnce() -> String,
    ) -> Result<(), Self> {
        if ok {
            Ok(())
        } else {
            Err(Self::new(part, field, problem()))
        }
    }
}

/// The round trip every implementation is tested with: saves `configured`,
/// restores that into `fresh`, saves `fresh` and compares the two states.
/// Returns the state, for further checks.
///
/// # Panics
/// When the restore fails or the states differ: this is a test helper.
pub fn assert_round_trip<T: Persist>(configured: &T, fresh: &mut T) -> T::State {
    let state = configured.save();
    if let Err(e) = fresh.restore(&state) {
        panic!("restoring a state just saved failed: {e}");
    }
    let again = fresh.save();
    assert_eq!(again, state, "a restored instance saves a different state");
    state
}

/// The other half of every implementation's tests: `corrupt` must be refused,
/// and the refusal must leave `target` as it was. Returns the error.
///
/// # Panics
/// When the restore succeeds or changes the instance: this is a test helper.
pub fn assert_refused<T: Persist>(target: &mut T, corrupt: &T::State) -> PersistError {
    let before = target.save();
    match target.restore(corrupt) {
        Ok(()) => panic!("a corrupt state was taken: {corrupt:?}"),
        Err(e) => {
            assert_eq!(target.save(), before, "a refused restore changed the instance ({e})");
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register file of four bytes with a current index, as a device might have.
    #[derive(Default)]
    struct Regs {
        index: usize,
        regs: [u8; 4],
    }

    #[derive(Clone, Debug, PartialEq)]
    struct RegsState {
        index: usize,
        regs: Vec<u8>,
    }

    impl Persist for Regs {
        type State = RegsState;

        fn save(&self) -> RegsState {
            RegsState { index: self.index, regs: self.regs.to_vec() }
        }

        fn restore(&mut self, s: &RegsState) -> Result<(), PersistError> {
            PersistError::check_max("test register file", "index", s.index, self.regs.len() - 1)?;
            PersistError::check_len("test register file", "regs", s.regs.len(), self.regs.len())?;
            self.index = s.index;
            self.regs.copy_from_slice(&s.regs);
            Ok(())
        }
    }

    #[test]
    fn a_state_survives_the_round_trip() {
        let configured = Regs { index: 2, regs: [1, 2, 3, 4] };
        let state = assert_round_trip(&configured, &mut Regs::default());
        assert_eq!(state.regs, [1, 2, 3, 4]);
    }

    #[test]
    fn a_corrupt_state_is_refused_and_changes_nothing() {
        let mut r = Regs { index: 1, regs: [9, 8, 7, 6] };
        let e = assert_refused(&mut r, &RegsState { index: 4, regs: vec![0; 4] });
        assert_eq!(e.field, "index");
        assert!(e.to_string().contains("is 4, above the largest allowed 3"), "{e}");
        let e = assert_refused(&mut r, &RegsState { index: 0, regs: vec![0; 5] });
        assert_eq!(e.to_string(), "cannot restore test register file: regs has length 5, not 4; the state is corrupt or from an incompatible build");
    }

    #[test]
    #[should_panic(expected = "a corrupt state was taken")]
    fn the_refusal_check_fails_when_a_state_is_taken() {
        assert_refused(&mut Regs::default(), &RegsState { index: 0, regs: vec![0; 4] });
    }
}
