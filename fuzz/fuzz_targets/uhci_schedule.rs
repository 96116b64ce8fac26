//! A hostile guest against the UHCI controller: register accesses, frame
//! lists, QHs and TDs written anywhere in guest memory, time passing, host
//! input and saved states (`devices::usb::fuzz_uhci`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::usb::fuzz_uhci(data);
});
