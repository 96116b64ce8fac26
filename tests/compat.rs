//! Third-party kernels that QEMU boots, booted by the `ferrovm` binary:
//! multiboot kernels whose segments sit below 1 MiB (built here with
//! iced-x86), Debian's 32-bit kernel through the 32-bit boot protocol, and
//! memtest86+. The Debian images come from `scripts/guest-images.sh`;
//! without them those tests say so and pass.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use iced_x86::code_asm::*;

#[path = "guest/images.rs"]
mod images;
#[path = "guest/run.rs"]
mod run;
fn tmp(name: &str) -> PathBuf {
    run::tmp("compat", name)
}
use run::{ferrovm, run_until};

#[path = "guest/multiboot.rs"]
mod multiboot;
use multiboot::print32;

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/kvm.rs"]
mod kvm;
use encode::base64;

/// Where the multiboot header sits in the file (inside the first 8 KiB).
const HEADER_OFF: usize = 0x80;

/// An ELF32 multiboot kernel with one `PT_LOAD` segment: the whole file,
/// ELF header included, at physical `seg`, entered at `seg + code_off`,
/// the code at that file offset, `bss` zero bytes after the file.
///
/// The code checks what the loader promises: EAX holds the magic, the
/// information block (EBX) and the stack (ESP) lie outside the kernel's
/// segment, the flags say the command line is there and it reads "compat".
/// Then it prints `name: ok` on COM1 and leaves through debug-exit with
/// 0x21 (status 0x43); on any failure it prints why and leaves with 0x33.
fn multiboot_kernel(name: &str, seg: u32, code_off: u32, bss: u32) -> Vec<u8> {
    let entry = seg + code_off;
    let file_len_guess = code_off + 0x400;
    let seg_end = seg + file_len_guess + bss;
    let mut a = CodeAssembler::new(32).unwrap();
    let mut bad_magic = a.create_label();
    let mut bad_block = a.create_label();
    let mut bad_stack = a.create_label();
    let mut bad_cmdline = a.create_label();
    let mut block_ok = a.create_label();
    let mut stack_ok = a.create_label();
    a.cmp(eax, 0x2bad_b002u32).unwrap();
    a.jne(bad_magic).unwrap();
    // The information block outside [seg, seg_end).
    a.cmp(ebx, seg).unwrap();
    a.jb(block_ok).unwrap();
    a.cmp(ebx, seg_end).unwrap();
    a.jb(bad_block).unwrap();
    a.set_label(&mut block_ok).unwrap();
    a.lea(ecx, dword_ptr(esp - 4)).unwrap();
    a.cmp(ecx, seg).unwrap();
    a.jb(stack_ok).unwrap();
    a.cmp(ecx, seg_end).unwrap();
    a.jb(bad_stack).unwrap();
    a.set_label(&mut stack_ok).unwrap();
    // flags bit 2: cmdline valid; the string is "compat".
    a.test(dword_ptr(ebx), 4u32).unwrap();
    a.jz(bad_cmdline).unwrap();
    a.mov(esi, dword_ptr(ebx + 16)).unwrap();
    for (i, b) in b"compat\0".iter().enumerate() {
        a.cmp(byte_ptr(esi + i as i32), u32::from(*b)).unwrap();
        a.jne(bad_cmdline).unwrap();
    }
    // A push and a pop on the loader's stack.
    a.push(0x1234_5678u32).unwrap();
    a.pop(ecx).unwrap();
    a.cmp(ecx, 0x1234_5678u32).unwrap();
    a.jne(bad_stack).unwrap();
    print32(&mut a, &format!("{name}: ok\n")).unwrap();
    a.mov(al, 0x21u32).unwrap();
    a.out(0xf4u32, al).unwrap();
    a.hlt().unwrap();
    for (label, why) in [
        (&mut bad_magic, "bad magic"),
        (&mut bad_block, "information block inside the kernel"),
        (&mut bad_stack, "stack inside the kernel"),
        (&mut bad_cmdline, "bad command line"),
    ] {
        a.set_label(label).unwrap();
        print32(&mut a, &format!("{name}: {why}\n")).unwrap();
        a.mov(al, 0x33u32).unwrap();
        a.out(0xf4u32, al).unwrap();
        a.hlt().unwrap();
    }
    let code = a.assemble(u64::from(entry)).unwrap();
    assert!(code.len() <= 0x400, "the test kernel's code outgrew its room");

    let mut f = vec![0u8; code_off as usize];
    f.extend_from_slice(&code);
    f.resize(file_len_guess as usize, 0xcc);
    let size = f.len() as u32;
    // ELF header.
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 1; // 32-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..28].copy_from_slice(&entry.to_le_bytes());
    f[28..32].copy_from_slice(&52u32.to_le_bytes()); // phoff
    f[40..42].copy_from_slice(&52u16.to_le_bytes()); // ehsize
    f[42..44].copy_from_slice(&32u16.to_le_bytes()); // phentsize
    f[44..46].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = 52;
    let words = [1u32, 0, seg, seg, size, size + bss, 7, 0x1000]; // PT_LOAD, offset 0, RWX
    for (i, w) in words.iter().enumerate() {
        f[ph + 4 * i..ph + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    // Multiboot header: magic, flags (memory info), checksum.
    let (magic, flags) = (0x1bad_b002u32, 0x0000_0002u32);
    let h = HEADER_OFF;
    f[h..h + 4].copy_from_slice(&magic.to_le_bytes());
    f[h + 4..h + 8].copy_from_slice(&flags.to_le_bytes());
    f[h + 8..h + 12].copy_from_slice(&(0u32.wrapping_sub(magic).wrapping_sub(flags)).to_le_bytes());
    f
}

fn run_multiboot(name: &str, kernel: &[u8], accel: &str) {
    let path = tmp(&format!("{name}-{accel}.elf"));
    std::fs::write(&path, kernel).unwrap();
    let o = ferrovm(&[
        "run",
        "--accel",
        accel,
        "--kernel",
        path.to_str().unwrap(),
        "--append",
        "compat",
        "--serial",
        "stdio",
        "--timeout",
        "60",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains(&format!("{name}: ok")), "{accel}: stdout: {out}\nstderr: {err}");
    assert_eq!(o.status.code(), Some(0x43), "{accel}: debug-exit 0x21 gives status 0x43; stderr: {err}");
    println!("{name} under {accel}: {}", out.trim());
}

/// Linked at 1 MiB with the ELF headers in the same segment, so the segment
/// starts at 0xff000, in the BIOS area below 1 MiB.
fn headers_below_1mib() -> Vec<u8> {
    multiboot_kernel("segment-at-0xff000", 0xf_f000, 0x1000, 0x2000)
}

/// Loads at 0x8000 with 64 KiB of bss: over where the loader's block and
/// stack would go if it did not move them.
fn loads_at_0x8000() -> Vec<u8> {
    multiboot_kernel("segment-at-0x8000", 0x8000, 0x100, 0x1_0000)
}

#[test]
fn multiboot_segment_at_0xff000_in_the_interpreter() {
    run_multiboot("segment-at-0xff000", &headers_below_1mib(), "interp");
}

#[test]
fn multiboot_segment_at_0x8000_in_the_interpreter() {
    run_multiboot("segment-at-0x8000", &loads_at_0x8000(), "interp");
}

#[test]
fn multiboot_segments_below_1mib_under_the_jit() {
    run_multiboot("segment-at-0xff000", &headers_below_1mib(), "jit");
    run_multiboot("segment-at-0x8000", &loads_at_0x8000(), "jit");
}

#[test]
fn multiboot_segments_below_1mib_under_kvm() {
    if !kvm::usable() {
        return;
    }
    run_multiboot("segment-at-0xff000", &headers_below_1mib(), "kvm");
    run_multiboot("segment-at-0x8000", &loads_at_0x8000(), "kvm");
}

/// A multiboot kernel over the ACPI tables is refused with both ranges named.
#[test]
fn multiboot_segment_over_the_acpi_tables_is_refused() {
    let k = multiboot_kernel("over-acpi", 0xe_0000, 0x100, 0);
    let path = tmp("over-acpi.elf");
    std::fs::write(&path, k).unwrap();
    let o = ferrovm(&["run", "--accel", "interp", "--kernel", path.to_str().unwrap(), "--timeout", "10"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "stderr: {err}");
    assert!(
        err.contains("ELF segment 0 at 0xe0000..") && err.contains("overlaps the ACPI tables at 0xe0000.."),
        "{err}"
    );
}

fn images() -> Option<PathBuf> {
    images::images(&["vmlinuz-686", "initramfs-i386.cpio.gz", "memtest86+x64.bin"])
}

/// The shell script the 32-bit guest runs: the boot test's checks.
const SCRIPT: &str = r#"
echo "T:uname $(uname -m) $(uname -r)"
echo "T:flags $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)"
echo "T:seq $(seq 1 100000 | sha256sum | cut -d' ' -f1)"
echo "T:gzip $(seq 1 100000 | gzip -c | gzip -dc | sha256sum | cut -d' ' -f1)"
dmesg > /tmp/dmesg
echo "T:dmesg-lines $(wc -l < /tmp/dmesg)"
grep -iE 'spurious|unexpected irq|clocksource.*unstable|APIC.*calibrat.*fail|WARNING:|unchecked MSR|invalid opcode' /tmp/dmesg | sed 's/^/T:bad /'
echo "T:clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "T:done"
"#;

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&format!("T:{key} ")))
}

fn host_sha256(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("host shell");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// Debian's 686 kernel (no 64-bit entry) on the default boot path: the
/// classic path through the 32-bit boot protocol, the kernel's own xz
/// decompressor, init from an i386 busybox. Under the JIT in the CI run
/// (its 32-bit code with segments the JIT does not flatten runs in the
/// interpreter there); the whole boot in the interpreter takes about three
/// minutes, outside it.
#[test]
fn debian_686_kernel_boots_to_init_under_the_jit() {
    debian_686("jit");
}

#[test]
#[ignore = "outside CI for time: about three minutes; the JIT boots this kernel in CI"]
fn debian_686_kernel_boots_to_init_in_the_interpreter() {
    debian_686("interp");
}

fn debian_686(accel: &str) {
    let Some(dir) = images() else { return };
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(SCRIPT.as_bytes()));
    let t = Instant::now();
    let kernel = dir.join("vmlinuz-686");
    let initrd = dir.join("initramfs-i386.cpio.gz");
    let o = ferrovm(&[
        "run",
        "--accel",
        accel,
        "--mem",
        "512M",
        "--serial",
        "stdio",
        "--timeout",
        "900",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        &cmdline,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("ferrovm-init: start"), "init never started:\n{out}\nstderr: {err}");
    assert!(out.contains("T:done"), "the script did not finish:\n{out}");
    let uname = field(&out, "uname").expect("uname");
    assert!(uname.starts_with("i686 ") && uname.ends_with("-686"), "uname: {uname}");
    let flags: Vec<&str> = field(&out, "flags").expect("flags").split_whitespace().collect();
    for f in ["fpu", "tsc", "msr", "pae", "cx8", "apic", "sep", "cmov", "mmx", "fxsr", "sse", "sse2", "pni"] {
        assert!(flags.contains(&f), "flag {f} missing from /proc/cpuinfo: {flags:?}");
    }
    let want = host_sha256("seq 1 100000 | sha256sum");
    assert_eq!(field(&out, "seq"), Some(want.as_str()), "seq | sha256sum");
    assert_eq!(field(&out, "gzip"), Some(want.as_str()), "gzip round trip");
    let bad: Vec<&str> = out.lines().filter(|l| l.starts_with("T:bad ")).collect();
    assert!(bad.is_empty(), "dmesg complaints: {bad:#?}");
    assert_eq!(o.status.code(), Some(0), "poweroff -f must end the run with status 0; stderr: {err}");
    println!("{uname} booted and checked under {accel} in {:.1} s", t.elapsed().as_secs_f64());
}

/// memtest86+ 6.10's bzImage (`memtest86+x64.bin`: boot protocol 2.12, no
/// payload) with no flags but its console: it starts, draws its screen on
/// the serial console and runs its first test without finding errors; the
/// run is stopped once it has (a slow, loaded host gets two minutes). `accel`
/// None: the default engine.
fn memtest(accel: Option<&str>) {
    let Some(dir) = images() else { return };
    let kernel = dir.join("memtest86+x64.bin");
    let mut args = vec!["run", "--serial", "stdio", "--timeout", "150", "--mem", "256M"];
    if let Some(a) = accel {
        args.extend(["--accel", a]);
    }
    args.extend(["--kernel", kernel.to_str().unwrap(), "--append", "console=ttyS0,115200"]);
    let mut wants = vec!["Memtest86+ v6.10", "Memory  :  256MB", "Errors: 0"];
    // kvm_pvm runs ring-0 code in KVM's instruction emulator, and memtest
    // is all ring 0: under the default engine (KVM) there its first test
    // starts after 6-7 s on a quiet host and after minutes on a loaded one.
    // There the run must draw its screen and stay up.
    if accel.is_some() || !(hvf_kvm_accel::open().is_ok() && kvm::emulates_ring0()) {
        wants.push("[Address test, walking ones, no cache]");
    } else {
        println!("kvm_pvm: memtest's ring 0 runs in KVM's emulator; its screen is checked, not its first test");
    }
    let t = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferrovm runs");
    let (out, running) = run_until(child, |out| wants.iter().all(|w| out.contains(w)), 120);
    for &want in &wants {
        assert!(out.contains(want), "{want:?} missing from memtest's serial output:\n{out}");
    }
    assert!(running, "memtest runs on after its first test:\n{out}");
    let errors = out.match_indices("Errors: ").filter(|(i, _)| !out[i + 8..].starts_with('0')).count();
    assert_eq!(errors, 0, "memtest reports memory errors:\n{out}");
    println!(
        "memtest86+ ({}): {:?} after {:.1} s, {} bytes of serial output",
        accel.unwrap_or("default engine"),
        wants.last().unwrap_or(&""),
        t.elapsed().as_secs_f64(),
        out.len()
    );
}

#[test]
fn memtest86plus_starts_and_tests_memory_in_the_interpreter() {
    memtest(Some("interp"));
}

#[test]
fn memtest86plus_starts_with_the_default_flags() {
    memtest(None);
}
