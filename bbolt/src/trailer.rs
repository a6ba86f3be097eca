//! etcd ends a snapshot stream with the sha256 of the database before it, and etcdctl keeps it
//! at the end of the saved file. A bbolt file is whole pages, so a file whose size is 32 past a
//! multiple of 512 carries that trailer (etcd's own test, in `etcdutl snapshot restore`).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

pub const TRAILER_LEN: u64 = 32;

/// Passes everything through to `inner` and hashes it; [`HashingWriter::finish`] appends the
/// trailer.
pub struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
        }
    }

    pub fn finish(mut self) -> io::Result<W> {
        let digest = self.hash.finalize();
        self.inner.write_all(&digest)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailer {
    /// The file is a bare database (a copied `member/snap/db`).
    Absent,
    Present {
        stored: [u8; TRAILER_LEN as usize],
        computed: [u8; TRAILER_LEN as usize],
    },
}

impl Trailer {
    pub fn is_valid(&self) -> bool {
        matches!(self, Trailer::Present { stored, computed } if stored == computed)
    }
}

/// Whether `file` ends with etcd's sha256 trailer, and the hash of what precedes it; reads the
/// file once.
pub fn check(file: &File) -> io::Result<Trailer> {
    check_reporting(file, |_, _| {})
}

/// [`check`], telling `hashed` how far it has got (bytes hashed, bytes to hash) after each read.
pub fn check_reporting(file: &File, mut hashed: impl FnMut(u64, u64)) -> io::Result<Trailer> {
    let len = file.metadata()?.len();
    if len % 512 != TRAILER_LEN {
        return Ok(Trailer::Absent);
    }
    let body = len - TRAILER_LEN;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < body {
        let n = buf.len().min((body - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        hash.update(&buf[..n]);
        at += n as u64;
        hashed(at, body);
    }
    let mut stored = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut stored, body)?;
    Ok(Trailer::Present {
        stored,
        computed: hash.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_stream_checks_and_a_changed_byte_does_not() {
        let mut file = tempfile::tempfile().unwrap();
        let mut out = HashingWriter::new(&mut file);
        out.write_all(&[7u8; 1024]).unwrap();
        out.finish().unwrap();
        assert!(check(&file).unwrap().is_valid());
        file.write_all_at(&[8], 100).unwrap();
        assert!(matches!(check(&file).unwrap(), Trailer::Present { .. }));
        assert!(!check(&file).unwrap().is_valid());
        file.set_len(1024).unwrap();
        assert_eq!(check(&file).unwrap(), Trailer::Absent);
    }

    #[test]
    fn the_check_reports_its_way_through_the_file() {
        let mut file = tempfile::tempfile().unwrap();
        let mut out = HashingWriter::new(&mut file);
        out.write_all(&vec![7u8; 200 << 10]).unwrap();
        out.finish().unwrap();
        let mut seen = Vec::new();
        let trailer = check_reporting(&file, |done, total| seen.push((done, total))).unwrap();
        assert!(trailer.is_valid());
        let body = 200 << 10;
        assert_eq!(seen.last(), Some(&(body, body)));
        assert!(seen.len() > 1 && seen.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
