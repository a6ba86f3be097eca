//! The storage engine: the only module that knows RocksDB.
//!
//! Raft's vote and log positions, the MVCC revisions and the state-machine metadata live in one
//! RocksDB instance as separate column families. State-machine writes never fsync: the Raft log
//! (its own files since data dir format 4, in [`Engine::raft_log_dir`]) can always re-apply
//! them, and it is purged only up to what a [`Engine::sync_wal`] has made durable.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fs2::FileExt;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    Options, ReadOptions, WriteOptions, DB,
};

use crate::metrics::metrics;

/// Column families. Names are part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// Raft log entries keyed by big-endian index, in data dirs of formats 1 to 3; since
    /// format 4 the log has its own files, and this is read only to move it there.
    RaftLog,
    /// Vote, committed log id, last purged log id.
    RaftState,
    /// MVCC revisions: revision key -> mvccpb.KeyValue.
    Kv,
    /// State-machine metadata written atomically with each applied batch.
    Meta,
    /// Leases: id -> ttl.
    Lease,
}

impl Cf {
    const ALL: [Cf; 5] = [Cf::RaftLog, Cf::RaftState, Cf::Kv, Cf::Meta, Cf::Lease];
    /// What etcd keeps in its backend (bbolt) file, whose size its quota and db size count;
    /// the Raft log and state are its WAL, which they do not.
    const BACKEND: [Cf; 3] = [Cf::Kv, Cf::Meta, Cf::Lease];

    /// How large this column family's memtable grows before it is flushed to a table file.
    /// Each memtable is memory the member holds until then, so each is sized by what reads it.
    fn write_buffer_size(self) -> usize {
        match self {
            // Revisions are read back soon after they are written (prev_kv for watchers and
            // responses, kube-apiserver's reads of what it just updated): the memtable is their
            // cache. 16 MiB rather than 32: under the Kubernetes benchmark a member's RSS
            // averaged 53.5 MiB instead of 59.2 (1 member; 150.8 MiB instead of 167.3 for 3),
            // with puts at 50 clients within the noise (18,127-18,874 against 17,128-19,287/s;
            // benches/results/2026-12-07-segment-log/).
            Cf::Kv => 16 << 20,
            // A few keys, overwritten at every append or apply: without a small memtable they
            // hold megabytes of superseded copies (thousands of entries per minute under
            // Kubernetes) until the next flush.
            Cf::RaftState | Cf::Meta | Cf::Lease => 1 << 20,
            // Not written since data dir format 4.
            Cf::RaftLog => 1 << 20,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::Kv => "kv",
            Cf::Meta => "meta",
            Cf::Lease => "lease",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("data dir {0} is already in use by another oxcd process (lock {1} is held)")]
    Locked(PathBuf, PathBuf),
    #[error("data dir {data_dir} keeps its write-ahead log in {recorded}; start with --wal-dir={recorded} (was given {given})")]
    WalDirMismatch {
        data_dir: PathBuf,
        recorded: String,
        given: String,
    },
    #[error("data dir {data_dir} has format version {found}, newer than this oxcd {build} understands (format version {DATA_DIR_FORMAT}); start it with the oxcd release that wrote it")]
    NewerFormat {
        data_dir: PathBuf,
        found: u64,
        build: &'static str,
    },
    #[error("cannot create or open data dir {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("storage: {0}")]
    Engine(#[from] rocksdb::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// A key and its value as stored.
pub type Entry = (Box<[u8]>, Box<[u8]>);

const LOCK_FILE: &str = "oxcd.lock";
const DB_DIR: &str = "db";
/// The Raft log's directory, inside the data dir or the --wal-dir.
const RAFT_LOG_DIR: &str = "raft-log";
/// The format of the data dir this build writes and reads, recorded in `raft_state` under
/// [`FORMAT_KEY`] when the data dir is created. A release that changes how anything is stored
/// raises it (and reads the older formats, or converts them at start); an older build refuses
/// a newer data dir instead of misreading it. Format 3 stores Raft's records and a restored
/// data dir's membership as oxcd's own protobuf messages (`raft::record`); format 2 kept that
/// membership as bincode of oxcd's `Member`s; format 1 had bincode of openraft 0.9's layout.
/// Format 4 keeps the Raft log in its own files (`raft::segment_log`) instead of the `raft_log`
/// column family, which only the conversion from format 3 still reads.
pub const DATA_DIR_FORMAT: u64 = 4;
/// Data dirs of the releases before the format was recorded have format 1 and get the record
/// when this build opens them.
pub const FORMAT_KEY: &[u8] = b"format_version";
/// Names the directory of the write-ahead log when it is not inside the data dir (--wal-dir):
/// starting without it would open the store without its log.
const WAL_DIR_FILE: &str = "wal_dir";

pub struct Engine {
    db: DB,
    dir: PathBuf,
    wal_dir: Option<PathBuf>,
    /// False with --unsafe-no-fsync: durable writes and WAL syncs return without an fsync.
    fsync: bool,
    /// The largest [`Engine::data_size`] seen since the last defragment: etcd's backend file
    /// never shrinks until then, and neither does what its quota and Status measure.
    size_high_water: AtomicU64,
    /// What [`Engine::holds_writes_back`] last found, and when (see there).
    held_back: std::sync::atomic::AtomicBool,
    held_back_checked: parking_lot::Mutex<Option<std::time::Instant>>,
    // Held for the process lifetime: the flock is what keeps a second process out.
    _lock: File,
}

/// RocksDB's memory, in bytes ([`Engine::memory_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Memtables, active and immutable ones not yet flushed or still pinned by a reader.
    pub memtables: u64,
    /// Data, index and filter blocks in the shared block cache.
    pub block_cache: u64,
    /// Open table files' readers (their index and filter blocks held outside the cache).
    pub table_readers: u64,
}

impl MemoryUsage {
    /// Each part under the name metrics report it by.
    pub fn parts(&self) -> [(&'static str, u64); 3] {
        [
            ("rocksdb_memtables", self.memtables),
            ("rocksdb_block_cache", self.block_cache),
            ("rocksdb_table_readers", self.table_readers),
        ]
    }
}

/// How long [`Engine::holds_writes_back`] trusts its last look.
const HELD_BACK_RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// How [`Engine::open_with`] opens a data dir.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions<'a> {
    /// Where the write-ahead log lives (etcd's --wal-dir); `None`: inside the data dir.
    pub wal_dir: Option<&'a Path>,
    /// Whether durable writes are fsynced; false only with --unsafe-no-fsync.
    pub fsync: bool,
}

impl Default for OpenOptions<'_> {
    fn default() -> Self {
        OpenOptions {
            wal_dir: None,
            fsync: true,
        }
    }
}

impl Engine {
    /// Opens (creating if needed) the store under `data_dir`, refusing a directory another
    /// process holds.
    pub fn open(data_dir: &Path) -> Result<Arc<Engine>> {
        Self::open_with(data_dir, OpenOptions::default())
    }

