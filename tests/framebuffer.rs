//! A guest that draws through the standard VGA's linear framebuffer, seen
//! by a VNC client, under the interpreter, the JIT and wholly in KVM.
//!
//! The guest (a multiboot kernel) puts BAR0 at 0xe0000000 itself, sets the
//! Bochs VBE mode 1024x768x32 with the linear framebuffer, and paints two
//! rows: row 100 with one store per pixel, row 200 with `rep stosd`. It
//! says `T:one`, waits for a key on the PS/2 keyboard, paints both rows in
//! a second colour, says `T:two` and spins. The client reads the first
//! picture whole, then asks for incremental updates until it sees the
//! second colour in both rows: only the pages the guest stored to since
//! the first picture are drawn again, so this shows that its stores are
//! tracked, whichever engine made them (guest memory's VRAM with the soft
//! TLB's entries and their write syncs; KVM's memory slot and its dirty
//! log).
//!
//! Where KVM cannot be used that run says why and passes.

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
#[path = "guest/run.rs"]
#[allow(dead_code, reason = "this suite spawns ferrovm itself")]
mod run;

use run::free_display;
use vnc::client::{Client, ClientEncoding};

/// Where the guest puts the framebuffer.
const FB: u32 = 0xe000_0000;
const WIDTH: u32 = 1024;
const FIRST: u32 = 0x00ff_0000;
const SECOND: u32 = 0x0000_ff00;

/// Paints row `row` with `colour`: one store per pixel, or `rep stosd`.
fn paint(a: &mut CodeAssembler, row: u32, colour: u32, string: bool) -> Result<(), IcedError> {
    a.mov(edi, FB + row * WIDTH * 4)?;
    a.mov(eax, colour)?;
    a.mov(ecx, WIDTH)?;
    if string {
        a.cld()?;
        a.rep().stosd()
    } else {
        let mut next = a.create_label();
        a.set_label(&mut next)?;
        a.mov(dword_ptr(edi), eax)?;
        a.add(edi, 4u32)?;
        a.dec(ecx)?;
        a.jnz(next)
    }
}

/// Writes Bochs VBE register `index`.
fn vbe(a: &mut CodeAssembler, index: u32, value: u32) -> Result<(), IcedError> {
    a.mov(dx, 0x1ceu32)?;
    a.mov(ax, index)?;
    a.out(dx, ax)?;
    a.mov(dx, 0x1cfu32)?;
    a.mov(ax, value)?;
    a.out(dx, ax)
}

/// The guest described above.
fn drawing_guest() -> Vec<u8> {
    let mut k = pm32::Kernel::new("fbdraw");
    let a = &mut k.a;
    // PCI 00:02.0: BAR0 (register 0x10) at FB, then memory decoding on.
    a.mov(dx, 0xcf8u32).unwrap();
    a.mov(eax, 0x8000_1010u32).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(dx, 0xcfcu32).unwrap();
    a.mov(eax, FB).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(dx, 0xcf8u32).unwrap();
    a.mov(eax, 0x8000_1004u32).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(dx, 0xcfcu32).unwrap();
    a.in_(eax, dx).unwrap();
    a.or(eax, 2u32).unwrap();
    a.out(dx, eax).unwrap();
    // 1024x768x32, enabled, with the linear framebuffer.
    for (index, value) in [(4, 0), (1, WIDTH), (2, 768), (3, 32), (4, 0x41)] {
        vbe(a, index, value).unwrap();
    }
    paint(a, 100, FIRST, false).unwrap();
    paint(a, 200, FIRST, true).unwrap();
    k.print("T:one\n").unwrap();
    let a = &mut k.a;
    // A byte from the keyboard (the i8042's output buffer full).
    let mut wait = a.create_label();
    a.set_label(&mut wait).unwrap();
    a.pause().unwrap();
    a.in_(al, 0x64).unwrap();
    a.test(al, 1).unwrap();
    a.jz(wait).unwrap();
    a.in_(al, 0x60).unwrap();
    paint(a, 100, SECOND, false).unwrap();
    paint(a, 200, SECOND, true).unwrap();
    k.print("T:two\n").unwrap();
    let a = &mut k.a;
    let mut spin = a.create_label();
    a.set_label(&mut spin).unwrap();
    a.pause().unwrap();
    a.jmp(spin).unwrap();
    k.build()
}

