//! What one side made of a sequence, the undefined results to mask, and the
//! comparison of the two sides.

use std::fmt::Write as _;

use cpu::state::{flags, CpuState};
use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use mmu::GuestMemory;

use crate::gen::{iced_to_fsw, iced_to_rflags, Assembled};
use crate::machine::{Mode, DATA, KSTACK_CMP, KSTACK_TOP, PAGE};

/// How a sequence ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The final `hlt` raised its #GP(0).
    Normal,
    /// An exception reached the IDT handler for this vector.
    Exception(u8),
    /// Neither ended in time (a loop through RET or a runaway REP).
    Timeout,
    /// Something else: a KVM exit, an interpreter shutdown or panic.
    Other(String),
}

impl End {
    pub fn describe(&self) -> String {
        match self {
            End::Normal => "normal end".into(),
            End::Exception(v) => format!("exception {} (vector {v})", vector_name(*v)),
            End::Timeout => "timeout".into(),
            End::Other(s) => s.clone(),
        }
    }
}

pub fn vector_name(v: u8) -> &'static str {
    match v {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        0xff => "INTn",
        _ => "#??",
    }
}

/// One side's result.
#[derive(Clone)]
pub struct Outcome {
    pub end: End,
    pub state: CpuState,
    pub data: Vec<u8>,
    /// The top of the kernel stack (the exception frame).
    pub kstack: Vec<u8>,
}

impl Outcome {
    pub fn read(end: End, state: CpuState, mem: &GuestMemory) -> Outcome {
        let mut data = vec![0u8; PAGE as usize];
        mem.read(DATA, &mut data).unwrap();
        let mut kstack = vec![0u8; KSTACK_CMP];
        mem.read(KSTACK_TOP - KSTACK_CMP as u64, &mut kstack).unwrap();
        Outcome { end, state, data, kstack }
    }

    /// The error code in the exception frame (for an exception that pushes one).
    pub fn frame_error_code(&self) -> u64 {
        let off = KSTACK_CMP - 48;
        u64::from_le_bytes(self.kstack[off..off + 8].try_into().unwrap())
    }

    /// The frame's saved RIP (after an exception; the error code, if any, is
    /// below it).
    pub fn frame_rip(&self) -> u64 {
        let off = KSTACK_CMP - 40;
        u64::from_le_bytes(self.kstack[off..off + 8].try_into().unwrap())
    }

    /// A #GP(0) raised by the final `hlt` is the normal end.
    pub fn ended(mut self, asm: &Assembled) -> Outcome {
        let hlt = asm.insns.last().map_or(0, |i| i.ip());
        let err = u64::from_le_bytes(self.kstack[KSTACK_CMP - 48..KSTACK_CMP - 40].try_into().unwrap());
        if self.end == End::Exception(13) && err == 0 && self.frame_rip() == hlt {
            self.end = End::Normal;
        }
        self
    }
}

/// Results the SDM leaves undefined on the path the interpreter took.
#[derive(Clone, Debug, Default)]
pub struct Masks {
    /// iced `RflagsBits`, arithmetic flags and x87 C0-C3.
    pub undef: u32,
    /// General registers whose value is undefined (BSF/BSR of zero...).
    pub gprs: u16,
    /// Data-page byte ranges (linear address, length) that are undefined.
    pub mem: Vec<(u64, u64)>,
    /// A flag left undefined was consumed: the rest is not comparable.
    pub tainted: Option<String>,
    /// Items executed at CPL3, in order.
    pub executed: Vec<usize>,
    /// Flags the running item leaves undefined for its operands (added by
    /// `after`).
    pending: u32,
    /// The running item is a REP string instruction with a zero count: it
    /// changes no flag.
    no_flags: bool,
    /// CR2 after a #PF is implementation-specific (which part of a large
    /// operand faults first).
    pub cr2_undefined: bool,
    /// RF in the exception frame is implementation-specific (a trap between
    /// iterations of a REP string instruction: Intel sets it, AMD does not).
    pub frame_rf_undefined: bool,
}

fn reg_value(s: &CpuState, r: Register) -> u64 {
    if r.is_gpr() {
        cpu::ops::reg_read(s, r)
    } else {
        0
    }
}

