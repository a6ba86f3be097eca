//! The in-memory key index: for every key, the revisions at which it changed, grouped into
//! generations (a generation runs from a creation to the tombstone that deletes the key).
//!
//! This is etcd's `treeIndex`: values live in the storage engine keyed by revision, and the index
//! answers "which revision of key K is visible at revision R" without touching disk.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use super::revision::Revision;

/// The keys a request covers, decoded from etcd's `key`/`range_end` convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    Single(Vec<u8>),
    /// `[start, end)`; `end == None` means every key from `start` on.
    Span {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    /// etcd: an empty `range_end` is a single key, `"\0"` is "from key", anything else is the
    /// exclusive end.
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::Span {
                start: key.to_vec(),
                end: None,
            },
            end => KeyRange::Span {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => key == k,
            KeyRange::Span { start, end } => {
                k >= start.as_slice() && end.as_deref().is_none_or(|e| k < e)
            }
        }
    }
}

/// What the index knows about one key at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

#[derive(Debug, Clone, Default)]
struct Generation {
    version: i64,
    created: Revision,
    revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the last revision with main <= `at`.
    fn last_at_or_before(&self, at: i64) -> Option<usize> {
        let n = self.revs.partition_point(|r| r.main <= at);
        n.checked_sub(1)
    }
}

#[derive(Debug, Clone, Default)]
struct KeyHistory {
    generations: Vec<Generation>,
}

impl KeyHistory {
    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    fn put(&mut self, rev: Revision) {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self
            .generations
            .last_mut()
            .expect("at least one generation");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.version += 1;
    }

    /// Re-creates history from stored revisions, where the generation's start may already be
    /// compacted away, so creation and version come from the stored value.
    fn restore(&mut self, created: Revision, modified: Revision, version: i64) {
        if self.generations.last().is_none_or(Generation::is_empty) {
            self.generations.pop();
            self.generations.push(Generation {
                version,
                created,
                revs: vec![modified],
            });
        } else {
            self.put(modified);
        }
    }

    fn tombstone(&mut self, rev: Revision) {
        self.put(rev);
        self.generations.push(Generation::default());
    }

    fn generation_at(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(tomb)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && tomb.main <= at {
                return None;
            }
            if first.main <= at {
                return Some(g);
            }
        }
        None
    }

    fn get(&self, at: i64) -> Option<KeyAt> {
        let g = self.generation_at(at)?;
        let n = g.last_at_or_before(at)?;
        Some(KeyAt {
            modified: g.revs[n],
            created: g.created,
            version: g.version - (g.revs.len() - n - 1) as i64,
        })
    }

    /// Where compaction at `at` cuts this history: the first generation that survives, and the
    /// revision it keeps (`None` when the generation is entirely above `at`). A kept revision
    /// that is the tombstone ending its generation is history nobody can read: that generation
    /// goes too.
    fn compaction_point(&self, at: i64) -> (usize, Option<usize>) {
        let last = self.generations.len() - 1;
        let mut gi = 0;
        while gi < last
            && self.generations[gi]
                .revs
                .last()
                .is_some_and(|r| r.main <= at)
        {
            gi += 1;
        }
        let g = &self.generations[gi];
        match g.last_at_or_before(at) {
            Some(n) if n == g.revs.len() - 1 && gi != last => (gi + 1, None),
            kept => (gi, kept),
        }
    }

    /// The revision at or below `at` that compaction at `at` keeps, if any.
    fn kept(&self, at: i64) -> Option<Revision> {
        let (gi, n) = self.compaction_point(at);
        n.map(|n| self.generations[gi].revs[n])
    }

    /// Drops history older than `at`, recording the revisions that must stay on disk in `keep`.
    fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        let (gi, n) = self.compaction_point(at);
        if let Some(n) = n {
            let g = &mut self.generations[gi];
            keep.insert(g.revs[n]);
            g.revs.drain(..n);
        }
        self.generations.drain(..gi);
    }
}

#[derive(Debug, Default)]
pub struct TreeIndex {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
}

