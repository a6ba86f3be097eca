//! etcd 3.7's RangeStream: one range read served as a sequence of chunks, each an ordinary
//! limited range from where the previous one stopped, all at the revision the first one read.
//! Only the chunk being read is in memory; the caller asks for the next one when the client
//! has taken the previous one.
//!
//! The chunking is etcd's, so clients see the same chunk boundaries: the first chunk has 10
//! keys; each next one doubles when the previous chunk's encoded response was under half of
//! `--max-request-bytes` and halves when it was over twice that. Only the last chunk carries
//! the header (with the revision the stream started at), `more` and `count`.

use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    range_request::SortTarget, RangeRequest, RangeResponse, ResponseHeader,
};
use prost::Message;

use super::apply;
use crate::error::EtcdError;
use crate::mvcc::{KeyRange, MvccStore, RangeOptions};

/// Keys in the first chunk (etcd's `initialStreamChunkLimit`).
const INITIAL_CHUNK: i64 = 10;

pub struct RangeStreamer {
    store: Arc<MvccStore>,
    /// The next chunk's request: its key is where the last chunk stopped, its limit the
    /// chunk's size, its revision pinned once the first chunk has read.
    next: RangeRequest,
    /// The client's limit (`i64::MAX` for none).
    total_limit: i64,
    sent: i64,
    /// The store's revision when the first chunk read, reported in the last chunk's header.
    header_rev: i64,
    /// What a chunk's encoded size is steered towards (etcd: `--max-request-bytes`).
    target_size: usize,
    finished: bool,
}

impl RangeStreamer {
    /// `r` has passed `validate::check_range_stream`.
    pub fn new(store: Arc<MvccStore>, mut r: RangeRequest, target_size: usize) -> RangeStreamer {
        let total_limit = if r.limit == 0 { i64::MAX } else { r.limit };
        // A negative limit stays negative: unlimited, the whole range in one chunk (as etcd).
        r.limit = INITIAL_CHUNK.min(total_limit);
        RangeStreamer {
            store,
            next: r,
            total_limit,
            sent: 0,
            header_rev: 0,
            target_size,
            finished: false,
        }
    }

    /// Whether the last chunk (or an error) has been returned.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The next chunk, until [`finished`](Self::finished). Reads the store: run it off the
    /// async workers.
    pub fn next_chunk(&mut self) -> Result<RangeResponse, EtcdError> {
        let chunk = self.read_chunk();
        if chunk.is_err() {
            self.finished = true;
        }
        chunk
    }

    fn read_chunk(&mut self) -> Result<RangeResponse, EtcdError> {
        let store = self.store.as_ref();
        if self.next.count_only {
            self.finished = true;
            let resp = apply::range_with(store, &self.next, true)?;
            return Ok(RangeResponse {
                header: Some(ResponseHeader {
                    revision: resp.header.map_or(0, |h| h.revision),
                    ..Default::default()
                }),
                count: resp.count,
                ..Default::default()
            });
        }
        let mut resp = apply::range_with(store, &self.next, true)?;
        if self.next.keys_only && self.next.sort_target != SortTarget::Value as i32 {
            // etcd 3.7 answers keys_only from its index alone (unless it sorts by value): no
            // value, and no lease either.
            resp.kvs.iter_mut().for_each(|kv| kv.lease = 0);
        }
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if self.header_rev == 0 {
            self.header_rev = rev;
            // Later chunks read at the same revision, so writes made meanwhile are not seen
            // and a compaction past it fails the stream. (A negative revision, "the latest",
            // is left as it is, as etcd leaves it.)
            if self.next.revision == 0 {
                self.next.revision = rev;
            }
        }
        self.sent += resp.kvs.len() as i64;
        // The size of the chunk as read (header with the revision, count, more) steers the
        // next chunk's limit, as etcd measures it.
        let size = resp.encoded_len();
        let next_key = match (resp.more, resp.kvs.last()) {
            (true, Some(last)) => {
                let mut k = last.key.clone();
                k.push(0);
                Some(k)
            }
            _ => None,
        };
        let done = !resp.more || self.sent == self.total_limit;
        let mut out = RangeResponse {
            kvs: std::mem::take(&mut resp.kvs),
            ..Default::default()
        };
        if done {
            self.finished = true;
            out.header = Some(ResponseHeader {
                revision: self.header_rev,
                ..Default::default()
            });
            out.more = resp.more;
            out.count = self.sent;
            if let Some(from) = next_key {
                let rest = store.range(
                    &KeyRange::new(&from, &self.next.range_end),
                    RangeOptions {
                        rev: self.next.revision,
                        count_only: true,
                        ..Default::default()
                    },
                )?;
                out.count += rest.count as i64;
            }
            return Ok(out);
        }
        if let Some(from) = next_key {
            self.next.key = from;
        }
        self.next.limit = next_chunk_limit(self.next.limit, size, self.target_size)
            .min(self.total_limit - self.sent);
        Ok(out)
    }
}

