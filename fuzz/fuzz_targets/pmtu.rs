//! Fuzz target: see `overlayd::core::invariants::check_pmtu` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd::core::invariants::check_pmtu(data));
