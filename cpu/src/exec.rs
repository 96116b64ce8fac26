//! Execution: the run loop, single steps, one instruction through its
//! handler, and split execution's yield at user mode.
//!
//! The loop is shaped as QEMU's `cpu_exec`: exceptions and interrupts are
//! delivered in the outer loop, and the inner loop finds (or decodes) the block
//! at RIP and runs its instructions, each through its handler. A handler sees
//! RIP already advanced to the next instruction; a fault rewinds it, so faults
//! are precise.

use iced_x86::Instruction;

use crate::cache::{Block, Decoded};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::hooks::HookCtx;
use crate::ops;
use crate::platform::StopReason;
use crate::state::{flags, sreg};

/// What [`Cpu::exec_decoded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executed {
    /// The instruction completed; RIP is at the next one.
    Done,
    /// The instruction completed but code after it may decode or run
    /// differently (a mode switch, a CS load, a CR or EFER write, a store
    /// into a code page) or the platform asked to stop: the caller leaves
    /// its block and looks up the code at RIP again.
    BlockEnd,
    /// It raised an exception, already delivered (RIP is at the handler),
    /// or the processor shut down.
    Raised,
}

/// What a debugger attached to the machine (the gdb stub) stops a CPU
/// for: [`Cpu::run`] then runs one instruction at a time and returns
/// [`StopReason::Debug`] before the instruction at a breakpoint, or after
/// one instruction when stepping. The guest sees none of it: its own debug
/// registers and trap flag work as before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugStops {
    /// Linear addresses (CS base plus RIP) the CPU stops before.
    pub breakpoints: Vec<u64>,
    /// Stop after one instruction (no interrupt is taken before it unless
    /// the CPU is halted, as QEMU steps).
    pub step: bool,
    /// Data watchpoints: the CPU stops after an instruction that accessed
    /// one of them.
    pub watchpoints: Vec<Watchpoint>,
}

/// A debugger's data watchpoint: `len` bytes at linear `addr`, watched for
/// reads, writes or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchpoint {
    pub addr: u64,
    pub len: u64,
    pub read: bool,
    pub write: bool,
}

/// The watchpoint an instruction hit ([`Cpu::take_watch_hit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchHit {
    /// The watchpoint's address.
    pub addr: u64,
    /// The access that hit it was a write.
    pub write: bool,
}

impl Cpu {
    /// Arm (or, with `None`, disarm) a debugger's stops. The instruction
    /// at the current RIP runs even when a breakpoint is there: a resume
    /// from a breakpoint goes past it.
    pub fn set_debug_stops(&mut self, stops: Option<DebugStops>) {
        self.debug_resume = stops.as_ref().map(|_| self.state.seg[sreg::CS].base.wrapping_add(self.state.rip));
        self.sys.watching = stops.as_ref().is_some_and(|d| !d.watchpoints.is_empty());
        self.sys.watch_hit = None;
        self.debug_stops = stops;
    }

    /// The watchpoint the last instruction hit, when [`Cpu::run`] returned
    /// [`StopReason::Debug`] for one.
    pub fn take_watch_hit(&mut self) -> Option<WatchHit> {
        self.sys.watch_hit.take()
    }

    /// A data access of `n` bytes at `lin` against the debugger's watchpoints.
    #[cold]
    pub(crate) fn watch_access(&mut self, lin: u64, n: u64, write: bool) {
        let Some(d) = &self.debug_stops else { return };
        let end = lin.wrapping_add(n);
        for w in &d.watchpoints {
            let kind = if write { w.write } else { w.read };
            if kind && lin < w.addr.wrapping_add(w.len) && w.addr < end && self.sys.watch_hit.is_none() {
                self.sys.watch_hit = Some(WatchHit { addr: w.addr, write });
            }
        }
    }

    /// Whether a debugger's stops are armed ([`Cpu::set_debug_stops`]).
    pub fn debugged(&self) -> bool {
        self.debug_stops.is_some()
    }

