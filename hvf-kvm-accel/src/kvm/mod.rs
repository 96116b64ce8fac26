//! The KVM backend (Linux), through the rust-vmm crates `kvm-ioctls` and
//! `kvm-bindings`.
//!
//! [`Kvm::new`] opens /dev/kvm and checks the API version and the
//! capabilities the backend cannot do without. [`Kvm::create_vm`] maps every
//! guest memory region as a memory slot (ROM read-only when KVM can), creates
//! the in-kernel irqchip and PIT when they work, and builds the CPUID model
//! ([`cpuid`]). Each vCPU gets that model before anything else (KVM checks
//! CR4 and XCR0 against it), and its MSRs are moved from a fixed list: an MSR
//! KVM refuses is named once in a warning and left out from then on.
//!
//! Each VM registers its memory slots with its guest memory as a
//! [`DirtyLogSource`]: while a live migration logs writes
//! ([`GuestMemory::start_dirty_log`]), the RAM slots carry
//! `KVM_MEM_LOG_DIRTY_PAGES`, and every round ([`GuestMemory::take_dirty`])
//! fetches and clears KVM's bitmap of each (`KVM_GET_DIRTY_LOG`) into the
//! guest memory's own. A slot deleted or split meanwhile ([`Vm::hide`],
//! [`Vm::protect`]) and the VM as it goes hand their bitmaps over first.

pub mod chips;
pub mod cpuid;
pub mod debug;
pub mod exit;
mod kick;
mod vcpu;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, kvm_ioeventfd, kvm_ioeventfd_flag_nr_datamatch, kvm_ioeventfd_flag_nr_deassign,
    kvm_ioeventfd_flag_nr_pio, kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_pit_config, kvm_userspace_memory_region, KvmIrqRouting, KVMIO, KVM_API_VERSION,
    KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, VmFd};
use mmu::{DirtyLogSource, GuestMemory, RegionKind, PAGE_SIZE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bridge::{msr_name, BRIDGE_MSRS};
use crate::{AccelError, Hypervisor, IoEventAddr, IrqChip, Vcpu, Vm};

// kvm-ioctls registers ioeventfds only with a datamatch as wide as the
// access; the raw ioctl also takes a length without a datamatch.
vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);

pub use kick::kick_signal;
pub use vcpu::{ExtendedState, KvmVcpu};

/// Capabilities without which the backend cannot run a guest, with names for
/// the error message.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// An open /dev/kvm.
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    supported_cpuid: Vec<kvm_cpuid_entry2>,
    in_kernel_irqchip: bool,
    in_kernel_pit: bool,
    cpuid_masks: Option<cpuid::FeatureMasks>,
    /// Offer the x86-64-v3 part of the model ([`cpuid::ModelOptions::avx`]).
    avx: bool,
    /// The topology the CPUID describes ([`Kvm::set_topology`]).
    topology: Option<cpuid::Topology>,
}

impl std::fmt::Debug for Kvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kvm").field("api_version", &self.kvm.get_api_version()).finish_non_exhaustive()
    }
}

fn open_error(e: &vmm_sys_util::errno::Error) -> AccelError {
    match e.errno() {
        libc::ENOENT => AccelError::KvmMissing,
        libc::EACCES | libc::EPERM => AccelError::KvmPermission,
        libc::ENXIO | libc::ENODEV => AccelError::KvmNoDevice(e.to_string()),
        _ => AccelError::KvmOpen(e.to_string()),
    }
}

impl Kvm {
    /// Open /dev/kvm and check that this backend can use it.
    pub fn new() -> Result<Self, AccelError> {
        let kvm = kvm_ioctls::Kvm::new().map_err(|e| open_error(&e))?;
        let expected = KVM_API_VERSION as i32;
        let found = kvm.get_api_version();
        if found != expected {
            return Err(AccelError::ApiMismatch { found, expected });
        }
        for &(cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(AccelError::MissingCapability(name));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| AccelError::ioctl("KVM_GET_SUPPORTED_CPUID", e))?
            .as_slice()
            .to_vec();
        Ok(Kvm {
            kvm,
            supported_cpuid,
            in_kernel_irqchip: true,
            in_kernel_pit: true,
            cpuid_masks: None,
            avx: false,
            topology: None,
        })
    }

    /// Use the in-kernel PIC/IOAPIC/LAPIC and PIT when they work (the
    /// default), or always the machine's own (`false`).
    pub fn set_in_kernel_irqchip(&mut self, on: bool) {
        self.in_kernel_irqchip = on;
    }

    /// With the in-kernel irqchip: use KVM's PIT too (the default), or keep
    /// the machine's own (`false`, [`IrqChip::InKernel`] with `pit: false`),
    /// whose IRQ 0 the machine raises on the in-kernel PIC and I/O APIC.
    pub fn set_in_kernel_pit(&mut self, on: bool) {
        self.in_kernel_pit = on;
    }

    /// Offer the guest XSAVE with the YMM state and the AVX features (AVX,
    /// AVX2, FMA, F16C) that KVM supports, in VMs created from now on
    /// ([`cpuid::ModelOptions::avx`]). Only for a guest whose kernel runs
    /// in hardware: KVM's instruction emulator has no XSAVE.
    pub fn set_avx(&mut self, on: bool) {
        self.avx = on;
    }

    /// Describe `topology` in the CPUID of VMs created from now on
    /// ([`cpuid::set_topology`]); without it they show the host's leaves.
    pub fn set_topology(&mut self, topology: cpuid::Topology) {
        self.topology = Some(topology);
    }

    /// Advertise no feature beyond `masks` to VMs created from now on
    /// ([`cpuid::restrict`]).
    pub fn restrict_cpuid(&mut self, masks: Option<cpuid::FeatureMasks>) {
        self.cpuid_masks = masks;
    }

    /// What `KVM_GET_SUPPORTED_CPUID` reported, before filtering.
    pub fn supported_cpuid(&self) -> &[kvm_cpuid_entry2] {
        &self.supported_cpuid
    }

