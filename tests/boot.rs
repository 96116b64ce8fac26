//! Direct Linux boot of Debian's stock kernels with the project's busybox
//! initramfs, checked by what the guest prints. The images come from
//! `scripts/guest-images.sh` (the README's test command builds them); without
//! them the tests say so and pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/kvm.rs"]
mod kvm;
use encode::base64;

fn images() -> Option<PathBuf> {
    images::images(&["initramfs.cpio.gz", "vmlinuz-cloud"])
}

/// The shell script the guest runs, and what the test then checks.
const SCRIPT: &str = r#"
echo "T:uname $(uname -r)"
echo "T:flags $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)"
echo "T:seq $(seq 1 100000 | sha256sum | cut -d' ' -f1)"
echo "T:gzip $(seq 1 100000 | gzip -c | gzip -dc | sha256sum | cut -d' ' -f1)"
dmesg > /tmp/dmesg
echo "T:dmesg-lines $(wc -l < /tmp/dmesg)"
grep -iE 'spurious|unexpected irq|clocksource.*unstable|APIC.*calibrat.*fail|WARNING:' /tmp/dmesg | sed 's/^/T:bad /'
echo "T:clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "T:clocksources $(cat /sys/devices/system/clocksource/clocksource0/available_clocksource)"
sed -n 's/^\[[^]]*\] \(hpet0: at MMIO .*\)$/T:hpet \1/p' /tmp/dmesg
sed -n 's/^\[[^]]*\] x86\/fpu: \(Enabled xstate .*\)$/T:xstate \1/p' /tmp/dmesg
grep -iE 'hpet.*(warn|fail|error|not count|dysfunc|invalid|disabl|agree|must be|increased)' /tmp/dmesg | sed 's/^/T:bad /'
d=/sys/class/dmi/id
echo "T:dmi $(cat $d/sys_vendor)|$(cat $d/product_name)|$(cat $d/product_serial)|$(cat $d/product_uuid)"
grep -q io.systemd.credential /sys/firmware/dmi/entries/11-0/raw 2>/dev/null && echo "T:oem-strings"
echo "T:done"
"#;

/// The SMBIOS fields the JIT boot gives (`-smbios`, `-uuid`).
const SMBIOS_SERIAL: &str = "ds=nocloud;s=http://10.0.2.2:8000/";
const SMBIOS_UUID: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

struct Boot {
    stdout: String,
    stderr: String,
    status: Option<i32>,
    elapsed: Duration,
}

static GUESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn boot(accel: &str, kernel: &Path, initrd: &Path, extra: &[&str]) -> Boot {
    boot_script(SCRIPT, accel, kernel, initrd, &v2(accel, extra))
}

/// `extra` with `--cpu v2` for the interpreter and the JIT, whose default
/// model is max: [`SCRIPT`]'s checks are the v2 model's (KVM's default).
fn v2<'a>(accel: &str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = if accel == "kvm" { vec![] } else { vec!["--cpu", "v2"] };
    args.extend_from_slice(extra);
    args
}

fn boot_script(script: &str, accel: &str, kernel: &Path, initrd: &Path, extra: &[&str]) -> Boot {
    boot_with_stalls(script, accel, kernel, initrd, extra, false)
}

