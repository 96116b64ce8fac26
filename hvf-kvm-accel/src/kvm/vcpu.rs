//! One KVM vCPU: state in and out through the bridge, and the run loop.

use std::sync::Arc;
use std::time::Instant;

use cpu::state::CpuState;
use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_run, kvm_vcpu_events, kvm_xcrs, CpuId, Msrs, Xsave,
    KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_MMIO, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW,
    KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use mmu::GuestMemory;

use super::cpuid;
use super::exit::{count_exit, handle_exit, ExitAction, KvmExit};
use super::kick::{install_kick_handler, KickState};
use super::{FpuPath, Shared};
use crate::bridge::{cpu_to_kvm, fpu_from_xsave, fpu_to_xsave, kvm_to_cpu, ymm_from_xsave, ymm_to_xsave, KvmCpuState};
use crate::{AccelError, IrqChip, PendingEvent, Platform, Vcpu, VcpuKicker, VcpuStats, VmExit};

vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_bindings::kvm_interrupt);

/// The longest x86 instruction.
const MAX_INSN_LEN: usize = 15;
const PAGE: u64 = 4096;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// CR4.OSXSAVE.
const CR4_OSXSAVE: u64 = 1 << 18;

/// What KVM holds, as last read from it or written to it. Valid while the
/// vCPU has not run and [`KvmVcpu::fd`] has not been handed out since.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    k: KvmCpuState,
    /// `kvm_vcpu_events` (with `KVM_CAP_VCPU_EVENTS`).
    events: Option<kvm_vcpu_events>,
    /// `kvm_mp_state` (with the in-kernel irqchip).
    mp_state: Option<u32>,
    /// Read from KVM and not written since: `get_state` may return it as is.
    /// (After a write KVM holds the values written, possibly normalised.)
    fresh_read: bool,
}

/// Where XSTATE_BV sits in the `kvm_xsave` region (32-bit words).
const XSTATE_BV_WORD: usize = 512 / 4;
/// Where the components past the legacy area and the XSAVE header start.
const EXTENDED_WORD: usize = 576 / 4;

/// XSTATE_BV of a `kvm_xsave` region.
fn xstate_bv(region: &[u32]) -> u64 {
    u64::from(region[XSTATE_BV_WORD]) | (u64::from(region[XSTATE_BV_WORD + 1]) << 32)
}

/// The XSAVE components past x87 and SSE, in KVM's (standard) layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendedState {
    /// Their XSTATE_BV bits (bits 0 and 1 clear).
    pub bv: u64,
    /// The `kvm_xsave` region from byte 576 on.
    pub words: Vec<u32>,
}

impl ExtendedState {
    /// Every component in its init state.
    pub fn init() -> Self {
        ExtendedState { bv: 0, words: Vec::new() }
    }
}

/// A KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
    id: u32,
    /// Keeps the memory behind the VM's slots alive as long as this vCPU can
    /// run, and serves instruction fetches for internal-error reports.
    mem: Arc<GuestMemory>,
    shared: Arc<Shared>,
    /// The last state moved in or out; supplies the fields KVM does not hold.
    last: CpuState,
    /// Hidden CPUID features KVM shows the guest anyway.
    still_visible: Vec<&'static str>,
    /// Shared with the vCPU's kickers.
    kick: Arc<KickState>,
    stats: VcpuStats,
    snapshot: Option<Snapshot>,
    /// The in-kernel local APIC as created, for [`Vcpu::reset`].
    initial_lapic: Option<kvm_bindings::kvm_lapic_state>,
    /// With the machine's own interrupt controllers: inject what they hold
    /// for this vCPU before each entry ([`KvmVcpu::set_injects_interrupts`]).
    injects: bool,
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        // Before `fd` (and its kvm_run mapping) goes.
        self.kick.detach();
    }
}

/// Registers the running thread with the kick state for the length of a run.
struct Running(Arc<KickState>);

impl Running {
    fn new(kick: &Arc<KickState>) -> Self {
        kick.enter();
        Running(Arc::clone(kick))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl std::fmt::Debug for KvmVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVcpu").field("id", &self.id).finish_non_exhaustive()
    }
}

