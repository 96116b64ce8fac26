//! A 32-bit protected-mode test kernel (multiboot), assembled with iced-x86:
//! flat ring-0 and ring-3 segments, a TSS, an IDT whose every vector leads
//! to a handler that reports the unexpected event, and helpers to set a gate,
//! enter ring 3, check a result and leave through debug-exit.
//!
//! Memory (identity, no paging): the kernel at 1 MiB, its tables and
//! variables at [`GDT`]..[`VARS`], the ring-0 stack below [`KSTACK`], the
//! ring-3 stack below [`USTACK`].

#![allow(dead_code, reason = "each suite uses what it needs")]

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

use super::multiboot::{multiboot_elf, print32, CODE_OFF, LOAD};

pub const GDT: u32 = 0x30_0000;
pub const IDT: u32 = 0x30_1000;
pub const TSS: u32 = 0x30_2000;
/// Test variables (32-bit words).
pub const VARS: u32 = 0x30_3000;
/// Scratch memory for the tests.
pub const SCRATCH: u32 = 0x30_4000;
pub const KSTACK: u32 = 0x38_0000;
pub const USTACK: u32 = 0x39_0000;

pub const KCODE: u16 = 0x08;
pub const KDATA: u16 = 0x10;
pub const UCODE: u16 = 0x18 | 3;
pub const UDATA: u16 = 0x20 | 3;
pub const TSS_SEL: u16 = 0x28;
/// A ring-0 code segment whose P bit is clear.
pub const NP_CODE: u16 = 0x30;

/// Variable `i` (a 32-bit word at `VARS + 4 * i`).
pub fn var(i: u32) -> AsmMemoryOperand {
    dword_ptr(VARS + 4 * i)
}

/// A segment descriptor: base, limit (in 4 KiB units when `flags` has G),
/// access byte, flags nibble.
fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (base, limit) = (u64::from(base), u64::from(limit));
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | u64::from(access) << 40
        | ((limit >> 16) & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (base >> 24) << 56
}

/// A label whose address the kernel can take at run time ([`Kernel::addr`]):
/// 32-bit code has no RIP-relative LEA, so the label is preceded by a
/// `call` that only [`Kernel::addr`] runs, pushing the label's address.
#[derive(Clone, Copy)]
pub struct Lbl {
    fetch: CodeLabel,
    pub at: CodeLabel,
}

/// The kernel under construction.
pub struct Kernel {
    pub a: CodeAssembler,
    name: String,
    fails: Vec<(CodeLabel, String)>,
    unexpected: Lbl,
    getaddr: CodeLabel,
}

impl Kernel {
    /// Start a kernel called `name` (it prints `name: ok` when it passes):
    /// after this the CPU runs at CPL 0 on the kernel's GDT, IDT and TSS,
    /// every vector reporting an unexpected event.
    pub fn new(name: &str) -> Kernel {
        let mut a = CodeAssembler::new(32).unwrap();
        let unexpected = Lbl { fetch: a.create_label(), at: a.create_label() };
        let getaddr = a.create_label();
        let mut k = Kernel { a, name: name.to_string(), fails: Vec::new(), unexpected, getaddr };
        k.setup().unwrap();
        k
    }

    /// A new address-taken label.
    pub fn label(&mut self) -> Lbl {
        Lbl { fetch: self.a.create_label(), at: self.a.create_label() }
    }

    /// Place `l` here (code falling through jumps over its `call`).
    pub fn place(&mut self, l: &mut Lbl) -> Result<(), IcedError> {
        self.a.jmp(l.at)?;
        self.a.set_label(&mut l.fetch)?;
        self.a.call(self.getaddr)?;
        self.a.set_label(&mut l.at)
    }

    /// EAX = the address of `l` (uses 4 bytes of stack).
    pub fn addr(&mut self, l: Lbl) -> Result<(), IcedError> {
        self.a.call(l.fetch)
    }

