use super::*;
use crate::irq::RecordingIrq;
use crate::nic::offload::tests::{checksums_ok, tcp4_frame};
use crate::nic::testing::{backend, Wire};
use crate::pci::config::PCI_COMMAND;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
/// Link status change (the link never changes here; Linux raises it through ICS).
const ICR_LSC: u32 = 1 << 2;
const TX_RING: u64 = 0x10000;
const RX_RING: u64 = 0x20000;

struct Rig {
    dev: E1000,
    wire: Arc<Mutex<Wire>>,
    mem: Arc<GuestMemory>,
    irq: Arc<RecordingIrq>,
}

fn rig() -> Rig {
    rig_on(Arc::new(GuestMemory::new(4 << 20).unwrap()), MAC)
}

/// A device with `mac` over `mem`, with memory space and bus mastering on.
fn rig_on(mem: Arc<GuestMemory>, mac: [u8; 6]) -> Rig {
    let irq = Arc::new(RecordingIrq::new());
    let (be, wire) = backend();
    let mut dev = E1000::new(be, mac, mem.clone(), irq.clone(), IoKick::none());
    dev.write_config(PCI_COMMAND, &[0x07, 0]);
    Rig { dev, wire, mem, irq }
}

impl Rig {
    fn w(&mut self, reg: usize, v: u32) {
        self.dev.bar_write(MMIO_BAR, reg as u64, &v.to_le_bytes());
    }
    fn r(&mut self, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(MMIO_BAR, reg as u64, &mut b);
        u32::from_le_bytes(b)
    }
    /// Bit-bangs a Microwire read of EEPROM word `addr`, as Linux does.
    fn eeprom_word(&mut self, addr: u16) -> u16 {
        let mut eecd = self.r(EECD) | EECD_REQ;
        self.w(EECD, eecd);
        assert_ne!(self.r(EECD) & EECD_GNT, 0);
        eecd &= !(EECD_DI | EECD_SK);
        self.w(EECD, eecd);
        eecd |= EECD_CS;
        self.w(EECD, eecd);
        let bits = (u32::from(0b110u16) << 6) | u32::from(addr);
        for i in (0..9).rev() {
            let di = if bits >> i & 1 != 0 { EECD_DI } else { 0 };
            eecd = (eecd & !EECD_DI) | di;
            self.w(EECD, eecd);
            self.w(EECD, eecd | EECD_SK);
            self.w(EECD, eecd);
        }
        eecd &= !EECD_DI;
        let mut word = 0u16;
        for _ in 0..16 {
            self.w(EECD, eecd | EECD_SK);
            word = (word << 1) | u16::from(self.r(EECD) & EECD_DO != 0);
            self.w(EECD, eecd);
        }
        // Standby: CS low.
        self.w(EECD, eecd & !EECD_CS);
        word
    }
    fn mdic(&mut self, op: u32, reg: u32, data: u16) -> u32 {
        self.w(
            MDIC,
            (op << MDIC_OP_SHIFT) | (PHY_ADDRESS << MDIC_PHY_SHIFT) | (reg << MDIC_REG_SHIFT) | u32::from(data),
        );
        self.r(MDIC)
    }
    fn tx_ring(&mut self, size: u32) {
        self.w(TDBAL, TX_RING as u32);
        self.w(TDBAH, 0);
        self.w(TDLEN, size * 16);
        self.w(TDH, 0);
        self.w(TDT, 0);
        self.w(TCTL, TCTL_EN);
    }
    fn rx_ring(&mut self, size: u32, buffers: u32) {
        for i in 0..u64::from(size) {
            self.mem.write_u64(RX_RING + 16 * i, 0x100000 + 0x1000 * i).unwrap();
        }
        self.w(RDBAL, RX_RING as u32);
        self.w(RDLEN, size * 16);
        self.w(RDH, 0);
        self.w(RDT, buffers);
        self.w(RXCSUM, RXCSUM_TUOFL | RXCSUM_IPOFL);
        self.w(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);
    }
    fn put_tx(&mut self, i: u64, desc: [u8; 16]) {
        self.mem.write(TX_RING + 16 * i, &desc).unwrap();
    }
}

fn legacy(addr: u64, len: u16, cmd: u32) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&(u32::from(len) | cmd).to_le_bytes());
    d
}

fn data(addr: u64, len: u32, cmd: u32, popts: u32) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&(len | cmd | TXD_CMD_DEXT | (TXD_DTYP_DATA << TXD_DTYP_SHIFT)).to_le_bytes());
    d[12..16].copy_from_slice(&popts.to_le_bytes());
    d
}

// One argument per field of the context descriptor, in descriptor order.
#[allow(clippy::too_many_arguments)]
fn context(ipcss: u8, ipcso: u8, ipcse: u16, tucss: u8, tucso: u8, cmd: u32, hdr_len: u8, mss: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0] = ipcss;
    d[1] = ipcso;
    d[2..4].copy_from_slice(&ipcse.to_le_bytes());
    d[4] = tucss;
    d[5] = tucso;
    d[8..12].copy_from_slice(&(cmd | TXD_CMD_DEXT).to_le_bytes());
    d[13] = hdr_len;
    d[14..16].copy_from_slice(&mss.to_le_bytes());
    d
}

