//! Tests of the local APIC.

use super::*;

fn apic() -> LocalApic {
    let mut a = LocalApic::new(0, true, Arc::new(Tsc::new(1_000_000_000)));
    a.bios_virtual_wire();
    a
}

fn rd(a: &mut LocalApic, reg: u32, now: u64) -> u32 {
    let mut d = [0u8; 4];
    a.mmio_read(u64::from(reg), &mut d, now);
    u32::from_le_bytes(d)
}

fn wr(a: &mut LocalApic, reg: u32, value: u32, now: u64) -> Option<LapicEffect> {
    a.mmio_write(u64::from(reg), &value.to_le_bytes(), now)
}

#[test]
fn reset_values() {
    let mut a = LocalApic::new(3, false, Arc::new(Tsc::new(1)));
    assert_eq!(a.apic_base(), 0xfee0_0800);
    assert_eq!(rd(&mut a, REG_ID, 0), 0x0300_0000);
    assert_eq!(rd(&mut a, REG_VERSION, 0), 0x0005_0014);
    assert_eq!(rd(&mut a, REG_DFR, 0), 0xffff_ffff);
    assert_eq!(rd(&mut a, REG_SVR, 0), 0xff);
    for reg in [REG_LVT_TIMER, REG_LVT_LINT0, REG_LVT_LINT1, REG_LVT_ERROR] {
        assert_eq!(rd(&mut a, reg, 0), 0x0001_0000);
    }
    assert!(!a.enabled());
    assert!(!a.accepts_pic_interrupts(), "LINT0 masked");
    let b = apic();
    assert_eq!(b.apic_base(), 0xfee0_0900, "the BSP bit");
    assert!(b.enabled());
    assert!(b.accepts_pic_interrupts(), "virtual wire");
}

#[test]
fn register_write_masks() {
    let mut a = apic();
    wr(&mut a, REG_ID, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_ID, 0), 0xff00_0000);
    wr(&mut a, REG_TPR, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_TPR, 0), 0xff);
    wr(&mut a, REG_LDR, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_LDR, 0), 0xff00_0000);
    wr(&mut a, REG_DFR, 0, 0);
    assert_eq!(rd(&mut a, REG_DFR, 0), 0x0fff_ffff);
    wr(&mut a, REG_SVR, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_SVR, 0), 0x3ff);
    wr(&mut a, REG_LVT_TIMER, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_LVT_TIMER, 0), 0x0007_00ff);
    wr(&mut a, REG_LVT_LINT0, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_LVT_LINT0, 0), 0x0001_a7ff);
    wr(&mut a, REG_LVT_ERROR, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_LVT_ERROR, 0), 0x0001_00ff);
    wr(&mut a, REG_LVT_THERMAL, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_LVT_THERMAL, 0), 0x0001_07ff);
    wr(&mut a, REG_TIMER_DIVIDE, 0xffff_ffff, 0);
    assert_eq!(rd(&mut a, REG_TIMER_DIVIDE, 0), 0b1011);
    wr(&mut a, REG_VERSION, 0, 0);
    assert_eq!(rd(&mut a, REG_VERSION, 0), 0x0005_0014, "read-only");
    let mut b = [0u8; 1];
    a.mmio_read(u64::from(REG_VERSION) + 2, &mut b, 0);
    assert_eq!(b, [0x05], "byte reads inside a register");
}

#[test]
fn illegal_registers_set_esr_and_bad_sizes_are_ignored() {
    let mut a = apic();
    assert_eq!(rd(&mut a, 0x2f0, 0), 0, "no CMCI entry with max LVT 5");
    assert_eq!(rd(&mut a, REG_SELF_IPI, 0), 0, "SELF IPI is x2APIC only");
    wr(&mut a, REG_ESR, 0, 0);
    assert_eq!(rd(&mut a, REG_ESR, 0), ESR_ILLEGAL_REGISTER);
    wr(&mut a, REG_ESR, 0, 0);
    assert_eq!(rd(&mut a, REG_ESR, 0), 0);
    assert_eq!(a.mmio_write(0x80, &[1, 2], 0), None);
    assert_eq!(a.mmio_write(0x84, &[1, 2, 3, 4], 0), None);
    assert_eq!(rd(&mut a, REG_TPR, 0), 0);
    let mut d = [0u8; 8];
    a.mmio_read(0x80, &mut d, 0);
    assert_eq!(d, [0xff; 8]);
}

