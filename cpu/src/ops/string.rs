//! String instructions (SDM Vol. 2: MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS)
//! with REP/REPE/REPNE.
//!
//! The address size comes from iced's operand kinds (`MemorySegRSI`,
//! `MemoryESEDI`, ...). A repeated instruction runs a bounded number of
//! iterations per execution and then re-executes itself, so interrupts are
//! taken between chunks and a fault leaves RCX/RSI/RDI at the faulting element,
//! as on hardware.
//!
//! REP MOVS and REP STOS moving forward run in bulk: each step moves every
//! element that lies in the current source and destination pages with one
//! translation per page and one host copy, which is what makes the guest's
//! `memcpy`, `copy_to_user` and `clear_page` cheap (the CPU model advertises
//! ERMS so Linux uses `rep movsb`/`rep stosb` for them). Anything unusual (a
//! fault, MMIO, an element crossing a page, overlap that repeats bytes,
//! alignment checking or data breakpoints) takes the one-element path, which
//! is the reference.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use mmu::Access;

use super::debug::dr7;
use super::{mask, Handler};
use crate::cpu::Cpu;
use crate::exception::Fault;
use crate::flags::FlagOp;
use crate::state::{cr, flags, sreg};

/// Iterations of a REP instruction before it yields to the outer loop.
const REP_CHUNK: u64 = 4096;

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsq => string_op,
        Mnemonic::Movsd if code == Code::Movsd_m32_m32 => string_op,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => string_op,
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => string_op,
        Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsq => string_op,
        Mnemonic::Cmpsd if code == Code::Cmpsd_m32_m32 => string_op,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => string_op,
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => string_op,
        Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => string_op,
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
    Ins,
    Outs,
}

fn addr_mask(insn: &Instruction) -> u64 {
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemoryESDI => return 0xffff,
            OpKind::MemorySegESI | OpKind::MemoryESEDI => return 0xffff_ffff,
            OpKind::MemorySegRSI | OpKind::MemoryESRDI => return u64::MAX,
            _ => {}
        }
    }
    u64::MAX
}

