//! HMP: the human monitor's line protocol, commands and output formats.

use std::fmt::Write as _;
use std::io::{self, BufRead, Read, Write};

use serde_json::Value;

use crate::{Command, Monitor};

/// Longest accepted command line; longer lines are rejected whole.
const MAX_LINE: usize = 4096;

const BANNER: &str = "ferrovm monitor - type 'help' for more information\n";
const PROMPT: &str = "(qemu) ";

const HELP: &[(&str, &str)] = &[
    ("change device filename [format [read-only-mode]]", "change a removable medium"),
    ("change vnc password password", "change the VNC password"),
    ("cont|c", "resume emulation"),
    ("delvm tag", "delete a VM snapshot"),
    ("eject [-f] device", "eject a removable medium (use -f to force it)"),
    ("expire_password protocol time", "set the password expiry time (now, never, +seconds)"),
    ("help|? [cmd]", "show the help"),
    ("info [subcommand]", "show various information about the system state"),
    ("loadvm tag", "restore a VM snapshot from its tag"),
    ("migrate [-d] uri", "migrate to URI"),
    ("migrate_cancel", "cancel the current VM migration"),
    ("migrate_incoming uri", "continue an incoming migration from an -incoming defer"),
    ("migrate_set_capability capability state", "enable/disable a migration capability (on|off)"),
    ("migrate_set_parameter parameter value", "set a migration parameter"),
    ("nmi", "inject an NMI"),
    ("quit|q", "quit the emulator"),
    ("savevm [tag]", "save a VM snapshot (a tag is generated if none is given)"),
    ("screendump [-f ppm|png] filename [device [head]]", "save the screen to a file"),
    ("set_password protocol password [action-if-connected]", "set the password of a remote display"),
    ("stop", "stop emulation"),
    ("system_powerdown", "send a system power down event"),
    ("system_reset", "reset the system"),
    ("system_wakeup", "wake up the guest from suspend"),
];

const INFO_HELP: &[(&str, &str)] = &[
    ("info block", "show the block devices"),
    ("info cpus", "show infos for each CPU"),
    ("info kvm", "show KVM information"),
    ("info migrate", "show migration status"),
    ("info name", "show the current VM name"),
    ("info snapshots", "show the currently saved VM snapshots"),
    ("info status", "show the current VM status (running|paused)"),
    ("info version", "show the version of QEMU"),
];

/// Outcome of one command line.
pub(crate) enum LineResult {
    /// Text to print (may be empty).
    Output(String),
    /// `quit`: the caller flushes its output, then runs [`Command::Quit`].
    Quit,
}

/// Splits a command line into words; `"..."` quotes with `\` escapes.
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => word.push('\n'),
                        Some('r') => word.push('\r'),
                        Some(ch) => word.push(ch),
                        None => return Err("unterminated string".into()),
                    },
                    Some(ch) => word.push(ch),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                word.push(ch);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

/// Positional words and `-x` flags of a command.
struct Words {
    cmd: String,
    pos: Vec<String>,
    flags: Vec<(char, Option<String>)>,
}

/// Separates flags from positional words. `valued` flags take the next word.
fn split_flags(cmd: &str, words: &[String], flags: &str, valued: &str) -> Result<Words, String> {
    let mut pos = Vec::new();
    let mut fl = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let mut it = w.chars();
        if it.next() == Some('-') && w.len() == 2 {
            let f = it.next().unwrap_or('-');
            if valued.contains(f) {
                let v = words.get(i + 1).ok_or_else(|| format!("{cmd}: missing value for -{f}"))?;
                fl.push((f, Some(v.clone())));
                i += 2;
                continue;
            }
            if flags.contains(f) {
                fl.push((f, None));
                i += 1;
                continue;
            }
            return Err(format!("{cmd}: unsupported option -{f}"));
        }
        pos.push(w.clone());
        i += 1;
    }
    Ok(Words { cmd: cmd.to_string(), pos, flags: fl })
}

impl Words {
    fn has(&self, f: char) -> bool {
        self.flags.iter().any(|(c, _)| *c == f)
    }

    fn value(&self, f: char) -> Option<String> {
        self.flags.iter().find(|(c, _)| *c == f).and_then(|(_, v)| v.clone())
    }

