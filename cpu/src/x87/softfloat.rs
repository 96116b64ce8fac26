//! Software arithmetic on the x87 80-bit extended format (SDM Vol. 1 §4.2,
//! §4.8 and §8.5), with the x87 precision control, the four rounding modes,
//! and the six exception flags the way the x87 FPU reports them.
//!
//! Every operation is exact up to one final rounding: intermediate results are
//! kept in 128-bit significands with a sticky bit, then [`round_pack`] rounds
//! once to the destination precision (24, 53 or 64 bits) and exponent range.
//!
//! The x87 specifics handled here:
//! - pseudo-denormals (exponent 0, integer bit set) are accepted as denormal
//!   operands; unnormals, pseudo-NaNs and pseudo-infinities are unsupported
//!   formats and raise IE with the QNaN indefinite as the masked result;
//! - NaN propagation follows SDM Table 4-7 (the larger significand wins, a
//!   QNaN beats an SNaN, SNaNs are quieted);
//! - tininess is detected after rounding; a masked underflow sets UE only when
//!   the result is also inexact, an unmasked one always sets it;
//! - unmasked overflow and underflow on register destinations deliver the
//!   result with the exponent bias-adjusted by 24576 (SDM §4.9.1.4, §4.9.1.5);
//! - `Ctx::round_up` records whether the significand was rounded up in
//!   magnitude, which the x87 reports in C1.

/// Invalid operation.
pub const IE: u16 = 0x01;
/// Denormal operand.
pub const DE: u16 = 0x02;
/// Divide by zero.
pub const ZE: u16 = 0x04;
/// Overflow.
pub const OE: u16 = 0x08;
/// Underflow.
pub const UE: u16 = 0x10;
/// Precision (inexact result).
pub const PE: u16 = 0x20;

const BIAS: i32 = 16383;
const INT_BIT: u64 = 1 << 63;
const QUIET_BIT: u64 = 1 << 62;

/// A rounding mode, as encoded in FCW.RC (bits 11:10) and MXCSR.RC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rc {
    Nearest,
    Down,
    Up,
    Zero,
}

impl Rc {
    pub fn from_bits(rc: u16) -> Rc {
        match rc & 3 {
            0 => Rc::Nearest,
            1 => Rc::Down,
            2 => Rc::Up,
            _ => Rc::Zero,
        }
    }
}

/// An 80-bit extended-precision value: sign and biased exponent in `se`,
/// the 64-bit significand with its explicit integer bit in `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct X80 {
    pub se: u16,
    pub m: u64,
}

/// The QNaN floating-point indefinite (the masked response to IE).
pub const INDEFINITE: X80 = X80 { se: 0xffff, m: 0xc000_0000_0000_0000 };
pub const ONE: X80 = X80 { se: 0x3fff, m: INT_BIT };
pub const ZERO: X80 = X80 { se: 0, m: 0 };

impl X80 {
    pub const fn new(se: u16, m: u64) -> X80 {
        X80 { se, m }
    }
    #[inline]
    pub fn sign(self) -> bool {
        self.se & 0x8000 != 0
    }
    #[inline]
    pub fn exp(self) -> u16 {
        self.se & 0x7fff
    }
    #[inline]
    pub fn is_nan(self) -> bool {
        self.exp() == 0x7fff && self.m & INT_BIT != 0 && self.m << 1 != 0
    }
    #[inline]
    pub fn is_snan(self) -> bool {
        self.is_nan() && self.m & QUIET_BIT == 0
    }
    #[inline]
    pub fn is_inf(self) -> bool {
        self.exp() == 0x7fff && self.m == INT_BIT
    }
    #[inline]
    pub fn is_zero(self) -> bool {
        self.exp() == 0 && self.m == 0
    }
    /// Denormal or pseudo-denormal.
    #[inline]
    pub fn is_denormal(self) -> bool {
        self.exp() == 0 && self.m != 0
    }
    /// Unnormal, pseudo-NaN or pseudo-infinity: formats the 387 and later reject.
    #[inline]
    pub fn is_unsupported(self) -> bool {
        self.exp() != 0 && self.m & INT_BIT == 0
    }
    /// A finite, nonzero, supported value.
    #[inline]
    pub fn is_finite_nonzero(self) -> bool {
        !self.is_zero() && self.exp() != 0x7fff && !self.is_unsupported()
    }
    #[inline]
    pub fn negate(self) -> X80 {
        X80 { se: self.se ^ 0x8000, m: self.m }
    }
    #[inline]
    pub fn abs(self) -> X80 {
        X80 { se: self.se & 0x7fff, m: self.m }
    }
    #[inline]
    pub fn with_sign(self, sign: bool) -> X80 {
        X80 { se: (self.se & 0x7fff) | if sign { 0x8000 } else { 0 }, m: self.m }
    }
    #[inline]
    pub fn quiet(self) -> X80 {
        X80 { se: self.se, m: self.m | QUIET_BIT }
    }
    pub fn zero(sign: bool) -> X80 {
        ZERO.with_sign(sign)
    }
    pub fn inf(sign: bool) -> X80 {
        X80 { se: 0x7fff, m: INT_BIT }.with_sign(sign)
    }
}

/// Rounding environment and accumulated status of one operation.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub rc: Rc,
    /// Significand precision of results: 24, 53 or 64 bits.
    pub prec: u32,
    /// Deliver overflowed results bias-adjusted (OE unmasked, register destination).
    pub wrap_oe: bool,
    /// Deliver underflowed results bias-adjusted (UE unmasked, register destination).
    pub wrap_ue: bool,
    /// Exception flags raised (IE..PE).
    pub flags: u16,
    /// The last rounding increased the magnitude of the result (x87 C1).
    pub round_up: bool,
}

impl Ctx {
    pub fn new(rc: Rc, prec: u32) -> Ctx {
        Ctx { rc, prec, wrap_oe: false, wrap_ue: false, flags: 0, round_up: false }
    }

    /// The environment an x87 control word sets. `use_pc` selects whether
    /// FCW.PC applies (only to FADD/FSUB/FMUL/FDIV/FSQRT and their forms);
    /// otherwise results have the full 64-bit precision.
    pub fn from_fcw(fcw: u16, use_pc: bool) -> Ctx {
        let prec = if use_pc {
            match (fcw >> 8) & 3 {
                0 => 24,
                2 => 53,
                // 01 is reserved; it behaves as extended precision here.
                _ => 64,
            }
        } else {
            64
        };
        let mut c = Ctx::new(Rc::from_bits(fcw >> 10), prec);
        c.wrap_oe = fcw & OE == 0;
        c.wrap_ue = fcw & UE == 0;
        c
    }

