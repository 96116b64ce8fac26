//! Descriptors, segment loads and far transfers (SDM Vol. 3A chapter 3 and
//! §5.5–5.8).
//!
//! Descriptor-table reads are implicit supervisor accesses. Every load checks
//! the selector against the table limit, the descriptor type, the privilege
//! rules and the present bit, and sets the accessed bit as the CPU does.
//! Far JMP and CALL reach code segments directly or through call gates (16-
//! and 32-bit gates in legacy mode, 64-bit gates in IA-32e mode); a CALL
//! through a gate to a more privileged non-conforming segment switches to the
//! stack named in the TSS and, for legacy gates, copies the gate's parameter
//! count of words or doublewords from the caller's stack. TSS descriptors and
//! task gates lead to a task switch ([`crate::ops::task`]).

use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::ops::task::TaskSource;
use crate::state::{seg_attr, sreg, Segment};

/// A raw 8-byte descriptor with the fields decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub raw: u64,
    /// For 16-byte system descriptors in long mode: the upper 8 bytes.
    pub raw_hi: u64,
}

impl Descriptor {
    pub fn attr(&self) -> u32 {
        (((self.raw >> 40) & 0xff) as u32) | ((((self.raw >> 52) & 0xf) as u32) << 12)
    }
    pub fn base(&self) -> u64 {
        ((self.raw >> 16) & 0xff_ffff) | (((self.raw >> 56) & 0xff) << 24) | (self.raw_hi << 32)
    }
    pub fn limit(&self) -> u32 {
        let l = ((self.raw & 0xffff) | ((self.raw >> 32) & 0xf_0000)) as u32;
        if self.attr() & seg_attr::G != 0 {
            (l << 12) | 0xfff
        } else {
            l
        }
    }
    pub fn dpl(&self) -> u8 {
        ((self.raw >> 45) & 3) as u8
    }
    pub fn present(&self) -> bool {
        self.raw & (1 << 47) != 0
    }
    /// Code or data (S = 1).
    pub fn is_code_data(&self) -> bool {
        self.raw & (1 << 44) != 0
    }
    pub fn typ(&self) -> u32 {
        ((self.raw >> 40) & 0xf) as u32
    }
    pub fn is_code(&self) -> bool {
        self.is_code_data() && self.typ() & seg_attr::TYPE_CODE != 0
    }
    pub fn to_segment(&self, selector: u16) -> Segment {
        Segment { base: self.base(), limit: self.limit(), attr: self.attr(), selector, _pad: [0; 3] }
    }
    /// Gate fields: target selector and offset (64-bit gates use `raw_hi`).
    pub fn gate_selector(&self) -> u16 {
        ((self.raw >> 16) & 0xffff) as u16
    }
    pub fn gate_offset(&self, long: bool) -> u64 {
        let lo = (self.raw & 0xffff) | ((self.raw >> 32) & 0xffff_0000);
        if long {
            lo | ((self.raw_hi & 0xffff_ffff) << 32)
        } else {
            lo
        }
    }
    pub fn gate_ist(&self) -> u8 {
        ((self.raw >> 32) & 7) as u8
    }
    pub fn gate_param_count(&self) -> u8 {
        ((self.raw >> 32) & 0x1f) as u8
    }
}

/// #GP, #NP, #SS or #TS with a selector error code (the RPL bits cleared).
#[inline]
pub fn sel_err(selector: u16) -> u16 {
    selector & !3
}

impl Cpu {
    /// Linear address of the descriptor for `selector`, checked against the
    /// table limit (`size` is 8, or 16 for long-mode system descriptors).
    fn descriptor_addr(&self, selector: u16, size: u64) -> Fault<u64> {
        let index = u64::from(selector & !7);
        let (base, limit) = if selector & 4 != 0 {
            let l = &self.state.ldtr;
            if l.attr & seg_attr::UNUSABLE != 0 || l.attr & seg_attr::P == 0 {
                return Err(Exception::GeneralProtection(sel_err(selector)));
            }
            (l.base, u64::from(l.limit))
        } else {
            (self.state.gdtr.base, u64::from(self.state.gdtr.limit))
        };
        if index + size - 1 > limit {
            return Err(Exception::GeneralProtection(sel_err(selector)));
        }
        Ok(base.wrapping_add(index))
    }

