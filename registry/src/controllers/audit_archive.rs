//! The audit archiver: keeps the replicated audit log to a bounded number of live records by archiving the
//! oldest ones.
//!
//! Owns [`AuditRetention`] (how many records stay live, how many one archive takes), the pure
//! [`archive_op`] that decides from the state whether an archive is due, and [`AuditArchiver`], the
//! controller that proposes it as an `ArchiveAudit` command. Each coordinator writes the records it forgets
//! to its own disk before applying it; this controller never touches a record or a file itself, and does
//! nothing before apply version 4.

use std::time::Duration;

use super::{Controller, Tick, Wake};
use crate::state::{AuditOp, Op, RegistryState, ARCHIVE_APPLY_VERSION};

/// How many audit records stay in the replicated state, and how many one archive takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// When the state holds more live records than this, the oldest are archived.
    pub keep_records: u64,
    /// How many of the oldest records one `ArchiveAudit` takes (at least 1).
    pub batch: u64,
}

impl Default for AuditRetention {
    fn default() -> Self {
        Self {
            keep_records: 100_000,
            batch: 10_000,
        }
    }
}

/// The archive due now: `Some` when apply version 4 is on and the state holds more than `keep_records`
/// live records; it takes the oldest `batch` of them. Pure.
pub fn archive_op(state: &RegistryState, retention: AuditRetention) -> Option<Op> {
    if state.apply_version < ARCHIVE_APPLY_VERSION {
        return None;
    }
    let live = state.audit_records();
    if u64::try_from(live.len()).unwrap_or(u64::MAX) <= retention.keep_records {
        return None;
    }
    let take = usize::try_from(retention.batch.max(1))
        .unwrap_or(usize::MAX)
        .min(live.len());
    let through_seq = live.get(take.checked_sub(1)?)?.seq;
    Some(Op::Audit(AuditOp::ArchiveAudit { through_seq }))
}

/// Audit retention as a controller: whenever the state moved, proposes the archive [`archive_op`] finds
/// due, if any.
#[derive(Debug, Clone, Copy)]
pub struct AuditArchiver {
    pub retention: AuditRetention,
    /// How often it looks (when the state moved).
    pub tick: Duration,
}

impl Controller for AuditArchiver {
    fn name(&self) -> &'static str {
        "audit-archiver"
    }

    fn wake(&self) -> Wake {
        Wake::OnChange(self.tick.max(Duration::from_millis(10)))
    }

    fn decide(&mut self, tick: &Tick<'_>) -> Vec<Op> {
        archive_op(tick.state, self.retention).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::Now;
    use crate::state::{Actor, AuditOutcome, ClusterOp, Command, Outcome};

    const T0: u64 = 1_700_000_000_000;

    /// A state holding `records` audit records (from `RecordAudit`), at apply version `version`.
    fn state_with(records: u64, version: u32) -> RegistryState {
        let mut s = RegistryState::default();
        let mut index = 0;
        let mut apply = |s: &mut RegistryState, actor: Actor, op: Op| {
            index += 1;
            s.apply(index, &Command::new(T0 + index, actor, op))
        };
        if version > 0 {
            let out = apply(
                &mut s,
                Actor::system(),
                Op::Cluster(ClusterOp::SetApplyVersion { version }),
            );
            assert_eq!(out, Ok(Outcome::Done));
        }
        while (s.audit_records().len() as u64) < records {
            apply(
                &mut s,
                Actor::principal("prn_a", "ada"),
                Op::Audit(AuditOp::RecordAudit {
                    action: "test.record".into(),
                    project: None,
                    target: "t".into(),
                    outcome: AuditOutcome::Denied,
                    detail: String::new(),
                }),
            )
            .expect("recorded");
        }
        s
    }

    fn decide(state: &RegistryState, keep_records: u64, batch: u64) -> Vec<Op> {
        let mut archiver = AuditArchiver {
            retention: AuditRetention {
                keep_records,
                batch,
            },
            tick: Duration::from_millis(100),
        };
        archiver.decide(&Tick {
            state,
            now: Now {
                unix_ms: T0,
                mono_ms: 0,
            },
            leading_since_ms: 0,
        })
    }

    #[test]
    fn nothing_is_archived_at_or_below_keep() {
        let s = state_with(10, ARCHIVE_APPLY_VERSION);
        assert!(decide(&s, 10, 3).is_empty());
        assert!(decide(&s, 100, 3).is_empty());
    }

    #[test]
    fn above_keep_the_oldest_batch_is_archived() {
        let s = state_with(11, ARCHIVE_APPLY_VERSION);
        let first = s.audit_records()[0].seq;
        assert_eq!(
            decide(&s, 10, 3),
            vec![Op::Audit(AuditOp::ArchiveAudit {
                through_seq: first + 2
            })]
        );
        // A batch larger than the log takes the whole log; a batch of 0 takes one record.
        let last = s.audit_records().last().expect("records").seq;
        assert_eq!(
            decide(&s, 1, 1_000),
            vec![Op::Audit(AuditOp::ArchiveAudit { through_seq: last })]
        );
        assert_eq!(
            decide(&s, 1, 0),
            vec![Op::Audit(AuditOp::ArchiveAudit { through_seq: first })]
        );
    }

    #[test]
    fn the_proposed_archive_applies_and_the_next_decision_waits_for_more_records() {
        let mut s = state_with(12, ARCHIVE_APPLY_VERSION);
        let ops = decide(&s, 10, 5);
        assert_eq!(ops.len(), 1);
        let index = s.applied_index + 1;
        let out = s.apply(
            index,
            &Command::new(T0 + 1_000, Actor::system(), ops[0].clone()),
        );
        assert!(matches!(out, Ok(Outcome::AuditArchived { .. })), "{out:?}");
        // 12 - 5 + the archive's own record: 8 live, below keep.
        assert_eq!(s.audit_records().len(), 8);
        assert!(decide(&s, 10, 5).is_empty());
    }

    #[test]
    fn nothing_is_archived_before_apply_version_4() {
        let s = state_with(50, ARCHIVE_APPLY_VERSION - 1);
        assert!(decide(&s, 10, 3).is_empty());
    }
}
