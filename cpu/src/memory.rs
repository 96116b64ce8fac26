//! Memory access: segmentation (limits, rights, canonical checks), the
//! soft TLB's fast paths and page walks, and the CPU's reads and writes of
//! guest memory and MMIO. A write into a page that holds decoded code drops
//! its blocks (see [`crate::cache`]). The locked accesses of locked
//! instructions live in [`crate::atomic`].

use mmu::{Access, Privilege};

use crate::cpu::Cpu;
use crate::exception::{Exception, Fault, GP0};
use crate::state::{seg_attr, sreg};

impl Cpu {
    // ---- segmentation --------------------------------------------------------

    /// Linear address of `offset` in segment `seg` for an access of `len` bytes,
    /// with the segment checks of the current mode.
    #[inline]
    pub(crate) fn linear(&self, seg: usize, offset: u64, len: u64, write: bool) -> Fault<u64> {
        let s = &self.state.seg[seg];
        if self.state.code64() {
            let base = if seg >= sreg::FS { s.base } else { 0 };
            let lin = base.wrapping_add(offset);
            if !is_canonical(lin) || !is_canonical(lin.wrapping_add(len - 1)) {
                return Err(if seg == sreg::SS { Exception::StackFault(0) } else { GP0 });
            }
            return Ok(lin);
        }
        let fault = if seg == sreg::SS { Exception::StackFault(0) } else { GP0 };
        if self.state.protected() && !self.state.v86() {
            if s.attr & seg_attr::UNUSABLE != 0 {
                return Err(fault);
            }
            if write && (s.attr & seg_attr::TYPE_CODE != 0 || s.attr & seg_attr::TYPE_RW == 0) {
                return Err(fault);
            }
        }
        let last = offset.wrapping_add(len - 1);
        let expand_down = s.attr & (seg_attr::TYPE_CODE | seg_attr::TYPE_DC) == seg_attr::TYPE_DC;
        if expand_down {
            let upper = if s.attr & seg_attr::DB != 0 { 0xffff_ffffu64 } else { 0xffff };
            if offset <= u64::from(s.limit) || last > upper || last < offset {
                return Err(fault);
            }
        } else if last > u64::from(s.limit) || last < offset {
            return Err(fault);
        }
        Ok(s.base.wrapping_add(offset) & 0xffff_ffff)
    }

    // ---- linear memory -------------------------------------------------------

    pub(crate) fn translate(&mut self, lin: u64, access: Access, p: Privilege) -> Fault<u64> {
        let ctx = self.paging;
        self.mmu
            .translate(&ctx, p, lin, access)
            .map_err(|f| Exception::PageFault { addr: f.addr, error_code: f.error_code })
    }

    /// Read `N` bytes at a linear address with privilege `p`.
    #[inline]
    pub(crate) fn read_lin_p<const N: usize>(&mut self, lin: u64, p: Privilege) -> Fault<[u8; N]> {
        if let Some(b) = self.mmu.read_fast::<N>(p, lin) {
            return Ok(b);
        }
        let mut buf = [0u8; N];
        self.read_slow(lin, &mut buf, p, Access::Read)?;
        Ok(buf)
    }

    pub(crate) fn read_slow(&mut self, lin: u64, buf: &mut [u8], p: Privilege, access: Access) -> Fault<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = lin.wrapping_add(done as u64);
            let a = if self.state.long_mode() { a } else { a & 0xffff_ffff };
            let in_page = (4096 - (a & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            let phys = self.translate(a, access, p)?;
            let chunk = &mut buf[done..done + n];
            if self.mem().read(phys, chunk).is_err() {
                self.platform_mmio_read(phys, chunk);
            }
            done += n;
        }
        Ok(())
    }

    /// Write `data` at a linear address with privilege `p`. Every page is
    /// translated before any byte is written, so a fault leaves memory untouched.
    pub(crate) fn write_lin_p(&mut self, lin: u64, data: &[u8], p: Privilege) -> Fault<()> {
        if self.mmu.write_fast(p, lin, data) {
            self.mmu.grant_fast_write(p, lin);
            return Ok(());
        }
        let first = self.translate(lin, Access::Write, p)?;
        let in_page = (4096 - (lin & 0xfff)) as usize;
        if data.len() <= in_page {
            return self.write_phys(first, data);
        }
        let next = lin.wrapping_add(in_page as u64);
        let next = if self.state.long_mode() { next } else { next & 0xffff_ffff };
        let second = self.translate(next, Access::Write, p)?;
        self.write_phys(first, &data[..in_page])?;
        self.write_phys(second, &data[in_page..])
    }