/// What `KVM_RUN` returned, before its data is borrowed from `kvm_run`.
#[derive(Debug)]
enum Raw {
    Io,
    Mmio,
    Internal,
    Done(KvmExit<'static>),
}

impl KvmVcpu {
    pub(super) fn new(vm: &VmFd, id: u32, mem: Arc<GuestMemory>, shared: Arc<Shared>) -> Result<Self, AccelError> {
        let fd = vm.create_vcpu(u64::from(id)).map_err(|e| AccelError::ioctl("KVM_CREATE_VCPU", e))?;
        // CPUID first: KVM checks later CR4 and XCR0 writes against it.
        let mut entries = shared.cpuid.clone();
        cpuid::set_apic_id(&mut entries, id);
        let cpuid = CpuId::from_entries(&entries).map_err(|e| AccelError::ioctl("KVM_SET_CPUID2", format!("{e:?}")))?;
        fd.set_cpuid2(&cpuid).map_err(|e| AccelError::ioctl("KVM_SET_CPUID2", e))?;
        let opts = shared.model_opts;
        let still_visible = match fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES) {
            Ok(effective) => cpuid::still_visible(effective.as_slice(), opts),
            Err(e) => {
                tracing::debug!("KVM_GET_CPUID2: {e}");
                Vec::new()
            }
        };
        if id == 0 && !still_visible.is_empty() && shared.cpuid_restricted {
            // Only user code runs in KVM; its extra state is kept per task.
            tracing::info!("KVM shows user code host CPUID features beyond the model: {}", still_visible.join(", "));
        } else if id == 0 && !still_visible.is_empty() {
            tracing::warn!(
                "KVM shows the guest CPUID features the model hides: {}; this KVM adds host features to the \
                 guest's CPUID, so the guest may run instructions KVM cannot emulate",
                still_visible.join(", ")
            );
        }
        let mut fd = fd;
        // The kickers reach `immediate_exit` through this address, and from
        // Rust it is only ever accessed atomically through it (`kick`).
        let immediate_exit = std::ptr::from_mut(&mut fd.get_kvm_run().immediate_exit);
        let kick = Arc::new(KickState::new(immediate_exit));
        let initial_lapic = match shared.irqchip {
            IrqChip::InKernel { .. } => Some(fd.get_lapic().map_err(|e| AccelError::ioctl("KVM_GET_LAPIC", e))?),
            IrqChip::Userspace => None,
        };
        Ok(KvmVcpu {
            fd,
            id,
            mem,
            shared,
            last: CpuState::reset(),
            still_visible,
            kick,
            stats: VcpuStats::default(),
            snapshot: None,
            initial_lapic,
            injects: false,
        })
    }

    /// With the machine's own interrupt controllers ([`IrqChip::Userspace`]):
    /// before each entry, inject the interrupt they hold for this vCPU
    /// (`KVM_INTERRUPT`) when the guest can take one, and otherwise ask KVM
    /// to exit as soon as it can (`request_interrupt_window`). Off (the
    /// default) for a vCPU whose interrupts another engine delivers
    /// (split execution). Ignored with KVM's own controllers.
    pub fn set_injects_interrupts(&mut self, on: bool) {
        self.injects = on && self.shared.irqchip == IrqChip::Userspace;
    }

