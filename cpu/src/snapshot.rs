//! Saved state of the processor: [`Persist`] for [`CpuState`] and for the
//! interpreter's [`Cpu`].
//!
//! A [`CpuSnapshot`] holds the whole [`CpuState`], the CPU model the guest
//! saw through CPUID, and the RDRAND generator of a CPU seeded for
//! reproducible runs. What the interpreter derives or caches is not saved:
//! restore recomputes the paging context and drops the soft TLB and the
//! decoded code, as a state load does ([`Cpu::set_state`] and
//! [`Cpu::flush_code_cache`]; the invalidation listeners hear of the whole
//! flush), and clears the breakpoint hits of the instruction in progress.
//!
//! The time-stamp counter: `msr.tsc_offset` is saved, an offset over the
//! platform's counter ([`Platform::tsc`](crate::Platform::tsc)), which the
//! machine saves as guest time. A CPU without a platform counter counts
//! host time from its creation, which no state carries.
//!
//! Restore checks the whole state before changing anything, with the checks
//! the instructions that load each part make:
//! - CR0, CR4, CR3 and CR8 as MOV to CR takes them, EFER as WRMSR, XCR0 as
//!   XSETBV (against the target's model: its XSAVE and AVX parts), MXCSR
//!   against the mask LDMXCSR and FXRSTOR fault on, FCW's reserved bits as
//!   FLDCW leaves them, FOP's 11 bits, and DR6 and DR7 as MOV to DR;
//! - the combinations those instructions keep: EFER.LMA set exactly when
//!   EFER.LME and CR0.PG are, and CR4.PAE in long mode;
//! - RFLAGS: no reserved bit, bit 1 set;
//! - the lazy flags: a known operation, and with one a size of 1, 2, 4 or 8;
//! - the CPL: at most 3, 0 in real mode, 3 in virtual-8086 mode, and in
//!   protected mode CS.RPL (but for CPL 0 outside 64-bit code: the
//!   instructions after setting CR0.PE, before CS is loaded again);
//! - segment attributes: no reserved bit (bits 11:8 and 31:17 of the
//!   [`seg_attr`] layout), a usable CS, no 64-bit CS with D set; GDTR and
//!   IDTR limits of 16 bits;
//! - `halted`, `interrupt_shadow` and `nmi_blocked` 0 or 1, the deferred
//!   debug traps only breakpoint and single-step bits;
//! - every MSR value WRMSR checks or masks (canonical addresses, PAT types,
//!   field widths, PerfEvtSel's reserved bits), in [`CpuState::msr`], the
//!   FS and GS bases and [`MsrTable`](crate::msr::MsrTable) alike.
//!
//! The x87 TOP (three bits of FSW) and tag word (two bits per register)
//! have no value to refuse. The MSR table's indices are fixed by its
//! layout in memory; its serde form names them and is read back only whole
//! (see [`MsrTable`](crate::msr::MsrTable)).

use ::persist::{Persist, PersistError};

use crate::cpu::Cpu;
use crate::flags::FlagOp;
use crate::msr::{self, TABLE};
use crate::ops::debug::{dr6, ChaCha20};
use crate::ops::{system, xsave};
use crate::state::{cr, flags, seg_attr, sreg, CpuState};
use crate::x87;

/// The part name in a [`PersistError`].
const PART: &str = "x86 CPU";

/// The saved state of an interpreter [`Cpu`]: what [`Persist::save`] gives
/// and [`Persist::restore`] takes.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CpuSnapshot {
    /// The architectural state, whole.
    pub state: CpuState,
    /// The model the guest saw through CPUID: a CPU of another model
    /// refuses the state.
    pub model: SavedModel,
    /// The RDRAND and RDSEED generator of a CPU seeded for reproducible
    /// runs ([`Cpu::seed_random`]). `None` for a CPU that draws from the
    /// host: a CPU restored from it draws fresh host randomness, so that
    /// two CPUs restored from one state do not share their random numbers.
    pub rng: Option<RngState>,
}

/// The parts of the CPU model ([`Cpu::set_xsave`], [`Cpu::set_avx`],
/// [`Cpu::set_model`]) a state was saved under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SavedModel {
    /// The XSAVE feature set is offered.
    pub xsave: bool,
    /// The AVX part is on.
    pub avx: bool,
    /// AES-NI and PCLMULQDQ are on.
    pub crypto: bool,
    /// The protection keys (PKU and PKS) are on.
    pub pku: bool,
}

