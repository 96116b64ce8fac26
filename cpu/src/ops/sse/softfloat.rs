//! IEEE 754 binary32 and binary64 arithmetic with the x86 SSE rules
//! (SDM Vol. 1 §4.8–4.9, §10.2.3 MXCSR, §11.5 SIMD floating-point exceptions).
//!
//! Host `f32`/`f64` arithmetic rounds to nearest and reports no status, so
//! every operation here works on bit patterns with integer arithmetic: exact
//! intermediate results in `u128`, one rounding in [`round_pack`] under the
//! MXCSR rounding control, and the six exception flags accumulated in an
//! [`Env`]. The x86 specifics:
//! - NaN operands: the first source NaN wins (quieted), else the second
//!   (Vol. 1 Table 4-7); invalid operations return the QNaN indefinite
//!   (sign set, quiet bit set).
//! - Tininess is detected after rounding; with underflow masked, UE is
//!   reported only together with PE. FTZ (with UM set) returns a signed zero
//!   for every tiny result and reports UE and PE.
//! - DAZ turns denormal source operands into signed zeros before anything
//!   else, and DE is never reported then.
//! - Exception priority (Vol. 3A Table 6-8): SNaN invalid, QNaN operand, other
//!   invalid or divide-by-zero, denormal operand, overflow/underflow, inexact.

/// MXCSR exception flag bits (also the bit order of the masks, shifted by 7).
pub const IE: u32 = 1 << 0;
pub const DE: u32 = 1 << 1;
pub const ZE: u32 = 1 << 2;
pub const OE: u32 = 1 << 3;
pub const UE: u32 = 1 << 4;
pub const PE: u32 = 1 << 5;
/// The pre-computation exceptions.
pub const PRE: u32 = IE | DE | ZE;

/// Rounding-control values (MXCSR bits 14:13, ROUNDPS imm8 bits 1:0).
pub const RN: u32 = 0;
pub const RD: u32 = 1;
pub const RU: u32 = 2;
pub const RZ: u32 = 3;

/// A binary floating-point format held in the low bits of a `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fmt {
    /// Exponent field width.
    pub ebits: u32,
    /// Stored fraction width (precision minus one).
    pub mbits: u32,
}

pub const F32: Fmt = Fmt { ebits: 8, mbits: 23 };
pub const F64: Fmt = Fmt { ebits: 11, mbits: 52 };
/// IEEE binary16 (the F16C conversions).
pub const F16: Fmt = Fmt { ebits: 5, mbits: 10 };

impl Fmt {
    #[inline]
    pub const fn bias(self) -> i32 {
        (1 << (self.ebits - 1)) - 1
    }
    #[inline]
    pub const fn sign_bit(self) -> u64 {
        1 << (self.ebits + self.mbits)
    }
    #[inline]
    pub const fn frac_mask(self) -> u64 {
        (1 << self.mbits) - 1
    }
    #[inline]
    pub const fn exp_field(self, x: u64) -> u64 {
        (x >> self.mbits) & ((1 << self.ebits) - 1)
    }
    #[inline]
    const fn exp_max(self) -> u64 {
        (1 << self.ebits) - 1
    }
    #[inline]
    pub const fn quiet_bit(self) -> u64 {
        1 << (self.mbits - 1)
    }
    #[inline]
    pub const fn inf(self, neg: bool) -> u64 {
        (if neg { self.sign_bit() } else { 0 }) | (self.exp_max() << self.mbits)
    }
    #[inline]
    pub const fn zero(self, neg: bool) -> u64 {
        if neg {
            self.sign_bit()
        } else {
            0
        }
    }
    #[inline]
    pub const fn max_finite(self, neg: bool) -> u64 {
        self.zero(neg) | ((self.exp_max() - 1) << self.mbits) | self.frac_mask()
    }
    /// The QNaN floating-point indefinite.
    #[inline]
    pub const fn default_nan(self) -> u64 {
        self.inf(true) | self.quiet_bit()
    }
    #[inline]
    pub const fn is_neg(self, x: u64) -> bool {
        x & self.sign_bit() != 0
    }
    #[inline]
    pub const fn is_nan(self, x: u64) -> bool {
        self.exp_field(x) == self.exp_max() && x & self.frac_mask() != 0
    }
    #[inline]
    pub const fn is_snan(self, x: u64) -> bool {
        self.is_nan(x) && x & self.quiet_bit() == 0
    }
    #[inline]
    pub const fn is_inf(self, x: u64) -> bool {
        self.exp_field(x) == self.exp_max() && x & self.frac_mask() == 0
    }
    /// Zero of either sign.
    #[inline]
    pub const fn is_zero(self, x: u64) -> bool {
        x & !self.sign_bit() == 0
    }
    #[inline]
    pub const fn is_denormal(self, x: u64) -> bool {
        self.exp_field(x) == 0 && x & self.frac_mask() != 0
    }
    #[inline]
    pub const fn quiet(self, x: u64) -> u64 {
        x | self.quiet_bit()
    }
    /// Significand (with the hidden bit) and exponent of a finite nonzero
    /// value: `x = sig * 2^exp`.
    #[inline]
    fn sig_exp(self, x: u64) -> (u64, i32) {
        let e = self.exp_field(x) as i32;
        let f = x & self.frac_mask();
        if e == 0 {
            (f, 1 - self.bias() - self.mbits as i32)
        } else {
            (f | (1 << self.mbits), e - self.bias() - self.mbits as i32)
        }
    }
}

