//! X11 keysyms (as sent in RFB KeyEvents) to PC scancode set 1.

/// The make sequence of Pause (it has no break sequence); [`keysym_to_set1`] returns `None`
/// for `XK_Pause` (0xff13) so that callers send these bytes on key down and nothing on key up.
pub const PAUSE_SET1: [u8; 6] = [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5];

/// The keysym of Pause.
pub const XK_PAUSE: u32 = 0xff13;

/// Maps an X11 keysym to the set 1 make code of the US-layout key that produces it.
/// Extended keys are returned as `0xE0xx`; the break code is the make code with bit 7 set
/// (on the low byte). Shifted characters map to the same key as their unshifted form (the
/// client sends Shift itself). Returns `None` for keysyms with no key (and for Pause, see
/// [`PAUSE_SET1`]).
pub fn keysym_to_set1(keysym: u32) -> Option<u16> {
    let code: u16 = match keysym {
        // Letters, either case.
        0x61..=0x7a | 0x41..=0x5a => {
            const LETTERS: [u16; 26] = [
                0x1e, 0x30, 0x2e, 0x20, 0x12, 0x21, 0x22, 0x23, 0x17, 0x24, 0x25, 0x26, 0x32, 0x31, 0x18, 0x19, 0x10,
                0x13, 0x1f, 0x14, 0x16, 0x2f, 0x11, 0x2d, 0x15, 0x2c,
            ];
            LETTERS[((keysym | 0x20) - 0x61) as usize]
        }
        0x31..=0x39 => (keysym - 0x31 + 0x02) as u16,       // 1-9
        0x30 => 0x0b,                                       // 0
        0x21 => 0x02,                                       // !
        0x40 => 0x03,                                       // @
        0x23 => 0x04,                                       // #
        0x24 => 0x05,                                       // $
        0x25 => 0x06,                                       // %
        0x5e => 0x07,                                       // ^
        0x26 => 0x08,                                       // &
        0x2a => 0x09,                                       // *
        0x28 => 0x0a,                                       // (
        0x29 => 0x0b,                                       // )
        0x2d | 0x5f => 0x0c,                                // - _
        0x3d | 0x2b => 0x0d,                                // = +
        0x5b | 0x7b => 0x1a,                                // [ {
        0x5d | 0x7d => 0x1b,                                // ] }
        0x3b | 0x3a => 0x27,                                // ; :
        0x27 | 0x22 => 0x28,                                // ' "
        0x60 | 0x7e => 0x29,                                // ` ~
        0x5c | 0x7c => 0x2b,                                // \ |
        0x2c | 0x3c => 0x33,                                // , <
        0x2e | 0x3e => 0x34,                                // . >
        0x2f | 0x3f => 0x35,                                // / ?
        0x20 => 0x39,                                       // space
        0xff1b => 0x01,                                     // Escape
        0xff08 => 0x0e,                                     // BackSpace
        0xff09 | 0xfe20 => 0x0f,                            // Tab, ISO_Left_Tab
        0xff0d => 0x1c,                                     // Return
        0xffe3 => 0x1d,                                     // Control_L
        0xffe1 => 0x2a,                                     // Shift_L
        0xffe2 => 0x36,                                     // Shift_R
        0xffe9 | 0xffe7 => 0x38,                            // Alt_L, Meta_L
        0xffe5 => 0x3a,                                     // Caps_Lock
        0xffbe..=0xffc7 => (keysym - 0xffbe + 0x3b) as u16, // F1-F10
        0xffc8 => 0x57,                                     // F11
        0xffc9 => 0x58,                                     // F12
        0xff7f => 0x45,                                     // Num_Lock
        0xff14 => 0x46,                                     // Scroll_Lock
        0xffaa => 0x37,                                     // KP_Multiply
        0xffad => 0x4a,                                     // KP_Subtract
        0xffab => 0x4e,                                     // KP_Add
        0xffae | 0xffac | 0xff9f => 0x53,                   // KP_Decimal, KP_Separator, KP_Delete
        0xffb7 | 0xff95 => 0x47,                            // KP_7, KP_Home
        0xffb8 | 0xff97 => 0x48,                            // KP_8, KP_Up
        0xffb9 | 0xff9a => 0x49,                            // KP_9, KP_Prior
        0xffb4 | 0xff96 => 0x4b,                            // KP_4, KP_Left
        0xffb5 | 0xff9d => 0x4c,                            // KP_5, KP_Begin
        0xffb6 | 0xff98 => 0x4d,                            // KP_6, KP_Right
        0xffb1 | 0xff9c => 0x4f,                            // KP_1, KP_End
        0xffb2 | 0xff99 => 0x50,                            // KP_2, KP_Down
        0xffb3 | 0xff9b => 0x51,                            // KP_3, KP_Next
        0xffb0 | 0xff9e => 0x52,                            // KP_0, KP_Insert
        0xff8d => 0xe01c,                                   // KP_Enter
        0xffe4 => 0xe01d,                                   // Control_R
        0xffaf => 0xe035,                                   // KP_Divide
        0xff61 | 0xff15 => 0xe037,                          // Print, Sys_Req
        0xffea | 0xfe03 | 0xffe8 => 0xe038,                 // Alt_R, ISO_Level3_Shift (AltGr), Meta_R
        0xff50 => 0xe047,                                   // Home
        0xff52 => 0xe048,                                   // Up
        0xff55 => 0xe049,                                   // Prior (Page Up)
        0xff51 => 0xe04b,                                   // Left
        0xff53 => 0xe04d,                                   // Right
        0xff57 => 0xe04f,                                   // End
        0xff54 => 0xe050,                                   // Down
        0xff56 => 0xe051,                                   // Next (Page Down)
        0xff63 => 0xe052,                                   // Insert
        0xffff => 0xe053,                                   // Delete
        0xffeb => 0xe05b,                                   // Super_L
        0xffec => 0xe05c,                                   // Super_R
        0xff67 => 0xe05d,                                   // Menu
        _ => return None,
    };
    Some(code)
}
