//! A bzImage booted by the BIOS, as QEMU's `-kernel` boots it: the kernel,
//! its initrd and command line go to the firmware over fw_cfg, and an option
//! ROM (QEMU's linuxboot) copies them into place and enters the kernel's
//! real-mode setup code. The kernel then finds the BIOS a PC boots with:
//! its interrupt vector table, its E820 map (INT 15h), the running timer.
//!
//! The layout is QEMU's for a protocol 2.02+ kernel loaded high: the setup
//! code at 0x10000, the command line at 0x20000, the protected-mode kernel
//! at 1 MiB, and the initrd as high below 4 GiB as the kernel allows,
//! clear of the top of low RAM where the firmware keeps its tables.
//! [`bios_boot`] writes the header fields a boot loader fills in (loader
//! type, command line pointer, heap end, initrd) into the setup code it
//! hands over.

use crate::linux::{BzImage, LinuxError};

/// fw_cfg items the linuxboot ROM reads (QEMU's numbering).
pub const FW_CFG_KERNEL_ADDR: u16 = 0x07;
pub const FW_CFG_KERNEL_SIZE: u16 = 0x08;
pub const FW_CFG_INITRD_ADDR: u16 = 0x0a;
pub const FW_CFG_INITRD_SIZE: u16 = 0x0b;
/// Where the multiboot ROM enters the kernel.
pub const FW_CFG_KERNEL_ENTRY: u16 = 0x10;
pub const FW_CFG_KERNEL_DATA: u16 = 0x11;
pub const FW_CFG_INITRD_DATA: u16 = 0x12;
pub const FW_CFG_CMDLINE_ADDR: u16 = 0x13;
pub const FW_CFG_CMDLINE_SIZE: u16 = 0x14;
pub const FW_CFG_CMDLINE_DATA: u16 = 0x15;
pub const FW_CFG_SETUP_ADDR: u16 = 0x16;
pub const FW_CFG_SETUP_SIZE: u16 = 0x17;
pub const FW_CFG_SETUP_DATA: u16 = 0x18;

/// Where the setup code goes.
pub const REAL_ADDR: u32 = 0x1_0000;
/// Where the command line goes.
pub const CMDLINE_ADDR: u32 = 0x2_0000;
/// Where the protected-mode kernel goes.
pub const PROT_ADDR: u32 = 0x10_0000;
/// The top of low RAM the firmware keeps for its tables (QEMU's PC
/// reserves as much for the ACPI data SeaBIOS places there).
pub const FIRMWARE_DATA: u64 = 0x2_8000;
/// The oldest initrd_addr_max: protocols before 2.03 do not say.
const DEFAULT_INITRD_MAX: u64 = 0x37ff_ffff;

// Setup header fields a boot loader writes (Documentation/x86/boot.rst).
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
/// The boot loader ID QEMU gives itself ("0xB0").
const LOADER_ID: u8 = 0xb0;
/// loadflags CAN_USE_HEAP: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 0x80;

/// What the BIOS boot of a kernel hands the firmware: each part, and where
/// the ROM puts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BiosLinux {
    /// The boot sector and setup code, with the loader's fields filled in.
    pub setup: Vec<u8>,
    /// The protected-mode kernel.
    pub kernel: Vec<u8>,
    /// The initrd and its address, if there is one.
    pub initrd: Option<(u32, Vec<u8>)>,
    /// The command line, NUL-terminated.
    pub cmdline: Vec<u8>,
}

