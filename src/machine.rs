//! Machine assembly and the run loop.
//!
//! A [`Machine`] owns guest memory, the port-I/O and MMIO buses with their
//! devices, the machine-event channel and the serial console. The CPU engine
//! (the interpreter today) runs against it through the [`cpu::Platform`]
//! trait, so devices never know which engine drives them.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cpu::{Cpu, CpuState, Platform, StopReason};
use devices::console::SerialBackend;
use devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN};
use devices::serial::{Serial, COM1_PORT, SERIAL_PORT_LEN};
use devices::{Bus, SharedDevice, VmEvent, VmEvents};
use mmu::GuestMemory;
use parking_lot::Mutex;

use crate::error::Error;

/// Instructions the interpreter runs between looks at timers, devices and
/// events: short enough that a 4 ms timer period is never skipped.
const SLICE: u64 = 20_000;

#[cfg(target_os = "linux")]
#[path = "split.rs"]
pub mod split;
#[path = "engine/split_policy.rs"]
pub mod split_policy;

/// Whether `--accel kvm` splits execution ([`split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitMode {
    /// Where KVM runs CPL 0 in software and the kernel's code is known.
    #[default]
    Auto,
    /// Always (fails without a known kernel).
    On,
    /// Never: all of the guest runs in KVM.
    Off,
}

/// What the guest boots.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// The built-in guest ROM.
    Builtin,
    /// A raw firmware image mapped to end at 4 GiB.
    Bios(Vec<u8>),
    /// A kernel booted directly: Linux (bzImage or vmlinux) or multiboot.
    Kernel(KernelImage),
}

/// A kernel for direct boot.
#[derive(Debug, Clone)]
pub struct KernelImage {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
    /// For a bzImage: decompress on the host (fast) or in the guest (classic).
    pub path: firmware::linux::BootPath,
}

/// Where the ACPI tables and the MP table go (the BIOS area, ordinary RAM here).
const ACPI_TABLES: u64 = 0xe_0000;
const MP_TABLE: u64 = 0xf_0000;

/// Where serial output goes.
#[derive(Clone)]
pub enum SerialOut {
    /// A host backend (stdio, a file, nowhere).
    Backend(SerialBackend),
    /// Kept in memory (the demo and tests read it).
    Capture(Arc<Mutex<Vec<u8>>>),
}

/// Everything that shapes a machine.
#[derive(Clone)]
pub struct MachineConfig {
    pub mem: u64,
    pub firmware: Firmware,
    pub serial: SerialOut,
    pub no_reboot: bool,
    pub timeout: Option<Duration>,
    /// Under KVM, whether to run the kernel in the interpreter (see [`split`]).
    pub kvm_split: SplitMode,
}

/// How a run ended, with its measurements.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The process exit status this run maps to.
    pub status: i32,
    /// A message for stderr (a timeout, a fault chain), if any.
    pub message: Option<String>,
    /// Guest instructions executed, where the engine counts them.
    pub instructions: Option<u64>,
    /// Time from start to the first byte the guest sent to the serial port.
    pub first_serial_byte: Option<Duration>,
    /// Time from start to the end of the run.
    pub total: Duration,
    /// Port accesses no device claimed.
    pub unclaimed_io: u64,
    /// Which engine ran the guest.
    pub accel: &'static str,
    /// Engine-specific statistics lines for `--stats`.
    pub stats: Vec<String>,
}

/// A serial sink that notes when the first byte arrives.
struct TimedWriter {
    inner: Box<dyn Write + Send>,
    first: Arc<OnceLock<Instant>>,
}

