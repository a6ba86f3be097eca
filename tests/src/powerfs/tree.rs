//! The filesystem's state: every inode as processes see it now, next to its durable image (what
//! its last fsync made durable), and the operations processes make on it. The durable side —
//! syncs and the power cut — is in [`durable`]. Operations return errno values and never panic,
//! whatever they are asked.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

use super::pages::{FileContent, PAGE_SIZE};

mod durable;

pub use durable::CutReport;

pub(super) type Ino = u64;
pub(super) const ROOT: Ino = 1;

/// Largest file size accepted (that of ext4), so offsets never overflow.
const MAX_FILE_SIZE: u64 = 16 << 40;
const MAX_NAME_LEN: usize = 255;

/// Attributes other than the size and link count, which come from the content and the tree.
#[derive(Clone, Copy)]
struct Meta {
    perm: u16,
    uid: u32,
    gid: u32,
    rdev: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    crtime: SystemTime,
}

impl Meta {
    fn new(perm: u32, uid: u32, gid: u32, rdev: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            perm: (perm & 0o7777) as u16,
            uid,
            gid,
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
        }
    }

    fn modified(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

struct Dir {
    entries: BTreeMap<OsString, Ino>,
    /// The entries as of this directory's last fsync.
    durable_entries: BTreeMap<OsString, Ino>,
    parent: Ino,
}

enum Node {
    File(FileContent),
    Dir(Dir),
    /// Symlink targets never change, so they need no durable copy.
    Symlink(OsString),
    /// FIFOs, sockets and device nodes: attributes only.
    Special,
}

struct Inode {
    kind: FileType,
    meta: Meta,
    /// Attributes as of the last fsync (fdatasync does not make them durable).
    durable_meta: Meta,
    /// Entries naming this inode now; for a directory 2 + its subdirectories, 0 once removed.
    nlink: u32,
    node: Node,
    open_handles: u32,
    /// Durable entries naming this inode: while any exists a cut can bring it back, so it is
    /// kept even when unlinked and closed.
    durable_refs: u32,
}

impl Inode {
    fn dir(&self) -> Result<&Dir, Errno> {
        match &self.node {
            Node::Dir(dir) => Ok(dir),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self) -> Result<&mut Dir, Errno> {
        match &mut self.node {
            Node::Dir(dir) => Ok(dir),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn file(&self) -> Result<&FileContent, Errno> {
        match &self.node {
            Node::File(content) => Ok(content),
            Node::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn file_mut(&mut self) -> Result<&mut FileContent, Errno> {
        match &mut self.node {
            Node::File(content) => Ok(content),
            Node::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }
}

enum Handle {
    File {
        ino: Ino,
        append: bool,
    },
    /// A directory listing, taken when a reader starts at offset 0 so that entries added or
    /// removed while it reads neither shift nor repeat the others.
    Dir {
        ino: Ino,
        listing: Vec<(Ino, FileType, OsString)>,
    },
}

/// What a setattr changes.
#[derive(Default)]
pub(super) struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub ctime: Option<SystemTime>,
}

/// The fallocate modes RocksDB and the tests use (see fallocate(2)).
const FALLOC_FL_KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const FALLOC_FL_PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
const FALLOC_FL_ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;

pub(super) struct Tree {
    inodes: HashMap<Ino, Inode>,
    handles: HashMap<u64, Handle>,
    /// Never reused, not even across a cut, so the kernel can never confuse two inodes.
    next_ino: Ino,
    next_handle: u64,
}

fn now_or(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > MAX_NAME_LEN {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl Tree {
    /// An empty filesystem whose root directory belongs to `uid`/`gid`; it is durable as is.
    pub(super) fn new(uid: u32, gid: u32) -> Tree {
        let meta = Meta::new(0o755, uid, gid, 0);
        let root = Inode {
            kind: FileType::Directory,
            meta,
            durable_meta: meta,
            nlink: 2,
            node: Node::Dir(Dir {
                entries: BTreeMap::new(),
                durable_entries: BTreeMap::new(),
                parent: ROOT,
            }),
            open_handles: 0,
            durable_refs: 0,
        };
        Tree {
            inodes: HashMap::from([(ROOT, root)]),
            handles: HashMap::new(),
            next_ino: ROOT + 1,
            next_handle: 1,
        }
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn attr(&self, ino: Ino) -> Result<FileAttr, Errno> {
        let inode = self.inode(ino)?;
        let (size, allocated) = match &inode.node {
            Node::File(content) => (content.size(), content.allocated_bytes()),
            Node::Dir(_) => (PAGE_SIZE, PAGE_SIZE),
            Node::Symlink(target) => (target.len() as u64, 0),
            Node::Special => (0, 0),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: allocated / 512,
            atime: inode.meta.atime,
            mtime: inode.meta.mtime,
            ctime: inode.meta.ctime,
            crtime: inode.meta.crtime,
            kind: inode.kind,
            perm: inode.meta.perm,
            nlink: inode.nlink,
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            rdev: inode.meta.rdev,
            blksize: PAGE_SIZE as u32,
            flags: 0,
        })
    }

    /// A directory that still has a name: entries cannot be added to a removed one.
    fn live_dir(&self, ino: Ino) -> Result<&Dir, Errno> {
        let inode = self.inode(ino)?;
        let dir = inode.dir()?;
        if inode.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(dir)
    }

    fn child(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        let dir = self.inode(parent)?.dir()?;
        if name == "." {
            return Ok(parent);
        }
        if name == ".." {
            return Ok(dir.parent);
        }
        dir.entries.get(name).copied().ok_or(Errno::ENOENT)
    }

    pub(super) fn lookup(&self, parent: Ino, name: &OsStr) -> Result<FileAttr, Errno> {
        self.attr(self.child(parent, name)?)
    }

    /// Adds a new inode under `parent` as `name`.
    fn create_node(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: FileType,
        meta: Meta,
        node: Node,
    ) -> Result<Ino, Errno> {
        check_name(name)?;
        if self.live_dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let is_dir = kind == FileType::Directory;
        self.inodes.insert(
            ino,
            Inode {
                kind,
                meta,
                durable_meta: meta,
                nlink: if is_dir { 2 } else { 1 },
                node,
                open_handles: 0,
                durable_refs: 0,
            },
        );
        let parent_inode = self.inode_mut(parent)?;
        parent_inode.dir_mut()?.entries.insert(name.to_owned(), ino);
        parent_inode.meta.modified();
        if is_dir {
            parent_inode.nlink += 1;
        }
        Ok(ino)
    }

    /// mknod(2) for regular files, FIFOs, sockets and device nodes.
    pub(super) fn mknod(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr, Errno> {
        let (kind, node) = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => (FileType::RegularFile, Node::File(FileContent::default())),
            libc::S_IFIFO => (FileType::NamedPipe, Node::Special),
            libc::S_IFSOCK => (FileType::Socket, Node::Special),
            libc::S_IFCHR => (FileType::CharDevice, Node::Special),
            libc::S_IFBLK => (FileType::BlockDevice, Node::Special),
            _ => return Err(Errno::EINVAL),
        };
        let ino = self.create_node(parent, name, kind, Meta::new(mode, uid, gid, rdev), node)?;
        self.attr(ino)
    }

    pub(super) fn mkdir(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr, Errno> {
        let dir = Node::Dir(Dir {
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            parent,
        });
        let meta = Meta::new(mode, uid, gid, 0);
        let ino = self.create_node(parent, name, FileType::Directory, meta, dir)?;
        self.attr(ino)
    }

    pub(super) fn symlink(
        &mut self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr, Errno> {
        let node = Node::Symlink(target.to_owned());
        let meta = Meta::new(0o777, uid, gid, 0);
        let ino = self.create_node(parent, name, FileType::Symlink, meta, node)?;
        self.attr(ino)
    }

    pub(super) fn readlink(&self, ino: Ino) -> Result<Vec<u8>, Errno> {
        match &self.inode(ino)?.node {
            Node::Symlink(target) => Ok(target.as_encoded_bytes().to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// open(2) with O_CREAT: creates the file unless it exists (EEXIST with O_EXCL).
    pub(super) fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, u64), Errno> {
        let ino = match self.child(parent, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
            Ok(existing) => existing,
            Err(_) => {
                let meta = Meta::new(mode, uid, gid, 0);
                let node = Node::File(FileContent::default());
                self.create_node(parent, name, FileType::RegularFile, meta, node)?
            }
        };
        let handle = self.open(ino, flags)?;
        Ok((self.attr(ino)?, handle))
    }

    pub(super) fn open(&mut self, ino: Ino, flags: i32) -> Result<u64, Errno> {
        let inode = self.inode_mut(ino)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        match &mut inode.node {
            Node::Dir(_) if writable => return Err(Errno::EISDIR),
            Node::File(content) if writable && flags & libc::O_TRUNC != 0 => {
                content.set_size(0);
                inode.meta.modified();
            }
            _ => {}
        }
        inode.open_handles += 1;
        let append = flags & libc::O_APPEND != 0;
        Ok(self.add_handle(Handle::File { ino, append }))
    }

    fn add_handle(&mut self, handle: Handle) -> u64 {
        let id = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(id, handle);
        id
    }

    /// The file a handle was opened on. Handles opened before a power cut are gone, so a process
    /// that outlived the cut gets EIO rather than a view of the new state.
    fn file_handle(&self, handle: u64, ino: Ino) -> Result<bool, Errno> {
        match self.handles.get(&handle) {
            Some(Handle::File {
                ino: opened,
                append,
            }) if *opened == ino => Ok(*append),
            _ => Err(Errno::EIO),
        }
    }

    pub(super) fn read(
        &self,
        ino: Ino,
        handle: u64,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, Errno> {
        self.file_handle(handle, ino)?;
        let content = self.inode(ino)?.file()?;
        Ok(content.read(offset, u64::from(len)))
    }

    pub(super) fn write(
        &mut self,
        ino: Ino,
        handle: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        let append = self.file_handle(handle, ino)?;
        let written = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let inode = self.inode_mut(ino)?;
        let content = inode.file_mut()?;
        // O_APPEND is applied here, at the file's real end, rather than trusting the size the
        // kernel last cached.
        let offset = if append { content.size() } else { offset };
        if offset.saturating_add(data.len() as u64) > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        content.write(offset, data);
        inode.meta.modified();
        Ok(written)
    }

    pub(super) fn release(&mut self, handle: u64) {
        if let Some(Handle::File { ino, .. }) = self.handles.remove(&handle) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.open_handles = inode.open_handles.saturating_sub(1);
            }
            self.forget_if_unused(ino);
        }
    }

    pub(super) fn setattr(&mut self, ino: Ino, changes: AttrChanges) -> Result<FileAttr, Errno> {
        let inode = self.inode_mut(ino)?;
        if let Some(size) = changes.size {
            if size > MAX_FILE_SIZE {
                return Err(Errno::EFBIG);
            }
            inode.file_mut()?.set_size(size);
            inode.meta.modified();
        }
        let meta = &mut inode.meta;
        if let Some(mode) = changes.mode {
            meta.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = changes.uid {
            meta.uid = uid;
        }
        if let Some(gid) = changes.gid {
            meta.gid = gid;
        }
        if let Some(atime) = changes.atime {
            meta.atime = now_or(atime);
        }
        if let Some(mtime) = changes.mtime {
            meta.mtime = now_or(mtime);
        }
        meta.ctime = changes.ctime.unwrap_or_else(SystemTime::now);
        self.attr(ino)
    }

    pub(super) fn fallocate(
        &mut self,
        ino: Ino,
        handle: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        self.file_handle(handle, ino)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= MAX_FILE_SIZE)
            .ok_or(Errno::EFBIG)?;
        let inode = self.inode_mut(ino)?;
        let content = inode.file_mut()?;
        let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
        match mode & !FALLOC_FL_KEEP_SIZE {
            // Space is never short here, so reserving it only changes the size (unless kept).
            0 => {}
            FALLOC_FL_PUNCH_HOLE if keep_size => content.zero_range(offset, len),
            FALLOC_FL_ZERO_RANGE => content.zero_range(offset, len),
            _ => return Err(Errno::EOPNOTSUPP),
        }
        if !keep_size && end > content.size() {
            content.set_size(end);
        }
        inode.meta.modified();
        Ok(())
    }

    pub(super) fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        let inode = self.inode_mut(ino)?;
        if inode.kind == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.meta.ctime = SystemTime::now();
        self.remove_entry(parent, name)?;
        self.forget_if_unused(ino);
        Ok(())
    }

    pub(super) fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        if name == "." {
            return Err(Errno::EINVAL);
        }
        let ino = self.child(parent, name)?;
        if ino == ROOT || name == ".." {
            return Err(Errno::ENOTEMPTY);
        }
        let inode = self.inode_mut(ino)?;
        if !inode.dir()?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        inode.nlink = 0;
        self.remove_entry(parent, name)?;
        let parent_inode = self.inode_mut(parent)?;
        parent_inode.nlink = parent_inode.nlink.saturating_sub(1);
        self.forget_if_unused(ino);
        Ok(())
    }

    fn remove_entry(&mut self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        let parent_inode = self.inode_mut(parent)?;
        let ino = parent_inode
            .dir_mut()?
            .entries
            .remove(name)
            .ok_or(Errno::ENOENT)?;
        parent_inode.meta.modified();
        Ok(ino)
    }

    /// rename(2), with RENAME_NOREPLACE; RENAME_EXCHANGE and RENAME_WHITEOUT are EINVAL.
    pub(super) fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        check_name(new_name)?;
        if name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        let moved = self.child(parent, name)?;
        self.live_dir(new_parent)?;
        let moved_is_dir = self.inode(moved)?.kind == FileType::Directory;
        let replaced = self.child(new_parent, new_name).ok();
        if let Some(replaced) = replaced {
            if no_replace {
                return Err(Errno::EEXIST);
            }
            if replaced == moved {
                return Ok(()); // two names of one inode: rename(2) does nothing
            }
            let target = self.inode(replaced)?;
            match (moved_is_dir, &target.node) {
                (true, Node::Dir(dir)) if !dir.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                (true, Node::Dir(_)) => {}
                (true, _) => return Err(Errno::ENOTDIR),
                (false, Node::Dir(_)) => return Err(Errno::EISDIR),
                (false, _) => {}
            }
        }
        if moved_is_dir && self.is_within(new_parent, moved) {
            return Err(Errno::EINVAL); // a directory cannot move into itself
        }

        self.remove_entry(parent, name)?;
        let new_parent_inode = self.inode_mut(new_parent)?;
        new_parent_inode
            .dir_mut()?
            .entries
            .insert(new_name.to_owned(), moved);
        new_parent_inode.meta.modified();
        if moved_is_dir && parent != new_parent {
            new_parent_inode.nlink += 1;
            let parent_inode = self.inode_mut(parent)?;
            parent_inode.nlink = parent_inode.nlink.saturating_sub(1);
            self.inode_mut(moved)?.dir_mut()?.parent = new_parent;
        }
        self.inode_mut(moved)?.meta.ctime = SystemTime::now();
        if let Some(replaced) = replaced {
            let target = self.inode_mut(replaced)?;
            if target.kind == FileType::Directory {
                target.nlink = 0;
                let new_parent_inode = self.inode_mut(new_parent)?;
                new_parent_inode.nlink = new_parent_inode.nlink.saturating_sub(1);
            } else {
                target.nlink = target.nlink.saturating_sub(1);
                target.meta.ctime = SystemTime::now();
            }
            self.forget_if_unused(replaced);
        }
        Ok(())
    }

    /// Whether directory `ino` is `ancestor` or lies below it.
    fn is_within(&self, mut ino: Ino, ancestor: Ino) -> bool {
        // Bounded by the number of inodes, in case the parent links ever formed a loop.
        for _ in 0..=self.inodes.len() {
            if ino == ancestor {
                return true;
            }
            match self.inodes.get(&ino).map(|inode| &inode.node) {
                Some(Node::Dir(dir)) if ino != ROOT => ino = dir.parent,
                _ => return false,
            }
        }
        false
    }

    /// link(2): another name for a file.
    pub(super) fn link(
        &mut self,
        ino: Ino,
        new_parent: Ino,
        new_name: &OsStr,
    ) -> Result<FileAttr, Errno> {
        check_name(new_name)?;
        let inode = self.inode(ino)?;
        if inode.kind == FileType::Directory {
            return Err(Errno::EPERM);
        }
        if inode.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if self.live_dir(new_parent)?.entries.contains_key(new_name) {
            return Err(Errno::EEXIST);
        }
        let new_parent_inode = self.inode_mut(new_parent)?;
        new_parent_inode
            .dir_mut()?
            .entries
            .insert(new_name.to_owned(), ino);
        new_parent_inode.meta.modified();
        let inode = self.inode_mut(ino)?;
        inode.nlink += 1;
        inode.meta.ctime = SystemTime::now();
        self.attr(ino)
    }

    pub(super) fn opendir(&mut self, ino: Ino) -> Result<u64, Errno> {
        self.inode(ino)?.dir()?;
        Ok(self.add_handle(Handle::Dir {
            ino,
            listing: Vec::new(),
        }))
    }

    /// Feeds the entries from `offset` on to `add` (given each entry's next offset) until it
    /// returns true, meaning the reply buffer is full.
    pub(super) fn readdir(
        &mut self,
        ino: Ino,
        handle: u64,
        offset: u64,
        mut add: impl FnMut(Ino, u64, FileType, &OsStr) -> bool,
    ) -> Result<(), Errno> {
        if offset == 0 {
            let fresh = self.listing(ino)?;
            match self.handles.get_mut(&handle) {
                Some(Handle::Dir {
                    ino: opened,
                    listing,
                }) if *opened == ino => *listing = fresh,
                _ => return Err(Errno::EIO),
            }
        }
        let Some(Handle::Dir { listing, .. }) = self.handles.get(&handle) else {
            return Err(Errno::EIO);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (child, kind, name)) in listing.iter().enumerate().skip(start) {
            if add(*child, index as u64 + 1, *kind, name) {
                break;
            }
        }
        Ok(())
    }

    fn listing(&self, ino: Ino) -> Result<Vec<(Ino, FileType, OsString)>, Errno> {
        let dir = self.inode(ino)?.dir()?;
        let mut listing = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (dir.parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in &dir.entries {
            if let Ok(inode) = self.inode(*child) {
                listing.push((*child, inode.kind, name.clone()));
            }
        }
        Ok(listing)
    }

    pub(super) fn releasedir(&mut self, handle: u64) {
        self.handles.remove(&handle);
    }

    pub(super) fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }
}
