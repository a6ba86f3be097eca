//! The Raft snapshot on disk: one file, `snap/current.snap`, holding the snapshot's metadata and
//! the state machine's records, so that a single rename publishes both together. (Two files
//! published by two renames could pair new data with old metadata after a crash, and a follower
//! loading such a pair would re-apply entries the data already holds.)
//!
//! Layout: `OXCDRAFTSNAP2\n`, the metadata's length (u32, big-endian), the metadata (a
//! [`super::record::SnapshotMetaRecord`]), then the record stream of
//! [`crate::snapshot::format`]. The file is sent to followers byte for byte, so a received
//! snapshot has the same layout. Files of data dir format 1 (`OXCDRAFTSNAP1\n`, the metadata in
//! openraft 0.9's bincode layout) are still read.
//!
//! Every publication is durable before it counts: the file is fsynced before its rename and the
//! directory after it. A snapshot replaces the current one only if it is newer: a build that
//! started before a snapshot from the leader was installed must not win over it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::types::SnapshotMeta;
use super::written_back::WrittenBack;
use crate::snapshot::format::Decoder;

const MAGIC: &[u8] = b"OXCDRAFTSNAP2\n";
/// Data dir format 1's header; the same length as [`MAGIC`].
const FORMAT_1_MAGIC: &[u8] = b"OXCDRAFTSNAP1\n";
/// Far above any real metadata (a membership of a few members); a corrupt length beyond it is
/// refused before anything is allocated.
const MAX_META_BYTES: u32 = 1 << 20;
const CURRENT: &str = "current.snap";
/// Where a snapshot from the leader is written as it arrives.
const RECEIVING: &str = "receiving.snap";
const BUILDING_PREFIX: &str = "building-";
/// The two files of the previous release's layout.
const LEGACY_META: &str = "current.meta";
const LEGACY_DATA: &str = "current.data";

/// A snapshot from the leader as it arrives in `snap/receiving.snap`, handed to the disk as it
/// is written, as a build is: the follower's own Raft appends go on meanwhile.
/// [`SnapshotDir::verify_received`] makes it durable.
pub struct ReceivingFile(WrittenBack);

impl ReceivingFile {
    /// Opens the file for bytes that go at `offset`: at 0 it is started afresh, elsewhere
    /// continued (openraft 0.9 sends a snapshot in chunks, each with its offset).
    pub fn open(path: &Path, offset: u64) -> std::io::Result<ReceivingFile> {
        let mut file = File::options()
            .write(true)
            .create(true)
            .truncate(offset == 0)
            .open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(ReceivingFile(WrittenBack::at(file, offset)))
    }

    pub fn write_piece(&mut self, piece: &[u8]) -> std::io::Result<()> {
        self.0.write_all(piece)
    }

    /// Hands what is still held to the disk; the file is closed.
    pub fn finish(mut self) {
        self.0.hand_rest_to_disk();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("snapshot file {0} is not an oxcd Raft snapshot or is damaged: {1}")]
    Corrupt(PathBuf, String),
}

type Result<T> = std::result::Result<T, SnapshotFileError>;

/// The snapshot directory of a member.
pub struct SnapshotDir {
    dir: PathBuf,
    /// Serialises publications (a build and an install may finish at the same time).
    publish: Mutex<()>,
}