/// A system reset turns receive and transmit off and clears the
/// descriptor rings' registers, as at power-on; the PCI header stays.
#[test]
fn a_system_reset_stops_receive_and_transmit() {
    let mut r = rig();
    r.w(RCTL, RCTL_EN);
    r.w(TCTL, TCTL_EN);
    r.w(RDBAL, 0x10000);
    r.w(IMS, 0xff);
    let command = r.dev.config().command();
    r.dev.system_reset();
    assert_eq!((r.r(RCTL), r.r(TCTL), r.r(RDBAL), r.r(IMS)), (0, 0, 0, 0));
    assert_eq!(r.r(RA + 4), 0x5634 | RAH_AV, "the MAC address from the EEPROM again");
    assert_eq!(r.dev.config().command(), command);
}

#[test]
fn pci_identity_and_reset_state() {
    let mut r = rig();
    assert_eq!(r.dev.config().read_dword(0), 0x100e_8086);
    assert_eq!(r.dev.config().read_dword(2) >> 8, CLASS_ETHERNET);
    assert_eq!(r.dev.config().bar(MMIO_BAR).unwrap().size, MMIO_BAR_SIZE);
    assert_eq!(r.dev.config().bar(IO_BAR).unwrap().kind, PciBarKind::Io);
    assert_eq!(r.r(STATUS) & (STATUS_LU | STATUS_FD), STATUS_LU | STATUS_FD);
    assert_eq!(r.r(RA), u32::from_le_bytes([0x52, 0x54, 0, 0x12]));
    assert_eq!(r.r(RA + 4), 0x5634 | RAH_AV);
    // The I/O window reaches the same registers (Linux resets through it).
    r.dev.bar_write(IO_BAR, 0, &(STATUS as u32).to_le_bytes());
    let mut b = [0u8; 4];
    r.dev.bar_read(IO_BAR, 4, &mut b);
    assert_eq!(u32::from_le_bytes(b), r.r(STATUS));
    r.w(IMS, 0xff);
    r.dev.bar_write(IO_BAR, 0, &(CTRL as u32).to_le_bytes());
    r.dev.bar_write(IO_BAR, 4, &CTRL_RST.to_le_bytes());
    assert_eq!(r.r(IMS), 0, "CTRL.RST resets the registers");
    assert_eq!(r.r(CTRL) & CTRL_RST, 0, "RST self-clears");
    r.dev.bar_read(IO_BAR, 0, &mut b);
    assert_eq!(u32::from_le_bytes(b), CTRL as u32);
    // Odd accesses.
    let mut w = [0u8; 2];
    r.dev.bar_read(MMIO_BAR, STATUS as u64, &mut w);
    assert_eq!(u16::from_le_bytes(w), r.r(STATUS) as u16);
    let mut odd = [0u8; 3];
    r.dev.bar_read(MMIO_BAR, 1, &mut odd);
    assert_eq!(odd, [0xff; 3]);
    r.dev.bar_read(IO_BAR, 8, &mut b);
    r.dev.bar_write(IO_BAR, 2, &[1, 2]);
    r.dev.bar_write(MMIO_BAR, 0x30000, &[1, 2, 3, 4]);
    assert!(format!("{:?}", r.dev).contains("fake"));
}

#[test]
fn eeprom_reads_back_the_mac_and_a_valid_checksum() {
    let mut r = rig();
    let words: Vec<u16> = (0..64).map(|a| r.eeprom_word(a)).collect();
    assert_eq!(words[0], 0x5452);
    assert_eq!(words[1], 0x1200);
    assert_eq!(words[2], 0x5634);
    assert_eq!(words[11], E1000_DEVICE_ID);
    assert_eq!(words.iter().fold(0u16, |a, &w| a.wrapping_add(w)), EEPROM_SUM);
    // EERD gives the same words.
    r.w(EERD, (2 << EERD_ADDR_SHIFT) | EERD_START);
    assert_eq!(r.r(EERD), (0x5634 << EERD_DATA_SHIFT) | (2 << EERD_ADDR_SHIFT) | EERD_DONE);
    r.w(EERD, (200 << EERD_ADDR_SHIFT) | EERD_START);
    assert_eq!(r.r(EERD) >> EERD_DATA_SHIFT, 0xffff);
}

#[test]
fn phy_registers_through_mdic() {
    let mut r = rig();
    let id1 = r.mdic(MDIC_OP_READ, 2, 0);
    assert_ne!(id1 & MDIC_READY, 0);
    assert_eq!(id1 & MDIC_DATA_MASK, u32::from(PHY_ID1));
    assert_eq!(r.mdic(MDIC_OP_READ, 3, 0) & MDIC_DATA_MASK, u32::from(PHY_ID2));
    let st = r.mdic(MDIC_OP_READ, 1, 0) as u16;
    assert_ne!(st & MII_SR_LINK_STATUS, 0);
    r.mdic(MDIC_OP_WRITE, 0, MII_CR_RESET | MII_CR_RESTART_AUTO_NEG | 0x1000);
    assert_eq!(r.mdic(MDIC_OP_READ, 0, 0) & MDIC_DATA_MASK, 0x1000);
    r.mdic(MDIC_OP_WRITE, 4, 0x01e1);
    assert_eq!(r.mdic(MDIC_OP_READ, 4, 0) & MDIC_DATA_MASK, 0x01e1);
    r.mdic(MDIC_OP_WRITE, 2, 0);
    assert_eq!(r.mdic(MDIC_OP_READ, 2, 0) & MDIC_DATA_MASK, u32::from(PHY_ID1), "IDs are read-only");
    // Another PHY address is an error; MDAC interrupts on request.
    r.w(MDIC, (MDIC_OP_READ << MDIC_OP_SHIFT) | (2 << MDIC_PHY_SHIFT));
    assert_ne!(r.r(MDIC) & MDIC_ERROR, 0);
    r.w(IMS, ICR_MDAC);
    r.w(MDIC, (MDIC_OP_READ << MDIC_OP_SHIFT) | (PHY_ADDRESS << MDIC_PHY_SHIFT) | MDIC_INT_EN);
    assert!(r.irq.level());
    assert_eq!(r.r(ICR), ICR_MDAC);
    assert!(!r.irq.level());
}