/// The MXCSR controls an operation runs under, and the flags it raised.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    /// Rounding control ([`RN`], [`RD`], [`RU`], [`RZ`]).
    pub rc: u32,
    pub ftz: bool,
    pub daz: bool,
    /// Underflow masked (MXCSR.UM): decides when UE is reported and whether FTZ applies.
    pub um: bool,
    /// Exception flags raised so far ([`IE`] ... [`PE`]).
    pub flags: u32,
    /// The exception masks (MXCSR bits 12:7, as bits 5:0 like the flags),
    /// for operations of several steps that stop at an unmasked exception.
    pub masks: u32,
    /// Flags of the finished steps of such an operation: an unmasked
    /// exception in a later step does not take them back (DPPS/DPPD: a
    /// product's masked overflow stays reported when the sum is invalid).
    pub done: u32,
}

impl Env {
    pub fn from_mxcsr(m: u32) -> Self {
        Env {
            rc: (m >> 13) & 3,
            ftz: m & (1 << 15) != 0,
            daz: m & (1 << 6) != 0,
            um: m & (1 << 11) != 0,
            flags: 0,
            masks: (m >> 7) & 0x3f,
            done: 0,
        }
    }

    /// Apply DAZ to a source operand; report whether a denormal remains.
    #[inline]
    fn src(&self, f: Fmt, x: u64) -> (u64, bool) {
        if f.is_denormal(x) {
            if self.daz {
                (x & f.sign_bit(), false)
            } else {
                (x, true)
            }
        } else {
            (x, false)
        }
    }
}

/// Shift `sig` right by `shift` bits rounding under `rc`; returns the rounded
/// value and whether any nonzero bit was dropped.
#[inline]
fn round_shift(sig: u128, shift: i32, neg: bool, rc: u32) -> (u128, bool) {
    if shift <= 0 {
        return (sig << (-shift) as u32, false);
    }
    let (q, gt_half, eq_half, inexact) = if shift > 128 {
        (0, false, false, sig != 0)
    } else if shift == 128 {
        (0, sig > 1 << 127, sig == 1 << 127, sig != 0)
    } else {
        let q = sig >> shift;
        let rem = sig & ((1u128 << shift) - 1);
        let half = 1u128 << (shift - 1);
        (q, rem > half, rem == half, rem != 0)
    };
    let up = match rc {
        RN => gt_half || (eq_half && q & 1 == 1),
        RD => neg && inexact,
        RU => !neg && inexact,
        _ => false,
    };
    (q + u128::from(up), inexact)
}

/// Round the exact value `(-1)^neg * sig * 2^exp` (`sig` nonzero; its lowest
/// bit may be a sticky bit well below the rounding point) to format `f`.
pub fn round_pack(f: Fmt, neg: bool, exp: i32, sig: u128, env: &mut Env) -> u64 {
    debug_assert!(sig != 0);
    let p = f.mbits as i32 + 1;
    let bias = f.bias();
    let emin = 1 - bias;
    let msb = 127 - sig.leading_zeros() as i32;
    // Round with an unbounded exponent first: it gives normal results and the
    // (after-rounding) tininess test.
    let (mut q, inexact) = round_shift(sig, msb - (p - 1), neg, env.rc);
    let mut e = exp + msb;
    if q >> p != 0 {
        q >>= 1;
        e += 1;
    }
    let sign = f.zero(neg);
    if e >= emin {
        if e > bias {
            env.flags |= OE | PE;
            let to_inf = match env.rc {
                RN => true,
                RD => neg,
                RU => !neg,
                _ => false,
            };
            return if to_inf { f.inf(neg) } else { f.max_finite(neg) };
        }
        if inexact {
            env.flags |= PE;
        }
        return sign | (((e + bias) as u64) << f.mbits) | (q as u64 & f.frac_mask());
    }
    // Tiny.
    if env.ftz && env.um {
        env.flags |= UE | PE;
        return sign;
    }
    let (qd, inexact) = round_shift(sig, (emin - (p - 1)) - exp, neg, env.rc);
    if inexact {
        env.flags |= UE | PE;
    } else if !env.um {
        env.flags |= UE;
    }
    // A carry into the hidden bit yields the smallest normal, as the encoding intends.
    sign | qd as u64
}

/// NaN result of a two-operand operation with at least one NaN operand.
#[inline]
fn nan2(f: Fmt, a: u64, b: u64, env: &mut Env) -> u64 {
    if f.is_snan(a) || f.is_snan(b) {
        env.flags |= IE;
    }
    if f.is_nan(a) {
        f.quiet(a)
    } else {
        f.quiet(b)
    }
}

#[inline]
fn nan1(f: Fmt, a: u64, env: &mut Env) -> u64 {
    if f.is_snan(a) {
        env.flags |= IE;
    }
    f.quiet(a)
}

/// Exact result `x` passed through rounding (so FTZ sees tiny results).
#[inline]
fn repack(f: Fmt, x: u64, env: &mut Env) -> u64 {
    if f.is_zero(x) || f.exp_field(x) == f.exp_max() {
        return x;
    }
    if !f.is_denormal(x) {
        return x;
    }
    let (s, e) = f.sig_exp(x);
    round_pack(f, f.is_neg(x), e, u128::from(s), env)
}

pub fn add(f: Fmt, a: u64, b: u64, env: &mut Env) -> u64 {
    addsub(f, a, b, false, env)
}

pub fn sub(f: Fmt, a: u64, b: u64, env: &mut Env) -> u64 {
    addsub(f, a, b, true, env)
}

fn addsub(f: Fmt, a: u64, b: u64, negate_b: bool, env: &mut Env) -> u64 {
    let (a, da) = env.src(f, a);
    let (b, db) = env.src(f, b);
    if f.is_nan(a) || f.is_nan(b) {
        return nan2(f, a, b, env);
    }
    let sa = f.is_neg(a);
    let sb = f.is_neg(b) != negate_b;
    if f.is_inf(a) && f.is_inf(b) && sa != sb {
        env.flags |= IE;
        return f.default_nan();
    }
    if da || db {
        env.flags |= DE;
    }
    if f.is_inf(a) {
        return a;
    }
    if f.is_inf(b) {
        return f.inf(sb);
    }
    let za = f.is_zero(a);
    let zb = f.is_zero(b);
    if za && zb {
        return f.zero(if sa == sb { sa } else { env.rc == RD });
    }
    if za {
        return repack(f, (b & !f.sign_bit()) | f.zero(sb), env);
    }
    if zb {
        return repack(f, a, env);
    }
    let (ma, ea) = f.sig_exp(a);
    let (mb, eb) = f.sig_exp(b);
    sum_exact(f, (sa, u128::from(ma), ea), (sb, u128::from(mb), eb), env)
}

