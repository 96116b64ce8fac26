//! KVM's in-kernel interrupt controllers and PIT ⇄ the machine's models.
//!
//! A guest wholly in KVM keeps its 8259A pair, I/O APIC, PIT and local
//! APICs in the kernel. When its vCPUs stop for work on the whole machine
//! (a snapshot, a migration, a debugger), each engine moves what KVM holds
//! into the machine's models ([`crate::engine::Engine::save_chips`]): the
//! models are then the machine's state, which saved states carry and any
//! engine can take. New engines under KVM move the models' state into the
//! new VM before the guest runs ([`crate::engine::Engine::load_chips`]), and
//! leave the models' timers idle, since KVM's run the guest's.
//!
//! The functions here convert, one device at a time, with no KVM call.
//! KVM's structures have fields the models lack (and the other way round):
//! - the 8259A: KVM keeps no ICW3, no single mode and no level-triggered
//!   mode (LTIM), so a saved state keeps the model's own;
//! - the PIT: KVM restarts each counter from its count when it is written,
//!   so a counter's phase within its period does not carry into KVM, and
//!   KVM keeps no null-count flag;
//! - the local APIC: a pending NMI travels in the vCPU's state
//!   (`events.nmi_pending`), not the APIC's.

use devices::clock::ticks_in;
use devices::intc::ioapic::IoApicState;
use devices::intc::pic::{InitStep, PicChipState, PicState};
use devices::intc::CpuStartupState;
use devices::legacy::pit::{
    Pit, PitChannelState, PitState, BINARY_MODULUS, PIT_HZ, PORT_B_GATE2, PORT_B_SPEAKER_DATA as PORT_B_SPEAKER,
};
use hvf_kvm_accel::kvm::chips::{
    kvm_pic_state, kvm_pit_channel_state, IoapicRegs, PitRegs, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_PIT_FLAGS_SPEAKER_DATA_ON,
};

/// KVM's 8254 access states (`read_state`, `write_state`, `count_latched`).
const RW_STATE_LSB: u8 = 1;
const RW_STATE_MSB: u8 = 2;
const RW_STATE_WORD0: u8 = 3;
const RW_STATE_WORD1: u8 = 4;
/// The mode KVM gives a counter no control word has programmed.
const KVM_PIT_UNPROGRAMMED: u8 = 0xff;
/// The PIT's counter modulus: a count of 0 counts 65536.
const PIT_MODULUS: u32 = BINARY_MODULUS as u32;

/// One 8259A from KVM's; `model` supplies what KVM does not keep.
pub fn pic_from_kvm(k: &kvm_pic_state, model: &PicChipState) -> PicChipState {
    PicChipState {
        irr: k.irr,
        isr: k.isr,
        imr: k.imr,
        lines: k.last_irr,
        highest_priority: k.priority_add & 7,
        vector_base: k.irq_base & 0xf8,
        icw3: model.icw3,
        init_step: match k.init_state {
            1 => InitStep::Icw2,
            2 => InitStep::Icw3,
            3 => InitStep::Icw4,
            _ => InitStep::Ready,
        },
        icw4_needed: k.init4 != 0,
        single: model.single,
        level_triggered_mode: model.level_triggered_mode,
        auto_eoi: k.auto_eoi != 0,
        special_fully_nested: k.special_fully_nested_mode != 0,
        rotate_on_auto_eoi: k.rotate_on_auto_eoi != 0,
        read_isr: k.read_reg_select != 0,
        poll: k.poll != 0,
        special_mask: k.special_mask != 0,
        elcr: k.elcr & k.elcr_mask,
    }
}

/// One 8259A as KVM's, over `kvm` (which supplies the ELCR's mask).
pub fn pic_to_kvm(m: &PicChipState, kvm: &kvm_pic_state) -> kvm_pic_state {
    kvm_pic_state {
        last_irr: m.lines,
        irr: m.irr,
        imr: m.imr,
        isr: m.isr,
        priority_add: m.highest_priority & 7,
        irq_base: m.vector_base,
        read_reg_select: u8::from(m.read_isr),
        poll: u8::from(m.poll),
        special_mask: u8::from(m.special_mask),
        init_state: match m.init_step {
            InitStep::Ready => 0,
            InitStep::Icw2 => 1,
            InitStep::Icw3 => 2,
            InitStep::Icw4 => 3,
        },
        auto_eoi: u8::from(m.auto_eoi),
        rotate_on_auto_eoi: u8::from(m.rotate_on_auto_eoi),
        special_fully_nested_mode: u8::from(m.special_fully_nested),
        init4: u8::from(m.icw4_needed),
        elcr: m.elcr & kvm.elcr_mask,
        elcr_mask: kvm.elcr_mask,
    }
}