#[test]
fn interrupt_causes_masks_and_throttling() {
    let mut r = rig();
    // The device takes the time of each register access itself; `poll` at
    // a later instant lets a held-back interrupt through.
    let mut t = Instant::now();
    let settle = |r: &mut Rig, t: &mut Instant| {
        *t += Duration::from_secs(1);
        r.dev.poll(*t);
    };
    r.w(ICS, ICR_LSC);
    assert!(!r.irq.level(), "masked");
    r.w(IMS, ICR_LSC | ICR_RXT0);
    assert!(r.irq.level());
    assert_eq!(r.r(IMS), ICR_LSC | ICR_RXT0);
    r.w(IMC, ICR_LSC);
    assert!(!r.irq.level());
    r.w(IMS, ICR_LSC);
    settle(&mut r, &mut t);
    assert!(r.irq.level());
    assert_eq!(r.r(ICR), ICR_LSC, "reading ICR returns and clears the causes");
    assert!(!r.irq.level());
    assert_eq!(r.r(ICR), 0);
    r.w(ICS, ICR_RXT0 | ICR_TXDW);
    r.w(ICR, ICR_RXT0);
    assert_eq!(r.r(ICR), ICR_TXDW, "writing ICR clears the ones written");
    // ITR: 0x8000 units of 256 ns is 8.4 ms between interrupts. Frames
    // arriving through polls at chosen instants set RXT0.
    r.w(ITR, 0x8000);
    r.rx_ring(8, 7);
    let mut f = tcp4_frame(b"to the guest", 0x18);
    f[..6].copy_from_slice(&MAC);
    t += Duration::from_secs(1);
    r.wire.lock().to_guest.push_back(f.clone());
    r.dev.poll(t);
    assert!(r.irq.level());
    r.r(ICR);
    r.wire.lock().to_guest.push_back(f);
    let next = r.dev.poll(t).expect("a deadline for the held interrupt");
    assert!(!r.irq.level(), "held back by ITR");
    assert_eq!(next, Duration::from_nanos(0x8000 * 256));
    r.dev.poll(t + Duration::from_millis(8));
    assert!(!r.irq.level(), "still within the ITR interval");
    r.dev.poll(t + Duration::from_nanos(0x8000 * 256));
    assert!(r.irq.level(), "raised once the interval passed");
    // INTx disable masks the line.
    r.dev.write_config(PCI_COMMAND, &[0x07, 0x04]);
    assert!(!r.irq.level());
    r.dev.write_config(PCI_COMMAND, &[0x07, 0x00]);
    settle(&mut r, &mut t);
    assert!(r.irq.level());
}

/// Interrupts come at most once per 128 µs (500 ITR units) whatever ITR
/// holds: with throttling off (0), with Linux's 50 µs (195), and with an
/// interval longer than the floor (1000: 256 µs), which ITR then sets.
#[test]
fn interrupts_are_at_least_128_us_apart() {
    for (itr, gap_us) in [(0u32, 128u64), (195, 128), (1000, 256)] {
        let mut r = rig();
        r.rx_ring(8, 7);
        r.w(ITR, itr);
        r.w(IMS, ICR_RXT0);
        let mut f = tcp4_frame(b"to the guest", 0x18);
        f[..6].copy_from_slice(&MAC);
        // The frames arrive through the I/O thread's polls, at instants
        // the test chooses.
        let t0 = Instant::now() + Duration::from_secs(1);
        r.wire.lock().to_guest.push_back(f.clone());
        r.dev.poll(t0);
        assert!(r.irq.level(), "ITR {itr}: the first interrupt comes at once");
        r.r(ICR);
        assert!(!r.irq.level());
        r.wire.lock().to_guest.push_back(f.clone());
        let next = r.dev.poll(t0 + Duration::from_micros(100));
        assert_eq!(r.dev.stats().rx_frames, 2, "the frame is in the ring");
        assert!(!r.irq.level(), "ITR {itr}: held back 100 µs after the last one");
        assert_eq!(next, Some(Duration::from_micros(gap_us - 100)), "ITR {itr}: the deadline is the interval's end");
        r.dev.poll(t0 + Duration::from_micros(gap_us - 1));
        assert!(!r.irq.level(), "ITR {itr}: held back until {gap_us} µs");
        r.dev.poll(t0 + Duration::from_micros(gap_us));
        assert!(r.irq.level(), "ITR {itr}: raised {gap_us} µs after the last one");
        assert_eq!(r.irq.raises(), 2);
    }
}

