use super::testing::DriverRing;
use super::*;

fn mem() -> GuestMemory {
    GuestMemory::new(1 << 20).unwrap()
}

fn queue(mem: &GuestMemory, size: u16) -> (Queue, DriverRing) {
    let ring = DriverRing::new(mem, 0x1000, size);
    let mut q = Queue::new(size);
    ring.attach(&mut q);
    q.validate(mem).unwrap();
    (q, ring)
}

#[test]
fn pops_chains_and_returns_them() {
    let m = mem();
    let (mut q, mut r) = queue(&m, 8);
    assert_eq!(q.pop(&m).unwrap(), None);
    m.write(0x8000, b"hello").unwrap();
    let h = r.add_chain(&m, &[(0x8000, 5, false), (0x9000, 100, true), (0x9100, 50, true)]);
    let c = q.pop(&m).unwrap().unwrap();
    assert_eq!(c.head, h);
    assert_eq!(c.readable, vec![Buffer { addr: 0x8000, len: 5 }]);
    assert_eq!(c.writable.len(), 2);
    assert_eq!((c.readable_len(), c.writable_len()), (5, 150));
    let mut data = Vec::new();
    assert!(c.read_all(&m, &mut data, 1000).unwrap());
    assert_eq!(data, b"hello");
    let mut short = Vec::new();
    assert!(!c.read_all(&m, &mut short, 3).unwrap());
    assert_eq!(short, b"hel");
    assert_eq!(c.write_at(&m, 98, b"abcd").unwrap(), 4);
    assert_eq!(m.read_bytes::<2>(0x9062).unwrap(), *b"ab");
    assert_eq!(m.read_bytes::<2>(0x9100).unwrap(), *b"cd");
    assert_eq!(c.write_at(&m, 149, b"xyz").unwrap(), 1, "only one byte fits");
    // read_at: from an offset, across buffers, and past the end.
    let two = DescriptorChain {
        head: 0,
        readable: vec![Buffer { addr: 0x8000, len: 5 }, Buffer { addr: 0x9062, len: 2 }],
        writable: Vec::new(),
    };
    let mut out = [0u8; 4];
    assert_eq!(two.read_at(&m, 3, &mut out).unwrap(), 4);
    assert_eq!(&out, b"loab");
    let mut out = [0u8; 8];
    assert_eq!(two.read_at(&m, 6, &mut out).unwrap(), 1, "the chain ends first");
    assert_eq!(out[0], b'b');
    assert_eq!(two.read_at(&m, 100, &mut out).unwrap(), 0);
    let outside = DescriptorChain { readable: vec![Buffer { addr: 0x10_0000 - 2, len: 4 }], ..two };
    assert!(matches!(outside.read_at(&m, 0, &mut out), Err(QueueError::BadBuffer { .. })));
    q.add_used(&m, c.head, 4).unwrap();
    assert_eq!(r.take_used(&m), vec![(u32::from(h), 4)]);
    assert_eq!(q.pop(&m).unwrap(), None);
    // Undo puts a chain back.
    r.add_chain(&m, &[(0x8000, 5, false)]);
    q.pop(&m).unwrap().unwrap();
    q.undo_pop(1);
    assert_eq!(q.pending(&m).unwrap(), 1);
}

#[test]
fn indices_wrap_around_u16() {
    let m = mem();
    let (mut q, mut r) = queue(&m, 4);
    for _ in 0..70_000u32 {
        let h = r.add_chain(&m, &[(0x8000, 16, true)]);
        let c = q.pop(&m).unwrap().unwrap();
        assert_eq!(c.head, h);
        q.add_used(&m, c.head, 16).unwrap();
        assert_eq!(r.take_used(&m).len(), 1);
    }
    assert_eq!(q.next_avail(), (70_000u32 % 65536) as u16);
}

