//! The addresses a region's code holds, as relocations.
//!
//! A region calls the interpreter's handlers and a few helpers of
//! [`crate::ctx`], the memory helpers' entries ([`AccessCalls`]) and
//! entries of its own fallback table. None of these is written into the
//! code as a number: the translator names each one ([`Import`]) as an
//! external symbol, Cranelift leaves an 8-byte absolute relocation where
//! the code loads it, and [`link`] writes the addresses of this process
//! there before the code runs. The code bytes themselves then depend on
//! the guest instructions and the configuration alone, so they can be
//! kept between runs ([`crate::disk`]) and linked again in another
//! process, where every one of these addresses differs.

use cranelift_codegen::ir::UserExternalName;

use cpu::Decoded;

use crate::ctx;
use crate::translate::AccessCalls;

/// A helper of [`crate::ctx`] that translated code calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Helper {
    Fallback = 0,
    StateFlags = 1,
    Pcmpistri = 2,
    HostCopy = 3,
    HostFill = 4,
    Sti = 5,
    StiExit = 6,
    DataTlbChanged = 7,
    Rdtsc = 8,
    Udiv128 = 9,
    Crc32c = 10,
    Clmul = 11,
    Idiv128 = 12,
    Pcmpestri = 13,
}

impl Helper {
    const ALL: [Helper; 14] = [
        Helper::Fallback,
        Helper::StateFlags,
        Helper::Pcmpistri,
        Helper::HostCopy,
        Helper::HostFill,
        Helper::Sti,
        Helper::StiExit,
        Helper::DataTlbChanged,
        Helper::Rdtsc,
        Helper::Udiv128,
        Helper::Crc32c,
        Helper::Clmul,
        Helper::Idiv128,
        Helper::Pcmpestri,
    ];

    /// The helper's address in this process.
    fn addr(self) -> u64 {
        (match self {
            Helper::Fallback => ctx::fallback as *const (),
            Helper::StateFlags => ctx::state_flags as *const (),
            Helper::Pcmpistri => ctx::pcmpistri as *const (),
            Helper::HostCopy => ctx::host_copy as *const (),
            Helper::HostFill => ctx::host_fill as *const (),
            Helper::Sti => ctx::sti as *const (),
            Helper::StiExit => ctx::sti_exit as *const (),
            Helper::DataTlbChanged => ctx::data_tlb_changed as *const (),
            Helper::Rdtsc => ctx::rdtsc as *const (),
            Helper::Udiv128 => ctx::udiv128 as *const (),
            Helper::Crc32c => ctx::crc32c as *const (),
            Helper::Clmul => ctx::clmul as *const (),
            Helper::Idiv128 => ctx::idiv128 as *const (),
            Helper::Pcmpestri => ctx::pcmpestri as *const (),
        }) as usize as u64
    }
}

/// An address a region's code holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Import {
    Helper(Helper),
    /// [`AccessCalls::load`].
    Load,
    /// [`AccessCalls::load_rmw`].
    LoadRmw,
    /// [`AccessCalls::store`].
    Store,
    /// The region's fallback table; the relocation's addend picks the entry.
    Fallbacks,
    /// The guest page of position-independent code
    /// ([`crate::translate::RegionSpec::guest_base`]); the addend is the
    /// guest address's distance from it.
    GuestBase,
}

/// Namespaces of the symbols: helpers by number, and the rest.
const NS_HELPER: u32 = 1;
const NS_OTHER: u32 = 2;

impl Import {
    /// The symbol that names it in Cranelift IR.
    pub fn name(self) -> UserExternalName {
        match self {
            Import::Helper(h) => UserExternalName::new(NS_HELPER, h as u32),
            Import::Load => UserExternalName::new(NS_OTHER, 0),
            Import::LoadRmw => UserExternalName::new(NS_OTHER, 1),
            Import::Store => UserExternalName::new(NS_OTHER, 2),
            Import::Fallbacks => UserExternalName::new(NS_OTHER, 3),
            Import::GuestBase => UserExternalName::new(NS_OTHER, 4),
        }
    }

