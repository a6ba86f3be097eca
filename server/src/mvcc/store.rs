//! The multi-version store: revisions on disk (column family `Kv`), the key index in memory.
//!
//! Writers hold the state lock for the whole of one applied Raft batch and write the batch to the
//! engine before releasing it, so a reader that sees a revision in the index always finds its
//! value. Readers hold the lock only to resolve revisions, then read values through an engine
//! snapshot, which also protects them from the background compactor.

use std::collections::{HashMap, HashSet};
use std::sync::{mpsc, Arc};

use oxcd_proto::mvccpb::KeyValue;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use prost::Message;
use tokio::sync::watch;

use super::index::{KeyAt, KeyRange, TreeIndex};
use super::revision::Revision;
use crate::error::EtcdError;
use crate::storage::{self, Cf, Engine, Snapshot, WriteBatch};

const META_CURRENT_REV: &[u8] = b"current_rev";
const META_SCHEDULED_COMPACT: &[u8] = b"scheduled_compact_rev";
const META_FINISHED_COMPACT: &[u8] = b"finished_compact_rev";
/// Revisions deleted per engine write by the compactor, so it never holds much in memory.
const COMPACTION_BATCH: usize = 10_000;

#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// 0 = no limit.
    pub limit: usize,
    /// <= 0 = the view's current revision.
    pub rev: i64,
    pub count_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the revision read, ignoring the limit.
    pub count: usize,
    /// The view's current revision (not the revision requested).
    pub rev: i64,
}

/// One change made by a write transaction, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kv: KeyValue,
    pub deleted: bool,
    /// The key's previous value, when the writer was asked to keep it (watchers want it).
    pub prev: Option<KeyValue>,
}

/// One stored change read back from history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    pub kv: KeyValue,
    pub deleted: bool,
}

/// Reads shared by plain reads, read-only transactions and write transactions.
pub trait ReadView {
    /// The revision the transaction started at.
    fn rev(&self) -> i64;
    fn compact_rev(&self) -> i64;
    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, EtcdError>;
}

struct State {
    index: TreeIndex,
    current: i64,
    /// -1 until the first compaction, as in etcd (so compacting at 0 is allowed once).
    compact: i64,
}

pub struct MvccStore {
    engine: Arc<Engine>,
    state: RwLock<State>,
    compactor: Compactor,
    compacted: watch::Receiver<i64>,
    /// Key -> lease of every live leased key found while loading, for the lessor to take.
    restored_leases: parking_lot::Mutex<HashMap<Vec<u8>, i64>>,
}

/// The background thread that deletes compacted revisions. Dropping it waits for the thread,
/// so the engine (and its directory lock) is released when the store is.
struct Compactor {
    jobs: Option<mpsc::Sender<(i64, HashSet<Revision>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    fn send(&self, job: (i64, HashSet<Revision>)) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl MvccStore {
    /// Opens the store, rebuilding the index from the stored revisions and resuming an
    /// interrupted physical compaction.
    pub fn open(engine: Arc<Engine>) -> storage::Result<Arc<MvccStore>> {
        let (state, finished, leased) = load_state(&engine)?;
        let (done_tx, done_rx) = watch::channel(finished);
        let (tx, rx) = mpsc::channel();
        let compactor_engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("mvcc-compactor".into())
            .spawn(move || run_compactor(&compactor_engine, rx, done_tx))
            .map_err(|e| storage::StorageError::Io(engine.data_dir().into(), e))?;
        let compactor = Compactor {
            jobs: Some(tx),
            thread: Some(thread),
        };
        let store = MvccStore {
            engine,
            state: RwLock::new(state),
            compactor,
            compacted: done_rx,
            restored_leases: parking_lot::Mutex::new(leased),
        };
        store.resume_compaction(finished);
        Ok(Arc::new(store))
    }

    /// Replaces the in-memory state with what the engine now holds (after a snapshot install).
    pub fn reload(&self) -> storage::Result<()> {
        let (state, finished, leased) = load_state(&self.engine)?;
        *self.state.write() = state;
        *self.restored_leases.lock() = leased;
        self.resume_compaction(finished);
        Ok(())
    }

    /// The live leased keys found when the store was last loaded (taken once).
    pub fn take_leased_keys(&self) -> HashMap<Vec<u8>, i64> {
        std::mem::take(&mut *self.restored_leases.lock())
    }

    fn resume_compaction(&self, finished: i64) {
        let mut state = self.state.write();
        let at = state.compact;
        if at > finished {
            let keep = state.index.compact(at);
            self.compactor.send((at, keep));
        }
    }

    /// A point-in-time view of the whole engine; every applied batch is in it entirely or not
    /// at all.
    pub fn engine_snapshot(&self) -> Snapshot<'_> {
        self.engine.snapshot()
    }

    pub fn current_revision(&self) -> i64 {
        self.state.read().current
    }

    pub fn compact_revision(&self) -> i64 {
        self.state.read().compact
    }

    /// A single range read: revisions are resolved under the lock, values read after it.
    pub fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, EtcdError> {
        let state = self.state.read();
        let (entries, count, rev) = resolve(&state, state.current, range, opts)?;
        if opts.count_only {
            return Ok(RangeResult {
                kvs: Vec::new(),
                count,
                rev,
            });
        }
        let snapshot = self.engine.snapshot();
        drop(state);
        let kvs = fetch(&entries, |keys| snapshot.multi_get(Cf::Kv, keys))?;
        Ok(RangeResult { kvs, count, rev })
    }

    /// A consistent view for a read-only transaction of several operations.
    pub fn read(&self) -> ReadTxn<'_> {
        ReadTxn {
            state: self.state.read(),
            snapshot: self.engine.snapshot(),
        }
    }

