//! A regular file's contents: what readers see now, and the durable image a power cut reverts
//! to. Both are maps of 4 KiB pages that share unchanged pages (`Arc`), so an fsync copies only
//! the pointers of the pages written since the previous one, and a write copies at most the
//! pages it touches that the durable image still shares.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub(super) const PAGE_SIZE: u64 = 4096;

type Page = [u8; PAGE_SIZE as usize];

/// Bytes of a sparse file. A missing page reads as zeros (a hole). Invariant: bytes of the last
/// page past `size` are zero, so growing the file exposes zeros without touching any page.
#[derive(Clone, Default)]
struct Pages {
    pages: BTreeMap<u64, Arc<Page>>,
    size: u64,
}

impl Pages {
    /// Drops every page at or past `first`.
    fn drop_from(&mut self, first: u64) {
        self.pages.split_off(&first);
    }
}

/// Number of pages needed to hold `size` bytes (the index of the first page wholly past it).
fn pages_for(size: u64) -> u64 {
    size.div_ceil(PAGE_SIZE)
}

#[derive(Default)]
pub(super) struct FileContent {
    visible: Pages,
    durable: Pages,
    /// Pages written or zeroed since the last sync.
    dirty: BTreeSet<u64>,
    /// The smallest size the file had since the last sync, if it shrank: the durable image must
    /// lose everything past it even where the file later grew back over holes.
    shrunk_to: Option<u64>,
}

impl FileContent {
    pub(super) fn size(&self) -> u64 {
        self.visible.size
    }

    /// Bytes held in pages (holes take none), for `st_blocks`.
    pub(super) fn allocated_bytes(&self) -> u64 {
        self.visible.pages.len() as u64 * PAGE_SIZE
    }

