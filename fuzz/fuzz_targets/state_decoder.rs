//! A corrupt or hostile saved state: bytes into the state file decoder
//! (header, checksum, body) and, when they decode, a restore into a fresh
//! machine (`vmm::snapshot::fuzz_state_decoder`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm::snapshot::fuzz_state_decoder(data);
});
