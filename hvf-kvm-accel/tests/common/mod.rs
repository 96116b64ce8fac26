//! What the KVM tests share: a 64-bit guest with page tables, a GDT, a TSS
//! and an IDT whose handlers report their vector, entered directly through
//! the state bridge, and an I/O interface ([`cpu::Platform`]) that records port writes.

#![allow(dead_code)]

use std::sync::Arc;

use cpu::state::{cr, flags, reg, seg_attr, sreg, CpuState, DescTable, Segment};
use hvf_kvm_accel::kvm::{Kvm, KvmVcpu, KvmVm};
use hvf_kvm_accel::{EventFd, IrqChip, Platform, Vcpu, Vm};
use iced_x86::code_asm::*;
use mmu::GuestMemory;

pub const RAM: u64 = 8 << 20;
pub const GDT: u64 = 0x500;
pub const IDT: u64 = 0x1000;
pub const PML4: u64 = 0x2000;
pub const PDPT: u64 = 0x3000;
pub const PD: u64 = 0x4000;
pub const TSS: u64 = 0x5000;
/// Interrupt handlers, 32 bytes each, indexed by vector.
pub const HANDLERS: u64 = 0x8000;
pub const KERNEL_STACK: u64 = 0x7000;
pub const CODE: u64 = 0x10000;
pub const USER_STACK: u64 = 0x30000;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
pub const TSS_SEL: u16 = 0x28;

/// Port the guest writes results to.
pub const PORT_RESULT: u16 = 0x80;
/// A write here ends the run (`should_stop`).
pub const PORT_STOP: u16 = 0x81;
/// Interrupt handlers write their vector here.
pub const PORT_VECTOR: u16 = 0x83;

pub fn open_kvm() -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("skipping: KVM is not usable here: {e}");
            None
        }
    }
}

/// Records port and MMIO writes; a write to [`PORT_STOP`] stops the run,
/// and so does one to `pause_at` (the test acts, clears `stop` and runs
/// again). A write to a port in `triggers` also signals its eventfd.
#[derive(Default)]
pub struct Io {
    pub writes: Vec<(u16, u32)>,
    pub mmio_writes: Vec<(u64, Vec<u8>)>,
    pub stop: bool,
    pub exits: u64,
    pub triggers: Vec<(u16, EventFd)>,
    pub pause_at: Option<u16>,
}

impl Io {
    pub fn on(&self, port: u16) -> Vec<u32> {
        self.writes.iter().filter(|(p, _)| *p == port).map(|(_, v)| *v).collect()
    }
}

impl Platform for Io {
    fn io_read(&mut self, _port: u16, size: u8) -> u32 {
        self.exits += 1;
        u32::MAX >> (32 - 8 * u32::from(size.clamp(1, 4)))
    }
    fn io_write(&mut self, port: u16, _size: u8, value: u32) {
        self.exits += 1;
        self.writes.push((port, value));
        for (p, fd) in &self.triggers {
            if *p == port {
                fd.write(1).unwrap();
            }
        }
        if port == PORT_STOP || Some(port) == self.pause_at {
            self.stop = true;
        }
    }
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        self.exits += 1;
        data.fill(0xff);
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.exits += 1;
        self.mmio_writes.push((addr, data.to_vec()));
    }
    fn stop_requested(&self) -> bool {
        self.stop
    }
}

pub fn gdt_entry(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (base, limit) = (u64::from(base), u64::from(limit));
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (u64::from(flags & 0xf) << 52)
        | ((base >> 24) << 56)
}

