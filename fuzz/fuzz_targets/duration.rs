//! cargo-fuzz target: see `tunnelfleet::fuzzing::duration`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnelfleet::fuzzing::duration(data));
