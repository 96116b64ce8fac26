//! `--daemonize` and `--pidfile` (QEMU's -daemonize and -pidfile).
//!
//! QEMU forks; ferrovm starts itself again instead (the same program,
//! arguments and first argument, so a `qemu-system-x86_64` command line
//! stays one), which needs no `unsafe`: the foreground process waits on a
//! pipe, the child's stdout, for the byte the background process writes
//! once its machine is set up ([`ready`]), and exits 0; if the pipe closes
//! without it, the set-up failed (its error went to the shared stderr)
//! and the foreground process exits with the child's status, or 1. The
//! background process has a session of its own, no controlling terminal,
//! umask 027, and once set up works in `/` with stdin, stdout and stderr
//! on `/dev/null`, as QEMU's does.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vmm::Error;

/// Set in the background process's environment (and taken out of it
/// there at once).
const CHILD: &str = "FERROVM_DAEMON_CHILD";

fn fail(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("--daemonize: {what}: {e}"))
}

/// Whether this process is the background one of `--daemonize`.
pub fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// In the foreground process: starts the background one and waits until
/// its machine is set up (status 0) or it ends first (its status, or 1).
pub fn start_and_wait() -> Result<i32, Error> {
    let exe = std::env::current_exe().map_err(|e| fail("cannot find this program", e))?;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let mut child = Command::new(&exe)
        .arg0(argv0)
        .args(args)
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(&format!("cannot start {}", exe.display()), e))?;
    let mut pipe = child.stdout.take().ok_or_else(|| fail("the pipe", "missing"))?;
    let mut byte = [0xffu8; 1];
    let got = loop {
        match pipe.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    if matches!(got, Ok(1)) && byte[0] == 0 {
        return Ok(0);
    }
    let status = child.wait().map_err(|e| fail("waiting for the background process", e))?;
    Ok(status.code().filter(|&c| c != 0).unwrap_or(1))
}

/// In the background process, first: out of the foreground process's
/// session (no controlling terminal), and files created 0640 at most.
pub fn detach() -> Result<(), Error> {
    // Still one thread: the environment can change. Programs this process
    // starts (`exec:` migrations) must not take themselves for it.
    std::env::remove_var(CHILD);
    nix::unistd::setsid().map_err(|e| fail("setsid", e))?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    Ok(())
}

/// In the background process, once its machine is set up: into `/`,
/// stdio on `/dev/null`, and the foreground process told (it exits 0).
pub fn ready() -> Result<(), Error> {
    std::env::set_current_dir("/").map_err(|e| fail("cannot change to /", e))?;
    let null =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(|e| fail("/dev/null", e))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| fail("stdin", e))?;
    nix::unistd::dup2_stderr(&null).map_err(|e| fail("stderr", e))?;
    // The foreground process is told through a copy of the pipe, once
    // stdout is on /dev/null: when it returns, all three are.
    let _ = std::io::stdout().flush();
    let pipe = std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned().map_err(|e| fail("stdout", e))?;
    nix::unistd::dup2_stdout(&null).map_err(|e| fail("stdout", e))?;
    // Whether the foreground process still listens or not, the machine runs.
    let _ = std::fs::File::from(pipe).write_all(&[0]);
    Ok(())
}

/// `--pidfile`: holds this process's ID while it lives, and goes when it
/// is dropped (the run's end, an error, a panic).
pub struct Pidfile(PathBuf);

impl Pidfile {
    /// Writes the process ID to `path` (kept absolute: the background
    /// process changes to `/`).
    pub fn write(path: &Path) -> Result<Pidfile, Error> {
        let what = |e: std::io::Error| Error::Config(format!("--pidfile {}: {e}", path.display()));
        let path = std::path::absolute(path).map_err(what)?;
        std::fs::write(&path, format!("{}\n", std::process::id())).map_err(what)?;
        Ok(Pidfile(path))
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