    fn setup(&mut self) -> Result<(), IcedError> {
        let boot = self.label();
        // The stack for `addr` (the loader's is somewhere in low memory).
        self.a.mov(esp, KSTACK)?;
        self.a.cli()?;
        let a = &mut self.a;
        a.cli()?;
        let gdt = [
            0,
            desc(0, 0xfffff, 0x9a, 0xc),
            desc(0, 0xfffff, 0x92, 0xc),
            desc(0, 0xfffff, 0xfa, 0xc),
            desc(0, 0xfffff, 0xf2, 0xc),
            desc(TSS, 0x67, 0x89, 0),
            desc(0, 0xfffff, 0x1a, 0xc),
        ];
        for (i, d) in gdt.iter().enumerate() {
            a.mov(dword_ptr(GDT + 8 * i as u32), *d as u32)?;
            a.mov(dword_ptr(GDT + 8 * i as u32 + 4), (*d >> 32) as u32)?;
        }
        // The descriptor-table pointers at VARS + 0x800.
        a.mov(word_ptr(VARS + 0x800), (8 * gdt.len() - 1) as u32)?;
        a.mov(dword_ptr(VARS + 0x802), GDT)?;
        a.mov(word_ptr(VARS + 0x808), 0x7ffu32)?;
        a.mov(dword_ptr(VARS + 0x80a), IDT)?;
        a.lgdt(dword_ptr(VARS + 0x800))?;
        a.lidt(dword_ptr(VARS + 0x808))?;
        let mut reload = boot;
        self.a.push(u32::from(KCODE))?;
        self.addr(reload)?;
        self.a.push(eax)?;
        self.a.retf()?;
        self.place(&mut reload)?;
        let a = &mut self.a;
        a.mov(ax, u32::from(KDATA))?;
        for s in [ds, es, fs, gs, ss] {
            a.mov(s, ax)?;
        }
        a.mov(esp, KSTACK)?;
        // TSS: ESP0, SS0; the I/O bitmap base past the limit.
        a.mov(dword_ptr(TSS + 4), KSTACK)?;
        a.mov(dword_ptr(TSS + 8), u32::from(KDATA))?;
        a.mov(word_ptr(TSS + 0x66), 0x68u32)?;
        a.mov(ax, u32::from(TSS_SEL))?;
        a.ltr(ax)?;
        // Every gate: the unexpected-event handler.
        self.addr(self.unexpected)?;
        let a = &mut self.a;
        a.mov(ebx, eax)?;
        a.and(eax, 0xffffu32)?;
        a.or(eax, u32::from(KCODE) << 16)?;
        a.and(ebx, 0xffff_0000u32)?;
        a.or(ebx, 0x8e00u32)?;
        a.xor(ecx, ecx)?;
        let mut fill = a.create_label();
        a.set_label(&mut fill)?;
        a.mov(dword_ptr(ecx * 8 + IDT), eax)?;
        a.mov(dword_ptr(ecx * 8 + IDT + 4), ebx)?;
        a.inc(ecx)?;
        a.cmp(ecx, 256u32)?;
        a.jne(fill)?;
        Ok(())
    }

    /// Point IDT entry `vector` at `target`: `typ` 0xE (interrupt gate) or
    /// 0xF (trap gate), with `dpl`, present unless `present` is false, and
    /// code selector `sel`.
    pub fn gate(&mut self, vector: u8, target: Lbl, typ: u8, dpl: u8, sel: u16) -> Result<(), IcedError> {
        self.addr(target)?;
        let a = &mut self.a;
        let e = IDT + 8 * u32::from(vector);
        a.mov(word_ptr(e), ax)?;
        a.mov(word_ptr(e + 2), u32::from(sel))?;
        a.mov(word_ptr(e + 4), u32::from(0x80 | dpl << 5 | typ) << 8)?;
        a.shr(eax, 16)?;
        a.mov(word_ptr(e + 6), ax)
    }

    /// Clear or set the P bit of IDT entry `vector`.
    pub fn gate_present(&mut self, vector: u8, present: bool) -> Result<(), IcedError> {
        let e = IDT + 8 * u32::from(vector) + 5;
        if present {
            self.a.or(byte_ptr(e), 0x80u32)
        } else {
            self.a.and(byte_ptr(e), 0x7fu32)
        }
    }

    /// IRET to ring 3 at `target` with EFLAGS `eflags` on the ring-3 stack.
    pub fn enter_user(&mut self, target: Lbl, eflags: u32) -> Result<(), IcedError> {
        self.a.push(u32::from(UDATA))?;
        self.a.push(USTACK)?;
        self.a.push(eflags)?;
        self.a.push(u32::from(UCODE))?;
        self.addr(target)?;
        let a = &mut self.a;
        a.push(eax)?;
        a.mov(ax, u32::from(UDATA))?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.iretd()
    }

    /// Reload the ring-0 data segments (after a return from ring 3).
    pub fn kernel_data(&mut self) -> Result<(), IcedError> {
        self.a.mov(ax, u32::from(KDATA))?;
        self.a.mov(ds, ax)?;
        self.a.mov(es, ax)
    }