    /// Checks the number of positional words: at least `min` (else `what expected`), at most `max`.
    fn count(&self, min: usize, max: usize, what: &str) -> Result<(), String> {
        if self.pos.len() < min {
            return Err(format!("{}: {what} expected", self.cmd));
        }
        if self.pos.len() > max {
            return Err(format!("{}: extraneous characters at the end of line", self.cmd));
        }
        Ok(())
    }
}

/// Runs `cmd` and prints nothing on success, `Error: ...` on failure.
fn exec(mon: &Monitor, cmd: Command) -> String {
    match mon.execute(cmd) {
        Ok(_) => String::new(),
        Err(e) => format!("Error: {}\n", e.desc),
    }
}

/// Runs `cmd` and formats its result with `f`.
fn query(mon: &Monitor, cmd: Command, f: fn(&Value) -> String) -> String {
    match mon.execute(cmd) {
        Ok(v) => f(&v),
        Err(e) => format!("Error: {}\n", e.desc),
    }
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn n(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

fn fmt_status(v: &Value) -> String {
    let running = b(v, "running");
    let mut out = format!("VM status: {}", if running { "running" } else { "paused" });
    if b(v, "singlestep") {
        out.push_str(" (single step mode)");
    }
    if let Some(st) = s(v, "status").filter(|st| !running && *st != "paused") {
        let _ = write!(out, " ({st})");
    }
    out.push('\n');
    out
}

fn fmt_name(v: &Value) -> String {
    s(v, "name").map(|n| format!("{n}\n")).unwrap_or_default()
}

fn fmt_kvm(v: &Value) -> String {
    let state = if !b(v, "present") {
        "not compiled"
    } else if b(v, "enabled") {
        "enabled"
    } else {
        "disabled"
    };
    format!("kvm support: {state}\n")
}

fn fmt_cpus(v: &Value) -> String {
    let mut out = String::new();
    for (i, c) in v.as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        let idx = n(c, "cpu-index").unwrap_or(i as i64);
        let mark = if i == 0 { '*' } else { ' ' };
        let _ = write!(out, "{mark} CPU #{idx}:");
        if let Some(t) = n(c, "thread-id") {
            let _ = write!(out, " thread_id={t}");
        }
        out.push('\n');
    }
    out
}

fn fmt_block(v: &Value) -> String {
    let mut out = String::new();
    for (i, d) in v.as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(s(d, "device").unwrap_or(""));
        let ins = d.get("inserted").filter(|x| x.is_object());
        if let Some(ins) = ins {
            if let Some(node) = s(ins, "node-name") {
                let _ = write!(out, " ({node})");
            }
            let _ = writeln!(
                out,
                ": {} ({}{}{})",
                s(ins, "file").unwrap_or(""),
                s(ins, "drv").unwrap_or("raw"),
                if b(ins, "ro") { ", read-only" } else { "" },
                if b(ins, "encrypted") { ", encrypted" } else { "" },
            );
        } else {
            out.push_str(": [not inserted]\n");
        }
        if let Some(q) = s(d, "qdev") {
            let _ = writeln!(out, "    Attached to:      {q}");
        }
        if let Some(io) = s(d, "io-status").filter(|x| *x != "ok") {
            let _ = writeln!(out, "    I/O status:       {io}");
        }
        if b(d, "removable") {
            let _ = writeln!(
                out,
                "    Removable device: {}locked, tray {}",
                if b(d, "locked") { "" } else { "not " },
                if b(d, "tray_open") { "open" } else { "closed" },
            );
        }
        if let Some(cache) = ins.and_then(|i| i.get("cache")) {
            let _ = writeln!(
                out,
                "    Cache mode:       {}{}{}",
                if b(cache, "writeback") { "writeback" } else { "writethrough" },
                if b(cache, "direct") { ", direct" } else { "" },
                if b(cache, "no-flush") { ", ignore flushes" } else { "" },
            );
        }
    }
    out
}

