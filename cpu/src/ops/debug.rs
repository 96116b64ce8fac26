//! The debug architecture (SDM Vol. 3B chapter 17), alignment checking, NMI
//! injection and the random-number source of RDRAND/RDSEED.
//!
//! - Instruction breakpoints (DR7 R/W = 00) are faults checked before an
//!   instruction runs, masked by EFLAGS.RF; RF is cleared once that check has
//!   passed, so the instruction after an IRET that set RF runs once unhindered.
//! - Data breakpoints (R/W = 01 writes, 11 reads or writes) and I/O
//!   breakpoints (R/W = 10 with CR4.DE) are traps: hits are collected while the
//!   instruction runs and reported in DR6.B0–B3 once it completes. A faulting
//!   instruction reports none (it will run again).
//! - Single step: an instruction that starts with TF = 1 traps after it
//!   completes (DR6.BS); SYSCALL and SYSRET trap when they end with TF = 1. INT n, INT3 and INTO clear TF on the way to their
//!   handler and do not trap; a faulting instruction does not trap.
//! - MOV SS and POP SS hold back debug traps (and interrupts) until the next
//!   instruction has completed; the held-back bits are then reported together.
//! - #AC: with CR0.AM, EFLAGS.AC and CPL 3, a misaligned data access faults.
//!
//! Priority between simultaneous events follows SDM Vol. 3A Table 6-2: traps
//! of the previous instruction are delivered as it completes, before the
//! execution loop looks at NMI and INTR; the code-breakpoint fault is checked
//! next, before fetch faults, decode faults and execution faults.
//!
//! The slow path here runs only while TF or RF is set, a breakpoint is enabled
//! in DR7, or traps are held back: the execution loop tests those bits once
//! per instruction.

use iced_x86::Mnemonic;

use crate::cpu::{Cpu, Decoded};
use crate::exception::{Exception, Fault};
use crate::state::{cr, flags, sreg};

/// DR6 bits.
pub mod dr6 {
    /// B0–B3: breakpoint conditions met.
    pub const B: u64 = 0xf;
    /// BD: debug-register access detected (DR7.GD).
    pub const BD: u64 = 1 << 13;
    /// BS: single step.
    pub const BS: u64 = 1 << 14;
    /// BT: task switch to a TSS with the T bit.
    pub const BT: u64 = 1 << 15;
}

/// DR7 bits.
pub mod dr7 {
    /// L0, G0 .. L3, G3.
    pub const ENABLES: u64 = 0xff;
    /// The local enables (cleared on a task switch), with LE.
    pub const LOCAL: u64 = 0x55 | (1 << 8);
    /// GD: general detect.
    pub const GD: u64 = 1 << 13;
}

/// Per-instruction and host-side values the interpreter keeps outside
/// `CpuState` (the guest-visible pending events live in
/// [`crate::state::PendingEvents`]).
#[derive(Default)]
pub struct SysState {
    /// DR6.B0–B3 bits hit by data and I/O accesses of the current instruction.
    pub(crate) hits: u64,
    /// The RDRAND generator, seeded from the host on first use.
    pub(crate) rng: Option<ChaCha20>,
    /// RDSEED draws from `rng` too (a fixed seed was set for reproducible runs).
    pub(crate) deterministic: bool,
    /// A debugger watches data ([`crate::DebugStops::watchpoints`]).
    pub(crate) watching: bool,
    /// The watchpoint an access hit, for the debugger.
    pub(crate) watch_hit: Option<crate::exec::WatchHit>,
}

#[inline]
fn enabled(dr7: u64, i: usize) -> bool {
    (dr7 >> (2 * i)) & 3 != 0
}

#[inline]
fn rw(dr7: u64, i: usize) -> u64 {
    (dr7 >> (16 + 4 * i)) & 3
}

#[inline]
fn len(dr7: u64, i: usize) -> u64 {
    match (dr7 >> (18 + 4 * i)) & 3 {
        0 => 1,
        1 => 2,
        2 => 8,
        _ => 4,
    }
}