/// Where a seeded RDRAND generator (ChaCha20) is in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RngState {
    /// The key, as eight little-endian words.
    pub key: [u32; 8],
    /// The block counter of the next block.
    pub counter: u64,
    /// Words of the current block already drawn (at most 16).
    pub used: u8,
}

/// What a state's validity depends on in the CPU model.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// CR4.OSXSAVE may be set.
    xsave: bool,
    /// The XCR0 components XSETBV takes.
    xcr0_supported: u64,
    /// CR4.PKE and CR4.PKS may be set.
    pku: bool,
}

impl Limits {
    /// What the most capable model allows (XSAVE offered, AVX on): the
    /// checks of a [`CpuState`] on its own.
    const ANY_MODEL: Limits = Limits { xsave: true, xcr0_supported: xsave::SUPPORTED_AVX | xsave::PKRU, pku: true };
}

fn check(ok: bool, field: &'static str, problem: impl FnOnce() -> String) -> Result<(), PersistError> {
    PersistError::check(ok, PART, field, problem)
}

/// The attribute field of each segment register, by number.
const SEG_ATTR_FIELDS: [&str; 6] =
    ["seg[ES].attr", "seg[CS].attr", "seg[SS].attr", "seg[DS].attr", "seg[FS].attr", "seg[GS].attr"];

/// Attribute bits a segment register can hold (the [`seg_attr`] layout has
/// no bits 11:8 and none above UNUSABLE).
const SEG_ATTR_BITS: u32 = 0xff | seg_attr::AVL | seg_attr::L | seg_attr::DB | seg_attr::G | seg_attr::UNUSABLE;

