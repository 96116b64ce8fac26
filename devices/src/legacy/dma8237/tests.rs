//! Tests of the 8237 pair through its ports, as a driver programs it, and
//! of the transfers a device makes.

use super::*;
use crate::bus::Bus;

/// Guest RAM of the tests: 2 MiB.
const RAM: u64 = 2 << 20;

struct Rig {
    dma: Arc<Mutex<IsaDma>>,
    mem: Arc<GuestMemory>,
    bus: Bus,
}

impl Rig {
    fn new() -> Self {
        let mem = Arc::new(GuestMemory::new(RAM).unwrap());
        let dma = Arc::new(Mutex::new(IsaDma::new(mem.clone())));
        let mut bus = Bus::new();
        let mut mmio = Bus::new();
        for m in IsaDma::bus_mappings(&dma) {
            m.insert_into(&mut bus, &mut mmio).unwrap();
        }
        Self { dma, mem, bus }
    }

    fn outb(&self, port: u16, v: u8) {
        assert!(self.bus.write(u64::from(port), &[v]), "port {port:#x} unclaimed");
    }

    fn inb(&self, port: u16) -> u8 {
        let mut b = [0u8];
        self.bus.read(u64::from(port), &mut b);
        b[0]
    }

    /// Programs a byte channel (0-3) as a driver does: mask, flip-flop,
    /// address, count, mode, page, unmask.
    fn program8(&self, channel: u16, addr: u32, count: u16, mode: u8) {
        let addr_port = channel * 2;
        let page_port = [0x87, 0x83, 0x81, 0x82][usize::from(channel)];
        self.outb(0x0a, 0x04 | channel as u8);
        self.outb(0x0c, 0);
        self.outb(addr_port, addr as u8);
        self.outb(addr_port, (addr >> 8) as u8);
        self.outb(0x0c, 0);
        self.outb(addr_port + 1, count as u8);
        self.outb(addr_port + 1, (count >> 8) as u8);
        self.outb(0x0b, mode | channel as u8);
        self.outb(page_port, (addr >> 16) as u8);
        self.outb(0x0a, channel as u8);
    }

    /// Programs a word channel (5-7): `addr` is a byte address (even),
    /// `words` the count register.
    fn program16(&self, channel: u16, addr: u32, words: u16, mode: u8) {
        let local = channel - 4;
        let addr_port = 0xc0 + local * 4;
        let page_port = [0x8f, 0x8b, 0x89, 0x8a][usize::from(local)];
        self.outb(0xd4, 0x04 | local as u8);
        self.outb(0xd8, 0);
        let word = (addr >> 1) as u16;
        self.outb(addr_port, word as u8);
        self.outb(addr_port, (word >> 8) as u8);
        self.outb(addr_port + 2, words as u8);
        self.outb(addr_port + 2, (words >> 8) as u8);
        self.outb(0xd6, mode | local as u8);
        self.outb(page_port, (addr >> 16) as u8);
        self.outb(0xd4, local as u8);
    }

    fn read16(&self, port: u16) -> u16 {
        let lo = self.inb(port);
        let hi = self.inb(port);
        u16::from_le_bytes([lo, hi])
    }

    fn memory(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read(addr, &mut v).unwrap();
        v
    }
}

/// Single mode, increment, no auto-init, write (device to memory).
const MODE_WRITE: u8 = 0x44;
/// Single mode, increment, no auto-init, read (memory to device).
const MODE_READ: u8 = 0x48;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

#[test]
fn the_flip_flop_orders_address_and_count_bytes() {
    let rig = Rig::new();
    rig.outb(0x0c, 0);
    rig.outb(0x04, 0x34);
    rig.outb(0x04, 0x12);
    rig.outb(0x05, 0xff);
    rig.outb(0x05, 0x01);
    rig.outb(0x0c, 0);
    assert_eq!(rig.read16(0x04), 0x1234);
    assert_eq!(rig.read16(0x05), 0x01ff);
    // A stray access leaves the flip-flop on the high byte; clearing it
    // brings the low byte back.
    assert_eq!(rig.inb(0x04), 0x34);
    rig.outb(0x0c, 0);
    assert_eq!(rig.inb(0x04), 0x34);
    assert_eq!(rig.inb(0x04), 0x12);
    // The second controller: even ports, odd ports alias them.
    rig.outb(0xd8, 0);
    rig.outb(0xc4, 0x78);
    rig.outb(0xc5, 0x56);
    rig.outb(0xd9, 0);
    assert_eq!(rig.read16(0xc4), 0x5678);
    let s = rig.dma.lock().save();
    assert_eq!(s.controllers[1].channels[1].base_address, 0x5678);
    assert_eq!(s.controllers[0].channels[2].current_count, 0x01ff);
}

