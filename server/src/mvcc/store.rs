//! The multi-version store: revisions on disk (column family `Kv`), the key index in memory.
//!
//! The state lock guards the index and the published revision, and is never held across engine
//! I/O, so a slow disk, a RocksDB write stall or a huge read cannot hold up the others:
//!
//! - A writer (one applied Raft batch) adds its revisions to the index as it goes, each change
//!   under a short write lock, and reads previous values from the engine without the lock. Its
//!   revisions are above the published revision, so readers, who read at the published
//!   revision, do not see them. Once the batch is in the engine, the published revision moves
//!   to the batch's last one (and a compaction in the batch is applied to the index): from then
//!   on readers see the whole batch and find every value in the engine.
//! - Readers hold the lock only to resolve keys to revisions and to take an engine snapshot, then
//!   read values through the snapshot, which also protects them from the background compactor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{mpsc, Arc};

use oxcd_proto::mvccpb::KeyValue;
use parking_lot::{Mutex, MutexGuard, RwLock};
use prost::Message;
use tokio::sync::watch;

use super::hash::KvHasher;
use super::index::{KeyAt, KeyRange, TreeIndex};
use super::revision::Revision;
use crate::error::EtcdError;
use crate::metrics::metrics;
use crate::storage::{self, Cf, Engine, Snapshot, WriteBatch};

const META_CURRENT_REV: &[u8] = b"current_rev";
const META_SCHEDULED_COMPACT: &[u8] = b"scheduled_compact_rev";
const META_FINISHED_COMPACT: &[u8] = b"finished_compact_rev";
/// How the compactor paces its deletes, as etcd's --compaction-batch-limit and
/// --compaction-sleep-interval pace etcd's: at most `batch_limit` revisions per engine write (so
/// it never holds much in memory), then a pause of `sleep` that leaves the disk to the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPacing {
    pub batch_limit: usize,
    pub sleep: std::time::Duration,
}

