//! CPU engines: what runs the guest's instructions.
//!
//! The machine ([`crate::machine`]) owns one run loop for
//! every engine, as QEMU's `AccelOpsClass` and Firecracker's vCPU serve
//! theirs. An [`Engine`] runs the guest for a [`Slice`] and says why it
//! stopped ([`Exit`]); everything else is the machine's: console input,
//! machine events, timers, HLT idling, the `--timeout` deadline, triple
//! faults, NMIs from the interrupt controller, pausing, and one reset path.
//!
//! Every engine reaches the devices through the machine's one I/O
//! interface, [`MachineIo`] (an implementation of [`cpu::Platform`]): the
//! interpreter calls it for port I/O, MMIO, interrupts and the platform's
//! MSRs, and KVM's exits are served through the same object.
//!
//! The engines:
//! - [`interp::InterpEngine`]: the interpreter (`--accel interp`);
//! - [`jit::JitEngine`]: the interpreter for cold code and Cranelift-compiled
//!   regions for hot code (`--accel jit`);
//! - [`kvm::KvmEngine`]: the guest in KVM, with the interpreter running
//!   the instructions KVM cannot (`--accel kvm`);
//! - [`split::SplitEngine`]: the kernel in the JIT (its interpreter for cold
//!   code) and user code in KVM, where KVM runs ring 0 in software
//!   (`--accel kvm` on kvm_pvm).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cpu::CpuState;
use devices::clock::{SharedClock, Tsc};
use devices::{InterruptController, Timers};
use mmu::GuestMemory;

use crate::config::{Firmware, MachineConfig};
use crate::device_manager::DeviceManager;
use crate::error::Error;

pub mod alarm;
pub mod interp;
pub(crate) mod io;
pub mod jit;
#[cfg(target_os = "linux")]
pub mod kernel_code;
#[cfg(target_os = "linux")]
pub mod kvm;
#[cfg(target_os = "linux")]
pub mod kvm_chips;
#[cfg(target_os = "linux")]
pub mod split;
#[cfg(target_os = "linux")]
pub mod split_policy;

pub use io::MachineIo;

/// What an engine is built from: the parts of the machine it uses, named,
/// so that no engine reaches for the machine itself.
///
/// One context per vCPU: they differ in `index` (the vCPU's; KVM's vCPU
/// ID), in `boot_state` (the bootstrap processor's, or the reset state an
/// application processor keeps until its start-up IPI) and in `io`, whose
/// interrupt-controller calls name the vCPU.
pub struct EngineContext<'m> {
    /// The vCPU's index: 0 is the bootstrap processor.
    pub index: u32,
    /// Guest memory, shared by every vCPU.
    pub mem: Arc<GuestMemory>,
    /// The machine's I/O interface; each use takes a clone.
    pub io: MachineIo,
    /// The state the vCPU starts in.
    pub boot_state: CpuState,
    /// The machine's configuration (CPU model, split mode, PIT placement).
    pub config: &'m MachineConfig,
    /// Physical ranges of a directly booted kernel's code, when known.
    pub kernel_code: &'m [(u64, u64)],
    /// The machine's interrupt controllers, which KVM's in-kernel ones
    /// replace when it has them.
    pub intc: Arc<InterruptController>,
    /// The time-stamp counter the devices and the interpreter read.
    pub tsc: Arc<Tsc>,
    /// The machine's clock.
    pub clock: SharedClock,
    /// The timer devices, for engines that must stop when a device write
    /// brings a deadline forward.
    pub timers: Timers,
    /// The machine's PIT, which KVM's in-kernel one replaces when it has it.
    pub pit: Arc<parking_lot::Mutex<devices::legacy::pit::Pit>>,
    /// The PCI devices with doorbells an engine may attach to (KVM's
    /// ioeventfds), when there are any.
    pub devices: Option<&'m DeviceManager>,
    /// What the machine's JITs share, made by the first JIT to start.
    pub jit_shared: &'m std::sync::OnceLock<Arc<::jit::shared::Shared>>,
}

impl EngineContext<'_> {
    /// Whether the kernel's code is to be found in the guest: the guest
    /// boots through a BIOS image, or its RAM comes from saved state.
    pub fn kernel_in_guest(&self) -> bool {
        match &self.config.firmware {
            Firmware::Bios(_) => true,
            Firmware::Kernel(k) => !k.load,
            Firmware::Builtin => false,
        }
    }

    /// The I/O interface for an engine that runs the guest until something
    /// stops it: device writes that bring a timer deadline before the
    /// slice's end stop it too.
    pub(crate) fn io_watching_timers(&self) -> (MachineIo, Arc<io::DeadlineWatch>) {
        let watch = Arc::new(io::DeadlineWatch::new(self.timers.clone(), self.clock.clone()));
        (MachineIo { watch: Some(watch.clone()), ..self.io.clone() }, watch)
    }
}

/// An instant as nanoseconds of `clock`.
pub fn clock_ns_at(clock: &SharedClock, at: Instant) -> u64 {
    let now = Instant::now();
    let ns = clock.now_ns();
    if at >= now {
        ns.saturating_add(u64::try_from((at - now).as_nanos()).unwrap_or(u64::MAX))
    } else {
        ns.saturating_sub(u64::try_from((now - at).as_nanos()).unwrap_or(u64::MAX))
    }
}

