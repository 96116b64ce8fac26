//! Known mismatches, each named by instruction and by what differs.
//!
//! Two kinds:
//! - interpreter bugs, reported and not fixed yet;
//! - places where the reference is not the CPU and is wrong: in
//!   compatibility mode kvm_pvm runs ring 3 in KVM's instruction emulator,
//!   whose known deviations from the SDM are listed here.
//!
//! A mismatch is first reduced to the fewest instructions that still
//! mismatch. An entry matches when its predicate holds for the reduced
//! sequence and both outcomes (the instruction, the mode and the exact shape
//! of the difference); anything else fails the test. The report prints how
//! often each entry matched: an entry that stops matching is fixed, remove it.

use iced_x86::{Instruction, Mnemonic, OpKind};

use crate::machine::{self, Mode};
use crate::outcome::{End, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An interpreter bug (none is known at present).
    #[allow(dead_code)]
    Interpreter,
    /// KVM's instruction emulator, the reference in compatibility mode.
    Reference,
    /// The SDM leaves it open, or says one thing and this AMD CPU does
    /// another; the interpreter follows the SDM.
    Vendor,
}

/// One reduced mismatch.
pub struct Mismatch<'a> {
    pub mode: Mode,
    /// The reduced sequence, without the final `hlt`.
    pub insns: &'a [Instruction],
    pub interp: &'a Outcome,
    pub kvm: &'a Outcome,
    /// One line per differing field, as `outcome::compare` prints them.
    pub diffs: &'a [String],
}

impl Mismatch<'_> {
    fn fields(&self) -> Vec<&str> {
        self.diffs.iter().map(|d| d.split(':').next().unwrap_or("")).collect()
    }
    fn only(&self, allowed: &[&str]) -> bool {
        self.fields().iter().all(|f| allowed.iter().any(|a| f.starts_with(a)))
    }
    fn at(&self, rip: u64) -> Option<&Instruction> {
        self.insns.iter().find(|i| i.ip() == rip)
    }
    /// The instruction KVM's exception frame points at.
    fn kvm_faulting(&self) -> Option<&Instruction> {
        self.at(self.kvm.frame_rip())
    }
}

pub struct Known {
    /// The instruction(s), as the report names them.
    pub name: &'static str,
    pub kind: Kind,
    pub mode: Option<Mode>,
    /// What differs.
    pub what: &'static str,
    pub matches: fn(&Mismatch) -> bool,
}

