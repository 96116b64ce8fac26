//! The interpreter's processor: `struct Cpu`, its constructor and state
//! setters. Its work lives by concern in sibling modules:
//! [`crate::platform`] (the I/O interface), [`crate::cache`] (decoded
//! blocks), [`crate::memory`] (segmentation and the soft TLB),
//! [`crate::atomic`] (locked instructions) and [`crate::exec`] (the run
//! loop).

use std::rc::Rc;
use std::sync::Arc;

use iced_x86::Code;
use mmu::{CodeWatch, GuestMemory, Mmu, PagingCtx, PagingMode, Privilege};

use crate::cache::{DecodeCache, InvalidationListener};
use crate::cpuid::Topology;
use crate::exception::Exception;
use crate::hooks::ExecHooks;
use crate::ops;
use crate::state::{cr, flags, seg_attr, sreg, CpuState, Segment};

pub use crate::cache::{Block, Decoded, Invalidation};
pub use crate::memory::is_canonical;
pub use crate::platform::{Platform, StopReason};

/// Counters for `--stats` and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuStats {
    pub instructions: u64,
    pub blocks_decoded: u64,
    /// Code pages the decode cache evicted to make room (their blocks
    /// are decoded again when they run again).
    pub cache_evictions: u64,
    pub exceptions: u64,
    pub interrupts: u64,
    /// Locked instructions run again after another processor changed
    /// their destination first (see [`crate::atomic`]).
    pub lock_retries: u64,
    /// Locked instructions run with the other processors stopped (see
    /// [`crate::atomic`]).
    pub lock_exclusive: u64,
}

/// One x86 processor run by the interpreter.
pub struct Cpu {
    pub state: CpuState,
    pub mmu: Mmu,
    /// Port I/O, MMIO and interrupts.
    pub platform: Box<dyn Platform + Send>,
    pub stats: CpuStats,
    pub(crate) paging: PagingCtx,
    pub(crate) cache: DecodeCache,
    /// This processor's queue of code-page changes in guest memory: writes
    /// (by any CPU or device) to pages it may hold code for, and pages other
    /// processors newly hold code for (see [`mmu::memory`]'s code pages).
    pub(crate) code_watch: Arc<CodeWatch>,
    /// The block run last, whose [`Block::next`] the next lookup tries.
    pub(crate) prev_block: Option<Rc<Block>>,
    /// RIP of the instruction being executed (for rewinding on faults).
    pub(crate) insn_start: u64,
    /// Set by handlers that change how code decodes or where it lives (mode
    /// switches, CS loads, CR/EFER writes): the block loop stops after them.
    pub(crate) block_break: bool,
    /// Set when the platform asked to stop (checked after I/O).
    pub(crate) stop: bool,
    /// Exception being delivered, for double/triple fault escalation.
    pub(crate) delivering: Option<Exception>,
    pub(crate) shutdown: Option<String>,
    /// Host time base of the TSC.
    pub(crate) tsc_epoch: std::time::Instant,
    /// TSC ticks per nanosecond times 2^32 (fixed-point).
    pub(crate) tsc_per_ns_fp: u64,
    /// Per-instruction breakpoint hits and the random-number generator (see
    /// [`crate::ops::debug`]).
    pub(crate) sys: crate::ops::debug::SysState,
    /// An engine sharing the guest (see [`crate::hooks`]).
    pub(crate) hooks: Option<Box<dyn ExecHooks>>,
    /// QEMU's `-d` logs ([`Cpu::set_guest_log`]).
    pub(crate) guest_log: Option<Arc<crate::guestlog::GuestLog>>,
    /// A debugger's breakpoints and single step ([`Cpu::set_debug_stops`]).
    pub(crate) debug_stops: Option<crate::exec::DebugStops>,
    /// The linear RIP a resume under those stops starts from, whose
    /// breakpoint does not stop its first instruction.
    pub(crate) debug_resume: Option<u64>,
    /// The decode cache keeps the bytes of user pages ([`ExecHooks::keeps_user_pages`]).
    pub(crate) keep_user_pages: bool,
    /// Told of every code page that lost its decoded code (see
    /// [`Cpu::add_invalidation_listener`]).
    pub(crate) invalidation_listeners: Vec<InvalidationListener>,
    /// Runs after which a block is hot (see [`Cpu::set_hot_threshold`]);
    /// 0: blocks are not counted.
    pub(crate) hot_threshold: u32,
    /// The CPUID model advertises XSAVE and CR4.OSXSAVE can be set (see
    /// [`Cpu::set_xsave`]).
    pub(crate) xsave: bool,
    /// The CPU model has AVX: CPUID advertises it, XSETBV accepts the YMM
    /// component and VEX-encoded vector instructions can run (see
    /// [`Cpu::set_avx`]).
    pub(crate) avx: bool,
    /// The CPU model has AES-NI and PCLMULQDQ (see [`Cpu::set_model`]).
    pub(crate) crypto: bool,
    /// The protection keys are in the model (see [`Cpu::set_model`]).
    pub(crate) pku: bool,
    /// The machine's processors, as CPUID describes them (see
    /// [`Cpu::set_topology`]).
    pub(crate) topology: Topology,
    /// This processor's initial APIC ID.
    pub(crate) apic_id: u32,
    /// Where the locked instruction being executed stands (see
    /// [`crate::atomic`]).
    pub(crate) lock: crate::atomic::LockStep,
    /// Runs a closure while no other processor runs ([`Cpu::set_exclusive`]).
    pub(crate) exclusive: Option<crate::atomic::ExclusiveFn>,
}

