//! Reads a bbolt file page by page with positioned reads: memory is bounded by the depth of the
//! tree being walked times the page size, whatever the file's size. Every offset, count and page
//! id read from the file is checked against the file before it is used, so a damaged file gives
//! an [`Error::Corrupt`], never a panic, a loop or an allocation larger than the file.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::format::*;
use crate::Error;

/// Deeper than any B+tree bbolt builds (each level multiplies the fan-out by at least two): a
/// path this long is a cycle in a damaged file.
const MAX_TREE_DEPTH: usize = 64;

fn corrupt(what: impl Into<String>) -> Error {
    Error::Corrupt(what.into())
}

/// An open bbolt file, as of its newest valid meta page.
pub struct Db {
    file: File,
    file_len: u64,
    meta: Meta,
}

impl Db {
    pub fn open(path: impl AsRef<Path>) -> Result<Db, Error> {
        Db::from_file(File::open(path)?)
    }

    /// Chooses the meta page as bbolt does: of the two, the valid one with the higher txid.
    pub fn from_file(file: File) -> Result<Db, Error> {
        let file_len = file.metadata()?.len();
        let page_size = page_size_of(&file, file_len)?;
        let mut candidates = Vec::with_capacity(2);
        let mut first_error = None;
        for page in 0..2u64 {
            match read_meta(&file, file_len, page * page_size as u64) {
                Some(meta) => match meta.validate() {
                    Ok(()) => candidates.push(meta),
                    Err(e) => first_error = first_error.or(Some(e)),
                },
                None => first_error = first_error.or(Some(MetaError::Magic)),
            }
        }
        let meta = candidates
            .into_iter()
            .max_by_key(|m| m.txid)
            .ok_or(Error::InvalidMeta(first_error.unwrap_or(MetaError::Magic)))?;
        check_meta(&meta, page_size, file_len)?;
        Ok(Db {
            file,
            file_len,
            meta,
        })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn page_size(&self) -> u32 {
        self.meta.page_size
    }

    /// The bytes the database occupies (the high-water mark in pages), as bbolt's `Tx.Size`.
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.meta.page_size as u64
    }

    /// The root bucket, whose entries are the top-level buckets.
    pub fn root(&self) -> Bucket {
        Bucket {
            header: self.meta.root,
            inline: None,
        }
    }

