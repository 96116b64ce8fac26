//! virtio-net: a network card over the virtio PCI transport.
//!
//! Reference: VIRTIO 1.1, 5.1 "Network Device": 5.1.3 feature bits, 5.1.4
//! the configuration layout, 5.1.6 device operation (5.1.6.1 the packet
//! header, 5.1.6.2 transmission with checksum and segmentation offload,
//! 5.1.6.3.1 and 5.1.6.4 receiving, with mergeable buffers).
//!
//! ```text
//! queues       0 receiveq, 1 transmitq (no control queue, no multiqueue)
//! config       0 mac[6] | 6 le16 status (1 = LINK_UP) | 8 le16 max_virtqueue_pairs
//! packet hdr   0 u8 flags (1 NEEDS_CSUM, 2 DATA_VALID) | 1 u8 gso_type (0 none,
//!              1 TCPv4, 3 UDP, 4 TCPv6, 0x80 ECN) | 2 le16 hdr_len | 4 le16 gso_size |
//!              6 le16 csum_start | 8 le16 csum_offset | 10 le16 num_buffers
//!              (12 bytes with VERSION_1 or MRG_RXBUF, else 10)
//! ```
//!
//! Offered features: CSUM and HOST_TSO4/6 (the guest sends partial checksums
//! and 64 KiB TCP sends; [`crate::nic::offload`] completes and cuts them),
//! GUEST_CSUM (every frame for the guest carries DATA_VALID: backends hand
//! over complete checksums, so the guest skips verifying them), GUEST_TSO4
//! (consecutive segments of a TCP/IPv4 flow reach the guest as one packet
//! of up to 64 KiB with a GSO header: [`crate::nic::merge`]), MAC, STATUS,
//! MRG_RXBUF, and the ring features EVENT_IDX and INDIRECT_DESC.
//!
//! Model choices:
//! - Without a control queue the device is promiscuous (as QEMU's is by
//!   default): every frame the backend delivers goes to the guest.
//! - A frame waits in the backend while the guest has too few receive
//!   buffers, so TCP's flow control reaches the NAT; a frame larger than
//!   all the buffers the ring can ever hold is dropped.
//! - Merging takes only frames already waiting: it never holds a segment
//!   back for a later one, so it adds no latency. The one frame read that
//!   does not continue a run waits in the device for the next delivery.

use std::time::{Duration, Instant};

use net::NetBackend;

use crate::nic::merge::{Run, MAX_MERGED_IP_LEN};
use crate::nic::offload::{self, L4Proto, Segmentation, ETH_HLEN};
use crate::nic::{IoKick, IoPoll, NicStats, RX_SCRATCH};
use crate::virtio::{
    Context, DescriptorChain, VirtioDevice, VirtioPci, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
    VIRTIO_ID_NET,
};

/// Feature: the device completes partial checksums of sent packets.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// Feature: the driver accepts packets with partial or verified checksums.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// Feature: the configuration space holds the MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature: the driver takes TCP over IPv4 packets longer than the MTU,
/// with a GSO header (the device merges segments for it).
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// Feature: the device segments TCP over IPv4 sends.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// Feature: the device segments TCP over IPv6 sends.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// Feature: receive buffers may be merged.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// Feature: the configuration space has the link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// Header flag: the checksum at csum_start + csum_offset is partial.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Header flag: the checksum has been verified.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// GSO type: none.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// GSO type: TCP over IPv4.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// GSO type: UDP (fragmentation offload; not offered).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// GSO type: TCP over IPv6.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// GSO flag: the TCP ECN bits need the CWR treatment.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;
/// Link status bit of the configuration's status field.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// Entries per queue (QEMU's default).
pub const QUEUE_SIZE: u16 = 256;
/// Length of the configuration space.
const CONFIG_LEN: usize = 10;
/// The largest send the device accepts: a 64 KiB GSO packet, its headers and
/// the virtio header, with room to spare.
const MAX_TX: usize = 65536 + 256;

/// Offsets in the packet header.
const HDR_FLAGS: usize = 0;
const HDR_GSO_TYPE: usize = 1;
const HDR_HDR_LEN: usize = 2;
const HDR_GSO_SIZE: usize = 4;
const HDR_CSUM_START: usize = 6;
const HDR_CSUM_OFFSET: usize = 8;
const HDR_NUM_BUFFERS: usize = 10;

