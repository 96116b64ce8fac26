//! Atomic accesses to guest RAM, and the memory ordering of guest accesses.
//!
//! The processors of a machine may run on host threads of their own over
//! one [`GuestMemory`]. What x86 makes atomic must then be atomic against
//! all of them: the CPU's locked read-modify-writes (LOCK-prefixed
//! instructions, XCHG with memory, CMPXCHG8B and CMPXCHG16B) and the
//! updates it makes on its own (accessed and dirty bits in page-table
//! entries, the accessed bit of segment descriptors, the busy bit of TSS
//! descriptors). Each goes through the methods here as one host atomic
//! instruction on the guest's bytes:
//!
//! - aligned accesses of 1, 2, 4 or 8 bytes through the host's atomic
//!   types (`AtomicU8::from_ptr` and its siblings), sequentially
//!   consistent;
//! - misaligned ones, on x86_64 hosts, through `lock cmpxchg`, which is
//!   atomic at any address (a split lock when it spans two cache lines:
//!   slow, but atomic). Where the host kernel traps split locks (Linux's
//!   split-lock detection, which slows the process down on purpose or
//!   kills it), those that span two cache lines are refused with
//!   [`MemError::NotAtomic`], as misaligned ones are on other hosts;
//! - 16 bytes (CMPXCHG16B, whose operand the CPU requires to be 16-byte
//!   aligned) through `lock cmpxchg16b` on x86_64 hosts that have it;
//!   [`MemError::NotAtomic`] elsewhere.
//!
//! A caller refused with [`MemError::NotAtomic`] (or with any other error:
//! MMIO, ROM) has to make the access some other way, for a CPU by running
//! the instruction while no other processor runs.
//!
//! Only guest RAM that guest writes may change takes part: ROM, shadow
//! pages made read-only ([`GuestMemory::set_shadow_read_only`]), addresses
//! outside guest memory (MMIO among them) and ranges that cross the end of
//! a region are refused with the error [`GuestMemory::write`] gives them.
//! A store made here that changes bytes is a write for the code-page
//! tracking as every other: written pages holding code are queued on every
//! [`CodeWatch`](crate::CodeWatch).
//!
//! # Ordering
//!
//! x86 memory is TSO: loads are not reordered with other loads, stores not
//! with other stores, and a store not with an earlier load; only a store
//! followed by a load of another address may complete in the other order.
//! Locked instructions and MFENCE are full barriers.
//!
//! - On x86_64 hosts the guest's plain accesses are plain host copies
//!   ([`GuestMemory::read`], [`GuestMemory::write`], the soft TLB's fast
//!   paths), which the host orders as TSO already; the host's locked
//!   instructions made here (and `mfence`, [`full_fence`]) are the full
//!   barriers. [`after_guest_load`] and [`before_guest_store`] are empty.
//! - On weakly ordered hosts (AArch64, RISC-V, POWER) every guest load is
//!   followed by an acquire fence ([`after_guest_load`]) and every guest
//!   store is preceded by a release fence ([`before_guest_store`]): a load
//!   is then ordered before every later access and a store after every
//!   earlier one, which is TSO. The atomics here are sequentially
//!   consistent, full barriers. Anything else that reaches guest memory
//!   through host pointers (translated code) owes the same: acquire loads
//!   and release stores.

use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::memory::{GuestMemory, MemError};

/// Orders a guest load just made before every later guest access (see the
/// module's ordering notes). Nothing on x86_64 hosts.
#[inline(always)]
pub fn after_guest_load() {
    #[cfg(not(target_arch = "x86_64"))]
    fence(Ordering::Acquire);
}

/// Orders every earlier guest access before the guest store about to be
/// made (see the module's ordering notes). Nothing on x86_64 hosts.
#[inline(always)]
pub fn before_guest_store() {
    #[cfg(not(target_arch = "x86_64"))]
    fence(Ordering::Release);
}