/// Whether ST(i) holds a normal, finite, non-zero number.
fn finite_nonzero(s: &CpuState, i: usize) -> bool {
    let top = usize::from((s.fpu.fsw >> 11) & 7);
    let phys = (top + i) & 7;
    let r = &s.fpu.regs[phys];
    let exp = r.sign_exp & 0x7fff;
    (s.fpu.ftw >> (2 * phys)) & 3 != 3 && exp != 0 && exp != 0x7fff && r.mantissa >> 63 == 1
}

fn count_operand(insn: &Instruction, op: u32, s: &CpuState) -> u64 {
    match insn.op_kind(op) {
        OpKind::Register => reg_value(s, insn.op_register(op)),
        OpKind::Immediate8 => insn.immediate8().into(),
        _ => 1,
    }
}

impl Masks {
    /// Before the interpreter runs item `idx`.
    pub fn before(&mut self, idx: usize, insn: &Instruction, s: &CpuState, mem: &GuestMemory) {
        self.executed.push(idx);
        self.pending = 0;
        self.no_flags = false;
        if (insn.has_rep_prefix() || insn.has_repne_prefix()) && insn.is_string_instruction() {
            let kinds: Vec<OpKind> = (0..insn.op_count()).map(|i| insn.op_kind(i)).collect();
            let count =
                if kinds.iter().any(|k| matches!(k, OpKind::MemorySegRSI | OpKind::MemoryESRDI | OpKind::MemorySegRDI))
                {
                    s.gpr[1]
                } else if kinds
                    .iter()
                    .any(|k| matches!(k, OpKind::MemorySegESI | OpKind::MemoryESEDI | OpKind::MemorySegEDI))
                {
                    s.gpr[1] & 0xffff_ffff
                } else {
                    s.gpr[1] & 0xffff
                };
            if count == 0 {
                self.no_flags = true;
            }
        }
        // Which address a fault reports for multi-part accesses (FLDENV,
        // FRSTOR, the byte-masked MASKMOVQ/MASKMOVDQU) is implementation-specific.
        if insn.memory_size().size() > 16
            || matches!(
                insn.mnemonic(),
                Mnemonic::Fldenv
                    | Mnemonic::Frstor
                    | Mnemonic::Fxrstor
                    | Mnemonic::Fxrstor64
                    | Mnemonic::Maskmovq
                    | Mnemonic::Maskmovdqu
            )
        {
            self.cr2_undefined = true;
        }
        if insn.is_string_instruction()
            && (insn.has_rep_prefix() || insn.has_repne_prefix())
            && s.rflags & flags::TF != 0
        {
            self.frame_rf_undefined = true;
        }
        let reads = insn.rflags_read() & self.undef;
        if reads != 0 && self.tainted.is_none() {
            self.tainted = Some(format!("{:?} reads flags left undefined ({reads:#x})", insn.mnemonic()));
        }
        // Registers and memory an earlier instruction left undefined.
        if self.tainted.is_none() && (self.gprs != 0 || !self.mem.is_empty()) {
            use iced_x86::OpAccess;
            let mut factory = iced_x86::InstructionInfoFactory::new();
            let info = factory.info(insn);
            let reads_reg = info.used_registers().iter().any(|u| {
                u.register().is_gpr()
                    && matches!(
                        u.access(),
                        OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
                    )
                    && self.gprs & (1 << (u.register().full_register() as usize - Register::RAX as usize)) != 0
            });
            let regs = |r: Register, _: usize, _: usize| Some(if r.is_gpr() { reg_value(s, r) } else { 0 });
            // A REP string instruction reads up to RCX elements from RSI.
            let rep_reads = insn.is_string_instruction() && (insn.has_rep_prefix() || insn.has_repne_prefix()) && {
                let size = insn.memory_size().size().max(1) as u64;
                let span = (s.gpr[1] & 0xffff_ffff).saturating_add(1).saturating_mul(size);
                let (lo, hi) = (s.gpr[6].wrapping_sub(span), s.gpr[6].wrapping_add(span));
                let (dlo, dhi) = (s.gpr[7].wrapping_sub(span), s.gpr[7].wrapping_add(span));
                self.mem.iter().any(|&(b, l)| (b < hi && lo < b + l) || (b < dhi && dlo < b + l))
            };
            let reads_mem = rep_reads
                || info.used_memory().iter().any(|u| {
                    matches!(
                        u.access(),
                        OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
                    ) && u.virtual_address(0, regs).is_some_and(|a| {
                        let len = u.memory_size().size().max(1) as u64;
                        self.mem.iter().any(|&(b, l)| a < b + l && b < a + len)
                    })
                });
            if reads_reg || reads_mem {
                self.tainted = Some(format!("{:?} reads a value left undefined", insn.mnemonic()));
            }
        }
        // Results that depend on the operands.
        match insn.mnemonic() {
            Mnemonic::Bsf | Mnemonic::Bsr => {
                let size = insn.op0_register().size() as u32;
                let src = match insn.op1_kind() {
                    OpKind::Register => Some(reg_value(s, insn.op1_register())),
                    OpKind::Memory => insn
                        .virtual_address(1, 0, |r, _, _| {
                            Some(if r.is_segment_register() { 0 } else { reg_value(s, r) })
                        })
                        .and_then(|a| {
                            let mut b = [0u8; 8];
                            mem.read(a, &mut b[..size as usize]).ok().map(|_| u64::from_le_bytes(b))
                        }),
                    _ => None,
                };
                if src.is_some_and(|v| v & cpu::ops::mask(size) == 0) {
                    self.gprs |= 1 << (insn.op0_register().full_register() as usize - Register::RAX as usize);
                }
            }
            Mnemonic::Shld | Mnemonic::Shrd => {
                let size = if insn.op0_kind() == OpKind::Register {
                    insn.op0_register().size()
                } else {
                    insn.memory_size().size()
                };
                let count = count_operand(insn, 2, s) & if size == 8 { 63 } else { 31 };
                if size == 2 && count > 16 {
                    self.pending |= iced_x86::RflagsBits::OF
                        | iced_x86::RflagsBits::SF
                        | iced_x86::RflagsBits::ZF
                        | iced_x86::RflagsBits::AF
                        | iced_x86::RflagsBits::CF
                        | iced_x86::RflagsBits::PF;
                    match insn.op0_kind() {
                        OpKind::Register => {
                            self.gprs |= 1 << (insn.op0_register().full_register() as usize - Register::RAX as usize)
                        }
                        _ => {
                            if let Some(a) = insn.virtual_address(0, 0, |r, _, _| {
                                Some(if r.is_segment_register() { 0 } else { reg_value(s, r) })
                            }) {
                                self.mem.push((a, 2));
                            }
                        }
                    }
                }
            }
            // LDMXCSR of a value with bit 17 set: MXCSR.MM (misaligned SSE
            // mask) exists on AMD only; Intel raises #GP.
            Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr => {
                let v = insn
                    .virtual_address(0, 0, |r, _, _| Some(if r.is_segment_register() { 0 } else { reg_value(s, r) }))
                    .and_then(|a| mem.read_u32(a).ok());
                if v.is_some_and(|v| v & 0xffff_0000 == 0x0002_0000) && self.tainted.is_none() {
                    self.tainted = Some("LDMXCSR sets bit 17 (MXCSR.MM, AMD-only)".into());
                }
            }
            // PUSH of a segment register with a 32- or 64-bit operand size
            // writes either the zero-extended selector or only its 16 bits
            // (SDM PUSH): the upper bytes of the slot are undefined.
            Mnemonic::Push if insn.op0_kind() == OpKind::Register && insn.op0_register().is_segment_register() => {
                let size = insn.stack_pointer_increment().unsigned_abs() as u64;
                if size > 2 {
                    let rsp = s.gpr[4];
                    let slot = rsp.wrapping_sub(size) & if s.code64() { u64::MAX } else { 0xffff_ffff };
                    self.mem.push((slot + 2, size - 2));
                }
            }
            _ => {}
        }
    }

