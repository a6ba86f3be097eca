//! The Raft state machine: applies committed batches to the MVCC store and records the applied
//! log id and membership in the same atomic engine write, so a restart resumes exactly where
//! the last applied batch ended without replaying history.
//!
//! Applying and loading snapshots is disk work: it runs on the blocking pool, never on the async
//! workers that carry heartbeats and client calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use oxcd_proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse, ResponseHeader,
};

use super::membership::MemberInfo;
use super::snapshot_file::{SnapshotDir, SnapshotFileError};
use super::types::{
    Command, CommandBatch, Entry, LogId, Op, Outcome, OutcomeBatch, Outcomes, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};
use crate::alarm::Alarms;
use crate::auth::{AuthInfo, AuthStore, AUTH_META_KEY};
use crate::downgrade::Downgrade;
use crate::error::EtcdError;
use crate::kv::apply;
use crate::lease::{Lessor, StoredLease};
use crate::metrics::metrics;
use crate::mvcc::{KeyRange, MvccStore, Writer};
use crate::snapshot::format;
use crate::storage::{off_runtime, Cf, Engine, Snapshot as EngineSnapshot};
use crate::watch::WatchHub;

pub(super) const META_APPLIED: &[u8] = b"raft_applied";
pub(super) const META_MEMBERSHIP: &[u8] = b"raft_membership";
/// Present while a received snapshot is being loaded (its metadata).
pub(super) const META_INSTALLING: &[u8] = b"snapshot_installing";
/// This member's Raft bookkeeping in the Meta column family: state that belongs to one
/// cluster's log, which a backup restored into a new cluster must leave behind.
pub const RAFT_META_KEYS: [&[u8]; 3] = [META_APPLIED, META_MEMBERSHIP, META_INSTALLING];
/// Records written per engine batch while a snapshot is loaded.
const LOAD_BATCH: usize = 10_000;

/// Everything applying a command changes besides the Raft bookkeeping.
#[derive(Clone)]
pub struct Applied {
    pub store: Arc<MvccStore>,
    pub lessor: Arc<Lessor>,
    pub watches: Arc<WatchHub>,
    pub alarms: Arc<Alarms>,
    pub auth: Arc<AuthStore>,
    pub downgrade: Arc<Downgrade>,
    /// An apply that takes longer is logged (etcd's --warning-apply-duration).
    pub slow_apply: Duration,
}

pub struct StateMachine {
    parts: Applied,
    engine: Arc<Engine>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshots: Arc<SnapshotDir>,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::new(&e),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::new(&e),
    )
    .into()
}

fn file_err(e: SnapshotFileError) -> StorageError {
    snap_err(ErrorVerb::Read, e)
}

/// Runs disk work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let cancelled = sm_err(ErrorVerb::Write, std::io::Error::other("shutting down"));
    off_runtime(cancelled, work).await
}

impl StateMachine {
    pub fn open(engine: Arc<Engine>, parts: Applied) -> Result<StateMachine, StorageError> {
        let snapshots =
            Arc::new(SnapshotDir::open(&engine.data_dir().join("snap")).map_err(file_err)?);
        let (applied, membership) = read_applied(&engine)?;
        let mut sm = StateMachine {
            parts,
            engine,
            applied,
            membership,
            snapshots,
        };
        sm.finish_interrupted_install()?;
        Ok(sm)
    }

