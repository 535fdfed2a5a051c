//! `cargo fuzz run s3_request`: see `orca::fuzzing::s3_request` for the input format and the promises checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orca::fuzzing::s3_request(data));