    /// After item `idx` completed (it ran to its end, even if a trap such
    /// as a single-step #DB followed it).
    pub fn after(&mut self, insn: &Instruction, s_before: &CpuState, s_after: &CpuState) {
        use iced_x86::RflagsBits as B;
        use Mnemonic::*;
        if self.no_flags {
            return;
        }
        let mut undefined = insn.rflags_undefined() | self.pending;
        let m = insn.mnemonic();
        match m {
            // A compare stopped by an unmasked exception: the SDM leaves
            // C0/C2/C3 unchanged, AMD sets them (to "unordered" or 000).
            Fcom | Fcomp | Fcompp | Fucom | Fucomp | Fucompp | Ficom | Ficomp | Ftst if s_after.fpu.fsw & 0x80 != 0 => {
                undefined |= B::C0 | B::C2 | B::C3
            }
            // FCOMI and friends stopped by an unmasked exception: the SDM
            // sets ZF/PF/CF only when IE is masked, AMD sets them anyway
            // (and clears OF/SF/AF).
            Fcomi | Fcomip | Fucomi | Fucomip if s_after.fpu.fsw & 0x80 != 0 => {
                undefined |= B::C1 | B::ZF | B::PF | B::CF | B::OF | B::SF | B::AF
            }
            // FCOMI and friends: the SDM clears C1; AMD leaves it unchanged.
            // FCMOVcc: C1 is "set to 0 if stack underflow occurred"; AMD
            // leaves it unchanged otherwise.
            Fcomi | Fcomip | Fucomi | Fucomip | Fcmovb | Fcmove | Fcmovbe | Fcmovu | Fcmovnb | Fcmovne | Fcmovnbe
            | Fcmovnu => undefined |= B::C1,
            // FPREM/FPREM1 with an invalid, zero, infinite or denormal
            // operand: the quotient bits are not specified (AMD leaves C0/C3
            // unchanged).
            // An incomplete reduction (C2=1) leaves the quotient bits
            // unspecified too.
            Fprem | Fprem1
                if s_after.fpu.fsw & 0x401 != 0 || !finite_nonzero(s_before, 0) || !finite_nonzero(s_before, 1) =>
            {
                undefined |= B::C0 | B::C1 | B::C2 | B::C3
            }
            _ => {}
        }
        if matches!(m, Shl | Shr | Sal | Sar | Rol | Ror | Rcl | Rcr | Shld | Shrd) {
            let size = if insn.op0_kind() == OpKind::Register {
                insn.op0_register().size()
            } else {
                insn.memory_size().size()
            };
            let count_op = if matches!(m, Shld | Shrd) { 2 } else { 1 };
            let count = count_operand(insn, count_op, s_before) & if size == 8 { 63 } else { 31 };
            // A masked count of 0 leaves every flag as it was.
            if count == 0 {
                return;
            }
            // OF is defined for 1-bit shifts and rotates only.
            if count != 1 {
                undefined |= B::OF;
            }
            // SHL/SHR by at least the operand width leave CF undefined.
            if matches!(m, Shl | Shr | Sal) && size < 4 && count >= (size as u64) * 8 {
                undefined |= B::CF;
            }
        }
        self.undef = (self.undef & !insn.rflags_modified()) | undefined;
    }

