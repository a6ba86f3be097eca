//! Raft's log and vote in the engine. An append is acknowledged to openraft only after the
//! engine write that holds it has been fsynced; the vote is fsynced before `save_vote` returns.
//!
//! Appends do not wait for the disk: the entries are written (readable at once) and their
//! completion callback goes to the WAL syncer thread, which fsyncs once for every append that
//! queued up meanwhile and then acknowledges them all. openraft's core never blocks on an
//! fsync, and concurrent appends share one.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError, Vote};
use serde::{de::DeserializeOwned, Serialize};

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::storage::{Cf, Engine};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    engine: Arc<Engine>,
    syncer: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Logs,
        ErrorVerb::Read,
        openraft::AnyError::new(&e),
    )
    .into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Logs,
        ErrorVerb::Write,
        openraft::AnyError::new(&e),
    )
    .into()
}

impl LogStore {
    pub fn new(engine: Arc<Engine>) -> std::io::Result<LogStore> {
        let (syncer, pending) = std::sync::mpsc::channel();
        let wal = engine.clone();
        std::thread::Builder::new()
            .name("raft-wal-sync".into())
            .spawn(move || sync_wal(&wal, pending))?;
        Ok(LogStore { engine, syncer })
    }

    fn get_state<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        read_state(&self.engine, key)
    }

    fn put_state<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        durable: bool,
    ) -> Result<(), StorageError> {
        let mut batch = self.engine.batch();
        batch.put(
            Cf::RaftState,
            key,
            &bincode::serialize(value).map_err(write_err)?,
        );
        self.engine.write(batch, durable).map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let mut entries = Vec::new();
        let mut failure = None;
        let end_key = end.map(index_key);
        self.engine
            .scan(
                Cf::RaftLog,
                &index_key(start),
                end_key.as_ref().map(|k| k.as_slice()),
                |_, v| match bincode::deserialize::<Entry>(v) {
                    Ok(e) => {
                        entries.push(e);
                        true
                    }
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                },
            )
            .map_err(read_err)?;
        match failure {
            Some(e) => Err(read_err(e)),
            None => Ok(entries),
        }
    }
}

/// The id of the last entry in the log, or of the last purged one when the log is empty.
pub fn last_log_id(engine: &Engine) -> Result<Option<LogId>, StorageError> {
    match engine.last(Cf::RaftLog).map_err(read_err)? {
        Some((_, v)) => Ok(Some(
            bincode::deserialize::<Entry>(&v).map_err(read_err)?.log_id,
        )),
        None => read_state(engine, LAST_PURGED),
    }
}

/// The vote as last saved. At start-up openraft's metrics do not show it yet.
pub fn saved_vote(engine: &Engine) -> Result<Option<Vote<NodeId>>, StorageError> {
    read_state(engine, VOTE)
}

fn read_state<T: DeserializeOwned>(engine: &Engine, key: &[u8]) -> Result<Option<T>, StorageError> {
    match engine.get(Cf::RaftState, key).map_err(read_err)? {
        Some(v) => Ok(Some(bincode::deserialize(&v).map_err(read_err)?)),
        None => Ok(None),
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.get_state(LAST_PURGED)?,
            last_log_id: last_log_id(&self.engine)?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_state(VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_state(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced: losing it only means re-learning the commit point from the leader.
        self.put_state(COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_state::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.engine.batch();
        for entry in entries {
            let bytes = bincode::serialize(&entry).map_err(write_err)?;
            batch.put(Cf::RaftLog, &index_key(entry.log_id.index), &bytes);
        }
        self.engine.write(batch, false).map_err(write_err)?;
        if let Err(unsent) = self.syncer.send(callback) {
            let e = io::Error::other("the WAL sync thread has stopped");
            unsent
                .0
                .log_io_completed(Err(io::Error::other(e.to_string())));
            return Err(write_err(e));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = self.engine.batch();
        batch.delete_range(Cf::RaftLog, &index_key(log_id.index), &index_key(u64::MAX));
        self.engine.write(batch, true).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.put_state(LAST_PURGED, &log_id, true)?;
        let mut batch = self.engine.batch();
        batch.delete_range(Cf::RaftLog, &index_key(0), &index_key(log_id.index + 1));
        self.engine.write(batch, false).map_err(write_err)
    }
}

/// Acknowledges appends once an fsync that began after them has completed; every append that
/// queued during one fsync shares the next.
fn sync_wal(engine: &Engine, pending: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        waiting.extend(pending.try_iter());
        let result = engine.sync_wal().map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "fsync of the write-ahead log failed");
        }
        for callback in waiting {
            callback.log_io_completed(result.clone().map_err(io::Error::other));
        }
    }
}
