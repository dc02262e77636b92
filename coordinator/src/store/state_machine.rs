//! The state machine half of the Raft store: the in-memory [`RegistryState`] and its snapshots in sled.
//!
//! Owns applying committed entries (by handing each command to the pure `RegistryState::apply`), building,
//! saving and installing snapshots, and loading the last snapshot at start-up; openraft then re-applies the
//! committed log after it. Before an entry that archives audit records is applied, the records it forgets
//! are written to this coordinator's audit archive (`audit_archive.rs`): the one effect outside the
//! registry state, and it only writes down what the state already holds. It must never change a command.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use super::{DbHold, StoreError};
use crate::audit_archive::AuditArchive;
use crate::node::{MemberNode, NodeId, TypeConfig};
use crate::state::{
    AuditOp, AuditRecord, ClusterOp, Command, CommandOutcome, Op, Outcome, RegistryState,
    APPLY_VERSION,
};

const SNAPSHOT_TREE: &str = "raft_snapshot";
const SNAPSHOT_META_KEY: &str = "meta";
const SNAPSHOT_DATA_KEY: &str = "data";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The registry state shared between the state machine (writer) and the node's readers.
pub(crate) type SharedState = Arc<RwLock<RegistryState>>;

/// The state machine: registry state in memory, last snapshot on disk.
pub(crate) struct StateMachineStore {
    db: sled::Db,
    snapshots: sled::Tree,
    state: SharedState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, MemberNode>,
    /// Keeps the database counted as open while this state machine lives.
    hold: DbHold,
    /// Where the audit records an `ArchiveAudit` forgets are written before it is applied.
    archive: AuditArchive,
}

/// A stored snapshot as read back from disk.
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, MemberNode>,
    data: Vec<u8>,
}

impl StateMachineStore {
    pub(super) fn open(
        db: &sled::Db,
        hold: DbHold,
        archive: AuditArchive,
    ) -> Result<Self, StoreError> {
        let snapshots = db.open_tree(SNAPSHOT_TREE)?;
        let mut sm = Self {
            db: db.clone(),
            snapshots,
            state: SharedState::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            hold,
            archive,
        };
        if let Some(stored) =
            read_snapshot(&sm.snapshots).map_err(|e| StoreError::Corrupt(e.to_string()))?
        {
            let state = RegistryState::from_bytes(&stored.data)
                .map_err(|e| StoreError::Corrupt(format!("snapshot state: {e}")))?;
            if let Some(why) = too_new(state.apply_version) {
                return Err(StoreError::Corrupt(format!("snapshot state: {why}")));
            }
            tracing::info!(snapshot = %stored.meta, "loaded raft snapshot");
            sm.replace_state(state);
            sm.last_applied = stored.meta.last_log_id;
            sm.last_membership = stored.meta.last_membership;
        }
        Ok(sm)
    }

    /// The registry state this state machine applies to.
    pub(crate) fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// The audit archive this state machine writes.
    pub(crate) fn audit_archive(&self) -> AuditArchive {
        self.archive.clone()
    }

