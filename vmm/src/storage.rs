//! The machine's drives: which controller each hangs on, and the order
//! the firmware tries them in.
//!
//! A drive is a virtio-blk PCI function of its own, or one of the four
//! positions of the PIIX3 IDE controller (00:01.1): primary master and
//! slave, secondary master and slave, numbered 0 to 3 as QEMU's `index=`
//! numbers them (`-hda` 0, `-hdb` 1, `-cdrom` 2, `-hdd` 3). An IDE drive
//! is a hard disk or an ATAPI CD-ROM. The IDE controller is part of the
//! machine when at least one drive is on it. A floppy image goes in drive
//! A: or B: of the floppy disk controller (`-fda`, `-fdb`), which, with
//! the 8237 DMA pair it transfers through, is part of the machine when a
//! floppy drive is given. An image smaller than a standard format is a
//! disk of the smallest format it fits, its missing tail read as zeroes
//! (as QEMU takes such images).
//!
//! The boot order is QEMU's `-boot order=` letters: `c` the hard disks
//! (IDE, then virtio), `d` the CD-ROMs, `a` the floppy drives, `n` to `p`
//! the boot ROMs of the first three NICs (PXE through iPXE). SeaBIOS
//! reads it as its `bootorder` file of device paths
//! ([`boot_paths`]); devices that are not listed come after those that are.
//! A `once=` order is the file of the first boot only: the machine's first
//! reset puts the `order=` one in its place, as QEMU's `-boot once=` does.
//! `menu=on` makes SeaBIOS offer its boot menu (ESC) for `splash-time=`
//! milliseconds (SeaBIOS's default: 2500).

use devices::block::{BlockBackend, DiskInterface, DiskMedia, SharedDisk};
use devices::floppy::FloppyDrive;
use devices::ide::IdeDrive;

use crate::error::Error;

/// QEMU's default boot order: hard disk, floppy, CD-ROM.
pub const DEFAULT_BOOT_ORDER: &str = "cad";

/// One drive as the front end opened it.
pub struct Drive {
    /// The image; `None` only for a CD-ROM drive without a disc.
    pub image: Option<Box<dyn BlockBackend>>,
    /// A name for logs and statistics (the image's path).
    pub label: String,
    /// The controller it hangs on.
    pub interface: DiskInterface,
    /// A hard disk or a CD-ROM.
    pub media: DiskMedia,
    /// The IDE position (0-3), or `None` for the first free one.
    pub index: Option<u8>,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("label", &self.label)
            .field("interface", &self.interface)
            .field("media", &self.media)
            .field("index", &self.index)
            .field("medium", &self.image.is_some())
            .finish()
    }
}

/// A drive of a running machine, whose image its device model shares
/// with the machine, which snapshots it between two of the guest's
/// requests. (A CD-ROM's medium changed through the monitor is not
/// followed here: snapshots only use the disks the guest writes.)
#[derive(Clone)]
pub struct MachineDisk {
    /// The image; `None` for a CD-ROM drive without a disc.
    pub disk: Option<SharedDisk>,
    /// The drive's label (the image's path).
    pub label: String,
    /// Where it hangs.
    pub interface: DiskInterface,
    pub media: DiskMedia,
    pub index: Option<u8>,
}

impl std::fmt::Debug for MachineDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineDisk").field("label", &self.label).field("interface", &self.interface).finish()
    }
}

impl MachineDisk {
    /// A handle that does not keep the image open (a monitor holds it: the
    /// image is flushed and closed with the machine).
    pub fn downgrade(&self) -> WeakMachineDisk {
        WeakMachineDisk { disk: self.disk.as_ref().map(SharedDisk::downgrade), drive: self.clone_without_disk() }
    }

    fn clone_without_disk(&self) -> MachineDisk {
        MachineDisk {
            disk: None,
            label: self.label.clone(),
            interface: self.interface,
            media: self.media,
            index: self.index,
        }
    }
}

/// A [`MachineDisk`] that does not keep its image open.
#[derive(Clone)]
pub struct WeakMachineDisk {
    disk: Option<devices::block::WeakDisk>,
    drive: MachineDisk,
}

impl WeakMachineDisk {
    /// The drive, while its image is open (`None` once the machine is gone).
    pub fn upgrade(&self) -> Option<MachineDisk> {
        let disk = match &self.disk {
            Some(w) => Some(w.upgrade()?),
            None => None,
        };
        Some(MachineDisk { disk, ..self.drive.clone() })
    }
}

