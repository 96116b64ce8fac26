//! A host folder as a FAT disk: QEMU's `fat:[16:|32:][rw:]DIR`.
//!
//! The disk is built when the drive opens: a 504 MiB hard disk (1024
//! cylinders, 16 heads, 63 sectors, as QEMU's vvfat makes it) with an MBR
//! and one FAT16 partition (FAT32 with `32:`) from sector 63, labelled
//! `QEMU VVFAT`, holding a copy of the folder's tree. It lives in an
//! unlinked temporary file, which the block layer opens as a raw image.
//!
//! Without `rw:` the disk is read-only. With `rw:` the guest writes the
//! disk, and what it leaves in the file system goes back to the folder
//! each time the guest flushes the disk after a write, and when the drive
//! closes: new and changed files are written, new directories made, and
//! files the guest deleted are deleted (only those that came from the
//! folder and that nothing on the host changed since). The guest owns the
//! FAT structures, so they are read as untrusted: names with a path
//! separator, `.` and `..` are skipped, the walk is bounded in depth and in
//! entries (a directory whose clusters loop would otherwise never end),
//! nothing is written through a host symlink, and a failure leaves the
//! folder as the last write-back left it, with a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

/// Sectors per track, heads and cylinders of the disk (QEMU's vvfat hard
/// disk: 504 MiB).
const SECTORS: u64 = 63;
const HEADS: u64 = 16;
const CYLINDERS: u64 = 1024;
/// The disk's size in bytes.
pub const DISK_BYTES: u64 = SECTORS * HEADS * CYLINDERS * 512;
/// Where the partition starts, in bytes (sector 63).
const PART_START: u64 = SECTORS * 512;

/// Directories deeper than this are not walked.
const MAX_DEPTH: usize = 64;
/// Directory entries one walk reads at most.
const MAX_ENTRIES: usize = 1 << 20;

/// The FAT width of the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatWidth {
    Fat16,
    Fat32,
}

/// A `fat:` drive as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatSpec {
    pub dir: PathBuf,
    pub width: FatWidth,
    /// `rw:`: the guest's writes go back to the folder.
    pub rw: bool,
}

impl FatSpec {
    /// Parses QEMU's `fat:[16:|32:][rw:]DIR` (the options in any order, the
    /// folder after the last colon); `None` when `s` does not start with
    /// `fat:`.
    pub fn parse(s: &str) -> Option<Result<FatSpec, String>> {
        let rest = s.strip_prefix("fat:")?;
        let (opts, dir) = match rest.rfind(':') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => ("", rest),
        };
        let mut spec = FatSpec { dir: PathBuf::from(dir), width: FatWidth::Fat16, rw: false };
        for o in opts.split(':').filter(|o| !o.is_empty()) {
            match o {
                "rw" => spec.rw = true,
                "16" => spec.width = FatWidth::Fat16,
                "32" => spec.width = FatWidth::Fat32,
                "12" | "floppy" => {
                    return Some(Err(format!(
                        "{s}: a FAT floppy folder ({o}:) is not supported: ferrovm makes a FAT16 or FAT32 hard disk (fat:16: or fat:32:)"
                    )))
                }
                _ => return Some(Err(format!("{s}: '{o}' is not an option of fat: (16, 32, rw)"))),
            }
        }
        if dir.is_empty() {
            return Some(Err(format!("{s}: the folder is missing (fat:[rw:]DIR)")));
        }
        Some(Ok(spec))
    }
}

/// A byte range of a file as a seekable stream: the partition.
struct Part {
    file: fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Part {
    fn new(file: fs::File) -> Self {
        Part { file, start: PART_START, len: DISK_BYTES - PART_START, pos: 0 }
    }
}

impl Read for Part {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.read_exact_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Part {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "past the end of the FAT partition"));
        }
        self.file.write_all_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Part {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(t) if t <= self.len => {
                self.pos = t;
                Ok(t)
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek outside the FAT partition")),
        }
    }
}

type Fs = fatfs::FileSystem<Part>;

/// What a host file was when the disk last agreed with it: its length and
/// modification time.
type Stamp = (u64, Option<SystemTime>);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::symlink_metadata(path).ok()?;
    m.is_file().then(|| (m.len(), m.modified().ok()))
}