/// Checks everything of `s` that a CPU with `limits` relies on (see the
/// module comment).
fn check_state(s: &CpuState, limits: Limits) -> Result<(), PersistError> {
    // RFLAGS and the lazy flags.
    check(s.rflags & !(flags::ALL | flags::FIXED) == 0 && s.rflags & flags::FIXED != 0, "rflags", || {
        format!("is {:#x}: a reserved bit is set or bit 1 is clear", s.rflags)
    })?;
    let op = FlagOp::from_u32(s.lazy.op);
    check(op.is_some(), "lazy.op", || format!("is {}, not a known flag operation", s.lazy.op))?;
    check(op == Some(FlagOp::None) || matches!(s.lazy.size, 1 | 2 | 4 | 8), "lazy.size", || {
        format!("is {}, not 1, 2, 4 or 8", s.lazy.size)
    })?;

    // Control registers, EFER, XCR0 and the debug registers.
    check(system::cr0_valid(s.cr0), "cr0", || format!("is {:#x}, which MOV to CR0 refuses", s.cr0))?;
    check(system::cr4_valid(s.cr4, limits.xsave, limits.pku), "cr4", || {
        format!("is {:#x}, with bits this CPU model does not implement", s.cr4)
    })?;
    check(s.efer & !system::EFER_VALID == 0, "efer", || format!("is {:#x}, with reserved bits", s.efer))?;
    let lma = s.efer & cr::EFER_LMA != 0;
    let lme_pg = s.efer & cr::EFER_LME != 0 && s.cr0 & cr::CR0_PG != 0;
    check(lma == lme_pg, "efer", || {
        format!("is {:#x} with CR0 {:#x}: LMA must be set exactly when LME and CR0.PG are", s.efer, s.cr0)
    })?;
    check(!lma || s.cr4 & cr::CR4_PAE != 0, "cr4", || format!("is {:#x}: PAE is clear in long mode", s.cr4))?;
    check(system::cr3_valid(s.cr3, lma), "cr3", || format!("is {:#x}, above MAXPHYADDR in long mode", s.cr3))?;
    PersistError::check_max(PART, "cr8", s.cr8, system::CR8_MAX)?;
    check(xsave::xcr0_valid(s.xcr0, limits.xcr0_supported), "xcr0", || {
        format!("is {:#x}, which XSETBV refuses (this CPU model supports {:#x})", s.xcr0, limits.xcr0_supported)
    })?;
    PersistError::check_max(PART, "dr[6]", s.dr[6], u64::from(u32::MAX))?;
    PersistError::check_max(PART, "dr[7]", s.dr[7], u64::from(u32::MAX))?;

    // Privilege and segments.
    PersistError::check_max(PART, "cpl", s.cpl, 3)?;
    let rpl = (s.seg[sreg::CS].selector & 3) as u8;
    let cpl_ok = if !s.protected() {
        s.cpl == 0
    } else if s.v86() {
        s.cpl == 3
    } else {
        s.cpl == rpl || (s.cpl == 0 && !s.code64())
    };
    check(cpl_ok, "cpl", || {
        format!(
            "is {} with CR0.PE {}, EFLAGS.VM {} and CS selector {:#x}",
            s.cpl,
            u8::from(s.protected()),
            u8::from(s.rflags & flags::VM != 0),
            s.seg[sreg::CS].selector
        )
    })?;
    let segs = s.seg.iter().zip(SEG_ATTR_FIELDS).chain([(&s.ldtr, "ldtr.attr"), (&s.tr, "tr.attr")]);
    for (seg, field) in segs {
        check(seg.attr & !SEG_ATTR_BITS == 0, field, || format!("is {:#x}, with reserved bits", seg.attr))?;
    }
    let cs = s.seg[sreg::CS].attr;
    check(cs & seg_attr::UNUSABLE == 0, "seg[CS].attr", || format!("is {cs:#x}: CS is unusable"))?;
    check(!(s.long_mode() && cs & seg_attr::L != 0 && cs & seg_attr::DB != 0), "seg[CS].attr", || {
        format!("is {cs:#x}: a 64-bit code segment with D set")
    })?;
    PersistError::check_max(PART, "gdtr.limit", s.gdtr.limit, 0xffff)?;
    PersistError::check_max(PART, "idtr.limit", s.idtr.limit, 0xffff)?;

    // x87 and SSE.
    check(s.fpu.fcw & x87::fcw::RESERVED == x87::fcw::ALWAYS_ONE, "fpu.fcw", || {
        format!("is {:#x}: bits 15:13 and 7 must be clear and bit 6 set", s.fpu.fcw)
    })?;
    PersistError::check_max(PART, "fpu.fop", s.fpu.fop, 0x7ff)?;
    check(s.mxcsr & !x87::MXCSR_MASK == 0, "mxcsr", || {
        format!("is {:#x}, with bits outside MXCSR_MASK {:#x}", s.mxcsr, x87::MXCSR_MASK)
    })?;

    // Execution state and events waiting for a boundary.
    PersistError::check_max(PART, "halted", s.halted, 1)?;
    PersistError::check_max(PART, "interrupt_shadow", s.interrupt_shadow, 1)?;
    PersistError::check_max(PART, "nmi_blocked", s.nmi_blocked, 1)?;
    let deferred = s.events.deferred_debug;
    check(deferred & !(dr6::B | dr6::BS) == 0, "events.deferred_debug", || {
        format!("is {deferred:#x}: only breakpoint and single-step traps are held back")
    })?;

    // MSRs, with WRMSR's checks.
    let m = &s.msr;
    let msrs = [
        (msr::IA32_SYSENTER_CS, "msr.sysenter_cs", m.sysenter_cs),
        (msr::IA32_SYSENTER_ESP, "msr.sysenter_esp", m.sysenter_esp),
        (msr::IA32_SYSENTER_EIP, "msr.sysenter_eip", m.sysenter_eip),
        (msr::IA32_PAT, "msr.pat", m.pat),
        (msr::IA32_LSTAR, "msr.lstar", m.lstar),
        (msr::IA32_CSTAR, "msr.cstar", m.cstar),
        (msr::IA32_FMASK, "msr.sfmask", m.sfmask),
        (msr::IA32_KERNEL_GS_BASE, "msr.kernel_gs_base", m.kernel_gs_base),
        (msr::IA32_TSC_AUX, "msr.tsc_aux", m.tsc_aux),
        (msr::IA32_FS_BASE, "seg[FS].base", s.seg[sreg::FS].base),
        (msr::IA32_GS_BASE, "seg[GS].base", s.seg[sreg::GS].base),
    ];
    for (index, field, v) in msrs {
        check(msr::written_value(index, v) == Ok(v), field, || {
            format!("is {v:#x}, which WRMSR to {index:#x} refuses or would not keep")
        })?;
    }
    for (&(index, _, _), &v) in TABLE.iter().zip(&s.msr_table.values) {
        check(msr::written_value(index, v) == Ok(v), "msr_table", || {
            format!("holds {v:#x} for MSR {index:#x}, which WRMSR refuses or would not keep")
        })?;
    }
    Ok(())
}