impl Write for TimedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            let _ = self.first.set(Instant::now());
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The PC.
pub struct Machine {
    pub mem: Arc<GuestMemory>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    pub events: Arc<VmEvents>,
    chipset: devices::pc::PcChipset,
    clock: devices::clock::SharedClock,
    /// The CPU state the loaded firmware or kernel starts in.
    boot_state: CpuState,
    /// What the loader did, for diagnostics.
    pub boot_note: Option<String>,
    serial: Arc<Mutex<Serial>>,
    first_byte: Arc<OnceLock<Instant>>,
    /// Time the CPU spent halted, waiting for work, and how many waits.
    halted: Mutex<(Duration, u64)>,
    /// Bytes typed for the guest that the UART has not taken yet.
    input: Arc<Mutex<VecDeque<u8>>>,
    config: MachineConfig,
    /// The network cards and their I/O thread.
    nics: Option<crate::nic::Nics>,
    /// Physical ranges of the directly booted kernel's code, when known.
    kernel_code: Vec<(u64, u64)>,
}

impl Machine {
    pub fn new(config: MachineConfig) -> Result<Self, Error> {
        Self::with_nics(config, &[])
    }

    /// A machine with the network cards of `nics` (`--nic`) in PCI slots 3, 4, ...
    pub fn with_nics(mut config: MachineConfig, nics: &[net::NicSpec]) -> Result<Self, Error> {
        let mut mem = GuestMemory::new(config.mem)?;
        match &config.firmware {
            Firmware::Builtin => {
                if config.mem < firmware::builtin::MIN_RAM {
                    return Err(Error::Config(format!(
                        "the built-in guest needs at least {} MiB of RAM (--mem)",
                        firmware::builtin::MIN_RAM >> 20
                    )));
                }
                let g = firmware::builtin::build().map_err(|e| Error::Firmware(e.to_string()))?;
                mem.add_rom("builtin-rom", firmware::builtin::ROM_BASE, firmware::builtin::ROM_SIZE, &g.rom)?;
            }
            Firmware::Bios(image) => {
                let size = image.len() as u64;
                if size == 0 || !size.is_multiple_of(0x1_0000) || size > (16 << 20) {
                    return Err(Error::Config(format!(
                        "--bios image is {size} bytes: it must be a multiple of 64 KiB and at most 16 MiB"
                    )));
                }
                mem.add_rom("bios", (1u64 << 32) - size, size, image)?;
            }
            Firmware::Kernel(_) => {}
        }
        let mem = Arc::new(mem);
        let (boot_state, boot_note, kernel_code) = match &mut config.firmware {
            Firmware::Kernel(k) => {
                let loaded = load_kernel(&mem, k)?;
                // Loaded once: a reset restarts from the reset vector, so the
                // image's bytes (14 MiB for a distribution kernel) go.
                k.kernel = Vec::new();
                k.initrd = None;
                loaded
            }
            _ => (CpuState::reset(), None, Vec::new()),
        };
        let events = Arc::new(VmEvents::new());
        let first_byte = Arc::new(OnceLock::new());
        let out: Box<dyn Write + Send> = match &config.serial {
            SerialOut::Backend(b) => devices::console::open_output(b).map_err(|e| Error::Config(e.to_string()))?,
            SerialOut::Capture(buf) => Box::new(CaptureWriter(buf.clone())),
        };
        let out = Box::new(TimedWriter { inner: out, first: first_byte.clone() });
        let clock: devices::clock::SharedClock = Arc::new(devices::clock::HostClock::new());
        let tsc = Arc::new(devices::clock::Tsc::new(cpu::cpuid::TSC_KHZ * 1000));
        let ram = devices::rtc::RamSize::split(config.mem, mmu::PCI_HOLE_START);
        let chipset = devices::pc::PcChipset::new(clock.clone(), events.clone(), tsc, ram);
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        chipset.install(&mut pio, &mut mmio)?;
        let serial = Arc::new(Mutex::new(Serial::new(chipset.irq_line(devices::serial::COM1_IRQ), out)));
        let shared: SharedDevice = serial.clone();
        pio.insert(shared, u64::from(COM1_PORT), SERIAL_PORT_LEN)?;
        let exit: SharedDevice = Arc::new(Mutex::new(DebugExit::new(events.clone())));
        pio.insert(exit, u64::from(DEBUG_EXIT_PORT), DEBUG_EXIT_PORT_LEN)?;
        let nics = crate::nic::install(nics, &chipset, &mem, &mut pio, &mut mmio)?;
        Ok(Machine {
            mem,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            events,
            chipset,
            clock,
            boot_state,
            boot_note,
            serial,
            first_byte,
            halted: Mutex::new((Duration::ZERO, 0)),
            input: Arc::new(Mutex::new(VecDeque::new())),
            config,
            nics,
            kernel_code,
        })
    }

