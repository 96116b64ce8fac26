//! PCI bus 0 behind configuration mechanism #1.
//!
//! Reference: PCI Local Bus Specification 3.0, 3.2.2.3.2 "Software
//! Generation of Configuration Transactions" (configuration mechanism #1),
//! and the i440FX datasheet (290549) 3.1 "I/O Mapped Registers":
//! CONFIG_ADDRESS is accessed as a dword only; byte and word accesses to
//! 0xCF8-0xCFB pass through as ordinary I/O (0xCF9 is the reset control
//! register).
//!
//! ```text
//! 0xCF8  CONFIG_ADDRESS  31 enable | 30:24 reserved | 23:16 bus | 15:11 device |
//!                        10:8 function | 7:2 register | 1:0 = 0
//! 0xCFC  CONFIG_DATA     bytes 0-3 of the addressed dword; byte, word and
//!                        dword accesses at 0xCFC-0xCFF
//! ```
//!
//! Reads of an absent function, another bus, or with the enable bit clear
//! return all ones. When a configuration write moves a BAR (or turns its
//! decoding on or off), the root calls the machine's BAR callback with the
//! old and new location.

use std::collections::BTreeMap;
use std::sync::Arc;

use persist::{Persist, PersistError};

use super::config::{PciBarKind, PCI_INTERRUPT_LINE, PCI_NUM_REGIONS};
use super::piix::{pirq_of, PIIX_ISA_ADDRESS, PIRQRC_FIRST, PIRQ_IRQ_MASK, PIRQ_ROUTE_DISABLED};
use super::{PciAddress, PciError, SharedPciDevice};
use crate::bus::{BusDevice, SharedDevice};
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::BusMapping;

/// I/O port of CONFIG_ADDRESS.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// CONFIG_ADDRESS and CONFIG_DATA.
pub const PCI_CONFIG_PORT_LEN: u64 = 8;

const ADDR_ENABLE: u32 = 1 << 31;
const ADDR_WRITABLE: u32 = 0x80ff_fffc;
const ADDR_BUS_SHIFT: u32 = 16;
const ADDR_DEVICE_SHIFT: u32 = 11;
const ADDR_FUNCTION_SHIFT: u32 = 8;
const ADDR_REGISTER_MASK: u32 = 0xfc;

/// Offset of CONFIG_DATA in the device's range.
const DATA_OFFSET: u64 = 4;
/// Offset of the reset control register (0xCF9) in the range.
const RESET_OFFSET: u64 = 1;

/// A BAR moved, appeared or disappeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarChange {
    /// The function.
    pub address: PciAddress,
    /// The BAR index.
    pub bar: usize,
    /// What the BAR maps.
    pub kind: PciBarKind,
    /// Its size.
    pub size: u64,
    /// Where it was decoded before, if anywhere.
    pub old: Option<u64>,
    /// Where it is decoded now, if anywhere.
    pub new: Option<u64>,
}

type BarCallback = Box<dyn FnMut(&BarChange) + Send>;

/// PCI bus 0 and configuration mechanism #1.
pub struct PciRoot {
    devices: BTreeMap<u8, (PciAddress, SharedPciDevice)>,
    config_address: u32,
    reset_register: Option<SharedDevice>,
    bar_callback: Option<BarCallback>,
    log: LogOnce,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .field("config_address", &format_args!("{:#x}", self.config_address))
            .finish_non_exhaustive()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// An empty bus 0.
    pub fn new() -> Self {
        Self {
            devices: BTreeMap::new(),
            config_address: 0,
            reset_register: None,
            bar_callback: None,
            log: LogOnce::new(),
        }
    }

    /// The range the root answers on: 0xCF8-0xCFF.
    pub fn bus_mappings(root: &SharedDevice) -> Vec<BusMapping> {
        vec![BusMapping::pio(u64::from(PCI_CONFIG_ADDRESS_PORT), PCI_CONFIG_PORT_LEN, Arc::clone(root))]
    }

    /// Plugs a function in at `address`.
    pub fn add_device(&mut self, address: PciAddress, device: SharedPciDevice) -> Result<(), PciError> {
        if address.bus != 0 {
            return Err(PciError::NoSuchBus { device: device.lock().debug_label(), address });
        }
        if let Some((_, existing)) = self.devices.get(&address.devfn()) {
            return Err(PciError::SlotTaken {
                device: device.lock().debug_label(),
                address,
                existing: existing.lock().debug_label(),
            });
        }
        self.devices.insert(address.devfn(), (address, device));
        Ok(())
    }

