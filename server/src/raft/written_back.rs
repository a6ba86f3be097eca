//! Writes handed to the disk as they go, so that a large file does not reach the disk all at
//! once at its fsync, in front of the Raft log's.

use std::fs::File;
use std::io::Write;

/// A file whose writes are handed to the disk every [`WrittenBack::EVERY`] bytes, without
/// waiting for them, as RocksDB's `bytes_per_sync` does for its tables. A snapshot of hundreds of
/// MiB synced only at its end would put all of it in the disk's queue at once, ahead of the Raft
/// appends' fsyncs.
pub(super) struct WrittenBack {
    file: File,
    /// File offsets: where the next write goes, and up to where writeback has been started.
    pub(super) written: u64,
    pub(super) handed_to_disk: u64,
}

impl WrittenBack {
    const EVERY: u64 = 1 << 20;

    pub fn new(file: File) -> Self {
        Self::at(file, 0)
    }

    /// For a file whose next write goes at `offset` (the file is positioned there).
    pub fn at(file: File, offset: u64) -> Self {
        Self {
            file,
            written: offset,
            handed_to_disk: offset,
        }
    }

    /// The file, once everything written has been handed to the disk (not yet durable).
    pub fn into_file(mut self) -> File {
        self.hand_rest_to_disk();
        self.file
    }

    /// Starts writeback of what was written and not yet handed to the disk.
    pub fn hand_rest_to_disk(&mut self) {
        if self.written > self.handed_to_disk {
            self.start_writeback(self.handed_to_disk, self.written - self.handed_to_disk);
            self.handed_to_disk = self.written;
        }
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&self, from: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor this struct owns; it reads no memory of ours.
        // Only a hint: a failure (a filesystem without it) leaves the work to the final fsync.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&self, _from: u64, _len: u64) {}
}

impl Write for WrittenBack {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.handed_to_disk >= Self::EVERY {
            self.hand_rest_to_disk();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the sizes of the writes, the file holds exactly what was written, and never
    /// more than a MiB of it waits to be handed to the disk.
    #[test]
    fn a_written_back_file_holds_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut out = WrittenBack::new(File::create(&path).unwrap());
        let mut expected = Vec::new();
        for (i, size) in [1usize, 700_000, 1 << 20, 3, (3 << 20) + 5, 0, 12_345]
            .iter()
            .enumerate()
        {
            let chunk = vec![i as u8; *size];
            out.write_all(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
            assert!(out.written - out.handed_to_disk < WrittenBack::EVERY);
        }
        assert_eq!(out.written, expected.len() as u64);
        assert!(out.handed_to_disk >= out.written - WrittenBack::EVERY);
        out.into_file().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
