//! The architectural state of one x86-64 logical processor.
//!
//! `CpuState` is `#[repr(C)]` so translated code can address every field by a
//! fixed offset, and so the KVM state bridge can move it field by field. It
//! holds no pointers and no host resources: it is plain data that can be
//! copied, compared and saved.

/// General register numbers, in instruction-encoding order.
pub mod reg {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
}

/// Segment register numbers, in instruction-encoding order.
pub mod sreg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
}

/// RFLAGS bits (SDM Vol. 1 §3.4.3).
pub mod flags {
    pub const CF: u64 = 1 << 0;
    /// Bit 1 is reserved and always reads as 1.
    pub const FIXED: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const IOPL_SHIFT: u32 = 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic status flags, the ones kept lazily.
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
    /// Every flag software can change.
    pub const ALL: u64 = ARITH | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;
}

/// Control-register bits.
pub mod cr {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_MP: u64 = 1 << 1;
    pub const CR0_EM: u64 = 1 << 2;
    pub const CR0_TS: u64 = 1 << 3;
    pub const CR0_ET: u64 = 1 << 4;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_AM: u64 = 1 << 18;
    pub const CR0_NW: u64 = 1 << 29;
    pub const CR0_CD: u64 = 1 << 30;
    pub const CR0_PG: u64 = 1 << 31;

    pub const CR4_VME: u64 = 1 << 0;
    pub const CR4_PVI: u64 = 1 << 1;
    pub const CR4_TSD: u64 = 1 << 2;
    pub const CR4_DE: u64 = 1 << 3;
    pub const CR4_PSE: u64 = 1 << 4;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_MCE: u64 = 1 << 6;
    pub const CR4_PGE: u64 = 1 << 7;
    pub const CR4_PCE: u64 = 1 << 8;
    pub const CR4_OSFXSR: u64 = 1 << 9;
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    pub const CR4_UMIP: u64 = 1 << 11;
    pub const CR4_LA57: u64 = 1 << 12;
    pub const CR4_FSGSBASE: u64 = 1 << 16;
    pub const CR4_PCIDE: u64 = 1 << 17;
    pub const CR4_OSXSAVE: u64 = 1 << 18;
    pub const CR4_SMEP: u64 = 1 << 20;
    pub const CR4_SMAP: u64 = 1 << 21;
    pub const CR4_PKE: u64 = 1 << 22;
    pub const CR4_PKS: u64 = 1 << 24;

    pub const EFER_SCE: u64 = 1 << 0;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
}

/// Segment attribute bits, in the VMX access-rights layout KVM also uses.
pub mod seg_attr {
    /// Type field (bits 3:0).
    pub const TYPE_MASK: u32 = 0xf;
    /// For code and data segments: accessed.
    pub const TYPE_ACCESSED: u32 = 1;
    /// Data: writable. Code: readable.
    pub const TYPE_RW: u32 = 2;
    /// Data: expand-down. Code: conforming.
    pub const TYPE_DC: u32 = 4;
    /// Code segment.
    pub const TYPE_CODE: u32 = 8;
    /// Code or data (1) rather than system (0).
    pub const S: u32 = 1 << 4;
    pub const DPL_SHIFT: u32 = 5;
    pub const DPL_MASK: u32 = 3 << 5;
    pub const P: u32 = 1 << 7;
    pub const AVL: u32 = 1 << 12;
    /// 64-bit code segment.
    pub const L: u32 = 1 << 13;
    /// Default operation size 32 (code) / big (stack).
    pub const DB: u32 = 1 << 14;
    /// Limit granularity 4 KiB.
    pub const G: u32 = 1 << 15;
    /// The register holds no usable segment (a null selector was loaded).
    pub const UNUSABLE: u32 = 1 << 16;
}

/// A segment register with its hidden descriptor cache.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Segment {
    pub base: u64,
    /// Byte-granular limit (already scaled when G is set).
    pub limit: u32,
    /// Attributes, [`seg_attr`] layout.
    pub attr: u32,
    pub selector: u16,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub _pad: [u16; 3],
}

