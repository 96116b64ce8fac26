//! A guest wholly in KVM (`--accel kvm --kvm-split off`) keeps its
//! interrupt controllers and PIT, which are KVM's own, through `savevm`,
//! `loadvm` and a migration, and moves between KVM and the JIT with them.
//!
//! The guest is `tests/guest/ticker.rs`: it counts the ticks of the PIT
//! through the I/O APIC and of its local APIC's timer, and prints `T:pit`
//! and `T:apic` lines as they add up; the ticks stop for good if any part
//! of that set-up is lost.
//!
//! The machine has two vCPUs; the second waits for a start-up IPI that
//! never comes, and must still wait after each move.
//!
//! Where KVM cannot be used the tests say why and pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "guest/kvm.rs"]
mod kvm;
#[path = "guest/multiboot.rs"]
mod multiboot;
#[path = "guest/pm32.rs"]
mod pm32;
#[path = "guest/qmp.rs"]
mod qmp;
#[path = "guest/ticker.rs"]
mod ticker;
use qmp::Qmp;

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kvm-chips").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The engine's arguments: "kvm-all" is the whole guest in KVM.
fn accel_args(accel: &str) -> Vec<&str> {
    match accel {
        "kvm-all" => vec!["--accel", "kvm", "--kvm-split", "off"],
        a => vec!["--accel", a],
    }
}

/// A ferrovm running the ticker under `accel`, its COM1 in `serial`, its
/// QMP socket at `qmp`; killed when dropped.
struct Vm {
    child: Option<Child>,
    serial: PathBuf,
}

impl Vm {
    fn start(dir: &Path, tag: &str, accel: &str, extra: &[&str]) -> (Vm, Qmp) {
        let kernel = dir.join("ticker.elf");
        if !kernel.exists() {
            std::fs::write(&kernel, ticker::ticker().image).unwrap();
        }
        let serial = dir.join(format!("{tag}.out"));
        let qmp = dir.join(format!("{tag}.qmp"));
        let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
            .arg("run")
            .args(accel_args(accel))
            .args(["--cpu", "v2", "--cpus", "2", "--mem", "64M", "--timeout", "120", "--kernel"])
            .arg(&kernel)
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .arg("--qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrovm runs");
        let vm = Vm { child: Some(child), serial };
        let q = Qmp::connect(&qmp);
        (vm, q)
    }

    /// The counts of `T:pit` and `T:apic` lines so far.
    fn ticks(&self) -> (usize, usize) {
        let text = std::fs::read_to_string(&self.serial).unwrap_or_default();
        (text.matches("T:pit").count(), text.matches("T:apic").count())
    }

