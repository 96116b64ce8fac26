//! `ferrovm bench --migration`: live migration of a 512 MiB guest that
//! writes 64 MiB of its memory in a loop (and checks it after every pass),
//! between two processes over TCP on loopback, under ferrovm's JIT and
//! under QEMU TCG when installed, in the same run. Both sides use
//! auto-converge and a 300 ms downtime limit (QEMU's default), without a
//! bandwidth cap. It prints the downtime (the time the guest stood still)
//! and the total time, their medians over `--runs`, and the ratios; and
//! checks the guest's passes go on at the receiver.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

/// Guest RAM.
const MEM: &str = "512M";
/// MiB the guest writes in its loop.
const LOOP_MIB: u32 = 64;
const LOAD: u32 = 0x10_0000;
const CODE_OFF: u32 = 0x80;

fn print(a: &mut CodeAssembler, s: &str) -> Result<(), IcedError> {
    a.mov(edx, 0x3f8u32)?;
    for b in s.bytes() {
        a.mov(al, u32::from(b))?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Where the writer's buffer begins (16 MiB).
pub const BUF: u32 = 0x100_0000;
/// Where it keeps the checksum of the last pass's values.
pub const CHECKSUM: u32 = BUF - 4;

/// The guest: pass after pass, it writes every 32-bit word of a buffer of
/// `mib` MiB with a value of the word's index and the pass, folding each
/// into a checksum (kept in memory, at [`CHECKSUM`]); reads the buffer
/// back into a second checksum; and prints `M:pass N` (N in hex) when they
/// agree, `M:BAD N` and stops when they do not. Each pass first checks the
/// buffer against the last pass's checksum too, so a page a migration
/// left stale shows wherever in a pass the guest moved.
fn writer(mib: u32) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    // Multiboot leaves ESP undefined; the loop calls a routine.
    a.mov(esp, 0x9_0000u32)?;
    writer_loop(&mut a, mib)?;
    a.assemble(u64::from(LOAD + CODE_OFF))
}

/// The writer's loop (the guest of this benchmark and of the migration tests):
/// position independent, with 32-bit addresses, so that it runs in 32-bit
/// code or, copied anywhere, in 64-bit code.
pub fn writer_loop(a: &mut CodeAssembler, mib: u32) -> Result<(), IcedError> {
    let words = mib * (1 << 20) / 4;
    print(a, "M:start\n")?;
    a.mov(ebp, 1u32)?;
    let mut pass = a.create_label();
    let mut write = a.create_label();
    let mut verify = a.create_label();
    let mut bad = a.create_label();
    let mut hex = a.create_label();
    let mut digit = a.create_label();
    a.set_label(&mut pass)?;
    a.mov(edi, BUF)?;
    // The buffer still holds what the last pass wrote: checked before
    // it is written again, wherever in the last pass the guest moved.
    let mut fresh = a.create_label();
    let mut recheck = a.create_label();
    a.cmp(ebp, 1u32)?;
    a.je(fresh)?;
    a.xor(edx, edx)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut recheck)?;
    a.mov(eax, dword_ptr(edi + ecx * 4))?;
    a.rol(edx, 5)?;
    a.xor(edx, eax)?;
    a.inc(ecx)?;
    a.cmp(ecx, words)?;
    a.jb(recheck)?;
    a.cmp(edx, dword_ptr(CHECKSUM))?;
    a.jne(bad)?;
    a.set_label(&mut fresh)?;
    a.xor(esi, esi)?;
    a.xor(ecx, ecx)?;
    a.imul_3(ebx, ebp, 0x85eb_ca77u32 as i32)?;
    a.set_label(&mut write)?;
    a.imul_3(eax, ecx, 0x9e37_79b1u32 as i32)?;
    a.add(eax, ebx)?;
    a.mov(dword_ptr(edi + ecx * 4), eax)?;
    a.rol(esi, 5)?;
    a.xor(esi, eax)?;
    a.inc(ecx)?;
    a.cmp(ecx, words)?;
    a.jb(write)?;
    a.mov(dword_ptr(CHECKSUM), esi)?;
    a.xor(edx, edx)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut verify)?;
    a.mov(eax, dword_ptr(edi + ecx * 4))?;
    a.rol(edx, 5)?;
    a.xor(edx, eax)?;
    a.inc(ecx)?;
    a.cmp(ecx, words)?;
    a.jb(verify)?;
    a.cmp(edx, esi)?;
    a.jne(bad)?;
    print(a, "M:pass ")?;
    a.call(hex)?;
    a.inc(ebp)?;
    a.jmp(pass)?;
    a.set_label(&mut bad)?;
    print(a, "M:BAD ")?;
    a.call(hex)?;
    let mut stop = a.create_label();
    a.set_label(&mut stop)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(stop)?;
    // EBP in hex and a newline.
    a.set_label(&mut hex)?;
    a.mov(ebx, ebp)?;
    a.mov(ecx, 8u32)?;
    a.mov(edx, 0x3f8u32)?;
    let mut each = a.create_label();
    a.set_label(&mut each)?;
    a.rol(ebx, 4)?;
    a.mov(eax, ebx)?;
    a.and(eax, 0xfu32)?;
    a.cmp(eax, 10u32)?;
    a.jb(digit)?;
    a.add(eax, u32::from(b'a' - 10 - b'0'))?;
    a.set_label(&mut digit)?;
    a.add(eax, u32::from(b'0'))?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(each)?;
    a.mov(al, u32::from(b'\n'))?;
    a.out(dx, al)?;
    a.ret()
}