    /// [`Engine::open`] with the write-ahead log (the Raft log's durability: every fsync of an
    /// append) in `options.wal_dir` when given, as etcd's --wal-dir puts its WAL on a dedicated
    /// device. A data dir keeps the WAL directory it was created with.
    pub fn open_with(data_dir: &Path, options: OpenOptions<'_>) -> Result<Arc<Engine>> {
        let OpenOptions { wal_dir, fsync } = options;
        std::fs::create_dir_all(data_dir).map_err(|e| StorageError::Io(data_dir.into(), e))?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StorageError::Io(data_dir.into(), e))?;
        if lock.try_lock_exclusive().is_err() {
            return Err(StorageError::Locked(data_dir.into(), lock_path));
        }
        let wal_dir = check_wal_dir(data_dir, wal_dir)?;

        let cache = Cache::new_lru_cache(64 << 20);
        // The memtables replayed from the WAL at open stay memtables (and their WAL stays until
        // they are flushed as usual) instead of being written out as tables before the member
        // can serve: 0.13 of a 0.3 s open after 100,000 puts. The Rust binding has no setter;
        // the options are built from the string first, since a copy made later would not keep
        // what the binding ties to the originals.
        let mut db_opts =
            Options::default().get_options_from_string("avoid_flush_during_recovery=true")?;
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(256 << 20);
        // Reusing old WAL files overwrites blocks that already exist, so a durable write (a
        // vote, the sync at a snapshot point) does not also have to commit a file-size change
        // (on ext4 that is about 0.18 ms instead of 0.6 ms per fsync here).
        db_opts.set_recycle_log_file_num(4);
        // Flushes and compactions write tables of 32 MiB and more. Synced only at their end, each
        // put that much in front of the next Raft append's fsync at once, and the whole member
        // stalled for tens of ms: with a sync every MiB written, transactions from 50 clients had
        // 114–169 requests over 15 ms in 10 s instead of 606–659 (benches/results/README.md,
        // 2026-12-07, "the stalls").
        db_opts.set_bytes_per_sync(1 << 20);
        if let Some(wal_dir) = &wal_dir {
            db_opts.set_wal_dir(wal_dir);
        }
        let cfs = Cf::ALL.map(|cf| -> Result<ColumnFamilyDescriptor> {
            // Once no snapshot needs their sequence numbers, RocksDB rewrites the tables of the
            // last level just to zero them, and a table just flushed is often of the last level:
            // every Raft log table of 32 MiB was written twice, seconds before the purge
            // dropped it. An hour on, what is left of a table is rewritten as before.
            let mut o = Options::default()
                .get_options_from_string("bottommost_file_compaction_delay=3600")?;
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            if cf == Cf::Kv {
                // Reads are point lookups by revision.
                table.set_bloom_filter(10.0, false);
            }
            o.set_block_based_table_factory(&table);
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            o.set_write_buffer_size(cf.write_buffer_size());
            Ok(ColumnFamilyDescriptor::new(cf.name(), o))
        });
        let cfs = cfs.into_iter().collect::<Result<Vec<_>>>()?;
        let db_path = data_dir.join(DB_DIR);
        let db = DB::open_cf_descriptors(&db_opts, &db_path, cfs)?;
        if fsync {
            let wal_files = wal_dir.as_deref().unwrap_or(&db_path);
            sync_recovered_wals(wal_files).map_err(|e| StorageError::Io(wal_files.into(), e))?;
        }
        check_format(&db, data_dir)?;
        // RocksDB makes its own files durable inside `db/`, but the entries of `db/` and the lock
        // file in the data dir, and of a new data dir in its parent, are ours: without this a
        // power cut right after the first start loses the whole store.
        sync_dir_and_parent(data_dir).map_err(|e| StorageError::Io(data_dir.into(), e))?;
        Ok(Arc::new(Engine {
            db,
            dir: data_dir.into(),
            wal_dir,
            fsync,
            size_high_water: AtomicU64::new(0),
            held_back: std::sync::atomic::AtomicBool::new(false),
            held_back_checked: parking_lot::Mutex::new(None),
            _lock: lock,
        }))
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("column family is created at open")
    }

