//! The CPU state a loader hands over, and the low-memory structures that go with
//! it (GDT, IDT, identity page tables).
//!
//! The state is neutral: the loaders do not depend on the cpu crate. The
//! interpreter and the KVM backend each turn a [`BootCpuState`] into their own
//! register file. Registers not named here (r8–r15, debug registers, MSRs other
//! than EFER) start at their reset value, zero.
//!
//! Low memory used by the loaders (guest physical addresses):
//!
//! ```text
//!   0x0500  GDT (6 entries)                     BOOT_GDT_ADDR (Linux)
//!   0x0560  IDT (one empty gate)                BOOT_IDT_ADDR (Linux)
//!   0x6000  multiboot block: information, memory map, modules list,
//!           strings, GDT, IDT, stack; moved clear of the kernel's
//!           segments when they are there (multiboot)
//!   0x7000  zero page, struct boot_params       (Linux)
//!   0x8ff0  initial stack pointer               BOOT_STACK_POINTER (Linux)
//!   0x9000  PML4, 0xa000 PDPT, 0xb000.. 4 PDs   identity map of 0..4 GiB (Linux)
//!   0x20000 kernel command line                 CMDLINE_ADDR (Linux)
//!   0x9fc00 EBDA (reserved in e820)
//!   0xe0000 ACPI tables (RSDP first)
//!   0xf0000 MP floating pointer + table, then the SMBIOS entry point and structures
//!   0x100000 kernel
//! ```

use mmu::{GuestMemory, MemError};

/// Where the boot GDT lives.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Where the (empty) boot IDT lives.
pub const BOOT_IDT_ADDR: u64 = 0x560;
/// Bytes of the boot IDT (one 16-byte long-mode gate, all zero).
pub const BOOT_IDT_SIZE: u64 = 16;
/// Bytes of the boot GDT (six 8-byte descriptors, see [`boot_gdt`]).
pub const BOOT_GDT_SIZE: u64 = 48;
/// Initial stack pointer for the 64-bit Linux entry (the page below the tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The PML4 of the boot identity map; the PDPT and PDs follow it page by page.
pub const BOOT_PML4_ADDR: u64 = 0x9000;
/// How much the boot page tables identity-map (2 MiB pages).
pub const BOOT_IDENTITY_MAP_SIZE: u64 = 4 << 30;
/// Where the Linux loader puts the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// The most the command line area holds, terminating zero included.
pub const CMDLINE_AREA_SIZE: u64 = 0x10000;

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type, hard-wired to 1 on every CPU since the 486.
pub const CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always reads 1; IF and everything else clear.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Boot GDT selectors. The Linux boot protocol wants `__BOOT_CS = 0x10` and
/// `__BOOT_DS = 0x18`; multiboot kernels get the same layout with a 32-bit code
/// segment.
pub const BOOT_CS: u16 = 0x10;
/// Data segment selector of the boot GDT.
pub const BOOT_DS: u16 = 0x18;
/// Task register selector of the boot GDT.
pub const BOOT_TSS: u16 = 0x20;

/// Page-table entry bits used by the identity map.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;
const PAGE: u64 = 4096;
const LARGE_PAGE: u64 = 2 << 20;

/// The mode the CPU is in at the entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// 16-bit real mode (BIOS boot).
    Real16,
    /// 32-bit protected mode, paging off (multiboot, Linux 32-bit protocol).
    Protected32,
    /// 64-bit long mode with paging (Linux 64-bit protocol).
    Long64,
}

/// Descriptor type field for an execute/read code segment, accessed.
pub const SEG_TYPE_CODE: u8 = 0xb;
/// Descriptor type field for a read/write data segment, accessed.
pub const SEG_TYPE_DATA: u8 = 0x3;
/// Descriptor type field for a busy 32/64-bit TSS.
pub const SEG_TYPE_TSS_BUSY: u8 = 0xb;

/// A segment register with its hidden part, as a descriptor describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentDesc {
    pub selector: u16,
    pub base: u64,
    /// The limit in bytes, already scaled when `g` is set (0xffff_ffff for a
    /// flat 4 GiB segment).
    pub limit: u32,
    /// The 4-bit type field (see `SEG_TYPE_*`).
    pub type_: u8,
    /// S: a code or data segment (true) or a system segment (false).
    pub s: bool,
    pub dpl: u8,
    pub present: bool,
    pub avl: bool,
    /// L: 64-bit code segment.
    pub l: bool,
    /// D/B: 32-bit default operand size / stack.
    pub db: bool,
    /// G: the limit counts 4 KiB pages.
    pub g: bool,
}