impl TreeIndex {
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at)
    }

    /// Keys visible at `at` in `range`, in key order: the first `limit` (0 = all) with their
    /// state, and the total number visible.
    pub fn range(&self, range: &KeyRange, at: i64, limit: usize) -> (Vec<(Vec<u8>, KeyAt)>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        self.visit(range, |key, history| {
            if let Some(k) = history.get(at) {
                total += 1;
                if limit == 0 || out.len() < limit {
                    out.push((key.to_vec(), k));
                }
            }
            true
        });
        (out, total)
    }

    /// The first `limit` keys visible at `at` in `range`, in key order, visiting no further.
    pub fn first(&self, range: &KeyRange, at: i64, limit: usize) -> Vec<(Vec<u8>, KeyAt)> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        self.visit(range, |key, history| {
            if let Some(k) = history.get(at) {
                out.push((key.to_vec(), k));
            }
            out.len() < limit
        });
        out
    }

    /// Calls `f` on each key of `range` in order until it returns false.
    fn visit(&self, range: &KeyRange, mut f: impl FnMut(&[u8], &KeyHistory) -> bool) {
        match range {
            KeyRange::Single(key) => {
                if let Some(h) = self.keys.get(key) {
                    f(key, h);
                }
            }
            KeyRange::Span { start, end } => {
                if end.as_ref().is_some_and(|e| e <= start) {
                    return;
                }
                let upper = match end {
                    Some(e) => Bound::Excluded(e.as_slice()),
                    None => Bound::Unbounded,
                };
                for (k, h) in self
                    .keys
                    .range::<[u8], _>((Bound::Included(start.as_slice()), upper))
                {
                    if !f(k, h) {
                        return;
                    }
                }
            }
        }
    }

    /// Records a write of `key` at `rev`, newer than all its history, and returns the key's
    /// state just before it (what a read at `rev.main` saw), found by the same lookup.
    pub fn put(&mut self, key: &[u8], rev: Revision) -> Option<KeyAt> {
        match self.keys.get_mut(key) {
            Some(h) => {
                let before = h.get(rev.main);
                h.put(rev);
                before
            }
            None => {
                let mut h = KeyHistory::default();
                h.put(rev);
                self.keys.insert(key.to_vec(), h);
                None
            }
        }
    }

    /// Marks `key` deleted at `rev`. The caller only deletes keys that are live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) {
        if let Some(h) = self.keys.get_mut(key) {
            h.tombstone(rev);
        }
    }

    pub fn restore(&mut self, key: &[u8], created: Revision, modified: Revision, version: i64) {
        self.keys
            .entry(key.to_vec())
            .or_default()
            .restore(created, modified, version);
    }

    pub fn restore_tombstone(&mut self, key: &[u8], rev: Revision) {
        if let Some(h) = self.keys.get_mut(key) {
            if h.generations.last().is_some_and(|g| !g.is_empty()) {
                h.tombstone(rev);
            }
        }
    }

    /// The revisions at or below `at` that compaction at `at` keeps, without compacting.
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        self.keys.values().filter_map(|h| h.kept(at)).collect()
    }

    /// Compacts every key's history at `at`; returns the revisions at or below `at` that must
    /// remain on disk.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, h| {
            h.compact(at, &mut keep);
            !h.is_empty()
        });
        keep
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn versions_and_generations() {
        let mut ix = TreeIndex::default();
        ix.put(b"a", r(2));
        ix.put(b"a", r(3));
        ix.tombstone(b"a", r(4));
        ix.put(b"a", r(5));
        assert_eq!(ix.get(b"a", 1), None);
        assert_eq!(
            ix.get(b"a", 2),
            Some(KeyAt {
                modified: r(2),
                created: r(2),
                version: 1
            })
        );
        assert_eq!(
            ix.get(b"a", 3),
            Some(KeyAt {
                modified: r(3),
                created: r(2),
                version: 2
            })
        );
        assert_eq!(ix.get(b"a", 4), None, "deleted at 4");
        assert_eq!(
            ix.get(b"a", 5),
            Some(KeyAt {
                modified: r(5),
                created: r(5),
                version: 1
            })
        );
    }

    /// A put answers what a get just before it would have: within one revision (a txn's
    /// earlier put of the key), after an older one, and after a tombstone.
    #[test]
    fn a_put_returns_the_state_before_it() {
        let mut ix = TreeIndex::default();
        assert_eq!(ix.put(b"a", r(2)), None);
        let first = ix.get(b"a", 3);
        assert_eq!(ix.put(b"a", Revision::new(3, 0)), first);
        let within_txn = ix.get(b"a", 3);
        assert_eq!(ix.put(b"a", Revision::new(3, 1)), within_txn);
        assert_eq!(within_txn.unwrap().version, 2);
        ix.tombstone(b"a", r(4));
        assert_eq!(ix.put(b"a", r(5)), None, "a deleted key starts again");
        assert_eq!(ix.get(b"a", 5).unwrap().version, 1);
    }

    #[test]
    fn range_counts_everything_but_returns_limit() {
        let mut ix = TreeIndex::default();
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            ix.put(*k, r(i as i64 + 2));
        }
        let span = KeyRange::new(b"b", b"\0");
        let (kvs, total) = ix.range(&span, 10, 2);
        assert_eq!(total, 3);
        assert_eq!(
            kvs.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
            [b"b", b"c"]
        );
        let (_, total) = ix.range(&KeyRange::new(b"a", b"c"), 3, 0);
        assert_eq!(total, 2);
        let (kvs, _) = ix.range(&KeyRange::new(b"c", b"a"), 10, 0);
        assert!(kvs.is_empty(), "end before start is empty");
    }

    #[test]
    fn compaction_keeps_latest_visible_revision_and_drops_dead_keys() {
        let mut ix = TreeIndex::default();
        ix.put(b"a", r(2));
        ix.put(b"a", r(3));
        ix.put(b"b", r(4));
        ix.tombstone(b"b", r(5));
        ix.put(b"a", r(6));
        assert_eq!(
            ix.keep(5),
            HashSet::from([r(3)]),
            "keep predicts what compact keeps"
        );
        let keep = ix.compact(5);
        assert_eq!(keep, HashSet::from([r(3)]));
        assert_eq!(ix.len(), 1, "b's only generation is entirely compacted");
        assert_eq!(
            ix.get(b"a", 5).unwrap().version,
            2,
            "version survives compaction"
        );
        assert_eq!(ix.get(b"a", 6).unwrap().version, 3);
        assert_eq!(ix.get(b"a", 6).unwrap().created, r(2));
    }

    #[test]
    fn compaction_at_a_tombstone_keeps_later_generations() {
        let mut ix = TreeIndex::default();
        ix.put(b"k", r(2));
        ix.tombstone(b"k", r(3));
        ix.put(b"k", r(4));
        let keep = ix.compact(3);
        assert!(keep.is_empty());
        assert_eq!(ix.get(b"k", 4).unwrap().created, r(4));
        assert_eq!(ix.get(b"k", 3), None);
    }

    #[test]
    fn restore_rebuilds_versions_after_compaction() {
        let mut ix = TreeIndex::default();
        ix.restore(b"k", r(2), r(7), 4);
        ix.restore(b"k", r(2), r(8), 5);
        ix.restore_tombstone(b"k", r(9));
        assert_eq!(ix.get(b"k", 8).unwrap().version, 5);
        assert_eq!(ix.get(b"k", 9), None);
    }
}