pub const KNOWN: &[Known] = &[
    Known {
        name: "FLD m32/m64 of a denormal with the denormal exception unmasked",
        kind: Kind::Vendor,
        mode: None,
        what: "the interpreter leaves the stack unchanged (SDM §8.5.2: unmasked, operands unchanged); this CPU loads the value and sets DE and ES",
        matches: |m| {
            m.only(&["fsw", "ftw", "R"])
                && m.insns.iter().any(|i| i.mnemonic() == Mnemonic::Fld && i.op0_kind() == OpKind::Memory)
                && m.kvm.state.fpu.fsw & 0x82 == 0x82
        },
    },
    Known {
        name: "x87 stores (FIST/FISTTP/FST m) with an unmasked stack underflow or invalid operand, to a missing page",
        kind: Kind::Vendor,
        mode: None,
        what: "the interpreter records the x87 exception and writes nothing; this CPU raises the #PF first (the SDM gives no order)",
        matches: |m| {
            m.kvm.end == End::Exception(14)
                && m.interp.end != End::Exception(14)
                && m.kvm_faulting().is_some_and(|i| matches!(i.mnemonic(), Mnemonic::Fist | Mnemonic::Fistp | Mnemonic::Fisttp | Mnemonic::Fst | Mnemonic::Fstp | Mnemonic::Fbstp))
                && m.interp.state.fpu.fsw & 0x80 != 0
        },
    },
    Known {
        name: "EMMS",
        kind: Kind::Vendor,
        mode: None,
        what: "this CPU also sets TOP to 0; the SDM only says EMMS empties the tag word (the interpreter keeps TOP)",
        matches: |m| {
            m.insns.iter().any(|i| i.mnemonic() == Mnemonic::Emms)
                && m.only(&["fsw"])
                && (m.interp.state.fpu.fsw ^ m.kvm.state.fpu.fsw) & !0x3800 == 0
                && m.kvm.state.fpu.fsw & 0x3800 == 0
        },
    },
    Known {
        name: "SSE arithmetic with an unmasked underflow or overflow (MULSS, ...)",
        kind: Kind::Vendor,
        mode: None,
        what: "the interpreter also sets MXCSR.PE when it raises #XM for UE/OE; this CPU sets UE/OE only (the SDM does not say PE is reported with an unmasked post-computation exception)",
        matches: |m| {
            let (i, k) = (m.interp.state.mxcsr, m.kvm.state.mxcsr);
            m.interp.end == End::Exception(19) && m.kvm.end == End::Exception(19) && m.only(&["mxcsr"]) && i ^ k == 0x20 && k & 0x18 != 0
        },
    },
    Known {
        name: "DPPD/DPPS: a denormal product with MXCSR.DAZ=1, or a denormal input in a lane imm8[7:4] masks out",
        kind: Kind::Vendor,
        mode: None,
        what: "this CPU treats the denormal intermediate product as zero before the sum, and sets DE (or PE) for lanes imm8 masks out; the interpreter keeps the product and ignores masked-out lanes",
        matches: |m| {
            m.insns.iter().any(|i| matches!(i.mnemonic(), Mnemonic::Dppd | Mnemonic::Dpps))
                && ((m.only(&["xmm", "mxcsr"])
                    && (m.interp.state.mxcsr & 0x40 != 0 || matches!(m.interp.state.mxcsr ^ m.kvm.state.mxcsr, 0x2 | 0x20)))
                    || (m.kvm.end == End::Exception(19) && m.interp.end == End::Normal && m.kvm.state.mxcsr & 0x2 != 0))
        },
    },
    Known {
        name: "near CALL to a non-canonical target whose push faults (RFLAGS.AC=1 with a misaligned RSP, or RSP in a missing page)",
        kind: Kind::Vendor,
        mode: Some(Mode::Long64),
        what: "this CPU pushes the return address first and raises #AC or #PF; the SDM's CALL checks the target first and raises #GP(0), as the interpreter does",
        matches: |m| {
            m.interp.end == End::Exception(13)
                && matches!(m.kvm.end, End::Exception(14 | 17))
                && m.kvm_faulting().is_some_and(|i| i.mnemonic() == Mnemonic::Call)
        },
    },
    Known {
        name: "misaligned MOVAPS (and other 16-byte-aligned SSE operands) at a non-canonical SS-based address ([rbp-64h], ss:[rdx-3Ch])",
        kind: Kind::Vendor,
        mode: Some(Mode::Long64),
        what: "the interpreter checks alignment first (#GP(0)); this CPU checks the address first (#SS(0)); the SDM gives no order",
        matches: |m| {
            m.interp.end == End::Exception(13)
                && m.kvm.end == End::Exception(12)
                && m.kvm_faulting().is_some_and(|x| {
                    x.memory_size().size() == 16
                        && matches!(x.segment_prefix(), iced_x86::Register::None | iced_x86::Register::SS)
                })
        },
    },
    Known {
        name: "MASKMOVQ/MASKMOVDQU with an all-zero mask to a missing page",
        kind: Kind::Vendor,
        mode: None,
        what: "this CPU raises #PF; the interpreter writes nothing and raises nothing (SDM: with a zero mask, faults may or may not be signalled)",
        matches: |m| {
            m.kvm.end == End::Exception(14)
                && m.interp.end != End::Exception(14)
                && m.kvm_faulting().is_some_and(|i| matches!(i.mnemonic(), Mnemonic::Maskmovq | Mnemonic::Maskmovdqu))
        },
    },
    Known {
        name: "ENTER with a 16-bit operand size (66 C8)",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator pushes (E)BP with the stack size (4 bytes) instead of the operand size (2)",
        matches: |m| m.insns.iter().any(|i| i.mnemonic() == Mnemonic::Enter && i.code() == iced_x86::Code::Enterw_imm16_imm8),
    },
    Known {
        name: "AAM, AAD",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator sets SF/ZF/PF from the whole of EAX instead of AL",
        matches: |m| {
            // A wrong SF can also change the path a later Jcc takes.
            m.insns.iter().any(|i| matches!(i.mnemonic(), Mnemonic::Aam | Mnemonic::Aad))
                && m.only(&["rflags", "exception frame", "rax", "rip"])
        },
    },
    Known {
        name: "REP string instructions with RFLAGS.TF=1",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator runs several iterations (or all) before the single-step #DB and reports RIP/RF differently; the SDM (and the interpreter) trap after each iteration",
        matches: |m| {
            m.interp.end == End::Exception(1)
                && m.insns.iter().any(|i| i.is_string_instruction() && (i.has_rep_prefix() || i.has_repne_prefix()))
        },
    },
    Known {
        name: "ENTER whose new stack top (ESP - size) lies in a missing page",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator does not probe the new stack top and completes; the CPU (in 64-bit mode here) and the interpreter fault there",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Normal
                && m.at(m.interp.frame_rip()).is_some_and(|i| i.mnemonic() == Mnemonic::Enter)
        },
    },
    Known {
        name: "REPE/REPNE CMPS and SCAS stopped by a #PF after some iterations",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator reports the flags from before the instruction; the completed iterations set them (the interpreter does)",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Exception(14)
                && m.only(&["rflags", "exception frame"])
                && m.at(m.interp.frame_rip()).is_some_and(|i| {
                    matches!(i.mnemonic(), Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq | Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq)
                })
        },
    },
    Known {
        name: "stores that cross into a missing page (MOV m32, MOVDQU, MOVNTI, REP MOVS, ...)",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator writes the bytes on the first page before the #PF; the CPU (and the interpreter) write nothing",
        matches: |m| {
            m.interp.end == End::Exception(14) && m.kvm.end == End::Exception(14) && m.only(&["memory"])
        },
    },
    Known {
        name: "read-modify-write destinations (BTC m32, ...) crossing from the read-only page into a missing page",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator reads the destination first and raises #PF on the missing second page (error code 6); the access is checked as a write, so the read-only first page faults first (error code 7), as on the CPU in 64-bit mode and in the interpreter",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Exception(14)
                && m.only(&["cr2", "exception frame"])
                && m.interp.state.cr2 >> 12 == machine::RODATA >> 12
                && m.kvm.state.cr2 == machine::RODATA + machine::PAGE
        },
    },
    Known {
        name: "user accesses to an unmapped address in the upper half (0xFFFF8000_00000000 and up)",
        kind: Kind::Reference,
        mode: Some(Mode::Long64),
        what: "kvm_pvm keeps part of the upper half for itself: the #PF it reports there sometimes has P and RSVD set (error code 0xD for a user read), and sometimes not, for the same sequence; the guest's tables map nothing there, so the interpreter reports not-present (0x4)",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Exception(14)
                && m.only(&["exception frame"])
                && m.interp.state.cr2 >= 0xffff_8000_0000_0000
                && m.interp.state.cr2 == m.kvm.state.cr2
                && m.interp.frame_error_code() & 0x9 == 0
                && m.kvm.frame_error_code() & 0x9 == 0x9
                && m.interp.frame_error_code() | 0x9 == m.kvm.frame_error_code()
                && m.interp.frame_rip() == m.kvm.frame_rip()
        },
    },
    Known {
        name: "POP/LEAVE/SCAS... reading at an offset such as 0xFFFFFFFF that wraps past 4 GiB",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator wraps the offset and raises #PF at 0xFFFFFFFF; the interpreter applies the segment limit check and raises #SS(0) or #GP(0)",
        matches: |m| {
            matches!(m.interp.end, End::Exception(12 | 13)) && m.kvm.end == End::Exception(14) && m.kvm.state.cr2 >= 0xffff_fff0
        },
    },
    Known {
        name: "UD0/UD1 with a ModRM/displacement running into a missing page",
        kind: Kind::Vendor,
        mode: None,
        what: "this CPU (and KVM's emulator) raise #UD without fetching the rest of the instruction; the interpreter fetches the whole encoding and raises #PF",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Exception(6)
                && m.kvm_faulting().is_some_and(|i| matches!(i.mnemonic(), Mnemonic::Ud0 | Mnemonic::Ud1))
        },
    },
    Known {
        name: "LOCK CMPXCHG8B with a CS: override (a write through a code segment) to a missing page",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator raises #PF; the segment check comes first, and the interpreter raises #GP(0)",
        matches: |m| {
            m.interp.end == End::Exception(13)
                && m.kvm.end == End::Exception(14)
                && m.kvm_faulting().is_some_and(|i| i.segment_prefix() == iced_x86::Register::CS)
        },
    },
    Known {
        name: "single-step after LFENCE/MFENCE/SFENCE (RFLAGS.TF set by POPF)",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        what: "KVM's emulator raises no single-step #DB after it emulates these; the interpreter does",
        matches: |m| {
            m.interp.end == End::Exception(1)
                && m.kvm.end == End::Normal
                && m.insns.iter().any(|i| matches!(i.mnemonic(), Mnemonic::Lfence | Mnemonic::Mfence | Mnemonic::Sfence))
        },
    },
    Known {
        name: "MMX instructions that fault before completing (MOVQ m64, mm): any fault in compat32, #GP/#SS in 64-bit mode",
        kind: Kind::Reference,
        mode: None,
        what: "KVM's emulator (all of compat32; in 64-bit mode kvm_pvm re-runs a #GP/#SS in it) has already switched the x87 unit to MMX mode (TOP=0, all tags valid); the interpreter has not",
        matches: |m| {
            let emulated = match m.mode {
                Mode::Compat32 => matches!(m.kvm.end, End::Exception(_)),
                Mode::Long64 => matches!(m.kvm.end, End::Exception(12 | 13)),
            };
            emulated
                && m.interp.end == m.kvm.end
                && m.only(&["ftw", "fsw", "memory"])
                && m.kvm_faulting().is_some_and(|i| i.cpuid_features().contains(&iced_x86::CpuidFeature::MMX))
        },
    },
];

/// The first entry matching a reduced mismatch.
pub fn match_known(m: &Mismatch) -> Option<usize> {
    KNOWN.iter().position(|k| k.mode.is_none_or(|md| md == m.mode) && (k.matches)(m))
}