    /// Create a VM, with the concrete type (the trait method boxes it).
    ///
    /// With the in-kernel irqchip, the GSI routing is the PC's: ISA IRQs go
    /// to the 8259A pair and to the I/O APIC, but IRQ0 (the PIT) to I/O APIC
    /// pin 2, as the MADT's interrupt source override tells the guest. KVM's
    /// default routing sends IRQ0 to pin 0, which Linux reports as
    /// "8254 timer not connected to IO-APIC" and then fails to calibrate the
    /// TSC against the PIT.
    pub fn create_kvm_vm(&self, mem: Arc<GuestMemory>) -> Result<KvmVm, AccelError> {
        let fd = self.kvm.create_vm().map_err(|e| AccelError::ioctl("KVM_CREATE_VM", e))?;
        let readonly_mem = fd.check_extension(Cap::ReadonlyMem);
        let slots = map_memory(&fd, &mem, readonly_mem)?;
        place_tss(&fd, &mem);

        // With this capability KVM reports every instruction its emulator
        // cannot run (with the instruction bytes) instead of injecting #UD
        // when the guest is at CPL>0, so the caller can emulate it instead.
        if fd.check_extension_raw(u64::from(KVM_CAP_EXIT_ON_EMULATION_FAILURE)) > 0 {
            let mut cap = kvm_enable_cap { cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE, ..Default::default() };
            cap.args[0] = 1;
            if let Err(e) = fd.enable_cap(&cap) {
                tracing::debug!("KVM_CAP_EXIT_ON_EMULATION_FAILURE refused: {e}");
            }
        }

        let irqchip = if self.in_kernel_irqchip && fd.check_extension(Cap::Irqchip) {
            match fd.create_irq_chip() {
                Ok(()) => {
                    let pit_config = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
                    let pit = self.in_kernel_pit
                        && match fd.create_pit2(pit_config) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::warn!("KVM_CREATE_PIT2 failed ({e}); the PIT stays in userspace");
                                false
                            }
                        };
                    set_pc_gsi_routing(&fd);
                    IrqChip::InKernel { pit }
                }
                Err(e) => {
                    tracing::warn!("KVM_CREATE_IRQCHIP failed ({e}); the interrupt controllers stay in userspace");
                    IrqChip::Userspace
                }
            }
        } else {
            IrqChip::Userspace
        };
        tracing::info!("KVM interrupt controllers: {irqchip}");

        let model_opts = cpuid::ModelOptions { userspace_irqchip: irqchip == IrqChip::Userspace, avx: self.avx };
        // With masks, the guest's kernel does not run in KVM: the CPL-0
        // reasons for hiding features do not apply, the masks decide.
        let cpuid = match &self.cpuid_masks {
            Some(masks) => {
                let mut c = cpuid::without_hidden_leaves(&self.supported_cpuid);
                cpuid::restrict(&mut c, masks);
                c
            }
            None => cpuid::model(&self.supported_cpuid, model_opts),
        };
        let mut cpuid = cpuid;
        if let Some(t) = self.topology {
            cpuid::set_topology(&mut cpuid, t);
        }

        // Every bridged MSR is tried, not only those KVM_GET_MSR_INDEX_LIST
        // names: KVM accepts some it does not list (the MTRRs).
        let msrs = MsrTable { usable: BRIDGE_MSRS.iter().map(|(i, _)| *i).collect(), refused: Vec::new() };
        // KVM_GET_FPU/KVM_SET_FPU drop MXCSR; the XSAVE image carries it.
        let xsave2_size = usize::try_from(fd.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        let fpu_path = if xsave2_size > 0 {
            let header = std::mem::size_of::<kvm_bindings::kvm_xsave>();
            FpuPath::Xsave2 { fam_len: xsave2_size.saturating_sub(header).div_ceil(4) }
        } else if fd.check_extension(Cap::Xsave) {
            FpuPath::Xsave
        } else {
            tracing::warn!("KVM lacks KVM_CAP_XSAVE; MXCSR cannot be moved in or out of the vCPU");
            FpuPath::Fpu
        };
        // The YMM state crosses the bridge where the guest may enable it.
        let ymm = fpu_path != FpuPath::Fpu
            && self.cpuid_masks.is_none()
            && cpuid.iter().any(|e| e.function == 0xd && e.index == 0 && e.eax & 0b100 != 0);
        let caps = Caps {
            fpu_path,
            ymm,
            xcrs: fd.check_extension(Cap::Xcrs),
            debugregs: fd.check_extension(Cap::Debugregs),
            vcpu_events: fd.check_extension(Cap::VcpuEvents),
            mp_state: fd.check_extension(Cap::MpState),
        };
        let initial_devices = match irqchip {
            IrqChip::InKernel { pit } => Some(InitialDevices::read(&fd, pit)?),
            IrqChip::Userspace => None,
        };
        let shared = Arc::new(Shared {
            caps,
            irqchip,
            cpuid,
            cpuid_restricted: self.cpuid_masks.is_some(),
            model_opts,
            msrs: Mutex::new(msrs),
            run_size: fd.run_size(),
        });
        let core = Arc::new(VmCore {
            fd,
            mem,
            slots: Mutex::new(slots),
            vram_seen: AtomicU64::new(VRAM_UNSEEN),
            flush_page: FlushPage::new()?,
        });
        let vm = KvmVm { core, shared, readonly_mem, msi_routes: Mutex::new(BTreeMap::new()), initial_devices };
        let flush = vm.flush_slot();
        set_slot(&vm.core.fd, flush, flush.len)
            .map_err(|e| AccelError::ioctl("KVM_SET_USER_MEMORY_REGION (flush slot)", e))?;
        // Writes in KVM join a live migration's dirty log (at once when
        // one runs).
        let source: Weak<dyn DirtyLogSource> = Arc::downgrade(&vm.core) as Weak<dyn DirtyLogSource>;
        vm.core.mem.add_dirty_source(source);
        Ok(vm)
    }
}

impl Hypervisor for Kvm {
    fn create_vm(&self, mem: Arc<GuestMemory>) -> Result<Box<dyn Vm>, AccelError> {
        Ok(Box::new(self.create_kvm_vm(mem)?))
    }

    fn name(&self) -> &'static str {
        "kvm"
    }
}

