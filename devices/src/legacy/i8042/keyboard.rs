//! Scan codes: the host's set-1 key codes as the keyboard sends them in
//! set 1 or set 2, and the controller's set-2 to set-1 translation.
//!
//! References: IBM "Personal System/2 Hardware Interface Technical
//! Reference", "Keyboard" (scan-code sets 1 and 2, the Pause key's
//! sequences, the overrun codes) and "Keyboard/Auxiliary Device
//! Controller" (the translation the command byte's bit 6 turns on).
//!
//! Set 1 sends a key's make code on press and make | 80h on release; set 2
//! sends its own make code and F0h before it on release. Extended keys
//! carry E0h in front in both sets (and before F0h in set 2). Pause has no
//! release and sends E1h sequences.

/// The 8042's translation of set-2 bytes to set 1, as the part does it:
/// codes below 80h map to their set-1 key, 83h (F7) and 84h (SysRq) too,
/// other bytes pass unchanged. F0h is not in the table: the controller
/// drops it and sets bit 7 of the next byte instead.
const TRANSLATE: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59, //
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b, //
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d, //
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f, //
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61, //
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76, //
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f, //
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54, //
];

/// Set-2 F7, which translates to set-1 41h.
const SET2_F7: u8 = 0x83;
/// Set-2 SysRq (Alt+Print Screen), which translates to set-1 54h.
const SET2_SYSRQ: u8 = 0x84;
const SET1_F7: u8 = 0x41;
const SET1_SYSRQ: u8 = 0x54;

/// Set 1 to set 2 for codes 01h-7Fh: the inverse of [`TRANSLATE`] (which
/// is one to one below 80h), with F7 and SysRq taking the codes keyboards
/// send for them.
const SET1_TO_SET2: [u8; 128] = {
    let mut inv = [0u8; 128];
    let mut set2 = 1;
    while set2 < 128 {
        let set1 = TRANSLATE[set2];
        if set1 < 0x80 {
            inv[set1 as usize] = set2 as u8;
        }
        set2 += 1;
    }
    inv[SET1_F7 as usize] = SET2_F7;
    inv[SET1_SYSRQ as usize] = SET2_SYSRQ;
    inv
};

/// The extended-key prefix.
pub(super) const PREFIX_EXTENDED: u8 = 0xe0;
/// The Pause key's prefix.
pub(super) const PREFIX_PAUSE: u8 = 0xe1;
/// The set-2 release prefix.
pub(super) const PREFIX_BREAK: u8 = 0xf0;
/// Set 1 release: make | 80h.
const SET1_BREAK: u8 = 0x80;
/// Pause in set 1 and set 2.
const PAUSE_SET1: [u8; 6] = [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5];
const PAUSE_SET2: [u8; 8] = [0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77];
/// The key buffer overflowed: 00h in set 2, FFh in set 1.
const OVERRUN_SET1: u8 = 0xff;
const OVERRUN_SET2: u8 = 0x00;

/// The longest sequence one key sends (Pause in set 2).
pub(super) const SEQUENCE_MAX: usize = PAUSE_SET2.len();

/// The bytes of one key event, at most [`SEQUENCE_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sequence {
    bytes: [u8; SEQUENCE_MAX],
    len: usize,
}

impl Sequence {
    fn new(from: &[u8]) -> Self {
        let mut bytes = [0u8; SEQUENCE_MAX];
        let len = from.len().min(SEQUENCE_MAX);
        bytes[..len].copy_from_slice(&from[..len]);
        Self { bytes, len }
    }

    /// The bytes, in sending order.
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What the keyboard sends for the set-1 code `set1` (01h-7Fh, or
/// E001h-E07Fh for an extended key) pressed or released, in scan-code set
/// `set` (1, else 2). None for any other code.
pub(super) fn key(set: u8, set1: u16, down: bool) -> Option<Sequence> {
    let [low, high] = set1.to_le_bytes();
    let extended = match high {
        0 => false,
        PREFIX_EXTENDED => true,
        _ => return None,
    };
    if !(0x01..0x80).contains(&low) {
        return None;
    }
    let mut out = [0u8; 3];
    let mut len = 0;
    if extended {
        out[len] = PREFIX_EXTENDED;
        len += 1;
    }
    if set == 1 {
        out[len] = if down { low } else { low | SET1_BREAK };
        len += 1;
    } else {
        if !down {
            out[len] = PREFIX_BREAK;
            len += 1;
        }
        out[len] = SET1_TO_SET2[usize::from(low)];
        len += 1;
    }
    Some(Sequence::new(&out[..len]))
}

/// The Pause key's sequence in scan-code set `set` (1, else 2).
pub(super) fn pause(set: u8) -> Sequence {
    if set == 1 {
        Sequence::new(&PAUSE_SET1)
    } else {
        Sequence::new(&PAUSE_SET2)
    }
}

/// The overrun code of scan-code set `set` (1, else 2).
pub(super) fn overrun(set: u8) -> u8 {
    if set == 1 {
        OVERRUN_SET1
    } else {
        OVERRUN_SET2
    }
}

/// The controller's translation of one byte (F0h handled by the caller).
pub(super) fn translate(byte: u8) -> u8 {
    match byte {
        0x00..=0x7f => TRANSLATE[usize::from(byte)],
        SET2_F7 => SET1_F7,
        SET2_SYSRQ => SET1_SYSRQ,
        _ => byte,
    }
}

/// A byte after which the rest of a key's sequence must follow at once.
pub(super) fn is_prefix(byte: u8) -> bool {
    matches!(byte, PREFIX_EXTENDED | PREFIX_PAUSE | PREFIX_BREAK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_2_translates_back_to_set_1_for_every_key() {
        for code in 0x01u16..0x80 {
            for down in [true, false] {
                let set2 = key(2, code, down).unwrap();
                let mut out = Vec::new();
                let mut brk = false;
                for &b in set2.as_slice() {
                    if b == PREFIX_BREAK {
                        brk = true;
                        continue;
                    }
                    out.push(translate(b) | if std::mem::take(&mut brk) { SET1_BREAK } else { 0 });
                }
                assert_eq!(out, key(1, code, down).unwrap().as_slice(), "code {code:#x}");
            }
        }
    }

    #[test]
    fn codes_outside_the_set_are_refused() {
        for code in [0x0000, 0x0080, 0x00ff, 0xe000, 0xe080, 0xe11d, 0x1e1e] {
            assert_eq!(key(2, code, true), None, "{code:#x}");
        }
        assert_eq!(key(2, 0xe01d, true).unwrap().as_slice(), [0xe0, 0x14]);
        assert_eq!(key(2, 0xe01d, false).unwrap().as_slice(), [0xe0, 0xf0, 0x14]);
        assert_eq!(key(2, 0x41, true).unwrap().as_slice(), [SET2_F7]);
        assert_eq!(pause(1).as_slice(), PAUSE_SET1);
    }
}
