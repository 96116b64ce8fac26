//! The persistent translation cache (`--jit-cache DIR`): compiled regions
//! kept on disk between runs, so that a second boot of the same image finds
//! its hot code compiled.
//!
//! A region's code is a function of its [`RegionSpec`] alone once its
//! addresses are relocations ([`crate::reloc`]): the guest instructions,
//! the code size and the configuration, on a given host ISA and build of
//! ferrovm. An entry is found by the SHA-256 of a description of exactly
//! that (`describe`, after the build's and host's identity) and holds the description itself, the code with
//! its address slots cleared, the relocations and the number of fallback
//! entries, under a SHA-256 of the whole file. A lookup reads the file
//! and takes it only when every check passes: the checksum, the whole
//! description compared byte for byte with the region asked for (so a
//! hash collision or an entry of another build or CPU model is a miss,
//! never someone else's code), the relocations inside the code, and the
//! fallback table the region plans now being as long as the one the code
//! was compiled for. Anything else (a truncated or corrupt file, a file of
//! an older format) is counted as rejected, logged, and the region is
//! compiled afresh and written over it.
//!
//! ```text
//! DIR/ab/cdef...(62 hex digits).region
//!   8   magic "FVMJIT01"
//!   4+n description (the identity as 4+n, then describe)
//!   4+n code, address slots zero
//!   4   relocations, then per relocation: u32 offset, u32 import, i64 addend
//!   4   fallback entries
//!   32  SHA-256 of everything above
//! ```
//! Numbers are little-endian; each `4+n` is a u32 length and the bytes.
//! Files are written to a temporary name and renamed into place, so a
//! reader never sees half a file, and several processes may share a folder.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cranelift_codegen::isa::OwnedTargetIsa;
use sha2::{Digest, Sha256};

use crate::compiler::{Output, Settings};
use crate::reloc::{link, Import, Reloc};
use crate::translate::{self, RegionSpec};

const MAGIC: &[u8; 8] = b"FVMJIT01";

/// Files larger than this are not read (a region's code is tens of KiB).
const MAX_FILE: u64 = 16 << 20;

/// What the cache did, for `--stats`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStats {
    /// Regions taken from the folder instead of compiled.
    pub loaded: u64,
    /// Regions written to it.
    pub stored: u64,
    /// Regions it did not hold.
    pub missed: u64,
    /// Files found and refused (corrupt, truncated, of another format).
    pub rejected: u64,
    /// Writes that failed.
    pub write_errors: u64,
}

/// A folder of compiled regions.
pub struct DiskCache {
    dir: PathBuf,
    /// This build and host ISA, the start of every description.
    identity: Vec<u8>,
    loaded: AtomicU64,
    stored: AtomicU64,
    missed: AtomicU64,
    rejected: AtomicU64,
    write_errors: AtomicU64,
    /// Numbers the temporary files of writes, which the compiler threads
    /// of several vCPUs make at once.
    next_tmp: AtomicU64,
}

/// Where a region is kept: its description and its file
/// ([`DiskCache::slot`]), found once for a lookup and the write after it.
pub struct Slot {
    key: Vec<u8>,
    path: PathBuf,
}