    /// Exclusive access for applying one batch of writes; `keep_prev` records each changed
    /// key's previous value in the returned changes.
    pub fn writer(&self, keep_prev: bool) -> Writer<'_> {
        Writer {
            store: self,
            state: self.state.write(),
            batch: self.engine.batch(),
            written: HashMap::new(),
            changes: Vec::new(),
            compaction: None,
            keep_prev,
        }
    }

    /// Changes to keys in `range` with main revision in `[from, to]`, in revision order, at
    /// most about `max_events` (never splitting a revision). Returns `Compacted` if part of
    /// that history is gone.
    pub fn history(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> Result<Vec<HistoryEvent>, EtcdError> {
        // Snapshot first, then check the compaction point: deletions of any later compaction
        // happen after this check, so the snapshot still holds everything from `from` on.
        let snapshot = self.engine.snapshot();
        if from < self.compact_revision() {
            return Err(EtcdError::Compacted);
        }
        let mut events = Vec::new();
        let mut last_main = None;
        let mut failure = None;
        let end = Revision::lower_bound_key(to + 1);
        snapshot
            .scan(
                Cf::Kv,
                &Revision::lower_bound_key(from),
                Some(&end),
                |k, v| {
                    let (Some((rev, deleted)), Ok(kv)) =
                        (Revision::from_key(k), KeyValue::decode(v))
                    else {
                        failure = Some(EtcdError::Corrupt);
                        return false;
                    };
                    if events.len() >= max_events && last_main != Some(rev.main) {
                        return false;
                    }
                    last_main = Some(rev.main);
                    if range.contains(&kv.key) {
                        let kv = if deleted {
                            KeyValue {
                                mod_revision: rev.main,
                                ..kv
                            }
                        } else {
                            kv
                        };
                        events.push(HistoryEvent { kv, deleted });
                    }
                    true
                },
            )
            .map_err(|_| EtcdError::Corrupt)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(events),
        }
    }

    /// etcd's HashKV: crc32c over every stored revision up to `rev` (0 = current), skipping
    /// revisions compaction has already given up. Equal on members with equal history.
    /// Returns (hash, revision hashed, compaction revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), EtcdError> {
        let state = self.state.read();
        let (current, compacted) = (state.current, state.compact);
        if rev > 0 && rev <= compacted {
            return Err(EtcdError::Compacted);
        }
        if rev > current {
            return Err(EtcdError::FutureRevision);
        }
        let rev = if rev <= 0 { current } else { rev };
        let keep = state.index.keep(compacted);
        let snapshot = self.engine.snapshot();
        drop(state);
        let mut hash = crc32c::crc32c(b"key");
        snapshot
            .scan(
                Cf::Kv,
                &[],
                Some(&Revision::lower_bound_key(rev + 1)),
                |k, v| {
                    let Some((r, _)) = Revision::from_key(k) else {
                        return true;
                    };
                    if r.main > compacted || keep.is_empty() || keep.contains(&r) {
                        hash = crc32c::crc32c_append(hash, k);
                        hash = crc32c::crc32c_append(hash, v);
                    }
                    true
                },
            )
            .map_err(|_| EtcdError::Corrupt)?;
        Ok((hash, rev, compacted))
    }

    /// The value `key` had just before main revision `rev`, if it existed then and that
    /// history is still stored.
    pub fn value_before(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        let state = self.state.read();
        let at = state.index.get(key, rev - 1)?;
        let snapshot = self.engine.snapshot();
        drop(state);
        fetch(&[(key.to_vec(), at)], |keys| {
            snapshot.multi_get(Cf::Kv, keys)
        })
        .ok()?
        .pop()
    }

    /// Resolves once physical compaction up to `rev` has finished.
    pub async fn wait_compacted(&self, rev: i64) {
        let mut rx = self.compacted.clone();
        let _ = rx.wait_for(|done| *done >= rev).await;
    }

    /// Number of live keys at the current revision.
    pub fn key_count(&self) -> usize {
        let state = self.state.read();
        state
            .index
            .range(&KeyRange::new(&[0], &[0]), state.current, 0)
            .1
    }
}