    #[inline]
    fn increment(&self, sign: bool, lsb_set: bool, rest: u128, half: u128) -> bool {
        if rest == 0 {
            return false;
        }
        match self.rc {
            Rc::Nearest => rest > half || (rest == half && lsb_set),
            Rc::Zero => false,
            Rc::Down => sign,
            Rc::Up => !sign,
        }
    }

    fn inexact(&mut self, up: bool) {
        self.flags |= PE;
        self.round_up = up;
    }
}

/// Exponent range of a destination format.
#[derive(Debug, Clone, Copy)]
pub struct Fmt {
    pub bias: i32,
    pub emax: i32,
    /// Bias adjustment for unmasked overflow/underflow responses.
    pub adjust: i32,
}

pub const EXT: Fmt = Fmt { bias: BIAS, emax: 0x7ffe, adjust: 24576 };
pub const DBL: Fmt = Fmt { bias: 1023, emax: 2046, adjust: 1536 };
pub const SGL: Fmt = Fmt { bias: 127, emax: 254, adjust: 192 };

/// A rounded result: biased exponent in its format (0 for zero and
/// denormals, `emax + 1` for infinity) and the significand with the integer
/// bit at bit 63.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounded {
    pub sign: bool,
    pub exp: i32,
    pub sig: u64,
}

impl Rounded {
    pub fn x80(self) -> X80 {
        X80 { se: (u16::from(self.sign) << 15) | self.exp as u16, m: self.sig }
    }
    pub fn f64(self) -> u64 {
        (u64::from(self.sign) << 63) | ((self.exp as u64) << 52) | ((self.sig >> 11) & ((1 << 52) - 1))
    }
    pub fn f32(self) -> u32 {
        (u32::from(self.sign) << 31) | ((self.exp as u32) << 23) | ((self.sig >> 40) as u32 & 0x7f_ffff)
    }
}

/// Shift right, OR-ing every bit shifted out into bit 0.
#[inline]
pub fn shr_jam(m: u128, n: u32) -> u128 {
    if n == 0 {
        m
    } else if n >= 128 {
        u128::from(m != 0)
    } else {
        (m >> n) | u128::from(m & ((1u128 << n) - 1) != 0)
    }
}

/// Round `m * 2^(e - 127)` (m normalized: bit 127 set, or zero) to `prec`
/// significand bits in format `fmt`, raising OE, UE and PE. `wrap` allows the
/// bias-adjusted unmasked responses (register destinations only).
pub fn round_pack(sign: bool, e: i32, m: u128, prec: u32, fmt: Fmt, wrap: bool, ctx: &mut Ctx) -> Rounded {
    if m == 0 {
        return Rounded { sign, exp: 0, sig: 0 };
    }
    debug_assert!(m >> 127 == 1, "round_pack needs a normalized significand");
    let shift = 128 - prec;
    let lsb = 1u128 << shift;
    let mask = lsb - 1;
    let half = lsb >> 1;
    let e0 = e + fmt.bias;
    // Round with an unbounded exponent first: that decides overflow and tininess.
    let rest = m & mask;
    let inc = ctx.increment(sign, m & lsb != 0, rest, half);
    let mut mr = m & !mask;
    let mut be = e0;
    if inc {
        let (v, carry) = mr.overflowing_add(lsb);
        if carry {
            mr = 1 << 127;
            be += 1;
        } else {
            mr = v;
        }
    }
    if be > fmt.emax {
        if wrap && ctx.wrap_oe {
            ctx.flags |= OE;
            be -= fmt.adjust;
            if be > fmt.emax {
                // Out of range even bias-adjusted: the CPU delivers an
                // infinity, reported as rounded up (PE, C1) in every mode.
                ctx.inexact(true);
                return Rounded { sign, exp: fmt.emax + 1, sig: INT_BIT };
            }
            if rest != 0 {
                ctx.inexact(inc);
            }
            return Rounded { sign, exp: be, sig: (mr >> 64) as u64 };
        }
        ctx.flags |= OE;
        let to_inf = match ctx.rc {
            Rc::Nearest => true,
            Rc::Zero => false,
            Rc::Down => sign,
            Rc::Up => !sign,
        };
        ctx.inexact(to_inf);
        return if to_inf {
            Rounded { sign, exp: fmt.emax + 1, sig: INT_BIT }
        } else {
            Rounded { sign, exp: fmt.emax, sig: !((1u64 << (64 - prec)) - 1) }
        };
    }
    if be >= 1 {
        if rest != 0 {
            ctx.inexact(inc);
        }
        return Rounded { sign, exp: be, sig: (mr >> 64) as u64 };
    }
    // Tiny after rounding.
    if wrap && ctx.wrap_ue {
        let adj = be + fmt.adjust;
        ctx.flags |= UE;
        if adj >= 1 {
            if rest != 0 {
                ctx.inexact(inc);
            }
            return Rounded { sign, exp: adj, sig: (mr >> 64) as u64 };
        }
        // Still tiny after the adjustment: the CPU delivers a signed zero,
        // inexact and not rounded up, in every mode.
        ctx.inexact(false);
        return Rounded { sign, exp: 0, sig: 0 };
    }
    let md = shr_jam(m, (1 - e0) as u32);
    let rest = md & mask;
    let inc = ctx.increment(sign, md & lsb != 0, rest, half);
    let mut mr = md & !mask;
    if inc {
        mr += lsb;
    }
    let exp = i32::from(mr >> 127 != 0);
    if rest != 0 {
        ctx.flags |= UE;
        ctx.inexact(inc);
    } else if ctx.wrap_ue {
        // Unmasked, underflow is signalled on tininess alone, also for a
        // memory destination (SDM Vol. 1 §4.9.1.5).
        ctx.flags |= UE;
    }
    Rounded { sign, exp, sig: (mr >> 64) as u64 }
}

/// Normalize `m` (any nonzero value) and round to an 80-bit register result.
#[inline]
fn norm_round(sign: bool, e: i32, m: u128, ctx: &mut Ctx) -> X80 {
    if m == 0 {
        return X80::zero(sign);
    }
    let lz = m.leading_zeros();
    round_pack(sign, e - lz as i32, m << lz, ctx.prec, EXT, true, ctx).x80()
}

