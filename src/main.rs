//! `ferrovm`: the command-line front end. It parses options, assembles the
//! machine and runs it, and maps how the run ended to the exit status.

mod cli;
mod daemon;
mod qemu;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use cli::{Accel, Cli, Command, RunArgs};
use vmm::{bios, EngineKind, Error, Firmware, Machine, MachineConfig, SerialOut};

fn init_logging(trace: Option<&str>) {
    let mut filter = String::from("warn");
    if let Some(list) = trace {
        for cat in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if cat == "all" {
                filter.push_str(",debug");
            } else {
                filter.push_str(&format!(",{cat}=debug"));
            }
        }
    }
    if let Ok(env) = std::env::var("FERROVM_LOG") {
        filter = env;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })
}

/// The firmware's code and the flash drives below it, from `--pflash`
/// (QEMU's `-drive if=pflash` units, in order). The first drive is the
/// firmware: read-only, or a whole UEFI image (OVMF.fd) whose variable
/// store, at its start, becomes a writable flash drive of its own at the
/// same addresses. The others are CFI flash.
fn flash_drives(specs: &[String]) -> Result<(Option<Vec<u8>>, Vec<vmm::FlashDrive>), Error> {
    let mut code = None;
    let mut drives = Vec::new();
    for (unit, spec) in specs.iter().enumerate() {
        let mut parts = spec.split(',');
        let path = std::path::PathBuf::from(parts.next().unwrap_or_default());
        let (mut read_only, mut snapshot) = (false, false);
        for p in parts {
            match p.split_once('=') {
                Some(("readonly", v)) => read_only = qemu::on_off("--pflash", "readonly", v).map_err(Error::Config)?,
                Some(("snapshot", v)) => snapshot = qemu::on_off("--pflash", "snapshot", v).map_err(Error::Config)?,
                _ => {
                    return Err(Error::Config(format!(
                        "--pflash {spec}: unknown option {p} (PATH[,readonly=on][,snapshot=on])"
                    )))
                }
            }
        }
        let contents = read_file(&path)?;
        let name = path.display().to_string();
        let write_path = (!snapshot && !read_only).then(|| path.clone());
        if unit == 0 {
            bios::check_flash_image(&contents, &format!("--pflash {name}"))?;
            match bios::uefi_vars_len(&contents).filter(|_| !read_only) {
                Some(n) => {
                    drives.push(vmm::FlashDrive {
                        name: format!("{name} (variable store)"),
                        contents: contents[..n].to_vec(),
                        path: write_path,
                        read_only,
                    });
                    code = Some(contents[n..].to_vec());
                }
                None => {
                    if !read_only {
                        tracing::info!(
                            target: "firmware",
                            "--pflash {name}: no UEFI variable store at its start; the firmware's code is read-only"
                        );
                    }
                    code = Some(contents);
                }
            }
        } else {
            if contents.is_empty() || contents.len() % 4096 != 0 {
                return Err(Error::Config(format!(
                    "--pflash {name} is {} bytes: a flash drive is whole 4 KiB sectors",
                    contents.len()
                )));
            }
            drives.push(vmm::FlashDrive { name, contents, path: write_path, read_only });
        }
    }
    Ok((code, drives))
}

/// That `path` opens for reading, without reading it.
fn check_readable(path: &std::path::Path) -> Result<(), Error> {
    std::fs::File::open(path).map(drop).map_err(|source| Error::Read { path: path.to_path_buf(), source })
}

/// The files of `--kernel` and `--initrd`, read or only checked.
struct KernelFiles {
    /// The kernel's bytes (empty when only checked).
    kernel: Vec<u8>,
    /// A Linux kernel's initrd.
    initrd: Option<Vec<u8>>,
    /// A multiboot kernel's modules.
    modules: Vec<vmm::BootModule>,
}

/// Reads `--kernel` and `--initrd` as the kernel takes them (only checks
/// that they can be read when `check_only`): for a multiboot kernel,
/// `--initrd` is QEMU's list of modules (`FILE[ ARGS][,FILE[ ARGS]]...`,
/// `cli::parse_module_list`), each module's command line being its entry;
/// for any other kernel it is one file.
fn kernel_files(
    kernel: &std::path::Path,
    initrd: Option<&std::path::Path>,
    check_only: bool,
) -> Result<KernelFiles, Error> {
    // Checking reads no more than the probe looks at: the multiboot
    // header lies in the first 8 KiB.
    let image = if check_only {
        use std::io::Read;
        let mut head = Vec::new();
        std::fs::File::open(kernel)
            .and_then(|f| f.take(firmware::multiboot::MULTIBOOT_SEARCH as u64 + 16).read_to_end(&mut head))
            .map_err(|source| Error::Read { path: kernel.to_path_buf(), source })?;
        head
    } else {
        read_file(kernel)?
    };
    let multiboot = matches!(firmware::multiboot::probe(&image), Ok(Some(_)));
    let mut files =
        KernelFiles { kernel: if check_only { Vec::new() } else { image }, initrd: None, modules: Vec::new() };
    let Some(initrd) = initrd else { return Ok(files) };
    if !multiboot {
        if check_only {
            check_readable(initrd)?;
        } else {
            files.initrd = Some(read_file(initrd)?);
        }
        return Ok(files);
    }
    let list = initrd.to_str().ok_or_else(|| {
        Error::Config(format!("--initrd {}: a multiboot module list must be UTF-8", initrd.display()))
    })?;
    let modules = cli::parse_module_list(list).map_err(|e| Error::Config(format!("--initrd {list}: {e}")))?;
    for (file, cmdline) in modules {
        let path = std::path::Path::new(&file);
        if check_only {
            check_readable(path)?;
        } else {
            files.modules.push(vmm::BootModule { cmdline, data: read_file(path)? });
        }
    }
    Ok(files)
}

