//! The RPC methods and who may call them.
//!
//! Owns [`Method`] with its stable numeric ids and the authorization table keyed by the caller's role.
//! The table is the single place that says which role may call what; it must stay a pure function of the
//! method and the caller's certificate identity — a valid certificate alone grants nothing.

use certs::{Identity, IdentityKind, Role};

use super::RpcStatus;

/// Every method a Meridian process can call on another. The numbers travel on the wire: never reuse or
/// change one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Method {
    /// Liveness and identity check; answers the caller's identity as the callee saw it.
    Ping = 1,
    /// openraft AppendEntries between coordinators.
    RaftAppendEntries = 10,
    /// openraft Vote between coordinators.
    RaftVote = 11,
    /// openraft InstallSnapshot between coordinators.
    RaftInstallSnapshot = 12,
    /// A follower coordinator hands a prepared command to the leader.
    ForwardWrite = 20,
    /// A follower coordinator asks the leader for a read index.
    ReadIndex = 21,
    /// Adds or removes a coordinator.
    ChangeMembership = 22,
    /// A coordinator reads archived audit segments from another coordinator.
    ReadAuditArchive = 23,
    /// An agent registers its node.
    AgentRegister = 30,
    /// An agent's periodic heartbeat.
    AgentHeartbeat = 31,
    /// An agent reports on its work.
    AgentReport = 32,
    /// An agent long-polls for its node's job assignments.
    AgentSync = 33,
    /// A coordinator reads a job's output from the agent that ran it.
    AgentReadLogs = 40,
    /// A coordinator runs a command inside a running job's sandbox on the agent that runs it.
    AgentExecInJob = 41,
    /// A coordinator reads a file from a running job's working directory on the agent that runs it.
    AgentReadJobFile = 42,
    /// A coordinator opens an interactive terminal session inside a running job on the agent that runs
    /// it: a session call (see [`Method::is_session`]).
    AgentAttachJob = 43,
}

/// A method id this build does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown method id {0}")]
pub struct UnknownMethod(pub u32);

impl Method {
    /// Every method, in id order.
    pub const ALL: [Method; 16] = [
        Method::Ping,
        Method::RaftAppendEntries,
        Method::RaftVote,
        Method::RaftInstallSnapshot,
        Method::ForwardWrite,
        Method::ReadIndex,
        Method::ChangeMembership,
        Method::ReadAuditArchive,
        Method::AgentRegister,
        Method::AgentHeartbeat,
        Method::AgentReport,
        Method::AgentSync,
        Method::AgentReadLogs,
        Method::AgentExecInJob,
        Method::AgentReadJobFile,
        Method::AgentAttachJob,
    ];

    /// The id on the wire.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ping => "Ping",
            Method::RaftAppendEntries => "RaftAppendEntries",
            Method::RaftVote => "RaftVote",
            Method::RaftInstallSnapshot => "RaftInstallSnapshot",
            Method::ForwardWrite => "ForwardWrite",
            Method::ReadIndex => "ReadIndex",
            Method::ChangeMembership => "ChangeMembership",
            Method::ReadAuditArchive => "ReadAuditArchive",
            Method::AgentRegister => "AgentRegister",
            Method::AgentHeartbeat => "AgentHeartbeat",
            Method::AgentReport => "AgentReport",
            Method::AgentSync => "AgentSync",
            Method::AgentReadLogs => "AgentReadLogs",
            Method::AgentExecInJob => "AgentExecInJob",
            Method::AgentReadJobFile => "AgentReadJobFile",
            Method::AgentAttachJob => "AgentAttachJob",
        }
    }

    /// Whether the method is a session: after the request and its acceptance both sides keep the stream
    /// open and exchange frames until one finishes (see `RpcClient::open_session`).
    pub fn is_session(self) -> bool {
        matches!(self, Method::AgentAttachJob)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for Method {
    type Error = UnknownMethod;

    fn try_from(id: u32) -> Result<Self, Self::Error> {
        Method::ALL
            .into_iter()
            .find(|m| m.id() == id)
            .ok_or(UnknownMethod(id))
    }
}

impl From<Method> for u32 {
    fn from(method: Method) -> u32 {
        method.id()
    }
}

const EVERY_ROLE: &[Role] = &Role::ALL;
const COORDINATORS: &[Role] = &[Role::Coordinator];
const AGENTS: &[Role] = &[Role::Agent];

/// The roles whose identities may call `method`.
///
/// Ping: every role. Raft traffic, forwarded writes, read-index, membership changes, archived audit
/// segments, and reading logs or files from an agent or running a command or terminal in a job there:
/// coordinators only. Agent methods: agents only — and the handler must still check that the agent speaks
/// for its own node ([`ensure_speaks_for_node`]).
pub fn allowed_roles(method: Method) -> &'static [Role] {
    match method {
        Method::Ping => EVERY_ROLE,
        Method::RaftAppendEntries
        | Method::RaftVote
        | Method::RaftInstallSnapshot
        | Method::ForwardWrite
        | Method::ReadIndex
        | Method::ChangeMembership
        | Method::ReadAuditArchive
        | Method::AgentReadLogs
        | Method::AgentExecInJob
        | Method::AgentReadJobFile
        | Method::AgentAttachJob => COORDINATORS,
        Method::AgentRegister
        | Method::AgentHeartbeat
        | Method::AgentReport
        | Method::AgentSync => AGENTS,
    }
}

