//! The Raft log's own files (data dir format 4). Entries are appended to segment files that
//! already hold [`SEGMENT_BYTES`] of written blocks (zeros, or an older, purged stretch of the
//! log) before they are used, so the fdatasync that makes an append durable overwrites blocks
//! the file has and commits no metadata: on ext4 here 115–136 µs, against 144–190 µs when the
//! log was appended to RocksDB's write-ahead log, which grew its files as it went (and each put
//! also passed through a 32 MiB memtable that was flushed only to be deleted).
//!
//! `raft-log/<index of the first entry, 20 digits>.seg`:
//! - a 32-byte header: `oxcdlog\0`, the format (u32, little-endian, 1), 4 zero bytes, the index
//!   of the segment's first entry (u64), a crc32c of those 24 bytes (u32), 4 zero bytes;
//! - one record per entry: the payload's length (u32), a crc32c (u32), the payload (a
//!   [`super::record`] entry). The crc is chained: it covers the payload starting from the
//!   previous record's crc (the header's for the first record), so a record left from the
//!   file's earlier use, or from before a truncation, never continues the log even where its
//!   bytes are intact;
//! - after the last record, zeros or such leftovers.
//!
//! At open each segment is read up to the first record that is incomplete, fails its crc or is
//! not the next index: what follows was never acknowledged (an append is acknowledged only
//! after an fsync that covered it). A segment is fsynced before the next one is written, and a
//! new segment's name is durable before anything in it counts, so a gap between segments is
//! corruption, and the member refuses to start.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use parking_lot::Mutex;

use super::record;
use super::types::LogId;
use super::written_back::WrittenBack;
use crate::storage::sync_dir;

/// The size of a segment: at tens of thousands of puts per second one is filled in a few
/// seconds, and each new one costs an fsync of the last and of the directory.
const SEGMENT_BYTES: u64 = 16 << 20;
const MAGIC: &[u8; 8] = b"oxcdlog\0";
const FORMAT: u32 = 1;
const HEADER_BYTES: u64 = 32;
const RECORD_HEADER_BYTES: u64 = 8;
const SUFFIX: &str = ".seg";
/// Files of a segment's size, written and synced, ready to be the next segments: `spare-0`, …
const SPARE_PREFIX: &str = "spare-";
const SPARE_BEING_MADE: &str = "spare.tmp";
/// Spares kept at most. Two, so that a purged segment is kept for reuse even while a zeroed
/// spare waits: at a steady rate every new segment is a purged one, and no zeros are written.
const MAX_SPARES: usize = 2;

fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the Raft log is corrupt: {what}"),
    )
}

pub(super) struct SegmentLog {
    shared: Arc<Shared>,
    /// Asks the spare maker for a new spare; dropped (stopping it) before it is joined.
    spare_requests: Option<Sender<()>>,
    spare_maker: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    /// False with --unsafe-no-fsync.
    fsync: bool,
    /// [`SEGMENT_BYTES`], but in tests.
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Consecutive indexes; the last segment is the one appended to.
    segments: VecDeque<Segment>,
    last: Option<LogId>,
    /// Entries before it are purged, though their segment may still hold them.
    first_readable: u64,
    /// The last segment has writes no fsync has covered yet.
    dirty: bool,
    spares: Vec<PathBuf>,
}

/// The names spares may have: `spare-0`, …
fn spare_names(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    (0..MAX_SPARES).map(move |n| dir.join(format!("{SPARE_PREFIX}{n}")))
}

impl Inner {
    /// Where a new spare goes, unless there are enough.
    fn free_spare_name(&self, dir: &Path) -> Option<PathBuf> {
        spare_names(dir).find(|path| !self.spares.contains(path))
    }
}

