//! KVM's in-kernel interrupt controllers and PIT, read and written whole.
//!
//! A guest wholly in KVM keeps its 8259A pair, I/O APIC, PIT and local
//! APICs in the kernel. To save, migrate or debug it, their state is read
//! out when the vCPUs stop ([`KvmVm::chips`], [`KvmVcpu::lapic`]) and
//! written into a new VM before its vCPUs run ([`KvmVm::set_chips`],
//! [`KvmVcpu::set_lapic`]). These types carry KVM's own structures with
//! the unions and host times taken out, so the caller converts them with
//! safe code.

use kvm_bindings::{
    kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2, Msrs, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
pub use kvm_bindings::{
    kvm_pic_state, kvm_pit_channel_state, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED, KVM_PIT_FLAGS_SPEAKER_DATA_ON,
};

use super::{KvmVcpu, KvmVm};
use crate::{AccelError, IrqChip};

/// Pins of KVM's I/O APIC.
pub const IOAPIC_PINS: usize = 24;

/// The size of the local APIC's register page.
pub const LAPIC_PAGE: usize = 1024;

/// IA32_TSC_DEADLINE.
const TSC_DEADLINE: u32 = 0x6e0;

/// KVM's I/O APIC (`kvm_ioapic_state`), its redirection table as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoapicRegs {
    /// The I/O APIC ID (bits 3:0), not shifted.
    pub id: u32,
    /// IOREGSEL.
    pub ioregsel: u32,
    /// Pins whose interrupt is requested: asserted level-triggered pins,
    /// and edge-triggered ones not yet delivered.
    pub irr: u32,
    /// The redirection entries.
    pub redirection: [u64; IOAPIC_PINS],
}

/// KVM's PIT (`kvm_pit_state2`), with each counter's start as an age.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PitRegs {
    /// Counters 0-2; `count_load_time` is left as KVM gave it (a host
    /// time), and ignored when written.
    pub channels: [kvm_pit_channel_state; 3],
    /// `KVM_PIT_FLAGS_*`.
    pub flags: u32,
    /// Nanoseconds from each counter's load to the read.
    pub load_age_ns: [u64; 3],
}

/// The VM-wide devices of KVM's in-kernel irqchip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmChips {
    /// The master and the slave 8259A.
    pub pic: [kvm_pic_state; 2],
    /// The I/O APIC.
    pub ioapic: IoapicRegs,
    /// The PIT, where it is KVM's.
    pub pit: Option<PitRegs>,
}

/// One vCPU's in-kernel local APIC and run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LapicRegs {
    /// The register page (`kvm_lapic_state`), xAPIC layout: register `r`
    /// at byte `r`, little-endian. The current-count register holds the
    /// count at the read.
    pub page: [u8; LAPIC_PAGE],
    /// IA32_TSC_DEADLINE.
    pub tsc_deadline: u64,
    /// `KVM_MP_STATE_*`.
    pub mp_state: u32,
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of KVM's PIT times.
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists, so the call only writes it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

impl KvmVm {
    fn irqchip_of(&self, id: u32) -> Result<kvm_irqchip, AccelError> {
        let mut chip = kvm_irqchip { chip_id: id, ..Default::default() };
        self.core.fd.get_irqchip(&mut chip).map_err(|e| AccelError::ioctl("KVM_GET_IRQCHIP", e))?;
        Ok(chip)
    }

    /// The in-kernel PIC pair, I/O APIC and PIT as they are now, or `None`
    /// when the interrupt controllers are not KVM's.
    pub fn chips(&self) -> Result<Option<VmChips>, AccelError> {
        let IrqChip::InKernel { pit } = self.shared.irqchip else { return Ok(None) };
        let mut pics = [kvm_pic_state::default(); 2];
        for (slot, id) in pics.iter_mut().zip([KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE]) {
            let chip = self.irqchip_of(id)?;
            // SAFETY: KVM_GET_IRQCHIP for a PIC chip id fills the `pic`
            // member of the union, plain bytes.
            *slot = unsafe { chip.chip.pic };
        }
        let chip = self.irqchip_of(KVM_IRQCHIP_IOAPIC)?;
        // SAFETY: for KVM_IRQCHIP_IOAPIC the kernel fills the `ioapic`
        // member of the union, plain integers.
        let raw = unsafe { chip.chip.ioapic };
        let mut redirection = [0u64; IOAPIC_PINS];
        for (r, entry) in redirection.iter_mut().zip(raw.redirtbl.iter()) {
            // SAFETY: each entry is a `u64` or the same bits as fields;
            // every bit pattern is a valid `u64`.
            *r = unsafe { entry.bits };
        }
        let ioapic = IoapicRegs { id: raw.id, ioregsel: raw.ioregsel, irr: raw.irr, redirection };
        let pit = if pit {
            let state = self.core.fd.get_pit2().map_err(|e| AccelError::ioctl("KVM_GET_PIT2", e))?;
            let now = monotonic_ns();
            let load_age_ns = state.channels.map(|c| u64::try_from(now.saturating_sub(c.count_load_time)).unwrap_or(0));
            Some(PitRegs { channels: state.channels, flags: state.flags, load_age_ns })
        } else {
            None
        };
        Ok(Some(VmChips { pic: pics, ioapic, pit }))
    }