impl Cpu {
    /// A processor in its reset state on `mem`, the only one of its
    /// machine ([`Cpu::set_topology`] places it in a larger one). It
    /// registers its own [`CodeWatch`] on `mem`: writes to code pages by
    /// anyone reach its decoded code, whatever other processors share `mem`.
    pub fn new(mem: Arc<GuestMemory>, platform: Box<dyn Platform + Send>) -> Self {
        let state = CpuState::reset();
        let code_watch = mem.code_watch();
        let mut mmu = Mmu::new(mem);
        mmu.set_watch(code_watch.clone());
        let mut cpu = Cpu {
            state,
            mmu,
            platform,
            stats: CpuStats::default(),
            paging: PagingCtx::OFF,
            cache: DecodeCache::default(),
            code_watch,
            prev_block: None,
            insn_start: 0,
            block_break: false,
            stop: false,
            delivering: None,
            shutdown: None,
            tsc_epoch: std::time::Instant::now(),
            tsc_per_ns_fp: crate::cpuid::TSC_KHZ * (1 << 32) / 1_000_000,
            sys: Default::default(),
            hooks: None,
            debug_stops: None,
            guest_log: None,
            debug_resume: None,
            keep_user_pages: false,
            invalidation_listeners: Vec::new(),
            hot_threshold: 0,
            xsave: true,
            avx: false,
            crypto: false,
            pku: false,
            topology: Topology::default(),
            apic_id: 0,
            lock: Default::default(),
            exclusive: None,
        };
        cpu.update_paging();
        cpu
    }

    /// Replace the whole architectural state (loaders, the KVM bridge).
    pub fn set_state(&mut self, s: CpuState) {
        self.state = s;
        self.update_paging();
        self.mmu.flush(false);
    }

    /// Offer the XSAVE feature set (the default) or hide it: without it
    /// CPUID reports no XSAVE and no leaf 0Dh, and CR4.OSXSAVE is reserved,
    /// so the XSAVE instructions raise #UD. For an engine that runs the
    /// guest's user code where the guest's XCR0 does not hold: an XSAVE
    /// area sized from this model's CPUID would be too small there.
    pub fn set_xsave(&mut self, on: bool) {
        self.xsave = on;
    }

    /// Whether the XSAVE feature set is offered (see [`Cpu::set_xsave`]).
    pub fn xsave(&self) -> bool {
        self.xsave
    }

    /// Turn the AVX part of the model on or off (off by default). On, and
    /// with the XSAVE feature set offered, CPUID advertises AVX, AVX2, FMA,
    /// F16C and the YMM state component (leaf 0Dh), XSETBV accepts XCR0
    /// bit 2, and
    /// VEX-encoded vector instructions run once the OS has enabled the
    /// state (CR4.OSXSAVE, XCR0 = x87|SSE|YMM).
    pub fn set_avx(&mut self, on: bool) {
        self.avx = on;
    }

    /// Take on one of the CPU models ([`crate::cpuid::Model`]): its AVX
    /// part ([`Cpu::set_avx`]) and its AES-NI and PCLMULQDQ (CPUID.1:ECX
    /// bits 25 and 1; without them those instructions raise #UD).
    /// With [`crate::cpuid::Model::Max`], also the protection keys: PKU
    /// (CR4.PKE, PKRU, RDPKRU and WRPKRU, the PKRU state component) and PKS
    /// (CR4.PKS, IA32_PKRS), offered with the XSAVE feature set.
    pub fn set_model(&mut self, model: crate::cpuid::Model) {
        self.avx = model.avx();
        self.crypto = model.crypto();
        self.pku = model.pku();
    }