    /// Read the descriptor for a non-null selector.
    pub fn read_descriptor(&mut self, selector: u16) -> Fault<Descriptor> {
        let addr = self.descriptor_addr(selector, 8)?;
        let raw = u64::from_le_bytes(self.read_sys::<8>(addr)?);
        Ok(Descriptor { raw, raw_hi: 0 })
    }

    /// Read a 16-byte system descriptor (LDT, TSS, gates in long mode).
    pub fn read_system_descriptor(&mut self, selector: u16) -> Fault<Descriptor> {
        if !self.state.long_mode() {
            return self.read_descriptor(selector);
        }
        let addr = self.descriptor_addr(selector, 16)?;
        let raw = u64::from_le_bytes(self.read_sys::<8>(addr)?);
        let raw_hi = u64::from_le_bytes(self.read_sys::<8>(addr + 8)?);
        Ok(Descriptor { raw, raw_hi })
    }

    /// Set the accessed bit of a code/data descriptor, as a segment load
    /// does: a locked OR of the bit into the descriptor (another processor
    /// may be updating it too).
    pub(crate) fn set_accessed(&mut self, selector: u16, d: &Descriptor) -> Fault<()> {
        if d.raw & (1 << 40) == 0 {
            let addr = self.descriptor_addr(selector, 8)?;
            self.locked_sys_bits(addr + 5, 1, true)?;
        }
        Ok(())
    }

    /// MOV/POP to a data segment register or SS, with protected-mode checks.
    pub fn load_segment(&mut self, seg: usize, selector: u16) -> Fault<()> {
        if !self.state.protected() || self.state.v86() {
            self.load_real_segment(seg, selector);
            if seg == sreg::SS {
                self.state.interrupt_shadow = 1;
                self.state.events.mov_ss = true;
                self.block_break = true;
            }
            return Ok(());
        }
        let cpl = self.state.cpl;
        let rpl = (selector & 3) as u8;
        if selector & !3 == 0 {
            if seg == sreg::SS && !(self.state.code64() && cpl != 3 && rpl == cpl) {
                return Err(Exception::GeneralProtection(0));
            }
            let s = &mut self.state.seg[seg];
            *s = Segment {
                selector,
                attr: seg_attr::UNUSABLE | ((u32::from(rpl)) << seg_attr::DPL_SHIFT),
                ..Default::default()
            };
            if seg == sreg::SS {
                // A null SS in 64-bit mode stays usable for stack accesses.
                s.attr = seg_attr::P
                    | seg_attr::S
                    | seg_attr::TYPE_RW
                    | seg_attr::DB
                    | (u32::from(rpl) << seg_attr::DPL_SHIFT);
                self.state.interrupt_shadow = 1;
                self.state.events.mov_ss = true;
                self.block_break = true;
            }
            return Ok(());
        }
        let d = self.read_descriptor(selector)?;
        let gp = Exception::GeneralProtection(sel_err(selector));
        if seg == sreg::SS {
            let writable_data = d.is_code_data() && !d.is_code() && d.typ() & seg_attr::TYPE_RW != 0;
            if rpl != cpl || d.dpl() != cpl || !writable_data {
                return Err(gp);
            }
            if !d.present() {
                return Err(Exception::StackFault(sel_err(selector)));
            }
            self.state.interrupt_shadow = 1;
            self.state.events.mov_ss = true;
            self.block_break = true;
        } else {
            if !d.is_code_data() || (d.is_code() && d.typ() & seg_attr::TYPE_RW == 0) {
                return Err(gp);
            }
            let conforming_code = d.is_code() && d.typ() & seg_attr::TYPE_DC != 0;
            if !conforming_code && (d.dpl() < cpl || d.dpl() < rpl) {
                return Err(gp);
            }
            if !d.present() {
                return Err(Exception::SegmentNotPresent(sel_err(selector)));
            }
        }
        self.set_accessed(selector, &d)?;
        self.state.seg[seg] = d.to_segment(selector);
        self.state.seg[seg].attr |= seg_attr::TYPE_ACCESSED;
        Ok(())
    }

    /// Load CS for a far transfer to a code segment at privilege `new_cpl`
    /// (the caller has done the transfer-specific checks).
    pub(crate) fn set_cs(&mut self, selector: u16, d: &Descriptor, new_cpl: u8) -> Fault<()> {
        self.set_accessed(selector, d)?;
        let mut s = d.to_segment((selector & !3) | u16::from(new_cpl));
        s.attr |= seg_attr::TYPE_ACCESSED;
        self.state.seg[sreg::CS] = s;
        self.state.cpl = new_cpl;
        self.block_break = true;
        Ok(())
    }