impl BiosLinux {
    /// The fw_cfg items, key and contents, that describe it.
    pub fn fw_cfg_items(&self) -> Vec<(u16, Vec<u8>)> {
        let u32le = |v: u32| v.to_le_bytes().to_vec();
        let len = |b: &[u8]| u32le(b.len() as u32);
        let mut items = vec![
            (FW_CFG_SETUP_ADDR, u32le(REAL_ADDR)),
            (FW_CFG_SETUP_SIZE, len(&self.setup)),
            (FW_CFG_SETUP_DATA, self.setup.clone()),
            (FW_CFG_KERNEL_ADDR, u32le(PROT_ADDR)),
            (FW_CFG_KERNEL_SIZE, len(&self.kernel)),
            (FW_CFG_KERNEL_DATA, self.kernel.clone()),
            (FW_CFG_CMDLINE_ADDR, u32le(CMDLINE_ADDR)),
            (FW_CFG_CMDLINE_SIZE, len(&self.cmdline)),
            (FW_CFG_CMDLINE_DATA, self.cmdline.clone()),
        ];
        let (addr, data) = match &self.initrd {
            Some((addr, data)) => (*addr, data.clone()),
            None => (0, Vec::new()),
        };
        items.push((FW_CFG_INITRD_ADDR, u32le(addr)));
        items.push((FW_CFG_INITRD_SIZE, len(&data)));
        items.push((FW_CFG_INITRD_DATA, data));
        items
    }
}