/// A folder's disk: the file that holds it, and what write-back needs.
pub struct FatFolder {
    spec: FatSpec,
    /// The disk (unlinked).
    file: fs::File,
    /// Files (relative paths) that the folder and the disk both hold, with
    /// the host file's stamp when they last agreed.
    known: BTreeMap<PathBuf, Stamp>,
    /// Directories (relative) the disk held at the last agreement.
    known_dirs: BTreeSet<PathBuf>,
    /// The guest wrote since the last write-back.
    dirty: bool,
    warned_symlink: bool,
}

impl std::fmt::Debug for FatFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FatFolder").field("dir", &self.spec.dir).field("rw", &self.spec.rw).finish()
    }
}

impl FatFolder {
    /// Builds the disk of `spec`'s folder in an unlinked file in the
    /// temporary directory; the file is returned for the block layer.
    pub fn build(spec: &FatSpec) -> Result<(FatFolder, fs::File), String> {
        let dir = &spec.dir;
        let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!("{}: not a folder (fat: takes a folder)", dir.display()));
        }
        let (file, tmp) = temp_file()?;
        let result = (|| -> Result<FatFolder, String> {
            file.set_len(DISK_BYTES).map_err(|e| e.to_string())?;
            file.write_all_at(&mbr(spec.width), 0).map_err(|e| e.to_string())?;
            let label = *b"QEMU VVFAT ";
            let fat_type = match spec.width {
                FatWidth::Fat16 => fatfs::FatType::Fat16,
                FatWidth::Fat32 => fatfs::FatType::Fat32,
            };
            let mut opts = fatfs::FormatVolumeOptions::new().fat_type(fat_type).volume_label(label);
            if spec.width == FatWidth::Fat32 {
                // Small enough clusters that 504 MiB makes a valid FAT32.
                opts = opts.bytes_per_cluster(4096);
            }
            let part = Part::new(file.try_clone().map_err(|e| e.to_string())?);
            fatfs::format_volume(part, opts).map_err(|e| format!("formatting the FAT disk: {e}"))?;
            let fs = Fs::new(Part::new(file.try_clone().map_err(|e| e.to_string())?), fatfs::FsOptions::new())
                .map_err(|e| format!("the new FAT disk: {e}"))?;
            let mut folder = FatFolder {
                spec: spec.clone(),
                file: file.try_clone().map_err(|e| e.to_string())?,
                known: BTreeMap::new(),
                known_dirs: BTreeSet::new(),
                dirty: false,
                warned_symlink: false,
            };
            folder.copy_in(&fs.root_dir(), dir, Path::new(""), 0)?;
            fs.unmount().map_err(|e| format!("the new FAT disk: {e}"))?;
            Ok(folder)
        })();
        let _ = fs::remove_file(&tmp);
        let folder = result.map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok((folder, file))
    }

    /// Copies the host folder `host` into the disk's directory `to`.
    fn copy_in(&mut self, to: &fatfs::Dir<'_, Part>, host: &Path, rel: &Path, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{}: folders nest deeper than {MAX_DEPTH}", host.display()));
        }
        let mut entries: Vec<_> = fs::read_dir(host)
            .map_err(|e| format!("{}: {e}", host.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", host.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                tracing::warn!(target: "devices", "{}: the name is not UTF-8; left out of the FAT disk", path.display());
                continue;
            };
            let full = |e: io::Error| {
                if e.kind() == io::ErrorKind::StorageFull || e.to_string().contains("space") {
                    format!("the folder does not fit in the {} MiB FAT disk", DISK_BYTES >> 20)
                } else {
                    format!("{}: {e}", path.display())
                }
            };
            // Symlinks are followed, as QEMU does when it builds the disk.
            let Ok(meta) = fs::metadata(&path) else {
                tracing::warn!(target: "devices", "{}: cannot be read; left out of the FAT disk", path.display());
                continue;
            };
            let r = rel.join(&name);
            if meta.is_dir() {
                let sub = to.create_dir(&name).map_err(full)?;
                self.known_dirs.insert(r.clone());
                self.copy_in(&sub, &path, &r, depth + 1)?;
            } else if meta.is_file() {
                if meta.len() > u64::from(u32::MAX) {
                    return Err(format!("{}: larger than a FAT file can be (4 GiB)", path.display()));
                }
                let mut src = fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut dst = to.create_file(&name).map_err(full)?;
                io::copy(&mut src, &mut dst).map_err(full)?;
                dst.flush().map_err(full)?;
                if let Some(s) = stamp(&path) {
                    self.known.insert(r, s);
                }
            } else {
                tracing::warn!(target: "devices", "{}: not a file or folder; left out of the FAT disk", path.display());
            }
        }
        Ok(())
    }

    /// Whether the guest's writes go back to the folder.
    pub fn writes_back(&self) -> bool {
        self.spec.rw
    }

    /// The folder, as given.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// The guest wrote the disk.
    pub fn note_write(&mut self) {
        self.dirty = true;
    }

    /// Brings the folder up to what the disk holds, if the guest wrote since
    /// the last time (`rw:` only). A failure is logged and leaves the
    /// folder as it is; the next flush tries again.
    pub fn write_back(&mut self) {
        if !self.spec.rw || !self.dirty {
            return;
        }
        self.dirty = false;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sync()));
        let e = match r {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => "the FAT library failed on the guest's file system".to_string(),
        };
        tracing::warn!(
            target: "devices",
            "{}: the guest's changes on the FAT disk were not all written back: {e}",
            self.spec.dir.display()
        );
    }

    fn sync(&mut self) -> Result<(), String> {
        let part = Part::new(self.file.try_clone().map_err(|e| e.to_string())?);
        let fs = Fs::new(part, fatfs::FsOptions::new()).map_err(|e| format!("the guest's FAT file system: {e}"))?;
        let mut walk = Walk::default();
        self.sync_dir(&fs.root_dir(), Path::new(""), 0, &mut walk)?;
        // What the guest deleted: files that came from the folder, gone
        // from the disk, and unchanged on the host since.
        let gone: Vec<PathBuf> = self.known.keys().filter(|p| !walk.files.contains(*p)).cloned().collect();
        for rel in gone {
            let host = self.spec.dir.join(&rel);
            if stamp(&host) == self.known.get(&rel).copied() && self.host_dir_ok(rel.parent()) {
                if let Err(e) = fs::remove_file(&host) {
                    tracing::warn!(target: "devices", "{}: {e}", host.display());
                }
            }
            self.known.remove(&rel);
        }
        let mut gone_dirs: Vec<PathBuf> = self.known_dirs.difference(&walk.dirs).cloned().collect();
        // Deepest first; a folder with host files left in it stays.
        gone_dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for rel in gone_dirs {
            if self.host_dir_ok(Some(&rel)) {
                let _ = fs::remove_dir(self.spec.dir.join(&rel));
            }
        }
        self.known_dirs = walk.dirs;
        Ok(())
    }

    /// Whether the host path of the relative folder `rel` is a real folder
    /// inside the shared one at every step (no symlink on the way).
    fn host_dir_ok(&mut self, rel: Option<&Path>) -> bool {
        let mut at = self.spec.dir.clone();
        for c in rel.into_iter().flat_map(Path::components) {
            let Component::Normal(n) = c else { return false };
            at.push(n);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    if !self.warned_symlink {
                        self.warned_symlink = true;
                        tracing::warn!(
                            target: "devices",
                            "{}: a symlink; the guest's changes under it are not written back",
                            at.display()
                        );
                    }
                    return false;
                }
                _ => return false,
            }
        }
        true
    }

    fn sync_dir(
        &mut self,
        dir: &fatfs::Dir<'_, Part>,
        rel: &Path,
        depth: usize,
        walk: &mut Walk,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("the guest's folders nest deeper than {MAX_DEPTH}"));
        }
        for e in dir.iter() {
            walk.entries += 1;
            if walk.entries > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} directory entries (a directory that loops?)"));
            }
            let e = e.map_err(|e| format!("reading a directory: {e}"))?;
            let name = e.file_name();
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
                continue;
            }
            let r = rel.join(&name);
            let host = self.spec.dir.join(&r);
            if e.is_dir() {
                if !self.host_dir_ok(Some(rel)) {
                    continue;
                }
                match fs::symlink_metadata(&host) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        tracing::warn!(target: "devices", "{}: not a folder on the host; left as it is", host.display());
                        continue;
                    }
                    Err(_) => fs::create_dir(&host).map_err(|e| format!("{}: {e}", host.display()))?,
                }
                walk.dirs.insert(r.clone());
                self.sync_dir(&e.to_dir(), &r, depth + 1, walk)?;
            } else {
                walk.files.insert(r.clone());
                if !self.host_dir_ok(Some(rel)) {
                    continue;
                }
                match fs::symlink_metadata(&host) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => {
                        tracing::warn!(target: "devices", "{}: not a plain file on the host; left as it is", host.display());
                        continue;
                    }
                    Err(_) => {}
                }
                let len = e.len();
                let mut src = e.to_file();
                if !same_content(&mut src, &host, len) {
                    src.seek(SeekFrom::Start(0)).map_err(|e| format!("{}: {e}", r.display()))?;
                    let mut dst = fs::File::create(&host).map_err(|e| format!("{}: {e}", host.display()))?;
                    let copied = io::copy(&mut (&mut src).take(len), &mut dst)
                        .map_err(|e| format!("{}: {e}", host.display()))?;
                    if copied != len {
                        tracing::warn!(target: "devices", "{}: the guest's file ends early ({copied} of {len} bytes)", host.display());
                    }
                }
                if let Some(s) = stamp(&host) {
                    self.known.insert(r, s);
                }
            }
        }
        Ok(())
    }
}

