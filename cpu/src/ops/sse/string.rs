//! SSE4.2 string compares and CRC32 (SDM Vol. 2: §4.1 "Imm8 Control Byte
//! Operation for PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM", PCMPESTRI,
//! PCMPESTRM, PCMPISTRI, PCMPISTRM, CRC32).
//!
//! The imm8 control byte: bits 1:0 the element format (unsigned bytes,
//! unsigned words, signed bytes, signed words), bits 3:2 the aggregation
//! (equal any, ranges, equal each, equal ordered), bits 5:4 the polarity
//! (positive, negative, masked positive, masked negative), bit 6 the output
//! selection (least/most significant index; bit mask/element mask).
//!
//! Flags: CF = result nonzero, ZF = the second operand (xmm2/m128) has an
//! invalid element, SF = the first operand (xmm1) has one, OF = result bit 0,
//! AF = PF = 0.

use iced_x86::{Code, Instruction, Mnemonic, Register};

use super::{check, lane, src, sx, xmm, Uses};
use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::ops::{read_op, reg_read, reg_write, Handler};
use crate::state::flags::{ARITH, CF, OF, SF, ZF};

pub fn handler(code: Code) -> Option<Handler> {
    use Mnemonic as M;
    Some(match code.mnemonic() {
        M::Pcmpestri | M::Pcmpestri64 => pcmpstr::<true, true>,
        M::Pcmpestrm | M::Pcmpestrm64 => pcmpstr::<true, false>,
        M::Pcmpistri => pcmpstr::<false, true>,
        M::Pcmpistrm => pcmpstr::<false, false>,
        M::Crc32 => crc32,
        _ => return None,
    })
}

/// The outcome of a string compare before it is written back.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StrResult {
    /// IntRes2, one bit per element.
    pub res: u32,
    /// Number of valid elements in the first and second operands.
    pub len1: usize,
    pub len2: usize,
    /// Elements per operand: 16 (bytes) or 8 (words).
    pub count: usize,
}

/// Number of valid elements up to the first null element.
fn implicit_len(v: u128, w: usize, count: usize) -> usize {
    if w == 1 {
        return (zero_bytes(v) | 1 << 16).trailing_zeros() as usize;
    }
    (0..count).find(|&i| lane(v, w, i) == 0).unwrap_or(count)
}

/// The absolute value of an explicit length register, saturated to `count`.
fn explicit_len(v: u64, wide: bool, count: usize) -> usize {
    let abs = if wide { (v as i64).unsigned_abs() } else { u64::from((v as i32).unsigned_abs()) };
    abs.min(count as u64) as usize
}

/// IntRes1 element by element, for every format and aggregation.
fn compare_lanes(a: u128, b: u128, len1: usize, len2: usize, imm: u8) -> u32 {
    let words = imm & 1 != 0;
    let signed = imm & 2 != 0;
    let (w, count) = if words { (2, 8) } else { (1, 16) };
    // The elements, extracted once.
    let elems = |v: u128| -> [i64; 16] {
        std::array::from_fn(|i| {
            if i >= count {
                return 0;
            }
            let x = lane(v, w, i);
            if signed {
                sx(x, w)
            } else {
                x as i64
            }
        })
    };
    let (ea, eb) = (elems(a), elems(b));
    let agg = (imm >> 2) & 3;
    // BoolRes for xmm1 element i against xmm2 element j, with the overrides
    // for invalid elements (Table 4-7).
    let boolres = |i: usize, j: usize| -> bool {
        let v1 = i < len1;
        let v2 = j < len2;
        match (v1, v2) {
            (true, true) => {
                let (x, y) = (ea[i], eb[j]);
                if agg == 1 {
                    if i.is_multiple_of(2) {
                        x <= y
                    } else {
                        x >= y
                    }
                } else {
                    x == y
                }
            }
            (false, false) => agg >= 2,
            (false, true) => agg == 3,
            (true, false) => false,
        }
    };
    let mut res1 = 0u32;
    if agg == 0 {
        // Equal any: element j of xmm2 (valid) is one of xmm1's valid
        // elements; an invalid element of either side never matches.
        // Equality ignores the sign, so the raw lanes do.
        for j in 0..len2 {
            let y = lane(b, w, j);
            if (0..len1).any(|i| lane(a, w, i) == y) {
                res1 |= 1 << j;
            }
        }
    } else {
        for j in 0..count {
            let hit = match agg {
                1 => (0..count).step_by(2).any(|i| boolres(i, j) && boolres(i + 1, j)),
                2 => boolres(j, j),
                _ => (0..count - j).all(|i| boolres(i, j + i)),
            };
            if hit {
                res1 |= 1 << j;
            }
        }
    }
    res1
}