/// The store's revision, when `key` and `value` are the metadata record that holds it.
pub fn current_revision_record(key: &[u8], value: &[u8]) -> Option<i64> {
    (key == META_CURRENT_REV).then(|| Some(i64::from_be_bytes(value.try_into().ok()?)))?
}

/// Rebuilds the index by scanning the stored revisions; returns the state and the revision up
/// to which physical compaction has finished, and the live leased keys.
#[allow(clippy::type_complexity)]
fn load_state(engine: &Engine) -> storage::Result<(State, i64, HashMap<Vec<u8>, i64>)> {
    let read_i64 = |key: &[u8]| -> storage::Result<Option<i64>> {
        Ok(engine
            .get(Cf::Meta, key)?
            .and_then(|v| Some(i64::from_be_bytes(v.try_into().ok()?))))
    };
    let current = read_i64(META_CURRENT_REV)?.unwrap_or(1);
    let scheduled = read_i64(META_SCHEDULED_COMPACT)?.unwrap_or(-1);
    let finished = read_i64(META_FINISHED_COMPACT)?.unwrap_or(-1);

    let mut index = TreeIndex::default();
    let mut leased = HashMap::new();
    let mut corrupt = None;
    engine.scan(Cf::Kv, &[], None, |k, v| {
        let (Some((rev, tombstone)), Ok(kv)) = (Revision::from_key(k), KeyValue::decode(v)) else {
            corrupt = Some(k.to_vec());
            return false;
        };
        if tombstone || kv.lease == 0 {
            leased.remove(&kv.key);
        } else {
            leased.insert(kv.key.clone(), kv.lease);
        }
        if tombstone {
            index.restore_tombstone(&kv.key, rev);
        } else {
            index.restore(
                &kv.key,
                Revision::new(kv.create_revision, 0),
                rev,
                kv.version,
            );
        }
        true
    })?;
    if let Some(k) = corrupt {
        return Err(storage::StorageError::Corrupt(format!(
            "undecodable revision {k:?}"
        )));
    }
    tracing::info!(
        current,
        compacted = scheduled,
        keys = index.len(),
        "mvcc state loaded"
    );
    Ok((
        State {
            index,
            current,
            compact: scheduled,
        },
        finished,
        leased,
    ))
}

/// Keys with their state at the revision read, the total count, and the current revision.
type Resolved = (Vec<(Vec<u8>, KeyAt)>, usize, i64);

/// Looks up revisions for a range at the requested revision with etcd's revision checks.
fn resolve(
    state: &State,
    current: i64,
    range: &KeyRange,
    opts: RangeOptions,
) -> Result<Resolved, EtcdError> {
    if opts.rev > current {
        return Err(EtcdError::FutureRevision);
    }
    let at = if opts.rev <= 0 { current } else { opts.rev };
    if at < state.compact {
        return Err(EtcdError::Compacted);
    }
    let limit = if opts.count_only { 1 } else { opts.limit };
    let (entries, count) = state.index.range(range, at, limit);
    Ok((entries, count, current))
}

