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
//! - [`outcome`] compares general registers, RIP, the defined flags, the
//!   segment registers, CR2, the data page, the exception frame, XMM/MXCSR and
//!   the x87 state (FCW, FSW minus undefined C0-C3, abridged FTW, R0-R7).
//! - [`skiplist`] names the known mismatches; anything else fails.
//!
//! A mismatch is reduced to the fewest instructions that still mismatch and
//! printed with its bytes, disassembly, the state before and both states
//! after. The report at the end gives counts per group and mode, exceptions
//! by vector, and mismatches per group. Without a usable /dev/kvm the test
//! prints `skipping: <reason>` and passes.
//!
//! Environment:
//! - `FERROVM_DIFF_SEQS=N`: number of sequences (default 100,000).
//! - `FERROVM_DIFF_LONG=1`: 1,000,000 sequences (or `cargo test --test
//!   differential -- --ignored`, which runs the long test).
//! - `FERROVM_DIFF_SEED=N|random`: master seed (default fixed).
//! - `FERROVM_DIFF_GROUPS=alu,sse2,...`, `FERROVM_DIFF_MODE=64|32`: restrict.
//! - `FERROVM_DIFF_REPLAY=<seed>`: run one sequence and print it in full.

#![cfg(target_os = "linux")]

#[path = "differential/gen.rs"]
mod gen;
#[path = "differential/interp.rs"]
mod interp;
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
    fn from_env(long: bool) -> Config {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let long = long || env("FERROVM_DIFF_LONG").is_some_and(|v| v != "0");
        let sequences = env("FERROVM_DIFF_SEQS")
            .and_then(|v| parse_u64(&v))
            .unwrap_or(if long { LONG_SEQUENCES } else { CI_SEQUENCES });
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
                    .map(|g| Group::from_name(g.trim()).unwrap_or_else(|| panic!("FERROVM_DIFF_GROUPS: unknown group {g}")))
                    .collect()
            })
            .unwrap_or_default();
        let mode = env("FERROVM_DIFF_MODE").map(|v| match v.as_str() {
            "64" => Mode::Long64,
            "32" => Mode::Compat32,
            _ => panic!("FERROVM_DIFF_MODE: 64 or 32"),
        });
        let replay = env("FERROVM_DIFF_REPLAY").map(|v| parse_u64(&v).expect("FERROVM_DIFF_REPLAY: a seed"));
        Config { sequences, seed, groups, mode, replay }
    }
}

#[derive(Default)]
struct Stats {
    runs: BTreeMap<(Group, Mode), u64>,
    ends: BTreeMap<String, u64>,
    tainted: BTreeMap<Group, u64>,
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
    Mismatch,
}

impl Harness {
    fn run_both(&mut self, case: &Case) -> Option<(gen::Assembled, Outcome, Outcome, outcome::Masks, Duration, Duration)> {
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
            Some((_, a, k, m, _, _)) => m.tainted.is_none() && !compare(case.mode, &a, &k, &m).is_empty(),
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
        || matches!(case.group, Group::Sse | Group::Sse2 | Group::Sse3 | Group::Ssse3 | Group::Sse41 | Group::Sse42 | Group::Pcmpstr | Group::Crypto)
        || diffs.iter().any(|d| d.starts_with("xmm") || d.starts_with('R') || d.starts_with("fsw") || d.starts_with("mxcsr") || d.starts_with("fcw") || d.starts_with("ftw"));
    let mut o = String::new();
    let _ = writeln!(o, "{title} [group {}, {}, seed {:#x}]", case.group.name(), case.mode.name(), case.seed);
    let _ = writeln!(o, "  bytes: {}", outcome::hex(&asm.bytes));
    let _ = write!(o, "{}", disassemble(asm));
    let _ = writeln!(o, "  before: {}", dump(&case.init, fp));
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
    let mut m: Vec<String> = asm.insns[..asm.insns.len() - 1].iter().map(|i| format!("{:?}", i.mnemonic()).to_lowercase()).collect();
    m.sort();
    m.dedup();
    let mut f: Vec<&str> = diffs.iter().map(|d| d.split(':').next().unwrap_or("")).map(|s| s.split(' ').next().unwrap_or("")).collect();
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
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| format!("cannot install the watchdog's signal handler: {e}"))?;
    let t0 = Instant::now();
    let cat = Catalog::build();
    let t_catalog = t0.elapsed();
    let kvm = KvmSide::new(watchdog)?;
    let mut h = Harness { cat, interp: InterpSide::new(), kvm };
    let mut out = String::new();
    let _ = writeln!(out, "catalog built in {:.2} s", t_catalog.as_secs_f64());
    let _ = write!(out, "{}", catalog_report(&h.cat));

