//! The machine's network cards: each `--nic` option becomes a backend
//! (`net::open`) behind an e1000 or virtio-net PCI function in slots 3, 4,
//! ..., whose BARs are mapped wherever the guest programs them, and one I/O
//! thread that polls the backends.
//!
//! BAR mapping. The machine's buses are fixed once it runs, so two windows
//! are registered on them up front: the PCI I/O ports 0x1000-0xFFFF and the
//! 32-bit PCI memory hole up to the I/O APIC. Each window holds a bus of
//! its own where the BARs go. The PCI root's BAR callback runs inside the
//! guest's configuration write, so it only queues the change; the window
//! applies its queue before its next access, so a guest that programs a BAR
//! and uses it at once finds it mapped.
//!
//! Interrupts. Each function's INTA# goes through the PIIX3 router
//! (`PcChipset::pci_intx_line`), which the DSDT's `_PRT` describes. The I/O
//! thread raises it when it delivers frames; the interrupt controller's
//! kick wakes a halted CPU.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::bus::{Bus, BusDevice, SharedDevice};
use devices::e1000::E1000;
use devices::msi::MsiSink;
use devices::nic::io::SharedNic;
use devices::nic::{nth_mac, NetIoThread, NicStats};
use devices::pc::PcChipset;
use devices::pci::msix::MAX_VECTORS;
use devices::pci::{BarChange, PciAddress, PciBarKind, PciInterruptPin, SharedPciDevice};
use devices::virtio::VirtioPci;
use devices::virtio_net::{VirtioNet, VirtioNetPci};
use mmu::GuestMemory;
use parking_lot::Mutex;

use crate::error::Error;

/// The slot of the first NIC (QEMU's first free slot on a PC is 3).
pub const FIRST_NIC_SLOT: u8 = 3;
/// PCI I/O BARs go here (Linux allocates from 0x1000 up).
const PCI_IO_WINDOW: (u64, u64) = (0x1000, 0xf000);
/// PCI memory BARs go here: from the PCI hole to the I/O APIC.
const PCI_MMIO_WINDOW: (u64, u64) = (mmu::PCI_HOLE_START, 0xfec0_0000 - mmu::PCI_HOLE_START);

/// A NIC model by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    E1000,
    VirtioNet,
}

impl Model {
    fn parse(name: Option<&str>) -> Result<Self, String> {
        match name.unwrap_or("e1000") {
            "e1000" | "e1000-82540em" | "82540em" => Ok(Model::E1000),
            "virtio" | "virtio-net" | "virtio-net-pci" => Ok(Model::VirtioNet),
            other => Err(format!("model '{other}' is unknown; use model=e1000 or model=virtio")),
        }
    }
}

/// BAR changes waiting for a window, and the BARs the window may map.
#[derive(Default)]
struct WindowQueue {
    pending: Mutex<Vec<BarChange>>,
    has_pending: AtomicBool,
    targets: Mutex<HashMap<(PciAddress, usize), SharedDevice>>,
}

/// One of the two windows: a bus of its own that BARs are mapped on.
struct BarWindow {
    label: &'static str,
    base: u64,
    len: u64,
    bus: Bus,
    queue: Arc<WindowQueue>,
}

impl BarWindow {
    /// Applies the queued BAR moves.
    fn sync(&mut self) {
        if !self.queue.has_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let changes = std::mem::take(&mut *self.queue.pending.lock());
        let targets = self.queue.targets.lock();
        for c in changes {
            let Some(dev) = targets.get(&(c.address, c.bar)) else { continue };
            if let Some(old) = c.old {
                self.bus.remove(old);
            }
            let Some(new) = c.new else { continue };
            let fits = new >= self.base && new.checked_add(c.size).is_some_and(|end| end <= self.base + self.len);
            if !fits {
                tracing::warn!(
                    target: "devices",
                    "PCI {} BAR{} at {new:#x} lies outside the {} ({:#x}-{:#x}); not mapped",
                    c.address,
                    c.bar,
                    self.label,
                    self.base,
                    self.base + self.len - 1
                );
                continue;
            }
            if let Err(e) = self.bus.insert(Arc::clone(dev), new, c.size) {
                tracing::warn!(target: "devices", "PCI {} BAR{}: {e}", c.address, c.bar);
            }
        }
    }
}