/// Bit `j` set where byte `j` of `x` is zero.
fn zero_bytes(x: u128) -> u32 {
    const LOW7: u128 = 0x7f7f_7f7f_7f7f_7f7f_7f7f_7f7f_7f7f_7f7f;
    // A byte's top bit, after adding 0x7f to its low seven bits and or-ing
    // it in, is set unless the byte is zero (no carry crosses a byte).
    let nonzero = ((x & LOW7) + LOW7) | x;
    let zero = (!nonzero & !LOW7) >> 7;
    // The bits at 8j (0 or 1) gathered into bits 56..63 of the product.
    let gather = |v: u64| (v.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32;
    gather(zero as u64) | (gather((zero >> 64) as u64) << 8)
}

/// IntRes1 for unsigned or signed bytes with equal any, equal each or
/// equal ordered (equality ignores the sign): sixteen bytes compared at
/// once per element of `a`.
fn compare_bytes(a: u128, b: u128, len1: usize, len2: usize, agg: u8) -> u32 {
    const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    let valid = |n: usize| ((1u32 << n) - 1) & 0xffff;
    let (valid1, valid2) = (valid(len1), valid(len2));
    // Bytes of `b` equal to byte `i` of `a`.
    let eq = |i: usize| zero_bytes(b ^ (((a >> (8 * i)) & 0xff) * ONES));
    match agg {
        // Equal any: a valid element of `b` that is one of `a`'s valid ones
        // (`a`'s bytes as a set of 256 bits, then `b`'s looked up).
        0 => {
            let mut set = [0u64; 4];
            for i in 0..len1 {
                let x = (a >> (8 * i)) as u8;
                set[usize::from(x >> 6)] |= 1 << (x & 63);
            }
            (0..len2).fold(0, |r, j| {
                let y = (b >> (8 * j)) as u8;
                r | (((set[usize::from(y >> 6)] >> (y & 63)) & 1) as u32) << j
            })
        }
        // Equal each: pairs of valid elements that are equal, and pairs of
        // invalid ones.
        2 => (zero_bytes(a ^ b) & valid1 & valid2) | (!valid1 & !valid2 & 0xffff),
        // Equal ordered: `a`'s valid elements found from position `j` on
        // (those past the end of `b`'s 16 bytes are not needed).
        _ => (0..len1).fold(0xffff, |r, i| r & (((eq(i) & valid2) >> i) | !((1u32 << (16 - i)) - 1))) & 0xffff,
    }
}

/// The compare-and-aggregate core of the four instructions (SDM §4.1.3–4.1.6).
pub(super) fn compare(a: u128, b: u128, len1: usize, len2: usize, imm: u8) -> StrResult {
    let words = imm & 1 != 0;
    let count = if words { 8 } else { 16 };
    let agg = (imm >> 2) & 3;
    let res1 =
        if !words && agg != 1 { compare_bytes(a, b, len1, len2, agg) } else { compare_lanes(a, b, len1, len2, imm) };
    let all = (1u32 << count) - 1;
    let valid2 = (1u32 << len2) - 1;
    let res = match (imm >> 4) & 3 {
        1 => !res1 & all,
        3 => res1 ^ valid2,
        _ => res1,
    };
    StrResult { res, len1, len2, count }
}

fn pcmpstr<const EXPLICIT: bool, const INDEX: bool>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    check(cpu, insn, Uses::Operands)?;
    let b = src(cpu, insn, 1)?;
    pcmpstr_run::<EXPLICIT, INDEX>(cpu, insn, b)
}