#[test]
fn page_registers_and_scratch_bytes_read_back() {
    let rig = Rig::new();
    for (port, v) in (0x81u16..=0x8f).zip(1u8..) {
        rig.outb(port, v);
    }
    for (port, v) in (0x81u16..=0x8f).zip(1u8..) {
        assert_eq!(rig.inb(port), v, "port {port:#x}");
    }
    assert!(rig.bus.device_at(0x80).is_none(), "0x80 is left to the POST code port");
    let pages = IsaDma::page_register_device(&rig.dma);
    pages.lock().write(0, &[0xaa]);
    let mut b = [0u8; 2];
    pages.lock().read(0, &mut b);
    assert_eq!(b, [0xaa, 0x01], "a word access reads two page registers");
    assert_eq!(pages.lock().debug_label(), "DMA page registers");
    assert_eq!(rig.dma.lock().save().pages[0], 0xaa);
}

#[test]
fn masks_single_all_and_clear() {
    let rig = Rig::new();
    assert_eq!(rig.inb(0x0f), 0x0f, "every channel masked at power-on");
    rig.outb(0x0a, 0x02);
    assert_eq!(rig.inb(0x0f), 0x0b);
    rig.outb(0x0a, 0x06);
    rig.outb(0x0e, 0);
    assert_eq!(rig.inb(0x0f), 0x00);
    rig.outb(0x0f, 0xf5);
    assert_eq!(rig.inb(0x0f), 0x05);
    rig.outb(0xdc, 0);
    assert_eq!(rig.inb(0xde), 0x00);
    rig.outb(0xd4, 0x07);
    assert_eq!(rig.inb(0xde), 0x08);
    // A masked channel does not move.
    rig.program8(1, 0x1000, 9, MODE_WRITE);
    rig.outb(0x0a, 0x05);
    assert!(!rig.dma.lock().channel_ready(1));
    assert_eq!(rig.dma.lock().write_to_memory(1, &[1; 10]), DmaTransfer::default());
    // The cascade channel and a disabled controller do not either.
    assert!(!rig.dma.lock().channel_ready(CASCADE_CHANNEL));
    assert!(!rig.dma.lock().channel_ready(9));
    rig.outb(0x0a, 0x01);
    rig.outb(0x08, 0x04);
    assert_eq!(rig.dma.lock().write_to_memory(1, &[1; 10]).bytes, 0);
    rig.outb(0x08, 0x00);
    assert_eq!(rig.dma.lock().write_to_memory(1, &[1; 10]).bytes, 10);
}

#[test]
fn a_transfer_to_memory_reports_terminal_count_in_status() {
    let rig = Rig::new();
    rig.program8(2, 0x12_3400, 511, MODE_WRITE);
    let data = pattern(1024, 3);
    let t = rig.dma.lock().write_to_memory(2, &data[..300]);
    assert_eq!(t, DmaTransfer { bytes: 300, terminal_count: false });
    assert_eq!(rig.read16(0x04), 0x3400 + 300);
    assert_eq!(rig.read16(0x05), 511 - 300);
    let t = rig.dma.lock().write_to_memory(2, &data[300..]);
    assert_eq!(t, DmaTransfer { bytes: 212, terminal_count: true });
    assert_eq!(rig.memory(0x12_3400, 512), data[..512]);
    assert_eq!(rig.memory(0x12_3400 + 512, 4), [0; 4], "nothing past the count");
    assert_eq!(rig.read16(0x05), 0xffff, "the count rolls over at terminal count");
    let status = rig.inb(0x08);
    assert_eq!(status & 0x0f, 0x04, "channel 2 reached TC");
    assert_eq!(rig.inb(0x08) & 0x0f, 0, "reading the status clears TC");
    assert_eq!(rig.inb(0x0f) & 0x04, 0x04, "without auto-init the channel masks itself");
    assert_eq!(rig.dma.lock().write_to_memory(2, &data).bytes, 0);
}

#[test]
fn auto_init_reloads_the_base_registers() {
    let rig = Rig::new();
    rig.program8(3, 0x2000, 99, MODE_WRITE | 0x10);
    let t = rig.dma.lock().write_to_memory(3, &pattern(150, 1));
    assert_eq!(t, DmaTransfer { bytes: 100, terminal_count: true });
    assert_eq!(rig.read16(0x06), 0x2000);
    assert_eq!(rig.read16(0x07), 99);
    assert_eq!(rig.inb(0x0f) & 0x08, 0, "auto-init keeps the channel unmasked");
    let t = rig.dma.lock().write_to_memory(3, &pattern(50, 9));
    assert_eq!(t.bytes, 50);
    assert_eq!(rig.memory(0x2000, 50), pattern(50, 9));
}

