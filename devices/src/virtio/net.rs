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
use persist::{Persist, PersistError};

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

/// The saved state of the device model. The transport saves the queues
/// and the negotiated features ([`crate::virtio::pci::VirtioPciState`],
/// which checks them against those the device offers); the configuration
/// space is the MAC address (the link is always up).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VirtioNetState {
    /// The MAC address (a legacy driver may have written it).
    pub mac: [u8; 6],
    /// A frame taken from the backend that did not continue a merged run:
    /// the next packet for the guest (at most 64 KiB).
    pub held_frame: Option<Vec<u8>>,
    /// The traffic counters.
    pub stats: NicStats,
}

/// What a [`PersistError`] of the device model names.
const PART: &str = "virtio-net";

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
                // Wait for the driver to add buffers (it notifies: avail_event),
                // unless it added some before it could see the event.
                match rxq.rearm(ctx.mem) {
                    Ok(n) if n > popped => continue,
                    Ok(_) => {}
                    Err(e) => {
                        rxq.mark_broken();
                        ctx.fail(&e);
                    }
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
                // Empty: wait for a notification, unless chains came in
                // before the driver could see that the device waits.
                Ok(None) => match txq.rearm(ctx.mem) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        txq.mark_broken();
                        ctx.fail(&e);
                        return;
                    }
                },
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
            ctx.signal_used(TX_QUEUE);
            self.kick.kick();
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

impl Persist for VirtioNet {
    type State = VirtioNetState;

    fn save(&self) -> VirtioNetState {
        let held_frame = self.rx_held.map(|n| self.rx_frame[..n].to_vec());
        VirtioNetState { mac: self.mac, held_frame, stats: self.stats }
    }

    /// Restores the model. Frames that never reached the device are the
    /// backend's, which saves what it can itself (the NAT: [`net::UserNetState`]).
    fn restore(&mut self, s: &VirtioNetState) -> Result<(), PersistError> {
        if let Some(f) = &s.held_frame {
            PersistError::check_max(PART, "held_frame", f.len(), self.rx_frame.len())?;
        }
        self.mac = s.mac;
        self.rx_held = s.held_frame.as_ref().map(|f| {
            self.rx_frame[..f.len()].copy_from_slice(f);
            f.len()
        });
        self.rx_packet.clear();
        self.stats = s.stats;
        Ok(())
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

    fn doorbell(&mut self, queue: u16, rings: u64) {
        VirtioPci::doorbell(self, queue, rings);
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
/// `crate::fuzz::drive`). Panics only if the model does, or if the
/// state the input left does not restore.
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
    crate::fuzz::assert_restorable(&mut dev);
    dev.device().stats()
}

#[cfg(test)]
mod tests;
