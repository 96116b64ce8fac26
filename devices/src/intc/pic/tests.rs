//! Tests of the 8259A pair.

use super::*;
use PicChip::{Master, Slave};

/// Programs the pair as Linux does (vectors 0x30 and 0x38, cascade on IR2).
fn linux_init(pic: &mut PicPair, master_icw4: u8) {
    pic.write(Master, 1, 0xff);
    pic.write(Slave, 1, 0xff);
    pic.write(Master, 0, 0x11); // ICW1: edge, cascade, ICW4
    pic.write(Master, 1, 0x30); // ICW2
    pic.write(Master, 1, 0x04); // ICW3: slave on IR2
    pic.write(Master, 1, master_icw4);
    pic.write(Slave, 0, 0x11);
    pic.write(Slave, 1, 0x38);
    pic.write(Slave, 1, 0x02); // ICW3: slave ID 2
    pic.write(Slave, 1, 0x01);
    pic.write(Master, 1, 0x00);
    pic.write(Slave, 1, 0x00);
}

fn pair() -> PicPair {
    let mut pic = PicPair::new();
    linux_init(&mut pic, 0x01);
    pic
}

#[test]
fn initialisation_sequence_sets_vectors_and_clears_the_mask() {
    let mut pic = PicPair::new();
    pic.write(Master, 1, 0xfb);
    linux_init(&mut pic, 0x01);
    assert_eq!(pic.read(Master, 1), 0);
    let s = pic.save();
    assert_eq!(s.master.vector_base, 0x30);
    assert_eq!(s.slave.vector_base, 0x38);
    assert_eq!(s.master.icw3, 0x04);
    assert_eq!(s.master.init_step, InitStep::Ready);
    assert!(!s.master.auto_eoi);
}

#[test]
fn icw1_without_icw4_and_single_mode_skip_words() {
    let mut pic = PicPair::new();
    pic.write(Master, 0, 0x12); // SNGL, no IC4
    pic.write(Master, 1, 0x08);
    assert_eq!(pic.save().master.init_step, InitStep::Ready);
    pic.write(Master, 1, 0xaa);
    assert_eq!(pic.read(Master, 1), 0xaa, "the next odd write is OCW1");
    pic.set_irq(2, true); // ignored: cascade input
    pic.set_irq(1, true);
    assert_eq!(pic.acknowledge(), 0x08 | 7, "IRQ1 masked: spurious");
}

#[test]
fn edge_interrupt_is_delivered_once_and_eoi_clears_isr() {
    let mut pic = pair();
    assert!(!pic.output());
    pic.set_irq(0, true);
    pic.set_irq(0, false);
    assert!(pic.output(), "an edge stays latched after the line falls");
    assert_eq!(pic.acknowledge(), 0x30);
    assert!(!pic.output());
    pic.write(Master, 0, 0x0b); // OCW3: read ISR
    assert_eq!(pic.read(Master, 0), 0x01);
    pic.write(Master, 0, 0x20); // non-specific EOI
    assert_eq!(pic.read(Master, 0), 0x00);
    assert!(!pic.output(), "no new edge, no new interrupt");
}

#[test]
fn irr_and_isr_reads_follow_ocw3() {
    let mut pic = pair();
    pic.write(Master, 1, 0xff);
    pic.set_irq(3, true);
    pic.write(Master, 0, 0x0a); // read IRR
    assert_eq!(pic.read(Master, 0), 0x08);
    pic.write(Master, 0, 0x0b); // read ISR
    assert_eq!(pic.read(Master, 0), 0x00);
    pic.write(Master, 0, 0x08); // RR = 0: selection unchanged
    assert_eq!(pic.read(Master, 0), 0x00);
}

#[test]
fn mask_holds_requests_back() {
    let mut pic = pair();
    pic.write(Master, 1, 0x02);
    pic.set_irq(1, true);
    assert!(!pic.output());
    pic.write(Master, 1, 0x00);
    assert!(pic.output());
    assert_eq!(pic.acknowledge(), 0x31);
}

