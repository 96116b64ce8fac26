//! Guest memory and address translation.
//!
//! - [`GuestMemory`]: guest RAM as anonymous `memmap2` mappings (low RAM below the
//!   PCI hole, high RAM from 4 GiB) plus read-only ROM regions. Every access is
//!   bounds-checked and returns a `Result`; raw host pointers leave this crate only
//!   through the audited accessors that KVM memory slots and the JIT use.
//! - Code-page tracking: a bit per guest page that holds decoded or translated
//!   code; a write to such a page queues it on every consumer's [`CodeWatch`]
//!   (one per vCPU), each of which drains its own queue.
//! - [`atomic`]: atomic accesses to guest RAM (compare-exchange of 1 to 16
//!   bytes, fetch-or/and) for the guest's locked instructions and the
//!   CPU's own locked updates, and how guest accesses are ordered on the
//!   host.
//! - [`vram`]: a display adapter's video memory, which guest memory decodes
//!   at its BAR and whose stores it tracks per page for the adapter.
//! - [`paging`]: the x86 page-table walker (32-bit, PAE, 4- and 5-level) with
//!   permission checks and accessed/dirty updates, and [`tlb`], the soft TLB.

pub mod atomic;
pub mod memory;
pub mod paging;
pub mod tlb;
pub mod vram;

pub use memory::{
    CodeChanges, CodeWatch, DirtyBitmap, DirtyLogSource, GuestMemory, MemError, RegionKind, HIGH_RAM_START, PAGE_SIZE,
    PCI_HOLE_START, VGA_WINDOW,
};
pub use paging::{Access, PageFault, PagingCtx, PagingMode, Privilege, ProtectionKeys};
pub use tlb::{Mmu, TlbLayout, TLB_LAYOUT};
pub use vram::Vram;

/// Hints the host CPU to bring the cache line at `addr` into its caches.
///
/// For host data the interpreter is about to touch (the next decoded
/// block). It reads nothing architecturally, so any address is harmless.
#[inline(always)]
pub fn prefetch<T>(addr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults, whatever the address,
    // and neither reads nor writes memory architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}