    /// Writes the PIC pair, the I/O APIC and (where KVM has one) the PIT.
    /// KVM restarts each PIT counter from its count. Fails when the
    /// interrupt controllers are not KVM's.
    pub fn set_chips(&self, chips: &VmChips) -> Result<(), AccelError> {
        let IrqChip::InKernel { pit } = self.shared.irqchip else {
            return Err(AccelError::NoInKernelIrqChip("set_chips"));
        };
        for (state, id) in chips.pic.iter().zip([KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE]) {
            let mut chip = kvm_irqchip { chip_id: id, ..Default::default() };
            chip.chip.pic = *state;
            self.core.fd.set_irqchip(&chip).map_err(|e| AccelError::ioctl("KVM_SET_IRQCHIP", e))?;
        }
        let mut chip = self.irqchip_of(KVM_IRQCHIP_IOAPIC)?;
        // SAFETY: as in `chips`: KVM filled the `ioapic` member.
        let mut raw = unsafe { chip.chip.ioapic };
        raw.id = chips.ioapic.id;
        raw.ioregsel = chips.ioapic.ioregsel;
        raw.irr = chips.ioapic.irr;
        for (entry, &bits) in raw.redirtbl.iter_mut().zip(chips.ioapic.redirection.iter()) {
            entry.bits = bits;
        }
        chip.chip.ioapic = raw;
        self.core.fd.set_irqchip(&chip).map_err(|e| AccelError::ioctl("KVM_SET_IRQCHIP", e))?;
        if let (true, Some(p)) = (pit, &chips.pit) {
            let mut state = kvm_pit_state2 { channels: p.channels, flags: p.flags, ..Default::default() };
            let now = monotonic_ns();
            for (c, age) in state.channels.iter_mut().zip(p.load_age_ns) {
                c.count_load_time = now.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX));
            }
            self.core.fd.set_pit2(&state).map_err(|e| AccelError::ioctl("KVM_SET_PIT2", e))?;
        }
        Ok(())
    }
}

impl KvmVcpu {
    /// The in-kernel local APIC, its TSC deadline and the vCPU's run state,
    /// or `None` when the local APIC is not KVM's.
    pub fn lapic(&mut self) -> Result<Option<LapicRegs>, AccelError> {
        if self.irqchip() == IrqChip::Userspace {
            return Ok(None);
        }
        let fd = self.fd();
        let raw = fd.get_lapic().map_err(|e| AccelError::ioctl("KVM_GET_LAPIC", e))?;
        let page = raw.regs.map(|b| b as u8);
        let mp_state = fd.get_mp_state().map_err(|e| AccelError::ioctl("KVM_GET_MP_STATE", e))?.mp_state;
        let entry = kvm_msr_entry { index: TSC_DEADLINE, ..Default::default() };
        let mut msrs = Msrs::from_entries(&[entry]).map_err(|e| AccelError::ioctl("KVM_GET_MSRS", format!("{e:?}")))?;
        let n = fd.get_msrs(&mut msrs).map_err(|e| AccelError::ioctl("KVM_GET_MSRS", e))?;
        let tsc_deadline = if n == 1 { msrs.as_slice()[0].data } else { 0 };
        Ok(Some(LapicRegs { page, tsc_deadline, mp_state }))
    }

    /// Writes the local APIC (after IA32_APIC_BASE, which the caller sets
    /// through the vCPU state first), its TSC deadline and the run state.
    pub fn set_lapic(&mut self, regs: &LapicRegs) -> Result<(), AccelError> {
        if self.irqchip() == IrqChip::Userspace {
            return Err(AccelError::NoInKernelIrqChip("set_lapic"));
        }
        let fd = self.fd();
        let raw = kvm_lapic_state { regs: regs.page.map(|b| b as std::os::raw::c_char) };
        fd.set_lapic(&raw).map_err(|e| AccelError::ioctl("KVM_SET_LAPIC", e))?;
        if regs.tsc_deadline != 0 {
            let entry = kvm_msr_entry { index: TSC_DEADLINE, data: regs.tsc_deadline, ..Default::default() };
            let msrs = Msrs::from_entries(&[entry]).map_err(|e| AccelError::ioctl("KVM_SET_MSRS", format!("{e:?}")))?;
            let n = fd.set_msrs(&msrs).map_err(|e| AccelError::ioctl("KVM_SET_MSRS", e))?;
            if n != 1 {
                return Err(AccelError::ioctl("KVM_SET_MSRS", "IA32_TSC_DEADLINE refused"));
            }
        }
        fd.set_mp_state(kvm_mp_state { mp_state: regs.mp_state })
            .map_err(|e| AccelError::ioctl("KVM_SET_MP_STATE", e))?;
        Ok(())
    }
}
