//! QEMU's firmware configuration device (fw_cfg), the channel SeaBIOS
//! reads the machine's description through: its RAM, CPUs, the e820 map,
//! the boot order, the ACPI tables and more, as named items and files.
//!
//! Reference: QEMU docs/specs/fw_cfg.rst; SeaBIOS src/fw/paravirt.c.
//!
//! ```text
//! port 0x510  le16 selector (write): picks an item and rewinds it
//! port 0x511  u8 data (read): the next byte of the item (0 past its end)
//! port 0x514  be64 DMA address (written as two be32: high at 0x514, low at
//!             0x518; the write of the low half starts the transfer)
//! DMA descriptor (guest memory, big-endian): be32 control | be32 length | be64 address
//!   control: 0x01 ERROR, 0x02 READ, 0x04 SKIP, 0x08 SELECT (item in bits 16-31),
//!            0x10 WRITE (refused: items are read-only here); 0 when done
//! items  0x00 signature "QEMU"   0x01 ID (bit 0 traditional, bit 1 DMA)
//!        0x03 RAM size (le64)    0x05 CPUs (le16)   0x0f max CPUs (le16)
//!        0x19 file directory: be32 count, then per file be32 size | be16 select |
//!             be16 reserved | name[56]
//!        0x20... the files, in the order they were added
//! ```
//!
//! Model choices: every item is read-only (writes through DMA set ERROR,
//! as QEMU does for read-only items); a DMA descriptor or buffer outside
//! guest RAM sets ERROR and touches nothing; a transfer is cut to what the
//! item holds past its offset, the rest of a read filled with zeroes. The
//! data offset stops at the item's end (past it everything reads 0 alike),
//! so a saved offset always lies within its item.
//! The machine plugs it in when it boots through firmware (src/bios.rs
//! says what it holds).

use std::sync::Arc;

use mmu::GuestMemory;
use persist::{Persist, PersistError};

use crate::bus::BusDevice;

/// The I/O ports: selector at 0x510, data at 0x511, DMA at 0x514-0x51b.
pub const FW_CFG_PORT: u16 = 0x510;
/// Length of the port window.
pub const FW_CFG_PORT_LEN: u64 = 12;

const PORT_SELECTOR: u64 = 0;
const PORT_DATA: u64 = 1;
const PORT_DMA_HIGH: u64 = 4;
const PORT_DMA_LOW: u64 = 8;

/// Item keys.
pub const FW_CFG_SIGNATURE: u16 = 0x00;
pub const FW_CFG_ID: u16 = 0x01;
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
pub const FW_CFG_NB_CPUS: u16 = 0x05;
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
pub const FW_CFG_FILE_DIR: u16 = 0x19;
pub const FW_CFG_FILE_FIRST: u16 = 0x20;

/// ID bits: the port interface, and DMA.
const ID_TRADITIONAL: u32 = 1 << 0;
const ID_DMA: u32 = 1 << 1;

/// DMA control bits.
pub const DMA_CTL_ERROR: u32 = 0x01;
pub const DMA_CTL_READ: u32 = 0x02;
pub const DMA_CTL_SKIP: u32 = 0x04;
pub const DMA_CTL_SELECT: u32 = 0x08;
pub const DMA_CTL_WRITE: u32 = 0x10;

/// Longest file name, with its terminating zero.
const FILE_NAME_LEN: usize = 56;
/// The most files (selectors 0x20 to 0x7fff).
const MAX_FILES: usize = 0x7fff - FW_CFG_FILE_FIRST as usize;

/// Why a file cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name '{0}' is empty or longer than 55 bytes")]
    BadName(String),
    #[error("fw_cfg already has a file named '{0}'")]
    Duplicate(String),
    #[error("fw_cfg has no room for more files")]
    Full,
    #[error("fw_cfg file '{0}' is larger than 4 GiB")]
    TooLarge(String),
}

/// The saved state of the fw_cfg device: where the guest stands in its
/// items. The items themselves are the machine's description, which the
/// machine rebuilds (the same way) before it restores this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FwCfgState {
    /// The selected item's key (any key; an unknown one reads as empty).
    pub selector: u16,
    /// The data offset in the selected item, at most its length.
    pub offset: u64,
    /// The high half of the DMA address, written and not yet used.
    pub dma_high: u32,
}

/// The fw_cfg device.
pub struct FwCfg {
    mem: Arc<GuestMemory>,
    /// Fixed items by key.
    items: Vec<(u16, Vec<u8>)>,
    files: Vec<(String, Vec<u8>)>,
    /// The file directory, rebuilt when a file is added.
    dir: Vec<u8>,
    selected: u16,
    offset: usize,
    dma_high: u32,
    /// Asked for a file's current bytes each time the guest selects it.
    refresh: Option<Refresh>,
}

