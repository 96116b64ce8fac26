//! The lazy flags: what is known of them at a point, how they reach the
//! state, and conditions computed from them.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};

use cpu::flags::FlagOp;
use cpu::state::flags;

use super::state::{mem_flags, Tx, CIN, LZ_OFF, OP, RES, RFLAGS_OFF, SRC1, SRC2};
use crate::reloc::Helper;

/// What is statically known about the lazy flags at a point.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Known {
    Unknown,
    /// The record's operation, size and values, as SSA values that
    /// dominate the point.
    Lazy {
        op: FlagOp,
        size: u32,
        res: Value,
        a: Value,
        b: Value,
        cin: Value,
    },
    /// The record is empty and RFLAGS is this value.
    Eager(Value),
    /// The old flags with the bits outside `keep` replaced by `bits`: an
    /// instruction that changes some flags only (a rotate, BT, BSF). The
    /// old flags are the producer `base` (a lazy record in SSA values, as
    /// in `Lazy`: op, size, res, a, b, cin), or without one the state's
    /// (its record, or RFLAGS). They are computed only where something
    /// needs them; most often the next producer replaces them all first.
    Partial {
        keep: u64,
        bits: Value,
        base: Option<(FlagOp, u32, [Value; 4])>,
    },
}

impl Tx<'_, '_> {
    pub(super) fn set_lazy(&mut self, op: FlagOp, size: u32, res: Value, a: Value, b: Value, cin: Option<Value>) {
        let c = match cin {
            Some(c) => c,
            None => self.iconst(0),
        };
        self.known = Known::Lazy { op, size, res, a, b, cin: c };
        self.lazy_dirty = true;
        self.cin_deferred = false;
    }

    /// Set the arithmetic flags eagerly (`f`: the six bits), as
    /// `set_arith_flags(ARITH, f)` does.
    pub(super) fn set_eager(&mut self, f: Value) {
        let rf = self.store_eager(f);
        self.known = Known::Eager(rf);
        self.lazy_dirty = false;
        self.cin_deferred = false;
    }

    /// All six arithmetic flags become `f` (RFLAGS bits), as with
    /// [`Self::set_eager`], but they reach the state only where something
    /// needs them (an exit, a helper, a condition). Until then `f` is only
    /// an SSA value, and where the next producer replaces the flags first,
    /// which is most often, nothing computes it.
    pub(super) fn set_all(&mut self, f: Value) {
        self.known = Known::Partial { keep: 0, bits: f, base: None };
        self.lazy_dirty = true;
        self.cin_deferred = false;
    }

    /// Flags outside `keep` (of the six) become `bits`, the rest stay:
    /// computed now where the producer is known, else deferred.
    pub(super) fn set_partial(&mut self, keep: u64, bits: Value) {
        if keep == 0 {
            return self.set_all(bits);
        }
        match self.known {
            Known::Unknown => {
                self.known = Known::Partial { keep, bits, base: None };
                self.lazy_dirty = true;
                self.cin_deferred = false;
            }
            Known::Partial { keep: k0, bits: b0, base } => {
                let old = self.b.ins().band_imm_s(b0, keep as i64);
                let bits = self.b.ins().bor(old, bits);
                self.known = Known::Partial { keep: k0 & keep, bits, base };
            }
            Known::Lazy { op, size, res, a, b, cin } => {
                // An INC/DEC base keeps its deferred carry-in: the state's
                // record is not written until the flags are.
                self.known = Known::Partial { keep, bits, base: Some((op, size, [res, a, b, cin])) };
                self.lazy_dirty = true;
            }
            _ => {
                let prev = self.materialize();
                let kept = self.b.ins().band_imm_s(prev, keep as i64);
                let f = self.b.ins().bor(kept, bits);
                self.set_eager(f);
            }
        }
    }

    /// Store the six flags `f` into RFLAGS and empty the lazy record;
    /// returns the new RFLAGS.
    pub(super) fn store_eager(&mut self, f: Value) -> Value {
        let fl = mem_flags();
        let rf = self.b.ins().load(types::I64, fl, self.state, RFLAGS_OFF);
        let rf = self.b.ins().band_imm_s(rf, !(flags::ARITH as i64));
        let rf = self.b.ins().bor(rf, f);
        self.b.ins().store(fl, rf, self.state, RFLAGS_OFF);
        let none = self.b.ins().iconst(types::I32, 0);
        self.b.ins().store(fl, none, self.state, LZ_OFF[OP]);
        rf
    }

