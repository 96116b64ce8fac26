//! The command line: `ferrovm run`, `ferrovm snapshot`, `ferrovm demo` and
//! `ferrovm bench`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use devices::console::SerialBackend;

/// A full-system x86 PC emulator: interpreter, JIT and KVM.
#[derive(Debug, Parser)]
#[command(name = "ferrovm", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log categories to trace at debug level, comma-separated
    /// (cpu, mmu, jit, devices, net, firmware, accel, all).
    #[arg(long, global = true, value_name = "LIST")]
    pub trace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest: the built-in one, a Linux kernel, or a firmware image.
    Run(Box<RunArgs>),
    /// Save a running VM's screen to a file, through its QMP socket
    /// (`--qmp unix:PATH,server=on,wait=off`, or QEMU's -qmp).
    Screendump(ScreendumpArgs),
    /// List the snapshots of a --snapshot-dir directory.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Boot the built-in guest under every available accelerator and compare.
    Demo(DemoArgs),
    /// Measure whole guests under each accelerator (and QEMU when installed).
    Bench(ferrovm_bench::BenchArgs),
    /// Run a qemu-system-x86_64 command line (as ferrovm does when started
    /// under that name, e.g. through a symlink).
    #[command(disable_help_flag = true)]
    Qemu(QemuArgs),
}

/// `ferrovm screendump`.
#[derive(Debug, Clone, Args)]
pub struct ScreendumpArgs {
    /// The VM's QMP socket: a Unix socket's path, or tcp:HOST:PORT.
    #[arg(long, value_name = "PATH|tcp:HOST:PORT")]
    pub qmp: String,
    /// The file to write (the VM writes it: a path it can reach).
    pub file: PathBuf,
    /// png, or ppm (QEMU's default). Default: from the file's extension,
    /// else ppm.
    #[arg(long, value_name = "png|ppm")]
    pub format: Option<String>,
}

/// `ferrovm snapshot`.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// The snapshots in DIR: name, size on disk, when saved, guest time;
    /// or, for a qcow2 image, those inside it, as `qemu-img snapshot -l`
    /// lists them.
    List {
        /// The directory `--snapshot-dir` named, or a qcow2 image.
        dir: PathBuf,
    },
}

/// `ferrovm qemu`: QEMU's options, read by `src/qemu.rs`.
#[derive(Debug, Clone, Args)]
pub struct QemuArgs {
    /// The options, as qemu-system-x86_64 takes them (`-help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

/// Which CPU engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when /dev/kvm is usable, otherwise the best emulator.
    Auto,
    /// Hardware-assisted virtualization through /dev/kvm.
    Kvm,
    /// Cranelift translation of guest blocks.
    Jit,
    /// The interpreter (the reference semantics).
    Interp,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Jit => "jit",
            Accel::Interp => "interp",
        })
    }
}

/// Boot path for a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelBoot {
    /// `fast` where the fast path can boot the kernel, otherwise `classic`.
    Auto,
    Fast,
    Classic,
    /// SeaBIOS boots it, as QEMU's -kernel does: a bzImage's kernel,
    /// initrd and command line go over fw_cfg to the linuxboot option ROM,
    /// a multiboot kernel and its modules to the multiboot option ROM.
    Bios,
}

/// A multiboot kernel's modules as QEMU's `-initrd` lists them: entries
/// separated by commas (`,,` is a comma inside an entry), each a file name
/// and, after a space, the rest of the module's command line. Each entry
/// gives (file, the module's command line: the whole entry).
pub fn parse_module_list(spec: &str) -> Result<Vec<(String, String)>, String> {
    let mut entries = Vec::new();
    let mut entry = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                entry.push(',');
            }
            ',' => entries.push(std::mem::take(&mut entry)),
            c => entry.push(c),
        }
    }
    entries.push(entry);
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| match entry.split(' ').next() {
            Some(file) if !file.is_empty() => Ok((file.to_string(), entry)),
            _ => Err(format!(
                "module {} has no file name (modules are separated by commas, `,,` is a comma in a name)",
                i + 1
            )),
        })
        .collect()
}

