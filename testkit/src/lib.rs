//! Helpers shared by Meridian's tests, used as a dev-dependency only.
//!
//! [`eventually`] is the one way a test waits for something another task, thread or process makes true:
//! it re-checks a condition every [`POLL`] until it holds or the deadline passes, and then fails naming
//! what never happened. Tests never sleep for a fixed time in place of a condition; the poll interval
//! only bounds how soon a change is seen.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked again.
pub const POLL: Duration = Duration::from_millis(20);

/// A condition that did not hold before its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: did not happen within {deadline:?}")]
pub struct NeverHappened {
    pub what: String,
    pub deadline: Duration,
}

/// Waits until `condition` holds, checking every [`POLL`] for at most `deadline`.
pub async fn eventually(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<(), NeverHappened> {
    eventually_some(what, deadline, || condition().then_some(())).await
}

/// Waits until `probe` returns `Some`, checking every [`POLL`] for at most `deadline`, and returns it.
pub async fn eventually_some<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, NeverHappened> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= until {
            return Err(never(what, deadline));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the future `probe` makes returns `Some`, checking every [`POLL`] for at most `deadline`
/// (for conditions that need a request to check).
pub async fn eventually_async<T, F>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> F,
) -> Result<T, NeverHappened>
where
    F: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= until {
            return Err(never(what, deadline));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually_some`] for tests without an async runtime: blocks the calling thread between checks.
pub fn eventually_blocking<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, NeverHappened> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= until {
            return Err(never(what, deadline));
        }
        std::thread::sleep(POLL);
    }
}

fn never(what: &str, deadline: Duration) -> NeverHappened {
    NeverHappened {
        what: what.to_owned(),
        deadline,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_condition_made_true_by_another_task_is_seen() {
        let n = Arc::new(AtomicU32::new(0));
        let writer = n.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::task::yield_now().await;
                writer.fetch_add(1, Ordering::SeqCst);
            }
        });
        let seen = eventually_some("three increments", Duration::from_secs(10), || {
            let v = n.load(Ordering::SeqCst);
            (v == 3).then_some(v)
        })
        .await;
        assert_eq!(seen, Ok(3));
    }

    #[tokio::test]
    async fn a_condition_that_never_holds_fails_naming_it() {
        let err = eventually("the impossible", Duration::ZERO, || false)
            .await
            .expect_err("never holds");
        assert_eq!(err.what, "the impossible");
        assert!(err.to_string().contains("the impossible"));
    }

    #[test]
    fn the_blocking_form_returns_the_value_and_fails_the_same_way() {
        let mut calls = 0;
        let value = eventually_blocking("a third call", Duration::from_secs(10), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(value, Ok(3));
        assert!(eventually_blocking("nothing", Duration::ZERO, || None::<()>).is_err());
    }
}
