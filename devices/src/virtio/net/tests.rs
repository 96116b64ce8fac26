use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use super::*;
use crate::irq::RecordingIrq;
use crate::nic::offload::tests::{checksums_ok, tcp4_frame};
use crate::nic::testing::{backend, Wire};
use crate::pci::config::PCI_COMMAND;
use crate::pci::PciDevice;
use crate::virtio::pci::MODERN_BAR;
use crate::virtio::queue::testing::DriverRing;
use crate::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

struct Rig {
    dev: VirtioNetPci,
    wire: Arc<Mutex<Wire>>,
    mem: Arc<GuestMemory>,
    irq: Arc<RecordingIrq>,
    rx: DriverRing,
    tx: DriverRing,
}

fn w(dev: &mut VirtioNetPci, off: u64, v: u64, len: usize) {
    dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
}

/// A device brought up as Linux's driver does, with `features` accepted.
fn rig(features: u64) -> Rig {
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    let irq = Arc::new(RecordingIrq::new());
    let (be, wire) = backend();
    let mut dev = VirtioPci::new(VirtioNet::new(be, MAC, IoKick::none()), mem.clone(), irq.clone());
    dev.write_config(PCI_COMMAND, &[0x06, 0]);
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(&mut dev, 0x08, 0, 4);
    w(&mut dev, 0x0c, features & 0xffff_ffff, 4);
    w(&mut dev, 0x08, 1, 4);
    w(&mut dev, 0x0c, features >> 32, 4);
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    let rx = DriverRing::new(&mem, 0x10000, 16);
    let tx = DriverRing::new(&mem, 0x20000, 16);
    for (q, ring) in [(0u64, &rx), (1, &tx)] {
        w(&mut dev, 0x16, q, 2);
        w(&mut dev, 0x18, 16, 2);
        w(&mut dev, 0x20, ring.desc, 8);
        w(&mut dev, 0x28, ring.avail, 8);
        w(&mut dev, 0x30, ring.used, 8);
        w(&mut dev, 0x1c, 1, 2);
    }
    w(&mut dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK), 1);
    Rig { dev, wire, mem, irq, rx, tx }
}

fn all() -> u64 {
    VirtioNet::new(backend().0, MAC, IoKick::none()).features()
}

fn send(r: &mut Rig, hdr: [u8; 12], frame: &[u8]) {
    r.mem.write(0x40000, &hdr).unwrap();
    r.mem.write(0x41000, frame).unwrap();
    r.tx.add_chain(&r.mem, &[(0x40000, 12, false), (0x41000, frame.len() as u32, false)]);
    w(&mut r.dev, 0x3000 + 4, 1, 2);
}

#[test]
fn config_space_has_mac_and_link() {
    let r = rig(all());
    let mut cfg = [0u8; 10];
    r.dev.device().read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), VIRTIO_NET_S_LINK_UP);
    let mut past = [0xffu8; 4];
    r.dev.device().read_config(usize::MAX, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!(r.dev.driver_features(), all());
}

#[test]
fn transmits_with_checksum_offload_and_segmentation() {
    let mut r = rig(all());
    // A plain frame.
    let plain = tcp4_frame(b"plain", 0x18);
    send(&mut r, [0; 12], &plain);
    // A partial checksum: the pseudo-header sum in the field.
    let mut partial = tcp4_frame(b"needs a checksum", 0x18);
    let pseudo = offload::checksum_add(0, &partial[26..34]) + 6 + (partial.len() - 34) as u64;
    partial[50..52].copy_from_slice(&(!offload::checksum_finish(pseudo)).to_be_bytes());
    let mut hdr = [0u8; 12];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    send(&mut r, hdr, &partial);
    // A 3000-byte TSO send with MSS 1000.
    let big = tcp4_frame(&vec![7u8; 3000], 0x18);
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4;
    hdr[2..4].copy_from_slice(&1000u16.to_le_bytes()); // hdr_len: only a hint
    hdr[4..6].copy_from_slice(&1000u16.to_le_bytes());
    send(&mut r, hdr, &big);
    let sent = r.wire.lock().sent.clone();
    assert_eq!(sent.len(), 5);
    assert_eq!(sent[0], plain);
    for s in &sent {
        assert!(checksums_ok(s));
    }
    assert_eq!(sent[2].len(), 1054);
    assert_eq!(r.tx.take_used(&r.mem).len(), 3);
    assert!(r.irq.level());
    let st = r.dev.device().stats();
    assert_eq!((st.tx_frames, st.tx_dropped), (5, 0));
    // Refused: UDP fragmentation, a checksum outside the frame, a short send.
    hdr[1] = VIRTIO_NET_HDR_GSO_UDP;
    send(&mut r, hdr, &big);
    hdr[1] = 0;
    hdr[6..8].copy_from_slice(&60000u16.to_le_bytes());
    send(&mut r, hdr, &partial);
    r.tx.add_chain(&r.mem, &[(0x40000, 4, false)]);
    w(&mut r.dev, 0x3004, 1, 2);
    assert_eq!(r.dev.device().stats().tx_dropped, 3);
    assert_eq!(r.wire.lock().sent.len(), 5);
}

