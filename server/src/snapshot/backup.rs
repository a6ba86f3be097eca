//! Backups: streaming one (Maintenance.Snapshot), reading one back (`snapshot status`) and
//! making a new member's data dir from one (`snapshot restore`).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::etcd::EtcdSnapshot;
use super::etcd_writer::{EtcdExport, ExportError};
use super::format::{DecodeError, Decoder};
use crate::metrics::metrics;
use crate::mvcc::MvccStore;
use crate::node::RestoreFlags;
use crate::raft::RAFT_META_KEYS;
use crate::storage::{Cf, Engine, StorageError};

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
}

/// Go's `%v` of a byte slice, as etcd prints hashes in its errors.
fn go_bytes(bytes: &[u8]) -> String {
    let words: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("[{}]", words.join(" "))
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
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
    let total_size = read(path, false, |cf, k, v| {
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
    let mut batch = engine.batch();
    // First, so bad flags are refused before the file is read.
    let ids = crate::node::adopt_restored(&mut batch, &opts.flags).map_err(BackupError::Flags)?;
    let mut batch_bytes = 0;
    let mut put = |cf: Cf, k: &[u8], v: &[u8]| {
        if cf == Cf::Meta && RAFT_META_KEYS.contains(&k) {
            return Ok(());
        }
        batch.put(cf, k, v);
        batch_bytes += k.len() + v.len();
        if batch_bytes >= RESTORE_BATCH_BYTES {
            engine.write(std::mem::replace(&mut batch, engine.batch()), false)?;
            batch_bytes = 0;
        }
        Ok(())
    };
    if super::etcd::is_bbolt(path)? {
        EtcdSnapshot::open(path, opts.skip_hash_check)?.records(&mut put)?;
    } else {
        read(path, opts.skip_hash_check, put)?;
    }
    // All batches share one write-ahead log: this fsync makes the earlier ones durable too.
    engine.write(batch, true)?;
    Ok(ids)
}

/// Reads a backup file record by record, checking its sha256 trailer unless told not to.
/// Returns the file's size.
fn read(
    path: &Path,
    skip_hash_check: bool,
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

/// A reader that passes everything it reads through a [`TrailerCheck`].
struct Checked<R> {
    inner: R,
    check: TrailerCheck,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lease::StoredLease;
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
        }
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
