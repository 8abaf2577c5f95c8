//! cargo-fuzz target: see `tunnelfleet::fuzzing::inventory`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnelfleet::fuzzing::inventory(data));
