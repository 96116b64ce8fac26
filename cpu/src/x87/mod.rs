//! The x87 FPU model (SDM Vol. 1 chapter 8): the register stack and its tag
//! word, the status and control words, the saved-state layouts of
//! FSTENV/FSAVE (§8.1.10, Figures 8-9 to 8-12) and FXSAVE (§10.5.1), the MMX
//! aliasing of the data registers (§9.5), and the arithmetic in
//! [`softfloat`] and [`trans`]. The instruction handlers are in
//! `crate::ops::x87`.
//!
//! Modelling choices:
//! - FIP, FCS, FOP, FDP and FDS are kept as offset and selector in every mode;
//!   the real-mode and virtual-8086 layouts of FSTENV/FSAVE store the 20/32-bit
//!   linear forms computed from them (selector * 16 + offset). FOP is stored
//!   for every non-control instruction (the "FOP always" mode); FDP and FDS
//!   keep their values across instructions without a memory operand.
//! - FXRSTOR with REX.W clears FCS and FDS, which its image does not carry.
//! - Loading FCW (FLDCW, FLDENV, FRSTOR, FXRSTOR) forces bit 6 to one and
//!   bits 15:13 and 7 to zero.
//! - FPREM/FPREM1 with an exponent difference D >= 64 reduce by 2^(D - N)
//!   with N = 32 + (D mod 32), and set C2.
//! - FXSAVE/FXRSTOR always save and restore MXCSR and the XMM registers,
//!   whatever CR4.OSFXSR says (the SDM leaves that case implementation
//!   defined); XMM8-15 only in 64-bit mode. MXCSR_MASK is 0xFFFF (DAZ
//!   supported), and FXRSTOR of an MXCSR with bits outside it raises #GP(0).
//! - FSTENV/FSAVE fill the unused upper halves of the 32-bit layouts with
//!   ones, and store a tag word recomputed from the register contents.

pub mod softfloat;
pub mod trans;

use crate::exception::{Exception, Fault, GP0};
use crate::state::{cr, CpuState, FpuState, F80};
pub use softfloat::X80;

/// FSW bits.
pub mod fsw {
    pub const IE: u16 = 0x0001;
    pub const DE: u16 = 0x0002;
    pub const ZE: u16 = 0x0004;
    pub const OE: u16 = 0x0008;
    pub const UE: u16 = 0x0010;
    pub const PE: u16 = 0x0020;
    /// Stack fault (with IE: C1 = 1 overflow, 0 underflow).
    pub const SF: u16 = 0x0040;
    /// Exception summary: an unmasked exception flag is set.
    pub const ES: u16 = 0x0080;
    pub const C0: u16 = 0x0100;
    pub const C1: u16 = 0x0200;
    pub const C2: u16 = 0x0400;
    pub const TOP_SHIFT: u32 = 11;
    pub const TOP: u16 = 0x3800;
    pub const C3: u16 = 0x4000;
    /// Busy (mirrors ES).
    pub const B: u16 = 0x8000;
    /// The six exception flags.
    pub const EXC: u16 = 0x003f;
    pub const CC: u16 = C0 | C1 | C2 | C3;
}

/// FCW fields.
pub mod fcw {
    /// The six exception masks (bits 5:0).
    pub const MASKS: u16 = 0x003f;
    pub const PC_SHIFT: u32 = 8;
    pub const RC_SHIFT: u32 = 10;
    /// Bits that always read as zero (15:13, 7) and bit 6, which reads as one.
    pub const RESERVED: u16 = 0xe0c0;
    pub const ALWAYS_ONE: u16 = 0x0040;
    /// FNINIT value: all exceptions masked, 64-bit precision, round to nearest.
    pub const INIT: u16 = 0x037f;
}

/// MXCSR bits the model supports (FXSAVE's MXCSR_MASK): flags, DAZ, masks,
/// RC and FZ.
pub const MXCSR_MASK: u32 = 0x0000_ffff;