/// A [`CpuState`] on its own: saved as it is, restored after the checks
/// that hold for every CPU model (an XCR0 with the AVX component and
/// CR4.OSXSAVE are taken). A [`Cpu`] checks a state against its own model.
impl Persist for CpuState {
    type State = CpuState;

    fn save(&self) -> CpuState {
        *self
    }

    fn restore(&mut self, state: &CpuState) -> Result<(), PersistError> {
        check_state(state, Limits::ANY_MODEL)?;
        *self = *state;
        Ok(())
    }
}

impl Cpu {
    fn saved_model(&self) -> SavedModel {
        SavedModel { xsave: self.xsave, avx: self.avx, crypto: self.crypto, pku: self.pku }
    }
}

/// The interpreter's processor: its [`CpuState`], the model it was saved
/// under and a seeded RDRAND generator (see [`CpuSnapshot`]). Restore flushes
/// the soft TLB and the decoded code.
impl Persist for Cpu {
    type State = CpuSnapshot;

    fn save(&self) -> CpuSnapshot {
        let rng = self.sys.rng.as_ref().filter(|_| self.sys.deterministic).map(|r| {
            let (key, counter, used) = r.position();
            RngState { key, counter, used: used as u8 }
        });
        CpuSnapshot { state: self.state, model: self.saved_model(), rng }
    }

