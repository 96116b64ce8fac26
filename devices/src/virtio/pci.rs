//! Virtio over PCI: a transitional device, as QEMU exposes by default.
//!
//! Reference: VIRTIO 1.1, 4.1 "Virtio Over PCI Bus": 4.1.2 PCI device
//! discovery (vendor 1AF4h; transitional device IDs 1000h + type - 1 with
//! revision 0 and the type in the subsystem ID), 4.1.4 the vendor-specific
//! capabilities, 4.1.4.3 the common configuration structure, 4.1.4.4
//! notifications, 4.1.4.5 the ISR, 4.1.4.7 the PCI configuration access
//! capability, 4.1.4.8 the legacy interface, 4.1.5.3 INTx.
//!
//! ```text
//! BAR0  I/O, legacy interface (4.1.4.8)
//!   0x00 le32 host features (bits 0-31)   0x0c le16 queue size (RO)   0x12 u8 status
//!   0x04 le32 guest features              0x0e le16 queue select      0x13 u8 ISR (read clears)
//!   0x08 le32 queue PFN (address >> 12)   0x10 le16 queue notify      0x14 device config
//!   while MSI-X is enabled: 0x14 le16 config vector, 0x16 le16 queue vector, 0x18 device config
//! BAR1  32-bit memory, 4 KiB, MSI-X (with an MSI sink): the table at 0, the PBA at 0x800
//! BAR4  64-bit prefetchable memory, 16 KiB, the modern interface
//!   0x0000 common configuration           0x2000 device configuration
//!   0x1000 ISR (read clears)              0x3000 notifications, queue n at 4 * n
//!
//! common configuration (4.1.4.3)
//!   0x00 le32 device_feature_select  0x14 u8   device_status      0x1e le16 queue_notify_off
//!   0x04 le32 device_feature         0x15 u8   config_generation  0x20 le64 queue_desc
//!   0x08 le32 driver_feature_select  0x16 le16 queue_select       0x28 le64 queue_driver
//!   0x0c le32 driver_feature         0x18 le16 queue_size         0x30 le64 queue_device
//!   0x10 le16 msix_config            0x1a le16 queue_msix_vector
//!   0x12 le16 num_queues             0x1c le16 queue_enable
//!
//! capability list at 0x40: common (type 1), ISR (3), device (4), notify (2, with the
//! offset multiplier), PCI configuration access (5), then MSI-X at 0x98 (with an MSI sink)
//! ```
//!
//! Model choices:
//! - With an MSI sink ([`VirtioPci::with_msix`]) the function has one MSI-X
//!   vector per queue plus one for configuration changes, as QEMU gives it.
//!   While MSI-X is enabled, each queue event sends the message of the
//!   queue's vector (`queue_msix_vector`) and each configuration event that
//!   of `msix_config` (4.1.5.3, 4.1.5.4). NO_VECTOR, or a vector the table
//!   lacks, means no interrupt, and such a vector reads back as NO_VECTOR so
//!   the driver sees the mapping fail (4.1.5.1.2). The ISR bits are still
//!   set, as QEMU sets them.
//! - Without MSI-X, or while it is disabled, INTx is asserted while the ISR
//!   is non-zero (4.1.5.3) and deasserted by reading it.
//! - The device does no DMA unless bus mastering is on in the Command register.
//! - A ring the driver breaks sets DEVICE_NEEDS_RESET and raises a
//!   configuration interrupt (2.1.2); that queue is not touched again until
//!   the driver resets the device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mmu::GuestMemory;
use parking_lot::Mutex;

use super::queue::{Queue, QueueState};
use super::{
    event_queue, Context, VirtioDevice, EVENT_CONFIG, ISR_CONFIG, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_ID_NET,
};
use crate::access::fill_le;
use crate::bus::{BusDevice, SharedDevice};
use crate::intc::msi::MsiSink;
use crate::irq::IrqLine;
use crate::pci::config::{PciBarKind, PciConfigSpace, COMMAND_INTX_DISABLE, COMMAND_MASTER, PCI_STATUS};
use crate::pci::msix::{Msix, MsixState, MAX_VECTORS, MSIX_BAR_SIZE, MSIX_CAP_LEN};
use crate::pci::{PciDevice, PciInterruptPin};

/// Red Hat's PCI vendor ID, which virtio uses.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Transitional device IDs start here (device type 1 is 1000h).
pub const VIRTIO_PCI_TRANSITIONAL_BASE: u16 = 0x1000;
/// Transitional devices have revision 0 (4.1.2.3).
const REVISION: u8 = 0;

/// The BAR of the legacy I/O interface.
pub const LEGACY_BAR: usize = 0;
/// The BAR of the MSI-X table and PBA.
pub const MSIX_BAR: usize = 1;
/// The BAR of the modern interface.
pub const MODERN_BAR: usize = 4;
/// Size of the modern BAR.
pub const MODERN_BAR_SIZE: u64 = 0x4000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const NOTIFY_OFFSET: u64 = 0x3000;
const REGION_LEN: u64 = 0x1000;
/// Bytes between two queues' notification addresses.
const NOTIFY_OFF_MULTIPLIER: u32 = 4;

// Capability types (4.1.4).
const CAP_VENDOR: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// Status register: the capability list exists.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Offset of the capabilities pointer.
const PCI_CAPABILITY_LIST: usize = 0x34;
const CAP_FIRST: usize = 0x40;
/// Where the PCI configuration access capability sits, and its fields.
const CAP_PCI_CFG_AT: usize = 0x70;
const PCI_CFG_BAR: usize = CAP_PCI_CFG_AT + 4;
const PCI_CFG_OFFSET: usize = CAP_PCI_CFG_AT + 8;
const PCI_CFG_LENGTH: usize = CAP_PCI_CFG_AT + 12;
const PCI_CFG_DATA: usize = CAP_PCI_CFG_AT + 16;
/// Where the MSI-X capability sits, after the notification capability.
pub const CAP_MSIX_AT: usize = 0x98;
const _: () = assert!(CAP_MSIX_AT + MSIX_CAP_LEN <= 0x100, "the MSI-X capability fits in configuration space");

// Common configuration registers (4.1.4.3).
const CC_DEVICE_FEATURE_SELECT: u64 = 0x00;
const CC_DEVICE_FEATURE: u64 = 0x04;
const CC_DRIVER_FEATURE_SELECT: u64 = 0x08;
const CC_DRIVER_FEATURE: u64 = 0x0c;
const CC_MSIX_CONFIG: u64 = 0x10;
const CC_NUM_QUEUES: u64 = 0x12;
const CC_DEVICE_STATUS: u64 = 0x14;
const CC_CONFIG_GENERATION: u64 = 0x15;
const CC_QUEUE_SELECT: u64 = 0x16;
const CC_QUEUE_SIZE: u64 = 0x18;
const CC_QUEUE_MSIX_VECTOR: u64 = 0x1a;
const CC_QUEUE_ENABLE: u64 = 0x1c;
const CC_QUEUE_NOTIFY_OFF: u64 = 0x1e;
const CC_QUEUE_DESC: u64 = 0x20;
const CC_QUEUE_DRIVER: u64 = 0x28;
const CC_QUEUE_DEVICE: u64 = 0x30;
/// MSI-X "no vector": no interrupt for this source.
const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

