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
