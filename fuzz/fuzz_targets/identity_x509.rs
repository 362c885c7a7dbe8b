#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd_fuzz::identity_x509::run(data));
