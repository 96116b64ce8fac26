//! The disks of a snapshot directory, and clones started from one.
//!
//! `savevm NAME` into a snapshot directory also keeps the machine's
//! drives: for each disk the guest can write, a copy of what the guest
//! saw at that instant (`DIR/NAME/disk<N>.raw`, sparse, made read-only);
//! for the others (read-only disks, CD-ROMs) their path. The list is
//! `DIR/NAME/disks` (JSON, [`DiskRecord`]), written before the state
//! file, which marks the snapshot whole.
//!
//! `ferrovm run --restore DIR/NAME --clone` builds the machine on those
//! drives: each copy becomes the backing file of a new qcow2 overlay of
//! the clone's own (in `--clone-dir`, or a new directory beside the
//! snapshot), opened read-only and locked for reading, so any number of
//! clones share it and none writes it. Each clone's NICs get a fresh
//! locally administered MAC address ([`restore_clone`]), and its RAM is
//! the snapshot's memory file mapped copy-on-write, so the clones share
//! the pages none of them has written.
//!
//! A guest that already read its NIC's address keeps using the old one
//! until its driver reads the NIC again (a reboot, or the driver bound
//! anew): the address is the NIC's, in its EEPROM or configuration space.

use std::path::{Path, PathBuf};

use devices::block::{DiskInterface, DiskMedia, DiskSpec, ImageFormat};
use serde::{Deserialize, Serialize};

use super::{io, read_state_file, write_replacing, Restored, SnapshotError};
use crate::device_manager::PciFunctionState;
use crate::machine::Machine;
use crate::storage::{Drive, MachineDisk};

/// The file of a snapshot directory that lists its drives.
pub const DISKS_FILE: &str = "disks";

/// One drive of a snapshot, as `DIR/NAME/disks` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The image the machine had, as given (for messages, and for the
    /// drives the guest could not write).
    pub source: Option<PathBuf>,
    /// The copy of what the guest saw, in the snapshot's directory: a raw
    /// image, for each disk the guest could write.
    pub copy: Option<String>,
    /// The size of the disk in bytes.
    pub size: u64,
    /// "virtio", "ide" or "floppy".
    pub interface: String,
    /// "disk" or "cdrom".
    pub media: String,
    /// The IDE position or floppy drive, when one was asked for.
    pub index: Option<u8>,
    /// Whether the guest could not write it.
    pub read_only: bool,
}

fn interface_name(i: DiskInterface) -> &'static str {
    match i {
        DiskInterface::Virtio => "virtio",
        DiskInterface::Ide => "ide",
        DiskInterface::Floppy => "floppy",
    }
}

fn parse_interface(s: &str) -> Result<DiskInterface, SnapshotError> {
    match s {
        "virtio" => Ok(DiskInterface::Virtio),
        "ide" => Ok(DiskInterface::Ide),
        "floppy" => Ok(DiskInterface::Floppy),
        other => Err(SnapshotError::Corrupt(format!("the disks file names an interface '{other}'"))),
    }
}

/// Writes the drives of `disks` into the snapshot directory `dir`: copies
/// of the disks the guest can write, made read-only, and the list.
pub(crate) fn save_disks(disks: &[MachineDisk], dir: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::fs::PermissionsExt;
    let mut records = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let mut record = DiskRecord {
            source: None,
            copy: None,
            size: 0,
            interface: interface_name(d.interface).into(),
            media: if d.media == DiskMedia::Cdrom { "cdrom" } else { "disk" }.into(),
            index: d.index,
            read_only: true,
        };
        if let Some(shared) = &d.disk {
            let mut guard = shared.lock();
            record.size = guard.size();
            record.read_only = guard.read_only();
            let img =
                guard.image_mut().ok_or_else(|| SnapshotError::Refused(format!("{}: not an image file", d.label)))?;
            record.source = Some(img.path().to_path_buf());
            if !record.read_only {
                let name = format!("disk{i}.raw");
                let path = dir.join(&name);
                write_replacing(&path, |tmp| {
                    // A copy left by a save that crashed is read-only.
                    let _ = std::fs::remove_file(tmp);
                    img.copy_to_raw(tmp).map_err(|e| io(format!("copying {} to {}", d.label, tmp.display()), e))?;
                    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o444))
                        .map_err(|e| io(format!("making {} read-only", tmp.display()), e))
                })?;
                record.copy = Some(name);
            }
        }
        records.push(record);
    }
    let json = serde_json::to_vec_pretty(&records).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    write_replacing(&dir.join(DISKS_FILE), |p| {
        std::fs::write(p, &json).map_err(|e| io(format!("writing {}", p.display()), e))
    })
}

/// The drives `DIR/NAME/disks` lists.
pub fn read_disks(snapshot: &Path) -> Result<Vec<DiskRecord>, SnapshotError> {
    let path = snapshot.join(DISKS_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Refused(format!(
                "{} has no list of its drives ({DISKS_FILE}): it was saved by an older ferrovm, \
                 and cannot be cloned",
                snapshot.display()
            )))
        }
        Err(e) => return Err(io(format!("reading {}", path.display()), e)),
    };
    let records: Vec<DiskRecord> =
        serde_json::from_slice(&data).map_err(|e| SnapshotError::Corrupt(format!("{}: {e}", path.display())))?;
    for r in &records {
        if let Some(c) = &r.copy {
            if c.is_empty() || c.contains('/') || c == "." || c == ".." {
                return Err(SnapshotError::Corrupt(format!("{}: a disk copy named '{c}'", path.display())));
            }
        }
    }
    Ok(records)
}