    /// Jump to a failure report (`why`, then EAX in hex) unless the flags
    /// say "equal".
    pub fn fail_ne(&mut self, why: &str) -> Result<(), IcedError> {
        let l = self.a.create_label();
        self.a.jne(l)?;
        self.fails.push((l, why.to_string()));
        Ok(())
    }

    /// `cmp dst, value` then [`Kernel::fail_ne`]: EAX is loaded with the
    /// value found for the report.
    pub fn expect(&mut self, found: AsmMemoryOperand, value: u32, why: &str) -> Result<(), IcedError> {
        self.a.mov(eax, found)?;
        self.a.cmp(eax, value)?;
        self.fail_ne(why)
    }

    /// Print `s` on COM1 (clobbers EAX, EDX).
    pub fn print(&mut self, s: &str) -> Result<(), IcedError> {
        print32(&mut self.a, s)
    }

    /// Pass: print `name: ok` and leave with debug-exit 0x21 (status 0x43).
    pub fn pass(&mut self) -> Result<(), IcedError> {
        let name = self.name.clone();
        self.print(&format!("{name}: ok\n"))?;
        self.a.mov(al, 0x21u32)?;
        self.a.out(0xf4u32, al)?;
        self.a.hlt()
    }

    /// Print EAX as 8 hex digits (clobbers EAX, ECX, EDX, EBX).
    fn print_hex(a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.mov(ebx, eax)?;
        a.mov(ecx, 8u32)?;
        a.mov(dx, 0x3f8u32)?;
        let mut digit = a.create_label();
        let mut number = a.create_label();
        a.set_label(&mut digit)?;
        a.rol(ebx, 4)?;
        a.mov(eax, ebx)?;
        a.and(eax, 0xfu32)?;
        a.add(eax, u32::from(b'0'))?;
        a.cmp(eax, u32::from(b'9'))?;
        a.jbe(number)?;
        a.add(eax, 7u32)?;
        a.set_label(&mut number)?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(digit)
    }

    /// The finished multiboot image.
    pub fn build(self) -> Vec<u8> {
        self.build_with_labels(&[]).0
    }

