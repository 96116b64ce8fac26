//! The library's public face: a front end builds a [`vmm::Machine`] from a
//! configuration, runs it under an engine and reads how the run ended.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use vmm::{EngineKind, Firmware, KvmPit, Machine, MachineConfig, SerialOut, SplitMode};

fn builtin(serial: Arc<Mutex<Vec<u8>>>) -> MachineConfig {
    MachineConfig {
        mem: 64 << 20,
        firmware: Firmware::Builtin,
        serial: SerialOut::Capture(serial),
        no_reboot: true,
        timeout: Some(Duration::from_secs(120)),
        kvm_split: SplitMode::Off,
        kvm_pit: KvmPit::InKernel,
        cpu_model: cpu::cpuid::Model::V2,
        topology: Default::default(),
        vcpu_threads: Default::default(),
        vga: Default::default(),
        usb: None,
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