    pub fn rflags(&self) -> u64 {
        iced_to_rflags(self.undef)
    }

    pub fn fsw(&self) -> u16 {
        iced_to_fsw(self.undef)
    }
}

/// Compare the two outcomes; each difference is one line.
pub fn compare(mode: Mode, a: &Outcome, k: &Outcome, m: &Masks) -> Vec<String> {
    let _ = mode;
    let mut d = Vec::new();
    if a.end == End::Timeout && k.end == End::Timeout {
        return d;
    }
    if a.end != k.end {
        d.push(format!("end: interp={} kvm={}", a.end.describe(), k.end.describe()));
    }
    let (s, t) = (&a.state, &k.state);
    for (i, name) in GPR_NAMES.iter().enumerate() {
        if m.gprs & (1 << i) != 0 {
            continue;
        }
        if s.gpr[i] != t.gpr[i] {
            d.push(format!("{name}: interp={:#018x} kvm={:#018x}", s.gpr[i], t.gpr[i]));
        }
    }
    if s.rip != t.rip {
        d.push(format!("rip: interp={:#x} kvm={:#x}", s.rip, t.rip));
    }
    let fmask = !m.rflags();
    // Both sides end in a ring-0 handler. kvm_pvm's event delivery clears
    // RFLAGS.AC there (the SDM's does not): the handler's AC is not compared;
    // the interrupted code's AC is, in the frame.
    let hmask = if matches!(k.end, End::Normal | End::Exception(_)) { fmask & !flags::AC } else { fmask };
    // kvm_pvm does not keep RFLAGS.NT that POPF sets at CPL3 (it is clear in
    // the frames it builds): NT is not compared.
    let fmask = fmask & !flags::NT;
    let hmask = hmask & !flags::NT;
    if s.rflags & hmask != t.rflags & hmask {
        d.push(format!(
            "rflags: interp={:#x} kvm={:#x} (differ {}; undefined {})",
            s.rflags,
            t.rflags,
            flag_names((s.rflags ^ t.rflags) & hmask),
            flag_names(m.rflags())
        ));
    }
    if s.cpl != t.cpl || s.seg[1].selector != t.seg[1].selector || s.seg[2].selector != t.seg[2].selector {
        d.push(format!(
            "cpl/cs/ss: interp={}/{:#x}/{:#x} kvm={}/{:#x}/{:#x}",
            s.cpl, s.seg[1].selector, s.seg[2].selector, t.cpl, t.seg[1].selector, t.seg[2].selector
        ));
    }
    for i in [0usize, 3, 4, 5] {
        let (x, y) = (&s.seg[i], &t.seg[i]);
        if x.selector != y.selector || x.base != y.base || x.limit != y.limit {
            d.push(format!(
                "{}: interp={:#x} base {:#x} limit {:#x} kvm={:#x} base {:#x} limit {:#x}",
                ["es", "cs", "ss", "ds", "fs", "gs"][i],
                x.selector,
                x.base,
                x.limit,
                y.selector,
                y.base,
                y.limit
            ));
        }
    }
    if s.cr2 != t.cr2 && !m.cr2_undefined {
        d.push(format!("cr2: interp={:#x} kvm={:#x}", s.cr2, t.cr2));
    }
    for i in 0..16 {
        if s.xmm[i] != t.xmm[i] {
            d.push(format!("xmm{i}: interp={:#034x} kvm={:#034x}", s.xmm[i], t.xmm[i]));
        }
        if s.ymm_hi[i] != t.ymm_hi[i] {
            d.push(format!("ymm{i}[255:128]: interp={:#034x} kvm={:#034x}", s.ymm_hi[i], t.ymm_hi[i]));
        }
    }
    if s.mxcsr != t.mxcsr {
        d.push(format!("mxcsr: interp={:#x} kvm={:#x}", s.mxcsr, t.mxcsr));
    }
    if s.fpu.fcw != t.fpu.fcw {
        d.push(format!("fcw: interp={:#x} kvm={:#x}", s.fpu.fcw, t.fpu.fcw));
    }
    let swmask = !m.fsw();
    if s.fpu.fsw & swmask != t.fpu.fsw & swmask {
        d.push(format!("fsw: interp={:#06x} kvm={:#06x} (undefined bits {:#06x})", s.fpu.fsw, t.fpu.fsw, m.fsw()));
    }
    if abridged(s.fpu.ftw) != abridged(t.fpu.ftw) {
        d.push(format!("ftw (abridged): interp={:#04x} kvm={:#04x}", abridged(s.fpu.ftw), abridged(t.fpu.ftw)));
    }
    for i in 0..8 {
        let (x, y) = (&s.fpu.regs[i], &t.fpu.regs[i]);
        if x.mantissa != y.mantissa || x.sign_exp != y.sign_exp {
            d.push(format!(
                "R{i}: interp={:04x}:{:016x} kvm={:04x}:{:016x}",
                x.sign_exp, x.mantissa, y.sign_exp, y.mantissa
            ));
        }
    }
    // The data page, minus undefined ranges.
    let mut i = 0;
    while i < a.data.len() {
        if a.data[i] != k.data[i] && !m.mem.iter().any(|&(addr, len)| (addr..addr + len).contains(&(DATA + i as u64))) {
            let start = i;
            while i < a.data.len() && a.data[i] != k.data[i] {
                i += 1;
            }
            let end = i.min(start + 32);
            d.push(format!(
                "memory {:#x}..{:#x}: interp={} kvm={}",
                DATA + start as u64,
                DATA + i as u64,
                hex(&a.data[start..end]),
                hex(&k.data[start..end])
            ));
        }
        i += 1;
    }
    // The exception frame (the saved RFLAGS masked like RFLAGS).
    if matches!(a.end, End::Exception(_)) || matches!(k.end, End::Exception(_)) {
        let rf_off = KSTACK_CMP - 24;
        let mut x = a.kstack.clone();
        let mut y = k.kstack.clone();
        for v in [&mut x, &mut y] {
            let mut q = u64::from_le_bytes(v[rf_off..rf_off + 8].try_into().unwrap());
            q &= fmask;
            if m.frame_rf_undefined {
                q &= !flags::RF;
            }
            v[rf_off..rf_off + 8].copy_from_slice(&q.to_le_bytes());
            // The saved RSP, when RSP itself is undefined.
            if m.gprs & (1 << 4) != 0 {
                v[KSTACK_CMP - 16..KSTACK_CMP - 8].fill(0);
            }
        }
        if x != y {
            d.push(format!("exception frame: interp=[{}] kvm=[{}]", frame(&a.kstack), frame(&k.kstack)));
        }
    }
    d
}

