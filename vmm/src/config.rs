//! What shapes a machine: its configuration, as the front end builds it.
//!
//! These types are shared by the machine ([`crate::machine`]) and the
//! engines ([`crate::engine`]), which read the parts they need from an
//! [`crate::engine::EngineContext`] and never from the machine itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use devices::console::SerialBackend;
use parking_lot::Mutex;

/// Which engine runs the guest ([`crate::Machine::run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// The interpreter.
    Interp,
    /// The interpreter for cold code, compiled regions for hot code.
    Jit,
    /// KVM: the whole guest, or split execution where KVM runs ring 0 in
    /// software ([`MachineConfig::kvm_split`]).
    Kvm,
}

/// Where KVM keeps the PIT when it keeps the interrupt controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvmPit {
    /// In KVM, with the PIC, I/O APIC and local APIC (the default).
    #[default]
    InKernel,
    /// The machine's own, raising IRQ 0 on KVM's PIC and I/O APIC.
    User,
}

/// Under KVM, whose interrupt controllers the guest has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvmIrqchip {
    /// KVM's PIC, I/O APIC and local APIC where KVM offers them (the
    /// default; QEMU's `kernel-irqchip=on`).
    #[default]
    InKernel,
    /// The machine's own, their interrupts injected into KVM's vCPU
    /// before each entry (QEMU's `kernel-irqchip=off`); one vCPU.
    User,
}

/// Whether `--accel kvm` splits execution ([`crate::engine::split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitMode {
    /// Where KVM runs CPL 0 in software, for a kernel the host loaded
    /// (its code is known) or a BIOS boot (its code is found in the guest).
    #[default]
    Auto,
    /// Always; the code of a kernel the host did not load is found in the
    /// guest once user code runs.
    On,
    /// Never: all of the guest runs in KVM.
    Off,
}

/// How the interpreter and the JIT run several vCPUs (QEMU's
/// `-accel tcg,thread=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VcpuThreads {
    /// Round-robin on one host thread, a slice each in index order: the
    /// same guest and input give the same interleaving of instructions.
    #[default]
    Single,
    /// One host thread per vCPU.
    Multi,
}

/// The display adapter (QEMU's `-vga`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vga {
    /// None: the guest's face is its serial port.
    #[default]
    None,
    /// The standard VGA (`devices::display::StdVga`) at PCI 00:02.0, with
    /// SeaBIOS's VGA BIOS when the machine boots through the BIOS.
    Std,
}

/// What the guest boots.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// The built-in guest ROM.
    Builtin,
    /// A BIOS image (SeaBIOS) mapped to end at 4 GiB, its last 128 KiB
    /// also below 1 MiB, with fw_cfg describing the machine ([`crate::bios`]).
    Bios(Vec<u8>),
    /// A kernel booted directly: Linux (bzImage or vmlinux) or multiboot.
    Kernel(KernelImage),
}

/// A flash drive below the firmware's image: QEMU's `-drive if=pflash`
/// units past the firmware's code (UEFI's variables), a CFI flash
/// ([`devices::pflash`]) the firmware programs.
#[derive(Debug, Clone)]
pub struct FlashDrive {
    /// For logs and errors: the file's name.
    pub name: String,
    /// The flash's bytes at start-up; the machine's flash device takes
    /// them (the machine's copy of its configuration keeps none).
    pub contents: Vec<u8>,
    /// The file its programs and erases go to, at the offsets of
    /// `contents`; `None`: they stay in memory (QEMU's `snapshot=on`).
    pub path: Option<PathBuf>,
    /// Program and erase fail (QEMU's `readonly=on`).
    pub read_only: bool,
}