    /// Check a code-segment descriptor as a far JMP/CALL target (no gate) and
    /// return the CPL after the transfer.
    pub(crate) fn check_far_code(&mut self, selector: u16, d: &Descriptor) -> Fault<u8> {
        let gp = Exception::GeneralProtection(sel_err(selector));
        let cpl = self.state.cpl;
        let rpl = (selector & 3) as u8;
        if !d.is_code() {
            return Err(gp);
        }
        if d.typ() & seg_attr::TYPE_DC != 0 {
            if d.dpl() > cpl {
                return Err(gp);
            }
        } else if rpl > cpl || d.dpl() != cpl {
            return Err(gp);
        }
        if self.state.long_mode() && d.attr() & seg_attr::L != 0 && d.attr() & seg_attr::DB != 0 {
            return Err(gp);
        }
        if !d.present() {
            return Err(Exception::SegmentNotPresent(sel_err(selector)));
        }
        Ok(cpl)
    }

    /// Far JMP to `selector:offset`: a code segment, a call gate, a TSS or a
    /// task gate (SDM Vol. 2 JMP; Vol. 3A §5.8, §8.3).
    pub(crate) fn far_jump(&mut self, selector: u16, offset: u64) -> Fault<()> {
        if !self.state.protected() || self.state.v86() {
            self.load_real_segment(sreg::CS, selector);
            self.state.rip = offset & 0xffff_ffff;
            self.block_break = true;
            return Ok(());
        }
        if selector & !3 == 0 {
            return Err(Exception::GeneralProtection(0));
        }
        let d = self.read_descriptor(selector)?;
        if d.is_code_data() {
            let cpl = self.check_far_code(selector, &d)?;
            let offset = self.check_far_offset(&d, offset)?;
            self.set_cs(selector, &d, cpl)?;
            self.state.rip = offset;
            return Ok(());
        }
        match self.system_target(selector, d)? {
            FarTarget::Gate(gate, cs_sel, cs) => {
                // A JMP through a call gate never changes the privilege level.
                let cpl = self.state.cpl;
                let conforming = cs.typ() & seg_attr::TYPE_DC != 0;
                if (conforming && cs.dpl() > cpl) || (!conforming && cs.dpl() != cpl) {
                    return Err(Exception::GeneralProtection(sel_err(cs_sel)));
                }
                if !cs.present() {
                    return Err(Exception::SegmentNotPresent(sel_err(cs_sel)));
                }
                let offset = self.check_far_offset(&cs, gate_offset(&gate, self.state.long_mode()))?;
                self.set_cs(cs_sel, &cs, cpl)?;
                self.state.rip = offset;
                Ok(())
            }
            FarTarget::Task(tss) => self.task_transfer(tss, TaskSource::Jmp),
        }
    }

    /// Far CALL to `selector:offset` with operand size `size` (2, 4 or 8):
    /// a code segment, a call gate (with a stack switch and parameter copy
    /// when it leads inward), a TSS or a task gate.
    pub(crate) fn far_call(&mut self, selector: u16, offset: u64, size: u32) -> Fault<()> {
        let old_cs = u64::from(self.state.seg[sreg::CS].selector);
        let old_rip = self.state.rip;
        if !self.state.protected() || self.state.v86() {
            let saved_sp = self.state.gpr[4];
            let r = self.push(size, old_cs).and_then(|_| self.push(size, old_rip));
            if r.is_err() {
                self.state.gpr[4] = saved_sp;
                return r;
            }
            self.load_real_segment(sreg::CS, selector);
            self.state.rip = offset;
            self.block_break = true;
            return Ok(());
        }
        if selector & !3 == 0 {
            return Err(Exception::GeneralProtection(0));
        }
        let d = self.read_descriptor(selector)?;
        if d.is_code_data() {
            let cpl = self.check_far_code(selector, &d)?;
            let offset = self.check_far_offset(&d, offset)?;
            let saved_sp = self.state.gpr[4];
            let r = self.push(size, old_cs).and_then(|_| self.push(size, old_rip));
            if r.is_err() {
                self.state.gpr[4] = saved_sp;
                return r;
            }
            self.set_cs(selector, &d, cpl)?;
            self.state.rip = offset;
            return Ok(());
        }
        match self.system_target(selector, d)? {
            FarTarget::Gate(gate, cs_sel, cs) => {
                if !cs.present() {
                    return Err(Exception::SegmentNotPresent(sel_err(cs_sel)));
                }
                let saved = self.state;
                let r = self.call_gate(&gate, cs_sel, &cs);
                if r.is_err() {
                    self.state = saved;
                }
                r
            }
            FarTarget::Task(tss) => self.task_transfer(tss, TaskSource::Call),
        }
    }

