//! A hostile guest against the e1000's registers, descriptor rings and
//! buffers, with frames arriving from the network (`devices::nic::e1000::fuzz_rings`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::nic::e1000::fuzz_rings(data);
});