/// Stops the emulator process for 150 ms eight times, from 1 s after its
/// start: what a loaded host does to it. Early boot keeps time in jiffies,
/// so these stalls are when the guest's clocks could disagree.
fn stall(pid: u32) {
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..8 {
        let signal = |sig: &str| Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
        if !signal("-STOP") {
            return;
        }
        std::thread::sleep(Duration::from_millis(150));
        if !signal("-CONT") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn boot_with_stalls(script: &str, accel: &str, kernel: &Path, initrd: &Path, extra: &[&str], stalls: bool) -> Boot {
    // One guest at a time: guests in parallel on a small machine starve
    // each other's timers and the tests measure the host, not the guest.
    let _one_at_a_time = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(script.as_bytes()));
    let t = Instant::now();
    let mut args = vec!["run", "--accel", accel, "--mem", "512M", "--serial", "stdio", "--timeout", "900"];
    args.extend_from_slice(extra);
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(&args)
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--append")
        .arg(&cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrovm runs");
    let pid = child.id();
    let stopper = stalls.then(|| std::thread::spawn(move || stall(pid)));
    let out = child.wait_with_output().expect("ferrovm runs");
    if let Some(s) = stopper {
        s.join().expect("the stall thread");
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- {} ({:?}) stderr:\n{stderr}", kernel.display(), t.elapsed());
    Boot { stdout, stderr, status: out.status.code(), elapsed: t.elapsed() }
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&format!("T:{key} ")))
}

fn host_sha256(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("host shell");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// Linux's names for the CPUID bits the model advertises.
fn expected_flags() -> Vec<&'static str> {
    vec![
        "fpu",
        "tsc",
        "msr",
        "pae",
        "cx8",
        "apic",
        "sep",
        "pge",
        "cmov",
        "pat",
        "pse36",
        "mmx",
        "fxsr",
        "sse",
        "sse2",
        "syscall",
        "nx",
        "lm",
        "pni",
        "ssse3",
        "cx16",
        "sse4_1",
        "sse4_2",
        "popcnt",
        "hypervisor",
        "erms",
    ]
}

/// Asserts that /proc/cpuinfo, as the guest printed it, lists every flag in `wanted`.
fn assert_flags(b: &Boot, wanted: &[&str]) {
    let flags: Vec<&str> = field(&b.stdout, "flags").expect("flags").split_whitespace().collect();
    for f in wanted {
        assert!(flags.contains(f), "flag {f} missing from /proc/cpuinfo: {flags:?}");
    }
}

/// Features the model does not implement: Linux must not list them.
const ABSENT: &[&str] = &["avx", "avx2", "xsaves", "aes", "pclmulqdq", "fma", "avx512f", "pku"];

fn check(b: &Boot, kernel: &Path) {
    let out = &b.stdout;
    assert!(out.contains("ferrovm-init: start"), "init never started:\n{out}");
    assert!(field(out, "done").is_some() || out.contains("T:done"), "the script did not finish:\n{out}");
    let version = field(out, "uname").expect("uname");
    let name = kernel.file_name().unwrap().to_string_lossy().replace("vmlinuz-", "");
    let ok = if name == "cloud" {
        version.ends_with("-cloud-amd64")
    } else {
        version.ends_with("-amd64") && !version.contains("cloud")
    };
    assert!(ok, "uname -r {version} for the {name} kernel");
    assert_flags(b, &expected_flags());
    let flags: Vec<&str> = field(out, "flags").expect("flags").split_whitespace().collect();
    for f in ABSENT {
        assert!(!flags.contains(f), "flag {f} listed but not implemented: {flags:?}");
    }
    assert_eq!(field(out, "seq").unwrap(), host_sha256("seq 1 100000 | sha256sum"), "seq | sha256sum");
    assert_eq!(field(out, "gzip").unwrap(), host_sha256("seq 1 100000 | sha256sum"), "gzip round trip");
    let bad: Vec<&str> = out.lines().filter(|l| l.starts_with("T:bad ")).collect();
    assert!(bad.is_empty(), "dmesg complaints: {bad:#?}");
    assert_hpet(b);
    // The machine's SMBIOS tables, found without firmware.
    let dmi = field(out, "dmi").unwrap_or("");
    assert!(dmi.starts_with("ferrovm|Standard PC (i440FX + PIIX, 1996)|"), "/sys/class/dmi/id: {dmi:?}");
    assert_eq!(b.status, Some(0), "poweroff -f must end the run with status 0");
    eprintln!("{} booted and checked in {:.1} s", kernel.display(), b.elapsed.as_secs_f64());
}

/// Linux found the HPET through the ACPI table, took its three timers with
/// timers 0 and 1 on the legacy replacement route (IRQ 2 on the I/O APIC,
/// IRQ 8), and offers it as a clocksource.
fn assert_hpet(b: &Boot) {
    let out = &b.stdout;
    assert_eq!(field(out, "hpet"), Some("hpet0: at MMIO 0xfed00000, IRQs 2, 8, 0"), "the HPET in dmesg:\n{out}");
    let sources: Vec<&str> = field(out, "clocksources").expect("available_clocksource").split_whitespace().collect();
    assert!(sources.contains(&"hpet"), "hpet missing from the clocksources: {sources:?}");
}

#[test]
fn cloud_kernel_boots_to_init_in_the_interpreter() {
    let Some(dir) = images() else { return };
    let k = dir.join("vmlinuz-cloud");
    let b = boot("interp", &k, &dir.join("initramfs.cpio.gz"), &[]);
    check(&b, &k);
    assert_flags(&b, INTERP_MODEL_FLAGS);
    assert_xstate(&b);
    // The model advertises UMIP, and Linux turns it on.
    assert_flags(&b, &["umip"]);
}

/// Flags of the interpreter's model. Timekeeping: its TSC follows the host's
/// monotonic clock, so it is invariant, and IA32_TSC_ADJUST is implemented.
/// With both, Linux trusts the TSC without a jiffies-based watchdog. The
/// model's XSAVE feature set (hidden under split execution, whose user code
/// runs with the host's XCR0) is listed too: Linux then switches tasks'
/// x87 and SSE state with it.
const INTERP_MODEL_FLAGS: &[&str] =
    &["constant_tsc", "nonstop_tsc", "tsc_adjust", "xsave", "xsaveopt", "xsavec", "movbe", "abm"];

/// Linux enabled the model's XSAVE components (x87 and SSE) with the
/// area size leaf 0Dh gives.
fn assert_xstate(b: &Boot) {
    let x = field(&b.stdout, "xstate").unwrap_or("");
    assert!(x.starts_with("Enabled xstate features 0x3, context size is 576 bytes"), "xstate in dmesg: {x:?}");
}

/// Also stalls the emulator during early boot (see [`stall`]): the guest's
/// clocks must stay consistent, with no complaint in dmesg.
#[test]
#[ignore = "outside CI for time: the generic kernel boots in CI under the JIT and KVM"]
fn generic_kernel_boots_to_init_in_the_interpreter() {
    let Some(dir) = images() else { return };
    let k = dir.join("vmlinuz-generic");
    let b = boot_with_stalls(SCRIPT, "interp", &k, &dir.join("initramfs.cpio.gz"), &v2("interp", &[]), true);
    check(&b, &k);
    assert_flags(&b, INTERP_MODEL_FLAGS);
    assert_xstate(&b);
}

/// Under `--accel jit`: the same checks (the same CPU model as the
/// interpreter's, so the same timekeeping flags).
#[test]
fn cloud_kernel_boots_to_init_under_jit() {
    let Some(dir) = images() else { return };
    let k = dir.join("vmlinuz-cloud");
    let serial = format!("type=1,serial={SMBIOS_SERIAL}");
    let smbios = ["--smbios", &serial, "--smbios", "type=11,value=io.systemd.credential:x=1", "--uuid", SMBIOS_UUID];
    let b = boot("jit", &k, &dir.join("initramfs.cpio.gz"), &smbios);
    check(&b, &k);
    let want = format!("ferrovm|Standard PC (i440FX + PIIX, 1996)|{SMBIOS_SERIAL}|{SMBIOS_UUID}");
    assert_eq!(field(&b.stdout, "dmi"), Some(want.as_str()), "-smbios type=1 and -uuid reach the guest");
    assert!(b.stdout.contains("T:oem-strings"), "-smbios type=11 reaches the guest:\n{}", b.stdout);
    assert_flags(&b, INTERP_MODEL_FLAGS);
    assert_xstate(&b);
}

/// `--kernel-boot bios`: SeaBIOS boots the kernel through QEMU's linuxboot
/// option ROM, as QEMU's -kernel does. The kernel enters at its real-mode
/// setup code, which calls the BIOS (its EDD probe says so), and then
/// passes the same checks as a direct boot.
#[test]
fn cloud_kernel_boots_through_seabios_under_jit() {
    let Some(dir) = images() else { return };
    for need in ["/usr/share/qemu/linuxboot_dma.bin", "/usr/share/seabios/bios-256k.bin"] {
        if !Path::new(need).is_file() {
            eprintln!("skipping: {need} is missing (Debian packages qemu-system-data and seabios)");
            return;
        }
    }
    let k = dir.join("vmlinuz-cloud");
    let b = boot("jit", &k, &dir.join("initramfs.cpio.gz"), &["--kernel-boot", "bios"]);
    let out = &b.stdout;
    assert!(out.contains("SeaBIOS (version"), "SeaBIOS ran:\n{out}");
    assert!(out.contains("Booting from ROM"), "SeaBIOS booted the linuxboot ROM:\n{out}");
    assert!(out.contains("Probing EDD"), "the kernel's real-mode setup code ran on the BIOS:\n{out}");
    check(&b, &k);
}

#[test]
fn generic_kernel_boots_to_init_under_jit() {
    let Some(dir) = images() else { return };
    let k = dir.join("vmlinuz-generic");
    let b = boot("jit", &k, &dir.join("initramfs.cpio.gz"), &[]);
    check(&b, &k);
    assert_flags(&b, INTERP_MODEL_FLAGS);
    assert_xstate(&b);
}

#[test]
#[ignore = "outside CI for time: minutes in the interpreter"]
fn classic_boot_path_runs_the_kernels_own_decompressor() {
    let Some(dir) = images() else { return };
    let k = dir.join("vmlinuz-cloud");
    let b = boot("interp", &k, &dir.join("initramfs.cpio.gz"), &["--kernel-boot", "classic"]);
    check(&b, &k);
}

/// Under `--accel kvm`. On a host whose KVM runs CPL-0 code in software
/// (kvm_pvm) the kernel runs in the interpreter and user space in KVM
/// (split execution); elsewhere all of it runs in KVM. Files, then
/// pipelines of concurrent processes (user code there uses the host's AVX
/// and AVX-512 registers, which must follow each task), ten times.
const KVM_SCRIPT: &str = r#"
echo "T:uname $(uname -r)"
seq 1 100000 > /tmp/s
set -- $(sha256sum /tmp/s); echo "T:seq $1"
gzip -c /tmp/s > /tmp/s.gz
gzip -dc /tmp/s.gz > /tmp/s2
set -- $(sha256sum /tmp/s2); echo "T:gzip $1"
for i in 1 2 3 4 5 6 7 8 9 10; do
  set -- $(seq 1 100000 | gzip -c | gzip -dc | sha256sum); echo "T:pipe$i $1"
done
echo "T:done"
"#;

/// Boot `kernel` under KVM with the options `extra` and check
/// [`KVM_SCRIPT`]'s results; `None` where KVM or the images are missing.
fn kvm_boot(kernel: &str, extra: &[&str]) -> Option<Boot> {
    let dir = images()?;
    if !kvm::usable() {
        return None;
    }
    let k = dir.join(kernel);
    let mut args = vec!["--stats"];
    args.extend_from_slice(extra);
    let b = boot_script(KVM_SCRIPT, "kvm", &k, &dir.join("initramfs.cpio.gz"), &args);
    let out = &b.stdout;
    assert!(out.contains("ferrovm-init: start"), "init never started:\n{out}");
    assert!(out.contains("T:done"), "the script did not finish:\n{out}");
    let want = host_sha256("seq 1 100000 | sha256sum");
    assert_eq!(field(out, "seq"), Some(want.as_str()), "seq | sha256sum");
    assert_eq!(field(out, "gzip"), Some(want.as_str()), "gzip round trip");
    for i in 1..=10 {
        assert_eq!(field(out, &format!("pipe{i}")), Some(want.as_str()), "pipeline {i}:\n{out}");
    }
    assert_eq!(b.status, Some(0), "poweroff -f must end the run with status 0");
    eprintln!("{} booted under kvm and checked in {:.1} s", k.display(), b.elapsed.as_secs_f64());
    Some(b)
}

#[test]
#[ignore = "outside CI for time: in CI the generic kernel runs this script under KVM, and the cloud kernel boots under KVM in the full check"]
fn cloud_kernel_boots_to_init_under_kvm() {
    kvm_boot("vmlinuz-cloud", &[]);
}

#[test]
fn generic_kernel_boots_to_init_under_kvm() {
    kvm_boot("vmlinuz-generic", &[]);
}

/// A kernel the host did not load (the classic path: the bzImage's own
/// decompressor) split with `--kvm-split on`: the decompressor and the
/// kernel's boot run in the JIT, and the kernel's code is found in the
/// guest when user code first runs, which then runs in KVM.
#[test]
fn a_kernel_that_decompresses_itself_runs_split_under_kvm() {
    let Some(b) = kvm_boot("vmlinuz-cloud", &["--kernel-boot", "classic", "--kvm-split", "on"]) else { return };
    kvm::check_kernel_code_found(&b.stderr);
}

/// The interpreter's full check (CPU flags, dmesg) under KVM.
#[test]
fn cloud_kernel_full_check_under_kvm() {
    let Some(dir) = images() else { return };
    if !kvm::usable() {
        return;
    }
    let k = dir.join("vmlinuz-cloud");
    let b = boot("kvm", &k, &dir.join("initramfs.cpio.gz"), &["--stats"]);
    check(&b, &k);
}

/// The full CPU model (`--cpu max`, x86-64-v3): what Linux lists, what
/// glibc's loader finds supported, and dynamically linked glibc programs
/// from Debian (hostprogs.cpio.gz: sort, sha256sum, gzip and their
/// libraries, appended to the initramfs) on 3.4 MB of input, whose results
/// the host's own programs must give too.
const V3_SCRIPT: &str = r#"
H=/opt/host/bin
echo "T:flags $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)"
/lib64/ld-linux-x86-64.so.2 --help | sed -n '/^Subdirectories of glibc-hwcaps/,/^$/p' | sed -n 's/^ *\(x86-64.*\)$/T:hwcaps \1/p'
seq 1 @N@ > /tmp/n
set -- $($H/sort -r /tmp/n | $H/sha256sum); echo "T:sort $1"
set -- $($H/sha256sum /tmp/n); echo "T:sha $1"
$H/gzip -9n < /tmp/n > /tmp/n.gz
set -- $($H/sha256sum /tmp/n.gz); echo "T:gz $1"
set -- $($H/gzip -dc /tmp/n.gz | $H/sha256sum); echo "T:gunzip $1"
echo "T:gzip-version $($H/gzip --version | head -n1)"
[ -x /bin/pkeys ] && /bin/pkeys
dmesg > /tmp/dmesg
sed -n 's/^\[[^]]*\] x86\/fpu: \(Enabled xstate .*\)$/T:xstate \1/p' /tmp/dmesg
grep -E 'invalid opcode|Oops|BUG:|WARNING:|traps:|segfault|general protection|alg: .*(fail|error)' /tmp/dmesg | sed 's/^/T:bad /'
echo "T:done"
"#;

/// Linux's names for the x86-64-v3 features (and the XSAVE, crypto and
/// protection-key extensions) of the full model.
const V3_FLAGS: &[&str] = &[
    "avx",
    "avx2",
    "fma",
    "f16c",
    "movbe",
    "xsave",
    "xsaveopt",
    "xsavec",
    "bmi1",
    "bmi2",
    "abm",
    "aes",
    "pclmulqdq",
    "pku",
    "ospke",
];

/// A static program for the guest that uses a protection key through
/// glibc (pkey_alloc, pkey_mprotect, pkey_set: WRPKRU): it reads and writes
/// a page of its key under each right, once after a sleep (a context
/// switch, which saves and restores PKRU with XSAVE and XRSTOR), and
/// prints what was denied with the SIGSEGV's code (SEGV_PKUERR, 4) and key.
const PKEYS_PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static sigjmp_buf env;
static volatile int code = -1, key = -1;

static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    code = si->si_code;
    key = si->si_pkey;
    siglongjmp(env, 1);
}

