//! The PC platform under guests the tests build themselves: a multiboot
//! kernel, and a hostile guest that writes garbage to every port and MMIO
//! page; and Debian's kernel driving a virtio entropy device and the
//! ports of a virtio-serial function.

use std::path::PathBuf;

use iced_x86::code_asm::*;

#[path = "guest/run.rs"]
mod run;
fn tmp(name: &str) -> PathBuf {
    run::tmp("platform", name)
}
use iced_x86::BlockEncoderOptions;
use run::ferrovm;
use run::kvm_usable;

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/multiboot.rs"]
mod multiboot;
use multiboot::{multiboot_elf, print32, CODE_OFF, LOAD};

/// Debian's generic kernel boots one at a time here: two at once on a
/// 2-core host starve each other's vCPU, and Linux's check of the timer
/// (ticks counted against the TSC) can then fail and panic.
static ONE_LINUX: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    multiboot_elf(&a.assemble(u64::from(LOAD + CODE_OFF)).unwrap())
}

fn run_multiboot(accel: &str) {
    let path = tmp(&format!("multiboot-{accel}.elf"));
    std::fs::write(&path, multiboot_kernel()).unwrap();
    let o =
        ferrovm(&["run", "--accel", accel, "--kernel", path.to_str().unwrap(), "--serial", "stdio", "--timeout", "60"]);
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

/// The virtio-net test guest's frames: where they sit, how many, how long
/// (a 10-byte legacy header, then 60 bytes of Ethernet).
const VIRTIO_FRAMES_AT: u32 = LOAD + 0x1000;
const VIRTIO_FRAMES: u32 = 3;
const VIRTIO_FRAME_LEN: u32 = 10 + 60;

/// The Ethernet frame number `i` the virtio guest sends: broadcast, from
/// the default MAC, ethertype 0x88b5 (local experimental), a text payload.
fn virtio_frame(i: u32) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x88, 0xb5]);
    f.extend_from_slice(format!("ferrovm doorbell test frame {i}").as_bytes());
    f.resize(60, 0);
    f
}

/// A multiboot kernel with a minimal legacy virtio-net driver: it finds the
/// NIC in slot 3, maps its I/O BAR at 0xc000 and its modern BAR at
/// 0xfe000000, sets up the transmit queue at 2 MiB, and sends
/// `VIRTIO_FRAMES` frames, one queue notification each (through the legacy
/// register and the modern notification address in turn), waiting for the
/// device to return each buffer. Prints "virtio: sent", then takes the
/// queue's MSI-X interrupt (vector 0x45 through the local APIC), prints
/// "virtio: interrupt" and exits through debug-exit 0x21 (status 0x43);
/// or names what failed.
fn virtio_net_kernel() -> Vec<u8> {
    // The handler's address goes into the IDT as a constant: assemble once
    // to learn it (it does not move, the constant's size being fixed).
    let (_, handler_at) = virtio_net_code(0).unwrap();
    let (mut code, again) = virtio_net_code(handler_at).unwrap();
    assert_eq!(again, handler_at);
    let at = (VIRTIO_FRAMES_AT - LOAD - CODE_OFF) as usize;
    assert!(code.len() <= at, "the code overlaps the frames");
    code.resize(at, 0);
    for i in 0..VIRTIO_FRAMES {
        let mut buf = vec![0u8; 10];
        buf.extend_from_slice(&virtio_frame(i));
        buf.resize(128, 0);
        code.extend_from_slice(&buf);
    }
    multiboot_elf(&code)
}