/// Opens the images of `--disk` and `--cdrom` (with their backing chains,
/// locked), each where it asked to be attached.
fn open_disks(specs: &[String], cdrom: Option<&std::path::Path>, snapshot: bool) -> Result<Vec<vmm::Drive>, Error> {
    if snapshot && specs.is_empty() {
        tracing::warn!(target: "devices", "--snapshot without --disk does nothing");
    }
    let open = |spec: devices::block::DiskSpec, what: &str| -> Result<vmm::Drive, Error> {
        // A CD-ROM is read-only: no overlay to take writes.
        let snapshot = snapshot && spec.media != devices::block::DiskMedia::Cdrom;
        let image = devices::block::open(&spec, snapshot).map_err(|e| Error::Config(format!("{what}: {e}")))?;
        let label = image.label().to_string();
        Ok(vmm::Drive {
            image: Some(Box::new(image)),
            label,
            interface: spec.interface,
            media: spec.media,
            index: spec.index,
        })
    };
    let mut drives = Vec::new();
    for s in specs {
        let spec: devices::block::DiskSpec = s.parse().map_err(|e| Error::Config(format!("--disk {s}: {e}")))?;
        drives.push(open(spec, &format!("--disk {s}"))?);
    }
    if let Some(p) = cdrom {
        let spec = devices::block::DiskSpec {
            path: p.to_path_buf(),
            format: Some(devices::block::ImageFormat::Raw),
            read_only: true,
            interface: devices::block::DiskInterface::Ide,
            media: devices::block::DiskMedia::Cdrom,
            index: Some(2),
            ..Default::default()
        };
        drives.push(open(spec, &format!("--cdrom {}", p.display()))?);
    }
    Ok(drives)
}

