//! Memory access: effective and linear addresses, the inline soft-TLB
//! test, and the calls a miss makes.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, Block, InstBuilder, Type, Value};
use iced_x86::{Instruction, Register};

use cpu::state::sreg;

use super::classify::reg;
use super::state::{guest_flags, mem_flags, Tx, SEG_BASE_OFF, SEG_OFF, SEG_SIZE};
use crate::ctx::{off, status};
use crate::reloc::Import;

impl Tx<'_, '_> {
    /// The effective address (offset in the segment), as `cpu::ops::ea`.
    pub(super) fn ea(&mut self, insn: &Instruction) -> Value {
        let base = insn.memory_base();
        let index = insn.memory_index();
        let disp = insn.memory_displacement64();
        if base == Register::RIP {
            return self.guest_addr(disp);
        }
        if base == Register::EIP {
            return self.iconst(disp & 0xffff_ffff);
        }
        let mut a = self.iconst(disp);
        let mut asize = 0;
        if let Some(r) = reg(base) {
            let v = self.gpr64(r.idx);
            let v = if r.size == 4 { self.b.ins().band_imm_s(v, 0xffff_ffff) } else { v };
            a = self.b.ins().iadd(a, v);
            asize = r.size;
        }
        if let Some(r) = reg(index) {
            let v = self.gpr64(r.idx);
            let v = if r.size == 4 { self.b.ins().band_imm_s(v, 0xffff_ffff) } else { v };
            let scale = insn.memory_index_scale();
            let v = if scale > 1 { self.b.ins().ishl_imm_s(v, i64::from(scale.trailing_zeros())) } else { v };
            a = self.b.ins().iadd(a, v);
            asize = r.size;
        }
        if asize == 4 {
            a = self.b.ins().band_imm_s(a, 0xffff_ffff);
        }
        a
    }

    /// The linear address for the inline TLB test, or `None` when the
    /// helper must compute it (a segment with a base in 32-bit code).
    pub(super) fn linear(&mut self, seg: usize, off_v: Value) -> Option<Value> {
        if self.bits == 64 {
            if seg >= sreg::FS {
                let base = self.b.ins().load(
                    types::I64,
                    mem_flags(),
                    self.state,
                    SEG_OFF + SEG_SIZE * seg as i32 + SEG_BASE_OFF,
                );
                return Some(self.b.ins().iadd(off_v, base));
            }
            return Some(off_v);
        }
        // Flat DS, ES and SS (the region's mode guarantees them); FS and GS
        // have bases and limits, and CS is not writable: the helper checks.
        if seg >= sreg::FS || seg == sreg::CS {
            return None;
        }
        Some(self.b.ins().band_imm_s(off_v, 0xffff_ffff))
    }

    /// The TLB entry for `lin` and whether its tag for `tag_off` matches an
    /// access of `size` bytes.
    pub(super) fn tlb_hit(&mut self, lin: Value, size: u32, tag_off: usize) -> (Value, Value) {
        let l = mmu::TLB_LAYOUT;
        // The entry's byte offset, `((lin >> 12) % entries) * entry_size`,
        // in two steps (the size is a power of two below 4 KiB).
        const { assert!(mmu::TLB_LAYOUT.entry_size.is_power_of_two() && mmu::TLB_LAYOUT.entry_size < 4096) };
        let shift = 12 - l.entry_size.trailing_zeros();
        let byte = self.b.ins().ushr_imm_s(lin, i64::from(shift));
        let byte = self.b.ins().band_imm_s(byte, ((l.entries - 1) * l.entry_size) as i64);
        let entry = self.b.ins().iadd(self.tlb, byte);
        let tag = self.b.ins().load(types::I64, mem_flags(), entry, tag_off as i32);
        let last = self.b.ins().iadd_imm_s(lin, i64::from(size) - 1);
        let want = self.b.ins().band_imm_s(last, !0xfffi64);
        let hit = self.b.ins().icmp(IntCC::Equal, tag, want);
        (entry, hit)
    }

    /// The host address of `lin` from its TLB entry (after a hit).
    pub(super) fn host_addr(&mut self, entry: Value, lin: Value) -> Value {
        let addend = self.b.ins().load(types::I64, mem_flags(), entry, mmu::TLB_LAYOUT.addend as i32);
        self.b.ins().iadd(lin, addend)
    }

    fn load_host(&mut self, addr: Value, size: u32) -> Value {
        let t = int_type(size);
        let v = self.b.ins().load(t, guest_flags(), addr, 0);
        if size == 8 {
            v
        } else {
            self.b.ins().uextend(types::I64, v)
        }
    }

    fn store_host(&mut self, addr: Value, size: u32, v: Value) {
        let v = if size == 8 { v } else { self.b.ins().ireduce(int_type(size), v) };
        self.b.ins().store(guest_flags(), v, addr, 0);
    }

    /// A fault from a helper: leave at the instruction.
    pub(super) fn fault_exit(&mut self, rip: u64) {
        self.exit_to(rip, 0);
    }