/// Store `src` into guest RAM at `dst` as one guest store: every byte
/// written exactly once, and an access of 1, 2, 4, 8 or 16 bytes as one
/// host store (single-copy atomic where x86 makes it so).
///
/// A `memcpy` of a length only known at run time writes short lengths as
/// two overlapping stores (4 bytes as the first four and the last four,
/// the same four): a processor's compare-exchange landing between them is
/// then undone by the second. A spinlock released by a plain store would
/// be released twice, the second time under its next owner. Guest stores
/// of every width come through here instead.
///
/// # Safety
///
/// `dst` points at `src.len()` bytes of a live guest RAM mapping, which
/// `src` does not overlap.
#[inline(always)]
pub(crate) unsafe fn store_guest(dst: *mut u8, src: &[u8]) {
    // SAFETY: (every arm) the caller's promise; the unaligned writes and
    // the copies touch exactly `src.len()` bytes at `dst`. Guest RAM is
    // only reached through raw pointers (see `load_aligned`).
    unsafe {
        match *src {
            [b] => dst.write(b),
            [a, b] => dst.cast::<u16>().write_unaligned(u16::from_ne_bytes([a, b])),
            _ => match src.len() {
                4 => dst.cast::<u32>().write_unaligned(u32::from_ne_bytes(src.try_into().unwrap_unchecked())),
                8 => dst.cast::<u64>().write_unaligned(u64::from_ne_bytes(src.try_into().unwrap_unchecked())),
                16 => dst.cast::<u128>().write_unaligned(u128::from_ne_bytes(src.try_into().unwrap_unchecked())),
                n if n < 64 => store_pieces(dst, src),
                // Bulk copies (string instructions, page-sized buffers).
                n => std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n),
            },
        }
    }
}

/// [`store_guest`] of an odd length: pieces of 8, 4, 2 and 1 bytes, each
/// byte once.
///
/// # Safety
///
/// As [`store_guest`].
#[inline(never)]
unsafe fn store_pieces(dst: *mut u8, src: &[u8]) {
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        // SAFETY: `dst + i .. dst + src.len()` is inside the caller's range;
        // each arm writes as many bytes as it takes from `rest`.
        unsafe {
            let at = dst.add(i);
            i += if rest.len() >= 8 {
                at.cast::<u64>().write_unaligned(u64::from_ne_bytes(rest[..8].try_into().unwrap_unchecked()));
                8
            } else if rest.len() >= 4 {
                at.cast::<u32>().write_unaligned(u32::from_ne_bytes(rest[..4].try_into().unwrap_unchecked()));
                4
            } else if rest.len() >= 2 {
                at.cast::<u16>().write_unaligned(u16::from_ne_bytes(rest[..2].try_into().unwrap_unchecked()));
                2
            } else {
                at.write(rest[0]);
                1
            };
        }
    }
}

/// Load guest RAM at `src` into `dst` as one guest load: an access of 1,
/// 2, 4, 8 or 16 bytes as one host load (see [`store_guest`]).
///
/// # Safety
///
/// `src` points at `dst.len()` bytes of a live guest RAM mapping, which
/// `dst` does not overlap.
#[inline(always)]
pub(crate) unsafe fn load_guest(src: *const u8, dst: &mut [u8]) {
    // SAFETY: (every arm) the caller's promise; each read takes exactly
    // `dst.len()` bytes at `src`.
    unsafe {
        match dst.len() {
            1 => dst[0] = src.read(),
            2 => dst.copy_from_slice(&src.cast::<u16>().read_unaligned().to_ne_bytes()),
            4 => dst.copy_from_slice(&src.cast::<u32>().read_unaligned().to_ne_bytes()),
            8 => dst.copy_from_slice(&src.cast::<u64>().read_unaligned().to_ne_bytes()),
            16 => dst.copy_from_slice(&src.cast::<u128>().read_unaligned().to_ne_bytes()),
            n => std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), n),
        }
    }
}

/// A full barrier: MFENCE. Every guest access before it is visible to
/// every processor before any access after it (an `mfence` on x86_64).
#[inline]
pub fn full_fence() {
    fence(Ordering::SeqCst);
}

/// The mask of an operand of `size` bytes.
#[inline]
fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (u32::from(size) * 8)) - 1
    }
}

