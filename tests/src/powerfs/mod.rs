//! PowerFs: an in-memory FUSE filesystem that can lose power, in the manner of LazyFS.
//!
//! Crash tests that SIGKILL a server keep the kernel's page cache, so they cannot catch a missing
//! fsync. PowerFs keeps every file's data twice: as processes see it now, and as its last
//! fsync/fdatasync left it; and every directory's entries twice: now, and as of the last fsync
//! of that directory. [`PowerFs::cut_power`] throws the first copy away. The rules are the strict
//! reading of fsync(2):
//!
//! - A file's data and size (write, truncate, fallocate) become durable when any handle of that
//!   file is fsynced or fdatasynced; its attributes (mode, owner, times) only with fsync.
//! - A name (create, mknod, mkdir, symlink, link, unlink, rmdir, rename) becomes durable only
//!   when its directory is fsynced; a rename between directories needs both. Syncing a file
//!   does not make its name durable.
//! - After a cut the filesystem holds exactly what is durable: inodes no durable entry reaches
//!   are gone, and a file whose unlink was not durable is back with its durable data.
//!
//! The kernel is told to cache nothing (zero TTLs, direct I/O; the pages of a shared mmap are
//! dropped at every mmap and write), so every process, including one started after a cut, sees
//! the filesystem's own state. File locks (flock, fcntl) are left to
//! the kernel's local locking.
//!
//! The FUSE session runs on background threads of the test process, so a test can start real
//! servers on the mount, kill them, cut power and start them again. Dropping the [`PowerFs`]
//! unmounts it, also while a test panics. A test process that dies without unmounting (SIGKILL,
//! a timeout) leaves a dead mount behind that answers every access with ENOTCONN; the next
//! [`PowerFs::mount`] on the machine detaches every such mount whose process is gone (their
//! source is `powerfs.<pid>`, see `grep powerfs /proc/mounts`), and `umount -l <dir>` does the
//! same by hand.

mod fuse;
mod pages;
mod tree;

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use fuser::{BackgroundSession, Config, MountOption};

pub use tree::CutReport;

use fuse::PowerFsOps;
use tree::Tree;

/// Mount sources are `powerfs.<pid of the test process>`, which is how stale mounts are found.
const SOURCE_PREFIX: &str = "powerfs.";
/// FUSE worker threads: a second one overlaps one request's kernel round trip with the next
/// request's work (the state itself sits behind one lock).
const WORKER_THREADS: usize = 2;

/// A mounted PowerFs. Dropping it unmounts it.
pub struct PowerFs {
    tree: Arc<Mutex<Tree>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    /// The directory [`PowerFs::mount_in_temp_dir`] created; removed after the unmount.
    temp_dir: Option<tempfile::TempDir>,
}