#[test]
fn priority_and_nesting() {
    let mut pic = pair();
    pic.set_irq(4, true);
    assert_eq!(pic.acknowledge(), 0x34);
    pic.set_irq(5, true);
    assert!(!pic.output(), "IR5 waits while IR4 is in service");
    pic.set_irq(1, true);
    assert!(pic.output(), "IR1 preempts IR4");
    assert_eq!(pic.acknowledge(), 0x31);
    pic.write(Master, 0, 0x20); // EOI ends IR1, the highest in service
    assert!(!pic.output());
    pic.write(Master, 0, 0x20); // EOI ends IR4
    assert_eq!(pic.acknowledge(), 0x35);
}

#[test]
fn specific_eoi_and_rotation() {
    let mut pic = pair();
    pic.set_irq(3, true);
    pic.set_irq(6, true);
    assert_eq!(pic.acknowledge(), 0x33);
    pic.write(Master, 0, 0x60 | 3); // specific EOI for IR3
    pic.write(Master, 0, 0x0b);
    assert_eq!(pic.read(Master, 0), 0);
    // Rotate on specific EOI of IR6 makes IR7 the highest priority.
    assert_eq!(pic.acknowledge(), 0x36);
    pic.write(Master, 0, 0xe0 | 6);
    assert_eq!(pic.save().master.highest_priority, 7);
    pic.set_irq(0, true);
    pic.set_irq(7, true);
    assert_eq!(pic.acknowledge(), 0x37, "IR7 now outranks IR0");
    // Set priority: IR0 lowest, IR1 highest.
    pic.write(Master, 0, 0x20);
    pic.write(Master, 0, 0xc0);
    assert_eq!(pic.save().master.highest_priority, 1);
    // Rotate on non-specific EOI.
    assert_eq!(pic.acknowledge(), 0x30);
    pic.write(Master, 0, 0xa0);
    assert_eq!(pic.save().master.highest_priority, 1);
    pic.write(Master, 0, 0x40); // no operation
    assert_eq!(pic.save().master.isr, 0);
}

#[test]
fn cascade_delivers_slave_vectors() {
    let mut pic = pair();
    pic.set_irq(8, true);
    pic.set_irq(8, false);
    assert!(pic.output());
    assert_eq!(pic.acknowledge(), 0x38);
    pic.write(Master, 0, 0x0b);
    pic.write(Slave, 0, 0x0b);
    assert_eq!(pic.read(Master, 0), 0x04, "the cascade level is in service");
    assert_eq!(pic.read(Slave, 0), 0x01);
    pic.set_irq(12, true);
    assert!(!pic.output(), "master IR2 in service holds off the slave");
    pic.write(Slave, 0, 0x20);
    pic.write(Master, 0, 0x20);
    assert!(pic.output());
    assert_eq!(pic.acknowledge(), 0x3c);
}

#[test]
fn special_fully_nested_lets_a_higher_slave_request_through() {
    let mut pic = PicPair::new();
    linux_init(&mut pic, 0x11); // SFNM on the master
    pic.set_irq(12, true);
    assert_eq!(pic.acknowledge(), 0x3c);
    pic.set_irq(9, true);
    assert!(pic.output());
    assert_eq!(pic.acknowledge(), 0x39);
}

#[test]
fn level_triggered_lines_retrigger_until_released() {
    let mut pic = pair();
    pic.write_elcr(1, 0x02); // IRQ9 level
    assert!(pic.is_level_triggered(9));
    pic.set_irq(9, true);
    assert_eq!(pic.acknowledge(), 0x39);
    pic.write(Slave, 0, 0x20);
    pic.write(Master, 0, 0x20);
    assert!(pic.output(), "still asserted: requests again");
    assert_eq!(pic.acknowledge(), 0x39);
    pic.set_irq(9, false);
    pic.write(Slave, 0, 0x20);
    pic.write(Master, 0, 0x20);
    assert!(!pic.output(), "released before the EOI: nothing more");
    // Released after an EOI re-raised the slave's output: the master has
    // latched the cascade edge, and the INTA cycle finds nothing there.
    pic.set_irq(9, true);
    assert_eq!(pic.acknowledge(), 0x39);
    pic.write(Slave, 0, 0x20);
    pic.write(Master, 0, 0x20);
    pic.set_irq(9, false);
    assert_eq!(pic.acknowledge(), 0x3f, "spurious IRQ15");
}

