//! Hardware task switching (SDM Vol. 3A chapter 8, "Task Management").
//!
//! A task switch is started by a far JMP or CALL to a TSS descriptor or a task
//! gate, by an interrupt or exception whose IDT entry is a task gate, or by
//! IRET with EFLAGS.NT set (a return to the task in the back link). The steps
//! follow SDM §8.3: check the new TSS descriptor (type, busy bit, present,
//! limit), read the new task's state, save the current task's state in the
//! current TSS, update the busy bits and the back link, load TR, set CR0.TS,
//! and load the new task's CR3, EFLAGS, EIP, general registers, LDTR and
//! segment registers. Faults up to the save are reported in the old task's
//! context; faults while loading the new task's segments are reported in the
//! new task's context (RIP is the new EIP).
//!
//! Both the 32-bit TSS (types 9/11) and the 16-bit 286 TSS (types 1/3) are
//! handled. Task switches do not exist in IA-32e mode (#GP).

use crate::cpu::Cpu;
use crate::exception::{Exception, Fault};
use crate::ops::debug::{dr6, dr7};
use crate::segment::{sel_err, Descriptor};
use crate::state::{cr, flags, seg_attr, sreg, Segment};

/// What started a task switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskSource {
    Jmp,
    Call,
    Iret,
    /// An interrupt or exception through a task gate.
    Int,
}

/// The state read from a TSS.
#[derive(Debug, Default, Clone, Copy)]
struct TaskState {
    cr3: u32,
    eip: u32,
    eflags: u32,
    gpr: [u32; 8],
    /// ES, CS, SS, DS, FS, GS.
    seg: [u16; 6],
    ldt: u16,
    trap: bool,
}

/// 32-bit TSS field offsets.
mod tss32 {
    pub const CR3: u64 = 0x1c;
    pub const EIP: u64 = 0x20;
    pub const EFLAGS: u64 = 0x24;
    pub const GPR: u64 = 0x28;
    pub const SEG: u64 = 0x48;
    pub const LDT: u64 = 0x60;
    pub const T: u64 = 0x64;
}

/// 16-bit TSS field offsets.
mod tss16 {
    pub const IP: u64 = 0x0e;
    pub const FLAGS: u64 = 0x10;
    pub const GPR: u64 = 0x12;
    /// ES, CS, SS, DS.
    pub const SEG: u64 = 0x22;
    pub const LDT: u64 = 0x2a;
}

/// Whether a system descriptor is a TSS (of either size), and whether busy.
pub(crate) fn tss_kind(d: &Descriptor) -> Option<(bool, bool)> {
    if d.is_code_data() {
        return None;
    }
    match d.typ() {
        1 => Some((false, false)),
        3 => Some((false, true)),
        9 => Some((true, false)),
        11 => Some((true, true)),
        _ => None,
    }
}

impl Cpu {
    /// Set or clear the busy bit of the TSS descriptor of `sel`: a locked
    /// update of the descriptor when the bit changes.
    fn set_busy(&mut self, sel: u16, busy: bool) -> Fault<()> {
        let addr = self.state.gdtr.base.wrapping_add(u64::from(sel & !7)) + 5;
        let b = self.read_sys::<1>(addr)?[0];
        if (b & 2 != 0) != busy {
            self.locked_sys_bits(addr, 2, busy)?;
        }
        Ok(())
    }

    fn read_task_state(&mut self, base: u64, is32: bool) -> Fault<TaskState> {
        let mut t = TaskState::default();
        let r16 = |c: &mut Cpu, off: u64| -> Fault<u16> {
            Ok(u16::from_le_bytes(c.read_sys::<2>(base.wrapping_add(off) & 0xffff_ffff)?))
        };
        let r32 = |c: &mut Cpu, off: u64| -> Fault<u32> {
            Ok(u32::from_le_bytes(c.read_sys::<4>(base.wrapping_add(off) & 0xffff_ffff)?))
        };
        if is32 {
            t.cr3 = r32(self, tss32::CR3)?;
            t.eip = r32(self, tss32::EIP)?;
            t.eflags = r32(self, tss32::EFLAGS)?;
            for i in 0..8 {
                t.gpr[i] = r32(self, tss32::GPR + 4 * i as u64)?;
            }
            for i in 0..6 {
                t.seg[i] = r16(self, tss32::SEG + 4 * i as u64)?;
            }
            t.ldt = r16(self, tss32::LDT)?;
            t.trap = r16(self, tss32::T)? & 1 != 0;
        } else {
            t.eip = u32::from(r16(self, tss16::IP)?);
            t.eflags = u32::from(r16(self, tss16::FLAGS)?);
            for i in 0..8 {
                t.gpr[i] = u32::from(r16(self, tss16::GPR + 2 * i as u64)?);
            }
            for i in 0..4 {
                t.seg[i] = r16(self, tss16::SEG + 2 * i as u64)?;
            }
            t.seg[sreg::FS] = self.state.seg[sreg::FS].selector;
            t.seg[sreg::GS] = self.state.seg[sreg::GS].selector;
            t.ldt = r16(self, tss16::LDT)?;
        }
        Ok(t)
    }

