//! A hostile guest against virtio-blk's request queue: descriptor chains,
//! request headers, sectors, lengths, discard segments
//! (`devices::virtio::blk::fuzz_requests`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::virtio::blk::fuzz_requests(data);
});