fn run(mut args: RunArgs) -> Result<i32, Error> {
    if args.daemonize {
        check_daemonize(&args)?;
        if !daemon::is_child() {
            return daemon::start_and_wait();
        }
        daemon::detach()?;
        // The background process works in / once set up.
        if let Some(d) = &mut args.snapshot_dir {
            *d = std::path::absolute(&*d).map_err(|e| Error::Config(format!("--snapshot-dir: {e}")))?;
        }
    }
    let _pidfile = args.pidfile.as_deref().map(daemon::Pidfile::write).transpose()?;
    // Inputs that name files are checked first, so a typo is reported as such.
    // --initrd is checked when it is read: for a multiboot kernel it is a
    // list of modules.
    for p in [&args.kernel, &args.bios].into_iter().flatten() {
        std::fs::metadata(p).map_err(|source| Error::Read { path: p.clone(), source })?;
    }
    let kind = match args.accel {
        Accel::Jit => EngineKind::Jit,
        Accel::Kvm => {
            // Say why KVM is unusable before building anything.
            hvf_kvm_accel::open()?;
            EngineKind::Kvm
        }
        Accel::Auto if hvf_kvm_accel::open().is_ok() => EngineKind::Kvm,
        Accel::Auto => EngineKind::Jit,
        Accel::Interp => EngineKind::Interp,
    };
    if args.kernel.is_none() && (args.initrd.is_some() || args.append.is_some()) {
        return Err(Error::Config("--initrd and --append need --kernel".into()));
    }
    let boot = vmm::storage::parse_boot(&args.boot).map_err(|e| Error::Config(format!("--boot {}: {e}", args.boot)))?;
    // n, o, p: a NIC's boot ROM, which the BIOS runs.
    let net_boot = std::iter::once(&boot.order).chain(&boot.once).any(|o| o.contains(['n', 'o', 'p']));
    let disks = match (&args.restore, args.clone) {
        // A clone's drives are the snapshot's, each disk under an overlay of its own.
        (Some(snap), true) => {
            let c = vmm::snapshot::clone::clone_disks(snap, args.clone_dir.as_deref())
                .map_err(|e| Error::Config(format!("--clone {}: {e}", snap.display())))?;
            eprintln!("ferrovm: clone of {}: its disk overlays are in {}", snap.display(), c.dir.display());
            c.drives
        }
        _ => open_disks(&args.disk, args.cdrom.as_deref(), args.snapshot)?,
    };
    let nics = args
        .nic
        .iter()
        .map(|s| s.parse::<net::NicSpec>().map_err(|e| Error::Config(format!("--nic {s}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(t) = args.timeout {
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::Config(format!("--timeout {t}: expected a positive number of seconds")));
        }
    }
    let from_saved_state = args.restore.is_some() || args.incoming.is_some() || args.loadvm.is_some();
    let (flash_code, flash) = flash_drives(&args.pflash)?;
    if flash_code.is_some() && args.kernel.is_some() {
        return Err(Error::Config("--pflash holds firmware: give it or --kernel, not both".into()));
    }
    // A kernel the BIOS boots (--kernel-boot bios, or --kernel with --bios).
    let via_bios = args.kernel.is_some() && (args.bios.is_some() || args.kernel_boot == cli::KernelBoot::Bios);
    let mut bios_kernel = None;
    let firmware = match (flash_code, &args.bios, &args.kernel) {
        (Some(code), _, _) => Firmware::Bios(code),
        (None, bios, Some(k)) if via_bios => {
            let image = match bios {
                Some(p) => {
                    let image = read_file(p)?;
                    bios::check_image(&image, Some(p))?;
                    image
                }
                None => bios::default_bios()?,
            };
            // Read also for a restore: the fw_cfg items are part of the
            // machine whose state is restored.
            let f = kernel_files(k, args.initrd.as_deref(), false)?;
            bios_kernel = Some(vmm::BiosKernel {
                kernel: f.kernel,
                initrd: f.initrd,
                cmdline: args.append.clone().unwrap_or_default(),
                modules: f.modules,
                name: k.display().to_string(),
            });
            Firmware::Bios(image)
        }
        (None, Some(p), _) => {
            let image = read_file(p)?;
            bios::check_image(&image, Some(p))?;
            Firmware::Bios(image)
        }
        // RAM from saved state: the kernel is not loaded, and its files are
        // only checked (a restore does not wait for 14 MiB to be read and
        // decompressed into RAM that the snapshot then replaces).
        (None, None, Some(k)) if from_saved_state => {
            kernel_files(k, args.initrd.as_deref(), true)?;
            Firmware::Kernel(vmm::KernelImage {
                kernel: Vec::new(),
                initrd: None,
                cmdline: args.append.clone().unwrap_or_default(),
                path: args.kernel_boot.path(),
                modules: Vec::new(),
                load: false,
            })
        }
        (None, None, Some(k)) => {
            let f = kernel_files(k, args.initrd.as_deref(), false)?;
            Firmware::Kernel(vmm::KernelImage {
                kernel: f.kernel,
                initrd: f.initrd,
                cmdline: args.append.clone().unwrap_or_default(),
                path: args.kernel_boot.path(),
                modules: f.modules,
                load: true,
            })
        }
        // A disk and no kernel, or a network boot: SeaBIOS boots it.
        (None, None, None) if !disks.is_empty() || net_boot => Firmware::Bios(bios::default_bios()?),
        (None, None, None) => Firmware::Builtin,
    };
    if args.screen.curses() && args.serial.on_stdio() {
        return Err(Error::Config(
            "--display curses draws on the terminal: put COM1 elsewhere (--serial file:PATH or none)".into(),
        ));
    }
    if let Some(b) = vport_on_stdio(&args) {
        if args.serial.on_stdio() {
            return Err(Error::Config(format!(
                "--vport ...,{b}: stdio is COM1's (--serial {}); put COM1 elsewhere (--serial file:PATH or none)",
                args.serial
            )));
        }
        if args.screen.curses() {
            return Err(Error::Config(format!("--vport ...,{b}: --display curses draws on the terminal")));
        }
    }
    let vga = vga_for(&args.screen)?;
    let stdio = args.serial.on_stdio() || vport_on_stdio(&args).is_some();
    let config = MachineConfig {
        mem: args.mem,
        firmware,
        serial: SerialOut::Backend(args.serial.clone()),
        no_reboot: args.no_reboot,
        timeout: args.timeout.map(Duration::from_secs_f64),
        kvm_split: args.kvm_split.mode(),
        kvm_pit: args.kvm_pit.pit(),
        kvm_irqchip: args.kvm_irqchip.irqchip(),
        jit_cache: args.jit_cache.clone(),
        // The full model where ferrovm runs every instruction itself; KVM
        // gives the guest its own CPUID, filtered to the smaller model.
        cpu_model: args.cpu.unwrap_or(if kind == EngineKind::Kvm {
            cpu::cpuid::Model::V2
        } else {
            cpu::cpuid::Model::Max
        }),
        topology: args.cpus,
        vcpu_threads: args.vcpu_threads.mode(),
        vga,
        usb: usb_config(&args),
        rtc_start_ns: args.rtc_base.start_ns(),
        guest_log: guest_log(&args, kind)?,
        flash,
        debugcon: args.debugcon.clone(),
        smbios: crate::cli::parse_smbios(&args.smbios, args.uuid).map_err(Error::Config)?,
        rng: args.rng.clone(),
        vports: args.vport.clone(),
        hpet: !args.no_hpet,
        acpi: !args.no_acpi,
        bios_kernel,
    };
    let storage = vmm::Storage {
        drives: disks,
        boot_order: boot.order,
        boot_once: boot.once,
        boot_menu: boot.menu,
        boot_menu_wait_ms: boot.menu_wait_ms,
    };
    let mut machine = Machine::with_devices(config, &nics, storage)?;
    machine.set_no_shutdown(args.no_shutdown);
    if let Some(note) = &machine.boot_note {
        tracing::info!(target: "firmware", "{note}");
        if args.stats && args.restore.is_none() && args.incoming.is_none() {
            eprintln!("ferrovm: {note}");
        }
    }
    let restored = restore_or_receive(&args, &mut machine)?;
    let deferred = args.incoming.as_deref() == Some("defer");
    let paused =
        args.paused || deferred || restored.as_ref().is_some_and(|r| r.run_state == vmm::snapshot::RunState::Paused);
    let display = open_vnc(&args.screen, &machine)?;
    // -display curses: the VGA's text on this terminal, its keys to the guest.
    let _terminal = open_terminal(&args.screen, &machine, Some(Box::new(std::io::stdin())))?;
    let gdb = start_gdb(&args, &machine, kind, paused)?;
    let monitors = start_monitors(&args, &machine, kind, display.clone(), paused, gdb.is_some())?;
    let backend = monitors.as_ref().map(|(b, _)| b.clone());
    if let Some(b) = &backend {
        if deferred {
            b.defer_incoming(!args.paused);
        } else if args.paused && restored.is_none() {
            b.prelaunch();
        }
        if let Some(dir) = &args.snapshot_dir {
            b.set_snapshot_dir(vmm::snapshot::SnapshotDir::new(dir.clone()));
        }
    }
    if args.stats && restored.is_some() {
        let since = PROCESS_START.get().map_or(Duration::ZERO, std::time::Instant::elapsed);
        eprintln!(
            "ferrovm: the restored guest {} {:.1} ms after the process started",
            if paused { "waits for cont" } else { "is ready" },
            since.as_secs_f64() * 1e3
        );
    }
    if let Some((path, label)) = machine.serial_pty() {
        // QEMU's words, which scripts look for.
        eprintln!("char device redirected to {} (label {label})", path.display());
        machine.attach_pty()?;
    }
    for (path, label) in machine.vport_ptys() {
        eprintln!("char device redirected to {} (label {label})", path.display());
    }
    let _raw = if stdio {
        // `mon:stdio`: Ctrl-A c gives the keys to a human monitor.
        let mux = match &monitors {
            Some((_, mon)) if stdio_mux(&args) => Some(vmm::monitor::serial_monitor(mon.clone())),
            _ => None,
        };
        machine.attach_stdin(mux)?;
        devices::console::enter_raw_mode()?
    } else {
        None
    };
    if args.no_shutdown && backend.is_none() && !stdio {
        tracing::warn!(
            target: "vmm",
            "--no-shutdown without a monitor or a console: after the guest powers off, only a signal ends ferrovm"
        );
    }
    if args.daemonize {
        daemon::ready()?;
    }
    quit_on_signals(machine.events.clone(), backend.clone())?;
    let restored_running = restored.is_some() && !paused;
    let report = machine.run_lifecycle(kind, restored.map(|r| r.vcpus))?;
    drop(gdb);
    devices::console::restore_terminal();
    // The monitors may keep the display past the return: its Unix socket goes now.
    if let Some(server) = display.as_ref().and_then(|d| d.server.as_ref()) {
        server.remove_unix_socket();
    }
    if let Some(b) = &backend {
        // The guest powered off (or reset under --no-reboot), or a
        // monitor's reset ended it; else a timeout or an error.
        let reason = report.shutdown.unwrap_or("host-error");
        b.run_ended(reason.starts_with("guest-"), reason);
    }
    if let Some(m) = &report.message {
        eprintln!("ferrovm: {m}");
    }
    if args.stats {
        if let (true, Some(first), Some(start)) = (restored_running, machine.first_run(), PROCESS_START.get()) {
            eprintln!(
                "ferrovm: the restored guest runs: its first instruction {:.1} ms after the process started",
                first.saturating_duration_since(*start).as_secs_f64() * 1e3
            );
        }
        eprintln!("ferrovm: accel {}, {:.3} s", report.accel, report.total.as_secs_f64());
        for line in &report.stats {
            eprintln!("ferrovm: {line}");
        }
        if let Some(n) = report.instructions {
            eprintln!("ferrovm: {n} guest instructions, {:.1} MIPS", n as f64 / report.total.as_secs_f64() / 1e6);
        }
        for line in machine.nic_stats() {
            eprintln!("ferrovm: {line}");
        }
        eprintln!("ferrovm: {} unclaimed port/MMIO accesses ignored", report.unclaimed_io);
    }
    Ok(report.status)
}

/// The display adapter `screen` asks for: the standard VGA with `--vga
/// std`, `--vnc` or `--display curses`, else none.
fn vga_for(screen: &cli::ScreenArgs) -> Result<vmm::Vga, Error> {
    let curses = screen.curses();
    Ok(match (screen.vga, &screen.vnc) {
        (Some(cli::VgaArg::None), _) if curses => {
            return Err(Error::Config("--display curses shows the VGA's text, and --vga none leaves it out".into()))
        }
        _ if curses => vmm::Vga::Std,
        (Some(cli::VgaArg::Std), _) | (None, Some(_)) => vmm::Vga::Std,
        (Some(cli::VgaArg::None), Some(v)) => {
            return Err(Error::Config(format!("--vnc {v} shows the VGA screen, and --vga none leaves it out")))
        }
        (Some(cli::VgaArg::None), None) | (None, None) => vmm::Vga::None,
    })
}

/// The VNC server `--vnc` asks for, showing `machine`'s VGA.
fn open_vnc(screen: &cli::ScreenArgs, machine: &Machine) -> Result<Option<Arc<vmm::display::Display>>, Error> {
    match (&screen.vnc, machine.vga()) {
        (Some(spec), Some(vga)) => Ok(Some(Arc::new(
            vmm::display::start_vnc(spec, vga, machine.i8042(), machine.usb()).map_err(Error::Config)?,
        ))),
        _ => Ok(None),
    }
}

/// The terminal display `--display curses` asks for: `machine`'s VGA text
/// on stdout, and the keys read from `input` typed into the guest.
fn open_terminal(
    screen: &cli::ScreenArgs,
    machine: &Machine,
    input: Option<Box<dyn std::io::Read + Send>>,
) -> Result<Option<vmm::display::TerminalDisplay>, Error> {
    match machine.vga() {
        Some(vga) if screen.curses() => Ok(Some(
            vmm::display::start_terminal(
                vga,
                machine.i8042(),
                machine.usb(),
                machine.events.clone(),
                Box::new(std::io::stdout()),
                input,
            )
            .map_err(Error::Config)?,
        )),
        _ => Ok(None),
    }
}

/// `ferrovm demo`: the built-in guest under each engine, on the display
/// `args` asks for. One VNC server shows each machine in turn and, after
/// the table, the last one's screen until Enter (or the end of stdin); a
/// terminal display draws each run's text, and the table follows it.
fn demo(args: &cli::DemoArgs) -> Result<i32, Error> {
    let vga = vga_for(&args.screen)?;
    let mut vnc: Option<Arc<vmm::display::Display>> = None;
    let mut show = |m: &Machine| -> Result<Box<dyn std::any::Any>, String> {
        match (vnc.as_ref(), m.vga()) {
            (Some(d), Some(adapter)) => d.screen.show(adapter),
            (Some(_), None) => {}
            (None, _) => vnc = open_vnc(&args.screen, m).map_err(|e| e.to_string())?,
        }
        // The built-in guest reads no keys.
        let terminal = open_terminal(&args.screen, m, None).map_err(|e| e.to_string())?;
        Ok(Box::new(terminal))
    };
    let status = ferrovm_bench::demo::demo_on(&mut ferrovm_bench::demo::Screen { vga, show: Some(&mut show) });
    if let Some(server) = vnc.as_ref().and_then(|d| d.server.as_ref()) {
        let at = server.local_addrs().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let at = if at.is_empty() { args.screen.vnc.clone().unwrap_or_default() } else { at };
        eprintln!("\nferrovm demo: the VNC server on {at} shows the last guest's screen; press Enter to end");
        let _ = std::io::stdin().read_line(&mut String::new());
        server.remove_unix_socket();
    }
    Ok(status)
}

/// The host side of the virtio-serial port on stdio, if one is: `stdio`
/// or `mon:stdio`.
fn vport_on_stdio(args: &RunArgs) -> Option<&str> {
    args.vport.iter().map(|v| v.backend.as_str()).find(|b| matches!(*b, "stdio" | "mon:stdio"))
}

/// Whether stdin is shared between the guest and a human monitor:
/// `--serial mon:stdio`, or a virtio-serial port on `mon:stdio`.
fn stdio_mux(args: &RunArgs) -> bool {
    args.serial == devices::console::SerialBackend::MonStdio || vport_on_stdio(args) == Some("mon:stdio")
}

/// What `--daemonize` cannot go with: the terminal it leaves (QEMU's
/// "cannot use stdio with -daemonize").
fn check_daemonize(args: &RunArgs) -> Result<(), Error> {
    let refuse = |what: &str| {
        Err(Error::Config(format!("--daemonize: {what}: the background process has no terminal (stdio is /dev/null)")))
    };
    if args.serial.on_stdio() {
        return refuse(&format!("COM1 is on {} (give --serial file:PATH or none)", args.serial));
    }
    if let Some(b) = vport_on_stdio(args) {
        return refuse(&format!("a virtio-serial port is on {b}"));
    }
    if args.screen.curses() {
        return refuse("--display curses draws on the terminal");
    }
    for (flag, spec) in args.qmp.iter().map(|s| ("--qmp", s)).chain(args.monitor.iter().map(|s| ("--monitor", s))) {
        if let Ok(Some(c)) = monitor::parse_chardev_uri(spec) {
            if matches!(c.endpoint, monitor::Endpoint::Stdio) {
                return refuse(&format!("{flag} {spec} is on stdio"));
            }
        }
    }
    Ok(())
}

/// When the process started, for `--stats` after a restore.
static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// `--restore DIR/NAME` or `--incoming URI`: loads the saved or migrated
/// state into the machine just built, before any of its vCPUs runs. A
/// state that fails any check ends the process with the error.
fn restore_or_receive(args: &RunArgs, machine: &mut Machine) -> Result<Option<vmm::snapshot::Restored>, Error> {
    let what = match (&args.restore, &args.incoming) {
        _ if args.loadvm.is_some() => format!("--loadvm {}", args.loadvm.as_deref().unwrap_or_default()),
        // The monitor's migrate-incoming takes it.
        (None, Some(u)) if u == "defer" => return Ok(None),
        (Some(p), _) => format!("--restore {}", p.display()),
        (None, Some(u)) => format!("--incoming {u}"),
        (None, None) => return Ok(None),
    };
    let fail = |e: vmm::snapshot::SnapshotError| Error::Config(format!("{what}: {e}"));
    if let Some(name) = &args.loadvm {
        let disks = vmm::snapshot::qcow2::snapshot_disks(machine.disks()).map_err(fail)?.ok_or_else(|| {
            Error::Config(format!("{what}: the machine has no qcow2 disk the guest writes to hold snapshots"))
        })?;
        let r = vmm::snapshot::qcow2::load(machine, &disks, name).map_err(fail)?;
        if args.stats {
            eprintln!("ferrovm: loaded snapshot {name} in {:.1} ms", ms(r.took));
        }
        return Ok(Some(r));
    }
    if let Some(path) = &args.restore {
        let r = if args.clone {
            let (r, macs) = vmm::snapshot::clone::restore_clone(machine, path).map_err(fail)?;
            for mac in macs {
                eprintln!("ferrovm: clone NIC with MAC {}", net::MacAddr(mac));
            }
            r
        } else {
            vmm::snapshot::restore_from(machine, path).map_err(fail)?
        };
        if args.stats {
            eprintln!("ferrovm: restored {} in {:.1} ms (state read, RAM mapped)", path.display(), ms(r.took));
        }
        return Ok(Some(r));
    }
    let uri: vmm::snapshot::MigrationUri = args
        .incoming
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| Error::Config(format!("{what}: {e}")))?;
    let (r, ram) = vmm::snapshot::Incoming::listen(&uri).and_then(|l| l.receive(machine)).map_err(fail)?;
    if args.stats {
        eprintln!(
            "ferrovm: received the migrated guest in {:.1} ms: {} of {} bytes of RAM, {} pages of zeros skipped",
            ms(r.took),
            ram.written,
            ram.total,
            ram.zero_pages
        );
    }
    Ok(Some(r))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `ferrovm snapshot list DIR`.
fn snapshot(cmd: &cli::SnapshotCommand) -> Result<i32, Error> {
    match cmd {
        cli::SnapshotCommand::List { dir } if dir.is_file() => {
            print!(
                "{}",
                vmm::snapshot::qcow2::list_image(dir).map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?
            );
            Ok(0)
        }
        cli::SnapshotCommand::List { dir } => {
            let list = vmm::snapshot::SnapshotDir::new(dir.clone())
                .list()
                .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
            if list.is_empty() {
                println!("no snapshots in {}", dir.display());
                return Ok(0);
            }
            println!("{:<20} {:>10} {:>10}  {:<19}  {:>12}", "NAME", "RAM", "ON DISK", "SAVED", "GUEST TIME");
            for s in &list {
                println!(
                    "{:<20} {:>10} {:>10}  {:<19}  {:>11.3}s{}",
                    s.name,
                    vmm::snapshot::human_size(s.ram),
                    vmm::snapshot::human_size(s.disk_bytes),
                    vmm::snapshot::date(s.saved_at),
                    s.guest_ns as f64 / 1e9,
                    s.problem.as_ref().map(|p| format!("  ({p})")).unwrap_or_default()
                );
            }
            Ok(0)
        }
    }
}

/// `ferrovm screendump`: asks a running VM's QMP monitor for its screen.
fn screendump(args: &cli::ScreendumpArgs) -> Result<(), Error> {
    use std::io::{BufRead, BufReader, Write};
    let fail = |e: &dyn std::fmt::Display| Error::Config(format!("screendump through {}: {e}", args.qmp));
    let format = match &args.format {
        Some(f) => f.clone(),
        None if args.file.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) => "png".into(),
        None => "ppm".into(),
    };
    // The VM writes the file: give it an absolute path.
    let file = std::path::absolute(&args.file).map_err(|e| fail(&e))?;
    let (reader, mut writer): (Box<dyn std::io::Read>, Box<dyn Write>) = match args.qmp.strip_prefix("tcp:") {
        Some(addr) => {
            let s = std::net::TcpStream::connect(addr).map_err(|e| fail(&e))?;
            (Box::new(s.try_clone().map_err(|e| fail(&e))?), Box::new(s))
        }
        None => {
            let s = std::os::unix::net::UnixStream::connect(&args.qmp).map_err(|e| fail(&e))?;
            (Box::new(s.try_clone().map_err(|e| fail(&e))?), Box::new(s))
        }
    };
    let mut lines = BufReader::new(reader).lines();
    let mut next = move || -> Result<String, Error> {
        loop {
            let l = lines.next().ok_or_else(|| fail(&"the monitor closed the connection"))?.map_err(|e| fail(&e))?;
            if !l.contains(r#""event":"#) || l.starts_with(r#"{"return""#) || l.starts_with(r#"{"error""#) {
                return Ok(l);
            }
        }
    };
    let greeting = next()?;
    if !greeting.starts_with(r#"{"QMP""#) {
        return Err(fail(&format!("not a QMP monitor (it said {greeting})")));
    }
    let file_json = file.to_string_lossy().replace('\\', "\\\\").replace('"', "\\\"");
    for cmd in [
        r#"{"execute":"qmp_capabilities"}"#.to_string(),
        format!(r#"{{"execute":"screendump","arguments":{{"filename":"{file_json}","format":"{format}"}}}}"#),
    ] {
        writer.write_all(format!("{cmd}\n").as_bytes()).map_err(|e| fail(&e))?;
        let reply = next()?;
        if !reply.starts_with(r#"{"return""#) {
            return Err(fail(&reply));
        }
    }
    Ok(())
}

/// The USB controller and its devices `--usb` and `--usb-device` ask for.
fn usb_config(args: &RunArgs) -> Option<Vec<devices::usb::UsbDeviceKind>> {
    let kinds: Vec<devices::usb::UsbDeviceKind> = args
        .usb_device
        .iter()
        .map(|d| match d {
            cli::UsbDeviceArg::Tablet => devices::usb::UsbDeviceKind::Tablet,
            cli::UsbDeviceArg::Mouse => devices::usb::UsbDeviceKind::Mouse,
            cli::UsbDeviceArg::Kbd => devices::usb::UsbDeviceKind::Keyboard,
        })
        .collect();
    (args.usb || !kinds.is_empty()).then_some(kinds)
}

/// The machine's monitor back end and the monitors on it.
type Monitors = (Arc<vmm::monitor::MachineBackend>, Arc<monitor::Monitor>);

/// SIGTERM, SIGINT and SIGHUP end the run as they end QEMU's: the first
/// one quits cleanly, as QMP's `quit` does (the disks flushed, the
/// monitors told `SHUTDOWN` with reason `host-signal`, the terminal, the
/// sockets and the pidfile put back or removed, exit status 0), even when
/// the guest is stopped; a second one ends the process at once.
fn quit_on_signals(
    events: Arc<devices::power::VmEvents>,
    backend: Option<Arc<vmm::monitor::MachineBackend>>,
) -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let what = "host-signals";
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|source| Error::Thread { what, source })?;
    std::thread::Builder::new()
        .name(what.into())
        .spawn(move || {
            let mut each = signals.forever();
            if let Some(first) = each.next() {
                eprintln!("ferrovm: terminating on signal {first}");
                match &backend {
                    Some(b) => b.quit("host-signal"),
                    None => {
                        events.request(devices::power::VmEvent::Quit);
                    }
                }
            }
            if let Some(again) = each.next() {
                devices::console::restore_terminal();
                std::process::exit(128 + again);
            }
        })
        .map(drop)
        .map_err(|source| Error::Thread { what, source })
}