fn fmt_migrate(v: &Value) -> String {
    let mut out = String::new();
    let Some(status) = s(v, "status") else { return out };
    let _ = write!(out, "Migration status: {status}");
    match s(v, "error-desc").filter(|_| status == "failed") {
        Some(e) => {
            let _ = writeln!(out, " ({e})");
        }
        None => out.push('\n'),
    }
    for (k, label) in [
        ("total-time", "total time"),
        ("expected-downtime", "expected downtime"),
        ("downtime", "downtime"),
        ("setup-time", "setup"),
    ] {
        if let Some(x) = n(v, k) {
            let _ = writeln!(out, "{label}: {x} ms");
        }
    }
    if let Some(ram) = v.get("ram") {
        for (k, label) in [
            ("transferred", "transferred ram"),
            ("remaining", "remaining ram"),
            ("total", "total ram"),
            ("duplicate", "duplicate"),
            ("normal", "normal"),
        ] {
            if let Some(x) = n(ram, k) {
                if matches!(k, "duplicate" | "normal") {
                    let _ = writeln!(out, "{label}: {x} pages");
                } else {
                    let _ = writeln!(out, "{label}: {} kbytes", x >> 10);
                }
            }
        }
    }
    out
}

/// `size_to_str`: three significant digits and a binary unit.
fn size_to_str(bytes: i64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut x = bytes.max(0) as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < UNITS.len() {
        x /= 1024.0;
        i += 1;
    }
    let digits = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    let mut t = format!("{x:.digits$}");
    if t.contains('.') {
        t = t.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{t} {}", UNITS[i])
}

/// Seconds since 1970 in the host's local time, in `fmt` (chrono's
/// strftime syntax), as QEMU's `localtime_r` dates are.
pub fn local_time(secs: i64, fmt: &str) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(secs, 0) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t.format(fmt).to_string(),
        chrono::LocalResult::None => format!("@{secs}"),
    }
}

fn fmt_snapshots(v: &Value) -> String {
    if let Some(text) = v.as_str() {
        return text.to_string();
    }
    let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return "There is no snapshot available.\n".into();
    }
    let mut out = String::from("List of snapshots present on all disks:\n");
    let _ =
        writeln!(out, "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for sn in list {
        let date = local_time(n(sn, "date-sec").unwrap_or(0), "%Y-%m-%d %H:%M:%S");
        let clk = n(sn, "vm-clock-sec").unwrap_or(0);
        let ms = n(sn, "vm-clock-nsec").unwrap_or(0) / 1_000_000;
        let clock = format!("{:04}:{:02}:{:02}.{:03}", clk / 3600, clk / 60 % 60, clk % 60, ms);
        let icount = n(sn, "icount").map(|i| i.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
            "--",
            s(sn, "name").unwrap_or(""),
            size_to_str(n(sn, "vm-state-size").unwrap_or(0)),
            date,
            clock,
            icount
        );
    }
    out
}

fn help_text(topic: Option<&str>) -> String {
    let mut out = String::new();
    for (usage, desc) in HELP.iter().chain(INFO_HELP) {
        let name = usage.split([' ', '|']).next().unwrap_or("");
        if topic.is_none_or(|t| t == name || usage.starts_with(&format!("{t} ")) || usage == &t) {
            let _ = writeln!(out, "{usage} -- {desc}");
        }
    }
    out
}

fn info(mon: &Monitor, line_words: &[String]) -> String {
    let Some(sub) = line_words.get(1) else {
        let mut out = String::new();
        for (usage, desc) in INFO_HELP {
            let _ = writeln!(out, "{usage}  -- {desc}");
        }
        return out;
    };
    if line_words.len() > 2 {
        return "info: extraneous characters at the end of line\n".into();
    }
    match sub.as_str() {
        "status" => query(mon, Command::QueryStatus, fmt_status),
        "version" => query(mon, Command::QueryVersion, |v| {
            let q = v.get("qemu").cloned().unwrap_or(Value::Null);
            format!(
                "{}.{}.{}{}\n",
                n(&q, "major").unwrap_or(0),
                n(&q, "minor").unwrap_or(0),
                n(&q, "micro").unwrap_or(0),
                s(v, "package").unwrap_or("")
            )
        }),
        "name" => query(mon, Command::QueryName, fmt_name),
        "kvm" => query(mon, Command::QueryKvm, fmt_kvm),
        "cpus" => query(mon, Command::QueryCpusFast, fmt_cpus),
        "block" => query(mon, Command::QueryBlock, fmt_block),
        "migrate" => query(mon, Command::QueryMigrate, fmt_migrate),
        "snapshots" => query(mon, Command::InfoSnapshots, fmt_snapshots),
        other => format!("unknown command: 'info {other}'\n"),
    }
}

