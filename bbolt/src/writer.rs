//! Builds a fresh, compact bbolt file from buckets and entries given in key order, streaming to
//! any `Write`: leaf pages are written as they fill, each branch level keeps one page in memory
//! and is written when it fills, so memory is a few pages per open bucket level.
//!
//! The meta pages come first in the file but name the root page and the high-water mark, which
//! are known only once every page is laid out. The caller's `fill` is therefore run twice over
//! the same data: a planning pass that only counts page sizes (page ids follow from sizes alone),
//! then the writing pass, which emits the meta pages first and checks it lays out the same tree.
//! A consistent source (a storage snapshot) reads twice at the cost of a second scan, and the
//! sink needs no `Seek` and no temporary file.

use std::io::Write;

use crate::format::*;
use crate::Error;

#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    pub page_size: u32,
    /// The transaction id of the first meta page; the second gets one less, as bbolt's
    /// `Tx.WriteTo` writes them.
    pub txid: u64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            page_size: DEFAULT_PAGE_SIZE,
            txid: 1,
        }
    }
}

/// Where a built tree's pages went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub root: u64,
    pub freelist: u64,
    /// Pages in the file, meta pages included.
    pub pages: u64,
}

impl Layout {
    pub fn bytes(&self, page_size: u32) -> u64 {
        self.pages * page_size as u64
    }
}

/// Writes a bbolt file to `out`. `fill` adds the top-level buckets in key order (each with
/// [`Builder::begin_bucket`] … [`Builder::end_bucket`]) and must add the same data both times it
/// is called.
pub fn write<W: Write, E: From<Error>>(
    out: &mut W,
    options: WriteOptions,
    mut fill: impl FnMut(&mut Builder<'_>) -> Result<(), E>,
) -> Result<Layout, E> {
    let plan = plan(options, &mut fill)?;
    plan.write(out, fill)?;
    Ok(plan.layout)
}

/// The planning pass of [`write`] on its own, for a caller that must know the file's size
/// before the first byte goes out (a stream that announces the bytes still to come).
pub fn plan<E: From<Error>>(
    options: WriteOptions,
    fill: impl FnOnce(&mut Builder<'_>) -> Result<(), E>,
) -> Result<Plan, E> {
    if !(MIN_PAGE_SIZE..=65536).contains(&options.page_size) || options.txid == 0 {
        return Err(
            Error::Invalid("page size must be 1 KiB .. 64 KiB and txid at least 1".into()).into(),
        );
    }
    let mut planning = Builder::new(None, options.page_size);
    fill(&mut planning)?;
    let layout = planning.finish()?;
    Ok(Plan { options, layout })
}

/// A file laid out by [`plan`], ready to be written with the same data.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    options: WriteOptions,
    layout: Layout,
}

impl Plan {
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The file's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.layout.bytes(self.options.page_size)
    }

    /// The writing pass: `fill` must add what it added when planned.
    pub fn write<W: Write, E: From<Error>>(
        &self,
        out: &mut W,
        fill: impl FnOnce(&mut Builder<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let (options, layout) = (self.options, self.layout);
        let ps = options.page_size as usize;
        let mut meta = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: options.page_size,
            flags: 0,
            root: BucketHeader {
                root: layout.root,
                sequence: 0,
            },
            freelist: layout.freelist,
            pgid: layout.pages,
            txid: options.txid,
            checksum: 0,
        };
        for id in 0..2u64 {
            meta.txid = options.txid - id;
            meta.checksum = meta.sum64();
            let mut page = vec![0u8; ps];
            PageHeader {
                id,
                flags: META_PAGE,
                count: 0,
                overflow: 0,
            }
            .encode(&mut page);
            page[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_LEN].copy_from_slice(&meta.encode());
            out.write_all(&page).map_err(Error::from)?;
        }

        let mut writing = Builder::new(Some(out), options.page_size);
        fill(&mut writing)?;
        if writing.finish()? != layout {
            return Err(Error::Invalid(
                "the data changed between the planning and the writing pass".into(),
            )
            .into());
        }
        Ok(())
    }
}

