//! The PC platform under guests the tests build themselves: a multiboot
//! kernel, and a hostile guest that writes garbage to every port and MMIO page.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use iced_x86::code_asm::*;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrovm-platform-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn ferrovm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrovm")).args(args).stdin(Stdio::null()).output().expect("ferrovm runs")
}

fn kvm_usable() -> bool {
    match hvf_kvm_accel::open() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping the KVM run: {e}");
            false
        }
    }
}

/// Print `s` to COM1 (the transmitter is always ready in ferrovm and QEMU).
fn print32(a: &mut CodeAssembler, s: &str) -> Result<(), IcedError> {
    a.mov(dx, 0x3f8u32)?;
    for b in s.bytes() {
        a.mov(al, u32::from(b))?;
        a.out(dx, al)?;
    }
    Ok(())
}

const LOAD: u32 = 0x10_0000;
const CODE_OFF: u32 = 0x80;

/// An ELF32 multiboot kernel: checks the loader's magic and memory info,
/// prints a line and exits through debug-exit with 0x21 (status 0x43).
fn multiboot_kernel() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut fail = a.create_label();
    a.cmp(eax, 0x2bad_b002u32).unwrap();
    a.jne(fail).unwrap();
    a.test(dword_ptr(ebx), 1u32).unwrap(); // flags: mem_lower/mem_upper valid
    a.jz(fail).unwrap();
    a.mov(ecx, dword_ptr(ebx + 8)).unwrap(); // mem_upper in KiB
    a.cmp(ecx, 1024u32).unwrap();
    a.jb(fail).unwrap();
    print32(&mut a, "multiboot: ok\n").unwrap();
    a.mov(al, 0x21u32).unwrap();
    a.out(0xf4u32, al).unwrap();
    a.set_label(&mut fail).unwrap();
    print32(&mut a, "multiboot: bad boot information\n").unwrap();
    a.mov(al, 0x33u32).unwrap();
    a.out(0xf4u32, al).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(u64::from(LOAD + CODE_OFF)).unwrap();

    let mut f = vec![0u8; CODE_OFF as usize];
    f.extend_from_slice(&code);
    let size = f.len() as u32;
    // ELF header.
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 1; // 32-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..28].copy_from_slice(&(LOAD + CODE_OFF).to_le_bytes()); // entry
    f[28..32].copy_from_slice(&52u32.to_le_bytes()); // phoff
    f[40..42].copy_from_slice(&52u16.to_le_bytes()); // ehsize
    f[42..44].copy_from_slice(&32u16.to_le_bytes()); // phentsize
    f[44..46].copy_from_slice(&1u16.to_le_bytes()); // phnum
    // One PT_LOAD covering the whole file at LOAD.
    let ph = 52;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    f[ph + 4..ph + 8].copy_from_slice(&0u32.to_le_bytes());
    f[ph + 8..ph + 12].copy_from_slice(&LOAD.to_le_bytes());
    f[ph + 12..ph + 16].copy_from_slice(&LOAD.to_le_bytes());
    f[ph + 16..ph + 20].copy_from_slice(&size.to_le_bytes());
    f[ph + 20..ph + 24].copy_from_slice(&size.to_le_bytes());
    f[ph + 24..ph + 28].copy_from_slice(&7u32.to_le_bytes());
    f[ph + 28..ph + 32].copy_from_slice(&0x1000u32.to_le_bytes());
    // Multiboot header at 0x60: magic, flags (memory info), checksum.
    let (magic, flags) = (0x1bad_b002u32, 0x0000_0002u32);
    f[0x60..0x64].copy_from_slice(&magic.to_le_bytes());
    f[0x64..0x68].copy_from_slice(&flags.to_le_bytes());
    f[0x68..0x6c].copy_from_slice(&(0u32.wrapping_sub(magic).wrapping_sub(flags)).to_le_bytes());
    f
}