impl SegmentDesc {
    /// A flat 64-bit code segment.
    pub const fn code64(selector: u16) -> Self {
        SegmentDesc {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            type_: SEG_TYPE_CODE,
            s: true,
            dpl: 0,
            present: true,
            avl: false,
            l: true,
            db: false,
            g: true,
        }
    }

    /// A flat 32-bit code segment.
    pub const fn code32(selector: u16) -> Self {
        SegmentDesc { l: false, db: true, ..Self::code64(selector) }
    }

    /// A flat 32-bit read/write data segment.
    pub const fn data32(selector: u16) -> Self {
        SegmentDesc { type_: SEG_TYPE_DATA, l: false, db: true, ..Self::code64(selector) }
    }

    /// The busy TSS the boot GDT describes (base 0, as KVM and Firecracker use it).
    pub const fn boot_tss(selector: u16) -> Self {
        SegmentDesc {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            type_: SEG_TYPE_TSS_BUSY,
            s: false,
            dpl: 0,
            present: true,
            avl: false,
            l: false,
            db: false,
            g: true,
        }
    }

    /// A real-mode segment: base = selector * 16, 64 KiB limit.
    pub const fn real_mode(selector: u16, code: bool) -> Self {
        SegmentDesc {
            selector,
            base: (selector as u64) << 4,
            limit: 0xffff,
            type_: if code { SEG_TYPE_CODE } else { SEG_TYPE_DATA },
            s: true,
            dpl: 0,
            present: true,
            avl: false,
            l: false,
            db: false,
            g: false,
        }
    }

    /// The 8-byte GDT descriptor for this segment. The base is truncated to 32
    /// bits (a 64-bit system descriptor's upper half is a separate entry).
    pub const fn to_descriptor(&self) -> u64 {
        let raw_limit = if self.g { (self.limit >> 12) as u64 } else { self.limit as u64 } & 0xf_ffff;
        let base = self.base & 0xffff_ffff;
        (raw_limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (((self.type_ & 0xf) as u64) << 40)
            | ((self.s as u64) << 44)
            | (((self.dpl & 3) as u64) << 45)
            | ((self.present as u64) << 47)
            | ((raw_limit >> 16) << 48)
            | ((self.avl as u64) << 52)
            | ((self.l as u64) << 53)
            | ((self.db as u64) << 54)
            | ((self.g as u64) << 55)
            | ((base >> 24) << 56)
    }

    /// Decode an 8-byte descriptor loaded with `selector`.
    pub const fn from_descriptor(selector: u16, d: u64) -> Self {
        let raw_limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
        let g = (d >> 55) & 1 != 0;
        SegmentDesc {
            selector,
            base: ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24),
            limit: if g { (raw_limit << 12) | 0xfff } else { raw_limit },
            type_: ((d >> 40) & 0xf) as u8,
            s: (d >> 44) & 1 != 0,
            dpl: ((d >> 45) & 3) as u8,
            present: (d >> 47) & 1 != 0,
            avl: (d >> 52) & 1 != 0,
            l: (d >> 53) & 1 != 0,
            db: (d >> 54) & 1 != 0,
            g,
        }
    }
}

/// Everything a CPU (interpreter or KVM) needs to start at a loader's entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootCpuState {
    pub mode: BootMode,
    pub rip: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub gdt_base: u64,
    /// GDTR limit: the last valid byte offset.
    pub gdt_limit: u16,
    pub idt_base: u64,
    pub idt_limit: u16,
    pub cs: SegmentDesc,
    pub ds: SegmentDesc,
    pub es: SegmentDesc,
    pub fs: SegmentDesc,
    pub gs: SegmentDesc,
    pub ss: SegmentDesc,
    pub tr: SegmentDesc,
    /// The LDT register: unused at boot (not present).
    pub ldt: SegmentDesc,
}

