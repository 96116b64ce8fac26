//! Exception and interrupt delivery (SDM Vol. 3A §6.4–6.15) and the stack.
//!
//! Real mode goes through the IVT. Protected mode and long mode go through IDT
//! interrupt and trap gates, switching stacks through the TSS when the handler
//! runs at a more privileged level (and through the IST in long mode); a task
//! gate in a legacy IDT switches tasks ([`crate::ops::task`]). Fault-class
//! exceptions save RF = 1; NMIs stay blocked until the next IRET. A fault
//! while delivering escalates: benign + anything delivers the second; two
//! contributory faults, or a page fault followed by a contributory fault or a
//! page fault, become #DF; a fault while delivering #DF shuts the processor
//! down (a triple fault).

use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::segment::sel_err;
use crate::state::{flags, sreg, Segment};

/// How an event reaches the delivery logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// An exception raised by an instruction (or by delivery).
    Exception,
    /// INT n, INT3, INTO: gate DPL is checked against CPL.
    Software,
    /// An external interrupt (INTR or NMI): EXT is set in error codes.
    External,
}

impl Cpu {
    /// Stack address size in bytes: 8 in 64-bit mode, else SS.B.
    #[inline]
    pub(crate) fn stack_size(&self) -> u32 {
        if self.state.code64() {
            8
        } else if self.state.seg[sreg::SS].attr & crate::state::seg_attr::DB != 0 && self.state.protected() {
            4
        } else {
            2
        }
    }

    #[inline]
    fn sp_mask(&self) -> u64 {
        match self.stack_size() {
            8 => u64::MAX,
            4 => 0xffff_ffff,
            _ => 0xffff,
        }
    }

    /// Push `size` bytes of `value`.
    pub fn push(&mut self, size: u32, value: u64) -> Fault<()> {
        let mask = self.sp_mask();
        let rsp = self.state.gpr[4];
        let new = rsp.wrapping_sub(u64::from(size)) & mask;
        self.write_mem(sreg::SS, new, size, value)?;
        self.state.gpr[4] = (rsp & !mask) | new;
        Ok(())
    }

    /// Pop `size` bytes.
    pub fn pop(&mut self, size: u32) -> Fault<u64> {
        let mask = self.sp_mask();
        let rsp = self.state.gpr[4];
        let v = self.read_mem(sreg::SS, rsp & mask, size)?;
        self.state.gpr[4] = (rsp & !mask) | (rsp.wrapping_add(u64::from(size)) & mask);
        Ok(v)
    }

    /// Read the value `depth` bytes above the stack top without popping.
    pub(crate) fn peek(&mut self, depth: u64, size: u32) -> Fault<u64> {
        let mask = self.sp_mask();
        let a = self.state.gpr[4].wrapping_add(depth) & mask;
        self.read_mem(sreg::SS, a, size)
    }

    /// Raise an exception from the current instruction (RIP already rewound
    /// for faults): escalate if one is being delivered, else deliver it.
    pub(crate) fn raise(&mut self, e: Exception) {
        if e == Exception::InvalidOpcode && self.state.cpl == 3 {
            // Split execution: the engine that runs user code may implement
            // it (KVM runs user code with the host's features); if it does
            // not, that engine raises the #UD.
            if let Some(h) = &mut self.hooks {
                if h.user_invalid_opcode() {
                    return;
                }
            }
        }
        self.stats.exceptions += 1;
        let src = match e {
            Exception::SoftInt(_) | Exception::Breakpoint | Exception::Overflow => Source::Software,
            _ => Source::Exception,
        };
        if let Some(log) = self.guest_log.as_ref().filter(|l| l.int && src == Source::Exception) {
            log.check_exception(self.delivering.map(|d| d.vector()), e.vector());
        }
        if e.sets_rf() {
            // The handler returns to the faulting instruction without
            // re-triggering its code breakpoint (SDM Vol. 3B §17.3.1.1).
            self.state.rflags |= flags::RF;
        }
        if e.vector() == 1 {
            // DR7.GD is cleared on entry to the debug handler.
            self.state.dr[7] &= !crate::ops::debug::dr7::GD;
        }
        self.deliver_event(e, src);
    }

    /// Deliver an NMI (vector 2); NMIs stay blocked until the next IRET.
    pub(crate) fn deliver_nmi(&mut self) {
        self.deliver_event(Exception::Nmi, Source::External);
        self.state.nmi_blocked = 1;
    }