/// Tag values.
pub mod tag {
    pub const VALID: u16 = 0;
    pub const ZERO: u16 = 1;
    pub const SPECIAL: u16 = 2;
    pub const EMPTY: u16 = 3;
}

#[inline]
pub fn x80(r: F80) -> X80 {
    X80 { se: r.sign_exp, m: r.mantissa }
}

#[inline]
pub fn f80(v: X80) -> F80 {
    F80 { mantissa: v.m, sign_exp: v.se, _pad: [0; 3] }
}

/// The tag a value in a non-empty register gets.
pub fn tag_of(v: X80) -> u16 {
    if v.is_zero() {
        tag::ZERO
    } else if v.exp() == 0 || v.exp() == 0x7fff || v.m >> 63 == 0 {
        tag::SPECIAL
    } else {
        tag::VALID
    }
}

// ---- the register stack -------------------------------------------------------

#[inline]
pub fn top(f: &FpuState) -> usize {
    usize::from((f.fsw & fsw::TOP) >> fsw::TOP_SHIFT)
}

#[inline]
pub fn set_top(f: &mut FpuState, t: usize) {
    f.fsw = (f.fsw & !fsw::TOP) | (((t & 7) as u16) << fsw::TOP_SHIFT);
}

/// Physical register number of ST(i).
#[inline]
pub fn phys(f: &FpuState, i: usize) -> usize {
    (top(f) + i) & 7
}

#[inline]
pub fn tag_phys(f: &FpuState, p: usize) -> u16 {
    (f.ftw >> (2 * p)) & 3
}

#[inline]
pub fn set_tag_phys(f: &mut FpuState, p: usize, t: u16) {
    f.ftw = (f.ftw & !(3 << (2 * p))) | (t << (2 * p));
}

/// Whether ST(i) is empty.
#[inline]
pub fn is_empty(f: &FpuState, i: usize) -> bool {
    tag_phys(f, phys(f, i)) == tag::EMPTY
}

/// ST(i).
#[inline]
pub fn st(f: &FpuState, i: usize) -> X80 {
    x80(f.regs[phys(f, i)])
}

/// Write ST(i) and its tag.
#[inline]
pub fn set_st(f: &mut FpuState, i: usize, v: X80) {
    let p = phys(f, i);
    f.regs[p] = f80(v);
    set_tag_phys(f, p, tag_of(v));
}

/// Decrement TOP and write ST(0).
pub fn push(f: &mut FpuState, v: X80) {
    let t = top(f).wrapping_sub(1) & 7;
    set_top(f, t);
    set_st(f, 0, v);
}

/// Mark ST(0) empty and increment TOP.
pub fn pop(f: &mut FpuState) {
    let p = phys(f, 0);
    set_tag_phys(f, p, tag::EMPTY);
    set_top(f, top(f) + 1);
}

/// Recompute ES and B from the exception flags and masks.
pub fn update_es(f: &mut FpuState) {
    if f.fsw & !f.fcw & fsw::EXC != 0 {
        f.fsw |= fsw::ES | fsw::B;
    } else {
        f.fsw &= !(fsw::ES | fsw::B);
    }
}

/// Set exception flags (IE..PE, SF) and the summary bits.
pub fn raise(f: &mut FpuState, flags: u16) {
    f.fsw |= flags & (fsw::EXC | fsw::SF);
    update_es(f);
}

#[inline]
pub fn set_cc(f: &mut FpuState, mask: u16, value: u16) {
    f.fsw = (f.fsw & !mask) | (value & mask);
}

#[inline]
pub fn set_c1(f: &mut FpuState, on: bool) {
    set_cc(f, fsw::C1, if on { fsw::C1 } else { 0 });
}

/// The full tag word as FSTENV/FSAVE store it: empty registers stay empty,
/// the others are classified from their contents.
pub fn full_tags(f: &FpuState) -> u16 {
    let mut t = 0;
    for p in 0..8 {
        let v = if tag_phys(f, p) == tag::EMPTY { tag::EMPTY } else { tag_of(x80(f.regs[p])) };
        t |= v << (2 * p);
    }
    t
}