    /// What an instruction boundary takes: a pending NMI, then an external
    /// interrupt in the interrupt window (IF set and no shadow). `true`
    /// when one was delivered: the loop looks again.
    #[inline(always)]
    fn take_boundary_events(&mut self) -> bool {
        if self.state.events.nmi_pending && self.poll_nmi() {
            return true;
        }
        if self.state.interrupt_shadow == 0 && self.state.rflags & flags::IF != 0 && self.platform.interrupt_pending() {
            if let Some(vector) = self.platform.ack_interrupt() {
                self.state.halted = 0;
                self.stats.interrupts += 1;
                self.deliver_external(vector);
                return true;
            }
        }
        false
    }

    /// Why the run loop must return before the next instruction: a triple
    /// fault, or the platform asked to stop (the request is taken).
    #[inline(always)]
    fn stop_asked(&mut self) -> Option<StopReason> {
        if let Some(why) = self.shutdown.take() {
            return Some(StopReason::Shutdown(why));
        }
        if self.stop {
            self.stop = false;
            return Some(StopReason::Requested);
        }
        None
    }

    /// Executes the one instruction at RIP (decoded, or from the decode
    /// cache); a fetch fault is raised and delivered instead.
    fn exec_at_rip(&mut self) {
        match self.block_at_rip() {
            Ok(block) => {
                if self.exec_one(&block.insns()[0]) {
                    self.stats.instructions += 1;
                }
            }
            Err(e) => {
                self.insn_start = self.state.rip;
                self.raise_fetch_fault(e);
            }
        }
    }

    /// [`Cpu::run`] under a debugger's stops: one instruction at a time.
    fn run_debugged(&mut self, budget: u64) -> StopReason {
        let start = self.stats.instructions;
        let step = self.debug_stops.as_ref().is_some_and(|d| d.step);
        let mut ran = false;
        while self.stats.instructions - start < budget {
            if let Some(why) = self.stop_asked() {
                return why;
            }
            if ran && step {
                return StopReason::Debug;
            }
            let quiet = step && self.state.halted == 0;
            if !quiet && self.take_boundary_events() {
                continue;
            }
            if self.state.halted != 0 {
                return StopReason::Halted;
            }
            let at = self.state.seg[sreg::CS].base.wrapping_add(self.state.rip);
            let resume = self.debug_resume.take();
            if resume != Some(at) && self.debug_stops.as_ref().is_some_and(|d| d.breakpoints.contains(&at)) {
                return StopReason::Debug;
            }
            self.state.interrupt_shadow = 0;
            self.exec_at_rip();
            ran = true;
            if self.sys.watch_hit.is_some() {
                // Data watchpoints trap after the access's instruction.
                return StopReason::Debug;
            }
        }
        if let Some(why) = self.shutdown.take() {
            return StopReason::Shutdown(why);
        }
        if ran && step {
            return StopReason::Debug;
        }
        StopReason::Budget
    }

    /// Finish a SYSCALL that another engine began: the state is the one
    /// right after the instruction (RIP past it, RFLAGS as they were), and
    /// this performs the instruction's whole transition to the kernel
    /// (RCX, R11, CS, SS, RFLAGS, RIP, CPL), as executing it would.
    pub fn enter_syscall(&mut self) -> Fault<()> {
        crate::ops::system::syscall_entry(self)
    }

    // ---- execution -----------------------------------------------------------

