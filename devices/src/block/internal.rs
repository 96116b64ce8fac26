//! qcow2 internal snapshots, kept as QEMU keeps them.
//!
//! Reference: QEMU's docs/interop/qcow2.txt.
//!
//! ```text
//! snapshot table entry (big-endian, each 8-byte aligned; header fields 60 nb_snapshots, 64 snapshots_offset)
//!   0 u64 l1_table_offset    16 u32 date_sec        32 u32 vm_state_size (0 when past 4 GiB)
//!   8 u32 l1_size            20 u32 date_nsec       36 u32 extra_data_size
//!  12 u16 id_str_size        24 u64 vm_clock_nsec   40 extra data, then the ID, then the name
//!  14 u16 name_size
//! extra data: 0 u64 vm_state_size_large, 8 u64 disk_size, 16 u64 icount (-1: none), then fields kept as read
//! L1/L2 entry: bit 63 QCOW_OFLAG_COPIED (refcount is 1), bit 62 compressed, bits 9-55 host offset, bit 0 zero
//! ```
//!
//! A snapshot is a copy of the active L1 table: every cluster the copy
//! references (L2 tables, data, compressed runs) gets one more reference,
//! and `QCOW_OFLAG_COPIED` is cleared wherever a refcount becomes more
//! than one, so the next guest write to such a cluster copies it first.
//! The VM state lives at virtual offsets past the disk's end (from the
//! first L1 entry that maps no disk cluster), in clusters and L2 tables
//! that only the snapshot's L1 table references.
//!
//! Every change is ordered as QEMU orders it, so a crash at any point
//! leaves a consistent image (at worst with leaked clusters, which
//! `qemu-img check` reports and never loses data over): refcounts reach
//! the disk before a table that references their clusters; a table is
//! written whole before anything points at it; the header's
//! `nb_snapshots` and `snapshots_offset` are written last, in one write;
//! references are dropped only after nothing on disk uses them, and the
//! clusters freed are then punched out of the file.
//!
//! Every offset, size and count read from the file is checked before it
//! is used: a corrupt table gets an error naming what is wrong, and an
//! operation checks every table it will walk (and that no refcount would
//! leave its range) before it changes anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{self, Header};

/// Host offsets in L1 and L2 entries: bits 9-55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Host offsets in refcount table entries: bits 9-63.
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// The cluster's refcount is exactly one: it may be written in place.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// A compressed cluster.
const OFLAG_COMPRESSED: u64 = 1 << 62;

/// QEMU's limits: snapshots per image, bytes of the snapshot table, bytes
/// of extra data per entry, bytes of an L1 table and of the refcount table.
pub const MAX_SNAPSHOTS: usize = 65536;
const MAX_TABLE_BYTES: u64 = 1024 * 65536;
const MAX_EXTRA_DATA: u32 = 1024;
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// The longest snapshot name QEMU keeps (its `QEMUSnapshotInfo.name`).
pub const MAX_NAME: usize = 255;
/// The extra data written: vm_state_size_large, disk_size, icount.
const EXTRA_LEN: usize = 24;
/// Header fields: nb_snapshots (then snapshots_offset), the refcount table.
const NB_SNAPSHOTS_AT: u64 = 60;
const REFTABLE_AT: u64 = 48;
/// How many modified L2 tables wait before they are written.
const L2_BATCH: usize = 64;

/// One entry of the snapshot table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The unique ID (QEMU numbers them 1, 2, ...).
    pub id: String,
    /// The name (QEMU's "tag").
    pub name: String,
    pub l1_table_offset: u64,
    pub l1_size: u32,
    /// When it was taken.
    pub date_sec: u32,
    pub date_nsec: u32,
    /// The guest's clock then, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Bytes of VM state; 0 for a disk-only snapshot.
    pub vm_state_size: u64,
    /// The disk's size then.
    pub disk_size: u64,
    /// The record/replay instruction count; `u64::MAX` when there was none.
    pub icount: u64,
    /// The ID and name as stored (they need not be UTF-8).
    id_raw: Vec<u8>,
    name_raw: Vec<u8>,
    /// Extra data past the fields above, kept as read.
    extra_tail: Vec<u8>,
}

impl Snapshot {
    /// Whether `key` names this snapshot by ID or by name.
    pub fn matches(&self, key: &str) -> bool {
        self.id_raw == key.as_bytes() || self.name_raw == key.as_bytes()
    }
}

/// Writes a new snapshot's VM state (through [`VmStateWriter::write`]).
pub type WriteVmState<'f> = dyn FnMut(&mut VmStateWriter<'_>) -> Result<(), String> + 'f;

/// What a new snapshot records besides the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    /// `u64::MAX`: no instruction count (QEMU's -1).
    pub icount: u64,
}

/// A refcount block as read (or made), and whether it must be written.
struct Block {
    offset: u64,
    data: Vec<u8>,
    dirty: bool,
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap_or_default())
}

#[cfg(test)]
thread_local! {
    /// Tests: how many more writes succeed before the file "crashes"
    /// (every later write fails, as if the process had died there).
    pub(crate) static WRITES_LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Every write of the metadata goes through here.
fn pwrite(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    #[cfg(test)]
    {
        let crashed = WRITES_LEFT.with(|w| match w.get() {
            Some(0) => true,
            Some(n) => {
                w.set(Some(n - 1));
                false
            }
            None => false,
        });
        if crashed {
            return Err(std::io::Error::other("a crash (injected by a test)"));
        }
    }
    file.write_all_at(data, offset)
}

fn to_u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| be64(c, 0)).collect()
}

fn from_u64s(t: &[u64]) -> Vec<u8> {
    t.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// The metadata of an open qcow2 file, for its internal snapshots.
///
/// Nothing else may use the file's metadata meanwhile: the image format
/// library is closed around a change ([`super::Image`]).
pub struct Qcow2Meta {
    file: File,
    writable: bool,
    /// The file's length, grown by what was allocated since it opened.
    len: u64,
    header: Header,
    cluster_bits: u32,
    /// log2 of the clusters one refcount block covers.
    rb_bits: u32,
    reftable: Vec<u64>,
    reftable_dirty: bool,
    blocks: HashMap<u64, Block>,
    /// The active L1 table.
    l1: Vec<u64>,
    snapshots: Vec<Snapshot>,
    /// Bytes of the snapshot table on disk.
    table_size: u64,
    /// No free cluster lies below this one.
    free_hint: u64,
    /// Clusters whose refcount fell to zero: punched out of the file once
    /// that is on disk, and not reused before.
    freed: HashSet<u64>,
    /// Clusters allocated since [`Qcow2Meta::begin`], to give back when
    /// the operation fails before anything references them.
    allocated: Vec<u64>,
}

impl std::fmt::Debug for Qcow2Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Meta").field("header", &self.header).field("snapshots", &self.snapshots.len()).finish()
    }
}