/// A kernel for direct boot.
#[derive(Debug, Clone)]
pub struct KernelImage {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
    /// For a bzImage: decompress on the host (fast) or in the guest (classic).
    pub path: firmware::linux::BootPath,
    /// A multiboot kernel's modules (`--initrd`'s list), in order; a Linux
    /// kernel takes `initrd` and no modules. For a multiboot kernel an
    /// `initrd` is one more module, whose command line is "initrd".
    pub modules: Vec<BootModule>,
    /// Whether the machine loads it into RAM. Not when RAM and the CPUs
    /// come from saved state (`--restore`, `--incoming`, `--loadvm`): the
    /// files were only checked, and split execution finds the kernel's
    /// code in the guest as after a BIOS boot.
    pub load: bool,
}

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
    /// Under KVM, whether to run the kernel in the JIT (see
    /// [`crate::engine::split`]).
    pub kvm_split: SplitMode,
    /// Under KVM with its interrupt controllers, where the PIT lives.
    pub kvm_pit: KvmPit,
    /// Under KVM, whose interrupt controllers the guest has.
    pub kvm_irqchip: KvmIrqchip,
    /// A folder that keeps the JIT's compiled regions between runs
    /// (`--jit-cache`): a later run of the same guest takes them instead of
    /// compiling them again.
    pub jit_cache: Option<std::path::PathBuf>,
    /// The CPU model the guest is given (under KVM: as much of it as KVM
    /// can give).
    pub cpu_model: cpu::cpuid::Model,
    /// The CPUs: sockets, cores and threads (`--cpus`, `-smp`).
    pub topology: cpu::cpuid::Topology,
    /// How the interpreter and the JIT run more than one vCPU.
    pub vcpu_threads: VcpuThreads,
    /// The display adapter.
    pub vga: Vga,
    /// The PIIX3's USB controller (UHCI, QEMU's `-usb`) and the devices on
    /// its root hub; `None` leaves the controller out.
    pub usb: Option<Vec<devices::usb::UsbDeviceKind>>,
    /// What the RTC shows at power-on, in nanoseconds since 1970 as its
    /// calendar counts them (QEMU's `-rtc base=localtime|DATE`); `None`:
    /// the host's time in UTC.
    pub rtc_start_ns: Option<i128>,
    /// QEMU's `-d int,in_asm,cpu_reset` logs, under the interpreter and
    /// the JIT (and split execution's kernel side).
    pub guest_log: Option<Arc<cpu::GuestLog>>,
    /// Flash drives mapped below the firmware's image, the first one
    /// highest (with [`Firmware::Bios`] only).
    pub flash: Vec<FlashDrive>,
    /// QEMU's `-debugcon`: a debug console at port 0xE9 whose bytes go to
    /// this output (stdio, a file or nowhere).
    pub debugcon: Option<devices::console::SerialBackend>,
    /// What the SMBIOS tables say beyond the machine's own description
    /// (QEMU's `-smbios` and `-uuid`); see [`crate::bios::smbios`].
    pub smbios: firmware::smbios::SmbiosConfig,
    /// Virtio entropy devices (QEMU's `-device virtio-rng-pci`), in PCI
    /// slots after the disks'.
    pub rng: Vec<RngConfig>,
    /// The ports of the virtio-serial function (QEMU's `-device
    /// virtio-serial-pci` with `virtconsole` and `virtserialport`), in the
    /// slot after the entropy devices'; none: no such function.
    pub vports: Vec<VportConfig>,
    /// Whether the PC has its HPET (QEMU's `-no-hpet` takes it away, from
    /// the MMIO space and from the ACPI tables).
    pub hpet: bool,
    /// Whether the PC has ACPI (QEMU's `-no-acpi` takes it away: no ACPI
    /// tables and no PIIX4 PM function).
    pub acpi: bool,
    /// A kernel for the BIOS to boot (with [`Firmware::Bios`] only): the
    /// option ROM that loads it (linuxboot or multiboot) comes first in
    /// the boot order ([`crate::bios::prepare_kernel_boot`]).
    pub bios_kernel: Option<BiosKernel>,
}

