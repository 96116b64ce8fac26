//! A guest wholly in KVM (`--accel kvm --kvm-split off`) keeps its
//! interrupt controllers and PIT, which are KVM's own, through `savevm`,
//! `loadvm` and a migration, and moves between KVM and the JIT with them.
//!
//! The guest (assembled here) routes the PIT's IRQ0 through the I/O APIC
//! to vector 0x30 at 100 Hz, runs its local APIC's timer periodically at
//! vector 0x40, masks the 8259As, and waits in HLT: every 25 PIT ticks it
//! prints `T:pit`, every 5 APIC timer ticks `T:apic`. Ticks stop for good
//! if any part of that set-up is lost: a reset I/O APIC masks its pins, a
//! reset local APIC masks its timer, a reset PIT counts nothing.
//!
//! The machine has two vCPUs; the second waits for a start-up IPI that
//! never comes, and must still wait after each move.
//!
//! Where KVM cannot be used the tests say why and pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

#[path = "guest/kvm.rs"]
mod kvm;
#[path = "guest/multiboot.rs"]
mod multiboot;
#[path = "guest/pm32.rs"]
mod pm32;
#[path = "guest/qmp.rs"]
mod qmp;
use pm32::{var, Kernel};
use qmp::Qmp;

const IOAPIC: u32 = 0xfec0_0000;
const LAPIC: u32 = 0xfee0_0000;
const PIT_VECTOR: u8 = 0x30;
const APIC_VECTOR: u8 = 0x40;

/// The ticking guest described above.
fn ticker() -> Vec<u8> {
    let mut k = Kernel::new("ticker");
    // The handlers: count, EOI to the local APIC, return.
    let mut pit = k.label();
    let mut apic = k.label();
    let mut spurious = k.label();
    let mut main = k.a.create_label();
    k.a.jmp(main).unwrap();
    for (l, counter) in [(&mut pit, 0), (&mut apic, 1)] {
        k.place(l).unwrap();
        k.a.inc(var(counter)).unwrap();
        k.a.mov(dword_ptr(LAPIC + 0xb0), 0u32).unwrap();
        k.a.iretd().unwrap();
    }
    k.place(&mut spurious).unwrap();
    k.a.iretd().unwrap();
    k.a.set_label(&mut main).unwrap();
    k.gate(PIT_VECTOR, pit, 0xe, 0, pm32::KCODE).unwrap();
    k.gate(APIC_VECTOR, apic, 0xe, 0, pm32::KCODE).unwrap();
    k.gate(0xff, spurious, 0xe, 0, pm32::KCODE).unwrap();
    let a = &mut k.a;
    // Both 8259As masked: IRQ0 goes through the I/O APIC only.
    a.mov(al, 0xffu32).unwrap();
    a.out(0xa1u32, al).unwrap();
    a.out(0x21u32, al).unwrap();
    // The local APIC on (spurious vector 0xff), its timer periodic at
    // vector 0x40, divide by 1, 20 ms at the APIC's 1 GHz.
    a.mov(dword_ptr(LAPIC + 0xf0), 0x1ffu32).unwrap();
    a.mov(dword_ptr(LAPIC + 0x3e0), 0xbu32).unwrap();
    a.mov(dword_ptr(LAPIC + 0x320), u32::from(APIC_VECTOR) | (1 << 17)).unwrap();
    a.mov(dword_ptr(LAPIC + 0x380), 20_000_000u32).unwrap();
    // I/O APIC pin 2 (IRQ0): fixed, edge, to APIC 0, vector 0x30.
    a.mov(dword_ptr(IOAPIC), 0x15u32).unwrap();
    a.mov(dword_ptr(IOAPIC + 0x10), 0u32).unwrap();
    a.mov(dword_ptr(IOAPIC), 0x14u32).unwrap();
    a.mov(dword_ptr(IOAPIC + 0x10), u32::from(PIT_VECTOR)).unwrap();
    // PIT counter 0: rate generator at 100 Hz.
    a.mov(al, 0x34u32).unwrap();
    a.out(0x43u32, al).unwrap();
    a.mov(al, (11932 & 0xff) as u32).unwrap();
    a.out(0x40u32, al).unwrap();
    a.mov(al, (11932 >> 8) as u32).unwrap();
    a.out(0x40u32, al).unwrap();
    // var(2), var(3): the next counts to report at.
    a.mov(var(2), 25u32).unwrap();
    a.mov(var(3), 5u32).unwrap();
    a.sti().unwrap();
    let mut idle = a.create_label();
    let mut apic_check = a.create_label();
    a.set_label(&mut idle).unwrap();
    a.hlt().unwrap();
    a.mov(eax, var(0)).unwrap();
    a.cmp(eax, var(2)).unwrap();
    a.jb(apic_check).unwrap();
    a.add(var(2), 25u32).unwrap();
    k.print("T:pit\n").unwrap();
    let a = &mut k.a;
    a.set_label(&mut apic_check).unwrap();
    a.mov(eax, var(1)).unwrap();
    a.cmp(eax, var(3)).unwrap();
    a.jb(idle).unwrap();
    a.add(var(3), 5u32).unwrap();
    k.print("T:apic\n").unwrap();
    k.a.jmp(idle).unwrap();
    k.build()
}

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
            std::fs::write(&kernel, ticker()).unwrap();
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
    let t = Instant::now();
    loop {
        let r = q.cmd(r#"{"execute":"query-migrate"}"#);
        if r.contains(r#""status":"completed""#) {
            break;
        }
        assert!(!r.contains(r#""status":"failed""#) && t.elapsed() < Duration::from_secs(60), "{r}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