    if let Some(seed) = cfg.replay {
        let case = gen::generate(&h.cat, seed, cfg.mode, &cfg.groups).ok_or("the seed generates no case")?;
        let (asm, a, k, m, _, _) = h.run_both(&case).ok_or("the case does not assemble")?;
        let diffs = compare(case.mode, &a, &k, &m);
        let _ = write!(out, "{}", report_case("REPLAY", &case, &asm, &a, &k, &diffs));
        let _ = writeln!(out, "  masks: {:?}", m);
        return Ok((out, u64::from(!diffs.is_empty() && m.tainted.is_none())));
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
        *st.ends.entry(match &k.end {
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
        } else if masks.tainted.is_some() {
            Verdict::Tainted
        } else {
            Verdict::Mismatch
        };
        match verdict {
            Verdict::Equal => {}
            Verdict::Tainted => *st.tainted.entry(case.group).or_default() += 1,
            Verdict::Mismatch => {
                let t = Instant::now();
                let small = h.reduce(&case);
                st.t_reduce += t.elapsed();
                let (sasm, sa, sk, sm, _, _) = h.run_both(&small).unwrap();
                let sdiffs = compare(small.mode, &sa, &sk, &sm);
                let (rcase, rasm, ra, rk, rdiffs) =
                    if sdiffs.is_empty() { (&case, &asm, &a, &k, &diffs) } else { (&small, &sasm, &sa, &sk, &sdiffs) };
                let executed: Vec<iced_x86::Instruction> = rasm.insns[..rasm.insns.len() - 1].to_vec();
                match skiplist::match_known(rcase.mode, &executed) {
                    Some(e) => {
                        st.known_hits[e] += 1;
                        *st.known_mismatches.entry(case.group).or_default() += 1;
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
        if done % 20_000 == 0 {
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
    let _ = writeln!(out, "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9}", "group", "64-bit", "compat32", "new", "known", "tainted");
    for g in Group::ALL {
        let a = st.runs.get(&(g, Mode::Long64)).copied().unwrap_or(0);
        let b = st.runs.get(&(g, Mode::Compat32)).copied().unwrap_or(0);
        if a + b == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9}",
            g.name(),
            a,
            b,
            st.new_mismatches.get(&g).copied().unwrap_or(0),
            st.known_mismatches.get(&g).copied().unwrap_or(0),
            st.tainted.get(&g).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(out, "KVM outcomes: {:?}", st.ends);
    let _ = writeln!(out, "both sides timed out: {}", st.timeouts);
    if !st.signatures.is_empty() {
        let _ = writeln!(out, "new mismatches by signature (mode group: mnemonics / fields):");
        for (sig, n) in &st.signatures {
            let _ = writeln!(out, "  {n:>7}  {sig}");
        }
    }
    let _ = writeln!(out, "skip-list (known interpreter mismatches):");
    for (k, n) in skiplist::KNOWN.iter().zip(&st.known_hits) {
        let _ = writeln!(out, "  {n:>7}  {:?} {:?}: {}", k.key, k.mode, k.what);
    }
    Ok((out, new))
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 5
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn run_harness(long: bool) {
    use vmm_sys_util::signal::Killable;
    let cfg = Config::from_env(long);
    if let Err(e) = hvf_kvm_accel::kvm::Kvm::new() {
        println!("skipping: KVM is not usable here: {e}");
        return;
    }
    let watchdog = Arc::new(Watchdog::default());
    let w = watchdog.clone();
    let handle = std::thread::Builder::new()
        .name("differential".into())
        .spawn(move || worker(cfg, w))
        .expect("spawn the harness thread");
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(25));
        if watchdog.overdue() {
            let _ = handle.kill(kick_signal());
        }
    }
    match handle.join() {
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

#[test]
#[ignore]
fn probe_compat() {
    use hvf_kvm_accel::Vcpu;
    let wd = Arc::new(Watchdog::default());
    let mut k = KvmSide::new(wd).unwrap();
    for mode in [Mode::Long64, Mode::Compat32] {
        // mov ecx, N; l: add eax, ecx; dec ecx; jnz l; hlt
        let n: u32 = 1_000_000;
        let mut code = vec![0xb9];
        code.extend_from_slice(&n.to_le_bytes());
        code.extend_from_slice(&[0x01, 0xc8, 0xff, 0xc9, 0x75, 0xfa, 0xf4]);
        let mut init = machine::base_state(mode);
        init.rip = machine::CODE;
        let case = Case { seed: 0, mode, group: Group::Alu, items: vec![], code_addr: machine::CODE, init, data: vec![0; 4096] };
        let asm = gen::Assembled { bytes: code, insns: vec![] };
        let t = Instant::now();
        let o = k.run(&case, &asm);
        println!("{mode:?}: {:?} in {:?}, rip {:#x} eax {:#x}", o.end, t.elapsed(), o.state.rip, o.state.gpr[0]);
    }
    let _ = &k.mem;
    let _: Option<&dyn Vcpu> = None;
}
