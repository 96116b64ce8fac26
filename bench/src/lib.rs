//! ferrovm's whole-guest measurements: `ferrovm demo` and `ferrovm bench`.
//!
//! Each bench boots real guests under every engine ferrovm has here, and
//! under `qemu-system-x86_64` when it is installed, in the same run, and
//! prints the times side by side with their ratios:
//! - [`demo`]: the built-in guest under each engine, and Linux boots to
//!   init (`ferrovm bench`);
//! - [`work`]: compute-bound work inside a Linux guest (`--work`);
//! - [`disk`]: virtio-blk and IDE throughput and IOPS inside a Linux guest
//!   (`--disk`);
//! - [`net`]: TCP throughput through the user-mode NAT (`--net`);
//! - [`migration`]: live migration's downtime and total time over
//!   loopback (`--migration`);
//! - [`restore`]: a saved guest's time to run again, and the memory of
//!   its clones (`--restore`);
//! - [`uefi`]: OVMF from the reset vector to its shell (`--uefi`);
//! - [`scroll`]: a scrolling Linux framebuffer console against the serial
//!   port (`--scroll`);
//! - [`distro`]: a whole Debian 12 system with systemd booted from its disk,
//!   `dpkg -i` and a parallel build inside it (`--distro`).
//!
//! Linux guests and QEMU run as child processes (a Linux guest under the
//! `ferrovm` binary that calls this crate), so each of those measurements
//! is a whole process, as a user runs it; the built-in guest of `demo` runs
//! in this process.

use clap::Args;

pub mod demo;
pub mod disk;
pub mod display;
pub mod distro;
pub mod migration;
pub mod net;
pub mod restore;
pub mod scroll;
pub mod smp;
pub mod uefi;
pub mod work;

/// The options of `ferrovm bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Folder with vmlinuz-cloud, vmlinuz-generic and initramfs.cpio.gz
    /// (built by scripts/guest-images.sh); Linux boots are skipped without it.
    #[arg(long, default_value = "guest-images")]
    pub images: std::path::PathBuf,
    /// Boot Linux under KVM even when the built-in guest could not run there
    /// (it does whenever KVM is usable).
    #[arg(long)]
    pub kvm_linux: bool,
    /// Seconds allowed for one Linux boot to reach init.
    #[arg(long, default_value_t = 600)]
    pub boot_timeout: u64,
    /// Measure TCP throughput through the user-mode NAT instead, per NIC
    /// model, both ways (and QEMU's -netdev user when installed).
    #[arg(long)]
    pub net: bool,
    /// Measure compute-bound work inside a Linux guest instead (a shell
    /// loop, hashes, gzip), per engine and under QEMU TCG when installed.
    #[arg(long, conflicts_with = "net")]
    pub work: bool,
    /// Measure disks inside a Linux guest instead, on virtio-blk and on
    /// IDE: sequential write and read in MiB/s and 4 KiB random-read IOPS,
    /// per engine and under QEMU's same bus when installed.
    #[arg(long, conflicts_with_all = ["net", "work"])]
    pub disk: bool,
    /// Measure vCPU scaling instead: N parallel CPU-bound jobs in a guest
    /// with N vCPUs against one job, under the JIT (a thread per vCPU, and
    /// round-robin on one), KVM and QEMU TCG with the same -smp.
    #[arg(long, value_name = "N", conflicts_with_all = ["net", "work", "disk"])]
    pub smp: Option<u32>,
    /// Measure what a VNC viewer costs instead: the emulator's CPU time
    /// while a Linux guest sleeps with a still screen, without and with
    /// one viewer, and QEMU's with its -vnc when installed.
    #[arg(long, conflicts_with_all = ["net", "work", "disk", "smp"])]
    pub display: bool,
    /// Measure live migration instead: downtime and total time of a
    /// 512 MiB guest writing its memory in a loop, migrated over TCP on
    /// loopback between two processes, and QEMU's on the same guest.
    #[arg(long, conflicts_with_all = ["net", "work", "disk", "smp", "display"])]
    pub migration: bool,
    /// Measure restores instead: a 512 MiB guest's time from `--restore`
    /// to its first instruction, `-incoming exec:` against QEMU's, and the
    /// memory ten clones of one snapshot take.
    #[arg(long, conflicts_with_all = ["net", "work", "disk", "smp", "display", "migration"])]
    pub restore: bool,
    /// Measure UEFI instead: Debian's OVMF from the reset vector to its
    /// shell's banner and prompt, per engine and under QEMU TCG.
    #[arg(long, conflicts_with_all = ["net", "work", "disk", "smp", "display", "migration", "restore"])]
    pub uefi: bool,
    /// Measure a scrolling framebuffer console instead: `seq 1 20000` on
    /// Linux's bochs DRM console and then on its serial port, timed by the
    /// guest, under the JIT and QEMU TCG, without and with a VNC viewer.
    #[arg(long, conflicts_with_all = ["net", "work", "disk", "smp", "display", "migration", "restore", "uefi"])]
    pub scroll: bool,
    /// Measure a whole Debian 12 system instead (guest-images/distro.img,
    /// built by scripts/distro-image.sh): its boot through SYSLINUX, its
    /// initramfs and systemd to multi-user.target, `dpkg -i` of a set of
    /// packages and a `make -j2` build inside it, under the JIT and QEMU TCG.
    #[arg(long, conflicts_with_all = ["net", "work", "disk", "smp", "display", "migration", "restore", "uefi", "scroll"])]
    pub distro: bool,
    /// With --disk: measure only this bus (`virtio` or `ide`).
    #[arg(long, value_name = "BUS", requires = "disk", value_parser = ["virtio", "ide"])]
    pub disk_bus: Option<String>,
    /// MiB moved each way by --net.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub net_mib: usize,
}