#[test]
fn tso_is_refused_unless_negotiated() {
    let mut r = rig(all() & !VIRTIO_NET_F_HOST_TSO4);
    let big = tcp4_frame(&vec![7u8; 3000], 0x18);
    let mut hdr = [0u8; 12];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4;
    hdr[4..6].copy_from_slice(&1000u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    send(&mut r, hdr, &big);
    assert!(r.wire.lock().sent.is_empty());
}

#[test]
fn contiguous_segments_reach_the_guest_as_one_gso_packet() {
    use crate::nic::merge::tests::{segment, TCP_ACK_ONLY, TCP_ACK_PSH};
    let mut r = rig(all());
    assert_ne!(r.dev.driver_features() & VIRTIO_NET_F_GUEST_TSO4, 0);
    let segs = [
        segment(100, &[1; 1000], TCP_ACK_ONLY, &[]),
        segment(1100, &[2; 1000], TCP_ACK_ONLY, &[]),
        segment(2100, &[3; 500], TCP_ACK_PSH, &[]),
        // Another flow's segment: not merged, delivered next.
        segment(7, &[4; 100], 0x10, &[1, 1, 1, 1]),
    ];
    r.wire.lock().to_guest.extend(segs.iter().cloned());
    for i in 0..4u64 {
        r.rx.add_chain(&r.mem, &[(0x50000 + i * 0x1000, 2048, true)]);
    }
    w(&mut r.dev, 0x3000, 0, 2);
    assert!(r.wire.lock().to_guest.is_empty());
    let used = r.rx.take_used(&r.mem);
    let headers = ETH_HLEN + 20 + 20;
    let merged_len = 12 + headers + 2500;
    assert_eq!(used, vec![(0, 2048), (1, (merged_len - 2048) as u32), (2, (12 + segs[3].len()) as u32)]);
    let hdr = r.mem.read_bytes::<12>(0x50000).unwrap();
    assert_eq!(hdr[HDR_FLAGS], VIRTIO_NET_HDR_F_DATA_VALID);
    assert_eq!(hdr[HDR_GSO_TYPE], VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(u16::from_le_bytes([hdr[HDR_HDR_LEN], hdr[HDR_HDR_LEN + 1]]), headers as u16);
    assert_eq!(u16::from_le_bytes([hdr[HDR_GSO_SIZE], hdr[HDR_GSO_SIZE + 1]]), 1000, "the MSS");
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
    let mut packet = vec![0u8; 2048 - 12];
    r.mem.read(0x50000 + 12, &mut packet).unwrap();
    let mut rest = vec![0u8; merged_len - 2048];
    r.mem.read(0x51000, &mut rest).unwrap();
    packet.extend_from_slice(&rest);
    let payload = &packet[headers..];
    assert!(payload[..1000].iter().all(|&b| b == 1) && payload[1000..2000].iter().all(|&b| b == 2));
    assert!(payload[2000..].iter().all(|&b| b == 3) && payload.len() == 2500);
    assert_eq!(u16::from_be_bytes([packet[16], packet[17]]) as usize, packet.len() - ETH_HLEN);
    let other = r.mem.read_bytes::<12>(0x52000).unwrap();
    assert_eq!(other[HDR_GSO_TYPE], VIRTIO_NET_HDR_GSO_NONE, "a packet of one segment has no GSO");
    let st = r.dev.device().stats();
    assert_eq!((st.rx_frames, st.rx_merged, st.rx_gso_packets), (2, 2, 1));
}

#[test]
fn without_guest_tso4_every_segment_is_its_own_packet() {
    use crate::nic::merge::tests::{segment, TCP_ACK_ONLY};
    let mut r = rig(all() & !VIRTIO_NET_F_GUEST_TSO4);
    for i in 0..3u32 {
        r.wire.lock().to_guest.push_back(segment(i * 1000, &[1; 1000], TCP_ACK_ONLY, &[]));
    }
    for i in 0..3u64 {
        r.rx.add_chain(&r.mem, &[(0x50000 + i * 0x1000, 2048, true)]);
    }
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.rx.take_used(&r.mem).len(), 3);
    for i in 0..3u64 {
        assert_eq!(r.mem.read_bytes::<12>(0x50000 + i * 0x1000).unwrap()[HDR_GSO_TYPE], VIRTIO_NET_HDR_GSO_NONE);
    }
}

#[test]
fn a_run_stops_where_the_guest_buffers_end() {
    use crate::nic::merge::tests::{segment, TCP_ACK_ONLY};
    let mut r = rig(all());
    for i in 0..4u32 {
        r.wire.lock().to_guest.push_back(segment(i * 1000, &[i as u8; 1000], TCP_ACK_ONLY, &[]));
    }
    // Room for two segments and their headers, not three.
    r.rx.add_chain(&r.mem, &[(0x50000, 2100, true)]);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.rx.take_used(&r.mem), vec![(0, (12 + 54 + 2000) as u32)]);
    assert_eq!(r.wire.lock().to_guest.len(), 1, "the third segment is held, the fourth waits");
    r.rx.add_chain(&r.mem, &[(0x51000, 4096, true)]);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.rx.take_used(&r.mem), vec![(1, (12 + 54 + 2000) as u32)], "the held segment heads the next run");
    assert!(r.wire.lock().to_guest.is_empty());
    let mut first = [0u8; 1];
    r.mem.read(0x51000 + 12 + 54, &mut first).unwrap();
    assert_eq!(first[0], 2, "in order");
}

