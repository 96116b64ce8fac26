//! What another execution tier (the JIT) needs of the interpreter's CPU:
//! hot-block counting, blocks at any RIP, memory accesses made on behalf of
//! one instruction, exceptions delivered for it, and the checks that say
//! whether translated code may run now.
//!
//! The tier runs the instructions it translates itself, on this CPU's
//! `state`, and everything else through [`Cpu::exec_decoded`]. The
//! interpreter's run loop stays the place where events and interrupts are
//! taken: with a hot threshold set, it stops before a block that is hot or
//! that the tier runs ([`StopReason::Hot`](crate::StopReason::Hot)).

use std::rc::Rc;

use mmu::{Access, Privilege};

use crate::cache::Block;
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::state::{flags, sreg};

impl Cpu {
    /// Tell the hooks a block at CPL 0 to 2 starts, as the run loop does
    /// before each block it runs (another tier runs this one).
    pub fn note_kernel_block(&mut self) {
        if self.state.cpl == 3 {
            return;
        }
        if let Some(h) = &mut self.hooks {
            let at = crate::HookCtx { instructions: self.stats.instructions, address_space: self.state.cr3 & !0xfff };
            h.before_kernel_block(at);
        }
    }

    /// Count runs of each block decoded from now on, and stop the run loop
    /// before a block that ran `runs` times ([`Block::heat`]); 0 turns the
    /// counting off. Blocks already decoded are dropped, so that every block
    /// counts.
    pub fn set_hot_threshold(&mut self, runs: u32) {
        self.hot_threshold = runs;
        self.cache = Default::default();
        self.prev_block = None;
    }

    /// The block at `rip` in the current mode (CS, CPL and paging), decoded
    /// and cached on a miss, as [`Cpu::block_at_rip`] finds it. A fetch
    /// fault is returned, not delivered.
    pub fn block_at(&mut self, rip: u64) -> Fault<Rc<Block>> {
        let saved = self.state.rip;
        self.state.rip = rip;
        let prev = self.prev_block.take();
        let b = self.block_at_rip();
        self.prev_block = prev;
        self.state.rip = saved;
        b
    }

    /// The guest physical address of code at `rip`, if the TLB holds its
    /// page for execution at the current privilege (no page walk).
    #[inline]
    pub fn code_phys(&self, rip: u64) -> Option<u64> {
        let lin = if self.state.code64() { rip } else { self.state.seg[sreg::CS].base.wrapping_add(rip) & 0xffff_ffff };
        let p = if self.state.cpl == 3 { Privilege::User } else { Privilege::Supervisor };
        self.mmu.lookup(p, lin, Access::Execute)
    }

    /// The guest physical address of code at `rip`, walking the page
    /// tables on a TLB miss; `None` if the fetch would fault.
    pub fn code_phys_walk(&mut self, rip: u64) -> Option<u64> {
        if let Some(p) = self.code_phys(rip) {
            return Some(p);
        }
        let lin = if self.state.code64() { rip } else { self.state.seg[sreg::CS].base.wrapping_add(rip) & 0xffff_ffff };
        let p = if self.state.cpl == 3 { Privilege::User } else { Privilege::Supervisor };
        self.translate(lin, Access::Execute, p).ok()
    }

    /// The privilege of explicit data accesses now (the soft-TLB set they
    /// use): user at CPL 3, supervisor, or supervisor with EFLAGS.AC under
    /// SMAP.
    #[inline]
    pub fn data_privilege(&self) -> Privilege {
        self.privilege()
    }

    /// Begin a memory access on behalf of the instruction at `rip` that
    /// another tier runs: later [`Cpu::end_access`] tells whether the access
    /// asked the caller to leave its code (it wrote a code page, or the
    /// platform asked to stop).
    #[inline]
    pub fn begin_access(&mut self, rip: u64) {
        self.insn_start = rip;
        self.block_break = false;
    }

    /// After [`Cpu::begin_access`] and the access: whether code after the
    /// instruction may have changed or the platform asked to stop.
    #[inline]
    pub fn end_access(&mut self) -> bool {
        std::mem::take(&mut self.block_break)
    }

    /// Deliver `e`, raised by the instruction at `rip` (a fault: the state
    /// is the one before the instruction), as the interpreter delivers it.
    pub fn raise_at(&mut self, e: Exception, rip: u64) {
        self.insn_start = rip;
        self.state.rip = rip;
        self.raise(e);
    }

    /// Whether the run loop must look at this boundary before more
    /// translated code runs: a shutdown or stop, HLT, an interrupt shadow,
    /// a deliverable NMI, an interrupt the CPU would take now, or hooks of
    /// an engine sharing the guest.
    pub fn needs_boundary(&mut self) -> bool {
        let s = &self.state;
        if self.shutdown.is_some()
            || self.stop
            || s.halted != 0
            || s.interrupt_shadow != 0
            || (s.events.nmi_pending && s.nmi_blocked == 0)
            || self.hooks.is_some()
        {
            return true;
        }
        s.rflags & flags::IF != 0 && self.platform.interrupt_pending()
    }

    /// Whether the platform asked to stop since the last run; clears it.
    pub fn take_stop(&mut self) -> bool {
        std::mem::take(&mut self.stop)
    }

    /// Take the code-page changes since the last look (see
    /// [`Cpu::code_changes_pending`]): drop decoded code of pages written
    /// by devices or other processors, telling the invalidation listeners.
    pub fn sync_code(&mut self) {
        if self.code_watch.pending() {
            self.drain_invalidations();
            self.block_break = false;
        }
    }

    /// [`Cpu::sync_code`] for a vCPU that does not run again before it is
    /// back in its run loop (halted, stopped): while dirty logging is on,
    /// or always when it is `stopped` (it waits for a resume, and a
    /// logging may begin meanwhile), it also drops every soft-TLB entry
    /// through which translated code stores, so that the write syncs of a
    /// live migration's rounds need nothing more from it until it runs
    /// (its pages are then not sent again each round for want of an
    /// answer). It drops them too when some let translated code store into
    /// the VRAM, for the display adapter's write syncs ([`mmu::vram`]).
    pub fn sync_code_parked(&mut self, stopped: bool) {
        self.sync_code();
        if stopped || self.mem().dirty_logging() || self.mmu.holds_vram_fast_writes() {
            self.mmu.drop_fast_writes();
            self.code_watch.fast_writes_dropped();
        }
    }
}