/// The value of HMP's `migrate_set_parameter NAME VALUE` for the
/// parameters ferrovm takes: `downtime-limit` in milliseconds, the
/// throttle's percentages, and `max-bandwidth` as a size in bytes per
/// second whose unit is MiB when none is given (`100`, `100M`, `1G`,
/// `512K`, `800000B`), as QEMU reads it.
fn migration_parameter(name: &str, value: &str) -> Result<u64, String> {
    if !crate::MIGRATION_PARAMETERS.contains(&name) {
        return Err(format!(
            "Error: migrate_set_parameter: '{name}' is not a parameter ferrovm takes ({})",
            crate::MIGRATION_PARAMETERS.join(", ")
        ));
    }
    if name != "max-bandwidth" {
        return value.parse::<u64>().map_err(|_| format!("Error: Parameter '{name}' expects a non-negative integer"));
    }
    let bad_size = || format!("Error: Parameter '{name}' expects a size, such as 100M");
    let (digits, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let shift = match unit.to_ascii_uppercase().as_str() {
        "B" => 0,
        "K" => 10,
        "" | "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad_size()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(bad_size)
}

fn default_snapshot_name() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    local_time(i64::try_from(now).unwrap_or(0), "vm-%Y%m%d%H%M%S")
}

/// Parses and runs one command line; output lines end in `\r\n`.
pub(crate) fn run_line(mon: &Monitor, line: &str) -> LineResult {
    LineResult::Output(crlf(&match run_line_inner(mon, line) {
        Ok(Some(out)) => out,
        Ok(None) => return LineResult::Quit,
        Err(e) => format!("{e}\n"),
    }))
}

/// `Ok(None)` means quit.
fn run_line_inner(mon: &Monitor, line: &str) -> Result<Option<String>, String> {
    let words = tokenize(line)?;
    let Some(cmd) = words.first() else { return Ok(Some(String::new())) };
    let rest = &words[1..];
    let simple = |flags: &str, valued: &str| split_flags(cmd, rest, flags, valued);
    let out = match cmd.as_str() {
        "help" | "?" => {
            let w = simple("", "")?;
            w.count(0, 1, "command")?;
            help_text(w.pos.first().map(String::as_str))
        }
        "info" => info(mon, &words),
        "stop" | "cont" | "c" | "system_reset" | "system_powerdown" | "system_wakeup" | "nmi" | "migrate_cancel" => {
            simple("", "")?.count(0, 0, "")?;
            let c = match cmd.as_str() {
                "stop" => Command::Stop,
                "cont" | "c" => Command::Cont,
                "system_reset" => Command::SystemReset,
                "system_powerdown" => Command::SystemPowerdown,
                "system_wakeup" => Command::SystemWakeup,
                "nmi" => Command::InjectNmi,
                _ => Command::MigrateCancel,
            };
            exec(mon, c)
        }
        "quit" | "q" => {
            simple("", "")?.count(0, 0, "")?;
            return Ok(None);
        }
        "savevm" => {
            let w = simple("", "")?;
            w.count(0, 1, "string")?;
            let name = w.pos.first().cloned().unwrap_or_else(default_snapshot_name);
            exec(mon, Command::SaveVm { name })
        }
        "loadvm" | "delvm" => {
            let w = simple("", "")?;
            w.count(1, 1, "string")?;
            let name = w.pos[0].clone();
            exec(mon, if cmd == "loadvm" { Command::LoadVm { name } } else { Command::DelVm { name } })
        }
        "migrate" => {
            let w = simple("d", "")?;
            w.count(1, 1, "string")?;
            exec(mon, Command::Migrate { uri: w.pos[0].clone() })
        }
        "migrate_incoming" => {
            let w = simple("", "")?;
            w.count(1, 1, "uri")?;
            exec(mon, Command::MigrateIncoming { uri: w.pos[0].clone() })
        }
        "migrate_set_capability" => {
            let w = simple("", "")?;
            w.count(2, 2, "capability")?;
            let state = match w.pos[1].as_str() {
                "on" | "true" | "yes" => true,
                "off" | "false" | "no" => false,
                v => return Err(format!("Error: Parameter 'state' expects 'on' or 'off', not '{v}'")),
            };
            exec(mon, Command::MigrateSetCapabilities { capabilities: vec![(w.pos[0].clone(), state)] })
        }
        "migrate_set_parameter" => {
            let w = simple("", "")?;
            w.count(2, 2, "parameter")?;
            let value = migration_parameter(&w.pos[0], &w.pos[1])?;
            exec(mon, Command::MigrateSetParameters { parameters: vec![(w.pos[0].clone(), value)] })
        }
        "screendump" => {
            let w = simple("", "f")?;
            w.count(1, 3, "filename")?;
            let format = w.value('f');
            if let Some(f) = format.as_deref().filter(|f| !matches!(*f, "ppm" | "png")) {
                return Err(format!("Error: Parameter 'format' does not accept value '{f}'"));
            }
            if let Some(h) = w.pos.get(2) {
                if h != "0" {
                    return Err(format!("Error: Display head {h} does not exist"));
                }
            }
            exec(mon, Command::Screendump { filename: w.pos[0].clone(), format, device: w.pos.get(1).cloned() })
        }
        "eject" => {
            let w = simple("f", "")?;
            w.count(1, 1, "block device name")?;
            exec(mon, Command::Eject { device: Some(w.pos[0].clone()), id: None, force: w.has('f') })
        }
        "change" => {
            let w = simple("f", "r")?;
            w.count(2, 4, "block device name")?;
            if w.pos[0] == "vnc" {
                if w.pos[1] != "password" && w.pos[1] != "passwd" {
                    return Err("Error: Expected 'password' after 'vnc'".into());
                }
                let Some(password) = w.pos.get(2).cloned() else {
                    return Err("Error: change vnc password: password expected".into());
                };
                exec(mon, Command::SetPassword { protocol: "vnc".into(), password })
            } else {
                let read_only_mode = w.pos.get(3).cloned().or(w.value('r'));
                if let Some(m) =
                    read_only_mode.as_deref().filter(|m| !matches!(*m, "retain" | "read-only" | "read-write"))
                {
                    return Err(format!("Error: invalid read-only-mode '{m}'"));
                }
                exec(
                    mon,
                    Command::BlockdevChangeMedium {
                        device: Some(w.pos[0].clone()),
                        id: None,
                        filename: w.pos[1].clone(),
                        format: w.pos.get(2).cloned(),
                        read_only_mode,
                    },
                )
            }
        }
        "set_password" | "expire_password" => {
            let w = simple("", "")?;
            w.count(2, 3, "string")?;
            let protocol = w.pos[0].clone();
            if protocol != "vnc" && protocol != "spice" {
                return Err(format!("Error: Parameter 'protocol' does not accept value '{protocol}'"));
            }
            let secret = w.pos[1].clone();
            exec(
                mon,
                if cmd == "set_password" {
                    Command::SetPassword { protocol, password: secret }
                } else {
                    Command::ExpirePassword { protocol, time: secret }
                },
            )
        }
        other => format!("unknown command: '{other}'\n"),
    };
    Ok(Some(out))
}

/// Writes `text` with `\n` turned into `\r\n`, as QEMU's monitor output does.
pub(crate) fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

/// Reads one line of at most [`MAX_LINE`] bytes; `Ok(None)` at end of input,
/// `Ok(Some(Err(())))` for an over-long line (which is consumed).
fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<Result<String, ()>>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        // Skip the rest of the line, in bounded chunks.
        loop {
            let mut junk = Vec::new();
            let m = r.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut junk)?;
            if m == 0 || junk.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Err(())));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(Ok(String::from_utf8_lossy(&buf).into_owned())))
}

