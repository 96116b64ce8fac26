//! Disk images behind the block devices: raw files and qcow2 (versions 2
//! and 3), with chains of backing files.
//!
//! The formats themselves come from the `imago` crate (in its `sync`
//! mode, without an async runtime): qcow2 reads and writes, backing files
//! of either format, zero clusters, compressed clusters (read; a write
//! copies the cluster out), discard and refcounts that `qemu-img check`
//! finds clean. What ferrovm adds around it:
//! - [`header`]: a check of the qcow2 header and its tables before imago
//!   sees the file. A hostile header (tables outside the file, a refcount
//!   table that covers nothing) could otherwise make imago's allocator
//!   recurse until the stack overflows.
//! - [`ChainGate`]: every file of a chain is opened here. Each is checked,
//!   locked ([`lock`]) and kept for `fdatasync`; a chain that loops or is
//!   deeper than [`MAX_CHAIN_DEPTH`] is refused.
//! - [`open`]: the format from `format=`, or detected (a qcow2 header,
//!   else raw with a one-line warning, as QEMU does), read-only images,
//!   and `--snapshot` overlays that vanish with the process.
//! - [`internal`]: qcow2 internal snapshots, as QEMU keeps them, which
//!   [`Image`] takes, applies and deletes with imago closed around the
//!   change; [`SharedDisk`], a disk its device model and the machine
//!   share; [`Image::copy_to_raw`] and [`create_overlay`] for snapshot
//!   directories and their clones.
//! - [`vfat`]: a host folder as a FAT disk (QEMU's `fat:[rw:]DIR`), whose
//!   guest writes go back to the folder at each flush and at the end.

pub mod header;
pub mod internal;
pub mod lock;
pub mod vfat;

use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::file::File as ImagoFile;
use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, FormatCreateBuilder, FormatDriverBuilder, StorageOpenOptions};

/// The deepest chain of backing files accepted (QEMU has no fixed limit;
/// real chains are a handful deep, and a loop is caught before this).
pub const MAX_CHAIN_DEPTH: usize = 32;

/// Sector size of the block layer.
pub const SECTOR_SIZE: u64 = 512;

/// Image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl std::str::FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            other => Err(format!("format '{other}' is unknown; use format=raw or format=qcow2")),
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        })
    }
}

/// What a block device sees of its disk.
pub trait BlockBackend: Send {
    /// The disk size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes at `offset` (inside [`BlockBackend::size`]).
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeroes; `unmap` lets the
    /// image free the space.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The guest no longer needs `len` bytes at `offset`: they may read as
    /// anything afterwards (here: zeroes or the backing file's data).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Writes the image's cached metadata and `fdatasync`s every file of
    /// the chain.
    fn flush(&mut self) -> io::Result<()>;
    /// The image file behind this disk, when it is one (snapshots use it).
    fn image(&self) -> Option<&Image> {
        None
    }
    /// The image file behind this disk, to change, when it is one.
    fn image_mut(&mut self) -> Option<&mut Image> {
        None
    }
}

/// A disk shared by its device model and the machine, which takes and
/// loads snapshots of it between two requests of the guest.
#[derive(Clone)]
pub struct SharedDisk(Arc<parking_lot::Mutex<Box<dyn BlockBackend>>>);

impl std::fmt::Debug for SharedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedDisk")
    }
}

impl SharedDisk {
    /// Shares `disk`.
    pub fn new(disk: Box<dyn BlockBackend>) -> Self {
        Self(Arc::new(parking_lot::Mutex::new(disk)))
    }

    /// The disk, while the guest's requests wait.
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, Box<dyn BlockBackend>> {
        self.0.lock()
    }

    /// A handle that does not keep the disk open: the image is flushed
    /// and closed with its device model.
    pub fn downgrade(&self) -> WeakDisk {
        WeakDisk(Arc::downgrade(&self.0))
    }
}

/// A [`SharedDisk`] that does not keep the disk open.
#[derive(Clone)]
pub struct WeakDisk(std::sync::Weak<parking_lot::Mutex<Box<dyn BlockBackend>>>);