/// The abridged (one bit per register, 1 = valid) tag byte of FXSAVE.
pub fn abridged_tags(f: &FpuState) -> u8 {
    (0..8).filter(|&p| tag_phys(f, p) != tag::EMPTY).fold(0u8, |acc, p| acc | (1 << p))
}

/// Load tags from an image: only empty versus non-empty is taken from it
/// (`nonempty` bit per physical register); the rest comes from the contents.
pub fn load_tags(f: &mut FpuState, nonempty: u8) {
    let mut t = 0;
    for p in 0..8 {
        let v = if nonempty & (1 << p) == 0 { tag::EMPTY } else { tag_of(x80(f.regs[p])) };
        t |= v << (2 * p);
    }
    f.ftw = t;
}

/// FNINIT.
pub fn init(f: &mut FpuState) {
    f.fcw = fcw::INIT;
    f.fsw = 0;
    f.ftw = 0xffff;
    f.fop = 0;
    f.fip = 0;
    f.fdp = 0;
    f.fcs = 0;
    f.fds = 0;
}

// ---- MMX aliasing -------------------------------------------------------------

/// The checks an MMX instruction makes before anything else (SDM Vol. 3
/// Table 2-2, Vol. 2 MMX pages): #UD when CR0.EM is set, #NM when CR0.TS is
/// set, #MF when an unmasked x87 exception is pending. The instruction then
/// performs the [`mmx_enter`] transition (writes through [`mmx_write`] do it
/// themselves).
pub fn mmx_check(state: &CpuState) -> Fault<()> {
    if state.cr0 & cr::CR0_EM != 0 {
        return Err(Exception::InvalidOpcode);
    }
    if state.cr0 & cr::CR0_TS != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    if state.fpu.fsw & fsw::ES != 0 {
        return Err(Exception::FpuError);
    }
    Ok(())
}

/// Read MMi: the significand of physical register Ri.
pub fn mmx_read(state: &CpuState, i: usize) -> u64 {
    state.fpu.regs[i & 7].mantissa
}

/// Write MMi: the significand of Ri, with exponent and sign all ones, and
/// the MMX state transition (TOP = 0, every tag valid).
pub fn mmx_write(state: &mut CpuState, i: usize, v: u64) {
    let r = &mut state.fpu.regs[i & 7];
    r.mantissa = v;
    r.sign_exp = 0xffff;
    mmx_enter(state);
}

/// The x87-to-MMX transition every MMX instruction (except EMMS) performs:
/// TOP = 0 and all tags valid.
pub fn mmx_enter(state: &mut CpuState) {
    set_top(&mut state.fpu, 0);
    state.fpu.ftw = 0;
}

/// EMMS: every tag empty.
pub fn emms(state: &mut CpuState) {
    state.fpu.ftw = 0xffff;
}

// ---- saved-state layouts ------------------------------------------------------

/// Which FSTENV/FLDENV image layout applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvLayout {
    /// 32-bit operand size (28-byte image) rather than 16-bit (14 bytes).
    pub size32: bool,
    /// Real-address or virtual-8086 mode layout.
    pub real: bool,
}

