//! The device models of ferrovm: the bus that routes port I/O and MMIO, the
//! PC chipset, the 16550A UART, PCI, virtio, NICs and disks, and the host side
//! of the serial console.
//!
//! The modules, by kind:
//! - [`bus`], [`mapping`], [`irq`], [`clock`], [`power`]: what devices plug
//!   into, and the events they file;
//! - [`legacy`]: the ISA devices of a PC (UART, PIT, RTC, i8042, HPET,
//!   the 8237 DMA pair, fw_cfg, the ACPI PM block, the small ports);
//! - [`intc`]: the interrupt controllers (8259 PIC, I/O APIC, local APIC)
//!   and MSI;
//! - [`pci`]: the root complex, the i440FX host bridge, PIIX, MSI-X;
//! - [`pflash`]: the CFI parallel flash OVMF keeps its variable store in;
//! - [`virtio`]: the queue, the PCI transport, and the net, block and entropy devices;
//! - [`nic`]: the e1000 and what NIC models share (offloads, receive merging);
//! - [`block`]: disk images;
//! - [`ide`]: the PIIX3 IDE controller with ATA disks and ATAPI CD-ROMs;
//! - [`floppy`]: the 82077AA floppy controller with its drives, over the
//!   8237 DMA pair of [`legacy::dma8237`];
//! - [`io_thread`]: the host thread that polls backends for NICs and disks;
//! - [`pc`]: the chipset assembled; [`console`]: the host side of the serial
//!   console.
//!
//! The device models never know which accelerator runs the CPU: they see
//! register offsets, raise interrupt lines and file machine events, and the
//! machine wires them to the interpreter, the JIT or KVM.

#![forbid(unsafe_code)]

mod access;
pub mod block;
pub mod bus;
pub mod clock;
pub mod console;
pub mod display;
pub mod floppy;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod ide;
pub mod intc;
pub mod io_thread;
pub mod irq;
pub mod legacy;
mod log_once;
pub mod mapping;
pub mod nic;
pub mod pc;
pub mod pci;
pub mod pflash;
pub mod power;
pub mod usb;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
pub use clock::{Clock, HostClock, ManualClock, SharedClock, Timed, TimerSource, Timers, Tsc};
pub use intc::msi::{MsiMessage, MsiSink};
pub use intc::InterruptController;
pub use irq::IrqLine;
pub use mapping::{AddressSpace, BusAlias, BusMapping};
pub use pc::PcChipset;
pub use power::{VmEvent, VmEvents};