/// `(-1)^neg * m * 2^e` for both operands (nonzero, `m` below 2^125) added
/// and rounded once: both with their top bit at bit 124, the smaller one
/// aligned to the larger with a sticky bit for what is shifted out.
fn sum_exact(f: Fmt, a: (bool, u128, i32), b: (bool, u128, i32), env: &mut Env) -> u64 {
    let norm = |(neg, m, e): (bool, u128, i32)| {
        let sh = m.leading_zeros() as i32 - 3;
        (neg, m << sh, e - sh)
    };
    let (a, b) = (norm(a), norm(b));
    let ((big_neg, x, exp), (small_neg, ys, small_e)) = if a.2 >= b.2 { (a, b) } else { (b, a) };
    let d = (exp - small_e) as u32;
    let y = if d == 0 {
        ys
    } else if d >= 127 {
        1
    } else {
        (ys >> d) | u128::from(ys & ((1u128 << d) - 1) != 0)
    };
    if big_neg == small_neg {
        round_pack(f, big_neg, exp, x + y, env)
    } else if x > y {
        round_pack(f, big_neg, exp, x - y, env)
    } else if y > x {
        round_pack(f, small_neg, exp, y - x, env)
    } else {
        f.zero(env.rc == RD)
    }
}

pub fn mul(f: Fmt, a: u64, b: u64, env: &mut Env) -> u64 {
    let (a, da) = env.src(f, a);
    let (b, db) = env.src(f, b);
    if f.is_nan(a) || f.is_nan(b) {
        return nan2(f, a, b, env);
    }
    let neg = f.is_neg(a) != f.is_neg(b);
    if (f.is_inf(a) && f.is_zero(b)) || (f.is_zero(a) && f.is_inf(b)) {
        env.flags |= IE;
        return f.default_nan();
    }
    if da || db {
        env.flags |= DE;
    }
    if f.is_inf(a) || f.is_inf(b) {
        return f.inf(neg);
    }
    if f.is_zero(a) || f.is_zero(b) {
        return f.zero(neg);
    }
    let (ma, ea) = f.sig_exp(a);
    let (mb, eb) = f.sig_exp(b);
    round_pack(f, neg, ea + eb, u128::from(ma) * u128::from(mb), env)
}

/// Fused multiply-add: `(-1)^neg_p * a * b + (-1)^neg_c * c` rounded once
/// (the FMA3 instructions). A NaN result is the first NaN of `a`, `b`, `c`,
/// quieted (its sign not negated); any SNaN raises IE. Infinity times zero,
/// and an infinite product plus an infinity of the other sign, are invalid.
pub fn fma(f: Fmt, a: u64, b: u64, c: u64, neg_p: bool, neg_c: bool, env: &mut Env) -> u64 {
    let ops = [a, b, c];
    if let Some(&first) = ops.iter().find(|&&x| f.is_nan(x)) {
        if ops.iter().any(|&x| f.is_snan(x)) {
            env.flags |= IE;
        }
        return f.quiet(first);
    }
    let (a, da) = env.src(f, a);
    let (b, db) = env.src(f, b);
    let (c, dc) = env.src(f, c);
    let sp = (f.is_neg(a) != f.is_neg(b)) != neg_p;
    let sc = f.is_neg(c) != neg_c;
    let inf_p = f.is_inf(a) || f.is_inf(b);
    if (f.is_inf(a) && f.is_zero(b)) || (f.is_zero(a) && f.is_inf(b)) || (inf_p && f.is_inf(c) && sp != sc) {
        env.flags |= IE;
        return f.default_nan();
    }
    if da || db || dc {
        env.flags |= DE;
    }
    if inf_p {
        return f.inf(sp);
    }
    if f.is_inf(c) {
        return f.inf(sc);
    }
    let zp = f.is_zero(a) || f.is_zero(b);
    if zp && f.is_zero(c) {
        return f.zero(if sp == sc { sp } else { env.rc == RD });
    }
    if zp {
        return repack(f, (c & !f.sign_bit()) | f.zero(sc), env);
    }
    let (ma, ea) = f.sig_exp(a);
    let (mb, eb) = f.sig_exp(b);
    let p = (u128::from(ma) * u128::from(mb), ea + eb);
    if f.is_zero(c) {
        return round_pack(f, sp, p.1, p.0, env);
    }
    let (mc, ec) = f.sig_exp(c);
    sum_exact(f, (sp, p.0, p.1), (sc, u128::from(mc), ec), env)
}

pub fn div(f: Fmt, a: u64, b: u64, env: &mut Env) -> u64 {
    let (a, da) = env.src(f, a);
    let (b, db) = env.src(f, b);
    if f.is_nan(a) || f.is_nan(b) {
        return nan2(f, a, b, env);
    }
    let neg = f.is_neg(a) != f.is_neg(b);
    if (f.is_inf(a) && f.is_inf(b)) || (f.is_zero(a) && f.is_zero(b)) {
        env.flags |= IE;
        return f.default_nan();
    }
    if f.is_zero(b) && !f.is_inf(a) {
        env.flags |= ZE;
        return f.inf(neg);
    }
    if da || db {
        env.flags |= DE;
    }
    if f.is_inf(a) {
        return f.inf(neg);
    }
    if f.is_inf(b) || f.is_zero(a) {
        return f.zero(neg);
    }
    let (ma, ea) = f.sig_exp(a);
    let (mb, eb) = f.sig_exp(b);
    let la = ma.leading_zeros();
    let lb = mb.leading_zeros();
    let na = u128::from(ma << la) << 64;
    let nb = u128::from(mb << lb);
    let q = na / nb;
    let r = na % nb;
    let exp = (ea - la as i32) - 64 - (eb - lb as i32) - 1;
    round_pack(f, neg, exp, (q << 1) | u128::from(r != 0), env)
}

