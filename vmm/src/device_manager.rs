//! The device manager: the machine's PCI functions with host-side I/O, their
//! BAR windows, their doorbells and the I/O thread. Each `--nic` option
//! becomes a backend (`net::open`) behind an e1000 or virtio-net PCI
//! function in slots 3, 4, ..., and each `--disk` a virtio-blk function in
//! the slots after them. Their BARs are mapped wherever the guest programs
//! them, and one I/O thread, shared by NICs and disks, polls the backends
//! and serves the disk requests.
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
//!
//! Doorbells. Each virtio queue has an eventfd that the I/O thread waits
//! on ([`devices::nic::Doorbell`]). Under KVM the machine attaches it to the
//! queue's notification writes (the legacy QUEUE_NOTIFY port with the
//! queue's index as datamatch, and the queue's address in the modern BAR),
//! wherever the guest maps those BARs ([`DeviceManager::attach_doorbells`]): KVM
//! then signals the eventfd instead of exiting, and the I/O thread
//! transmits while the vCPU runs on.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::bus::{Bus, BusDevice, SharedDevice};
use devices::display::{StdVga, StdVgaState};
use devices::floppy::{FloppyController, FloppyState};
use devices::ide::{IdeController, IdeSlot, IdeState, PIIX_IDE_ADDRESS};
use devices::intc::msi::MsiSink;
use devices::io_thread::SharedIoDevice;
use devices::legacy::dma8237::{IsaDma, IsaDmaState};
use devices::nic::e1000::{E1000State, E1000};
use devices::nic::{nth_mac, Doorbell, IoThread, NicStats};
use devices::pc::PcChipset;
use devices::pci::config::{PCI_DEVICE_ID, PCI_ROM_SLOT, PCI_VENDOR_ID};
use devices::pci::msix::MAX_VECTORS;
use devices::pci::rom::OptionRom;
use devices::pci::{BarChange, PciAddress, PciBarKind, PciInterruptPin, SharedPciDevice};
use devices::usb::{Uhci, UhciState, UsbDeviceKind, UHCI_ADDRESS};
use devices::virtio::blk::{VirtioBlk, VirtioBlkPci, VirtioBlkState};
use devices::virtio::console::{VirtioConsole, VirtioConsolePci, VirtioConsoleState};
use devices::virtio::net::{VirtioNet, VirtioNetPci, VirtioNetState};
use devices::virtio::pci::Doorbell as BellSpec;
use devices::virtio::pci::VirtioPciState;
use devices::virtio::rng::{FileSource, RateLimit, VirtioRng, VirtioRngPci, VirtioRngState};
use devices::virtio::VirtioPci;
use mmu::GuestMemory;
use parking_lot::Mutex;
use persist::{Persist, PersistError};

use crate::error::Error;

/// Where the standard VGA sits, as QEMU puts it.
const VGA_ADDRESS: PciAddress = PciAddress { bus: 0, device: 2, function: 0 };
/// The slot of the first NIC (QEMU's first free slot on a PC is 3).
pub const FIRST_NIC_SLOT: u8 = 3;

/// The slot of the `index`th function from [`FIRST_NIC_SLOT`] on (NICs,
/// then disks, entropy devices and virtio-serial), while bus 0 has one.
pub(crate) fn function_slot(index: usize) -> Option<u8> {
    u8::try_from(index).ok().and_then(|i| FIRST_NIC_SLOT.checked_add(i)).filter(|&s| s < 32)
}

/// A virtio function around `model` at `address`: INTA#, and MSI-X with
/// the transport's default vector count.
fn virtio_function<D: devices::virtio::VirtioDevice>(
    chipset: &PcChipset,
    mem: &Arc<GuestMemory>,
    address: PciAddress,
    model: D,
) -> Arc<Mutex<VirtioPci<D>>> {
    let irq = chipset.pci_intx_line(address.device, PciInterruptPin::IntA);
    let msi: Arc<dyn MsiSink> = chipset.intc.clone();
    let pci = VirtioPci::new(model, Arc::clone(mem), irq);
    let vectors = pci.default_vectors();
    Arc::new(Mutex::new(pci.with_msix(msi, vectors)))
}
/// PCI I/O BARs go here (Linux allocates from 0x1000 up).
const PCI_IO_WINDOW: (u64, u64) = (0x1000, 0xf000);
/// Where PCI memory BARs are decoded in a guest of `ram_size` bytes: from
/// the end of low RAM (the PCI hole's start once RAM reaches it) up to the
/// I/O APIC, base and length, as QEMU's i440FX decodes them. SeaBIOS
/// places its BARs high in it; OVMF starts at 2 GiB for a guest with less
/// RAM than that. The DSDT's _CRS gives the same window.
pub fn pci_mmio_window(ram_size: u64) -> (u64, u64) {
    let start = ram_size.min(mmu::PCI_HOLE_START);
    (start, PCI_MMIO_END - start)
}

/// The end of the PCI memory window: the I/O APIC.
const PCI_MMIO_END: u64 = 0xfec0_0000;

/// A NIC model by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    E1000,
    VirtioNet,
}

impl Model {
    /// The model's name in logs.
    fn label(self) -> &'static str {
        match self {
            Model::E1000 => "e1000",
            Model::VirtioNet => "virtio-net",
        }
    }

    /// The iPXE ROM QEMU gives the model by default.
    fn default_rom(self) -> &'static str {
        match self {
            Model::E1000 => "efi-e1000.rom",
            Model::VirtioNet => "efi-virtio.rom",
        }
    }

    fn parse(name: Option<&str>) -> Result<Self, String> {
        match name.unwrap_or("e1000") {
            "e1000" | "e1000-82540em" | "82540em" => Ok(Model::E1000),
            "virtio" | "virtio-net" | "virtio-net-pci" => Ok(Model::VirtioNet),
            other => Err(format!("model '{other}' is unknown; use model=e1000 or model=virtio")),
        }
    }
}

/// Whether `size` bytes at `at` lie inside `window` (base, length).
fn inside(window: (u64, u64), at: u64, size: u64) -> bool {
    at >= window.0 && at.checked_add(size).is_some_and(|end| end <= window.0 + window.1)
}

/// Where a doorbell eventfd listens: `len` bytes (0: any size) written to
/// port or physical address `addr`, of the value `datamatch` if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorbellSite {
    pub pio: bool,
    pub addr: u64,
    pub len: u32,
    pub datamatch: Option<u64>,
}