    /// Waits until both counts reach `at` more than `from`'s.
    fn ticks_past(&mut self, from: (usize, usize), more: usize, what: &str) -> (usize, usize) {
        let t = Instant::now();
        loop {
            let now = self.ticks();
            if now.0 >= from.0 + more && now.1 >= from.1 + more {
                eprintln!("{what}: {now:?} after {:?}", t.elapsed());
                return now;
            }
            if t.elapsed() > Duration::from_secs(60) || self.exited() {
                let stderr = self.finish();
                panic!("{what}: the ticks stopped at {now:?} (from {from:?}); ferrovm's stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Kills the process; its stderr.
    fn finish(&mut self) -> String {
        let Some(mut c) = self.child.take() else { return String::new() };
        let _ = c.kill();
        let out = c.wait_with_output().expect("ferrovm ends");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let stderr = self.finish();
        if std::thread::panicking() {
            eprintln!("--- stderr:\n{stderr}");
        }
    }
}

/// The guest is running, then `stop` and `migrate` to `stream`; the
/// source ends.
fn migrate_to_file(q: &mut Qmp, stream: &Path) {
    assert_eq!(q.cmd(r#"{"execute":"stop"}"#), r#"{"return":{}}"#);
    let uri = format!("exec:cat > {}", stream.display());
    assert_eq!(q.cmd(&format!(r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#)), r#"{"return":{}}"#);
    let r = q.migration_end(Duration::from_secs(60));
    assert!(r.contains(r#""status":"completed""#), "{r}");
}

/// A receiver under `accel` takes `stream`, and after `cont` the guest's
/// ticks go on there, from the counts it was migrated with.
fn receive(dir: &Path, tag: &str, accel: &str, stream: &Path, migrated_at: (usize, usize)) {
    let incoming = format!("exec:cat {}", stream.display());
    let (mut vm, mut q) = Vm::start(dir, tag, accel, &["--incoming", &incoming]);
    assert!(q.cmd(r#"{"execute":"query-status"}"#).contains(r#""status":"paused""#));
    assert_eq!(q.cmd(r#"{"execute":"cont"}"#), r#"{"return":{}}"#);
    // The receiver's COM1 shows only what the guest printed there.
    vm.ticks_past((0, 0), 3, &format!("{tag}: after the migration (the source had {migrated_at:?})"));
}

/// In one process: ticks, `savevm`, ticks in the VM made after the stop,
/// `loadvm`, ticks again; then a migration to a file, taken by the JIT
/// and by KVM again, where the ticks go on.
#[test]
fn a_guest_wholly_in_kvm_keeps_its_interrupt_controllers_through_savevm_loadvm_and_migration() {
    if !kvm::usable() {
        return;
    }
    let dir = scratch("from-kvm");
    let snapshots = dir.join("snapshots");
    let snap_arg = snapshots.display().to_string();
    let (mut vm, mut q) = Vm::start(&dir, "source", "kvm-all", &["--snapshot-dir", &snap_arg]);
    let at = vm.ticks_past((0, 0), 2, "booted");
    assert_eq!(
        q.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"savevm one"}}"#),
        r#"{"return":""}"#
    );
    let at = vm.ticks_past(at, 3, "after savevm");
    assert_eq!(
        q.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"loadvm one"}}"#),
        r#"{"return":""}"#
    );
    // The loaded snapshot printed its ticks before, so the counts may
    // repeat; they must grow again.
    let at = vm.ticks_past(at, 3, "after loadvm");
    let stream = dir.join("stream");
    migrate_to_file(&mut q, &stream);
    drop(vm);
    receive(&dir, "to-jit", "jit", &stream, at);
    receive(&dir, "to-kvm", "kvm-all", &stream, at);
}

/// The other way: the guest made under the JIT, its controllers the
/// machine's, goes on wholly in KVM.
#[test]
fn a_guest_from_the_jit_goes_on_wholly_in_kvm() {
    if !kvm::usable() {
        return;
    }
    let dir = scratch("from-jit");
    let (mut vm, mut q) = Vm::start(&dir, "source", "jit", &[]);
    let at = vm.ticks_past((0, 0), 2, "booted");
    let stream = dir.join("stream");
    migrate_to_file(&mut q, &stream);
    drop(vm);
    receive(&dir, "to-kvm", "kvm-all", &stream, at);
}

/// With the machine's own interrupt controllers (`--kvm-irqchip user`,
/// QEMU's `kernel-irqchip=off`), a guest wholly in KVM gets their
/// interrupts: the ticker's PIT and local APIC timer tick through the
/// machine's I/O APIC and local APIC, each interrupt injected before an
/// entry into KVM.
#[test]
fn a_guest_wholly_in_kvm_ticks_with_the_machines_own_interrupt_controllers() {
    if !kvm::usable() {
        return;
    }
    let dir = scratch("user-irqchip");
    let kernel = dir.join("ticker.elf");
    std::fs::write(&kernel, ticker::ticker().image).unwrap();
    let serial = dir.join("ticker.out");
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .arg("run")
        .args(accel_args("kvm-all"))
        .args(["--kvm-irqchip", "user", "--cpu", "v2", "--mem", "64M", "--timeout", "120", "--stats", "--kernel"])
        .arg(&kernel)
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrovm runs");
    let mut vm = Vm { child: Some(child), serial };
    vm.ticks_past((0, 0), 3, "the machine's own controllers");
}
