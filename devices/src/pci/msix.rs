//! MSI-X: the capability, the vector table and the pending bit array of one
//! PCI function.
//!
//! Reference: PCI Local Bus Specification 3.0, 6.8.2 "MSI-X Capability and
//! Table Structures" and 6.8.3.5 "Per-vector Masking and Function Masking".
//!
//! ```text
//! capability (12 bytes)
//!   +0 u8 ID 11h | +1 u8 next | +2 le16 Message Control: 15 MSI-X enable, 14 function mask,
//!                                                         10:0 table size - 1 (read-only)
//!   +4 le32 table offset (31:3) | BIR (2:0)    +8 le32 PBA offset (31:3) | BIR (2:0)
//!
//! table entry n at 16 * n                       PBA: bit n of qword n / 64, read-only
//!   +0 le32 message address (1:0 read as 0)     +4 le32 message upper address
//!   +8 le32 message data                        +12 le32 vector control: bit 0 mask (reset 1)
//! ```
//!
//! A vector the function signals while it or the function is masked sets
//! its pending bit instead; unmasking sends the message then and clears the
//! bit. While MSI-X is disabled the function uses INTx, which the caller
//! drives ([`Msix::notify`] says whether the message path took the event).
//!
//! The table and the PBA share one memory BAR: the table at offset 0 and
//! the PBA at [`PBA_OFFSET`], as QEMU lays out its virtio functions. Any
//! access size is accepted byte by byte; the specification asks drivers for
//! aligned dwords and qwords.

use std::sync::Arc;

use persist::{Persist, PersistError};

use super::config::PciConfigSpace;
use crate::intc::msi::{MsiMessage, MsiSink};

/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Length of the capability in configuration space.
pub const MSIX_CAP_LEN: usize = 12;
/// Size of the BAR holding the table and the PBA.
pub const MSIX_BAR_SIZE: u64 = 0x1000;
/// Offset of the PBA in that BAR.
pub const PBA_OFFSET: u64 = 0x800;
/// The most vectors a function here may have (the table fills the BAR's first half).
pub const MAX_VECTORS: u16 = (PBA_OFFSET / ENTRY_LEN as u64) as u16;

const ENTRY_LEN: usize = 16;
/// Offset of the vector control dword in a table entry.
const VECTOR_CONTROL: usize = 12;
const CONTROL: usize = 2;
const TABLE: usize = 4;
const PBA: usize = 8;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_CONTROL_MASK: u8 = 1;
/// Per entry byte: which bits the guest may write (address 1:0 are zero,
/// vector control has one bit).
const ENTRY_WRITABLE: [u8; ENTRY_LEN] =
    [0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0];

/// The MSI-X table and PBA, for save and restore. Whether MSI-X is enabled
/// and the function mask are in configuration space, which the function
/// saves with its own state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MsixState {
    /// The table, 16 bytes per vector.
    pub table: Vec<u8>,
    /// Pending bits, bit n of word n / 64 for vector n.
    pub pending: Vec<u64>,
}

/// The MSI-X structures of one function.
pub struct Msix {
    cap: usize,
    table: Vec<u8>,
    pending: Vec<u64>,
    sink: Arc<dyn MsiSink>,
    warned: bool,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix").field("cap", &self.cap).field("vectors", &self.vectors()).finish_non_exhaustive()
    }
}