/* Reads or writes p under the rights `rights` of key k, after a context
   switch when `sleep_us`; prints whether the access was denied, with the
   signal's code and key. */
static void try(const char *what, volatile char *p, int k, unsigned rights, int write, int sleep_us) {
    code = key = -1;
    if (pkey_set(k, rights)) { perror("pkey_set"); return; }
    if (sleep_us) usleep(sleep_us);
    if (!sigsetjmp(env, 1)) {
        if (write) p[0] = 1; else (void)p[0];
        pkey_set(k, 0);
        printf("T:%s allowed\n", what);
    } else {
        pkey_set(k, 0);
        printf("T:%s denied code %d key %d\n", what, code, key);
    }
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, 0);
    int k = pkey_alloc(0, 0);
    if (k < 0) { printf("T:pkey_alloc failed: %m\n"); return 1; }
    volatile char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p[0] = 42;
    if (pkey_mprotect((void *)p, 4096, PROT_READ | PROT_WRITE, k)) { printf("T:pkey_mprotect failed: %m\n"); return 1; }
    printf("T:pkey %d\n", k);
    try("read-wd", p, k, PKEY_DISABLE_WRITE, 0, 0);
    try("write-wd", p, k, PKEY_DISABLE_WRITE, 1, 0);
    try("read-ad", p, k, PKEY_DISABLE_ACCESS, 0, 0);
    try("read-ad-after-sleep", p, k, PKEY_DISABLE_ACCESS, 0, 20000);
    try("write-none", p, k, 0, 1, 0);
    printf("T:pkru %#x value %d\n", pkey_get(k), p[0]);
    return 0;
}"#;