/// A kernel the BIOS boots (QEMU's `-kernel` with its firmware): a bzImage
/// with its initrd and command line, or a multiboot kernel with its
/// modules, handed over fw_cfg.
#[derive(Debug, Clone, Default)]
pub struct BiosKernel {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
    /// A multiboot kernel's modules; as for [`KernelImage::modules`].
    pub modules: Vec<BootModule>,
    /// The kernel's file name as given: a multiboot kernel's command line
    /// starts with it, as QEMU and GRUB give it.
    pub name: String,
}

/// A multiboot module: its command line (QEMU's: the file's name and what
/// follows it in `-initrd`) and its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootModule {
    pub cmdline: String,
    pub data: Vec<u8>,
}

/// A virtio-serial port: what the guest sees and its host side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VportConfig {
    /// A console (hvc in Linux) or a named port.
    pub port: devices::virtio::console::PortConfig,
    /// The host side, as `--vport`'s `chardev=` gives it (`socket:PATH`,
    /// `file:PATH`, `null`).
    pub backend: String,
}

/// A virtio entropy device: where its bytes come from and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngConfig {
    /// The host file it reads (QEMU's `rng-random,filename=`;
    /// `/dev/urandom` for `rng-builtin` and by default).
    pub source: PathBuf,
    /// At most `.0` bytes per `.1` milliseconds (QEMU's `max-bytes=` and
    /// `period=`); `None`: as fast as the guest asks.
    pub limit: Option<(u64, u64)>,
}

#[cfg(test)]
impl MachineConfig {
    /// The machine the library's tests start from: [`MachineConfig::builtin`]
    /// with COM1 captured into `out`, a 60 s deadline and split execution
    /// off.
    pub(crate) fn for_test(out: Arc<Mutex<Vec<u8>>>) -> Self {
        MachineConfig {
            timeout: Some(Duration::from_secs(60)),
            kvm_split: SplitMode::Off,
            ..MachineConfig::builtin(SerialOut::Capture(out))
        }
    }
}

impl MachineConfig {
    /// The built-in guest's machine, COM1 going to `serial`: 64 MiB, the
    /// built-in firmware, no reboot, no deadline, split execution where
    /// KVM needs it, KVM's in-kernel PIT, CPU model V2, one vCPU, no
    /// display adapter and no USB.
    pub fn builtin(serial: SerialOut) -> Self {
        MachineConfig {
            mem: 64 << 20,
            firmware: Firmware::Builtin,
            serial,
            no_reboot: true,
            timeout: None,
            kvm_split: SplitMode::Auto,
            kvm_pit: KvmPit::InKernel,
            kvm_irqchip: KvmIrqchip::InKernel,
            jit_cache: None,
            cpu_model: cpu::cpuid::Model::V2,
            topology: Default::default(),
            vcpu_threads: Default::default(),
            vga: Vga::None,
            usb: None,
            rtc_start_ns: None,
            guest_log: None,
            flash: Vec::new(),
            debugcon: None,
            smbios: Default::default(),
            rng: Vec::new(),
            vports: Vec::new(),
            hpet: true,
            acpi: true,
            bios_kernel: None,
        }
    }

    /// The number of vCPUs.
    pub fn cpus(&self) -> usize {
        self.topology.cpus() as usize
    }

    /// The local APIC IDs of the vCPUs, by index.
    pub fn apic_ids(&self) -> Vec<u32> {
        (0..self.topology.cpus()).map(|i| self.topology.apic_id(i)).collect()
    }
}