impl EnvLayout {
    /// Image size in bytes.
    pub fn size(self) -> usize {
        if self.size32 {
            28
        } else {
            14
        }
    }
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn get16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn get32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The FSTENV image (the first 14 or 28 bytes of `out`).
pub fn store_env(f: &FpuState, layout: EnvLayout, out: &mut [u8]) {
    let tags = full_tags(f);
    let fop = u32::from(f.fop & 0x7ff);
    if layout.real {
        let ip = (u32::from(f.fcs) << 4).wrapping_add(f.fip as u32);
        let dp = (u32::from(f.fds) << 4).wrapping_add(f.fdp as u32);
        if layout.size32 {
            put32(out, 0, 0xffff_0000 | u32::from(f.fcw));
            put32(out, 4, 0xffff_0000 | u32::from(f.fsw));
            put32(out, 8, 0xffff_0000 | u32::from(tags));
            put32(out, 12, 0xffff_0000 | (ip & 0xffff));
            put32(out, 16, ((ip >> 16) << 12) | fop);
            put32(out, 20, 0xffff_0000 | (dp & 0xffff));
            put32(out, 24, (dp >> 16) << 12);
        } else {
            put16(out, 0, f.fcw);
            put16(out, 2, f.fsw);
            put16(out, 4, tags);
            put16(out, 6, ip as u16);
            put16(out, 8, (((ip >> 16) & 0xf) << 12) as u16 | fop as u16);
            put16(out, 10, dp as u16);
            put16(out, 12, (((dp >> 16) & 0xf) << 12) as u16);
        }
    } else if layout.size32 {
        put32(out, 0, 0xffff_0000 | u32::from(f.fcw));
        put32(out, 4, 0xffff_0000 | u32::from(f.fsw));
        put32(out, 8, 0xffff_0000 | u32::from(tags));
        put32(out, 12, f.fip as u32);
        put32(out, 16, u32::from(f.fcs) | (fop << 16));
        put32(out, 20, f.fdp as u32);
        put32(out, 24, 0xffff_0000 | u32::from(f.fds));
    } else {
        put16(out, 0, f.fcw);
        put16(out, 2, f.fsw);
        put16(out, 4, tags);
        put16(out, 6, f.fip as u16);
        put16(out, 8, f.fcs);
        put16(out, 10, f.fdp as u16);
        put16(out, 12, f.fds);
    }
}

/// FLDENV: load an image stored by [`store_env`].
pub fn load_env(f: &mut FpuState, layout: EnvLayout, b: &[u8]) {
    let (cw, sw, tw);
    if layout.size32 {
        cw = get16(b, 0);
        sw = get16(b, 4);
        tw = get16(b, 8);
        if layout.real {
            let w16 = get32(b, 16);
            f.fip = u64::from(u32::from(get16(b, 12)) | ((w16 >> 12) & 0xffff) << 16);
            f.fop = (w16 & 0x7ff) as u16;
            f.fcs = 0;
            f.fdp = u64::from(u32::from(get16(b, 20)) | ((get32(b, 24) >> 12) & 0xffff) << 16);
            f.fds = 0;
        } else {
            f.fip = u64::from(get32(b, 12));
            let w16 = get32(b, 16);
            f.fcs = w16 as u16;
            f.fop = ((w16 >> 16) & 0x7ff) as u16;
            f.fdp = u64::from(get32(b, 20));
            f.fds = get16(b, 24);
        }
    } else {
        cw = get16(b, 0);
        sw = get16(b, 2);
        tw = get16(b, 4);
        if layout.real {
            let w = get16(b, 8);
            f.fip = u64::from(get16(b, 6)) | (u64::from(w >> 12) << 16);
            f.fop = w & 0x7ff;
            f.fcs = 0;
            f.fdp = u64::from(get16(b, 10)) | (u64::from(get16(b, 12) >> 12) << 16);
            f.fds = 0;
        } else {
            f.fip = u64::from(get16(b, 6));
            f.fcs = get16(b, 8);
            f.fdp = u64::from(get16(b, 10));
            f.fds = get16(b, 12);
        }
    }
    f.fcw = (cw & !fcw::RESERVED) | fcw::ALWAYS_ONE;
    f.fsw = sw;
    let nonempty = (0..8).filter(|&p| (tw >> (2 * p)) & 3 != tag::EMPTY).fold(0u8, |acc, p| acc | (1 << p));
    load_tags(f, nonempty);
    update_es(f);
}

/// Write ST(0)..ST(7) in the 10-byte FSAVE form.
pub fn store_regs(f: &FpuState, out: &mut [u8]) {
    for i in 0..8 {
        let r = f.regs[phys(f, i)];
        out[i * 10..i * 10 + 8].copy_from_slice(&r.mantissa.to_le_bytes());
        out[i * 10 + 8..i * 10 + 10].copy_from_slice(&r.sign_exp.to_le_bytes());
    }
}

/// FRSTOR's register part (after the environment, so TOP is the loaded one).
pub fn load_regs(f: &mut FpuState, b: &[u8]) {
    let mut nonempty = 0u8;
    for i in 0..8 {
        let p = phys(f, i);
        let mut m = [0u8; 8];
        m.copy_from_slice(&b[i * 10..i * 10 + 8]);
        f.regs[p] = F80 { mantissa: u64::from_le_bytes(m), sign_exp: get16(b, i * 10 + 8), _pad: [0; 3] };
    }
    for p in 0..8 {
        if tag_phys(f, p) != tag::EMPTY {
            nonempty |= 1 << p;
        }
    }
    load_tags(f, nonempty);
}

/// The FXSAVE image. `rex_w` selects the 64-bit FIP/FDP layout; `xmm_regs`
/// is 16 in 64-bit mode and 8 otherwise. Returns the number of bytes the
/// instruction writes (the rest of the 512 are reserved or available to
/// software and left alone).
pub fn fxsave(s: &CpuState, rex_w: bool, xmm_regs: usize, out: &mut [u8; 512]) -> usize {
    save_x87(&s.fpu, rex_w, out);
    save_mxcsr(s, out);
    save_xmm(s, xmm_regs, out)
}

/// The x87 part of an FXSAVE/XSAVE legacy region: bytes 0-23 and 32-159.
pub fn save_x87(f: &FpuState, rex_w: bool, out: &mut [u8; 512]) {
    put16(out, 0, f.fcw);
    put16(out, 2, f.fsw);
    out[4] = abridged_tags(f);
    out[5] = 0;
    put16(out, 6, f.fop & 0x7ff);
    if rex_w {
        out[8..16].copy_from_slice(&f.fip.to_le_bytes());
        out[16..24].copy_from_slice(&f.fdp.to_le_bytes());
    } else {
        put32(out, 8, f.fip as u32);
        put16(out, 12, f.fcs);
        put16(out, 14, 0);
        put32(out, 16, f.fdp as u32);
        put16(out, 20, f.fds);
        put16(out, 22, 0);
    }
    for i in 0..8 {
        let r = f.regs[phys(f, i)];
        let o = 32 + 16 * i;
        out[o..o + 8].copy_from_slice(&r.mantissa.to_le_bytes());
        put16(out, o + 8, r.sign_exp);
        out[o + 10..o + 16].fill(0);
    }
}

/// MXCSR and MXCSR_MASK: bytes 24-31 of the legacy region.
pub fn save_mxcsr(s: &CpuState, out: &mut [u8; 512]) {
    put32(out, 24, s.mxcsr);
    put32(out, 28, MXCSR_MASK);
}

/// XMM0 up to `xmm_regs` at bytes 160 on; returns the end of what was
/// written.
pub fn save_xmm(s: &CpuState, xmm_regs: usize, out: &mut [u8; 512]) -> usize {
    for i in 0..xmm_regs {
        let o = 160 + 16 * i;
        out[o..o + 16].copy_from_slice(&s.xmm[i].to_le_bytes());
    }
    160 + 16 * xmm_regs
}

/// FXRSTOR from an image; #GP(0) (with nothing changed) if MXCSR has bits
/// outside [`MXCSR_MASK`].
pub fn fxrstor(s: &mut CpuState, rex_w: bool, xmm_regs: usize, img: &[u8; 512]) -> Fault<()> {
    s.mxcsr = image_mxcsr(img)?;
    load_x87(&mut s.fpu, rex_w, img);
    load_xmm(s, xmm_regs, img);
    Ok(())
}

/// The MXCSR an image holds; #GP(0) if it has bits outside [`MXCSR_MASK`].
pub fn image_mxcsr(img: &[u8; 512]) -> Fault<u32> {
    let mxcsr = get32(img, 24);
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(GP0);
    }
    Ok(mxcsr)
}