/// KVM's PIC pair, I/O APIC and (when it has one) PIT, as read right
/// after their creation: a machine reset writes them back.
struct InitialDevices {
    /// KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC.
    chips: [kvm_bindings::kvm_irqchip; 3],
    pit: Option<kvm_bindings::kvm_pit_state2>,
}

impl InitialDevices {
    fn read(fd: &VmFd, pit: bool) -> Result<Self, AccelError> {
        let mut chips = [kvm_bindings::kvm_irqchip::default(); 3];
        for (id, chip) in chips.iter_mut().enumerate() {
            chip.chip_id = id as u32;
            fd.get_irqchip(chip).map_err(|e| AccelError::ioctl("KVM_GET_IRQCHIP", e))?;
        }
        let pit = if pit { Some(fd.get_pit2().map_err(|e| AccelError::ioctl("KVM_GET_PIT2", e))?) } else { None };
        Ok(InitialDevices { chips, pit })
    }

    fn write(&self, fd: &VmFd) -> Result<(), AccelError> {
        for chip in &self.chips {
            fd.set_irqchip(chip).map_err(|e| AccelError::ioctl("KVM_SET_IRQCHIP", e))?;
        }
        if let Some(pit) = &self.pit {
            fd.set_pit2(pit).map_err(|e| AccelError::ioctl("KVM_SET_PIT2", e))?;
        }
        Ok(())
    }
}

/// A memory slot as registered with KVM.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    base: u64,
    len: u64,
    host_addr: u64,
    flags: u32,
    /// Guest RAM the guest may write: logged while dirty logging is on.
    ram: bool,
}

impl Slot {
    /// Whether the guest's writes to the slot are logged while dirty
    /// logging is on: RAM, not read-only.
    fn logs(&self) -> bool {
        self.ram && self.flags & KVM_MEM_READONLY == 0
    }

    /// The slot with `KVM_MEM_LOG_DIRTY_PAGES` set (`on`, for a slot that
    /// [`logs`](Slot::logs)) or clear.
    fn logging(self, on: bool) -> Slot {
        let flags = if on && self.logs() {
            self.flags | KVM_MEM_LOG_DIRTY_PAGES
        } else {
            self.flags & !KVM_MEM_LOG_DIRTY_PAGES
        };
        Slot { flags, ..self }
    }
}

/// The memory slots of a VM.
#[derive(Debug)]
struct SlotTable {
    slots: Vec<Slot>,
    /// The VRAM's slot while guest memory decodes it ([`mmu::vram`]):
    /// apart from `slots`, which hold guest RAM and ROM, and always logging
    /// the guest's writes.
    vram: Option<Slot>,
    next_id: u32,
    /// Set while the RAM slots log the guest's writes.
    logging: bool,
}

/// Register every region of `mem` as a memory slot.
fn map_memory(fd: &VmFd, mem: &GuestMemory, readonly_mem: bool) -> Result<SlotTable, AccelError> {
    let mut table = SlotTable { slots: Vec::new(), vram: None, next_id: 0, logging: false };
    for r in mem.regions() {
        let mut flags = 0;
        if r.kind == RegionKind::Rom {
            if readonly_mem {
                flags |= KVM_MEM_READONLY;
            } else {
                tracing::warn!("KVM lacks read-only memory slots; ROM {} is writable by the guest", r.name);
            }
        }
        let ram = r.kind == RegionKind::Ram;
        let slot = Slot { id: table.next_id, base: r.base, len: r.len, host_addr: r.host_addr, flags, ram };
        set_slot(fd, slot, r.len).map_err(|reason| AccelError::MemorySlot {
            name: r.name,
            base: r.base,
            len: r.len,
            reason,
        })?;
        table.slots.push(slot);
        table.next_id += 1;
    }
    Ok(table)
}

/// Register `slot` with `len` bytes (its own length), or delete it (0).
fn set_slot(fd: &VmFd, slot: Slot, len: u64) -> Result<(), String> {
    let region = kvm_userspace_memory_region {
        slot: slot.id,
        flags: slot.flags,
        guest_phys_addr: slot.base,
        memory_size: len,
        userspace_addr: slot.host_addr,
    };
    // SAFETY: every slot covers part of one live mapping: a region of the
    // VM's `GuestMemory` (see `GuestMemory::regions`) or the VM's
    // `FlushPage`. The VM and every vCPU hold an `Arc` of that
    // `GuestMemory`, and the VM owns its `FlushPage` and drops it after the
    // VM file descriptor, so each mapping outlives every user of its slot;
    // `GuestMemory` never unmaps or moves a region while it lives. The guest
    // writing it concurrently with host code is what guest memory is for:
    // the host side only copies bytes through raw pointers.
    unsafe { fd.set_user_memory_region(region) }.map_err(|e| e.to_string())
}

/// One page of host memory behind the slot that [`Vm::flush_translations`]
/// deletes and adds back. The guest never sees it: it sits at a
/// guest-physical address above any RAM the guest can be given and no
/// page table can point at (the CPUID model reports 40 address bits).
#[derive(Debug)]
struct FlushPage {
    addr: u64,
}

/// The VRAM slot's id, after the flush slot's.
const VRAM_SLOT_ID: u32 = 501;
/// [`VmCore::vram_seen`] before the first look (no page-aligned base).
const VRAM_UNSEEN: u64 = 1;

/// Where the flush slot sits: the last page below 2^40.
const FLUSH_SLOT_GPA: u64 = (1 << 40) - 0x1000;
/// The flush slot's id, apart from the ids of guest memory (counted from 0)
/// and below the 509 slots the oldest KVMs offer.
const FLUSH_SLOT_ID: u32 = 500;

impl FlushPage {
    fn new() -> Result<Self, AccelError> {
        // SAFETY: an anonymous private mapping of one page at an address the
        // kernel chooses; no existing memory is affected. The result is
        // checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0x1000,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AccelError::ioctl("mmap of the flush page", std::io::Error::last_os_error()));
        }
        Ok(FlushPage { addr: p as u64 })
    }
}

