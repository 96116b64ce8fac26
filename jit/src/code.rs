//! The code cache: one reserved mapping that compiled regions are copied
//! into, bump-allocated and packed (each on a cache line: spreading them a
//! page apart would put every region's entry in the same cache sets).
//! Nothing is freed singly: when the cache is full, every region goes at
//! once and allocation starts again, as QEMU flushes its translation
//! buffer.
//!
//! Where the host can map one memory object twice (Linux's `memfd`), the
//! cache is two views of the same pages: one readable and executable,
//! where code runs, and one readable and writable at another address,
//! where regions are copied in. No page is ever both writable and
//! executable, and an installation changes no protection: on a page that
//! already held code, making it writable again meant a TLB shootdown of
//! every host core the process runs on, for each region (benchmarks.md).
//! Elsewhere the one mapping is made executable (and no longer writable)
//! page by page; a page that already holds code is then writable only
//! while a region is copied in, on the thread that runs the code, so no
//! code runs from it meanwhile.

use std::ptr::NonNull;

/// Each region starts on a cache line (which also meets Cranelift's
/// function alignment).
const ALIGN: usize = 64;

/// The cache's mapping.
pub struct CodeCache {
    /// Where code runs.
    base: NonNull<u8>,
    /// The writable view of the same pages, when there is one.
    alias: Option<NonNull<u8>>,
    size: usize,
    used: usize,
    page: usize,
    /// Times the cache filled up and was emptied.
    pub flushes: u64,
}

/// The code of a compiled region. Regions use Cranelift's tail-call
/// convention (so that one can jump to the next without growing the
/// stack), which Rust cannot call: the run loop enters them through a
/// [`Trampoline`].
pub type RegionFn = *const u8;

/// The host-convention entry into compiled code: calls the region at
/// `code` with `ctx` (its [`crate::ctx::JitCtx`]) and `entry` (the index of
/// the guest block to start at), and returns when the last region of the
/// chain returns.
pub type Trampoline = unsafe extern "C" fn(ctx: *mut crate::ctx::JitCtx, code: RegionFn, entry: u32);

// SAFETY: the cache owns its mapping; nothing else refers to it except the
// code pointers it hands out, which are only called on the thread that owns
// the cache (the JIT's run loop).
unsafe impl Send for CodeCache {}

impl CodeCache {
    /// Reserve `size` bytes (rounded up to pages) of address space.
    pub fn new(size: usize) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
        let size = size.div_ceil(page) * page;
        if let Some((base, alias)) = dual_mapping(size) {
            return Ok(CodeCache { base, alias: Some(alias), size, used: 0, page, flushes: 0 });
        }
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(CodeCache { base, alias: None, size, used: 0, page, flushes: 0 })
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Bytes reserved.
    pub fn capacity(&self) -> usize {
        self.size
    }

    /// Whether `len` more bytes fit.
    pub fn fits(&self, len: usize) -> bool {
        self.used + len.div_ceil(ALIGN) * ALIGN <= self.size
    }

    /// Copy `code` in and make it executable; `None` when it does not fit
    /// or the host refused a protection change: the caller then flushes
    /// the cache (dropping every region) and tries again.
    pub fn install(&mut self, code: &[u8]) -> Option<RegionFn> {
        if code.is_empty() || !self.fits(code.len()) {
            return None;
        }
        if let Some(alias) = self.alias {
            // SAFETY: `used + len <= size`, so both ranges lie in their
            // views of `size` bytes; the writable view is this cache's own,
            // `code` is a separate allocation, and no code runs from the
            // bytes past `used` yet.
            let at = unsafe {
                std::ptr::copy_nonoverlapping(code.as_ptr(), alias.as_ptr().add(self.used), code.len());
                self.base.as_ptr().add(self.used)
            };
            self.used += code.len().div_ceil(ALIGN) * ALIGN;
            sync_icache(at, code.len());
            return Some(at.cast_const());
        }
        // The pages the region touches: the first may hold code already.
        let first = self.used / self.page * self.page;
        let end = (self.used + code.len()).div_ceil(self.page) * self.page;
        // SAFETY: `used + len <= size`, so `first..end` lies in the mapping
        // (`size` is a multiple of the page size); no code runs while the
        // JIT's thread installs.
        let rc = unsafe {
            libc::mprotect(self.base.as_ptr().add(first).cast(), end - first, libc::PROT_READ | libc::PROT_WRITE)
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: as above; the range is now writable, and `code` is a
        // separate allocation of `code.len()` bytes.
        let at = unsafe { self.base.as_ptr().add(self.used) };
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at, code.len()) };
        // SAFETY: the same page-aligned range of the mapping.
        let rc = unsafe {
            libc::mprotect(self.base.as_ptr().add(first).cast(), end - first, libc::PROT_READ | libc::PROT_EXEC)
        };
        if rc != 0 {
            // Code installed before on the first page cannot run now: the
            // caller flushes the whole cache on `None`.
            return None;
        }
        self.used += code.len().div_ceil(ALIGN) * ALIGN;
        sync_icache(at, code.len());
        Some(at.cast_const())
    }

    /// Drop every region: the pages become writable again. The caller
    /// must hold no code pointer from before.
    pub fn flush(&mut self) {
        if self.used > 0 && self.alias.is_none() {
            let len = self.used.div_ceil(self.page) * self.page;
            // SAFETY: the pages of the first `used` bytes of the mapping.
            let rc = unsafe { libc::mprotect(self.base.as_ptr().cast(), len, libc::PROT_READ | libc::PROT_WRITE) };
            if rc != 0 {
                // The pages stay executable and read-only: leave them
                // behind and allocate past them.
                tracing::warn!(target: "jit", "the code cache could not be made writable again");
                return;
            }
        }
        self.used = 0;
        self.flushes += 1;
    }
}

