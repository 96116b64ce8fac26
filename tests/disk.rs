//! Disks: `--disk` on the command line, and a Linux guest writing to a raw
//! image and to a qcow2 overlay made by `qemu-img create -b`.
//!
//! The guest is Debian's generic kernel with `initramfs-net.cpio.gz` (built
//! by `scripts/guest-images.sh`) and, appended to it here, the generic
//! kernel's `virtio_blk.ko` (newer images carry it already). It loads the
//! virtio modules, builds 64 MiB of data (a random MiB, each copy headed
//! by its index), writes it to both disks, `sync`s (a FLUSH), drops its
//! caches, reads both disks back and prints the hashes, and powers off.
//! The host then checks: the raw image's first 64 MiB have the guest's
//! hash; `qemu-img check` finds the overlay clean and `qemu-img convert`
//! of it gives the guest's data over the base's rest; the base is
//! unchanged, byte for byte. Without the images, qemu-img or cpio, the
//! tests say so and pass.
//!
//! A multiboot kernel with a minimal legacy virtio-blk driver writes three
//! sectors, notifying through the legacy register and the modern address
//! in turn: in the interpreter through the register, under KVM (with the
//! kernel in KVM) by ioeventfd to the I/O thread, the interrupt by irqfd.
//!
//! SIGKILL: ferrovm is killed while the guest writes 64 KiB records to a
//! qcow2 overlay with `conv=fsync`; every record the guest saw acknowledged
//! is in the image, and `qemu-img check` finds no error. The same on an
//! IDE disk (ata_piix and sd_mod, with the drive's write cache on, so each
//! fsync is a FLUSH CACHE), raw and qcow2.
//!
//! A floppy: Linux's floppy driver reads a 1.44 MB image from `-fda`
//! through the 82077AA and the 8237's channel 2, its hash the host's, and
//! copies a cylinder onto another, which the host finds in the image.
//!
//! A folder as a FAT disk (QEMU's `fat:rw:`): Linux's vfat reads it and
//! changes it, and the folder holds the changes after power-off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrovm_bench::disk::{IDE_MODULES, VIRTIO_MODULES};
use iced_x86::code_asm::*;

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/multiboot.rs"]
mod multiboot;
#[path = "guest/run.rs"]
mod run;
use encode::base64;
use multiboot::{multiboot_elf, print32, CODE_OFF, LOAD};
use run::{ferrovm, tmp};

/// One guest at a time: the host has few cores.
static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The disk sizes: the guest writes the first [`WRITTEN`] bytes of each.
const DISK_BYTES: u64 = 128 << 20;
const WRITTEN: u64 = 64 << 20;
/// The longest a guest run may take.
const LIMIT_SECS: u64 = 900;

const SCRIPT: &str = r#"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
    insmod /lib/modules/$m.ko 2>/dev/null || grep -q "^$m " /proc/modules || echo "T:insmod-failed $m"
done
echo "T:sizes $(cat /sys/block/vda/size) $(cat /sys/block/vdb/size)"
echo "T:features $(cat /sys/block/vda/queue/write_cache) $(cat /sys/block/vda/queue/discard_max_bytes)"
head -c 1048576 /dev/urandom > /tmp/r
i=0
while [ $i -lt 64 ]; do
    { echo "block $i"; cat /tmp/r; } | head -c 1048576
    i=$((i + 1))
done > /tmp/data
echo "T:data $(wc -c < /tmp/data) $(sha256sum /tmp/data | cut -d' ' -f1)"
rm /tmp/r
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/tmp/data of=/dev/vda bs=1M conv=fsync 2>/dev/null || echo "T:write-failed vda"
dd if=/tmp/data of=/dev/vdb bs=1M conv=fsync 2>/dev/null || echo "T:write-failed vdb"
sync
t1=$(cut -d' ' -f1 /proc/uptime)
rm /tmp/data
echo 3 > /proc/sys/vm/drop_caches
echo "T:vda $(dd if=/dev/vda bs=1M count=64 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "T:vdb $(dd if=/dev/vdb bs=1M count=64 2>/dev/null | sha256sum | cut -d' ' -f1)"
t2=$(cut -d' ' -f1 /proc/uptime)
echo "T:times $t0 $t1 $t2"
dmesg | grep -iE 'virtio_blk|vd[ab]|I/O error|blk_update' | sed 's/^/T:dmesg /'
echo "T:done"
"#;

fn images() -> Option<PathBuf> {
    images::images(&["vmlinuz-generic", "initramfs-net.cpio.gz", "modules-generic/kernel/drivers/block/virtio_blk.ko"])
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !ok {
        eprintln!("skipping: {tool} is not installed");
    }
    ok
}

