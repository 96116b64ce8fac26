//! Hostile qcow2 files against the header, L1 table and refcount table
//! checks that run before an image is used
//! (`devices::block::header::check_bytes`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::block::header::check_bytes(data);
});
