//! Booting through firmware (SeaBIOS): the BIOS image, and what the
//! machine tells it through fw_cfg.
//!
//! The image is mapped to end at 4 GiB; its last 128 KiB are seen again at
//! 0xE0000-0xFFFFF under the i440FX's PAM registers
//! (`devices::pci::pam`), and the CPU starts at the reset vector,
//! F000:FFF0 in real mode. fw_cfg (ports 0x510, 0x511, DMA at 0x514)
//! holds:
//!
//! | item | contents |
//! | --- | --- |
//! | signature, ID, RAM size, CPUs | the legacy items |
//! | boot menu (0x0e) | 1 with `-boot menu=on` (SeaBIOS's `etc/show-boot-menu`), else 0: no menu delay |
//! | `etc/boot-menu-wait` | with `-boot splash-time=MS`: how long SeaBIOS waits for ESC |
//! | `etc/e820` | the memory map a directly booted kernel gets |
//! | `bootorder` | the drives in boot order (`/pci@i0cf8/...` device paths); with `-boot once=`, that order's until the first reset |
//! | `etc/sercon-port` | 0x3f8: SeaBIOS copies INT 10h text to COM1, so the BIOS's and a bootloader's messages reach `--serial` |
//! | `etc/acpi/tables`, `etc/acpi/rsdp`, `etc/table-loader` | the ACPI tables of direct boot, with QEMU's linker/loader commands that place and link them |
//! | `pci1234,1111.rom` | with `-vga std`: SeaBIOS's VGA BIOS (`vgabios-stdvga.bin`), run as the adapter's option ROM |
//! | `etc/boot-fail-wait` | 5 s (SeaBIOS's default is 60) before a reboot when nothing boots |
//! | kernel, initrd, command line, setup and entry items (0x07-0x18), `genroms/linuxboot_dma.bin` or `genroms/multiboot_dma.bin` | with a kernel for the BIOS to boot ([`prepare_kernel_boot`]): what QEMU's option ROM loads, and the ROM, first in `bootorder` |
//!
//! SeaBIOS writes its log to port 0x402 (`devices::legacy::debugcon`, shown by
//! `--trace firmware`).

use std::path::Path;
use std::sync::Arc;

use devices::legacy::fw_cfg::FwCfg;
use mmu::GuestMemory;

use crate::error::Error;

/// Where Debian's seabios package puts the BIOS QEMU uses.
pub const SEABIOS_PATH: &str = "/usr/share/seabios/bios-256k.bin";

/// Where Debian's seabios package puts the VGA BIOS of the standard VGA.
pub const VGA_BIOS_PATH: &str = "/usr/share/seabios/vgabios-stdvga.bin";

/// The fw_cfg file SeaBIOS runs as the standard VGA's option ROM (it looks
/// for `pciVVVV,DDDD.rom` before the function's ROM BAR).
pub const VGA_ROM_FILE: &str = "pci1234,1111.rom";

/// The least RAM a BIOS boot takes: SeaBIOS keeps its tables and buffers
/// at the top of RAM, above the first megabyte.
pub const MIN_RAM: u64 = 16 << 20;

/// The most a BIOS image may be (the flash below 4 GiB on a PC).
const MAX_BIOS: u64 = 16 << 20;
/// fw_cfg's legacy boot-menu item.
const FW_CFG_BOOT_MENU: u16 = 0x0e;
/// fw_cfg item: the machine's UUID (16 bytes, zero when none is given).
const FW_CFG_UUID: u16 = 0x02;
/// COM1, where SeaBIOS's serial console goes.
const SERCON_PORT: u16 = 0x3f8;
/// Milliseconds SeaBIOS waits before a reboot when no device boots.
const BOOT_FAIL_WAIT_MS: u32 = 5000;

/// The SeaBIOS image of Debian's seabios package, or an error that says
/// how to get it.
pub fn default_bios() -> Result<Vec<u8>, Error> {
    match std::fs::read(SEABIOS_PATH) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Config(format!(
            "booting a disk without --kernel needs a BIOS, and {SEABIOS_PATH} is missing: install Debian's \
             `seabios` package (apt-get install seabios), or name a BIOS image with --bios PATH"
        ))),
        Err(source) => Err(Error::Read { path: SEABIOS_PATH.into(), source }),
    }
}

/// The standard VGA's BIOS from Debian's seabios package (it sets the text
/// modes and the VBE modes up), or an error that says how to get it.
pub fn vga_bios() -> Result<Vec<u8>, Error> {
    option_rom(
        VGA_BIOS_PATH,
        "seabios",
        format!(
            "the standard VGA needs its BIOS, and {VGA_BIOS_PATH} is missing: install Debian's `seabios` \
             package (apt-get install seabios), or run without a display (-vga none)"
        ),
    )
}

