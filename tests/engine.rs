//! The machine's one run loop under each engine: what the loop owns
//! (resets, timers) behaves the same whichever engine runs the guest.

use std::path::PathBuf;

use iced_x86::code_asm::*;

#[path = "guest/run.rs"]
mod run;
fn tmp(name: &str) -> PathBuf {
    run::tmp("engine", name)
}
use run::ferrovm;
use run::kvm_usable;

#[path = "guest/multiboot.rs"]
mod multiboot;
use multiboot::{multiboot_elf, print32, CODE_OFF, LOAD};

/// Where the reset ROM keeps its "second boot" marker (RAM keeps it across
/// a reset).
const MARKER: u32 = 0x600;

/// A 64 KiB firmware ROM (real mode, from the reset vector). On its first
/// boot, when `program` is set, it masks the master PIC's IRQs with 0x5a,
/// starts the PIT's channel 0 in mode 2, and resets the machine through
/// port 0xCF9. Then (or at once without `program`) it sends 'R', the PIC
/// mask register and the PIT channel 0's status byte (less its OUT and
/// null-count bits) to COM1, and exits through debug-exit with 0x10.
fn reset_rom(program: bool) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut report = a.create_label();
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    if program {
        a.cmp(word_ptr(MARKER), 0x1234u32).unwrap();
        a.je(report).unwrap();
        a.mov(word_ptr(MARKER), 0x1234u32).unwrap();
        a.mov(al, 0x5au32).unwrap();
        a.out(0x21u32, al).unwrap();
        a.mov(al, 0x34u32).unwrap();
        a.out(0x43u32, al).unwrap();
        a.mov(al, 0x00u32).unwrap();
        a.out(0x40u32, al).unwrap();
        a.mov(al, 0x10u32).unwrap();
        a.out(0x40u32, al).unwrap();
        a.mov(dx, 0xcf9u32).unwrap();
        a.mov(al, 0x06u32).unwrap();
        a.out(dx, al).unwrap();
        let mut spin = a.create_label();
        a.set_label(&mut spin).unwrap();
        a.hlt().unwrap();
        a.jmp(spin).unwrap();
    }
    a.set_label(&mut report).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    a.mov(al, u32::from(b'R')).unwrap();
    a.out(dx, al).unwrap();
    a.in_(al, 0x21u32).unwrap();
    a.out(dx, al).unwrap();
    // Read-back command: channel 0's status only.
    a.mov(al, 0xe2u32).unwrap();
    a.out(0x43u32, al).unwrap();
    a.in_(al, 0x40u32).unwrap();
    a.and(al, 0x3fu32).unwrap();
    a.out(dx, al).unwrap();
    a.mov(al, 0x10u32).unwrap();
    a.out(0xf4u32, al).unwrap();
    let mut stop = a.create_label();
    a.set_label(&mut stop).unwrap();
    a.hlt().unwrap();
    a.jmp(stop).unwrap();
    let code = a.assemble(0).unwrap();
    let mut rom = vec![0xf4u8; 0x1_0000];
    rom[..code.len()].copy_from_slice(&code);
    // The reset vector (CS base 0xffff0000, IP 0xfff0): a near jump to IP
    // 0, whose 16-bit displacement wraps around the segment.
    let rel = 0u16.wrapping_sub(0xfff3);
    rom[0xfff0..0xfff3].copy_from_slice(&[0xe9, rel as u8, (rel >> 8) as u8]);
    rom
}

/// The three bytes the reset ROM reports, and its exit status.
fn run_reset_rom(accel: &str, program: bool) -> (Vec<u8>, Option<i32>) {
    let path = tmp(&format!("reset-{accel}-{program}.rom"));
    std::fs::write(&path, reset_rom(program)).unwrap();
    let o =
        ferrovm(&["run", "--accel", accel, "--bios", path.to_str().unwrap(), "--serial", "stdio", "--timeout", "60"]);
    let at = o.stdout.iter().position(|&b| b == b'R');
    assert!(
        at.is_some_and(|i| o.stdout.len() >= i + 3),
        "no report from the ROM under {accel}: stdout {:02x?}, stderr {}",
        o.stdout,
        String::from_utf8_lossy(&o.stderr)
    );
    let i = at.unwrap();
    (o.stdout[i..i + 3].to_vec(), o.status.code())
}

/// A reset reaches every interrupt controller and timer the engine keeps:
/// after the guest programmed the PIC and the PIT and reset the machine,
/// it reads them back as a fresh machine has them.
fn reset_resets_the_pic_and_the_pit(accel: &str) {
    let (fresh, status) = run_reset_rom(accel, false);
    assert_eq!(status, Some(0x21));
    let (after, status) = run_reset_rom(accel, true);
    assert_eq!(status, Some(0x21));
    assert_eq!(after, fresh, "[R, PIC mask, PIT status] after a reset under {accel}, and on a fresh machine");
}

#[test]
fn a_reset_resets_the_pic_and_the_pit_in_the_interpreter() {
    reset_resets_the_pic_and_the_pit("interp");
}

#[test]
fn a_reset_resets_the_pic_and_the_pit_under_kvm() {
    if kvm_usable() {
        reset_resets_the_pic_and_the_pit("kvm");
    }
}

/// Where the timer kernel counts its ticks.
const TICKS: u32 = 0x6000;
/// Where it builds its IDT (0x30 gates).
const IDT: u32 = 0x7000;