/// Load the x87 part of an FXSAVE/XSAVE legacy region (see [`save_x87`]).
pub fn load_x87(f: &mut FpuState, rex_w: bool, img: &[u8; 512]) {
    f.fcw = (get16(img, 0) & !fcw::RESERVED) | fcw::ALWAYS_ONE;
    f.fsw = get16(img, 2);
    f.fop = get16(img, 6) & 0x7ff;
    if rex_w {
        let mut q = [0u8; 8];
        q.copy_from_slice(&img[8..16]);
        f.fip = u64::from_le_bytes(q);
        q.copy_from_slice(&img[16..24]);
        f.fdp = u64::from_le_bytes(q);
        // The 64-bit image has no selectors.
        f.fcs = 0;
        f.fds = 0;
    } else {
        f.fip = u64::from(get32(img, 8));
        f.fcs = get16(img, 12);
        f.fdp = u64::from(get32(img, 16));
        f.fds = get16(img, 20);
    }
    for i in 0..8 {
        let o = 32 + 16 * i;
        let mut m = [0u8; 8];
        m.copy_from_slice(&img[o..o + 8]);
        let p = phys(f, i);
        f.regs[p] = F80 { mantissa: u64::from_le_bytes(m), sign_exp: get16(img, o + 8), _pad: [0; 3] };
    }
    load_tags(f, img[4]);
    update_es(f);
}

