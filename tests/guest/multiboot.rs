//! Multiboot test kernels: an ELF32 image around code the test assembles,
//! and serial output from it.

#![allow(dead_code, reason = "each suite uses what it needs")]

use iced_x86::code_asm::*;

/// Print `s` to COM1 (the transmitter is always ready in ferrovm and QEMU).
pub fn print32(a: &mut CodeAssembler, s: &str) -> Result<(), IcedError> {
    a.mov(dx, 0x3f8u32)?;
    for b in s.bytes() {
        a.mov(al, u32::from(b))?;
        a.out(dx, al)?;
    }
    Ok(())
}

pub const LOAD: u32 = 0x10_0000;
pub const CODE_OFF: u32 = 0x80;

/// An ELF32 multiboot kernel whose one segment holds `code` at
/// `LOAD + CODE_OFF` (its entry point), and after it whatever `code` put
/// at its own end.
pub fn multiboot_elf(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; CODE_OFF as usize];
    f.extend_from_slice(code);
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

/// The multiboot kernel that reports what a BIOS boot hands it
/// ([`bios_probe_kernel`]): where it keeps its real-mode stub, the stub's
/// GDT and descriptors, and what the stub counts.
const STUB: u32 = 0x6000;
const STUB_GDT: u32 = STUB + 0x800;
const STUB_GDTR: u32 = STUB + 0x840;
const STUB_IVTR: u32 = STUB + 0x850;
const STUB_TICKS_START: u32 = STUB + 0x860;
const STUB_TICKS_END: u32 = STUB + 0x864;
const STUB_TICK_CHANGES: u32 = STUB + 0x868;
const STUB_LEN: u32 = 0x870;
/// Where the kernel image holds the stub and the code the stub returns to.
const STUB_SRC: u32 = LOAD + 0x1000;
const BACK32: u32 = LOAD + 0x2000;
/// The kernel's stack and the words it saves.
const STACK_TOP: u32 = 0x7_0000;
const SAVED: u32 = 0x6_0000;

/// A routine that prints EAX as 8 hex digits on COM1 (clobbers EAX, ECX,
/// EDX); returns its label.
fn hex_routine(a: &mut CodeAssembler) -> Result<CodeLabel, IcedError> {
    let mut hex = a.create_label();
    let mut digit = a.create_label();
    let mut out = a.create_label();
    a.set_label(&mut hex)?;
    a.push(ebx)?;
    a.mov(ebx, eax)?;
    a.mov(ecx, 8u32)?;
    a.set_label(&mut digit)?;
    a.rol(ebx, 4u32)?;
    a.mov(al, bl)?;
    a.and(al, 0xfu32)?;
    a.add(al, u32::from(b'0'))?;
    a.cmp(al, u32::from(b'9'))?;
    a.jbe(out)?;
    a.add(al, 7u32)?;
    a.set_label(&mut out)?;
    a.mov(dx, 0x3f8u32)?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(digit)?;
    a.pop(ebx)?;
    a.ret()?;
    Ok(hex)
}

