//! BIOS shadowing: the i440FX's Programmable Attribute Map (PAM0-6,
//! configuration registers 59h-5Fh) switches each segment of
//! 0xC0000-0xFFFFF between the ROM (the BIOS image's last 128 KiB, seen
//! again below 1 MiB) and the RAM underneath.
//!
//! Datasheet: Intel 82441FX PMC, 3.2.18 "PAM - Programmable Attribute Map
//! Registers". Each register holds two 4-bit fields, one per segment; in
//! each, bit 0 is RE (reads go to DRAM) and bit 1 WE (writes go to DRAM):
//!
//! ```text
//! register  bits 3:0 (low field)    bits 7:4 (high field)
//! PAM0 59h  reserved                0xF0000-0xFFFFF (64 KiB)
//! PAM1 5Ah  0xC0000-0xC3FFF         0xC4000-0xC7FFF
//! PAM2 5Bh  0xC8000-0xCBFFF         0xCC000-0xCFFFF
//! PAM3 5Ch  0xD0000-0xD3FFF         0xD4000-0xD7FFF
//! PAM4 5Dh  0xD8000-0xDBFFF         0xDC000-0xDFFFF
//! PAM5 5Eh  0xE0000-0xE3FFF         0xE4000-0xE7FFF
//! PAM6 5Fh  0xE8000-0xEBFFF         0xEC000-0xEFFFF
//!
//! RE WE  reads from   writes to
//!  0  0  ROM          nowhere (the PCI bus: dropped)
//!  1  0  RAM          nowhere (write-protected shadow)
//!  1  1  RAM          RAM
//!  0  1  ROM          RAM (not modelled: the writes are dropped, logged once)
//! ```
//!
//! SeaBIOS (src/fw/shadow.c) runs from the ROM at reset, sets every field
//! to 11b, copies itself from the top of 4 GiB into the RAM, and at the end
//! of POST sets 01b on 0xF0000 and on the option-ROM segments it used.
//!
//! The model keeps one copy of guest RAM: the low RAM region holds what
//! the guest currently reads in each segment, and the model keeps the other
//! (the hidden RAM of a segment in ROM mode; the ROM's bytes never change).
//! A switch of a segment's read source swaps the two through
//! [`GuestMemory::load`], whose code-page tracking drops decoded and
//! translated code of the pages; the write protection is
//! [`GuestMemory::set_shadow_read_only`]. What ROM mode shows at
//! 0xC0000-0xDFFFF, where a PC has option ROMs on the bus, is zeroes.
//!
//! Saved state ([`BiosShadowState`]): each segment's field and the hidden
//! RAM of the segments that read from ROM. What the guest reads now in
//! each segment is guest RAM, which the machine saves and restores with
//! the rest of it; the ROM is the BIOS image, which the machine loads
//! again. A restore sets the write protection and keeps the hidden copies;
//! it writes no guest memory.

use std::sync::Arc;

use mmu::{GuestMemory, MemError};
use persist::{Persist, PersistError};

/// The first PAM register.
pub const PAM0: usize = 0x59;
/// PAM0-PAM6.
pub const PAM_COUNT: usize = 7;
/// Start of the shadowed area.
pub const SHADOW_START: u64 = 0xc_0000;
/// Bytes of the BIOS image seen below 1 MiB, at 0xE0000-0xFFFFF.
pub const BIOS_ALIAS_LEN: usize = 0x2_0000;
/// Where the BIOS alias begins.
const BIOS_ALIAS_START: u64 = 0x10_0000 - BIOS_ALIAS_LEN as u64;
/// RE: reads go to DRAM.
const PAM_RE: u8 = 0b01;
/// WE: writes go to DRAM.
const PAM_WE: u8 = 0b10;
/// The segments: twelve of 16 KiB from 0xC0000, then 0xF0000-0xFFFFF.
const SEGMENTS: usize = 13;

/// A segment: its range, and where its field is.
#[derive(Debug, Clone, Copy)]
struct Segment {
    base: u64,
    len: u64,
    /// Index into PAM0-6.
    reg: usize,
    /// 0 for bits 3:0, 4 for bits 7:4.
    shift: u8,
}

fn segment(i: usize) -> Segment {
    if i == SEGMENTS - 1 {
        return Segment { base: 0xf_0000, len: 0x1_0000, reg: 0, shift: 4 };
    }
    Segment {
        base: SHADOW_START + i as u64 * 0x4000,
        len: 0x4000,
        reg: 1 + i / 2,
        shift: if i.is_multiple_of(2) { 0 } else { 4 },
    }
}

