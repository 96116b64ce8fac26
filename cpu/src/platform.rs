//! The one I/O interface of the CPU: [`Platform`], and why a run stops.
//!
//! Every execution engine (the interpreter here, KVM, split execution, a
//! JIT) reaches the machine's devices through [`Platform`] alone: port I/O,
//! MMIO, external interrupts, the MSRs the platform owns (the local APIC's
//! x2APIC range, the TSC deadline) and the time-stamp counter.

use crate::cpu::Cpu;

/// What the CPU calls for everything outside RAM: port I/O, MMIO, the
/// interrupt controller and the platform's MSRs. The machine implements it
/// over its device buses, once, and every engine calls the same
/// implementation: the interpreter for each I/O instruction and MMIO
/// access, KVM and split execution for their exits, a JIT from its helpers.
pub trait Platform {
    fn io_read(&mut self, port: u16, size: u8) -> u32;
    fn io_write(&mut self, port: u16, size: u8, value: u32);
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]);
    /// Whether an external interrupt is waiting (INTR asserted).
    fn interrupt_pending(&mut self) -> bool {
        false
    }
    /// Acknowledge the pending external interrupt and return its vector.
    fn ack_interrupt(&mut self) -> Option<u8> {
        None
    }
    /// RDMSR of an MSR the platform owns (x2APIC, TSC deadline); `None` if not its.
    fn msr_read(&mut self, _msr: u32) -> Option<u64> {
        None
    }
    /// WRMSR of an MSR the platform owns; `false` if not its.
    fn msr_write(&mut self, _msr: u32, _value: u64) -> bool {
        false
    }
    /// The platform's time-stamp counter, if it keeps one (before the guest's
    /// TSC offset is applied).
    fn tsc(&mut self) -> Option<u64> {
        None
    }
    /// Moves the platform's time-stamp counter by `delta` (two's complement),
    /// for a WRMSR to the TSC or IA32_TSC_ADJUST; `false` if it keeps none
    /// (the CPU then keeps the offset itself).
    fn shift_tsc(&mut self, _delta: u64) -> bool {
        false
    }
    /// CR8 as the platform's local APIC holds it (the high nibble of its
    /// task priority), when it has one: MOV from CR8 reads it, since the
    /// guest may have set the priority through the APIC's registers.
    fn cr8(&mut self) -> Option<u64> {
        None
    }
    /// A MOV to CR8 (0 to 15), for the platform's local APIC, whose task
    /// priority it sets; `false` when it has none.
    fn set_cr8(&mut self, _value: u64) -> bool {
        false
    }
    /// Checked after every I/O access and between blocks: leave the run loop.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// A platform with no devices: port and MMIO reads give all ones, writes
/// are dropped, no interrupt ever comes. For CPUs that run without a
/// machine around them (unit tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDevices;

impl Platform for NoDevices {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        u32::MAX
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {}
}

/// Why [`Cpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The instruction budget ran out.
    Budget,
    /// HLT: the CPU waits for an interrupt.
    Halted,
    /// The platform asked to stop (an exit request, a device event).
    Requested,
    /// A triple fault: the processor shut down. The string names the fault chain.
    Shutdown(String),
    /// The CPU is at CPL 3 and its hooks asked to yield
    /// ([`ExecHooks::before_user_block`](crate::ExecHooks::before_user_block)).
    UserMode,
    /// The block at RIP is hot, or another tier runs it: its count of runs
    /// ([`Block::heat`](crate::Block::heat)) reached 0. Nothing of it ran;
    /// events and interrupts at this boundary were taken.
    Hot,
    /// A debugger's stop ([`DebugStops`](crate::DebugStops)): RIP is at a
    /// breakpoint (not run yet), or one instruction was stepped.
    Debug,
}

// The interpreter's calls into the platform.
impl Cpu {
    pub(crate) fn platform_mmio_read(&mut self, phys: u64, data: &mut [u8]) {
        self.platform.mmio_read(phys, data);
    }

    pub(crate) fn platform_mmio_write(&mut self, phys: u64, data: &[u8]) {
        self.platform.mmio_write(phys, data);
        if self.platform.stop_requested() {
            self.stop = true;
            self.block_break = true;
        }
    }

    pub(crate) fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.platform.io_read(port, size)
    }

    pub(crate) fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.platform.io_write(port, size, value);
        if self.platform.stop_requested() {
            self.stop = true;
            self.block_break = true;
        }
    }
}
