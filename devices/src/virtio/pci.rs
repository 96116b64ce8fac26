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
use persist::{Persist, PersistError};

use super::queue::{Queue, QueueState};
use super::{
    event_queue, Context, VirtioDevice, EVENT_CONFIG, ISR_CONFIG, ISR_QUEUE, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_ID_NET,
};
use crate::access::fill_le;
use crate::bus::{BusDevice, SharedDevice};
use crate::intc::msi::MsiSink;
use crate::irq::IrqLine;
use crate::pci::config::{
    PciBarKind, PciConfigSpace, PciConfigState, COMMAND_INTX_DISABLE, COMMAND_MASTER, PCI_STATUS,
};
use crate::pci::msix::{Msix, MsixState, MAX_VECTORS, MSIX_BAR_SIZE, MSIX_CAP_LEN};
use crate::pci::{PciDevice, PciInterruptPin};

/// Red Hat's PCI vendor ID, which virtio uses.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Transitional device IDs start here (device type 1 is 1000h).
pub const VIRTIO_PCI_TRANSITIONAL_BASE: u16 = 0x1000;

/// The transitional PCI device ID of virtio device type `ty` (4.1.2.3):
/// the legacy IDs do not follow the type numbers past the block device
/// (the entropy device, type 4, is 1005h). `None` for a type with no
/// transitional ID.
pub fn transitional_device_id(ty: u16) -> Option<u16> {
    let off = match ty {
        1 => 0, // network
        2 => 1, // block
        5 => 2, // memory balloon
        3 => 3, // console
        8 => 4, // SCSI host
        4 => 5, // entropy source
        9 => 9, // 9P transport
        _ => return None,
    };
    Some(VIRTIO_PCI_TRANSITIONAL_BASE + off)
}
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

/// The saved state of a virtio function: the transport's registers, each
/// queue's state and the device model's (`S`, its [`Persist`] state).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VirtioPciState<S> {
    /// The PCI configuration space.
    pub config: PciConfigState,
    /// The queues, in the device's numbering.
    pub queues: Vec<QueueState>,
    /// The device status the driver wrote (DEVICE_NEEDS_RESET is `needs_reset`).
    pub status: u8,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    /// The features the driver accepted: a subset of those the device offers.
    pub driver_features: u64,
    pub queue_select: u16,
    /// The ISR: [`super::ISR_QUEUE`] and [`ISR_CONFIG`].
    pub isr: u8,
    pub config_generation: u8,
    /// The driver broke a ring: DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
    /// The MSI-X table and pending bits, when the function has MSI-X.
    pub msix: Option<MsixState>,
    /// The MSI-X vector of configuration changes (NO_VECTOR: none).
    pub config_vector: u16,
    /// Each queue's MSI-X vector.
    pub queue_vectors: Vec<u16>,
    /// The device model's state.
    pub device: S,
}