/// Round `m * 2^(e - 127)` to a register value at full 64-bit precision.
pub fn round_x80(sign: bool, e: i32, m: u128, ctx: &mut Ctx) -> X80 {
    if m == 0 {
        return X80::zero(sign);
    }
    let lz = m.leading_zeros();
    round_pack(sign, e - lz as i32, m << lz, 64, EXT, true, ctx).x80()
}

/// A finite nonzero value, normalized: `m * 2^(e - 63)` with bit 63 of `m` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub sign: bool,
    pub e: i32,
    pub m: u64,
}

/// Unpack a finite nonzero supported value (normal, denormal or pseudo-denormal).
pub fn unpack(a: X80) -> Unpacked {
    let exp = i32::from(a.exp());
    if exp == 0 {
        let lz = a.m.leading_zeros();
        Unpacked { sign: a.sign(), e: 1 - BIAS - lz as i32, m: a.m << lz }
    } else {
        Unpacked { sign: a.sign(), e: exp - BIAS, m: a.m }
    }
}

/// NaN propagation between two NaN-or-not operands (SDM Table 4-7), x87 rules.
pub fn propagate_nan(a: X80, b: X80) -> X80 {
    match (a.is_nan(), b.is_nan()) {
        (true, false) => a.quiet(),
        (false, true) => b.quiet(),
        _ => {
            let (sa, sb) = (a.is_snan(), b.is_snan());
            if sa != sb {
                // An SNaN and a QNaN: the QNaN.
                return if sa { b } else { a };
            }
            let pick = if a.m != b.m {
                if a.m > b.m {
                    a
                } else {
                    b
                }
            } else if a.se <= b.se {
                a
            } else {
                b
            };
            pick.quiet()
        }
    }
}

/// Operand screening shared by the two-operand operations: unsupported
/// formats and NaNs decide the result (raising IE where the SDM says);
/// denormal operands raise DE. Returns the decided result, if any.
fn screen2(a: X80, b: X80, ctx: &mut Ctx) -> Option<X80> {
    if a.is_unsupported() || b.is_unsupported() {
        ctx.flags |= IE;
        return Some(INDEFINITE);
    }
    if a.is_nan() || b.is_nan() {
        if a.is_snan() || b.is_snan() {
            ctx.flags |= IE;
        }
        return Some(propagate_nan(a, b));
    }
    if a.is_denormal() || b.is_denormal() {
        ctx.flags |= DE;
    }
    None
}

/// The one-operand version of [`screen2`].
fn screen1(a: X80, ctx: &mut Ctx) -> Option<X80> {
    if a.is_unsupported() {
        ctx.flags |= IE;
        return Some(INDEFINITE);
    }
    if a.is_nan() {
        if a.is_snan() {
            ctx.flags |= IE;
        }
        return Some(a.quiet());
    }
    if a.is_denormal() {
        ctx.flags |= DE;
    }
    None
}

/// Unpacked operand screening for callers outside this module (transcendentals).
pub fn screen_unary(a: X80, ctx: &mut Ctx) -> Option<X80> {
    screen1(a, ctx)
}

/// Two-operand screening for callers outside this module.
pub fn screen_binary(a: X80, b: X80, ctx: &mut Ctx) -> Option<X80> {
    screen2(a, b, ctx)
}

// ---- the basic operations ---------------------------------------------------

pub fn add(a: X80, b: X80, ctx: &mut Ctx) -> X80 {
    addsub(a, b, false, ctx)
}

pub fn sub(a: X80, b: X80, ctx: &mut Ctx) -> X80 {
    addsub(a, b, true, ctx)
}

fn addsub(a: X80, b: X80, negate_b: bool, ctx: &mut Ctx) -> X80 {
    if let Some(r) = screen2(a, b, ctx) {
        return r;
    }
    let b = if negate_b { b.negate() } else { b };
    match (a.is_inf(), b.is_inf()) {
        (true, true) => {
            if a.sign() != b.sign() {
                ctx.flags |= IE;
                return INDEFINITE;
            }
            return a;
        }
        (true, false) => return a,
        (false, true) => return b,
        _ => {}
    }
    let (az, bz) = (a.is_zero(), b.is_zero());
    if az && bz {
        let sign = if a.sign() == b.sign() { a.sign() } else { ctx.rc == Rc::Down };
        return X80::zero(sign);
    }
    if az || bz {
        // x + 0 = x, still rounded to the precision control.
        let u = unpack(if az { b } else { a });
        return norm_round(u.sign, u.e, u128::from(u.m) << 64, ctx);
    }
    let (ua, ub) = (unpack(a), unpack(b));
    let (x, y) = if (ua.e, ua.m) >= (ub.e, ub.m) { (ua, ub) } else { (ub, ua) };
    let mx = u128::from(x.m) << 63;
    let my = shr_jam(u128::from(y.m) << 63, (x.e - y.e) as u32);
    if x.sign == y.sign {
        norm_round(x.sign, x.e + 1, mx + my, ctx)
    } else {
        let d = mx - my;
        if d == 0 {
            return X80::zero(ctx.rc == Rc::Down);
        }
        norm_round(x.sign, x.e + 1, d, ctx)
    }
}

