//! A debugger's stops in KVM (`KVM_SET_GUEST_DEBUG`): single steps, and
//! breakpoints and watchpoints in the four debug registers KVM loads for
//! the guest while it is debugged (the guest's own DR0-DR7 are set aside
//! meanwhile).
//!
//! [`guest_debug`] encodes the stops, with no vCPU, so it is unit-tested;
//! [`KvmVcpu::set_guest_debug`] hands the result to KVM. A stop comes back
//! as [`crate::VmExit::Debug`], whose DR6 says which register hit
//! ([`hit_slot`]) or that a step ended ([`DR6_BS`]).

use kvm_bindings::{
    kvm_guest_debug, kvm_guest_debug_arch, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP,
};

use super::KvmVcpu;
use crate::AccelError;

/// How many breakpoints and watchpoints the debug registers hold.
pub const HW_SLOTS: usize = 4;

/// DR6.BS: a single step ended.
pub const DR6_BS: u64 = 1 << 14;

/// One stop in a debug register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwStop {
    /// Before the instruction at this linear address.
    Exec(u64),
    /// After an instruction that wrote `len` bytes (1, 2, 4 or 8, aligned)
    /// at this linear address.
    Write { addr: u64, len: u64 },
    /// After an instruction that read or wrote them (x86 has no read-only
    /// data breakpoint).
    Access { addr: u64, len: u64 },
}

/// What the guest's debugging asks of KVM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// Stop after one instruction.
    pub step: bool,
    /// Take no interrupt before the stepped instruction.
    pub block_irq: bool,
    /// At most [`HW_SLOTS`] stops.
    pub hw: Vec<HwStop>,
}

/// The `kvm_guest_debug` for `d`: why not, for stops the debug registers
/// cannot hold (more than four, a length other than 1, 2, 4 or 8, an
/// address not aligned to its length).
pub fn guest_debug(d: &GuestDebug) -> Result<kvm_guest_debug, String> {
    if d.hw.len() > HW_SLOTS {
        return Err(format!("the debug registers hold {HW_SLOTS} breakpoints and watchpoints; {} are set", d.hw.len()));
    }
    let mut arch = kvm_guest_debug_arch::default();
    // DR7 bit 10 reads as one.
    let mut dr7: u64 = 1 << 10;
    for (slot, stop) in d.hw.iter().enumerate() {
        let (addr, rw, len) = match *stop {
            HwStop::Exec(addr) => (addr, 0b00, 1),
            HwStop::Write { addr, len } => (addr, 0b01, len),
            HwStop::Access { addr, len } => (addr, 0b11, len),
        };
        let len_bits: u64 = match len {
            1 => 0b00,
            2 => 0b01,
            4 => 0b11,
            8 => 0b10,
            _ => return Err(format!("a watchpoint of {len} bytes: the debug registers watch 1, 2, 4 or 8")),
        };
        if addr % len != 0 {
            return Err(format!("a watchpoint of {len} bytes at {addr:#x}: the debug registers need it aligned"));
        }
        arch.debugreg[slot] = addr;
        // Gn, then R/Wn and LENn.
        dr7 |= 2 << (slot * 2);
        dr7 |= (rw | len_bits << 2) << (16 + slot * 4);
    }
    arch.debugreg[7] = dr7;
    let mut control = KVM_GUESTDBG_ENABLE;
    if d.step {
        control |= KVM_GUESTDBG_SINGLESTEP;
        if d.block_irq {
            control |= KVM_GUESTDBG_BLOCKIRQ;
        }
    }
    if !d.hw.is_empty() {
        control |= KVM_GUESTDBG_USE_HW_BP;
    }
    Ok(kvm_guest_debug { control, pad: 0, arch })
}

/// The debug register (0-3) whose stop DR6 reports, the lowest first.
pub fn hit_slot(dr6: u64) -> Option<usize> {
    (0..HW_SLOTS).find(|&i| dr6 & (1 << i) != 0)
}

impl KvmVcpu {
    /// Arms the stops of `d` (with `None`, ends the guest's debugging).
    /// Where KVM cannot hold interrupts off a step, the step goes without.
    pub fn set_guest_debug(&mut self, d: Option<&GuestDebug>) -> Result<(), AccelError> {
        let regs = match d {
            Some(d) => guest_debug(d).map_err(|e| AccelError::ioctl("KVM_SET_GUEST_DEBUG", e))?,
            None => kvm_guest_debug::default(),
        };
        let fd = self.fd();
        match fd.set_guest_debug(&regs) {
            Err(e) if e.errno() == libc::EINVAL && regs.control & KVM_GUESTDBG_BLOCKIRQ != 0 => {
                let without = kvm_guest_debug { control: regs.control & !KVM_GUESTDBG_BLOCKIRQ, ..regs };
                fd.set_guest_debug(&without).map_err(|e| AccelError::ioctl("KVM_SET_GUEST_DEBUG", e))
            }
            other => other.map_err(|e| AccelError::ioctl("KVM_SET_GUEST_DEBUG", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_go_into_the_debug_registers() {
        let d = GuestDebug {
            step: false,
            block_irq: true,
            hw: vec![
                HwStop::Exec(0x10_0080),
                HwStop::Write { addr: 0x30_3000, len: 4 },
                HwStop::Access { addr: 0x30_3008, len: 8 },
            ],
        };
        let g = guest_debug(&d).unwrap();
        assert_eq!(g.control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, "no step, so no BLOCKIRQ");
        assert_eq!(&g.arch.debugreg[..3], &[0x10_0080, 0x30_3000, 0x30_3008]);
        let dr7 = g.arch.debugreg[7];
        assert_eq!(dr7 & 0xff, 0b10_1010, "G0, G1 and G2");
        assert_eq!((dr7 >> 16) & 0xf, 0b0000, "slot 0: execute, one byte");
        assert_eq!((dr7 >> 20) & 0xf, 0b1101, "slot 1: write, four bytes");
        assert_eq!((dr7 >> 24) & 0xf, 0b1011, "slot 2: access, eight bytes");
        assert_eq!(dr7 & (1 << 10), 1 << 10);
    }

    #[test]
    fn a_step_and_what_does_not_fit_the_registers() {
        let step = guest_debug(&GuestDebug { step: true, block_irq: true, hw: vec![] }).unwrap();
        assert_eq!(step.control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ);
        let five = GuestDebug { hw: vec![HwStop::Exec(0); 5], ..Default::default() };
        assert!(guest_debug(&five).unwrap_err().contains("hold 4"));
        let odd = GuestDebug { hw: vec![HwStop::Write { addr: 0x1000, len: 3 }], ..Default::default() };
        assert!(guest_debug(&odd).is_err());
        let unaligned = GuestDebug { hw: vec![HwStop::Access { addr: 0x1002, len: 4 }], ..Default::default() };
        assert!(guest_debug(&unaligned).unwrap_err().contains("aligned"));
        assert_eq!(hit_slot(0b0100 | DR6_BS), Some(2));
        assert_eq!(hit_slot(DR6_BS), None);
    }
}