#[test]
fn priorities_gate_delivery() {
    let mut a = apic();
    assert!(a.accept_fixed(0x51, false));
    assert_eq!(a.deliverable(), Some(0x51));
    a.set_tpr(0x50);
    assert_eq!(a.deliverable(), None, "same class as the TPR");
    a.set_tpr(0x4f);
    assert_eq!(a.acknowledge(), Some(0x51));
    assert_eq!(a.ppr(), 0x50);
    a.set_tpr(0);
    a.accept_fixed(0x52, false);
    assert_eq!(a.deliverable(), None, "same class as the one in service");
    a.accept_fixed(0x61, false);
    assert_eq!(a.acknowledge(), Some(0x61));
    assert_eq!(rd(&mut a, REG_ISR_FIRST + 0x30, 0), 1 << 1);
    assert_eq!(rd(&mut a, REG_IRR_FIRST + 0x20, 0), 1 << 18);
    assert_eq!(wr(&mut a, REG_EOI, 0, 0), None);
    assert_eq!(rd(&mut a, REG_ISR_FIRST + 0x30, 0), 0, "EOI ends the highest");
    assert_eq!(wr(&mut a, REG_EOI, 0, 0), None);
    assert_eq!(a.acknowledge(), Some(0x52));
}

#[test]
fn level_vectors_broadcast_their_eoi() {
    let mut a = apic();
    a.accept_fixed(0x41, true);
    assert_eq!(rd(&mut a, REG_TMR_FIRST + 0x20, 0), 1 << 1);
    assert_eq!(a.acknowledge(), Some(0x41));
    assert_eq!(wr(&mut a, REG_EOI, 0, 0), Some(LapicEffect::EoiBroadcast(0x41)));
    assert_eq!(wr(&mut a, REG_EOI, 0, 0), None, "nothing in service");
}

#[test]
fn illegal_vectors_are_refused_and_reported() {
    let mut a = apic();
    wr(&mut a, REG_LVT_ERROR, 0xfe, 0);
    a.accept_fixed(0x05, false);
    assert_eq!(a.acknowledge(), Some(0xfe), "the error LVT fires");
    wr(&mut a, REG_ESR, 0, 0);
    assert_eq!(rd(&mut a, REG_ESR, 0), ESR_RECEIVE_ILLEGAL_VECTOR);
    wr(&mut a, REG_ICR_LOW, 0x0000_4003, 0);
    wr(&mut a, REG_ESR, 0, 0);
    assert_eq!(rd(&mut a, REG_ESR, 0), ESR_SEND_ILLEGAL_VECTOR);
}

#[test]
fn software_disable_masks_the_lvt_and_refuses_interrupts() {
    let mut a = apic();
    wr(&mut a, REG_LVT_TIMER, 0x20, 0);
    wr(&mut a, REG_SVR, 0xff, 0);
    assert!(!a.enabled());
    assert_eq!(rd(&mut a, REG_LVT_TIMER, 0), 0x0001_0020);
    assert!(!a.accept_fixed(0x30, false));
    wr(&mut a, REG_LVT_LINT0, 0x700, 0);
    assert_eq!(rd(&mut a, REG_LVT_LINT0, 0), 0x0001_0700, "stays masked");
    assert!(!a.accepts_pic_interrupts());
    assert!(a.accept_nmi());
    assert!(a.take_nmi());
    assert!(!a.take_nmi());
}

#[test]
fn icr_sends_ipis() {
    let mut a = apic();
    wr(&mut a, REG_ICR_HIGH, 0x0100_0000, 0);
    assert_eq!(rd(&mut a, REG_ICR_HIGH, 0), 0x0100_0000);
    let effect = wr(&mut a, REG_ICR_LOW, 0x0004_0031, 0);
    assert_eq!(
        effect,
        Some(LapicEffect::Ipi(Ipi {
            vector: 0x31,
            delivery_mode: DeliveryMode::Fixed,
            logical: false,
            destination: 1,
            shorthand: Shorthand::SelfOnly,
            level_triggered: false,
            assert: false,
        }))
    );
    assert_eq!(rd(&mut a, REG_ICR_LOW, 0) & (1 << 12), 0, "delivery status idle");
    let Some(LapicEffect::Ipi(init)) = wr(&mut a, REG_ICR_LOW, 0x000c_4500, 0) else {
        panic!("INIT is sent");
    };
    assert_eq!(init.delivery_mode, DeliveryMode::Init);
    assert_eq!(init.shorthand, Shorthand::AllExcludingSelf);
    assert!(init.assert);
}

