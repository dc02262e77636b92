//! Fuzz target bodies for every decoder that reads peer bytes — the frame decoders, the `meridian.v1`
//! messages that arrive over the RPC layer, what agents report — and for the quantity parsers that read
//! what people type.
//!
//! The `protocol/fuzz` targets call these functions, and the unit tests below run them over pseudo-random
//! inputs from a fixed seed, so a plain `cargo test` exercises them too. Each function checks invariants
//! with `assert!`: a panic here is a finding. They must never do I/O or depend on anything but their input.

use bytes::Bytes;
use prost::Message;

use crate::frame::{self, FrameError};
use crate::pb;
use crate::rpc::{decode_request, decode_response};

/// Drives the synchronous and asynchronous frame decoders over `data` and checks that they agree.
///
/// The first two bytes choose the maximum frame size, so small limits are explored as well as large ones.
pub fn frame_decoder(data: &[u8]) {
    let (max, stream) = match data.split_first_chunk::<2>() {
        Some((limit, rest)) => (usize::from(u16::from_be_bytes(*limit)), rest),
        None => (frame::DEFAULT_MAX_FRAME, data),
    };
    for max in [max, frame::DEFAULT_MAX_FRAME] {
        let sync_frames = decode_all(stream, max);
        let async_frames = futures::executor::block_on(read_all(stream, max));
        assert_eq!(
            sync_frames, async_frames,
            "sync and async decoders disagree"
        );
    }
}

/// What a decoder made of a byte stream: the frames, then how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Vec<u8>>,
    end: End,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    TooLarge { len: usize, max: usize },
    Truncated { expected: usize, got: usize },
}

fn decode_all(mut rest: &[u8], max: usize) -> Decoded {
    let mut frames = Vec::new();
    loop {
        if rest.is_empty() {
            return Decoded {
                frames,
                end: End::Clean,
            };
        }
        match frame::decode_frame(rest, max) {
            Ok(Some((payload, consumed))) => {
                assert!(payload.len() <= max, "payload above the maximum");
                assert_eq!(consumed, frame::LENGTH_PREFIX + payload.len());
                assert!(consumed <= rest.len());
                let reencoded = frame::encode_frame(payload, max);
                assert!(matches!(reencoded, Ok(ref bytes) if bytes[..] == rest[..consumed]));
                frames.push(payload.to_vec());
                rest = &rest[consumed..];
            }
            Ok(None) => {
                let end = match frame::decode_complete_frame(rest, max) {
                    Err(FrameError::Truncated { expected, got }) => {
                        assert!(got < expected);
                        assert_eq!(got, rest.len());
                        End::Truncated { expected, got }
                    }
                    other => panic!("incomplete frame must read as truncated, got {other:?}"),
                };
                return Decoded { frames, end };
            }
            Err(FrameError::TooLarge { len, max: limit }) => {
                assert!(len > limit);
                return Decoded {
                    frames,
                    end: End::TooLarge { len, max: limit },
                };
            }
            Err(other) => panic!("a pure decoder cannot fail with {other:?}"),
        }
    }
}

async fn read_all(mut rest: &[u8], max: usize) -> Decoded {
    let mut frames = Vec::new();
    loop {
        let before = rest.len();
        match frame::read_frame(&mut rest, max).await {
            Ok(Some(payload)) => frames.push(payload),
            Ok(None) => {
                return Decoded {
                    frames,
                    end: End::Clean,
                }
            }
            Err(FrameError::TooLarge { len, max }) => {
                return Decoded {
                    frames,
                    end: End::TooLarge { len, max },
                }
            }
            Err(FrameError::Truncated { expected, got }) => {
                assert_eq!(got, before, "truncation must count every byte read");
                return Decoded {
                    frames,
                    end: End::Truncated { expected, got },
                };
            }
            Err(FrameError::Io(e)) => panic!("reading from memory cannot fail: {e}"),
        }
    }
}

/// Decodes `data` as every message that arrives from a peer and checks that whatever decodes re-encodes
/// to something that decodes to the same value.
pub fn rpc_request(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(request) = decode_request(bytes.clone()) {
        assert!(request.body.len() <= data.len());
        if let Some(timeout) = request.timeout {
            assert!(!timeout.is_zero());
        }
    }
    let _ = decode_response(bytes.clone());
    round_trip::<pb::RpcRequest>(&bytes);
    round_trip::<pb::RpcResponse>(&bytes);
    round_trip::<pb::RpcStatus>(&bytes);
    round_trip::<pb::RaftPayload>(&bytes);
    round_trip::<pb::ForwardWriteRequest>(&bytes);
    round_trip::<pb::ForwardWriteResponse>(&bytes);
    round_trip::<pb::ReadIndexResponse>(&bytes);
    round_trip::<pb::MembershipChangeRequest>(&bytes);
    round_trip::<pb::PingResponse>(&bytes);
    round_trip::<pb::NodeRegistration>(&bytes);
    round_trip::<pb::NodeRegistrationAck>(&bytes);
    round_trip::<pb::Heartbeat>(&bytes);
    round_trip::<pb::HeartbeatAck>(&bytes);
}

