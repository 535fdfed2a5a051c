//! `cargo fuzz run sigv4`: see `orca::fuzzing::sigv4` for the input format and the promises checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orca::fuzzing::sigv4(data));
