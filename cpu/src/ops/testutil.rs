//! Test scaffolding: a CPU over 16 MiB of RAM in real, protected, long or
//! virtual-8086 mode, with a GDT, an IDT whose vectors lead to distinct stub
//! addresses, a TSS with an I/O bitmap, identity paging in long mode, and
//! helpers that run one instruction either through its handler (returning the
//! raw `Fault`) or through `Cpu::step` (with delivery).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use iced_x86::code_asm::CodeAssembler;
use iced_x86::{Decoder, DecoderOptions, IcedError};
use mmu::GuestMemory;

use crate::cpu::{Cpu, Platform};
use crate::exception::Fault;
use crate::segment::Descriptor;
use crate::state::{cr, flags, seg_attr, sreg, CpuState, DescTable, Segment};

pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const STUBS: u64 = 0x3000;
pub const TSS: u64 = 0x4000;
pub const IOMAP: u64 = 0x68;
pub const PML4: u64 = 0x8000;
pub const PT: u64 = 0xb000;
pub const CODE: u64 = 0x10000;
pub const DATA: u64 = 0x20000;
pub const KSTACK: u64 = 0x70000;
pub const USTACK: u64 = 0x78000;
/// In long mode: a not-present page, a read-only page, a supervisor page.
pub const UNMAPPED: u64 = 0x50000;
pub const READONLY: u64 = 0x51000;
pub const SUPERVISOR: u64 = 0x52000;

pub const SEL_CODE64: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_UCODE32: u16 = 0x18 | 3;
pub const SEL_UDATA: u16 = 0x20 | 3;
pub const SEL_UCODE64: u16 = 0x28 | 3;
pub const SEL_CODE32: u16 = 0x30;
pub const SEL_CODE16: u16 = 0x38;
pub const SEL_TSS: u16 = 0x40;

/// Address of the stub the IDT sends vector `v` to.
pub fn stub(v: u8) -> u64 {
    STUBS + u64::from(v) * 16
}

/// Port I/O log: (port, size, value, is_write).
pub type IoLog = Arc<Mutex<Vec<(u16, u8, u32, bool)>>>;

/// A pending external interrupt vector (INTR), shared with the test.
pub type IrqLine = Arc<Mutex<Option<u8>>>;

pub struct TestPlatform {
    pub log: IoLog,
    pub irq: IrqLine,
}

impl Platform for TestPlatform {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.log.lock().unwrap().push((port, size, 0, false));
        0x1234_5678 & ((1u64 << (size * 8)) - 1) as u32
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.log.lock().unwrap().push((port, size, value, true));
    }
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {}
    fn interrupt_pending(&mut self) -> bool {
        self.irq.lock().unwrap().is_some()
    }
    fn ack_interrupt(&mut self) -> Option<u8> {
        self.irq.lock().unwrap().take()
    }
}

/// A bare CPU after reset over 16 MiB of RAM, and its I/O log.
pub fn new_cpu() -> (Cpu, IoLog) {
    let (cpu, log, _) = new_cpu_with_irq();
    (cpu, log)
}

/// A bare CPU, its I/O log and its interrupt line.
pub fn new_cpu_with_irq() -> (Cpu, IoLog, IrqLine) {
    let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
    let log: IoLog = Arc::new(Mutex::new(Vec::new()));
    let irq: IrqLine = Arc::new(Mutex::new(None));
    let cpu = Cpu::new(mem, Box::new(TestPlatform { log: log.clone(), irq: irq.clone() }));
    (cpu, log, irq)
}

/// A code or data descriptor.
pub fn seg_desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (u64::from(flags & 0xf) << 52)
        | ((base >> 24) << 56)
}

/// A legacy gate (call, interrupt, trap, task): `typ` is the 4-bit type.
pub fn gate(sel: u16, off: u32, typ: u8, dpl: u8, params: u8) -> u64 {
    let off = u64::from(off);
    (off & 0xffff)
        | (u64::from(sel) << 16)
        | (u64::from(params & 0x1f) << 32)
        | (u64::from(0x80 | (dpl << 5) | typ) << 40)
        | ((off >> 16) << 48)
}

/// A 16-byte long-mode gate.
pub fn gate64(sel: u16, off: u64, typ: u8, dpl: u8, ist: u8) -> (u64, u64) {
    let lo = (off & 0xffff)
        | (u64::from(sel) << 16)
        | (u64::from(ist) << 32)
        | (u64::from(0x80 | (dpl << 5) | typ) << 40)
        | (((off >> 16) & 0xffff) << 48);
    (lo, off >> 32)
}

pub fn set_gdt(c: &Cpu, index: u64, raw: u64) {
    c.mem().write_u64(GDT + index * 8, raw).unwrap();
}

/// Load a segment register's cache from the GDT entry of `sel`.
pub fn load_cache(c: &mut Cpu, seg: usize, sel: u16) {
    let raw = c.mem().read_u64(GDT + u64::from(sel & !7)).unwrap();
    let d = Descriptor { raw, raw_hi: 0 };
    c.state.seg[seg] = d.to_segment(sel);
}