// Legacy I/O registers (4.1.4.8).
const LEG_HOST_FEATURES: u64 = 0x00;
const LEG_GUEST_FEATURES: u64 = 0x04;
const LEG_QUEUE_PFN: u64 = 0x08;
const LEG_QUEUE_SIZE: u64 = 0x0c;
const LEG_QUEUE_SELECT: u64 = 0x0e;
const LEG_QUEUE_NOTIFY: u64 = 0x10;
const LEG_STATUS: u64 = 0x12;
const LEG_ISR: u64 = 0x13;
const LEG_CONFIG: u64 = 0x14;
/// While MSI-X is enabled: the configuration vector, the selected queue's
/// vector, and the device configuration after them.
const LEG_MSIX_CONFIG_VECTOR: u64 = 0x14;
const LEG_MSIX_QUEUE_VECTOR: u64 = 0x16;
const LEG_CONFIG_MSIX: u64 = 0x18;
/// Legacy rings are laid out with this alignment (4.1.4.8, 2.6.2).
const LEGACY_ALIGN: u64 = 4096;
const LEGACY_PFN_SHIFT: u32 = 12;

/// A guest write that only notifies a queue, and may therefore be served
/// outside the vCPU thread (KVM's ioeventfd): `len` bytes (0: any size) at
/// `offset` in BAR `bar`, of the value `datamatch` when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doorbell {
    pub bar: usize,
    pub offset: u64,
    pub len: u32,
    pub datamatch: Option<u64>,
    pub queue: u16,
}

/// The saved state of the transport (the device model saves its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioPciState {
    pub config: PciConfigSpace,
    pub queues: Vec<QueueState>,
    pub status: u8,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub queue_select: u16,
    pub isr: u8,
    pub config_generation: u8,
    pub needs_reset: bool,
    /// The MSI-X table and pending bits, when the function has MSI-X.
    pub msix: Option<MsixState>,
    pub config_vector: u16,
    pub queue_vectors: Vec<u16>,
}

/// A virtio device on the PCI bus.
pub struct VirtioPci<D: VirtioDevice> {
    config: PciConfigSpace,
    device: D,
    mem: Arc<GuestMemory>,
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    queues: Vec<Queue>,
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    isr: u8,
    /// Events not yet sent as MSI-X messages (see [`Context`]).
    events: u64,
    config_generation: u8,
    needs_reset: bool,
    legacy_bar_size: u64,
    msix: Option<Msix>,
    config_vector: u16,
    queue_vectors: Vec<u16>,
    warned: bool,
    /// Queue notifications that came through [`VirtioPci::doorbell`].
    doorbell_rings: u64,
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioPci<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("device", &self.device.debug_label())
            .field("status", &self.status)
            .field("features", &format_args!("{:#x}", self.driver_features))
            .finish_non_exhaustive()
    }
}