impl Drop for FlushPage {
    fn drop(&mut self) {
        // SAFETY: `addr` is the one-page mapping `new` made, unmapped once
        // here. `VmCore` declares `flush_page` after `fd`, so the VM (and
        // its slot over this page) is gone before this runs.
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, 0x1000);
        }
    }
}

/// Give KVM the three-page real-mode TSS and the identity-map page it needs
/// on VMX hosts without unrestricted guest: four free pages below 4 GiB,
/// under the firmware ROMs, as far up as possible.
fn place_tss(fd: &VmFd, mem: &GuestMemory) {
    const WINDOW: u64 = 0x4000;
    let regions = mem.regions();
    let mut base: u64 = 0xfffb_c000;
    while base >= mmu::PCI_HOLE_START {
        let end = base + WINDOW;
        match regions.iter().find(|r| base < r.base + r.len && r.base < end) {
            None => break,
            Some(r) => base = r.base.saturating_sub(WINDOW) & !0xfff,
        }
    }
    if base < mmu::PCI_HOLE_START {
        tracing::warn!("no free pages for KVM's real-mode TSS below 4 GiB; real mode may not run on VMX hosts");
        return;
    }
    if let Err(e) = fd.set_identity_map_address(base) {
        tracing::debug!("KVM_SET_IDENTITY_MAP_ADDR {base:#x}: {e}");
    }
    if let Err(e) = fd.set_tss_address((base + 0x1000) as usize) {
        tracing::warn!("KVM_SET_TSS_ADDR {:#x}: {e}", base + 0x1000);
    }
}

/// How the x87/SSE state moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FpuPath {
    /// `KVM_{GET,SET}_XSAVE2` with an image of the size `KVM_CAP_XSAVE2`
    /// gave (`fam_len` 32-bit words past the 4 KiB `kvm_xsave`).
    Xsave2 { fam_len: usize },
    /// `KVM_{GET,SET}_XSAVE` on a kernel without `KVM_CAP_XSAVE2`, where the
    /// image is always the 4 KiB `kvm_xsave`.
    Xsave,
    /// `KVM_{GET,SET}_FPU`: MXCSR is not carried.
    Fpu,
}

/// Optional capabilities the vCPU code consults.
#[derive(Debug, Clone, Copy)]
struct Caps {
    fpu_path: FpuPath,
    /// The guest's CPUID offers the YMM state (XCR0 bit 2): the bridge
    /// carries the upper halves of YMM0-15 through the XSAVE image.
    ymm: bool,
    xcrs: bool,
    debugregs: bool,
    vcpu_events: bool,
    mp_state: bool,
}

/// What a VM's vCPUs share.
#[derive(Debug)]
struct Shared {
    caps: Caps,
    irqchip: IrqChip,
    cpuid: Vec<kvm_cpuid_entry2>,
    /// The CPUID follows another model's features ([`Kvm::restrict_cpuid`]):
    /// the guest's kernel does not run in KVM.
    cpuid_restricted: bool,
    /// The options the CPUID model was made with.
    model_opts: cpuid::ModelOptions,
    msrs: Mutex<MsrTable>,
    /// Size of the `kvm_run` mapping.
    run_size: usize,
}

/// The bridged MSRs, split by what KVM made of them.
#[derive(Debug)]
struct MsrTable {
    /// Not refused (yet).
    usable: Vec<u32>,
    /// Refused once, reported, and left out since.
    refused: Vec<u32>,
}

impl Shared {
    fn msr_table(&self) -> std::sync::MutexGuard<'_, MsrTable> {
        self.msrs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn usable_msrs(&self) -> Vec<u32> {
        self.msr_table().usable.clone()
    }

    fn refused_msrs(&self) -> Vec<&'static str> {
        self.msr_table().refused.iter().map(|&i| msr_name(i)).collect()
    }

    /// Note that KVM refused `index`; warn the first time.
    fn refuse_msr(&self, index: u32, op: &str) {
        let mut t = self.msr_table();
        if let Some(pos) = t.usable.iter().position(|&i| i == index) {
            t.usable.remove(pos);
            t.refused.push(index);
            tracing::warn!("KVM refused to {op} MSR {} ({index:#x}); the guest runs without it", msr_name(index));
        }
    }
}

/// One KVM guest.
pub struct KvmVm {
    /// The VM file descriptor, its guest memory and memory slots, shared
    /// with the guest memory's dirty logging.
    core: Arc<VmCore>,
    shared: Arc<Shared>,
    /// Whether KVM has read-only memory slots (KVM_CAP_READONLY_MEM).
    readonly_mem: bool,
    /// The messages of [`Vm::register_msi_irqfd`], by GSI.
    msi_routes: Mutex<BTreeMap<u32, (u64, u32)>>,
    /// The in-kernel interrupt controllers and PIT as created, for
    /// [`Vm::reset_devices`].
    initial_devices: Option<InitialDevices>,
}

/// The VM file descriptor and its memory slots. The [`KvmVm`] holds it;
/// its guest memory knows it as a [`DirtyLogSource`] (weakly, so a round
/// of dirty logging may hold it a moment longer than the `KvmVm`).
struct VmCore {
    fd: VmFd,
    mem: Arc<GuestMemory>,
    slots: Mutex<SlotTable>,
    /// The VRAM base the VRAM slot follows ([`VRAM_UNSEEN`] before the
    /// first look, `u64::MAX` for none): a vCPU's entry compares it with
    /// guest memory's without the table's lock.
    vram_seen: AtomicU64,
    /// Dropped after `fd` (declaration order), see [`FlushPage`].
    flush_page: FlushPage,
}