#[test]
fn a_transfer_from_memory_and_decrement_mode() {
    let rig = Rig::new();
    let data = pattern(64, 5);
    rig.mem.write(0x3000, &data).unwrap();
    rig.program8(1, 0x3000, 63, MODE_READ);
    let mut buf = [0u8; 64];
    assert_eq!(rig.dma.lock().read_from_memory(1, &mut buf).bytes, 64);
    assert_eq!(buf[..], data[..]);
    // Decrement: the device sees the bytes from the top down.
    rig.program8(1, 0x303f, 63, MODE_READ | 0x20);
    let mut buf = [0u8; 64];
    assert_eq!(rig.dma.lock().read_from_memory(1, &mut buf).bytes, 64);
    let reversed: Vec<u8> = data.iter().rev().copied().collect();
    assert_eq!(buf[..], reversed[..]);
    rig.program8(1, 0x403f, 63, MODE_WRITE | 0x20);
    assert_eq!(rig.dma.lock().write_to_memory(1, &data).bytes, 64);
    assert_eq!(rig.memory(0x4000, 64), reversed);
}

#[test]
fn the_address_wraps_inside_its_64k_page() {
    let rig = Rig::new();
    rig.program8(2, 0x1_fff0, 0x1f, MODE_WRITE);
    let data = pattern(32, 7);
    assert_eq!(rig.dma.lock().write_to_memory(2, &data).bytes, 32);
    assert_eq!(rig.memory(0x1_fff0, 16), data[..16]);
    assert_eq!(rig.memory(0x1_0000, 16), data[16..], "the page register does not count");
    assert_eq!(rig.memory(0x2_0000, 16), [0; 16]);
    // Decrementing through zero wraps to the top of the page.
    rig.program8(2, 0x5_0003, 7, MODE_WRITE | 0x20);
    assert_eq!(rig.dma.lock().write_to_memory(2, &data[..8]).bytes, 8);
    assert_eq!(rig.memory(0x5_0000, 4), [data[3], data[2], data[1], data[0]]);
    assert_eq!(rig.memory(0x5_fffc, 4), [data[7], data[6], data[5], data[4]]);
}

#[test]
fn word_channels_count_words_and_wrap_at_128k() {
    let rig = Rig::new();
    rig.program16(5, 0x1_fffc, 3, MODE_WRITE);
    let data = pattern(9, 11);
    let t = rig.dma.lock().write_to_memory(5, &data);
    assert_eq!(t, DmaTransfer { bytes: 8, terminal_count: true }, "whole words, four of them");
    assert_eq!(rig.memory(0x1_fffc, 4), data[..4]);
    assert_eq!(rig.memory(0x0_0000, 4), data[4..8], "a word channel's page is 128 KiB");
    assert_eq!(rig.inb(0xd0) & 0x0f, 0x02, "channel 5 is bit 1 of the second status");
    // Page register bit 0 is not an address bit on a word channel.
    rig.program16(6, 0x2_1000, 1, MODE_WRITE);
    rig.outb(0x89, 0x03);
    rig.dma.lock().write_to_memory(6, &[1, 2, 3, 4]);
    assert_eq!(rig.memory(0x2_1000, 4), [1, 2, 3, 4]);
    // A one-byte buffer moves no word.
    rig.program16(7, 0x4000, 0, MODE_WRITE);
    assert_eq!(rig.dma.lock().write_to_memory(7, &[9]).bytes, 0);
}

#[test]
fn verify_and_mismatched_transfers_leave_memory_alone() {
    let rig = Rig::new();
    rig.program8(2, 0x6000, 15, 0x40);
    assert_eq!(rig.dma.lock().write_to_memory(2, &[0xee; 16]).bytes, 16);
    assert_eq!(rig.memory(0x6000, 16), [0; 16]);
    rig.program8(2, 0x6000, 15, MODE_READ);
    let t = rig.dma.lock().write_to_memory(2, &[0xee; 16]);
    assert!(t.terminal_count);
    assert_eq!(rig.memory(0x6000, 16), [0; 16]);
    rig.mem.write(0x6000, &[7; 16]).unwrap();
    rig.program8(2, 0x6000, 15, MODE_WRITE);
    let mut buf = [0u8; 16];
    rig.dma.lock().read_from_memory(2, &mut buf);
    assert_eq!(buf, [0xff; 16], "the device reads a floating bus");
}