pub fn mul(a: X80, b: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = screen2(a, b, ctx) {
        return r;
    }
    let sign = a.sign() != b.sign();
    if a.is_inf() || b.is_inf() {
        if a.is_zero() || b.is_zero() {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        return X80::inf(sign);
    }
    if a.is_zero() || b.is_zero() {
        return X80::zero(sign);
    }
    let (ua, ub) = (unpack(a), unpack(b));
    let p = u128::from(ua.m) * u128::from(ub.m);
    norm_round(sign, ua.e + ub.e + 1, p, ctx)
}

pub fn div(a: X80, b: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = screen2(a, b, ctx) {
        return r;
    }
    let sign = a.sign() != b.sign();
    match (a.is_inf(), b.is_inf()) {
        (true, true) => {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        (true, false) => return X80::inf(sign),
        (false, true) => return X80::zero(sign),
        _ => {}
    }
    if b.is_zero() {
        if a.is_zero() {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        ctx.flags |= ZE;
        return X80::inf(sign);
    }
    if a.is_zero() {
        return X80::zero(sign);
    }
    let (ua, ub) = (unpack(a), unpack(b));
    let (q, sticky) = div_sig(ua.m, ub.m);
    norm_round(sign, ua.e - ub.e, q | u128::from(sticky), ctx)
}

/// `floor(a * 2^127 / b)` for normalized 64-bit significands, and whether a
/// remainder was left.
fn div_sig(a: u64, b: u64) -> (u128, bool) {
    let (b128, n) = (u128::from(b), u128::from(a) << 63);
    let (q1, r1) = (n / b128, n % b128);
    let n2 = r1 << 64;
    let (q2, r2) = (n2 / b128, n2 % b128);
    ((q1 << 64) | q2, r2 != 0)
}

pub fn sqrt(a: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = screen1(a, ctx) {
        return r;
    }
    if a.is_zero() {
        return a;
    }
    if a.sign() {
        // A denormal negative operand reports IE only.
        ctx.flags = (ctx.flags & !DE) | IE;
        return INDEFINITE;
    }
    if a.is_inf() {
        return a;
    }
    let u = unpack(a);
    // value = m * 2^(e - 63); make the power of two even.
    let s = if (u.e - 63 - 64) % 2 == 0 { 64 } else { 63 };
    let t = u.e - 63 - s;
    let n = u128::from(u.m) << s;
    let r = n.isqrt();
    let rr = r * r;
    let mut m = r << 64;
    if n > rr + r {
        m |= 1 << 63;
    }
    if n != rr {
        m |= 1;
    }
    norm_round(false, 63 + t / 2, m, ctx)
}

/// FPREM (`nearest = false`, truncating quotient) and FPREM1 (IEEE remainder).
/// Returns the (partial) remainder, the low three bits of the quotient, and
/// whether the reduction is complete (x87 C2 = !complete).
pub fn rem(a: X80, b: X80, nearest: bool, ctx: &mut Ctx) -> (X80, u64, bool) {
    if let Some(r) = screen2(a, b, ctx) {
        return (r, 0, true);
    }
    if a.is_inf() || b.is_zero() {
        ctx.flags |= IE;
        return (INDEFINITE, 0, true);
    }
    if a.is_zero() {
        return (a, 0, true);
    }
    // A remainder equal to `a` is delivered normalized like any other: a
    // pseudo-denormal gets exponent 1, a denormal with the underflow
    // exception unmasked is bias-adjusted (UE).
    let exact = |u: Unpacked, ctx: &mut Ctx| round_x80(u.sign, u.e + 64, u128::from(u.m), ctx);
    if b.is_inf() {
        return (exact(unpack(a), ctx), 0, true);
    }
    let (ua, ub) = (unpack(a), unpack(b));
    let d = ua.e - ub.e;
    let bm = u128::from(ub.m);
    if d < 0 {
        if nearest && d == -1 && ua.m > ub.m {
            // |a| > |b| / 2: the quotient rounds to 1.
            let r = (bm << 1) - u128::from(ua.m);
            return (round_x80(!ua.sign, ua.e + 64, r, ctx), 1, true);
        }
        return (exact(ua, ctx), 0, true);
    }
    if d < 64 {
        let n = u128::from(ua.m) << d;
        let (mut q, mut r) = (n / bm, n % bm);
        let mut sign = ua.sign;
        if nearest && (2 * r > bm || (2 * r == bm && q & 1 == 1)) {
            r = bm - r;
            q += 1;
            sign = !sign;
        }
        if r == 0 {
            return (X80::zero(ua.sign), q as u64 & 7, true);
        }
        return (round_x80(sign, ub.e + 64, r, ctx), q as u64 & 7, true);
    }
    // Partial reduction: bring the exponent difference down by D - N, with N
    // between 32 and 63.
    let nbits = (d & 31) | 32;
    let n = u128::from(ua.m) << nbits;
    let (q, r) = (n / bm, n % bm);
    let e = ub.e + (d - nbits);
    if r == 0 {
        return (X80::zero(ua.sign), q as u64 & 7, false);
    }
    (round_x80(ua.sign, e + 64, r, ctx), q as u64 & 7, false)
}

/// FRNDINT: round to an integral value in the current rounding mode.
pub fn round_int(a: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = screen1(a, ctx) {
        return r;
    }
    if a.is_zero() || a.is_inf() {
        return a;
    }
    let u = unpack(a);
    if u.e >= 63 {
        return a;
    }
    if u.e < 0 {
        // |a| < 1.
        let half_or_more = u.e == -1;
        let up = match ctx.rc {
            Rc::Nearest => half_or_more && u.m > INT_BIT,
            Rc::Zero => false,
            Rc::Down => u.sign,
            Rc::Up => !u.sign,
        };
        ctx.inexact(up);
        return if up { ONE.with_sign(u.sign) } else { X80::zero(u.sign) };
    }
    let shift = (63 - u.e) as u32;
    let frac = u.m & ((1u64 << shift) - 1);
    let mut ip = u.m >> shift;
    if frac == 0 {
        return X80 { se: a.se, m: u.m };
    }
    let inc = ctx.increment(u.sign, ip & 1 != 0, u128::from(frac), 1u128 << (shift - 1));
    ctx.inexact(inc);
    ip += u64::from(inc);
    let mut e = u.e;
    if ip >> (64 - shift) != 0 {
        ip >>= 1;
        e += 1;
    }
    X80 { se: (u16::from(u.sign) << 15) | (e + BIAS) as u16, m: ip << shift }
}

/// FSCALE: `a * 2^trunc(b)`.
pub fn scale(a: X80, b: X80, ctx: &mut Ctx) -> X80 {
    if let Some(r) = screen2(a, b, ctx) {
        return r;
    }
    if b.is_inf() {
        if !b.sign() {
            if a.is_zero() {
                ctx.flags |= IE;
                return INDEFINITE;
            }
            return X80::inf(a.sign());
        }
        if a.is_inf() {
            ctx.flags |= IE;
            return INDEFINITE;
        }
        return X80::zero(a.sign());
    }
    if a.is_inf() || a.is_zero() {
        return a;
    }
    let n: i32 = if b.is_zero() {
        0
    } else {
        let ub = unpack(b);
        let mag = if ub.e < 0 {
            0
        } else if ub.e > 20 {
            1 << 20
        } else {
            (ub.m >> (63 - ub.e)) as i32
        };
        if ub.sign {
            -mag
        } else {
            mag
        }
    };
    let u = unpack(a);
    round_pack(u.sign, u.e + n, u128::from(u.m) << 64, 64, EXT, true, ctx).x80()
}

/// FXTRACT: (exponent, significand).
pub fn extract(a: X80, ctx: &mut Ctx) -> (X80, X80) {
    if let Some(r) = screen1(a, ctx) {
        return (r, r);
    }
    if a.is_zero() {
        ctx.flags |= ZE;
        return (X80::inf(true), a);
    }
    if a.is_inf() {
        return (X80::inf(false), a);
    }
    let u = unpack(a);
    let e = from_i64(i64::from(u.e));
    (e, X80 { se: (u16::from(u.sign) << 15) | BIAS as u16, m: u.m })
}

/// Compare, with IE on any NaN (`quiet = false`, FCOM) or only on SNaNs
/// (`quiet = true`, FUCOM). `None` is unordered.
pub fn compare(a: X80, b: X80, quiet: bool, ctx: &mut Ctx) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering::*;
    if a.is_unsupported() || b.is_unsupported() {
        ctx.flags |= IE;
        return None;
    }
    if a.is_nan() || b.is_nan() {
        if !quiet || a.is_snan() || b.is_snan() {
            ctx.flags |= IE;
        }
        return None;
    }
    if a.is_denormal() || b.is_denormal() {
        ctx.flags |= DE;
    }
    let key = |x: X80| -> (i32, i32, u64) {
        // Sign-magnitude ordering key for a non-NaN value.
        if x.is_zero() {
            (0, 0, 0)
        } else if x.is_inf() {
            (1, i32::MAX, 0)
        } else {
            let u = unpack(x);
            (1, u.e, u.m)
        }
    };
    let (ka, kb) = (key(a), key(b));
    let (sa, sb) = (a.sign() && ka.0 != 0, b.sign() && kb.0 != 0);
    Some(match (sa, sb) {
        (false, true) => Greater,
        (true, false) => Less,
        (false, false) => ka.cmp(&kb),
        (true, true) => kb.cmp(&ka),
    })
}

// ---- conversions ------------------------------------------------------------

/// An integer, exactly.
pub fn from_i64(v: i64) -> X80 {
    if v == 0 {
        return ZERO;
    }
    let mag = v.unsigned_abs();
    let lz = mag.leading_zeros();
    X80 { se: (u16::from(v < 0) << 15) | (BIAS + 63 - lz as i32) as u16, m: mag << lz }
}

/// Widen a binary32 value (exact). A denormal raises DE; an SNaN stays
/// signaling (the caller decides whether that raises IE).
pub fn from_f32(bits: u32, ctx: &mut Ctx) -> X80 {
    let sign = u16::from(bits >> 31 != 0) << 15;
    let exp = (bits >> 23) & 0xff;
    let frac = u64::from(bits & 0x7f_ffff);
    match exp {
        0xff => X80 { se: sign | 0x7fff, m: INT_BIT | (frac << 40) },
        0 if frac == 0 => X80 { se: sign, m: 0 },
        0 => {
            ctx.flags |= DE;
            let lz = frac.leading_zeros();
            // value = frac * 2^-149
            let e = 63 - lz as i32 - 149;
            X80 { se: sign | (e + BIAS) as u16, m: frac << lz }
        }
        _ => X80 { se: sign | (exp as i32 - 127 + BIAS) as u16, m: INT_BIT | (frac << 40) },
    }
}

/// Widen a binary64 value (exact), like [`from_f32`].
pub fn from_f64(bits: u64, ctx: &mut Ctx) -> X80 {
    let sign = u16::from(bits >> 63 != 0) << 15;
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1 << 52) - 1);
    match exp {
        0x7ff => X80 { se: sign | 0x7fff, m: INT_BIT | (frac << 11) },
        0 if frac == 0 => X80 { se: sign, m: 0 },
        0 => {
            ctx.flags |= DE;
            let lz = frac.leading_zeros();
            let e = 63 - lz as i32 - 1074;
            X80 { se: sign | (e + BIAS) as u16, m: frac << lz }
        }
        _ => X80 { se: sign | (exp - 1023 + BIAS) as u16, m: INT_BIT | (frac << 11) },
    }
}