    /// [`KvmVcpu::set_injects_interrupts`]' work before an entry: CR8 from
    /// the machine's local APIC (KVM masks by it), then the interrupt.
    /// Returns the CR8 the entry starts with.
    fn inject_pending(&mut self, io: &mut dyn Platform) -> Result<u64, AccelError> {
        let cr8 = io.cr8();
        let run = self.fd.get_kvm_run();
        if let Some(cr8) = cr8 {
            run.cr8 = cr8;
        }
        let entry_cr8 = run.cr8;
        let can_take = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
        let pending = io.interrupt_pending();
        if pending && can_take {
            if let Some(vector) = io.ack_interrupt() {
                let irq = kvm_bindings::kvm_interrupt { irq: u32::from(vector) };
                // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt` from the
                // reference, which lives across the call; the vCPU file
                // descriptor is this vCPU's own.
                let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_INTERRUPT(), &irq) };
                if rc < 0 {
                    return Err(AccelError::ioctl("KVM_INTERRUPT", std::io::Error::last_os_error()));
                }
                self.stats.injected += 1;
            }
        }
        // Asked for while more waits than can go in now: KVM exits when the
        // guest can take it (interrupts on, no interrupt shadow).
        let run = self.fd.get_kvm_run();
        run.request_interrupt_window = u8::from(pending && !can_take);
        Ok(entry_cr8)
    }

    /// Where the VM keeps its interrupt controllers.
    pub(super) fn irqchip(&self) -> IrqChip {
        self.shared.irqchip
    }

    /// The vCPU's number (its APIC ID).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Features the CPUID model hides ([`cpuid::HIDDEN_BITS`]) that this
    /// vCPU's CPUID shows anyway, by name. Empty on ordinary KVM.
    pub fn cpuid_still_visible(&self) -> &[&'static str] {
        &self.still_visible
    }

    /// The underlying kvm-ioctls vCPU, for what the traits do not cover.
    pub fn fd(&mut self) -> &mut VcpuFd {
        // The caller may change anything.
        self.snapshot = None;
        &mut self.fd
    }

    /// Read every state KVM holds. Without a run (or [`KvmVcpu::fd`]) since
    /// the last read, the state read then is returned without asking KVM.
    pub fn get_kvm_state(&mut self) -> Result<KvmCpuState, AccelError> {
        if let Some(snap) = self.snapshot.filter(|s| s.fresh_read) {
            return Ok(snap.k);
        }
        let snap = self.read_snapshot()?;
        self.snapshot = Some(snap);
        Ok(snap.k)
    }

    /// Read everything from KVM.
    fn read_snapshot(&mut self) -> Result<Snapshot, AccelError> {
        let caps = self.shared.caps;
        let mut k = cpu_to_kvm(&self.last).unwrap_or_default();
        k.regs = self.fd.get_regs().map_err(|e| AccelError::ioctl("KVM_GET_REGS", e))?;
        k.sregs = self.fd.get_sregs().map_err(|e| AccelError::ioctl("KVM_GET_SREGS", e))?;
        (k.fpu, k.ymm_hi) = self.get_fpu()?;
        // With CR4.OSXSAVE clear the guest can neither read nor change XCR0
        // (XGETBV and XSETBV fault), so the value last moved in or out
        // stands for it; `set_kvm_state` writes XCR0 only when the caller
        // changed it, so KVM's own value is never overwritten with it.
        if caps.xcrs && k.sregs.cr4 & CR4_OSXSAVE != 0 {
            let xcrs = self.fd.get_xcrs().map_err(|e| AccelError::ioctl("KVM_GET_XCRS", e))?;
            let n = (xcrs.nr_xcrs as usize).min(xcrs.xcrs.len());
            if let Some(x) = xcrs.xcrs[..n].iter().find(|x| x.xcr == 0) {
                k.xcr0 = x.value;
            }
        }
        if caps.debugregs {
            k.debugregs = self.fd.get_debug_regs().map_err(|e| AccelError::ioctl("KVM_GET_DEBUGREGS", e))?;
            k.debugregs.flags = 0;
        }
        let events = if caps.vcpu_events {
            let ev = self.fd.get_vcpu_events().map_err(|e| AccelError::ioctl("KVM_GET_VCPU_EVENTS", e))?;
            k.interrupt_shadow = ev.interrupt.shadow != 0;
            k.nmi_masked = ev.nmi.masked != 0;
            k.nmi_pending = ev.nmi.pending != 0;
            if let Some(e) = pending_of(&ev) {
                tracing::debug!("vCPU {} state read with an event pending: {e}", self.id);
            }
            Some(ev)
        } else {
            None
        };
        let mp_state = if caps.mp_state && self.shared.irqchip != IrqChip::Userspace {
            let mp = self.fd.get_mp_state().map_err(|e| AccelError::ioctl("KVM_GET_MP_STATE", e))?;
            k.halted = mp.mp_state == KVM_MP_STATE_HALTED;
            Some(mp.mp_state)
        } else {
            None
        };
        for (index, value) in self.get_msrs()? {
            if let Some(slot) = k.msrs.iter_mut().find(|(i, _)| *i == index) {
                slot.1 = value;
            }
        }
        Ok(Snapshot { k, events, mp_state, fresh_read: true })
    }

    /// Write every state KVM holds. Only the parts that differ from what KVM
    /// holds (as last read or written, while the vCPU has not run since) are
    /// written: each ioctl is a costly trip on nested hosts, and most
    /// fallback instructions change only the registers.
    pub fn set_kvm_state(&mut self, k: &KvmCpuState) -> Result<(), AccelError> {
        let caps = self.shared.caps;
        let old = match self.snapshot {
            Some(s) => s,
            None => self.read_snapshot()?,
        };
        // From here on KVM may hold a mix; a failed write leaves no snapshot.
        self.snapshot = None;
        let mut new = Snapshot { k: *k, events: old.events, mp_state: old.mp_state, fresh_read: false };
        // Keep an external interrupt KVM has queued for injection.
        new.k.sregs.interrupt_bitmap = old.k.sregs.interrupt_bitmap;
        if new.k.sregs != old.k.sregs {
            self.fd.set_sregs(&new.k.sregs).map_err(|e| AccelError::ioctl("KVM_SET_SREGS", e))?;
        }
        if new.k.regs != old.k.regs {
            self.fd.set_regs(&new.k.regs).map_err(|e| AccelError::ioctl("KVM_SET_REGS", e))?;
        }
        if !caps.ymm {
            new.k.ymm_hi = None;
        }
        let ymm = new.k.ymm_hi.filter(|_| new.k.ymm_hi != old.k.ymm_hi);
        if new.k.fpu != old.k.fpu || ymm.is_some() {
            self.set_fpu(&new.k.fpu, ymm.as_ref())?;
        }
        if caps.xcrs && new.k.xcr0 != old.k.xcr0 {
            let mut xcrs = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = new.k.xcr0;
            self.fd.set_xcrs(&xcrs).map_err(|e| AccelError::ioctl("KVM_SET_XCRS", e))?;
        }
        new.k.debugregs.flags = 0;
        if caps.debugregs && new.k.debugregs != old.k.debugregs {
            self.fd.set_debug_regs(&new.k.debugregs).map_err(|e| AccelError::ioctl("KVM_SET_DEBUGREGS", e))?;
        }
        if let Some(mut ev) = old.events {
            // Only the interrupt shadow, NMI masking and a pending NMI are
            // CpuState's to say; a queued or half-delivered exception,
            // interrupt or injected NMI stays as KVM holds it
            // (`Vcpu::pending_event`).
            // STI blocking requires IF=1 (VM-entry check), MOV SS blocking
            // does not; CpuState does not say which one it was.
            let shadow = match (new.k.interrupt_shadow, new.k.regs.rflags & RFLAGS_IF != 0) {
                (false, _) => 0,
                (true, true) => KVM_X86_SHADOW_INT_STI as u8,
                (true, false) => KVM_X86_SHADOW_INT_MOV_SS as u8,
            };
            let masked = u8::from(new.k.nmi_masked);
            let nmi_pending = u8::from(new.k.nmi_pending);
            if ev.interrupt.shadow != shadow || ev.nmi.masked != masked || ev.nmi.pending != nmi_pending {
                ev.interrupt.shadow = shadow;
                ev.nmi.masked = masked;
                ev.nmi.pending = nmi_pending;
                ev.flags |= KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_NMI_PENDING;
                self.fd.set_vcpu_events(&ev).map_err(|e| AccelError::ioctl("KVM_SET_VCPU_EVENTS", e))?;
                new.events = Some(ev);
            }
        }
        if let Some(current) = old.mp_state {
            // Only HLT is CpuState's to say: an AP waiting for INIT/SIPI
            // stays waiting unless the state says it halted.
            let wanted = match (new.k.halted, current) {
                (true, _) => KVM_MP_STATE_HALTED,
                (false, KVM_MP_STATE_HALTED) => KVM_MP_STATE_RUNNABLE,
                (false, other) => other,
            };
            if wanted != current {
                self.fd
                    .set_mp_state(kvm_mp_state { mp_state: wanted })
                    .map_err(|e| AccelError::ioctl("KVM_SET_MP_STATE", e))?;
            }
            new.mp_state = Some(wanted);
        }
        let changed: Vec<(u32, u64)> =
            new.k.msrs.iter().zip(&old.k.msrs).filter(|(n, o)| n != o).map(|(n, _)| *n).collect();
        self.set_msrs(&changed)?;
        self.snapshot = Some(new);
        Ok(())
    }

    /// A fresh XSAVE image of the size `KVM_CAP_XSAVE2` gave, filled by KVM.
    fn get_xsave2(&self, fam_len: usize) -> Result<Xsave, AccelError> {
        let mut x = Xsave::new(fam_len).map_err(|e| AccelError::ioctl("KVM_GET_XSAVE2", format!("{e:?}")))?;
        // SAFETY: `x` holds the 4 KiB `kvm_xsave` plus `fam_len` words, the
        // whole size KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reported for this
        // VM. That size only grows when the process enables dynamic XSAVE
        // features with arch_prctl(ARCH_REQ_XCOMP_PERM), which ferrovm never does.
        unsafe { self.fd.get_xsave2(&mut x) }.map_err(|e| AccelError::ioctl("KVM_GET_XSAVE2", e))?;
        Ok(x)
    }

    /// The `kvm_xsave` region as KVM holds it; `None` when KVM has no XSAVE
    /// interface (`KVM_GET_FPU` only).
    fn xsave_region(&self) -> Result<Option<Vec<u32>>, AccelError> {
        Ok(match self.shared.caps.fpu_path {
            FpuPath::Xsave2 { fam_len } => Some(self.get_xsave2(fam_len)?.as_fam_struct_ref().xsave.region.to_vec()),
            FpuPath::Xsave => {
                Some(self.fd.get_xsave().map_err(|e| AccelError::ioctl("KVM_GET_XSAVE", e))?.region.to_vec())
            }
            FpuPath::Fpu => None,
        })
    }

    /// Read the XSAVE image, let `edit` change its `kvm_xsave` region, and
    /// write it back. `false` (nothing done) when KVM has no XSAVE interface.
    fn edit_xsave(&self, edit: impl FnOnce(&mut [u32])) -> Result<bool, AccelError> {
        match self.shared.caps.fpu_path {
            FpuPath::Xsave2 { fam_len } => {
                let mut x = self.get_xsave2(fam_len)?;
                // SAFETY: the reference is used only to write the fixed
                // `xsave.region` array; the FAM length field is not touched.
                edit(unsafe { &mut x.as_mut_fam_struct().xsave.region });
                // SAFETY: `x` was allocated with the size KVM_CAP_XSAVE2
                // reported (see `get_xsave2`), which is what KVM reads.
                unsafe { self.fd.set_xsave2(&x) }.map_err(|e| AccelError::ioctl("KVM_SET_XSAVE2", e))?;
            }
            FpuPath::Xsave => {
                let mut x = self.fd.get_xsave().map_err(|e| AccelError::ioctl("KVM_GET_XSAVE", e))?;
                edit(&mut x.region);
                // SAFETY: without KVM_CAP_XSAVE2 (checked when the VM was
                // created) the kernel predates 5.17 and reads exactly the
                // 4 KiB `kvm_xsave`, which `x` is.
                unsafe { self.fd.set_xsave(&x) }.map_err(|e| AccelError::ioctl("KVM_SET_XSAVE", e))?;
            }
            FpuPath::Fpu => return Ok(false),
        }
        Ok(true)
    }

    /// The XSAVE components past x87 and SSE (AVX, AVX-512, ...) as KVM
    /// holds them; `None` when KVM has no XSAVE interface.
    pub fn extended_state(&self) -> Result<Option<ExtendedState>, AccelError> {
        Ok(self
            .xsave_region()?
            .map(|region| ExtendedState { bv: xstate_bv(&region) & !0b11, words: region[EXTENDED_WORD..].to_vec() }))
    }

    /// Replace the XSAVE components past x87 and SSE with `e` (the init
    /// state for [`ExtendedState::init`]), keeping x87 and SSE.
    pub fn set_extended_state(&self, e: &ExtendedState) -> Result<(), AccelError> {
        self.edit_xsave(|region| {
            let bv = (xstate_bv(region) & 0b11) | e.bv;
            region[XSTATE_BV_WORD] = bv as u32;
            region[XSTATE_BV_WORD + 1] = (bv >> 32) as u32;
            let tail = &mut region[EXTENDED_WORD..];
            tail.fill(0);
            let n = tail.len().min(e.words.len());
            tail[..n].copy_from_slice(&e.words[..n]);
        })?;
        Ok(())
    }

    /// The x87/SSE state, with MXCSR when KVM has XSAVE, and the upper
    /// halves of the YMM registers where the guest's CPUID offers them.
    fn get_fpu(&self) -> Result<(kvm_fpu, Option<[u128; 16]>), AccelError> {
        match self.xsave_region()? {
            Some(region) => {
                let ymm = self.shared.caps.ymm.then(|| ymm_from_xsave(&region));
                Ok((fpu_from_xsave(&region), ymm))
            }
            None => Ok((self.fd.get_fpu().map_err(|e| AccelError::ioctl("KVM_GET_FPU", e))?, None)),
        }
    }

    /// Write the x87/SSE state and, when given, the upper halves of the YMM
    /// registers, keeping every other XSAVE component.
    fn set_fpu(&self, f: &kvm_fpu, ymm: Option<&[u128; 16]>) -> Result<(), AccelError> {
        let edited = self.edit_xsave(|region| {
            fpu_to_xsave(f, region);
            if let Some(y) = ymm {
                ymm_to_xsave(y, region);
            }
        })?;
        if !edited {
            self.fd.set_fpu(f).map_err(|e| AccelError::ioctl("KVM_SET_FPU", e))?;
        }
        Ok(())
    }

    /// Write the usable MSRs; drop (and name, once) each one KVM refuses.
    fn set_msrs(&mut self, values: &[(u32, u64)]) -> Result<(), AccelError> {
        let usable = self.shared.usable_msrs();
        let mut todo: Vec<kvm_msr_entry> = values
            .iter()
            .filter(|(i, _)| usable.contains(i))
            .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
            .collect();
        while !todo.is_empty() {
            let msrs = Msrs::from_entries(&todo).map_err(|e| AccelError::ioctl("KVM_SET_MSRS", format!("{e:?}")))?;
            let done = self.fd.set_msrs(&msrs).map_err(|e| AccelError::ioctl("KVM_SET_MSRS", e))?;
            if done >= todo.len() {
                break;
            }
            // KVM stops at the first MSR it refuses.
            self.shared.refuse_msr(todo[done].index, "set");
            todo.drain(..=done);
        }
        Ok(())
    }

    /// Read the usable MSRs; drop (and name, once) each one KVM refuses.
    fn get_msrs(&mut self) -> Result<Vec<(u32, u64)>, AccelError> {
        let mut out = Vec::new();
        let mut todo: Vec<u32> = self.shared.usable_msrs();
        while !todo.is_empty() {
            let entries: Vec<kvm_msr_entry> =
                todo.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
            let mut msrs =
                Msrs::from_entries(&entries).map_err(|e| AccelError::ioctl("KVM_GET_MSRS", format!("{e:?}")))?;
            let done = self.fd.get_msrs(&mut msrs).map_err(|e| AccelError::ioctl("KVM_GET_MSRS", e))?;
            out.extend(msrs.as_slice()[..done.min(todo.len())].iter().map(|e| (e.index, e.data)));
            if done >= todo.len() {
                break;
            }
            self.shared.refuse_msr(todo[done], "read");
            todo.drain(..=done);
        }
        Ok(out)
    }

    /// Decode a `KVM_EXIT_IO`: port, element size, and the data area in the
    /// `kvm_run` mapping of `fd`, which is `run_size` bytes long.
    fn decode_io(fd: &mut VcpuFd, run_size: usize) -> Result<KvmExit<'_>, AccelError> {
        let run = fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return Err(AccelError::ioctl("KVM_RUN", "port exit without KVM_EXIT_IO"));
        }
        // SAFETY: `exit_reason` is KVM_EXIT_IO, so the kernel filled the `io`
        // member of the union; it is plain integers.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let len = size * io.count as usize;
        let start = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
        if start < std::mem::size_of::<kvm_run>() || start.checked_add(len).is_none_or(|end| end > run_size) {
            return Err(AccelError::ioctl("KVM_RUN", format!("port data at {start:#x}+{len} lies outside kvm_run")));
        }
        let base = std::ptr::from_mut(run).cast::<u8>();
        // SAFETY: the kvm_run mapping is `run_size` bytes long (the size KVM
        // gave for the vCPU mmap) and `start..start + len` lies inside it past
        // the `kvm_run` header, as checked above. The slice borrows `fd`
        // mutably, so nothing else touches the mapping while it lives; the
        // kernel writes it only during KVM_RUN, which needs that borrow.
        let data = unsafe { std::slice::from_raw_parts_mut(base.add(start), len) };
        Ok(if u32::from(io.direction) == KVM_EXIT_IO_IN {
            KvmExit::IoIn { port: io.port, size, data }
        } else {
            KvmExit::IoOut { port: io.port, size, data }
        })
    }

    /// Decode a `KVM_EXIT_MMIO`.
    fn decode_mmio(fd: &mut VcpuFd) -> Result<KvmExit<'_>, AccelError> {
        let run = fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_MMIO {
            return Err(AccelError::ioctl("KVM_RUN", "MMIO exit without KVM_EXIT_MMIO"));
        }
        // SAFETY: `exit_reason` is KVM_EXIT_MMIO, so the kernel filled the
        // `mmio` member of the union; it is plain integers and bytes.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(mmio.data.len());
        let addr = mmio.phys_addr;
        let data = &mut mmio.data[..len];
        Ok(if mmio.is_write != 0 { KvmExit::MmioWrite { addr, data } } else { KvmExit::MmioRead { addr, data } })
    }

    /// Decode a `KVM_EXIT_INTERNAL_ERROR`, which kvm-ioctls reports without
    /// its payload: the suberror and data words from `kvm_run.internal`, the
    /// instruction bytes from `emulation_failure` (or, when KVM gives none,
    /// from guest memory), and RIP from the registers.
    fn decode_internal(&mut self) -> KvmExit<'static> {
        let run = self.fd.get_kvm_run();
        let (suberror, data, mut insn_bytes) = if run.exit_reason == KVM_EXIT_INTERNAL_ERROR {
            // SAFETY: `exit_reason` is KVM_EXIT_INTERNAL_ERROR, so the kernel
            // filled the `internal` member of the union; it is plain integers.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            let ndata = (internal.ndata as usize).min(internal.data.len());
            let mut insn = Vec::new();
            if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
                // SAFETY: for this suberror the kernel lays the union out as
                // `emulation_failure` (same header as `internal`); plain integers.
                let ef = unsafe { run.__bindgen_anon_1.emulation_failure };
                if ndata >= 1 && ef.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0 {
                    // SAFETY: the flag says the kernel wrote `insn_size` and
                    // `insn_bytes`; the union has only this one member.
                    let bytes = unsafe { ef.__bindgen_anon_1.__bindgen_anon_1 };
                    let n = usize::from(bytes.insn_size).min(bytes.insn_bytes.len());
                    insn.extend_from_slice(&bytes.insn_bytes[..n]);
                }
            }
            (internal.suberror, internal.data[..ndata].to_vec(), insn)
        } else {
            (0, Vec::new(), Vec::new())
        };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        if insn_bytes.is_empty() {
            insn_bytes = self.fetch_insn(rip);
        }
        KvmExit::InternalError { suberror, data, insn_bytes, rip }
    }

    /// Read up to 15 bytes at CS:rip through the guest's page tables.
    fn fetch_insn(&self, rip: u64) -> Vec<u8> {
        let Ok(sregs) = self.fd.get_sregs() else {
            return Vec::new();
        };
        let mut linear = sregs.cs.base.wrapping_add(rip);
        let mut out = Vec::new();
        while out.len() < MAX_INSN_LEN {
            let Ok(t) = self.fd.translate_gva(linear) else {
                break;
            };
            if t.valid == 0 {
                break;
            }
            let in_page = (PAGE - (linear & (PAGE - 1))) as usize;
            let n = in_page.min(MAX_INSN_LEN - out.len());
            let mut buf = vec![0u8; n];
            if self.mem.read(t.physical_address, &mut buf).is_err() {
                break;
            }
            out.extend_from_slice(&buf);
            linear = linear.wrapping_add(n as u64);
        }
        out
    }

    /// Run `KVM_RUN` once and decode the exit into `Raw`.
    fn enter(&mut self) -> Result<Raw, AccelError> {
        self.snapshot = None;
        let t = Instant::now();
        let result = self.fd.run();
        self.stats.in_guest += t.elapsed();
        self.stats.entries += 1;
        Ok(match result {
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => Raw::Io,
            Ok(VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)) => Raw::Mmio,
            Ok(VcpuExit::InternalError) => Raw::Internal,
            Ok(VcpuExit::Hlt) => Raw::Done(KvmExit::Hlt),
            Ok(VcpuExit::IrqWindowOpen) => Raw::Done(KvmExit::IrqWindowOpen),
            // The guest lowered CR8 below what it was, with the machine's
            // own local APIC: an interrupt it held back may go in now.
            Ok(VcpuExit::SetTpr) => Raw::Done(KvmExit::IrqWindowOpen),
            Ok(VcpuExit::Shutdown) => Raw::Done(KvmExit::Shutdown),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Raw::Done(KvmExit::FailEntry { reason, cpu }),
            Ok(VcpuExit::Intr) => {
                self.kick.clear();
                Raw::Done(KvmExit::Intr)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Raw::Done(KvmExit::SystemEvent { kind }),
            Ok(VcpuExit::Debug(arch)) => Raw::Done(KvmExit::Debug { dr6: arch.dr6, pc: arch.pc }),
            Ok(other) => Raw::Done(KvmExit::Other(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick (immediate_exit, the kick signal) or another signal.
                self.kick.clear();
                Raw::Done(KvmExit::Intr)
            }
            Err(e) => return Err(AccelError::ioctl("KVM_RUN", e)),
        })
    }
}

