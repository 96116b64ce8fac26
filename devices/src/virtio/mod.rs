//! Virtio 1.x: the split virtqueue ([`queue`]) and the PCI transport
//! ([`pci`]), shared by every virtio device model: virtio-net ([`net`]),
//! virtio-blk ([`blk`]), the virtio-rng entropy device ([`rng`]) and the
//! virtio console, virtio-serial ([`console`]).
//!
//! Reference: Virtual I/O Device (VIRTIO) Version 1.1 (OASIS, 2019):
//! 2.1 device status, 2.2 feature bits, 2.6 split virtqueues, 4.1 virtio
//! over PCI (including 4.1.4.8, the legacy interface of transitional
//! devices), 6 reserved feature bits.
//!
//! A device model implements [`VirtioDevice`]: its type, features, queue
//! sizes and configuration space, what to do when the driver notifies a
//! queue, and its saved state ([`Persist`]). The transport owns the queues
//! and the interrupt, and hands the device a [`Context`] through which it
//! takes and returns buffers and signals the driver. The transport's saved
//! state ([`pci::VirtioPciState`]) holds its own registers, each queue's
//! state and the device's.

use std::time::{Duration, Instant};

use mmu::GuestMemory;
use persist::Persist;

pub mod blk;
pub mod console;
pub mod net;
pub mod pci;
pub mod queue;
pub mod rng;

pub use pci::VirtioPci;
pub use queue::{Buffer, DescriptorChain, Queue, QueueError};

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready; the device may run.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 128;

/// Feature: descriptors may point at indirect tables.
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
/// Feature: the modern (1.x) interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// ISR bit: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// Virtio device type of a network card.
pub const VIRTIO_ID_NET: u16 = 1;
/// Virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// Virtio device type of an entropy source.
pub const VIRTIO_ID_RNG: u16 = 4;

/// What a device sees of its transport while it works.
pub struct Context<'a> {
    /// Guest memory, for the queues and the buffers.
    pub mem: &'a GuestMemory,
    /// The device's queues, in the device's numbering.
    pub queues: &'a mut [Queue],
    /// The features the driver accepted.
    pub features: u64,
    /// Whether the driver set DRIVER_OK and bus mastering is on: only then
    /// may the device touch the queues.
    pub running: bool,
    pub(crate) isr: &'a mut u8,
    /// What to signal since the last delivery: bit q for queue q, and
    /// [`EVENT_CONFIG`] for the configuration (the transport sends one
    /// MSI-X message per bit).
    pub(crate) events: &'a mut u64,
    pub(crate) needs_reset: &'a mut bool,
}

/// [`Context`] event bit of a configuration change.
pub(crate) const EVENT_CONFIG: u64 = 1 << 63;

/// [`Context`] event bit of queue `q` (queues from 63 on share the last bit).
pub(crate) fn event_queue(q: usize) -> u64 {
    1 << q.min(62)
}

impl Context<'_> {
    /// Whether the driver accepted `feature` (a `1 << n` mask).
    pub fn has(&self, feature: u64) -> bool {
        self.features & feature == feature
    }

    /// Tells the driver that queue `q` has used buffers, if it wants to hear.
    pub fn signal_used(&mut self, q: usize) {
        let Some(queue) = self.queues.get_mut(q) else { return };
        match queue.needs_notification(self.mem) {
            Ok(true) => {
                *self.isr |= ISR_QUEUE;
                *self.events |= event_queue(q);
            }
            Ok(false) => {}
            Err(e) => {
                queue.mark_broken();
                self.fail(&e);
            }
        }
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config(&mut self) {
        *self.isr |= ISR_CONFIG;
        *self.events |= EVENT_CONFIG;
    }

    /// The driver broke a ring: report DEVICE_NEEDS_RESET (2.1.2) and stop
    /// trusting it.
    pub fn fail(&mut self, err: &QueueError) {
        if !*self.needs_reset {
            tracing::warn!(target: "devices", "virtio: {err}; the device needs a reset");
        }
        *self.needs_reset = true;
        self.signal_config();
    }
}

/// A virtio device model behind a transport.
///
/// Its [`Persist`] state is what the model itself holds (a configuration
/// the driver wrote, work not yet done); the transport saves the queues and
/// the negotiated features. The transport checks its own part of a state
/// first, then has the device restore its part, then takes its own, so a
/// state the device refuses changes nothing. The transport checks the
/// negotiated features against [`VirtioDevice::features`] before the
/// device's restore: what a device offers must not depend on what its
/// restore loads.
pub trait VirtioDevice: Send + Persist {
    /// The virtio device type ([`VIRTIO_ID_NET`], ...).
    fn device_type(&self) -> u16;

    /// A short name for logs.
    fn debug_label(&self) -> String;

    /// The largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;

    /// The features the device offers, transport features included.
    fn features(&self) -> u64;

    /// Length of the device-specific configuration space.
    fn config_len(&self) -> usize;

    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: usize, data: &mut [u8]);

    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The driver set DRIVER_OK with these `features`.
    fn activate(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// The driver reset the device.
    fn reset(&mut self);

    /// The driver notified queue `queue`.
    fn notify(&mut self, queue: usize, ctx: &mut Context<'_>);

    /// Host-side work (a backend's readiness, timers): called by the
    /// machine's I/O thread, also while the device is not running
    /// (`ctx.running`), so that host readiness is always consumed. Returns
    /// when to call again at the latest.
    fn poll(&mut self, ctx: &mut Context<'_>, now: Instant) -> Option<Duration> {
        let _ = (ctx, now);
        None
    }
}
