//! The library's public face: a front end builds a [`vmm::Machine`] from a
//! configuration, runs it under an engine and reads how the run ended.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use vmm::{EngineKind, Machine, MachineConfig, SerialOut, SplitMode};

fn builtin(serial: Arc<Mutex<Vec<u8>>>) -> MachineConfig {
    MachineConfig {
        timeout: Some(Duration::from_secs(120)),
        kvm_split: SplitMode::Off,
        ..MachineConfig::builtin(SerialOut::Capture(serial))
    }
}

/// The built-in guest checksums 4 MiB in ring 3 and reports on COM1; the
/// host knows the right answer.
fn boots_and_checksums(kind: EngineKind) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let m = Machine::new(builtin(out.clone())).expect("a machine");
    let report = m.run(kind).expect("the run");
    let text = String::from_utf8_lossy(&out.lock()).into_owned();
    assert_eq!(report.status, 1, "the guest's debug exit with EXIT_OK: {text}");
    assert_eq!(firmware::builtin::parse_checksum(&text), Some(firmware::builtin::expected_checksum()), "{text}");
    assert!(report.first_serial_byte.is_some());
}

#[test]
fn a_machine_built_by_a_library_user_runs_under_the_interpreter() {
    boots_and_checksums(EngineKind::Interp);
}

#[test]
fn a_machine_built_by_a_library_user_runs_under_the_jit() {
    boots_and_checksums(EngineKind::Jit);
}

#[test]
fn a_machine_too_small_for_its_firmware_is_refused_by_name() {
    let mut config = builtin(Arc::default());
    config.mem = 1 << 20;
    let e = Machine::new(config).err().expect("refused");
    assert!(e.to_string().contains("needs at least"), "{e}");
}

/// With the standard VGA, the built-in guest finds it on PCI, sets text
/// mode 3 and writes its lines into the text memory as it prints them on
/// COM1; what COM1 gets is the same as without a VGA.
fn shows_its_lines_on_the_vga(kind: EngineKind) {
    use firmware::builtin::{checksum_line, expected_checksum, BANNER, VGA_ATTRIBUTE};
    let without = Arc::new(Mutex::new(Vec::new()));
    let m = Machine::new(builtin(without.clone())).expect("a machine");
    assert!(m.vga().is_none());
    assert_eq!(m.run(kind).expect("the run").status, 1);
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut config = builtin(out.clone());
    config.vga = vmm::Vga::Std;
    let m = Machine::new(config).expect("a machine");
    let vga = m.vga().expect("the VGA");
    let report = m.run(kind).expect("the run");
    let text = String::from_utf8_lossy(&out.lock()).into_owned();
    assert_eq!(report.status, 1, "the guest's debug exit with EXIT_OK: {text}");
    assert_eq!(firmware::builtin::parse_checksum(&text), Some(expected_checksum()), "{text}");
    assert_eq!(*out.lock(), *without.lock(), "COM1 gets the same bytes with a VGA as without");
    let mut vga = vga.lock();
    let screen = vga.text_screen().expect("a text mode");
    assert_eq!((screen.cols, screen.rows), (80, 25), "text mode 3");
    let rows: Vec<String> = (0..screen.rows).map(|r| screen.line(r).trim_end().to_string()).collect();
    assert_eq!(rows[0], BANNER, "{rows:#?}");
    assert_eq!(rows[1], checksum_line(expected_checksum()), "{rows:#?}");
    assert!(rows[2..].iter().all(String::is_empty), "nothing else: {rows:#?}");
    let line_len = BANNER.len();
    assert!(screen.cells[..line_len].iter().all(|&(_, a)| a == VGA_ATTRIBUTE), "light grey on black");
    assert_eq!(screen.cursor, Some((0, 2)), "the hardware cursor at the start of the next row");
    // The picture: 720x400, the two rows of 16 dots drawn in light grey
    // (the DAC's EGA grey, 42/63 of full scale) and nothing below them.
    let mut pixels = Vec::new();
    let (w, h, _) = vga.render(&mut pixels);
    assert_eq!((w, h), (720, 400));
    let lit = |y0: usize, y1: usize| pixels[y0 * 720..y1 * 720].iter().filter(|&&p| p != 0).count();
    assert!(lit(0, 16) > 1000 && lit(16, 32) > 500, "the two rows are drawn: {} and {}", lit(0, 16), lit(16, 32));
    // Row 2 holds the cursor (its lines 13 and 14); the rows below are black.
    assert_eq!(lit(48, 400), 0);
    let grey = 0x00aa_aaaa;
    assert!(pixels.iter().all(|&p| p == 0 || p == grey), "black and light grey only");
}

#[test]
fn the_builtin_guest_shows_its_lines_on_the_vga_under_the_interpreter() {
    shows_its_lines_on_the_vga(EngineKind::Interp);
}

#[test]
fn the_builtin_guest_shows_its_lines_on_the_vga_under_the_jit() {
    shows_its_lines_on_the_vga(EngineKind::Jit);
}