impl KernelBoot {
    pub fn path(self) -> firmware::linux::BootPath {
        match self {
            KernelBoot::Auto | KernelBoot::Bios => firmware::linux::BootPath::Auto,
            KernelBoot::Fast => firmware::linux::BootPath::Fast,
            KernelBoot::Classic => firmware::linux::BootPath::Classic,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// CPU engine.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Guest RAM: a number with an optional K, M, G or T suffix (no suffix: MiB).
    #[arg(long, default_value = "512M", value_parser = parse_mem)]
    pub mem: u64,
    /// Virtual CPUs: a count, and optionally their topology as QEMU's
    /// `-smp` takes it: `N[,sockets=S][,cores=C][,threads=T]` (1 to 255
    /// CPUs; left-out levels are derived, cores first: `4` is one socket of
    /// four cores). CPUID, the MADT and the MP table describe it.
    #[arg(long, value_name = "N[,sockets=S,cores=C,threads=T]", default_value = "1", value_parser = vmm::parse_smp)]
    pub cpus: cpu::cpuid::Topology,
    /// How the interpreter and the JIT run more than one vCPU: `multi`
    /// (the default, as QEMU's TCG runs x86 guests: a host thread per
    /// vCPU) or `single` (round-robin on one host thread, a slice each:
    /// the same run gives the same interleaving). Under KVM every vCPU has
    /// its own thread.
    #[arg(long, value_enum, default_value_t = VcpuThreadsArg::Multi)]
    pub vcpu_threads: VcpuThreadsArg,
    /// The CPU model: `v2` (the default; x86-64-v2: SSE4.2, XSAVE for the
    /// x87/SSE state, MOVBE, LZCNT, BMI1/2, no AVX) or `max` (x86-64-v3:
    /// v2 plus AVX, AVX2, FMA, F16C and the YMM state, with AES-NI and
    /// PCLMULQDQ, and the protection keys PKU and PKS). The default is
    /// `max` under the interpreter and the JIT, so that software built for
    /// x86-64-v3 runs with no flag (glibc and other software pick their
    /// AVX2 paths, which the JIT compiles), and `v2` under KVM. Under
    /// --accel kvm the guest gets what KVM can give of the model, and the
    /// features it lacks are named.
    #[arg(long, value_name = "MODEL", value_parser = parse_cpu_model)]
    pub cpu: Option<cpu::cpuid::Model>,
    /// A Linux kernel (bzImage or vmlinux) or multiboot kernel (ELF or
    /// a.out kludge) to boot, directly or through the BIOS (--kernel-boot).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// An initial ramdisk for --kernel; for a multiboot kernel its modules,
    /// as QEMU's -initrd takes them: `FILE[ ARGS][,FILE[ ARGS]]...` (`,,`
    /// is a comma), each module's command line being its entry.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, value_name = "STR")]
    pub append: Option<String>,
    /// How a bzImage is booted: `fast` decompresses it on the host and enters
    /// the kernel proper (64-bit kernels with a gzip, xz, lz4, zstd or
    /// uncompressed payload); `classic` runs the kernel's own decompressor,
    /// entering a 32-bit kernel through the 32-bit boot protocol; `auto`
    /// takes the fast path where it can and the classic one otherwise;
    /// `bios` has SeaBIOS (or --bios) boot it through QEMU's linuxboot
    /// option ROM (a multiboot kernel through its multiboot ROM), as QEMU's
    /// -kernel does, so that the kernel finds the BIOS's state. With
    /// --bios, a --kernel always boots that way.
    #[arg(long, value_enum, default_value_t = KernelBoot::Auto)]
    pub kernel_boot: KernelBoot,
    /// A BIOS image (SeaBIOS), mapped to end at 4 GiB and run from the reset
    /// vector. With --disk and no --kernel the default is Debian's
    /// /usr/share/seabios/bios-256k.bin (package seabios).
    #[arg(long, value_name = "PATH", conflicts_with = "pflash")]
    pub bios: Option<PathBuf>,
    #[arg(
        long,
        value_name = "PATH[,readonly=on][,snapshot=on]",
        help = "A flash drive, QEMU's -drive if=pflash; may be repeated, the first one mapped highest below 4 GiB. \
                The first holds the firmware's code (UEFI: OVMF_CODE.fd with readonly=on, or the whole OVMF.fd, whose \
                variable store then stays writable); the next ones are CFI flash the firmware programs (OVMF_VARS.fd: \
                UEFI variables, written back to the file). readonly=on refuses writes; snapshot=on keeps them in memory"
    )]
    pub pflash: Vec<String>,
    // The help text is an attribute, not a doc comment: its brackets are
    // option syntax, which rustdoc would read as links.
    #[arg(
        long,
        value_name = "SPEC",
        help = "A disk: PATH[,format=raw|qcow2][,readonly=on][,snapshot=on][,if=virtio|ide|floppy]\
                [,media=disk|cdrom][,index=N]. May be repeated. if=virtio (the default) is a virtio-blk function \
                (PCI slots after the NICs); if=ide a drive on the PIIX3 IDE controller at position index= (0 \
                primary master, 1 primary slave, 2 secondary master, 3 secondary slave; else the first free one); \
                media=cdrom an ATAPI CD-ROM on IDE (read-only); if=floppy a disk in floppy drive A: (index=0) or \
                B: (index=1). Without format=, a qcow2 header is detected, else raw; snapshot=on is --snapshot for \
                this disk"
    )]
    pub disk: Vec<String>,
    /// A CD-ROM image (an ISO): an ATAPI drive at IDE position 2, the
    /// secondary master (QEMU's -cdrom). El Torito images boot through
    /// SeaBIOS with --boot d.
    #[arg(long, value_name = "PATH")]
    pub cdrom: Option<PathBuf>,
    /// The order SeaBIOS tries the drives in, QEMU's -boot order= letters:
    /// c (hard disks: IDE, then virtio), d (CD-ROMs), a (floppy), n to p
    /// (network: the first to third NIC's iPXE boot ROM). Default cad. Then QEMU's -boot keys: once=ORDER (the first boot's order; a
    /// reset goes back to ORDER), menu=on (SeaBIOS's boot menu, ESC),
    /// splash-time=MS (how long SeaBIOS waits for ESC).
    #[arg(
        long,
        value_name = "ORDER[,once=ORDER][,menu=on|off][,splash-time=MS]",
        default_value = vmm::storage::DEFAULT_BOOT_ORDER
    )]
    pub boot: String,
    /// Disks take writes in temporary overlays that vanish at exit; the
    /// images themselves are only read.
    #[arg(long)]
    pub snapshot: bool,
    #[arg(
        long,
        value_name = "SPEC",
        help = "A network card: user|hub|tap|bridge[,model=e1000|virtio][,mac=..][,vectors=N][,hostfwd=...]\
                [,restrict=on][,pcap=PATH][,romfile=FILE]; tap takes ifname=, script=, downscript=; bridge takes br= \
                (default br0). romfile= is the NIC's boot ROM (empty: none; default with --boot n: the model's \
                iPXE ROM, efi-e1000.rom or efi-virtio.rom). May be repeated (PCI slots 3, 4, ...; MACs 52:54:00:12:34:56, :57, ...)"
    )]
    pub nic: Vec<String>,
    #[command(flatten)]
    pub screen: ScreenArgs,
    /// The PIIX3's USB controller (UHCI at PCI 00:01.2, QEMU's -usb).
    #[arg(long)]
    pub usb: bool,
    /// A device on the USB controller's root hub (two ports): `tablet`
    /// (an absolute pointer: VNC's pointer lands where the client's is),
    /// `mouse` (a relative boot mouse; the pointer goes to it when there is
    /// no tablet) or `kbd` (a boot keyboard); the VNC client's input goes
    /// to them rather than to the PS/2 mouse and keyboard. Implies --usb.
    #[arg(long, value_enum)]
    pub usb_device: Vec<UsbDeviceArg>,
    /// What the RTC counts from (QEMU's -rtc base=): utc (the host's time
    /// in UTC, the default), localtime (the host's local time, as Windows
    /// and DOS keep it), or a date, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, at
    /// which the RTC starts and runs on from.
    #[arg(long, value_name = "utc|localtime|DATE", default_value = "utc", value_parser = parse_rtc_base)]
    pub rtc_base: RtcBase,
    /// A QMP monitor (QEMU's -qmp): unix:PATH or tcp:HOST:PORT, with
    /// ,server=on (QEMU's default here) and ,wait=off (else the machine
    /// waits for the first client before it starts). May be repeated.
    #[arg(long, value_name = "unix:PATH|tcp:HOST:PORT[,server=on,wait=off]")]
    pub qmp: Vec<String>,
    /// A human monitor (QEMU's -monitor, HMP): stdio, unix:PATH or
    /// tcp:HOST:PORT with the options of --qmp. May be repeated.
    #[arg(long, value_name = "stdio|unix:PATH|tcp:HOST:PORT[,server=on,wait=off]")]
    pub monitor: Vec<String>,
    /// Start with the vCPUs stopped, until a monitor's `cont` or gdb's
    /// `continue` (QEMU's -S).
    #[arg(long)]
    pub paused: bool,
    /// A gdb stub (QEMU's -gdb; -s is tcp::1234): gdb's `target remote`
    /// finds it at tcp::PORT, tcp:HOST:PORT or unix:PATH. Each vCPU is a
    /// thread; breakpoints, hardware breakpoints and steps run the guest in
    /// the interpreter while they are set.
    #[arg(long, value_name = "tcp::PORT|tcp:HOST:PORT|unix:PATH", value_parser = parse_gdb)]
    pub gdb: Option<String>,
    /// Where the monitors' `savevm NAME` keeps snapshots and `loadvm NAME`
    /// and `delvm NAME` find them, for a machine without a qcow2 disk the
    /// guest writes (such disks keep them inside, as QEMU does):
    /// DIR/NAME/state, DIR/NAME/memory and copies of the disks.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Start from a snapshot (DIR/NAME, as `savevm` wrote it) instead of
    /// booting: the machine is built from this command line, which must
    /// describe the machine that was saved, its RAM is the snapshot's
    /// memory file mapped copy-on-write, and the guest goes on as it was
    /// saved, running or paused.
    #[arg(long, value_name = "DIR/NAME", conflicts_with = "incoming")]
    pub restore: Option<PathBuf>,
    /// With --restore: start a clone of the snapshot. Its disks are new
    /// qcow2 overlays over the snapshot's copies of the saved machine's
    /// disks (only ever read), its NICs get fresh MAC addresses, and its
    /// RAM maps the snapshot's memory file copy-on-write: clones run side
    /// by side and share the pages none of them writes.
    #[arg(long, requires = "restore", conflicts_with_all = ["disk", "cdrom"])]
    pub clone: bool,
    /// Where --clone puts the clone's disk overlays (default: a new
    /// directory beside the snapshot, named on stderr).
    #[arg(long, value_name = "DIR", requires = "clone")]
    pub clone_dir: Option<PathBuf>,
    /// Start from snapshot NAME kept inside the machine's qcow2 disks (as
    /// `savevm NAME` or QEMU wrote it; QEMU's -loadvm): every disk goes
    /// back to it and the guest goes on as it was saved.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["restore", "incoming"])]
    pub loadvm: Option<String>,
    /// Take a migrated guest instead of booting (QEMU's -incoming):
    /// exec:CMD reads the stream from CMD's stdout, tcp:HOST:PORT and
    /// unix:PATH wait for one connection. The whole stream is checked
    /// before the guest runs; it stays paused if it was paused when its
    /// migration began (and with --paused, until `cont`). `defer` waits,
    /// stopped ("inmigrate"), for a monitor's migrate-incoming URI, as
    /// libvirt drives QEMU.
    #[arg(long, value_name = "exec:CMD|tcp:HOST:PORT|unix:PATH|defer")]
    pub incoming: Option<String>,
    /// Where COM1 goes: stdio, mon:stdio (stdio shared with a human
    /// monitor: Ctrl-A c switches between the two), file:PATH, pty[,id=LABEL]
    /// (a new pseudo-terminal, named on stderr under LABEL, serial0 by
    /// default) or none.
    #[arg(long, default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialBackend,
    /// A debug console at port 0xE9 (QEMU's -debugcon), the port kernels
    /// write debug text to a byte at a time: stdio, file:PATH or none.
    #[arg(long, value_name = "stdio|file:PATH|none", value_parser = parse_debugcon)]
    pub debugcon: Option<SerialBackend>,
    /// An SMBIOS field set, in QEMU's -smbios syntax: type=0 (vendor,
    /// version, date, release, uefi), type=1 (manufacturer, product,
    /// version, serial, uuid, sku, family), type=2 (manufacturer, product,
    /// version, serial, asset, location), type=3 (manufacturer, version,
    /// serial, asset, sku), type=4 (manufacturer, version) or type=11
    /// (value=STRING or path=FILE, repeatable). May be repeated.
    #[arg(long, value_name = "type=N,KEY=VALUE,...")]
    pub smbios: Vec<String>,
    /// A virtio entropy device (QEMU's -device virtio-rng-pci): the host
    /// file it reads, such as /dev/urandom, and with max-bytes= per
    /// period= milliseconds (default 1000) how fast. May be repeated.
    #[arg(long, value_name = "[filename=]PATH[,max-bytes=N][,period=MS]", value_parser = parse_rng)]
    pub rng: Vec<vmm::RngConfig>,
    /// A port of the virtio-serial function (QEMU's -device
    /// virtio-serial-pci with virtconsole or virtserialport): `console`
    /// (hvc in Linux; it may have a name= too) or `name=NAME` (a named
    /// port, /dev/virtio-ports/NAME, as org.qemu.guest_agent.0), and its
    /// host side: `socket=PATH` (a Unix
    /// socket ferrovm listens on; with server=off, one it connects to),
    /// `file=PATH` (output only), `pty[=LABEL]` (a new pseudo-terminal,
    /// announced on stderr), `stdio` (ferrovm's stdin and stdout, while
    /// COM1 is elsewhere; `mon:stdio` shares them with a human monitor) or
    /// `null`. May be repeated: one function holds every port, in order.
    #[arg(
        long,
        value_name = "console[,name=NAME]|name=NAME,socket=PATH[,server=off]|file=PATH|pty[=LABEL]|stdio|mon:stdio|null",
        value_parser = parse_vport
    )]
    pub vport: Vec<vmm::VportConfig>,
    /// A PC without its HPET (QEMU's -no-hpet): neither the device nor its
    /// ACPI table.
    #[arg(long)]
    pub no_hpet: bool,
    /// A PC without ACPI (QEMU's -no-acpi): no ACPI tables and no PIIX4
    /// PM function, so the guest cannot power off through ACPI (a reset
    /// under --no-reboot ends the run).
    #[arg(long)]
    pub no_acpi: bool,
    /// The machine's UUID (QEMU's -uuid): SMBIOS type 1 and fw_cfg.
    #[arg(long, value_name = "UUID", value_parser = firmware::smbios::parse_uuid)]
    pub uuid: Option<[u8; 16]>,
    /// Exit instead of rebooting when the guest resets.
    #[arg(long)]
    pub no_reboot: bool,
    /// When the guest powers off (or, with --no-reboot, resets), stop it
    /// instead of ending the run (QEMU's -no-shutdown): the monitors say
    /// "shutdown", `system_reset` then `cont` start it again, and `quit`
    /// (or Ctrl-A x on the console) ends the run.
    #[arg(long)]
    pub no_shutdown: bool,
    /// Go to the background once the machine is set up (QEMU's
    /// -daemonize): this command returns 0 while the VM runs on in a
    /// process of its own (its own session, stdio on /dev/null, in /), or
    /// the set-up's error and status 1. COM1 and the monitors cannot be on
    /// stdio then.
    #[arg(long)]
    pub daemonize: bool,
    /// Write the VM's process ID to FILE (QEMU's -pidfile; with
    /// --daemonize, the background process's), and remove it at the end.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// QEMU's -d logs of the guest CPU, in QEMU's formats, under the
    /// interpreter and the JIT: int (each interrupt and exception
    /// delivered in protected mode, with the registers), in_asm (each
    /// block of guest code as it is decoded), cpu_reset; to stderr or
    /// --log-file.
    #[arg(long, value_name = "int,in_asm,cpu_reset")]
    pub log: Option<String>,
    /// Where --log writes (QEMU's -D); the file is truncated.
    #[arg(long, value_name = "FILE", requires = "log")]
    pub log_file: Option<PathBuf>,
    /// Print execution statistics when the guest stops.
    #[arg(long)]
    pub stats: bool,
    /// Under --accel kvm, run the guest kernel (CPL 0) in the JIT and only
    /// user code (CPL 3) in KVM. `auto` does so where KVM itself runs CPL-0
    /// code in software (kvm_pvm) and either the host loaded the kernel
    /// (--kernel on the fast path, or a vmlinux) or the machine boots through
    /// the BIOS; a kernel the host did not load has its code found in the
    /// guest once user code runs (everything before runs in the JIT).
    #[arg(long, value_enum, default_value_t = KvmSplit::Auto)]
    pub kvm_split: KvmSplit,
    /// Under --accel kvm with KVM's interrupt controllers: keep the PIT in
    /// KVM (`kernel`, the default) or emulate it in ferrovm (`user`), which
    /// raises IRQ 0 on KVM's PIC and I/O APIC.
    #[arg(long, value_enum, default_value_t = KvmPitArg::Kernel)]
    pub kvm_pit: KvmPitArg,
    /// Under --accel kvm: KVM's PIC, I/O APIC and local APIC (`kernel`,
    /// the default), or ferrovm's own (`user`, QEMU's kernel-irqchip=off),
    /// whose interrupts ferrovm injects before each entry into KVM; one
    /// vCPU.
    #[arg(long, value_enum, default_value_t = KvmIrqchipArg::Kernel)]
    pub kvm_irqchip: KvmIrqchipArg,
    /// Keep the JIT's compiled code in this folder between runs (created
    /// when missing): a later run of the same guest takes its hot code from
    /// there instead of compiling it again. Entries are checked against the
    /// code they were compiled from, this build of ferrovm and this host's
    /// CPU; any other entry is ignored. The folder must be as trusted as
    /// ferrovm itself: its entries run as machine code.
    #[arg(long, value_name = "DIR")]
    pub jit_cache: Option<std::path::PathBuf>,
}

