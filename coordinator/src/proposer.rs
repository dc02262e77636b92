//! Proposal batching on the leader: concurrent writes share one Raft log entry.
//!
//! openraft appends each `client_write` as its own log entry and waits for that entry's flush before it
//! appends the next, so one write per flush is the leader's ceiling however many clients wait. The
//! [`Proposer`] keeps at most [`MAX_IN_FLIGHT`] proposals in flight; whatever arrives meanwhile is packed
//! into a single `Op::Batch` entry when a slot frees. A lone write is proposed as itself, so an idle
//! coordinator answers as fast as before. The state machine applies a batch's commands in order, each with
//! its own request id, audit record and outcome, exactly as if they had been separate entries.
//!
//! It must never reorder the commands of one batch, never nest a batch in a batch, and never answer a
//! caller with another caller's outcome.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::node::{MemberNode, NodeId, Raft};
use crate::state::{Actor, ClusterOp, Command, CommandOutcome, DomainError, Op, Outcome};

/// Proposals the batcher keeps in flight at once.
pub(crate) const MAX_IN_FLIGHT: usize = 4;
/// Most commands packed into one entry.
pub(crate) const MAX_BATCH: usize = 512;

/// Why a proposal was not applied (openraft's answer, shared by every command of a batch).
pub(crate) type ProposeError = RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>;

type Reply = oneshot::Sender<Result<CommandOutcome, ProposeError>>;

/// Hands commands to Raft, batching those that arrive while earlier proposals are in flight.
#[derive(Clone)]
pub(crate) struct Proposer {
    queue: mpsc::UnboundedSender<(Command, Reply)>,
}

impl Proposer {
    /// Starts the batcher for `raft`; it stops when every `Proposer` clone is dropped.
    pub(crate) fn start(raft: Raft) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Self { queue }
    }

    /// Proposes `cmd` and waits for its own outcome. `None` when the batcher is gone (shutting down).
    pub(crate) async fn propose(
        &self,
        cmd: Command,
    ) -> Option<Result<CommandOutcome, ProposeError>> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((cmd, reply)).ok()?;
        answer.await.ok()
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(Command, Reply)>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // While every slot is taken, new commands wait in the queue: they form the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Proposes the commands as one entry (or alone, for a single one or a batch command) and answers each.
async fn propose_batch(raft: &Raft, batch: Vec<(Command, Reply)>) {
    let nested = batch
        .iter()
        .any(|(cmd, _)| matches!(cmd.op, Op::Cluster(ClusterOp::Batch { .. })));
    if batch.len() == 1 || nested {
        for (cmd, reply) in batch {
            let result = raft.client_write(cmd).await.map(|r| r.data);
            // The caller may have given up (deadline); nobody is left to tell.
            let _ = reply.send(result);
        }
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
    let at_ms = commands.first().map_or(0, |c| c.at_ms);
    let count = commands.len();
    let entry = Command::new(
        at_ms,
        Actor::system(),
        Op::Cluster(ClusterOp::Batch { commands }),
    );
    match raft.client_write(entry).await {
        Ok(response) => match response.data {
            Ok(Outcome::Batch { outcomes }) if outcomes.len() == count => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            other => {
                // Cannot happen with a state machine of this build. Never hand one caller's outcome to
                // another: every caller learns that its command was not applied as asked.
                tracing::error!(?other, "a batch entry answered with a non-batch outcome");
                let refused = DomainError::FailedPrecondition(format!(
                    "the batched write was not applied: {other:?}"
                ));
                for reply in replies {
                    let _ = reply.send(Ok(Err(refused.clone())));
                }
            }
        },
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
