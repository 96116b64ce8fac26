//! Split execution's policy for the interpreter: when the kernel's
//! interpreter hands user code to KVM, and the FXSAVE/FXRSTOR log the
//! hand-over replays.
//!
//! [`SplitPolicy`] implements [`cpu::ExecHooks`] and is installed in the
//! interpreter with `Cpu::set_hooks`; the split engine reaches it again
//! through `Cpu::hooks_mut` and a downcast ([`SplitPolicy::of`]), so no
//! lock is taken on the run loop's path.
//!
//! The rule: at CPL 3 the interpreter runs user code itself for up to
//! [`SplitPolicy::user_budget`] instructions (code that enters the kernel
//! again within it never costs a hand-over), then yields. An address space
//! that ran out of budget is compute-bound: it yields at once on reaching
//! CPL 3 until a short stint in KVM ([`SplitPolicy::user_stint`]) or
//! [`EAGER_RETRY`] yields have passed. A #UD at CPL 3 yields undelivered
//! (KVM runs user code with the host's features). Until the engine knows
//! the kernel's code ([`SplitPolicy::find_kernel_at`]), user code stays in
//! the interpreter, but for a yield now and then for the engine to look
//! for it.

use std::any::Any;
use std::collections::HashMap;

use cpu::{Cpu, ExecHooks, FxEvent, HookCtx};

/// Yields at once of an address space marked compute-bound before its user
/// code runs in the interpreter again, up to the budget: a wrong mark costs
/// at most this many hand-overs, a right one one budget's worth of
/// instructions per this many.
pub const EAGER_RETRY: u32 = 64;

/// Compute-bound address spaces remembered at most.
const MAX_EAGER: usize = 4096;

/// Counters of the policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct SplitPolicyStats {
    /// User instructions that raised #UD in the interpreter and were handed
    /// to the engine that runs user code instead.
    pub user_ud_yields: u64,
    /// Instructions the interpreter ran at CPL 3.
    pub user_instructions: u64,
}

/// When the interpreter yields user code to the other engine.
#[derive(Debug, Default)]
pub struct SplitPolicy {
    /// User instructions the interpreter runs itself before yielding (0:
    /// yield on reaching CPL 3).
    pub user_budget: u64,
    /// The instruction count when the CPU was first seen at CPL 3 since it
    /// last ran at CPL 0.
    user_since: Option<u64>,
    /// Address spaces whose last user stretch ran out of the budget, with
    /// the count of yields since.
    user_eager: HashMap<u64, u32>,
    /// A #UD at CPL 3 was left undelivered: the next user block yields.
    user_ud: bool,
    /// While the kernel's code is not known to the engine (it did not load
    /// the kernel): user code stays here, #UD included, except that the
    /// first user block at or past this instruction count yields, for the
    /// engine to look for the kernel's code. `None`: it is known.
    pub find_kernel_at: Option<u64>,
    /// Each FXSAVE and FXRSTOR at CPL 0 (the kernel switching tasks'
    /// state) since the log was last taken, in order, with its operand's
    /// linear address.
    pub fx_log: Vec<FxEvent>,
    pub stats: SplitPolicyStats,
}

impl SplitPolicy {
    pub fn new(user_budget: u64) -> Self {
        SplitPolicy { user_budget, ..Default::default() }
    }

    /// The policy installed in `cpu`, if any.
    pub fn of(cpu: &mut Cpu) -> Option<&mut SplitPolicy> {
        cpu.hooks_mut()?.as_any_mut().downcast_mut()
    }

    /// The policy installed in `cpu`, if any, to read.
    pub fn of_ref(cpu: &Cpu) -> Option<&SplitPolicy> {
        cpu.hooks()?.as_any().downcast_ref()
    }

    /// The other engine ran user code of `address_space` and gave it back
    /// after a stint that ended in the kernel; `short`: one the interpreter
    /// could have run without a hand-over (a system call or a fault soon
    /// after): the address space's user code runs in the interpreter first
    /// again.
    pub fn user_stint(&mut self, address_space: u64, short: bool) {
        if short && !self.user_eager.is_empty() {
            self.user_eager.remove(&address_space);
        }
    }
}

impl ExecHooks for SplitPolicy {
    fn before_user_block(&mut self, at: HookCtx) -> bool {
        if let Some(n) = self.find_kernel_at {
            return at.instructions >= n;
        }
        let since = match self.user_since {
            Some(s) => s,
            None => {
                if let Some(n) = self.user_eager.get_mut(&at.address_space) {
                    *n += 1;
                    if *n < EAGER_RETRY {
                        return true;
                    }
                    // Try the interpreter again: the code may have become a
                    // loop of short system calls, which a stint elsewhere
                    // cannot always show (where a hand-over alone takes
                    // longer than a short stint).
                    self.user_eager.remove(&at.address_space);
                }
                *self.user_since.insert(at.instructions)
            }
        };
        let ran = at.instructions - since;
        let ud = std::mem::take(&mut self.user_ud);
        if !ud && ran < self.user_budget {
            return false;
        }
        self.user_since = None;
        self.stats.user_instructions += ran;
        // Out of budget: compute-bound code, which yields at once from now on.
        if !ud && self.user_budget > 0 {
            if self.user_eager.len() >= MAX_EAGER {
                self.user_eager.clear();
            }
            self.user_eager.insert(at.address_space, 0);
        }
        true
    }

