//! Several vCPUs: Debian's cloud kernel with the project's busybox
//! initramfs boots with 2 and 4 CPUs, brings them all up, reports them in
//! `nproc`, and runs parallel jobs whose results match the host's. Under
//! the interpreter and the JIT the vCPUs run round-robin on one host
//! thread; under KVM each has its own thread and KVM's local APICs route
//! the IPIs. The images come from `scripts/guest-images.sh`; without them
//! the tests say so and pass.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/images.rs"]
mod images;
#[path = "guest/kvm.rs"]
mod kvm;

fn images() -> Option<PathBuf> {
    images::images(&["initramfs.cpio.gz", "vmlinuz-cloud"])
}

/// Two sha256 jobs and two sorts run at once; the kernel's own account
/// of its CPUs and anything it complained about.
const SCRIPT: &str = r#"
echo "T:nproc $(nproc)"
echo "T:online $(cat /sys/devices/system/cpu/online)"
seq 1 @H@ > /tmp/a
seq @H1@ @N@ > /tmp/b
sha256sum /tmp/a > /tmp/ha & sha256sum /tmp/b > /tmp/hb & wait
echo "T:sha-a $(cut -d' ' -f1 /tmp/ha)"
echo "T:sha-b $(cut -d' ' -f1 /tmp/hb)"
sort -rn /tmp/a > /tmp/sa & sort -rn /tmp/b > /tmp/sb & wait
echo "T:sorted $(cat /tmp/sb /tmp/sa | sha256sum | cut -d' ' -f1)"
dmesg > /tmp/dmesg
sed -n 's/^\[[^]]*\] \(smp: Brought up .*\)$/T:\1/p' /tmp/dmesg
grep -E 'BUG:|WARNING:|[Ss]oft lockup|[Ss]tuck|failed to (boot|start)|not responding|unstable|Oops' /tmp/dmesg | sed 's/^/T:bad /'
echo "T:done"
"#;

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&format!("T:{key} ")))
}

fn host(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("host shell");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string()
}

static GUESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots with `cpus` vCPUs under `accel` (and `extra` flags) and checks
/// what the guest printed.
fn boot_smp(accel: &str, cpus: u32, extra: &[&str]) {
    let Some(dir) = images() else { return };
    let _one_at_a_time = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    // Each job's numbers: fewer in the interpreter, the slow engine.
    let half: u32 = if accel == "interp" { 50_000 } else { 150_000 };
    let script = SCRIPT
        .replace("@H1@", &(half + 1).to_string())
        .replace("@H@", &half.to_string())
        .replace("@N@", &(2 * half).to_string());
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(script.as_bytes()));
    let t = Instant::now();
    let n = cpus.to_string();
    let mut args =
        vec!["run", "--accel", accel, "--cpus", &n, "--mem", "512M", "--serial", "stdio", "--timeout", "900"];
    args.extend_from_slice(extra);
    args.push("--stats");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(&args)
        .arg("--kernel")
        .arg(dir.join("vmlinuz-cloud"))
        .arg("--initrd")
        .arg(dir.join("initramfs.cpio.gz"))
        .arg("--append")
        .arg(&cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("ferrovm runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = format!("{accel} with {cpus} vCPUs {extra:?}");
    eprintln!("--- {what} ({:?}) stderr:\n{stderr}", t.elapsed());
    let ctx = format!("{what}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(field(&stdout, "done").is_some() || stdout.contains("T:done"), "the script ran to its end: {ctx}");
    assert_eq!(field(&stdout, "nproc"), Some(n.as_str()), "nproc: {ctx}");
    let online = if cpus == 1 { "0".to_string() } else { format!("0-{}", cpus - 1) };
    assert_eq!(field(&stdout, "online"), Some(online.as_str()), "online CPUs: {ctx}");
    let brought_up = format!("smp: Brought up 1 node, {cpus} CPUs");
    assert!(stdout.contains(&brought_up), "{brought_up}: {ctx}");
    let (a, b) = (format!("seq 1 {half}"), format!("seq {} {}", half + 1, 2 * half));
    assert_eq!(field(&stdout, "sha-a"), Some(host(&format!("{a} | sha256sum")).as_str()), "{ctx}");
    assert_eq!(field(&stdout, "sha-b"), Some(host(&format!("{b} | sha256sum")).as_str()), "{ctx}");
    let sorted = format!("seq 1 {} | sort -rn | sha256sum", 2 * half);
    assert_eq!(field(&stdout, "sorted"), Some(host(&sorted).as_str()), "{ctx}");
    let bad: Vec<&str> = stdout.lines().filter(|l| l.starts_with("T:bad")).collect();
    assert!(bad.is_empty(), "the kernel complained: {bad:?}\n{ctx}");
    assert_eq!(out.status.code(), Some(0), "{ctx}");
    println!("{what}: booted and ran in {:.1} s", t.elapsed().as_secs_f64());
}

// Each boot costs tens of seconds (the interpreter's, a minute and a
// half), so the configurations are spread over the runs rather than
// crossed: round-robin and a thread per vCPU, 2 and 4 vCPUs.

#[test]
fn linux_with_2_and_4_vcpus_under_the_jit() {
    boot_smp("jit", 2, &["--vcpu-threads", "single"]);
    boot_smp("jit", 4, &[]);
}

#[test]
fn linux_with_2_vcpus_on_a_thread_each_in_the_interpreter() {
    boot_smp("interp", 2, &["--vcpu-threads", "multi"]);
}

#[test]
fn linux_with_2_and_4_vcpus_under_kvm() {
    if !kvm::usable() {
        return;
    }
    if kvm::emulates_ring0() {
        // kvm_pvm runs the guest kernel in KVM's instruction emulator,
        // where this kernel does not boot even with one vCPU (it stops
        // after enabling XSAVE); split execution runs one vCPU, so with
        // more `--accel kvm` runs the guest in the JIT, which the JIT's
        // boots cover.
        eprintln!(
            "skipping the KVM vCPU threads: this host's KVM (kvm_pvm) emulates ring 0, where Linux does not boot"
        );
        return;
    }
    boot_smp("kvm", 2, &[]);
    boot_smp("kvm", 4, &[]);
}
