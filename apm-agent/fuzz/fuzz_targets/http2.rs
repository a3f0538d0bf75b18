#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| apm_agent::fuzzing::http2(data));