    fn before_kernel_block(&mut self, at: HookCtx) {
        if let Some(since) = self.user_since.take() {
            self.stats.user_instructions += at.instructions - since;
            self.user_ud = false;
        }
    }

    fn user_invalid_opcode(&mut self) -> bool {
        if self.find_kernel_at.is_some() {
            // Nothing else can run it yet: the kernel gets the #UD.
            return false;
        }
        self.user_ud = true;
        self.stats.user_ud_yields += 1;
        true
    }

    fn fx_event(&mut self, ev: FxEvent) {
        self.fx_log.push(ev);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACE: u64 = 0x1000;

    /// A CPU spinning at CPL 3: runs blocks of 2 instructions while the
    /// policy lets it, from instruction count `n`; the count when it yields.
    fn spin(p: &mut SplitPolicy, n: &mut u64, space: u64) {
        while !p.before_user_block(HookCtx { instructions: *n, address_space: space }) {
            *n += 2;
            assert!(*n < 10_000_000, "never yielded");
        }
    }

    #[test]
    fn user_code_runs_here_until_the_budget_is_spent() {
        let mut p = SplitPolicy::new(0);
        let mut n = 0;
        // Budget 0: nothing runs at CPL 3.
        spin(&mut p, &mut n, SPACE);
        assert_eq!(n, 0);
        p.user_budget = 100;
        spin(&mut p, &mut n, SPACE);
        assert_eq!((n, p.stats.user_instructions), (100, 100));
        // The address space ran out of budget: it yields at once now,
        // after a long stint elsewhere too...
        spin(&mut p, &mut n, SPACE);
        assert_eq!(n, 100);
        p.user_stint(SPACE, false);
        spin(&mut p, &mut n, SPACE);
        assert_eq!(n, 100);
        // ...until a short stint elsewhere ended in the kernel.
        p.user_stint(SPACE, true);
        spin(&mut p, &mut n, SPACE);
        assert_eq!(n, 200);
        // Another address space is not affected.
        p.user_stint(SPACE, true);
        p.user_budget = 1_000_000;
        assert!(!p.before_user_block(HookCtx { instructions: n, address_space: SPACE + 0x1000 }));
    }

    #[test]
    fn a_compute_bound_mark_is_retried_after_a_number_of_yields() {
        let mut p = SplitPolicy::new(100);
        let mut n = 0;
        spin(&mut p, &mut n, SPACE);
        assert_eq!(n, 100);
        for _ in 1..EAGER_RETRY {
            spin(&mut p, &mut n, SPACE);
        }
        assert_eq!(n, 100, "marked: yields at once");
        // The next time it runs here again, up to the budget, and is
        // marked again.
        spin(&mut p, &mut n, SPACE);
        assert_eq!(n, 200);
        spin(&mut p, &mut n, SPACE);
        assert_eq!(n, 200);
    }

    #[test]
    fn an_invalid_opcode_yields_without_marking_the_address_space() {
        let mut p = SplitPolicy::new(1000);
        assert!(!p.before_user_block(HookCtx { instructions: 0, address_space: SPACE }));
        assert!(p.user_invalid_opcode());
        assert!(p.before_user_block(HookCtx { instructions: 1, address_space: SPACE }));
        assert_eq!((p.stats.user_ud_yields, p.stats.user_instructions), (1, 1));
        // Not compute-bound: back at CPL 3 it runs here again.
        assert!(!p.before_user_block(HookCtx { instructions: 1, address_space: SPACE }));
        // Back in the kernel: the user stretch is counted and ends.
        p.before_kernel_block(HookCtx { instructions: 11, address_space: SPACE });
        assert_eq!(p.stats.user_instructions, 11);
    }

    #[test]
    fn until_the_kernel_is_found_user_code_yields_only_to_look_for_it() {
        let mut p = SplitPolicy::new(0);
        p.find_kernel_at = Some(50);
        let at = |n| HookCtx { instructions: n, address_space: SPACE };
        assert!(!p.before_user_block(at(10)));
        assert!(!p.user_invalid_opcode(), "the #UD is delivered");
        assert!(!p.before_user_block(at(11)));
        assert!(p.before_user_block(at(50)));
        // Found: the budget rule (0 here: yield at once).
        p.find_kernel_at = None;
        assert!(p.before_user_block(at(60)));
        assert_eq!(p.stats.user_ud_yields, 0);
    }

    #[test]
    fn fx_events_are_logged_in_order() {
        let mut p = SplitPolicy::new(0);
        p.fx_event(FxEvent::Save(0x1000));
        p.fx_event(FxEvent::Restore(0x2000));
        assert_eq!(std::mem::take(&mut p.fx_log), [FxEvent::Save(0x1000), FxEvent::Restore(0x2000)]);
    }
}
