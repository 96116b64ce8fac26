//! The machine's saved state: the round trip through a fresh machine, and
//! the states it refuses.

use std::sync::Arc;

use persist::Persist;

use super::{Machine, MachineState};
use crate::config::{EngineKind, Firmware, MachineConfig};

fn config(firmware: Firmware) -> MachineConfig {
    MachineConfig { firmware, ..MachineConfig::for_test(Arc::default()) }
}

/// A BIOS image that only halts: enough to give a machine its fw_cfg.
fn halting_bios() -> Firmware {
    Firmware::Bios(vec![0xf4; 0x1_0000])
}

fn nics() -> Vec<net::NicSpec> {
    ["user,model=virtio", "user,model=e1000"].iter().map(|s| s.parse().expect("a NIC spec")).collect()
}

/// Everything but the clock, which runs on between two saves.
fn without_clock(s: &MachineState) -> MachineState {
    let mut s = s.clone();
    s.clock.now_ns = 0;
    s
}

/// `again` is `state` saved once more a moment later.
fn assert_same_but_later(state: &MachineState, again: &MachineState) {
    assert_eq!(without_clock(again), without_clock(state), "a restored machine saves another state");
    let (then, now) = (state.clock.now_ns, again.clock.now_ns);
    assert!(now >= then && now - then < 1_000_000_000, "the clock went on from the saved time: {then} -> {now}");
}

#[test]
fn a_machine_that_ran_the_builtin_guest_round_trips_through_a_fresh_one() {
    let ran = Machine::new(config(Firmware::Builtin)).expect("a machine");
    let report = ran.run(EngineKind::Interp).expect("the run");
    assert_eq!(report.status, 1, "the built-in guest ran to its end");
    let state = ran.save();
    // The guest programmed the chipset: the state is not a fresh machine's.
    let fresh = Machine::new(config(Firmware::Builtin)).expect("a machine");
    assert_ne!(without_clock(&fresh.save()).chipset, state.chipset, "the run left its mark on the chipset");

    let mut restored = Machine::new(config(Firmware::Builtin)).expect("a machine");
    restored.restore(&state).expect("the state of a machine built alike");
    assert_same_but_later(&state, &restored.save());
    assert!(restored.clock.now_ns() >= state.clock.now_ns, "guest time resumes from the saved time");
}

#[test]
fn a_machine_with_fw_cfg_nics_and_their_functions_round_trips() {
    let mut m = Machine::with_nics(config(halting_bios()), &nics()).expect("a machine");
    let state = m.save();
    assert!(state.fw_cfg.is_some(), "a BIOS boot has fw_cfg");
    let functions = &state.devices.as_ref().expect("the NICs' functions").functions;
    assert_eq!(functions.len(), 2);
    let mut restored = Machine::with_nics(config(halting_bios()), &nics()).expect("a machine");
    restored.restore(&state).expect("the state of a machine built alike");
    assert_same_but_later(&state, &restored.save());
    m.restore(&restored.save()).expect("and back");
}

#[test]
fn a_state_of_another_kind_of_machine_is_refused_and_changes_nothing() {
    let with_bios = Machine::with_nics(config(halting_bios()), &nics()).expect("a machine").save();
    let mut builtin = Machine::new(config(Firmware::Builtin)).expect("a machine");
    let before = builtin.save();
    let e = builtin.restore(&with_bios).expect_err("fw_cfg where this machine has none");
    assert_eq!(e.field, "fw_cfg", "{e}");
    assert_eq!(without_clock(&builtin.save()), without_clock(&before));

    // The NICs in the other order: an e1000 state for the virtio-net function.
    let mut swapped = Machine::with_nics(config(halting_bios()), &nics()).expect("a machine");
    let mut state = swapped.save();
    let functions = &mut state.devices.as_mut().unwrap().functions;
    let (a, b) = (functions[0].1.clone(), functions[1].1.clone());
    (functions[0].1, functions[1].1) = (b, a);
    let e = swapped.restore(&state).expect_err("a function of another kind");
    assert_eq!(e.field, "functions", "{e}");
}

#[test]
fn a_corrupt_part_is_refused_and_the_parts_before_it_are_taken_back() {
    let ran = Machine::new(config(Firmware::Builtin)).expect("a machine");
    ran.run(EngineKind::Interp).expect("the run");
    let mut state = ran.save();
    // More received bytes than the UART's FIFO can hold: restored after the
    // clock and the chipset, which must then get their states back.
    state.serial.rx_fifo = vec![b'x'; 4096];
    let mut m = Machine::new(config(Firmware::Builtin)).expect("a machine");
    let before = m.save();
    let e = m.restore(&state).expect_err("an overfull FIFO");
    assert_eq!(e.part, "16550A UART", "{e}");
    assert_same_but_later(&before, &m.save());
}