    /// Whether the protection keys (PKU and PKS) are offered: in the model,
    /// with the XSAVE feature set (PKRU is an XSAVE state component).
    pub fn pku(&self) -> bool {
        self.pku && self.xsave
    }

    /// The model this processor presents: [`crate::cpuid::Model::Max`]
    /// when both its parts are on and XSAVE is offered.
    pub fn model(&self) -> crate::cpuid::Model {
        if self.avx() && self.crypto && self.pku() {
            crate::cpuid::Model::Max
        } else {
            crate::cpuid::Model::V2
        }
    }

    /// Whether AES-NI and PCLMULQDQ are in the model (see [`Cpu::set_model`]).
    pub fn crypto(&self) -> bool {
        self.crypto
    }

    /// Whether the AVX part of the model is on (see [`Cpu::set_avx`]).
    pub fn avx(&self) -> bool {
        self.avx && self.xsave
    }

    /// The XCR0 bits this processor supports.
    pub fn xcr0_supported(&self) -> u64 {
        let base = if self.avx() { crate::ops::xsave::SUPPORTED_AVX } else { crate::ops::xsave::SUPPORTED };
        if self.pku() {
            base | crate::ops::xsave::PKRU
        } else {
            base
        }
    }

    /// Place this processor in a machine of `topology`: it is the one
    /// numbered `cpu_index` (0 is the bootstrap processor; see
    /// [`Topology::apic_id`]). CPUID then reports its APIC ID and the
    /// topology (leaves 1, 4, 0Bh, 8000_0001h and 8000_0008h). The default
    /// is the only processor of a one-CPU machine.
    pub fn set_topology(&mut self, topology: Topology, cpu_index: u32) {
        self.topology = topology;
        self.apic_id = topology.apic_id(cpu_index);
    }

    /// The topology CPUID reports (see [`Cpu::set_topology`]).
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// This processor's initial APIC ID, as CPUID reports it.
    pub fn apic_id(&self) -> u32 {
        self.apic_id
    }

    /// CPUID as this processor answers it: the model of [`crate::cpuid`]
    /// placed in its topology, with AES-NI/PCLMULQDQ and AVX when they are
    /// on, less XSAVE (and so AVX) when it is hidden.
    pub fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
        let r = crate::cpuid::cpuid(&self.state, leaf, sub);
        let mut r = crate::cpuid::with_topology(&self.topology, self.apic_id, leaf, sub, r);
        if self.crypto {
            r = crate::cpuid::with_crypto(leaf, r);
        }
        if !self.xsave {
            return crate::cpuid::without_xsave(leaf, r);
        }
        let r = if self.avx { crate::cpuid::with_avx(&self.state, leaf, sub, r) } else { r };
        if self.pku {
            crate::cpuid::with_pku(&self.state, leaf, sub, r)
        } else {
            r
        }
    }

    /// Log interrupts, decoded code or resets as QEMU's `-d` does
    /// ([`crate::GuestLog`]); `None` stops.
    pub fn set_guest_log(&mut self, log: Option<Arc<crate::guestlog::GuestLog>>) {
        self.guest_log = log;
    }

    /// Install the hooks of an engine sharing the guest (see
    /// [`crate::hooks`]); `None` removes them.
    pub fn set_hooks(&mut self, hooks: Option<Box<dyn ExecHooks>>) {
        self.keep_user_pages = hooks.as_ref().is_some_and(|h| h.keeps_user_pages());
        self.hooks = hooks;
    }

    /// The installed hooks, for their owner to read (downcast through
    /// [`ExecHooks::as_any`]).
    pub fn hooks(&self) -> Option<&(dyn ExecHooks + 'static)> {
        self.hooks.as_deref()
    }

    /// The installed hooks, for their owner to reach (downcast through
    /// [`ExecHooks::as_any_mut`]).
    pub fn hooks_mut(&mut self) -> Option<&mut (dyn ExecHooks + 'static)> {
        self.hooks.as_deref_mut()
    }

    /// Guest memory.
    #[inline]
    pub fn mem(&self) -> &Arc<GuestMemory> {
        self.mmu.mem()
    }

    /// This processor's queue of code-page changes (registered on guest
    /// memory by [`Cpu::new`]). Its flag is what translated code may test
    /// ([`CodeWatch::flag`]); the CPU itself drains it.
    pub fn code_watch(&self) -> &Arc<CodeWatch> {
        &self.code_watch
    }

    /// Whether guest memory told this processor of code-page changes it has
    /// not taken yet ([`Cpu::sync_code`] takes them).
    #[inline]
    pub fn code_changes_pending(&self) -> bool {
        self.code_watch.pending()
    }

    /// The paging context in force (from CR0, CR3, CR4 and EFER), for
    /// walking the guest's page tables outside an instruction.
    pub fn paging(&self) -> PagingCtx {
        self.paging
    }

    /// Recompute the paging context after CR0, CR3, CR4 or EFER change.
    pub(crate) fn update_paging(&mut self) {
        self.paging = paging_of(&self.state);
    }

    /// The privilege of explicit data accesses at the current CPL.
    #[inline]
    pub(crate) fn privilege(&self) -> Privilege {
        if self.state.cpl == 3 {
            Privilege::User
        } else if self.state.rflags & flags::AC != 0 && self.paging.smap {
            Privilege::SupervisorAc
        } else {
            Privilege::Supervisor
        }
    }

    /// Take the state back from an engine that ran user code under the same
    /// paging (CR0, CR3, CR4, EFER and the protection-key rights unchanged): user code cannot change
    /// page-table entries other than their accessed and dirty bits, so the
    /// soft TLB stays. Any other change of paging flushes it.
    pub fn resume_state(&mut self, s: CpuState) {
        let o = &self.state;
        let same = (o.cr0, o.cr3, o.cr4, o.efer, o.pkru, o.pkrs) == (s.cr0, s.cr3, s.cr4, s.efer, s.pkru, s.pkrs);
        if same {
            self.state = s;
        } else {
            self.set_state(s);
        }
    }

    /// Load a segment register in real or virtual-8086 style (base = selector * 16).
    pub(crate) fn load_real_segment(&mut self, seg: usize, selector: u16) {
        let s = &mut self.state.seg[seg];
        s.selector = selector;
        s.base = u64::from(selector) << 4;
        if self.state.rflags & flags::VM != 0 {
            *s = Segment::real(
                selector,
                seg_attr::P | seg_attr::S | seg_attr::TYPE_RW | seg_attr::TYPE_ACCESSED | (3 << seg_attr::DPL_SHIFT),
            );
            if seg == sreg::CS {
                s.attr |= seg_attr::TYPE_CODE;
            }
        }
    }

    /// Whether a `Code` has a handler (for coverage reports).
    pub fn implemented(code: Code) -> bool {
        ops::implemented(code)
    }
}

