//! The XSAVE feature set (SDM Vol. 1 chapter 13; Vol. 2 XGETBV, XSETBV,
//! XSAVE, XSAVEOPT, XSAVEC, XRSTOR): XCR0 and the save and restore of the
//! state components it enables. The model supports x87 (bit 0) and SSE
//! (bit 1), both in the legacy region, so an XSAVE area is 576 bytes (the
//! legacy region and the header) in either format; with AVX on
//! ([`Cpu::set_avx`]) also YMM (bit 2: the upper halves of YMM0-15), 256
//! bytes at offset 576 in both formats (the first and only component past
//! the header, so its compacted offset is the standard one), 832 bytes in
//! all; with the protection keys ([`Cpu::pku`]) also PKRU (bit 9: the
//! PKRU register), 8 bytes at offset 2688 in the standard format (2696
//! bytes in all, the offsets between unused) and right after the
//! components before it in the compacted one.
//!
//! Modelling choices:
//! - XINUSE (which components are not in their initial configuration) is
//!   computed from the registers: x87 is in use unless FCW = 037Fh, FSW = 0,
//!   every tag empty, FOP, FIP, FDP, FCS and FDS zero and every data
//!   register zero; SSE is in use unless XMM0-XMM15 are all zero (MXCSR is
//!   saved and restored with SSE but not tracked, as the standard form of
//!   XRSTOR initialises the XMM registers and loads MXCSR independently);
//!   YMM is in use unless the upper halves of YMM0-YMM15 are all zero;
//!   PKRU is in use unless PKRU is zero.
//! - XSAVEOPT uses the init optimization (components not in use are not
//!   written) but not the modified optimization: it writes every component
//!   in use, which the SDM allows.
//! - XSAVE writes only the XSTATE_BV bits of the requested components, and
//!   XSAVEC writes XSTATE_BV and XCOMP_BV; neither writes the other header
//!   bytes or the legacy region's bytes 416-511.
//! - The area is written whole or not at all: every page it touches is
//!   checked for writing before the first byte is stored.
//! - XCR0 with a component the model lacks (only a state another engine
//!   handed over can hold one) makes the instructions that take an XSAVE
//!   area raise #UD, logged once, rather than save or restore part of it.
//! - XGETBV with ECX = 1 (XINUSE) and XSAVES/XRSTORS are not advertised
//!   (CPUID.(EAX=0DH,ECX=1):EAX bits 2 and 3 are clear): ECX = 1 raises
//!   #GP(0), and XSAVES/XRSTORS have no handler (#UD).

use std::sync::atomic::{AtomicBool, Ordering};

use iced_x86::{Code, Instruction};
use mmu::Access;

use super::{ea, mem_seg, Handler};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault, GP0};
use crate::state::{cr, reg, sreg, CpuState, FpuState};
use crate::x87;

/// XCR0 bit of the x87 state component.
pub const X87: u64 = 1 << 0;
/// XCR0 bit of the SSE state component (XMM registers and MXCSR).
pub const SSE: u64 = 1 << 1;
/// XCR0 bit of the AVX state component (bits 255:128 of YMM0-YMM15).
pub const YMM: u64 = 1 << 2;
/// XCR0 bit of the PKRU state component (the PKRU register).
pub const PKRU: u64 = 1 << 9;
/// The XCR0 bits the model supports (CPUID.(EAX=0DH,ECX=0):EDX:EAX).
pub const SUPPORTED: u64 = X87 | SSE;
/// The XCR0 bits the model with AVX supports.
pub const SUPPORTED_AVX: u64 = X87 | SSE | YMM;
/// Bytes of an XSAVE area with the x87 and SSE components, in either
/// format: the 512-byte legacy region and the 64-byte header.
pub const AREA_SIZE: u32 = 576;
/// Where the YMM component sits in the area, in either format.
pub const YMM_OFFSET: u32 = 576;
/// Bytes of the YMM component.
pub const YMM_SIZE: u32 = 256;
/// Where the PKRU component sits in the standard format.
pub const PKRU_OFFSET: u32 = 2688;
/// Bytes of the PKRU component (PKRU, then four reserved bytes).
pub const PKRU_SIZE: u32 = 8;
/// The most of an area that is read or written in one piece: the legacy
/// region, the header and YMM (PKRU goes on its own).
const MAX_FRONT: usize = (YMM_OFFSET + YMM_SIZE) as usize;
/// Offset of the XSAVE header (XSTATE_BV, then XCOMP_BV).
const HEADER: usize = 512;
/// XCOMP_BV bit 63: the area is in the compacted format.
const COMPACTED: u64 = 1 << 63;

pub fn handler(code: Code) -> Option<Handler> {
    use Code::*;
    Some(match code {
        Xgetbv => xgetbv,
        Xsetbv => xsetbv,
        Xsave_mem | Xsave64_mem => |c, i| save(c, i, Kind::Standard),
        Xsaveopt_mem | Xsaveopt64_mem => |c, i| save(c, i, Kind::Opt),
        Xsavec_mem | Xsavec64_mem => |c, i| save(c, i, Kind::Compacted),
        Xrstor_mem | Xrstor64_mem => xrstor,
        _ => return None,
    })
}

/// Bytes of a standard-format XSAVE area holding the components of `mask`.
pub fn area_size(mask: u64) -> u32 {
    if mask & PKRU != 0 {
        PKRU_OFFSET + PKRU_SIZE
    } else {
        front_size(mask)
    }
}

/// Bytes of a compacted-format XSAVE area whose XCOMP_BV holds `mask`.
pub fn compacted_size(mask: u64) -> u32 {
    front_size(mask) + if mask & PKRU != 0 { PKRU_SIZE } else { 0 }
}

/// The legacy region, the header and YMM when `mask` has it: where the
/// compacted format puts the component after them.
fn front_size(mask: u64) -> u32 {
    if mask & YMM != 0 {
        YMM_OFFSET + YMM_SIZE
    } else {
        AREA_SIZE
    }
}

/// Where PKRU sits in an area of either format whose XCOMP_BV (compacted)
/// holds `mask`.
fn pkru_offset(compacted: bool, mask: u64) -> u32 {
    if compacted {
        front_size(mask)
    } else {
        PKRU_OFFSET
    }
}

/// The components not in their initial configuration (XINUSE), of those
/// the model supports.
pub fn in_use(s: &CpuState) -> u64 {
    // x87: as FNINIT leaves it, with every data register zero.
    let mut fninit = s.fpu;
    x87::init(&mut fninit);
    let x87_init = fninit == s.fpu && s.fpu.regs.iter().all(|r| r.mantissa == 0 && r.sign_exp == 0);
    let sse_init = s.xmm.iter().all(|&x| x == 0);
    let ymm_init = s.ymm_hi.iter().all(|&x| x == 0);
    (if x87_init { 0 } else { X87 })
        | (if sse_init { 0 } else { SSE })
        | (if ymm_init { 0 } else { YMM })
        | (if s.pkru == 0 { 0 } else { PKRU })
}

/// #UD unless CR4.OSXSAVE is set (and for LOCK).
fn check_enabled(cpu: &Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.cr4 & cr::CR4_OSXSAVE == 0 || insn.has_lock_prefix() {
        return Err(Exception::InvalidOpcode);
    }
    Ok(())
}

