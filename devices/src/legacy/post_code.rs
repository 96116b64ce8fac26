//! Port 0x80, the POST code port.
//!
//! Reference: the IBM PC/AT BIOS writes its power-on self-test progress
//! codes to port 80h, where a POST card latches them; on a PC the port
//! belongs to the DMA page registers' range and has no other function.
//! Linux writes it as an I/O delay (`outb_p`).
//!
//! The model keeps the last code, reads it back, and traces each new code
//! at debug level (a repeated one is not traced again, so I/O delays stay quiet).

use persist::{Persist, PersistError};

use crate::bus::BusDevice;

/// I/O port of the POST code latch.
pub const POST_CODE_PORT: u16 = 0x80;
/// One port.
pub const POST_CODE_PORT_LEN: u64 = 1;

/// The state of the latch, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PostCodeState {
    /// The last code written.
    pub last: u8,
}

/// The POST code latch.
#[derive(Debug, Default)]
pub struct PostCode {
    last: u8,
}

impl PostCode {
    /// A latch holding 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code the guest wrote.
    pub fn last(&self) -> u8 {
        self.last
    }
}

/// Every byte is a code a guest may have written, so every state is taken.
impl Persist for PostCode {
    type State = PostCodeState;

    fn save(&self) -> PostCodeState {
        PostCodeState { last: self.last }
    }

    fn restore(&mut self, state: &PostCodeState) -> Result<(), PersistError> {
        self.load_state(state);
        Ok(())
    }
}

impl PostCode {
    /// Loads a state (every state passes).
    pub(crate) fn load_state(&mut self, state: &PostCodeState) {
        self.last = state.last;
    }
}

impl BusDevice for PostCode {
    fn debug_label(&self) -> String {
        "POST code port".to_string()
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // Any width: the low byte is the code (a word write is common).
        if let Some(&code) = data.first() {
            if code != self.last {
                tracing::debug!(target: "devices", code = format_args!("{code:#04x}"), "POST code");
            }
            self.last = code;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_and_reads_back_the_last_code() {
        let mut p = PostCode::new();
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b, [0]);
        p.write(0, &[0x42]);
        p.write(0, &[0x42]);
        assert_eq!(p.last(), 0x42);
        p.write(0, &[0x55, 0xaa]);
        p.read(0, &mut b);
        assert_eq!(b, [0x55]);
        p.write(0, &[]);
        let s = p.save();
        let mut q = PostCode::new();
        q.restore(&s).unwrap();
        assert_eq!(q.save(), s);
        assert_eq!(q.debug_label(), "POST code port");
    }

    #[test]
    fn the_persisted_code_round_trips_and_reads_back() {
        let mut p = PostCode::new();
        p.write(0, &[0xa7]);
        let mut fresh = PostCode::new();
        let state = persist::assert_round_trip(&p, &mut fresh);
        assert_eq!(state.last, 0xa7);
        let mut b = [0u8; 2];
        fresh.read(0, &mut b);
        assert_eq!(b, [0xa7, 0xa7]);
    }

    /// The latch has no corrupt state: any byte is a POST code. Each is
    /// taken as it is.
    #[test]
    fn every_code_is_taken() {
        let mut p = PostCode::new();
        for code in 0..=u8::MAX {
            p.restore(&PostCodeState { last: code }).unwrap();
            assert_eq!(p.last(), code);
        }
    }
}