/// A multiboot kernel that reports, on COM1 as `T:KEY VALUE` lines, what a
/// boot through the BIOS (QEMU's `-kernel`) hands it, and whether the BIOS
/// is still there: EAX, the information structure (flags, mem_lower and
/// mem_upper with the BIOS data area's base memory size, the boot device,
/// the memory map entry by entry, the command line, the loader's name, each
/// module's addresses, FNV-1a hash and command line), the interrupt vector
/// table's INT 08h entry; then it goes back to real mode with the BIOS's
/// IVT, waits with interrupts on until the BIOS's timer handler has moved
/// the BDA tick count three times, comes back to protected mode, reports
/// the count and leaves through debug-exit with 0x10 (status 0x21).
pub fn bios_probe_kernel() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut puts = a.create_label();
    let mut fnv = a.create_label();
    let mut start = a.create_label();
    a.jmp(start).unwrap();
    // puts: ESI, a NUL-terminated string (clobbers EAX, EDX, ESI).
    {
        let mut l = a.create_label();
        let mut d = a.create_label();
        a.set_label(&mut puts).unwrap();
        a.mov(dx, 0x3f8u32).unwrap();
        a.set_label(&mut l).unwrap();
        a.lodsb().unwrap();
        a.test(al, al).unwrap();
        a.jz(d).unwrap();
        a.out(dx, al).unwrap();
        a.jmp(l).unwrap();
        a.set_label(&mut d).unwrap();
        a.ret().unwrap();
    }
    // fnv: EAX = FNV-1a of ESI..EDI (clobbers ECX, ESI).
    {
        let mut l = a.create_label();
        let mut d = a.create_label();
        a.set_label(&mut fnv).unwrap();
        a.mov(eax, 0x811c_9dc5u32).unwrap();
        a.set_label(&mut l).unwrap();
        a.cmp(esi, edi).unwrap();
        a.jae(d).unwrap();
        a.movzx(ecx, byte_ptr(esi)).unwrap();
        a.xor(eax, ecx).unwrap();
        a.imul_3(eax, eax, 0x0100_0193).unwrap();
        a.inc(esi).unwrap();
        a.jmp(l).unwrap();
        a.set_label(&mut d).unwrap();
        a.ret().unwrap();
    }
    let hex = hex_routine(&mut a).unwrap();

    a.set_label(&mut start).unwrap();
    a.cld().unwrap();
    a.mov(esp, STACK_TOP).unwrap();
    a.mov(dword_ptr(SAVED), eax).unwrap();
    a.mov(dword_ptr(SAVED + 4), ebx).unwrap();
    let line = |a: &mut CodeAssembler, key: &str, words: &[AsmMemoryOperand]| {
        print32(a, &format!("T:{key}")).unwrap();
        for w in words {
            print32(a, " ").unwrap();
            a.mov(eax, *w).unwrap();
            a.call(hex).unwrap();
        }
        print32(a, "\n").unwrap();
    };
    a.mov(ebp, dword_ptr(SAVED + 4)).unwrap();
    // The BIOS's last words ("Booting from ROM..") end no line.
    print32(&mut a, "\n").unwrap();
    line(&mut a, "magic", &[dword_ptr(SAVED)]);
    line(&mut a, "flags", &[dword_ptr(ebp)]);
    line(&mut a, "mem", &[dword_ptr(ebp + 4), dword_ptr(ebp + 8)]);
    a.movzx(eax, word_ptr(0x413u32)).unwrap();
    a.mov(dword_ptr(SAVED + 8), eax).unwrap();
    line(&mut a, "basemem", &[dword_ptr(SAVED + 8)]);
    line(&mut a, "bootdev", &[dword_ptr(ebp + 12)]);
    line(&mut a, "mmap", &[dword_ptr(ebp + 44), dword_ptr(ebp + 48)]);
    // The memory map, entry by entry (at most 64).
    {
        let mut l = a.create_label();
        let mut d = a.create_label();
        a.mov(esi, dword_ptr(ebp + 48)).unwrap();
        a.mov(edi, esi).unwrap();
        a.add(edi, dword_ptr(ebp + 44)).unwrap();
        a.mov(dword_ptr(SAVED + 12), 64u32).unwrap();
        a.set_label(&mut l).unwrap();
        a.cmp(esi, edi).unwrap();
        a.jae(d).unwrap();
        a.dec(dword_ptr(SAVED + 12)).unwrap();
        a.js(d).unwrap();
        line(
            &mut a,
            "e820",
            &[
                dword_ptr(esi),
                dword_ptr(esi + 8),
                dword_ptr(esi + 4),
                dword_ptr(esi + 16),
                dword_ptr(esi + 12),
                dword_ptr(esi + 20),
            ],
        );
        a.mov(eax, dword_ptr(esi)).unwrap();
        a.lea(esi, dword_ptr(esi + eax + 4)).unwrap();
        a.jmp(l).unwrap();
        a.set_label(&mut d).unwrap();
    }
    print32(&mut a, "T:cmdline ").unwrap();
    a.mov(esi, dword_ptr(ebp + 16)).unwrap();
    a.call(puts).unwrap();
    print32(&mut a, "\nT:loader ").unwrap();
    a.mov(esi, dword_ptr(ebp + 64)).unwrap();
    a.call(puts).unwrap();
    print32(&mut a, "\n").unwrap();
    line(&mut a, "mods", &[dword_ptr(ebp + 20)]);
    // Each module (at most 8): start, end, hash, command line.
    {
        let mut l = a.create_label();
        let mut d = a.create_label();
        a.mov(ebx, dword_ptr(ebp + 24)).unwrap();
        a.mov(eax, dword_ptr(ebp + 20)).unwrap();
        a.mov(dword_ptr(SAVED + 12), eax).unwrap();
        a.set_label(&mut l).unwrap();
        a.cmp(dword_ptr(SAVED + 12), 0u32).unwrap();
        a.je(d).unwrap();
        a.mov(esi, dword_ptr(ebx)).unwrap();
        a.mov(edi, dword_ptr(ebx + 4)).unwrap();
        a.call(fnv).unwrap();
        a.mov(dword_ptr(SAVED + 16), eax).unwrap();
        line(&mut a, "mod", &[dword_ptr(ebx), dword_ptr(ebx + 4), dword_ptr(SAVED + 16)]);
        print32(&mut a, "T:modcmd ").unwrap();
        a.mov(esi, dword_ptr(ebx + 8)).unwrap();
        a.call(puts).unwrap();
        print32(&mut a, "\n").unwrap();
        a.add(ebx, 16u32).unwrap();
        a.dec(dword_ptr(SAVED + 12)).unwrap();
        a.jmp(l).unwrap();
        a.set_label(&mut d).unwrap();
    }
    line(&mut a, "ivt8", &[dword_ptr(0x20u32)]);
    line(&mut a, "bda-ticks", &[dword_ptr(0x46cu32)]);
    // To real mode through the stub, with the BIOS's interrupt vectors.
    a.cli().unwrap();
    a.mov(esi, STUB_SRC).unwrap();
    a.mov(edi, STUB).unwrap();
    a.mov(ecx, STUB_LEN).unwrap();
    a.rep().movsb().unwrap();
    a.lgdt(ptr(STUB_GDTR)).unwrap();
    let far = |off: u32, sel: u16| {
        let mut b = vec![0xea];
        b.extend(off.to_le_bytes());
        b.extend(sel.to_le_bytes());
        b
    };
    a.db(&far(STUB, 0x18)).unwrap();
    let mut code = a.assemble(u64::from(LOAD + CODE_OFF)).unwrap();
    assert!(code.len() <= (STUB_SRC - LOAD - CODE_OFF) as usize, "the probe's code outgrew its room");
    code.resize((STUB_SRC - LOAD - CODE_OFF) as usize, 0xcc);
    code.extend(real_mode_stub());
    code.resize((BACK32 - LOAD - CODE_OFF) as usize, 0xcc);

    // Back in protected mode: report the ticks and leave.
    let mut b = CodeAssembler::new(32).unwrap();
    let mut back = b.create_label();
    b.jmp(back).unwrap();
    let hex = hex_routine(&mut b).unwrap();
    b.set_label(&mut back).unwrap();
    b.mov(ax, 0x10u32).unwrap();
    for s in [ds, es, fs, gs, ss] {
        b.mov(s, ax).unwrap();
    }
    b.mov(esp, STACK_TOP).unwrap();
    print32(&mut b, "T:ticks").unwrap();
    for w in [STUB_TICKS_START, STUB_TICKS_END, STUB_TICK_CHANGES] {
        print32(&mut b, " ").unwrap();
        b.mov(eax, dword_ptr(w)).unwrap();
        b.call(hex).unwrap();
    }
    print32(&mut b, "\nT:done\n").unwrap();
    b.mov(al, 0x10u32).unwrap();
    b.out(0xf4u32, al).unwrap();
    let mut halt = b.create_label();
    b.set_label(&mut halt).unwrap();
    b.hlt().unwrap();
    b.jmp(halt).unwrap();
    code.extend(b.assemble(u64::from(BACK32)).unwrap());
    multiboot_elf(&code)
}