impl Drop for FatFolder {
    fn drop(&mut self) {
        self.write_back();
    }
}

/// What one write-back found on the disk.
#[derive(Default)]
struct Walk {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    entries: usize,
}

/// Whether the file `src` (of `len` bytes) holds what `host` holds.
fn same_content(src: &mut impl Read, host: &Path, len: u64) -> bool {
    let Ok(mut h) = fs::File::open(host) else { return false };
    if h.metadata().map(|m| m.len()).ok() != Some(len) {
        return false;
    }
    let mut a = vec![0u8; 64 << 10];
    let mut b = vec![0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(a.len() as u64) as usize;
        if src.read_exact(&mut a[..n]).is_err() || h.read_exact(&mut b[..n]).is_err() || a[..n] != b[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// A new file in the temporary directory, and its name.
fn temp_file() -> Result<(fs::File, PathBuf), String> {
    let dir = std::env::temp_dir();
    for n in 0..1000u32 {
        let name = dir.join(format!("ferrovm-fat-{}-{n}.img", std::process::id()));
        match fs::OpenOptions::new().read(true).write(true).create_new(true).open(&name) {
            Ok(f) => return Ok((f, name)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", name.display())),
        }
    }
    Err(format!("no free name for the FAT disk in {}", dir.display()))
}

/// The disk's master boot record: one active partition from sector 63 to
/// the end.
fn mbr(width: FatWidth) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[440..444].copy_from_slice(&0xbe1a_fdfau32.to_le_bytes());
    let e = &mut m[446..462];
    e[0] = 0x80;
    // CHS of the first sector: head 1, sector 1, cylinder 0.
    e[1..4].copy_from_slice(&[1, 1, 0]);
    e[4] = match width {
        FatWidth::Fat16 => 0x06,
        FatWidth::Fat32 => 0x0c,
    };
    // CHS of the last: head 15, sector 63, cylinder 1023.
    e[5..8].copy_from_slice(&[(HEADS - 1) as u8, 0xff, 0xff]);
    e[8..12].copy_from_slice(&(SECTORS as u32).to_le_bytes());
    e[12..16].copy_from_slice(&((DISK_BYTES / 512 - SECTORS) as u32).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrovm-vfat-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn parses_qemu_forms() {
        let p = |s: &str| FatSpec::parse(s).unwrap();
        assert_eq!(p("fat:rw:esp").unwrap(), FatSpec { dir: "esp".into(), width: FatWidth::Fat16, rw: true });
        assert_eq!(p("fat:32:rw:/a/b").unwrap(), FatSpec { dir: "/a/b".into(), width: FatWidth::Fat32, rw: true });
        assert_eq!(p("fat:dir/").unwrap(), FatSpec { dir: "dir/".into(), width: FatWidth::Fat16, rw: false });
        assert!(p("fat:floppy:rw:d").unwrap_err().contains("floppy"));
        assert!(p("fat:12:d").unwrap_err().contains("12"));
        assert!(p("fat:xx:d").unwrap_err().contains("'xx'"));
        assert!(p("fat:rw:").unwrap_err().contains("missing"));
        assert!(FatSpec::parse("disk.img").is_none());
    }

    #[test]
    fn the_disk_holds_the_folder_and_guest_changes_go_back() {
        let d = tmpdir("roundtrip");
        fs::create_dir_all(d.join("EFI/BOOT")).unwrap();
        fs::write(d.join("EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 70_000]).unwrap();
        fs::write(d.join("A long file name.txt"), "hello\n").unwrap();
        fs::write(d.join("gone.txt"), "bye\n").unwrap();
        let spec = FatSpec { dir: d.clone(), width: FatWidth::Fat16, rw: true };
        let (mut folder, file) = FatFolder::build(&spec).unwrap();
        assert_eq!(file.metadata().unwrap().len(), DISK_BYTES);
        let mut sector = [0u8; 512];
        file.read_exact_at(&mut sector, 0).unwrap();
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
        assert_eq!(sector[446 + 4], 0x06);
        {
            // What a guest would do, through the same library.
            let fs = Fs::new(Part::new(file.try_clone().unwrap()), fatfs::FsOptions::new()).unwrap();
            {
                let root = fs.root_dir();
                let mut f = root.open_file("EFI/BOOT/BOOTX64.EFI").unwrap();
                let mut got = Vec::new();
                f.read_to_end(&mut got).unwrap();
                assert_eq!(got, vec![0x4d; 70_000]);
                assert_eq!(fs.volume_label().trim_end(), "QEMU VVFAT");
                let mut f = root.open_file("A long file name.txt").unwrap();
                f.truncate().unwrap();
                f.write_all(b"changed\n").unwrap();
                root.remove("gone.txt").unwrap();
                root.create_dir("new").unwrap();
                root.create_file("new/made by guest.bin").unwrap().write_all(&[7; 5000]).unwrap();
            }
            fs.unmount().unwrap();
        }
        folder.note_write();
        folder.write_back();
        assert_eq!(fs::read_to_string(d.join("A long file name.txt")).unwrap(), "changed\n");
        assert!(!d.join("gone.txt").exists());
        assert_eq!(fs::read(d.join("new/made by guest.bin")).unwrap(), vec![7; 5000]);
        assert_eq!(fs::read(d.join("EFI/BOOT/BOOTX64.EFI")).unwrap(), vec![0x4d; 70_000]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_read_only_folder_is_never_written() {
        let d = tmpdir("ro");
        fs::write(d.join("keep.txt"), "keep\n").unwrap();
        let spec = FatSpec { dir: d.clone(), width: FatWidth::Fat32, rw: false };
        let (mut folder, file) = FatFolder::build(&spec).unwrap();
        {
            let fs = Fs::new(Part::new(file.try_clone().unwrap()), fatfs::FsOptions::new()).unwrap();
            assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
            fs.root_dir().remove("keep.txt").unwrap();
            fs.unmount().unwrap();
        }
        folder.note_write();
        folder.write_back();
        assert_eq!(fs::read_to_string(d.join("keep.txt")).unwrap(), "keep\n");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn garbage_on_the_disk_is_a_warning_not_a_panic() {
        let d = tmpdir("garbage");
        fs::write(d.join("x.txt"), "x\n").unwrap();
        let spec = FatSpec { dir: d.clone(), width: FatWidth::Fat16, rw: true };
        let (mut folder, file) = FatFolder::build(&spec).unwrap();
        // Every byte of the partition's first 2 MiB (boot sector, FATs,
        // root directory) overwritten with a pattern.
        let junk: Vec<u8> = (0..2u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        file.write_all_at(&junk, PART_START).unwrap();
        folder.note_write();
        folder.write_back();
        assert_eq!(fs::read_to_string(d.join("x.txt")).unwrap(), "x\n", "nothing deleted on a disk it cannot read");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_folder_is_named() {
        let spec = FatSpec { dir: "/nonexistent/ferrovm-fat".into(), width: FatWidth::Fat16, rw: false };
        assert!(FatFolder::build(&spec).unwrap_err().contains("/nonexistent/ferrovm-fat"));
    }
}
