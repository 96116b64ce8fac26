//! The device models of ferrovm: the bus that routes port I/O and MMIO, the
//! PC chipset, the 16550A UART, PCI, virtio, NICs and disks, and the host side
//! of the serial console. The device models never know which accelerator runs
//! the CPU: they see register offsets, raise interrupt lines and file machine
//! events, and the machine wires them to the interpreter, the JIT or KVM.

#![forbid(unsafe_code)]

mod access;
pub mod acpi_pm;
pub mod block;
pub mod bus;
pub mod clock;
pub mod console;
pub mod debug_exit;
pub mod debugcon;
pub mod e1000;
pub mod fw_cfg;
pub mod hpet;
pub mod i8042;
pub mod intc;
pub mod ioapic;
pub mod irq;
pub mod lapic;
mod log_once;
pub mod mapping;
pub mod msi;
pub mod nic;
pub mod pc;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod port92;
pub mod post_code;
pub mod power;
pub mod rtc;
pub mod serial;
pub mod virtio;
pub mod virtio_blk;
pub mod virtio_net;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
pub use clock::{Clock, HostClock, ManualClock, SharedClock, Timed, TimerSource, Timers, Tsc};
pub use intc::InterruptController;
pub use irq::IrqLine;
pub use mapping::{AddressSpace, BusAlias, BusMapping};
pub use msi::{MsiMessage, MsiSink};
pub use pc::PcChipset;
pub use power::{VmEvent, VmEvents};