/// The real-mode stub of [`bios_probe_kernel`], with its GDT and
/// descriptors: copied to `STUB`, entered in 16-bit protected mode.
fn real_mode_stub() -> Vec<u8> {
    const REAL: u32 = STUB + 0x100;
    // 16-bit protected mode: 64 KiB data segments, then paging and PE off.
    let mut a = CodeAssembler::new(16).unwrap();
    a.mov(ax, 0x20u32).unwrap();
    for s in [ds, es, fs, gs, ss] {
        a.mov(s, ax).unwrap();
    }
    a.mov(eax, cr0).unwrap();
    a.and(eax, 0x7fff_fffei32).unwrap();
    a.mov(cr0, eax).unwrap();
    a.db(&[0xea, REAL as u8, (REAL >> 8) as u8, 0, 0]).unwrap();
    let mut stub = a.assemble(u64::from(STUB)).unwrap();
    stub.resize((REAL - STUB) as usize, 0xcc);

    // Real mode: the BIOS's IVT, interrupts on, three changes of the BDA's
    // tick count; then back to protected mode at BACK32.
    let mut r = CodeAssembler::new(16).unwrap();
    let mut wait = r.create_label();
    let mut same = r.create_label();
    r.xor(ax, ax).unwrap();
    for s in [ds, es, fs, gs, ss] {
        r.mov(s, ax).unwrap();
    }
    r.mov(sp, STUB - 0x10).unwrap();
    r.lidt(ptr(STUB_IVTR)).unwrap();
    r.mov(eax, dword_ptr(0x46cu32)).unwrap();
    r.mov(dword_ptr(STUB_TICKS_START), eax).unwrap();
    r.mov(dword_ptr(STUB_TICK_CHANGES), 0u32).unwrap();
    r.sti().unwrap();
    r.set_label(&mut wait).unwrap();
    r.mov(ebx, dword_ptr(0x46cu32)).unwrap();
    r.hlt().unwrap();
    r.cmp(ebx, dword_ptr(0x46cu32)).unwrap();
    r.je(same).unwrap();
    r.inc(dword_ptr(STUB_TICK_CHANGES)).unwrap();
    r.set_label(&mut same).unwrap();
    r.cmp(dword_ptr(STUB_TICK_CHANGES), 3u32).unwrap();
    r.jb(wait).unwrap();
    r.cli().unwrap();
    r.mov(eax, dword_ptr(0x46cu32)).unwrap();
    r.mov(dword_ptr(STUB_TICKS_END), eax).unwrap();
    r.lgdt(ptr(STUB_GDTR)).unwrap();
    r.mov(eax, cr0).unwrap();
    r.or(eax, 1u32).unwrap();
    r.mov(cr0, eax).unwrap();
    let mut far = vec![0x66, 0xea];
    far.extend(BACK32.to_le_bytes());
    far.extend(0x08u16.to_le_bytes());
    r.db(&far).unwrap();
    stub.extend(r.assemble(u64::from(REAL)).unwrap());
    assert!(stub.len() <= (STUB_GDT - STUB) as usize, "the stub's code outgrew its room");
    stub.resize((STUB_GDT - STUB) as usize, 0xcc);
    // GDT: null, flat 32-bit code (0x08) and data (0x10), 16-bit code
    // (0x18) and data (0x20) with base 0 and a 64 KiB limit.
    for d in [0u64, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0x0000_9a00_0000_ffff, 0x0000_9200_0000_ffff] {
        stub.extend(d.to_le_bytes());
    }
    stub.resize((STUB_GDTR - STUB) as usize, 0);
    stub.extend(39u16.to_le_bytes());
    stub.extend(STUB_GDT.to_le_bytes());
    stub.resize((STUB_IVTR - STUB) as usize, 0);
    stub.extend(0x3ffu16.to_le_bytes());
    stub.extend(0u32.to_le_bytes());
    stub.resize(STUB_LEN as usize, 0);
    stub
}