/// Integer square root of a `u128`: floor(sqrt(n)).
fn isqrt(n: u128) -> u128 {
    if n == 0 {
        return 0;
    }
    let mut r = (n as f64).sqrt() as u128;
    // Newton steps from the double estimate, then exact correction.
    for _ in 0..3 {
        if r == 0 {
            break;
        }
        r = (r + n / r) >> 1;
    }
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

pub fn sqrt(f: Fmt, a: u64, env: &mut Env) -> u64 {
    let (a, da) = env.src(f, a);
    if f.is_nan(a) {
        return nan1(f, a, env);
    }
    if f.is_zero(a) {
        return a;
    }
    if f.is_neg(a) {
        env.flags |= IE;
        return f.default_nan();
    }
    if da {
        env.flags |= DE;
    }
    if f.is_inf(a) {
        return a;
    }
    let (m, e) = f.sig_exp(a);
    // Scale to about 2^125 with an even exponent: the root then has 63 bits.
    let lz = m.leading_zeros() as i32; // m < 2^53: lz >= 11
    let mut s = 62 + lz; // m << s has its top bit at 125
    if (e - s) % 2 != 0 {
        s -= 1;
    }
    let n = u128::from(m) << s;
    let r = isqrt(n);
    let sticky = u128::from(r * r != n);
    round_pack(f, false, (e - s) / 2 - 1, (r << 1) | sticky, env)
}

/// Ordering of two values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Eq,
    Gt,
    Unordered,
}

/// Compare `a` with `b`. `signal_qnan`: a QNaN operand also raises IE (the
/// signaling predicates, COMISS, MIN/MAX).
pub fn compare(f: Fmt, a: u64, b: u64, signal_qnan: bool, env: &mut Env) -> Cmp {
    let (a, da) = env.src(f, a);
    let (b, db) = env.src(f, b);
    cmp_flushed(f, a, da, b, db, signal_qnan, env)
}

fn cmp_flushed(f: Fmt, a: u64, da: bool, b: u64, db: bool, signal_qnan: bool, env: &mut Env) -> Cmp {
    if f.is_nan(a) || f.is_nan(b) {
        if signal_qnan || f.is_snan(a) || f.is_snan(b) {
            env.flags |= IE;
        }
        return Cmp::Unordered;
    }
    if da || db {
        env.flags |= DE;
    }
    if f.is_zero(a) && f.is_zero(b) {
        return Cmp::Eq;
    }
    // Sign-magnitude to a monotonic integer key.
    let key = |x: u64| -> i128 {
        let m = i128::from(x & !f.sign_bit());
        if f.is_neg(x) {
            -m
        } else {
            m
        }
    };
    match key(a).cmp(&key(b)) {
        std::cmp::Ordering::Less => Cmp::Lt,
        std::cmp::Ordering::Equal => Cmp::Eq,
        std::cmp::Ordering::Greater => Cmp::Gt,
    }
}

/// MINSS/MINPS: `a < b ? a : b`; any NaN gives `b` and raises IE.
pub fn min(f: Fmt, a: u64, b: u64, env: &mut Env) -> u64 {
    let (a, da) = env.src(f, a);
    let (b, db) = env.src(f, b);
    if cmp_flushed(f, a, da, b, db, true, env) == Cmp::Lt {
        a
    } else {
        b
    }
}

/// MAXSS/MAXPS: `a > b ? a : b`; any NaN gives `b` and raises IE.
pub fn max(f: Fmt, a: u64, b: u64, env: &mut Env) -> u64 {
    let (a, da) = env.src(f, a);
    let (b, db) = env.src(f, b);
    if cmp_flushed(f, a, da, b, db, true, env) == Cmp::Gt {
        a
    } else {
        b
    }
}

/// Convert between formats (CVTSS2SD, CVTSD2SS and their packed forms).
pub fn convert(from: Fmt, to: Fmt, a: u64, env: &mut Env) -> u64 {
    let (a, da) = env.src(from, a);
    let neg = from.is_neg(a);
    if from.is_nan(a) {
        if from.is_snan(a) {
            env.flags |= IE;
        }
        let frac = a & from.frac_mask();
        let frac =
            if to.mbits >= from.mbits { frac << (to.mbits - from.mbits) } else { frac >> (from.mbits - to.mbits) };
        return to.inf(neg) | to.quiet_bit() | frac;
    }
    if da {
        env.flags |= DE;
    }
    if from.is_inf(a) {
        return to.inf(neg);
    }
    if from.is_zero(a) {
        return to.zero(neg);
    }
    let (m, e) = from.sig_exp(a);
    round_pack(to, neg, e, u128::from(m), env)
}

/// Convert a signed integer to a float, rounding under `env.rc`.
pub fn from_int(to: Fmt, v: i64, env: &mut Env) -> u64 {
    if v == 0 {
        return 0;
    }
    round_pack(to, v < 0, 0, u128::from(v.unsigned_abs()), env)
}

