//! Snapshots of the state machine: the record format shared by Raft (a leader's snapshot for a
//! lagging member) and by backups (Maintenance.Snapshot, `oxcdctl snapshot save|status|restore`).
//!
//! A backup file is the Raft snapshot encoding ([`format`](mod@format)) padded with zeros to whole 512-byte
//! blocks, then the 32-byte sha256 of everything before it. That is how etcd ends its snapshot
//! stream, and etcdctl checks for it by the file's size (a bbolt file is whole pages), so
//! `etcdctl snapshot save` against oxcd writes the same file as `oxcdctl snapshot save`. A restore
//! also takes etcd's own (bbolt) snapshot files, told apart by their first bytes ([`etcd`]).

pub mod backup;
pub mod etcd;
pub mod format;

pub use backup::{
    restore, status, BackupError, BackupStatus, RestoreOptions, RestoreProgress, RestoreStage,
    TrailerCheck,
};
