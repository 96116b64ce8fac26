//! The guest both sides run: one memory layout, one set of system tables and
//! one entry state, built the same way for the interpreter and for KVM.
//!
//! Long mode is entered directly (the state is loaded, no firmware runs):
//! 4-level paging with 4 KiB pages so each page's permissions are chosen, a
//! GDT with ring-0 and ring-3 segments (64-bit and 32-bit user code), a TSS
//! whose RSP0 is the kernel stack, and an IDT whose 256 DPL-3 interrupt gates
//! go to tiny ring-0 handlers. A handler is `out imm8, al; jmp $`: the port
//! number names the vector, and it changes no register, so the interrupted
//! state stays in the registers and the exception frame (with any error code)
//! stays on the kernel stack for the comparison. CR2 is read from the state.
//!
//! Sequences run at CPL3 with IOPL=0 and end with `hlt`, which at CPL3 raises
//! #GP(0): a #GP whose frame points at that `hlt` is the normal end. (Ending
//! with a CPL3 `out` under IOPL=3 does not work on kvm_pvm: ring 3 runs with
//! the host's IOPL of 0, the `out` is emulated, and it faults whenever
//! RFLAGS.AC is set.)

use cpu::state::{cr, flags, reg, seg_attr, sreg, CpuState, DescTable, Segment};
use mmu::GuestMemory;

pub const RAM: u64 = 2 << 20;
pub const PAGE: u64 = 4096;

pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const TSS: u64 = 0x3000;
pub const PML4: u64 = 0x4000;
pub const PDPT: u64 = 0x5000;
pub const PD: u64 = 0x6000;
pub const PT: u64 = 0x7000;
/// Exception handlers, 8 bytes each, indexed by vector.
pub const HANDLERS: u64 = 0x8000;
pub const HANDLER_SIZE: u64 = 8;
/// The kernel stack page; TSS.RSP0 is its top.
pub const KSTACK: u64 = 0x9000;
pub const KSTACK_TOP: u64 = KSTACK + PAGE;
/// Bytes below KSTACK_TOP compared after an exception (the frame).
pub const KSTACK_CMP: usize = 64;
/// Supervisor-only data page (user access: #PF with U/S).
pub const KDATA: u64 = 0xa000;

/// The code page (user, executable); the page after it is not present.
pub const CODE: u64 = 0x10000;
/// The data page (user, writable, not executable); the pages on both sides
/// are not present. Memory operands and the user stack point here.
pub const DATA: u64 = 0x20000;
/// A user page mapped read-only (writes fault with P|W|U).
pub const RODATA: u64 = 0x23000;
/// A present page whose contents are fixed (for reads through RODATA).
pub const RODATA_FILL: u8 = 0x5a;

pub const KERNEL_CS: u16 = 0x08;
pub const USER_CS32: u16 = 0x18 | 3;
pub const USER_DS: u16 = 0x20 | 3;
pub const USER_CS64: u16 = 0x28 | 3;
pub const TSS_SEL: u16 = 0x30;
/// Number of GDT bytes in use (the TSS descriptor takes two slots).
pub const GDT_LIMIT: u32 = 0x40 - 1;

/// Handlers for vectors 0..31 write to `VECTOR_PORT_BASE + vector`.
pub const VECTOR_PORT_BASE: u8 = 0xe0;
/// Handlers for vectors 32..255 write here.
pub const OTHER_VECTOR_PORT: u8 = 0xdf;

const PTE_P: u64 = 1;
const PTE_W: u64 = 2;
const PTE_U: u64 = 4;
const PTE_NX: u64 = 1 << 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// 64-bit mode at CPL3.
    Long64,
    /// 32-bit compatibility mode at CPL3 (long mode, CS.L=0, CS.D=1).
    Compat32,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Long64, Mode::Compat32];

    pub fn bitness(self) -> u32 {
        match self {
            Mode::Long64 => 64,
            Mode::Compat32 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Long64 => "64-bit",
            Mode::Compat32 => "compat32",
        }
    }
}

fn gdt_entry(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (base, limit) = (u64::from(base), u64::from(limit));
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (u64::from(flags & 0xf) << 52)
        | ((base >> 24) << 56)
}

/// The handler bytes for `vector`: `out imm8, al; jmp $`.
pub fn handler_bytes(vector: u8) -> [u8; 4] {
    let port = if vector < 32 { VECTOR_PORT_BASE + vector } else { OTHER_VECTOR_PORT };
    [0xe6, port, 0xeb, 0xfe]
}

/// Which vector a handler port reports (`None` for other ports).
pub fn vector_of_port(port: u16) -> Option<u8> {
    let p = u8::try_from(port).ok()?;
    if p >= VECTOR_PORT_BASE {
        Some(p - VECTOR_PORT_BASE)
    } else if p == OTHER_VECTOR_PORT {
        Some(0xff)
    } else {
        None
    }
}

