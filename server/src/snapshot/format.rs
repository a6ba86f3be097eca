//! The record encoding of a snapshot: a magic line, then every key and value of the state
//! machine's column families as `tag, u32 key length, key, u32 value length, value`, then an
//! end byte. Raft snapshots are exactly this; a backup is this followed by a sha256 trailer.

use std::io::{Read, Write};

use crate::storage::{self, Cf, Snapshot};

/// Names the format and its version; a reader refuses anything else.
pub const MAGIC: &[u8] = b"OXCDSNAP2\n";
const END: u8 = 0xff;
/// The state machine's column families and their record tags, in the order they are written.
const TAGGED_CFS: [(u8, Cf); 3] = [(0, Cf::Kv), (1, Cf::Meta), (2, Cf::Lease)];

/// The column families a snapshot holds (and a snapshot install replaces).
pub fn snapshot_cfs() -> impl Iterator<Item = Cf> {
    TAGGED_CFS.into_iter().map(|(_, cf)| cf)
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes every record of `snap` to `out`. Memory stays bounded whatever the store's size.
pub fn encode(snap: &Snapshot<'_>, out: &mut impl Write) -> Result<(), EncodeError> {
    out.write_all(MAGIC)?;
    for (tag, cf) in TAGGED_CFS {
        let mut written = Ok(());
        snap.scan_once(cf, &[], None, |k, v| {
            written = write_record(out, tag, k, v);
            written.is_ok()
        })?;
        written?;
    }
    out.write_all(&[END])?;
    Ok(())
}

fn write_record(out: &mut impl Write, tag: u8, k: &[u8], v: &[u8]) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    out.write_all(&(k.len() as u32).to_be_bytes())?;
    out.write_all(k)?;
    out.write_all(&(v.len() as u32).to_be_bytes())?;
    out.write_all(v)
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an oxcd snapshot")]
    NotASnapshot,
    #[error("snapshot is truncated")]
    Truncated,
    #[error("bad snapshot record tag {0}")]
    BadTag(u8),
    #[error("unexpected bytes after the end of the records")]
    BadPadding,
    #[error("reading the snapshot: {0}")]
    Io(std::io::Error),
}

/// One key and value of a column family.
pub type Record = (Cf, Vec<u8>, Vec<u8>);

/// Reads records back. It knows how many bytes the input holds, so a corrupt length can never
/// make it allocate more than the input could supply.
pub struct Decoder<R> {
    input: R,
    /// Bytes the input holds beyond those read so far.
    left: u64,
}

impl<R: Read> Decoder<R> {
    /// Checks the magic; `len` is the input's total length.
    pub fn new(input: R, len: u64) -> Result<Decoder<R>, DecodeError> {
        let mut decoder = Decoder { input, left: len };
        if len < MAGIC.len() as u64 || decoder.take(MAGIC.len() as u64)? != MAGIC {
            return Err(DecodeError::NotASnapshot);
        }
        Ok(decoder)
    }

    /// The next record, or None at the end marker.
    pub fn next_record(&mut self) -> Result<Option<Record>, DecodeError> {
        let tag = self.take(1)?[0];
        if tag == END {
            return Ok(None);
        }
        let (_, cf) = TAGGED_CFS
            .into_iter()
            .find(|(t, _)| *t == tag)
            .ok_or(DecodeError::BadTag(tag))?;
        let k = self.take_chunk()?;
        let v = self.take_chunk()?;
        Ok(Some((cf, k, v)))
    }

    /// Checks that the rest of the input, after the end marker, is zero padding shorter than
    /// `block` (a backup pads its records to whole blocks).
    pub fn expect_padding(mut self, block: u64) -> Result<(), DecodeError> {
        if self.left >= block || self.take(self.left)?.iter().any(|b| *b != 0) {
            return Err(DecodeError::BadPadding);
        }
        Ok(())
    }

    pub fn into_inner(self) -> R {
        self.input
    }

    fn take_chunk(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().expect("took 4 bytes"));
        self.take(len.into())
    }

    fn take(&mut self, n: u64) -> Result<Vec<u8>, DecodeError> {
        if n > self.left {
            return Err(DecodeError::Truncated);
        }
        let mut buf = vec![0u8; n as usize];
        self.input
            .read_exact(&mut buf)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => DecodeError::Truncated,
                _ => DecodeError::Io(e),
            })?;
        self.left -= n;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Engine;

    fn engine_with(records: &[(Cf, &[u8], &[u8])]) -> (tempfile::TempDir, std::sync::Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut batch = engine.batch();
        for (cf, k, v) in records {
            batch.put(*cf, k, v);
        }
        engine.write(batch, false).unwrap();
        (dir, engine)
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Record>, DecodeError> {
        let mut decoder = Decoder::new(bytes, bytes.len() as u64)?;
        let mut records = Vec::new();
        while let Some(r) = decoder.next_record()? {
            records.push(r);
        }
        decoder.expect_padding(1).unwrap();
        Ok(records)
    }

    #[test]
    fn records_round_trip_in_column_family_order() {
        let (_dir, engine) = engine_with(&[
            (Cf::Lease, b"l", b"ttl"),
            (Cf::Kv, b"k2", b""),
            (Cf::Kv, b"k1", b"value"),
            (Cf::Meta, b"m", b"meta"),
            (Cf::RaftState, b"not", b"copied"),
        ]);
        let snap = engine.snapshot();
        let mut bytes = Vec::new();
        encode(&snap, &mut bytes).unwrap();
        let got = decode_all(&bytes).unwrap();
        let want: Vec<Record> = [
            (Cf::Kv, &b"k1"[..], &b"value"[..]),
            (Cf::Kv, b"k2", b""),
            (Cf::Meta, b"m", b"meta"),
            (Cf::Lease, b"l", b"ttl"),
        ]
        .iter()
        .map(|(cf, k, v)| (*cf, k.to_vec(), v.to_vec()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_truncated_record_or_a_corrupt_length_is_refused_without_allocating_it() {
        let (_dir, engine) = engine_with(&[(Cf::Kv, b"key", b"value")]);
        let mut bytes = Vec::new();
        encode(&engine.snapshot(), &mut bytes).unwrap();
        for cut in MAGIC.len()..bytes.len() {
            assert!(
                matches!(decode_all(&bytes[..cut]), Err(DecodeError::Truncated)),
                "cut at {cut}"
            );
        }
        // The key length claims 4 GiB.
        let mut huge = bytes.clone();
        huge[MAGIC.len() + 1..MAGIC.len() + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode_all(&huge), Err(DecodeError::Truncated)));
        let mut bad_tag = bytes.clone();
        bad_tag[MAGIC.len()] = 7;
        assert!(matches!(decode_all(&bad_tag), Err(DecodeError::BadTag(7))));
        assert!(matches!(
            decode_all(b"SQLite format 3\0"),
            Err(DecodeError::NotASnapshot)
        ));
    }
}
