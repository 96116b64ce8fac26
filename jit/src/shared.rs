//! What the JITs of one machine's vCPUs share: the entry code and the
//! memory helpers' entries, and the compiled regions.
//!
//! Each vCPU keeps its own code cache, region map, jump caches and soft
//! TLB (what changes as it runs), as QEMU's MTTCG keeps a jump cache per
//! vCPU. What does not change is shared: a region's machine code is a
//! function of its [`RegionSpec`] alone (the guest instructions, the code
//! size, the configuration and the helper entries, which are the same for
//! every vCPU once they are compiled once, here). So when one vCPU's
//! compiler has compiled a region, another vCPU that asks for the same
//! region (the same blocks of the same instructions, compared bit for
//! bit) gets a copy of that code instead of compiling it again; a request
//! for a region being compiled waits for it. On a machine with as many
//! host cores as vCPUs this takes the duplicate compiles off the cores
//! the vCPUs run on: the guest's hot code is mostly the same on every
//! vCPU (the kernel, the C library, a parallel job's program).
//!
//! The compiled code refers to its table of interpreter fallbacks by
//! address, so the table is shared too ([`Output::fallbacks`]): it lives
//! while any vCPU's region uses it. Whether the code is still current is
//! each vCPU's own check (its page generations at installation), as
//! before: a shared result never skips it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cranelift_codegen::isa::OwnedTargetIsa;
use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};

use cpu::{FastMap, FxHasher};

use crate::code::{self, CodeCache, Trampoline};
use crate::compiler::{self, Output, Settings, Workspace};
use crate::disk::{self, DiskCache, DiskStats};
use crate::translate::{AccessCalls, RegionSpec};
use crate::Key;

/// Compiled regions kept for other vCPUs, in bytes of code; past it, the
/// table starts again (the regions already installed keep their code).
const KEEP_BYTES: usize = 32 << 20;

/// Position-independent regions kept by what their code is made of, in
/// bytes of code; past it, the oldest go first.
const KEEP_CONTENT_BYTES: usize = 64 << 20;

/// How long a compile waits for another vCPU's compile of the same region
/// before it compiles the region itself.
const WAIT: Duration = Duration::from_secs(2);

/// A region's compile: under way on some vCPU's compiler, or done.
enum Slot {
    Compiling,
    Done(Output),
}

struct Entry {
    spec: Arc<RegionSpec>,
    slot: Slot,
}

#[derive(Default)]
struct Table {
    by_hash: FastMap<u64, Vec<Entry>>,
    bytes: usize,
    /// The region each vCPU asked for last at each of its blocks' keys.
    by_key: FastMap<Key, Arc<RegionSpec>>,
    /// Position-independent regions by each of their blocks'
    /// [`disk::block_hash`]: candidates for the same code at another page.
    by_content: FastMap<u64, Arc<RegionSpec>>,
}

/// Region entries kept in [`Table::by_key`]; past it, the index starts
/// again.
const KEEP_KEYS: usize = 1 << 18;

impl Table {
    fn find(&mut self, hash: u64, spec: &RegionSpec) -> Option<&mut Entry> {
        self.by_hash.get_mut(&hash)?.iter_mut().find(|e| same_spec(&e.spec, spec))
    }

    fn remove(&mut self, hash: u64, spec: &RegionSpec) {
        if let Some(v) = self.by_hash.get_mut(&hash) {
            v.retain(|e| !same_spec(&e.spec, spec));
            if v.is_empty() {
                self.by_hash.remove(&hash);
            }
        }
    }
}

/// Compiled position-independent regions by the SHA-256 of their
/// [`disk::describe`]: the same instructions at another page (a program
/// that runs again at another address, a page of a shared library or of
/// the page cache mapped by another process) take the code compiled for
/// the first, linked for their own page, instead of compiling it again.
#[derive(Default)]
struct Content {
    by_digest: FastMap<[u8; 32], Output>,
    /// Digests oldest first, for eviction.
    order: std::collections::VecDeque<[u8; 32]>,
    bytes: usize,
    hits: u64,
}

impl Content {
    fn keep(&mut self, digest: [u8; 32], out: &Output) {
        if out.code.len() > KEEP_CONTENT_BYTES || self.by_digest.contains_key(&digest) {
            return;
        }
        while self.bytes + out.code.len() > KEEP_CONTENT_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(o) = self.by_digest.remove(&old) {
                self.bytes -= o.code.len();
            }
        }
        self.bytes += out.code.len();
        self.order.push_back(digest);
        self.by_digest.insert(digest, out.clone());
    }
}

