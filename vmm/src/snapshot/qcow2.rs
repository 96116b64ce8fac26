//! Snapshots inside the machine's qcow2 disks, as QEMU keeps them.
//!
//! When every disk the guest can write is a qcow2 image (not under a
//! temporary `--snapshot` overlay), `savevm NAME` takes an internal
//! snapshot of each of them ([`devices::block::internal`]) and writes
//! the VM state into the first one's, as QEMU does; `loadvm NAME`
//! reverts each disk and loads that state; `delvm NAME` deletes the
//! snapshot from every disk; `info snapshots` lists them as QEMU does.
//! A machine without such a disk keeps its snapshots in the
//! `--snapshot-dir` directory instead.
//!
//! # The VM state
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..16 | the magic, [`VMSTATE_MAGIC`] |
//! | 16..20 | the format version, [`VMSTATE_VERSION`] (little-endian, as every number here) |
//! | 20..24 | zero |
//! | 24..32 | where the state file starts ([`STATE_AT`]) |
//! | 32..40 | the state file's length |
//! | 40..48 | where the RAM image starts (a multiple of the cluster size) |
//! | 48..56 | the RAM image's length (the guest's RAM size) |
//! | 56..64 | the CRC-64 of bytes 0..56 |
//! | [`STATE_AT`].. | the state file, as [`super::encode`] writes it (it has its own checksum) |
//! | RAM offset.. | the RAM image ([`GuestMemory::ram_image_offset`]); clusters of zeros are not stored |
//!
//! QEMU's own VM state is its migration stream, which ferrovm does not
//! read: such a snapshot is listed, deleted and its disk reverted by
//! `qemu-img snapshot -a`, but `loadvm` refuses it by name.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use devices::block::internal::{NewSnapshot, Snapshot, VmState, VmStateWriter};
use devices::block::SharedDisk;
use mmu::{GuestMemory, PAGE_SIZE};

use super::{decode, encode, for_each_data_run, RamStats, Restored, SaveReport, SnapshotError, CRC64};
use crate::machine::{Machine, Stopped};
use crate::storage::MachineDisk;

/// The first bytes of the VM state ferrovm writes into a qcow2 image.
pub const VMSTATE_MAGIC: [u8; 16] = *b"FERROVM\0VMSTATE\0";
/// The VM state's format version.
pub const VMSTATE_VERSION: u32 = 1;
/// Where the state file starts in the VM state.
pub const STATE_AT: u64 = 4096;
const HEADER_LEN: usize = 64;

/// The disks a machine's snapshots live in: every disk the guest can
/// write, the VM state in the first.
#[derive(Debug, Clone)]
pub struct SnapshotDisks {
    /// (a name for messages, the disk), in the order they were given.
    pub disks: Vec<(String, SharedDisk)>,
}

/// A name for drive `i` in messages: QEMU names its devices, ferrovm its images.
fn disk_name(i: usize, d: &MachineDisk) -> String {
    format!("disk #{} ({})", i + 1, d.label)
}

/// Where `savevm` puts the machine's snapshots: `Some` when it has a qcow2
/// disk the guest writes, and then every disk the guest writes must be
/// one (QEMU refuses the same: a raw disk or a temporary overlay could
/// not go back with the others); `None` when it has none (the snapshots
/// then go to `--snapshot-dir`).
pub fn snapshot_disks(disks: &[MachineDisk]) -> Result<Option<SnapshotDisks>, SnapshotError> {
    let mut keep = Vec::new();
    let mut others = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let Some(shared) = &d.disk else { continue };
        let guard = shared.lock();
        if guard.read_only() {
            continue;
        }
        let name = disk_name(i, d);
        match guard.image() {
            Some(img) if img.keeps_snapshots() => keep.push((name, shared.clone())),
            Some(img) if img.is_temporary() => others.push(format!("{name} is under a temporary overlay (--snapshot)")),
            Some(img) => others.push(format!("{name} is a {} image", img.format())),
            None => others.push(format!("{name} is not an image file")),
        }
    }
    if keep.is_empty() {
        return Ok(None);
    }
    if let Some(why) = others.first() {
        return Err(SnapshotError::Refused(format!(
            "the guest writes {why}, which cannot keep snapshots, besides qcow2 disks that keep them \
             (use qcow2 for every disk the guest writes, or readonly=on)"
        )));
    }
    Ok(Some(SnapshotDisks { disks: keep }))
}