impl WeakDisk {
    /// The disk, while it is open.
    pub fn upgrade(&self) -> Option<SharedDisk> {
        self.0.upgrade().map(SharedDisk)
    }
}

impl BlockBackend for SharedDisk {
    fn size(&self) -> u64 {
        self.0.lock().size()
    }
    fn read_only(&self) -> bool {
        self.0.lock().read_only()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.lock().read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.lock().write_at(buf, offset)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.0.lock().write_zeroes(offset, len, unmap)
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.0.lock().discard(offset, len)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().flush()
    }
}

/// The controller a disk hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskInterface {
    /// A virtio-blk PCI function of its own (`if=virtio`).
    #[default]
    Virtio,
    /// A drive on the PIIX3 IDE controller (`if=ide`).
    Ide,
    /// A drive on the floppy disk controller (`if=floppy`).
    Floppy,
}

/// What a drive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskMedia {
    /// A hard disk.
    #[default]
    Disk,
    /// A CD-ROM (read-only, an ATAPI drive on IDE).
    Cdrom,
}

/// A disk to open: `--disk PATH[,format=raw|qcow2][,readonly=on][,snapshot=on][,if=virtio|ide|floppy][,media=disk|cdrom][,index=N]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub format: Option<ImageFormat>,
    pub read_only: bool,
    /// Writes go to a temporary overlay (as `--snapshot`, for this disk).
    pub snapshot: bool,
    /// Where it is attached.
    pub interface: DiskInterface,
    /// A hard disk or a CD-ROM (which is read-only and on IDE).
    pub media: DiskMedia,
    /// The IDE position, 0-3: primary master, primary slave, secondary
    /// master, secondary slave (`index=`, as QEMU numbers them); for a
    /// floppy, the drive (0 A:, 1 B:). `None`: the first free one.
    pub index: Option<u8>,
}

impl std::str::FromStr for DiskSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        let path = path.strip_prefix("file=").unwrap_or(path);
        if path.is_empty() {
            return Err("the image path is missing \
                 (PATH[,format=raw|qcow2][,readonly=on][,snapshot=on][,if=virtio|ide|floppy][,media=disk|cdrom][,index=N])"
                .into());
        }
        let on_off = |key: &str, value: &str| match value {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            v => Err(format!("{key}={v}: use on or off")),
        };
        let mut spec = DiskSpec { path: PathBuf::from(path), ..DiskSpec::default() };
        let mut interface = None;
        for opt in parts {
            let (key, value) = opt.split_once('=').ok_or_else(|| format!("'{opt}' is not KEY=VALUE"))?;
            match key {
                "format" => spec.format = Some(value.parse()?),
                "readonly" => spec.read_only = on_off(key, value)?,
                "snapshot" => spec.snapshot = on_off(key, value)?,
                "if" => {
                    interface = Some(match value {
                        "virtio" => DiskInterface::Virtio,
                        "ide" => DiskInterface::Ide,
                        "floppy" => DiskInterface::Floppy,
                        v => return Err(format!("if={v}: use if=virtio, if=ide or if=floppy")),
                    })
                }
                "media" => {
                    spec.media = match value {
                        "disk" => DiskMedia::Disk,
                        "cdrom" => DiskMedia::Cdrom,
                        v => return Err(format!("media={v}: use media=disk or media=cdrom")),
                    }
                }
                "index" => {
                    let i = value.parse::<u8>().ok().filter(|&i| i < 4);
                    spec.index = Some(i.ok_or_else(|| format!("index={value}: an IDE position is 0 to 3"))?);
                }
                k => {
                    return Err(format!("option '{k}' is unknown (format=, readonly=, snapshot=, if=, media=, index=)"))
                }
            }
        }
        spec.interface = match (interface, spec.media) {
            (Some(DiskInterface::Virtio), DiskMedia::Cdrom) => {
                return Err("media=cdrom is an ATAPI drive on IDE: use if=ide (or leave if= out)".into())
            }
            (None, DiskMedia::Cdrom) => DiskInterface::Ide,
            (i, _) => i.unwrap_or_default(),
        };
        match (spec.interface, spec.index, spec.media) {
            (DiskInterface::Virtio, Some(_), _) => return Err("index= places a drive on IDE: add if=ide".into()),
            (DiskInterface::Floppy, Some(i), _) if i > 1 => {
                return Err(format!("index={i}: the floppy drives are 0 (A:) and 1 (B:)"))
            }
            (DiskInterface::Floppy, _, DiskMedia::Cdrom) => return Err("media=cdrom is not a floppy disk".into()),
            _ => {}
        }
        if spec.media == DiskMedia::Cdrom {
            spec.read_only = true;
        }
        Ok(spec)
    }
}