fn scratch() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("framebuffer");
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Vm {
    child: Child,
    serial: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn wait_serial(&self, line: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let out = std::fs::read_to_string(&self.serial).unwrap_or_default();
            if out.lines().any(|l| l == line) {
                return;
            }
            assert!(!out.contains("fbdraw:"), "the guest failed: {out}");
            assert!(Instant::now() < until, "no {line} from the guest: {out:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The colour of pixel (x, y) the client holds.
fn pixel(c: &Client, x: u32, y: u32) -> u32 {
    c.pixels[(y * u32::from(c.size.0) + x) as usize] & 0x00ff_ffff
}

/// Runs the guest under `accel` (ferrovm's `--accel` arguments).
fn draws_and_the_client_sees_each_picture(tag: &str, accel: &[&str]) {
    let dir = scratch();
    let kernel = dir.join("fbdraw.elf");
    std::fs::write(&kernel, drawing_guest()).unwrap();
    let serial = dir.join(format!("{tag}.out"));
    let _ = std::fs::remove_file(&serial);
    let display = free_display();
    let vnc = format!("127.0.0.1:{display}");
    let serial_arg = format!("file:{}", serial.display());
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--mem", "64M", "--vnc", &vnc, "--serial", &serial_arg, "--timeout", "120"])
        .args(accel)
        .args(["--kernel", kernel.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ferrovm starts");
    let vm = Vm { child, serial };
    vm.wait_serial("T:one");
    let mut c = Client::connect(([127, 0, 0, 1], 5900 + display).into(), None, ClientEncoding::Raw).unwrap();
    c.request(false).unwrap();
    c.read_update().unwrap();
    assert_eq!(c.size, (1024, 768), "the guest's VBE mode");
    for y in [100, 200] {
        assert_eq!(pixel(&c, 10, y), FIRST, "row {y} in the first colour");
        assert_eq!(pixel(&c, 1023, y), FIRST, "row {y} in the first colour");
    }
    assert_eq!(pixel(&c, 10, 150), 0, "nothing between the rows");
    // Any key: scancodes reach the guest's keyboard.
    for down in [true, false] {
        c.key(0x67, down).unwrap();
    }
    vm.wait_serial("T:two");
    let until = Instant::now() + Duration::from_secs(10);
    let seen = |c: &Client| [100, 200].iter().all(|&y| pixel(c, 10, y) == SECOND && pixel(c, 1023, y) == SECOND);
    while !seen(&c) {
        assert!(
            Instant::now() < until,
            "{tag}: the second picture never reached the client: row 100 {:#x}, row 200 {:#x}",
            pixel(&c, 10, 100),
            pixel(&c, 10, 200)
        );
        c.request(true).unwrap();
        match c.read_update() {
            Ok(_) => {}
            // Nothing changed in the client's read timeout: ask again.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{tag}: the VNC connection failed: {e}"),
        }
    }
    assert_eq!(pixel(&c, 10, 150), 0, "nothing between the rows");
}

#[test]
fn a_guest_drawing_through_the_framebuffer_in_the_interpreter_reaches_a_vnc_client() {
    draws_and_the_client_sees_each_picture("interp", &["--accel", "interp"]);
}

#[test]
fn a_guest_drawing_through_the_framebuffer_in_the_jit_reaches_a_vnc_client() {
    draws_and_the_client_sees_each_picture("jit", &["--accel", "jit"]);
}

#[test]
fn a_guest_drawing_through_the_framebuffer_wholly_in_kvm_reaches_a_vnc_client() {
    if !kvm::usable() {
        return;
    }
    draws_and_the_client_sees_each_picture("kvm", &["--accel", "kvm", "--kvm-split", "off"]);
}
