//! The code cache: one reserved mapping that compiled regions are copied
//! into, bump-allocated a page-aligned run each, and made executable (and
//! no longer writable) page by page. Nothing is freed singly: when the cache
//! is full, every region goes at once and allocation starts again, as QEMU
//! flushes its translation buffer.

use std::ptr::NonNull;

/// The cache's mapping.
pub struct CodeCache {
    base: NonNull<u8>,
    size: usize,
    used: usize,
    page: usize,
    /// Times the cache filled up and was emptied.
    pub flushes: u64,
}

/// The entry of a compiled region: `ctx` is the region's [`crate::ctx::JitCtx`],
/// `entry` the index of the guest block to start at.
pub type RegionFn = unsafe extern "C" fn(ctx: *mut crate::ctx::JitCtx, entry: u32);

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
        Ok(CodeCache { base, size, used: 0, page, flushes: 0 })
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
        self.used + len.div_ceil(self.page) * self.page <= self.size
    }

    /// Copy `code` in and make it executable; `None` when it does not fit
    /// (the caller flushes and tries again) or the host refused the
    /// protection change.
    pub fn install(&mut self, code: &[u8]) -> Option<RegionFn> {
        let len = code.len().div_ceil(self.page) * self.page;
        if code.is_empty() || !self.fits(code.len()) {
            return None;
        }
        // SAFETY: `used + len <= size`, so the range lies in the mapping; its
        // pages are still writable (nothing was installed there since the
        // last flush made them writable again), and no code runs from them.
        let at = unsafe { self.base.as_ptr().add(self.used) };
        // SAFETY: as above; `code` is a separate allocation of `code.len()`
        // bytes, and `code.len() <= len`.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at, code.len()) };
        // SAFETY: `at` is page-aligned (`used` is a multiple of the page
        // size) and the `len` bytes from it lie in the mapping.
        let rc = unsafe { libc::mprotect(at.cast(), len, libc::PROT_READ | libc::PROT_EXEC) };
        if rc != 0 {
            return None;
        }
        self.used += len;
        sync_icache(at, code.len());
        Some(to_fn(at))
    }

    /// Drop every region: the pages become writable again. The caller
    /// must hold no code pointer from before.
    pub fn flush(&mut self) {
        if self.used > 0 {
            // SAFETY: the first `used` bytes of the mapping, page-aligned.
            let rc =
                unsafe { libc::mprotect(self.base.as_ptr().cast(), self.used, libc::PROT_READ | libc::PROT_WRITE) };
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
    }
}

/// The one conversion of code bytes into a callable function.
fn to_fn(at: *mut u8) -> RegionFn {
    // SAFETY: `at` holds a function compiled by Cranelift for this host with
    // the signature `RegionFn` (see `crate::translate`), now executable.
    unsafe { std::mem::transmute::<*mut u8, RegionFn>(at) }
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
        assert!(c.install(&code).is_some());
        assert!(c.install(&[0xc3; 5000]).is_some());
        assert_eq!(c.used(), 3 * 4096);
        assert!(c.install(&code).is_none());
        c.flush();
        assert_eq!((c.used(), c.flushes), (0, 1));
        assert!(c.install(&code).is_some());
    }
}
