//! cargo-fuzz target: see `tunnelfleet::fuzzing::playbook`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnelfleet::fuzzing::playbook(data));