/// An ELF32 multiboot kernel around `code` (loaded at `LOAD + CODE_OFF`).
fn multiboot_elf(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; CODE_OFF as usize];
    f.extend_from_slice(code);
    let size = f.len() as u32;
    let put = |f: &mut Vec<u8>, at: usize, v: &[u8]| f[at..at + v.len()].copy_from_slice(v);
    put(&mut f, 0, b"\x7fELF\x01\x01\x01");
    put(&mut f, 16, &2u16.to_le_bytes());
    put(&mut f, 18, &3u16.to_le_bytes());
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &(LOAD + CODE_OFF).to_le_bytes());
    put(&mut f, 28, &52u32.to_le_bytes());
    put(&mut f, 40, &52u16.to_le_bytes());
    put(&mut f, 42, &32u16.to_le_bytes());
    put(&mut f, 44, &1u16.to_le_bytes());
    for (i, v) in [1, 0, LOAD, LOAD, size, size, 7, 0x1000].into_iter().enumerate() {
        put(&mut f, 52 + 4 * i, &v.to_le_bytes());
    }
    let (magic, flags) = (0x1bad_b002u32, 2u32);
    put(&mut f, 0x60, &magic.to_le_bytes());
    put(&mut f, 0x64, &flags.to_le_bytes());
    put(&mut f, 0x68, &0u32.wrapping_sub(magic).wrapping_sub(flags).to_le_bytes());
    f
}

/// A child killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn qmp_connect(path: &Path) -> Result<(BufReader<UnixStream>, UnixStream), String> {
    let until = Instant::now() + Duration::from_secs(30);
    let s = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() > until => return Err(format!("QMP at {}: {e}", path.display())),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut l = String::new();
    r.read_line(&mut l).map_err(|e| e.to_string())?;
    let mut q = (r, s);
    qmp(&mut q, r#"{"execute":"qmp_capabilities"}"#)?;
    Ok(q)
}

/// The reply to `cmd` (events skipped); an error reply is an `Err`.
pub(crate) fn qmp(q: &mut (BufReader<UnixStream>, UnixStream), cmd: &str) -> Result<String, String> {
    q.1.write_all(format!("{cmd}\n").as_bytes()).map_err(|e| e.to_string())?;
    loop {
        let mut l = String::new();
        if q.0.read_line(&mut l).map_err(|e| e.to_string())? == 0 {
            return Err("the monitor closed".into());
        }
        if l.starts_with(r#"{"return""#) {
            return Ok(l);
        }
        if l.starts_with(r#"{"error""#) {
            return Err(format!("{cmd}: {}", l.trim()));
        }
    }
}

