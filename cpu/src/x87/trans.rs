//! The x87 transcendental instructions: F2XM1, FYL2X, FYL2XP1, FPTAN,
//! FPATAN, FSIN, FCOS and FSINCOS, plus the constants of FLDPI and friends.
//!
//! Precision. Each function is evaluated in a 128-bit-significand working
//! format ([`W`]) with truncating operations that keep a sticky bit, then
//! rounded once to the 64-bit significand in the current rounding mode.
//! Every working operation errs by at most 2^-127 relative, and the series
//! take at most a few dozen of them, so the unrounded value carries more than
//! 118 correct bits: the final result is within 1 ulp always and correctly
//! rounded unless the exact value lies within 2^-118 (relative) of a rounding
//! boundary. Argument reduction for FSIN/FCOS/FSINCOS/FPTAN is exact
//! (Payne-Hanek with 640 bits of 2/pi) over the whole architectural range
//! |x| < 2^63. Real Intel hardware reduces with a 66-bit approximation of pi
//! instead, so for large arguments its results differ from these
//! (mathematically correct) ones.

use super::softfloat::{self as sf, unpack, Ctx, IE, INDEFINITE, X80, ZE};

/// A working value: `m * 2^(e - 127)`, `m` normalized (bit 127 set) unless zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W {
    pub neg: bool,
    pub e: i32,
    pub m: u128,
}

pub const PI: W = W { neg: false, e: 1, m: 0xc90f_daa2_2168_c234_c4c6_628b_80dc_1cd1 };
pub const PIO2: W = W { neg: false, e: 0, m: PI.m };
pub const PIO4: W = W { neg: false, e: -1, m: PI.m };
pub const LN2: W = W { neg: false, e: -1, m: 0xb172_17f7_d1cf_79ab_c9e3_b398_03f2_f6af };
pub const LOG2E: W = W { neg: false, e: 0, m: 0xb8aa_3b29_5c17_f0bb_be87_fed0_691d_3e88 };
pub const L2T: W = W { neg: false, e: 1, m: 0xd49a_784b_cd1b_8afe_492b_f6ff_4daf_db4c };
pub const LG2: W = W { neg: false, e: -2, m: 0x9a20_9a84_fbcf_f798_8f89_59ac_0b7c_9178 };

/// floor(2/pi * 2^640), most significant word first.
const TWO_OVER_PI: [u64; 10] = [
    0xa2f9_836e_4e44_1529,
    0xfc27_57d1_f534_ddc0,
    0xdb62_9599_3c43_9041,
    0xfe51_63ab_debb_c561,
    0xb724_6e3a_424d_d2e0,
    0x0649_2eea_09d1_921c,
    0xfe1d_eb1c_b129_a73e,
    0xe882_35f5_2ebb_4484,
    0xe99c_7026_b45f_7e41,
    0x3991_d639_8353_39f4,
];

const ZERO: W = W { neg: false, e: 0, m: 0 };
const ONE: W = W { neg: false, e: 0, m: 1 << 127 };