impl PowerFs {
    /// Mounts an empty PowerFs on `mountpoint`, an existing directory. Its root directory takes
    /// the owner of `mountpoint` and is durable from the start.
    pub fn mount(mountpoint: &Path) -> Result<PowerFs> {
        require_fuse_device()?;
        detach_stale_mounts();
        let mountpoint = mountpoint
            .canonicalize()
            .with_context(|| format!("PowerFs mount point {}", mountpoint.display()))?;
        let owner = std::fs::metadata(&mountpoint)
            .with_context(|| format!("PowerFs mount point {}", mountpoint.display()))?;
        let tree = Arc::new(Mutex::new(Tree::new(owner.uid(), owner.gid())));

        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("{SOURCE_PREFIX}{}", std::process::id())),
            // Permissions are checked by the kernel from the mode bits, as on a disk.
            MountOption::DefaultPermissions,
        ];
        config.n_threads = Some(WORKER_THREADS);
        let ops = PowerFsOps { tree: tree.clone() };
        let session = fuser::spawn_mount(ops, &mountpoint, &config).map_err(|e| {
            anyhow!(
                "mounting PowerFs on {}: {e}. fuser mounts with mount(2), which needs root \
                 (CAP_SYS_ADMIN); as another user it runs fusermount3 (Debian's fuse3 package)",
                mountpoint.display()
            )
        })?;
        Ok(PowerFs {
            tree,
            mountpoint,
            session: Some(session),
            temp_dir: None,
        })
    }

    /// Mounts an empty PowerFs on a fresh temp dir, which is removed after the unmount.
    pub fn mount_in_temp_dir() -> Result<PowerFs> {
        let dir = tempfile::Builder::new()
            .prefix("powerfs-")
            .tempdir()
            .context("creating a temp dir to mount PowerFs on")?;
        let mut fs = PowerFs::mount(dir.path())?;
        fs.temp_dir = Some(dir);
        Ok(fs)
    }

    /// Where it is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Simulated power loss: every file's data reverts to what it held at its last
    /// fsync/fdatasync, every directory's entries to what they held at its last fsync, and
    /// every open file handle dies (later requests on it fail with EIO). The caller kills the
    /// processes using the filesystem first.
    pub fn cut_power(&self) -> CutReport {
        fuse::lock(&self.tree).cut_power()
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if let Err(e) = session.umount_and_join() {
            // Still busy (some process has a file or its working directory there): detach it so
            // it leaves the namespace now; the kernel ends the session when the last user goes.
            match detach(&self.mountpoint) {
                Ok(()) => eprintln!(
                    "PowerFs on {}: unmount failed ({e}), detached it instead",
                    self.mountpoint.display()
                ),
                Err(detach_error) => eprintln!(
                    "PowerFs on {}: unmount failed ({e}) and so did detaching it \
                     ({detach_error}); remove it with `umount -l {}`",
                    self.mountpoint.display(),
                    self.mountpoint.display()
                ),
            }
        }
    }
}

fn require_fuse_device() -> Result<()> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        bail!(
            "PowerFs needs the kernel's FUSE device, but /dev/fuse cannot be opened ({e}): load \
             the module (`modprobe fuse`), or give the container the device (`--device /dev/fuse` \
             and CAP_SYS_ADMIN)"
        );
    }
    Ok(())
}

/// Lazily unmounts `path` (umount2 with MNT_DETACH).
fn detach(path: &Path) -> std::io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Detaches the PowerFs mounts of test processes that no longer run. Mounts of live processes,
/// this one included, are left alone.
fn detach_stale_mounts() {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for (mountpoint, pid) in table.lines().filter_map(powerfs_mount) {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(e) = detach(&mountpoint) {
                eprintln!(
                    "PowerFs: cannot detach the stale mount {} of process {pid}: {e}",
                    mountpoint.display()
                );
            }
        }
    }
}

/// The mount point and owning pid of a PowerFs line of /proc/self/mountinfo:
/// `id parent dev root MOUNTPOINT options [tags...] - fuse powerfs.PID superoptions`.
fn powerfs_mount(line: &str) -> Option<(PathBuf, u32)> {
    let (mount, filesystem) = line.split_once(" - ")?;
    let mut filesystem = filesystem.split(' ');
    if filesystem.next()? != "fuse" {
        return None;
    }
    let pid = filesystem
        .next()?
        .strip_prefix(SOURCE_PREFIX)?
        .parse()
        .ok()?;
    let mountpoint = mount.split(' ').nth(4)?;
    Some((unescape_octal(mountpoint), pid))
}

/// Undoes mountinfo's escaping of space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_of_powerfs_mounts_are_recognised() {
        let line = "312 29 0:77 / /tmp/powerfs-a\\040b rw,nosuid,nodev,relatime shared:1 - \
                    fuse powerfs.4242 rw,user_id=0,group_id=0,default_permissions";
        assert_eq!(
            powerfs_mount(line),
            Some((PathBuf::from("/tmp/powerfs-a b"), 4242))
        );
        let other = "30 29 0:26 / /sys/fs/fuse/connections rw - fusectl fusectl rw";
        assert_eq!(powerfs_mount(other), None);
    }
}