/// The display adapter and what shows it: the options `ferrovm run` and
/// `ferrovm demo` share.
#[derive(Debug, Clone, Args)]
pub struct ScreenArgs {
    /// The display adapter: std (QEMU's standard VGA at PCI 00:02.0; on a
    /// BIOS boot SeaBIOS's VGA BIOS sets it up, the built-in guest sets
    /// text mode 3 itself) or none. Default: std when --vnc or --display
    /// curses is given, else none.
    #[arg(long, value_enum)]
    pub vga: Option<VgaArg>,
    /// Show the VGA screen to VNC clients, as QEMU's -vnc takes it:
    /// HOST:N (TCP port 5900+N; an empty HOST is every interface),
    /// [,websocket=PORT|on] (the same server over WebSocket, for noVNC in a
    /// browser), [,password=on] (VNC authentication; set the password with
    /// the monitor's set_password), [,to=L]; or none (a screen without a
    /// listener, for screendumps).
    #[arg(long, value_name = "HOST:N[,websocket=PORT][,password=on]")]
    pub vnc: Option<String>,
    /// `curses`: draw the VGA's text modes on this terminal and type its
    /// keys into the guest (COM1 must go elsewhere); `none`: no display.
    #[arg(long, value_enum)]
    pub display: Option<DisplayArg>,
}