    /// The import a symbol names, if it is one.
    pub fn from_name(n: &UserExternalName) -> Option<Import> {
        match (n.namespace, n.index) {
            (NS_HELPER, i) => Helper::ALL.get(i as usize).map(|h| Import::Helper(*h)),
            (NS_OTHER, 0) => Some(Import::Load),
            (NS_OTHER, 1) => Some(Import::LoadRmw),
            (NS_OTHER, 2) => Some(Import::Store),
            (NS_OTHER, 3) => Some(Import::Fallbacks),
            (NS_OTHER, 4) => Some(Import::GuestBase),
            _ => None,
        }
    }

    /// Its number in a kept region ([`crate::disk`]).
    pub fn code(self) -> u32 {
        let n = self.name();
        n.namespace << 16 | n.index
    }

    /// The import numbered `code` by [`Import::code`].
    pub fn from_code(code: u32) -> Option<Import> {
        Import::from_name(&UserExternalName::new(code >> 16, code & 0xffff))
    }
}

/// One place in a region's code that holds an address: the 8 bytes at
/// `offset` become the import's address plus `addend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloc {
    pub offset: u32,
    pub import: Import,
    pub addend: i64,
}

/// Write this process's addresses into `code` at its relocations: the
/// memory helpers' entries of `access`, the fallback table `fallbacks`
/// (an addend past its end is refused) and the guest page `guest_base`.
/// Fails, leaving `code` in part written, on a relocation outside the code.
pub fn link(
    code: &mut [u8],
    relocs: &[Reloc],
    access: &AccessCalls,
    fallbacks: &[Decoded],
    guest_base: u64,
) -> Result<(), String> {
    let table = fallbacks.as_ptr() as usize as u64;
    let table_bytes = std::mem::size_of_val(fallbacks) as i64;
    for r in relocs {
        let base = match r.import {
            Import::Helper(h) => h.addr(),
            Import::Load => access.load as u64,
            Import::LoadRmw => access.load_rmw as u64,
            Import::Store => access.store as u64,
            Import::Fallbacks => {
                if r.addend < 0 || r.addend >= table_bytes || r.addend % std::mem::size_of::<Decoded>() as i64 != 0 {
                    return Err(format!("a fallback entry at {} outside a table of {table_bytes} bytes", r.addend));
                }
                table
            }
            Import::GuestBase => guest_base,
        };
        let at = r.offset as usize;
        let len = code.len();
        let slot =
            code.get_mut(at..at + 8).ok_or_else(|| format!("a relocation at {at} outside code of {len} bytes"))?;
        slot.copy_from_slice(&base.wrapping_add(r.addend as u64).to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_survive_their_names_and_codes() {
        let mut all: Vec<Import> = Helper::ALL.iter().map(|h| Import::Helper(*h)).collect();
        all.extend([Import::Load, Import::LoadRmw, Import::Store, Import::Fallbacks, Import::GuestBase]);
        for i in all {
            assert_eq!(Import::from_name(&i.name()), Some(i));
            assert_eq!(Import::from_code(i.code()), Some(i));
        }
        assert_eq!(Import::from_code(NS_HELPER << 16 | 99), None);
        assert_eq!(Import::from_code(7 << 16), None);
    }

    #[test]
    fn linking_writes_addresses_and_refuses_bad_places() {
        let access = AccessCalls { load: 0x1000, load_rmw: 0x2000, store: 0x3000 };
        let table = vec![Decoded::new(iced_x86::Instruction::default()); 2];
        let size = std::mem::size_of::<Decoded>() as i64;
        let mut code = vec![0u8; 32];
        let relocs = [
            Reloc { offset: 0, import: Import::Store, addend: 4 },
            Reloc { offset: 8, import: Import::Fallbacks, addend: size },
            Reloc { offset: 16, import: Import::Helper(Helper::Rdtsc), addend: 0 },
        ];
        link(&mut code, &relocs, &access, &table, 0).unwrap();
        let word = |at: usize| u64::from_le_bytes(code[at..at + 8].try_into().unwrap());
        assert_eq!(word(0), 0x3004);
        assert_eq!(word(8), table.as_ptr() as u64 + size as u64);
        assert_eq!(word(16), ctx::rdtsc as *const () as usize as u64);
        assert_eq!(word(24), 0);
        let past = [Reloc { offset: 0, import: Import::Fallbacks, addend: 2 * size }];
        assert!(link(&mut code, &past, &access, &table, 0).is_err());
        let outside = [Reloc { offset: 28, import: Import::Load, addend: 0 }];
        assert!(link(&mut code, &outside, &access, &table, 0).is_err());
    }
}