/// etcd's `adjustChunkLimit`: double below half the target size, halve above twice it, never
/// below one key.
fn next_chunk_limit(last_limit: i64, last_size: usize, target_size: usize) -> i64 {
    let limit = if last_size < target_size / 2 {
        last_limit.saturating_mul(2)
    } else if last_size > target_size.saturating_mul(2) {
        last_limit / 2
    } else {
        last_limit
    };
    limit.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Engine;

    fn store_with(keys: usize, value_len: usize) -> (tempfile::TempDir, Arc<MvccStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(Engine::open(dir.path()).unwrap()).unwrap();
        let mut w = store.writer(false);
        for i in 0..keys {
            w.txn()
                .put(format!("k{i:05}").as_bytes(), vec![b'v'; value_len], 0);
        }
        w.commit().unwrap();
        (dir, store)
    }

    fn all(r: RangeRequest, store: &Arc<MvccStore>, target: usize) -> Vec<RangeResponse> {
        let mut s = RangeStreamer::new(store.clone(), r, target);
        rest(&mut s)
    }

    fn rest(s: &mut RangeStreamer) -> Vec<RangeResponse> {
        std::iter::from_fn(|| (!s.finished()).then(|| s.next_chunk().unwrap())).collect()
    }

    fn prefix(limit: i64) -> RangeRequest {
        RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            limit,
            ..Default::default()
        }
    }

    #[test]
    fn chunks_grow_and_only_the_last_has_the_header() {
        let (_dir, store) = store_with(100, 10);
        let chunks = all(prefix(0), &store, 1 << 20);
        let sizes: Vec<_> = chunks.iter().map(|c| c.kvs.len()).collect();
        assert_eq!(sizes, [10, 20, 40, 30]);
        assert!(chunks[..3]
            .iter()
            .all(|c| c.header.is_none() && c.count == 0));
        let last = chunks.last().unwrap();
        assert_eq!(last.header.as_ref().unwrap().revision, 101);
        assert_eq!((last.count, last.more), (100, false));
    }

    #[test]
    fn a_limit_stops_the_stream_and_counts_the_rest() {
        let (_dir, store) = store_with(100, 10);
        let chunks = all(prefix(25), &store, 1 << 20);
        let sizes: Vec<_> = chunks.iter().map(|c| c.kvs.len()).collect();
        assert_eq!(sizes, [10, 15]);
        let last = chunks.last().unwrap();
        assert_eq!((last.count, last.more), (100, true));
    }

    #[test]
    fn big_values_shrink_chunks() {
        let (_dir, store) = store_with(40, 1000);
        // 10 values of 1 KB are over twice a 4 KB target: the next chunk has 5 keys, and 5 KB
        // is within [half, twice] the target, so 5 it stays.
        let sizes: Vec<_> = all(prefix(0), &store, 4096)
            .iter()
            .map(|c| c.kvs.len())
            .collect();
        assert_eq!(sizes, [10, 5, 5, 5, 5, 5, 5]);
    }

    #[test]
    fn later_chunks_read_at_the_first_chunks_revision() {
        let (_dir, store) = store_with(30, 10);
        let mut s = RangeStreamer::new(store.clone(), prefix(0), 1 << 20);
        assert_eq!(s.next_chunk().unwrap().kvs.len(), 10);
        let mut w = store.writer(false);
        w.txn().put(b"k00015", b"new".to_vec(), 0);
        w.txn().put(b"k99999", b"new".to_vec(), 0);
        w.commit().unwrap();
        let rest = rest(&mut s);
        let kvs: Vec<_> = rest.iter().flat_map(|c| c.kvs.iter()).collect();
        assert_eq!(kvs.len(), 20);
        assert!(kvs.iter().all(|kv| kv.value == b"vvvvvvvvvv"));
        assert_eq!(rest.last().unwrap().header.as_ref().unwrap().revision, 31);
    }

    #[test]
    fn a_compaction_past_the_pinned_revision_fails_the_stream() {
        let (_dir, store) = store_with(30, 10);
        let mut s = RangeStreamer::new(store.clone(), prefix(0), 1 << 20);
        s.next_chunk().unwrap();
        let mut w = store.writer(false);
        w.txn().put(b"x", b"new".to_vec(), 0);
        w.compact(32).unwrap();
        w.commit().unwrap();
        assert_eq!(s.next_chunk().unwrap_err(), EtcdError::Compacted);
        assert!(s.finished());
    }
}
