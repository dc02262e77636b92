//! Fuzzes page tokens and sizes. See `smoke.sh` for how it is built and run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meridian_registry::fuzzing::page_token(data);
});
