//! Saved states of a whole machine: the state file, the RAM image beside
//! it, snapshots in a directory, and migration through a stream.
//!
//! # The state file
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..16 | the magic, [`MAGIC`] |
//! | 16..20 | the format version, [`VERSION`] (little-endian, as every number here) |
//! | 20..24 | zero |
//! | 24..32 | the body's length in bytes |
//! | 32..40 | the body's CRC-64 (CRC-64/XZ) |
//! | 40.. | the body: a [`SavedState`] in postcard's encoding |
//!
//! [`SavedState`] holds what a machine must be built alike to take it
//! ([`MachineShape`]: RAM, vCPUs and their topology, CPU model, firmware,
//! VGA, fw_cfg, the PCI functions, the floppy controller), whether the
//! guest ran or was paused, every vCPU's [`CpuState`] and the machine's
//! [`MachineState`]. Decoding trusts nothing: a wrong magic, another
//! version, a short file, a checksum that does not match, a body that does
//! not decode and a shape that is not this machine's each get their own
//! [`SnapshotError`], and the machine is left as it was; then the states
//! themselves are checked by [`Persist::restore`] and the CPU state's own
//! checks.
//!
//! # The RAM image
//!
//! Guest RAM is saved beside the state as a file of
//! [`GuestMemory::ram_size`] bytes ([`GuestMemory::ram_image_offset`] maps
//! guest addresses to file offsets), sparse: pages of zeros are not
//! written, so they are holes. A restore maps the file copy-on-write over
//! the RAM ([`GuestMemory::map_ram_image`]), so its cost does not grow
//! with the RAM's size: pages are read as the guest touches them.
//!
//! # Snapshots in a directory
//!
//! `--snapshot-dir DIR` keeps snapshot `NAME` as `DIR/NAME/state` and
//! `DIR/NAME/memory` ([`SnapshotDir`]), with a copy of each disk the guest
//! writes and the list of the drives ([`clone`]), for a machine without a
//! qcow2 disk the guest writes (such a machine keeps its snapshots inside
//! its disks, as QEMU does: [`qcow2`]). Each file is written beside its
//! place and renamed over it, so a machine that maps an older memory file
//! keeps its bytes. `--restore` runs on the command line's drives, as they
//! are; `--restore --clone` on new overlays over the snapshot's copies.
//!
//! # Migration
//!
//! A stream ([`send`], [`receive`]) is a state file followed by the RAM:
//! records of a page-aligned RAM image offset (u64), a length (u64, at
//! most [`MAX_RECORD`]) and that many bytes, for the runs of pages that
//! are not all zeros; a record with offset `u64::MAX` and length 0 ends
//! them, followed by the CRC-64 of the records. The receiver checks the
//! whole stream before its guest runs.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cpu::CpuState;
use mmu::{GuestMemory, PAGE_SIZE};
use persist::{Persist, PersistError};
use serde::{Deserialize, Serialize};

use crate::config::{Firmware, MachineConfig, Vga};
use crate::machine::{Machine, MachineState, Stopped};

/// The first bytes of every state file and stream.
pub const MAGIC: [u8; 16] = *b"FERROVM\0STATE\0\0\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 3;
/// The state file's header: magic, version, zero, body length, checksum.
pub const HEADER_LEN: usize = 40;
/// The largest body accepted (a state with the VGA's VRAM is a few MiB).
pub const MAX_BODY: u64 = 256 << 20;
/// The largest RAM record of a stream.
pub const MAX_RECORD: u64 = 1 << 20;

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
/// The same checksum, sixteen bytes at a time, for the RAM of a stream.
const CRC64_FAST: crc::Crc<u64, crc::Table<16>> = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_XZ);

/// What a machine must be built alike to take a saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineShape {
    /// Guest RAM in bytes (`--mem`).
    pub ram: u64,
    /// The vCPUs' topology (`--cpus`): sockets, cores, threads.
    pub topology: (u32, u32, u32),
    /// The CPU model's name (`--cpu`).
    pub cpu_model: String,
    /// What booted: "the built-in guest", "a BIOS" or "a kernel".
    pub firmware: String,
    /// Whether the machine has the standard VGA.
    pub vga: bool,
    /// Whether it has fw_cfg (a BIOS boot).
    pub fw_cfg: bool,
    /// Its PCI functions with host-side I/O: "00:03.0 virtio-net", ...
    pub functions: Vec<String>,
    /// Whether it has the floppy disk controller.
    pub floppy: bool,
}

/// Whether the guest ran when it was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Running: a restored guest runs.
    Running,
    /// Paused (`stop`): a restored guest waits for `cont`.
    Paused,
}

/// A state file's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// The machine it was saved from.
    pub shape: MachineShape,
    /// Whether the guest ran.
    pub run_state: RunState,
    /// When it was saved, in seconds since 1970.
    pub saved_at: u64,
    /// Every vCPU's state, in index order.
    pub vcpus: Vec<CpuState>,
    /// The devices and the clock.
    pub machine: MachineState,
}

