//! The x86 page-table walker (SDM Vol. 3A chapter 4).
//!
//! Supports 32-bit paging (with PSE and PSE-36), PAE paging, and 4- and 5-level
//! IA-32e paging. Permission checks follow SDM §4.6: U/S and R/W at every level,
//! CR0.WP for supervisor writes, NX when EFER.NXE is set, SMEP and SMAP, and
//! the protection keys of IA-32e paging (§4.6.2: PKRU for user-mode
//! addresses with CR4.PKE, IA32_PKRS for supervisor-mode addresses with
//! CR4.PKS).
//! Accessed bits are set on every entry used and the dirty bit on the final
//! entry of a write, as hardware does. A fault carries the exact error code.
//!
//! The accessed and dirty updates are locked operations (SDM Vol. 3A
//! "Automatic Locking"): each is a compare-exchange of the entry as the walk read it
//! with the same entry plus the bits, so that an update by another
//! processor or by the guest's own code (an OS clearing accessed bits, or
//! changing the entry) is never overwritten. When the entry changed since
//! the walk read it, the walk starts again from the top with what the
//! tables hold now, as a processor does, and no bit is set in an entry the
//! translation did not use.

use crate::memory::{GuestMemory, MemError};

/// Physical-address width this CPU model reports (CPUID 0x8000_0008).
pub const MAXPHYADDR: u32 = 40;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_G: u64 = 1 << 8;
const PTE_XD: u64 = 1 << 63;
/// Bits 62:59 of an IA-32e leaf entry: its protection key, with CR4.PKE or
/// CR4.PKS.
const PKEY_SHIFT: u32 = 59;

/// Page-fault error-code bits (SDM §4.7).
pub mod pf {
    /// The fault was a protection violation (0: the page was not present).
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access came from user mode.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch.
    pub const I: u32 = 1 << 4;
    /// The protection-key rights of the page's key denied the data access.
    pub const PK: u32 = 1 << 5;
}

/// The protection keys in force (SDM §4.6.2), for IA-32e paging: the
/// rights registers each key of a page indexes, two bits a key (bit 2i
/// access-disable, bit 2i+1 write-disable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProtectionKeys {
    /// CR4.PKE: user-mode addresses have keys, whose rights are in `pkru`.
    pub pke: bool,
    /// CR4.PKS: supervisor-mode addresses have keys, whose rights are in `pkrs`.
    pub pks: bool,
    /// The PKRU register.
    pub pkru: u32,
    /// The IA32_PKRS MSR (bits 31:0; the rest are reserved).
    pub pkrs: u32,
}

impl ProtectionKeys {
    /// No protection keys (CR4.PKE and CR4.PKS clear).
    pub const OFF: ProtectionKeys = ProtectionKeys { pke: false, pks: false, pkru: 0, pkrs: 0 };

    /// Whether the rights of key `key` deny a data `access` (never an
    /// instruction fetch) at `privilege` to a page that is user-mode
    /// (`user_page`) or not. `wp` is CR0.WP, which makes the write-disable
    /// bit bind supervisor-mode writes.
    pub fn deny(&self, key: u8, user_page: bool, access: Access, privilege: Privilege, wp: bool) -> bool {
        let rights = match (user_page, self.pke, self.pks) {
            (true, true, _) => self.pkru,
            (false, _, true) => self.pkrs,
            _ => return false,
        };
        let ad = rights >> (2 * u32::from(key & 15)) & 1 != 0;
        let wd = rights >> (2 * u32::from(key & 15) + 1) & 1 != 0;
        match access {
            Access::Execute => false,
            Access::Read => ad,
            Access::Write => ad || (wd && (privilege == Privilege::User || wp)),
        }
    }
}

/// Kind of access being translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Execute,
}

/// Which page-table format is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG clear: linear equals physical.
    Off,
    /// 32-bit paging; `pse` is CR4.PSE.
    Legacy { pse: bool },
    /// PAE paging (CR4.PAE, not long mode).
    Pae,
    /// 4-level IA-32e paging.
    Level4,
    /// 5-level IA-32e paging (CR4.LA57).
    Level5,
}

