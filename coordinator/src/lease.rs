//! The leader's lease: how long a coordinator that Raft made leader may act as one without a quorum
//! confirming it again.
//!
//! Raft alone lets a leader cut off into a minority believe it leads until it hears of a newer term. The
//! lease bounds that: winning the election is the first confirmation, every quorum round that confirms the
//! leadership renews it (counted from before the round was asked), and it lasts the shortest election
//! timeout — the soonest a majority elsewhere could have chosen another leader. Past it, the coordinator's
//! controllers pause and agents are sent elsewhere. Pure bookkeeping over instants handed in; the quorum
//! round itself is `Handle::renew_lease`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The lease of one coordinator.
#[derive(Debug)]
pub(crate) struct LeaderLease {
    /// The term led and when a quorum last confirmed it.
    held: Mutex<Option<(u64, Instant)>>,
    lasts: Duration,
}

impl LeaderLease {
    pub(crate) fn new(lasts: Duration) -> Self {
        Self {
            held: Mutex::new(None),
            lasts,
        }
    }

    /// How long a confirmation lasts.
    pub(crate) fn lasts(&self) -> Duration {
        self.lasts
    }

    /// Whether the leader of `term` may act at `now`. The first question in a new term starts the lease:
    /// Raft made this node leader of that term with a quorum's votes a moment ago.
    pub(crate) fn holds(&self, term: u64, now: Instant) -> bool {
        let mut held = self.lock();
        match *held {
            Some((t, confirmed)) if t == term => {
                now.saturating_duration_since(confirmed) < self.lasts
            }
            _ => {
                *held = Some((term, now));
                true
            }
        }
    }

    /// A quorum confirmed the leadership of `term` in a round asked at `asked`.
    pub(crate) fn confirmed(&self, term: u64, asked: Instant) {
        let mut held = self.lock();
        if held.is_none_or(|(t, at)| t < term || (t == term && at < asked)) {
            *held = Some((term, asked));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, Instant)>> {
        // A pair of plain values: a panic while holding the lock cannot leave it half-written.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LASTS: Duration = Duration::from_millis(300);

    #[test]
    fn a_lease_starts_with_the_term_and_runs_out_unless_confirmed() {
        let lease = LeaderLease::new(LASTS);
        let t0 = Instant::now();
        assert!(lease.holds(3, t0), "winning the election starts it");
        assert!(lease.holds(3, t0 + LASTS - Duration::from_millis(1)));
        assert!(!lease.holds(3, t0 + LASTS), "unconfirmed, it runs out");
        lease.confirmed(3, t0 + LASTS);
        assert!(lease.holds(3, t0 + LASTS + Duration::from_millis(100)));
        assert!(!lease.holds(3, t0 + 2 * LASTS));
    }

    #[test]
    fn a_late_answer_never_moves_the_lease_back_and_a_new_term_starts_afresh() {
        let lease = LeaderLease::new(LASTS);
        let t0 = Instant::now();
        assert!(lease.holds(3, t0));
        lease.confirmed(3, t0 + Duration::from_millis(200));
        // A slower round asked earlier answers after it: the later confirmation stands.
        lease.confirmed(3, t0 + Duration::from_millis(100));
        assert!(lease.holds(3, t0 + Duration::from_millis(450)));
        // A confirmation of an older term says nothing about this one.
        lease.confirmed(2, t0 + Duration::from_millis(400));
        assert!(!lease.holds(3, t0 + Duration::from_millis(500)));
        assert!(
            lease.holds(4, t0 + Duration::from_millis(500)),
            "a new term starts its own lease"
        );
    }
}