fn common_tables(c: &mut Cpu) {
    let m = c.mem().clone();
    set_gdt(c, 1, 0x00af_9b00_0000_ffff);
    set_gdt(c, 2, 0x00cf_9300_0000_ffff);
    set_gdt(c, 3, 0x00cf_fb00_0000_ffff);
    set_gdt(c, 4, 0x00cf_f300_0000_ffff);
    set_gdt(c, 5, 0x00af_fb00_0000_ffff);
    set_gdt(c, 6, 0x00cf_9b00_0000_ffff);
    set_gdt(c, 7, 0x000f_9b00_0000_ffff);
    c.state.gdtr = DescTable { base: GDT, limit: 0xff, _pad: 0 };
    // TSS: ring-0 stack, I/O bitmap denying every port.
    m.fill(TSS, 0x68, 0).unwrap();
    m.fill(TSS + IOMAP, 0x2001, 0xff).unwrap();
    m.write_u16(TSS + 0x66, IOMAP as u16).unwrap();
    // Stubs: HLT everywhere.
    m.fill(STUBS, 256 * 16, 0xf4).unwrap();
}

/// Let port I/O to `port` through the TSS bitmap.
pub fn allow_port(c: &Cpu, port: u16) {
    let a = TSS + IOMAP + u64::from(port / 8);
    let b = c.mem().read_u8(a).unwrap() & !(1 << (port % 8));
    c.mem().write_u8(a, b).unwrap();
}

/// Flat 32-bit protected mode at CPL 0, no paging, with an IDT of
/// interrupt gates (DPL 3) to the stubs and a 32-bit TSS.
pub fn prot_mode() -> Cpu {
    let (mut c, _) = new_cpu();
    prot_setup(&mut c);
    c
}

pub fn prot_setup(c: &mut Cpu) {
    common_tables(c);
    let m = c.mem().clone();
    for v in 0..256u64 {
        m.write_u64(IDT + v * 8, gate(SEL_CODE32, stub(v as u8) as u32, 0xe, 3, 0)).unwrap();
    }
    m.write_u32(TSS + 4, KSTACK as u32).unwrap();
    m.write_u32(TSS + 8, u32::from(SEL_DATA)).unwrap();
    set_gdt(c, 8, seg_desc(TSS as u32, (IOMAP + 0x2000) as u32, 0x8b, 0));
    c.state.idtr = DescTable { base: IDT, limit: 0x7ff, _pad: 0 };
    c.state.cr0 = cr::CR0_PE | cr::CR0_ET | cr::CR0_NE;
    load_cache(c, sreg::CS, SEL_CODE32);
    for s in [sreg::SS, sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
        load_cache(c, s, SEL_DATA);
    }
    let d = Descriptor { raw: c.mem().read_u64(GDT + 0x40).unwrap(), raw_hi: 0 };
    c.state.tr = d.to_segment(SEL_TSS);
    c.state.ldtr = Segment { attr: seg_attr::UNUSABLE, ..Default::default() };
    c.state.cpl = 0;
    c.state.rip = CODE;
    c.state.gpr[4] = KSTACK;
    c.state.rflags = flags::FIXED;
    c.state.lazy.op = 0;
    c.set_state(c.state);
}

/// 64-bit long mode at CPL 0 with identity paging of the first 16 MiB (4 KiB
/// pages below 2 MiB, with [`UNMAPPED`], [`READONLY`] and [`SUPERVISOR`]).
pub fn long_mode() -> Cpu {
    let (mut c, _) = new_cpu();
    long_setup(&mut c);
    c
}

pub fn long_setup(c: &mut Cpu) {
    common_tables(c);
    let m = c.mem().clone();
    m.write_u64(PML4, (PML4 + 0x1000) | 7).unwrap();
    m.write_u64(PML4 + 0x1000, (PML4 + 0x2000) | 7).unwrap();
    m.write_u64(PML4 + 0x2000, PT | 7).unwrap();
    for i in 1..8u64 {
        m.write_u64(PML4 + 0x2000 + i * 8, (i << 21) | 0x87).unwrap();
    }
    for i in 0..512u64 {
        let a = i << 12;
        let e = match a {
            UNMAPPED => 0,
            READONLY => a | 5,
            SUPERVISOR => a | 3,
            _ => a | 7,
        };
        m.write_u64(PT + i * 8, e).unwrap();
    }
    for v in 0..256u64 {
        let (lo, hi) = gate64(SEL_CODE64, stub(v as u8), 0xe, 3, 0);
        m.write_u64(IDT + v * 16, lo).unwrap();
        m.write_u64(IDT + v * 16 + 8, hi).unwrap();
    }
    m.write_u64(TSS + 4, KSTACK).unwrap();
    set_gdt(c, 8, seg_desc(TSS as u32, (IOMAP + 0x2000) as u32, 0x8b, 0));
    set_gdt(c, 9, 0);
    c.state.idtr = DescTable { base: IDT, limit: 0xfff, _pad: 0 };
    c.state.cr0 = cr::CR0_PE | cr::CR0_ET | cr::CR0_NE | cr::CR0_PG | cr::CR0_WP;
    c.state.cr4 = cr::CR4_PAE;
    c.state.cr3 = PML4;
    c.state.efer = cr::EFER_LME | cr::EFER_LMA | cr::EFER_NXE | cr::EFER_SCE;
    load_cache(c, sreg::CS, SEL_CODE64);
    for s in [sreg::SS, sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
        load_cache(c, s, SEL_DATA);
    }
    let d = Descriptor { raw: c.mem().read_u64(GDT + 0x40).unwrap(), raw_hi: 0 };
    c.state.tr = d.to_segment(SEL_TSS);
    c.state.ldtr = Segment { attr: seg_attr::UNUSABLE, ..Default::default() };
    c.state.cpl = 0;
    c.state.rip = CODE;
    c.state.gpr[4] = KSTACK;
    c.state.rflags = flags::FIXED;
    c.state.lazy.op = 0;
    c.set_state(c.state);
}