    fn save_task_state(&mut self, clear_nt: bool) -> Fault<()> {
        let tr = self.state.tr;
        let is32 = tr.attr & 8 != 0;
        let mut fl = self.state.flags();
        if clear_nt {
            fl &= !flags::NT;
        }
        let w16 =
            |c: &mut Cpu, off: u64, v: u16| c.write_sys(tr.base.wrapping_add(off) & 0xffff_ffff, &v.to_le_bytes());
        let w32 =
            |c: &mut Cpu, off: u64, v: u32| c.write_sys(tr.base.wrapping_add(off) & 0xffff_ffff, &v.to_le_bytes());
        if is32 {
            w32(self, tss32::EIP, self.state.rip as u32)?;
            w32(self, tss32::EFLAGS, fl as u32)?;
            for i in 0..8 {
                w32(self, tss32::GPR + 4 * i as u64, self.state.gpr[i] as u32)?;
            }
            for i in 0..6 {
                w16(self, tss32::SEG + 4 * i as u64, self.state.seg[i].selector)?;
            }
        } else {
            w16(self, tss16::IP, self.state.rip as u16)?;
            w16(self, tss16::FLAGS, fl as u16)?;
            for i in 0..8 {
                w16(self, tss16::GPR + 2 * i as u64, self.state.gpr[i] as u16)?;
            }
            for i in 0..4 {
                w16(self, tss16::SEG + 2 * i as u64, self.state.seg[i].selector)?;
            }
        }
        Ok(())
    }

