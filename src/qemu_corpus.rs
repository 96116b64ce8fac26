//! Real QEMU command lines run through ferrovm's translation.
//!
//! `tests/data/qemu-corpus.txt` holds `qemu-system-x86_64` and
//! `qemu-system-i386` command lines read from public repositories (CI
//! scripts, hobby-OS Makefiles, kernel and CTF run scripts, installer
//! guides), each under a `# owner/repo path` line naming its source. Every
//! line is split into words as a shell splits it, its program name dropped,
//! and given to [`crate::qemu::translate`]; the arguments it makes are then
//! parsed as `ferrovm run`'s. A line is accepted when both succeed, else
//! refused, and a refusal must name the option it refuses.
//!
//! The files the lines name do not exist here, and need not: `translate`
//! and clap only read the names. The one place that looks at the file
//! system is the firmware search ([`crate::qemu`]'s `find_firmware`, for
//! `-bios` and the default BIOS): it looks for the file, then in the
//! folders of `-L` and the system's firmware folders, and when nothing is
//! found passes the name on as given, so a missing file changes the
//! `--bios` path and never the verdict.
//!
//! The test prints each refused line with its source and error, a tally
//! of the refused options, and the share accepted; the share may not fall
//! below the floor measured when the corpus was collected.

use std::collections::BTreeMap;
use std::panic;

use clap::Parser;

/// The corpus, relative to the crate.
const CORPUS: &str = "tests/data/qemu-corpus.txt";

/// The fewest lines the corpus may hold.
const MIN_LINES: usize = 100;

/// The lines accepted when the corpus was collected. The floor only goes
/// up: raise it when ferrovm takes more of the corpus.
const ACCEPTED_FLOOR: usize = 73;

/// The programs a corpus line may run: QEMU's x86 system emulators.
const PROGRAMS: &[&str] = &["qemu-system-x86_64", "qemu-system-i386", "qemu-kvm", "kvm"];

/// A command line of the corpus and where it was found.
struct Entry {
    /// `owner/repo path`, from the `#` line above the command line.
    source: String,
    /// Its line number in the corpus (from 1).
    number: usize,
    /// The command line as written.
    line: String,
}

/// Reads the corpus: a `# owner/repo path` line (two words, the first
/// with one `/`) names the source of the command line under it; other `#`
/// lines and blank lines are comments. Panics on a command line without
/// a source line above it.
fn read_corpus(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut source: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if words.len() == 2 && words[0].matches('/').count() == 1 {
                source = Some(words.join(" "));
            }
            continue;
        }
        let source = source.take().unwrap_or_else(|| panic!("{CORPUS}:{}: no `# owner/repo path` line above", i + 1));
        entries.push(Entry { source, number: i + 1, line: line.to_string() });
    }
    entries
}

/// Splits a command line into words as a POSIX shell does, without
/// expanding anything: blanks separate words; `'...'` is taken as it is;
/// in `"..."` a backslash escapes only `"`, `\`, `$` and `` ` ``; outside
/// quotes a backslash escapes any character. Quotes join with the text
/// around them (`a='b c'` is one word, `a=b c`), and `''` is an empty word.
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word has begun: `''` makes an empty one.
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(q) => word.push(q),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => word.push(e),
                            Some(e) => {
                                word.push('\\');
                                word.push(e);
                            }
                            None => return Err("a double quote is not closed".into()),
                        },
                        Some(q) => word.push(q),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(e) => word.push(e),
                    None => return Err("a backslash ends the line".into()),
                }
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// What ferrovm makes of a line's arguments (without the program name):
/// `Ok` with the notes `translate` printed when it is accepted, else the
/// first error, from `translate` or from `ferrovm run`'s parser. A panic
/// in `translate` is an error of its own, starting with `panic:`.
fn verdict(argv: &[String]) -> Result<Vec<String>, String> {
    let t = match panic::catch_unwind(|| crate::qemu::translate(argv)) {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(e),
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(format!("panic: {why}"));
        }
    };
    if let Some(info) = t.info {
        return Err(format!("not a machine: translate printed {:?}", info.lines().next().unwrap_or_default()));
    }
    let run = ["ferrovm".to_string(), "run".to_string()].into_iter().chain(t.args.clone());
    match crate::cli::Cli::try_parse_from(run) {
        Ok(_) => Ok(t.notes),
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default().to_string();
            Err(format!("ferrovm run {}: {first}", t.args.join(" ")))
        }
    }
}