impl Qcow2Meta {
    /// Reads and checks the header, the refcount table, the active L1
    /// table and the snapshot table of `file`. `writable`: snapshots will
    /// be taken, applied or deleted (the image must not be marked dirty).
    pub fn open(file: File, writable: bool) -> Result<Self, String> {
        let len = file.metadata().map_err(|e| format!("cannot read the file's size: {e}"))?.len();
        let mut head = vec![0u8; 512.min(len as usize)];
        file.read_exact_at(&mut head, 0).map_err(|e| format!("cannot read the header: {e}"))?;
        let h = header::parse(&head, len)?;
        if writable {
            header::check_writable(&file)?;
        }
        let cluster_bits = h.cluster_bits;
        let cluster = 1u64 << cluster_bits;
        let rb_bits = cluster_bits + 3 - h.refcount_order;
        let mut q = Qcow2Meta {
            file,
            writable,
            len,
            header: h,
            cluster_bits,
            rb_bits,
            reftable: Vec::new(),
            reftable_dirty: false,
            blocks: HashMap::new(),
            l1: Vec::new(),
            snapshots: Vec::new(),
            table_size: 0,
            free_hint: 1,
            freed: HashSet::new(),
            allocated: Vec::new(),
        };
        let rt =
            q.read(h.refcount_table_offset, u64::from(h.refcount_table_clusters) << cluster_bits, "refcount table")?;
        header::check_entries("refcount table", &rt, cluster, len)?;
        q.reftable = to_u64s(&rt);
        if q.reftable.first().is_none_or(|e| e & REFT_OFFSET_MASK == 0) {
            return Err("the refcount table does not cover the header's cluster".into());
        }
        let l1 = q.read(h.l1_table_offset, u64::from(h.l1_size) * 8, "L1 table")?;
        header::check_entries("L1 table", &l1, cluster, len)?;
        q.l1 = to_u64s(&l1);
        if h.nb_snapshots > 0 {
            let (list, size) = q.read_snapshot_table()?;
            q.snapshots = list;
            q.table_size = size;
        }
        Ok(q)
    }

    /// The header as read (and as changed since).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The snapshots, in table order.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The snapshot `key` names (its ID first, then its name, as QEMU looks).
    pub fn find(&self, key: &str) -> Option<&Snapshot> {
        self.snapshots
            .iter()
            .find(|s| s.id_raw == key.as_bytes())
            .or_else(|| self.snapshots.iter().find(|s| s.matches(key)))
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The first L1 index past the disk: where the VM state starts.
    pub fn vm_state_index(&self) -> u64 {
        self.header.size.div_ceil(1 << (2 * self.cluster_bits - 3))
    }

    /// Reads `n` bytes at `offset`, which must lie inside the file.
    fn read(&self, offset: u64, n: u64, what: &str) -> Result<Vec<u8>, String> {
        if offset.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(format!("the {what} at {offset:#x} ({n} bytes) lies past the end of the file"));
        }
        let mut b = vec![0u8; usize::try_from(n).map_err(|_| format!("the {what} is too large"))?];
        self.file.read_exact_at(&mut b, offset).map_err(|e| format!("cannot read the {what} at {offset:#x}: {e}"))?;
        Ok(b)
    }