/// The pair from KVM's master and slave.
pub fn pics_from_kvm(k: &[kvm_pic_state; 2], model: &PicState) -> PicState {
    PicState { master: pic_from_kvm(&k[0], &model.master), slave: pic_from_kvm(&k[1], &model.slave) }
}

/// The pair as KVM's, over `kvm`'s.
pub fn pics_to_kvm(m: &PicState, kvm: &[kvm_pic_state; 2]) -> [kvm_pic_state; 2] {
    [pic_to_kvm(&m.master, &kvm[0]), pic_to_kvm(&m.slave, &kvm[1])]
}

/// The I/O APIC from KVM's (its input lines are the caller's to set).
pub fn ioapic_from_kvm(k: &IoapicRegs) -> IoApicState {
    IoApicState::from_registers(k.id & 0xf, k.ioregsel as u8, &k.redirection)
}

/// The I/O APIC as KVM's: an asserted level-triggered input is a request
/// (KVM delivers it again at the EOI while it stays asserted); an edge
/// input's edge has been delivered.
pub fn ioapic_to_kvm(m: &IoApicState) -> IoapicRegs {
    let level: u32 = (0..m.redirection.len()).filter(|&p| m.level_triggered(p)).map(|p| 1u32 << p).sum();
    IoapicRegs { id: m.apic_id(), ioregsel: u32::from(m.regsel), irr: m.lines & level, redirection: m.redirection }
}

/// One PIT counter from KVM's, at clock time `now`, its count loaded
/// `age_ns` before.
fn pit_channel_from_kvm(k: &kvm_pit_channel_state, age_ns: u64, now: u64) -> PitChannelState {
    let gate = k.gate != 0;
    if k.mode == KVM_PIT_UNPROGRAMMED || k.mode > 5 || !(1..=3).contains(&k.rw_mode) {
        // No control word yet: the model's power-on counter.
        let mut c = Pit::power_on_state().channels[0];
        c.gate = gate;
        return c;
    }
    let word = k.rw_mode == 3;
    let latched = k.count_latched != 0;
    PitChannelState {
        mode: k.mode,
        rw: k.rw_mode,
        bcd: k.bcd != 0,
        reload: u64::from(k.count.clamp(1, PIT_MODULUS)),
        start_ns: Some(now.saturating_sub(age_ns)),
        paused_ticks: None,
        gate,
        latched_count: latched.then_some(k.latched_count),
        latched_status: (k.status_latched != 0).then_some(k.status),
        read_msb_next: word && if latched { k.count_latched == RW_STATE_WORD1 } else { k.read_state == RW_STATE_WORD1 },
        write_msb_next: word && k.write_state == RW_STATE_WORD1,
        write_lsb: k.write_latch,
        null_count: false,
        // The edges up to now were KVM's to raise.
        irq_done_ticks: ticks_in(age_ns, PIT_HZ),
    }
}

/// The PIT (and port 0x61) from KVM's, at clock time `now`; `model`
/// supplies the port's bits KVM does not keep.
pub fn pit_from_kvm(k: &PitRegs, model: &PitState, now: u64) -> PitState {
    let channels = [0, 1, 2].map(|i| pit_channel_from_kvm(&k.channels[i], k.load_age_ns[i], now));
    let mut port_b = model.port_b & !(PORT_B_GATE2 | PORT_B_SPEAKER);
    if channels[2].gate {
        port_b |= PORT_B_GATE2;
    }
    if k.flags & KVM_PIT_FLAGS_SPEAKER_DATA_ON != 0 {
        port_b |= PORT_B_SPEAKER;
    }
    PitState { channels, port_b, refresh: model.refresh }
}

/// KVM's state of an access in progress, for access mode `rw`.
fn rw_state(rw: u8, msb_next: bool) -> u8 {
    match rw {
        1 => RW_STATE_LSB,
        2 => RW_STATE_MSB,
        _ if msb_next => RW_STATE_WORD1,
        _ => RW_STATE_WORD0,
    }
}

