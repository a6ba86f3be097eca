//! The Raft state machine: hands committed batches to the applier and records the applied log
//! id and membership in the same atomic engine write, so a restart resumes exactly where the
//! last applied batch ended without replaying history. It also makes, sends and installs
//! snapshots.
//!
//! The state machine's own store is the snapshot, as etcd's bbolt file is: "building" one every
//! `--snapshot-count` entries only makes what was applied durable, so that openraft may purge
//! the log behind it. The store is dumped to a file only when a follower needs it
//! ([`StateSnapshot::write`]), not every `--snapshot-count` entries: a dump writes the whole
//! store, hundreds of MiB for a large one, and most are never sent.
//!
//! Applying and loading snapshots is disk work: it runs on the blocking pool, never on the async
//! workers that carry heartbeats and client calls.

use std::sync::Arc;

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};

use super::membership::MemberInfo;
use super::record;
use super::snapshot_file::{SnapshotDir, SnapshotFileError};
use super::types::{Entry, LogId, OutcomeBatch, SnapshotMeta, StoredMembership, TypeConfig};
use crate::apply::{Applier, CommandBatch, LogPosition};
use crate::mvcc::MvccStore;
use crate::snapshot::format;
use crate::storage::{off_runtime, short_unless_held_back, Cf, Engine, Snapshot as EngineSnapshot};

pub(super) const META_APPLIED: &[u8] = b"raft_applied";
pub(super) const META_MEMBERSHIP: &[u8] = b"raft_membership";
/// Present while a received snapshot is being loaded (its metadata).
pub(super) const META_INSTALLING: &[u8] = b"snapshot_installing";
/// This member's Raft bookkeeping in the Meta column family: state that belongs to one
/// cluster's log, which a backup restored into a new cluster must leave behind.
pub const RAFT_META_KEYS: [&[u8]; 3] = [META_APPLIED, META_MEMBERSHIP, META_INSTALLING];
/// Records written per engine batch while a snapshot is loaded.
const LOAD_BATCH: usize = 10_000;

pub struct StateMachine {
    applier: Applier,
    engine: Arc<Engine>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshots: Arc<SnapshotDir>,
}

/// What openraft hands over as a snapshot's data.
pub enum SnapshotData {
    /// The state machine's store itself, dumped when it is sent.
    State(StateSnapshot),
    /// One of this member's own snapshot files: the current one, sent to a follower (or, at
    /// start, loaded if the state machine is behind it).
    File(std::fs::File),
    /// The snapshot a leader sent, written whole to `snap/receiving.snap` by the peer service.
    Received,
}

pub type RaftSnapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Errors as openraft's storage traits take them.
type StorageError = std::io::Error;

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    std::io::Error::other(format!("state machine: {e}"))
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    std::io::Error::other(format!("Raft snapshot: {e}"))
}

fn file_err(e: SnapshotFileError) -> StorageError {
    snap_err(e)
}

/// Runs disk work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    off_runtime(sm_err("shutting down"), work).await
}

impl StateMachine {
    pub fn open(engine: Arc<Engine>, applier: Applier) -> Result<StateMachine, StorageError> {
        let snapshots =
            Arc::new(SnapshotDir::open(&engine.data_dir().join("snap")).map_err(file_err)?);
        let (applied, membership) = read_applied(&engine)?;
        let mut sm = StateMachine {
            applier,
            engine,
            applied,
            membership,
            snapshots,
        };
        sm.finish_interrupted_install()?;
        Ok(sm)
    }

    /// Where a snapshot from the leader is written before it is installed.
    pub fn receiving_path(&self) -> std::path::PathBuf {
        self.snapshots.receiving_path()
    }

    /// Checks that the state machine reaches the purged log: it is the snapshot that covers
    /// the entries purged, which a lagging member is sent instead. Purges come only after what
    /// was applied up to them is durable, so a state machine behind them is a damaged data dir.
    pub fn check_purged_log(&self, purged: Option<LogId>) -> Result<(), StorageError> {
        if purged > self.applied {
            let e = std::io::Error::other(format!(
                "the state machine (applied {:?}) is behind the purged Raft log ({purged:?}); the data dir is damaged",
                self.applied
            ));
            return Err(sm_err(e));
        }
        Ok(())
    }