/// Count and serve one decoded exit, timing the device side.
fn serve(exit: KvmExit<'_>, io: &mut dyn Platform, stats: &mut VcpuStats) -> ExitAction {
    count_exit(&mut stats.exits, &exit);
    let t = Instant::now();
    let action = handle_exit(exit, io);
    stats.in_handlers += t.elapsed();
    action
}

/// The event `ev` holds for delivery, if any; exceptions first, as KVM
/// injects them first.
fn pending_of(ev: &kvm_vcpu_events) -> Option<PendingEvent> {
    if ev.exception.injected != 0 || ev.exception.pending != 0 {
        Some(PendingEvent::Exception {
            vector: ev.exception.nr,
            error_code: (ev.exception.has_error_code != 0).then_some(ev.exception.error_code),
            injected: ev.exception.injected != 0,
        })
    } else if ev.nmi.injected != 0 || ev.nmi.pending != 0 {
        Some(PendingEvent::Nmi)
    } else if ev.interrupt.injected != 0 {
        Some(PendingEvent::Interrupt { vector: ev.interrupt.nr, soft: ev.interrupt.soft != 0 })
    } else {
        None
    }
}

/// The time-stamp counter's MSR.
const IA32_TSC: u32 = 0x10;

impl Vcpu for KvmVcpu {
    fn set_state(&mut self, s: &CpuState) -> Result<(), AccelError> {
        let k = cpu_to_kvm(s)?;
        self.set_kvm_state(&k)?;
        self.last = *s;
        Ok(())
    }