/// XGETBV: EDX:EAX = XCR[ECX]. Only XCR0 exists; any CPL may read it.
fn xgetbv(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_enabled(cpu, insn)?;
    if cpu.state.gpr[reg::RCX] as u32 != 0 {
        return Err(GP0);
    }
    let v = cpu.state.xcr0;
    cpu.state.gpr[reg::RAX] = v & 0xffff_ffff;
    cpu.state.gpr[reg::RDX] = v >> 32;
    Ok(())
}

/// XSETBV: XCR[ECX] = EDX:EAX, at CPL 0 only. #GP(0) for another XCR, a
/// bit the model does not support, x87 (bit 0) clear, or YMM without SSE.
fn xsetbv(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check_enabled(cpu, insn)?;
    let s = &cpu.state;
    if s.cpl != 0 || s.v86() || s.gpr[reg::RCX] as u32 != 0 {
        return Err(GP0);
    }
    let v = (s.gpr[reg::RDX] << 32) | (s.gpr[reg::RAX] & 0xffff_ffff);
    if !xcr0_valid(v, cpu.xcr0_supported()) {
        return Err(GP0);
    }
    cpu.state.xcr0 = v;
    Ok(())
}

/// Whether XSETBV takes `v` for XCR0 on a model supporting the components
/// `supported`: none other than those, x87 set, and YMM only with SSE.
pub(crate) fn xcr0_valid(v: u64, supported: u64) -> bool {
    v & !supported == 0 && v & X87 != 0 && v & (YMM | SSE) != YMM
}

/// The instruction mask EDX:EAX.
fn instruction_mask(s: &CpuState) -> u64 {
    (s.gpr[reg::RDX] << 32) | (s.gpr[reg::RAX] & 0xffff_ffff)
}

/// The checks of every XSAVE-area instruction: #UD, #NM on CR0.TS, the
/// segment checks of the area for the requested components, #GP(0) unless
/// the area is 64-byte aligned. Returns (segment, offset, linear address,
/// REX.W, area size).
fn area(cpu: &Cpu, insn: &Instruction, write: bool, size_of: fn(u64) -> u32) -> Fault<(usize, u64, u64, bool, u32)> {
    check_enabled(cpu, insn)?;
    if cpu.state.xcr0 & !cpu.xcr0_supported() != 0 {
        // A state handed over by an engine whose XCR0 has components this
        // model lacks (AVX under KVM with the model's AVX off): saving or
        // restoring only part of it would lose the rest silently.
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: "cpu", "{:?} with XCR0 {:#x}: the model supports XCR0 {:#x}; raising #UD", insn.mnemonic(), cpu.state.xcr0, cpu.xcr0_supported());
        }
        return Err(Exception::InvalidOpcode);
    }
    let size = size_of(instruction_mask(&cpu.state) & cpu.state.xcr0);
    if cpu.state.cr0 & cr::CR0_TS != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    let seg = mem_seg(insn);
    let off = ea(&cpu.state, insn);
    // Alignment comes before the segment and canonical checks (a
    // misaligned area at a non-canonical SS-based address is #GP(0), not
    // #SS(0), on AMD CPUs).
    let s = &cpu.state;
    let base = if s.code64() && seg < sreg::FS { 0 } else { s.seg[seg].base };
    if base.wrapping_add(off) & 63 != 0 {
        return Err(GP0);
    }
    let lin = cpu.linear(seg, off, u64::from(size), write)?;
    let rex_w =
        matches!(insn.code(), Code::Xsave64_mem | Code::Xsaveopt64_mem | Code::Xsavec64_mem | Code::Xrstor64_mem);
    Ok((seg, off, lin, rex_w, size))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// XSAVE: every requested component, standard format.
    Standard,
    /// XSAVEOPT: the requested components in use, standard format.
    Opt,
    /// XSAVEC: the requested components in use, compacted format.
    Compacted,
}

fn save(cpu: &mut Cpu, insn: &Instruction, kind: Kind) -> Fault<()> {
    let size_of = if kind == Kind::Compacted { compacted_size } else { area_size };
    let (seg, off, lin, rex_w, size) = area(cpu, insn, true, size_of)?;
    let s = &cpu.state;
    let rfbm = instruction_mask(s) & s.xcr0;
    let inuse = in_use(s);
    let xmm = if s.code64() { 16 } else { 8 };
    // Which components are written.
    let saved = match kind {
        Kind::Standard => rfbm,
        Kind::Opt | Kind::Compacted => rfbm & inuse,
    };
    // Every page of the area must take the write before anything is stored
    // (the area is read first, so the bytes not written keep their values).
    let p = cpu.privilege();
    let last = lin.wrapping_add(u64::from(size) - 1);
    let last = if cpu.state.long_mode() { last } else { last & 0xffff_ffff };
    cpu.translate(lin, Access::Write, p)?;
    if last >> 12 != lin >> 12 {
        // A fault on the second page reports the area's last byte in CR2,
        // as AMD CPUs do.
        cpu.translate(last, Access::Write, p)?;
    }
    let mut buf = [0u8; MAX_FRONT];
    let img = &mut buf[..front_size(rfbm) as usize];
    cpu.read_mem_buf(seg, off, img)?;
    let s = &cpu.state;
    let legacy: &mut [u8; 512] = (&mut img[..512]).try_into().expect("512-byte legacy region");
    if saved & X87 != 0 {
        x87::save_x87(&s.fpu, rex_w, legacy);
    }
    // MXCSR goes with SSE (or AVX, which the model does not have), in use or not.
    if rfbm & SSE != 0 {
        x87::save_mxcsr(s, legacy);
    }
    if saved & SSE != 0 {
        x87::save_xmm(s, xmm, legacy);
    }
    if saved & YMM != 0 {
        let o = YMM_OFFSET as usize;
        for (i, v) in s.ymm_hi[..xmm].iter().enumerate() {
            img[o + 16 * i..o + 16 * i + 16].copy_from_slice(&v.to_le_bytes());
        }
    }
    let hdr = &mut img[HEADER..AREA_SIZE as usize];
    let mut xstate_bv = u64::from_le_bytes(hdr[..8].try_into().expect("8 bytes"));
    match kind {
        Kind::Standard | Kind::Opt => {
            // Only the requested components' bits change.
            xstate_bv = (xstate_bv & !rfbm) | (rfbm & inuse);
        }
        Kind::Compacted => {
            xstate_bv = rfbm & inuse;
            hdr[8..16].copy_from_slice(&(rfbm | COMPACTED).to_le_bytes());
        }
    }
    hdr[..8].copy_from_slice(&xstate_bv.to_le_bytes());
    let pkru = s.pkru;
    cpu.write_mem_buf(seg, off, img)?;
    if saved & PKRU != 0 {
        // PKRU in its first four bytes; the other four keep their value.
        let at = off.wrapping_add(u64::from(pkru_offset(kind == Kind::Compacted, rfbm)));
        cpu.write_mem_buf(seg, at, &pkru.to_le_bytes())?;
    }
    Ok(())
}