/// The PIT as KVM's, at clock time `now`, over `kvm` (which supplies the
/// flags the model does not keep).
pub fn pit_to_kvm(m: &PitState, kvm: &PitRegs, now: u64) -> PitRegs {
    let mut out = *kvm;
    for (i, c) in m.channels.iter().enumerate() {
        let programmed = c.start_ns.is_some() || !c.null_count;
        let k = &mut out.channels[i];
        k.count = u32::try_from(c.reload).unwrap_or(PIT_MODULUS).clamp(1, PIT_MODULUS);
        k.mode = if programmed { c.mode } else { KVM_PIT_UNPROGRAMMED };
        k.rw_mode = c.rw;
        k.bcd = u8::from(c.bcd);
        k.gate = u8::from(c.gate);
        k.latched_count = c.latched_count.unwrap_or(0);
        k.count_latched = if c.latched_count.is_some() { rw_state(c.rw, c.read_msb_next) } else { 0 };
        k.read_state = rw_state(c.rw, c.latched_count.is_none() && c.read_msb_next);
        k.status_latched = u8::from(c.latched_status.is_some());
        k.status = c.latched_status.unwrap_or(0);
        k.write_state = rw_state(c.rw, c.write_msb_next);
        k.write_latch = c.write_lsb;
        out.load_age_ns[i] = c.start_ns.map_or(0, |s| now.saturating_sub(s));
    }
    out.flags &= !KVM_PIT_FLAGS_SPEAKER_DATA_ON;
    if m.port_b & PORT_B_SPEAKER != 0 {
        out.flags |= KVM_PIT_FLAGS_SPEAKER_DATA_ON;
    }
    out
}

/// A vCPU's start-up state from KVM's run state: an AP KVM holds before
/// its INIT or start-up IPI waits for a SIPI; the BSP always runs.
pub fn startup_from_kvm(mp_state: u32, bsp: bool) -> CpuStartupState {
    let waiting = !bsp && matches!(mp_state, KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED);
    CpuStartupState { waiting_for_sipi: waiting, init_pending: false, sipi_pending: None }
}