/// Why an image cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file cannot be opened or read.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Another process holds a conflicting lock.
    #[error("{path}: {what}")]
    Locked { path: PathBuf, what: String },
    /// The qcow2 header or tables are invalid.
    #[error("{path}: not a valid qcow2 image: {what}")]
    BadQcow2 { path: PathBuf, what: String },
    /// The backing chain loops or is too deep.
    #[error("{path}: {what}")]
    BadChain { path: PathBuf, what: String },
    /// The image format library refused the image.
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: io::Error },
}

/// The state every file of one chain shares while it opens.
#[derive(Default)]
struct ChainState {
    /// Canonical paths opened so far, top first.
    paths: Vec<PathBuf>,
    /// Duplicates of the open files, for `fdatasync` and the locks.
    files: Vec<fs::File>,
    /// The first error with a ferrovm message (imago wraps the rest).
    error: Option<OpenError>,
}

/// Opens the files of a chain for imago: checks them, locks them, keeps
/// them for flushes, and refuses loops and deep chains.
#[derive(Clone)]
pub struct ChainGate {
    state: Arc<parking_lot::Mutex<ChainState>>,
}

impl ChainGate {
    fn new() -> Self {
        Self { state: Arc::default() }
    }

    fn fail(&self, e: OpenError) -> io::Error {
        let msg = e.to_string();
        self.state.lock().error.get_or_insert(e);
        io::Error::other(msg)
    }

    /// Opens, checks and locks one file of the chain.
    fn open_file(&self, path: &Path, write: bool) -> Result<fs::File, OpenError> {
        let io_err = |source| OpenError::Io { path: path.to_path_buf(), source };
        let canon = fs::canonicalize(path).map_err(io_err)?;
        {
            let st = self.state.lock();
            if st.paths.contains(&canon) {
                return Err(OpenError::BadChain {
                    path: path.to_path_buf(),
                    what: "the backing chain loops back to this file".into(),
                });
            }
            if st.paths.len() >= MAX_CHAIN_DEPTH {
                return Err(OpenError::BadChain {
                    path: path.to_path_buf(),
                    what: format!("the backing chain is deeper than {MAX_CHAIN_DEPTH} files"),
                });
            }
        }
        let file =
            fs::OpenOptions::new().read(true).write(write).custom_flags(libc::O_CLOEXEC).open(path).map_err(io_err)?;
        lock::lock(&file, write).map_err(|what| OpenError::Locked { path: path.to_path_buf(), what })?;
        let dup = file.try_clone().map_err(io_err)?;
        let mut st = self.state.lock();
        st.paths.push(canon);
        st.files.push(dup);
        Ok(file)
    }

    /// Checks a qcow2 file's header and tables before imago reads them.
    fn check_qcow2(&self, path: &Path, file: &fs::File) -> Result<(), OpenError> {
        header::check_file(file).map_err(|what| OpenError::BadQcow2 { path: path.to_path_buf(), what })
    }

    fn storage(&self, path: &Path, write: bool) -> Result<ImagoFile, OpenError> {
        let file = self.open_file(path, write)?;
        let opts = StorageOpenOptions::new().filename(path).write(write);
        ImagoFile::from_open_file(file, opts).map_err(|source| OpenError::Io { path: path.to_path_buf(), source })
    }
}

