//! System instructions (SDM Vol. 2 and Vol. 3A chapters 2, 5, 6): descriptor
//! tables, control and debug registers, MSRs, CPUID, the TSC (RDTSC, RDTSCP,
//! RDPID) and RDPMC, port I/O with the IOPL and I/O-bitmap checks (and I/O
//! breakpoints), CLI/STI/HLT, software interrupts and IRET (including the
//! task return of IRET with NT and the return to virtual-8086 mode), far
//! transfers (gates and tasks are in [`crate::segment`] and
//! [`crate::ops::task`]), SYSCALL/SYSRET and SYSENTER/SYSEXIT, SWAPGS,
//! RDFSBASE/WRFSBASE/RDGSBASE/WRGSBASE, CLAC/STAC, and TLB control (INVLPG,
//! INVPCID).

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::{ea, mem_seg, read_op, reg_read, reg_write, size0, write_op, Handler};
use crate::cpu::{is_canonical, Cpu};
use crate::exception::{Exception, Fault, GP0};
use crate::segment::{sel_err, Descriptor};
use crate::state::{cr, flags, seg_attr, sreg, Segment};

pub fn handler(code: Code) -> Option<Handler> {
    Some(match code.mnemonic() {
        Mnemonic::In => io_in,
        Mnemonic::Out => io_out,
        Mnemonic::Cli => cli,
        Mnemonic::Sti => sti,
        Mnemonic::Cld => |c, _| {
            c.state.rflags &= !flags::DF;
            Ok(())
        },
        Mnemonic::Std => |c, _| {
            c.state.rflags |= flags::DF;
            Ok(())
        },
        Mnemonic::Hlt => hlt,
        Mnemonic::Lgdt | Mnemonic::Lidt => lgdt_lidt,
        Mnemonic::Sgdt | Mnemonic::Sidt => sgdt_sidt,
        Mnemonic::Lldt => lldt,
        Mnemonic::Ltr => ltr,
        Mnemonic::Sldt => |c, i| {
            let v = u64::from(c.state.ldtr.selector);
            store_selector(c, i, v)
        },
        Mnemonic::Str => |c, i| {
            let v = u64::from(c.state.tr.selector);
            store_selector(c, i, v)
        },
        Mnemonic::Mov => match code {
            Code::Mov_r32_cr | Code::Mov_r64_cr => mov_from_cr,
            Code::Mov_cr_r32 | Code::Mov_cr_r64 => mov_to_cr,
            Code::Mov_r32_dr | Code::Mov_r64_dr => mov_from_dr,
            Code::Mov_dr_r32 | Code::Mov_dr_r64 => mov_to_dr,
            _ => return None,
        },
        Mnemonic::Lmsw => lmsw,
        Mnemonic::Smsw => smsw,
        Mnemonic::Clts => |c, _| {
            require_cpl0(c)?;
            c.state.cr0 &= !cr::CR0_TS;
            Ok(())
        },
        Mnemonic::Rdmsr => rdmsr,
        Mnemonic::Wrmsr => wrmsr,
        Mnemonic::Cpuid => cpuid,
        Mnemonic::Rdtsc => rdtsc,
        Mnemonic::Rdtscp => rdtscp,
        Mnemonic::Rdpid => rdpid,
        Mnemonic::Rdpkru => rdpkru,
        Mnemonic::Wrpkru => wrpkru,
        Mnemonic::Rdpmc => rdpmc,
        Mnemonic::Rdfsbase | Mnemonic::Rdgsbase | Mnemonic::Wrfsbase | Mnemonic::Wrgsbase => fsgsbase,
        Mnemonic::Clac | Mnemonic::Stac => clac_stac,
        Mnemonic::Invpcid => invpcid,
        Mnemonic::Wbnoinvd => |c, _| require_cpl0(c),
        Mnemonic::Int => |c, i| {
            v86_iopl_check(c)?;
            Err(Exception::SoftInt(i.immediate8()))
        },
        Mnemonic::Int3 => |_, _| Err(Exception::Breakpoint),
        Mnemonic::Into => |c, _| {
            if c.state.code64() {
                return Err(Exception::InvalidOpcode);
            }
            if c.state.flags() & flags::OF != 0 {
                Err(Exception::Overflow)
            } else {
                Ok(())
            }
        },
        Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => iret,
        Mnemonic::Jmp => match code {
            Code::Jmp_ptr1616 | Code::Jmp_ptr1632 | Code::Jmp_m1616 | Code::Jmp_m1632 | Code::Jmp_m1664 => far_jmp,
            _ => return None,
        },
        Mnemonic::Call => match code {
            Code::Call_ptr1616 | Code::Call_ptr1632 | Code::Call_m1616 | Code::Call_m1632 | Code::Call_m1664 => {
                far_call
            }
            _ => return None,
        },
        Mnemonic::Retf => retf,
        Mnemonic::Syscall => syscall,
        Mnemonic::Sysret | Mnemonic::Sysretq => sysret,
        Mnemonic::Sysenter => sysenter,
        Mnemonic::Sysexit | Mnemonic::Sysexitq => sysexit,
        Mnemonic::Swapgs => swapgs,
        Mnemonic::Invlpg => invlpg,
        Mnemonic::Wbinvd | Mnemonic::Invd => |c, _| require_cpl0(c),
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => |_, _| Err(Exception::InvalidOpcode),
        _ => return None,
    })
}

/// Mnemonics after which the decoder must restart.
pub fn ends_block(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Lmsw
            | Mnemonic::Clts
            | Mnemonic::Wrmsr
            | Mnemonic::Lgdt
            | Mnemonic::Lidt
            | Mnemonic::Lldt
            | Mnemonic::Ltr
            | Mnemonic::Sti
            | Mnemonic::Cli
            | Mnemonic::Popf
            | Mnemonic::Popfd
            | Mnemonic::Popfq
            | Mnemonic::Hlt
            | Mnemonic::Invlpg
            | Mnemonic::Invpcid
            | Mnemonic::Wrpkru
            | Mnemonic::Swapgs
            | Mnemonic::Out
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
    )
}

fn require_cpl0(cpu: &Cpu) -> Fault<()> {
    if cpu.state.protected() && cpu.state.cpl != 0 {
        return Err(GP0);
    }
    Ok(())
}

fn iopl(cpu: &Cpu) -> u8 {
    ((cpu.state.rflags & flags::IOPL) >> flags::IOPL_SHIFT) as u8
}

fn v86_iopl_check(cpu: &Cpu) -> Fault<()> {
    if cpu.state.v86() && iopl(cpu) < 3 {
        return Err(GP0);
    }
    Ok(())
}

/// I/O permission check (SDM Vol. 1 §19.5): CPL ≤ IOPL passes; otherwise the
/// TSS I/O bitmap must have a clear bit for every byte of the access.
pub(crate) fn check_io(cpu: &mut Cpu, port: u16, size: u32) -> Fault<()> {
    if !cpu.state.protected() || (!cpu.state.v86() && cpu.state.cpl <= iopl(cpu)) {
        return Ok(());
    }
    let tr = cpu.state.tr;
    // Only a 32/64-bit TSS has a bitmap.
    if tr.attr & 0x8 == 0 || tr.limit < 0x67 {
        return Err(GP0);
    }
    let base = u16::from_le_bytes(cpu.read_sys::<2>(tr.base + 0x66)?);
    let off = u64::from(base) + u64::from(port / 8);
    if off + 1 > u64::from(tr.limit) {
        return Err(GP0);
    }
    let bits = u16::from_le_bytes(cpu.read_sys::<2>(tr.base + off)?);
    let m = ((1u32 << size) - 1) << (port % 8);
    if u32::from(bits) & m != 0 {
        return Err(GP0);
    }
    Ok(())
}

fn port_of(cpu: &Cpu, insn: &Instruction, i: u32) -> u16 {
    match insn.op_kind(i) {
        OpKind::Immediate8 => u16::from(insn.immediate8()),
        _ => cpu.state.gpr[2] as u16,
    }
}

fn io_in(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let port = port_of(cpu, insn, 1);
    let size = size0(insn);
    check_io(cpu, port, size)?;
    cpu.io_breakpoints(port, size);
    let v = cpu.io_read(port, size as u8);
    reg_write(&mut cpu.state, insn.op0_register(), u64::from(v));
    Ok(())
}

fn io_out(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let port = port_of(cpu, insn, 0);
    let size = super::op_size(insn, 1);
    check_io(cpu, port, size)?;
    cpu.io_breakpoints(port, size);
    let v = reg_read(&cpu.state, insn.op1_register());
    cpu.io_write(port, size as u8, v as u32);
    Ok(())
}