/// The guest CPU log of `--log` (QEMU's `-d`), into `--log-file` or stderr.
fn guest_log(args: &RunArgs, kind: EngineKind) -> Result<Option<Arc<cpu::GuestLog>>, Error> {
    let Some(items) = &args.log else { return Ok(None) };
    let out: Box<dyn std::io::Write + Send> = match &args.log_file {
        Some(p) => Box::new(std::io::LineWriter::new(
            std::fs::File::create(p).map_err(|e| Error::Config(format!("--log-file {}: {e}", p.display())))?,
        )),
        None => Box::new(std::io::stderr()),
    };
    let items: Vec<&str> = items.split(',').filter(|i| !i.is_empty()).collect();
    let log = cpu::GuestLog::new(&items, out).map_err(|e| Error::Config(format!("--log: {e}")))?;
    if kind == EngineKind::Kvm {
        tracing::warn!(
            target: "vmm",
            "--log: under KVM only what the interpreter runs is logged (with split execution, the kernel's side)"
        );
    }
    Ok(Some(Arc::new(log)))
}

/// Starts the gdb stub of `--gdb`, and holds the vCPUs for it when
/// `paused` (`--paused`, QEMU's -S).
fn start_gdb(
    args: &RunArgs,
    machine: &Machine,
    kind: EngineKind,
    paused: bool,
) -> Result<Option<vmm::gdb::GdbServer>, Error> {
    let Some(spec) = &args.gdb else { return Ok(None) };
    let Some(at) = vmm::gdb::parse_gdb_dev(spec).map_err(Error::Config)? else { return Ok(None) };
    if let Some(fits) = machine.debug_stops_fit(kind) {
        machine.debug.limit_stops(fits);
    }
    let server = vmm::gdb::GdbServer::start(machine, &at)?;
    if paused {
        machine.control().hold();
    }
    if let Some(a) = server.local_addr {
        tracing::info!(target: "gdb", "gdb stub listening on {a}");
    }
    Ok(Some(server))
}