impl ImplicitOpenGate<ImagoFile> for ChainGate {
    fn open_format<F: FormatDriverBuilder<ImagoFile>>(&mut self, builder: F) -> io::Result<FormatAccess<ImagoFile>> {
        // Backing files: the storage was opened (and checked) by
        // `open_storage`; the qcow2 check needs the file, so it ran there.
        let inner = builder.open(self.clone())?;
        Ok(FormatAccess::new(inner))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<ImagoFile> {
        let Some(path) = opts.get_filename().map(Path::to_path_buf) else {
            return Err(io::Error::other("a backing file without a name"));
        };
        if opts.get_writable() {
            // Only an external data file is opened writable implicitly.
            return Err(self.fail(OpenError::BadQcow2 {
                path,
                what: "images with an external data file are not supported".into(),
            }));
        }
        let file = self.open_file(&path, false).map_err(|e| self.fail(e))?;
        if header::is_qcow2(&file) {
            self.check_qcow2(&path, &file).map_err(|e| self.fail(e))?;
        }
        let opts = StorageOpenOptions::new().filename(&path).write(false);
        ImagoFile::from_open_file(file, opts)
    }
}

/// An open disk image and the files of its chain.
pub struct Image {
    /// `None` only while an internal snapshot changes the file's metadata.
    access: Option<FormatAccess<ImagoFile>>,
    /// The top file first (the temporary overlay, under `--snapshot`).
    files: Vec<fs::File>,
    read_only: bool,
    label: String,
    /// The image as given (made absolute), its format, and whether a
    /// temporary overlay takes the writes (`--snapshot`).
    path: PathBuf,
    format: ImageFormat,
    temporary: bool,
    /// The format library panicked: the image is not touched again.
    failed: bool,
    /// The folder a `fat:` disk was built from.
    folder: Option<vfat::FatFolder>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("label", &self.label).field("read_only", &self.read_only).finish()
    }
}

/// Detects the format of `file` when `format=` is not given.
fn detect(path: &Path, file: &fs::File, write: bool) -> ImageFormat {
    if header::is_qcow2(file) {
        ImageFormat::Qcow2
    } else {
        // Guessing raw is dangerous only for an image the guest may write
        // (it could write a qcow2 header); a CD's ISO is raw and read-only.
        if write {
            tracing::warn!(
            target: "devices",
            "{}: no format= given and no qcow2 header: using it as raw (add format=raw to silence this)",
                path.display()
            );
        }
        ImageFormat::Raw
    }
}

/// Opens the image of `spec` with its chain. `snapshot` (QEMU's
/// `-snapshot`) or the spec's own `snapshot=on` opens it read-only under a
/// temporary qcow2 overlay that takes the writes and is deleted at once
/// (it lives as long as the process holds it open).
pub fn open(spec: &DiskSpec, snapshot: bool) -> Result<Image, OpenError> {
    let snapshot = snapshot || spec.snapshot;
    if let Some(fat) = spec.path.to_str().and_then(vfat::FatSpec::parse) {
        return open_fat(spec, fat, snapshot);
    }
    let path = spec.path.as_path();
    let write = !spec.read_only && !snapshot;
    let gate = ChainGate::new();
    let err = |gate: &ChainGate, source: io::Error| {
        gate.state.lock().error.take().unwrap_or(OpenError::Format { path: path.to_path_buf(), source })
    };
    let probe = fs::File::open(path).map_err(|source| OpenError::Io { path: path.to_path_buf(), source })?;
    let format = spec.format.unwrap_or_else(|| detect(path, &probe, write));
    drop(probe);
    let storage = gate.storage(path, write)?;
    let access = match format {
        ImageFormat::Raw => {
            let raw = Raw::builder(storage).write(write).open(gate.clone()).map_err(|e| err(&gate, e))?;
            FormatAccess::new(raw)
        }
        ImageFormat::Qcow2 => {
            let file = gate.state.lock().files.last().and_then(|f| f.try_clone().ok());
            if let Some(f) = file {
                gate.check_qcow2(path, &f)?;
                if write {
                    header::check_writable(&f)
                        .map_err(|what| OpenError::BadQcow2 { path: path.to_path_buf(), what })?;
                }
            }
            let q = Qcow2::<ImagoFile>::builder(storage).write(write).open(gate.clone()).map_err(|e| err(&gate, e))?;
            FormatAccess::new(q)
        }
    };
    let mut files = std::mem::take(&mut gate.state.lock().files);
    let label = format!("{} ({format})", path.display());
    // Absolute, for opening it again after the working directory changed
    // (`-daemonize`) and for the drives a snapshot directory lists.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if !snapshot {
        return Ok(Image {
            access: Some(access),
            files,
            read_only: !write,
            label,
            path,
            format,
            temporary: false,
            failed: false,
            folder: None,
        });
    }
    let (overlay, overlay_file) = snapshot_overlay(&path, access)?;
    files.insert(0, overlay_file);
    Ok(Image {
        access: Some(overlay),
        files,
        read_only: false,
        label: format!("{label} under a temporary overlay"),
        path,
        format,
        temporary: true,
        failed: false,
        folder: None,
    })
}