    /// The metadata of the current snapshot, if any.
    fn current_snapshot_id(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .snapshots
            .current()
            .map_err(file_err)?
            .and_then(|(meta, _)| meta.last_log_id))
    }

    /// Makes sure a snapshot reaches `purged`, the end of the purged log: openraft refuses to
    /// start otherwise, and a lagging member could not be caught up. It falls short when a
    /// crash came between openraft's purge (which runs alongside an install) and the install's
    /// publication, or when the previous release's snapshot was dropped at start.
    pub fn cover_purged_log(&self, purged: Option<LogId>) -> Result<(), StorageError> {
        if purged <= self.current_snapshot_id()? {
            return Ok(());
        }
        if purged > self.applied {
            let e = std::io::Error::other(format!(
                "the state machine (applied {:?}) is behind the purged Raft log ({purged:?}); the data dir is damaged",
                self.applied
            ));
            return Err(sm_err(ErrorVerb::Read, e));
        }
        tracing::warn!(?purged, "no snapshot covers the purged log; building one");
        dump_snapshot(&self.parts.store, &self.snapshots)
    }

    /// A crash while a received snapshot was being loaded leaves a partly replaced state and
    /// the install marker; the received file was made durable before the marker, so the load is
    /// done again. A received file without a marker was never loaded and goes.
    fn finish_interrupted_install(&mut self) -> Result<(), StorageError> {
        let rerr = |e: crate::storage::StorageError| snap_err(ErrorVerb::Read, e);
        let Some(marker) = self.engine.get(Cf::Meta, META_INSTALLING).map_err(rerr)? else {
            self.snapshots.discard_received();
            return Ok(());
        };
        let meta: SnapshotMeta =
            bincode::deserialize(&marker).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        tracing::warn!(snapshot = %meta.snapshot_id, "finishing a snapshot install interrupted by a crash");
        load_received(&self.engine, &self.snapshots, &meta)?;
        took_snapshot(&self.parts, &self.engine)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

/// Brings the in-memory parts in line with a snapshot just loaded into the engine.
fn took_snapshot(parts: &Applied, engine: &Engine) -> Result<(), StorageError> {
    let reload = |e: crate::storage::StorageError| snap_err(ErrorVerb::Write, e);
    parts.store.reload().map_err(reload)?;
    parts.lessor.restore(
        crate::lease::load_stored(engine).map_err(reload)?,
        parts.store.take_leased_keys(),
    );
    parts.alarms.reload(engine).map_err(reload)?;
    parts.auth.reload(engine).map_err(reload)?;
    parts.downgrade.reload(engine).map_err(reload)?;
    parts.watches.restored(parts.store.current_revision());
    Ok(())
}

/// etcd's warning limit for one apply (`warnApplyDuration`).
const SLOW_APPLY: Duration = Duration::from_millis(100);

/// Applies committed entries in order; returns their outcomes, the last applied log id and the
/// membership after them.
fn apply_entries(
    parts: &Applied,
    mut applied: Option<LogId>,
    mut membership: StoredMembership,
    entries: Vec<Entry>,
) -> Result<(Vec<OutcomeBatch>, Option<LogId>, StoredMembership), StorageError> {
    let started = Instant::now();
    let store = parts.store.clone();
    let mut writer = store.writer(parts.watches.wants_prev_kv());
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        applied = Some(entry.log_id);
        let outcomes = match entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(CommandBatch { commands }) => commands
                .into_iter()
                .map(|c| apply_command(parts, &mut writer, entry.log_id, c))
                .collect(),
            EntryPayload::Membership(m) => {
                membership = StoredMembership::new(Some(entry.log_id), m);
                Vec::new()
            }
        };
        results.push(OutcomeBatch { outcomes });
    }
    let applied_bytes = bincode::serialize(&applied).map_err(|e| sm_err(ErrorVerb::Write, e))?;
    let membership_bytes =
        bincode::serialize(&membership).map_err(|e| sm_err(ErrorVerb::Write, e))?;
    writer.put_extra(Cf::Meta, META_APPLIED, &applied_bytes);
    writer.put_extra(Cf::Meta, META_MEMBERSHIP, &membership_bytes);
    fail::fail_point!("raft::apply::before_commit");
    let commit = metrics().disk.backend_commit.start_timer();
    let changes = writer.commit().map_err(|e| sm_err(ErrorVerb::Write, e))?;
    commit.observe_duration();
    fail::fail_point!("raft::apply::after_commit");
    parts.watches.publish(&changes, store.current_revision());
    if started.elapsed() > SLOW_APPLY {
        metrics().server.slow_apply.inc();
    }
    Ok((results, applied, membership))
}

fn apply_command(
    parts: &Applied,
    writer: &mut Writer<'_>,
    log_id: LogId,
    command: Command,
) -> Outcome {
    let before = writer.changes().len();
    let started = Instant::now();
    let result = execute(parts, writer, log_id, command);
    let took = started.elapsed();
    if took > parts.slow_apply {
        tracing::warn!(
            took = ?took,
            expected_duration = ?parts.slow_apply,
            index = log_id.index,
            "apply request took too long"
        );
    }
    parts.lessor.track(&writer.changes()[before..]);
    Outcome {
        result: Some(result.unwrap_or_else(|e| Outcomes::Error(e.to_wire()))),
    }
}