/// [`PKEYS_PROGRAM`] built static in `root/bin/pkeys`, or why it could not be.
fn build_pkeys(work: &Path) -> Result<(), String> {
    std::fs::create_dir_all(work.join("root/bin")).map_err(|e| e.to_string())?;
    std::fs::write(work.join("pkeys.c"), PKEYS_PROGRAM).map_err(|e| e.to_string())?;
    let o = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(work.join("root/bin/pkeys"))
        .arg(work.join("pkeys.c"))
        .output()
        .map_err(|e| format!("no C compiler (cc: {e})"))?;
    if !o.status.success() {
        return Err(format!("cc -static failed (gcc and libc6-dev): {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

/// The initramfs with hostprogs.cpio.gz and, when it builds, the pkeys
/// program appended, in a temporary file of its own (`name`: tests run in
/// parallel in one process). True with the pkeys program.
fn v3_initrd(dir: &Path, name: &str) -> (PathBuf, bool) {
    let mut bytes = std::fs::read(dir.join("initramfs.cpio.gz")).expect("initramfs.cpio.gz");
    bytes.extend(std::fs::read(dir.join("hostprogs.cpio.gz")).expect("hostprogs.cpio.gz"));
    let work = std::env::temp_dir().join(format!("ferrovm-v3-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let pkeys = match build_pkeys(&work) {
        Ok(()) => {
            let o = Command::new("sh")
                .arg("-c")
                .arg("find bin | cpio -o -H newc --quiet | gzip")
                .current_dir(work.join("root"))
                .output()
                .expect("sh runs");
            assert!(o.status.success(), "the pkeys cpio: {}", String::from_utf8_lossy(&o.stderr));
            bytes.extend(o.stdout);
            true
        }
        Err(why) => {
            eprintln!("the protection-key program is left out: {why}");
            false
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    let path = std::env::temp_dir().join(format!("ferrovm-v3-{}-{name}.cpio.gz", std::process::id()));
    std::fs::write(&path, bytes).expect("the temporary initrd");
    (path, pkeys)
}

/// Boot `kernel` with the default model (max, x86-64-v3) under `accel` and check [`V3_SCRIPT`]'s
/// results, over the numbers 1 to `n`, against the host's.
fn v3_boot(accel: &str, kernel: &str, n: u32) {
    let Some(dir) = images::images(&["initramfs.cpio.gz", "hostprogs.cpio.gz", kernel]) else { return };
    let (initrd, pkeys) = v3_initrd(&dir, &format!("{accel}-{kernel}"));
    let script = V3_SCRIPT.replace("@N@", &n.to_string());
    // No --cpu: max is the default model under the interpreter and the JIT.
    let b = boot_script(&script, accel, &dir.join(kernel), &initrd, &["--stats"]);
    let _ = std::fs::remove_file(&initrd);
    let out = &b.stdout;
    assert!(out.contains("ferrovm-init: start"), "init never started:\n{out}");
    assert!(out.contains("T:done"), "the script did not finish:\n{out}");
    assert_flags(&b, V3_FLAGS);
    assert!(b.stderr.contains("CPU model max (x86-64-v3"), "--stats names the model:\n{}", b.stderr);
    assert!(!b.stderr.contains("unimplemented instruction"), "an instruction without a handler:\n{}", b.stderr);
    let hwcaps: Vec<&str> = out.lines().filter_map(|l| l.trim_end_matches('\r').strip_prefix("T:hwcaps ")).collect();
    eprintln!("glibc-hwcaps: {hwcaps:?}");
    assert!(hwcaps.contains(&"x86-64-v3 (supported, searched)"), "glibc's loader: {hwcaps:?}");
    assert!(hwcaps.contains(&"x86-64-v4"), "v4 (AVX-512) is not in the model: {hwcaps:?}");
    let x = field(out, "xstate").unwrap_or("");
    // x87, SSE, YMM and PKRU, which the compacted format puts right after
    // YMM: 840 bytes.
    assert!(x.starts_with("Enabled xstate features 0x207, context size is 840 bytes"), "xstate in dmesg: {x:?}");
    if pkeys {
        let key = field(out, "pkey").unwrap_or("none");
        assert!(key.parse::<u8>().is_ok_and(|k| (1..16).contains(&k)), "pkey_alloc: {key}\n{out}");
        let denied = format!("denied code 4 key {key}");
        assert_eq!(field(out, "read-wd"), Some("allowed"), "a read under write-disable");
        assert_eq!(field(out, "write-wd"), Some(denied.as_str()), "a write under write-disable");
        assert_eq!(field(out, "read-ad"), Some(denied.as_str()), "a read under access-disable");
        assert_eq!(field(out, "read-ad-after-sleep"), Some(denied.as_str()), "PKRU across a context switch");
        assert_eq!(field(out, "write-none"), Some("allowed"), "a write with every right");
        assert_eq!(field(out, "pkru"), Some("0 value 1"), "the rights and the page at the end");
    }
    let bad: Vec<&str> = out.lines().filter(|l| l.starts_with("T:bad ")).collect();
    assert!(bad.is_empty(), "dmesg complaints: {bad:#?}");
    let seq = format!("seq 1 {n}");
    assert_eq!(field(out, "sort"), Some(host_sha256(&format!("{seq} | sort -r | sha256sum")).as_str()), "sort -r");
    assert_eq!(field(out, "sha"), Some(host_sha256(&format!("{seq} | sha256sum")).as_str()), "sha256sum");
    assert_eq!(field(out, "gunzip"), Some(host_sha256(&format!("{seq} | sha256sum")).as_str()), "gzip round trip");
    // The compressed bytes too, where the host's gzip is the same version.
    let host_gzip =
        Command::new("gzip").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if host_gzip.is_ok_and(|v| v.lines().next() == field(out, "gzip-version")) {
        assert_eq!(field(out, "gz"), Some(host_sha256(&format!("{seq} | gzip -9n | sha256sum")).as_str()), "gzip -9n");
    }
    assert_eq!(b.status, Some(0), "poweroff -f must end the run with status 0");
    eprintln!("{kernel} with --cpu max under {accel} checked in {:.1} s", b.elapsed.as_secs_f64());
}

#[test]
fn cloud_kernel_runs_x86_64_v3_programs_in_the_interpreter() {
    // A fifth of the JIT's numbers: the interpreter is the slow engine.
    v3_boot("interp", "vmlinuz-cloud", 100_000);
}

#[test]
fn generic_kernel_runs_x86_64_v3_programs_under_jit() {
    v3_boot("jit", "vmlinuz-generic", 500_000);
}

/// A static program for the guest: it spins long enough in user mode for
/// split execution to give it to KVM, then reads CLOCK_MONOTONIC through
/// the vDSO (from the TSC, in user mode) and through the system call (the
/// kernel), forty times, and prints the largest gap in microseconds.
const CLOCK_PROGRAM: &str = r#"
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    long worst = 0;
    for (int i = 0; i < 40; i++) {
        volatile long x = 0;
        for (long j = 0; j < 20000000; j++) x += j;
        struct timespec v, k;
        clock_gettime(CLOCK_MONOTONIC, &v);
        syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &k);
        long d = (v.tv_sec - k.tv_sec) * 1000000L + (v.tv_nsec - k.tv_nsec) / 1000;
        if (d < 0) d = -d;
        if (d > worst) worst = d;
    }
    printf("T:clock-gap-us %ld\n", worst);
    return 0;
}
"#;

/// Under KVM, where split execution runs user code in KVM and the kernel
/// in the JIT, both read one TSC: the vDSO's time (KVM's TSC with the
/// kernel's timekeeping) is the kernel's time. On kvm_pvm, KVM keeps its
/// own TSC whatever it is told, so the machine's follows KVM's. While they
/// differed, user time ran minutes ahead of the kernel's, and a program
/// timing its requests (ioping) slept for minutes.
#[test]
fn user_code_in_kvm_reads_the_kernels_time() {
    let Some(dir) = images::images(&["initramfs.cpio.gz", "vmlinuz-generic"]) else { return };
    if !kvm::usable() {
        return;
    }
    let work = std::env::temp_dir().join(format!("ferrovm-boot-clock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("root/bin")).unwrap();
    std::fs::write(work.join("clock.c"), CLOCK_PROGRAM).unwrap();
    let cc = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(work.join("root/bin/clockgap"))
        .arg(work.join("clock.c"))
        .output();
    match cc {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!("skipping: cc -static failed (gcc and libc6-dev): {}", String::from_utf8_lossy(&o.stderr));
            return;
        }
        Err(e) => {
            eprintln!("skipping: no C compiler (cc: {e})");
            return;
        }
    }
    let initrd = work.join("initrd.gz");
    let script = format!(
        "cat '{}' > '{i}' && (cd '{}' && find bin | cpio -o -H newc --quiet | gzip) >> '{i}'",
        dir.join("initramfs.cpio.gz").display(),
        work.join("root").display(),
        i = initrd.display()
    );
    let o = Command::new("sh").arg("-c").arg(&script).output().expect("sh runs");
    assert!(o.status.success(), "the initrd: {}", String::from_utf8_lossy(&o.stderr));
    let b = boot_script("/bin/clockgap\necho T:done\n", "kvm", &dir.join("vmlinuz-generic"), &initrd, &["--stats"]);
    let _ = std::fs::remove_dir_all(&work);
    let out = &b.stdout;
    assert!(out.contains("T:done"), "the script did not finish:\n{out}");
    let gap: i64 = field(out, "clock-gap-us").and_then(|v| v.parse().ok()).unwrap_or(-1);
    assert!((0..50_000).contains(&gap), "the vDSO's clock against the kernel's: {gap} us apart\n{}", b.stderr);
    assert_eq!(b.status, Some(0), "{}", b.stderr);
    eprintln!("user and kernel clocks under kvm: at most {gap} us apart ({:.1} s)", b.elapsed.as_secs_f64());
}

/// `--cpu max` under `--accel kvm`: the guest gets what KVM can give of
/// the model (on a host whose KVM runs the kernel in its instruction
/// emulator, split execution: one CPU without XSAVE and AVX for kernel and
/// user code), and the run names the x86-64-v3 features it lacks.
#[test]
fn the_full_model_under_kvm_names_what_it_lacks() {
    let Some(b) = kvm_boot("vmlinuz-cloud", &["--cpu", "max"]) else { return };
    let line = b.stderr.lines().find(|l| l.contains("x86-64-v3 features missing")).unwrap_or("");
    eprintln!("{line}");
    assert!(line.contains("CPU model max"), "--stats names the model and what it lacks:\n{}", b.stderr);
}