impl DiskCache {
    /// The cache in `dir` (created when missing) for code compiled with
    /// `settings` for `isa` by this build of ferrovm.
    pub fn open(dir: &Path, settings: &Settings, isa: &OwnedTargetIsa) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the JIT cache folder {}: {e}", dir.display()))?;
        let mut identity = Vec::new();
        identity.extend_from_slice(b"ferrovm ");
        identity.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        // The build itself: a rebuilt binary may translate the same
        // instructions differently, so its entries are not this one's.
        identity.extend_from_slice(&build_id().to_le_bytes());
        identity.extend_from_slice(format!("|{}|{}|{}", isa.triple(), isa.flags(), settings.opt_level).as_bytes());
        identity.extend_from_slice(format!("|{}", settings.regalloc).as_bytes());
        for v in isa.isa_flags() {
            identity.extend_from_slice(format!("|{v}").as_bytes());
        }
        Ok(Arc::new(DiskCache {
            dir: dir.to_path_buf(),
            identity,
            loaded: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            next_tmp: AtomicU64::new(0),
        }))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> DiskStats {
        DiskStats {
            loaded: self.loaded.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }

    /// The description of `spec` and the file it is kept in; `None` when
    /// the region cannot be described (an instruction the encoder of its
    /// description refuses), which is then neither read nor written.
    pub fn slot(&self, spec: &RegionSpec) -> Option<Slot> {
        Some(self.slot_of(&describe(spec)?))
    }

    /// The slot of the region whose `describe` is `description`.
    pub fn slot_of(&self, description: &[u8]) -> Slot {
        let mut key = Vec::with_capacity(self.identity.len() + 4 + description.len());
        put_bytes(&mut key, &self.identity);
        key.extend_from_slice(description);
        let hex: String = Sha256::digest(&key).iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join(&hex[..2]).join(format!("{}.region", &hex[2..]));
        Slot { key, path }
    }

    /// The region `spec` from its slot in the folder, linked for this
    /// process.
    pub fn load(&self, slot: &Slot, spec: &RegionSpec) -> Option<Output> {
        let Ok(f) = std::fs::File::open(&slot.path) else {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut bytes = Vec::new();
        let read = f.take(MAX_FILE + 1).read_to_end(&mut bytes);
        let whole = match read {
            Ok(n) if n as u64 <= MAX_FILE => Ok(bytes),
            Ok(_) => Err("larger than any region".to_string()),
            Err(e) => Err(format!("unreadable: {e}")),
        };
        match whole.and_then(|b| parse(&b, &slot.key, spec)) {
            Ok(out) => {
                self.loaded.fetch_add(1, Ordering::Relaxed);
                Some(out)
            }
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "jit", "JIT cache entry {} refused: {why}", slot.path.display());
                None
            }
        }
    }

    /// Keep `out`, just compiled for the region of `slot`.
    pub fn store(&self, slot: &Slot, out: &Output) {
        let data = serialize(&slot.key, out);
        let result = (|| -> std::io::Result<()> {
            let parent = slot.path.parent().unwrap_or(&self.dir);
            std::fs::create_dir_all(parent)?;
            let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
            let tmp = parent.join(format!(".{}.{n}.tmp", std::process::id()));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            drop(f);
            std::fs::rename(&tmp, &slot.path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })();
        match result {
            Ok(()) => {
                self.stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if self.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(target: "jit", "cannot write to the JIT cache {}: {e}", self.dir.display());
                }
            }
        }
    }
}

/// An identity of the running executable: its size and modification time,
/// which change with every build.
fn build_id() -> u64 {
    let meta = std::env::current_exe().and_then(std::fs::metadata);
    let (len, mtime) = match meta {
        Ok(m) => (
            m.len(),
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64),
        ),
        Err(_) => (0, 0),
    };
    len.rotate_left(32) ^ mtime
}

/// What `spec`'s code is made from, for one build on one host: the
/// configuration, and each block's RIP and instructions in every bit
/// (iced's own binary form of an instruction holds all its fields). The
/// memory helpers' entries are left out: they are relocations.
/// Position-independent code is described relative to its page
/// ([`relative`]), so that the same instructions mapped elsewhere are the
/// same region. `None` when an instruction cannot be encoded. A file's
/// key is this after the cache's identity (the build and the host ISA).
pub(crate) fn describe(spec: &RegionSpec) -> Option<Vec<u8>> {
    let rel = spec.relative_base();
    let (pi, base) = (rel.is_some(), rel.unwrap_or(0));
    let mut k = Vec::with_capacity(64 * spec.blocks.len() + 16);
    k.extend_from_slice(&spec.bits.to_le_bytes());
    k.extend_from_slice(&[
        u8::from(spec.chain),
        u8::from(spec.shared_memory),
        u8::from(spec.avx),
        u8::from(spec.crypto),
        u8::from(pi),
    ]);
    k.extend_from_slice(&(spec.blocks.len() as u32).to_le_bytes());
    for b in &spec.blocks {
        k.extend_from_slice(&b.rip.wrapping_sub(base).to_le_bytes());
        k.extend_from_slice(&(b.insns.len() as u32).to_le_bytes());
        for d in &b.insns {
            let (insn, canonical) = if pi { relative(&d.insn, base) } else { (d.insn, true) };
            let one = postcard::to_allocvec(&insn).ok()?;
            put_bytes(&mut k, &one);
            k.push(u8::from(canonical));
        }
    }
    Some(k)
}