impl BusDevice for BarWindow {
    fn debug_label(&self) -> String {
        self.label.to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.sync();
        self.bus.read(self.base + offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.sync();
        self.bus.write(self.base + offset, data);
    }
}

/// The two windows and the PCI root's callback that feeds them.
struct BarWindows {
    io: Arc<WindowQueue>,
    mem: Arc<WindowQueue>,
}

impl BarWindows {
    fn install(chipset: &PcChipset, pio: &mut Bus, mmio: &mut Bus) -> Result<Self, Error> {
        let io = Arc::new(WindowQueue::default());
        let mem = Arc::new(WindowQueue::default());
        for (label, (base, len), queue, bus) in [
            ("PCI I/O window", PCI_IO_WINDOW, &io, &mut *pio),
            ("PCI memory window", PCI_MMIO_WINDOW, &mem, &mut *mmio),
        ] {
            let window = BarWindow { label, base, len, bus: Bus::new(), queue: Arc::clone(queue) };
            let shared: SharedDevice = Arc::new(Mutex::new(window));
            bus.insert(shared, base, len)?;
        }
        let (qi, qm) = (Arc::clone(&io), Arc::clone(&mem));
        chipset.pci.lock().set_bar_callback(Box::new(move |c: &BarChange| {
            // Only queue: the PCI root is locked here (see set_bar_callback).
            let q = if c.kind == PciBarKind::Io { &qi } else { &qm };
            q.pending.lock().push(*c);
            q.has_pending.store(true, Ordering::Release);
        }));
        Ok(Self { io, mem })
    }