/// The code of [`virtio_net_kernel`] with its interrupt handler's address
/// given as `handler_at`; returns it and the handler's real address.
fn virtio_net_code(handler_at: u32) -> Result<(Vec<u8>, u32), IcedError> {
    const IOB: u32 = 0xc000;
    const RING: u32 = 0x20_0000;
    const MODERN: u32 = 0xfe00_0000;
    const MSIX: u32 = 0xfe10_0000;
    const LAPIC: u32 = 0xfee0_0000;
    const IDT: u32 = 0x3000;
    const VECTOR: u32 = 0x45;
    let cfg = |reg: u32| 0x8000_0000u32 | (3 << 11) | reg;
    let mut a = CodeAssembler::new(32)?;
    let a = &mut a;
    let mut fail_id = a.create_label();
    let mut fail_size = a.create_label();
    let mut timeout = a.create_label();
    let mut fail_vector = a.create_label();
    let mut handler = a.create_label();
    a.mov(esp, 0x9_0000u32)?;
    // An IDT with one gate: VECTOR, a 32-bit interrupt gate to `handler`.
    a.mov(eax, handler_at)?;
    a.mov(word_ptr(IDT + VECTOR * 8), ax)?;
    a.shr(eax, 16u32)?;
    a.mov(word_ptr(IDT + VECTOR * 8 + 6), ax)?;
    a.mov(ax, cs)?;
    a.mov(word_ptr(IDT + VECTOR * 8 + 2), ax)?;
    a.mov(word_ptr(IDT + VECTOR * 8 + 4), 0x8e00u32)?;
    a.mov(word_ptr(IDT - 6), VECTOR * 8 + 7)?;
    a.mov(dword_ptr(IDT - 4), IDT)?;
    a.lidt(ptr(IDT - 6))?;
    // The local APIC, software-enabled (spurious vector 0xff).
    a.mov(dword_ptr(LAPIC + 0xf0), 0x1ffu32)?;
    // The function is a transitional virtio-net (1AF4:1000).
    out(a, 0xcf8, cfg(0), 4)?;
    a.mov(dx, 0xcfcu32)?;
    a.in_(eax, dx)?;
    a.cmp(eax, 0x1000_1af4u32)?;
    a.jne(fail_id)?;
    // BAR0 at IOB, BAR4 (64-bit) at MODERN; I/O and memory decoding and
    // bus mastering on.
    for (reg, value) in [(0x10, IOB), (0x14, MSIX), (0x20, MODERN), (0x24, 0), (0x04, 0x7)] {
        out(a, 0xcf8, cfg(reg), 4)?;
        out(a, 0xcfc, value, 4)?;
    }
    // ACKNOWLEDGE | DRIVER, no features, queue 1 (transmit).
    out(a, IOB + 0x12, 3, 1)?;
    out(a, IOB + 0x04, 0, 4)?;
    out(a, IOB + 0x0e, 1, 2)?;
    a.mov(dx, IOB + 0x0c)?;
    a.in_(ax, dx)?;
    a.movzx(ecx, ax)?;
    a.cmp(ecx, VIRTIO_FRAMES)?;
    a.jb(fail_size)?;
    out(a, IOB + 0x08, RING >> 12, 4)?;
    // MSI-X: table entry 0 sends VECTOR to APIC 0; the capability at 0x98
    // enables it (Message Control bit 15); queue 1 takes entry 0 (the
    // legacy register at 0x16 while MSI-X is on), which must read back.
    a.mov(dword_ptr(MSIX), LAPIC)?;
    a.mov(dword_ptr(MSIX + 4), 0u32)?;
    a.mov(dword_ptr(MSIX + 8), VECTOR)?;
    a.mov(dword_ptr(MSIX + 12), 0u32)?;
    out(a, 0xcf8, cfg(0x98), 4)?;
    out(a, 0xcfe, 0x8000, 2)?;
    out(a, IOB + 0x16, 0, 2)?;
    a.in_(ax, dx)?;
    a.test(ax, ax)?;
    a.jnz(fail_vector)?;
    // The legacy layout: avail after 16 bytes per descriptor, used at the
    // next 4 KiB after the avail ring (6 + 2 * size bytes).
    a.mov(esi, ecx)?;
    a.shl(esi, 4u32)?;
    a.add(esi, RING)?;
    a.lea(edi, ptr(esi + ecx * 2 + (6 + 4095)))?;
    a.and(edi, !4095u32)?;
    // DRIVER_OK.
    out(a, IOB + 0x12, 7, 1)?;
    // Each frame: descriptor i, avail ring entry i, avail idx i + 1, notify,
    // then wait for used idx i + 1.
    a.xor(ebx, ebx)?;
    let mut next = a.create_label();
    a.set_label(&mut next)?;
    a.mov(eax, ebx)?;
    a.shl(eax, 7u32)?; // 128 bytes per frame buffer
    a.add(eax, VIRTIO_FRAMES_AT)?;
    a.mov(ecx, ebx)?;
    a.shl(ecx, 4u32)?;
    a.mov(dword_ptr(ecx + RING), eax)?;
    a.mov(dword_ptr(ecx + RING + 4), 0u32)?;
    a.mov(dword_ptr(ecx + RING + 8), VIRTIO_FRAME_LEN)?;
    a.mov(dword_ptr(ecx + RING + 12), 0u32)?; // flags, next
    a.mov(word_ptr(esi + ebx * 2 + 4), bx)?;
    a.lea(eax, ptr(ebx + 1))?;
    a.mov(word_ptr(esi + 2), ax)?;
    // Even frames notify through the legacy register, odd ones through
    // queue 1's address in the modern BAR (0x3000 + 4 * 1).
    let mut modern = a.create_label();
    let mut notified = a.create_label();
    a.test(ebx, 1u32)?;
    a.jnz(modern)?;
    out(a, IOB + 0x10, 1, 2)?;
    a.jmp(notified)?;
    a.set_label(&mut modern)?;
    a.mov(word_ptr(MODERN + 0x3004), 1u32)?;
    a.set_label(&mut notified)?;
    a.inc(ebx)?;
    a.mov(ecx, 2_000_000u32)?;
    let mut wait = a.create_label();
    a.set_label(&mut wait)?;
    a.movzx(eax, word_ptr(edi + 2))?;
    a.cmp(eax, ebx)?;
    let mut done = a.create_label();
    a.je(done)?;
    a.pause()?;
    a.dec(ecx)?;
    a.jnz(wait)?;
    a.jmp(timeout)?;
    a.set_label(&mut done)?;
    a.cmp(ebx, VIRTIO_FRAMES)?;
    a.jb(next)?;
    print32(a, "virtio: sent\n")?;
    // The used buffers' interrupt is pending at the local APIC: take it.
    a.sti()?;
    a.hlt()?;
    print32(a, "virtio: woke without the interrupt\n")?;
    a.mov(al, 0x33u32)?;
    a.out(0xf4u32, al)?;
    a.set_label(&mut handler)?;
    print32(a, "virtio: interrupt\n")?;
    a.mov(dword_ptr(LAPIC + 0xb0), 0u32)?; // EOI
    a.mov(al, 0x21u32)?;
    a.out(0xf4u32, al)?;
    for (label, what) in [
        (&mut fail_id, "virtio: no virtio-net in slot 3\n"),
        (&mut fail_size, "virtio: the transmit queue is too small\n"),
        (&mut fail_vector, "virtio: the queue did not take MSI-X entry 0\n"),
        (&mut timeout, "virtio: the device never returned a buffer\n"),
    ] {
        a.set_label(label)?;
        print32(a, what)?;
        a.mov(al, 0x33u32)?;
        a.out(0xf4u32, al)?;
    }
    a.hlt()?;
    let r = a.assemble_options(u64::from(LOAD + CODE_OFF), BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let at = r.label_ip(&handler)? as u32;
    Ok((r.inner.code_buffer, at))
}

/// `out` of the low `size` bytes of `value` to `port`, through DX and AL,
/// AX or EAX.
fn out(a: &mut CodeAssembler, port: u32, value: u32, size: u8) -> Result<(), IcedError> {
    a.mov(dx, port)?;
    match size {
        1 => {
            a.mov(al, value)?;
            a.out(dx, al)
        }
        2 => {
            a.mov(ax, value)?;
            a.out(dx, ax)
        }
        _ => {
            a.mov(eax, value)?;
            a.out(dx, eax)
        }
    }
}

/// The frames in a pcap file.
fn pcap_frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        frames.push(data[at..(at + len).min(data.len())].to_vec());
        at += len;
    }
    frames
}

