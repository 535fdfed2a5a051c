//! `cargo fuzz run range`: see `orca::fuzzing::range` for the input format and the promises checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orca::fuzzing::range(data));