/// Everything besides the address that decides a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagingCtx {
    pub mode: PagingMode,
    /// CR3 (the table base; PCID bits are ignored here).
    pub cr3: u64,
    /// CR0.WP.
    pub wp: bool,
    /// EFER.NXE.
    pub nxe: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// The protection keys (4- and 5-level paging only).
    pub keys: ProtectionKeys,
}

/// A page fault: the error code and the faulting linear address (for CR2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    pub addr: u64,
    pub error_code: u32,
}

/// The privilege of an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// CPL 3, explicit access.
    User,
    /// CPL 0–2 with EFLAGS.AC clear, or an implicit supervisor access
    /// (descriptor tables, TSS): SMAP applies.
    Supervisor,
    /// CPL 0–2 with EFLAGS.AC set: SMAP is overridden for explicit data accesses.
    SupervisorAc,
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the byte.
    pub phys: u64,
    /// Size of the page that maps it (4 KiB, 2 MiB, 4 MiB or 1 GiB).
    pub page_size: u64,
    /// User-accessible at every level.
    pub user: bool,
    /// Writable at every level.
    pub writable: bool,
    /// Execute-disabled at some level (with NXE).
    pub nx: bool,
    /// The final entry's dirty bit is set (now or before).
    pub dirty: bool,
    /// The final entry is global.
    pub global: bool,
    /// The page's protection key (bits 62:59 of the final entry), when
    /// IA-32e paging with CR4.PKE or CR4.PKS gives pages keys.
    pub pkey: Option<u8>,
}

#[derive(Clone, Copy)]
struct Rights {
    user: bool,
    writable: bool,
    nx: bool,
}

/// Why a walk stopped without a translation.
enum Stop {
    Fault(PageFault),
    /// An entry the walk used changed before its accessed or dirty bit
    /// could be set: walk again.
    Changed,
}

impl From<PageFault> for Stop {
    fn from(f: PageFault) -> Self {
        Stop::Fault(f)
    }
}

impl PagingCtx {
    /// Paging off (CR0.PG clear), with no protection feature: what a CPU
    /// has after reset.
    pub const OFF: PagingCtx = PagingCtx {
        mode: PagingMode::Off,
        cr3: 0,
        wp: false,
        nxe: false,
        smep: false,
        smap: false,
        keys: ProtectionKeys::OFF,
    };

    /// 4-level paging from the tables at `cr3`, with CR0.WP and EFER.NXE
    /// (as 64-bit kernels run) and no SMEP, SMAP or protection keys.
    pub const fn level4(cr3: u64) -> PagingCtx {
        PagingCtx { mode: PagingMode::Level4, cr3, wp: true, nxe: true, ..PagingCtx::OFF }
    }

    /// Translate `lin` for `access` at `privilege`, setting A/D bits in guest memory.
    pub fn translate(
        &self,
        mem: &GuestMemory,
        lin: u64,
        access: Access,
        privilege: Privilege,
    ) -> Result<Translation, PageFault> {
        loop {
            match self.walk(mem, lin, access, privilege) {
                Ok(t) => return Ok(t),
                Err(Stop::Fault(f)) => return Err(f),
                // Another writer changed an entry between the walk's read
                // and its locked update: every change is progress made
                // elsewhere, so the loop ends.
                Err(Stop::Changed) => continue,
            }
        }
    }

    fn walk(&self, mem: &GuestMemory, lin: u64, access: Access, privilege: Privilege) -> Result<Translation, Stop> {
        match self.mode {
            PagingMode::Off => Ok(Translation {
                phys: lin,
                page_size: 4096,
                user: true,
                writable: true,
                nx: false,
                dirty: true,
                global: false,
                pkey: None,
            }),
            PagingMode::Legacy { pse } => self.walk_legacy(mem, lin as u32, access, privilege, pse),
            PagingMode::Pae => self.walk_long(mem, lin & 0xffff_ffff, access, privilege, 0),
            PagingMode::Level4 => self.walk_long(mem, lin, access, privilege, 4),
            PagingMode::Level5 => self.walk_long(mem, lin, access, privilege, 5),
        }
    }

    fn fault(&self, lin: u64, access: Access, privilege: Privilege, bits: u32) -> PageFault {
        let mut ec = bits;
        if access == Access::Write {
            ec |= pf::W;
        }
        if privilege == Privilege::User {
            ec |= pf::U;
        }
        // The I/D bit is reported only when NX or SMEP makes fetches special.
        if access == Access::Execute && (self.nxe || self.smep) {
            ec |= pf::I;
        }
        PageFault { addr: lin, error_code: ec }
    }