/// Page tables, GDT, TSS and IDT for a 64-bit guest.
pub fn write_system_tables(mem: &GuestMemory) {
    // Identity map of the first GiB (RAM and MMIO space above it) with
    // 2 MiB pages, user-accessible.
    mem.write_u64(PML4, PDPT | 0x7).unwrap();
    mem.write_u64(PDPT, PD | 0x7).unwrap();
    for i in 0..512 {
        mem.write_u64(PD + i * 8, (i << 21) | 0x87).unwrap();
    }
    let gdt = [
        0,
        gdt_entry(0, 0xfffff, 0x9b, 0xa),     // 0x08 kernel code, L=1
        gdt_entry(0, 0xfffff, 0x93, 0xc),     // 0x10 kernel data
        gdt_entry(0, 0xfffff, 0xf3, 0xc),     // 0x18 user data
        gdt_entry(0, 0xfffff, 0xfb, 0xa),     // 0x20 user code, L=1
        gdt_entry(TSS as u32, 0x67, 0x89, 0), // 0x28 TSS (64-bit, available)
        0,                                    // TSS base 63:32
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_u64(GDT + 8 * i as u64, *e).unwrap();
    }
    // TSS.RSP0: the stack for interrupts from ring 3.
    mem.write_u64(TSS + 4, KERNEL_STACK).unwrap();
    // IDT: every vector goes to its handler, which reports the vector on
    // PORT_VECTOR. Exceptions with an error code drop it.
    // Gates are DPL3 so `int n` from ring 3 is allowed.
    for vec in 0..256u64 {
        let handler = HANDLERS + vec * 32;
        let lo =
            (handler & 0xffff) | (u64::from(KERNEL_CS) << 16) | (0xee00u64 << 32) | ((handler >> 16) & 0xffff) << 48;
        mem.write_u64(IDT + vec * 16, lo).unwrap();
        mem.write_u64(IDT + vec * 16 + 8, handler >> 32).unwrap();
        let has_error_code = matches!(vec, 8 | 10..=14 | 17);
        let mut a = CodeAssembler::new(64).unwrap();
        if has_error_code {
            a.add(rsp, 8).unwrap();
        }
        a.mov(al, vec as u32).unwrap();
        a.out(PORT_VECTOR as u32, al).unwrap();
        if vec < 32 && vec != 3 {
            // An exception other than the #BP trap would return to the
            // faulting instruction: stop instead.
            a.out(PORT_STOP as u32, al).unwrap();
            let mut here = a.create_label();
            a.set_label(&mut here).unwrap();
            a.jmp(here).unwrap();
        }
        a.iretq().unwrap();
        let bytes = a.assemble(handler).unwrap();
        assert!(bytes.len() <= 32);
        mem.write(handler, &bytes).unwrap();
    }
}

/// A 64-bit state at `rip` with ring `cpl` (0 or 3) segments.
pub fn long_mode_state(rip: u64, cpl: u8) -> CpuState {
    use seg_attr::*;
    let mut s = CpuState::reset();
    let dpl = u32::from(cpl) << DPL_SHIFT;
    let (cs_sel, ds_sel, stack) =
        if cpl == 3 { (USER_CS, USER_DS, USER_STACK) } else { (KERNEL_CS, KERNEL_DS, KERNEL_STACK) };
    let data = Segment {
        base: 0,
        limit: 0xffff_ffff,
        attr: P | S | TYPE_RW | TYPE_ACCESSED | DB | G | dpl,
        selector: ds_sel,
        _pad: [0; 3],
    };
    s.seg = [data; 6];
    s.seg[sreg::CS] = Segment {
        base: 0,
        limit: 0xffff_ffff,
        attr: P | S | TYPE_CODE | TYPE_RW | TYPE_ACCESSED | L | G | dpl,
        selector: cs_sel,
        _pad: [0; 3],
    };
    s.tr = Segment { base: TSS, limit: 0x67, attr: P | 11, selector: TSS_SEL, _pad: [0; 3] };
    s.ldtr = Segment { base: 0, limit: 0, attr: UNUSABLE, selector: 0, _pad: [0; 3] };
    s.gdtr = DescTable { base: GDT, limit: 7 * 8 - 1, _pad: 0 };
    s.idtr = DescTable { base: IDT, limit: 256 * 16 - 1, _pad: 0 };
    s.cr0 = cr::CR0_PE | cr::CR0_MP | cr::CR0_ET | cr::CR0_NE | cr::CR0_WP | cr::CR0_PG;
    s.cr3 = PML4;
    s.cr4 = cr::CR4_PAE | cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT;
    s.efer = cr::EFER_SCE | cr::EFER_LME | cr::EFER_LMA;
    // IOPL 3 so ring-3 code may use `out`.
    s.rflags = flags::FIXED | flags::IOPL;
    s.rip = rip;
    s.gpr[reg::RSP] = stack;
    s.cpl = cpl;
    s
}

pub struct Guest {
    pub vm: KvmVm,
    pub vcpu: KvmVcpu,
}

/// A VM with the system tables, `code` at [`CODE`], entered at `cpl`.
/// Userspace irqchip, so HLT comes back to us.
pub fn guest(kvm: &mut Kvm, code: &[u8], cpl: u8) -> Option<Guest> {
    guest_with(kvm, code, cpl, false)
}

pub fn guest_with(kvm: &mut Kvm, code: &[u8], cpl: u8, in_kernel_irqchip: bool) -> Option<Guest> {
    let mem = GuestMemory::new(RAM).unwrap();
    write_system_tables(&mem);
    mem.write(CODE, code).unwrap();
    kvm.set_in_kernel_irqchip(in_kernel_irqchip);
    let vm = match kvm.create_kvm_vm(Arc::new(mem)) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("skipping: KVM cannot create a VM here: {e}");
            return None;
        }
    };
    if !in_kernel_irqchip {
        assert_eq!(vm.irqchip(), IrqChip::Userspace);
        assert!(vm.set_irq_line(4, true).is_err(), "no in-kernel PIC to drive");
    }
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    vcpu.set_state(&long_mode_state(CODE, cpl)).unwrap();
    Some(Guest { vm, vcpu })
}

pub fn asm(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}