#[test]
fn destinations_match_physical_flat_and_cluster() {
    let mut a = apic();
    wr(&mut a, REG_ID, 0x0200_0000, 0);
    assert!(a.matches(2, false, 0xff));
    assert!(!a.matches(3, false, 0xff));
    assert!(a.matches(0xff, false, 0xff));
    wr(&mut a, REG_LDR, 0x0400_0000, 0);
    assert!(a.matches(0x04, true, 0xff));
    assert!(a.matches(0x06, true, 0xff));
    assert!(!a.matches(0x08, true, 0xff));
    wr(&mut a, REG_DFR, 0x0fff_ffff, 0); // cluster model
    wr(&mut a, REG_LDR, 0x2100_0000, 0);
    assert!(a.matches(0x21, true, 0xff));
    assert!(a.matches(0x23, true, 0xff));
    assert!(!a.matches(0x11, true, 0xff));
}

#[test]
fn one_shot_timer_counts_down_and_fires_once() {
    let mut a = apic();
    wr(&mut a, REG_TIMER_DIVIDE, 0b0011, 0); // divide by 16
    wr(&mut a, REG_LVT_TIMER, 0xec, 1_000);
    wr(&mut a, REG_TIMER_INITIAL, 1_000, 1_000);
    assert_eq!(a.next_deadline_ns(), Some(1_000 + 16_000));
    assert_eq!(rd(&mut a, REG_TIMER_CURRENT, 1_000 + 1_600), 900);
    a.tick(16_999);
    assert_eq!(a.deliverable(), None);
    a.tick(17_000);
    assert_eq!(a.acknowledge(), Some(0xec));
    assert_eq!(a.next_deadline_ns(), None);
    assert_eq!(rd(&mut a, REG_TIMER_CURRENT, 20_000), 0);
    a.tick(100_000);
    assert_eq!(a.deliverable(), None);
    wr(&mut a, REG_TIMER_INITIAL, 0, 30_000);
    assert_eq!(a.next_deadline_ns(), None);
}

#[test]
fn periodic_timer_reloads_and_coalesces() {
    let mut a = apic();
    wr(&mut a, REG_TIMER_DIVIDE, 0b1011, 0); // divide by 1
    wr(&mut a, REG_LVT_TIMER, 0x0002_0040, 0);
    wr(&mut a, REG_TIMER_INITIAL, 1_000_000, 0); // 1 ms
    assert_eq!(rd(&mut a, REG_TIMER_CURRENT, 250_000), 750_000);
    assert_eq!(rd(&mut a, REG_TIMER_CURRENT, 1_250_000), 750_000);
    a.tick(1_000_000);
    assert_eq!(a.next_deadline_ns(), Some(2_000_000));
    assert_eq!(a.acknowledge(), Some(0x40));
    wr(&mut a, REG_EOI, 0, 0);
    a.tick(5_500_000);
    assert_eq!(a.acknowledge(), Some(0x40), "missed periods fire once");
    assert_eq!(a.next_deadline_ns(), Some(6_000_000));
}

#[test]
fn periodic_timer_is_rate_limited() {
    let mut a = apic();
    wr(&mut a, REG_TIMER_DIVIDE, 0b1011, 0);
    wr(&mut a, REG_LVT_TIMER, 0x0002_0040, 0);
    wr(&mut a, REG_TIMER_INITIAL, 1, 0);
    a.tick(10);
    assert!(a.next_deadline_ns().unwrap() >= 10 + MIN_PERIODIC_NS);
}