    fn check(&self, r: Rights, lin: u64, access: Access, privilege: Privilege) -> Result<(), PageFault> {
        self.check_keyed(r, None, lin, access, privilege)
    }

    /// [`PagingCtx::check`] for a page with protection key `pkey`: a data
    /// access its key's rights deny faults with PK set (with P, and with
    /// whatever other violation the access also makes).
    fn check_keyed(
        &self,
        r: Rights,
        pkey: Option<u8>,
        lin: u64,
        access: Access,
        privilege: Privilege,
    ) -> Result<(), PageFault> {
        let pk = pkey.is_some_and(|k| self.keys.deny(k, r.user, access, privilege, self.wp));
        if pk {
            return Err(self.fault(lin, access, privilege, pf::P | pf::PK));
        }
        let denied = match (access, privilege) {
            (Access::Read, Privilege::User) => !r.user,
            (Access::Write, Privilege::User) => !r.user || !r.writable,
            (Access::Execute, Privilege::User) => !r.user || r.nx,
            (Access::Read, p) => self.smap && r.user && p == Privilege::Supervisor,
            (Access::Write, p) => (self.wp && !r.writable) || (self.smap && r.user && p == Privilege::Supervisor),
            (Access::Execute, _) => r.nx || (self.smep && r.user),
        };
        if denied {
            Err(self.fault(lin, access, privilege, pf::P))
        } else {
            Ok(())
        }
    }

    fn read_entry(mem: &GuestMemory, addr: u64, wide: bool) -> Result<u64, MemError> {
        if wide {
            mem.read_u64(addr)
        } else {
            mem.read_u32(addr).map(u64::from)
        }
    }

