//! A hostile QMP client: bytes into the JSON stream splitter and the QMP
//! session, before and after capabilities negotiation
//! (`monitor::fuzz_qmp_input`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    monitor::fuzz_qmp_input(data);
});