/// Shares every drive's image between its device model (the drives
/// returned) and the machine (the list).
pub(crate) fn share(drives: Vec<Drive>) -> (Vec<Drive>, Vec<MachineDisk>) {
    let mut shared = Vec::new();
    let drives = drives
        .into_iter()
        .map(|mut d| {
            let disk = d.image.take().map(SharedDisk::new);
            d.image = disk.clone().map(|s| Box::new(s) as Box<dyn BlockBackend>);
            shared.push(MachineDisk {
                disk,
                label: d.label.clone(),
                interface: d.interface,
                media: d.media,
                index: d.index,
            });
            d
        })
        .collect();
    (drives, shared)
}

/// The drives of a machine and the firmware's boot options.
#[derive(Debug)]
pub struct Storage {
    /// In the order they were given.
    pub drives: Vec<Drive>,
    /// `c`, `d` and `a` in the order the firmware tries them.
    pub boot_order: String,
    /// The order of the first boot only (QEMU's `-boot once=`); the first
    /// reset goes back to `boot_order`.
    pub boot_once: Option<String>,
    /// SeaBIOS offers its boot menu (QEMU's `-boot menu=on`).
    pub boot_menu: bool,
    /// How long SeaBIOS waits for ESC, in milliseconds (QEMU's `-boot
    /// splash-time=`).
    pub boot_menu_wait_ms: Option<u16>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            drives: Vec::new(),
            boot_order: DEFAULT_BOOT_ORDER.to_string(),
            boot_once: None,
            boot_menu: false,
            boot_menu_wait_ms: None,
        }
    }
}

/// The firmware's boot options of `--boot`: QEMU's `-boot` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    pub order: String,
    pub once: Option<String>,
    pub menu: bool,
    pub menu_wait_ms: Option<u16>,
}

/// Parses `ORDER[,once=ORDER][,menu=on|off][,splash-time=MS]` (the order
/// may also be given as `order=ORDER`, and left out for the default).
pub fn parse_boot(spec: &str) -> Result<BootOptions, String> {
    let mut b = BootOptions { order: DEFAULT_BOOT_ORDER.to_string(), once: None, menu: false, menu_wait_ms: None };
    for (i, part) in spec.split(',').enumerate() {
        match part.split_once('=') {
            None if i == 0 => b.order = part.to_string(),
            Some(("order", o)) => b.order = o.to_string(),
            Some(("once", o)) => {
                check_boot_order(o).map_err(|e| format!("once={o}: {e}"))?;
                b.once = Some(o.to_string());
            }
            Some(("menu", "on")) => b.menu = true,
            Some(("menu", "off")) => b.menu = false,
            Some(("menu", m)) => return Err(format!("menu={m}: give on or off")),
            Some(("splash-time", t)) => {
                let ms = t.parse::<u16>().map_err(|_| {
                    format!("splash-time={t}: a time in milliseconds between 0 and 65535 (SeaBIOS's boot menu wait)")
                })?;
                b.menu_wait_ms = Some(ms);
            }
            _ => {
                return Err(format!("'{part}' is not a boot option: ORDER[,once=ORDER][,menu=on|off][,splash-time=MS]"))
            }
        }
    }
    check_boot_order(&b.order)?;
    Ok(b)
}

/// Checks a boot order: QEMU's letters `a`, `c`, `d`, and `n` to `p` for
/// the first to third NIC's boot ROM (PXE), each at most once.
pub fn check_boot_order(order: &str) -> Result<(), String> {
    if order.is_empty() {
        return Err("an empty boot order: give drive letters, e.g. order=dc".into());
    }
    for (i, c) in order.char_indices() {
        match c {
            'a' | 'c' | 'd' | 'n' | 'o' | 'p' => {}
            'b' => return Err("boot order b: a second floppy drive does not boot; use a".into()),
            other => {
                return Err(format!(
                    "boot order '{other}' is not a drive: use a (floppy), c (disk), d (CD-ROM), n-p (network, NIC 1-3)"
                ))
            }
        }
        if order[..i].contains(c) {
            return Err(format!("boot order {order}: '{c}' is given twice"));
        }
    }
    Ok(())
}

/// The NIC a boot order letter names: `n`, `o`, `p` are NICs 0 to 2.
pub fn boot_nic(c: char) -> Option<usize> {
    matches!(c, 'n'..='p').then(|| usize::from(c as u8 - b'n'))
}

