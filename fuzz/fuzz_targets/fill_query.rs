//! `cargo fuzz run fill_query`: see `orca::fuzzing::fill_query` for the input format and the promises checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orca::fuzzing::fill_query(data));