fn sh(script: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(script).output().expect("sh runs");
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// sha256 of the first `len` bytes of a file (the host's coreutils).
fn sha256(path: &Path, len: u64) -> String {
    sh(&format!("head -c {len} '{}' | sha256sum", path.display())).split_whitespace().next().unwrap().to_string()
}

/// initramfs-net.cpio.gz with virtio_blk.ko appended as a second archive.
fn initrd(dir: &Path, work: &Path) -> PathBuf {
    let root = work.join("blk-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("lib/modules")).unwrap();
    std::fs::copy(
        dir.join("modules-generic/kernel/drivers/block/virtio_blk.ko"),
        root.join("lib/modules/virtio_blk.ko"),
    )
    .unwrap();
    let out = work.join("initramfs-blk.cpio.gz");
    sh(&format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > ../extra.cpio.gz && cat '{}' ../extra.cpio.gz > '{}'",
        root.display(),
        dir.join("initramfs-net.cpio.gz").display(),
        out.display()
    ));
    out
}

/// The T: lines of the guest's output by key.
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("T:{key} ");
    out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
}

fn guest_writes_disks(accel: &str) {
    let Some(dir) = images() else { return };
    if !have("qemu-img") || !have("cpio") {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let work = tmp("disk", accel);
    let initrd = initrd(&dir, &work);
    // A sparse raw disk, and a raw base with a pattern under a qcow2 overlay.
    let raw = work.join("disk.raw");
    std::fs::File::create(&raw).unwrap().set_len(DISK_BYTES).unwrap();
    let base = work.join("base.raw");
    let pattern: Vec<u8> = (0..DISK_BYTES).map(|i| (i / 4096 % 251) as u8).collect();
    std::fs::write(&base, &pattern).unwrap();
    drop(pattern);
    let overlay = work.join("overlay.qcow2");
    let _ = std::fs::remove_file(&overlay);
    sh(&format!("qemu-img create -q -f qcow2 -b base.raw -F raw '{}'", overlay.display()));
    let base_hash = sha256(&base, DISK_BYTES);

    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(SCRIPT.as_bytes()));
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--accel", accel, "--mem", "512M", "--serial", "stdio", "--stats"])
        .args(["--timeout", &LIMIT_SECS.to_string()])
        .arg("--disk")
        .arg(format!("{},format=raw", raw.display()))
        .arg("--disk")
        .arg(overlay.display().to_string())
        .arg("--kernel")
        .arg(dir.join("vmlinuz-generic"))
        .arg("--initrd")
        .arg(&initrd)
        .arg("--append")
        .arg(&cmdline)
        .stdin(Stdio::null())
        .output()
        .expect("ferrovm runs");
    let took = t.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let tail: String = out.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let ctx = format!("--- serial (tail):\n{tail}\n--- stderr:\n{err}");
    assert!(field(&out, "done").is_some() || out.contains("T:done"), "{accel}: the script did not finish\n{ctx}");
    assert_eq!(o.status.code(), Some(0), "{accel}: poweroff ends the run\n{ctx}");
    assert!(!out.contains("T:insmod-failed") && !out.contains("T:write-failed"), "{accel}\n{ctx}");
    let sectors = (DISK_BYTES / 512).to_string();
    assert_eq!(field(&out, "sizes"), Some(format!("{sectors} {sectors}").as_str()), "{accel}\n{ctx}");
    let data = field(&out, "data").unwrap_or_default();
    let (len, hash) = data.split_once(' ').unwrap_or_default();
    assert_eq!(len, WRITTEN.to_string(), "{accel}\n{ctx}");
    assert_eq!(field(&out, "vda"), Some(hash), "{accel}: the guest reads back what it wrote to vda\n{ctx}");
    assert_eq!(field(&out, "vdb"), Some(hash), "{accel}: the guest reads back what it wrote to vdb\n{ctx}");
    // The host's view.
    assert_eq!(sha256(&raw, WRITTEN), hash, "{accel}: the raw image holds the guest's data");
    let check = Command::new("qemu-img").arg("check").arg(&overlay).output().unwrap();
    let check_out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && check_out.contains("No errors"), "{accel}: qemu-img check: {check_out}");
    let converted = work.join("converted.raw");
    sh(&format!("qemu-img convert -O raw '{}' '{}'", overlay.display(), converted.display()));
    assert_eq!(sha256(&converted, WRITTEN), hash, "{accel}: the overlay holds the guest's data");
    let rest = sh(&format!(
        "tail -c {} '{}' | sha256sum; tail -c {} '{}' | sha256sum",
        DISK_BYTES - WRITTEN,
        converted.display(),
        DISK_BYTES - WRITTEN,
        base.display()
    ));
    let rest: Vec<&str> = rest.lines().collect();
    assert_eq!(rest[0], rest[1], "{accel}: past the written part the overlay shows the base");
    assert_eq!(sha256(&base, DISK_BYTES), base_hash, "{accel}: the base is unchanged");
    // FLUSH reached the device (the stats line of each disk).
    let disks: Vec<&str> = err.lines().filter(|l| l.contains("ferrovm: disk ")).collect();
    assert_eq!(disks.len(), 2, "{accel}: a stats line per disk\n{err}");
    for l in &disks {
        let flushes: u64 =
            l.split(", ").find_map(|p| p.strip_suffix(" flushes")).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(flushes > 0, "{accel}: sync flushed the disk: {l}");
        assert!(l.contains(" 0 errors"), "{accel}: {l}");
    }
    let times: Vec<f64> = field(&out, "times").unwrap_or_default().split(' ').filter_map(|x| x.parse().ok()).collect();
    if let [t0, t1, t2] = times[..] {
        let mib = (2 * WRITTEN) as f64 / f64::from(1 << 20);
        eprintln!(
            "{accel}: wrote 2 x 64 MiB + sync in {:.2} s guest time ({:.1} MiB/s), read back and hashed in {:.2} s ({:.1} MiB/s); run {:.1} s",
            t1 - t0,
            mib / (t1 - t0).max(0.001),
            t2 - t1,
            mib / (t2 - t1).max(0.001),
            took.as_secs_f64()
        );
    }
    for l in disks {
        eprintln!("{accel}: {l}");
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// Six minutes in the interpreter on a 2-core host: outside the CI run
/// (`cargo test --test disk -- --ignored`); the JIT and KVM runs below do
/// the same in CI, and the interpreter's virtio-blk path runs there through
/// the multiboot driver and the SIGKILL test.
#[test]
#[ignore = "long in the interpreter: about 6 minutes"]
fn guest_writes_raw_and_qcow2_overlay_in_the_interpreter() {
    guest_writes_disks("interp");
}

#[test]
fn guest_writes_raw_and_qcow2_overlay_under_kvm() {
    if !run::kvm_usable() {
        return;
    }
    guest_writes_disks("kvm");
}

/// Runs ferrovm; asserts it fails with a message naming `want`.
fn refused(args: &[&str], want: &str) {
    let o = ferrovm(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: wanted '{want}' in: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{args:?}: {err}");
}

#[test]
fn bad_disk_options_are_refused_clearly() {
    let img = tmp("disk-cli", "small.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let p = img.to_str().unwrap();
    refused(&["run", "--disk", "/nonexistent/x.img"], "/nonexistent/x.img");
    refused(&["run", "--disk", &format!("{p},format=vmdk")], "format");
    refused(&["run", "--disk", &format!("{p},if=scsi")], "if=virtio, if=ide or if=floppy");
    refused(&["run", "--disk", &format!("{p},if=virtio,media=cdrom")], "if=ide");
    refused(&["run", "--disk", &format!("{p},if=floppy,index=2")], "A:");
    refused(&["run", "--disk", &format!("{p},cache=none")], "cache");
    refused(&["run", "--disk", ",format=raw"], "path");
    // A file that claims to be qcow2 but is not.
    let bad = tmp("disk-cli", "bad.qcow2");
    let mut b = vec![0u8; 4096];
    b[..4].copy_from_slice(b"QFI\xfb");
    b[7] = 3;
    std::fs::write(&bad, &b).unwrap();
    refused(&["run", "--disk", bad.to_str().unwrap()], "not a valid qcow2 image");
    refused(&["run", "--disk", &format!("{p},format=qcow2")], "no qcow2 magic");
}

#[test]
fn a_second_writer_is_refused() {
    // The first process runs a ROM that spins (`jmp $`) with the disk.
    let rom_path = tmp("disk-lock", "spin.rom");
    let mut rom = vec![0xf4u8; 0x10000];
    rom[0xfff0] = 0xeb;
    rom[0xfff1] = 0xfe;
    std::fs::write(&rom_path, &rom).unwrap();
    let img = tmp("disk-lock", "shared.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("{},format=raw", img.display());
    let spawn_first = || {
        Command::new(env!("CARGO_BIN_EXE_ferrovm"))
            .args(["run", "--accel", "interp", "--serial", "none", "--timeout", "30", "--bios"])
            .arg(&rom_path)
            .args(["--disk", &disk])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = spawn_first();
    // Wait until the first one holds its lock: a reader is then refused.
    // (Starting it can take long while other tests load the host's disk.)
    let t = Instant::now();
    loop {
        let o = ferrovm(&["run", "--disk", &format!("{disk},readonly=on"), "--mem", "1M"]);
        if String::from_utf8_lossy(&o.stderr).contains("being written") {
            break;
        }
        if let Ok(Some(status)) = first.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = first.stderr.take().map(|mut e| e.read_to_string(&mut err));
            // The probe's own read lock, held for a moment, refuses a
            // writer that opens the image just then: start it again.
            assert!(
                err.contains("in use by another process"),
                "the first process ended ({status}) before it locked the image: {err}"
            );
            first = spawn_first();
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the first process never locked the image; the reader's last answer: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    refused(&["run", "--disk", &disk], "in use by another process");
    // --snapshot only reads the image, but a writer holds it.
    refused(&["run", "--disk", &disk, "--snapshot"], "being written");
    let _ = first.kill();
    let _ = first.wait();
    // Once it is gone, the image is free again (the lock died with it):
    // this run fails later, on its memory size, not on the lock.
    refused(&["run", "--disk", &disk, "--mem", "1M"], "--mem");
}

/// Requests the multiboot driver sends: OUT of sector i, 512 bytes of the
/// byte `0x11 * (i + 1)`.
const BLK_REQUESTS: u32 = 3;

/// `out` of the low `size` bytes of `value` to `port`.
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

/// A multiboot kernel with a minimal legacy virtio-blk driver: finds the
/// disk in slot 3 (1AF4:1001), maps its I/O BAR at 0xc000 and its modern
/// BAR at 0xfe000000, MSI-X entry 0 to vector 0x45 for the queue, sets up
/// queue 0 at 2 MiB and sends [`BLK_REQUESTS`] writes (header, data,
/// status: three descriptors each), waiting for each to come back with
/// status OK. Prints "virtio-blk: written", takes the interrupt, prints
/// "virtio-blk: interrupt" and exits through debug-exit 0x21 (status 0x43).
fn virtio_blk_kernel() -> Vec<u8> {
    let (_, handler_at) = virtio_blk_code(0).unwrap();
    let (code, again) = virtio_blk_code(handler_at).unwrap();
    assert_eq!(again, handler_at);
    multiboot_elf(&code)
}

fn virtio_blk_code(handler_at: u32) -> Result<(Vec<u8>, u32), IcedError> {
    const IOB: u32 = 0xc000;
    const RING: u32 = 0x20_0000;
    const BUFS: u32 = 0x30_0000;
    const MODERN: u32 = 0xfe00_0000;
    const MSIX: u32 = 0xfe10_0000;
    const LAPIC: u32 = 0xfee0_0000;
    const IDT: u32 = 0x3000;
    const VECTOR: u32 = 0x45;
    let cfg = |reg: u32| 0x8000_0000u32 | (3 << 11) | reg;
    let mut a = CodeAssembler::new(32)?;
    let a = &mut a;
    let mut fail_id = a.create_label();
    let mut fail_vector = a.create_label();
    let mut fail_status = a.create_label();
    let mut timeout = a.create_label();
    let mut handler = a.create_label();
    a.mov(esp, 0x9_0000u32)?;
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
    a.mov(dword_ptr(LAPIC + 0xf0), 0x1ffu32)?;
    out(a, 0xcf8, cfg(0), 4)?;
    a.mov(dx, 0xcfcu32)?;
    a.in_(eax, dx)?;
    a.cmp(eax, 0x1001_1af4u32)?;
    a.jne(fail_id)?;
    for (reg, value) in [(0x10, IOB), (0x14, MSIX), (0x20, MODERN), (0x24, 0), (0x04, 0x7)] {
        out(a, 0xcf8, cfg(reg), 4)?;
        out(a, 0xcfc, value, 4)?;
    }
    // ACKNOWLEDGE | DRIVER, no features, queue 0 (its size in ECX).
    out(a, IOB + 0x12, 3, 1)?;
    out(a, IOB + 0x04, 0, 4)?;
    out(a, IOB + 0x0e, 0, 2)?;
    a.mov(dx, IOB + 0x0c)?;
    a.in_(ax, dx)?;
    a.movzx(ecx, ax)?;
    out(a, IOB + 0x08, RING >> 12, 4)?;
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
    // avail after 16 bytes per descriptor; used at the next 4 KiB.
    a.mov(esi, ecx)?;
    a.shl(esi, 4u32)?;
    a.add(esi, RING)?;
    a.lea(edi, ptr(esi + ecx * 2 + (6 + 4095)))?;
    a.and(edi, !4095u32)?;
    out(a, IOB + 0x12, 7, 1)?;
    // Request i: header at BUFS + 0x1000 i, data at + 0x200, status at + 0x400;
    // descriptors 3i, 3i + 1, 3i + 2.
    a.xor(ebx, ebx)?;
    let mut next = a.create_label();
    a.set_label(&mut next)?;
    a.mov(ebp, ebx)?;
    a.shl(ebp, 12u32)?;
    a.add(ebp, BUFS)?;
    a.mov(dword_ptr(ebp), 1u32)?; // OUT
    a.mov(dword_ptr(ebp + 4), 0u32)?;
    a.mov(dword_ptr(ebp + 8), ebx)?; // sector i
    a.mov(dword_ptr(ebp + 12), 0u32)?;
    a.mov(byte_ptr(ebp + 0x400), 0xffu32)?;
    // The data: 128 dwords of 0x11 * (i + 1) in each byte.
    a.lea(eax, ptr(ebx + 1))?;
    a.imul_3(eax, eax, 0x1111_1111u32)?;
    a.push(edi)?;
    a.lea(edi, ptr(ebp + 0x200))?;
    a.mov(ecx, 128u32)?;
    a.rep().stosd()?;
    a.pop(edi)?;
    // Descriptors: ECX = 48 i (3 descriptors of 16 bytes).
    a.imul_3(ecx, ebx, 48u32)?;
    a.mov(dword_ptr(ecx + RING), ebp)?;
    a.mov(dword_ptr(ecx + RING + 4), 0u32)?;
    a.mov(dword_ptr(ecx + RING + 8), 16u32)?;
    a.lea(eax, ptr(ebx + ebx * 2 + 1))?;
    a.shl(eax, 16u32)?;
    a.or(eax, 1u32)?; // NEXT, next = 3i + 1
    a.mov(dword_ptr(ecx + RING + 12), eax)?;
    a.lea(eax, ptr(ebp + 0x200))?;
    a.mov(dword_ptr(ecx + RING + 16), eax)?;
    a.mov(dword_ptr(ecx + RING + 20), 0u32)?;
    a.mov(dword_ptr(ecx + RING + 24), 512u32)?;
    a.lea(eax, ptr(ebx + ebx * 2 + 2))?;
    a.shl(eax, 16u32)?;
    a.or(eax, 1u32)?; // NEXT, next = 3i + 2
    a.mov(dword_ptr(ecx + RING + 28), eax)?;
    a.lea(eax, ptr(ebp + 0x400))?;
    a.mov(dword_ptr(ecx + RING + 32), eax)?;
    a.mov(dword_ptr(ecx + RING + 36), 0u32)?;
    a.mov(dword_ptr(ecx + RING + 40), 1u32)?;
    a.mov(dword_ptr(ecx + RING + 44), 2u32)?; // WRITE
    a.lea(eax, ptr(ebx + ebx * 2))?;
    a.mov(word_ptr(esi + ebx * 2 + 4), ax)?;
    a.lea(eax, ptr(ebx + 1))?;
    a.mov(word_ptr(esi + 2), ax)?;
    let mut modern = a.create_label();
    let mut notified = a.create_label();
    a.test(ebx, 1u32)?;
    a.jnz(modern)?;
    out(a, IOB + 0x10, 0, 2)?;
    a.jmp(notified)?;
    a.set_label(&mut modern)?;
    a.mov(word_ptr(MODERN + 0x3000), 0u32)?;
    a.set_label(&mut notified)?;
    a.inc(ebx)?;
    a.mov(ecx, 20_000_000u32)?;
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
    a.cmp(byte_ptr(ebp + 0x400), 0u32)?;
    a.jne(fail_status)?;
    a.cmp(ebx, BLK_REQUESTS)?;
    a.jb(next)?;
    print32(a, "virtio-blk: written\n")?;
    a.sti()?;
    a.hlt()?;
    print32(a, "virtio-blk: woke without the interrupt\n")?;
    a.mov(al, 0x33u32)?;
    a.out(0xf4u32, al)?;
    a.set_label(&mut handler)?;
    print32(a, "virtio-blk: interrupt\n")?;
    a.mov(dword_ptr(LAPIC + 0xb0), 0u32)?;
    a.mov(al, 0x21u32)?;
    a.out(0xf4u32, al)?;
    for (label, what) in [
        (&mut fail_id, "virtio-blk: no virtio-blk in slot 3\n"),
        (&mut fail_vector, "virtio-blk: the queue did not take MSI-X entry 0\n"),
        (&mut fail_status, "virtio-blk: a request failed\n"),
        (&mut timeout, "virtio-blk: the device never answered\n"),
    ] {
        a.set_label(label)?;
        print32(a, what)?;
        a.mov(al, 0x33u32)?;
        a.out(0xf4u32, al)?;
    }
    a.hlt()?;
    let r =
        a.assemble_options(u64::from(LOAD + CODE_OFF), iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let at = r.label_ip(&handler)? as u32;
    Ok((r.inner.code_buffer, at))
}

/// Runs the multiboot virtio-blk driver with `args`; checks the sectors it
/// wrote; returns ferrovm's stderr (statistics).
fn run_virtio_blk(name: &str, args: &[&str]) -> String {
    let kernel = tmp("disk-mb", &format!("virtio-blk-{name}.elf"));
    std::fs::write(&kernel, virtio_blk_kernel()).unwrap();
    let img = tmp("disk-mb", &format!("virtio-blk-{name}.img"));
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("{},format=raw", img.display());
    let mut all = vec!["run", "--kernel", kernel.to_str().unwrap(), "--serial", "stdio", "--stats", "--timeout", "120"];
    all.extend_from_slice(&["--disk", &disk]);
    all.extend_from_slice(args);
    let o = ferrovm(&all);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(out.contains("virtio-blk: written\nvirtio-blk: interrupt\n"), "stdout: {out}\nstderr: {err}");
    assert_eq!(o.status.code(), Some(0x43), "stderr: {err}");
    let data = std::fs::read(&img).unwrap();
    for i in 0..BLK_REQUESTS as usize {
        let want = 0x11 * (i as u8 + 1);
        assert!(data[i * 512..(i + 1) * 512].iter().all(|&b| b == want), "sector {i}");
    }
    assert!(data[BLK_REQUESTS as usize * 512..].iter().all(|&b| b == 0), "nothing else written");
    assert!(err.contains("3 writes 1536 bytes"), "{err}");
    err
}

#[test]
fn virtio_blk_driver_writes_through_the_register_in_the_interpreter() {
    let err = run_virtio_blk("interp", &["--accel", "interp"]);
    assert!(!err.contains("by ioeventfd"), "{err}");
}

/// Under KVM (with the kernel in KVM too), each queue notification goes to
/// the I/O thread by ioeventfd, which serves the request; the interrupt
/// comes back by irqfd.
#[test]
fn virtio_blk_driver_writes_through_ioeventfd_under_kvm() {
    if !run::kvm_usable() {
        return;
    }
    let err = run_virtio_blk("kvm", &["--accel", "kvm", "--kvm-split", "off"]);
    eprintln!("{err}");
    // One queue, with a legacy register and a modern address.
    assert!(err.contains("virtio doorbells on ioeventfd: 2 attached"), "{err}");
    assert!(err.contains("; 3 queue notifications by ioeventfd"), "{err}");
    if err.contains("interrupt controllers: in-kernel") {
        assert!(err.contains("message interrupts: 3 by irqfd (1 routes), 0 by KVM_SIGNAL_MSI"), "{err}");
    }
}

/// The guest of the SIGKILL test: 64 KiB records, each headed by its
/// index, written to @DEV@ with `conv=fsync` and reported once
/// acknowledged.
const KILL_SCRIPT: &str = r#"
for m in @MODULES@; do
    insmod /lib/modules/$m.ko 2>/dev/null
done
i=0
while [ ! -b @DEV@ ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "T:cache $(cat /sys/block/$(basename @DEV@)/queue/write_cache)"
i=0
while [ $i -lt 2000 ]; do
    { echo "record $i"; head -c 65536 /dev/urandom; } | head -c 65536 > /tmp/rec
    dd if=/tmp/rec of=@DEV@ bs=65536 seek=$i conv=fsync 2>/dev/null && echo "T:acked $i"
    i=$((i + 1))
done
"#;

/// ferrovm is killed (SIGKILL) while the guest writes and fsyncs records
/// to a qcow2 overlay on virtio-blk: every record the guest saw
/// acknowledged is in the image afterwards, and `qemu-img check` finds no
/// corruption.
fn killed_while_writing(accel: &str) {
    killed_while_writing_to(accel, false, "qcow2");
}

/// [`killed_while_writing`] on an IDE disk (`ide`) or virtio-blk, the
/// image `format` raw or a qcow2 overlay.
fn killed_while_writing_to(accel: &str, ide: bool, format: &str) {
    use std::io::{BufRead, BufReader};
    let Some(dir) = images() else { return };
    if !have("qemu-img") || !have("cpio") || (ide && images::images(&["initramfs.cpio.gz"]).is_none()) {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let bus = if ide { "ide" } else { "virtio" };
    let work = tmp("disk", &format!("kill-{accel}-{bus}-{format}"));
    let (initrd, modules, dev) = if ide {
        let out = work.join("initrd-ide.gz");
        images::initrd_with_modules(&dir, IDE_MODULES, &work.join("ide-mods"), &out);
        (out, IDE_MODULES.join(" "), "/dev/sda")
    } else {
        (initrd(&dir, &work), VIRTIO_MODULES.join(" "), "/dev/vda")
    };
    let base = work.join("base.raw");
    let _ = std::fs::remove_file(&base);
    std::fs::File::create(&base).unwrap().set_len(DISK_BYTES).unwrap();
    let image = if format == "qcow2" {
        let overlay = work.join("overlay.qcow2");
        let _ = std::fs::remove_file(&overlay);
        sh(&format!("qemu-img create -q -f qcow2 -b base.raw -F raw '{}'", overlay.display()));
        overlay
    } else {
        base.clone()
    };
    let script = KILL_SCRIPT.replace("@MODULES@", &modules).replace("@DEV@", dev);
    let cmdline = format!("console=ttyS0 ferrovm.cmd={}", base64(script.as_bytes()));
    let disk = match ide {
        true => format!("{},format={format},if=ide", image.display()),
        false => format!("{},format={format}", image.display()),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--accel", accel, "--mem", "512M", "--serial", "stdio"])
        .args(["--timeout", &LIMIT_SECS.to_string()])
        .arg("--disk")
        .arg(&disk)
        .arg("--kernel")
        .arg(dir.join("vmlinuz-generic"))
        .arg("--initrd")
        .arg(&initrd)
        .arg("--append")
        .arg(&cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferrovm starts");
    let mut acked: Option<u64> = None;
    let mut cache = None;
    let mut tail = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if let Some(c) = line.trim_end().strip_prefix("T:cache ") {
            cache = Some(c.to_string());
        }
        if let Some(n) = line.trim_end().strip_prefix("T:acked ").and_then(|n| n.parse().ok()) {
            acked = Some(n);
            if n >= 40 {
                // Mid-write of the next record, most likely.
                std::thread::sleep(Duration::from_millis(30));
                child.kill().unwrap();
                break;
            }
        }
        tail.push(line);
    }
    let _ = child.wait();
    let what = format!("{accel}, {bus}, {format}");
    let acked = acked.unwrap_or_else(|| panic!("{what}: no record acknowledged:\n{}", tail.join("\n")));
    // A write-back cache: each fsync reached the drive as a flush.
    assert_eq!(cache.as_deref(), Some("write back"), "{what}: the drive's write cache");
    let data = if format == "qcow2" {
        let check = Command::new("qemu-img").arg("check").arg(&image).output().unwrap();
        let check_out = String::from_utf8_lossy(&check.stdout).into_owned();
        eprintln!("{what}: killed after record {acked}; qemu-img check: {}", check_out.trim());
        assert!(!check_out.contains("ERROR") && !check_out.contains("corrupt"), "{what}: {check_out}");
        assert!(check.status.success(), "{what}: qemu-img check: {check:?}");
        let converted = work.join("converted.raw");
        sh(&format!("qemu-img convert -O raw '{}' '{}'", image.display(), converted.display()));
        std::fs::read(&converted).unwrap()
    } else {
        eprintln!("{what}: killed after record {acked}");
        std::fs::read(&image).unwrap()
    };
    for i in 0..=acked {
        let want = format!("record {i}\n");
        let at = (i * 65536) as usize;
        assert_eq!(&data[at..at + want.len()], want.as_bytes(), "{what}: acknowledged record {i} is in the image");
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn acknowledged_writes_survive_sigkill_under_kvm() {
    if !run::kvm_usable() {
        return;
    }
    killed_while_writing("kvm");
}

#[test]
#[ignore = "outside CI for time: runs in CI under the JIT and KVM"]
fn acknowledged_writes_survive_sigkill_in_the_interpreter() {
    killed_while_writing("interp");
}

/// The multiboot driver never sends FLUSH: its writes to a qcow2 image
/// still reach the file (data and metadata) when ferrovm exits.
#[test]
fn unflushed_qcow2_writes_are_written_back_at_exit() {
    if !have("qemu-img") {
        return;
    }
    let kernel = tmp("disk-mb", "virtio-blk-exit.elf");
    std::fs::write(&kernel, virtio_blk_kernel()).unwrap();
    let img = tmp("disk-mb", "virtio-blk-exit.qcow2");
    let _ = std::fs::remove_file(&img);
    sh(&format!("qemu-img create -q -f qcow2 '{}' 1M", img.display()));
    let disk = img.display().to_string();
    let o = ferrovm(&[
        "run",
        "--accel",
        "interp",
        "--kernel",
        kernel.to_str().unwrap(),
        "--serial",
        "stdio",
        "--disk",
        &disk,
    ]);
    assert_eq!(o.status.code(), Some(0x43), "{}", String::from_utf8_lossy(&o.stderr));
    let check = Command::new("qemu-img").arg("check").arg(&img).output().unwrap();
    assert!(String::from_utf8_lossy(&check.stdout).contains("No errors"), "{check:?}");
    let raw = tmp("disk-mb", "virtio-blk-exit.raw");
    sh(&format!("qemu-img convert -O raw '{}' '{}'", img.display(), raw.display()));
    let data = std::fs::read(&raw).unwrap();
    for i in 0..BLK_REQUESTS as usize {
        let want = 0x11 * (i as u8 + 1);
        assert!(data[i * 512..(i + 1) * 512].iter().all(|&b| b == want), "sector {i}");
    }
}

#[test]
fn virtio_blk_driver_writes_through_the_register_under_the_jit() {
    let err = run_virtio_blk("jit", &["--accel", "jit"]);
    assert!(!err.contains("by ioeventfd"), "{err}");
}

#[test]
fn acknowledged_writes_survive_sigkill_under_the_jit() {
    killed_while_writing("jit");
}

#[test]
fn acknowledged_ide_writes_to_a_raw_image_survive_sigkill_under_the_jit() {
    killed_while_writing_to("jit", true, "raw");
}

#[test]
fn acknowledged_ide_writes_to_a_qcow2_overlay_survive_sigkill_under_the_jit() {
    killed_while_writing_to("jit", true, "qcow2");
}

/// What the floppy guest runs: load the driver, read the whole disk,
/// copy cylinder 0 (both heads: 18 KiB) onto cylinder 40 with an fsync.
const FLOPPY_SCRIPT: &str = r#"
insmod /lib/modules/floppy.ko || echo "T:insmod-failed floppy"
i=0
while [ ! -b /dev/fd0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
dd if=/dev/fd0 of=/tmp/fd bs=18432 2>/dev/null && echo "T:sha $(sha256sum /tmp/fd | cut -d' ' -f1)"
echo "T:bytes $(wc -c < /tmp/fd)"
dd if=/dev/fd0 of=/dev/fd0 bs=18432 count=1 seek=40 conv=fsync 2>/dev/null && echo "T:copied"
dmesg | grep -iE 'floppy|fd0|I/O error' | sed 's/^/T:dmesg /'
echo "T:done"
"#;

/// Linux's floppy driver (floppy.ko) reads a 1.44 MB image from QEMU's
/// `-fda` and writes a cylinder back.
#[test]
fn linux_reads_and_writes_a_floppy_image_from_fda() {
    let Some(dir) = images::images(&["vmlinuz-generic", "initramfs.cpio.gz", "modules-generic/modules.order"]) else {
        return;
    };
    if !have("cpio") {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let work = tmp("disk", "floppy");
    let initrd = work.join("initrd-floppy.gz");
    images::initrd_with_modules(&dir, &["floppy"], &work.join("floppy-mods"), &initrd);
    // 2880 sectors, none like another.
    let image: Vec<u8> =
        (0..1_474_560u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i >> 9) as u8).collect();
    let img = work.join("floppy.img");
    std::fs::write(&img, &image).unwrap();
    let want = sha256(&img, image.len() as u64);
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(FLOPPY_SCRIPT.as_bytes()));
    let t = Instant::now();
    let args = images::generic_linux(&dir, &initrd, &cmdline, &["-fda", img.to_str().unwrap()]);
    let o = ferrovm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("floppy: {:.1} s", t.elapsed().as_secs_f64());
    let ctx = format!("stderr:\n{err}\nserial:\n{out}");
    assert!(out.contains("T:done"), "{ctx}");
    assert!(!out.contains("T:insmod-failed"), "{ctx}");
    assert_eq!(field(&out, "bytes").map(str::trim), Some("1474560"), "{ctx}");
    assert_eq!(field(&out, "sha"), Some(want.as_str()), "the floppy read back: {ctx}");
    assert!(out.contains("T:copied"), "{ctx}");
    assert!(!out.contains("I/O error"), "{ctx}");
    assert!(!err.contains("82077AA floppy") && !err.contains("8237 DMA"), "nothing unimplemented: {ctx}");
    assert_eq!(o.status.code(), Some(0), "{ctx}");
    let after = std::fs::read(&img).unwrap();
    assert_eq!(after.len(), image.len());
    let track = 18432;
    assert_eq!(&after[40 * track..41 * track], &image[..track], "cylinder 0 copied onto cylinder 40");
    assert!(
        after[..40 * track] == image[..40 * track] && after[41 * track..] == image[41 * track..],
        "the rest as it was"
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn guest_writes_raw_and_qcow2_overlay_under_the_jit() {
    guest_writes_disks("jit");
}

/// The guest's side of [`a_folder_is_a_fat_disk_that_linux_reads_and_writes_back`].
const FAT_SCRIPT: &str = r#"
for m in $MODULES; do
    insmod /lib/modules/$m.ko 2>/dev/null || grep -q "^$m " /proc/modules || echo "T:insmod-failed $m"
done
mkdir -p /mnt
mount -t vfat /dev/vda1 /mnt || echo "T:mount-failed"
echo "T:data $(sha256sum /mnt/sub/dir/data.bin | cut -d' ' -f1)"
echo "T:long $(cat '/mnt/A long file name.txt')"
echo "changed in the guest" > '/mnt/A long file name.txt'
echo "made in the guest" > /mnt/new.txt
rm /mnt/gone.txt
mkdir /mnt/newdir
head -c 300000 /dev/urandom > /mnt/newdir/rand.bin
echo "T:rand $(sha256sum /mnt/newdir/rand.bin | cut -d' ' -f1)"
umount /mnt && echo "T:umounted"
dmesg | grep -iE 'FAT-fs|I/O error' | sed 's/^/T:dmesg /'
echo "T:done"
"#;

/// QEMU's `-drive file=fat:rw:DIR`: a host folder as a FAT16 disk on
/// virtio-blk. Linux mounts it, reads a file in a subfolder (hash compared
/// with the host's) and one with a long name, then changes a file, makes
/// a file and a folder, and deletes a file; after power-off the folder
/// holds what the guest left, and the file it did not touch is as it was.
#[test]
fn a_folder_is_a_fat_disk_that_linux_reads_and_writes_back() {
    let Some(dir) = images::images(&["vmlinuz-generic", "initramfs.cpio.gz", "modules-generic/modules.order"]) else {
        return;
    };
    if !have("cpio") {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let work = tmp("disk", "fat");
    let modules: Vec<&str> = VIRTIO_MODULES.iter().copied().chain(["fat", "vfat", "nls_cp437", "nls_ascii"]).collect();
    let initrd = work.join("initrd-fat.gz");
    images::initrd_with_modules(&dir, &modules, &work.join("fat-mods"), &initrd);
    let folder = work.join("shared");
    std::fs::create_dir_all(folder.join("sub/dir")).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(folder.join("sub/dir/data.bin"), &data).unwrap();
    std::fs::write(folder.join("A long file name.txt"), "from the host\n").unwrap();
    std::fs::write(folder.join("gone.txt"), "to be deleted\n").unwrap();
    let want = sha256(&folder.join("sub/dir/data.bin"), data.len() as u64);
    let script = FAT_SCRIPT.replace("$MODULES", &modules.join(" "));
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(script.as_bytes()));
    let drive = format!("file=fat:rw:{},format=raw,if=virtio", folder.display());
    let t = Instant::now();
    let args = images::generic_linux(&dir, &initrd, &cmdline, &["-drive", &drive]);
    let o = ferrovm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("fat folder: {:.1} s", t.elapsed().as_secs_f64());
    let ctx = format!("stderr:\n{err}\nserial:\n{out}");
    assert!(out.contains("T:done") && out.contains("T:umounted"), "{ctx}");
    assert!(!out.contains("T:insmod-failed") && !out.contains("T:mount-failed"), "{ctx}");
    assert_eq!(field(&out, "data"), Some(want.as_str()), "the host's file read in the guest: {ctx}");
    assert_eq!(field(&out, "long"), Some("from the host"), "{ctx}");
    assert!(!out.contains("I/O error") && !err.contains("not all written back"), "{ctx}");
    assert_eq!(o.status.code(), Some(0), "{ctx}");
    // What the guest left, in the folder.
    let read = |p: &str| std::fs::read(folder.join(p)).unwrap_or_else(|e| panic!("{p}: {e}\n{ctx}"));
    assert_eq!(read("A long file name.txt"), b"changed in the guest\n");
    assert_eq!(read("new.txt"), b"made in the guest\n");
    assert!(!folder.join("gone.txt").exists(), "the file the guest deleted is gone: {ctx}");
    let rand = folder.join("newdir/rand.bin");
    assert_eq!(field(&out, "rand"), Some(sha256(&rand, 300_000).as_str()), "the guest's new file: {ctx}");
    assert_eq!(read("sub/dir/data.bin"), data, "the file the guest only read is unchanged");
    let _ = std::fs::remove_dir_all(&work);
}
