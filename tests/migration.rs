//! Live migration end to end, between two ferrovm processes over TCP on
//! loopback, driven through QMP: a guest that writes its memory in a loop
//! and checks, after every pass, a checksum of what it reads back against
//! the one it computed while writing. Migrated while it runs, it goes on
//! in the receiving process from the pass it was in, and every pass there
//! must still check out. Downtime and total time are printed.
//!
//! Under the JIT to the JIT (with auto-converge and a small downtime
//! limit too), the JIT to KVM, and KVM to the JIT and to KVM where KVM is
//! usable here. From KVM the guest's loop runs at CPL 3, which split
//! execution runs in KVM: its stores reach the rounds through KVM's dirty
//! log. Wholly in KVM (`--kvm-split off`), its kernel included, the guest
//! goes to the JIT with KVM's interrupt controllers moved into the machine,
//! and auto-converge throttles it there too.

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
use ferrovm_bench::migration::{writer_loop, BUF};
use multiboot::{multiboot_elf, CODE_OFF, LOAD};
#[path = "guest/pm32.rs"]
mod pm32;

/// The guest: pass after pass, it writes every 32-bit word of a buffer of
/// `mib` MiB with a value of the word's index and the pass, folding each
/// into a checksum (kept in memory, at [`CHECKSUM`](ferrovm_bench::migration::CHECKSUM)); reads the buffer
/// back into a second checksum; and prints `M:pass N` (N in hex) when they
/// agree, `M:BAD N` and stops when they do not. Each pass first checks the
/// buffer against the last pass's checksum too, so a page a migration
/// left stale shows wherever in a pass the guest moved.
fn writer_kernel(mib: u32) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    writer_loop(&mut a, mib).unwrap();
    multiboot_elf(&a.assemble(u64::from(LOAD + CODE_OFF)).unwrap())
}

/// Where [`user_writer_kernel`] copies the loop it runs at CPL 3: apart
/// from the kernel's image, whose pages split execution hides from KVM.
const USER_CODE: u32 = 0x28_0000;
/// The page-directory-pointer table and page directory that map the
/// first 2 MiB again at 0xffff_ffff_8000_0000 (after [`pm32::PD`]).
const HIGH_PDPT: u32 = pm32::PD + 0x1000;
const HIGH_PD: u32 = pm32::PD + 0x2000;