/// Runs an HMP session until end of input or `quit`.
pub(crate) fn session<R: BufRead, W: Write>(mon: &Monitor, mut r: R, mut w: W) -> io::Result<()> {
    w.write_all(crlf(BANNER).as_bytes())?;
    loop {
        w.write_all(PROMPT.as_bytes())?;
        w.flush()?;
        let line = match read_line(&mut r)? {
            None => return Ok(()),
            Some(Err(())) => {
                w.write_all(crlf("Error: command line too long\n").as_bytes())?;
                continue;
            }
            Some(Ok(l)) => l,
        };
        match run_line(mon, &line) {
            LineResult::Output(out) => w.write_all(out.as_bytes())?,
            LineResult::Quit => {
                w.flush()?;
                let _ = mon.backend.execute(Command::Quit);
                return Ok(());
            }
        }
    }
}

/// HMP on a raw terminal that a serial console shares (QEMU's
/// `-serial mon:stdio`, where `Ctrl-A c` switches between the two). The
/// terminal echoes nothing in raw mode, so this echoes the keys and edits
/// the line: Backspace (DEL or BS) and Ctrl-U erase, Enter (CR, LF or
/// CR LF) runs the line, escape sequences (the arrow keys) and other
/// control keys are skipped. The banner shows the first time the monitor
/// has the focus, the prompt each time; `quit` ends it (after the
/// backend's [`Command::Quit`]), and later keys are ignored.
pub struct HmpTerminal {
    mon: std::sync::Arc<Monitor>,
    line: Vec<u8>,
    greeted: bool,
    /// A CR ended the last line: a LF right after it belongs to it.
    after_cr: bool,
    escape: Escape,
    /// The line went past [`MAX_LINE`]: it is refused at Enter.
    too_long: bool,
    quit: bool,
}

