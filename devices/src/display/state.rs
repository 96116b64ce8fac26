//! The saved state of the standard VGA, and its checks.
//!
//! The state holds the PCI header, every register and the whole VRAM. The
//! renderer's bookkeeping is not state: a restore marks the whole picture
//! changed. VBE's scanline length and start are saved as the guest left
//! them and checked against the VRAM.

use persist::{Persist, PersistError};

use super::regs::{AR_MASK, GR_MASK, SR_MASK};
use super::{vbe, Regs, StdVga};
use crate::pci::config::PciConfigState;

/// What a [`PersistError`] of the adapter names.
const PART: &str = "standard VGA";

/// The saved state of a [`StdVga`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StdVgaState {
    /// The PCI configuration space.
    pub config: PciConfigState,
    /// The VRAM, as long as the adapter's.
    pub vram: Vec<u8>,
    /// MISC output.
    pub misc: u8,
    /// Input status 0.
    pub st00: u8,
    /// Input status 1 (its toggling bits).
    pub st01: u8,
    /// Feature control.
    pub feature: u8,
    /// Sequencer index (0-7).
    pub sr_index: u8,
    /// The 8 sequencer registers.
    pub sr: Vec<u8>,
    /// Graphics controller index (0-15).
    pub gr_index: u8,
    /// The 16 graphics controller registers.
    pub gr: Vec<u8>,
    /// Attribute controller index with the palette address source (0-0x3f).
    pub ar_index: u8,
    /// The 21 attribute controller registers.
    pub ar: Vec<u8>,
    /// The attribute flip-flop: the next write to 0x3c0 is data.
    pub ar_flip: bool,
    /// CRTC index.
    pub cr_index: u8,
    /// The 256 CRTC registers.
    pub cr: Vec<u8>,
    /// The four latches (plane 0 in the low byte).
    pub latch: u32,
    /// DAC state (0x3c7 reads): 0 after a write index, 3 after a read index.
    pub dac_state: u8,
    /// DAC read index.
    pub dac_read_index: u8,
    /// DAC write index.
    pub dac_write_index: u8,
    /// The component (0-2) the next DAC data access reaches.
    pub dac_sub_index: u8,
    /// The components written of the entry under way.
    pub dac_cache: [u8; 3],
    /// The 256 DAC entries, red, green and blue each.
    pub palette: Vec<u8>,
    /// DAC pel mask.
    pub pel_mask: u8,
    /// Bochs VBE index.
    pub vbe_index: u16,
    /// The 10 Bochs VBE registers.
    pub vbe_regs: Vec<u16>,
    /// Byte offset of the VBE picture in VRAM.
    pub vbe_start: u32,
    /// Bytes per VBE scanline.
    pub vbe_line_offset: u32,
}

/// Restore checks the PCI header, every length, the indices and the VBE
/// values against what the registers can hold, then takes the whole state.
impl Persist for StdVga {
    type State = StdVgaState;

    fn save(&self) -> StdVgaState {
        let r = &self.r;
        StdVgaState {
            config: self.config.save(),
            vram: self.shared.to_vec(),
            misc: r.misc,
            st00: r.st00,
            st01: r.st01,
            feature: r.feature,
            sr_index: r.sr_index,
            sr: r.sr.to_vec(),
            gr_index: r.gr_index,
            gr: r.gr.to_vec(),
            ar_index: r.ar_index,
            ar: r.ar.to_vec(),
            ar_flip: r.ar_flip,
            cr_index: r.cr_index,
            cr: r.cr.to_vec(),
            latch: r.latch,
            dac_state: r.dac_state,
            dac_read_index: r.dac_read_index,
            dac_write_index: r.dac_write_index,
            dac_sub_index: r.dac_sub_index,
            dac_cache: r.dac_cache,
            palette: r.palette.to_vec(),
            pel_mask: r.pel_mask,
            vbe_index: r.vbe_index,
            vbe_regs: r.vbe_regs.to_vec(),
            vbe_start: r.vbe_start,
            vbe_line_offset: r.vbe_line_offset,
        }
    }