    /// Checks on a system descriptor named by a far JMP/CALL: a call gate
    /// (returned with its code segment, checked for type and DPL ≤ CPL) or a
    /// task (returned as the TSS selector).
    fn system_target(&mut self, selector: u16, d: Descriptor) -> Fault<FarTarget> {
        let gp = Exception::GeneralProtection(sel_err(selector));
        let cpl = self.state.cpl;
        let rpl = (selector & 3) as u8;
        let long = self.state.long_mode();
        match d.typ() {
            // Call gates: 16-bit (4) and 32-bit (12) in legacy mode; in IA-32e
            // mode type 12 is the 16-byte 64-bit gate and type 4 is invalid.
            t @ (4 | 12) if !(long && t == 4) => {
                let gate = if long { self.read_system_descriptor(selector)? } else { d };
                if long && (gate.raw_hi >> 40) & 0x1f != 0 {
                    return Err(gp);
                }
                if gate.dpl() < cpl || gate.dpl() < rpl {
                    return Err(gp);
                }
                if !gate.present() {
                    return Err(Exception::SegmentNotPresent(sel_err(selector)));
                }
                let cs_sel = gate.gate_selector();
                if cs_sel & !3 == 0 {
                    return Err(Exception::GeneralProtection(0));
                }
                let cs = self.read_descriptor(cs_sel)?;
                let cs_gp = Exception::GeneralProtection(sel_err(cs_sel));
                if !cs.is_code() || cs.dpl() > cpl {
                    return Err(cs_gp);
                }
                if long && (cs.attr() & seg_attr::L == 0 || cs.attr() & seg_attr::DB != 0) {
                    return Err(cs_gp);
                }
                Ok(FarTarget::Gate(gate, cs_sel, cs))
            }
            5 if !long => {
                // Task gate: its DPL guards it; the TSS it names is checked by the switch.
                if d.dpl() < cpl || d.dpl() < rpl {
                    return Err(gp);
                }
                if !d.present() {
                    return Err(Exception::SegmentNotPresent(sel_err(selector)));
                }
                Ok(FarTarget::Task(d.gate_selector()))
            }
            1 | 9 if !long => {
                if d.dpl() < cpl || d.dpl() < rpl {
                    return Err(gp);
                }
                Ok(FarTarget::Task(selector))
            }
            _ => Err(gp),
        }
    }

    /// JMP or CALL to a task; a T bit in the new TSS raises the #DB trap.
    fn task_transfer(&mut self, tss: u16, src: TaskSource) -> Fault<()> {
        if self.task_switch(tss, src, None, false)? {
            return Err(Exception::DebugTrap);
        }
        Ok(())
    }

    /// Check a far-transfer offset against the target code segment.
    fn check_far_offset(&self, cs: &Descriptor, offset: u64) -> Fault<u64> {
        if self.state.long_mode() && cs.attr() & seg_attr::L != 0 {
            if !crate::cpu::is_canonical(offset) {
                return Err(Exception::GeneralProtection(0));
            }
        } else if offset > u64::from(cs.limit()) {
            return Err(Exception::GeneralProtection(0));
        }
        Ok(offset)
    }