/// A node packs elements larger than a page with others, up to this many pages, as bbolt's own
/// nodes hold at least two elements: alone, each would round up to whole pages.
const MAX_PACKED_PAGES: usize = 16;

/// Whether an element of `size` bytes goes into the node `level` is filling: while the node is
/// within a page, or when sharing its overflow pages takes fewer pages than a node of its own.
fn fits(level: &Level, size: usize, page_size: usize) -> bool {
    let pages = |bytes: usize| bytes.div_ceil(page_size);
    let together = level.bytes + size;
    if level.items.len() == u16::MAX as usize {
        return false;
    }
    together <= page_size
        || (pages(together) < pages(level.bytes) + pages(PAGE_HEADER_SIZE + size)
            && pages(together) <= MAX_PACKED_PAGES)
}

/// Adds buckets and entries to the file being written; see [`write`].
pub struct Builder<'w> {
    /// None in the planning pass, which only allocates page ids.
    sink: Option<&'w mut dyn Write>,
    page_size: usize,
    next_pgid: u64,
    /// The root bucket, then each bucket opened inside the one before.
    buckets: Vec<OpenBucket>,
}

struct OpenBucket {
    /// levels[0] holds leaf entries, each level above the branch entries of the one below.
    levels: Vec<Level>,
    last_key: Option<Vec<u8>>,
    has_buckets: bool,
}

struct Level {
    items: Vec<Item>,
    /// The page's size so far: header, elements and their bytes.
    bytes: usize,
}

struct Item {
    key: Vec<u8>,
    /// Leaf entries: the value and its flags. Branch entries: the child page.
    value: Vec<u8>,
    flags: u32,
    child: u64,
}

impl Level {
    fn new() -> Level {
        Level {
            items: Vec::new(),
            bytes: PAGE_HEADER_SIZE,
        }
    }
}