/// Attaches (`true`) or detaches (`false`) an eventfd at a site: the
/// hypervisor's ioeventfd.
pub type AttachFn = Box<dyn FnMut(BorrowedFd<'_>, DoorbellSite, bool) -> Result<(), String> + Send>;

/// One doorbell of one function.
struct BellSpot {
    address: PciAddress,
    spec: BellSpec,
    bell: Doorbell,
    /// Where the hypervisor has it attached now.
    at: Option<DoorbellSite>,
}

impl BellSpot {
    /// Reports a refusal: the register write still works, through the vCPU
    /// thread.
    fn refused(&self, site: DoorbellSite, e: &str) {
        let space = if site.pio { "port " } else { "" };
        tracing::warn!(target: "devices", "PCI {} queue {} doorbell at {space}{:#x}: {e}", self.address, self.spec.queue, site.addr);
    }
}

/// The doorbells, where their BARs are, and the hypervisor's hook; and
/// the standard VGA's VRAM, which guest memory decodes where its BAR0 is.
/// Both follow a BAR move at once.
struct Doorbells {
    spots: Vec<BellSpot>,
    /// The guest memory that decodes the VGA's VRAM, when there is one.
    vram: Option<Arc<GuestMemory>>,
    /// Where each BAR that has doorbells is decoded, inside its window
    /// (port space or not, base).
    bases: HashMap<(PciAddress, usize), (bool, u64)>,
    attach: Option<AttachFn>,
    /// The PCI memory window ([`pci_mmio_window`]).
    mmio_window: (u64, u64),
}

impl Doorbells {
    fn new(mmio_window: (u64, u64)) -> Self {
        Doorbells { spots: Vec::new(), vram: None, bases: HashMap::new(), attach: None, mmio_window }
    }

    /// Follows a BAR the guest moved (or turned on or off).
    fn bar_moved(&mut self, c: &BarChange) {
        if let Some(mem) = &self.vram {
            if (c.address, c.bar) == (VGA_ADDRESS, devices::display::LFB_BAR) {
                let at = c.new.filter(|&at| inside(self.mmio_window, at, c.size));
                if let Err(e) = mem.map_vram(at) {
                    tracing::warn!(target: "devices", "standard VGA: the framebuffer stays on the bus: {e}");
                }
            }
        }
        let key = (c.address, c.bar);
        if !self.spots.iter().any(|s| (s.address, s.spec.bar) == key) {
            return;
        }
        let pio = c.kind == PciBarKind::Io;
        let window = if pio { PCI_IO_WINDOW } else { self.mmio_window };
        let new = c.new.filter(|&at| inside(window, at, c.size)).map(|at| (pio, at));
        let old = match new {
            Some(n) => self.bases.insert(key, n),
            None => self.bases.remove(&key),
        };
        if old != new {
            self.detach_bar(key);
            if let Some(base) = new {
                self.attach_bar(key, base);
            }
        }
    }

    /// Attaches the doorbells of BAR `key`, decoded at `base`.
    fn attach_bar(&mut self, key: (PciAddress, usize), (pio, base): (bool, u64)) {
        let Some(f) = self.attach.as_mut() else { return };
        for s in self.spots.iter_mut().filter(|s| (s.address, s.spec.bar) == key) {
            let site = DoorbellSite { pio, addr: base + s.spec.offset, len: s.spec.len, datamatch: s.spec.datamatch };
            match f(s.bell.fd.as_fd(), site, true) {
                Ok(()) => s.at = Some(site),
                Err(e) => s.refused(site, &e),
            }
        }
    }

    /// Detaches the attached doorbells of BAR `key`.
    fn detach_bar(&mut self, key: (PciAddress, usize)) {
        let Some(f) = self.attach.as_mut() else { return };
        for s in self.spots.iter_mut().filter(|s| (s.address, s.spec.bar) == key) {
            if let Some(site) = s.at.take() {
                if let Err(e) = f(s.bell.fd.as_fd(), site, false) {
                    s.refused(site, &e);
                }
            }
        }
    }

    /// How many doorbells are attached.
    fn attached(&self) -> usize {
        self.spots.iter().filter(|s| s.at.is_some()).count()
    }

    /// Replaces the hook: the doorbells leave the old one and join the new.
    fn set_attach(&mut self, attach: Option<AttachFn>) {
        let bars: Vec<_> = self.bases.iter().map(|(k, v)| (*k, *v)).collect();
        for (key, _) in &bars {
            self.detach_bar(*key);
        }
        self.attach = attach;
        for (key, base) in bars {
            self.attach_bar(key, base);
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
    /// Applies the queued BAR moves. The moves of one BAR since the last
    /// access fold into one, from where it was mapped to where it ends:
    /// sizing a 64-bit BAR passes through addresses (all ones in one half)
    /// that nothing could reach.
    fn sync(&mut self) {
        if !self.queue.has_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut changes: Vec<BarChange> = Vec::new();
        for c in std::mem::take(&mut *self.queue.pending.lock()) {
            match changes.iter_mut().find(|f| (f.address, f.bar) == (c.address, c.bar)) {
                Some(f) => f.new = c.new,
                None => changes.push(c),
            }
        }
        let targets = self.queue.targets.lock();
        for c in changes.into_iter().filter(|c| c.old != c.new) {
            let Some(dev) = targets.get(&(c.address, c.bar)) else { continue };
            if let Some(old) = c.old {
                self.bus.remove(old);
            }
            let Some(new) = c.new else { continue };
            if !inside((self.base, self.len), new, c.size) {
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

/// The two windows and the PCI root's callback that feeds them (and the
/// doorbells).
struct BarWindows {
    io: Arc<WindowQueue>,
    mem: Arc<WindowQueue>,
    doorbells: Arc<Mutex<Doorbells>>,
}

impl BarWindows {
    fn install(chipset: &PcChipset, pio: &mut Bus, mmio: &mut Bus, mmio_window: (u64, u64)) -> Result<Self, Error> {
        let io = Arc::new(WindowQueue::default());
        let mem = Arc::new(WindowQueue::default());
        for (label, (base, len), queue, bus) in
            [("PCI I/O window", PCI_IO_WINDOW, &io, &mut *pio), ("PCI memory window", mmio_window, &mem, &mut *mmio)]
        {
            let window = BarWindow { label, base, len, bus: Bus::new(), queue: Arc::clone(queue) };
            let shared: SharedDevice = Arc::new(Mutex::new(window));
            bus.insert(shared, base, len)?;
        }
        let (qi, qm) = (Arc::clone(&io), Arc::clone(&mem));
        let doorbells = Arc::new(Mutex::new(Doorbells::new(mmio_window)));
        let bells = Arc::clone(&doorbells);
        chipset.pci.lock().set_bar_callback(Box::new(move |c: &BarChange| {
            // Only queue: the PCI root is locked here (see set_bar_callback).
            let q = if c.kind == PciBarKind::Io { &qi } else { &qm };
            q.pending.lock().push(*c);
            q.has_pending.store(true, Ordering::Release);
            // Doorbells move at once: KVM matches the guest's next write
            // before any window sees it.
            bells.lock().bar_moved(c);
        }));
        Ok(Self { io, mem, doorbells })
    }

    /// Puts `pci` on `chipset`'s bus at `address` and lets the windows map
    /// its `bars` (BAR index, device) as the kinds its header gives them.
    fn plug(
        &self,
        chipset: &PcChipset,
        address: PciAddress,
        pci: SharedPciDevice,
        bars: Vec<(usize, SharedDevice)>,
    ) -> Result<(), String> {
        let kinds: Vec<(usize, PciBarKind, SharedDevice)> = {
            let d = pci.lock();
            bars.into_iter().filter_map(|(bar, b)| Some((bar, d.config().bar(bar)?.kind, b))).collect()
        };
        chipset.add_pci_device(address, pci).map_err(|e| e.to_string())?;
        self.register(address, &kinds);
        Ok(())
    }

    /// Lets the windows map `bars` of the function at `address`.
    fn register(&self, address: PciAddress, kinds: &[(usize, PciBarKind, SharedDevice)]) {
        for (bar, kind, dev) in kinds {
            let q = if *kind == PciBarKind::Io { &self.io } else { &self.mem };
            q.targets.lock().insert((address, *bar), Arc::clone(dev));
        }
    }
}

/// One NIC, disk or the IDE controller, for statistics and saved state.
enum NicHandle {
    E1000(Arc<Mutex<E1000>>),
    Virtio(Arc<Mutex<VirtioNetPci>>),
    Disk(Arc<Mutex<VirtioBlkPci>>),
    Rng(Arc<Mutex<VirtioRngPci>>),
    Console(Arc<Mutex<VirtioConsolePci>>),
    Ide(Arc<Mutex<IdeController>>),
    Vga(Arc<Mutex<StdVga>>),
    Usb(Arc<Mutex<Uhci>>),
}

/// The floppy disk controller and its DMA controllers.
struct Floppy {
    dma: Arc<Mutex<IsaDma>>,
    fdc: Arc<Mutex<FloppyController>>,
    /// The images in A: and B:.
    labels: String,
}

/// Doorbells handed to a hypervisor ([`DeviceManager::attach_doorbells`]); dropping
/// this detaches them.
pub struct AttachedDoorbells<'a> {
    doorbells: &'a Mutex<Doorbells>,
}

impl AttachedDoorbells<'_> {
    /// How many doorbells are attached now.
    pub fn count(&self) -> usize {
        self.doorbells.lock().attached()
    }
}

impl Drop for AttachedDoorbells<'_> {
    fn drop(&mut self) {
        self.doorbells.lock().set_attach(None);
    }
}

/// The machine's NICs and disks, their BAR windows and doorbells, and their
/// I/O thread (which stops when this is dropped).
///
/// SMP: shared by every vCPU. Doorbells attach once per VM (KVM's
/// ioeventfds are per VM, not per vCPU); BAR windows apply their queued
/// changes under their own lock, whichever vCPU's access comes first.
pub struct DeviceManager {
    nics: Vec<(PciAddress, String, NicHandle)>,
    /// The floppy disk controller and the 8237 pair it transfers through,
    /// when a floppy drive is given.
    floppy: Option<Floppy>,
    doorbells: Arc<Mutex<Doorbells>>,
    /// The windows' queues of BAR moves (I/O, memory): a restore moves the
    /// BARs to where the saved state has them.
    bar_queues: [Arc<WindowQueue>; 2],
    io: IoThread,
    /// The pseudo-terminals of virtio-serial ports: each one's path and
    /// label.
    ptys: Vec<(std::path::PathBuf, String)>,
    /// The virtio-serial port on stdio, if one is: where typed bytes go.
    stdio: Option<devices::virtio::console::backends::StdioInput>,
}

impl DeviceManager {
    /// The pseudo-terminals of virtio-serial ports (`pty` backends): each
    /// one's path (`/dev/pts/N`) and label.
    pub fn ptys(&self) -> &[(std::path::PathBuf, String)] {
        &self.ptys
    }

    /// The virtio-serial port on stdio: where typed bytes go.
    pub fn stdio_port(&self) -> Option<devices::virtio::console::backends::StdioInput> {
        self.stdio.clone()
    }

    /// Holds the device I/O thread still (between two rounds of its
    /// work) until the returned value is dropped.
    pub fn hold_io(&self) -> devices::io_thread::IoHold {
        self.io.hold()
    }

    /// Hands the virtio queues' notification writes to `attach` (KVM's
    /// ioeventfd) until the returned guard is dropped: each doorbell is
    /// attached where its BAR is now, and follows the BAR when the guest
    /// moves it.
    pub fn attach_doorbells(&self, attach: AttachFn) -> AttachedDoorbells<'_> {
        self.doorbells.lock().set_attach(Some(attach));
        AttachedDoorbells { doorbells: &self.doorbells }
    }

    /// The USB controller, when there is one.
    pub fn usb(&self) -> Option<Arc<Mutex<Uhci>>> {
        self.nics.iter().find_map(|(_, _, h)| match h {
            NicHandle::Usb(d) => Some(d.clone()),
            _ => None,
        })
    }

    /// What the machine's timers must poll: the USB controller's frames.
    pub fn timer_sources(&self) -> Vec<Arc<dyn devices::clock::TimerSource>> {
        self.usb().into_iter().map(|u| u as Arc<dyn devices::clock::TimerSource>).collect()
    }

    /// The IDE controller, when there is one.
    pub fn ide(&self) -> Option<Arc<Mutex<IdeController>>> {
        self.nics.iter().find_map(|(_, _, h)| match h {
            NicHandle::Ide(d) => Some(d.clone()),
            _ => None,
        })
    }

    /// A machine reset: every function goes back to its power-on state
    /// (the NICs and virtio functions stop their DMA: the firmware that
    /// runs next owns the memory), keeping its PCI header.
    pub fn reset(&self) {
        for (_, _, h) in &self.nics {
            match h {
                NicHandle::E1000(d) => d.lock().system_reset(),
                NicHandle::Virtio(d) => d.lock().system_reset(),
                NicHandle::Disk(d) => d.lock().system_reset(),
                NicHandle::Rng(d) => d.lock().system_reset(),
                NicHandle::Console(d) => d.lock().system_reset(),
                NicHandle::Ide(d) => d.lock().reset(),
                NicHandle::Vga(d) => d.lock().reset(),
                NicHandle::Usb(d) => d.lock().reset(),
            }
        }
        if let Some(f) = &self.floppy {
            // The controller's lock before the DMA pair's, as in transfers.
            f.fdc.lock().reset();
            f.dma.lock().reset();
        }
    }

    /// One line per NIC: its address, model, MAC and traffic.
    pub fn stats_lines(&self) -> Vec<String> {
        let floppy = self.floppy.iter().map(|f| {
            let s = f.fdc.lock().stats();
            format!(
                "floppy 0x3f0 ({}): {} reads {} bytes, {} writes {} bytes, {} errors",
                f.labels, s.reads, s.read_bytes, s.writes, s.write_bytes, s.errors
            )
        });
        let lines: Vec<String> = floppy.collect();
        lines.into_iter().chain(self.pci_stats_lines()).collect()
    }

    fn pci_stats_lines(&self) -> Vec<String> {
        self.nics
            .iter()
            .map(|(addr, what, h)| {
                let (s, rings): (NicStats, u64) = match h {
                    NicHandle::Ide(d) => {
                        let d = d.lock();
                        let per: Vec<String> = IdeSlot::ALL
                            .iter()
                            .filter_map(|&slot| {
                                let s = d.drive_stats(slot);
                                let kind = d.kind(slot);
                                (kind != devices::ide::DriveKind::Empty).then(|| {
                                    format!(
                                        "{slot} ({kind:?}): {} reads {} bytes, {} writes {} bytes, {} flushes, {} errors",
                                        s.reads, s.read_bytes, s.writes, s.write_bytes, s.flushes, s.errors
                                    )
                                })
                            })
                            .collect();
                        return format!("disk {addr} {what}: {}", per.join("; "));
                    }
                    NicHandle::Vga(_) => return format!("display {addr} {what}"),
                    NicHandle::Usb(_) => return format!("usb {addr} {what}"),
                    NicHandle::Rng(_) => return format!("entropy {addr} {what}"),
                    NicHandle::Console(d) => {
                        let d = d.lock();
                        let c = d.device();
                        let per: Vec<String> = (0..c.port_count())
                            .filter_map(|i| {
                                let s = c.port_stats(i)?;
                                Some(format!("port {i}: {} bytes out, {} bytes in", s.tx_bytes, s.rx_bytes))
                            })
                            .collect();
                        return format!("serial {addr} {what}: {}", per.join("; "));
                    }
                    NicHandle::E1000(d) => (d.lock().stats(), 0),
                    NicHandle::Virtio(d) => {
                        let d = d.lock();
                        (d.device().stats(), d.doorbell_rings())
                    }
                    NicHandle::Disk(d) => {
                        let d = d.lock();
                        let s = d.device().stats();
                        let rings = d.doorbell_rings();
                        let rings = if rings > 0 { format!("; {rings} queue notifications by ioeventfd") } else { String::new() };
                        return format!(
                            "disk {addr} {what}: {} reads {} bytes, {} writes {} bytes, {} flushes, {} discards, \
                             {} write-zeroes, {} errors{rings}",
                            s.reads, s.read_bytes, s.writes, s.write_bytes, s.flushes, s.discards, s.write_zeroes, s.errors
                        );
                    }
                };
                let merged = if s.rx_gso_packets > 0 {
                    format!("; {} frames merged into {} GSO packets", s.rx_merged, s.rx_gso_packets)
                } else {
                    String::new()
                };
                let rings = if rings > 0 { format!("; {rings} queue notifications by ioeventfd") } else { String::new() };
                format!(
                    "nic {addr} {what}: tx {} frames {} bytes ({} dropped), rx {} packets {} bytes ({} dropped){merged}{rings}",
                    s.tx_frames, s.tx_bytes, s.tx_dropped, s.rx_frames, s.rx_bytes, s.rx_dropped
                )
            })
            .collect()
    }
}

/// The saved state of one PCI function the device manager owns.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PciFunctionState {
    /// An e1000, with its half-gathered packet.
    E1000(E1000State),
    /// A virtio-net function: its transport, queues and device.
    VirtioNet(VirtioPciState<VirtioNetState>),
    /// A virtio-blk function: its transport, queues and device.
    VirtioBlk(VirtioPciState<VirtioBlkState>),
    /// A virtio entropy function: its transport and queue.
    VirtioRng(VirtioPciState<VirtioRngState>),
    /// The virtio-serial function: its transport, queues and ports.
    VirtioConsole(Box<VirtioPciState<VirtioConsoleState>>),
    /// The PIIX3 IDE function: its channels, drives and bus master.
    Ide(Box<IdeState>),
    /// The standard VGA: its registers and VRAM.
    Vga(Box<StdVgaState>),
    /// The UHCI controller and its devices.
    Usb(Box<UhciState>),
}

impl PciFunctionState {
    /// The function's model, as saved states and their errors name it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::E1000(_) => "e1000",
            Self::VirtioNet(_) => "virtio-net",
            Self::VirtioBlk(_) => "virtio-blk",
            Self::VirtioRng(_) => "virtio-rng",
            Self::VirtioConsole(_) => "virtio-serial",
            Self::Ide(_) => "IDE",
            Self::Vga(_) => "VGA",
            Self::Usb(_) => "USB",
        }
    }
}

