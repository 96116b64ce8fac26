//! The differential harness: generated instruction sequences run in the
//! interpreter and on the host CPU through KVM, at CPL3, in 64-bit mode and in
//! 32-bit compatibility mode, and every architectural result is compared.
//!
//! - [`gen`] builds the sequences (iced-x86 templates for every group CPL3
//!   can reach, random operands, memory operands in a mapped data page).
//! - [`machine`] is the guest both sides run: long mode entered directly,
//!   4 KiB paging, a GDT/TSS/IDT whose handlers report each exception on a
//!   port and leave its frame on the kernel stack.
//! - [`interp`] runs a sequence in the interpreter, stepping it to learn the
//!   path and the results the SDM leaves undefined on it ([`outcome::Masks`]).
//! - [`kvm_side`] runs it in one reused KVM VM.
//! - [`jit_side`] runs it compiled by the JIT; `jit_matches_interpreter`
//!   compares that with the interpreter, exactly (the JIT must give the
//!   interpreter's results, undefined ones included). It needs no KVM.
//! - [`outcome`] compares general registers, RIP, the defined flags, the
//!   segment registers, CR2, the data page, the exception frame, XMM/MXCSR and
//!   the x87 state (FCW, FSW minus undefined C0-C3, abridged FTW, R0-R7).
//! - [`skiplist`] names the known mismatches (some on one host vendor's CPUs
//!   only); anything else fails.
//!
//! A mismatch is reduced to the fewest instructions that still mismatch and
//! printed with its bytes, disassembly, the state before and both states
//! after. The report at the end gives counts per group and mode, exceptions
//! by vector, and mismatches per group. Without a usable /dev/kvm the test
//! prints `skipping: <reason>` and passes.
//!
//! Environment:
//! - `FERROVM_DIFF_SEQS=N`: number of sequences for both comparisons (default
//!   100,000 against KVM, 50,000 for the JIT).
//! - `FERROVM_DIFF_LONG=1`: 1,000,000 sequences (or `cargo test --test
//!   differential -- --ignored`, which runs the long test).
//! - `FERROVM_DIFF_SEED=N|random`: master seed (default fixed).
//! - `FERROVM_DIFF_GROUPS=alu,sse2,...`, `FERROVM_DIFF_MODE=64|32`: restrict.
//! - `FERROVM_DIFF_REPLAY=<seed>`: run one sequence and print it in full,
//!   with the skip-list entry it matches, if any.

#![cfg(target_os = "linux")]

#[path = "differential/gen.rs"]
mod gen;
#[path = "differential/interp.rs"]
mod interp;
#[path = "differential/jit_side.rs"]
mod jit_side;
#[path = "differential/kvm_side.rs"]
mod kvm_side;
#[path = "differential/machine.rs"]
mod machine;
#[path = "differential/outcome.rs"]
mod outcome;
#[path = "differential/rng.rs"]
mod rng;
#[path = "differential/skiplist.rs"]
mod skiplist;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gen::{Case, Catalog, Group};
use interp::InterpSide;
use kvm_side::{KvmSide, Watchdog};
use machine::Mode;
use outcome::{compare, disassemble, dump, End, Outcome};

const CI_SEQUENCES: u64 = 100_000;
/// The JIT harness's CI size: each sequence is compiled as well as run, so
/// it is the suite's longest test; the long run takes the million.
const JIT_CI_SEQUENCES: u64 = 50_000;
const LONG_SEQUENCES: u64 = 1_000_000;
const DEFAULT_SEED: u64 = 0x00fe_44a0_5eed_0001;
/// Reproducers printed in full per distinct mismatch signature.
const PRINT_PER_SIGNATURE: usize = 2;

