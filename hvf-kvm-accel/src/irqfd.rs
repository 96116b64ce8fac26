//! Message-signalled interrupts through irqfds.
//!
//! [`MsiIrqfds::send`] delivers a device's MSI or MSI-X message to the
//! in-kernel local APICs by writing an eventfd that KVM routes to that
//! message ([`Vm::register_msi_irqfd`]), made the first time the message
//! is sent. The messages come from registers the guest programs, so there
//! are at most [`MAX_IRQFDS`] of them (each holds a descriptor and a GSI);
//! past that, and wherever making one fails, the message goes by
//! [`Vm::signal_msi`] instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{AccelError, EventFd, Vm};

/// Messages that get an irqfd at most. A Linux guest uses one per queue
/// and one for configuration changes per virtio function.
pub const MAX_IRQFDS: usize = 64;

/// The irqfds of the messages sent so far; they are detached when this is
/// dropped.
pub struct MsiIrqfds {
    vm: Arc<dyn Vm>,
    routes: Mutex<Routes>,
    by_irqfd: AtomicU64,
    by_ioctl: AtomicU64,
}

#[derive(Default)]
struct Routes {
    fds: HashMap<(u64, u32), (EventFd, u32)>,
    /// Making an irqfd failed once: logged, and not tried again.
    failed: bool,
}

impl std::fmt::Debug for MsiIrqfds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl MsiIrqfds {
    /// Irqfds on `vm`, which must have the in-kernel irqchip.
    pub fn new(vm: Arc<dyn Vm>) -> Self {
        Self { vm, routes: Mutex::default(), by_irqfd: AtomicU64::new(0), by_ioctl: AtomicU64::new(0) }
    }

    /// Sends `data` to `address`.
    pub fn send(&self, address: u64, data: u32) -> Result<(), AccelError> {
        let mut r = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !r.fds.contains_key(&(address, data)) && !r.failed && r.fds.len() < MAX_IRQFDS {
            match self.vm.register_msi_irqfd(address, data) {
                Ok(fd) => {
                    r.fds.insert((address, data), fd);
                }
                Err(e) => {
                    r.failed = true;
                    tracing::warn!(target: "accel", "no irqfd for MSI {address:#x}/{data:#x}: {e}; messages go by KVM_SIGNAL_MSI");
                }
            }
        }
        if let Some((fd, _)) = r.fds.get(&(address, data)) {
            if fd.write(1).is_ok() {
                self.by_irqfd.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        drop(r);
        self.by_ioctl.fetch_add(1, Ordering::Relaxed);
        self.vm.signal_msi(address, data)
    }

    /// Messages sent by irqfd and by KVM_SIGNAL_MSI, and the irqfds made.
    pub fn counts(&self) -> (u64, u64, usize) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner()).fds.len();
        (self.by_irqfd.load(Ordering::Relaxed), self.by_ioctl.load(Ordering::Relaxed), routes)
    }

    /// One line for statistics.
    pub fn summary(&self) -> String {
        let (fd, ioctl, routes) = self.counts();
        format!("message interrupts: {fd} by irqfd ({routes} routes), {ioctl} by KVM_SIGNAL_MSI")
    }
}

impl Drop for MsiIrqfds {
    fn drop(&mut self) {
        let r = self.routes.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, (fd, gsi)) in r.fds.drain() {
            if let Err(e) = self.vm.unregister_msi_irqfd(&fd, gsi) {
                tracing::debug!(target: "accel", "MSI irqfd on GSI {gsi}: {e}");
            }
        }
    }
}