impl ScreenArgs {
    /// Whether the VGA's text is drawn on this terminal.
    pub fn curses(&self) -> bool {
        self.display == Some(DisplayArg::Curses)
    }
}

/// `ferrovm demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// With a display (--vnc, --display curses), every machine gets the
    /// VGA and the built-in guest's lines show on it as well as on COM1;
    /// after the table, a VNC display stays up until Enter.
    #[command(flatten)]
    pub screen: ScreenArgs,
}

/// `--display`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DisplayArg {
    None,
    Curses,
}

/// `--usb-device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsbDeviceArg {
    Tablet,
    Mouse,
    Kbd,
}

/// `--vga`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VgaArg {
    Std,
    None,
}

/// `--vcpu-threads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VcpuThreadsArg {
    Single,
    Multi,
}

impl VcpuThreadsArg {
    pub fn mode(self) -> vmm::VcpuThreads {
        match self {
            VcpuThreadsArg::Single => vmm::VcpuThreads::Single,
            VcpuThreadsArg::Multi => vmm::VcpuThreads::Multi,
        }
    }
}

/// `--kvm-pit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvmPitArg {
    Kernel,
    User,
}

impl KvmPitArg {
    pub fn pit(self) -> vmm::KvmPit {
        match self {
            KvmPitArg::Kernel => vmm::KvmPit::InKernel,
            KvmPitArg::User => vmm::KvmPit::User,
        }
    }
}