/// Gives a file's bytes as the machine is now (`None`: as they are): the
/// ACPI tables, whose FADT says where the firmware placed the PM block.
pub type Refresh = Box<dyn FnMut(&str) -> Option<Vec<u8>> + Send>;

impl std::fmt::Debug for FwCfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FwCfg").field("files", &self.files.len()).field("selected", &self.selected).finish()
    }
}

impl FwCfg {
    /// A device with the signature, the ID, and the RAM size and CPU count
    /// items; DMA reads and writes `mem`.
    pub fn new(mem: Arc<GuestMemory>, ram_size: u64, cpus: u16) -> Self {
        let items = vec![
            (FW_CFG_SIGNATURE, b"QEMU".to_vec()),
            (FW_CFG_ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec()),
            (FW_CFG_RAM_SIZE, ram_size.to_le_bytes().to_vec()),
            (FW_CFG_NB_CPUS, cpus.to_le_bytes().to_vec()),
            (FW_CFG_MAX_CPUS, cpus.to_le_bytes().to_vec()),
        ];
        let mut d =
            Self { mem, items, files: Vec::new(), dir: Vec::new(), selected: 0, offset: 0, dma_high: 0, refresh: None };
        d.rebuild_dir();
        d
    }

    /// Sets the fixed item `key` (below [`FW_CFG_FILE_DIR`]; other keys
    /// are refused), replacing what it held.
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) -> bool {
        if key >= FW_CFG_FILE_DIR {
            return false;
        }
        self.items.retain(|(k, _)| *k != key);
        self.items.push((key, data));
        true
    }

    /// The files' names, in selector order.
    pub fn file_names(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The contents of the file `name`.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_slice())
    }

    /// Adds the file `name` (such as `etc/e820`); returns its selector.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_LEN || name.contains('\0') {
            return Err(FwCfgError::BadName(name.into()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::Full);
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(name.into()));
        }
        self.files.push((name.into(), data));
        self.rebuild_dir();
        Ok(FW_CFG_FILE_FIRST + (self.files.len() - 1) as u16)
    }

    /// Replaces the contents of the file `name` (its selector stays);
    /// false when there is no such file or `data` is larger than 4 GiB.
    /// The guest's position in the file stops at its new end.
    pub fn replace_file(&mut self, name: &str, data: Vec<u8>) -> bool {
        let Some(i) = self.files.iter().position(|(n, _)| n == name) else { return false };
        if u32::try_from(data.len()).is_err() {
            return false;
        }
        self.files[i].1 = data;
        self.rebuild_dir();
        let len = self.item(self.selected).len();
        self.offset = self.offset.min(len);
        true
    }

    fn rebuild_dir(&mut self) {
        let mut d = (self.files.len() as u32).to_be_bytes().to_vec();
        for (i, (name, data)) in self.files.iter().enumerate() {
            d.extend_from_slice(&(data.len() as u32).to_be_bytes());
            d.extend_from_slice(&(FW_CFG_FILE_FIRST + i as u16).to_be_bytes());
            d.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            d.extend_from_slice(&n);
        }
        self.dir = d;
    }

    /// The bytes of item `key` (empty for an unknown key).
    fn item(&self, key: u16) -> &[u8] {
        if key == FW_CFG_FILE_DIR {
            return &self.dir;
        }
        if key >= FW_CFG_FILE_FIRST {
            return self.files.get(usize::from(key - FW_CFG_FILE_FIRST)).map_or(&[], |(_, d)| d);
        }
        self.items.iter().find(|(k, _)| *k == key).map_or(&[], |(_, d)| d)
    }

    /// From now on, selecting a file asks `refresh` for its bytes, as
    /// QEMU builds its ACPI tables when the firmware reads them. New bytes
    /// of another length than the file's are refused (the directory the
    /// firmware read gave the length) and logged.
    pub fn set_refresh(&mut self, refresh: Refresh) {
        self.refresh = Some(refresh);
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
        let Some(i) = key.checked_sub(FW_CFG_FILE_FIRST).map(usize::from) else { return };
        let (Some(refresh), Some((name, data))) = (self.refresh.as_mut(), self.files.get_mut(i)) else { return };
        if let Some(new) = refresh(name) {
            if new.len() == data.len() {
                *data = new;
            } else {
                tracing::error!(target: "devices", "fw_cfg: {name} would change length ({} to {} bytes); kept", data.len(), new.len());
            }
        }
    }

    fn read_byte(&mut self) -> u8 {
        let item = self.item(self.selected);
        let b = item.get(self.offset).copied().unwrap_or(0);
        self.offset = self.offset.saturating_add(1).min(item.len());
        b
    }

    /// Moves the data offset `len` bytes on, stopping at the item's end.
    fn skip(&mut self, len: usize) {
        self.offset = self.offset.saturating_add(len).min(self.item(self.selected).len());
    }

    /// Runs the DMA descriptor at `addr`, then writes its control word back.
    fn dma(&mut self, addr: u64) {
        let mut desc = [0u8; 16];
        if self.mem.read(addr, &mut desc).is_err() {
            tracing::warn!(target: "devices", "fw_cfg: DMA descriptor at {addr:#x} is outside guest RAM");
            return;
        }
        let control = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let len = u32::from_be_bytes([desc[4], desc[5], desc[6], desc[7]]) as usize;
        let mut a = [0u8; 8];
        a.copy_from_slice(&desc[8..16]);
        let buf = u64::from_be_bytes(a);
        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & DMA_CTL_WRITE != 0 {
            false
        } else if control & DMA_CTL_READ != 0 && !self.mem.is_backed(buf, len as u64) {
            // Checked before anything is allocated: the length is the guest's.
            false
        } else if control & DMA_CTL_READ != 0 {
            let item = self.item(self.selected);
            let start = self.offset.min(item.len());
            let n = len.min(item.len() - start);
            let mut out = item[start..start + n].to_vec();
            out.resize(len, 0);
            let ok = self.mem.write(buf, &out).is_ok();
            self.skip(len);
            ok
        } else {
            if control & DMA_CTL_SKIP != 0 {
                self.skip(len);
            }
            true
        };
        let done = if ok { 0 } else { DMA_CTL_ERROR };
        // The control word is the descriptor's first field.
        let _ = self.mem.write(addr, &done.to_be_bytes());
    }
}

