//! Interpreter throughput on a fixed guest: the built-in guest's ring-3
//! checksum workload (about 7.4 million guest instructions), booted from the
//! reset vector. Criterion reports guest instructions per second.

use std::sync::Arc;

use cpu::{Cpu, Platform, StopReason};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mmu::GuestMemory;

/// Serial output is dropped (LSR always reports an empty transmitter);
/// a write to the debug-exit port stops the CPU.
struct BenchPlatform {
    exited: bool,
}

impl Platform for BenchPlatform {
    fn io_read(&mut self, port: u16, _size: u8) -> u32 {
        if port == 0x3fd {
            0x60
        } else {
            0xff
        }
    }
    fn io_write(&mut self, port: u16, _size: u8, _value: u32) {
        if port == firmware::builtin::DEBUG_EXIT_PORT {
            self.exited = true;
        }
    }
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {}
    fn stop_requested(&self) -> bool {
        self.exited
    }
}

fn boot(mem: &Arc<GuestMemory>) -> u64 {
    let mut cpu = Cpu::new(mem.clone(), Box::new(BenchPlatform { exited: false }));
    loop {
        match cpu.run(10_000_000) {
            StopReason::Requested => return cpu.stats.instructions,
            StopReason::Budget => {}
            other => panic!("built-in guest stopped: {other:?}"),
        }
    }
}

fn interp(c: &mut Criterion) {
    let guest = firmware::builtin::build().expect("built-in guest assembles");
    let mut mem = GuestMemory::new(64 << 20).unwrap();
    mem.add_rom("builtin", firmware::builtin::ROM_BASE, firmware::builtin::ROM_SIZE, &guest.rom).unwrap();
    let mem = Arc::new(mem);
    let instructions = boot(&mem);
    let mut g = c.benchmark_group("interpreter");
    g.throughput(Throughput::Elements(instructions));
    g.sample_size(10);
    g.bench_function("builtin-guest", |b| b.iter(|| boot(&mem)));
    g.finish();
}

criterion_group!(benches, interp);
criterion_main!(benches);