    /// The format of the data dir (see [`DATA_DIR_FORMAT`]).
    pub fn format_version(&self) -> Result<u64> {
        let stamp = self.get(Cf::RaftState, FORMAT_KEY)?.unwrap_or_default();
        let stamp = stamp.as_slice().try_into().map_err(|_| {
            StorageError::Corrupt(format!("data dir format version {stamp:?} is not 8 bytes"))
        })?;
        Ok(u64::from_be_bytes(stamp))
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// [`Engine::get`] of a value read once and then not again soon (the revision a write
    /// supersedes, read for its watchers' prev_kv): its block does not enter the block cache.
    pub fn get_once(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        Ok(self.db.get_cf_opt(self.cf(cf), key, &opts)?)
    }

    pub fn batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            engine: self,
            inner: rocksdb::WriteBatch::default(),
        }
    }

    /// Writes a batch atomically; `durable` makes it survive power loss before returning.
    pub fn write(&self, batch: WriteBatch<'_>, durable: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(durable && self.fsync);
        self.db.write_opt(batch.inner, &opts)?;
        Ok(())
    }

    /// Whether RocksDB is holding writes back (stopped, or slowed down while flushes and
    /// compactions catch up): a write may then block for long. Asked of RocksDB at most every
    /// [`HELD_BACK_RECHECK`] (its properties take the DB mutex), by whichever caller comes
    /// first; the others meanwhile read the last answer.
    pub fn holds_writes_back(&self) -> bool {
        let now = std::time::Instant::now();
        if let Some(mut checked) = self.held_back_checked.try_lock() {
            if checked.is_none_or(|at| now.duration_since(at) >= HELD_BACK_RECHECK) {
                *checked = Some(now);
                let value =
                    |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
                let held = value("rocksdb.is-write-stopped") != 0
                    || value("rocksdb.actual-delayed-write-rate") != 0;
                self.held_back.store(held, Ordering::Relaxed);
            }
        }
        self.held_back.load(Ordering::Relaxed)
    }

    /// Where the Raft log keeps its files: with the write-ahead log, on the --wal-dir's disk
    /// when there is one.
    pub fn raft_log_dir(&self) -> PathBuf {
        self.wal_dir
            .as_ref()
            .unwrap_or(&self.dir)
            .join(RAFT_LOG_DIR)
    }

    /// False with --unsafe-no-fsync.
    pub fn fsyncs(&self) -> bool {
        self.fsync
    }

    /// Makes every write issued so far durable (fsyncs the shared write-ahead log). Without
    /// fsync the log is still handed to the OS, so a crash of the process alone loses nothing.
    pub fn sync_wal(&self) -> Result<()> {
        Ok(self.db.flush_wal(self.fsync)?)
    }

    /// Visits keys in `[from, to)` (to = None: unbounded) in order until `f` returns false.
    pub fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.scan_at(None, cf, from, to, true, f)
    }

    /// [`Engine::scan`] for one pass over data that will not be read again soon (compaction's
    /// walk over history, the index rebuild at start-up): the blocks it reads do not enter the
    /// block cache, so they do not push out what clients read or keep 64 MiB of history resident.
    pub fn scan_once(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.scan_at(None, cf, from, to, false, f)
    }

    /// [`Engine::scan`], optionally as of a snapshot.
    fn scan_at(
        &self,
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, DB>>,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        fill_cache: bool,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut opts = ReadOptions::default();
        opts.fill_cache(fill_cache);
        if let Some(snapshot) = snapshot {
            opts.set_snapshot(snapshot);
        }
        if let Some(to) = to {
            opts.set_iterate_upper_bound(to.to_vec());
        }
        let iter = self.db.iterator_cf_opt(
            self.cf(cf),
            opts,
            IteratorMode::From(from, Direction::Forward),
        );
        visit(iter, f)
    }

    /// The greatest key of a column family with its value.
    pub fn last(&self, cf: Cf) -> Result<Option<Entry>> {
        match self.db.iterator_cf(self.cf(cf), IteratorMode::End).next() {
            Some(item) => Ok(Some(item?)),
            None => Ok(None),
        }
    }

    /// A consistent point-in-time view for readers that must not see later deletions.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            engine: self,
            inner: self.db.snapshot(),
        }
    }

    /// crc32c over every key and value of `cfs` at one point in time: equal on members that
    /// applied the same entries (and finished the same compactions).
    pub fn checksum(&self, cfs: &[Cf]) -> Result<u32> {
        let snapshot = self.snapshot();
        let mut crc = 0;
        for cf in cfs {
            snapshot.scan_once(*cf, &[], None, |k, v| {
                crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, k), v);
                true
            })?;
        }
        Ok(crc)
    }

    /// Rewrites the key range so deleted data really leaves the disk.
    pub fn compact_range(&self, cf: Cf, from: Option<&[u8]>, to: Option<&[u8]>) {
        self.db.compact_range_cf(self.cf(cf), from, to);
    }

    /// Rewrites every column family: etcd's defragment, reclaiming space held by deleted data.
    pub fn compact_all(&self) {
        let disk = &metrics().disk;
        disk.defrag_inflight.set(1);
        let _timer = disk.backend_defrag.start_timer();
        for cf in Cf::ALL {
            self.compact_range(cf, None, None);
            fail::fail_point!("storage::defrag::after_family");
        }
        self.size_high_water.store(0, Ordering::Relaxed);
        disk.defrag_inflight.set(0);
    }

    /// Bytes of stored data: table files plus memtables of the state machine's column families,
    /// like etcd's backend file size. The Raft log and RocksDB's write-ahead log are etcd's WAL,
    /// which etcd does not count either (a burst of writes would otherwise count twice until
    /// the log is purged and compacted).
    ///
    /// Like that file it only grows until a defragment: a memtable flushed into a compressed
    /// table file, or a RocksDB compaction, would otherwise shrink it at moments no client can
    /// predict (and lift a quota refusal that etcd keeps until a defragment).
    pub fn data_size(&self) -> u64 {
        let now = self.sum_of(
            &Cf::BACKEND,
            &[
                "rocksdb.total-sst-files-size",
                "rocksdb.cur-size-all-mem-tables",
            ],
        );
        self.size_high_water
            .fetch_max(now, Ordering::Relaxed)
            .max(now)
    }

    /// Estimated bytes of live data, excluding garbage awaiting compaction (etcd's size in
    /// use). RocksDB's estimate covers table files only; data still in memtables is counted as
    /// live, so that a store that has not flushed yet is not reported empty.
    pub fn live_data_size(&self) -> u64 {
        self.sum_of(
            &Cf::BACKEND,
            &[
                "rocksdb.estimate-live-data-size",
                "rocksdb.cur-size-all-mem-tables",
            ],
        )
        .min(self.data_size())
    }

    /// What RocksDB holds in memory now, by what holds it.
    pub fn memory_usage(&self) -> MemoryUsage {
        MemoryUsage {
            memtables: self.sum_of(&Cf::ALL, &["rocksdb.size-all-mem-tables"]),
            // One cache serves all of ours, and each reports all of it (the unused default
            // column family has a cache of its own).
            block_cache: self
                .db
                .property_int_value_cf(self.cf(Cf::Kv), "rocksdb.block-cache-usage")
                .ok()
                .flatten()
                .unwrap_or(0),
            table_readers: self.sum_of(&Cf::ALL, &["rocksdb.estimate-table-readers-mem"]),
        }
    }

    /// The sum of integer properties over column families `cfs`.
    fn sum_of(&self, cfs: &[Cf], properties: &[&str]) -> u64 {
        cfs.iter()
            .flat_map(|cf| properties.iter().map(move |p| (*cf, *p)))
            .filter_map(|(cf, p)| self.db.property_int_value_cf(self.cf(cf), p).ok().flatten())
            .sum()
    }
}