    fn state_snapshot(&self) -> StateSnapshot {
        StateSnapshot {
            store: self.applier.store.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    /// A crash while a received snapshot was being loaded leaves a partly replaced state and
    /// the install marker; the received file was made durable before the marker, so the load is
    /// done again. A received file without a marker was never loaded and goes.
    fn finish_interrupted_install(&mut self) -> Result<(), StorageError> {
        let rerr = |e: crate::storage::StorageError| snap_err(e);
        let Some(marker) = self.engine.get(Cf::Meta, META_INSTALLING).map_err(rerr)? else {
            self.snapshots.discard_received();
            return Ok(());
        };
        let meta = record::decode_snapshot_meta(&marker).map_err(snap_err)?;
        tracing::warn!(last_log_id = ?meta.last_log_id, "finishing a snapshot install interrupted by a crash");
        load_received(&self.engine, &self.snapshots, &meta)?;
        reload_applier(&self.applier, &self.engine)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

fn reload_applier(applier: &Applier, engine: &Engine) -> Result<(), StorageError> {
    applier.reload(engine).map_err(snap_err)
}

/// At most this many commands are applied right on the async worker (see [`is_short`]).
const SHORT_BATCH_COMMANDS: usize = 1024;

/// Whether applying `entries` is a little work whatever the store holds: a bounded number of
/// commands, each touching single keys.
fn is_short(entries: &[Entry]) -> bool {
    let mut commands = 0;
    entries.iter().all(|entry| match &entry.payload {
        EntryPayload::Normal(batch) => {
            commands += batch.commands.len();
            commands <= SHORT_BATCH_COMMANDS
                && batch
                    .commands
                    .iter()
                    .all(|command| command.op.as_ref().is_none_or(|op| op.is_short()))
        }
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
    })
}

/// Applies committed entries in order, recording the last applied log id (and the membership,
/// when an entry changed it) in the same engine write; returns their outcomes, that log id and
/// the membership after them.
fn apply_entries(
    applier: &Applier,
    mut applied: Option<LogId>,
    mut membership: StoredMembership,
    entries: Vec<Entry>,
) -> Result<(Vec<OutcomeBatch>, Option<LogId>, StoredMembership), StorageError> {
    let mut round = applier.begin();
    let mut results = Vec::with_capacity(entries.len());
    let mut membership_changed = false;
    for entry in entries {
        applied = Some(entry.log_id);
        let outcomes = match entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(CommandBatch { commands }) => {
                let at = LogPosition {
                    term: entry.log_id.leader_id.term,
                    index: entry.log_id.index,
                };
                round.apply(at, commands)
            }
            EntryPayload::Membership(m) => {
                membership = StoredMembership::new(Some(entry.log_id), m);
                membership_changed = true;
                Vec::new()
            }
        };
        results.push(OutcomeBatch { outcomes });
    }
    round.record(
        Cf::Meta,
        META_APPLIED,
        &record::encode_position(applied.as_ref()),
    );
    // Rewritten only when it changes: most batches have no membership entry, and the record
    // names every member.
    if membership_changed {
        round.record(
            Cf::Meta,
            META_MEMBERSHIP,
            &record::encode_membership(&membership),
        );
    }
    round.commit().map_err(sm_err)?;
    Ok((results, applied, membership))
}

fn read_applied(engine: &Engine) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    decode_applied(|key| engine.get(Cf::Meta, key)).map_err(sm_err)
}

#[derive(Debug, thiserror::Error)]
enum AppliedStateError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Record(#[from] record::RecordError),
}

/// The last applied log id and the membership recorded with it, read with `get`.
fn decode_applied(
    get: impl Fn(&[u8]) -> crate::storage::Result<Option<Vec<u8>>>,
) -> Result<(Option<LogId>, StoredMembership), AppliedStateError> {
    let applied = match get(META_APPLIED)? {
        Some(v) => record::decode_position(&v)?,
        None => None,
    };
    let membership = match get(META_MEMBERSHIP)? {
        Some(v) => record::decode_membership(&v)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    type SnapshotData = SnapshotData;

    /// The entries openraft has ready go to the applier as one engine write; their clients
    /// are answered once it is done.
    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), StorageError>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, StorageError>>
            + Unpin
            + openraft::OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(next) = entries.next().await {
            let (entry, responder) = next?;
            batch.push(entry);
            responders.push(responder);
        }
        let applier = self.applier.clone();
        let (applied, membership) = (self.applied, self.membership.clone());
        let short = is_short(&batch);
        let work = move || apply_entries(&applier, applied, membership, batch);
        let (results, applied, membership) = if short {
            short_unless_held_back(&self.engine, sm_err("shutting down"), work).await?
        } else {
            blocking(work).await?
        };
        self.applied = applied;
        self.membership = membership;
        for (responder, outcomes) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(outcomes);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
            state: self.state_snapshot(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), StorageError> {
        let (engine, snapshots, applier) = (
            self.engine.clone(),
            self.snapshots.clone(),
            self.applier.clone(),
        );
        let meta_owned = meta.clone();
        let received = match snapshot {
            SnapshotData::Received => true,
            SnapshotData::File(_) => false,
            // Its metadata is never ahead of what was applied, so openraft never loads it.
            SnapshotData::State(_) => {
                return Err(snap_err(
                    "the state machine's own store cannot be installed on it",
                ))
            }
        };
        blocking(move || {
            if received {
                snapshots.verify_received(&meta_owned).map_err(file_err)?;
                load_received(&engine, &snapshots, &meta_owned)?;
            } else {
                load_current(&engine, &snapshots, &meta_owned)?;
            }
            reload_applier(&applier, &engine)
        })
        .await?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, from_leader = received, "installed a snapshot");
        Ok(())
    }

    /// The snapshot file when it is as new as the state (one just received from the leader),
    /// otherwise the state machine itself as of what it has applied.
    async fn get_current_snapshot(&mut self) -> Result<Option<RaftSnapshot>, StorageError> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.current().map_err(file_err)).await?;
        if let Some((meta, file)) = current {
            if meta.last_log_id >= self.applied {
                return Ok(Some(RaftSnapshot {
                    meta,
                    snapshot: SnapshotData::File(file),
                }));
            }
        }
        if self.applied.is_none() {
            return Ok(None);
        }
        Ok(Some(RaftSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.applied,
                last_membership: self.membership.clone(),
            },
            snapshot: SnapshotData::State(self.state_snapshot()),
        }))
    }
}