impl VmCore {
    fn table(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the pages of `slot` that KVM logged as written since the last
    /// fetch dirty in `mem` ([`VmCore::logged_pages`]).
    fn collect_slot(&self, slot: &Slot, mem: &GuestMemory) -> Result<(), String> {
        for offset in self.logged_pages(slot)? {
            mem.mark_dirty(slot.base + offset, PAGE_SIZE);
        }
        Ok(())
    }

    /// The offsets in `slot` of the pages KVM logged as written since the
    /// last fetch (`KVM_GET_DIRTY_LOG`, which also clears KVM's bitmap and
    /// write-protects the pages again).
    fn logged_pages(&self, slot: &Slot) -> Result<Vec<u64>, String> {
        let len = usize::try_from(slot.len).map_err(|_| format!("slot {} is too large", slot.id))?;
        let bitmap = self
            .fd
            .get_dirty_log(slot.id, len)
            .map_err(|e| format!("KVM_GET_DIRTY_LOG of the memory slot at {:#x}: {e}", slot.base))?;
        let mut pages = Vec::new();
        for (i, &word) in bitmap.iter().enumerate() {
            let mut w = word;
            while w != 0 {
                let offset = (i as u64 * 64 + u64::from(w.trailing_zeros())) * PAGE_SIZE;
                w &= w - 1;
                if offset < slot.len {
                    pages.push(offset);
                }
            }
        }
        Ok(pages)
    }
}

impl VmCore {
    /// Maps the VRAM where guest memory decodes it now, as a slot that
    /// logs the guest's writes, if it moved since the last look: the old
    /// slot's log goes to the VRAM's bitmap before the slot goes.
    fn follow_vram(&self) -> Result<(), AccelError> {
        let Some(v) = self.mem.vram() else { return Ok(()) };
        let want = v.base();
        let seen = want.unwrap_or(u64::MAX);
        if self.vram_seen.load(Ordering::Acquire) == seen {
            return Ok(());
        }
        let mut table = self.table();
        // Tried once per move: a slot KVM refuses leaves the VRAM to MMIO
        // exits, which reach the adapter.
        self.vram_seen.store(seen, Ordering::Release);
        if table.vram.map(|s| s.base) == want {
            return Ok(());
        }
        if let Some(old) = table.vram.take() {
            if let Err(e) = self.collect_vram_slot(&old, v) {
                tracing::warn!("the VRAM's dirty log before it moved: {e}");
                v.mark_written(0, v.len());
            }
            set_slot(&self.fd, old, 0).map_err(|reason| AccelError::MemorySlot {
                name: "VRAM",
                base: old.base,
                len: old.len,
                reason,
            })?;
        }
        if let Some(base) = want {
            let slot = Slot {
                id: VRAM_SLOT_ID,
                base,
                len: v.len(),
                host_addr: v.host_addr(),
                flags: KVM_MEM_LOG_DIRTY_PAGES,
                ram: false,
            };
            let err = |reason: String| AccelError::MemorySlot { name: "VRAM", base, len: slot.len, reason };
            set_slot(&self.fd, slot, slot.len).map_err(err)?;
            table.vram = Some(slot);
            // What the guest wrote before the slot existed went through the
            // adapter's bus device, which tracks its own writes.
            self.collect_vram_slot(&slot, v).map_err(err)?;
        }
        Ok(())
    }

    /// Marks the VRAM pages KVM logged as written in `slot` since the last
    /// fetch ([`VmCore::logged_pages`]).
    fn collect_vram_slot(&self, slot: &Slot, v: &mmu::Vram) -> Result<(), String> {
        for offset in self.logged_pages(slot)? {
            v.mark_written(offset, PAGE_SIZE);
        }
        Ok(())
    }
}

impl DirtyLogSource for VmCore {
    fn collect_vram(&self, mem: &GuestMemory) -> Result<(), String> {
        let Some(v) = mem.vram() else { return Ok(()) };
        let slot = self.table().vram;
        match slot {
            Some(slot) => self.collect_vram_slot(&slot, v),
            None => Ok(()),
        }
    }

    fn set_dirty_logging(&self, on: bool) -> Result<(), String> {
        let mut table = self.table();
        if table.logging == on {
            return Ok(());
        }
        let what = if on { "turning on" } else { "turning off" };
        let logged: Vec<Slot> = table.slots.iter().copied().filter(|s| s.id != FLUSH_SLOT_ID && s.logs()).collect();
        for (n, slot) in logged.iter().enumerate() {
            let changed = slot.logging(on);
            let done = set_slot(&self.fd, changed, changed.len).and_then(|()| {
                // A first fetch shows that KVM keeps the log (and starts
                // it empty).
                if on {
                    let len = usize::try_from(changed.len).map_err(|e| e.to_string())?;
                    self.fd.get_dirty_log(slot.id, len).map(|_| ()).map_err(|e| e.to_string())
                } else {
                    Ok(())
                }
            });
            if let Err(e) = done {
                // Back as they were.
                for s in &logged[..=n] {
                    let _ = set_slot(&self.fd, *s, s.len);
                }
                return Err(format!(
                    "KVM cannot log the guest's writes ({what} KVM_MEM_LOG_DIRTY_PAGES on the memory slot at {:#x}: {e})",
                    slot.base
                ));
            }
        }
        for s in table.slots.iter_mut().filter(|s| s.id != FLUSH_SLOT_ID) {
            *s = s.logging(on);
        }
        table.logging = on;
        Ok(())
    }

    fn collect_dirty(&self, mem: &GuestMemory) -> Result<(), String> {
        let table = self.table();
        if !table.logging {
            return Ok(());
        }
        for slot in table.slots.iter().filter(|s| s.id != FLUSH_SLOT_ID && s.logs()) {
            self.collect_slot(slot, mem)?;
        }
        Ok(())
    }
}

impl Drop for VmCore {
    fn drop(&mut self) {
        // The VM goes while a migration logs writes: what KVM logged since
        // the last round goes to guest memory's own log.
        if let Err(e) = self.collect_dirty(&self.mem) {
            self.mem.note_dirty_log_error(format!("the dirty log of a KVM VM that went was lost: {e}"));
        }
        // And what it logged of the VRAM, to the VRAM's bitmap.
        if let Err(e) = self.collect_vram(&self.mem) {
            tracing::warn!("the VRAM's dirty log of a KVM VM that went: {e}");
            if let Some(v) = self.mem.vram() {
                v.mark_written(0, v.len());
            }
        }
    }
}

impl std::fmt::Debug for KvmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVm").field("irqchip", &self.shared.irqchip).finish_non_exhaustive()
    }
}

impl KvmVm {
    /// The CPUID model every vCPU gets (before the per-vCPU APIC ID).
    pub fn cpuid(&self) -> &[kvm_cpuid_entry2] {
        &self.shared.cpuid
    }