/// Lays out `image` (a bzImage), `initrd` and `cmdline` for the BIOS to
/// boot on a machine whose RAM below 4 GiB ends at `ram_below_4g`.
pub fn bios_boot(
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram_below_4g: u64,
) -> Result<BiosLinux, LinuxError> {
    let bz = BzImage::parse(image)?;
    let h = &bz.header;
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(LinuxError::CmdlineNul(at));
    }
    if cmdline.len() as u64 > u64::from(h.cmdline_size) {
        return Err(LinuxError::CmdlineTooLong { len: cmdline.len(), max: u64::from(h.cmdline_size) });
    }
    // The setup code and its heap must stay below the command line.
    let setup_len = h.setup_size();
    if setup_len > u64::from(CMDLINE_ADDR - REAL_ADDR) {
        return Err(LinuxError::KernelDoesNotFit {
            start: u64::from(REAL_ADDR),
            end: u64::from(REAL_ADDR) + setup_len,
            ram_end: u64::from(CMDLINE_ADDR),
        });
    }
    let kernel_end = u64::from(PROT_ADDR) + bz.kernel.len() as u64;
    let top = ram_below_4g.saturating_sub(FIRMWARE_DATA);
    if kernel_end > top {
        return Err(LinuxError::KernelDoesNotFit { start: u64::from(PROT_ADDR), end: kernel_end, ram_end: top });
    }
    let mut setup = image[..setup_len as usize].to_vec();
    setup[TYPE_OF_LOADER] = LOADER_ID;
    setup[LOADFLAGS] |= CAN_USE_HEAP;
    let heap_end = (CMDLINE_ADDR - REAL_ADDR - 0x200) as u16;
    setup[HEAP_END_PTR..HEAP_END_PTR + 2].copy_from_slice(&heap_end.to_le_bytes());
    setup[CMD_LINE_PTR..CMD_LINE_PTR + 4].copy_from_slice(&CMDLINE_ADDR.to_le_bytes());
    let initrd = match initrd {
        None => None,
        Some(data) => {
            let allowed = if h.version >= 0x0203 { u64::from(h.initrd_addr_max) } else { DEFAULT_INITRD_MAX };
            // The last byte the initrd may occupy.
            let highest = allowed.min(top.saturating_sub(1));
            let size = data.len() as u64;
            let start = (highest + 1).checked_sub(size).map(|s| s & !0xfff).filter(|&s| s >= kernel_end);
            let Some(start) = start else {
                return Err(LinuxError::InitrdDoesNotFit { size, lowest: kernel_end, highest });
            };
            // Below 4 GiB: `highest` is.
            let start = start as u32;
            setup[RAMDISK_IMAGE..RAMDISK_IMAGE + 4].copy_from_slice(&start.to_le_bytes());
            setup[RAMDISK_SIZE..RAMDISK_SIZE + 4].copy_from_slice(&(data.len() as u32).to_le_bytes());
            Some((start, data.to_vec()))
        }
    };
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    Ok(BiosLinux { setup, kernel: bz.kernel.to_vec(), initrd, cmdline: c })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: protocol 2.15, 4 setup sectors, loaded high, and
    /// `kernel_len` bytes of protected-mode code.
    fn bzimage(kernel_len: usize) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512 + kernel_len];
        img[0x1f1] = 4;
        img[0x1f4..0x1f8].copy_from_slice(&((kernel_len as u32).div_ceil(16)).to_le_bytes());
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x200] = 0xeb;
        img[0x201] = 0x6a;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 0x01;
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        for (i, b) in img[5 * 512..].iter_mut().enumerate() {
            *b = i as u8;
        }
        img
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn the_layout_and_header_follow_qemu() {
        let img = bzimage(3000);
        let initrd = vec![7u8; 10_000];
        let b = bios_boot(&img, Some(&initrd), "console=ttyS0", 256 << 20).unwrap();
        assert_eq!(b.setup.len(), 5 * 512);
        assert_eq!(b.kernel, img[5 * 512..]);
        assert_eq!(b.cmdline, b"console=ttyS0\0");
        assert_eq!(b.setup[TYPE_OF_LOADER], 0xb0);
        assert_eq!(b.setup[LOADFLAGS], 0x81, "LOADED_HIGH kept, CAN_USE_HEAP set");
        assert_eq!(u16::from_le_bytes([b.setup[HEAP_END_PTR], b.setup[HEAP_END_PTR + 1]]), 0xfe00);
        assert_eq!(le32(&b.setup, CMD_LINE_PTR), 0x2_0000);
        let (at, data) = b.initrd.clone().unwrap();
        // 256 MiB less the firmware's data, less the initrd, page-aligned.
        assert_eq!(at, ((256u32 << 20) - 0x2_8000 - 10_000) & !0xfff);
        assert_eq!(data, initrd);
        assert_eq!((le32(&b.setup, RAMDISK_IMAGE), le32(&b.setup, RAMDISK_SIZE)), (at, 10_000));
        // The rest of the setup code is the image's.
        assert_eq!(b.setup[0x300..], img[0x300..5 * 512]);
        let items = b.fw_cfg_items();
        let item = |k: u16| items.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(item(FW_CFG_SETUP_ADDR), 0x1_0000u32.to_le_bytes());
        assert_eq!(item(FW_CFG_KERNEL_ADDR), 0x10_0000u32.to_le_bytes());
        assert_eq!(item(FW_CFG_KERNEL_SIZE), 3000u32.to_le_bytes());
        assert_eq!(item(FW_CFG_CMDLINE_SIZE), 14u32.to_le_bytes());
        assert_eq!(item(FW_CFG_INITRD_ADDR), at.to_le_bytes());
        assert_eq!(item(FW_CFG_INITRD_DATA), initrd);
    }

    #[test]
    fn the_initrd_respects_initrd_addr_max() {
        let mut img = bzimage(100);
        img[0x22c..0x230].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
        let b = bios_boot(&img, Some(&[1u8; 4096]), "", 1 << 30).unwrap();
        assert_eq!(b.initrd.unwrap().0, 0x00ff_f000, "ends at initrd_addr_max");
        let b = bios_boot(&img, None, "", 1 << 30).unwrap();
        assert_eq!(b.fw_cfg_items().iter().find(|(k, _)| *k == FW_CFG_INITRD_SIZE).unwrap().1, [0; 4]);
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let img = bzimage(100);
        assert!(matches!(
            bios_boot(&img, Some(&vec![0u8; 32 << 20]), "", 16 << 20),
            Err(LinuxError::InitrdDoesNotFit { .. })
        ));
        assert!(matches!(bios_boot(&bzimage(8 << 20), None, "", 8 << 20), Err(LinuxError::KernelDoesNotFit { .. })));
        assert!(matches!(bios_boot(&img, None, &"x".repeat(3000), 64 << 20), Err(LinuxError::CmdlineTooLong { .. })));
        assert!(matches!(bios_boot(&img, None, "a\0b", 64 << 20), Err(LinuxError::CmdlineNul(1))));
        assert!(bios_boot(b"not a kernel", None, "", 64 << 20).is_err());
    }
}