/// An RDT write has the I/O thread poll the backend only when frames were
/// waiting for buffers and the backend says it held more back; Linux
/// writes RDT after every poll of its ring, waiting frames or not.
#[test]
fn rdt_writes_wake_the_io_thread_only_when_frames_wait() {
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    let (be, wire) = backend();
    let mut io = crate::nic::IoThread::new().unwrap();
    let dev = Arc::new(Mutex::new(E1000::new(be, MAC, mem.clone(), Arc::new(crate::irq::NoIrq), io.kick())));
    let w = |reg: usize, v: u32| dev.lock().bar_write(MMIO_BAR, reg as u64, &v.to_le_bytes());
    dev.lock().write_config(PCI_COMMAND, &[0x07, 0]);
    for i in 0..8u64 {
        mem.write_u64(RX_RING + 16 * i, 0x100000 + 0x1000 * i).unwrap();
    }
    w(RDBAL, RX_RING as u32);
    w(RDLEN, 8 * 16);
    w(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);
    let shared: crate::io_thread::SharedIoDevice = dev.clone();
    io.start(vec![(shared, None)], Vec::new()).unwrap();
    let polls = || wire.lock().polls;
    let wait_for_poll = |above: u32| {
        let t = Instant::now();
        while polls() <= above {
            assert!(t.elapsed() < Duration::from_secs(5), "the I/O thread never polled");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for_poll(0);
    // The thread has nothing to wait for but the kick.
    std::thread::sleep(Duration::from_millis(20));
    let idle = polls();
    w(RDT, 3);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(polls(), idle, "no frame waited: no poll");
    let mut f = tcp4_frame(b"to the guest", 0x18);
    f[..6].copy_from_slice(&MAC);
    // A frame waits, but the backend held nothing back.
    wire.lock().holds_nothing = true;
    wire.lock().to_guest.push_back(f.clone());
    w(RDT, 4);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(polls(), idle, "nothing held back: no poll");
    assert_eq!(dev.lock().stats().rx_frames, 1, "the waiting frame went into the ring");
    wire.lock().holds_nothing = false;
    wire.lock().to_guest.push_back(f);
    w(RDT, 5);
    wait_for_poll(idle);
    assert_eq!(dev.lock().stats().rx_frames, 2);
}

#[test]
fn transmits_legacy_descriptors() {
    let mut r = rig();
    r.tx_ring(8);
    r.w(IMS, ICR_TXDW);
    let f = tcp4_frame(b"legacy", 0x18);
    r.mem.write(0x30000, &f[..20]).unwrap();
    r.mem.write(0x31000, &f[20..]).unwrap();
    r.put_tx(0, legacy(0x30000, 20, 0));
    r.put_tx(1, legacy(0x31000, (f.len() - 20) as u16, TXD_CMD_EOP | TXD_CMD_RS));
    r.w(TDT, 2);
    assert_eq!(r.wire.lock().sent, vec![f.clone()]);
    assert_eq!(r.r(TDH), 2);
    assert_eq!(r.mem.read_u8(TX_RING + 16 + 12).unwrap() & DESC_STA_DD, DESC_STA_DD);
    assert_eq!(r.mem.read_u8(TX_RING + 12).unwrap() & DESC_STA_DD, 0, "no RS, no write-back");
    assert!(r.irq.level());
    assert_eq!(r.r(ICR), ICR_TXDW | ICR_TXQE);
    assert_eq!(r.r(GPTC), 1);
    assert_eq!(r.r(GPTC), 0, "statistics clear on read");
    assert_eq!(r.r(TOTL), f.len() as u32 + 4);
    // Legacy checksum insertion (IC, CSS, CSO on the EOP descriptor).
    let mut g = tcp4_frame(b"ic", 0x18);
    let pseudo = offload::checksum_add(0, &g[26..34]) + 6 + (g.len() - 34) as u64;
    g[50..52].copy_from_slice(&(!offload::checksum_finish(pseudo)).to_be_bytes());
    r.mem.write(0x30000, &g).unwrap();
    let mut d = legacy(0x30000, g.len() as u16, TXD_CMD_EOP | TXD_CMD_IC);
    d[10] = 50; // CSO
    d[13] = 34; // CSS
    r.put_tx(2, d);
    r.w(TDT, 3);
    assert!(checksums_ok(&r.wire.lock().sent[1]));
    // VLAN insertion with CTRL.VME.
    r.w(CTRL, CTRL_RESET | CTRL_VME);
    let mut d = legacy(0x30000, 60, TXD_CMD_EOP | TXD_CMD_VLE);
    d[14..16].copy_from_slice(&5u16.to_le_bytes());
    r.put_tx(3, d);
    r.w(TDT, 4);
    let tagged = r.wire.lock().sent[2].clone();
    assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x00, 0x05]);
    assert_eq!(tagged.len(), 64);
}