/// The writer's loop at CPL 3 in 64-bit mode (IOPL 3, for its port
/// writes, which the kernel makes for it where they raise #GP; interrupts
/// off): a long-mode kernel maps the first 64 MiB (the
/// first 2 MiB, its own, for itself only, and read-only in the high half
/// for its gates), copies the loop to
/// [`USER_CODE`] and enters it. Under `--accel kvm` split execution runs
/// it in KVM.
fn user_writer_kernel(mib: u32) -> Vec<u8> {
    assert!(BUF + mib * (1 << 20) <= 64 << 20, "the buffer is mapped");
    pm32::Kernel::new("writer").long_mode(|l| {
        let a = &mut l.a;
        let mut user = a.create_label();
        let mut user_end = a.create_label();
        let mut map = a.create_label();
        let mut gp = a.create_label();
        let mut not_out = a.create_label();
        let mut main = a.create_label();
        a.jmp(main)?;
        // #GP from the loop's `out dx, al` (kvm_pvm runs CPL 3 without the
        // IOPL the guest gave it): the kernel writes the port and goes on
        // after it.
        a.set_label(&mut gp)?;
        a.push(rax)?;
        a.mov(rax, qword_ptr(rsp + 16))?;
        a.cmp(byte_ptr(rax), 0xee)?;
        a.pop(rax)?;
        a.jne(not_out)?;
        a.add(rsp, 8)?;
        a.out(dx, al)?;
        a.inc(qword_ptr(rsp))?;
        a.iretq()?;
        a.set_label(&mut not_out)?;
        a.mov(al, 0x33u32)?;
        a.out(0xf4u32, al)?;
        a.hlt()?;
        a.set_label(&mut main)?;
        l.gate(13, gp, 0)?;
        let a = &mut l.a;
        a.mov(ecx, 2u32)?;
        a.set_label(&mut map)?;
        a.mov(eax, ecx)?;
        a.shl(rax, 21)?;
        a.or(rax, 0x87)?;
        a.mov(qword_ptr(rcx * 8 + pm32::PD as i32), rax)?;
        a.inc(ecx)?;
        a.cmp(ecx, 32u32)?;
        a.jne(map)?;
        // The first 2 MiB, which hold the kernel, for the kernel only, and
        // again read-only at 0xffff_ffff_8000_0000, where every gate of the IDT
        // leads: split execution finds the kernel's code from the gates as
        // Linux's (read-only supervisor pages in the high half) and hides
        // it from KVM.
        a.mov(qword_ptr(u64::from(pm32::PD)), 0x83)?;
        a.mov(qword_ptr(u64::from(pm32::PD) - 0x2000 + 511 * 8), (HIGH_PDPT | 3) as i32)?;
        a.mov(qword_ptr(u64::from(HIGH_PDPT) + 510 * 8), (HIGH_PD | 3) as i32)?;
        a.mov(qword_ptr(u64::from(HIGH_PD)), 0x81)?;
        a.xor(ecx, ecx)?;
        let mut gate = a.create_label();
        a.set_label(&mut gate)?;
        a.mov(edi, ecx)?;
        a.shl(edi, 4)?;
        a.or(word_ptr(rdi + pm32::IDT as i32 + 6), 0x8000)?;
        a.mov(dword_ptr(rdi + pm32::IDT as i32 + 8), -1)?;
        a.inc(ecx)?;
        a.cmp(ecx, 256u32)?;
        a.jne(gate)?;
        a.mov(rax, cr3)?;
        a.mov(cr3, rax)?;
        // A 64-bit TSS descriptor is 16 bytes: its upper half (base bits
        // 63:32) zero, and the task register loaded again from it.
        a.mov(qword_ptr(u64::from(pm32::GDT) + u64::from(pm32::TSS_SEL) + 8), 0)?;
        a.mov(byte_ptr(u64::from(pm32::GDT) + u64::from(pm32::TSS_SEL) + 5), 0x89)?;
        a.mov(ax, u32::from(pm32::TSS_SEL))?;
        a.ltr(ax)?;
        // SSE on, as a 64-bit kernel has it.
        a.mov(rax, cr4)?;
        a.or(eax, 0x600)?;
        a.mov(cr4, rax)?;
        a.lea(rsi, qword_ptr(user))?;
        a.lea(rcx, qword_ptr(user_end))?;
        a.sub(rcx, rsi)?;
        a.mov(edi, USER_CODE)?;
        a.rep().movsb()?;
        a.push(i32::from(pm32::UDATA64))?;
        a.push(pm32::USTACK as i32)?;
        a.push(0x3002)?;
        a.push(i32::from(pm32::UCODE64))?;
        a.push(USER_CODE as i32)?;
        a.iretq()?;
        a.set_label(&mut user)?;
        writer_loop(a, mib)?;
        a.set_label(&mut user_end)?;
        a.int3()
    })
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
            // One model on both sides: the JIT's default (max) is not KVM's (v2).
            .arg("run")
            .args(accel_args(accel))
            .args(["--cpu", "v2", "--mem", mem, "--timeout", "300", "--kernel"])
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

    /// Waits for `want` on the serial console; fails at once on a pass
    /// that found its memory changed.
    fn wait_for(&self, want: &str, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !self.out().contains(want) {
            let out = self.out();
            assert!(!out.contains("M:BAD"), "a pass found its memory changed: {}", tail(&out));
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

/// The guest's passes that checked out: their numbers, from whole lines
/// only (a run can stop in the middle of one).
fn passes(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("M:pass "))
        .filter(|h| h.len() == 8)
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
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
    /// Pages sent with their bytes, in all.
    normal_pages: f64,
    /// Bytes of pages sent while the guest stood still.
    downtime_bytes: f64,
}

/// The engine's arguments for `accel`: "kvm" is split execution
/// (`--kvm-split on`), whose guest's kernel runs in the JIT; "kvm-all" is
/// the whole guest in KVM (`--kvm-split off`), with KVM's own interrupt
/// controllers and PIT.
fn accel_args(accel: &str) -> Vec<String> {
    let args: &[&str] = match accel {
        "kvm" => &["--accel", "kvm", "--kvm-split", "on"],
        "kvm-all" => &["--accel", "kvm", "--kvm-split", "off"],
        a => return vec!["--accel".to_string(), a.to_string()],
    };
    args.iter().map(|a| (*a).to_string()).collect()
}

/// A source running the guest `image` and a receiver waiting for it on
/// TCP (`uri`), each with a QMP socket, in the scratch folder `dir`; the
/// source has run two passes.
struct Pair {
    dir: PathBuf,
    uri: String,
    src_qmp: PathBuf,
    dst: Vm,
    src: Vm,
}

impl Pair {
    fn start(name: &str, image: &[u8], src_accel: &str, dest_accel: &str, mem: &str) -> Pair {
        Pair::start_with(name, image, src_accel, dest_accel, mem, None)
    }

    /// [`Pair::start`], the receiver started with `--incoming incoming`
    /// instead of the pair's URI when given.
    fn start_with(
        name: &str,
        image: &[u8],
        src_accel: &str,
        dest_accel: &str,
        mem: &str,
        incoming: Option<&str>,
    ) -> Pair {
        let dir = scratch(name);
        let kernel = dir.join("writer.elf");
        std::fs::write(&kernel, image).unwrap();
        let uri = format!("tcp:127.0.0.1:{}", free_port());
        let (src_qmp, dst_qmp) = (dir.join("src.qmp"), dir.join("dst.qmp"));
        let qmp_arg = |p: &Path| vec!["--qmp".to_string(), format!("unix:{},server=on,wait=off", p.display())];
        let mut dst_args = qmp_arg(&dst_qmp);
        dst_args.extend(["--incoming".to_string(), incoming.unwrap_or(&uri).to_string()]);
        let dst = Vm::start(&dir, "dst", &kernel, dest_accel, mem, &dst_args);
        let src = Vm::start(&dir, "src", &kernel, src_accel, mem, &qmp_arg(&src_qmp));
        src.wait_for("M:pass 00000002", 120);
        Pair { dir, uri, src_qmp, dst, src }
    }
}

/// Migrates a guest writing `mib` MiB in a loop from a JIT source to a
/// `dest_accel` receiver over TCP on loopback, with `setup` QMP commands
/// first; checks its passes go on there and all check out.
fn live_migration(name: &str, dest_accel: &str, mem: &str, mib: u32, setup: &[&str]) -> Figures {
    migrate_live(name, &writer_kernel(mib), "jit", dest_accel, mem, mib, setup)
}

/// Migrates the guest `image` (a writer of `mib` MiB, [`writer_loop`](ferrovm_bench::migration::writer_loop))
/// from a `src_accel` source to a `dest_accel` receiver over TCP on
/// loopback, with `setup` QMP commands first; checks its passes go on
/// there and all check out.
fn migrate_live(
    name: &str,
    image: &[u8],
    src_accel: &str,
    dest_accel: &str,
    mem: &str,
    mib: u32,
    setup: &[&str],
) -> Figures {
    let Pair { dir, uri, src_qmp, mut dst, src } = Pair::start(name, image, src_accel, dest_accel, mem);
    // The guest's pace at the source: passes per second, over half a
    // second and at least two passes.
    let last_pass = || passes(&src.out()).last().copied().unwrap_or(0);
    let (first, t0) = (last_pass(), Instant::now());
    while (last_pass() < first + 2 || t0.elapsed() < Duration::from_millis(500)) && t0.elapsed().as_secs() < 30 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pace = (last_pass() - first) as f64 / t0.elapsed().as_secs_f64();
    // `@half-rate-up-to-N@` in a command: half the bytes per second the
    // guest dirties at this pace, N at most, so that the link is slower
    // than the guest however fast this host runs it.
    let dirty_rate = pace * f64::from(mib) * f64::from(1u32 << 20);
    let mut q = Qmp::connect(&src_qmp);
    for cmd in setup {
        let cmd = match cmd.split_once("@half-rate-up-to-") {
            Some((before, after)) => {
                let (max, after) = after.split_once('@').expect("@half-rate-up-to-N@");
                let max: f64 = max.parse().expect("N is a number");
                let rate = (dirty_rate / 2.0).clamp(1e6, max) as u64;
                eprintln!("{name}: the guest dirties {:.0} MB/s; the link gets {rate} bytes/s", dirty_rate / 1e6);
                format!("{before}{rate}{after}")
            }
            None => cmd.to_string(),
        };
        assert_eq!(q.cmd(&cmd), r#"{"return":{}}"#, "{cmd}");
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
    // The source may have stopped while it printed the line of pass
    // `last_src + 1`, which the receiver then finishes.
    let cut = !src.out().ends_with('\n');
    let next = last_src + 1 + u64::from(cut);
    assert!(first_dst <= next, "the receiver goes on from the source's pass {last_src}: {first_dst}");
    assert!(!src.out().contains("M:BAD"));
    let throttle = num(&done, "cpu-throttle-percentage");
    let normal_pages = num(&done, "normal").expect("ram.normal");
    let downtime_bytes = num(&done, "downtime-bytes").expect("ram.downtime-bytes");
    eprintln!(
        "{name}: {mib} MiB written in a loop, {mem} guest, {src_accel} -> {dest_accel}: downtime {downtime_ms} ms, \
         total {total_ms} ms, {rounds} rounds, throttle {throttle:?}, {normal_pages} pages sent, \
         {downtime_bytes} bytes of them while stopped; {pace:.1} passes/s at the source; source pass {last_src}, \
         receiver from {first_dst}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Figures { downtime_ms, total_ms, rounds, throttle, normal_pages, downtime_bytes }
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
            r#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":5,"max-bandwidth":@half-rate-up-to-200000000@}}"#,
        ],
    );
    assert!(f.throttle.is_some_and(|t| t >= 20.0), "the vCPUs were throttled: {:?}", f.throttle);
    assert!(f.rounds >= 2.0);
}

/// The same from a guest wholly in KVM: the vCPU in KVM is kicked out at
/// the end of each running period to sleep its share.
#[test]
fn auto_converge_throttles_a_guest_wholly_in_kvm() {
    if !kvm::usable() {
        return;
    }
    let mib = 32;
    let f = migrate_live(
        "converge-kvm",
        &user_writer_kernel(mib),
        "kvm-all",
        "jit",
        "256M",
        mib,
        &[
            r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"auto-converge","state":true}]}}"#,
            r#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":5,"max-bandwidth":@half-rate-up-to-200000000@}}"#,
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

/// From split execution, whose guest writes its buffer at CPL 3 in KVM:
/// KVM's dirty log finds its stores, so
/// the rounds run while it writes (more than one dirty sync), pages go
/// again (more than the buffer's and the kernel's once), some of them
/// while stopped, and the receiver's passes check out.
fn from_kvm(name: &str, src_accel: &str, dest_accel: &str) {
    if !kvm::usable() {
        eprintln!("skipped: KVM is not usable here (/dev/kvm missing or refused)");
        return;
    }
    let mib = 32;
    let f = migrate_live(name, &user_writer_kernel(mib), src_accel, dest_accel, "256M", mib, &[]);
    assert!(f.rounds > 1.0, "the rounds ran while the guest ran: {} dirty syncs", f.rounds);
    let buffer_pages = f64::from(mib) * 256.0;
    assert!(
        f.normal_pages > buffer_pages + 256.0,
        "pages the guest rewrote in KVM went again: {} pages sent for a buffer of {buffer_pages}",
        f.normal_pages
    );
    assert!(f.downtime_bytes > 0.0, "the pages dirtied in the last round went while stopped");
}

#[test]
fn a_guest_writing_memory_migrates_live_from_kvm_to_the_jit() {
    from_kvm("kvm-jit", "kvm", "jit");
}

/// The whole guest in KVM, its kernel too, with KVM's interrupt
/// controllers: every store is KVM's to log.
#[test]
fn a_guest_wholly_in_kvm_migrates_live_to_the_jit() {
    from_kvm("kvmall-jit", "kvm-all", "jit");
}

#[test]
fn a_guest_writing_memory_migrates_live_from_kvm_to_kvm() {
    from_kvm("kvm-kvm", "kvm", "kvm");
}

/// `migrate_cancel` during the rounds: logging stops, the source guest
/// runs on and its passes still check out; the receiver, whose stream
/// ended early, exits with an error before its guest ran.
#[test]
fn a_cancelled_migration_leaves_the_guest_running() {
    let Pair { dir, uri, src_qmp, mut dst, src } = Pair::start("cancel", &writer_kernel(96), "jit", "jit", "256M");
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

/// libvirt's way: the receiver starts with `--incoming defer` (QEMU's
/// `-incoming defer`) and waits, stopped ("inmigrate"), until QMP's
/// `migrate-incoming` names the URI; a `cont` before that only marks it
/// to run once the guest has arrived. The guest then goes on there.
#[test]
fn a_deferred_receiver_takes_the_guest_at_migrate_incoming() {
    let Pair { dir, uri, src_qmp, dst, src } =
        Pair::start_with("defer", &writer_kernel(32), "jit", "jit", "256M", Some("defer"));
    let mut d = Qmp::connect(&dir.join("dst.qmp"));
    let status = d.cmd(r#"{"execute":"query-status"}"#);
    assert!(status.contains(r#""status":"inmigrate""#), "{status}");
    let early = d.cmd(r#"{"execute":"migrate","arguments":{"uri":"exec:cat > /dev/null"}}"#);
    assert!(early.contains("error"), "nothing to send yet: {early}");
    assert_eq!(d.cmd(r#"{"execute":"cont"}"#), r#"{"return":{}}"#);
    assert!(d.cmd(r#"{"execute":"query-status"}"#).contains("inmigrate"), "cont does not start it");
    let incoming = format!(r#"{{"execute":"migrate-incoming","arguments":{{"uri":"{uri}"}}}}"#);
    assert_eq!(d.cmd(&incoming), r#"{"return":{}}"#);
    let again = d.cmd(&incoming);
    assert!(again.contains("error"), "one incoming migration: {again}");
    let mut q = Qmp::connect(&src_qmp);
    assert_eq!(q.cmd(&format!(r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#)), r#"{"return":{}}"#);
    let r = q.migration_end(Duration::from_secs(60));
    assert!(r.contains(r#""status":"completed""#), "the migration did not complete: {r}\nreceiver: {}", dst.stderr());
    let last_src = passes(&src.out()).last().copied().unwrap_or(0);
    dst.wait_for(&format!("M:pass {:08x}", last_src + 2), 120);
    assert!(!dst.out().contains("M:start"), "the receiver did not boot the guest: {}", tail(&dst.out()));
    let status = d.cmd(r#"{"execute":"query-status"}"#);
    assert!(status.contains(r#""status":"running""#), "{status}");
    let mig = d.cmd(r#"{"execute":"query-migrate"}"#);
    assert!(mig.contains(r#""status":"completed""#), "{mig}");
    let _ = std::fs::remove_dir_all(&dir);
}
