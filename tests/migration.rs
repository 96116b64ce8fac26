//! Live migration end to end, between two ferrovm processes over TCP on
//! loopback, driven through QMP: a guest that writes its memory in a loop
//! and checks, after every pass, a checksum of what it reads back against
//! the one it computed while writing. Migrated while it runs, it goes on
//! in the receiving process from the pass it was in, and every pass there
//! must still check out. Downtime and total time are printed.
//!
//! Under the JIT to the JIT (with auto-converge and a small downtime
//! limit too), and the JIT to KVM where KVM is usable here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

#[path = "guest/qmp.rs"]
mod qmp;
use qmp::Qmp;
#[path = "guest/kvm.rs"]
mod kvm;
#[path = "guest/multiboot.rs"]
mod multiboot;
use multiboot::{multiboot_elf, print32, CODE_OFF, LOAD};

/// Where the guest's buffer begins (16 MiB).
const BUF: u32 = 0x100_0000;

/// The guest: pass after pass, it writes every 32-bit word of a buffer of
/// `mib` MiB with a value of the word's index and the pass, folding each
/// into a checksum; reads the buffer back into a second checksum; and
/// prints `M:pass N` (N in hex) when they agree, `M:BAD N` and stops when
/// they do not.
fn writer_kernel(mib: u32) -> Vec<u8> {
    let words = mib * (1 << 20) / 4;
    let mut a = CodeAssembler::new(32).unwrap();
    print32(&mut a, "M:start\n").unwrap();
    a.mov(ebp, 1u32).unwrap();
    let mut pass = a.create_label();
    let mut write = a.create_label();
    let mut verify = a.create_label();
    let mut bad = a.create_label();
    let mut hex = a.create_label();
    let mut digit = a.create_label();
    a.set_label(&mut pass).unwrap();
    a.mov(edi, BUF).unwrap();
    a.xor(esi, esi).unwrap();
    a.xor(ecx, ecx).unwrap();
    a.imul_3(ebx, ebp, 0x85eb_ca77u32 as i32).unwrap();
    a.set_label(&mut write).unwrap();
    a.imul_3(eax, ecx, 0x9e37_79b1u32 as i32).unwrap();
    a.add(eax, ebx).unwrap();
    a.mov(dword_ptr(edi + ecx * 4), eax).unwrap();
    a.rol(esi, 5).unwrap();
    a.xor(esi, eax).unwrap();
    a.inc(ecx).unwrap();
    a.cmp(ecx, words).unwrap();
    a.jb(write).unwrap();
    a.xor(edx, edx).unwrap();
    a.xor(ecx, ecx).unwrap();
    a.set_label(&mut verify).unwrap();
    a.mov(eax, dword_ptr(edi + ecx * 4)).unwrap();
    a.rol(edx, 5).unwrap();
    a.xor(edx, eax).unwrap();
    a.inc(ecx).unwrap();
    a.cmp(ecx, words).unwrap();
    a.jb(verify).unwrap();
    a.cmp(edx, esi).unwrap();
    a.jne(bad).unwrap();
    print32(&mut a, "M:pass ").unwrap();
    a.call(hex).unwrap();
    a.inc(ebp).unwrap();
    a.jmp(pass).unwrap();
    a.set_label(&mut bad).unwrap();
    print32(&mut a, "M:BAD ").unwrap();
    a.call(hex).unwrap();
    let mut stop = a.create_label();
    a.set_label(&mut stop).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    a.jmp(stop).unwrap();
    // EBP in hex and a newline.
    a.set_label(&mut hex).unwrap();
    a.mov(ebx, ebp).unwrap();
    a.mov(ecx, 8u32).unwrap();
    a.mov(edx, 0x3f8u32).unwrap();
    let mut each = a.create_label();
    a.set_label(&mut each).unwrap();
    a.rol(ebx, 4).unwrap();
    a.mov(eax, ebx).unwrap();
    a.and(eax, 0xfu32).unwrap();
    a.cmp(eax, 10u32).unwrap();
    a.jb(digit).unwrap();
    a.add(eax, u32::from(b'a' - 10 - b'0')).unwrap();
    a.set_label(&mut digit).unwrap();
    a.add(eax, u32::from(b'0')).unwrap();
    a.out(dx, al).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(each).unwrap();
    a.mov(al, u32::from(b'\n')).unwrap();
    a.out(dx, al).unwrap();
    a.ret().unwrap();
    multiboot_elf(&a.assemble(u64::from(LOAD + CODE_OFF)).unwrap())
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("migration-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running ferrovm, killed when dropped.
struct Vm {
    child: Option<Child>,
    serial: PathBuf,
    stderr: PathBuf,
}

impl Vm {
    fn start(dir: &Path, name: &str, kernel: &Path, accel: &str, mem: &str, extra: &[String]) -> Vm {
        let serial = dir.join(format!("{name}.serial"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
            .args(["run", "--accel", accel, "--mem", mem, "--timeout", "300", "--kernel"])
            .arg(kernel)
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("ferrovm starts");
        Vm { child: Some(child), serial, stderr }
    }

    fn out(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for `want` on the serial console.
    fn wait_for(&self, want: &str, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !self.out().contains(want) {
            assert!(
                Instant::now() < until,
                "no {want:?} in {secs} s: {}\nstderr: {}",
                tail(&self.out()),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- stderr of {}:\n{}", self.serial.display(), self.stderr());
            }
        }
    }
}

fn tail(s: &str) -> String {
    s.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The guest's passes that checked out: their numbers.
fn passes(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("M:pass "))
        .filter_map(|h| u64::from_str_radix(h.trim(), 16).ok())
        .collect()
}

/// A number field of a JSON text, by key.
fn num(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// What a migration measured.
#[allow(dead_code, reason = "printed by each test; not every test checks each")]
struct Figures {
    downtime_ms: f64,
    total_ms: f64,
    rounds: f64,
    throttle: Option<f64>,
}

/// Migrates a guest writing `mib` MiB in a loop from a JIT source to a
/// `dest_accel` receiver over TCP on loopback, with `setup` QMP commands
/// first; checks its passes go on there and all check out.
fn live_migration(name: &str, dest_accel: &str, mem: &str, mib: u32, setup: &[&str]) -> Figures {
    let dir = scratch(name);
    let kernel = dir.join("writer.elf");
    std::fs::write(&kernel, writer_kernel(mib)).unwrap();
    let port = free_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let (src_qmp, dst_qmp) = (dir.join("src.qmp"), dir.join("dst.qmp"));
    let qmp_arg = |p: &Path| vec!["--qmp".to_string(), format!("unix:{},server=on,wait=off", p.display())];
    let mut dst_args = qmp_arg(&dst_qmp);
    dst_args.extend(["--incoming".to_string(), uri.clone()]);
    if dest_accel == "kvm" {
        // A guest wholly in KVM cannot take a saved state (KVM's interrupt
        // controllers are not in it); split execution's are the machine's.
        dst_args.extend(["--kvm-split".to_string(), "on".to_string()]);
    }
    let mut dst = Vm::start(&dir, "dst", &kernel, dest_accel, mem, &dst_args);
    let src = Vm::start(&dir, "src", &kernel, "jit", mem, &qmp_arg(&src_qmp));
    src.wait_for("M:pass 00000002", 120);
    let mut q = Qmp::connect(&src_qmp);
    for cmd in setup {
        assert_eq!(q.cmd(cmd), r#"{"return":{}}"#, "{cmd}");
    }
    let t = Instant::now();
    let reply = q.cmd(&format!(r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#));
    assert_eq!(reply, r#"{"return":{}}"#);
    // While it runs: the guest goes on at the source, and query-migrate
    // reports progress.
    let mut seen_active = None;
    let done = loop {
        let r = q.cmd(r#"{"execute":"query-migrate"}"#);
        if r.contains(r#""status":"active""#) && seen_active.is_none() {
            seen_active = Some(r.clone());
        }
        if r.contains(r#""status":"completed""#) || r.contains(r#""status":"failed""#) {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the migration did not end: {r}");
        if let Some(st) = dst.exited() {
            panic!("the receiver ended ({st}): {}", dst.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(done.contains(r#""status":"completed""#), "{done}\nreceiver: {}", dst.stderr());
    let status = q.cmd(r#"{"execute":"query-status"}"#);
    assert!(status.contains(r#""status":"postmigrate""#), "{status}");
    let ram_total = num(&done, "total").expect("ram.total");
    assert!(num(&done, "transferred").unwrap() > 0.0 && ram_total > 0.0, "{done}");
    assert_eq!(num(&done, "remaining"), Some(0.0), "{done}");
    let rounds = num(&done, "dirty-sync-count").expect("dirty-sync-count");
    assert!(rounds >= 1.0, "{done}");
    let downtime_ms = num(&done, "downtime").expect("downtime");
    let total_ms = num(&done, "total-time").expect("total-time");
    assert!(downtime_ms < total_ms, "the downtime is the stopped part: {done}");
    if let Some(a) = &seen_active {
        assert!(a.contains(r#""ram":"#) && a.contains("dirty-sync-count"), "{a}");
    }
    // The source's last pass, and the receiver's passes after it.
    let last_src = passes(&src.out()).last().copied().unwrap_or(0);
    let want = format!("M:pass {:08x}", last_src + 3);
    dst.wait_for(&want, 120);
    let out = dst.out();
    assert!(!out.contains("M:BAD"), "a pass found its memory changed: {}", tail(&out));
    assert!(!out.contains("M:start"), "the receiver booted the guest again: {}", tail(&out));
    let first_dst = passes(&out).first().copied().unwrap_or(0);
    assert!(first_dst <= last_src + 1, "the receiver goes on from the source's pass {last_src}: {first_dst}");
    assert!(!src.out().contains("M:BAD"));
    let throttle = num(&done, "cpu-throttle-percentage");
    eprintln!(
        "{name}: {mib} MiB written in a loop, {mem} guest, jit -> {dest_accel}: downtime {downtime_ms} ms, \
         total {total_ms} ms, {rounds} rounds, throttle {throttle:?}; source pass {last_src}, receiver from {first_dst}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Figures { downtime_ms, total_ms, rounds, throttle }
}

#[test]
fn a_guest_writing_memory_migrates_live_from_the_jit_to_the_jit() {
    let f = live_migration("jit-jit", "jit", "256M", 32, &[]);
    assert!(f.total_ms > 0.0 && f.rounds >= 1.0);
}

/// A downtime limit the link cannot meet at the guest's dirty rate:
/// auto-converge throttles the vCPUs until it can.
#[test]
fn auto_converge_throttles_a_guest_that_dirties_faster_than_the_link() {
    let f = live_migration(
        "converge",
        "jit",
        "256M",
        96,
        &[
            r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"auto-converge","state":true}]}}"#,
            r#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":5,"max-bandwidth":200000000}}"#,
        ],
    );
    assert!(f.throttle.is_some_and(|t| t >= 20.0), "the vCPUs were throttled: {:?}", f.throttle);
    assert!(f.rounds >= 2.0);
}

#[test]
fn a_guest_writing_memory_migrates_live_from_the_jit_to_kvm() {
    if !kvm::usable() {
        eprintln!("skipped: KVM is not usable here (/dev/kvm missing or refused)");
        return;
    }
    live_migration("jit-kvm", "kvm", "256M", 32, &[]);
}

/// `migrate_cancel` during the rounds: logging stops, the source guest
/// runs on and its passes still check out; the receiver, whose stream
/// ended early, exits with an error before its guest ran.
#[test]
fn a_cancelled_migration_leaves_the_guest_running() {
    let dir = scratch("cancel");
    let kernel = dir.join("writer.elf");
    std::fs::write(&kernel, writer_kernel(96)).unwrap();
    let port = free_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let (src_qmp, dst_qmp) = (dir.join("src.qmp"), dir.join("dst.qmp"));
    let qmp_arg = |p: &Path| vec!["--qmp".to_string(), format!("unix:{},server=on,wait=off", p.display())];
    let mut dst_args = qmp_arg(&dst_qmp);
    dst_args.extend(["--incoming".to_string(), uri.clone()]);
    let mut dst = Vm::start(&dir, "dst", &kernel, "jit", "256M", &dst_args);
    let src = Vm::start(&dir, "src", &kernel, "jit", "256M", &qmp_arg(&src_qmp));
    src.wait_for("M:pass 00000002", 120);
    let mut q = Qmp::connect(&src_qmp);
    // Slow enough that the rounds are still going when the cancel comes.
    let slow = r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":20000000}}"#;
    assert_eq!(q.cmd(slow), r#"{"return":{}}"#);
    assert_eq!(q.cmd(&format!(r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#)), r#"{"return":{}}"#);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(q.cmd(r#"{"execute":"migrate_cancel"}"#), r#"{"return":{}}"#);
    let t = Instant::now();
    loop {
        let r = q.cmd(r#"{"execute":"query-migrate"}"#);
        if r.contains(r#""status":"cancelled""#) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not cancelled: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = q.cmd(r#"{"execute":"query-status"}"#);
    assert!(status.contains(r#""status":"running""#), "{status}");
    let last = passes(&src.out()).last().copied().unwrap_or(0);
    src.wait_for(&format!("M:pass {:08x}", last + 2), 60);
    assert!(!src.out().contains("M:BAD"), "{}", tail(&src.out()));
    let until = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = dst.exited() {
            break st;
        }
        assert!(Instant::now() < until, "the receiver of a cut stream did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(1), "{}", dst.stderr());
    assert!(dst.stderr().contains("migration stream ended"), "{}", dst.stderr());
    assert!(dst.out().is_empty(), "the receiver's guest never ran: {}", dst.out());
    let _ = std::fs::remove_dir_all(&dir);
}