#[test]
fn transmits_with_context_checksums_and_tso() {
    let mut r = rig();
    r.tx_ring(16);
    // Checksum offload: TXSM with a TCP context.
    let mut f = tcp4_frame(b"offloaded checksum", 0x18);
    let pseudo = offload::checksum_add(0, &f[26..34]) + 6 + (f.len() - 34) as u64;
    f[50..52].copy_from_slice(&(!offload::checksum_finish(pseudo)).to_be_bytes());
    f[24..26].fill(0);
    r.mem.write(0x30000, &f).unwrap();
    r.put_tx(0, context(14, 24, 33, 34, 50, TUCMD_TCP, 0, 0));
    r.put_tx(1, data(0x30000, f.len() as u32, TXD_CMD_EOP | TXD_CMD_RS, POPTS_TXSM | POPTS_IXSM));
    r.w(TDT, 2);
    assert!(checksums_ok(&r.wire.lock().sent[0]));
    // TSO: 4000 bytes, MSS 1460, header and payload in separate buffers.
    let big = tcp4_frame(&vec![9u8; 4000], 0x19);
    r.mem.write(0x40000, &big[..54]).unwrap();
    r.mem.write(0x41000, &big[54..]).unwrap();
    r.put_tx(2, context(14, 24, 33, 34, 50, TUCMD_TCP | TXD_CMD_TSE | 4000, 54, 1460));
    r.put_tx(3, data(0x40000, 54, TXD_CMD_TSE, POPTS_TXSM | POPTS_IXSM));
    r.put_tx(4, data(0x41000, 4000, TXD_CMD_TSE | TXD_CMD_EOP | TXD_CMD_RS, POPTS_TXSM | POPTS_IXSM));
    r.w(TDT, 5);
    let sent = r.wire.lock().sent.clone();
    assert_eq!(sent.len(), 4);
    for s in &sent[1..] {
        assert!(checksums_ok(s));
    }
    assert_eq!(sent[1].len(), 54 + 1460);
    assert_eq!(sent[3].len(), 54 + 4000 - 2 * 1460);
    // The checksum context survived the TSO one.
    r.mem.write(0x30000, &f).unwrap();
    r.put_tx(5, data(0x30000, f.len() as u32, TXD_CMD_EOP, POPTS_TXSM | POPTS_IXSM));
    r.w(TDT, 6);
    assert!(checksums_ok(&r.wire.lock().sent[4]));
    assert_eq!(r.dev.stats().tx_frames, 5);
    // TSO with a VLAN tag (CTRL.VME, VLE on the EOP descriptor): every
    // segment carries the tag, the rest as without it.
    r.w(CTRL, CTRL_RESET | CTRL_VME);
    r.put_tx(6, context(14, 24, 33, 34, 50, TUCMD_TCP | TXD_CMD_TSE | 4000, 54, 1460));
    r.put_tx(7, data(0x40000, 54, TXD_CMD_TSE, POPTS_TXSM | POPTS_IXSM));
    let mut d = data(0x41000, 4000, TXD_CMD_TSE | TXD_CMD_EOP | TXD_CMD_VLE, POPTS_TXSM | POPTS_IXSM);
    d[14..16].copy_from_slice(&7u16.to_le_bytes());
    r.put_tx(8, d);
    r.w(TDT, 9);
    let sent = r.wire.lock().sent.clone();
    assert_eq!(sent.len(), 8);
    for (tagged, plain) in sent[5..].iter().zip(&sent[1..4]) {
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x00, 0x07]);
        assert_eq!(tagged[..12], plain[..12]);
        assert_eq!(tagged[16..], plain[12..]);
    }
    assert_eq!(r.dev.stats().tx_bytes, sent.iter().map(|f| f.len() as u64).sum::<u64>());
}

#[test]
fn hostile_transmit_rings() {
    let mut r = rig();
    r.tx_ring(8);
    // TDT past the ring.
    r.w(TDT, 9);
    assert_eq!(r.r(TDH), 0);
    // A ring outside RAM.
    r.w(TDBAL, 0xfff0_0000);
    r.w(TDT, 1);
    assert_eq!(r.r(TDH), 0);
    // A buffer outside RAM, a packet too long, a bad context: dropped.
    r.w(TDBAL, TX_RING as u32);
    r.w(TDH, 0);
    r.put_tx(0, legacy(0xfff0_0000, 100, TXD_CMD_EOP));
    for i in 1..6 {
        r.put_tx(i, data(0x30000, 0xfffff, 0, 0));
    }
    r.put_tx(6, data(0x30000, 100, TXD_CMD_EOP, 0));
    r.w(TDT, 7);
    assert_eq!(r.r(TDH), 7);
    r.put_tx(7, context(14, 24, 33, 200, 250, TUCMD_TCP | TXD_CMD_TSE, 54, 1460));
    r.put_tx(0, data(0x30000, 100, TXD_CMD_EOP | TXD_CMD_TSE, 0));
    r.w(TDT, 1);
    assert!(r.wire.lock().sent.is_empty());
    assert_eq!(r.dev.stats().tx_dropped, 3);
    // An unknown descriptor type is skipped.
    let mut odd = data(0x30000, 60, TXD_CMD_EOP, 0);
    odd[10] |= 0xf0;
    r.put_tx(1, odd);
    r.w(TDT, 2);
    assert_eq!(r.r(TDH), 2);
    // Disabled transmitter or no bus mastering: nothing moves.
    r.w(TCTL, 0);
    r.w(TDT, 3);
    assert_eq!(r.r(TDH), 2);
}

