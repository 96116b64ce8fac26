//! A whole Debian 12 system: `guest-images/distro.img` (built by
//! scripts/distro-image.sh: SYSLINUX's MBR, EXTLINUX on an ext4 root,
//! Debian's generic kernel with its own initramfs, systemd) boots through
//! SeaBIOS from virtio-blk under the JIT, with its writes in a temporary
//! overlay, to multi-user.target; the image's service then runs the `dpkg`
//! workload (`dpkg -i` of a set of Debian packages, then `dpkg --purge`),
//! which an SMBIOS OEM string picks, and powers the machine off with
//! systemd's poweroff.target. The test checks the marks, the clean
//! power-off (ferrovm's exit status 0 after the guest's last mark), and
//! that the image was not changed. Without the image it says so and
//! passes.

use std::path::Path;
use std::time::{Duration, Instant};

use ferrovm_bench::distro::{ferrovm_cmd, missing_image, once, IMAGE};

/// The longest the boot and the workload may take together.
const LIMIT: Duration = Duration::from_secs(900);

#[test]
fn debian_with_systemd_boots_to_multi_user_and_runs_dpkg_under_the_jit() {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images").join(IMAGE);
    if !image.is_file() {
        eprintln!("skipping: {}", missing_image(&image));
        return;
    }
    if !Path::new("/usr/share/seabios/bios-256k.bin").is_file() {
        eprintln!("skipping: /usr/share/seabios/bios-256k.bin is missing (Debian package seabios)");
        return;
    }
    let before = std::fs::metadata(&image).and_then(|m| m.modified()).expect("the image's mtime");
    let cmd = ferrovm_cmd(Path::new(env!("CARGO_BIN_EXE_ferrovm")), &image, "jit", &["dpkg"], LIMIT);
    let started = Instant::now();
    let s = once(&cmd, &["dpkg"], LIMIT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "multi-user.target after {:.1} s (guest uptime {:.1} s); dpkg {:.1} s; {:.1} s in all",
        s.boot,
        s.boot_uptime,
        s.workload("dpkg").unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
    for line in s.stderr.iter().filter(|l| l.starts_with("ferrovm: ")) {
        eprintln!("{line}");
    }
    assert!(s.boot_uptime > 0.0 && s.boot >= s.boot_uptime, "{s:?}");
    assert!(s.workload("dpkg").is_some_and(|t| t > 0.0), "{s:?}");
    assert!(s.clean_poweroff, "the guest did not power off cleanly: {s:?}");
    let after = std::fs::metadata(&image).and_then(|m| m.modified()).expect("the image's mtime");
    assert_eq!(before, after, "the run changed {}", image.display());
}
