//! `cargo fuzz run config`: see `orca::fuzzing::config` for the input format and the promises checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orca::fuzzing::config(data));
