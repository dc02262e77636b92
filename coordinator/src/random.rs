//! The coordinator's randomness: ids, API tokens, data keys and nonces are all drawn through one
//! [`Randomness`], which the coordinator is given at start.
//!
//! Production uses [`OsRandomness`] (the operating system's generator); a test may give a coordinator a
//! [`SeededRandomness`] so that the ids it mints are the same on every run. The registry never draws
//! randomness: what it needs arrives inside commands, drawn here before they are proposed.

use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};

/// A source of generators, one per use.
pub trait Randomness: Send + Sync + 'static {
    /// A generator for one use: one id, one token, one sealing.
    fn rng(&self) -> Box<dyn RngCore + Send>;
}

/// The operating system's generator. The only one a production coordinator uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandomness;

impl Randomness for OsRandomness {
    fn rng(&self) -> Box<dyn RngCore + Send> {
        Box::new(OsRng)
    }
}

/// The operating system's randomness, shared.
pub fn os() -> Arc<dyn Randomness> {
    Arc::new(OsRandomness)
}

/// A reproducible sequence from a seed, for tests only: every generator it hands out is seeded from the
/// next number of one seeded stream. Never give it to a coordinator that holds real keys.
#[derive(Debug)]
pub struct SeededRandomness {
    stream: Mutex<StdRng>,
}

impl SeededRandomness {
    pub fn new(seed: u64) -> Self {
        Self {
            stream: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl Randomness for SeededRandomness {
    fn rng(&self) -> Box<dyn RngCore + Send> {
        let seed = self
            .stream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_u64();
        Box::new(StdRng::seed_from_u64(seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_source_repeats_itself_and_hands_out_different_generators() {
        let draw = |r: &SeededRandomness| {
            let (mut a, mut b) = (r.rng(), r.rng());
            (a.next_u64(), b.next_u64())
        };
        let first = draw(&SeededRandomness::new(7));
        assert_eq!(first, draw(&SeededRandomness::new(7)));
        assert_ne!(first.0, first.1);
        assert_ne!(first, draw(&SeededRandomness::new(8)));
    }

    #[test]
    fn the_os_source_draws_different_values() {
        let r = OsRandomness;
        assert_ne!(r.rng().next_u64(), r.rng().next_u64());
    }
}