impl Segment {
    /// A real-mode style segment: base = selector * 16, 64 KiB limit.
    pub fn real(selector: u16, attr: u32) -> Self {
        Segment { base: u64::from(selector) << 4, limit: 0xffff, attr, selector, _pad: [0; 3] }
    }
    #[inline]
    pub fn dpl(&self) -> u8 {
        ((self.attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8
    }
}

/// GDTR or IDTR.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DescTable {
    pub base: u64,
    pub limit: u32,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub _pad: u32,
}

/// The lazily kept arithmetic flags: the last flag-setting operation and its
/// operands. The six status flags are computed from these only when read.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LazyFlags {
    /// A [`crate::flags::FlagOp`] as `u32`; 0 means the flags are in `rflags`.
    pub op: u32,
    /// Operand size in bytes (1, 2, 4 or 8).
    pub size: u32,
    pub res: u64,
    pub src1: u64,
    pub src2: u64,
    /// Flags an operation leaves alone (for example CF across INC), captured
    /// from the previous state when the operation was recorded.
    pub carry_in: u64,
}

/// An x87 register in its 80-bit memory form.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct F80 {
    pub mantissa: u64,
    /// Sign (bit 15) and biased exponent (bits 14:0).
    pub sign_exp: u16,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub _pad: [u16; 3],
}

/// x87 FPU state, in the FXSAVE field set.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FpuState {
    /// Physical registers R0..R7 (ST(i) is R[(TOP + i) & 7]).
    pub regs: [F80; 8],
    pub fcw: u16,
    /// Status word with TOP in bits 13:11.
    pub fsw: u16,
    /// Full two-bit-per-register tag word.
    pub ftw: u16,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
    pub fcs: u16,
    pub fds: u16,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub _pad: u32,
}

impl Default for FpuState {
    fn default() -> Self {
        // FNINIT state: control word 0x037F (all exceptions masked, 64-bit
        // precision, round to nearest), every register empty.
        FpuState {
            regs: [F80::default(); 8],
            fcw: 0x037f,
            fsw: 0,
            ftw: 0xffff,
            fop: 0,
            fip: 0,
            fdp: 0,
            fcs: 0,
            fds: 0,
            _pad: 0,
        }
    }
}

/// Model-specific registers the CPU acts on (the ones kept by value are in
/// [`crate::msr::MsrTable`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MsrState {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub tsc_aux: u64,
    pub apic_base: u64,
    pub pat: u64,
    pub misc_enable: u64,
    pub mtrr_def_type: u64,
    pub tsc_adjust: u64,
    /// Added to the host-derived counter to give the guest TSC.
    pub tsc_offset: u64,
    pub spec_ctrl: u64,
}

/// Events that wait for an instruction boundary: part of the state an
/// engine hands over, resets and snapshots carry.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PendingEvents {
    /// Debug-trap bits (DR6 layout) held back by MOV SS / POP SS, reported
    /// after the next instruction.
    pub deferred_debug: u64,
    /// An NMI waits for delivery.
    pub nmi_pending: bool,
    /// The instruction being executed loaded SS with MOV or POP (its debug
    /// traps are deferred past the next one).
    pub mov_ss: bool,
    /// An interrupt went through a task gate to a TSS with the T bit set:
    /// a debug trap follows its delivery.
    pub task_trap: bool,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub _pad: [u8; 5],
}

/// Everything architectural about one logical processor: what a hand-over
/// between engines, a reset and a snapshot carry.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CpuState {
    /// RAX..R15 in encoding order.
    pub gpr: [u64; 16],
    pub rip: u64,
    /// RFLAGS. The six arithmetic flags here are stale while `lazy.op != 0`.
    pub rflags: u64,
    pub lazy: LazyFlags,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescTable,
    pub idtr: DescTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    pub dr: [u64; 8],
    pub msr: MsrState,
    pub fpu: FpuState,
    /// XMM0..XMM15 as little-endian 128-bit values.
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    /// Current privilege level (CS.RPL, kept explicitly for speed).
    pub cpl: u8,
    /// HLT executed; waiting for an interrupt.
    pub halted: u8,
    /// Interrupts are inhibited for one instruction (after STI or MOV SS/POP SS).
    pub interrupt_shadow: u8,
    /// An NMI is being handled (blocks further NMIs until IRET).
    pub nmi_blocked: u8,
    /// NMI, deferred debug traps, MOV SS and task-switch traps waiting for
    /// an instruction boundary.
    pub events: PendingEvents,
    /// Bits 255:128 of YMM0..YMM15 (the AVX state component; bits 127:0 are
    /// `xmm`). Apart from `xmm` so the SSE paths never touch it: legacy SSE
    /// instructions leave it alone, VEX.128 instructions zero it.
    pub ymm_hi: [u128; 16],
    /// PKRU: the rights of the 16 protection keys of user-mode pages (two
    /// bits a key: access-disable, write-disable), with CR4.PKE.
    pub pkru: u32,
    /// IA32_PKRS (MSR 6E1h, bits 31:0): the same for supervisor-mode
    /// pages, with CR4.PKS.
    pub pkrs: u32,
    /// The MSRs kept by value, the MTRRs among them (see [`crate::msr`]).
    /// Last: rarely touched.
    pub msr_table: crate::msr::MsrTable,
}

