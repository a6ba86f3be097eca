//! Revisions and their on-disk key form.
//!
//! A revision is (main, sub): `main` is the store-wide revision a write transaction creates, `sub`
//! orders the changes inside one transaction. The key is etcd's layout — 8-byte big-endian main,
//! `_`, 8-byte big-endian sub, and a trailing `t` for a tombstone — so a byte-ordered scan of the
//! revisions column family visits history in revision order.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

const KEY_LEN: usize = 17;
const TOMBSTONE: u8 = b't';

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut k = Vec::with_capacity(KEY_LEN + 1);
        k.extend_from_slice(&self.main.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            k.push(TOMBSTONE);
        }
        k
    }

    /// The first key of main revision `main`: scans bounded by it stay below that revision.
    pub fn lower_bound_key(main: i64) -> Vec<u8> {
        Revision::new(main, 0).to_key(false)
    }

    /// Parses a revision key, returning the revision and whether it marks a tombstone.
    pub fn from_key(key: &[u8]) -> Option<(Revision, bool)> {
        let tombstone = match key.len() {
            KEY_LEN => false,
            n if n == KEY_LEN + 1 && key[KEY_LEN] == TOMBSTONE => true,
            _ => return None,
        };
        if key[8] != b'_' {
            return None;
        }
        let main = i64::from_be_bytes(key[0..8].try_into().ok()?);
        let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
        Some((Revision { main, sub }, tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_revision() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
        ];
        let keys: Vec<_> = revs.iter().map(|r| r.to_key(false)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for r in revs {
            assert_eq!(Revision::from_key(&r.to_key(false)), Some((r, false)));
            assert_eq!(Revision::from_key(&r.to_key(true)), Some((r, true)));
        }
        assert_eq!(Revision::from_key(b"garbage"), None);
    }
}