/// `--kvm-irqchip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvmIrqchipArg {
    Kernel,
    User,
}

impl KvmIrqchipArg {
    pub fn irqchip(self) -> vmm::KvmIrqchip {
        match self {
            KvmIrqchipArg::Kernel => vmm::KvmIrqchip::InKernel,
            KvmIrqchipArg::User => vmm::KvmIrqchip::User,
        }
    }
}

/// `--kvm-split`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvmSplit {
    Auto,
    On,
    Off,
}

impl KvmSplit {
    pub fn mode(self) -> vmm::SplitMode {
        match self {
            KvmSplit::Auto => vmm::SplitMode::Auto,
            KvmSplit::On => vmm::SplitMode::On,
            KvmSplit::Off => vmm::SplitMode::Off,
        }
    }
}

fn parse_cpu_model(s: &str) -> Result<cpu::cpuid::Model, String> {
    s.parse()
}

fn parse_serial(s: &str) -> Result<SerialBackend, String> {
    s.parse::<SerialBackend>().map_err(|e| e.to_string())
}

fn parse_debugcon(s: &str) -> Result<SerialBackend, String> {
    match s.parse::<SerialBackend>().map_err(|e| e.to_string())? {
        SerialBackend::MonStdio | SerialBackend::Pty(_) => {
            Err(format!("{s} is COM1's: the debug console takes stdio, file:PATH or none"))
        }
        b => Ok(b),
    }
}