/// Parses a CPU count and topology as QEMU's `-smp` takes it:
/// `N[,sockets=S][,cores=C][,threads=T][,maxcpus=M]` (also `cpus=N`, and
/// `dies=1`, `clusters=1`). What is left out is derived as QEMU does for
/// its current machine types, preferring cores over sockets: `-smp 4` is
/// one socket of four cores. `maxcpus` above the CPU count (CPU hotplug)
/// is refused.
pub fn parse_smp(spec: &str) -> Result<cpu::cpuid::Topology, String> {
    let mut cpus = None;
    let (mut sockets, mut cores, mut threads, mut maxcpus) = (None, None, None, None);
    for (i, part) in spec.split(',').enumerate() {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None if i == 0 => ("cpus", part.trim()),
            None => return Err(format!("'{part}': expected key=value (cpus, sockets, cores, threads, maxcpus)")),
        };
        let n: u32 = value
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{key}={value}: expected a positive number"))?;
        let slot = match key {
            "cpus" => &mut cpus,
            "sockets" => &mut sockets,
            "cores" => &mut cores,
            "threads" => &mut threads,
            "maxcpus" => &mut maxcpus,
            "dies" | "clusters" if n == 1 => continue,
            "dies" | "clusters" => {
                return Err(format!("{key}={n}: the PC has one die and one cluster per socket"));
            }
            _ => return Err(format!("{key}: unknown (cpus, sockets, cores, threads, maxcpus)")),
        };
        *slot = Some(n);
    }
    let given = |x: Option<u32>| x.unwrap_or(1);
    let product = |s: u32, c: u32, t: u32| s.checked_mul(c).and_then(|x| x.checked_mul(t));
    let max = match maxcpus.or(cpus) {
        Some(m) => m,
        None => product(given(sockets), given(cores), given(threads)).ok_or("the topology is too large")?,
    };
    let cpus = cpus.unwrap_or(max);
    if max != cpus {
        return Err(format!("maxcpus={max} above cpus={cpus}: CPU hotplug is not supported"));
    }
    let share = |a: u32, b: u32| {
        let per = a.checked_mul(b).filter(|&p| p > 0 && max % p == 0);
        per.map(|p| max / p)
            .ok_or_else(|| format!("{max} CPUs do not divide into the given sockets, cores and threads"))
    };
    let (s, c, t) = match (sockets, cores, threads) {
        (s, None, t) => (given(s), share(given(s), given(t))?, given(t)),
        (None, Some(c), t) => (share(c, given(t))?, c, given(t)),
        (Some(s), Some(c), None) => (s, c, share(s, c)?),
        (Some(s), Some(c), Some(t)) => (s, c, t),
    };
    if product(s, c, t) != Some(max) {
        return Err(format!("sockets={s} * cores={c} * threads={t} is not the CPU count {max}"));
    }
    cpu::cpuid::Topology::new(s, c, t).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_smp;

    fn sct(spec: &str) -> (u32, u32, u32) {
        let t = parse_smp(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        (t.sockets, t.cores, t.threads)
    }

    #[test]
    fn smp_fills_in_what_is_left_out_as_qemu_does() {
        assert_eq!(sct("1"), (1, 1, 1));
        assert_eq!(sct("4"), (1, 4, 1), "cores before sockets");
        assert_eq!(sct("cpus=4"), (1, 4, 1));
        assert_eq!(sct("4,sockets=2"), (2, 2, 1));
        assert_eq!(sct("4,threads=2"), (1, 2, 2));
        assert_eq!(sct("8,cores=2,threads=2"), (2, 2, 2));
        assert_eq!(sct("6,sockets=2,cores=3"), (2, 3, 1));
        assert_eq!(sct("sockets=2,cores=2"), (2, 2, 1), "the count from the topology");
        assert_eq!(sct("4,maxcpus=4,dies=1,clusters=1"), (1, 4, 1));
    }

    #[test]
    fn smp_refuses_what_does_not_add_up() {
        for (spec, why) in [
            ("0", "positive"),
            ("x", "positive"),
            ("4,maxcpus=8", "hotplug"),
            ("4,sockets=3", "divide"),
            ("4,sockets=2,cores=2,threads=2", "not the CPU count"),
            ("4,dies=2", "one die"),
            ("4,books=1", "unknown"),
            ("4,2", "key=value"),
        ] {
            let e = parse_smp(spec).expect_err(spec);
            assert!(e.contains(why), "{spec}: {e}");
        }
    }
}