#[test]
fn masked_timer_has_no_deadline_and_forgets_expiries() {
    let mut a = apic();
    wr(&mut a, REG_TIMER_DIVIDE, 0b1011, 0);
    wr(&mut a, REG_LVT_TIMER, 0x0001_0040, 0);
    wr(&mut a, REG_TIMER_INITIAL, 1_000, 0);
    assert_eq!(a.next_deadline_ns(), None);
    wr(&mut a, REG_LVT_TIMER, 0x40, 5_000);
    assert_eq!(a.next_deadline_ns(), None, "the one-shot expired while masked");
    a.tick(6_000);
    assert_eq!(a.deliverable(), None);
}

#[test]
fn divide_change_keeps_the_count() {
    let mut a = apic();
    wr(&mut a, REG_TIMER_DIVIDE, 0b1011, 0);
    wr(&mut a, REG_LVT_TIMER, 0x40, 0);
    wr(&mut a, REG_TIMER_INITIAL, 1_000, 0);
    assert_eq!(rd(&mut a, REG_TIMER_CURRENT, 400), 600);
    wr(&mut a, REG_TIMER_DIVIDE, 0b0000, 400); // divide by 2
    assert_eq!(rd(&mut a, REG_TIMER_CURRENT, 400), 600);
    assert_eq!(rd(&mut a, REG_TIMER_CURRENT, 600), 500);
    assert_eq!(a.next_deadline_ns(), Some(1_600));
}

#[test]
fn tsc_deadline_mode() {
    let tsc = Arc::new(Tsc::new(2_000_000_000)); // 2 ticks per ns
    let mut a = LocalApic::new(0, true, tsc);
    a.bios_virtual_wire();
    a.set_tsc_deadline(5_000);
    assert_eq!(a.tsc_deadline(), 0, "ignored outside TSC-deadline mode");
    wr(&mut a, REG_TIMER_INITIAL, 100, 0);
    wr(&mut a, REG_LVT_TIMER, 0x0004_00d0, 0);
    assert_eq!(rd(&mut a, REG_TIMER_INITIAL, 0), 0, "mode switch disarms");
    wr(&mut a, REG_TIMER_INITIAL, 100, 0);
    assert_eq!(rd(&mut a, REG_TIMER_INITIAL, 0), 0, "initial count ignored");
    a.set_tsc_deadline(5_000);
    assert_eq!(a.tsc_deadline(), 5_000);
    assert_eq!(a.next_deadline_ns(), Some(2_500));
    a.tick(2_499);
    assert_eq!(a.deliverable(), None);
    a.tick(2_500);
    assert_eq!(a.acknowledge(), Some(0xd0));
    assert_eq!(a.tsc_deadline(), 0, "the MSR clears when it fires");
    assert_eq!(a.next_deadline_ns(), None);
    a.set_tsc_deadline(9_000);
    a.set_tsc_deadline(0);
    assert_eq!(a.next_deadline_ns(), None, "0 disarms");
}

#[test]
fn apic_base_transitions() {
    let mut a = apic();
    assert_eq!(a.write_apic_base(0xfee0_0400), Err(MsrFault), "x2APIC without enable");
    assert_eq!(a.write_apic_base(0xfee0_0801), Err(MsrFault), "reserved bit");
    a.write_apic_base(0xfee0_0c00).unwrap();
    assert!(a.x2apic());
    assert_eq!(a.apic_base(), 0xfee0_0d00, "BSP kept");
    assert_eq!(a.write_apic_base(0xfee0_0800), Err(MsrFault), "x2APIC to xAPIC");
    a.write_apic_base(0xfee0_0000).unwrap();
    assert!(!a.hw_enabled());
    assert!(a.accepts_pic_interrupts(), "a disabled APIC passes INTR through");
    assert!(!a.accept_nmi());
    assert_eq!(a.write_apic_base(0xfee0_0c00), Err(MsrFault), "disabled to x2APIC");
    a.write_apic_base(0xfee0_0800).unwrap();
    assert!(!a.enabled(), "re-enabled in the reset state");
    let mut d = [0u8; 4];
    a.write_apic_base(0xfee0_0000).unwrap();
    a.mmio_read(0x20, &mut d, 0);
    assert_eq!(d, [0xff; 4]);
    a.write_apic_base(0xfed0_0800).unwrap();
    assert_eq!(a.apic_base() & APIC_BASE_ADDR_MASK, 0xfed0_0000);
}