    /// CALL through a call gate (the caller restores the state on a fault).
    fn call_gate(&mut self, gate: &Descriptor, cs_sel: u16, cs: &Descriptor) -> Fault<()> {
        let long = self.state.long_mode();
        let gsize: u32 = if long {
            8
        } else if gate.typ() == 12 {
            4
        } else {
            2
        };
        let offset = self.check_far_offset(cs, gate_offset(gate, long))?;
        let cpl = self.state.cpl;
        let old_cs = u64::from(self.state.seg[sreg::CS].selector);
        let old_rip = self.state.rip;
        let conforming = cs.typ() & seg_attr::TYPE_DC != 0;
        if conforming || cs.dpl() == cpl {
            // Same privilege.
            if long {
                // The pushes are 64-bit whatever the caller's mode.
                self.set_cs(cs_sel, cs, cpl)?;
            }
            self.push(gsize, old_cs)?;
            self.push(gsize, old_rip)?;
            self.set_cs(cs_sel, cs, cpl)?;
            self.state.rip = offset;
            return Ok(());
        }
        // More privilege: a new stack from the TSS.
        let new_cpl = cs.dpl();
        let old_ss = u64::from(self.state.seg[sreg::SS].selector);
        let old_sp = self.state.gpr[4];
        if long {
            let rsp = self.tss_stack64(new_cpl)?;
            if !crate::cpu::is_canonical(rsp) {
                return Err(Exception::StackFault(0));
            }
            self.set_cs(cs_sel, cs, new_cpl)?;
            self.state.seg[sreg::SS] = Segment {
                selector: u16::from(new_cpl),
                attr: seg_attr::P
                    | seg_attr::S
                    | seg_attr::TYPE_RW
                    | seg_attr::TYPE_ACCESSED
                    | seg_attr::DB
                    | (u32::from(new_cpl) << seg_attr::DPL_SHIFT),
                ..Default::default()
            };
            self.state.gpr[4] = rsp;
            for v in [old_ss, old_sp, old_cs, old_rip] {
                self.push(8, v)?;
            }
            self.state.rip = offset;
            return Ok(());
        }
        let (new_ss, new_sp) = self.tss_stack32(new_cpl)?;
        let ts = Exception::InvalidTss(sel_err(new_ss));
        if new_ss & !3 == 0 {
            return Err(Exception::InvalidTss(0));
        }
        let ssd =
            self.read_descriptor(new_ss).map_err(|e| if let Exception::GeneralProtection(_) = e { ts } else { e })?;
        let writable_data = ssd.is_code_data() && !ssd.is_code() && ssd.typ() & seg_attr::TYPE_RW != 0;
        if (new_ss & 3) as u8 != new_cpl || ssd.dpl() != new_cpl || !writable_data {
            return Err(ts);
        }
        if !ssd.present() {
            return Err(Exception::StackFault(sel_err(new_ss)));
        }
        // Parameters come from the caller's stack, read at the caller's privilege.
        let count = u64::from(gate.gate_param_count());
        let mut params = Vec::with_capacity(count as usize);
        for i in 0..count {
            params.push(self.peek(i * u64::from(gsize), gsize)?);
        }
        self.set_accessed(new_ss, &ssd)?;
        self.state.cpl = new_cpl;
        let mut ss = ssd.to_segment(new_ss);
        ss.attr |= seg_attr::TYPE_ACCESSED;
        self.state.seg[sreg::SS] = ss;
        self.state.gpr[4] = new_sp;
        let stack_err =
            |e: Exception| if let Exception::StackFault(_) = e { Exception::StackFault(sel_err(new_ss)) } else { e };
        self.push(gsize, old_ss).map_err(stack_err)?;
        self.push(gsize, old_sp).map_err(stack_err)?;
        for v in params.iter().rev() {
            self.push(gsize, *v).map_err(stack_err)?;
        }
        self.push(gsize, old_cs).map_err(stack_err)?;
        self.push(gsize, old_rip).map_err(stack_err)?;
        self.set_cs(cs_sel, cs, new_cpl)?;
        self.state.rip = offset;
        Ok(())
    }

    /// SS:ESP for privilege level `pl` from a 32- or 16-bit TSS.
    pub(crate) fn tss_stack32(&mut self, pl: u8) -> Fault<(u16, u64)> {
        let tr = self.state.tr;
        let err = Exception::InvalidTss(sel_err(tr.selector));
        let (off, width) = if tr.attr & 8 != 0 { (4 + 8 * u64::from(pl), 4u64) } else { (2 + 4 * u64::from(pl), 2) };
        if off + 2 * width - 1 > u64::from(tr.limit) {
            return Err(err);
        }
        let base = tr.base.wrapping_add(off) & 0xffff_ffff;
        if width == 4 {
            let esp = u32::from_le_bytes(self.read_sys::<4>(base)?);
            let ss = u16::from_le_bytes(self.read_sys::<2>(base + 4)?);
            Ok((ss, u64::from(esp)))
        } else {
            let sp = u16::from_le_bytes(self.read_sys::<2>(base)?);
            let ss = u16::from_le_bytes(self.read_sys::<2>(base + 2)?);
            Ok((ss, u64::from(sp)))
        }
    }