/// Whether this host has a 16-byte compare-exchange.
#[inline]
fn has_cas16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("cmpxchg16b")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Load `size` (1, 2, 4 or 8) bytes at `ptr`, atomically.
///
/// # Safety
///
/// `ptr` points at `size` bytes of a live guest RAM mapping and is aligned
/// to `size`.
#[inline]
pub(crate) unsafe fn load_aligned(ptr: *mut u8, size: u8) -> u64 {
    // SAFETY: the caller's promise: aligned, inside a live mapping that
    // outlives the call. Guest RAM is shared memory that is only ever
    // reached through raw pointers (copies and these atomics, never Rust
    // references), so other threads' accesses to the same bytes are racing
    // guest accesses, which the host orders as its memory model says.
    unsafe {
        match size {
            1 => u64::from(AtomicU8::from_ptr(ptr).load(Ordering::SeqCst)),
            2 => u64::from(AtomicU16::from_ptr(ptr.cast()).load(Ordering::SeqCst)),
            4 => u64::from(AtomicU32::from_ptr(ptr.cast()).load(Ordering::SeqCst)),
            _ => AtomicU64::from_ptr(ptr.cast()).load(Ordering::SeqCst),
        }
    }
}

/// Compare-exchange of `size` (1, 2, 4 or 8) bytes at `ptr`: `Ok(current)`
/// if they held `current` (now `new`), else `Err(actual)`.
///
/// # Safety
///
/// As [`load_aligned`].
#[inline]
pub(crate) unsafe fn cas_aligned(ptr: *mut u8, size: u8, current: u64, new: u64) -> Result<u64, u64> {
    const O: Ordering = Ordering::SeqCst;
    // SAFETY: as in `load_aligned`.
    unsafe {
        match size {
            1 => AtomicU8::from_ptr(ptr)
                .compare_exchange(current as u8, new as u8, O, O)
                .map(u64::from)
                .map_err(u64::from),
            2 => AtomicU16::from_ptr(ptr.cast())
                .compare_exchange(current as u16, new as u16, O, O)
                .map(u64::from)
                .map_err(u64::from),
            4 => AtomicU32::from_ptr(ptr.cast())
                .compare_exchange(current as u32, new as u32, O, O)
                .map(u64::from)
                .map_err(u64::from),
            _ => AtomicU64::from_ptr(ptr.cast()).compare_exchange(current, new, O, O),
        }
    }
}

/// Compare-exchange of 2, 4 or 8 bytes at any address: `lock cmpxchg`,
/// atomic on x86 whatever the alignment (a split lock across cache lines).
///
/// # Safety
///
/// `ptr` points at `size` bytes of a live guest RAM mapping.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn cas_split(ptr: *mut u8, size: u8, current: u64, new: u64) -> Result<u64, u64> {
    use std::arch::asm;
    let prev: u64;
    // SAFETY: the caller's promise: the instruction reads and writes only
    // the `size` bytes at `ptr`, inside a live mapping; it touches no stack
    // and clobbers only the registers named and the flags. Racing accesses
    // by other threads are guest accesses (see `load_aligned`).
    unsafe {
        match size {
            2 => {
                let p: u16;
                asm!("lock cmpxchg word ptr [{p}], {n:x}", p = in(reg) ptr, n = in(reg) new as u16,
                     inout("ax") current as u16 => p, options(nostack));
                prev = u64::from(p);
            }
            4 => {
                let p: u32;
                asm!("lock cmpxchg dword ptr [{p}], {n:e}", p = in(reg) ptr, n = in(reg) new as u32,
                     inout("eax") current as u32 => p, options(nostack));
                prev = u64::from(p);
            }
            _ => {
                asm!("lock cmpxchg qword ptr [{p}], {n}", p = in(reg) ptr, n = in(reg) new,
                     inout("rax") current => prev, options(nostack));
            }
        }
    }
    if prev == current {
        Ok(prev)
    } else {
        Err(prev)
    }
}

