//! A check of a qcow2 file's header, L1 table and refcount table before
//! the format library uses them.
//!
//! Reference: QEMU's docs/interop/qcow2.txt.
//!
//! ```text
//! header (big-endian)
//!   0 u32 magic "QFI\xfb"          36 u32 l1_size                 72 u64 incompatible_features (v3)
//!   4 u32 version (2 or 3)         40 u64 l1_table_offset         80 u64 compatible_features
//!   8 u64 backing_file_offset      48 u64 refcount_table_offset   88 u64 autoclear_features
//!  16 u32 backing_file_size        56 u32 refcount_table_clusters 96 u32 refcount_order
//!  20 u32 cluster_bits             60 u32 nb_snapshots           100 u32 header_length
//!  24 u64 size                     64 u64 snapshots_offset       104 u8  compression_type
//!  32 u32 crypt_method
//! L1 / refcount table entry: u64, host offset in bits 9-55 (cluster aligned)
//! ```
//!
//! Everything is untrusted: each table must lie inside the file, be
//! cluster aligned and of a size QEMU would accept; each L1 entry and
//! refcount table entry must point inside the file; the refcount table
//! must cover the header's cluster. The checks run on a byte slice
//! ([`check_bytes`]) so they can be fuzzed without files.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// "QFI\xfb".
pub const QCOW2_MAGIC: u32 = 0x5146_49fb;
/// Version 3 headers are at least this long.
const V3_HEADER_LEN: u32 = 104;
/// QEMU's largest L1 table (QCOW_MAX_L1_SIZE) and refcount table
/// (QCOW_MAX_REFTABLE_SIZE), in bytes.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Host offsets in table entries: bits 9-55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The longest backing file name QEMU writes.
const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bits (v3).
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// The fields the checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from(be32(b, at)) << 32 | u64::from(be32(b, at + 4))
}

/// Whether `file` starts with the qcow2 magic.
pub fn is_qcow2(file: &File) -> bool {
    let mut m = [0u8; 4];
    file.read_exact_at(&mut m, 0).is_ok() && u32::from_be_bytes(m) == QCOW2_MAGIC
}

/// Parses and checks the header in `b` (its first bytes) for a file of
/// `file_len` bytes.
pub fn parse(b: &[u8], file_len: u64) -> Result<Header, String> {
    if b.len() < 72 {
        return Err("the file is shorter than a qcow2 header".into());
    }
    if be32(b, 0) != QCOW2_MAGIC {
        return Err("no qcow2 magic".into());
    }
    let version = be32(b, 4);
    if version != 2 && version != 3 {
        return Err(format!("version {version} (2 and 3 are supported)"));
    }
    let v3 = version == 3;
    if v3 && b.len() < V3_HEADER_LEN as usize {
        return Err("the file is shorter than a version 3 header".into());
    }
    let h = Header {
        version,
        backing_file_offset: be64(b, 8),
        backing_file_size: be32(b, 16),
        cluster_bits: be32(b, 20),
        size: be64(b, 24),
        crypt_method: be32(b, 32),
        l1_size: be32(b, 36),
        l1_table_offset: be64(b, 40),
        refcount_table_offset: be64(b, 48),
        refcount_table_clusters: be32(b, 56),
        nb_snapshots: be32(b, 60),
        snapshots_offset: be64(b, 64),
        incompatible_features: if v3 { be64(b, 72) } else { 0 },
        refcount_order: if v3 { be32(b, 96) } else { 4 },
        header_length: if v3 { be32(b, 100) } else { 72 },
        compression_type: if v3 && be32(b, 100) > 104 { b.get(104).copied().unwrap_or(0) } else { 0 },
    };
    if !(9..=21).contains(&h.cluster_bits) {
        return Err(format!("cluster_bits {} (9 to 21 are valid)", h.cluster_bits));
    }
    let cluster = 1u64 << h.cluster_bits;
    if h.crypt_method != 0 {
        return Err("encrypted images are not supported".into());
    }
    if v3 {
        if h.header_length < V3_HEADER_LEN || !h.header_length.is_multiple_of(8) || u64::from(h.header_length) > cluster
        {
            return Err(format!("header_length {}", h.header_length));
        }
        if h.refcount_order > 6 {
            return Err(format!("refcount_order {} (at most 6: 64-bit refcounts)", h.refcount_order));
        }
        let f = h.incompatible_features;
        if f & INCOMPAT_CORRUPT != 0 {
            return Err("the image is marked corrupt; repair it with `qemu-img check -r all`".into());
        }
        if f & INCOMPAT_DATA_FILE != 0 {
            return Err("images with an external data file are not supported".into());
        }
        if f & INCOMPAT_EXTL2 != 0 {
            return Err("images with extended L2 entries (subclusters) are not supported".into());
        }
        if f & INCOMPAT_COMPRESSION != 0 && h.compression_type != 0 {
            return Err(format!("compression type {} (only zlib is supported)", h.compression_type));
        }
        let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
        if f & !known != 0 {
            return Err(format!("unknown incompatible features {:#x}", f & !known));
        }
    }
    if h.backing_file_offset != 0 {
        let end = h.backing_file_offset.checked_add(u64::from(h.backing_file_size));
        if h.backing_file_size == 0 || h.backing_file_size > MAX_BACKING_NAME || end.is_none_or(|e| e > cluster) {
            return Err(format!(
                "backing file name at {:#x} ({} bytes) is not inside the first cluster",
                h.backing_file_offset, h.backing_file_size
            ));
        }
    }
    // The L1 table must map the whole disk.
    let l2_entries = cluster / 8;
    let per_l1 = cluster * l2_entries;
    let needed = h.size.div_ceil(per_l1);
    if u64::from(h.l1_size) < needed {
        return Err(format!("l1_size {} cannot map a disk of {} bytes", h.l1_size, h.size));
    }
    let table = |what: &str, offset: u64, bytes: u64, max: u64| -> Result<(), String> {
        if bytes == 0 {
            return Ok(());
        }
        if bytes > max {
            return Err(format!("the {what} ({bytes} bytes) is larger than {max}"));
        }
        if !offset.is_multiple_of(cluster) || offset == 0 {
            return Err(format!("the {what} at {offset:#x} is not at a cluster boundary after the header"));
        }
        if offset.checked_add(bytes).is_none_or(|end| end > file_len) {
            return Err(format!("the {what} at {offset:#x} ({bytes} bytes) lies past the end of the file"));
        }
        Ok(())
    };
    table("L1 table", h.l1_table_offset, u64::from(h.l1_size) * 8, MAX_L1_BYTES)?;
    if h.refcount_table_clusters == 0 {
        return Err("the refcount table is empty".into());
    }
    table(
        "refcount table",
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) << h.cluster_bits,
        MAX_REFTABLE_BYTES.max(cluster),
    )?;
    if h.nb_snapshots != 0 && (!h.snapshots_offset.is_multiple_of(cluster) || h.snapshots_offset >= file_len) {
        return Err(format!("the snapshot table at {:#x} lies outside the file", h.snapshots_offset));
    }
    Ok(h)
}