    /// Up to `len` bytes from `offset`, short at end of file.
    pub(super) fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let end = offset.saturating_add(len).min(self.visible.size);
        if offset >= end {
            return Vec::new();
        }
        let mut out = vec![0u8; (end - offset) as usize];
        for index in offset / PAGE_SIZE..pages_for(end) {
            let Some(page) = self.visible.pages.get(&index) else {
                continue; // a hole: `out` is already zero there
            };
            let page_start = index * PAGE_SIZE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE_SIZE);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - page_start) as usize..(to - page_start) as usize]);
        }
        out
    }

    /// Writes `data` at `offset`, growing the file if it ends past the end. The caller has
    /// checked that `offset + data.len()` does not overflow.
    pub(super) fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if data.is_empty() {
            return;
        }
        for index in offset / PAGE_SIZE..pages_for(end) {
            let page_start = index * PAGE_SIZE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE_SIZE);
            let page = self
                .visible
                .pages
                .entry(index)
                .or_insert_with(|| Arc::new([0; PAGE_SIZE as usize]));
            // Copies the page only if the durable image still shares it.
            Arc::make_mut(page)[(from - page_start) as usize..(to - page_start) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            self.dirty.insert(index);
        }
        self.visible.size = self.visible.size.max(end);
    }

    /// truncate(2): shrinking discards the tail, growing adds a hole.
    pub(super) fn set_size(&mut self, size: u64) {
        if size < self.visible.size {
            self.shrunk_to = Some(self.shrunk_to.map_or(size, |s| s.min(size)));
            self.visible.drop_from(pages_for(size));
            self.dirty.split_off(&pages_for(size));
            if !size.is_multiple_of(PAGE_SIZE) {
                self.zero_within_page(size, PAGE_SIZE - size % PAGE_SIZE);
            }
        }
        self.visible.size = size;
    }

    /// Zeroes `[offset, offset + len)` inside the file (a punched hole); nothing past the end.
    pub(super) fn zero_range(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.visible.size);
        let mut at = offset;
        while at < end {
            let page_end = (at / PAGE_SIZE + 1) * PAGE_SIZE;
            let to = end.min(page_end);
            if at.is_multiple_of(PAGE_SIZE) && to == page_end {
                if self.visible.pages.remove(&(at / PAGE_SIZE)).is_some() {
                    self.dirty.insert(at / PAGE_SIZE);
                }
            } else {
                self.zero_within_page(at, to - at);
            }
            at = to;
        }
    }

    /// Zeroes `len` bytes from `offset`, all within one page; a hole stays a hole.
    fn zero_within_page(&mut self, offset: u64, len: u64) {
        let index = offset / PAGE_SIZE;
        if let Some(page) = self.visible.pages.get_mut(&index) {
            let from = (offset % PAGE_SIZE) as usize;
            Arc::make_mut(page)[from..from + len as usize].fill(0);
            self.dirty.insert(index);
        }
    }

    /// fsync/fdatasync: the durable image becomes what is visible now. Costs one pointer copy
    /// per page written since the previous sync, whatever the file's size.
    pub(super) fn sync(&mut self) {
        if let Some(smallest) = self.shrunk_to.take() {
            self.durable.drop_from(pages_for(smallest));
        }
        for index in std::mem::take(&mut self.dirty) {
            match self.visible.pages.get(&index) {
                Some(page) => self.durable.pages.insert(index, page.clone()),
                None => self.durable.pages.remove(&index),
            };
        }
        self.durable.size = self.visible.size;
        self.durable.drop_from(pages_for(self.durable.size));
    }

    /// Power cut: the visible contents become the durable image again. Returns how many pages
    /// written since the last sync were discarded, and whether the contents changed at all.
    pub(super) fn revert(&mut self) -> (u64, bool) {
        let discarded = self.dirty.len() as u64;
        let changed =
            discarded > 0 || self.shrunk_to.is_some() || self.visible.size != self.durable.size;
        self.visible = self.durable.clone();
        self.dirty.clear();
        self.shrunk_to = None;
        (discarded, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(file: &FileContent) -> Vec<u8> {
        file.read(0, u64::MAX)
    }

    #[test]
    fn sync_and_revert_track_only_synced_bytes() {
        let mut file = FileContent::default();
        file.write(0, &[1; 6000]);
        file.sync();
        file.write(5000, &[2; 5000]);
        assert_eq!(file.size(), 10_000);
        let (discarded, changed) = file.revert();
        assert_eq!((discarded, changed), (2, true));
        assert_eq!(content(&file), vec![1; 6000]);
    }

    #[test]
    fn shrink_then_regrow_does_not_resurrect_old_bytes() {
        let mut file = FileContent::default();
        file.write(0, &[7; 3 * PAGE_SIZE as usize]);
        file.sync();
        file.set_size(100);
        file.write(2 * PAGE_SIZE + 10, b"x");
        file.sync();
        file.write(0, b"unsynced");
        file.revert();
        let bytes = content(&file);
        assert_eq!(bytes.len() as u64, 2 * PAGE_SIZE + 11);
        assert!(bytes[..100].iter().all(|b| *b == 7));
        assert!(bytes[100..2 * PAGE_SIZE as usize + 10]
            .iter()
            .all(|b| *b == 0));
        assert_eq!(bytes[2 * PAGE_SIZE as usize + 10], b'x');
    }

    #[test]
    fn zero_range_punches_whole_pages_and_zeroes_partial_ones() {
        let mut file = FileContent::default();
        file.write(0, &[9; 3 * PAGE_SIZE as usize]);
        file.zero_range(100, 2 * PAGE_SIZE);
        assert_eq!(file.allocated_bytes(), 2 * PAGE_SIZE);
        let bytes = content(&file);
        assert!(bytes[..100].iter().all(|b| *b == 9));
        assert!(bytes[100..2 * PAGE_SIZE as usize + 100]
            .iter()
            .all(|b| *b == 0));
        assert!(bytes[2 * PAGE_SIZE as usize + 100..]
            .iter()
            .all(|b| *b == 9));
        file.zero_range(10 * PAGE_SIZE, 5);
        assert_eq!(
            file.size(),
            3 * PAGE_SIZE,
            "punching past the end changes nothing"
        );
    }
}
