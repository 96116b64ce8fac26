//! Running the `ferrovm` binary from a test.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A path for `name` in this test process's own temporary folder.
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrovm-{suite}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Run the binary with `args`, no standard input, and collect its output.
pub fn ferrovm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrovm")).args(args).stdin(Stdio::null()).output().expect("ferrovm runs")
}

/// Whether KVM can run guests here; says why not when it cannot.
#[allow(dead_code, reason = "not every suite has KVM runs")]
pub fn kvm_usable() -> bool {
    match hvf_kvm_accel::open() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping the KVM run: {e}");
            false
        }
    }
}