/// A `fat:` drive: the folder's disk, built in a temporary file and opened
/// as a raw image. Without `rw:` it is read-only; under `snapshot` the
/// guest may write it, and nothing goes back to the folder.
fn open_fat(spec: &DiskSpec, fat: Result<vfat::FatSpec, String>, snapshot: bool) -> Result<Image, OpenError> {
    let given = spec.path.clone();
    let bad = |what: String| OpenError::BadChain { path: given.clone(), what };
    let mut fat = fat.map_err(bad)?;
    if spec.format == Some(ImageFormat::Qcow2) {
        return Err(bad("a fat: folder is a raw disk: use format=raw or no format=".into()));
    }
    let write = !spec.read_only && (fat.rw || snapshot);
    fat.rw &= write && !snapshot;
    let (folder, file) = vfat::FatFolder::build(&fat).map_err(bad)?;
    let io_err = |source| OpenError::Io { path: given.clone(), source };
    let storage = ImagoFile::from_open_file(
        file.try_clone().map_err(io_err)?,
        StorageOpenOptions::new().filename(&fat.dir).write(write),
    )
    .map_err(io_err)?;
    let raw = Raw::builder(storage)
        .write(write)
        .open(imago::DenyImplicitOpenGate::default())
        .map_err(|source| OpenError::Format { path: given.clone(), source })?;
    let how = if fat.rw {
        "written back"
    } else if write {
        "writes dropped at exit"
    } else {
        "read-only"
    };
    Ok(Image {
        access: Some(FormatAccess::new(raw)),
        files: vec![file],
        read_only: !write,
        label: format!("{} (a FAT disk of the folder, {how})", fat.dir.display()),
        path: std::path::absolute(&fat.dir).unwrap_or_else(|_| fat.dir.clone()),
        format: ImageFormat::Raw,
        temporary: snapshot,
        failed: false,
        folder: Some(folder),
    })
}

/// A temporary qcow2 overlay over `base`, already unlinked.
fn snapshot_overlay(
    path: &Path,
    base: FormatAccess<ImagoFile>,
) -> Result<(FormatAccess<ImagoFile>, fs::File), OpenError> {
    let io_err = |source| OpenError::Io { path: path.to_path_buf(), source };
    let dir = std::env::temp_dir();
    let mut n = 0u32;
    let (tmp, file) = loop {
        let name = dir.join(format!("ferrovm-snapshot-{}-{n}.qcow2", std::process::id()));
        match fs::OpenOptions::new().read(true).write(true).create_new(true).mode_cloexec().open(&name) {
            Ok(f) => break (name, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(io_err(e)),
        }
    };
    let result = (|| {
        let size = base.size();
        let dup = file.try_clone()?;
        let storage = ImagoFile::from_open_file(dup, StorageOpenOptions::new().filename(&tmp).write(true))?;
        Qcow2::<ImagoFile>::create_builder(storage).size(size).create()?;
        let storage =
            ImagoFile::from_open_file(file.try_clone()?, StorageOpenOptions::new().filename(&tmp).write(true))?;
        let q = Qcow2::<ImagoFile>::builder(storage)
            .write(true)
            .backing(Some(base))
            .open(imago::DenyImplicitOpenGate::default())?;
        Ok(FormatAccess::new(q))
    })();
    let _ = fs::remove_file(&tmp);
    result.map(|a| (a, file)).map_err(io_err)
}

trait CloexecExt {
    fn mode_cloexec(&mut self) -> &mut Self;
}

impl CloexecExt for fs::OpenOptions {
    fn mode_cloexec(&mut self) -> &mut Self {
        self.custom_flags(libc::O_CLOEXEC)
    }
}

impl Image {
    /// A name for logs: the path and format.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// How many files the chain has (the overlay of `--snapshot` included).
    pub fn chain_len(&self) -> usize {
        self.files.len()
    }
}

impl Image {
    /// Runs one operation of the format library. A panic inside it (a
    /// corrupt image it did not expect) becomes an I/O error, and the image
    /// refuses every operation after it: its state may be inconsistent.
    fn guarded<R>(&mut self, f: impl FnOnce(&mut FormatAccess<ImagoFile>) -> io::Result<R>) -> io::Result<R> {
        if self.failed {
            return Err(io::Error::other("the image failed earlier"));
        }
        let Some(access) = self.access.as_mut() else {
            return Err(io::Error::other("the image is closed"));
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(access))) {
            Ok(r) => r,
            Err(_) => {
                self.failed = true;
                tracing::error!(target: "devices", "{}: the image format library failed; the disk stops", self.label);
                Err(io::Error::other("the image format library failed on this image"))
            }
        }
    }

    /// Refuses a write to a read-only disk; notes one to a folder's.
    fn writable(&mut self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the disk is read-only"));
        }
        if let Some(f) = &mut self.folder {
            f.note_write();
        }
        Ok(())
    }
}

