//! A guest that ticks: it routes the PIT's IRQ0 through the I/O APIC to
//! vector 0x30 at 100 Hz, runs its local APIC's timer periodically at
//! vector 0x40, masks the 8259As, and waits in HLT; every 25 PIT ticks it
//! prints `T:pit`, every 5 APIC timer ticks `T:apic`. The ticks stop for
//! good if any part of that set-up is lost: a reset I/O APIC masks its
//! pins, a reset local APIC masks its timer, a reset PIT counts nothing.

use iced_x86::code_asm::*;

use super::pm32::{self, var, Kernel};

const IOAPIC: u32 = 0xfec0_0000;
const LAPIC: u32 = 0xfee0_0000;
const PIT_VECTOR: u8 = 0x30;
const APIC_VECTOR: u8 = 0x40;

/// The guest, and where its code is.
pub struct Ticker {
    /// The multiboot image.
    pub image: Vec<u8>,
    /// The PIT interrupt's handler.
    #[allow(dead_code, reason = "not every suite stops the guest there")]
    pub pit_handler: u64,
}

/// The ticking guest described above.
pub fn ticker() -> Ticker {
    let mut k = Kernel::new("ticker");
    // The handlers: count, EOI to the local APIC, return.
    let mut pit = k.label();
    let mut apic = k.label();
    let mut spurious = k.label();
    let mut main = k.a.create_label();
    k.a.jmp(main).unwrap();
    for (l, counter) in [(&mut pit, 0), (&mut apic, 1)] {
        k.place(l).unwrap();
        k.a.inc(var(counter)).unwrap();
        k.a.mov(dword_ptr(LAPIC + 0xb0), 0u32).unwrap();
        k.a.iretd().unwrap();
    }
    k.place(&mut spurious).unwrap();
    k.a.iretd().unwrap();
    k.a.set_label(&mut main).unwrap();
    k.gate(PIT_VECTOR, pit, 0xe, 0, pm32::KCODE).unwrap();
    k.gate(APIC_VECTOR, apic, 0xe, 0, pm32::KCODE).unwrap();
    k.gate(0xff, spurious, 0xe, 0, pm32::KCODE).unwrap();
    let a = &mut k.a;
    // Both 8259As masked: IRQ0 goes through the I/O APIC only.
    a.mov(al, 0xffu32).unwrap();
    a.out(0xa1u32, al).unwrap();
    a.out(0x21u32, al).unwrap();
    // The local APIC on (spurious vector 0xff), its timer periodic at
    // vector 0x40, divide by 1, 20 ms at the APIC's 1 GHz.
    a.mov(dword_ptr(LAPIC + 0xf0), 0x1ffu32).unwrap();
    a.mov(dword_ptr(LAPIC + 0x3e0), 0xbu32).unwrap();
    a.mov(dword_ptr(LAPIC + 0x320), u32::from(APIC_VECTOR) | (1 << 17)).unwrap();
    a.mov(dword_ptr(LAPIC + 0x380), 20_000_000u32).unwrap();
    // I/O APIC pin 2 (IRQ0): fixed, edge, to APIC 0, vector 0x30.
    a.mov(dword_ptr(IOAPIC), 0x15u32).unwrap();
    a.mov(dword_ptr(IOAPIC + 0x10), 0u32).unwrap();
    a.mov(dword_ptr(IOAPIC), 0x14u32).unwrap();
    a.mov(dword_ptr(IOAPIC + 0x10), u32::from(PIT_VECTOR)).unwrap();
    // PIT counter 0: rate generator at 100 Hz.
    a.mov(al, 0x34u32).unwrap();
    a.out(0x43u32, al).unwrap();
    a.mov(al, (11932 & 0xff) as u32).unwrap();
    a.out(0x40u32, al).unwrap();
    a.mov(al, (11932 >> 8) as u32).unwrap();
    a.out(0x40u32, al).unwrap();
    // var(2), var(3): the next counts to report at.
    a.mov(var(2), 25u32).unwrap();
    a.mov(var(3), 5u32).unwrap();
    a.sti().unwrap();
    let mut idle = a.create_label();
    let mut apic_check = a.create_label();
    a.set_label(&mut idle).unwrap();
    a.hlt().unwrap();
    a.mov(eax, var(0)).unwrap();
    a.cmp(eax, var(2)).unwrap();
    a.jb(apic_check).unwrap();
    a.add(var(2), 25u32).unwrap();
    k.print("T:pit\n").unwrap();
    let a = &mut k.a;
    a.set_label(&mut apic_check).unwrap();
    a.mov(eax, var(1)).unwrap();
    a.cmp(eax, var(3)).unwrap();
    a.jb(idle).unwrap();
    a.add(var(3), 5u32).unwrap();
    k.print("T:apic\n").unwrap();
    k.a.jmp(idle).unwrap();
    let (image, at) = k.build_with_labels(&[pit.at]);
    Ticker { image, pit_handler: at[0] }
}
