//! Whether the KVM tests can run here; when not, say why.

/// True when /dev/kvm can be used; otherwise prints the reason.
pub fn usable() -> bool {
    match hvf_kvm_accel::open() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping the KVM run: {e}");
            false
        }
    }
}

/// Whether this host's KVM runs ring-0 code in software (kvm_pvm), where
/// `--accel kvm` splits execution.
#[allow(dead_code, reason = "not every suite looks at split execution")]
pub fn emulates_ring0() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// From ferrovm's `--stats` on stderr: split execution found the kernel's
/// code in the guest and hid some from KVM, and user code ran in KVM.
#[allow(dead_code, reason = "not every suite looks at split execution")]
pub fn check_kernel_code_found(stats: &str) {
    let line = |prefix: &str| stats.lines().find(|l| l.contains(prefix)).unwrap_or("").to_string();
    let split = line("split execution:");
    assert!(split.contains("found in the guest at instruction"), "the kernel's code was found: {stats}");
    let kib: u64 = split
        .split("; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("hidden KiB in {split}"));
    assert!(kib >= 4, "kernel code hidden from KVM: {split}");
    let handovers: u64 = line("hand-overs to KVM:")
        .split("hand-overs to KVM: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("hand-overs in {stats}"));
    assert!(handovers > 0, "user code ran in KVM: {stats}");
    eprintln!("{split}");
}