    /// The guest memory behind the VM's slots.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.core.mem
    }

    /// The bridged MSRs KVM has refused so far, by name.
    pub fn refused_msrs(&self) -> Vec<&'static str> {
        self.shared.refused_msrs()
    }

    fn flush_slot(&self) -> Slot {
        Slot {
            id: FLUSH_SLOT_ID,
            base: FLUSH_SLOT_GPA,
            len: 0x1000,
            host_addr: self.core.flush_page.addr,
            flags: 0,
            ram: false,
        }
    }

    /// Create a vCPU, with the concrete type (the trait method boxes it).
    pub fn create_kvm_vcpu(&self, id: u32) -> Result<KvmVcpu, AccelError> {
        KvmVcpu::new(&self.core.fd, id, Arc::clone(&self.core.mem), Arc::clone(&self.shared))
    }
}

impl Vm for KvmVm {
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, AccelError> {
        Ok(Box::new(self.create_kvm_vcpu(id)?))
    }

    fn set_irq_line(&self, irq: u32, level: bool) -> Result<(), AccelError> {
        if self.shared.irqchip == IrqChip::Userspace {
            return Err(AccelError::NoInKernelIrqChip("set_irq_line"));
        }
        self.core.fd.set_irq_line(irq, level).map_err(|e| AccelError::ioctl("KVM_IRQ_LINE", e))
    }

    fn signal_msi(&self, address: u64, data: u32) -> Result<(), AccelError> {
        if self.shared.irqchip == IrqChip::Userspace {
            return Err(AccelError::NoInKernelIrqChip("signal_msi"));
        }
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        // 0: the guest blocked it (masked APIC); > 0: delivered. Either is fine.
        self.core.fd.signal_msi(msi).map(|_| ()).map_err(|e| AccelError::ioctl("KVM_SIGNAL_MSI", e))
    }

    fn irqchip(&self) -> IrqChip {
        self.shared.irqchip
    }

    fn reset_devices(&self) -> Result<(), AccelError> {
        match &self.initial_devices {
            Some(d) => d.write(&self.core.fd),
            None => Ok(()),
        }
    }

    fn hide(&self, start: u64, end: u64) -> Result<(), AccelError> {
        if !start.is_multiple_of(0x1000) || !end.is_multiple_of(0x1000) || start >= end {
            return Err(AccelError::ioctl(
                "KVM_SET_USER_MEMORY_REGION",
                format!("cannot hide {start:#x}..{end:#x}: not a page-aligned range"),
            ));
        }
        let mut table = self.core.table();
        let overlapping: Vec<Slot> = table
            .slots
            .iter()
            .copied()
            .filter(|s| s.id != FLUSH_SLOT_ID && s.base < end && start < s.base + s.len)
            .collect();
        for slot in overlapping {
            let err = |reason: String| AccelError::MemorySlot { name: "RAM", base: slot.base, len: slot.len, reason };
            if table.logging && slot.logs() {
                // Deleting the slot drops KVM's log of it: the pages it
                // logged go to guest memory's own first.
                if let Err(e) = self.core.collect_slot(&slot, &self.core.mem) {
                    self.core.mem.note_dirty_log_error(e);
                }
            }
            set_slot(&self.core.fd, slot, 0).map_err(err)?;
            table.slots.retain(|s| s.id != slot.id);
            let slot_end = slot.base + slot.len;
            let mut pieces = Vec::new();
            if slot.base < start {
                pieces.push((slot.base, start));
            }
            if end < slot_end {
                pieces.push((end, slot_end));
            }
            for (i, (b, e)) in pieces.into_iter().enumerate() {
                let id = if i == 0 {
                    slot.id
                } else {
                    table.next_id += 1;
                    table.next_id - 1
                };
                let piece = Slot { id, base: b, len: e - b, host_addr: slot.host_addr + (b - slot.base), ..slot };
                set_slot(&self.core.fd, piece, piece.len).map_err(err)?;
                table.slots.push(piece);
            }
        }
        tracing::debug!("guest-physical {start:#x}..{end:#x} hidden from KVM");
        Ok(())
    }

    fn protect(&self, start: u64, end: u64, read_only: bool) -> Result<(), AccelError> {
        let err = |reason: String| AccelError::MemorySlot { name: "RAM", base: start, len: end - start, reason };
        if read_only && !self.readonly_mem {
            return Err(err("this KVM has no read-only memory slots (KVM_CAP_READONLY_MEM)".into()));
        }
        // From the region, not the slots: a hidden range has no slot.
        let host = self
            .core
            .mem
            .regions()
            .iter()
            .find(|r| r.kind == RegionKind::Ram && r.base <= start && end <= r.base + r.len)
            .map(|r| r.host_addr + (start - r.base))
            .ok_or_else(|| err(format!("{start:#x}..{end:#x} is not inside one RAM region")))?;
        self.hide(start, end)?;
        let mut table = self.core.table();
        // The lowest free slot number: switching protection back and forth
        // (every reset) does not use up slot numbers.
        let id = (0..FLUSH_SLOT_ID)
            .find(|id| table.slots.iter().all(|s| s.id != *id))
            .ok_or_else(|| err("no free memory slot".into()))?;
        let flags = if read_only { KVM_MEM_READONLY } else { 0 };
        let slot = Slot { id, base: start, len: end - start, host_addr: host, flags, ram: true }.logging(table.logging);
        set_slot(&self.core.fd, slot, slot.len).map_err(err)?;
        table.slots.push(slot);
        table.next_id = table.next_id.max(id + 1);
        Ok(())
    }

    fn follow_vram(&self) -> Result<(), AccelError> {
        self.core.follow_vram()
    }

    fn flush_translations(&self) -> Result<(), AccelError> {
        let slot = self.flush_slot();
        set_slot(&self.core.fd, slot, 0)
            .and_then(|()| set_slot(&self.core.fd, slot, slot.len))
            .map_err(|e| AccelError::ioctl("KVM_SET_USER_MEMORY_REGION (flush slot)", e))
    }