/// Applies one command of the entry `log_id`: etcd's applier chain, auth (the requester's
/// permissions, as of this point in the log) → quota and alarms → the backend.
fn execute(
    parts: &Applied,
    writer: &mut Writer<'_>,
    log_id: LogId,
    command: Command,
) -> Result<Outcomes, EtcdError> {
    let header = |revision| {
        Some(ResponseHeader {
            revision,
            ..Default::default()
        })
    };
    let Applied {
        lessor,
        alarms,
        auth,
        downgrade,
        ..
    } = parts;
    let who = command.requester.clone().unwrap_or_default();
    check_permissions(auth, lessor, &who, &command)?;
    if let Some(refused) = alarms.refuses(&command) {
        return Err(refused);
    }
    let term = log_id.leader_id.term;
    match command.op {
        Some(Op::Put(p)) => apply::put(&mut writer.txn(), p, lessor.as_ref()).map(Outcomes::Put),
        Some(Op::DeleteRange(d)) => {
            apply::delete_range(&mut writer.txn(), &d).map(Outcomes::DeleteRange)
        }
        Some(Op::Txn(t)) => {
            apply::txn_write(&mut writer.txn(), t, lessor.as_ref()).map(Outcomes::Txn)
        }
        Some(Op::Compaction(c)) => writer.compact(c.revision).map(|()| {
            Outcomes::Compaction(CompactionResponse {
                header: header(writer.current_revision()),
            })
        }),
        Some(Op::LeaseGrant(g)) => {
            let lease = lessor.grant(g.id, g.ttl)?;
            writer.put_extra(Cf::Lease, &StoredLease::key(lease.id), &lease.value());
            Ok(Outcomes::LeaseGrant(LeaseGrantResponse {
                header: header(writer.current_revision()),
                id: lease.id,
                ttl: lease.ttl,
                error: String::new(),
            }))
        }
        Some(Op::LeaseRevoke(r)) => revoke(lessor, writer, r.id),
        Some(Op::LeaseExpire(e)) if e.term == term => revoke(lessor, writer, e.id),
        Some(Op::LeaseExpire(_)) => Err(EtcdError::LeaderChanged),
        Some(Op::Alarm(a)) => {
            let (changed, stored) = alarms.apply(&a);
            writer.put_extra(Cf::Meta, Alarms::meta_key(), &stored);
            Ok(Outcomes::Alarm(AlarmResponse {
                header: header(writer.current_revision()),
                alarms: changed,
            }))
        }
        Some(Op::Auth(change)) => {
            let (applied, stored) = auth.apply(change, &who, log_id.index)?;
            if let Some(stored) = stored {
                writer.put_extra(Cf::Meta, AUTH_META_KEY, &stored);
            }
            Ok(Outcomes::Auth(applied))
        }
        Some(Op::Downgrade(set)) => {
            let (info, stored) = downgrade.apply(&set);
            writer.put_extra(Cf::Meta, Downgrade::meta_key(), &stored);
            Ok(Outcomes::Downgrade(info))
        }
        None => Err(EtcdError::Corrupt),
    }
}

/// The auth applier: a client's write is checked against its permissions when it applies, so
/// a permission revoked by an earlier entry is honoured whichever member the write came
/// through. Auth changes check the root role themselves.
fn check_permissions(
    auth: &AuthStore,
    lessor: &Lessor,
    who: &AuthInfo,
    command: &Command,
) -> Result<(), EtcdError> {
    if !auth.is_enabled() {
        return Ok(());
    }
    match &command.op {
        Some(Op::Put(p)) => auth.check_put(who, p, lessor),
        Some(Op::DeleteRange(d)) => auth.check_delete(who, d),
        Some(Op::Txn(t)) => auth.check_txn(who, t, lessor),
        Some(Op::LeaseRevoke(r)) => auth.check_lease_keys_writable(who, r.id, lessor),
        _ => Ok(()),
    }
}