struct Segment {
    first: u64,
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    header_crc: u32,
    /// For each entry from `first` on: where its record starts, and the chained crc after it.
    records: Vec<(u64, u32)>,
    /// Where the next record goes.
    end: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first + self.records.len() as u64
    }

    fn chain(&self) -> u32 {
        self.records.last().map_or(self.header_crc, |&(_, crc)| crc)
    }

    /// The file range of the payload of the entry at `at` (its position in `records`).
    fn payload_span(&self, at: usize) -> (u64, u64) {
        let start = self.records[at].0 + RECORD_HEADER_BYTES;
        let end = self.records.get(at + 1).map_or(self.end, |&(next, _)| next);
        (start, end)
    }

    fn read_payload(&self, at: usize) -> io::Result<Vec<u8>> {
        let (start, end) = self.payload_span(at);
        let mut payload = vec![0; (end - start) as usize];
        self.file.read_exact_at(&mut payload, start)?;
        Ok(payload)
    }

    /// Reads a segment back: `None` when its header is not this segment's (a spare renamed into
    /// place whose new header never reached the disk).
    fn recover(path: PathBuf, first: u64) -> io::Result<Option<(Segment, Option<LogId>)>> {
        let bytes = std::fs::read(&path)?;
        let Some(header_crc) = parse_header(&bytes, first)? else {
            return Ok(None);
        };
        let mut records = Vec::new();
        let mut chain = header_crc;
        let mut at = HEADER_BYTES as usize;
        let mut last = None;
        while let Some(len_bytes) = bytes.get(at..at + 4) {
            let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
            let body = at + RECORD_HEADER_BYTES as usize;
            let (Some(crc_bytes), Some(payload)) =
                (bytes.get(at + 4..body), bytes.get(body..body + len))
            else {
                break;
            };
            let crc = crc32c::crc32c_append(chain, payload);
            if len == 0 || crc != u32::from_le_bytes(crc_bytes.try_into().expect("4 bytes")) {
                break;
            }
            match record::entry_log_id(payload) {
                Ok(id) if id.index == first + records.len() as u64 => last = Some(id),
                _ => break,
            }
            records.push((at as u64, crc));
            chain = crc;
            at = body + len;
        }
        let file = File::options().read(true).write(true).open(&path)?;
        let segment = Segment {
            first,
            file: Arc::new(file),
            path,
            size: bytes.len() as u64,
            header_crc,
            records,
            end: at as u64,
        };
        Ok(Some((segment, last)))
    }
}

