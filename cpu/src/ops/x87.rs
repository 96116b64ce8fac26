//! x87 FPU instructions (SDM Vol. 2, the F* pages; Vol. 1 chapter 8), EMMS,
//! FXSAVE and FXRSTOR.
//!
//! Conventions of this module:
//! - Every x87 instruction first checks #NM (CR0.EM or CR0.TS; WAIT only when
//!   CR0.TS and CR0.MP are both set), then, for the waiting instructions,
//!   a pending unmasked exception (FSW.ES) raises #MF. With CR0.NE = 0 the
//!   PC's FERR#/IRQ13 route would apply; this model reports the error the
//!   same way as with NE = 1 (#MF at the next waiting instruction) and says so
//!   once in the log.
//! - Handlers read memory, compute on a copy of the FPU state, write memory,
//!   and only then store the copy back, so a #PF or #GP leaves the FPU as it
//!   was.
//! - Masked exceptions deliver the SDM's masked responses. An unmasked IE, DE
//!   or ZE suppresses the result (and any pop); an unmasked OE or UE delivers
//!   the bias-adjusted result to a register destination and leaves a memory
//!   destination unchanged. Either way ES is set and the next waiting
//!   instruction raises #MF.
//! - FIP, FCS, FOP (and FDP, FDS for memory operands) are updated by every
//!   non-control instruction that completes, including those whose exception
//!   is unmasked.
//! - C1 is the rounded-up indicator after arithmetic, 0 after stack
//!   underflow, 1 after stack overflow. Condition codes the SDM leaves
//!   undefined are left unchanged.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use iced_x86::{Code, CodeSize, Instruction, MemorySize, OpKind, Register};

use super::{ea, mem_seg, reg_write, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault, GP0};
use crate::state::{cr, flags as rf, sreg, FpuState};
use crate::x87::softfloat::{self as sf, Ctx, DE, IE, INDEFINITE, PE, ZE};
use crate::x87::{self, fsw, trans, EnvLayout, X80};

pub fn handler(code: Code) -> Option<Handler> {
    use Code::*;
    Some(match code {
        // Loads and stores.
        Fld_m32fp | Fld_m64fp | Fld_m80fp => fld_m,
        Fld_sti => fld_st,
        Fst_m32fp | Fst_m64fp => fst_m::<false>,
        Fstp_m32fp | Fstp_m64fp | Fstp_m80fp => fst_m::<true>,
        Fst_sti => fst_st::<false>,
        Fstp_sti | Fstpnce_sti | Fstp_sti_DFD0 | Fstp_sti_DFD8 => fst_st::<true>,
        Fild_m16int | Fild_m32int | Fild_m64int => fild,
        Fist_m16int | Fist_m32int => fist::<STORE>,
        Fistp_m16int | Fistp_m32int | Fistp_m64int => fist::<STORE_POP>,
        Fisttp_m16int | Fisttp_m32int | Fisttp_m64int => fist::<TRUNC_POP>,
        Fbld_m80bcd => fbld,
        Fbstp_m80bcd => fbstp,
        Fld1 | Fldz | Fldpi | Fldl2e | Fldl2t | Fldlg2 | Fldln2 => fld_const,
        Fxch_st0_sti | Fxch_st0_sti_DDC8 | Fxch_st0_sti_DFC8 => fxch,
        Fcmovb_st0_sti | Fcmove_st0_sti | Fcmovbe_st0_sti | Fcmovu_st0_sti | Fcmovnb_st0_sti | Fcmovne_st0_sti
        | Fcmovnbe_st0_sti | Fcmovnu_st0_sti => fcmov,

        // Basic arithmetic.
        Fadd_m32fp | Fadd_m64fp | Fiadd_m16int | Fiadd_m32int => arith_m::<ADD>,
        Fmul_m32fp | Fmul_m64fp | Fimul_m16int | Fimul_m32int => arith_m::<MUL>,
        Fsub_m32fp | Fsub_m64fp | Fisub_m16int | Fisub_m32int => arith_m::<SUB>,
        Fsubr_m32fp | Fsubr_m64fp | Fisubr_m16int | Fisubr_m32int => arith_m::<SUBR>,
        Fdiv_m32fp | Fdiv_m64fp | Fidiv_m16int | Fidiv_m32int => arith_m::<DIV>,
        Fdivr_m32fp | Fdivr_m64fp | Fidivr_m16int | Fidivr_m32int => arith_m::<DIVR>,
        Fadd_st0_sti | Fadd_sti_st0 => arith_r::<ADD, false>,
        Fmul_st0_sti | Fmul_sti_st0 => arith_r::<MUL, false>,
        Fsub_st0_sti | Fsub_sti_st0 => arith_r::<SUB, false>,
        Fsubr_st0_sti | Fsubr_sti_st0 => arith_r::<SUBR, false>,
        Fdiv_st0_sti | Fdiv_sti_st0 => arith_r::<DIV, false>,
        Fdivr_st0_sti | Fdivr_sti_st0 => arith_r::<DIVR, false>,
        Faddp_sti_st0 => arith_r::<ADD, true>,
        Fmulp_sti_st0 => arith_r::<MUL, true>,
        Fsubp_sti_st0 => arith_r::<SUB, true>,
        Fsubrp_sti_st0 => arith_r::<SUBR, true>,
        Fdivp_sti_st0 => arith_r::<DIV, true>,
        Fdivrp_sti_st0 => arith_r::<DIVR, true>,
        Fsqrt => fsqrt,
        Frndint => frndint,
        Fabs => fabs,
        Fchs => fchs,
        Fprem => fprem::<false>,
        Fprem1 => fprem::<true>,
        Fscale => fscale,
        Fxtract => fxtract,

        // Comparisons and classification.
        Fcom_m32fp | Fcom_m64fp | Ficom_m16int | Ficom_m32int => fcom_m::<0>,
        Fcomp_m32fp | Fcomp_m64fp | Ficomp_m16int | Ficomp_m32int => fcom_m::<1>,
        Fcom_st0_sti | Fcom_st0_sti_DCD0 => fcom_r::<0, false>,
        Fcomp_st0_sti | Fcomp_st0_sti_DCD8 | Fcomp_st0_sti_DED0 => fcom_r::<1, false>,
        Fcompp => fcom_r::<2, false>,
        Fucom_st0_sti => fcom_r::<0, true>,
        Fucomp_st0_sti => fcom_r::<1, true>,
        Fucompp => fcom_r::<2, true>,
        Fcomi_st0_sti => fcomi::<false, false>,
        Fcomip_st0_sti => fcomi::<true, false>,
        Fucomi_st0_sti => fcomi::<false, true>,
        Fucomip_st0_sti => fcomi::<true, true>,
        Ftst => ftst,
        Fxam => fxam,

        // Transcendentals.
        F2xm1 => f2xm1,
        Fyl2x => fyl2x,
        Fyl2xp1 => fyl2xp1,
        Fpatan => fpatan,
        Fptan => fptan,
        Fsin => fsin,
        Fcos => fcos,
        Fsincos => fsincos,

        // Control.
        Fninit => fninit::<false>,
        Finit => fninit::<true>,
        Fnclex => fnclex::<false>,
        Fclex => fnclex::<true>,
        Fnstsw_m2byte | Fnstsw_AX => fnstsw::<false>,
        Fstsw_m2byte | Fstsw_AX => fnstsw::<true>,
        Fnstcw_m2byte => fnstcw::<false>,
        Fstcw_m2byte => fnstcw::<true>,
        Fldcw_m2byte => fldcw,
        Fnstenv_m14byte | Fnstenv_m28byte => fnstenv::<false>,
        Fstenv_m14byte | Fstenv_m28byte => fnstenv::<true>,
        Fldenv_m14byte | Fldenv_m28byte => fldenv,
        Fnsave_m94byte | Fnsave_m108byte => fnsave::<false>,
        Fsave_m94byte | Fsave_m108byte => fnsave::<true>,
        Frstor_m94byte | Frstor_m108byte => frstor,
        Ffree_sti => ffree::<false>,
        Ffreep_sti => ffree::<true>,
        Fincstp => fincstp,
        Fdecstp => fdecstp,
        Fnop => fnop,
        // 8087/80287 controls: no-ops from the 387 on.
        Fneni | Fndisi | Fnsetpm => fnop_nowait,
        Feni | Fdisi | Fsetpm => fnop,
        Wait => fwait,

        Emms => emms,
        Fxsave_m512byte | Fxsave64_m512byte => fxsave,
        Fxrstor_m512byte | Fxrstor64_m512byte => fxrstor,
        _ => return None,
    })
}

const ADD: u8 = 0;
const MUL: u8 = 1;
const SUB: u8 = 2;
const SUBR: u8 = 3;
const DIV: u8 = 4;
const DIVR: u8 = 5;

const STORE: u8 = 0;
const STORE_POP: u8 = 1;
const TRUNC_POP: u8 = 2;

fn apply(op: u8, a: X80, b: X80, c: &mut Ctx) -> X80 {
    match op {
        ADD => sf::add(a, b, c),
        MUL => sf::mul(a, b, c),
        SUB => sf::sub(a, b, c),
        SUBR => sf::sub(b, a, c),
        DIV => sf::div(a, b, c),
        _ => sf::div(b, a, c),
    }
}

// ---- entry checks and bookkeeping ---------------------------------------------

fn fpu_error(cpu: &Cpu) -> Exception {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if cpu.state.cr0 & cr::CR0_NE == 0 && !LOGGED.swap(true, AtomicOrdering::Relaxed) {
        tracing::info!(
            target: "cpu",
            "x87 error with CR0.NE=0: the FERR#/IRQ13 route is not modelled; raising #MF as with NE=1"
        );
    }
    Exception::FpuError
}

/// #NM for any x87 instruction.
#[inline]
fn check_nm(cpu: &Cpu) -> Fault<()> {
    if cpu.state.cr0 & (cr::CR0_EM | cr::CR0_TS) != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    Ok(())
}

/// Entry of a waiting x87 instruction: #NM, then a pending #MF.
#[inline]
fn enter(cpu: &Cpu) -> Fault<()> {
    check_nm(cpu)?;
    if cpu.state.fpu.fsw & fsw::ES != 0 {
        return Err(fpu_error(cpu));
    }
    Ok(())
}

/// Entry of an instruction that waits only when `wait` (the FN*/F* pairs).
#[inline]
fn enter_if(cpu: &Cpu, wait: bool) -> Fault<()> {
    if wait {
        enter(cpu)
    } else {
        check_nm(cpu)
    }
}

#[inline]
fn sti(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ST0 as usize) & 7
}

/// ModRM mod and r/m fields of a memory operand, as the encoding had them.
fn modrm_mem(insn: &Instruction) -> u16 {
    use Register as R;
    let (base, index, dsz) = (insn.memory_base(), insn.memory_index(), insn.memory_displ_size());
    let disp_mod = |d: u32| match d {
        0 => 0u16,
        1 => 1,
        _ => 2,
    };
    if base.size() == 2 || index.size() == 2 || (base == R::None && index == R::None && dsz == 2) {
        let rm = match (base, index) {
            (R::BX, R::SI) => 0,
            (R::BX, R::DI) => 1,
            (R::BP, R::SI) => 2,
            (R::BP, R::DI) => 3,
            (R::SI, R::None) => 4,
            (R::DI, R::None) => 5,
            (R::BP, R::None) => 6,
            (R::BX, R::None) => 7,
            _ => return 6,
        };
        return (disp_mod(dsz) << 6) | rm;
    }
    if base == R::RIP || base == R::EIP {
        return 5;
    }
    if base == R::None {
        return if index != R::None || insn.code_size() == CodeSize::Code64 { 4 } else { 5 };
    }
    let rm = if index != R::None || matches!(base, R::ESP | R::RSP | R::R12D | R::R12) {
        4
    } else {
        (base.number() & 7) as u16
    };
    (disp_mod(dsz) << 6) | rm
}

/// The 11-bit FOP: low three bits of the first opcode byte and the ModR/M byte.
fn fop(insn: &Instruction) -> u16 {
    let oc = insn.op_code();
    let opc = oc.op_code() as u16;
    if oc.op_code_len() == 2 {
        let mut v = opc & 0x7ff;
        for i in 0..insn.op_count() {
            if insn.op_kind(i) == OpKind::Register {
                let n = sti(insn.op_register(i));
                if n != 0 && insn.op_register(i).is_st() {
                    v += n as u16;
                    break;
                }
            }
        }
        v
    } else {
        let reg = oc.group_index().max(0) as u16;
        ((opc & 7) << 8) | (reg << 3) | modrm_mem(insn)
    }
}