/// Why a state could not be saved, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The magic is not there.
    #[error("not a ferrovm state file (it does not begin with ferrovm's magic)")]
    NotAStateFile,
    /// Another format version.
    #[error("the state file has format version {0}; this ferrovm reads version {VERSION}")]
    Version(u32),
    /// Fewer bytes than the header says.
    #[error("the state file is truncated: {0}")]
    Truncated(String),
    /// The body's checksum does not match.
    #[error("the state file is corrupt: its checksum does not match its contents")]
    Checksum,
    /// The body does not decode, or has bytes after it.
    #[error("the state file is corrupt: {0}")]
    Corrupt(String),
    /// The state is of a machine built otherwise.
    #[error("the saved state is of another machine: {0}")]
    Mismatch(String),
    /// A part of the machine refused its state.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// Reading or writing a file or stream failed.
    #[error("{0}")]
    Io(String),
    /// The machine cannot do this now, or a name is not usable.
    #[error("{0}")]
    Refused(String),
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Io(format!("{what}: {e}"))
}

/// The encoded state file of `state`: header and body.
pub fn encode(state: &SavedState) -> Result<Vec<u8>, SnapshotError> {
    let body = postcard::to_stdvec(state).map_err(|e| SnapshotError::Corrupt(format!("cannot encode: {e}")))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&CRC64.checksum(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The body's length and checksum from a header, after checking its
/// magic and version. `have`: how many bytes the header came from, for
/// the truncation message.
fn parse_header(h: &[u8], have: usize) -> Result<(u64, u64), SnapshotError> {
    let magic_len = h.len().min(MAGIC.len());
    if h[..magic_len] != MAGIC[..magic_len] {
        return Err(SnapshotError::NotAStateFile);
    }
    let field = |at: usize| -> Option<[u8; 8]> { h.get(at..at + 8)?.try_into().ok() };
    let (Some(v), Some(len), Some(crc)) = (h.get(16..20), field(24), field(32)) else {
        return Err(SnapshotError::Truncated(format!("{have} bytes, fewer than the {HEADER_LEN}-byte header")));
    };
    let version = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    // Outside the checksum, so checked here: a flipped bit is damage.
    if h.get(20..24).is_some_and(|z| z != [0; 4]) {
        return Err(SnapshotError::Corrupt("header bytes 20..24 are not zero".into()));
    }
    let len = u64::from_le_bytes(len);
    if len > MAX_BODY {
        return Err(SnapshotError::Corrupt(format!("a body of {len} bytes, more than the {MAX_BODY} allowed")));
    }
    Ok((len, u64::from_le_bytes(crc)))
}

/// Checks a body against its checksum and decodes it.
fn decode_body(body: &[u8], crc: u64) -> Result<SavedState, SnapshotError> {
    if CRC64.checksum(body) != crc {
        return Err(SnapshotError::Checksum);
    }
    let (state, rest) = postcard::take_from_bytes::<SavedState>(body)
        .map_err(|e| SnapshotError::Corrupt(format!("its contents do not decode ({e})")))?;
    if !rest.is_empty() {
        return Err(SnapshotError::Corrupt(format!("{} bytes follow the state", rest.len())));
    }
    Ok(state)
}

/// Decodes a whole state file: header, checksum and body.
pub fn decode(data: &[u8]) -> Result<SavedState, SnapshotError> {
    let (len, crc) = parse_header(&data[..data.len().min(HEADER_LEN)], data.len())?;
    let body = &data[HEADER_LEN..];
    if (body.len() as u64) < len {
        return Err(SnapshotError::Truncated(format!(
            "the header says {len} bytes of state, and {} follow",
            body.len()
        )));
    }
    if body.len() as u64 > len {
        return Err(SnapshotError::Corrupt(format!("{} bytes follow the {len}-byte state", body.len() as u64 - len)));
    }
    decode_body(body, crc)
}

/// The shape of the machine `config` builds, whose state is `state`.
fn shape_of(config: &MachineConfig, state: &MachineState) -> MachineShape {
    let t = config.topology;
    let functions =
        state.devices.iter().flat_map(|d| &d.functions).map(|(addr, f)| format!("{addr} {}", f.kind())).collect();
    MachineShape {
        ram: config.mem,
        topology: (t.sockets, t.cores, t.threads),
        cpu_model: config.cpu_model.to_string(),
        firmware: match config.firmware {
            Firmware::Builtin => "the built-in guest",
            Firmware::Bios(_) => "a BIOS",
            Firmware::Kernel(_) => "a kernel",
        }
        .into(),
        vga: config.vga == Vga::Std,
        fw_cfg: state.fw_cfg.is_some(),
        functions,
        floppy: state.devices.as_ref().is_some_and(|d| d.floppy.is_some()),
    }
}

/// Fails with what differs between the saved machine's shape and this one's.
fn check_shape(saved: &MachineShape, ours: &MachineShape) -> Result<(), SnapshotError> {
    let differ = |what: &str, theirs: &dyn std::fmt::Debug, mine: &dyn std::fmt::Debug, flag: &str| {
        Err(SnapshotError::Mismatch(format!("{what} {theirs:?} there, {mine:?} here ({flag})")))
    };
    if saved.ram != ours.ram {
        return Err(SnapshotError::Mismatch(format!(
            "{} MiB of RAM there, {} MiB here (--mem)",
            saved.ram >> 20,
            ours.ram >> 20
        )));
    }
    if saved.topology != ours.topology {
        return differ("vCPUs (sockets, cores, threads)", &saved.topology, &ours.topology, "--cpus");
    }
    if saved.cpu_model != ours.cpu_model {
        return differ("CPU model", &saved.cpu_model, &ours.cpu_model, "--cpu");
    }
    if saved.firmware != ours.firmware {
        return differ("booted", &saved.firmware, &ours.firmware, "--kernel, --bios, --disk");
    }
    if saved.vga != ours.vga {
        return differ("VGA", &saved.vga, &ours.vga, "--vga");
    }
    if saved.fw_cfg != ours.fw_cfg {
        return differ("fw_cfg", &saved.fw_cfg, &ours.fw_cfg, "a BIOS boot");
    }
    if saved.functions != ours.functions {
        return differ("PCI functions", &saved.functions, &ours.functions, "--nic, --disk, --cdrom");
    }
    if saved.floppy != ours.floppy {
        return differ("floppy controller", &saved.floppy, &ours.floppy, "--disk if=floppy");
    }
    Ok(())
}

impl Machine {
    /// This machine's shape, as a saved state must match it.
    pub fn shape(&self) -> MachineShape {
        shape_of(&self.config, &self.save())
    }

    /// The saved state of this stopped machine, its vCPUs in `stopped`.
    pub fn capture(&self, stopped: &Stopped) -> Result<SavedState, SnapshotError> {
        let machine = self.save();
        Ok(SavedState {
            shape: shape_of(&self.config, &machine),
            run_state: if stopped.paused { RunState::Paused } else { RunState::Running },
            saved_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            vcpus: stopped.vcpus.clone(),
            machine,
        })
    }

    /// Checks `saved` against this machine before anything changes: its
    /// shape, its vCPU count and every vCPU state's own checks.
    pub fn check_saved(&self, saved: &SavedState) -> Result<(), SnapshotError> {
        check_shape(&saved.shape, &self.shape())?;
        let cpus = self.config.cpus();
        PersistError::check_len("machine", "vcpus", saved.vcpus.len(), cpus)?;
        for s in &saved.vcpus {
            CpuState::reset().restore(s)?;
        }
        Ok(())
    }

    /// Loads the devices and clock of `saved`, checked whole first
    /// ([`Machine::check_saved`]), and calls `ram` to bring the RAM along;
    /// when `ram` fails, the devices get their states from before back.
    /// Nothing changes on an error. Returns the vCPUs' states to run from.
    fn load_saved(
        &mut self,
        saved: &SavedState,
        ram: impl FnOnce(&GuestMemory) -> Result<(), SnapshotError>,
    ) -> Result<Vec<CpuState>, SnapshotError> {
        self.check_saved(saved)?;
        let before = self.save();
        self.restore(&saved.machine)?;
        if let Err(e) = ram(&self.mem) {
            if let Err(again) = self.restore(&before) {
                tracing::error!(target: "vmm", "the machine refused its own state back: {again}");
            }
            return Err(e);
        }
        Ok(saved.vcpus.clone())
    }
}

/// How much RAM a save or a stream carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RamStats {
    /// Guest RAM in bytes.
    pub total: u64,
    /// Bytes of pages that are not all zeros, written or sent.
    pub written: u64,
    /// Pages of zeros, skipped.
    pub zero_pages: u64,
}

/// Calls `run` for each run of pages of RAM that are not all zeros, at
/// most [`MAX_RECORD`] bytes each, with its RAM image offset and bytes.
fn for_each_data_run(
    mem: &GuestMemory,
    stats: &mut RamStats,
    mut run: impl FnMut(u64, &[u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut buf = vec![0u8; MAX_RECORD as usize];
    stats.total = mem.ram_size();
    for range in mem.ram_ranges() {
        let mut addr = range.start;
        while addr < range.end {
            let len = (range.end - addr).min(MAX_RECORD);
            let chunk = &mut buf[..len as usize];
            mem.read(addr, chunk).map_err(|e| io("reading guest RAM", e))?;
            // Runs of non-zero pages within the chunk.
            let mut start: Option<usize> = None;
            let pages = chunk.len() / PAGE_SIZE as usize;
            for p in 0..=pages {
                let zero = p == pages || {
                    let page = &chunk[p * PAGE_SIZE as usize..(p + 1) * PAGE_SIZE as usize];
                    page.iter().all(|&b| b == 0)
                };
                if p < pages && zero {
                    stats.zero_pages += 1;
                }
                match (zero, start) {
                    (false, None) => start = Some(p),
                    (true, Some(s)) => {
                        let bytes = &chunk[s * PAGE_SIZE as usize..p * PAGE_SIZE as usize];
                        let offset = GuestMemory::ram_image_offset(addr + (s as u64) * PAGE_SIZE);
                        run(offset, bytes)?;
                        stats.written += bytes.len() as u64;
                        start = None;
                    }
                    _ => {}
                }
            }
            addr += len;
        }
    }
    Ok(())
}

/// Writes guest RAM as a sparse RAM image at `path`: pages of zeros are
/// left as holes.
pub fn write_ram_image(mem: &GuestMemory, path: &Path) -> Result<RamStats, SnapshotError> {
    let what = || format!("writing {}", path.display());
    let file = File::create(path).map_err(|e| io(what(), e))?;
    file.set_len(mem.ram_size()).map_err(|e| io(what(), e))?;
    let mut stats = RamStats::default();
    for_each_data_run(mem, &mut stats, |offset, bytes| file.write_all_at(bytes, offset).map_err(|e| io(what(), e)))?;
    file.sync_all().map_err(|e| io(what(), e))?;
    Ok(stats)
}

/// Writes `path` by way of a new file (`write` writes it) renamed over it.
fn write_replacing(path: &Path, write: impl FnOnce(&Path) -> Result<(), SnapshotError>) -> Result<(), SnapshotError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".new-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let r = write(&tmp)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io(format!("renaming to {}", path.display()), e)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Reads and decodes the state file at `path`.
pub fn read_state_file(path: &Path) -> Result<SavedState, SnapshotError> {
    let data = std::fs::read(path).map_err(|e| io(format!("reading {}", path.display()), e))?;
    decode(&data)
}

/// What a save wrote, for the monitors and `--stats`.
#[derive(Debug, Clone)]
pub struct SaveReport {
    /// The state file's size in bytes.
    pub state_bytes: u64,
    /// The RAM written.
    pub ram: RamStats,
    /// How long the save took.
    pub took: Duration,
}

/// A restored machine's vCPU states and run state.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Every vCPU's state, to run from.
    pub vcpus: Vec<CpuState>,
    /// Whether the guest ran when saved.
    pub run_state: RunState,
    /// How long the restore took.
    pub took: Duration,
}

/// Saves the stopped machine as the snapshot directory `dir` (its
/// `state` and `memory` files), creating it.
pub fn save_to(m: &Machine, stopped: &Stopped, dir: &Path) -> Result<SaveReport, SnapshotError> {
    let t = Instant::now();
    if let Some(p) = clone::copies_in_use(dir) {
        return Err(SnapshotError::Refused(format!(
            "{} is in use (clones of this snapshot run on it): save under another name",
            p.display()
        )));
    }
    let state = encode(&m.capture(stopped)?)?;
    std::fs::create_dir_all(dir).map_err(|e| io(format!("creating {}", dir.display()), e))?;
    let mut ram = RamStats::default();
    write_replacing(&dir.join("memory"), |p| {
        ram = write_ram_image(&m.mem, p)?;
        Ok(())
    })?;
    clone::save_disks(m.disks(), dir)?;
    write_replacing(&dir.join("state"), |p| {
        let mut f = File::create(p).map_err(|e| io(format!("writing {}", p.display()), e))?;
        f.write_all(&state).and_then(|()| f.sync_all()).map_err(|e| io(format!("writing {}", p.display()), e))
    })?;
    Ok(SaveReport { state_bytes: state.len() as u64, ram, took: t.elapsed() })
}

/// Restores the snapshot directory `dir` into `m`: the state is read and
/// checked whole, the devices take theirs, and the memory file is mapped
/// copy-on-write over the RAM. On an error `m` is as it was.
pub fn restore_from(m: &mut Machine, dir: &Path) -> Result<Restored, SnapshotError> {
    let t = Instant::now();
    let saved = read_state_file(&dir.join("state"))?;
    let path = dir.join("memory");
    let file = File::open(&path).map_err(|e| io(format!("opening {}", path.display()), e))?;
    let vcpus =
        m.load_saved(&saved, |mem| mem.map_ram_image(&file).map_err(|e| io(format!("mapping {}", path.display()), e)))?;
    Ok(Restored { vcpus, run_state: saved.run_state, took: t.elapsed() })
}

/// Snapshots by name in a directory (`--snapshot-dir`): `DIR/NAME/state`
/// and `DIR/NAME/memory`.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    path: PathBuf,
}

/// One snapshot of a [`SnapshotDir`], for `info snapshots` and
/// `ferrovm snapshot list`.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// Bytes its files take on disk (the memory file is sparse).
    pub disk_bytes: u64,
    /// When it was saved, in seconds since 1970.
    pub saved_at: u64,
    /// The guest time reached, in nanoseconds.
    pub guest_ns: u64,
    /// RAM in bytes.
    pub ram: u64,
    /// Whether its state file reads; the error otherwise.
    pub problem: Option<String>,
}