    /// Unplugs the function at `address`, if there is one.
    pub fn remove_device(&mut self, address: PciAddress) -> Option<SharedPciDevice> {
        if address.bus != 0 {
            return None;
        }
        self.devices.remove(&address.devfn()).map(|(_, d)| d)
    }

    /// The function at `address`.
    pub fn device(&self, address: PciAddress) -> Option<SharedPciDevice> {
        if address.bus != 0 {
            return None;
        }
        self.devices.get(&address.devfn()).map(|(_, d)| Arc::clone(d))
    }

    /// Every function, by address.
    pub fn devices(&self) -> impl Iterator<Item = (PciAddress, &SharedPciDevice)> {
        self.devices.values().map(|(a, d)| (*a, d))
    }

    /// Routes byte accesses to 0xCF9 to `reset` (the reset control register).
    pub fn set_reset_register(&mut self, reset: SharedDevice) {
        self.reset_register = Some(reset);
    }

    /// Installs the callback run when a BAR's decoded location changes. It
    /// runs inside the guest's configuration write, with the PCI root (and
    /// so the bus entry of 0xCFC) locked: it must not touch the bus
    /// synchronously; queue the remapping for the run loop instead.
    pub fn set_bar_callback(&mut self, callback: BarCallback) {
        self.bar_callback = Some(callback);
    }

    /// Reads `data.len()` bytes (1, 2 or 4, inside one dword) at `offset` of
    /// the configuration space of `address`.
    pub fn config_read(&mut self, address: PciAddress, offset: u8, data: &mut [u8]) {
        data.fill(0xff);
        let Some(device) = self.device(address) else {
            return;
        };
        let reg = usize::from(offset >> 2);
        let value = device.lock().read_config(reg);
        let bytes = value.to_le_bytes();
        let start = usize::from(offset & 3);
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(&v) = bytes.get(start + i) {
                *b = v;
            }
        }
    }

    /// Writes `data` (1, 2 or 4 bytes, inside one dword) at `offset` of the
    /// configuration space of `address`.
    pub fn config_write(&mut self, address: PciAddress, offset: u8, data: &[u8]) {
        let Some(device) = self.device(address) else {
            return;
        };
        let (before, after) = {
            let mut dev = device.lock();
            let regions = |d: &dyn super::PciDevice| -> [Option<(super::PciBar, u64)>; PCI_NUM_REGIONS] {
                std::array::from_fn(|i| d.config().bar_region(i))
            };
            let before = regions(&*dev);
            let len = data.len().min(4 - usize::from(offset & 3));
            dev.write_config(usize::from(offset), &data[..len]);
            (before, regions(&*dev))
        };
        for bar in 0..PCI_NUM_REGIONS {
            if before[bar] == after[bar] {
                continue;
            }
            let Some((def, _)) = before[bar].or(after[bar]) else {
                continue;
            };
            let change = BarChange {
                address,
                bar,
                kind: def.kind,
                size: def.size,
                old: before[bar].map(|(_, base)| base),
                new: after[bar].map(|(_, base)| base),
            };
            tracing::debug!(target: "devices", %address, bar, old = ?change.old, new = ?change.new, "PCI BAR moved");
            if let Some(cb) = self.bar_callback.as_mut() {
                cb(&change);
            }
        }
    }

    /// The ISA IRQ a function's interrupt pin reaches through the PIIX
    /// router: its pin, swizzled by slot onto PIRQA-D, then the PIRQ route
    /// register. `None` without a pin, a router, or an enabled route.
    pub fn routed_irq(&self, address: PciAddress) -> Option<u8> {
        let pin = self.device(address)?.lock().config().interrupt_pin()?;
        let router = self.device(PIIX_ISA_ADDRESS)?;
        let route = router.lock().config().u8_at(usize::from(PIRQRC_FIRST) + pirq_of(address.device, pin));
        (route & PIRQ_ROUTE_DISABLED == 0).then_some(route & PIRQ_IRQ_MASK)
    }

    /// Writes each function's Interrupt Line register with its routed IRQ
    /// (0xFF where there is none), as a BIOS does after routing the PIRQs.
    pub fn program_interrupt_lines(&mut self) {
        let addresses: Vec<PciAddress> = self.devices().map(|(a, _)| a).collect();
        for address in addresses {
            let line = self.routed_irq(address).unwrap_or(0xff);
            if let Some(dev) = self.device(address) {
                dev.lock().config_mut().set_u8(PCI_INTERRUPT_LINE, line);
            }
        }
    }

    /// The function CONFIG_ADDRESS selects, with the register offset.
    fn selected(&self) -> Option<(PciAddress, u8)> {
        let a = self.config_address;
        if a & ADDR_ENABLE == 0 {
            return None;
        }
        let address = PciAddress {
            bus: (a >> ADDR_BUS_SHIFT) as u8,
            device: ((a >> ADDR_DEVICE_SHIFT) & 0x1f) as u8,
            function: ((a >> ADDR_FUNCTION_SHIFT) & 0x7) as u8,
        };
        Some((address, (a & ADDR_REGISTER_MASK) as u8))
    }

    fn log_access(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(
                target: "devices",
                offset,
                size,
                "PCI config ports: CONFIG_ADDRESS takes dwords and CONFIG_DATA accesses stay inside its dword; ignored (logged once)"
            );
        }
    }
}

