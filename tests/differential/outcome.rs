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
}

fn reg_value(s: &CpuState, r: Register) -> u64 {
    if r.is_gpr() {
        cpu::ops::reg_read(s, r)
    } else {
        0
    }
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
        let reads = insn.rflags_read() & self.undef;
        if reads != 0 && self.tainted.is_none() {
            self.tainted = Some(format!("{:?} reads flags left undefined ({reads:#x})", insn.mnemonic()));
        }
        // Results that depend on the operands.
        match insn.mnemonic() {
            Mnemonic::Bsf | Mnemonic::Bsr => {
                let size = insn.op0_register().size() as u32;
                let src = match insn.op1_kind() {
                    OpKind::Register => Some(reg_value(s, insn.op1_register())),
                    OpKind::Memory => insn
                        .virtual_address(1, 0, |r, _, _| Some(if r.is_segment_register() { 0 } else { reg_value(s, r) }))
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
                    self.undef |= iced_x86::RflagsBits::OF
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
            _ => {}
        }
    }

    /// After item `idx` completed (the CPU is still at CPL3).
    pub fn after(&mut self, insn: &Instruction, s_before: &CpuState) {
        let mut undefined = insn.rflags_undefined();
        // SHL/SHR by at least the operand width leave CF undefined.
        if matches!(insn.mnemonic(), Mnemonic::Shl | Mnemonic::Shr | Mnemonic::Sal) {
            let size = if insn.op0_kind() == OpKind::Register {
                insn.op0_register().size()
            } else {
                insn.memory_size().size()
            };
            let count = count_operand(insn, 1, s_before) & if size == 8 { 63 } else { 31 };
            if size < 4 && count >= (size as u64) * 8 {
                undefined |= iced_x86::RflagsBits::CF | iced_x86::RflagsBits::OF;
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
    for i in 0..16 {
        if m.gprs & (1 << i) != 0 {
            continue;
        }
        if s.gpr[i] != t.gpr[i] {
            d.push(format!("{}: interp={:#018x} kvm={:#018x}", GPR_NAMES[i], s.gpr[i], t.gpr[i]));
        }
    }
    if s.rip != t.rip {
        d.push(format!("rip: interp={:#x} kvm={:#x}", s.rip, t.rip));
    }
    let fmask = !m.rflags();
    if s.rflags & fmask != t.rflags & fmask {
        d.push(format!(
            "rflags: interp={:#x} kvm={:#x} (differ {}; undefined {})",
            s.rflags,
            t.rflags,
            flag_names((s.rflags ^ t.rflags) & fmask),
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
    if s.cr2 != t.cr2 {
        d.push(format!("cr2: interp={:#x} kvm={:#x}", s.cr2, t.cr2));
    }
    for i in 0..16 {
        if s.xmm[i] != t.xmm[i] {
            d.push(format!("xmm{i}: interp={:#034x} kvm={:#034x}", s.xmm[i], t.xmm[i]));
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
        d.push(format!(
            "fsw: interp={:#06x} kvm={:#06x} (undefined bits {:#06x})",
            s.fpu.fsw,
            t.fpu.fsw,
            m.fsw()
        ));
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
            v[rf_off..rf_off + 8].copy_from_slice(&q.to_le_bytes());
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
    for i in 0..16 {
        let _ = write!(o, "{}={:016x}{}", GPR_NAMES[i], s.gpr[i], if i % 4 == 3 { "\n      " } else { " " });
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
        for (i, r) in s.fpu.regs.iter().enumerate() {
            let _ = write!(o, "{}R{i}={:04x}:{:016x}", if i % 4 == 0 { "\n      " } else { " " }, r.sign_exp, r.mantissa);
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