impl SnapshotDir {
    /// The snapshots in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of snapshot `name`, after checking the name: not
    /// empty, no `/`, not `.` or `..`.
    pub fn entry(&self, name: &str) -> Result<PathBuf, SnapshotError> {
        if name.is_empty() || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
            return Err(SnapshotError::Refused(format!("'{name}' is not a usable snapshot name")));
        }
        Ok(self.path.join(name))
    }

    /// Deletes snapshot `name`.
    pub fn delete(&self, name: &str) -> Result<(), SnapshotError> {
        let dir = self.entry(name)?;
        if !dir.join("state").is_file() {
            return Err(SnapshotError::Refused(format!("there is no snapshot '{name}' in {}", self.path.display())));
        }
        if let Some(p) = clone::copies_in_use(&dir) {
            return Err(SnapshotError::Refused(format!(
                "{} is in use (clones of snapshot '{name}' run on it)",
                p.display()
            )));
        }
        let copies: Vec<String> =
            clone::read_disks(&dir).map(|r| r.into_iter().filter_map(|d| d.copy).collect()).unwrap_or_default();
        // The state first: without it the rest is no snapshot.
        for f in ["state", "memory", clone::DISKS_FILE].into_iter().chain(copies.iter().map(String::as_str)) {
            let p = dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| io(format!("deleting {}", p.display()), e))?;
            }
        }
        std::fs::remove_dir(&dir).map_err(|e| io(format!("deleting {}", dir.display()), e))
    }

    /// The snapshots, by name.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        use std::os::unix::fs::MetadataExt;
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("reading {}", self.path.display()), e)),
        };
        let mut list = Vec::new();
        for e in entries.flatten() {
            let dir = e.path();
            let state = dir.join("state");
            if !state.is_file() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let copies: Vec<String> =
                clone::read_disks(&dir).map(|r| r.into_iter().filter_map(|d| d.copy).collect()).unwrap_or_default();
            let disk_bytes = ["state", "memory", clone::DISKS_FILE]
                .into_iter()
                .chain(copies.iter().map(String::as_str))
                .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
                .map(|m| m.blocks() * 512)
                .sum();
            let mut info = SnapshotInfo { name, disk_bytes, saved_at: 0, guest_ns: 0, ram: 0, problem: None };
            match read_state_file(&state) {
                Ok(s) => {
                    info.saved_at = s.saved_at;
                    info.guest_ns = s.machine.clock.now_ns;
                    info.ram = s.shape.ram;
                }
                Err(e) => info.problem = Some(e.to_string()),
            }
            list.push(info);
        }
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// The list as HMP's `info snapshots` prints it.
    pub fn info_text(&self) -> Result<String, SnapshotError> {
        let list = self.list()?;
        if list.is_empty() {
            return Ok("There is no snapshot available.\n".into());
        }
        let mut out = String::from("List of snapshots present on all disks:\n");
        out.push_str(&format!("{:<6}{:<20}{:>12}  {:<20}{:>16}\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK"));
        for (i, s) in list.iter().enumerate() {
            out.push_str(&format!(
                "{:<6}{:<20}{:>12}  {:<20}{:>16}",
                i + 1,
                s.name,
                human_size(s.disk_bytes),
                date(s.saved_at),
                vm_clock(s.guest_ns)
            ));
            if let Some(p) = &s.problem {
                out.push_str(&format!("  ({p})"));
            }
            out.push('\n');
        }
        Ok(out)
    }
}