/// Record the last-instruction pointers of a non-control instruction.
fn note(cpu: &Cpu, insn: &Instruction, f: &mut FpuState, mem: Option<(usize, u64)>) {
    f.fip = cpu.insn_start;
    f.fcs = cpu.state.seg[sreg::CS].selector;
    f.fop = fop(insn);
    if let Some((seg, off)) = mem {
        f.fdp = off;
        f.fds = cpu.state.seg[seg].selector;
    }
}

#[inline]
fn mem_operand(cpu: &Cpu, insn: &Instruction) -> (usize, u64) {
    (mem_seg(insn), ea(&cpu.state, insn))
}

/// Stack underflow: IE and SF with C1 = 0. True when IE is masked (the
/// caller then delivers the masked response).
fn underflow(f: &mut FpuState) -> bool {
    x87::raise(f, fsw::IE | fsw::SF);
    x87::set_c1(f, false);
    f.fcw & fsw::IE != 0
}

/// Stack overflow: IE and SF with C1 = 1.
fn overflow(f: &mut FpuState) -> bool {
    x87::raise(f, fsw::IE | fsw::SF);
    x87::set_c1(f, true);
    f.fcw & fsw::IE != 0
}

/// The exceptions an operation reports: invalid operation and divide-by-zero
/// take priority over the denormal-operand exception (SDM Vol. 1 §8.7 and
/// §4.9.2), which is then not reported.
fn prioritized(flags: u16) -> u16 {
    if flags & (IE | ZE) != 0 {
        flags & !DE
    } else {
        flags
    }
}

/// An instruction stopped by an unmasked exception: its flags are recorded
/// and C1 is cleared.
fn stop(f: &mut FpuState, flags: u16) {
    x87::raise(f, flags);
    x87::set_c1(f, false);
}

/// Fold an operation's exceptions into FSW. Returns whether the result is to
/// be written: false when IE, DE or ZE occurred unmasked.
fn commit(f: &mut FpuState, c: &Ctx) -> bool {
    let flags = prioritized(c.flags);
    let pre = flags & (IE | DE | ZE);
    if pre & !f.fcw != 0 {
        stop(f, pre);
        return false;
    }
    x87::raise(f, flags);
    x87::set_c1(f, flags & PE != 0 && c.round_up);
    true
}

/// Conversion flags (DE from a denormal memory operand) merged with those of
/// the operation on `a` and that operand: a NaN `a` decides the result
/// before any denormal is looked at, and IE or ZE take priority over DE.
fn merge_conv(c: &mut Ctx, conv: u16, a: X80) {
    if c.flags & (IE | ZE) == 0 && !a.is_nan() {
        c.flags |= conv;
    }
}

/// Push with the overflow check; `c` carries the exceptions of producing `v`.
fn push_checked(f: &mut FpuState, v: X80, c: &Ctx) {
    if !x87::is_empty(f, 7) {
        if overflow(f) {
            x87::push(f, INDEFINITE);
        }
        return;
    }
    if commit(f, c) {
        x87::push(f, v);
    }
}

/// Alignment (for #AC) of 80-bit operands: double extended-precision
/// floats and packed BCD are checked as quadwords (SDM Vol. 3A Table 6-7).
const M80_ALIGN: u32 = 8;

/// Alignment (for #AC) of the FSTENV/FLDENV/FSAVE/FRSTOR images: 2 with a
/// 16-bit operand size, else 4 (SDM Vol. 3A Table 6-7).
fn env_align(layout: EnvLayout) -> u32 {
    if layout.size32 {
        4
    } else {
        2
    }
}

fn read_m80(cpu: &mut Cpu, seg: usize, off: u64) -> Fault<X80> {
    let mut b = [0u8; 10];
    cpu.read_mem_buf_aligned(seg, off, &mut b, M80_ALIGN)?;
    let mut m = [0u8; 8];
    m.copy_from_slice(&b[..8]);
    Ok(X80 { m: u64::from_le_bytes(m), se: u16::from_le_bytes([b[8], b[9]]) })
}

fn m80_bytes(v: X80) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&v.m.to_le_bytes());
    b[8..].copy_from_slice(&v.se.to_le_bytes());
    b
}

/// Read a numeric memory operand (float or integer) as an exact extended
/// value; a denormal float raises DE in `c`.
fn read_num(cpu: &mut Cpu, insn: &Instruction, seg: usize, off: u64, c: &mut Ctx) -> Fault<X80> {
    Ok(match insn.memory_size() {
        MemorySize::Float32 => sf::from_f32(cpu.read_mem(seg, off, 4)? as u32, c),
        MemorySize::Float64 => sf::from_f64(cpu.read_mem(seg, off, 8)?, c),
        MemorySize::Int16 => sf::from_i64(i64::from(cpu.read_mem(seg, off, 2)? as u16 as i16)),
        MemorySize::Int32 => sf::from_i64(i64::from(cpu.read_mem(seg, off, 4)? as u32 as i32)),
        MemorySize::Int64 => sf::from_i64(cpu.read_mem(seg, off, 8)? as i64),
        _ => read_m80(cpu, seg, off)?,
    })
}

// ---- loads and stores ---------------------------------------------------------

fn fld_m(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let mut f = cpu.state.fpu;
    let mut c = Ctx::from_fcw(f.fcw, false);
    let mut v = read_num(cpu, insn, seg, off, &mut c)?;
    if insn.memory_size() != MemorySize::Float80 && v.is_snan() {
        c.flags |= IE;
        v = v.quiet();
    }
    note(cpu, insn, &mut f, Some((seg, off)));
    push_checked(&mut f, v, &c);
    cpu.state.fpu = f;
    Ok(())
}