fn fetch(
    entries: &[(Vec<u8>, KeyAt)],
    multi_get: impl FnOnce(&[Vec<u8>]) -> storage::Result<Vec<Option<Vec<u8>>>>,
) -> Result<Vec<KeyValue>, EtcdError> {
    let keys: Vec<Vec<u8>> = entries
        .iter()
        .map(|(_, at)| at.modified.to_key(false))
        .collect();
    let values = multi_get(&keys).map_err(|e| {
        tracing::error!(error = %e, "reading revisions failed");
        EtcdError::Corrupt
    })?;
    values
        .into_iter()
        .zip(entries)
        .map(|(v, (key, at))| {
            let kv = v.and_then(|v| KeyValue::decode(v.as_slice()).ok());
            kv.ok_or_else(|| {
                tracing::error!(key = ?key, rev = ?at.modified, "indexed revision missing from storage");
                EtcdError::Corrupt
            })
        })
        .collect()
}

pub struct ReadTxn<'a> {
    state: RwLockReadGuard<'a, State>,
    snapshot: Snapshot<'a>,
}

impl ReadView for ReadTxn<'_> {
    fn rev(&self) -> i64 {
        self.state.current
    }

    fn compact_rev(&self) -> i64 {
        self.state.compact
    }

    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, EtcdError> {
        let (entries, count, rev) = resolve(&self.state, self.state.current, range, opts)?;
        if opts.count_only {
            return Ok(RangeResult {
                kvs: Vec::new(),
                count,
                rev,
            });
        }
        let kvs = fetch(&entries, |keys| self.snapshot.multi_get(Cf::Kv, keys))?;
        Ok(RangeResult { kvs, count, rev })
    }
}

/// Applies one batch of write transactions and commits them to the engine in one write.
pub struct Writer<'a> {
    store: &'a MvccStore,
    state: RwLockWriteGuard<'a, State>,
    batch: WriteBatch<'a>,
    /// Values written by this batch, not yet in the engine.
    written: HashMap<Revision, KeyValue>,
    changes: Vec<Change>,
    compaction: Option<(i64, HashSet<Revision>)>,
    keep_prev: bool,
}

impl<'a> Writer<'a> {
    /// Starts a write transaction; all its changes share one main revision.
    pub fn txn(&mut self) -> TxnWrite<'_, 'a> {
        let begin = self.state.current;
        TxnWrite {
            writer: self,
            begin,
            changes: 0,
        }
    }

    /// Schedules compaction at `rev`: the index forgets history at once, the compactor deletes
    /// it from disk after this batch commits.
    pub fn compact(&mut self, rev: i64) -> Result<(), EtcdError> {
        if rev <= self.state.compact {
            return Err(EtcdError::Compacted);
        }
        if rev > self.state.current {
            return Err(EtcdError::FutureRevision);
        }
        let keep = self.state.index.compact(rev);
        self.state.compact = rev;
        self.batch
            .put(Cf::Meta, META_SCHEDULED_COMPACT, &rev.to_be_bytes());
        self.compaction = Some((rev, keep));
        Ok(())
    }

    pub fn current_revision(&self) -> i64 {
        self.state.current
    }

    /// Adds other state (metadata, leases) to the same atomic engine write.
    pub fn put_extra(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.batch.put(cf, key, value);
    }

    pub fn delete_extra(&mut self, cf: Cf, key: &[u8]) {
        self.batch.delete(cf, key);
    }

    /// The changes made so far in this batch, in order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Writes everything to the engine, then releases the lock; returns the changes in order.
    pub fn commit(mut self) -> storage::Result<Vec<Change>> {
        let current = self.state.current;
        self.batch
            .put(Cf::Meta, META_CURRENT_REV, &current.to_be_bytes());
        self.store.engine.write(self.batch, false)?;
        drop(self.state);
        if let Some(job) = self.compaction {
            self.store.compactor.send(job);
        }
        Ok(self.changes)
    }

    fn value_at(&self, rev: Revision) -> Result<KeyValue, EtcdError> {
        if let Some(kv) = self.written.get(&rev) {
            return Ok(kv.clone());
        }
        let raw = self
            .store
            .engine
            .get(Cf::Kv, &rev.to_key(false))
            .map_err(|e| {
                tracing::error!(error = %e, "reading a revision failed");
                EtcdError::Corrupt
            })?;
        raw.and_then(|v| KeyValue::decode(v.as_slice()).ok())
            .ok_or(EtcdError::Corrupt)
    }
}

pub struct TxnWrite<'w, 'a> {
    writer: &'w mut Writer<'a>,
    begin: i64,
    changes: i64,
}

impl TxnWrite<'_, '_> {
    /// The revision this transaction's reads see: its own changes included.
    fn read_rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    fn next_revision(&mut self) -> Revision {
        let rev = Revision::new(self.begin + 1, self.changes);
        self.changes += 1;
        rev
    }

