//! A corrupt or hostile incoming migration (`-incoming`): bytes into the
//! stream's receiver, live (RAM records, their checksum, the state) or a
//! state file followed by the RAM, restoring into a fresh machine
//! (`vmm::snapshot::fuzz_migration_stream`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm::snapshot::fuzz_migration_stream(data);
});
