//! The saved state of the UHCI controller and its devices, and its checks.
//!
//! The state is what the guest can observe: the configuration space, the
//! registers (with what set USBINT), the frame timing as clock time, each
//! port's status and control bits, and each device's address,
//! configuration, control transfer in progress and queued reports. A
//! restore checks every field against its range, that each port holds the
//! device the state says, and that each device's transfer fits its
//! buffers; then it loads all of it and drives the interrupt line.

use persist::{Persist, PersistError};

use super::hid::HidState;
use super::{
    Port, Regs, Uhci, CAUSE_IOC, CAUSE_SHORT, CMD_MASK, FLBASE_MASK, FRNUM_MASK, INTR_MASK, PORT_CCS, PORT_MASK,
    PORT_PE, STS_MASK, STS_USBINT, UHCI_PORTS,
};
use crate::clock::MAX_GUEST_NS;
use crate::pci::config::PciConfigState;

/// What a [`PersistError`] of the controller names.
const PART: &str = "PIIX3 USB (UHCI)";

/// The saved state of the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UhciState {
    /// The configuration space (Command, BAR4, LEGSUP).
    pub config: PciConfigState,
    /// USBCMD.
    pub cmd: u16,
    /// USBSTS bits 4:0 (HCHALTED follows USBCMD.RS).
    pub status: u16,
    /// What set USBINT: bit 0 an IOC, bit 1 a short packet.
    pub causes: u8,
    /// USBINTR.
    pub intr: u16,
    /// FRNUM.
    pub frnum: u16,
    /// FLBASEADD.
    pub flbase: u32,
    /// SOFMOD.
    pub sofmod: u8,
    /// The clock time the current frame started.
    pub frame_start_ns: u64,
    /// Frames run since power-on.
    pub frame_count: u64,
    /// The root hub ports.
    pub ports: Vec<PortState>,
}

/// The saved state of a root hub port.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PortState {
    /// PORTSC, without the bit that always reads 1.
    pub portsc: u16,
    /// The device plugged in.
    pub device: Option<HidState>,
}

impl Uhci {
    /// The checks of a restore, changing nothing.
    fn check_state(&self, s: &UhciState) -> Result<(), PersistError> {
        self.config.check_state(&s.config)?;
        let bad = |field: &'static str, v: u64| {
            PersistError::new(PART, field, format!("has bits set that do not exist: {v:#x}"))
        };
        if s.cmd & !CMD_MASK != 0 {
            return Err(bad("cmd", s.cmd.into()));
        }
        if s.status & !STS_MASK != 0 {
            return Err(bad("status", s.status.into()));
        }
        if s.causes & !(CAUSE_IOC | CAUSE_SHORT) != 0 || (s.causes != 0 && s.status & STS_USBINT == 0) {
            return Err(PersistError::new(PART, "causes", format!("{:#x} with USBSTS {:#x}", s.causes, s.status)));
        }
        if s.intr & !INTR_MASK != 0 {
            return Err(bad("intr", s.intr.into()));
        }
        if s.frnum & !FRNUM_MASK != 0 {
            return Err(bad("frnum", s.frnum.into()));
        }
        if s.flbase & !FLBASE_MASK != 0 {
            return Err(bad("flbase", s.flbase.into()));
        }
        if s.sofmod > 0x7f {
            return Err(bad("sofmod", s.sofmod.into()));
        }
        PersistError::check_max(PART, "frame_start_ns", s.frame_start_ns, MAX_GUEST_NS)?;
        PersistError::check_len(PART, "ports", s.ports.len(), UHCI_PORTS)?;
        for (i, (p, here)) in s.ports.iter().zip(&self.ports).enumerate() {
            PersistError::check(p.portsc & !PORT_MASK == 0, PART, "ports", || {
                format!("port {} status {:#06x} has bits that do not exist", i + 1, p.portsc)
            })?;
            let connected = p.portsc & PORT_CCS != 0;
            PersistError::check(connected == p.device.is_some(), PART, "ports", || {
                format!("port {} status {:#06x} disagrees with its device {:?}", i + 1, p.portsc, p.device.is_some())
            })?;
            PersistError::check(connected || p.portsc & PORT_PE == 0, PART, "ports", || {
                format!("port {} is enabled with nothing connected", i + 1)
            })?;
            match (&p.device, &here.device) {
                (None, None) => {}
                (Some(d), Some(dev)) => {
                    dev.check_state(d).map_err(|(field, problem)| PersistError::new(PART, field, problem))?
                }
                (saved, _) => {
                    return Err(PersistError::new(
                        PART,
                        "devices",
                        format!(
                            "port {} held {}, the machine has {}",
                            i + 1,
                            saved.as_ref().map_or("nothing".to_string(), |d| format!("{:?}", d.kind)),
                            here.device.as_ref().map_or("nothing".to_string(), |d| format!("{:?}", d.kind)),
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Loads a state [`Uhci::check_state`] passed.
    fn load_state(&mut self, s: &UhciState) {
        self.config.load_state(&s.config);
        self.regs = Regs {
            cmd: s.cmd,
            status: s.status,
            causes: s.causes,
            intr: s.intr,
            frnum: s.frnum,
            flbase: s.flbase,
            sofmod: s.sofmod,
        };
        self.frame_start_ns = s.frame_start_ns;
        self.frame_count = s.frame_count;
        self.idle_frames = 0;
        for (port, p) in self.ports.iter_mut().zip(&s.ports) {
            let Port { portsc, device } = port;
            *portsc = p.portsc;
            if let (Some(dev), Some(d)) = (device.as_mut(), &p.device) {
                dev.load_state(d);
            }
        }
        let level = self.irq_wanted();
        self.irq_level = level;
        self.irq.set_level(level);
    }
}

/// Restore checks the configuration space, every register against its
/// bits, the ports against the devices plugged in and each device's state;
/// then it loads the state and drives the interrupt line to match.
impl Persist for Uhci {
    type State = UhciState;

    fn save(&self) -> UhciState {
        let r = &self.regs;
        UhciState {
            config: self.config.save(),
            cmd: r.cmd,
            status: r.status,
            causes: r.causes,
            intr: r.intr,
            frnum: r.frnum,
            flbase: r.flbase,
            sofmod: r.sofmod,
            frame_start_ns: self.frame_start_ns,
            frame_count: self.frame_count,
            ports: self
                .ports
                .iter()
                .map(|p| PortState { portsc: p.portsc, device: p.device.as_ref().map(|d| d.save()) })
                .collect(),
        }
    }

    fn restore(&mut self, state: &UhciState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}
