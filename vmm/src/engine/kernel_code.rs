//! Finding a running 64-bit kernel's code from the CPU state, for split
//! execution of a kernel the host did not load (a BIOS boot, a kernel that
//! decompresses itself).
//!
//! Every way from user mode into the kernel goes through an entry point
//! the CPU state names: the IDT's gates (exceptions, interrupts, `int n`)
//! and the SYSCALL and SYSENTER targets (MSRs LSTAR, CSTAR and
//! SYSENTER_EIP). Each is translated through the guest's page tables (the
//! ones in force; under page-table isolation the user tables, which map
//! the entry code too). A page is kernel code if it is present,
//! supervisor-only, executable and read-only: the kernel's text once it is
//! write-protected (its data is writable or, with EFER.NXE, not
//! executable). Around each entry point the run of such pages is taken,
//! up to [`MAX_RUN_PAGES`] each way. Hiding those physical pages from KVM
//! stops the vCPU at the first kernel instruction after any entry from
//! user mode. User pages are never taken. An entry point on writable code
//! fails the scan: the kernel has not finished booting (Linux frees its
//! init code, which early gates still lead to, and then write-protects its
//! text, before it starts init; user code before that, such as a module
//! loader it runs, must not have pages hidden that are then freed and
//! reused). The walk sets accessed bits in the page tables it reads, as
//! the processor's own walks do.

use std::collections::BTreeSet;

use cpu::state::{cr, CpuState};
use mmu::{Access, GuestMemory, PagingCtx, PagingMode, Privilege};

const PAGE: u64 = 0x1000;

/// Pages taken around an entry point at most, each way (64 MiB).
pub const MAX_RUN_PAGES: u64 = 16 * 1024;

/// The parts of the CPU state that name the kernel's entry points: a
/// change (a new IDT, a SYSCALL target written) calls for another scan.
/// The address space does not count: the kernel's half is the same in
/// every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRegisters {
    idt_base: u64,
    idt_limit: u32,
    lstar: u64,
    cstar: u64,
    sysenter_eip: u64,
}

impl EntryRegisters {
    pub fn of(s: &CpuState) -> Self {
        EntryRegisters {
            idt_base: s.idtr.base,
            idt_limit: s.idtr.limit,
            lstar: s.msr.lstar,
            cstar: s.msr.cstar,
            sysenter_eip: s.msr.sysenter_eip,
        }
    }
}

/// Why no kernel code was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFound {
    /// Not in long mode with paging: the scan knows 64-bit kernels only.
    NotLongMode,
    /// No IDT gate or SYSCALL/SYSENTER target leads to kernel code.
    NoEntryPoints,
    /// An entry point leads to writable code: the kernel's text is not
    /// write-protected (yet).
    WritableCode(u64),
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotFound::NotLongMode => write!(f, "the guest is not in long mode with paging"),
            NotFound::NoEntryPoints => write!(f, "no IDT gate or SYSCALL/SYSENTER target leads to supervisor code"),
            NotFound::WritableCode(at) => {
                write!(f, "entry point {at:#x} is on writable code (the kernel's text is not write-protected yet)")
            }
        }
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCode {
    /// Physical page addresses of the kernel's code.
    pub pages: BTreeSet<u64>,
    /// Entry points that lead to kernel code.
    pub entries: usize,
    /// Entry points that lead elsewhere (not present, user or
    /// non-executable pages), left alone.
    pub skipped: usize,
}

impl KernelCode {
    /// The pages as sorted, disjoint physical ranges (start, end).
    pub fn ranges(pages: &BTreeSet<u64>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &p in pages {
            match out.last_mut() {
                Some((_, end)) if *end == p => *end += PAGE,
                _ => out.push((p, p + PAGE)),
            }
        }
        out
    }
}

/// A page as a kernel-code candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageKind {
    /// Present, supervisor-only, executable and read-only.
    Text,
    /// Present, supervisor-only and executable, but writable.
    WritableCode,
    /// Anything else (not present, user, not executable).
    Other,
}

/// The guest's page tables, read as the kernel sees them.
struct Walker<'a> {
    ctx: PagingCtx,
    mem: &'a GuestMemory,
}

