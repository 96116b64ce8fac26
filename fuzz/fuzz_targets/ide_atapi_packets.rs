//! A hostile guest against the PIIX3 IDE controller's CD-ROM drive: PACKET
//! commands and their data phases, register writes, media changes, DMA
//! (`devices::ide::fuzz_atapi_packets`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::ide::fuzz_atapi_packets(data);
});