    /// The six flags now, through the helper (the producer is not known
    /// here: the state's record or RFLAGS holds them).
    fn flags_by_helper(&mut self) -> Value {
        if self.lazy_dirty {
            // The helper reads the record from the state.
            self.sync();
        }
        self.raw_state_flags()
    }

    /// The six flags of the state's record (or RFLAGS) by the helper.
    fn raw_state_flags(&mut self) -> Value {
        let callee = self.helper(Helper::StateFlags);
        let call = self.b.ins().call_indirect(self.sig_flags, callee, &[self.state]);
        self.b.inst_results(call)[0]
    }

    /// The six arithmetic flags now (RFLAGS bits), computed from the known
    /// producer where there is one, else by the helper.
    pub(super) fn materialize(&mut self) -> Value {
        match self.known {
            Known::Eager(rf) => self.b.ins().band_imm_s(rf, flags::ARITH as i64),
            Known::Unknown => self.flags_by_helper(),
            // Every flag new: the old ones are not read.
            Known::Partial { keep: 0, bits, .. } => bits,
            Known::Partial { keep, bits, base } => {
                let prev = match base {
                    Some((op, size, [res, a, b, cin])) => {
                        let now = self.known;
                        self.known = Known::Lazy { op, size, res, a, b, cin };
                        let f = self.materialize();
                        self.known = now;
                        f
                    }
                    // The state's record still holds the old flags.
                    None => self.raw_state_flags(),
                };
                let kept = self.b.ins().band_imm_s(prev, keep as i64);
                self.b.ins().bor(kept, bits)
            }
            Known::Lazy { op, size, res, a, b: bv, .. } => {
                let cf = self.cf();
                let szp = self.szp(res, size);
                let f = self.b.ins().bor(cf, szp);
                let (of, af) = match op {
                    FlagOp::Add | FlagOp::Adc => {
                        let x = self.b.ins().bxor(a, res);
                        let y = self.b.ins().bxor(bv, res);
                        let o = self.b.ins().band(x, y);
                        (Some(self.sign_bit(o, size)), true)
                    }
                    FlagOp::Sub | FlagOp::Sbb => {
                        let x = self.b.ins().bxor(a, bv);
                        let y = self.b.ins().bxor(a, res);
                        let o = self.b.ins().band(x, y);
                        (Some(self.sign_bit(o, size)), true)
                    }
                    FlagOp::Logic | FlagOp::None => (None, false),
                    FlagOp::Inc | FlagOp::Dec => {
                        let s = 1u64 << (size * 8 - 1);
                        let want = if op == FlagOp::Inc { s } else { s - 1 };
                        let o = self.b.ins().icmp_imm_s(IntCC::Equal, res, want as i64);
                        let o = self.b.ins().uextend(types::I64, o);
                        let lo = self.b.ins().band_imm_s(res, 0xf);
                        let nib = if op == FlagOp::Inc { 0 } else { 0xf };
                        let afv = self.b.ins().icmp_imm_s(IntCC::Equal, lo, nib);
                        let afv = self.b.ins().uextend(types::I64, afv);
                        let afv = self.b.ins().ishl_imm_s(afv, 4);
                        let f2 = self.b.ins().ishl_imm_s(o, 11);
                        let f2 = self.b.ins().bor(f2, afv);
                        return self.b.ins().bor(f, f2);
                    }
                };
                let mut f = f;
                if let Some(o) = of {
                    let o = self.b.ins().ishl_imm_s(o, 11);
                    f = self.b.ins().bor(f, o);
                }
                if af {
                    let x = self.b.ins().bxor(a, bv);
                    let x = self.b.ins().bxor(x, res);
                    let x = self.b.ins().band_imm_s(x, 0x10);
                    f = self.b.ins().bor(f, x);
                }
                f
            }
        }
    }

    pub(super) fn sign_bit(&mut self, v: Value, size: u32) -> Value {
        let s = self.b.ins().ushr_imm_s(v, i64::from(size * 8 - 1));
        self.b.ins().band_imm_s(s, 1)
    }

