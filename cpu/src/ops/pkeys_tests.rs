//! The protection keys (SDM Vol. 3A §4.6.2): CPUID and CR4 per model,
//! RDPKRU and WRPKRU, IA32_PKRS, and the rights PKRU and PKRS give data
//! accesses to the pages of each key, with the PK bit of the #PF error
//! code.

use iced_x86::code_asm::registers::gpr64::{rax, rbx};
use iced_x86::code_asm::{byte_ptr, ptr};

use super::testutil::*;
use crate::cpuid::{ecx7, Model};
use crate::exception::{Exception, GP0};
use crate::msr::IA32_PKRS;
use crate::state::{cr, reg};
use crate::Cpu;

/// The key of a page is in bits 62:59 of its final entry.
const KEY_SHIFT: u32 = 59;
/// #PF error-code bits: present, write, user, protection key.
const P: u32 = 1;
const W: u32 = 2;
const U: u32 = 4;
const PK: u32 = 1 << 5;

/// [`long_mode`] with the max model (the protection keys) and `cr4` bits set.
fn keyed(cr4: u64) -> Cpu {
    let mut c = long_mode();
    c.set_model(Model::Max);
    c.write_cr4(c.state.cr4 | cr4).unwrap();
    c
}

/// Gives the page at `lin` (below 2 MiB, so in the test's page table) key `key`.
fn set_key(c: &mut Cpu, lin: u64, key: u64) {
    let pte = PT + (lin >> 12) * 8;
    let e = c.mem().read_u64(pte).unwrap() & !(15 << KEY_SHIFT);
    c.mem().write_u64(pte, e | key << KEY_SHIFT).unwrap();
    c.set_state(c.state);
}

fn wrpkru(c: &mut Cpu, v: u32) -> Result<(), Exception> {
    c.state.gpr[reg::RAX] = u64::from(v);
    c.state.gpr[reg::RCX] = 0;
    c.state.gpr[reg::RDX] = 0;
    exec_asm(c, |a| a.wrpkru())
}

fn pf(addr: u64, error_code: u32) -> Result<(), Exception> {
    Err(Exception::PageFault { addr, error_code })
}

#[test]
fn cpuid_and_cr4_follow_the_model() {
    // v2 (the default): no keys, CR4.PKE and CR4.PKS reserved.
    let mut c = long_mode();
    assert_eq!(c.cpuid(7, 0)[2] & (ecx7::PKU | ecx7::OSPKE | ecx7::PKS), 0);
    assert_eq!(c.write_cr4(c.state.cr4 | cr::CR4_PKE), Err(GP0));
    assert_eq!(c.write_cr4(c.state.cr4 | cr::CR4_PKS), Err(GP0));
    assert_eq!(c.read_msr(IA32_PKRS), Err(GP0));
    // max: PKU and PKS; OSPKE follows CR4.PKE.
    let mut c = long_mode();
    c.set_model(Model::Max);
    assert_eq!(c.cpuid(7, 0)[2] & (ecx7::PKU | ecx7::OSPKE | ecx7::PKS), ecx7::PKU | ecx7::PKS);
    c.write_cr4(c.state.cr4 | cr::CR4_PKE | cr::CR4_PKS).unwrap();
    assert_ne!(c.cpuid(7, 0)[2] & ecx7::OSPKE, 0);
    assert_eq!(c.model(), Model::Max);
    // Without the XSAVE feature set (which holds PKRU) there are no keys.
    let mut c = long_mode();
    c.set_model(Model::Max);
    c.set_xsave(false);
    assert_eq!(c.cpuid(7, 0)[2] & (ecx7::PKU | ecx7::PKS), 0);
    assert_eq!(c.write_cr4(c.state.cr4 | cr::CR4_PKE), Err(GP0));
}

#[test]
fn rdpkru_and_wrpkru() {
    // #UD until the OS sets CR4.PKE, even with the keys in the model.
    let mut c = keyed(0);
    assert_eq!(wrpkru(&mut c, 4), Err(Exception::InvalidOpcode));
    assert_eq!(exec_asm(&mut c, |a| a.rdpkru()), Err(Exception::InvalidOpcode));
    let mut c = keyed(cr::CR4_PKE);
    // ECX and EDX must be 0.
    c.state.gpr[reg::RAX] = 0xc;
    c.state.gpr[reg::RCX] = 1;
    c.state.gpr[reg::RDX] = 0;
    assert_eq!(exec_asm(&mut c, |a| a.wrpkru()), Err(GP0));
    c.state.gpr[reg::RCX] = 0;
    c.state.gpr[reg::RDX] = 1 << 32; // only EDX counts
    assert_eq!(exec_asm(&mut c, |a| a.wrpkru()), Ok(()));
    assert_eq!(c.state.pkru, 0xc);
    c.state.gpr[reg::RDX] = 1;
    assert_eq!(exec_asm(&mut c, |a| a.wrpkru()), Err(GP0));
    // At CPL 3 too; RDPKRU clears RDX and the upper half of RAX.
    to_user(&mut c, SEL_UCODE64);
    assert_eq!(wrpkru(&mut c, 0x5555_5554), Ok(()));
    c.state.gpr[reg::RAX] = u64::MAX;
    c.state.gpr[reg::RDX] = u64::MAX;
    c.state.gpr[reg::RCX] = 0;
    assert_eq!(exec_asm(&mut c, |a| a.rdpkru()), Ok(()));
    assert_eq!((c.state.gpr[reg::RAX], c.state.gpr[reg::RDX]), (0x5555_5554, 0));
    c.state.gpr[reg::RCX] = 2;
    assert_eq!(exec_asm(&mut c, |a| a.rdpkru()), Err(GP0));
}