    /// Deliver an external interrupt with `vector`.
    pub(crate) fn deliver_external(&mut self, vector: u8) {
        self.deliver_event(Exception::SoftInt(vector), Source::External);
    }

    fn deliver_event(&mut self, e: Exception, src: Source) {
        if let Exception::PageFault { addr, .. } = e {
            self.state.cr2 = addr;
        }
        let mut current = e;
        let mut src = src;
        let mut chain = vec![e];
        loop {
            let prev = self.delivering.replace(current);
            // A fault while delivering leaves the state as it was before
            // the delivery began (a task switch excepted: its faults come
            // in the new task, and it handles them itself).
            let before = self.state;
            let result = self.deliver(current, src);
            self.delivering = prev;
            if result.is_err() && self.state.tr.selector == before.tr.selector {
                self.state = before;
                self.update_paging();
                if src == Source::Software {
                    // The fault belongs to INT n / INT3 / INTO itself: its
                    // handler returns to the instruction (SDM Vol. 3A §6.5).
                    self.state.rip = self.insn_start;
                }
            }
            if result.is_ok() && std::mem::take(&mut self.state.events.task_trap) {
                // The task gate switched to a TSS with its T bit: #DB trap.
                current = Exception::DebugTrap;
                src = Source::Exception;
                continue;
            }
            let Err(second) = result else { return };
            chain.push(second);
            if let Exception::PageFault { addr, .. } = second {
                self.state.cr2 = addr;
            }
            let first = current;
            if first == Exception::DoubleFault {
                let names: Vec<String> = chain.iter().map(|x| x.to_string()).collect();
                self.shutdown = Some(format!("triple fault: {} at {}", names.join(" -> "), self.describe_rip()));
                self.block_break = true;
                self.stop = true;
                return;
            }
            let first_pf = matches!(first, Exception::PageFault { .. });
            let second_pf = matches!(second, Exception::PageFault { .. });
            let escalate = (first.is_contributory() && second.is_contributory())
                || (first_pf && (second.is_contributory() || second_pf));
            current = if escalate { Exception::DoubleFault } else { second };
            if current.sets_rf() {
                self.state.rflags |= flags::RF;
            }
            if escalate {
                chain.push(Exception::DoubleFault);
            }
            src = Source::Exception;
            if chain.len() > 8 {
                self.shutdown = Some(format!("fault loop while delivering {e} at {}", self.describe_rip()));
                self.stop = true;
                return;
            }
        }
    }

    fn deliver(&mut self, e: Exception, src: Source) -> Fault<()> {
        let vector = e.vector();
        // Software interrupts and external interrupts push no error code.
        let error_code = if src == Source::Exception { e.error_code() } else { None };
        if let Some(log) = self.guest_log.as_ref().filter(|l| l.int && self.state.protected()) {
            // QEMU's line names the INT n instruction itself.
            let rip = if src == Source::Software { self.insn_start } else { self.state.rip };
            log.interrupt(&self.state, vector, error_code.unwrap_or(0), src == Source::Software, rip);
        }
        self.state.halted = 0;
        self.block_break = true;
        if !self.state.protected() {
            return self.deliver_real(vector);
        }
        if self.state.long_mode() {
            self.deliver_long(vector, error_code, src)
        } else {
            self.deliver_protected(vector, error_code, src)
        }
    }

    fn deliver_real(&mut self, vector: u8) -> Fault<()> {
        let entry = u64::from(vector) * 4;
        if entry + 3 > u64::from(self.state.idtr.limit) {
            return Err(Exception::GeneralProtection(0));
        }
        let ivt = u32::from_le_bytes(self.read_sys::<4>(self.state.idtr.base + entry)?);
        let fl = self.state.flags();
        self.push(2, fl)?;
        let cs = self.state.seg[sreg::CS].selector;
        self.push(2, u64::from(cs))?;
        self.push(2, self.state.rip)?;
        self.state.rflags &= !(flags::IF | flags::TF | flags::AC | flags::RF);
        self.load_real_segment(sreg::CS, (ivt >> 16) as u16);
        self.state.rip = u64::from(ivt & 0xffff);
        Ok(())
    }

    /// The EXT bit of error codes raised while delivering an event from
    /// `src`: set for every event but INT n, INT3 and INTO (SDM Vol. 3A
    /// §6.13: "an event external to the program, such as an interrupt or
    /// an earlier exception").
    fn ext(src: Source) -> u16 {
        u16::from(src != Source::Software)
    }