/// The refusal an error stands for, to tally: the option it names (its
/// first word, as `translate` writes them), with the device for `-device`
/// (`-device qxl-vga`); `panic` for a panic, and `ferrovm run` for an error
/// of `run`'s parser. `None` when the error names no option.
fn reason(error: &str) -> Option<String> {
    if error.starts_with("panic:") {
        return Some("panic".into());
    }
    if error.starts_with("ferrovm run ") {
        return Some("ferrovm run".into());
    }
    let mut words = error.split_whitespace();
    let option = words.next()?.trim_end_matches(':');
    if !option.starts_with('-') || option.len() < 2 {
        return None;
    }
    if option == "-device" {
        let device = words.next().unwrap_or_default();
        let device = device.split([',', ':']).next().unwrap_or_default();
        return Some(format!("-device {device}"));
    }
    Some(option.to_string())
}

#[test]
fn shell_words_split_as_the_shell_does() {
    let w = |s: &str| shell_words(s).unwrap();
    assert_eq!(w("  a  b\tc "), ["a", "b", "c"]);
    assert_eq!(w(r#"-append "console=ttyS0 quiet" -x"#), ["-append", "console=ttyS0 quiet", "-x"]);
    assert_eq!(w("-append 'a \"b\" \\c'"), ["-append", "a \"b\" \\c"]);
    assert_eq!(w(r#"file="/a b/c.img",if=none"#), ["file=/a b/c.img,if=none"]);
    assert_eq!(w(r#""a \"q\" \$x \n""#), [r#"a "q" $x \n"#]);
    assert_eq!(w(r"a\ b \'c"), ["a b", "'c"]);
    assert_eq!(w("'' x"), ["", "x"]);
    assert_eq!(w("tcp::\"22222\"-:22"), ["tcp::22222-:22"]);
    assert!(shell_words("'open").is_err());
    assert!(shell_words("\"open").is_err());
    assert!(shell_words("end\\").is_err());
}

#[test]
fn reasons_name_the_option() {
    assert_eq!(reason("-net tap is not supported: ...").as_deref(), Some("-net"));
    assert_eq!(reason("-device qxl-vga is not supported: ...").as_deref(), Some("-device qxl-vga"));
    assert_eq!(reason("-device e1000: 'bus=' is not supported").as_deref(), Some("-device e1000"));
    assert_eq!(reason("-machine: 'smm=' is not supported").as_deref(), Some("-machine"));
    assert_eq!(reason("panic: index out of bounds").as_deref(), Some("panic"));
    assert_eq!(reason("ferrovm run --mem 1K: error: ...").as_deref(), Some("ferrovm run"));
    assert_eq!(reason("'': an empty key"), None);
}

#[test]
fn qemu_corpus_lines_are_taken_or_refused_by_name() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CORPUS);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let entries = read_corpus(&text);
    let mut accepted = 0;
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut unnamed = Vec::new();
    let mut panics = Vec::new();
    let mut noted = Vec::new();
    println!("refused lines of {CORPUS}:");
    for entry in &entries {
        let words = shell_words(&entry.line).unwrap_or_else(|e| panic!("{CORPUS}:{}: {e}", entry.number));
        let program = words.first().map(String::as_str).unwrap_or_default();
        let name = program.rsplit('/').next().unwrap_or_default();
        assert!(PROGRAMS.contains(&name), "{CORPUS}:{}: {program} is not an x86 system emulator", entry.number);
        match verdict(&words[1..]) {
            Ok(notes) => {
                accepted += 1;
                if !notes.is_empty() {
                    noted.push((entry, notes));
                }
            }
            Err(e) => {
                println!("  {}:{} {}\n    {e}", CORPUS, entry.number, entry.source);
                match reason(&e) {
                    Some(r) => {
                        if r == "panic" {
                            panics.push(entry.number);
                        }
                        *tally.entry(r).or_default() += 1;
                    }
                    None => unnamed.push(entry.number),
                }
            }
        }
    }
    println!("accepted with notes:");
    for (entry, notes) in &noted {
        println!("  {}:{} {}", CORPUS, entry.number, entry.source);
        for n in notes {
            println!("    {n}");
        }
    }
    let mut reasons: Vec<(String, usize)> = tally.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    println!("refusals by option:");
    for (r, n) in &reasons {
        println!("  {n:4}  {r}");
    }
    let total = entries.len();
    let share = if total == 0 { 0.0 } else { accepted as f64 * 100.0 / total as f64 };
    println!("accepted {accepted} of {total} ({share:.1}%)");

    assert!(total >= MIN_LINES, "{CORPUS} has {total} lines, fewer than {MIN_LINES}");
    assert!(panics.is_empty(), "translate panicked on the lines at {CORPUS}:{panics:?}");
    assert!(unnamed.is_empty(), "the errors of the lines at {CORPUS}:{unnamed:?} name no option");
    assert!(accepted >= ACCEPTED_FLOOR, "accepted {accepted} lines, fewer than the floor of {ACCEPTED_FLOOR}");
}