impl BootCpuState {
    /// The state after RESET: real mode at F000:FFF0, the reset vector
    /// 0xffff_fff0 (CS base 0xffff_0000, as the hidden part holds after reset).
    pub fn reset() -> Self {
        let mut cs = SegmentDesc::real_mode(0xf000, true);
        cs.base = 0xffff_0000;
        let data = SegmentDesc::real_mode(0, false);
        BootCpuState {
            mode: BootMode::Real16,
            rip: 0xfff0,
            rflags: RFLAGS_RESERVED,
            rax: 0,
            rbx: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            rbp: 0,
            rsp: 0,
            cr0: CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            gdt_base: 0,
            gdt_limit: 0xffff,
            idt_base: 0,
            idt_limit: 0xffff,
            cs,
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: SegmentDesc { type_: SEG_TYPE_TSS_BUSY, s: false, ..data },
            ldt: SegmentDesc::default(),
        }
    }

    /// 32-bit protected mode with flat segments from the boot GDT, paging off.
    pub fn protected32(entry: u64) -> Self {
        let data = SegmentDesc::data32(BOOT_DS);
        BootCpuState {
            mode: BootMode::Protected32,
            rip: entry,
            cr0: CR0_PE | CR0_ET,
            gdt_base: BOOT_GDT_ADDR,
            gdt_limit: boot_gdt_limit(),
            idt_base: BOOT_IDT_ADDR,
            idt_limit: (BOOT_IDT_SIZE - 1) as u16,
            cs: SegmentDesc::code32(BOOT_CS),
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: SegmentDesc::boot_tss(BOOT_TSS),
            ..Self::reset()
        }
    }

    /// 64-bit long mode with paging through `cr3`, flat segments from the boot GDT.
    pub fn long64(entry: u64, cr3: u64) -> Self {
        BootCpuState {
            mode: BootMode::Long64,
            cr0: CR0_PE | CR0_ET | CR0_PG,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            cs: SegmentDesc::code64(BOOT_CS),
            ..Self::protected32(entry)
        }
    }
}

/// The boot GDT for `mode`: null, null, code (0x10), data (0x18), TSS (0x20,
/// with the zero upper half a long-mode system descriptor takes).
pub fn boot_gdt(mode: BootMode) -> [u64; 6] {
    let code = match mode {
        BootMode::Long64 => SegmentDesc::code64(BOOT_CS),
        BootMode::Protected32 | BootMode::Real16 => SegmentDesc::code32(BOOT_CS),
    };
    [
        0,
        0,
        code.to_descriptor(),
        SegmentDesc::data32(BOOT_DS).to_descriptor(),
        SegmentDesc::boot_tss(BOOT_TSS).to_descriptor(),
        0,
    ]
}

const fn boot_gdt_limit() -> u16 {
    (BOOT_GDT_SIZE - 1) as u16
}

/// Write the boot GDT for `mode` and the empty IDT at their usual places,
/// [`BOOT_GDT_ADDR`] and [`BOOT_IDT_ADDR`].
pub fn write_boot_gdt(mem: &GuestMemory, mode: BootMode) -> Result<(), MemError> {
    write_boot_gdt_at(mem, mode, BOOT_GDT_ADDR, BOOT_IDT_ADDR)
}

/// Write the boot GDT for `mode` at `gdt` ([`BOOT_GDT_SIZE`] bytes) and the
/// empty IDT at `idt` ([`BOOT_IDT_SIZE`] bytes), for a loader that places
/// them itself (the state's `gdt_base` and `idt_base` must then say so).
pub fn write_boot_gdt_at(mem: &GuestMemory, mode: BootMode, gdt: u64, idt: u64) -> Result<(), MemError> {
    let mut bytes = Vec::with_capacity(BOOT_GDT_SIZE as usize);
    for d in boot_gdt(mode) {
        bytes.extend_from_slice(&d.to_le_bytes());
    }
    mem.write(gdt, &bytes)?;
    mem.fill(idt, BOOT_IDT_SIZE, 0)
}

/// Write page tables that identity-map `0..BOOT_IDENTITY_MAP_SIZE` with 2 MiB
/// pages (PML4 at [`BOOT_PML4_ADDR`], then the PDPT, then one PD per GiB).
/// Returns the CR3 value.
pub fn write_identity_page_tables(mem: &GuestMemory) -> Result<u64, MemError> {
    let pml4 = BOOT_PML4_ADDR;
    let pdpt = pml4 + PAGE;
    let first_pd = pdpt + PAGE;
    let gibs = BOOT_IDENTITY_MAP_SIZE >> 30;
    mem.fill(pml4, PAGE, 0)?;
    mem.write_u64(pml4, pdpt | PTE_PRESENT | PTE_WRITABLE)?;
    mem.fill(pdpt, PAGE, 0)?;
    let mut pd_bytes = vec![0u8; PAGE as usize];
    for gib in 0..gibs {
        let pd = first_pd + gib * PAGE;
        mem.write_u64(pdpt + gib * 8, pd | PTE_PRESENT | PTE_WRITABLE)?;
        for (i, entry) in pd_bytes.chunks_exact_mut(8).enumerate() {
            let addr = (gib << 30) + i as u64 * LARGE_PAGE;
            entry.copy_from_slice(&(addr | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE).to_le_bytes());
        }
        mem.write(pd, &pd_bytes)?;
    }
    Ok(pml4)
}