    /// [`Kernel::build`], with the addresses `labels` were placed at.
    pub fn build_with_labels(mut self, labels: &[CodeLabel]) -> (Vec<u8>, Vec<u64>) {
        let name = self.name.clone();
        let mut getaddr = self.getaddr;
        self.a.set_label(&mut getaddr).unwrap();
        self.a.pop(eax).unwrap();
        self.a.ret().unwrap();
        let mut unexpected = self.unexpected;
        self.place(&mut unexpected).unwrap();
        let a = &mut self.a;
        // An unexpected event: report the three words on top of the stack
        // (the error code or EIP, then EIP or CS, then CS or EFLAGS).
        a.mov(ax, u32::from(KDATA)).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(esi, esp).unwrap();
        print32(a, &format!("{name}: unexpected event, stack ")).unwrap();
        a.mov(eax, dword_ptr(esi)).unwrap();
        Self::print_hex(a).unwrap();
        print32(a, " ").unwrap();
        a.mov(eax, dword_ptr(esi + 4)).unwrap();
        Self::print_hex(a).unwrap();
        print32(a, " ").unwrap();
        a.mov(eax, dword_ptr(esi + 8)).unwrap();
        Self::print_hex(a).unwrap();
        print32(a, "\n").unwrap();
        a.mov(al, 0x33u32).unwrap();
        a.out(0xf4u32, al).unwrap();
        a.hlt().unwrap();
        for (mut l, why) in std::mem::take(&mut self.fails) {
            a.set_label(&mut l).unwrap();
            a.mov(esi, eax).unwrap();
            a.mov(ax, u32::from(KDATA)).unwrap();
            a.mov(ds, ax).unwrap();
            print32(a, &format!("{name}: {why}: ")).unwrap();
            a.mov(eax, esi).unwrap();
            Self::print_hex(a).unwrap();
            print32(a, "\n").unwrap();
            a.mov(al, 0x33u32).unwrap();
            a.out(0xf4u32, al).unwrap();
            a.hlt().unwrap();
        }
        let result = a
            .assemble_options(u64::from(LOAD + CODE_OFF), BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
            .unwrap();
        let addrs = labels.iter().map(|l| result.label_ip(l).unwrap()).collect();
        (multiboot_elf(&result.inner.code_buffer), addrs)
    }
}

/// Where the 64-bit part of a long-mode kernel starts: the 32-bit part is
/// padded to this offset from the entry point.
pub const LONG_PAD: u32 = 0x1000;
/// The 64-bit part's address.
pub const LONG_ENTRY: u32 = LOAD + CODE_OFF + LONG_PAD;
/// The long-mode GDT entries, after the 32-bit ones: kernel code and data
/// (SYSCALL's CS and SS), then user code32, data, code64 (SYSRET's base).
pub const KCODE64: u16 = 0x38;
pub const KDATA64: u16 = 0x40;
pub const USER32_BASE: u16 = 0x48;
pub const UCODE64: u16 = 0x58 | 3;
pub const UDATA64: u16 = 0x50 | 3;
/// Identity paging for the first 4 MiB (2 MiB pages, user-accessible).
const PML4: u32 = 0x31_0000;
/// The page directory of that paging: entry `n` maps 2 MiB at `n << 21`
/// (entries 0 and 1 are set).
pub const PD: u32 = PML4 + 0x2000;

/// The 64-bit part of a long-mode kernel: its own assembler at
/// [`LONG_ENTRY`], with failure reports like [`Kernel`]'s.
pub struct Long {
    pub a: CodeAssembler,
    name: String,
    fails: Vec<(CodeLabel, String)>,
    unexpected: CodeLabel,
}

impl Kernel {
    /// Switch to long mode (PAE paging of the first 4 MiB, EFER.LME and
    /// SCE) and jump to the 64-bit part, which `body` writes. On entry to
    /// it the CPU runs at CPL 0 in 64-bit mode with an IDT of 16-byte gates,
    /// all leading to an unexpected-event report.
    pub fn long_mode(mut self, body: impl FnOnce(&mut Long) -> Result<(), IcedError>) -> Vec<u8> {
        (|| -> Result<(), IcedError> {
            let a = &mut self.a;
            let extra = [
                desc(0, 0xfffff, 0x9a, 0xa),
                desc(0, 0xfffff, 0x92, 0xc),
                desc(0, 0xfffff, 0xfa, 0xc),
                desc(0, 0xfffff, 0xf2, 0xc),
                desc(0, 0xfffff, 0xfa, 0xa),
            ];
            for (i, d) in extra.iter().enumerate() {
                let at = GDT + u32::from(KCODE64) + 8 * i as u32;
                a.mov(dword_ptr(at), *d as u32)?;
                a.mov(dword_ptr(at + 4), (*d >> 32) as u32)?;
            }
            a.mov(word_ptr(VARS + 0x800), 0x5fu32)?;
            a.lgdt(dword_ptr(VARS + 0x800))?;
            // The TSS as a 64-bit one: RSP0 = KSTACK.
            a.mov(dword_ptr(TSS + 8), 0u32)?;
            a.mov(dword_ptr(PML4), (PML4 + 0x1000) | 7)?;
            a.mov(dword_ptr(PML4 + 0x1000), (PML4 + 0x2000) | 7)?;
            a.mov(dword_ptr(PML4 + 0x2000), 0x87u32)?;
            a.mov(dword_ptr(PML4 + 0x2008), 0x20_0087u32)?;
            a.mov(eax, cr4)?;
            a.or(eax, 0x20u32)?;
            a.mov(cr4, eax)?;
            a.mov(eax, PML4)?;
            a.mov(cr3, eax)?;
            a.mov(ecx, 0xc000_0080u32)?;
            a.rdmsr()?;
            a.or(eax, 0x101u32)?;
            a.wrmsr()?;
            a.mov(eax, cr0)?;
            a.or(eax, 0x8000_0000u32)?;
            a.mov(cr0, eax)?;
            a.push(u32::from(KCODE64))?;
            a.push(LONG_ENTRY)?;
            a.retf()
        })()
        .unwrap();
        let mut l = Long {
            a: CodeAssembler::new(64).unwrap(),
            name: self.name.clone(),
            fails: Vec::new(),
            unexpected: CodeLabel::default(),
        };
        l.unexpected = l.a.create_label();
        l.setup().unwrap();
        body(&mut l).unwrap();
        let code64 = l.build();
        let mut image = self.build();
        let code32_len = image.len() - CODE_OFF as usize;
        assert!(code32_len <= LONG_PAD as usize, "the 32-bit part outgrew its room");
        image = image[CODE_OFF as usize..].to_vec();
        image.resize(LONG_PAD as usize, 0xcc);
        image.extend_from_slice(&code64);
        multiboot_elf(&image)
    }
}

impl Long {
    fn setup(&mut self) -> Result<(), IcedError> {
        let a = &mut self.a;
        a.mov(ax, u32::from(KDATA64))?;
        for s in [ds, es, ss] {
            a.mov(s, ax)?;
        }
        a.mov(rsp, u64::from(KSTACK))?;
        a.lea(rax, qword_ptr(self.unexpected))?;
        a.xor(ecx, ecx)?;
        let mut fill = a.create_label();
        a.set_label(&mut fill)?;
        a.mov(rdi, rcx)?;
        a.shl(rdi, 4)?;
        a.add(rdi, IDT as i32)?;
        a.mov(word_ptr(rdi), ax)?;
        a.mov(word_ptr(rdi + 2), u32::from(KCODE64))?;
        a.mov(word_ptr(rdi + 4), 0x8e00u32)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 16)?;
        a.mov(word_ptr(rdi + 6), dx)?;
        a.mov(dword_ptr(rdi + 8), 0u32)?;
        a.mov(dword_ptr(rdi + 12), 0u32)?;
        a.inc(ecx)?;
        a.cmp(ecx, 256u32)?;
        a.jne(fill)?;
        a.mov(word_ptr(VARS as u64 + 0x808), 0xfffu32)?;
        a.lidt(qword_ptr(VARS as u64 + 0x808))
    }

