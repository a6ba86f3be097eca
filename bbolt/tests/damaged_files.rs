//! Fuzzing without cargo-fuzz: real etcd files (every file in bbolt/testdata: snapshots and copied
//! backends of etcd 3.4 to 3.7, made by make-fixtures.sh) and a writer-made file with overflow
//! pages and a deeper tree are damaged thousands of ways — flipped bytes, page headers and element tables overwritten, truncations,
//! meta fields set to extremes and re-signed — and every read of them must end in a value or an
//! error: no panic, no endless loop, and no allocation larger than the file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use oxcd_bbolt::format::{Meta, PAGE_HEADER_SIZE};
use oxcd_bbolt::{Bucket, Db, Value, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Records the largest single allocation, to check reads never size a buffer from a damaged
/// length field.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

const ITERATIONS: usize = 1500;
const PAGE_SIZE: usize = 4096;

/// Reads everything reachable, nested buckets to a bounded depth; counts what it saw.
fn walk(db: &Db, bucket: &Bucket, depth: usize) -> Result<usize, oxcd_bbolt::Error> {
    let mut seen = 0;
    for entry in db.entries(bucket) {
        let entry = entry?;
        seen += 1;
        if let Value::Bucket(inner) = entry.value {
            if depth < 8 {
                seen += walk(db, &inner, depth + 1)?;
            }
            db.get(bucket, &entry.key)?;
        }
    }
    Ok(seen)
}

fn read_all(path: &Path) -> Result<usize, oxcd_bbolt::Error> {
    let db = Db::open(path)?;
    db.free_pages()?;
    for name in [b"key".as_slice(), b"meta", b"zzz"] {
        if let Some(bucket) = db.bucket(&db.root(), name)? {
            db.get(&bucket, b"consistent_index")?;
        }
    }
    walk(&db, &db.root(), 0)
}

fn damage(original: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = original.to_vec();
    match rng.gen_range(0..4) {
        0 => {
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 => {
            // Page headers and element tables, where counts, offsets and page ids live.
            let pages = bytes.len() / PAGE_SIZE;
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(2..pages.max(3)) * PAGE_SIZE + rng.gen_range(0..64);
                if at + 4 <= bytes.len() {
                    let v: u32 = if rng.gen() {
                        u32::MAX - rng.gen_range(0..3)
                    } else {
                        rng.gen_range(0..64)
                    };
                    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        2 => bytes.truncate(rng.gen_range(0..bytes.len())),
        _ => {
            // A meta field set to an extreme value, re-signed so that it is believed.
            let at = rng.gen_range(0..2) * PAGE_SIZE + PAGE_HEADER_SIZE;
            let mut meta = Meta::decode(&bytes[at..]);
            let extremes = [0, 1, 2, u64::MAX, u64::MAX / 4096, rng.gen_range(0..16)];
            let extreme = extremes[rng.gen_range(0..extremes.len())];
            match rng.gen_range(0..5) {
                0 => meta.page_size = extreme as u32,
                1 => meta.root.root = extreme,
                2 => meta.freelist = extreme,
                3 => meta.pgid = extreme,
                _ => meta.txid = extreme,
            }
            meta.checksum = meta.sum64();
            bytes[at..at + meta.encode().len()].copy_from_slice(&meta.encode());
        }
    }
    bytes
}

fn writer_made() -> Vec<u8> {
    let mut out = Vec::new();
    oxcd_bbolt::write(&mut out, WriteOptions::default(), |b| {
        b.begin_bucket(b"key")?;
        for i in 0..3000u32 {
            b.put(&i.to_be_bytes(), &vec![i as u8; (i % 50) as usize])?;
        }
        b.put(b"large", &[1u8; 9000])?;
        b.end_bucket()?;
        b.begin_bucket(b"meta")?;
        b.put(b"consistent_index", &7u64.to_be_bytes())?;
        b.begin_bucket(b"nested")?;
        b.put(b"k", b"v")?;
        b.end_bucket()?;
        b.end_bucket()
    })
    .unwrap();
    out
}

#[test]
fn damaged_files_give_errors_never_panics_or_huge_allocations() {
    let dir = tempfile::tempdir().unwrap();
    // Read at run time: the shared build cache may hold a binary built in another checkout.
    let testdata = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("testdata");
    let mut originals = vec![("writer".to_string(), writer_made())];
    let mut fixtures: Vec<_> = std::fs::read_dir(&testdata)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "db"))
        .collect();
    fixtures.sort();
    // Each release's snapshot and copied member file (make-fixtures.sh), 3.4 to 3.7.
    assert!(fixtures.len() >= 8, "{fixtures:?}");
    for path in fixtures {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        originals.push((name, std::fs::read(&path).unwrap()));
    }
    for (name, original) in &originals {
        let path = dir.path().join("damaged.db");
        std::fs::write(&path, original).unwrap();
        let intact = read_all(&path).unwrap_or_else(|e| panic!("{name} intact: {e}"));
        assert!(intact > 10, "{name}: only {intact} entries");
        let mut rng = StdRng::seed_from_u64(16);
        let (mut errors, mut read) = (0, 0);
        for i in 0..ITERATIONS {
            let damaged = damage(original, &mut rng);
            std::fs::write(&path, &damaged).unwrap();
            LARGEST.store(0, Ordering::Relaxed);
            match read_all(&path) {
                Ok(_) => read += 1,
                Err(_) => errors += 1,
            }
            let largest = LARGEST.load(Ordering::Relaxed);
            assert!(
                largest <= original.len().max(64 << 10),
                "{name} iteration {i}: allocated {largest} bytes for a {}-byte file",
                damaged.len()
            );
        }
        // Both outcomes must occur, or the damage missed what matters (or hit only meta pages).
        assert!(
            errors > ITERATIONS / 10 && read > 0,
            "{name}: {errors} errors, {read} read"
        );
        eprintln!("{name}: {errors} damaged copies refused, {read} read");
    }
}