    fn restore(&mut self, s: &StdVgaState) -> Result<(), PersistError> {
        self.config.check_state(&s.config)?;
        PersistError::check_len(PART, "vram", s.vram.len(), self.shared.len() as usize)?;
        PersistError::check_len(PART, "sr", s.sr.len(), 8)?;
        PersistError::check_len(PART, "gr", s.gr.len(), 16)?;
        PersistError::check_len(PART, "ar", s.ar.len(), 21)?;
        PersistError::check_len(PART, "cr", s.cr.len(), 256)?;
        PersistError::check_len(PART, "palette", s.palette.len(), 768)?;
        PersistError::check_len(PART, "vbe_regs", s.vbe_regs.len(), vbe::NB)?;
        PersistError::check_max(PART, "sr_index", s.sr_index, 7)?;
        PersistError::check_max(PART, "gr_index", s.gr_index, 15)?;
        PersistError::check_max(PART, "ar_index", s.ar_index, 0x3f)?;
        PersistError::check_max(PART, "dac_sub_index", s.dac_sub_index, 2)?;
        PersistError::check(s.dac_state == 0 || s.dac_state == 3, PART, "dac_state", || {
            format!("is {}, neither 0 nor 3", s.dac_state)
        })?;
        for (field, regs, masks) in
            [("sr", &s.sr, &SR_MASK[..]), ("gr", &s.gr, &GR_MASK[..]), ("ar", &s.ar, &AR_MASK[..])]
        {
            if let Some(i) = regs.iter().zip(masks).position(|(&v, &m)| v & !m != 0) {
                return Err(PersistError::new(
                    PART,
                    field,
                    format!("register {i:#x} is {:#04x}, with bits that do not exist ({:#04x})", regs[i], masks[i]),
                ));
            }
        }
        let id = s.vbe_regs[vbe::ID];
        PersistError::check((vbe::ID0..=vbe::ID5).contains(&id), PART, "vbe_regs", || {
            format!("hold the ID {id:#06x}, not one of 0xb0c0-0xb0c5")
        })?;
        let banks = self.shared.len() >> 16;
        let bank = u64::from(s.vbe_regs[vbe::BANK]);
        PersistError::check(bank < banks, PART, "vbe_regs", || {
            format!("hold bank {bank}, past the {banks} banks of the VRAM")
        })?;
        PersistError::check_max(PART, "vbe_start", s.vbe_start as usize, self.shared.len() as usize)?;
        PersistError::check_max(PART, "vbe_line_offset", s.vbe_line_offset, u32::from(vbe::MAX_XRES) * 4)?;

        self.config.load_state(&s.config);
        self.shared.write(0, &s.vram);
        self.vram.copy_from_slice(&s.vram);
        let mut r = Regs::power_on();
        r.misc = s.misc;
        r.st00 = s.st00;
        r.st01 = s.st01;
        r.feature = s.feature;
        r.sr_index = s.sr_index;
        r.sr.copy_from_slice(&s.sr);
        r.gr_index = s.gr_index;
        r.gr.copy_from_slice(&s.gr);
        r.ar_index = s.ar_index;
        r.ar.copy_from_slice(&s.ar);
        r.ar_flip = s.ar_flip;
        r.cr_index = s.cr_index;
        r.cr.copy_from_slice(&s.cr);
        r.latch = s.latch;
        r.dac_state = s.dac_state;
        r.dac_read_index = s.dac_read_index;
        r.dac_write_index = s.dac_write_index;
        r.dac_sub_index = s.dac_sub_index;
        r.dac_cache = s.dac_cache;
        r.palette.copy_from_slice(&s.palette);
        r.pel_mask = s.pel_mask;
        r.vbe_index = s.vbe_index;
        r.vbe_regs.copy_from_slice(&s.vbe_regs);
        r.vbe_start = s.vbe_start;
        r.vbe_line_offset = s.vbe_line_offset;
        r.bank_offset = u32::from(s.vbe_regs[vbe::BANK]) << 16;
        self.r = r;
        self.mark_all_dirty();
        Ok(())
    }
}