/// Makes the entries of `dir` durable (a new file or directory in it, a rename into it).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Fsyncs the write-ahead log files RocksDB found at open. A member killed (not powered off)
/// leaves the writes it never synced in the page cache; RocksDB replays them into memtables
/// that it keeps (`avoid_flush_during_recovery`) along with those files, and writes on to a new
/// one, whose syncs (a vote, a snapshot point) do not cover the old files. A power cut after such
/// a sync kept the later writes and lost the earlier ones: in a follower's state machine, the
/// applied position and the revisions after a gap (oxcd-jepsen's append workload, every
/// nemesis; `tests/power_loss.rs`).
fn sync_recovered_wals(dir: &Path) -> std::io::Result<()> {
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        if path.extension().is_some_and(|ext| ext == "log") {
            File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// [`sync_dir`] of `dir` and of its parent, which holds the entry of `dir` itself.
pub fn sync_dir_and_parent(dir: &Path) -> std::io::Result<()> {
    sync_dir(dir)?;
    match dir.canonicalize()?.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Refuses a data dir of a newer format than [`DATA_DIR_FORMAT`]; records the format of one
/// that has no record: [`DATA_DIR_FORMAT`] for a new one, 1 for one of a release before the
/// record existed (its `raft_state` holds the member's identity and vote). Converting an older
/// format is up to the layer that owns the records (`raft::legacy`), which then records the
/// new format.
fn check_format(db: &DB, data_dir: &Path) -> Result<()> {
    let cf = db
        .cf_handle(Cf::RaftState.name())
        .expect("column family is created at open");
    let found = match db.get_cf(cf, FORMAT_KEY)? {
        Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| {
            StorageError::Corrupt(format!("data dir format version {v:?} is not 8 bytes"))
        })?),
        None => {
            let mut existing = db.iterator_cf(cf, IteratorMode::Start);
            let format = match existing.next().transpose()? {
                Some(_) => 1,
                None => DATA_DIR_FORMAT,
            };
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.put_cf_opt(cf, FORMAT_KEY, format.to_be_bytes(), &sync)?;
            format
        }
    };
    if found > DATA_DIR_FORMAT {
        return Err(StorageError::NewerFormat {
            data_dir: data_dir.into(),
            found,
            build: env!("CARGO_PKG_VERSION"),
        });
    }
    Ok(())
}

/// The WAL directory to open `data_dir` with: the one recorded when it was created, which a
/// later start must name again (an absolute path; none = inside the data dir).
fn check_wal_dir(data_dir: &Path, given: Option<&Path>) -> Result<Option<PathBuf>> {
    let io = |e| StorageError::Io(data_dir.into(), e);
    let given = given
        .map(|g| {
            std::fs::create_dir_all(g)
                .and_then(|_| g.canonicalize())
                .map_err(|e| StorageError::Io(g.into(), e))
        })
        .transpose()?;
    let record = data_dir.join(WAL_DIR_FILE);
    let recorded = match std::fs::read_to_string(&record) {
        Ok(path) => Some(PathBuf::from(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let fresh = !data_dir.join(DB_DIR).exists();
    match (&recorded, &given) {
        (None, Some(dir)) if fresh => {
            std::fs::write(&record, dir.as_os_str().as_encoded_bytes())
                .and_then(|_| File::open(&record)?.sync_all())
                .and_then(|_| sync_dir(data_dir))
                .map_err(io)?;
        }
        (recorded, given) if recorded != given => {
            let show = |p: &Option<PathBuf>| {
                p.as_ref().map_or("(inside the data dir)".to_string(), |p| {
                    p.display().to_string()
                })
            };
            return Err(StorageError::WalDirMismatch {
                data_dir: data_dir.into(),
                recorded: show(recorded),
                given: show(given),
            });
        }
        _ => {}
    }
    Ok(given)
}

/// Runs engine work that may block (a large read, a write during a RocksDB stall, an fsync)
/// without holding up other tasks: on two cores, the async workers must stay free for
/// heartbeats, apply and clients. On the multi-threaded runtime the work runs right here and
/// the worker's other tasks move to another thread (`block_in_place`), which saves the hand-off
/// and wake-up of the blocking pool on every write; elsewhere it goes to the blocking pool.
/// `cancelled` answers if the runtime shuts down before the work runs.
pub async fn off_runtime<T: Send + 'static, E: Send + 'static>(
    cancelled: E,
    work: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, E> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => tokio::task::spawn_blocking(work)
            .await
            .unwrap_or(Err(cancelled)),
    }
}

/// Engine work on the write path that is short unless RocksDB holds writes back: it runs right
/// on the async worker then, as any short computation does; otherwise [`off_runtime`]. Handing
/// the worker over for `block_in_place` costs thread wake-ups on every write: without it a lone
/// writer got 1.3-1.6x the puts per second and 50 clients 1.15x (benches, 1 member).
pub async fn short_unless_held_back<T: Send + 'static, E: Send + 'static>(
    engine: &Engine,
    cancelled: E,
    work: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, E> {
    if engine.holds_writes_back() {
        off_runtime(cancelled, work).await
    } else {
        work()
    }
}

/// Feeds `f` key/value pairs from an engine iterator until it returns false.
fn visit(
    iter: impl Iterator<Item = std::result::Result<Entry, rocksdb::Error>>,
    mut f: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    for item in iter {
        let (k, v) = item?;
        if !f(&k, &v) {
            break;
        }
    }
    Ok(())
}

pub struct WriteBatch<'a> {
    engine: &'a Engine,
    inner: rocksdb::WriteBatch,
}

impl WriteBatch<'_> {
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(self.engine.cf(cf), key, value);
    }

    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(self.engine.cf(cf), key);
    }

    /// Deletes `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.inner.delete_range_cf(self.engine.cf(cf), from, to);
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

pub struct Snapshot<'a> {
    engine: &'a Engine,
    inner: rocksdb::SnapshotWithThreadMode<'a, DB>,
}