/// Parses `--rng`: the source file, and QEMU's `max-bytes=` and `period=`.
pub fn parse_rng(s: &str) -> Result<vmm::RngConfig, String> {
    let o = crate::qemu::parse_opts(s, Some("filename"))?;
    o.only("--rng", &["filename", "max-bytes", "period"])?;
    let source = o.get("filename").filter(|f| !f.is_empty()).ok_or("the source file is missing")?;
    let num = |k: &str| -> Result<Option<u64>, String> {
        o.get(k).map(|v| v.parse::<u64>().map_err(|_| format!("{k}={v}: expected a number"))).transpose()
    };
    let (max, period) = (num("max-bytes")?, num("period")?);
    // QEMU's defaults: no byte limit, a period of one second.
    let limit = max.map(|m| (m, period.unwrap_or(1000)));
    Ok(vmm::RngConfig { source: source.into(), limit })
}

/// Parses `--vport`: the port (`console` or `name=NAME`) and its host
/// side (`socket=PATH[,server=off]`, `file=PATH`, `pty[=LABEL]`, `stdio`,
/// `mon:stdio`, `null`), which becomes the port backend's spec.
pub fn parse_vport(s: &str) -> Result<vmm::VportConfig, String> {
    use devices::virtio::console::PortConfig;
    let (mut console, mut name) = (false, None);
    let mut backend = None;
    let mut server = None;
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match (k, v) {
            ("console", "") => console = true,
            ("name", n) if !n.is_empty() => name = Some(n),
            ("socket", p) if !p.is_empty() => backend = Some(format!("socket:{p}")),
            ("file", p) if !p.is_empty() => backend = Some(format!("file:{p}")),
            ("null", "") => backend = Some("null".to_string()),
            ("pty", "") => backend = Some("pty".to_string()),
            ("stdio" | "mon:stdio", "") => backend = Some(k.to_string()),
            ("pty", l) if !l.contains(':') => backend = Some(format!("pty:{l}")),
            ("server", "on" | "off") => server = Some(v),
            _ => {
                return Err(format!(
                    "'{part}' is not a port key: console or name=NAME, then socket=PATH[,server=off], file=PATH, \
                     pty[=LABEL], stdio, mon:stdio or null"
                ))
            }
        }
    }
    let port = match (console, name) {
        (true, None) => PortConfig::console(),
        (true, Some(n)) => PortConfig::console().with_name(n),
        (false, Some(n)) => PortConfig::serial(n),
        (false, None) => return Err("give the port: console, or name=NAME".into()),
    };
    let mut backend =
        backend.ok_or("give the host side: socket=PATH, file=PATH, pty[=LABEL], stdio, mon:stdio or null")?;
    match server {
        Some("off") if backend.starts_with("socket:") => backend.push_str(",server=off"),
        Some(_) if !backend.starts_with("socket:") => return Err("server= is for socket= only".into()),
        _ => {}
    }
    Ok(vmm::VportConfig { port, backend })
}

