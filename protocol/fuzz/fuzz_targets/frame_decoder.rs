//! Fuzzes the length-prefixed frame decoders (synchronous and async) against each other.
//! Run with `cargo +nightly fuzz run frame_decoder` from `protocol/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    protocol::fuzzing::frame_decoder(data);
});