fn header(first: u64) -> ([u8; HEADER_BYTES as usize], u32) {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    header[16..24].copy_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&header[..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    (header, crc)
}

/// The header's crc (the chain's start) when it is a valid header for a segment starting at
/// `first`; an error for a segment of a newer format.
fn parse_header(bytes: &[u8], first: u64) -> io::Result<Option<u32>> {
    let Some(header) = bytes.get(..HEADER_BYTES as usize) else {
        return Ok(None);
    };
    let crc = crc32c::crc32c(&header[..24]);
    if &header[..8] != MAGIC || header[24..28] != crc.to_le_bytes() {
        return Ok(None);
    }
    let format = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if format > FORMAT {
        return Err(corrupt(format!(
            "a segment has format {format}, newer than this build's {FORMAT}"
        )));
    }
    let starts_at = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    Ok((starts_at == first).then_some(crc))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// A file of `len` bytes of written zeros, handed to the disk as it is written, then synced.
fn zero_filled(path: &Path, len: u64, fsync: bool) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut out = WrittenBack::new(file);
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    let file = out.into_file();
    if fsync {
        file.sync_data()?;
    }
    Ok(file)
}

impl SegmentLog {
    /// Opens the log in `dir` (created if missing), reading back what it holds after `purged`,
    /// the last index purged.
    pub fn open(dir: &Path, purged: Option<u64>, fsync: bool) -> io::Result<SegmentLog> {
        Self::open_with(dir, purged, fsync, SEGMENT_BYTES)
    }

    fn open_with(
        dir: &Path,
        purged: Option<u64>,
        fsync: bool,
        segment_bytes: u64,
    ) -> io::Result<SegmentLog> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if fsync {
                crate::storage::sync_dir_and_parent(dir)?;
            }
        }
        let _ = std::fs::remove_file(dir.join(SPARE_BEING_MADE));
        let mut named = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(SUFFIX) {
                let first = first
                    .parse::<u64>()
                    .map_err(|_| corrupt(format!("{name} is not a segment name")))?;
                named.push(first);
            }
        }
        named.sort_unstable();
        let mut inner = Inner {
            first_readable: purged.map_or(0, |purged| purged + 1),
            ..Inner::default()
        };
        inner.spares = spare_names(dir)
            .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() == segment_bytes))
            .collect();
        let count = named.len();
        for (n, first) in named.into_iter().enumerate() {
            let path = dir.join(segment_name(first));
            let Some((segment, last)) = Segment::recover(path.clone(), first)? else {
                if n + 1 == count {
                    // The new segment's header never reached the disk, nor anything after it.
                    std::fs::remove_file(&path)?;
                    break;
                }
                return Err(corrupt(format!("{} has no valid header", path.display())));
            };
            if purged.is_some_and(|purged| segment.next_index() <= purged + 1) {
                std::fs::remove_file(&segment.path)?;
                continue;
            }
            if let Some(previous) = inner.segments.back() {
                if previous.next_index() != first {
                    return Err(corrupt(format!(
                        "its entries stop at {} and go on from {first}",
                        previous.next_index()
                    )));
                }
            }
            inner.last = last.or(inner.last);
            inner.segments.push_back(segment);
        }
        if let (Some(purged), Some(front)) = (purged, inner.segments.front()) {
            if front.first > purged + 1 {
                return Err(corrupt(format!(
                    "it was purged up to {purged} and goes on from {}",
                    front.first
                )));
            }
        }
        if fsync {
            // What a member killed before its fsync had written is read back from the page
            // cache, and it counts as this member's log from here on (a leader may commit an
            // entry on the strength of it): it is made durable before anything is answered. Only
            // the last segment can hold such writes: each was synced before the next was used.
            if let Some(last) = inner.segments.back() {
                last.file.sync_data()?;
            }
            sync_dir(dir)?;
        }
        let shared = Arc::new(Shared {
            dir: dir.into(),
            fsync,
            segment_bytes,
            inner: Mutex::new(inner),
        });
        let (spare_requests, requests) = channel();
        let maker = shared.clone();
        let spare_maker = std::thread::Builder::new()
            .name("raft-log-spares".into())
            .spawn(move || {
                while requests.recv().is_ok() {
                    if let Err(e) = maker.make_spare() {
                        tracing::warn!(error = %e, "preparing the next Raft log segment");
                    }
                }
            })?;
        let log = SegmentLog {
            shared,
            spare_requests: Some(spare_requests),
            spare_maker: Some(spare_maker),
        };
        let mut inner = log.shared.inner.lock();
        if inner.spares.is_empty() && inner.segments.is_empty() {
            // The first append is waiting for a segment: made now, before serving.
            let path = inner.free_spare_name(dir).expect("no spares");
            zero_filled(&path, segment_bytes, fsync)?;
            inner.spares.push(path);
        } else if inner.spares.is_empty() {
            log.request_spare();
        }
        drop(inner);
        Ok(log)
    }

    fn request_spare(&self) {
        if let Some(requests) = &self.spare_requests {
            let _ = requests.send(());
        }
    }

    /// Whether [`SegmentLog::append`] writes these entries after the last one in the last
    /// segment, with no new segment or cut (each of which syncs).
    pub fn fits(&self, entries: &[(LogId, Vec<u8>)]) -> bool {
        let Some((first, _)) = entries.first() else {
            return true;
        };
        let bytes: u64 = entries
            .iter()
            .map(|(_, payload)| RECORD_HEADER_BYTES + payload.len() as u64)
            .sum();
        let inner = self.shared.inner.lock();
        let last = inner.segments.back();
        last.is_some_and(|s| s.next_index() == first.index && s.end + bytes <= s.size)
    }

    /// The id of the last entry, if the log holds any.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.shared.inner.lock().last
    }

    /// Writes entries (consecutive, each with its encoded record) after the log's last one,
    /// replacing those from the first one's index on if the log already has that index. Durable
    /// only after the next [`SegmentLog::sync`].
    pub fn append(&self, entries: &[(LogId, Vec<u8>)]) -> io::Result<()> {
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        let mut inner = self.shared.inner.lock();
        match inner.segments.back().map(Segment::next_index) {
            Some(next) if first.index < next => {
                self.shared.truncate_locked(&mut inner, first.index)?
            }
            Some(next) if first.index > next => {
                return Err(io::Error::other(format!(
                    "an append at {} leaves a gap after the log's last entry {}",
                    first.index,
                    next - 1
                )))
            }
            _ => {}
        }
        let mut batch = Vec::new();
        let mut records = Vec::new();
        for (id, payload) in entries {
            let need = RECORD_HEADER_BYTES + payload.len() as u64;
            let fits = inner
                .segments
                .back()
                .is_some_and(|s| s.end + batch.len() as u64 + need <= s.size);
            if !fits {
                self.shared
                    .write_locked(&mut inner, &mut batch, &mut records)?;
                self.roll_over(&mut inner, id.index, need)?;
            }
            let segment = inner.segments.back().expect("rolled over");
            let chain = records
                .last()
                .map_or_else(|| segment.chain(), |&(_, crc)| crc);
            let crc = crc32c::crc32c_append(chain, payload);
            records.push((segment.end + batch.len() as u64, crc));
            batch.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            batch.extend_from_slice(&crc.to_le_bytes());
            batch.extend_from_slice(payload);
        }
        self.shared
            .write_locked(&mut inner, &mut batch, &mut records)?;
        inner.last = entries.last().map(|(id, _)| *id);
        Ok(())
    }

    /// Starts a segment for entries from `first` on, with room for a record of `need` bytes.
    fn roll_over(&self, inner: &mut Inner, first: u64, need: u64) -> io::Result<()> {
        let shared = &self.shared;
        match inner.segments.back() {
            // An empty segment (cut back to nothing) is replaced by the new one of its name.
            Some(last) if last.records.is_empty() => {
                inner.segments.pop_back();
            }
            // Everything in the segment is on disk before anything after it is.
            Some(last) if shared.fsync => last.file.sync_data()?,
            _ => {}
        }
        let path = shared.dir.join(segment_name(first));
        let size = shared
            .segment_bytes
            .max((HEADER_BYTES + need).next_multiple_of(4096));
        let spare = (size == shared.segment_bytes).then(|| inner.spares.pop());
        let file = if let Some(spare) = spare.flatten() {
            std::fs::rename(spare, &path)?;
            File::options().read(true).write(true).open(&path)?
        } else {
            zero_filled(&path, size, shared.fsync)?
        };
        let (header, header_crc) = header(first);
        file.write_all_at(&header, 0)?;
        fail::fail_point!("raft::log::roll_over::before_dir_sync");
        if shared.fsync {
            sync_dir(&shared.dir)?;
        }
        inner.segments.push_back(Segment {
            first,
            file: Arc::new(file),
            path,
            size,
            header_crc,
            records: Vec::new(),
            end: HEADER_BYTES,
        });
        inner.dirty = true;
        if inner.spares.is_empty() {
            self.request_spare();
        }
        Ok(())
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let file = {
            let mut inner = self.shared.inner.lock();
            if !std::mem::take(&mut inner.dirty) {
                return Ok(());
            }
            inner.segments.back().map(|s| s.file.clone())
        };
        match file {
            Some(file) if self.shared.fsync => file.sync_data().inspect_err(|_| {
                self.shared.inner.lock().dirty = true;
            }),
            _ => Ok(()),
        }
    }

    /// The encoded entries from `start` (or the first the log holds) to before `end`, stopping
    /// once `budget` bytes are read (at least one entry is).
    pub fn read(&self, start: u64, end: Option<u64>, budget: u64) -> io::Result<Vec<Vec<u8>>> {
        let mut pieces = Vec::new();
        {
            let inner = self.shared.inner.lock();
            let mut bytes = 0;
            'segments: for segment in &inner.segments {
                let from = start.max(segment.first).max(inner.first_readable);
                let to = end.unwrap_or(u64::MAX).min(segment.next_index());
                for index in from..to {
                    let at = (index - segment.first) as usize;
                    let (payload_start, payload_end) = segment.payload_span(at);
                    pieces.push((segment.file.clone(), payload_start, payload_end));
                    bytes += payload_end - payload_start;
                    if bytes >= budget {
                        break 'segments;
                    }
                }
            }
        }
        let mut entries = Vec::with_capacity(pieces.len());
        let mut at = 0;
        while at < pieces.len() {
            // One read for each run of records that lie back to back in one file.
            let (file, from, mut to) = (&pieces[at].0, pieces[at].1, pieces[at].2);
            let mut run = at + 1;
            while let Some((next_file, next_from, next_to)) = pieces.get(run) {
                if !Arc::ptr_eq(file, next_file) || *next_from != to + RECORD_HEADER_BYTES {
                    break;
                }
                to = *next_to;
                run += 1;
            }
            let mut buf = vec![0; (to - from) as usize];
            file.read_exact_at(&mut buf, from)?;
            for (_, start, end) in &pieces[at..run] {
                let (start, end) = ((start - from) as usize, (end - from) as usize);
                entries.push(buf[start..end].to_vec());
            }
            at = run;
        }
        Ok(entries)
    }

    /// Removes the entries from `index` on, durably.
    pub fn truncate_from(&self, index: u64) -> io::Result<()> {
        let mut inner = self.shared.inner.lock();
        self.shared.truncate_locked(&mut inner, index)
    }

    /// Drops the segments whose entries all lie at or before `index`, keeping them as spares
    /// while there are fewer than [`MAX_SPARES`]. Not synced: the purge point is recorded (durably) first,
    /// and a segment that comes back is dropped again at the next open.
    pub fn purge_through(&self, index: u64) -> io::Result<()> {
        let mut inner = self.shared.inner.lock();
        inner.first_readable = inner.first_readable.max(index + 1);
        while inner
            .segments
            .front()
            .is_some_and(|s| s.next_index() <= index + 1)
        {
            let segment = inner.segments.pop_front().expect("checked");
            let spare = inner.free_spare_name(&self.shared.dir);
            if let Some(spare) = spare.filter(|_| segment.size == self.shared.segment_bytes) {
                std::fs::rename(&segment.path, &spare)?;
                inner.spares.push(spare);
            } else {
                std::fs::remove_file(&segment.path)?;
            }
        }
        if inner.segments.is_empty() {
            inner.last = None;
            inner.dirty = false;
        }
        Ok(())
    }
}