    fn get_state(&mut self) -> Result<CpuState, AccelError> {
        let k = self.get_kvm_state()?;
        let mut s = self.last;
        kvm_to_cpu(&k, &mut s);
        self.last = s;
        Ok(s)
    }

    fn pending_event(&mut self) -> Result<Option<PendingEvent>, AccelError> {
        if !self.shared.caps.vcpu_events {
            return Ok(None);
        }
        if let Some(ev) = self.snapshot.and_then(|s| s.events) {
            return Ok(pending_of(&ev));
        }
        let ev = self.fd.get_vcpu_events().map_err(|e| AccelError::ioctl("KVM_GET_VCPU_EVENTS", e))?;
        Ok(pending_of(&ev))
    }

    fn reset(&mut self, s: &CpuState) -> Result<(), AccelError> {
        if let Some(lapic) = &self.initial_lapic {
            self.fd.set_lapic(lapic).map_err(|e| AccelError::ioctl("KVM_SET_LAPIC", e))?;
        }
        self.set_state(s)?;
        if self.id != 0 && self.initial_lapic.is_some() {
            // An application processor waits in KVM for INIT and a
            // start-up IPI again, as at creation.
            self.fd
                .set_mp_state(kvm_mp_state { mp_state: KVM_MP_STATE_UNINITIALIZED })
                .map_err(|e| AccelError::ioctl("KVM_SET_MP_STATE", e))?;
            self.snapshot = None;
        }
        Ok(())
    }

