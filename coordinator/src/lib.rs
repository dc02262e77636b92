//! Meridian's coordinator: the Raft-replicated registry, its storage and network, and the admin API.

pub mod api;
pub mod bootstrap;
pub mod crypto;
pub(crate) mod dispatch;
pub mod fleet;
pub(crate) mod janitor;
pub(crate) mod mesh_gate;
pub(crate) mod network;
pub mod node;
pub(crate) mod proposer;
pub(crate) mod rpc_service;
pub(crate) mod store;

pub use meridian_registry::{authz, scheduler, state};

pub use fleet::FleetTimings;
pub use janitor::JobRetention;
pub use node::{ClusterStatus, Coordinator, CoordinatorOptions, Handle, MemberNode, NodeId};