fn narrow(a: X80, prec: u32, fmt: Fmt, ctx: &mut Ctx) -> Result<Rounded, X80> {
    if let Some(r) = screen1(a, ctx) {
        return Err(r);
    }
    if a.is_inf() {
        return Ok(Rounded { sign: a.sign(), exp: fmt.emax + 1, sig: INT_BIT });
    }
    if a.is_zero() {
        return Ok(Rounded { sign: a.sign(), exp: 0, sig: 0 });
    }
    let u = unpack(a);
    Ok(round_pack(u.sign, u.e, u128::from(u.m) << 64, prec, fmt, false, ctx))
}

/// Round to binary32 (FST m32fp).
pub fn to_f32(a: X80, ctx: &mut Ctx) -> u32 {
    match narrow(a, 24, SGL, ctx) {
        Ok(r) => r.f32(),
        // NaN: keep the top significand bits.
        Err(n) => (u32::from(n.sign()) << 31) | 0x7f80_0000 | ((n.m >> 40) as u32 & 0x7f_ffff),
    }
}

/// Round to binary64 (FST m64fp).
pub fn to_f64(a: X80, ctx: &mut Ctx) -> u64 {
    match narrow(a, 53, DBL, ctx) {
        Ok(r) => r.f64(),
        Err(n) => (u64::from(n.sign()) << 63) | 0x7ff0_0000_0000_0000 | ((n.m >> 11) & ((1 << 52) - 1)),
    }
}

/// Round to an integer (`trunc` forces chopping, for FISTTP), as sign and
/// magnitude. `None` means invalid (NaN, infinity, unsupported, or a
/// magnitude of 2^64 or more); IE is then raised and PE is not.
pub fn to_int(a: X80, trunc: bool, ctx: &mut Ctx) -> Option<(bool, u64)> {
    if a.is_unsupported() || a.is_nan() || a.is_inf() {
        ctx.flags |= IE;
        return None;
    }
    if a.is_zero() {
        return Some((a.sign(), 0));
    }
    let u = unpack(a);
    let rc = if trunc { Rc::Zero } else { ctx.rc };
    let tmp = Ctx { rc, ..*ctx };
    if u.e >= 64 {
        ctx.flags |= IE;
        return None;
    }
    if u.e == 63 {
        return Some((u.sign, u.m));
    }
    let (ip, frac, half, lsb) = if u.e < 0 {
        // |a| < 1: everything is fraction; compare against one half.
        let half = u128::from(INT_BIT) << 64;
        let frac = shr_jam(u128::from(u.m) << 64, (-u.e - 1) as u32);
        (0u64, frac, half, false)
    } else {
        let shift = (63 - u.e) as u32;
        let ip = u.m >> shift;
        let frac = u128::from(u.m & ((1u64 << shift) - 1));
        (ip, frac, 1u128 << (shift - 1), ip & 1 != 0)
    };
    let inc = tmp.increment(u.sign, lsb, frac, half);
    let (v, over) = ip.overflowing_add(u64::from(inc));
    if over {
        ctx.flags |= IE;
        return None;
    }
    if frac != 0 {
        ctx.inexact(inc);
    }
    Some((u.sign, v))
}

