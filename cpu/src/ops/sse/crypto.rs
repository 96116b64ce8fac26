//! AES-NI (AESENC, AESENCLAST, AESDEC, AESDECLAST, AESIMC, AESKEYGENASSIST)
//! and PCLMULQDQ, in their legacy SSE and VEX.128 encodings (SDM Vol. 2
//! instruction pages; FIPS-197 for the AES transformations).
//!
//! Both features belong to the full CPU model only ([`Cpu::set_model`]):
//! with the model's crypto extensions off every form raises #UD. The
//! legacy forms then follow the SSE rules (LOCK, CR0.EM, CR4.OSFXSR, #NM,
//! 16-byte alignment of a memory operand); the VEX forms those of AVX
//! (no alignment rule; VEX.128 zeroes bits 255:128 of the destination).
//! The VEX.256 forms are VAES and VPCLMULQDQ, which the model does not
//! have: they have no handler here, so they raise #UD.
//!
//! The state of the AES instructions is the XMM register in FIPS-197's
//! column order: byte `i` is row `i % 4` of column `i / 4`.

use iced_x86::{Code, Instruction};

use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::ops::Handler;

// ---- GF(2^8) and the S-boxes --------------------------------------------------

/// Multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1.
const fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    r
}

/// The multiplicative inverse (0 for 0): a^254.
const fn ginv(a: u8) -> u8 {
    let mut r = 1u8;
    let mut i = 0;
    while i < 254 {
        r = gmul(r, a);
        i += 1;
    }
    r
}

/// SubBytes' S-box: the inverse, then the affine map b ^ rotl(b, 1..4) ^ 0x63.
const fn sbox() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = ginv(i as u8);
        t[i] = b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63;
        i += 1;
    }
    t
}

const fn inv_sbox(s: &[u8; 256]) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[s[i] as usize] = i as u8;
        i += 1;
    }
    t
}

const SBOX: [u8; 256] = sbox();
const INV_SBOX: [u8; 256] = inv_sbox(&SBOX);

// ---- the round transformations ------------------------------------------------