fn cli(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    if cpu.state.protected() && iopl(cpu) < if cpu.state.v86() { 3 } else { cpu.state.cpl } {
        return Err(GP0);
    }
    cpu.state.rflags &= !flags::IF;
    Ok(())
}

fn sti(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    if cpu.state.protected() && iopl(cpu) < if cpu.state.v86() { 3 } else { cpu.state.cpl } {
        return Err(GP0);
    }
    if cpu.state.rflags & flags::IF == 0 {
        // Interrupts stay blocked until after the next instruction.
        cpu.state.interrupt_shadow = 1;
    }
    cpu.state.rflags |= flags::IF;
    Ok(())
}

fn hlt(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    cpu.state.halted = 1;
    cpu.block_break = true;
    Ok(())
}

/// LGDT/LIDT: a 2-byte limit then a 3-, 4- or 8-byte base.
fn lgdt_lidt(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    let seg = mem_seg(insn);
    let a = ea(&cpu.state, insn);
    let limit = cpu.read_mem(seg, a, 2)? as u32;
    let base = if cpu.state.code64() {
        cpu.read_mem(seg, a.wrapping_add(2), 8)?
    } else {
        let b = cpu.read_mem(seg, a.wrapping_add(2), 4)?;
        if matches!(insn.code(), Code::Lgdt_m1632_16 | Code::Lidt_m1632_16) {
            b & 0xff_ffff
        } else {
            b
        }
    };
    if cpu.state.code64() && !is_canonical(base) {
        return Err(GP0);
    }
    let t = crate::state::DescTable { base, limit, _pad: 0 };
    if insn.mnemonic() == Mnemonic::Lgdt {
        cpu.state.gdtr = t;
    } else {
        cpu.state.idtr = t;
    }
    Ok(())
}

fn sgdt_sidt(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.cr4 & cr::CR4_UMIP != 0 {
        require_cpl0(cpu)?;
    }
    let t = if insn.mnemonic() == Mnemonic::Sgdt { cpu.state.gdtr } else { cpu.state.idtr };
    let seg = mem_seg(insn);
    let a = ea(&cpu.state, insn);
    let bsize = if cpu.state.code64() { 8 } else { 4 };
    cpu.write_mem(seg, a, 2, u64::from(t.limit))?;
    cpu.write_mem(seg, a.wrapping_add(2), bsize, t.base)
}

fn store_selector(cpu: &mut Cpu, insn: &Instruction, v: u64) -> Fault<()> {
    if !cpu.state.protected() || cpu.state.v86() {
        return Err(Exception::InvalidOpcode);
    }
    if cpu.state.cr4 & cr::CR4_UMIP != 0 {
        require_cpl0(cpu)?;
    }
    let size = if insn.op0_kind() == OpKind::Memory { 2 } else { size0(insn) };
    write_op(cpu, insn, 0, size, v)
}

fn lldt(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if !cpu.state.protected() || cpu.state.v86() {
        return Err(Exception::InvalidOpcode);
    }
    require_cpl0(cpu)?;
    let sel = read_op(cpu, insn, 0, 2)? as u16;
    if sel & !3 == 0 {
        cpu.state.ldtr = Segment { selector: sel, attr: seg_attr::UNUSABLE, ..Default::default() };
        return Ok(());
    }
    if sel & 4 != 0 {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let d = cpu.read_system_descriptor(sel)?;
    if d.is_code_data() || d.typ() != 2 {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    cpu.state.ldtr = d.to_segment(sel);
    Ok(())
}

fn ltr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if !cpu.state.protected() || cpu.state.v86() {
        return Err(Exception::InvalidOpcode);
    }
    require_cpl0(cpu)?;
    let sel = read_op(cpu, insn, 0, 2)? as u16;
    if sel & !3 == 0 || sel & 4 != 0 {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let d = cpu.read_system_descriptor(sel)?;
    // An available TSS: 16-bit (1) or 32/64-bit (9).
    let ok = !d.is_code_data() && (d.typ() == 9 || (d.typ() == 1 && !cpu.state.long_mode()));
    if !ok {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    // Mark it busy in the GDT: a locked update of the descriptor.
    let addr = cpu.state.gdtr.base + u64::from(sel & !7);
    cpu.locked_sys_bits(addr + 5, 2, true)?;
    let mut s = d.to_segment(sel);
    s.attr |= 2;
    cpu.state.tr = s;
    Ok(())
}

fn cr_number(r: Register) -> usize {
    r as usize - Register::CR0 as usize
}

fn mov_from_cr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    let v = match cr_number(insn.op1_register()) {
        0 => cpu.state.cr0,
        2 => cpu.state.cr2,
        3 => cpu.state.cr3,
        4 => cpu.state.cr4,
        8 => {
            // CR8 is the local APIC's task priority, which the guest may
            // also have set through the APIC's registers.
            if let Some(v) = cpu.platform.cr8() {
                cpu.state.cr8 = v & CR8_MAX;
            }
            cpu.state.cr8
        }
        _ => return Err(Exception::InvalidOpcode),
    };
    let r = insn.op0_register();
    reg_write(&mut cpu.state, r, v);
    Ok(())
}

/// CR4 bits this CPU model implements.
/// VME and PVI are not implemented (and not advertised): setting them is #GP.
const CR4_VALID: u64 = cr::CR4_TSD
    | cr::CR4_DE
    | cr::CR4_PSE
    | cr::CR4_PAE
    | cr::CR4_MCE
    | cr::CR4_PGE
    | cr::CR4_PCE
    | cr::CR4_OSFXSR
    | cr::CR4_OSXMMEXCPT
    | cr::CR4_OSXSAVE
    | cr::CR4_UMIP
    | cr::CR4_FSGSBASE
    | cr::CR4_PCIDE
    | cr::CR4_SMEP
    | cr::CR4_SMAP;

/// EFER bits the model implements: WRMSR of any other bit is #GP.
pub(crate) const EFER_VALID: u64 = cr::EFER_SCE | cr::EFER_LME | cr::EFER_LMA | cr::EFER_NXE;

/// The largest value MOV to CR8 takes (the TPR class, bits 3:0).
pub(crate) const CR8_MAX: u64 = 0xf;

/// Whether MOV to CR0 takes `v` whatever the rest of the state (bits 63:32
/// clear, no PG without PE, no NW without CD).
pub(crate) fn cr0_valid(v: u64) -> bool {
    v >> 32 == 0 && (v & cr::CR0_PG == 0 || v & cr::CR0_PE != 0) && (v & cr::CR0_NW == 0 || v & cr::CR0_CD != 0)
}

/// Whether MOV to CR4 takes `v` whatever the rest of the state: only bits
/// the model implements, OSXSAVE only when XSAVE is offered, and PKE and
/// PKS only with the protection keys (`pku`).
pub(crate) fn cr4_valid(v: u64, xsave: bool, pku: bool) -> bool {
    let keys = cr::CR4_PKE | cr::CR4_PKS;
    v & !(CR4_VALID | keys) == 0 && (xsave || v & cr::CR4_OSXSAVE == 0) && (pku || v & keys == 0)
}

/// Whether MOV to CR3 takes `v` (after PCIDE's bit 63 is dropped): in long
/// mode no bit at or above MAXPHYADDR.
pub(crate) fn cr3_valid(v: u64, long_mode: bool) -> bool {
    !long_mode || v >> mmu::paging::MAXPHYADDR == 0
}

impl Cpu {
    /// Write CR0 with its architectural checks and side effects.
    pub fn write_cr0(&mut self, v: u64) -> Fault<()> {
        let v = v | cr::CR0_ET;
        if !cr0_valid(v) {
            return Err(GP0);
        }
        let old = self.state.cr0;
        let pg_on = v & cr::CR0_PG != 0 && old & cr::CR0_PG == 0;
        let pg_off = v & cr::CR0_PG == 0 && old & cr::CR0_PG != 0;
        if pg_on && self.state.efer & cr::EFER_LME != 0 {
            if self.state.cr4 & cr::CR4_PAE == 0 {
                return Err(GP0);
            }
            self.state.efer |= cr::EFER_LMA;
        }
        if pg_off && self.state.long_mode() {
            if self.state.code64() {
                return Err(GP0);
            }
            self.state.efer &= !cr::EFER_LMA;
        }
        if v & cr::CR0_PE == 0 && old & cr::CR0_PE != 0 {
            self.state.cpl = 0;
        }
        self.state.cr0 = v;
        self.after_paging_change(true);
        Ok(())
    }

    /// Write CR4 with its architectural checks.
    pub fn write_cr4(&mut self, v: u64) -> Fault<()> {
        if !cr4_valid(v, self.xsave, self.pku()) {
            return Err(GP0);
        }
        if self.state.long_mode() && v & cr::CR4_PAE == 0 {
            return Err(GP0);
        }
        if v & cr::CR4_PCIDE != 0
            && self.state.cr4 & cr::CR4_PCIDE == 0
            && (!self.state.long_mode() || self.state.cr3 & 0xfff != 0)
        {
            return Err(GP0);
        }
        self.state.cr4 = v;
        self.after_paging_change(true);
        Ok(())
    }

    /// Write CR3: a new page-table base, flushing non-global translations.
    pub fn write_cr3(&mut self, v: u64) -> Fault<()> {
        let pcide = self.state.cr4 & cr::CR4_PCIDE != 0;
        let v = if pcide { v & !(1 << 63) } else { v };
        if !cr3_valid(v, self.state.long_mode()) {
            return Err(GP0);
        }
        self.state.cr3 = v;
        self.update_paging();
        self.mmu.flush(self.state.cr4 & cr::CR4_PGE != 0);
        Ok(())
    }

    /// Load PKRU (WRPKRU, XRSTOR): the soft TLB holds rights the old value
    /// gave, so a change flushes it whole.
    pub(crate) fn set_pkru(&mut self, v: u32) {
        if self.state.pkru != v {
            self.state.pkru = v;
            self.after_paging_change(true);
        }
    }

    /// Load IA32_PKRS (WRMSR), flushing the soft TLB on a change.
    pub(crate) fn set_pkrs(&mut self, v: u32) {
        if self.state.pkrs != v {
            self.state.pkrs = v;
            self.after_paging_change(true);
        }
    }

    fn after_paging_change(&mut self, full: bool) {
        self.update_paging();
        self.mmu.flush(!full);
        self.block_break = true;
    }

    /// Write EFER (MSR C000_0080).
    pub fn write_efer(&mut self, v: u64) -> Fault<()> {
        if v & !EFER_VALID != 0 {
            return Err(GP0);
        }
        let lme_changed = (v ^ self.state.efer) & cr::EFER_LME != 0;
        if lme_changed && self.state.cr0 & cr::CR0_PG != 0 {
            return Err(GP0);
        }
        // LMA is read-only: it follows CR0.PG.
        self.state.efer = (v & !cr::EFER_LMA) | (self.state.efer & cr::EFER_LMA);
        self.after_paging_change(true);
        Ok(())
    }
}

fn mov_to_cr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    let v = reg_read(&cpu.state, insn.op1_register());
    match cr_number(insn.op0_register()) {
        0 => cpu.write_cr0(v)?,
        2 => cpu.state.cr2 = v,
        3 => cpu.write_cr3(v)?,
        4 => cpu.write_cr4(v)?,
        8 => {
            if v > CR8_MAX {
                return Err(GP0);
            }
            cpu.state.cr8 = v;
            cpu.platform.set_cr8(v);
        }
        _ => return Err(Exception::InvalidOpcode),
    }
    cpu.block_break = true;
    Ok(())
}

fn dr_number(r: Register) -> usize {
    r as usize - Register::DR0 as usize
}

/// DR7.GD: any debug-register access is a #DB fault with DR6.BD.
fn general_detect(cpu: &mut Cpu) -> Fault<()> {
    if cpu.state.dr[7] & crate::ops::debug::dr7::GD != 0 {
        cpu.state.dr[6] |= crate::ops::debug::dr6::BD;
        // A fault-class #DB: the saved RF is 1.
        cpu.state.rflags |= flags::RF;
        return Err(Exception::Debug);
    }
    Ok(())
}

fn mov_from_dr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    general_detect(cpu)?;
    let mut n = dr_number(insn.op1_register());
    if n == 4 || n == 5 {
        if cpu.state.cr4 & cr::CR4_DE != 0 {
            return Err(Exception::InvalidOpcode);
        }
        n += 2;
    }
    let v = cpu.state.dr[n];
    reg_write(&mut cpu.state, insn.op0_register(), v);
    Ok(())
}