/// The shadowed area below 1 MiB under the PAM registers.
pub struct BiosShadow {
    mem: Arc<GuestMemory>,
    /// What ROM mode reads at 0xC0000-0xFFFFF.
    rom: Vec<u8>,
    /// The RAM of each segment while the segment reads from ROM.
    hidden: Vec<Vec<u8>>,
    /// Each segment's field as applied.
    fields: [u8; SEGMENTS],
    write_only_logged: bool,
}

impl std::fmt::Debug for BiosShadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BiosShadow").field("fields", &self.fields).finish_non_exhaustive()
    }
}

impl BiosShadow {
    /// The area at power-on (every field 0: reads from ROM, writes
    /// dropped), with the last 128 KiB of `bios` (the image mapped to end
    /// at 4 GiB) at 0xE0000-0xFFFFF. The RAM below starts as zeroes.
    pub fn new(mem: Arc<GuestMemory>, bios: &[u8]) -> Result<Self, MemError> {
        let mut rom = vec![0u8; (0x10_0000 - SHADOW_START) as usize];
        let tail = &bios[bios.len().saturating_sub(BIOS_ALIAS_LEN)..];
        let at = rom.len() - tail.len();
        rom[at..].copy_from_slice(tail);
        let hidden = (0..SEGMENTS).map(|i| vec![0u8; segment(i).len as usize]).collect();
        let s = BiosShadow { mem, rom, hidden, fields: [0; SEGMENTS], write_only_logged: false };
        s.mem.load(SHADOW_START, &s.rom)?;
        s.mem.set_shadow_read_only(SHADOW_START, 0x10_0000 - SHADOW_START, true);
        debug_assert_eq!(BIOS_ALIAS_START, 0xe_0000);
        Ok(s)
    }

    /// The ROM's bytes for `seg`.
    fn rom_of(&self, seg: Segment) -> &[u8] {
        let at = (seg.base - SHADOW_START) as usize;
        &self.rom[at..at + seg.len as usize]
    }

    /// Apply PAM0-PAM6 as they now read.
    pub fn apply(&mut self, pam: &[u8; PAM_COUNT]) {
        for i in 0..SEGMENTS {
            let seg = segment(i);
            let new = (pam[seg.reg] >> seg.shift) & (PAM_RE | PAM_WE);
            let old = self.fields[i];
            if new == old {
                continue;
            }
            let (was_ram, is_ram) = (old & PAM_RE != 0, new & PAM_RE != 0);
            // Swap what the guest reads. The accesses stay inside low RAM,
            // which covers the first megabyte of every machine.
            if was_ram && !is_ram {
                let _ = self.mem.read(seg.base, &mut self.hidden[i]);
                let _ = self.mem.load(seg.base, self.rom_of(seg));
            } else if !was_ram && is_ram {
                let _ = self.mem.load(seg.base, &self.hidden[i]);
                self.hidden[i].fill(0);
            }
            if new == PAM_WE && !self.write_only_logged {
                self.write_only_logged = true;
                tracing::info!(
                    target: "devices",
                    "i440FX PAM: write-only mode (reads ROM, writes RAM) at {:#x} is not modelled; writes there are \
                     dropped (logged once)",
                    seg.base
                );
            }
            self.mem.set_shadow_read_only(seg.base, seg.len, new != PAM_RE | PAM_WE);
            self.fields[i] = new;
        }
    }
}

/// The saved state of the shadowed area.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BiosShadowState {
    /// Each segment's RE and WE bits, from 0xC0000 up (thirteen: twelve of
    /// 16 KiB and 0xF0000-0xFFFFF).
    pub fields: Vec<u8>,
    /// Each segment's hidden RAM: its bytes while the segment reads from
    /// ROM, empty while it reads from RAM.
    pub hidden: Vec<Vec<u8>>,
}

/// The part name the shadow's errors carry.
const PART: &str = "BIOS shadow (PAM)";