    /// CF as 0/1 (i64).
    pub(super) fn cf(&mut self) -> Value {
        match self.known {
            Known::Lazy { op, res, a, b: bv, cin, .. } => {
                let c = match op {
                    FlagOp::Add => self.b.ins().icmp(IntCC::UnsignedLessThan, res, a),
                    FlagOp::Sub => self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv),
                    FlagOp::Adc => {
                        let lt = self.b.ins().icmp(IntCC::UnsignedLessThan, res, a);
                        let le = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, res, a);
                        self.b.ins().select(cin, le, lt)
                    }
                    FlagOp::Sbb => {
                        let lt = self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv);
                        let le = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, a, bv);
                        self.b.ins().select(cin, le, lt)
                    }
                    FlagOp::Logic | FlagOp::None => return self.iconst(0),
                    FlagOp::Inc | FlagOp::Dec if self.cin_deferred => return self.cf_from_state(),
                    FlagOp::Inc | FlagOp::Dec => return self.b.ins().band_imm_s(cin, 1),
                };
                self.b.ins().uextend(types::I64, c)
            }
            Known::Eager(rf) => self.b.ins().band_imm_s(rf, 1),
            Known::Unknown => self.cf_from_state(),
            Known::Partial { keep, bits, .. } if keep & flags::CF == 0 => self.b.ins().band_imm_s(bits, 1),
            Known::Partial { .. } => {
                let f = self.materialize();
                self.b.ins().band_imm_s(f, 1)
            }
        }
    }

    /// CF (0/1, i64) from the state's lazy record, inline for every
    /// producer but ADC and SBB (those through the helper).
    pub(super) fn cf_from_state(&mut self) -> Value {
        // SUB/CMP and the logic operations first, by branches: at one
        // place in the code the record's producer is nearly always the
        // same, so the branches predict, where the select chain below
        // costs some twenty instructions every time.
        let fl = mem_flags();
        let op = self.b.ins().load(types::I32, fl, self.state, LZ_OFF[OP]);
        let join = self.b.create_block();
        let out = self.b.append_block_param(join, types::I64);
        let sub_blk = self.b.create_block();
        let rest = self.b.create_block();
        let general = self.b.create_block();
        let is_sub = self.b.ins().icmp_imm_s(IntCC::Equal, op, FlagOp::Sub as i64);
        self.b.ins().brif(is_sub, sub_blk, &[], rest, &[]);
        self.enter_block(sub_blk);
        let [a, bv] = self.record_values([LZ_OFF[SRC1], LZ_OFF[SRC2]]);
        let c = self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv);
        let c = self.b.ins().uextend(types::I64, c);
        self.b.ins().jump(join, &[c.into()]);
        self.enter_block(rest);
        let is_logic = self.b.ins().icmp_imm_s(IntCC::Equal, op, FlagOp::Logic as i64);
        let zero = self.iconst(0);
        self.b.ins().brif(is_logic, join, &[zero.into()], general, &[]);
        self.enter_block(general);
        let c = self.cf_from_state_general();
        self.b.ins().jump(join, &[c.into()]);
        self.enter_block(join);
        out
    }

    /// [`Self::cf_from_state`] for any producer.
    fn cf_from_state_general(&mut self) -> Value {
        let (op, res, a, bv) = self.state_record();
        let fl = mem_flags();
        let cin = self.b.ins().load(types::I64, fl, self.state, LZ_OFF[CIN]);
        let rf = self.b.ins().load(types::I64, fl, self.state, RFLAGS_OFF);
        let sub = self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv);
        let sub = self.b.ins().uextend(types::I64, sub);
        let add = self.b.ins().icmp(IntCC::UnsignedLessThan, res, a);
        let add = self.b.ins().uextend(types::I64, add);
        let kept = self.b.ins().band_imm_s(cin, 1);
        let none = self.b.ins().band_imm_s(rf, 1);
        let zero = self.iconst(0);
        let is = |tx: &mut Self, o: FlagOp| tx.b.ins().icmp_imm_s(IntCC::Equal, op, o as i64);
        let is_none = is(self, FlagOp::None);
        let v = self.b.ins().select(is_none, none, zero);
        let is_inc = is(self, FlagOp::Inc);
        let is_dec = is(self, FlagOp::Dec);
        let incdec = self.b.ins().bor(is_inc, is_dec);
        let v = self.b.ins().select(incdec, kept, v);
        let is_add = is(self, FlagOp::Add);
        let v = self.b.ins().select(is_add, add, v);
        let is_sub = is(self, FlagOp::Sub);
        let v = self.b.ins().select(is_sub, sub, v);
        let is_adc = is(self, FlagOp::Adc);
        let is_sbb = is(self, FlagOp::Sbb);
        let slow_op = self.b.ins().bor(is_adc, is_sbb);
        let join = self.b.create_block();
        let out = self.b.append_block_param(join, types::I64);
        let slow = self.b.create_block();
        self.b.ins().brif(slow_op, slow, &[], join, &[v.into()]);
        self.enter_block(slow);
        // The state's record as it stands (not the known producer's, which
        // may be an INC whose carry-in this computes).
        let f = self.raw_state_flags();
        let c = self.b.ins().band_imm_s(f, 1);
        self.b.ins().jump(join, &[c.into()]);
        self.enter_block(join);
        out
    }

    /// Evaluate condition code `cc` as an i8 (non-zero: true).
    pub(super) fn condition(&mut self, cc: u8) -> Value {
        let neg = cc & 1 != 0;
        let v = self.condition_pos(cc & !1);
        if neg {
            self.b.ins().icmp_imm_s(IntCC::Equal, v, 0)
        } else {
            v
        }
    }

    fn condition_pos(&mut self, cc: u8) -> Value {
        if let Known::Lazy { op, size, res, a, b: bv, .. } = self.known {
            let sx = |tx: &mut Self, v: Value| {
                if size == 8 {
                    v
                } else {
                    let sh = i64::from(64 - size * 8);
                    let t = tx.b.ins().ishl_imm_s(v, sh);
                    tx.b.ins().sshr_imm_s(t, sh)
                }
            };
            match (op, cc) {
                (_, 4) => return self.b.ins().icmp_imm_s(IntCC::Equal, res, 0),
                (_, 8) => {
                    let s = self.sign_bit(res, size);
                    return self.b.ins().icmp_imm_s(IntCC::NotEqual, s, 0);
                }
                (FlagOp::Sub, 2) => return self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv),
                (FlagOp::Sub, 6) => return self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, a, bv),
                (FlagOp::Sub, 12) => {
                    let (x, y) = (sx(self, a), sx(self, bv));
                    return self.b.ins().icmp(IntCC::SignedLessThan, x, y);
                }
                (FlagOp::Sub, 14) => {
                    let (x, y) = (sx(self, a), sx(self, bv));
                    return self.b.ins().icmp(IntCC::SignedLessThanOrEqual, x, y);
                }
                (FlagOp::Logic, 0 | 2) => return self.b.ins().iconst(types::I8, 0),
                (FlagOp::Logic, 6) => return self.b.ins().icmp_imm_s(IntCC::Equal, res, 0),
                (FlagOp::Logic, 12) => {
                    let s = self.sign_bit(res, size);
                    return self.b.ins().icmp_imm_s(IntCC::NotEqual, s, 0);
                }
                (FlagOp::Logic, 14) => {
                    let z = self.b.ins().icmp_imm_s(IntCC::Equal, res, 0);
                    let s = self.sign_bit(res, size);
                    let s = self.b.ins().icmp_imm_s(IntCC::NotEqual, s, 0);
                    return self.b.ins().bor(z, s);
                }
                (_, 2) => {
                    let c = self.cf();
                    return self.b.ins().icmp_imm_s(IntCC::NotEqual, c, 0);
                }
                (_, 6) => {
                    let c = self.cf();
                    let c = self.b.ins().icmp_imm_s(IntCC::NotEqual, c, 0);
                    let z = self.b.ins().icmp_imm_s(IntCC::Equal, res, 0);
                    return self.b.ins().bor(c, z);
                }
                _ => {}
            }
        }
        if self.known == Known::Unknown && matches!(cc, 2 | 4 | 6 | 8 | 12 | 14) {
            return self.condition_from_state(cc);
        }
        self.condition_by_flags(cc)
    }

    /// The state's lazy record: its operation (i32) and its result and
    /// operands moved to the top of the register, so that comparing them
    /// compares the values at their size, bits above it ignored.
    fn state_record(&mut self) -> (Value, Value, Value, Value) {
        let op = self.b.ins().load(types::I32, mem_flags(), self.state, LZ_OFF[OP]);
        let [res, a, bv] = self.record_values([LZ_OFF[RES], LZ_OFF[SRC1], LZ_OFF[SRC2]]);
        (op, res, a, bv)
    }

    /// The state's lazy-record fields at `offs`, moved to the top of the
    /// register by the record's size.
    fn record_values<const N: usize>(&mut self, offs: [i32; N]) -> [Value; N] {
        let fl = mem_flags();
        let size = self.b.ins().uload32(fl, self.state, LZ_OFF[1]);
        let bits = self.b.ins().ishl_imm_s(size, 3);
        let sixty_four = self.iconst(64);
        let sh = self.b.ins().isub(sixty_four, bits);
        offs.map(|o| {
            let v = self.b.ins().load(types::I64, fl, self.state, o);
            self.b.ins().ishl(v, sh)
        })
    }

    /// Condition `cc` (2, 4, 6, 8, 12 or 14) from the state's lazy record
    /// without a call when its producer is a SUB/CMP or a logic operation
    /// (any producer for ZF and SF), else through the helper.
    fn condition_from_state(&mut self, cc: u8) -> Value {
        let (op, res, a, bv) = self.state_record();
        let zf = self.b.ins().icmp_imm_s(IntCC::Equal, res, 0);
        let sf = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, res, 0);
        let is_sub = self.b.ins().icmp_imm_s(IntCC::Equal, op, FlagOp::Sub as i64);
        let is_logic = self.b.ins().icmp_imm_s(IntCC::Equal, op, FlagOp::Logic as i64);
        let (fast, v) = match cc {
            4 | 8 => {
                let lazy = self.b.ins().icmp_imm_s(IntCC::NotEqual, op, FlagOp::None as i64);
                (lazy, if cc == 4 { zf } else { sf })
            }
            _ => {
                let (sub, logic) = match cc {
                    2 => (self.b.ins().icmp(IntCC::UnsignedLessThan, a, bv), self.b.ins().iconst(types::I8, 0)),
                    6 => (self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, a, bv), zf),
                    12 => (self.b.ins().icmp(IntCC::SignedLessThan, a, bv), sf),
                    _ => (self.b.ins().icmp(IntCC::SignedLessThanOrEqual, a, bv), self.b.ins().bor(zf, sf)),
                };
                let fast = self.b.ins().bor(is_sub, is_logic);
                (fast, self.b.ins().select(is_sub, sub, logic))
            }
        };
        let join = self.b.create_block();
        let out = self.b.append_block_param(join, types::I8);
        let slow = self.b.create_block();
        self.b.ins().brif(fast, join, &[v.into()], slow, &[]);
        self.enter_block(slow);
        let c = self.condition_by_flags(cc);
        self.b.ins().jump(join, &[c.into()]);
        self.enter_block(join);
        out
    }

    /// Condition `cc` (even: the positive form) from the six flags.
    fn condition_by_flags(&mut self, cc: u8) -> Value {
        let need = match cc {
            0 => flags::OF,
            2 => flags::CF,
            4 => flags::ZF,
            6 => flags::CF | flags::ZF,
            8 => flags::SF,
            10 => flags::PF,
            12 => flags::SF | flags::OF,
            _ => flags::SF | flags::OF | flags::ZF,
        };
        let f = match self.known {
            Known::Eager(rf) => rf,
            // The condition reads only new bits: no old flags needed.
            Known::Partial { keep, bits, .. } if need & keep == 0 => bits,
            Known::Partial { .. } => self.materialize(),
            _ => self.flags_by_helper(),
        };
        let bit = |tx: &mut Self, m: u64| {
            let t = tx.b.ins().band_imm_s(f, m as i64);
            tx.b.ins().icmp_imm_s(IntCC::NotEqual, t, 0)
        };
        match cc {
            0 => bit(self, flags::OF),
            2 => bit(self, flags::CF),
            4 => bit(self, flags::ZF),
            6 => bit(self, flags::CF | flags::ZF),
            8 => bit(self, flags::SF),
            10 => bit(self, flags::PF),
            _ => {
                let s = bit(self, flags::SF);
                let o = bit(self, flags::OF);
                let lt = self.b.ins().bxor(s, o);
                if cc == 12 {
                    lt
                } else {
                    let z = bit(self, flags::ZF);
                    self.b.ins().bor(lt, z)
                }
            }
        }
    }

    /// ZF, SF and PF of `r` (masked to `size`) as RFLAGS bits.
    pub(super) fn szp(&mut self, r: Value, size: u32) -> Value {
        let z = self.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
        let z = self.b.ins().uextend(types::I64, z);
        let z = self.b.ins().ishl_imm_s(z, 6);
        let s = self.sign_bit(r, size);
        let s = self.b.ins().ishl_imm_s(s, 7);
        let low = self.b.ins().band_imm_s(r, 0xff);
        let pc = self.b.ins().popcnt(low);
        let odd = self.b.ins().band_imm_s(pc, 1);
        let p = self.b.ins().bxor_imm_s(odd, 1);
        let p = self.b.ins().ishl_imm_s(p, 2);
        let zs = self.b.ins().bor(z, s);
        self.b.ins().bor(zs, p)
    }
}