#[test]
fn a_transfer_outside_ram_is_dropped_without_harm() {
    let rig = Rig::new();
    // Page 0x1f ends at the last byte of RAM: half the buffer fits.
    rig.program8(2, 0x1f_fc00, 0x07ff, MODE_WRITE);
    let data = pattern(0x800, 2);
    let t = rig.dma.lock().write_to_memory(2, &data);
    assert_eq!(t, DmaTransfer { bytes: 0x800, terminal_count: true }, "the bus cycles happen");
    assert_eq!(rig.memory(0x1f_fc00, 0x400), data[..0x400]);
    // Wholly outside RAM (16 MiB range): nothing written, no panic.
    rig.program8(2, 0xff_0000, 0xffff, MODE_WRITE);
    let t = rig.dma.lock().write_to_memory(2, &pattern(0x1_0000, 1));
    assert!(t.terminal_count);
    let mut buf = vec![0u8; 0x100];
    rig.program8(2, 0xff_ff00, 0xff, MODE_READ);
    rig.dma.lock().read_from_memory(2, &mut buf);
    assert!(buf.iter().all(|&b| b == 0xff), "reads past RAM float high");
    // Word channel at the top of its 16 MiB reach.
    rig.program16(7, 0xfe_0000, 0xffff, MODE_WRITE);
    assert_eq!(rig.dma.lock().write_to_memory(7, &vec![3u8; 0x2_0000]).bytes, 0x2_0000);
}

#[test]
fn software_requests_show_in_status_and_master_clear_resets() {
    let rig = Rig::new();
    rig.outb(0x09, 0x05);
    rig.outb(0x09, 0x07);
    assert_eq!(rig.inb(0x08) & 0xf0, 0xa0);
    rig.outb(0x09, 0x01);
    assert_eq!(rig.inb(0x08) & 0xf0, 0x80);
    rig.outb(0x0e, 0);
    rig.outb(0x08, 0x04);
    rig.outb(0x0c, 0);
    rig.inb(0x00);
    rig.outb(0x0d, 0);
    let s = rig.dma.lock().save().controllers[0];
    assert_eq!((s.command, s.request, s.mask, s.flip_flop, s.status), (0, 0, 0x0f, false, 0));
    assert_eq!(rig.inb(0x0d), 0, "the temporary register");
    assert_eq!(rig.inb(0x09), 0xff, "write-only registers float");
    // A system reset is a master clear of both; the page registers stay.
    rig.outb(0x81, 0x42);
    rig.outb(0xdc, 0);
    rig.dma.lock().reset();
    assert_eq!(rig.inb(0xde), 0x0f);
    assert_eq!(rig.inb(0x81), 0x42);
    assert_eq!(rig.dma.lock().read_port(0x1234), 0xff);
    rig.dma.lock().write_port(0x1234, 0);
}

#[test]
fn mem_to_mem_is_logged_not_run() {
    let rig = Rig::new();
    rig.outb(0x08, 0x01);
    rig.outb(0x08, 0x01);
    assert_eq!(rig.dma.lock().save().controllers[0].command, 0x01);
}

#[test]
fn the_state_round_trips_and_corrupt_states_are_refused() {
    let rig = Rig::new();
    rig.program8(2, 0x12_3456, 0x1ff, MODE_WRITE | 0x10);
    rig.program16(6, 0x4_0000, 0x100, MODE_READ);
    rig.outb(0x09, 0x06);
    rig.outb(0x0c, 0);
    rig.inb(0x04);
    rig.dma.lock().write_to_memory(2, &[1; 16]);
    let mem = Arc::new(GuestMemory::new(RAM).unwrap());
    let mut fresh = IsaDma::new(mem);
    let state = persist::assert_round_trip(&*rig.dma.lock(), &mut fresh);
    assert!(state.controllers[0].flip_flop);
    assert_eq!(fresh.read_port(0x04), 0x34, "the restored flip-flop points at the high byte");
    assert_eq!(state.pages[1], 0x12);
    type Corrupt = fn(&mut IsaDmaState);
    let cases: [(&str, Corrupt); 4] = [
        ("status", |s| s.controllers[0].status = 0x10),
        ("request", |s| s.controllers[1].request = 0x20),
        ("mask", |s| s.controllers[0].mask = 0xff),
        ("mode", |s| s.controllers[1].channels[3].mode = 0x45),
    ];
    for (field, corrupt) in cases {
        let mut bad = state;
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut fresh, &bad);
        assert_eq!((e.part, e.field), ("8237 DMA", field), "{e}");
    }
    assert!(format!("{fresh:?}").contains("IsaDma"));
}

#[test]
fn the_fuzz_entry_point_survives_pseudo_random_inputs() {
    // Clear the masks, program channel 2 (0x1000, 512 bytes, write), move them.
    let seed: &[u8] = &[
        0, 0x38, 0, 0, 0x30, 0, 0, 0x10, 0x00, 0, 0x10, 0x10, 0, 0x14, 0xff, 0, 0x14, 0x01, 0, 0x2c, 0x46, 0, 0x07,
        0x00, 0x43, 2, 0, 0x00, 0x02,
    ];
    for input in crate::fuzz::pseudo_random_inputs(0xd237, 3000, 512, &[seed]) {
        fuzz_dma_programming(&input);
    }
    assert!(fuzz_dma_programming(seed) > 0, "the seed moves bytes");
}