#[test]
fn a_vanished_level_request_is_spurious() {
    let mut pic = pair();
    pic.write_elcr(0, 0x20); // IRQ5 level
    pic.set_irq(5, true);
    assert!(pic.output());
    pic.set_irq(5, false);
    assert_eq!(pic.acknowledge(), 0x37);
    pic.write(Master, 0, 0x0b);
    assert_eq!(pic.read(Master, 0), 0, "no ISR bit for a spurious IRQ7");
    // The slave's version: IR15 with the master's IR2 in service.
    pic.write_elcr(1, 0x08); // IRQ11 level
    pic.set_irq(11, true);
    pic.set_irq(11, false);
    pic.set_irq(11, true);
    let s = pic.save();
    assert_eq!(s.slave.irr, 0x08);
    pic.set_irq(11, false);
    // The master latched the cascade edge; the slave has nothing.
    assert_eq!(pic.acknowledge(), 0x3f);
    assert_eq!(pic.save().slave.isr, 0);
}

#[test]
fn elcr_keeps_the_fixed_edge_bits() {
    let mut pic = pair();
    pic.write_elcr(0, 0xff);
    pic.write_elcr(1, 0xff);
    assert_eq!(pic.read_elcr(0), 0xf8);
    assert_eq!(pic.read_elcr(1), 0xde);
    assert_eq!(pic.read_elcr(2), 0xff);
    pic.write_elcr(7, 1);
    assert!(!pic.is_level_triggered(0));
    assert!(pic.is_level_triggered(3));
}

#[test]
fn ltim_makes_every_input_level_triggered() {
    let mut pic = PicPair::new();
    pic.write(Master, 0, 0x19); // ICW1 with LTIM
    pic.write(Master, 1, 0x20);
    pic.write(Master, 1, 0x04);
    pic.write(Master, 1, 0x01);
    assert!(pic.is_level_triggered(0));
    pic.set_irq(0, true);
    pic.set_irq(0, false);
    assert!(!pic.output());
}

#[test]
fn auto_eoi_sets_no_isr_bit_and_may_rotate() {
    let mut pic = PicPair::new();
    linux_init(&mut pic, 0x03);
    pic.set_irq(4, true);
    assert_eq!(pic.acknowledge(), 0x34);
    assert_eq!(pic.save().master.isr, 0);
    pic.write(Master, 0, 0x80); // rotate in AEOI mode
    pic.set_irq(4, false);
    pic.set_irq(4, true);
    assert_eq!(pic.acknowledge(), 0x34);
    assert_eq!(pic.save().master.highest_priority, 5);
    pic.write(Master, 0, 0x00);
    assert!(!pic.save().master.rotate_on_auto_eoi);
}

#[test]
fn poll_command_reads_and_acknowledges() {
    let mut pic = pair();
    pic.write(Master, 0, 0x0c);
    assert_eq!(pic.read(Master, 0), 0, "nothing requesting");
    pic.set_irq(6, true);
    pic.write(Master, 0, 0x0c);
    assert_eq!(pic.read(Master, 0), 0x86);
    assert_eq!(pic.save().master.isr, 0x40);
    assert!(!pic.save().master.poll, "the poll word is read once");
}

#[test]
fn special_mask_mode_lets_lower_levels_in() {
    let mut pic = pair();
    pic.set_irq(3, true);
    assert_eq!(pic.acknowledge(), 0x33);
    pic.write(Master, 1, 0x08); // mask IR3 (in service)
    pic.write(Master, 0, 0x68); // set special mask mode
    pic.set_irq(5, true);
    assert!(pic.output());
    assert_eq!(pic.acknowledge(), 0x35);
    pic.write(Master, 0, 0x48); // reset special mask mode
    assert!(!pic.save().master.special_mask);
}

#[test]
fn reinitialisation_needs_a_new_edge() {
    let mut pic = pair();
    pic.set_irq(1, true);
    linux_init(&mut pic, 0x01);
    assert!(!pic.output());
    pic.set_irq(1, false);
    pic.set_irq(1, true);
    assert!(pic.output());
}