/// Revokes lease `id` and deletes every key attached to it in one revision.
fn revoke(lessor: &Lessor, writer: &mut Writer<'_>, id: i64) -> Result<Outcomes, EtcdError> {
    let keys = lessor.revoke(id)?;
    {
        let mut txn = writer.txn();
        for key in keys {
            txn.delete_range(&KeyRange::Single(key));
        }
    }
    writer.delete_extra(Cf::Lease, &StoredLease::key(id));
    Ok(Outcomes::LeaseRevoke(LeaseRevokeResponse {
        header: Some(ResponseHeader {
            revision: writer.current_revision(),
            ..Default::default()
        }),
    }))
}

fn read_applied(engine: &Engine) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let decode = |key: &[u8]| -> Result<Option<Vec<u8>>, StorageError> {
        engine
            .get(Cf::Meta, key)
            .map_err(|e| sm_err(ErrorVerb::Read, e))
    };
    let applied = match decode(META_APPLIED)? {
        Some(v) => bincode::deserialize(&v).map_err(|e| sm_err(ErrorVerb::Read, e))?,
        None => None,
    };
    let membership = match decode(META_MEMBERSHIP)? {
        Some(v) => bincode::deserialize(&v).map_err(|e| sm_err(ErrorVerb::Read, e))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<OutcomeBatch>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let parts = self.parts.clone();
        let (applied, membership) = (self.applied, self.membership.clone());
        let (results, applied, membership) =
            blocking(move || apply_entries(&parts, applied, membership, entries)).await?;
        self.applied = applied;
        self.membership = membership;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.parts.store.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.snapshots.receiving_path())
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // Every chunk is written; the loader reopens the file by its path.
        drop(snapshot);
        let (engine, snapshots, parts) = (
            self.engine.clone(),
            self.snapshots.clone(),
            self.parts.clone(),
        );
        let meta_owned = meta.clone();
        blocking(move || {
            snapshots.verify_received(&meta_owned).map_err(file_err)?;
            load_received(&engine, &snapshots, &meta_owned)?;
            took_snapshot(&parts, &engine)
        })
        .await?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.current().map_err(file_err)).await?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