impl Snapshot<'_> {
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.get_cf(self.engine.cf(cf), key)?)
    }

    /// Visits keys in `[from, to)` (to = None: unbounded) in order until `f` returns false. As
    /// [`Engine::scan_once`], the blocks it reads stay out of the block cache: a snapshot is read
    /// for a pass over the whole store (a Raft or backup snapshot, a hash) or over history a
    /// watcher missed, and those would fill the cache to its 64 MiB with data read once.
    pub fn scan_once(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.engine
            .scan_at(Some(&self.inner), cf, from, to, false, f)
    }

    /// Values for many keys at once, in the order given.
    pub fn multi_get(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let handle = self.engine.cf(cf);
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&self.inner);
        self.engine
            .db
            .multi_get_cf_opt(keys.iter().map(|k| (handle, k.as_slice())), &opts)
            .into_iter()
            .map(|r| r.map_err(StorageError::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_at_rest_holds_no_write_back() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        for i in 0..100u32 {
            let mut b = e.batch();
            b.put(Cf::Kv, &i.to_be_bytes(), &[0; 100]);
            e.write(b, false).unwrap();
            assert!(!e.holds_writes_back(), "write {i}");
        }
    }

    /// The options set from strings reach RocksDB: its own record of the options in force says so
    /// for the database and for every column family.
    #[test]
    fn rocksdb_runs_with_the_options_given() {
        let dir = tempfile::tempdir().unwrap();
        let _engine = Engine::open(dir.path()).unwrap();
        let db = dir.path().join(DB_DIR);
        let latest = std::fs::read_dir(&db)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("OPTIONS-"))
            .max()
            .expect("RocksDB writes an OPTIONS file");
        let options = std::fs::read_to_string(db.join(latest)).unwrap();
        let count = |setting: &str| options.lines().filter(|l| l.trim() == setting).count();
        assert_eq!(count("avoid_flush_during_recovery=true"), 1);
        assert_eq!(count("bytes_per_sync=1048576"), 1);
        // Every family of ours; RocksDB's `default`, unused, keeps its defaults.
        assert_eq!(
            count("bottommost_file_compaction_delay=3600"),
            Cf::ALL.len()
        );
    }

    #[test]
    fn a_data_dir_records_its_format_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        let stamp = |e: &Engine| e.get(Cf::RaftState, FORMAT_KEY).unwrap();
        assert_eq!(stamp(&e), Some(DATA_DIR_FORMAT.to_be_bytes().to_vec()));
        assert_eq!(e.format_version().unwrap(), DATA_DIR_FORMAT);
        // A data dir of a release before the record has no record but has Raft state: it is
        // format 1 and gets one.
        let mut b = e.batch();
        b.delete(Cf::RaftState, FORMAT_KEY);
        b.put(Cf::RaftState, b"vote", b"v");
        e.write(b, true).unwrap();
        drop(e);
        let e = Engine::open(dir.path()).unwrap();
        assert_eq!(stamp(&e), Some(1u64.to_be_bytes().to_vec()));
        assert_eq!(e.format_version().unwrap(), 1);
        let mut b = e.batch();
        b.put(
            Cf::RaftState,
            FORMAT_KEY,
            &(DATA_DIR_FORMAT + 1).to_be_bytes(),
        );
        e.write(b, true).unwrap();
        drop(e);
        let refused = Engine::open(dir.path())
            .err()
            .expect("a newer format is refused");
        assert!(
            matches!(refused, StorageError::NewerFormat { found, .. } if found == DATA_DIR_FORMAT + 1)
        );
        assert!(
            refused
                .to_string()
                .contains(&format!("format version {DATA_DIR_FORMAT}")),
            "{refused}"
        );
    }

    #[test]
    fn the_data_size_only_shrinks_with_a_defragment() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        let mut b = e.batch();
        for i in 0..64u32 {
            b.put(Cf::Kv, &i.to_be_bytes(), &[b'x'; 64 * 1024]);
        }
        e.write(b, true).unwrap();
        let grown = e.data_size();
        assert!(grown >= 4 << 20, "{grown}");
        // Flushed into a table file, 4 MiB of one letter compresses to almost nothing; etcd's
        // file would not shrink, and neither does the size.
        e.compact_range(Cf::Kv, None, None);
        assert_eq!(e.data_size(), grown);
        e.compact_all();
        assert!(
            e.data_size() < grown / 4,
            "{} after a defragment",
            e.data_size()
        );
    }

    /// 256 keys of 4 KiB values that do not compress, so table blocks read back are as large
    /// as written.
    fn write_incompressible_keys(e: &Engine) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut b = e.batch();
        for i in 0..256u32 {
            let value: Vec<u8> = (0..4096)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            b.put(Cf::Kv, &i.to_be_bytes(), &value);
        }
        e.write(b, true).unwrap();
    }

    #[test]
    fn memory_usage_follows_writes_flushes_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        let idle = e.memory_usage();
        write_incompressible_keys(&e);
        let written = e.memory_usage();
        assert!(
            written.memtables >= idle.memtables + (1 << 20),
            "{idle:?} -> {written:?}"
        );
        e.compact_range(Cf::Kv, None, None);
        let flushed = e.memory_usage();
        assert!(flushed.memtables < written.memtables, "{flushed:?}");
        assert!(flushed.table_readers > 0, "{flushed:?}");
        for i in 0..256u32 {
            e.get(Cf::Kv, &i.to_be_bytes()).unwrap().unwrap();
        }
        let read = e.memory_usage();
        assert!(read.block_cache >= 1 << 20, "{read:?}");
        assert_eq!(read.parts()[1], ("rocksdb_block_cache", read.block_cache));
    }

    #[test]
    fn reads_once_leave_the_block_cache_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        write_incompressible_keys(&e);
        e.compact_range(Cf::Kv, None, None);
        let before = e.memory_usage().block_cache;
        let mut seen = 0;
        e.scan_once(Cf::Kv, &[], None, |_, _| {
            seen += 1;
            true
        })
        .unwrap();
        assert_eq!(seen, 256);
        for i in 0..256u32 {
            assert_eq!(
                e.get_once(Cf::Kv, &i.to_be_bytes()).unwrap().unwrap().len(),
                4096
            );
        }
        let snapshot = e.snapshot();
        let mut seen_in_snapshot = 0;
        snapshot
            .scan_once(Cf::Kv, &[], None, |_, _| {
                seen_in_snapshot += 1;
                true
            })
            .unwrap();
        assert_eq!(seen_in_snapshot, 256);
        drop(snapshot);
        assert!(e.memory_usage().block_cache < before + (256 << 10));
        e.scan(Cf::Kv, &[], None, |_, _| true).unwrap();
        assert!(e.memory_usage().block_cache >= before + (1 << 20));
    }

    #[test]
    fn overwritten_state_keys_hold_a_small_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        // What an apply writes to Meta, 50,000 times over: 8 MiB of superseded copies.
        for i in 0..50_000u64 {
            let mut b = e.batch();
            b.put(Cf::Meta, b"applied", &[i.to_be_bytes(); 20].concat());
            e.write(b, false).unwrap();
        }
        let meta =
            e.db.property_int_value_cf(e.cf(Cf::Meta), "rocksdb.size-all-mem-tables")
                .unwrap()
                .unwrap();
        // One memtable of 1 MiB filling, and one flushing at most.
        assert!(meta <= 5 << 19, "{meta}");
        assert!(e.memory_usage().memtables <= 3 << 20);
    }

    #[test]
    fn second_open_of_a_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Engine::open(dir.path()).unwrap();
        let err = Engine::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StorageError::Locked(..)), "{err}");
        assert!(err.to_string().contains("already in use"));
    }

    #[test]
    fn a_data_dir_keeps_its_wal_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (data, wal) = (dir.path().join("data"), dir.path().join("wal"));
        {
            let e = Engine::open_with(
                &data,
                OpenOptions {
                    wal_dir: Some(&wal),
                    ..Default::default()
                },
            )
            .unwrap();
            let mut b = e.batch();
            b.put(Cf::Meta, b"k", b"v");
            e.write(b, true).unwrap();
        }
        assert!(
            std::fs::read_dir(&wal).unwrap().any(|f| f
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")),
            "the write-ahead log lives in --wal-dir"
        );
        let err = Engine::open(&data).err().expect("opened without its WAL");
        assert!(matches!(err, StorageError::WalDirMismatch { .. }), "{err}");
        let e = Engine::open_with(
            &data,
            OpenOptions {
                wal_dir: Some(&wal),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(e.get(Cf::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn without_fsync_durable_writes_and_wal_syncs_still_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let options = OpenOptions {
            fsync: false,
            ..Default::default()
        };
        {
            let e = Engine::open_with(dir.path(), options).unwrap();
            let mut b = e.batch();
            b.put(Cf::Meta, b"k", b"v");
            e.write(b, true).unwrap();
            e.sync_wal().unwrap();
        }
        // A clean close still hands everything to the OS.
        let e = Engine::open(dir.path()).unwrap();
        assert_eq!(e.get(Cf::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = Engine::open(dir.path()).unwrap();
            let mut b = e.batch();
            b.put(Cf::Meta, b"k", b"v");
            e.write(b, true).unwrap();
        }
        let e = Engine::open(dir.path()).unwrap();
        assert_eq!(e.get(Cf::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