/// The paging context of `s` (from its CR0, CR3, CR4 and EFER), for
/// walking its page tables, as a debugger does, outside any [`Cpu`].
pub fn paging_of(s: &CpuState) -> PagingCtx {
    let mode = if s.cr0 & cr::CR0_PG == 0 {
        PagingMode::Off
    } else if s.efer & cr::EFER_LMA != 0 {
        if s.cr4 & cr::CR4_LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    } else if s.cr4 & cr::CR4_PAE != 0 {
        PagingMode::Pae
    } else {
        PagingMode::Legacy { pse: s.cr4 & cr::CR4_PSE != 0 }
    };
    PagingCtx {
        mode,
        cr3: s.cr3,
        wp: s.cr0 & cr::CR0_WP != 0,
        nxe: s.efer & cr::EFER_NXE != 0,
        smep: s.cr4 & cr::CR4_SMEP != 0,
        smap: s.cr4 & cr::CR4_SMAP != 0,
        keys: mmu::ProtectionKeys {
            pke: s.cr4 & cr::CR4_PKE != 0,
            pks: s.cr4 & cr::CR4_PKS != 0,
            pkru: s.pkru,
            pkrs: s.pkrs,
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    #[test]
    fn resuming_keeps_the_tlb_only_under_the_same_paging() {
        let mut c = long_mode();
        let s = c.state;
        let flushes = c.mmu.flushes;
        c.resume_state(s);
        assert_eq!(c.mmu.flushes, flushes);
        let mut other = s;
        other.cr4 |= crate::state::cr::CR4_PGE;
        c.resume_state(other);
        assert_eq!(c.mmu.flushes, flushes + 1);
        assert_eq!(c.state.cr4, other.cr4);
    }

    /// A pending NMI is part of the state: a CPU given the state delivers it.
    #[test]
    fn a_pending_nmi_travels_with_the_state() {
        let mut a = long_mode();
        a.inject_nmi();
        assert!(a.state.events.nmi_pending);
        let mut b = long_mode();
        b.set_state(a.state);
        assert!(b.nmi_pending());
        b.state.halted = 1;
        b.run(1);
        assert!(!b.nmi_pending());
        assert_eq!(b.stats.interrupts, 1);
        assert!((stub(2)..stub(3)).contains(&b.state.rip), "in the NMI handler");
    }
}