    /// Run at most `budget` instructions.
    pub fn run(&mut self, budget: u64) -> StopReason {
        self.stop = false;
        if self.debug_stops.is_some() {
            return self.run_debugged(budget);
        }
        let start = self.stats.instructions;
        while self.stats.instructions - start < budget {
            if let Some(why) = self.stop_asked() {
                return why;
            }
            if self.take_boundary_events() {
                continue;
            }
            if self.state.halted != 0 {
                return StopReason::Halted;
            }
            if let Some(h) = &mut self.hooks {
                let at = HookCtx { instructions: self.stats.instructions, address_space: self.state.cr3 & !0xfff };
                if self.state.cpl == 3 {
                    if h.before_user_block(at) {
                        return StopReason::UserMode;
                    }
                } else {
                    h.before_kernel_block(at);
                }
            }
            // Under an STI or MOV SS shadow only the next instruction runs
            // before the interrupt window is looked at again.
            let shadow = std::mem::take(&mut self.state.interrupt_shadow) != 0;
            match self.block_at_rip() {
                Ok(block) if shadow => {
                    if self.exec_one(&block.insns()[0]) {
                        self.stats.instructions += 1;
                    }
                }
                Ok(block) => {
                    if self.hot_threshold != 0 {
                        let heat = block.heat();
                        if heat == 0 {
                            return StopReason::Hot;
                        }
                        block.set_heat(heat - 1);
                    }
                    // The block that followed this one last time is likely
                    // next again: its lines arrive while this one runs.
                    if let Some(c) = &*block.next.borrow() {
                        Block::prefetch(c.block.as_ptr());
                    }
                    self.run_block(&block);
                    self.prev_block = Some(block);
                }
                Err(e) => {
                    self.insn_start = self.state.rip;
                    self.raise_fetch_fault(e);
                }
            }
        }
        if let Some(why) = self.shutdown.take() {
            return StopReason::Shutdown(why);
        }
        StopReason::Budget
    }

    /// Execute one instruction at RIP (the JIT's and the KVM fallback's entry).
    pub fn step(&mut self) -> StopReason {
        self.stop = false;
        self.exec_at_rip();
        if let Some(why) = self.shutdown.take() {
            StopReason::Shutdown(why)
        } else if self.stop {
            StopReason::Requested
        } else if self.state.halted != 0 {
            StopReason::Halted
        } else {
            StopReason::Budget
        }
    }

    /// Execute one decoded instruction at RIP, as the interpreter does in a
    /// block (another tier's entry for what it does not translate): `d`
    /// comes from [`Cpu::block_at_rip`] or [`Decoded::new`] and must be the
    /// instruction at the current RIP. Debug traps, faults and their
    /// delivery happen as in [`Cpu::run`]; pending interrupts are not
    /// looked at (that is the caller's loop's part). Counts the instruction
    /// in [`CpuStats::instructions`](crate::CpuStats) when it completed.
    pub fn exec_decoded(&mut self, d: &Decoded) -> Executed {
        self.block_break = false;
        if !self.exec_one(d) {
            return Executed::Raised;
        }
        self.stats.instructions += 1;
        if self.block_break {
            Executed::BlockEnd
        } else {
            Executed::Done
        }
    }

    /// Execute one decoded instruction; `false` if it raised an exception
    /// (already delivered). Traps count as executed.
    #[inline(always)]
    pub(crate) fn exec_one(&mut self, d: &Decoded) -> bool {
        if (self.state.rflags & (flags::TF | flags::RF)) | (self.state.dr[7] & 0xff) | self.state.events.deferred_debug
            != 0
        {
            return self.exec_one_debug(d);
        }
        self.insn_start = self.state.rip;
        self.state.rip = d.next_rip();
        match (d.handler)(self, &d.insn) {
            Ok(()) => true,
            Err(e) => {
                if e.is_trap() {
                    self.stats.instructions += 1;
                } else {
                    self.state.rip = self.insn_start;
                }
                self.raise(e);
                false
            }
        }
    }

    fn run_block(&mut self, block: &Block) {
        self.block_break = false;
        let mut done = 0u64;
        for d in block.insns() {
            if !self.exec_one(d) {
                break;
            }
            done += 1;
            if self.block_break {
                break;
            }
        }
        self.stats.instructions += done;
    }

    /// Log an instruction the interpreter does not implement (once per mnemonic)
    /// and raise #UD.
    pub(crate) fn unimplemented(&mut self, insn: &Instruction) -> Fault<()> {
        ops::log_unimplemented(insn);
        Err(Exception::InvalidOpcode)
    }

    /// The mnemonic of the instruction at RIP, decoded but not executed (for
    /// statistics and diagnostics); `None` if it cannot be fetched.
    pub fn mnemonic_at_rip(&mut self) -> Option<String> {
        let block = self.block_at_rip().ok()?;
        let d = block.insns().first()?;
        Some(format!("{:?}", d.insn.mnemonic()).to_lowercase())
    }