impl BlockBackend for Image {
    fn size(&self) -> u64 {
        self.access.as_ref().map_or(0, FormatAccess::size)
    }

    fn image(&self) -> Option<&Image> {
        Some(self)
    }

    fn image_mut(&mut self) -> Option<&mut Image> {
        Some(self)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.guarded(|a| a.read(buf, offset))
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        self.guarded(|a| a.write(buf, offset))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.writable()?;
        self.guarded(|a| {
            let r = if unmap { a.discard_to_zero(offset, len) } else { a.write_zeroes(offset, len) };
            match r {
                Ok(()) => Ok(()),
                // qcow2 v2 has no zero clusters: write zeroes.
                Err(e) if e.kind() == io::ErrorKind::Unsupported || e.to_string().contains("version 3") => {
                    let chunk = vec![0u8; 1 << 20];
                    let mut done = 0;
                    while done < len {
                        let n = (len - done).min(chunk.len() as u64) as usize;
                        a.write(&chunk[..n], offset + done)?;
                        done += n as u64;
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.writable()?;
        self.guarded(|a| a.discard_to_any(offset, len))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.guarded(|a| a.flush())?;
        for f in &self.files {
            f.sync_data()?;
        }
        if let Some(f) = &mut self.folder {
            f.write_back();
        }
        Ok(())
    }
}

/// Snapshots (`savevm`, `loadvm`, `delvm`, `info snapshots`, clones).
impl Image {
    /// The image as it was given, made absolute (under `--snapshot`: the
    /// base).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The folder whose FAT disk this is, when the guest's writes go back
    /// to it (`fat:rw:`).
    pub fn written_back_folder(&self) -> Option<&Path> {
        self.folder.as_ref().filter(|f| f.writes_back()).map(|f| f.dir())
    }

    /// Whether a temporary overlay takes the writes (`--snapshot`).
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Whether snapshots are kept inside this image: a qcow2 image the
    /// guest writes, not under a temporary overlay.
    pub fn keeps_snapshots(&self) -> bool {
        self.format == ImageFormat::Qcow2 && !self.read_only && !self.temporary
    }

    fn top_file(&self) -> Result<fs::File, String> {
        let f = self.files.first().ok_or("the image has no file")?;
        f.try_clone().map_err(|e| format!("cannot open the image again: {e}"))
    }

    fn meta(&self) -> Result<internal::Qcow2Meta, String> {
        if self.format != ImageFormat::Qcow2 || self.temporary {
            return Err("only qcow2 images hold snapshots".into());
        }
        internal::Qcow2Meta::open(self.top_file()?, false)
    }

    /// The image's internal snapshots (none for a raw image).
    pub fn snapshots(&self) -> Result<Vec<internal::Snapshot>, String> {
        if self.format != ImageFormat::Qcow2 || self.temporary {
            return Ok(Vec::new());
        }
        Ok(self.meta()?.snapshots().to_vec())
    }

    /// Snapshot `key` (ID or name) and its VM state.
    pub fn snapshot_vmstate(&self, key: &str) -> Result<(internal::Snapshot, internal::VmState), String> {
        let meta = self.meta()?;
        let sn = meta.find(key).cloned().ok_or_else(|| format!("there is no snapshot '{key}'"))?;
        let vm = meta.vmstate(&sn)?;
        Ok((sn, vm))
    }

    /// Checks that snapshot `key` can be applied, changing nothing (the
    /// image's cached metadata is written first: the check reads the file).
    pub fn check_snapshot(&mut self, key: &str) -> Result<internal::Snapshot, String> {
        self.guarded(|a| a.flush()).map_err(|e| format!("cannot write the image's cached metadata: {e}"))?;
        self.meta()?.check_apply(key)
    }

    /// Takes snapshot `new` of the disk, with the VM state `vmstate`
    /// writes, if any.
    pub fn create_snapshot(
        &mut self,
        new: &internal::NewSnapshot,
        vmstate: Option<&mut internal::WriteVmState<'_>>,
    ) -> Result<internal::Snapshot, String> {
        self.with_meta(|m| m.create(new, vmstate))
    }

    /// Reverts the disk to snapshot `key`.
    pub fn apply_snapshot(&mut self, key: &str) -> Result<internal::Snapshot, String> {
        self.with_meta(|m| m.apply(key))
    }

    /// Deletes snapshot `key`.
    pub fn delete_snapshot(&mut self, key: &str) -> Result<internal::Snapshot, String> {
        self.with_meta(|m| m.delete(key))
    }

    /// Runs `f` on the image's metadata with the format library closed
    /// around it: its cached metadata is written first, and it reads the
    /// file anew afterwards (the L1 table, the refcounts and the snapshot
    /// table may all have changed).
    fn with_meta<R>(&mut self, f: impl FnOnce(&mut internal::Qcow2Meta) -> Result<R, String>) -> Result<R, String> {
        if !self.keeps_snapshots() {
            return Err(if self.temporary {
                "it is under a temporary overlay (--snapshot), which does not keep snapshots".into()
            } else if self.read_only {
                "it is read-only".into()
            } else {
                format!("a {} image does not keep snapshots (qcow2 does)", self.format)
            });
        }
        self.guarded(|a| a.flush()).map_err(|e| format!("cannot write the image's cached metadata: {e}"))?;
        let access = self.access.take();
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(access)));
        let result = match dropped {
            Ok(()) => self.top_file().and_then(|file| {
                let mut meta = internal::Qcow2Meta::open(file, true)?;
                f(&mut meta)
            }),
            Err(_) => Err("the image format library failed closing the image".into()),
        };
        if let Err(e) = self.reopen() {
            self.failed = true;
            tracing::error!(target: "devices", "{}: cannot open the image again: {e}; the disk stops", self.label);
            return Err(match result {
                Ok(_) => format!("cannot open the image again: {e}"),
                Err(first) => format!("{first}; and then cannot open the image again: {e}"),
            });
        }
        result
    }

    /// Opens the format library on the top file again, with its backing
    /// chain (each backing file opened, checked and locked anew).
    fn reopen(&mut self) -> Result<(), String> {
        let top = self.top_file()?;
        header::check_file(&top)?;
        let gate = ChainGate::new();
        if let Ok(canon) = fs::canonicalize(&self.path) {
            gate.state.lock().paths.push(canon);
        }
        let storage = ImagoFile::from_open_file(top, StorageOpenOptions::new().filename(&self.path).write(true))
            .map_err(|e| e.to_string())?;
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Qcow2::<ImagoFile>::builder(storage).write(true).open(gate.clone())
        }))
        .map_err(|_| "the image format library failed opening the image".to_string())?;
        let q = opened.map_err(|e| gate.state.lock().error.take().map_or_else(|| e.to_string(), |e| e.to_string()))?;
        let backing = std::mem::take(&mut gate.state.lock().files);
        self.files.truncate(1);
        self.files.extend(backing);
        self.access = Some(FormatAccess::new(q));
        Ok(())
    }