fn mov_to_dr(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    general_detect(cpu)?;
    let mut n = dr_number(insn.op0_register());
    if n == 4 || n == 5 {
        if cpu.state.cr4 & cr::CR4_DE != 0 {
            return Err(Exception::InvalidOpcode);
        }
        n += 2;
    }
    let v = reg_read(&cpu.state, insn.op1_register());
    if n >= 6 && cpu.state.code64() && v >> 32 != 0 {
        return Err(GP0);
    }
    cpu.state.dr[n] = match n {
        // DR6: bits 11:4 and 31:16 read as one (bit 12 as zero).
        6 => (v & 0x0000_e00f) | 0xffff_0ff0,
        // DR7: bit 10 reads as one.
        7 => (v & 0xffff_2bff) | 0x400,
        _ => v,
    };
    Ok(())
}

fn lmsw(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    let v = read_op(cpu, insn, 0, 2)?;
    // LMSW changes PE, MP, EM and TS, and cannot clear PE.
    let cur = cpu.state.cr0;
    let new = (cur & !0xe) | (v & 0xf) | (cur & cr::CR0_PE);
    cpu.write_cr0(new)
}

fn smsw(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.cr4 & cr::CR4_UMIP != 0 {
        require_cpl0(cpu)?;
    }
    let v = cpu.state.cr0;
    let size = if insn.op0_kind() == OpKind::Memory { 2 } else { size0(insn) };
    write_op(cpu, insn, 0, size, v)
}

fn rdmsr(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    let msr = cpu.state.gpr[1] as u32;
    let v = cpu.read_msr(msr)?;
    cpu.state.gpr[0] = v & 0xffff_ffff;
    cpu.state.gpr[2] = v >> 32;
    Ok(())
}

fn wrmsr(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    let msr = cpu.state.gpr[1] as u32;
    let v = (cpu.state.gpr[2] << 32) | (cpu.state.gpr[0] & 0xffff_ffff);
    cpu.write_msr(msr, v)?;
    cpu.block_break = true;
    Ok(())
}

fn cpuid(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    let leaf = cpu.state.gpr[0] as u32;
    let sub = cpu.state.gpr[1] as u32;
    let r = cpu.cpuid(leaf, sub);
    cpu.state.gpr[0] = u64::from(r[0]);
    cpu.state.gpr[3] = u64::from(r[1]);
    cpu.state.gpr[1] = u64::from(r[2]);
    cpu.state.gpr[2] = u64::from(r[3]);
    Ok(())
}

fn rdtscp(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    rdtsc(cpu, insn)?;
    cpu.state.gpr[1] = cpu.state.msr.tsc_aux & 0xffff_ffff;
    Ok(())
}

/// RDPID: IA32_TSC_AUX into a register (not subject to CR4.TSD).
fn rdpid(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let v = cpu.state.msr.tsc_aux & 0xffff_ffff;
    reg_write(&mut cpu.state, insn.op0_register(), v);
    Ok(())
}

/// RDPKRU: EAX = PKRU, EDX = 0. #UD without CR4.PKE (or with LOCK), #GP(0)
/// unless ECX is 0.
fn rdpkru(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.cr4 & cr::CR4_PKE == 0 || insn.has_lock_prefix() {
        return Err(Exception::InvalidOpcode);
    }
    if cpu.state.gpr[1] as u32 != 0 {
        return Err(GP0);
    }
    cpu.state.gpr[0] = u64::from(cpu.state.pkru);
    cpu.state.gpr[2] = 0;
    Ok(())
}

/// WRPKRU: PKRU = EAX, at any CPL. #UD without CR4.PKE (or with LOCK),
/// #GP(0) unless ECX and EDX are 0.
fn wrpkru(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.cr4 & cr::CR4_PKE == 0 || insn.has_lock_prefix() {
        return Err(Exception::InvalidOpcode);
    }
    if cpu.state.gpr[1] as u32 != 0 || cpu.state.gpr[2] as u32 != 0 {
        return Err(GP0);
    }
    cpu.set_pkru(cpu.state.gpr[0] as u32);
    Ok(())
}

/// RDPMC: the four legacy counters of the model exist and count nothing.
fn rdpmc(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    if cpu.state.cr4 & cr::CR4_PCE == 0 && cpu.state.protected() && cpu.state.cpl != 0 {
        return Err(GP0);
    }
    if cpu.state.gpr[1] as u32 > 3 {
        return Err(GP0);
    }
    cpu.state.gpr[0] = 0;
    cpu.state.gpr[2] = 0;
    Ok(())
}