/// Runs the virtio-net guest with `args`; returns its stderr (statistics).
fn run_virtio_net(name: &str, args: &[&str]) -> String {
    let kernel = tmp(&format!("virtio-net-{name}.elf"));
    std::fs::write(&kernel, virtio_net_kernel()).unwrap();
    let pcap = tmp(&format!("virtio-net-{name}.pcap"));
    let nic = format!("user,model=virtio,pcap={}", pcap.display());
    let mut all = vec!["run", "--kernel", kernel.to_str().unwrap(), "--serial", "stdio", "--stats", "--timeout", "120"];
    all.extend_from_slice(&["--nic", &nic]);
    all.extend_from_slice(args);
    let o = ferrovm(&all);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(out.contains("virtio: sent\nvirtio: interrupt\n"), "stdout: {out}\nstderr: {err}");
    assert_eq!(o.status.code(), Some(0x43), "stderr: {err}");
    let sent: Vec<Vec<u8>> = pcap_frames(&std::fs::read(&pcap).unwrap())
        .into_iter()
        .filter(|f| f.len() > 14 && f[12..14] == [0x88, 0xb5])
        .collect();
    assert_eq!(sent, (0..VIRTIO_FRAMES).map(virtio_frame).collect::<Vec<_>>(), "the frames on the wire");
    assert!(err.contains("virtio-net 52:54:00:12:34:56: tx 3 frames 180 bytes (0 dropped)"), "{err}");
    err
}