/// Real mode with CS:IP = 1000:0000 (linear [`CODE`]), data segments at 0.
pub fn real_mode() -> Cpu {
    let (mut c, _) = new_cpu();
    let mut s = CpuState::reset();
    s.cr0 = cr::CR0_ET;
    s.seg[sreg::CS] = Segment::real(
        0x1000,
        seg_attr::P | seg_attr::S | seg_attr::TYPE_CODE | seg_attr::TYPE_RW | seg_attr::TYPE_ACCESSED,
    );
    s.rip = 0;
    s.gpr = [0; 16];
    s.gpr[4] = 0x8000;
    s.idtr = DescTable { base: 0, limit: 0x3ff, _pad: 0 };
    c.set_state(s);
    c
}

/// Switch a protected-mode CPU to CPL 3 with the flat user segments.
pub fn to_user(c: &mut Cpu, code: u16) {
    load_cache(c, sreg::CS, code);
    for s in [sreg::SS, sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
        load_cache(c, s, SEL_UDATA);
    }
    c.state.cpl = 3;
    c.state.gpr[4] = USTACK;
}

/// Virtual-8086 mode (from `prot_mode`) with CS:IP = 1000:0000 and SS:SP = 0000:8000.
pub fn v86_mode(iopl: u64) -> Cpu {
    let mut c = prot_mode();
    c.state.rflags = flags::FIXED | flags::VM | (iopl << flags::IOPL_SHIFT);
    c.state.cpl = 3;
    for s in 0..6 {
        c.load_real_segment(s, 0);
    }
    c.load_real_segment(sreg::CS, 0x1000);
    c.state.rip = 0;
    c.state.gpr[4] = 0x8000;
    c
}

/// Linear address of CS:RIP.
pub fn rip_lin(c: &Cpu) -> u64 {
    let cs = &c.state.seg[sreg::CS];
    if c.state.code64() {
        c.state.rip
    } else {
        (cs.base + c.state.rip) & 0xffff_ffff
    }
}

/// Assemble at CS:RIP in the current code size.
pub fn assemble(c: &Cpu, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(c.state.code_bits()).unwrap();
    f(&mut a).unwrap();
    a.assemble(c.state.rip).unwrap()
}

/// Place code at CS:RIP (identity mapping assumed).
pub fn place(c: &mut Cpu, bytes: &[u8]) {
    let lin = rip_lin(c);
    c.mem().write(lin, bytes).unwrap();
    c.flush_code_cache();
}

/// Run the first instruction of `bytes` at CS:RIP through its handler, without
/// delivering a fault: on a fault RIP is rewound and the fault returned. When
/// the instruction falls through, RIP is put back, so tests can run
/// instruction after instruction; a branch leaves RIP at its target.
pub fn exec_bytes(c: &mut Cpu, bytes: &[u8]) -> Fault<()> {
    let mut d = Decoder::with_ip(c.state.code_bits(), bytes, c.state.rip, DecoderOptions::NONE);
    let insn = d.decode();
    let start = c.state.rip;
    c.insn_start = start;
    let next = insn.next_ip();
    let next = match c.state.code_bits() {
        16 => next & 0xffff,
        32 => next & 0xffff_ffff,
        _ => next,
    };
    c.state.rip = next;
    let h = crate::ops::select(&insn);
    let r = h(c, &insn);
    match r {
        Err(e) if !e.is_trap() => c.state.rip = c.insn_start,
        Ok(()) if c.state.rip == next => c.state.rip = start,
        _ => {}
    }
    r
}

/// Assemble one instruction and run it with [`exec_bytes`].
pub fn exec_asm(c: &mut Cpu, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Fault<()> {
    let bytes = assemble(c, f);
    exec_bytes(c, &bytes)
}

/// Place `bytes` at CS:RIP and execute one instruction with `Cpu::step`.
pub fn step_bytes(c: &mut Cpu, bytes: &[u8]) -> crate::cpu::StopReason {
    place(c, bytes);
    c.step()
}

/// The error code on top of the handler's stack (after delivery with one).
pub fn error_code(c: &mut Cpu, size: u32) -> u64 {
    c.read_mem(sreg::SS, c.state.gpr[4], size).unwrap()
}

/// A xorshift64 generator for randomised tests: the same sequence from the
/// same nonzero seed.
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
