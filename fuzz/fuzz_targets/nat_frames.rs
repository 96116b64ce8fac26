//! Guest frames into a restricted user-mode NAT (`net::fuzz_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzz_frame(data);
});
