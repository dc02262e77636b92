//! Raft storage for the coordinator: the log, the vote, the committed and purged log ids, and the state
//! machine with its snapshots, kept on disk in one sled database.
//!
//! This module owns every byte the coordinator writes to its data directory for Raft (and, through
//! `audit_archive`, has the audit records an `ArchiveAudit` entry forgets written out before applying it);
//! sled never leaks out of it, so the engine can be replaced without touching the rest of the coordinator. It must never decide
//! anything about the registry itself: commands are handed to the pure [`RegistryState::apply`] unchanged.
//!
//! [`RegistryState::apply`]: crate::state::RegistryState::apply

// openraft's storage errors are large by design and fixed by its traits; boxing them would only add copies.
#![allow(clippy::result_large_err)]

mod log_store;
mod state_machine;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::audit_archive::AuditArchive;

pub(crate) use log_store::LogStore;
pub(crate) use state_machine::{SharedState, StateMachineStore};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// How long [`open`] waits for a previous holder of the directory to let go of its lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens (creating if needed) the Raft store in `dir` and loads the last snapshot into the state machine.
///
/// sled's background flush threads keep the database file locked for a moment after the last handle is
/// dropped, so a coordinator restarted in the same process can find the lock still held. The open is
/// retried with backoff for up to [`LOCK_WAIT`]; a directory held by another live process still fails then.
pub(crate) async fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    open_waiting(dir, LOCK_WAIT).await
}

/// [`open`] with the lock wait given.
async fn open_waiting(
    dir: &Path,
    lock_wait: Duration,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let deadline = tokio::time::Instant::now() + lock_wait;
    let mut backoff = Duration::from_millis(10);
    let db = loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => break db,
            Err(e) if is_lock_held(&e) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(dir = %dir.display(), "store directory still locked, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let hold = DbHold::default();
    let log = LogStore::open(&db, hold.clone())?;
    let sm = StateMachineStore::open(&db, hold, AuditArchive::in_data_dir(dir))?;
    Ok((log, sm))
}

/// Whether sled refused to open because the directory's lock file is held.
fn is_lock_held(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Kept by every part of the store that holds the database open; when the last one is dropped, the
/// database is closed and [`StoreClosed::wait`] returns.
#[derive(Clone, Default)]
struct DbHold(Arc<watch::Sender<()>>);

impl DbHold {
    fn closed_signal(&self) -> StoreClosed {
        StoreClosed(self.0.subscribe())
    }
}

/// Resolves once every part of the store has been dropped and the data directory may be opened again.
pub(crate) struct StoreClosed(watch::Receiver<()>);

impl StoreClosed {
    pub(crate) async fn wait(mut self) {
        // `changed` fails exactly when the sender, shared by every `DbHold`, is gone.
        while self.0.changed().await.is_ok() {}
    }
}

/// Big-endian key of a log index, so that sled's byte order is index order.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;
    use openraft::StorageIOError;

    use std::time::Duration;

    use super::{is_lock_held, open, open_waiting, LogStore, StateMachineStore, StoreError};
    use crate::node::{NodeId, TypeConfig};

    /// Opens a fresh store in a temporary directory that lives as long as the store.
    struct TempDirStore;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempDirStore {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let (log, sm) = open(dir.path())
                .await
                .map_err(|e| StorageIOError::write(&e))?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn passes_openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
        Suite::test_all(TempDirStore)
    }

    #[tokio::test]
    async fn a_directory_held_open_is_refused_once_the_wait_runs_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _held = open(dir.path()).await.expect("first open");
        match open_waiting(dir.path(), Duration::ZERO).await {
            Err(StoreError::Sled(e)) => assert!(is_lock_held(&e), "unexpected error: {e}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a second open of a held directory succeeded"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopen_waits_for_the_previous_holder_to_close() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open(dir.path()).await.expect("first open");
        let closed = log.closed_signal();
        let path = dir.path().to_path_buf();
        let reopen = tokio::spawn(async move { open(&path).await.map(|_| ()) });
        drop((log, sm));
        closed.wait().await;
        reopen
            .await
            .expect("reopen task")
            .expect("reopen after the holder closed");
    }

    #[tokio::test]
    async fn a_command_needing_a_newer_apply_version_stops_the_state_machine() {
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

        use crate::state::{Actor, ClusterOp, Command, Op, APPLY_VERSION};

        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, mut sm) = open(dir.path()).await.expect("open");
        let entry = |index: u64, version: u32| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::new(
                1_000,
                Actor::system(),
                Op::Cluster(ClusterOp::SetApplyVersion { version }),
            )),
        };
        let known = sm
            .apply([entry(1, APPLY_VERSION)])
            .await
            .expect("a known version applies");
        assert_eq!(known.len(), 1);
        let err = sm
            .apply([entry(2, APPLY_VERSION + 1)])
            .await
            .expect_err("a version this build does not know stops it");
        assert!(err.to_string().contains("upgrade"), "{err}");
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(
            applied.map(|id| id.index),
            Some(1),
            "the unknown entry was not applied"
        );
    }
}