#[test]
fn x2apic_msrs() {
    let mut a = LocalApic::new(0x23, true, Arc::new(Tsc::new(1)));
    a.bios_virtual_wire();
    assert_eq!(a.x2apic_msr_read(0x802, 0), Err(MsrFault), "xAPIC mode");
    a.write_apic_base(0xfee0_0c00).unwrap();
    assert_eq!(a.x2apic_msr_read(0x802, 0), Ok(0x23));
    assert_eq!(a.x2apic_msr_read(0x80d, 0), Ok((2 << 16) | (1 << 3)));
    assert_eq!(a.x2apic_msr_read(0x80e, 0), Err(MsrFault), "no DFR");
    assert_eq!(a.x2apic_msr_read(0x80b, 0), Err(MsrFault), "EOI is write-only");
    assert_eq!(a.x2apic_msr_read(0x831, 0), Err(MsrFault), "no ICR high");
    assert_eq!(a.x2apic_msr_write(0x802, 1, 0), Err(MsrFault), "ID is read-only");
    assert_eq!(a.x2apic_msr_write(0x80b, 1, 0), Err(MsrFault), "non-zero EOI");
    assert_eq!(a.x2apic_msr_write(0x808, 1 << 32, 0), Err(MsrFault));
    a.x2apic_msr_write(0x808, 0x20, 0).unwrap();
    assert_eq!(a.x2apic_msr_read(0x808, 0), Ok(0x20));
    let effect = a.x2apic_msr_write(0x83f, 0x45, 0).unwrap();
    assert!(matches!(effect, Some(LapicEffect::Ipi(Ipi { vector: 0x45, shorthand: Shorthand::SelfOnly, .. }))));
    let effect = a.x2apic_msr_write(0x830, (7u64 << 32) | 0x4051, 0).unwrap();
    let Some(LapicEffect::Ipi(ipi)) = effect else {
        panic!("ICR sends");
    };
    assert_eq!((ipi.destination, ipi.vector), (7, 0x51));
    assert_eq!(a.x2apic_msr_read(0x830, 0), Ok((7u64 << 32) | 0x4051));
    assert!(a.matches(0x23, false, u32::MAX));
    assert!(a.matches(0x0002_0008, true, u32::MAX));
    assert!(!a.matches(0x0001_0008, true, u32::MAX));
    let mut d = [0u8; 4];
    a.mmio_read(0x20, &mut d, 0);
    assert_eq!(d, [0xff; 4], "no MMIO in x2APIC mode");
}

#[test]
fn state_round_trips() {
    let mut a = apic();
    wr(&mut a, REG_LVT_TIMER, 0x0002_0040, 0);
    wr(&mut a, REG_TIMER_INITIAL, 1_000, 0);
    a.accept_fixed(0x77, true);
    let state = a.save();
    let mut b = LocalApic::new(0, true, Arc::new(Tsc::new(1_000_000_000)));
    b.restore(&state).unwrap();
    assert_eq!(b.save(), state);
    assert_eq!(b.deliverable(), Some(0x77));
}

/// An xAPIC programmed as an OS leaves it and caught mid-flight: priority,
/// cluster addressing, a latched and a pending error, a periodic timer
/// running, a level vector in service, an edge one requested, an NMI and
/// an ExtINT pending.
fn configured() -> LocalApic {
    let mut a = apic();
    wr(&mut a, REG_TPR, 0x20, 0);
    wr(&mut a, REG_LDR, 0x2100_0000, 0);
    wr(&mut a, REG_DFR, 0x0fff_ffff, 0);
    wr(&mut a, REG_LVT_ERROR, 0xfe, 0);
    wr(&mut a, REG_ICR_HIGH, 0x0300_0000, 0);
    assert_eq!(wr(&mut a, REG_ICR_LOW, 0x0000_0005, 0), None, "an illegal vector is refused");
    wr(&mut a, REG_ESR, 0, 0);
    rd(&mut a, 0x3f0, 0);
    wr(&mut a, REG_TIMER_DIVIDE, 0b0001, 10);
    wr(&mut a, REG_LVT_TIMER, 0x0002_0040, 10);
    wr(&mut a, REG_TIMER_INITIAL, 1_000, 10);
    wr(&mut a, REG_LVT_LINT1, 0x0000_a400, 10);
    a.accept_fixed(0x77, true);
    assert_eq!(a.acknowledge(), Some(0xfe), "the error interrupt first");
    assert_eq!(wr(&mut a, REG_EOI, 0, 10), None);
    assert_eq!(a.acknowledge(), Some(0x77));
    a.accept_fixed(0x51, false);
    a.accept_nmi();
    a.accept_extint();
    a
}