    /// Point 64-bit IDT entry `vector` at `target`: an interrupt gate of
    /// `dpl`.
    pub fn gate(&mut self, vector: u8, target: CodeLabel, dpl: u8) -> Result<(), IcedError> {
        let a = &mut self.a;
        let e = u64::from(IDT + 16 * u32::from(vector));
        a.lea(rax, qword_ptr(target))?;
        a.mov(word_ptr(e), ax)?;
        a.mov(word_ptr(e + 4), u32::from(0x8e00u16 | u16::from(dpl) << 13))?;
        a.shr(rax, 16)?;
        a.mov(word_ptr(e + 6), ax)
    }

    /// Jump to a failure report (`why`, then EAX in hex) unless "equal".
    pub fn fail_ne(&mut self, why: &str) -> Result<(), IcedError> {
        let l = self.a.create_label();
        self.a.jne(l)?;
        self.fails.push((l, why.to_string()));
        Ok(())
    }

    /// Compare the 32-bit word at `found` with `value`, failing with `why`.
    pub fn expect(&mut self, found: AsmMemoryOperand, value: u32, why: &str) -> Result<(), IcedError> {
        self.a.mov(eax, found)?;
        self.a.cmp(eax, value)?;
        self.fail_ne(why)
    }

    /// Pass: print `name: ok` and leave with debug-exit 0x21.
    pub fn pass(&mut self) -> Result<(), IcedError> {
        print32(&mut self.a, &format!("{}: ok\n", self.name))?;
        self.a.mov(al, 0x21u32)?;
        self.a.out(0xf4u32, al)?;
        self.a.hlt()
    }

    fn build(mut self) -> Vec<u8> {
        let name = self.name.clone();
        let a = &mut self.a;
        a.set_label(&mut self.unexpected).unwrap();
        a.mov(rsi, rsp).unwrap();
        print32(a, &format!("{name}: unexpected event (64-bit), stack ")).unwrap();
        for i in 0..3 {
            a.mov(eax, dword_ptr(rsi + 8 * i)).unwrap();
            Kernel::print_hex(a).unwrap();
            print32(a, " ").unwrap();
        }
        print32(a, "\n").unwrap();
        a.mov(al, 0x33u32).unwrap();
        a.out(0xf4u32, al).unwrap();
        a.hlt().unwrap();
        for (mut l, why) in std::mem::take(&mut self.fails) {
            a.set_label(&mut l).unwrap();
            a.mov(esi, eax).unwrap();
            print32(a, &format!("{name}: {why}: ")).unwrap();
            a.mov(eax, esi).unwrap();
            Kernel::print_hex(a).unwrap();
            print32(a, "\n").unwrap();
            a.mov(al, 0x33u32).unwrap();
            a.out(0xf4u32, al).unwrap();
            a.hlt().unwrap();
        }
        a.assemble(u64::from(LONG_ENTRY)).unwrap()
    }
}