/// The end (exclusive) of the boot page tables [`write_identity_page_tables`] writes.
pub const fn boot_page_tables_end() -> u64 {
    BOOT_PML4_ADDR + (2 + (BOOT_IDENTITY_MAP_SIZE >> 30)) * PAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        assert_eq!(SegmentDesc::code64(BOOT_CS).to_descriptor(), 0x00af_9b00_0000_ffff);
        assert_eq!(SegmentDesc::code32(BOOT_CS).to_descriptor(), 0x00cf_9b00_0000_ffff);
        assert_eq!(SegmentDesc::data32(BOOT_DS).to_descriptor(), 0x00cf_9300_0000_ffff);
        assert_eq!(SegmentDesc::boot_tss(BOOT_TSS).to_descriptor(), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn descriptors_round_trip() {
        let odd = SegmentDesc {
            selector: 0x2b,
            base: 0x1234_5678,
            limit: 0x0_abcd,
            type_: 0x2,
            s: true,
            dpl: 3,
            present: true,
            avl: true,
            l: false,
            db: true,
            g: false,
        };
        for seg in [SegmentDesc::code64(0x10), SegmentDesc::data32(0x18), SegmentDesc::boot_tss(0x20), odd] {
            assert_eq!(SegmentDesc::from_descriptor(seg.selector, seg.to_descriptor()), seg);
        }
    }

    #[test]
    fn long_mode_state_is_consistent() {
        let s = BootCpuState::long64(0x100_0200, BOOT_PML4_ADDR);
        assert_eq!(s.mode, BootMode::Long64);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert!(s.cs.l && !s.cs.db);
        assert_eq!((s.cs.selector, s.ds.selector, s.ss.selector), (0x10, 0x18, 0x18));
        assert_eq!(s.rflags, 2);
        let p = BootCpuState::protected32(0x10_0000);
        assert_eq!(p.cr0 & CR0_PG, 0);
        assert_eq!(p.efer, 0);
        assert!(p.cs.db && !p.cs.l);
        let r = BootCpuState::reset();
        assert_eq!(r.cs.base + r.rip, 0xffff_fff0);
    }

    #[test]
    fn gdt_and_page_tables_land_where_documented() {
        let mem = GuestMemory::new(16 << 20).unwrap();
        write_boot_gdt(&mem, BootMode::Long64).unwrap();
        let state = BootCpuState::long64(0, BOOT_PML4_ADDR);
        let cs = mem.read_u64(BOOT_GDT_ADDR + u64::from(state.cs.selector)).unwrap();
        assert_eq!(SegmentDesc::from_descriptor(state.cs.selector, cs), state.cs);
        let ds = mem.read_u64(BOOT_GDT_ADDR + u64::from(state.ds.selector)).unwrap();
        assert_eq!(SegmentDesc::from_descriptor(state.ds.selector, ds), state.ds);
        assert_eq!(u64::from(state.gdt_limit) + 1, 48);

        let cr3 = write_identity_page_tables(&mem).unwrap();
        // Walk the tables by hand for a few addresses.
        for addr in [0u64, 0x20_0000, 0x1234_5678, 0xfee0_0000, 0xffff_ffff] {
            let pml4e = mem.read_u64(cr3 + ((addr >> 39) & 511) * 8).unwrap();
            assert_eq!(pml4e & 3, 3);
            let pdpte = mem.read_u64((pml4e & !0xfff) + ((addr >> 30) & 511) * 8).unwrap();
            assert_eq!(pdpte & 3, 3);
            let pde = mem.read_u64((pdpte & !0xfff) + ((addr >> 21) & 511) * 8).unwrap();
            assert_eq!(pde & 0x83, 0x83);
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
        }
        assert_eq!(boot_page_tables_end(), 0xf000);
    }
}
