//! The guest images of scripts/guest-images.sh, for the tests that boot
//! them.

use std::path::{Path, PathBuf};

/// `guest-images/`, when it holds every file of `need`; a test without
/// them says so and is skipped.
pub fn images(need: &[&str]) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images");
    if need.iter().all(|f| dir.join(f).is_file()) {
        Some(dir)
    } else {
        eprintln!("skipping: guest-images/ lacks {need:?} (run scripts/guest-images.sh)");
        None
    }
}

/// Writes to `out` the initramfs of `images` with the generic kernel's
/// `modules` appended (decompressed, as `lib/modules/NAME.ko`, in a cpio
/// archive of their own that Linux unpacks after the first), using `work`
/// as scratch space.
#[allow(dead_code, reason = "not every suite loads modules")]
pub fn initrd_with_modules(images: &Path, modules: &[&str], work: &Path, out: &Path) {
    let sh = |script: &str| {
        let o = std::process::Command::new("sh").arg("-c").arg(script).output().expect("sh runs");
        assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work.join("lib/modules")).unwrap();
    for m in modules {
        let found = std::process::Command::new("find")
            .arg(images.join("modules-generic/kernel"))
            .args(["-name", &format!("{m}.ko*")])
            .output()
            .unwrap();
        let ko = String::from_utf8_lossy(&found.stdout).lines().next().unwrap_or_default().to_string();
        assert!(!ko.is_empty(), "module {m} is not in guest-images/modules-generic");
        let dst = work.join(format!("lib/modules/{m}.ko"));
        let cmd = match Path::new(&ko).extension().and_then(|e| e.to_str()) {
            Some("xz") => format!("xz -dc '{ko}' > '{}'", dst.display()),
            Some("zst") => format!("zstd -qdc '{ko}' > '{}'", dst.display()),
            Some("gz") => format!("gzip -dc '{ko}' > '{}'", dst.display()),
            _ => format!("cp '{ko}' '{}'", dst.display()),
        };
        sh(&cmd);
    }
    sh(&format!(
        "cat '{}' > '{}' && (cd '{}' && find lib | cpio -o -H newc --quiet | gzip -9) >> '{}'",
        images.join("initramfs.cpio.gz").display(),
        out.display(),
        work.display(),
        out.display()
    ));
}

/// The `ferrovm qemu` arguments that boot Debian's generic kernel of
/// `images` with `initrd` and the command line `cmdline` under the JIT:
/// 256 MiB, no default devices, COM1 on stdio, no reboot; `extra` after.
#[allow(dead_code, reason = "not every suite boots the generic kernel")]
pub fn generic_linux(images: &Path, initrd: &Path, cmdline: &str, extra: &[&str]) -> Vec<String> {
    let kernel = images.join("vmlinuz-generic");
    let mut args: Vec<String> = ["qemu", "-accel", "tcg", "-m", "256", "-nodefaults", "-display", "none"]
        .into_iter()
        .chain(["-serial", "stdio", "-no-reboot", "-kernel"])
        .map(str::to_string)
        .collect();
    args.push(kernel.display().to_string());
    args.extend(["-initrd".to_string(), initrd.display().to_string(), "-append".to_string(), cmdline.to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}