fn string_op(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let op = match insn.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => Op::Movs,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => Op::Stos,
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => Op::Lods,
        Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq => Op::Cmps,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => Op::Scas,
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => Op::Ins,
        _ => Op::Outs,
    };
    let size = match insn.memory_size().size() {
        0 => 1,
        n => n as u32,
    } as u64;
    if matches!(op, Op::Ins | Op::Outs) {
        crate::ops::system::check_io(cpu, cpu.state.gpr[2] as u16, size as u32)?;
        cpu.io_breakpoints(cpu.state.gpr[2] as u16, size as u32);
    }
    let am = addr_mask(insn);
    let rep = insn.has_rep_prefix() || insn.has_repe_prefix() || insn.has_repne_prefix();
    let repne = insn.has_repne_prefix();
    let src_seg = if matches!(op, Op::Movs | Op::Lods | Op::Cmps | Op::Outs) { super::mem_seg(insn) } else { sreg::DS };
    let step = if cpu.state.rflags & flags::DF != 0 { size.wrapping_neg() } else { size };
    let s = size as u32;
    let mut n = 0u64;
    // Single-stepping traps after every iteration, so run one at a time.
    let chunk = if cpu.state.rflags & flags::TF != 0 { 1 } else { REP_CHUNK };
    let st = &cpu.state;
    let alignment_checked = st.rflags & flags::AC != 0 && st.cpl == 3 && st.cr0 & cr::CR0_AM != 0;
    let bulk_ok = rep
        && matches!(op, Op::Movs | Op::Stos)
        && step == size
        && chunk > 1
        && !alignment_checked
        && st.dr[7] & dr7::ENABLES == 0;
    loop {
        if rep {
            if cpu.state.gpr[1] & am == 0 {
                return Ok(());
            }
            // A data breakpoint hit traps after the iteration that hit it.
            if n == chunk || (n > 0 && cpu.sys.hits != 0) {
                // Come back for the rest after the outer loop has looked at
                // interrupts.
                come_back(cpu);
                cpu.block_break = true;
                return Ok(());
            }
        }
        if bulk_ok {
            if let Some(k) = bulk(cpu, op, size, am, src_seg, chunk - n) {
                n += k;
                if cpu.stop {
                    stop_here(cpu, am);
                    return Ok(());
                }
                continue;
            }
        }
        let si = cpu.state.gpr[6] & am;
        let di = cpu.state.gpr[7] & am;
        let mut stop = false;
        match op {
            Op::Movs => {
                let v = cpu.read_mem(src_seg, si, s)?;
                cpu.write_mem(sreg::ES, di, s, v)?;
            }
            Op::Stos => {
                let v = cpu.state.gpr[0] & mask(s);
                cpu.write_mem(sreg::ES, di, s, v)?;
            }
            Op::Lods => {
                let v = cpu.read_mem(src_seg, si, s)?;
                super::write_acc(cpu, s, v);
            }
            Op::Cmps => {
                // The CPU checks the destination (ES:rDI) first, its
                // alignment and then its page walk, before the source: a
                // misaligned source with a not-present destination page is
                // #PF, a misaligned destination with a not-present source
                // page #AC (differential seeds 0xc524bf49b3e09ad,
                // 0x24df01222634a1f9).
                if cpu.state.rflags & flags::AC != 0 && cpu.state.cr0 & cr::CR0_AM != 0 && cpu.state.cpl == 3 {
                    cpu.probe_read(sreg::ES, di, s)?;
                }
                let a = cpu.read_mem(src_seg, si, s)?;
                let b = cpu.read_mem(sreg::ES, di, s)?;
                let r = a.wrapping_sub(b) & mask(s);
                cpu.state.set_lazy(FlagOp::Sub, s, r, a, b);
                stop = rep && ((r == 0) == repne);
            }
            Op::Scas => {
                let a = cpu.state.gpr[0] & mask(s);
                let b = cpu.read_mem(sreg::ES, di, s)?;
                let r = a.wrapping_sub(b) & mask(s);
                cpu.state.set_lazy(FlagOp::Sub, s, r, a, b);
                stop = rep && ((r == 0) == repne);
            }
            Op::Ins => {
                let v = cpu.io_read(cpu.state.gpr[2] as u16, s as u8);
                cpu.write_mem(sreg::ES, di, s, u64::from(v))?;
            }
            Op::Outs => {
                let v = cpu.read_mem(src_seg, si, s)?;
                cpu.io_write(cpu.state.gpr[2] as u16, s as u8, v as u32);
            }
        }
        if matches!(op, Op::Movs | Op::Lods | Op::Cmps | Op::Outs) {
            bump(&mut cpu.state.gpr[6], step, am);
        }
        if matches!(op, Op::Movs | Op::Stos | Op::Cmps | Op::Scas | Op::Ins) {
            bump(&mut cpu.state.gpr[7], step, am);
        }
        if !rep {
            return Ok(());
        }
        bump(&mut cpu.state.gpr[1], u64::MAX, am);
        n += 1;
        if stop {
            return Ok(());
        }
        if cpu.stop {
            stop_here(cpu, am);
            return Ok(());
        }
    }
}

/// Leave a REP instruction with elements left: it executes again for them.
/// RF is set as between iterations on hardware: an interrupt taken here
/// saves RF = 1, and the instruction's code breakpoint does not fire again
/// when it resumes.
fn come_back(cpu: &mut Cpu) {
    cpu.state.rip = cpu.insn_start;
    cpu.state.rflags |= flags::RF;
}

/// The platform asked the CPU to stop (a device access did): a REP
/// instruction with elements left comes back for them.
fn stop_here(cpu: &mut Cpu, am: u64) {
    if cpu.state.gpr[1] & am != 0 {
        come_back(cpu);
    }
}

/// Add `by` (wrapping) to the part of an index or count register that the
/// address size `am` covers; the bits above it stay.
fn bump(reg: &mut u64, by: u64, am: u64) {
    *reg = (*reg & !am) | (reg.wrapping_add(by) & am);
}

