//! Fuzzes the length-prefixed frame decoders (synchronous and async) against each other. See `smoke.sh`
//! for how it is built and run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    protocol::fuzzing::frame_decoder(data);
});