/// KVM's run state for a vCPU in `startup`, halted or not. A CPU waiting
/// for its SIPI has had its INIT. A start-up IPI the machine had queued
/// and not yet applied is lost, with a warning.
pub fn startup_to_kvm(startup: &CpuStartupState, halted: bool, cpu: usize) -> u32 {
    if startup.init_pending || startup.sipi_pending.is_some() {
        tracing::warn!(
            target: "accel",
            cpu,
            "a start-up IPI the machine had not applied yet does not carry into KVM; the CPU waits for another"
        );
        return KVM_MP_STATE_INIT_RECEIVED;
    }
    if startup.waiting_for_sipi {
        KVM_MP_STATE_INIT_RECEIVED
    } else if halted {
        KVM_MP_STATE_HALTED
    } else {
        KVM_MP_STATE_RUNNABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::clock::ns_for_ticks;

    /// How long `ticks` PIT ticks take.
    fn ns(ticks: u64) -> u64 {
        ns_for_ticks(ticks, PIT_HZ)
    }

    fn kvm_pic(elcr_mask: u8) -> kvm_pic_state {
        kvm_pic_state { elcr_mask, ..Default::default() }
    }

    #[test]
    fn an_8259a_goes_to_kvm_and_back_unchanged() {
        let m = PicChipState {
            irr: 0x11,
            isr: 0x02,
            imr: 0xb8,
            lines: 0x11,
            highest_priority: 3,
            vector_base: 0x20,
            icw3: 0x04,
            init_step: InitStep::Ready,
            icw4_needed: true,
            single: false,
            level_triggered_mode: false,
            auto_eoi: false,
            special_fully_nested: true,
            rotate_on_auto_eoi: false,
            read_isr: true,
            poll: false,
            special_mask: true,
            elcr: 0x08,
        };
        let k = pic_to_kvm(&m, &kvm_pic(0xf8));
        assert_eq!((k.irq_base, k.priority_add, k.read_reg_select, k.elcr), (0x20, 3, 1, 0x08));
        assert_eq!(pic_from_kvm(&k, &m), m);
        // Mid-initialisation too.
        let mid = PicChipState { init_step: InitStep::Icw3, ..m };
        assert_eq!(pic_from_kvm(&pic_to_kvm(&mid, &kvm_pic(0xf8)), &m), mid);
        // ELCR bits KVM cannot hold are dropped.
        let k = pic_to_kvm(&PicChipState { elcr: 0xff, ..m }, &kvm_pic(0xf8));
        assert_eq!(k.elcr, 0xf8);
    }

    #[test]
    fn the_io_apic_drops_read_only_bits_and_requests_only_asserted_level_inputs() {
        let mut redirection = [0x1_0000u64; 24];
        // Pin 2: edge, vector 0x30, delivery status (read-only) set by KVM.
        redirection[2] = 0x30 | (1 << 12);
        // Pin 11: level, remote IRR set, destination 1.
        redirection[11] = 0x0100_0000_0000_0000 | 0x41 | (1 << 15) | (1 << 14);
        let k = IoapicRegs { id: 0, ioregsel: 0x10, irr: 1 << 11, redirection };
        let mut m = ioapic_from_kvm(&k);
        assert_eq!(m.redirection[2], 0x30);
        assert_eq!(m.redirection[11], redirection[11]);
        assert_eq!(m.regsel, 0x10);
        m.lines = (1 << 2) | (1 << 11);
        let back = ioapic_to_kvm(&m);
        assert_eq!(back.irr, 1 << 11, "the asserted edge input is not a request");
        assert_eq!(back.redirection[11], redirection[11]);
        assert_eq!(ioapic_from_kvm(&back).redirection, m.redirection);
    }

    fn periodic_counter(now: u64) -> PitChannelState {
        PitChannelState {
            mode: 2,
            rw: 3,
            bcd: false,
            reload: 1193,
            start_ns: Some(now - ns(1193 * 5 + 100)),
            paused_ticks: None,
            gate: true,
            latched_count: None,
            latched_status: None,
            read_msb_next: false,
            write_msb_next: true,
            write_lsb: 0x34,
            null_count: false,
            irq_done_ticks: 1193 * 5,
        }
    }

    #[test]
    fn a_running_pit_counter_keeps_its_count_access_and_start_through_kvm() {
        let now = 50_000_000_000;
        let mut m = Devices::pit();
        m.channels[0] = periodic_counter(now);
        m.port_b = 0b1011;
        m.channels[2].gate = true;
        let k = pit_to_kvm(&m, &Devices::kvm_pit(), now);
        assert_eq!((k.channels[0].count, k.channels[0].mode, k.channels[0].write_state), (1193, 2, RW_STATE_WORD1));
        assert_eq!(k.channels[0].write_latch, 0x34);
        assert_eq!(k.channels[1].mode, KVM_PIT_UNPROGRAMMED, "an unprogrammed counter stays so");
        assert_ne!(k.flags & KVM_PIT_FLAGS_SPEAKER_DATA_ON, 0);
        let back = pit_from_kvm(&k, &m, now);
        let c = back.channels[0];
        assert_eq!((c.mode, c.rw, c.reload, c.write_msb_next, c.write_lsb), (2, 3, 1193, true, 0x34));
        assert_eq!(c.start_ns, m.channels[0].start_ns);
        // The edges already raised are not raised again.
        assert!(c.irq_done_ticks >= 1193 * 5);
        assert_eq!(back.channels[1], m.channels[1]);
        assert_eq!(back.port_b, m.port_b);
    }

    #[test]
    fn a_latched_count_and_status_carry_through_kvm() {
        let now = 7_000_000_000;
        let mut m = Devices::pit();
        m.channels[0] = PitChannelState {
            latched_count: Some(0x1234),
            read_msb_next: true,
            latched_status: Some(0x34),
            write_msb_next: false,
            ..periodic_counter(now)
        };
        let k = pit_to_kvm(&m, &Devices::kvm_pit(), now);
        assert_eq!((k.channels[0].count_latched, k.channels[0].latched_count), (RW_STATE_WORD1, 0x1234));
        assert_eq!((k.channels[0].status_latched, k.channels[0].status), (1, 0x34));
        let c = pit_from_kvm(&k, &m, now).channels[0];
        assert_eq!((c.latched_count, c.read_msb_next, c.latched_status), (Some(0x1234), true, Some(0x34)));
    }

    #[test]
    fn start_up_states_map_to_kvm_run_states_and_back() {
        let waiting = CpuStartupState { waiting_for_sipi: true, init_pending: false, sipi_pending: None };
        let running = CpuStartupState::default();
        assert_eq!(startup_to_kvm(&waiting, false, 1), KVM_MP_STATE_INIT_RECEIVED);
        assert_eq!(startup_to_kvm(&running, true, 1), KVM_MP_STATE_HALTED);
        assert_eq!(startup_to_kvm(&running, false, 1), KVM_MP_STATE_RUNNABLE);
        assert_eq!(startup_from_kvm(KVM_MP_STATE_UNINITIALIZED, false), waiting);
        assert_eq!(startup_from_kvm(KVM_MP_STATE_INIT_RECEIVED, false), waiting);
        assert_eq!(startup_from_kvm(KVM_MP_STATE_HALTED, false), running);
        assert_eq!(startup_from_kvm(KVM_MP_STATE_UNINITIALIZED, true), running, "the BSP always runs");
    }

    /// Power-on states of the devices, for the tests.
    struct Devices;

    impl Devices {
        fn pit() -> PitState {
            Pit::power_on_state()
        }

        fn kvm_pit() -> PitRegs {
            let mut channels = [kvm_pit_channel_state::default(); 3];
            for (i, c) in channels.iter_mut().enumerate() {
                c.mode = KVM_PIT_UNPROGRAMMED;
                c.gate = u8::from(i != 2);
                c.count = PIT_MODULUS;
            }
            PitRegs { channels, flags: 0, load_age_ns: [0; 3] }
        }
    }
}