struct Config {
    sequences: u64,
    seed: u64,
    groups: Vec<Group>,
    mode: Option<Mode>,
    replay: Option<u64>,
    show_known: bool,
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim().replace('_', "");
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

impl Config {
    /// The run's configuration: `ci` sequences unless the run is long or
    /// the environment says otherwise.
    fn from_env(long: bool, ci: u64) -> Config {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let long = long || env("FERROVM_DIFF_LONG").is_some_and(|v| v != "0");
        let sequences =
            env("FERROVM_DIFF_SEQS").and_then(|v| parse_u64(&v)).unwrap_or(if long { LONG_SEQUENCES } else { ci });
        let seed = match env("FERROVM_DIFF_SEED") {
            Some(v) if v == "random" => {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            }
            Some(v) => parse_u64(&v).expect("FERROVM_DIFF_SEED: a number or `random`"),
            None => DEFAULT_SEED,
        };
        let groups = env("FERROVM_DIFF_GROUPS")
            .map(|v| {
                v.split(',')
                    .map(|g| {
                        Group::from_name(g.trim()).unwrap_or_else(|| panic!("FERROVM_DIFF_GROUPS: unknown group {g}"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mode = env("FERROVM_DIFF_MODE").map(|v| match v.as_str() {
            "64" => Mode::Long64,
            "32" => Mode::Compat32,
            _ => panic!("FERROVM_DIFF_MODE: 64 or 32"),
        });
        let replay = env("FERROVM_DIFF_REPLAY").map(|v| parse_u64(&v).expect("FERROVM_DIFF_REPLAY: a seed"));
        let show_known = env("FERROVM_DIFF_SHOW_KNOWN").is_some();
        Config { sequences, seed, groups, mode, replay, show_known }
    }
}

#[derive(Default)]
struct Stats {
    runs: BTreeMap<(Group, Mode), u64>,
    ends: BTreeMap<String, u64>,
    tainted: BTreeMap<Group, u64>,
    no_reference: BTreeMap<Group, u64>,
    no_reference_by_mnemonic: BTreeMap<String, u64>,
    timeouts: u64,
    not_generated: u64,
    new_mismatches: BTreeMap<Group, u64>,
    known_mismatches: BTreeMap<Group, u64>,
    known_hits: Vec<u64>,
    signatures: BTreeMap<String, u64>,
    t_gen: Duration,
    t_interp: Duration,
    t_kvm: Duration,
    t_reduce: Duration,
}

/// Both sides and the catalog.
struct Harness {
    cat: Catalog,
    interp: InterpSide,
    kvm: KvmSide,
}

enum Verdict {
    Equal,
    Tainted,
    /// The reference could not run an instruction (see `reference_cannot_run`).
    NoReference(String),
    Mismatch,
}

/// Where the reference is not the CPU, and cannot run what the interpreter
/// ran, the sequence is not comparable; it is counted by mnemonic.
///
/// - In compatibility mode kvm_pvm does not run ring-3 code on the CPU: KVM's
///   instruction emulator runs it (measured here: a 1M-iteration loop takes
///   0.6 ms in 64-bit mode and 2.2 s in compatibility mode). It raises #UD
///   for every instruction it does not know (x87, most SSE, POPCNT, CRC32,
///   BMI, ADX, DAA/AAA/AAS...) and never raises #AC.
/// - In 64-bit mode a #GP or #SS raised by the CPU reaches kvm_pvm, which re-runs
///   the instruction in KVM's emulator; where the emulator does not know it
///   (a misaligned SSE operand, for instance), the guest gets #UD instead of
///   the #GP or #SS.
///
/// Only a #UD on a valid, unlocked instruction (not UD0/UD1/UD2) where the
/// interpreter raised something else, or an #AC in compat32, qualifies. (The
/// host CPU has every feature the generator uses, so in 64-bit mode such a
/// #UD can only come from the emulator.)
fn reference_cannot_run(case: &Case, asm: &gen::Assembled, a: &Outcome, k: &Outcome) -> Option<String> {
    let rip = match (&a.end, &k.end) {
        (End::Exception(17), e) if case.mode == Mode::Compat32 && *e != End::Exception(17) => {
            return Some("#AC (alignment check)".into());
        }
        // The host has every feature the generator uses: a #UD on a valid,
        // unlocked instruction in 64-bit mode comes from kvm_pvm's emulator
        // re-running an instruction that raised #GP/#SS on the CPU.
        (e, End::Exception(6)) if case.mode == Mode::Long64 && *e != End::Exception(6) => k.frame_rip(),
        (e, End::Exception(6))
            if case.mode == Mode::Compat32 && (*e != End::Exception(6) || a.frame_rip() != k.frame_rip()) =>
        {
            k.frame_rip()
        }
        (_, End::Other(s)) if case.mode == Mode::Compat32 && s.contains("could not run") => k.state.rip,
        _ => return None,
    };
    // The instruction there: one of the sequence, or the INT3 filler of the
    // code page (a branch into the page lands on 0xCC).
    let filler;
    let insn = match asm.insns.iter().find(|i| i.ip() == rip) {
        Some(i) => i,
        None if (machine::CODE..machine::CODE + machine::PAGE).contains(&rip) => {
            filler = iced_x86::Instruction::with(iced_x86::Code::Int3);
            &filler
        }
        None => return None,
    };
    if insn.has_lock_prefix()
        || matches!(insn.mnemonic(), iced_x86::Mnemonic::Ud0 | iced_x86::Mnemonic::Ud1 | iced_x86::Mnemonic::Ud2)
    {
        return None;
    }
    let why = if case.mode == Mode::Long64 { "#GP emulated" } else { "compat32" };
    Some(format!("{} ({why})", format!("{:?}", insn.mnemonic()).to_lowercase()))
}

impl Harness {
    fn run_both(
        &mut self,
        case: &Case,
    ) -> Option<(gen::Assembled, Outcome, Outcome, outcome::Masks, Duration, Duration)> {
        let asm = case.assemble().ok()?;
        let t = Instant::now();
        let (a, masks) = self.interp.run(case, &asm);
        let ti = t.elapsed();
        let t = Instant::now();
        let k = self.kvm.run(case, &asm);
        Some((asm, a, k, masks, ti, t.elapsed()))
    }

    /// Whether `case` still mismatches (for reduction).
    fn mismatches(&mut self, case: &Case) -> bool {
        match self.run_both(case) {
            Some((asm, a, k, m, _, _)) => {
                m.tainted.is_none()
                    && reference_cannot_run(case, &asm, &a, &k).is_none()
                    && !compare(case.mode, &a, &k, &m).is_empty()
            }
            None => false,
        }
    }

    /// Remove instructions while the mismatch remains.
    fn reduce(&mut self, case: &Case) -> Case {
        let mut best = case.clone();
        let mut tries = 0;
        'outer: while best.items.len() > 1 && tries < 80 {
            for i in (0..best.items.len()).rev() {
                tries += 1;
                let mut c = best.clone();
                c.items.remove(i);
                for it in c.items.iter_mut() {
                    if let Some(t) = it.target.as_mut() {
                        if *t > i {
                            *t -= 1;
                        }
                    }
                }
                // A branch to itself is not possible: those targets move on.
                let n = c.items.len();
                for (j, it) in c.items.iter_mut().enumerate() {
                    if let Some(t) = it.target.as_mut() {
                        if *t <= j {
                            *t = (j + 1).min(n);
                        }
                    }
                }
                if self.mismatches(&c) {
                    best = c;
                    continue 'outer;
                }
            }
            break;
        }
        best
    }
}

fn report_case(title: &str, case: &Case, asm: &gen::Assembled, a: &Outcome, k: &Outcome, diffs: &[String]) -> String {
    let fp = case.group == Group::X87
        || case.group == Group::Mmx
        || matches!(
            case.group,
            Group::Sse
                | Group::Sse2
                | Group::Sse3
                | Group::Ssse3
                | Group::Sse41
                | Group::Sse42
                | Group::Pcmpstr
                | Group::Crypto
                | Group::Xsave
        )
        || diffs.iter().any(|d| {
            d.starts_with("xmm")
                || d.starts_with('R')
                || d.starts_with("fsw")
                || d.starts_with("mxcsr")
                || d.starts_with("fcw")
                || d.starts_with("ftw")
        });
    let mut o = String::new();
    let _ = writeln!(o, "{title} [group {}, {}, seed {:#x}]", case.group.name(), case.mode.name(), case.seed);
    let _ = writeln!(o, "  bytes: {}", outcome::hex(&asm.bytes));
    let _ = write!(o, "{}", disassemble(asm));
    let _ = writeln!(o, "  before: {}", dump(&case.init, fp));
    for insn in &asm.insns {
        for op in 0..insn.op_count() {
            if !matches!(insn.op_kind(op), iced_x86::OpKind::Memory) || insn.mnemonic() == iced_x86::Mnemonic::Lea {
                continue;
            }
            let regs = |r: iced_x86::Register, _: usize, _: usize| {
                Some(if r.is_gpr() { cpu::ops::reg_read(&case.init, r) } else { 0 })
            };
            if let Some(addr) = insn.virtual_address(op, 0, regs) {
                // An XSAVE area whole (576 bytes), other operands up to 16 bytes.
                let size = if gen::is_xsave_family(insn.mnemonic()) {
                    576
                } else {
                    insn.memory_size().size().clamp(1, 16) as u64
                };
                if (machine::DATA..machine::DATA + machine::PAGE).contains(&addr) {
                    let off = (addr - machine::DATA) as usize;
                    let end = (off + size as usize).min(case.data.len());
                    let _ = writeln!(
                        o,
                        "  memory at {addr:#x} (with the entry registers): {}",
                        outcome::hex(&case.data[off..end])
                    );
                }
            }
        }
    }
    let _ = writeln!(o, "  differences:");
    for d in diffs {
        let _ = writeln!(o, "    {d}");
    }
    let _ = writeln!(o, "  interp after ({}): {}", a.end.describe(), dump(&a.state, fp));
    let _ = writeln!(o, "  kvm after ({}):    {}", k.end.describe(), dump(&k.state, fp));
    o
}

/// A short key for grouping similar mismatches.
fn signature(case: &Case, asm: &gen::Assembled, diffs: &[String]) -> String {
    let mut m: Vec<String> =
        asm.insns[..asm.insns.len() - 1].iter().map(|i| format!("{:?}", i.mnemonic()).to_lowercase()).collect();
    m.sort();
    m.dedup();
    let mut f: Vec<&str> =
        diffs.iter().map(|d| d.split(':').next().unwrap_or("")).map(|s| s.split(' ').next().unwrap_or("")).collect();
    f.sort();
    f.dedup();
    format!("{} {}: {} / {}", case.mode.name(), case.group.name(), m.join(","), f.join(","))
}

fn catalog_report(cat: &Catalog) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "templates per group (64-bit / compat32):");
    for g in Group::ALL {
        let a = cat.count(Mode::Long64, g);
        let b = cat.count(Mode::Compat32, g);
        let extra = if g == Group::Branch {
            format!(" + {} / {} near branches", cat.branches[&Mode::Long64].len(), cat.branches[&Mode::Compat32].len())
        } else {
            String::new()
        };
        let _ = writeln!(o, "  {:<14} {:>4} / {:<4}{extra}", g.name(), a, b);
    }
    let _ = writeln!(o, "not generated, by reason:");
    let feats: Vec<&str> = cat.other_features.iter().map(String::as_str).collect();
    let _ = writeln!(
        o,
        "  CPUID features outside the generated set (AVX and later, other vendors, or results that depend on the host/time/XSAVE images): {}",
        feats.join(" ")
    );
    for (why, ms) in &cat.excluded {
        let names: Vec<String> = ms.iter().map(|m| format!("{m:?}").to_lowercase()).collect();
        let _ = writeln!(o, "  {why}: {}", names.join(" "));
    }
    if !cat.unimplemented.is_empty() {
        let names: Vec<String> = cat.unimplemented.iter().map(|m| format!("{m:?}").to_lowercase()).collect();
        let _ = writeln!(
            o,
            "  no interpreter handler ({} codes, cpu::Cpu::implemented is false): {}",
            cat.unimplemented_codes,
            names.join(" ")
        );
    }
    o
}

fn worker(cfg: Config, watchdog: Arc<Watchdog>) -> Result<(String, u64), String> {
    let t0 = Instant::now();
    let cat = Catalog::build();
    let t_catalog = t0.elapsed();
    let mut kvm = KvmSide::new(watchdog)?;
    let mut cat = cat;
    let mut out = String::new();
    // The xsave and avx groups need a vCPU that takes CR4.OSXSAVE and XCR0.
    for (group, xcr0) in [(Group::Xsave, 3), (Group::Avx, 7)] {
        if let Err(why) = kvm.takes_xsave_state(xcr0) {
            cat.templates.retain(|&(_, g), _| g != group);
            let _ = writeln!(out, "the {} group is not generated: {why}", group.name());
        }
    }
    let mut h = Harness { cat, interp: InterpSide::new(), kvm };
    let _ = writeln!(out, "catalog built in {:.2} s", t_catalog.as_secs_f64());
    let _ = write!(out, "{}", catalog_report(&h.cat));

    if let Some(seed) = cfg.replay {
        let case = gen::generate(&h.cat, seed, cfg.mode, &cfg.groups).ok_or("the seed generates no case")?;
        let (asm, a, k, m, _, _) = h.run_both(&case).ok_or("the case does not assemble")?;
        let diffs = compare(case.mode, &a, &k, &m);
        let _ = write!(out, "{}", report_case("REPLAY", &case, &asm, &a, &k, &diffs));
        let _ = writeln!(out, "  masks: {:?}", m);
        // The skip-list, applied to the whole (unreduced) case.
        let mm = skiplist::Mismatch {
            mode: case.mode,
            insns: &asm.insns[..asm.insns.len() - 1],
            interp: &a,
            kvm: &k,
            diffs: &diffs,
        };
        let known = if diffs.is_empty() { None } else { skiplist::match_known(&mm) };
        if let Some(e) = known {
            let _ = writeln!(out, "  known: #{e} ({})", skiplist::KNOWN[e].name);
        }
        return Ok((out, u64::from(!diffs.is_empty() && m.tainted.is_none() && known.is_none())));
    }

    let mut st = Stats { known_hits: vec![0; skiplist::KNOWN.len()], ..Default::default() };
    let mut printed: BTreeMap<String, usize> = BTreeMap::new();
    let mut reports = String::new();
    let start = Instant::now();
    let mut done = 0u64;
    let mut i = 0u64;
    while done < cfg.sequences {
        let mut x = cfg.seed.wrapping_add(i);
        let seed = rng::splitmix(&mut x);
        i += 1;
        let t = Instant::now();
        let case = gen::generate(&h.cat, seed, cfg.mode, &cfg.groups);
        st.t_gen += t.elapsed();
        let Some(case) = case else {
            st.not_generated += 1;
            if st.not_generated > 1000 + cfg.sequences {
                return Err("the generator produces no sequences".into());
            }
            continue;
        };
        let Some((asm, a, k, masks, ti, tk)) = h.run_both(&case) else {
            st.not_generated += 1;
            continue;
        };
        st.t_interp += ti;
        st.t_kvm += tk;
        done += 1;
        *st.runs.entry((case.group, case.mode)).or_default() += 1;
        *st.ends
            .entry(match &k.end {
                End::Other(_) => "other".into(),
                e => e.describe(),
            })
            .or_default() += 1;
        if a.end == End::Timeout && k.end == End::Timeout {
            st.timeouts += 1;
        }
        let diffs = compare(case.mode, &a, &k, &masks);
        let verdict = if diffs.is_empty() {
            Verdict::Equal
        } else if let Some(m) = reference_cannot_run(&case, &asm, &a, &k) {
            Verdict::NoReference(m)
        } else if masks.tainted.is_some() {
            Verdict::Tainted
        } else {
            Verdict::Mismatch
        };
        match verdict {
            Verdict::Equal => {}
            Verdict::Tainted => *st.tainted.entry(case.group).or_default() += 1,
            Verdict::NoReference(m) => {
                *st.no_reference.entry(case.group).or_default() += 1;
                *st.no_reference_by_mnemonic.entry(m).or_default() += 1;
            }
            Verdict::Mismatch => {
                let t = Instant::now();
                let small = h.reduce(&case);
                st.t_reduce += t.elapsed();
                let (sasm, sa, sk, sm, _, _) = h.run_both(&small).unwrap();
                let sdiffs = compare(small.mode, &sa, &sk, &sm);
                let (rcase, rasm, ra, rk, rdiffs) =
                    if sdiffs.is_empty() { (&case, &asm, &a, &k, &diffs) } else { (&small, &sasm, &sa, &sk, &sdiffs) };
                let mm = skiplist::Mismatch {
                    mode: rcase.mode,
                    insns: &rasm.insns[..rasm.insns.len() - 1],
                    interp: ra,
                    kvm: rk,
                    diffs: rdiffs,
                };
                match skiplist::match_known(&mm) {
                    Some(e) => {
                        st.known_hits[e] += 1;
                        *st.known_mismatches.entry(case.group).or_default() += 1;
                        if cfg.show_known && st.known_hits[e] == 1 {
                            let title = format!("KNOWN #{e} ({})", skiplist::KNOWN[e].name);
                            let r = report_case(&title, rcase, rasm, ra, rk, rdiffs);
                            eprint!("{r}");
                        }
                    }
                    None => {
                        *st.new_mismatches.entry(case.group).or_default() += 1;
                        let sig = signature(rcase, rasm, rdiffs);
                        *st.signatures.entry(sig.clone()).or_default() += 1;
                        let n = printed.entry(sig).or_default();
                        if *n < PRINT_PER_SIGNATURE {
                            *n += 1;
                            let title = format!(
                                "MISMATCH (reduced from {} to {} instructions)",
                                case.items.len(),
                                rcase.items.len()
                            );
                            let r = report_case(&title, rcase, rasm, ra, rk, rdiffs);
                            eprint!("{r}");
                            reports.push_str(&r);
                        }
                    }
                }
            }
        }
        if done.is_multiple_of(20_000) {
            eprintln!(
                "  {done} sequences, {:.0}/s, {} new mismatches",
                done as f64 / start.elapsed().as_secs_f64(),
                st.new_mismatches.values().sum::<u64>()
            );
        }
    }
    let elapsed = start.elapsed();
    let new: u64 = st.new_mismatches.values().sum();
    let _ = write!(out, "{reports}");
    let _ = writeln!(
        out,
        "{done} sequences in {:.1} s: {:.0} sequences/s (generate {:.1} s, interpreter {:.1} s, KVM {:.1} s, reduce {:.1} s); seed {:#x}",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        st.t_gen.as_secs_f64(),
        st.t_interp.as_secs_f64(),
        st.t_kvm.as_secs_f64(),
        st.t_reduce.as_secs_f64(),
        cfg.seed
    );
    let _ = writeln!(
        out,
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "group", "64-bit", "compat32", "new", "known", "tainted", "no-ref"
    );
    for g in Group::ALL {
        let a = st.runs.get(&(g, Mode::Long64)).copied().unwrap_or(0);
        let b = st.runs.get(&(g, Mode::Compat32)).copied().unwrap_or(0);
        if a + b == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            g.name(),
            a,
            b,
            st.new_mismatches.get(&g).copied().unwrap_or(0),
            st.known_mismatches.get(&g).copied().unwrap_or(0),
            st.tainted.get(&g).copied().unwrap_or(0),
            st.no_reference.get(&g).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(out, "KVM outcomes: {:?}", st.ends);
    let _ = writeln!(out, "both sides timed out: {}", st.timeouts);
    if !st.no_reference_by_mnemonic.is_empty() {
        let list: Vec<String> = st.no_reference_by_mnemonic.iter().map(|(m, n)| format!("{m} {n}")).collect();
        let _ = writeln!(
            out,
            "not comparable (the reference, KVM's emulator, could not run it; see reference_cannot_run): {}",
            list.join(", ")
        );
    }
    if !st.signatures.is_empty() {
        let _ = writeln!(out, "new mismatches by signature (mode group: mnemonics / fields):");
        for (sig, n) in &st.signatures {
            let _ = writeln!(out, "  {n:>7}  {sig}");
        }
    }
    let _ = writeln!(out, "skip-list (known mismatches, tests/differential/skiplist.rs):");
    for (k, n) in skiplist::KNOWN.iter().zip(&st.known_hits) {
        let mode = k.mode.map_or("both modes", |m| m.name());
        let kind = match k.kind {
            skiplist::Kind::Interpreter => "interpreter bug",
            skiplist::Kind::Reference => "reference (KVM emulator) bug",
            skiplist::Kind::Vendor => "vendor difference",
        };
        let host = k.host.map_or(String::new(), |h| format!(", {} only", h.name()));
        let _ = writeln!(out, "  {n:>7}  [{kind}, {mode}{host}] {}: {}", k.name, k.what);
    }
    Ok((out, new))
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 5
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Run `work` on a thread of its own while this one watches it: a KVM run
/// that lasts too long is kicked out of `KVM_RUN` with a signal.
fn with_watchdog<T: Send + 'static>(work: impl FnOnce(Arc<Watchdog>) -> T + Send + 'static) -> std::thread::Result<T> {
    use vmm_sys_util::signal::Killable;
    let watchdog = Arc::new(Watchdog::default());
    let w = watchdog.clone();
    let handle = std::thread::Builder::new()
        .name("differential".into())
        .spawn(move || {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
                .expect("install the watchdog's signal handler");
            work(w)
        })
        .expect("spawn the harness thread");
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(25));
        if watchdog.overdue() {
            let _ = handle.kill(kick_signal());
        }
    }
    handle.join()
}

fn run_harness(long: bool) {
    let cfg = Config::from_env(long, CI_SEQUENCES);
    if let Err(e) = hvf_kvm_accel::kvm::Kvm::new() {
        println!("skipping: KVM is not usable here: {e}");
        return;
    }
    match with_watchdog(move |w| worker(cfg, w)) {
        Ok(Ok((report, new))) => {
            println!("{report}");
            assert_eq!(new, 0, "{new} new mismatches between the interpreter and KVM (see the reproducers above)");
        }
        Ok(Err(why)) => println!("skipping: {why}"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// CI size: 100,000 sequences (FERROVM_DIFF_LONG=1 or FERROVM_DIFF_SEQS change it).
#[test]
fn interpreter_matches_kvm() {
    run_harness(false);
}

/// Millions of sequences: `cargo test --test differential -- --ignored`.
#[test]
#[ignore = "long run: 1,000,000 sequences or FERROVM_DIFF_SEQS"]
fn interpreter_matches_kvm_long() {
    run_harness(true);
}

/// A sequence that never ends (`jmp $`) is stopped by the watchdog and
/// reported as a timeout on both sides.
#[test]
fn endless_sequences_time_out() {
    if let Err(e) = hvf_kvm_accel::kvm::Kvm::new() {
        println!("skipping: KVM is not usable here: {e}");
        return;
    }
    let result = with_watchdog(|w| {
        let mut kvm = KvmSide::new(w).map_err(|e| format!("skipping: {e}"))?;
        let mut interp = InterpSide::new();
        let mut init = machine::base_state(Mode::Long64);
        init.rip = machine::CODE;
        let mut case = Case {
            seed: 0,
            mode: Mode::Long64,
            group: Group::Branch,
            items: Vec::new(),
            code_addr: machine::CODE,
            init,
            data: vec![0; machine::PAGE as usize],
        };
        let jmp = iced_x86::Instruction::with_branch(iced_x86::Code::Jmp_rel8_64, 0).map_err(|e| e.to_string())?;
        case.items.push(gen::Item { insn: jmp, target: Some(0) });
        let asm = case.assemble()?;
        let t = Instant::now();
        let k = kvm.run(&case, &asm);
        let elapsed = t.elapsed();
        let (a, _) = interp.run(&case, &asm);
        Ok::<_, String>((k.end, a.end, elapsed))
    });
    match result {
        Ok(Ok((k, a, elapsed))) => {
            println!("jmp $: KVM {k:?} after {elapsed:?}, interpreter {a:?}");
            assert_eq!(k, End::Timeout);
            assert_eq!(a, End::Timeout);
            assert!(elapsed < Duration::from_secs(10));
        }
        Ok(Err(e)) => println!("{e}"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The JIT against the interpreter: every generated sequence compiled and
/// run, with the interpreter's results as the reference, exactly (no
/// masks: the JIT computes what the interpreter computes). Sequences whose
/// results the interpreter marks as tainted (a time stamp, a random number)
/// are not compared. Needs no KVM.
fn run_jit_harness(long: bool) {
    let cfg = Config::from_env(long, JIT_CI_SEQUENCES);
    let (sequences, seed) = (cfg.sequences, cfg.seed);
    let t0 = Instant::now();
    let cat = Catalog::build();
    let mut interp = InterpSide::new();
    let mut jit = match jit_side::JitSide::new() {
        Ok(j) => j,
        Err(e) => {
            println!("skipping: no JIT on this host: {e}");
            return;
        }
    };
    let (mut done, mut i, mut tainted, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let mut by_group: BTreeMap<String, u64> = BTreeMap::new();
    let mut out = String::new();
    while done < sequences {
        let mut x = seed.wrapping_add(i);
        let s = rng::splitmix(&mut x);
        i += 1;
        assert!(i < sequences * 4 + 1000, "the generator produces no sequences");
        let Some(mut case) = gen::generate(&cat, s, cfg.mode, &cfg.groups) else { continue };
        gen::with_avx_unusable(&mut case);
        let Ok(asm) = case.assemble() else { continue };
        done += 1;
        let (a, masks) = interp.run(&case, &asm);
        let b = jit.run(&case, &asm);
        if masks.tainted.is_some() {
            tainted += 1;
            continue;
        }
        let diffs = compare(case.mode, &a, &b, &outcome::Masks::default());
        if !diffs.is_empty() {
            bad += 1;
            *by_group.entry(format!("{:?} {:?}", case.group, case.mode)).or_default() += 1;
            if bad <= 5 {
                let _ = write!(out, "{}", report_case("JIT MISMATCH (kvm= is the JIT)", &case, &asm, &a, &b, &diffs));
            }
        }
    }
    let (native, fallback) = jit.counts();
    println!(
        "{done} sequences (seed {seed:#x}) in {:.1} s: {} compiled, {tainted} not compared (tainted), {bad} mismatches; {native} instructions ran translated, {fallback} through interpreter handlers",
        t0.elapsed().as_secs_f64(),
        jit.compiled
    );
    for (g, n) in &by_group {
        println!("  mismatches in {g}: {n}");
    }
    print!("{out}");
    assert!(jit.compiled * 2 > done, "most sequences compile");
    assert_eq!(bad, 0, "{bad} mismatches between the JIT and the interpreter (see above)");
}

/// CI size: 50,000 sequences (or FERROVM_DIFF_SEQS).
#[test]
fn jit_matches_interpreter() {
    run_jit_harness(false);
}

/// 1,000,000 sequences: `cargo test --test differential -- --ignored`.
#[test]
#[ignore = "long run: 1,000,000 sequences or FERROVM_DIFF_SEQS"]
fn jit_matches_interpreter_long() {
    run_jit_harness(true);
}