#[test]
fn receives_into_the_ring() {
    let mut r = rig();
    r.w(IMS, ICR_RXT0);
    let mut f = tcp4_frame(b"to the guest", 0x18);
    // From the gateway to us.
    f.copy_within(0..6, 6);
    f[..6].copy_from_slice(&MAC);
    r.wire.lock().to_guest.push_back(f.clone());
    // Not enabled yet: poll drops.
    r.dev.poll(Instant::now());
    assert_eq!(r.dev.stats().rx_dropped, 1);
    r.rx_ring(8, 0);
    r.wire.lock().to_guest.push_back(f.clone());
    r.dev.poll(Instant::now());
    assert_eq!(r.wire.lock().to_guest.len(), 1, "no buffers: the frame waits");
    r.w(RDT, 2);
    assert!(r.wire.lock().to_guest.is_empty());
    let mut got = vec![0u8; f.len()];
    r.mem.read(0x100000, &mut got).unwrap();
    assert_eq!(got, f);
    let wb = r.mem.read_bytes::<8>(RX_RING + 8).unwrap();
    assert_eq!(usize::from(u16::from_le_bytes([wb[0], wb[1]])), f.len().max(60));
    assert_eq!(wb[4], RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IPCS | RXD_STAT_TCPCS);
    assert_eq!(r.r(RDH), 1);
    assert!(r.irq.level());
    assert_eq!(r.r(ICR) & ICR_RXT0, ICR_RXT0);
    // A 3000-byte frame spans two 2 KiB buffers; with FCS kept, 4 bytes more.
    r.w(RCTL, RCTL_EN | RCTL_BAM);
    r.w(RDT, 5);
    let big: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let mut big_frame = MAC.to_vec();
    big_frame.extend_from_slice(&big[6..]);
    r.wire.lock().to_guest.push_back(big_frame.clone());
    r.dev.poll(Instant::now());
    let wb1 = r.mem.read_bytes::<8>(RX_RING + 16 + 8).unwrap();
    let wb2 = r.mem.read_bytes::<8>(RX_RING + 32 + 8).unwrap();
    assert_eq!(u16::from_le_bytes([wb1[0], wb1[1]]), 2048);
    assert_eq!(wb1[4], RXD_STAT_DD);
    assert_eq!(u16::from_le_bytes([wb2[0], wb2[1]]), 3000 + 4 - 2048);
    assert_eq!(wb2[4] & (RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IXSM), RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IXSM);
    assert_eq!(r.r(RDH), 3);
    assert_eq!(r.dev.stats().rx_frames, 2);
    assert_eq!(r.r(GPRC), 2);
}

#[test]
fn receive_filter() {
    let mut r = rig();
    r.rx_ring(8, 7);
    r.w(RCTL, RCTL_EN | RCTL_SECRC);
    let mut frame = vec![0u8; 60];
    let mut offer = |r: &mut Rig, dst: [u8; 6]| {
        frame[..6].copy_from_slice(&dst);
        r.wire.lock().to_guest.push_back(frame.clone());
        let before = r.r(RDH);
        r.dev.poll(Instant::now());
        r.r(RDH) != before
    };
    assert!(offer(&mut r, MAC), "our address");
    assert!(!offer(&mut r, [0x52, 0x54, 0, 0, 0, 1]), "another unicast");
    assert!(!offer(&mut r, [0xff; 6]), "broadcast without BAM");
    let mcast = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    assert!(!offer(&mut r, mcast));
    // MTA hash (MO = 0: address bits 47:36).
    let hash = ((u32::from(mcast[5]) << 8 | u32::from(mcast[4])) >> 4) & 0xfff;
    r.w(MTA + 4 * (hash as usize >> 5), 1 << (hash & 31));
    assert!(offer(&mut r, mcast));
    r.w(RCTL, RCTL_EN | RCTL_SECRC | RCTL_BAM | RCTL_UPE);
    assert!(offer(&mut r, [0xff; 6]));
    assert!(offer(&mut r, [0x52, 0x54, 0, 0, 0, 1]));
    r.w(RCTL, RCTL_EN | RCTL_SECRC | RCTL_MPE);
    assert!(offer(&mut r, [0x01, 2, 3, 4, 5, 6]));
    // A group in an exact filter, as Linux places the first ones it joins
    // (IPv6's all-nodes group here), with no MTA bit and no MPE.
    r.w(RCTL, RCTL_EN | RCTL_SECRC);
    let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    assert!(!offer(&mut r, all_nodes));
    r.w(RA + 8, u32::from_le_bytes([0x33, 0x33, 0, 0]));
    r.w(RA + 12, u32::from(u16::from_le_bytes([0, 1])) | RAH_AV);
    assert!(offer(&mut r, all_nodes), "a multicast address in RAL/RAH[1]");
}