    fn restore(&mut self, s: &CpuSnapshot) -> Result<(), PersistError> {
        let model = self.saved_model();
        check(s.model == model, "model", || format!("is {:?}, and this CPU's is {model:?}", s.model))?;
        check_state(&s.state, Limits { xsave: self.xsave, xcr0_supported: self.xcr0_supported(), pku: self.pku() })?;
        if let Some(r) = &s.rng {
            PersistError::check_max(PART, "rng.used", r.used, 16)?;
        }
        // Everything is checked: load it, and drop what came from the old state.
        self.set_state(s.state);
        self.flush_code_cache();
        self.prev_block = None;
        self.delivering = None;
        self.shutdown = None;
        self.sys.hits = 0;
        match &s.rng {
            Some(r) => {
                self.sys.rng = Some(ChaCha20::at(r.key, r.counter, usize::from(r.used)));
                self.sys.deterministic = true;
            }
            None if self.sys.deterministic => {
                self.sys.rng = None;
                self.sys.deterministic = false;
            }
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ::persist::{assert_refused, assert_round_trip, Persist};
    use iced_x86::code_asm::*;
    use mmu::GuestMemory;

    use super::*;
    use crate::cache::Invalidation;
    use crate::msr::MsrTable;
    use crate::ops::testutil::*;
    use crate::platform::{NoDevices, StopReason};
    use crate::state::{cr, Segment};

    /// Where the program of [`configured`] keeps its pseudo-descriptors.
    const GDT_PTR: u64 = 0x500;
    const IDT_PTR: u64 = 0x510;
    /// Memory the programs use: the tables, the code, the data and the stacks.
    const USED: usize = 0x80000;
    /// LSTAR and MTRR_PHYSMASK0 as the program writes them.
    const LSTAR: u64 = 0xffff_ffff_8160_0000;
    const PHYSMASK0: u64 = 0xfff_f800;

    fn asm_at(bits: u32, at: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        let mut a = CodeAssembler::new(bits).unwrap();
        f(&mut a).unwrap();
        a.assemble(at).unwrap()
    }

    /// The continuation [`configured`] leaves at RIP: it reads the lazy
    /// flags, the x87 stack, XMM and YMM registers under the MXCSR rounding
    /// mode, RDRAND, the MSRs and CR8, writes memory, and halts.
    fn continuation(at: u64) -> Vec<u8> {
        asm_at(64, at, |a| {
            a.adc(rbx, 1)?;
            a.setc(al)?;
            a.seto(ah)?;
            a.fadd_2(st0, st1)?;
            a.fstp(qword_ptr(r12 + 0x40))?;
            a.addps(xmm2, xmm3)?;
            a.vaddps(ymm5, ymm5, ymm4)?;
            a.rdrand(r8)?;
            a.mov(ecx, msr::IA32_LSTAR)?;
            a.rdmsr()?;
            a.mov(r9, rax)?;
            a.mov(r10, rdx)?;
            a.mov(ecx, 0x201)?;
            a.rdmsr()?;
            a.mov(r11, cr8)?;
            a.pushfq()?;
            a.pop(r13)?;
            a.hlt()
        })
    }

    /// A CPU with the AVX model and a seeded RDRAND, brought by a program
    /// from real mode through protected mode to 64-bit mode, where it sets
    /// up the x87 stack, XMM and YMM registers, MXCSR, LSTAR, an MTRR, CR8,
    /// draws a random number and subtracts, leaving the flags lazy. RIP is
    /// at [`continuation`].
    fn configured() -> Cpu {
        let mut c = long_mode();
        let real = real_mode().state;
        c.set_state(real);
        c.set_avx(true);
        c.seed_random(42);
        let m = c.mem().clone();
        m.write_u16(GDT_PTR, 0xff).unwrap();
        m.write_u32(GDT_PTR + 2, GDT as u32).unwrap();
        m.write_u16(IDT_PTR, 0xfff).unwrap();
        m.write_u64(IDT_PTR + 2, IDT).unwrap();
        m.write_u64(DATA, 2.5f64.to_bits()).unwrap();
        m.write_u32(DATA + 8, 0x3f80).unwrap(); // all masked, round down
        let stage2 = CODE + 0x100;
        let stage3 = CODE + 0x200;
        // 16-bit, at 1000:0000: cli; lgdt [0x500]; mov eax, cr0; or eax, 1;
        // mov cr0, eax; jmp dword 0x30:stage2.
        let mut stage1 = vec![0xfa, 0x0f, 0x01, 0x16, 0x00, 0x05, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01];
        stage1.extend([0x0f, 0x22, 0xc0, 0x66, 0xea]);
        stage1.extend((stage2 as u32).to_le_bytes());
        stage1.extend(SEL_CODE32.to_le_bytes());
        m.write(CODE, &stage1).unwrap();
        let pae_sse_xsave = cr::CR4_PAE | cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT | cr::CR4_OSXSAVE;
        let code = asm_at(32, stage2, |a| {
            a.mov(ax, i32::from(SEL_DATA))?;
            for s in [ds, es, fs, gs, ss] {
                a.mov(s, ax)?;
            }
            a.mov(esp, KSTACK as u32)?;
            a.mov(eax, cr4)?;
            a.or(eax, pae_sse_xsave as u32)?;
            a.mov(cr4, eax)?;
            a.mov(eax, PML4 as u32)?;
            a.mov(cr3, eax)?;
            a.mov(ecx, msr::IA32_EFER)?;
            a.rdmsr()?;
            a.or(eax, (cr::EFER_LME | cr::EFER_NXE | cr::EFER_SCE) as u32)?;
            a.wrmsr()?;
            a.mov(eax, cr0)?;
            a.or(eax, (cr::CR0_PG | cr::CR0_WP) as u32)?;
            a.mov(cr0, eax)?;
            // jmp 0x08:stage3
            let mut far = vec![0xea];
            far.extend((stage3 as u32).to_le_bytes());
            far.extend(SEL_CODE64.to_le_bytes());
            a.db(&far)
        });
        m.write(stage2, &code).unwrap();
        let code = asm_at(64, stage3, |a| {
            a.mov(eax, IDT_PTR as u32)?;
            a.lidt(ptr(rax))?;
            a.xor(ecx, ecx)?;
            a.mov(eax, 7)?;
            a.xor(edx, edx)?;
            a.xsetbv()?;
            a.mov(r12, DATA)?;
            a.fninit()?;
            a.fld1()?;
            a.fldpi()?;
            a.fmul_2(st0, st1)?;
            a.fld(qword_ptr(r12))?;
            a.mov(rax, 0x4049_0fdb_3fc0_0001u64)?;
            a.movq(xmm1, rax)?;
            a.movdqa(xmm2, xmm1)?;
            a.addps(xmm2, xmm1)?;
            a.pshufd(xmm3, xmm2, 0x1b)?;
            a.vbroadcastss(ymm4, xmm2)?;
            a.vaddps(ymm5, ymm4, ymm4)?;
            a.ldmxcsr(dword_ptr(r12 + 8))?;
            a.mov(ecx, msr::IA32_LSTAR)?;
            a.mov(eax, LSTAR as u32)?;
            a.mov(edx, (LSTAR >> 32) as u32)?;
            a.wrmsr()?;
            a.mov(ecx, 0x201)?;
            a.mov(eax, PHYSMASK0 as u32)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
            a.mov(eax, 5)?;
            a.mov(cr8, rax)?;
            a.rdrand(rax)?;
            a.mov(ebx, 3)?;
            a.sub(rbx, 5)?;
            a.push(rbx)
        });
        m.write(stage3, &code).unwrap();
        let next = stage3 + code.len() as u64;
        m.write(next, &continuation(next)).unwrap();
        c.flush_code_cache();
        let mut steps = 0;
        while c.state.rip != next {
            assert_eq!(c.step(), StopReason::Budget, "at {:#x}", c.state.rip);
            steps += 1;
            assert!(steps < 100, "the program did not reach {next:#x}");
        }
        assert_eq!(c.stats.exceptions, 0);
        c
    }

    /// A fresh CPU of `c`'s model over a copy of the memory `c` uses.
    fn fresh_like(c: &Cpu) -> Cpu {
        let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
        let mut bytes = vec![0; USED];
        c.mem().read(0, &mut bytes).unwrap();
        mem.write(0, &bytes).unwrap();
        let mut fresh = Cpu::new(mem, Box::new(NoDevices));
        fresh.set_xsave(c.xsave());
        fresh.set_model(if c.crypto() { crate::cpuid::Model::Max } else { crate::cpuid::Model::V2 });
        fresh.set_avx(c.avx);
        fresh
    }

    #[test]
    fn a_configured_cpu_survives_the_round_trip_and_runs_on_identically() {
        let mut a = configured();
        let s = &a.state;
        assert!(s.code64() && s.cpl == 0 && s.cr4 & cr::CR4_OSXSAVE != 0);
        assert_eq!(s.lazy.op, FlagOp::Sub as u32, "the flags are lazy");
        assert_eq!((s.xcr0, s.mxcsr, s.cr8), (7, 0x3f80, 5));
        assert_ne!(s.fpu.ftw, 0xffff, "x87 registers in use");
        assert!(s.xmm[3] != 0 && s.ymm_hi[5] != 0);
        assert_eq!(s.msr.lstar, LSTAR);
        assert_eq!(s.msr_table.get(0x201), Some(PHYSMASK0));

        let mut b = fresh_like(&a);
        let saved = assert_round_trip(&a, &mut b);
        assert!(saved.rng.is_some(), "the seeded generator is saved");
        assert_eq!(saved.state, a.state);

        assert_eq!(a.run(100), StopReason::Halted);
        assert_eq!(b.run(100), StopReason::Halted);
        assert_eq!((a.stats.exceptions, b.stats.exceptions), (0, 0));
        assert_eq!(a.save(), b.save(), "the two CPUs went on differently");
        let (mut ma, mut mb) = (vec![0; USED], vec![0; USED]);
        a.mem().read(0, &mut ma).unwrap();
        b.mem().read(0, &mut mb).unwrap();
        assert!(ma == mb, "the two CPUs wrote memory differently");
        // The continuation did read what was restored.
        let s = &b.state;
        assert_eq!(s.gpr[3], 0, "ADC took CF from the lazy SUB");
        assert_eq!((s.gpr[9], s.gpr[10]), (LSTAR & 0xffff_ffff, LSTAR >> 32));
        assert_eq!((s.gpr[0], s.gpr[11]), (PHYSMASK0, 5));
        assert_ne!(s.gpr[8], 0);
    }

    #[test]
    fn the_states_the_test_modes_reach_are_taken() {
        let mut user32 = prot_mode();
        to_user(&mut user32, SEL_UCODE32);
        let mut user64 = long_mode();
        to_user(&mut user64, SEL_UCODE64);
        let cpus = [new_cpu().0, real_mode(), prot_mode(), long_mode(), v86_mode(3), user32, user64];
        for c in &cpus {
            assert_round_trip(c, &mut fresh_like(c));
            assert_round_trip(&c.state, &mut CpuState::reset());
        }
    }

    /// Between setting CR0.PE and the far jump that loads CS, CS keeps its
    /// real-mode selector whatever its RPL, and the CPL stays 0.
    #[test]
    fn a_state_between_setting_pe_and_loading_cs_is_taken() {
        let mut c = real_mode();
        c.state.seg[sreg::CS] = Segment::real(0x0ff3, c.state.seg[sreg::CS].attr);
        c.state.rip = 0xd0; // linear CODE
        place(&mut c, &[0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01, 0x0f, 0x22, 0xc0, 0x90]);
        for _ in 0..3 {
            c.step();
        }
        assert!(c.state.protected() && c.state.cpl == 0 && c.state.seg[sreg::CS].selector & 3 == 3);
        assert_round_trip(&c, &mut fresh_like(&c));
    }

    /// A corruption of a state, with the field its refusal must name.
    type Case<S> = (&'static str, fn(&mut S));

    /// `good` is taken by a CPU like `target`, and each of its corruptions in
    /// `cases` is refused by `target` naming the field, with nothing changed.
    fn refuse_all(target: &mut Cpu, good: &CpuSnapshot, cases: &[Case<CpuSnapshot>]) {
        fresh_like(target).restore(good).unwrap();
        for (field, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let flushes = target.mmu.flushes;
            let e = assert_refused(target, &bad);
            assert_eq!(e.field, *field, "{e}");
            assert_eq!(e.part, PART);
            assert_eq!(target.mmu.flushes, flushes, "a refused restore flushed the TLB");
        }
    }

    #[test]
    fn corrupt_states_are_refused_naming_the_field() {
        let mut target = configured();
        let good = target.save();
        let cases: &[Case<CpuSnapshot>] = &[
            ("cpl", |s| s.state.cpl = 4),
            ("cpl", |s| s.state.cpl = 3), // CS.RPL is 0 in 64-bit code
            ("cr4", |s| s.state.cr4 |= 1 << 22),
            ("cr4", |s| s.state.cr4 |= cr::CR4_VME),
            ("cr4", |s| s.state.cr4 &= !cr::CR4_PAE),
            ("mxcsr", |s| s.state.mxcsr |= 1 << 16),
            ("lazy.op", |s| s.state.lazy.op = 8),
            ("lazy.size", |s| s.state.lazy.size = 3),
            ("rflags", |s| s.state.rflags |= 1 << 3),
            ("rflags", |s| s.state.rflags &= !flags::FIXED),
            ("cr0", |s| s.state.cr0 &= !cr::CR0_PE),
            ("cr0", |s| s.state.cr0 |= 1 << 32),
            ("efer", |s| s.state.efer |= 1 << 9),
            ("efer", |s| s.state.efer &= !cr::EFER_LMA),
            ("cr3", |s| s.state.cr3 |= 1 << 52),
            ("cr8", |s| s.state.cr8 = 16),
            ("xcr0", |s| s.state.xcr0 = 5),
            ("xcr0", |s| s.state.xcr0 = 2),
            ("xcr0", |s| s.state.xcr0 = 0xf),
            ("dr[7]", |s| s.state.dr[7] |= 1 << 32),
            ("halted", |s| s.state.halted = 2),
            ("interrupt_shadow", |s| s.state.interrupt_shadow = 0xff),
            ("nmi_blocked", |s| s.state.nmi_blocked = 2),
            ("events.deferred_debug", |s| s.state.events.deferred_debug = dr6::BT),
            ("seg[SS].attr", |s| s.state.seg[sreg::SS].attr |= 1 << 8),
            ("tr.attr", |s| s.state.tr.attr |= 1 << 17),
            ("seg[CS].attr", |s| s.state.seg[sreg::CS].attr |= seg_attr::UNUSABLE),
            ("seg[CS].attr", |s| s.state.seg[sreg::CS].attr |= seg_attr::DB),
            ("gdtr.limit", |s| s.state.gdtr.limit = 0x1_0000),
            ("fpu.fcw", |s| s.state.fpu.fcw |= 0x80),
            ("fpu.fcw", |s| s.state.fpu.fcw &= !0x40),
            ("fpu.fop", |s| s.state.fpu.fop = 0x800),
            ("msr.lstar", |s| s.state.msr.lstar = 0x8000_0000_0000_0000),
            ("msr.pat", |s| s.state.msr.pat = 0x0002_0000),
            ("msr.sysenter_cs", |s| s.state.msr.sysenter_cs = 0x1_0010),
            ("seg[GS].base", |s| s.state.seg[sreg::GS].base = 1 << 47),
            ("msr_table", |s| s.state.msr_table.values[MsrTable::slot(msr::PERF_EVT_SEL0).unwrap()] = 1 << 21),
            ("msr_table", |s| s.state.msr_table.values[MsrTable::slot(msr::PERF_CTR0).unwrap()] = 1 << 48),
            ("rng.used", |s| s.rng.as_mut().unwrap().used = 17),
            ("model", |s| s.model.crypto = true),
            ("model", |s| s.model.avx = false),
        ];
        refuse_all(&mut target, &good, cases);
        let e = assert_refused(&mut target, &CpuSnapshot { state: CpuState { cpl: 4, ..good.state }, ..good });
        assert_eq!(
            e.to_string(),
            "cannot restore x86 CPU: cpl is 4, above the largest allowed 3; the state is corrupt or from an \
             incompatible build"
        );
    }

    /// Without AVX in the model XSETBV refuses the YMM component, and so
    /// does restore; without XSAVE CR4.OSXSAVE is reserved.
    #[test]
    fn the_target_model_decides_xcr0_and_osxsave() {
        let mut c = long_mode();
        c.state.xcr0 = 3;
        c.state.cr4 |= cr::CR4_OSXSAVE;
        c.set_state(c.state);
        let good = c.save();
        let cases: &[Case<CpuSnapshot>] = &[("xcr0", |s| s.state.xcr0 = 7)];
        refuse_all(&mut c, &good, cases);
        // A CpuState alone is checked against the largest model.
        let mut s = CpuState::reset();
        s.restore(&CpuState { xcr0: 7, ..good.state }).unwrap();
        assert_eq!(assert_refused(&mut s, &CpuState { xcr0: 0xf, ..good.state }).field, "xcr0");

        let mut c = long_mode();
        c.set_xsave(false);
        let good = c.save();
        let cases: &[Case<CpuSnapshot>] = &[("cr4", |s| s.state.cr4 |= cr::CR4_OSXSAVE)];
        refuse_all(&mut c, &good, cases);
    }

    #[test]
    fn a_cpu_state_alone_refuses_what_a_cpu_refuses() {
        let mut target = long_mode().state;
        let good = configured().state;
        assert_round_trip(&good, &mut target);
        let cases: &[Case<CpuState>] = &[
            ("cpl", |s| s.cpl = 4),
            ("cr4", |s| s.cr4 |= 1 << 23),
            ("mxcsr", |s| s.mxcsr |= 1 << 31),
            ("lazy.op", |s| s.lazy.op = u32::MAX),
        ];
        for (field, corrupt) in cases {
            let mut bad = good;
            corrupt(&mut bad);
            assert_eq!(assert_refused(&mut target, &bad).field, *field);
        }
    }

    #[test]
    fn restoring_drops_the_decoded_code_and_the_tlb() {
        let mut c = long_mode();
        place(&mut c, &[0x90, 0xf4]);
        assert_eq!(c.run(10), StopReason::Halted);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        c.add_invalidation_listener(Box::new(move |i| log.lock().unwrap().push(i)));
        let (flushes, decoded) = (c.mmu.flushes, c.stats.blocks_decoded);
        let mut s = c.save();
        s.state.rip = CODE;
        s.state.halted = 0;
        c.restore(&s).unwrap();
        assert_eq!(*seen.lock().unwrap(), [Invalidation::All]);
        assert!(c.mmu.flushes > flushes, "the TLB was not flushed");
        assert!(c.prev_block.is_none());
        assert_eq!(c.run(10), StopReason::Halted);
        assert!(c.stats.blocks_decoded > decoded, "the block at RIP was not decoded again");
    }

    /// A generator drawing from the host is not saved: the restored CPU
    /// draws from the host too, even if it was seeded.
    #[test]
    fn only_a_seeded_generator_is_saved() {
        let mut host = long_mode();
        host.rdrand_u64();
        let s = host.save();
        assert_eq!(s.rng, None);
        let mut seeded = long_mode();
        seeded.seed_random(7);
        assert!(seeded.save().rng.is_some());
        seeded.restore(&s).unwrap();
        assert_eq!(seeded.save(), s);
        assert!(!seeded.sys.deterministic && seeded.sys.rng.is_none());
    }

    #[test]
    fn a_seeded_generator_continues_its_stream_at_every_position() {
        for draws in [0, 1, 7, 8, 9, 16, 23] {
            let mut a = long_mode();
            a.seed_random(99);
            for _ in 0..draws {
                a.rdrand_u64();
            }
            let mut b = long_mode();
            assert_round_trip(&a, &mut b);
            for _ in 0..20 {
                assert_eq!(a.rdrand_u64(), b.rdrand_u64(), "after {draws} draws");
            }
        }
    }
}