/// Decodes `data` as what an agent reports and syncs with (`ReportRequest`, `SyncRequest`, the job events
/// and the answers), checking that whatever decodes re-encodes to the same value and that every event of a
/// decoded report survives on its own.
pub fn agent_report(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    round_trip::<pb::ReportRequest>(&bytes);
    round_trip::<pb::ReportResponse>(&bytes);
    round_trip::<pb::SyncRequest>(&bytes);
    round_trip::<pb::SyncResponse>(&bytes);
    round_trip::<pb::JobEvent>(&bytes);
    if let Ok(report) = pb::ReportRequest::decode(bytes) {
        for event in &report.events {
            let alone = event.encode_to_vec();
            assert!(
                matches!(pb::JobEvent::decode(&alone[..]), Ok(ref again) if again == event),
                "an event changed when encoded on its own"
            );
        }
    }
}

/// Feeds `data` (as text) to every quantity parser: none panics, and what parses comes back from its
/// formatting (durations as seconds, instants as RFC 3339).
pub fn units(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::units::parse_cpu_millis(&text);
    let _ = crate::units::parse_byte_size(&text);
    if let Ok(secs) = crate::units::parse_duration_secs(&text) {
        assert_eq!(
            crate::units::parse_duration_secs(&format!("{secs}s")),
            Ok(secs),
            "{text:?}"
        );
    }
    if let Ok(ms) = crate::units::parse_instant_ms(&text) {
        let formatted = crate::units::format_rfc3339_ms(ms);
        if formatted.contains('T') {
            assert_eq!(
                crate::units::parse_instant_ms(&formatted),
                Ok(ms),
                "{text:?}"
            );
        }
    }
}

fn round_trip<M: Message + Default + PartialEq>(bytes: &Bytes) {
    let Ok(message) = M::decode(bytes.clone()) else {
        return;
    };
    let encoded = message.encode_to_vec();
    assert!(
        matches!(M::decode(&encoded[..]), Ok(ref again) if *again == message),
        "re-encoded message decodes differently"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Method;

    /// SplitMix64: a tiny, seedable generator, so every run sees the same inputs.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Inputs of four shapes: raw noise, well-formed frames, frames cut short, and mutated valid messages.
    fn inputs(seed: u64, count: usize) -> Vec<Vec<u8>> {
        let mut rng = SplitMix(seed);
        let valid_request = pb::RpcRequest {
            method: Method::RaftAppendEntries.id(),
            timeout_ms: 1500,
            body: Bytes::from_static(b"{\"vote\":{\"leader_id\":1}}"),
        }
        .encode_to_vec();
        (0..count)
            .map(|i| match i % 4 {
                0 => {
                    let len = rng.below(300);
                    rng.bytes(len)
                }
                1 | 2 => {
                    let mut out = (rng.below(1024) as u16).to_be_bytes().to_vec();
                    for _ in 0..rng.below(4) {
                        let len = rng.below(200);
                        let payload = rng.bytes(len);
                        out.extend((len as u32).to_be_bytes());
                        out.extend(payload);
                    }
                    if i % 4 == 2 && !out.is_empty() {
                        let cut = rng.below(out.len());
                        out.truncate(cut);
                    }
                    out
                }
                _ => {
                    let mut out = valid_request.clone();
                    for _ in 0..=rng.below(3) {
                        let at = rng.below(out.len());
                        out[at] ^= 1 << rng.below(8);
                    }
                    out
                }
            })
            .collect()
    }

    #[test]
    fn frame_decoder_survives_seeded_inputs() {
        for input in inputs(0x6d65_7269_6469_616e, 4000) {
            frame_decoder(&input);
        }
    }

    #[test]
    fn agent_reports_survive_seeded_inputs() {
        for input in inputs(0x0061_6765_6e74, 4000) {
            agent_report(&input);
        }
    }

    #[test]
    fn unit_parsers_survive_seeded_inputs_and_text_near_the_grammar() {
        for input in inputs(0x0075_6e69_7473, 2000) {
            units(&input);
        }
        for text in [
            "1h30m",
            "90",
            "2026-11-27T09:30:00.250+01:00",
            "2026-11-27 09:30:00Z",
            "250m",
            "1.5Gi",
            "9999-12-31T23:59:59.999Z",
            "99999999999999999999",
            "1e3",
            "-1",
            "0.0001",
            "5 m",
        ] {
            units(text.as_bytes());
        }
    }

    #[test]
    fn rpc_request_survives_seeded_inputs() {
        for input in inputs(0x7270_6331, 4000) {
            rpc_request(&input);
        }
    }

    #[test]
    fn frame_decoder_sees_frames_in_well_formed_input() {
        let mut input = 64u16.to_be_bytes().to_vec();
        input.extend(frame::encode_frame(b"abc", 64).unwrap());
        input.extend(frame::encode_frame(b"", 64).unwrap());
        let decoded = decode_all(&input[2..], 64);
        assert_eq!(decoded.frames, vec![b"abc".to_vec(), Vec::new()]);
        assert_eq!(decoded.end, End::Clean);
        frame_decoder(&input);
    }
}