/// FNV-1a, as [`bios_probe_kernel`] hashes a module.
pub fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// What a boot of [`bios_probe_kernel`] must have reported on COM1 (`out`),
/// booted as `kernel` with the command line `append`, the one module
/// `module` (its bytes and its entry in `-initrd`) and `mem` bytes of RAM,
/// by a loader that calls itself `loader`: a memory map from the BIOS (its
/// reserved top of RAM and ROM), `mem_lower` as the BIOS data area says,
/// `mem_upper` from the map, the command line and module, the BIOS's
/// INT 08h vector and its timer ticking in real mode. Panics naming what
/// is wrong.
pub fn check_bios_probe(out: &str, kernel: &str, append: &str, module: (&[u8], &str), mem: u64, loader: &str) {
    let get = |key: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(&format!("T:{key} ")).map(str::to_string))
            .collect()
    };
    let one = |key: &str| get(key).into_iter().next().unwrap_or_else(|| panic!("no T:{key} in:\n{out}"));
    let words = |key: &str| -> Vec<u64> {
        one(key).split(' ').map(|w| u64::from_str_radix(w, 16).unwrap_or_else(|e| panic!("T:{key} {w}: {e}"))).collect()
    };
    assert!(out.contains("T:done"), "the probe ran to its end:\n{out}");
    assert_eq!(words("magic"), [0x2bad_b002], "EAX");
    assert_eq!(words("flags"), [0x24f], "flags: memory, boot device, command line, modules, memory map, loader name");
    let (lower, upper) = (words("mem")[0], words("mem")[1]);
    assert_eq!(lower, words("basemem")[0], "mem_lower is the BIOS's INT 12h base memory, as the BDA says");
    assert!((600..=640).contains(&lower), "mem_lower {lower} KiB");
    assert_eq!(words("bootdev"), [0x8000_ffff]);
    let mmap = words("mmap");
    assert_eq!(mmap[1], 0x9000, "the memory map where QEMU's ROM writes it");
    let entries: Vec<(u64, u64, u64, u64)> = get("e820")
        .iter()
        .map(|l| {
            let w: Vec<u64> = l.split(' ').map(|x| u64::from_str_radix(x, 16).unwrap()).collect();
            (w[0], (w[1] << 32) | w[2], (w[3] << 32) | w[4], w[5])
        })
        .collect();
    assert_eq!(mmap[0], 24 * entries.len() as u64, "mmap_length: {entries:x?}");
    assert!(entries.iter().all(|e| e.0 == 20), "each entry's size field is 20: {entries:x?}");
    for w in entries.windows(2) {
        assert!(w[0].1 + w[0].2 <= w[1].1, "sorted and disjoint: {entries:x?}");
    }
    assert!(entries.contains(&(20, 0, lower * 1024, 1)), "RAM from 0 up to mem_lower: {entries:x?}");
    assert!(entries.contains(&(20, 0x10_0000, upper * 1024, 1)), "RAM from 1 MiB is mem_upper: {entries:x?}");
    assert!(
        entries.iter().any(|e| e.3 == 2 && e.1 + e.2 == mem && e.1 > 0x10_0000),
        "the BIOS keeps the top of RAM for its tables (reserved up to {mem:#x}): {entries:x?}"
    );
    assert!(entries.iter().any(|e| e.3 == 2 && e.1 + e.2 == 1 << 32), "the BIOS ROM below 4 GiB: {entries:x?}");
    assert_eq!(one("cmdline"), format!("{kernel} {append}"), "the file's name, then -append");
    assert_eq!(one("loader"), loader);
    assert_eq!(words("mods"), [1]);
    let m = words("mod");
    assert_eq!(m[0] % 4096, 0, "the module is page-aligned: {m:x?}");
    assert!(m[0] >= u64::from(LOAD), "the module after the kernel: {m:x?}");
    assert_eq!(m[1] - m[0], module.0.len() as u64, "mod_end - mod_start: {m:x?}");
    assert_eq!(m[2], u64::from(fnv1a(module.0)), "the module's bytes (FNV-1a)");
    assert_eq!(one("modcmd"), module.1);
    let ivt8 = words("ivt8")[0];
    assert!(ivt8 >> 16 == 0xf000 && ivt8 & 0xffff != 0, "INT 08h points into the BIOS: {ivt8:#x}");
    let ticks = words("ticks");
    assert!(ticks[2] >= 3, "the BIOS's timer handler moved the BDA tick count in real mode: {ticks:x?}");
    assert_ne!(ticks[0], ticks[1], "{ticks:x?}");
}
