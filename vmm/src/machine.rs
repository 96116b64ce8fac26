//! Machine assembly and the run loop.
//!
//! A [`Machine`] owns guest memory, the port-I/O and MMIO buses with their
//! devices, the machine-event channel and the serial console, and the one
//! run loop ([`Machine::run`]) that drives any CPU engine
//! ([`crate::engine`]). Engines are built from an [`EngineContext`] that
//! names the parts of the machine they use, and reach the devices through
//! the machine's I/O interface ([`MachineIo`]), so devices never know which
//! engine drives them.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cpu::CpuState;
use devices::clock::ClockState;
use devices::legacy::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN};
use devices::legacy::fw_cfg::{FwCfg, FwCfgState};
use devices::legacy::serial::{Serial, SerialState, COM1_PORT, SERIAL_PORT_LEN};
use devices::pc::PcChipsetState;
use devices::{Bus, SharedDevice, VmEvent, VmEvents};
use mmu::GuestMemory;
use parking_lot::{Condvar, Mutex};
use persist::{Persist, PersistError};

use crate::config::{EngineKind, Firmware, KernelImage, MachineConfig, SerialOut, Vga};
use crate::device_manager::DeviceManagerState;
use crate::engine::{Engine, EngineContext, EngineStats, Exit, Kicker, MachineIo};
use crate::error::Error;
use crate::vcpu::Vcpu;

/// Where the ACPI tables and the MP table go (the BIOS area, ordinary RAM here).
const ACPI_TABLES: u64 = 0xe_0000;
const MP_TABLE: u64 = 0xf_0000;

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
    /// QEMU's `ShutdownCause` when the guest or a monitor's reset ended
    /// the run (`guest-shutdown`, `guest-reset`, `host-qmp-system-reset`);
    /// `None` for a quit, a timeout or an error.
    pub shutdown: Option<&'static str>,
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
    pub(crate) chipset: devices::pc::PcChipset,
    pub(crate) clock: devices::clock::SharedClock,
    /// The CPU state the loaded firmware or kernel starts in.
    pub(crate) boot_state: CpuState,
    /// What the loader did, for diagnostics.
    pub boot_note: Option<String>,
    serial: Arc<Mutex<Serial>>,
    /// The flash drives below the firmware ([`MachineConfig::flash`]).
    flash: Vec<Arc<Mutex<devices::pflash::Pflash>>>,
    /// The firmware configuration device, on a BIOS boot.
    fw_cfg: Option<Arc<Mutex<FwCfg>>>,
    /// The `bootorder` file the first reset puts in place when the first
    /// boot had one of its own (`-boot once=`).
    bootorder_after_reset: Mutex<Option<Vec<u8>>>,
    first_byte: Arc<OnceLock<Instant>>,
    /// Bytes typed for the guest that the UART has not taken yet.
    input: Arc<Mutex<VecDeque<u8>>>,
    /// COM1's pseudo-terminal (`--serial pty`), until its input is attached.
    pty: Mutex<Option<devices::console::Pty>>,
    /// Its device path and label.
    pty_path: Option<(std::path::PathBuf, String)>,
    pub(crate) config: MachineConfig,
    /// The PCI devices with host-side I/O (NICs, disks) and their I/O thread.
    devices: Option<crate::device_manager::DeviceManager>,
    /// Physical ranges of the directly booted kernel's code, when known.
    pub(crate) kernel_code: Vec<(u64, u64)>,
    /// Accesses no device claimed, shared by every engine's I/O.
    unclaimed: Arc<Mutex<crate::engine::io::Unclaimed>>,
    /// Pausing and resuming the vCPU from other threads.
    control: Arc<RunControl>,
    /// `--no-shutdown`: a guest's power-off stops the vCPUs instead of
    /// ending the run ([`Machine::set_no_shutdown`]).
    no_shutdown: bool,
    /// Set while a vCPU waits to run alone ([`threads`]): every engine
    /// stops at its next check.
    exclusive_request: Arc<AtomicBool>,
    /// The display adapter, with `-vga std`.
    vga: Option<Arc<Mutex<devices::display::StdVga>>>,
    /// The drives, their images shared with their device models, for
    /// snapshots ([`crate::snapshot`]).
    disks: Vec<crate::storage::MachineDisk>,
    /// What the vCPUs' JITs share (compiled regions), once a JIT starts.
    jit_shared: OnceLock<Arc<jit::shared::Shared>>,
    /// When a vCPU first ran guest code ([`Machine::first_run`]).
    first_run: OnceLock<Instant>,
    /// What ended the run, in QEMU's terms ([`RunReport::shutdown`]).
    ended_by: Mutex<Option<&'static str>>,
    /// A debugger's breakpoints and stops ([`crate::gdb`]).
    pub debug: Arc<crate::gdb::GuestDebug>,
}

impl Machine {
    pub fn new(config: MachineConfig) -> Result<Self, Error> {
        Self::with_nics(config, &[])
    }

    /// A machine with the network cards of `nics` (`--nic`) in PCI slots 3, 4, ...
    pub fn with_nics(config: MachineConfig, nics: &[net::NicSpec]) -> Result<Self, Error> {
        Self::with_devices(config, nics, crate::storage::Storage::default())
    }