    pub(crate) fn write_phys(&mut self, phys: u64, data: &[u8]) -> Fault<()> {
        match self.mem().write(phys, data) {
            Ok(()) => {}
            // Writes to ROM are dropped, as on a PC.
            Err(mmu::MemError::ReadOnly { .. }) => {}
            Err(_) => self.platform_mmio_write(phys, data),
        }
        self.note_code_writes();
        Ok(())
    }

    /// Take the code pages that writes to guest memory just changed.
    #[inline]
    pub(crate) fn note_code_writes(&mut self) {
        if self.code_watch.pending() {
            self.drain_invalidations();
        }
    }

    /// Take this processor's code-page changes: drop the decoded code of
    /// written pages (telling the listeners), and the soft-TLB entries of
    /// pages other processors began to hold code for (their write paths
    /// skip the code-page check). After a written page the running block
    /// may be stale: the block loop stops after this instruction.
    #[cold]
    pub(crate) fn drain_invalidations(&mut self) {
        let changes = self.code_watch.take();
        self.forget_write_paths(&changes);
        if changes.overflowed {
            self.drop_code();
            self.block_break = true;
        } else if !changes.written.is_empty() {
            for page in changes.written {
                self.code_page_changed(page);
            }
            self.block_break = true;
        }
    }

    /// Drop the soft-TLB entries that let stores into pages newly holding
    /// code skip the check (every entry, if the queue overflowed), and,
    /// for a write sync of dirty logging, every entry translated stores use.
    pub(crate) fn forget_write_paths(&mut self, changes: &mmu::CodeChanges) {
        if changes.drop_fast_writes {
            self.mmu.drop_fast_writes();
        }
        if changes.overflowed {
            self.mmu.flush(false);
        } else {
            for &page in &changes.marked {
                self.mmu.flush_phys(page);
            }
        }
    }

    /// Read at a linear address with the current privilege.
    #[inline]
    pub(crate) fn read_lin<const N: usize>(&mut self, lin: u64) -> Fault<[u8; N]> {
        let p = self.privilege();
        self.read_lin_p::<N>(lin, p)
    }

    /// Read a supervisor (implicit) access: descriptor tables, TSS, IDT.
    pub(crate) fn read_sys<const N: usize>(&mut self, lin: u64) -> Fault<[u8; N]> {
        self.read_lin_p::<N>(lin, Privilege::Supervisor)
    }

    pub(crate) fn write_sys(&mut self, lin: u64, data: &[u8]) -> Fault<()> {
        self.write_lin_p(lin, data, Privilege::Supervisor)
    }

    /// Read `size` bytes (1, 2, 4 or 8) at `seg:offset`, zero-extended.
    #[inline]
    pub fn read_mem(&mut self, seg: usize, offset: u64, size: u32) -> Fault<u64> {
        let lin = self.linear(seg, offset, u64::from(size), false)?;
        self.check_access(lin, size, false)?;
        Ok(match size {
            1 => u64::from(self.read_lin::<1>(lin)?[0]),
            2 => u64::from(u16::from_le_bytes(self.read_lin::<2>(lin)?)),
            4 => u64::from(u32::from_le_bytes(self.read_lin::<4>(lin)?)),
            _ => u64::from_le_bytes(self.read_lin::<8>(lin)?),
        })
    }

    /// Read the destination of a read-modify-write instruction: the access is
    /// checked as a write (segment and page permissions, the W bit of a page
    /// fault's error code, the dirty bit), as hardware checks it, then read.
    pub fn read_mem_rmw(&mut self, seg: usize, offset: u64, size: u32) -> Fault<u64> {
        self.probe_write(seg, offset, size)?;
        self.read_mem(seg, offset, size)
    }

    /// Check a write of `size` bytes at `seg:offset` without writing: the
    /// segment checks, the alignment check, data breakpoints and the page
    /// walk of every page it touches, as a write.
    #[inline]
    pub fn probe_write(&mut self, seg: usize, offset: u64, size: u32) -> Fault<()> {
        self.probe_write_at(seg, offset, size).map(drop)
    }