/// Runs the bench `args` ask for; the process exit status.
pub fn run(args: &BenchArgs) -> i32 {
    if args.net {
        net::run(args)
    } else if args.work {
        work::run(args)
    } else if args.disk {
        disk::run(args)
    } else if args.display {
        display::run(args)
    } else if args.scroll {
        scroll::run(args)
    } else if args.distro {
        distro::run(args)
    } else if args.migration {
        migration::run(args)
    } else if args.restore {
        restore::run(args)
    } else if args.uefi {
        uefi::run(args)
    } else if let Some(n) = args.smp {
        smp::run(args, n)
    } else {
        demo::bench(args)
    }
}

/// Starts `cmd` (program and arguments) with stdin and stderr on
/// /dev/null and its standard output piped: the child, and its output.
pub(crate) fn spawn_piped(cmd: &[String]) -> Result<(std::process::Child, std::process::ChildStdout), String> {
    let program = cmd.first().ok_or("no command")?;
    let mut child = std::process::Command::new(program)
        .args(&cmd[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    Ok((child, out))
}

/// A guest process whose console output is watched for marks.
pub(crate) struct Watched {
    pub child: std::process::Child,
    /// When the process was started.
    pub started: std::time::Instant,
    /// The index of each mark in turn, with its time since `started`.
    pub marks: std::sync::mpsc::Receiver<(usize, std::time::Duration)>,
}

/// Starts `cmd` with its standard output read by a thread that sends each
/// of `marks`, in order, when it is first printed (by the guest: not within
/// an `echo` of it on the same line), and then keeps reading, so the guest
/// never blocks on a full pipe. A mark need not end a line (a shell's
/// prompt does not).
pub(crate) fn watch(cmd: &[String], marks: &[&str]) -> Result<Watched, String> {
    let started = std::time::Instant::now();
    let (child, mut out) = spawn_piped(cmd)?;
    let marks: Vec<String> = marks.iter().map(|m| m.to_string()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = String::new();
        // Where the search for the next mark starts.
        let mut from = 0;
        let mut next = 0;
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if next == marks.len() {
                continue;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(at) = marks.get(next).and_then(|m| seen[from..].find(m.as_str()).map(|i| from + i)) {
                let line = &seen[seen[..at].rfind('\n').map_or(0, |i| i + 1)..at];
                from = at + marks[next].len();
                if line.contains("echo") {
                    continue;
                }
                let _ = tx.send((next, started.elapsed()));
                next += 1;
            }
        }
    });
    Ok(Watched { child, started, marks: rx })
}

#[cfg(test)]
mod tests {
    /// Marks come in order, a mark within an `echo` of it is passed over,
    /// and a mark without a line end (a prompt) is found.
    #[test]
    fn watch_finds_the_marks_in_order_past_their_echo() {
        let cmd: Vec<String> =
            ["sh", "-c", "printf 'x echo mark-a\\nShell> mark-a\\nShell> '"].iter().map(|s| s.to_string()).collect();
        let mut w = super::watch(&cmd, &["mark-a", "Shell>"]).unwrap();
        let limit = std::time::Duration::from_secs(10);
        assert_eq!(w.marks.recv_timeout(limit).map(|m| m.0), Ok(0));
        assert_eq!(w.marks.recv_timeout(limit).map(|m| m.0), Ok(1));
        let _ = w.child.wait();
        // The thread ends with the output: nothing more is sent.
        assert!(w.marks.recv_timeout(limit).is_err());
    }
}
