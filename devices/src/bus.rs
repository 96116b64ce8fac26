//! The device bus: one type for the port I/O space (0..=0xffff) and for MMIO.
//!
//! A bus is an ordered map of non-overlapping address ranges, each owned by
//! one device. A device sees only the offset of an access from the base of
//! its range, never the absolute address, so the same model can sit at any
//! port or address (and can move, as PCI BARs do). Guest RAM never goes
//! through the bus.
//!
//! Rules the bus enforces, none of which panics on guest input:
//! - Ranges are built with checked arithmetic. A range may end at `u64::MAX`
//!   itself; a zero-length range, a range wrapping past `u64::MAX` and a range
//!   overlapping another are refused at registration.
//! - An access claimed by no device reads as all-ones (an open bus floats
//!   high) and its writes are dropped.
//! - An access that starts inside a device but runs past the end of its range
//!   is refused as a whole (reads as all-ones) and logged once per device.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::log_once::{LogOnce, Misuse};

/// A device model reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// A short name of the device for logs, such as `"serial (COM1)"`.
    fn debug_label(&self) -> String;

    /// Reads `data.len()` bytes at `offset` from the base of the device's range.
    ///
    /// The length is the access size. A device that does not implement that
    /// size logs it once and fills `data` with `0xff`.
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset` from the base of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (a host I/O thread).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a range cannot be registered on the bus.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps one that is already registered.
    #[error(
        "cannot map {device} at {base:#x} (length {len:#x}): it overlaps {existing} at \
         {existing_base:#x} (length {existing_len:#x}); choose a free range or remove the other device first"
    )]
    Overlap { device: String, base: u64, len: u64, existing: String, existing_base: u64, existing_len: u64 },
    /// The range is empty.
    #[error("cannot map {device} at {base:#x} with length 0; a device needs at least one byte")]
    ZeroLength { device: String, base: u64 },
    /// The range runs past the end of the address space.
    #[error(
        "cannot map {device} at {base:#x} with length {len:#x}: the range runs past the end of \
         the 64-bit address space"
    )]
    Overflow { device: String, base: u64, len: u64 },
}

/// One registered range.
struct Entry {
    /// The last byte of the range, inclusive, so a range may end at `u64::MAX`.
    last: u64,
    device: SharedDevice,
    log: LogOnce,
}

impl Entry {
    fn len(&self, base: u64) -> u64 {
        // A registered length fitted in a u64, so this cannot overflow.
        (self.last - base).saturating_add(1)
    }
}

/// An ordered map of address ranges to devices.
#[derive(Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Device labels are not shown: taking device locks inside Debug could
        // deadlock a caller that already holds one.
        f.debug_list().entries(self.entries.iter().map(|(base, e)| *base..=e.last)).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `dev` for the `len` bytes starting at `base`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let Some(span) = len.checked_sub(1) else {
            return Err(BusError::ZeroLength { device: dev.lock().debug_label(), base });
        };
        let Some(last) = base.checked_add(span) else {
            return Err(BusError::Overflow { device: dev.lock().debug_label(), base, len });
        };
        // The range with the greatest base not above our last byte is the only
        // one that can overlap: any range starting further down ends before the
        // next one starts.
        if let Some((&existing_base, existing)) = self.entries.range(..=last).next_back() {
            if existing.last >= base {
                return Err(BusError::Overlap {
                    device: dev.lock().debug_label(),
                    base,
                    len,
                    existing: existing.device.lock().debug_label(),
                    existing_base,
                    existing_len: existing.len(existing_base),
                });
            }
        }
        self.entries.insert(base, Entry { last, device: dev, log: LogOnce::new() });
        Ok(())
    }

    /// Unregisters the range starting exactly at `base` and hands back its device.
    pub fn remove(&mut self, base: u64) -> Option<SharedDevice> {
        self.entries.remove(&base).map(|e| e.device)
    }

    /// The device whose range holds `addr`, with the base of that range.
    pub fn device_at(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        self.lookup(addr).map(|(base, e)| (base, Arc::clone(&e.device)))
    }

    /// Reads `data.len()` bytes at `addr`. True if a device claimed the access.
    ///
    /// An unclaimed read leaves `data` filled with `0xff`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.route(addr, data.len()) {
            Some((offset, entry)) => {
                entry.device.lock().read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes `data` at `addr`. True if a device claimed the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.route(addr, data.len()) {
            Some((offset, entry)) => {
                entry.device.lock().write(offset, data);
                true
            }
            None => false,
        }
    }

    fn lookup(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.entries.range(..=addr).next_back()?;
        (addr <= entry.last).then_some((base, entry))
    }

    /// The device and offset an access of `size` bytes at `addr` goes to.
    fn route(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let Some((base, entry)) = self.lookup(addr) else {
            tracing::trace!(target: "devices", addr, size, "unclaimed bus access");
            return None;
        };
        let span = u64::try_from(size).ok()?.checked_sub(1)?;
        let fits = addr.checked_add(span).is_some_and(|end| end <= entry.last);
        if !fits {
            if entry.log.first(Misuse::CrossesEnd) {
                tracing::warn!(
                    target: "devices",
                    device = %entry.device.lock().debug_label(),
                    addr,
                    size,
                    "access runs past the end of the device's range; ignored (logged once)"
                );
            }
            return None;
        }
        Some((addr - base, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with the offset's low byte.
    struct Probe {
        label: &'static str,
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn debug_label(&self) -> String {
            self.label.to_string()
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    fn probe(label: &'static str) -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe { label, last: None }))
    }

    #[test]
    fn refuses_every_overlap_shape() {
        let mut bus = Bus::new();
        bus.insert(probe("a"), 0x100, 0x10).unwrap();
        // (base, len) of ranges overlapping [0x100, 0x10f]
        let shapes = [
            (0x100, 0x10), // identical
            (0x0f8, 0x10), // starts before, ends inside
            (0x108, 0x10), // starts inside, ends after
            (0x104, 0x04), // strictly inside
            (0x0f0, 0x40), // strictly contains
            (0x0f0, 0x11), // touches the first byte only
            (0x10f, 0x01), // touches the last byte only
            (0x100, 0x01), // the first byte exactly
        ];
        for (base, len) in shapes {
            let err = bus.insert(probe("b"), base, len).unwrap_err();
            assert_eq!(
                err,
                BusError::Overlap {
                    device: "b".into(),
                    base,
                    len,
                    existing: "a".into(),
                    existing_base: 0x100,
                    existing_len: 0x10,
                },
                "range {base:#x}+{len:#x}"
            );
        }
        // Adjacent ranges on both sides are fine.
        bus.insert(probe("below"), 0xf0, 0x10).unwrap();
        bus.insert(probe("above"), 0x110, 0x10).unwrap();
        // A range spanning over two registered ones is refused too.
        assert!(matches!(bus.insert(probe("c"), 0x0, 0x1000), Err(BusError::Overlap { .. })));
    }

    #[test]
    fn refuses_zero_length_and_wrapping_ranges() {
        let mut bus = Bus::new();
        assert_eq!(bus.insert(probe("z"), 0x3f8, 0), Err(BusError::ZeroLength { device: "z".into(), base: 0x3f8 }));
        assert_eq!(
            bus.insert(probe("o"), u64::MAX, 2),
            Err(BusError::Overflow { device: "o".into(), base: u64::MAX, len: 2 })
        );
        assert!(matches!(bus.insert(probe("o"), 2, u64::MAX), Err(BusError::Overflow { .. })));
    }

    #[test]
    fn a_range_may_end_at_the_top_of_the_address_space() {
        let mut bus = Bus::new();
        bus.insert(probe("top"), u64::MAX - 0xf, 0x10).unwrap();
        bus.insert(probe("very top"), 0, 1).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(u64::MAX, &mut b));
        assert_eq!(b, [0x0f]);
        let mut w = [0u8; 2];
        assert!(!bus.read(u64::MAX, &mut w), "an access wrapping past the top is refused");
        assert_eq!(w, [0xff, 0xff]);
        // The whole space but its first byte is representable too.
        let mut bus = Bus::new();
        bus.insert(probe("all"), 1, u64::MAX).unwrap();
        assert!(bus.read(u64::MAX, &mut b));
        assert!(!bus.read(0, &mut b));
    }

    #[test]
    fn lookups_at_first_and_last_byte() {
        let mut bus = Bus::new();
        let dev = probe("uart");
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.device_at(0x3f7).is_none());
        assert_eq!(bus.device_at(0x3f8).map(|(base, _)| base), Some(0x3f8));
        assert_eq!(bus.device_at(0x3ff).map(|(base, _)| base), Some(0x3f8));
        assert!(bus.device_at(0x400).is_none());

        let mut b = [0u8; 1];
        assert!(bus.read(0x3f8, &mut b));
        assert_eq!(b, [0]);
        assert!(bus.read(0x3ff, &mut b));
        assert_eq!(b, [7], "the device sees the offset, not the address");
        assert!(bus.write(0x3fb, &[0x80]));
        assert_eq!(dev.lock().last, Some((3, vec![0x80])));
    }

    #[test]
    fn unclaimed_accesses_float_high() {
        let mut bus = Bus::new();
        bus.insert(probe("a"), 0x60, 1).unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0x80, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.write(0x80, &[1, 2]));
        assert!(!bus.read(0x5f, &mut d[..1]));
        assert!(!bus.write(0, &[]), "an empty access is not claimed");
    }

    #[test]
    fn accesses_crossing_the_end_of_a_device_are_refused() {
        let mut bus = Bus::new();
        let dev = probe("port");
        bus.insert(dev.clone(), 0xf4, 4).unwrap();
        let mut d = [0u8; 4];
        assert!(bus.read(0xf4, &mut d));
        assert!(!bus.read(0xf6, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.write(0xf7, &[1, 2]));
        assert_eq!(dev.lock().last, None);
        assert!(bus.write(0xf6, &[1, 2]));
        assert_eq!(dev.lock().last, Some((2, vec![1, 2])));
    }

    #[test]
    fn remove_frees_the_range_for_a_move() {
        let mut bus = Bus::new();
        let dev = probe("bar");
        bus.insert(dev.clone(), 0xfebf_0000, 0x1000).unwrap();
        assert!(bus.remove(0xfebf_0001).is_none(), "only a range's exact base removes it");
        let removed = bus.remove(0xfebf_0000).unwrap();
        assert!(bus.device_at(0xfebf_0000).is_none());
        bus.insert(removed, 0xfebe_0000, 0x1000).unwrap();
        assert_eq!(bus.device_at(0xfebe_0fff).unwrap().0, 0xfebe_0000);
        assert_eq!(format!("{bus:?}"), "[4273864704..=4273868799]");
    }
}