/// How long one [`Engine::run`] may go before the machine looks at its
/// timers, devices and events again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// Guest instructions, for engines that count them (the interpreter).
    pub instructions: u64,
    /// The next timer deadline or the `--timeout` deadline, whichever comes
    /// first; engines that do not count instructions (KVM) are kicked out
    /// at this instant.
    pub until: Option<Instant>,
}

/// Why [`Engine::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The slice ran out, or the engine has something for the machine to
    /// look at (an I/O access filed an event, a kick): go on.
    Budget,
    /// The guest executed HLT and waits for an interrupt the machine must
    /// bring (the machine idles until a timer, an interrupt or input).
    Halted,
    /// A triple fault: the processor shut down; the string names the chain.
    Shutdown(String),
    /// A debugger's stop ([`Engine::set_debug`]): the vCPU is at a
    /// breakpoint, or stepped one instruction.
    Debug,
}

/// Makes a running [`Engine::run`] return soon, from any thread.
pub type Kicker = Arc<dyn Fn() + Send + Sync>;

/// What an engine reports at the end of a run, for `--stats` and benches.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Guest instructions executed, where the engine counts them.
    pub instructions: Option<u64>,
    /// One line per measure.
    pub lines: Vec<String>,
}

/// One way of running the guest CPU.
///
/// The machine calls these on its own thread only; other threads reach a
/// running engine through its [`Engine::kicker`].
pub trait Engine {
    /// The engine's name in reports ("interp", "kvm").
    fn name(&self) -> &'static str;

    /// Run the guest until the slice is used up or the machine is needed.
    /// An `Err` is an engine failure (the host refused something), not a
    /// guest fault: guest faults are the guest's business, and a triple
    /// fault is [`Exit::Shutdown`].
    fn run(&mut self, slice: &Slice) -> Result<Exit, Error>;

    /// A handle that makes a running [`Engine::run`] return soon. `None`:
    /// the engine polls [`cpu::Platform::stop_requested`] often enough
    /// itself (after every I/O access and block).
    fn kicker(&self) -> Option<Kicker>;

    /// Whether a line raised on the machine's own interrupt controller
    /// must kick a running [`Engine::run`] (the engine delivers those
    /// interrupts itself, between stints of the guest elsewhere) rather
    /// than reaching the guest by itself.
    fn kicks_for_interrupts(&self) -> bool;

    /// Bring the CPU and what the engine keeps of the platform (interrupt
    /// controllers in KVM) to their reset state, with `state` loaded.
    fn reset(&mut self, state: &CpuState) -> Result<(), Error>;

    /// The whole guest-visible CPU state, while the engine is not running.
    fn state(&mut self) -> Result<CpuState, Error>;

    /// Replace the whole guest-visible CPU state, while the engine is not
    /// running.
    fn set_state(&mut self, state: &CpuState) -> Result<(), Error>;

    /// Raise a non-maskable interrupt for the guest.
    fn inject_nmi(&mut self) -> Result<(), Error>;

    /// The run stopped for work on the whole machine: moves the interrupt
    /// controllers' state that only the engine holds (KVM's in-kernel local
    /// APIC; with vCPU 0, also the PIC pair, the I/O APIC and the PIT) into
    /// the machine's models, which saved states carry and the next engines
    /// take ([`crate::engine::kvm_chips`]). Engines that use the machine's
    /// own controllers have nothing to move.
    fn save_chips(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// A new engine goes on from `state`, with the controllers' state the
    /// machine's models hold ([`Engine::set_state`], then
    /// [`Engine::load_chips`]).
    fn start_from(&mut self, state: &CpuState) -> Result<(), Error> {
        self.set_state(state)?;
        self.load_chips()
    }

    /// The engine goes on from a state ([`Engine::set_state`] done): moves
    /// the machine's models of the controllers the engine keeps itself into
    /// it, the reverse of [`Engine::save_chips`].
    fn load_chips(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Arm (with `None`, disarm) a debugger's breakpoints and single step
    /// ([`crate::gdb`]), after the state is set: the run then returns
    /// [`Exit::Debug`] at them. Engines that cannot stop there refuse.
    fn set_debug(&mut self, _stops: Option<cpu::DebugStops>) -> Result<(), Error> {
        Err(Error::Config(format!("the {} engine cannot stop for a debugger", self.name())))
    }

    /// After [`Exit::Debug`]: the watchpoint the vCPU's last instruction
    /// hit, if that was why it stopped.
    fn take_watch_hit(&mut self) -> Option<cpu::WatchHit> {
        None
    }

    /// How the engine's interpreter runs an instruction with every other
    /// vCPU stopped (a locked access the host cannot make one atomic),
    /// when vCPUs run on several threads.
    fn set_exclusive(&mut self, _run: cpu::ExclusiveFn) {}

    /// Counters and timings for `--stats`; `total` is the run's wall time.
    fn stats(&mut self, total: Duration) -> EngineStats;

    /// Takes the changes other threads queued on guest memory for this
    /// vCPU (code pages written, a write sync of dirty logging) while it
    /// does not run: a halted or paused vCPU answers a live migration's
    /// rounds, this one and (its translated stores' entries dropped) the
    /// next ones until it runs again. Engines without a soft TLB have
    /// nothing to do.
    fn sync_memory(&mut self) {}

    /// [`Engine::sync_memory`] for a vCPU stopped until a resume: it also
    /// answers the rounds of a logging that begins while it stands.
    fn park_memory(&mut self) {
        self.sync_memory();
    }
}