/// Convert to a signed integer of `bits` (32 or 64) rounding under `rc`
/// (truncating forms pass [`RZ`]). NaN, infinity and out-of-range values
/// raise IE and give the integer indefinite (only the sign bit set).
pub fn to_int(f: Fmt, a: u64, bits: u32, rc: u32, env: &mut Env) -> u64 {
    let indefinite = 1u64 << (bits - 1);
    let (a, _) = env.src(f, a);
    if f.is_nan(a) || f.is_inf(a) {
        env.flags |= IE;
        return indefinite;
    }
    if f.is_zero(a) {
        return 0;
    }
    let neg = f.is_neg(a);
    let (m, e) = f.sig_exp(a);
    let msb = 63 - m.leading_zeros() as i32;
    if e + msb >= bits as i32 {
        // |a| >= 2^bits: out of range whatever the rounding.
        env.flags |= IE;
        return indefinite;
    }
    let (q, inexact) = round_shift(u128::from(m), -e, neg, rc);
    let limit = if neg { 1u128 << (bits - 1) } else { (1u128 << (bits - 1)) - 1 };
    if q > limit {
        env.flags |= IE;
        return indefinite;
    }
    if inexact {
        env.flags |= PE;
    }
    let v = if neg { (q as u64).wrapping_neg() } else { q as u64 };
    if bits == 32 {
        v & 0xffff_ffff
    } else {
        v
    }
}

/// Round to an integral value in the same format (ROUNDSS/ROUNDPS).
/// `no_pe` suppresses the precision exception (imm8 bit 3).
pub fn round_int(f: Fmt, a: u64, rc: u32, no_pe: bool, env: &mut Env) -> u64 {
    let (a, _) = env.src(f, a);
    if f.is_nan(a) {
        return nan1(f, a, env);
    }
    if f.is_inf(a) || f.is_zero(a) {
        return a;
    }
    let neg = f.is_neg(a);
    let (m, e) = f.sig_exp(a);
    if e >= 0 {
        return a;
    }
    let (q, inexact) = round_shift(u128::from(m), -e, neg, rc);
    if inexact && !no_pe {
        env.flags |= PE;
    }
    if q == 0 {
        return f.zero(neg);
    }
    // q is an exact integer below 2^p: this packs without rounding.
    let mut quiet = *env;
    round_pack(f, neg, 0, q, &mut quiet)
}

/// Approximate reciprocal (RCPSS/RCPPS): the correctly rounded reciprocal with
/// its fraction cut to 12 bits, within the architectural 1.5 * 2^-12 relative
/// error. Denormal operands count as zero and tiny results flush to zero;
/// no flags are raised.
pub fn rcp(a: u32) -> u32 {
    approx(a, false)
}

/// Approximate reciprocal square root (RSQRTSS/RSQRTPS), as [`rcp`].
pub fn rsqrt(a: u32) -> u32 {
    approx(a, true)
}