/// What goes wrong with one disk, named.
fn on(name: &str, e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Refused(format!("{name}: {e}"))
}

fn image_of<'a>(
    name: &str,
    guard: &'a mut parking_lot::MutexGuard<'_, Box<dyn devices::block::BlockBackend>>,
) -> Result<&'a mut devices::block::Image, SnapshotError> {
    guard.image_mut().ok_or_else(|| on(name, "not an image file"))
}

/// The VM state's header.
fn vmstate_header(state_len: u64, ram_at: u64, ram_len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..16].copy_from_slice(&VMSTATE_MAGIC);
    h[16..20].copy_from_slice(&VMSTATE_VERSION.to_le_bytes());
    h[24..32].copy_from_slice(&STATE_AT.to_le_bytes());
    h[32..40].copy_from_slice(&state_len.to_le_bytes());
    h[40..48].copy_from_slice(&ram_at.to_le_bytes());
    h[48..56].copy_from_slice(&ram_len.to_le_bytes());
    let crc = CRC64.checksum(&h[..56]);
    h[56..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes the state file and the RAM (pages of zeros left out).
fn write_vmstate(
    w: &mut VmStateWriter<'_>,
    state: &[u8],
    mem: &GuestMemory,
    stats: &mut RamStats,
) -> Result<(), String> {
    let align = w.cluster_size().max(PAGE_SIZE);
    let ram_at = (STATE_AT + state.len() as u64).next_multiple_of(align);
    let ram_len = mem.ram_size();
    w.write(0, &vmstate_header(state.len() as u64, ram_at, ram_len))?;
    w.write(STATE_AT, state)?;
    for_each_data_run(mem, stats, |offset, bytes| {
        w.write(ram_at + offset, bytes).map_err(|e| SnapshotError::Io(format!("writing the RAM: {e}")))
    })
    .map_err(|e| e.to_string())?;
    w.set_size(ram_at + ram_len);
    Ok(())
}

fn now() -> (u32, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (u32::try_from(d.as_secs()).unwrap_or(u32::MAX), d.subsec_nanos())
}

/// `savevm NAME` into `disks`: a snapshot of every disk, the VM state in
/// the first. A snapshot of the same name (or ID) is replaced, as QEMU's
/// HMP `savevm` replaces it. When a disk fails, the snapshots already
/// taken on the others are deleted again.
pub fn save(m: &Machine, stopped: &Stopped, disks: &SnapshotDisks, name: &str) -> Result<SaveReport, SnapshotError> {
    let t = Instant::now();
    if name.len() > devices::block::internal::MAX_NAME {
        return Err(SnapshotError::Refused(format!(
            "a snapshot name is at most {} bytes",
            devices::block::internal::MAX_NAME
        )));
    }
    let saved = m.capture(stopped)?;
    let state = encode(&saved)?;
    let (date_sec, date_nsec) = now();
    let new = NewSnapshot {
        name: name.to_string(),
        date_sec,
        date_nsec,
        vm_clock_nsec: saved.machine.clock.now_ns,
        icount: u64::MAX,
    };
    for (dname, disk) in &disks.disks {
        let mut guard = disk.lock();
        let img = image_of(dname, &mut guard)?;
        if img.snapshots().map_err(|e| on(dname, e))?.iter().any(|s| s.matches(name)) {
            img.delete_snapshot(name).map_err(|e| on(dname, format!("deleting the old snapshot '{name}': {e}")))?;
        }
    }
    let mut ram = RamStats::default();
    let mut done: Vec<&SharedDisk> = Vec::new();
    for (i, (dname, disk)) in disks.disks.iter().enumerate() {
        let mut guard = disk.lock();
        let img = image_of(dname, &mut guard)?;
        let r = if i == 0 {
            let mem = &m.mem;
            let mut f = |w: &mut VmStateWriter<'_>| write_vmstate(w, &state, mem, &mut ram);
            img.create_snapshot(&new, Some(&mut f))
        } else {
            img.create_snapshot(&new, None)
        };
        if let Err(e) = r {
            drop(guard);
            for d in done {
                if let Some(img) = d.lock().image_mut() {
                    if let Err(again) = img.delete_snapshot(name) {
                        tracing::warn!(target: "vmm", "savevm {name}: taking back a snapshot: {again}");
                    }
                }
            }
            return Err(on(dname, format!("taking snapshot '{name}': {e}")));
        }
        done.push(disk);
    }
    Ok(SaveReport { state_bytes: state.len() as u64, ram, took: t.elapsed() })
}

/// The VM state's parts, checked.
struct Parsed {
    state: super::SavedState,
    ram_at: u64,
    ram_len: u64,
}

fn parse_vmstate(vm: &VmState, name: &str) -> Result<Parsed, SnapshotError> {
    let mut h = [0u8; HEADER_LEN];
    let corrupt = |what: String| SnapshotError::Corrupt(format!("the VM state of snapshot '{name}': {what}"));
    let have = vm.size().min(HEADER_LEN as u64) as usize;
    vm.read(0, &mut h[..have]).map_err(|e| corrupt(e.to_string()))?;
    if have < VMSTATE_MAGIC.len() || h[..16] != VMSTATE_MAGIC {
        return Err(SnapshotError::Refused(format!(
            "snapshot '{name}' holds a VM state ferrovm did not write (QEMU's, perhaps): ferrovm cannot load it; \
             `qemu-img snapshot -a {name}` reverts the disk alone"
        )));
    }
    if have < HEADER_LEN {
        return Err(corrupt(format!("{have} bytes, fewer than its {HEADER_LEN}-byte header")));
    }
    let field = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
    if CRC64.checksum(&h[..56]) != field(56) {
        return Err(corrupt("its header's checksum does not match".into()));
    }
    let version = u32::from_le_bytes(h[16..20].try_into().unwrap_or_default());
    if version != VMSTATE_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let (state_at, state_len, ram_at, ram_len) = (field(24), field(32), field(40), field(48));
    let fits = |at: u64, len: u64| at.checked_add(len).is_some_and(|end| end <= vm.size());
    if state_at < HEADER_LEN as u64 || !fits(state_at, state_len) || state_len > super::MAX_BODY + 64 {
        return Err(corrupt(format!(
            "a state of {state_len} bytes at {state_at:#x} does not fit its {} bytes",
            vm.size()
        )));
    }
    if ram_at < state_at + state_len || !ram_at.is_multiple_of(PAGE_SIZE) || !fits(ram_at, ram_len) {
        return Err(corrupt(format!("RAM of {ram_len} bytes at {ram_at:#x} does not fit its {} bytes", vm.size())));
    }
    let mut buf = vec![0u8; state_len as usize];
    vm.read(state_at, &mut buf).map_err(|e| corrupt(e.to_string()))?;
    Ok(Parsed { state: decode(&buf)?, ram_at, ram_len })
}

/// Loads the RAM image at `ram_at` of `vm` into RAM made zero first.
fn load_ram(mem: &GuestMemory, vm: &VmState, ram_at: u64, ram_len: u64) -> Result<(), SnapshotError> {
    mem.zero_ram().map_err(|e| SnapshotError::Io(format!("clearing guest RAM: {e}")))?;
    let ranges: Vec<(u64, u64)> = mem
        .ram_ranges()
        .iter()
        .map(|r| {
            let start = GuestMemory::ram_image_offset(r.start);
            (start, start + (r.end - r.start))
        })
        .collect();
    let mut buf = Vec::new();
    for (off, len) in vm.allocated() {
        let (start, end) = (off.max(ram_at), (off + len).min(ram_at + ram_len));
        if start >= end {
            continue;
        }
        buf.resize((end - start) as usize, 0);
        vm.read(start, &mut buf).map_err(|e| SnapshotError::Io(format!("reading the VM state: {e}")))?;
        let (img_start, img_end) = (start - ram_at, end - ram_at);
        for &(r0, r1) in &ranges {
            let (s, e) = (img_start.max(r0), img_end.min(r1));
            if s < e {
                let bytes = &buf[(s - img_start) as usize..(e - img_start) as usize];
                mem.load(GuestMemory::ram_image_addr(s), bytes)
                    .map_err(|err| SnapshotError::Io(format!("loading RAM at {s:#x}: {err}")))?;
            }
        }
    }
    Ok(())
}

/// `loadvm NAME` from `disks`: checks that every disk has the snapshot
/// and can go back to it, and reads and checks the VM state against this
/// machine, before anything changes; then reverts every disk, and loads
/// the machine's state and RAM.
pub fn load(m: &mut Machine, disks: &SnapshotDisks, name: &str) -> Result<Restored, SnapshotError> {
    let t = Instant::now();
    let mut vmstate = None;
    for (i, (dname, disk)) in disks.disks.iter().enumerate() {
        let mut guard = disk.lock();
        let img = image_of(dname, &mut guard)?;
        let has = img.snapshots().map_err(|e| on(dname, e))?.iter().any(|s| s.matches(name));
        if !has {
            return Err(SnapshotError::Refused(format!("{dname} does not have the requested snapshot '{name}'")));
        }
        img.check_snapshot(name).map_err(|e| on(dname, e))?;
        if i == 0 {
            let (sn, vm) = img.snapshot_vmstate(name).map_err(|e| {
                if e.contains("disk-only") {
                    on(
                        dname,
                        format!(
                            "this is a disk-only snapshot; revert to it offline with `qemu-img snapshot -a {name}`"
                        ),
                    )
                } else {
                    on(dname, e)
                }
            })?;
            vmstate = Some((sn, vm));
        }
    }
    let (sn, vm) = vmstate.ok_or_else(|| SnapshotError::Refused("the machine has no disk for snapshots".into()))?;
    let parsed = parse_vmstate(&vm, &sn.name)?;
    m.check_saved(&parsed.state)?;
    if parsed.ram_len != m.mem.ram_size() {
        return Err(SnapshotError::Mismatch(format!(
            "{} bytes of RAM there, {} here (--mem)",
            parsed.ram_len,
            m.mem.ram_size()
        )));
    }
    for (i, (dname, disk)) in disks.disks.iter().enumerate() {
        let mut guard = disk.lock();
        let img = image_of(dname, &mut guard)?;
        img.apply_snapshot(name).map_err(|e| {
            let before = if i == 0 { "" } else { " (the disks before it went back already)" };
            on(dname, format!("going back to snapshot '{name}': {e}{before}"))
        })?;
    }
    let vcpus = m.load_saved(&parsed.state, |mem| load_ram(mem, &vm, parsed.ram_at, parsed.ram_len))?;
    Ok(Restored { vcpus, run_state: parsed.state.run_state, took: t.elapsed() })
}

/// `delvm NAME`: deletes the snapshot from every disk that has it.
pub fn delete(disks: &SnapshotDisks, name: &str) -> Result<(), SnapshotError> {
    let mut found = false;
    for (dname, disk) in &disks.disks {
        let mut guard = disk.lock();
        let img = image_of(dname, &mut guard)?;
        if img.snapshots().map_err(|e| on(dname, e))?.iter().any(|s| s.matches(name)) {
            img.delete_snapshot(name).map_err(|e| on(dname, format!("deleting snapshot '{name}': {e}")))?;
            found = true;
        }
    }
    if found {
        Ok(())
    } else {
        Err(SnapshotError::Refused(format!("Snapshot '{name}' not found")))
    }
}

/// A size as QEMU's `size_to_str` prints it: three significant digits.
pub fn qemu_size(bytes: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // The exponent of 2 of bytes * 1024 / 1000, less one, in steps of 10:
    // 1000 KiB prints as 0.977 MiB, as QEMU prints it.
    let scaled = bytes as f64 * 1.024;
    let i = if scaled < 1.0 { 0 } else { ((scaled.log2().floor() as i64) / 10).clamp(0, 6) as usize };
    let v = bytes as f64 / (1u64 << (i * 10)) as f64;
    format!("{} {}B", sig3(v), SUFFIXES[i])
}

/// `%0.3g`: three significant digits, no trailing zeros.
fn sig3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (3 - digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// One row of QEMU's snapshot table.
fn row(id: &str, sn: &Snapshot) -> String {
    let secs = sn.vm_clock_nsec / 1_000_000_000;
    let clock = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        (sn.vm_clock_nsec / 1_000_000) % 1000
    );
    let icount = if sn.icount == u64::MAX { String::new() } else { sn.icount.to_string() };
    format!(
        "{id:<9} {:<16} {:>8}{:>20}{clock:>13}{icount:>11}",
        sn.name,
        qemu_size(sn.vm_state_size),
        super::date(u64::from(sn.date_sec))
    )
}

/// The header of QEMU's snapshot table.
pub fn table_header() -> String {
    format!("{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
}

/// `qemu-img snapshot -l`'s rows of `list`.
pub fn rows(list: &[Snapshot]) -> String {
    list.iter().map(|s| row(&s.id, s) + "\n").collect()
}

/// HMP `info snapshots`, as QEMU prints it: the snapshots every disk has,
/// then, per disk, those only it has.
pub fn info_text(disks: &SnapshotDisks) -> Result<String, SnapshotError> {
    let mut lists = Vec::new();
    for (dname, disk) in &disks.disks {
        let guard = disk.lock();
        let img = guard.image().ok_or_else(|| on(dname, "not an image file"))?;
        lists.push((dname.clone(), img.snapshots().map_err(|e| on(dname, e))?));
    }
    if lists.iter().all(|(_, l)| l.is_empty()) {
        return Ok("There is no snapshot available.\n".into());
    }
    let everywhere = |sn: &Snapshot| lists.iter().all(|(_, l)| l.iter().any(|o| o.name == sn.name));
    let mut out = String::from("List of snapshots present on all disks:\n");
    let global: Vec<&Snapshot> = lists[0].1.iter().filter(|s| everywhere(s)).collect();
    if global.is_empty() {
        out.push_str("None\n");
    } else {
        out.push_str(&table_header());
        out.push('\n');
        for sn in &global {
            out.push_str(&row("--", sn));
            out.push('\n');
        }
    }
    for (dname, list) in &lists {
        let partial: Vec<&Snapshot> = list.iter().filter(|s| !global.iter().any(|g| g.name == s.name)).collect();
        if partial.is_empty() {
            continue;
        }
        out.push_str(&format!("\nList of partial (non-loadable) snapshots on '{dname}':\n"));
        out.push_str(&table_header());
        out.push('\n');
        for sn in partial {
            out.push_str(&row(&sn.id, sn));
            out.push('\n');
        }
    }
    Ok(out)
}

/// `ferrovm snapshot list IMAGE`: the snapshots inside a qcow2 image, as
/// `qemu-img snapshot -l` lists them.
pub fn list_image(path: &std::path::Path) -> Result<String, SnapshotError> {
    let spec = devices::block::DiskSpec {
        path: path.to_path_buf(),
        format: Some(devices::block::ImageFormat::Qcow2),
        read_only: true,
        ..Default::default()
    };
    let img = devices::block::open(&spec, false).map_err(|e| SnapshotError::Io(e.to_string()))?;
    let list = img.snapshots().map_err(SnapshotError::Corrupt)?;
    if list.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("Snapshot list:\n{}\n{}", table_header(), rows(&list)))
}

/// A VM state header, for tests that make damaged ones.
#[cfg(test)]
pub(crate) fn tests_header(state_len: u64, ram_at: u64, ram_len: u64) -> [u8; HEADER_LEN] {
    vmstate_header(state_len, ram_at, ram_len)
}