    /// One statistics line per network card.
    pub fn nic_stats(&self) -> Vec<String> {
        self.nics.as_ref().map(crate::nic::Nics::stats_lines).unwrap_or_default()
    }

    /// Attach host stdin to COM1 (only for the stdio backend).
    pub fn attach_stdin(&self) -> Result<(), Error> {
        let input = self.input.clone();
        let me = std::thread::current();
        devices::console::spawn_stdin_reader(
            self.events.clone(),
            Box::new(move |bytes: &[u8]| {
                input.lock().extend(bytes.iter().copied());
                me.unpark();
            }),
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }

    /// Move typed bytes into the UART's receive FIFO as space allows.
    fn pump_input(&self) {
        let mut q = self.input.lock();
        if q.is_empty() {
            return;
        }
        let mut serial = self.serial.lock();
        let (a, _) = q.as_slices();
        let n = serial.enqueue_input(a);
        q.drain(..n);
    }

    fn platform(&self) -> BusPlatform {
        self.platform_with(Arc::new(Mutex::new(Unclaimed::default())))
    }

    /// Run the guest in the interpreter until it stops.
    pub fn run_interp(&self) -> RunReport {
        let start = Instant::now();
        let platform = self.platform();
        let unclaimed = platform.unclaimed.clone();
        let mut cpu = Cpu::new(self.mem.clone(), Box::new(platform));
        cpu.set_state(self.boot_state);
        let deadline = self.config.timeout.map(|t| start + t);
        // Interrupts, machine events and typed input wake a halted CPU.
        let me = std::thread::current();
        let wake = me.clone();
        self.chipset.intc.set_kick(Box::new(move || wake.unpark()));
        let wake = me.clone();
        self.events.set_kick(Box::new(move || wake.unpark()));
        let finish = |status: i32, message: Option<String>, cpu: &Cpu| {
            let stats = vec![
                format!(
                    "{} blocks decoded ({} full decode-cache flushes), {} exceptions, {} interrupts, {} page walks, {} TLB flushes",
                    cpu.stats.blocks_decoded,
                    cpu.stats.cache_flushes,
                    cpu.stats.exceptions,
                    cpu.stats.interrupts,
                    cpu.mmu.walks,
                    cpu.mmu.flushes
                ),
                self.halted_stat(),
            ];
            let mut r = self.report(start, "interp", unclaimed.lock().count, stats);
            r.status = status;
            r.message = message;
            r.instructions = Some(cpu.stats.instructions);
            r
        };
        let mut next_timer: Option<u64>;
        loop {
            self.pump_input();
            if self.chipset.intc.take_nmi() {
                cpu.inject_nmi();
            }
            let why = cpu.run(SLICE);
            next_timer = self.chipset.timers.poll(self.clock.now_ns());
            let next = self.pending_event().or_else(|| match why {
                StopReason::Shutdown(chain) => self.on_shutdown(&chain),
                // Sleep until the next timer deadline, an interrupt, a
                // machine event or typed input (all of which unpark us).
                StopReason::Halted => {
                    self.idle(next_timer, deadline);
                    Next::Go
                }
                StopReason::Budget | StopReason::Requested | StopReason::UserMode => Next::Go,
            });
            let next = next.or_else(|| self.past(deadline));
            match next {
                Next::Go => {}
                Next::Reset => self.reset(&mut cpu),
                Next::Finish(status, msg) => return finish(status, msg, &cpu),
            }
        }
    }

    /// Run the guest under KVM until it stops. Instructions KVM cannot run
    /// (on hosts whose KVM emulates ring-0 code in software) are executed by
    /// the interpreter on the same state, then KVM continues.
    ///
    /// Where KVM itself runs CPL-0 code in software (kvm_pvm), the kernel
    /// runs in the interpreter and only user code in KVM ([`split`]), unless
    /// `--kvm-split off`.
    pub fn run_kvm(&self) -> Result<RunReport, Error> {
        #[cfg(target_os = "linux")]
        if self.use_split() {
            return self.run_split();
        }
        use hvf_kvm_accel::fallback::{emulate_one, Emulated};
        use hvf_kvm_accel::{IrqChip, VmExit};
        let start = Instant::now();
        let hv = hvf_kvm_accel::open()?;
        let vm: Arc<dyn hvf_kvm_accel::Vm> = Arc::from(hv.create_vm(self.mem.clone())?);
        let in_kernel = matches!(vm.irqchip(), hvf_kvm_accel::IrqChip::InKernel { .. });
        if in_kernel {
            // KVM models the PIC, I/O APIC and local APIC: device lines go there.
            let v = vm.clone();
            self.chipset.intc.set_forward(Box::new(move |irq, level| {
                if let Err(e) = v.set_irq_line(irq, level) {
                    tracing::warn!(target: "accel", "KVM refused IRQ {irq}: {e}");
                }
            }));
        }
        // Messages (MSI-X) go to the in-kernel local APICs by irqfd.
        #[cfg(target_os = "linux")]
        let msi = in_kernel.then(|| {
            let msi = Arc::new(hvf_kvm_accel::irqfd::MsiIrqfds::new(vm.clone()));
            let m = msi.clone();
            self.chipset.intc.set_msi_forward(Box::new(move |message| {
                if let Err(e) = m.send(message.address, message.data) {
                    tracing::warn!(target: "accel", "KVM refused MSI {:#x}/{:#x}: {e}", message.address, message.data);
                }
            }));
            msi
        });
        // Virtio queue notifications signal the NIC I/O thread's eventfds
        // instead of exiting to this thread (until the run ends).
        #[cfg(target_os = "linux")]
        let doorbells = self.nics.as_ref().map(|n| {
            let v = vm.clone();
            n.attach_doorbells(Box::new(move |fd, site, attach| {
                let addr = if site.pio {
                    let port = u16::try_from(site.addr).map_err(|_| format!("port {:#x} is past 0xffff", site.addr))?;
                    hvf_kvm_accel::IoEventAddr::Pio(port)
                } else {
                    hvf_kvm_accel::IoEventAddr::Mmio(site.addr)
                };
                v.set_ioeventfd(fd, addr, site.len, site.datamatch, attach).map_err(|e| e.to_string())
            }))
        });
        let mut vcpu = vm.create_vcpu(0)?;
        vcpu.set_state(&self.boot_state)?;
        // A guest spinning in KVM never exits by itself: machine events filed
        // on other threads (console quit key, devices) and the --timeout
        // watchdog kick the vCPU out of KVM_RUN.
        let kicker = vcpu.kicker()?;
        let k = kicker.clone();
        self.events.set_kick(Box::new(move || k.kick()));
        // Dropping `_watchdog_stop` (when this function returns) ends the watchdog.
        let (_watchdog_stop, watchdog_rx) = std::sync::mpsc::channel::<()>();
        if let Some(t) = self.config.timeout {
            let k = kicker.clone();
            std::thread::Builder::new()
                .name("kvm-timeout".into())
                .spawn(move || {
                    let wait = t.saturating_sub(start.elapsed());
                    if matches!(watchdog_rx.recv_timeout(wait), Err(std::sync::mpsc::RecvTimeoutError::Timeout)) {
                        k.kick();
                    }
                })
                .map_err(|e| Error::Accel(format!("cannot start the --timeout watchdog: {e}")))?;
        }
        let platform = self.platform();
        let unclaimed = platform.unclaimed.clone();
        let mut io = KvmIo { platform: self.platform_with(unclaimed.clone()) };
        // The fallback interpreter shares the buses.
        let mut fallback = Cpu::new(self.mem.clone(), Box::new(platform));
        let mut emulated: std::collections::BTreeMap<String, u64> = Default::default();
        let mut fallback_time = Duration::ZERO;
        let deadline = self.config.timeout.map(|t| start + t);
        let finish = |status: i32,
                      message: Option<String>,
                      st: hvf_kvm_accel::VcpuStats,
                      emulated: &std::collections::BTreeMap<String, u64>,
                      fallback_time: Duration| {
            let total = start.elapsed();
            let mut stats = vec![format!("exits: {} ({} entries into KVM)", st.exits, st.entries)];
            stats.push(if emulated.is_empty() {
                "fallback emulations: none".to_string()
            } else {
                format!(
                    "fallback emulations: {} ({:.3} s)",
                    emulated.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "),
                    fallback_time.as_secs_f64()
                )
            });
            stats.push(format!(
                "time in KVM {:.3} s, in userspace {:.3} s (devices {:.3} s)",
                st.in_guest.as_secs_f64(),
                total.saturating_sub(st.in_guest).as_secs_f64(),
                st.in_handlers.as_secs_f64()
            ));
            stats.push(format!("interrupt controllers: {}", vm.irqchip()));
            #[cfg(target_os = "linux")]
            if let Some(d) = &doorbells {
                stats.push(format!("virtio doorbells on ioeventfd: {} attached", d.count()));
            }
            #[cfg(target_os = "linux")]
            if let Some(m) = &msi {
                stats.push(m.summary());
            }
            let mut r = self.report(start, "kvm", unclaimed.lock().count, stats);
            r.status = status;
            r.message = message;
            r
        };
        loop {
            self.pump_input();
            let exit = vcpu.run(&mut io)?;
            let mut next = self.pending_event();
            if next == Next::Go {
                next = match exit {
                    VmExit::Hlt => {
                        std::thread::sleep(Duration::from_millis(1));
                        Next::Go
                    }
                    VmExit::Interrupted => Next::Go,
                    VmExit::Shutdown => self.on_shutdown("triple fault under KVM"),
                    VmExit::InternalError { suberror: 1, .. } => match emulate_one(&mut *vcpu, &mut fallback)? {
                        Emulated::Ran { mnemonic, stop, took } => {
                            *emulated.entry(mnemonic).or_default() += 1;
                            fallback_time += took;
                            match stop {
                                StopReason::Shutdown(chain) => {
                                    self.on_shutdown(&format!("{chain} in the fallback interpreter"))
                                }
                                // An emulated HLT: KVM's userspace irqchip mode does not wait by itself.
                                StopReason::Halted if vm.irqchip() == IrqChip::Userspace => {
                                    std::thread::sleep(Duration::from_millis(1));
                                    Next::Go
                                }
                                _ => Next::Go,
                            }
                        }
                        // KVM delivers the event at the next entry, before the instruction.
                        Emulated::EventPending(ev) => {
                            tracing::debug!(target: "accel", "fallback deferred: {ev}");
                            Next::Go
                        }
                    },
                    other => {
                        return Err(Error::Accel(format!("{other}")));
                    }
                };
            }
            match next.or_else(|| self.past(deadline)) {
                Next::Go => {}
                // KVM's reset: the vCPU restarts at the reset vector.
                Next::Reset => vcpu.set_state(&CpuState::reset())?,
                Next::Finish(status, msg) => return Ok(finish(status, msg, vcpu.stats(), &emulated, fallback_time)),
            }
        }
    }

    /// The run loops' answer to a machine event: a reset goes on (unless
    /// `--no-reboot`), anything else ends the run with its exit status.
    fn on_event(&self, ev: VmEvent) -> Next {
        match ev {
            VmEvent::Reset if self.config.no_reboot => Next::Finish(0, Some("guest reset (--no-reboot)".into())),
            VmEvent::Reset => Next::Reset,
            other => {
                let msg = matches!(other, VmEvent::Quit).then(|| "quit from the console".to_string());
                Next::Finish(other.exit_status().unwrap_or(0), msg)
            }
        }
    }

    /// The run loops' answer to a triple fault (`chain` says which faults,
    /// and where): reset, as a PC does, or end the run with `--no-reboot`.
    fn on_shutdown(&self, chain: &str) -> Next {
        if self.config.no_reboot {
            return Next::Finish(0, Some(format!("guest shut down: {chain} (--no-reboot)")));
        }
        tracing::warn!(target: "cpu", "{chain}: resetting");
        Next::Reset
    }

    /// The pending machine event's answer, or [`Next::Go`] without one.
    fn pending_event(&self) -> Next {
        self.events.take().map_or(Next::Go, |ev| self.on_event(ev))
    }

    /// [`Next::Go`] until the `--timeout` deadline has passed.
    fn past(&self, deadline: Option<Instant>) -> Next {
        match deadline {
            Some(d) if Instant::now() >= d => {
                let secs = self.config.timeout.unwrap_or_default().as_secs_f64();
                Next::Finish(124, Some(format!("timeout: the guest ran for {secs} s (--timeout)")))
            }
            _ => Next::Go,
        }
    }

    /// How long the CPU waited halted, for `--stats` (the interpreter's and
    /// the split mode's; KVM's own halts are not seen here).
    pub(crate) fn halted_stat(&self) -> String {
        let (halted, waits) = *self.halted.lock();
        format!("halted {:.3} s in {waits} waits for an interrupt", halted.as_secs_f64())
    }

    /// A report of a run that began at `start`, with status 0 and no
    /// message or instruction count yet.
    fn report(&self, start: Instant, accel: &'static str, unclaimed_io: u64, stats: Vec<String>) -> RunReport {
        RunReport {
            status: 0,
            message: None,
            instructions: None,
            first_serial_byte: self.first_byte.get().map(|t| t.duration_since(start)),
            total: start.elapsed(),
            unclaimed_io,
            accel,
            stats,
        }
    }

    fn platform_with(&self, unclaimed: Arc<Mutex<Unclaimed>>) -> BusPlatform {
        BusPlatform {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            events: self.events.clone(),
            unclaimed,
            intc: self.chipset.intc.clone(),
            tsc: self.chipset.tsc.clone(),
            clock: self.clock.clone(),
        }
    }

    fn reset(&self, cpu: &mut Cpu) {
        // A reset restarts from the reset vector (firmware in ROM), as on a PC;
        // a directly booted kernel is not reloaded.
        self.chipset.reset();
        cpu.set_state(CpuState::reset());
        cpu.flush_code_cache();
    }
}

/// What a run loop does after a machine event, a triple fault or a deadline.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Go on running.
    Go,
    /// Reset the machine, then go on.
    Reset,
    /// End the run with this exit status and message.
    Finish(i32, Option<String>),
}

