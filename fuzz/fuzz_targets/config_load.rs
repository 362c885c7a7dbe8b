#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd_fuzz::config_load::run(data));