impl Walker<'_> {
    /// The physical page of `lin` and what it holds.
    fn page(&self, lin: u64) -> (PageKind, u64) {
        // A supervisor read with EFLAGS.AC never fails on rights: only
        // "not present" (or a broken table) is an error.
        match self.ctx.translate(self.mem, lin, Access::Read, Privilege::SupervisorAc) {
            Ok(t) if t.user || (t.nx && self.ctx.nxe) => (PageKind::Other, 0),
            Ok(t) if t.writable => (PageKind::WritableCode, t.phys & !(PAGE - 1)),
            Ok(t) => (PageKind::Text, t.phys & !(PAGE - 1)),
            Err(_) => (PageKind::Other, 0),
        }
    }

    fn read_u64(&self, lin: u64) -> Option<u64> {
        let t = self.ctx.translate(self.mem, lin, Access::Read, Privilege::SupervisorAc).ok()?;
        if lin & (PAGE - 1) > PAGE - 8 {
            return None;
        }
        self.mem.read_u64(t.phys).ok()
    }
}

/// The kernel's high half: entry points elsewhere are not followed.
fn kernel_half(lin: u64) -> bool {
    lin >= 0xffff_8000_0000_0000
}

/// Scan the kernel's entry points named by `s`, through the page tables
/// of `ctx` (the CPU's paging context) in `mem`.
pub fn find(s: &CpuState, ctx: PagingCtx, mem: &GuestMemory) -> Result<KernelCode, NotFound> {
    if !s.long_mode() || s.cr0 & cr::CR0_PG == 0 || !matches!(ctx.mode, PagingMode::Level4 | PagingMode::Level5) {
        return Err(NotFound::NotLongMode);
    }
    let w = Walker { ctx, mem };
    let mut targets = Vec::new();
    // 64-bit gates: 16 bytes each, present bit 47, type in bits 40-43
    // (interrupt 0xE or trap 0xF), the offset in three parts.
    let gates = (u64::from(s.idtr.limit) + 1) / 16;
    for v in 0..gates.min(256) {
        let at = s.idtr.base.wrapping_add(v * 16);
        let (Some(lo), Some(hi)) = (w.read_u64(at), w.read_u64(at.wrapping_add(8))) else { continue };
        let present = lo & (1 << 47) != 0;
        let kind = (lo >> 40) & 0xf;
        if present && (kind == 0xe || kind == 0xf) {
            targets.push((lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi << 32));
        }
    }
    targets.extend([s.msr.lstar, s.msr.cstar, s.msr.sysenter_eip].into_iter().filter(|&a| a != 0));
    let mut found = KernelCode::default();
    for lin in targets {
        let page = lin & !(PAGE - 1);
        let (kind, phys) = if kernel_half(lin) { w.page(page) } else { (PageKind::Other, 0) };
        if kind == PageKind::Other {
            tracing::debug!(target: "accel", "kernel entry point {lin:#x} does not lead to kernel code");
            found.skipped += 1;
            continue;
        }
        if kind == PageKind::WritableCode {
            return Err(NotFound::WritableCode(lin));
        }
        found.entries += 1;
        if !found.pages.insert(phys) {
            continue;
        }
        for step in [PAGE.wrapping_neg(), PAGE] {
            let mut at = page;
            for _ in 0..MAX_RUN_PAGES {
                at = at.wrapping_add(step);
                if !kernel_half(at) {
                    break;
                }
                match w.page(at) {
                    (PageKind::Text, p) => {
                        if !found.pages.insert(p) {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
    }
    if found.entries == 0 {
        return Err(NotFound::NoEntryPoints);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    use cpu::state::cr;

    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const NX: u64 = 1 << 63;

    /// Kernel virtual base of the test mappings, and its physical base.
    const KVA: u64 = 0xffff_ffff_8100_0000;
    const KPA: u64 = 0x100_0000;

    /// A 4-level table at 0x1000 mapping 512 pages from `KVA` with the
    /// flags `flags(i)` for page `i` (to `KPA + i * 4 KiB`).
    fn tables(mem: &GuestMemory, flags: impl Fn(u64) -> u64) -> PagingCtx {
        let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        let idx = |shift: u32| (KVA >> shift) & 0x1ff;
        // The upper levels allow everything: the last decides.
        mem.write_u64(pml4 + idx(39) * 8, pdpt | P | RW | US).unwrap();
        mem.write_u64(pdpt + idx(30) * 8, pd | P | RW | US).unwrap();
        mem.write_u64(pd + idx(21) * 8, pt | P | RW | US).unwrap();
        for i in 0..512 {
            mem.write_u64(pt + i * 8, (KPA + i * PAGE) | flags(i)).unwrap();
        }
        PagingCtx::level4(pml4)
    }

    fn long_mode_state() -> CpuState {
        let mut s = CpuState::reset();
        s.cr0 |= cr::CR0_PG | cr::CR0_PE;
        s.cr4 |= cr::CR4_PAE;
        s.efer |= cr::EFER_LME | cr::EFER_LMA | cr::EFER_NXE;
        s.cr3 = 0x1000;
        s
    }

    /// An IDT at page `idt_page` of the mapping with `targets` as
    /// interrupt gates (vectors 0, 1, ...).
    fn idt(mem: &GuestMemory, s: &mut CpuState, idt_page: u64, targets: &[u64]) {
        let base = KPA + idt_page * PAGE;
        for (v, &t) in targets.iter().enumerate() {
            let lo = (t & 0xffff) | (0x10 << 16) | (0x8e << 40) | ((t >> 16) & 0xffff) << 48;
            mem.write_u64(base + v as u64 * 16, lo).unwrap();
            mem.write_u64(base + v as u64 * 16 + 8, t >> 32).unwrap();
        }
        s.idtr.base = KVA + idt_page * PAGE;
        s.idtr.limit = 256 * 16 - 1;
    }

    #[test]
    fn the_read_only_executable_run_around_each_entry_point_is_found() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        // Pages 10-19 and 30: text (read-only, executable); 20: data
        // (NX); 21: a user page; 40: the IDT; 50: writable code.
        let ctx = tables(&mem, |i| match i {
            10..=19 | 30 => P,
            21 => P | US,
            50 => P | RW,
            _ => P | RW | NX,
        });
        let mut s = long_mode_state();
        let gates = [KVA + 12 * PAGE + 0x40, KVA + 30 * PAGE + 8, KVA + 21 * PAGE, KVA + 13 * PAGE];
        idt(&mem, &mut s, 40, &gates);
        s.msr.lstar = KVA + 19 * PAGE + 0x80;
        let found = find(&s, ctx, &mem).unwrap();
        assert_eq!((found.entries, found.skipped), (4, 1), "the user page's gate is left alone");
        assert_eq!(
            KernelCode::ranges(&found.pages),
            [(KPA + 10 * PAGE, KPA + 20 * PAGE), (KPA + 30 * PAGE, KPA + 31 * PAGE)],
            "the text around each entry point"
        );
        // Code not yet write-protected: not yet.
        s.msr.cstar = KVA + 50 * PAGE;
        assert_eq!(find(&s, ctx, &mem), Err(NotFound::WritableCode(KVA + 50 * PAGE)));
    }

    #[test]
    fn without_long_mode_or_entry_points_nothing_is_found() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let ctx = tables(&mem, |_| P | RW | NX);
        let mut s = long_mode_state();
        // Every gate leads to a non-executable page; LSTAR to a user address.
        idt(&mem, &mut s, 40, &[KVA + 5 * PAGE]);
        s.msr.lstar = 0x40_0000;
        assert_eq!(find(&s, ctx, &mem), Err(NotFound::NoEntryPoints));
        let real = CpuState::reset();
        let off = PagingCtx { mode: PagingMode::Off, ..ctx };
        assert_eq!(find(&real, off, &mem), Err(NotFound::NotLongMode));
    }

    #[test]
    fn entry_registers_change_with_the_idt_and_msrs_but_not_the_address_space() {
        let mut s = long_mode_state();
        let a = EntryRegisters::of(&s);
        s.cr3 = 0x9000;
        assert_eq!(a, EntryRegisters::of(&s));
        s.msr.lstar = KVA;
        assert_ne!(a, EntryRegisters::of(&s));
    }
}