    /// The entries of `bucket` in key order, read as they are iterated.
    pub fn entries(&self, bucket: &Bucket) -> Entries<'_> {
        Entries {
            db: self,
            stack: Vec::new(),
            held: 0,
            reads: 0,
            bytes_read: 0,
            start: Some(bucket.clone()),
            last_key: None,
        }
    }

    /// The value stored under `key` in `bucket`, found by descending the tree.
    pub fn get(&self, bucket: &Bucket, key: &[u8]) -> Result<Option<Value>, Error> {
        let mut page = self.root_page(bucket)?;
        for _ in 0..MAX_TREE_DEPTH {
            if page.header.flags == BRANCH_PAGE {
                let mut child = page.branch_element(0)?.1;
                for i in 1..page.count() {
                    let (k, pgid) = page.branch_element(i)?;
                    if &page.buf[k] > key {
                        break;
                    }
                    child = pgid;
                }
                page = self.read_page(child)?;
                continue;
            }
            for i in 0..page.count() {
                let (flags, k, v) = page.leaf_element(i)?;
                if &page.buf[k] == key {
                    return Ok(Some(Value::decode(flags, &page.buf[v])?));
                }
            }
            return Ok(None);
        }
        Err(corrupt("tree deeper than any bbolt builds (a cycle?)"))
    }

    /// The nested bucket `name` of `parent`, if it exists and is a bucket.
    pub fn bucket(&self, parent: &Bucket, name: &[u8]) -> Result<Option<Bucket>, Error> {
        Ok(match self.get(parent, name)? {
            Some(Value::Bucket(b)) => Some(b),
            _ => None,
        })
    }

    /// The page ids a persisted freelist holds (none when the file has no persisted freelist, as
    /// etcd writes them).
    pub fn free_pages(&self) -> Result<Vec<u64>, Error> {
        if self.meta.freelist == NO_FREELIST {
            return Ok(Vec::new());
        }
        let page = self.read_page_any(self.meta.freelist, FREELIST_PAGE)?;
        let (skip, count) = if page.header.count == FREELIST_COUNT_OVERFLOW {
            (1u64, u64_at(&page.buf, PAGE_HEADER_SIZE))
        } else {
            (0, page.header.count as u64)
        };
        let room = (page.buf.len() - PAGE_HEADER_SIZE) as u64 / 8;
        if count.checked_add(skip).is_none_or(|n| n > room) {
            return Err(corrupt(format!(
                "freelist page {} claims {count} ids",
                self.meta.freelist
            )));
        }
        let start = PAGE_HEADER_SIZE + skip as usize * 8;
        Ok((0..count as usize)
            .map(|i| u64_at(&page.buf, start + i * 8))
            .collect())
    }

    fn root_page(&self, bucket: &Bucket) -> Result<Page, Error> {
        match &bucket.inline {
            Some(bytes) => Page::inline(bytes.clone()),
            None => self.read_page(bucket.header.root),
        }
    }

    /// A branch or leaf page.
    fn read_page(&self, id: u64) -> Result<Page, Error> {
        self.read_page_any(id, BRANCH_PAGE | LEAF_PAGE)
    }

    /// Reads page `id` with its overflow pages; its flags must be one of `kinds`.
    fn read_page_any(&self, id: u64, kinds: u16) -> Result<Page, Error> {
        let ps = self.meta.page_size as u64;
        if id < 2 || id >= self.meta.pgid {
            return Err(corrupt(format!(
                "page id {id} outside the file's pages 2..{}",
                self.meta.pgid
            )));
        }
        let mut head = [0u8; PAGE_HEADER_SIZE];
        self.file.read_exact_at(&mut head, id * ps)?;
        let header = PageHeader::decode(&head);
        if header.id != id {
            return Err(corrupt(format!(
                "page {id} identifies itself as page {}",
                header.id
            )));
        }
        if header.flags & kinds == 0 || header.flags.count_ones() != 1 {
            return Err(corrupt(format!(
                "page {id} has unexpected flags {:#x}",
                header.flags
            )));
        }
        let end = id + header.overflow as u64 + 1;
        if end > self.meta.pgid || end * ps > self.file_len {
            return Err(corrupt(format!(
                "page {id} overflows past the end of the file"
            )));
        }
        let mut buf = vec![0u8; ((header.overflow as u64 + 1) * ps) as usize];
        self.file.read_exact_at(&mut buf, id * ps)?;
        Page::new(buf, header)
    }
}

/// bbolt's page size discovery: the first meta page's if it is valid, else the first valid meta
/// page found at the offsets a second meta page would have for page sizes 1 KiB .. 16 MiB.
fn page_size_of(file: &File, file_len: u64) -> Result<u32, Error> {
    if let Some(meta) = read_meta(file, file_len, 0) {
        if meta.validate().is_ok() {
            return Ok(meta.page_size);
        }
    }
    for shift in 0..=14 {
        let pos = 1024u64 << shift;
        if pos + (PAGE_HEADER_SIZE + META_LEN) as u64 > file_len {
            break;
        }
        if let Some(meta) = read_meta(file, file_len, pos) {
            if meta.validate().is_ok() {
                return Ok(meta.page_size);
            }
        }
    }
    Err(Error::InvalidMeta(
        read_meta(file, file_len, 0).map_or(MetaError::Magic, |m| {
            m.validate().err().unwrap_or(MetaError::Magic)
        }),
    ))
}

fn read_meta(file: &File, file_len: u64, at: u64) -> Option<Meta> {
    let mut buf = [0u8; PAGE_HEADER_SIZE + META_LEN];
    if at + buf.len() as u64 > file_len {
        return None;
    }
    file.read_exact_at(&mut buf, at).ok()?;
    Some(Meta::decode(&buf[PAGE_HEADER_SIZE..]))
}

/// A checksum proves the meta page is what bbolt wrote, not that the file around it is whole.
fn check_meta(meta: &Meta, page_size: u32, file_len: u64) -> Result<(), Error> {
    if meta.page_size != page_size || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&meta.page_size) {
        return Err(corrupt(format!(
            "page size {} is not usable",
            meta.page_size
        )));
    }
    if meta
        .pgid
        .checked_mul(page_size as u64)
        .is_none_or(|size| size > file_len)
    {
        return Err(corrupt(format!(
            "file is truncated: {} pages of {page_size} bytes do not fit in {file_len} bytes",
            meta.pgid
        )));
    }
    if meta.root.root >= meta.pgid || (meta.freelist != NO_FREELIST && meta.freelist >= meta.pgid) {
        return Err(corrupt("meta page points past the high-water mark"));
    }
    Ok(())
}