/// Random register writes and random bytes in the rings: nothing panics.
#[test]
fn random_rings_and_registers_never_panic() {
    let mut r = rig();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let regs = [
        CTRL,
        EECD,
        EERD,
        MDIC,
        ICR,
        ITR,
        ICS,
        IMS,
        IMC,
        RCTL,
        TCTL,
        RDBAL,
        RDLEN,
        RDH,
        RDT,
        TDBAL,
        TDLEN,
        TDH,
        TDT,
        RXCSUM,
        MTA,
        RA + 4,
    ];
    for round in 0..2000 {
        let mut junk = [0u8; 256];
        for b in junk.chunks_mut(8) {
            b.copy_from_slice(&rand().to_le_bytes());
        }
        let at = (rand() % (4 << 20)) & !0xff;
        let _ = r.mem.write(at, &junk);
        if round % 7 == 0 {
            r.wire.lock().to_guest.push_back(vec![0xff; (rand() % 2000) as usize]);
        }
        let reg = regs[(rand() % regs.len() as u64) as usize];
        let mut v = rand() as u32;
        if reg == CTRL {
            v &= !CTRL_RST;
        }
        if matches!(reg, RDBAL | TDBAL) {
            v %= 5 << 20;
        }
        r.w(reg, v);
        r.dev.bar_write(IO_BAR, rand() % 8, &(rand() as u32).to_le_bytes()[..(1 + rand() % 4) as usize]);
        let mut b = [0u8; 4];
        r.dev.bar_read(MMIO_BAR, rand() % MMIO_BAR_SIZE, &mut b[..(1 << (rand() % 3)) as usize]);
        r.dev.poll(Instant::now());
    }
}

/// The fuzzing entry point over pseudo-random inputs, some of them
/// mutations of a transmit and a receive.
#[test]
fn fuzz_entry_point_over_pseudo_random_inputs() {
    // Transmit: a legacy descriptor at TX ring slot 0 (op 4 at the ring),
    // then TDT = 1 (a hot register). Receive: a frame, then a poll.
    let tx: &[u8] =
        &[4, 0, 0x00, 0x30, 0, 0, 0, 0, 0, 0, 4, 1, 60, 0, 0, 0x0b, 0, 0, 0, 0, 0, 0x80, 0, 0, 1, 0, 0, 0, 2];
    let rx: &[u8] = &[5, 60, 0, 0xff, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 7, 5, 200, 5, 0xff, 7];
    let inputs = crate::fuzz::pseudo_random_inputs(0xe1000, 3000, 600, &[tx, rx]);
    let (sent, received) = (fuzz_rings(tx), fuzz_rings(rx));
    assert_eq!((sent.tx_frames, sent.rx_frames), (1, 0), "the transmit seed transmits");
    assert_eq!((received.tx_frames, received.rx_frames), (0, 1), "the receive seed receives");
    for input in &inputs {
        fuzz_rings(input);
    }
}

#[test]
fn hostile_receive_rings() {
    let mut r = rig();
    r.rx_ring(8, 0);
    r.w(RDT, 100);
    r.wire.lock().to_guest.push_back(vec![0xff; 60]);
    r.dev.poll(Instant::now());
    assert_eq!(r.wire.lock().to_guest.len(), 1, "RDT past the ring: nothing moves");
    // Buffers outside RAM: the descriptor completes, the data goes nowhere.
    r.mem.write_u64(RX_RING, 0xffff_0000).unwrap();
    r.w(RDT, 1);
    assert!(r.wire.lock().to_guest.is_empty());
    assert_eq!(r.r(RDH), 1);
    // A ring base outside RAM.
    r.w(RDBAL, 0xfff0_0000);
    r.w(RDH, 0);
    r.wire.lock().to_guest.push_back(vec![0xff; 60]);
    r.w(RDT, 2);
    // A frame no ring of this size can hold: dropped.
    r.w(RDBAL, RX_RING as u32);
    r.w(RDLEN, 128); // 8 descriptors of 256 bytes
    r.w(RCTL, RCTL_EN | RCTL_BAM | (3 << RCTL_BSIZE_SHIFT));
    r.w(RDH, 0);
    r.w(RDT, 7);
    r.wire.lock().to_guest.clear();
    r.wire.lock().to_guest.push_back(vec![0xff; 2100]);
    r.dev.poll(Instant::now());
    assert!(r.wire.lock().to_guest.is_empty());
    assert_eq!(r.r(MPC), 1);
    let s = r.dev.save();
    r.dev.restore(&s).unwrap();
    assert_eq!(r.dev.save(), s);
    assert!(r.dev.io_label().starts_with("e1000"));
}

/// A TCP frame whose checksums the device must fill in: the pseudo-header
/// sum in the TCP checksum, zero in the IP one.
fn partial_checksum_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = tcp4_frame(payload, 0x18);
    let pseudo = offload::checksum_add(0, &f[26..34]) + 6 + (f.len() - 34) as u64;
    f[50..52].copy_from_slice(&(!offload::checksum_finish(pseudo)).to_be_bytes());
    f[24..26].fill(0);
    f
}

