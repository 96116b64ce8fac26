//! Where a device sits on the machine's buses.
//!
//! A chipset device often answers at several places: the PIT at 0x40-0x43
//! and at port 0x61, the i8042 at 0x60 and 0x64, the interrupt controller at
//! the PIC ports, the ELCR and two MMIO pages. Each device hands the machine a
//! list of [`BusMapping`]s; [`BusAlias`] lets one device model answer a second
//! range, seeing offsets shifted into its own register numbering.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::bus::{Bus, BusDevice, BusError, SharedDevice};

/// Which bus a range belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    /// Port I/O (IN/OUT), 0..=0xffff.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// One range a device answers on.
#[derive(Clone)]
pub struct BusMapping {
    /// The bus.
    pub space: AddressSpace,
    /// First port or address.
    pub base: u64,
    /// Length of the range.
    pub len: u64,
    /// The device answering there.
    pub device: SharedDevice,
}

impl std::fmt::Debug for BusMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusMapping")
            .field("space", &self.space)
            .field("base", &format_args!("{:#x}", self.base))
            .field("len", &format_args!("{:#x}", self.len))
            .finish_non_exhaustive()
    }
}

impl BusMapping {
    /// A port I/O range.
    pub fn pio(base: u64, len: u64, device: SharedDevice) -> Self {
        Self { space: AddressSpace::Pio, base, len, device }
    }

    /// An MMIO range.
    pub fn mmio(base: u64, len: u64, device: SharedDevice) -> Self {
        Self { space: AddressSpace::Mmio, base, len, device }
    }

    /// Registers the range on the bus of its address space.
    pub fn insert_into(&self, pio: &mut Bus, mmio: &mut Bus) -> Result<(), BusError> {
        let bus = match self.space {
            AddressSpace::Pio => pio,
            AddressSpace::Mmio => mmio,
        };
        bus.insert(Arc::clone(&self.device), self.base, self.len)
    }
}

/// A second window onto a device: an access at offset `o` of the alias
/// reaches the device at offset `first_offset + o`.
pub struct BusAlias {
    target: SharedDevice,
    first_offset: u64,
}

impl BusAlias {
    /// An alias whose offset 0 is the target's offset `first_offset`.
    pub fn new(target: SharedDevice, first_offset: u64) -> Self {
        Self { target, first_offset }
    }

    /// The alias as a shared bus device.
    pub fn shared(target: SharedDevice, first_offset: u64) -> SharedDevice {
        Arc::new(Mutex::new(Self::new(target, first_offset)))
    }
}

impl BusDevice for BusAlias {
    fn debug_label(&self) -> String {
        format!("{} (+{:#x})", self.target.lock().debug_label(), self.first_offset)
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.first_offset.checked_add(offset) {
            Some(o) => self.target.lock().read(o, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(o) = self.first_offset.checked_add(offset) {
            self.target.lock().write(o, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Echo {
        fn debug_label(&self) -> String {
            "echo".into()
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn an_alias_shifts_offsets() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let shared: SharedDevice = dev.clone();
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        BusMapping::pio(0x40, 4, shared.clone()).insert_into(&mut pio, &mut mmio).unwrap();
        let alias = BusMapping::pio(0x61, 1, BusAlias::shared(shared.clone(), 0x21));
        alias.insert_into(&mut pio, &mut mmio).unwrap();
        assert!(format!("{alias:?}").contains("0x61"));
        let mut b = [0u8; 1];
        pio.read(0x61, &mut b);
        assert_eq!(b, [0x21]);
        pio.write(0x61, &[7]);
        assert_eq!(dev.lock().0, vec![(0x21, vec![7])]);
        assert_eq!(alias.device.lock().debug_label(), "echo (+0x21)");
        BusMapping::mmio(0x1000, 0x10, shared).insert_into(&mut pio, &mut mmio).unwrap();
        assert!(mmio.device_at(0x1000).is_some());
        let mut wrap = BusAlias::new(alias.device.clone(), u64::MAX);
        let mut d = [0u8; 2];
        wrap.read(1, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        wrap.write(1, &[1]);
    }
}
