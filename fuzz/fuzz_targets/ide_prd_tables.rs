//! A hostile guest against the PIIX3 IDE controller's bus master: PRD
//! tables anywhere in and out of guest RAM, DMA commands, register writes
//! (`devices::ide::fuzz_prd_tables`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::ide::fuzz_prd_tables(data);
});