    /// Read `size` bytes of the memory operand (zero-extended).
    pub(super) fn load(&mut self, insn: &Instruction, size: u32, rip: u64, rmw: bool) -> (Value, Value) {
        let seg = cpu::ops::mem_seg(insn);
        let off_v = self.ea(insn);
        self.load_at(seg, off_v, size, rip, rmw)
    }

    /// Read at `seg:off_v`. With `rmw`, the access is checked as a write and
    /// the second value is the host address for the store (0 when the
    /// store must go through the helper).
    pub(super) fn load_at(&mut self, seg: usize, off_v: Value, size: u32, rip: u64, rmw: bool) -> (Value, Value) {
        // An RMW whose load misses runs whole through the interpreter (unless
        // the instruction read memory before, which must not happen twice):
        // its store then always has the host address.
        let direct = rmw && self.slow_insn.is_some() && !self.insn_loaded;
        self.rmw_direct = direct;
        self.insn_loaded = true;
        let join = self.b.create_block();
        let val = self.b.append_block_param(join, types::I64);
        // (Only an RMW load hands on the host address.)
        let haddr = if rmw { Some(self.b.append_block_param(join, types::I64)) } else { None };
        let slow = self.b.create_block();
        if let Some(lin) = self.linear(seg, off_v) {
            let l = mmu::TLB_LAYOUT;
            let addr = self.tlb_host_addr(lin, size, if rmw { l.jit_write } else { l.jit_read }, slow);
            let v = self.load_host(addr, size);
            self.jump_join(join, v, rmw.then_some(addr));
        } else {
            self.b.ins().jump(slow, &[]);
        }
        self.enter_block(slow);
        if direct {
            self.access_slow_exit(rip);
            self.enter_block(join);
            return (val, haddr.expect("an RMW load has a host address"));
        }
        let callee = self.addr(if rmw { Import::LoadRmw } else { Import::Load }, 0);
        let segv = self.b.ins().iconst(types::I32, seg as i64);
        let sz = self.b.ins().iconst(types::I32, i64::from(size));
        let ripv = self.guest_addr(rip);
        self.b.ins().call_indirect(self.sig_load_saving, callee, &[self.ctx, segv, off_v, sz, ripv]);
        let v = self.b.ins().load(types::I64, mem_flags(), self.ctx, off::RESULT);
        let st = self.b.ins().load(types::I32, mem_flags(), self.ctx, off::STATUS);
        let ok = self.b.create_block();
        let bad = self.b.create_block();
        self.b.ins().brif(st, bad, &[], ok, &[]);
        self.enter_block(bad);
        self.fault_exit(rip);
        self.enter_block(ok);
        let z = rmw.then(|| self.iconst(0));
        self.jump_join(join, v, z);
        self.enter_block(join);
        let haddr = haddr.unwrap_or_else(|| self.iconst(0));
        (val, haddr)
    }

    /// The TLB test for `size` bytes at `lin` (the entry's tag at
    /// `tag_off`): on a hit, in a new block, the host address; on a miss,
    /// on to `slow`.
    fn tlb_host_addr(&mut self, lin: Value, size: u32, tag_off: usize, slow: Block) -> Value {
        let (entry, hit) = self.tlb_hit(lin, size, tag_off);
        let fast = self.b.create_block();
        self.b.ins().brif(hit, fast, &[], slow, &[]);
        self.enter_block(fast);
        self.host_addr(entry, lin)
    }

    /// Jump to a load's `join` with the value and, for an RMW load, the
    /// host address.
    fn jump_join(&mut self, join: Block, v: Value, haddr: Option<Value>) {
        match haddr {
            Some(a) => self.b.ins().jump(join, &[v.into(), a.into()]),
            None => self.b.ins().jump(join, &[v.into()]),
        };
    }

