//! `cargo fuzz run azure_listing`: see `orca::fuzzing::azure_listing` for the input format and the promises checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orca::fuzzing::azure_listing(data));
