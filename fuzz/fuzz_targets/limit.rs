//! cargo-fuzz target: see `tunnelfleet::fuzzing::limit`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnelfleet::fuzzing::limit(data));
