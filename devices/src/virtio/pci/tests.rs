use super::super::queue::testing::DriverRing;
use super::super::{STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, VIRTIO_F_INDIRECT_DESC};
use super::*;
use crate::intc::msi::RecordingMsi;
use crate::irq::RecordingIrq;
use crate::pci::config::PCI_COMMAND;

/// A device with two queues that echoes each readable chain of queue 1
/// into the next writable chain of queue 0.
struct Echo {
    resets: u32,
    activated: bool,
    cfg: [u8; 6],
}

impl VirtioDevice for Echo {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }
    fn debug_label(&self) -> String {
        "echo".into()
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![16, 16]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0b101
    }
    fn config_len(&self) -> usize {
        self.cfg.len()
    }
    fn read_config(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.cfg.get(offset + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.cfg.get_mut(offset + i) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, _ctx: &mut Context<'_>) {
        self.activated = true;
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.activated = false;
    }
    fn notify(&mut self, queue: usize, ctx: &mut Context<'_>) {
        if queue != 1 {
            return;
        }
        loop {
            let tx = match ctx.queues[1].pop(ctx.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    ctx.queues[1].mark_broken();
                    ctx.fail(&e);
                    return;
                }
            };
            let mut data = Vec::new();
            tx.read_all(ctx.mem, &mut data, 4096).unwrap();
            ctx.queues[1].add_used(ctx.mem, tx.head, 0).unwrap();
            if let Ok(Some(rx)) = ctx.queues[0].pop(ctx.mem) {
                let n = rx.write_at(ctx.mem, 0, &data).unwrap();
                ctx.queues[0].add_used(ctx.mem, rx.head, n as u32).unwrap();
                ctx.signal_used(0);
            }
        }
    }
}

/// What [`Echo`] saves: whether it was activated and its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EchoState {
    activated: bool,
    cfg: Vec<u8>,
}

impl Persist for Echo {
    type State = EchoState;

    fn save(&self) -> EchoState {
        EchoState { activated: self.activated, cfg: self.cfg.to_vec() }
    }

    fn restore(&mut self, s: &EchoState) -> Result<(), PersistError> {
        PersistError::check_len("echo device", "cfg", s.cfg.len(), self.cfg.len())?;
        self.activated = s.activated;
        self.cfg.copy_from_slice(&s.cfg);
        Ok(())
    }
}

struct Rig {
    dev: VirtioPci<Echo>,
    irq: Arc<RecordingIrq>,
    mem: Arc<GuestMemory>,
}

fn rig() -> Rig {
    let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
    let irq = Arc::new(RecordingIrq::new());
    let dev = VirtioPci::new(Echo { resets: 0, activated: false, cfg: *b"abcdef" }, mem.clone(), irq.clone());
    Rig { dev, irq, mem }
}

fn w(r: &mut Rig, off: u64, v: u64, len: usize) {
    r.dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
}
fn rd(r: &mut Rig, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    r.dev.bar_read(MODERN_BAR, off, &mut b[..len]);
    u64::from_le_bytes(b)
}

#[test]
fn pci_header_and_capabilities() {
    let mut r = rig();
    let c = r.dev.config();
    assert_eq!(c.read_dword(0), 0x1000_1af4);
    assert_eq!(c.u8_at(0x08), 0, "transitional devices have revision 0");
    assert_eq!(c.read_dword(0x2c / 4), 0x0001_1af4);
    assert_ne!(c.u16_at(PCI_STATUS) & STATUS_CAP_LIST, 0);
    // Walk the capability list.
    let mut at = usize::from(c.u8_at(PCI_CAPABILITY_LIST));
    let mut types = Vec::new();
    while at != 0 {
        assert_eq!(c.u8_at(at), CAP_VENDOR);
        types.push((c.u8_at(at + 3), c.u8_at(at + 4), c.u32_at(at + 8)));
        at = usize::from(c.u8_at(at + 1));
    }
    assert_eq!(
        types,
        vec![(1, 4, 0), (3, 4, 0x1000), (4, 4, 0x2000), (2, 4, 0x3000), (5, 0, 0)],
        "(type, bar, offset)"
    );
    assert_eq!(c.u32_at(0x84 + 16), NOTIFY_OFF_MULTIPLIER);
    assert_eq!(c.bar(LEGACY_BAR).unwrap().size, 32);
    assert!(format!("{:?}", r.dev).contains("echo"));
    assert_eq!(r.dev.debug_label(), "virtio-pci (echo)");
    // The PCI configuration access window reads the common config.
    r.dev.write_config(PCI_CFG_BAR, &[MODERN_BAR as u8]);
    r.dev.write_config(PCI_CFG_OFFSET, &(CC_NUM_QUEUES as u32).to_le_bytes());
    r.dev.write_config(PCI_CFG_LENGTH, &2u32.to_le_bytes());
    assert_eq!(r.dev.read_config(PCI_CFG_DATA / 4) & 0xffff, 2);
    r.dev.write_config(PCI_CFG_OFFSET, &(CC_QUEUE_SELECT as u32).to_le_bytes());
    r.dev.write_config(PCI_CFG_DATA, &[1, 0, 0, 0]);
    assert_eq!(rd(&mut r, CC_QUEUE_SELECT, 2), 1);
}