    pub fn has_changes(&self) -> bool {
        self.changes > 0
    }

    /// Writes `key`; returns the revision of the write.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> i64 {
        let at = self.begin + 1;
        let previous = self.writer.state.index.get(key, at);
        let prev = self.previous_value(previous.map(|p| p.modified));
        let rev = self.next_revision();
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: previous.map_or(rev.main, |p| p.created.main),
            mod_revision: rev.main,
            version: previous.map_or(0, |p| p.version) + 1,
            value,
            lease,
        };
        self.writer
            .batch
            .put(Cf::Kv, &rev.to_key(false), &kv.encode_to_vec());
        self.writer.state.index.put(key, rev);
        self.writer.written.insert(rev, kv.clone());
        self.writer.changes.push(Change {
            kv,
            deleted: false,
            prev,
        });
        rev.main
    }

    fn previous_value(&self, rev: Option<Revision>) -> Option<KeyValue> {
        if !self.writer.keep_prev {
            return None;
        }
        rev.and_then(|r| self.writer.value_at(r).ok())
    }

    /// Deletes every live key in `range`; returns how many and the revision to report.
    pub fn delete_range(&mut self, range: &KeyRange) -> (i64, i64) {
        let (keys, _) = self.writer.state.index.range(range, self.read_rev(), 0);
        for (key, at) in &keys {
            let prev = self.previous_value(Some(at.modified));
            let rev = self.next_revision();
            // Stored as etcd stores a tombstone (the key alone, so HashKV agrees with etcd);
            // the revision is in the storage key. Watchers get the delete revision.
            let stored = KeyValue {
                key: key.clone(),
                ..Default::default()
            };
            self.writer
                .batch
                .put(Cf::Kv, &rev.to_key(true), &stored.encode_to_vec());
            let kv = KeyValue {
                mod_revision: rev.main,
                ..stored
            };
            self.writer.state.index.tombstone(key, rev);
            self.writer.changes.push(Change {
                kv,
                deleted: true,
                prev,
            });
        }
        (keys.len() as i64, self.read_rev())
    }
}

impl ReadView for TxnWrite<'_, '_> {
    fn rev(&self) -> i64 {
        self.begin
    }

    fn compact_rev(&self) -> i64 {
        self.writer.state.compact
    }

    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, EtcdError> {
        let (entries, count, rev) = resolve(&self.writer.state, self.read_rev(), range, opts)?;
        if opts.count_only {
            return Ok(RangeResult {
                kvs: Vec::new(),
                count,
                rev,
            });
        }
        let kvs = entries
            .iter()
            .map(|(_, at)| self.writer.value_at(at.modified))
            .collect::<Result<_, _>>()?;
        Ok(RangeResult { kvs, count, rev })
    }
}

impl Drop for TxnWrite<'_, '_> {
    fn drop(&mut self) {
        if self.changes > 0 {
            self.writer.state.current = self.begin + 1;
        }
    }
}

fn run_compactor(
    engine: &Engine,
    jobs: mpsc::Receiver<(i64, HashSet<Revision>)>,
    done: watch::Sender<i64>,
) {
    for (rev, keep) in jobs {
        let end = Revision::lower_bound_key(rev + 1);
        let mut from = Vec::new();
        loop {
            let mut doomed = Vec::new();
            let mut last = None;
            let scanned = engine.scan(Cf::Kv, &from, Some(&end), |k, _| {
                last = Some(k.to_vec());
                if Revision::from_key(k).is_some_and(|(r, _)| !keep.contains(&r)) {
                    doomed.push(k.to_vec());
                }
                doomed.len() < COMPACTION_BATCH
            });
            let mut batch = engine.batch();
            for k in &doomed {
                batch.delete(Cf::Kv, k);
            }
            let finished = doomed.len() < COMPACTION_BATCH;
            if finished {
                batch.put(Cf::Meta, META_FINISHED_COMPACT, &rev.to_be_bytes());
            }
            if let Err(e) = scanned.and_then(|_| engine.write(batch, false)) {
                tracing::error!(error = %e, rev, "compaction failed; it resumes at the next start");
                return;
            }
            if finished {
                break;
            }
            from = last
                .map(|mut k| {
                    k.push(0);
                    k
                })
                .unwrap_or_default();
        }
        engine.compact_range(Cf::Kv, None, Some(&end));
        let _ = done.send(rev);
        tracing::info!(rev, "physical compaction finished");
    }
}