    /// The current Code being executed at `insn_start` (for diagnostics).
    pub fn describe_rip(&self) -> String {
        let s = &self.state;
        format!("{:04x}:{:016x} (cpl {}, {}-bit)", s.seg[sreg::CS].selector, s.rip, s.cpl, s.code_bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;
    use iced_x86::code_asm::*;

    /// A loop calls a function on another page and, halfway, rewrites the
    /// function's immediate: the calling block remembers the old function,
    /// but every later call runs the new code.
    #[test]
    fn rewritten_code_is_not_reached_through_a_remembered_block() {
        let mut c = long_mode();
        let f = (c.state.rip & !0xfff) + 0x1000;
        let code = assemble(&c, |a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            a.mov(ecx, 6)?;
            a.xor(ebx, ebx)?;
            a.set_label(&mut top)?;
            a.call(f)?;
            a.cmp(ecx, 4)?;
            a.jne(skip)?;
            a.mov(rdx, f + 1)?;
            a.mov(byte_ptr(rdx), 5)?;
            a.set_label(&mut skip)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        place(&mut c, &code);
        // f: mov eax, 1; add ebx, eax; ret
        c.mem().write(f, &[0xb8, 1, 0, 0, 0, 0x01, 0xc3, 0xc3]).unwrap();
        let mut runs = 0;
        while c.run(1000) != StopReason::Halted {
            runs += 1;
            assert!(runs < 100, "the loop did not end");
        }
        assert_eq!(c.state.gpr[3], 3 + 3 * 5);
        assert_eq!(c.stats.exceptions, 0);
    }

    /// A block that loops on itself remembers itself; when a device rewrites
    /// it (DMA: no CPU write follows to notice), the block the CPU still
    /// holds is dead and not run again.
    #[test]
    fn a_block_rewritten_under_its_own_loop_is_decoded_again() {
        let mut c = long_mode();
        let top = c.state.rip;
        let code = assemble(&c, |a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.add(ebx, 1)?;
            a.dec(ecx)?;
            a.jnz(l)?;
            a.hlt()
        });
        place(&mut c, &code);
        assert_eq!(code[..3], [0x83, 0xc3, 0x01]);
        c.state.gpr[1] = 1000;
        assert_eq!(c.run(10), StopReason::Budget);
        let done = 1000 - c.state.gpr[1];
        assert!(done > 1 && c.state.rip == top);
        // add ebx, 16
        c.mem().write(top + 2, &[0x10]).unwrap();
        assert_eq!(c.run(1_000_000), StopReason::Halted);
        assert_eq!(c.state.gpr[3], done + (1000 - done) * 16);
    }
}

#[cfg(test)]
mod hook_tests {
    use super::*;
    use crate::hooks::{ExecHooks, FxEvent, HookCtx};
    use crate::ops::testutil::*;
    use iced_x86::code_asm::*;
    use mmu::GuestMemory;
    use std::any::Any;

    /// Hooks that yield user code after `budget` instructions and record
    /// what they were told.
    #[derive(Default)]
    struct Probe {
        budget: u64,
        since: Option<u64>,
        ud: bool,
        kernel_blocks: u64,
        fx: Vec<FxEvent>,
    }

    impl ExecHooks for Probe {
        fn before_user_block(&mut self, at: HookCtx) -> bool {
            let since = *self.since.get_or_insert(at.instructions);
            if std::mem::take(&mut self.ud) || at.instructions - since >= self.budget {
                self.since = None;
                return true;
            }
            false
        }
        fn before_kernel_block(&mut self, _at: HookCtx) {
            self.kernel_blocks += 1;
        }
        fn user_invalid_opcode(&mut self) -> bool {
            self.ud = true;
            true
        }
        fn fx_event(&mut self, ev: FxEvent) {
            self.fx.push(ev);
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn Any {
            self
        }
    }

    fn probe(c: &mut Cpu) -> &mut Probe {
        c.hooks_mut().unwrap().as_any_mut().downcast_mut().unwrap()
    }

    /// A CPU at CPL 3 in 64-bit mode, with `code` at RIP and a [`Probe`].
    fn user_cpu(code: &[u8], budget: u64) -> Cpu {
        let mut c = long_mode();
        to_user(&mut c, SEL_UCODE64);
        place(&mut c, code);
        c.set_hooks(Some(Box::new(Probe { budget, ..Default::default() })));
        c
    }

    /// `l: inc rax; jmp l`.
    fn spin(c: &Cpu) -> Vec<u8> {
        assemble(c, |a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.inc(rax)?;
            a.jmp(l)
        })
    }

    #[test]
    fn user_code_runs_until_the_hooks_yield() {
        let mut c = long_mode();
        to_user(&mut c, SEL_UCODE64);
        let code = spin(&c);
        let mut c = user_cpu(&code, 0);
        // Budget 0: nothing runs at CPL 3.
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!((c.stats.instructions, c.state.gpr[0]), (0, 0));
        probe(&mut c).budget = 100;
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!((c.stats.instructions, c.state.gpr[0]), (100, 50));
        assert_eq!(probe(&mut c).kernel_blocks, 0);
        // Without hooks user code runs on.
        c.set_hooks(None);
        assert_eq!(c.run(500), StopReason::Budget);
        assert_eq!(c.stats.instructions, 600);
    }

    #[test]
    fn an_invalid_opcode_at_cpl3_goes_to_the_hooks_undelivered() {
        let mut c = long_mode();
        to_user(&mut c, SEL_UCODE64);
        let code = assemble(&c, |a| {
            a.nop()?;
            a.ud2()
        });
        let mut c = user_cpu(&code, 1_000);
        let ud2 = c.state.rip + 1;
        assert_eq!(c.run(1_000_000), StopReason::UserMode);
        assert_eq!(c.state.rip, ud2);
        assert_eq!((c.stats.instructions, c.stats.exceptions), (1, 0));
        assert_eq!(c.state.cpl, 3);
        // Without hooks the #UD is delivered.
        let mut c = user_cpu(&code, 1_000);
        c.set_hooks(None);
        c.step();
        c.step();
        assert_eq!((c.stats.exceptions, c.state.cpl), (1, 0));
        assert_eq!(c.state.rip, stub(6));
    }

    #[test]
    fn kernel_blocks_and_fxsave_at_cpl0_reach_the_hooks() {
        let mut c = long_mode();
        c.state.cr4 |= crate::state::cr::CR4_OSFXSR;
        let code = assemble(&c, |a| {
            a.mov(rdx, DATA)?;
            a.fxsave64(ptr(rdx))?;
            a.fxrstor64(ptr(rdx))?;
            a.hlt()
        });
        place(&mut c, &code);
        c.set_hooks(Some(Box::new(Probe::default())));
        assert_eq!(c.run(100), StopReason::Halted);
        let p = probe(&mut c);
        assert!(p.kernel_blocks >= 1);
        assert_eq!(p.fx, [FxEvent::Save(DATA), FxEvent::Restore(DATA)]);
    }

    #[test]
    fn user_blocks_are_dropped_when_their_bytes_changed_behind_the_tracking() {
        let mut c = long_mode();
        c.set_hooks(Some(Box::new(Probe::default())));
        let kernel = c.state.rip;
        let kcode = assemble(&c, |a| a.nop());
        place(&mut c, &kcode);
        c.block_at_rip().unwrap();
        to_user(&mut c, SEL_UCODE64);
        let user = kernel + 0x1000;
        c.state.rip = user;
        let ucode = spin(&c);
        c.mem().write(user, &ucode).unwrap();
        c.block_at_rip().unwrap();
        assert_eq!(c.cache.blocks.len(), 2);
        assert_eq!(c.cache.user_pages.len(), 1);
        // Unchanged bytes: the block stays.
        c.recheck_user_code();
        let decoded = c.stats.blocks_decoded;
        c.block_at_rip().unwrap();
        assert_eq!(c.stats.blocks_decoded, decoded);
        // Bytes changed by a write the tracking did not see (as another
        // engine's): only the user page's block goes.
        // The same guest memory with one byte of the user page changed.
        let mut bytes = [0u8; 4096];
        c.mem().read(user, &mut bytes).unwrap();
        bytes[0] ^= 0xff;
        let other = GuestMemory::new(1 << 20).unwrap();
        other.write(user, &bytes).unwrap();
        c.cache.recheck_user(&other);
        assert_eq!(c.cache.blocks.len(), 1);
        assert!(c.cache.user_pages.is_empty());
        assert!(c.cache.by_page.contains_key(&(kernel & !0xfff)));
        assert!(!c.cache.by_page.contains_key(&user));
    }
}

#[cfg(test)]
mod debug_tests {
    use iced_x86::code_asm::*;

    use super::{DebugStops, WatchHit, Watchpoint};
    use crate::ops::testutil::*;
    use crate::platform::StopReason;

    /// Four instructions at CODE: two moves, a store to DATA, a jump back;
    /// and the jump's address.
    fn looping() -> (crate::Cpu, u64) {
        let mut c = long_mode();
        let code = assemble(&c, |a| {
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.mov(rax, 1u64)?;
            a.mov(rbx, 2u64)?;
            a.mov(qword_ptr(DATA), rax)?;
            a.jmp(top)
        });
        place(&mut c, &code);
        assert_eq!(code[code.len() - 2], 0xeb, "a short jump back ends it");
        (c, CODE + code.len() as u64 - 2)
    }

    #[test]
    fn a_debugger_stops_before_a_breakpoint_and_a_resume_goes_past_it() {
        let (mut c, _) = looping();
        let second = CODE + 10;
        c.set_debug_stops(Some(DebugStops { breakpoints: vec![second], ..Default::default() }));
        assert_eq!(c.run(1000), StopReason::Debug);
        assert_eq!(c.state.rip, second, "stopped before the instruction");
        assert_eq!(c.state.gpr[3], 0, "it did not run");
        // Resumed from the breakpoint: the loop comes round to it again.
        c.set_debug_stops(Some(DebugStops { breakpoints: vec![second], ..Default::default() }));
        let n = c.stats.instructions;
        assert_eq!(c.run(1000), StopReason::Debug);
        assert_eq!((c.state.rip, c.stats.instructions - n), (second, 4));
        assert_eq!(c.state.gpr[3], 2);
        // Without stops the budget ends the run.
        c.set_debug_stops(None);
        assert_eq!(c.run(1000), StopReason::Budget);
    }

    #[test]
    fn a_step_runs_one_instruction_and_takes_no_interrupt() {
        let (mut c, _, irq) = new_cpu_with_irq();
        long_setup(&mut c);
        let code = assemble(&c, |a| {
            a.mov(rax, 1u64)?;
            a.mov(rbx, 2u64)?;
            a.hlt()
        });
        place(&mut c, &code);
        c.state.rflags |= crate::state::flags::IF;
        *irq.lock().unwrap() = Some(0x40);
        c.set_debug_stops(Some(DebugStops { step: true, ..Default::default() }));
        assert_eq!(c.run(1000), StopReason::Debug);
        assert_eq!((c.state.rip, c.state.gpr[0], c.state.gpr[3]), (CODE + 10, 1, 0));
        assert_eq!(c.stats.interrupts, 0, "no interrupt during a step");
        c.set_debug_stops(None);
        c.run(1);
        assert_eq!(c.stats.interrupts, 1, "taken once the debugger lets go");
    }

    #[test]
    fn a_watchpoint_stops_after_the_access() {
        let (mut c, jump) = looping();
        let w = Watchpoint { addr: DATA + 4, len: 1, read: false, write: true };
        c.set_debug_stops(Some(DebugStops { watchpoints: vec![w], ..Default::default() }));
        assert_eq!(c.run(1000), StopReason::Debug);
        assert_eq!(c.take_watch_hit(), Some(WatchHit { addr: DATA + 4, write: true }));
        assert_eq!(c.state.rip, jump, "after the store");
        assert_eq!(c.mem().read_u64(DATA).unwrap(), 1);
        // A read watchpoint on the same bytes does not see the store.
        let r = Watchpoint { write: false, read: true, ..w };
        c.set_debug_stops(Some(DebugStops { watchpoints: vec![r], ..Default::default() }));
        assert_eq!(c.run(100), StopReason::Budget);
        assert_eq!(c.take_watch_hit(), None);
    }
}