/// `insn` with its addresses made relative to `base`: its RIP, a near
/// branch's target and a RIP-relative operand's address. Also whether the
/// absolute target is canonical, which decides how a branch translates.
fn relative(insn: &iced_x86::Instruction, base: u64) -> (iced_x86::Instruction, bool) {
    use iced_x86::OpKind;
    let mut i = *insn;
    i.set_next_ip(insn.next_ip().wrapping_sub(base));
    let mut canonical = true;
    for op in 0..insn.op_count() {
        if insn.op_kind(op) == OpKind::NearBranch64 {
            let t = insn.near_branch64();
            canonical = ((t as i64) << 16 >> 16) as u64 == t;
            i.set_near_branch64(t.wrapping_sub(base));
        }
    }
    if insn.is_ip_rel_memory_operand() {
        i.set_memory_displacement64(insn.memory_displacement64().wrapping_sub(base));
    }
    (i, canonical)
}

/// Whether `a` at page `pa` and `b` at page `pb` are the same instruction
/// relative to their pages ([`relative`]), their branch targets alike
/// canonical or not: the same code for a position-independent region.
pub(crate) fn same_relative(a: &iced_x86::Instruction, pa: u64, b: &iced_x86::Instruction, pb: u64) -> bool {
    let ((x, cx), (y, cy)) = (relative(a, pa), relative(b, pb));
    cx == cy && x.eq_all_bits(&y)
}