/// Checks the entries of a table of big-endian u64 host offsets: each is 0
/// or a cluster-aligned offset inside the file.
pub(crate) fn check_entries(what: &str, table: &[u8], cluster: u64, file_len: u64) -> Result<(), String> {
    for (i, e) in table.chunks_exact(8).enumerate() {
        let off = be64(e, 0) & OFFSET_MASK;
        if off != 0 && (!off.is_multiple_of(cluster) || off.checked_add(cluster).is_none_or(|end| end > file_len)) {
            return Err(format!("{what} entry {i} points at {off:#x}, outside the file or not at a cluster boundary"));
        }
    }
    Ok(())
}

/// Checks a whole image given as bytes: the header, then the L1 and
/// refcount tables. `read(offset, buf)` reads from the file.
pub fn check_with(
    file_len: u64,
    read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<Header, String> {
    let mut head = vec![0u8; 512.min(file_len as usize)];
    read(0, &mut head).map_err(|e| format!("cannot read the header: {e}"))?;
    let h = parse(&head, file_len)?;
    let cluster = 1u64 << h.cluster_bits;
    let mut rt = vec![0u8; (u64::from(h.refcount_table_clusters) << h.cluster_bits) as usize];
    read(h.refcount_table_offset, &mut rt).map_err(|e| format!("cannot read the refcount table: {e}"))?;
    check_entries("refcount table", &rt, cluster, file_len)?;
    if be64(&rt, 0) & OFFSET_MASK == 0 {
        return Err("the refcount table does not cover the header's cluster".into());
    }
    let mut l1 = vec![0u8; h.l1_size as usize * 8];
    if !l1.is_empty() {
        read(h.l1_table_offset, &mut l1).map_err(|e| format!("cannot read the L1 table: {e}"))?;
        check_entries("L1 table", &l1, cluster, file_len)?;
    }
    Ok(h)
}

/// [`check_with`] on an image held in memory (tests and fuzzing).
pub fn check_bytes(image: &[u8]) -> Result<Header, String> {
    check_with(image.len() as u64, &mut |off, buf| {
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| image.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    })
}

/// [`check_with`] on a file.
pub fn check_file(file: &File) -> Result<(), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    check_with(len, &mut |off, buf| file.read_exact_at(buf, off)).map(|_| ())
}

/// Refuses to write to an image whose refcounts may be stale.
pub fn check_writable(file: &File) -> Result<(), String> {
    let mut b = [0u8; 80];
    file.read_exact_at(&mut b, 0).map_err(|e| e.to_string())?;
    if be32(&b, 4) == 3 && be64(&b, 72) & INCOMPAT_DIRTY != 0 {
        return Err("the image is marked dirty (lazy refcounts were not written back); \
                    repair it with `qemu-img check -r all` before writing to it"
            .into());
    }
    Ok(())
}