/// Whether `[a, a+n)` and the breakpoint range `[bp, bp+l)` overlap.
#[inline]
fn overlaps(a: u64, n: u64, bp: u64, l: u64) -> bool {
    let bp = bp & !(l - 1);
    a < bp.wrapping_add(l) && bp < a.wrapping_add(n) || (a.wrapping_add(n) < a && bp >= a)
}

impl Cpu {
    /// Request an NMI; it is delivered at the next instruction boundary where
    /// NMIs are not blocked (by a handler still running, or an interrupt shadow).
    pub fn inject_nmi(&mut self) {
        self.state.events.nmi_pending = true;
    }

    /// Whether an NMI is waiting.
    pub fn nmi_pending(&self) -> bool {
        self.state.events.nmi_pending
    }

    /// Deliver a pending NMI if the window allows; `true` if one was delivered.
    pub(crate) fn poll_nmi(&mut self) -> bool {
        if self.state.nmi_blocked != 0 || self.state.interrupt_shadow != 0 {
            return false;
        }
        self.state.events.nmi_pending = false;
        self.state.halted = 0;
        self.stats.interrupts += 1;
        self.deliver_nmi();
        true
    }

    /// The alignment check and the data-breakpoint check of one explicit data access.
    #[inline(always)]
    pub(crate) fn check_access(&mut self, lin: u64, size: u32, write: bool) -> Fault<()> {
        let s = &self.state;
        if (s.cr0 & cr::CR0_AM) | (s.dr[7] & dr7::ENABLES) | u64::from(self.sys.watching) != 0 {
            self.check_access_slow(lin, size, write)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn check_access_slow(&mut self, lin: u64, size: u32, write: bool) -> Fault<()> {
        self.check_alignment(lin, size)?;
        let s = &self.state;
        if s.dr[7] & dr7::ENABLES != 0 {
            self.data_breakpoints(lin, u64::from(size), write);
        }
        if self.sys.watching {
            self.watch_access(lin, u64::from(size), write);
        }
        Ok(())
    }

    /// #AC(0) for an operand at linear address `lin` that is not aligned to
    /// `align` bytes (a power of two), when CR0.AM, RFLAGS.AC and CPL 3
    /// enable alignment checking.
    #[inline]
    pub(crate) fn check_alignment(&self, lin: u64, align: u32) -> Fault<()> {
        let s = &self.state;
        if s.rflags & flags::AC != 0 && s.cpl == 3 && s.cr0 & cr::CR0_AM != 0 && lin & (u64::from(align) - 1) != 0 {
            return Err(Exception::AlignmentCheck);
        }
        Ok(())
    }

    /// Data breakpoints of a buffer access (its alignment is checked apart).
    #[inline]
    pub(crate) fn check_access_buf(&mut self, lin: u64, n: usize, write: bool) {
        if self.state.dr[7] & dr7::ENABLES != 0 && n != 0 {
            self.data_breakpoints(lin, n as u64, write);
        }
        if self.sys.watching && n != 0 {
            self.watch_access(lin, n as u64, write);
        }
    }

    #[cold]
    fn data_breakpoints(&mut self, lin: u64, n: u64, write: bool) {
        let d7 = self.state.dr[7];
        for i in 0..4 {
            if !enabled(d7, i) {
                continue;
            }
            let hit = match rw(d7, i) {
                1 => write,
                3 => true,
                _ => false,
            };
            if hit && overlaps(lin, n, self.state.dr[i], len(d7, i)) {
                self.sys.hits |= 1 << i;
            }
        }
    }

    /// I/O breakpoints (R/W = 10, CR4.DE) for an access to `port` of `size` bytes.
    pub(crate) fn io_breakpoints(&mut self, port: u16, size: u32) {
        let d7 = self.state.dr[7];
        if d7 & dr7::ENABLES == 0 || self.state.cr4 & cr::CR4_DE == 0 {
            return;
        }
        for i in 0..4 {
            if enabled(d7, i)
                && rw(d7, i) == 2
                && overlaps(u64::from(port), u64::from(size), self.state.dr[i] & 0xffff, len(d7, i))
            {
                self.sys.hits |= 1 << i;
            }
        }
    }

    /// Instruction breakpoints matching the linear address `lin`.
    fn code_breakpoints(&self, lin: u64) -> u64 {
        let d7 = self.state.dr[7];
        let mut hits = 0;
        for i in 0..4 {
            if enabled(d7, i) && rw(d7, i) == 0 && self.state.dr[i] == lin {
                hits |= 1 << i;
            }
        }
        hits
    }

    /// Linear address of the instruction at RIP.
    fn rip_linear(&self) -> u64 {
        let rip = self.state.rip;
        if self.state.code64() {
            rip
        } else {
            self.state.seg[sreg::CS].base.wrapping_add(rip) & 0xffff_ffff
        }
    }

    /// The code-breakpoint check that precedes an instruction: `true` if a
    /// #DB fault was raised.
    fn code_breakpoint_fault(&mut self) -> bool {
        if self.state.rflags & flags::RF != 0 || self.state.dr[7] & dr7::ENABLES == 0 {
            return false;
        }
        let hits = self.code_breakpoints(self.rip_linear());
        if hits == 0 {
            return false;
        }
        self.state.dr[6] |= hits | std::mem::take(&mut self.state.events.deferred_debug);
        self.raise(Exception::Debug);
        true
    }

    /// A fault while fetching the instruction at RIP: a code breakpoint on it
    /// has priority (SDM Vol. 3A Table 6-2).
    pub(crate) fn raise_fetch_fault(&mut self, e: Exception) {
        if !self.code_breakpoint_fault() {
            self.raise(e);
        }
    }

    /// `exec_one` with the debug architecture (see the module comment).
    pub(crate) fn exec_one_debug(&mut self, d: &Decoded) -> bool {
        self.insn_start = self.state.rip;
        if self.code_breakpoint_fault() {
            return false;
        }
        // RF is cleared once the code-breakpoint check has passed.
        self.state.rflags &= !flags::RF;
        // SYSCALL and SYSRET trap on the TF they end with (they raise the
        // trap themselves).
        let tf = self.state.rflags & flags::TF != 0
            && !matches!(d.insn.mnemonic(), Mnemonic::Syscall | Mnemonic::Sysret | Mnemonic::Sysretq);
        self.sys.hits = 0;
        self.state.events.mov_ss = false;
        self.state.rip = d.next_rip();
        match (d.handler)(self, &d.insn) {
            Ok(()) => {
                let mut bits = std::mem::take(&mut self.sys.hits);
                if tf {
                    bits |= dr6::BS;
                }
                if self.state.events.mov_ss {
                    self.state.events.deferred_debug |= bits;
                    return true;
                }
                bits |= std::mem::take(&mut self.state.events.deferred_debug);
                if bits == 0 {
                    return true;
                }
                self.stats.instructions += 1;
                self.state.dr[6] |= bits;
                self.raise(Exception::DebugTrap);
                false
            }
            Err(e) => {
                if e.is_trap() {
                    self.stats.instructions += 1;
                    if e == Exception::DebugTrap {
                        self.state.dr[6] |=
                            std::mem::take(&mut self.sys.hits) | std::mem::take(&mut self.state.events.deferred_debug);
                    }
                } else {
                    self.state.rip = self.insn_start;
                }
                self.sys.hits = 0;
                self.raise(e);
                false
            }
        }
    }

    /// Random bits for RDRAND (a ChaCha20 stream keyed from the host's
    /// randomness on first use).
    pub(crate) fn rdrand_u64(&mut self) -> u64 {
        self.sys.rng.get_or_insert_with(ChaCha20::from_os).next_u64()
    }

    /// Random bits for RDSEED: fresh host randomness, or `None` (CF = 0).
    pub(crate) fn rdseed_u64(&mut self) -> Option<u64> {
        if self.sys.deterministic {
            return Some(self.rdrand_u64());
        }
        let mut b = [0u8; 8];
        os_random(&mut b).then(|| u64::from_le_bytes(b))
    }

    /// Make RDRAND and RDSEED reproducible (deterministic runs).
    pub fn seed_random(&mut self, seed: u64) {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        self.sys.rng = Some(ChaCha20::new(key));
        self.sys.deterministic = true;
    }
}

/// Fill `buf` from the host's randomness; `false` if it is unavailable.
fn os_random(buf: &mut [u8]) -> bool {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).is_ok()
}

/// ChaCha20 (RFC 8439) as a stream of random words.
pub(crate) struct ChaCha20 {
    key: [u32; 8],
    counter: u64,
    block: [u32; 16],
    used: usize,
}

impl ChaCha20 {
    fn new(key: [u8; 32]) -> Self {
        let mut k = [0u32; 8];
        for (i, w) in k.iter_mut().enumerate() {
            *w = u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]);
        }
        ChaCha20 { key: k, counter: 0, block: [0; 16], used: 16 }
    }

    /// What the generator's future output follows from: its key, the
    /// counter of the next block and how many words of the current block
    /// were used (the block itself is recomputed from key and counter).
    pub(crate) fn position(&self) -> ([u32; 8], u64, usize) {
        (self.key, self.counter, self.used)
    }

    /// The generator at a [`ChaCha20::position`]; `used` is at most 16.
    pub(crate) fn at(key: [u32; 8], counter: u64, used: usize) -> Self {
        debug_assert!(used <= 16);
        let mut c = ChaCha20 { key, counter: counter.wrapping_sub(1), block: [0; 16], used: 16 };
        if used < 16 {
            // The current block is the one before `counter`.
            c.refill();
            c.used = used;
        } else {
            c.counter = counter;
        }
        c
    }

    fn from_os() -> Self {
        let mut key = [0u8; 32];
        if !os_random(&mut key) {
            // No /dev/urandom: fall back on std's per-process random hash keys and the clock.
            use std::hash::{BuildHasher, Hasher};
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(i);
                h.write_u128(
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
                );
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        Self::new(key)
    }

    fn refill(&mut self) {
        const C: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
        let mut init = [0u32; 16];
        init[..4].copy_from_slice(&C);
        init[4..12].copy_from_slice(&self.key);
        init[12] = self.counter as u32;
        init[13] = (self.counter >> 32) as u32;
        let mut x = init;
        fn qr(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
            x[a] = x[a].wrapping_add(x[b]);
            x[d] = (x[d] ^ x[a]).rotate_left(16);
            x[c] = x[c].wrapping_add(x[d]);
            x[b] = (x[b] ^ x[c]).rotate_left(12);
            x[a] = x[a].wrapping_add(x[b]);
            x[d] = (x[d] ^ x[a]).rotate_left(8);
            x[c] = x[c].wrapping_add(x[d]);
            x[b] = (x[b] ^ x[c]).rotate_left(7);
        }
        for _ in 0..10 {
            qr(&mut x, 0, 4, 8, 12);
            qr(&mut x, 1, 5, 9, 13);
            qr(&mut x, 2, 6, 10, 14);
            qr(&mut x, 3, 7, 11, 15);
            qr(&mut x, 0, 5, 10, 15);
            qr(&mut x, 1, 6, 11, 12);
            qr(&mut x, 2, 7, 8, 13);
            qr(&mut x, 3, 4, 9, 14);
        }
        for (o, i) in x.iter_mut().zip(init) {
            *o = o.wrapping_add(i);
        }
        self.block = x;
        self.counter = self.counter.wrapping_add(1);
        self.used = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.used == 16 {
            self.refill();
        }
        let v = self.block[self.used];
        self.used += 1;
        v
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        u64::from(self.next_u32()) | (u64::from(self.next_u32()) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::cpu::StopReason;
    use crate::state::flags::{IF, RF, TF};

    #[test]
    fn chacha20_matches_rfc8439_block() {
        // The all-zero key, counter 0 and zero nonce give the well-known
        // first keystream bytes 76 b8 e0 ad a0 f1 3d 90.
        let mut c = ChaCha20::new([0; 32]);
        assert_eq!(c.next_u32(), u32::from_le_bytes([0x76, 0xb8, 0xe0, 0xad]));
        assert_eq!(c.next_u32(), u32::from_le_bytes([0xa0, 0xf1, 0x3d, 0x90]));
    }

    #[test]
    fn breakpoint_ranges() {
        assert!(overlaps(0x1003, 1, 0x1000, 4));
        assert!(!overlaps(0x1004, 4, 0x1000, 4));
        assert!(overlaps(0x0ffe, 4, 0x1001, 2));
        assert!(!overlaps(0x0ff8, 8, 0x1000, 8));
    }

    fn frame(c: &mut Cpu) -> (u64, u64, u64) {
        let sp = c.state.gpr[4];
        let r = |c: &mut Cpu, o: u64| c.read_mem(sreg::SS, sp + o, 4).unwrap();
        (r(c, 0), r(c, 4), r(c, 8))
    }

    #[test]
    fn single_step_traps_after_the_instruction() {
        let mut c = prot_mode();
        c.state.rflags |= TF;
        assert_eq!(step_bytes(&mut c, &[0x90]), StopReason::Budget);
        assert_eq!(c.state.rip, stub(1));
        let (eip, _, eflags) = frame(&mut c);
        assert_eq!(eip, CODE + 1);
        assert_ne!(eflags & TF, 0);
        assert_eq!(eflags & RF, 0);
        assert_eq!(c.state.rflags & TF, 0);
        assert_ne!(c.state.dr[6] & dr6::BS, 0);
    }

    #[test]
    fn popf_setting_tf_traps_after_the_next_instruction_and_int_n_does_not_trap() {
        let mut c = prot_mode();
        c.mem().write_u32(KSTACK - 4, (flags::FIXED | TF) as u32).unwrap();
        c.state.gpr[4] = KSTACK - 4;
        place(&mut c, &[0x9d, 0x90, 0xcd, 0x80]);
        c.step();
        assert_eq!(c.state.rip, CODE + 1);
        c.step();
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(frame(&mut c).0, CODE + 2);
        // INT n with TF set: the handler runs with TF clear and no #DB comes first.
        let mut c = prot_mode();
        c.state.rflags |= TF;
        step_bytes(&mut c, &[0xcd, 0x80]);
        assert_eq!(c.state.rip, stub(0x80));
        assert_eq!(c.state.rflags & TF, 0);
        assert_eq!(c.state.dr[6] & dr6::BS, 0);
    }

    /// 64-bit SYSCALL/SYSRET at `CODE` (user) and `CODE + 0x100` (kernel):
    /// STAR, LSTAR and SFMASK set, the CPU at CPL 3 with `rflags`.
    fn syscall_cpu(sfmask: u64, rflags: u64) -> Cpu {
        let mut c = long_mode();
        c.state.msr.star = (u64::from(SEL_UCODE32 & !3) << 48) | (u64::from(SEL_CODE64) << 32);
        c.state.msr.lstar = CODE + 0x100;
        c.state.msr.sfmask = sfmask;
        c.mem().write(CODE, &[0x0f, 0x05, 0x90]).unwrap(); // syscall; nop
        c.mem().write(CODE + 0x100, &[0x48, 0x0f, 0x07]).unwrap(); // sysretq
        to_user(&mut c, SEL_UCODE64);
        c.state.rflags = flags::FIXED | rflags;
        c
    }

    #[test]
    fn syscall_and_sysret_single_step_on_the_tf_they_end_with() {
        // TF set, SFMASK clears it: no trap in the kernel.
        let mut c = syscall_cpu(TF, TF);
        c.step();
        assert_eq!(c.state.rip, CODE + 0x100, "no #DB after a SYSCALL that clears TF");
        assert_eq!(c.state.cpl, 0);
        assert_eq!(c.state.gpr[11] & TF, TF, "R11 keeps the user's TF");
        assert_eq!(c.state.dr[6] & dr6::BS, 0);
        // SYSRETQ loads TF from R11: the trap comes at the user's next
        // instruction, delivered from CPL 3.
        c.step();
        assert_eq!(c.state.rip, stub(1));
        let (rip, cs) =
            (c.read_mem(sreg::SS, c.state.gpr[4], 8).unwrap(), c.read_mem(sreg::SS, c.state.gpr[4] + 8, 8).unwrap());
        assert_eq!((rip, cs), (CODE + 2, u64::from(SEL_UCODE64)));
        assert_ne!(c.state.dr[6] & dr6::BS, 0);
        // TF kept by SFMASK: the trap comes in the kernel, at LSTAR.
        let mut c = syscall_cpu(0, TF);
        c.step();
        assert_eq!(c.state.rip, stub(1));
        let (rip, cs) =
            (c.read_mem(sreg::SS, c.state.gpr[4], 8).unwrap(), c.read_mem(sreg::SS, c.state.gpr[4] + 8, 8).unwrap());
        assert_eq!((rip, cs), (CODE + 0x100, u64::from(SEL_CODE64)));
        // Neither TF: no trap either way.
        let mut c = syscall_cpu(0, 0);
        c.step();
        assert_eq!(c.state.rip, CODE + 0x100);
        c.step();
        assert_eq!(c.state.rip, CODE + 2);
        assert_eq!(c.state.dr[6] & dr6::BS, 0);
    }

    #[test]
    fn mov_ss_holds_back_the_single_step_trap() {
        let mut c = prot_mode();
        c.state.rflags |= TF;
        c.state.gpr[0] = u64::from(SEL_DATA);
        place(&mut c, &[0x8e, 0xd0, 0x90, 0x90]); // mov ss, ax; nop; nop
        c.step();
        assert_eq!(c.state.rip, CODE + 2);
        c.step();
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(frame(&mut c).0, CODE + 3);
    }

    #[test]
    fn instruction_breakpoint_is_a_fault_masked_by_rf() {
        let mut c = prot_mode();
        c.state.dr[0] = CODE;
        c.state.dr[7] = 0x401;
        place(&mut c, &[0x40, 0x40]); // inc eax; inc eax
        c.step();
        assert_eq!(c.state.rip, stub(1));
        let (eip, _, eflags) = frame(&mut c);
        assert_eq!(eip, CODE);
        assert_eq!(eflags & RF, 0);
        assert_eq!(c.state.gpr[0], 0);
        assert_eq!(c.state.dr[6] & dr6::B, 1);
        // Return with RF set: the instruction runs once, then RF is clear.
        c.state.rip = CODE;
        c.state.rflags |= RF;
        c.step();
        assert_eq!((c.state.rip, c.state.gpr[0]), (CODE + 1, 1));
        assert_eq!(c.state.rflags & RF, 0);
        // IRET loads RF from the image, as a debugger's handler relies on.
        let mut c = prot_mode();
        c.state.dr[0] = CODE;
        c.state.dr[7] = 0x2;
        c.mem().write_u32(KSTACK - 12, CODE as u32).unwrap();
        c.mem().write_u32(KSTACK - 8, u32::from(SEL_CODE32)).unwrap();
        c.mem().write_u32(KSTACK - 4, (flags::FIXED | RF) as u32).unwrap();
        c.state.gpr[4] = KSTACK - 12;
        c.state.rip = CODE + 0x100;
        place(&mut c, &[0xcf]);
        c.state.rip = CODE;
        place(&mut c, &[0x40]);
        c.state.rip = CODE + 0x100;
        c.step();
        assert_eq!(c.state.rip, CODE);
        assert_ne!(c.state.rflags & RF, 0);
        c.step();
        assert_eq!((c.state.rip, c.state.gpr[0]), (CODE + 1, 1));
    }

    #[test]
    fn faults_push_rf_set() {
        let mut c = prot_mode();
        c.state.gpr[0] = 0x800;
        step_bytes(&mut c, &[0x8e, 0xd8]); // mov ds, ax: #GP(0x800)
        assert_eq!(c.state.rip, stub(13));
        let sp = c.state.gpr[4];
        let eflags = c.read_mem(sreg::SS, sp + 12, 4).unwrap();
        assert_ne!(eflags & RF, 0);
        assert_eq!(c.state.rflags & RF, 0);
    }

    #[test]
    fn data_breakpoints_trap_after_the_access() {
        let mut c = prot_mode();
        c.state.dr[1] = DATA + 4;
        // L1, R/W1 = 01 (writes), LEN1 = 11 (4 bytes).
        c.state.dr[7] = 0x4 | (0b1101 << 20);
        c.state.gpr[3] = DATA;
        // A read does not hit a write breakpoint.
        step_bytes(&mut c, &[0x8b, 0x43, 0x06]); // mov eax, [ebx+6]
        assert_eq!(c.state.rip, CODE + 3);
        c.state.rip = CODE;
        step_bytes(&mut c, &[0x88, 0x43, 0x07]); // mov [ebx+7], al
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(frame(&mut c).0, CODE + 3);
        assert_eq!(c.state.dr[6] & dr6::B, 2);
        // R/W = 11 catches reads; a later fault in the same instruction cancels the trap.
        let mut c = long_mode();
        c.state.dr[2] = READONLY;
        c.state.dr[7] = 0x10 | (0b0011 << 24);
        c.state.gpr[3] = READONLY;
        step_bytes(&mut c, &[0x00, 0x03]); // add [rbx], al
        assert_eq!(c.state.rip, stub(14));
        assert_eq!(c.state.dr[6] & dr6::B, 0);
        c.state.rip = CODE;
        c.state.gpr[4] = KSTACK;
        step_bytes(&mut c, &[0x8a, 0x03]); // mov al, [rbx]
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(c.state.dr[6] & dr6::B, 4);
    }

    #[test]
    fn io_breakpoints_need_cr4_de() {
        let mut c = prot_mode();
        c.state.dr[2] = 0x80;
        c.state.dr[7] = 0x20 | (0b0010 << 24);
        step_bytes(&mut c, &[0xe6, 0x80]); // out 0x80, al
        assert_eq!(c.state.rip, CODE + 2);
        c.state.cr4 |= cr::CR4_DE;
        c.state.rip = CODE;
        step_bytes(&mut c, &[0xe6, 0x80]);
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(c.state.dr[6] & dr6::B, 4);
    }

    #[test]
    fn general_detect() {
        let mut c = prot_mode();
        c.state.dr[7] = 0x400 | dr7::GD;
        step_bytes(&mut c, &[0x0f, 0x21, 0xc0]); // mov eax, dr0
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(frame(&mut c).0, CODE);
        assert_ne!(c.state.dr[6] & dr6::BD, 0);
        assert_eq!(c.state.dr[7] & dr7::GD, 0);
    }

    #[test]
    fn code_breakpoint_beats_a_fetch_fault() {
        let mut c = long_mode();
        c.state.dr[0] = UNMAPPED;
        c.state.dr[7] = 0x1;
        c.state.rip = UNMAPPED;
        c.step();
        assert_eq!(c.state.rip, stub(1));
        // With RF set the fetch fault comes through.
        c.state.rip = UNMAPPED;
        c.state.gpr[4] = KSTACK;
        c.state.rflags |= RF;
        c.step();
        assert_eq!(c.state.rip, stub(14));
        assert_eq!(c.state.cr2, UNMAPPED);
        assert_eq!(c.read_mem(sreg::SS, c.state.gpr[4], 8).unwrap(), 0x10); // I/D fetch, not present
    }

    #[test]
    fn alignment_check_at_cpl3() {
        let mut c = long_mode();
        c.state.cr0 |= cr::CR0_AM;
        to_user(&mut c, SEL_UCODE64);
        c.state.gpr[3] = DATA + 1;
        let load = [0x8b, 0x03]; // mov eax, [rbx]
        assert!(exec_bytes(&mut c, &load).is_ok());
        c.state.rflags |= flags::AC;
        assert_eq!(exec_bytes(&mut c, &load), Err(Exception::AlignmentCheck));
        assert!(exec_bytes(&mut c, &[0x8a, 0x03]).is_ok()); // bytes are always aligned
        c.state.gpr[3] = DATA + 4;
        assert!(exec_bytes(&mut c, &load).is_ok());
        assert_eq!(exec_bytes(&mut c, &[0x48, 0x8b, 0x03]), Err(Exception::AlignmentCheck));
        // Stack accesses too.
        c.state.gpr[4] = USTACK - 2;
        assert_eq!(exec_bytes(&mut c, &[0x50]), Err(Exception::AlignmentCheck));
        // Delivered as vector 17 with error code 0.
        step_bytes(&mut c, &[0x50]);
        assert_eq!(c.state.rip, stub(17));
        assert_eq!(c.read_mem(sreg::SS, c.state.gpr[4], 8).unwrap(), 0);
        // CPL 0 is never checked.
        let mut c = long_mode();
        c.state.cr0 |= cr::CR0_AM;
        c.state.rflags |= flags::AC;
        c.state.gpr[3] = DATA + 1;
        assert!(exec_bytes(&mut c, &load).is_ok());
    }

    #[test]
    fn nmi_is_delivered_once_until_iret() {
        let mut c = prot_mode();
        place(&mut c, &[0x90, 0x90, 0x90]);
        c.inject_nmi();
        assert_eq!(c.run(100), StopReason::Halted);
        assert_eq!(c.state.rip, stub(2) + 1);
        assert_eq!(c.state.nmi_blocked, 1);
        assert_eq!(frame(&mut c).0, CODE);
        // A second NMI waits while the first handler runs.
        c.inject_nmi();
        c.state.halted = 0;
        c.state.rip = CODE + 0x200;
        place(&mut c, &[0xcf]); // iret
        assert_eq!(c.run(1), StopReason::Budget);
        assert_eq!(c.state.rip, CODE);
        assert!(c.nmi_pending());
        assert_eq!(c.state.nmi_blocked, 0);
        // Now it is delivered.
        c.run(1);
        assert!(!c.nmi_pending());
        assert_eq!(c.state.nmi_blocked, 1);
        // NMI does not depend on IF; the external-interrupt bit is in error codes.
        assert_eq!(c.state.rflags & IF, 0);
    }

    #[test]
    fn single_step_trap_is_delivered_before_a_pending_nmi() {
        let mut c = prot_mode();
        place(&mut c, &[0x90, 0x90]);
        c.state.rflags |= TF;
        c.step();
        // The #DB trap of the nop is delivered; the NMI arrives at the next boundary.
        assert_eq!(c.state.rip, stub(1));
        c.inject_nmi();
        c.run(1);
        assert_eq!(c.state.rip, stub(2) + 1);
        // The NMI interrupted the #DB handler before its first instruction.
        assert_eq!(frame(&mut c).0, stub(1));
    }

    #[test]
    fn nmi_is_taken_before_a_code_breakpoint() {
        let mut c = prot_mode();
        place(&mut c, &[0x90]);
        c.state.dr[0] = CODE;
        c.state.dr[7] = 1;
        c.inject_nmi();
        c.run(1);
        assert_eq!(c.state.rip, stub(2) + 1);
        assert_eq!(frame(&mut c).0, CODE);
        assert_eq!(c.state.dr[6] & dr6::B, 0);
    }

    #[test]
    fn nmi_before_intr_and_both_after_the_previous_instructions_traps() {
        let (mut c, _, irq) = new_cpu_with_irq();
        prot_setup(&mut c);
        place(&mut c, &[0x90, 0x90]);
        c.state.rflags |= IF;
        *irq.lock().unwrap() = Some(0x40);
        c.inject_nmi();
        c.run(1);
        // NMI first; its interrupt gate clears IF, so INTR waits.
        assert_eq!(c.state.rip, stub(2) + 1);
        assert_eq!(frame(&mut c).0, CODE);
        assert!(irq.lock().unwrap().is_some());
        // INTR without NMI.
        let (mut c, _, irq) = new_cpu_with_irq();
        prot_setup(&mut c);
        place(&mut c, &[0x90, 0x90]);
        c.state.rflags |= IF;
        *irq.lock().unwrap() = Some(0x40);
        c.run(1);
        assert_eq!(c.state.rip, stub(0x40) + 1);
        // STI holds INTR back for one instruction.
        let (mut c, _, irq) = new_cpu_with_irq();
        prot_setup(&mut c);
        place(&mut c, &[0xfb, 0x90, 0xeb, 0xfe]); // sti; nop; jmp $
        *irq.lock().unwrap() = Some(0x40);
        c.step();
        assert_eq!(c.state.interrupt_shadow, 1);
        c.run(3);
        assert_eq!(c.state.rip, stub(0x40) + 1);
        assert_eq!(frame(&mut c).0, CODE + 2);
    }

    #[test]
    fn code_breakpoint_beats_a_decode_fault() {
        let mut c = prot_mode();
        c.state.dr[0] = CODE;
        c.state.dr[7] = 1;
        step_bytes(&mut c, &[0xf0, 0x90]); // lock nop: #UD
        assert_eq!(c.state.rip, stub(1));
        c.state.rip = CODE;
        c.state.gpr[4] = KSTACK;
        c.state.rflags |= RF;
        c.step();
        assert_eq!(c.state.rip, stub(6));
    }
}