    /// Error code for a fault on an IDT entry.
    fn idt_err(vector: u8, src: Source) -> u16 {
        (u16::from(vector) << 3) | 2 | Self::ext(src)
    }

    fn read_gate(&mut self, vector: u8, size: u64, src: Source) -> Fault<crate::segment::Descriptor> {
        let off = u64::from(vector) * size;
        if off + size - 1 > u64::from(self.state.idtr.limit) {
            return Err(Exception::GeneralProtection(Self::idt_err(vector, src)));
        }
        let base = self.state.idtr.base + off;
        let raw = u64::from_le_bytes(self.read_sys::<8>(base)?);
        let raw_hi = if size == 16 { u64::from_le_bytes(self.read_sys::<8>(base + 8)?) } else { 0 };
        Ok(crate::segment::Descriptor { raw, raw_hi })
    }

    /// Common gate checks; returns (target CS descriptor, new CPL).
    fn gate_target(
        &mut self,
        vector: u8,
        gate: &crate::segment::Descriptor,
        src: Source,
    ) -> Fault<(crate::segment::Descriptor, u8)> {
        let ierr = Self::idt_err(vector, src);
        if src == Source::Software && gate.dpl() < self.state.cpl {
            return Err(Exception::GeneralProtection(ierr));
        }
        if !gate.present() {
            return Err(Exception::SegmentNotPresent(ierr));
        }
        let sel = gate.gate_selector();
        let ext = Self::ext(src);
        if sel & !3 == 0 {
            return Err(Exception::GeneralProtection(ext));
        }
        let cs = self.read_descriptor(sel).map_err(|e| match e {
            Exception::GeneralProtection(c) => Exception::GeneralProtection(c | ext),
            other => other,
        })?;
        if !cs.is_code() || cs.dpl() > self.state.cpl {
            return Err(Exception::GeneralProtection(sel_err(sel) | ext));
        }
        if !cs.present() {
            return Err(Exception::SegmentNotPresent(sel_err(sel) | ext));
        }
        let conforming = cs.typ() & crate::state::seg_attr::TYPE_DC != 0;
        let new_cpl = if conforming { self.state.cpl } else { cs.dpl() };
        Ok((cs, new_cpl))
    }

    fn deliver_long(&mut self, vector: u8, error_code: Option<u32>, src: Source) -> Fault<()> {
        let gate = self.read_gate(vector, 16, src)?;
        let t = gate.typ();
        if gate.is_code_data() || (t != 0xe && t != 0xf) {
            return Err(Exception::GeneralProtection(Self::idt_err(vector, src)));
        }
        let (cs, new_cpl) = self.gate_target(vector, &gate, src)?;
        let attr = cs.attr();
        if attr & crate::state::seg_attr::L == 0 || attr & crate::state::seg_attr::DB != 0 {
            return Err(Exception::GeneralProtection(sel_err(gate.gate_selector()) | Self::ext(src)));
        }
        let old_ss = self.state.seg[sreg::SS].selector;
        let old_rsp = self.state.gpr[4];
        let old_cs = self.state.seg[sreg::CS].selector;
        let rfl = self.state.flags();
        let ist = gate.gate_ist();
        let switching = new_cpl < self.state.cpl;
        let mut rsp = if ist != 0 {
            self.tss_read_u64(0x24 + 8 * u64::from(ist - 1))?
        } else if switching {
            self.tss_read_u64(4 + 8 * u64::from(new_cpl))?
        } else {
            old_rsp
        };
        rsp &= !0xf;
        // Build the frame with supervisor writes before changing any state.
        let mut frame = vec![u64::from(old_ss), old_rsp, rfl, u64::from(old_cs), self.state.rip];
        if let Some(ec) = error_code {
            frame.push(u64::from(ec));
        }
        let saved_cpl = self.state.cpl;
        self.state.cpl = new_cpl;
        for v in &frame {
            rsp = rsp.wrapping_sub(8);
            if let Err(e) = self.write_sys(rsp, &v.to_le_bytes()) {
                self.state.cpl = saved_cpl;
                return Err(match e {
                    Exception::PageFault { .. } => e,
                    _ => Exception::StackFault(Self::ext(src)),
                });
            }
        }
        self.state.cpl = saved_cpl;
        if switching {
            self.state.seg[sreg::SS] = Segment {
                selector: u16::from(new_cpl),
                attr: crate::state::seg_attr::P
                    | crate::state::seg_attr::S
                    | crate::state::seg_attr::TYPE_RW
                    | crate::state::seg_attr::DB
                    | (u32::from(new_cpl) << crate::state::seg_attr::DPL_SHIFT),
                ..Default::default()
            };
        }
        self.set_cs(gate.gate_selector(), &cs, new_cpl)?;
        self.state.gpr[4] = rsp;
        self.state.rip = gate.gate_offset(true);
        self.state.rflags &= !(flags::TF | flags::NT | flags::RF | flags::VM);
        if t == 0xe {
            self.state.rflags &= !flags::IF;
        }
        self.update_paging();
        Ok(())
    }

