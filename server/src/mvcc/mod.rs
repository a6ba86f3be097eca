//! Multi-version concurrency control: etcd's revisioned key space.

mod hash;
mod index;
mod revision;
mod store;

pub use index::KeyRange;
pub use revision::Revision;
pub use store::{
    bumped_revision_records, compaction_point, current_revision_record, restored_revision_records,
    Change, CompactionPacing, MvccStore, RangeOptions, RangeResult, ReadTxn, ReadView, TxnWrite,
    Writer,
};

#[cfg(test)]
mod tests;
