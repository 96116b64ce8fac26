//! Known mismatches: interpreter bugs that are reported and not yet fixed.
//!
//! A mismatch is first reduced to the fewest instructions that still
//! mismatch. If the reduced sequence contains an instruction named here (in
//! the given mode, when one is given), the mismatch is counted against that
//! entry and printed as known; anything else fails the test. Every entry
//! names the instruction and what differs, and the report prints how often
//! each entry matched, so a fixed bug shows up as an entry that no longer
//! matches (remove it then).

use iced_x86::{Code, Instruction, Mnemonic};

use crate::machine::Mode;

/// What an entry matches.
#[derive(Clone, Copy, Debug)]
pub enum Key {
    Mnemonic(Mnemonic),
    Code(Code),
}

#[derive(Clone, Copy, Debug)]
pub struct Known {
    pub key: Key,
    /// `None`: both modes.
    pub mode: Option<Mode>,
    /// What differs, with a reproducer in the harness's report format.
    pub what: &'static str,
}

pub const KNOWN: &[Known] = &[];

/// The first entry matching an instruction of the (reduced) sequence.
pub fn match_known(mode: Mode, insns: &[Instruction]) -> Option<usize> {
    KNOWN.iter().position(|k| {
        k.mode.is_none_or(|m| m == mode)
            && insns.iter().any(|i| match k.key {
                Key::Mnemonic(m) => i.mnemonic() == m,
                Key::Code(c) => i.code() == c,
            })
    })
}