    /// [`Cpu::probe_write`], giving the linear address of the access and,
    /// when it lies in one page, its guest physical address (`None` when
    /// it spans two).
    #[inline]
    pub(crate) fn probe_write_at(&mut self, seg: usize, offset: u64, size: u32) -> Fault<(u64, Option<u64>)> {
        let lin = self.linear(seg, offset, u64::from(size), true)?;
        // Alignment check (#AC) and data breakpoints come before paging.
        self.check_access(lin, size, true)?;
        let p = self.privilege();
        let phys = self.translate(lin, Access::Write, p)?;
        let last = lin.wrapping_add(u64::from(size) - 1);
        if (last ^ lin) & !0xfff != 0 {
            // The second page faults at its first byte, as hardware reports it.
            let next = last & !0xfff;
            let next = if self.state.long_mode() { next } else { next & 0xffff_ffff };
            self.translate(next, Access::Write, p)?;
            return Ok((lin, None));
        }
        Ok((lin, Some(phys)))
    }

    /// The checks of a read of `size` bytes at `seg:offset` without reading:
    /// the segment checks, the alignment check, and the page walk of every
    /// page it touches.
    pub(crate) fn probe_read(&mut self, seg: usize, offset: u64, size: u32) -> Fault<()> {
        let lin = self.linear(seg, offset, u64::from(size), false)?;
        self.check_alignment(lin, size)?;
        let p = self.privilege();
        self.translate(lin, Access::Read, p)?;
        let last = lin.wrapping_add(u64::from(size) - 1);
        if (last ^ lin) & !0xfff != 0 {
            let next = last & !0xfff;
            let next = if self.state.long_mode() { next } else { next & 0xffff_ffff };
            self.translate(next, Access::Read, p)?;
        }
        Ok(())
    }

    /// Write the low `size` bytes of `value` at `seg:offset`.
    #[inline]
    pub fn write_mem(&mut self, seg: usize, offset: u64, size: u32, value: u64) -> Fault<()> {
        let lin = self.linear(seg, offset, u64::from(size), true)?;
        self.check_access(lin, size, true)?;
        let p = self.privilege();
        self.write_lin_p(lin, &value.to_le_bytes()[..size as usize], p)
    }

    /// Read a byte buffer at `seg:offset` (descriptor operands, FXSAVE areas).
    pub fn read_mem_buf(&mut self, seg: usize, offset: u64, buf: &mut [u8]) -> Fault<()> {
        self.read_mem_buf_aligned(seg, offset, buf, 1)
    }

    /// [`Cpu::read_mem_buf`] of an operand whose alignment requirement is
    /// `align` bytes (a power of two): a misaligned one raises #AC(0) when
    /// alignment checking is on.
    pub fn read_mem_buf_aligned(&mut self, seg: usize, offset: u64, buf: &mut [u8], align: u32) -> Fault<()> {
        let lin = self.linear(seg, offset, buf.len() as u64, false)?;
        self.check_alignment(lin, align)?;
        self.check_access_buf(lin, buf.len(), false);
        let p = self.privilege();
        if let Some(b) = self.mmu.read_fast::<1>(p, lin) {
            if buf.len() == 1 {
                buf[0] = b[0];
                return Ok(());
            }
        }
        self.read_slow(lin, buf, p, Access::Read)
    }

    /// Write a byte buffer at `seg:offset`.
    pub fn write_mem_buf(&mut self, seg: usize, offset: u64, data: &[u8]) -> Fault<()> {
        self.write_mem_buf_aligned(seg, offset, data, 1)
    }

    /// [`Cpu::write_mem_buf`] of an operand whose alignment requirement is
    /// `align` bytes (see [`Cpu::read_mem_buf_aligned`]).
    pub fn write_mem_buf_aligned(&mut self, seg: usize, offset: u64, data: &[u8], align: u32) -> Fault<()> {
        let lin = self.linear(seg, offset, data.len() as u64, true)?;
        self.check_alignment(lin, align)?;
        self.check_access_buf(lin, data.len(), true);
        let p = self.privilege();
        if data.len() <= 4096 - (lin & 0xfff) as usize || data.len() <= 4096 {
            return self.write_lin_p(lin, data, p);
        }
        for (i, chunk) in data.chunks(4096).enumerate() {
            self.write_lin_p(lin + (i * 4096) as u64, chunk, p)?;
        }
        Ok(())
    }
}

/// Whether `a` is canonical for 48-bit linear addresses.
#[inline]
pub fn is_canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}