#[test]
fn bad_sizes_and_ring_addresses_are_refused() {
    let m = mem();
    let mut q = Queue::new(256);
    let r = DriverRing::new(&m, 0x1000, 256);
    r.attach(&mut q);
    q.validate(&m).unwrap();
    for bad in [0u16, 3, 512] {
        q.size = bad;
        assert_eq!(q.validate(&m), Err(QueueError::BadSize(bad)));
    }
    q.size = 256;
    q.desc_table = 0x1008;
    assert!(matches!(q.validate(&m), Err(QueueError::BadRing { area: "descriptor table", .. })));
    q.desc_table = (1 << 20) - 16;
    assert!(matches!(q.validate(&m), Err(QueueError::BadRing { .. })));
    q.desc_table = 0x1000;
    q.used_ring = u64::MAX - 3;
    assert!(matches!(q.validate(&m), Err(QueueError::BadRing { area: "used ring", .. })));
}

#[test]
fn hostile_rings_are_errors_not_panics() {
    let m = mem();
    // The available index jumps past the queue size.
    let (mut q, mut r) = queue(&m, 8);
    r.set_avail_idx(&m, 9);
    assert!(matches!(q.pop(&m), Err(QueueError::AvailOverrun { .. })));
    // A head past the table.
    let (mut q, mut r) = queue(&m, 8);
    r.publish(&m, 8);
    assert_eq!(q.pop(&m), Err(QueueError::BadIndex { index: 8, size: 8 }));
    // A `next` past the table.
    let (mut q, mut r) = queue(&m, 8);
    r.write_desc(&m, 0, 0x8000, 4, VIRTQ_DESC_F_NEXT, 200);
    r.publish(&m, 0);
    assert_eq!(q.pop(&m), Err(QueueError::BadIndex { index: 200, size: 8 }));
    // A loop.
    let (mut q, mut r) = queue(&m, 8);
    r.write_desc(&m, 0, 0x8000, 4, VIRTQ_DESC_F_NEXT, 1);
    r.write_desc(&m, 1, 0x8000, 4, VIRTQ_DESC_F_NEXT, 0);
    r.publish(&m, 0);
    assert_eq!(q.pop(&m), Err(QueueError::ChainLoop(8)));
    // A buffer outside RAM, and one wrapping the address space.
    for addr in [(1 << 20) - 2, u64::MAX - 1] {
        let (mut q, mut r) = queue(&m, 8);
        r.add_chain(&m, &[(addr, 4, true)]);
        assert!(matches!(q.pop(&m), Err(QueueError::BadBuffer { .. })), "{addr:#x}");
    }
    // Buffers adding up past 4 GiB.
    let (mut q, mut r) = queue(&m, 8);
    let mut ring = Vec::new();
    for _ in 0..8 {
        ring.push((0u64, 0u32, true));
    }
    r.add_chain(&m, &ring);
    assert!(q.pop(&m).unwrap().is_some(), "zero-length buffers are fine");
}