fn bytes(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

fn value(b: [u8; 16]) -> u128 {
    u128::from_le_bytes(b)
}

/// ShiftRows then SubBytes (they commute): row r rotates left by r columns.
fn shift_sub(s: [u8; 16]) -> [u8; 16] {
    let mut o = [0u8; 16];
    for (i, b) in o.iter_mut().enumerate() {
        let (r, c) = (i % 4, i / 4);
        *b = SBOX[s[r + 4 * ((c + r) % 4)] as usize];
    }
    o
}

/// InvShiftRows then InvSubBytes: row r rotates right by r columns.
fn inv_shift_sub(s: [u8; 16]) -> [u8; 16] {
    let mut o = [0u8; 16];
    for (i, b) in o.iter_mut().enumerate() {
        let (r, c) = (i % 4, i / 4);
        *b = INV_SBOX[s[r + 4 * ((c + 4 - r) % 4)] as usize];
    }
    o
}

/// Each column times the circulant matrix whose first row is `m`.
fn mix(s: [u8; 16], m: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    for c in 0..4 {
        let col = &s[4 * c..4 * c + 4];
        for r in 0..4 {
            o[4 * c + r] = (0..4).fold(0, |acc, k| acc ^ gmul(m[(k + 4 - r) % 4], col[k]));
        }
    }
    o
}

const MIX: [u8; 4] = [2, 3, 1, 1];
const INV_MIX: [u8; 4] = [14, 11, 13, 9];

/// AESENC: one encryption round of `state` with the round key `key`.
pub fn aesenc(state: u128, key: u128) -> u128 {
    value(mix(shift_sub(bytes(state)), MIX)) ^ key
}

/// AESENCLAST: the last encryption round (no MixColumns).
pub fn aesenclast(state: u128, key: u128) -> u128 {
    value(shift_sub(bytes(state))) ^ key
}

/// AESDEC: one round of the equivalent inverse cipher.
pub fn aesdec(state: u128, key: u128) -> u128 {
    value(mix(inv_shift_sub(bytes(state)), INV_MIX)) ^ key
}

/// AESDECLAST: the last decryption round (no InvMixColumns).
pub fn aesdeclast(state: u128, key: u128) -> u128 {
    value(inv_shift_sub(bytes(state))) ^ key
}

/// AESIMC: InvMixColumns of a round key (for the inverse cipher's keys).
pub fn aesimc(key: u128) -> u128 {
    value(mix(bytes(key), INV_MIX))
}

/// SubWord: the S-box on each byte of a dword.
fn sub_word(w: u32) -> u32 {
    u32::from_le_bytes(w.to_le_bytes().map(|b| SBOX[b as usize]))
}

/// AESKEYGENASSIST: SubWord of dwords 1 and 3, and each rotated right by 8
/// bits and XORed with the round constant `rcon`.
pub fn aeskeygenassist(src: u128, rcon: u8) -> u128 {
    let x1 = sub_word((src >> 32) as u32);
    let x3 = sub_word((src >> 96) as u32);
    let rc = u32::from(rcon);
    u128::from(x1)
        | u128::from(x1.rotate_right(8) ^ rc) << 32
        | u128::from(x3) << 64
        | u128::from(x3.rotate_right(8) ^ rc) << 96
}

/// The carry-less product of two 64-bit polynomials.
pub fn clmul(a: u64, b: u64) -> u128 {
    let mut r = 0u128;
    for i in 0..64 {
        if b >> i & 1 != 0 {
            r ^= u128::from(a) << i;
        }
    }
    r
}

/// PCLMULQDQ: imm8 bit 0 picks the quadword of the first source, bit 4
/// that of the second.
pub fn pclmulqdq(a: u128, b: u128, imm: u8) -> u128 {
    let q = |v: u128, bit: u8| (if imm & bit != 0 { v >> 64 } else { v }) as u64;
    clmul(q(a, 0x01), q(b, 0x10))
}

// ---- handlers -----------------------------------------------------------------

/// An operation on (first source, last source, imm8).
type Kernel = fn(u128, u128, u8) -> u128;

fn k_aesenc(a: u128, b: u128, _: u8) -> u128 {
    aesenc(a, b)
}

fn k_aesenclast(a: u128, b: u128, _: u8) -> u128 {
    aesenclast(a, b)
}

fn k_aesdec(a: u128, b: u128, _: u8) -> u128 {
    aesdec(a, b)
}

fn k_aesdeclast(a: u128, b: u128, _: u8) -> u128 {
    aesdeclast(a, b)
}

fn k_aesimc(_: u128, b: u128, _: u8) -> u128 {
    aesimc(b)
}

fn k_aeskeygenassist(_: u128, b: u128, imm: u8) -> u128 {
    aeskeygenassist(b, imm)
}

/// #UD unless the model has the crypto extensions.
#[inline]
fn available(cpu: &Cpu) -> Fault<()> {
    if cpu.crypto() {
        Ok(())
    } else {
        Err(Exception::InvalidOpcode)
    }
}

/// The legacy form: the destination is the first source.
fn legacy<const K: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    available(cpu)?;
    let k = KERNELS[K];
    super::int::binary_imm(cpu, insn, |a, b, _, imm| k(a, b, imm))
}

/// The VEX.128 form with two sources (VEX.vvvv is the first).
fn vex2<const K: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    available(cpu)?;
    let k = KERNELS[K];
    super::avx::ternary_imm(cpu, insn, 0, k)
}

/// The VEX.128 form with one source (VAESIMC, VAESKEYGENASSIST).
fn vex1<const K: usize>(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    available(cpu)?;
    let k = KERNELS[K];
    super::avx::unary_imm(cpu, insn, |b, imm| k(0, b, imm))
}