fn run_multiboot(accel: &str) {
    let path = tmp(&format!("multiboot-{accel}.elf"));
    std::fs::write(&path, multiboot_kernel()).unwrap();
    let o = ferrovm(&["run", "--accel", accel, "--kernel", path.to_str().unwrap(), "--serial", "stdio", "--timeout", "60"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("multiboot: ok"), "stdout: {out}\nstderr: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0x43), "debug-exit 0x21 gives status 0x43");
}

#[test]
fn multiboot_kernel_boots_in_the_interpreter() {
    run_multiboot("interp");
}

#[test]
fn multiboot_kernel_boots_under_kvm() {
    if kvm_usable() {
        run_multiboot("kvm");
    }
}

#[test]
fn builtin_guest_under_kvm() {
    if !kvm_usable() {
        return;
    }
    let o = ferrovm(&["run", "--accel", "kvm", "--serial", "stdio", "--timeout", "60"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(firmware::builtin::parse_checksum(&out), Some(firmware::builtin::expected_checksum()), "{out}");
    assert_eq!(o.status.code(), Some(1));
}

/// A 64 KiB ROM: real mode -> flat 32-bit protected mode -> garbage to every
/// I/O port (all sizes) and to every page of the PCI hole, three rounds, then
/// debug-exit 0x2a. The ports that end the run (debug exit, reset, power off)
/// are left out: they are tested on their own.
fn hostile_rom() -> Vec<u8> {
    const BASE: u64 = 0xffff_0000;
    const PM_OFF: u64 = 0x100;
    const GDT_OFF: u64 = 0x40;
    let mut rom = vec![0xf4u8; 0x10000];
    // GDT: null, flat code 32, flat data.
    let gdt: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        rom[GDT_OFF as usize + i * 8..][..8].copy_from_slice(&d.to_le_bytes());
    }
    // Pseudo-descriptor at 0x30: limit, base.
    rom[0x30..0x32].copy_from_slice(&23u16.to_le_bytes());
    rom[0x32..0x36].copy_from_slice(&((BASE + GDT_OFF) as u32).to_le_bytes());

    let mut pm = CodeAssembler::new(32).unwrap();
    // Debug exit, i8042 command (0xfe resets), port 0x92 (bit 0 resets), the
    // PCI reset register, and the ACPI PM1 block up to PM1a_CNT (a word or
    // dword write there can power off).
    let skip_ports = [0xf4u32, 0xf5, 0xf6, 0xf7, 0x64, 0x92, 0xcf9, 0x600, 0x601, 0x602, 0x603, 0x604, 0x605];
    pm.mov(eax, 0x10u32).unwrap();
    pm.mov(ds, ax).unwrap();
    pm.mov(es, ax).unwrap();
    pm.mov(ss, ax).unwrap();
    pm.mov(esp, 0x8000u32).unwrap();
    pm.mov(esi, 3u32).unwrap(); // rounds
    pm.mov(ebp, 0x1234_5678u32).unwrap(); // garbage generator
    let mut round = pm.create_label();
    let mut port_loop = pm.create_label();
    let mut next_port = pm.create_label();
    let mut mmio_loop = pm.create_label();
    pm.set_label(&mut round).unwrap();
    pm.xor(ecx, ecx).unwrap();
    pm.set_label(&mut port_loop).unwrap();
    for p in skip_ports {
        pm.cmp(ecx, p).unwrap();
        pm.je(next_port).unwrap();
    }
    pm.imul_3(ebp, ebp, 1_103_515_245).unwrap();
    pm.add(ebp, 12345).unwrap();
    pm.mov(edx, ecx).unwrap();
    pm.mov(eax, ebp).unwrap();
    pm.out(dx, al).unwrap();
    pm.out(dx, ax).unwrap();
    pm.out(dx, eax).unwrap();
    pm.in_(al, dx).unwrap();
    pm.in_(eax, dx).unwrap();
    pm.set_label(&mut next_port).unwrap();
    pm.inc(ecx).unwrap();
    pm.cmp(ecx, 0x1_0000u32).unwrap();
    pm.jb(port_loop).unwrap();
    // Every page of the PCI hole below this ROM.
    pm.mov(edi, 0xc000_0000u32).unwrap();
    pm.set_label(&mut mmio_loop).unwrap();
    pm.imul_3(ebp, ebp, 1_103_515_245).unwrap();
    pm.add(ebp, 12345).unwrap();
    pm.mov(dword_ptr(edi), ebp).unwrap();
    pm.mov(eax, dword_ptr(edi + 0x10)).unwrap();
    pm.mov(byte_ptr(edi + 0x20), bl).unwrap();
    pm.add(edi, 0x1000u32).unwrap();
    pm.cmp(edi, BASE as u32).unwrap();
    pm.jb(mmio_loop).unwrap();
    pm.dec(esi).unwrap();
    pm.jnz(round).unwrap();
    pm.mov(al, 0x2au32).unwrap();
    pm.out(0xf4u32, al).unwrap();
    pm.hlt().unwrap();
    let pm_code = pm.assemble(BASE + PM_OFF).unwrap();
    rom[PM_OFF as usize..][..pm_code.len()].copy_from_slice(&pm_code);

    // Real mode at FF00 (the reset vector at FFF0 jumps there): cli;
    // o32 lgdt cs:[0x30]; CR0.PE; jmp far 0x08:BASE+PM_OFF.
    let mut rm = CodeAssembler::new(16).unwrap();
    rm.cli().unwrap();
    // o32 lgdt cs:[0x30]: the 32-bit form, so the whole base is loaded.
    let mut lgdt = iced_x86::Instruction::with1(
        iced_x86::Code::Lgdt_m1632,
        iced_x86::MemoryOperand::with_base_displ_size(iced_x86::Register::None, 0x30, 2),
    )
    .unwrap();
    lgdt.set_segment_prefix(iced_x86::Register::CS);
    rm.add_instruction(lgdt).unwrap();
    rm.mov(eax, cr0).unwrap();
    rm.or(eax, 1).unwrap();
    rm.mov(cr0, eax).unwrap();
    // o32 jmp far: a 32-bit offset.
    rm.add_instruction(
        iced_x86::Instruction::with_far_branch(iced_x86::Code::Jmp_ptr1632, 0x08, (BASE + PM_OFF) as u32).unwrap(),
    )
    .unwrap();
    let rm_code = rm.assemble(0xff00).unwrap();
    rom[0xff00..][..rm_code.len()].copy_from_slice(&rm_code);
    // jmp near 0xff00 (E9 rel16).
    let rel = 0xff00u16.wrapping_sub(0xfff3);
    rom[0xfff0] = 0xe9;
    rom[0xfff1..0xfff3].copy_from_slice(&rel.to_le_bytes());
    rom
}

#[test]
fn hostile_guest_cannot_crash_the_host() {
    let path = tmp("hostile.rom");
    std::fs::write(&path, hostile_rom()).unwrap();
    let o = ferrovm(&[
        "run", "--accel", "interp", "--bios", path.to_str().unwrap(), "--serial", "none", "--no-reboot", "--stats",
        "--timeout", "300",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    assert_eq!(o.status.code(), Some(0x55), "the guest finished its rounds and exited with 0x2a:\n{err}");
    let ignored: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("ferrovm: ")?.strip_suffix(" unclaimed port/MMIO accesses ignored")?.parse().ok())
        .expect("--stats reports ignored accesses");
    assert!(ignored > 100_000, "{ignored} accesses reported as ignored");
}
