//! Meridian's replicated registry, as a library with no I/O: the state every coordinator holds, the commands
//! that change it and their deterministic `apply`, the scheduler that decides placements, and the access
//! rules (`authz`) that `apply` re-checks.
//!
//! This crate is to the coordinator what quinn-proto is to quinn: it never reads a clock, draws randomness,
//! touches a disk or a socket, or spawns a task. Time and randomness arrive inside commands or as arguments,
//! so the same commands applied in the same order produce byte-identical state on every replica — the
//! property the Raft log depends on. The coordinator crate wraps it with storage (openraft + sled),
//! transport and the admin API; nothing here may depend on tokio, sled, axum, tonic or quinn.

pub mod authz;
pub mod controllers;
pub mod fuzzing;
pub mod scheduler;
pub mod state;
pub mod token;