impl Default for CompactionPacing {
    /// etcd's defaults.
    fn default() -> Self {
        CompactionPacing {
            batch_limit: 1000,
            sleep: std::time::Duration::from_millis(10),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// 0 = no limit.
    pub limit: usize,
    /// <= 0 = the view's current revision.
    pub rev: i64,
    pub count_only: bool,
    /// Answer from the index alone: each key with its revisions and version, but without its
    /// value or lease (a Txn compare on those needs no read of the value).
    pub index_only: bool,
    /// Stop at the limit instead of counting the whole range (etcd's `WithTotalCount: false`,
    /// which RangeStream's chunks use: counting would visit the rest of the range per chunk).
    pub skip_total: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the revision read, ignoring the limit (with `skip_total`, only
    /// the keys found up to the limit).
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
    /// Held by the one writer (and by a reload), for the whole of its batch.
    writing: Mutex<()>,
    compactor: Compactor,
    compacted: watch::Receiver<CompactorState>,
    /// Key -> lease of every live leased key found while loading, for the lessor to take.
    restored_leases: Mutex<HashMap<Vec<u8>, i64>>,
    /// The hashes the latest physical compactions took (etcd's hashStorage), newest last.
    compaction_hashes: Arc<Mutex<VecDeque<CompactionHash>>>,
}

/// The store's hash at a compaction revision, taken by its physical compaction under the
/// compaction point before it.
#[derive(Debug, Clone, Copy)]
struct CompactionHash {
    revision: i64,
    compacted: i64,
    hash: u32,
}

/// How many compaction hashes are kept (etcd keeps 10).
const COMPACTION_HASHES: usize = 10;

/// A physical compaction to run: at `revision`, after `previous`, keeping `keep`; `previous` is
/// unknown for one resumed at start, which then takes no hash.
struct CompactionJob {
    revision: i64,
    previous: Option<i64>,
    keep: HashSet<Revision>,
}

/// How far physical compaction has got.
#[derive(Debug, Clone, Copy, Default)]
struct CompactorState {
    /// Every revision below this compaction point is off the disk.
    finished: i64,
    /// The compaction point whose last attempt failed, while it is being retried.
    failing: Option<i64>,
}

/// How soon a failed compaction is tried again, doubling up to the maximum.
const COMPACTION_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const COMPACTION_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// The background thread that deletes compacted revisions. Dropping it waits for the thread,
/// so the engine (and its directory lock) is released when the store is.
struct Compactor {
    jobs: Option<mpsc::Sender<CompactionJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    fn send(&self, job: CompactionJob) {
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
        Self::open_with(engine, CompactionPacing::default())
    }

    /// [`MvccStore::open`] with the compactor paced by `pacing`.
    pub fn open_with(
        engine: Arc<Engine>,
        pacing: CompactionPacing,
    ) -> storage::Result<Arc<MvccStore>> {
        let (state, finished, leased) = load_state(&engine)?;
        let (done_tx, done_rx) = watch::channel(CompactorState {
            finished,
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel();
        let compactor_engine = engine.clone();
        let compaction_hashes = Arc::new(Mutex::new(VecDeque::new()));
        let hashes = compaction_hashes.clone();
        let thread = std::thread::Builder::new()
            .name("mvcc-compactor".into())
            .spawn(move || run_compactor(&compactor_engine, pacing, rx, done_tx, &hashes))
            .map_err(|e| storage::StorageError::Io(engine.data_dir().into(), e))?;
        let compactor = Compactor {
            jobs: Some(tx),
            thread: Some(thread),
        };
        let store = MvccStore {
            engine,
            state: RwLock::new(state),
            writing: Mutex::new(()),
            compactor,
            compacted: done_rx,
            restored_leases: Mutex::new(leased),
            compaction_hashes,
        };
        store.resume_compaction(finished);
        Ok(Arc::new(store))
    }

    /// Replaces the in-memory state with what the engine now holds (after a snapshot install).
    pub fn reload(&self) -> storage::Result<()> {
        let _no_writer = self.writing.lock();
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
            self.compactor.send(CompactionJob {
                revision: at,
                previous: None,
                keep,
            });
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
        metrics().mvcc.range.inc();
        let state = self.state.read();
        let (entries, count, rev) =
            resolve(&state.index, state.compact, state.current, range, opts)?;
        if let Some(answered) = from_index(&entries, count, rev, opts) {
            return Ok(answered);
        }
        let snapshot = self.engine.snapshot();
        drop(state);
        let kvs = fetch(&entries, |keys| snapshot.multi_get(Cf::Kv, keys))?;
        Ok(RangeResult { kvs, count, rev })
    }

    /// A consistent view at the current revision for a read-only transaction of several
    /// operations. It holds no lock between them; see [`ReadTxn::overtaken`].
    pub fn read(&self) -> ReadTxn<'_> {
        let state = self.state.read();
        ReadTxn {
            store: self,
            rev: state.current,
            compact: state.compact,
            snapshot: self.engine.snapshot(),
            overtaken: std::cell::Cell::new(false),
        }
    }

    /// The one writer, for applying one batch of writes; `keep_prev` records each changed key's
    /// previous value in the returned changes.
    pub fn writer(&self, keep_prev: bool) -> Writer<'_> {
        let exclusive = self.writing.lock();
        let (current, compact) = {
            let state = self.state.read();
            (state.current, state.compact)
        };
        Writer {
            store: self,
            _exclusive: exclusive,
            current,
            compact,
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
            .scan_once(
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

    /// etcd's HashKV (3.6's `hashByRev`): the hash of the stored revisions up to `rev` (0 =
    /// current; a negative one hashes nothing) under the current compaction point. A compaction
    /// revision is answered from the hash its physical compaction took, with the compaction
    /// point before it, as etcd answers it. Returns (hash, revision hashed, compaction revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), EtcdError> {
        if rev > 0 {
            let taken = self.compaction_hashes.lock();
            if let Some(h) = taken.iter().find(|h| h.revision == rev) {
                return Ok((h.hash, rev, h.compacted));
            }
        }
        let state = self.state.read();
        let (current, compacted) = (state.current, state.compact);
        if rev > 0 && rev < compacted {
            return Err(EtcdError::Compacted);
        }
        if rev > current {
            return Err(EtcdError::FutureRevision);
        }
        let rev = if rev == 0 { current } else { rev };
        if rev < 0 {
            return Ok((
                KvHasher::new(compacted, rev, &HashSet::new()).finish(),
                rev,
                compacted,
            ));
        }
        let keep = state.index.keep(rev);
        let snapshot = self.engine.snapshot();
        drop(state);
        let mut hasher = KvHasher::new(compacted, rev, &keep);
        snapshot
            .scan_once(
                Cf::Kv,
                &[],
                Some(&Revision::lower_bound_key(rev + 1)),
                |k, v| {
                    hasher.write(k, v);
                    true
                },
            )
            .map_err(|_| EtcdError::Corrupt)?;
        Ok((hasher.finish(), rev, compacted))
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

    /// Resolves once physical compaction up to `rev` has finished, or fails once an attempt
    /// at it has failed (the compactor goes on retrying it).
    pub async fn wait_compacted(&self, rev: i64) -> Result<(), EtcdError> {
        let mut rx = self.compacted.clone();
        let state = rx
            .wait_for(|s| s.finished >= rev || s.failing.is_some_and(|f| f >= rev))
            .await
            .map(|s| *s)
            .map_err(|_| EtcdError::Stopped)?;
        if state.finished >= rev {
            Ok(())
        } else {
            Err(EtcdError::CompactionFailed)
        }
    }

    /// Physical compaction attempts that failed since the start.
    /// Number of live keys at the current revision.
    /// Keys in the index: the live ones and the deleted ones whose history no compaction has
    /// dropped yet (counting only live ones would take a walk of the whole index).
    pub fn key_count(&self) -> usize {
        self.state.read().index.len()
    }
}

/// The store's revision, when `key` and `value` are the metadata record that holds it.
pub fn current_revision_record(key: &[u8], value: &[u8]) -> Option<i64> {
    (key == META_CURRENT_REV).then(|| Some(i64::from_be_bytes(value.try_into().ok()?)))?
}

/// The compaction point among a store's metadata records, if the store was ever compacted: the
/// scheduled revision, and the finished one once its physical compaction has completed.
pub fn compaction_point(
    meta: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> Option<(i64, Option<i64>)> {
    let read = |key: &[u8]| {
        Some(i64::from_be_bytes(
            meta.get(key)?.as_slice().try_into().ok()?,
        ))
    };
    Some((read(META_SCHEDULED_COMPACT)?, read(META_FINISHED_COMPACT)))
}

/// The metadata records of a store restored from another's revisions (etcd's snapshot): its
/// current revision and its compaction point (scheduled and finished), when it has one.
pub fn restored_revision_records(
    current: i64,
    compacted: Option<(i64, i64)>,
) -> Vec<(&'static [u8], Vec<u8>)> {
    let mut records = vec![(META_CURRENT_REV, current.to_be_bytes().to_vec())];
    if let Some((scheduled, finished)) = compacted {
        records.push((META_SCHEDULED_COMPACT, scheduled.to_be_bytes().to_vec()));
        records.push((META_FINISHED_COMPACT, finished.to_be_bytes().to_vec()));
    }
    records
}

/// The records that etcdutl's `snapshot restore --bump-revision --mark-compacted` adds to a
/// restored store to move it to `revision`, marked compacted. The store's revision is set, and
/// compaction is scheduled there. The finished point is left alone, so the member compacts
/// when it first starts, as etcd does. etcdutl also writes an empty entry at the revision in the
/// key history. HashKV hashes that entry, so it is written here too. (It reads as the empty key,
/// which no request can name.)
pub fn bumped_revision_records(revision: i64) -> [(Cf, Vec<u8>, Vec<u8>); 3] {
    let at = revision.to_be_bytes().to_vec();
    [
        (Cf::Kv, Revision::new(revision, 0).to_key(false), Vec::new()),
        (Cf::Meta, META_CURRENT_REV.to_vec(), at.clone()),
        (Cf::Meta, META_SCHEDULED_COMPACT.to_vec(), at),
    ]
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
    engine.scan_once(Cf::Kv, &[], None, |k, v| {
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

/// Looks up revisions for a range at the requested revision with etcd's revision checks, for a
/// view at revision `current` with compaction point `compact`.
fn resolve(
    index: &TreeIndex,
    compact: i64,
    current: i64,
    range: &KeyRange,
    opts: RangeOptions,
) -> Result<Resolved, EtcdError> {
    if opts.rev > current {
        return Err(EtcdError::FutureRevision);
    }
    let at = if opts.rev <= 0 { current } else { opts.rev };
    if at < compact {
        return Err(EtcdError::Compacted);
    }
    let limit = if opts.count_only { 1 } else { opts.limit };
    let (entries, count) = if opts.skip_total && !opts.count_only && limit > 0 {
        let entries = index.first(range, at, limit);
        let found = entries.len();
        (entries, found)
    } else {
        index.range(range, at, limit)
    };
    Ok((entries, count, current))
}

/// The range result that needs no value read, if `opts` asks for one: the count alone, or
/// each key's revisions and version.
fn from_index(
    entries: &[(Vec<u8>, KeyAt)],
    count: usize,
    rev: i64,
    opts: RangeOptions,
) -> Option<RangeResult> {
    let kvs = if opts.count_only {
        Vec::new()
    } else if opts.index_only {
        entries
            .iter()
            .map(|(key, at)| KeyValue {
                key: key.clone(),
                create_revision: at.created.main,
                mod_revision: at.modified.main,
                version: at.version,
                ..KeyValue::default()
            })
            .collect()
    } else {
        return None;
    };
    Some(RangeResult { kvs, count, rev })
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
    store: &'a MvccStore,
    rev: i64,
    compact: i64,
    snapshot: Snapshot<'a>,
    overtaken: std::cell::Cell<bool>,
}

impl ReadTxn<'_> {
    /// Whether a compaction past this view's revision was applied while it read, failing a read
    /// with `Compacted` that etcd (whose compaction waits for readers) would have served. The
    /// transaction is then run again on a fresh view: it changes nothing, so any later
    /// revision answers it as linearizably.
    pub fn overtaken(&self) -> bool {
        self.overtaken.get()
    }
}

impl ReadView for ReadTxn<'_> {
    fn rev(&self) -> i64 {
        self.rev
    }

    fn compact_rev(&self) -> i64 {
        self.compact
    }

    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, EtcdError> {
        metrics().mvcc.range.inc();
        let resolved = {
            let state = self.store.state.read();
            let resolved = resolve(&state.index, state.compact, self.rev, range, opts);
            if matches!(resolved, Err(EtcdError::Compacted)) && state.compact > self.compact {
                self.overtaken.set(true);
            }
            resolved
        };
        let (entries, count, rev) = resolved?;
        if let Some(answered) = from_index(&entries, count, rev, opts) {
            return Ok(answered);
        }
        let kvs = fetch(&entries, |keys| self.snapshot.multi_get(Cf::Kv, keys))?;
        Ok(RangeResult { kvs, count, rev })
    }
}

/// Applies one batch of write transactions and commits them to the engine in one write.
pub struct Writer<'a> {
    store: &'a MvccStore,
    _exclusive: MutexGuard<'a, ()>,
    /// The revision of the last transaction of this batch so far (published at commit).
    current: i64,
    /// The compaction point as of this batch (published at commit).
    compact: i64,
    batch: WriteBatch<'a>,
    /// Values written by this batch, not yet in the engine.
    written: HashMap<Revision, KeyValue>,
    changes: Vec<Change>,
    /// A compaction this batch applies, at its commit.
    compaction: Option<i64>,
    keep_prev: bool,
}

impl<'a> Writer<'a> {
    /// Starts a write transaction; all its changes share one main revision.
    pub fn txn(&mut self) -> TxnWrite<'_, 'a> {
        let begin = self.current;
        TxnWrite {
            writer: self,
            begin,
            changes: 0,
        }
    }

    /// Schedules compaction at `rev`: the index forgets history when this batch commits (readers
    /// may still be reading below `rev` until then), the compactor deletes it from disk after.
    pub fn compact(&mut self, rev: i64) -> Result<(), EtcdError> {
        if rev <= self.compact {
            return Err(EtcdError::Compacted);
        }
        if rev > self.current {
            return Err(EtcdError::FutureRevision);
        }
        self.compact = rev;
        self.batch
            .put(Cf::Meta, META_SCHEDULED_COMPACT, &rev.to_be_bytes());
        self.compaction = Some(rev);
        Ok(())
    }

    pub fn current_revision(&self) -> i64 {
        self.current
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

    /// Writes everything to the engine, then publishes the batch to readers; returns the
    /// changes in order.
    pub fn commit(mut self) -> storage::Result<Vec<Change>> {
        self.batch
            .put(Cf::Meta, META_CURRENT_REV, &self.current.to_be_bytes());
        self.store.engine.write(self.batch, false)?;
        let job = {
            let mut state = self.store.state.write();
            state.current = self.current;
            self.compaction.map(|rev| CompactionJob {
                revision: rev,
                previous: Some(std::mem::replace(&mut state.compact, rev)),
                keep: state.index.compact(rev),
            })
        };
        if let Some(job) = job {
            self.store.compactor.send(job);
        }
        Ok(self.changes)
    }

    /// The revision `rev` of a key, as this batch sees it. `superseded`: the batch replaces
    /// it, so after this read (for prev_kv) nothing but a read of history asks for it again,
    /// and it is not worth a place in the block cache.
    fn value_at(&self, rev: Revision, superseded: bool) -> Result<KeyValue, EtcdError> {
        if let Some(kv) = self.written.get(&rev) {
            return Ok(kv.clone());
        }
        let key = rev.to_key(false);
        let engine = &self.store.engine;
        let raw = if superseded {
            engine.get_once(Cf::Kv, &key)
        } else {
            engine.get(Cf::Kv, &key)
        };
        let raw = raw.map_err(|e| {
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
        metrics().mvcc.put.inc();
        let rev = self.next_revision();
        let previous = self.writer.store.state.write().index.put(key, rev);
        let prev = self.previous_value(previous.map(|p| p.modified));
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
        rev.and_then(|r| self.writer.value_at(r, true).ok())
    }

    /// Deletes every live key in `range`; returns how many and the revision to report.
    pub fn delete_range(&mut self, range: &KeyRange) -> (i64, i64) {
        metrics().mvcc.delete.inc();
        let (keys, _) = self
            .writer
            .store
            .state
            .read()
            .index
            .range(range, self.read_rev(), 0);
        let mut tombstones = Vec::with_capacity(keys.len());
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
            tombstones.push((key, rev));
            self.writer.changes.push(Change {
                kv,
                deleted: true,
                prev,
            });
        }
        let mut state = self.writer.store.state.write();
        for (key, rev) in tombstones {
            state.index.tombstone(key, rev);
        }
        drop(state);
        (keys.len() as i64, self.read_rev())
    }
}

impl ReadView for TxnWrite<'_, '_> {
    fn rev(&self) -> i64 {
        self.begin
    }

    fn compact_rev(&self) -> i64 {
        self.writer.compact
    }

    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, EtcdError> {
        metrics().mvcc.range.inc();
        let resolved = resolve(
            &self.writer.store.state.read().index,
            self.writer.compact,
            self.read_rev(),
            range,
            opts,
        );
        let (entries, count, rev) = resolved?;
        if let Some(answered) = from_index(&entries, count, rev, opts) {
            return Ok(answered);
        }
        let kvs = entries
            .iter()
            .map(|(_, at)| self.writer.value_at(at.modified, false))
            .collect::<Result<_, _>>()?;
        Ok(RangeResult { kvs, count, rev })
    }
}

impl Drop for TxnWrite<'_, '_> {
    fn drop(&mut self) {
        if self.changes > 0 {
            self.writer.current = self.begin + 1;
        }
    }
}

fn run_compactor(
    engine: &Engine,
    pacing: CompactionPacing,
    jobs: mpsc::Receiver<CompactionJob>,
    state: watch::Sender<CompactorState>,
    hashes: &Mutex<VecDeque<CompactionHash>>,
) {
    for job in jobs {
        let rev = job.revision;
        // A failure is reported to the waiting clients and to the metric, and the job is
        // retried: a compactor that stopped would leave every later compaction undone.
        let mut retry = COMPACTION_RETRY;
        let mut first_attempt = true;
        let hash = loop {
            match compact(engine, &job, pacing) {
                Ok(hash) => break hash.filter(|_| first_attempt),
                Err(e) => {
                    tracing::error!(error = %e, rev, retry_in = ?retry, "physical compaction failed");
                    state.send_modify(|s| s.failing = Some(rev));
                    metrics().mvcc.compaction_failures.inc();
                    std::thread::sleep(retry);
                    retry = (retry * 2).min(COMPACTION_RETRY_MAX);
                    // Revisions the failed attempt deleted are no longer there to hash.
                    first_attempt = false;
                }
            }
        };
        if let (Some(hash), Some(compacted)) = (hash, job.previous) {
            let mut hashes = hashes.lock();
            hashes.push_back(CompactionHash {
                revision: rev,
                compacted,
                hash,
            });
            if hashes.len() > COMPACTION_HASHES {
                hashes.pop_front();
            }
        }
        state.send_modify(|s| {
            s.finished = rev;
            s.failing = None;
        });
        tracing::info!(rev, "physical compaction finished");
    }
}

/// Deletes the revisions below the job's revision that it does not keep, in batches, then has
/// RocksDB rewrite the range so the space is really returned. Returns the store's hash at the
/// compaction revision, taken on the way (as etcd's compaction takes it), when the job knows the
/// compaction point before it.
fn compact(
    engine: &Engine,
    job: &CompactionJob,
    pacing: CompactionPacing,
) -> storage::Result<Option<u32>> {
    let batch_limit = pacing.batch_limit.max(1);
    let rev = job.revision;
    let keep = &job.keep;
    let end = Revision::lower_bound_key(rev + 1);
    let mut hasher = job
        .previous
        .map(|previous| KvHasher::new(previous, rev, keep));
    let mut from = Vec::new();
    loop {
        let mut doomed = Vec::new();
        let mut last = None;
        engine.scan_once(Cf::Kv, &from, Some(&end), |k, v| {
            last = Some(k.to_vec());
            if let Some(hasher) = &mut hasher {
                hasher.write(k, v);
            }
            if Revision::from_key(k).is_some_and(|(r, _)| !keep.contains(&r)) {
                doomed.push(k.to_vec());
            }
            doomed.len() < batch_limit
        })?;
        let mut batch = engine.batch();
        for k in &doomed {
            batch.delete(Cf::Kv, k);
        }
        let finished = doomed.len() < batch_limit;
        if finished {
            batch.put(Cf::Meta, META_FINISHED_COMPACT, &rev.to_be_bytes());
        }
        fail::fail_point!("mvcc::compactor::write", |_| Err(
            storage::StorageError::Corrupt("injected compaction failure".into())
        ));
        engine.write(batch, false)?;
        metrics()
            .mvcc
            .db_compaction_keys
            .inc_by(doomed.len() as u64);
        if finished {
            break;
        }
        fail::fail_point!("mvcc::compactor::between_batches");
        std::thread::sleep(pacing.sleep);
        from = last
            .map(|mut k| {
                k.push(0);
                k
            })
            .unwrap_or_default();
    }
    engine.compact_range(Cf::Kv, None, Some(&end));
    Ok(hasher.map(KvHasher::finish))
}
