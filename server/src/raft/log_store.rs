//! Raft's log, in its own segment files ([`SegmentLog`]), and its vote and log positions in the
//! engine. An append is acknowledged to openraft only after an fsync of the segment that holds
//! it; the vote is fsynced before `save_vote` returns.
//!
//! Appends do not wait for the disk: the entries are written (readable at once) and their
//! completion callback goes to the log's sync thread, which fsyncs once for every append that
//! queued up meanwhile and then acknowledges them all. openraft's core never blocks on an
//! fsync, and concurrent appends share one. Every engine call that may wait runs on the
//! blocking pool, so a RocksDB write stall or a slow fsync never holds up the async workers.
//!
//! Appended entries also stay decoded in a [`LogCache`] until they are applied: the state
//! machine and the replication streams read them from there.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::log_cache::LogCache;
use super::record::{self, RecordError};
use super::segment_log::SegmentLog;
use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::metrics::metrics;
use crate::storage::{off_runtime, short_unless_held_back, Cf, Engine, FORMAT_KEY};

pub(super) const VOTE: &[u8] = b"vote";
pub(super) const COMMITTED: &[u8] = b"committed";
pub(super) const LAST_PURGED: &[u8] = b"last_purged";

/// Data dir format 4: the Raft log moved from the engine's `raft_log` column family into
/// [`SegmentLog`] files.
pub const SEGMENT_LOG_FORMAT: u64 = 4;

#[derive(Clone)]
pub struct LogStore {
    engine: Arc<Engine>,
    log: Arc<SegmentLog>,
    syncer: Arc<LogSyncer>,
    /// Shared by the core's store and the readers cloned from it.
    recent: Arc<parking_lot::Mutex<LogCache>>,
    /// The id of the last purged entry, as recorded in the engine.
    purged: Arc<parking_lot::Mutex<Option<LogId>>>,
}

/// The log's sync thread; dropping the last handle stops it and waits for it, so the log is
/// never in use by it once the log store is gone.
struct LogSyncer {
    pending: Option<std::sync::mpsc::Sender<IOFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogSyncer {
    fn drop(&mut self) {
        self.pending.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Errors as openraft's storage traits take them.
type StorageError = io::Error;

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io::Error::other(format!("reading the Raft log: {e}"))
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io::Error::other(format!("writing the Raft log: {e}"))
}

impl LogStore {
    /// Opens the log of the engine's data dir, moving it out of the engine first if the data
    /// dir is of an older format.
    pub fn open(engine: Arc<Engine>) -> std::io::Result<LogStore> {
        // The last conversion step ends at the format this build writes.
        debug_assert_eq!(SEGMENT_LOG_FORMAT, crate::storage::DATA_DIR_FORMAT);
        let dir = engine.raft_log_dir();
        let format = engine.format_version().map_err(read_err)?;
        if format < SEGMENT_LOG_FORMAT && dir.exists() {
            // A conversion cut short: the engine still holds the whole log.
            std::fs::remove_dir_all(&dir)?;
        }
        let purged = read_state(&engine, LAST_PURGED, record::decode_position)?.flatten();
        let log = Arc::new(SegmentLog::open(
            &dir,
            purged.map(|id| id.index),
            engine.fsyncs(),
        )?);
        if format < SEGMENT_LOG_FORMAT {
            move_log_out_of_engine(&engine, &log)?;
        }
        let (pending, queue) = std::sync::mpsc::channel();
        let synced = log.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_appends(&synced, queue))?;
        Ok(LogStore {
            engine,
            log,
            syncer: Arc::new(LogSyncer {
                pending: Some(pending),
                thread: Some(thread),
            }),
            recent: Arc::default(),
            purged: Arc::new(parking_lot::Mutex::new(purged)),
        })
    }

    /// The id of the last entry purged from the log (the log before it is gone).
    pub fn last_purged(&self) -> Option<LogId> {
        *self.purged.lock()
    }

    /// The id of the last entry in the log, or of the last purged one when the log is empty.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.log.last_log_id().or_else(|| self.last_purged())
    }

    /// The vote as last saved. At start-up openraft's metrics do not show it yet.
    pub fn saved_vote(&self) -> Result<Option<Vote>, StorageError> {
        read_state(&self.engine, VOTE, record::decode_vote)
    }