/// A bucket: its header and, for an inline bucket, its page (which lives in its parent's value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub header: BucketHeader,
    inline: Option<Vec<u8>>,
}

impl Bucket {
    pub fn is_inline(&self) -> bool {
        self.inline.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Data(Vec<u8>),
    Bucket(Bucket),
}

impl Value {
    fn decode(flags: u32, bytes: &[u8]) -> Result<Value, Error> {
        if flags & BUCKET_LEAF_FLAG == 0 {
            return Ok(Value::Data(bytes.to_vec()));
        }
        if bytes.len() < BUCKET_HEADER_SIZE {
            return Err(corrupt("bucket value shorter than a bucket header"));
        }
        let header = BucketHeader::decode(bytes);
        let inline = (header.root == 0).then(|| bytes[BUCKET_HEADER_SIZE..].to_vec());
        Ok(Value::Bucket(Bucket { header, inline }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Value,
}

/// A branch or leaf page whose element table has been checked to lie inside it.
struct Page {
    buf: Vec<u8>,
    header: PageHeader,
}

impl Page {
    fn new(buf: Vec<u8>, header: PageHeader) -> Result<Page, Error> {
        let table_end = PAGE_HEADER_SIZE + header.count as usize * LEAF_ELEMENT_SIZE;
        if table_end > buf.len() {
            return Err(corrupt(format!(
                "page {} holds more elements than fit in it",
                header.id
            )));
        }
        if header.flags == BRANCH_PAGE && header.count == 0 {
            return Err(corrupt(format!("branch page {} is empty", header.id)));
        }
        Ok(Page { buf, header })
    }

    fn inline(buf: Vec<u8>) -> Result<Page, Error> {
        if buf.len() < PAGE_HEADER_SIZE {
            return Err(corrupt("inline bucket shorter than a page header"));
        }
        let header = PageHeader::decode(&buf);
        if header.flags != LEAF_PAGE {
            return Err(corrupt(format!(
                "inline bucket page has flags {:#x}",
                header.flags
            )));
        }
        Page::new(buf, header)
    }

    fn count(&self) -> usize {
        self.header.count as usize
    }

    /// Element `i`'s bytes at `pos` from the element itself, as bbolt addresses them.
    fn span(&self, i: usize, pos: u32, len: usize) -> Result<Range<usize>, Error> {
        let start = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE + pos as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.buf.len() => Ok(start..end),
            _ => Err(corrupt(format!(
                "element {i} of page {} points outside it",
                self.header.id
            ))),
        }
    }

    fn branch_element(&self, i: usize) -> Result<(Range<usize>, u64), Error> {
        let at = PAGE_HEADER_SIZE + i * BRANCH_ELEMENT_SIZE;
        let (pos, ksize, pgid) = (
            u32_at(&self.buf, at),
            u32_at(&self.buf, at + 4),
            u64_at(&self.buf, at + 8),
        );
        Ok((self.span(i, pos, ksize as usize)?, pgid))
    }

    /// Flags, key and value of leaf element `i`.
    fn leaf_element(&self, i: usize) -> Result<(u32, Range<usize>, Range<usize>), Error> {
        let at = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
        let (flags, pos) = (u32_at(&self.buf, at), u32_at(&self.buf, at + 4));
        let (ksize, vsize) = (
            u32_at(&self.buf, at + 8) as usize,
            u32_at(&self.buf, at + 12) as usize,
        );
        let key = self.span(i, pos, ksize)?;
        let value = key.end
            ..key
                .end
                .checked_add(vsize)
                .ok_or_else(|| corrupt("value size overflows"))?;
        if value.end > self.buf.len() {
            return Err(corrupt(format!(
                "element {i} of page {} points outside it",
                self.header.id
            )));
        }
        Ok((flags, key, value))
    }
}

/// Iterates a bucket's entries depth-first. Keys must rise strictly, which also catches a leaf
/// reached twice; no more pages may be read than the file has (empty leaves reached over and
/// over through shared branches would otherwise loop without a key to compare); and the pages on
/// the path must fit in the file together, which bounds memory.
pub struct Entries<'a> {
    db: &'a Db,
    stack: Vec<(Page, usize)>,
    held: u64,
    reads: u64,
    bytes_read: u64,
    start: Option<Bucket>,
    last_key: Option<Vec<u8>>,
}

impl Entries<'_> {
    /// The bytes of the pages this iteration has read so far (overflow pages included): a
    /// measure of progress through a large bucket against [`Db::size`].
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    fn push(&mut self, page: Page) -> Result<(), Error> {
        self.held += page.buf.len() as u64;
        self.bytes_read += page.buf.len() as u64;
        self.reads += 1;
        if self.reads > self.db.meta.pgid {
            return Err(corrupt(
                "a bucket's tree reaches more pages than the file has (a cycle?)",
            ));
        }
        if self.stack.len() >= MAX_TREE_DEPTH || self.held > self.db.file_len {
            return Err(corrupt("tree deeper than any bbolt builds (a cycle?)"));
        }
        self.stack.push((page, 0));
        Ok(())
    }

