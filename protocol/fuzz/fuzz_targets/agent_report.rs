//! Fuzzes what agents report and sync with. See `smoke.sh` for how it is built and run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    protocol::fuzzing::agent_report(data);
});