pub struct SnapshotBuilder {
    store: Arc<MvccStore>,
    snapshots: Arc<SnapshotDir>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (store, snapshots) = (self.store.clone(), self.snapshots.clone());
        let (meta, file) = blocking(move || {
            dump_snapshot(&store, &snapshots)?;
            snapshots.current().map_err(file_err)?.ok_or_else(|| {
                snap_err(ErrorVerb::Read, std::io::Error::other("snapshot vanished"))
            })
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// The last applied log id and the membership recorded with it in an engine snapshot.
fn applied_state(
    snap: &EngineSnapshot<'_>,
) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let get = |key: &[u8]| {
        snap.get(Cf::Meta, key)
            .map_err(|e| snap_err(ErrorVerb::Read, e))
    };
    let applied: Option<LogId> = match get(META_APPLIED)? {
        Some(v) => bincode::deserialize(&v).map_err(|e| snap_err(ErrorVerb::Read, e))?,
        None => None,
    };
    let membership: StoredMembership = match get(META_MEMBERSHIP)? {
        Some(v) => bincode::deserialize(&v).map_err(|e| snap_err(ErrorVerb::Read, e))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
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
    let snapshot_id = match applied {
        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, unix_millis()),
        None => format!("0-0-{}", unix_millis()),
    };
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id,
    };
    snapshots
        .build(&meta, |mut out| {
            format::encode(&snap, &mut out).map_err(|e| match e {
                format::EncodeError::Io(e) => e,
                other => std::io::Error::other(other),
            })
        })
        .map_err(|e| snap_err(ErrorVerb::Write, e))
}

/// Replaces the state machine's column families with the received snapshot (already verified
/// whole and durable), then makes it the current snapshot.
fn load_received(
    engine: &Engine,
    snapshots: &SnapshotDir,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    let derr = |e: format::DecodeError| snap_err(ErrorVerb::Read, e);
    let werr = |e: crate::storage::StorageError| snap_err(ErrorVerb::Write, e);
    let mut input = snapshots.received_records().map_err(file_err)?;
    // The old state goes and the install marker comes in one durable write: from here until
    // the marker is removed with the last batch, a restart loads this snapshot again.
    let marker = bincode::serialize(meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
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
    let applied =
        bincode::serialize(&meta.last_log_id).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let membership =
        bincode::serialize(&meta.last_membership).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    batch.put(Cf::Meta, META_APPLIED, &applied);
    batch.put(Cf::Meta, META_MEMBERSHIP, &membership);
    batch.delete(Cf::Meta, META_INSTALLING);
    engine.write(batch, true).map_err(werr)?;
    fail::fail_point!("raft::snapshot::install::before_publish");
    // The received file becomes the current snapshot (it is what a later lagging member gets).
    snapshots.publish_received(meta).map_err(file_err)
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use oxcd_proto::etcdserverpb::{LeaseGrantRequest, PutRequest};

    use super::*;
    use crate::mvcc::RangeOptions;
    use crate::raft::LeaseExpiry;

    fn parts(engine: &Arc<Engine>) -> Applied {
        let store = MvccStore::open(engine.clone()).unwrap();
        let lessor = Arc::new(Lessor::new(
            1,
            crate::lease::load_stored(engine).unwrap(),
            store.take_leased_keys(),
        ));
        let watches = WatchHub::new(store.clone(), 1 << 20, Duration::from_secs(600));
        let alarms = Arc::new(Alarms::load(engine).unwrap());
        let auth = Arc::new(
            AuthStore::load(
                engine,
                crate::auth::TokenConfig::Simple {
                    ttl: Duration::from_secs(300),
                },
            )
            .unwrap(),
        );
        let downgrade = Arc::new(Downgrade::load(engine).unwrap());
        Applied {
            store,
            lessor,
            watches,
            alarms,
            auth,
            downgrade,
            slow_apply: Duration::from_millis(100),
        }
    }

    fn put(store: &MvccStore, key: &str) {
        let mut w = store.writer(false);
        w.txn().put(key.as_bytes(), b"v".to_vec(), 0);
        w.commit().unwrap();
    }

    fn keys(store: &MvccStore) -> Vec<String> {
        let all = KeyRange::new(b"\0", b"\0");
        let rr = store.range(&all, RangeOptions::default()).unwrap();
        rr.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
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
            &bincode::serialize(&meta).unwrap(),
        );
        engine.write(crash, true).unwrap();

        let applied = parts(&engine);
        let store = applied.store.clone();
        let sm = StateMachine::open(engine.clone(), applied).unwrap();
        assert_eq!(keys(&store), ["a", "b", "c"]);
        assert_eq!(sm.applied, meta.last_log_id);
        assert!(engine.get(Cf::Meta, META_INSTALLING).unwrap().is_none());
        assert_eq!(
            sm.current_snapshot_id().unwrap(),
            meta.last_log_id,
            "the loaded snapshot is the current one"
        );
        assert!(!snaps.receiving_path().exists());
    }

    fn entry(term: u64, index: u64, op: Op) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(CommandBatch {
                commands: vec![Command::new(op)],
            }),
        }
    }

    #[tokio::test]
    async fn an_expiry_applies_only_in_an_entry_of_the_term_that_decided_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let applied = parts(&engine);
        let grant = |id| Op::LeaseGrant(LeaseGrantRequest { ttl: 2, id });
        let attach = |key: &str, lease| {
            Op::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                lease,
                ..Default::default()
            })
        };
        let expire = |id, term| Op::LeaseExpire(LeaseExpiry { id, term });
        let entries = vec![
            entry(2, 1, grant(7)),
            entry(2, 2, attach("kept", 7)),
            entry(2, 3, grant(8)),
            entry(2, 4, attach("expired", 8)),
            // The leader of term 2, cut off, found both expired; one of its expiries reached
            // the leader of term 3 (forwarded), the other was decided by that leader itself.
            entry(3, 5, expire(7, 2)),
            entry(3, 6, expire(8, 3)),
        ];
        let (outcomes, ..) =
            apply_entries(&applied, None, StoredMembership::default(), entries).unwrap();
        let result = |i: usize| outcomes[i].outcomes[0].result.clone().unwrap();
        assert_eq!(
            result(4),
            Outcomes::Error(EtcdError::LeaderChanged.to_wire())
        );
        assert!(matches!(result(5), Outcomes::LeaseRevoke(_)));
        assert_eq!(keys(&applied.store), ["kept"]);
        assert_eq!(applied.lessor.ids(), [7]);
    }
}