#[test]
fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
    let mut a = configured();
    let mut b = LocalApic::new(0, true, Arc::new(Tsc::new(1_000_000_000)));
    let state = persist::assert_round_trip(&a, &mut b);
    assert_eq!(state.esr, ESR_SEND_ILLEGAL_VECTOR);
    assert_eq!(state.esr_pending, ESR_ILLEGAL_REGISTER);
    assert!(state.nmi_pending && state.extint_pending);
    assert_eq!(b.next_deadline_ns(), a.next_deadline_ns());
    assert_eq!((b.ppr(), b.deliverable()), (a.ppr(), a.deliverable()));
    let mut regs =
        vec![REG_ID, REG_TPR, REG_APR, REG_PPR, REG_LDR, REG_DFR, REG_SVR, REG_ESR, REG_ICR_LOW, REG_ICR_HIGH];
    regs.extend((REG_ISR_FIRST..=REG_IRR_LAST).step_by(0x10));
    regs.extend((REG_LVT_TIMER..=REG_TIMER_CURRENT).step_by(0x10));
    regs.push(REG_TIMER_DIVIDE);
    for reg in regs {
        assert_eq!(rd(&mut b, reg, 1_234), rd(&mut a, reg, 1_234), "register {reg:#x}");
    }
    assert!(b.matches(0x21, true, 0xff) && a.matches(0x21, true, 0xff), "cluster 2, member 1");
    assert!(!b.matches(0x31, true, 0xff) && !a.matches(0x31, true, 0xff), "cluster 3");
    // The timer fires at the same time; the EOI of the level vector broadcasts.
    let due = b.next_deadline_ns().unwrap();
    for x in [&mut a, &mut b] {
        x.tick(due);
        assert!(x.take_nmi());
        assert!(x.accepts_pic_interrupts());
    }
    assert_eq!(b.save(), a.save());
    assert_eq!(wr(&mut b, REG_EOI, 0, due), Some(LapicEffect::EoiBroadcast(0x77)));
}

#[test]
fn a_tsc_deadline_timer_in_x2apic_mode_round_trips() {
    let tsc = Arc::new(Tsc::new(2_000_000_000));
    let mut a = LocalApic::new(0, true, tsc.clone());
    a.bios_virtual_wire();
    a.write_apic_base(LAPIC_BASE | APIC_BASE_BSP | APIC_BASE_ENABLE | APIC_BASE_EXTD).unwrap();
    a.x2apic_msr_write(0x832, 0x0004_00d0, 0).unwrap();
    a.set_tsc_deadline(5_000);
    a.x2apic_msr_write(MSR_X2APIC_ICR, 0x0000_0007_0000_0000, 0).unwrap();
    let mut b = LocalApic::new(0, true, tsc);
    let state = persist::assert_round_trip(&a, &mut b);
    assert!(b.x2apic());
    assert_eq!(b.tsc_deadline(), 5_000);
    assert_eq!(b.next_deadline_ns(), Some(2_500));
    assert_eq!(b.x2apic_msr_read(MSR_X2APIC_ICR, 0), Ok(0x0000_0007_0000_0000));
    b.tick(2_500);
    assert_eq!(b.acknowledge(), Some(0xd0));
    let mut bad = state.clone();
    bad.timer_initial = 5;
    assert_eq!(persist::assert_refused(&mut a, &bad).field, "timer_initial", "no count in TSC-deadline mode");
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let mut a = configured();
    let good = a.save();
    let cases: [Corruption<LapicState>; 19] = [
        ("apic_base", |s| s.apic_base |= 1),
        ("apic_base", |s| s.apic_base = (s.apic_base & !APIC_BASE_ENABLE) | APIC_BASE_EXTD),
        ("id", |s| s.id |= 1),
        ("tpr", |s| s.tpr = 0x100),
        ("ldr", |s| s.ldr |= 0xff),
        ("dfr", |s| s.dfr = DFR_MODEL_FLAT),
        ("svr", |s| s.svr |= 1 << 12),
        ("esr", |s| s.esr |= 1),
        ("esr_pending", |s| s.esr_pending |= 1 << 8),
        ("icr", |s| s.icr |= 1 << 12),
        ("lvt", |s| s.lvt[LVT_ERROR] |= LVT_DELIVERY_MODE),
        ("lvt", |s| s.lvt[LVT_TIMER] |= 1 << 19),
        ("timer_divide", |s| s.timer_divide = 0b0100),
        ("irr", |s| s.irr[0] |= 1 << 3),
        ("isr", |s| s.isr[0] |= 1),
        ("tmr", |s| s.tmr[0] |= 1 << 15),
        ("tsc_deadline", |s| s.tsc_deadline = 5),
        ("timer_next_ns", |s| s.timer_initial = 0),
        ("timer_initial", |s| s.lvt[LVT_TIMER] = (s.lvt[LVT_TIMER] & !LVT_TIMER_MODE) | (0b10 << LVT_TIMER_MODE_SHIFT)),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut a, &bad);
        assert_eq!(e.field, field, "{e}");
    }
}

