//! Lazy arithmetic flags.
//!
//! Flag-setting instructions record the operation and its operands in
//! [`LazyFlags`]; the six status flags are computed only when something reads
//! them. Most results are overwritten before any flag is read, so this saves
//! the bulk of the flag work an eager interpreter does.

use crate::state::{flags::*, CpuState, LazyFlags};

/// The operation recorded in [`LazyFlags::op`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// Flags are materialized in `rflags`.
    None = 0,
    Add = 1,
    /// ADC: `carry_in` holds the incoming CF (0 or 1).
    Adc = 2,
    Sub = 3,
    /// SBB: `carry_in` holds the incoming CF (0 or 1).
    Sbb = 4,
    /// AND/OR/XOR/TEST: CF = OF = 0, AF cleared.
    Logic = 5,
    /// INC: CF is preserved in `carry_in`.
    Inc = 6,
    /// DEC: CF is preserved in `carry_in`.
    Dec = 7,
}

impl FlagOp {
    /// The operation a [`LazyFlags::op`] holds, if it is one.
    pub fn from_u32(op: u32) -> Option<FlagOp> {
        use FlagOp::*;
        [None, Add, Adc, Sub, Sbb, Logic, Inc, Dec].into_iter().find(|&o| o as u32 == op)
    }
}

#[inline]
fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

#[inline]
fn sign(size: u32) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Parity flag of the low byte (set when the number of set bits is even).
#[inline]
pub fn parity(v: u64) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

/// Zero, sign and parity flags of a result of `size` bytes.
#[inline]
pub fn szp(res: u64, size: u32) -> u64 {
    let r = res & mask(size);
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if r & sign(size) != 0 {
        f |= SF;
    }
    if parity(r) {
        f |= PF;
    }
    f
}

/// Compute the six status flags from a lazy record.
pub fn compute(l: &LazyFlags) -> u64 {
    let m = mask(l.size);
    let s = sign(l.size);
    let (res, a, b) = (l.res & m, l.src1 & m, l.src2 & m);
    let mut f = szp(res, l.size);
    let af = (a ^ b ^ res) & 0x10 != 0;
    match l.op {
        x if x == FlagOp::Add as u32 || x == FlagOp::Adc as u32 => {
            let cf = if x == FlagOp::Adc as u32 && l.carry_in != 0 { res <= a } else { res < a };
            if cf {
                f |= CF;
            }
            if (a ^ res) & (b ^ res) & s != 0 {
                f |= OF;
            }
            if af {
                f |= AF;
            }
        }
        x if x == FlagOp::Sub as u32 || x == FlagOp::Sbb as u32 => {
            let cf = if x == FlagOp::Sbb as u32 && l.carry_in != 0 { a <= b } else { a < b };
            if cf {
                f |= CF;
            }
            if (a ^ b) & (a ^ res) & s != 0 {
                f |= OF;
            }
            if af {
                f |= AF;
            }
        }
        x if x == FlagOp::Logic as u32 => {}
        x if x == FlagOp::Inc as u32 => {
            f |= l.carry_in & CF;
            if res == s {
                f |= OF;
            }
            if res & 0xf == 0 {
                f |= AF;
            }
        }
        x if x == FlagOp::Dec as u32 => {
            f |= l.carry_in & CF;
            if res == s - 1 {
                f |= OF;
            }
            if res & 0xf == 0xf {
                f |= AF;
            }
        }
        _ => {}
    }
    f
}

impl CpuState {
    /// Fold any lazy record into `rflags`, so `rflags` is exact.
    #[inline]
    pub fn materialize_flags(&mut self) {
        if self.lazy.op != FlagOp::None as u32 {
            self.rflags = (self.rflags & !ARITH) | compute(&self.lazy);
            self.lazy.op = FlagOp::None as u32;
        }
    }

    /// RFLAGS with the arithmetic flags computed.
    #[inline]
    pub fn flags(&mut self) -> u64 {
        self.materialize_flags();
        self.rflags
    }

    /// Record a flag-setting operation.
    #[inline]
    pub fn set_lazy(&mut self, op: FlagOp, size: u32, res: u64, src1: u64, src2: u64) {
        self.lazy = LazyFlags { op: op as u32, size, res, src1, src2, carry_in: 0 };
    }

    /// Record ADC/SBB/INC/DEC, which need the incoming CF.
    #[inline]
    pub fn set_lazy_carry(&mut self, op: FlagOp, size: u32, res: u64, src1: u64, src2: u64, carry_in: u64) {
        self.lazy = LazyFlags { op: op as u32, size, res, src1, src2, carry_in };
    }