#[test]
fn receives_into_mergeable_buffers() {
    let mut r = rig(all());
    let frame: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
    r.wire.lock().to_guest.push_back(frame.clone());
    // No buffers yet: the frame waits in the backend.
    r.dev.poll(Instant::now());
    assert_eq!(r.wire.lock().to_guest.len(), 1);
    // Two 1 KiB buffers: the frame spans both.
    r.rx.add_chain(&r.mem, &[(0x50000, 1024, true)]);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.wire.lock().to_guest.len(), 1, "one buffer is too small");
    r.rx.add_chain(&r.mem, &[(0x51000, 1024, true)]);
    w(&mut r.dev, 0x3000, 0, 2);
    assert!(r.wire.lock().to_guest.is_empty());
    let used = r.rx.take_used(&r.mem);
    assert_eq!(used, vec![(0, 1024), (1, 12 + 1400 - 1024)]);
    let hdr = r.mem.read_bytes::<12>(0x50000).unwrap();
    assert_eq!(hdr[0], VIRTIO_NET_HDR_F_DATA_VALID);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
    let mut got = vec![0u8; 1012];
    r.mem.read(0x5000c, &mut got).unwrap();
    let mut rest = vec![0u8; 388];
    r.mem.read(0x51000, &mut rest).unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(got, frame);
    assert!(r.irq.level());
    let st = r.dev.device().stats();
    assert_eq!((st.rx_frames, st.rx_bytes), (1, 1400));
    // The avail_event asks for a notification at the next buffer.
    assert_eq!(r.mem.read_u16(r.rx.used + 4 + 8 * 16).unwrap(), 2);
}

#[test]
fn receives_into_whole_buffers_without_merging() {
    let mut r = rig(all() & !VIRTIO_NET_F_MRG_RXBUF);
    r.wire.lock().to_guest.push_back(vec![1u8; 100]);
    r.wire.lock().to_guest.push_back(vec![2u8; 2000]);
    r.wire.lock().to_guest.push_back(vec![3u8; 50]);
    r.rx.add_chain(&r.mem, &[(0x50000, 12, true), (0x50100, 1500, true)]);
    r.rx.add_chain(&r.mem, &[(0x51000, 1600, true)]);
    r.dev.poll(Instant::now());
    // The 2000-byte frame fits no buffer: dropped; the 50-byte one follows.
    assert!(r.wire.lock().to_guest.is_empty());
    assert_eq!(r.rx.take_used(&r.mem), vec![(0, 112), (2, 62)]);
    assert_eq!(r.mem.read_u8(0x50100).unwrap(), 1);
    assert_eq!(r.mem.read_u8(0x5100c).unwrap(), 3);
    assert_eq!(r.dev.device().stats().rx_dropped, 1);
}