/// Starts the QMP and HMP monitors `args` ask for (`--qmp`, `--monitor`,
/// and the one of `--serial mon:stdio`, which the console's input thread
/// runs) and holds the vCPUs when `paused` (`--paused`, or a guest
/// restored paused); `None` when there is none.
fn start_monitors(
    args: &RunArgs,
    machine: &Machine,
    kind: EngineKind,
    display: Option<Arc<vmm::display::Display>>,
    paused: bool,
    gdb: bool,
) -> Result<Option<Monitors>, Error> {
    let mux = stdio_mux(args);
    if args.qmp.is_empty() && args.monitor.is_empty() && !mux {
        if args.paused && gdb {
            // gdb's `continue` starts it.
            return Ok(None);
        }
        if args.paused {
            return Err(Error::Config(
                "--paused needs a monitor to continue from (--qmp, --monitor or --serial mon:stdio)".into(),
            ));
        }
        if args.incoming.as_deref() == Some("defer") {
            return Err(Error::Config(
                "--incoming defer waits for a monitor's migrate-incoming: give one (--qmp, --monitor or --serial mon:stdio)"
                    .into(),
            ));
        }
        if paused {
            return Err(Error::Config(
                "the guest was saved paused: give a monitor to continue it from (--qmp, --monitor or --serial mon:stdio)"
                    .into(),
            ));
        }
        if args.snapshot_dir.is_some() {
            tracing::warn!(target: "vmm", "--snapshot-dir without a monitor (--qmp or --monitor) does nothing");
        }
        return Ok(None);
    }
    let accel = if kind == EngineKind::Kvm { "kvm" } else { "tcg" };
    let backend = vmm::monitor::MachineBackend::new(machine, display, accel, None);
    if paused {
        backend.hold();
    }
    let version = monitor::Version::qemu_7_2(format!("ferrovm {}", env!("CARGO_PKG_VERSION")));
    let mon = monitor::Monitor::new(backend.clone(), version);
    backend.set_monitor(mon.clone());
    let stdio_serial = args.serial.on_stdio() || vport_on_stdio(args).is_some();
    let specs = args
        .qmp
        .iter()
        .map(|s| ("--qmp", s, monitor::Mode::Control { pretty: false }))
        .chain(args.monitor.iter().map(|s| ("--monitor", s, monitor::Mode::Readline)));
    for (flag, spec, mode) in specs {
        let what = |e: &dyn std::fmt::Display| Error::Config(format!("{flag} {spec}: {e}"));
        let Some(chardev) = monitor::parse_chardev_uri(spec).map_err(|e| what(&e))? else { continue };
        if matches!(chardev.endpoint, monitor::Endpoint::Stdio) && stdio_serial {
            return Err(what(
                &"COM1 or a virtio-serial port is on stdio already: put the monitor on a socket, or the port \
                  elsewhere (--serial mon:stdio or --vport ...,mon:stdio shares stdio with a human monitor)",
            ));
        }
        mon.listen(&chardev, mode).map_err(|e| what(&e))?;
    }
    Ok(Some((backend, mon)))
}

