//! QEMU's `-d` logs of the guest CPU, in QEMU's line formats: `int`
//! (every interrupt and exception delivered in protected mode, with the
//! register dump, and `check_exception` for each exception raised),
//! `in_asm` (each block of guest code as it is decoded) and `cpu_reset`
//! (the state a reset leaves behind). Scripts and people who read QEMU's
//! `-d int` output read this the same way.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::state::{flags, seg_attr, sreg, CpuState, Segment};

/// What to log, and where.
pub struct GuestLog {
    /// `-d int`.
    pub int: bool,
    /// `-d in_asm`.
    pub in_asm: bool,
    /// `-d cpu_reset`.
    pub cpu_reset: bool,
    out: Mutex<Box<dyn Write + Send>>,
    /// The interrupt counter of QEMU's `int` lines.
    count: AtomicU32,
}

impl std::fmt::Debug for GuestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestLog").field("int", &self.int).field("in_asm", &self.in_asm).finish_non_exhaustive()
    }
}

/// The `-d` items ferrovm logs, as QEMU names them.
pub const ITEMS: &[&str] = &["int", "in_asm", "cpu_reset"];

impl GuestLog {
    /// A log of the `items` of [`ITEMS`] into `out`; an unknown item is an
    /// error naming it.
    pub fn new(items: &[&str], out: Box<dyn Write + Send>) -> Result<GuestLog, String> {
        if let Some(bad) = items.iter().find(|i| !ITEMS.contains(i)) {
            return Err(format!("'{bad}' is not a log item ferrovm writes (it writes {})", ITEMS.join(", ")));
        }
        Ok(GuestLog {
            int: items.contains(&"int"),
            in_asm: items.contains(&"in_asm"),
            cpu_reset: items.contains(&"cpu_reset"),
            out: Mutex::new(out),
            count: AtomicU32::new(0),
        })
    }

    /// Writes `text` as it is (a write error loses the line: the log must
    /// not stop the guest).
    pub fn write(&self, text: &str) {
        let mut o = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = o.write_all(text.as_bytes());
        let _ = o.flush();
    }

    /// QEMU's `int` line for vector `vector` being delivered, and the
    /// register dump after it (protected mode only, as QEMU logs it).
    /// `software` is an INT n (QEMU's `i=1`); `rip` the instruction's.
    pub fn interrupt(&self, s: &CpuState, vector: u8, error_code: u32, software: bool, rip: u64) {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let cs = &s.seg[sreg::CS];
        let ss = &s.seg[sreg::SS];
        let mut line = format!(
            "{n:6}: v={vector:02x} e={error_code:04x} i={} cpl={} IP={:04x}:{rip:016x} pc={:016x} SP={:04x}:{:016x}",
            u8::from(software),
            s.cpl,
            cs.selector,
            cs.base.wrapping_add(rip),
            ss.selector,
            s.gpr[4],
        );
        if vector == 0x0e {
            line.push_str(&format!(" CR2={:016x}", s.cr2));
        } else {
            line.push_str(&format!(" env->regs[R_EAX]={:016x}", s.gpr[0]));
        }
        line.push('\n');
        line.push_str(&dump_state(s));
        self.write(&line);
    }

    /// QEMU's `check_exception` line: exception `new` raised while
    /// `old` (if any) was being delivered.
    pub fn check_exception(&self, old: Option<u8>, new: u8) {
        let old = old.map_or(0xffff_ffff, u32::from);
        self.write(&format!("check_exception old: 0x{old:x} new 0x{new:x}\n"));
    }

    /// QEMU's `in_asm` block: each instruction's address, bytes and text.
    pub fn block(&self, insns: &[(u64, Vec<u8>, String)]) {
        let mut t = String::from("----------------\nIN: \n");
        for (at, bytes, text) in insns {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            t.push_str(&format!("0x{at:016x}:  {:<30} {text}\n", hex.join(" ")));
        }
        t.push('\n');
        self.write(&t);
    }

    /// QEMU's `cpu_reset` entry: the state the reset of CPU `index` ends.
    pub fn reset(&self, index: u32, s: &CpuState) {
        self.write(&format!("CPU Reset (CPU {index})\n{}", dump_state(s)));
    }
}

