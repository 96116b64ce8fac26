//! Known mismatches, each named by instruction and by what differs.
//!
//! Two kinds:
//! - interpreter bugs, reported and not fixed yet;
//! - places where the reference is not the CPU and is wrong: in
//!   compatibility mode kvm_pvm runs ring 3 in KVM's instruction emulator,
//!   whose known deviations from the SDM are listed here.
//!
//! Where the SDM leaves a choice, AMD and Intel CPUs can choose differently,
//! and the interpreter (which reports itself as an AMD CPU) makes one choice:
//! an entry seen on one vendor's CPUs only names that vendor in `host`, so
//! the same difference on the other vendor's CPUs still fails the test.
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
    /// The SDM leaves it open, or the CPU does other than the SDM says, or
    /// AMD and Intel CPUs differ.
    Vendor,
}

/// The vendor of the host CPU, the reference in 64-bit mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Amd,
    Intel,
}

impl Host {
    /// The host's vendor, from /proc/cpuinfo (None if it says neither).
    pub fn detect() -> Option<Host> {
        static HOST: std::sync::OnceLock<Option<Host>> = std::sync::OnceLock::new();
        *HOST.get_or_init(|| {
            let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let vendor = info.lines().find_map(|l| l.strip_prefix("vendor_id")).unwrap_or("");
            if vendor.contains("AuthenticAMD") {
                Some(Host::Amd)
            } else if vendor.contains("GenuineIntel") {
                Some(Host::Intel)
            } else {
                None
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Host::Amd => "AMD hosts",
            Host::Intel => "Intel hosts",
        }
    }
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
    /// Every memory difference ("memory A..B: interp=.. kvm=xx xx ..") has
    /// KVM's bytes as a run of `bytes`.
    fn kvm_wrote_only(&self, bytes: &[u8]) -> bool {
        self.diffs.iter().filter(|d| d.starts_with("memory")).all(|d| {
            let kvm = side_bytes(d, "kvm=");
            !kvm.is_empty() && bytes.windows(kvm.len()).any(|w| w == kvm.as_slice())
        })
    }
    /// Every memory difference ("memory A..B: interp=.. kvm=..") is in
    /// the bits of `mask` alone, byte by byte, and at least one is.
    fn memory_differs_in_bits(&self, mask: u8) -> bool {
        let mut any = false;
        let all = self.diffs.iter().filter(|d| d.starts_with("memory")).all(|d| {
            let (i, k) = (side_bytes(d, "interp="), side_bytes(d, "kvm="));
            any |= i.iter().zip(&k).any(|(a, b)| a != b);
            !i.is_empty() && i.len() == k.len() && i.iter().zip(&k).all(|(a, b)| (a ^ b) & !mask == 0)
        });
        all && any
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
    /// The host CPUs it is seen on (None: any).
    pub host: Option<Host>,
    /// What differs.
    pub what: &'static str,
    pub matches: fn(&Mismatch) -> bool,
}

pub const KNOWN: &[Known] = &[
    Known {
        name: "XRSTOR of an MXCSR with bit 17 set",
        kind: Kind::Vendor,
        mode: None,
        host: Some(Host::Amd),
        what: "this CPU loads it: bit 17 is MM, the exception mask of AMD's misaligned-SSE mode, within its MXCSR_MASK (0x2FFFF); the model's MXCSR_MASK is 0xFFFF and the interpreter raises #GP(0)",
        matches: |m| {
            m.interp.end == End::Exception(13)
                && m.at(m.interp.frame_rip()).is_some_and(|i| matches!(i.mnemonic(), Mnemonic::Xrstor | Mnemonic::Xrstor64))
                && m.kvm.state.mxcsr & 0x2_0000 != 0
                && m.kvm.state.mxcsr & !0x2_ffff == 0
        },
    },
    Known {
        name: "XSAVEOPT to the area of the last XRSTOR",
        kind: Kind::Vendor,
        mode: None,
        host: None,
        what: "this CPU uses the modified optimization: components not modified since the XRSTOR are not written, and the area keeps what the sequence stored there in between; the interpreter writes them (the SDM allows either)",
        matches: |m| {
            let has = |ms: &[Mnemonic]| m.insns.iter().any(|i| ms.contains(&i.mnemonic()));
            has(&[Mnemonic::Xrstor, Mnemonic::Xrstor64])
                && has(&[Mnemonic::Xsaveopt, Mnemonic::Xsaveopt64])
                && m.interp.end == m.kvm.end
                && m.only(&["memory"])
        },
    },
    Known {
        name: "XSAVE, XSAVEOPT, XSAVEC of x87 state whose FOP, FIP or FDP are not zero (loaded by XRSTOR), no x87 exception pending",
        kind: Kind::Vendor,
        mode: None,
        host: Some(Host::Amd),
        what: "this CPU stores zeros for FOP, FIP and FDP unless FSW.ES is set (AMD's APM says so of FXSAVE); the interpreter stores the values, as the SDM describes",
        matches: |m| {
            m.insns.iter().any(|i| matches!(i.mnemonic(), Mnemonic::Xrstor | Mnemonic::Xrstor64))
                && m.interp.state.fpu.fsw & 0x80 == 0
                && m.only(&["memory"])
                && m.diffs.iter().all(|d| {
                    let Some((range, bytes)) = d.strip_prefix("memory 0x").and_then(|r| r.split_once(": interp=")) else {
                        return false;
                    };
                    let Some((a, b)) = range.split_once("..0x") else { return false };
                    let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { return false };
                    let zeros = bytes.split_once("kvm=").is_some_and(|(_, k)| k.split_whitespace().all(|x| x == "00"));
                    zeros && a / 64 == (b - 1) / 64 && a % 64 >= 6 && (b - 1) % 64 < 24
                })
        },
    },
    Known {
        name: "XSAVE, XSAVEOPT, XSAVEC with SSE requested: the MXCSR_MASK field (bytes 28-31 of the area)",
        kind: Kind::Vendor,
        mode: None,
        host: Some(Host::Amd),
        what: "this CPU stores 0x0002FFFF: bit 17 is MM, the exception mask of AMD's misaligned-SSE mode (CPUID 8000_0001h:ECX.MisAlignSse), which the model lacks; the interpreter stores 0x0000FFFF",
        matches: |m| {
            m.insns.iter().any(|i| {
                matches!(
                    i.mnemonic(),
                    Mnemonic::Xsave | Mnemonic::Xsave64 | Mnemonic::Xsaveopt | Mnemonic::Xsaveopt64 | Mnemonic::Xsavec | Mnemonic::Xsavec64
                )
            }) && m.only(&["memory"])
                && m.diffs.iter().all(|d| d.strip_prefix("memory 0x").and_then(|r| r.split_once("..")).is_some_and(|(a, rest)| {
                    u64::from_str_radix(a, 16).is_ok_and(|a| a % 64 == 30) && rest.ends_with(": interp=00 kvm=02")
                }))
        },
    },
    Known {
        name: "FLD m32/m64 of a denormal with the denormal exception unmasked",
        kind: Kind::Vendor,
        mode: None,
        host: None,
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
        host: None,
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
        host: None,
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
        host: None,
        what: "the interpreter also sets MXCSR.PE when it raises #XM for UE/OE; this CPU sets UE/OE only (the SDM does not say PE is reported with an unmasked post-computation exception)",
        matches: |m| {
            let (i, k) = (m.interp.state.mxcsr, m.kvm.state.mxcsr);
            m.interp.end == End::Exception(19) && m.kvm.end == End::Exception(19) && m.only(&["mxcsr"]) && i ^ k == 0x20 && k & 0x18 != 0
        },
    },
    Known {
        name: "DPPD/DPPS (and VEX forms): a denormal product with MXCSR.DAZ=1, or a denormal input in a lane imm8[7:4] masks out",
        kind: Kind::Vendor,
        mode: None,
        host: None,
        what: "this CPU treats the denormal intermediate product as zero before the sum, and sets DE (or PE) for lanes imm8 masks out; the interpreter keeps the product and ignores masked-out lanes",
        matches: |m| {
            m.insns.iter().any(|i| matches!(i.mnemonic(), Mnemonic::Dppd | Mnemonic::Dpps | Mnemonic::Vdppd | Mnemonic::Vdpps))
                && ((m.only(&["xmm", "ymm", "mxcsr"])
                    && (m.interp.state.mxcsr & 0x40 != 0 || matches!(m.interp.state.mxcsr ^ m.kvm.state.mxcsr, 0x2 | 0x20)))
                    || (m.kvm.end == End::Exception(19) && m.interp.end == End::Normal && m.kvm.state.mxcsr & 0x2 != 0))
        },
    },
    Known {
        name: "near CALL to a non-canonical target whose push faults (RFLAGS.AC=1 with a misaligned RSP, or RSP in a missing page)",
        kind: Kind::Vendor,
        mode: Some(Mode::Long64),
        host: None,
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
        host: None,
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
        host: None,
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
        host: None,
        what: "KVM's emulator pushes (E)BP with the stack size (4 bytes) instead of the operand size (2)",
        matches: |m| m.insns.iter().any(|i| i.mnemonic() == Mnemonic::Enter && i.code() == iced_x86::Code::Enterw_imm16_imm8),
    },
    Known {
        name: "AAM, AAD",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        host: None,
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
        host: None,
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
        host: None,
        what: "KVM's emulator does not probe the new stack top and completes; the CPU (in 64-bit mode here) and the interpreter fault there",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Normal
                && m.at(m.interp.frame_rip()).is_some_and(|i| i.mnemonic() == Mnemonic::Enter)
        },
    },
    Known {
        name: "REPE/REPNE CMPS and SCAS stopped by a #PF after some iterations",
        kind: Kind::Vendor,
        mode: Some(Mode::Compat32),
        host: None,
        what: "KVM's emulator restores the flags from before the instruction, as Intel's SDM says of a fault in these; the interpreter, as AMD CPUs, keeps the flags the completed iterations set",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Exception(14)
                && m.only(&["rflags", "exception frame"])
                && m.at(m.interp.frame_rip()).is_some_and(is_rep_cmps_scas)
        },
    },
    Known {
        name: "REPE/REPNE CMPS and SCAS stopped after some iterations by a #PF or a single-step #DB",
        kind: Kind::Vendor,
        mode: Some(Mode::Long64),
        host: Some(Host::Intel),
        what: "this CPU restores the flags from before the instruction (Intel's SDM says so of a fault; the CPU does it at the single-step trap too); the interpreter, as AMD CPUs, keeps the flags the completed iterations set",
        matches: |m| {
            matches!(m.interp.end, End::Exception(1 | 14))
                && m.kvm.end == m.interp.end
                && m.only(&["rflags", "exception frame"])
                && m.at(m.interp.frame_rip()).is_some_and(is_rep_cmps_scas)
        },
    },
    Known {
        name: "misaligned 16-byte SSE operands that need no alignment (MOVUPS, MOVDQU, LDDQU, PCMPxSTRx, ...) with alignment checking on",
        kind: Kind::Vendor,
        mode: None,
        host: Some(Host::Intel),
        what: "this CPU raises no #AC for them; the interpreter, as AMD CPUs, does (the SDM: #AC may or may not be raised for a 128-bit operand not aligned on 8 bytes)",
        matches: |m| {
            m.interp.end == End::Exception(17)
                && m.kvm.end != End::Exception(17)
                && m.at(m.interp.frame_rip()).is_some_and(|i| {
                    i.memory_size().size() == 16
                        && i.cpuid_features().iter().any(|f| {
                            use iced_x86::CpuidFeature as F;
                            matches!(f, F::SSE | F::SSE2 | F::SSE3 | F::SSSE3 | F::SSE4_1 | F::SSE4_2)
                        })
                })
        },
    },
    Known {
        name: "near CALL to a non-canonical target",
        kind: Kind::Vendor,
        mode: Some(Mode::Long64),
        host: Some(Host::Intel),
        what: "this CPU raises #GP(0) with RSP unchanged but has already written the return address below RSP; the SDM's CALL checks the target before the push, and the interpreter writes nothing",
        matches: |m| {
            let Some(call) = m.kvm_faulting().filter(|i| i.mnemonic() == Mnemonic::Call) else {
                return false;
            };
            m.interp.end == End::Exception(13)
                && m.kvm.end == End::Exception(13)
                && m.only(&["memory"])
                && m.kvm_wrote_only(&call.next_ip().to_le_bytes())
        },
    },
    Known {
        name: "near CALL m64 to a non-canonical target read from the stack slot the return address goes to",
        kind: Kind::Vendor,
        mode: Some(Mode::Long64),
        host: Some(Host::Intel),
        what: "this CPU writes the return address before its #GP(0), and kvm_pvm re-runs a #GP in KVM's emulator, which reads the target again, now partly the return address, and jumps there; the interpreter raises #GP(0)",
        matches: |m| {
            let Some(call) = m.at(m.interp.frame_rip()).filter(|i| i.mnemonic() == Mnemonic::Call && i.op0_kind() == OpKind::Memory) else {
                return false;
            };
            m.interp.end == End::Exception(13)
                && m.kvm.end != End::Exception(13)
                && m.only(&["end", "rip", "cr2", "memory", "exception frame"])
                && m.kvm_wrote_only(&call.next_ip().to_le_bytes())
        },
    },
    Known {
        name: "x87 stores (FST/FSTP/FIST... m) with an unmasked numeric exception, to an address that faults (misaligned with alignment checking on, or non-canonical)",
        kind: Kind::Vendor,
        mode: None,
        host: Some(Host::Intel),
        what: "this CPU records the x87 exception, stores nothing and checks nothing of the address; the interpreter checks the address first and raises #AC or #GP (the SDM gives no order)",
        matches: |m| {
            matches!(m.interp.end, End::Exception(12 | 13 | 17))
                && m.kvm.end == End::Normal
                && m.kvm.state.fpu.fsw & 0x80 != 0
                && m.interp.state.fpu.fsw & 0x80 == 0
                && m.at(m.interp.frame_rip()).is_some_and(|i| {
                    matches!(i.mnemonic(), Mnemonic::Fist | Mnemonic::Fistp | Mnemonic::Fisttp | Mnemonic::Fst | Mnemonic::Fstp | Mnemonic::Fbstp)
                })
        },
    },
    Known {
        name: "MMX stores that fault before completing (MOVQ/MOVD/MOVNTQ m, mm with a #PF or #AC)",
        kind: Kind::Vendor,
        mode: Some(Mode::Long64),
        host: Some(Host::Intel),
        what: "this CPU has already set the x87 TOP to 0 (tags unchanged); the interpreter leaves the x87 state as it was, as a fault should",
        matches: |m| {
            matches!(m.interp.end, End::Exception(12 | 13 | 14 | 17))
                && m.kvm.end == m.interp.end
                && m.only(&["fsw"])
                && (m.interp.state.fpu.fsw ^ m.kvm.state.fpu.fsw) & !0x3800 == 0
                && m.kvm.state.fpu.fsw & 0x3800 == 0
                && m.kvm_faulting().is_some_and(|i| {
                    (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Register && i.op_register(k).is_mm())
                })
        },
    },
    Known {
        name: "80-bit x87 stores (FBSTP, FSTP m80) crossing into a missing page",
        kind: Kind::Vendor,
        mode: Some(Mode::Long64),
        host: Some(Host::Intel),
        what: "this CPU writes the bytes on the first page before the #PF; the interpreter, as the SDM's faults (which leave memory unchanged), writes nothing",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Exception(14)
                && m.only(&["memory"])
                && m.kvm_faulting().is_some_and(|i| {
                    matches!(i.mnemonic(), Mnemonic::Fbstp | Mnemonic::Fstp) && i.memory_size().size() == 10
                })
        },
    },
    Known {
        name: "DPPS/DPPD with NaN products in more than one lane",
        kind: Kind::Vendor,
        mode: None,
        host: Some(Host::Intel),
        what: "this CPU's result is another of the NaNs than the SDM's order of sums ((p0+p1)+(p2+p3), the first NaN operand propagating) gives; the interpreter follows the SDM",
        matches: |m| {
            let Some(dp) = m
                .insns
                .iter()
                .find(|i| matches!(i.mnemonic(), Mnemonic::Dpps | Mnemonic::Dppd | Mnemonic::Vdpps | Mnemonic::Vdppd))
            else {
                return false;
            };
            let lane = if matches!(dp.mnemonic(), Mnemonic::Dpps | Mnemonic::Vdpps) { 32 } else { 64 };
            let nan = |v: u128| {
                if lane == 32 {
                    f32::from_bits(v as u32).is_nan()
                } else {
                    f64::from_bits(v as u64).is_nan()
                }
            };
            m.only(&["xmm"])
                && m.interp.state.xmm.iter().zip(&m.kvm.state.xmm).all(|(&a, &b)| {
                    (0..128 / lane).all(|l| {
                        let mask = (1u128 << lane) - 1;
                        let (x, y) = ((a >> (l * lane)) & mask, (b >> (l * lane)) & mask);
                        x == y || (nan(x) && nan(y))
                    })
                })
        },
    },
    Known {
        name: "stores that cross into a missing page (MOV m32, MOVDQU, MOVNTI, REP MOVS, ...)",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        host: None,
        what: "KVM's emulator writes the bytes on the first page before the #PF; the CPU (and the interpreter) write nothing",
        matches: |m| {
            m.interp.end == End::Exception(14) && m.kvm.end == End::Exception(14) && m.only(&["memory"])
        },
    },
    Known {
        name: "read-modify-write destinations (BTC m32, ...) crossing from the read-only page into a missing page",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        host: None,
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
        host: None,
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
        host: None,
        what: "KVM's emulator wraps the offset and raises #PF at 0xFFFFFFFF; the interpreter applies the segment limit check and raises #SS(0) or #GP(0)",
        matches: |m| {
            matches!(m.interp.end, End::Exception(12 | 13)) && m.kvm.end == End::Exception(14) && m.kvm.state.cr2 >= 0xffff_fff0
        },
    },
    Known {
        name: "UD0/UD1 with a ModRM/displacement running into a missing page",
        kind: Kind::Vendor,
        mode: None,
        host: None,
        what: "this CPU (and KVM's emulator) raise #UD without fetching the rest of the instruction; the interpreter fetches the whole encoding and raises #PF",
        matches: |m| {
            m.interp.end == End::Exception(14)
                && m.kvm.end == End::Exception(6)
                && m.kvm_faulting().is_some_and(|i| matches!(i.mnemonic(), Mnemonic::Ud0 | Mnemonic::Ud1))
        },
    },
    Known {
        name: "writes through a code segment (a CS: override, or DS/ES loaded with a readable code segment: LOCK CMPXCHG8B, BTC m32, ...) to a missing page",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        host: None,
        what: "KVM's emulator raises #PF; the segment check comes first, and the interpreter raises #GP(0)",
        matches: |m| {
            m.interp.end == End::Exception(13)
                && m.kvm.end == End::Exception(14)
                && m.kvm_faulting().is_some_and(|i| {
                    use cpu::state::{seg_attr, sreg};
                    use iced_x86::Register as R;
                    let seg = match i.memory_segment() {
                        R::CS => sreg::CS,
                        R::DS => sreg::DS,
                        R::ES => sreg::ES,
                        R::FS => sreg::FS,
                        R::GS => sreg::GS,
                        _ => return false,
                    };
                    m.interp.state.seg[seg].attr & seg_attr::TYPE_CODE != 0
                })
        },
    },
    Known {
        name: "single-step after LFENCE/MFENCE/SFENCE (RFLAGS.TF set by POPF)",
        kind: Kind::Reference,
        mode: Some(Mode::Compat32),
        host: None,
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
        host: None,
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
    Known {
        name: "POPF at CPL 3 that sets RFLAGS.NT, then PUSHF",
        kind: Kind::Reference,
        mode: None,
        host: None,
        what: "kvm_pvm does not keep the NT that POPF sets at CPL 3 across an exit to the host (outcome.rs leaves NT out of \
               the flags it compares), so now and then a PUSHF after it pushes NT clear; the interpreter keeps it, as the \
               SDM says POPF sets NT at any privilege level. The pushed FLAGS differ in bit 14 alone",
        matches: |m| {
            let has = |mn: &[Mnemonic]| m.insns.iter().any(|i| mn.contains(&i.mnemonic()));
            m.interp.end == m.kvm.end
                && m.only(&["memory"])
                && has(&[Mnemonic::Popf, Mnemonic::Popfd, Mnemonic::Popfq])
                && has(&[Mnemonic::Pushf, Mnemonic::Pushfd, Mnemonic::Pushfq])
                && m.memory_differs_in_bits(0x40)
        },
    },
];

/// The bytes one side (`interp=` or `kvm=`) shows in a memory difference
/// ("memory A..B: interp=4a 0b kvm=0a 0b"), up to the next word that is
/// not a hex byte.
fn side_bytes(diff: &str, side: &str) -> Vec<u8> {
    diff.split(side)
        .nth(1)
        .map(|b| b.split_whitespace().map_while(|x| u8::from_str_radix(x, 16).ok()).collect())
        .unwrap_or_default()
}

fn is_rep_cmps_scas(i: &Instruction) -> bool {
    (i.has_repe_prefix() || i.has_repne_prefix()) && crate::gen::is_cmps_scas(i.mnemonic())
}

/// The first entry matching a reduced mismatch.
pub fn match_known(m: &Mismatch) -> Option<usize> {
    let host = Host::detect();
    KNOWN
        .iter()
        .position(|k| k.mode.is_none_or(|md| md == m.mode) && k.host.is_none_or(|h| Some(h) == host) && (k.matches)(m))
}