#[test]
fn bad_ports_and_irqs_are_ignored() {
    let mut pic = pair();
    assert_eq!(pic.read(Master, 5), 0xff);
    pic.write(Slave, 9, 0xff);
    pic.set_irq(200, true);
    assert!(!pic.output());
}

#[test]
fn state_round_trips() {
    let mut pic = pair();
    pic.write_elcr(1, 0x0c);
    pic.set_irq(10, true);
    let state = pic.save();
    let mut other = PicPair::new();
    other.restore(&state).unwrap();
    assert_eq!(other.save(), state);
    assert!(other.output());
    assert_eq!(other.acknowledge(), 0x3a);
}

/// A pair initialised as Linux does, with IRQ10 and IRQ11 level-triggered,
/// IRQ10 in service and still asserted, IRQ1 and IRQ11 requesting, IRQ6
/// masked, the master rotated and reading ISR, the slave in special mask
/// mode.
fn configured() -> PicPair {
    let mut pic = pair();
    pic.write_elcr(1, 0x0c);
    pic.write(Master, 1, 0x40);
    pic.set_irq(10, true);
    assert_eq!(pic.acknowledge(), 0x3a);
    pic.set_irq(1, true);
    pic.set_irq(1, false);
    pic.set_irq(11, true);
    pic.set_irq(6, true);
    pic.write(Master, 0, 0xc4); // OCW2: set priority, IR4 lowest
    pic.write(Master, 0, 0x0b); // OCW3: read ISR
    pic.write(Slave, 0, 0x68); // OCW3: special mask mode
    pic
}

#[test]
fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
    let mut pic = configured();
    let mut fresh = PicPair::new();
    let state = persist::assert_round_trip(&pic, &mut fresh);
    assert_eq!(state.slave.lines, 0b1100);
    assert!(state.slave.special_mask && state.master.read_isr);
    assert_eq!(fresh.output(), pic.output());
    assert!(fresh.is_level_triggered(11) && !fresh.is_level_triggered(1));
    for (chip, port) in [(Master, 0), (Master, 1), (Slave, 0), (Slave, 1)] {
        assert_eq!(fresh.read(chip, port), pic.read(chip, port), "{chip:?} port {port}");
    }
    assert_eq!((fresh.read_elcr(0), fresh.read_elcr(1)), (0, 0x0c));
    // The same interrupts come in the same order, EOIs included.
    for _ in 0..4 {
        let (a, b) = (pic.acknowledge(), fresh.acknowledge());
        assert_eq!(a, b);
        for p in [&mut pic, &mut fresh] {
            p.write(Slave, 0, 0x20);
            p.write(Master, 0, 0x20);
        }
    }
    // And a new initialisation goes the same way.
    for p in [&mut pic, &mut fresh] {
        p.write(Master, 0, 0x13); // ICW1: single, ICW4 follows
        p.write(Master, 1, 0x50);
    }
    assert_eq!(fresh.save(), pic.save());
    assert_eq!(fresh.save().master.init_step, InitStep::Icw4);
}

/// A corruption of a state, and the field whose check must refuse it.
type Corruption<S> = (&'static str, fn(&mut S));

#[test]
fn corrupt_states_are_refused_field_by_field() {
    let mut pic = configured();
    pic.write(Master, 0, 0x13);
    let good = pic.save();
    let cases: [Corruption<PicState>; 8] = [
        ("highest_priority", |s| s.slave.highest_priority = 8),
        ("vector_base", |s| s.master.vector_base = 0x31),
        ("elcr", |s| s.master.elcr = 0x01),
        ("elcr", |s| s.slave.elcr = 0x21),
        ("init_step", |s| s.master.init_step = InitStep::Icw3),
        ("init_step", |s| {
            s.slave.init_step = InitStep::Icw4;
            s.slave.icw4_needed = false;
        }),
        ("irr", |s| s.slave.irr &= !0b1000),
        ("irr", |s| s.slave.lines &= !0b0100),
    ];
    for (field, corrupt) in cases {
        let mut bad = good;
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut pic, &bad);
        assert_eq!(e.field, field, "{e}");
    }
}