/// Where the terminal is in an escape sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Esc,
    /// In a control sequence (ESC [ or ESC O), until its final byte.
    Sequence,
}

impl HmpTerminal {
    /// The monitor's side of a shared terminal, for `mon`.
    pub fn new(mon: std::sync::Arc<Monitor>) -> Self {
        HmpTerminal {
            mon,
            line: Vec::new(),
            greeted: false,
            after_cr: false,
            escape: Escape::None,
            too_long: false,
            quit: false,
        }
    }

    /// The focus comes to the monitor: what to show (the banner the first
    /// time, then the prompt, on an empty line).
    pub fn focus_in(&mut self) -> String {
        if self.quit {
            return String::new();
        }
        self.line.clear();
        self.too_long = false;
        self.escape = Escape::None;
        let mut out = String::new();
        if !self.greeted {
            self.greeted = true;
            out.push_str(&crlf(BANNER));
        }
        out.push_str(PROMPT);
        out
    }

    /// The focus goes back to the guest's console: the line ends.
    pub fn focus_out(&mut self) -> String {
        if self.quit {
            String::new()
        } else {
            "\r\n".to_string()
        }
    }

    /// Typed keys: what to show (their echo, and the output of the lines
    /// they end).
    pub fn input(&mut self, bytes: &[u8]) -> String {
        let mut out = String::new();
        for &b in bytes {
            if self.quit {
                break;
            }
            let after_cr = std::mem::take(&mut self.after_cr);
            match self.escape {
                Escape::Esc => {
                    self.escape = if b == b'[' || b == b'O' { Escape::Sequence } else { Escape::None };
                    continue;
                }
                Escape::Sequence => {
                    if (0x40..=0x7e).contains(&b) {
                        self.escape = Escape::None;
                    }
                    continue;
                }
                Escape::None => {}
            }
            match b {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    out.push_str("\r\n");
                    self.enter(&mut out);
                }
                0x7f | 0x08 => {
                    if self.pop_char() {
                        out.push_str("\x08 \x08");
                    }
                }
                0x15 => {
                    while self.pop_char() {
                        out.push_str("\x08 \x08");
                    }
                    self.too_long = false;
                }
                0x1b => self.escape = Escape::Esc,
                0..=0x1f => {}
                _ if self.line.len() >= MAX_LINE => self.too_long = true,
                _ => {
                    self.line.push(b);
                    // A character shows once its last byte is there.
                    if b < 0x80 || std::str::from_utf8(self.last_char()).is_ok() {
                        out.push_str(&String::from_utf8_lossy(self.last_char()));
                    }
                }
            }
        }
        out
    }

    /// Runs the line typed so far.
    fn enter(&mut self, out: &mut String) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
        if std::mem::take(&mut self.too_long) {
            out.push_str(&crlf("Error: command line too long\n"));
        } else {
            match run_line(&self.mon, &line) {
                LineResult::Output(s) => out.push_str(&s),
                LineResult::Quit => {
                    self.quit = true;
                    let _ = self.mon.backend.execute(Command::Quit);
                    return;
                }
            }
        }
        out.push_str(PROMPT);
    }

    /// The bytes of the last (maybe partial) UTF-8 character of the line.
    fn last_char(&self) -> &[u8] {
        let start = self.line.iter().rposition(|&b| b & 0xc0 != 0x80).unwrap_or(0);
        &self.line[start..]
    }

    /// Takes the last character off the line; false when it is empty.
    fn pop_char(&mut self) -> bool {
        if self.line.is_empty() {
            return false;
        }
        let start = self.line.iter().rposition(|&b| b & 0xc0 != 0x80).unwrap_or(0);
        self.line.truncate(start);
        true
    }
}