/// A fresh guest memory with the system tables written.
pub fn build_memory() -> GuestMemory {
    let mem = GuestMemory::new(RAM).expect("guest memory");
    // Paging: PML4[0] -> PDPT[0] -> PD[0] -> PT, 4 KiB pages for the first 2 MiB.
    mem.write_u64(PML4, PDPT | PTE_P | PTE_W | PTE_U).unwrap();
    mem.write_u64(PDPT, PD | PTE_P | PTE_W | PTE_U).unwrap();
    mem.write_u64(PD, PT | PTE_P | PTE_W | PTE_U).unwrap();
    let map = |page: u64, flags: u64| mem.write_u64(PT + (page / PAGE) * 8, page | flags).unwrap();
    // Supervisor pages: tables, handlers, kernel stack, kernel data.
    for page in [GDT, IDT, TSS, PML4, PDPT, PD, PT, KDATA] {
        map(page, PTE_P | PTE_W | PTE_NX);
    }
    map(HANDLERS, PTE_P);
    map(KSTACK, PTE_P | PTE_W | PTE_NX);
    map(CODE, PTE_P | PTE_U);
    map(DATA, PTE_P | PTE_W | PTE_U | PTE_NX);
    map(RODATA, PTE_P | PTE_U | PTE_NX);
    mem.fill(RODATA, PAGE, RODATA_FILL).unwrap();
    mem.fill(KDATA, PAGE, 0xa5).unwrap();

    let gdt = [
        0,
        gdt_entry(0, 0xfffff, 0x9b, 0xa),     // 0x08 kernel code, L=1
        gdt_entry(0, 0xfffff, 0x93, 0xc),     // 0x10 kernel data
        gdt_entry(0, 0xfffff, 0xfb, 0xc),     // 0x18 user code, 32-bit
        gdt_entry(0, 0xfffff, 0xf3, 0xc),     // 0x20 user data
        gdt_entry(0, 0xfffff, 0xfb, 0xa),     // 0x28 user code, 64-bit
        gdt_entry(TSS as u32, 0x67, 0x89, 0), // 0x30 TSS (64-bit, available)
        0,                                    // TSS base 63:32
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_u64(GDT + 8 * i as u64, *e).unwrap();
    }
    mem.write_u64(TSS + 4, KSTACK_TOP).unwrap();
    // I/O map base past the limit: no I/O bitmap (IOPL decides).
    mem.write_u16(TSS + 0x66, 0x68).unwrap();

    for vector in 0..256u64 {
        let handler = HANDLERS + vector * HANDLER_SIZE;
        let lo =
            (handler & 0xffff) | (u64::from(KERNEL_CS) << 16) | (0xee00u64 << 32) | ((handler >> 16) & 0xffff) << 48;
        mem.write_u64(IDT + vector * 16, lo).unwrap();
        mem.write_u64(IDT + vector * 16 + 8, handler >> 32).unwrap();
        mem.write(handler, &handler_bytes(vector as u8)).unwrap();
    }
    mem
}

/// The entry state for `mode` at CPL3 (registers, flags and FP state are
/// filled in by the generator).
pub fn base_state(mode: Mode) -> CpuState {
    use seg_attr::*;
    let mut s = CpuState::reset();
    let dpl3 = 3 << DPL_SHIFT;
    let data = Segment {
        base: 0,
        limit: 0xffff_ffff,
        attr: P | S | TYPE_RW | TYPE_ACCESSED | DB | G | dpl3,
        selector: USER_DS,
        _pad: [0; 3],
    };
    s.seg = [data; 6];
    if mode == Mode::Long64 {
        // As a 64-bit Linux process has them: DS, ES, FS, GS null.
        let null = Segment { base: 0, limit: 0, attr: UNUSABLE, selector: 0, _pad: [0; 3] };
        for r in [sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
            s.seg[r] = null;
        }
    }
    s.seg[sreg::CS] = match mode {
        Mode::Long64 => Segment {
            base: 0,
            limit: 0xffff_ffff,
            attr: P | S | TYPE_CODE | TYPE_RW | TYPE_ACCESSED | L | G | dpl3,
            selector: USER_CS64,
            _pad: [0; 3],
        },
        Mode::Compat32 => Segment {
            base: 0,
            limit: 0xffff_ffff,
            attr: P | S | TYPE_CODE | TYPE_RW | TYPE_ACCESSED | DB | G | dpl3,
            selector: USER_CS32,
            _pad: [0; 3],
        },
    };
    s.tr = Segment { base: TSS, limit: 0x67, attr: P | 11, selector: TSS_SEL, _pad: [0; 3] };
    s.ldtr = Segment { base: 0, limit: 0, attr: UNUSABLE, selector: 0, _pad: [0; 3] };
    s.gdtr = DescTable { base: GDT, limit: GDT_LIMIT, _pad: 0 };
    s.idtr = DescTable { base: IDT, limit: 256 * 16 - 1, _pad: 0 };
    s.cr0 = cr::CR0_PE | cr::CR0_MP | cr::CR0_ET | cr::CR0_NE | cr::CR0_WP | cr::CR0_AM | cr::CR0_PG;
    s.cr3 = PML4;
    s.cr4 = cr::CR4_PAE | cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT;
    s.efer = cr::EFER_SCE | cr::EFER_LME | cr::EFER_LMA | cr::EFER_NXE;
    s.rflags = flags::FIXED | flags::IF;
    s.rip = CODE;
    s.gpr[reg::RSP] = DATA + 0x800;
    s.cpl = 3;
    s
}
