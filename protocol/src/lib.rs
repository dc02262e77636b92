//! Meridian's wire protocol: the `meridian.v1` protobuf types, length-prefixed framing, and the RPC layer
//! over QUIC with mutual TLS that every process-to-process link uses.
//!
//! This crate owns how bytes travel and who may call what; it must never know what a coordinator or agent
//! does with a call (no Raft, no registry), and input from a peer must never make it panic.

pub mod frame;
pub mod fuzzing;
mod redact;
pub mod rpc;
pub mod units;

/// The generated types of protobuf package `meridian.v1`: messages, and gRPC clients and servers.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("meridian.v1");

    /// The encoded `FileDescriptorSet` of every `meridian.v1` file, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/meridian_v1_descriptor.bin"));
}

pub use frame::{FrameError, DEFAULT_MAX_FRAME};
pub use rpc::{
    allowed_roles, authorize, CallContext, Method, RpcClient, RpcError, RpcServer, RpcService,
    RpcStatus, StatusCode, ALPN,
};