fn xrstor(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    // The checks cover the smallest area the requested components take
    // (the compacted one); the reads check the rest as they go, and the
    // state changes only after the last read.
    let (seg, off, lin, rex_w, _) = area(cpu, insn, false, compacted_size)?;
    let mut buf = [0u8; MAX_FRONT];
    let img = &mut buf[..];
    // The area's first byte is checked, then the header is read before the
    // legacy region: the address a fault reports is that of AMD CPUs.
    let p = cpu.privilege();
    cpu.translate(lin, Access::Read, p)?;
    let hdr_end = AREA_SIZE as usize;
    cpu.read_mem_buf(seg, off.wrapping_add(HEADER as u64), &mut img[HEADER..hdr_end])?;
    cpu.read_mem_buf(seg, off, &mut img[..HEADER])?;
    let s = &cpu.state;
    let rfbm = instruction_mask(s) & s.xcr0;
    let hdr = &img[HEADER..hdr_end];
    let xstate_bv = u64::from_le_bytes(hdr[..8].try_into().expect("8 bytes"));
    let xcomp_bv = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
    let compacted = xcomp_bv & COMPACTED != 0;
    if compacted {
        // XCOMP_BV names only enabled components, XSTATE_BV only those in
        // XCOMP_BV, and header bytes 16-63 are zero.
        if xcomp_bv & !COMPACTED & !s.xcr0 != 0 || xstate_bv & !xcomp_bv != 0 || hdr[16..64].iter().any(|&b| b != 0) {
            return Err(GP0);
        }
    } else if xstate_bv & !s.xcr0 != 0 || hdr[8..24].iter().any(|&b| b != 0) {
        // Standard form: XSTATE_BV names only enabled components, and header
        // bytes 8-23 (XCOMP_BV among them) are zero.
        return Err(GP0);
    }
    let load = rfbm & xstate_bv;
    let init = rfbm & !xstate_bv;
    let xmm = if s.code64() { 16 } else { 8 };
    if load & YMM != 0 {
        // The YMM component is read only when it is loaded.
        cpu.read_mem_buf(seg, off.wrapping_add(u64::from(YMM_OFFSET)), &mut img[hdr_end..])?;
    }
    let pkru = if load & PKRU != 0 {
        let mut b = [0u8; 4];
        let at = pkru_offset(compacted, xcomp_bv);
        cpu.read_mem_buf(seg, off.wrapping_add(u64::from(at)), &mut b)?;
        Some(u32::from_le_bytes(b))
    } else if init & PKRU != 0 {
        Some(0)
    } else {
        None
    };
    let img = &*img;
    let legacy: &[u8; 512] = (&img[..512]).try_into().expect("512-byte legacy region");
    // MXCSR: the standard form loads it whenever SSE is requested; the
    // compacted form loads it with SSE and initialises it with SSE.
    let mxcsr = if rfbm & SSE == 0 {
        None
    } else if !compacted || load & SSE != 0 {
        Some(x87::image_mxcsr(legacy)?)
    } else {
        Some(0x1f80)
    };
    let s = &mut cpu.state;
    if load & X87 != 0 {
        x87::load_x87(&mut s.fpu, rex_w, legacy);
    } else if init & X87 != 0 {
        s.fpu = FpuState::default();
    }
    if load & SSE != 0 {
        x87::load_xmm(s, xmm, legacy);
    } else if init & SSE != 0 {
        s.xmm[..xmm].fill(0);
    }
    if load & YMM != 0 {
        let o = YMM_OFFSET as usize;
        for (i, v) in s.ymm_hi[..xmm].iter_mut().enumerate() {
            *v = u128::from_le_bytes(img[o + 16 * i..o + 16 * i + 16].try_into().expect("16 bytes"));
        }
    } else if init & YMM != 0 {
        s.ymm_hi[..xmm].fill(0);
    }
    if let Some(m) = mxcsr {
        s.mxcsr = m;
    }
    if let Some(v) = pkru {
        cpu.set_pkru(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::registers::gpr32::{ebp, ebx};
    use iced_x86::code_asm::registers::gpr64::{rbp, rbx};
    use iced_x86::code_asm::{ptr, CodeAssembler};
    use iced_x86::IcedError;

    use super::*;
    use crate::ops::testutil::*;
    use crate::state::{sreg, F80};

    const AREA: u64 = DATA + 0x400;

    /// 64-bit CPL 0 with CR4.OSXSAVE, XCR0 = x87|SSE, RBX = AREA, a busy x87
    /// and SSE state.
    fn machine() -> Cpu {
        let mut c = long_mode();
        c.write_cr4(c.state.cr4 | cr::CR4_OSXSAVE).unwrap();
        c.state.xcr0 = X87 | SSE;
        c.state.gpr[reg::RBX] = AREA;
        busy(&mut c.state);
        c
    }

    fn busy(s: &mut CpuState) {
        for (i, x) in s.xmm.iter_mut().enumerate() {
            *x = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.wrapping_mul(i as u128 + 3);
        }
        s.mxcsr = 0x3f80 | 0x21;
        let f = &mut s.fpu;
        f.fcw = 0x027f;
        f.fsw = 0x3800 | 0x0020;
        f.regs[7] = F80 { mantissa: 0xc000_0000_0000_0000, sign_exp: 0x4000, _pad: [0; 3] };
        f.regs[0] = F80 { mantissa: 0x8000_0000_0000_0001, sign_exp: 0xbfff, _pad: [0; 3] };
        f.ftw = 0x3ffc;
        f.fop = 0x1d9;
        f.fip = 0x1234_5678_9abc;
        f.fdp = 0x0fed_cba9_8765;
        f.fcs = 0;
        f.fds = 0;
    }

    fn run(c: &mut Cpu, mask: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Fault<()> {
        c.state.gpr[reg::RAX] = mask & 0xffff_ffff | 0xdead_0000_0000_0000;
        c.state.gpr[reg::RDX] = mask >> 32;
        exec_asm(c, f)
    }

    fn area(c: &Cpu) -> [u8; 576] {
        let mut b = [0u8; 576];
        c.mem().read(AREA, &mut b).unwrap();
        b
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn cpuid_enumerates_xsave() {
        let mut c = long_mode();
        let l1 = c.cpuid(1, 0);
        assert_ne!(l1[2] & (1 << 26), 0, "XSAVE");
        assert_eq!(l1[2] & (1 << 27), 0, "OSXSAVE follows CR4");
        c.write_cr4(c.state.cr4 | cr::CR4_OSXSAVE).unwrap();
        assert_ne!(c.cpuid(1, 0)[2] & (1 << 27), 0);
        assert_eq!(c.cpuid(0, 0)[0], 0xd);
        assert_eq!(c.cpuid(0xd, 0), [3, 576, 576, 0]);
        assert_eq!(c.cpuid(0xd, 1), [3, 576, 0, 0]);
        assert_eq!(c.cpuid(0xd, 2), [0; 4]);
        // Hidden: no XSAVE, no leaf 0Dh, CR4.OSXSAVE reserved.
        let mut c = long_mode();
        c.set_xsave(false);
        assert_eq!(c.cpuid(1, 0)[2] & (3 << 26), 0);
        assert_eq!(c.cpuid(0xd, 0), [0; 4]);
        assert_eq!(c.write_cr4(c.state.cr4 | cr::CR4_OSXSAVE), Err(GP0));
        assert_eq!(exec_asm(&mut c, |a| a.xgetbv()), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn everything_is_ud_without_cr4_osxsave() {
        let mut c = machine();
        c.write_cr4(c.state.cr4 & !cr::CR4_OSXSAVE).unwrap();
        let ud = Err(Exception::InvalidOpcode);
        assert_eq!(exec_asm(&mut c, |a| a.xgetbv()), ud);
        assert_eq!(exec_asm(&mut c, |a| a.xsetbv()), ud);
        assert_eq!(run(&mut c, 3, |a| a.xsave(ptr(rbx))), ud);
        assert_eq!(run(&mut c, 3, |a| a.xsaveopt64(ptr(rbx))), ud);
        assert_eq!(run(&mut c, 3, |a| a.xsavec(ptr(rbx))), ud);
        assert_eq!(run(&mut c, 3, |a| a.xrstor(ptr(rbx))), ud);
        // With CR0.TS set as well, #UD comes first.
        c.state.cr0 |= cr::CR0_TS;
        assert_eq!(run(&mut c, 3, |a| a.xsave(ptr(rbx))), ud);
    }

    #[test]
    fn xgetbv_reads_xcr0_at_any_cpl() {
        let mut c = machine();
        c.state.gpr[reg::RAX] = u64::MAX;
        c.state.gpr[reg::RDX] = u64::MAX;
        c.state.gpr[reg::RCX] = 0xffff_ffff_0000_0000;
        exec_asm(&mut c, |a| a.xgetbv()).unwrap();
        assert_eq!((c.state.gpr[reg::RAX], c.state.gpr[reg::RDX]), (3, 0));
        // XINUSE (ECX = 1) is not enumerated; other XCRs do not exist.
        for ecx in [1, 2, 0x8000_0000] {
            c.state.gpr[reg::RCX] = ecx;
            assert_eq!(exec_asm(&mut c, |a| a.xgetbv()), Err(GP0), "ecx {ecx:#x}");
        }
        c.state.gpr[reg::RCX] = 0;
        to_user(&mut c, SEL_UCODE64);
        c.state.xcr0 = 1;
        exec_asm(&mut c, |a| a.xgetbv()).unwrap();
        assert_eq!(c.state.gpr[reg::RAX], 1);
        // A LOCK prefix is #UD.
        assert_eq!(exec_bytes(&mut c, &[0xf0, 0x0f, 0x01, 0xd0]), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn an_xcr0_with_components_the_model_lacks_is_ud() {
        let mut c = machine();
        c.state.xcr0 = 0xe7;
        c.mem().fill(AREA, 576, 0).unwrap();
        assert_eq!(run(&mut c, 3, |a| a.xsave(ptr(rbx))), Err(Exception::InvalidOpcode));
        assert_eq!(run(&mut c, 3, |a| a.xrstor(ptr(rbx))), Err(Exception::InvalidOpcode));
        exec_asm(&mut c, |a| a.xgetbv()).unwrap();
        assert_eq!(c.state.gpr[reg::RAX], 0xe7);
    }

    #[test]
    fn xsetbv_checks() {
        let mut c = machine();
        let set = |c: &mut Cpu, ecx: u64, v: u64| {
            c.state.gpr[reg::RCX] = ecx;
            c.state.gpr[reg::RAX] = v & 0xffff_ffff;
            c.state.gpr[reg::RDX] = v >> 32;
            exec_asm(c, |a| a.xsetbv())
        };
        assert_eq!(set(&mut c, 0, 1), Ok(()));
        assert_eq!(c.state.xcr0, 1);
        assert_eq!(set(&mut c, 0, 3), Ok(()));
        assert_eq!(c.state.xcr0, 3);
        // Bit 0 (x87) must stay set; AVX and anything else is unsupported;
        // ECX names XCR0 only (its upper half is ignored).
        for (ecx, v) in [(0, 2), (0, 7), (0, 0), (0, 1 << 32), (1, 3), (0x1_0000_0001, 3)] {
            assert_eq!(set(&mut c, ecx, v), Err(GP0), "ecx {ecx:#x} value {v:#x}");
            assert_eq!(c.state.xcr0, 3);
        }
        assert_eq!(set(&mut c, 0xffff_ffff_0000_0000, 1), Ok(()));
        assert_eq!(c.state.xcr0, 1);
        // CPL 3: #GP(0).
        to_user(&mut c, SEL_UCODE64);
        assert_eq!(set(&mut c, 0, 3), Err(GP0));
        assert_eq!(c.state.xcr0, 1);
    }

    #[test]
    fn faults_before_anything_is_written() {
        let mut c = machine();
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        // #NM on CR0.TS; CR0.EM does not matter.
        c.state.cr0 |= cr::CR0_TS;
        assert_eq!(run(&mut c, 3, |a| a.xsave(ptr(rbx))), Err(Exception::DeviceNotAvailable));
        assert_eq!(run(&mut c, 3, |a| a.xrstor(ptr(rbx))), Err(Exception::DeviceNotAvailable));
        c.state.cr0 &= !cr::CR0_TS;
        c.state.cr0 |= cr::CR0_EM;
        assert_eq!(run(&mut c, 3, |a| a.xsave(ptr(rbx))), Ok(()));
        c.state.cr0 &= !cr::CR0_EM;
        // 64-byte alignment, whatever the other bits say.
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        for off in [8, 16, 32, 0x3f] {
            c.state.gpr[reg::RBX] = AREA + off;
            assert_eq!(run(&mut c, 3, |a| a.xsavec(ptr(rbx))), Err(GP0), "offset {off}");
            assert_eq!(run(&mut c, 3, |a| a.xrstor(ptr(rbx))), Err(GP0), "offset {off}");
        }
        assert!(area(&c).iter().all(|&b| b == 0xaa));
        // An area running into a missing page: #PF for a write, and the
        // first page untouched.
        c.state.gpr[reg::RBX] = UNMAPPED - 64;
        c.mem().fill(UNMAPPED - 64, 64, 0xaa).unwrap();
        let r = run(&mut c, 3, |a| a.xsave(ptr(rbx)));
        assert_eq!(r, Err(Exception::PageFault { addr: UNMAPPED - 64 + 575, error_code: 2 }));
        let mut b = [0u8; 64];
        c.mem().read(UNMAPPED - 64, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0xaa));
        // A read-only page: #PF with W and P.
        c.state.gpr[reg::RBX] = READONLY;
        let r = run(&mut c, 3, |a| a.xsaveopt(ptr(rbx)));
        assert_eq!(r, Err(Exception::PageFault { addr: READONLY, error_code: 3 }));
        // XRSTOR reads the area only.
        assert_eq!(run(&mut c, 0, |a| a.xrstor(ptr(rbx))), Ok(()));
        // ... its header first.
        c.state.gpr[reg::RBX] = UNMAPPED - 0x100;
        let r = run(&mut c, 3, |a| a.xrstor(ptr(rbx)));
        assert_eq!(r, Err(Exception::PageFault { addr: UNMAPPED + 0x100, error_code: 0 }));
        c.state.gpr[reg::RBX] = UNMAPPED + 0x1000 - 0x40;
        let r = run(&mut c, 3, |a| a.xrstor(ptr(rbx)));
        // (the header's page is present here: the legacy region faults)
        assert_eq!(r, Err(Exception::PageFault { addr: UNMAPPED + 0x1000 - 0x40, error_code: 0 }));
        c.state.gpr[reg::RBX] = UNMAPPED - 0x40;
        let r = run(&mut c, 3, |a| a.xrstor(ptr(rbx)));
        assert_eq!(r, Err(Exception::PageFault { addr: UNMAPPED - 0x40 + 512, error_code: 0 }));
        // An area wholly on a missing page: its first byte.
        c.state.gpr[reg::RBX] = UNMAPPED + 0x80;
        let r = run(&mut c, 3, |a| a.xrstor(ptr(rbx)));
        assert_eq!(r, Err(Exception::PageFault { addr: UNMAPPED + 0x80, error_code: 0 }));
        // A misaligned area at a non-canonical address through RBP (SS):
        // #GP(0) for the alignment; aligned, #SS(0).
        c.state.gpr[reg::RBP] = 0x8000_0000_0000_0008;
        assert_eq!(run(&mut c, 3, |a| a.xsave(ptr(rbp))), Err(GP0));
        c.state.gpr[reg::RBP] = 0x8000_0000_0000_0040;
        assert_eq!(run(&mut c, 3, |a| a.xsave(ptr(rbp))), Err(Exception::StackFault(0)));
    }

    #[test]
    fn xsave_writes_the_fxsave_image_and_its_xstate_bv_bits() {
        let mut c = machine();
        let mut fx = [0u8; 512];
        x87::fxsave(&c.state, true, 16, &mut fx);
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        run(&mut c, 3, |a| a.xsave64(ptr(rbx))).unwrap();
        let b = area(&c);
        assert_eq!(b[..416], fx[..416]);
        assert!(b[416..512].iter().all(|&x| x == 0xaa), "bytes 416-511 are not written");
        assert_eq!(u64_at(&b, 512), 0xaaaa_aaaa_aaaa_aaab, "only XSTATE_BV bits 0 and 1 change");
        assert!(b[520..].iter().all(|&x| x == 0xaa), "XCOMP_BV and the rest of the header are not written");

        // x87 only: MXCSR and the XMM registers stay.
        c.mem().fill(AREA, 576, 0x55).unwrap();
        run(&mut c, 1, |a| a.xsave64(ptr(rbx))).unwrap();
        let b = area(&c);
        assert_eq!(b[..24], fx[..24]);
        assert!(b[24..32].iter().all(|&x| x == 0x55));
        assert_eq!(b[32..160], fx[32..160]);
        assert!(b[160..512].iter().all(|&x| x == 0x55));
        assert_eq!(u64_at(&b, 512), 0x5555_5555_5555_5555);

        // SSE only, in use: MXCSR with it; and XCR0 limits the mask.
        c.state.xcr0 = 1;
        c.mem().fill(AREA, 576, 0).unwrap();
        run(&mut c, 2, |a| a.xsave64(ptr(rbx))).unwrap();
        assert!(area(&c).iter().all(|&x| x == 0), "RFBM = EDX:EAX & XCR0 = 0");
        c.state.xcr0 = 3;
        run(&mut c, !1, |a| a.xsave64(ptr(rbx))).unwrap();
        let b = area(&c);
        assert!(b[..24].iter().all(|&x| x == 0));
        assert_eq!(b[24..32], fx[24..32]);
        assert!(b[32..160].iter().all(|&x| x == 0));
        assert_eq!(b[160..416], fx[160..416]);
        assert_eq!(u64_at(&b, 512), 2);

        // Components in their initial configuration are still written by
        // XSAVE, with their XSTATE_BV bits clear.
        c.state.fpu = FpuState::default();
        c.state.xmm = [0; 16];
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        run(&mut c, 3, |a| a.xsave64(ptr(rbx))).unwrap();
        let b = area(&c);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x037f);
        assert!(b[2..24].iter().all(|&x| x == 0));
        assert!(b[160..416].iter().all(|&x| x == 0));
        assert_eq!(u64_at(&b, 512), 0xaaaa_aaaa_aaaa_aaa8);
    }

    #[test]
    fn the_32_bit_forms() {
        let mut c = machine();
        // Without REX.W: FIP and FDP as offsets with selectors.
        let mut fx = [0u8; 512];
        x87::fxsave(&c.state, false, 16, &mut fx);
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        run(&mut c, 3, |a| a.xsave(ptr(rbx))).unwrap();
        assert_eq!(area(&c)[..416], fx[..416]);

        // Outside 64-bit mode XMM8-15 are neither saved nor restored.
        let mut c = prot_mode();
        busy(&mut c.state);
        c.write_cr4(cr::CR4_OSXSAVE | cr::CR4_OSFXSR).unwrap();
        c.state.xcr0 = 3;
        c.state.gpr[reg::RBX] = AREA;
        let mut fx = [0u8; 512];
        x87::fxsave(&c.state, false, 8, &mut fx);
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        run(&mut c, 3, |a| a.xsave(ptr(ebx))).unwrap();
        let b = area(&c);
        assert_eq!(b[..288], fx[..288]);
        assert!(b[288..512].iter().all(|&x| x == 0xaa));
        // The header as written: XSTATE_BV's other bits are still 0xaa,
        // outside XCR0.
        assert_eq!(run(&mut c, 3, |a| a.xrstor(ptr(ebx))), Err(GP0));
        c.mem().write_u64(AREA + 512, 3).unwrap();
        c.mem().write_u64(AREA + 520, 0).unwrap();
        c.mem().write_u64(AREA + 528, 0).unwrap();
        let before = c.state;
        c.state.xmm = [0; 16];
        c.state.fpu = FpuState::default();
        run(&mut c, 3, |a| a.xrstor(ptr(ebx))).unwrap();
        assert_eq!(c.state.xmm[..8], before.xmm[..8]);
        assert_eq!(c.state.xmm[8..], [0; 8]);
        // The 32-bit image holds 32-bit FIP and FDP.
        let mut fpu = before.fpu;
        fpu.fip &= 0xffff_ffff;
        fpu.fdp &= 0xffff_ffff;
        assert_eq!(c.state.fpu, fpu);
        // An XSTATE_BV that initialises SSE clears XMM0-7 only.
        c.state.xmm = before.xmm;
        c.mem().write_u64(AREA + 512, 1).unwrap();
        run(&mut c, 3, |a| a.xrstor(ptr(ebx))).unwrap();
        assert_eq!(c.state.xmm[..8], [0; 8]);
        assert_eq!(c.state.xmm[8..], before.xmm[8..]);
    }

    #[test]
    fn xsavec_is_compacted_and_skips_components_not_in_use() {
        let mut c = machine();
        let mut fx = [0u8; 512];
        x87::fxsave(&c.state, true, 16, &mut fx);
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        run(&mut c, u64::MAX, |a| a.xsavec64(ptr(rbx))).unwrap();
        let b = area(&c);
        assert_eq!(b[..416], fx[..416]);
        assert_eq!(u64_at(&b, 512), 3);
        assert_eq!(u64_at(&b, 520), (1 << 63) | 3);
        assert!(b[528..].iter().all(|&x| x == 0xaa), "header bytes 16-63 are not written");

        // x87 in its initial configuration: not written, its bit 0.
        c.state.fpu = FpuState::default();
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        run(&mut c, 3, |a| a.xsavec64(ptr(rbx))).unwrap();
        let b = area(&c);
        assert!(b[..24].iter().all(|&x| x == 0xaa));
        assert_eq!(b[24..32], fx[24..32]);
        assert!(b[32..160].iter().all(|&x| x == 0xaa));
        assert_eq!(b[160..416], fx[160..416]);
        assert_eq!(u64_at(&b, 512), 2);
        assert_eq!(u64_at(&b, 520), (1 << 63) | 3);

        // SSE not in use: MXCSR is still saved, the XMM registers are not.
        c.state.xmm = [0; 16];
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        run(&mut c, 2, |a| a.xsavec64(ptr(rbx))).unwrap();
        let b = area(&c);
        assert_eq!(b[24..32], fx[24..32]);
        assert!(b[160..416].iter().all(|&x| x == 0xaa));
        assert_eq!(u64_at(&b, 512), 0);
        assert_eq!(u64_at(&b, 520), (1 << 63) | 2);
    }

    #[test]
    fn xsaveopt_uses_the_init_optimization() {
        let mut c = machine();
        c.state.fpu = FpuState::default();
        c.mem().fill(AREA, 576, 0xaa).unwrap();
        run(&mut c, 3, |a| a.xsaveopt64(ptr(rbx))).unwrap();
        let b = area(&c);
        assert!(b[..24].iter().all(|&x| x == 0xaa));
        assert!(b[32..160].iter().all(|&x| x == 0xaa));
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), c.state.mxcsr);
        assert_eq!(u128::from_le_bytes(b[160 + 16 * 15..176 + 16 * 15].try_into().unwrap()), c.state.xmm[15]);
        assert_eq!(u64_at(&b, 512), 0xaaaa_aaaa_aaaa_aaaa, "bit 0 clear, bit 1 set");
        assert!(b[520..].iter().all(|&x| x == 0xaa));
    }

    #[test]
    fn xrstor_round_trips_and_initialises() {
        let mut c = machine();
        let saved = c.state;
        c.mem().fill(AREA, 576, 0).unwrap();
        run(&mut c, 3, |a| a.xsave64(ptr(rbx))).unwrap();
        c.state.xmm = [7; 16];
        c.state.mxcsr = 0x1f80;
        c.state.fpu = FpuState::default();
        run(&mut c, 3, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!((c.state.xmm, c.state.mxcsr, c.state.fpu), (saved.xmm, saved.mxcsr, saved.fpu));

        // Components requested with their XSTATE_BV bit clear are
        // initialised; the standard form still loads MXCSR.
        c.mem().write_u64(AREA + 512, 0).unwrap();
        c.mem().write_u32(AREA + 24, 0x1fc0).unwrap();
        run(&mut c, 3, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.fpu, FpuState::default());
        assert_eq!(c.state.xmm, [0; 16]);
        assert_eq!(c.state.mxcsr, 0x1fc0);
        assert_eq!(in_use(&c.state), 0);

        // Components not requested stay as they are.
        c.state = saved;
        run(&mut c, 1, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.fpu, FpuState::default());
        assert_eq!((c.state.xmm, c.state.mxcsr), (saved.xmm, saved.mxcsr));
        c.state = saved;
        run(&mut c, 2, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.fpu, saved.fpu);
        assert_eq!((c.state.xmm, c.state.mxcsr), ([0; 16], 0x1fc0));

        // The compacted form: MXCSR is initialised with SSE.
        c.state = saved;
        c.mem().write_u64(AREA + 520, (1 << 63) | 3).unwrap();
        run(&mut c, 3, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!((c.state.xmm, c.state.mxcsr), ([0; 16], 0x1f80));
        // ... and loaded with it.
        c.state = saved;
        c.mem().write_u64(AREA + 512, 2).unwrap();
        run(&mut c, 3, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.fpu, FpuState::default());
        assert_eq!(c.state.mxcsr, 0x1fc0);
    }

    #[test]
    fn xrstor_header_checks() {
        let mut c = machine();
        c.mem().fill(AREA, 576, 0).unwrap();
        run(&mut c, 3, |a| a.xsave64(ptr(rbx))).unwrap();
        let saved = c.state;
        let good = area(&c);
        let check = |c: &mut Cpu, patch: &dyn Fn(&mut [u8; 576]), want: Fault<()>| {
            let mut b = good;
            patch(&mut b);
            c.mem().write(AREA, &b).unwrap();
            c.state.xmm = [9; 16];
            let r = run(c, 3, |a| a.xrstor64(ptr(rbx)));
            assert_eq!(r, want);
            if r.is_err() {
                assert_eq!(c.state.xmm, [9; 16], "nothing changes on a fault");
            }
            c.state = saved;
        };
        let put = |b: &mut [u8; 576], o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_le_bytes());
        check(&mut c, &|_| {}, Ok(()));
        // Standard form: XSTATE_BV within XCR0, bytes 8-23 zero.
        check(&mut c, &|b| put(b, 512, 7), Err(GP0));
        check(&mut c, &|b| put(b, 520, 1), Err(GP0));
        check(&mut c, &|b| b[535] = 1, Err(GP0));
        check(&mut c, &|b| b[536] = 1, Ok(()));
        // XSTATE_BV outside XCR0 is checked even when not requested.
        c.state.xcr0 = 1;
        check(&mut c, &|b| put(b, 512, 2), Err(GP0));
        // Compacted form: XCOMP_BV within XCR0, XSTATE_BV within XCOMP_BV,
        // bytes 16-63 zero.
        check(&mut c, &|b| put(b, 520, (1 << 63) | 3), Ok(()));
        check(&mut c, &|b| put(b, 520, (1 << 63) | 7), Err(GP0));
        check(
            &mut c,
            &|b| {
                put(b, 520, (1 << 63) | 1);
                put(b, 512, 3)
            },
            Err(GP0),
        );
        check(
            &mut c,
            &|b| {
                put(b, 520, (1 << 63) | 3);
                b[575] = 1
            },
            Err(GP0),
        );
        // MXCSR with a reserved bit.
        check(&mut c, &|b| b[26] = 1, Err(GP0));
        // ... not loaded when SSE is not requested.
        c.state.gpr[reg::RAX] = 1;
        let mut b = good;
        b[26] = 1;
        c.mem().write(AREA, &b).unwrap();
        assert_eq!(run(&mut c, 1, |a| a.xrstor64(ptr(rbx))), Ok(()));
    }

    /// [`machine`] with the model's AVX on, XCR0 = x87|SSE|YMM and busy
    /// upper halves.
    fn avx_machine() -> Cpu {
        let mut c = machine();
        c.set_avx(true);
        c.state.xcr0 = SUPPORTED_AVX;
        for (i, y) in c.state.ymm_hi.iter_mut().enumerate() {
            *y = 0xa5a5_0000_0000_0000_0000_0000_0000_0000u128 | ((i as u128 + 1) * 0x1_0001);
        }
        c
    }

    fn ymm_area(c: &Cpu) -> [u8; 832] {
        let mut b = [0u8; 832];
        c.mem().read(AREA, &mut b).unwrap();
        b
    }

    fn ymm_at(b: &[u8], i: usize) -> u128 {
        u128::from_le_bytes(b[576 + 16 * i..592 + 16 * i].try_into().unwrap())
    }

    #[test]
    fn cpuid_and_xsetbv_with_avx() {
        // Off (the default): CPUID does not change, XCR0 bit 2 is refused.
        let mut c = machine();
        assert!(!c.avx());
        assert_eq!(c.cpuid(1, 0)[2] & crate::cpuid::ecx1::AVX, 0);
        assert_eq!(c.cpuid(1, 0)[2] & (crate::cpuid::ecx1::FMA | crate::cpuid::ecx1::F16C), 0);
        assert_eq!(c.cpuid(7, 0)[1] & crate::cpuid::ebx7::AVX2, 0);
        assert_eq!(c.cpuid(0xd, 0), [3, 576, 576, 0]);
        assert_eq!(c.cpuid(0xd, 2), [0; 4]);
        c.state.gpr[reg::RCX] = 0;
        c.state.gpr[reg::RDX] = 0;
        c.state.gpr[reg::RAX] = 7;
        assert_eq!(exec_asm(&mut c, |a| a.xsetbv()), Err(GP0));
        // On: AVX in leaf 1, YMM in leaf 0Dh, sizes following XCR0.
        c.set_avx(true);
        assert_ne!(c.cpuid(1, 0)[2] & crate::cpuid::ecx1::AVX, 0);
        let fma_f16c = crate::cpuid::ecx1::FMA | crate::cpuid::ecx1::F16C;
        assert_eq!(c.cpuid(1, 0)[2] & fma_f16c, fma_f16c);
        assert_ne!(c.cpuid(7, 0)[1] & crate::cpuid::ebx7::AVX2, 0);
        assert_eq!(c.cpuid(7, 1), crate::cpuid::cpuid(&c.state, 7, 1));
        assert_eq!(c.cpuid(0xd, 0), [7, 576, 832, 0]);
        assert_eq!(c.cpuid(0xd, 1), [3, 576, 0, 0]);
        assert_eq!(c.cpuid(0xd, 2), [256, 576, 0, 0]);
        assert_eq!(c.cpuid(0xd, 3), [0; 4]);
        exec_asm(&mut c, |a| a.xsetbv()).unwrap();
        assert_eq!(c.state.xcr0, 7);
        assert_eq!(c.cpuid(0xd, 0), [7, 832, 832, 0]);
        assert_eq!(c.cpuid(0xd, 1), [3, 832, 0, 0]);
        // YMM needs SSE; nothing past bit 2.
        for v in [5, 0xf, 0x87] {
            c.state.gpr[reg::RAX] = v;
            assert_eq!(exec_asm(&mut c, |a| a.xsetbv()), Err(GP0), "{v:#x}");
        }
        assert_eq!(c.state.xcr0, 7);
        // Hiding XSAVE hides AVX too.
        c.set_xsave(false);
        assert!(!c.avx());
        assert_eq!(c.cpuid(1, 0)[2] & crate::cpuid::ecx1::AVX, 0);
        assert_eq!(c.cpuid(0xd, 2), [0; 4]);
    }

    #[test]
    fn xsave_and_xrstor_carry_the_ymm_component() {
        let mut c = avx_machine();
        let saved = c.state;
        c.mem().fill(AREA, 832, 0x5a).unwrap();
        c.mem().fill(AREA + 512, 64, 0).unwrap();
        run(&mut c, 7, |a| a.xsave64(ptr(rbx))).unwrap();
        let b = ymm_area(&c);
        for i in 0..16 {
            assert_eq!(ymm_at(&b, i), saved.ymm_hi[i], "ymm{i}");
        }
        assert_eq!(u64_at(&b, 512), 7);
        // Round trip.
        c.state.ymm_hi = [3; 16];
        c.state.xmm = [3; 16];
        run(&mut c, 7, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!((c.state.ymm_hi, c.state.xmm), (saved.ymm_hi, saved.xmm));
        // Not requested: neither written nor loaded.
        c.mem().fill(AREA + 576, 256, 0x77).unwrap();
        run(&mut c, 3, |a| a.xsave64(ptr(rbx))).unwrap();
        assert!(ymm_area(&c)[576..].iter().all(|&x| x == 0x77));
        run(&mut c, 3, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.ymm_hi, saved.ymm_hi);
        // XSTATE_BV bit 2 clear: the init state, zeros.
        c.mem().write_u64(AREA + 512, 3).unwrap();
        run(&mut c, 7, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.ymm_hi, [0; 16]);
        assert_eq!(c.state.xmm, saved.xmm);
        assert_eq!(in_use(&c.state) & YMM, 0);
        // XSAVE of the init state: zeros written, XSTATE_BV bit 2 clear.
        c.mem().fill(AREA + 576, 256, 0x77).unwrap();
        run(&mut c, 7, |a| a.xsave64(ptr(rbx))).unwrap();
        let b = ymm_area(&c);
        assert!(b[576..].iter().all(|&x| x == 0));
        assert_eq!(u64_at(&b, 512), 3);
        // XSAVEOPT skips it then.
        c.mem().fill(AREA + 576, 256, 0x77).unwrap();
        run(&mut c, 7, |a| a.xsaveopt64(ptr(rbx))).unwrap();
        assert!(ymm_area(&c)[576..].iter().all(|&x| x == 0x77));
    }

    #[test]
    fn the_compacted_form_places_ymm_at_576() {
        let mut c = avx_machine();
        let saved = c.state;
        c.mem().fill(AREA, 832, 0).unwrap();
        run(&mut c, 7, |a| a.xsavec64(ptr(rbx))).unwrap();
        let b = ymm_area(&c);
        assert_eq!((u64_at(&b, 512), u64_at(&b, 520)), (7, (1 << 63) | 7));
        assert_eq!(ymm_at(&b, 15), saved.ymm_hi[15]);
        c.state.ymm_hi = [0; 16];
        run(&mut c, 7, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.ymm_hi, saved.ymm_hi);
        // Only YMM requested and in use.
        c.mem().fill(AREA, 832, 0).unwrap();
        run(&mut c, 4, |a| a.xsavec64(ptr(rbx))).unwrap();
        let b = ymm_area(&c);
        assert_eq!((u64_at(&b, 512), u64_at(&b, 520)), (4, (1 << 63) | 4));
        assert_eq!(ymm_at(&b, 0), saved.ymm_hi[0]);
        // XCOMP_BV with YMM while XCR0 lacks it: #GP(0).
        c.state.xcr0 = 3;
        assert_eq!(run(&mut c, 7, |a| a.xrstor64(ptr(rbx))), Err(GP0));
    }

    #[test]
    fn the_ymm_area_is_checked_whole() {
        let mut c = avx_machine();
        // 832 bytes that end in an unmapped page: nothing is written.
        c.state.gpr[reg::RBX] = UNMAPPED - 0x300;
        c.mem().fill(UNMAPPED - 0x300, 0x300, 0x11).unwrap();
        assert!(matches!(run(&mut c, 7, |a| a.xsave64(ptr(rbx))), Err(Exception::PageFault { .. })));
        assert!(c.mem().read_bytes::<0x300>(UNMAPPED - 0x300).unwrap().iter().all(|&x| x == 0x11));
        // Without YMM requested the 576 bytes fit.
        assert_eq!(run(&mut c, 3, |a| a.xsave64(ptr(rbx))), Ok(()));
        // XRSTOR reads the YMM part only when it loads it.
        c.mem().fill(UNMAPPED - 0x300 + 512, 64, 0).unwrap();
        c.mem().write_u64(UNMAPPED - 0x300 + 512, 3).unwrap();
        assert_eq!(run(&mut c, 7, |a| a.xrstor64(ptr(rbx))), Ok(()));
        assert_eq!(c.state.ymm_hi, [0; 16]);
        c.mem().write_u64(UNMAPPED - 0x300 + 512, 7).unwrap();
        assert!(matches!(run(&mut c, 7, |a| a.xrstor64(ptr(rbx))), Err(Exception::PageFault { .. })));
    }

    #[test]
    fn outside_64_bit_mode_ymm8_to_15_stay() {
        let mut c = prot_mode();
        c.set_avx(true);
        c.write_cr4(cr::CR4_OSXSAVE | cr::CR4_OSFXSR).unwrap();
        c.state.xcr0 = 7;
        c.state.ymm_hi = [0x42; 16];
        c.state.gpr[reg::RBX] = AREA;
        c.mem().fill(AREA, 832, 0).unwrap();
        run(&mut c, 7, |a| a.xsave(ptr(ebx))).unwrap();
        let b = ymm_area(&c);
        assert_eq!(ymm_at(&b, 7), 0x42);
        assert_eq!(ymm_at(&b, 8), 0);
        c.state.ymm_hi = [9; 16];
        run(&mut c, 7, |a| a.xrstor(ptr(ebx))).unwrap();
        assert_eq!(c.state.ymm_hi[..8], [0x42; 8]);
        assert_eq!(c.state.ymm_hi[8..], [9; 8]);
    }

    #[test]
    fn xsave_in_a_segment_with_a_base() {
        let mut c = prot_mode();
        c.write_cr4(cr::CR4_OSXSAVE | cr::CR4_OSFXSR).unwrap();
        c.state.xcr0 = 3;
        busy(&mut c.state);
        c.state.seg[sreg::DS].base = 0x40;
        c.state.gpr[reg::RBX] = AREA - 0x40;
        c.mem().fill(AREA, 576, 0).unwrap();
        run(&mut c, 3, |a| a.xsavec(ptr(ebx))).unwrap();
        assert_eq!(u64_at(&area(&c), 520), (1 << 63) | 3);
        // Aligned offset, misaligned linear address.
        c.state.seg[sreg::DS].base = 0x20;
        assert_eq!(run(&mut c, 3, |a| a.xsavec(ptr(ebx))), Err(GP0));
        // Misalignment comes before the segment limit.
        c.state.seg[sreg::DS].limit = 0x100;
        assert_eq!(run(&mut c, 3, |a| a.xsavec(ptr(ebx))), Err(GP0));
        c.state.seg[sreg::DS].base = 0x40;
        assert_eq!(run(&mut c, 3, |a| a.xsavec(ptr(ebx))), Err(GP0));
        c.state.seg[sreg::SS].limit = 0x100;
        c.state.gpr[reg::RBP] = AREA - 0x40;
        assert_eq!(run(&mut c, 3, |a| a.xsavec(ptr(ebp))), Err(Exception::StackFault(0)));
    }

    /// [`avx_machine`] with the max model: XCR0 = x87|SSE|YMM|PKRU,
    /// CR4.PKE, PKRU = Linux's default.
    fn pkru_machine() -> Cpu {
        let mut c = avx_machine();
        c.set_model(crate::cpuid::Model::Max);
        c.write_cr4(c.state.cr4 | cr::CR4_PKE).unwrap();
        c.state.xcr0 = SUPPORTED_AVX | PKRU;
        c.state.pkru = 0x5555_5554;
        c
    }

    fn u32_at(c: &Cpu, o: u64) -> u32 {
        c.mem().read_u32(AREA + o).unwrap()
    }

    #[test]
    fn cpuid_and_xsetbv_with_pkru() {
        let mut c = avx_machine();
        c.state.xcr0 = 7;
        c.state.gpr[reg::RCX] = 0;
        c.state.gpr[reg::RDX] = 0;
        c.state.gpr[reg::RAX] = 0x207;
        assert_eq!(exec_asm(&mut c, |a| a.xsetbv()), Err(GP0), "PKRU is not in the v2 model");
        c.set_model(crate::cpuid::Model::Max);
        assert_eq!(c.cpuid(0xd, 0), [0x207, 832, 2696, 0]);
        assert_eq!(c.cpuid(0xd, 9), [8, 2688, 0, 0]);
        exec_asm(&mut c, |a| a.xsetbv()).unwrap();
        assert_eq!(c.cpuid(0xd, 0), [0x207, 2696, 2696, 0]);
        assert_eq!(c.cpuid(0xd, 1)[1], 840, "compacted: PKRU right after YMM");
        c.state.gpr[reg::RAX] = 0x203;
        exec_asm(&mut c, |a| a.xsetbv()).unwrap();
        assert_eq!(c.cpuid(0xd, 1)[1], 584);
    }

    #[test]
    fn xsave_and_xrstor_carry_pkru() {
        let mut c = pkru_machine();
        c.mem().fill(AREA, 2696, 0x5a).unwrap();
        c.mem().fill(AREA + 512, 64, 0).unwrap();
        // Standard form: PKRU at 2688; its other four bytes and the unused
        // offsets keep their values.
        run(&mut c, 0x207, |a| a.xsave64(ptr(rbx))).unwrap();
        assert_eq!(u32_at(&c, 2688), 0x5555_5554);
        assert_eq!(u32_at(&c, 2692), 0x5a5a_5a5a);
        assert_eq!(u32_at(&c, 1000), 0x5a5a_5a5a);
        assert_eq!(c.mem().read_u64(AREA + 512).unwrap(), 0x207);
        // XRSTOR loads it back, flushing the TLB for the new rights.
        c.state.pkru = 0;
        let flushes = c.mmu.flushes;
        run(&mut c, 0x207, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.pkru, 0x5555_5554);
        assert!(c.mmu.flushes > flushes);
        // XSTATE_BV bit 9 clear: the init value, 0.
        c.mem().write_u64(AREA + 512, 7).unwrap();
        run(&mut c, 0x207, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.pkru, 0);
        assert_eq!(in_use(&c.state) & PKRU, 0);
        // Not in use: XSAVEOPT leaves the bytes alone, XSAVE writes zero.
        c.mem().write_u32(AREA + 2688, 0x1234).unwrap();
        run(&mut c, 0x207, |a| a.xsaveopt64(ptr(rbx))).unwrap();
        assert_eq!(u32_at(&c, 2688), 0x1234);
        assert_eq!(c.mem().read_u64(AREA + 512).unwrap() & PKRU, 0);
        run(&mut c, 0x207, |a| a.xsave64(ptr(rbx))).unwrap();
        assert_eq!(u32_at(&c, 2688), 0);
        // Not requested: not touched, not loaded.
        c.state.pkru = 8;
        c.mem().write_u32(AREA + 2688, 0x1234).unwrap();
        run(&mut c, 7, |a| a.xsave64(ptr(rbx))).unwrap();
        run(&mut c, 7, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!((u32_at(&c, 2688), c.state.pkru), (0x1234, 8));
    }

    #[test]
    fn the_compacted_form_places_pkru_after_the_components_before_it() {
        let mut c = pkru_machine();
        c.mem().fill(AREA, 2696, 0).unwrap();
        run(&mut c, 0x207, |a| a.xsavec64(ptr(rbx))).unwrap();
        assert_eq!(c.mem().read_u64(AREA + 520).unwrap(), (1 << 63) | 0x207);
        assert_eq!(u32_at(&c, 832), 0x5555_5554);
        assert_eq!(u32_at(&c, 2688), 0);
        c.state.pkru = 0;
        run(&mut c, 0x207, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.pkru, 0x5555_5554);
        // Without YMM in XCOMP_BV, right after the header.
        c.mem().fill(AREA, 2696, 0).unwrap();
        run(&mut c, 0x203, |a| a.xsavec64(ptr(rbx))).unwrap();
        assert_eq!(u32_at(&c, 576), 0x5555_5554);
        c.state.pkru = 4;
        run(&mut c, 0x203, |a| a.xrstor64(ptr(rbx))).unwrap();
        assert_eq!(c.state.pkru, 0x5555_5554);
    }
}