impl<'w> Builder<'w> {
    fn new(sink: Option<&'w mut dyn Write>, page_size: u32) -> Builder<'w> {
        Builder {
            sink,
            page_size: page_size as usize,
            next_pgid: 2,
            buckets: vec![OpenBucket::new()],
        }
    }

    /// Opens a nested bucket `name` in the current bucket (a top-level bucket at first). Names and
    /// keys in one bucket must rise strictly.
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<(), Error> {
        self.claim_key(name)?;
        self.current().has_buckets = true;
        self.buckets.push(OpenBucket::new());
        Ok(())
    }

    /// Closes the current bucket and adds it to its parent.
    pub fn end_bucket(&mut self) -> Result<(), Error> {
        if self.buckets.len() < 2 {
            return Err(Error::Invalid("end_bucket without an open bucket".into()));
        }
        let header = self.close_bucket(true)?;
        let name = self
            .current()
            .last_key
            .clone()
            .expect("begin_bucket claimed the name");
        self.add(
            0,
            Item {
                key: name,
                value: header,
                flags: BUCKET_LEAF_FLAG,
                child: 0,
            },
        )
    }

    /// Adds a key and its value to the current bucket.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        if self.buckets.len() < 2 {
            return Err(Error::Invalid("the root bucket holds only buckets".into()));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(Error::Invalid(format!(
                "value of {} bytes is too large",
                value.len()
            )));
        }
        self.claim_key(key)?;
        self.add(
            0,
            Item {
                key: key.to_vec(),
                value: value.to_vec(),
                flags: 0,
                child: 0,
            },
        )
    }

    fn current(&mut self) -> &mut OpenBucket {
        self.buckets.last_mut().expect("the root bucket stays open")
    }

    fn claim_key(&mut self, key: &[u8]) -> Result<(), Error> {
        if key.is_empty() || key.len() > MAX_KEY_SIZE {
            return Err(Error::Invalid(format!(
                "key of {} bytes (1 ..= {MAX_KEY_SIZE} allowed)",
                key.len()
            )));
        }
        let bucket = self.current();
        if bucket.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(Error::Invalid(format!(
                "key {key:?} does not follow the previous key"
            )));
        }
        bucket.last_key = Some(key.to_vec());
        Ok(())
    }

    /// Adds `item` to `level` of the current bucket, first writing the level's page if the item
    /// would not fit in it.
    fn add(&mut self, level: usize, item: Item) -> Result<(), Error> {
        let size = LEAF_ELEMENT_SIZE + item.key.len() + item.value.len();
        let page_size = self.page_size;
        let levels = &mut self.current().levels;
        if levels.len() == level {
            levels.push(Level::new());
        }
        let l = &levels[level];
        if !l.items.is_empty() && !fits(l, size, page_size) {
            self.spill(level)?;
        }
        let l = &mut self.current().levels[level];
        l.bytes += size;
        l.items.push(item);
        Ok(())
    }

    /// Writes `level`'s page and adds it to the level above.
    fn spill(&mut self, level: usize) -> Result<(), Error> {
        let items = std::mem::take(&mut self.current().levels[level].items);
        let bytes = std::mem::replace(&mut self.current().levels[level].bytes, PAGE_HEADER_SIZE);
        let id = self.emit(level, &items, bytes)?;
        let first = items
            .into_iter()
            .next()
            .expect("a spilled page is not empty")
            .key;
        self.add(
            level + 1,
            Item {
                key: first,
                value: Vec::new(),
                flags: 0,
                child: id,
            },
        )
    }

    /// Writes the rest of the current bucket's tree and returns its bucket header (followed by its
    /// page if the bucket is small enough to live inline in its parent, as bbolt would store it).
    fn close_bucket(&mut self, may_inline: bool) -> Result<Vec<u8>, Error> {
        let bucket = self.current();
        if may_inline && bucket.levels.len() <= 1 && !bucket.has_buckets {
            let leaf = bucket.levels.pop().unwrap_or_else(Level::new);
            if leaf.bytes <= self.page_size / 4 {
                self.buckets.pop();
                let mut value = BucketHeader {
                    root: 0,
                    sequence: 0,
                }
                .encode()
                .to_vec();
                let header = PageHeader {
                    id: 0,
                    flags: LEAF_PAGE,
                    count: leaf.items.len() as u16,
                    overflow: 0,
                };
                value.extend_from_slice(&serialize(header, &leaf.items, leaf.bytes, leaf.bytes));
                return Ok(value);
            }
            self.current().levels.push(leaf);
        }
        let mut level = 0;
        let root = loop {
            let levels = &mut self.current().levels;
            if levels.is_empty() {
                levels.push(Level::new());
            }
            if level + 1 < levels.len() {
                if !levels[level].items.is_empty() {
                    self.spill(level)?;
                }
                level += 1;
                continue;
            }
            let top = levels.pop().expect("the top level");
            break match top.items.as_slice() {
                [only] if level > 0 => only.child,
                _ => self.emit(level, &top.items, top.bytes)?,
            };
        };
        self.buckets.pop();
        Ok(BucketHeader { root, sequence: 0 }.encode().to_vec())
    }

    /// Closes the root bucket and writes the (empty) freelist page.
    fn finish(mut self) -> Result<Layout, Error> {
        if self.buckets.len() != 1 {
            return Err(Error::Invalid(format!(
                "{} buckets left open",
                self.buckets.len() - 1
            )));
        }
        let root = BucketHeader::decode(&self.close_bucket(false)?).root;
        let freelist = self.allocate(PAGE_HEADER_SIZE);
        if let Some(sink) = self.sink.as_mut() {
            let mut page = vec![0u8; self.page_size];
            PageHeader {
                id: freelist,
                flags: FREELIST_PAGE,
                count: 0,
                overflow: 0,
            }
            .encode(&mut page);
            sink.write_all(&page)?;
        }
        Ok(Layout {
            root,
            freelist,
            pages: self.next_pgid,
        })
    }

    fn allocate(&mut self, bytes: usize) -> u64 {
        let id = self.next_pgid;
        self.next_pgid += bytes.div_ceil(self.page_size) as u64;
        id
    }

    /// Writes a page of `level` (0: leaf) holding `items`, returning its id.
    fn emit(&mut self, level: usize, items: &[Item], bytes: usize) -> Result<u64, Error> {
        let id = self.allocate(bytes);
        if let Some(sink) = self.sink.as_mut() {
            let pages = bytes.div_ceil(self.page_size);
            let flags = if level == 0 { LEAF_PAGE } else { BRANCH_PAGE };
            let header = PageHeader {
                id,
                flags,
                count: items.len() as u16,
                overflow: pages as u32 - 1,
            };
            sink.write_all(&serialize(header, items, bytes, pages * self.page_size))?;
        }
        Ok(id)
    }
}