impl Next {
    /// This, or what `f` says when this is [`Next::Go`].
    pub(crate) fn or_else(self, f: impl FnOnce() -> Next) -> Next {
        match self {
            Next::Go => f(),
            other => other,
        }
    }
}

/// KVM's exits to userspace, served by the same buses as the interpreter's.
/// (The backend counts and times the exits: `Vcpu::stats`.)
struct KvmIo {
    platform: BusPlatform,
}

impl hvf_kvm_accel::ExitHandler for KvmIo {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        let v = self.platform.io_read(port, data.len() as u8);
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
    }
    fn pio_write(&mut self, port: u16, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        self.platform.io_write(port, n as u8, u32::from_le_bytes(b));
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.platform.mmio_read(addr, data);
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.platform.mmio_write(addr, data);
    }
    fn should_stop(&self) -> bool {
        self.platform.events.pending()
    }
}

#[derive(Default)]
struct Unclaimed {
    count: u64,
    seen: HashSet<(bool, u64)>,
}

/// The interpreter's view of the machine's buses.
struct BusPlatform {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    events: Arc<VmEvents>,
    unclaimed: Arc<Mutex<Unclaimed>>,
    intc: Arc<devices::intc::InterruptController>,
    tsc: Arc<devices::clock::Tsc>,
    clock: devices::clock::SharedClock,
}