    /// Writes what the guest sees of this disk to `dest`, a new sparse
    /// raw file: runs of zeros become holes. A raw image is copied by its
    /// data extents (`copy_file_range`, which shares the blocks where the
    /// file system can); otherwise the image is read through the format
    /// library. Returns the bytes of data copied.
    pub fn copy_to_raw(&mut self, dest: &Path) -> io::Result<u64> {
        let size = self.size();
        let out = fs::OpenOptions::new().write(true).create_new(true).mode_cloexec().open(dest)?;
        out.set_len(size)?;
        let mut copied = 0;
        if self.format == ImageFormat::Raw && !self.temporary {
            let src = self.files.first().ok_or_else(|| io::Error::other("the image has no file"))?;
            for (start, end) in data_extents(src, size)? {
                copied += copy_range(src, &out, start, end)?;
            }
        } else {
            const CHUNK: usize = 1 << 20;
            const BLOCK: usize = 4096;
            let mut buf = vec![0u8; CHUNK];
            let mut off = 0;
            while off < size {
                let n = (size - off).min(CHUNK as u64) as usize;
                self.read_at(&mut buf[..n], off)?;
                for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                    if block.iter().any(|&b| b != 0) {
                        out.write_all_at(block, off + (i * BLOCK) as u64)?;
                        copied += block.len() as u64;
                    }
                }
                off += n as u64;
            }
        }
        out.sync_all()?;
        Ok(copied)
    }
}

