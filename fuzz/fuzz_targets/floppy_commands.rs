//! A hostile guest against the 82077AA floppy controller: commands and
//! their bytes, data phases through the FIFO and over DMA, register
//! writes, DMA programming and disk changes
//! (`devices::floppy::fuzz_fdc_commands`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::floppy::fuzz_fdc_commands(data);
});