impl SnapshotDir {
    /// Opens (creating) `dir`, dropping what an interrupted build left and adopting the
    /// previous release's two-file snapshot when its halves belong together.
    pub fn open(dir: &Path) -> Result<SnapshotDir> {
        let io = |e| SnapshotFileError::Io(dir.to_path_buf(), e);
        std::fs::create_dir_all(dir)
            .and_then(|_| crate::storage::sync_dir_and_parent(dir))
            .map_err(io)?;
        let snapshots = SnapshotDir {
            dir: dir.to_path_buf(),
            publish: Mutex::new(()),
        };
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if name.to_string_lossy().starts_with(BUILDING_PREFIX) {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
        snapshots.adopt_legacy()?;
        Ok(snapshots)
    }

    pub fn receiving_path(&self) -> PathBuf {
        self.dir.join(RECEIVING)
    }

    /// The current snapshot's metadata and its file, positioned at its start.
    pub fn current(&self) -> Result<Option<(SnapshotMeta, File)>> {
        let path = self.dir.join(CURRENT);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SnapshotFileError::Io(path, e)),
        };
        let (meta, _) = read_header(&mut file, &path)?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| SnapshotFileError::Io(path, e))?;
        Ok(Some((meta, file)))
    }

    /// Writes a snapshot of `meta` whose records `write_records` produces, makes it durable and
    /// publishes it (unless a newer one is current by then).
    pub fn build(
        &self,
        meta: &SnapshotMeta,
        write_records: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let path = self
            .dir
            .join(format!("{BUILDING_PREFIX}{}", snapshot_name(meta)));
        let io = |e| SnapshotFileError::Io(path.clone(), e);
        let mut out = BufWriter::new(WrittenBack::new(File::create(&path).map_err(io)?));
        write_header(&mut out, meta).map_err(io)?;
        write_records(&mut out).map_err(io)?;
        let file = out
            .into_inner()
            .map_err(|e| io(e.into_error()))?
            .into_file();
        fail::fail_point!("raft::snapshot::build::before_sync");
        file.sync_all().map_err(io)?;
        fail::fail_point!("raft::snapshot::build::before_publish");
        self.publish(&path, meta)
    }

    /// Checks a snapshot received from the leader before anything is replaced by it: durable,
    /// whole (every record decodes up to the end marker) and of the metadata openraft says it is.
    pub fn verify_received(&self, meta: &SnapshotMeta) -> Result<()> {
        let path = self.receiving_path();
        let io = |e| SnapshotFileError::Io(path.clone(), e);
        let mut file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // The install marker will point at this file: its bytes and its name must both last.
        file.sync_all().map_err(io)?;
        sync_dir(&self.dir)?;
        let (received, _) = read_header(&mut file, &path)?;
        if received.last_log_id != meta.last_log_id
            || received.last_membership != meta.last_membership
        {
            return Err(SnapshotFileError::Corrupt(
                path,
                format!(
                    "it holds the snapshot up to {:?}, not the one up to {:?}",
                    received.last_log_id, meta.last_log_id
                ),
            ));
        }
        let mut records = records_of(file, &path)?;
        while records
            .next_record()
            .map_err(|e| SnapshotFileError::Corrupt(path.clone(), e.to_string()))?
            .is_some()
        {}
        Ok(())
    }

    /// The records of the received snapshot.
    pub fn received_records(&self) -> Result<Decoder<BufReader<File>>> {
        let path = self.receiving_path();
        let file = File::open(&path).map_err(|e| SnapshotFileError::Io(path.clone(), e))?;
        records_of(file, &path)
    }

    /// The records of the current snapshot.
    pub fn current_records(&self) -> Result<Decoder<BufReader<File>>> {
        let path = self.dir.join(CURRENT);
        let file = File::open(&path).map_err(|e| SnapshotFileError::Io(path.clone(), e))?;
        records_of(file, &path)
    }

    /// Makes the received snapshot (already loaded into the state machine) the current one.
    pub fn publish_received(&self, meta: &SnapshotMeta) -> Result<()> {
        self.publish(&self.receiving_path(), meta)
    }

    /// Drops a received snapshot that was never loaded.
    pub fn discard_received(&self) {
        let _ = std::fs::remove_file(self.receiving_path());
    }

    fn publish(&self, path: &Path, meta: &SnapshotMeta) -> Result<()> {
        let _one_at_a_time = self.publish.lock();
        let newer = match self.current()? {
            Some((current, _)) => meta.last_log_id > current.last_log_id,
            None => true,
        };
        if !newer {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        let current = self.dir.join(CURRENT);
        std::fs::rename(path, &current).map_err(|e| SnapshotFileError::Io(current.clone(), e))?;
        fail::fail_point!("raft::snapshot::publish::before_dir_sync");
        sync_dir(&self.dir)
    }

    /// The previous release kept `current.meta` and `current.data`, published by two renames.
    /// They are adopted only when the data's own applied log id (its `raft_applied` record)
    /// matches the metadata; otherwise both go, and the member builds a new snapshot.
    fn adopt_legacy(&self) -> Result<()> {
        let (meta_path, data_path) = (self.dir.join(LEGACY_META), self.dir.join(LEGACY_DATA));
        if !meta_path.exists() && !data_path.exists() {
            return Ok(());
        }
        let adopted = self.convert_legacy(&meta_path, &data_path);
        if let Err(e) = &adopted {
            tracing::warn!(error = %e, "dropping the previous release's snapshot files; a new snapshot will be built");
        }
        for path in [&meta_path, &data_path] {
            let _ = std::fs::remove_file(path);
        }
        sync_dir(&self.dir)
    }

    fn convert_legacy(&self, meta_path: &Path, data_path: &Path) -> Result<()> {
        let corrupt = |why: String| SnapshotFileError::Corrupt(meta_path.to_path_buf(), why);
        let meta_bytes =
            std::fs::read(meta_path).map_err(|e| SnapshotFileError::Io(meta_path.into(), e))?;
        let meta: SnapshotMeta = super::legacy::snapshot_meta(&meta_bytes)
            .map_err(|e| corrupt(e.to_string()))?
            .try_into()
            .map_err(|e: super::record::RecordError| corrupt(e.to_string()))?;
        let data_io = |e| SnapshotFileError::Io(data_path.to_path_buf(), e);
        let data = File::open(data_path).map_err(data_io)?;
        let len = data.metadata().map_err(data_io)?.len();
        let mut records = Decoder::new(BufReader::new(data), len)
            .map_err(|e| SnapshotFileError::Corrupt(data_path.into(), e.to_string()))?;
        let mut applied = None;
        while let Some((cf, k, v)) = records
            .next_record()
            .map_err(|e| SnapshotFileError::Corrupt(data_path.into(), e.to_string()))?
        {
            if cf == crate::storage::Cf::Meta && k == super::state_machine::META_APPLIED {
                applied = Some(v);
            }
        }
        let applied: Option<super::types::LogId> = match applied {
            Some(v) => super::legacy::position(&v)
                .map_err(|e| corrupt(e.to_string()))?
                .map(Into::into),
            None => None,
        };
        if applied != meta.last_log_id {
            return Err(corrupt(format!(
                "metadata says {:?}, data holds {applied:?}",
                meta.last_log_id
            )));
        }
        let mut data = File::open(data_path).map_err(data_io)?;
        self.build(&meta, |out| std::io::copy(&mut data, out).map(|_| ()))
    }
}