    async fn get_state<T: Send + 'static>(
        &self,
        key: &'static [u8],
        decode: fn(&[u8]) -> Result<T, RecordError>,
    ) -> Result<Option<T>, StorageError> {
        let engine = self.engine.clone();
        blocking(move || read_state(&engine, key, decode)).await
    }

    async fn put_state(
        &self,
        key: &'static [u8],
        value: Vec<u8>,
        durable: bool,
    ) -> Result<(), StorageError> {
        let engine = self.engine.clone();
        let work = move || {
            let mut batch = engine.batch();
            batch.put(Cf::RaftState, key, &value);
            engine.write(batch, durable).map_err(write_err)
        };
        // The commit point is saved after every commit; a vote, fsynced, only in elections.
        if durable {
            blocking(work).await
        } else {
            short_unless_held_back(&self.engine, write_err("shutting down"), work).await
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    off_runtime(write_err("shutting down"), work).await
}

/// Reads of at most this many entries run right on the async worker: a few reads from the page
/// cache, as any short computation does.
const SHORT_READ_ENTRIES: u64 = 64;

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
        // The state machine's read of what it applies next, the one caller while serving.
        let split = end.and_then(|end| self.recent.lock().take_applied(start, end));
        let Some(split) = split else {
            return self.read_from_log(start, end).await;
        };
        if split.engine_end == start {
            return Ok(split.cached);
        }
        let mut entries = self.read_from_log(start, Some(split.engine_end)).await?;
        entries.extend(split.cached);
        Ok(entries)
    }

    /// What one append message to a follower carries: at least one entry, and no more than
    /// [`MAX_APPEND_BYTES`] of them, so a large entry crosses a slow link without the ones
    /// after it waiting in the same message.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if let Some(cached) = self
            .recent
            .lock()
            .copy_for_append(start, end, MAX_APPEND_BYTES)
        {
            return Ok(cached);
        }
        // A follower catching up on entries older than the cache: up to a message's worth of
        // reads, from disk when they are old enough, so not on the async worker.
        let log = self.log.clone();
        blocking(move || read_entries(&log, start, Some(end), MAX_APPEND_BYTES)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_state(VOTE, record::decode_vote).await
    }
}

impl LogStore {
    async fn read_from_log(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let log = self.log.clone();
        let work = move || read_entries(&log, start, end, u64::MAX);
        // Entries read back to be applied are recent, so in the page cache.
        if end.is_some_and(|end| end.saturating_sub(start) <= SHORT_READ_ENTRIES) {
            work()
        } else {
            blocking(work).await
        }
    }
}

/// Entry bytes per append message (at least one entry is always sent).
const MAX_APPEND_BYTES: u64 = 2 << 20;

/// The entries from `start` to before `end`, stopping early once `budget` bytes are read.
fn read_entries(
    log: &SegmentLog,
    start: u64,
    end: Option<u64>,
    budget: u64,
) -> Result<Vec<Entry>, StorageError> {
    let encoded = log.read(start, end, budget)?;
    let entries = encoded.iter().map(|bytes| record::decode_entry(bytes));
    entries.collect::<Result<_, _>>().map_err(read_err)
}

/// Format 3 → 4: the entries of the engine's `raft_log` column family are written to the
/// segment log and synced, and only then removed from the engine, with the new format recorded
/// in the same (synced) write. A conversion cut short starts again from the engine.
fn move_log_out_of_engine(engine: &Engine, log: &SegmentLog) -> Result<(), StorageError> {
    tracing::info!("moving the Raft log out of RocksDB into its own files (once)");
    let mut next = 0u64;
    loop {
        let mut batch = Vec::new();
        let mut failure = None;
        engine
            .scan(Cf::RaftLog, &next.to_be_bytes(), None, |_, v| {
                match record::entry_log_id(v) {
                    Ok(id) => batch.push((id, v.to_vec())),
                    Err(e) => failure = Some(e),
                }
                failure.is_none() && batch.len() < 1024
            })
            .map_err(read_err)?;
        if let Some(e) = failure {
            return Err(read_err(e));
        }
        let Some((last, _)) = batch.last() else {
            break;
        };
        next = last.index + 1;
        log.append(&batch)?;
    }
    log.sync()?;
    fail::fail_point!("raft::log::convert::before_engine_write", |_| Err(
        write_err("failpoint raft::log::convert::before_engine_write")
    ));
    let mut batch = engine.batch();
    batch.delete_range(Cf::RaftLog, &0u64.to_be_bytes(), &u64::MAX.to_be_bytes());
    batch.put(Cf::RaftState, FORMAT_KEY, &SEGMENT_LOG_FORMAT.to_be_bytes());
    engine.write(batch, true).map_err(write_err)
}