    /// RSP for privilege level `pl` from the 64-bit TSS.
    pub(crate) fn tss_stack64(&mut self, pl: u8) -> Fault<u64> {
        let tr = self.state.tr;
        let off = 4 + 8 * u64::from(pl);
        if off + 7 > u64::from(tr.limit) {
            return Err(Exception::InvalidTss(sel_err(tr.selector)));
        }
        Ok(u64::from_le_bytes(self.read_sys::<8>(tr.base.wrapping_add(off))?))
    }
}

/// What a far JMP/CALL through a system descriptor leads to.
enum FarTarget {
    /// A call gate, its code-segment selector and descriptor.
    Gate(Descriptor, u16, Descriptor),
    /// A task: the TSS selector.
    Task(u16),
}

/// The entry point of a call gate (16-bit gates use only the low word).
fn gate_offset(gate: &Descriptor, long: bool) -> u64 {
    if long {
        gate.gate_offset(true)
    } else if gate.typ() == 4 {
        gate.gate_offset(false) & 0xffff
    } else {
        gate.gate_offset(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_fields() {
        // Flat 4 GiB 32-bit code, DPL 0: 0x00cf9a000000ffff.
        let d = Descriptor { raw: 0x00cf_9a00_0000_ffff, raw_hi: 0 };
        assert_eq!(d.base(), 0);
        assert_eq!(d.limit(), 0xffff_ffff);
        assert!(d.is_code() && d.present());
        assert_eq!(d.dpl(), 0);
        assert_eq!(d.attr() & seg_attr::DB, seg_attr::DB);
        // 64-bit code, DPL 3: 0x00affa000000ffff.
        let d = Descriptor { raw: 0x00af_fa00_0000_ffff, raw_hi: 0 };
        assert_eq!(d.dpl(), 3);
        assert_eq!(d.attr() & seg_attr::L, seg_attr::L);
        // Base scattered over three fields.
        let d = Descriptor { raw: 0x1200_9234_5678_0000, raw_hi: 0 };
        assert_eq!(d.base(), 0x1234_5678);
    }
}

#[cfg(test)]
mod gate_tests {
    use crate::exception::Exception;
    use crate::ops::testutil::*;
    use crate::state::sreg;

    fn far_call32(sel: u16, off: u32) -> Vec<u8> {
        let mut v = vec![0x9a];
        v.extend_from_slice(&off.to_le_bytes());
        v.extend_from_slice(&sel.to_le_bytes());
        v
    }

    fn far_jmp32(sel: u16, off: u32) -> Vec<u8> {
        let mut v = far_call32(sel, off);
        v[0] = 0xea;
        v
    }

    fn read32(c: &crate::cpu::Cpu, a: u64) -> u64 {
        u64::from(c.mem().read_u32(a).unwrap())
    }

    #[test]
    fn call_gate_to_inner_level_copies_parameters_and_retf_returns() {
        let mut c = prot_mode();
        set_gdt(&c, 10, gate(SEL_CODE32, 0x30000, 12, 3, 2));
        to_user(&mut c, SEL_UCODE32);
        c.mem().write_u32(USTACK - 8, 0x1111).unwrap();
        c.mem().write_u32(USTACK - 4, 0x2222).unwrap();
        c.state.gpr[4] = USTACK - 8;
        exec_bytes(&mut c, &far_call32(0x53, 0xdead)).unwrap();
        assert_eq!(c.state.cpl, 0);
        assert_eq!(c.state.seg[sreg::CS].selector, SEL_CODE32);
        assert_eq!(c.state.rip, 0x30000);
        assert_eq!(c.state.seg[sreg::SS].selector, SEL_DATA);
        assert_eq!(c.state.gpr[4], KSTACK - 24);
        let frame: Vec<u64> = (1..=6).map(|i| read32(&c, KSTACK - 4 * i)).collect();
        assert_eq!(frame, vec![u64::from(SEL_UDATA), USTACK - 8, 0x2222, 0x1111, u64::from(SEL_UCODE32), CODE + 7]);
        // The handler loads a ring-0 ES, then RETF 8 to ring 3.
        load_cache(&mut c, sreg::ES, SEL_DATA);
        exec_bytes(&mut c, &[0xca, 0x08, 0x00]).unwrap();
        assert_eq!(c.state.cpl, 3);
        assert_eq!(c.state.rip, CODE + 7);
        assert_eq!(c.state.seg[sreg::CS].selector, SEL_UCODE32);
        assert_eq!(c.state.seg[sreg::SS].selector, SEL_UDATA);
        assert_eq!(c.state.gpr[4], USTACK);
        // ES held a DPL-0 data segment: nulled on the way out. DS stays.
        assert_eq!(c.state.seg[sreg::ES].selector, 0);
        assert_eq!(c.state.seg[sreg::DS].selector, SEL_UDATA);
    }

    #[test]
    fn sixteen_bit_gate_and_same_level_gate() {
        let mut c = prot_mode();
        // 16-bit gate (type 4) with one word parameter, into a 16-bit ring-0 segment.
        set_gdt(&c, 10, gate(SEL_CODE16, 0x1234, 4, 3, 1));
        to_user(&mut c, SEL_UCODE32);
        c.mem().write_u16(USTACK - 2, 0xbeef).unwrap();
        c.state.gpr[4] = USTACK - 2;
        exec_bytes(&mut c, &far_call32(0x50, 0)).unwrap();
        assert_eq!((c.state.cpl, c.state.rip), (0, 0x1234));
        assert_eq!(c.state.gpr[4], KSTACK - 10);
        let words: Vec<u16> = (1..=5).map(|i| c.mem().read_u16(KSTACK - 2 * i).unwrap()).collect();
        assert_eq!(words, vec![SEL_UDATA, (USTACK - 2) as u16, 0xbeef, SEL_UCODE32, (CODE + 7) as u16]);
        // A gate to a ring-3 conforming... here: a DPL-3 gate to ring-3 code from ring 3.
        let mut c = prot_mode();
        set_gdt(&c, 10, gate(SEL_UCODE32, 0x40000, 12, 3, 3));
        to_user(&mut c, SEL_UCODE32);
        exec_bytes(&mut c, &far_call32(0x53, 0)).unwrap();
        assert_eq!((c.state.cpl, c.state.rip, c.state.gpr[4]), (3, 0x40000, USTACK - 8));
        assert_eq!(read32(&c, USTACK - 8), CODE + 7);
        assert_eq!(read32(&c, USTACK - 4), u64::from(SEL_UCODE32));
    }

    #[test]
    fn call_gate_faults() {
        let mut c = prot_mode();
        set_gdt(&c, 10, gate(SEL_CODE32, 0x30000, 12, 0, 0)); // DPL 0
        set_gdt(&c, 11, gate(SEL_CODE32, 0x30000, 12, 3, 0) & !(1 << 47)); // not present
        set_gdt(&c, 12, gate(SEL_DATA, 0x30000, 12, 3, 0)); // target is data
        set_gdt(&c, 13, gate(0, 0x30000, 12, 3, 0)); // null target
        set_gdt(&c, 14, gate(SEL_CODE32, 0x30000, 12, 3, 0));
        to_user(&mut c, SEL_UCODE32);
        let before = c.state;
        assert_eq!(exec_bytes(&mut c, &far_call32(0x53, 0)), Err(Exception::GeneralProtection(0x50)));
        assert_eq!(exec_bytes(&mut c, &far_call32(0x5b, 0)), Err(Exception::SegmentNotPresent(0x58)));
        assert_eq!(exec_bytes(&mut c, &far_call32(0x63, 0)), Err(Exception::GeneralProtection(SEL_DATA)));
        assert_eq!(exec_bytes(&mut c, &far_call32(0x6b, 0)), Err(Exception::GeneralProtection(0)));
        // JMP through a gate cannot change the privilege level.
        assert_eq!(exec_bytes(&mut c, &far_jmp32(0x73, 0)), Err(Exception::GeneralProtection(SEL_CODE32)));
        // A bad ring-0 stack in the TSS: #TS(SS), then a stack that faults: #SS(SS).
        c.mem().write_u32(TSS + 8, u32::from(SEL_CODE32)).unwrap();
        assert_eq!(exec_bytes(&mut c, &far_call32(0x73, 0)), Err(Exception::InvalidTss(SEL_CODE32)));
        set_gdt(&c, 15, seg_desc(0, 0xfff, 0x93, 0x4)); // 4 KiB ring-0 stack
        c.mem().write_u32(TSS + 8, 0x78).unwrap();
        c.mem().write_u32(TSS + 4, 0x8).unwrap();
        assert_eq!(exec_bytes(&mut c, &far_call32(0x73, 0)), Err(Exception::StackFault(0x78)));
        // Nothing changed.
        assert_eq!(c.state, before);
        // A gate offset beyond the target limit: #GP(0).
        set_gdt(&c, 16, seg_desc(0, 0xff, 0x9a, 0x4));
        set_gdt(&c, 17, gate(0x80, 0x100, 12, 3, 0));
        assert_eq!(exec_bytes(&mut c, &far_call32(0x8b, 0)), Err(Exception::GeneralProtection(0)));
    }

    #[test]
    fn far_jmp_and_call_check_the_offset_against_the_limit() {
        let mut c = prot_mode();
        set_gdt(&c, 16, seg_desc(0, 0xff, 0x9a, 0x4));
        assert_eq!(exec_bytes(&mut c, &far_jmp32(0x80, 0x100)), Err(Exception::GeneralProtection(0)));
        assert_eq!(exec_bytes(&mut c, &far_call32(0x80, 0x100)), Err(Exception::GeneralProtection(0)));
        assert_eq!(c.state.gpr[4], KSTACK);
        exec_bytes(&mut c, &far_jmp32(0x80, 0xff)).unwrap();
        assert_eq!((c.state.seg[sreg::CS].selector, c.state.rip), (0x80, 0xff));
    }

    #[test]
    fn retf_checks_the_return_offset() {
        let mut c = prot_mode();
        set_gdt(&c, 16, seg_desc(0, 0xff, 0x9a, 0x4));
        c.state.gpr[4] = KSTACK - 8;
        c.mem().write_u32(KSTACK - 8, 0x100).unwrap();
        c.mem().write_u32(KSTACK - 4, 0x80).unwrap();
        assert_eq!(exec_bytes(&mut c, &[0xcb]), Err(Exception::GeneralProtection(0)));
        assert_eq!(c.state.gpr[4], KSTACK - 8);
        // Returning to an inner level is #GP(selector).
        let mut c = prot_mode();
        to_user(&mut c, SEL_UCODE32);
        c.state.gpr[4] = USTACK - 8;
        c.mem().write_u32(USTACK - 8, 0x100).unwrap();
        c.mem().write_u32(USTACK - 4, u32::from(SEL_CODE32)).unwrap();
        assert_eq!(exec_bytes(&mut c, &[0xcb]), Err(Exception::GeneralProtection(SEL_CODE32)));
    }

    #[test]
    fn long_mode_call_gate_switches_to_a_null_ss_and_back() {
        let mut c = long_mode();
        let (lo, hi) = gate64(SEL_CODE64, 0x3_0000, 12, 3, 0);
        set_gdt(&c, 10, lo);
        set_gdt(&c, 11, hi);
        to_user(&mut c, SEL_UCODE64);
        // call far qword [DATA]: the offset in the pointer is ignored.
        c.mem().write_u64(DATA, 0x1234).unwrap();
        c.mem().write_u16(DATA + 8, 0x53).unwrap();
        let mut code = vec![0x48, 0xff, 0x1c, 0x25];
        code.extend_from_slice(&(DATA as u32).to_le_bytes());
        exec_bytes(&mut c, &code).unwrap();
        assert_eq!((c.state.cpl, c.state.rip), (0, 0x3_0000));
        assert_eq!(c.state.seg[sreg::SS].selector, 0);
        assert_eq!(c.state.gpr[4], KSTACK - 32);
        let frame: Vec<u64> = (1..=4).map(|i| c.mem().read_u64(KSTACK - 8 * i).unwrap()).collect();
        assert_eq!(frame, vec![u64::from(SEL_UDATA), USTACK, u64::from(SEL_UCODE64), CODE + 8]);
        // RETFQ back to ring 3.
        exec_bytes(&mut c, &[0x48, 0xcb]).unwrap();
        assert_eq!((c.state.cpl, c.state.rip, c.state.gpr[4]), (3, CODE + 8, USTACK));
        assert_eq!(c.state.seg[sreg::SS].selector, SEL_UDATA);
        // A 16-bit gate type is invalid in IA-32e mode; so is a 32-bit code target.
        set_gdt(&c, 12, gate(SEL_CODE64, 0, 4, 3, 0));
        c.mem().write_u16(DATA + 8, 0x63).unwrap();
        assert_eq!(exec_bytes(&mut c, &code), Err(Exception::GeneralProtection(0x60)));
        let (lo, hi) = gate64(SEL_CODE32, 0x3_0000, 12, 3, 0);
        set_gdt(&c, 12, lo);
        set_gdt(&c, 13, hi);
        assert_eq!(exec_bytes(&mut c, &code), Err(Exception::GeneralProtection(SEL_CODE32)));
    }
}