/// Whether `caller` may call `method`; a refusal is `PERMISSION_DENIED` naming the method and the role.
pub fn authorize(method: Method, caller: &Identity) -> Result<(), RpcStatus> {
    let role = caller.role();
    if allowed_roles(method).contains(&role) {
        Ok(())
    } else {
        Err(RpcStatus::permission_denied(format!(
            "role {} may not call {}",
            role.as_str(),
            method.name()
        )))
    }
}

/// Checks that `caller` is the agent of node `node` in `region`/`cluster`: an agent speaks only for its
/// own node. Anything else is `PERMISSION_DENIED`.
pub fn ensure_speaks_for_node(
    caller: &Identity,
    region: &str,
    cluster: &str,
    node: &str,
) -> Result<(), RpcStatus> {
    match &caller.kind {
        IdentityKind::Agent {
            region: r,
            cluster: c,
            node: n,
        } if r == region && c == cluster && n == node => Ok(()),
        IdentityKind::Agent { .. } => Err(RpcStatus::permission_denied(
            "an agent may speak only for its own node",
        )),
        _ => Err(RpcStatus::permission_denied("caller is not an agent")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StatusCode;

    fn identity(kind: IdentityKind) -> Identity {
        Identity {
            trust_domain: "meridian.test".into(),
            kind,
        }
    }

    fn every_role() -> Vec<Identity> {
        vec![
            identity(IdentityKind::Coordinator { name: "c1".into() }),
            identity(IdentityKind::Agent {
                region: "eu".into(),
                cluster: "a".into(),
                node: "n1".into(),
            }),
            identity(IdentityKind::Gateway {
                region: "eu".into(),
                name: "g1".into(),
            }),
            identity(IdentityKind::Operator { name: "ops".into() }),
        ]
    }

    #[test]
    fn ids_are_stable_and_round_trip() {
        let ids: Vec<u32> = Method::ALL.iter().map(|m| m.id()).collect();
        assert_eq!(
            ids,
            vec![1, 10, 11, 12, 20, 21, 22, 23, 30, 31, 32, 33, 40, 41, 42, 43]
        );
        for method in Method::ALL {
            assert_eq!(Method::try_from(method.id()), Ok(method));
        }
        for unknown in [0, 2, 13, 24, 34, 44, u32::MAX] {
            assert_eq!(Method::try_from(unknown), Err(UnknownMethod(unknown)));
        }
    }

    #[test]
    fn table_matches_the_policy() {
        for caller in every_role() {
            let role = caller.role();
            for method in Method::ALL {
                let expected = match method {
                    Method::Ping => true,
                    Method::AgentRegister
                    | Method::AgentHeartbeat
                    | Method::AgentReport
                    | Method::AgentSync => role == Role::Agent,
                    _ => role == Role::Coordinator,
                };
                let got = authorize(method, &caller);
                assert_eq!(got.is_ok(), expected, "{role:?} calling {method}");
                if let Err(status) = got {
                    assert_eq!(status.code, StatusCode::PermissionDenied);
                }
            }
        }
    }

    #[test]
    fn an_agent_speaks_only_for_its_own_node() {
        let callers = every_role();
        let agent = &callers[1];
        assert!(ensure_speaks_for_node(agent, "eu", "a", "n1").is_ok());
        assert!(ensure_speaks_for_node(agent, "eu", "a", "n2").is_err());
        assert!(ensure_speaks_for_node(agent, "eu", "b", "n1").is_err());
        assert!(ensure_speaks_for_node(agent, "us", "a", "n1").is_err());
        assert!(ensure_speaks_for_node(&callers[0], "eu", "a", "n1").is_err());
    }
}