/// A size as QEMU prints one: "1.5 MiB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds since 1970 as "YYYY-MM-DD hh:mm:ss" in the host's local time,
/// as QEMU dates its snapshots.
pub fn date(secs: u64) -> String {
    monitor::local_time(i64::try_from(secs).unwrap_or(i64::MAX), "%Y-%m-%d %H:%M:%S")
}

fn vm_clock(ns: u64) -> String {
    let ms = ns / 1_000_000;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

// ---- migration -------------------------------------------------------------

/// Where a migration stream goes or comes from (QMP `migrate`'s URI,
/// `--incoming`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUri {
    /// `exec:CMD`: `sh -c CMD`, the stream on its stdin (outgoing) or
    /// stdout (incoming).
    Exec(String),
    /// `unix:PATH`: a Unix socket.
    Unix(PathBuf),
    /// `tcp:HOST:PORT`.
    Tcp(String),
}

impl std::str::FromStr for MigrationUri {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(cmd) = s.strip_prefix("exec:") {
            if cmd.trim().is_empty() {
                return Err("exec: needs a command".into());
            }
            return Ok(Self::Exec(cmd.to_string()));
        }
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(Self::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp:") {
            let ok = a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("tcp:{a}: expected tcp:HOST:PORT"));
            }
            return Ok(Self::Tcp(a.to_string()));
        }
        Err(format!("'{s}': ferrovm migrates through exec:CMD, unix:PATH or tcp:HOST:PORT"))
    }
}