    fn register_irqfd(&self, gsi: u32) -> Result<EventFd, AccelError> {
        if self.shared.irqchip == IrqChip::Userspace {
            return Err(AccelError::NoInKernelIrqChip("register_irqfd"));
        }
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| AccelError::ioctl("eventfd", e))?;
        self.core.fd.register_irqfd(&fd, gsi).map_err(|e| AccelError::ioctl("KVM_IRQFD", e))?;
        Ok(fd)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), AccelError> {
        self.core.fd.unregister_irqfd(fd, gsi).map_err(|e| AccelError::ioctl("KVM_IRQFD (deassign)", e))
    }

    fn register_msi_irqfd(&self, address: u64, data: u32) -> Result<(EventFd, u32), AccelError> {
        if self.shared.irqchip == IrqChip::Userspace {
            return Err(AccelError::NoInKernelIrqChip("register_msi_irqfd"));
        }
        let mut routes = self.msi_routes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(gsi) = (FIRST_MSI_GSI..FIRST_MSI_GSI + MAX_MSI_ROUTES).find(|g| !routes.contains_key(g)) else {
            return Err(AccelError::Ioctl {
                op: "KVM_SET_GSI_ROUTING",
                reason: format!("all {MAX_MSI_ROUTES} GSIs for messages are taken"),
            });
        };
        routes.insert(gsi, (address, data));
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| AccelError::ioctl("eventfd", e));
        let done = fd.and_then(|fd| {
            set_routes(&self.core.fd, &routes)?;
            self.core.fd.register_irqfd(&fd, gsi).map_err(|e| AccelError::ioctl("KVM_IRQFD", e))?;
            Ok(fd)
        });
        match done {
            Ok(fd) => Ok((fd, gsi)),
            Err(e) => {
                routes.remove(&gsi);
                Err(e)
            }
        }
    }

    fn unregister_msi_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), AccelError> {
        let mut routes = self.msi_routes.lock().unwrap_or_else(|e| e.into_inner());
        self.core.fd.unregister_irqfd(fd, gsi).map_err(|e| AccelError::ioctl("KVM_IRQFD (deassign)", e))?;
        if routes.remove(&gsi).is_some() {
            set_routes(&self.core.fd, &routes)?;
        }
        Ok(())
    }

    fn register_ioeventfd(&self, addr: IoEventAddr, len: u32, datamatch: Option<u64>) -> Result<EventFd, AccelError> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| AccelError::ioctl("eventfd", e))?;
        self.ioeventfd(fd.as_raw_fd(), addr, len, datamatch, false)?;
        Ok(fd)
    }

    fn unregister_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddr,
        len: u32,
        datamatch: Option<u64>,
    ) -> Result<(), AccelError> {
        self.ioeventfd(fd.as_raw_fd(), addr, len, datamatch, true)
    }

    fn set_ioeventfd(
        &self,
        fd: BorrowedFd<'_>,
        addr: IoEventAddr,
        len: u32,
        datamatch: Option<u64>,
        on: bool,
    ) -> Result<(), AccelError> {
        self.ioeventfd(fd.as_raw_fd(), addr, len, datamatch, !on)
    }
}

impl KvmVm {
    /// `KVM_IOEVENTFD`, assigning or deassigning.
    fn ioeventfd(
        &self,
        fd: RawFd,
        addr: IoEventAddr,
        len: u32,
        datamatch: Option<u64>,
        deassign: bool,
    ) -> Result<(), AccelError> {
        let op = if deassign { "KVM_IOEVENTFD (deassign)" } else { "KVM_IOEVENTFD" };
        let req =
            ioeventfd_request(fd, addr, len, datamatch, deassign).map_err(|reason| AccelError::Ioctl { op, reason })?;
        // SAFETY: KVM_IOEVENTFD on a VM fd reads one `kvm_ioeventfd`, which
        // `req` is, and writes nothing; the eventfd it names is borrowed by
        // every caller, so it stays open at least as long as the call (KVM
        // takes its own reference, and fails the call for a descriptor that
        // is not an eventfd).
        let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.core.fd, KVM_IOEVENTFD(), &req) };
        if rc != 0 {
            return Err(AccelError::ioctl(op, std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// GSIs 0-23 are the pins of the PIC and the I/O APIC; message routes
/// ([`Vm::register_msi_irqfd`]) take the ones after.
const FIRST_MSI_GSI: u32 = 24;
/// Message routes a VM holds at most (KVM takes up to 4096 routes in all).
pub const MAX_MSI_ROUTES: u32 = 1024;

/// The routing table: KVM's default one, which a table replaces (GSIs
/// 0-15 to the PIC pin, 0-7 on the master and 8-15 on the slave, and to the
/// I/O APIC pin of the same number; 16-23 to the I/O APIC), then one MSI
/// route per entry of `msi` (GSI -> address, data).
fn routing_entries(msi: &BTreeMap<u32, (u64, u32)>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 { irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin } },
        ..Default::default()
    };
    let mut entries = Vec::with_capacity(40 + msi.len());
    for gsi in 0..24 {
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let chip = if gsi < 8 { KVM_IRQCHIP_PIC_MASTER } else { KVM_IRQCHIP_PIC_SLAVE };
            entries.push(irqchip(gsi, chip, gsi % 8));
        }
    }
    for (&gsi, &(address, data)) in msi {
        entries.push(kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: address as u32,
                    address_hi: (address >> 32) as u32,
                    data,
                    ..Default::default()
                },
            },
            ..Default::default()
        });
    }
    entries
}

/// KVM_SET_GSI_ROUTING with [`routing_entries`].
fn set_routes(vm: &VmFd, msi: &BTreeMap<u32, (u64, u32)>) -> Result<(), AccelError> {
    let entries = routing_entries(msi);
    let mut table =
        KvmIrqRouting::new(0).map_err(|e| AccelError::Ioctl { op: "KVM_SET_GSI_ROUTING", reason: format!("{e:?}") })?;
    for e in entries {
        table.push(e).map_err(|e| AccelError::Ioctl { op: "KVM_SET_GSI_ROUTING", reason: format!("{e:?}") })?;
    }
    vm.set_gsi_routing(&table).map_err(|e| AccelError::ioctl("KVM_SET_GSI_ROUTING", e))
}