/// Load XMM0 up to `xmm_regs` from bytes 160 on.
pub fn load_xmm(s: &mut CpuState, xmm_regs: usize, img: &[u8; 512]) {
    for i in 0..xmm_regs {
        let o = 160 + 16 * i;
        let mut x = [0u8; 16];
        x.copy_from_slice(&img[o..o + 16]);
        s.xmm[i] = u128::from_le_bytes(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_push_pop_and_tags() {
        let mut f = FpuState::default();
        push(&mut f, softfloat::ONE);
        assert_eq!(top(&f), 7);
        assert_eq!(f.ftw, 0x3fff);
        push(&mut f, softfloat::ZERO);
        assert_eq!(f.ftw, 0x1fff);
        push(&mut f, softfloat::INDEFINITE);
        assert_eq!(f.ftw, 0x1bff);
        assert_eq!(abridged_tags(&f), 0xe0);
        pop(&mut f);
        assert_eq!(top(&f), 6);
        assert_eq!(st(&f, 0), softfloat::ZERO);
        assert!(is_empty(&f, 7));
    }

    #[test]
    fn mmx_aliasing() {
        let mut s = CpuState::reset();
        set_top(&mut s.fpu, 3);
        mmx_write(&mut s, 2, 0x1122_3344_5566_7788);
        assert_eq!(top(&s.fpu), 0);
        assert_eq!(s.fpu.ftw, 0);
        assert_eq!(s.fpu.regs[2].sign_exp, 0xffff);
        assert_eq!(mmx_read(&s, 2), 0x1122_3344_5566_7788);
        // After MMX code the full tag word reads "special" for MM2.
        assert_eq!(full_tags(&s.fpu) >> 4 & 3, tag::SPECIAL);
        emms(&mut s);
        assert_eq!(s.fpu.ftw, 0xffff);
        assert_eq!(mmx_check(&s), Ok(()));
        s.fpu.fsw |= fsw::IE | fsw::ES;
        assert_eq!(mmx_check(&s), Err(Exception::FpuError));
        s.cr0 |= cr::CR0_TS;
        assert_eq!(mmx_check(&s), Err(Exception::DeviceNotAvailable));
        s.cr0 |= cr::CR0_EM;
        assert_eq!(mmx_check(&s), Err(Exception::InvalidOpcode));
    }
}
