//! Snapshots of the state machine: the record format shared by Raft (a leader's snapshot for a
//! lagging member) and by backups (Maintenance.Snapshot, `oxcdctl snapshot save|status|restore`).
//!
//! A backup file is the Raft snapshot encoding ([`format`]) followed by the 32-byte sha256 of
//! everything before it, which is also how etcd ends its snapshot stream; `etcdctl snapshot save`
//! against oxcd therefore writes the same file as `oxcdctl snapshot save`. Restoring etcd's own
//! (bbolt) snapshot files into oxcd is not supported: that would be a migration tool.

pub mod backup;
pub mod format;

pub use backup::{restore, status, BackupError, BackupStatus, RestoreOptions, TrailerCheck};