    /// A stack fault while pushing the frame on the stack the TSS gave:
    /// #SS with that stack's selector and EXT (SDM Vol. 3A, INT n
    /// pseudocode); other faults (#PF) as they are.
    fn new_stack_fault(e: Exception, new_ss: u16, src: Source) -> Exception {
        match e {
            Exception::StackFault(_) => Exception::StackFault(sel_err(new_ss) | Self::ext(src)),
            other => other,
        }
    }

    fn tss_read_u64(&mut self, off: u64) -> Fault<u64> {
        let tr = self.state.tr;
        if off + 7 > u64::from(tr.limit) {
            return Err(Exception::InvalidTss(sel_err(tr.selector)));
        }
        Ok(u64::from_le_bytes(self.read_sys::<8>(tr.base + off)?))
    }

    fn tss_read_u32(&mut self, off: u64) -> Fault<u32> {
        let tr = self.state.tr;
        if off + 3 > u64::from(tr.limit) {
            return Err(Exception::InvalidTss(sel_err(tr.selector)));
        }
        Ok(u32::from_le_bytes(self.read_sys::<4>(tr.base + off)?))
    }

    fn deliver_protected(&mut self, vector: u8, error_code: Option<u32>, src: Source) -> Fault<()> {
        let gate = self.read_gate(vector, 8, src)?;
        let t = gate.typ();
        let is32 = match t {
            0x6 | 0x7 => false,
            0xe | 0xf => true,
            0x5 if !gate.is_code_data() => {
                let ierr = Self::idt_err(vector, src);
                if src == Source::Software && gate.dpl() < self.state.cpl {
                    return Err(Exception::GeneralProtection(ierr));
                }
                if !gate.present() {
                    return Err(Exception::SegmentNotPresent(ierr));
                }
                let ext = src == Source::External;
                let ec = if src == Source::Exception { error_code } else { None };
                self.state.halted = 0;
                if self.task_switch(gate.gate_selector(), crate::ops::task::TaskSource::Int, ec, ext)? {
                    self.state.events.task_trap = true;
                }
                return Ok(());
            }
            _ => return Err(Exception::GeneralProtection(Self::idt_err(vector, src))),
        };
        if gate.is_code_data() {
            return Err(Exception::GeneralProtection(Self::idt_err(vector, src)));
        }
        let (cs, new_cpl) = self.gate_target(vector, &gate, src)?;
        let size = if is32 { 4 } else { 2 };
        let from_v86 = self.state.v86();
        let switching = new_cpl < self.state.cpl;
        if from_v86 && new_cpl != 0 {
            return Err(Exception::GeneralProtection(sel_err(gate.gate_selector())));
        }
        let rfl = self.state.flags();
        let old_cs = self.state.seg[sreg::CS].selector;
        let old_ss = self.state.seg[sreg::SS].selector;
        let old_esp = self.state.gpr[4];
        let old_segs = [sreg::ES, sreg::DS, sreg::FS, sreg::GS].map(|s| self.state.seg[s].selector);
        let saved_ss = self.state.seg[sreg::SS];
        let saved_cpl = self.state.cpl;
        if switching {
            let tss32 = self.state.tr.attr & 0x8 != 0;
            let (new_esp, new_ss) = if tss32 {
                let esp = self.tss_read_u32(4 + 8 * u64::from(new_cpl))?;
                let ss = self.tss_read_u32(8 + 8 * u64::from(new_cpl))? as u16;
                (u64::from(esp), ss)
            } else {
                let esp = self.tss_read_u32(2 + 4 * u64::from(new_cpl))? & 0xffff;
                let ss = (self.tss_read_u32(4 + 4 * u64::from(new_cpl))? & 0xffff) as u16;
                (u64::from(esp), ss)
            };
            if new_ss & !3 == 0 {
                return Err(Exception::InvalidTss(sel_err(new_ss)));
            }
            let d = self.read_descriptor(new_ss).map_err(|_| Exception::InvalidTss(sel_err(new_ss)))?;
            if (new_ss & 3) as u8 != new_cpl || d.dpl() != new_cpl || d.is_code() || !d.is_code_data() {
                return Err(Exception::InvalidTss(sel_err(new_ss)));
            }
            if !d.present() {
                return Err(Exception::StackFault(sel_err(new_ss)));
            }
            self.state.cpl = new_cpl;
            self.state.seg[sreg::SS] = d.to_segment(new_ss);
            self.state.rflags &= !flags::VM;
            let old_gpr4 = self.state.gpr[4];
            self.state.gpr[4] = new_esp;
            let pushes: Vec<u64> = if from_v86 {
                vec![
                    u64::from(old_segs[3]),
                    u64::from(old_segs[2]),
                    u64::from(old_segs[1]),
                    u64::from(old_segs[0]),
                    u64::from(old_ss),
                    old_esp,
                ]
            } else {
                vec![u64::from(old_ss), old_esp]
            };
            let mut res = Ok(());
            for v in pushes {
                res = self.push(size, v);
                if res.is_err() {
                    break;
                }
            }
            if let Err(e) = res {
                let e = Self::new_stack_fault(e, new_ss, src);
                self.state.cpl = saved_cpl;
                self.state.seg[sreg::SS] = saved_ss;
                self.state.gpr[4] = old_gpr4;
                if from_v86 {
                    self.state.rflags |= flags::VM;
                }
                return Err(e);
            }
            if from_v86 {
                for s in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
                    self.state.seg[s] = Segment { attr: crate::state::seg_attr::UNUSABLE, ..Default::default() };
                }
            }
        }
        let mut frame = vec![rfl, u64::from(old_cs), self.state.rip];
        frame.extend(error_code.map(u64::from));
        for v in frame {
            // (On a fault the caller restores the state from before delivery.)
            self.push(size, v).map_err(|e| {
                if switching {
                    Self::new_stack_fault(e, self.state.seg[sreg::SS].selector, src)
                } else {
                    e
                }
            })?;
        }
        self.set_cs(gate.gate_selector(), &cs, new_cpl)?;
        let off = gate.gate_offset(false);
        self.state.rip = if is32 { off } else { off & 0xffff };
        self.state.rflags &= !(flags::TF | flags::NT | flags::RF | flags::VM);
        if t & 1 == 0 {
            self.state.rflags &= !flags::IF;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::exception::Exception;
    use crate::ops::testutil::*;
    use crate::state::{flags, sreg};

    fn top(c: &mut crate::cpu::Cpu, i: u64, size: u32) -> u64 {
        c.read_mem(sreg::SS, c.state.gpr[4] + i * u64::from(size), size).unwrap()
    }

    #[test]
    fn a_not_present_gate_raises_np_with_ext_for_all_but_software_interrupts() {
        let mut c = prot_mode();
        c.mem().write_u8(IDT + 6 * 8 + 5, 0x0e | 0x60).unwrap(); // #UD gate: P = 0
        step_bytes(&mut c, &[0x0f, 0x0b]); // ud2
        assert_eq!(c.state.rip, stub(11));
        assert_eq!(top(&mut c, 0, 4), 6 * 8 + 2 + 1, "IDT bit and EXT");
        let mut c = prot_mode();
        c.mem().write_u8(IDT + 0x80 * 8 + 5, 0x0e | 0x60).unwrap();
        step_bytes(&mut c, &[0xcd, 0x80]);
        assert_eq!(c.state.rip, stub(11));
        assert_eq!(top(&mut c, 0, 4), 0x80 * 8 + 2, "INT n: no EXT");
        assert_eq!(top(&mut c, 1, 4), CODE, "the #NP returns to the INT instruction");
    }

    #[test]
    fn a_page_fault_on_the_idt_during_int_n_returns_to_the_int() {
        let mut c = long_mode();
        // The IDT straddles a not-present page: entries from 0x80 on are in it.
        let base = UNMAPPED - 0x800;
        let mut gates = vec![0u8; 0x800];
        c.mem().read(IDT, &mut gates).unwrap();
        c.mem().write(base, &gates).unwrap();
        c.state.idtr.base = base;
        step_bytes(&mut c, &[0xcd, 0x80]);
        assert_eq!(c.state.rip, stub(14));
        assert_eq!(c.state.cr2, UNMAPPED);
        assert_eq!(top(&mut c, 0, 8), 0, "supervisor read of a not-present page");
        assert_eq!(top(&mut c, 1, 8), CODE, "RIP of the INT instruction");
        assert_ne!(top(&mut c, 3, 8) & flags::RF, 0, "a fault: RF in the image");
    }

    #[test]
    fn a_fault_on_the_new_stack_is_delivered_from_the_state_before_the_switch() {
        let mut c = prot_mode();
        // Ring-0 stack: a 16-byte data segment, ESP0 = 8: the third push of
        // the INT frame falls outside it.
        set_gdt(&c, 10, seg_desc(0, 0xf, 0x93, 0x4));
        c.mem().write_u32(TSS + 4, 8).unwrap();
        c.mem().write_u32(TSS + 8, 0x50).unwrap();
        // #SS goes through a conforming ring-0 code segment: no stack switch.
        set_gdt(&c, 11, seg_desc(0, 0xfffff, 0x9f, 0xc));
        c.mem().write_u64(IDT + 12 * 8, gate(0x58, stub(12) as u32, 0xe, 0, 0)).unwrap();
        to_user(&mut c, SEL_UCODE32);
        step_bytes(&mut c, &[0xcd, 0x80]);
        assert_eq!(c.state.rip, stub(12), "{:?}", c.shutdown);
        assert_eq!(c.state.cpl, 3);
        assert_eq!(c.state.seg[sreg::SS].selector, SEL_UDATA);
        assert_eq!(c.state.gpr[4], USTACK - 16);
        assert_eq!(top(&mut c, 0, 4), 0x50, "#SS(new SS selector), no EXT for INT n");
        assert_eq!(top(&mut c, 1, 4), CODE);
        assert_eq!(top(&mut c, 2, 4), u64::from(SEL_UCODE32));
    }

    #[test]
    fn iret_unblocks_nmis_even_when_it_faults() {
        let mut c = prot_mode();
        c.state.nmi_blocked = 1;
        c.mem().write_u32(KSTACK - 12, 0x1234).unwrap();
        c.mem().write_u32(KSTACK - 8, 0).unwrap(); // CS = 0: #GP(0)
        c.mem().write_u32(KSTACK - 4, 2).unwrap();
        c.state.gpr[4] = KSTACK - 12;
        assert_eq!(exec_bytes(&mut c, &[0xcf]), Err(Exception::GeneralProtection(0)));
        assert_eq!(c.state.nmi_blocked, 0);
    }

    /// `code` at CODE with IF = 0 and an interrupt (vector 0x20) pending:
    /// run until the CPU halts in the vector's stub; the EIP it saved.
    fn interrupted_at(code: &[u8]) -> (crate::cpu::Cpu, u64) {
        let (mut c, _, irq) = new_cpu_with_irq();
        prot_setup(&mut c);
        c.state.gpr[0] = u64::from(SEL_DATA);
        place(&mut c, code);
        *irq.lock().unwrap() = Some(0x20);
        c.run(100);
        assert_eq!(c.state.rip, stub(0x20) + 1, "halted in the handler");
        let eip = top(&mut c, 0, 4);
        (c, eip)
    }

    #[test]
    fn an_interrupt_comes_after_the_instruction_under_the_sti_shadow() {
        // sti; inc ecx; inc ecx; inc ecx; hlt
        let (c, eip) = interrupted_at(&[0xfb, 0x41, 0x41, 0x41, 0xf4]);
        assert_eq!((eip, c.state.gpr[1]), (CODE + 2, 1));
    }

    #[test]
    fn an_interrupt_comes_after_the_instruction_under_the_mov_ss_shadow() {
        // sti; mov ss, ax (a shadow again); inc ecx; inc ecx; hlt
        let (c, eip) = interrupted_at(&[0xfb, 0x8e, 0xd0, 0x41, 0x41, 0xf4]);
        assert_eq!((eip, c.state.gpr[1]), (CODE + 4, 1));
    }
}