    fn advance(&mut self) -> Result<Option<Entry>, Error> {
        if let Some(bucket) = self.start.take() {
            let root = self.db.root_page(&bucket)?;
            self.push(root)?;
        }
        loop {
            let Some((page, next)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *next >= page.count() {
                let (page, _) = self.stack.pop().expect("non-empty");
                self.held -= page.buf.len() as u64;
                continue;
            }
            let i = *next;
            *next += 1;
            if page.header.flags == BRANCH_PAGE {
                let child = page.branch_element(i)?.1;
                let child = self.db.read_page(child)?;
                self.push(child)?;
                continue;
            }
            let (flags, k, v) = page.leaf_element(i)?;
            let key = page.buf[k].to_vec();
            let value = Value::decode(flags, &page.buf[v])?;
            if self.last_key.as_ref().is_some_and(|last| *last >= key) {
                return Err(corrupt("keys out of order (a page reached twice?)"));
            }
            self.last_key = Some(key.clone());
            return Ok(Some(Entry { key, value }));
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, Error>;

    /// After an error the iteration ends.
    fn next(&mut self) -> Option<Self::Item> {
        match self.advance() {
            Ok(entry) => entry.map(Ok),
            Err(e) => {
                self.stack.clear();
                self.start = None;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteOptions;

    fn written(txid: u64) -> Vec<u8> {
        let mut out = Vec::new();
        crate::write(
            &mut out,
            WriteOptions {
                page_size: 4096,
                txid,
            },
            |b| {
                b.begin_bucket(b"b")?;
                b.put(b"k", b"v")?;
                b.end_bucket()
            },
        )
        .unwrap();
        out
    }

    fn open(bytes: &[u8]) -> Result<Db, Error> {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        Db::from_file(file)
    }

    #[test]
    fn the_valid_meta_page_with_the_higher_txid_is_used() {
        let bytes = written(9);
        assert_eq!(open(&bytes).unwrap().meta().txid, 9);
        // Meta page 0 (txid 9) damaged: page 1 (txid 8) is used, as bbolt falls back.
        let mut damaged = bytes.clone();
        damaged[PAGE_HEADER_SIZE + 48] ^= 1;
        assert_eq!(open(&damaged).unwrap().meta().txid, 8);
        // Both damaged: bbolt's own error for the first.
        damaged[4096 + PAGE_HEADER_SIZE] ^= 1;
        let err = open(&damaged).err().unwrap();
        assert_eq!(err.to_string(), "checksum error");
        assert!(matches!(
            open(b"not a database at all, but long enough to read its meta page"),
            Err(Error::InvalidMeta(MetaError::Magic))
        ));
    }

    #[test]
    fn an_iteration_counts_the_bytes_of_every_page_it_reads() {
        let mut bytes = Vec::new();
        crate::write(&mut bytes, WriteOptions::default(), |b| {
            b.begin_bucket(b"big")?;
            for i in 0..2000u32 {
                b.put(&i.to_be_bytes(), &[1u8; 100])?;
            }
            // A value over a page: a leaf with overflow pages.
            b.put(b"\xff", &[2u8; 10_000])?;
            b.end_bucket()
        })
        .unwrap();
        let db = open(&bytes).unwrap();
        let bucket = db.bucket(&db.root(), b"big").unwrap().unwrap();
        let mut entries = db.entries(&bucket);
        assert_eq!(entries.bytes_read(), 0);
        let mut seen = Vec::new();
        while let Some(entry) = entries.next() {
            entry.unwrap();
            seen.push(entries.bytes_read());
        }
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        // Every page but the two meta pages, the root bucket's and the freelist's.
        assert_eq!(entries.bytes_read(), db.size() - 4 * db.page_size() as u64);
    }

    #[test]
    fn a_file_shorter_than_its_meta_page_says_is_refused() {
        let bytes = written(1);
        let err = open(&bytes[..bytes.len() - 4096]).err().unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