pub const GPR_NAMES: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

fn abridged(ftw: u16) -> u8 {
    (0..8).fold(0, |acc, i| if (ftw >> (2 * i)) & 3 != 3 { acc | (1 << i) } else { acc })
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// The exception frame, top of stack first: [error code] rip cs rflags rsp ss.
fn frame(k: &[u8]) -> String {
    k[KSTACK_CMP - 48..]
        .chunks(8)
        .map(|c| format!("{:x}", u64::from_le_bytes(c.try_into().unwrap())))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn flag_names(f: u64) -> String {
    let mut v = Vec::new();
    for (bit, name) in [
        (flags::CF, "CF"),
        (flags::PF, "PF"),
        (flags::AF, "AF"),
        (flags::ZF, "ZF"),
        (flags::SF, "SF"),
        (flags::TF, "TF"),
        (flags::IF, "IF"),
        (flags::DF, "DF"),
        (flags::OF, "OF"),
        (flags::NT, "NT"),
        (flags::RF, "RF"),
        (flags::AC, "AC"),
        (flags::ID, "ID"),
    ] {
        if f & bit != 0 {
            v.push(name);
        }
    }
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
    }
}

/// A readable dump of a state (what the generator varies).
pub fn dump(s: &CpuState, fp: bool) -> String {
    let mut o = String::new();
    for (i, name) in GPR_NAMES.iter().enumerate() {
        let _ = write!(o, "{name}={:016x}{}", s.gpr[i], if i % 4 == 3 { "\n      " } else { " " });
    }
    let _ = write!(
        o,
        "rip={:x} rflags={:x} [{}] cpl={} cs={:x} cr2={:x}",
        s.rip,
        s.rflags,
        flag_names(s.rflags),
        s.cpl,
        s.seg[1].selector,
        s.cr2
    );
    if fp {
        let _ = write!(o, "\n      mxcsr={:x} fcw={:x} fsw={:x} ftw={:x}", s.mxcsr, s.fpu.fcw, s.fpu.fsw, s.fpu.ftw);
        for (i, x) in s.xmm.iter().enumerate() {
            let _ = write!(o, "{}xmm{i}={x:032x}", if i % 2 == 0 { "\n      " } else { " " });
        }
        if s.ymm_hi.iter().any(|&y| y != 0) {
            for (i, y) in s.ymm_hi.iter().enumerate() {
                let _ = write!(o, "{}ymm{i}[255:128]={y:032x}", if i % 2 == 0 { "\n      " } else { " " });
            }
        }
        for (i, r) in s.fpu.regs.iter().enumerate() {
            let _ =
                write!(o, "{}R{i}={:04x}:{:016x}", if i % 4 == 0 { "\n      " } else { " " }, r.sign_exp, r.mantissa);
        }
    }
    o
}

/// The disassembly of a sequence, one instruction a line.
pub fn disassemble(asm: &Assembled) -> String {
    use iced_x86::FastFormatter;
    let mut f = FastFormatter::new();
    let mut o = String::new();
    let base = asm.insns.first().map_or(0, |i| i.ip());
    for i in &asm.insns {
        let mut t = String::new();
        f.format(i, &mut t);
        let off = (i.ip() - base) as usize;
        let _ = writeln!(o, "    {:08x}  {:<30} {}", i.ip(), hex(&asm.bytes[off..off + i.len()]), t);
    }
    o
}