fn fld_st(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let i = sti(insn.op0_register());
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    // An empty source is a stack underflow even when ST(7) is in use too.
    if x87::is_empty(&f, i) {
        if underflow(&mut f) {
            x87::push(&mut f, INDEFINITE);
        }
    } else if !x87::is_empty(&f, 7) {
        if overflow(&mut f) {
            x87::push(&mut f, INDEFINITE);
        }
    } else {
        let v = x87::st(&f, i);
        x87::push(&mut f, v);
        x87::set_c1(&mut f, false);
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fild(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    fld_m(cpu, insn)
}

fn fld_const(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    let rc = sf::Rc::from_bits(f.fcw >> 10);
    let k = |w: trans::W| sf::constant(false, w.e, w.m, rc);
    let v = match insn.code() {
        Code::Fld1 => sf::ONE,
        Code::Fldz => sf::ZERO,
        Code::Fldpi => k(trans::PI),
        Code::Fldl2e => k(trans::LOG2E),
        Code::Fldl2t => k(trans::L2T),
        Code::Fldlg2 => k(trans::LG2),
        _ => k(trans::LN2),
    };
    note(cpu, insn, &mut f, None);
    let c = Ctx::from_fcw(f.fcw, false);
    push_checked(&mut f, v, &c);
    cpu.state.fpu = f;
    Ok(())
}

/// The checks a store's destination gets before any x87 exception is looked
/// at: the segment checks and, on the CPU as well, the alignment check (an
/// #AC comes before an unmasked exception that suppresses the store).
fn check_store_dest(cpu: &Cpu, seg: usize, off: u64, len: u32, align: u32) -> Fault<()> {
    let lin = cpu.linear(seg, off, u64::from(len), true)?;
    cpu.check_alignment(lin, align)
}

fn fst_m<const POP: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let size = insn.memory_size();
    let (n, align) = match size {
        MemorySize::Float32 => (4, 4),
        MemorySize::Float64 => (8, 8),
        _ => (10, M80_ALIGN),
    };
    check_store_dest(cpu, seg, off, n as u32, align)?;
    let mut f = cpu.state.fpu;
    let mut store: Option<[u8; 10]> = None;
    let mut do_pop = POP;
    if x87::is_empty(&f, 0) {
        if underflow(&mut f) {
            store = Some(m80_bytes(INDEFINITE));
        } else {
            do_pop = false;
        }
        if let (Some(b), MemorySize::Float32) = (&mut store, size) {
            b[..4].copy_from_slice(&0xffc0_0000u32.to_le_bytes());
        } else if let (Some(b), MemorySize::Float64) = (&mut store, size) {
            b[..8].copy_from_slice(&0xfff8_0000_0000_0000u64.to_le_bytes());
        }
    } else {
        let v = x87::st(&f, 0);
        let mut c = Ctx::from_fcw(f.fcw, false);
        let mut b = [0u8; 10];
        match size {
            MemorySize::Float32 => b[..4].copy_from_slice(&sf::to_f32(v, &mut c).to_le_bytes()),
            MemorySize::Float64 => b[..8].copy_from_slice(&sf::to_f64(v, &mut c).to_le_bytes()),
            _ => b = m80_bytes(v),
        }
        // FST has no denormal-operand exception (SDM FST: #IS #IA #U #O #P).
        c.flags &= !DE;
        if c.flags & !f.fcw & (IE | sf::OE | sf::UE) != 0 {
            // Unmasked: the destination and the stack are left alone. An
            // unmasked IE is reported alone; an unmasked overflow or
            // underflow without the precision exception of a result that is
            // not stored.
            let flags = if c.flags & IE & !f.fcw != 0 { IE } else { c.flags & !PE };
            stop(&mut f, flags);
            do_pop = false;
        } else {
            x87::raise(&mut f, c.flags);
            x87::set_c1(&mut f, c.flags & PE != 0 && c.round_up);
            store = Some(b);
        }
    }
    if let Some(b) = store {
        cpu.write_mem_buf_aligned(seg, off, &b[..n], align)?;
    }
    note(cpu, insn, &mut f, Some((seg, off)));
    if do_pop {
        x87::pop(&mut f);
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fst_st<const POP: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let i = sti(insn.op0_register());
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    if x87::is_empty(&f, 0) {
        if underflow(&mut f) {
            x87::set_st(&mut f, i, INDEFINITE);
            if POP {
                x87::pop(&mut f);
            }
        }
    } else {
        let v = x87::st(&f, 0);
        x87::set_st(&mut f, i, v);
        x87::set_c1(&mut f, false);
        if POP {
            x87::pop(&mut f);
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fist<const MODE: u8>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let size: u32 = match insn.memory_size() {
        MemorySize::Int16 => 2,
        MemorySize::Int32 => 4,
        _ => 8,
    };
    check_store_dest(cpu, seg, off, size, size)?;
    let indefinite = 1u64 << (size * 8 - 1);
    let mut f = cpu.state.fpu;
    let mut store = None;
    let mut do_pop = MODE != STORE;
    if x87::is_empty(&f, 0) {
        if underflow(&mut f) {
            store = Some(indefinite);
        } else {
            do_pop = false;
        }
    } else {
        let mut c = Ctx::from_fcw(f.fcw, false);
        let value = match sf::to_int(x87::st(&f, 0), MODE == TRUNC_POP, &mut c) {
            Some((neg, mag)) => {
                let limit = 1u64 << (size * 8 - 1);
                if (neg && mag > limit) || (!neg && mag >= limit) {
                    None
                } else {
                    Some(if neg { mag.wrapping_neg() } else { mag })
                }
            }
            None => None,
        };
        if value.is_none() {
            c.flags = (c.flags & !PE) | IE;
            c.round_up = false;
        }
        if commit(&mut f, &c) {
            store = Some(value.unwrap_or(indefinite));
        } else {
            do_pop = false;
        }
    }
    if let Some(v) = store {
        cpu.write_mem(seg, off, size, v)?;
    }
    note(cpu, insn, &mut f, Some((seg, off)));
    if do_pop {
        x87::pop(&mut f);
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fbld(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let mut b = [0u8; 10];
    cpu.read_mem_buf_aligned(seg, off, &mut b, M80_ALIGN)?;
    // 18 packed digits, least significant byte first; bit 7 of byte 9 is the
    // sign. Digits above 9 are undefined; they are taken at face value.
    let mut v: i64 = 0;
    for byte in b[..9].iter().rev() {
        v = v * 100 + i64::from(byte >> 4) * 10 + i64::from(byte & 0xf);
    }
    let neg = b[9] & 0x80 != 0;
    let x = sf::from_i64(v).with_sign(neg);
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, Some((seg, off)));
    let c = Ctx::from_fcw(f.fcw, false);
    push_checked(&mut f, x, &c);
    cpu.state.fpu = f;
    Ok(())
}

fn fbstp(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    check_store_dest(cpu, seg, off, 10, M80_ALIGN)?;
    let indefinite: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0xff];
    let mut f = cpu.state.fpu;
    let mut store = None;
    let mut do_pop = true;
    if x87::is_empty(&f, 0) {
        if underflow(&mut f) {
            store = Some(indefinite);
        } else {
            do_pop = false;
        }
    } else {
        let mut c = Ctx::from_fcw(f.fcw, false);
        let value = sf::to_int(x87::st(&f, 0), false, &mut c).filter(|&(_, mag)| mag <= 999_999_999_999_999_999);
        if value.is_none() {
            c.flags = (c.flags & !PE) | IE;
            c.round_up = false;
        }
        if commit(&mut f, &c) {
            store = Some(match value {
                Some((neg, mut mag)) => {
                    let mut b = [0u8; 10];
                    for byte in b.iter_mut().take(9) {
                        let lo = (mag % 10) as u8;
                        mag /= 10;
                        let hi = (mag % 10) as u8;
                        mag /= 10;
                        *byte = (hi << 4) | lo;
                    }
                    b[9] = if neg { 0x80 } else { 0 };
                    b
                }
                None => indefinite,
            });
        } else {
            do_pop = false;
        }
    }
    if let Some(b) = store {
        cpu.write_mem_buf_aligned(seg, off, &b, M80_ALIGN)?;
    }
    note(cpu, insn, &mut f, Some((seg, off)));
    if do_pop {
        x87::pop(&mut f);
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fxch(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let i = sti(insn.op1_register());
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    if x87::is_empty(&f, 0) || x87::is_empty(&f, i) {
        if !underflow(&mut f) {
            cpu.state.fpu = f;
            return Ok(());
        }
        for r in [0, i] {
            if x87::is_empty(&f, r) {
                x87::set_st(&mut f, r, INDEFINITE);
            }
        }
    }
    let (a, b) = (x87::st(&f, 0), x87::st(&f, i));
    x87::set_st(&mut f, 0, b);
    x87::set_st(&mut f, i, a);
    x87::set_c1(&mut f, false);
    cpu.state.fpu = f;
    Ok(())
}

fn fcmov(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let fl = cpu.state.flags();
    let (cf, zf, pf) = (fl & rf::CF != 0, fl & rf::ZF != 0, fl & rf::PF != 0);
    let cond = match insn.code() {
        Code::Fcmovb_st0_sti => cf,
        Code::Fcmove_st0_sti => zf,
        Code::Fcmovbe_st0_sti => cf || zf,
        Code::Fcmovu_st0_sti => pf,
        Code::Fcmovnb_st0_sti => !cf,
        Code::Fcmovne_st0_sti => !zf,
        Code::Fcmovnbe_st0_sti => !cf && !zf,
        _ => !pf,
    };
    let i = sti(insn.op1_register());
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    if x87::is_empty(&f, 0) || x87::is_empty(&f, i) {
        if underflow(&mut f) {
            x87::set_st(&mut f, 0, INDEFINITE);
        }
    } else if cond {
        let v = x87::st(&f, i);
        x87::set_st(&mut f, 0, v);
    }
    cpu.state.fpu = f;
    Ok(())
}

// ---- arithmetic -----------------------------------------------------------------

fn arith_m<const OP: u8>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let mut conv = Ctx::from_fcw(cpu.state.fpu.fcw, true);
    let b = read_num(cpu, insn, seg, off, &mut conv)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, Some((seg, off)));
    if x87::is_empty(&f, 0) {
        if underflow(&mut f) {
            x87::set_st(&mut f, 0, INDEFINITE);
        }
    } else {
        let mut c = Ctx { flags: 0, ..conv };
        let a = x87::st(&f, 0);
        let r = apply(OP, a, b, &mut c);
        merge_conv(&mut c, conv.flags, a);
        if commit(&mut f, &c) {
            x87::set_st(&mut f, 0, r);
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

fn arith_r<const OP: u8, const POP: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (d, s) = (sti(insn.op0_register()), sti(insn.op1_register()));
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    if x87::is_empty(&f, d) || x87::is_empty(&f, s) {
        if underflow(&mut f) {
            x87::set_st(&mut f, d, INDEFINITE);
            if POP {
                x87::pop(&mut f);
            }
        }
    } else {
        let mut c = Ctx::from_fcw(f.fcw, true);
        let r = apply(OP, x87::st(&f, d), x87::st(&f, s), &mut c);
        if commit(&mut f, &c) {
            x87::set_st(&mut f, d, r);
            if POP {
                x87::pop(&mut f);
            }
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

/// An operation on ST(0) alone, replacing it.
fn unary(cpu: &mut Cpu, insn: &Instruction, use_pc: bool, op: fn(X80, &mut Ctx) -> X80) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    if x87::is_empty(&f, 0) {
        if underflow(&mut f) {
            x87::set_st(&mut f, 0, INDEFINITE);
        }
    } else {
        let mut c = Ctx::from_fcw(f.fcw, use_pc);
        let r = op(x87::st(&f, 0), &mut c);
        if commit(&mut f, &c) {
            x87::set_st(&mut f, 0, r);
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fsqrt(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    unary(cpu, insn, true, sf::sqrt)
}

fn frndint(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    unary(cpu, insn, false, sf::round_int)
}

fn fabs(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    unary(cpu, insn, false, |a, _| a.abs())
}

fn fchs(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    unary(cpu, insn, false, |a, _| a.negate())
}

fn f2xm1(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    unary(cpu, insn, false, trans::f2xm1)
}

/// An operation on ST(0) and ST(1). `target` is the register the result goes
/// to (0 or 1); `pop` pops afterwards. Returns whether a result was delivered.
fn binary_st01(
    cpu: &mut Cpu,
    insn: &Instruction,
    target: usize,
    pop: bool,
    op: &mut dyn FnMut(X80, X80, &mut Ctx) -> X80,
) -> Fault<bool> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let mut delivered = false;
    if x87::is_empty(&f, 0) || x87::is_empty(&f, 1) {
        if underflow(&mut f) {
            x87::set_st(&mut f, target, INDEFINITE);
            if pop {
                x87::pop(&mut f);
            }
        }
    } else {
        let mut c = Ctx::from_fcw(f.fcw, false);
        let r = op(x87::st(&f, 0), x87::st(&f, 1), &mut c);
        if commit(&mut f, &c) {
            delivered = true;
            x87::set_st(&mut f, target, r);
            if pop {
                x87::pop(&mut f);
            }
        }
    }
    cpu.state.fpu = f;
    Ok(delivered)
}

fn fprem<const NEAREST: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let mut out = (0u64, true);
    let delivered = binary_st01(cpu, insn, 0, false, &mut |a, b, c| {
        let (r, q, complete) = sf::rem(a, b, NEAREST, c);
        out = (q, complete);
        r
    })?;
    if delivered {
        let (q, complete) = out;
        let mut cc = 0;
        if q & 4 != 0 {
            cc |= fsw::C0;
        }
        if q & 2 != 0 {
            cc |= fsw::C3;
        }
        if q & 1 != 0 {
            cc |= fsw::C1;
        }
        if !complete {
            cc |= fsw::C2;
        }
        x87::set_cc(&mut cpu.state.fpu, fsw::CC, cc);
    }
    Ok(())
}

fn fscale(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    binary_st01(cpu, insn, 0, false, &mut sf::scale).map(drop)
}

fn fyl2x(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    binary_st01(cpu, insn, 1, true, &mut trans::fyl2x).map(drop)
}

fn fyl2xp1(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    binary_st01(cpu, insn, 1, true, &mut trans::fyl2xp1).map(drop)
}

fn fpatan(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    binary_st01(cpu, insn, 1, true, &mut trans::fpatan).map(drop)
}

/// FSIN and FCOS: out-of-range arguments set C2 and leave ST(0) alone.
fn trig1(cpu: &mut Cpu, insn: &Instruction, op: fn(X80, &mut Ctx) -> Result<X80, trans::OutOfRange>) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    if x87::is_empty(&f, 0) {
        if underflow(&mut f) {
            x87::set_st(&mut f, 0, INDEFINITE);
        }
    } else {
        let mut c = Ctx::from_fcw(f.fcw, false);
        match op(x87::st(&f, 0), &mut c) {
            Err(trans::OutOfRange) => x87::set_cc(&mut f, fsw::C2, fsw::C2),
            Ok(r) => {
                if commit(&mut f, &c) {
                    x87::set_st(&mut f, 0, r);
                }
                x87::set_cc(&mut f, fsw::C2, 0);
            }
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fsin(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    trig1(cpu, insn, trans::fsin)
}

fn fcos(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    trig1(cpu, insn, trans::fcos)
}

/// FPTAN, FSINCOS and FXTRACT: replace ST(0) and push a second result.
/// Stack underflow or overflow with IE masked leaves the indefinite in both.
/// An operation with two results and an out-of-range outcome.
type TwoResults = fn(X80, &mut Ctx) -> Result<(X80, X80), trans::OutOfRange>;

fn two_results(cpu: &mut Cpu, insn: &Instruction, op: TwoResults) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let bad = if x87::is_empty(&f, 0) {
        Some(underflow(&mut f))
    } else if !x87::is_empty(&f, 7) {
        Some(overflow(&mut f))
    } else {
        None
    };
    match bad {
        Some(masked) => {
            if masked {
                x87::set_st(&mut f, 0, INDEFINITE);
                x87::push(&mut f, INDEFINITE);
            }
        }
        None => {
            let mut c = Ctx::from_fcw(f.fcw, false);
            match op(x87::st(&f, 0), &mut c) {
                Err(trans::OutOfRange) => x87::set_cc(&mut f, fsw::C2, fsw::C2),
                Ok((r0, r1)) => {
                    if commit(&mut f, &c) {
                        x87::set_st(&mut f, 0, r0);
                        x87::push(&mut f, r1);
                    }
                    x87::set_cc(&mut f, fsw::C2, 0);
                }
            }
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fptan(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    two_results(cpu, insn, |a, c| trans::fptan(a, c).map(|t| (t, sf::ONE)))
}

fn fsincos(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    two_results(cpu, insn, trans::fsincos)
}

fn fxtract(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    two_results(cpu, insn, |a, c| Ok(sf::extract(a, c)))
}

// ---- comparisons --------------------------------------------------------------

/// Compare `a` with `b` (`None`: an empty register). Returns the ordering
/// to report (`None` inside: unordered), or `None` when an unmasked
/// exception suppressed the comparison.
fn compare_core(f: &mut FpuState, a: Option<X80>, b: Option<X80>, quiet: bool, conv: u16) -> Option<Option<Ordering>> {
    let (Some(a), Some(b)) = (a, b) else {
        return if underflow(f) { Some(None) } else { None };
    };
    let mut c = Ctx::from_fcw(f.fcw, false);
    let ord = sf::compare(a, b, quiet, &mut c);
    merge_conv(&mut c, conv, a);
    if c.flags & (IE | DE) & !f.fcw != 0 {
        stop(f, c.flags);
        return None;
    }
    x87::raise(f, c.flags);
    x87::set_c1(f, false);
    Some(ord)
}

fn set_fcc(f: &mut FpuState, ord: Option<Ordering>) {
    let cc = match ord {
        Some(Ordering::Greater) => 0,
        Some(Ordering::Less) => fsw::C0,
        Some(Ordering::Equal) => fsw::C3,
        None => fsw::C3 | fsw::C2 | fsw::C0,
    };
    x87::set_cc(f, fsw::C3 | fsw::C2 | fsw::C0, cc);
}

fn opt_st(f: &FpuState, i: usize) -> Option<X80> {
    if x87::is_empty(f, i) {
        None
    } else {
        Some(x87::st(f, i))
    }
}

fn fcom_m<const POPS: u8>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let mut conv = Ctx::from_fcw(cpu.state.fpu.fcw, false);
    let b = read_num(cpu, insn, seg, off, &mut conv)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, Some((seg, off)));
    let a = opt_st(&f, 0);
    if let Some(ord) = compare_core(&mut f, a, Some(b), false, conv.flags) {
        set_fcc(&mut f, ord);
        for _ in 0..POPS {
            x87::pop(&mut f);
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fcom_r<const POPS: u8, const QUIET: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let i = if insn.op_count() >= 2 { sti(insn.op1_register()) } else { 1 };
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let (a, b) = (opt_st(&f, 0), opt_st(&f, i));
    if let Some(ord) = compare_core(&mut f, a, b, QUIET, 0) {
        set_fcc(&mut f, ord);
        for _ in 0..POPS {
            x87::pop(&mut f);
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fcomi<const POP: bool, const QUIET: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let i = sti(insn.op1_register());
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let (a, b) = (opt_st(&f, 0), opt_st(&f, i));
    if let Some(ord) = compare_core(&mut f, a, b, QUIET, 0) {
        let v = match ord {
            Some(Ordering::Greater) => 0,
            Some(Ordering::Less) => rf::CF,
            Some(Ordering::Equal) => rf::ZF,
            None => rf::ZF | rf::PF | rf::CF,
        };
        cpu.state.set_arith_flags(rf::ARITH, v);
        if POP {
            x87::pop(&mut f);
        }
    }
    cpu.state.fpu = f;
    Ok(())
}

fn ftst(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let a = opt_st(&f, 0);
    if let Some(ord) = compare_core(&mut f, a, Some(sf::ZERO), false, 0) {
        set_fcc(&mut f, ord);
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fxam(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let v = x87::x80(f.regs[x87::phys(&f, 0)]);
    let class = if x87::is_empty(&f, 0) {
        fsw::C3 | fsw::C0
    } else if v.is_unsupported() {
        0
    } else if v.is_nan() {
        fsw::C0
    } else if v.is_inf() {
        fsw::C2 | fsw::C0
    } else if v.is_zero() {
        fsw::C3
    } else if v.is_denormal() {
        fsw::C3 | fsw::C2
    } else {
        fsw::C2
    };
    let sign = if v.sign() { fsw::C1 } else { 0 };
    x87::set_cc(&mut f, fsw::CC, class | sign);
    cpu.state.fpu = f;
    Ok(())
}

// ---- control --------------------------------------------------------------------

fn fninit<const WAIT: bool>(cpu: &mut Cpu, _insn: &Instruction) -> Fault<()> {
    enter_if(cpu, WAIT)?;
    x87::init(&mut cpu.state.fpu);
    Ok(())
}

fn fnclex<const WAIT: bool>(cpu: &mut Cpu, _insn: &Instruction) -> Fault<()> {
    enter_if(cpu, WAIT)?;
    cpu.state.fpu.fsw &= !(fsw::EXC | fsw::SF | fsw::ES | fsw::B);
    Ok(())
}

fn fnstsw<const WAIT: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter_if(cpu, WAIT)?;
    let v = cpu.state.fpu.fsw;
    if insn.op0_kind() == OpKind::Register {
        reg_write(&mut cpu.state, Register::AX, u64::from(v));
        Ok(())
    } else {
        let (seg, off) = mem_operand(cpu, insn);
        cpu.write_mem(seg, off, 2, u64::from(v))
    }
}

fn fnstcw<const WAIT: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter_if(cpu, WAIT)?;
    let (seg, off) = mem_operand(cpu, insn);
    cpu.write_mem(seg, off, 2, u64::from(cpu.state.fpu.fcw))
}

fn fldcw(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let v = cpu.read_mem(seg, off, 2)? as u16;
    let f = &mut cpu.state.fpu;
    f.fcw = (v & !x87::fcw::RESERVED) | x87::fcw::ALWAYS_ONE;
    x87::update_es(f);
    Ok(())
}

fn env_layout(cpu: &Cpu, insn: &Instruction) -> EnvLayout {
    let size32 = matches!(insn.memory_size(), MemorySize::FpuEnv28 | MemorySize::FpuState108);
    EnvLayout { size32, real: !cpu.state.protected() || cpu.state.v86() }
}

fn fnstenv<const WAIT: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter_if(cpu, WAIT)?;
    let (seg, off) = mem_operand(cpu, insn);
    let layout = env_layout(cpu, insn);
    let mut img = [0u8; 28];
    x87::store_env(&cpu.state.fpu, layout, &mut img);
    cpu.write_mem_buf_aligned(seg, off, &img[..layout.size()], env_align(layout))?;
    let f = &mut cpu.state.fpu;
    f.fcw |= x87::fcw::MASKS;
    x87::update_es(f);
    Ok(())
}

fn fldenv(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let layout = env_layout(cpu, insn);
    let mut img = [0u8; 28];
    cpu.read_mem_buf_aligned(seg, off, &mut img[..layout.size()], env_align(layout))?;
    x87::load_env(&mut cpu.state.fpu, layout, &img);
    Ok(())
}

fn fnsave<const WAIT: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter_if(cpu, WAIT)?;
    let (seg, off) = mem_operand(cpu, insn);
    let layout = env_layout(cpu, insn);
    let n = layout.size();
    let mut img = [0u8; 108];
    x87::store_env(&cpu.state.fpu, layout, &mut img);
    x87::store_regs(&cpu.state.fpu, &mut img[n..n + 80]);
    cpu.write_mem_buf_aligned(seg, off, &img[..n + 80], env_align(layout))?;
    x87::init(&mut cpu.state.fpu);
    Ok(())
}

fn frstor(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let layout = env_layout(cpu, insn);
    let n = layout.size();
    let mut img = [0u8; 108];
    cpu.read_mem_buf_aligned(seg, off, &mut img[..n + 80], env_align(layout))?;
    let f = &mut cpu.state.fpu;
    x87::load_env(f, layout, &img);
    x87::load_regs(f, &img[n..n + 80]);
    x87::update_es(f);
    Ok(())
}

fn ffree<const POP: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let i = sti(insn.op0_register());
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let p = x87::phys(&f, i);
    x87::set_tag_phys(&mut f, p, x87::tag::EMPTY);
    if POP {
        x87::pop(&mut f);
    }
    cpu.state.fpu = f;
    Ok(())
}

fn fincstp(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let t = x87::top(&f) + 1;
    x87::set_top(&mut f, t);
    x87::set_c1(&mut f, false);
    cpu.state.fpu = f;
    Ok(())
}

fn fdecstp(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    let t = x87::top(&f).wrapping_sub(1);
    x87::set_top(&mut f, t);
    x87::set_c1(&mut f, false);
    cpu.state.fpu = f;
    Ok(())
}

fn fnop(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let mut f = cpu.state.fpu;
    note(cpu, insn, &mut f, None);
    cpu.state.fpu = f;
    Ok(())
}

fn fnop_nowait(cpu: &mut Cpu, _insn: &Instruction) -> Fault<()> {
    check_nm(cpu)
}

fn fwait(cpu: &mut Cpu, _insn: &Instruction) -> Fault<()> {
    let both = cr::CR0_TS | cr::CR0_MP;
    if cpu.state.cr0 & both == both {
        return Err(Exception::DeviceNotAvailable);
    }
    if cpu.state.fpu.fsw & fsw::ES != 0 {
        return Err(fpu_error(cpu));
    }
    Ok(())
}

fn emms(cpu: &mut Cpu, _insn: &Instruction) -> Fault<()> {
    if cpu.state.cr0 & cr::CR0_EM != 0 {
        return Err(Exception::InvalidOpcode);
    }
    enter(cpu)?;
    x87::emms(&mut cpu.state);
    Ok(())
}

/// FXSAVE/FXRSTOR operand: #NM, then #GP(0) unless 16-byte aligned.
fn fx_operand(cpu: &Cpu, insn: &Instruction, write: bool) -> Fault<(usize, u64, bool, usize, u64)> {
    check_nm(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let lin = cpu.linear(seg, off, 512, write)?;
    if lin & 15 != 0 {
        return Err(GP0);
    }
    let rex_w = matches!(insn.code(), Code::Fxsave64_m512byte | Code::Fxrstor64_m512byte);
    let xmm = if cpu.state.code64() { 16 } else { 8 };
    Ok((seg, off, rex_w, xmm, lin))
}

fn fxsave(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let (seg, off, rex_w, xmm, lin) = fx_operand(cpu, insn, true)?;
    let mut img = [0u8; 512];
    let n = x87::fxsave(&cpu.state, rex_w, xmm, &mut img);
    cpu.write_mem_buf(seg, off, &img[..n])?;
    if cpu.state.cpl == 0 {
        if let Some(h) = &mut cpu.hooks {
            h.fx_event(crate::hooks::FxEvent::Save(lin));
        }
    }
    Ok(())
}

fn fxrstor(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let (seg, off, rex_w, xmm, lin) = fx_operand(cpu, insn, false)?;
    let mut img = [0u8; 512];
    cpu.read_mem_buf(seg, off, &mut img)?;
    x87::fxrstor(&mut cpu.state, rex_w, xmm, &img)?;
    if cpu.state.cpl == 0 {
        if let Some(h) = &mut cpu.hooks {
            h.fx_event(crate::hooks::FxEvent::Restore(lin));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iced_x86::code_asm::registers::gpr16::{ax, bx, si};
    use iced_x86::code_asm::registers::gpr32::ebx;
    use iced_x86::code_asm::registers::gpr64::{rbx, rcx};
    use iced_x86::code_asm::registers::st::{st0, st1, st3, st5};
    use iced_x86::code_asm::{dword_ptr, ptr, qword_ptr, tword_ptr, word_ptr, CodeAssembler};
    use iced_x86::{Decoder, DecoderOptions, IcedError};
    use mmu::GuestMemory;

    use super::*;
    use crate::state::{seg_attr, Segment};
    use crate::x87::softfloat::{ONE, ZERO};

    const CODE: u64 = 0x1000;
    const DATA: u64 = 0x8000;
    const C0: u16 = fsw::C0;
    const C1: u16 = fsw::C1;
    const C2: u16 = fsw::C2;
    const C3: u16 = fsw::C3;
    const ES_B: u16 = fsw::ES | fsw::B;

    /// A CPU in 64-bit, 32-bit protected or real mode, flat, RBX = DATA,
    /// CR0.NE and CR0.MP set, FPU in its FNINIT state.
    fn machine(bits: u32) -> Cpu {
        let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
        let mut cpu = Cpu::new(mem, Box::new(crate::platform::NoDevices));
        let mut s = cpu.state;
        let data = seg_attr::P | seg_attr::S | seg_attr::TYPE_RW | seg_attr::TYPE_ACCESSED;
        let code = data | seg_attr::TYPE_CODE;
        if bits == 16 {
            s.seg[sreg::CS] = Segment::real(0, code);
            for r in [sreg::DS, sreg::ES, sreg::SS] {
                s.seg[r] = Segment::real(0, data);
            }
            s.cr0 |= cr::CR0_NE | cr::CR0_MP;
        } else {
            s.cr0 = cr::CR0_PE | cr::CR0_ET | cr::CR0_NE | cr::CR0_MP;
            let flat = |attr: u32, selector: u16| Segment { base: 0, limit: 0xffff_ffff, attr, selector, _pad: [0; 3] };
            let cs_attr = if bits == 64 { code | seg_attr::L } else { code | seg_attr::DB | seg_attr::G };
            s.seg[sreg::CS] = flat(cs_attr, 0x08);
            for r in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
                s.seg[r] = flat(data | seg_attr::DB | seg_attr::G, 0x10);
            }
            if bits == 64 {
                s.efer = cr::EFER_LME | cr::EFER_LMA;
            }
        }
        s.gpr[3] = DATA;
        cpu.set_state(s);
        cpu
    }

    /// Decode `bytes` at CODE and run each instruction through its handler,
    /// stopping at the first fault.
    fn exec(cpu: &mut Cpu, bits: u32, bytes: &[u8]) -> Fault<()> {
        let mut d = Decoder::with_ip(bits, bytes, CODE, DecoderOptions::NONE);
        for insn in d.iter() {
            assert_ne!(insn.code(), Code::INVALID);
            cpu.insn_start = insn.ip();
            cpu.state.rip = insn.next_ip();
            crate::ops::handler(insn.code())(cpu, &insn)?;
        }
        Ok(())
    }

    fn asm_bits(cpu: &mut Cpu, bits: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Fault<()> {
        let mut a = CodeAssembler::new(bits).unwrap();
        f(&mut a).unwrap();
        let bytes = a.assemble(CODE).unwrap();
        exec(cpu, bits, &bytes)
    }

    fn asm(cpu: &mut Cpu, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Fault<()> {
        asm_bits(cpu, 64, f)
    }

    fn poke(cpu: &Cpu, addr: u64, bytes: &[u8]) {
        cpu.mem().write(addr, bytes).unwrap();
    }

    fn peek<const N: usize>(cpu: &Cpu, addr: u64) -> [u8; N] {
        let mut b = [0u8; N];
        cpu.mem().read(addr, &mut b).unwrap();
        b
    }

    fn poke_x80(cpu: &Cpu, addr: u64, v: X80) {
        poke(cpu, addr, &m80_bytes(v));
    }

    fn st(cpu: &Cpu, i: usize) -> X80 {
        x87::st(&cpu.state.fpu, i)
    }

    fn fsw(cpu: &Cpu) -> u16 {
        cpu.state.fpu.fsw
    }

    fn top(t: u16) -> u16 {
        t << 11
    }

    fn x(se: u16, m: u64) -> X80 {
        X80::new(se, m)
    }

    /// [`machine`] at CPL 3 with alignment checking on (CR0.AM, RFLAGS.AC).
    fn ac_machine() -> Cpu {
        let mut cpu = machine(64);
        cpu.state.cr0 |= cr::CR0_AM;
        cpu.state.rflags |= rf::AC;
        cpu.state.cpl = 3;
        cpu
    }

    #[test]
    fn misaligned_memory_operands_raise_ac() {
        let mut cpu = ac_machine();
        poke_x80(&cpu, DATA, ONE);
        asm(&mut cpu, |a| a.fld(tword_ptr(rbx))).unwrap();
        assert_eq!(asm(&mut cpu, |a| a.fst(dword_ptr(rbx + 18))), Err(Exception::AlignmentCheck));
        assert_eq!(asm(&mut cpu, |a| a.fst(qword_ptr(rbx + 20))), Err(Exception::AlignmentCheck));
        assert_eq!(asm(&mut cpu, |a| a.fld(tword_ptr(rbx + 4))), Err(Exception::AlignmentCheck));
        assert_eq!(asm(&mut cpu, |a| a.fstp(tword_ptr(rbx + 36))), Err(Exception::AlignmentCheck));
        assert_eq!(fsw(&cpu), top(7));
        asm(&mut cpu, |a| a.fst(qword_ptr(rbx + 24))).unwrap();
        assert_eq!(peek::<8>(&cpu, DATA + 24), 1.0f64.to_le_bytes());
        // The #AC comes before an unmasked exception that would suppress the
        // store: FISTP of an empty ST(0) with IE unmasked.
        let mut cpu = ac_machine();
        cpu.state.fpu.fcw = 0x037e;
        assert_eq!(asm(&mut cpu, |a| a.fistp(dword_ptr(rbx + 2))), Err(Exception::AlignmentCheck));
        assert_eq!(fsw(&cpu), 0);
        asm(&mut cpu, |a| a.fistp(dword_ptr(rbx + 4))).unwrap();
        assert_eq!(fsw(&cpu), fsw::IE | fsw::SF | ES_B);
    }

    #[test]
    fn exception_priorities_and_c1() {
        use iced_x86::code_asm::registers::st::st6;
        // FLD ST(i) of an empty register with ST(7) in use: a stack
        // underflow (C1 = 0), not an overflow.
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fincstp()?;
            a.fld(st6)
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(7) | fsw::IE | fsw::SF);
        assert_eq!(st(&cpu, 0), INDEFINITE);

        // Divide-by-zero takes priority over a denormal operand.
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA, x(0, 0x1234));
        poke(&cpu, DATA + 16, &[0; 8]);
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fdiv(qword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(7) | fsw::ZE);
        assert_eq!(st(&cpu, 0), X80::inf(false));
        // So does an invalid operation: FPREM of an infinity by a denormal.
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA + 32, X80::inf(false));
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fld(tword_ptr(rbx + 32))?;
            a.fprem()
        })
        .unwrap();
        assert_eq!(fsw(&cpu) & !C2, top(6) | fsw::IE);
        assert_eq!(st(&cpu, 0), INDEFINITE);
        // A QNaN in ST(0) decides the result before a denormal memory operand
        // is looked at: no DE.
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA + 32, x(0x7fff, 0xc000_0000_0000_0001));
        poke(&cpu, DATA + 16, &1u64.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx + 32))?;
            a.fsub(qword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(7));
        assert_eq!(st(&cpu, 0), x(0x7fff, 0xc000_0000_0000_0001));

        // An instruction stopped by an unmasked exception clears C1.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x037b; // ZE unmasked
        poke(&cpu, DATA + 16, &[0; 4]);
        asm(&mut cpu, |a| a.fld1()).unwrap();
        cpu.state.fpu.fsw |= C1;
        asm(&mut cpu, |a| a.fdiv(dword_ptr(rbx + 16))).unwrap();
        assert_eq!(fsw(&cpu), top(7) | fsw::ZE | ES_B);
        assert_eq!(st(&cpu, 0), ONE);
    }

    #[test]
    fn fst_of_tiny_values() {
        // FST has no denormal-operand exception: a denormal ST(0) stored to
        // a double underflows (masked: zero, UE and PE).
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA, x(0, 0x1234));
        poke(&cpu, DATA + 16, &[0x55; 8]);
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fst(qword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(7) | fsw::UE | fsw::PE);
        assert_eq!(peek::<8>(&cpu, DATA + 16), [0; 8]);
        // Unmasked, UE is reported alone (no PE, C1 = 0) and nothing is
        // stored; a tiny exact value also underflows.
        for m in [0x8000_0000_0000_1234u64, 0x8000_0000_0000_0000] {
            let mut cpu = machine(64);
            cpu.state.fpu.fcw = 0x036f;
            poke_x80(&cpu, DATA, x(0x3c00 - 1, m));
            poke(&cpu, DATA + 16, &[0x55; 8]);
            asm(&mut cpu, |a| a.fld(tword_ptr(rbx))).unwrap();
            cpu.state.fpu.fsw |= C1;
            asm(&mut cpu, |a| a.fstp(qword_ptr(rbx + 16))).unwrap();
            assert_eq!(fsw(&cpu), top(7) | fsw::UE | ES_B, "{m:#x}");
            assert_eq!(peek::<8>(&cpu, DATA + 16), [0x55; 8]);
        }
    }

    #[test]
    fn results_out_of_range_even_bias_adjusted() {
        // FSCALE by 2^1000000 with OE unmasked: an infinity, reported as
        // rounded up (PE, C1) even when rounding toward zero.
        for fcw in [0x0377u16, 0x0f77] {
            let mut cpu = machine(64);
            cpu.state.fpu.fcw = fcw;
            poke(&cpu, DATA, &1e6f64.to_le_bytes());
            asm(&mut cpu, |a| {
                a.fld(qword_ptr(rbx))?;
                a.fld1()?;
                a.fscale()
            })
            .unwrap();
            assert_eq!(st(&cpu, 0), X80::inf(false));
            assert_eq!(fsw(&cpu), top(6) | fsw::OE | fsw::PE | C1 | ES_B);
        }
        // By 2^-1000000 with UE unmasked: a signed zero, inexact, C1 = 0.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x036f;
        poke(&cpu, DATA, &(-1e6f64).to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld(qword_ptr(rbx))?;
            a.fld1()?;
            a.fchs()?;
            a.fscale()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), X80::zero(true));
        assert_eq!(fsw(&cpu), top(6) | fsw::UE | fsw::PE | ES_B);
    }

    #[test]
    fn fprem_of_a_value_smaller_than_the_divisor() {
        // A denormal remainder with UE unmasked: bias-adjusted, UE (and DE
        // for the denormal operand).
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x036f;
        poke_x80(&cpu, DATA, x(0, 1));
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fld(tword_ptr(rbx))?;
            a.fprem()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(24576 - 62, 0x8000_0000_0000_0000));
        assert_eq!(fsw(&cpu), top(6) | fsw::DE | fsw::UE | ES_B);
        // A pseudo-denormal remainder is delivered normalized (exponent 1).
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA, x(0, 0x8000_0000_0000_0001));
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fld(tword_ptr(rbx))?;
            a.fprem1()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(1, 0x8000_0000_0000_0001));
    }

    #[test]
    fn fldpi_and_the_constants() {
        for (rc, m) in [
            (0u16, 0xc90f_daa2_2168_c235u64),
            (1, 0xc90f_daa2_2168_c234),
            (2, 0xc90f_daa2_2168_c235),
            (3, 0xc90f_daa2_2168_c234),
        ] {
            let mut cpu = machine(64);
            cpu.state.fpu.fcw = 0x037f | (rc << 10);
            asm(&mut cpu, |a| a.fldpi()).unwrap();
            assert_eq!(st(&cpu, 0), x(0x4000, m), "rc {rc}");
            assert_eq!(fsw(&cpu), top(7));
        }
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fldz()?;
            a.fldl2t()?;
            a.fldl2e()?;
            a.fldlg2()?;
            a.fldln2()
        })
        .unwrap();
        assert_eq!(st(&cpu, 5), ONE);
        assert_eq!(st(&cpu, 4), ZERO);
        assert_eq!(st(&cpu, 3), x(0x4000, 0xd49a_784b_cd1b_8afe));
        assert_eq!(st(&cpu, 2), x(0x3fff, 0xb8aa_3b29_5c17_f0bc));
        assert_eq!(st(&cpu, 1), x(0x3ffd, 0x9a20_9a84_fbcf_f799));
        assert_eq!(st(&cpu, 0), x(0x3ffe, 0xb172_17f7_d1cf_79ac));
        assert_eq!(fsw(&cpu), top(2));
        // Tags: ST(4) = R6 holds zero, the others valid, R0 and R1 empty.
        assert_eq!(cpu.state.fpu.ftw, 0x100f);
    }

    #[test]
    fn one_third_in_each_rounding_mode_and_precision() {
        let cases: [(u16, u64, u16); 6] = [
            (0x037f, 0xaaaa_aaaa_aaaa_aaab, fsw::PE | C1),
            (0x077f, 0xaaaa_aaaa_aaaa_aaaa, fsw::PE),
            (0x0b7f, 0xaaaa_aaaa_aaaa_aaab, fsw::PE | C1),
            (0x0f7f, 0xaaaa_aaaa_aaaa_aaaa, fsw::PE),
            // PC = 24 and 53 bits.
            (0x007f, 0xaaaa_ab00_0000_0000, fsw::PE | C1),
            (0x027f, 0xaaaa_aaaa_aaaa_a800, fsw::PE),
        ];
        for (fcw, m, flags) in cases {
            let mut cpu = machine(64);
            cpu.state.fpu.fcw = fcw;
            poke(&cpu, DATA, &3u32.to_le_bytes());
            asm(&mut cpu, |a| {
                a.fld1()?;
                a.fidiv(dword_ptr(rbx))
            })
            .unwrap();
            assert_eq!(st(&cpu, 0), x(0x3ffd, m), "fcw {fcw:#x}");
            assert_eq!(fsw(&cpu), top(7) | flags, "fcw {fcw:#x}");
        }
        // Precision control does not apply to loads and FSCALE-like moves.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x007f;
        poke_x80(&cpu, DATA, x(0x3ffd, 0xaaaa_aaaa_aaaa_aaab));
        asm(&mut cpu, |a| a.fld(tword_ptr(rbx))).unwrap();
        assert_eq!(st(&cpu, 0), x(0x3ffd, 0xaaaa_aaaa_aaaa_aaab));
        assert_eq!(fsw(&cpu), top(7));
    }

    #[test]
    fn stack_underflow_and_overflow_masked() {
        let mut cpu = machine(64);
        asm(&mut cpu, |a| a.fadd_2(st0, st1)).unwrap();
        assert_eq!(fsw(&cpu), fsw::IE | fsw::SF);
        assert_eq!(st(&cpu, 0), INDEFINITE);
        assert_eq!(cpu.state.fpu.ftw, 0xfffe);

        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            for _ in 0..9 {
                a.fld1()?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(7) | C1 | fsw::IE | fsw::SF);
        assert_eq!(st(&cpu, 0), INDEFINITE);
        assert_eq!(st(&cpu, 1), ONE);

        // FSTP to memory from an empty stack stores the indefinite.
        let mut cpu = machine(64);
        asm(&mut cpu, |a| a.fstp(qword_ptr(rbx))).unwrap();
        assert_eq!(peek::<8>(&cpu, DATA), 0xfff8_0000_0000_0000u64.to_le_bytes());
        assert_eq!(fsw(&cpu), top(1) | fsw::IE | fsw::SF);
        // FISTP m16 likewise stores the integer indefinite.
        let mut cpu = machine(64);
        asm(&mut cpu, |a| a.fistp(word_ptr(rbx))).unwrap();
        assert_eq!(peek::<2>(&cpu, DATA), [0x00, 0x80]);
    }

    #[test]
    fn unmasked_exceptions_raise_mf_at_the_next_waiting_instruction() {
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x037e; // IE unmasked
        asm(&mut cpu, |a| a.fsqrt()).unwrap();
        // Underflow with IE unmasked: nothing written, ES and B set.
        assert_eq!(fsw(&cpu), fsw::IE | fsw::SF | ES_B);
        assert_eq!(cpu.state.fpu.ftw, 0xffff);
        let before = cpu.state.fpu;
        assert_eq!(asm(&mut cpu, |a| a.fld1()), Err(Exception::FpuError));
        assert_eq!(cpu.state.fpu, before);
        assert_eq!(asm(&mut cpu, |a| a.wait()), Err(Exception::FpuError));
        // The non-waiting forms still run.
        asm(&mut cpu, |a| a.fnstsw(ax)).unwrap();
        assert_eq!(cpu.state.gpr[0] & 0xffff, u64::from(fsw::IE | fsw::SF | ES_B));
        asm(&mut cpu, |a| {
            a.fnclex()?;
            a.fld1()
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(7));

        // Unmasked invalid operation leaves the operand alone.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x037e;
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fchs()?;
            a.fsqrt()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), ONE.negate());
        assert_eq!(fsw(&cpu), top(7) | fsw::IE | ES_B);

        // With CR0.NE = 0 the error is still reported as #MF.
        cpu.state.cr0 &= !cr::CR0_NE;
        assert_eq!(asm(&mut cpu, |a| a.fld1()), Err(Exception::FpuError));

        // FLDCW that unmasks a pending flag arms #MF.
        let mut cpu = machine(64);
        poke(&cpu, DATA, &0x037bu16.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fldz()?;
            a.fdivp(st1, st0)
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), X80::inf(false));
        assert_eq!(fsw(&cpu), top(7) | fsw::ZE);
        asm(&mut cpu, |a| a.fldcw(word_ptr(rbx))).unwrap();
        assert_eq!(fsw(&cpu), top(7) | fsw::ZE | ES_B);
        assert_eq!(asm(&mut cpu, |a| a.fld1()), Err(Exception::FpuError));
        // FNSTENV masks everything, which clears the summary.
        asm(&mut cpu, |a| a.fnstenv(ptr(rbx + 64))).unwrap();
        assert_eq!(cpu.state.fpu.fcw, 0x037f);
        assert_eq!(fsw(&cpu), top(7) | fsw::ZE);
    }

    #[test]
    fn unmasked_overflow_and_underflow_deliver_bias_adjusted_results() {
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x0377; // OE unmasked
        poke_x80(&cpu, DATA, x(0x7ffe, 0x8000_0000_0000_0000));
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fadd_2(st0, st0)
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(0x7fff - 24576, 0x8000_0000_0000_0000));
        assert_eq!(fsw(&cpu), top(7) | fsw::OE | ES_B);
        // To memory: nothing stored, nothing popped.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x0377;
        poke_x80(&cpu, DATA, x(0x7ffe, 0x8000_0000_0000_0000));
        poke(&cpu, DATA + 16, &[0x55; 4]);
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fstp(dword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(peek::<4>(&cpu, DATA + 16), [0x55; 4]);
        // Reported alone: no PE for a result that is not stored.
        assert_eq!(fsw(&cpu), top(7) | fsw::OE | ES_B);

        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x036f; // UE unmasked
        poke_x80(&cpu, DATA, x(0x0001, 0x8000_0000_0000_0000));
        poke(&cpu, DATA + 16, &0.5f32.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fmul(dword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(24576, 0x8000_0000_0000_0000));
        assert_eq!(fsw(&cpu), top(7) | fsw::UE | ES_B);
    }

    #[test]
    fn device_not_available() {
        let mut cpu = machine(64);
        cpu.state.cr0 |= cr::CR0_TS;
        assert_eq!(asm(&mut cpu, |a| a.fld1()), Err(Exception::DeviceNotAvailable));
        assert_eq!(asm(&mut cpu, |a| a.fnstsw(ax)), Err(Exception::DeviceNotAvailable));
        assert_eq!(asm(&mut cpu, |a| a.fninit()), Err(Exception::DeviceNotAvailable));
        assert_eq!(asm(&mut cpu, |a| a.fxsave(ptr(rbx))), Err(Exception::DeviceNotAvailable));
        assert_eq!(asm(&mut cpu, |a| a.emms()), Err(Exception::DeviceNotAvailable));
        // WAIT faults only with TS and MP.
        assert_eq!(asm(&mut cpu, |a| a.wait()), Err(Exception::DeviceNotAvailable));
        cpu.state.cr0 &= !cr::CR0_MP;
        asm(&mut cpu, |a| a.wait()).unwrap();

        let mut cpu = machine(64);
        cpu.state.cr0 |= cr::CR0_EM;
        assert_eq!(asm(&mut cpu, |a| a.fld1()), Err(Exception::DeviceNotAvailable));
        assert_eq!(asm(&mut cpu, |a| a.fxrstor(ptr(rbx))), Err(Exception::DeviceNotAvailable));
        assert_eq!(asm(&mut cpu, |a| a.emms()), Err(Exception::InvalidOpcode));
        asm(&mut cpu, |a| a.wait()).unwrap();
        assert_eq!(cpu.state.fpu, FpuState::default());
    }

    #[test]
    fn divide_by_zero_denormals_and_precision() {
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fchs()?;
            a.fldz()?;
            a.fdivp(st1, st0)
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), X80::inf(true));
        assert_eq!(fsw(&cpu), top(7) | fsw::ZE);

        // A denormal single raises DE on load; a denormal extended does not.
        let mut cpu = machine(64);
        poke(&cpu, DATA, &1u32.to_le_bytes());
        poke_x80(&cpu, DATA + 16, x(0, 1));
        asm(&mut cpu, |a| a.fld(dword_ptr(rbx))).unwrap();
        assert_eq!(st(&cpu, 0), x(0x3fff - 149, 0x8000_0000_0000_0000));
        assert_eq!(fsw(&cpu), top(7) | fsw::DE);
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA + 16, x(0, 1));
        asm(&mut cpu, |a| a.fld(tword_ptr(rbx + 16))).unwrap();
        assert_eq!(fsw(&cpu), top(7));
        assert_eq!(cpu.state.fpu.ftw, 0xbfff);
        // Arithmetic on it does.
        asm(&mut cpu, |a| a.fadd_2(st0, st0)).unwrap();
        assert_eq!(st(&cpu, 0), x(0, 2));
        assert_eq!(fsw(&cpu), top(7) | fsw::DE);
        // Unmasked DE: the load does not happen.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x037d;
        poke(&cpu, DATA, &1u32.to_le_bytes());
        asm(&mut cpu, |a| a.fld(dword_ptr(rbx))).unwrap();
        assert_eq!(fsw(&cpu), fsw::DE | ES_B);
        assert_eq!(cpu.state.fpu.ftw, 0xffff);

        // Precision: 1 + 2^-64 rounds to 1 with PE; rounding up sets C1.
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA, x(0x3fff - 64, 0x8000_0000_0000_0000));
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fld(tword_ptr(rbx))?;
            a.faddp(st1, st0)
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), ONE);
        assert_eq!(fsw(&cpu), top(7) | fsw::PE);
        cpu.state.fpu.fcw = 0x0b7f;
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.faddp(st1, st0)
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(0x3fff, 0x8000_0000_0000_0001));
        assert_eq!(fsw(&cpu), top(7) | fsw::PE | C1);
    }

    #[test]
    fn float_stores_round() {
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA, x(0x3ffd, 0xaaaa_aaaa_aaaa_aaab));
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fst(dword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(peek::<4>(&cpu, DATA + 16), 0x3eaa_aaabu32.to_le_bytes());
        assert_eq!(fsw(&cpu), top(7) | fsw::PE | C1);
        asm(&mut cpu, |a| a.fstp(qword_ptr(rbx + 32))).unwrap();
        assert_eq!(peek::<8>(&cpu, DATA + 32), 0x3fd5_5555_5555_5555u64.to_le_bytes());
        assert_eq!(fsw(&cpu), fsw::PE);
        // Masked overflow to single: infinity.
        poke_x80(&cpu, DATA, x(0x7ffe, 0x8000_0000_0000_0000));
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fstp(dword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(peek::<4>(&cpu, DATA + 16), 0x7f80_0000u32.to_le_bytes());
        assert_eq!(fsw(&cpu), fsw::PE | fsw::OE | C1);
        // An SNaN stores quieted, with IE.
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA, x(0x7fff, 0x8000_0000_0000_0001 | (0x1234 << 40)));
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fstp(dword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(peek::<4>(&cpu, DATA + 16), (0x7fc0_0000u32 | 0x1234).to_le_bytes());
        assert_eq!(fsw(&cpu), fsw::IE);
        // FSTP m80 is exact and FLD m80 keeps SNaNs.
        let mut cpu = machine(64);
        let snan = x(0xffff, 0x8000_0000_0000_0001);
        poke_x80(&cpu, DATA, snan);
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fstp(tword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(peek::<10>(&cpu, DATA + 16), m80_bytes(snan));
        assert_eq!(fsw(&cpu), 0);
    }

    #[test]
    fn integer_loads_and_stores() {
        let mut cpu = machine(64);
        poke(&cpu, DATA, &(-5i16).to_le_bytes());
        poke(&cpu, DATA + 8, &i64::MIN.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fild(word_ptr(rbx))?;
            a.fild(qword_ptr(rbx + 8))
        })
        .unwrap();
        assert_eq!(st(&cpu, 1), sf::from_i64(-5));
        assert_eq!(st(&cpu, 0), x(0xc03e, 0x8000_0000_0000_0000));
        assert_eq!(fsw(&cpu), top(6));

        let two_half = x(0x4000, 0xa000_0000_0000_0000);
        for (fcw, want, flags) in [(0x037fu16, 2u16, fsw::PE), (0x0b7f, 3, fsw::PE | C1), (0x077f, 2, fsw::PE)] {
            let mut cpu = machine(64);
            cpu.state.fpu.fcw = fcw;
            poke_x80(&cpu, DATA, two_half);
            asm(&mut cpu, |a| {
                a.fld(tword_ptr(rbx))?;
                a.fist(word_ptr(rbx + 16))
            })
            .unwrap();
            assert_eq!(peek::<2>(&cpu, DATA + 16), want.to_le_bytes(), "fcw {fcw:#x}");
            assert_eq!(fsw(&cpu), top(7) | flags);
        }
        // FISTTP truncates whatever RC says.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x077f;
        poke_x80(&cpu, DATA, two_half.negate());
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fisttp(dword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(peek::<4>(&cpu, DATA + 16), (-2i32).to_le_bytes());
        assert_eq!(fsw(&cpu), fsw::PE);
        // Out of range: IE and the integer indefinite; -32768 is in range.
        let mut cpu = machine(64);
        poke(&cpu, DATA, &40000i32.to_le_bytes());
        poke(&cpu, DATA + 4, &(-32768i32).to_le_bytes());
        asm(&mut cpu, |a| {
            a.fild(dword_ptr(rbx))?;
            a.fistp(word_ptr(rbx + 16))?;
            a.fild(dword_ptr(rbx + 4))?;
            a.fistp(word_ptr(rbx + 18))
        })
        .unwrap();
        assert_eq!(peek::<4>(&cpu, DATA + 16), [0x00, 0x80, 0x00, 0x80]);
        assert_eq!(fsw(&cpu), fsw::IE);
        // Unmasked IE: no store, no pop.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x037e;
        poke(&cpu, DATA, &40000i32.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fild(dword_ptr(rbx))?;
            a.fistp(word_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(peek::<2>(&cpu, DATA + 16), [0, 0]);
        assert_eq!(fsw(&cpu), top(7) | fsw::IE | ES_B);
    }

    #[test]
    fn bcd() {
        let mut cpu = machine(64);
        // -123456789012345678
        let bcd = [0x78, 0x56, 0x34, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x80];
        poke(&cpu, DATA, &bcd);
        asm(&mut cpu, |a| a.fbld(tword_ptr(rbx))).unwrap();
        assert_eq!(st(&cpu, 0), sf::from_i64(-123_456_789_012_345_678));
        asm(&mut cpu, |a| a.fbstp(tword_ptr(rbx + 16))).unwrap();
        assert_eq!(peek::<10>(&cpu, DATA + 16), bcd);
        assert_eq!(fsw(&cpu), 0);
        // 10^18 does not fit: IE and the BCD indefinite.
        poke(&cpu, DATA, &1_000_000_000_000_000_000i64.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fild(qword_ptr(rbx))?;
            a.fbstp(tword_ptr(rbx + 16))
        })
        .unwrap();
        assert_eq!(peek::<10>(&cpu, DATA + 16), [0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0xff]);
        assert_eq!(fsw(&cpu), fsw::IE);
    }

    #[test]
    fn comparisons() {
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fldz()?;
            a.fcom_2(st0, st1)
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(6) | C0);
        asm(&mut cpu, |a| a.fcomi(st0, st1)).unwrap();
        assert_eq!(cpu.state.flags() & (rf::ZF | rf::PF | rf::CF), rf::CF);
        asm(&mut cpu, |a| a.fucomip(st0, st1)).unwrap();
        assert_eq!(fsw(&cpu), top(7) | C0);
        asm(&mut cpu, |a| a.fcomi(st0, st0)).unwrap();
        assert_eq!(cpu.state.flags() & (rf::ZF | rf::PF | rf::CF | rf::OF | rf::SF | rf::AF), rf::ZF);
        // FTST of -0 is "equal".
        asm(&mut cpu, |a| {
            a.fldz()?;
            a.fchs()?;
            a.ftst()
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(6) | C3);
        // FICOM: 1 > 0.
        poke(&cpu, DATA, &0i16.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fstp(st0)?;
            a.ficomp(word_ptr(rbx))
        })
        .unwrap();
        assert_eq!(fsw(&cpu), 0);

        // NaNs: FUCOM is quiet for QNaNs, FCOM is not; both report unordered.
        let mut cpu = machine(64);
        poke(&cpu, DATA, &0x7ff8_0000_0000_0000u64.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fld(qword_ptr(rbx))?;
            a.fucom(st0, st1)
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(6) | C3 | C2 | C0);
        asm(&mut cpu, |a| a.fcom_2(st0, st1)).unwrap();
        assert_eq!(fsw(&cpu), top(6) | C3 | C2 | C0 | fsw::IE);
        asm(&mut cpu, |a| {
            a.fnclex()?;
            a.fucompp()
        })
        .unwrap();
        assert_eq!(fsw(&cpu), C3 | C2 | C0);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fld(qword_ptr(rbx))?;
            a.fucomi(st0, st1)
        })
        .unwrap();
        assert_eq!(cpu.state.flags() & (rf::ZF | rf::PF | rf::CF), rf::ZF | rf::PF | rf::CF);
        // Unmasked IE: condition codes and stack unchanged.
        let mut cpu = machine(64);
        cpu.state.fpu.fcw = 0x037e;
        poke(&cpu, DATA, &0x7ff8_0000_0000_0000u64.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fld(qword_ptr(rbx))?;
            a.fcompp()
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(6) | fsw::IE | ES_B);
        // Empty operand, masked: unordered and the pops happen.
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fcompp()
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(1) | C3 | C2 | C0 | fsw::IE | fsw::SF);
    }

    #[test]
    fn fxam_classes() {
        let cases: [(X80, u16); 7] = [
            (ONE, C2),
            (ONE.negate(), C2 | C1),
            (X80::inf(true), C2 | C0 | C1),
            (ZERO, C3),
            (x(0, 5), C3 | C2),
            (INDEFINITE, C0 | C1),
            (x(0x3fff, 0x4000_0000_0000_0000), 0),
        ];
        for (v, cc) in cases {
            let mut cpu = machine(64);
            poke_x80(&cpu, DATA, v);
            asm(&mut cpu, |a| {
                a.fld(tword_ptr(rbx))?;
                a.fxam()
            })
            .unwrap();
            assert_eq!(fsw(&cpu), top(7) | cc, "{v:?}");
        }
        // Empty: C3 and C0, C1 from the stale sign.
        let mut cpu = machine(64);
        cpu.state.fpu.regs[0].sign_exp = 0x8000;
        asm(&mut cpu, |a| a.fxam()).unwrap();
        assert_eq!(fsw(&cpu), C3 | C1 | C0);
    }

    #[test]
    fn exchange_conditional_moves_and_stack_control() {
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fldz()?;
            a.fxch(st0, st1)
        })
        .unwrap();
        assert_eq!((st(&cpu, 0), st(&cpu, 1)), (ONE, ZERO));
        cpu.state.set_arith_flags(rf::ARITH, rf::ZF);
        asm(&mut cpu, |a| {
            a.fcmovb(st0, st1)?;
            a.fcmovne(st0, st1)
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), ONE);
        asm(&mut cpu, |a| a.fcmove(st0, st1)).unwrap();
        assert_eq!(st(&cpu, 0), ZERO);
        assert_eq!(fsw(&cpu), top(6));
        // FXCH with an empty register, masked: the indefinite is swapped in.
        asm(&mut cpu, |a| a.fxch(st0, st3)).unwrap();
        assert_eq!(st(&cpu, 0), INDEFINITE);
        assert_eq!(st(&cpu, 3), ZERO);
        assert_eq!(fsw(&cpu), top(6) | fsw::IE | fsw::SF);
        asm(&mut cpu, |a| {
            a.fnclex()?;
            a.fincstp()?;
            a.fincstp()?;
            a.fdecstp()
        })
        .unwrap();
        assert_eq!(fsw(&cpu), top(7));
        asm(&mut cpu, |a| a.ffree(st0)).unwrap();
        assert!(x87::is_empty(&cpu.state.fpu, 0));
        assert_eq!(fsw(&cpu), top(7));
        asm(&mut cpu, |a| a.fstp(st0)).unwrap();
        assert_eq!(fsw(&cpu), fsw::IE | fsw::SF);
    }

    #[test]
    fn remainder_scale_extract_round_sqrt() {
        let mut cpu = machine(64);
        poke(&cpu, DATA, &2i32.to_le_bytes());
        poke(&cpu, DATA + 4, &7i32.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fild(dword_ptr(rbx))?;
            a.fild(dword_ptr(rbx + 4))?;
            a.fprem()
        })
        .unwrap();
        // 7 = 3 * 2 + 1: Q = 3 -> C3 (Q1) and C1 (Q0).
        assert_eq!(st(&cpu, 0), ONE);
        assert_eq!(fsw(&cpu), top(6) | C3 | C1);
        asm(&mut cpu, |a| {
            a.fstp(st0)?;
            a.fild(dword_ptr(rbx + 4))?;
            a.fprem1()
        })
        .unwrap();
        // 7 = 4 * 2 - 1: Q = 4 -> C0 (Q2).
        assert_eq!(st(&cpu, 0), ONE.negate());
        assert_eq!(fsw(&cpu), top(6) | C0);
        // A huge dividend reduces partially: C2 set.
        poke_x80(&cpu, DATA + 16, x(0x3fff + 300, 0xc000_0000_0000_0001));
        asm(&mut cpu, |a| {
            a.fstp(st0)?;
            a.fld(tword_ptr(rbx + 16))?;
            a.fprem()
        })
        .unwrap();
        assert_eq!(fsw(&cpu) & C2, C2);
        // Loop FPREM until complete: the result is the exact remainder.
        let mut n = 0;
        while fsw(&cpu) & C2 != 0 {
            asm(&mut cpu, |a| a.fprem()).unwrap();
            n += 1;
            assert!(n < 20);
        }
        let mut c = Ctx::new(sf::Rc::Nearest, 64);
        let r = st(&cpu, 0);
        assert_eq!(sf::compare(r, sf::from_i64(2), true, &mut c), Some(Ordering::Less));
        // 3 * 2^(1<<63 whatever) checked via FSCALE: 1.5 * 2^3 = 12.
        let mut cpu = machine(64);
        poke(&cpu, DATA, &3.9f64.to_le_bytes());
        poke(&cpu, DATA + 8, &1.5f64.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld(qword_ptr(rbx))?;
            a.fld(qword_ptr(rbx + 8))?;
            a.fscale()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), sf::from_i64(12));
        assert_eq!(fsw(&cpu), top(6));
        // FXTRACT of 12: exponent 3, significand 1.5.
        asm(&mut cpu, |a| a.fxtract()).unwrap();
        assert_eq!(st(&cpu, 0), x(0x3fff, 0xc000_0000_0000_0000));
        assert_eq!(st(&cpu, 1), sf::from_i64(3));
        assert_eq!(fsw(&cpu), top(5));
        // FXTRACT of zero: ZE, exponent -inf.
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fldz()?;
            a.fxtract()
        })
        .unwrap();
        assert_eq!((st(&cpu, 0), st(&cpu, 1)), (ZERO, X80::inf(true)));
        assert_eq!(fsw(&cpu), top(6) | fsw::ZE);
        // FRNDINT, FABS, FSQRT.
        let mut cpu = machine(64);
        poke(&cpu, DATA, &(-2.5f64).to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld(qword_ptr(rbx))?;
            a.frndint()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), sf::from_i64(-2));
        assert_eq!(fsw(&cpu), top(7) | fsw::PE);
        asm(&mut cpu, |a| {
            a.fabs()?;
            a.fld1()?;
            a.faddp(st1, st0)?;
            a.fsqrt()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(0x3fff, 0xddb3_d742_c265_539e));
        assert_eq!(fsw(&cpu), top(7) | fsw::PE | C1);
    }

    #[test]
    fn transcendental_instructions() {
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fsincos()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(0x3ffe, 0x8a51_407d_a834_5c92));
        assert_eq!(st(&cpu, 1), x(0x3ffe, 0xd76a_a478_4867_7021));
        assert_eq!(fsw(&cpu) & !(C1 | fsw::PE), top(6));
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fptan()
        })
        .unwrap();
        assert_eq!((st(&cpu, 1), st(&cpu, 0)), (x(0x3fff, 0xc759_22e5_f71d_2dc5), ONE));
        // FPATAN pops: atan(1 / 1) = pi/4.
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fpatan()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(0x3ffe, 0xc90f_daa2_2168_c235));
        assert_eq!(fsw(&cpu) & fsw::TOP, top(6));
        // FYL2X: 3 * log2(8) = 9, exact.
        let mut cpu = machine(64);
        poke(&cpu, DATA, &3i32.to_le_bytes());
        poke(&cpu, DATA + 4, &8i32.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fild(dword_ptr(rbx))?;
            a.fild(dword_ptr(rbx + 4))?;
            a.fyl2x()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), sf::from_i64(9));
        assert_eq!(fsw(&cpu), top(7));
        // FYL2X of 0: ZE and -inf.
        asm(&mut cpu, |a| {
            a.fldz()?;
            a.fyl2x()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), X80::inf(true));
        assert_eq!(fsw(&cpu), top(7) | fsw::ZE);
        // FSIN out of range: C2, operand unchanged.
        let mut cpu = machine(64);
        poke_x80(&cpu, DATA, x(0x403e, 0x8000_0000_0000_0000));
        asm(&mut cpu, |a| {
            a.fld(tword_ptr(rbx))?;
            a.fsin()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(0x403e, 0x8000_0000_0000_0000));
        assert_eq!(fsw(&cpu), top(7) | C2);
        // Just inside the range, with exact reduction: sin(2^62) = -0.70374...
        poke_x80(&cpu, DATA, x(0x403d, 0x8000_0000_0000_0000));
        asm(&mut cpu, |a| {
            a.fstp(st0)?;
            a.fld(tword_ptr(rbx))?;
            a.fsin()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(0xbffe, 0xb3f2_b9aa_f80a_3946));
        assert_eq!(fsw(&cpu) & !C1, top(7) | fsw::PE);
        // F2XM1(-1) = -0.5 exactly.
        let mut cpu = machine(64);
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fchs()?;
            a.f2xm1()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), x(0xbffe, 0x8000_0000_0000_0000));
        assert_eq!(fsw(&cpu), top(7));
        // FSIN of infinity: IE.
        asm(&mut cpu, |a| {
            a.fldz()?;
            a.fdivr_2(st0, st1)?;
            a.fnclex()?;
            a.fsin()
        })
        .unwrap();
        assert_eq!(st(&cpu, 0), INDEFINITE);
        assert_eq!(fsw(&cpu), top(6) | fsw::IE);
    }

    #[test]
    fn environment_layouts() {
        // 32-bit protected mode, 28-byte image.
        let mut cpu = machine(32);
        cpu.state.gpr[3] = DATA;
        poke(&cpu, DATA + 0x100, &1.0f64.to_le_bytes());
        asm_bits(&mut cpu, 32, |a| {
            a.fld(qword_ptr(ebx + 0x100))?;
            a.fldz()?;
            a.fnstenv(ptr(ebx))
        })
        .unwrap();
        let img = peek::<28>(&cpu, DATA);
        let dw = |i: usize| u32::from_le_bytes([img[i], img[i + 1], img[i + 2], img[i + 3]]);
        assert_eq!(dw(0), 0xffff_037f);
        assert_eq!(dw(4), 0xffff_0000 | u32::from(top(6)));
        assert_eq!(dw(8), 0xffff_1fff);
        // FLDZ (D9 EE) is the last non-control instruction: FIP = its address.
        assert_eq!(dw(12), CODE as u32 + 6);
        assert_eq!(dw(16), 0x01ee_0008);
        assert_eq!(dw(20), DATA as u32 + 0x100);
        assert_eq!(dw(24), 0xffff_0010);
        // FLDENV restores it (after FNINIT), recomputing tags from contents.
        asm_bits(&mut cpu, 32, |a| {
            a.fninit()?;
            a.fldenv(ptr(ebx))
        })
        .unwrap();
        assert_eq!(cpu.state.fpu.fcw, 0x037f);
        assert_eq!(fsw(&cpu), top(6));
        assert_eq!(cpu.state.fpu.ftw, 0x1fff);
        assert_eq!(cpu.state.fpu.fip, CODE + 6);
        assert_eq!(cpu.state.fpu.fop, 0x1ee);

        // Real mode, 16-bit image: linear pointers, FOP beside FIP[19:16].
        let mut cpu = machine(16);
        cpu.state.seg[sreg::CS] = Segment::real(0x1234, cpu.state.seg[sreg::CS].attr);
        cpu.state.fpu.fip = 0xfff0;
        cpu.state.fpu.fcs = 0x1234;
        cpu.state.fpu.fop = 0x5e8;
        asm_bits(&mut cpu, 16, |a| a.fnstenv(ptr(bx))).unwrap();
        let img = peek::<14>(&cpu, DATA);
        let w = |i: usize| u16::from_le_bytes([img[i], img[i + 1]]);
        assert_eq!((w(0), w(2), w(4)), (0x037f, 0, 0xffff));
        // 0x1234 * 16 + 0xfff0 = 0x22330.
        assert_eq!((w(6), w(8)), (0x2330, 0x2000 | 0x5e8));
        asm_bits(&mut cpu, 16, |a| a.fldenv(ptr(bx))).unwrap();
        assert_eq!((cpu.state.fpu.fip, cpu.state.fpu.fcs, cpu.state.fpu.fop), (0x22330, 0, 0x5e8));
        // 32-bit operand size in real mode (66 D9 37: fnstenv [bx]).
        exec(&mut cpu, 16, &[0x66, 0xd9, 0x37]).unwrap();
        let img = peek::<28>(&cpu, DATA);
        let dw = |i: usize| u32::from_le_bytes([img[i], img[i + 1], img[i + 2], img[i + 3]]);
        assert_eq!((dw(12), dw(16)), (0xffff_2330, 0x2000 | 0x5e8));
    }

    #[test]
    fn fsave_frstor_round_trip() {
        let mut cpu = machine(64);
        poke(&cpu, DATA + 0x200, &7.25f64.to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fldpi()?;
            a.fld(qword_ptr(rbx + 0x200))?;
            a.fldz()?;
            a.fsqrt()
        })
        .unwrap();
        cpu.state.fpu.fcw = 0x0f7f;
        let saved = cpu.state.fpu;
        asm(&mut cpu, |a| a.fnsave(ptr(rbx))).unwrap();
        assert_eq!(cpu.state.fpu.fcw, 0x037f);
        assert_eq!(cpu.state.fpu.ftw, 0xffff);
        assert_eq!(fsw(&cpu), 0);
        let img = peek::<108>(&cpu, DATA);
        assert_eq!(&img[28..38], &m80_bytes(ZERO));
        assert_eq!(&img[38..48], &m80_bytes(x(0x4001, 0xe800_0000_0000_0000)));
        asm(&mut cpu, |a| a.frstor(ptr(rbx))).unwrap();
        assert_eq!(cpu.state.fpu, saved);
    }

    #[test]
    fn fxsave_fxrstor() {
        let mut cpu = machine(64);
        poke(&cpu, DATA + 0x400, &(-0.75f32).to_le_bytes());
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fld(dword_ptr(rbx + 0x400))?;
            a.fldz()
        })
        .unwrap();
        cpu.state.xmm[0] = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff;
        cpu.state.xmm[15] = 0xf0f0;
        cpu.state.mxcsr = 0x1fc0;
        let saved = cpu.state;
        asm(&mut cpu, |a| a.fxsave64(ptr(rbx))).unwrap();
        let img = peek::<512>(&cpu, DATA);
        assert_eq!(&img[0..8], &[0x7f, 0x03, 0x00, 0x28, 0xe0, 0x00, 0xee, 0x01]);
        assert_eq!(u64::from_le_bytes(img[8..16].try_into().unwrap()), CODE + 8);
        assert_eq!(u64::from_le_bytes(img[16..24].try_into().unwrap()), DATA + 0x400);
        assert_eq!(&img[24..32], &[0xc0, 0x1f, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!(&img[32..48], &[0u8; 16]);
        assert_eq!(&img[48..58], &m80_bytes(x(0xbffe, 0xc000_0000_0000_0000)));
        assert_eq!(u128::from_le_bytes(img[160..176].try_into().unwrap()), saved.xmm[0]);
        assert_eq!(u128::from_le_bytes(img[400..416].try_into().unwrap()), 0xf0f0);
        // The 32-bit layout keeps FCS and FDS.
        asm(&mut cpu, |a| a.fxsave(ptr(rbx + 0x200))).unwrap();
        let img = peek::<32>(&cpu, DATA + 0x200);
        assert_eq!(u32::from_le_bytes(img[8..12].try_into().unwrap()), CODE as u32 + 8);
        assert_eq!(u16::from_le_bytes([img[12], img[13]]), 0x08);
        assert_eq!(u16::from_le_bytes([img[20], img[21]]), 0x10);

        // Trash the state, restore it (the 64-bit image has no selectors).
        asm(&mut cpu, |a| {
            a.fninit()?;
            a.fld1()
        })
        .unwrap();
        cpu.state.xmm = [0; 16];
        cpu.state.mxcsr = 0x1f80;
        asm(&mut cpu, |a| a.fxrstor64(ptr(rbx))).unwrap();
        let mut want = saved.fpu;
        want.fcs = 0;
        want.fds = 0;
        assert_eq!(cpu.state.fpu, want);
        assert_eq!(cpu.state.xmm, saved.xmm);
        assert_eq!(cpu.state.mxcsr, saved.mxcsr);
        asm(&mut cpu, |a| a.fxrstor(ptr(rbx + 0x200))).unwrap();
        assert_eq!(cpu.state.fpu, saved.fpu);

        // Misaligned: #GP(0). Reserved MXCSR bits: #GP(0), nothing changed.
        assert_eq!(asm(&mut cpu, |a| a.fxsave(ptr(rbx + 8))), Err(GP0));
        poke(&cpu, DATA + 24, &0x0001_1f80u32.to_le_bytes());
        let before = cpu.state;
        assert_eq!(asm(&mut cpu, |a| a.fxrstor(ptr(rbx))), Err(GP0));
        assert_eq!((cpu.state.fpu, cpu.state.mxcsr, cpu.state.xmm), (before.fpu, before.mxcsr, before.xmm));
        // Outside 64-bit mode only XMM0-7 are written.
        let mut cpu = machine(32);
        poke(&cpu, DATA + 288, &[0xaa; 16]);
        asm_bits(&mut cpu, 32, |a| a.fxsave(ptr(ebx))).unwrap();
        assert_eq!(peek::<16>(&cpu, DATA + 288), [0xaa; 16]);
    }

    #[test]
    fn instruction_and_data_pointers() {
        let mut cpu = machine(64);
        poke(&cpu, DATA + 8, &2.0f64.to_le_bytes());
        // fld1 (2 bytes); fadd qword [rbx+8] (DC 43 08); fnstcw; fwait
        asm(&mut cpu, |a| {
            a.fld1()?;
            a.fadd(qword_ptr(rbx + 8))?;
            a.fnstcw(word_ptr(rbx + 0x40))?;
            a.wait()
        })
        .unwrap();
        let f = cpu.state.fpu;
        assert_eq!((f.fip, f.fcs, f.fop), (CODE + 2, 0x08, 0x443));
        assert_eq!((f.fdp, f.fds), (DATA + 8, 0x10));
        // Register forms: FOP includes ST(i); FDP stays.
        asm(&mut cpu, |a| a.fxch(st0, st5)).unwrap();
        assert_eq!(cpu.state.fpu.fop, 0x1cd);
        assert_eq!(cpu.state.fpu.fdp, DATA + 8);
        // SIB and 16-bit forms of ModR/M.
        cpu.state.gpr[1] = 0;
        asm(&mut cpu, |a| a.fld(dword_ptr(rbx + rcx * 4 + 0x100))).unwrap();
        assert_eq!(cpu.state.fpu.fop, 0x184);
        let mut cpu = machine(16);
        cpu.state.gpr[6] = 2;
        asm_bits(&mut cpu, 16, |a| a.fild(word_ptr(bx + si))).unwrap();
        assert_eq!(cpu.state.fpu.fop, 0x700);
        assert_eq!(cpu.state.fpu.fdp, DATA + 2);
    }

    #[test]
    fn a_faulting_memory_operand_leaves_the_fpu_alone() {
        let mut cpu = machine(32);
        asm_bits(&mut cpu, 32, |a| {
            a.fld1()?;
            a.fldpi()
        })
        .unwrap();
        cpu.state.seg[sreg::DS].limit = 0xffff;
        let before = cpu.state.fpu;
        cpu.state.gpr[3] = 0xfffc;
        assert_eq!(asm_bits(&mut cpu, 32, |a| a.fstp(qword_ptr(ebx))), Err(GP0));
        assert_eq!(asm_bits(&mut cpu, 32, |a| a.fadd(qword_ptr(ebx))), Err(GP0));
        assert_eq!(asm_bits(&mut cpu, 32, |a| a.fnsave(ptr(ebx))), Err(GP0));
        assert_eq!(cpu.state.fpu, before);
    }

    #[test]
    fn mmx_aliasing_and_emms() {
        let mut cpu = machine(64);
        asm(&mut cpu, |a| a.fld1()).unwrap();
        x87::mmx_write(&mut cpu.state, 3, 0xdead_beef_0000_0001);
        assert_eq!(x87::mmx_read(&cpu.state, 3), 0xdead_beef_0000_0001);
        assert_eq!(cpu.state.fpu.ftw, 0);
        assert_eq!(x87::top(&cpu.state.fpu), 0);
        assert_eq!(st(&cpu, 3), x(0xffff, 0xdead_beef_0000_0001));
        asm(&mut cpu, |a| a.emms()).unwrap();
        assert_eq!(cpu.state.fpu.ftw, 0xffff);
    }
}