    /// Switch to the task whose TSS selector is `sel`. The caller has done the
    /// privilege checks of its route (TSS DPL, task-gate DPL). `error_code` is
    /// pushed on the new task's stack (exceptions through a task gate); `ext`
    /// marks error codes of events from outside the instruction stream.
    /// Returns whether the new TSS has its debug-trap (T) bit set; DR6.BT is
    /// then already set and the caller raises the #DB trap.
    pub(crate) fn task_switch(&mut self, sel: u16, src: TaskSource, error_code: Option<u32>, ext: bool) -> Fault<bool> {
        let e = sel_err(sel) | u16::from(ext);
        let bad_sel = if src == TaskSource::Iret { Exception::InvalidTss(e) } else { Exception::GeneralProtection(e) };
        if self.state.long_mode() {
            return Err(Exception::GeneralProtection(e));
        }
        if sel & 4 != 0 || sel & !3 == 0 {
            return Err(bad_sel);
        }
        let d = self.read_descriptor(sel).map_err(|x| match x {
            Exception::GeneralProtection(_) => bad_sel,
            other => other,
        })?;
        let Some((is32, busy)) = tss_kind(&d) else {
            return Err(bad_sel);
        };
        if busy != (src == TaskSource::Iret) {
            return Err(bad_sel);
        }
        if !d.present() {
            return Err(Exception::SegmentNotPresent(e));
        }
        let min_limit = if is32 { 0x67 } else { 0x2b };
        if d.limit() < min_limit {
            return Err(Exception::InvalidTss(e));
        }
        let old_tr = self.state.tr;
        let old_min = if old_tr.attr & 8 != 0 { 0x5f } else { 0x29 };
        if old_tr.limit < old_min {
            return Err(Exception::InvalidTss(sel_err(old_tr.selector) | u16::from(ext)));
        }
        let new_base = d.base() & 0xffff_ffff;
        let t = self.read_task_state(new_base, is32)?;

        // Save the outgoing task and update the busy bits and the back link.
        if matches!(src, TaskSource::Jmp | TaskSource::Iret) {
            self.set_busy(old_tr.selector, false)?;
        }
        self.save_task_state(src == TaskSource::Iret)?;
        let nest = matches!(src, TaskSource::Call | TaskSource::Int);
        if nest {
            self.write_sys(new_base, &old_tr.selector.to_le_bytes())?;
        }
        if src != TaskSource::Iret {
            self.set_busy(sel, true)?;
        }

        // Commit: from here on, faults belong to the new task.
        let mut tr = d.to_segment(sel);
        tr.attr |= 2;
        self.state.tr = tr;
        self.state.cr0 |= cr::CR0_TS;
        self.state.dr[7] &= !dr7::LOCAL;
        if is32 && self.state.cr0 & cr::CR0_PG != 0 {
            self.state.cr3 = u64::from(t.cr3);
            self.update_paging();
            self.mmu.flush(self.state.cr4 & cr::CR4_PGE != 0);
        }
        let mut fl = u64::from(t.eflags);
        if !is32 {
            fl |= self.state.flags() & !0xffff;
            fl &= !(flags::VM | flags::RF);
        }
        if nest {
            fl |= flags::NT;
        }
        self.state.lazy.op = 0;
        self.state.rflags = (fl & flags::ALL) | flags::FIXED;
        self.state.rip = u64::from(if is32 { t.eip } else { t.eip & 0xffff });
        self.insn_start = self.state.rip;
        for i in 0..8 {
            self.state.gpr[i] =
                if is32 { u64::from(t.gpr[i]) } else { (self.state.gpr[i] & !0xffff) | u64::from(t.gpr[i]) };
        }
        self.block_break = true;
        self.load_task_segments(&t, ext)?;

        if let Some(ec) = error_code {
            self.push(if is32 { 4 } else { 2 }, u64::from(ec))?;
        }
        if self.state.rip > u64::from(self.state.seg[sreg::CS].limit) {
            return Err(Exception::GeneralProtection(0));
        }
        if t.trap {
            self.state.dr[6] |= dr6::BT;
        }
        Ok(t.trap)
    }

    /// Load LDTR and the segment registers of a new task (SDM §8.3 step 12,
    /// Table 8-1): invalid descriptors raise #TS with the selector.
    fn load_task_segments(&mut self, t: &TaskState, ext: bool) -> Fault<()> {
        let ts = |s: u16| Exception::InvalidTss(sel_err(s) | u16::from(ext));
        // Selectors are in place first; the hidden parts follow as each is checked.
        for (i, &s) in t.seg.iter().enumerate() {
            self.state.seg[i].selector = s;
        }
        self.state.ldtr = Segment { selector: t.ldt, attr: seg_attr::UNUSABLE, ..Default::default() };
        if t.ldt & !3 != 0 {
            if t.ldt & 4 != 0 {
                return Err(ts(t.ldt));
            }
            let d = self.read_descriptor(t.ldt).map_err(|x| {
                if let Exception::GeneralProtection(_) = x {
                    ts(t.ldt)
                } else {
                    x
                }
            })?;
            if d.is_code_data() || d.typ() != 2 || !d.present() {
                return Err(ts(t.ldt));
            }
            self.state.ldtr = d.to_segment(t.ldt);
        }
        if self.state.rflags & flags::VM != 0 {
            self.state.cpl = 3;
            for (i, &s) in t.seg.iter().enumerate() {
                self.load_real_segment(i, s);
            }
            return Ok(());
        }
        let cs = t.seg[sreg::CS];
        let cpl = (cs & 3) as u8;
        self.state.cpl = cpl;
        let read = |c: &mut Cpu, s: u16| -> Fault<Descriptor> {
            c.read_descriptor(s).map_err(|x| if let Exception::GeneralProtection(_) = x { ts(s) } else { x })
        };
        // CS.
        if cs & !3 == 0 {
            return Err(ts(cs));
        }
        let d = read(self, cs)?;
        let conforming = d.typ() & seg_attr::TYPE_DC != 0;
        if !d.is_code() || (conforming && d.dpl() > cpl) || (!conforming && d.dpl() != cpl) {
            return Err(ts(cs));
        }
        if !d.present() {
            return Err(Exception::SegmentNotPresent(sel_err(cs) | u16::from(ext)));
        }
        self.set_accessed(cs, &d)?;
        let mut seg = d.to_segment(cs);
        seg.attr |= seg_attr::TYPE_ACCESSED;
        self.state.seg[sreg::CS] = seg;
        // SS.
        let ss = t.seg[sreg::SS];
        if ss & !3 == 0 {
            return Err(ts(ss));
        }
        let d = read(self, ss)?;
        let writable_data = d.is_code_data() && !d.is_code() && d.typ() & seg_attr::TYPE_RW != 0;
        if !writable_data || d.dpl() != cpl || (ss & 3) as u8 != cpl {
            return Err(ts(ss));
        }
        if !d.present() {
            return Err(Exception::StackFault(sel_err(ss) | u16::from(ext)));
        }
        self.set_accessed(ss, &d)?;
        let mut seg = d.to_segment(ss);
        seg.attr |= seg_attr::TYPE_ACCESSED;
        self.state.seg[sreg::SS] = seg;
        // DS, ES, FS, GS.
        for i in [sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
            let s = t.seg[i];
            if s & !3 == 0 {
                self.state.seg[i] = Segment { selector: s, attr: seg_attr::UNUSABLE, ..Default::default() };
                continue;
            }
            let d = read(self, s)?;
            let readable = d.is_code_data() && (!d.is_code() || d.typ() & seg_attr::TYPE_RW != 0);
            let conforming_code = d.is_code() && d.typ() & seg_attr::TYPE_DC != 0;
            if !readable || (!conforming_code && (d.dpl() < cpl || d.dpl() < (s & 3) as u8)) {
                return Err(ts(s));
            }
            if !d.present() {
                return Err(Exception::SegmentNotPresent(sel_err(s) | u16::from(ext)));
            }
            self.set_accessed(s, &d)?;
            let mut seg = d.to_segment(s);
            seg.attr |= seg_attr::TYPE_ACCESSED;
            self.state.seg[i] = seg;
        }
        Ok(())
    }