impl BiosShadow {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &BiosShadowState) -> Result<(), PersistError> {
        PersistError::check_len(PART, "fields", state.fields.len(), SEGMENTS)?;
        PersistError::check_len(PART, "hidden", state.hidden.len(), SEGMENTS)?;
        for (i, (&field, hidden)) in state.fields.iter().zip(&state.hidden).enumerate() {
            PersistError::check_max(PART, "fields", field, PAM_RE | PAM_WE)?;
            let want = if field & PAM_RE == 0 { segment(i).len as usize } else { 0 };
            PersistError::check(hidden.len() == want, PART, "hidden", || {
                format!("of segment {:#x} holds {} bytes, not {want}", segment(i).base, hidden.len())
            })?;
        }
        Ok(())
    }

    /// Loads a state [`BiosShadow::check_state`] passed: the fields, the
    /// hidden copies and the write protection.
    pub(crate) fn load_state(&mut self, state: &BiosShadowState) {
        for i in 0..SEGMENTS {
            let seg = segment(i);
            let field = state.fields[i];
            self.fields[i] = field;
            if field & PAM_RE == 0 {
                self.hidden[i].copy_from_slice(&state.hidden[i]);
            } else {
                self.hidden[i].fill(0);
            }
            self.mem.set_shadow_read_only(seg.base, seg.len, field != PAM_RE | PAM_WE);
        }
    }
}

/// Restore checks the number of segments, each field (two bits) and each
/// hidden copy's size against its segment and mode.
impl Persist for BiosShadow {
    type State = BiosShadowState;

    fn save(&self) -> BiosShadowState {
        BiosShadowState {
            fields: self.fields.to_vec(),
            hidden: self
                .fields
                .iter()
                .zip(&self.hidden)
                .map(|(&field, hidden)| if field & PAM_RE == 0 { hidden.clone() } else { Vec::new() })
                .collect(),
        }
    }

