//! Arbitrary bytes as guest frames into a restricted NAT (see `net::fuzz_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzz_frame(data);
});
