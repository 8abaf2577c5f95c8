//! cargo-fuzz target: see `tunnelfleet::fuzzing::token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnelfleet::fuzzing::token(data));