/// The option ROM at `path` from Debian's `package`: an error for a file
/// without the 55 AA signature, and `missing` when there is no file.
fn option_rom(path: &str, package: &str, missing: String) -> Result<Vec<u8>, Error> {
    match std::fs::read(path) {
        Ok(b) if b.len() >= 512 && b[0] == 0x55 && b[1] == 0xaa => Ok(b),
        Ok(b) => Err(Error::Config(format!(
            "{path} ({} bytes) is not an option ROM (no 55 AA signature); reinstall Debian's `{package}` package",
            b.len()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Config(missing)),
        Err(source) => Err(Error::Read { path: path.into(), source }),
    }
}

/// Where a boot ROM named without a folder is looked for, as Debian's QEMU
/// looks: its data folder, then the ipxe-qemu package's.
pub const NIC_ROM_DIRS: &[&str] = &["/usr/share/qemu", "/usr/lib/ipxe/qemu"];

/// The boot ROM of the NIC `label`: the file `romfile=` names, or
/// (`NicRom::Default`) the model's iPXE ROM `default_name` when `net_boot`
/// asks for one. The bool says the ROM is the default one, whose IDs the
/// machine fits to the function (as QEMU patches its default ROMs).
pub fn nic_rom(
    rom: &net::NicRom,
    default_name: &str,
    net_boot: bool,
    label: &str,
) -> Result<Option<(devices::pci::rom::OptionRom, bool)>, Error> {
    let find = |name: &str| -> Option<std::path::PathBuf> {
        let p = std::path::Path::new(name);
        if p.is_file() || p.components().count() > 1 {
            return Some(p.to_path_buf());
        }
        NIC_ROM_DIRS.iter().map(|d| std::path::Path::new(d).join(name)).find(|p| p.is_file())
    };
    let (path, default) = match rom {
        net::NicRom::Off => return Ok(None),
        net::NicRom::Default if !net_boot => return Ok(None),
        net::NicRom::Default => match find(default_name) {
            Some(p) => (p, true),
            None => {
                return Err(Error::Config(format!(
                    "booting from the network (boot order n) needs the NIC's boot ROM {default_name}, which is not \
                     in {}: install Debian's `ipxe-qemu` package, or name a ROM with romfile=FILE",
                    NIC_ROM_DIRS.join(" or ")
                )))
            }
        },
        net::NicRom::File(f) => {
            let name = f.to_string_lossy();
            (find(&name).unwrap_or_else(|| f.clone()), false)
        }
    };
    match std::fs::read(&path) {
        Ok(b) => devices::pci::rom::OptionRom::new(label, &b)
            .map(|rom| Some((rom, default)))
            .map_err(|e| Error::Config(format!("romfile={}: {e}", path.display()))),
        Err(source) => Err(Error::Read { path, source }),
    }
}

/// QEMU's option ROM that boots a Linux kernel handed over fw_cfg
/// (Debian's qemu-system-data package).
pub const LINUXBOOT_ROM_PATH: &str = "/usr/share/qemu/linuxboot_dma.bin";
/// Its fw_cfg name: SeaBIOS runs the option ROMs under `genroms/`.
pub const LINUXBOOT_ROM_FILE: &str = "genroms/linuxboot_dma.bin";
/// QEMU's option ROM that boots a multiboot kernel handed over fw_cfg
/// (the same package).
pub const MULTIBOOT_ROM_PATH: &str = "/usr/share/qemu/multiboot_dma.bin";
/// Its fw_cfg name.
pub const MULTIBOOT_ROM_FILE: &str = "genroms/multiboot_dma.bin";

/// The option ROM at `path` of qemu-system-data, or an error that says how
/// to get it.
fn kernel_rom(path: &str, what: &str) -> Result<Vec<u8>, Error> {
    option_rom(
        path,
        "qemu-system-data",
        format!(
            "booting a {what} through the BIOS needs QEMU's option ROM {path}, which is missing: install \
             Debian's `qemu-system-data` package, or boot the kernel directly (--kernel-boot auto)"
        ),
    )
}

/// The linuxboot option ROM, or an error that says how to get it.
pub fn linuxboot_rom() -> Result<Vec<u8>, Error> {
    kernel_rom(LINUXBOOT_ROM_PATH, "Linux kernel")
}

/// The multiboot option ROM, or an error that says how to get it.
pub fn multiboot_rom() -> Result<Vec<u8>, Error> {
    kernel_rom(MULTIBOOT_ROM_PATH, "multiboot kernel")
}

/// A kernel laid out for the BIOS to boot, as QEMU's `-kernel` hands it
/// over: the option ROM that loads and enters it, and the fw_cfg items it
/// reads.
pub struct KernelBoot {
    /// The ROM's fw_cfg name (`genroms/...`).
    pub rom_file: &'static str,
    rom: Vec<u8>,
    items: Vec<(u16, Vec<u8>)>,
    /// What was laid out where, for the log and `--stats`.
    pub note: String,
}

impl KernelBoot {
    /// The ROM's boot device path, which goes first in the `bootorder`
    /// file (QEMU gives it boot index 0), so SeaBIOS boots the kernel
    /// before any disk.
    pub fn boot_path(&self) -> String {
        format!("/rom@{}", self.rom_file)
    }

    /// Puts the items and the ROM into `d`.
    pub fn install(self, d: &mut FwCfg) -> Result<(), Error> {
        for (key, data) in self.items {
            d.set_item(key, data);
        }
        d.add_file(self.rom_file, self.rom).map_err(|e| Error::Config(format!("fw_cfg: {e}")))?;
        Ok(())
    }
}

/// Lays `kernel` out for the BIOS of a machine whose RAM below 4 GiB ends
/// at `ram_below_4g`, as QEMU's `-kernel` tells kernels apart: a bzImage
/// goes to the linuxboot ROM (its setup code, kernel, initrd and command
/// line), a multiboot kernel to the multiboot ROM (one image of the
/// kernel, its modules and strings, and the information structure). An
/// ELF without a multiboot header (a vmlinux) is refused: neither ROM
/// loads it.
pub fn prepare_kernel_boot(kernel: &crate::config::BiosKernel, ram_below_4g: u64) -> Result<KernelBoot, Error> {
    let bad = |e: &dyn std::fmt::Display| Error::Config(format!("--kernel through the BIOS: {e}"));
    let header = firmware::multiboot::probe(&kernel.kernel).map_err(|e| bad(&e))?;
    if header.is_some() {
        let initrd =
            kernel.initrd.as_deref().map(|data| firmware::multiboot::MultibootModule { data, cmdline: "initrd" });
        let modules: Vec<firmware::multiboot::MultibootModule<'_>> = kernel
            .modules
            .iter()
            .map(|m| firmware::multiboot::MultibootModule { data: &m.data, cmdline: &m.cmdline })
            .chain(initrd)
            .collect();
        let laid = firmware::multiboot::bios_multiboot(&firmware::multiboot::BiosMultibootConfig {
            kernel: &kernel.kernel,
            name: &kernel.name,
            cmdline: &kernel.cmdline,
            modules: &modules,
            ram_below_4g,
        })
        .map_err(|e| bad(&e))?;
        let note = format!(
            "multiboot kernel through the BIOS (QEMU's {}): {:#x}..{:#x} with {} module(s), entry {:#x}",
            MULTIBOOT_ROM_PATH,
            laid.load_addr,
            u64::from(laid.load_addr) + laid.image.len() as u64,
            laid.modules.len(),
            laid.entry
        );
        let rom = multiboot_rom()?;
        return Ok(KernelBoot { rom_file: MULTIBOOT_ROM_FILE, rom, items: laid.into_fw_cfg_items(), note });
    }
    if !kernel.modules.is_empty() {
        return Err(bad(&"a Linux kernel takes one initrd, not a list of modules (those are for multiboot kernels)"));
    }
    if firmware::elf::is_elf(&kernel.kernel) {
        return Err(bad(
            &"the kernel is an ELF without a multiboot header (a vmlinux), which QEMU's linuxboot ROM cannot load \
              (QEMU boots such a kernel through its PVH ROM when it has a PVH note): boot it directly \
              (--kernel-boot auto or fast)",
        ));
    }
    let laid = firmware::linuxboot::bios_boot(&kernel.kernel, kernel.initrd.as_deref(), &kernel.cmdline, ram_below_4g)
        .map_err(|e| bad(&e))?;
    let note = format!(
        "Linux kernel through the BIOS (QEMU's {}): setup code {} bytes, kernel {} bytes{}",
        LINUXBOOT_ROM_PATH,
        laid.setup.len(),
        laid.kernel.len(),
        laid.initrd.as_ref().map_or(String::new(), |(at, d)| format!(", initrd {} bytes at {at:#x}", d.len()))
    );
    let rom = linuxboot_rom()?;
    Ok(KernelBoot { rom_file: LINUXBOOT_ROM_FILE, rom, items: laid.fw_cfg_items(), note })
}

/// Whether `image` can be a BIOS: a whole number of 64 KiB blocks, at most
/// 16 MiB, with code at the reset vector (its last 16 bytes).
pub fn check_image(image: &[u8], path: Option<&Path>) -> Result<(), Error> {
    let what = path.map_or_else(|| "the BIOS image".to_string(), |p| format!("--bios {}", p.display()));
    let size = image.len() as u64;
    if size == 0 || !size.is_multiple_of(0x1_0000) || size > MAX_BIOS {
        return Err(Error::Config(format!(
            "{what} is {size} bytes: a BIOS image must be a multiple of 64 KiB and at most 16 MiB \
             (SeaBIOS's bios-256k.bin is 262144)"
        )));
    }
    let vector = &image[image.len() - 16..];
    if vector.iter().all(|&b| b == 0) || vector.iter().all(|&b| b == 0xff) {
        return Err(Error::Config(format!(
            "{what} has no code at the reset vector (its last 16 bytes are blank): not a BIOS image"
        )));
    }
    Ok(())
}

/// The granule of a flash image (QEMU's pflash sector).
const FLASH_GRANULE: u64 = 0x1000;

/// Checks firmware code in flash (`-drive if=pflash`, unit 0; `what`
/// names it): whole 4 KiB sectors, at most 16 MiB, code at the reset
/// vector. The machine maps any firmware so; `--bios` images are also
/// held to QEMU's 64 KiB ([`check_image`]).
pub fn check_flash_image(image: &[u8], what: &str) -> Result<(), Error> {
    let size = image.len() as u64;
    if size < 16 || !size.is_multiple_of(FLASH_GRANULE) || size > MAX_BIOS {
        return Err(Error::Config(format!(
            "{what} is {size} bytes: firmware flash must be whole 4 KiB sectors, at most 16 MiB"
        )));
    }
    let vector = &image[image.len() - 16..];
    if vector.iter().all(|&b| b == 0) || vector.iter().all(|&b| b == 0xff) {
        return Err(Error::Config(format!(
            "{what} has no code at the reset vector (its last 16 bytes are blank): not firmware"
        )));
    }
    Ok(())
}

/// The GUID of a UEFI variable store's firmware volume
/// (EFI_SYSTEM_NV_DATA_FV_GUID, fff12b8d-7696-4c8b-a985-2747075b4f50), as
/// its header stores it.
const NV_DATA_FV_GUID: [u8; 16] =
    [0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50];
/// A firmware volume header's signature and where it lies (PI 1.8, vol. 3,
/// 3.2.1 EFI_FIRMWARE_VOLUME_HEADER: FileSystemGuid at 0x10, FvLength at
/// 0x20, Signature at 0x28).
const FVH_SIGNATURE: &[u8; 4] = b"_FVH";
const FVH_GUID_AT: usize = 0x10;
const FVH_LENGTH_AT: usize = 0x20;
const FVH_SIGNATURE_AT: usize = 0x28;

/// For a UEFI image whose variable store comes first (OVMF.fd: the store's
/// firmware volume, then the code's), the bytes of the store: up to the
/// next firmware volume, on a 4 KiB boundary. `None` when the image does not
/// begin with a variable store, or has no code after it.
pub fn uefi_vars_len(image: &[u8]) -> Option<usize> {
    let header = |at: usize| image.get(at..at.checked_add(FVH_SIGNATURE_AT + 4)?);
    let h = header(0)?;
    if &h[FVH_SIGNATURE_AT..] != FVH_SIGNATURE || h[FVH_GUID_AT..FVH_GUID_AT + 16] != NV_DATA_FV_GUID {
        return None;
    }
    let len = u64::from_le_bytes(h[FVH_LENGTH_AT..FVH_LENGTH_AT + 8].try_into().ok()?);
    let first = usize::try_from(len.checked_next_multiple_of(FLASH_GRANULE)?).ok()?.max(FLASH_GRANULE as usize);
    (first..image.len())
        .step_by(FLASH_GRANULE as usize)
        .find(|&at| header(at).is_some_and(|h| &h[FVH_SIGNATURE_AT..] == FVH_SIGNATURE))
}

/// SeaBIOS's boot menu: whether it is offered, and how long SeaBIOS waits
/// for ESC (in ms; `None`: SeaBIOS's default, 2.5 s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootMenu {
    pub show: bool,
    pub wait_ms: Option<u16>,
}

/// The contents of the `bootorder` file of the device paths `boot`.
pub fn bootorder_file(boot: &[String]) -> Vec<u8> {
    boot.iter().map(|p| format!("{p}\n")).collect::<String>().into_bytes()
}

/// The machine's SMBIOS tables, and the UUID they carry.
#[derive(Debug, Clone)]
pub struct Smbios {
    pub blobs: firmware::smbios::SmbiosBlobs,
    pub uuid: Option<[u8; 16]>,
}

/// What the machine says about itself where the user said nothing, as
/// QEMU's PC does: the maker, the board it models and the version.
const SMBIOS_MANUFACTURER: &str = "ferrovm";
const SMBIOS_PRODUCT: &str = "Standard PC (i440FX + PIIX, 1996)";
const SMBIOS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the SMBIOS tables of the machine `config` describes: the user's
/// fields ([`MachineConfig::smbios`](crate::config::MachineConfig)) over
/// the machine's own, its sockets, cores and threads, and its RAM below
/// and above the PCI hole.
pub fn smbios(config: &crate::config::MachineConfig) -> Result<Smbios, Error> {
    let mut c = config.smbios.clone();
    let fill = |f: &mut Option<String>, v: &str| {
        f.get_or_insert_with(|| v.to_string());
    };
    fill(&mut c.system.manufacturer, SMBIOS_MANUFACTURER);
    fill(&mut c.system.product, SMBIOS_PRODUCT);
    fill(&mut c.system.version, SMBIOS_VERSION);
    fill(&mut c.chassis.manufacturer, SMBIOS_MANUFACTURER);
    fill(&mut c.chassis.version, SMBIOS_VERSION);
    fill(&mut c.processor.manufacturer, SMBIOS_MANUFACTURER);
    fill(&mut c.processor.version, SMBIOS_VERSION);
    let below = config.mem.min(mmu::PCI_HOLE_START);
    let mut ram = vec![(0, below)];
    if config.mem > below {
        ram.push((1 << 32, config.mem - below));
    }
    let [eax, _, _, edx] = cpu::cpuid::cpuid(&cpu::CpuState::reset(), 1, 0);
    let t = &config.topology;
    let machine = firmware::smbios::SmbiosMachine {
        sockets: t.sockets,
        cores: t.cores,
        threads: t.threads,
        processor_id: u64::from(eax) | (u64::from(edx) << 32),
        mhz: u16::try_from(cpu::cpuid::TSC_KHZ / 1000).unwrap_or(u16::MAX),
        ram,
    };
    let blobs = firmware::smbios::build_smbios(&c, &machine).map_err(|e| Error::Config(format!("-smbios: {e}")))?;
    Ok(Smbios { blobs, uuid: c.system.uuid })
}

/// The fw_cfg device for a machine with `mem`, whose boot devices are
/// `boot` (SeaBIOS device paths, first tried first:
/// [`crate::storage::boot_paths`]), and whose CPUs have the local APIC IDs
/// `apic_ids` (the bootstrap processor's first). The ACPI tables are built
/// again each time the firmware selects them, with the PM block where `pm`
/// says the firmware placed it (SeaBIOS 0x600, OVMF 0xB000), as QEMU
/// builds them when they are read. Without `pm` (a PC without ACPI, QEMU's
/// `-no-acpi`) there are no ACPI tables.
pub fn fw_cfg(
    mem: &Arc<GuestMemory>,
    boot: &[String],
    menu: BootMenu,
    acpi: &firmware::acpi::AcpiConfig,
    vga_rom: Option<Vec<u8>>,
    pm: Option<Arc<devices::pci::piix4_pm::PmDecode>>,
    smbios: &Smbios,
) -> Result<FwCfg, Error> {
    let fw = |e: devices::legacy::fw_cfg::FwCfgError| Error::Config(format!("fw_cfg: {e}"));
    let cpus = u16::try_from(acpi.cpus()).map_err(|_| Error::Config(format!("{} CPUs", acpi.cpus())))?;
    let mut d = FwCfg::new(mem.clone(), mem.ram_size(), cpus);
    // The CPUs the BIOS waits for after its INIT-SIPI-SIPI.
    d.add_file("etc/boot-cpus", cpus.to_le_bytes().to_vec()).map_err(fw)?;
    d.set_item(FW_CFG_BOOT_MENU, u16::from(menu.show).to_le_bytes().to_vec());
    if let Some(ms) = menu.wait_ms {
        d.add_file("etc/boot-menu-wait", ms.to_le_bytes().to_vec()).map_err(fw)?;
    }
    let e820 = firmware::e820::e820_for_memory(mem).map_err(|e| Error::Config(format!("e820: {e}")))?;
    d.add_file("etc/e820", e820.iter().flat_map(|e| e.to_bytes()).collect()).map_err(fw)?;
    d.add_file("bootorder", bootorder_file(boot)).map_err(fw)?;
    d.add_file("etc/sercon-port", SERCON_PORT.to_le_bytes().to_vec()).map_err(fw)?;
    if let Some(rom) = vga_rom {
        d.add_file(VGA_ROM_FILE, rom).map_err(fw)?;
    }
    d.add_file("etc/boot-fail-wait", BOOT_FAIL_WAIT_MS.to_le_bytes().to_vec()).map_err(fw)?;
    // The firmware places the SMBIOS structures and fills in the entry
    // point's table address (SeaBIOS adds its own type 0 when there is
    // none); QEMU hands over the UUID on its own as well.
    d.add_file(firmware::smbios::SMBIOS_TABLES_FILE, smbios.blobs.tables.clone()).map_err(fw)?;
    d.add_file(firmware::smbios::SMBIOS_ANCHOR_FILE, smbios.blobs.anchor.clone()).map_err(fw)?;
    d.set_item(FW_CFG_UUID, smbios.uuid.unwrap_or_default().to_vec());
    let Some(pm) = pm else { return Ok(d) };
    let built = firmware::acpi::build_acpi_tables(acpi)?;
    d.add_file(firmware::acpi::ACPI_TABLES_FILE, built.tables.clone()).map_err(fw)?;
    d.add_file(firmware::acpi::ACPI_RSDP_FILE, built.rsdp.clone()).map_err(fw)?;
    d.add_file(firmware::acpi::TABLE_LOADER_FILE, built.table_loader()).map_err(fw)?;
    let acpi = acpi.clone();
    d.set_refresh(Box::new(move |name| {
        if name != firmware::acpi::ACPI_TABLES_FILE {
            return None;
        }
        let cfg = acpi.clone().with_pm_block(pm.base()?);
        match firmware::acpi::build_acpi_tables(&cfg) {
            Ok(t) => Some(t.tables),
            Err(e) => {
                tracing::error!(target: "firmware", "the ACPI tables for the PM block at {:#x}: {e}", cfg.pm1a_evt_port);
                None
            }
        }
    }));
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acpi_for(ids: &[u8]) -> firmware::acpi::AcpiConfig {
        firmware::acpi::AcpiConfig::with_apic_ids(ids.to_vec())
    }

    #[test]
    fn bad_images_are_named() {
        let mut ok = vec![0u8; 0x2_0000];
        ok[0x1_fff0] = 0xea;
        check_image(&ok, None).unwrap();
        let e = check_image(&ok[..1000], Some(Path::new("x.bin"))).unwrap_err().to_string();
        assert!(e.contains("--bios x.bin is 1000 bytes") && e.contains("64 KiB"), "{e}");
        assert!(check_image(&[], None).is_err());
        assert!(check_image(&vec![0u8; 0x1_0000], None).unwrap_err().to_string().contains("reset vector"));
        assert!(check_image(&vec![0xffu8; 0x1_0000], None).is_err());
        assert!(check_image(&vec![0x90u8; 32 << 20], None).is_err());
    }

    /// A firmware volume header at `at`: `guid`, `len` bytes.
    fn fvh(image: &mut [u8], at: usize, guid: [u8; 16], len: u64) {
        image[at + FVH_GUID_AT..][..16].copy_from_slice(&guid);
        image[at + FVH_LENGTH_AT..][..8].copy_from_slice(&len.to_le_bytes());
        image[at + FVH_SIGNATURE_AT..][..4].copy_from_slice(FVH_SIGNATURE);
    }

    #[test]
    fn a_uefi_images_variable_store_is_found_before_its_code() {
        let mut img = vec![0u8; 0x8000];
        assert_eq!(uefi_vars_len(&img), None, "no volume");
        fvh(&mut img, 0, NV_DATA_FV_GUID, 0x1800);
        assert_eq!(uefi_vars_len(&img), None, "a store with no code after it");
        fvh(&mut img, 0x3000, [7; 16], 0x5000);
        assert_eq!(uefi_vars_len(&img), Some(0x3000), "up to the next volume, past the store's length");
        fvh(&mut img, 0x2000, [7; 16], 0x5000);
        assert_eq!(uefi_vars_len(&img), Some(0x2000));
        let mut code_first = vec![0u8; 0x8000];
        fvh(&mut code_first, 0, [7; 16], 0x8000);
        assert_eq!(uefi_vars_len(&code_first), None, "code first: no store to split off");
        // A length that overflows, and an image shorter than a header.
        fvh(&mut img, 0, NV_DATA_FV_GUID, u64::MAX);
        assert_eq!(uefi_vars_len(&img), None);
        assert_eq!(uefi_vars_len(&[0u8; 8]), None);

        let mut code = vec![0u8; 0x3000];
        check_flash_image(&code, "c.fd").unwrap_err();
        code[0x2ff0] = 0xea;
        check_flash_image(&code, "c.fd").unwrap();
        let e = check_flash_image(&code[..0x2800], "c.fd").unwrap_err().to_string();
        assert!(e.contains("4 KiB"), "{e}");
    }

    #[test]
    fn fw_cfg_holds_the_files_seabios_reads() {
        let mem = Arc::new(GuestMemory::new(64 << 20).unwrap());
        let boot = crate::storage::boot_paths("dc", &Default::default(), &[4, 0x1a], &[]);
        let pm = Arc::new(devices::pci::piix4_pm::Piix4Pm::new());
        let cfg = crate::config::MachineConfig::for_test(Default::default());
        let smbios = smbios(&crate::config::MachineConfig {
            smbios: firmware::smbios::SmbiosConfig {
                system: firmware::smbios::SystemInfo { uuid: Some([7; 16]), ..Default::default() },
                ..Default::default()
            },
            ..cfg
        })
        .unwrap();
        let d = fw_cfg(&mem, &boot, BootMenu::default(), &acpi_for(&[0, 1]), None, Some(pm.decode()), &smbios).unwrap();
        let names = d.file_names();
        for f in [
            "etc/e820",
            "bootorder",
            "etc/sercon-port",
            "etc/acpi/tables",
            "etc/acpi/rsdp",
            "etc/table-loader",
            "etc/smbios/smbios-tables",
            "etc/smbios/smbios-anchor",
        ] {
            assert!(names.iter().any(|n| n == f), "{f} in {names:?}");
        }
        assert_eq!(d.file("bootorder").unwrap(), b"/pci@i0cf8/*@4\n/pci@i0cf8/*@1a\n");
        assert_eq!(d.file("etc/sercon-port").unwrap(), [0xf8, 0x03]);
        assert_eq!(d.file("etc/boot-cpus").unwrap(), [2, 0], "two CPUs to wait for");
        // SeaBIOS takes the tables only when the entry point's length is the file's.
        let anchor = d.file("etc/smbios/smbios-anchor").unwrap();
        let tables = d.file("etc/smbios/smbios-tables").unwrap();
        assert_eq!(anchor.len(), 31);
        assert_eq!(usize::from(u16::from_le_bytes([anchor[0x16], anchor[0x17]])), tables.len());
        assert!(tables.windows(7).any(|w| w == b"ferrovm"), "the machine's maker is in the tables");
        let mut d = d;
        devices::bus::BusDevice::write(&mut d, 0, &FW_CFG_UUID.to_le_bytes());
        let uuid: Vec<u8> = (0..16)
            .map(|_| {
                let mut b = [0u8];
                devices::bus::BusDevice::read(&mut d, 1, &mut b);
                b[0]
            })
            .collect();
        assert_eq!(uuid, [7; 16], "-uuid in fw_cfg");
        let e820 = d.file("etc/e820").unwrap();
        assert_eq!(e820.len() % 20, 0);
        // The last RAM entry ends at the top of RAM.
        let ram_top = e820
            .chunks(20)
            .filter(|e| e[16] == 1)
            .map(|e| u64::from_le_bytes(e[0..8].try_into().unwrap()) + u64::from_le_bytes(e[8..16].try_into().unwrap()))
            .max();
        assert_eq!(ram_top, Some(64 << 20));
        assert_eq!(d.file("etc/table-loader").unwrap().len() % 128, 0);
        assert!(d.file("etc/boot-menu-wait").is_none());
        let menu = BootMenu { show: true, wait_ms: Some(700) };
        let d = fw_cfg(&mem, &boot, menu, &acpi_for(&[0]), None, Some(pm.decode()), &smbios).unwrap();
        assert_eq!(d.file("etc/boot-menu-wait").unwrap(), 700u16.to_le_bytes());
    }

    /// A multiboot kernel with the a.out kludge: loaded at 2 MiB, entered
    /// at its start, `extra` header flags.
    fn aout_kernel(extra: u32) -> Vec<u8> {
        let flags = (1 << 16) | 2 | extra;
        let mut k = Vec::new();
        for v in [0x1bad_b002u32, flags, 0u32.wrapping_sub(0x1bad_b002).wrapping_sub(flags)] {
            k.extend(v.to_le_bytes());
        }
        for v in [0x20_0000u32, 0x20_0000, 0, 0x20_2000, 0x20_0020] {
            k.extend(v.to_le_bytes());
        }
        k.resize(0x100, 0xf4);
        k
    }

    #[test]
    fn a_kernel_for_the_bios_goes_to_the_rom_that_boots_it() {
        use crate::config::{BiosKernel, BootModule};
        let module = BootModule { cmdline: "m.bin x".into(), data: vec![1, 2, 3] };
        let k = BiosKernel { kernel: aout_kernel(0), modules: vec![module], name: "k".into(), ..Default::default() };
        let refused = |k: &BiosKernel| match prepare_kernel_boot(k, 64 << 20) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        match prepare_kernel_boot(&k, 64 << 20) {
            Ok(b) => {
                assert_eq!(b.boot_path(), "/rom@genroms/multiboot_dma.bin");
                assert!(b.note.contains("1 module(s), entry 0x200020"), "{}", b.note);
                let mem = Arc::new(GuestMemory::new(64 << 20).unwrap());
                let mut d = FwCfg::new(mem, 64 << 20, 1);
                b.install(&mut d).unwrap();
                assert!(d.file(MULTIBOOT_ROM_FILE).is_some_and(|r| r[..2] == [0x55, 0xaa]));
            }
            // Without Debian's qemu-system-data the error says so.
            Err(e) => assert!(e.to_string().contains("qemu-system-data"), "{e}"),
        }
        // A header that is there but bad is named as a multiboot header.
        let mut bad = k.clone();
        bad.kernel[8] ^= 1;
        assert!(refused(&bad).contains("bad checksum"), "{}", refused(&bad));
        let unknown = BiosKernel { kernel: aout_kernel(1 << 5), ..k.clone() };
        assert!(refused(&unknown).contains("require features"), "{}", refused(&unknown));
        // An ELF without a multiboot header: the direct boot is the way.
        let mut vmlinux = b"\x7fELF\x02\x01\x01".to_vec();
        vmlinux.resize(0x2000, 0);
        let e = refused(&BiosKernel { kernel: vmlinux, modules: Vec::new(), ..k.clone() });
        assert!(e.contains("vmlinux") && e.contains("--kernel-boot auto"), "{e}");
        // A Linux kernel takes no module list.
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let e = refused(&BiosKernel { kernel: bz, ..k.clone() });
        assert!(e.contains("not a list of modules"), "{e}");
        // A kernel over the BIOS's low memory.
        let mut low = aout_kernel(0);
        for (i, v) in [0x8000u32, 0x8000, 0, 0x8100, 0x8020].into_iter().enumerate() {
            low[12 + 4 * i..16 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let e = refused(&BiosKernel { kernel: low, ..k });
        assert!(e.contains("0x8000..0x8100 overlaps") && e.contains("0x0..0xa000"), "{e}");
    }

    /// The FADT the firmware reads says where it placed the PM block.
    #[test]
    fn the_acpi_tables_follow_the_pm_block() {
        use devices::bus::BusDevice;
        use devices::pci::PciDevice;
        let mem = Arc::new(GuestMemory::new(64 << 20).unwrap());
        let mut pm = devices::pci::piix4_pm::Piix4Pm::new();
        let smbios = smbios(&crate::config::MachineConfig::for_test(Default::default())).unwrap();
        let mut d = fw_cfg(&mem, &[], BootMenu::default(), &acpi_for(&[0]), None, Some(pm.decode()), &smbios).unwrap();
        let at = d.file_names().iter().position(|n| n == firmware::acpi::ACPI_TABLES_FILE).unwrap();
        let key = devices::legacy::fw_cfg::FW_CFG_FILE_FIRST + at as u16;
        let built = |base: u16| {
            let cfg = firmware::acpi::AcpiConfig::with_apic_ids(vec![0]).with_pm_block(base);
            firmware::acpi::build_acpi_tables(&cfg).unwrap().tables
        };
        let read = |d: &mut FwCfg| {
            d.write(0, &key.to_le_bytes());
            let mut b = [0u8];
            (0..built(0).len())
                .map(|_| {
                    d.read(1, &mut b);
                    b[0]
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(read(&mut d), built(0x600), "not placed yet: the tables as built");
        pm.write_config(0x40, &0xb001u32.to_le_bytes());
        pm.write_config(0x80, &[1]);
        assert_eq!(read(&mut d), built(0xb000), "OVMF's place");
        assert_ne!(built(0xb000), built(0x600));
    }
}