/// Reads `--smbios` field sets (QEMU's `-smbios` syntax) and `--uuid`
/// into what the SMBIOS tables say. A key QEMU has that ferrovm does not
/// carry into the tables is refused by name.
pub fn parse_smbios(sets: &[String], uuid: Option<[u8; 16]>) -> Result<firmware::smbios::SmbiosConfig, String> {
    use firmware::smbios::{Baseboard, BiosInfo};
    let mut c = firmware::smbios::SmbiosConfig::default();
    c.system.uuid = uuid;
    for set in sets {
        let o = crate::qemu::parse_opts(set, None)?;
        let e = |msg: String| format!("-smbios {set}: {msg}");
        if o.get("file").is_some() {
            return Err(
                e("file= (binary tables) is not supported: ferrovm builds its tables from type= fields".into()),
            );
        }
        let kind = o.get("type").ok_or_else(|| e("type= is missing".into()))?;
        let keys = |known: &[&str]| -> Result<(), String> {
            match o.pairs.iter().find(|(k, _)| k != "type" && !known.contains(&k.as_str())) {
                Some((k, _)) => Err(e(format!(
                    "'{k}=' is not supported for type {kind} (ferrovm takes {})",
                    known.iter().map(|k| format!("{k}=")).collect::<Vec<_>>().join(", ")
                ))),
                None => Ok(()),
            }
        };
        // The string fields of a type, by key; `keys` takes them all.
        let strings = |fields: Vec<(&str, &mut Option<String>)>, extra: &[&str]| -> Result<(), String> {
            let known: Vec<&str> = fields.iter().map(|(k, _)| *k).chain(extra.iter().copied()).collect();
            keys(&known)?;
            for (k, field) in fields {
                if let Some(v) = o.get(k) {
                    *field = Some(v.to_string());
                }
            }
            Ok(())
        };
        match kind {
            "0" => {
                let b = c.bios.get_or_insert_with(BiosInfo::default);
                strings(
                    vec![("vendor", &mut b.vendor), ("version", &mut b.version), ("date", &mut b.date)],
                    &["release", "uefi"],
                )?;
                if let Some(r) = o.get("release") {
                    let parsed =
                        r.split_once('.').and_then(|(a, b)| Some((a.parse::<u8>().ok()?, b.parse::<u8>().ok()?)));
                    b.release = Some(parsed.ok_or_else(|| e(format!("release={r}: give MAJOR.MINOR, each 0-255")))?);
                }
                if let Some(u) = o.get("uefi") {
                    b.uefi = crate::qemu::on_off("-smbios", "uefi", u)?;
                }
            }
            "1" => {
                let y = &mut c.system;
                strings(
                    vec![
                        ("manufacturer", &mut y.manufacturer),
                        ("product", &mut y.product),
                        ("version", &mut y.version),
                        ("serial", &mut y.serial),
                        ("sku", &mut y.sku),
                        ("family", &mut y.family),
                    ],
                    &["uuid"],
                )?;
                if let Some(u) = o.get("uuid") {
                    y.uuid = Some(firmware::smbios::parse_uuid(u).map_err(e)?);
                }
            }
            "2" => {
                let b = c.baseboard.get_or_insert_with(Baseboard::default);
                strings(
                    vec![
                        ("manufacturer", &mut b.manufacturer),
                        ("product", &mut b.product),
                        ("version", &mut b.version),
                        ("serial", &mut b.serial),
                        ("asset", &mut b.asset),
                        ("location", &mut b.location),
                    ],
                    &[],
                )?;
            }
            "3" => {
                let h = &mut c.chassis;
                strings(
                    vec![
                        ("manufacturer", &mut h.manufacturer),
                        ("version", &mut h.version),
                        ("serial", &mut h.serial),
                        ("asset", &mut h.asset),
                        ("sku", &mut h.sku),
                    ],
                    &[],
                )?;
            }
            "4" => {
                let p = &mut c.processor;
                strings(vec![("manufacturer", &mut p.manufacturer), ("version", &mut p.version)], &[])?;
            }
            "11" => {
                keys(&["value", "path"])?;
                for (k, v) in &o.pairs {
                    match k.as_str() {
                        "value" => c.oem_strings.push(v.clone()),
                        "path" => {
                            let text = std::fs::read(v).map_err(|err| e(format!("path={v}: {err}")))?;
                            c.oem_strings.push(String::from_utf8_lossy(&text).into_owned());
                        }
                        _ => {}
                    }
                }
            }
            _ => {
                return Err(e(format!(
                "type={kind} is not supported: ferrovm takes types 0, 1, 2, 3, 4 and 11 (and describes memory itself)"
            )))
            }
        }
    }
    Ok(c)
}

