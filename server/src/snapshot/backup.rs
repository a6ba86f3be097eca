//! Backups: streaming one (Maintenance.Snapshot), reading one back (`snapshot status`) and
//! making a new member's data dir from one (`snapshot restore`).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::etcd::EtcdSnapshot;
use super::etcd_writer::{EtcdExport, ExportError};
use super::format::{DecodeError, Decoder};
use crate::metrics::metrics;
use crate::mvcc::{MvccStore, Revision};
use crate::node::RestoreFlags;
use crate::raft::RAFT_META_KEYS;
use crate::storage::{Cf, Engine, StorageError, WriteBatch};

/// Blob bytes per streamed message, as etcd sends them.
const CHUNK_BYTES: usize = 32 * 1024;
const SHA256_BYTES: usize = 32;
/// A backup's records are padded to whole blocks of this size before the sha256 trailer, so
/// etcdctl, which finds the trailer by the file's size, accepts the file.
const BLOCK_BYTES: u64 = 512;
/// A restore writes the engine in batches of at most this many bytes.
const RESTORE_BATCH_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    // The next two are etcd's words (etcdctl snapshot restore).
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("expected sha256 {}, got {}", go_bytes(.expected), go_bytes(.got))]
    HashMismatch { expected: Vec<u8>, got: Vec<u8> },
    #[error("data-dir {0:?} exists")]
    DataDirExists(String),
    #[error("{path}: neither an oxcd backup nor an etcd snapshot")]
    NotOxcd { path: String },
    #[error("{path}: snapshot file is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0:#}")]
    Flags(anyhow::Error),
    #[error("--bump-revision {0} takes the revision past {max}", max = i64::MAX)]
    BumpTooLarge(NonZeroU64),
}

/// Go's `%v` of a byte slice, as etcd prints hashes in its errors.
fn go_bytes(bytes: &[u8]) -> String {
    let words: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("[{}]", words.join(" "))
}

pub(super) fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Checks the sha256 trailer of bytes seen in order: everything but the last 32 bytes is hashed,
/// the last 32 are the trailer. Holds 32 bytes however much passes through.
#[derive(Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    held: Vec<u8>,
}

impl TrailerCheck {
    pub fn update(&mut self, data: &[u8]) {
        if data.len() >= SHA256_BYTES {
            self.hasher.update(&self.held);
            let (body, tail) = data.split_at(data.len() - SHA256_BYTES);
            self.hasher.update(body);
            self.held.clear();
            self.held.extend_from_slice(tail);
        } else {
            self.held.extend_from_slice(data);
            let extra = self.held.len().saturating_sub(SHA256_BYTES);
            self.hasher.update(&self.held[..extra]);
            self.held.drain(..extra);
        }
    }

    /// Ok when the last 32 bytes are the sha256 of everything before them.
    pub fn verify(self) -> Result<(), BackupError> {
        if self.held.len() < SHA256_BYTES {
            return Err(BackupError::MissingHash);
        }
        let got = self.hasher.finalize().to_vec();
        if got != self.held {
            return Err(BackupError::HashMismatch {
                expected: self.held,
                got,
            });
        }
        Ok(())
    }
}

/// Streams a backup of the whole store as of one instant, while writes go on, in etcd's own
/// snapshot format: a bbolt database in etcd's schema ([`EtcdExport`]) followed by its sha256,
/// as etcd streams one. `send` gets each chunk with the bytes still to come after it and
/// returns false when the receiver has gone; the last chunk is the sha256. The database is laid
/// out in a first pass over the snapshot, so that the first chunk can announce the total;
/// memory stays at about one chunk plus a few pages.
pub fn stream(
    store: &MvccStore,
    mut send: impl FnMut(Vec<u8>, u64) -> bool,
) -> Result<(), ExportError> {
    // etcd's backend snapshot time: the whole transfer, observed when it completes.
    let started = std::time::Instant::now();
    let snap = store.engine_snapshot();
    let export = EtcdExport::new(&snap)?;
    let plan = export.plan()?;
    let mut out = ChunkSender {
        chunk: Vec::with_capacity(CHUNK_BYTES),
        left: plan.bytes() + SHA256_BYTES as u64,
        sha: Sha256::new(),
        send: &mut send,
    };
    export.write(&plan, &mut out)?;
    out.flush()?;
    let sha = out.sha.finalize().to_vec();
    if !send(sha, 0) {
        return Err(gone().into());
    }
    metrics()
        .disk
        .backend_snapshot
        .observe(started.elapsed().as_secs_f64());
    Ok(())
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the receiver has gone")
}