    /// Write `v` at `seg:off_v`; `haddr` from an RMW load (or 0). Where a
    /// miss goes through the store's helper, returns a value that is
    /// non-zero when the region must leave after the instruction; `None`
    /// where a miss runs the instruction through the interpreter and
    /// leaves (the hit then needs no test).
    pub(super) fn store_at(
        &mut self,
        seg: usize,
        off_v: Value,
        size: u32,
        v: Value,
        rip: u64,
        haddr: Option<Value>,
    ) -> Option<Value> {
        if let Some(a) = haddr.filter(|_| self.rmw_direct) {
            self.store_host(a, size, v);
            return None;
        }
        if haddr.is_none() && !self.insn_loaded && self.slow_insn.is_some() {
            // A miss runs the instruction through the interpreter, which
            // stores and leaves: the hit goes on with nothing to check.
            match self.linear(seg, off_v) {
                Some(lin) => {
                    let slow = self.b.create_block();
                    let addr = self.tlb_host_addr(lin, size, mmu::TLB_LAYOUT.jit_write, slow);
                    self.store_host(addr, size, v);
                    let cont = self.b.create_block();
                    self.b.ins().jump(cont, &[]);
                    self.enter_block(slow);
                    self.access_slow_exit(rip);
                    self.enter_block(cont);
                }
                None => self.access_slow_exit_here(rip),
            }
            return None;
        }
        let join = self.b.create_block();
        let leave = self.b.append_block_param(join, types::I32);
        let slow = self.b.create_block();
        let fast = self.b.create_block();
        let fast_addr = self.b.append_block_param(fast, types::I64);
        match haddr {
            Some(a) => {
                self.b.ins().brif(a, fast, &[a.into()], slow, &[]);
            }
            None => match self.linear(seg, off_v) {
                Some(lin) => {
                    let addr = self.tlb_host_addr(lin, size, mmu::TLB_LAYOUT.jit_write, slow);
                    self.b.ins().jump(fast, &[addr.into()]);
                }
                None => {
                    self.b.ins().jump(slow, &[]);
                }
            },
        }
        self.enter_block(fast);
        self.store_host(fast_addr, size, v);
        let z = self.b.ins().iconst(types::I32, 0);
        self.b.ins().jump(join, &[z.into()]);

        self.enter_block(slow);
        let callee = self.addr(Import::Store, 0);
        let segv = self.b.ins().iconst(types::I32, seg as i64);
        let sz = self.b.ins().iconst(types::I32, i64::from(size));
        let ripv = self.guest_addr(rip);
        self.b.ins().call_indirect(self.sig_store_saving, callee, &[self.ctx, segv, off_v, sz, v, ripv]);
        let st = self.b.ins().load(types::I32, mem_flags(), self.ctx, off::STATUS);
        let is_fault = self.b.ins().icmp_imm_s(IntCC::Equal, st, i64::from(status::FAULT));
        let bad = self.b.create_block();
        let ok = self.b.create_block();
        self.b.ins().brif(is_fault, bad, &[], ok, &[]);
        self.enter_block(bad);
        self.fault_exit(rip);
        self.enter_block(ok);
        self.b.ins().jump(join, &[st.into()]);
        self.enter_block(join);
        Some(leave)
    }

    /// The host address of a guest atomic's memory operand of `size` bytes,
    /// on the path where it is one host atomic: the TLB entry for writing
    /// hits (RAM, no code, not a read-only shadow page, within one page)
    /// and the host address is naturally aligned. Otherwise the instruction
    /// runs through the interpreter's locked handler (host atomics, or the
    /// other processors stopped) and the region leaves after it.
    pub(super) fn atomic_addr(&mut self, insn: &Instruction, size: u32, rip: u64) -> Value {
        let seg = cpu::ops::mem_seg(insn);
        let off_v = self.ea(insn);
        self.atomic_addr_at(seg, off_v, size, rip)
    }

    /// [`Self::atomic_addr`] of the operand at `seg:off_v`.
    pub(super) fn atomic_addr_at(&mut self, seg: usize, off_v: Value, size: u32, rip: u64) -> Value {
        let Some(lin) = self.linear(seg, off_v) else {
            self.access_slow_exit_here(rip);
            return self.iconst(0);
        };
        let slow = self.b.create_block();
        let addr = self.tlb_host_addr(lin, size, mmu::TLB_LAYOUT.jit_write, slow);
        if size > 1 {
            // Host atomics need natural alignment on some hosts (and a
            // misaligned one may be a split lock on x86-64).
            let low = self.b.ins().band_imm_s(addr, i64::from(size) - 1);
            let aligned = self.b.create_block();
            self.b.ins().brif(low, slow, &[], aligned, &[]);
            self.enter_block(aligned);
        }
        let cont = self.b.create_block();
        self.b.ins().jump(cont, &[]);
        self.enter_block(slow);
        self.access_slow_exit(rip);
        self.enter_block(cont);
        addr
    }

    /// The slow path of a memory access: the instruction runs through the
    /// interpreter (which raises its faults) and the region leaves after
    /// it. The instructions before it count on this path (the main path
    /// keeps its pending count).
    fn access_slow_exit(&mut self, rip: u64) {
        let c = self.b.use_var(self.icount);
        let c = self.b.ins().iadd_imm_s(c, self.pending);
        self.b.def_var(self.icount, c);
        self.slow_exit(rip);
    }

    /// [`Self::access_slow_exit`] as the only way on (a segment that needs
    /// the interpreter's checks): the code after it is unreachable, in a
    /// block of its own.
    fn access_slow_exit_here(&mut self, rip: u64) {
        self.access_slow_exit(rip);
        let dead = self.b.create_block();
        self.enter_block(dead);
    }

    /// After an instruction that stored: leave after it if the store asked.
    pub(super) fn after_store(&mut self, leave: Option<Value>, next: u64) {
        let Some(leave) = leave else { return };
        let out = self.b.create_block();
        let cont = self.b.create_block();
        self.b.ins().brif(leave, out, &[], cont, &[]);
        self.enter_block(out);
        self.exit_to(next, 1);
        self.enter_block(cont);
    }
}

pub(super) fn int_type(size: u32) -> Type {
    match size {
        1 => types::I8,
        2 => types::I16,
        4 => types::I32,
        _ => types::I64,
    }
}
