//! cargo-fuzz target: see `tunnelfleet::fuzzing::ssh_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnelfleet::fuzzing::ssh_config(data));