    /// IRET with EFLAGS.NT in protected mode: return to the task in the back link.
    pub(crate) fn task_return(&mut self) -> Fault<()> {
        let tr = self.state.tr;
        let link = u16::from_le_bytes(self.read_sys::<2>(tr.base & 0xffff_ffff)?);
        self.state.nmi_blocked = 0;
        if self.task_switch(link, TaskSource::Iret, None, false)? {
            return Err(Exception::DebugTrap);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::cpu::{Cpu, StopReason};
    use crate::exception::Exception;
    use crate::state::{cr, flags, sreg};

    const TSS2: u64 = 0x6800;
    const SEL_TSS2: u16 = 0x60;
    const SEL_TASKGATE: u16 = 0x68;

    /// A second 32-bit task at EIP 0x30000 with recognizable registers.
    fn setup(c: &mut Cpu) {
        let m = c.mem().clone();
        m.fill(TSS2, 0x68, 0).unwrap();
        m.write_u32(TSS2 + 0x20, 0x30000).unwrap();
        m.write_u32(TSS2 + 0x24, 0x202).unwrap();
        for i in 0..8u64 {
            m.write_u32(TSS2 + 0x28 + 4 * i, 0x1000_0000 + i as u32).unwrap();
        }
        m.write_u32(TSS2 + 0x38, (KSTACK - 0x1000) as u32).unwrap();
        for (i, s) in [SEL_DATA, SEL_CODE32, SEL_DATA, SEL_DATA, 0, 0].iter().enumerate() {
            m.write_u16(TSS2 + 0x48 + 4 * i as u64, *s).unwrap();
        }
        m.write_u16(TSS2 + 0x66, 0x68).unwrap();
        set_gdt(c, 12, seg_desc(TSS2 as u32, 0x67, 0x89, 0));
        set_gdt(c, 13, gate(SEL_TSS2, 0, 5, 3, 0));
        // The current TSS is busy (loaded by LTR).
        let d = c.mem().read_u64(GDT + 0x40).unwrap();
        c.mem().write_u64(GDT + 0x40, d | (2 << 40)).unwrap();
        c.state.tr.attr |= 2;
    }

    fn far(op: u8, sel: u16) -> Vec<u8> {
        let mut v = vec![op, 0, 0, 0, 0];
        v.extend_from_slice(&sel.to_le_bytes());
        v
    }

    fn type_of(c: &Cpu, sel: u16) -> u64 {
        (c.mem().read_u64(GDT + u64::from(sel & !7)).unwrap() >> 40) & 0xf
    }

    #[test]
    fn jmp_to_a_tss_saves_and_loads_the_state() {
        let mut c = prot_mode();
        setup(&mut c);
        c.state.gpr = [11, 12, 13, 14, KSTACK - 4, 16, 17, 18, 0, 0, 0, 0, 0, 0, 0, 0];
        c.state.set_arith_flags(flags::ARITH, flags::CF);
        exec_bytes(&mut c, &far(0xea, SEL_TSS2)).unwrap();
        // The new task runs.
        assert_eq!(c.state.tr.selector, SEL_TSS2);
        assert_eq!(c.state.rip, 0x30000);
        assert_eq!(c.state.gpr[0], 0x1000_0000);
        assert_eq!(c.state.gpr[4], KSTACK - 0x1000);
        assert_eq!(c.state.flags(), 0x202);
        assert_eq!(c.state.seg[sreg::CS].selector, SEL_CODE32);
        assert_eq!(c.state.seg[sreg::FS].selector, 0);
        assert_ne!(c.state.cr0 & cr::CR0_TS, 0);
        // Busy bits: the old task is free again, the new one busy. No back link.
        assert_eq!(type_of(&c, SEL_TSS), 9);
        assert_eq!(type_of(&c, SEL_TSS2), 11);
        assert_eq!(c.mem().read_u16(TSS2).unwrap(), 0);
        // The old state is in the old TSS.
        assert_eq!(c.mem().read_u32(TSS + 0x20).unwrap() as u64, CODE + 7);
        assert_eq!(c.mem().read_u32(TSS + 0x24).unwrap() as u64, flags::FIXED | flags::CF);
        assert_eq!(c.mem().read_u32(TSS + 0x28).unwrap(), 11);
        assert_eq!(c.mem().read_u32(TSS + 0x44).unwrap(), 18);
        assert_eq!(c.mem().read_u16(TSS + 0x4c).unwrap(), SEL_CODE32);
        // Jumping to the (now busy) new task again is #GP.
        assert_eq!(exec_bytes(&mut c, &far(0xea, SEL_TSS2)), Err(Exception::GeneralProtection(SEL_TSS2)));
    }

    #[test]
    fn call_through_a_task_gate_nests_and_iret_returns() {
        let mut c = prot_mode();
        setup(&mut c);
        to_user(&mut c, SEL_UCODE32);
        c.state.gpr[0] = 0xaaaa;
        exec_bytes(&mut c, &far(0x9a, SEL_TASKGATE | 3)).unwrap();
        assert_eq!(c.state.tr.selector, SEL_TSS2);
        assert_eq!(c.state.cpl, 0);
        assert_ne!(c.state.flags() & flags::NT, 0);
        assert_eq!(c.mem().read_u16(TSS2).unwrap(), SEL_TSS);
        assert_eq!(type_of(&c, SEL_TSS), 11);
        assert_eq!(type_of(&c, SEL_TSS2), 11);
        // IRET with NT goes back through the link.
        c.state.gpr[0] = 0x5555;
        exec_bytes(&mut c, &[0xcf]).unwrap();
        assert_eq!(c.state.tr.selector, SEL_TSS);
        assert_eq!(c.state.cpl, 3);
        assert_eq!(c.state.rip, CODE + 7);
        assert_eq!(c.state.gpr[0], 0xaaaa);
        assert_eq!(c.state.gpr[4], USTACK);
        assert_eq!(c.state.flags() & flags::NT, 0);
        assert_eq!(type_of(&c, SEL_TSS2), 9);
        assert_eq!(type_of(&c, SEL_TSS), 11);
        // The nested task's state was saved with NT clear.
        assert_eq!(c.mem().read_u32(TSS2 + 0x28).unwrap(), 0x5555);
        assert_eq!(u64::from(c.mem().read_u32(TSS2 + 0x24).unwrap()) & flags::NT, 0);
        // IRET with NT to a task that is not busy: #TS.
        c.state.cpl = 0;
        load_cache(&mut c, sreg::CS, SEL_CODE32);
        c.state.rflags |= flags::NT;
        c.mem().write_u16(TSS, SEL_TSS2).unwrap();
        assert_eq!(exec_bytes(&mut c, &[0xcf]), Err(Exception::InvalidTss(SEL_TSS2)));
    }

    #[test]
    fn task_switch_descriptor_checks() {
        let mut c = prot_mode();
        setup(&mut c);
        // Task gate DPL 0 from ring 3.
        set_gdt(&c, 13, gate(SEL_TSS2, 0, 5, 0, 0));
        to_user(&mut c, SEL_UCODE32);
        assert_eq!(exec_bytes(&mut c, &far(0xea, SEL_TASKGATE | 3)), Err(Exception::GeneralProtection(SEL_TASKGATE)));
        // TSS DPL 0 from ring 3 directly.
        assert_eq!(exec_bytes(&mut c, &far(0xea, SEL_TSS2 | 3)), Err(Exception::GeneralProtection(SEL_TSS2)));
        let mut c = prot_mode();
        setup(&mut c);
        set_gdt(&c, 12, seg_desc(TSS2 as u32, 0x67, 0x09, 0)); // not present
        assert_eq!(exec_bytes(&mut c, &far(0xea, SEL_TSS2)), Err(Exception::SegmentNotPresent(SEL_TSS2)));
        set_gdt(&c, 12, seg_desc(TSS2 as u32, 0x60, 0x89, 0)); // limit too small
        assert_eq!(exec_bytes(&mut c, &far(0xea, SEL_TSS2)), Err(Exception::InvalidTss(SEL_TSS2)));
        // A task gate naming a non-TSS.
        set_gdt(&c, 13, gate(SEL_DATA, 0, 5, 3, 0));
        assert_eq!(exec_bytes(&mut c, &far(0xea, SEL_TASKGATE)), Err(Exception::GeneralProtection(SEL_DATA)));
        // An invalid CS in the new task: #TS(CS) reported in the new task.
        set_gdt(&c, 12, seg_desc(TSS2 as u32, 0x67, 0x89, 0));
        c.mem().write_u16(TSS2 + 0x4c, SEL_DATA).unwrap();
        assert_eq!(exec_bytes(&mut c, &far(0xea, SEL_TSS2)), Err(Exception::InvalidTss(SEL_DATA)));
        assert_eq!(c.state.tr.selector, SEL_TSS2);
        assert_eq!(c.state.rip, 0x30000);
        // Task switches do not exist in long mode.
        let mut c = long_mode();
        set_gdt(&c, 12, seg_desc(TSS2 as u32, 0x67, 0x89, 0));
        let mut code = vec![0xff, 0x2c, 0x25];
        code.extend_from_slice(&(DATA as u32).to_le_bytes());
        c.mem().write_u32(DATA, 0).unwrap();
        c.mem().write_u16(DATA + 4, SEL_TSS2).unwrap();
        assert_eq!(exec_bytes(&mut c, &code), Err(Exception::GeneralProtection(SEL_TSS2)));
    }

    #[test]
    fn exception_through_an_idt_task_gate_pushes_its_error_code() {
        let mut c = prot_mode();
        setup(&mut c);
        // #GP (13) goes to the second task.
        c.mem().write_u64(IDT + 13 * 8, gate(SEL_TSS2, 0, 5, 0, 0)).unwrap();
        // mov ds, [a selector beyond the GDT]: #GP(0x800).
        c.state.gpr[0] = 0x800;
        assert_eq!(step_bytes(&mut c, &[0x8e, 0xd8]), StopReason::Budget);
        assert_eq!(c.state.tr.selector, SEL_TSS2);
        assert_eq!(c.state.rip, 0x30000);
        assert_eq!(c.state.gpr[4], KSTACK - 0x1000 - 4);
        assert_eq!(error_code(&mut c, 4), 0x800);
        // The faulting instruction's address was saved; the task is nested.
        assert_eq!(c.mem().read_u32(TSS + 0x20).unwrap() as u64, CODE);
        assert_ne!(c.state.flags() & flags::NT, 0);
        // INT n through a task gate from ring 3 checks the gate DPL.
        let mut c = prot_mode();
        setup(&mut c);
        c.mem().write_u64(IDT + 0x80 * 8, gate(SEL_TSS2, 0, 5, 3, 0)).unwrap();
        c.mem().write_u64(IDT + 0x81 * 8, gate(SEL_TSS2, 0, 5, 0, 0)).unwrap();
        to_user(&mut c, SEL_UCODE32);
        step_bytes(&mut c, &[0xcd, 0x81]);
        assert_eq!(c.state.rip, stub(13));
        assert_eq!(error_code(&mut c, 4), 0x81 * 8 + 2);
        let mut c = prot_mode();
        setup(&mut c);
        c.mem().write_u64(IDT + 0x80 * 8, gate(SEL_TSS2, 0, 5, 3, 0)).unwrap();
        to_user(&mut c, SEL_UCODE32);
        step_bytes(&mut c, &[0xcd, 0x80]);
        assert_eq!(c.state.tr.selector, SEL_TSS2);
        assert_eq!(c.mem().read_u32(TSS + 0x20).unwrap() as u64, CODE + 2);
    }

    #[test]
    fn t_bit_raises_a_debug_trap_in_the_new_task() {
        let mut c = prot_mode();
        setup(&mut c);
        c.mem().write_u16(TSS2 + 0x64, 1).unwrap();
        assert_eq!(exec_bytes(&mut c, &far(0xea, SEL_TSS2)), Err(Exception::DebugTrap));
        assert_ne!(c.state.dr[6] & crate::ops::debug::dr6::BT, 0);
        let mut c = prot_mode();
        setup(&mut c);
        c.mem().write_u16(TSS2 + 0x64, 1).unwrap();
        step_bytes(&mut c, &far(0xea, SEL_TSS2));
        assert_eq!(c.state.rip, stub(1));
        assert_eq!(error_code(&mut c, 4), 0x30000);
    }

    #[test]
    fn task_switch_loads_cr3_and_can_enter_v86() {
        let mut c = prot_mode();
        setup(&mut c);
        // Two page directories identity-mapping 4 MiB with a PSE page.
        for pd in [0xc000u64, 0xd000] {
            c.mem().fill(pd, 4096, 0).unwrap();
            c.mem().write_u32(pd, 0x87).unwrap();
        }
        c.state.cr4 |= cr::CR4_PSE;
        c.state.cr3 = 0xc000;
        c.state.cr0 |= cr::CR0_PG;
        c.set_state(c.state);
        c.mem().write_u32(TSS2 + 0x1c, 0xd000).unwrap();
        // The new task is a virtual-8086 task at 2000:0010.
        c.mem().write_u32(TSS2 + 0x24, (flags::VM | flags::FIXED) as u32).unwrap();
        c.mem().write_u32(TSS2 + 0x20, 0x10).unwrap();
        c.mem().write_u16(TSS2 + 0x4c, 0x2000).unwrap();
        c.mem().write_u16(TSS2 + 0x50, 0x3000).unwrap();
        exec_bytes(&mut c, &far(0xea, SEL_TSS2)).unwrap();
        assert_eq!(c.state.cr3, 0xd000);
        assert!(c.state.v86());
        assert_eq!(c.state.cpl, 3);
        assert_eq!(c.state.seg[sreg::CS].base, 0x20000);
        assert_eq!(c.state.seg[sreg::SS].base, 0x30000);
        assert_eq!(c.state.rip, 0x10);
    }

    #[test]
    fn sixteen_bit_tss() {
        let mut c = prot_mode();
        setup(&mut c);
        let t = 0x6900u64;
        c.mem().fill(t, 0x2c, 0).unwrap();
        c.mem().write_u16(t + 0x0e, 0x1234).unwrap();
        c.mem().write_u16(t + 0x10, 0x0002).unwrap();
        c.mem().write_u16(t + 0x12, 0x4321).unwrap();
        c.mem().write_u16(t + 0x24, SEL_CODE16).unwrap();
        c.mem().write_u16(t + 0x26, SEL_DATA).unwrap();
        set_gdt(&c, 14, seg_desc(t as u32, 0x2b, 0x81, 0));
        c.state.gpr[0] = 0xffff_0000;
        exec_bytes(&mut c, &far(0x9a, 0x70)).unwrap();
        assert_eq!(c.state.rip, 0x1234);
        assert_eq!(c.state.gpr[0], 0xffff_4321);
        assert_eq!(c.state.seg[sreg::CS].selector, SEL_CODE16);
        assert_eq!(c.mem().read_u16(t).unwrap(), SEL_TSS);
        assert_eq!(type_of(&c, 0x70), 3);
    }
}