struct ChunkSender<'a, F> {
    chunk: Vec<u8>,
    left: u64,
    sha: Sha256,
    send: &'a mut F,
}

impl<F: FnMut(Vec<u8>, u64) -> bool> Write for ChunkSender<'_, F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.chunk.len());
        self.chunk.extend_from_slice(&data[..n]);
        if self.chunk.len() == CHUNK_BYTES {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES));
        self.sha.update(&chunk);
        self.left -= chunk.len() as u64;
        if (self.send)(chunk, self.left) {
            Ok(())
        } else {
            Err(gone())
        }
    }
}

/// What `snapshot status` reports about a backup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// crc32c over the MVCC revisions and the leases (keys and values, in key order): the value
    /// Maintenance.Hash returned on the member the backup came from while its store was at the
    /// backup's revision, and returns on a member restored from it. (etcd's is a crc32 over its
    /// bbolt buckets, which oxcd does not have.)
    pub hash: u32,
    /// The store's revision when the backup was taken.
    pub revision: i64,
    /// Stored records: every revision, lease and metadata entry (etcd counts every bbolt key).
    pub total_keys: u64,
    /// The file's size in bytes.
    pub total_size: u64,
}

/// Reads and checks a backup file (its sha256 trailer included); an etcd snapshot is read as
/// etcdctl reads one (see [`EtcdSnapshot::status`]).
pub fn status(path: &Path) -> Result<BackupStatus, BackupError> {
    if super::etcd::is_bbolt(path)? {
        return EtcdSnapshot::open(path, true)?.status();
    }
    let mut hash = 0u32;
    let mut revision = 0;
    let mut total_keys = 0;
    // Records come in column family order, revisions before leases, as Hash reads them.
    let mut silent = Meter::new(None, RestoreStage::Restoring);
    let total_size = read(path, false, &mut silent, |cf, k, v| {
        total_keys += 1;
        match cf {
            Cf::Kv | Cf::Lease => hash = crc32c::crc32c_append(crc32c::crc32c_append(hash, k), v),
            _ => {
                if let Some(rev) = crate::mvcc::current_revision_record(k, v) {
                    revision = rev;
                }
            }
        }
        Ok(())
    })?;
    Ok(BackupStatus {
        hash,
        revision,
        total_keys,
        total_size,
    })
}

/// `snapshot restore`'s options.
pub struct RestoreOptions<'a> {
    pub data_dir: &'a Path,
    pub flags: RestoreFlags<'a>,
    pub skip_hash_check: bool,
    /// etcdutl's `--bump-revision N` with the `--mark-compacted` it requires: the restored
    /// store's revision is raised by N and marked compacted. Clients that saw revisions of
    /// the old cluster made after the backup see no revision again. A watch or read from
    /// below the new revision is refused as compacted instead of showing a different history.
    pub bump_revision: Option<NonZeroU64>,
    /// Called as the restore reads the file: at the start and the end of each stage, and every
    /// [`PROGRESS_STEP`] bytes.
    pub progress: Option<&'a dyn Fn(RestoreProgress)>,
}

/// What a restore is busy with, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreStage {
    /// Checking an etcd snapshot's sha256 trailer, which reads the whole file first. (An oxcd
    /// backup's is checked as its records are read.)
    CheckingHash,
    /// Reading the file's records into the new data dir.
    Restoring,
}

/// How far a restore has got: `done` of `total` bytes of the file in `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProgress {
    pub stage: RestoreStage,
    pub done: u64,
    pub total: u64,
}

/// How often a restore reports its progress, in bytes read.
pub const PROGRESS_STEP: u64 = 4 << 20;

/// Calls a restore's progress hook for one stage: at its start, every [`PROGRESS_STEP`] bytes,
/// and once at its end.
struct Meter<'h> {
    hook: Option<&'h dyn Fn(RestoreProgress)>,
    stage: RestoreStage,
    next: u64,
}