/// RDFSBASE, RDGSBASE, WRFSBASE, WRGSBASE (64-bit mode with CR4.FSGSBASE).
fn fsgsbase(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if !cpu.state.code64() || cpu.state.cr4 & cr::CR4_FSGSBASE == 0 {
        return Err(Exception::InvalidOpcode);
    }
    let (seg, write) = match insn.mnemonic() {
        Mnemonic::Rdfsbase => (sreg::FS, false),
        Mnemonic::Rdgsbase => (sreg::GS, false),
        Mnemonic::Wrfsbase => (sreg::FS, true),
        _ => (sreg::GS, true),
    };
    let r = insn.op0_register();
    if write {
        let v = reg_read(&cpu.state, r);
        if !is_canonical(v) {
            return Err(GP0);
        }
        cpu.state.seg[seg].base = v;
    } else {
        let v = cpu.state.seg[seg].base;
        reg_write(&mut cpu.state, r, v);
    }
    Ok(())
}

/// CLAC and STAC (SMAP): CPL 0 only.
fn clac_stac(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.protected() && cpu.state.cpl != 0 {
        return Err(Exception::InvalidOpcode);
    }
    if insn.mnemonic() == Mnemonic::Stac {
        cpu.state.rflags |= flags::AC;
    } else {
        cpu.state.rflags &= !flags::AC;
    }
    Ok(())
}

/// INVPCID types 0-3. PCIDs are modelled by flushing: every type drops at
/// least the translations it names.
fn invpcid(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    let typ = reg_read(&cpu.state, insn.op0_register());
    let seg = mem_seg(insn);
    let a = ea(&cpu.state, insn);
    let lo = cpu.read_mem(seg, a, 8)?;
    let addr = cpu.read_mem(seg, a.wrapping_add(8), 8)?;
    if typ > 3 || lo >> 12 != 0 {
        return Err(GP0);
    }
    let pcid = lo & 0xfff;
    let pcide = cpu.state.cr4 & cr::CR4_PCIDE != 0;
    match typ {
        0 => {
            if !is_canonical(addr) || (!pcide && pcid != 0) {
                return Err(GP0);
            }
            cpu.mmu.flush_page(addr);
        }
        1 => {
            if !pcide && pcid != 0 {
                return Err(GP0);
            }
            cpu.mmu.flush(true);
        }
        2 => cpu.mmu.flush(false),
        _ => cpu.mmu.flush(true),
    }
    cpu.block_break = true;
    Ok(())
}

fn rdtsc(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    let t = rdtsc_value(cpu)?;
    cpu.state.gpr[0] = t & 0xffff_ffff;
    cpu.state.gpr[2] = t >> 32;
    Ok(())
}

/// What RDTSC reads now: #GP(0) under CR4.TSD outside ring 0.
pub fn rdtsc_value(cpu: &mut Cpu) -> Fault<u64> {
    if cpu.state.cr4 & cr::CR4_TSD != 0 && cpu.state.protected() && cpu.state.cpl != 0 {
        return Err(GP0);
    }
    Ok(cpu.tsc())
}

// ---- far transfers -------------------------------------------------------------

/// Selector and offset of a far JMP/CALL operand.
fn far_target(cpu: &mut Cpu, insn: &Instruction) -> Fault<(u16, u64)> {
    match insn.op0_kind() {
        OpKind::FarBranch16 => Ok((insn.far_branch_selector(), u64::from(insn.far_branch16()))),
        OpKind::FarBranch32 => Ok((insn.far_branch_selector(), u64::from(insn.far_branch32()))),
        _ => {
            let osize = match insn.code() {
                Code::Jmp_m1616 | Code::Call_m1616 => 2,
                Code::Jmp_m1664 | Code::Call_m1664 => 8,
                _ => 4,
            };
            let seg = mem_seg(insn);
            let a = ea(&cpu.state, insn);
            let off = cpu.read_mem(seg, a, osize)?;
            let sel = cpu.read_mem(seg, a.wrapping_add(u64::from(osize)), 2)? as u16;
            Ok((sel, off))
        }
    }
}

fn far_jmp(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let (sel, off) = far_target(cpu, insn)?;
    cpu.far_jump(sel, off)
}

fn far_call(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let (sel, off) = far_target(cpu, insn)?;
    let size = insn.stack_pointer_increment().unsigned_abs() / 2;
    cpu.far_call(sel, off, size)
}

/// Null DS/ES/FS/GS whose DPL is below the new CPL after a return to an outer level.
fn null_outer_segments(cpu: &mut Cpu) {
    let cpl = cpu.state.cpl;
    for s in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        let seg = cpu.state.seg[s];
        let conforming_code = seg.attr & seg_attr::TYPE_CODE != 0 && seg.attr & seg_attr::TYPE_DC != 0;
        if seg.attr & seg_attr::UNUSABLE == 0 && !conforming_code && seg.dpl() < cpl {
            cpu.state.seg[s] = Segment { selector: 0, attr: seg_attr::UNUSABLE, base: seg.base, ..Default::default() };
        }
    }
}