impl Shared {
    /// Writes `batch` (whole records) at the end of the last segment.
    fn write_locked(
        &self,
        inner: &mut Inner,
        batch: &mut Vec<u8>,
        records: &mut Vec<(u64, u32)>,
    ) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let segment = inner.segments.back_mut().expect("a segment to write to");
        segment.file.write_all_at(batch, segment.end)?;
        segment.end += batch.len() as u64;
        segment.records.append(records);
        batch.clear();
        inner.dirty = true;
        Ok(())
    }

    fn truncate_locked(&self, inner: &mut Inner, index: u64) -> io::Result<()> {
        let mut removed = false;
        while inner.segments.back().is_some_and(|s| s.first >= index) {
            let segment = inner.segments.pop_back().expect("checked");
            std::fs::remove_file(&segment.path)?;
            removed = true;
        }
        if let Some(segment) = inner.segments.back_mut() {
            if segment.next_index() > index {
                let keep = (index - segment.first) as usize;
                segment.end = segment.records[keep].0;
                segment.records.truncate(keep);
                // The chain already rejects what is left after the new end; clearing its first
                // record header makes the cut itself durable, not only the next append.
                segment
                    .file
                    .write_all_at(&[0; RECORD_HEADER_BYTES as usize], segment.end)?;
                if self.fsync {
                    segment.file.sync_data()?;
                }
            }
        }
        if removed && self.fsync {
            sync_dir(&self.dir)?;
        }
        inner.last = match inner.segments.back() {
            Some(segment) if !segment.records.is_empty() => {
                let payload = segment.read_payload(segment.records.len() - 1)?;
                Some(record::entry_log_id(&payload).map_err(corrupt)?)
            }
            _ => None,
        };
        Ok(())
    }

    /// Zero-fills a spare unless one is ready (a purged segment may have become one meanwhile).
    fn make_spare(&self) -> io::Result<()> {
        if !self.inner.lock().spares.is_empty() {
            return Ok(());
        }
        let made = self.dir.join(SPARE_BEING_MADE);
        zero_filled(&made, self.segment_bytes, self.fsync)?;
        let mut inner = self.inner.lock();
        match inner.free_spare_name(&self.dir) {
            Some(spare) if inner.spares.is_empty() => {
                std::fs::rename(&made, &spare)?;
                inner.spares.push(spare);
                Ok(())
            }
            _ => std::fs::remove_file(&made),
        }
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        self.spare_requests.take();
        if let Some(maker) = self.spare_maker.take() {
            let _ = maker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{log_id, Entry};

    /// Segments of 4 KiB: an entry of [`PAYLOAD`] bytes fills one in a few dozen appends.
    const SMALL: u64 = 4096;
    const PAYLOAD: usize = 200;

    fn encoded(term: u64, index: u64) -> (LogId, Vec<u8>) {
        let id = log_id(term, 1, index);
        let entry = Entry {
            log_id: id,
            payload: openraft::EntryPayload::Blank,
        };
        let mut bytes = record::encode_entry(&entry);
        // Unknown fields pad the record to a size that fills segments quickly; decoders skip them.
        let padding = PAYLOAD.saturating_sub(bytes.len() + 3);
        prost::encoding::bytes::encode(1000, &vec![term as u8; padding], &mut bytes);
        (id, bytes)
    }

    fn open(dir: &Path, purged: Option<u64>) -> SegmentLog {
        SegmentLog::open_with(dir, purged, true, SMALL).unwrap()
    }

    fn append(log: &SegmentLog, term: u64, indexes: std::ops::RangeInclusive<u64>) {
        let entries: Vec<_> = indexes.map(|i| encoded(term, i)).collect();
        log.append(&entries).unwrap();
        log.sync().unwrap();
    }

    /// (term, index) of every entry the log reads back from `start`.
    fn ids(log: &SegmentLog, start: u64) -> Vec<(u64, u64)> {
        let read = log.read(start, None, u64::MAX).unwrap();
        let ids = read
            .iter()
            .map(|bytes| record::entry_log_id(bytes).unwrap());
        ids.map(|id| (id.leader_id.term, id.index)).collect()
    }

    fn run(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
        indexes.map(|i| (term, i)).collect()
    }

    /// Runs of entries one after the other, each of one term.
    fn runs(parts: &[(u64, std::ops::RangeInclusive<u64>)]) -> Vec<(u64, u64)> {
        let parts = parts
            .iter()
            .map(|(term, indexes)| run(*term, indexes.clone()));
        parts.flatten().collect()
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(SUFFIX))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn entries_across_segments_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        append(&log, 1, 1..=50);
        append(&log, 2, 51..=100);
        assert!(segments(dir.path()).len() > 3, "{:?}", segments(dir.path()));
        let expected = runs(&[(1, 1..=50), (2, 51..=100)]);
        assert_eq!(ids(&log, 0), expected);
        drop(log);

        let log = open(dir.path(), None);
        assert_eq!(ids(&log, 0), expected);
        assert_eq!(log.last_log_id(), Some(log_id(2, 1, 100)));
        assert_eq!(ids(&log, 98), run(2, 98..=100));
        let budget = log.read(10, Some(90), 1).unwrap();
        assert_eq!(budget.len(), 1, "a budget still reads one entry");
        append(&log, 2, 101..=101);
        assert_eq!(log.last_log_id(), Some(log_id(2, 1, 101)));
    }

    /// A record the crash cut short ends the log; the next append goes where it was.
    #[test]
    fn a_torn_last_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        append(&log, 1, 1..=5);
        let last = segments(dir.path()).pop().unwrap();
        drop(log);
        let path = dir.path().join(&last);
        let mut bytes = std::fs::read(&path).unwrap();
        let end = HEADER_BYTES as usize + 5 * (PAYLOAD + RECORD_HEADER_BYTES as usize);
        bytes[end - 10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();

        let log = open(dir.path(), None);
        assert_eq!(ids(&log, 0), run(1, 1..=4));
        assert_eq!(log.last_log_id(), Some(log_id(1, 1, 4)));
        append(&log, 2, 5..=6);
        drop(log);
        let reopened = open(dir.path(), None);
        assert_eq!(ids(&reopened, 0), runs(&[(1, 1..=4), (2, 5..=6)]));
    }

    /// Entries cut off by a truncation stay cut off after a reopen, even where the entries
    /// that replaced them are exactly as long (so an old record starts where a new one ends).
    #[test]
    fn truncated_entries_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        append(&log, 1, 1..=40);
        log.truncate_from(12).unwrap();
        assert_eq!(log.last_log_id(), Some(log_id(1, 1, 11)));
        drop(log);
        let log = open(dir.path(), None);
        assert_eq!(ids(&log, 0), run(1, 1..=11));
        append(&log, 2, 12..=13);
        drop(log);

        let log = open(dir.path(), None);
        assert_eq!(ids(&log, 0), runs(&[(1, 1..=11), (2, 12..=13)]));
        // An append over existing entries replaces them and what followed.
        append(&log, 3, 5..=5);
        drop(log);
        let reopened = open(dir.path(), None);
        assert_eq!(ids(&reopened, 0), runs(&[(1, 1..=4), (3, 5..=5)]));
    }

    /// A segment file used again (a purged one becomes the spare) holds old records after the
    /// new ones, at the very offsets the new ones continue from: none of them reads back.
    #[test]
    fn a_reused_file_holds_only_what_was_written_into_it_again() {
        let used = tempfile::tempdir().unwrap();
        let log = open(used.path(), None);
        append(&log, 1, 1..=60);
        log.purge_through(30).unwrap();
        assert_eq!(ids(&log, 0)[0], (1, 31));
        drop(log);
        assert_eq!(ids(&open(used.path(), Some(30)), 0), run(1, 31..=60));

        let dir = tempfile::tempdir().unwrap();
        let first = segments(used.path()).into_iter().next().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::copy(used.path().join(&first), dir.path().join("spare-0")).unwrap();
        let log = open(dir.path(), None);
        // Its first entry at the same index as the old file's, so even the header is the same.
        let old_first: u64 = first.strip_suffix(SUFFIX).unwrap().parse().unwrap();
        assert!(old_first > 1 && old_first <= 31, "{old_first}");
        append(&log, 2, old_first..=old_first + 2);
        drop(log);
        let log = open(dir.path(), None);
        assert_eq!(ids(&log, 0), run(2, old_first..=old_first + 2));
    }

    /// At a steady rate, purged segments are the next ones: the files are reused, not made.
    #[test]
    fn purged_segments_become_the_next_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        let inode = |name: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(dir.path().join(name)).unwrap().ino()
        };
        append(&log, 1, 1..=60);
        let purged: Vec<_> = segments(dir.path())[..2].iter().map(|n| inode(n)).collect();
        let through = log.shared.inner.lock().segments[1].next_index() - 1;
        log.purge_through(through).unwrap();
        assert_eq!(log.shared.inner.lock().spares.len(), MAX_SPARES);
        append(&log, 1, 61..=120);
        let now: Vec<_> = segments(dir.path()).iter().map(|n| inode(n)).collect();
        // Both purged files are reused unless the spare maker had a zeroed spare ready before
        // the purge, which then keeps one of the two places.
        assert!(
            purged.iter().any(|ino| now.contains(ino)),
            "no purged segment's file is in use again"
        );
        drop(log);
        let log = open(dir.path(), Some(through));
        assert_eq!(ids(&log, 0), run(1, through + 1..=120));
    }

    /// After a purge past the whole log (a snapshot installed), the log starts again anywhere.
    #[test]
    fn a_log_purged_past_its_end_starts_again_after_the_purge() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        append(&log, 1, 1..=10);
        log.purge_through(500).unwrap();
        assert_eq!(log.last_log_id(), None);
        append(&log, 3, 501..=503);
        drop(log);
        let log = open(dir.path(), Some(500));
        assert_eq!(ids(&log, 0), run(3, 501..=503));
        let gap = log.append(&[encoded(3, 510)]).unwrap_err();
        assert!(gap.to_string().contains("gap"), "{gap}");
    }

    #[test]
    fn a_missing_segment_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        append(&log, 1, 1..=100);
        drop(log);
        let names = segments(dir.path());
        std::fs::remove_file(dir.path().join(&names[1])).unwrap();
        let e = SegmentLog::open_with(dir.path(), None, true, SMALL)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("the Raft log is corrupt"), "{e}");
    }

    /// A crash between a new segment's rename and the sync of its header leaves a file that
    /// is not that segment: it held nothing acknowledged and goes; the log ends before it.
    #[test]
    fn a_new_segment_without_its_header_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        append(&log, 1, 1..=30);
        let next = log
            .shared
            .inner
            .lock()
            .segments
            .back()
            .unwrap()
            .next_index();
        drop(log);
        let stale = header(7).0;
        std::fs::write(dir.path().join(segment_name(next)), stale).unwrap();

        let log = open(dir.path(), None);
        assert_eq!(ids(&log, 0), run(1, 1..=30));
        assert!(!dir.path().join(segment_name(next)).exists());
        append(&log, 1, 31..=60);
        drop(log);
        assert_eq!(ids(&open(dir.path(), None), 0), run(1, 1..=60));
    }

    /// An entry larger than a segment gets a segment of its own size.
    #[test]
    fn an_entry_larger_than_a_segment_has_a_segment_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        append(&log, 1, 1..=2);
        let (id, mut big) = encoded(1, 3);
        prost::encoding::bytes::encode(1001, &vec![7u8; 3 * SMALL as usize], &mut big);
        log.append(&[(id, big.clone())]).unwrap();
        append(&log, 1, 4..=5);
        drop(log);
        let log = open(dir.path(), None);
        assert_eq!(ids(&log, 0), run(1, 1..=5));
        assert_eq!(log.read(3, Some(4), u64::MAX).unwrap(), vec![big]);
    }
}