/// The saved state of the device model (the transport saves the queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioNetState {
    pub mac: [u8; 6],
    pub stats: NicStats,
}

/// The virtio-net device model.
pub struct VirtioNet {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    kick: IoKick,
    rx_frame: Vec<u8>,
    /// The packet being delivered: a frame, or a run of merged segments
    /// (a buffer kept between deliveries; empty outside one unless the ring
    /// broke mid-way).
    rx_packet: Vec<u8>,
    /// A frame taken from the backend that did not continue a run: the
    /// next packet, held in `rx_frame`.
    rx_held: Option<usize>,
    tx_buf: Vec<u8>,
    stats: NicStats,
    warned: bool,
}

/// virtio-net on PCI: what the machine plugs in.
pub type VirtioNetPci = VirtioPci<VirtioNet>;

impl VirtioNet {
    /// A device with MAC address `mac` in front of `backend`; `kick` wakes
    /// the I/O thread after transmits.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6], kick: IoKick) -> Self {
        Self {
            backend,
            mac,
            kick,
            rx_frame: vec![0; RX_SCRATCH],
            rx_packet: Vec::new(),
            rx_held: None,
            tx_buf: Vec::new(),
            stats: NicStats::default(),
            warned: false,
        }
    }

    /// Traffic counters.
    pub fn stats(&self) -> NicStats {
        self.stats
    }

    /// The backend's wake fd, duplicated for the I/O thread.
    pub fn backend_wake_fd(&self) -> Option<std::os::fd::OwnedFd> {
        self.backend.wake_fd().and_then(|fd| fd.try_clone_to_owned().ok())
    }

    /// The state for a snapshot.
    pub fn save(&self) -> VirtioNetState {
        VirtioNetState { mac: self.mac, stats: self.stats }
    }

    /// Restores a snapshot.
    pub fn restore(&mut self, s: &VirtioNetState) {
        self.mac = s.mac;
        self.stats = s.stats;
    }

    fn header_len(features: u64) -> usize {
        if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
            12
        } else {
            10
        }
    }

    fn warn_once(&mut self, what: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(target: "devices", "virtio-net: {what}; dropped (logged once)");
        }
    }

    /// Takes the frame held back, or the backend's next one, into
    /// `rx_packet`; false when there is none.
    fn take_frame(&mut self) -> bool {
        let n = match self.rx_held.take() {
            Some(n) => n,
            None => match self.backend.recv(&mut self.rx_frame) {
                Some(n) => n,
                None => return false,
            },
        };
        self.rx_packet.clear();
        self.rx_packet.extend_from_slice(&self.rx_frame[..n]);
        true
    }

    /// Appends to `rx_packet` the backend's frames that continue `run`,
    /// while they fit `limit`; the first that does not is held back, in
    /// `rx_frame`, to be the next packet.
    fn merge_more(&mut self, run: &mut Run, limit: usize) {
        while let Some(n) = self.backend.recv(&mut self.rx_frame) {
            if !run.push(&mut self.rx_packet, &self.rx_frame[..n], limit) {
                self.rx_held = Some(n);
                return;
            }
            self.stats.rx_merged += 1;
        }
    }

    /// Pops receive chains until they hold `want` bytes or the ring runs
    /// out (or, without mergeable buffers, one chain). False if the ring is
    /// broken (the device then needs a reset).
    fn pop_room(ctx: &mut Context<'_>, chains: &mut Vec<DescriptorChain>, room: &mut u64, want: u64) -> bool {
        let mergeable = ctx.has(VIRTIO_NET_F_MRG_RXBUF);
        let rxq = &mut ctx.queues[RX_QUEUE];
        while *room < want && (mergeable || chains.is_empty()) {
            match rxq.pop(ctx.mem) {
                Ok(Some(c)) => {
                    *room += c.writable_len();
                    chains.push(c);
                }
                Ok(None) => break,
                Err(e) => {
                    rxq.mark_broken();
                    ctx.fail(&e);
                    return false;
                }
            }
        }
        true
    }

    /// Moves waiting frames into the guest's receive buffers; with
    /// GUEST_TSO4, consecutive segments of a TCP flow as one packet.
    fn deliver(&mut self, ctx: &mut Context<'_>) {
        let mergeable = ctx.has(VIRTIO_NET_F_MRG_RXBUF);
        let gso = mergeable && ctx.has(VIRTIO_NET_F_GUEST_TSO4) && ctx.has(VIRTIO_NET_F_GUEST_CSUM);
        let hdr_len = Self::header_len(ctx.features);
        let mut delivered = false;
        // The next frame waits (in the backend, or held back here) until
        // the guest has buffers for it.
        while let Some(len) = self.rx_held.or_else(|| self.backend.peek_len()) {
            let need = (hdr_len + len) as u64;
            if !ctx.queues[RX_QUEUE].is_usable() {
                break;
            }
            let size = ctx.queues[RX_QUEUE].size;
            let mut chains: Vec<DescriptorChain> = Vec::new();
            let mut room = 0u64;
            if !Self::pop_room(ctx, &mut chains, &mut room, need) {
                return;
            }
            let rxq = &mut ctx.queues[RX_QUEUE];
            if room < need {
                let popped = chains.len() as u16;
                let hopeless = if mergeable { popped >= size } else { popped == 1 };
                rxq.undo_pop(popped);
                if hopeless {
                    // No set of buffers will ever hold this frame.
                    if self.rx_held.take().is_none() {
                        let _ = self.backend.recv(&mut self.rx_frame);
                    }
                    self.stats.rx_dropped += 1;
                    continue;
                }
                // Wait for the driver to add buffers (it notifies: avail_event).
                if let Err(e) = rxq.publish_avail_event(ctx.mem) {
                    rxq.mark_broken();
                    ctx.fail(&e);
                }
                break;
            }
            if !self.take_frame() {
                rxq.undo_pop(chains.len() as u16);
                break;
            }
            let mut hdr = [0u8; 12];
            if ctx.has(VIRTIO_NET_F_GUEST_CSUM) {
                hdr[HDR_FLAGS] = VIRTIO_NET_HDR_F_DATA_VALID;
            }
            if let Some(mut run) = gso.then(|| Run::start(&self.rx_packet)).flatten() {
                // Room for as much of the run as the ring holds.
                let want = (hdr_len + ETH_HLEN + MAX_MERGED_IP_LEN) as u64;
                if !Self::pop_room(ctx, &mut chains, &mut room, want) {
                    return;
                }
                let limit = usize::try_from(room - hdr_len as u64).unwrap_or(usize::MAX);
                self.merge_more(&mut run, limit);
                if let Some((gso_size, headers)) = run.finish(&mut self.rx_packet) {
                    hdr[HDR_GSO_TYPE] = VIRTIO_NET_HDR_GSO_TCPV4;
                    hdr[HDR_HDR_LEN..HDR_HDR_LEN + 2].copy_from_slice(&headers.to_le_bytes());
                    hdr[HDR_GSO_SIZE..HDR_GSO_SIZE + 2].copy_from_slice(&gso_size.to_le_bytes());
                    self.stats.rx_gso_packets += 1;
                }
            }
            // The chains the header and packet fill; the rest go back.
            let total = (hdr_len + self.rx_packet.len()) as u64;
            let mut filled = 0u64;
            let used_chains = chains
                .iter()
                .take_while(|c| {
                    let more = filled < total;
                    filled += c.writable_len();
                    more
                })
                .count();
            let rxq = &mut ctx.queues[RX_QUEUE];
            rxq.undo_pop((chains.len() - used_chains) as u16);
            chains.truncate(used_chains);
            hdr[HDR_NUM_BUFFERS..].copy_from_slice(&(chains.len() as u16).to_le_bytes());
            // The header and the packet, spread over the chains in order.
            let mut parts: [&[u8]; 2] = [&hdr[..hdr_len], &self.rx_packet];
            let mut result = Ok(());
            for c in &chains {
                let cap = c.writable_len();
                let mut used = 0u64;
                for part in parts.iter_mut() {
                    if part.is_empty() || used >= cap {
                        continue;
                    }
                    match c.write_at(ctx.mem, used, part) {
                        Ok(w) => {
                            used += w as u64;
                            *part = &part[w..];
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                if let Err(e) = rxq.add_used(ctx.mem, c.head, used as u32) {
                    result = Err(e);
                }
                if result.is_err() {
                    break;
                }
            }
            if let Err(e) = result {
                rxq.mark_broken();
                ctx.fail(&e);
                return;
            }
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += self.rx_packet.len() as u64;
            self.rx_packet.clear();
            delivered = true;
        }
        if delivered {
            let rxq = &mut ctx.queues[RX_QUEUE];
            if let Err(e) = rxq.publish_avail_event(ctx.mem) {
                rxq.mark_broken();
                ctx.fail(&e);
                return;
            }
            ctx.signal_used(RX_QUEUE);
        }
    }

    /// Sends every packet waiting in the transmit queue.
    fn transmit(&mut self, ctx: &mut Context<'_>) {
        let hdr_len = Self::header_len(ctx.features);
        let mut used_any = false;
        loop {
            let txq = &mut ctx.queues[TX_QUEUE];
            let chain = match txq.pop(ctx.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    txq.mark_broken();
                    ctx.fail(&e);
                    return;
                }
            };
            let mut buf = std::mem::take(&mut self.tx_buf);
            buf.clear();
            let read = chain.read_all(ctx.mem, &mut buf, MAX_TX);
            if let Err(e) = ctx.queues[TX_QUEUE].add_used(ctx.mem, chain.head, 0) {
                ctx.queues[TX_QUEUE].mark_broken();
                ctx.fail(&e);
                self.tx_buf = buf;
                return;
            }
            used_any = true;
            match read {
                Ok(true) if buf.len() >= hdr_len => self.send_packet(&mut buf, hdr_len, ctx.features),
                Ok(_) => {
                    self.stats.tx_dropped += 1;
                    self.warn_once("a send shorter than its header or longer than 64 KiB");
                }
                Err(e) => {
                    ctx.queues[TX_QUEUE].mark_broken();
                    ctx.fail(&e);
                    self.tx_buf = buf;
                    return;
                }
            }
            self.tx_buf = buf;
        }
        if used_any {
            let txq = &mut ctx.queues[TX_QUEUE];
            if let Err(e) = txq.publish_avail_event(ctx.mem) {
                txq.mark_broken();
                ctx.fail(&e);
                return;
            }
            ctx.signal_used(TX_QUEUE);
            self.kick.kick();
        } else {
            let txq = &mut ctx.queues[TX_QUEUE];
            let _ = txq.publish_avail_event(ctx.mem);
        }
    }

    /// Applies the header's offloads to one packet and hands it to the backend.
    fn send_packet(&mut self, buf: &mut [u8], hdr_len: usize, features: u64) {
        let (hdr, frame) = buf.split_at_mut(hdr_len);
        let flags = hdr[HDR_FLAGS];
        let gso = hdr[HDR_GSO_TYPE] & !VIRTIO_NET_HDR_GSO_ECN;
        let gso_size = usize::from(u16::from_le_bytes([hdr[HDR_GSO_SIZE], hdr[HDR_GSO_SIZE + 1]]));
        let csum_start = usize::from(u16::from_le_bytes([hdr[HDR_CSUM_START], hdr[HDR_CSUM_START + 1]]));
        let csum_offset = usize::from(u16::from_le_bytes([hdr[HDR_CSUM_OFFSET], hdr[HDR_CSUM_OFFSET + 1]]));
        let needs_csum = flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && features & VIRTIO_NET_F_CSUM != 0;
        match gso {
            VIRTIO_NET_HDR_GSO_NONE => {
                if needs_csum
                    && !offload::insert_checksum(frame, csum_start, csum_start.saturating_add(csum_offset), None)
                {
                    self.stats.tx_dropped += 1;
                    self.warn_once("a partial checksum outside the packet");
                    return;
                }
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame.len() as u64;
                self.backend.send(frame);
            }
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => {
                let wanted =
                    if gso == VIRTIO_NET_HDR_GSO_TCPV4 { VIRTIO_NET_F_HOST_TSO4 } else { VIRTIO_NET_F_HOST_TSO6 };
                let l3 = offload::l3_offset(frame).map(|(l3, _)| l3);
                let (Some(l3), true) = (l3, features & wanted != 0) else {
                    self.stats.tx_dropped += 1;
                    self.warn_once("a segmentation offload that was not negotiated or does not parse");
                    return;
                };
                // csum_start is the TCP header for GSO sends; hdr_len is only a hint.
                let seg = Segmentation { l3, l4: csum_start, mss: gso_size, proto: L4Proto::Tcp };
                let (backend, stats) = (&mut self.backend, &mut self.stats);
                let result = offload::segment(frame, &seg, &mut |s| {
                    stats.tx_frames += 1;
                    stats.tx_bytes += s.len() as u64;
                    backend.send(s);
                });
                if result.is_err() {
                    self.stats.tx_dropped += 1;
                    self.warn_once("a segmentation offload whose headers do not parse");
                }
            }
            _ => {
                self.stats.tx_dropped += 1;
                self.warn_once("an unsupported GSO type");
            }
        }
    }

    /// Drops whatever waits for a guest that cannot take it.
    fn discard(&mut self) {
        self.stats.rx_dropped += u64::from(!self.rx_packet.is_empty()) + u64::from(self.rx_held.take().is_some());
        self.rx_packet.clear();
        while self.backend.recv(&mut self.rx_frame).is_some() {
            self.stats.rx_dropped += 1;
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn debug_label(&self) -> String {
        format!("virtio-net ({})", self.backend.debug_label())
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_STATUS
            | VIRTIO_F_INDIRECT_DESC
            | VIRTIO_F_EVENT_IDX
            | VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset.checked_add(i).and_then(|o| cfg.get(o)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // Legacy drivers set the MAC address through the configuration space.
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = offset.checked_add(i).and_then(|o| self.mac.get_mut(o)) {
                *slot = b;
            }
        }
    }

    fn reset(&mut self) {}

    fn notify(&mut self, queue: usize, ctx: &mut Context<'_>) {
        match queue {
            RX_QUEUE => {
                self.deliver(ctx);
                // The backend may hold flows back while the guest's queue is full.
                self.kick.kick();
            }
            TX_QUEUE => self.transmit(ctx),
            _ => {}
        }
    }

    fn poll(&mut self, ctx: &mut Context<'_>, now: Instant) -> Option<Duration> {
        let next = self.backend.poll(now);
        if ctx.running {
            self.deliver(ctx);
        } else {
            self.discard();
        }
        next
    }
}

impl IoPoll for VirtioPci<VirtioNet> {
    fn poll(&mut self, now: Instant) -> Option<Duration> {
        VirtioPci::poll(self, now)
    }

    fn doorbell(&mut self, queue: u16) {
        VirtioPci::doorbell(self, queue);
    }

    fn io_label(&self) -> String {
        self.device().debug_label()
    }
}

#[cfg(any(test, feature = "fuzz"))]
impl crate::fuzz::FuzzDevice for VirtioNetPci {
    fn bars(&self) -> &'static [(usize, u64)] {
        use crate::virtio::pci::{LEGACY_BAR, MODERN_BAR, MODERN_BAR_SIZE, MSIX_BAR};
        &[(MODERN_BAR, MODERN_BAR_SIZE), (LEGACY_BAR, 0x20), (MSIX_BAR, crate::pci::msix::MSIX_BAR_SIZE)]
    }
    fn hot_regs(&self) -> &'static [(usize, u64)] {
        use crate::virtio::pci::{LEGACY_BAR, MODERN_BAR, MSIX_BAR};
        // Notifications of both queues, status, queue select/size/enable,
        // the ISR, the MSI-X vectors; legacy: PFN, notify, status, ISR and
        // the MSI-X vectors; the MSI-X table's vector controls.
        const R: &[(usize, u64)] = &[
            (MODERN_BAR, 0x3000),
            (MODERN_BAR, 0x3004),
            (MODERN_BAR, 0x3000),
            (MODERN_BAR, 0x3004),
            (MODERN_BAR, 0x14),
            (MODERN_BAR, 0x16),
            (MODERN_BAR, 0x18),
            (MODERN_BAR, 0x1c),
            (MODERN_BAR, 0x20),
            (MODERN_BAR, 0x1000),
            (LEGACY_BAR, 0x08),
            (LEGACY_BAR, 0x10),
            (LEGACY_BAR, 0x12),
            (LEGACY_BAR, 0x13),
            (MODERN_BAR, 0x10),
            (MODERN_BAR, 0x1a),
            (LEGACY_BAR, 0x14),
            (LEGACY_BAR, 0x16),
            (MSIX_BAR, 0x0c),
            (MSIX_BAR, 0x1c),
        ];
        R
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        VirtioPci::bar_read(self, bar, offset, data);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        VirtioPci::bar_write(self, bar, offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        crate::pci::PciDevice::write_config(self, offset, data);
    }
    fn poll(&mut self, now: Instant) {
        IoPoll::poll(self, now);
    }
}

/// The fuzzing entry point: a virtio-net device brought up as Linux's
/// driver does, with the features the first eight bytes of `data` leave
/// (VERSION_1 always) and both queues (16 entries) enabled, then the rest
/// of `data` as a hostile guest's and network's actions (see
/// `crate::fuzz::drive`). Panics only if the model does.
/// Returns the device's counters.
#[cfg(any(test, feature = "fuzz"))]
pub fn fuzz_rings(data: &[u8]) -> NicStats {
    use crate::fuzz::{drive, FuzzBackend, Input, FUZZ_RAM};
    use crate::virtio::pci::MODERN_BAR;
    use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
    let Ok(mem) = mmu::GuestMemory::new(FUZZ_RAM) else { return NicStats::default() };
    let mem = std::sync::Arc::new(mem);
    let (backend, inbox) = FuzzBackend::with_inbox();
    let dev = VirtioPci::new(
        VirtioNet::new(backend, [0x52, 0x54, 0, 0x12, 0x34, 0x56], IoKick::none()),
        mem.clone(),
        std::sync::Arc::new(crate::irq::NoIrq),
    );
    let vectors = dev.default_vectors();
    let mut dev = dev.with_msix(std::sync::Arc::new(crate::fuzz::FuzzMsi), vectors);
    crate::pci::PciDevice::write_config(&mut dev, crate::pci::config::PCI_COMMAND, &[0x07, 0]);
    let mut input = Input::new(data);
    // The first byte: odd inputs run with MSI-X on, the table unmasked and
    // a vector per queue, as Linux sets it up.
    let msix = input.u8() & 1 != 0;
    if msix {
        crate::pci::PciDevice::write_config(&mut dev, crate::virtio::pci::CAP_MSIX_AT + 2, &0x8000u16.to_le_bytes());
        for v in 0..u64::from(vectors) {
            let mut e = [0u8; 16];
            e[..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
            e[8] = 0x40 + v as u8;
            dev.bar_write(crate::virtio::pci::MSIX_BAR, 16 * v, &e);
        }
    }
    let features =
        (u64::from(input.u32()) | u64::from(input.u32()) << 32 | VIRTIO_F_VERSION_1) & dev.device().features();
    let mut w = |off: u64, v: u64, len: usize| dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
    w(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    w(0x08, 0, 4);
    w(0x0c, features & 0xffff_ffff, 4);
    w(0x08, 1, 4);
    w(0x0c, features >> 32, 4);
    w(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 1);
    // Queue q: descriptors at 0x1000 * (q + 1), avail 0x400 and used 0x800 after.
    let mut hot = Vec::new();
    for q in 0..2u64 {
        let desc = 0x1000 * (q + 1);
        w(0x16, q, 2);
        w(0x18, 16, 2);
        w(0x20, desc, 8);
        w(0x28, desc + 0x400, 8);
        w(0x30, desc + 0x800, 8);
        if msix {
            w(0x1a, q, 2);
        }
        w(0x1c, 1, 2);
        hot.extend([desc, desc + 0x400, desc + 0x800]);
    }
    w(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK), 1);
    hot.push(0x10000);
    drive(&mut dev, &mem, &inbox, &hot, input);
    dev.device().stats()
}

#[cfg(test)]
mod tests {
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
                let base = [r.rx.desc, r.rx.avail, r.rx.used, r.tx.desc, r.tx.avail, r.tx.used, 0x40000]
                    [(rand() % 7) as usize];
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
        r.dev.device_mut().restore(&s);
        assert_eq!(r.dev.device().save(), s);
    }
}
