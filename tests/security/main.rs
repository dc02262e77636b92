//! Attack tests: each one tries something a hostile tenant, a stolen identity or a flood would try against
//! real Meridian processes, and asserts that it fails. `SECURITY.md` maps every line of the threat model to
//! the test here that defends it.
//!
//! - `sandbox` — a job trying to leave its sandbox (privileges, files, processes, cgroups, devices, network).
//! - `escalation` — keys, role bindings and the bootstrap principal used to gain rights.
//! - `secrets` — secrets obtained by naming a job or without a use right.
//! - `preemption` — priority and preemption used against another project.
//! - `amplification` — floods of denied requests, existence oracles, unbounded tenants.
//! - `identity` — removed, revoked, expired or over-reporting identities on the mesh.
//! - `hygiene` — key files, key material and error messages.
//! - `exec` — `job exec` and `job cp` used by a viewer, across projects, on a finished job, out of the
//!   working directory, or to see other jobs.
//! - `terminal` — `job exec -it`'s terminal sessions used the same ways, and with frames that break the
//!   protocol.

#[path = "../common/mod.rs"]
mod common;

mod amplification;
mod escalation;
mod exec;
mod hygiene;
mod identity;
mod preemption;
mod sandbox;
mod secrets;
mod terminal;