#[test]
fn a_restored_e1000_finishes_the_packet_being_gathered() {
    let mut r = rig();
    r.tx_ring(16);
    r.w(IMS, ICR_TXDW);
    // A whole packet, which leaves TXDW pending, then a checksum context and
    // the first half of the next packet (no EOP): gathered, not sent.
    let whole = tcp4_frame(b"before", 0x18);
    r.mem.write(0x30000, &whole).unwrap();
    r.put_tx(0, legacy(0x30000, whole.len() as u16, TXD_CMD_EOP | TXD_CMD_RS));
    let f = partial_checksum_frame(b"gathered across a save and a restore");
    r.mem.write(0x40000, &f[..34]).unwrap();
    r.mem.write(0x41000, &f[34..]).unwrap();
    r.put_tx(1, context(14, 24, 33, 34, 50, TUCMD_TCP, 0, 0));
    r.put_tx(2, data(0x40000, 34, 0, POPTS_TXSM | POPTS_IXSM));
    r.w(TDT, 3);
    assert_eq!(r.wire.lock().sent, vec![whole]);
    assert!(r.irq.level());

    let mut other = rig_on(r.mem.clone(), [0x52, 0x54, 0, 0, 0, 0x99]);
    assert!(!other.irq.level());
    let s = persist::assert_round_trip(&r.dev, &mut other.dev);
    assert_eq!(s.packet.data, f[..34]);
    assert_eq!(s.packet.first, Some((false, POPTS_TXSM | POPTS_IXSM)));
    assert_eq!(s.ctx_csum.tucso, 50);
    assert!(other.irq.level(), "TXDW is pending and unmasked");
    assert_eq!(other.r(TDH), 3);
    // The EEPROM and receive address 0 carry the saved MAC.
    other.w(EERD, (2 << EERD_ADDR_SHIFT) | EERD_START);
    assert_eq!(other.r(EERD) >> EERD_DATA_SHIFT, 0x5634);
    assert_eq!(other.r(RA + 4) & 0xffff, 0x5634);
    // The guest posts the rest: the restored device sends the whole packet
    // with the checksums of the restored context.
    other.put_tx(3, data(0x41000, (f.len() - 34) as u32, TXD_CMD_EOP | TXD_CMD_RS, POPTS_TXSM | POPTS_IXSM));
    other.w(TDT, 4);
    let sent = other.wire.lock().sent.clone();
    assert_eq!(sent.len(), 1);
    assert!(checksums_ok(&sent[0]));
    assert_eq!(sent[0].len(), f.len());
    assert_eq!(sent[0][54..], f[54..]);
    assert_eq!(other.r(TDH), 4);
    assert_eq!(other.dev.stats().tx_frames, 2, "the counters went on");
    assert_eq!(r.wire.lock().sent.len(), 1, "the saved device sent nothing more");
}

#[test]
fn a_ring_index_past_its_ring_is_taken_as_the_guest_wrote_it() {
    let mut r = rig();
    r.tx_ring(8);
    r.put_tx(0, legacy(0x30000, 60, TXD_CMD_EOP));
    r.w(TDT, 9);
    assert_eq!(r.r(TDH), 0, "TDT past the ring: nothing moves");
    let mut other = rig_on(r.mem.clone(), MAC);
    persist::assert_round_trip(&r.dev, &mut other.dev);
    other.dev.poll(Instant::now());
    other.w(TCTL, TCTL_EN);
    assert_eq!(other.r(TDH), 0, "the restored engine refuses the ring too");
    other.w(TDT, 1);
    assert_eq!(other.r(TDH), 1, "until the guest writes a tail inside it");
    assert_eq!(other.wire.lock().sent.len(), 1);
}

#[test]
fn corrupt_e1000_states_are_refused() {
    let mut r = rig();
    r.tx_ring(8);
    r.rx_ring(8, 4);
    let good = r.dev.save();
    type Corrupt = fn(&mut E1000State);
    let cases: [(&str, Corrupt); 12] = [
        ("regs", |s| s.regs.truncate(NUM_REGS - 1)),
        ("regs[TDT]", |s| s.regs[TDT / 4] = 0x1_0000),
        ("regs[RDH]", |s| s.regs[RDH / 4] = u32::MAX),
        ("regs[TDLEN]", |s| s.regs[TDLEN / 4] = 0x10),
        ("regs[RDBAL]", |s| s.regs[RDBAL / 4] |= 4),
        ("regs[CTRL]", |s| s.regs[CTRL / 4] |= CTRL_RST),
        ("regs[ITR]", |s| s.regs[ITR / 4] = 0x1_0000),
        ("phy", |s| s.phy[2] = 0),
        ("eecd", |s| s.eecd.old = 1 << 12),
        ("io_addr", |s| s.io_addr = 2),
        ("io_addr", |s| s.io_addr = MMIO_BAR_SIZE as u32),
        ("packet", |s| s.packet.data = vec![0; MAX_TX_PACKET + 1]),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut r.dev, &bad);
        assert_eq!((e.part, e.field), ("e1000", field), "{e}");
    }
    // The configuration space is checked as a PCI function's: another
    // device's, or a BAR of another kind.
    type CorruptConfig = fn(&mut Vec<u8>);
    let configs: [CorruptConfig; 3] = [|b| b.truncate(64), |b| b[2] ^= 1, |b| b[0x14] ^= 1];
    for corrupt in configs {
        let mut bad = good.clone();
        corrupt(&mut bad.config.bytes);
        let e = persist::assert_refused(&mut r.dev, &bad);
        assert_eq!((e.part, e.field), ("PCI configuration space", "bytes"), "{e}");
    }
    let mut bad = good.clone();
    bad.regs[TDT / 4] = 0x1_0000;
    let e = persist::assert_refused(&mut r.dev, &bad);
    assert_eq!(e.problem, "is 0x10000, with bits outside 0xffff that the register never holds");
    // A packet of the largest length is taken.
    let mut full = good.clone();
    full.packet.data = vec![1; MAX_TX_PACKET];
    full.packet.overflow = true;
    r.dev.restore(&full).unwrap();
    assert_eq!(r.dev.save(), full);
}