    /// Set `bits` in the entry at `addr` that the walk read as `entry`:
    /// a locked compare-exchange of the whole entry, which fails (walk
    /// again) when the entry changed since.
    fn set_bits(mem: &GuestMemory, addr: u64, entry: u64, bits: u64, wide: bool) -> Result<(), Stop> {
        if entry & bits == bits {
            return Ok(());
        }
        match mem.compare_exchange(addr, if wide { 8 } else { 4 }, entry, entry | bits) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Stop::Changed),
            // The entry is in ROM (or on a read-only shadow page): hardware
            // would not fault on it either, so the bits simply stay clear.
            Err(_) => Ok(()),
        }
    }

    fn walk_legacy(
        &self,
        mem: &GuestMemory,
        lin: u32,
        access: Access,
        privilege: Privilege,
        pse: bool,
    ) -> Result<Translation, Stop> {
        let lin64 = u64::from(lin);
        let not_present = self.fault(lin64, access, privilege, 0);
        let pde_addr = (self.cr3 & 0xffff_f000) | (u64::from(lin >> 22) << 2);
        let pde = Self::read_entry(mem, pde_addr, false).map_err(|_| not_present)?;
        if pde & PTE_P == 0 {
            return Err(not_present.into());
        }
        if pse && pde & PTE_PS != 0 {
            // 4 MiB page; PSE-36 puts physical bits 39:32 in PDE bits 20:13.
            if pde & (1 << 21) != 0 {
                return Err(self.fault(lin64, access, privilege, pf::P | pf::RSVD).into());
            }
            let r = Rights { user: pde & PTE_US != 0, writable: pde & PTE_RW != 0, nx: false };
            self.check(r, lin64, access, privilege)?;
            let d = if access == Access::Write { PTE_A | PTE_D } else { PTE_A };
            Self::set_bits(mem, pde_addr, pde, d, false)?;
            let base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
            return Ok(Translation {
                phys: base | u64::from(lin & 0x3f_ffff),
                page_size: 4 << 20,
                user: r.user,
                writable: r.writable,
                nx: false,
                dirty: access == Access::Write || pde & PTE_D != 0,
                global: pde & PTE_G != 0,
                pkey: None,
            });
        }
        let pte_addr = (pde & 0xffff_f000) | (u64::from((lin >> 12) & 0x3ff) << 2);
        let pte = Self::read_entry(mem, pte_addr, false).map_err(|_| not_present)?;
        if pte & PTE_P == 0 {
            return Err(not_present.into());
        }
        let r = Rights { user: pde & pte & PTE_US != 0, writable: pde & pte & PTE_RW != 0, nx: false };
        self.check(r, lin64, access, privilege)?;
        Self::set_bits(mem, pde_addr, pde, PTE_A, false)?;
        let d = if access == Access::Write { PTE_A | PTE_D } else { PTE_A };
        Self::set_bits(mem, pte_addr, pte, d, false)?;
        Ok(Translation {
            phys: (pte & 0xffff_f000) | u64::from(lin & 0xfff),
            page_size: 4096,
            user: r.user,
            writable: r.writable,
            nx: false,
            dirty: access == Access::Write || pte & PTE_D != 0,
            global: pte & PTE_G != 0,
            pkey: None,
        })
    }

    /// PAE (`levels == 0`) and IA-32e paging with 4 or 5 levels.
    fn walk_long(
        &self,
        mem: &GuestMemory,
        lin: u64,
        access: Access,
        privilege: Privilege,
        levels: u32,
    ) -> Result<Translation, Stop> {
        let not_present = self.fault(lin, access, privilege, 0);
        let rsvd = self.fault(lin, access, privilege, pf::P | pf::RSVD);
        let phys_mask = ((1u64 << MAXPHYADDR) - 1) & !0xfff;
        // Bits above MAXPHYADDR (and XD without NXE) are reserved in every entry.
        // Bits 62:52 are ignored (available to software) in IA-32e entries;
        // PAE entries reserve them.
        let mut reserved_hi = !((1u64 << MAXPHYADDR) - 1) & !PTE_XD;
        if levels != 0 {
            reserved_hi &= !(0x7ffu64 << 52);
        }
        if !self.nxe {
            reserved_hi |= PTE_XD;
        }
        let mut rights = Rights { user: true, writable: true, nx: false };
        let mut used: [(u64, u64); 5] = [(0, 0); 5];
        let mut n_used = 0;

        // The first table and the index shift of each level.
        let (mut table, mut shift, mut level) = if levels == 0 {
            // PAE: a 4-entry PDPT addressed by CR3 bits 31:5.
            let pdpte_addr = (self.cr3 & 0xffff_ffe0) | (((lin >> 30) & 3) << 3);
            let pdpte = Self::read_entry(mem, pdpte_addr, true).map_err(|_| not_present)?;
            if pdpte & PTE_P == 0 {
                return Err(not_present.into());
            }
            // PAE PDPTEs reserve bits 2:1, 8:5 and everything above MAXPHYADDR (and XD).
            if pdpte & 0x1e6 != 0 || pdpte & (!((1u64 << MAXPHYADDR) - 1) | PTE_XD) != 0 {
                return Err(rsvd.into());
            }
            (pdpte & phys_mask, 21u32, 2u32)
        } else {
            (self.cr3 & phys_mask, if levels == 5 { 48 } else { 39 }, levels)
        };

        loop {
            let entry_addr = table | (((lin >> shift) & 0x1ff) << 3);
            let entry = Self::read_entry(mem, entry_addr, true).map_err(|_| not_present)?;
            if entry & PTE_P == 0 {
                return Err(not_present.into());
            }
            if entry & reserved_hi != 0 {
                return Err(rsvd.into());
            }
            rights.user &= entry & PTE_US != 0;
            rights.writable &= entry & PTE_RW != 0;
            rights.nx |= self.nxe && entry & PTE_XD != 0;
            used[n_used] = (entry_addr, entry);
            n_used += 1;

            let large = entry & PTE_PS != 0;
            if level == 1 || (large && (level == 2 || level == 3)) {
                let page_size = 1u64 << shift;
                if large {
                    // Bits 12 (PAT) up to the page size are the frame; the rest
                    // below the page boundary is reserved.
                    let rsvd_low = (page_size - 1) & !0x1fff;
                    if entry & rsvd_low != 0 {
                        return Err(rsvd.into());
                    }
                }
                let keyed = levels != 0 && (self.keys.pke || self.keys.pks);
                let pkey = keyed.then_some((entry >> PKEY_SHIFT) as u8 & 15);
                self.check_keyed(rights, pkey, lin, access, privilege)?;
                for &(addr, e) in &used[..n_used - 1] {
                    Self::set_bits(mem, addr, e, PTE_A, true)?;
                }
                let d = if access == Access::Write { PTE_A | PTE_D } else { PTE_A };
                Self::set_bits(mem, entry_addr, entry, d, true)?;
                let frame = entry & phys_mask & !(page_size - 1);
                return Ok(Translation {
                    phys: frame | (lin & (page_size - 1)),
                    page_size,
                    user: rights.user,
                    writable: rights.writable,
                    nx: rights.nx,
                    dirty: access == Access::Write || entry & PTE_D != 0,
                    global: entry & PTE_G != 0,
                    pkey,
                });
            }
            if large {
                // PS in a PML4E/PML5E is reserved.
                return Err(rsvd.into());
            }
            table = entry & phys_mask;
            shift -= 9;
            level -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(mode: PagingMode) -> PagingCtx {
        PagingCtx { mode, cr3: 0x1000, wp: true, nxe: true, smep: false, smap: false, keys: ProtectionKeys::OFF }
    }

    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000: maps
    /// 0x40_0000 (4 KiB, user rw) -> 0x9000 and a 2 MiB page at 0x20_0000.
    fn four_level() -> GuestMemory {
        let m = GuestMemory::new(1 << 22).unwrap();
        m.write_u64(0x1000, 0x2000 | PTE_P | PTE_RW | PTE_US).unwrap();
        m.write_u64(0x2000, 0x3000 | PTE_P | PTE_RW | PTE_US).unwrap();
        m.write_u64(0x3000 + 8, 0x20_0000 | PTE_P | PTE_PS).unwrap(); // supervisor read-only 2M
        m.write_u64(0x3000 + 16, 0x4000 | PTE_P | PTE_RW | PTE_US).unwrap();
        m.write_u64(0x4000, 0x9000 | PTE_P | PTE_RW | PTE_US | PTE_XD).unwrap();
        m
    }

    #[test]
    fn four_level_walk_sets_accessed_and_dirty() {
        let m = four_level();
        let c = ctx(PagingMode::Level4);
        let t = c.translate(&m, 0x40_0123, Access::Write, Privilege::User).unwrap();
        assert_eq!(t.phys, 0x9123);
        assert!(t.user && t.writable && t.nx);
        assert_eq!(m.read_u64(0x4000).unwrap() & (PTE_A | PTE_D), PTE_A | PTE_D);
        assert_eq!(m.read_u64(0x1000).unwrap() & PTE_A, PTE_A);
        let t = c.translate(&m, 0x21_2345, Access::Read, Privilege::Supervisor).unwrap();
        assert_eq!((t.phys, t.page_size), (0x21_2345, 2 << 20));
        assert_eq!(m.read_u64(0x3008).unwrap() & PTE_D, 0);
    }

    #[test]
    fn faults_carry_exact_error_codes() {
        let m = four_level();
        let c = ctx(PagingMode::Level4);
        // Not present, user write.
        let f = c.translate(&m, 0x60_0000, Access::Write, Privilege::User).unwrap_err();
        assert_eq!(f, PageFault { addr: 0x60_0000, error_code: pf::W | pf::U });
        // User read of a supervisor page: protection.
        let f = c.translate(&m, 0x20_0000, Access::Read, Privilege::User).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::U);
        // Supervisor write to a read-only page with WP.
        let f = c.translate(&m, 0x20_0000, Access::Write, Privilege::Supervisor).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::W);
        // ... allowed without WP.
        let nowp = PagingCtx { wp: false, ..c };
        assert!(nowp.translate(&m, 0x20_0000, Access::Write, Privilege::Supervisor).is_ok());
        // Fetch from an NX page.
        let f = c.translate(&m, 0x40_0000, Access::Execute, Privilege::User).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::U | pf::I);
        // Reserved bit (XD without NXE).
        let nonx = PagingCtx { nxe: false, ..c };
        let f = nonx.translate(&m, 0x40_0000, Access::Read, Privilege::User).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::U | pf::RSVD);
    }

    #[test]
    fn smep_and_smap() {
        let m = four_level();
        m.write_u64(0x4000, 0x9000 | PTE_P | PTE_RW | PTE_US).unwrap();
        let c = PagingCtx { smep: true, smap: true, ..ctx(PagingMode::Level4) };
        let f = c.translate(&m, 0x40_0000, Access::Execute, Privilege::Supervisor).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::I);
        let f = c.translate(&m, 0x40_0000, Access::Read, Privilege::Supervisor).unwrap_err();
        assert_eq!(f.error_code, pf::P);
        assert!(c.translate(&m, 0x40_0000, Access::Read, Privilege::SupervisorAc).is_ok());
    }

    #[test]
    fn legacy_32bit_with_pse_and_pae() {
        let m = GuestMemory::new(1 << 23).unwrap();
        // 32-bit: PD at 0x1000; PDE 1 -> 4 MiB page at 0x40_0000; PDE 0 -> PT at 0x2000.
        m.write_u32(0x1004, 0x40_0000 | (PTE_P | PTE_RW | PTE_PS) as u32).unwrap();
        m.write_u32(0x1000, 0x2000 | (PTE_P | PTE_RW | PTE_US) as u32).unwrap();
        m.write_u32(0x2000 + 4 * 5, 0x7000 | (PTE_P | PTE_US) as u32).unwrap();
        let c = PagingCtx { cr3: 0x1000, ..ctx(PagingMode::Legacy { pse: true }) };
        assert_eq!(c.translate(&m, 0x41_2345, Access::Read, Privilege::Supervisor).unwrap().phys, 0x41_2345);
        assert_eq!(c.translate(&m, 0x5abc, Access::Read, Privilege::User).unwrap().phys, 0x7abc);
        let f = c.translate(&m, 0x5abc, Access::Write, Privilege::User).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::W | pf::U);
        // PAE: PDPT at 0x3000 (32-byte aligned), PD at 0x4000 mapping 2 MiB at 0.
        m.write_u64(0x3000, 0x4000 | PTE_P).unwrap();
        m.write_u64(0x4000, PTE_P | PTE_RW | PTE_PS).unwrap();
        let c = PagingCtx { cr3: 0x3000, ..ctx(PagingMode::Pae) };
        assert_eq!(c.translate(&m, 0x1_2345, Access::Write, Privilege::Supervisor).unwrap().phys, 0x1_2345);
        // A reserved PDPTE bit faults with RSVD.
        m.write_u64(0x3000, 0x4000 | PTE_P | PTE_RW).unwrap();
        let f = c.translate(&m, 0x1_2345, Access::Read, Privilege::Supervisor).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::RSVD);
    }

    /// The accessed/dirty update is a compare-exchange with the entry as
    /// the walk read it: a changed entry is left alone and walked again.
    #[test]
    fn a_changed_entry_is_not_overwritten() {
        let m = four_level();
        let pte = m.read_u64(0x4000).unwrap();
        let stale = pte | (1 << 9);
        assert!(matches!(PagingCtx::set_bits(&m, 0x4000, stale, PTE_A, true), Err(Stop::Changed)));
        assert_eq!(m.read_u64(0x4000).unwrap(), pte);
        assert!(PagingCtx::set_bits(&m, 0x4000, pte, PTE_A, true).is_ok());
        assert_eq!(m.read_u64(0x4000).unwrap(), pte | PTE_A);
        // Legacy entries are four bytes: the next entry stays untouched.
        m.write_u64(0x5000, 0x1234_5678_0000_7001).unwrap();
        assert!(PagingCtx::set_bits(&m, 0x5000, 0x7001, PTE_A | PTE_D, false).is_ok());
        assert_eq!(m.read_u64(0x5000).unwrap(), 0x1234_5678_0000_7061);
    }

    /// One thread walks with writes and clears the accessed and dirty bits
    /// after each walk, as an OS scanning for them does; another flips a
    /// software bit of the same entry. No flip is lost to a walk's update.
    #[test]
    fn accessed_and_dirty_updates_race_with_other_writers() {
        let m = std::sync::Arc::new(four_level());
        const FLIPS: u64 = 50_001;
        let flipper = {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..FLIPS {
                    let mut cur = m.read_u64(0x4000).unwrap();
                    while let Err(now) = m.compare_exchange(0x4000, 8, cur, cur ^ (1 << 9)).unwrap() {
                        cur = now;
                    }
                }
            })
        };
        let c = ctx(PagingMode::Level4);
        for _ in 0..50_000 {
            let t = c.translate(&m, 0x40_0123, Access::Write, Privilege::User).unwrap();
            assert_eq!(t.phys, 0x9123);
            m.fetch_and(0x4000, 8, !(PTE_A | PTE_D)).unwrap();
        }
        flipper.join().unwrap();
        assert_eq!(m.read_u64(0x4000).unwrap() & (1 << 9), 1 << 9, "an odd number of flips");
    }

    /// Keys come from bits 62:59 of the final IA-32e entry, only with
    /// CR4.PKE or CR4.PKS, and never in PAE paging; a denied data access
    /// reports PK, a fetch is not checked.
    #[test]
    fn protection_keys() {
        let m = four_level();
        m.write_u64(0x4000, 0x9000 | PTE_P | PTE_RW | PTE_US | 5 << PKEY_SHIFT).unwrap();
        let off = ctx(PagingMode::Level4);
        assert_eq!(off.translate(&m, 0x40_0000, Access::Read, Privilege::User).unwrap().pkey, None);
        let keys = ProtectionKeys { pke: true, pks: false, pkru: 1 << 10, pkrs: 0 };
        let c = PagingCtx { keys, ..off };
        let f = c.translate(&m, 0x40_0008, Access::Read, Privilege::User).unwrap_err();
        assert_eq!(f, PageFault { addr: 0x40_0008, error_code: pf::P | pf::U | pf::PK });
        // With a protection violation as well, PK is still reported.
        let ro = PagingCtx { keys: ProtectionKeys { pkru: 1 << 11, ..keys }, ..off };
        m.write_u64(0x4000, 0x9000 | PTE_P | PTE_US | 5 << PKEY_SHIFT).unwrap();
        let f = ro.translate(&m, 0x40_0000, Access::Write, Privilege::User).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::W | pf::U | pf::PK);
        assert_eq!(ro.translate(&m, 0x40_0000, Access::Read, Privilege::User).unwrap().pkey, Some(5));
        // Supervisor pages have keys only with PKS.
        let t = c.translate(&m, 0x21_0000, Access::Read, Privilege::Supervisor).unwrap();
        assert_eq!(t.pkey, Some(0));
        let pks = PagingCtx { keys: ProtectionKeys { pks: true, pkrs: 1, ..keys }, ..off };
        let f = pks.translate(&m, 0x21_0000, Access::Read, Privilege::Supervisor).unwrap_err();
        assert_eq!(f.error_code, pf::P | pf::PK);
        // PAE paging has no keys: it reserves bits 62:52.
        m.write_u64(0x5000, 0x6000 | PTE_P).unwrap();
        m.write_u64(0x6000, PTE_P | PTE_RW | PTE_US | PTE_PS | 5 << PKEY_SHIFT).unwrap();
        let pae = PagingCtx { mode: PagingMode::Pae, cr3: 0x5000, nxe: true, ..c };
        let t = pae.translate(&m, 0x1234, Access::Read, Privilege::User);
        assert_eq!(t.unwrap_err().error_code, pf::P | pf::U | pf::RSVD);
        m.write_u64(0x6000, PTE_P | PTE_RW | PTE_US | PTE_PS).unwrap();
        assert_eq!(pae.translate(&m, 0x1234, Access::Read, Privilege::User).unwrap().pkey, None);
    }

    /// The rights of a key: access-disable denies every data access,
    /// write-disable user writes and, with CR0.WP, supervisor writes.
    #[test]
    fn key_rights() {
        let k = ProtectionKeys { pke: true, pks: true, pkru: 0b01 << 6 | 0b10 << 8, pkrs: 0b10 << 2 };
        let (u, s) = (Privilege::User, Privilege::Supervisor);
        assert!(k.deny(3, true, Access::Read, u, true));
        assert!(k.deny(3, true, Access::Write, s, false));
        assert!(!k.deny(3, true, Access::Execute, u, true));
        assert!(!k.deny(4, true, Access::Read, u, true));
        assert!(k.deny(4, true, Access::Write, u, false));
        assert!(k.deny(4, true, Access::Write, s, true));
        assert!(!k.deny(4, true, Access::Write, s, false));
        assert!(!k.deny(3, false, Access::Read, s, true), "PKRU is for user pages");
        assert!(k.deny(1, false, Access::Write, s, true), "PKRS for supervisor pages");
        assert!(!ProtectionKeys::OFF.deny(3, true, Access::Read, u, true));
    }
}