/// A name for a snapshot's file while it is built: its position, and a sequence number so two
/// builds of the same position never share a file.
fn snapshot_name(meta: &SnapshotMeta) -> String {
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match &meta.last_log_id {
        Some(id) => format!(
            "{}-{}-{}.{n}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("empty.{n}"),
    }
}

fn write_header(out: &mut impl Write, meta: &SnapshotMeta) -> std::io::Result<()> {
    let bytes = super::record::encode_snapshot_meta(meta);
    out.write_all(MAGIC)?;
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(&bytes)
}

/// The metadata of a snapshot file and the offset of its records.
fn read_header(file: &mut File, path: &Path) -> Result<(SnapshotMeta, u64)> {
    let corrupt = |why: &str| SnapshotFileError::Corrupt(path.to_path_buf(), why.to_string());
    let io = |e| SnapshotFileError::Io(path.to_path_buf(), e);
    let len = file.metadata().map_err(io)?.len();
    let mut magic = vec![0; MAGIC.len()];
    let mut word = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || (magic != MAGIC && magic != FORMAT_1_MAGIC) {
        return Err(corrupt("bad magic"));
    }
    file.read_exact(&mut word)
        .map_err(|_| corrupt("truncated header"))?;
    let meta_len = u32::from_be_bytes(word);
    let records_at = (MAGIC.len() + 4) as u64 + u64::from(meta_len);
    if meta_len > MAX_META_BYTES || records_at > len {
        return Err(corrupt("bad metadata length"));
    }
    let mut bytes = vec![0; meta_len as usize];
    file.read_exact(&mut bytes)
        .map_err(|_| corrupt("truncated metadata"))?;
    let meta = if magic == MAGIC {
        super::record::decode_snapshot_meta(&bytes).map_err(|e| corrupt(&e.to_string()))?
    } else {
        super::legacy::snapshot_meta(&bytes)
            .map_err(|e| corrupt(&e.to_string()))?
            .try_into()
            .map_err(|e: super::record::RecordError| corrupt(&e.to_string()))?
    };
    Ok((meta, records_at))
}

/// Where the records of a snapshot file start.
pub fn records_offset(file: &mut File, path: &Path) -> Result<u64> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| SnapshotFileError::Io(path.to_path_buf(), e))?;
    Ok(read_header(file, path)?.1)
}

