//! cargo-fuzz target: see `tunnelfleet::fuzzing::known_hosts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnelfleet::fuzzing::known_hosts(data));