fn approx(a: u32, root: bool) -> u32 {
    let f = F32;
    let x = u64::from(a);
    let neg = f.is_neg(x);
    if f.is_nan(x) {
        return f.quiet(x) as u32;
    }
    if f.is_zero(x) || f.is_denormal(x) {
        return f.inf(neg) as u32;
    }
    if f.is_inf(x) {
        return if root && neg { f.default_nan() as u32 } else { f.zero(neg) as u32 };
    }
    if root && neg {
        return f.default_nan() as u32;
    }
    let mut env = Env { rc: RN, ftz: true, daz: true, um: true, flags: 0, masks: 0x3f, done: 0 };
    let one = 0x3f80_0000;
    let r = if root {
        let s = sqrt(f, x, &mut env);
        div(f, one, s, &mut env)
    } else {
        div(f, one, x, &mut env)
    };
    if f.is_zero(r) {
        return r as u32;
    }
    (r as u32) & !0x7ff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rc: u32) -> Env {
        Env { rc, ftz: false, daz: false, um: true, flags: 0, masks: 0x3f, done: 0 }
    }

    /// A small deterministic generator of interesting bit patterns.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f64(&mut self) -> u64 {
            let r = self.next();
            match r % 16 {
                0 => 0,
                1 => F64.sign_bit(),
                2 => F64.inf(r & 32 != 0),
                3 => r & F64.frac_mask(), // denormal
                4 => (r & 0x800f_ffff_ffff_ffff) | (0x3ff << 52),
                5 => (r & 0x800f_ffff_ffff_ffff) | (0x001 << 52),
                6 => (r & 0x800f_ffff_ffff_ffff) | (0x7fe << 52),
                7 => F64.inf(false) | 1 | (r & (1 << 51)),
                _ => {
                    let e = 0x3ff - 40 + (r >> 53) % 80;
                    (r & 0x800f_ffff_ffff_ffff) | (e << 52)
                }
            }
        }
        fn f32(&mut self) -> u32 {
            let r = self.next();
            match r % 16 {
                0 => 0,
                1 => 0x8000_0000,
                2 => 0x7f80_0000 | ((r as u32) & 0x8000_0000),
                3 => (r as u32) & 0x007f_ffff,
                4 => ((r as u32) & 0x807f_ffff) | (0x7f << 23),
                5 => ((r as u32) & 0x807f_ffff) | (0x01 << 23),
                6 => ((r as u32) & 0x807f_ffff) | (0xfe << 23),
                7 => 0x7f80_0001 | ((r as u32) & 0x0040_0000),
                _ => {
                    let e = 0x7f - 20 + ((r >> 40) as u32) % 40;
                    ((r as u32) & 0x807f_ffff) | (e << 23)
                }
            }
        }
    }

    /// Round-to-nearest results match the host's SSE arithmetic bit for bit
    /// (the host rounds to nearest with the same NaN rules).
    #[test]
    fn nearest_matches_host_f64() {
        let mut g = Gen(0x1234_5678_9abc_def1);
        for _ in 0..200_000 {
            let (a, b) = (g.f64(), g.f64());
            let (fa, fb) = (std::hint::black_box(f64::from_bits(a)), std::hint::black_box(f64::from_bits(b)));
            let mut e = env(RN);
            assert_eq!(add(F64, a, b, &mut e), (fa + fb).to_bits(), "add {a:#x} {b:#x}");
            assert_eq!(sub(F64, a, b, &mut e), (fa - fb).to_bits(), "sub {a:#x} {b:#x}");
            assert_eq!(mul(F64, a, b, &mut e), (fa * fb).to_bits(), "mul {a:#x} {b:#x}");
            assert_eq!(div(F64, a, b, &mut e), (fa / fb).to_bits(), "div {a:#x} {b:#x}");
            if !F64.is_nan(a) {
                assert_eq!(sqrt(F64, a, &mut e), fa.sqrt().to_bits(), "sqrt {a:#x}");
            }
            assert_eq!(convert(F64, F32, a, &mut e) as u32, (fa as f32).to_bits(), "cvt {a:#x}");
        }
    }

    #[test]
    fn nearest_matches_host_f32() {
        let mut g = Gen(0x0bad_cafe_dead_beef);
        for _ in 0..200_000 {
            let (a, b) = (g.f32(), g.f32());
            let (fa, fb) = (std::hint::black_box(f32::from_bits(a)), std::hint::black_box(f32::from_bits(b)));
            let (a, b) = (u64::from(a), u64::from(b));
            let mut e = env(RN);
            assert_eq!(add(F32, a, b, &mut e) as u32, (fa + fb).to_bits(), "add {a:#x} {b:#x}");
            assert_eq!(sub(F32, a, b, &mut e) as u32, (fa - fb).to_bits(), "sub {a:#x} {b:#x}");
            assert_eq!(mul(F32, a, b, &mut e) as u32, (fa * fb).to_bits(), "mul {a:#x} {b:#x}");
            assert_eq!(div(F32, a, b, &mut e) as u32, (fa / fb).to_bits(), "div {a:#x} {b:#x}");
            if !F32.is_nan(a) {
                assert_eq!(sqrt(F32, a, &mut e) as u32, fa.sqrt().to_bits(), "sqrt {a:#x}");
                assert_eq!(convert(F32, F64, a, &mut e), f64::from(fa).to_bits(), "cvt {a:#x}");
            }
        }
    }

    /// Directed roundings bracket the exact result: checked for f32 through
    /// exact f64 products and sums.
    #[test]
    fn directed_rounding_brackets_exact_f32() {
        let mut g = Gen(42);
        for _ in 0..100_000 {
            let a = u64::from(g.f32());
            let b = u64::from(g.f32());
            if [a, b].iter().any(|&x| F32.is_nan(x) || F32.is_inf(x)) {
                continue;
            }
            let fa = f64::from(f32::from_bits(a as u32));
            let fb = f64::from(f32::from_bits(b as u32));
            // A product of two f32 is exact in f64.
            let exact = fa * fb;
            let dn = f32::from_bits(mul(F32, a, b, &mut env(RD)) as u32);
            let up = f32::from_bits(mul(F32, a, b, &mut env(RU)) as u32);
            let tz = f32::from_bits(mul(F32, a, b, &mut env(RZ)) as u32);
            assert!(f64::from(dn) <= exact && exact <= f64::from(up), "{a:#x} * {b:#x}");
            assert!(f64::from(tz).abs() <= exact.abs());
            if f64::from(dn) == exact {
                assert_eq!(dn, up);
            } else if dn.is_finite() && up.is_finite() && exact.abs() < f64::from(f32::MAX) {
                assert_eq!(dn.next_up(), up, "{a:#x} * {b:#x}");
            }
        }
    }

    /// The MXCSR rounding modes and APFloat's.
    const MODES: [(u32, rustc_apfloat::Round); 4] = [
        (RN, rustc_apfloat::Round::NearestTiesToEven),
        (RD, rustc_apfloat::Round::TowardNegative),
        (RU, rustc_apfloat::Round::TowardPositive),
        (RZ, rustc_apfloat::Round::TowardZero),
    ];

    /// All four rounding modes against an independent softfloat (LLVM's
    /// APFloat port): values, and the PE, OE, ZE and IE flags.
    #[test]
    fn all_roundings_match_apfloat() {
        use rustc_apfloat::ieee::{Double, Single};
        use rustc_apfloat::{Float, Status, StatusAnd};

        fn check<F: Float>(fmt: Fmt, a: u64, b: u64) {
            let (x, y) = (F::from_bits(u128::from(a)), F::from_bits(u128::from(b)));
            for (rc, r) in MODES {
                for op in 0..4 {
                    let mut e = env(rc);
                    let f = [add, sub, mul, div][op];
                    let mine = f(fmt, a, b, &mut e);
                    let want: StatusAnd<F> = match op {
                        0 => x.add_r(y, r),
                        1 => x.sub_r(y, r),
                        2 => x.mul_r(y, r),
                        _ => x.div_r(y, r),
                    };
                    let ctx = format!("op {op} rc {rc} {a:#x} {b:#x}");
                    if want.value.is_nan() {
                        assert!(fmt.is_nan(mine), "{ctx}");
                    } else {
                        assert_eq!(u128::from(mine), want.value.to_bits(), "{ctx}");
                    }
                    let st = want.status;
                    assert_eq!(e.flags & PE != 0, st.intersects(Status::INEXACT), "PE {ctx}");
                    // APFloat reports no overflow when the rounding mode clamps to the
                    // largest finite value; IEEE 754 and x86 do.
                    let clamped = mine & !fmt.sign_bit() == fmt.max_finite(false) && e.flags & OE != 0;
                    assert!(clamped || (e.flags & OE != 0) == st.intersects(Status::OVERFLOW), "OE {ctx}");
                    assert_eq!(e.flags & ZE != 0, st.intersects(Status::DIV_BY_ZERO), "ZE {ctx}");
                    assert_eq!(e.flags & IE != 0, st.intersects(Status::INVALID_OP), "IE {ctx}");
                }
            }
        }
        let mut g = Gen(0x5eed);
        for _ in 0..40_000 {
            let (a, b) = (g.f64(), g.f64());
            if !F64.is_nan(a) && !F64.is_nan(b) {
                check::<Double>(F64, a, b);
            }
            let (a, b) = (u64::from(g.f32()), u64::from(g.f32()));
            if !F32.is_nan(a) && !F32.is_nan(b) {
                check::<Single>(F32, a, b);
            }
        }
    }

    /// The fused multiply-add in all four rounding modes against APFloat's
    /// `mul_add`: values (one rounding), PE and IE; with the negations.
    #[test]
    fn fma_matches_apfloat() {
        use rustc_apfloat::ieee::{Double, Single};
        use rustc_apfloat::{Float, Status};

        fn check<F: Float>(fmt: Fmt, a: u64, b: u64, c: u64) {
            let (x, y, z) = (F::from_bits(u128::from(a)), F::from_bits(u128::from(b)), F::from_bits(u128::from(c)));
            for (rc, r) in MODES {
                for (neg_p, neg_c) in [(false, false), (true, false), (false, true), (true, true)] {
                    let mut e = env(rc);
                    let mine = fma(fmt, a, b, c, neg_p, neg_c, &mut e);
                    let xs = if neg_p { -x } else { x };
                    let zs = if neg_c { -z } else { z };
                    let want = xs.mul_add_r(y, zs, r);
                    let ctx = format!("rc {rc} {a:#x} {b:#x} {c:#x} {neg_p} {neg_c}");
                    if want.value.is_nan() {
                        assert!(fmt.is_nan(mine), "{ctx}");
                    } else {
                        assert_eq!(u128::from(mine), want.value.to_bits(), "{ctx}");
                    }
                    assert_eq!(e.flags & PE != 0, want.status.intersects(Status::INEXACT), "PE {ctx}");
                    assert_eq!(e.flags & IE != 0, want.status.intersects(Status::INVALID_OP), "IE {ctx}");
                }
            }
        }
        let mut g = Gen(0xf3a);
        for i in 0..30_000 {
            let (a, b) = (g.f64(), g.f64());
            // Addends near the product, for cancellation.
            let c = if i % 3 == 0 {
                let p = f64::from_bits(a) * f64::from_bits(b);
                (-p).to_bits() ^ (g.f64() & 0xff)
            } else {
                g.f64()
            };
            if ![a, b, c].iter().any(|&v| F64.is_nan(v)) {
                check::<Double>(F64, a, b, c);
            }
            let (a, b, c) = (u64::from(g.f32()), u64::from(g.f32()), u64::from(g.f32()));
            if ![a, b, c].iter().any(|&v| F32.is_nan(v)) {
                check::<Single>(F32, a, b, c);
            }
        }
    }

    #[test]
    fn flags() {
        let one = 0x3f80_0000u64;
        let three = 0x4040_0000u64;
        let mut e = env(RN);
        div(F32, one, three, &mut e);
        assert_eq!(e.flags, PE);
        let mut e = env(RN);
        assert_eq!(div(F32, one, 0, &mut e), F32.inf(false));
        assert_eq!(e.flags, ZE);
        let mut e = env(RN);
        assert_eq!(div(F32, 0, 0, &mut e), F32.default_nan());
        assert_eq!(e.flags, IE);
        // Max * 2 overflows: OE and PE, infinity in RN, max in RZ.
        let max = F32.max_finite(false);
        let two = 0x4000_0000;
        let mut e = env(RN);
        assert_eq!(mul(F32, max, two, &mut e), F32.inf(false));
        assert_eq!(e.flags, OE | PE);
        let mut e = env(RZ);
        assert_eq!(mul(F32, max, two, &mut e), max);
        // Smallest normal / 2 is an exact denormal: no UE when masked.
        let min_norm = 0x0080_0000;
        let half = 0x3f00_0000;
        let mut e = env(RN);
        assert_eq!(mul(F32, min_norm, half, &mut e), 0x0040_0000);
        assert_eq!(e.flags, 0);
        // ... but UE when unmasked.
        let mut e = Env { um: false, ..env(RN) };
        mul(F32, min_norm, half, &mut e);
        assert_eq!(e.flags, UE);
        // FTZ flushes it and reports UE and PE.
        let mut e = Env { ftz: true, ..env(RN) };
        assert_eq!(mul(F32, min_norm, half, &mut e), 0);
        assert_eq!(e.flags, UE | PE);
        // Denormal operand: DE; with DAZ it is zero and silent.
        let mut e = env(RN);
        add(F32, 1, one, &mut e);
        assert_eq!(e.flags, DE | PE);
        let mut e = Env { daz: true, ..env(RN) };
        assert_eq!(add(F32, 1, one, &mut e), one);
        assert_eq!(e.flags, 0);
        // SNaN: IE, quieted; first operand NaN wins.
        let snan = 0x7f80_0001;
        let qnan = 0xffc0_0002;
        let mut e = env(RN);
        assert_eq!(add(F32, snan, qnan, &mut e), 0x7fc0_0001);
        assert_eq!(e.flags, IE);
        let mut e = env(RN);
        assert_eq!(add(F32, qnan, snan, &mut e), qnan);
        // An exact denormal difference raises nothing while UM is set.
        let mut e = env(RN);
        let x = sub(F32, min_norm, 0x0000_0001, &mut e); // 2^-126 - 2^-149
        assert_eq!(x, 0x007f_ffff);
        assert_eq!(e.flags, DE);
        // Tininess is detected after rounding: 2^-126 * (1 - 2^-24) is tiny, and
        // rounds to the smallest normal at denormal precision: UE and PE.
        let mut e = env(RN);
        let y = mul(F32, 0x3f7f_ffff, min_norm, &mut e);
        assert_eq!(y, min_norm);
        assert_eq!(e.flags, UE | PE);
        // x - 0 in RD of -0 + -0 gives -0; +0 + -0 is +0 in RN, -0 in RD.
        assert_eq!(add(F32, 0, 0x8000_0000, &mut env(RN)), 0);
        assert_eq!(add(F32, 0, 0x8000_0000, &mut env(RD)), 0x8000_0000);
        assert_eq!(sub(F32, one, one, &mut env(RD)), 0x8000_0000);
    }

    #[test]
    fn integer_conversions() {
        let mut e = env(RN);
        assert_eq!(to_int(F32, 0x3fc0_0000, 32, RN, &mut e), 2); // 1.5 -> 2
        assert_eq!(e.flags, PE);
        assert_eq!(to_int(F32, 0x4020_0000, 32, RN, &mut env(RN)), 2); // 2.5 -> 2
        assert_eq!(to_int(F32, 0xbfc0_0000, 32, RZ, &mut env(RN)), 0xffff_ffff); // -1.5 -> -1
        assert_eq!(to_int(F32, 0xbfc0_0000, 32, RD, &mut env(RN)), 0xffff_fffe);
        assert_eq!(to_int(F32, 0x3fc0_0000, 32, RU, &mut env(RN)), 2);
        let mut e = env(RN);
        assert_eq!(to_int(F32, 0x4f00_0000, 32, RN, &mut e), 0x8000_0000); // 2^31 overflows
        assert_eq!(e.flags, IE);
        let mut e = env(RN);
        assert_eq!(to_int(F32, 0xcf00_0000, 32, RN, &mut e), 0x8000_0000); // -2^31 fits
        assert_eq!(e.flags, 0);
        let mut e = env(RN);
        assert_eq!(to_int(F64, 0x41df_ffff_ffff_ffff, 32, RN, &mut e), 0x8000_0000); // 2^31 - 0.5 rounds to 2^31
        assert_eq!(e.flags, IE);
        assert_eq!(to_int(F64, 0x41df_ffff_ffff_ffff, 32, RZ, &mut env(RN)), 0x7fff_ffff);
        assert_eq!(to_int(F64, F64.default_nan(), 64, RN, &mut env(RN)), 1 << 63);
        let mut e = env(RN);
        assert_eq!(from_int(F32, 16_777_217, &mut e), 0x4b80_0000);
        assert_eq!(e.flags, PE);
        assert_eq!(from_int(F32, 16_777_217, &mut env(RU)), 0x4b80_0001);
        assert_eq!(from_int(F64, i64::MIN, &mut env(RN)), 0xc3e0_0000_0000_0000);
    }

    #[test]
    fn rounding_to_integral() {
        let mut e = env(RN);
        assert_eq!(round_int(F32, 0x3fc0_0000, RN, false, &mut e), 0x4000_0000); // 1.5 -> 2
        assert_eq!(e.flags, PE);
        let mut e = env(RN);
        assert_eq!(round_int(F32, 0x3fc0_0000, RD, true, &mut e), 0x3f80_0000);
        assert_eq!(e.flags, 0);
        assert_eq!(round_int(F32, 0xbf00_0000, RN, false, &mut env(RN)), 0x8000_0000); // -0.5 -> -0
        assert_eq!(round_int(F32, 0xbf00_0000, RD, false, &mut env(RN)), 0xbf80_0000); // -> -1
        assert_eq!(round_int(F64, 0x4330_0000_0000_0001, RN, false, &mut env(RN)), 0x4330_0000_0000_0001);
        let mut g = Gen(7);
        for _ in 0..50_000 {
            let a = g.f64();
            if F64.is_nan(a) {
                continue;
            }
            let x = f64::from_bits(a);
            assert_eq!(round_int(F64, a, RZ, false, &mut env(RN)), x.trunc().to_bits(), "{a:#x}");
            assert_eq!(round_int(F64, a, RD, false, &mut env(RN)), x.floor().to_bits(), "{a:#x}");
            assert_eq!(round_int(F64, a, RU, false, &mut env(RN)), x.ceil().to_bits(), "{a:#x}");
            assert_eq!(round_int(F64, a, RN, false, &mut env(RN)), x.round_ties_even().to_bits(), "{a:#x}");
        }
    }

    #[test]
    fn min_max_and_compare() {
        let mut e = env(RN);
        // min(+0, -0) returns the second operand.
        assert_eq!(min(F32, 0, 0x8000_0000, &mut e), 0x8000_0000);
        assert_eq!(min(F32, 0x8000_0000, 0, &mut e), 0);
        assert_eq!(e.flags, 0);
        let qnan = 0x7fc0_0000;
        assert_eq!(max(F32, qnan, 0x3f80_0000, &mut e), 0x3f80_0000);
        assert_eq!(e.flags, IE);
        let mut e = env(RN);
        assert_eq!(compare(F32, qnan, 0, false, &mut e), Cmp::Unordered);
        assert_eq!(e.flags, 0);
        assert_eq!(compare(F32, 0xbf80_0000, 0x3f80_0000, false, &mut e), Cmp::Lt);
        assert_eq!(compare(F32, 0x8000_0000, 0, false, &mut e), Cmp::Eq);
    }

    #[test]
    fn approximations_are_close() {
        for &x in &[1.0f32, 3.0, 0.1, 1e30, 7.5e-30, 123.456] {
            let r = f32::from_bits(rcp(x.to_bits()));
            assert!(((r - 1.0 / x) / (1.0 / x)).abs() <= 1.5 / 4096.0, "{x}");
            let s = f32::from_bits(rsqrt(x.to_bits()));
            let t = 1.0 / x.sqrt();
            assert!(((s - t) / t).abs() <= 1.5 / 4096.0, "{x}");
        }
        assert_eq!(rcp(0), 0x7f80_0000);
        assert_eq!(rsqrt(0xbf80_0000), 0xffc0_0000);
        assert_eq!(rcp(0x7f7f_ffff), 0); // 1/max is denormal: flushed
    }
}