/// What a [`PersistError`] of the transport names.
const PART: &str = "virtio PCI function";

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
        VIRTIO_ID_NET => 0x02_00_00,                     // network, Ethernet
        VIRTIO_ID_BLOCK => 0x01_00_00,                   // mass storage, SCSI (as QEMU)
        super::console::VIRTIO_ID_CONSOLE => 0x07_80_00, // communication, other (as QEMU)
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
            // A type without a legacy ID gets the modern one (1040h + type).
            transitional_device_id(ty).unwrap_or(0x1040 + ty),
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

    /// `rings` writes to the [`VirtioPci::doorbells`] of `queue`, which
    /// reached the device another way than through its BAR (an eventfd,
    /// whose count gathers the writes made before it was read). The queue
    /// is served once for all of them.
    pub fn doorbell(&mut self, queue: u16, rings: u64) {
        self.doorbell_rings = self.doorbell_rings.saturating_add(rings);
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

    /// A system reset (PCI RST#): the device as a driver's reset leaves it
    /// (status 0, queues off, no interrupt pending), so that it stops using
    /// guest memory before the firmware runs again. The PCI header is kept,
    /// as the chipset keeps the rest of PCI configuration across a reset.
    pub fn system_reset(&mut self) {
        self.reset();
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
            // Part of a feature register or its select, read narrower than
            // the field (iPXE's modern driver reads these 32-bit fields
            // with 16-bit accesses): the field's bytes, as QEMU answers.
            (o, 1 | 2) if o < CC_MSIX_CONFIG && (o % 4) as usize + len <= 4 => {
                let mut full = [0u8; 4];
                self.common_read(o & !3, &mut full);
                let at = (o % 4) as usize;
                data.copy_from_slice(&full[at..at + len]);
                return;
            }
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

    /// Checks the transport's part of `s` (everything but the device's),
    /// before anything changes.
    fn check(&self, s: &VirtioPciState<D::State>) -> Result<(), PersistError> {
        self.config.check_state(&s.config)?;
        PersistError::check(s.status & STATUS_DEVICE_NEEDS_RESET == 0, PART, "status", || {
            format!("is {:#04x}: DEVICE_NEEDS_RESET is kept in needs_reset", s.status)
        })?;
        let offered = self.device.features();
        PersistError::check(s.driver_features & !offered == 0, PART, "driver_features", || {
            format!("are {:#x}, not a subset of the offered {offered:#x}", s.driver_features)
        })?;
        PersistError::check(s.isr & !(ISR_QUEUE | ISR_CONFIG) == 0, PART, "isr", || {
            format!("is {:#04x}, with bits other than the queue and configuration ones", s.isr)
        })?;
        PersistError::check_len(PART, "queues", s.queues.len(), self.queues.len())?;
        for (i, (q, qs)) in self.queues.iter().zip(&s.queues).enumerate() {
            q.check(qs).map_err(|mut e| {
                e.problem = format!("{} (queue {i})", e.problem);
                e
            })?;
            if qs.ready && !qs.broken {
                // The rings of a queue the device uses lie in guest RAM.
                let mut probe = Queue::new(q.max_size);
                probe.load(qs);
                probe.validate(&self.mem).map_err(|e| PersistError::new(PART, "queues", format!("queue {i}: {e}")))?;
            }
        }
        match (&self.msix, &s.msix) {
            (Some(m), Some(ms)) => m.check(ms)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(PersistError::new(PART, "msix", "the state has no MSI-X table, this function one"));
            }
            (None, Some(_)) => {
                return Err(PersistError::new(PART, "msix", "the state has an MSI-X table, this function none"));
            }
        }
        let vectors = self.msix.as_ref().map_or(0, Msix::vectors);
        let mapped = |v: u16| v == VIRTIO_MSI_NO_VECTOR || v < vectors;
        PersistError::check(mapped(s.config_vector), PART, "config_vector", || {
            format!("is {}, not NO_VECTOR nor one of the {vectors} vectors of the table", s.config_vector)
        })?;
        PersistError::check_len(PART, "queue_vectors", s.queue_vectors.len(), self.queues.len())?;
        if let Some((q, v)) = s.queue_vectors.iter().enumerate().find(|&(_, &v)| !mapped(v)) {
            return Err(PersistError::new(
                PART,
                "queue_vectors",
                format!("queue {q}'s is {v}, not NO_VECTOR nor one of the {vectors} vectors of the table"),
            ));
        }
        Ok(())
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

impl<D: VirtioDevice> Persist for VirtioPci<D> {
    type State = VirtioPciState<D::State>;

    fn save(&self) -> Self::State {
        VirtioPciState {
            config: self.config.save(),
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
            device: self.device.save(),
        }
    }

    /// Restores the function: its own part is checked, the device restores
    /// its part (checking it), then the transport takes its own. The
    /// interrupt line follows the restored ISR; no MSI-X message is sent.
    fn restore(&mut self, s: &Self::State) -> Result<(), PersistError> {
        self.check(s)?;
        self.device.restore(&s.device)?;
        self.config.load_state(&s.config);
        for (q, qs) in self.queues.iter_mut().zip(&s.queues) {
            q.load(qs);
        }
        self.status = s.status;
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.queue_select = s.queue_select;
        self.isr = s.isr;
        self.events = 0;
        self.config_generation = s.config_generation;
        self.needs_reset = s.needs_reset;
        if let (Some(m), Some(ms)) = (self.msix.as_mut(), s.msix.as_ref()) {
            m.load(ms);
        }
        self.config_vector = s.config_vector;
        self.queue_vectors.clone_from(&s.queue_vectors);
        self.update_irq();
        Ok(())
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
mod tests;

/// What the device models' tests share: a driver's feature negotiation.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK};

    /// Writes `v` (`len` bytes) at `off` of the modern BAR.
    pub(crate) fn w<D: VirtioDevice>(dev: &mut VirtioPci<D>, off: u64, v: u64, len: usize) {
        dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
    }

    /// Acknowledges the device, accepts `features` and sets FEATURES_OK,
    /// as a driver does through the common configuration.
    pub(crate) fn negotiate<D: VirtioDevice>(dev: &mut VirtioPci<D>, features: u64) {
        w(dev, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        w(dev, CC_DRIVER_FEATURE_SELECT, 0, 4);
        w(dev, CC_DRIVER_FEATURE, features & 0xffff_ffff, 4);
        w(dev, CC_DRIVER_FEATURE_SELECT, 1, 4);
        w(dev, CC_DRIVER_FEATURE, features >> 32, 4);
        w(dev, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    }

    /// Gives queue `q` a 16-entry ring at `base` and enables it.
    pub(crate) fn enable_queue<D: VirtioDevice>(
        dev: &mut VirtioPci<D>,
        mem: &GuestMemory,
        q: u16,
        base: u64,
    ) -> crate::virtio::queue::testing::DriverRing {
        let ring = crate::virtio::queue::testing::DriverRing::new(mem, base, 16);
        w(dev, CC_QUEUE_SELECT, u64::from(q), 2);
        w(dev, CC_QUEUE_SIZE, 16, 2);
        w(dev, CC_QUEUE_DESC, ring.desc, 8);
        w(dev, CC_QUEUE_DRIVER, ring.avail, 8);
        w(dev, CC_QUEUE_DEVICE, ring.used, 8);
        w(dev, CC_QUEUE_ENABLE, 1, 2);
        ring
    }
}