/// The PCI class code of a virtio device type.
fn class_code(device_type: u16) -> u32 {
    match device_type {
        VIRTIO_ID_NET => 0x02_00_00,   // network, Ethernet
        VIRTIO_ID_BLOCK => 0x01_00_00, // mass storage, SCSI (as QEMU)
        _ => 0xff_00_00,
    }
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// The transport around `device`, interrupting through `irq` (the
    /// function's INTA#).
    pub fn new(device: D, mem: Arc<GuestMemory>, irq: Arc<dyn IrqLine>) -> Self {
        let ty = device.device_type();
        let mut config = PciConfigSpace::new(
            VIRTIO_PCI_VENDOR_ID,
            VIRTIO_PCI_TRANSITIONAL_BASE + ty.saturating_sub(1),
            class_code(ty),
            REVISION,
        );
        config.set_subsystem(VIRTIO_PCI_VENDOR_ID, ty);
        config.set_interrupt_pin(Some(PciInterruptPin::IntA));
        config.set_u16(PCI_STATUS, STATUS_CAP_LIST);
        // Room for the device configuration after the MSI-X vector registers.
        let legacy_bar_size = (LEG_CONFIG_MSIX + device.config_len() as u64).next_power_of_two().max(32);
        // The sizes are powers of two inside the allowed ranges.
        let _ = config.add_bar(LEGACY_BAR, PciBarKind::Io, legacy_bar_size);
        let _ = config.add_bar(MODERN_BAR, PciBarKind::Memory64 { prefetchable: true }, MODERN_BAR_SIZE);
        Self::write_capabilities(&mut config, device.config_len() as u32);
        let queues: Vec<Queue> = device.queue_max_sizes().into_iter().map(Queue::new).collect();
        let queue_vectors = vec![VIRTIO_MSI_NO_VECTOR; queues.len()];
        Self {
            config,
            device,
            mem,
            irq,
            irq_level: false,
            queues,
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            isr: 0,
            events: 0,
            config_generation: 0,
            needs_reset: false,
            legacy_bar_size,
            msix: None,
            config_vector: VIRTIO_MSI_NO_VECTOR,
            queue_vectors,
            warned: false,
            doorbell_rings: 0,
        }
    }

    /// The writes that only notify a queue, for each queue: the legacy
    /// QUEUE_NOTIFY register, a 16-bit write of the queue's index
    /// (4.1.4.8), and the queue's notification address in the modern BAR,
    /// a write of any size (4.1.4.4). [`VirtioPci::doorbell`] does what
    /// each of them does.
    pub fn doorbells(&self) -> Vec<Doorbell> {
        (0..self.queues.len() as u16)
            .flat_map(|queue| {
                [
                    Doorbell {
                        bar: LEGACY_BAR,
                        offset: LEG_QUEUE_NOTIFY,
                        len: 2,
                        datamatch: Some(u64::from(queue)),
                        queue,
                    },
                    Doorbell {
                        bar: MODERN_BAR,
                        offset: NOTIFY_OFFSET + u64::from(queue) * u64::from(NOTIFY_OFF_MULTIPLIER),
                        len: 0,
                        datamatch: None,
                        queue,
                    },
                ]
            })
            .collect()
    }

    /// A write to one of [`VirtioPci::doorbells`] of `queue`, which reached
    /// the device another way than through its BAR (an eventfd).
    pub fn doorbell(&mut self, queue: u16) {
        self.doorbell_rings += 1;
        self.notify(usize::from(queue));
    }

    /// How many notifications came through [`VirtioPci::doorbell`].
    pub fn doorbell_rings(&self) -> u64 {
        self.doorbell_rings
    }

    /// MSI-X vectors by default: one per queue and one for configuration
    /// changes.
    pub fn default_vectors(&self) -> u16 {
        u16::try_from(self.queues.len() + 1).unwrap_or(u16::MAX).min(MAX_VECTORS)
    }

    /// Gives the function MSI-X (BAR1 and a capability) with `vectors`
    /// vectors (1 to [`MAX_VECTORS`]; 0 leaves the function without MSI-X),
    /// sent to `sink`. Linux's driver uses a vector per queue when there
    /// are enough ([`Self::default_vectors`]), else one for all queues and
    /// one for the configuration, else INTx.
    pub fn with_msix(mut self, sink: Arc<dyn MsiSink>, vectors: u16) -> Self {
        if self.msix.is_some() || vectors == 0 {
            return self;
        }
        // BAR1 is free and 4 KiB is a valid memory BAR size.
        let _ = self.config.add_bar(MSIX_BAR, PciBarKind::Memory32 { prefetchable: false }, MSIX_BAR_SIZE);
        let msix = Msix::new(&mut self.config, CAP_MSIX_AT, MSIX_BAR as u8, vectors, sink);
        // Link it after the last vendor capability.
        self.config.set_u8(CAP_PCI_CFG_AT + 1, CAP_MSIX_AT as u8);
        self.msix = Some(msix);
        self
    }

    /// Whether MSI-X is there and the driver enabled it.
    fn msix_enabled(&self) -> bool {
        self.msix.as_ref().is_some_and(|m| m.enabled(&self.config))
    }

    /// A vector the driver maps a source to: kept if the table has it,
    /// else NO_VECTOR (4.1.5.1.2: a failed mapping reads back as NO_VECTOR).
    fn map_vector(&self, vector: u16) -> u16 {
        match &self.msix {
            Some(m) if vector < m.vectors() => vector,
            _ => VIRTIO_MSI_NO_VECTOR,
        }
    }
    fn write_capabilities(config: &mut PciConfigSpace, device_cfg_len: u32) {
        config.set_u8(PCI_CAPABILITY_LIST, CAP_FIRST as u8);
        // (at, type, region offset, region length, extra bytes)
        let caps: [(usize, u8, u64, u32, &[u8]); 5] = [
            (0x40, CAP_COMMON_CFG, COMMON_OFFSET, 0x38, &[]),
            (0x50, CAP_ISR_CFG, ISR_OFFSET, 1, &[]),
            (0x60, CAP_DEVICE_CFG, DEVICE_OFFSET, device_cfg_len.max(1), &[]),
            (0x84, CAP_NOTIFY_CFG, NOTIFY_OFFSET, REGION_LEN as u32, &NOTIFY_OFF_MULTIPLIER.to_le_bytes()),
            (CAP_PCI_CFG_AT, CAP_PCI_CFG, 0, 0, &[0; 4]),
        ];
        let order = [0x40usize, 0x50, 0x60, 0x84, CAP_PCI_CFG_AT];
        for (at, ty, offset, len, extra) in caps {
            let next = order.iter().position(|&o| o == at).and_then(|i| order.get(i + 1)).copied().unwrap_or(0);
            let cap_len = 16 + extra.len();
            let bar = if ty == CAP_PCI_CFG { 0 } else { MODERN_BAR as u8 };
            config.set_bytes(at, &[CAP_VENDOR, next as u8, cap_len as u8, ty, bar, 0, 0, 0]);
            config.set_u32(at + 8, offset as u32);
            config.set_u32(at + 12, len);
            config.set_bytes(at + 16, extra);
        }
        // The access window's bar, offset, length and data are the driver's.
        config.set_writable(PCI_CFG_BAR, &[0xff]);
        config.set_writable(PCI_CFG_OFFSET, &[0xff; 8]);
        config.set_writable(PCI_CFG_DATA, &[0xff; 4]);
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register as the driver reads it.
    pub fn status(&self) -> u8 {
        self.status | if self.needs_reset { super::STATUS_DEVICE_NEEDS_RESET } else { 0 }
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the device may work: DRIVER_OK, bus mastering, no pending reset.
    fn running(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.config.command() & COMMAND_MASTER != 0 && !self.needs_reset
    }

    /// Runs `f` on the device with its context, then updates the interrupt.
    fn with_ctx<R>(&mut self, f: impl FnOnce(&mut D, &mut Context<'_>) -> R) -> R {
        let running = self.running();
        let mut ctx = Context {
            mem: &self.mem,
            queues: &mut self.queues,
            features: self.driver_features,
            running,
            isr: &mut self.isr,
            events: &mut self.events,
            needs_reset: &mut self.needs_reset,
        };
        let r = f(&mut self.device, &mut ctx);
        self.update_irq();
        r
    }

    /// Signals the driver: the MSI-X messages of the new events while MSI-X
    /// is enabled, else INTx from the ISR.
    fn update_irq(&mut self) {
        let events = std::mem::take(&mut self.events);
        let msix = self.msix_enabled();
        if let Some(m) = self.msix.as_mut().filter(|_| msix && events != 0) {
            if events & EVENT_CONFIG != 0 && self.config_vector != VIRTIO_MSI_NO_VECTOR {
                m.notify(&self.config, self.config_vector);
            }
            for (q, &vector) in self.queue_vectors.iter().enumerate() {
                if events & event_queue(q) != 0 && vector != VIRTIO_MSI_NO_VECTOR {
                    m.notify(&self.config, vector);
                }
            }
        }
        let level = self.isr != 0 && self.config.command() & COMMAND_INTX_DISABLE == 0 && !msix;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Host-side work of the device (see [`VirtioDevice::poll`]).
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        self.with_ctx(|d, ctx| d.poll(ctx, now))
    }

    fn notify(&mut self, queue: usize) {
        if !self.running() || queue >= self.queues.len() {
            return;
        }
        self.with_ctx(|d, ctx| d.notify(queue, ctx));
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.isr = 0;
        self.events = 0;
        self.needs_reset = false;
        self.config_vector = VIRTIO_MSI_NO_VECTOR;
        self.queue_vectors.fill(VIRTIO_MSI_NO_VECTOR);
        self.update_irq();
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let was = self.status;
        let mut value = value & !super::STATUS_DEVICE_NEEDS_RESET;
        if value & STATUS_FEATURES_OK != 0 && was & STATUS_FEATURES_OK == 0 {
            // 2.2.2: a modern driver must accept VERSION_1.
            if self.driver_features & VIRTIO_F_VERSION_1 == 0 && self.device.features() & VIRTIO_F_VERSION_1 != 0 {
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
        if value & STATUS_DRIVER_OK != 0 && was & STATUS_DRIVER_OK == 0 {
            let event_idx = self.driver_features & VIRTIO_F_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            if self.config.command() & COMMAND_MASTER != 0 {
                self.with_ctx(|d, ctx| d.activate(ctx));
                // Buffers made available before DRIVER_OK.
                for q in 0..self.queues.len() {
                    self.notify(q);
                }
            }
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn enable_queue(&mut self, index: usize) {
        let Some(q) = self.queues.get_mut(index) else { return };
        q.ready = true;
        if let Err(e) = q.validate(&self.mem) {
            q.mark_broken();
            self.fail(&e);
        }
    }

    /// The driver broke a ring: DEVICE_NEEDS_RESET and a configuration interrupt.
    fn fail(&mut self, err: &super::QueueError) {
        if !self.needs_reset {
            tracing::warn!(target: "devices", device = %self.device.debug_label(), "virtio: {err}; the device needs a reset");
        }
        self.needs_reset = true;
        self.signal_config();
    }

    /// A configuration interrupt: the ISR bit for INTx, the event for MSI-X.
    fn signal_config(&mut self) {
        self.isr |= ISR_CONFIG;
        self.events |= EVENT_CONFIG;
        self.update_irq();
    }

    fn read_isr(&mut self) -> u8 {
        let v = self.isr;
        self.isr = 0;
        self.update_irq();
        v
    }

    fn warn_once(&mut self, what: &str, offset: u64, len: usize) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                target: "devices",
                device = %self.device.debug_label(),
                offset,
                len,
                "virtio-pci: {what}; ignored (logged once)"
            );
        }
    }

    // ---- modern common configuration ----

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        let q = self.queues.get(usize::from(self.queue_select));
        let value: u64 = match (offset, len) {
            (CC_DEVICE_FEATURE_SELECT, 4) => u64::from(self.device_feature_select),
            (CC_DEVICE_FEATURE, 4) => match self.device_feature_select {
                0 => self.device.features() & 0xffff_ffff,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            (CC_DRIVER_FEATURE_SELECT, 4) => u64::from(self.driver_feature_select),
            (CC_DRIVER_FEATURE, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (CC_MSIX_CONFIG, 2) => u64::from(self.config_vector),
            (CC_QUEUE_MSIX_VECTOR, 2) => u64::from(self.selected_queue_vector()),
            (CC_NUM_QUEUES, 2) => self.queues.len() as u64,
            (CC_DEVICE_STATUS, 1) => u64::from(self.status()),
            (CC_CONFIG_GENERATION, 1) => u64::from(self.config_generation),
            (CC_QUEUE_SELECT, 2) => u64::from(self.queue_select),
            (CC_QUEUE_SIZE, 2) => q.map_or(0, |q| u64::from(q.size)),
            (CC_QUEUE_ENABLE, 2) => q.map_or(0, |q| u64::from(q.ready)),
            (CC_QUEUE_NOTIFY_OFF, 2) => {
                if q.is_some() {
                    u64::from(self.queue_select)
                } else {
                    0
                }
            }
            (CC_QUEUE_DESC, 8) => q.map_or(0, |q| q.desc_table),
            (CC_QUEUE_DRIVER, 8) => q.map_or(0, |q| q.avail_ring),
            (CC_QUEUE_DEVICE, 8) => q.map_or(0, |q| q.used_ring),
            (o, 4) if (CC_QUEUE_DESC..CC_QUEUE_DEVICE + 8).contains(&o) => {
                let base = o & !7;
                let full = match base {
                    CC_QUEUE_DESC => q.map_or(0, |q| q.desc_table),
                    CC_QUEUE_DRIVER => q.map_or(0, |q| q.avail_ring),
                    _ => q.map_or(0, |q| q.used_ring),
                };
                if o == base {
                    full & 0xffff_ffff
                } else {
                    full >> 32
                }
            }
            _ => {
                self.warn_once("common configuration read of an unknown register or size", offset, len);
                0
            }
        };
        fill_le(data, value);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        let mut b = [0u8; 8];
        b[..len.min(8)].copy_from_slice(&data[..len.min(8)]);
        let v = u64::from_le_bytes(b);
        // Queue fields may change only while the queue is disabled (4.1.4.3.2).
        let queue_locked = self.queues.get(usize::from(self.queue_select)).is_none_or(|q| q.ready);
        match (offset, len) {
            (CC_DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (CC_DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (CC_DRIVER_FEATURE, 4) => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    let offered = self.device.features();
                    match self.driver_feature_select {
                        0 => self.driver_features = (self.driver_features & !0xffff_ffff) | (v & offered & 0xffff_ffff),
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | ((v << 32) & offered & !0xffff_ffff)
                        }
                        _ => {}
                    }
                }
            }
            (CC_MSIX_CONFIG, 2) => self.set_config_vector(v as u16),
            (CC_QUEUE_MSIX_VECTOR, 2) => self.set_queue_vector(v as u16),
            (CC_DEVICE_STATUS, 1) => self.set_status(v as u8),
            (CC_QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (CC_QUEUE_SIZE, 2) if !queue_locked => {
                if let Some(q) = self.selected_queue() {
                    q.size = v as u16;
                }
            }
            (CC_QUEUE_ENABLE, 2) if !queue_locked => {
                if v == 1 {
                    self.enable_queue(usize::from(self.queue_select));
                }
            }
            (o, 4 | 8) if (CC_QUEUE_DESC..CC_QUEUE_DEVICE + 8).contains(&o) && !queue_locked => {
                let base = o & !7;
                let Some(q) = self.selected_queue() else { return };
                let field = match base {
                    CC_QUEUE_DESC => &mut q.desc_table,
                    CC_QUEUE_DRIVER => &mut q.avail_ring,
                    _ => &mut q.used_ring,
                };
                *field = match (len, o == base) {
                    (8, _) => v,
                    (_, true) => (*field & !0xffff_ffff) | (v & 0xffff_ffff),
                    (_, false) => (*field & 0xffff_ffff) | (v << 32),
                };
            }
            (CC_QUEUE_SIZE | CC_QUEUE_ENABLE, 2) => {}
            (o, 4 | 8) if (CC_QUEUE_DESC..CC_QUEUE_DEVICE + 8).contains(&o) => {}
            _ => self.warn_once("common configuration write of a read-only or unknown register", offset, len),
        }
    }

    // ---- legacy interface ----

    /// Where the device configuration starts in the legacy BAR.
    fn legacy_config_offset(&self) -> u64 {
        if self.msix_enabled() {
            LEG_CONFIG_MSIX
        } else {
            LEG_CONFIG
        }
    }

    /// The MSI-X vector of the selected queue (NO_VECTOR past the last queue).
    fn selected_queue_vector(&self) -> u16 {
        self.queue_vectors.get(usize::from(self.queue_select)).copied().unwrap_or(VIRTIO_MSI_NO_VECTOR)
    }

    fn set_queue_vector(&mut self, vector: u16) {
        let vector = self.map_vector(vector);
        if let Some(slot) = self.queue_vectors.get_mut(usize::from(self.queue_select)) {
            *slot = vector;
        }
    }

    fn set_config_vector(&mut self, vector: u16) {
        self.config_vector = self.map_vector(vector);
    }

    fn legacy_read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        let config = self.legacy_config_offset();
        if offset >= config {
            self.device.read_config((offset - config) as usize, data);
            return;
        }
        let q = self.queues.get(usize::from(self.queue_select));
        let value: u64 = match (offset, len) {
            (LEG_MSIX_CONFIG_VECTOR, 2) if config == LEG_CONFIG_MSIX => u64::from(self.config_vector),
            (LEG_MSIX_QUEUE_VECTOR, 2) if config == LEG_CONFIG_MSIX => u64::from(self.selected_queue_vector()),
            (LEG_HOST_FEATURES, 4) => self.device.features() & 0xffff_ffff,
            (LEG_GUEST_FEATURES, 4) => self.driver_features & 0xffff_ffff,
            (LEG_QUEUE_PFN, 4) => q.map_or(0, |q| if q.ready { q.desc_table >> LEGACY_PFN_SHIFT } else { 0 }),
            (LEG_QUEUE_SIZE, 2) => q.map_or(0, |q| u64::from(q.max_size)),
            (LEG_QUEUE_SELECT, 2) => u64::from(self.queue_select),
            (LEG_STATUS, 1) => u64::from(self.status()),
            (LEG_ISR, 1) => u64::from(self.read_isr()),
            _ => {
                self.warn_once("legacy register read of an unknown register or size", offset, len);
                0
            }
        };
        fill_le(data, value);
    }

    fn legacy_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        let config = self.legacy_config_offset();
        if offset >= config {
            self.device.write_config((offset - config) as usize, data);
            return;
        }
        let mut b = [0u8; 4];
        b[..len.min(4)].copy_from_slice(&data[..len.min(4)]);
        let v = u32::from_le_bytes(b);
        match (offset, len) {
            (LEG_GUEST_FEATURES, 4) => {
                if self.status & STATUS_DRIVER_OK == 0 {
                    // The legacy interface cannot negotiate VERSION_1 or above.
                    self.driver_features = u64::from(v) & self.device.features() & 0xffff_ffff;
                }
            }
            (LEG_QUEUE_PFN, 4) => {
                let index = usize::from(self.queue_select);
                let Some(q) = self.queues.get_mut(index) else { return };
                if v == 0 {
                    q.reset();
                    return;
                }
                let n = u64::from(q.max_size);
                q.size = q.max_size;
                q.desc_table = u64::from(v) << LEGACY_PFN_SHIFT;
                q.avail_ring = q.desc_table + 16 * n;
                q.used_ring = (q.avail_ring + 6 + 2 * n).next_multiple_of(LEGACY_ALIGN);
                self.enable_queue(index);
            }
            (LEG_QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (LEG_QUEUE_NOTIFY, 2) => self.notify(usize::from(v as u16)),
            (LEG_STATUS, 1) => self.set_status(v as u8),
            (LEG_MSIX_CONFIG_VECTOR, 2) if config == LEG_CONFIG_MSIX => self.set_config_vector(v as u16),
            (LEG_MSIX_QUEUE_VECTOR, 2) if config == LEG_CONFIG_MSIX => self.set_queue_vector(v as u16),
            _ => self.warn_once("legacy register write of a read-only or unknown register", offset, len),
        }
    }

    /// A guest read in BAR `bar` at `offset`.
    pub fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match bar {
            LEGACY_BAR if offset < self.legacy_bar_size => self.legacy_read(offset, data),
            MSIX_BAR => {
                if let Some(m) = self.msix.as_mut() {
                    m.bar_read(offset, data);
                }
            }
            MODERN_BAR => match offset / REGION_LEN {
                0 => self.common_read(offset - COMMON_OFFSET, data),
                1 if offset == ISR_OFFSET => {
                    let v = self.read_isr();
                    fill_le(data, u64::from(v));
                }
                2 => {
                    let o = (offset - DEVICE_OFFSET) as usize;
                    if o < self.device.config_len() {
                        self.device.read_config(o, data);
                    }
                }
                _ => {} // notifications read as zero
            },
            _ => {}
        }
    }

    /// A guest write in BAR `bar` at `offset`.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            LEGACY_BAR if offset < self.legacy_bar_size => self.legacy_write(offset, data),
            MSIX_BAR => {
                if let Some(m) = self.msix.as_mut() {
                    m.bar_write(&self.config, offset, data);
                }
            }
            MODERN_BAR => match offset / REGION_LEN {
                0 => self.common_write(offset - COMMON_OFFSET, data),
                1 => {} // the ISR is read-only
                2 => {
                    let o = (offset - DEVICE_OFFSET) as usize;
                    if o < self.device.config_len() {
                        self.device.write_config(o, data);
                    }
                }
                3 => {
                    let rel = offset - NOTIFY_OFFSET;
                    if rel.is_multiple_of(u64::from(NOTIFY_OFF_MULTIPLIER)) {
                        self.notify((rel / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Signals a configuration change to the driver (a device model's
    /// configuration space changed: link status, capacity).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.signal_config();
    }

    /// The bus devices answering for each BAR, to map where the guest
    /// programs them: (BAR index, device).
    pub fn bar_devices(this: &Arc<Mutex<Self>>) -> Vec<(usize, SharedDevice)>
    where
        D: 'static,
    {
        let msix = this.lock().msix.is_some();
        [LEGACY_BAR, MODERN_BAR]
            .into_iter()
            .chain(msix.then_some(MSIX_BAR))
            .map(|bar| {
                let port: SharedDevice = Arc::new(Mutex::new(VirtioBar { dev: Arc::clone(this), bar }));
                (bar, port)
            })
            .collect()
    }

    /// The transport state for a snapshot.
    pub fn save(&self) -> VirtioPciState {
        VirtioPciState {
            config: self.config.clone(),
            queues: self.queues.iter().map(Queue::save).collect(),
            status: self.status,
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            isr: self.isr,
            config_generation: self.config_generation,
            needs_reset: self.needs_reset,
            msix: self.msix.as_ref().map(Msix::save),
            config_vector: self.config_vector,
            queue_vectors: self.queue_vectors.clone(),
        }
    }

    /// Restores a snapshot (queue counts must match).
    pub fn restore(&mut self, s: &VirtioPciState) {
        self.config = s.config.clone();
        for (q, qs) in self.queues.iter_mut().zip(&s.queues) {
            q.restore(qs);
        }
        self.status = s.status;
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.queue_select = s.queue_select;
        self.isr = s.isr;
        self.config_generation = s.config_generation;
        self.needs_reset = s.needs_reset;
        if let (Some(m), Some(ms)) = (self.msix.as_mut(), s.msix.as_ref()) {
            m.restore(ms);
        }
        self.config_vector = s.config_vector;
        for (slot, &v) in self.queue_vectors.iter_mut().zip(&s.queue_vectors) {
            *slot = v;
        }
        self.update_irq();
    }

    /// The PCI configuration access window (4.1.4.7): (bar, offset, length)
    /// if the driver set up a valid access.
    fn pci_cfg_access(&self) -> Option<(usize, u64, usize)> {
        let bar = usize::from(self.config.u8_at(PCI_CFG_BAR));
        let offset = u64::from(self.config.u32_at(PCI_CFG_OFFSET));
        let len = self.config.u32_at(PCI_CFG_LENGTH) as usize;
        (matches!(len, 1 | 2 | 4) && offset % len as u64 == 0 && (bar == LEGACY_BAR || bar == MODERN_BAR))
            .then_some((bar, offset, len))
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPci<D> {
    fn debug_label(&self) -> String {
        format!("virtio-pci ({})", self.device.debug_label())
    }

    fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if reg * 4 == PCI_CFG_DATA {
            if let Some((bar, offset, len)) = self.pci_cfg_access() {
                let mut buf = [0u8; 4];
                self.bar_read(bar, offset, &mut buf[..len]);
                self.config.set_bytes(PCI_CFG_DATA, &buf);
            }
        }
        self.config.read_dword(reg)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let command_before = self.config.command();
        let msix_before = self.msix_enabled();
        self.config.write(offset, data);
        if (offset..offset + data.len()).contains(&PCI_CFG_DATA) {
            if let Some((bar, off, len)) = self.pci_cfg_access() {
                let mut buf = [0u8; 4];
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = self.config.u8_at(PCI_CFG_DATA + i);
                }
                self.bar_write(bar, off, &buf[..len]);
            }
        }
        if let Some(m) = self.msix.as_mut() {
            // Enabling MSI-X or clearing its function mask sends what is pending.
            m.config_written(&self.config, offset, data.len());
        }
        let command = self.config.command();
        if (command ^ command_before) & COMMAND_INTX_DISABLE != 0 || self.msix_enabled() != msix_before {
            self.update_irq();
        }
        // Bus mastering just came on: buffers may be waiting.
        if command & !command_before & COMMAND_MASTER != 0 && self.running() {
            for q in 0..self.queues.len() {
                self.notify(q);
            }
        }
    }
}

/// One BAR of a virtio function as a bus device.
struct VirtioBar<D: VirtioDevice> {
    dev: Arc<Mutex<VirtioPci<D>>>,
    bar: usize,
}

impl<D: VirtioDevice> BusDevice for VirtioBar<D> {
    fn debug_label(&self) -> String {
        format!("{} BAR{}", self.dev.lock().debug_label(), self.bar)
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.dev.lock().bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.dev.lock().bar_write(self.bar, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::testing::DriverRing;
    use super::super::{STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, VIRTIO_F_INDIRECT_DESC};
    use super::*;
    use crate::irq::RecordingIrq;
    use crate::pci::config::PCI_COMMAND;

    /// A device with two queues that echoes each readable chain of queue 1
    /// into the next writable chain of queue 0.
    struct Echo {
        resets: u32,
        activated: bool,
        cfg: [u8; 6],
    }

    impl VirtioDevice for Echo {
        fn device_type(&self) -> u16 {
            VIRTIO_ID_NET
        }
        fn debug_label(&self) -> String {
            "echo".into()
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0b101
        }
        fn config_len(&self) -> usize {
            self.cfg.len()
        }
        fn read_config(&self, offset: usize, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.cfg.get(offset + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(slot) = self.cfg.get_mut(offset + i) {
                    *slot = *b;
                }
            }
        }
        fn activate(&mut self, _ctx: &mut Context<'_>) {
            self.activated = true;
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated = false;
        }
        fn notify(&mut self, queue: usize, ctx: &mut Context<'_>) {
            if queue != 1 {
                return;
            }
            loop {
                let tx = match ctx.queues[1].pop(ctx.mem) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        ctx.queues[1].mark_broken();
                        ctx.fail(&e);
                        return;
                    }
                };
                let mut data = Vec::new();
                tx.read_all(ctx.mem, &mut data, 4096).unwrap();
                ctx.queues[1].add_used(ctx.mem, tx.head, 0).unwrap();
                if let Ok(Some(rx)) = ctx.queues[0].pop(ctx.mem) {
                    let n = rx.write_at(ctx.mem, 0, &data).unwrap();
                    ctx.queues[0].add_used(ctx.mem, rx.head, n as u32).unwrap();
                    ctx.signal_used(0);
                }
            }
        }
    }

    struct Rig {
        dev: VirtioPci<Echo>,
        irq: Arc<RecordingIrq>,
        mem: Arc<GuestMemory>,
    }

    fn rig() -> Rig {
        let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
        let irq = Arc::new(RecordingIrq::new());
        let dev = VirtioPci::new(Echo { resets: 0, activated: false, cfg: *b"abcdef" }, mem.clone(), irq.clone());
        Rig { dev, irq, mem }
    }

    fn w(r: &mut Rig, off: u64, v: u64, len: usize) {
        r.dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
    }
    fn rd(r: &mut Rig, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        r.dev.bar_read(MODERN_BAR, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn pci_header_and_capabilities() {
        let mut r = rig();
        let c = r.dev.config();
        assert_eq!(c.read_dword(0), 0x1000_1af4);
        assert_eq!(c.u8_at(0x08), 0, "transitional devices have revision 0");
        assert_eq!(c.read_dword(0x2c / 4), 0x0001_1af4);
        assert_ne!(c.u16_at(PCI_STATUS) & STATUS_CAP_LIST, 0);
        // Walk the capability list.
        let mut at = usize::from(c.u8_at(PCI_CAPABILITY_LIST));
        let mut types = Vec::new();
        while at != 0 {
            assert_eq!(c.u8_at(at), CAP_VENDOR);
            types.push((c.u8_at(at + 3), c.u8_at(at + 4), c.u32_at(at + 8)));
            at = usize::from(c.u8_at(at + 1));
        }
        assert_eq!(
            types,
            vec![(1, 4, 0), (3, 4, 0x1000), (4, 4, 0x2000), (2, 4, 0x3000), (5, 0, 0)],
            "(type, bar, offset)"
        );
        assert_eq!(c.u32_at(0x84 + 16), NOTIFY_OFF_MULTIPLIER);
        assert_eq!(c.bar(LEGACY_BAR).unwrap().size, 32);
        assert!(format!("{:?}", r.dev).contains("echo"));
        assert_eq!(r.dev.debug_label(), "virtio-pci (echo)");
        // The PCI configuration access window reads the common config.
        r.dev.write_config(PCI_CFG_BAR, &[MODERN_BAR as u8]);
        r.dev.write_config(PCI_CFG_OFFSET, &(CC_NUM_QUEUES as u32).to_le_bytes());
        r.dev.write_config(PCI_CFG_LENGTH, &2u32.to_le_bytes());
        assert_eq!(r.dev.read_config(PCI_CFG_DATA / 4) & 0xffff, 2);
        r.dev.write_config(PCI_CFG_OFFSET, &(CC_QUEUE_SELECT as u32).to_le_bytes());
        r.dev.write_config(PCI_CFG_DATA, &[1, 0, 0, 0]);
        assert_eq!(rd(&mut r, CC_QUEUE_SELECT, 2), 1);
    }

    /// The modern driver's bring-up, then an echo through both queues.
    #[test]
    fn modern_bring_up_and_queue_traffic() {
        let mut r = rig();
        r.dev.write_config(PCI_COMMAND, &[0x06, 0]); // memory + bus master
        w(&mut r, CC_DEVICE_STATUS, 0, 1);
        w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        w(&mut r, CC_DEVICE_FEATURE_SELECT, 1, 4);
        assert_eq!(rd(&mut r, CC_DEVICE_FEATURE, 4), 1, "VERSION_1 is bit 32");
        w(&mut r, CC_DEVICE_FEATURE_SELECT, 0, 4);
        assert_eq!(rd(&mut r, CC_DEVICE_FEATURE, 4), (VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0b101));
        // Without VERSION_1, FEATURES_OK does not stick.
        w(&mut r, CC_DRIVER_FEATURE_SELECT, 0, 4);
        w(&mut r, CC_DRIVER_FEATURE, 0b111, 4);
        assert_eq!(rd(&mut r, CC_DRIVER_FEATURE, 4), 0b101, "unoffered bits are dropped");
        w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
        assert_eq!(rd(&mut r, CC_DEVICE_STATUS, 1) as u8 & STATUS_FEATURES_OK, 0);
        w(&mut r, CC_DRIVER_FEATURE_SELECT, 1, 4);
        w(&mut r, CC_DRIVER_FEATURE, 1, 4);
        w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
        assert_ne!(rd(&mut r, CC_DEVICE_STATUS, 1) as u8 & STATUS_FEATURES_OK, 0);
        assert_eq!(r.dev.driver_features(), VIRTIO_F_VERSION_1 | 0b101);
        assert_eq!(rd(&mut r, CC_NUM_QUEUES, 2), 2);
        let mem = r.mem.clone();
        let mut rings = Vec::new();
        for (i, base) in [(0u16, 0x10000u64), (1, 0x20000)] {
            w(&mut r, CC_QUEUE_SELECT, u64::from(i), 2);
            assert_eq!(rd(&mut r, CC_QUEUE_SIZE, 2), 16);
            w(&mut r, CC_QUEUE_SIZE, 8, 2);
            let ring = DriverRing::new(&mem, base, 8);
            w(&mut r, CC_QUEUE_DESC, ring.desc & 0xffff_ffff, 4);
            w(&mut r, CC_QUEUE_DESC + 4, ring.desc >> 32, 4);
            w(&mut r, CC_QUEUE_DRIVER, ring.avail, 8);
            w(&mut r, CC_QUEUE_DEVICE, ring.used, 8);
            assert_eq!(rd(&mut r, CC_QUEUE_DEVICE, 8), ring.used);
            assert_eq!(rd(&mut r, CC_QUEUE_DRIVER + 4, 4), 0);
            assert_eq!(rd(&mut r, CC_QUEUE_NOTIFY_OFF, 2), u64::from(i));
            assert_eq!(rd(&mut r, CC_QUEUE_MSIX_VECTOR, 2), 0xffff);
            w(&mut r, CC_QUEUE_ENABLE, 1, 2);
            assert_eq!(rd(&mut r, CC_QUEUE_ENABLE, 2), 1);
            // Once enabled, the size is fixed.
            w(&mut r, CC_QUEUE_SIZE, 4, 2);
            assert_eq!(rd(&mut r, CC_QUEUE_SIZE, 2), 8);
            rings.push(ring);
        }
        rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
        mem.write(0x31000, b"ping").unwrap();
        rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
        // Notifications before DRIVER_OK are ignored...
        w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
        assert!(rings[0].take_used(&mem).is_empty());
        // ...and DRIVER_OK catches up.
        w(
            &mut r,
            CC_DEVICE_STATUS,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
            1,
        );
        assert!(r.dev.device().activated);
        assert_eq!(rings[0].take_used(&mem), vec![(0, 4)]);
        assert_eq!(mem.read_bytes::<4>(0x30000).unwrap(), *b"ping");
        assert!(r.irq.level(), "INTx is asserted while the ISR is set");
        assert_eq!(rd(&mut r, ISR_OFFSET, 1), 1);
        assert!(!r.irq.level(), "reading the ISR deasserts");
        assert_eq!(rd(&mut r, ISR_OFFSET, 1), 0);
        // A second round through the notify register.
        rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
        rings[1].add_chain(&mem, &[(0x31000, 2, false)]);
        w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
        assert_eq!(rings[0].take_used(&mem), vec![(1, 2)]);
        // Device config through BAR4.
        assert_eq!(rd(&mut r, DEVICE_OFFSET + 1, 2), u64::from(u16::from_le_bytes(*b"bc")));
        w(&mut r, DEVICE_OFFSET, u64::from(b'z'), 1);
        assert_eq!(rd(&mut r, DEVICE_OFFSET, 1), u64::from(b'z'));
        // INTx disable masks the line.
        r.dev.config_changed();
        assert!(r.irq.level());
        r.dev.write_config(PCI_COMMAND, &[0x06, 0x04]);
        assert!(!r.irq.level());
        r.dev.write_config(PCI_COMMAND, &[0x06, 0x00]);
        assert!(r.irq.level());
        assert_eq!(rd(&mut r, ISR_OFFSET, 1), u64::from(super::super::ISR_QUEUE | ISR_CONFIG));
        // Save, restore, reset.
        let s = r.dev.save();
        r.dev.restore(&s);
        assert_eq!(r.dev.save(), s);
        w(&mut r, CC_DEVICE_STATUS, 0, 1);
        assert_eq!(r.dev.device().resets, 2);
        assert_eq!(rd(&mut r, CC_DEVICE_STATUS, 1), 0);
        assert_eq!(r.dev.driver_features(), 0);
        // Unknown registers and sizes are ignored.
        assert_eq!(rd(&mut r, 0x3f, 1), 0);
        w(&mut r, 0x3f, 1, 1);
        assert_eq!(rd(&mut r, CC_DEVICE_STATUS, 4), 0);
    }

    /// Brings the function up through the modern interface with both queues
    /// enabled at 0x10000 and 0x20000, DRIVER_OK last.
    fn bring_up(r: &mut Rig, before_driver_ok: impl FnOnce(&mut Rig)) -> Vec<DriverRing> {
        r.dev.write_config(PCI_COMMAND, &[0x06, 0]);
        w(r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        w(r, CC_DRIVER_FEATURE_SELECT, 1, 4);
        w(r, CC_DRIVER_FEATURE, 1, 4);
        w(r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
        let mem = r.mem.clone();
        let mut rings = Vec::new();
        for (i, base) in [(0u16, 0x10000u64), (1, 0x20000)] {
            w(r, CC_QUEUE_SELECT, u64::from(i), 2);
            let ring = DriverRing::new(&mem, base, 16);
            w(r, CC_QUEUE_DESC, ring.desc, 8);
            w(r, CC_QUEUE_DRIVER, ring.avail, 8);
            w(r, CC_QUEUE_DEVICE, ring.used, 8);
            w(r, CC_QUEUE_ENABLE, 1, 2);
            rings.push(ring);
        }
        before_driver_ok(r);
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(r, CC_DEVICE_STATUS, u64::from(ok), 1);
        rings
    }

    /// One echo: a 4-byte chain on queue 1 comes back on queue 0.
    fn echo(r: &mut Rig, rings: &mut [DriverRing]) {
        let mem = r.mem.clone();
        rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
        rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
        w(r, NOTIFY_OFFSET + 4, 1, 2);
        assert_eq!(rings[0].take_used(&mem).len(), 1);
    }

    #[test]
    fn doorbells_are_the_notify_writes() {
        let mut r = rig();
        let bells = r.dev.doorbells();
        assert_eq!(bells.len(), 4, "two per queue");
        assert_eq!(bells[0], Doorbell { bar: LEGACY_BAR, offset: 0x10, len: 2, datamatch: Some(0), queue: 0 });
        assert_eq!(bells[3], Doorbell { bar: MODERN_BAR, offset: 0x3004, len: 0, datamatch: None, queue: 1 });
        let mut rings = bring_up(&mut r, |_| {});
        let mem = r.mem.clone();
        // The write each doorbell stands for notifies its queue: one echo each.
        for b in bells.iter().filter(|b| b.queue == 1) {
            rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
            rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
            let value = b.datamatch.unwrap_or(0x1234).to_le_bytes();
            r.dev.bar_write(b.bar, b.offset, &value[..(b.len as usize).max(1)]);
            assert_eq!(rings[0].take_used(&mem).len(), 1, "{b:?}");
        }
        // And so does ringing it; unknown queues are ignored.
        rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
        rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
        r.dev.doorbell(1);
        assert_eq!(rings[0].take_used(&mem).len(), 1);
        r.dev.doorbell(7);
        assert_eq!(r.dev.doorbell_rings(), 2);
    }

    fn msix_rig() -> (Rig, Arc<crate::intc::msi::RecordingMsi>) {
        let mut r = rig();
        let sink = Arc::new(crate::intc::msi::RecordingMsi::new());
        r.dev = VirtioPci::new(Echo { resets: 0, activated: false, cfg: *b"abcdef" }, r.mem.clone(), r.irq.clone())
            .with_msix(sink.clone(), 3);
        (r, sink)
    }

    /// Programs table entry `v` with vector `0x40 + v` and unmasks it.
    fn msix_entry(r: &mut Rig, v: u64) {
        let mut e = [0u8; 16];
        e[..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        e[8..12].copy_from_slice(&(0x40 + v as u32).to_le_bytes());
        r.dev.bar_write(MSIX_BAR, 16 * v, &e);
    }

    fn msix_control(r: &mut Rig, value: u16) {
        r.dev.write_config(CAP_MSIX_AT + 2, &value.to_le_bytes());
    }

    fn vectors_sent(sink: &crate::intc::msi::RecordingMsi) -> Vec<u32> {
        sink.take().iter().map(|m| m.data).collect()
    }

    #[test]
    fn msix_capability_and_bar() {
        let (r, _) = msix_rig();
        let c = r.dev.config();
        let mut at = usize::from(c.u8_at(PCI_CAPABILITY_LIST));
        let mut ids = Vec::new();
        while at != 0 {
            ids.push(c.u8_at(at));
            at = usize::from(c.u8_at(at + 1));
        }
        assert_eq!(ids, [CAP_VENDOR, CAP_VENDOR, CAP_VENDOR, CAP_VENDOR, CAP_VENDOR, 0x11]);
        assert_eq!(c.u16_at(CAP_MSIX_AT + 2), 2, "three vectors: two queues and the configuration");
        assert_eq!(c.bar(MSIX_BAR).unwrap().size, MSIX_BAR_SIZE);
        let dev = Arc::new(Mutex::new(r.dev));
        let bars: Vec<usize> = VirtioPci::bar_devices(&dev).into_iter().map(|(b, _)| b).collect();
        assert_eq!(bars, [LEGACY_BAR, MODERN_BAR, MSIX_BAR]);
        let plain = Arc::new(Mutex::new(rig().dev));
        assert_eq!(VirtioPci::bar_devices(&plain).len(), 2, "no MSI-X BAR without a sink");
    }

    #[test]
    fn msix_sends_each_queue_its_vector_and_not_intx() {
        let (mut r, sink) = msix_rig();
        msix_control(&mut r, 0x8000);
        for v in 0..3 {
            msix_entry(&mut r, v);
        }
        let mut rings = bring_up(&mut r, |r| {
            w(r, CC_MSIX_CONFIG, 2, 2);
            assert_eq!(rd(r, CC_MSIX_CONFIG, 2), 2);
            w(r, CC_QUEUE_SELECT, 0, 2);
            w(r, CC_QUEUE_MSIX_VECTOR, 0, 2);
            w(r, CC_QUEUE_SELECT, 1, 2);
            w(r, CC_QUEUE_MSIX_VECTOR, 3, 2);
            assert_eq!(rd(r, CC_QUEUE_MSIX_VECTOR, 2), 0xffff, "vector 3 is not in the table");
            w(r, CC_QUEUE_MSIX_VECTOR, 1, 2);
            assert_eq!(rd(r, CC_QUEUE_MSIX_VECTOR, 2), 1);
        });
        echo(&mut r, &mut rings);
        assert_eq!(vectors_sent(&sink), [0x40], "the used buffer on queue 0");
        assert!(!r.irq.level(), "INTx stays low while MSI-X is enabled");
        r.dev.config_changed();
        assert_eq!(vectors_sent(&sink), [0x42]);
        // A masked vector pends and is sent on unmask.
        r.dev.bar_write(MSIX_BAR, 12, &[1, 0, 0, 0]);
        echo(&mut r, &mut rings);
        assert!(sink.take().is_empty());
        r.dev.bar_write(MSIX_BAR, 12, &[0, 0, 0, 0]);
        assert_eq!(vectors_sent(&sink), [0x40]);
        // NO_VECTOR: no interrupt for queue 0.
        w(&mut r, CC_QUEUE_SELECT, 0, 2);
        w(&mut r, CC_QUEUE_MSIX_VECTOR, 0xffff, 2);
        echo(&mut r, &mut rings);
        assert!(sink.take().is_empty());
        // Disabling MSI-X hands the ISR back to INTx.
        msix_control(&mut r, 0);
        assert!(r.irq.level());
        assert_ne!(rd(&mut r, ISR_OFFSET, 1), 0);
        assert!(!r.irq.level());
        // Save and restore keep the table and the mapping; a reset unmaps.
        let s = r.dev.save();
        assert!(s.msix.is_some());
        let (mut other, _) = msix_rig();
        other.dev.restore(&s);
        assert_eq!(other.dev.save(), s);
        w(&mut r, CC_DEVICE_STATUS, 0, 1);
        assert_eq!(rd(&mut r, CC_MSIX_CONFIG, 2), 0xffff);
        w(&mut r, CC_QUEUE_SELECT, 1, 2);
        assert_eq!(rd(&mut r, CC_QUEUE_MSIX_VECTOR, 2), 0xffff);
    }

    #[test]
    fn msix_moves_the_legacy_device_configuration() {
        let (mut r, _) = msix_rig();
        let lr = |r: &mut Rig, off: u64, len: usize| {
            let mut b = [0u8; 4];
            r.dev.bar_read(LEGACY_BAR, off, &mut b[..len]);
            u32::from_le_bytes(b)
        };
        assert_eq!(lr(&mut r, LEG_CONFIG, 1), u32::from(b'a'), "MSI-X off: config at 0x14");
        msix_control(&mut r, 0x8000);
        assert_eq!(lr(&mut r, LEG_CONFIG_MSIX, 1), u32::from(b'a'), "MSI-X on: config at 0x18");
        r.dev.bar_write(LEGACY_BAR, LEG_MSIX_CONFIG_VECTOR, &2u16.to_le_bytes());
        assert_eq!(lr(&mut r, LEG_MSIX_CONFIG_VECTOR, 2), 2);
        r.dev.bar_write(LEGACY_BAR, LEG_QUEUE_SELECT, &1u16.to_le_bytes());
        r.dev.bar_write(LEGACY_BAR, LEG_MSIX_QUEUE_VECTOR, &9u16.to_le_bytes());
        assert_eq!(lr(&mut r, LEG_MSIX_QUEUE_VECTOR, 2), 0xffff);
        r.dev.bar_write(LEGACY_BAR, LEG_MSIX_QUEUE_VECTOR, &1u16.to_le_bytes());
        assert_eq!(lr(&mut r, LEG_MSIX_QUEUE_VECTOR, 2), 1);
        assert_eq!(rd(&mut r, CC_QUEUE_MSIX_VECTOR, 2), 1, "one mapping behind both interfaces");
    }

    #[test]
    fn a_broken_ring_sets_needs_reset() {
        let mut r = rig();
        r.dev.write_config(PCI_COMMAND, &[0x06, 0]);
        w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        w(&mut r, CC_DRIVER_FEATURE_SELECT, 1, 4);
        w(&mut r, CC_DRIVER_FEATURE, 1, 4);
        // A queue whose rings lie outside RAM.
        w(&mut r, CC_QUEUE_SELECT, 0, 2);
        w(&mut r, CC_QUEUE_DESC, 0xfff0_0000, 8);
        w(&mut r, CC_QUEUE_ENABLE, 1, 2);
        assert_ne!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert!(r.irq.level());
        assert_eq!(rd(&mut r, ISR_OFFSET, 1), u64::from(ISR_CONFIG));
        // A ring that goes bad later: the available index jumps.
        w(&mut r, CC_DEVICE_STATUS, 0, 1);
        w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        w(&mut r, CC_DRIVER_FEATURE_SELECT, 1, 4);
        w(&mut r, CC_DRIVER_FEATURE, 1, 4);
        w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
        let mem = r.mem.clone();
        let mut ring = DriverRing::new(&mem, 0x20000, 16);
        w(&mut r, CC_QUEUE_SELECT, 1, 2);
        w(&mut r, CC_QUEUE_DESC, ring.desc, 8);
        w(&mut r, CC_QUEUE_DRIVER, ring.avail, 8);
        w(&mut r, CC_QUEUE_DEVICE, ring.used, 8);
        w(&mut r, CC_QUEUE_ENABLE, 1, 2);
        w(
            &mut r,
            CC_DEVICE_STATUS,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
            1,
        );
        assert_eq!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        ring.set_avail_idx(&mem, 100);
        w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
        assert_ne!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        // Nothing runs until the reset.
        w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
        w(&mut r, CC_DEVICE_STATUS, 0, 1);
        assert_eq!(r.dev.status(), 0);
    }

    #[test]
    fn legacy_interface() {
        let mut r = rig();
        let lw = |r: &mut Rig, off: u64, v: u32, len: usize| r.dev.bar_write(LEGACY_BAR, off, &v.to_le_bytes()[..len]);
        let lr = |r: &mut Rig, off: u64, len: usize| {
            let mut b = [0u8; 4];
            r.dev.bar_read(LEGACY_BAR, off, &mut b[..len]);
            u32::from_le_bytes(b)
        };
        r.dev.write_config(PCI_COMMAND, &[0x05, 0]); // I/O + bus master
        lw(&mut r, LEG_STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        assert_eq!(lr(&mut r, LEG_HOST_FEATURES, 4), (VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0b101) as u32);
        lw(&mut r, LEG_GUEST_FEATURES, 0xffff_ffff, 4);
        assert_eq!(lr(&mut r, LEG_GUEST_FEATURES, 4), (VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0b101) as u32);
        let mem = r.mem.clone();
        let mut rings = Vec::new();
        for (i, pfn) in [(0u16, 0x40u32), (1, 0x50)] {
            lw(&mut r, LEG_QUEUE_SELECT, u32::from(i), 2);
            assert_eq!(lr(&mut r, LEG_QUEUE_SIZE, 2), 16);
            lw(&mut r, LEG_QUEUE_PFN, pfn, 4);
            assert_eq!(lr(&mut r, LEG_QUEUE_PFN, 4), pfn);
            // The legacy layout: avail after the table, used at the next 4 KiB.
            let ring = DriverRing::new(&mem, u64::from(pfn) << 12, 16);
            assert_eq!(ring.used, (u64::from(pfn) << 12) + 0x1000);
            rings.push(ring);
        }
        lw(&mut r, LEG_STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK), 1);
        rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
        mem.write(0x31000, b"legacy").unwrap();
        rings[1].add_chain(&mem, &[(0x31000, 6, false)]);
        lw(&mut r, LEG_QUEUE_NOTIFY, 1, 2);
        assert_eq!(rings[0].take_used(&mem), vec![(0, 6)]);
        assert!(r.irq.level());
        assert_eq!(lr(&mut r, LEG_ISR, 1), 1);
        assert!(!r.irq.level());
        assert_eq!(lr(&mut r, LEG_CONFIG + 2, 1), u32::from(b'c'));
        lw(&mut r, LEG_CONFIG, u32::from(b'q'), 1);
        assert_eq!(lr(&mut r, LEG_CONFIG, 1), u32::from(b'q'));
        // PFN 0 resets the queue; status 0 resets the device.
        lw(&mut r, LEG_QUEUE_SELECT, 1, 2);
        lw(&mut r, LEG_QUEUE_PFN, 0, 4);
        assert_eq!(lr(&mut r, LEG_QUEUE_PFN, 4), 0);
        lw(&mut r, LEG_STATUS, 0, 1);
        assert_eq!(lr(&mut r, LEG_STATUS, 1), 0);
        // Past the BAR, nothing.
        assert_eq!(lr(&mut r, 0x40, 1), 0);
    }
}