/// PCMPxSTRx and their VEX forms once the second operand `b` is read: ECX
/// or XMM0 (its bits 127:0), and the flags.
pub(super) fn pcmpstr_run<const EXPLICIT: bool, const INDEX: bool>(
    cpu: &mut Cpu,
    insn: &Instruction,
    b: u128,
) -> Fault<()> {
    let a = xmm(cpu, insn.op0_register() as usize - Register::XMM0 as usize);
    let imm = insn.immediate8();
    let (w, count) = if imm & 1 != 0 { (2, 8) } else { (1, 16) };
    let (len1, len2) = if EXPLICIT {
        let wide = matches!(
            insn.mnemonic(),
            Mnemonic::Pcmpestri64 | Mnemonic::Pcmpestrm64 | Mnemonic::Vpcmpestri64 | Mnemonic::Vpcmpestrm64
        );
        (explicit_len(cpu.state.gpr[0], wide, count), explicit_len(cpu.state.gpr[2], wide, count))
    } else {
        (implicit_len(a, w, count), implicit_len(b, w, count))
    };
    let r = compare(a, b, len1, len2, imm);
    if INDEX {
        reg_write(&mut cpu.state, Register::ECX, u64::from(r.index(imm)));
    } else {
        let m = if imm & 0x40 != 0 {
            let mut m = 0u128;
            for j in 0..count {
                if r.res & (1 << j) != 0 {
                    m |= u128::from(super::lane_mask(w)) << (j * w * 8);
                }
            }
            m
        } else {
            u128::from(r.res)
        };
        cpu.state.xmm[0] = m;
    }
    cpu.state.set_arith_flags(ARITH, r.flags());
    Ok(())
}

impl StrResult {
    /// The index an ...STRI instruction writes to ECX.
    fn index(&self, imm: u8) -> u32 {
        if self.res == 0 {
            self.count as u32
        } else if imm & 0x40 != 0 {
            31 - self.res.leading_zeros()
        } else {
            self.res.trailing_zeros()
        }
    }

    /// The six arithmetic flags (RFLAGS bits) the four instructions set.
    fn flags(&self) -> u64 {
        let mut f = 0;
        if self.res != 0 {
            f |= CF;
        }
        if self.len2 < self.count {
            f |= ZF;
        }
        if self.len1 < self.count {
            f |= SF;
        }
        if self.res & 1 != 0 {
            f |= OF;
        }
        f
    }
}

/// PCMPISTRI of `a` (xmm1) and `b` (xmm2/m128) with control byte `imm`:
/// the index for ECX and the six arithmetic flags (for translated code,
/// which has the operands at hand).
pub fn pcmpistri(a: u128, b: u128, imm: u8) -> (u32, u64) {
    let (w, count) = if imm & 1 != 0 { (2, 8) } else { (1, 16) };
    let r = compare(a, b, implicit_len(a, w, count), implicit_len(b, w, count), imm);
    (r.index(imm), r.flags())
}

/// What PCMPISTRI gives once IntRes2 (`res`) and the implicit lengths of
/// its operands are known (by a host that computed them with its own
/// instruction): the index for ECX and the six arithmetic flags.
pub fn pcmpistri_outputs(res: u32, len1: usize, len2: usize, imm: u8) -> (u32, u64) {
    let count = if imm & 1 != 0 { 8 } else { 16 };
    let r = StrResult { res, len1, len2, count };
    (r.index(imm), r.flags())
}