/// The state machine's store as a snapshot: written to a file only when it is sent.
#[derive(Clone)]
pub struct StateSnapshot {
    store: Arc<MvccStore>,
    snapshots: Arc<SnapshotDir>,
}

impl StateSnapshot {
    /// Dumps the store as it is now and makes the dump the current snapshot file. Its metadata
    /// is where the store stands now, at or after the metadata openraft was given with this
    /// snapshot: a follower that installs it holds every entry up to there, and the entries
    /// between the two that openraft sends it next are among those it has committed, which it
    /// keeps as they are.
    pub async fn write(self) -> Result<(SnapshotMeta, std::fs::File), StorageError> {
        blocking(move || {
            dump_snapshot(&self.store, &self.snapshots)?;
            self.snapshots
                .current()
                .map_err(file_err)?
                .ok_or_else(|| snap_err("the snapshot just written vanished"))
        })
        .await
    }
}

pub struct SnapshotBuilder {
    engine: Arc<Engine>,
    state: StateSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    /// Makes the store durable up to where it stands, which openraft then purges the log to
    /// (but the last `min(snapshot-count, 5000)` entries).
    async fn build_snapshot(&mut self) -> Result<RaftSnapshot, StorageError> {
        let (engine, store) = (self.engine.clone(), self.state.store.clone());
        let meta = blocking(move || {
            let snap = store.engine_snapshot();
            let (last_log_id, last_membership) = applied_state(&snap)?;
            drop(snap);
            fail::fail_point!("raft::snapshot::point::before_sync");
            // Applied batches reach the write-ahead log unsynced (the log append before them
            // was synced); the entries they came from may go once they are durable.
            engine.sync_wal().map_err(snap_err)?;
            Ok(SnapshotMeta {
                last_log_id,
                last_membership,
            })
        })
        .await?;
        Ok(RaftSnapshot {
            meta,
            snapshot: SnapshotData::State(self.state.clone()),
        })
    }
}