/// A writer that counts and checksums what goes through it.
struct Summing<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    digest: crc::Digest<'static, u64>,
    bytes: u64,
}

impl<W: Write + ?Sized> Summing<'_, W> {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.digest.update(data);
        self.bytes += data.len() as u64;
        self.inner.write_all(data)
    }
}

/// Sends the stopped machine through `out`: its state file, then its RAM
/// (pages of zeros skipped), in the stop-and-copy stream of earlier builds,
/// which [`receive`] still reads (`migrate` now writes [`live`]'s). Returns
/// the RAM carried and the stream's size.
pub fn send(m: &Machine, stopped: &Stopped, out: &mut dyn Write) -> Result<(RamStats, u64), SnapshotError> {
    let state = encode(&m.capture(stopped)?)?;
    let fail = |e: std::io::Error| io("sending the migration stream", e);
    out.write_all(&state).map_err(fail)?;
    let mut w = Summing { inner: out, digest: CRC64.digest(), bytes: 0 };
    let mut stats = RamStats::default();
    for_each_data_run(&m.mem, &mut stats, |offset, bytes| {
        w.put(&offset.to_le_bytes()).and_then(|()| w.put(&(bytes.len() as u64).to_le_bytes())).map_err(fail)?;
        w.put(bytes).map_err(fail)
    })?;
    w.put(&u64::MAX.to_le_bytes()).and_then(|()| w.put(&0u64.to_le_bytes())).map_err(fail)?;
    let total = state.len() as u64 + w.bytes + 8;
    let crc = w.digest.finalize();
    out.write_all(&crc.to_le_bytes()).and_then(|()| out.flush()).map_err(fail)?;
    Ok((stats, total))
}