    /// Replace the arithmetic flags in `mask` with `value` (eager flag setting).
    #[inline]
    pub fn set_arith_flags(&mut self, mask: u64, value: u64) {
        self.materialize_flags();
        self.rflags = (self.rflags & !mask) | (value & mask);
    }

    /// CF, computed cheaply for the common lazy cases.
    #[inline]
    pub fn cf(&mut self) -> bool {
        self.flags() & CF != 0
    }

    /// ZF without materializing the other flags.
    #[inline]
    pub fn zf(&self) -> bool {
        if self.lazy.op == FlagOp::None as u32 {
            self.rflags & ZF != 0
        } else {
            self.lazy.res & mask(self.lazy.size) == 0
        }
    }

    /// SF without materializing the other flags.
    #[inline]
    pub fn sf(&self) -> bool {
        if self.lazy.op == FlagOp::None as u32 {
            self.rflags & SF != 0
        } else {
            self.lazy.res & sign(self.lazy.size) != 0
        }
    }

    /// Evaluate condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc).
    #[inline]
    pub fn condition(&mut self, cc: u8) -> bool {
        let r = match cc >> 1 {
            0 => self.flags() & OF != 0,
            1 => self.cf(),
            2 => self.zf(),
            3 => self.cf() || self.zf(),
            4 => self.sf(),
            5 => self.flags() & PF != 0,
            6 => {
                let f = self.flags();
                (f & SF != 0) != (f & OF != 0)
            }
            _ => {
                let f = self.flags();
                f & ZF != 0 || ((f & SF != 0) != (f & OF != 0))
            }
        };
        r != (cc & 1 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_of(op: FlagOp, size: u32, a: u64, b: u64, cin: u64) -> u64 {
        let m = mask(size);
        let res = match op {
            FlagOp::Add => a.wrapping_add(b),
            FlagOp::Adc => a.wrapping_add(b).wrapping_add(cin),
            FlagOp::Sub => a.wrapping_sub(b),
            FlagOp::Sbb => a.wrapping_sub(b).wrapping_sub(cin),
            _ => unreachable!(),
        } & m;
        compute(&LazyFlags { op: op as u32, size, res, src1: a, src2: b, carry_in: cin })
    }

    #[test]
    fn a_recorded_operation_is_known_and_nothing_past_dec_is() {
        for op in 0..=FlagOp::Dec as u32 {
            assert_eq!(FlagOp::from_u32(op).map(|o| o as u32), Some(op));
        }
        assert_eq!(FlagOp::from_u32(FlagOp::Dec as u32 + 1), None);
        assert_eq!(FlagOp::from_u32(u32::MAX), None);
    }

    #[test]
    fn add_sub_flags_match_the_sdm() {
        // 0x7f + 1 = 0x80: OF, SF, AF.
        assert_eq!(flags_of(FlagOp::Add, 1, 0x7f, 1, 0), OF | SF | AF);
        // 0xff + 1 = 0: CF, ZF, PF, AF.
        assert_eq!(flags_of(FlagOp::Add, 1, 0xff, 1, 0), CF | ZF | PF | AF);
        // 0 - 1 = 0xff..: CF, SF, PF, AF.
        assert_eq!(flags_of(FlagOp::Sub, 4, 0, 1, 0), CF | SF | PF | AF);
        // 0x80000000 - 1: OF.
        assert_eq!(flags_of(FlagOp::Sub, 4, 0x8000_0000, 1, 0) & (OF | CF), OF);
        // ADC with carry in: 0xffff + 0 + 1 = 0 with CF.
        assert_eq!(flags_of(FlagOp::Adc, 2, 0xffff, 0, 1) & (CF | ZF), CF | ZF);
        // SBB with borrow: 5 - 5 - 1 borrows.
        assert_eq!(flags_of(FlagOp::Sbb, 8, 5, 5, 1) & CF, CF);
    }

    #[test]
    fn conditions() {
        let mut s = CpuState::reset();
        s.set_lazy(FlagOp::Sub, 4, 3u64.wrapping_sub(5) & 0xffff_ffff, 3, 5); // cmp 3, 5
        assert!(s.condition(0x2)); // B
        assert!(s.condition(0xc)); // L
        assert!(!s.condition(0x4)); // E
        assert!(s.condition(0x5)); // NE
        assert!(s.condition(0xe)); // LE
        assert!(!s.condition(0xf)); // G
    }
}