/// The part of the JIT every vCPU of a machine shares.
pub struct Shared {
    pub(crate) trampoline: Trampoline,
    pub(crate) access: AccessCalls,
    /// The mapping that holds the trampoline and the helper entries; never
    /// written after [`Shared::new`].
    _code: Mutex<CodeCache>,
    table: Mutex<Table>,
    ready: Condvar,
    /// The persistent translation cache, when one was asked for.
    disk: Option<Arc<DiskCache>>,
    content: Mutex<Content>,
}

impl Shared {
    /// Compiles the entry trampoline and the memory helpers' entries for
    /// this host with `settings`.
    pub fn new(settings: &Settings) -> Result<Arc<Self>, String> {
        Self::with_disk_cache(settings, None)
    }

    /// [`Shared::new`], with compiled regions also kept in the folder
    /// `disk` and taken from it ([`crate::disk`]).
    pub fn with_disk_cache(settings: &Settings, disk: Option<&std::path::Path>) -> Result<Arc<Self>, String> {
        let mut tcode = CodeCache::new(16384).map_err(|e| format!("cannot reserve the code cache: {e}"))?;
        let host = compiler::host_isa(settings)?;
        let tbytes = compiler::compile_trampoline(&host)?;
        let tptr = tcode.install(&tbytes).ok_or("cannot install the JIT's entry code")?;
        let access = crate::install_access_calls(&host, &mut tcode)?;
        // SAFETY: `tptr` is the trampoline just compiled for this host and
        // installed; `tcode` keeps it mapped as long as this value lives,
        // and every JIT that enters through it holds this value.
        let trampoline = unsafe { code::to_trampoline(tptr) };
        let disk = disk.map(|dir| DiskCache::open(dir, settings, &host)).transpose()?;
        Ok(Arc::new(Shared {
            trampoline,
            access,
            _code: Mutex::new(tcode),
            table: Mutex::new(Table::default()),
            ready: Condvar::new(),
            disk,
            content: Mutex::new(Content::default()),
        }))
    }

    /// Compiles `spec` in `ws`, or takes the code another vCPU compiled
    /// for the same region (true with it).
    pub(crate) fn compile(
        &self,
        ws: &mut Workspace,
        isa: &OwnedTargetIsa,
        id: u64,
        spec: Arc<RegionSpec>,
    ) -> (Result<Output, String>, bool) {
        let hash = spec_hash(&spec);
        let mut claimed = false;
        {
            let mut t = self.table.lock();
            let deadline = Instant::now() + WAIT;
            loop {
                match t.find(hash, &spec).map(|e| &e.slot) {
                    Some(Slot::Done(out)) => return (Ok(out.clone()), true),
                    Some(Slot::Compiling) => {
                        if self.ready.wait_until(&mut t, deadline).timed_out() {
                            break;
                        }
                    }
                    None => {
                        t.by_hash.entry(hash).or_default().push(Entry { spec: spec.clone(), slot: Slot::Compiling });
                        claimed = true;
                        break;
                    }
                }
            }
        }
        let (result, copied) = self.compile_or_load(ws, isa, id, &spec);
        if claimed {
            let mut t = self.table.lock();
            match &result {
                Ok(out) if t.bytes + out.code.len() <= KEEP_BYTES => {
                    t.bytes += out.code.len();
                    if let Some(e) = t.find(hash, &spec) {
                        e.slot = Slot::Done(out.clone());
                    }
                }
                Ok(_) => {
                    // Full: start again (waiters compile for themselves).
                    t.by_hash.clear();
                    t.by_key.clear();
                    t.by_content.clear();
                    t.bytes = 0;
                }
                Err(_) => t.remove(hash, &spec),
            }
            self.ready.notify_all();
        }
        (result, copied)
    }