/// Compare-exchange of the 16 bytes at `ptr`: `lock cmpxchg16b`.
///
/// # Safety
///
/// `ptr` points at 16 bytes of a live guest RAM mapping, 16-byte aligned,
/// and the host has CMPXCHG16B ([`has_cas16`]).
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn cas16(ptr: *mut u8, current: u128, new: u128) -> Result<u128, u128> {
    use std::arch::asm;
    let (lo, hi): (u64, u64);
    // SAFETY: the caller's promise (alignment, a live mapping, the
    // instruction exists). RBX is reserved by the compiler: the new low
    // half goes in through another register and is swapped with RBX around
    // the instruction, which restores RBX before the block ends.
    unsafe {
        asm!(
            "xchg {rbx_tmp}, rbx",
            "lock cmpxchg16b xmmword ptr [{p}]",
            "mov rbx, {rbx_tmp}",
            p = in(reg) ptr,
            rbx_tmp = inout(reg) new as u64 => _,
            in("rcx") (new >> 64) as u64,
            inout("rax") current as u64 => lo,
            inout("rdx") (current >> 64) as u64 => hi,
            options(nostack),
        );
    }
    let prev = u128::from(lo) | (u128::from(hi) << 64);
    if prev == current {
        Ok(prev)
    } else {
        Err(prev)
    }
}

/// Whether the host kernel traps split locks (locked accesses across two
/// cache lines): Linux on processors with split-lock detection warns and
/// slows the offending process down on purpose, or kills it, as
/// `split_lock_detect=` says, and shows the `split_lock_detect` CPU flag
/// while it does. A guest must not be able to set that off.
#[cfg(target_arch = "x86_64")]
fn split_locks_trapped() -> bool {
    static TRAPPED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRAPPED.get_or_init(|| {
        let trapped = cfg!(target_os = "linux")
            && std::fs::read_to_string("/proc/cpuinfo")
                .is_ok_and(|s| s.split_whitespace().any(|w| w == "split_lock_detect"));
        if trapped {
            tracing::info!(
                target: "mmu",
                "the host traps split locks: guest atomics across a cache line run with the other processors stopped"
            );
        }
        trapped
    })
}