    fn write(&mut self, offset: u64, data: &[u8], what: &str) -> Result<(), String> {
        pwrite(&self.file, data, offset).map_err(|e| format!("cannot write the {what} at {offset:#x}: {e}"))?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn sync(&self) -> Result<(), String> {
        self.file.sync_data().map_err(|e| format!("cannot sync the image: {e}"))
    }

    fn require_writable(&self) -> Result<(), String> {
        if self.writable {
            Ok(())
        } else {
            Err("the image is open read-only".into())
        }
    }

    // ---- the snapshot table ------------------------------------------------

    fn read_snapshot_table(&self) -> Result<(Vec<Snapshot>, u64), String> {
        let h = &self.header;
        let nb = h.nb_snapshots as usize;
        if nb > MAX_SNAPSHOTS {
            return Err(format!("the image claims {nb} snapshots, more than the {MAX_SNAPSHOTS} QEMU allows"));
        }
        let start = h.snapshots_offset;
        let mut pos = start;
        let mut list = Vec::with_capacity(nb);
        let bad = |i: usize, what: String| format!("snapshot table entry {i}: {what}");
        for i in 0..nb {
            pos = pos.next_multiple_of(8);
            let fixed = self.read(pos, 40, "snapshot table").map_err(|e| bad(i, e))?;
            let id_len = u64::from(be16(&fixed, 12));
            let name_len = u64::from(be16(&fixed, 14));
            let extra_len = be32(&fixed, 36);
            if extra_len > MAX_EXTRA_DATA {
                return Err(bad(i, format!("{extra_len} bytes of extra data, more than the {MAX_EXTRA_DATA} allowed")));
            }
            let rest = self
                .read(pos + 40, u64::from(extra_len) + id_len + name_len, "snapshot table")
                .map_err(|e| bad(i, e))?;
            let (extra, strings) = rest.split_at(extra_len as usize);
            let (id_raw, name_raw) = strings.split_at(id_len as usize);
            let mut sn = Snapshot {
                id: String::from_utf8_lossy(id_raw).into_owned(),
                name: String::from_utf8_lossy(name_raw).into_owned(),
                l1_table_offset: be64(&fixed, 0),
                l1_size: be32(&fixed, 8),
                date_sec: be32(&fixed, 16),
                date_nsec: be32(&fixed, 20),
                vm_clock_nsec: be64(&fixed, 24),
                vm_state_size: u64::from(be32(&fixed, 32)),
                disk_size: h.size,
                icount: u64::MAX,
                id_raw: id_raw.to_vec(),
                name_raw: name_raw.to_vec(),
                extra_tail: extra.get(EXTRA_LEN..).unwrap_or_default().to_vec(),
            };
            if extra.len() >= 8 {
                sn.vm_state_size = be64(extra, 0);
            }
            if extra.len() >= 16 {
                sn.disk_size = be64(extra, 8);
            }
            if extra.len() >= 24 {
                sn.icount = be64(extra, 16);
            }
            pos += 40 + u64::from(extra_len) + id_len + name_len;
            if pos - start > MAX_TABLE_BYTES {
                return Err(format!("the snapshot table is larger than the {MAX_TABLE_BYTES} bytes QEMU allows"));
            }
            list.push(sn);
        }
        Ok((list, pos - start))
    }

    fn encode_table(list: &[Snapshot]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for sn in list {
            out.resize(out.len().next_multiple_of(8), 0);
            let id_len = u16::try_from(sn.id_raw.len()).map_err(|_| "a snapshot ID is too long".to_string())?;
            let name_len = u16::try_from(sn.name_raw.len()).map_err(|_| "a snapshot name is too long".to_string())?;
            let extra_len = EXTRA_LEN + sn.extra_tail.len();
            out.extend_from_slice(&sn.l1_table_offset.to_be_bytes());
            out.extend_from_slice(&sn.l1_size.to_be_bytes());
            out.extend_from_slice(&id_len.to_be_bytes());
            out.extend_from_slice(&name_len.to_be_bytes());
            out.extend_from_slice(&sn.date_sec.to_be_bytes());
            out.extend_from_slice(&sn.date_nsec.to_be_bytes());
            out.extend_from_slice(&sn.vm_clock_nsec.to_be_bytes());
            // Past 4 GiB the 32-bit field says 0: an older reader sees a
            // disk-only snapshot rather than a truncated state.
            out.extend_from_slice(&u32::try_from(sn.vm_state_size).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&(extra_len as u32).to_be_bytes());
            out.extend_from_slice(&sn.vm_state_size.to_be_bytes());
            out.extend_from_slice(&sn.disk_size.to_be_bytes());
            out.extend_from_slice(&sn.icount.to_be_bytes());
            out.extend_from_slice(&sn.extra_tail);
            out.extend_from_slice(&sn.id_raw);
            out.extend_from_slice(&sn.name_raw);
            if out.len() as u64 > MAX_TABLE_BYTES {
                return Err(format!("the snapshot table would be larger than the {MAX_TABLE_BYTES} bytes QEMU allows"));
            }
        }
        Ok(out)
    }

    /// Writes `list` as a new snapshot table in newly allocated clusters,
    /// then points the header at it (one write of nb_snapshots and
    /// snapshots_offset), then frees the old table.
    fn write_snapshot_table(&mut self, list: Vec<Snapshot>) -> Result<(), String> {
        let bytes = Self::encode_table(&list)?;
        let cluster = self.cluster();
        let offset = if bytes.is_empty() {
            0
        } else {
            let c = self.alloc((bytes.len() as u64).div_ceil(cluster))?;
            c << self.cluster_bits
        };
        // The new table's refcounts, then the table, then the header.
        self.flush()?;
        if !bytes.is_empty() {
            self.write(offset, &bytes, "snapshot table")?;
            self.sync()?;
        }
        let mut h = [0u8; 12];
        h[..4].copy_from_slice(&(list.len() as u32).to_be_bytes());
        h[4..].copy_from_slice(&offset.to_be_bytes());
        self.write(NB_SNAPSHOTS_AT, &h, "header")?;
        self.sync()?;
        let (old_offset, old_size, old_nb) = (self.header.snapshots_offset, self.table_size, self.header.nb_snapshots);
        self.header.nb_snapshots = list.len() as u32;
        self.header.snapshots_offset = offset;
        self.snapshots = list;
        self.table_size = bytes.len() as u64;
        self.allocated.clear();
        if old_nb > 0 && old_size > 0 {
            let first = old_offset >> self.cluster_bits;
            let last = (old_offset + old_size - 1) >> self.cluster_bits;
            for c in first..=last {
                self.add(c, -1)?;
            }
            self.flush()?;
        }
        Ok(())
    }

    // ---- refcounts ----------------------------------------------------------

    fn refcount_max(&self) -> u64 {
        match 1u32 << self.header.refcount_order {
            64 => u64::MAX,
            bits => (1u64 << bits) - 1,
        }
    }

    fn block(&mut self, idx: u64) -> Result<Option<&mut Block>, String> {
        if !self.blocks.contains_key(&idx) {
            let offset =
                usize::try_from(idx).ok().and_then(|i| self.reftable.get(i)).map_or(0, |e| e & REFT_OFFSET_MASK);
            if offset == 0 {
                return Ok(None);
            }
            let data = self.read(offset, self.cluster(), "refcount block")?;
            self.blocks.insert(idx, Block { offset, data, dirty: false });
        }
        Ok(self.blocks.get_mut(&idx))
    }

    fn entry(data: &[u8], i: u64, order: u32) -> u64 {
        let bits = 1u64 << order;
        if bits < 8 {
            let bit = i * bits;
            u64::from(data[(bit / 8) as usize] >> (bit % 8)) & ((1 << bits) - 1)
        } else {
            let n = (bits / 8) as usize;
            let at = i as usize * n;
            data[at..at + n].iter().fold(0u64, |v, &b| v << 8 | u64::from(b))
        }
    }

    fn set_entry(data: &mut [u8], i: u64, order: u32, v: u64) {
        let bits = 1u64 << order;
        if bits < 8 {
            let bit = i * bits;
            let mask = (((1u16 << bits) - 1) as u8) << (bit % 8);
            let b = &mut data[(bit / 8) as usize];
            *b = (*b & !mask) | (((v as u8) << (bit % 8)) & mask);
        } else {
            let n = (bits / 8) as usize;
            let at = i as usize * n;
            data[at..at + n].copy_from_slice(&v.to_be_bytes()[8 - n..]);
        }
    }

    /// The refcount of cluster `c` (0 where no refcount block covers it).
    pub fn refcount(&mut self, c: u64) -> Result<u64, String> {
        let (order, idx, i) = (self.header.refcount_order, c >> self.rb_bits, c & ((1 << self.rb_bits) - 1));
        Ok(self.block(idx)?.map_or(0, |b| Self::entry(&b.data, i, order)))
    }

    fn set_refcount(&mut self, c: u64, v: u64) -> Result<(), String> {
        let (order, idx, i) = (self.header.refcount_order, c >> self.rb_bits, c & ((1 << self.rb_bits) - 1));
        if self.block(idx)?.is_none() {
            if v == 0 {
                return Ok(());
            }
            self.create_block(idx)?;
        }
        let b = self.block(idx)?.ok_or("a refcount block vanished")?;
        Self::set_entry(&mut b.data, i, order, v);
        b.dirty = true;
        Ok(())
    }

    /// Adds `delta` to cluster `c`'s refcount; returns the new refcount.
    fn add(&mut self, c: u64, delta: i64) -> Result<u64, String> {
        let cur = self.refcount(c)?;
        let new = cur.checked_add_signed(delta).ok_or_else(|| {
            format!(
                "the refcount of cluster {:#x} would fall below zero: the image's refcounts are wrong \
                 (`qemu-img check -r all` repairs them)",
                c << self.cluster_bits
            )
        })?;
        if new > self.refcount_max() {
            return Err(format!(
                "the refcount of cluster {:#x} would pass {}, the most {}-bit refcounts hold",
                c << self.cluster_bits,
                self.refcount_max(),
                1u32 << self.header.refcount_order
            ));
        }
        self.set_refcount(c, new)?;
        if new == 0 && cur > 0 {
            self.freed.insert(c);
            self.free_hint = self.free_hint.min(c);
        }
        Ok(new)
    }

    /// A new, empty refcount block for index `idx`, placed in the first
    /// cluster it covers (which is free: nothing covers it yet).
    fn create_block(&mut self, idx: u64) -> Result<(), String> {
        if idx as usize >= self.reftable.len() {
            self.grow_reftable(idx + 1)?;
            if self.block(idx)?.is_some() {
                return Ok(());
            }
        }
        let c = idx << self.rb_bits;
        let offset = c << self.cluster_bits;
        if offset & !OFFSET_MASK != 0 {
            return Err("the image would grow past the largest offset qcow2 addresses".into());
        }
        let mut data = vec![0u8; self.cluster() as usize];
        Self::set_entry(&mut data, 0, self.header.refcount_order, 1);
        self.blocks.insert(idx, Block { offset, data, dirty: true });
        self.reftable[idx as usize] = offset;
        self.reftable_dirty = true;
        self.len = self.len.max(offset + self.cluster());
        // Not given back on a rollback: the refcount table references it.
        Ok(())
    }

    /// Moves the refcount table to the end of the file, large enough for
    /// `need` entries, with new refcount blocks for its own clusters; then
    /// points the header at it and frees the old one.
    fn grow_reftable(&mut self, need: u64) -> Result<(), String> {
        self.flush()?;
        let cluster = self.cluster();
        let per_cluster = cluster / 8;
        let entries = need.max(self.reftable.len() as u64 * 2).next_multiple_of(per_cluster);
        let clusters = entries / per_cluster;
        if clusters * cluster > MAX_REFTABLE_BYTES.max(cluster) {
            return Err(format!("the refcount table would pass the {MAX_REFTABLE_BYTES} bytes QEMU allows"));
        }
        // Past everything the file holds and every refcount it records.
        let mut start = self.len.div_ceil(cluster);
        for (idx, e) in self.reftable.iter().enumerate() {
            if e & REFT_OFFSET_MASK != 0 {
                let b = self.read(e & REFT_OFFSET_MASK, cluster, "refcount block")?;
                let order = self.header.refcount_order;
                let n = 1u64 << self.rb_bits;
                if let Some(last) = (0..n).rev().find(|&i| Self::entry(&b, i, order) != 0) {
                    start = start.max(((idx as u64) << self.rb_bits) + last + 1);
                }
            }
        }
        // The new blocks go after the table, until every cluster of the
        // table and of the blocks is covered.
        let mut end = start + clusters;
        let mut new_blocks: Vec<(u64, u64)> = Vec::new();
        loop {
            let missing: Vec<u64> = ((start >> self.rb_bits)..=((end - 1) >> self.rb_bits))
                .filter(|&i| {
                    let old = self.reftable.get(i as usize).is_some_and(|e| e & REFT_OFFSET_MASK != 0);
                    !old && !new_blocks.iter().any(|&(b, _)| b == i)
                })
                .collect();
            if missing.is_empty() {
                break;
            }
            for i in missing {
                new_blocks.push((i, end));
                end += 1;
            }
        }
        if let Some(&(i, _)) = new_blocks.iter().find(|&&(i, _)| i >= entries) {
            return Err(format!("refcount block {i} would lie outside the new refcount table"));
        }
        let mut table = self.reftable.clone();
        table.resize(entries as usize, 0);
        for &(i, c) in &new_blocks {
            let offset = c << self.cluster_bits;
            table[i as usize] = offset;
            self.blocks.insert(i, Block { offset, data: vec![0u8; cluster as usize], dirty: true });
        }
        let old = (self.header.refcount_table_offset, self.header.refcount_table_clusters);
        let old_table = std::mem::replace(&mut self.reftable, table);
        // The new clusters' refcounts, in the blocks (old and new) the new
        // table describes.
        for c in start..end {
            if let Err(e) = self.set_refcount(c, 1) {
                self.reftable = old_table;
                return Err(e);
            }
        }
        self.reftable_dirty = false;
        let order_ok = (|| {
            for b in self.blocks.values_mut().filter(|b| b.dirty) {
                pwrite(&self.file, &b.data, b.offset)
                    .map_err(|e| format!("cannot write a refcount block at {:#x}: {e}", b.offset))?;
                b.dirty = false;
            }
            self.len = self.len.max(end << self.cluster_bits);
            self.sync()?;
            let offset = start << self.cluster_bits;
            let bytes = from_u64s(&self.reftable);
            self.write(offset, &bytes, "refcount table")?;
            self.sync()?;
            let mut h = [0u8; 12];
            h[..8].copy_from_slice(&offset.to_be_bytes());
            h[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
            self.write(REFTABLE_AT, &h, "header")?;
            self.sync()
        })();
        if let Err(e) = order_ok {
            return Err(format!("growing the refcount table failed: {e}"));
        }
        self.header.refcount_table_offset = start << self.cluster_bits;
        self.header.refcount_table_clusters = clusters as u32;
        let first = old.0 >> self.cluster_bits;
        for c in first..first + u64::from(old.1) {
            self.add(c, -1)?;
        }
        self.flush()
    }

    /// The lowest run of `n` free clusters, and the lowest free cluster.
    fn find_free(&mut self, n: u64) -> Result<(u64, u64), String> {
        let limit = OFFSET_MASK >> self.cluster_bits;
        let mut c = self.free_hint.max(1);
        let (mut start, mut run, mut first) = (c, 0, None);
        while run < n {
            if c >= limit {
                return Err("the image has no room left below the largest offset qcow2 addresses".into());
            }
            if self.refcount(c)? == 0 && !self.freed.contains(&c) {
                if run == 0 {
                    start = c;
                }
                first.get_or_insert(c);
                run += 1;
            } else {
                run = 0;
            }
            c += 1;
        }
        Ok((start, first.unwrap_or(start)))
    }

    /// Allocates `n` contiguous clusters (refcount 1); returns the first
    /// cluster's index.
    fn alloc(&mut self, n: u64) -> Result<u64, String> {
        loop {
            let (start, first) = self.find_free(n)?;
            let mut created = false;
            for idx in (start >> self.rb_bits)..=((start + n - 1) >> self.rb_bits) {
                if self.block(idx)?.is_none() {
                    self.create_block(idx)?;
                    created = true;
                }
            }
            // A new block may sit in the run: look again.
            if created {
                continue;
            }
            for c in start..start + n {
                self.set_refcount(c, 1)?;
                self.allocated.push(c);
            }
            self.free_hint = if first == start { start + n } else { first };
            self.len = self.len.max((start + n) << self.cluster_bits);
            return Ok(start);
        }
    }

    /// Starts an operation whose allocations [`Qcow2Meta::rollback`] gives
    /// back.
    fn begin(&mut self) {
        self.allocated.clear();
    }

    /// Frees what was allocated since [`Qcow2Meta::begin`] (nothing on
    /// disk references it yet).
    fn rollback(&mut self) {
        let clusters = std::mem::take(&mut self.allocated);
        for c in clusters {
            if self.set_refcount(c, 0).is_ok() {
                self.freed.insert(c);
            }
        }
        if let Err(e) = self.flush() {
            tracing::warn!(target: "devices", "giving back the clusters of a failed snapshot: {e}");
        }
    }

    /// Writes the refcount blocks changed (then the refcount table, when
    /// it changed) and syncs; then punches out the clusters freed.
    fn flush(&mut self) -> Result<(), String> {
        let mut wrote = false;
        for b in self.blocks.values_mut().filter(|b| b.dirty) {
            pwrite(&self.file, &b.data, b.offset)
                .map_err(|e| format!("cannot write a refcount block at {:#x}: {e}", b.offset))?;
            self.len = self.len.max(b.offset + b.data.len() as u64);
            b.dirty = false;
            wrote = true;
        }
        if self.reftable_dirty {
            // The new blocks are on disk before the table points at them.
            self.sync()?;
            let bytes = from_u64s(&self.reftable);
            self.write(self.header.refcount_table_offset, &bytes, "refcount table")?;
            self.reftable_dirty = false;
            wrote = true;
        }
        if wrote {
            self.sync()?;
        }
        let mut freed: Vec<u64> = self.freed.drain().collect();
        freed.sort_unstable();
        let mut i = 0;
        while i < freed.len() {
            let mut j = i + 1;
            while j < freed.len() && freed[j] == freed[j - 1] + 1 {
                j += 1;
            }
            let offset = freed[i] << self.cluster_bits;
            let len = ((j - i) as u64) << self.cluster_bits;
            // Best effort, as QEMU's discards: the space goes back to the
            // host file system where it can.
            let _ = nix::fcntl::fallocate(
                &self.file,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset as i64,
                len as i64,
            );
            i = j;
        }
        Ok(())
    }

    // ---- tables -------------------------------------------------------------

    fn check_cluster(&self, offset: u64, what: &str) -> Result<(), String> {
        if !offset.is_multiple_of(self.cluster()) || offset.checked_add(self.cluster()).is_none_or(|e| e > self.len) {
            return Err(format!("a {what} at {offset:#x} is not at a cluster boundary inside the file"));
        }
        Ok(())
    }

    fn read_l2(&self, offset: u64) -> Result<Vec<u64>, String> {
        self.check_cluster(offset, "L2 table")?;
        Ok(to_u64s(&self.read(offset, self.cluster(), "L2 table")?))
    }

    /// The host clusters a compressed L2 entry's data spans.
    fn compressed_clusters(&self, entry: u64) -> Result<std::ops::RangeInclusive<u64>, String> {
        let cb = self.cluster_bits;
        let shift = 62 - (cb - 8);
        let offset = entry & ((1u64 << shift) - 1);
        let sectors = ((entry >> shift) & ((1u64 << (cb - 8)) - 1)) + 1;
        let size = sectors * 512 - (offset & 511);
        if offset == 0 || offset.checked_add(size).is_none_or(|end| end > self.len.next_multiple_of(512)) {
            return Err(format!("a compressed cluster at {offset:#x} ({size} bytes) lies outside the file"));
        }
        Ok((offset >> cb)..=((offset + size - 1) >> cb))
    }

    /// The references the L1 entries `l1` make, added to `counts` per
    /// cluster, after checking every table and entry they lead to.
    fn count_refs(&self, l1: &[u64], counts: &mut HashMap<u64, u64>) -> Result<(), String> {
        for (i, &e) in l1.iter().enumerate() {
            let l2_off = e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            let l2 = self.read_l2(l2_off).map_err(|err| format!("L1 entry {i}: {err}"))?;
            *counts.entry(l2_off >> self.cluster_bits).or_default() += 1;
            for (j, &entry) in l2.iter().enumerate() {
                if entry & OFLAG_COMPRESSED != 0 {
                    for c in self.compressed_clusters(entry).map_err(|err| format!("L2 entry {i}/{j}: {err}"))? {
                        *counts.entry(c).or_default() += 1;
                    }
                } else {
                    let off = entry & OFFSET_MASK;
                    if off != 0 {
                        self.check_cluster(off, "data cluster").map_err(|err| format!("L2 entry {i}/{j}: {err}"))?;
                        *counts.entry(off >> self.cluster_bits).or_default() += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that adding `inc` and then taking away `dec` keeps every
    /// refcount in its range.
    fn check_counts(&mut self, inc: &HashMap<u64, u64>, dec: &HashMap<u64, u64>) -> Result<(), String> {
        let max = self.refcount_max();
        for (&c, &n) in inc {
            let cur = self.refcount(c)?;
            if cur.checked_add(n).is_none_or(|v| v > max) {
                return Err(if max == 1 {
                    "the image's refcounts are 1 bit wide: clusters cannot be shared, so it cannot hold \
                     snapshots (convert it with `qemu-img amend -o refcount_bits=16`)"
                        .to_string()
                } else {
                    format!("the refcount of cluster {:#x} would pass {max}", c << self.cluster_bits)
                });
            }
        }
        for (&c, &n) in dec {
            let cur = self.refcount(c)? + inc.get(&c).copied().unwrap_or(0);
            if cur < n {
                return Err(format!(
                    "cluster {:#x} is referenced {n} times but its refcount is {cur}: the image's refcounts \
                     are wrong (`qemu-img check -r all` repairs them)",
                    c << self.cluster_bits
                ));
            }
        }
        Ok(())
    }

    /// Adds `addend` (1, 0 or -1) to the refcount of every cluster the L1
    /// entries `l1` reference, and sets `QCOW_OFLAG_COPIED` in their L2
    /// entries and in `l1` where a refcount is exactly one (clears it
    /// elsewhere). Changed L2 tables are written after the refcounts they
    /// depend on; `l1` is only changed in memory. Returns whether it
    /// changed. The tables were checked by [`Qcow2Meta::count_refs`].
    fn update_refcounts(&mut self, l1: &mut [u64], addend: i64) -> Result<bool, String> {
        let mut changed_l1 = false;
        let mut pending: Vec<(u64, Vec<u64>)> = Vec::new();
        for e in l1.iter_mut() {
            let l2_off = *e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            let mut l2 = self.read_l2(l2_off)?;
            let mut changed = false;
            for slot in l2.iter_mut() {
                let old = *slot;
                let mut entry = old & !OFLAG_COPIED;
                let rc = if entry & OFLAG_COMPRESSED != 0 {
                    if addend != 0 {
                        for c in self.compressed_clusters(entry)? {
                            self.add(c, addend)?;
                        }
                    }
                    // Compressed clusters are never written in place.
                    2
                } else {
                    let off = entry & OFFSET_MASK;
                    if off == 0 {
                        0
                    } else {
                        self.check_cluster(off, "data cluster")?;
                        let c = off >> self.cluster_bits;
                        if addend != 0 {
                            self.add(c, addend)?
                        } else {
                            self.refcount(c)?
                        }
                    }
                };
                if rc == 1 {
                    entry |= OFLAG_COPIED;
                }
                if entry != old {
                    *slot = entry;
                    changed = true;
                }
            }
            let c = l2_off >> self.cluster_bits;
            let rc = if addend != 0 { self.add(c, addend)? } else { self.refcount(c)? };
            if changed && rc > 0 {
                pending.push((l2_off, l2));
            }
            let new = l2_off | if rc == 1 { OFLAG_COPIED } else { 0 };
            if new != *e {
                *e = new;
                changed_l1 = true;
            }
            if pending.len() >= L2_BATCH {
                self.write_l2s(&mut pending)?;
            }
        }
        self.write_l2s(&mut pending)?;
        self.flush()?;
        Ok(changed_l1)
    }

    /// The refcounts first, then the L2 tables that depend on them.
    fn write_l2s(&mut self, pending: &mut Vec<(u64, Vec<u64>)>) -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        self.flush()?;
        for (off, t) in pending.drain(..) {
            self.write(off, &from_u64s(&t), "L2 table")?;
        }
        self.sync()
    }

    fn write_active_l1(&mut self) -> Result<(), String> {
        let bytes = from_u64s(&self.l1);
        self.write(self.header.l1_table_offset, &bytes, "L1 table")?;
        self.sync()
    }

    /// A snapshot's L1 table, checked: where it lies, its size, its entries.
    fn snapshot_l1(&self, sn: &Snapshot) -> Result<Vec<u64>, String> {
        let what = format!("snapshot '{}' (ID {})", sn.name, sn.id);
        let bytes = u64::from(sn.l1_size) * 8;
        if bytes > MAX_L1_BYTES {
            return Err(format!(
                "{what}: its L1 table of {} entries is larger than QEMU allows; the snapshot table is corrupt",
                sn.l1_size
            ));
        }
        if bytes == 0 {
            return Ok(Vec::new());
        }
        if sn.l1_table_offset == 0 || !sn.l1_table_offset.is_multiple_of(self.cluster()) {
            return Err(format!(
                "{what}: its L1 table offset {:#x} is not at a cluster boundary after the header; \
                 the snapshot table is corrupt",
                sn.l1_table_offset
            ));
        }
        let b = self.read(sn.l1_table_offset, bytes, "snapshot's L1 table").map_err(|e| format!("{what}: {e}"))?;
        header::check_entries("snapshot L1 table", &b, self.cluster(), self.len).map_err(|e| format!("{what}: {e}"))?;
        Ok(to_u64s(&b))
    }

    /// The next ID: one past the largest number among the IDs, as QEMU
    /// numbers them.
    fn next_id(&self) -> String {
        let max = self
            .snapshots
            .iter()
            .map(|s| {
                let digits: String = s.id.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u64>().unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        max.saturating_add(1).to_string()
    }

    // ---- the operations -----------------------------------------------------

    /// Takes a snapshot of the disk as it is, with the VM state that
    /// `vmstate` writes (none: a disk-only snapshot). Nothing references
    /// the new clusters until the snapshot table does; when `vmstate` or
    /// a check fails, they are given back and the image is as it was.
    pub fn create(&mut self, new: &NewSnapshot, vmstate: Option<&mut WriteVmState<'_>>) -> Result<Snapshot, String> {
        self.require_writable()?;
        if new.name.len() > MAX_NAME {
            return Err(format!("the snapshot name is longer than {MAX_NAME} bytes"));
        }
        if self.snapshots.len() >= MAX_SNAPSHOTS {
            return Err(format!("the image holds {MAX_SNAPSHOTS} snapshots, as many as QEMU allows"));
        }
        let id = self.next_id();
        let vm_index = self.vm_state_index() as usize;
        let disk_len = vm_index.min(self.l1.len());
        let mut inc = HashMap::new();
        self.count_refs(&self.l1[..disk_len], &mut inc)?;
        self.check_counts(&inc, &HashMap::new())?;
        self.begin();
        let staged = self.stage(vmstate, vm_index, disk_len);
        let (l1_offset, l1_len, vm_size) = match staged {
            Ok(v) => v,
            Err(e) => {
                self.rollback();
                return Err(e);
            }
        };
        // From here on QEMU's order: every cluster the active L1 table
        // references gets its reference from the snapshot (refcounts, then
        // the L2 tables and the active L1 table with QCOW_OFLAG_COPIED
        // cleared); then the new snapshot table; the header last.
        self.allocated.clear();
        let mut active = self.l1.clone();
        if self.update_refcounts(&mut active[..disk_len], 1)? {
            self.l1 = active;
            self.write_active_l1()?;
        }
        let sn = Snapshot {
            id: id.clone(),
            name: new.name.clone(),
            l1_table_offset: l1_offset,
            l1_size: l1_len as u32,
            date_sec: new.date_sec,
            date_nsec: new.date_nsec,
            vm_clock_nsec: new.vm_clock_nsec,
            vm_state_size: vm_size,
            disk_size: self.header.size,
            icount: new.icount,
            id_raw: id.into_bytes(),
            name_raw: new.name.clone().into_bytes(),
            extra_tail: Vec::new(),
        };
        let mut list = self.snapshots.clone();
        list.push(sn.clone());
        self.write_snapshot_table(list)?;
        Ok(sn)
    }

    /// Reverts the disk to snapshot `key` (ID or name): the active L1 table
    /// takes the snapshot's disk entries (not its VM state), the clusters
    /// they reference gain a reference first, and those of the old table
    /// lose theirs once it is overwritten.
    pub fn apply(&mut self, key: &str) -> Result<Snapshot, String> {
        self.require_writable()?;
        let (sn, mut new_l1) = self.plan_apply(key)?;
        self.update_refcounts(&mut new_l1, 1)?;
        let mut old = std::mem::replace(&mut self.l1, new_l1);
        self.write_active_l1()?;
        self.update_refcounts(&mut old, -1)?;
        let mut active = self.l1.clone();
        if self.update_refcounts(&mut active, 0)? {
            self.l1 = active;
            self.write_active_l1()?;
        }
        Ok(sn)
    }

    /// Checks that snapshot `key` can be applied, changing nothing: it
    /// exists, its disk is this size, and every table it and the active
    /// L1 table lead to is sound, with refcounts that allow the change.
    pub fn check_apply(&mut self, key: &str) -> Result<Snapshot, String> {
        self.plan_apply(key).map(|(sn, _)| sn)
    }

    /// The snapshot and the active L1 table it gives, checked.
    fn plan_apply(&mut self, key: &str) -> Result<(Snapshot, Vec<u64>), String> {
        let sn = self.find(key).cloned().ok_or_else(|| format!("there is no snapshot '{key}'"))?;
        if sn.disk_size != self.header.size {
            return Err(format!(
                "snapshot '{}' is of a disk of {} bytes, and the disk now has {}: ferrovm does not resize \
                 disks to load a snapshot",
                sn.name, sn.disk_size, self.header.size
            ));
        }
        let sn_l1 = self.snapshot_l1(&sn)?;
        let n = sn_l1.len().min(self.vm_state_index() as usize).min(self.l1.len());
        let mut new_l1 = vec![0u64; self.l1.len()];
        new_l1[..n].copy_from_slice(&sn_l1[..n]);
        let (mut inc, mut dec) = (HashMap::new(), HashMap::new());
        self.count_refs(&new_l1, &mut inc)?;
        self.count_refs(&self.l1, &mut dec)?;
        self.check_counts(&inc, &dec)?;
        Ok((sn, new_l1))
    }

    /// Deletes snapshot `key` (ID or name): out of the table first, then
    /// the references of its L1 table, then the table itself.
    pub fn delete(&mut self, key: &str) -> Result<Snapshot, String> {
        self.require_writable()?;
        let idx = self
            .snapshots
            .iter()
            .position(|s| s.id_raw == key.as_bytes())
            .or_else(|| self.snapshots.iter().position(|s| s.matches(key)))
            .ok_or_else(|| format!("there is no snapshot '{key}'"))?;
        let sn = self.snapshots[idx].clone();
        let mut sn_l1 = self.snapshot_l1(&sn)?;
        let mut dec = HashMap::new();
        self.count_refs(&sn_l1, &mut dec)?;
        let l1_clusters = self.l1_clusters(&sn);
        for c in l1_clusters.clone() {
            *dec.entry(c).or_default() += 1;
        }
        self.check_counts(&HashMap::new(), &dec)?;
        let mut list = self.snapshots.clone();
        list.remove(idx);
        self.write_snapshot_table(list)?;
        self.update_refcounts(&mut sn_l1, -1)?;
        for c in l1_clusters {
            self.add(c, -1)?;
        }
        self.flush()?;
        let mut active = self.l1.clone();
        if self.update_refcounts(&mut active, 0)? {
            self.l1 = active;
            self.write_active_l1()?;
        }
        Ok(sn)
    }

    /// Writes the VM state and the new snapshot's L1 table (the active
    /// table's disk entries, then the VM state's); returns where the table
    /// is, its entries and the VM state's size.
    fn stage(
        &mut self,
        vmstate: Option<&mut WriteVmState<'_>>,
        vm_index: usize,
        disk_len: usize,
    ) -> Result<(u64, usize, u64), String> {
        let (vm_l1, vm_size) = match vmstate {
            Some(f) => {
                let mut w = VmStateWriter::new(self);
                f(&mut w)?;
                w.finish()?
            }
            None => (Vec::new(), 0),
        };
        let len = if vm_l1.is_empty() { disk_len } else { vm_index + vm_l1.len() };
        if len as u64 * 8 > MAX_L1_BYTES {
            return Err(format!("the VM state of {vm_size} bytes needs a larger L1 table than QEMU allows"));
        }
        let mut l1 = vec![0u64; len];
        l1[..disk_len].copy_from_slice(&self.l1[..disk_len]);
        if !vm_l1.is_empty() {
            l1[vm_index..].copy_from_slice(&vm_l1);
        }
        if len == 0 {
            return Ok((0, 0, vm_size));
        }
        let c = self.alloc((len as u64 * 8).div_ceil(self.cluster()))?;
        let offset = c << self.cluster_bits;
        self.write(offset, &from_u64s(&l1), "snapshot's L1 table")?;
        Ok((offset, len, vm_size))
    }

    fn l1_clusters(&self, sn: &Snapshot) -> std::ops::Range<u64> {
        let bytes = u64::from(sn.l1_size) * 8;
        if bytes == 0 {
            return 0..0;
        }
        let first = sn.l1_table_offset >> self.cluster_bits;
        first..first + bytes.div_ceil(self.cluster())
    }

    /// The VM state of `sn`, its clusters found and checked.
    pub fn vmstate(&self, sn: &Snapshot) -> Result<VmState, String> {
        let what = format!("snapshot '{}'", sn.name);
        if sn.vm_state_size == 0 {
            return Err(format!("{what} is a disk-only snapshot: it holds no VM state"));
        }
        let l1 = self.snapshot_l1(sn)?;
        let cb = self.cluster_bits;
        let per_l2 = 1u64 << (cb - 3);
        let first = sn.disk_size.div_ceil(1 << (2 * cb - 3));
        let nclusters = sn.vm_state_size.div_ceil(self.cluster());
        let mut clusters = BTreeMap::new();
        let last_l1 = first + nclusters.div_ceil(per_l2);
        for i in first..last_l1 {
            let Some(&e) = l1.get(i as usize) else { break };
            let l2_off = e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            let l2 = self.read_l2(l2_off).map_err(|err| format!("{what}: VM state L1 entry {i}: {err}"))?;
            for (j, &entry) in l2.iter().enumerate() {
                let k = (i - first) * per_l2 + j as u64;
                if k >= nclusters {
                    break;
                }
                if entry & OFLAG_COMPRESSED != 0 {
                    return Err(format!("{what}: its VM state has a compressed cluster, which ferrovm never writes"));
                }
                let off = entry & OFFSET_MASK;
                if off != 0 {
                    self.check_cluster(off, "VM state cluster").map_err(|err| format!("{what}: {err}"))?;
                    clusters.insert(k, off);
                }
            }
        }
        let file = self.file.try_clone().map_err(|e| format!("cannot open the image again: {e}"))?;
        Ok(VmState { file, cluster_bits: cb, size: sn.vm_state_size, clusters })
    }
}

/// Writes a snapshot's VM state into new clusters, in order of offset.
pub struct VmStateWriter<'a> {
    q: &'a mut Qcow2Meta,
    /// The cluster being filled (its index in the VM state) and its bytes.
    cur: Option<u64>,
    buf: Vec<u8>,
    /// VM state cluster index to host offset.
    map: BTreeMap<u64, u64>,
    size: u64,
}

impl<'a> VmStateWriter<'a> {
    fn new(q: &'a mut Qcow2Meta) -> Self {
        let n = q.cluster() as usize;
        Self { q, cur: None, buf: vec![0; n], map: BTreeMap::new(), size: 0 }
    }

    /// The cluster size: runs of zeros this long and aligned are not stored.
    pub fn cluster_size(&self) -> u64 {
        self.q.cluster()
    }

    /// Writes `data` at `offset` of the VM state. Offsets must not go
    /// back past the cluster being written; gaps read as zeros.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let cb = self.q.cluster_bits;
        let mask = self.q.cluster() - 1;
        let (mut pos, mut data) = (offset, data);
        while !data.is_empty() {
            let k = pos >> cb;
            match self.cur {
                Some(c) if c == k => {}
                Some(c) if c > k => return Err("the VM state was written out of order".into()),
                _ => {
                    self.flush_cluster()?;
                    self.cur = Some(k);
                    self.buf.fill(0);
                }
            }
            let within = (pos & mask) as usize;
            let n = data.len().min(self.buf.len() - within);
            self.buf[within..within + n].copy_from_slice(&data[..n]);
            pos += n as u64;
            data = &data[n..];
        }
        self.size = self.size.max(pos);
        Ok(())
    }

    /// Makes the VM state at least `size` bytes (its tail reads as zeros).
    pub fn set_size(&mut self, size: u64) {
        self.size = self.size.max(size);
    }

    fn flush_cluster(&mut self) -> Result<(), String> {
        let Some(k) = self.cur.take() else { return Ok(()) };
        if self.buf.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let c = self.q.alloc(1)?;
        let off = c << self.q.cluster_bits;
        let buf = std::mem::take(&mut self.buf);
        let r = self.q.write(off, &buf, "VM state");
        self.buf = buf;
        r?;
        self.map.insert(k, off);
        Ok(())
    }

    /// The L1 entries of the VM state (from the first past the disk) and
    /// its size, its L2 tables written.
    fn finish(mut self) -> Result<(Vec<u64>, u64), String> {
        self.flush_cluster()?;
        let per_l2 = self.q.cluster() / 8;
        let n = self.size.div_ceil(self.q.cluster()).div_ceil(per_l2);
        let mut l1 = vec![0u64; n as usize];
        for (i, slot) in l1.iter_mut().enumerate() {
            let lo = i as u64 * per_l2;
            let mut t = vec![0u64; per_l2 as usize];
            let mut any = false;
            for (&k, &off) in self.map.range(lo..lo + per_l2) {
                t[(k - lo) as usize] = off | OFLAG_COPIED;
                any = true;
            }
            if any {
                let c = self.q.alloc(1)?;
                let off = c << self.q.cluster_bits;
                self.q.write(off, &from_u64s(&t), "VM state L2 table")?;
                *slot = off | OFLAG_COPIED;
            }
        }
        Ok((l1, self.size))
    }
}

/// A snapshot's VM state, to read.
pub struct VmState {
    file: File,
    cluster_bits: u32,
    size: u64,
    /// VM state cluster index to host offset; the others read as zeros.
    clusters: BTreeMap<u64, u64>,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState").field("size", &self.size).field("clusters", &self.clusters.len()).finish()
    }
}

impl VmState {
    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads `buf.len()` bytes at `offset`, which must lie inside it.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} bytes at {offset:#x} lie past the VM state's {} bytes", buf.len(), self.size),
            ));
        }
        let mask = (1u64 << self.cluster_bits) - 1;
        let (mut pos, mut done) = (offset, 0);
        while done < buf.len() {
            let within = pos & mask;
            let n = (buf.len() - done).min((mask + 1 - within) as usize);
            let out = &mut buf[done..done + n];
            match self.clusters.get(&(pos >> self.cluster_bits)) {
                Some(&host) => self.file.read_exact_at(out, host + within)?,
                None => out.fill(0),
            }
            pos += n as u64;
            done += n;
        }
        Ok(())
    }

    /// The clusters that hold data: (offset in the VM state, bytes), in
    /// order, clipped to its size. The rest reads as zeros.
    pub fn allocated(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let cluster = 1u64 << self.cluster_bits;
        self.clusters.keys().map(move |&k| {
            let start = k * cluster;
            (start, cluster.min(self.size - start))
        })
    }
}