/// Random bytes in the descriptor tables and rings: nothing panics.
#[test]
fn random_rings_never_panic() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let mut r = rig(all() & rand());
        for _ in 0..20 {
            // Scribble over the rings (and sometimes the buffers).
            let base =
                [r.rx.desc, r.rx.avail, r.rx.used, r.tx.desc, r.tx.avail, r.tx.used, 0x40000][(rand() % 7) as usize];
            let mut junk = [0u8; 64];
            for b in junk.chunks_mut(8) {
                b.copy_from_slice(&rand().to_le_bytes());
            }
            let _ = r.mem.write(base + (rand() % 256), &junk);
            if round % 3 == 0 {
                r.wire.lock().to_guest.push_back(vec![0; (rand() % 3000) as usize]);
            }
            w(&mut r.dev, 0x3000 + 4 * (rand() % 3), 0, 2);
            r.dev.poll(Instant::now());
        }
    }
}

/// The fuzzing entry point over pseudo-random inputs, some of them
/// mutations of a transmit and a receive.
#[test]
fn fuzz_entry_point_over_pseudo_random_inputs() {
    let all = [0xff; 8];
    // Transmit: descriptor 0 of the TX queue (hot[3]) = 0x10000, 72 bytes;
    // avail ring (hot[4]): idx 1 at offset 0 word (flags 0, idx 1, ring[0] = 0);
    // notify queue 1 (a hot register).
    let mut tx = all.to_vec();
    tx.extend_from_slice(&[4 | (3 << 3), 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    tx.extend_from_slice(&[4 | (3 << 3), 1, 72, 0, 0, 0, 0, 0, 0, 0]);
    tx.extend_from_slice(&[4 | (4 << 3), 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    tx.extend_from_slice(&[0, 0x80, 1, 0, 1, 0, 0, 0, 1]);
    // Receive: descriptor 0 of the RX queue = 0x10000, 2048 bytes, writable;
    // avail idx 1; a frame; a poll.
    let mut rx = all.to_vec();
    rx.extend_from_slice(&[4, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    rx.extend_from_slice(&[4, 1, 0, 8, 0, 0, 2, 0, 0, 0]);
    rx.extend_from_slice(&[4 | (1 << 3), 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    rx.extend_from_slice(&[5, 100, 0, 0xee, 7]);
    let inputs = crate::fuzz::pseudo_random_inputs(0x7172, 3000, 600, &[&tx, &rx]);
    let (sent, received) = (fuzz_rings(&tx), fuzz_rings(&rx));
    assert_eq!((sent.tx_frames, sent.rx_frames), (1, 0), "the transmit seed transmits");
    assert_eq!((received.tx_frames, received.rx_frames), (0, 1), "the receive seed receives");
    for input in &inputs {
        fuzz_rings(input);
    }
}

#[test]
fn a_disabled_device_drops_and_a_broken_ring_stops() {
    let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
    let (be, wire) = backend();
    let mut dev = VirtioPci::new(VirtioNet::new(be, MAC, IoKick::none()), mem, Arc::new(RecordingIrq::new()));
    wire.lock().to_guest.push_back(vec![0; 60]);
    dev.poll(Instant::now());
    assert!(wire.lock().to_guest.is_empty());
    assert_eq!(wire.lock().polls, 1, "the backend is polled even before the driver runs");
    assert_eq!(dev.device().stats().rx_dropped, 1);
    // A transmit chain pointing outside RAM.
    let mut r = rig(all());
    r.tx.add_chain(&r.mem, &[(0xffff_0000, 64, false)]);
    w(&mut r.dev, 0x3004, 1, 2);
    assert_ne!(r.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(r.wire.lock().sent.is_empty());
    assert!(r.dev.io_label().contains("fake"));
    let s = r.dev.device().save();
    r.dev.device_mut().restore(&s).unwrap();
    assert_eq!(r.dev.device().save(), s);
}

/// A device that was never brought up, over `mem`.
fn idle(mem: &Arc<GuestMemory>) -> (VirtioNetPci, Arc<Mutex<Wire>>, Arc<RecordingIrq>) {
    let irq = Arc::new(RecordingIrq::new());
    let (be, wire) = backend();
    let dev = VirtioPci::new(VirtioNet::new(be, [2, 0, 0, 0, 0, 1], IoKick::none()), mem.clone(), irq.clone());
    (dev, wire, irq)
}

#[test]
fn a_restored_device_delivers_the_frame_it_held_first() {
    use crate::nic::merge::tests::{segment, TCP_ACK_ONLY};
    let mut r = rig(all());
    let new_mac = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
    r.dev.device_mut().write_config(0, &new_mac);
    for i in 0..4u32 {
        r.wire.lock().to_guest.push_back(segment(i * 1000, &[i as u8; 1000], TCP_ACK_ONLY, &[]));
    }
    // Room for two segments: the third is held in the device, the fourth
    // waits in the backend.
    r.rx.add_chain(&r.mem, &[(0x50000, 2100, true)]);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.rx.take_used(&r.mem).len(), 1);
    let fourth = r.wire.lock().to_guest.pop_front().unwrap();

    let Rig { dev: saved, mem, rx, tx, .. } = r;
    let (other, wire, irq) = idle(&mem);
    let mut r = Rig { dev: other, wire, mem, irq, rx, tx };
    let s = persist::assert_round_trip(&saved, &mut r.dev);
    assert_eq!(s.device.held_frame.as_ref().map(Vec::len), Some(ETH_HLEN + 40 + 1000));
    assert_eq!(s.device.mac, new_mac);
    assert_eq!(s.driver_features, all());
    let mut cfg = [0u8; 6];
    r.dev.device().read_config(0, &mut cfg);
    assert_eq!(cfg, new_mac, "the MAC the driver wrote");
    // The backend behind the restored device has the fourth segment: the
    // held third one heads the run and the fourth joins it.
    r.wire.lock().to_guest.push_back(fourth);
    r.rx.add_chain(&r.mem, &[(0x51000, 4096, true)]);
    w(&mut r.dev, 0x3000, 0, 2);
    assert_eq!(r.rx.take_used(&r.mem), vec![(1, (12 + 54 + 2000) as u32)]);
    let mut first = [0u8; 1];
    r.mem.read(0x51000 + 12 + 54, &mut first).unwrap();
    assert_eq!(first[0], 2, "the held segment first");
    assert!(r.irq.level());
    let st = r.dev.device().stats();
    assert_eq!((st.rx_frames, st.rx_merged, st.rx_gso_packets), (2, 2, 2), "the counters went on");
    // Sends go on through the restored transmit queue.
    let frame = tcp4_frame(b"after the restore", 0x18);
    send(&mut r, [0; 12], &frame);
    assert_eq!(r.wire.lock().sent, vec![frame]);
    assert_eq!(r.tx.take_used(&r.mem).len(), 1);
}

#[test]
fn corrupt_virtio_net_states_are_refused() {
    let mut r = rig(all());
    let good = r.dev.save();
    // The device model: a held frame longer than any frame.
    let mut bad = good.device.clone();
    bad.held_frame = Some(vec![0; RX_SCRATCH + 1]);
    let e = persist::assert_refused(r.dev.device_mut(), &bad);
    assert_eq!((e.part, e.field), ("virtio-net", "held_frame"));
    // Through the transport, which is left as it was.
    let mut bad = good.clone();
    bad.device.held_frame = Some(vec![0; RX_SCRATCH + 1]);
    let e = persist::assert_refused(&mut r.dev, &bad);
    assert_eq!((e.part, e.field), ("virtio-net", "held_frame"));
    // Negotiated features the device never offered (the control queue).
    let mut bad = good.clone();
    bad.driver_features |= 1 << 17;
    let e = persist::assert_refused(&mut r.dev, &bad);
    assert_eq!((e.part, e.field), ("virtio PCI function", "driver_features"));
    assert!(e.problem.contains("not a subset of the offered"), "{e}");
    // The largest frame is taken.
    let mut full = good.device.clone();
    full.held_frame = Some(vec![7; RX_SCRATCH]);
    r.dev.device_mut().restore(&full).unwrap();
    assert_eq!(r.dev.device().save(), full);
}