/// Restore checks the data offset against the length of the selected item
/// as this device holds it, so a state saved over other files (another
/// machine description) is refused rather than read at a wrong place.
impl Persist for FwCfg {
    type State = FwCfgState;

    fn save(&self) -> FwCfgState {
        FwCfgState { selector: self.selected, offset: self.offset as u64, dma_high: self.dma_high }
    }

    fn restore(&mut self, state: &FwCfgState) -> Result<(), PersistError> {
        let len = self.item(state.selector).len();
        PersistError::check(state.offset <= len as u64, "fw_cfg", "offset", || {
            format!("is {} but item {:#06x} holds {len} bytes here", state.offset, state.selector)
        })?;
        self.selected = state.selector;
        self.offset = state.offset as usize;
        self.dma_high = state.dma_high;
        Ok(())
    }
}

impl BusDevice for FwCfg {
    fn debug_label(&self) -> String {
        "fw_cfg".into()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (PORT_DATA, 1) => data[0] = self.read_byte(),
            // The DMA register reads as "QEMU CFG" so firmware can probe it.
            (PORT_DMA_HIGH, 4) => data.copy_from_slice(b"QEMU"),
            (PORT_DMA_LOW, 4) => data.copy_from_slice(b" CFG"),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (PORT_SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (PORT_DMA_HIGH, 4) => self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            (PORT_DMA_LOW, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = u64::from(self.dma_high) << 32 | u64::from(low);
                self.dma_high = 0;
                self.dma(addr);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (FwCfg, Arc<GuestMemory>) {
        let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
        (FwCfg::new(mem.clone(), 512 << 20, 1), mem)
    }

    fn read_item(d: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        d.write(PORT_SELECTOR, &key.to_le_bytes());
        (0..len)
            .map(|_| {
                let mut b = [0u8];
                d.read(PORT_DATA, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn signature_id_and_items_through_the_ports() {
        let (mut d, _) = dev();
        assert_eq!(read_item(&mut d, FW_CFG_SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read_item(&mut d, FW_CFG_ID, 4), 3u32.to_le_bytes());
        assert_eq!(read_item(&mut d, FW_CFG_RAM_SIZE, 8), (512u64 << 20).to_le_bytes());
        assert_eq!(read_item(&mut d, FW_CFG_NB_CPUS, 2), [1, 0]);
        assert_eq!(read_item(&mut d, 0x1234, 2), [0, 0], "unknown items read as zeroes");
        assert!(d.set_item(0x0e, vec![0, 0]) && d.set_item(0x0e, vec![1, 0]));
        assert_eq!(read_item(&mut d, 0x0e, 2), [1, 0]);
        assert!(!d.set_item(FW_CFG_FILE_DIR, vec![]), "the directory is the device's");
        let mut probe = [0u8; 8];
        d.read(PORT_DMA_HIGH, &mut probe[..4]);
        d.read(PORT_DMA_LOW, &mut probe[4..]);
        assert_eq!(&probe, b"QEMU CFG");
    }

    #[test]
    fn a_refreshed_file_is_read_as_the_machine_is_when_selected() {
        let (mut d, _) = dev();
        d.add_file("etc/acpi/tables", vec![1, 2]).unwrap();
        d.add_file("other", vec![9]).unwrap();
        let n = Arc::new(std::sync::atomic::AtomicU8::new(5));
        let m = n.clone();
        d.set_refresh(Box::new(move |name| {
            let v = m.load(std::sync::atomic::Ordering::Relaxed);
            match name {
                "etc/acpi/tables" => Some(vec![v, v]),
                "other" => Some(vec![v, v, v]),
                _ => None,
            }
        }));
        assert_eq!(read_item(&mut d, 0x20, 2), [5, 5]);
        n.store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(read_item(&mut d, 0x20, 2), [7, 7], "built again at the next selection");
        assert_eq!(read_item(&mut d, 0x21, 1), [9], "bytes of another length are refused");
    }

    #[test]
    fn files_are_listed_and_read() {
        let (mut d, _) = dev();
        assert_eq!(d.add_file("etc/e820", vec![1, 2, 3]), Ok(0x20));
        assert_eq!(d.add_file("bootorder", b"/pci@i0cf8/*@3\n".to_vec()), Ok(0x21));
        assert_eq!(d.add_file("bootorder", vec![]), Err(FwCfgError::Duplicate("bootorder".into())));
        assert!(matches!(d.add_file(&"x".repeat(56), vec![]), Err(FwCfgError::BadName(_))));
        assert!(matches!(d.add_file("", vec![]), Err(FwCfgError::BadName(_))));
        let dir = read_item(&mut d, FW_CFG_FILE_DIR, 4 + 2 * 64);
        assert_eq!(&dir[..4], &2u32.to_be_bytes());
        let e = &dir[4 + 64..4 + 128];
        assert_eq!(&e[..4], &15u32.to_be_bytes());
        assert_eq!(&e[4..6], &0x21u16.to_be_bytes());
        assert_eq!(&e[8..17], b"bootorder");
        assert_eq!(e[17], 0);
        assert_eq!(read_item(&mut d, 0x20, 4), [1, 2, 3, 0]);
        assert_eq!(read_item(&mut d, 0x22, 1), [0], "past the last file");
    }

    #[test]
    fn a_file_replaced_keeps_its_selector_and_lists_its_new_size() {
        let (mut d, _) = dev();
        d.add_file("etc/e820", vec![1, 2, 3]).unwrap();
        d.add_file("bootorder", b"/pci@i0cf8/*@3\n/pci@i0cf8/*@4\n".to_vec()).unwrap();
        // The guest stands half-way through the longer file.
        assert_eq!(read_item(&mut d, 0x21, 20).len(), 20);
        assert!(d.replace_file("bootorder", b"/x\n".to_vec()));
        assert_eq!(d.save().offset, 3, "the position stops at the new end");
        assert!(!d.replace_file("etc/missing", vec![]));
        let dir = read_item(&mut d, FW_CFG_FILE_DIR, 4 + 2 * 64);
        let e = &dir[4 + 64..4 + 128];
        assert_eq!((&e[..4], &e[4..6]), (&3u32.to_be_bytes()[..], &0x21u16.to_be_bytes()[..]));
        assert_eq!(read_item(&mut d, 0x21, 4), b"/x\n\0");
        assert_eq!(d.file("etc/e820").unwrap(), [1, 2, 3]);
    }

    /// Writes a DMA descriptor at `at` and starts it.
    fn dma(d: &mut FwCfg, mem: &GuestMemory, at: u64, control: u32, len: u32, buf: u64) -> u32 {
        let mut desc = control.to_be_bytes().to_vec();
        desc.extend_from_slice(&len.to_be_bytes());
        desc.extend_from_slice(&buf.to_be_bytes());
        mem.write(at, &desc).unwrap();
        d.write(PORT_DMA_HIGH, &((at >> 32) as u32).to_be_bytes());
        d.write(PORT_DMA_LOW, &(at as u32).to_be_bytes());
        mem.read_u32(at).unwrap().swap_bytes()
    }

    #[test]
    fn dma_selects_skips_and_reads_and_refuses_bad_addresses() {
        let (mut d, mem) = dev();
        let sel = d.add_file("etc/sercon-port", 0x3f8u16.to_le_bytes().to_vec()).unwrap();
        let ctl = DMA_CTL_SELECT | DMA_CTL_READ | (u32::from(FW_CFG_SIGNATURE) << 16);
        assert_eq!(dma(&mut d, &mem, 0x1000, ctl, 4, 0x2000), 0);
        let mut b = [0u8; 4];
        mem.read(0x2000, &mut b).unwrap();
        assert_eq!(&b, b"QEMU");
        // Select the file, skip a byte, read three (one past its end: zero).
        assert_eq!(dma(&mut d, &mem, 0x1000, DMA_CTL_SELECT | (u32::from(sel) << 16), 0, 0), 0);
        assert_eq!(dma(&mut d, &mem, 0x1000, DMA_CTL_SKIP, 1, 0), 0);
        mem.write(0x2000, &[0xff; 4]).unwrap();
        assert_eq!(dma(&mut d, &mem, 0x1000, DMA_CTL_READ, 3, 0x2000), 0);
        mem.read(0x2000, &mut b).unwrap();
        assert_eq!(b, [0x03, 0, 0, 0xff]);
        // Writes are refused; a buffer outside RAM is an error.
        assert_eq!(dma(&mut d, &mem, 0x1000, DMA_CTL_WRITE, 1, 0x2000), DMA_CTL_ERROR);
        assert_eq!(dma(&mut d, &mem, 0x1000, DMA_CTL_READ, 16, 0xffff_fff0), DMA_CTL_ERROR);
        assert_eq!(dma(&mut d, &mem, 0x1000, DMA_CTL_READ, u32::MAX, 0x2000), DMA_CTL_ERROR);
        // A descriptor outside RAM is ignored, with nothing written.
        d.write(PORT_DMA_HIGH, &1u32.to_be_bytes());
        d.write(PORT_DMA_LOW, &0u32.to_be_bytes());
    }

    /// A device with two files, half-way through the second, with the high
    /// half of a DMA address written.
    fn configured() -> (FwCfg, Arc<GuestMemory>) {
        let (mut d, mem) = dev();
        d.add_file("etc/e820", vec![1; 40]).unwrap();
        d.add_file("bootorder", b"/pci@i0cf8/*@3\n".to_vec()).unwrap();
        assert_eq!(read_item(&mut d, 0x21, 5), b"/pci@");
        d.write(PORT_DMA_HIGH, &1u32.to_be_bytes());
        (d, mem)
    }

    #[test]
    fn the_persisted_state_round_trips_and_reads_on_where_it_stood() {
        let (mut d, _) = configured();
        // The machine rebuilds the same description in the new device.
        let (mut fresh, _) = dev();
        fresh.add_file("etc/e820", vec![1; 40]).unwrap();
        fresh.add_file("bootorder", b"/pci@i0cf8/*@3\n".to_vec()).unwrap();
        let state = persist::assert_round_trip(&d, &mut fresh);
        assert_eq!(state, FwCfgState { selector: 0x21, offset: 5, dma_high: 1 });
        let next = |d: &mut FwCfg| -> Vec<u8> {
            (0..12)
                .map(|_| {
                    let mut b = [0u8];
                    d.read(PORT_DATA, &mut b);
                    b[0]
                })
                .collect()
        };
        assert_eq!(next(&mut fresh), next(&mut d));
        assert_eq!(fresh.save().offset, 15, "the offset stops at the item's end");
    }

    #[test]
    fn an_offset_past_the_selected_item_is_refused() {
        let (d, _) = configured();
        let good = d.save();
        // A machine described with a shorter bootorder file.
        let (mut other, _) = dev();
        other.add_file("etc/e820", vec![1; 40]).unwrap();
        other.add_file("bootorder", b"/p".to_vec()).unwrap();
        let e = persist::assert_refused(&mut other, &good);
        assert_eq!(e.field, "offset");
        // The selected file missing altogether, or an offset past the directory.
        let (mut bare, _) = dev();
        assert_eq!(persist::assert_refused(&mut bare, &good).field, "offset");
        let dir = FwCfgState { selector: FW_CFG_FILE_DIR, offset: 5, ..good };
        assert_eq!(persist::assert_refused(&mut bare, &dir).field, "offset", "an empty directory holds 4 bytes");
        bare.restore(&FwCfgState { offset: 4, ..dir }).unwrap();
        bare.restore(&FwCfgState { selector: 0x1234, offset: 0, dma_high: 7 }).unwrap();
    }
}