/// The drives placed: the virtio disks (image, label) in order, and the
/// IDE positions.
pub(crate) struct Placed {
    pub virtio: Vec<(Box<dyn BlockBackend>, String)>,
    /// `None` when no drive is on IDE (the machine then has no IDE
    /// function).
    pub ide: Option<[IdeDrive; 4]>,
    /// What each IDE position holds, for the boot order and the logs.
    pub ide_kinds: [Option<(DiskMedia, String)>; 4],
    /// Drives A: and B:; `None` when no floppy drive is given (the
    /// machine then has no floppy controller).
    pub floppy: Option<[FloppyDrive; 2]>,
    /// The images in A: and B:, for the logs.
    pub floppy_labels: [Option<String>; 2],
}

/// Puts each drive where it asked to be: virtio disks in order, IDE
/// drives at their `index`, then the rest in the first free positions.
pub(crate) fn place(drives: Vec<Drive>) -> Result<Placed, Error> {
    let mut virtio = Vec::new();
    let mut slots: [Option<Drive>; 4] = Default::default();
    let mut floating = Vec::new();
    let mut floppies: [Option<Drive>; 2] = Default::default();
    for d in drives {
        match d.interface {
            DiskInterface::Floppy => {
                let i = match d.index {
                    Some(i) => usize::from(i),
                    None => floppies.iter().position(Option::is_none).unwrap_or(2),
                };
                match floppies.get_mut(i) {
                    Some(slot @ None) => *slot = Some(d),
                    Some(Some(other)) => {
                        return Err(Error::Config(format!(
                            "floppy drive {} is given twice ({} and {})",
                            if i == 0 { "A:" } else { "B:" },
                            other.label,
                            d.label
                        )))
                    }
                    None => return Err(Error::Config(format!("{}: there are two floppy drives, A: and B:", d.label))),
                }
            }
            DiskInterface::Virtio => {
                let Some(image) = d.image else {
                    return Err(Error::Config(format!("{}: a virtio-blk disk needs an image", d.label)));
                };
                if d.media == DiskMedia::Cdrom {
                    return Err(Error::Config(format!("{}: a CD-ROM is an IDE (ATAPI) drive", d.label)));
                }
                virtio.push((image, d.label));
            }
            DiskInterface::Ide => match d.index {
                Some(i) if usize::from(i) < 4 => {
                    let slot = &mut slots[usize::from(i)];
                    if let Some(other) = slot {
                        return Err(Error::Config(format!(
                            "IDE position {i} is given twice ({} and {})",
                            other.label, d.label
                        )));
                    }
                    *slot = Some(d);
                }
                Some(i) => return Err(Error::Config(format!("{}: IDE position {i}: positions are 0 to 3", d.label))),
                None => floating.push(d),
            },
        }
    }
    for d in floating {
        let Some(free) = slots.iter_mut().find(|s| s.is_none()) else {
            return Err(Error::Config(format!("{}: the IDE controller's four positions are all taken", d.label)));
        };
        *free = Some(d);
    }
    let floppy_labels = [0, 1].map(|i| floppies[i].as_ref().map(|d| d.label.clone()));
    let floppy = if floppies.iter().all(Option::is_none) {
        None
    } else {
        let mut out: [FloppyDrive; 2] = std::array::from_fn(|_| FloppyDrive::Absent);
        for (i, d) in floppies.into_iter().enumerate() {
            let Some(d) = d else { continue };
            out[i] = match d.image {
                Some(image) => FloppyDrive::Disk(fit_floppy(image, &d.label)),
                None => FloppyDrive::Empty(devices::floppy::FloppyFormat::Kb1440),
            };
        }
        Some(out)
    };
    if slots.iter().all(Option::is_none) {
        return Ok(Placed { virtio, ide: None, ide_kinds: Default::default(), floppy, floppy_labels });
    }
    let mut ide_kinds: [Option<(DiskMedia, String)>; 4] = Default::default();
    let mut ide: [IdeDrive; 4] = std::array::from_fn(|_| IdeDrive::Empty);
    for (i, slot) in slots.into_iter().enumerate() {
        let Some(d) = slot else { continue };
        ide_kinds[i] = Some((d.media, d.label.clone()));
        ide[i] = match (d.media, d.image) {
            (DiskMedia::Cdrom, image) => IdeDrive::Cdrom(image),
            (DiskMedia::Disk, Some(image)) => IdeDrive::Disk(image, format!("FERROVM-HD{i}")),
            (DiskMedia::Disk, None) => {
                return Err(Error::Config(format!("{}: an IDE hard disk needs an image", d.label)));
            }
        };
    }
    Ok(Placed { virtio, ide: Some(ide), ide_kinds, floppy, floppy_labels })
}