/// Round a 128-bit wide value `m * 2^(e - 127)` (m normalized) to a register
/// value in the current rounding mode at 64-bit precision, without raising
/// PE (the FLDPI-style constants).
pub fn constant(sign: bool, e: i32, m: u128, rc: Rc) -> X80 {
    let mut c = Ctx::new(rc, 64);
    round_pack(sign, e, m, 64, EXT, false, &mut c).x80()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(se: u16, m: u64) -> X80 {
        X80::new(se, m)
    }

    const THREE: X80 = X80::new(0x4000, 0xc000_0000_0000_0000);

    #[test]
    fn one_third_in_each_rounding_mode_and_precision() {
        let third = |rc, prec| {
            let mut c = Ctx::new(rc, prec);
            let r = div(ONE, THREE, &mut c);
            (r, c.flags, c.round_up)
        };
        assert_eq!(third(Rc::Nearest, 64), (x(0x3ffd, 0xaaaa_aaaa_aaaa_aaab), PE, true));
        assert_eq!(third(Rc::Down, 64), (x(0x3ffd, 0xaaaa_aaaa_aaaa_aaaa), PE, false));
        assert_eq!(third(Rc::Up, 64), (x(0x3ffd, 0xaaaa_aaaa_aaaa_aaab), PE, true));
        assert_eq!(third(Rc::Zero, 64), (x(0x3ffd, 0xaaaa_aaaa_aaaa_aaaa), PE, false));
        // Precision control: 24 and 53 bits, still with the extended exponent.
        assert_eq!(third(Rc::Nearest, 24).0, x(0x3ffd, 0xaaaa_ab00_0000_0000));
        assert_eq!(third(Rc::Zero, 24).0, x(0x3ffd, 0xaaaa_aa00_0000_0000));
        assert_eq!(third(Rc::Nearest, 53).0, x(0x3ffd, 0xaaaa_aaaa_aaaa_a800));
        assert_eq!(third(Rc::Up, 53).0, x(0x3ffd, 0xaaaa_aaaa_aaaa_b000));
        // -1/3 rounds the other way under directed rounding.
        let mut c = Ctx::new(Rc::Down, 64);
        assert_eq!(div(ONE.negate(), THREE, &mut c), x(0xbffd, 0xaaaa_aaaa_aaaa_aaab));
        assert!(c.round_up);
    }

    #[test]
    fn add_sub_exact_and_signed_zero() {
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(add(ONE, ONE, &mut c), x(0x4000, INT_BIT));
        assert_eq!(sub(ONE, ONE, &mut c), ZERO);
        assert_eq!(c.flags, 0);
        let mut c = Ctx::new(Rc::Down, 64);
        assert_eq!(sub(ONE, ONE, &mut c), ZERO.negate());
        assert_eq!(add(ZERO, ZERO.negate(), &mut c), ZERO.negate());
        // 1 + 2^-64 rounds to 1 (tie to even), inexact.
        let mut c = Ctx::new(Rc::Nearest, 64);
        let tiny = x(0x3fff - 64, INT_BIT);
        assert_eq!(add(ONE, tiny, &mut c), ONE);
        assert_eq!(c.flags, PE);
        let mut c = Ctx::new(Rc::Up, 64);
        assert_eq!(add(ONE, tiny, &mut c), x(0x3fff, INT_BIT | 1));
        // 1 - 2^-70 in round-to-zero: just below 1.
        let mut c = Ctx::new(Rc::Zero, 64);
        assert_eq!(sub(ONE, x(0x3fff - 70, INT_BIT), &mut c), x(0x3ffe, u64::MAX));
        // inf - inf is invalid.
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(sub(X80::inf(false), X80::inf(false), &mut c), INDEFINITE);
        assert_eq!(c.flags, IE);
    }

    #[test]
    fn nan_rules() {
        let q1 = x(0x7fff, 0xc000_0000_0000_0001);
        let q2 = x(0xffff, 0xc000_0000_0000_0002);
        let s3 = x(0x7fff, 0x8000_0000_0000_0003);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(add(q1, q2, &mut c), q2);
        assert_eq!(c.flags, 0);
        assert_eq!(add(q1, s3, &mut c), q1);
        assert_eq!(c.flags, IE);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(mul(s3, ONE, &mut c), s3.quiet());
        assert_eq!(c.flags, IE);
        // Unnormals are unsupported.
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(add(x(0x3fff, 0x4000_0000_0000_0000), ONE, &mut c), INDEFINITE);
        assert_eq!(c.flags, IE);
    }

    #[test]
    fn divide_by_zero_and_sqrt() {
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(div(ONE, ZERO.negate(), &mut c), X80::inf(true));
        assert_eq!(c.flags, ZE);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(sqrt(x(0x4001, INT_BIT), &mut c), x(0x4000, INT_BIT));
        assert_eq!(c.flags, 0);
        // sqrt(2) = 1.6A09E667F3BCC908B2F... : nearest rounds down, up rounds up.
        assert_eq!(sqrt(x(0x4000, INT_BIT), &mut c), x(0x3fff, 0xb504_f333_f9de_6484));
        let mut c = Ctx::new(Rc::Up, 64);
        assert_eq!(sqrt(x(0x4000, INT_BIT), &mut c), x(0x3fff, 0xb504_f333_f9de_6485));
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(sqrt(ONE.negate(), &mut c), INDEFINITE);
        assert_eq!(c.flags, IE);
        assert_eq!(sqrt(ZERO.negate(), &mut c), ZERO.negate());
    }

    #[test]
    fn overflow_underflow_denormals() {
        let max = x(0x7ffe, u64::MAX);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(mul(max, x(0x4000, INT_BIT), &mut c), X80::inf(false));
        assert_eq!(c.flags, OE | PE);
        let mut c = Ctx::new(Rc::Zero, 64);
        assert_eq!(mul(max, x(0x4000, INT_BIT), &mut c), max);
        // Unmasked overflow: bias-adjusted result.
        let mut c = Ctx::new(Rc::Nearest, 64);
        c.wrap_oe = true;
        assert_eq!(mul(max, x(0x4000, INT_BIT), &mut c), x(0x7fff - 24576, u64::MAX));
        assert_eq!(c.flags, OE);
        // Smallest normal / 2: exact denormal, masked UE not raised.
        let min = x(0x0001, INT_BIT);
        let half = x(0x3ffe, INT_BIT);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(mul(min, half, &mut c), x(0, 0x4000_0000_0000_0000));
        assert_eq!(c.flags, 0);
        // Unmasked: UE even when exact, result bias-adjusted.
        let mut c = Ctx::new(Rc::Nearest, 64);
        c.wrap_ue = true;
        assert_eq!(mul(min, half, &mut c), x(24576, INT_BIT));
        assert_eq!(c.flags, UE);
        // Inexact denormal: UE and PE.
        let mut c = Ctx::new(Rc::Nearest, 64);
        let r = mul(x(0x0001, INT_BIT | 1), x(0x3ffe, INT_BIT), &mut c);
        assert_eq!(r, x(0, 0x4000_0000_0000_0000));
        assert_eq!(c.flags, UE | PE);
        // A denormal operand raises DE.
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(add(x(0, 1), x(0, 1), &mut c), x(0, 2));
        assert_eq!(c.flags, DE);
        // A pseudo-denormal is a denormal operand with the value of exponent 1.
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(add(x(0, INT_BIT), ZERO, &mut c), x(1, INT_BIT));
        assert_eq!(c.flags, DE);
    }

    #[test]
    fn conversions() {
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(from_f32(0x3f80_0000, &mut c), ONE);
        assert_eq!(from_f64(0xc000_0000_0000_0000, &mut c), x(0xc000, INT_BIT));
        assert_eq!(c.flags, 0);
        assert_eq!(from_f32(1, &mut c), x(0x3fff - 149, INT_BIT));
        assert_eq!(c.flags, DE);
        assert_eq!(from_i64(i64::MIN), x(0xc03e, INT_BIT));
        assert_eq!(from_i64(-3), THREE.negate());
        let third = x(0x3ffd, 0xaaaa_aaaa_aaaa_aaab);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(to_f64(third, &mut c), 0x3fd5_5555_5555_5555);
        assert_eq!(c.flags, PE);
        assert_eq!(to_f32(third, &mut c), 0x3eaa_aaab);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(to_f32(x(0x7ffe, INT_BIT), &mut c), 0x7f80_0000);
        assert_eq!(c.flags, OE | PE);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(to_f64(x(0x3fff - 1074, INT_BIT), &mut c), 1);
        assert_eq!(c.flags, 0);
        assert_eq!(to_f64(x(0x3fff - 1075, INT_BIT), &mut c), 0);
        assert_eq!(c.flags, UE | PE);
        // 2.5 -> 2 (nearest even), 3 (up); -2.5 -> -3 (down).
        let two_half = x(0x4000, 0xa000_0000_0000_0000);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(to_int(two_half, false, &mut c), Some((false, 2)));
        let mut c = Ctx::new(Rc::Up, 64);
        assert_eq!(to_int(two_half, false, &mut c), Some((false, 3)));
        let mut c = Ctx::new(Rc::Down, 64);
        assert_eq!(to_int(two_half.negate(), false, &mut c), Some((true, 3)));
        assert_eq!(to_int(two_half.negate(), true, &mut c), Some((true, 2)));
        assert_eq!(to_int(x(0x3ffe, INT_BIT).negate(), false, &mut c), Some((true, 1)));
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(to_int(x(0x3ffe, INT_BIT), false, &mut c), Some((false, 0)));
        assert_eq!(to_int(x(0x3ffe, INT_BIT | 1), false, &mut c), Some((false, 1)));
        assert_eq!(to_int(X80::inf(false), false, &mut c), None);
    }

    #[test]
    fn remainder_and_rounding_to_integer() {
        // 7 rem 2: FPREM 1 (q = 3), FPREM1 -1 (q = 4).
        let seven = from_i64(7);
        let two = from_i64(2);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(rem(seven, two, false, &mut c), (ONE, 3, true));
        assert_eq!(rem(seven, two, true, &mut c), (ONE.negate(), 4, true));
        assert_eq!(c.flags, 0);
        // A huge exponent difference reduces partially.
        let big = x(0x3fff + 200, INT_BIT | 12345);
        let (_, _, complete) = rem(big, THREE, false, &mut c);
        assert!(!complete);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(round_int(x(0x4000, 0xa000_0000_0000_0000), &mut c), two);
        assert_eq!(c.flags, PE);
        let mut c = Ctx::new(Rc::Up, 64);
        assert_eq!(round_int(x(0x3ffd, INT_BIT), &mut c), ONE);
        let mut c = Ctx::new(Rc::Nearest, 64);
        assert_eq!(round_int(x(0x3fff, u64::MAX), &mut c), two);
    }
}