/// The saved state of the root: the CONFIG_ADDRESS latch. The functions on
/// the bus save their own states, configuration spaces included; which
/// functions sit where is the machine's construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PciRootState {
    /// CONFIG_ADDRESS (0xCF8).
    pub config_address: u32,
}

/// Restore refuses CONFIG_ADDRESS bits that do not exist (30:24, 1:0).
impl Persist for PciRoot {
    type State = PciRootState;

    fn save(&self) -> PciRootState {
        PciRootState { config_address: self.config_address }
    }

    fn restore(&mut self, state: &PciRootState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl PciRoot {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &PciRootState) -> Result<(), PersistError> {
        PersistError::check(state.config_address & !ADDR_WRITABLE == 0, "PCI root", "config_address", || {
            format!("is {:#010x}; bits 30:24 and 1:0 are reserved", state.config_address)
        })
    }

    /// Loads a state [`PciRoot::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &PciRootState) {
        self.config_address = state.config_address;
    }
}

impl BusDevice for PciRoot {
    fn debug_label(&self) -> String {
        "PCI host (0xcf8)".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.config_address.to_le_bytes()),
            (RESET_OFFSET, 1) => match &self.reset_register {
                Some(reset) => reset.lock().read(0, data),
                None => data.fill(0xff),
            },
            (4..=7, 1 | 2 | 4) if offset - DATA_OFFSET + data.len() as u64 <= 4 => match self.selected() {
                Some((address, reg)) => self.config_read(address, reg + (offset - DATA_OFFSET) as u8, data),
                None => data.fill(0xff),
            },
            // Byte and word accesses at 0xCF8-0xCFB pass through to nothing.
            (0..=3, 1 | 2) => data.fill(0xff),
            _ => {
                self.log_access(offset, data.len());
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[b0, b1, b2, b3]) => {
                self.config_address = u32::from_le_bytes([b0, b1, b2, b3]) & ADDR_WRITABLE;
            }
            (RESET_OFFSET, [_]) => {
                if let Some(reset) = &self.reset_register {
                    reset.lock().write(0, data);
                }
            }
            (4..=7, _) if matches!(data.len(), 1 | 2 | 4) && offset - DATA_OFFSET + data.len() as u64 <= 4 => {
                if let Some((address, reg)) = self.selected() {
                    self.config_write(address, reg + (offset - DATA_OFFSET) as u8, data);
                }
            }
            (0..=3, _) if matches!(data.len(), 1 | 2) => {}
            _ => self.log_access(offset, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{PciConfigSpace, PCI_COMMAND};
    use crate::pci::{PciDevice, PciInterruptPin};
    use crate::power::VmEvents;
    use parking_lot::Mutex;

    struct Nic {
        config: PciConfigSpace,
    }

    impl PciDevice for Nic {
        fn debug_label(&self) -> String {
            "test nic".into()
        }
        fn config(&self) -> &PciConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfigSpace {
            &mut self.config
        }
    }

    fn nic() -> SharedPciDevice {
        let mut config = PciConfigSpace::new(0x8086, 0x100e, 0x02_00_00, 3);
        config.add_bar(0, PciBarKind::Memory32 { prefetchable: false }, 0x2_0000).unwrap();
        config.add_bar(1, PciBarKind::Io, 0x40).unwrap();
        config.set_interrupt_pin(Some(PciInterruptPin::IntA));
        Arc::new(Mutex::new(Nic { config }))
    }

    struct Rig {
        root: Arc<Mutex<PciRoot>>,
        bus: crate::bus::Bus,
        changes: Arc<Mutex<Vec<BarChange>>>,
    }

    impl Rig {
        fn new() -> Self {
            let root = Arc::new(Mutex::new(PciRoot::new()));
            let changes = Arc::new(Mutex::new(Vec::new()));
            let c = changes.clone();
            root.lock().set_bar_callback(Box::new(move |ch| c.lock().push(*ch)));
            root.lock().add_device(PciAddress::new(3, 0).unwrap(), nic()).unwrap();
            let mut bus = crate::bus::Bus::new();
            let mut mmio = crate::bus::Bus::new();
            let shared: SharedDevice = root.clone();
            for m in PciRoot::bus_mappings(&shared) {
                m.insert_into(&mut bus, &mut mmio).unwrap();
            }
            Self { root, bus, changes }
        }
        fn select(&self, device: u32, function: u32, reg: u32) {
            let a = 0x8000_0000 | (device << 11) | (function << 8) | reg;
            self.bus.write(0xcf8, &a.to_le_bytes());
        }
        fn inl(&self, port: u64) -> u32 {
            let mut d = [0u8; 4];
            self.bus.read(port, &mut d);
            u32::from_le_bytes(d)
        }
        fn cfg_read(&self, device: u32, reg: u32) -> u32 {
            self.select(device, 0, reg);
            self.inl(0xcfc)
        }
        fn cfg_write(&self, device: u32, reg: u32, v: u32) {
            self.select(device, 0, reg);
            self.bus.write(0xcfc, &v.to_le_bytes());
        }
    }

    #[test]
    fn config_address_register() {
        let r = Rig::new();
        r.bus.write(0xcf8, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(r.inl(0xcf8), 0x80ff_fffc);
        // Linux's type 1 probe: a byte write to 0xCFB, then the dword.
        r.bus.write(0xcfb, &[0x01]);
        r.bus.write(0xcf8, &0x8000_0000u32.to_le_bytes());
        assert_eq!(r.inl(0xcf8), 0x8000_0000);
        let mut w = [0u8; 2];
        r.bus.read(0xcf8, &mut w);
        assert_eq!(w, [0xff, 0xff], "word reads pass through");
    }

    #[test]
    fn present_and_absent_functions() {
        let r = Rig::new();
        assert_eq!(r.cfg_read(3, 0), 0x100e_8086);
        assert_eq!(r.cfg_read(4, 0), 0xffff_ffff);
        r.select(3, 1, 0);
        assert_eq!(r.inl(0xcfc), 0xffff_ffff, "function 1 is absent");
        r.bus.write(0xcf8, &(0x8001_1800u32).to_le_bytes()); // bus 1
        assert_eq!(r.inl(0xcfc), 0xffff_ffff);
        r.bus.write(0xcf8, &(0x0000_1800u32).to_le_bytes()); // enable clear
        assert_eq!(r.inl(0xcfc), 0xffff_ffff);
    }

    #[test]
    fn byte_and_word_accesses_at_any_offset() {
        let r = Rig::new();
        r.select(3, 0, 0);
        let mut b = [0u8];
        r.bus.read(0xcfd, &mut b);
        assert_eq!(b, [0x80]);
        let mut w = [0u8; 2];
        r.bus.read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x100e);
        r.select(3, 0, 0x08);
        r.bus.read(0xcff, &mut b);
        assert_eq!(b, [0x02], "class code");
        r.select(3, 0, 0x3c);
        r.bus.write(0xcfc, &[10]);
        r.bus.read(0xcfd, &mut b);
        assert_eq!(b, [1], "interrupt pin INTA");
        assert_eq!(r.cfg_read(3, 0x3c) & 0xff, 10);
        let mut d = [0u8; 4];
        r.bus.read(0xcfe, &mut d[..3]);
        assert_eq!(&d[..3], &[0xff; 3], "a 3-byte access is refused");
        r.bus.read(0xcfd, &mut d);
        assert_eq!(d, [0xff; 4], "a dword at 0xCFD would cross the dword");
    }

    #[test]
    fn bar_sizing_and_programming_reports_moves() {
        let r = Rig::new();
        r.cfg_write(3, 0x10, 0xffff_ffff);
        assert_eq!(r.cfg_read(3, 0x10), 0xfffe_0000);
        r.cfg_write(3, 0x14, 0xffff_ffff);
        assert_eq!(r.cfg_read(3, 0x14), 0xffff_ffc1);
        assert!(r.changes.lock().is_empty(), "decoding is off while sizing");
        r.cfg_write(3, 0x10, 0xfebc_0000);
        r.cfg_write(3, 0x14, 0xc000);
        r.cfg_write(3, PCI_COMMAND as u32, 0x0007);
        let changes = r.changes.lock().clone();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].bar, 0);
        assert_eq!((changes[0].old, changes[0].new), (None, Some(0xfebc_0000)));
        assert_eq!(changes[0].size, 0x2_0000);
        assert_eq!(changes[1].kind, PciBarKind::Io);
        assert_eq!(changes[1].new, Some(0xc000));
        r.cfg_write(3, 0x10, 0xfea0_0000);
        let last = *r.changes.lock().last().unwrap();
        assert_eq!((last.old, last.new), (Some(0xfebc_0000), Some(0xfea0_0000)));
    }

    #[test]
    fn reset_register_shares_the_address_port() {
        let r = Rig::new();
        let events = Arc::new(VmEvents::new());
        let reset: SharedDevice = Arc::new(Mutex::new(crate::legacy::acpi_pm::ResetControl::new(events.clone())));
        r.root.lock().set_reset_register(reset);
        r.bus.write(0xcf8, &0x8000_1800u32.to_le_bytes());
        r.bus.write(0xcf9, &[0x06]);
        assert_eq!(events.take(), Some(crate::power::VmEvent::Reset));
        assert_eq!(r.inl(0xcf8), 0x8000_1800, "the address register is untouched");
        let mut b = [0u8];
        r.bus.read(0xcf9, &mut b);
        assert_eq!(b, [0x02]);
    }

    #[test]
    fn add_device_checks_the_slot() {
        let r = Rig::new();
        let mut root = r.root.lock();
        let err = root.add_device(PciAddress::new(3, 0).unwrap(), nic()).unwrap_err();
        assert!(matches!(err, PciError::SlotTaken { .. }));
        let far = PciAddress { bus: 1, device: 0, function: 0 };
        assert!(matches!(root.add_device(far, nic()), Err(PciError::NoSuchBus { .. })));
        assert!(root.device(far).is_none());
        assert_eq!(root.devices().count(), 1);
        assert_eq!(root.routed_irq(PciAddress::new(3, 0).unwrap()), None, "no router");
        assert!(format!("{root:?}").contains("PciRoot"));
        assert_eq!(root.debug_label(), "PCI host (0xcf8)");
    }

    #[test]
    fn the_address_latch_round_trips_and_selects_the_same_register() {
        let r = Rig::new();
        r.select(3, 0, 0x08);
        let fresh = Rig::new();
        let state = persist::assert_round_trip(&*r.root.lock(), &mut *fresh.root.lock());
        assert_eq!(state.config_address, 0x8000_1808);
        assert_eq!(fresh.inl(0xcf8), 0x8000_1808);
        assert_eq!(fresh.inl(0xcfc), r.inl(0xcfc), "CONFIG_DATA reads the class code of 00:03.0");
        assert_eq!(fresh.inl(0xcfc), 0x0200_0003);
    }

    #[test]
    fn reserved_address_bits_are_refused() {
        let r = Rig::new();
        r.select(3, 0, 0x3c);
        let mut root = r.root.lock();
        for bad in [0x8100_0000, 0x8000_1801, 0x7f00_0000] {
            let e = persist::assert_refused(&mut *root, &PciRootState { config_address: bad });
            assert_eq!(e.field, "config_address");
        }
    }
}