impl OpenBucket {
    fn new() -> OpenBucket {
        OpenBucket {
            levels: Vec::new(),
            last_key: None,
            has_buckets: false,
        }
    }
}

/// A page with `header` holding `items` (leaf or branch elements by its flags), whose content is
/// `bytes` long, padded with zeros to `padded`.
fn serialize(header: PageHeader, items: &[Item], bytes: usize, padded: usize) -> Vec<u8> {
    let mut page = vec![0u8; padded];
    header.encode(&mut page);
    let mut data = PAGE_HEADER_SIZE + items.len() * LEAF_ELEMENT_SIZE;
    for (i, item) in items.iter().enumerate() {
        let at = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
        let pos = (data - at) as u32;
        let element: [u32; 2] = if header.flags == LEAF_PAGE {
            page[at + 12..at + 16].copy_from_slice(&(item.value.len() as u32).to_le_bytes());
            [item.flags, pos]
        } else {
            page[at + 8..at + 16].copy_from_slice(&item.child.to_le_bytes());
            [pos, item.key.len() as u32]
        };
        page[at..at + 4].copy_from_slice(&element[0].to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&element[1].to_le_bytes());
        if header.flags == LEAF_PAGE {
            page[at + 8..at + 12].copy_from_slice(&(item.key.len() as u32).to_le_bytes());
        }
        page[data..data + item.key.len()].copy_from_slice(&item.key);
        data += item.key.len();
        page[data..data + item.value.len()].copy_from_slice(&item.value);
        data += item.value.len();
    }
    debug_assert_eq!(data, bytes);
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Db, Value};

    /// A bucket tree as plain data: (key, Either a value or nested entries).
    #[derive(Debug, Clone, PartialEq)]
    enum Node {
        Data(Vec<u8>),
        Bucket(Vec<(Vec<u8>, Node)>),
    }

    fn fill(b: &mut Builder<'_>, entries: &[(Vec<u8>, Node)]) -> Result<(), Error> {
        for (k, node) in entries {
            match node {
                Node::Data(v) => b.put(k, v)?,
                Node::Bucket(inner) => {
                    b.begin_bucket(k)?;
                    fill(b, inner)?;
                    b.end_bucket()?;
                }
            }
        }
        Ok(())
    }

    fn read_back(db: &Db, bucket: &crate::Bucket) -> Vec<(Vec<u8>, Node)> {
        db.entries(bucket)
            .map(|e| {
                let e = e.unwrap();
                let node = match e.value {
                    Value::Data(v) => Node::Data(v),
                    Value::Bucket(b) => Node::Bucket(read_back(db, &b)),
                };
                (e.key, node)
            })
            .collect()
    }

    fn build(tree: &[(Vec<u8>, Node)], options: WriteOptions) -> (tempfile::NamedTempFile, Layout) {
        let mut out = Vec::new();
        let layout = write(&mut out, options, |b| fill(b, tree)).unwrap();
        assert_eq!(out.len() as u64, layout.bytes(options.page_size));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &out).unwrap();
        (file, layout)
    }

    fn sample_tree() -> Vec<(Vec<u8>, Node)> {
        let many: Vec<_> = (0..5000u32)
            .map(|i| {
                (
                    format!("key{i:06}").into_bytes(),
                    Node::Data(vec![(i % 251) as u8; (i % 97) as usize]),
                )
            })
            .collect();
        let big = vec![
            (b"huge".to_vec(), Node::Data(vec![7u8; 20_000])),
            (b"small".to_vec(), Node::Data(b"v".to_vec())),
        ];
        let nested = vec![
            (b"a".to_vec(), Node::Data(b"1".to_vec())),
            (
                b"inner".to_vec(),
                Node::Bucket(vec![(b"x".to_vec(), Node::Data(b"y".to_vec()))]),
            ),
            (b"z".to_vec(), Node::Bucket(Vec::new())),
        ];
        vec![
            (b"big".to_vec(), Node::Bucket(big)),
            (b"empty".to_vec(), Node::Bucket(Vec::new())),
            (b"many".to_vec(), Node::Bucket(many)),
            (b"nested".to_vec(), Node::Bucket(nested)),
        ]
    }

    #[test]
    fn written_files_read_back_identically() {
        for page_size in [1024, 4096, 16384] {
            let tree = sample_tree();
            let (file, layout) = build(&tree, WriteOptions { page_size, txid: 5 });
            let db = Db::open(file.path()).unwrap();
            assert_eq!(db.meta().txid, 5);
            assert_eq!(db.meta().pgid, layout.pages);
            assert_eq!(db.free_pages().unwrap(), Vec::<u64>::new());
            assert_eq!(read_back(&db, &db.root()), tree, "page size {page_size}");
            let many = db.bucket(&db.root(), b"many").unwrap().unwrap();
            assert!(!many.is_inline());
            for i in [0u32, 1, 2500, 4999] {
                let got = db.get(&many, format!("key{i:06}").as_bytes()).unwrap();
                assert_eq!(
                    got,
                    Some(Value::Data(vec![(i % 251) as u8; (i % 97) as usize]))
                );
            }
            assert_eq!(db.get(&many, b"key9").unwrap(), None);
            assert!(db
                .bucket(&db.root(), b"empty")
                .unwrap()
                .unwrap()
                .is_inline());
        }
    }

    #[test]
    fn every_page_is_reachable_once() {
        let (file, layout) = build(&sample_tree(), WriteOptions::default());
        let db = Db::open(file.path()).unwrap();
        // A page count equal to what the entries need, with nothing left over, is what
        // `bbolt check` (and so `etcdutl snapshot status`) demands of a file.
        assert_eq!(layout.freelist, layout.pages - 1);
        assert_eq!(db.size(), layout.bytes(4096));
    }

    #[test]
    fn values_over_a_page_share_overflow_pages() {
        let wide: Vec<_> = (0..40u8)
            .map(|i| (vec![i], Node::Data(vec![i; 6000])))
            .collect();
        let tree = vec![(b"wide".to_vec(), Node::Bucket(wide))];
        let (file, layout) = build(&tree, WriteOptions::default());
        let db = Db::open(file.path()).unwrap();
        assert_eq!(read_back(&db, &db.root()), tree);
        // Alone, each 6 KB element would take two whole pages (80 leaf pages); two share three,
        // as in bbolt's nodes of two: 60 leaf pages, then a branch, the bucket's root page,
        // the freelist and the two meta pages.
        assert_eq!(layout.pages, 60 + 5, "{layout:?}");
    }

    #[test]
    fn out_of_order_and_misplaced_entries_are_refused() {
        let mut out = Vec::new();
        let unordered = write(&mut out, WriteOptions::default(), |b| {
            b.begin_bucket(b"b")?;
            b.put(b"2", b"")?;
            b.put(b"1", b"")?;
            b.end_bucket()
        });
        assert!(matches!(unordered, Err(Error::Invalid(_))));
        let at_root = write(&mut Vec::new(), WriteOptions::default(), |b| {
            b.put(b"k", b"v")
        });
        assert!(matches!(at_root, Err(Error::Invalid(_))));
        let open = write(&mut Vec::new(), WriteOptions::default(), |b| {
            b.begin_bucket(b"k")
        });
        assert!(matches!(open, Err(Error::Invalid(_))));
        let mut calls = 0;
        let changing = write(&mut Vec::new(), WriteOptions::default(), |b| {
            calls += 1;
            b.begin_bucket(b"k")?;
            for i in 0..calls * 300u32 {
                b.put(&i.to_be_bytes(), b"value")?;
            }
            b.end_bucket()
        });
        assert!(matches!(changing, Err(Error::Invalid(_))));
    }
}
