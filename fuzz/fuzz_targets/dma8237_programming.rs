//! A hostile guest programming the 8237 DMA pair and its page registers,
//! with device transfers over every channel
//! (`devices::legacy::dma8237::fuzz_dma_programming`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::legacy::dma8237::fuzz_dma_programming(data);
});