/// The last applied log id and the membership recorded with it in an engine snapshot.
fn applied_state(
    snap: &EngineSnapshot<'_>,
) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    decode_applied(|key| snap.get(Cf::Meta, key)).map_err(snap_err)
}

/// Where in the Raft log an engine snapshot stands, as etcd's backend records it: the term and
/// index of the last applied entry (etcd's `term` and `consistent_index`) and the membership in
/// force there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPosition {
    pub term: u64,
    pub index: u64,
    pub members: Vec<MemberInfo>,
}

pub fn applied_position(snap: &EngineSnapshot<'_>) -> crate::storage::Result<AppliedPosition> {
    let (applied, membership) =
        applied_state(snap).map_err(|e| crate::storage::StorageError::Corrupt(e.to_string()))?;
    Ok(AppliedPosition {
        term: applied.map_or(0, |id| id.leader_id.term),
        index: applied.map_or(0, |id| id.index),
        members: super::membership::members_of(membership.membership()),
    })
}

/// Writes the state machine's column families as of one engine snapshot, with the applied log
/// id and membership of that same snapshot as the metadata.
fn dump_snapshot(store: &MvccStore, snapshots: &SnapshotDir) -> Result<(), StorageError> {
    let snap = store.engine_snapshot();
    let (applied, membership) = applied_state(&snap)?;
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
    };
    snapshots
        .build(&meta, |mut out| {
            format::encode(&snap, &mut out).map_err(|e| match e {
                format::EncodeError::Io(e) => e,
                other => std::io::Error::other(other),
            })
        })
        .map_err(snap_err)
}

/// Replaces the state machine's column families with the received snapshot (already verified
/// whole and durable), then makes it the current snapshot.
fn load_received(
    engine: &Engine,
    snapshots: &SnapshotDir,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    let records = snapshots.received_records().map_err(file_err)?;
    load(engine, records, meta)?;
    // The received file becomes the current snapshot (it is what a later lagging member gets).
    snapshots.publish_received(meta).map_err(file_err)
}

/// Replaces the state machine's column families with this member's current snapshot: openraft
/// asks for it at start when the snapshot is ahead of what was applied.
fn load_current(
    engine: &Engine,
    snapshots: &SnapshotDir,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    load(engine, snapshots.current_records().map_err(file_err)?, meta)
}

