//! bbolt database files, the storage format of etcd's backend and of its snapshots: a streaming,
//! bounded-memory [`reader`], a [`writer`] that builds a compact file into any `Write`, and the
//! sha256 [`trailer`] etcd appends to a snapshot stream. The format is described in docs/BBOLT.md.

pub mod format;
pub mod reader;
pub mod trailer;
pub mod writer;

pub use format::{Meta, MetaError};
pub use reader::{Bucket, Db, Entries, Entry, Value};
pub use writer::{plan, write, Builder, Layout, Plan, WriteOptions};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Neither meta page is valid: bbolt's own words for why the first one is not.
    #[error("{0}")]
    InvalidMeta(MetaError),
    #[error("damaged bbolt file: {0}")]
    Corrupt(String),
    /// The writer was given something a bbolt file cannot hold, or out of order.
    #[error("{0}")]
    Invalid(String),
}
