//! Jobs in the replicated registry: their specs, lifecycle, attempts and the indexes that keep the
//! scheduler's and the agents' reads cheap.
//!
//! Owns `SubmitJob`, `CancelJob`, `PlaceJobs` (the leader's scheduling pass), `ReportJobEvents` (what an
//! agent saw happen), `SetIdleGpus`, and the job side of a node's registration and loss. A job moves
//! `pending → scheduled → running → succeeded | failed | cancelled | lost`; a lost or failed attempt sends
//! it back to `pending` while its retry budget allows. Every report is fenced twice: by the node's lease
//! epoch (for the whole command) and by the job's current attempt (for each event), so a result from an
//! old registration or an old attempt never overrides the current one. `PurgeJobs` (the leader's janitor)
//! forgets terminal jobs, oldest first by the (finished_at, id) index, after folding their usage into the
//! project's per-hour archive (`usage.rs`).
//!
//! Like the rest of the state, this module must never read a clock, draw randomness or do I/O: every time
//! arrives inside the command. Floating point appears only in the usage report, which is computed on read
//! and never stored (see `usage.rs`).
mod events;
mod placement;
mod queries;
mod records;
mod submit;
#[cfg(test)]
mod tests;

pub use records::*;
pub use submit::{secret_binds_workload, Submission};
