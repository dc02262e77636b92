//! Fuzz target bodies for what the registry reads from callers: page tokens and job specs as JSON.
//!
//! The `protocol/fuzz` targets call these, and the unit tests below run them over pseudo-random inputs
//! from a fixed seed, so `cargo test` exercises them too. Each checks invariants with `assert!`: a panic is
//! a finding. Pure: no I/O, nothing but the input.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::state::{DomainError, JobSpec, PageRequest, MAX_PAGE_SIZE};

/// A page size (the first 8 bytes, big-endian, when there are 8) and a page token (the rest, as text):
/// either refused naming `page_token`, or a request whose size is in range and whose token is the
/// canonical encoding of where it continues.
pub fn page_token(data: &[u8]) {
    let (size, rest) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (Some(u64::from_be_bytes(*size)), rest),
        None => (None, data),
    };
    let token = String::from_utf8_lossy(rest);
    match PageRequest::new(size, Some(&token)) {
        Ok(req) => {
            assert!(
                (1..=MAX_PAGE_SIZE).contains(&req.page_size),
                "page size {}",
                req.page_size
            );
            match &req.after {
                Some(after) => {
                    assert_eq!(URL_SAFE_NO_PAD.encode(after), token, "non-canonical token")
                }
                None => assert!(token.is_empty(), "a token that continues nowhere"),
            }
        }
        Err(DomainError::Invalid { field, .. }) => assert_eq!(field, "page_token"),
        Err(other) => panic!("unexpected refusal {other:?}"),
    }
}

/// A job spec as JSON: parsing and validation never panic, and a spec that validates serializes and
/// parses back to itself and validates again.
pub fn job_spec(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<JobSpec>(data) else {
        return;
    };
    if spec.validate().is_err() {
        return;
    }
    // Invariant: a spec is plain data and serializes, and what it serializes to parses back; a panic in
    // either is a fuzzing finding, which is what this function exists to report.
    let again: JobSpec =
        serde_json::from_slice(&serde_json::to_vec(&spec).expect("a spec serializes"))
            .expect("a serialized spec parses");
    assert_eq!(again, spec, "a spec changed through JSON");
    assert!(again.validate().is_ok(), "a valid spec stopped validating");
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn inputs(seed: u64, seeds: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
        for _ in 0..2_000 {
            let mut base = seeds[rng.gen_range(0..seeds.len())].to_vec();
            for _ in 0..rng.gen_range(0..4) {
                if base.is_empty() || rng.gen_bool(0.3) {
                    base.insert(rng.gen_range(0..=base.len()), rng.gen());
                } else {
                    let i = rng.gen_range(0..base.len());
                    base[i] = rng.gen();
                }
            }
            out.push(base);
        }
        out
    }

    #[test]
    fn page_tokens_survive_mutation() {
        let token = URL_SAFE_NO_PAD.encode("job_0001");
        let seeds: [&[u8]; 3] = [b"", token.as_bytes(), b"\0\0\0\0\0\0\0\x05am9iXzAwMDE"];
        for input in inputs(7, &seeds) {
            page_token(&input);
        }
    }

    #[test]
    fn job_specs_survive_mutation() {
        let seeds: [&[u8]; 3] = [
            br#"{"command":"python","args":["train.py"],"env":{"A":"1"}}"#,
            br#"{"command":"sh","resources":{"cpu_millis":500},"replicas":2}"#,
            b"{}",
        ];
        for input in inputs(11, &seeds) {
            job_spec(&input);
        }
    }
}