/// The modern driver's bring-up, then an echo through both queues.
#[test]
fn modern_bring_up_and_queue_traffic() {
    let mut r = rig();
    r.dev.write_config(PCI_COMMAND, &[0x06, 0]); // memory + bus master
    w(&mut r, CC_DEVICE_STATUS, 0, 1);
    w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(&mut r, CC_DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(rd(&mut r, CC_DEVICE_FEATURE, 4), 1, "VERSION_1 is bit 32");
    w(&mut r, CC_DEVICE_FEATURE_SELECT, 0, 4);
    assert_eq!(rd(&mut r, CC_DEVICE_FEATURE, 4), (VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0b101));
    // Without VERSION_1, FEATURES_OK does not stick.
    w(&mut r, CC_DRIVER_FEATURE_SELECT, 0, 4);
    w(&mut r, CC_DRIVER_FEATURE, 0b111, 4);
    assert_eq!(rd(&mut r, CC_DRIVER_FEATURE, 4), 0b101, "unoffered bits are dropped");
    w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    assert_eq!(rd(&mut r, CC_DEVICE_STATUS, 1) as u8 & STATUS_FEATURES_OK, 0);
    w(&mut r, CC_DRIVER_FEATURE_SELECT, 1, 4);
    w(&mut r, CC_DRIVER_FEATURE, 1, 4);
    w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    assert_ne!(rd(&mut r, CC_DEVICE_STATUS, 1) as u8 & STATUS_FEATURES_OK, 0);
    assert_eq!(r.dev.driver_features(), VIRTIO_F_VERSION_1 | 0b101);
    assert_eq!(rd(&mut r, CC_NUM_QUEUES, 2), 2);
    let mem = r.mem.clone();
    let mut rings = Vec::new();
    for (i, base) in [(0u16, 0x10000u64), (1, 0x20000)] {
        w(&mut r, CC_QUEUE_SELECT, u64::from(i), 2);
        assert_eq!(rd(&mut r, CC_QUEUE_SIZE, 2), 16);
        w(&mut r, CC_QUEUE_SIZE, 8, 2);
        let ring = DriverRing::new(&mem, base, 8);
        w(&mut r, CC_QUEUE_DESC, ring.desc & 0xffff_ffff, 4);
        w(&mut r, CC_QUEUE_DESC + 4, ring.desc >> 32, 4);
        w(&mut r, CC_QUEUE_DRIVER, ring.avail, 8);
        w(&mut r, CC_QUEUE_DEVICE, ring.used, 8);
        assert_eq!(rd(&mut r, CC_QUEUE_DEVICE, 8), ring.used);
        assert_eq!(rd(&mut r, CC_QUEUE_DRIVER + 4, 4), 0);
        assert_eq!(rd(&mut r, CC_QUEUE_NOTIFY_OFF, 2), u64::from(i));
        assert_eq!(rd(&mut r, CC_QUEUE_MSIX_VECTOR, 2), 0xffff);
        w(&mut r, CC_QUEUE_ENABLE, 1, 2);
        assert_eq!(rd(&mut r, CC_QUEUE_ENABLE, 2), 1);
        // Once enabled, the size is fixed.
        w(&mut r, CC_QUEUE_SIZE, 4, 2);
        assert_eq!(rd(&mut r, CC_QUEUE_SIZE, 2), 8);
        rings.push(ring);
    }
    rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
    mem.write(0x31000, b"ping").unwrap();
    rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
    // Notifications before DRIVER_OK are ignored...
    w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
    assert!(rings[0].take_used(&mem).is_empty());
    // ...and DRIVER_OK catches up.
    w(
        &mut r,
        CC_DEVICE_STATUS,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
        1,
    );
    assert!(r.dev.device().activated);
    assert_eq!(rings[0].take_used(&mem), vec![(0, 4)]);
    assert_eq!(mem.read_bytes::<4>(0x30000).unwrap(), *b"ping");
    assert!(r.irq.level(), "INTx is asserted while the ISR is set");
    assert_eq!(rd(&mut r, ISR_OFFSET, 1), 1);
    assert!(!r.irq.level(), "reading the ISR deasserts");
    assert_eq!(rd(&mut r, ISR_OFFSET, 1), 0);
    // A second round through the notify register.
    rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
    rings[1].add_chain(&mem, &[(0x31000, 2, false)]);
    w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
    assert_eq!(rings[0].take_used(&mem), vec![(1, 2)]);
    // Device config through BAR4.
    assert_eq!(rd(&mut r, DEVICE_OFFSET + 1, 2), u64::from(u16::from_le_bytes(*b"bc")));
    w(&mut r, DEVICE_OFFSET, u64::from(b'z'), 1);
    assert_eq!(rd(&mut r, DEVICE_OFFSET, 1), u64::from(b'z'));
    // INTx disable masks the line.
    r.dev.config_changed();
    assert!(r.irq.level());
    r.dev.write_config(PCI_COMMAND, &[0x06, 0x04]);
    assert!(!r.irq.level());
    r.dev.write_config(PCI_COMMAND, &[0x06, 0x00]);
    assert!(r.irq.level());
    assert_eq!(rd(&mut r, ISR_OFFSET, 1), u64::from(super::super::ISR_QUEUE | ISR_CONFIG));
    // Save, restore, reset.
    let s = r.dev.save();
    r.dev.restore(&s).unwrap();
    assert_eq!(r.dev.save(), s);
    w(&mut r, CC_DEVICE_STATUS, 0, 1);
    assert_eq!(r.dev.device().resets, 2);
    assert_eq!(rd(&mut r, CC_DEVICE_STATUS, 1), 0);
    assert_eq!(r.dev.driver_features(), 0);
    // Unknown registers and sizes are ignored.
    assert_eq!(rd(&mut r, 0x3f, 1), 0);
    w(&mut r, 0x3f, 1, 1);
    assert_eq!(rd(&mut r, CC_DEVICE_STATUS, 4), 0);
}

/// Brings the function up through the modern interface with both queues
/// enabled at 0x10000 and 0x20000, DRIVER_OK last.
fn bring_up(r: &mut Rig, before_driver_ok: impl FnOnce(&mut Rig)) -> Vec<DriverRing> {
    r.dev.write_config(PCI_COMMAND, &[0x06, 0]);
    w(r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(r, CC_DRIVER_FEATURE_SELECT, 1, 4);
    w(r, CC_DRIVER_FEATURE, 1, 4);
    w(r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    let mem = r.mem.clone();
    let mut rings = Vec::new();
    for (i, base) in [(0u16, 0x10000u64), (1, 0x20000)] {
        w(r, CC_QUEUE_SELECT, u64::from(i), 2);
        let ring = DriverRing::new(&mem, base, 16);
        w(r, CC_QUEUE_DESC, ring.desc, 8);
        w(r, CC_QUEUE_DRIVER, ring.avail, 8);
        w(r, CC_QUEUE_DEVICE, ring.used, 8);
        w(r, CC_QUEUE_ENABLE, 1, 2);
        rings.push(ring);
    }
    before_driver_ok(r);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    w(r, CC_DEVICE_STATUS, u64::from(ok), 1);
    rings
}

/// One echo: a 4-byte chain on queue 1 comes back on queue 0.
fn echo(r: &mut Rig, rings: &mut [DriverRing]) {
    let mem = r.mem.clone();
    rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
    rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
    w(r, NOTIFY_OFFSET + 4, 1, 2);
    assert_eq!(rings[0].take_used(&mem).len(), 1);
}

/// A system reset stops the device the way a driver's reset does: no
/// queue is served until a driver brings it up again; the PCI header stays.
#[test]
fn a_system_reset_stops_the_device_and_keeps_the_header() {
    let mut r = rig();
    let mut rings = bring_up(&mut r, |_| {});
    echo(&mut r, &mut rings);
    r.dev.system_reset();
    assert_eq!(r.dev.status(), 0);
    w(&mut r, CC_QUEUE_SELECT, 1, 2);
    assert_eq!(rd(&mut r, CC_QUEUE_ENABLE, 2), 0, "the queues are off");
    assert_eq!(rd(&mut r, CC_QUEUE_DESC, 8), 0);
    let mem = r.mem.clone();
    rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
    rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
    w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
    assert!(rings[0].take_used(&mem).is_empty(), "nothing is served after the reset");
    assert!(!r.irq.level());
    assert_eq!(r.dev.config().command() & 0x06, 0x06, "the PCI command register is kept");
}

#[test]
fn doorbells_are_the_notify_writes() {
    let mut r = rig();
    let bells = r.dev.doorbells();
    assert_eq!(bells.len(), 4, "two per queue");
    assert_eq!(bells[0], Doorbell { bar: LEGACY_BAR, offset: 0x10, len: 2, datamatch: Some(0), queue: 0 });
    assert_eq!(bells[3], Doorbell { bar: MODERN_BAR, offset: 0x3004, len: 0, datamatch: None, queue: 1 });
    let mut rings = bring_up(&mut r, |_| {});
    let mem = r.mem.clone();
    // The write each doorbell stands for notifies its queue: one echo each.
    for b in bells.iter().filter(|b| b.queue == 1) {
        rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
        rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
        let value = b.datamatch.unwrap_or(0x1234).to_le_bytes();
        r.dev.bar_write(b.bar, b.offset, &value[..(b.len as usize).max(1)]);
        assert_eq!(rings[0].take_used(&mem).len(), 1, "{b:?}");
    }
    // And so does ringing it; unknown queues are ignored.
    rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
    rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
    r.dev.doorbell(1, 1);
    assert_eq!(rings[0].take_used(&mem).len(), 1);
    r.dev.doorbell(7, 1);
    assert_eq!(r.dev.doorbell_rings(), 2);
    // Two writes gathered in one eventfd count: both counted, one service.
    rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
    rings[1].add_chain(&mem, &[(0x31000, 4, false)]);
    r.dev.doorbell(1, 2);
    assert_eq!(rings[0].take_used(&mem).len(), 1);
    assert_eq!(r.dev.doorbell_rings(), 4);
}

fn msix_rig() -> (Rig, Arc<RecordingMsi>) {
    msix_rig_on(Arc::new(GuestMemory::new(1 << 20).unwrap()))
}

/// A function with three MSI-X vectors over `mem`.
fn msix_rig_on(mem: Arc<GuestMemory>) -> (Rig, Arc<RecordingMsi>) {
    let irq = Arc::new(RecordingIrq::new());
    let sink = Arc::new(RecordingMsi::new());
    let dev = VirtioPci::new(Echo { resets: 0, activated: false, cfg: *b"abcdef" }, mem.clone(), irq.clone())
        .with_msix(sink.clone(), 3);
    (Rig { dev, irq, mem }, sink)
}

/// Programs table entry `v` with vector `0x40 + v` and unmasks it.
fn msix_entry(r: &mut Rig, v: u64) {
    let mut e = [0u8; 16];
    e[..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
    e[8..12].copy_from_slice(&(0x40 + v as u32).to_le_bytes());
    r.dev.bar_write(MSIX_BAR, 16 * v, &e);
}

fn msix_control(r: &mut Rig, value: u16) {
    r.dev.write_config(CAP_MSIX_AT + 2, &value.to_le_bytes());
}

fn vectors_sent(sink: &RecordingMsi) -> Vec<u32> {
    sink.take().iter().map(|m| m.data).collect()
}

#[test]
fn msix_capability_and_bar() {
    let (r, _) = msix_rig();
    let c = r.dev.config();
    let mut at = usize::from(c.u8_at(PCI_CAPABILITY_LIST));
    let mut ids = Vec::new();
    while at != 0 {
        ids.push(c.u8_at(at));
        at = usize::from(c.u8_at(at + 1));
    }
    assert_eq!(ids, [CAP_VENDOR, CAP_VENDOR, CAP_VENDOR, CAP_VENDOR, CAP_VENDOR, 0x11]);
    assert_eq!(c.u16_at(CAP_MSIX_AT + 2), 2, "three vectors: two queues and the configuration");
    assert_eq!(c.bar(MSIX_BAR).unwrap().size, MSIX_BAR_SIZE);
    let dev = Arc::new(Mutex::new(r.dev));
    let bars: Vec<usize> = VirtioPci::bar_devices(&dev).into_iter().map(|(b, _)| b).collect();
    assert_eq!(bars, [LEGACY_BAR, MODERN_BAR, MSIX_BAR]);
    let plain = Arc::new(Mutex::new(rig().dev));
    assert_eq!(VirtioPci::bar_devices(&plain).len(), 2, "no MSI-X BAR without a sink");
}

#[test]
fn msix_sends_each_queue_its_vector_and_not_intx() {
    let (mut r, sink) = msix_rig();
    msix_control(&mut r, 0x8000);
    for v in 0..3 {
        msix_entry(&mut r, v);
    }
    let mut rings = bring_up(&mut r, |r| {
        w(r, CC_MSIX_CONFIG, 2, 2);
        assert_eq!(rd(r, CC_MSIX_CONFIG, 2), 2);
        w(r, CC_QUEUE_SELECT, 0, 2);
        w(r, CC_QUEUE_MSIX_VECTOR, 0, 2);
        w(r, CC_QUEUE_SELECT, 1, 2);
        w(r, CC_QUEUE_MSIX_VECTOR, 3, 2);
        assert_eq!(rd(r, CC_QUEUE_MSIX_VECTOR, 2), 0xffff, "vector 3 is not in the table");
        w(r, CC_QUEUE_MSIX_VECTOR, 1, 2);
        assert_eq!(rd(r, CC_QUEUE_MSIX_VECTOR, 2), 1);
    });
    echo(&mut r, &mut rings);
    assert_eq!(vectors_sent(&sink), [0x40], "the used buffer on queue 0");
    assert!(!r.irq.level(), "INTx stays low while MSI-X is enabled");
    r.dev.config_changed();
    assert_eq!(vectors_sent(&sink), [0x42]);
    // A masked vector pends and is sent on unmask.
    r.dev.bar_write(MSIX_BAR, 12, &[1, 0, 0, 0]);
    echo(&mut r, &mut rings);
    assert!(sink.take().is_empty());
    r.dev.bar_write(MSIX_BAR, 12, &[0, 0, 0, 0]);
    assert_eq!(vectors_sent(&sink), [0x40]);
    // NO_VECTOR: no interrupt for queue 0.
    w(&mut r, CC_QUEUE_SELECT, 0, 2);
    w(&mut r, CC_QUEUE_MSIX_VECTOR, 0xffff, 2);
    echo(&mut r, &mut rings);
    assert!(sink.take().is_empty());
    // Disabling MSI-X hands the ISR back to INTx.
    msix_control(&mut r, 0);
    assert!(r.irq.level());
    assert_ne!(rd(&mut r, ISR_OFFSET, 1), 0);
    assert!(!r.irq.level());
    // Save and restore keep the table and the mapping; a reset unmaps.
    let s = r.dev.save();
    assert!(s.msix.is_some());
    let (mut other, _) = msix_rig();
    other.dev.restore(&s).unwrap();
    assert_eq!(other.dev.save(), s);
    w(&mut r, CC_DEVICE_STATUS, 0, 1);
    assert_eq!(rd(&mut r, CC_MSIX_CONFIG, 2), 0xffff);
    w(&mut r, CC_QUEUE_SELECT, 1, 2);
    assert_eq!(rd(&mut r, CC_QUEUE_MSIX_VECTOR, 2), 0xffff);
}

#[test]
fn msix_moves_the_legacy_device_configuration() {
    let (mut r, _) = msix_rig();
    let lr = |r: &mut Rig, off: u64, len: usize| {
        let mut b = [0u8; 4];
        r.dev.bar_read(LEGACY_BAR, off, &mut b[..len]);
        u32::from_le_bytes(b)
    };
    assert_eq!(lr(&mut r, LEG_CONFIG, 1), u32::from(b'a'), "MSI-X off: config at 0x14");
    msix_control(&mut r, 0x8000);
    assert_eq!(lr(&mut r, LEG_CONFIG_MSIX, 1), u32::from(b'a'), "MSI-X on: config at 0x18");
    r.dev.bar_write(LEGACY_BAR, LEG_MSIX_CONFIG_VECTOR, &2u16.to_le_bytes());
    assert_eq!(lr(&mut r, LEG_MSIX_CONFIG_VECTOR, 2), 2);
    r.dev.bar_write(LEGACY_BAR, LEG_QUEUE_SELECT, &1u16.to_le_bytes());
    r.dev.bar_write(LEGACY_BAR, LEG_MSIX_QUEUE_VECTOR, &9u16.to_le_bytes());
    assert_eq!(lr(&mut r, LEG_MSIX_QUEUE_VECTOR, 2), 0xffff);
    r.dev.bar_write(LEGACY_BAR, LEG_MSIX_QUEUE_VECTOR, &1u16.to_le_bytes());
    assert_eq!(lr(&mut r, LEG_MSIX_QUEUE_VECTOR, 2), 1);
    assert_eq!(rd(&mut r, CC_QUEUE_MSIX_VECTOR, 2), 1, "one mapping behind both interfaces");
}

#[test]
fn a_broken_ring_sets_needs_reset() {
    let mut r = rig();
    r.dev.write_config(PCI_COMMAND, &[0x06, 0]);
    w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(&mut r, CC_DRIVER_FEATURE_SELECT, 1, 4);
    w(&mut r, CC_DRIVER_FEATURE, 1, 4);
    // A queue whose rings lie outside RAM.
    w(&mut r, CC_QUEUE_SELECT, 0, 2);
    w(&mut r, CC_QUEUE_DESC, 0xfff0_0000, 8);
    w(&mut r, CC_QUEUE_ENABLE, 1, 2);
    assert_ne!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(r.irq.level());
    assert_eq!(rd(&mut r, ISR_OFFSET, 1), u64::from(ISR_CONFIG));
    // A ring that goes bad later: the available index jumps.
    w(&mut r, CC_DEVICE_STATUS, 0, 1);
    w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(&mut r, CC_DRIVER_FEATURE_SELECT, 1, 4);
    w(&mut r, CC_DRIVER_FEATURE, 1, 4);
    w(&mut r, CC_DEVICE_STATUS, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    let mem = r.mem.clone();
    let mut ring = DriverRing::new(&mem, 0x20000, 16);
    w(&mut r, CC_QUEUE_SELECT, 1, 2);
    w(&mut r, CC_QUEUE_DESC, ring.desc, 8);
    w(&mut r, CC_QUEUE_DRIVER, ring.avail, 8);
    w(&mut r, CC_QUEUE_DEVICE, ring.used, 8);
    w(&mut r, CC_QUEUE_ENABLE, 1, 2);
    w(
        &mut r,
        CC_DEVICE_STATUS,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
        1,
    );
    assert_eq!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    ring.set_avail_idx(&mem, 100);
    w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
    assert_ne!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // Nothing runs until the reset.
    w(&mut r, NOTIFY_OFFSET + 4, 1, 2);
    w(&mut r, CC_DEVICE_STATUS, 0, 1);
    assert_eq!(r.dev.status(), 0);
}

#[test]
fn legacy_interface() {
    let mut r = rig();
    let lw = |r: &mut Rig, off: u64, v: u32, len: usize| r.dev.bar_write(LEGACY_BAR, off, &v.to_le_bytes()[..len]);
    let lr = |r: &mut Rig, off: u64, len: usize| {
        let mut b = [0u8; 4];
        r.dev.bar_read(LEGACY_BAR, off, &mut b[..len]);
        u32::from_le_bytes(b)
    };
    r.dev.write_config(PCI_COMMAND, &[0x05, 0]); // I/O + bus master
    lw(&mut r, LEG_STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    assert_eq!(lr(&mut r, LEG_HOST_FEATURES, 4), (VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0b101) as u32);
    lw(&mut r, LEG_GUEST_FEATURES, 0xffff_ffff, 4);
    assert_eq!(lr(&mut r, LEG_GUEST_FEATURES, 4), (VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0b101) as u32);
    let mem = r.mem.clone();
    let mut rings = Vec::new();
    for (i, pfn) in [(0u16, 0x40u32), (1, 0x50)] {
        lw(&mut r, LEG_QUEUE_SELECT, u32::from(i), 2);
        assert_eq!(lr(&mut r, LEG_QUEUE_SIZE, 2), 16);
        lw(&mut r, LEG_QUEUE_PFN, pfn, 4);
        assert_eq!(lr(&mut r, LEG_QUEUE_PFN, 4), pfn);
        // The legacy layout: avail after the table, used at the next 4 KiB.
        let ring = DriverRing::new(&mem, u64::from(pfn) << 12, 16);
        assert_eq!(ring.used, (u64::from(pfn) << 12) + 0x1000);
        rings.push(ring);
    }
    lw(&mut r, LEG_STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK), 1);
    rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
    mem.write(0x31000, b"legacy").unwrap();
    rings[1].add_chain(&mem, &[(0x31000, 6, false)]);
    lw(&mut r, LEG_QUEUE_NOTIFY, 1, 2);
    assert_eq!(rings[0].take_used(&mem), vec![(0, 6)]);
    assert!(r.irq.level());
    assert_eq!(lr(&mut r, LEG_ISR, 1), 1);
    assert!(!r.irq.level());
    assert_eq!(lr(&mut r, LEG_CONFIG + 2, 1), u32::from(b'c'));
    lw(&mut r, LEG_CONFIG, u32::from(b'q'), 1);
    assert_eq!(lr(&mut r, LEG_CONFIG, 1), u32::from(b'q'));
    // PFN 0 resets the queue; status 0 resets the device.
    lw(&mut r, LEG_QUEUE_SELECT, 1, 2);
    lw(&mut r, LEG_QUEUE_PFN, 0, 4);
    assert_eq!(lr(&mut r, LEG_QUEUE_PFN, 4), 0);
    lw(&mut r, LEG_STATUS, 0, 1);
    assert_eq!(lr(&mut r, LEG_STATUS, 1), 0);
    // Past the BAR, nothing.
    assert_eq!(lr(&mut r, 0x40, 1), 0);
}

/// A function with MSI-X brought up (queue 0 on vector 0, queue 1 on 1,
/// configuration on 2), one echo done and the configuration written.
fn configured() -> (Rig, Arc<RecordingMsi>, Vec<DriverRing>) {
    let (mut r, sink) = msix_rig();
    msix_control(&mut r, 0x8000);
    for v in 0..3 {
        msix_entry(&mut r, v);
    }
    let mut rings = bring_up(&mut r, |r| {
        w(r, CC_MSIX_CONFIG, 2, 2);
        for q in 0..2 {
            w(r, CC_QUEUE_SELECT, q, 2);
            w(r, CC_QUEUE_MSIX_VECTOR, q, 2);
        }
    });
    echo(&mut r, &mut rings);
    w(&mut r, DEVICE_OFFSET + 2, u64::from(b'Z'), 1);
    assert_eq!(vectors_sent(&sink), [0x40]);
    (r, sink, rings)
}

#[test]
fn a_restored_function_goes_on_where_the_saved_one_stood() {
    let (mut r, sink, mut rings) = configured();
    let (mut other, other_sink) = msix_rig_on(r.mem.clone());
    let s = persist::assert_round_trip(&r.dev, &mut other.dev);
    assert_eq!(s.driver_features, VIRTIO_F_VERSION_1);
    assert_eq!((s.queues[0].next_used, s.queues[1].next_avail), (1, 1));
    assert_eq!(s.device, EchoState { activated: true, cfg: b"abZdef".to_vec() });
    assert!(other.dev.device().activated);
    assert_eq!(rd(&mut other, DEVICE_OFFSET + 2, 1), u64::from(b'Z'));
    assert_eq!(rd(&mut other, CC_MSIX_CONFIG, 2), 2);
    // The restored function takes the driver's next chains where the saved
    // one stopped, and signals queue 0 on its vector.
    let mem = r.mem.clone();
    rings[0].add_chain(&mem, &[(0x30000, 64, true)]);
    mem.write(0x31000, b"again").unwrap();
    rings[1].add_chain(&mem, &[(0x31000, 5, false)]);
    w(&mut other, NOTIFY_OFFSET + 4, 1, 2);
    assert_eq!(rings[0].take_used(&mem), vec![(1, 5)]);
    assert_eq!(rings[1].take_used(&mem), vec![(0, 0), (1, 0)]);
    assert_eq!(mem.read_bytes::<5>(0x30000).unwrap(), *b"again");
    assert_eq!(vectors_sent(&other_sink), [0x40]);
    // A configuration change goes out on the restored configuration vector.
    other.dev.config_changed();
    assert_eq!(vectors_sent(&other_sink), [0x42]);
    assert!(sink.take().is_empty(), "the saved function sent nothing meanwhile");
    assert!(!other.irq.level() && !r.irq.level(), "MSI-X: no INTx");
    // Saving did not change the saved function.
    assert_eq!(r.dev.save(), s);
    assert_eq!(rd(&mut r, CC_QUEUE_SELECT, 2), 1);
}

#[test]
fn a_restored_function_raises_intx_for_its_isr() {
    let mut r = rig();
    let mut rings = bring_up(&mut r, |_| {});
    echo(&mut r, &mut rings);
    assert!(r.irq.level());
    let mut other = rig();
    assert!(!other.irq.level());
    let s = persist::assert_round_trip(&r.dev, &mut other.dev);
    assert_eq!(s.isr, ISR_QUEUE);
    assert!(other.irq.level(), "the line follows the restored ISR");
    assert_eq!(rd(&mut other, ISR_OFFSET, 1), u64::from(ISR_QUEUE));
    assert!(!other.irq.level());
    // A state without a pending ISR lowers a raised line.
    let quiet = other.dev.save();
    assert!(r.irq.level());
    r.dev.restore(&quiet).unwrap();
    assert!(!r.irq.level());
}

#[test]
fn corrupt_function_states_are_refused() {
    const CONFIG: &str = "PCI configuration space";
    let (mut r, _, _) = configured();
    let good = r.dev.save();
    type Corrupt = fn(&mut VirtioPciState<EchoState>);
    let cases: [(&str, &str, Corrupt); 15] = [
        (CONFIG, "bytes", |s| s.config.bytes.truncate(255)),
        (CONFIG, "bytes", |s| s.config.bytes[0] ^= 1),
        (CONFIG, "bytes", |s| s.config.bytes[0x2e] = 9),
        (PART, "status", |s| s.status |= STATUS_DEVICE_NEEDS_RESET),
        (PART, "driver_features", |s| s.driver_features |= 0b10),
        (PART, "isr", |s| s.isr = 4),
        (PART, "queues", |s| s.queues.truncate(1)),
        ("virtio queue", "size", |s| s.queues[1].size = 12),
        (PART, "queues", |s| s.queues[0].desc_table = 0xfff0_0000),
        (PART, "msix", |s| s.msix = None),
        ("MSI-X table", "table", |s| s.msix.as_mut().unwrap().table.truncate(32)),
        (PART, "config_vector", |s| s.config_vector = 3),
        (PART, "queue_vectors", |s| s.queue_vectors[1] = 7),
        (PART, "queue_vectors", |s| s.queue_vectors.truncate(1)),
        ("echo device", "cfg", |s| {
            s.device.cfg.pop();
        }),
    ];
    for (part, field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut r.dev, &bad);
        assert_eq!((e.part, e.field), (part, field), "{e}");
    }
    let mut bad = good.clone();
    bad.queues[1].size = 12;
    assert!(persist::assert_refused(&mut r.dev, &bad).problem.ends_with("(queue 1)"));
    // A function without MSI-X refuses a state with it, and the other way.
    let mut plain = rig();
    let e = persist::assert_refused(&mut plain.dev, &good);
    assert_eq!(e.field, "msix");
    assert_eq!(e.problem, "the state has an MSI-X table, this function none");
    let e = persist::assert_refused(&mut r.dev, &plain.dev.save());
    assert_eq!(e.field, "msix");
    // NO_VECTOR is always taken.
    let mut unmapped = good.clone();
    unmapped.config_vector = 0xffff;
    unmapped.queue_vectors = vec![0xffff; 2];
    r.dev.restore(&unmapped).unwrap();
    assert_eq!(rd(&mut r, CC_MSIX_CONFIG, 2), 0xffff);
}
