//! What is durable: fsync and fsyncdir copy the visible state into the durable images, durable
//! entries keep otherwise unused inodes alive, and the power cut turns the durable images back
//! into the visible state.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fmt;

use fuser::{Errno, FileType};

use super::{Ino, Inode, Node, Tree, ROOT};

/// What a simulated power cut threw away, for test logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose contents or size differed from their last fsync/fdatasync.
    pub files_reverted: usize,
    /// 4 KiB pages of file data written (or zeroed) since their file's last fsync.
    pub unsynced_pages: u64,
    /// Directory entries created, removed or renamed since their directory's last fsync, counted
    /// in directories that survive.
    pub entries_reverted: usize,
    /// Inodes that processes could reach before the cut and that no durable entry reaches.
    pub inodes_vanished: usize,
}

impl fmt::Display for CutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files reverted ({} unsynced 4 KiB pages dropped), {} directory entries reverted, \
             {} inodes vanished",
            self.files_reverted, self.unsynced_pages, self.entries_reverted, self.inodes_vanished
        )
    }
}

impl Tree {
    /// fsync (`datasync` false) or fdatasync of a file: its data and size become durable, and
    /// with fsync its attributes too. Its name does not: that takes an fsync of the directory.
    pub(in crate::powerfs) fn fsync(&mut self, ino: Ino, datasync: bool) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        if let Node::File(content) = &mut inode.node {
            content.sync();
        }
        if !datasync {
            inode.durable_meta = inode.meta;
        }
        Ok(())
    }

    /// fsync of a directory: its entries (and attributes) become durable as they are now.
    pub(in crate::powerfs) fn fsyncdir(&mut self, ino: Ino) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.durable_meta = inode.meta;
        let dir = inode.dir_mut()?;
        let now_durable = dir.entries.clone();
        let was_durable = std::mem::replace(&mut dir.durable_entries, now_durable.clone());
        for child in now_durable.values() {
            if let Some(inode) = self.inodes.get_mut(child) {
                inode.durable_refs += 1;
            }
        }
        for child in was_durable.values() {
            if let Some(inode) = self.inodes.get_mut(child) {
                inode.durable_refs = inode.durable_refs.saturating_sub(1);
            }
            self.forget_if_unused(*child);
        }
        Ok(())
    }

    /// Drops `ino` once nothing can reach it any more: no name, no open handle, and no durable
    /// entry a cut could restore. A dropped directory releases its durable entries in turn.
    pub(super) fn forget_if_unused(&mut self, ino: Ino) {
        let mut candidates = vec![ino];
        while let Some(ino) = candidates.pop() {
            let unused = self.inodes.get(&ino).is_some_and(|inode| {
                inode.nlink == 0 && inode.open_handles == 0 && inode.durable_refs == 0
            });
            if ino == ROOT || !unused {
                continue;
            }
            if let Some(Inode {
                node: Node::Dir(dir),
                ..
            }) = self.inodes.remove(&ino)
            {
                for child in dir.durable_entries.into_values() {
                    if let Some(inode) = self.inodes.get_mut(&child) {
                        inode.durable_refs = inode.durable_refs.saturating_sub(1);
                    }
                    candidates.push(child);
                }
            }
        }
    }

    /// The power cut: every inode reachable from the root through durable entries takes back its
    /// durable contents, attributes and entries; every other inode and every open handle is
    /// gone.
    pub(in crate::powerfs) fn cut_power(&mut self) -> CutReport {
        let mut report = CutReport::default();

        // Walk the durable tree. A directory reached a second time (a durable entry left behind
        // in its old parent by a rename whose source directory was synced later) keeps its
        // first parent only, as fsck would do.
        let mut parents = HashMap::from([(ROOT, ROOT)]);
        let mut links: HashMap<Ino, u32> = HashMap::new();
        let mut subdirs: HashMap<Ino, u32> = HashMap::new();
        let mut pending = VecDeque::from([ROOT]);
        while let Some(dir_ino) = pending.pop_front() {
            let Some(Node::Dir(dir)) = self.inodes.get(&dir_ino).map(|inode| &inode.node) else {
                continue;
            };
            let mut kept = BTreeMap::new();
            for (name, child) in &dir.durable_entries {
                let Some(child_inode) = self.inodes.get(child) else {
                    continue;
                };
                if child_inode.kind == FileType::Directory {
                    if parents.contains_key(child) {
                        continue;
                    }
                    parents.insert(*child, dir_ino);
                    *subdirs.entry(dir_ino).or_default() += 1;
                    pending.push_back(*child);
                }
                *links.entry(*child).or_default() += 1;
                kept.insert(name.clone(), *child);
            }
            if let Some(Node::Dir(dir)) = self.inodes.get_mut(&dir_ino).map(|i| &mut i.node) {
                dir.durable_entries = kept;
            }
        }

        let survivors: HashSet<Ino> = parents.keys().chain(links.keys()).copied().collect();
        self.inodes.retain(|ino, inode| {
            let survives = survivors.contains(ino);
            if !survives && inode.nlink > 0 {
                report.inodes_vanished += 1;
            }
            if !survives {
                if let Node::Dir(dir) = &inode.node {
                    report.entries_reverted += dir.entries.len();
                }
            }
            survives
        });

        for (ino, inode) in &mut self.inodes {
            inode.meta = inode.durable_meta;
            inode.open_handles = 0;
            inode.durable_refs = links.get(ino).copied().unwrap_or(0);
            match &mut inode.node {
                Node::File(content) => {
                    let (discarded, changed) = content.revert();
                    report.unsynced_pages += discarded;
                    report.files_reverted += usize::from(changed);
                    inode.nlink = inode.durable_refs;
                }
                Node::Dir(dir) => {
                    report.entries_reverted += changed_entries(&dir.entries, &dir.durable_entries);
                    dir.entries = dir.durable_entries.clone();
                    dir.parent = parents.get(ino).copied().unwrap_or(ROOT);
                    inode.nlink = 2 + subdirs.get(ino).copied().unwrap_or(0);
                }
                Node::Symlink(_) | Node::Special => inode.nlink = inode.durable_refs,
            }
        }
        self.handles.clear();
        report
    }
}