/// A number field of a JSON text, by key.
pub(crate) fn num(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

fn wait_for(file: &Path, want: &str, n: usize, secs: u64) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = std::fs::read_to_string(file).unwrap_or_default();
        if out.contains("M:BAD") {
            return Err(format!("the guest found its memory changed ({})", file.display()));
        }
        if out.matches(want).count() >= n {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!("no {n} x {want:?} in {} within {secs} s", file.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command line of a VM with its serial file, QMP socket and, for
/// a receiver, its `-incoming` URI.
type VmLine<'a> = &'a dyn Fn(&Path, &Path, Option<&str>) -> Vec<String>;

/// One migration: the command line of a VM (with `serial`, `qmp` and,
/// for the receiver, `incoming` filled in), run twice. Returns the
/// downtime and total time the source reported.
fn once(dir: &Path, tag: &str, vm: VmLine) -> Result<(Duration, Duration), String> {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let paths = |side: &str| (dir.join(format!("{tag}-{side}.serial")), dir.join(format!("{tag}-{side}.qmp")));
    let ((src_serial, src_qmp), (dst_serial, dst_qmp)) = (paths("src"), paths("dst"));
    for p in [&src_serial, &src_qmp, &dst_serial, &dst_qmp] {
        let _ = std::fs::remove_file(p);
    }
    let spawn = |args: Vec<String>| -> Result<Proc, String> {
        let (exe, rest) = args.split_first().ok_or("no command")?;
        Command::new(exe)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Proc)
            .map_err(|e| format!("{exe}: {e}"))
    };
    let _dst = spawn(vm(&dst_serial, &dst_qmp, Some(&uri)))?;
    let _src = spawn(vm(&src_serial, &src_qmp, None))?;
    wait_for(&src_serial, "M:pass", 2, 120)?;
    let mut q = qmp_connect(&src_qmp)?;
    qmp(
        &mut q,
        r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"auto-converge","state":true}]}}"#,
    )?;
    qmp(
        &mut q,
        r#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":300,"max-bandwidth":100000000000}}"#,
    )?;
    qmp(&mut q, &format!(r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#))?;
    let until = Instant::now() + Duration::from_secs(300);
    let done = loop {
        // QEMU puts spaces after its colons; ferrovm does not.
        let r = qmp(&mut q, r#"{"execute":"query-migrate"}"#)?.replace(": ", ":");
        if r.contains(r#""status":"completed""#) {
            break r;
        }
        if r.contains(r#""status":"failed""#) || Instant::now() > until {
            return Err(format!("the migration did not complete: {}", r.trim()));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ms = |k: &str| num(&done, k).map(|v| Duration::from_secs_f64(v / 1e3)).ok_or(format!("no {k} in {done}"));
    let (downtime, total) = (ms("downtime")?, ms("total-time")?);
    // The guest goes on at the receiver and its passes check out.
    let before = std::fs::read_to_string(&dst_serial).unwrap_or_default().matches("M:pass").count();
    wait_for(&dst_serial, "M:pass", before + 2, 120)?;
    Ok((downtime, total))
}

pub(crate) fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

pub(crate) fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
}

/// `ferrovm bench --migration`.
pub fn run(args: &crate::BenchArgs) -> i32 {
    let dir = std::env::temp_dir().join(format!("ferrovm-bench-migration-{}", std::process::id()));
    let kernel = dir.join("writer.elf");
    let made = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| writer(LOOP_MIB).map_err(|e| e.to_string()))
        .and_then(|code| std::fs::write(&kernel, multiboot_elf(&code)).map_err(|e| e.to_string()));
    if let Err(e) = made {
        eprintln!("bench --migration: {e}");
        return 1;
    }
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferrovm".into());
    let k = kernel.display().to_string();
    let ferrovm = |serial: &Path, qmp: &Path, incoming: Option<&str>| -> Vec<String> {
        let mut v: Vec<String> = [&exe, "run", "--accel", "jit", "--mem", MEM, "--timeout", "600", "--kernel", &k]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["--serial".into(), format!("file:{}", serial.display())]);
        v.extend(["--qmp".into(), format!("unix:{},server=on,wait=off", qmp.display())]);
        if let Some(u) = incoming {
            v.extend(["--incoming".into(), u.into()]);
        }
        v
    };
    let qemu_bin = crate::demo::which("qemu-system-x86_64");
    let qemu = |serial: &Path, qmp: &Path, incoming: Option<&str>| -> Vec<String> {
        let bin = qemu_bin.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let mut v: Vec<String> = [&bin, "-accel", "tcg", "-m", MEM, "-nodefaults", "-display", "none", "-kernel", &k]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["-serial".into(), format!("file:{}", serial.display())]);
        v.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", qmp.display())]);
        if let Some(u) = incoming {
            v.extend(["-incoming".into(), u.into()]);
        }
        v
    };
    println!(
        "live migration: a {MEM} guest writing {LOOP_MIB} MiB in a loop, over TCP on loopback, auto-converge, \
         downtime limit 300 ms, median of {} runs\n",
        args.runs
    );
    let mut rows: Vec<(&str, Option<Duration>, Option<Duration>)> = Vec::new();
    let mut engines: Vec<(&str, VmLine)> = vec![("ferrovm jit", &ferrovm)];
    match &qemu_bin {
        Some(_) => engines.push(("qemu tcg", &qemu)),
        None => println!("QEMU row skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n"),
    }
    let mut status = 0;
    for (name, vm) in engines {
        let (mut down, mut total) = (Vec::new(), Vec::new());
        for i in 0..args.runs.max(1) {
            match once(&dir, &format!("{}-{i}", name.replace(' ', "-")), vm) {
                Ok((d, t)) => {
                    println!("  {name:<12} run {i}: downtime {}, total {}", ms(Some(d)), ms(Some(t)));
                    down.push(d);
                    total.push(t);
                }
                Err(e) => {
                    println!("  {name:<12} run {i}: {e}");
                    status = 1;
                }
            }
        }
        rows.push((name, median(down), median(total)));
    }
    println!("\n{:<14} {:>10} {:>12}", "", "downtime", "total time");
    for (name, d, t) in &rows {
        println!("{name:<14} {:>10} {:>12}", ms(*d), ms(*t));
    }
    if let (Some((_, Some(fd), Some(ft))), Some((_, Some(qd), Some(qt)))) = (rows.first(), rows.get(1)) {
        println!(
            "ratio (ferrovm / qemu): downtime {:.2}x, total time {:.2}x",
            fd.as_secs_f64() / qd.as_secs_f64().max(1e-9),
            ft.as_secs_f64() / qt.as_secs_f64().max(1e-9)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    status
}
