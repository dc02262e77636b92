//! Membership changes as the leader carries them out: adding a member (as a learner that catches up, then a
//! voter when asked) and removing one, their protobuf form for forwarding to the leader, and what a refusal
//! means. `Handle::add_member`/`remove_member` forward here or to the leader; `rpc_service` serves the
//! forwarded ones.

use std::collections::BTreeSet;

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use protocol::pb;
use tokio::time::Instant;

use crate::node::{LeaderOnlyError, MemberNode, NodeId, Raft};

/// A membership change as the leader carries it out.
#[derive(Debug, Clone)]
pub(crate) enum MemberChange {
    Add {
        id: NodeId,
        node: MemberNode,
        voter: bool,
    },
    Remove {
        id: NodeId,
    },
}

/// The protobuf form of a membership change.
pub(crate) fn membership_request(change: &MemberChange) -> pb::MembershipChangeRequest {
    let change = match change {
        MemberChange::Add { id, node, voter } => {
            pb::membership_change_request::Change::Add(pb::AddMember {
                id: *id,
                name: node.name.clone(),
                raft_addr: node.raft_addr.clone(),
                admin_addr: node.admin_addr.clone(),
                voter: *voter,
            })
        }
        MemberChange::Remove { id } => pb::membership_change_request::Change::RemoveId(*id),
    };
    pb::MembershipChangeRequest {
        change: Some(change),
    }
}

/// Reads a membership change from its protobuf form.
pub(crate) fn member_change_from(request: pb::MembershipChangeRequest) -> Option<MemberChange> {
    Some(match request.change? {
        pb::membership_change_request::Change::Add(add) => MemberChange::Add {
            id: add.id,
            node: MemberNode {
                name: add.name,
                raft_addr: add.raft_addr,
                admin_addr: add.admin_addr,
            },
            voter: add.voter,
        },
        pb::membership_change_request::Change::RemoveId(id) => MemberChange::Remove { id },
    })
}

/// Carries out `change` when this node is the leader.
///
/// Adding: the member joins as a learner, the call waits (until `deadline`) for it to catch up, then makes
/// it a voter when asked. Removing: the member leaves the voters and the node list.
pub(crate) async fn change_membership_as_leader(
    raft: &Raft,
    change: &MemberChange,
    deadline: Instant,
) -> Result<(), LeaderOnlyError> {
    match change {
        MemberChange::Add { id, node, voter } => {
            if node.raft_addr.is_empty() {
                return Err(LeaderOnlyError::Invalid(
                    "a member needs a raft address".into(),
                ));
            }
            match tokio::time::timeout_at(deadline, raft.add_learner(*id, node.clone(), true)).await
            {
                Ok(result) => result.map_err(client_write_error)?,
                Err(_) => {
                    return Err(LeaderOnlyError::Unavailable(format!(
                        "member {id} was added as a learner but did not catch up in time"
                    )))
                }
            };
            if *voter {
                let add = ChangeMembers::AddVoterIds(BTreeSet::from([*id]));
                within(deadline, raft.change_membership(add, false))
                    .await?
                    .map_err(client_write_error)?;
            }
        }
        MemberChange::Remove { id } => {
            let (is_voter, is_member) = {
                let metrics = raft.metrics();
                let m = metrics.borrow();
                let membership = m.membership_config.membership();
                (
                    membership.voter_ids().any(|v| v == *id),
                    membership.get_node(id).is_some(),
                )
            };
            let change = if is_voter {
                // `retain = false` also drops it from the node list, so it does not stay as a learner.
                ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
            } else if is_member {
                ChangeMembers::RemoveNodes(BTreeSet::from([*id]))
            } else {
                // Nothing to remove; still make sure this node is the leader that would have done it.
                let leader = within(deadline, raft.get_read_log_id()).await?;
                return match leader {
                    Ok(_) => Ok(()),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(LeaderOnlyError::NotLeader {
                            leader_id: f.leader_id,
                            leader_node: f.leader_node,
                        })
                    }
                    Err(e) => Err(LeaderOnlyError::Unavailable(e.to_string())),
                };
            };
            within(deadline, raft.change_membership(change, false))
                .await?
                .map_err(client_write_error)?;
        }
    }
    Ok(())
}

async fn within<T>(
    deadline: Instant,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, LeaderOnlyError> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .map_err(|_| LeaderOnlyError::Unavailable("membership change not confirmed in time".into()))
}

fn client_write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>,
) -> LeaderOnlyError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LeaderOnlyError::NotLeader {
            leader_id: f.leader_id,
            leader_node: f.leader_node,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )) => LeaderOnlyError::Unavailable(e.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            LeaderOnlyError::Invalid(e.to_string())
        }
        RaftError::Fatal(e) => LeaderOnlyError::Unavailable(e.to_string()),
    }
}