#[test]
fn virtio_net_guest_transmits_through_the_register_in_the_interpreter() {
    let err = run_virtio_net("interp", &["--accel", "interp"]);
    assert!(!err.contains("ioeventfd"), "{err}");
}

/// Under KVM (with the kernel in KVM too), each queue notification goes to
/// the NIC I/O thread by ioeventfd, and the vCPU does not exit for it; the
/// interrupt comes back by irqfd.
#[test]
fn virtio_net_guest_transmits_through_ioeventfd_under_kvm() {
    if !kvm_usable() {
        return;
    }
    let err = run_virtio_net("kvm", &["--accel", "kvm", "--kvm-split", "off"]);
    eprintln!("{err}");
    // Two queues, each with a legacy register and a modern address.
    assert!(err.contains("virtio doorbells on ioeventfd: 4 attached"), "{err}");
    assert!(err.contains("; 3 queue notifications by ioeventfd"), "{err}");
    if err.contains("interrupt controllers: in-kernel") {
        // One interrupt per returned buffer, all through one route.
        assert!(err.contains("message interrupts: 3 by irqfd (1 routes), 0 by KVM_SIGNAL_MSI"), "{err}");
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
        "run",
        "--accel",
        "interp",
        "--bios",
        path.to_str().unwrap(),
        "--serial",
        "none",
        "--no-reboot",
        "--stats",
        "--timeout",
        "300",
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

/// What the guest runs with a virtio-rng: load virtio-pci and the driver,
/// then read the hardware RNG through the kernel's /dev/hwrng.
const RNG_SCRIPT: &str = r#"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio-rng; do
    insmod /lib/modules/$m.ko || echo "T:insmod $m failed"
done
echo "T:ids $(cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device | tr '\n' ' ')"
echo "T:available $(cat /sys/devices/virtual/misc/hw_random/rng_available)"
echo "T:current $(cat /sys/devices/virtual/misc/hw_random/rng_current)"
echo "T:bytes $(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | od -An -tu1 -v | tr -s ' \n' ' ')"
echo "T:clocksources $(cat /sys/devices/system/clocksource/clocksource0/available_clocksource)"
[ -e /sys/firmware/acpi/tables/HPET ] && echo "T:hpet-table"
[ -e /sys/firmware/acpi/tables/APIC ] && echo "T:madt"
"#;

/// Debian's generic kernel's images, a work folder `name` and in it an
/// initramfs with the virtio PCI modules and `driver`, in insmod order;
/// `None` (the test skips) without the images.
fn virtio_guest(name: &str, driver: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let dir = images::images(&["vmlinuz-generic", "initramfs.cpio.gz", "modules-generic/modules.order"])?;
    let work = tmp(name);
    let _ = std::fs::create_dir_all(&work);
    let initrd = work.join(format!("initrd-{name}.gz"));
    let modules = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", driver];
    images::initrd_with_modules(&dir, &modules, &work.join(format!("{name}-mods")), &initrd);
    Some((dir, work, initrd))
}

/// Linux's virtio-rng driver finds QEMU's `-device virtio-rng-pci` (ID
/// 1af4:1005) and reads what the host file of `-object rng-random` holds:
/// here a file of the bytes 0, 1, .. 255 over and over, so each byte the
/// guest reads is one more than the byte before it. The machine has
/// `-no-hpet`: Linux finds neither the HPET's ACPI table nor the device.
#[test]
fn linux_reads_the_host_file_through_virtio_rng_without_an_hpet() {
    let Some((dir, work, initrd)) = virtio_guest("rng", "virtio-rng") else {
        return;
    };
    let source = work.join("counting.bin");
    std::fs::write(&source, (0..1u32 << 20).map(|i| i as u8).collect::<Vec<u8>>()).unwrap();
    let _one = ONE_LINUX.lock().unwrap_or_else(|e| e.into_inner());
    // panic=-1: a kernel panic resets the machine, which -no-reboot ends.
    let cmdline =
        format!("console=ttyS0 panic=-1 ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(RNG_SCRIPT.as_bytes()));
    let object = format!("rng-random,filename={},id=rng0", source.display());
    let extra = ["-object", &object, "-device", "virtio-rng-pci,rng=rng0", "-no-hpet"];
    let args = images::generic_linux(&dir, &initrd, &cmdline, &extra);
    let o = ferrovm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    let field = |k: &str| out.lines().find_map(|l| l.trim_end().strip_prefix(&format!("T:{k} "))).unwrap_or("");
    assert!(!out.contains("T:insmod"), "a module did not load:\n{out}");
    assert!(field("ids").contains("0x1005"), "the transitional device ID: {:?}\n{out}", field("ids"));
    assert!(field("available").contains("virtio_rng"), "hw_random lists the device:\n{out}");
    assert!(field("current").starts_with("virtio_rng"), "and uses it:\n{out}");
    let bytes: Vec<u8> = field("bytes").split_whitespace().filter_map(|b| b.parse().ok()).collect();
    assert_eq!(bytes.len(), 64, "64 bytes read from /dev/hwrng:\n{out}");
    assert!(bytes.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "the host file's bytes, in order: {bytes:?}");
    let sources = field("clocksources");
    assert!(sources.contains("tsc") && !sources.contains("hpet"), "no HPET clocksource: {sources:?}\n{out}");
    assert!(out.contains("T:madt") && !out.contains("T:hpet-table"), "the ACPI tables without HPET:\n{out}");
    assert_eq!(o.status.code(), Some(0), "{err}");
    let _ = std::fs::remove_dir_all(&work);
}

/// The guest's side of [`linux_boots_without_acpi_on_the_mp_table`]: no
/// ACPI tables, no PIIX4 PM function (00:01.3, `000b` in
/// /proc/bus/pci/devices), the CPUs it counts, then a reset, which
/// `-no-reboot` makes the end of the run (there is no ACPI power-off).
const NO_ACPI_SCRIPT: &str = r#"
[ -d /sys/firmware/acpi/tables ] && echo "T:acpi-tables" || echo "T:no-acpi-tables"
echo "T:functions $(cut -f1 /proc/bus/pci/devices | tr '\n' ' ')"
echo "T:nproc $(nproc)"
reboot -f
"#;

/// QEMU's `-no-acpi`: Linux finds no RSDP, runs without ACPI, and counts
/// both CPUs of `-smp 2,sockets=2` from the MP table. SeaBIOS, which boots
/// QEMU's `-kernel`, lists one processor per package in the MP table it
/// builds, so `-smp 2` (two cores of one socket) would show one CPU, as it
/// does under QEMU.
#[test]
fn linux_boots_without_acpi_on_the_mp_table() {
    let Some(dir) = images::images(&["vmlinuz-generic", "initramfs.cpio.gz"]) else {
        return;
    };
    let initrd = dir.join("initramfs.cpio.gz");
    let _one = ONE_LINUX.lock().unwrap_or_else(|e| e.into_inner());
    let cmdline = format!("console=ttyS0 panic=-1 ferrovm.cmd={}", encode::base64(NO_ACPI_SCRIPT.as_bytes()));
    let args = images::generic_linux(&dir, &initrd, &cmdline, &["-no-acpi", "-smp", "2,sockets=2"]);
    let o = ferrovm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    let field = |k: &str| out.lines().find_map(|l| l.trim_end().strip_prefix(&format!("T:{k} "))).unwrap_or("");
    assert!(out.contains("T:no-acpi-tables") && out.contains("A valid RSDP was not found"), "no ACPI:\n{out}");
    assert!(out.contains("found SMP MP-table"), "the MP table:\n{out}");
    assert_eq!(field("nproc"), "2", "both CPUs from the MP table:\n{out}");
    let functions = field("functions");
    assert!(functions.contains("0008") && !functions.contains("000b"), "no PM function at 00:01.3: {functions:?}");
    assert_eq!(o.status.code(), Some(0), "the reset ends the run under -no-reboot: {err}\n{out}");
}

/// The guest's side of [`linux_talks_to_the_host_through_virtio_serial_ports`]:
/// the ports' names, a line to the named port's host socket and one back,
/// and a line on the console port (hvc0).
const VPORT_SCRIPT: &str = r#"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
    insmod /lib/modules/$m.ko || echo "T:insmod-failed $m"
done
sleep 1
echo "T:names $(cat /sys/class/virtio-ports/*/name | tr '\n' ' ')"
dev=/dev/$(basename $(dirname $(grep -l org.ferrovm.test /sys/class/virtio-ports/*/name)))
# One open for both ways: Linux drops what arrives for a port as it closes.
exec 3<> $dev
echo "hello from the guest" >&3
read -r line <&3
exec 3>&-
echo "T:got $line"
echo "on the console port" > /dev/hvc0
"#;

/// Debian's kernel with a virtio-serial function of two ports, in QEMU's
/// syntax (`-device virtio-serial-pci` with `virtconsole` and
/// `virtserialport` on `-chardev file` and `-chardev socket`): a console on
/// a file, and a port named org.ferrovm.test on a Unix socket ferrovm
/// listens on. The guest finds the name in sysfs, writes a
/// line the test reads from the socket, reads the line the test writes
/// back, and writes a line to /dev/hvc0, which the file holds.
#[test]
fn linux_talks_to_the_host_through_virtio_serial_ports() {
    use std::io::{BufRead, BufReader, Write};
    let Some((dir, work, initrd)) = virtio_guest("vport", "virtio_console") else {
        return;
    };
    let (sock, console) = (work.join("port.sock"), work.join("console.out"));
    let _one = ONE_LINUX.lock().unwrap_or_else(|e| e.into_inner());
    let cmdline =
        format!("console=ttyS0 panic=-1 ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(VPORT_SCRIPT.as_bytes()));
    // QEMU's syntax for the function and its ports.
    let (port_dev, console_dev) = (
        format!("socket,path={},server=on,wait=off,id=port0", sock.display()),
        format!("file,id=con0,path={}", console.display()),
    );
    let extra = [
        "-chardev",
        &port_dev,
        "-chardev",
        &console_dev,
        "-device",
        "virtio-serial-pci",
        "-device",
        "virtserialport,chardev=port0,name=org.ferrovm.test",
        "-device",
        "virtconsole,chardev=con0",
    ];
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(images::generic_linux(&dir, &initrd, &cmdline, &extra))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ferrovm runs");
    // The host's end of the named port.
    let peer = {
        let sock = sock.clone();
        std::thread::spawn(move || -> Result<String, String> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let s = loop {
                match std::os::unix::net::UnixStream::connect(&sock) {
                    Ok(s) => break s,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(50))
                    }
                    Err(e) => return Err(format!("cannot connect to {}: {e}", sock.display())),
                }
            };
            s.set_read_timeout(Some(std::time::Duration::from_secs(100))).map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).map_err(|e| format!("reading the guest's line: {e}"))?;
            (&s).write_all(b"hello from the host\n").map_err(|e| e.to_string())?;
            // Stay connected until the guest has read it.
            std::thread::sleep(std::time::Duration::from_secs(2));
            Ok(line)
        })
    };
    let (out, status, _) = run::watch_markers(child, &[], 120, false);
    let from_guest = peer.join().unwrap();
    let field = |k: &str| out.lines().find_map(|l| l.trim_end().strip_prefix(&format!("T:{k} "))).unwrap_or("");
    assert!(!out.contains("T:insmod"), "a module did not load:\n{out}");
    assert_eq!(field("names").trim(), "org.ferrovm.test", "the named port in sysfs:\n{out}");
    assert_eq!(from_guest, Ok("hello from the guest\n".to_string()), "the guest's line on the socket:\n{out}");
    assert_eq!(field("got"), "hello from the host", "the host's line in the guest:\n{out}");
    let on_console = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(on_console.contains("on the console port"), "hvc0's output in the file: {on_console:?}\n{out}");
    assert_eq!(status, Some(0), "{out}");
    let _ = std::fs::remove_dir_all(&work);
}

/// The guest's side of [`a_virtio_console_on_stdio_takes_the_keys_and_shows_the_output`]:
/// the console port's tty, a marker on it, a line read from it and the
/// line written back.
const STDIO_PORT_SCRIPT: &str = r#"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
    insmod /lib/modules/$m.ko || echo "T:insmod-failed $m"
done
i=0
while [ ! -c /dev/hvc0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
exec 3<> /dev/hvc0
echo "T:on-hvc" >&3
read -r line <&3
echo "T:got $line" >&3
exec 3>&-
"#;

/// QEMU's `-chardev stdio` under a `virtconsole` (COM1 in a file): the
/// guest's console output comes out on ferrovm's stdout, and what the test
/// writes to its stdin reaches the guest's /dev/hvc0.
#[test]
fn a_virtio_console_on_stdio_takes_the_keys_and_shows_the_output() {
    use std::io::Write;
    let Some((dir, work, initrd)) = virtio_guest("vport-stdio", "virtio_console") else {
        return;
    };
    let _one = ONE_LINUX.lock().unwrap_or_else(|e| e.into_inner());
    let com1 = work.join("com1.out");
    let cmdline = format!(
        "console=ttyS0 panic=-1 ferrovm.poweroff=1 ferrovm.cmd={}",
        encode::base64(STDIO_PORT_SCRIPT.as_bytes())
    );
    let serial = format!("file:{}", com1.display());
    let extra = ["-chardev", "stdio,id=s", "-device", "virtio-serial-pci", "-device", "virtconsole,chardev=s"];
    let mut args = images::generic_linux(&dir, &initrd, &cmdline, &extra);
    // COM1 (the kernel's console and the script's) goes to a file instead.
    let at = args.iter().position(|a| a == "stdio").expect("the image's -serial stdio");
    args[at] = serial;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ferrovm runs");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stderr = child.stderr.take().expect("piped stderr");
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let typist = std::thread::spawn(move || {
        // Typed before the guest's driver is up: it waits in ferrovm until
        // the guest can take it (QEMU reads its chardev only then), across
        // the driver's reset of the device. Stdin stays open to the end.
        std::thread::sleep(std::time::Duration::from_secs(1));
        let _ = stdin.write_all(b"hello from stdin\n");
        std::thread::sleep(std::time::Duration::from_secs(100));
    });
    let (out, status, _) = run::watch_markers(child, &["T:got"], 120, false);
    drop(typist);
    let com1_out = std::fs::read_to_string(&com1).unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let ctx = format!("stdout:\n{out}\nstderr:\n{err}\nCOM1:\n{com1_out}");
    assert!(!com1_out.contains("T:insmod"), "a module did not load: {ctx}");
    assert!(out.contains("T:on-hvc"), "the console port's output on stdout: {ctx}");
    assert!(out.contains("T:got hello from stdin"), "stdin's line in the guest: {ctx}");
    assert!(com1_out.contains("ferrovm-init"), "COM1 kept the kernel's console: {ctx}");
    assert_eq!(status, Some(0), "{ctx}");
    let _ = std::fs::remove_dir_all(&work);
}

/// The same named port on a pseudo-terminal (`-chardev pty`): ferrovm
/// announces the terminal as QEMU does ("char device redirected to
/// /dev/pts/N (label term0)"), the test opens it, reads the guest's line
/// and types one back.
#[test]
fn linux_talks_to_the_host_through_a_virtio_serial_port_on_a_pty() {
    use std::io::{BufRead, BufReader, Write};
    let Some((dir, work, initrd)) = virtio_guest("vport-pty", "virtio_console") else {
        return;
    };
    let _one = ONE_LINUX.lock().unwrap_or_else(|e| e.into_inner());
    let cmdline =
        format!("console=ttyS0 panic=-1 ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(VPORT_SCRIPT.as_bytes()));
    let extra = [
        "-chardev",
        "pty,id=term0",
        "-chardev",
        "null,id=con0",
        "-device",
        "virtio-serial-pci",
        "-device",
        "virtserialport,chardev=term0,name=org.ferrovm.test",
        "-device",
        "virtconsole,chardev=con0",
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(images::generic_linux(&dir, &initrd, &cmdline, &extra))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ferrovm runs");
    // The announcement on stderr, then the host's end of the port.
    let stderr = child.stderr.take().expect("piped stderr");
    let peer = std::thread::spawn(move || -> Result<(String, String), String> {
        let mut lines = BufReader::new(stderr).lines();
        let pts = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(rest) = l.strip_prefix("char device redirected to ") {
                        break rest.to_string();
                    }
                }
                _ => return Err("ferrovm announced no terminal on stderr".into()),
            }
        };
        // Keep draining stderr so that ferrovm never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let path = pts.split(' ').next().unwrap_or_default().to_string();
        let term =
            std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(|e| format!("{path}: {e}"))?;
        let mut line = String::new();
        BufReader::new(&term).read_line(&mut line).map_err(|e| format!("reading the guest's line: {e}"))?;
        (&term).write_all(b"hello from the host\n").map_err(|e| e.to_string())?;
        // Stay open until the guest has read it.
        std::thread::sleep(std::time::Duration::from_secs(2));
        Ok((pts, line))
    });
    let (out, status, _) = run::watch_markers(child, &[], 120, false);
    let from_guest = peer.join().unwrap();
    let field = |k: &str| out.lines().find_map(|l| l.trim_end().strip_prefix(&format!("T:{k} "))).unwrap_or("");
    assert!(!out.contains("T:insmod"), "a module did not load:\n{out}");
    let (pts, line) = from_guest.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(pts.starts_with("/dev/pts/") && pts.ends_with(" (label term0)"), "QEMU's announcement: {pts:?}");
    assert_eq!(line, "hello from the guest\n", "the guest's line on the terminal:\n{out}");
    assert_eq!(field("got"), "hello from the host", "the typed line in the guest:\n{out}");
    assert_eq!(status, Some(0), "{out}");
    let _ = std::fs::remove_dir_all(&work);
}