/// The saved state of the device manager's functions, in PCI slot order.
///
/// The backends behind them are host resources and are not part of it:
/// a disk's contents are its image's, and a NIC's NAT is rebuilt from the
/// command line (its live host flows cannot be saved; see
/// `net::user::UserNetState`).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeviceManagerState {
    /// Each function's address and state.
    pub functions: Vec<(PciAddress, PciFunctionState)>,
    /// The floppy disk controller and the 8237 pair, when there are.
    #[cfg_attr(feature = "serde", serde(default))]
    pub floppy: Option<(Box<FloppyState>, IsaDmaState)>,
}

const DEVICE_MANAGER: &str = "device manager";

impl NicHandle {
    /// Where each BAR is decoded now, if it is.
    fn bar_regions(&self) -> [Option<(devices::pci::PciBar, u64)>; devices::pci::config::PCI_NUM_REGIONS] {
        fn of(
            d: &dyn devices::pci::PciDevice,
        ) -> [Option<(devices::pci::PciBar, u64)>; devices::pci::config::PCI_NUM_REGIONS] {
            std::array::from_fn(|i| d.config().bar_region(i))
        }
        match self {
            Self::E1000(d) => of(&*d.lock()),
            Self::Virtio(d) => of(&*d.lock()),
            Self::Disk(d) => of(&*d.lock()),
            Self::Rng(d) => of(&*d.lock()),
            Self::Console(d) => of(&*d.lock()),
            Self::Ide(d) => of(&*d.lock()),
            Self::Vga(d) => of(&*d.lock()),
            Self::Usb(d) => of(&*d.lock()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::E1000(_) => "e1000",
            Self::Virtio(_) => "virtio-net",
            Self::Disk(_) => "virtio-blk",
            Self::Rng(_) => "virtio-rng",
            Self::Console(_) => "virtio-serial",
            Self::Ide(_) => "IDE",
            Self::Vga(_) => "VGA",
            Self::Usb(_) => "USB",
        }
    }

    fn save(&self) -> PciFunctionState {
        match self {
            Self::E1000(d) => PciFunctionState::E1000(d.lock().save()),
            Self::Virtio(d) => PciFunctionState::VirtioNet(d.lock().save()),
            Self::Disk(d) => PciFunctionState::VirtioBlk(d.lock().save()),
            Self::Rng(d) => PciFunctionState::VirtioRng(d.lock().save()),
            Self::Console(d) => PciFunctionState::VirtioConsole(Box::new(d.lock().save())),
            Self::Ide(d) => PciFunctionState::Ide(Box::new(d.lock().save())),
            Self::Vga(d) => PciFunctionState::Vga(Box::new(d.lock().save())),
            Self::Usb(d) => PciFunctionState::Usb(Box::new(d.lock().save())),
        }
    }

    /// Restores `s`, which must be of this function's kind.
    fn restore(&self, s: &PciFunctionState) -> Result<(), PersistError> {
        match (self, s) {
            (Self::E1000(d), PciFunctionState::E1000(s)) => d.lock().restore(s),
            (Self::Virtio(d), PciFunctionState::VirtioNet(s)) => d.lock().restore(s),
            (Self::Disk(d), PciFunctionState::VirtioBlk(s)) => d.lock().restore(s),
            (Self::Rng(d), PciFunctionState::VirtioRng(s)) => d.lock().restore(s),
            (Self::Console(d), PciFunctionState::VirtioConsole(s)) => d.lock().restore(s),
            (Self::Ide(d), PciFunctionState::Ide(s)) => d.lock().restore(s),
            (Self::Vga(d), PciFunctionState::Vga(s)) => d.lock().restore(s),
            (Self::Usb(d), PciFunctionState::Usb(s)) => d.lock().restore(s),
            _ => Err(PersistError::new(
                DEVICE_MANAGER,
                "functions",
                format!("hold a {} state for the {} function", s.kind(), self.kind()),
            )),
        }
    }
}

/// Every function in slot order. A restore checks that the saved functions
/// are this machine's (same count, addresses and kinds), then restores them
/// one by one; when one refuses its state, those already restored get their
/// state from before back, so a refused restore changes nothing.
impl Persist for DeviceManager {
    type State = DeviceManagerState;