/// Names whose entry differs between two versions of a directory.
fn changed_entries(a: &BTreeMap<OsString, Ino>, b: &BTreeMap<OsString, Ino>) -> usize {
    let only_or_different_in_a = a.iter().filter(|(name, ino)| b.get(*name) != Some(ino));
    let only_in_b = b.keys().filter(|name| !a.contains_key(*name));
    only_or_different_in_a.count() + only_in_b.count()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn names(tree: &Tree, dir: Ino) -> Vec<String> {
        let listing = tree.listing(dir).unwrap();
        // Skips "." and "..".
        listing[2..]
            .iter()
            .map(|(_, _, name)| name.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_directory_cycle_left_by_renames_is_cut_without_looping() {
        let mut tree = Tree::new(0, 0);
        let a = tree.mkdir(ROOT, name("a"), 0o755, 0, 0).unwrap().ino.0;
        let b = tree.mkdir(a, name("b"), 0o755, 0, 0).unwrap().ino.0;
        tree.fsyncdir(ROOT).unwrap();
        tree.fsyncdir(a).unwrap();
        tree.rename(a, name("b"), ROOT, name("b"), false).unwrap();
        tree.rename(ROOT, name("a"), b, name("a"), false).unwrap();
        tree.fsyncdir(b).unwrap();
        tree.fsyncdir(ROOT).unwrap();
        // Durable now: / -> b, b -> a, a -> b (a itself was never synced after losing b).
        tree.cut_power();
        assert_eq!(names(&tree, ROOT), ["b"]);
        assert_eq!(names(&tree, b), ["a"]);
        assert!(names(&tree, a).is_empty(), "b keeps its first parent only");
        assert_eq!(tree.attr(b).unwrap().nlink, 3);
    }

    #[test]
    fn unlinked_closed_file_is_kept_while_a_durable_entry_names_it() {
        let mut tree = Tree::new(0, 0);
        let (attr, handle) = tree
            .create(ROOT, name("f"), 0o644, libc::O_RDWR, 0, 0)
            .unwrap();
        let f = attr.ino.0;
        tree.write(f, handle, 0, b"durable").unwrap();
        tree.fsync(f, false).unwrap();
        tree.fsyncdir(ROOT).unwrap();
        tree.release(handle);
        tree.unlink(ROOT, name("f")).unwrap();
        assert!(tree.inodes.contains_key(&f));
        tree.fsyncdir(ROOT).unwrap();
        assert!(
            !tree.inodes.contains_key(&f),
            "dropped once the unlink is durable"
        );
    }
}
