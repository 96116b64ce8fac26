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
    match std::fs::read(VGA_BIOS_PATH) {
        Ok(b) if b.len() >= 512 && b[0] == 0x55 && b[1] == 0xaa => Ok(b),
        Ok(b) => Err(Error::Config(format!(
            "{VGA_BIOS_PATH} ({} bytes) is not an option ROM (no 55 AA signature); reinstall Debian's `seabios` package",
            b.len()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Config(format!(
            "the standard VGA needs its BIOS, and {VGA_BIOS_PATH} is missing: install Debian's `seabios` \
             package (apt-get install seabios), or run without a display (-vga none)"
        ))),
        Err(source) => Err(Error::Read { path: VGA_BIOS_PATH.into(), source }),
    }
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

/// The fw_cfg device for a machine with `mem`, whose boot devices are
/// `boot` (SeaBIOS device paths, first tried first:
/// [`crate::storage::boot_paths`]), and whose CPUs have the local APIC IDs
/// `apic_ids` (the bootstrap processor's first).
pub fn fw_cfg(
    mem: &Arc<GuestMemory>,
    boot: &[String],
    menu: BootMenu,
    apic_ids: &[u8],
    vga_rom: Option<Vec<u8>>,
) -> Result<FwCfg, Error> {
    let fw = |e: devices::legacy::fw_cfg::FwCfgError| Error::Config(format!("fw_cfg: {e}"));
    let cpus = u16::try_from(apic_ids.len()).map_err(|_| Error::Config(format!("{} CPUs", apic_ids.len())))?;
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
    let acpi = firmware::acpi::build_acpi_tables(&firmware::acpi::AcpiConfig::with_apic_ids(apic_ids.to_vec()))?;
    d.add_file(firmware::acpi::ACPI_TABLES_FILE, acpi.tables.clone()).map_err(fw)?;
    d.add_file(firmware::acpi::ACPI_RSDP_FILE, acpi.rsdp.clone()).map_err(fw)?;
    d.add_file(firmware::acpi::TABLE_LOADER_FILE, acpi.table_loader()).map_err(fw)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn fw_cfg_holds_the_files_seabios_reads() {
        let mem = Arc::new(GuestMemory::new(64 << 20).unwrap());
        let boot = crate::storage::boot_paths("dc", &Default::default(), &[4, 0x1a]);
        let d = fw_cfg(&mem, &boot, BootMenu::default(), &[0, 1], None).unwrap();
        let names = d.file_names();
        for f in ["etc/e820", "bootorder", "etc/sercon-port", "etc/acpi/tables", "etc/acpi/rsdp", "etc/table-loader"] {
            assert!(names.iter().any(|n| n == f), "{f} in {names:?}");
        }
        assert_eq!(d.file("bootorder").unwrap(), b"/pci@i0cf8/*@4\n/pci@i0cf8/*@1a\n");
        assert_eq!(d.file("etc/sercon-port").unwrap(), [0xf8, 0x03]);
        assert_eq!(d.file("etc/boot-cpus").unwrap(), [2, 0], "two CPUs to wait for");
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
        let d = fw_cfg(&mem, &boot, menu, &[0], None).unwrap();
        assert_eq!(d.file("etc/boot-menu-wait").unwrap(), 700u16.to_le_bytes());
    }
}
