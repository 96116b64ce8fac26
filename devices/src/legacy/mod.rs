//! The ISA devices of a PC: what sits behind fixed ports (and the HPET's
//! fixed MMIO window) on every PC since the AT.

pub mod acpi_pm;
pub mod debug_exit;
pub mod debugcon;
pub mod dma8237;
pub mod fw_cfg;
pub mod hpet;
pub mod i8042;
pub mod pit;
pub mod port92;
pub mod post_code;
pub mod rtc;
pub mod serial;
