//! Exceptions as values (SDM Vol. 3A chapter 6).
//!
//! Every handler returns `Result<_, Exception>`; the execution loop rewinds RIP
//! to the start of the faulting instruction and delivers the exception through
//! the IVT or IDT, escalating to #DF and to shutdown (triple fault) as the
//! hardware does.

/// An exception raised by an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    /// #DE, divide error (vector 0).
    DivideError,
    /// #DB, debug (vector 1) as a fault: an instruction breakpoint or a
    /// general-detect condition. RIP points at the instruction.
    Debug,
    /// #DB as a trap: single step, data or I/O breakpoint, task-switch trap,
    /// or INT1 (ICEBP). RIP points after the instruction.
    DebugTrap,
    /// NMI (vector 2).
    Nmi,
    /// #BP, breakpoint (vector 3, INT3), a trap.
    Breakpoint,
    /// #OF, overflow (vector 4, INTO), a trap.
    Overflow,
    /// #BR, BOUND range exceeded (vector 5).
    BoundRange,
    /// #UD, invalid opcode (vector 6).
    InvalidOpcode,
    /// #NM, device not available (vector 7).
    DeviceNotAvailable,
    /// #DF, double fault (vector 8, error code 0).
    DoubleFault,
    /// #TS, invalid TSS (vector 10).
    InvalidTss(u16),
    /// #NP, segment not present (vector 11).
    SegmentNotPresent(u16),
    /// #SS, stack-segment fault (vector 12).
    StackFault(u16),
    /// #GP, general protection (vector 13).
    GeneralProtection(u16),
    /// #PF, page fault (vector 14): CR2 gets `addr`.
    PageFault { addr: u64, error_code: u32 },
    /// #MF, x87 floating-point error (vector 16).
    FpuError,
    /// #AC, alignment check (vector 17, error code 0).
    AlignmentCheck,
    /// #MC, machine check (vector 18).
    MachineCheck,
    /// #XM, SIMD floating-point exception (vector 19).
    SimdFp,
    /// A software interrupt (INT n, INT3/INTO go through their own variants):
    /// delivered as a trap with the software-interrupt privilege check.
    SoftInt(u8),
}

/// What an exception's vector is and whether it pushes an error code.
impl Exception {
    pub fn vector(&self) -> u8 {
        match self {
            Exception::DivideError => 0,
            Exception::Debug | Exception::DebugTrap => 1,
            Exception::Nmi => 2,
            Exception::Breakpoint => 3,
            Exception::Overflow => 4,
            Exception::BoundRange => 5,
            Exception::InvalidOpcode => 6,
            Exception::DeviceNotAvailable => 7,
            Exception::DoubleFault => 8,
            Exception::InvalidTss(_) => 10,
            Exception::SegmentNotPresent(_) => 11,
            Exception::StackFault(_) => 12,
            Exception::GeneralProtection(_) => 13,
            Exception::PageFault { .. } => 14,
            Exception::FpuError => 16,
            Exception::AlignmentCheck => 17,
            Exception::MachineCheck => 18,
            Exception::SimdFp => 19,
            Exception::SoftInt(v) => *v,
        }
    }

    /// The error code pushed on delivery, if this exception has one.
    pub fn error_code(&self) -> Option<u32> {
        match *self {
            Exception::DoubleFault | Exception::AlignmentCheck => Some(0),
            Exception::InvalidTss(e)
            | Exception::SegmentNotPresent(e)
            | Exception::StackFault(e)
            | Exception::GeneralProtection(e) => Some(u32::from(e)),
            Exception::PageFault { error_code, .. } => Some(error_code),
            _ => None,
        }
    }

    /// Traps report the address of the next instruction; faults rewind.
    pub fn is_trap(&self) -> bool {
        matches!(self, Exception::Breakpoint | Exception::Overflow | Exception::SoftInt(_) | Exception::DebugTrap)
    }

    /// Fault-class exceptions push RF = 1 in the saved EFLAGS image (SDM Vol. 3B
    /// §17.3.1.1); instruction-breakpoint #DB, traps and interrupts do not.
    pub fn sets_rf(&self) -> bool {
        !self.is_trap() && !matches!(self, Exception::Debug | Exception::Nmi)
    }

    /// Contributory exceptions (SDM Table 6-4), for double-fault escalation.
    pub fn is_contributory(&self) -> bool {
        matches!(
            self,
            Exception::DivideError
                | Exception::InvalidTss(_)
                | Exception::SegmentNotPresent(_)
                | Exception::StackFault(_)
                | Exception::GeneralProtection(_)
        )
    }

    /// Short mnemonic, as the SDM names it.
    pub fn name(&self) -> &'static str {
        match self {
            Exception::DivideError => "#DE",
            Exception::Debug | Exception::DebugTrap => "#DB",
            Exception::Nmi => "NMI",
            Exception::Breakpoint => "#BP",
            Exception::Overflow => "#OF",
            Exception::BoundRange => "#BR",
            Exception::InvalidOpcode => "#UD",
            Exception::DeviceNotAvailable => "#NM",
            Exception::DoubleFault => "#DF",
            Exception::InvalidTss(_) => "#TS",
            Exception::SegmentNotPresent(_) => "#NP",
            Exception::StackFault(_) => "#SS",
            Exception::GeneralProtection(_) => "#GP",
            Exception::PageFault { .. } => "#PF",
            Exception::FpuError => "#MF",
            Exception::AlignmentCheck => "#AC",
            Exception::MachineCheck => "#MC",
            Exception::SimdFp => "#XM",
            Exception::SoftInt(_) => "INT",
        }
    }
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exception::PageFault { addr, error_code } => write!(f, "#PF({error_code:#x}) at {addr:#x}"),
            Exception::SoftInt(v) => write!(f, "INT {v:#x}"),
            e => match e.error_code() {
                Some(ec) => write!(f, "{}({ec:#x})", e.name()),
                None => write!(f, "{}", e.name()),
            },
        }
    }
}

/// Result of anything that can fault.
pub type Fault<T> = Result<T, Exception>;

/// #GP(0), the most common fault.
pub const GP0: Exception = Exception::GeneralProtection(0);
