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