/// Checks on the code segment of a far return or IRET; returns its descriptor.
fn check_return_cs(cpu: &mut Cpu, sel: u16) -> Fault<Descriptor> {
    if sel & !3 == 0 {
        return Err(GP0);
    }
    let d = cpu.read_descriptor(sel)?;
    let rpl = (sel & 3) as u8;
    let gp = Exception::GeneralProtection(sel_err(sel));
    if !d.is_code() || rpl < cpu.state.cpl {
        return Err(gp);
    }
    let conforming = d.typ() & seg_attr::TYPE_DC != 0;
    if (conforming && d.dpl() > rpl) || (!conforming && d.dpl() != rpl) {
        return Err(gp);
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    Ok(d)
}

/// Load SS for a return to an outer privilege level `rpl`.
fn load_outer_ss(cpu: &mut Cpu, sel: u16, rpl: u8, to64: bool) -> Fault<Segment> {
    if sel & !3 == 0 {
        if to64 && rpl != 3 {
            return Ok(Segment {
                selector: sel,
                attr: seg_attr::P
                    | seg_attr::S
                    | seg_attr::TYPE_RW
                    | seg_attr::DB
                    | (u32::from(rpl) << seg_attr::DPL_SHIFT),
                ..Default::default()
            });
        }
        return Err(GP0);
    }
    let d = cpu.read_descriptor(sel)?;
    let gp = Exception::GeneralProtection(sel_err(sel));
    if (sel & 3) as u8 != rpl || d.dpl() != rpl || d.is_code() || !d.is_code_data() || d.typ() & seg_attr::TYPE_RW == 0
    {
        return Err(gp);
    }
    if !d.present() {
        return Err(Exception::StackFault(sel_err(sel)));
    }
    cpu.set_accessed(sel, &d)?;
    let mut s = d.to_segment(sel);
    s.attr |= seg_attr::TYPE_ACCESSED;
    Ok(s)
}

fn retf(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = match insn.code() {
        Code::Retfw | Code::Retfw_imm16 => 2,
        Code::Retfq | Code::Retfq_imm16 => 8,
        _ => 4,
    };
    let imm = if insn.op_count() == 1 { u64::from(insn.immediate16()) } else { 0 };
    let off = cpu.peek(0, size)?;
    let sel = cpu.peek(u64::from(size), size)? as u16;
    if !cpu.state.protected() || cpu.state.v86() {
        cpu.pop(size)?;
        cpu.pop(size)?;
        adjust_sp(cpu, imm);
        cpu.load_real_segment(sreg::CS, sel);
        cpu.state.rip = off & super::mask(size);
        cpu.block_break = true;
        return Ok(());
    }
    let d = check_return_cs(cpu, sel)?;
    let rpl = (sel & 3) as u8;
    let to64 = cpu.state.long_mode() && d.attr() & seg_attr::L != 0;
    let off = if to64 { off } else { off & super::mask(size) };
    if to64 && !is_canonical(off) {
        return Err(GP0);
    }
    if !to64 && off > u64::from(d.limit()) {
        return Err(GP0);
    }
    if rpl == cpu.state.cpl {
        cpu.pop(size)?;
        cpu.pop(size)?;
        adjust_sp(cpu, imm);
        cpu.set_cs(sel, &d, rpl)?;
        cpu.state.rip = off;
        return Ok(());
    }
    // Return to an outer level: the caller's SS:rSP sit above the immediate.
    let sp = cpu.peek(2 * u64::from(size) + imm, size)?;
    let ss = cpu.peek(3 * u64::from(size) + imm, size)? as u16;
    let ss_seg = load_outer_ss(cpu, ss, rpl, to64)?;
    cpu.set_cs(sel, &d, rpl)?;
    cpu.state.seg[sreg::SS] = ss_seg;
    cpu.state.gpr[4] = if size == 2 { (cpu.state.gpr[4] & !0xffff) | (sp & 0xffff) } else { sp };
    adjust_sp(cpu, imm);
    cpu.state.rip = off;
    null_outer_segments(cpu);
    Ok(())
}

fn adjust_sp(cpu: &mut Cpu, n: u64) {
    if n == 0 {
        return;
    }
    let m = match cpu.stack_size() {
        8 => u64::MAX,
        4 => 0xffff_ffff,
        _ => 0xffff,
    };
    let sp = cpu.state.gpr[4];
    cpu.state.gpr[4] = (sp & !m) | (sp.wrapping_add(n) & m);
}

fn iret(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    let size = match insn.code() {
        Code::Iretw => 2,
        Code::Iretq => 8,
        _ => 4,
    };
    // IRET unblocks NMIs even when it faults (SDM Vol. 3A §6.7.1): the
    // handler of that fault already runs with NMIs unblocked.
    cpu.state.nmi_blocked = 0;
    if !cpu.state.protected() {
        let ip = cpu.peek(0, size)?;
        let cs = cpu.peek(u64::from(size), size)? as u16;
        let fl = cpu.peek(2 * u64::from(size), size)?;
        if ip > u64::from(cpu.state.seg[sreg::CS].limit) {
            return Err(GP0);
        }
        cpu.pop(size)?;
        cpu.pop(size)?;
        cpu.pop(size)?;
        cpu.load_real_segment(sreg::CS, cs);
        cpu.state.rip = ip;
        cpu.set_flags_from_pop(fl, size);
        load_rf(cpu, fl, size);
        cpu.state.nmi_blocked = 0;
        cpu.block_break = true;
        return Ok(());
    }
    if cpu.state.v86() {
        if iopl_of(cpu) < 3 {
            return Err(GP0);
        }
        let ip = cpu.peek(0, size)?;
        let cs = cpu.peek(u64::from(size), size)? as u16;
        let fl = cpu.peek(2 * u64::from(size), size)?;
        cpu.pop(size)?;
        cpu.pop(size)?;
        cpu.pop(size)?;
        cpu.load_real_segment(sreg::CS, cs);
        cpu.state.rip = ip & 0xffff;
        // IOPL and VM are not changed from virtual-8086 mode.
        let keep = flags::IOPL | flags::VM;
        let cur = cpu.state.flags();
        let mask = if size == 2 { 0xffff } else { flags::ALL & !(flags::VIF | flags::VIP) };
        cpu.state.rflags = (cur & (keep | !mask)) | (fl & mask & !keep) | flags::FIXED;
        cpu.state.nmi_blocked = 0;
        cpu.block_break = true;
        return Ok(());
    }
    if cpu.state.rflags & flags::NT != 0 {
        if cpu.state.long_mode() {
            return Err(GP0);
        }
        return cpu.task_return();
    }
    let ip = cpu.peek(0, size)?;
    let cs = cpu.peek(u64::from(size), size)? as u16;
    let fl = cpu.peek(2 * u64::from(size), size)?;
    let long = cpu.state.long_mode();
    if !long && size == 4 && fl & flags::VM != 0 && cpu.state.cpl == 0 {
        return iret_to_v86(cpu, ip, cs, fl);
    }
    let d = check_return_cs(cpu, cs)?;
    let rpl = (cs & 3) as u8;
    let to64 = long && d.attr() & seg_attr::L != 0;
    if to64 && !is_canonical(ip) {
        return Err(GP0);
    }
    let ip = if to64 { ip } else { ip & super::mask(size.min(4)) };
    // 64-bit mode always pops SS:RSP; otherwise only on a privilege change.
    let pops_stack = cpu.state.code64() || rpl > cpu.state.cpl;
    let mut new_ss = None;
    if pops_stack {
        let sp = cpu.peek(3 * u64::from(size), size)?;
        let ss = cpu.peek(4 * u64::from(size), size)? as u16;
        let seg = if rpl == cpu.state.cpl && cpu.state.code64() && ss & !3 == 0 && rpl != 3 {
            Segment { selector: ss, attr: cpu.state.seg[sreg::SS].attr, ..Default::default() }
        } else {
            load_outer_ss(cpu, ss, rpl, to64)?
        };
        new_ss = Some((seg, sp));
    }
    let old_cpl = cpu.state.cpl;
    if new_ss.is_none() {
        cpu.pop(size)?;
        cpu.pop(size)?;
        cpu.pop(size)?;
    }
    cpu.set_cs(cs, &d, rpl)?;
    // Flags use the privilege rules of the old CPL.
    cpu.state.cpl = old_cpl;
    cpu.set_flags_from_pop(fl, size);
    load_rf(cpu, fl, size);
    cpu.state.cpl = rpl;
    cpu.state.rip = ip;
    if let Some((seg, sp)) = new_ss {
        cpu.state.seg[sreg::SS] = seg;
        cpu.state.gpr[4] = if size == 2 { (cpu.state.gpr[4] & !0xffff) | (sp & 0xffff) } else { sp };
    }
    if rpl > old_cpl {
        null_outer_segments(cpu);
    }
    cpu.state.nmi_blocked = 0;
    cpu.update_paging();
    Ok(())
}

/// IRET with a 32- or 64-bit operand loads RF from the image (a debug
/// handler sets it to step over an instruction breakpoint).
fn load_rf(cpu: &mut Cpu, fl: u64, size: u32) {
    if size >= 4 {
        cpu.state.rflags |= fl & flags::RF;
    }
}

fn iopl_of(cpu: &Cpu) -> u8 {
    iopl(cpu)
}

fn iret_to_v86(cpu: &mut Cpu, ip: u64, cs: u16, fl: u64) -> Fault<()> {
    let vals: Vec<u64> = (3..9).map(|i| cpu.peek(4 * i, 4)).collect::<Fault<_>>()?;
    let (esp, ss, es, ds, fs, gs) = (vals[0], vals[1], vals[2], vals[3], vals[4], vals[5]);
    if ip > 0xffff {
        return Err(GP0);
    }
    cpu.state.lazy.op = 0;
    cpu.state.rflags = (fl & flags::ALL) | flags::FIXED;
    cpu.state.cpl = 3;
    for (s, sel) in [
        (sreg::CS, cs),
        (sreg::SS, ss as u16),
        (sreg::ES, es as u16),
        (sreg::DS, ds as u16),
        (sreg::FS, fs as u16),
        (sreg::GS, gs as u16),
    ] {
        cpu.load_real_segment(s, sel);
    }
    cpu.state.gpr[4] = esp & 0xffff_ffff;
    cpu.state.rip = ip & 0xffff;
    cpu.block_break = true;
    Ok(())
}

// ---- fast system calls -----------------------------------------------------------

fn flat(selector: u16, dpl: u8, code: bool, long: bool) -> Segment {
    let mut attr = seg_attr::P
        | seg_attr::S
        | seg_attr::G
        | seg_attr::TYPE_ACCESSED
        | seg_attr::TYPE_RW
        | (u32::from(dpl) << seg_attr::DPL_SHIFT);
    if code {
        attr |= seg_attr::TYPE_CODE;
        attr |= if long { seg_attr::L } else { seg_attr::DB };
    } else {
        attr |= seg_attr::DB;
    }
    Segment { base: 0, limit: 0xffff_ffff, attr, selector, _pad: [0; 3] }
}

fn syscall(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    syscall_entry(cpu)?;
    step_trap_at_end(cpu)
}

/// SYSCALL and SYSRET single-step on the TF they end with, not the one they
/// start with (APM Vol. 2 "Single-Step"; SDM Vol. 3B §17.3.1.4): a SYSCALL
/// whose SFMASK clears TF does not trap in the kernel, a SYSRET that loads
/// TF = 1 from R11 traps at its first user instruction. The debug path of
/// the run loop leaves these two to this.
fn step_trap_at_end(cpu: &mut Cpu) -> Fault<()> {
    if cpu.state.rflags & flags::TF != 0 {
        cpu.state.dr[6] |= super::debug::dr6::BS;
        return Err(Exception::DebugTrap);
    }
    Ok(())
}

/// SYSCALL's effect, with RIP already past the instruction.
pub(crate) fn syscall_entry(cpu: &mut Cpu) -> Fault<()> {
    if cpu.state.efer & cr::EFER_SCE == 0 || !cpu.state.protected() {
        return Err(Exception::InvalidOpcode);
    }
    let star = cpu.state.msr.star;
    let sel = ((star >> 32) & 0xfffc) as u16;
    let rfl = cpu.state.flags();
    if cpu.state.long_mode() {
        cpu.state.gpr[1] = cpu.state.rip;
        cpu.state.gpr[11] = rfl & !flags::RF;
        let target = if cpu.state.code64() { cpu.state.msr.lstar } else { cpu.state.msr.cstar };
        cpu.state.seg[sreg::CS] = flat(sel, 0, true, true);
        cpu.state.seg[sreg::SS] = flat(sel + 8, 0, false, false);
        cpu.state.rflags = (rfl & !cpu.state.msr.sfmask & !flags::RF) | flags::FIXED;
        cpu.state.rip = target;
    } else {
        cpu.state.gpr[1] = cpu.state.rip & 0xffff_ffff;
        cpu.state.seg[sreg::CS] = flat(sel, 0, true, false);
        cpu.state.seg[sreg::SS] = flat(sel + 8, 0, false, false);
        cpu.state.rflags = (rfl & !(flags::VM | flags::IF | flags::RF)) | flags::FIXED;
        cpu.state.rip = star & 0xffff_ffff;
    }
    cpu.state.cpl = 0;
    cpu.block_break = true;
    Ok(())
}

fn sysret(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.efer & cr::EFER_SCE == 0 {
        return Err(Exception::InvalidOpcode);
    }
    if !cpu.state.protected() || cpu.state.cpl != 0 {
        return Err(GP0);
    }
    let base = ((cpu.state.msr.star >> 48) & 0xffff) as u16;
    if cpu.state.long_mode() {
        let to64 = insn.code() == Code::Sysretq;
        let rip = if to64 { cpu.state.gpr[1] } else { cpu.state.gpr[1] & 0xffff_ffff };
        if to64 && !is_canonical(rip) {
            return Err(GP0);
        }
        let cs_sel = if to64 { base.wrapping_add(16) } else { base } | 3;
        cpu.state.seg[sreg::CS] = flat(cs_sel, 3, true, to64);
        let r11 = cpu.state.gpr[11];
        cpu.state.rflags = (r11 & 0x3c_7fd7) | flags::FIXED;
        cpu.state.lazy.op = 0;
        cpu.state.rip = rip;
    } else {
        cpu.state.seg[sreg::CS] = flat(base | 3, 3, true, false);
        cpu.state.rflags |= flags::IF;
        cpu.state.rip = cpu.state.gpr[1] & 0xffff_ffff;
    }
    // SS gets the selector; its cached attributes stay as SYSCALL left them
    // except for the DPL (AMD keeps them; a flat DPL-3 data segment is the
    // architectural Intel result).
    cpu.state.seg[sreg::SS] = flat(base.wrapping_add(8) | 3, 3, false, false);
    cpu.state.cpl = 3;
    cpu.block_break = true;
    step_trap_at_end(cpu)
}

/// SYSENTER. The model is an AMD one: SYSENTER and SYSEXIT are #UD in
/// long mode (AMD64 APM Vol. 3), and exist in legacy protected mode.
fn sysenter(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    if cpu.state.long_mode() {
        return Err(Exception::InvalidOpcode);
    }
    if !cpu.state.protected() {
        return Err(GP0);
    }
    let cs = (cpu.state.msr.sysenter_cs & 0xfffc) as u16;
    if cs == 0 {
        return Err(GP0);
    }
    let long = cpu.state.long_mode();
    cpu.state.materialize_flags();
    cpu.state.rflags &= !(flags::VM | flags::IF | flags::RF);
    cpu.state.seg[sreg::CS] = flat(cs, 0, true, long);
    cpu.state.seg[sreg::SS] = flat(cs + 8, 0, false, false);
    cpu.state.cpl = 0;
    cpu.state.gpr[4] = if long { cpu.state.msr.sysenter_esp } else { cpu.state.msr.sysenter_esp & 0xffff_ffff };
    cpu.state.rip = if long { cpu.state.msr.sysenter_eip } else { cpu.state.msr.sysenter_eip & 0xffff_ffff };
    cpu.block_break = true;
    Ok(())
}

fn sysexit(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    if cpu.state.long_mode() {
        return Err(Exception::InvalidOpcode);
    }
    let cs = (cpu.state.msr.sysenter_cs & 0xfffc) as u16;
    if !cpu.state.protected() || cpu.state.cpl != 0 || cs == 0 {
        return Err(GP0);
    }
    let to64 = insn.code() == Code::Sysexitq;
    let (cs_sel, ss_sel) = if to64 { (cs + 32, cs + 40) } else { (cs + 16, cs + 24) };
    let (rip, rsp) = if to64 {
        (cpu.state.gpr[2], cpu.state.gpr[1])
    } else {
        (cpu.state.gpr[2] & 0xffff_ffff, cpu.state.gpr[1] & 0xffff_ffff)
    };
    if to64 && (!is_canonical(rip) || !is_canonical(rsp)) {
        return Err(GP0);
    }
    cpu.state.seg[sreg::CS] = flat(cs_sel | 3, 3, true, to64);
    cpu.state.seg[sreg::SS] = flat(ss_sel | 3, 3, false, false);
    cpu.state.cpl = 3;
    cpu.state.rip = rip;
    cpu.state.gpr[4] = rsp;
    cpu.block_break = true;
    Ok(())
}

fn swapgs(cpu: &mut Cpu, _: &Instruction) -> Fault<()> {
    if !cpu.state.code64() {
        return Err(Exception::InvalidOpcode);
    }
    require_cpl0(cpu)?;
    std::mem::swap(&mut cpu.state.seg[sreg::GS].base, &mut cpu.state.msr.kernel_gs_base);
    Ok(())
}

fn invlpg(cpu: &mut Cpu, insn: &Instruction) -> Fault<()> {
    require_cpl0(cpu)?;
    let a = ea(&cpu.state, insn);
    let lin = if cpu.state.code64() {
        let s = mem_seg(insn);
        let base = if s >= sreg::FS { cpu.state.seg[s].base } else { 0 };
        base.wrapping_add(a)
    } else {
        cpu.state.seg[mem_seg(insn)].base.wrapping_add(a) & 0xffff_ffff
    };
    cpu.mmu.flush_page(lin);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::cpu::{is_canonical, Cpu};
    use crate::exception::{Exception, GP0};
    use crate::state::{cr, flags, sreg};
    use iced_x86::code_asm::*;

    /// A platform whose local APIC holds a task priority.
    struct Apic(std::sync::Arc<std::sync::Mutex<u64>>);

    impl crate::Platform for Apic {
        fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
            0
        }
        fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
        fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {}
        fn cr8(&mut self) -> Option<u64> {
            Some(*self.0.lock().unwrap())
        }
        fn set_cr8(&mut self, value: u64) -> bool {
            *self.0.lock().unwrap() = value;
            true
        }
    }

    /// CR8 is the platform's local APIC's task priority: a MOV to CR8 sets
    /// it, a MOV from CR8 reads what the APIC holds (set through its
    /// registers too); a value past 15 is #GP(0) and changes nothing.
    #[test]
    fn cr8_is_the_local_apics_task_priority() {
        let mut c = long_mode();
        let tpr = std::sync::Arc::new(std::sync::Mutex::new(0));
        c.platform = Box::new(Apic(tpr.clone()));
        c.state.gpr[0] = 9;
        exec_bytes(&mut c, &[0x44, 0x0f, 0x22, 0xc0]).unwrap(); // mov cr8, rax
        assert_eq!((*tpr.lock().unwrap(), c.state.cr8), (9, 9));
        // The guest writes the APIC's TPR register (0x50: class 5).
        *tpr.lock().unwrap() = 5;
        exec_bytes(&mut c, &[0x44, 0x0f, 0x20, 0xc3]).unwrap(); // mov rbx, cr8
        assert_eq!((c.state.gpr[3], c.state.cr8), (5, 5));
        c.state.gpr[0] = 16;
        assert_eq!(exec_bytes(&mut c, &[0x44, 0x0f, 0x22, 0xc0]), Err(GP0));
        assert_eq!(*tpr.lock().unwrap(), 5);
    }

    #[test]
    fn v86_iopl_sensitive_instructions() {
        let mut c = v86_mode(0);
        for code in [&[0xfa][..], &[0xfb], &[0x9c], &[0x9d], &[0xcd, 0x21], &[0xcf], &[0xf4], &[0x66, 0x9c]] {
            assert_eq!(exec_bytes(&mut c, code), Err(GP0), "{code:02x?}");
        }
        // INT3 and INTO are not IOPL-sensitive; INT1 neither.
        assert_eq!(exec_bytes(&mut c, &[0xcc]), Err(Exception::Breakpoint));
        assert_eq!(exec_bytes(&mut c, &[0xf1]), Err(Exception::DebugTrap));
        // Port I/O goes by the bitmap whatever IOPL is.
        assert_eq!(exec_bytes(&mut c, &[0xe4, 0x60]), Err(GP0));
        allow_port(&c, 0x60);
        assert!(exec_bytes(&mut c, &[0xe4, 0x60]).is_ok());
        let mut c = v86_mode(3);
        for code in [&[0xfa][..], &[0xfb], &[0x9c], &[0x9d]] {
            assert!(exec_bytes(&mut c, code).is_ok(), "{code:02x?}");
        }
        assert_eq!(exec_bytes(&mut c, &[0xe4, 0x61]), Err(GP0));
        // POPF keeps VM and IOPL.
        c.mem().write_u16(0x7ffe, 0x0200).unwrap();
        c.state.gpr[4] = 0x7ffe;
        exec_bytes(&mut c, &[0x9d]).unwrap();
        assert!(c.state.v86());
        assert_eq!(c.state.rflags & flags::IOPL, flags::IOPL);
        // Privileged instructions: #GP(0).
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x20, 0xc0]), Err(GP0)); // mov eax, cr0
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x01, 0x16, 0, 0]), Err(GP0)); // lgdt
    }

    #[test]
    fn int_n_from_v86_reaches_ring0_and_iret_returns() {
        let mut c = v86_mode(3);
        c.load_real_segment(sreg::DS, 0x1111);
        c.load_real_segment(sreg::ES, 0x2222);
        c.load_real_segment(sreg::FS, 0x3333);
        c.load_real_segment(sreg::GS, 0x4444);
        c.load_real_segment(sreg::SS, 0x5555);
        c.state.gpr[4] = 0x0ff0;
        step_bytes(&mut c, &[0xcd, 0x21]);
        assert_eq!(c.state.rip, stub(0x21));
        assert_eq!(c.state.cpl, 0);
        assert!(!c.state.v86());
        assert_eq!(c.state.gpr[4], KSTACK - 36);
        let frame: Vec<u32> = (0..9).map(|i| c.mem().read_u32(KSTACK - 36 + 4 * i).unwrap()).collect();
        assert_eq!(frame[..2], [2, 0x1000]);
        assert_ne!(u64::from(frame[2]) & flags::VM, 0);
        assert_eq!(frame[3..], [0x0ff0, 0x5555, 0x2222, 0x1111, 0x3333, 0x4444]);
        for s in [sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
            assert_eq!(c.state.seg[s].selector, 0);
        }
        // IRETD from ring 0 with VM in the image goes back to virtual-8086 mode.
        c.state.rip = CODE + 0x100;
        let r = exec_bytes(&mut c, &[0xcf]);
        assert!(r.is_ok(), "{r:?}");
        assert!(c.state.v86());
        assert_eq!(c.state.cpl, 3);
        assert_eq!(c.state.rip, 2);
        assert_eq!(c.state.seg[sreg::CS].base, 0x10000);
        assert_eq!(c.state.seg[sreg::GS].base, 0x44440);
        assert_eq!(c.state.seg[sreg::SS].selector, 0x5555);
        assert_eq!(c.state.gpr[4], 0x0ff0);
    }

    #[test]
    fn iret_to_v86_discards_stale_lazy_flags() {
        let mut c = prot_mode();
        let frame = [0x10u32, 0x1000, (flags::VM | flags::FIXED | flags::ZF) as u32, 0x100, 0, 0, 0, 0, 0];
        for (i, v) in frame.iter().enumerate() {
            c.mem().write_u32(KSTACK - 36 + 4 * i as u64, *v).unwrap();
        }
        c.state.gpr[4] = KSTACK - 36;
        // Leave a pending lazy result (non-zero: ZF clear) behind.
        c.state.gpr[0] = 1;
        exec_asm(&mut c, |a| a.add(eax, 1)).unwrap();
        exec_bytes(&mut c, &[0xcf]).unwrap();
        assert!(c.state.v86());
        assert_ne!(c.state.flags() & flags::ZF, 0);
    }

    #[test]
    fn io_permission_bitmap() {
        let mut c = prot_mode();
        to_user(&mut c, SEL_UCODE32);
        assert_eq!(exec_bytes(&mut c, &[0xe4, 0x70]), Err(GP0));
        allow_port(&c, 0x70);
        assert!(exec_bytes(&mut c, &[0xe4, 0x70]).is_ok());
        // A word access needs both bits clear.
        assert_eq!(exec_bytes(&mut c, &[0x66, 0xe5, 0x70]), Err(GP0));
        allow_port(&c, 0x71);
        assert!(exec_bytes(&mut c, &[0x66, 0xe5, 0x70]).is_ok());
        // Ports through DX, and the string forms.
        c.state.gpr[2] = 0x70;
        assert!(exec_bytes(&mut c, &[0xee]).is_ok());
        c.state.gpr[2] = 0x3f8;
        assert_eq!(exec_bytes(&mut c, &[0xee]), Err(GP0));
        assert_eq!(exec_bytes(&mut c, &[0x6e]), Err(GP0)); // outsb
                                                           // IOPL 3 skips the bitmap.
        c.state.rflags |= flags::IOPL;
        assert!(exec_bytes(&mut c, &[0xee]).is_ok());
        // A TSS limit that cuts the bitmap denies the ports beyond it.
        c.state.rflags &= !flags::IOPL;
        c.state.tr.limit = (IOMAP + 0x70 / 8) as u32;
        assert_eq!(exec_bytes(&mut c, &[0xe4, 0x70]), Err(GP0));
    }

    #[test]
    fn sysenter_sysexit_in_legacy_mode() {
        let mut c = prot_mode();
        to_user(&mut c, SEL_UCODE32);
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x34]), Err(GP0)); // SYSENTER_CS = 0
        c.state.msr.sysenter_cs = u64::from(SEL_CODE32);
        c.state.msr.sysenter_esp = KSTACK;
        c.state.msr.sysenter_eip = 0x30000;
        c.state.rflags |= flags::IF;
        exec_bytes(&mut c, &[0x0f, 0x34]).unwrap();
        assert_eq!((c.state.cpl, c.state.rip, c.state.gpr[4]), (0, 0x30000, KSTACK));
        assert_eq!(c.state.seg[sreg::CS].selector, SEL_CODE32);
        assert_eq!(c.state.seg[sreg::SS].selector, SEL_CODE32 + 8);
        assert_eq!(c.state.rflags & flags::IF, 0);
        c.state.gpr[2] = CODE + 2;
        c.state.gpr[1] = USTACK;
        exec_bytes(&mut c, &[0x0f, 0x35]).unwrap();
        assert_eq!((c.state.cpl, c.state.rip, c.state.gpr[4]), (3, CODE + 2, USTACK));
        assert_eq!(c.state.seg[sreg::CS].selector, (SEL_CODE32 + 16) | 3);
        assert_eq!(c.state.seg[sreg::SS].selector, (SEL_CODE32 + 24) | 3);
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x35]), Err(GP0)); // SYSEXIT from ring 3
                                                                 // Real mode: #GP; long mode (an AMD model): #UD.
        let mut c = real_mode();
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x34]), Err(GP0));
        let mut c = long_mode();
        c.state.msr.sysenter_cs = u64::from(SEL_CODE64);
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x34]), Err(Exception::InvalidOpcode));
    }

    #[test]
    fn fsgsbase() {
        let mut c = long_mode();
        c.state.gpr[0] = 0x1234_5678_9abc;
        assert_eq!(exec_asm(&mut c, |a| a.wrfsbase(rax)), Err(Exception::InvalidOpcode));
        c.write_cr4(c.state.cr4 | cr::CR4_FSGSBASE).unwrap();
        exec_asm(&mut c, |a| a.wrfsbase(rax)).unwrap();
        assert_eq!(c.state.seg[sreg::FS].base, 0x1234_5678_9abc);
        c.state.gpr[0] = 0x8000_0000_0000_0000;
        assert_eq!(exec_asm(&mut c, |a| a.wrgsbase(rax)), Err(GP0));
        c.state.gpr[0] = 0xffff_ffff_8000_0000;
        exec_asm(&mut c, |a| a.wrgsbase(eax)).unwrap();
        assert_eq!(c.state.seg[sreg::GS].base, 0x8000_0000);
        exec_asm(&mut c, |a| a.rdfsbase(ecx)).unwrap();
        assert_eq!(c.state.gpr[1], 0x5678_9abc);
        exec_asm(&mut c, |a| a.rdfsbase(rcx)).unwrap();
        assert_eq!(c.state.gpr[1], 0x1234_5678_9abc);
        // Only in 64-bit mode.
        let mut c = prot_mode();
        c.state.cr4 |= cr::CR4_FSGSBASE;
        assert_eq!(exec_bytes(&mut c, &[0xf3, 0x0f, 0xae, 0xc0]), Err(Exception::InvalidOpcode));
    }

    fn set_cr4(c: &mut Cpu, bits: u64) {
        c.state.cr4 |= bits;
        c.set_state(c.state);
    }

    #[test]
    fn smap_with_clac_stac_and_smep() {
        let mut c = long_mode();
        set_cr4(&mut c, cr::CR4_SMAP);
        c.state.gpr[3] = DATA;
        let load = [0x8b, 0x03];
        assert_eq!(exec_bytes(&mut c, &load), Err(Exception::PageFault { addr: DATA, error_code: 1 }));
        exec_bytes(&mut c, &[0x0f, 0x01, 0xcb]).unwrap(); // stac
        assert_ne!(c.state.rflags & flags::AC, 0);
        assert!(exec_bytes(&mut c, &load).is_ok());
        exec_bytes(&mut c, &[0x0f, 0x01, 0xca]).unwrap(); // clac
        assert_eq!(exec_bytes(&mut c, &[0x89, 0x03]), Err(Exception::PageFault { addr: DATA, error_code: 3 }));
        // Supervisor pages stay reachable.
        c.state.gpr[3] = SUPERVISOR;
        assert!(exec_bytes(&mut c, &load).is_ok());
        // CLAC/STAC are #UD outside ring 0.
        to_user(&mut c, SEL_UCODE64);
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x01, 0xcb]), Err(Exception::InvalidOpcode));
        // SMEP: ring 0 may not execute from a user page.
        let mut c = long_mode();
        set_cr4(&mut c, cr::CR4_SMEP);
        step_bytes(&mut c, &[0x90]);
        assert_eq!(c.state.rip, stub(14));
        assert_eq!(c.state.cr2, CODE);
        assert_eq!(error_code(&mut c, 8), 0x11);
    }

    #[test]
    fn invpcid_types_and_checks() {
        let mut c = long_mode();
        let desc = DATA + 0x100;
        let run = |c: &mut Cpu, typ: u64, pcid: u64, addr: u64| {
            c.mem().write_u64(desc, pcid).unwrap();
            c.mem().write_u64(desc + 8, addr).unwrap();
            c.state.gpr[0] = typ;
            c.state.gpr[3] = desc;
            exec_bytes(c, &[0x66, 0x0f, 0x38, 0x82, 0x03]) // invpcid rax, [rbx]
        };
        assert_eq!(run(&mut c, 4, 0, 0), Err(GP0));
        assert_eq!(run(&mut c, 0, 1 << 12, 0), Err(GP0));
        assert_eq!(run(&mut c, 0, 0, 0x8000_0000_0000_0000), Err(GP0));
        assert_eq!(run(&mut c, 1, 5, 0), Err(GP0)); // PCID != 0 without CR4.PCIDE
        for t in 0..4 {
            assert!(run(&mut c, t, 0, DATA).is_ok());
        }
        // Type 0 drops the translation of the page it names.
        let page = 0x60000u64;
        c.mem().write_u32(page, 0x1111).unwrap();
        c.mem().write_u32(page + 0x1000, 0x2222).unwrap();
        assert_eq!(c.read_mem(sreg::DS, page, 4).unwrap(), 0x1111);
        c.mem().write_u64(PT + (page >> 12) * 8, (page + 0x1000) | 7).unwrap();
        assert_eq!(c.read_mem(sreg::DS, page, 4).unwrap(), 0x1111);
        run(&mut c, 0, 0, page).unwrap();
        assert_eq!(c.read_mem(sreg::DS, page, 4).unwrap(), 0x2222);
        // With PCIDE, any PCID is accepted.
        c.write_cr4(c.state.cr4 | cr::CR4_PCIDE).unwrap();
        assert!(run(&mut c, 1, 5, 0).is_ok());
        to_user(&mut c, SEL_UCODE64);
        assert_eq!(run(&mut c, 2, 0, 0), Err(GP0));
    }

    #[test]
    fn rdtscp_rdpid_rdpmc() {
        let mut c = long_mode();
        c.state.msr.tsc_aux = 0x1_0000_0007;
        exec_bytes(&mut c, &[0x0f, 0x01, 0xf9]).unwrap();
        let t1 = (c.state.gpr[2] << 32) | c.state.gpr[0];
        assert_eq!(c.state.gpr[1], 7);
        exec_bytes(&mut c, &[0x0f, 0x01, 0xf9]).unwrap();
        assert!((c.state.gpr[2] << 32) | c.state.gpr[0] >= t1);
        c.state.gpr[3] = u64::MAX;
        exec_bytes(&mut c, &[0xf3, 0x0f, 0xc7, 0xfb]).unwrap(); // rdpid rbx
        assert_eq!(c.state.gpr[3], 7);
        c.state.gpr[1] = 3;
        exec_bytes(&mut c, &[0x0f, 0x33]).unwrap();
        c.state.gpr[1] = 4;
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x33]), Err(GP0));
        to_user(&mut c, SEL_UCODE64);
        c.state.gpr[1] = 0;
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x33]), Err(GP0));
        c.state.cr4 |= cr::CR4_PCE | cr::CR4_TSD;
        assert!(exec_bytes(&mut c, &[0x0f, 0x33]).is_ok());
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x01, 0xf9]), Err(GP0));
        assert!(exec_bytes(&mut c, &[0xf3, 0x0f, 0xc7, 0xfb]).is_ok());
    }

    #[test]
    fn cpuid_advertises_the_implemented_features() {
        let mut c = long_mode();
        let q = |c: &mut Cpu, leaf: u64, sub: u64| {
            c.state.gpr[0] = leaf;
            c.state.gpr[1] = sub;
            exec_bytes(c, &[0x0f, 0xa2]).unwrap();
            [c.state.gpr[0], c.state.gpr[3], c.state.gpr[1], c.state.gpr[2]]
        };
        let l1 = q(&mut c, 1, 0);
        for bit in [13, 17, 22, 23, 30] {
            assert_ne!(l1[2] & (1 << bit), 0, "leaf 1 ecx {bit}");
        }
        for bit in [8, 19] {
            assert_ne!(l1[3] & (1 << bit), 0, "leaf 1 edx {bit}");
        }
        let l7 = q(&mut c, 7, 0);
        assert_eq!(l7[0], 0);
        assert_eq!(l7[1], 0x019c_078b);
        assert_eq!(l7[2], (1 << 22) | (1 << 2));
        assert_eq!(l7[3], 0);
        assert_eq!(q(&mut c, 7, 1), [0; 4]);
        let e1 = q(&mut c, 0x8000_0001, 0);
        assert_ne!(e1[3] & (1 << 27), 0);
        assert_eq!(e1[2], 0x121);
        // CR4 bits the model lacks are #GP; VME is one.
        assert_eq!(c.write_cr4(c.state.cr4 | cr::CR4_VME), Err(GP0));
        assert!(is_canonical(0));
    }

    #[test]
    fn swapgs_and_mov_dr_checks() {
        let mut c = long_mode();
        c.state.msr.kernel_gs_base = 0x1000;
        exec_bytes(&mut c, &[0x0f, 0x01, 0xf8]).unwrap();
        assert_eq!(c.state.seg[sreg::GS].base, 0x1000);
        // DR7 upper half must be zero in 64-bit mode.
        c.state.gpr[0] = 1 << 32;
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x23, 0xf8]), Err(GP0));
        // DR4 aliases DR6 unless CR4.DE.
        exec_bytes(&mut c, &[0x0f, 0x21, 0xe0]).unwrap();
        assert_eq!(c.state.gpr[0], c.state.dr[6]);
        c.state.cr4 |= cr::CR4_DE;
        assert_eq!(exec_bytes(&mut c, &[0x0f, 0x21, 0xe0]), Err(Exception::InvalidOpcode));
    }
}