    fn save(&self) -> DeviceManagerState {
        DeviceManagerState {
            functions: self.nics.iter().map(|(addr, _, h)| (*addr, h.save())).collect(),
            floppy: self.floppy.as_ref().map(|f| (Box::new(f.fdc.lock().save()), f.dma.lock().save())),
        }
    }

    fn restore(&mut self, state: &DeviceManagerState) -> Result<(), PersistError> {
        PersistError::check_len(DEVICE_MANAGER, "functions", state.functions.len(), self.nics.len())?;
        PersistError::check(state.floppy.is_some() == self.floppy.is_some(), DEVICE_MANAGER, "floppy", || {
            "be there in both the state and this machine, or in neither".to_string()
        })?;
        if let (Some(f), Some((fdc, dma))) = (&self.floppy, &state.floppy) {
            f.fdc.lock().check_state(fdc)?;
            IsaDma::check_state(dma)?;
        }
        for ((addr, _, h), (saved_addr, s)) in self.nics.iter().zip(&state.functions) {
            PersistError::check(addr == saved_addr, DEVICE_MANAGER, "functions", || {
                format!("name a function at {saved_addr} where this machine has one at {addr}")
            })?;
            PersistError::check(h.kind() == s.kind(), DEVICE_MANAGER, "functions", || {
                format!("hold a {} state for the {} function at {addr}", s.kind(), h.kind())
            })?;
        }
        let before = self.save();
        let bars_before: Vec<_> = self.nics.iter().map(|(_, _, h)| h.bar_regions()).collect();
        for (i, ((_, _, h), (_, s))) in self.nics.iter().zip(&state.functions).enumerate() {
            if let Err(e) = h.restore(s) {
                for ((_, _, h), (_, old)) in self.nics.iter().zip(&before.functions).take(i) {
                    // A state this function just saved: it takes it back.
                    if let Err(again) = h.restore(old) {
                        tracing::error!(target: "devices", "a function refused its own state back: {again}");
                    }
                }
                return Err(e);
            }
        }
        if let (Some(f), Some((fdc, dma))) = (&self.floppy, &state.floppy) {
            // Both checked above.
            f.fdc.lock().load_state(fdc);
            f.dma.lock().load_state(dma);
        }
        // The BARs are where the state has them: the windows (and the
        // doorbells) follow, as when the guest moves them (in a new
        // process nothing was mapped yet).
        for ((addr, _, h), old) in self.nics.iter().zip(bars_before) {
            let new = h.bar_regions();
            for (bar, (o, n)) in old.iter().zip(new.iter()).enumerate() {
                if o == n {
                    continue;
                }
                let Some((def, _)) = o.or(*n) else { continue };
                let c = BarChange {
                    address: *addr,
                    bar,
                    kind: def.kind,
                    size: def.size,
                    old: o.map(|(_, base)| base),
                    new: n.map(|(_, base)| base),
                };
                let q = &self.bar_queues[usize::from(c.kind != PciBarKind::Io)];
                q.pending.lock().push(c);
                q.has_pending.store(true, Ordering::Release);
                self.doorbells.lock().bar_moved(&c);
            }
        }
        Ok(())
    }
}

/// Gives `pci` the expansion ROM `rom` and returns the device its ROM BAR
/// maps. A `default` ROM gets the function's IDs.
fn add_rom(pci: &SharedPciDevice, mut rom: OptionRom, default: bool) -> Result<SharedDevice, String> {
    let mut d = pci.lock();
    if default {
        let c = d.config();
        rom.patch_ids(c.u16_at(PCI_VENDOR_ID), c.u16_at(PCI_DEVICE_ID));
    }
    d.config_mut().add_rom(rom.size()).map_err(|e| format!("romfile: {e}"))?;
    Ok(Arc::new(Mutex::new(rom)))
}

/// One eventfd per queue of a virtio function, for both of its
/// notification writes (registered with the windows, to follow the BARs).
fn virtio_doorbells(
    specs: Vec<BellSpec>,
    nic: SharedIoDevice,
    address: PciAddress,
    windows: &BarWindows,
    bells: &mut Vec<Doorbell>,
) -> Result<(), String> {
    let mut per_queue: HashMap<u16, Doorbell> = HashMap::new();
    for spec in specs {
        let bell = match per_queue.get(&spec.queue) {
            Some(b) => b.clone(),
            None => {
                let b = Doorbell::new(nic.clone(), spec.queue)
                    .map_err(|e| format!("cannot make a doorbell eventfd: {e}"))?;
                bells.push(b.clone());
                per_queue.insert(spec.queue, b.clone());
                b
            }
        };
        windows.doorbells.lock().spots.push(BellSpot { address, spec, bell, at: None });
    }
    Ok(())
}

/// Builds the NICs `specs` describe and the virtio-blk functions of
/// `disks` (image, label), and plugs them into `chipset`'s PCI bus.
/// The PCI functions of the machine's own besides the NICs and disks.
pub(crate) struct Extra {
    /// The standard VGA, with `-vga std`.
    pub vga: Option<Arc<Mutex<StdVga>>>,
    /// The UHCI controller's devices, with `-usb`.
    pub usb: Option<Vec<UsbDeviceKind>>,
    /// The machine's clock, which the USB controller's frames follow.
    pub clock: devices::clock::SharedClock,
    /// Virtio entropy devices, after the disks.
    pub rng: Vec<crate::config::RngConfig>,
    /// The virtio-serial function's ports, after the entropy devices.
    pub vports: Vec<crate::config::VportConfig>,
    /// The boot order asks for a NIC's boot ROM (`n`): NICs without
    /// `romfile=` get their model's.
    pub net_boot: bool,
}

pub(crate) fn install(
    specs: &[net::NicSpec],
    placed: crate::storage::Placed,
    extra: Extra,
    chipset: &PcChipset,
    mem: &Arc<GuestMemory>,
    pio: &mut Bus,
    mmio: &mut Bus,
) -> Result<Option<DeviceManager>, Error> {
    let crate::storage::Placed { virtio: disks, ide, ide_kinds, floppy, floppy_labels } = placed;
    let Extra { vga, usb, clock, rng, vports, net_boot } = extra;
    if specs.is_empty()
        && disks.is_empty()
        && ide.is_none()
        && floppy.is_none()
        && vga.is_none()
        && usb.is_none()
        && rng.is_empty()
        && vports.is_empty()
    {
        return Ok(None);
    }
    let floppy = match floppy {
        None => None,
        Some(drives) => {
            let dma = Arc::new(Mutex::new(IsaDma::new(Arc::clone(mem))));
            let irq = chipset.irq_line(devices::floppy::FDC_IRQ);
            let fdc = FloppyController::new(drives, irq, Arc::clone(&dma)).map_err(|e| Error::Config(e.to_string()))?;
            chipset.rtc.lock().set_floppies(fdc.cmos_type(), fdc.cmos_equipment());
            let fdc = Arc::new(Mutex::new(fdc));
            for m in IsaDma::bus_mappings(&dma).into_iter().chain(FloppyController::bus_mappings(&fdc)) {
                m.insert_into(pio, mmio)?;
            }
            let labels = [("A:", &floppy_labels[0]), ("B:", &floppy_labels[1])]
                .iter()
                .filter_map(|(d, l)| l.as_ref().map(|l| format!("{d} {l}")))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::info!(target: "devices", "floppy disk controller at 0x3f0: {labels}");
            Some(Floppy { dma, fdc, labels })
        }
    };
    let windows = BarWindows::install(chipset, pio, mmio, pci_mmio_window(mem.ram_size()))?;
    let mut io = IoThread::new().map_err(|e| Error::Config(format!("cannot set up the NIC I/O thread: {e}")))?;
    let mut polled: Vec<(SharedIoDevice, Option<OwnedFd>)> = Vec::new();
    let mut bells: Vec<Doorbell> = Vec::new();
    let mut nics = Vec::new();
    if let Some(dev) = vga {
        if mem.vram().is_some() {
            windows.doorbells.lock().vram = Some(Arc::clone(mem));
        }
        for m in StdVga::bus_mappings(&dev) {
            m.insert_into(pio, mmio)?;
        }
        windows
            .plug(chipset, VGA_ADDRESS, dev.clone(), StdVga::bar_devices(&dev))
            .map_err(|e| Error::Config(format!("standard VGA: {e}")))?;
        let what = format!("standard VGA, {} MiB VRAM", dev.lock().vram_size() >> 20);
        tracing::info!(target: "devices", "PCI {VGA_ADDRESS}: {what}");
        nics.push((VGA_ADDRESS, what, NicHandle::Vga(dev)));
    }
    if let Some(kinds) = usb {
        let irq = chipset.pci_intx_line(UHCI_ADDRESS.device, PciInterruptPin::IntD);
        let what = format!("PIIX3 USB (UHCI): {kinds:?}");
        let dev = Uhci::new(Arc::clone(mem), irq, clock, kinds).map_err(Error::Config)?;
        let dev = Arc::new(Mutex::new(dev));
        windows
            .plug(chipset, UHCI_ADDRESS, dev.clone(), Uhci::bar_devices(&dev))
            .map_err(|e| Error::Config(format!("USB: {e}")))?;
        tracing::info!(target: "devices", "PCI {UHCI_ADDRESS}: {what}");
        nics.push((UHCI_ADDRESS, what, NicHandle::Usb(dev)));
    }
    if let Some(drives) = ide {
        let irq = |i: usize| chipset.irq_line(devices::ide::CHANNEL_IRQS[i]);
        let dev = Arc::new(Mutex::new(IdeController::new(drives, irq(0), irq(1), Arc::clone(mem))));
        for m in IdeController::bus_mappings(&dev) {
            m.insert_into(pio, mmio)?;
        }
        windows
            .plug(chipset, PIIX_IDE_ADDRESS, dev.clone(), IdeController::bar_devices(&dev))
            .map_err(|e| Error::Config(format!("IDE: {e}")))?;
        let what: Vec<String> = ide_kinds
            .iter()
            .zip(IdeSlot::ALL)
            .filter_map(|(k, slot)| k.as_ref().map(|(media, label)| format!("{slot} {media:?} {label}")))
            .collect();
        let what = format!("PIIX3 IDE ({})", what.join(", "));
        tracing::info!(target: "devices", "PCI {PIIX_IDE_ADDRESS}: {what}");
        nics.push((PIIX_IDE_ADDRESS, what, NicHandle::Ide(dev)));
    }
    for (i, spec) in specs.iter().enumerate() {
        let what = |e: String| Error::Config(format!("--nic #{}: {e}", i + 1));
        let model = Model::parse(spec.model.as_deref()).map_err(what)?;
        let Some(address) = function_slot(i).and_then(|s| PciAddress::new(s, 0)) else {
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
        let rom = crate::bios::nic_rom(&spec.rom, model.default_rom(), net_boot, model.label())
            .map_err(|e| what(e.to_string()))?;
        let label = model.label();
        let (pci, mut bars, handle): (SharedPciDevice, Vec<(usize, SharedDevice)>, NicHandle) = match model {
            Model::E1000 => {
                let dev = E1000::new(backend, mac, Arc::clone(mem), irq, io.kick());
                let fd = dev.backend_wake_fd();
                let dev = Arc::new(Mutex::new(dev));
                polled.push((dev.clone(), fd));
                (dev.clone(), E1000::bar_devices(&dev), NicHandle::E1000(dev))
            }
            Model::VirtioNet => {
                let net = VirtioNet::new(backend, mac, io.kick());
                let fd = net.backend_wake_fd();
                let msi: Arc<dyn MsiSink> = chipset.intc.clone();
                let pci = VirtioPci::new(net, Arc::clone(mem), irq);
                let vectors = spec.vectors.unwrap_or_else(|| pci.default_vectors());
                let dev = Arc::new(Mutex::new(pci.with_msix(msi, vectors)));
                polled.push((dev.clone(), fd));
                let specs = dev.lock().doorbells();
                virtio_doorbells(specs, dev.clone(), address, &windows, &mut bells).map_err(what)?;
                (dev.clone(), VirtioNetPci::bar_devices(&dev), NicHandle::Virtio(dev))
            }
        };
        if let Some((rom, default)) = rom {
            bars.push((PCI_ROM_SLOT, add_rom(&pci, rom, default).map_err(what)?));
        }
        windows.plug(chipset, address, pci, bars).map_err(what)?;
        let mac_s = net::MacAddr(mac).to_string();
        tracing::info!(target: "devices", "PCI {address}: {label}, MAC {mac_s}");
        nics.push((address, format!("{label} {mac_s}"), handle));
    }
    for (i, (disk, label)) in disks.into_iter().enumerate() {
        let what = |e: String| Error::Config(format!("--disk #{}: {e}", i + 1));
        let Some(address) = function_slot(specs.len() + i).and_then(|s| PciAddress::new(s, 0)) else {
            return Err(what(format!("too many PCI functions: slots {FIRST_NIC_SLOT}-31 are all taken")));
        };
        let blk = VirtioBlk::new(disk, &format!("ferrovm-disk{i}"), io.kick());
        let dev = virtio_function(chipset, mem, address, blk);
        polled.push((dev.clone(), None));
        let bell_specs = dev.lock().doorbells();
        virtio_doorbells(bell_specs, dev.clone(), address, &windows, &mut bells).map_err(what)?;
        windows.plug(chipset, address, dev.clone(), VirtioBlkPci::bar_devices(&dev)).map_err(what)?;
        tracing::info!(target: "devices", "PCI {address}: virtio-blk, {label}");
        nics.push((address, format!("virtio-blk {label}"), NicHandle::Disk(dev)));
    }
    let first_rng_slot = specs.len() + nics.iter().filter(|(_, _, h)| matches!(h, NicHandle::Disk(_))).count();
    for (i, r) in rng.iter().enumerate() {
        let what = |e: String| Error::Config(format!("virtio-rng #{}: {e}", i + 1));
        let Some(address) = function_slot(first_rng_slot + i).and_then(|s| PciAddress::new(s, 0)) else {
            return Err(what(format!("too many PCI functions: slots {FIRST_NIC_SLOT}-31 are all taken")));
        };
        let source = FileSource::open(&r.source).map_err(|e| what(e.to_string()))?;
        let mut model = VirtioRng::new(Box::new(source), io.kick());
        if let Some((max_bytes, period_ms)) = r.limit {
            let limit = RateLimit { max_bytes, period: std::time::Duration::from_millis(period_ms) };
            model = model.with_rate_limit(limit).map_err(|e| what(e.to_string()))?;
        }
        let dev = virtio_function(chipset, mem, address, model);
        polled.push((dev.clone(), None));
        windows.plug(chipset, address, dev.clone(), VirtioRngPci::bar_devices(&dev)).map_err(what)?;
        let label = format!("virtio-rng {}", r.source.display());
        tracing::info!(target: "devices", "PCI {address}: {label}");
        nics.push((address, label, NicHandle::Rng(dev)));
    }
    let (mut ptys, mut stdio) = (Vec::new(), None);
    if !vports.is_empty() {
        let what = |e: String| Error::Config(format!("virtio-serial: {e}"));
        let Some(address) = function_slot(first_rng_slot + rng.len()).and_then(|s| PciAddress::new(s, 0)) else {
            return Err(what(format!("too many PCI functions: slots {FIRST_NIC_SLOT}-31 are all taken")));
        };
        let mut ports = Vec::with_capacity(vports.len());
        for (i, v) in vports.iter().enumerate() {
            let spec = devices::virtio::console::backends::PortBackendSpec::parse(&v.backend)
                .map_err(|e| what(format!("port {i}: {e}")))?;
            let backend = spec.open().map_err(|e| what(format!("port {i} ({}): {e}", v.backend)))?;
            if let Some((path, label)) = backend.pty() {
                ptys.push((path.to_path_buf(), label.to_string()));
            }
            if let Some(input) = backend.stdio_input() {
                if stdio.is_some() {
                    return Err(what(format!("port {i}: stdio is another port's already")));
                }
                stdio = Some(input);
            }
            ports.push((v.port.clone(), backend));
        }
        let model = VirtioConsole::new(ports, io.kick()).map_err(|e| what(e.to_string()))?;
        let fds = model.backend_wake_fds();
        let dev = virtio_function(chipset, mem, address, model);
        if fds.is_empty() {
            polled.push((dev.clone(), None));
        }
        for fd in fds {
            polled.push((dev.clone(), Some(fd)));
        }
        windows.plug(chipset, address, dev.clone(), VirtioConsolePci::bar_devices(&dev)).map_err(what)?;
        let names: Vec<String> =
            vports.iter().map(|v| format!("{} {}", v.port.name.as_deref().unwrap_or("console"), v.backend)).collect();
        let label = format!("virtio-serial ({})", names.join(", "));
        tracing::info!(target: "devices", "PCI {address}: {label}");
        nics.push((address, label, NicHandle::Console(dev)));
    }
    io.start(polled, bells).map_err(|e| Error::Config(format!("cannot start the I/O thread: {e}")))?;
    Ok(Some(DeviceManager {
        nics,
        floppy,
        doorbells: windows.doorbells,
        bar_queues: [windows.io, windows.mem],
        io,
        ptys,
        stdio,
    }))
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

    /// A model that takes doorbells (none ring here).
    struct Quiet;

    impl devices::nic::IoPoll for Quiet {
        fn poll(&mut self, _now: std::time::Instant) -> Option<std::time::Duration> {
            None
        }
        fn io_label(&self) -> String {
            "quiet".into()
        }
    }

    #[test]
    fn doorbells_follow_their_bars_into_the_hypervisor() {
        let addr = PciAddress::new(3, 0).unwrap();
        let nic: SharedIoDevice = Arc::new(Mutex::new(Quiet));
        let bell = Doorbell::new(nic, 1).unwrap();
        let mut d = Doorbells::new(pci_mmio_window(1 << 30));
        let legacy = BellSpec { bar: 0, offset: 0x10, len: 2, datamatch: Some(1), queue: 1 };
        let modern = BellSpec { bar: 4, offset: 0x3004, len: 0, datamatch: None, queue: 1 };
        for spec in [legacy, modern] {
            d.spots.push(BellSpot { address: addr, spec, bell: bell.clone(), at: None });
        }
        let io = |old: Option<u64>, new: Option<u64>| BarChange {
            address: addr,
            bar: 0,
            kind: PciBarKind::Io,
            size: 0x20,
            old,
            new,
        };
        let mem = |old: Option<u64>, new: Option<u64>| BarChange {
            address: addr,
            bar: 4,
            kind: PciBarKind::Memory64 { prefetchable: true },
            size: 0x4000,
            old,
            new,
        };
        // Before the hook: positions are only remembered.
        d.bar_moved(&io(None, Some(0xc000)));
        let log: Arc<Mutex<Vec<(DoorbellSite, bool)>>> = Arc::default();
        let l = log.clone();
        d.set_attach(Some(Box::new(move |_fd, site, attach| {
            l.lock().push((site, attach));
            if site.addr == 0xdead_0000 + 0x3004 {
                return Err("refused".into());
            }
            Ok(())
        })));
        let port = |addr: u64| DoorbellSite { pio: true, addr, len: 2, datamatch: Some(1) };
        let mmio = |addr: u64| DoorbellSite { pio: false, addr, len: 0, datamatch: None };
        assert_eq!(std::mem::take(&mut *log.lock()), [(port(0xc010), true)]);
        assert_eq!(d.attached(), 1);
        // Moves: out of the old place, into the new; other functions' BARs
        // and BARs without doorbells are not its business.
        d.bar_moved(&io(Some(0xc000), Some(0xc040)));
        d.bar_moved(&mem(None, Some(0xfe00_0000)));
        d.bar_moved(&BarChange { bar: 1, ..mem(None, Some(0xfe10_0000)) });
        d.bar_moved(&BarChange { address: PciAddress::new(4, 0).unwrap(), ..io(None, Some(0xd000)) });
        assert_eq!(
            std::mem::take(&mut *log.lock()),
            [(port(0xc010), false), (port(0xc050), true), (mmio(0xfe00_3004), true)]
        );
        assert_eq!(d.attached(), 2);
        // Decoding off, or a place outside the window: detached only. A
        // refused attach is logged and not counted.
        d.bar_moved(&io(Some(0xc040), None));
        d.bar_moved(&mem(Some(0xfe00_0000), Some(0x1_0000_0000)));
        d.bar_moved(&mem(None, Some(0xdead_0000)));
        assert_eq!(
            std::mem::take(&mut *log.lock()),
            [(port(0xc050), false), (mmio(0xfe00_3004), false), (mmio(0xdead_3004), true)]
        );
        assert_eq!(d.attached(), 0);
        // A refused doorbell is not detached when its BAR moves on; dropping
        // the hook detaches what is attached.
        d.bar_moved(&mem(Some(0xdead_0000), None));
        d.bar_moved(&io(None, Some(0xc000)));
        assert_eq!(d.attached(), 1);
        d.set_attach(None);
        assert_eq!(std::mem::take(&mut *log.lock()), [(port(0xc010), true), (port(0xc010), false)]);
        assert_eq!(d.attached(), 0);
    }

    #[test]
    fn models_by_name() {
        assert_eq!(Model::parse(None), Ok(Model::E1000));
        assert_eq!(Model::parse(Some("virtio")), Ok(Model::VirtioNet));
        assert_eq!(Model::parse(Some("virtio-net-pci")), Ok(Model::VirtioNet));
        assert!(Model::parse(Some("rtl8139")).unwrap_err().contains("unknown"));
    }
}