fn main() -> ExitCode {
    let _ = PROCESS_START.set(std::time::Instant::now());
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Under QEMU's name, or `ferrovm qemu ...`: QEMU's syntax, which clap
    // does not read.
    if argv.first().is_some_and(|a| qemu::invoked_as_qemu(a)) {
        return run_qemu(&argv[1..], None);
    }
    if argv.get(1).is_some_and(|a| a == "qemu") {
        return run_qemu(&argv[2..], None);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; bad flags are.
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    if let Command::Qemu(q) = &cli.command {
        let args: Vec<std::ffi::OsString> = q.args.iter().map(Into::into).collect();
        return run_qemu(&args, cli.trace.as_deref());
    }
    init_logging(cli.trace.as_deref());
    execute(cli)
}

/// Runs a parsed command and maps how it ended to the exit status.
fn execute(cli: Cli) -> ExitCode {
    let result = std::panic::catch_unwind(move || match cli.command {
        Command::Run(args) => run(*args),
        Command::Screendump(args) => screendump(&args).map(|()| 0),
        Command::Snapshot(cmd) => snapshot(&cmd),
        Command::Demo(args) => demo(&args),
        Command::Bench(args) => Ok(ferrovm_bench::run(&args)),
        Command::Qemu(_) => Err(Error::Config("`ferrovm qemu` is run before the other commands".into())),
    });
    devices::console::restore_terminal();
    match result {
        Ok(Ok(status)) => ExitCode::from((status & 0xff) as u8),
        Ok(Err(e)) => {
            eprintln!("ferrovm: {e}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("ferrovm: internal error (a bug): the run was aborted; please report it with the command line");
            ExitCode::from(1)
        }
    }
}

/// A qemu-system-x86_64 command line (`src/qemu.rs`): translated into
/// `ferrovm run`'s arguments, then run as they are.
fn run_qemu(argv: &[std::ffi::OsString], trace: Option<&str>) -> ExitCode {
    init_logging(trace);
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("ferrovm: {e}");
        ExitCode::from(1)
    };
    let args: Vec<String> = match argv.iter().map(|a| a.clone().into_string()).collect() {
        Ok(a) => a,
        Err(a) => return fail(&format!("{}: an argument that is not UTF-8", a.to_string_lossy())),
    };
    let t = match qemu::translate(&args) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    if let Some(text) = t.info {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    // The background process of -daemonize says nothing its starter said.
    if !daemon::is_child() {
        for note in &t.notes {
            eprintln!("ferrovm: note: {note}");
        }
    }
    tracing::info!(target: "firmware", "{}: ferrovm run {}", qemu::PROGRAM, t.args.join(" "));
    let cli = match Cli::try_parse_from(["ferrovm", "run"].into_iter().map(String::from).chain(t.args)) {
        Ok(c) => c,
        Err(e) => return fail(&e.render()),
    };
    execute(cli)
}

#[cfg(test)]
mod qemu_corpus;