/// Reads exactly `buf.len()` bytes, or says the stream ended early.
fn read_exact(r: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<(), SnapshotError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SnapshotError::Truncated(format!("the migration stream ended in {what}"))
        } else {
            io("reading the migration stream", e)
        }
    })
}

/// Receives a machine sent by [`send`] into `m`, built from the same
/// command line, before its vCPUs ever ran: the state is read and checked
/// (against this machine too) before the RAM is, the RAM records are
/// checked as they come and by their checksum at the end, and only then do
/// the devices take their states. On an error the guest must not run:
/// its RAM may be half loaded.
pub fn receive(m: &mut Machine, input: &mut dyn Read) -> Result<(Restored, RamStats), SnapshotError> {
    receive_stream(m, input).map(|(r, stats, _)| (r, stats))
}

/// Reads into `buf` until it is full or the input ends; how many bytes came.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize, SnapshotError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("reading the migration stream", e)),
        }
    }
    Ok(got)
}

/// [`receive`], for a stream of either kind: a stopped machine's ([`send`])
/// or a live migration's ([`live`]). Also says whether it was live (its
/// sender then waits for [`live::READY`] over a socket).
pub fn receive_stream(m: &mut Machine, input: &mut dyn Read) -> Result<(Restored, RamStats, bool), SnapshotError> {
    let t = Instant::now();
    let mut header = [0u8; HEADER_LEN];
    let mut got = read_full(input, &mut header[..MAGIC.len()])?;
    if got == 0 {
        return Err(SnapshotError::Truncated("the migration stream is empty".into()));
    }
    if got == MAGIC.len() && header[..MAGIC.len()] == live::LIVE_MAGIC {
        let (r, stats) = receive_live(m, input, t)?;
        return Ok((r, stats, true));
    }
    if got == MAGIC.len() {
        got += read_full(input, &mut header[MAGIC.len()..])?;
    }
    let (len, crc) = parse_header(&header[..got], got)?;
    let mut body = vec![0u8; len as usize];
    read_exact(input, &mut body, "the state")?;
    let saved = decode_body(&body, crc)?;
    m.check_saved(&saved)?;
    let mem = m.mem.clone();
    mem.zero_ram().map_err(|e| io("clearing guest RAM", e))?;
    let ram_size = mem.ram_size();
    let mut digest = CRC64.digest();
    let mut stats = RamStats { total: ram_size, ..Default::default() };
    let mut buf = vec![0u8; MAX_RECORD as usize];
    loop {
        let mut rec = [0u8; 16];
        read_exact(input, &mut rec, "the RAM")?;
        digest.update(&rec);
        let offset = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(rec[8..].try_into().unwrap_or_default());
        if offset == u64::MAX && len == 0 {
            break;
        }
        let fits = offset.checked_add(len).is_some_and(|end| end <= ram_size);
        if !fits || len == 0 || len > MAX_RECORD || !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE)
        {
            return Err(SnapshotError::Corrupt(format!(
                "a RAM record of {len} bytes at {offset:#x} does not fit {ram_size} bytes of RAM"
            )));
        }
        let data = &mut buf[..len as usize];
        read_exact(input, data, "the RAM")?;
        digest.update(data);
        mem.load(GuestMemory::ram_image_addr(offset), data)
            .map_err(|e| SnapshotError::Corrupt(format!("a RAM record at {offset:#x}: {e}")))?;
        stats.written += len;
    }
    let mut sum = [0u8; 8];
    read_exact(input, &mut sum, "the RAM's checksum")?;
    if u64::from_le_bytes(sum) != digest.finalize() {
        return Err(SnapshotError::Checksum);
    }
    stats.zero_pages = (ram_size - stats.written) / PAGE_SIZE;
    let vcpus = m.load_saved(&saved, |_| Ok(()))?;
    Ok((Restored { vcpus, run_state: saved.run_state, took: t.elapsed() }, stats, false))
}