impl Drop for CodeCache {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of `size` bytes; no code from it
        // runs any more (the cache's owner is going away).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size) };
        if let Some(alias) = self.alias {
            // SAFETY: the writable view made with the executable one, of the
            // same size, used by nothing else.
            unsafe { libc::munmap(alias.as_ptr().cast(), self.size) };
        }
    }
}

/// An executable view and a writable view of the same `size` bytes of a
/// fresh memory object; `None` where the host cannot make them (the cache
/// then changes protections instead).
#[cfg(target_os = "linux")]
fn dual_mapping(size: usize) -> Option<(NonNull<u8>, NonNull<u8>)> {
    let name = c"ferrovm-jit";
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it
    // touches no memory of ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let map = |prot| {
        // SAFETY: a shared mapping of the object `fd` at an address of the
        // kernel's choosing; no existing memory is touched.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, 0) };
        (p != libc::MAP_FAILED).then(|| NonNull::new(p.cast::<u8>())).flatten()
    };
    let sized = i64::try_from(size).ok().is_some_and(|len| {
        // SAFETY: `fd` is the object just made, owned here.
        unsafe { libc::ftruncate(fd, len) == 0 }
    });
    let exec = if sized { map(libc::PROT_READ | libc::PROT_EXEC) } else { None };
    let write = if exec.is_some() { map(libc::PROT_READ | libc::PROT_WRITE) } else { None };
    // SAFETY: the mappings keep the object alive; the descriptor is no
    // longer needed, and is closed once.
    unsafe { libc::close(fd) };
    match (exec, write) {
        (Some(x), Some(w)) => Some((x, w)),
        (x, _) => {
            if let Some(x) = x {
                // SAFETY: the executable view just made, unused.
                unsafe { libc::munmap(x.as_ptr().cast(), size) };
            }
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn dual_mapping(_size: usize) -> Option<(NonNull<u8>, NonNull<u8>)> {
    None
}

/// The one conversion of code bytes into a callable function.
///
/// # Safety
/// `at` is installed code, compiled by [`crate::compiler::compile_trampoline`]
/// for this host.
pub unsafe fn to_trampoline(at: RegionFn) -> Trampoline {
    // SAFETY: as the caller guarantees: `at` holds an executable function of
    // the host's C convention with the signature `Trampoline`.
    unsafe { std::mem::transmute::<RegionFn, Trampoline>(at) }
}

/// Make freshly written code visible to instruction fetch.
#[cfg(target_arch = "x86_64")]
fn sync_icache(_at: *mut u8, _len: usize) {
    // x86 keeps instruction fetch coherent with stores.
}

/// Make freshly written code visible to instruction fetch.
#[cfg(not(target_arch = "x86_64"))]
fn sync_icache(at: *mut u8, len: usize) {
    extern "C" {
        fn __clear_cache(start: *mut libc::c_void, end: *mut libc::c_void);
    }
    // SAFETY: the range was just written and lies in the mapping;
    // `__clear_cache` (compiler-rt / libgcc) only maintains caches.
    unsafe { __clear_cache(at.cast(), at.add(len).cast()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_until_full_then_flushes() {
        let mut c = CodeCache::new(3 * 4096).unwrap();
        // `ret` on x86-64; other hosts only check the bookkeeping.
        let code = [0xc3u8; 10];
        let a = c.install(&code).unwrap();
        let b = c.install(&[0xc3; 5000]).unwrap();
        // Packed: the second region starts on the next cache line.
        assert_eq!(b as usize - a as usize, ALIGN);
        assert_eq!(c.used(), ALIGN + 5000usize.div_ceil(ALIGN) * ALIGN);
        assert!(c.install(&[0xc3; 8000]).is_none());
        assert!(c.install(&code).is_some());
        c.flush();
        assert_eq!((c.used(), c.flushes), (0, 1));
        assert!(c.install(&code).is_some());
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn code_installed_through_the_writable_view_runs() {
        let mut c = CodeCache::new(16 * 4096).unwrap();
        assert!(c.alias.is_some(), "Linux has memfd");
        // mov eax, imm32; ret
        let f = |v: u32| {
            let mut code = vec![0xb8];
            code.extend_from_slice(&v.to_le_bytes());
            code.push(0xc3);
            code
        };
        let mut fns = Vec::new();
        for v in 0..200u32 {
            fns.push(c.install(&f(v * 7)).unwrap());
        }
        for (v, at) in fns.iter().enumerate() {
            // SAFETY: `at` holds `mov eax, imm32; ret`, installed above and
            // still in the cache: a function of the C convention returning
            // a u32.
            let got = unsafe { std::mem::transmute::<RegionFn, extern "C" fn() -> u32>(*at)() };
            assert_eq!(got, v as u32 * 7);
        }
        // After a flush, new code over the old runs as written.
        c.flush();
        let at = c.install(&f(42)).unwrap();
        assert_eq!(at, fns[0]);
        // SAFETY: as above.
        assert_eq!(unsafe { std::mem::transmute::<RegionFn, extern "C" fn() -> u32>(at)() }, 42);
    }
}