    /// Writes the audit records `cmd` archives (see [`records_to_archive`]) as segments, off the executor.
    async fn write_archive_segments(
        &self,
        log_id: LogId<NodeId>,
        cmd: &Command,
    ) -> StorageResult<()> {
        if !archives_audit(cmd) {
            return Ok(());
        }
        let segments = {
            let state = self
                .state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            records_to_archive(&state, cmd)
        };
        if segments.is_empty() {
            return Ok(());
        }
        let archive = self.archive.clone();
        let written = tokio::task::spawn_blocking(move || {
            segments
                .iter()
                .map(|records| archive.write_segment(records))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| StorageIOError::apply(log_id, &e))?;
        match written {
            Ok(paths) => {
                for path in paths.into_iter().flatten() {
                    tracing::info!(index = log_id.index, path = %path.display(), "archived audit records");
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(index = log_id.index, "cannot write the audit archive: {e}");
                Err(StorageIOError::apply(log_id, &e).into())
            }
        }
    }

    fn replace_state(&self, state: RegistryState) {
        // A poisoned lock means a reader panicked; the state itself is only ever replaced whole here.
        let mut guard = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = state;
    }
}

fn read_snapshot(tree: &sled::Tree) -> Result<Option<StoredSnapshot>, StorageIOError<NodeId>> {
    let meta = tree
        .get(SNAPSHOT_META_KEY)
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    let data = tree
        .get(SNAPSHOT_DATA_KEY)
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    let (Some(meta), Some(data)) = (meta, data) else {
        return Ok(None);
    };
    let meta: SnapshotMeta<NodeId, MemberNode> =
        serde_json::from_slice(&meta).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    Ok(Some(StoredSnapshot {
        meta,
        data: data.to_vec(),
    }))
}

/// Whether `cmd` (or a command of its batch) is an `ArchiveAudit`: checked before any lock is taken.
fn archives_audit(cmd: &Command) -> bool {
    match &cmd.op {
        Op::Audit(AuditOp::ArchiveAudit { .. }) => true,
        Op::Cluster(ClusterOp::Batch { commands }) => commands.iter().any(archives_audit),
        _ => false,
    }
}

/// The segments `cmd` (or the commands of its batch) makes this replica write before applying it: for each
/// `ArchiveAudit` that `apply` would accept, the live records it forgets that an earlier one of the same
/// entry does not. Records appended and archived within one batch are not held yet and cannot be written;
/// the leader's controller never proposes that (it archives only records far behind the head).
fn records_to_archive(state: &RegistryState, cmd: &Command) -> Vec<Vec<AuditRecord>> {
    let commands = match &cmd.op {
        Op::Cluster(ClusterOp::Batch { commands }) => commands.as_slice(),
        _ => std::slice::from_ref(cmd),
    };
    let mut written_through = state.audit_log().archived_through();
    let mut segments = Vec::new();
    for c in commands {
        let Op::Audit(AuditOp::ArchiveAudit { through_seq }) = &c.op else {
            continue;
        };
        let Some(records) = state.audit_to_archive(&c.actor, *through_seq) else {
            continue;
        };
        let new: Vec<AuditRecord> = records
            .iter()
            .filter(|r| r.seq > written_through)
            .cloned()
            .collect();
        if let Some(last) = new.last() {
            written_through = last.seq;
            segments.push(new);
        }
    }
    segments
}

/// Why this build cannot go on from a state or command that needs apply version `needed`; `None` when it can.
fn too_new(needed: u32) -> Option<String> {
    (needed > APPLY_VERSION).then(|| {
        format!(
            "the registry uses apply version {needed} and this build knows versions up to \
             {APPLY_VERSION}: upgrade this coordinator"
        )
    })
}

/// Saves a snapshot (meta and data atomically) and flushes it, so the log before it may be purged.
async fn save_snapshot(
    db: &sled::Db,
    tree: &sled::Tree,
    meta: &SnapshotMeta<NodeId, MemberNode>,
    data: &[u8],
) -> Result<(), StorageIOError<NodeId>> {
    let signature = Some(meta.signature());
    let meta_bytes = serde_json::to_vec(meta)
        .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
    let mut batch = sled::Batch::default();
    batch.insert(SNAPSHOT_META_KEY, meta_bytes);
    batch.insert(SNAPSHOT_DATA_KEY, data);
    tree.apply_batch(batch)
        .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
    db.flush_async()
        .await
        .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
    Ok(())
}

/// Builds a snapshot from a copy of the state taken when the builder was created: the copy is made under
/// the state's read lock, and serialized after the lock is released, on a blocking thread, so applying
/// and reading go on while a large state is written out.
pub(crate) struct SnapshotBuilder {
    db: sled::Db,
    snapshots: sled::Tree,
    state: Option<RegistryState>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, MemberNode>,
    _hold: DbHold,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let seq = self
            .db
            .generate_id()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let snapshot_id = match self.last_applied {
            Some(log_id) => format!("{}-{}-{seq}", log_id.leader_id, log_id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let Some(state) = self.state.take() else {
            let e = std::io::Error::other("a snapshot builder builds one snapshot");
            return Err(StorageIOError::write_snapshot(Some(meta.signature()), &e).into());
        };
        let data = tokio::task::spawn_blocking(move || state.to_bytes())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        save_snapshot(&self.db, &self.snapshots, &meta, &data).await?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "built raft snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            if let EntryPayload::Normal(cmd) = &entry.payload {
                // Applying on with older rules would make this replica diverge: stop instead.
                if let Some(why) = cmd.apply_version_needed().and_then(too_new) {
                    tracing::error!(index = entry.log_id.index, "{why}");
                    return Err(
                        StorageIOError::apply(entry.log_id, &std::io::Error::other(why)).into(),
                    );
                }
                // Records are written out before the entry forgets them; a replay writes the same file.
                self.write_archive_segments(entry.log_id, cmd).await?;
            }
            // A poisoned lock means a reader panicked while holding it; readers never mutate, so the state
            // is intact. Taken per entry, so archive writes never happen under it.
            let mut state = self
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(Outcome::Done),
                EntryPayload::Normal(cmd) => state.apply(entry.log_id.index, &cmd),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(Outcome::Done)
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let state = self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            state: Some(state),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            _hold: self.hold.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state = RegistryState::from_bytes(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        if let Some(why) = too_new(state.apply_version) {
            let e = std::io::Error::other(why);
            return Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into());
        }
        save_snapshot(&self.db, &self.snapshots, meta, &data).await?;
        self.replace_state(state);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta, "installed raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(read_snapshot(&self.snapshots)?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