    /// Lets the windows map `bars` of the function at `address`.
    fn register(&self, address: PciAddress, kinds: &[(usize, PciBarKind, SharedDevice)]) {
        for (bar, kind, dev) in kinds {
            let q = if *kind == PciBarKind::Io { &self.io } else { &self.mem };
            q.targets.lock().insert((address, *bar), Arc::clone(dev));
        }
    }
}

/// One NIC, for statistics.
enum NicHandle {
    E1000(Arc<Mutex<E1000>>),
    Virtio(Arc<Mutex<VirtioNetPci>>),
}

/// The machine's NICs and their I/O thread (which stops when this is dropped).
pub struct Nics {
    nics: Vec<(PciAddress, String, NicHandle)>,
    _io: NetIoThread,
}

impl Nics {
    /// One line per NIC: its address, model, MAC and traffic.
    pub fn stats_lines(&self) -> Vec<String> {
        self.nics
            .iter()
            .map(|(addr, what, h)| {
                let s: NicStats = match h {
                    NicHandle::E1000(d) => d.lock().stats(),
                    NicHandle::Virtio(d) => d.lock().device().stats(),
                };
                let merged = if s.rx_gso_packets > 0 {
                    format!("; {} frames merged into {} GSO packets", s.rx_merged, s.rx_gso_packets)
                } else {
                    String::new()
                };
                format!(
                    "nic {addr} {what}: tx {} frames {} bytes ({} dropped), rx {} packets {} bytes ({} dropped){merged}",
                    s.tx_frames, s.tx_bytes, s.tx_dropped, s.rx_frames, s.rx_bytes, s.rx_dropped
                )
            })
            .collect()
    }
}

/// Builds the NICs `specs` describe and plugs them into `chipset`'s PCI bus.
pub fn install(
    specs: &[net::NicSpec],
    chipset: &PcChipset,
    mem: &Arc<GuestMemory>,
    pio: &mut Bus,
    mmio: &mut Bus,
) -> Result<Option<Nics>, Error> {
    if specs.is_empty() {
        return Ok(None);
    }
    let windows = BarWindows::install(chipset, pio, mmio)?;
    let mut io = NetIoThread::new().map_err(|e| Error::Config(format!("cannot set up the NIC I/O thread: {e}")))?;
    let mut polled: Vec<(SharedNic, Option<OwnedFd>)> = Vec::new();
    let mut nics = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let what = |e: String| Error::Config(format!("--nic #{}: {e}", i + 1));
        let model = Model::parse(spec.model.as_deref()).map_err(what)?;
        let slot = u8::try_from(i).ok().and_then(|i| FIRST_NIC_SLOT.checked_add(i)).filter(|&s| s < 32);
        let Some(address) = slot.and_then(|s| PciAddress::new(s, 0)) else {
            return Err(what(format!("too many NICs: PCI slots {FIRST_NIC_SLOT}-31 are all taken")));
        };
        let mac = spec.mac.map_or_else(|| nth_mac(net::MacAddr::DEFAULT_GUEST.0, i as u32), |m| m.0);
        let backend = net::open(spec).map_err(|e| what(e.to_string()))?;
        match (model, spec.vectors) {
            (Model::E1000, Some(_)) => return Err(what("vectors= is for virtio: the e1000 has no MSI-X".into())),
            (_, Some(n)) if n > MAX_VECTORS => {
                return Err(what(format!("vectors={n}: a virtio NIC here has 0 (no MSI-X) to {MAX_VECTORS}")))
            }
            _ => {}
        }
        let irq = chipset.pci_intx_line(address.device, PciInterruptPin::IntA);
        let (pci, bars, handle, label): (SharedPciDevice, Vec<(usize, SharedDevice)>, NicHandle, &str) = match model {
            Model::E1000 => {
                let dev = E1000::new(backend, mac, Arc::clone(mem), irq, io.kick());
                let fd = dev.backend_wake_fd();
                let dev = Arc::new(Mutex::new(dev));
                polled.push((dev.clone(), fd));
                (dev.clone(), E1000::bar_devices(&dev), NicHandle::E1000(dev), "e1000")
            }
            Model::VirtioNet => {
                let net = VirtioNet::new(backend, mac, io.kick());
                let fd = net.backend_wake_fd();
                let msi: Arc<dyn MsiSink> = chipset.intc.clone();
                let pci = VirtioPci::new(net, Arc::clone(mem), irq);
                let vectors = spec.vectors.unwrap_or_else(|| pci.default_vectors());
                let dev = Arc::new(Mutex::new(pci.with_msix(msi, vectors)));
                polled.push((dev.clone(), fd));
                (dev.clone(), VirtioNetPci::bar_devices(&dev), NicHandle::Virtio(dev), "virtio-net")
            }
        };
        let kinds: Vec<(usize, PciBarKind, SharedDevice)> = {
            let d = pci.lock();
            bars.into_iter().filter_map(|(bar, dev)| Some((bar, d.config().bar(bar)?.kind, dev))).collect()
        };
        chipset.add_pci_device(address, pci).map_err(|e| what(e.to_string()))?;
        windows.register(address, &kinds);
        let mac_s = net::MacAddr(mac).to_string();
        tracing::info!(target: "devices", "PCI {address}: {label}, MAC {mac_s}");
        nics.push((address, format!("{label} {mac_s}"), handle));
    }
    io.start(polled).map_err(|e| Error::Config(format!("cannot start the NIC I/O thread: {e}")))?;
    Ok(Some(Nics { nics, _io: io }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-byte register.
    struct Reg(u8);

    impl BusDevice for Reg {
        fn debug_label(&self) -> String {
            "reg".into()
        }
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn windows_follow_the_bars_the_guest_programs() {
        let queue = Arc::new(WindowQueue::default());
        let addr = PciAddress::new(3, 0).unwrap();
        let dev: SharedDevice = Arc::new(Mutex::new(Reg(7)));
        queue.targets.lock().insert((addr, 0), dev);
        let base = 0xc000_0000;
        let mut w = BarWindow { label: "test window", base, len: 0x100_0000, bus: Bus::new(), queue: queue.clone() };
        let push = |bar: usize, old: Option<u64>, new: Option<u64>| {
            let kind = PciBarKind::Memory32 { prefetchable: false };
            queue.pending.lock().push(BarChange { address: addr, bar, kind, size: 0x1000, old, new });
            queue.has_pending.store(true, Ordering::Release);
        };
        let mut b = [0u8; 1];
        w.read(0, &mut b);
        assert_eq!(b, [0xff], "nothing mapped yet");
        push(0, None, Some(base));
        w.read(0, &mut b);
        assert_eq!(b, [7], "mapped before the first access after the change");
        w.write(0, &[9]);
        push(0, Some(base), Some(base + 0x10000));
        w.read(0, &mut b);
        assert_eq!(b, [0xff], "moved away");
        w.read(0x10000, &mut b);
        assert_eq!(b, [9]);
        // Decoding off, then a place outside the window, then a function the
        // window does not know: none maps.
        push(0, Some(base + 0x10000), None);
        w.read(0x10000, &mut b);
        assert_eq!(b, [0xff]);
        push(0, None, Some(0x1000));
        push(0, None, Some(base + 0xfff_f000));
        push(1, None, Some(base));
        w.read(0, &mut b);
        assert_eq!(b, [0xff]);
        assert_eq!(w.debug_label(), "test window");
    }

    #[test]
    fn models_by_name() {
        assert_eq!(Model::parse(None), Ok(Model::E1000));
        assert_eq!(Model::parse(Some("virtio")), Ok(Model::VirtioNet));
        assert_eq!(Model::parse(Some("virtio-net-pci")), Ok(Model::VirtioNet));
        assert!(Model::parse(Some("rtl8139")).unwrap_err().contains("unknown"));
    }
}