/// The data extents of `file`'s first `size` bytes (`SEEK_DATA`,
/// `SEEK_HOLE`); the whole range where the file system cannot say.
fn data_extents(file: &fs::File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match lseek(file, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return Ok(vec![(0, size)]),
        };
        if start >= size {
            break;
        }
        let end = match lseek(file, start as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(size),
            Err(_) => size,
        };
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// Copies `start..end` of `src` to the same offsets of `dst`, in the
/// kernel where it can; returns the bytes copied.
fn copy_range(src: &fs::File, dst: &fs::File, start: u64, end: u64) -> io::Result<u64> {
    let mut pos = start;
    while pos < end {
        let mut off_in = pos as i64;
        let mut off_out = pos as i64;
        let want = ((end - pos) as usize).min(1 << 30);
        match nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the image ended early")),
            Ok(n) => pos += n as u64,
            Err(_) => {
                // Another file system, or no support: copy by hand.
                let mut buf = vec![0u8; (end - pos).min(1 << 20) as usize];
                while pos < end {
                    let n = ((end - pos) as usize).min(buf.len());
                    src.read_exact_at(&mut buf[..n], pos)?;
                    if buf[..n].iter().any(|&b| b != 0) {
                        dst.write_all_at(&buf[..n], pos)?;
                    }
                    pos += n as u64;
                }
            }
        }
    }
    Ok(end - start)
}

/// Creates `path`, a new qcow2 image of `size` bytes over the backing file
/// `backing` (of `format`), recorded by its absolute path. The backing file
/// is only read through it.
pub fn create_overlay(path: &Path, backing: &Path, format: ImageFormat, size: u64) -> Result<(), OpenError> {
    let io_err = |source| OpenError::Io { path: path.to_path_buf(), source };
    let backing = fs::canonicalize(backing).map_err(|source| OpenError::Io { path: backing.to_path_buf(), source })?;
    let name = backing
        .to_str()
        .ok_or_else(|| OpenError::BadChain {
            path: path.to_path_buf(),
            what: "the backing file's path is not UTF-8".into(),
        })?
        .to_string();
    let file =
        fs::OpenOptions::new().read(true).write(true).create_new(true).mode_cloexec().open(path).map_err(io_err)?;
    let storage =
        ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(path).write(true)).map_err(io_err)?;
    Qcow2::<ImagoFile>::create_builder(storage).size(size).backing(name, format.to_string()).create().map_err(io_err)
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.read_only && !self.failed {
            if let Err(e) = self.guarded(|a| a.flush()) {
                tracing::warn!(target: "devices", "{}: flushing at exit failed: {e}", self.label);
            }
        }
    }
}

#[cfg(test)]
mod tests;