#[test]
fn pkru_denies_user_pages_of_a_key() {
    let mut c = keyed(cr::CR4_PKE);
    set_key(&mut c, DATA, 1);
    c.state.gpr[reg::RBX] = DATA;
    // Key 1 allowed: a read fills the TLB.
    to_user(&mut c, SEL_UCODE64);
    assert_eq!(exec_asm(&mut c, |a| a.mov(rax, ptr(rbx))), Ok(()));
    // Access-disable for key 1: the TLB's entry does not outlive WRPKRU.
    wrpkru(&mut c, 1 << 2).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(rax, ptr(rbx))), pf(DATA, P | U | PK));
    assert_eq!(exec_asm(&mut c, |a| a.mov(ptr(rbx), rax)), pf(DATA, P | W | U | PK));
    // Another key's bits leave the page alone; key 0's pages are unaffected.
    wrpkru(&mut c, 1 << 4 | 1 << 5).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(ptr(rbx), rax)), Ok(()));
    c.state.gpr[reg::RBX] = DATA + 0x1000;
    wrpkru(&mut c, 1 << 2 | 1 << 3).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(ptr(rbx), rax)), Ok(()));
    // Write-disable: reads go on, user writes fault.
    c.state.gpr[reg::RBX] = DATA + 8;
    wrpkru(&mut c, 1 << 3).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(rax, ptr(rbx))), Ok(()));
    assert_eq!(exec_asm(&mut c, |a| a.mov(byte_ptr(rbx), 1)), pf(DATA + 8, P | W | U | PK));
}

#[test]
fn supervisor_accesses_to_user_pages_follow_pkru_and_wp() {
    let mut c = keyed(cr::CR4_PKE);
    set_key(&mut c, DATA, 2);
    c.state.gpr[reg::RBX] = DATA;
    // Write-disable binds supervisor writes only with CR0.WP.
    wrpkru(&mut c, 1 << 5).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(ptr(rbx), rax)), pf(DATA, P | W | PK));
    c.write_cr0(c.state.cr0 & !cr::CR0_WP).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(ptr(rbx), rax)), Ok(()));
    // Access-disable binds every data access.
    wrpkru(&mut c, 1 << 4).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(rax, ptr(rbx))), pf(DATA, P | PK));
    // With CR4.PKE clear the keys are not looked at.
    c.write_cr4(c.state.cr4 & !cr::CR4_PKE).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(rax, ptr(rbx))), Ok(()));
}

#[test]
fn instruction_fetches_ignore_the_keys() {
    let mut c = keyed(cr::CR4_PKE);
    to_user(&mut c, SEL_UCODE64);
    wrpkru(&mut c, !3).unwrap();
    let code = c.state.rip;
    set_key(&mut c, code, 7);
    // The code page's key denies everything, but fetches are not data accesses.
    c.state.gpr[reg::RBX] = DATA;
    let bytes = assemble(&c, |a| a.mov(rax, ptr(rbx)));
    assert_eq!(step_bytes(&mut c, &bytes), crate::cpu::StopReason::Budget);
    assert_eq!(c.state.rip, code + bytes.len() as u64);
}

#[test]
fn pkrs_denies_supervisor_pages_of_a_key() {
    let mut c = keyed(cr::CR4_PKS);
    c.state.gpr[reg::RBX] = SUPERVISOR;
    set_key(&mut c, SUPERVISOR, 3);
    assert_eq!(exec_asm(&mut c, |a| a.mov(rax, ptr(rbx))), Ok(()));
    // Bits 63:32 of IA32_PKRS are reserved.
    assert_eq!(c.write_msr(IA32_PKRS, 1 << 32), Err(GP0));
    c.write_msr(IA32_PKRS, 1 << 6).unwrap();
    assert_eq!(c.read_msr(IA32_PKRS), Ok(1 << 6));
    assert_eq!(exec_asm(&mut c, |a| a.mov(rax, ptr(rbx))), pf(SUPERVISOR, P | PK));
    c.write_msr(IA32_PKRS, 1 << 7).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(rax, ptr(rbx))), Ok(()));
    assert_eq!(exec_asm(&mut c, |a| a.mov(ptr(rbx), rax)), pf(SUPERVISOR, P | W | PK));
    // PKRU does not reach supervisor pages, nor PKRS user pages.
    c.write_cr4(c.state.cr4 | cr::CR4_PKE).unwrap();
    c.write_msr(IA32_PKRS, 0).unwrap();
    wrpkru(&mut c, u32::MAX).unwrap();
    assert_eq!(exec_asm(&mut c, |a| a.mov(ptr(rbx), rax)), Ok(()));
    c.write_msr(IA32_PKRS, u32::MAX.into()).unwrap();
    wrpkru(&mut c, 0).unwrap();
    set_key(&mut c, DATA, 3);
    c.state.gpr[reg::RBX] = DATA;
    assert_eq!(exec_asm(&mut c, |a| a.mov(ptr(rbx), rax)), Ok(()));
}