#[test]
fn indirect_tables_are_followed_and_checked() {
    let m = mem();
    let (mut q, mut r) = queue(&m, 8);
    // A table of two descriptors at 0x6000.
    let t = 0x6000u64;
    let put = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        m.write_u64(t + 16 * i, addr).unwrap();
        m.write_u32(t + 16 * i + 8, len).unwrap();
        m.write_u16(t + 16 * i + 12, flags).unwrap();
        m.write_u16(t + 16 * i + 14, next).unwrap();
    };
    put(0, 0x8000, 10, VIRTQ_DESC_F_NEXT, 1);
    put(1, 0x9000, 20, VIRTQ_DESC_F_WRITE, 0);
    r.write_desc(&m, 0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    r.publish(&m, 0);
    let c = q.pop(&m).unwrap().unwrap();
    assert_eq!(c.readable, vec![Buffer { addr: 0x8000, len: 10 }]);
    assert_eq!(c.writable, vec![Buffer { addr: 0x9000, len: 20 }]);
    // Bad tables.
    for (len, flags) in
        [(0u32, VIRTQ_DESC_F_INDIRECT), (24, VIRTQ_DESC_F_INDIRECT), (32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT)]
    {
        let (mut q, mut r) = queue(&m, 8);
        r.write_desc(&m, 0, t, len, flags, 1);
        r.publish(&m, 0);
        assert!(matches!(q.pop(&m), Err(QueueError::BadIndirect { .. })), "{len} {flags}");
    }
    // Nested indirect.
    put(1, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    let (mut q, mut r) = queue(&m, 8);
    r.write_desc(&m, 0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    r.publish(&m, 0);
    assert!(matches!(q.pop(&m), Err(QueueError::BadIndirect { .. })));
    // A loop inside the table.
    put(1, 0x9000, 20, VIRTQ_DESC_F_NEXT, 0);
    let (mut q, mut r) = queue(&m, 8);
    r.write_desc(&m, 0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    r.publish(&m, 0);
    assert_eq!(q.pop(&m), Err(QueueError::ChainLoop(2)));
    // A `next` past the table.
    put(1, 0x9000, 20, VIRTQ_DESC_F_NEXT, 5);
    let (mut q, mut r) = queue(&m, 8);
    r.write_desc(&m, 0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    r.publish(&m, 0);
    assert_eq!(q.pop(&m), Err(QueueError::BadIndex { index: 5, size: 2 }));
}

#[test]
fn notification_suppression() {
    let m = mem();
    let (mut q, mut r) = queue(&m, 8);
    r.add_chain(&m, &[(0x8000, 4, true)]);
    let c = q.pop(&m).unwrap().unwrap();
    q.add_used(&m, c.head, 0).unwrap();
    assert!(q.needs_notification(&m).unwrap());
    m.write_u16(r.avail, VIRTQ_AVAIL_F_NO_INTERRUPT).unwrap();
    assert!(!q.needs_notification(&m).unwrap());

    // EVENT_IDX: notify only when used_event falls in (old, new].
    let (mut q, mut r) = queue(&m, 8);
    q.set_event_idx(true);
    let used_event = r.avail + 4 + 2 * 8;
    for _ in 0..3 {
        r.add_chain(&m, &[(0x8000, 4, true)]);
    }
    let mut used = || {
        let c = q.pop(&m).unwrap().unwrap();
        q.add_used(&m, c.head, 0).unwrap();
        q.needs_notification(&m).unwrap()
    };
    m.write_u16(used_event, 1).unwrap();
    assert!(used(), "the first decision always notifies");
    assert!(used(), "used idx went 1 -> 2, event 1 is crossed");
    assert!(!used(), "2 -> 3 does not cross event 1");
    // avail_event is published for the driver.
    q.publish_avail_event(&m).unwrap();
    assert_eq!(m.read_u16(r.used + 4 + 8 * 8).unwrap(), 3);
    let s = q.save();
    let mut q2 = Queue::new(8);
    q2.restore(&s).unwrap();
    assert_eq!(q2.save(), s);
    q2.reset();
    assert!(!q2.is_usable());
}

#[test]
fn a_restored_queue_goes_on_where_the_saved_one_stood() {
    let m = mem();
    let (mut q, mut r) = queue(&m, 8);
    q.set_event_idx(true);
    let a = r.add_chain(&m, &[(0x8000, 16, true)]);
    let b = r.add_chain(&m, &[(0x8100, 32, false), (0x8200, 64, true)]);
    let c = r.add_chain(&m, &[(0x8300, 48, false)]);
    let first = q.pop(&m).unwrap().unwrap();
    assert_eq!(first.head, a);
    q.add_used(&m, first.head, 16).unwrap();
    assert!(q.needs_notification(&m).unwrap(), "the first decision always notifies");
    assert_eq!(r.take_used(&m), vec![(u32::from(a), 16)]);
    // B is taken and not yet used when the state is saved.
    let second = q.pop(&m).unwrap().unwrap();
    assert_eq!(second.head, b);

    let mut restored = Queue::new(8);
    let state = persist::assert_round_trip(&q, &mut restored);
    assert_eq!((state.next_avail, state.next_used, state.signalled_used), (2, 1, Some(1)));
    // Both pop C next, with the same buffers.
    let next = restored.pop(&m).unwrap().unwrap();
    assert_eq!(next.head, c);
    assert_eq!(q.pop(&m).unwrap().unwrap(), next);
    // The restored queue fills the used ring where the saved one stopped...
    restored.add_used(&m, second.head, 64).unwrap();
    assert_eq!(r.take_used(&m), vec![(u32::from(b), 64)]);
    // ...and keeps the notification state: used_event 0 was crossed by the
    // first decision already, so this one does not notify.
    m.write_u16(r.avail + 4 + 2 * 8, 0).unwrap();
    assert!(!restored.needs_notification(&m).unwrap());
    restored.publish_avail_event(&m).unwrap();
    assert_eq!(m.read_u16(r.used + 4 + 8 * 8).unwrap(), 3, "avail_event after the three chains taken");
}

#[test]
fn corrupt_queue_states_are_refused() {
    let m = mem();
    let (mut q, mut r) = queue(&m, 8);
    r.add_chain(&m, &[(0x8000, 16, true)]);
    q.pop(&m).unwrap().unwrap();
    let good = q.save();
    let cases: [(&str, QueueState); 8] = [
        ("size", QueueState { size: 6, ..good }),
        ("size", QueueState { size: 0, ..good }),
        ("size", QueueState { size: 16, ..good }),
        ("desc_table", QueueState { desc_table: good.desc_table + 8, ..good }),
        ("avail_ring", QueueState { avail_ring: good.avail_ring + 1, ..good }),
        ("used_ring", QueueState { used_ring: u64::MAX - 3, ..good }),
        ("next_avail", QueueState { next_avail: good.next_used.wrapping_add(9), ..good }),
        ("next_avail", QueueState { next_used: good.next_avail.wrapping_add(1), ..good }),
    ];
    for (field, corrupt) in cases {
        let e = persist::assert_refused(&mut q, &corrupt);
        assert_eq!((e.part, e.field), ("virtio queue", field), "{corrupt:?}: {e}");
    }
    let e = persist::assert_refused(&mut q, &QueueState { size: 16, ..good });
    assert!(e.problem.contains("is 16, above the largest allowed 8"), "{e}");
    // A queue the device does not use holds what the driver wrote: taken.
    for unused in [QueueState { ready: false, size: 3, ..good }, QueueState { broken: true, size: 0, ..good }] {
        let mut other = Queue::new(8);
        other.restore(&unused).unwrap();
        assert_eq!(other.save(), unused);
        assert_eq!(other.pending(&m), Ok(0), "and the device takes nothing from it");
    }
}

/// The driver's side of EVENT_IDX (vring_need_event): whether making
/// entries `old..new` available notifies the device, given the
/// avail_event the device published.
fn driver_notifies(m: &GuestMemory, q: &Queue, used: u64, old: u16, new: u16) -> bool {
    let avail_event = m.read_u16(used + 4 + 8 * u64::from(q.size)).unwrap();
    new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A chain the driver adds between the device's last pop (the ring
/// empty) and its new avail_event brings no notification: the device's
/// `rearm` finds it, where waiting for a notification would wait forever.
#[test]
fn rearm_finds_what_came_in_before_the_driver_saw_the_event() {
    let m = mem();
    let (mut q, mut r) = queue(&m, 8);
    q.set_event_idx(true);
    // Two requests served, the device's event published after the first.
    r.add_chain(&m, &[(0x8000, 4, true)]);
    q.pop(&m).unwrap().unwrap();
    assert_eq!(q.rearm(&m).unwrap(), 0);
    r.add_chain(&m, &[(0x8000, 4, true)]);
    assert!(driver_notifies(&m, &q, r.used, 1, 2), "the device asked for entry 1");
    q.pop(&m).unwrap().unwrap();
    assert!(q.pop(&m).unwrap().is_none(), "the ring is empty");
    // Now the driver adds entry 2 while avail_event still says 1: no
    // notification.
    r.add_chain(&m, &[(0x8000, 4, true)]);
    assert!(!driver_notifies(&m, &q, r.used, 2, 3), "the driver takes the device for busy");
    assert_eq!(q.rearm(&m).unwrap(), 1, "the device finds entry 2 after publishing its event");
    assert!(q.pop(&m).unwrap().is_some());
    assert_eq!(q.rearm(&m).unwrap(), 0);
    r.add_chain(&m, &[(0x8000, 4, true)]);
    assert!(driver_notifies(&m, &q, r.used, 3, 4), "and asks for entry 3");
}