impl Msix {
    /// Writes an MSI-X capability for `vectors` vectors (1 to
    /// [`MAX_VECTORS`]; others are clamped) at `cap` in `config`, with the
    /// table and PBA in BAR `bar`, which the caller defines with
    /// [`MSIX_BAR_SIZE`] bytes of memory space. The caller links the
    /// capability into the list. Every vector starts masked and MSI-X off.
    pub fn new(config: &mut PciConfigSpace, cap: usize, bar: u8, vectors: u16, sink: Arc<dyn MsiSink>) -> Self {
        let n = vectors.clamp(1, MAX_VECTORS);
        config.set_bytes(cap, &[CAP_ID_MSIX, 0]);
        config.set_u16(cap + CONTROL, n - 1);
        config.set_writable(cap + CONTROL, &[0, (CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes()[1]]);
        config.set_u32(cap + TABLE, u32::from(bar & 7));
        config.set_u32(cap + PBA, PBA_OFFSET as u32 | u32::from(bar & 7));
        let mut table = vec![0u8; usize::from(n) * ENTRY_LEN];
        for entry in table.chunks_exact_mut(ENTRY_LEN) {
            entry[VECTOR_CONTROL] = VECTOR_CONTROL_MASK;
        }
        Self { cap, table, pending: vec![0; usize::from(n).div_ceil(64)], sink, warned: false }
    }

    /// Number of vectors in the table.
    pub fn vectors(&self) -> u16 {
        (self.table.len() / ENTRY_LEN) as u16
    }

    fn control(&self, config: &PciConfigSpace) -> u16 {
        config.u16_at(self.cap + CONTROL)
    }

    /// Whether the driver enabled MSI-X (and so disabled INTx).
    pub fn enabled(&self, config: &PciConfigSpace) -> bool {
        self.control(config) & CONTROL_ENABLE != 0
    }

    fn entry(&self, vector: u16) -> &[u8] {
        let at = usize::from(vector) * ENTRY_LEN;
        &self.table[at..at + ENTRY_LEN]
    }

    fn masked(&self, config: &PciConfigSpace, vector: u16) -> bool {
        self.control(config) & CONTROL_FUNCTION_MASK != 0
            || self.entry(vector)[VECTOR_CONTROL] & VECTOR_CONTROL_MASK != 0
    }

    fn is_pending(&self, vector: u16) -> bool {
        self.pending[usize::from(vector) / 64] & (1 << (vector % 64)) != 0
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let word = &mut self.pending[usize::from(vector) / 64];
        if on {
            *word |= 1 << (vector % 64);
        } else {
            *word &= !(1 << (vector % 64));
        }
    }

    fn message(&self, vector: u16) -> MsiMessage {
        let e = self.entry(vector);
        let dword = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        MsiMessage { address: u64::from(dword(0)) | (u64::from(dword(4)) << 32), data: dword(8) }
    }

    /// The function signals `vector`. Returns false when MSI-X is disabled,
    /// so the caller falls back to INTx; a vector past the table is taken
    /// and dropped (the driver asked for no interrupt there).
    pub fn notify(&mut self, config: &PciConfigSpace, vector: u16) -> bool {
        if !self.enabled(config) {
            return false;
        }
        if vector >= self.vectors() {
            return true;
        }
        if self.masked(config, vector) {
            self.set_pending(vector, true);
        } else {
            self.sink.send(self.message(vector));
        }
        true
    }

    /// Sends the pending vectors that are no longer masked.
    fn flush(&mut self, config: &PciConfigSpace) {
        if !self.enabled(config) {
            return;
        }
        for v in 0..self.vectors() {
            if self.is_pending(v) && !self.masked(config, v) {
                self.set_pending(v, false);
                self.sink.send(self.message(v));
            }
        }
    }

    /// The driver wrote configuration space from `offset`: call after the
    /// write lands, so that clearing the function mask or setting the enable
    /// bit sends what is pending.
    pub fn config_written(&mut self, config: &PciConfigSpace, offset: usize, len: usize) {
        let control = self.cap + CONTROL;
        if offset < control + 2 && control < offset + len {
            self.flush(config);
        }
    }

    /// A guest read of the MSI-X BAR.
    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if at < PBA_OFFSET {
                self.table.get(at as usize).copied().unwrap_or(0)
            } else {
                let byte = at - PBA_OFFSET;
                let word = self.pending.get((byte / 8) as usize).copied().unwrap_or(0);
                (word >> ((byte % 8) * 8)) as u8
            };
        }
    }

    /// A guest write of the MSI-X BAR: table entries change, an entry that
    /// becomes unmasked sends its pending message. The PBA is read-only.
    pub fn bar_write(&mut self, config: &PciConfigSpace, offset: u64, data: &[u8]) {
        let mut touched = false;
        for (i, &v) in data.iter().enumerate() {
            let at = offset + i as u64;
            match self.table.get_mut(at as usize).filter(|_| at < PBA_OFFSET) {
                Some(slot) => {
                    let mask = ENTRY_WRITABLE[at as usize % ENTRY_LEN];
                    *slot = (*slot & !mask) | (v & mask);
                    touched = true;
                }
                None if !self.warned => {
                    self.warned = true;
                    tracing::warn!(
                        target: "devices",
                        offset = at,
                        "MSI-X: a write to the pending bit array or past the table; ignored (logged once)"
                    );
                }
                None => {}
            }
        }
        if touched {
            self.flush(config);
        }
    }

    /// Checks `s` before [`Persist::restore`] takes it: a table of this
    /// function's vector count, pending bits of that many vectors, and no
    /// table bit a guest cannot write.
    pub(crate) fn check(&self, s: &MsixState) -> Result<(), PersistError> {
        let vectors = usize::from(self.vectors());
        PersistError::check(s.table.len() == self.table.len(), PART, "table", || {
            format!("has {} bytes, not the {} of this function's {vectors} vectors", s.table.len(), self.table.len())
        })?;
        PersistError::check_len(PART, "pending", s.pending.len(), self.pending.len())?;
        if let Some((at, b)) = s.table.iter().enumerate().find(|&(at, &b)| b & !ENTRY_WRITABLE[at % ENTRY_LEN] != 0) {
            return Err(PersistError::new(
                PART,
                "table",
                format!("entry {} byte {} is {b:#04x}, with bits no guest can set", at / ENTRY_LEN, at % ENTRY_LEN),
            ));
        }
        for (w, &word) in s.pending.iter().enumerate() {
            let valid = vectors.saturating_sub(64 * w).min(64);
            let mask = if valid == 64 { u64::MAX } else { (1u64 << valid) - 1 };
            PersistError::check(word & !mask == 0, PART, "pending", || {
                format!("word {w} is {word:#x}, with bits of vectors past the table's {vectors}")
            })?;
        }
        Ok(())
    }

    /// Takes a state [`Msix::check`] accepted.
    pub(crate) fn load(&mut self, s: &MsixState) {
        self.table.clone_from(&s.table);
        self.pending.clone_from(&s.pending);
    }
}