impl BusPlatform {
    fn note_unclaimed(&self, mmio: bool, addr: u64, write: bool) {
        let mut u = self.unclaimed.lock();
        u.count += 1;
        if u.seen.insert((mmio, addr)) {
            let kind = if mmio { "MMIO" } else { "port" };
            let dir = if write { "write to" } else { "read from" };
            tracing::info!(target: "devices", "ignored {dir} unclaimed {kind} {addr:#x} (logged once)");
        }
    }
}

impl Platform for BusPlatform {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        let mut buf = [0xffu8; 4];
        let n = usize::from(size).min(4);
        if !self.pio.read(u64::from(port), &mut buf[..n]) {
            self.note_unclaimed(false, u64::from(port), false);
        }
        u32::from_le_bytes(buf) & (u32::MAX >> (32 - 8 * n as u32))
    }

    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        let n = usize::from(size).min(4);
        if !self.pio.write(u64::from(port), &value.to_le_bytes()[..n]) {
            self.note_unclaimed(false, u64::from(port), true);
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !self.mmio.read(addr, data) {
            self.note_unclaimed(true, addr & !0xfff, false);
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            self.note_unclaimed(true, addr & !0xfff, true);
        }
    }

    fn interrupt_pending(&mut self) -> bool {
        self.intc.interrupt_pending()
    }

    fn ack_interrupt(&mut self) -> Option<u8> {
        self.intc.ack_interrupt()
    }

    fn msr_read(&mut self, msr: u32) -> Option<u64> {
        if devices::intc::InterruptController::handles_msr(msr) {
            // `None` from the controller means the MSR faults: report 0 rather
            // than falling through to the CPU's table for APIC-owned MSRs.
            return Some(self.intc.msr_read(msr).unwrap_or(0));
        }
        None
    }

    fn msr_write(&mut self, msr: u32, value: u64) -> bool {
        devices::intc::InterruptController::handles_msr(msr) && self.intc.msr_write(msr, value)
    }

    fn tsc(&mut self) -> Option<u64> {
        Some(self.tsc.read(self.clock.now_ns()))
    }

    fn shift_tsc(&mut self, delta: u64) -> bool {
        self.tsc.shift(delta);
        true
    }

    fn stop_requested(&self) -> bool {
        self.events.pending()
    }
}

