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

/// Fold an operation's exceptions into FSW. Returns whether the result is to
/// be written: false when IE, DE or ZE occurred unmasked.
fn commit(f: &mut FpuState, c: &Ctx) -> bool {
    let pre = c.flags & (IE | DE | ZE);
    if pre & !f.fcw != 0 {
        x87::raise(f, pre);
        return false;
    }
    x87::raise(f, c.flags);
    x87::set_c1(f, c.flags & PE != 0 && c.round_up);
    true
}

/// Conversion flags (DE from a denormal memory operand) merged with the
/// operation's: DE is reported only when IE is not.
fn merge_conv(c: &mut Ctx, conv: u16) {
    if c.flags & IE == 0 {
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

fn read_m80(cpu: &mut Cpu, seg: usize, off: u64) -> Fault<X80> {
    let mut b = [0u8; 10];
    cpu.read_mem_buf(seg, off, &mut b)?;
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
    if !x87::is_empty(&f, 7) {
        if overflow(&mut f) {
            x87::push(&mut f, INDEFINITE);
        }
    } else if x87::is_empty(&f, i) {
        if underflow(&mut f) {
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

fn fst_m<const POP: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let mut f = cpu.state.fpu;
    let size = insn.memory_size();
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
        if c.flags & !f.fcw & (IE | DE | sf::OE | sf::UE) != 0 {
            // Unmasked: the destination and the stack are left alone. An
            // unmasked IE or DE is reported without the later flags.
            let pre = c.flags & (IE | DE);
            let flags = if pre & !f.fcw != 0 { pre } else { c.flags };
            x87::raise(&mut f, flags);
            do_pop = false;
        } else {
            x87::raise(&mut f, c.flags);
            x87::set_c1(&mut f, c.flags & PE != 0 && c.round_up);
            store = Some(b);
        }
    }
    if let Some(b) = store {
        let n = match size {
            MemorySize::Float32 => 4,
            MemorySize::Float64 => 8,
            _ => 10,
        };
        cpu.write_mem_buf(seg, off, &b[..n])?;
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
    cpu.read_mem_buf(seg, off, &mut b)?;
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
        cpu.write_mem_buf(seg, off, &b)?;
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
        let r = apply(OP, x87::st(&f, 0), b, &mut c);
        merge_conv(&mut c, conv.flags);
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
    unary(cpu, insn, false, |a, _| a.neg())
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
fn trig1(cpu: &mut Cpu, insn: &Instruction, op: fn(X80, &mut Ctx) -> Result<X80, ()>) -> Fault<()> {
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
            Err(()) => x87::set_cc(&mut f, fsw::C2, fsw::C2),
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
fn two_results(cpu: &mut Cpu, insn: &Instruction, op: fn(X80, &mut Ctx) -> Result<(X80, X80), ()>) -> Fault<()> {
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
                Err(()) => x87::set_cc(&mut f, fsw::C2, fsw::C2),
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
    merge_conv(&mut c, conv);
    if c.flags & (IE | DE) & !f.fcw != 0 {
        x87::raise(f, c.flags);
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
    cpu.write_mem_buf(seg, off, &img[..layout.len()])?;
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
    cpu.read_mem_buf(seg, off, &mut img[..layout.len()])?;
    x87::load_env(&mut cpu.state.fpu, layout, &img);
    Ok(())
}

fn fnsave<const WAIT: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter_if(cpu, WAIT)?;
    let (seg, off) = mem_operand(cpu, insn);
    let layout = env_layout(cpu, insn);
    let n = layout.len();
    let mut img = [0u8; 108];
    x87::store_env(&cpu.state.fpu, layout, &mut img);
    x87::store_regs(&cpu.state.fpu, &mut img[n..n + 80]);
    cpu.write_mem_buf(seg, off, &img[..n + 80])?;
    x87::init(&mut cpu.state.fpu);
    Ok(())
}

fn frstor(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    enter(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let layout = env_layout(cpu, insn);
    let n = layout.len();
    let mut img = [0u8; 108];
    cpu.read_mem_buf(seg, off, &mut img[..n + 80])?;
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
fn fx_operand(cpu: &Cpu, insn: &Instruction, write: bool) -> Fault<(usize, u64, bool, usize)> {
    check_nm(cpu)?;
    let (seg, off) = mem_operand(cpu, insn);
    let lin = cpu.linear(seg, off, 512, write)?;
    if lin & 15 != 0 {
        return Err(GP0);
    }
    let rex_w = matches!(insn.code(), Code::Fxsave64_m512byte | Code::Fxrstor64_m512byte);
    let xmm = if cpu.state.code64() { 16 } else { 8 };
    Ok((seg, off, rex_w, xmm))
}

fn fxsave(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let (seg, off, rex_w, xmm) = fx_operand(cpu, insn, true)?;
    let mut img = [0u8; 512];
    let n = x87::fxsave(&cpu.state, rex_w, xmm, &mut img);
    cpu.write_mem_buf(seg, off, &img[..n])
}

fn fxrstor(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let (seg, off, rex_w, xmm) = fx_operand(cpu, insn, false)?;
    let mut img = [0u8; 512];
    cpu.read_mem_buf(seg, off, &mut img)?;
    x87::fxrstor(&mut cpu.state, rex_w, xmm, &img)
}