/// What a [`PersistError`] of MSI-X names.
const PART: &str = "MSI-X table";

impl Persist for Msix {
    type State = MsixState;

    fn save(&self) -> MsixState {
        MsixState { table: self.table.clone(), pending: self.pending.clone() }
    }

    /// Restores the table and the pending bits of a function with the same
    /// number of vectors. A pending vector whose entry the state leaves
    /// unmasked cannot be, so nothing is sent here.
    fn restore(&mut self, s: &MsixState) -> Result<(), PersistError> {
        self.check(s)?;
        self.load(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intc::msi::RecordingMsi;

    const CAP: usize = 0x98;

    fn setup(vectors: u16) -> (PciConfigSpace, Msix, Arc<RecordingMsi>) {
        let mut config = PciConfigSpace::new(0x1af4, 0x1000, 0x02_00_00, 0);
        let sink = Arc::new(RecordingMsi::new());
        let m = Msix::new(&mut config, CAP, 1, vectors, sink.clone());
        (config, m, sink)
    }

    fn program(config: &PciConfigSpace, m: &mut Msix, v: u64, data: u32) {
        m.bar_write(config, 16 * v, &0xfee0_0000u32.to_le_bytes());
        m.bar_write(config, 16 * v + 4, &0u32.to_le_bytes());
        m.bar_write(config, 16 * v + 8, &data.to_le_bytes());
    }

    fn control(config: &mut PciConfigSpace, m: &mut Msix, value: u16) {
        config.write(CAP + 2, &value.to_le_bytes());
        m.config_written(config, CAP + 2, 2);
    }

    #[test]
    fn capability_layout() {
        let (mut config, _m, _) = setup(3);
        assert_eq!(config.u8_at(CAP), CAP_ID_MSIX);
        assert_eq!(config.u16_at(CAP + 2), 2, "table size - 1, MSI-X off");
        assert_eq!(config.u32_at(CAP + 4), 1, "table at 0 in BAR1");
        assert_eq!(config.u32_at(CAP + 8), 0x801, "PBA at 0x800 in BAR1");
        config.write(CAP + 2, &[0xff, 0xff]);
        assert_eq!(config.u16_at(CAP + 2), 0xc002, "only enable and function mask are writable");
        config.write(CAP + 4, &[0xff; 8]);
        assert_eq!((config.u32_at(CAP + 4), config.u32_at(CAP + 8)), (1, 0x801));
        let (_, m, _) = setup(0);
        assert_eq!(m.vectors(), 1);
        let (_, m, _) = setup(1000);
        assert_eq!(m.vectors(), MAX_VECTORS);
    }

    #[test]
    fn disabled_msix_leaves_the_event_to_intx() {
        let (config, mut m, sink) = setup(2);
        assert!(!m.enabled(&config));
        assert!(!m.notify(&config, 0));
        assert!(sink.take().is_empty());
    }

    #[test]
    fn unmasked_vectors_send_their_message() {
        let (mut config, mut m, sink) = setup(2);
        program(&config, &mut m, 1, 0x41);
        m.bar_write(&config, 16 + 12, &0u32.to_le_bytes());
        control(&mut config, &mut m, 0x8000);
        assert!(m.notify(&config, 1));
        assert_eq!(sink.take(), [MsiMessage { address: 0xfee0_0000, data: 0x41 }]);
        assert!(m.notify(&config, 7), "a vector past the table is taken and dropped");
        assert!(sink.take().is_empty());
    }

    #[test]
    fn masked_vectors_pend_until_unmasked() {
        let (mut config, mut m, sink) = setup(2);
        program(&config, &mut m, 0, 0x30);
        control(&mut config, &mut m, 0x8000);
        assert!(m.notify(&config, 0), "entries reset masked");
        assert!(m.notify(&config, 0));
        assert!(sink.take().is_empty());
        let mut pba = [0u8; 8];
        m.bar_read(PBA_OFFSET, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1);
        m.bar_write(&config, 12, &0u32.to_le_bytes());
        assert_eq!(sink.take(), [MsiMessage { address: 0xfee0_0000, data: 0x30 }], "sent once on unmask");
        m.bar_read(PBA_OFFSET, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let (mut config, mut m, sink) = setup(2);
        for v in 0..2 {
            program(&config, &mut m, v, 0x50 + v as u32);
            m.bar_write(&config, 16 * v + 12, &0u32.to_le_bytes());
        }
        control(&mut config, &mut m, 0xc000);
        m.notify(&config, 1);
        m.notify(&config, 0);
        assert!(sink.take().is_empty());
        control(&mut config, &mut m, 0x8000);
        let data: Vec<u32> = sink.take().iter().map(|s| s.data).collect();
        assert_eq!(data, [0x50, 0x51]);
    }

    #[test]
    fn table_accesses_of_any_size_and_the_read_only_parts() {
        let (config, mut m, _) = setup(2);
        m.bar_write(&config, 0, &0xffff_ffff_ffff_ffffu64.to_le_bytes());
        let mut b = [0u8; 16];
        m.bar_read(0, &mut b);
        assert_eq!(&b[..8], &[0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "address bits 1:0 read 0");
        m.bar_write(&config, 12, &[0xff, 0xff, 0xff, 0xff]);
        m.bar_read(12, &mut b[..4]);
        assert_eq!(&b[..4], &[1, 0, 0, 0], "vector control has one bit");
        m.bar_write(&config, 13, &[0xff]);
        m.bar_write(&config, PBA_OFFSET, &[0xff; 8]);
        m.bar_write(&config, 0x7f0, &[0xff; 4]);
        m.bar_read(PBA_OFFSET, &mut b[..8]);
        assert_eq!(&b[..8], &[0; 8], "the PBA is read-only");
        m.bar_read(0x7f0, &mut b[..4]);
        assert_eq!(&b[..4], &[0; 4], "past the table reads 0");
        m.bar_read(0xff8, &mut b[..8]);
        assert_eq!(&b[..8], &[0; 8]);
    }

    #[test]
    fn state_round_trip() {
        let (mut config, mut m, sink) = setup(2);
        program(&config, &mut m, 0, 0x33);
        program(&config, &mut m, 1, 0x34);
        control(&mut config, &mut m, 0x8000);
        m.notify(&config, 0);
        let (_, mut other, other_sink) = setup(2);
        let s = persist::assert_round_trip(&m, &mut other);
        assert_eq!(s.pending, [1]);
        // The restored function has the saved one's table: unmasking vector
        // 0 sends the message pending in it, vector 1 its own.
        other.bar_write(&config, 12, &[0]);
        assert_eq!(other_sink.take(), [MsiMessage { address: 0xfee0_0000, data: 0x33 }], "the pending bit came along");
        other.bar_write(&config, 16 + 12, &[0]);
        other.notify(&config, 1);
        assert_eq!(other_sink.take(), [MsiMessage { address: 0xfee0_0000, data: 0x34 }]);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn corrupt_states_are_refused() {
        let (mut config, mut m, _) = setup(2);
        program(&config, &mut m, 1, 0x41);
        control(&mut config, &mut m, 0x8000);
        m.notify(&config, 1);
        let good = m.save();
        // Another vector count.
        let (_, mut small, _) = setup(1);
        let e = persist::assert_refused(&mut small, &good);
        assert_eq!((e.part, e.field), ("MSI-X table", "table"));
        assert!(e.problem.contains("has 32 bytes, not the 16 of this function's 1 vectors"), "{e}");
        let (_, mut big, _) = setup(65);
        let e = persist::assert_refused(&mut big, &MsixState { table: vec![0; 65 * 16], ..good.clone() });
        assert_eq!(e.field, "pending", "65 vectors need two words: {e}");
        // A bit no guest can write: address bits 1:0, the reserved vector control bits.
        for (at, v) in [(16usize, 0x03u8), (12, 0x02), (31, 0x80)] {
            let mut table = good.table.clone();
            table[at] |= v;
            let e = persist::assert_refused(&mut m, &MsixState { table, ..good.clone() });
            assert_eq!(e.field, "table", "byte {at}: {e}");
        }
        // A pending bit past the table.
        let e = persist::assert_refused(&mut m, &MsixState { pending: vec![0b110], ..good.clone() });
        assert_eq!(e.field, "pending");
        assert!(e.problem.contains("bits of vectors past the table's 2"), "{e}");
        // 64 vectors fill the first word: bit 63 is valid then.
        let (_, mut full, _) = setup(64);
        let mut s = full.save();
        s.pending = vec![1 << 63];
        full.restore(&s).unwrap();
        assert_eq!(full.save(), s);
    }
}
