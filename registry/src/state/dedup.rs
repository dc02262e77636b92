//! De-duplication of requests: the first outcome of each of the last [`REMEMBERED_REQUESTS`] requests that
//! carried a request id, so a write re-sent after a leader change applies exactly once.
//!
//! [`RequestLog`] is this concern's own state; only `apply` writes it (`remember`), in log order, so every
//! replica forgets the same requests. What a repeat answers is decided by the registry
//! (`RegistryState::repeat`), which reads the records an outcome names from their own domains.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CommandOutcome, FleetOutcome, JobOutcome, Outcome, TenancyOutcome};

/// How many recent request ids each replica remembers for de-duplication.
pub const REMEMBERED_REQUESTS: usize = 10_000;

/// The first outcome of a recently applied request: the outcome itself, or from apply version 3 on, when
/// it carried a whole job, project or node, only which one (see [`OutcomeRef`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RememberedRequest {
    pub(super) index: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) outcome: Option<CommandOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) record: Option<OutcomeRef>,
}

/// The record a remembered outcome carried, by id: a repeat of the request answers the record as it is
/// now, so the dedup table holds ids instead of up to [`REMEMBERED_REQUESTS`] copies of records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeRef {
    Job { id: String },
    Project { id: String },
    Node { key: String },
}

impl RememberedRequest {
    /// What to remember of `outcome` under apply version `version`.
    pub(super) fn of(index: u64, outcome: &CommandOutcome, version: u32) -> Self {
        let record = match outcome {
            _ if version < 3 => None,
            Ok(Outcome::Jobs(JobOutcome::Job { job })) => {
                Some(OutcomeRef::Job { id: job.id.clone() })
            }
            Ok(Outcome::Tenancy(TenancyOutcome::Project { project })) => {
                Some(OutcomeRef::Project {
                    id: project.id.clone(),
                })
            }
            Ok(Outcome::Fleet(FleetOutcome::Node { node })) => Some(OutcomeRef::Node {
                key: node.key.clone(),
            }),
            _ => None,
        };
        Self {
            index,
            outcome: record.is_none().then(|| outcome.clone()),
            record,
        }
    }
}

/// The remembered requests, oldest forgotten first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestLog {
    /// Request id → first outcome.
    requests: BTreeMap<String, RememberedRequest>,
    /// Ordering key (at least the log index, increasing) → request id, to forget the oldest first.
    order: BTreeMap<u64, String>,
}

impl RequestLog {
    /// A log holding a snapshot's requests and order.
    pub(super) fn from_parts(
        requests: BTreeMap<String, RememberedRequest>,
        order: BTreeMap<u64, String>,
    ) -> RequestLog {
        RequestLog { requests, order }
    }

    /// The requests and their order, as a snapshot writes them.
    pub(super) fn parts(&self) -> (&BTreeMap<String, RememberedRequest>, &BTreeMap<u64, String>) {
        (&self.requests, &self.order)
    }

    /// The first outcome of `request_id`, while it is remembered.
    pub fn get(&self, request_id: &str) -> Option<&RememberedRequest> {
        self.requests.get(request_id)
    }

    /// How many requests are remembered.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// True when no request is remembered.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Remembers `request_id`'s first outcome, applied at log `index`, forgetting the oldest beyond
    /// [`REMEMBERED_REQUESTS`].
    pub(super) fn remember(&mut self, index: u64, request_id: &str, first: RememberedRequest) {
        self.requests.insert(request_id.to_owned(), first);
        // Keys only order the forgetting; several requests can share a log index (a batch).
        let seq = self
            .order
            .last_key_value()
            .map_or(index, |(last, _)| last.saturating_add(1).max(index));
        self.order.insert(seq, request_id.to_owned());
        while self.order.len() > REMEMBERED_REQUESTS {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.requests.remove(&oldest);
            }
        }
    }
}
