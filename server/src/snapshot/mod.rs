//! Snapshots of the state machine: the record format of Raft snapshots (a leader's snapshot for
//! a lagging member) and backups (Maintenance.Snapshot, `oxcdctl snapshot save|status|restore`).
//!
//! A backup is etcd's own snapshot format: a bbolt database in etcd's schema followed by the
//! sha256 of everything before it ([`etcd_writer`]), so etcdctl and etcdutl read oxcd's backups
//! and `etcdutl snapshot restore` makes a real etcd member of one. A restore takes those files,
//! etcd's own ([`etcd`]), and the backups of earlier oxcd releases, which were the Raft
//! snapshot encoding ([`format`](mod@format)) padded with zeros to whole 512-byte blocks before
//! the sha256; the two are told apart by their first bytes.

pub mod backup;
pub mod etcd;
pub mod etcd_writer;
pub mod format;

pub use backup::{
    restore, status, BackupError, BackupStatus, RestoreOptions, RestoreProgress, RestoreStage,
    TrailerCheck,
};