/// CRC-32C (Castagnoli) lookup table, reflected polynomial 0x82F63B78.
pub const CRC32C: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82f6_3b78 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Fold `n` little-endian bytes of `v` into the CRC-32C state `crc` (no
/// pre- or post-inversion, as the instruction does).
pub fn crc32c(mut crc: u32, v: u64, n: u32) -> u32 {
    for i in 0..n {
        let byte = (v >> (8 * i)) as u8;
        crc = (crc >> 8) ^ CRC32C[usize::from((crc as u8) ^ byte)];
    }
    crc
}

/// CRC32 r32/r64, r/m8/16/32/64: SSE4.2, but a general-register instruction
/// unaffected by CR0 and CR4.
fn crc32(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if insn.has_lock_prefix() {
        return Err(Exception::InvalidOpcode);
    }
    let n = super::super::op_size(insn, 1);
    let v = read_op(cpu, insn, 1, n)?;
    let d = insn.op0_register();
    let crc = crc32c(reg_read(&cpu.state, d) as u32, v, n);
    reg_write(&mut cpu.state, d, u64::from(crc));
    Ok(())
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::super::testing::*;
    use super::*;
    use crate::state::flags;

    fn s(text: &[u8]) -> u128 {
        let mut b = [0u8; 16];
        b[..text.len()].copy_from_slice(text);
        u128::from_le_bytes(b)
    }

    #[test]
    fn crc32c_check_value() {
        let mut crc = !0u32;
        for &b in b"123456789" {
            crc = crc32c(crc, u64::from(b), 1);
        }
        assert_eq!(!crc, 0xe306_9283);
        // Through the instruction, in every operand size.
        let mut c = cpu();
        c.state.gpr[0] = 0xffff_ffff;
        c.state.gpr[1] = u64::from_le_bytes(*b"12345678");
        exec(&mut c, |a| a.crc32(rax, rcx)).unwrap();
        c.state.gpr[1] = u64::from(b'9');
        exec(&mut c, |a| a.crc32(eax, cl)).unwrap();
        assert_eq!(c.state.gpr[0] ^ 0xffff_ffff, 0xe306_9283);
        c.state.gpr[0] = 0xffff_ffff;
        c.state.gpr[1] = u64::from(u32::from_le_bytes(*b"1234"));
        exec(&mut c, |a| a.crc32(eax, ecx)).unwrap();
        c.state.gpr[1] = u64::from(u16::from_le_bytes(*b"56"));
        exec(&mut c, |a| a.crc32(eax, cx)).unwrap();
        c.state.gpr[1] = u64::from(u16::from_le_bytes(*b"78"));
        exec(&mut c, |a| a.crc32(eax, cx)).unwrap();
        c.state.gpr[0] |= 0xdead_0000_0000_0000;
        c.state.gpr[1] = u64::from(b'9');
        exec(&mut c, |a| a.crc32(eax, cl)).unwrap();
        assert_eq!(c.state.gpr[0] ^ 0xffff_ffff, 0xe306_9283);
        // Memory source.
        c.state.gpr[0] = 0xffff_ffff;
        c.state.gpr[3] = DATA;
        write(&c, DATA, b"123456789");
        exec(&mut c, |a| a.crc32(rax, qword_ptr(rbx))).unwrap();
        exec(&mut c, |a| a.crc32(rax, byte_ptr(rbx + 8))).unwrap();
        assert_eq!(c.state.gpr[0] ^ 0xffff_ffff, 0xe306_9283);
    }

    /// The byte compares done sixteen at a time give what the element by
    /// element compare gives, for every control byte they serve.
    #[test]
    fn byte_compares_match_the_element_by_element_ones() {
        let mut next = crate::ops::testutil::xorshift(0x2545_f491_4f6c_dd1d);
        // Bytes from a small alphabet (zeros included), so that matches,
        // runs and terminators are frequent.
        let operand = |next: &mut dyn FnMut() -> u64| {
            (0..16).fold(0u128, |v, i| v | u128::from(b"\0abcab"[(next() % 6) as usize]) << (8 * i))
        };
        for _ in 0..20_000 {
            let (a, b) = (operand(&mut next), operand(&mut next));
            for v in [a, b] {
                let slow = (0..16).find(|&i| lane(v, 1, i) == 0).unwrap_or(16);
                assert_eq!(implicit_len(v, 1, 16), slow, "{v:#x}");
            }
            let (len1, len2) = ((next() % 17) as usize, (next() % 17) as usize);
            for agg in [0u8, 2, 3] {
                for signed in [0u8, 2] {
                    let imm = agg << 2 | signed;
                    assert_eq!(
                        compare_bytes(a, b, len1, len2, agg),
                        compare_lanes(a, b, len1, len2, imm),
                        "a {a:#x} b {b:#x} len1 {len1} len2 {len2} imm {imm:#x}"
                    );
                }
            }
        }
    }

    /// The SDM's worked cases for each aggregation.
    #[test]
    fn aggregations() {
        // Equal any: which of "Hello, World!" are in the set "lo"?
        let r = compare(s(b"lo"), s(b"Hello, World!"), 2, 13, 0b00_00_00);
        assert_eq!(r.res, 0b0_0101_0001_1100);
        // Ranges: letters a-z in "Hello, World!".
        let r = compare(s(b"az"), s(b"Hello, World!"), 2, 13, 0b00_01_00);
        assert_eq!(r.res, 0b0_1111_0001_1110);
        // Ranges A-Z and a-z together.
        let r = compare(s(b"AZaz"), s(b"Hello, World!"), 4, 13, 0b00_01_00);
        assert_eq!(r.res, 0b0_1111_1001_1111);
        // Equal each: string equality, element by element; invalid pairs match.
        let r = compare(s(b"Hello"), s(b"Hallo"), 5, 5, 0b00_10_00);
        assert_eq!(r.res, 0b1111_1111_1111_1101);
        // Negative polarity finds the first difference.
        let r = compare(s(b"Hello"), s(b"Hallo"), 5, 5, 0b01_10_00);
        assert_eq!(r.res.trailing_zeros(), 1);
        // Equal ordered: substring search, with a partial match at the end.
        let r = compare(s(b"lo"), s(b"Hello, World!"), 2, 13, 0b00_11_00);
        assert_eq!(r.res, 0b0_0000_0000_1000);
        let r = compare(s(b"ab"), s(b"xxxxxxxxxxxxxxxa"), 2, 16, 0b00_11_00);
        assert_eq!(r.res, 1 << 15);
        // Masked negative polarity only inverts valid elements.
        let r = compare(s(b"lo"), s(b"Hello"), 2, 5, 0b11_00_00);
        assert_eq!(r.res, 0b11);
        // Signed words ranges.
        let a = u16x8([0xfff0, 0x0010, 0, 0, 0, 0, 0, 0]); // -16..16
        let b = u16x8([0xffef, 0xfff0, 5, 16, 17, 0x8000, 0, 0]);
        let r = compare(a, b, 2, 8, 0b00_01_11);
        assert_eq!(r.res, 0b1100_1110);
    }

    #[test]
    fn instructions_and_flags() {
        let mut c = cpu();
        c.state.xmm[1] = s(b"lo");
        c.state.xmm[2] = s(b"Hello, World!");
        exec(&mut c, |a| a.pcmpistri(xmm1, xmm2, 0b00_11_00)).unwrap();
        assert_eq!(c.state.gpr[1], 3);
        let f = c.state.flags() & flags::ARITH;
        assert_eq!(f, flags::CF | flags::ZF | flags::SF);
        // Most significant index.
        exec(&mut c, |a| a.pcmpistri(xmm1, xmm2, 0x40)).unwrap();
        assert_eq!(c.state.gpr[1], 10);
        // No match: ECX = 16, CF clear.
        c.state.xmm[1] = s(b"q");
        exec(&mut c, |a| a.pcmpistri(xmm1, xmm2, 0)).unwrap();
        assert_eq!(c.state.gpr[1], 16);
        assert_eq!(c.state.flags() & flags::CF, 0);
        // Explicit lengths from EAX/EDX (absolute value, saturated).
        c.state.xmm[1] = s(b"lo");
        c.state.gpr[0] = (-2i64) as u64;
        c.state.gpr[2] = 100;
        exec(&mut c, |a| a.pcmpestrm(xmm1, xmm2, 0x40)).unwrap();
        assert_eq!(c.state.xmm[0], 0x0000_0000_00ff_00ff_0000_00ff_ffff_0000);
        let f = c.state.flags() & flags::ARITH;
        assert_eq!(f, flags::CF | flags::SF);
        exec(&mut c, |a| a.pcmpestrm(xmm1, xmm2, 0)).unwrap();
        assert_eq!(c.state.xmm[0], 0b0_0101_0001_1100);
        // OF mirrors result bit 0; words mode counts 8 elements.
        c.state.xmm[1] = u16x8([b'H' as u16, 0, 0, 0, 0, 0, 0, 0]);
        c.state.xmm[2] = u16x8([b'H' as u16, 1, 2, 3, 4, 5, 6, 7]);
        exec(&mut c, |a| a.pcmpistri(xmm1, xmm2, 0b01)).unwrap();
        assert_eq!(c.state.gpr[1], 0);
        let f = c.state.flags() & flags::ARITH;
        assert_eq!(f, flags::CF | flags::SF | flags::OF);
    }
}