    fn inject_nmi(&mut self) -> Result<(), AccelError> {
        self.fd.nmi().map_err(|e| AccelError::ioctl("KVM_NMI", e))
    }

    fn run(&mut self, io: &mut dyn Platform) -> Result<VmExit, AccelError> {
        let _running = Running::new(&self.kick);
        loop {
            if io.stop_requested() {
                // A kick that came with the stop request (a device filing a
                // machine event kicks) is answered by this return.
                self.kick.clear();
                return Ok(VmExit::Interrupted);
            }
            let entry_cr8 = if self.injects { Some(self.inject_pending(io)?) } else { None };
            let run_size = self.shared.run_size;
            let raw = self.enter()?;
            if let Some(before) = entry_cr8 {
                // The guest's MOV to CR8 inside KVM, back to the machine's
                // local APIC.
                let cr8 = self.fd.get_kvm_run().cr8 & 0xf;
                if cr8 != before {
                    io.set_cr8(cr8);
                }
            }
            let action = match raw {
                Raw::Io => serve(Self::decode_io(&mut self.fd, run_size)?, io, &mut self.stats),
                Raw::Mmio => serve(Self::decode_mmio(&mut self.fd)?, io, &mut self.stats),
                Raw::Internal => {
                    let exit = self.decode_internal();
                    serve(exit, io, &mut self.stats)
                }
                Raw::Done(exit) => serve(exit, io, &mut self.stats),
            };
            if let ExitAction::Stop(exit) = action {
                return Ok(exit);
            }
        }
    }