impl<'h> Meter<'h> {
    fn new(hook: Option<&'h dyn Fn(RestoreProgress)>, stage: RestoreStage) -> Meter<'h> {
        Meter {
            hook,
            stage,
            next: 0,
        }
    }

    fn at(&mut self, done: u64, total: u64) {
        let Some(hook) = self.hook else {
            return;
        };
        let done = done.min(total);
        if done < self.next {
            return;
        }
        let stage = self.stage;
        hook(RestoreProgress { stage, done, total });
        self.next = if done == total {
            u64::MAX
        } else {
            done.saturating_add(PROGRESS_STEP).min(total)
        };
    }
}

/// Makes `data_dir` hold exactly the backup's store (revisions, leases, compaction point) as
/// the first state of a new cluster formed by `flags`, like etcd's restore. Nothing is left
/// behind if the file is refused: the store is built in a directory next to `data_dir` and
/// renamed at the end. Returns (member id, cluster id).
pub fn restore(path: &Path, opts: &RestoreOptions<'_>) -> Result<(u64, u64), BackupError> {
    let target = opts.data_dir;
    if target.exists() {
        return Err(BackupError::DataDirExists(target.display().to_string()));
    }
    let name = target
        .file_name()
        .ok_or_else(|| BackupError::DataDirExists(target.display().to_string()))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    let building = parent.join(format!(
        ".{}.restoring.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let built = build(path, &building, opts);
    let result = built.and_then(|ids| {
        fail::fail_point!("snapshot::restore::before_rename");
        std::fs::rename(&building, target).map_err(io_error(target))?;
        fail::fail_point!("snapshot::restore::before_dir_sync");
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&parent))?;
        Ok(ids)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    result
}

fn build(path: &Path, dir: &Path, opts: &RestoreOptions<'_>) -> Result<(u64, u64), BackupError> {
    let engine = Engine::open(dir)?;
    let mut out = RestoreWriter::new(&engine);
    // First, so bad flags are refused before the file is read.
    let ids =
        crate::node::adopt_restored(&mut out.batch, &opts.flags).map_err(BackupError::Flags)?;
    let mut reading = Meter::new(opts.progress, RestoreStage::Restoring);
    if super::etcd::is_bbolt(path)? {
        let mut hashing = Meter::new(opts.progress, RestoreStage::CheckingHash);
        let snapshot = EtcdSnapshot::open_reporting(path, opts.skip_hash_check, |done, total| {
            hashing.at(done, total)
        })?;
        let total = snapshot.size();
        snapshot.records(&mut |cf, k, v| {
            reading.at(snapshot.bytes_read(), total);
            out.put(cf, k, v)
        })?;
        reading.at(total, total);
    } else {
        read(path, opts.skip_hash_check, &mut reading, |cf, k, v| {
            out.put(cf, k, v)
        })?;
    }
    if let Some(by) = opts.bump_revision {
        out.bump(by)?;
    }
    out.finish()?;
    Ok(ids)
}

/// Writes a restore's records into the new engine in batches of bounded size, noting the
/// revisions a bump starts from.
struct RestoreWriter<'e> {
    engine: &'e Engine,
    batch: WriteBatch<'e>,
    batch_bytes: usize,
    /// The main revision of the last entry of the key history: what etcdutl bumps.
    last_main: i64,
    /// The store's revision, as the file records it.
    revision: i64,
}

impl<'e> RestoreWriter<'e> {
    fn new(engine: &'e Engine) -> RestoreWriter<'e> {
        RestoreWriter {
            engine,
            batch: engine.batch(),
            batch_bytes: 0,
            last_main: 0,
            revision: 1,
        }
    }

    fn put(&mut self, cf: Cf, k: &[u8], v: &[u8]) -> Result<(), BackupError> {
        match cf {
            Cf::Meta if RAFT_META_KEYS.contains(&k) => return Ok(()),
            Cf::Meta => {
                if let Some(rev) = crate::mvcc::current_revision_record(k, v) {
                    self.revision = rev;
                }
            }
            Cf::Kv => {
                if let Some((rev, _)) = Revision::from_key(k) {
                    self.last_main = self.last_main.max(rev.main);
                }
            }
            _ => {}
        }
        self.batch.put(cf, k, v);
        self.batch_bytes += k.len() + v.len();
        if self.batch_bytes >= RESTORE_BATCH_BYTES {
            let full = std::mem::replace(&mut self.batch, self.engine.batch());
            self.engine.write(full, false)?;
            self.batch_bytes = 0;
        }
        Ok(())
    }

    /// etcdutl's bump: the last revision of the key history plus `by`, marked compacted. It is
    /// never below the store's revision. The history's last entries can be compacted-away
    /// deletions. Then etcd's first start puts its revision back up to its compaction point,
    /// which is the store's revision.
    fn bump(&mut self, by: NonZeroU64) -> Result<(), BackupError> {
        let bumped = i64::try_from(by.get())
            .ok()
            .and_then(|by| self.last_main.checked_add(by))
            .ok_or(BackupError::BumpTooLarge(by))?
            .max(self.revision);
        for (cf, k, v) in crate::mvcc::bumped_revision_records(bumped) {
            self.put(cf, &k, &v)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), BackupError> {
        // All batches share one write-ahead log: this fsync makes the earlier ones durable too.
        self.engine.write(self.batch, true)?;
        Ok(())
    }
}

/// Reads a backup file record by record, checking its sha256 trailer unless told not to.
/// Returns the file's size.
fn read(
    path: &Path,
    skip_hash_check: bool,
    meter: &mut Meter<'_>,
    mut visit: impl FnMut(Cf, &[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let file = File::open(path).map_err(io_error(path))?;
    let size = file.metadata().map_err(io_error(path))?.len();
    // etcd's rule: a file with its hash is whole blocks plus the 32 bytes of the hash.
    let has_hash = size % BLOCK_BYTES == SHA256_BYTES as u64;
    if !has_hash && !skip_hash_check {
        return Err(BackupError::MissingHash);
    }
    let body = if has_hash {
        size - SHA256_BYTES as u64
    } else {
        size
    };
    let mut input = Checked {
        inner: BufReader::with_capacity(1 << 20, file),
        check: TrailerCheck::default(),
        read: 0,
        size,
        meter,
    };
    let decoded = decode(&mut input, body, &mut visit).map_err(|e| match e {
        ReadError::Io(e) => io_error(path)(e),
        ReadError::Visit(e) => e,
    })?;
    // A damaged file is reported by its hash, as etcd reports one, whatever its records say.
    if has_hash && !skip_hash_check {
        std::io::copy(&mut input, &mut std::io::sink()).map_err(io_error(path))?;
        input.check.verify()?;
    }
    decoded.map_err(|e| match e {
        DecodeError::NotASnapshot => BackupError::NotOxcd {
            path: path.display().to_string(),
        },
        e => BackupError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        },
    })?;
    input.meter.at(size, size);
    Ok(size)
}

enum ReadError {
    Io(std::io::Error),
    Visit(BackupError),
}

/// Decodes the records in the first `len` bytes of `input`. The outer error stops the read; the
/// inner one is a damaged file, reported once its hash has been checked.
fn decode(
    input: impl Read,
    len: u64,
    visit: &mut impl FnMut(Cf, &[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<Result<(), DecodeError>, ReadError> {
    let damaged = |e| match e {
        DecodeError::Io(e) => Err(ReadError::Io(e)),
        e => Ok(Err(e)),
    };
    let mut decoder = match Decoder::new(input, len) {
        Ok(d) => d,
        Err(e) => return damaged(e),
    };
    loop {
        match decoder.next_record() {
            Ok(Some((cf, k, v))) => visit(cf, &k, &v).map_err(ReadError::Visit)?,
            Ok(None) => break,
            Err(e) => return damaged(e),
        }
    }
    match decoder.expect_padding(BLOCK_BYTES) {
        Ok(()) => Ok(Ok(())),
        Err(e) => damaged(e),
    }
}

/// A reader that passes everything it reads through a [`TrailerCheck`], and tells a [`Meter`]
/// how much of the file's `size` it has read.
struct Checked<'m, 'h, R> {
    inner: R,
    check: TrailerCheck,
    read: u64,
    size: u64,
    meter: &'m mut Meter<'h>,
}

impl<R: Read> Read for Checked<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check.update(&buf[..n]);
        self.read += n as u64;
        self.meter.at(self.read, self.size);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oxcd_proto::mvccpb::KeyValue;

    use super::*;
    use crate::error::EtcdError;
    use crate::lease::StoredLease;
    use crate::mvcc::{KeyRange, RangeOptions};
    use crate::storage::Entry;

    /// A store with a few revisions, a deleted key, a lease, a compaction, a user and a role, an
    /// alarm and a downgrade, and its data dir.
    fn store() -> (tempfile::TempDir, Arc<Engine>, Arc<MvccStore>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let store = MvccStore::open(engine.clone()).unwrap();
        for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
            let mut w = store.writer(false);
            w.txn().put(key.as_bytes(), value.as_bytes().to_vec(), 0);
            w.commit().unwrap();
        }
        let mut w = store.writer(false);
        w.txn()
            .delete_range(&crate::mvcc::KeyRange::Single(b"b".to_vec()));
        let lease = StoredLease { id: 7, ttl: 60 };
        w.put_extra(Cf::Lease, &StoredLease::key(7), &lease.value());
        w.compact(2).unwrap();
        let auth = crate::auth::AuthRecord {
            enabled: true,
            revision: 9,
            users: vec![oxcd_proto::authpb::User {
                name: b"root".to_vec(),
                roles: vec!["root".into()],
                ..Default::default()
            }],
            roles: vec![oxcd_proto::authpb::Role {
                name: b"root".to_vec(),
                ..Default::default()
            }],
        };
        w.put_extra(Cf::Meta, crate::auth::AUTH_META_KEY, &auth.encode());
        let alarms = [(0x42, 1), (0x7, 2)].into_iter().collect();
        let alarms = crate::alarm::stored_record(&alarms);
        w.put_extra(Cf::Meta, crate::alarm::Alarms::meta_key(), &alarms);
        let downgrade = oxcd_proto::etcdserverpb::DowngradeInfo {
            enabled: true,
            target_version: "3.6.0".into(),
        };
        let downgrade = prost::Message::encode_to_vec(&downgrade);
        w.put_extra(
            Cf::Meta,
            crate::downgrade::Downgrade::meta_key(),
            &downgrade,
        );
        w.commit().unwrap();
        // The compactor finishes the compaction in the background; back up what it leaves.
        let finished = || {
            let meta = entries(&engine, Cf::Meta);
            let meta = meta
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
            matches!(crate::mvcc::compaction_point(&meta), Some((2, Some(2))))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(finished(), "the compaction finished");
        (dir, engine, store)
    }

    fn save(store: &MvccStore, path: &Path) {
        let mut bytes = Vec::new();
        let mut remainders = Vec::new();
        stream(store, |chunk, remaining| {
            assert!(chunk.len() <= CHUNK_BYTES);
            bytes.extend_from_slice(&chunk);
            remainders.push((bytes.len() as u64, remaining));
            true
        })
        .unwrap();
        let total = bytes.len() as u64;
        assert!(remainders.iter().all(|(sent, left)| sent + left == total));
        std::fs::write(path, bytes).unwrap();
    }

    fn entries(engine: &Engine, cf: Cf) -> Vec<Entry> {
        let mut all = Vec::new();
        engine
            .scan(cf, &[], None, |k, v| {
                all.push((k.into(), v.into()));
                true
            })
            .unwrap();
        all
    }

    fn options<'a>(data_dir: &'a Path, peer_urls: &'a [String]) -> RestoreOptions<'a> {
        RestoreOptions {
            data_dir,
            flags: RestoreFlags {
                name: "m1",
                initial_cluster: "m1=http://127.0.0.1:2380,m2=http://127.0.0.1:2381",
                token: "restored",
                advertise_peer_urls: peer_urls,
            },
            skip_hash_check: false,
            bump_revision: None,
            progress: None,
        }
    }

    fn bumped<'a>(data_dir: &'a Path, peer_urls: &'a [String], by: u64) -> RestoreOptions<'a> {
        RestoreOptions {
            bump_revision: Some(NonZeroU64::new(by).unwrap()),
            ..options(data_dir, peer_urls)
        }
    }

    fn get(store: &MvccStore, key: &str, rev: i64) -> Result<Vec<KeyValue>, EtcdError> {
        let opts = RangeOptions {
            rev,
            ..RangeOptions::default()
        };
        let range = KeyRange::Single(key.as_bytes().to_vec());
        store.range(&range, opts).map(|r| r.kvs)
    }

    fn put(store: &MvccStore, key: &str) -> i64 {
        let mut w = store.writer(false);
        w.txn().put(key.as_bytes(), b"v".to_vec(), 0);
        w.commit().unwrap();
        store.current_revision()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_bumped_restore_goes_on_from_the_bump_with_everything_below_compacted() {
        let (dir, _engine, store) = store();
        let file = dir.path().join("backup.db");
        save(&store, &file);
        assert_eq!(store.current_revision(), 5);
        let target = dir.path().join("restored");
        let urls = ["http://127.0.0.1:2380".to_string()];
        restore(&file, &bumped(&target, &urls, 1000)).unwrap();

        let engine = Engine::open(&target).unwrap();
        let restored = MvccStore::open(engine.clone()).unwrap();
        assert_eq!(restored.current_revision(), 1005);
        assert_eq!(restored.compact_revision(), 1005);
        assert_eq!(get(&restored, "a", 4), Err(EtcdError::Compacted));
        let a = get(&restored, "a", 0).unwrap();
        assert_eq!((&a[0].value[..], a[0].mod_revision), (&b"3"[..], 4));
        assert_eq!(get(&restored, "b", 0), Ok(Vec::new()));
        assert_eq!(put(&restored, "new"), 1006);

        // The first open compacts: what is left is the live key, etcdutl's empty entry at the
        // bump, and the new write.
        restored.wait_compacted(1005).await.unwrap();
        let kv = entries(&engine, Cf::Kv);
        let revisions: Vec<i64> = kv
            .iter()
            .map(|(k, _)| Revision::from_key(k).unwrap().0.main)
            .collect();
        assert_eq!(revisions, [4, 1005, 1006]);
        assert!(kv[1].1.is_empty());
    }

    #[test]
    fn an_etcd_snapshot_is_bumped_from_its_last_revision() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("restored");
        let urls = ["http://127.0.0.1:2380".to_string()];
        let fixture = super::super::etcd::tests::fixture("etcd-3.7.3.db");
        restore(&fixture, &bumped(&target, &urls, 1000)).unwrap();
        let restored = MvccStore::open(Engine::open(&target).unwrap()).unwrap();
        // The fixture's last revision is 36, compacted at 34.
        assert_eq!(restored.current_revision(), 1036);
        assert_eq!(restored.compact_revision(), 1036);
        assert_eq!(get(&restored, "any", 36), Err(EtcdError::Compacted));
        assert_eq!(put(&restored, "new"), 1037);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_bump_never_takes_the_revision_below_the_stores() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let store = MvccStore::open(engine.clone()).unwrap();
        for _ in 0..3 {
            put(&store, "a");
        }
        let mut w = store.writer(false);
        w.txn()
            .delete_range(&crate::mvcc::KeyRange::Single(b"a".to_vec()));
        w.commit().unwrap();
        let mut w = store.writer(false);
        w.compact(5).unwrap();
        w.commit().unwrap();
        store.wait_compacted(5).await.unwrap();
        assert!(entries(&engine, Cf::Kv).is_empty());
        let file = dir.path().join("backup.db");
        save(&store, &file);

        let urls = ["http://127.0.0.1:2380".to_string()];
        // etcdutl adds to the last revision of the key history, none here.
        for (by, revision) in [(2, 5), (10, 10)] {
            let target = dir.path().join(format!("restored-{by}"));
            restore(&file, &bumped(&target, &urls, by)).unwrap();
            let restored = MvccStore::open(Engine::open(&target).unwrap()).unwrap();
            assert_eq!(restored.current_revision(), revision, "bump {by}");
            assert_eq!(restored.compact_revision(), revision, "bump {by}");
        }
    }

    /// Restores `file` with a progress hook; returns what it was told.
    fn progress_of(file: &Path, target: &Path) -> Vec<RestoreProgress> {
        let urls = ["http://127.0.0.1:2380".to_string()];
        let seen = std::cell::RefCell::new(Vec::new());
        let hook = |p: RestoreProgress| seen.borrow_mut().push(p);
        let opts = RestoreOptions {
            progress: Some(&hook),
            ..options(target, &urls)
        };
        restore(file, &opts).unwrap();
        seen.into_inner()
    }

    /// Each stage's reports rise to its total, a step apart but for the last.
    fn assert_steady(reports: &[RestoreProgress], stage: RestoreStage, total: u64) {
        let done: Vec<u64> = reports
            .iter()
            .filter(|p| p.stage == stage)
            .inspect(|p| assert_eq!(p.total, total))
            .map(|p| p.done)
            .collect();
        assert_eq!(done.last(), Some(&total), "{stage:?}: {done:?}");
        for pair in done.windows(2) {
            assert!(
                pair[1] >= pair[0] + PROGRESS_STEP || pair[1] == total,
                "{done:?}"
            );
        }
        assert!(done.len() as u64 <= total / PROGRESS_STEP + 2, "{done:?}");
    }

    #[test]
    fn a_restore_reports_its_progress_through_the_file() {
        let (dir, _engine, store) = store();
        let mut w = store.writer(false);
        for i in 0..200 {
            let value: Vec<u8> = (0..100_000u32).map(|b| (b * 7 + i) as u8).collect();
            w.txn().put(format!("big/{i}").as_bytes(), value, 0);
        }
        w.commit().unwrap();
        // An earlier release's backup is read once, its hash checked on the way.
        let legacy = dir.path().join("legacy.db");
        std::fs::write(&legacy, legacy_backup(&store)).unwrap();
        let size = std::fs::metadata(&legacy).unwrap().len();
        assert!(size > 4 * PROGRESS_STEP);
        let reports = progress_of(&legacy, &dir.path().join("restored"));
        assert!(reports.iter().all(|p| p.stage == RestoreStage::Restoring));
        assert!(reports.len() >= 5, "{reports:?}");
        assert_steady(&reports, RestoreStage::Restoring, size);

        // A bbolt file (oxcd's backup, etcd's snapshot): its hash is checked first, then its
        // pages are read.
        let file = dir.path().join("backup.db");
        save(&store, &file);
        let fixture = super::super::etcd::tests::fixture("etcd-3.7.3.db");
        for (file, target) in [(&file, "from-oxcd"), (&fixture, "from-etcd")] {
            let reports = progress_of(file, &dir.path().join(target));
            let size = std::fs::metadata(file).unwrap().len();
            assert_eq!(reports[0].stage, RestoreStage::CheckingHash);
            assert_steady(&reports, RestoreStage::CheckingHash, size - 32);
            assert_steady(&reports, RestoreStage::Restoring, size - 32);
            let stages: Vec<_> = reports.iter().map(|p| p.stage).collect();
            assert!(stages.is_sorted_by_key(|s| *s == RestoreStage::Restoring));
        }
    }

    #[test]
    fn a_bump_past_the_largest_revision_is_refused() {
        let (_store_dir, _engine, store) = store();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.db");
        save(&store, &file);
        let target = dir.path().join("restored");
        let urls = ["http://127.0.0.1:2380".to_string()];
        for by in [u64::MAX, i64::MAX as u64] {
            let err = restore(&file, &bumped(&target, &urls, by)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("--bump-revision {by} takes the revision past 9223372036854775807")
            );
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
        restore(&file, &bumped(&target, &urls, i64::MAX as u64 - 5)).unwrap();
    }

    /// A backup as releases before etcd's format wrote one: oxcd's snapshot records, zeros to
    /// whole 512-byte blocks, then the sha256.
    fn legacy_backup(store: &MvccStore) -> Vec<u8> {
        let mut bytes = Vec::new();
        super::super::format::encode(&store.engine_snapshot(), &mut bytes).unwrap();
        bytes.resize(bytes.len().next_multiple_of(BLOCK_BYTES as usize), 0);
        let sha = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sha);
        bytes
    }

    fn meta_records(engine: &Engine) -> Vec<Entry> {
        let mut meta = entries(engine, Cf::Meta);
        meta.retain(|(k, _)| !RAFT_META_KEYS.contains(&&k[..]));
        meta
    }

    /// Restores `file` and checks the new data dir holds the store's revisions, leases and
    /// metadata, without its Raft bookkeeping, as a new cluster's first member.
    fn assert_restores(file: &Path, engine: &Engine, store: &MvccStore, target: &Path) {
        let urls = ["http://127.0.0.1:2380".to_string()];
        let (member, cluster) = restore(file, &options(target, &urls)).unwrap();
        assert_eq!(member, crate::cluster::member_id(&urls, "restored"));
        assert_ne!(cluster, 0);
        let restored = Engine::open(target).unwrap();
        for cf in [Cf::Kv, Cf::Lease] {
            assert_eq!(entries(&restored, cf), entries(engine, cf), "{cf:?}");
        }
        assert_eq!(meta_records(&restored), meta_records(engine));
        let reopened = MvccStore::open(restored).unwrap();
        assert_eq!(reopened.current_revision(), store.current_revision());
    }

    #[test]
    fn a_restored_data_dir_holds_the_saved_store_as_a_new_cluster() {
        let (dir, engine, store) = store();
        let file = dir.path().join("backup.db");
        save(&store, &file);
        assert!(super::super::etcd::is_bbolt(&file).unwrap());
        let st = status(&file).unwrap();
        assert_eq!(st.revision, store.current_revision());
        assert_eq!(st.total_size, std::fs::metadata(&file).unwrap().len() - 32);
        assert_restores(&file, &engine, &store, &dir.path().join("restored"));
    }

    #[test]
    fn a_backup_of_an_earlier_release_still_restores() {
        let (dir, engine, store) = store();
        let file = dir.path().join("legacy.db");
        std::fs::write(&file, legacy_backup(&store)).unwrap();
        let st = status(&file).unwrap();
        assert_eq!(st.revision, store.current_revision());
        assert_eq!(st.hash, engine.checksum(&[Cf::Kv, Cf::Lease]).unwrap());
        assert_eq!(st.total_size, std::fs::metadata(&file).unwrap().len());
        assert_restores(&file, &engine, &store, &dir.path().join("restored"));

        let mut flipped = std::fs::read(&file).unwrap();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x20;
        std::fs::write(&file, flipped).unwrap();
        let urls = ["http://127.0.0.1:2380".to_string()];
        let err = restore(&file, &options(&dir.path().join("again"), &urls)).unwrap_err();
        assert!(matches!(err, BackupError::HashMismatch { .. }), "{err}");
    }

    #[test]
    fn damaged_files_are_refused_and_leave_no_data_dir() {
        let (_store_dir, _engine, store) = store();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.db");
        save(&store, &file);
        let good = std::fs::read(&file).unwrap();
        let target = dir.path().join("restored");
        let urls = ["http://127.0.0.1:2380".to_string()];
        let restore_bytes = |bytes: &[u8], skip_hash_check: bool| {
            std::fs::write(&file, bytes).unwrap();
            let opts = RestoreOptions {
                skip_hash_check,
                ..options(&target, &urls)
            };
            let result = restore(&file, &opts);
            if result.is_err() {
                assert!(!target.exists());
                let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
                assert_eq!(leftovers, 1, "only the backup file");
            }
            result
        };

        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x20;
        let err = restore_bytes(&flipped, false).unwrap_err().to_string();
        assert!(err.starts_with("expected sha256 ["), "{err}");
        let mut bad_trailer = good.clone();
        *bad_trailer.last_mut().unwrap() ^= 1;
        assert!(matches!(
            restore_bytes(&bad_trailer, false),
            Err(BackupError::HashMismatch { .. })
        ));
        for cut in [good.len() - 1, good.len() - 32, good.len() / 2] {
            let err = restore_bytes(&good[..cut], false).unwrap_err();
            assert_eq!(
                err.to_string(),
                "snapshot missing hash but --skip-hash-check=false"
            );
        }
        assert!(matches!(
            restore_bytes(&good[..30], true),
            Err(BackupError::Corrupt { .. })
        ));
        // Whole blocks with a good hash, like an etcd (bbolt) backup.
        let mut foreign = vec![7u8; 1024];
        foreign.extend_from_slice(&Sha256::digest(&foreign));
        assert!(matches!(
            restore_bytes(&foreign, false),
            Err(BackupError::NotOxcd { .. })
        ));
        // Without its trailer the records are still whole: accepted only when told to.
        restore_bytes(&good[..good.len() - 32], true).unwrap();
        std::fs::write(&file, &good).unwrap();
        let err = restore(&file, &options(&target, &urls)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("data-dir {:?} exists", target.display().to_string())
        );
    }

    #[test]
    fn restore_flags_that_name_no_member_or_other_urls_are_refused() {
        let (_store_dir, _engine, store) = store();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.db");
        save(&store, &file);
        let target = dir.path().join("restored");
        let other = ["http://127.0.0.1:9999".to_string()];
        let err = restore(&file, &options(&target, &other)).unwrap_err();
        assert!(
            err.to_string()
                .contains("missing from --initial-advertise-peer-urls"),
            "{err}"
        );
        let urls = ["http://127.0.0.1:2380".to_string()];
        let mut opts = options(&target, &urls);
        opts.flags.name = "nobody";
        let err = restore(&file, &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--initial-cluster has no member named \"nobody\""
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_trailer_check_holds_back_the_last_32_bytes_across_any_split() {
        let body = b"some backup bytes".repeat(5);
        let mut file = body.clone();
        file.extend_from_slice(&Sha256::digest(&body));
        for split in [1, 5, 31, 32, 33, 64, file.len()] {
            let mut check = TrailerCheck::default();
            file.chunks(split).for_each(|c| check.update(c));
            check.verify().unwrap();
        }
        let mut short = TrailerCheck::default();
        short.update(&file[..20]);
        assert!(matches!(short.verify(), Err(BackupError::MissingHash)));
    }
}