/// QEMU's segment flags (the descriptor's bits 8 to 23, as QEMU keeps
/// them) of a cached segment.
fn qemu_flags(g: &Segment) -> u32 {
    (g.attr & 0xf0ff) << 8
}

/// The name QEMU's dump gives a segment's kind, and its access letters.
fn describe(g: &Segment, long: bool) -> String {
    let a = g.attr;
    if a & seg_attr::UNUSABLE != 0 || a & seg_attr::P == 0 {
        return String::new();
    }
    let dpl = (a & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT;
    if a & seg_attr::S == 0 {
        let kind = match a & seg_attr::TYPE_MASK {
            2 => "LDT",
            9 if long => "TSS64-avl",
            11 if long => "TSS64-busy",
            9 => "TSS32-avl",
            11 => "TSS32-busy",
            _ => "SYS",
        };
        return format!(" DPL={dpl} {kind}");
    }
    let t = a & seg_attr::TYPE_MASK;
    let bit = |m: u32, c: char| if t & m != 0 { c } else { '-' };
    if t & seg_attr::TYPE_CODE != 0 {
        let size = if a & seg_attr::L != 0 {
            "CS64"
        } else if a & seg_attr::DB != 0 {
            "CS32"
        } else {
            "CS16"
        };
        format!(
            " DPL={dpl} {size} [{}{}{}]",
            bit(seg_attr::TYPE_DC, 'C'),
            bit(seg_attr::TYPE_RW, 'R'),
            bit(seg_attr::TYPE_ACCESSED, 'A')
        )
    } else {
        let size = if a & seg_attr::DB != 0 { "DS" } else { "DS16" };
        format!(
            " DPL={dpl} {size} [{}{}{}]",
            bit(seg_attr::TYPE_DC, 'E'),
            bit(seg_attr::TYPE_RW, 'W'),
            bit(seg_attr::TYPE_ACCESSED, 'A')
        )
    }
}

/// QEMU's register dump (`x86_cpu_dump_state`): the general registers,
/// RIP and RFLAGS, the segments, the descriptor tables, the control and
/// debug registers and EFER, 64-bit wide in long mode, 32-bit otherwise.
pub fn dump_state(s: &CpuState) -> String {
    let mut s = *s;
    let rflags = s.flags();
    let long = s.long_mode() && s.seg[sreg::CS].attr & seg_attr::L != 0;
    let f = |m: u64, c: char| if rflags & m != 0 { c } else { '-' };
    let fl = [
        f(flags::DF, 'D'),
        f(flags::OF, 'O'),
        f(flags::SF, 'S'),
        f(flags::ZF, 'Z'),
        f(flags::AF, 'A'),
        f(flags::PF, 'P'),
        f(flags::CF, 'C'),
    ];
    let fl: String = fl.iter().collect();
    let mut t = String::new();
    let tail =
        format!("CPL={} II={} A20=1 SMM=0 HLT={}\n", s.cpl, u8::from(s.interrupt_shadow != 0), u8::from(s.halted != 0));
    let g = &s.gpr;
    if long {
        t.push_str(&format!("RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}\n", g[0], g[3], g[1], g[2]));
        t.push_str(&format!("RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}\n", g[6], g[7], g[5], g[4]));
        t.push_str(&format!("R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}\n", g[8], g[9], g[10], g[11]));
        t.push_str(&format!("R12={:016x} R13={:016x} R14={:016x} R15={:016x}\n", g[12], g[13], g[14], g[15]));
        t.push_str(&format!("RIP={:016x} RFL={:08x} [{fl}] {tail}", s.rip, rflags));
    } else {
        let e = |i: usize| g[i] as u32;
        t.push_str(&format!("EAX={:08x} EBX={:08x} ECX={:08x} EDX={:08x}\n", e(0), e(3), e(1), e(2)));
        t.push_str(&format!("ESI={:08x} EDI={:08x} EBP={:08x} ESP={:08x}\n", e(6), e(7), e(5), e(4)));
        t.push_str(&format!("EIP={:08x} EFL={:08x} [{fl}] {tail}", s.rip as u32, rflags as u32));
    }
    let seg_line = |name: &str, g: &Segment| {
        if long {
            format!(
                "{name:<3}={:04x} {:016x} {:08x} {:08x}{}\n",
                g.selector,
                g.base,
                g.limit,
                qemu_flags(g),
                describe(g, long)
            )
        } else {
            format!(
                "{name:<3}={:04x} {:08x} {:08x} {:08x}{}\n",
                g.selector,
                g.base as u32,
                g.limit,
                qemu_flags(g),
                describe(g, long)
            )
        }
    };
    for (name, i) in
        [("ES", sreg::ES), ("CS", sreg::CS), ("SS", sreg::SS), ("DS", sreg::DS), ("FS", sreg::FS), ("GS", sreg::GS)]
    {
        t.push_str(&seg_line(name, &s.seg[i]));
    }
    t.push_str(&seg_line("LDT", &s.ldtr));
    t.push_str(&seg_line("TR", &s.tr));
    if long {
        t.push_str(&format!("GDT=     {:016x} {:08x}\n", s.gdtr.base, s.gdtr.limit));
        t.push_str(&format!("IDT=     {:016x} {:08x}\n", s.idtr.base, s.idtr.limit));
        t.push_str(&format!(
            "CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}\n",
            s.cr0 as u32, s.cr2, s.cr3, s.cr4 as u32
        ));
        t.push_str(&format!("DR0={:016x} DR1={:016x} DR2={:016x} DR3={:016x}\n", s.dr[0], s.dr[1], s.dr[2], s.dr[3]));
        t.push_str(&format!("DR6={:016x} DR7={:016x}\n", s.dr[6], s.dr[7]));
    } else {
        t.push_str(&format!("GDT=     {:08x} {:08x}\n", s.gdtr.base as u32, s.gdtr.limit));
        t.push_str(&format!("IDT=     {:08x} {:08x}\n", s.idtr.base as u32, s.idtr.limit));
        t.push_str(&format!(
            "CR0={:08x} CR2={:08x} CR3={:08x} CR4={:08x}\n",
            s.cr0 as u32, s.cr2 as u32, s.cr3 as u32, s.cr4 as u32
        ));
        t.push_str(&format!(
            "DR0={:08x} DR1={:08x} DR2={:08x} DR3={:08x}\n",
            s.dr[0] as u32, s.dr[1] as u32, s.dr[2] as u32, s.dr[3] as u32
        ));
        t.push_str(&format!("DR6={:08x} DR7={:08x}\n", s.dr[6] as u32, s.dr[7] as u32));
    }
    t.push_str(&format!("EFER={:016x}\n", s.efer));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_lines_read_as_qemu_writes_them() {
        let path = std::env::temp_dir().join(format!("ferrovm-guestlog-{}.txt", std::process::id()));
        let log = GuestLog::new(&["int"], Box::new(std::fs::File::create(&path).unwrap())).unwrap();
        let mut s = crate::ops::testutil::long_mode().state;
        s.cr2 = 0xdead_b000;
        s.gpr[0] = 0x1234;
        log.check_exception(None, 0x0e);
        log.interrupt(&s, 0x0e, 0x0002, false, 0x10000);
        log.interrupt(&s, 0x80, 0, true, 0x10002);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "check_exception old: 0xffffffff new 0xe");
        assert_eq!(
            lines[1],
            "     0: v=0e e=0002 i=0 cpl=0 IP=0008:0000000000010000 pc=0000000000010000 \
             SP=0010:0000000000070000 CR2=00000000deadb000"
        );
        assert!(lines[2].starts_with("RAX=0000000000001234 RBX="), "{}", lines[2]);
        let cs = &s.seg[sreg::CS];
        let cs_line =
            format!("CS =0008 0000000000000000 {:08x} {:08x} DPL=0 CS64 [-RA]", cs.limit, (cs.attr & 0xf0ff) << 8);
        assert!(text.contains(&cs_line), "{cs_line} in {text}");
        assert!(text.contains("     1: v=80 e=0000 i=1 cpl=0 IP=0008:0000000000010002"), "{text}");
        assert!(text.contains(" env->regs[R_EAX]=0000000000001234\n"), "{text}");
        assert!(GuestLog::new(&["int", "exec"], Box::new(std::io::sink())).unwrap_err().contains("'exec'"));
    }
}