const ENC: usize = 0;
const ENCLAST: usize = 1;
const DEC: usize = 2;
const DECLAST: usize = 3;
const IMC: usize = 4;
const KEYGEN: usize = 5;
const CLMUL: usize = 6;
const KERNELS: [Kernel; 7] = [k_aesenc, k_aesenclast, k_aesdec, k_aesdeclast, k_aesimc, k_aeskeygenassist, pclmulqdq];

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code {
        Code::Aesenc_xmm_xmmm128 => legacy::<ENC>,
        Code::Aesenclast_xmm_xmmm128 => legacy::<ENCLAST>,
        Code::Aesdec_xmm_xmmm128 => legacy::<DEC>,
        Code::Aesdeclast_xmm_xmmm128 => legacy::<DECLAST>,
        Code::Aesimc_xmm_xmmm128 => legacy::<IMC>,
        Code::Aeskeygenassist_xmm_xmmm128_imm8 => legacy::<KEYGEN>,
        Code::Pclmulqdq_xmm_xmmm128_imm8 => legacy::<CLMUL>,
        Code::VEX_Vaesenc_xmm_xmm_xmmm128 => vex2::<ENC>,
        Code::VEX_Vaesenclast_xmm_xmm_xmmm128 => vex2::<ENCLAST>,
        Code::VEX_Vaesdec_xmm_xmm_xmmm128 => vex2::<DEC>,
        Code::VEX_Vaesdeclast_xmm_xmm_xmmm128 => vex2::<DECLAST>,
        Code::VEX_Vaesimc_xmm_xmmm128 => vex1::<IMC>,
        Code::VEX_Vaeskeygenassist_xmm_xmmm128_imm8 => vex1::<KEYGEN>,
        Code::VEX_Vpclmulqdq_xmm_xmm_xmmm128_imm8 => vex2::<CLMUL>,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::cpuid::Model;
    use iced_x86::code_asm::*;

    /// Bytes as FIPS-197 writes them (first byte first) to the register value.
    fn be(s: &str) -> u128 {
        let mut b = [0u8; 16];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        u128::from_le_bytes(b)
    }

    #[test]
    fn s_boxes() {
        // FIPS-197 Figure 7 and 14.
        assert_eq!((SBOX[0x00], SBOX[0x53], SBOX[0xff]), (0x63, 0xed, 0x16));
        assert_eq!((INV_SBOX[0x63], INV_SBOX[0x00]), (0x00, 0x52));
    }

    /// AES-128 key expansion through AESKEYGENASSIST, as software drives it.
    fn expand(key: u128) -> [u128; 11] {
        let mut k = [0u128; 11];
        k[0] = key;
        let rcon = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];
        for i in 1..11 {
            let t = (aeskeygenassist(k[i - 1], rcon[i - 1]) >> 96) as u32;
            let p = k[i - 1];
            let mut w = [0u32; 4];
            let mut prev = t;
            for (j, x) in w.iter_mut().enumerate() {
                *x = (p >> (32 * j)) as u32 ^ prev;
                prev = *x;
            }
            k[i] = w.iter().enumerate().fold(0, |acc, (j, &x)| acc | u128::from(x) << (32 * j));
        }
        k
    }

    #[test]
    fn fips_197_aes_128_round_trip() {
        // FIPS-197 Appendix C.1.
        let keys = expand(be("000102030405060708090a0b0c0d0e0f"));
        assert_eq!(keys[10], be("13111d7fe3944a17f307a78b4d2b30c5"));
        let mut s = be("00112233445566778899aabbccddeeff") ^ keys[0];
        for k in &keys[1..10] {
            s = aesenc(s, *k);
        }
        s = aesenclast(s, keys[10]);
        assert_eq!(s, be("69c4e0d86a7b0430d8cdb78070b4c55a"));
        // The equivalent inverse cipher: round keys through AESIMC.
        s ^= keys[10];
        for k in keys[1..10].iter().rev() {
            s = aesdec(s, aesimc(*k));
        }
        s = aesdeclast(s, keys[0]);
        assert_eq!(s, be("00112233445566778899aabbccddeeff"));
    }

    #[test]
    fn carry_less_products() {
        assert_eq!(clmul(0b11, 0b11), 0b101);
        assert_eq!(clmul(1 << 63, 2), 1 << 64);
        assert_eq!(clmul(u64::MAX, u64::MAX), 0x5555_5555_5555_5555_5555_5555_5555_5555);
        let (a, b) = (0x1234_5678_9abc_def0u128 | (7u128 << 64), 0xfedc_ba98_7654_3210u128 | (3u128 << 64));
        assert_eq!(pclmulqdq(a, b, 0x00), clmul(0x1234_5678_9abc_def0, 0xfedc_ba98_7654_3210));
        assert_eq!(pclmulqdq(a, b, 0x01), clmul(7, 0xfedc_ba98_7654_3210));
        assert_eq!(pclmulqdq(a, b, 0x10), clmul(0x1234_5678_9abc_def0, 3));
        assert_eq!(pclmulqdq(a, b, 0x11), clmul(7, 3));
    }

    /// A CPU in 64-bit mode with the OS's SSE and AVX state enabled.
    fn model_cpu(model: Model) -> Cpu {
        let mut c = cpu();
        c.set_model(model);
        c.state.cr4 |= crate::state::cr::CR4_OSXSAVE;
        c.state.xcr0 = 7;
        c
    }

    #[test]
    fn the_instructions_run_in_the_full_model_and_raise_ud_in_v2() {
        use crate::exception::Exception;
        let key = be("000102030405060708090a0b0c0d0e0f");
        let pt = be("00112233445566778899aabbccddeeff");
        let ud = Err(Exception::InvalidOpcode);
        let mut c = model_cpu(Model::V2);
        assert_eq!(exec(&mut c, |a| a.vaesenc(xmm3, xmm1, xmm2)), ud);
        assert_eq!(exec(&mut c, |a| a.aesenc(xmm3, xmm1)), ud);
        assert_eq!(exec(&mut c, |a| a.pclmulqdq(xmm3, xmm1, 0)), ud);
        // The VEX.256 forms are VAES and VPCLMULQDQ, outside the model.
        let mut c = model_cpu(Model::Max);
        for i in [insn(|a| a.vaesenc(ymm3, ymm1, ymm2)), insn(|a| a.vpclmulqdq(ymm3, ymm1, ymm2, 0))] {
            assert!(!crate::ops::implemented(i.code()));
            assert_eq!(crate::ops::handler(i.code())(&mut c, &i), ud);
        }
        {
            c.state.xmm[1] = pt;
            c.state.xmm[2] = key;
            c.state.ymm_hi[3] = 0x55;
            exec(&mut c, |a| a.vaesenc(xmm3, xmm1, xmm2)).unwrap();
            assert_eq!(c.state.xmm[3], aesenc(pt, key));
            assert_eq!(c.state.ymm_hi[3], 0, "VEX.128 zeroes the upper half");
            c.state.xmm[4] = pt;
            c.state.ymm_hi[4] = 0x77;
            exec(&mut c, |a| a.aesenclast(xmm4, xmm2)).unwrap();
            assert_eq!(c.state.xmm[4], aesenclast(pt, key));
            assert_eq!(c.state.ymm_hi[4], 0x77, "legacy SSE keeps the upper half");
            exec(&mut c, |a| a.vaeskeygenassist(xmm5, xmm2, 0x1b)).unwrap();
            assert_eq!(c.state.xmm[5], aeskeygenassist(key, 0x1b));
            exec(&mut c, |a| a.vaesimc(xmm6, xmm2)).unwrap();
            assert_eq!(c.state.xmm[6], aesimc(key));
            exec(&mut c, |a| a.vpclmulqdq(xmm7, xmm1, xmm2, 0x11)).unwrap();
            assert_eq!(c.state.xmm[7], pclmulqdq(pt, key, 0x11));
            exec(&mut c, |a| a.pclmulqdq(xmm1, xmm2, 0x00)).unwrap();
            assert_eq!(c.state.xmm[1], pclmulqdq(pt, key, 0x00));
            // Legacy SSE: a misaligned 16-byte memory operand is #GP(0).
            write(&c, DATA + 1, &key.to_le_bytes());
            assert_eq!(exec(&mut c, |a| a.aesenc(xmm1, xmmword_ptr(DATA + 1))), Err(crate::exception::GP0));
            // VEX: no alignment rule.
            exec(&mut c, |a| a.vaesdec(xmm8, xmm4, xmmword_ptr(DATA + 1))).unwrap();
            assert_eq!(c.state.xmm[8], aesdec(c.state.xmm[4], key));
        }
    }
}
