//! Micro-benchmarks of the MVCC hot paths: revision key encoding, range scans and the apply of
//! a write batch. `cargo bench -p oxcd-bench --bench mvcc` measures; `cargo test` runs each
//! benchmark once so they cannot rot.

use std::sync::Arc;

use divan::{black_box, Bencher};
use oxcd::mvcc::{KeyRange, MvccStore, RangeOptions, Revision};
use oxcd::storage::Engine;

fn main() {
    divan::main();
}

/// 8-byte keys and 256-byte values, the shape the throughput targets are set for.
const VALUE_SIZE: usize = 256;

fn key(i: u64) -> Vec<u8> {
    format!("{i:08}").into_bytes()
}

/// A fresh store holding `keys` keys written in batches (one revision per batch), with every key
/// then overwritten once so reads find more than one revision per key.
fn loaded_store(keys: u64) -> (tempfile::TempDir, Arc<MvccStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = MvccStore::open(Engine::open(dir.path()).expect("engine")).expect("store");
    for _round in 0..2 {
        for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
            let mut writer = store.writer(false);
            let mut txn = writer.txn();
            for i in chunk {
                txn.put(&key(*i), vec![b'v'; VALUE_SIZE], 0);
            }
            drop(txn);
            writer.commit().expect("commit");
        }
    }
    (dir, store)
}

mod revision {
    use super::*;

    #[divan::bench]
    fn to_key() -> Vec<u8> {
        black_box(Revision::new(black_box(123_456_789), black_box(3))).to_key(false)
    }

    #[divan::bench]
    fn from_key(bencher: Bencher) {
        let encoded = Revision::new(123_456_789, 3).to_key(true);
        bencher.bench(|| Revision::from_key(black_box(&encoded)));
    }
}

mod range {
    use super::*;

    const KEYS: u64 = 100_000;

    #[divan::bench]
    fn point_get_latest(bencher: Bencher) {
        let (_dir, store) = loaded_store(KEYS);
        let mut i = 0u64;
        bencher.bench_local(|| {
            i = (i + 7919) % KEYS;
            let r = store
                .range(&KeyRange::Single(key(i)), RangeOptions::default())
                .expect("range");
            assert_eq!(r.kvs.len(), 1);
        });
    }

    /// A read at a revision before the overwrite: the index must walk back one generation.
    #[divan::bench]
    fn point_get_old_revision(bencher: Bencher) {
        let (_dir, store) = loaded_store(KEYS);
        let first_round_done = store.current_revision() / 2;
        let mut i = 0u64;
        bencher.bench_local(|| {
            i = (i + 7919) % KEYS;
            let opts = RangeOptions {
                rev: first_round_done,
                ..Default::default()
            };
            black_box(store.range(&KeyRange::Single(key(i)), opts).expect("range"));
        });
    }

    /// A prefix range returning `width` keys, as a list of one namespace's objects would.
    #[divan::bench(args = [10, 100, 1000])]
    fn prefix(bencher: Bencher, width: u64) {
        let (_dir, store) = loaded_store(KEYS);
        let mut start = 0u64;
        bencher.bench_local(|| {
            start = (start + 7919) % (KEYS - width);
            let range = KeyRange::new(&key(start), &key(start + width));
            let r = store.range(&range, RangeOptions::default()).expect("range");
            assert_eq!(r.kvs.len() as u64, width);
        });
    }

    /// kube-apiserver's count of a resource: index only, no values read.
    #[divan::bench]
    fn count_all(bencher: Bencher) {
        let (_dir, store) = loaded_store(KEYS);
        let all = KeyRange::new(&[0], &[0]);
        bencher.bench_local(|| {
            let opts = RangeOptions {
                count_only: true,
                ..Default::default()
            };
            assert_eq!(store.range(&all, opts).expect("range").count as u64, KEYS);
        });
    }
}

mod apply {
    use super::*;

    /// One committed write batch of `puts` puts, as the state machine applies a group-committed
    /// Raft entry (engine writes here do not fsync; the Raft log's append does).
    #[divan::bench(args = [1, 16, 128])]
    fn put_batch(bencher: Bencher, puts: u64) {
        let (_dir, store) = loaded_store(10_000);
        let mut next = 0u64;
        bencher.bench_local(|| {
            let mut writer = store.writer(true);
            let mut txn = writer.txn();
            for _ in 0..puts {
                next = (next + 7919) % 10_000;
                txn.put(&key(next), vec![b'w'; VALUE_SIZE], 0);
            }
            drop(txn);
            writer.commit().expect("commit");
        });
    }
}