/// Replaces the state machine's column families with a snapshot's records.
fn load(
    engine: &Engine,
    mut input: format::Decoder<std::io::BufReader<std::fs::File>>,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    let derr = |e: format::DecodeError| snap_err(e);
    let werr = |e: crate::storage::StorageError| snap_err(e);
    // The old state goes and the install marker comes in one durable write: from here until
    // the marker is removed with the last batch, a restart loads this snapshot again.
    let marker = record::encode_snapshot_meta(meta);
    let mut batch = engine.batch();
    for cf in format::snapshot_cfs() {
        batch.delete_range(cf, &[], &[0xff; 32]);
    }
    batch.put(Cf::Meta, META_INSTALLING, &marker);
    engine
        .write(std::mem::replace(&mut batch, engine.batch()), true)
        .map_err(werr)?;
    fail::fail_point!("raft::snapshot::install::after_marker");
    let mut loaded = 0usize;
    while let Some((cf, k, v)) = input.next_record().map_err(derr)? {
        batch.put(cf, &k, &v);
        if batch.len() >= LOAD_BATCH {
            engine
                .write(std::mem::replace(&mut batch, engine.batch()), false)
                .map_err(werr)?;
            loaded += 1;
            if loaded == 1 {
                fail::fail_point!("raft::snapshot::install::mid_load");
            }
        }
    }
    let applied = record::encode_position(meta.last_log_id.as_ref());
    batch.put(Cf::Meta, META_APPLIED, &applied);
    let membership = record::encode_membership(&meta.last_membership);
    batch.put(Cf::Meta, META_MEMBERSHIP, &membership);
    batch.delete(Cf::Meta, META_INSTALLING);
    engine.write(batch, true).map_err(werr)?;
    fail::fail_point!("raft::snapshot::install::before_publish");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &MvccStore, key: &str) {
        let mut w = store.writer(false);
        w.txn().put(key.as_bytes(), b"v".to_vec(), 0);
        w.commit().unwrap();
    }

    #[test]
    fn a_batch_is_short_while_its_commands_are_few_and_single_key() {
        use crate::apply::{Command, Op};
        use oxcd_proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
        let entry = |index: u64, ops: Vec<Op>| Entry {
            log_id: crate::raft::types::log_id(2, 1, index),
            payload: EntryPayload::Normal(CommandBatch {
                commands: ops.into_iter().map(Command::new).collect(),
            }),
        };
        let puts = |n: usize| vec![Op::Put(PutRequest::default()); n];
        let half = SHORT_BATCH_COMMANDS / 2;
        assert!(is_short(&[entry(1, puts(half)), entry(2, puts(half))]));
        assert!(!is_short(&[entry(1, puts(half)), entry(2, puts(half + 1))]));
        let wide_delete = Op::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            ..Default::default()
        });
        assert!(!is_short(&[entry(1, puts(1)), entry(2, vec![wide_delete])]));
    }

    #[tokio::test]
    async fn an_install_interrupted_by_a_crash_is_finished_when_the_member_opens() {
        let leader_dir = tempfile::tempdir().unwrap();
        let leader = Engine::open(leader_dir.path()).unwrap();
        let leader_store = MvccStore::open(leader.clone()).unwrap();
        for key in ["a", "b", "c"] {
            put(&leader_store, key);
        }
        let leader_snaps = SnapshotDir::open(&leader_dir.path().join("snap")).unwrap();
        dump_snapshot(&leader_store, &leader_snaps).unwrap();
        let (meta, mut sent) = leader_snaps.current().unwrap().unwrap();

        // The follower had other data, received the snapshot, and crashed right after the
        // first install batch (old state gone, marker written).
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        put(&MvccStore::open(engine.clone()).unwrap(), "stale");
        let snaps = SnapshotDir::open(&dir.path().join("snap")).unwrap();
        let mut received = std::fs::File::create(snaps.receiving_path()).unwrap();
        std::io::copy(&mut sent, &mut received).unwrap();
        let mut crash = engine.batch();
        crash.delete_range(Cf::Kv, &[], &[0xff; 32]);
        crash.put(
            Cf::Meta,
            META_INSTALLING,
            &record::encode_snapshot_meta(&meta),
        );
        engine.write(crash, true).unwrap();

        let applier = Applier::open_for_tests(&engine);
        let sm = StateMachine::open(engine.clone(), applier.clone()).unwrap();
        assert_eq!(applier.keys(), ["a", "b", "c"]);
        assert_eq!(sm.applied, meta.last_log_id);
        assert!(engine.get(Cf::Meta, META_INSTALLING).unwrap().is_none());
        assert_eq!(
            snaps.current().unwrap().unwrap().0.last_log_id,
            meta.last_log_id,
            "the loaded snapshot is the current one"
        );
        assert!(!snaps.receiving_path().exists());
    }
}