fn mul128(a: u128, b: u128) -> (u128, u128) {
    const M: u128 = u64::MAX as u128;
    let (a1, a0, b1, b0) = (a >> 64, a & M, b >> 64, b & M);
    let (p00, p01, p10, p11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
    let mid = (p00 >> 64) + (p01 & M) + (p10 & M);
    let lo = (p00 & M) | ((mid & M) << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

impl W {
    fn norm(neg: bool, e: i32, m: u128) -> W {
        if m == 0 {
            return ZERO;
        }
        let lz = m.leading_zeros();
        W { neg, e: e - lz as i32, m: m << lz }
    }

    /// A finite register value, exactly.
    pub fn from_x80(a: X80) -> W {
        if a.is_zero() {
            return W { neg: a.sign(), ..ZERO };
        }
        let u = unpack(a);
        W { neg: u.sign, e: u.e, m: u128::from(u.m) << 64 }
    }

    pub fn from_int(v: i64) -> W {
        W::norm(v < 0, 127, u128::from(v.unsigned_abs()))
    }

    fn from_f64(v: f64) -> W {
        let bits = v.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i32;
        W { neg: v < 0.0, e: exp - 1023, m: (1 << 127) | (u128::from(bits & ((1 << 52) - 1)) << 75) }
    }

    pub fn is_zero(self) -> bool {
        self.m == 0
    }

    pub fn negate(self) -> W {
        W { neg: !self.neg, ..self }
    }

    pub fn abs(self) -> W {
        W { neg: false, ..self }
    }

    /// Multiply by 2^k.
    pub fn ldexp(self, k: i32) -> W {
        if self.m == 0 {
            self
        } else {
            W { e: self.e + k, ..self }
        }
    }

    /// Magnitude comparison.
    fn abs_ge(self, b: W) -> bool {
        if self.m == 0 {
            return b.m == 0;
        }
        b.m == 0 || (self.e, self.m) >= (b.e, b.m)
    }

    pub fn times(self, b: W) -> W {
        let neg = self.neg != b.neg;
        if self.m == 0 || b.m == 0 {
            return W { neg, ..ZERO };
        }
        let (hi, lo) = mul128(self.m, b.m);
        let (m, e, rest) =
            if hi >> 127 != 0 { (hi, self.e + b.e + 1, lo) } else { ((hi << 1) | (lo >> 127), self.e + b.e, lo << 1) };
        W { neg, e, m: m | u128::from(rest != 0) }
    }

    pub fn plus(self, b: W) -> W {
        if self.m == 0 {
            return b;
        }
        if b.m == 0 {
            return self;
        }
        let (x, y) = if self.abs_ge(b) { (self, b) } else { (b, self) };
        let d = (x.e - y.e) as u32;
        let ym = sf::shr_jam(y.m, d);
        if x.neg == y.neg {
            let (s, carry) = x.m.overflowing_add(ym);
            if carry {
                W { neg: x.neg, e: x.e + 1, m: (1 << 127) | (s >> 1) | (s & 1) }
            } else {
                W { neg: x.neg, e: x.e, m: s }
            }
        } else {
            W::norm(x.neg, x.e, x.m - ym)
        }
    }

    pub fn minus(self, b: W) -> W {
        self.plus(b.negate())
    }

    /// Division by a nonzero value.
    pub fn over(self, b: W) -> W {
        let neg = self.neg != b.neg;
        if self.m == 0 {
            return W { neg, ..ZERO };
        }
        let (mut carry, mut r, e) = if self.m >= b.m {
            (false, self.m, self.e - b.e)
        } else {
            (self.m >> 127 != 0, self.m << 1, self.e - b.e - 1)
        };
        let mut q = 0u128;
        for _ in 0..128 {
            q <<= 1;
            if carry || r >= b.m {
                r = r.wrapping_sub(b.m);
                q |= 1;
            }
            carry = r >> 127 != 0;
            r <<= 1;
        }
        W { neg, e, m: q | u128::from(r != 0 || carry) }
    }

    fn div_int(self, k: i64) -> W {
        self.over(W::from_int(k))
    }

    /// Square root of a positive value (Newton's iteration from a binary64 estimate).
    pub fn sqrt(self) -> W {
        if self.m == 0 {
            return self;
        }
        let odd = self.e.rem_euclid(2) == 1;
        let mut f = (self.m >> 64) as f64 / (1u128 << 63) as f64;
        let mut e = self.e;
        if odd {
            f *= 2.0;
            e -= 1;
        }
        let mut s = W::from_f64(f.sqrt()).ldexp(e / 2);
        for _ in 0..3 {
            s = s.plus(self.over(s)).ldexp(-1);
        }
        s
    }

    /// Round to a register value (64-bit significand, current rounding mode).
    pub fn to_x80(self, ctx: &mut Ctx) -> X80 {
        sf::round_x80(self.neg, self.e, self.m, ctx)
    }

    /// Whether a term is negligible next to a running sum (it still counts
    /// as a sticky bit once added).
    fn negligible(self, sum: W) -> bool {
        self.m == 0 || self.e < sum.e - 120
    }
}

/// e^y - 1 for |y| <= 0.75, by its Taylor series.
fn expm1_small(y: W) -> W {
    let mut sum = y;
    let mut t = y;
    for k in 2..80 {
        t = t.times(y).div_int(k);
        sum = sum.plus(t);
        if t.negligible(sum) {
            break;
        }
    }
    sum
}

/// ln((1 + s) / (1 - s)) = 2 atanh(s), for |s| <= 0.18.
fn ln_ratio(s: W) -> W {
    let s2 = s.times(s);
    let mut p = s;
    let mut sum = s;
    for k in 1..80 {
        p = p.times(s2);
        let t = p.div_int(2 * k + 1);
        sum = sum.plus(t);
        if t.negligible(sum) {
            break;
        }
    }
    sum.ldexp(1)
}

/// log2(x) for a finite positive register value.
fn log2_w(x: X80) -> W {
    let u = unpack(x);
    let mut k = u.e;
    let mut mant = W { neg: false, e: 0, m: u128::from(u.m) << 64 };
    // Centre the mantissa on 1: [sqrt(1/2), sqrt(2)).
    if u.m > 0xb504_f333_f9de_6484 {
        mant = mant.ldexp(-1);
        k += 1;
    }
    let f = mant.minus(ONE);
    if f.is_zero() {
        return W::from_int(i64::from(k));
    }
    let s = f.over(f.plus(ONE.ldexp(1)));
    W::from_int(i64::from(k)).plus(ln_ratio(s).times(LOG2E))
}

/// log2(1 + x) for |x| < 1.
fn log2_1p_w(x: W) -> W {
    let s = x.over(x.plus(ONE.ldexp(1)));
    ln_ratio(s).times(LOG2E)
}

/// atan(t) for 0 <= t <= 1.
fn atan_w(t: W) -> W {
    let mut t = t;
    let mut k = 0;
    // atan(t) = 2 atan(t / (1 + sqrt(1 + t^2))), until t < 1/8.
    while t.m != 0 && t.e >= -3 {
        t = t.over(ONE.plus(ONE.plus(t.times(t)).sqrt()));
        k += 1;
    }
    let t2 = t.times(t);
    let mut p = t;
    let mut sum = t;
    for n in 1..120 {
        p = p.times(t2);
        let term = p.div_int(2 * n + 1);
        sum = if n % 2 == 1 { sum.minus(term) } else { sum.plus(term) };
        if term.negligible(sum) {
            break;
        }
    }
    sum.ldexp(k)
}

/// sin(r) for |r| <= pi/4.
fn sin_w(r: W) -> W {
    let r2 = r.times(r);
    let mut t = r;
    let mut sum = r;
    for k in 1..60 {
        t = t.times(r2).div_int((2 * k) * (2 * k + 1));
        sum = if k % 2 == 1 { sum.minus(t) } else { sum.plus(t) };
        if t.negligible(sum) {
            break;
        }
    }
    sum
}

/// cos(r) for |r| <= pi/4.
fn cos_w(r: W) -> W {
    let r2 = r.times(r);
    let mut t = ONE;
    let mut sum = ONE;
    for k in 1..60 {
        t = t.times(r2).div_int((2 * k - 1) * (2 * k));
        sum = if k % 2 == 1 { sum.minus(t) } else { sum.plus(t) };
        if t.negligible(sum) {
            break;
        }
    }
    sum
}

/// Reduce |a| (finite, nonzero) modulo pi/2: the quadrant (mod 4) and the
/// remainder r with |r| <= pi/4. `None` when |a| >= 2^63 (out of range).
pub fn reduce(a: X80) -> Option<(u32, W)> {
    let u = unpack(a);
    if u.e >= 63 {
        return None;
    }
    if u.e < -1 {
        return Some((0, W::from_x80(a.abs())));
    }
    // P = m * floor(2/pi * 2^640); |a| * 2/pi = P * 2^(e - 63 - 640).
    let mut p = [0u64; 11];
    let mut carry = 0u128;
    for (i, word) in p.iter_mut().take(10).enumerate() {
        let t = u128::from(u.m) * u128::from(TWO_OVER_PI[9 - i]) + carry;
        *word = t as u64;
        carry = t >> 64;
    }
    p[10] = carry as u64;
    let point = (640 + 63 - u.e) as usize;
    let bit = |p: &[u64; 11], i: usize| -> u64 {
        if i >= 704 {
            0
        } else {
            (p[i / 64] >> (i % 64)) & 1
        }
    };
    let mut q = (bit(&p, point) | (bit(&p, point + 1) << 1)) as u32;
    // Keep the fraction only.
    for (i, word) in p.iter_mut().enumerate() {
        let lo = i * 64;
        if lo >= point {
            *word = 0;
        } else if lo + 64 > point {
            *word &= (1u64 << (point - lo)) - 1;
        }
    }
    let negate = bit(&p, point - 1) == 1;
    if negate {
        // r = (fraction - 1) * pi/2: take 2^point - fraction.
        let mut c = 1u128;
        for word in p.iter_mut() {
            let t = u128::from(!*word) + c;
            *word = t as u64;
            c = t >> 64;
        }
        for (i, word) in p.iter_mut().enumerate() {
            let lo = i * 64;
            if lo >= point {
                *word = 0;
            } else if lo + 64 > point {
                *word &= (1u64 << (point - lo)) - 1;
            }
        }
        q = q.wrapping_add(1);
    }
    let top = (0..p.len()).rev().find(|&i| p[i] != 0)?;
    let lead = top * 64 + 63 - p[top].leading_zeros() as usize;
    let word_at = |i: i64| -> u64 {
        if !(0..11).contains(&i) {
            0
        } else {
            p[i as usize]
        }
    };
    let chunk = |lo: i64| -> u64 {
        let (w, off) = (lo.div_euclid(64), lo.rem_euclid(64) as u32);
        if off == 0 {
            word_at(w)
        } else {
            (word_at(w) >> off) | (word_at(w + 1) << (64 - off))
        }
    };
    let lo = lead as i64 - 127;
    // The bits below are never all zero (2/pi is irrational): keep a sticky bit.
    let m = (u128::from(chunk(lo + 64)) << 64) | u128::from(chunk(lo)) | 1;
    let f = W { neg: negate, e: lead as i32 - point as i32, m };
    Some((q & 3, f.times(PIO2)))
}

/// FSIN, FCOS, FSINCOS and FPTAN leave arguments with |x| >= 2^63 alone
/// and report it in C2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange;

/// F2XM1: 2^x - 1 (the SDM defines it for -1 <= x <= 1; outside, this
/// returns the mathematical value).
pub fn f2xm1(a: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = sf::screen_unary(a, ctx) {
        return r;
    }
    if a.is_zero() {
        return a;
    }
    if a.is_inf() {
        return if a.sign() { sf::ONE.negate() } else { a };
    }
    let x = W::from_x80(a);
    let u = unpack(a);
    // Integral arguments give exact results.
    if u.e >= 0 && u.e < 16 && u.m << (u.e + 1) == 0 {
        let n = (u.m >> (63 - u.e)) as i32;
        let n = if u.sign { -n } else { n };
        return ONE.ldexp(n).minus(ONE).to_x80(ctx);
    }
    if u.e >= 15 {
        // Far outside the defined range: overflow, or -1 + tiny.
        return if u.sign { ONE.negate().plus(ONE.ldexp(-40000)).to_x80(ctx) } else { ONE.ldexp(40000).to_x80(ctx) };
    }
    let mut y = x.times(LN2);
    let mut halvings = 0;
    while y.e >= -1 {
        y = y.ldexp(-1);
        halvings += 1;
    }
    let mut r = expm1_small(y);
    for _ in 0..halvings {
        // expm1(2y) = expm1(y) * (expm1(y) + 2)
        r = r.times(r.plus(ONE.ldexp(1)));
    }
    r.to_x80(ctx)
}

/// FYL2X: ST(1) * log2(ST(0)), with x = ST(0), y = ST(1).
pub fn fyl2x(x: X80, y: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = sf::screen_binary(x, y, ctx) {
        return r;
    }
    if x.sign() && !x.is_zero() {
        ctx.flags |= IE;
        return INDEFINITE;
    }
    if x.is_zero() {
        if y.is_zero() {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        if !y.is_inf() {
            ctx.flags |= ZE;
        }
        return X80::inf(!y.sign());
    }
    let below_one = unpack(x).e < 0;
    let is_one = x == sf::ONE || (x.exp() == 0x3fff && x.m == 1 << 63);
    if x.is_inf() {
        if y.is_zero() {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        return X80::inf(y.sign());
    }
    if y.is_inf() {
        if is_one {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        return X80::inf(y.sign() != below_one);
    }
    if y.is_zero() {
        return X80::zero(y.sign() != below_one);
    }
    if is_one {
        return X80::zero(y.sign());
    }
    log2_w(x).times(W::from_x80(y)).to_x80(ctx)
}

/// FYL2XP1: ST(1) * log2(ST(0) + 1), with x = ST(0), y = ST(1).
pub fn fyl2xp1(x: X80, y: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = sf::screen_binary(x, y, ctx) {
        return r;
    }
    if x.is_inf() {
        if x.sign() || y.is_zero() {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        return X80::inf(y.sign());
    }
    if x.is_zero() {
        if y.is_inf() {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        return X80::zero(x.sign() != y.sign());
    }
    let xw = W::from_x80(x);
    if x.sign() && xw.abs_ge(ONE) {
        // ln of zero or of a negative number: outside the defined range.
        ctx.flags |= IE;
        return INDEFINITE;
    }
    if y.is_inf() {
        return X80::inf(x.sign() != y.sign());
    }
    if y.is_zero() {
        return X80::zero(x.sign() != y.sign());
    }
    log2_1p_w(xw).times(W::from_x80(y)).to_x80(ctx)
}

/// FPATAN: atan(ST(1) / ST(0)) in the quadrant of (x = ST(0), y = ST(1)).
pub fn fpatan(x: X80, y: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = sf::screen_binary(x, y, ctx) {
        return r;
    }
    let sy = y.sign();
    let pi = |ctx: &mut Ctx| W { neg: sy, ..PI }.to_x80(ctx);
    let pio2 = |ctx: &mut Ctx| W { neg: sy, ..PIO2 }.to_x80(ctx);
    if y.is_zero() {
        return if x.sign() { pi(ctx) } else { y };
    }
    if x.is_zero() {
        return pio2(ctx);
    }
    if y.is_inf() {
        if x.is_inf() {
            let r = if x.sign() { PI.minus(PIO4) } else { PIO4 };
            return W { neg: sy, ..r }.to_x80(ctx);
        }
        return pio2(ctx);
    }
    if x.is_inf() {
        return if x.sign() { pi(ctx) } else { X80::zero(sy) };
    }
    let (ax, ay) = (W::from_x80(x).abs(), W::from_x80(y).abs());
    let mut r = if ax.abs_ge(ay) { atan_w(ay.over(ax)) } else { PIO2.minus(atan_w(ax.over(ay))) };
    if x.sign() {
        r = PI.minus(r);
    }
    W { neg: sy, ..r }.to_x80(ctx)
}

/// sin and cos of a finite nonzero value, or `None` out of range.
fn sincos_w(a: X80) -> Option<(W, W)> {
    let (q, r) = reduce(a)?;
    let (s, c) = (sin_w(r), cos_w(r));
    let (s, c) = match q {
        0 => (s, c),
        1 => (c, s.negate()),
        2 => (s.negate(), c.negate()),
        _ => (c.negate(), s),
    };
    Some(if a.sign() { (s.negate(), c) } else { (s, c) })
}

/// Screen a one-operand trigonometric argument: NaNs, unsupported values
/// and infinities (IE) decide the result.
fn trig_screen(a: X80, ctx: &mut Ctx) -> Option<X80> {
    if let Some(r) = sf::screen_unary(a, ctx) {
        return Some(r);
    }
    if a.is_inf() {
        ctx.flags |= IE;
        return Some(INDEFINITE);
    }
    None
}

/// FSIN. `Err(OutOfRange)` means the argument is out of range (|x| >= 2^63).
pub fn fsin(a: X80, ctx: &mut Ctx) -> Result<X80, OutOfRange> {
    if let Some(r) = trig_screen(a, ctx) {
        return Ok(r);
    }
    if a.is_zero() {
        return Ok(a);
    }
    let (s, _) = sincos_w(a).ok_or(OutOfRange)?;
    Ok(s.to_x80(ctx))
}

/// FCOS.
pub fn fcos(a: X80, ctx: &mut Ctx) -> Result<X80, OutOfRange> {
    if let Some(r) = trig_screen(a, ctx) {
        return Ok(r);
    }
    if a.is_zero() {
        return Ok(sf::ONE);
    }
    let (_, c) = sincos_w(a).ok_or(OutOfRange)?;
    Ok(c.to_x80(ctx))
}

/// FSINCOS: (sin, cos). Both results share one context; C1 reflects the
/// rounding of the last one rounded (the cosine, which ends up in ST(0)).
pub fn fsincos(a: X80, ctx: &mut Ctx) -> Result<(X80, X80), OutOfRange> {
    if let Some(r) = trig_screen(a, ctx) {
        return Ok((r, r));
    }
    if a.is_zero() {
        return Ok((a, sf::ONE));
    }
    let (s, c) = sincos_w(a).ok_or(OutOfRange)?;
    let s = s.to_x80(ctx);
    Ok((s, c.to_x80(ctx)))
}

/// FPTAN: tan(x) (the caller then pushes 1.0).
pub fn fptan(a: X80, ctx: &mut Ctx) -> Result<X80, OutOfRange> {
    if let Some(r) = trig_screen(a, ctx) {
        return Ok(r);
    }
    if a.is_zero() {
        return Ok(a);
    }
    let (s, c) = sincos_w(a).ok_or(OutOfRange)?;
    if c.is_zero() {
        return Ok(X80::inf(s.neg));
    }
    Ok(s.over(c).to_x80(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x87::softfloat::{Rc, ONE as XONE, PE};

    fn x(se: u16, m: u64) -> X80 {
        X80::new(se, m)
    }

    fn near() -> Ctx {
        Ctx::new(Rc::Nearest, 64)
    }

    #[test]
    fn constants_round_per_rc() {
        assert_eq!(sf::constant(false, PI.e, PI.m, Rc::Nearest), x(0x4000, 0xc90f_daa2_2168_c235));
        assert_eq!(sf::constant(false, PI.e, PI.m, Rc::Down), x(0x4000, 0xc90f_daa2_2168_c234));
        assert_eq!(sf::constant(false, L2T.e, L2T.m, Rc::Nearest), x(0x4000, 0xd49a_784b_cd1b_8afe));
        assert_eq!(sf::constant(false, L2T.e, L2T.m, Rc::Up), x(0x4000, 0xd49a_784b_cd1b_8aff));
        assert_eq!(sf::constant(false, LOG2E.e, LOG2E.m, Rc::Nearest), x(0x3fff, 0xb8aa_3b29_5c17_f0bc));
        assert_eq!(sf::constant(false, LG2.e, LG2.m, Rc::Nearest), x(0x3ffd, 0x9a20_9a84_fbcf_f799));
        assert_eq!(sf::constant(false, LN2.e, LN2.m, Rc::Nearest), x(0x3ffe, 0xb172_17f7_d1cf_79ac));
        assert_eq!(sf::constant(false, LN2.e, LN2.m, Rc::Zero), x(0x3ffe, 0xb172_17f7_d1cf_79ab));
    }

    #[test]
    fn working_arithmetic() {
        let three = W::from_int(3);
        let third = ONE.over(three);
        let back = third.times(three);
        // 1/3 * 3 = 1 - 2^-128-ish, sticky keeps it below 1.
        assert!(ONE.minus(back).e < -120);
        let two = W::from_int(2);
        let r = two.sqrt();
        let sq = r.times(r);
        assert!(sq.minus(two).is_zero() || sq.minus(two).e < -120);
    }

    #[test]
    fn known_values() {
        // sin(1) = 0.8414709848078965066525023216...
        let mut c = near();
        assert_eq!(fsin(XONE, &mut c), Ok(x(0x3ffe, 0xd76a_a478_4867_7021)));
        assert_eq!(c.flags, PE);
        // cos(1) = 0.5403023058681397174009366...
        assert_eq!(fcos(XONE, &mut near()), Ok(x(0x3ffe, 0x8a51_407d_a834_5c92)));
        // tan(1) = 1.5574077246549022305069748...
        assert_eq!(fptan(XONE, &mut near()), Ok(x(0x3fff, 0xc759_22e5_f71d_2dc5)));
        // atan(1) = pi/4
        assert_eq!(fpatan(XONE, XONE, &mut near()), x(0x3ffe, 0xc90f_daa2_2168_c235));
        // 2^0.5 - 1 = 0.41421356237309504880...
        assert_eq!(f2xm1(x(0x3ffe, 1 << 63), &mut near()), x(0x3ffd, 0xd413_cccf_e779_9211));
        // log2(10) * 1 = L2T
        assert_eq!(fyl2x(sf::from_i64(10), XONE, &mut near()), x(0x4000, 0xd49a_784b_cd1b_8afe));
        // log2(8) * 3 = 9, exact.
        let mut c = near();
        assert_eq!(fyl2x(sf::from_i64(8), sf::from_i64(3), &mut c), sf::from_i64(9));
        assert_eq!(c.flags, 0);
        // Out of range.
        assert_eq!(fsin(x(0x403e, 1 << 63), &mut near()), Err(OutOfRange));
        // Exact integer F2XM1.
        let mut c = near();
        assert_eq!(f2xm1(XONE.negate(), &mut c), x(0xbffe, 1 << 63));
        assert_eq!(c.flags, 0);
    }
}

#[cfg(test)]
mod vectors {
    use super::*;
    use crate::x87::softfloat::Rc;

    type Case = (u8, u8, u16, u64, u16, u64, u16, u64, u16);

    /// Results checked against a 30000-bit evaluation (mpmath), correctly
    /// rounded: (function, RC, x, y, result, flags). Functions: 0-3 FSIN,
    /// FCOS, FPTAN, FSIN; 4 F2XM1; 5, 6, 9 FYL2X; 7 FYL2XP1; 8 FPATAN.
    #[rustfmt::skip]
    const CASES: &[Case] = &[
        (0, 3, 0x3fc8, 0xa7ee53336b8fb691, 0x3fff, 0x8000000000000000, 0x3fc8, 0xa7ee53336b8fb690, 0x20),
        (0, 1, 0x3fd4, 0xe3a967f79a357acb, 0x3fff, 0x8000000000000000, 0x3fd4, 0xe3a967f79a357aca, 0x20),
        (0, 0, 0x3fdf, 0x8bd8731695303bbb, 0x3fff, 0x8000000000000000, 0x3fdf, 0x8bd8731695303bbb, 0x20),
        (0, 0, 0xbffa, 0x8bdf7da8690b1859, 0x3fff, 0x8000000000000000, 0xbffa, 0x8bd88829081d18c8, 0x20),
        (1, 1, 0xc034, 0xdcc6ffe5b89aece8, 0x3fff, 0x8000000000000000, 0x3ffa, 0xdff25144a4ec8404, 0x20),
        (1, 2, 0xc012, 0xab281f124fb3c553, 0x3fff, 0x8000000000000000, 0x3ffe, 0x84e0f0b8432ebf7f, 0x20),
        (1, 0, 0x4006, 0xbd7b3408bae95def, 0x3fff, 0x8000000000000000, 0x3ffe, 0x8d620281d728b1f3, 0x20),
        (1, 1, 0xbfea, 0xa48a8c164d15a42d, 0x3fff, 0x8000000000000000, 0x3ffe, 0xffffffffffcb1f18, 0x20),
        (2, 1, 0x3fe3, 0x8c053658ad4cbec7, 0x3fff, 0x8000000000000000, 0x3fe3, 0x8c053658ad4cbefe, 0x20),
        (2, 0, 0xbfef, 0xc0e1987606d2b14f, 0x3fff, 0x8000000000000000, 0xbfef, 0xc0e1987698d09dab, 0x20),
        (2, 0, 0xbfd3, 0xa75de629b5f71f2b, 0x3fff, 0x8000000000000000, 0xbfd3, 0xa75de629b5f71f2b, 0x20),
        (2, 1, 0xbfd5, 0xc6ab790849aaa873, 0x3fff, 0x8000000000000000, 0xbfd5, 0xc6ab790849aaa874, 0x20),
        (3, 2, 0x3fe5, 0xd2d98cc367e95ced, 0x3fff, 0x8000000000000000, 0x3fe5, 0xd2d98cc367e956f8, 0x20),
        (3, 3, 0x3ff2, 0xbcc414a565db1ba5, 0x3fff, 0x8000000000000000, 0x3ff2, 0xbcc414944acedce4, 0x20),
        (3, 3, 0xbfdb, 0xb735016c3ca0bf2b, 0x3fff, 0x8000000000000000, 0xbfdb, 0xb735016c3ca0bf2a, 0x20),
        (3, 3, 0x3fe0, 0x80512ad2676fbad5, 0x3fff, 0x8000000000000000, 0x3fe0, 0x80512ad2676fbad4, 0x20),
        (4, 0, 0xbfdf, 0xfdb45b37dc08b1dc, 0x3fff, 0x8000000000000000, 0xbfdf, 0xafdac52292590deb, 0x20),
        (4, 0, 0x3ff7, 0xfce2be6331835a56, 0x3fff, 0x8000000000000000, 0x3ff7, 0xafc1b6af152ea34d, 0x20),
        (4, 0, 0x3fe8, 0xdb78bbb7a90077ff, 0x3fff, 0x8000000000000000, 0x3fe8, 0x98204aceae9555b1, 0x20),
        (4, 0, 0xbfd5, 0xd42a44037ee0c7de, 0x3fff, 0x8000000000000000, 0xbfd5, 0x930fc7b5e2f92fd1, 0x20),
        (5, 3, 0x3ccb, 0xf4b3b39e7b65f3c2, 0x3fff, 0x8000000000000000, 0xc008, 0xccc42ae55792fdc8, 0x20),
        (5, 0, 0x3b0c, 0xb0edd6e9232c5827, 0x3fff, 0x8000000000000000, 0xc009, 0x9e510e1ceed245bd, 0x20),
        (5, 1, 0x492a, 0xd78b4d8cdbe8085d, 0x3fff, 0x8000000000000000, 0x400a, 0x92bc0788f8d61a4a, 0x20),
        (5, 0, 0x36a0, 0x89b21a38f309a08a, 0x3fff, 0x8000000000000000, 0xc00a, 0x95ee50872ee198f9, 0x20),
        (6, 1, 0x4a3d, 0xa9f9ff9a14f55b9d, 0x4001, 0xe5647c93d54ada10, 0x400d, 0x92dd91188c1b3294, 0x20),
        (6, 1, 0x3cd4, 0xe274198d43c38882, 0xc000, 0xdd22734fd61061b0, 0x400a, 0xaef5883827700de3, 0x20),
        (6, 1, 0x44b4, 0xca9616bef7424af8, 0xbff7, 0xd6ba247808f2a2f5, 0xc001, 0xfcd21a5ec813af8f, 0x20),
        (6, 2, 0x4b60, 0x8773d929ea6d844a, 0x3ffc, 0xba99f68d0f27770b, 0x4008, 0x84b612a972c00a4b, 0x20),
        (7, 1, 0x3ff8, 0xfe3d9ea9c8e5338d, 0x3fff, 0xd52e48a90313a849, 0x3ffa, 0x978c3e6beb9d0a25, 0x20),
        (7, 0, 0xbfe3, 0xe119d51235466cca, 0x3fff, 0xe8ed87362622de78, 0xbfe5, 0x93bde330fdc4a0c9, 0x20),
        (7, 1, 0x3fd0, 0xd8acb4c9a26c4dfb, 0x3fff, 0x945359e9f64e8ca2, 0x3fd1, 0xb51de6760790a2f6, 0x20),
        (7, 3, 0x3ff3, 0xcbba84fa5cf5e966, 0x3fff, 0xef541b4ba4fda7e4, 0x3ff5, 0x895cadc4445a757e, 0x20),
        (8, 0, 0x3fe7, 0xd3f9e57423f3ad40, 0xbff9, 0xfc4155cd6aaa26b9, 0xbfff, 0xc90fbfbe31df2bf4, 0x20),
        (8, 1, 0x3fe4, 0xca1cb11a02eb02a5, 0xc016, 0xebf2e42abe58f175, 0xbfff, 0xc90fdaa22168a6cc, 0x20),
        (8, 0, 0xc015, 0xa15f7140e01c49c6, 0x401a, 0x802fde8a5e6075eb, 0x3fff, 0xce1849fced4ec0dd, 0x20),
        (8, 2, 0xc010, 0xc688ae9ae5cfabc6, 0x3ff7, 0xea686d24acc448e9, 0x4000, 0xc90fda7c5928c548, 0x20),
        (9, 1, 0x4000, 0xa29a6aad1dc116b9, 0x3fff, 0x8000000000000000, 0x3fff, 0xac2fe6128130ec7a, 0x20),
        (9, 3, 0x4000, 0x85cb12f8fb2a03ae, 0x3fff, 0x8000000000000000, 0x3fff, 0x882c9e05b5079d03, 0x20),
        (9, 0, 0x3fff, 0xa762e5292001db16, 0x3fff, 0x8000000000000000, 0x3ffd, 0xc629ceee8516c982, 0x20),
        (9, 1, 0x3fff, 0xf7840b010ccb1eff, 0x3fff, 0x8000000000000000, 0x3ffe, 0xf38d6d9166132024, 0x20),
    ];

    #[test]
    fn correctly_rounded_vectors() {
        let modes = [Rc::Nearest, Rc::Down, Rc::Up, Rc::Zero];
        for &(kind, rc, ase, am, bse, bm, rse, rm, flags) in CASES {
            let (a, b) = (X80::new(ase, am), X80::new(bse, bm));
            let mut c = Ctx::new(modes[usize::from(rc)], 64);
            let r = match kind {
                0 | 3 => fsin(a, &mut c).unwrap(),
                1 => fcos(a, &mut c).unwrap(),
                2 => fptan(a, &mut c).unwrap(),
                4 => f2xm1(a, &mut c),
                5 | 6 | 9 => fyl2x(a, b, &mut c),
                7 => fyl2xp1(a, b, &mut c),
                _ => fpatan(a, b, &mut c),
            };
            assert_eq!((r, c.flags), (X80::new(rse, rm), flags), "function {kind} rc {rc} x {a:?} y {b:?}");
        }
    }
}
