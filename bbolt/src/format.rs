//! The on-disk layout of a bbolt file: page headers, meta pages, elements of branch and leaf
//! pages, bucket headers. All integers are little-endian (bbolt writes its structs in the host's
//! order, and every platform etcd ships on is little-endian). See docs/BBOLT.md.

use std::hash::Hasher;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
pub const DEFAULT_PAGE_SIZE: u32 = 4096;
/// The smallest page size bbolt's open probes for (its search for a second meta page starts at
/// 1 KiB); smaller cannot hold a meta page and is read as damage.
pub const MIN_PAGE_SIZE: u32 = 1024;
/// A sanity bound rather than bbolt's: pages are the OS page size (4–64 KiB) unless chosen, and a
/// damaged meta page must not size the reader's buffers.
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

pub const PAGE_HEADER_SIZE: usize = 16;
pub const BRANCH_ELEMENT_SIZE: usize = 16;
pub const LEAF_ELEMENT_SIZE: usize = 16;
pub const BUCKET_HEADER_SIZE: usize = 16;

pub const BRANCH_PAGE: u16 = 0x01;
pub const LEAF_PAGE: u16 = 0x02;
pub const META_PAGE: u16 = 0x04;
pub const FREELIST_PAGE: u16 = 0x10;

/// Leaf element flag: the value is a bucket header (a nested bucket), not data.
pub const BUCKET_LEAF_FLAG: u32 = 0x01;

/// A freelist page whose `count` is this stores the real count in its first u64.
pub const FREELIST_COUNT_OVERFLOW: u16 = 0xFFFF;
/// `Meta::freelist` when the freelist is not persisted (bbolt's NoFreelistSync).
pub const NO_FREELIST: u64 = u64::MAX;

/// bbolt's limits on what a key and a value may be.
pub const MAX_KEY_SIZE: usize = 32768;
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

/// Bytes of the meta struct covered by its checksum (everything before the checksum field).
const META_CHECKED_LEN: usize = 56;
pub const META_LEN: usize = META_CHECKED_LEN + 8;

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The 16 bytes that start every page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    /// Pages after this one that belong to it (a page too large for one page size).
    pub overflow: u32,
}

impl PageHeader {
    /// `b` must hold at least [`PAGE_HEADER_SIZE`] bytes.
    pub fn decode(b: &[u8]) -> PageHeader {
        PageHeader {
            id: u64_at(b, 0),
            flags: u16_at(b, 8),
            count: u16_at(b, 10),
            overflow: u32_at(b, 12),
        }
    }

    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }
}

/// A bucket's header: the value of a bucket entry in its parent, and the root of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketHeader {
    /// The bucket's root page, or 0 for an inline bucket (its page follows the header).
    pub root: u64,
    pub sequence: u64,
}

impl BucketHeader {
    pub fn decode(b: &[u8]) -> BucketHeader {
        BucketHeader {
            root: u64_at(b, 0),
            sequence: u64_at(b, 8),
        }
    }

    pub fn encode(&self) -> [u8; BUCKET_HEADER_SIZE] {
        let mut out = [0; BUCKET_HEADER_SIZE];
        out[0..8].copy_from_slice(&self.root.to_le_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        out
    }
}

/// The content of a meta page (after its page header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub flags: u32,
    pub root: BucketHeader,
    /// The freelist's page, or [`NO_FREELIST`].
    pub freelist: u64,
    /// The high-water mark: one past the last page in use.
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("invalid database (bad magic)")]
    Magic,
    #[error("version mismatch")]
    Version,
    #[error("checksum error")]
    Checksum,
}

impl Meta {
    /// `b` must hold at least [`META_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Meta {
        Meta {
            magic: u32_at(b, 0),
            version: u32_at(b, 4),
            page_size: u32_at(b, 8),
            flags: u32_at(b, 12),
            root: BucketHeader::decode(&b[16..32]),
            freelist: u64_at(b, 32),
            pgid: u64_at(b, 40),
            txid: u64_at(b, 48),
            checksum: u64_at(b, 56),
        }
    }

    pub fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0; META_LEN];
        out[0..4].copy_from_slice(&self.magic.to_le_bytes());
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..32].copy_from_slice(&self.root.encode());
        out[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        out[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        out[56..64].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// FNV-1a 64 of the fields before the checksum, as bbolt computes it.
    pub fn sum64(&self) -> u64 {
        let mut h = fnv::FnvHasher::default();
        h.write(&self.encode()[..META_CHECKED_LEN]);
        h.finish()
    }

    /// The same checks, in the same order, as bbolt's `Meta.Validate`.
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.magic != MAGIC {
            Err(MetaError::Magic)
        } else if self.version != VERSION {
            Err(MetaError::Version)
        } else if self.checksum != self.sum64() {
            Err(MetaError::Checksum)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_checksum_covers_every_field_but_itself() {
        let mut m = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: 4096,
            flags: 0,
            root: BucketHeader {
                root: 3,
                sequence: 0,
            },
            freelist: 2,
            pgid: 4,
            txid: 1,
            checksum: 0,
        };
        m.checksum = m.sum64();
        assert_eq!(Meta::decode(&m.encode()), m);
        assert_eq!(m.validate(), Ok(()));
        let mut bumped = m;
        bumped.txid += 1;
        assert_eq!(bumped.validate(), Err(MetaError::Checksum));
        bumped.magic = 0;
        assert_eq!(bumped.validate(), Err(MetaError::Magic));
    }

    #[test]
    fn fnv1a_matches_the_published_test_vector() {
        let mut h = fnv::FnvHasher::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63dc4c8601ec8c);
    }
}