#[cfg(test)]
mod vectors {
    use super::*;

    type Case = (u8, u8, u32, u16, u64, u16, u64, u16, u64, u16, u8);

    /// Results checked against an exact evaluation (mpmath): (operation,
    /// RC, precision, a, b, result, flags, C1). Operations: 0 add, 1 sub,
    /// 2, 3, 7 mul, 4 to binary32 (in the result's low bits), 5 to binary64,
    /// 6 FRNDINT.
    #[rustfmt::skip]
    const CASES: &[Case] = &[
        (0, 3, 64, 0xc020, 0xde5c370b67b9bd31, 0x3fed, 0xe874190400000000, 0xc020, 0xde5c370b67b9a022, 0x20, 0),
        (0, 1, 64, 0x4015, 0x80c8600000000000, 0x3ff2, 0xaf9846526ac84a69, 0x4015, 0x80c8600015f308ca, 0x20, 0),
        (0, 0, 24, 0xc02f, 0xa9a6bd5e520c3a6b, 0xc023, 0xd572b5acac79e693, 0xc02f, 0xa9b4150000000000, 0x20, 1),
        (0, 0, 24, 0xbfb8, 0xdf156fc4c1444751, 0x3f82, 0xdf57037e49f3b205, 0xbfb8, 0xdf15700000000000, 0x20, 1),
        (1, 2, 64, 0xc031, 0xfd24668f7375a599, 0x401e, 0xf98c57747efa7fc9, 0xc031, 0xfd2485c0fe643578, 0x20, 0),
        (1, 0, 64, 0x402f, 0xd8640419c9a76dc2, 0xc00b, 0xd1df7c7c6d2652c0, 0x402f, 0xd8640419d6c5658a, 0x20, 1),
        (1, 1, 24, 0x3fc1, 0xc62dba1600000000, 0x3fae, 0xbb935f67982e8000, 0x3fc1, 0xc62da20000000000, 0x20, 0),
        (1, 1, 53, 0x3fdd, 0xb6d33b2800000000, 0xbfab, 0x9900cb92d318a2a4, 0x3fdd, 0xb6d33b2800002000, 0x20, 0),
        (2, 1, 24, 0x903e, 0xd4a087ed7766ed45, 0xffda, 0xc72e061c3fa6f6ba, 0x501a, 0xa56f030000000000, 0x20, 0),
        (2, 0, 53, 0x0f88, 0xbbf6e0f06b549de0, 0xe860, 0xbe8c000000000000, 0xb7ea, 0x8be805f573238000, 0x20, 1),
        (2, 0, 64, 0xbc7b, 0xe7a30d5ccef3f7de, 0xd00a, 0xd3e79c5be363c7d6, 0x4c87, 0xbfbcf59f0e2bff44, 0x20, 1),
        (2, 3, 53, 0xecae, 0xb23e7d7ea23c1f8a, 0x5f93, 0xe4e9833904bca6fb, 0xfffe, 0xfffffffffffff800, 0x28, 0),
        (3, 1, 53, 0x006c, 0xfaf13e57d4372b20, 0xbfff, 0xd01ee41e525823b4, 0x806d, 0xcc024a893f3ae800, 0x20, 1),
        (3, 1, 24, 0x8013, 0xb33076d68d15e5e1, 0xbfb1, 0x9ba620066227e400, 0x0000, 0x0000000000000000, 0x30, 0),
        (3, 2, 53, 0x805c, 0xce360456bf6911f6, 0x3ff4, 0x869be743f516fb00, 0x8051, 0xd8dbb68708610000, 0x20, 0),
        (3, 0, 53, 0x805e, 0xeb103cc991159ba6, 0xbfa6, 0xbb78bd0b19466880, 0x0006, 0xac23b998e93f7000, 0x20, 0),
        (4, 0, 53, 0x6d46, 0xde777ee03ea7a18d, 0x3fff, 0x8000000000000000, 0x0000, 0x000000007f800000, 0x28, 1),
        (4, 0, 24, 0xb305, 0xa5fa707fda6a37a6, 0x3fff, 0x8000000000000000, 0x0000, 0x0000000080000000, 0x30, 0),
        (4, 3, 64, 0x313b, 0xc3c6a97bfd8fc45d, 0x3fff, 0x8000000000000000, 0x0000, 0x0000000000000000, 0x30, 0),
        (4, 1, 24, 0xec35, 0xcbc21b1747262ab2, 0x3fff, 0x8000000000000000, 0x0000, 0x00000000ff800000, 0x28, 1),
        (5, 3, 24, 0xbdd4, 0xc822118257303b0f, 0x3fff, 0x8000000000000000, 0x0000, 0x9d490442304ae607, 0x20, 0),
        (5, 2, 24, 0xbc45, 0x86c68371057f3ae0, 0x3fff, 0x8000000000000000, 0x0000, 0x8450d8d06e20afe7, 0x20, 0),
        (5, 2, 53, 0xc1d6, 0x871d1c2028420000, 0x3fff, 0x8000000000000000, 0x0000, 0xdd60e3a384050840, 0x0, 0),
        (5, 3, 64, 0x3eaf, 0xbf5e76c78c85797b, 0x3fff, 0x8000000000000000, 0x0000, 0x2af7ebced8f190af, 0x20, 0),
        (6, 1, 24, 0xc01c, 0xc6d1263d94a237e1, 0x3fff, 0x8000000000000000, 0xc01c, 0xc6d1264000000000, 0x20, 1),
        (6, 2, 64, 0x401b, 0xbb7fd85cea3c9a35, 0x3fff, 0x8000000000000000, 0x401b, 0xbb7fd86000000000, 0x20, 1),
        (6, 3, 24, 0x402d, 0xaa7a851855beb163, 0x3fff, 0x8000000000000000, 0x402d, 0xaa7a851855be0000, 0x20, 0),
        (6, 0, 64, 0x4041, 0xd6c22a1b88ec69b8, 0x3fff, 0x8000000000000000, 0x4041, 0xd6c22a1b88ec69b8, 0x0, 0),
        (7, 2, 53, 0x7ffb, 0xfd06d447b4858389, 0x400e, 0xe962c38fc3cd4bbd, 0x7fff, 0x8000000000000000, 0x28, 1),
        (7, 3, 53, 0x7ff4, 0x9c100e4562bb014b, 0x4003, 0xe7ffa3ba63e1630b, 0x7ff9, 0x8d6e54aeacd83800, 0x20, 0),
        (7, 2, 64, 0x7ff7, 0xd478e0c000000000, 0x4007, 0xeecb15512aa4d487, 0x7fff, 0x8000000000000000, 0x28, 1),
        (7, 1, 53, 0xfffb, 0xcc710fd889e72dd0, 0x4000, 0x94e4d1b081e91a36, 0xfffc, 0xedd032a11ffc9000, 0x20, 1),
    ];

    #[test]
    fn correctly_rounded_vectors() {
        let modes = [Rc::Nearest, Rc::Down, Rc::Up, Rc::Zero];
        for &(kind, rc, prec, ase, am, bse, bm, rse, rm, flags, up) in CASES {
            let (a, b) = (X80::new(ase, am), X80::new(bse, bm));
            let mut c = Ctx::new(modes[usize::from(rc)], prec);
            let r = match kind {
                0 => add(a, b, &mut c),
                1 => sub(a, b, &mut c),
                2 | 3 | 7 => mul(a, b, &mut c),
                4 => X80::new(0, u64::from(to_f32(a, &mut c))),
                5 => X80::new(0, to_f64(a, &mut c)),
                _ => round_int(a, &mut c),
            };
            assert_eq!(
                (r, c.flags, u8::from(c.round_up)),
                (X80::new(rse, rm), flags, up),
                "op {kind} rc {rc} pc {prec} {a:?} {b:?}"
            );
        }
    }
}
