//! A hostile guest against virtio-net's virtqueues, descriptors and buffers,
//! with frames arriving from the network (`devices::virtio::net::fuzz_rings`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::virtio::net::fuzz_rings(data);
});