/// Whether an atomic access that spans two cache lines is one host
/// atomic here: on x86_64 hosts whose kernel does not trap split locks.
/// Where it is not, [`GuestMemory::compare_exchange`] refuses such
/// accesses with [`MemError::NotAtomic`].
pub fn split_locks_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !split_locks_trapped()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Compare-exchange of 2, 4 or 8 bytes at a misaligned `ptr`, if this
/// host makes it one atomic instruction (x86_64, unless it spans two
/// cache lines on a host that traps split locks); `None` elsewhere.
///
/// # Safety
///
/// `ptr` points at `size` bytes of a live guest RAM mapping.
#[inline]
pub(crate) unsafe fn cas_misaligned(ptr: *mut u8, size: u8, current: u64, new: u64) -> Option<Result<u64, u64>> {
    #[cfg(target_arch = "x86_64")]
    {
        if (ptr as usize % 64) + usize::from(size) > 64 && split_locks_trapped() {
            return None;
        }
        // SAFETY: the caller's promise.
        Some(unsafe { cas_split(ptr, size, current, new) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ptr, size, current, new);
        None
    }
}

/// Compare-exchange of the 16 bytes at `ptr`, if this host has a 16-byte
/// compare-exchange; `None` elsewhere.
///
/// # Safety
///
/// `ptr` points at 16 bytes of a live guest RAM mapping, 16-byte aligned.
#[inline]
unsafe fn cas_u128(ptr: *mut u8, current: u128, new: u128) -> Option<Result<u128, u128>> {
    if !has_cas16() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the caller's promise, and the host has CMPXCHG16B
        // (checked above).
        Some(unsafe { cas16(ptr, current, new) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ptr, current, new);
        None
    }
}

impl GuestMemory {
    /// Check an atomic access's size: 1, 2, 4 or 8 bytes.
    #[inline]
    fn atomic_size(addr: u64, size: u8) -> Result<u64, MemError> {
        match size {
            1 | 2 | 4 | 8 => Ok(u64::from(size)),
            _ => Err(MemError::NotAtomic { addr, len: u64::from(size) }),
        }
    }

    /// The `size` (1, 2, 4 or 8) bytes at `addr`, little-endian, read for a
    /// read-modify-write that [`GuestMemory::compare_exchange`] completes.
    ///
    /// Refused where a compare-exchange would be (see the [module
    /// docs](crate::atomic)), so a caller learns before reading that it
    /// needs another way (and never reads MMIO twice). An aligned load is
    /// single-copy atomic; a misaligned one (x86_64 hosts only) may tear
    /// when another processor writes the bytes at the same time, and the
    /// compare-exchange against the torn value then fails.
    pub fn atomic_load(&self, addr: u64, size: u8) -> Result<u64, MemError> {
        let len = Self::atomic_size(addr, size)?;
        let ptr = self.writable_ram(addr, len)?;
        let v = if (ptr as usize).is_multiple_of(usize::from(size)) {
            // SAFETY: `writable_ram` proved the `len` bytes lie inside a live
            // RAM mapping; the pointer is aligned to `size`.
            unsafe { load_aligned(ptr, size) }
        } else if cfg!(target_arch = "x86_64") {
            let mut b = [0u8; 8];
            // SAFETY: `writable_ram` proved the `len` bytes lie inside a live
            // RAM mapping; `b` is a distinct Rust buffer of 8 >= `len` bytes.
            unsafe { load_guest(ptr, &mut b[..len as usize]) };
            u64::from_le_bytes(b)
        } else {
            return Err(MemError::NotAtomic { addr, len });
        };
        after_guest_load();
        Ok(v)
    }

    /// Atomically replace the `size` (1, 2, 4 or 8) bytes at `addr` with
    /// `new` if they hold `current` (both taken modulo the size).
    ///
    /// `Ok(Ok(current))` when they did and now hold `new`; `Ok(Err(actual))`
    /// when they held `actual` instead, left unchanged. `Err` when this is
    /// not one host atomic: the range is not writable RAM (ROM, a read-only
    /// shadow page, MMIO, outside guest memory, across a region's end:
    /// [`MemError::ReadOnly`] or [`MemError::Unmapped`]), or it is
    /// misaligned on a host without split locks, or the size is not 1, 2,
    /// 4 or 8 ([`MemError::NotAtomic`]). Sequentially consistent, a full
    /// barrier. A store that changes the bytes reaches the code-page
    /// tracking as [`GuestMemory::write`] does.
    pub fn compare_exchange(&self, addr: u64, size: u8, current: u64, new: u64) -> Result<Result<u64, u64>, MemError> {
        let len = Self::atomic_size(addr, size)?;
        let ptr = self.writable_ram(addr, len)?;
        let m = mask(size);
        let (current, new) = (current & m, new & m);
        let r = if (ptr as usize).is_multiple_of(usize::from(size)) {
            // SAFETY: `writable_ram` proved the `len` bytes lie inside a live
            // RAM mapping; the pointer is aligned to `size`.
            unsafe { cas_aligned(ptr, size, current, new) }
        } else {
            // SAFETY: `writable_ram` proved the `len` bytes lie inside a live
            // RAM mapping.
            unsafe { cas_misaligned(ptr, size, current, new) }.ok_or(MemError::NotAtomic { addr, len })?
        };
        if r.is_ok() && new != current {
            self.note_write(addr, len);
        }
        Ok(r)
    }

    /// Atomically replace the 16 bytes at `addr` (16-byte aligned) with
    /// `new` if they hold `current`, as [`GuestMemory::compare_exchange`]
    /// (CMPXCHG16B). [`MemError::NotAtomic`] for a misaligned `addr` and on
    /// hosts without a 16-byte compare-exchange.
    pub fn compare_exchange_u128(&self, addr: u64, current: u128, new: u128) -> Result<Result<u128, u128>, MemError> {
        let ptr = self.writable_ram(addr, 16)?;
        let not_atomic = MemError::NotAtomic { addr, len: 16 };
        if !(ptr as usize).is_multiple_of(16) {
            return Err(not_atomic);
        }
        // SAFETY: `writable_ram` proved the 16 bytes lie inside a live RAM
        // mapping; the pointer is 16-byte aligned (checked above).
        let r = unsafe { cas_u128(ptr, current, new) }.ok_or(not_atomic)?;
        if r.is_ok() && new != current {
            self.note_write(addr, 16);
        }
        Ok(r)
    }

    /// Atomically OR `bits` into the `size` (1, 2, 4 or 8) bytes at `addr`;
    /// returns the value before. Refused as [`GuestMemory::compare_exchange`]
    /// refuses. Bits already set write nothing.
    pub fn fetch_or(&self, addr: u64, size: u8, bits: u64) -> Result<u64, MemError> {
        self.fetch_update(addr, size, |v| v | bits)
    }

    /// Atomically AND `bits` into the `size` (1, 2, 4 or 8) bytes at
    /// `addr`; returns the value before. Refused as
    /// [`GuestMemory::compare_exchange`] refuses. Bits already clear write
    /// nothing.
    pub fn fetch_and(&self, addr: u64, size: u8, bits: u64) -> Result<u64, MemError> {
        self.fetch_update(addr, size, |v| v & bits)
    }

    /// A compare-exchange loop applying `f` until no other writer came
    /// between the load and the exchange.
    fn fetch_update(&self, addr: u64, size: u8, f: impl Fn(u64) -> u64) -> Result<u64, MemError> {
        let m = mask(size);
        let mut cur = self.atomic_load(addr, size)?;
        loop {
            let new = f(cur) & m;
            if new == cur {
                return Ok(cur);
            }
            match self.compare_exchange(addr, size, cur, new)? {
                Ok(old) => return Ok(old),
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{CodeChanges, PAGE_SIZE};
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    /// A spinlock taken by compare-exchange and released by a plain
    /// [`GuestMemory::write`] of each width keeps a plain counter exact on
    /// four threads: the release is one store, which never lands after the
    /// next owner's compare-exchange.
    #[test]
    fn a_plain_store_releases_a_spinlock_once() {
        for width in [1usize, 2, 4, 8] {
            let m = Arc::new(GuestMemory::new(MIB).unwrap());
            const LOCK: u64 = 0x2000;
            const COUNT: u64 = 0x2040;
            const ROUNDS: u32 = 50_000;
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let m = m.clone();
                    std::thread::spawn(move || {
                        let size = width as u8;
                        for _ in 0..ROUNDS {
                            while m.compare_exchange(LOCK, size, 0, 1) != Ok(Ok(0)) {
                                std::hint::spin_loop();
                            }
                            let n = m.read_u32(COUNT).unwrap();
                            m.write_u32(COUNT, n + 1).unwrap();
                            m.write(LOCK, &[0u8; 8][..width]).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(m.read_u32(COUNT).unwrap(), 4 * ROUNDS, "released by a {width}-byte store");
        }
    }

    /// Every length from 1 to 80 bytes, at every offset in a 16-byte
    /// window, is stored and loaded exactly, touching nothing around.
    #[test]
    fn guest_stores_and_loads_of_every_length() {
        let m = GuestMemory::new(MIB).unwrap();
        for len in 1..=80usize {
            for off in 0..16u64 {
                let at = 0x3000 + off;
                m.fill(0x2fc0, 0x100, 0xee).unwrap();
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(1)).collect();
                m.write(at, &data).unwrap();
                let mut back = vec![0u8; len];
                m.read(at, &mut back).unwrap();
                assert_eq!(back, data, "{len} bytes at +{off}");
                assert_eq!(m.read_u8(at - 1).unwrap(), 0xee);
                assert_eq!(m.read_u8(at + len as u64).unwrap(), 0xee);
            }
        }
    }

    #[test]
    fn compare_exchange_of_every_size_aligned_and_not() {
        let m = GuestMemory::new(MIB).unwrap();
        for size in [1u8, 2, 4, 8] {
            for off in 0..9u64 {
                let a = 0x1000 + off;
                let mk = mask(size);
                let old = 0x8877_6655_4433_2211u64 & mk;
                m.fill(0xff0, 48, 0xee).unwrap();
                m.write(a, &old.to_le_bytes()[..usize::from(size)]).unwrap();
                if !a.is_multiple_of(u64::from(size)) && !cfg!(target_arch = "x86_64") {
                    // No split locks on this host: the caller must go another way.
                    let refused = MemError::NotAtomic { addr: a, len: u64::from(size) };
                    assert_eq!(m.atomic_load(a, size), Err(refused.clone()));
                    assert_eq!(m.compare_exchange(a, size, old, 0), Err(refused));
                    continue;
                }
                assert_eq!(m.atomic_load(a, size), Ok(old), "size {size} at +{off}");
                // A mismatch returns what is there and changes nothing.
                let r = m.compare_exchange(a, size, old ^ 1, 0x55);
                assert_eq!(r, Ok(Err(old)), "size {size} at +{off}");
                assert_eq!(m.atomic_load(a, size), Ok(old));
                // A match stores, modulo the size.
                let new = 0x0102_0304_0506_0708u64;
                assert_eq!(m.compare_exchange(a, size, old | !mk, new), Ok(Ok(old)), "size {size} at +{off}");
                assert_eq!(m.atomic_load(a, size), Ok(new & mk));
                // The bytes around are untouched.
                assert_eq!(m.read_u8(a - 1).unwrap(), 0xee);
                assert_eq!(m.read_u8(a + u64::from(size)).unwrap(), 0xee);
            }
        }
        // 16 bytes, aligned only.
        m.write(0x2000, &7u128.to_le_bytes()).unwrap();
        let big = (9u128 << 64) | 1;
        if has_cas16() {
            assert_eq!(m.compare_exchange_u128(0x2000, 6, big), Ok(Err(7)));
            assert_eq!(m.compare_exchange_u128(0x2000, 7, big), Ok(Ok(7)));
            assert_eq!(m.read_u64(0x2000).unwrap(), 1);
            assert_eq!(m.read_u64(0x2008).unwrap(), 9);
        }
        assert_eq!(m.compare_exchange_u128(0x2008, 0, 0), Err(MemError::NotAtomic { addr: 0x2008, len: 16 }));
        // Sizes other than 1, 2, 4, 8 are refused.
        assert!(matches!(m.compare_exchange(0x2000, 3, 0, 0), Err(MemError::NotAtomic { .. })));
        assert!(matches!(m.atomic_load(0x2000, 16), Err(MemError::NotAtomic { .. })));
    }

    #[test]
    fn only_writable_ram_takes_part() {
        let mut m = GuestMemory::new(MIB).unwrap();
        m.add_rom("bios", 0xffff_0000, 0x10000, &[1, 2, 3, 4]).unwrap();
        // ROM, outside (MMIO), across the end of RAM.
        assert!(matches!(m.compare_exchange(0xffff_0000, 4, 0x0403_0201, 0), Err(MemError::ReadOnly { .. })));
        assert_eq!(m.read_u32(0xffff_0000).unwrap(), 0x0403_0201);
        assert!(matches!(m.compare_exchange(0xfee0_0000, 4, 0, 1), Err(MemError::Unmapped { .. })));
        assert!(matches!(m.atomic_load(0xfee0_0000, 4), Err(MemError::Unmapped { .. })));
        assert!(matches!(m.compare_exchange(MIB - 2, 4, 0, 1), Err(MemError::Unmapped { .. })));
        assert!(matches!(m.compare_exchange(u64::MAX - 1, 8, 0, 1), Err(MemError::Unmapped { .. })));
        assert!(matches!(m.compare_exchange_u128(MIB - 8, 0, 1), Err(MemError::Unmapped { .. })));
        assert!(matches!(m.fetch_or(0xffff_0000, 1, 0x80), Err(MemError::ReadOnly { .. })));
        // Read-only shadow pages refuse, as `write` does.
        m.set_shadow_read_only(0xf_0000, 0x1_0000, true);
        assert!(matches!(m.compare_exchange(0xf_0010, 4, 0, 1), Err(MemError::ReadOnly { addr: 0xf_0010, .. })));
        assert!(matches!(m.compare_exchange(0xe_fffe, 4, 0, 1), Err(MemError::ReadOnly { addr: 0xf_0000, .. })));
        assert_eq!(m.read_u32(0xf_0010).unwrap(), 0);
        m.set_shadow_read_only(0xf_0000, 0x1_0000, false);
        assert_eq!(m.compare_exchange(0xf_0010, 4, 0, 1), Ok(Ok(0)));
    }

    #[test]
    fn fetch_or_and_and_return_the_old_value() {
        let m = GuestMemory::new(MIB).unwrap();
        m.write_u64(0x3000, 0x21).unwrap();
        assert_eq!(m.fetch_or(0x3000, 8, 0x60), Ok(0x21));
        assert_eq!(m.fetch_and(0x3000, 8, !0x20), Ok(0x61));
        assert_eq!(m.read_u64(0x3000).unwrap(), 0x41);
        assert_eq!(m.fetch_or(0x3004, 4, 1 << 40), Ok(0), "bits past the size are dropped");
        assert_eq!(m.read_u64(0x3000).unwrap(), 0x41);
        assert_eq!(m.fetch_or(0x3005, 1, 2), Ok(0));
        assert_eq!(m.read_u64(0x3000).unwrap(), 0x0200_0000_0041);
    }

    #[test]
    fn a_successful_exchange_invalidates_code_and_a_failed_one_does_not() {
        let m = GuestMemory::new(MIB).unwrap();
        let w = m.code_watch();
        m.mark_code_page(0x5000);
        m.mark_code_page(0x6000);
        w.take();
        assert_eq!(m.compare_exchange(0x5010, 4, 1, 2), Ok(Err(0)));
        assert!(!w.pending());
        // The same value back: no bytes change, the code stays.
        assert_eq!(m.compare_exchange(0x5010, 4, 0, 0), Ok(Ok(0)));
        assert!(!w.pending());
        assert_eq!(m.compare_exchange(0x5010, 4, 0, 2), Ok(Ok(0)));
        assert_eq!(w.take(), CodeChanges { written: vec![0x5000], ..Default::default() });
        // A misaligned exchange across two code pages reaches both.
        if split_locks_usable() {
            m.mark_code_page(0x5000);
            w.take();
            assert_eq!(m.compare_exchange(0x5ffe, 4, 0, 0xffff_ffff), Ok(Ok(0)));
            let mut written = w.take().written;
            written.sort_unstable();
            assert_eq!(written, [0x5000, 0x6000]);
        }
        // 16 bytes and fetch_or too.
        m.mark_code_page(0x5000);
        w.take();
        if has_cas16() {
            assert_eq!(m.compare_exchange_u128(0x5100, 0, 1), Ok(Ok(0)));
            assert_eq!(w.take().written, [0x5000]);
            m.mark_code_page(0x5000);
            w.take();
        }
        assert_eq!(m.fetch_or(0x5200, 8, 0), Ok(0));
        assert!(!w.pending());
        assert_eq!(m.fetch_or(0x5200, 8, 1), Ok(0));
        assert_eq!(w.take().written, [0x5000]);
        assert_eq!(PAGE_SIZE, 0x1000);
    }

    /// Four threads add to one counter through compare-exchange loops, at
    /// an aligned address and at one that straddles a cache line: no
    /// update is lost.
    #[test]
    fn concurrent_exchanges_lose_nothing() {
        let m = Arc::new(GuestMemory::new(MIB).unwrap());
        let addrs: &[u64] = if split_locks_usable() { &[0x4000, 0x403e] } else { &[0x4000] };
        const N: u64 = 20_000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..N {
                        for &a in addrs {
                            let mut cur = m.atomic_load(a, 4).unwrap();
                            while let Err(now) = m.compare_exchange(a, 4, cur, cur + 1).unwrap() {
                                cur = now;
                            }
                        }
                        m.fetch_or(0x4100, 8, 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for &a in addrs {
            assert_eq!(m.read_u32(a).unwrap(), 4 * N as u32, "{a:#x}");
        }
        assert_eq!(m.read_u64(0x4100).unwrap(), 1);
    }
}