/// The `kvm_ioeventfd` for a registration, or why it cannot be made.
fn ioeventfd_request(
    fd: i32,
    addr: IoEventAddr,
    len: u32,
    datamatch: Option<u64>,
    deassign: bool,
) -> Result<kvm_ioeventfd, String> {
    if !matches!(len, 0 | 1 | 2 | 4 | 8) {
        return Err(format!("length {len}: it must be 0, 1, 2, 4 or 8"));
    }
    let mut flags = 0;
    let addr = match addr {
        IoEventAddr::Pio(port) => {
            if len == 0 {
                return Err("a port ioeventfd needs a length".into());
            }
            flags |= 1 << kvm_ioeventfd_flag_nr_pio;
            u64::from(port)
        }
        IoEventAddr::Mmio(a) => a,
    };
    if let Some(v) = datamatch {
        if len == 0 {
            return Err("a datamatch needs a length".into());
        }
        if len < 8 && v >> (8 * len) != 0 {
            return Err(format!("datamatch {v:#x} does not fit in {len} bytes"));
        }
        flags |= 1 << kvm_ioeventfd_flag_nr_datamatch;
    }
    if deassign {
        flags |= 1 << kvm_ioeventfd_flag_nr_deassign;
    }
    Ok(kvm_ioeventfd { datamatch: datamatch.unwrap_or(0), addr, len, fd, flags, ..Default::default() })
}

/// Install the PC's GSI routing (see [`Kvm::create_kvm_vm`]). A refusal is
/// logged and KVM's default routing stays.
fn set_pc_gsi_routing(fd: &kvm_ioctls::VmFd) {
    use kvm_bindings::{
        kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip, KvmIrqRouting,
        KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    };
    let route = |gsi: u32, irqchip: u32, pin: u32| kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 { irqchip: kvm_irq_routing_irqchip { irqchip, pin } },
        ..Default::default()
    };
    let mut entries = Vec::new();
    // IRQ2 is the cascade: no device drives it.
    for irq in (0..8).filter(|&i| i != 2) {
        entries.push(route(irq, KVM_IRQCHIP_PIC_MASTER, irq));
    }
    for irq in 8..16 {
        entries.push(route(irq, KVM_IRQCHIP_PIC_SLAVE, irq - 8));
    }
    for gsi in 0..24 {
        match gsi {
            0 => entries.push(route(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            _ => entries.push(route(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    match KvmIrqRouting::from_entries(&entries) {
        Ok(routing) => {
            if let Err(e) = fd.set_gsi_routing(&routing) {
                tracing::warn!(target: "accel", "KVM_SET_GSI_ROUTING failed ({e}); IRQ0 stays on I/O APIC pin 0");
            }
        }
        Err(e) => tracing::warn!(target: "accel", "cannot build the GSI routing table: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keeps_the_default_pins_and_adds_messages() {
        let mut msi = BTreeMap::new();
        msi.insert(24, (0xfee0_0000u64, 0x45u32));
        msi.insert(30, (0x1_fee0_1000u64, 0x4046u32));
        let e = routing_entries(&msi);
        assert_eq!(e.len(), 16 * 2 + 8 + 2);
        let chips: Vec<(u32, u32, u32)> = e
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: irqchip entries hold the irqchip member of the union.
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert!(chips.contains(&(0, KVM_IRQCHIP_IOAPIC, 0)) && chips.contains(&(0, KVM_IRQCHIP_PIC_MASTER, 0)));
        assert!(chips.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)) && chips.contains(&(9, KVM_IRQCHIP_IOAPIC, 9)));
        assert!(chips.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(!chips.iter().any(|c| c.0 >= 16 && c.1 != KVM_IRQCHIP_IOAPIC), "16-23 only on the I/O APIC");
        let msgs: Vec<(u32, u32, u32, u32)> = e
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_MSI)
            // SAFETY: MSI entries hold the msi member of the union.
            .map(|e| unsafe { (e.gsi, e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data) })
            .collect();
        assert_eq!(msgs, [(24, 0xfee0_0000, 0, 0x45), (30, 0xfee0_1000, 1, 0x4046)]);
    }

    #[test]
    fn ioeventfd_requests() {
        let r = ioeventfd_request(7, IoEventAddr::Pio(0xcfc), 4, Some(0x1234), false).unwrap();
        assert_eq!((r.addr, r.len, r.fd, r.datamatch), (0xcfc, 4, 7, 0x1234));
        assert_eq!(r.flags, (1 << kvm_ioeventfd_flag_nr_pio) | (1 << kvm_ioeventfd_flag_nr_datamatch));
        let r = ioeventfd_request(7, IoEventAddr::Mmio(0xd000_0000), 0, None, true).unwrap();
        assert_eq!((r.addr, r.len), (0xd000_0000, 0));
        assert_eq!(r.flags, 1 << kvm_ioeventfd_flag_nr_deassign);
        assert!(ioeventfd_request(7, IoEventAddr::Pio(1), 0, None, false).is_err());
        assert!(ioeventfd_request(7, IoEventAddr::Mmio(1), 3, None, false).is_err());
        assert!(ioeventfd_request(7, IoEventAddr::Mmio(1), 0, Some(1), false).is_err());
        assert!(ioeventfd_request(7, IoEventAddr::Mmio(1), 1, Some(0x100), false).is_err());
    }

    #[test]
    fn open_errors_name_cause_and_fix() {
        use vmm_sys_util::errno::Error;
        let missing = open_error(&Error::new(libc::ENOENT)).to_string();
        assert_eq!(missing, "/dev/kvm does not exist: KVM is not available on this host; use --accel interp");
        let denied = open_error(&Error::new(libc::EACCES)).to_string();
        assert!(denied.contains("permission denied") && denied.contains("kvm group"), "{denied}");
        let nodev = open_error(&Error::new(libc::ENXIO)).to_string();
        assert!(nodev.contains("modprobe"), "{nodev}");
        let api = AccelError::ApiMismatch { found: 11, expected: 12 }.to_string();
        assert!(api.contains("11") && api.contains("12") && api.contains("--accel interp"), "{api}");
    }
}