/// The sizes of the floppy formats, smallest first.
const FLOPPY_SIZES: [u64; 5] = [368_640, 737_280, 1_228_800, 1_474_560, 2_949_120];

/// A floppy image as a disk of a standard format: as it is when its size
/// is one, else padded with zeroes to the smallest format it fits (the
/// floppy controller refuses a size that is none, with the sizes it takes).
fn fit_floppy(image: Box<dyn BlockBackend>, label: &str) -> Box<dyn BlockBackend> {
    let size = image.size();
    if FLOPPY_SIZES.contains(&size) {
        return image;
    }
    match FLOPPY_SIZES.iter().find(|&&s| s > size) {
        Some(&padded) => {
            tracing::warn!(
                target: "devices",
                "{label}: {size} bytes is no floppy format: used as a {padded}-byte disk whose last {} bytes read as zeroes",
                padded - size
            );
            Box::new(Padded { inner: image, padded })
        }
        None => image,
    }
}

/// An image read as a longer one: the bytes past its end read as zeroes
/// and refuse writes.
struct Padded {
    inner: Box<dyn BlockBackend>,
    padded: u64,
}

impl Padded {
    /// The part of `len` bytes at `offset` inside the image, and whether
    /// some lie past its end.
    fn split(&self, offset: u64, len: u64) -> (u64, bool) {
        let inner = self.inner.size();
        let end = offset.saturating_add(len);
        (end.min(inner).saturating_sub(offset), end > inner)
    }

    fn past_end(&self) -> std::io::Error {
        std::io::Error::other(format!("a write past the image's end ({} bytes)", self.inner.size()))
    }
}