fn read_state<T>(
    engine: &Engine,
    key: &[u8],
    decode: fn(&[u8]) -> Result<T, RecordError>,
) -> Result<Option<T>, StorageError> {
    match engine.get(Cf::RaftState, key).map_err(read_err)? {
        Some(v) => Ok(Some(decode(&v).map_err(read_err)?)),
        None => Ok(None),
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.last_purged(),
            last_log_id: self.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_state(VOTE, record::encode_vote(vote), true)
            .await?;
        fail::fail_point!("raft::vote::after_save");
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced: losing it only means re-learning the commit point from the leader.
        let position = record::encode_position(committed.as_ref());
        self.put_state(COMMITTED, position, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.get_state(COMMITTED, record::decode_position).await?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded: Vec<_> = entries
            .iter()
            .map(|entry| (entry.log_id, record::encode_entry(entry)))
            .collect();
        let sizes: Vec<usize> = encoded.iter().map(|(_, bytes)| bytes.len()).collect();
        if self.log.fits(&encoded) {
            self.log.append(&encoded)?;
        } else {
            // A new segment syncs the last one and the directory, and a cut its segment.
            let log = self.log.clone();
            blocking(move || log.append(&encoded)).await?;
        }
        self.recent.lock().appended(entries.into_iter().zip(sizes));
        fail::fail_point!("raft::log::after_append");
        let Some(syncer) = &self.syncer.pending else {
            unreachable!("the syncer's queue lives as long as the log store")
        };
        if let Err(unsent) = syncer.send(callback) {
            let e = "the Raft log's sync thread has stopped";
            unsent.0.io_completed(Err(write_err(e)));
            return Err(write_err(e));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_kept: Option<LogId>) -> Result<(), StorageError> {
        let from = last_kept.map_or(0, |id| id.index + 1);
        self.recent.lock().truncate_from(from);
        let log = self.log.clone();
        blocking(move || log.truncate_from(from)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        let purged = record::encode_position(Some(&log_id));
        self.put_state(LAST_PURGED, purged, true).await?;
        *self.purged.lock() = Some(log_id);
        fail::fail_point!("raft::log::purge::after_mark");
        self.recent.lock().purge_through(log_id.index);
        let log = self.log.clone();
        blocking(move || log.purge_through(log_id.index)).await
    }
}

/// Acknowledges appends once an fsync that began after them has completed; every append that
/// queued during one fsync shares the next.
fn sync_appends(log: &SegmentLog, pending: std::sync::mpsc::Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        waiting.extend(pending.try_iter());
        fail::fail_point!("raft::wal::before_fsync");
        let fsync = metrics().disk.wal_fsync.start_timer();
        let result = log.sync().map_err(|e| e.to_string());
        fsync.observe_duration();
        fail::fail_point!("raft::wal::after_fsync");
        if let Err(e) = &result {
            tracing::error!(error = %e, "fsync of the Raft log failed");
        }
        for callback in waiting {
            callback.io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log::{StoreBuilder, Suite};

    use super::*;
    use crate::apply::Applier;
    use crate::raft::state_machine::StateMachine;

    struct TempStore;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStore {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), openraft::StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(dir.path()).unwrap();
            let applier = Applier::open_for_tests(&engine);
            let sm = StateMachine::open(engine.clone(), applier).unwrap();
            Ok((dir, LogStore::open(engine).unwrap(), sm))
        }
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: crate::raft::types::log_id(term, 1, index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn terms(entries: &[Entry]) -> Vec<(u64, u64)> {
        let ids = entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index));
        ids.collect()
    }

    /// What a truncation or a purge removes is never read back from the log cache, and what
    /// replaced it is.
    #[tokio::test]
    async fn reads_see_the_log_after_truncation_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(Engine::open(dir.path()).unwrap()).unwrap();
        let entries = (1..=10).map(|i| blank(1, i));
        log.append(entries, IOFlushed::noop()).await.unwrap();
        log.truncate_after(Some(crate::raft::types::log_id(1, 1, 5)))
            .await
            .unwrap();
        assert!(log.limited_get_log_entries(6, 10).await.unwrap().is_empty());
        assert_eq!(log.try_get_log_entries(4..8).await.unwrap().len(), 2);
        log.append([blank(2, 6), blank(2, 7)], IOFlushed::noop())
            .await
            .unwrap();
        assert_eq!(
            terms(&log.limited_get_log_entries(5, 9).await.unwrap()),
            [(1, 5), (2, 6), (2, 7)]
        );
        log.purge(crate::raft::types::log_id(1, 1, 5))
            .await
            .unwrap();
        assert_eq!(
            terms(&log.try_get_log_entries(0..8).await.unwrap()),
            [(2, 6), (2, 7)]
        );
    }

    /// Format 3 → 4: the log moves out of the engine; a conversion cut short starts again.
    #[cfg(feature = "failpoints")]
    #[tokio::test]
    async fn a_log_in_the_engine_moves_to_its_own_files_even_when_cut_short() {
        use crate::raft::types::log_id;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut batch = engine.batch();
        batch.put(Cf::RaftState, FORMAT_KEY, &3u64.to_be_bytes());
        let purged = record::encode_position(Some(&log_id(1, 1, 4)));
        batch.put(Cf::RaftState, LAST_PURGED, &purged);
        for index in 5..=2500u64 {
            let entry = record::encode_entry(&blank(1 + index / 1000, index));
            batch.put(Cf::RaftLog, &index.to_be_bytes(), &entry);
        }
        engine.write(batch, true).unwrap();

        fail::cfg("raft::log::convert::before_engine_write", "1*return->off").unwrap();
        LogStore::open(engine.clone())
            .err()
            .expect("the failpoint stops it");
        assert_eq!(engine.format_version().unwrap(), 3);
        assert!(
            engine.last(Cf::RaftLog).unwrap().is_some(),
            "the engine keeps the log"
        );

        let mut log = LogStore::open(engine.clone()).unwrap();
        assert_eq!(engine.format_version().unwrap(), SEGMENT_LOG_FORMAT);
        assert!(engine.last(Cf::RaftLog).unwrap().is_none());
        assert_eq!(log.last_log_id(), Some(log_id(3, 1, 2500)));
        let entries = log.try_get_log_entries(0..3000).await.unwrap();
        let expected: Vec<_> = (5..=2500).map(|i| (1 + i / 1000, i)).collect();
        assert_eq!(terms(&entries), expected);
        drop(log);
        let mut log = LogStore::open(engine).unwrap();
        assert_eq!(log.try_get_log_entries(2499..2501).await.unwrap().len(), 2);
    }

    /// openraft's contract for log stores and state machines, the log cache included:
    /// truncation, purges, reads across appends. All of its cases but `transfer_snapshot`,
    /// which installs the leader's snapshot file on a follower directly: oxcd's state machine
    /// installs only what the peer network received (`SnapshotData::Received`), and
    /// `tests/snapshot.rs` covers that path across real members.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        type Cases = Suite<TypeConfig, LogStore, StateMachine, TempStore, tempfile::TempDir>;
        macro_rules! run {
            ($($case:ident)*) => {$(
                let (_dir, log, sm) = TempStore.build().await.unwrap();
                Cases::$case(log, sm).await.expect(stringify!($case));
            )*};
        }
        run!(
            last_membership_in_log_initial last_membership_in_log
            last_membership_in_log_multi_step get_membership_initial
            get_membership_from_log_and_empty_sm get_membership_from_empty_log_and_sm
            get_membership_from_log_le_sm_last_applied
            get_membership_from_log_gt_sm_last_applied_1
            get_membership_from_log_gt_sm_last_applied_2 get_initial_state_without_init
            get_initial_state_membership_from_empty_log_and_sm
            get_initial_state_membership_from_sm_inlog_is_smaller
            get_initial_state_membership_from_log_insm_is_smaller get_initial_state_with_state
            get_initial_state_last_log_gt_sm get_initial_state_last_log_lt_sm
            get_initial_state_inverted_log_order get_initial_state_conflict_at_same_index
            get_initial_state_log_ids get_initial_state_re_apply_committed save_vote
            get_log_entries limited_get_log_entries leader_bounded_stream entries_stream
            try_get_log_entry log_reader_reads_new_entries initial_logs get_log_state get_log_id
            last_id_in_log last_applied_state purge_logs_upto_0 purge_logs_upto_5
            purge_logs_upto_20 delete_logs_after_11 delete_logs_after_5 delete_logs_after_0
            delete_logs_after_none append_to_log snapshot_meta snapshot_meta_optional
            apply_single apply_multiple
        );
    }
}
