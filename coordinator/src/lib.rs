//! Meridian's coordinator: the Raft-replicated registry, its storage and network, and the admin API.

pub mod api;
pub mod audit_archive;
pub(crate) mod audit_repair;
pub mod bootstrap;
pub mod clock;
pub(crate) mod controllers;
pub mod crypto;
pub mod fleet;
pub(crate) mod lease;
pub(crate) mod membership;
pub(crate) mod mesh_gate;
pub(crate) mod network;
pub mod node;
pub(crate) mod proposer;
pub mod random;
pub(crate) mod rpc_service;
pub(crate) mod store;
pub(crate) mod upgrade;

pub use meridian_registry::{authz, scheduler, state};

pub use fleet::FleetTimings;
pub use meridian_registry::controllers::audit_archive::AuditRetention;
pub use meridian_registry::controllers::janitor::JobRetention;
pub use node::{ClusterStatus, Coordinator, CoordinatorOptions, Handle, MemberNode, NodeId};