/// Moves (MOVS) or stores (STOS) as many whole elements as lie in the current
/// destination page (and source page), up to `left`, forward. Returns how many
/// it moved, with RCX, RSI and RDI advanced past them, or `None` when the
/// one-element path must take the next element: it then raises any fault
/// exactly, and nothing has been written or moved here.
fn bulk(cpu: &mut Cpu, op: Op, size: u64, am: u64, src_seg: usize, left: u64) -> Option<u64> {
    let count = cpu.state.gpr[1] & am;
    let si = cpu.state.gpr[6] & am;
    let di = cpu.state.gpr[7] & am;
    // Whole elements before the end of the page at `lin`, and before the
    // index register wraps at the address size.
    let room = |lin: u64, index: u64| ((4096 - (lin & 0xfff)) / size).min((am - index).saturating_add(1) / size);
    let dst = cpu.linear(sreg::ES, di, size, true).ok()?;
    let mut k = count.min(left).min(room(dst, di));
    let src = if op == Op::Movs {
        let src = cpu.linear(src_seg, si, size, false).ok()?;
        k = k.min(room(src, si));
        Some(src)
    } else {
        None
    };
    if k < 2 {
        return None;
    }
    let bytes = (k * size) as usize;
    // The segment checks of the whole run (limits, canonical form).
    cpu.linear(sreg::ES, di, bytes as u64, true).ok()?;
    if op == Op::Movs {
        cpu.linear(src_seg, si, bytes as u64, false).ok()?;
    }
    let p = cpu.privilege();
    // The source is read before the destination is written, as element by element.
    let src_phys = match src {
        Some(src) => Some(cpu.translate(src, Access::Read, p).ok()?),
        None => None,
    };
    let dst_phys = cpu.translate(dst, Access::Write, p).ok()?;
    // MMIO: the device sees each element.
    if !cpu.mem().is_backed(dst_phys, bytes as u64) {
        return None;
    }
    let done = match src_phys {
        Some(sp) => {
            // A destination just above the source re-reads bytes the copy has
            // written: that repeats a pattern, element by element. Below the
            // source, or apart from it, the run is a plain move.
            if dst_phys > sp && dst_phys < sp + bytes as u64 {
                return None;
            }
            cpu.mem().copy(sp, dst_phys, bytes as u64)
        }
        None => {
            let v = cpu.state.gpr[0].to_le_bytes();
            let v = &v[..size as usize];
            if v.iter().all(|b| *b == v[0]) {
                cpu.mem().fill(dst_phys, bytes as u64, v[0])
            } else {
                // The element repeated over a small buffer, written piece
                // by piece (the element size divides the piece).
                let mut piece = [0u8; 256];
                for c in piece.chunks_exact_mut(size as usize) {
                    c.copy_from_slice(v);
                }
                let mut r = Ok(());
                for at in (0..bytes).step_by(piece.len()) {
                    let n = piece.len().min(bytes - at);
                    r = r.and(cpu.mem().write(dst_phys + at as u64, &piece[..n]));
                }
                r
            }
        }
    };
    match done {
        // Writes to ROM are dropped, as on a PC.
        Ok(()) | Err(mmu::MemError::ReadOnly { .. }) => {}
        Err(_) => return None,
    }
    cpu.note_code_writes();
    let s = &mut cpu.state;
    if op == Op::Movs {
        bump(&mut s.gpr[6], bytes as u64, am);
    }
    bump(&mut s.gpr[7], bytes as u64, am);
    bump(&mut s.gpr[1], k.wrapping_neg(), am);
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::state::flags::{RF, TF};

    /// Differential seeds 0xc524bf49b3e09ad and 0x24df01222634a1f9: CMPS
    /// checks its destination (alignment, then page walk) before its
    /// source.
    #[test]
    fn cmps_checks_the_destination_before_the_source() {
        use crate::exception::Exception;
        use crate::state::{cr, flags::AC};
        let mut c = long_mode();
        to_user(&mut c, SEL_UCODE64);
        c.state.cr0 |= cr::CR0_AM;
        c.state.rflags |= AC;
        c.state.gpr[6] = DATA + 3;
        c.state.gpr[7] = UNMAPPED + 8;
        let cmpsq = [0x48, 0xa7];
        let pf = Exception::PageFault { addr: UNMAPPED + 8, error_code: 4 };
        assert_eq!(exec_bytes(&mut c, &cmpsq), Err(pf));
        // A misaligned destination beats a not-present source page.
        c.state.gpr[6] = UNMAPPED;
        c.state.gpr[7] = DATA + 1;
        assert_eq!(exec_bytes(&mut c, &cmpsq), Err(Exception::AlignmentCheck));
        // Both pages present: the source's alignment.
        c.state.gpr[6] = DATA + 3;
        c.state.gpr[7] = DATA + 0x100;
        assert_eq!(exec_bytes(&mut c, &cmpsq), Err(Exception::AlignmentCheck));
    }

    #[test]
    fn single_step_traps_after_each_rep_iteration() {
        let mut c = prot_mode();
        c.state.gpr[1] = 3;
        c.state.gpr[7] = DATA;
        c.state.rflags |= TF;
        step_bytes(&mut c, &[0xf3, 0xaa]); // rep stosb
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(c.state.gpr[1], 2);
        let sp = c.state.gpr[4];
        // The trap points back at the REP instruction, with RF set in the image.
        assert_eq!(c.mem().read_u32(sp).unwrap() as u64, CODE);
        assert_ne!(u64::from(c.mem().read_u32(sp + 8).unwrap()) & RF, 0);
    }

    #[test]
    fn data_breakpoint_inside_a_rep_stops_after_that_iteration() {
        let mut c = prot_mode();
        c.state.dr[0] = DATA + 5;
        c.state.dr[7] = 0x1 | (0b01 << 16);
        c.state.gpr[1] = 100;
        c.state.gpr[7] = DATA;
        step_bytes(&mut c, &[0xf3, 0xaa]);
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(c.state.gpr[1], 94);
        assert_eq!(c.state.dr[6] & 0xf, 1);
        let _ = TF;
    }

    /// REP MOVS/STOS of every element size, run once in bulk and once element
    /// by element (a data breakpoint far away forces that path), from random
    /// places with random counts, overlap included: memory and registers match.
    #[test]
    fn bulk_moves_match_the_element_path() {
        const ENC: [&[u8]; 8] = [
            &[0xf3, 0xa4],
            &[0x66, 0xf3, 0xa5],
            &[0xf3, 0xa5],
            &[0xf3, 0x48, 0xa5],
            &[0xf3, 0xaa],
            &[0x66, 0xf3, 0xab],
            &[0xf3, 0xab],
            &[0xf3, 0x48, 0xab],
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let fill: Vec<u8> = (0..0x10000).map(|_| rnd() as u8).collect();
        for round in 0..200 {
            let enc = ENC[(rnd() % 8) as usize];
            let si = DATA + rnd() % 0x8000;
            // Half the runs write near the source, so runs overlap both ways.
            let di = if round % 2 == 0 { DATA + rnd() % 0xc000 } else { si + rnd() % 64 - 32 };
            let count = rnd() % 3000;
            let rax = rnd();
            let run = |far_breakpoint: bool| {
                let mut c = long_mode();
                c.mem().write(DATA, &fill).unwrap();
                if far_breakpoint {
                    c.state.dr[0] = 0x7fff_0000;
                    c.state.dr[7] = 0x1 | (0b11 << 16);
                }
                c.state.gpr[0] = rax;
                c.state.gpr[1] = count;
                c.state.gpr[6] = si;
                c.state.gpr[7] = di;
                for _ in 0..100 {
                    if c.state.gpr[1] == 0 {
                        break;
                    }
                    exec_bytes(&mut c, enc).unwrap();
                }
                let mut m = vec![0u8; 0x10000];
                c.mem().read(DATA, &mut m).unwrap();
                (c.state.gpr, m)
            };
            let (bulk_regs, bulk_mem) = run(false);
            let (ref_regs, ref_mem) = run(true);
            assert_eq!(bulk_regs, ref_regs, "{enc:x?} si {si:#x} di {di:#x} count {count}");
            assert!(bulk_mem == ref_mem, "{enc:x?} si {si:#x} di {di:#x} count {count}: memory differs");
        }
    }

    /// A REP MOVSQ whose destination runs into a missing page moves every
    /// element before it, then faults with RCX/RSI/RDI at the first element
    /// of the missing page.
    #[test]
    fn bulk_move_stops_at_a_page_fault_on_the_element() {
        let mut c = long_mode();
        let src: Vec<u8> = (0..512).map(|i| i as u8 ^ 0x5a).collect();
        c.mem().write(DATA, &src).unwrap();
        c.state.gpr[1] = 64;
        c.state.gpr[6] = DATA;
        c.state.gpr[7] = UNMAPPED - 256;
        let e = exec_bytes(&mut c, &[0xf3, 0x48, 0xa5]).unwrap_err();
        assert_eq!(e, crate::exception::Exception::PageFault { addr: UNMAPPED, error_code: 2 });
        assert_eq!(c.state.gpr[1], 32);
        assert_eq!(c.state.gpr[6], DATA + 256);
        assert_eq!(c.state.gpr[7], UNMAPPED);
        let mut got = vec![0u8; 256];
        c.mem().read(UNMAPPED - 256, &mut got).unwrap();
        assert_eq!(got, src[..256]);
    }

    /// REP STOSB over a page that holds decoded code drops that code.
    #[test]
    fn bulk_store_over_cached_code_invalidates_it() {
        let mut c = long_mode();
        let page = DATA + 0x3000;
        c.mem().write(page, &[0x90; 16]).unwrap();
        c.mem().mark_code_page(page);
        c.state.gpr[0] = 0xcc;
        c.state.gpr[1] = 4096;
        c.state.gpr[7] = page;
        exec_bytes(&mut c, &[0xf3, 0xaa]).unwrap();
        assert_eq!(c.state.gpr[1], 0);
        assert!(!c.mem().is_code_page(page), "the code page was not invalidated");
        assert_eq!(c.mem().read_u8(page + 4095).unwrap(), 0xcc);
    }
}