/// The header of data dir format 1 for metadata in that format's encoding: how a snapshot is
/// sent to a member of the previous release.
pub fn format_1_header(meta: &[u8]) -> Vec<u8> {
    let mut header = FORMAT_1_MAGIC.to_vec();
    header.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    header.extend_from_slice(meta);
    header
}

fn records_of(mut file: File, path: &Path) -> Result<Decoder<BufReader<File>>> {
    let io = |e| SnapshotFileError::Io(path.to_path_buf(), e);
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let (_, records_at) = read_header(&mut file, path)?;
    let len = file.metadata().map_err(io)?.len();
    file.seek(SeekFrom::Start(records_at)).map_err(io)?;
    Decoder::new(BufReader::new(file), len - records_at)
        .map_err(|e| SnapshotFileError::Corrupt(path.to_path_buf(), e.to_string()))
}

/// Makes the directory's entries (a rename, a new file) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    crate::storage::sync_dir(dir).map_err(|e| SnapshotFileError::Io(dir.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::format;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(crate::raft::types::log_id(1, 1, index)),
            last_membership: Default::default(),
        }
    }

    /// `meta(index)` as the previous release wrote it (data dir format 1).
    fn format_1_meta(index: u64) -> Vec<u8> {
        let meta = openraft09::SnapshotMeta::<u64, openraft09::BasicNode> {
            last_log_id: Some(openraft09::LogId::new(
                openraft09::CommittedLeaderId::new(1, 1),
                index,
            )),
            last_membership: Default::default(),
            snapshot_id: format!("1-{index}"),
        };
        bincode::serialize(&meta).unwrap()
    }

    fn records(body: &[u8]) -> impl FnOnce(&mut dyn Write) -> std::io::Result<()> + '_ {
        move |out| {
            out.write_all(format::MAGIC)?;
            out.write_all(body)?;
            out.write_all(&[0xff])
        }
    }

    /// Pieces written at their offsets, in several openings as openraft 0.9's chunks are, make
    /// up the file; a piece at offset 0 starts it afresh.
    #[test]
    fn a_received_file_holds_its_pieces_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECEIVING);
        std::fs::write(&path, vec![9u8; 5 << 20]).unwrap();
        let pieces = [vec![1u8; (1 << 20) + 7], vec![2u8; 3], vec![3u8; 2 << 20]];
        let mut offset = 0;
        for piece in &pieces {
            let mut file = ReceivingFile::open(&path, offset).unwrap();
            file.write_piece(piece).unwrap();
            assert_eq!(file.0.written, offset + piece.len() as u64);
            file.finish();
            offset += piece.len() as u64;
        }
        assert_eq!(std::fs::read(&path).unwrap(), pieces.concat());

        let mut streamed = ReceivingFile::open(&path, 0).unwrap();
        for piece in &pieces {
            streamed.write_piece(piece).unwrap();
        }
        assert!(streamed.0.handed_to_disk >= 3 << 20);
        streamed.finish();
        assert_eq!(std::fs::read(&path).unwrap(), pieces.concat());
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path()).unwrap();
        snaps.build(&meta(10), records(b"")).unwrap();
        snaps.build(&meta(5), records(b"")).unwrap();
        let (current, _) = snaps.current().unwrap().unwrap();
        assert_eq!(current.last_log_id, meta(10).last_log_id);
        snaps.build(&meta(12), records(b"")).unwrap();
        assert_eq!(
            snaps.current().unwrap().unwrap().0.last_log_id,
            meta(12).last_log_id
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leftovers, [CURRENT]);
    }

    #[test]
    fn a_received_snapshot_must_be_whole_and_of_the_announced_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path()).unwrap();
        let mut whole = Vec::new();
        write_header(&mut whole, &meta(7)).unwrap();
        records(b"")(&mut whole).unwrap();
        std::fs::write(snaps.receiving_path(), &whole).unwrap();
        snaps.verify_received(&meta(7)).unwrap();
        assert!(snaps.verify_received(&meta(8)).is_err(), "another snapshot");
        std::fs::write(snaps.receiving_path(), &whole[..whole.len() - 1]).unwrap();
        assert!(snaps.verify_received(&meta(7)).is_err(), "truncated");
        std::fs::write(snaps.receiving_path(), &whole[..3]).unwrap();
        assert!(snaps.verify_received(&meta(7)).is_err(), "no header");
    }

    #[test]
    fn a_file_of_data_dir_format_1_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path()).unwrap();
        let meta_bytes = format_1_meta(7);
        let mut file = FORMAT_1_MAGIC.to_vec();
        file.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
        file.extend_from_slice(&meta_bytes);
        records(b"")(&mut file).unwrap();
        std::fs::write(snaps.receiving_path(), &file).unwrap();
        snaps.verify_received(&meta(7)).unwrap();
    }

    #[test]
    fn a_legacy_pair_is_adopted_only_when_its_halves_match() {
        let applied = meta(9).last_log_id;
        let legacy_data = |applied: Option<crate::raft::types::LogId>| {
            let mut data = format::MAGIC.to_vec();
            let value = bincode::serialize(&applied.map(|id: crate::raft::types::LogId| {
                openraft09::LogId::new(openraft09::CommittedLeaderId::new(1u64, 1u64), id.index)
            }))
            .unwrap();
            data.push(1); // the Meta column family's tag
            data.extend_from_slice(
                &(super::super::state_machine::META_APPLIED.len() as u32).to_be_bytes(),
            );
            data.extend_from_slice(super::super::state_machine::META_APPLIED);
            data.extend_from_slice(&(value.len() as u32).to_be_bytes());
            data.extend_from_slice(&value);
            data.push(0xff);
            data
        };
        for (data_applied, adopted) in [(applied, true), (meta(4).last_log_id, false)] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(LEGACY_META), format_1_meta(9)).unwrap();
            std::fs::write(dir.path().join(LEGACY_DATA), legacy_data(data_applied)).unwrap();
            let snaps = SnapshotDir::open(dir.path()).unwrap();
            let current = snaps.current().unwrap();
            assert_eq!(current.is_some(), adopted);
            assert!(
                !dir.path().join(LEGACY_META).exists() && !dir.path().join(LEGACY_DATA).exists()
            );
        }
    }
}