/// Parse a RAM size as QEMU's `-m` does: a plain number is MiB; K, M, G and T
/// suffixes (optionally followed by B or iB) scale it.
pub fn parse_mem(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper.trim_end_matches("IB").trim_end_matches('B');
    let (num, mult) = match body.char_indices().last() {
        Some((i, 'K')) => (&body[..i], 1u64 << 10),
        Some((i, 'M')) => (&body[..i], 1 << 20),
        Some((i, 'G')) => (&body[..i], 1 << 30),
        Some((i, 'T')) => (&body[..i], 1 << 40),
        _ => (body, 1 << 20),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid memory size '{s}': expected a number with an optional K, M, G or T suffix, e.g. 512M")
    })?;
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("memory size '{s}' is too large"))?;
    if bytes == 0 {
        return Err(format!("memory size '{s}' is zero"));
    }
    if bytes < (1 << 20) {
        return Err(format!("memory size '{s}' is below the 1 MiB minimum"));
    }
    if bytes % 4096 != 0 {
        return Err(format!("memory size '{s}' is not a multiple of 4 KiB"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_lists_split_as_qemus_initrd() {
        let list = |s: &str| parse_module_list(s).unwrap();
        assert_eq!(list("m.bin"), [("m.bin".to_string(), "m.bin".to_string())]);
        assert_eq!(
            list("/a/m1 x=1 y,m2"),
            [("/a/m1".to_string(), "/a/m1 x=1 y".to_string()), ("m2".to_string(), "m2".to_string())]
        );
        assert_eq!(list("a,,b c,,d"), [("a,b".to_string(), "a,b c,d".to_string())], ",, is a comma");
        for bad in ["", ",", "a,", ",a", "a,,,", " a"] {
            let e = parse_module_list(bad).unwrap_err();
            assert!(e.contains("no file name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn smbios_field_sets_fill_the_tables_config() {
        let sets: Vec<String> = [
            "type=0,vendor=V,release=2.7,uefi=on",
            "type=1,manufacturer=M,serial=ds=nocloud;s=http://h/,uuid=00112233-4455-6677-8899-aabbccddeeff",
            "type=2",
            "type=3,asset=A",
            "type=4,version=P",
            "type=11,value=one,value=tw,,o",
        ]
        .map(String::from)
        .to_vec();
        let c = parse_smbios(&sets, None).unwrap();
        let b = c.bios.unwrap();
        assert_eq!((b.vendor.as_deref(), b.release, b.uefi), (Some("V"), Some((2, 7)), true));
        assert_eq!(c.system.manufacturer.as_deref(), Some("M"));
        assert_eq!(c.system.serial.as_deref(), Some("ds=nocloud;s=http://h/"));
        assert_eq!(c.system.uuid.unwrap()[..4], [0x00, 0x11, 0x22, 0x33]);
        assert_eq!(c.baseboard, Some(Default::default()));
        assert_eq!(c.chassis.asset.as_deref(), Some("A"));
        assert_eq!(c.processor.version.as_deref(), Some("P"));
        assert_eq!(c.oem_strings, ["one", "tw,o"]);
        // -uuid is overridden by type=1,uuid= given later, as QEMU does.
        let u = firmware::smbios::parse_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap();
        assert_eq!(parse_smbios(&[], Some(u)).unwrap().system.uuid, Some(u));
        let v = parse_vport("name=org.qemu.guest_agent.0,socket=/run/qga.sock").unwrap();
        assert_eq!(v.port.name.as_deref(), Some("org.qemu.guest_agent.0"));
        assert_eq!(v.backend, "socket:/run/qga.sock");
        assert_eq!(parse_vport("console,socket=/s,server=off").unwrap().backend, "socket:/s,server=off");
        assert_eq!(parse_vport("console,file=/tmp/out").unwrap().backend, "file:/tmp/out");
        assert_eq!(parse_vport("null,console").unwrap().backend, "null");
        assert_eq!(parse_vport("console,pty").unwrap().backend, "pty");
        assert_eq!(parse_vport("name=x,pty=term0").unwrap().backend, "pty:term0");
        assert_eq!(parse_vport("console,mon:stdio").unwrap().backend, "mon:stdio");
        for (bad, why) in [
            ("socket=/s", "console, or name="),
            ("console", "host side"),
            ("console,file=/x,server=off", "socket= only"),
            ("console,tcp=1", "'tcp=1'"),
            ("name=,null", "'name='"),
        ] {
            let e = parse_vport(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let r = parse_rng("/dev/random,max-bytes=1024,period=500").unwrap();
        assert_eq!((r.source, r.limit), ("/dev/random".into(), Some((1024, 500))));
        assert_eq!(parse_rng("filename=/dev/urandom").unwrap().limit, None);
        assert_eq!(parse_rng("/dev/urandom,max-bytes=9").unwrap().limit, Some((9, 1000)));
        assert!(parse_rng("/dev/urandom,rate=9").unwrap_err().contains("rate="));
        assert!(parse_rng("/dev/urandom,period=x").unwrap_err().contains("period=x"));
        let e = parse_smbios(&["type=11,path=/nonexistent/oem".into()], None).unwrap_err();
        assert!(e.contains("/nonexistent/oem"), "{e}");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mem("512M"), Ok(512 << 20));
        assert_eq!(parse_mem("512"), Ok(512 << 20));
        assert_eq!(parse_mem("2G"), Ok(2 << 30));
        assert_eq!(parse_mem("1GiB"), Ok(1 << 30));
        assert_eq!(parse_mem("4096k"), Ok(4 << 20));
        assert!(parse_mem("0").is_err());
        assert!(parse_mem("5Q").is_err());
        assert!(parse_mem("").is_err());
        assert!(parse_mem("99999999999999T").is_err());
        assert!(parse_mem("100K").is_err());
    }

    #[test]
    fn cpu_models() {
        use cpu::cpuid::Model;
        assert_eq!(parse_cpu_model("max"), Ok(Model::Max));
        assert_eq!(parse_cpu_model("v2"), Ok(Model::V2));
        let e = parse_cpu_model("skylake").unwrap_err();
        assert!(e.contains("skylake") && e.contains("v2, max"), "{e}");
        let run = Cli::try_parse_from(["ferrovm", "run"]).unwrap();
        let Command::Run(args) = run.command else { panic!("not run") };
        assert_eq!(args.cpu, None, "the default model follows the engine");
    }
}

/// `--rtc-base`: what the guest's RTC counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcBase {
    /// The host's time in UTC.
    Utc,
    /// The host's local time.
    LocalTime,
    /// A date and time (seconds since 1970 as the RTC's calendar counts
    /// them) the RTC starts at.
    Date(i64),
}

impl RtcBase {
    /// What the RTC shows at power-on, for the machine's configuration
    /// (`None`: the host's UTC time).
    pub fn start_ns(self) -> Option<i128> {
        match self {
            RtcBase::Utc => None,
            RtcBase::LocalTime => {
                let now = chrono::Local::now();
                let offset = i128::from(now.offset().local_minus_utc());
                Some(
                    i128::from(now.timestamp()) * 1_000_000_000
                        + i128::from(now.timestamp_subsec_nanos())
                        + offset * 1_000_000_000,
                )
            }
            RtcBase::Date(secs) => Some(i128::from(secs) * 1_000_000_000),
        }
    }
}

/// Parses `--rtc-base` (QEMU's `base=` values).
pub fn parse_rtc_base(s: &str) -> Result<RtcBase, String> {
    match s {
        "utc" => return Ok(RtcBase::Utc),
        "localtime" => return Ok(RtcBase::LocalTime),
        _ => {}
    }
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_time(chrono::NaiveTime::MIN)))
        .map_err(|_| format!("'{s}': expected utc, localtime, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS"))?;
    Ok(RtcBase::Date(t.and_utc().timestamp()))
}

/// Checks `--gdb`'s device as the stub will read it.
fn parse_gdb(s: &str) -> Result<String, String> {
    vmm::gdb::parse_gdb_dev(s).map(|_| s.to_string())
}
