//! A hostile VNC client: the handshake and client messages, as bytes, into
//! the server's parser and session (`vnc::fuzz_client_messages`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vnc::fuzz_client_messages(data);
});
