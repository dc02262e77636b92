//! Raft storage for the coordinator: the log, the vote, the committed and purged log ids, and the state
//! machine with its snapshots, kept on disk in one sled database.
//!
//! This module owns every byte the coordinator writes to its data directory for Raft; sled never leaks out
//! of it, so the engine can be replaced without touching the rest of the coordinator. It must never decide
//! anything about the registry itself: commands are handed to the pure [`RegistryState::apply`] unchanged.
//!
//! [`RegistryState::apply`]: crate::state::RegistryState::apply

// openraft's storage errors are large by design and fixed by its traits; boxing them would only add copies.
#![allow(clippy::result_large_err)]

mod log_store;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

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

/// Opens (creating if needed) the Raft store in `dir` and loads the last snapshot into the state machine.
pub(crate) fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = sled::Config::new().path(dir).open()?;
    let hold = DbHold::default();
    let log = LogStore::open(&db, hold.clone())?;
    let sm = StateMachineStore::open(&db, hold)?;
    Ok((log, sm))
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

    use super::{open, LogStore, StateMachineStore};
    use crate::node::{NodeId, TypeConfig};

    /// Opens a fresh store in a temporary directory that lives as long as the store.
    struct TempDirStore;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempDirStore {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let (log, sm) = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn passes_openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
        Suite::test_all(TempDirStore)
    }
}