/// A multiboot kernel that takes 10 PIT interrupts through the PIC (in
/// virtual-wire mode through the local APIC's LINT0), waiting with HLT,
/// then prints a line and exits with 0x10 (status 0x21).
fn pit_kernel() -> Vec<u8> {
    // The handlers sit at fixed addresses after the main code.
    const TICK: u32 = LOAD + 0x800;
    const IGNORE: u32 = LOAD + 0x840;
    const IDTR: u32 = 0x7f00;
    let mut a = CodeAssembler::new(32).unwrap();
    a.cli().unwrap();
    a.mov(dword_ptr(TICKS), 0u32).unwrap();
    // Gates 0..0x30 to IGNORE, 0x20 to TICK, with this code segment.
    a.xor(ecx, ecx).unwrap();
    let mut fill = a.create_label();
    a.set_label(&mut fill).unwrap();
    a.mov(eax, IGNORE).unwrap();
    a.cmp(ecx, 0x20u32).unwrap();
    let mut not_timer = a.create_label();
    a.jne(not_timer).unwrap();
    a.mov(eax, TICK).unwrap();
    a.set_label(&mut not_timer).unwrap();
    a.mov(word_ptr(ecx * 8 + IDT), ax).unwrap();
    a.mov(bx, cs).unwrap();
    a.mov(word_ptr(ecx * 8 + IDT + 2), bx).unwrap();
    a.mov(word_ptr(ecx * 8 + IDT + 4), 0x8e00u32).unwrap();
    a.shr(eax, 16u32).unwrap();
    a.mov(word_ptr(ecx * 8 + IDT + 6), ax).unwrap();
    a.inc(ecx).unwrap();
    a.cmp(ecx, 0x30u32).unwrap();
    a.jb(fill).unwrap();
    a.mov(word_ptr(IDTR), 0x30 * 8 - 1).unwrap();
    a.mov(dword_ptr(IDTR + 2), IDT).unwrap();
    a.lidt(ptr(IDTR)).unwrap();
    // The 8259A pair: vectors 0x20 and 0x28, only IRQ 0 unmasked.
    for (port, value) in [(0x20u32, 0x11u32), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfe)] {
        a.mov(al, value).unwrap();
        a.out(port, al).unwrap();
    }
    for (port, value) in [(0xa0u32, 0x11u32), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01), (0xa1, 0xff)] {
        a.mov(al, value).unwrap();
        a.out(port, al).unwrap();
    }
    // The local APIC on, LINT0 as ExtINT: the PIC's INTR reaches the CPU.
    a.mov(eax, dword_ptr(0xfee0_00f0u32)).unwrap();
    a.or(eax, 0x1ffu32).unwrap();
    a.mov(dword_ptr(0xfee0_00f0u32), eax).unwrap();
    a.mov(dword_ptr(0xfee0_0350u32), 0x700u32).unwrap();
    // PIT channel 0, mode 2, about 1 kHz.
    a.mov(al, 0x34u32).unwrap();
    a.out(0x43u32, al).unwrap();
    a.mov(al, 1193u32 & 0xff).unwrap();
    a.out(0x40u32, al).unwrap();
    a.mov(al, 1193u32 >> 8).unwrap();
    a.out(0x40u32, al).unwrap();
    a.sti().unwrap();
    let mut wait = a.create_label();
    a.set_label(&mut wait).unwrap();
    a.hlt().unwrap();
    a.cmp(dword_ptr(TICKS), 10u32).unwrap();
    a.jb(wait).unwrap();
    a.cli().unwrap();
    print32(&mut a, "pit: 10 ticks\n").unwrap();
    a.mov(al, 0x10u32).unwrap();
    a.out(0xf4u32, al).unwrap();
    a.hlt().unwrap();
    let mut code = a.assemble(u64::from(LOAD + CODE_OFF)).unwrap();
    assert!(code.len() <= (TICK - LOAD - CODE_OFF) as usize, "the main code overlaps the handlers");
    code.resize((TICK - LOAD - CODE_OFF) as usize, 0xf4);
    let mut t = CodeAssembler::new(32).unwrap();
    t.push(eax).unwrap();
    t.inc(dword_ptr(TICKS)).unwrap();
    t.mov(al, 0x20u32).unwrap();
    t.out(0x20u32, al).unwrap();
    t.pop(eax).unwrap();
    t.iretd().unwrap();
    code.extend(t.assemble(u64::from(TICK)).unwrap());
    code.resize((IGNORE - LOAD - CODE_OFF) as usize, 0xf4);
    let mut i = CodeAssembler::new(32).unwrap();
    i.iretd().unwrap();
    code.extend(i.assemble(u64::from(IGNORE)).unwrap());
    multiboot_elf(&code)
}

fn pit_ticks(args: &[&str]) {
    let path = tmp(&format!("pit-{}.elf", args.join("-")));
    std::fs::write(&path, pit_kernel()).unwrap();
    let mut all = vec!["run", "--kernel", path.to_str().unwrap(), "--serial", "stdio", "--timeout", "60"];
    all.extend_from_slice(args);
    let o = ferrovm(&all);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("pit: 10 ticks"), "stdout: {out}\nstderr: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0x21));
}

#[test]
fn the_pit_ticks_in_the_interpreter() {
    pit_ticks(&["--accel", "interp"]);
}

/// With KVM's interrupt controllers but the machine's own PIT, the run
/// loop polls the PIT (the engine is kicked out of KVM at its deadlines).
#[test]
fn a_userspace_pit_ticks_under_kvm() {
    if kvm_usable() {
        pit_ticks(&["--accel", "kvm", "--kvm-pit", "user"]);
    }
}

#[test]
fn the_in_kernel_pit_ticks_under_kvm() {
    if kvm_usable() {
        pit_ticks(&["--accel", "kvm"]);
    }
}