    /// The region `spec`: for position-independent code, the code compiled
    /// for the same instructions at any page ([`Content`]); then from the
    /// persistent cache; or compiled (and then kept in both). True with
    /// code compiled for other instructions' addresses.
    fn compile_or_load(
        &self,
        ws: &mut Workspace,
        isa: &OwnedTargetIsa,
        id: u64,
        spec: &RegionSpec,
    ) -> (Result<Output, String>, bool) {
        let description =
            if spec.relative_base().is_some() || self.disk.is_some() { disk::describe(spec) } else { None };
        let Some(description) = description else {
            return (compiler::compile_in(ws, isa, id, spec), false);
        };
        let digest: Option<[u8; 32]> = spec.relative_base().map(|_| Sha256::digest(&description).into());
        if let Some(d) = &digest {
            let kept =
                self.content.lock().by_digest.get(d).map(|o| (o.code.clone(), o.relocs.clone(), o.fallbacks.len()));
            if let Some((code, relocs, fallbacks)) = kept {
                match disk::relink(code, relocs, fallbacks, spec) {
                    Ok(out) => {
                        self.content.lock().hits += 1;
                        return (Ok(out), true);
                    }
                    Err(e) => tracing::debug!(target: "jit", "kept code of the same instructions not taken: {e}"),
                }
            }
        }
        let slot = self.disk.as_ref().map(|d| (d, d.slot_of(&description)));
        let loaded = slot.as_ref().and_then(|(d, slot)| d.load(slot, spec));
        let fresh = loaded.is_none();
        let result = match loaded {
            Some(out) => Ok(out),
            None => compiler::compile_in(ws, isa, id, spec),
        };
        if let Ok(out) = &result {
            if let Some(d) = digest {
                self.content.lock().keep(d, out);
            }
            if let (Some((disk, slot)), true) = (&slot, fresh) {
                disk.store(slot, out);
            }
        }
        (result, false)
    }

    /// Regions taken from code compiled for the same instructions at
    /// another page (`Content`), by every vCPU.
    pub fn content_hits(&self) -> u64 {
        self.content.lock().hits
    }

    /// The persistent translation cache's counts, when there is one.
    pub fn disk_stats(&self) -> Option<(std::path::PathBuf, DiskStats)> {
        self.disk.as_ref().map(|d| (d.dir().to_path_buf(), d.stats()))
    }

    /// Makes `spec`, which a vCPU is about to compile, the region other
    /// vCPUs are offered at `keys` (its blocks' entries).
    pub(crate) fn publish(&self, keys: &[Key], spec: &Arc<RegionSpec>) {
        let mut t = self.table.lock();
        if t.by_key.len() + keys.len() > KEEP_KEYS {
            t.by_key.clear();
        }
        for k in keys {
            t.by_key.insert(*k, spec.clone());
        }
        if let Some(base) = spec.relative_base() {
            if t.by_content.len() + spec.blocks.len() > KEEP_KEYS {
                t.by_content.clear();
            }
            for b in &spec.blocks {
                t.by_content.insert(disk::block_hash(&b.insns, base), spec.clone());
            }
        }
    }

    /// A position-independent region some vCPU compiled (or compiles) with
    /// a block whose [`disk::block_hash`] is `hash`. The caller checks that
    /// the code at its own page is the same.
    pub(crate) fn offered_by_content(&self, hash: u64) -> Option<Arc<RegionSpec>> {
        self.table.lock().by_content.get(&hash).cloned()
    }

    /// The region some vCPU compiled (or compiles) with a block at `key`.
    /// The caller checks that its own view of the code is the same.
    pub(crate) fn offered(&self, key: &Key) -> Option<Arc<RegionSpec>> {
        self.table.lock().by_key.get(key).cloned()
    }

    /// Compiled regions kept for sharing, and their code's bytes.
    pub fn kept(&self) -> (usize, usize) {
        let t = self.table.lock();
        let n = t.by_hash.values().flatten().filter(|e| matches!(e.slot, Slot::Done(_))).count();
        (n, t.bytes)
    }
}

/// A hash of what a region's code is made from.
fn spec_hash(spec: &RegionSpec) -> u64 {
    let mut h = FxHasher::default();
    (spec.bits, spec.chain, spec.shared_memory, spec.avx, spec.crypto, spec.position_independent, spec.blocks.len())
        .hash(&mut h);
    for b in &spec.blocks {
        (b.rip, b.insns.len()).hash(&mut h);
        for d in &b.insns {
            (d.insn.ip(), d.insn.code(), d.insn.len(), d.insn.immediate64(), d.insn.memory_displacement64())
                .hash(&mut h);
        }
    }
    h.finish()
}

/// Whether two specs make the same code: the same configuration and
/// helper entries, and the same blocks of instructions equal in every bit.
fn same_spec(a: &RegionSpec, b: &RegionSpec) -> bool {
    a.bits == b.bits
        && a.chain == b.chain
        && a.shared_memory == b.shared_memory
        && a.avx == b.avx
        && a.crypto == b.crypto
        && a.position_independent == b.position_independent
        && (a.access.load, a.access.load_rmw, a.access.store) == (b.access.load, b.access.load_rmw, b.access.store)
        && a.blocks.len() == b.blocks.len()
        && a.blocks.iter().zip(&b.blocks).all(|(x, y)| {
            x.rip == y.rip
                && x.insns.len() == y.insns.len()
                && x.insns.iter().zip(&y.insns).all(|(i, j)| i.insn.eq_all_bits(&j.insn))
        })
}