    fn tsc(&mut self) -> Result<(u64, u64), AccelError> {
        let khz = self.fd.get_tsc_khz().map_err(|e| AccelError::ioctl("KVM_GET_TSC_KHZ", e))?;
        let entry = kvm_msr_entry { index: IA32_TSC, ..Default::default() };
        let mut msrs = Msrs::from_entries(&[entry]).map_err(|e| AccelError::ioctl("KVM_GET_MSRS", format!("{e:?}")))?;
        let n = self.fd.get_msrs(&mut msrs).map_err(|e| AccelError::ioctl("KVM_GET_MSRS", e))?;
        if n != 1 {
            return Err(AccelError::ioctl("KVM_GET_MSRS", "IA32_TSC refused"));
        }
        Ok((msrs.as_slice()[0].data, u64::from(khz)))
    }

    fn set_tsc(&mut self, value: u64) -> Result<(), AccelError> {
        let entry = kvm_msr_entry { index: IA32_TSC, data: value, ..Default::default() };
        let msrs = Msrs::from_entries(&[entry]).map_err(|e| AccelError::ioctl("KVM_SET_MSRS", format!("{e:?}")))?;
        let n = self.fd.set_msrs(&msrs).map_err(|e| AccelError::ioctl("KVM_SET_MSRS", e))?;
        if n != 1 {
            return Err(AccelError::ioctl("KVM_SET_MSRS", "IA32_TSC refused"));
        }
        Ok(())
    }

    fn kicker(&self) -> Result<VcpuKicker, AccelError> {
        install_kick_handler()?;
        Ok(VcpuKicker::new(self.kick.clone()))
    }

    fn stats(&self) -> VcpuStats {
        VcpuStats { kicks: self.kick.kicks(), ..self.stats }
    }
}