/// The rest of a live migration's stream, after its magic: every RAM
/// record checked (inside the RAM, page aligned, bounded) and loaded as it
/// comes, later records over earlier ones; the records' checksum; then
/// the state file, checked against this machine and loaded. On an error
/// the guest must not run: its RAM may be half loaded.
fn receive_live(m: &mut Machine, input: &mut dyn Read, t: Instant) -> Result<(Restored, RamStats), SnapshotError> {
    let mut digest = CRC64_FAST.digest();
    digest.update(&live::LIVE_MAGIC);
    let mut rest = [0u8; 16];
    read_exact(input, &mut rest, "the header")?;
    digest.update(&rest);
    let version = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    if version != live::LIVE_VERSION {
        return Err(SnapshotError::Corrupt(format!(
            "a live migration stream of version {version}; this ferrovm reads version {}",
            live::LIVE_VERSION
        )));
    }
    let ram_size = u64::from_le_bytes(rest[8..16].try_into().unwrap_or_default());
    let mem = m.mem.clone();
    if ram_size != mem.ram_size() {
        return Err(SnapshotError::Mismatch(format!(
            "the stream carries {ram_size} bytes of RAM, this machine has {}",
            mem.ram_size()
        )));
    }
    mem.zero_ram().map_err(|e| io("clearing guest RAM", e))?;
    let mut stats = RamStats { total: ram_size, ..Default::default() };
    let mut buf = vec![0u8; MAX_RECORD as usize];
    let zeros = vec![0u8; MAX_RECORD as usize];
    loop {
        let mut rec = [0u8; 16];
        read_exact(input, &mut rec, "the RAM")?;
        digest.update(&rec);
        let offset = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
        let raw = u64::from_le_bytes(rec[8..].try_into().unwrap_or_default());
        if offset == u64::MAX && raw == 0 {
            break;
        }
        let zero = raw & live::ZERO_RECORD != 0;
        let len = raw & !live::ZERO_RECORD;
        let fits = offset.checked_add(len).is_some_and(|end| end <= ram_size);
        if !fits || len == 0 || len > MAX_RECORD || !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE)
        {
            return Err(SnapshotError::Corrupt(format!(
                "a RAM record of {len} bytes at {offset:#x} does not fit {ram_size} bytes of RAM"
            )));
        }
        let data = if zero {
            &zeros[..len as usize]
        } else {
            let data = &mut buf[..len as usize];
            read_exact(input, data, "the RAM")?;
            digest.update(data);
            stats.written += len;
            &*data
        };
        mem.load(GuestMemory::ram_image_addr(offset), data)
            .map_err(|e| SnapshotError::Corrupt(format!("a RAM record at {offset:#x}: {e}")))?;
    }
    let mut sum = [0u8; 8];
    read_exact(input, &mut sum, "the RAM's checksum")?;
    if u64::from_le_bytes(sum) != digest.finalize() {
        return Err(SnapshotError::Checksum);
    }
    let mut header = [0u8; HEADER_LEN];
    read_exact(input, &mut header, "the state's header")?;
    let (len, crc) = parse_header(&header, HEADER_LEN)?;
    let mut body = vec![0u8; len as usize];
    read_exact(input, &mut body, "the state")?;
    let saved = decode_body(&body, crc)?;
    m.check_saved(&saved)?;
    let vcpus = m.load_saved(&saved, |_| Ok(()))?;
    stats.zero_pages = ram_size.saturating_sub(stats.written) / PAGE_SIZE;
    Ok((Restored { vcpus, run_state: saved.run_state, took: t.elapsed() }, stats))
}

/// The three ends of an incoming migration's connection: the stream, the
/// way back to a live sender (for [`live::READY`]), and the command of an
/// `exec:` URI.
type IncomingEnds = (Box<dyn Read + Send>, Option<Box<dyn Write + Send>>, Option<std::process::Child>);