impl BlockBackend for Padded {
    fn size(&self) -> u64 {
        self.padded
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let (n, _) = self.split(offset, buf.len() as u64);
        let n = n as usize;
        if n > 0 {
            self.inner.read_at(&mut buf[..n], offset)?;
        }
        buf[n..].fill(0);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match self.split(offset, buf.len() as u64) {
            (_, true) => Err(self.past_end()),
            _ => self.inner.write_at(buf, offset),
        }
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        match self.split(offset, len) {
            (_, true) => Err(self.past_end()),
            _ => self.inner.write_zeroes(offset, len, unmap),
        }
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        match self.split(offset, len) {
            (_, true) => Err(self.past_end()),
            _ => self.inner.discard(offset, len),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// SeaBIOS's device path of floppy drive A: (the controller at 0x3F0
/// behind the ISA bridge at 00:01.0).
pub const FLOPPY_A_PATH: &str = "/pci@i0cf8/isa@1/fdc@03f0/floppy@0";

/// SeaBIOS's device path of IDE position `i` (0-3) on the PIIX3 at
/// 00:01.1: `/pci@i0cf8/ide@1,1/drive@CHANNEL/disk@UNIT`.
pub fn ide_path(i: usize) -> String {
    format!("/pci@i0cf8/ide@1,1/drive@{}/disk@{}", i / 2, i % 2)
}

/// The `bootorder` lines for `order`: for `c` the IDE hard disks by
/// position, then the virtio disks (PCI slots `virtio_slots`); for `d` the
/// CD-ROMs by position; for `a` floppy drive A: (a path that matches no
/// device when there is none).
pub fn boot_paths(
    order: &str,
    ide: &[Option<(DiskMedia, String)>; 4],
    virtio_slots: &[u8],
    nic_slots: &[u8],
) -> Vec<String> {
    let mut paths = Vec::new();
    for c in order.chars() {
        match c {
            'c' => {
                for (i, k) in ide.iter().enumerate() {
                    if matches!(k, Some((DiskMedia::Disk, _))) {
                        paths.push(ide_path(i));
                    }
                }
                paths.extend(virtio_slots.iter().map(|s| format!("/pci@i0cf8/*@{s:x}")));
            }
            'd' => {
                for (i, k) in ide.iter().enumerate() {
                    if matches!(k, Some((DiskMedia::Cdrom, _))) {
                        paths.push(ide_path(i));
                    }
                }
            }
            'a' => paths.push(FLOPPY_A_PATH.to_string()),
            // A NIC's boot ROM: SeaBIOS names its first boot entry by the
            // function's path.
            'n' | 'o' | 'p' => {
                if let Some(s) = boot_nic(c).and_then(|i| nic_slots.get(i)) {
                    paths.push(format!("/pci@i0cf8/*@{s:x}"));
                }
            }
            _ => {}
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Blank;

    impl BlockBackend for Blank {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&mut self, buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&mut self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&mut self, _offset: u64, _len: u64, _unmap: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn discard(&mut self, _offset: u64, _len: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn drive(label: &str, interface: DiskInterface, media: DiskMedia, index: Option<u8>) -> Drive {
        Drive { image: Some(Box::new(Blank)), label: label.into(), interface, media, index }
    }

    #[test]
    fn drives_take_their_positions_then_the_free_ones() {
        let p = place(vec![
            drive("v", DiskInterface::Virtio, DiskMedia::Disk, None),
            drive("a", DiskInterface::Ide, DiskMedia::Disk, None),
            drive("cd", DiskInterface::Ide, DiskMedia::Cdrom, Some(2)),
            drive("b", DiskInterface::Ide, DiskMedia::Disk, None),
            drive("d", DiskInterface::Ide, DiskMedia::Disk, None),
        ])
        .unwrap();
        assert_eq!(p.virtio.len(), 1);
        let labels: Vec<Option<&str>> = p.ide_kinds.iter().map(|k| k.as_ref().map(|(_, l)| l.as_str())).collect();
        assert_eq!(labels, [Some("a"), Some("b"), Some("cd"), Some("d")]);
        let paths = boot_paths("dnc", &p.ide_kinds, &[4], &[3]);
        assert_eq!(
            paths,
            [
                "/pci@i0cf8/ide@1,1/drive@1/disk@0",
                "/pci@i0cf8/*@3",
                "/pci@i0cf8/ide@1,1/drive@0/disk@0",
                "/pci@i0cf8/ide@1,1/drive@0/disk@1",
                "/pci@i0cf8/ide@1,1/drive@1/disk@1",
                "/pci@i0cf8/*@4",
            ]
        );
        assert_eq!(boot_paths("c", &p.ide_kinds, &[], &[])[0], "/pci@i0cf8/ide@1,1/drive@0/disk@0");
        assert_eq!(boot_paths("pon", &p.ide_kinds, &[], &[3, 4]), ["/pci@i0cf8/*@4", "/pci@i0cf8/*@3"]);
    }

    #[test]
    fn clashes_and_a_full_controller_are_refused() {
        let e = place(vec![
            drive("x", DiskInterface::Ide, DiskMedia::Disk, Some(1)),
            drive("y", DiskInterface::Ide, DiskMedia::Cdrom, Some(1)),
        ])
        .err()
        .unwrap();
        assert!(e.to_string().contains("position 1 is given twice"), "{e}");
        let five = (0..5).map(|i| drive(&format!("d{i}"), DiskInterface::Ide, DiskMedia::Disk, None)).collect();
        let e = place(five).err().unwrap();
        assert!(e.to_string().contains("all taken"), "{e}");
        let e = place(vec![drive("c", DiskInterface::Virtio, DiskMedia::Cdrom, None)]).err().unwrap();
        assert!(e.to_string().contains("ATAPI"), "{e}");
        assert!(place(vec![drive("v", DiskInterface::Virtio, DiskMedia::Disk, None)]).unwrap().ide.is_none());
    }

    #[test]
    fn boot_options_parse_as_qemus() {
        let b = parse_boot("c,once=d,menu=on,splash-time=500").unwrap();
        assert_eq!(b, BootOptions { order: "c".into(), once: Some("d".into()), menu: true, menu_wait_ms: Some(500) });
        assert_eq!(parse_boot("order=dc").unwrap().order, "dc");
        let b = parse_boot("once=d").unwrap();
        assert_eq!((b.order.as_str(), b.once.as_deref(), b.menu), (DEFAULT_BOOT_ORDER, Some("d"), false));
        assert!(!parse_boot("menu=off").unwrap().menu);
        for (bad, why) in [
            ("c,once=q", "not a drive"),
            ("c,menu=maybe", "menu=maybe"),
            ("c,splash-time=70000", "65535"),
            ("c,splash-time=-1", "65535"),
            ("c,strict=on", "'strict=on'"),
            ("c,d", "'d'"),
            ("x", "not a drive"),
        ] {
            let e = parse_boot(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn boot_orders_follow_qemu() {
        for ok in ["c", "d", "dc", "cad", "a", "n", "cn", "nop"] {
            assert_eq!(check_boot_order(ok), Ok(()), "{ok}");
        }
        for (bad, why) in
            [("", "empty"), ("nn", "twice"), ("cc", "twice"), ("x", "not a drive"), ("b", "second floppy")]
        {
            let e = check_boot_order(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