    /// A machine with the network cards of `nics` (`--nic`) in PCI slots 3,
    /// 4, ..., the virtio-blk disks of `storage` after them, and its IDE
    /// drives on the PIIX3's IDE function (00:01.1), which is there when
    /// one drive is on it ([`crate::storage`]).
    pub fn with_devices(
        mut config: MachineConfig,
        nics: &[net::NicSpec],
        storage: crate::storage::Storage,
    ) -> Result<Self, Error> {
        crate::storage::check_boot_order(&storage.boot_order).map_err(Error::Config)?;
        if let Some(once) = &storage.boot_once {
            crate::storage::check_boot_order(once).map_err(|e| Error::Config(format!("once={once}: {e}")))?;
        }
        // The NICs the boot order names (n, o, p: the first three).
        let orders = || std::iter::once(&storage.boot_order).chain(storage.boot_once.as_ref());
        let wanted = || orders().flat_map(|o| o.chars()).filter_map(crate::storage::boot_nic);
        let net_boot = wanted().next().is_some();
        if let Some(i) = wanted().find(|&i| i >= nics.len()) {
            return Err(Error::Config(format!(
                "boot order {}: network boot from NIC {} needs that many NICs (--nic); there are {}",
                char::from(b'n' + i as u8),
                i + 1,
                nics.len()
            )));
        }
        let (drives, disks) = crate::storage::share(storage.drives);
        let placed = crate::storage::place(drives)?;
        let mut mem = match config.vga {
            Vga::Std => {
                let mut mem = GuestMemory::with_vga_window(config.mem)?;
                mem.add_vram(u64::from(devices::display::DEFAULT_VRAM))?;
                mem
            }
            Vga::None => GuestMemory::new(config.mem)?,
        };
        match &config.firmware {
            Firmware::Builtin => {
                if config.mem < firmware::builtin::MIN_RAM {
                    return Err(Error::Config(format!(
                        "the built-in guest needs at least {} MiB of RAM (--mem)",
                        firmware::builtin::MIN_RAM >> 20
                    )));
                }
                let g = firmware::builtin::build()?;
                mem.add_rom("builtin-rom", firmware::builtin::ROM_BASE, firmware::builtin::ROM_SIZE, &g.rom)?;
            }
            Firmware::Bios(image) => {
                if config.mem < crate::bios::MIN_RAM {
                    return Err(Error::Config(format!(
                        "booting through the BIOS needs at least {} MiB of RAM (--mem)",
                        crate::bios::MIN_RAM >> 20
                    )));
                }
                crate::bios::check_flash_image(image, "the firmware image")?;
                let size = image.len() as u64;
                mem.add_rom("bios", (1u64 << 32) - size, size, image)?;
            }
            Firmware::Kernel(_) => {}
        }
        let mem = Arc::new(mem);
        let apic_ids = config.apic_ids();
        // The tables' IDs are bytes: a topology's IDs stay below 0xff.
        let table_ids: Vec<u8> = apic_ids.iter().map(|&id| u8::try_from(id).unwrap_or(u8::MAX)).collect();
        // The ACPI tables' machine: its CPUs, and the HPET unless -no-hpet.
        let mut acpi = firmware::acpi::AcpiConfig::with_apic_ids(table_ids.clone());
        if !config.hpet {
            acpi.hpet = None;
        }
        if let Some(pci) = acpi.pci.as_mut() {
            // The window the BARs are decoded in: from the end of low RAM.
            let (base, len) = crate::device_manager::pci_mmio_window(mem.ram_size());
            pci.mmio32 = (base as u32, (base + len - 1) as u32);
        }
        let smbios = crate::bios::smbios(&config)?;
        let (boot_state, mut boot_note, kernel_code) = match &mut config.firmware {
            Firmware::Kernel(k) if !k.load => {
                (CpuState::reset(), Some("kernel not loaded: RAM and CPUs come from saved state".into()), Vec::new())
            }
            Firmware::Kernel(k) => {
                let loaded = load_kernel(&mem, k, &acpi, config.acpi, &smbios.blobs)?;
                // Loaded once: a reset restarts from the reset vector, so the
                // image's bytes (14 MiB for a distribution kernel) go.
                k.kernel = Vec::new();
                k.initrd = None;
                k.modules = Vec::new();
                loaded
            }
            _ => (CpuState::reset(), None, Vec::new()),
        };
        let events = Arc::new(VmEvents::new());
        let first_byte = Arc::new(OnceLock::new());
        let mut pty = None;
        let out: Box<dyn Write + Send> = match &config.serial {
            SerialOut::Backend(devices::console::SerialBackend::Pty(label)) => {
                let p = devices::console::Pty::open()?;
                let w = p.writer()?;
                pty = Some((p, label.clone()));
                w
            }
            SerialOut::Backend(b) => devices::console::open_output(b)?,
            SerialOut::Capture(buf) => Box::new(CaptureWriter(buf.clone())),
        };
        let out = Box::new(TimedWriter { inner: out, first: first_byte.clone() });
        let clock: devices::clock::SharedClock = Arc::new(devices::clock::HostClock::new());
        let tsc = Arc::new(devices::clock::Tsc::new(cpu::cpuid::TSC_KHZ * 1000));
        let ram = devices::legacy::rtc::RamSize::split(config.mem, mmu::PCI_HOLE_START);
        let mut chipset = devices::pc::PcChipset::new(clock.clone(), events.clone(), tsc, ram, &apic_ids);
        if let Some(ns) = config.rtc_start_ns {
            chipset.rtc.lock().set_wall_clock(ns);
        }
        if !config.acpi {
            chipset.remove_acpi_pm();
        } else if !matches!(config.firmware, Firmware::Bios(_)) {
            // No third-party firmware to place the ACPI PM block: it starts
            // where the ACPI tables say, as a BIOS would have left it.
            chipset.program_pm_block();
        }
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        if !config.hpet {
            chipset.unmap_hpet();
        }
        chipset.install(&mut pio, &mut mmio)?;
        let serial = Arc::new(Mutex::new(Serial::new(chipset.irq_line(devices::legacy::serial::COM1_IRQ), out)));
        let shared: SharedDevice = serial.clone();
        pio.insert(shared, u64::from(COM1_PORT), SERIAL_PORT_LEN)?;
        let exit: SharedDevice = Arc::new(Mutex::new(DebugExit::new(events.clone())));
        pio.insert(exit, u64::from(DEBUG_EXIT_PORT), DEBUG_EXIT_PORT_LEN)?;
        if let Some(b) = &config.debugcon {
            use devices::legacy::debugcon::{DebugCon, DEBUGCON_E9_PORT, DEBUGCON_PORT_LEN};
            if b.on_stdio() && matches!(&config.serial, SerialOut::Backend(s) if s.on_stdio()) {
                return Err(Error::Config(format!(
                    "-debugcon {b}: COM1 is on stdio already (QEMU: cannot use stdio by multiple character devices)"
                )));
            }
            let con: SharedDevice = Arc::new(Mutex::new(DebugCon::with_output(devices::console::open_output(b)?)));
            pio.insert(con, u64::from(DEBUGCON_E9_PORT), DEBUGCON_PORT_LEN)?;
        }
        let mut fw_cfg = None;
        let mut bootorder_after_reset = None;
        let flash = match &config.firmware {
            Firmware::Bios(image) => map_flash(&mut config.flash, image.len() as u64, &mut mmio)?,
            _ if config.bios_kernel.is_some() => {
                return Err(Error::Config("a kernel for the BIOS to boot needs a BIOS (Firmware::Bios)".into()))
            }
            _ if !config.flash.is_empty() => {
                return Err(Error::Config("flash drives (-drive if=pflash) go with firmware, not with --kernel".into()))
            }
            _ => Vec::new(),
        };
        if let Firmware::Bios(image) = &config.firmware {
            // The BIOS's last 128 KiB below 1 MiB, under the PAM registers.
            let shadow = devices::pci::pam::BiosShadow::new(mem.clone(), image)?;
            chipset.host_bridge.lock().set_shadow(Arc::new(Mutex::new(shadow)));
            // The virtio disks' slots, after the NICs' ([`crate::device_manager`]).
            let slots: Vec<u8> = (nics.len()..nics.len() + placed.virtio.len())
                .filter_map(crate::device_manager::function_slot)
                .collect();
            let nic_slots: Vec<u8> = (0..nics.len()).filter_map(crate::device_manager::function_slot).collect();
            // A kernel for the BIOS: its option ROM boots first, in either order.
            let kernel_boot = config
                .bios_kernel
                .take()
                .map(|k| crate::bios::prepare_kernel_boot(&k, config.mem.min(mmu::PCI_HOLE_START)))
                .transpose()?;
            let paths = |order: &str| {
                let mut p = crate::storage::boot_paths(order, &placed.ide_kinds, &slots, &nic_slots);
                if let Some(k) = &kernel_boot {
                    p.insert(0, k.boot_path());
                }
                p
            };
            let mut boot = paths(&storage.boot_order);
            if let Some(once) = &storage.boot_once {
                let first = paths(once);
                bootorder_after_reset = Some(crate::bios::bootorder_file(&std::mem::replace(&mut boot, first)));
            }
            let vga_rom = match config.vga {
                Vga::Std => Some(crate::bios::vga_bios()?),
                Vga::None => None,
            };
            let menu = crate::bios::BootMenu { show: storage.boot_menu, wait_ms: storage.boot_menu_wait_ms };
            let pm = config.acpi.then(|| chipset.pm_decode.clone());
            let mut fw = crate::bios::fw_cfg(&mem, &boot, menu, &acpi, vga_rom, pm, &smbios)?;
            if let Some(k) = kernel_boot {
                boot_note = Some(k.note.clone());
                k.install(&mut fw)?;
            }
            let device = Arc::new(Mutex::new(fw));
            let shared: SharedDevice = device.clone();
            pio.insert(
                shared,
                u64::from(devices::legacy::fw_cfg::FW_CFG_PORT),
                devices::legacy::fw_cfg::FW_CFG_PORT_LEN,
            )?;
            fw_cfg = Some(device);
        }
        let vga = match config.vga {
            Vga::Std => Some(Arc::new(Mutex::new(
                devices::display::StdVga::with_memory(Arc::clone(&mem)).map_err(Error::Config)?,
            ))),
            Vga::None => None,
        };
        let extra = crate::device_manager::Extra {
            vga: vga.clone(),
            usb: config.usb.clone(),
            clock: clock.clone(),
            rng: config.rng.clone(),
            vports: config.vports.clone(),
            net_boot: matches!(config.firmware, Firmware::Bios(_)) && net_boot,
        };
        let devices = crate::device_manager::install(nics, placed, extra, &chipset, &mem, &mut pio, &mut mmio)?;
        // The USB controller runs its frames from the machine's timers.
        for t in devices.iter().flat_map(crate::device_manager::DeviceManager::timer_sources) {
            chipset.timers.add(t);
        }
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
            fw_cfg,
            flash,
            bootorder_after_reset: Mutex::new(bootorder_after_reset),
            first_byte,
            input: Arc::new(Mutex::new(VecDeque::new())),
            pty_path: pty.as_ref().map(|(p, label)| (p.path().to_path_buf(), label.clone())),
            pty: Mutex::new(pty.map(|(p, _)| p)),
            config,
            devices,
            kernel_code,
            unclaimed: Arc::default(),
            control: Arc::new(RunControl::default()),
            debug: Arc::default(),
            no_shutdown: false,
            exclusive_request: Arc::default(),
            vga,
            jit_shared: OnceLock::new(),
            first_run: OnceLock::new(),
            ended_by: Mutex::new(None),
            disks,
        })
    }

    /// When a vCPU first ran guest code (its engine built, its state set),
    /// if one has: for the latency of a restore.
    pub fn first_run(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }

    /// The drives, in the order they were given.
    pub fn disks(&self) -> &[crate::storage::MachineDisk] {
        &self.disks
    }

    /// One statistics line per network card.
    pub fn nic_stats(&self) -> Vec<String> {
        self.devices.as_ref().map(crate::device_manager::DeviceManager::stats_lines).unwrap_or_default()
    }

    /// Attach host stdin to COM1 (only for the stdio backends), or to the
    /// virtio-serial port on stdio when there is one; with `monitor`
    /// (`--serial mon:stdio`, a port on `mon:stdio`), `Ctrl-A c` moves the
    /// keys between the guest and it.
    pub fn attach_stdin(&self, monitor: Option<Box<dyn devices::console::MuxMonitor>>) -> Result<(), Error> {
        let sink: devices::console::InputSink = match self.vport_stdio() {
            // A virtio-serial port on stdio takes the keys instead of COM1.
            Some(input) => Box::new(move |bytes: &[u8]| input.push(bytes)),
            None => Box::new(self.input_sink()),
        };
        devices::console::spawn_stdin_reader(self.events.clone(), sink, monitor)?;
        Ok(())
    }

    /// The virtio-serial port on stdio (`--vport ...,stdio` or
    /// `mon:stdio`): where typed bytes go.
    pub fn vport_stdio(&self) -> Option<devices::virtio::console::backends::StdioInput> {
        self.devices.as_ref().and_then(crate::device_manager::DeviceManager::stdio_port)
    }

    /// What a reader thread hands typed bytes to: COM1's input queue, then
    /// a wake-up of the calling (run loop's) thread.
    fn input_sink(&self) -> impl Fn(&[u8]) + Send + 'static {
        let input = self.input.clone();
        let me = std::thread::current();
        move |bytes: &[u8]| {
            input.lock().extend(bytes.iter().copied());
            me.unpark();
        }
    }

    /// COM1's pseudo-terminal (`--serial pty`): `/dev/pts/N`, and the
    /// label QEMU would name it by.
    pub fn serial_pty(&self) -> Option<(&std::path::Path, &str)> {
        self.pty_path.as_ref().map(|(p, l)| (p.as_path(), l.as_str()))
    }

    /// The pseudo-terminals of virtio-serial ports: each one's path and
    /// label (QEMU's chardev id).
    pub fn vport_ptys(&self) -> &[(std::path::PathBuf, String)] {
        self.devices.as_ref().map_or(&[], crate::device_manager::DeviceManager::ptys)
    }

    /// Starts the thread that gives what is typed on COM1's pseudo-terminal
    /// to the guest (`--serial pty`; nothing otherwise).
    pub fn attach_pty(&self) -> Result<(), Error> {
        let Some(pty) = self.pty.lock().take() else { return Ok(()) };
        let deliver = self.input_sink();
        // Every byte to the guest: a pty has no escape keys (QEMU's has
        // them only under mux=on).
        std::thread::Builder::new()
            .name("serial-pty".into())
            .spawn(move || {
                use std::io::Read;
                let mut reader = pty.into_reader();
                let mut buf = [0u8; 256];
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    deliver(&buf[..n]);
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the serial-pty thread: {e}")))?;
        Ok(())
    }

    /// QEMU's `-no-shutdown`: when the guest powers off (or, with
    /// `no_reboot`, resets or triple-faults), its vCPUs stop where they
    /// are, paused, instead of the run ending, and the listener of
    /// [`RunControl::set_shutdown_listener`] hears why. While they stand
    /// still the run loop answers machine events: a `system_reset` resets
    /// the machine (which runs again on `cont`), a `quit` ends the run.
    pub fn set_no_shutdown(&mut self, on: bool) {
        self.no_shutdown = on;
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

    /// The machine's I/O interface for vCPU `cpu`'s engine.
    pub(crate) fn io(&self, cpu: usize) -> MachineIo {
        MachineIo {
            cpu,
            pio: self.pio.clone(),
            pm: self.chipset.pm_ports(),
            mmio: self.mmio.clone(),
            events: self.events.clone(),
            unclaimed: self.unclaimed.clone(),
            intc: self.chipset.intc.clone(),
            tsc: self.chipset.tsc.clone(),
            clock: self.clock.clone(),
            attention: self.control.attention.clone(),
            exclusive_request: self.exclusive_request.clone(),
            watch: None,
            shadow: None,
            vram_seen: None,
        }
    }

    /// What vCPU `index`'s engine is built from: the bootstrap processor
    /// starts in the firmware's or the kernel's state, the others in the
    /// reset state, which they keep until a start-up IPI.
    fn engine_context(&self, index: u32) -> EngineContext<'_> {
        EngineContext {
            index,
            mem: self.mem.clone(),
            io: self.io(index as usize),
            boot_state: if index == 0 { self.boot_state } else { ap_reset_state() },
            config: &self.config,
            kernel_code: &self.kernel_code,
            intc: self.chipset.intc.clone(),
            tsc: self.chipset.tsc.clone(),
            clock: self.clock.clone(),
            timers: self.chipset.timers.clone(),
            pit: self.chipset.pit.clone(),
            devices: self.devices.as_ref(),
            jit_shared: &self.jit_shared,
        }
    }

    /// The display adapter, when the machine has one (`-vga std`): its
    /// picture for a display ([`crate::display`]).
    pub fn vga(&self) -> Option<Arc<Mutex<devices::display::StdVga>>> {
        self.vga.clone()
    }

    /// The USB controller, when the machine has one (`-usb`).
    pub fn usb(&self) -> Option<Arc<Mutex<devices::usb::Uhci>>> {
        self.devices.as_ref().and_then(crate::device_manager::DeviceManager::usb)
    }

    /// The IDE controller, when the machine has IDE drives.
    pub fn ide(&self) -> Option<Arc<Mutex<devices::ide::IdeController>>> {
        self.devices.as_ref().and_then(crate::device_manager::DeviceManager::ide)
    }

    /// The keyboard controller, where typed keys and mouse motion go.
    pub fn i8042(&self) -> Arc<Mutex<devices::legacy::i8042::I8042>> {
        self.chipset.i8042.clone()
    }

    /// Pausing and resuming this machine's vCPU from other threads.
    pub fn control(&self) -> Arc<RunControl> {
        self.control.clone()
    }

    /// The engine `kind` for the vCPU of `ctx`.
    fn engine<'m>(&'m self, kind: EngineKind, ctx: &EngineContext<'m>) -> Result<Box<dyn Engine + 'm>, Error> {
        Ok(match kind {
            EngineKind::Interp => Box::new(crate::engine::interp::InterpEngine::new(ctx)),
            EngineKind::Jit => {
                Box::new(crate::engine::jit::JitEngine::new(ctx, crate::engine::jit::config_from_env(ctx.config)?)?)
            }
            #[cfg(target_os = "linux")]
            EngineKind::Kvm if crate::engine::split::SplitEngine::wanted(ctx) => {
                Box::new(crate::engine::split::SplitEngine::new(ctx)?)
            }
            #[cfg(target_os = "linux")]
            EngineKind::Kvm => Box::new(crate::engine::kvm::KvmEngine::new(ctx)?),
            #[cfg(not(target_os = "linux"))]
            EngineKind::Kvm => return Err(Error::Accel("KVM exists on Linux hosts only; use --accel interp".into())),
        })
    }

    /// Run the guest under `kind` until it stops.
    ///
    /// Under KVM, where KVM itself runs CPL-0 code in software (kvm_pvm),
    /// the kernel runs in the interpreter and only user code in KVM
    /// ([`crate::engine::split`]), unless `--kvm-split off`.
    ///
    /// With more than one vCPU, the interpreter and the JIT run them
    /// round-robin on this thread ([`crate::config::VcpuThreads::Single`])
    /// or a thread each ([`crate::config::VcpuThreads::Multi`]); KVM runs
    /// each on a thread of its own (`vmm/src/machine/threads.rs`).
    pub fn run(&self, kind: EngineKind) -> Result<RunReport, Error> {
        match self.run_once(kind, Instant::now(), None, true)? {
            Outcome::Done(report) => Ok(report),
            // Not asked for: only `run_lifecycle` takes requests.
            Outcome::Stopped(..) => Err(Error::Accel("the run stopped for work on the whole machine".into())),
        }
    }

    /// [`Machine::run`], with the vCPUs starting in `states` (index
    /// order; `None`: the boot states), and stopping for the requests of
    /// [`RunControl::request`]: for each, every vCPU stops, the run's
    /// engines go (and with them every cache made from guest memory: soft
    /// TLBs, decoded blocks, compiled code), the request's work gets the
    /// machine and the vCPUs' states, and new engines go on from the
    /// states it leaves, paused or not as it says. Snapshots and
    /// migration ([`crate::snapshot`]) are done so.
    pub fn run_lifecycle(&mut self, kind: EngineKind, states: Option<Vec<CpuState>>) -> Result<RunReport, Error> {
        let start = Instant::now();
        self.control.lifecycle.store(true, Ordering::Release);
        let mut states = states;
        let mut first = true;
        loop {
            let outcome = self.run_once(kind, start, states.as_deref(), first);
            first = false;
            match outcome {
                Ok(Outcome::Done(report)) => {
                    self.control.end_lifecycle();
                    self.debug.end();
                    return Ok(report);
                }
                Ok(Outcome::Stopped(op, vcpus)) => {
                    // Every engine moved the controllers' state it kept into
                    // the machine's models: lines and messages reach them
                    // until the next engines take over.
                    self.chipset.intc.clear_forward();
                    // The device thread stands still too: no frame or disk
                    // request moves guest memory or a device's state while
                    // the work saves or loads them.
                    let hold = self.devices.as_ref().map(crate::device_manager::DeviceManager::hold_io);
                    let mut stopped = Stopped { vcpus, paused: self.control.inner.lock().pause };
                    op(self, &mut stopped);
                    drop(hold);
                    self.control.settle();
                    states = Some(stopped.vcpus);
                }
                Err(e) => {
                    self.control.end_lifecycle();
                    self.debug.end();
                    return Err(e);
                }
            }
        }
    }

    /// What a debugger's stops must fit in a run under `kind`, when not
    /// any number: a guest wholly in KVM stops at what KVM's four debug
    /// registers hold ([`crate::engine::kvm::debug_stops_fit`]); split
    /// execution and the other engines stop in the interpreter.
    pub fn debug_stops_fit(&self, kind: EngineKind) -> Option<crate::gdb::StopsFit> {
        if kind != EngineKind::Kvm {
            return None;
        }
        #[cfg(target_os = "linux")]
        {
            // Split execution steps in the JIT's interpreter, and several
            // vCPUs that split execution would take go to the JIT.
            if crate::engine::split::SplitEngine::wanted(&self.engine_context(0)) {
                return None;
            }
            Some(crate::engine::kvm::debug_stops_fit)
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// One run of the vCPUs, from `states` when given: until the guest's
    /// end, or until a request of [`RunControl::request`] (taken only
    /// under [`Machine::run_lifecycle`]) stops every vCPU.
    fn run_once(
        &self,
        kind: EngineKind,
        start: Instant,
        states: Option<&[CpuState]>,
        first: bool,
    ) -> Result<Outcome, Error> {
        let cpus = u32::try_from(self.config.cpus()).map_err(|_| Error::Config("too many CPUs".into()))?;
        if let Some(s) = states {
            if s.len() != cpus as usize {
                return Err(Error::Config(format!("{} vCPU states for {cpus} vCPUs", s.len())));
            }
        }
        #[cfg(target_os = "linux")]
        let kind = if kind == EngineKind::Kvm
            && cpus > 1
            && crate::engine::split::SplitEngine::wanted(&self.engine_context(0))
        {
            if first {
                tracing::warn!(
                    target: "accel",
                    "split execution runs one vCPU: with {cpus} vCPUs the JIT runs the guest \
                     (--kvm-split off runs all of it in KVM, where KVM runs the kernel in software)"
                );
            }
            EngineKind::Jit
        } else {
            kind
        };
        let _ = first;
        if cpus > 1 && (kind == EngineKind::Kvm || self.config.vcpu_threads == crate::config::VcpuThreads::Multi) {
            return self.run_threads(kind, cpus, start, states);
        }
        let mut vcpus = Vec::with_capacity(cpus as usize);
        for index in 0..cpus {
            let ctx = self.engine_context(index);
            let mut engine = self.engine(kind, &ctx)?;
            if let Some(s) = states.and_then(|s| s.get(index as usize)) {
                engine.start_from(s)?;
            }
            if let Some(stops) = self.debug.stops_for(index) {
                engine.set_debug(Some(stops))?;
            }
            vcpus.push(Vcpu::new(index, engine));
        }
        self.run_vcpus(&mut vcpus, start, None)
    }

    /// The run loop, the same for every engine: the engines run slices of
    /// the guest, one vCPU after the other; between rounds the machine
    /// moves typed input into the UART, passes start-up IPIs and NMIs on,
    /// polls its timers, answers machine events, idles while every vCPU
    /// waits in HLT (or for its start-up IPI), pauses when asked, enforces
    /// the deadline, and resets or ends the run.
    ///
    /// `others`: the application processors that run on threads of their
    /// own ([`threads`]), which this loop kicks, resets and hears from.
    fn run_vcpus(
        &self,
        vcpus: &mut [Vcpu<'_>],
        start: Instant,
        others: Option<Arc<threads::ThreadCtl>>,
    ) -> Result<Outcome, Error> {
        // Machine events, interrupts, typed input and a pause request wake
        // the loop when it idles, and kick an engine that runs the guest
        // elsewhere.
        let me = std::thread::current();
        let kicks: Vec<Option<Kicker>> = vcpus.iter().map(Vcpu::kicker).collect();
        let wake = {
            let (k, t, o) = (kicks.clone(), me.clone(), others.clone());
            move || {
                for k in k.iter().flatten() {
                    k();
                }
                if let Some(o) = &o {
                    o.kick_all();
                }
                t.unpark();
            }
        };
        // An event also wakes a loop that holds its vCPUs paused: it is
        // answered while they stand still.
        let (w, control) = (wake.clone(), self.control.clone());
        self.events.set_kick(Box::new(move || {
            w();
            control.wake_paused();
        }));
        *self.control.kick.lock() = Some(Box::new(wake.clone()));
        for (v, kick) in vcpus.iter().zip(kicks) {
            let irq_kick = if v.kicks_for_interrupts() { kick } else { None };
            let t = me.clone();
            self.chipset.intc.set_kick(
                v.index() as usize,
                Box::new(move || {
                    if let Some(k) = &irq_kick {
                        k();
                    }
                    t.unpark();
                }),
            );
        }
        let deadline = self.config.timeout.map(|t| start + t);
        let mut next_timer = self.chipset.timers.poll(self.clock.now_ns());
        loop {
            self.pump_input();
            if let Some(op) = self.pause_point(vcpus)? {
                let states = vcpus.iter_mut().map(|v| v.engine().state()).collect::<Result<Vec<_>, _>>()?;
                for v in vcpus.iter_mut() {
                    v.engine().save_chips()?;
                }
                return Ok(Outcome::Stopped(op, states));
            }
            // Paused and woken by a machine event (or one is pending): it is
            // answered before any vCPU runs again.
            let stopped =
                self.events.pending() || (self.control.attention.load(Ordering::Acquire) && self.control.pause_asked());
            let until = self.instant_of(next_timer).min(deadline.unwrap_or(Instant::now() + Duration::from_secs(3600)));
            let mut halted = true;
            let mut shutdown = None;
            for v in vcpus.iter_mut().filter(|_| !stopped) {
                let i = v.index() as usize;
                if !self.debug.may_run(v.index()) {
                    continue;
                }
                devices::intc::set_current_cpu(i);
                self.start_up(v)?;
                if self.chipset.intc.waiting_for_sipi(i) {
                    continue;
                }
                if self.chipset.intc.take_nmi(i) {
                    v.engine().inject_nmi()?;
                }
                let t = Instant::now();
                self.first_run.get_or_init(|| t);
                let until = self.control.throttle_until(until, v.ran_since_throttle);
                let ran = match &others {
                    Some(o) => {
                        o.world.enter();
                        let r = v.run_slice(until);
                        o.world.leave();
                        r
                    }
                    None => v.run_slice(until),
                };
                v.ran_since_throttle += t.elapsed();
                self.control.throttle_point(&mut v.ran_since_throttle);
                match ran? {
                    Exit::Budget => halted = false,
                    Exit::Halted => {}
                    Exit::Debug => {
                        // Held here until the debugger has looked.
                        let watch = v.engine().take_watch_hit();
                        self.debug.hit(v.index(), watch, &self.control);
                        halted = false;
                        break;
                    }
                    Exit::Shutdown(chain) => {
                        shutdown = Some(if i == 0 { chain } else { format!("CPU {i}: {chain}") });
                        break;
                    }
                }
                if self.events.pending() {
                    // A reset or the end: the round stops here.
                    halted = false;
                    break;
                }
            }
            if let Some(o) = &others {
                if let Some(chain) = o.take_news()? {
                    shutdown.get_or_insert(chain);
                }
            }
            next_timer = self.chipset.timers.poll(self.clock.now_ns());
            let next = self.pending_event().or_else(|| match shutdown {
                Some(chain) => self.on_shutdown(&chain),
                // Sleep until the next timer deadline, an interrupt, a
                // machine event or typed input (all of which unpark us).
                None if halted && !stopped => {
                    next_timer = self.idle(vcpus, next_timer, deadline);
                    Next::Go
                }
                None => Next::Go,
            });
            match next.or_else(|| self.past(deadline)) {
                Next::Go => {}
                Next::Reset => match &others {
                    Some(o) => o.reset_all(|| self.reset(vcpus))?,
                    None => self.reset(vcpus)?,
                },
                Next::Stop(reason) => {
                    tracing::info!(target: "vmm", "the guest shut down ({reason}): its vCPUs stop (--no-shutdown)");
                    self.control.hold();
                    self.control.guest_shutdown(reason);
                }
                Next::Finish(status, message) => {
                    let total = start.elapsed();
                    let (instructions, lines) = self.vcpu_stats(vcpus, total);
                    let mut r = self.report(start, vcpus[0].engine().name(), self.unclaimed.lock().count, lines);
                    r.status = status;
                    r.message = message;
                    r.instructions = instructions;
                    return Ok(Outcome::Done(r));
                }
            }
        }
    }

    /// Passes a start-up event of the local APIC on to vCPU `v`: an INIT
    /// puts it in its reset state (it then waits for a SIPI), a SIPI
    /// starts it in real mode at the vector's page.
    fn start_up(&self, v: &mut Vcpu<'_>) -> Result<(), Error> {
        start_up(&self.chipset.intc, v.index() as usize, v.engine())
    }

    /// The statistics of every vCPU: the instructions of all, and the
    /// lines of each (prefixed by the vCPU's index when there are several),
    /// with the interrupt controller's IPI counts.
    fn vcpu_stats(&self, vcpus: &mut [Vcpu<'_>], total: Duration) -> (Option<u64>, Vec<String>) {
        let several = self.config.cpus() > 1;
        let mut instructions: Option<u64> = None;
        let mut lines = Vec::new();
        for v in vcpus.iter_mut() {
            let EngineStats { instructions: n, lines: l } = v.engine().stats(total);
            if let Some(n) = n {
                instructions = Some(instructions.unwrap_or(0) + n);
            }
            let prefix = if several { format!("cpu {}: ", v.index()) } else { String::new() };
            lines.extend(l.into_iter().map(|l| format!("{prefix}{l}")));
            lines.push(format!("{prefix}{}", v.halted_stat()));
        }
        if several {
            lines.push(self.chipset.intc.ipi_counts().to_string());
        }
        (instructions, lines)
    }

    /// The instant of a timer deadline in the clock's nanoseconds (far
    /// ahead without one).
    fn instant_of(&self, deadline_ns: Option<u64>) -> Instant {
        let now = Instant::now();
        match deadline_ns {
            Some(t) => now + Duration::from_nanos(t.saturating_sub(self.clock.now_ns())),
            None => now + Duration::from_secs(3600),
        }
    }

    /// A machine reset: the chipset and the CPU, whatever the engine. It
    /// restarts from the reset vector (firmware in ROM), as on a PC; a
    /// directly booted kernel is not reloaded.
    fn reset(&self, vcpus: &mut [Vcpu<'_>]) -> Result<(), Error> {
        self.chipset.reset();
        for f in &self.flash {
            f.lock().reset();
        }
        // `-boot once=`: the first boot's order is used up.
        if let (Some(f), Some(order)) = (&self.fw_cfg, self.bootorder_after_reset.lock().take()) {
            f.lock().replace_file("bootorder", order);
            tracing::info!(target: "firmware", "reset: back to the -boot order= boot order (once= was for the first boot)");
        }
        if let Some(d) = &self.devices {
            d.reset();
        }
        for v in vcpus.iter_mut() {
            if let Some(log) = self.config.guest_log.as_ref().filter(|l| l.cpu_reset) {
                log.reset(v.index(), &v.engine().state()?);
            }
            let state = if v.index() == 0 { CpuState::reset() } else { ap_reset_state() };
            v.engine().reset(&state)?;
        }
        Ok(())
    }

    /// Wait, halted, for an interrupt, a timer, an event or input; the next
    /// timer deadline after firing what came due while asleep.
    fn idle(&self, vcpus: &mut [Vcpu<'_>], next_timer: Option<u64>, deadline: Option<Instant>) -> Option<u64> {
        let intc = &self.chipset.intc;
        let work = vcpus.iter().map(|v| v.index() as usize).any(|i| {
            (intc.interrupt_pending(i) && !intc.waiting_for_sipi(i)) || intc.nmi_pending(i) || intc.startup_pending(i)
        });
        if !work && self.input.lock().is_empty() && !self.control.attention.load(Ordering::Relaxed) {
            // Halted vCPUs answer dirty logging's write syncs before they
            // sleep.
            for v in vcpus.iter_mut() {
                v.engine().sync_memory();
            }
            let now = self.clock.now_ns();
            let mut wait = Duration::from_millis(50);
            if let Some(t) = next_timer {
                wait = wait.min(Duration::from_nanos(t.saturating_sub(now)));
            }
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            let t = Instant::now();
            std::thread::park_timeout(wait);
            let waited = t.elapsed();
            for v in vcpus.iter_mut() {
                v.note_halt(waited);
            }
        }
        // Fire what came due while asleep before the CPU runs again.
        self.chipset.timers.poll(self.clock.now_ns())
    }

    /// Hold the vCPUs while another thread asked for a pause
    /// ([`RunControl::pause`]): publish the bootstrap processor's state,
    /// wait for the resume, and load a state set meanwhile. A request for
    /// work on the whole machine ([`RunControl::request`]), pending or
    /// made while paused, is returned instead: the run stops for it.
    fn pause_point(&self, vcpus: &mut [Vcpu<'_>]) -> Result<Option<MachineOp>, Error> {
        if !self.control.attention.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Stopped vCPUs answer dirty logging's write syncs, of a logging
        // that begins while they stand too.
        for v in vcpus.iter_mut() {
            v.engine().park_memory();
        }
        let Some(bsp) = vcpus.first_mut() else { return Ok(None) };
        {
            let mut c = self.control.inner.lock();
            if let Some(op) = c.op.take() {
                return Ok(Some(op));
            }
            if !c.pause {
                return Ok(None);
            }
        }
        let state = bsp.engine().state()?;
        let mut c = self.control.inner.lock();
        if let Some(op) = c.op.take() {
            return Ok(Some(op));
        }
        if !c.pause {
            return Ok(None);
        }
        c.paused = Some(state);
        self.control.cv.notify_all();
        drop(c);
        let mut c = self.control.inner.lock();
        // A machine event wakes the wait too ([`RunControl::wake_paused`]):
        // the run loop answers it with the vCPUs still paused.
        while c.pause && c.op.is_none() && !self.events.pending() {
            self.control.cv.wait(&mut c);
        }
        c.paused = None;
        let new = c.new_state.take();
        let op = c.op.take();
        drop(c);
        if let Some(s) = new {
            bsp.engine().set_state(&s)?;
        }
        Ok(op)
    }

    /// The run loops' answer to a machine event: a reset goes on (unless
    /// `--no-reboot`), anything else ends the run with its exit status.
    fn on_event(&self, ev: VmEvent) -> Next {
        let host = ev == VmEvent::Reset && self.control.host_reset.swap(false, Ordering::AcqRel);
        let reset_cause = if host { "host-qmp-system-reset" } else { "guest-reset" };
        match ev {
            VmEvent::PowerOff if self.no_shutdown => Next::Stop("guest-shutdown"),
            VmEvent::Reset if self.config.no_reboot && self.no_shutdown => Next::Stop(reset_cause),
            VmEvent::Reset if self.config.no_reboot => {
                self.set_ended_by(reset_cause);
                let who = if host { "a monitor's system_reset" } else { "guest reset" };
                Next::Finish(0, Some(format!("{who} (--no-reboot)")))
            }
            VmEvent::Reset => Next::Reset,
            other => {
                if other != VmEvent::Quit {
                    self.set_ended_by("guest-shutdown");
                }
                let msg = matches!(other, VmEvent::Quit).then(|| "quit".to_string());
                Next::Finish(other.exit_status().unwrap_or(0), msg)
            }
        }
    }

    /// Notes QEMU's `ShutdownCause` of the run's end ([`RunReport::shutdown`]).
    fn set_ended_by(&self, cause: &'static str) {
        *self.ended_by.lock() = Some(cause);
    }

    /// The run loops' answer to a triple fault (`chain` says which faults,
    /// and where): reset, as a PC does, or end the run with `--no-reboot`.
    fn on_shutdown(&self, chain: &str) -> Next {
        if self.config.no_reboot && self.no_shutdown {
            tracing::warn!(target: "cpu", "{chain}: the guest stops (--no-reboot, --no-shutdown)");
            return Next::Stop("guest-reset");
        }
        if self.config.no_reboot {
            self.set_ended_by("guest-reset");
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
            shutdown: *self.ended_by.lock(),
        }
    }
}

/// The machine's own saved state: its clock and every device it holds.
///
/// Not in it: guest RAM (saved as memory, page by page, beside this) and
/// the vCPUs' states, which their engines hold while the guest runs (read
/// them through [`RunControl::pause`]); nor host resources: disk images,
/// the NAT's live flows, the console.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MachineState {
    /// The guest time reached.
    pub clock: ClockState,
    /// The chipset: interrupt controllers, timers, PCI, the ISA devices.
    pub chipset: PcChipsetState,
    /// COM1.
    pub serial: SerialState,
    /// fw_cfg's registers, on a BIOS boot.
    pub fw_cfg: Option<FwCfgState>,
    /// The NICs and disks, when the machine has any.
    pub devices: Option<DeviceManagerState>,
    /// The flash drives below the firmware, their contents included.
    pub flash: Vec<devices::pflash::PflashState>,
}

const MACHINE: &str = "machine";

/// The machine's devices and clock. A restore checks that the state is of
/// a machine built alike (fw_cfg and PCI functions present on both sides),
/// then restores the clock first, since the devices' times are its; when a
/// part refuses its state, the parts already restored get theirs from
/// before back, so a refused restore changes nothing. Call it while the
/// machine does not run.
impl Persist for Machine {
    type State = MachineState;

    fn save(&self) -> MachineState {
        MachineState {
            clock: self.clock.save_time(),
            chipset: self.chipset.save(),
            serial: self.serial.lock().save(),
            fw_cfg: self.fw_cfg.as_ref().map(|f| f.lock().save()),
            devices: self.devices.as_ref().map(Persist::save),
            flash: self.flash.iter().map(|f| f.lock().save()).collect(),
        }
    }

    fn restore(&mut self, state: &MachineState) -> Result<(), PersistError> {
        let presence = |ours: bool, theirs: bool, field: &'static str| {
            PersistError::check(ours == theirs, MACHINE, field, || {
                format!("is {} in the state and {} in this machine", present(theirs), present(ours))
            })
        };
        presence(self.fw_cfg.is_some(), state.fw_cfg.is_some(), "fw_cfg")?;
        presence(self.devices.is_some(), state.devices.is_some(), "devices")?;
        PersistError::check_len(MACHINE, "flash", state.flash.len(), self.flash.len())?;
        let before = self.save();
        let result = self.restore_parts(state);
        if result.is_err() {
            // What this machine just saved, it takes back.
            if let Err(e) = self.restore_parts(&before) {
                tracing::error!(target: "devices", "the machine refused its own state back: {e}");
            }
        }
        result
    }
}

fn present(yes: bool) -> &'static str {
    if yes {
        "present"
    } else {
        "absent"
    }
}

impl Machine {
    /// Restores the parts of `state` in order, stopping at the first refusal.
    fn restore_parts(&mut self, state: &MachineState) -> Result<(), PersistError> {
        self.clock.restore_time(&state.clock)?;
        self.chipset.restore(&state.chipset)?;
        self.serial.lock().restore(&state.serial)?;
        if let (Some(f), Some(s)) = (&self.fw_cfg, &state.fw_cfg) {
            f.lock().restore(s)?;
        }
        if let (Some(d), Some(s)) = (&mut self.devices, &state.devices) {
            d.restore(s)?;
        }
        for (f, s) in self.flash.iter().zip(&state.flash) {
            f.lock().restore(s)?;
        }
        Ok(())
    }
}

/// Maps the flash drives below the firmware's `bios_len` bytes at the top
/// of 4 GiB, the first one highest, as QEMU stacks its pflash units.
fn map_flash(
    drives: &mut [crate::config::FlashDrive],
    bios_len: u64,
    mmio: &mut Bus,
) -> Result<Vec<Arc<Mutex<devices::pflash::Pflash>>>, Error> {
    let mut top = (1u64 << 32) - bios_len;
    let mut out = Vec::new();
    for d in drives {
        let backing = match (&d.path, d.read_only) {
            (Some(p), false) => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|source| Error::Read { path: p.clone(), source })?,
            ),
            _ => None,
        };
        let size = d.contents.len() as u64;
        // The device holds the bytes from here on.
        let flash = devices::pflash::Pflash::new(d.name.clone(), std::mem::take(&mut d.contents), backing, d.read_only)
            .map_err(|e| Error::Config(e.to_string()))?;
        let base = top.checked_sub(size).filter(|&b| b >= mmu::PCI_HOLE_START).ok_or_else(|| {
            Error::Config(format!("the flash drive {} ({size} bytes) does not fit below the firmware", d.name))
        })?;
        let flash = Arc::new(Mutex::new(flash));
        let shared: SharedDevice = flash.clone();
        mmio.insert(shared, base, size)?;
        tracing::info!(target: "firmware", "flash {} at {base:#x}-{:#x}{}", d.name, top - 1, if d.read_only { " (read-only)" } else { "" });
        top = base;
        out.push(flash);
    }
    Ok(out)
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
    /// `--no-shutdown`: the guest shut down (QEMU's `ShutdownCause`):
    /// stop its vCPUs, and go on answering machine events.
    Stop(&'static str),
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

/// How long a throttled vCPU runs between two sleeps
/// ([`RunControl::set_throttle`]), as QEMU's CPU throttling.
pub const THROTTLE_PERIOD: Duration = Duration::from_millis(10);

/// Pausing the vCPU at an instruction boundary from another thread, for a
/// monitor or a test: while paused, the run loop holds the engine, and
/// the paused state can be read and replaced.
#[derive(Default)]
pub struct RunControl {
    /// Set while a pause is asked for: engines return to the loop.
    attention: Arc<AtomicBool>,
    inner: Mutex<Control>,
    cv: Condvar,
    /// Wakes the run loop and kicks its engine.
    kick: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Set while [`Machine::run_lifecycle`] runs the machine: requests
    /// are taken.
    lifecycle: AtomicBool,
    /// Told why, when the guest shut down under `--no-shutdown`.
    on_shutdown: Mutex<Option<ShutdownListener>>,
    /// The share of time the vCPUs sleep, in percent (auto-converge of a
    /// live migration); 0: they run freely.
    throttle: std::sync::atomic::AtomicU32,
    /// The pending reset is a monitor's `system_reset`
    /// ([`RunControl::host_reset`]).
    host_reset: AtomicBool,
}

/// Hears QEMU's `ShutdownCause` (`"guest-shutdown"`, `"guest-reset"`,
/// `"host-qmp-system-reset"`) when a guest under `--no-shutdown` shut down
/// (or a monitor reset it under `--no-reboot`) and its vCPUs stopped.
pub type ShutdownListener = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Control {
    pause: bool,
    /// The vCPU's state while it is paused.
    paused: Option<CpuState>,
    /// A state to load on resume.
    new_state: Option<CpuState>,
    /// Work on the whole machine the run stops for.
    op: Option<MachineOp>,
}

/// Work on the whole machine while no vCPU runs ([`RunControl::request`]):
/// it gets the machine and the stopped vCPUs, and may change both.
pub type MachineOp = Box<dyn FnOnce(&mut Machine, &mut Stopped) + Send>;

/// The vCPUs as a [`MachineOp`] finds them, and how they go on.
#[derive(Debug)]
pub struct Stopped {
    /// Every vCPU's state, in index order; the run goes on from these.
    pub vcpus: Vec<CpuState>,
    /// Whether the vCPUs were paused when the work was asked for; they
    /// stay so unless the work says otherwise ([`RunControl::set_pause`]).
    pub paused: bool,
}

/// How one run of the vCPUs ended.
enum Outcome {
    /// The guest's end: the run is over.
    Done(RunReport),
    /// Every vCPU stopped, with these states, for this work.
    Stopped(MachineOp, Vec<CpuState>),
}

impl RunControl {
    /// Pause the vCPU and return its state, or `None` if the run loop did
    /// not stop within `wait` (it is not running, or the engine is stuck
    /// in the host); the pause stays asked for until [`RunControl::resume`].
    pub fn pause(&self, wait: Duration) -> Option<CpuState> {
        let until = Instant::now() + wait;
        let mut c = self.inner.lock();
        c.pause = true;
        self.attention.store(true, Ordering::Release);
        if let Some(k) = &*self.kick.lock() {
            k();
        }
        while c.paused.is_none() {
            if self.cv.wait_until(&mut c, until).timed_out() {
                return c.paused;
            }
        }
        c.paused
    }

    /// While paused: load `state` when the vCPU resumes. `false` if it is
    /// not paused.
    pub fn set_state(&self, state: CpuState) -> bool {
        let mut c = self.inner.lock();
        if c.paused.is_none() {
            return false;
        }
        c.new_state = Some(state);
        c.paused = Some(state);
        true
    }

    /// Asks for a pause without waiting for it: the vCPUs stop at their
    /// first check, which for a machine not yet running is before its
    /// first instruction (QEMU's `-S`).
    pub fn hold(&self) {
        self.inner.lock().pause = true;
        self.attention.store(true, Ordering::Release);
    }

    /// Who hears of a guest's shutdown under `--no-shutdown`
    /// ([`Machine::set_no_shutdown`]): the monitors, for their `SHUTDOWN`
    /// event and run state.
    pub fn set_shutdown_listener(&self, listener: ShutdownListener) {
        *self.on_shutdown.lock() = Some(listener);
    }

    /// The guest shut down under `--no-shutdown` (its vCPUs are held).
    /// Files a reset for a monitor's `system_reset`; under `--no-reboot`
    /// it ends (or, with `--no-shutdown`, stops) the run with QEMU's
    /// cause `host-qmp-system-reset`. Whether it was taken (another event
    /// may be pending).
    pub fn host_reset(&self, events: &VmEvents) -> bool {
        self.host_reset.store(true, Ordering::Release);
        let taken = events.request(VmEvent::Reset);
        if !taken {
            self.host_reset.store(false, Ordering::Release);
        }
        taken
    }

    fn guest_shutdown(&self, reason: &str) {
        if let Some(l) = &*self.on_shutdown.lock() {
            l(reason);
        }
    }

    /// Wakes a run loop that holds its vCPUs paused, to look at the
    /// machine events. (The lock makes sure a loop about to wait sees the
    /// event first or is woken.)
    fn wake_paused(&self) {
        let _c = self.inner.lock();
        self.cv.notify_all();
    }

    /// Let the vCPU go on.
    pub fn resume(&self) {
        let mut c = self.inner.lock();
        c.pause = false;
        self.attention.store(c.op.is_some(), Ordering::Release);
        self.cv.notify_all();
    }

    /// Whether a pause is asked for (the vCPUs are stopped or stop soon).
    pub fn pause_asked(&self) -> bool {
        self.inner.lock().pause
    }

    /// Asks for `op` to be done on the whole machine: every vCPU stops
    /// (a paused machine at once), the run's engines go, `op` runs on the
    /// thread that runs the machine, and the vCPUs go on as it leaves
    /// them ([`Machine::run_lifecycle`]). `op` tells its own result (over
    /// a channel it holds). Refused when the machine does not run under
    /// [`Machine::run_lifecycle`] or another request waits.
    pub fn request(&self, op: MachineOp) -> Result<(), String> {
        if !self.lifecycle.load(Ordering::Acquire) {
            return Err("the machine is not running, or its run cannot stop for this".into());
        }
        let mut c = self.inner.lock();
        if c.op.is_some() {
            return Err("another snapshot or migration is in progress".into());
        }
        c.op = Some(op);
        self.attention.store(true, Ordering::Release);
        self.cv.notify_all();
        drop(c);
        if let Some(k) = &*self.kick.lock() {
            k();
        }
        Ok(())
    }

    /// The run is over: no more requests, and one still waiting is
    /// dropped (its requester hears of it when its channel closes).
    fn end_lifecycle(&self) {
        self.lifecycle.store(false, Ordering::Release);
        let op = self.inner.lock().op.take();
        drop(op);
    }

    /// Makes every vCPU sleep `percent` (0 to 99) of its time, in periods
    /// of [`THROTTLE_PERIOD`] of running (QEMU's CPU throttling, for
    /// auto-converge); 0 lets them run freely.
    ///
    /// A throttle that begins kicks the vCPUs: one that runs until an exit
    /// or a distant deadline (a guest wholly in KVM, looping without
    /// exits) comes back and runs by periods from then on.
    pub fn set_throttle(&self, percent: u32) {
        let was = self.throttle.swap(percent.min(99), Ordering::AcqRel);
        if was == 0 && percent > 0 {
            if let Some(k) = &*self.kick.lock() {
                k();
            }
        }
    }

    /// The share of time the vCPUs sleep, in percent.
    pub fn throttle(&self) -> u32 {
        self.throttle.load(Ordering::Acquire)
    }

    /// The end of a vCPU's next run, `until` at the latest: under a
    /// throttle, no later than the end of the running period, so that an
    /// engine that runs until its deadline (user code in KVM, which
    /// returns only for an exit or a kick) comes back to sleep its share
    /// ([`RunControl::throttle_point`]) between two entries.
    pub(crate) fn throttle_until(&self, until: Instant, ran: Duration) -> Instant {
        if self.throttle() == 0 {
            return until;
        }
        let left = THROTTLE_PERIOD.saturating_sub(ran).max(Duration::from_millis(1));
        until.min(Instant::now() + left)
    }

    /// After a vCPU ran for `ran` since its last sleep: under a throttle,
    /// once a period is used up, sleeps its share of the time (sooner
    /// awake when a pause or work on the machine is asked) and restarts
    /// the count.
    pub(crate) fn throttle_point(&self, ran: &mut Duration) {
        let percent = self.throttle();
        if percent == 0 {
            *ran = Duration::ZERO;
            return;
        }
        if *ran < THROTTLE_PERIOD {
            return;
        }
        let until = Instant::now() + ran.mul_f64(f64::from(percent) / f64::from(100 - percent));
        *ran = Duration::ZERO;
        loop {
            let now = Instant::now();
            if now >= until || self.attention.load(Ordering::Acquire) || self.throttle() == 0 {
                return;
            }
            std::thread::park_timeout((until - now).min(Duration::from_millis(5)));
        }
    }

    /// After a [`MachineOp`]: the engines look at the run control again
    /// only while a pause or another request waits.
    fn settle(&self) {
        let c = self.inner.lock();
        self.attention.store(c.pause || c.op.is_some(), Ordering::Release);
    }

    /// From a [`MachineOp`], before it tells its result: the vCPUs go on
    /// paused or not. (A `stop` or `cont` that follows the result then
    /// finds the run state the work left.)
    pub fn set_pause(&self, pause: bool) {
        let mut c = self.inner.lock();
        c.pause = pause;
        self.attention.store(pause || c.op.is_some(), Ordering::Release);
        self.cv.notify_all();
    }
}

/// The state an application processor waits for its start-up IPI in:
/// the reset state, without the bootstrap processor's flag.
fn ap_reset_state() -> CpuState {
    let mut s = CpuState::reset();
    s.msr.apic_base &= !(1 << 8);
    s
}

/// Passes every start-up event queued for vCPU `cpu` on to its engine,
/// in order (an INIT and the SIPI after it can both be waiting): an INIT
/// loads the reset state (the vCPU then waits for a SIPI), a SIPI starts
/// it in real mode at the vector's page.
pub(crate) fn start_up(
    intc: &devices::intc::InterruptController,
    cpu: usize,
    engine: &mut dyn Engine,
) -> Result<(), Error> {
    while let Some(event) = intc.take_startup(cpu) {
        match event {
            devices::intc::Startup::Init => engine.set_state(&ap_reset_state())?,
            devices::intc::Startup::Sipi(vector) => engine.set_state(&sipi_state(vector))?,
        }
    }
    Ok(())
}

/// The state a start-up IPI with `vector` starts a processor in: real
/// mode at `vector` << 12 (CS = `vector` << 8, IP = 0).
fn sipi_state(vector: u8) -> CpuState {
    let mut s = ap_reset_state();
    let cs = &mut s.seg[cpu::state::sreg::CS];
    cs.selector = u16::from(vector) << 8;
    cs.base = u64::from(vector) << 12;
    s.rip = 0;
    s
}

/// Load a kernel for direct boot and write the tables it needs.
/// The boot state, a note on what was loaded, and the kernel's code ranges.
type Loaded = (CpuState, Option<String>, Vec<(u64, u64)>);

/// Loads a kernel for a direct boot, with the tables a BIOS would leave:
/// the ACPI tables (unless `with_acpi` is off, QEMU's `-no-acpi`), the MP
/// table and SMBIOS.
fn load_kernel(
    mem: &GuestMemory,
    k: &KernelImage,
    acpi: &firmware::acpi::AcpiConfig,
    with_acpi: bool,
    smbios: &firmware::smbios::SmbiosBlobs,
) -> Result<Loaded, Error> {
    let mp = firmware::mptable::MpConfig::with_apic_ids(acpi.apic_ids.clone());
    let acpi = with_acpi.then(|| firmware::acpi::write_acpi_tables(mem, ACPI_TABLES, acpi)).transpose()?;
    let mp = firmware::mptable::write_mptable(mem, MP_TABLE, &mp)?;
    // The SMBIOS entry point after the MP table, in the area the OS scans.
    let smbios = firmware::smbios::write_smbios(mem, mp.end.next_multiple_of(16), smbios)
        .map_err(|e| Error::Config(format!("SMBIOS tables: {e}")))?;
    if firmware::multiboot::probe(&k.kernel)?.is_some() {
        let initrd = k.initrd.as_deref().map(|data| firmware::multiboot::MultibootModule { data, cmdline: "initrd" });
        let modules: Vec<firmware::multiboot::MultibootModule<'_>> = k
            .modules
            .iter()
            .map(|m| firmware::multiboot::MultibootModule { data: &m.data, cmdline: &m.cmdline })
            .chain(initrd)
            .collect();
        let cfg = firmware::multiboot::MultibootConfig {
            kernel: &k.kernel,
            cmdline: &k.cmdline,
            modules: &modules,
            e820: None,
            reserved: acpi
                .iter()
                .map(|a| firmware::multiboot::Reserved { what: "the ACPI tables", start: ACPI_TABLES, end: a.end })
                .chain([
                    firmware::multiboot::Reserved { what: "the MP table", start: MP_TABLE, end: mp.end },
                    firmware::multiboot::Reserved { what: "the SMBIOS tables", start: smbios.anchor, end: smbios.end },
                ])
                .collect(),
        };
        let boot = firmware::multiboot::load_multiboot(mem, &cfg)?;
        let note = Some(format!("multiboot kernel, entry {:#x}", boot.cpu.rip));
        return Ok((crate::boot::cpu_state(&boot.cpu), note, Vec::new()));
    }
    if !k.modules.is_empty() {
        return Err(Error::Config(
            "a Linux kernel takes one initrd, not a list of modules (those are for multiboot kernels)".into(),
        ));
    }
    let cfg = firmware::linux::LinuxBootConfig {
        kernel: &k.kernel,
        initrd: k.initrd.as_deref(),
        cmdline: &k.cmdline,
        path: k.path,
        acpi_rsdp: acpi.map(|a| a.rsdp),
        e820: None,
    };
    let boot = firmware::linux::load_linux(mem, &cfg)?;
    let note = format!("{:?} kernel, boot protocol {:#x}, entry {:#x}", boot.kind, boot.protocol, boot.entry);
    Ok((crate::boot::cpu_state(&boot.cpu), Some(note), boot.code))
}

#[cfg(test)]
mod persist_tests;
mod threads;

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(no_reboot: bool, timeout: Option<Duration>) -> Machine {
        Machine::new(MachineConfig { no_reboot, timeout, ..MachineConfig::for_test(Arc::default()) })
            .expect("a machine")
    }

    /// The built-in guest on a thread of its own, with its memory and its
    /// serial output.
    #[allow(clippy::type_complexity)]
    fn spawn_builtin() -> (Arc<RunControl>, Arc<GuestMemory>, Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<RunReport>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let o = out.clone();
        let runner = std::thread::spawn(move || {
            let m = Machine::new(MachineConfig::for_test(o)).expect("a machine");
            tx.send((m.control(), m.mem.clone())).unwrap();
            m.run(EngineKind::Interp).expect("the run")
        });
        let (control, mem) = rx.recv().unwrap();
        (control, mem, out, runner)
    }

    #[test]
    fn a_paused_guest_stands_still_and_resumes_where_it_was() {
        let (control, _, out, runner) = spawn_builtin();
        std::thread::sleep(Duration::from_millis(20));
        let first = control.pause(Duration::from_secs(20)).expect("the vCPU pauses");
        let printed = out.lock().len();
        std::thread::sleep(Duration::from_millis(300));
        let again = control.pause(Duration::from_secs(1)).expect("still paused");
        assert_eq!((first.rip, first.gpr, first.rflags), (again.rip, again.gpr, again.rflags), "no instruction ran");
        assert_eq!(out.lock().len(), printed, "no output while paused");
        // Writing the state read back changes nothing.
        assert!(control.set_state(first));
        control.resume();
        let report = runner.join().unwrap();
        let text = String::from_utf8_lossy(&out.lock()).into_owned();
        assert_eq!(report.status, 1, "the guest's own debug exit with EXIT_OK: {text}");
        assert_eq!(firmware::builtin::parse_checksum(&text), Some(firmware::builtin::expected_checksum()));
    }

    #[test]
    fn a_state_written_while_paused_is_the_one_that_runs_on() {
        let (control, mem, _, runner) = spawn_builtin();
        // `mov al, 0x2a; out 0xf4, al` in RAM at 0x7000.
        mem.write(0x7000, &[0xb0, 0x2a, 0xe6, 0xf4]).unwrap();
        assert!(!control.set_state(CpuState::reset()), "not paused yet");
        control.pause(Duration::from_secs(20)).expect("the vCPU pauses");
        // Real mode at 0700:0000, whatever mode the guest was in.
        let mut s = CpuState::reset();
        let cs = &mut s.seg[cpu::state::sreg::CS];
        (cs.selector, cs.base, s.rip) = (0x700, 0x7000, 0);
        assert!(control.set_state(s));
        assert_eq!(control.pause(Duration::from_secs(1)).map(|p| p.rip), Some(0), "the new state is the paused one");
        control.resume();
        assert_eq!(runner.join().unwrap().status, (0x2a << 1) | 1, "the written state ran");
    }

    #[test]
    fn events_end_the_run_with_their_status_and_a_reset_goes_on() {
        let m = machine(false, None);
        assert_eq!(m.pending_event(), Next::Go);
        m.events.request(VmEvent::DebugExit(0x10));
        assert_eq!(m.pending_event(), Next::Finish(0x21, None));
        assert_eq!(m.pending_event(), Next::Go, "an event is answered once");
        assert_eq!(m.on_event(VmEvent::PowerOff), Next::Finish(0, None));
        assert_eq!(m.on_event(VmEvent::Quit), Next::Finish(0, Some("quit".into())));
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
    fn no_shutdown_stops_the_guest_at_a_power_off() {
        let mut m = machine(false, None);
        m.set_no_shutdown(true);
        assert_eq!(m.on_event(VmEvent::PowerOff), Next::Stop("guest-shutdown"));
        assert_eq!(m.on_event(VmEvent::Reset), Next::Reset, "a reset goes on without --no-reboot");
        assert_eq!(m.on_event(VmEvent::Quit), Next::Finish(0, Some("quit".into())));
        assert_eq!(m.on_event(VmEvent::DebugExit(1)), Next::Finish(3, None));
        let mut m = machine(true, None);
        m.set_no_shutdown(true);
        assert_eq!(m.on_event(VmEvent::Reset), Next::Stop("guest-reset"));
        assert_eq!(m.on_shutdown("#GP -> #DF -> #GP"), Next::Stop("guest-reset"));
    }

    /// Under --no-shutdown, a guest that powers off stands still; a reset
    /// filed while it does resets it there (it stays paused), and it boots
    /// again on resume.
    #[test]
    fn a_powered_off_guest_waits_for_a_reset_and_boots_again() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let o = out.clone();
        let runner = std::thread::spawn(move || {
            let mut m =
                Machine::new(MachineConfig { no_reboot: false, ..MachineConfig::for_test(o) }).expect("a machine");
            m.set_no_shutdown(true);
            let (shut_tx, shut_rx) = std::sync::mpsc::channel();
            m.control().set_shutdown_listener(Box::new(move |r| {
                let _ = shut_tx.send(r.to_string());
            }));
            tx.send((m.control(), m.mem.clone(), m.events.clone(), shut_rx)).unwrap();
            m.run(EngineKind::Interp).expect("the run")
        });
        let (control, mem, events, shut) = rx.recv().unwrap();
        // `mov dx, 0x604 (PM1a_CNT); mov ax, SLP_TYP 0 | SLP_EN; out dx, ax; hlt` at 0x7000.
        mem.write(0x7000, &[0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xf4]).unwrap();
        control.pause(Duration::from_secs(20)).expect("the vCPU pauses");
        let mut s = CpuState::reset();
        let cs = &mut s.seg[cpu::state::sreg::CS];
        (cs.selector, cs.base, s.rip) = (0x700, 0x7000, 0);
        assert!(control.set_state(s));
        let printed = out.lock().len();
        control.resume();
        assert_eq!(shut.recv_timeout(Duration::from_secs(20)).as_deref(), Ok("guest-shutdown"));
        let off = control.pause(Duration::from_secs(5)).expect("held after the power-off");
        assert!((7..=8).contains(&off.rip), "stopped after the port write, at {:#x}", off.rip);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!runner.is_finished(), "the run goes on");
        assert!(events.request(VmEvent::Reset));
        let deadline = Instant::now() + Duration::from_secs(10);
        while control.pause(Duration::from_millis(100)).is_none_or(|p| p.rip != 0xfff0) {
            assert!(Instant::now() < deadline, "the machine was reset while paused");
        }
        assert_eq!(out.lock().len(), printed, "nothing ran while paused");
        control.resume();
        let report = runner.join().unwrap();
        let text = String::from_utf8_lossy(&out.lock()).into_owned();
        assert_eq!(report.status, 1, "the built-in guest ran again from the reset vector: {text}");
        assert_eq!(firmware::builtin::parse_checksum(&text), Some(firmware::builtin::expected_checksum()));
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