    fn restore(&mut self, state: &BiosShadowState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bios() -> Vec<u8> {
        // 256 KiB: the last 128 KiB are 0xa5 but for a marker at the end.
        let mut b = vec![0x11u8; 0x4_0000];
        b[0x2_0000..].fill(0xa5);
        b[0x3_fff0] = 0xea;
        b
    }

    fn shadow() -> (BiosShadow, Arc<GuestMemory>) {
        let mem = Arc::new(GuestMemory::new(2 << 20).unwrap());
        (BiosShadow::new(mem.clone(), &bios()).unwrap(), mem)
    }

    #[test]
    fn power_on_reads_the_bios_alias_and_drops_writes() {
        let (_s, mem) = shadow();
        assert_eq!(mem.read_u8(0xf_fff0).unwrap(), 0xea, "the reset vector's copy below 1 MiB");
        assert_eq!(mem.read_u8(0xe_0000).unwrap(), 0xa5);
        assert_eq!(mem.read_u8(0xc_0000).unwrap(), 0, "no option ROM");
        assert!(mem.write_u8(0xf_0000, 0).is_err());
        assert!(mem.write_u8(0xc_0000, 1).is_err());
        mem.write_u8(0xb_ffff, 1).unwrap();
    }

    #[test]
    fn seabios_shadowing_sequence() {
        let (mut s, mem) = shadow();
        // make_bios_writable: every field 11b; the RAM shows (zeroes).
        s.apply(&[0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]);
        assert_eq!(mem.read_u8(0xf_fff0).unwrap(), 0);
        // ... copies the BIOS in, and uses the RAM.
        mem.write(0xe_0000, &vec![0xa5; 0x2_0000]).unwrap();
        mem.write_u8(0xc_1000, 7).unwrap();
        // make_bios_readonly: 0xF0000 and the first option-ROM segment 01b.
        s.apply(&[0x10, 0x31, 0x33, 0x33, 0x33, 0x33, 0x33]);
        assert!(mem.write_u8(0xf_0000, 0).is_err(), "write-protected");
        assert!(mem.write_u8(0xc_0000, 0).is_err());
        mem.write_u8(0xc_4000, 0).unwrap();
        assert_eq!(mem.read_u8(0xf_0000).unwrap(), 0xa5);
        assert_eq!(mem.read_u8(0xc_1000).unwrap(), 7);
        // A reset: back to the ROM; the RAM is kept under it.
        s.apply(&[0; PAM_COUNT]);
        assert_eq!(mem.read_u8(0xc_1000).unwrap(), 0);
        assert!(mem.write_u8(0xc_4000, 0).is_err());
        s.apply(&[0x30, 0x33, 0, 0, 0, 0, 0]);
        assert_eq!(mem.read_u8(0xc_1000).unwrap(), 7, "the hidden RAM comes back");
        assert_eq!(mem.read_u8(0xf_0000).unwrap(), 0xa5);
    }

    #[test]
    fn a_switch_drops_cached_code_of_the_pages() {
        let (mut s, mem) = shadow();
        let watch = mem.code_watch();
        mem.mark_code_page(0xf_e000);
        watch.take();
        s.apply(&[0x30, 0, 0, 0, 0, 0, 0]);
        assert!(watch.pending());
        assert!(watch.take().written.contains(&0xf_e000));
    }

    #[test]
    fn write_only_mode_reads_rom_and_drops_writes() {
        let (mut s, mem) = shadow();
        s.apply(&[0x20, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mem.read_u8(0xf_fff0).unwrap(), 0xea);
        assert!(mem.write_u8(0xf_0000, 0).is_err());
    }

    /// SeaBIOS's sequence half done, then a reset: every segment but two
    /// back in ROM mode with RAM hidden under it, 0xC4000 write-protected
    /// RAM, 0xC8000 RAM.
    fn configured() -> (BiosShadow, Arc<GuestMemory>) {
        let (mut s, mem) = shadow();
        s.apply(&[0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]);
        mem.write(0xe_0000, &vec![0xa5; 0x2_0000]).unwrap();
        mem.write_u8(0xc_1000, 7).unwrap();
        mem.write_u8(0xc_4000, 8).unwrap();
        mem.write_u8(0xc_8000, 9).unwrap();
        s.apply(&[0, 0x10, 0x03, 0, 0, 0, 0]);
        (s, mem)
    }

    #[test]
    fn the_persisted_shadow_round_trips_and_switches_alike() {
        let (mut s, mem) = configured();
        // The new machine: its RAM restored (the machine's job), the ROM loaded.
        let (mut fresh, fresh_mem) = shadow();
        let mut ram = vec![0u8; 0x4_0000];
        mem.read(SHADOW_START, &mut ram).unwrap();
        fresh_mem.load(SHADOW_START, &ram).unwrap();
        let state = persist::assert_round_trip(&s, &mut fresh);
        assert_eq!(state.fields[1], PAM_RE, "0xC4000 reads RAM, write-protected");
        assert!(state.hidden[1].is_empty() && state.hidden[2].is_empty());
        assert_eq!(state.hidden[0][0x1000], 7, "0xC1000's RAM is hidden under the ROM");
        assert_eq!(state.hidden[12].len(), 0x1_0000);
        // Protection as the fields say.
        assert!(fresh_mem.write_u8(0xc_4000, 0).is_err());
        fresh_mem.write_u8(0xc_8000, 10).unwrap();
        mem.write_u8(0xc_8000, 10).unwrap();
        assert!(fresh_mem.write_u8(0xf_0000, 0).is_err());
        assert_eq!(fresh_mem.read_u8(0xf_fff0).unwrap(), 0xea, "the ROM, as the RAM image had it");
        // Switching every segment to RAM shows the same hidden bytes on both.
        for (x, m) in [(&mut s, &mem), (&mut fresh, &fresh_mem)] {
            x.apply(&[0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]);
            assert_eq!(m.read_u8(0xc_1000).unwrap(), 7);
            assert_eq!(m.read_u8(0xf_0000).unwrap(), 0xa5);
        }
        let (mut a, mut b) = (vec![0u8; 0x4_0000], vec![0u8; 0x4_0000]);
        mem.read(SHADOW_START, &mut a).unwrap();
        fresh_mem.read(SHADOW_START, &mut b).unwrap();
        assert!(a == b, "the shadowed area reads the same");
    }

    /// A corruption of a state, and the field whose check must refuse it.
    type Corruption<S> = (&'static str, fn(&mut S));

    #[test]
    fn corrupt_states_are_refused_field_by_field() {
        let (mut s, mem) = configured();
        let good = s.save();
        let cases: [Corruption<BiosShadowState>; 6] = [
            ("fields", |b| b.fields.truncate(12)),
            ("hidden", |b| b.hidden.push(Vec::new())),
            ("fields", |b| b.fields[3] = 4),
            ("hidden", |b| b.hidden[0].truncate(10)),
            ("hidden", |b| b.hidden[1] = vec![0; 0x4000]),
            ("hidden", |b| b.fields[12] = PAM_RE), // RAM mode with a hidden copy
        ];
        for (field, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let e = persist::assert_refused(&mut s, &bad);
            assert_eq!(e.field, field, "{e}");
        }
        assert!(mem.write_u8(0xc_4000, 0).is_err(), "the protection is as it was");
        mem.write_u8(0xc_8000, 1).unwrap();
    }
}
