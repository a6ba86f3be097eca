//! etcd's HashKV hasher (`kvHasher`): crc32c, seeded with the bucket name `key`, over the stored
//! revision keys and values up to a revision, leaving out what compaction gave up. Members with
//! the same history hash alike whatever their physical compaction has already deleted, and
//! alike with etcd for the same history.

use std::collections::HashSet;

use super::revision::Revision;

pub struct KvHasher<'a> {
    crc: u32,
    /// The compaction point the hash is taken under.
    compacted: i64,
    /// The last revision hashed.
    revision: i64,
    /// The revisions at or below `compacted` that a compaction at `revision` keeps.
    keep: &'a HashSet<Revision>,
}

impl<'a> KvHasher<'a> {
    pub fn new(compacted: i64, revision: i64, keep: &'a HashSet<Revision>) -> KvHasher<'a> {
        KvHasher {
            crc: crc32c::crc32c(b"key"),
            compacted,
            revision,
            keep,
        }
    }

    /// One stored revision, in key order.
    pub fn write(&mut self, key: &[u8], value: &[u8]) {
        let Some((rev, tombstone)) = Revision::from_key(key) else {
            return;
        };
        if rev.main > self.revision {
            return;
        }
        if rev.main <= self.compacted && !self.keep.is_empty() && !self.keep.contains(&rev) {
            return;
        }
        // etcd before 3.5.16 deleted a tombstone at the compaction point, later ones keep it:
        // it is left out so that both (and oxcd, which deletes it) hash alike.
        if rev.main == self.compacted && tombstone {
            return;
        }
        self.crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, key), value);
    }

    pub fn finish(self) -> u32 {
        self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_range_hashes_as_etcd_does() {
        // etcd 3.7's HashKV at revision 1 of a fresh store, and at any negative revision.
        assert_eq!(
            KvHasher::new(-1, 1, &HashSet::new()).finish(),
            1_084_519_789
        );
    }
}