/// The receiving end of a migration (`--incoming`, QMP's
/// `migrate-incoming`) that listens on `tcp:` or `unix:` (or whose `exec:`
/// command runs) and has not taken its connection yet: `migrate-incoming`
/// listens before it answers, so a sender may connect at once, and the
/// stopped machine accepts.
pub enum Incoming {
    /// `exec:`: the command's output.
    Exec(std::process::Child, String),
    /// `unix:`: the listener and its path.
    Unix(std::os::unix::net::UnixListener, std::path::PathBuf),
    /// `tcp:`: the listener and its address.
    Tcp(std::net::TcpListener, String),
}

impl Incoming {
    /// Binds `uri`'s socket, or starts its command.
    pub fn listen(uri: &MigrationUri) -> Result<Incoming, SnapshotError> {
        Ok(match uri {
            MigrationUri::Exec(cmd) => {
                let child = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| io(format!("exec:{cmd}"), e))?;
                Incoming::Exec(child, cmd.clone())
            }
            MigrationUri::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let l = std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| io(format!("unix:{}", path.display()), e))?;
                Incoming::Unix(l, path.clone())
            }
            MigrationUri::Tcp(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|e| io(format!("tcp:{addr}"), e))?;
                Incoming::Tcp(l, addr.clone())
            }
        })
    }

    /// Takes the migration into `m`: waits for the sender's connection (or
    /// reads the command's output), restores the stream, tells a live
    /// sender that the guest was taken ([`live::READY`]) and waits for an
    /// `exec:` command to end. The restored vCPUs (their `took` counts
    /// from the connection on) and the RAM figures.
    pub fn receive(self, m: &mut Machine) -> Result<(Restored, RamStats), SnapshotError> {
        let (mut input, reply, child) = self.accept()?;
        let got = receive_stream(m, &mut *input);
        // A live migration's sender waits, stopped, for the word that this
        // side took the guest.
        if let (Ok((_, _, true)), Some(mut w)) = (&got, reply) {
            if let Err(e) = w.write_all(&live::READY).and_then(|()| w.flush()) {
                tracing::warn!(target: "vmm", "incoming migration: cannot tell the sender the guest was taken: {e}");
            }
        }
        drop(input);
        if let Some(mut c) = child {
            match c.wait() {
                Ok(st) if !st.success() && got.is_ok() => {
                    tracing::warn!(target: "vmm", "incoming migration: the command ended with {st} after a whole stream")
                }
                _ => {}
            }
        }
        got.map(|(r, ram, _)| (r, ram))
    }

    /// Waits for the sender's connection (a socket's first client).
    fn accept(self) -> Result<IncomingEnds, SnapshotError> {
        match self {
            Incoming::Exec(mut child, cmd) => {
                let out = child.stdout.take().ok_or_else(|| SnapshotError::Io(format!("exec:{cmd}: no stdout")))?;
                Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, out)), None, Some(child)))
            }
            Incoming::Unix(l, path) => {
                let what = || format!("unix:{}", path.display());
                let (s, _) = l.accept().map_err(|e| io(what(), e))?;
                let _ = std::fs::remove_file(&path);
                let w = s.try_clone().map_err(|e| io(what(), e))?;
                Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, s)), Some(Box::new(w)), None))
            }
            Incoming::Tcp(l, addr) => {
                let (s, _) = l.accept().map_err(|e| io(format!("tcp:{addr}"), e))?;
                let w = s.try_clone().map_err(|e| io(format!("tcp:{addr}"), e))?;
                Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, s)), Some(Box::new(w)), None))
            }
        }
    }
}

// ---- fuzzing ---------------------------------------------------------------

/// Feeds `data` to the state decoder, and a state that decodes to a fresh
/// small machine's checks and restore: for a fuzz target. Never panics on
/// any input (a panic is a bug).
pub fn fuzz_state_decoder(data: &[u8]) {
    let Ok(saved) = decode(data) else { return };
    let Some(mut m) = small_machine() else { return };
    let _ = m.load_saved(&saved, |_| Ok(()));
}

/// Feeds `data` to the receiving end of a migration (`-incoming`), in
/// either of its forms (a live stream: RAM records, their checksum, then
/// the state; or a state file followed by the RAM), restoring into a fresh
/// small machine: for a fuzz target. Never panics on any input (a panic is
/// a bug).
pub fn fuzz_migration_stream(data: &[u8]) {
    let Some(mut m) = small_machine() else { return };
    let _ = receive_stream(&mut m, &mut &data[..]);
}

/// The machine [`fuzz_state_decoder`] and [`fuzz_migration_stream`]
/// restore into.
fn small_machine() -> Option<Machine> {
    Machine::new(MachineConfig {
        mem: firmware::builtin::MIN_RAM,
        kvm_split: crate::config::SplitMode::Off,
        ..MachineConfig::builtin(crate::config::SerialOut::Capture(std::sync::Arc::default()))
    })
    .ok()
}

pub mod clone;
pub mod live;
pub mod qcow2;

#[cfg(test)]
mod tests;