impl Default for CpuState {
    fn default() -> Self {
        Self::reset()
    }
}

impl CpuState {
    /// The state after RESET (SDM Vol. 3 §9.1.1, Table 9-1).
    pub fn reset() -> Self {
        use seg_attr::*;
        let data = P | S | TYPE_RW | TYPE_ACCESSED;
        let mut seg = [Segment::real(0, data); 6];
        // CS selector F000 with base FFFF0000: the first fetch is at FFFFFFF0.
        seg[sreg::CS] = Segment {
            base: 0xffff_0000,
            limit: 0xffff,
            attr: P | S | TYPE_CODE | TYPE_RW | TYPE_ACCESSED,
            selector: 0xf000,
            _pad: [0; 3],
        };
        let mut gpr = [0u64; 16];
        // EDX holds the processor signature after reset (family 6 model 0x0f stepping 1 here).
        gpr[reg::RDX] = 0x0000_06f1;
        CpuState {
            gpr,
            rip: 0xfff0,
            rflags: flags::FIXED,
            lazy: LazyFlags::default(),
            seg,
            ldtr: Segment { attr: P | 2, limit: 0xffff, ..Default::default() },
            tr: Segment { attr: P | 11, limit: 0xffff, ..Default::default() },
            gdtr: DescTable { base: 0, limit: 0xffff, _pad: 0 },
            idtr: DescTable { base: 0, limit: 0xffff, _pad: 0 },
            // CD, NW and ET set after reset.
            cr0: cr::CR0_CD | cr::CR0_NW | cr::CR0_ET,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            xcr0: 1,
            dr: [0, 0, 0, 0, 0xffff_0ff0, 0x400, 0xffff_0ff0, 0x400],
            msr: MsrState {
                // BSP flag, xAPIC enabled, default base.
                apic_base: 0xfee0_0000 | (1 << 11) | (1 << 8),
                // Power-on PAT: WB, WT, UC-, UC repeated.
                pat: 0x0007_0406_0007_0406,
                ..Default::default()
            },
            fpu: FpuState::default(),
            xmm: [0; 16],
            mxcsr: 0x1f80,
            cpl: 0,
            halted: 0,
            interrupt_shadow: 0,
            nmi_blocked: 0,
            events: PendingEvents::default(),
            ymm_hi: [0; 16],
            pkru: 0,
            pkrs: 0,
            msr_table: crate::msr::MsrTable::default(),
        }
    }

    /// Whether the CPU is in IA-32e mode (long mode active).
    #[inline]
    pub fn long_mode(&self) -> bool {
        self.efer & cr::EFER_LMA != 0
    }

    /// Whether the current code segment is a 64-bit one.
    #[inline]
    pub fn code64(&self) -> bool {
        self.long_mode() && self.seg[sreg::CS].attr & seg_attr::L != 0
    }

    /// Whether protected mode is on.
    #[inline]
    pub fn protected(&self) -> bool {
        self.cr0 & cr::CR0_PE != 0
    }

    /// Whether virtual-8086 mode is on.
    #[inline]
    pub fn v86(&self) -> bool {
        self.protected() && self.rflags & flags::VM != 0
    }

    /// Code size in bits: 16, 32 or 64.
    #[inline]
    pub fn code_bits(&self) -> u32 {
        if self.code64() {
            64
        } else if self.protected() && !self.v86() && self.seg[sreg::CS].attr & seg_attr::DB != 0 {
            32
        } else {
            16
        }
    }
}
