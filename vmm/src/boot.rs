//! Loading a kernel and turning the loader's neutral boot state into the
//! CPU's state.

use cpu::state::{seg_attr, sreg, CpuState, DescTable, Segment};
use firmware::boot::{BootCpuState, SegmentDesc};

/// A segment register from the loader's description.
fn segment(d: &SegmentDesc) -> Segment {
    let mut attr = u32::from(d.type_ & 0xf)
        | (u32::from(d.s) << 4)
        | (u32::from(d.dpl & 3) << seg_attr::DPL_SHIFT)
        | (u32::from(d.present) << 7)
        | (u32::from(d.avl) << 12)
        | (u32::from(d.l) << 13)
        | (u32::from(d.db) << 14)
        | (u32::from(d.g) << 15);
    if !d.present {
        attr |= seg_attr::UNUSABLE;
    }
    Segment { base: d.base, limit: d.limit, attr, selector: d.selector, _pad: [0; 3] }
}

/// The CPU state a loader asks for.
pub fn cpu_state(b: &BootCpuState) -> CpuState {
    let mut s = CpuState::reset();
    s.gpr = [0; 16];
    s.gpr[0] = b.rax;
    s.gpr[1] = b.rcx;
    s.gpr[2] = b.rdx;
    s.gpr[3] = b.rbx;
    s.gpr[4] = b.rsp;
    s.gpr[5] = b.rbp;
    s.gpr[6] = b.rsi;
    s.gpr[7] = b.rdi;
    s.rip = b.rip;
    s.rflags = b.rflags | cpu::state::flags::FIXED;
    s.cr0 = b.cr0;
    s.cr3 = b.cr3;
    s.cr4 = b.cr4;
    s.efer = b.efer;
    s.gdtr = DescTable { base: b.gdt_base, limit: u32::from(b.gdt_limit), _pad: 0 };
    s.idtr = DescTable { base: b.idt_base, limit: u32::from(b.idt_limit), _pad: 0 };
    s.seg[sreg::CS] = segment(&b.cs);
    s.seg[sreg::DS] = segment(&b.ds);
    s.seg[sreg::ES] = segment(&b.es);
    s.seg[sreg::FS] = segment(&b.fs);
    s.seg[sreg::GS] = segment(&b.gs);
    s.seg[sreg::SS] = segment(&b.ss);
    s.tr = segment(&b.tr);
    s.ldtr = segment(&b.ldt);
    s.cpl = b.cs.dpl;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_entry_state() {
        let b = BootCpuState::long64(0x100_0000, 0x9000);
        let s = cpu_state(&b);
        assert!(s.long_mode() && s.code64());
        assert_eq!(s.code_bits(), 64);
        assert_eq!(s.rip, 0x100_0000);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.seg[sreg::CS].selector, 0x10);
        let p = cpu_state(&BootCpuState::protected32(0x10_0000));
        assert_eq!(p.code_bits(), 32);
        assert!(!p.long_mode());
        assert_eq!(cpu_state(&BootCpuState::reset()).code_bits(), 16);
    }

    /// The 32-bit boot protocol's state: ESI = zero page, EBP/EDI/EBX zero,
    /// flat __BOOT_CS/__BOOT_DS, IF and paging off.
    #[test]
    fn linux_32bit_entry_state() {
        let mut b = BootCpuState::protected32(0x10_0000);
        b.rsi = 0x7000;
        b.rsp = 0x8ff0;
        let s = cpu_state(&b);
        assert_eq!(s.code_bits(), 32);
        assert!(!s.long_mode());
        assert_eq!(s.cr0 & (1 << 31), 0, "paging off");
        assert_eq!(s.cr0 & 1, 1, "protected mode");
        assert_eq!(s.rflags & cpu::state::flags::IF, 0, "interrupts off");
        assert_eq!((s.gpr[6], s.gpr[5], s.gpr[7], s.gpr[3], s.gpr[4]), (0x7000, 0, 0, 0, 0x8ff0));
        assert_eq!((s.rip, s.cpl), (0x10_0000, 0));
        for (reg, sel) in [(sreg::CS, 0x10), (sreg::DS, 0x18), (sreg::ES, 0x18), (sreg::SS, 0x18)] {
            let seg = s.seg[reg];
            assert_eq!((seg.selector, seg.base, seg.limit), (sel, 0, 0xffff_ffff), "segment {reg}");
            assert_eq!(seg.attr & cpu::state::seg_attr::UNUSABLE, 0, "segment {reg}");
        }
    }
}
