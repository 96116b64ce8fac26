//! A hostile guest against the standard VGA: accesses of every size to its
//! ports, the Bochs VBE registers, the 0xA0000 window, the framebuffer and
//! the MMIO BAR, with renders in between (`devices::display::fuzz_vga`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::display::fuzz_vga(data);
});