/// A hash of a block's instructions relative to `page` (their offsets in
/// it included), the same for the same code at any page. Equal hashes are
/// candidates only: [`same_relative`] decides.
pub(crate) fn block_hash(insns: &[cpu::Decoded], page: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = cpu::FxHasher::default();
    for d in insns {
        let (i, canonical) = relative(&d.insn, page);
        (
            i.ip(),
            i.code() as u32,
            i.len(),
            i.immediate64(),
            i.memory_displacement64(),
            i.near_branch_target(),
            canonical,
        )
            .hash(&mut h);
    }
    h.finish()
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The file of `out` (compiled from the region described by `key`).
fn serialize(key: &[u8], out: &Output) -> Vec<u8> {
    let mut code = out.code.clone();
    for r in &out.relocs {
        if let Some(slot) = code.get_mut(r.offset as usize..r.offset as usize + 8) {
            slot.fill(0);
        }
    }
    let mut f = Vec::with_capacity(key.len() + code.len() + 16 * out.relocs.len() + 64);
    f.extend_from_slice(MAGIC);
    put_bytes(&mut f, key);
    put_bytes(&mut f, &code);
    f.extend_from_slice(&(out.relocs.len() as u32).to_le_bytes());
    for r in &out.relocs {
        f.extend_from_slice(&r.offset.to_le_bytes());
        f.extend_from_slice(&r.import.code().to_le_bytes());
        f.extend_from_slice(&r.addend.to_le_bytes());
    }
    f.extend_from_slice(&(out.fallbacks.len() as u32).to_le_bytes());
    let sum = Sha256::digest(&f);
    f.extend_from_slice(&sum);
    f
}

/// A reader of a file's fields that fails, never panics, past its end.
struct Fields<'a> {
    b: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.b.len() {
            return Err("truncated".into());
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "truncated")?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The region in the file `data`, if it is whole and is the region `key`
/// describes, linked for this process.
fn parse(data: &[u8], key: &[u8], spec: &RegionSpec) -> Result<Output, String> {
    if data.len() < MAGIC.len() + 32 || &data[..MAGIC.len()] != MAGIC {
        return Err("not an entry of this format".into());
    }
    let (body, sum) = data.split_at(data.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch".into());
    }
    let mut f = Fields { b: &body[MAGIC.len()..] };
    if f.bytes()? != key {
        return Err("another region, build or CPU".into());
    }
    let code = f.bytes()?.to_vec();
    let n = f.u32()? as usize;
    if n > code.len() {
        return Err("more relocations than code".into());
    }
    let mut relocs = Vec::with_capacity(n);
    for _ in 0..n {
        let offset = f.u32()?;
        let import = Import::from_code(f.u32()?).ok_or("an unknown import")?;
        let addend = f.i64()?;
        relocs.push(Reloc { offset, import, addend });
    }
    let want = f.u32()? as usize;
    if !f.b.is_empty() {
        return Err("trailing bytes".into());
    }
    relink(code, relocs, want, spec)
}

/// Code compiled for a region that `spec` describes alike (the same
/// [`describe`]), with `fallbacks` entries, made `spec`'s: linked to a
/// fallback table of `spec`'s own instructions and to its page.
pub(crate) fn relink(
    mut code: Vec<u8>,
    relocs: Vec<Reloc>,
    fallbacks: usize,
    spec: &RegionSpec,
) -> Result<Output, String> {
    let t = translate::fallbacks(spec);
    if t.fallbacks.len() != fallbacks {
        return Err(format!("{fallbacks} fallback entries kept, {} planned", t.fallbacks.len()));
    }
    let fallbacks = Arc::new(t.fallbacks);
    link(&mut code, &relocs, &spec.access, &fallbacks, spec.guest_base())?;
    Ok(Output { code, relocs, fallbacks, stats: t.stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::{compile, host_isa};
    use crate::translate::{AccessCalls, GuestBlock};
    use cpu::Decoded;
    use iced_x86::{Decoder, DecoderOptions};

    /// A region of `code` at 0x1000 in 64-bit mode (one block).
    fn spec_of(code: &[u8]) -> RegionSpec {
        let mut d = Decoder::with_ip(64, code, 0x1000, DecoderOptions::NONE);
        let insns: Vec<Decoded> = std::iter::from_fn(|| d.can_decode().then(|| Decoded::new(d.decode()))).collect();
        RegionSpec {
            bits: 64,
            blocks: vec![GuestBlock { rip: 0x1000, insns }],
            chain: false,
            access: AccessCalls { load: 0x1111, load_rmw: 0x2222, store: 0x3333 },
            shared_memory: false,
            avx: false,
            crypto: false,
            position_independent: false,
        }
    }

    /// `code` decoded at `ip` in 64-bit mode, a block ending at each
    /// control transfer.
    fn spec_at(code: &[u8], ip: u64, position_independent: bool) -> RegionSpec {
        let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
        let mut blocks: Vec<GuestBlock> = Vec::new();
        let mut cur: Vec<Decoded> = Vec::new();
        while d.can_decode() {
            let insn = d.decode();
            cur.push(Decoded::new(insn));
            if insn.flow_control() != iced_x86::FlowControl::Next {
                let rip = cur[0].insn.ip();
                blocks.push(GuestBlock { rip, insns: std::mem::take(&mut cur) });
            }
        }
        RegionSpec { blocks, position_independent, ..spec_of(&[0x90]) }
    }

    /// A region touching every kind of guest address: RIP-relative loads,
    /// stores and LEA, a fallback (CPUID), a store through the memory
    /// helpers, a branch inside the region, a call and a jump out of it,
    /// and a return.
    const PLACED: &[u8] = &[
        0x48,
        0x8b,
        0x05,
        0x78,
        0x00,
        0x00,
        0x00, // mov rax, [rip+0x78]
        0x48,
        0x89,
        0x05,
        0x10,
        0x00,
        0x00,
        0x00, // mov [rip+0x10], rax
        0x48,
        0x8d,
        0x0d,
        0x00,
        0x01,
        0x00,
        0x00, // lea rcx, [rip+0x100]
        0x0f,
        0xa2, // cpuid
        0x48,
        0x89,
        0x03, // mov [rbx], rax
        0x85,
        0xc0, // test eax, eax
        0x74,
        0x07, // je +7 (the ret)
        0xe8,
        0x00,
        0x10,
        0x00,
        0x00, // call +0x1000
        0xeb,
        0xfe - 0x20, // jmp back out of the region's first block
        0xc3,        // ret
    ];

    /// The code with the slots of the relocations `which` picks zeroed.
    fn zeroed(out: &Output, which: impl Fn(&Reloc) -> bool) -> Vec<u8> {
        let mut c = out.code.clone();
        for r in out.relocs.iter().filter(|r| which(r)) {
            c[r.offset as usize..r.offset as usize + 8].fill(0);
        }
        c
    }

    /// The code with every relocation slot zeroed.
    fn unlinked(out: &Output) -> Vec<u8> {
        zeroed(out, |_| true)
    }

    #[test]
    fn position_independent_code_is_the_same_entry_at_another_page() {
        let s = Settings::default();
        let isa = host_isa(&s).unwrap();
        let (a, b) = (0xffff_ffff_8100_0000u64, 0xffff_ffff_9a47_3000u64);
        let (sa, sb) = (spec_at(PLACED, a + 0x120, true), spec_at(PLACED, b + 0x120, true));
        let (oa, ob) = (compile(&isa, 1, &sa).unwrap(), compile(&isa, 1, &sb).unwrap());
        // Every guest address is a relocation: the bytes are the same.
        assert!(oa.relocs.iter().any(|r| r.import == Import::GuestBase));
        assert_eq!(oa.relocs, ob.relocs);
        assert_eq!(unlinked(&oa), unlinked(&ob));
        for r in oa.relocs.iter().filter(|r| r.import == Import::GuestBase) {
            let at = r.offset as usize;
            let word = |o: &Output| u64::from_le_bytes(o.code[at..at + 8].try_into().unwrap());
            assert_eq!(word(&oa).wrapping_sub(a), word(&ob).wrapping_sub(b), "linked at each page");
        }
        // Without it the addresses are constants, and the bytes differ:
        // the comparison above can see one.
        let (ca, cb) = (spec_at(PLACED, a + 0x120, false), spec_at(PLACED, b + 0x120, false));
        let (pa, pb) = (compile(&isa, 1, &ca).unwrap(), compile(&isa, 1, &cb).unwrap());
        assert_ne!(unlinked(&pa), unlinked(&pb));
        // One entry serves both pages, linked for the page it is taken at.
        let dir = temp_dir("placed");
        let cache = DiskCache::open(&dir, &s, &isa).unwrap();
        assert_eq!(cache.slot(&sa).unwrap().key, cache.slot(&sb).unwrap().key);
        assert_ne!(cache.slot(&ca).unwrap().key, cache.slot(&cb).unwrap().key);
        store(&cache, &sa, &oa);
        let back = load(&cache, &sb).expect("the entry of the other page");
        assert_eq!(unlinked(&back), unlinked(&ob));
        let guest_slots = |o: &Output| -> Vec<u64> {
            o.relocs
                .iter()
                .filter(|r| r.import == Import::GuestBase)
                .map(|r| u64::from_le_bytes(o.code[r.offset as usize..r.offset as usize + 8].try_into().unwrap()))
                .collect()
        };
        assert_eq!(guest_slots(&back), guest_slots(&ob));
        assert!(load(&cache, &ca).is_none(), "position-dependent code is another entry");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_same_instructions_at_another_page_take_the_code_compiled_first() {
        let s = Settings::default();
        let isa = host_isa(&s).unwrap();
        let shared = crate::shared::Shared::new(&s).unwrap();
        let mut ws = crate::compiler::Workspace::default();
        let (a, b) = (0x7f12_3456_7000u64, 0x5599_0000_1000u64);
        let spec = |ip, pi| Arc::new(spec_at(PLACED, ip + 0x120, pi));
        let (first, copied) = shared.compile(&mut ws, &isa, 1, spec(a, true));
        assert!(!copied && first.is_ok());
        let (again, copied) = shared.compile(&mut ws, &isa, 2, spec(b, true));
        let again = again.unwrap();
        assert!(copied, "taken from the code compiled at the first page");
        assert_eq!(shared.content_hits(), 1);
        // What compiling at the second page gives, but for the fallback
        // table, which is the region's own.
        let fresh = compile(&isa, 3, &spec(b, true)).unwrap();
        let not_fallbacks = |r: &Reloc| r.import != Import::Fallbacks;
        assert_eq!(zeroed(&again, |r| !not_fallbacks(r)), zeroed(&fresh, |r| !not_fallbacks(r)));
        let ips = |o: &Output| o.fallbacks.iter().map(|d| d.insn.ip()).collect::<Vec<_>>();
        assert_eq!(ips(&again), ips(&fresh), "the fallback table of the second page's instructions");
        assert!(ips(&again).contains(&(b + 0x120 + 21)), "the CPUID at the second page");
        // Position-dependent code, or other instructions, are compiled.
        assert!(!shared.compile(&mut ws, &isa, 4, spec(b + 0x3000, false)).1);
        let mut other = spec_at(PLACED, b + 0x5120, true);
        other.blocks[0].insns.pop();
        assert!(!shared.compile(&mut ws, &isa, 5, Arc::new(other)).1);
        assert_eq!(shared.content_hits(), 1);
    }

    /// `spec` from `cache`, through its slot.
    fn load(cache: &DiskCache, spec: &RegionSpec) -> Option<Output> {
        cache.load(&cache.slot(spec)?, spec)
    }

    /// Keep `out` for `spec` in `cache`.
    fn store(cache: &DiskCache, spec: &RegionSpec, out: &Output) {
        cache.store(&cache.slot(spec).unwrap(), out);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrovm-jitcache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// add rax, [rbx]; cpuid (a fallback); mov [rcx], rax; ret
    const CODE: &[u8] = &[0x48, 0x03, 0x03, 0x0f, 0xa2, 0x48, 0x89, 0x01, 0xc3];

    #[test]
    fn a_kept_region_comes_back_linked_as_compiled() {
        let s = Settings::default();
        let isa = host_isa(&s).unwrap();
        let dir = temp_dir("back");
        let cache = DiskCache::open(&dir, &s, &isa).unwrap();
        let spec = spec_of(CODE);
        let out = compile(&isa, 1, &spec).unwrap();
        assert!(!out.relocs.is_empty(), "the code calls helpers");
        assert!(load(&cache, &spec).is_none());
        store(&cache, &spec, &out);
        let back = load(&cache, &spec).expect("kept");
        assert_eq!(back.relocs, out.relocs);
        assert_eq!(back.fallbacks.len(), out.fallbacks.len());
        // Linked for its own fallback table: the same code but for those
        // addresses.
        let table = |r: &Reloc| r.import == Import::Fallbacks;
        assert_eq!(zeroed(&out, table), zeroed(&back, table));
        let st = cache.stats();
        assert_eq!((st.loaded, st.stored, st.missed, st.rejected), (1, 1, 1, 0));
        // Another region (one instruction differs) is not that entry.
        let mut other = CODE.to_vec();
        other[2] = 0x0b; // add rcx, [rbx]
        assert!(load(&cache, &spec_of(&other)).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_truncated_and_foreign_entries_are_refused() {
        let s = Settings::default();
        let isa = host_isa(&s).unwrap();
        let dir = temp_dir("bad");
        let cache = DiskCache::open(&dir, &s, &isa).unwrap();
        let spec = spec_of(CODE);
        let out = compile(&isa, 1, &spec).unwrap();
        store(&cache, &spec, &out);
        let path = cache.slot(&spec).unwrap().path;
        let good = std::fs::read(&path).unwrap();
        // Every single flipped byte, and every truncation, is refused.
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(load(&cache, &spec).is_none(), "byte {i} flipped");
        }
        for len in [0, 7, 8, 40, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(load(&cache, &spec).is_none(), "cut to {len}");
        }
        // A file whose checksum matches but that describes another region
        // (as a hash collision would be): refused by the description.
        let key = cache.slot(&spec_of(&[0x90, 0xc3])).unwrap().key;
        std::fs::write(&path, serialize(&key, &out)).unwrap();
        assert!(load(&cache, &spec).is_none());
        // Another build or host ISA (another identity) has other files.
        let mut foreign = DiskCache::open(&dir, &s, &isa).unwrap();
        Arc::get_mut(&mut foreign).unwrap().identity.push(b'x');
        std::fs::write(&path, &good).unwrap();
        assert!(load(&foreign, &spec).is_none());
        assert!(load(&cache, &spec).is_some(), "the good file is taken again");
        assert!(cache.stats().rejected >= 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