/// Load a kernel for direct boot and write the tables it needs.
/// The boot state, a note on what was loaded, and the kernel's code ranges.
type Loaded = (CpuState, Option<String>, Vec<(u64, u64)>);

fn load_kernel(mem: &GuestMemory, k: &KernelImage) -> Result<Loaded, Error> {
    let acpi = firmware::acpi::write_acpi_tables(mem, ACPI_TABLES, &firmware::acpi::AcpiConfig::new(1))
        .map_err(|e| Error::Firmware(format!("ACPI tables: {e}")))?;
    firmware::mptable::write_mptable(mem, MP_TABLE, &firmware::mptable::MpConfig::new(1))
        .map_err(|e| Error::Firmware(format!("MP table: {e}")))?;
    let is_bzimage = k.kernel.get(0x202..0x206) == Some(b"HdrS");
    if !is_bzimage && firmware::multiboot::MultibootHeader::find(&k.kernel).is_ok() {
        let modules: Vec<firmware::multiboot::MultibootModule<'_>> =
            k.initrd.iter().map(|d| firmware::multiboot::MultibootModule { data: d, cmdline: "initrd" }).collect();
        let cfg = firmware::multiboot::MultibootConfig {
            kernel: &k.kernel,
            cmdline: &k.cmdline,
            modules: &modules,
            e820: None,
        };
        let boot = firmware::multiboot::load_multiboot(mem, &cfg).map_err(|e| Error::Firmware(e.to_string()))?;
        let note = Some(format!("multiboot kernel, entry {:#x}", boot.cpu.rip));
        return Ok((crate::boot::cpu_state(&boot.cpu), note, Vec::new()));
    }
    let cfg = firmware::linux::LinuxBootConfig {
        kernel: &k.kernel,
        initrd: k.initrd.as_deref(),
        cmdline: &k.cmdline,
        path: k.path,
        acpi_rsdp: Some(acpi.rsdp),
        e820: None,
    };
    let boot = firmware::linux::load_linux(mem, &cfg).map_err(|e| Error::Firmware(e.to_string()))?;
    let note = format!("{:?} kernel, boot protocol {:#x}, entry {:#x}", boot.kind, boot.protocol, boot.entry);
    Ok((crate::boot::cpu_state(&boot.cpu), Some(note), boot.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(no_reboot: bool, timeout: Option<Duration>) -> Machine {
        Machine::new(MachineConfig {
            mem: 64 << 20,
            firmware: Firmware::Builtin,
            serial: SerialOut::Capture(Arc::new(Mutex::new(Vec::new()))),
            no_reboot,
            timeout,
            kvm_split: SplitMode::Off,
        })
        .expect("a machine")
    }

    #[test]
    fn events_end_the_run_with_their_status_and_a_reset_goes_on() {
        let m = machine(false, None);
        assert_eq!(m.pending_event(), Next::Go);
        m.events.request(VmEvent::DebugExit(0x10));
        assert_eq!(m.pending_event(), Next::Finish(0x21, None));
        assert_eq!(m.pending_event(), Next::Go, "an event is answered once");
        assert_eq!(m.on_event(VmEvent::PowerOff), Next::Finish(0, None));
        assert_eq!(m.on_event(VmEvent::Quit), Next::Finish(0, Some("quit from the console".into())));
        assert_eq!(m.on_event(VmEvent::Reset), Next::Reset);
        assert_eq!(m.on_shutdown("#GP -> #DF -> #GP"), Next::Reset);
    }

    #[test]
    fn no_reboot_turns_resets_and_triple_faults_into_the_end() {
        let m = machine(true, None);
        assert_eq!(m.on_event(VmEvent::Reset), Next::Finish(0, Some("guest reset (--no-reboot)".into())));
        assert_eq!(
            m.on_shutdown("#GP -> #DF -> #GP"),
            Next::Finish(0, Some("guest shut down: #GP -> #DF -> #GP (--no-reboot)".into()))
        );
    }

    #[test]
    fn the_deadline_ends_the_run_with_status_124() {
        let m = machine(false, Some(Duration::from_secs(3)));
        let now = Instant::now();
        assert_eq!(m.past(None), Next::Go);
        assert_eq!(m.past(Some(now + Duration::from_secs(60))), Next::Go);
        assert_eq!(m.past(Some(now)), Next::Finish(124, Some("timeout: the guest ran for 3 s (--timeout)".into())));
        assert_eq!(Next::Go.or_else(|| Next::Reset), Next::Reset);
        assert_eq!(Next::Finish(1, None).or_else(|| Next::Reset), Next::Finish(1, None));
    }
}
