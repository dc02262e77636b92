//! The Raft log, vote, committed and last-purged log ids in sled trees.
//!
//! Owns durability of the log: an append is acknowledged to openraft only after sled has flushed it to disk.
//! Appends do not wait for the disk: they hand their acknowledgement to one background flusher, which
//! flushes once for every append queued while the previous flush ran (group commit) and acknowledges them in
//! order. It must never interpret the commands inside the entries.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};

use tokio::sync::{mpsc, watch};

use super::{index_key, DbHold, StoreClosed, StoreError};
use crate::node::{NodeId, TypeConfig};

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The log half of the Raft store. Cloning shares the same trees (used as openraft's log reader).
#[derive(Clone)]
pub(crate) struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// The last committed index openraft saved, for readers that cannot ask openraft synchronously.
    committed: Arc<watch::Sender<Option<u64>>>,
    /// Acknowledgements waiting for the next flush.
    flusher: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
    hold: DbHold,
}

/// Runs the group-commit loop: waits for appends, flushes once for all that are queued, acknowledges them in
/// the order they were appended. Holds the store open until every `LogStore` clone is gone.
fn spawn_flusher(db: sled::Db, hold: DbHold) -> mpsc::UnboundedSender<LogFlushed<TypeConfig>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<LogFlushed<TypeConfig>>();
    tokio::spawn(async move {
        let mut waiting = Vec::new();
        while let Some(first) = rx.recv().await {
            waiting.push(first);
            while let Ok(more) = rx.try_recv() {
                waiting.push(more);
            }
            let flushed = db
                .flush_async()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            for ack in waiting.drain(..) {
                ack.log_io_completed(flushed.clone().map_err(std::io::Error::other));
            }
        }
        // The database handle goes first: the hold's release tells shutdown the directory is free.
        drop(db);
        drop(hold);
    });
    tx
}

impl LogStore {
    pub(super) fn open(db: &sled::Db, hold: DbHold) -> Result<Self, StoreError> {
        let mut store = Self {
            db: db.clone(),
            log: db.open_tree(LOG_TREE)?,
            meta: db.open_tree(META_TREE)?,
            committed: Arc::new(watch::channel(None).0),
            flusher: spawn_flusher(db.clone(), hold.clone()),
            hold,
        };
        let committed: Option<Option<LogId<NodeId>>> = store
            .read_meta(COMMITTED_KEY)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        store.committed = Arc::new(watch::channel(committed.flatten().map(|id| id.index)).0);
        Ok(store)
    }

    /// Follows the committed index as openraft saves it.
    pub(crate) fn committed(&self) -> watch::Receiver<Option<u64>> {
        self.committed.subscribe()
    }

    /// Resolves once this store and everything opened with it have been dropped.
    pub(crate) fn closed_signal(&self) -> StoreClosed {
        self.hold.closed_signal()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageIOError<NodeId>> {
        let Some(bytes) = self.meta.get(key).map_err(|e| StorageIOError::read(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageIOError::read(&e))
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StorageIOError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write(&e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StorageIOError<NodeId>> {
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageIOError<NodeId>> {
        serde_json::from_slice(bytes).map_err(|e| StorageIOError::read_logs(&e))
    }
}

/// A range of sled keys.
type KeyRange = (Bound<[u8; 8]>, Bound<[u8; 8]>);

/// Turns a range of log indexes into a range of sled keys; `None` when the range is empty.
fn key_range<RB: RangeBounds<u64>>(range: &RB) -> Option<KeyRange> {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(*i),
        Bound::Excluded(i) => {
            if *i <= start {
                return None;
            }
            Bound::Excluded(*i)
        }
        Bound::Unbounded => Bound::Unbounded,
    };
    if let Bound::Included(i) = end {
        if i < start {
            return None;
        }
    }
    Some((Bound::Included(index_key(start)), end.map(index_key)))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let Some(keys) = key_range(&range) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for item in self.log.range(keys) {
            let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(Self::decode_entry(&bytes)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED_KEY)?;
        let last_log_id = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, bytes)) => Some(Self::decode_entry(&bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.meta
            .insert(VOTE_KEY, bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        let Some(bytes) = self
            .meta
            .get(VOTE_KEY)
            .map_err(|e| StorageIOError::read_vote(&e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed on its own: a stale committed id only means re-applying a little less at start-up,
        // and the next append or vote flushes it anyway.
        self.write_meta(COMMITTED_KEY, &committed)?;
        self.committed.send_replace(committed.map(|id| id.index));
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Acknowledged means durable: the callback fires after the flush that covers this batch.
        self.flusher.send(callback).map_err(|_| {
            StorageIOError::write_logs(&std::io::Error::other("log flusher stopped"))
        })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "truncating raft log from this entry on");
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "purging raft log up to this entry");
        // Record the purge point first, so a crash between the two steps never hides the last log id.
        self.write_meta(LAST_PURGED_KEY, &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await?;
        Ok(())
    }
}
