//! The janitor: forgets finished jobs once they are older than the retention period.
//!
//! Owns [`JobRetention`] (how long finished jobs stay and how often the leader looks), the pure
//! [`purge_op`] that decides from the replicated state whether a purge is due, and [`Janitor`], the
//! controller that proposes it as an `Op::PurgeJobs` command. The state machine folds each purged job's
//! usage into the project's hourly archive, so `usage` keeps counting it. It must never remove anything
//! itself: only the committed command changes the state, identically on every replica.

use std::time::Duration;

use super::{Controller, Tick, Wake};
use crate::state::{JobOp, Op, RegistryState};

/// Most jobs one purge forgets; the rest wait for the next sweep.
pub const MAX_PURGED_PER_SWEEP: u32 = 1_000;

/// How long finished jobs are kept, and how often the leader looks for ones to forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    /// A job that finished longer ago than this is forgotten (its usage is kept per hour).
    pub retain_finished: Duration,
    /// How often the leader's janitor looks.
    pub sweep: Duration,
}

impl Default for JobRetention {
    fn default() -> Self {
        Self {
            retain_finished: Duration::from_secs(7 * 24 * 3_600),
            sweep: Duration::from_secs(60),
        }
    }
}

/// The purge due at `now_ms` (Unix ms): `Some` when a terminal job finished before `now - retention`. Pure.
pub fn purge_op(state: &RegistryState, now_ms: u64, retention: Duration) -> Option<Op> {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(retention_ms);
    let oldest = state.oldest_finished_at()?;
    (oldest < cutoff).then_some(Op::Jobs(JobOp::PurgeJobs {
        finished_before: cutoff,
        max: MAX_PURGED_PER_SWEEP,
    }))
}

/// Job retention as a controller: every sweep, proposes the purge [`purge_op`] finds due, if any.
#[derive(Debug, Clone, Copy)]
pub struct Janitor {
    pub retention: JobRetention,
}

impl Controller for Janitor {
    fn name(&self) -> &'static str {
        "janitor"
    }

    fn wake(&self) -> Wake {
        Wake::Every(self.retention.sweep.max(Duration::from_millis(10)))
    }

    fn decide(&mut self, tick: &Tick<'_>) -> Vec<Op> {
        purge_op(tick.state, tick.now.unix_ms, self.retention.retain_finished)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::JobOutcome;
    use crate::state::TenancyOp;
    use crate::state::{Actor, Command, JobSpec, Op, Outcome};

    const HOUR: u64 = 3_600_000;
    const T0: u64 = 1_700_000_000_000;

    /// A state with one project, one job finished (cancelled while pending) at `finished`, and one still
    /// pending job submitted at `T0`.
    fn state_with_finished_job(finished: u64) -> RegistryState {
        let mut s = RegistryState::default();
        let cmd = |at: u64, op: Op| Command::new(at, Actor::principal("prn_a", "ada"), op);
        let apply = |s: &mut RegistryState, index: u64, c: Command| {
            s.apply(index, &c).expect("applies");
        };
        apply(
            &mut s,
            1,
            cmd(
                T0,
                Op::Tenancy(TenancyOp::CreateProject {
                    id: "prj_a".into(),
                    name: "a".into(),
                    description: String::new(),
                    data_key: crate::state::WrappedKey {
                        master_key_id: "k1".into(),
                        nonce_b64: "AAAAAAAAAAAAAAAA".into(),
                        ciphertext_b64: "ct".into(),
                    },
                    policy: None,
                }),
            ),
        );
        for (index, id) in [(2, "job_done"), (3, "job_waiting")] {
            apply(
                &mut s,
                index,
                cmd(
                    T0,
                    Op::Jobs(JobOp::SubmitJob {
                        id: id.into(),
                        project_id: "prj_a".into(),
                        spec: JobSpec::new("true"),
                        principal_id: None,
                    }),
                ),
            );
        }
        apply(
            &mut s,
            4,
            cmd(
                finished,
                Op::Jobs(JobOp::CancelJob {
                    project_id: "prj_a".into(),
                    id: "job_done".into(),
                }),
            ),
        );
        s
    }

    #[test]
    fn a_purge_is_due_only_past_the_retention() {
        let retention = Duration::from_secs(24 * 3_600);
        let s = state_with_finished_job(T0 + HOUR);
        // Exactly at the cutoff: not older than the retention yet.
        assert_eq!(purge_op(&s, T0 + HOUR + 24 * HOUR, retention), None);
        assert_eq!(
            purge_op(&s, T0 + HOUR + 24 * HOUR + 1, retention),
            Some(Op::Jobs(JobOp::PurgeJobs {
                finished_before: T0 + HOUR + 1,
                max: MAX_PURGED_PER_SWEEP,
            }))
        );
        // A clock behind the job's end never purges it.
        assert_eq!(purge_op(&s, 0, retention), None);
    }

    #[test]
    fn unfinished_jobs_never_make_a_purge_due() {
        let mut s = state_with_finished_job(T0 + HOUR);
        let purge = Op::Jobs(JobOp::PurgeJobs {
            finished_before: u64::MAX,
            max: 10,
        });
        let outcome = s.apply(5, &Command::new(T0 + 2 * HOUR, Actor::system(), purge));
        assert_eq!(
            outcome,
            Ok(Outcome::Jobs(JobOutcome::JobsPurged { purged: 1 }))
        );
        // Only the pending job is left: nothing is due however late it is.
        assert_eq!(
            purge_op(&s, u64::MAX, Duration::from_secs(60)),
            None,
            "a pending job is never purged"
        );
        assert_eq!(s.oldest_finished_at(), None);
    }
}
