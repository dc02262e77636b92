//! Fuzzes the decoding of every message a peer can send over the RPC layer (`RpcRequest`, `RaftPayload`,
//! `ForwardWriteRequest`, agent messages, ...). See `smoke.sh` for how it is built and run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    protocol::fuzzing::rpc_request(data);
});