/// Whether a process holds the snapshot's disk copies open (running
/// clones read them): such a snapshot is not replaced or deleted.
pub(crate) fn copies_in_use(snapshot: &Path) -> Option<PathBuf> {
    let records = read_disks(snapshot).ok()?;
    records
        .iter()
        .filter_map(|r| r.copy.as_ref())
        .map(|c| snapshot.join(c))
        .find(|p| std::fs::File::open(p).map(|f| devices::block::lock::in_use(&f)).unwrap_or(false))
}

/// Where a clone's overlays go: `dir` (created), or a new directory beside
/// the snapshot, `DIR/NAME.clone-<N>`.
fn clone_dir(snapshot: &Path, dir: Option<&Path>) -> Result<PathBuf, SnapshotError> {
    if let Some(d) = dir {
        std::fs::create_dir_all(d).map_err(|e| io(format!("creating {}", d.display()), e))?;
        return Ok(d.to_path_buf());
    }
    let name = snapshot.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "snapshot".into());
    for n in 1..10_000 {
        let d = snapshot.with_file_name(format!("{name}.clone-{n}"));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", d.display()), e)),
        }
    }
    Err(SnapshotError::Refused(format!("no free name for a clone directory beside {}", snapshot.display())))
}

/// A clone's drives and where its overlays are.
pub struct CloneDisks {
    /// The drives, in the order the snapshot lists them.
    pub drives: Vec<Drive>,
    /// The directory of the clone's overlays.
    pub dir: PathBuf,
}

/// The drives of a clone of snapshot `snapshot` (`DIR/NAME`): a new qcow2
/// overlay in `dir` (or a new directory beside the snapshot) over each
/// disk copy, and the read-only drives as they were.
pub fn clone_disks(snapshot: &Path, dir: Option<&Path>) -> Result<CloneDisks, SnapshotError> {
    if !snapshot.join("state").is_file() {
        return Err(SnapshotError::Refused(format!("{} is not a snapshot (it has no state file)", snapshot.display())));
    }
    let records = read_disks(snapshot)?;
    let dir = clone_dir(snapshot, dir)?;
    let mut drives = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let interface = parse_interface(&r.interface)?;
        let media = if r.media == "cdrom" { DiskMedia::Cdrom } else { DiskMedia::Disk };
        let (image, label) = match (&r.copy, &r.source) {
            (Some(copy), _) => {
                let base = snapshot.join(copy);
                let overlay = dir.join(format!("disk{i}.qcow2"));
                if overlay.exists() {
                    return Err(SnapshotError::Refused(format!(
                        "{} exists already (a clone ran there): give another --clone-dir",
                        overlay.display()
                    )));
                }
                let size = std::fs::metadata(&base).map_err(|e| io(format!("reading {}", base.display()), e))?.len();
                devices::block::create_overlay(&overlay, &base, ImageFormat::Raw, size)
                    .map_err(|e| SnapshotError::Io(e.to_string()))?;
                let spec = DiskSpec {
                    path: overlay,
                    format: Some(ImageFormat::Qcow2),
                    interface,
                    media,
                    index: r.index,
                    ..DiskSpec::default()
                };
                let image = devices::block::open(&spec, false).map_err(|e| SnapshotError::Io(e.to_string()))?;
                let label = image.label().to_string();
                (Some(Box::new(image) as Box<dyn devices::block::BlockBackend>), label)
            }
            (None, Some(source)) => {
                let spec = DiskSpec {
                    path: source.clone(),
                    read_only: true,
                    interface,
                    media,
                    index: r.index,
                    ..DiskSpec::default()
                };
                let image = devices::block::open(&spec, false).map_err(|e| SnapshotError::Io(e.to_string()))?;
                let label = image.label().to_string();
                (Some(Box::new(image) as Box<dyn devices::block::BlockBackend>), label)
            }
            (None, None) => (None, "(no disc)".to_string()),
        };
        drives.push(Drive { image, label, interface, media, index: r.index });
    }
    Ok(CloneDisks { drives, dir })
}

/// A new locally administered unicast MAC address.
fn fresh_mac() -> Result<[u8; 6], SnapshotError> {
    use std::io::Read;
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(|e| io("reading /dev/urandom", e))?;
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Ok(mac)
}

/// Restores snapshot `dir` into `m` as [`super::restore_from`] does, with
/// a fresh MAC address for each NIC. Returns the addresses, in PCI slot
/// order.
pub fn restore_clone(m: &mut Machine, dir: &Path) -> Result<(Restored, Vec<[u8; 6]>), SnapshotError> {
    let t = std::time::Instant::now();
    let mut saved = read_state_file(&dir.join("state"))?;
    let mut macs = Vec::new();
    for (_, f) in saved.machine.devices.iter_mut().flat_map(|d| d.functions.iter_mut()) {
        match f {
            PciFunctionState::E1000(s) => {
                s.mac = fresh_mac()?;
                macs.push(s.mac);
            }
            PciFunctionState::VirtioNet(s) => {
                s.device.mac = fresh_mac()?;
                macs.push(s.device.mac);
            }
            _ => {}
        }
    }
    let path = dir.join("memory");
    let file = std::fs::File::open(&path).map_err(|e| io(format!("opening {}", path.display()), e))?;
    let vcpus =
        m.load_saved(&saved, |mem| mem.map_ram_image(&file).map_err(|e| io(format!("mapping {}", path.display()), e)))?;
    Ok((Restored { vcpus, run_state: saved.run_state, took: t.elapsed() }, macs))
}