#[test]
fn the_register_page_carries_the_state_and_the_running_timer() {
    let mut a = apic();
    wr(&mut a, REG_TPR, 0x20, 0);
    wr(&mut a, REG_TIMER_DIVIDE, 0b0011, 0); // divide by 16
    wr(&mut a, REG_LVT_TIMER, 0xec | (1 << 17), 1_000); // periodic
    wr(&mut a, REG_TIMER_INITIAL, 1_000, 1_000);
    let s = a.save();
    let now = 1_000 + 1_600; // 100 counts in
    let mut page = [0u8; 0x400];
    // A register the state does not hold is left alone.
    page[REG_VERSION as usize..REG_VERSION as usize + 4].copy_from_slice(&0x0005_0014u32.to_le_bytes());
    assert!(s.to_register_page(&mut page, now));
    let reg = |r: u32| u32::from_le_bytes(page[r as usize..r as usize + 4].try_into().unwrap());
    assert_eq!((reg(REG_TPR), reg(REG_TIMER_CURRENT), reg(REG_VERSION)), (0x20, 900, 0x0005_0014));
    // Read back 5 us later on another clock: the count goes on from 900.
    let later = 50_000;
    let back = LapicState::from_register_page(&page, s.apic_base, 0, later).expect("a whole page");
    assert_eq!(back.current_count(later), 900);
    assert_eq!(back.current_count(later + 16 * 400), 500);
    assert_eq!(back.timer_next_ns, Some(later + 16 * 900));
    assert_eq!((back.tpr, back.lvt, back.svr, back.timer_divide), (s.tpr, s.lvt, s.svr, s.timer_divide));
    LocalApic::check_state(&back).expect("a state the APIC takes");
    // Read-only and reserved bits a page may hold are dropped.
    let mut page2 = page;
    page2[REG_ICR_LOW as usize + 1] |= 0x10; // delivery status
    page2[REG_IRR_FIRST as usize] = 0x0f; // vectors 0-3
    let dropped = LapicState::from_register_page(&page2, s.apic_base, 0, later).unwrap();
    LocalApic::check_state(&dropped).expect("still a state the APIC takes");
    assert!(LapicState::from_register_page(&page[..0x100], s.apic_base, 0, later).is_none());
}

#[test]
fn an_expired_one_shot_stays_expired_through_the_page() {
    let mut a = apic();
    wr(&mut a, REG_LVT_TIMER, 0xec, 0);
    wr(&mut a, REG_TIMER_INITIAL, 100, 0);
    let mut page = [0u8; 0x400];
    assert!(a.save().to_register_page(&mut page, 10_000));
    let back = LapicState::from_register_page(&page, a.apic_base(), 0, 20_000).unwrap();
    assert_eq!((back.current_count(20_000), back.timer_next_ns), (0, None));
}
