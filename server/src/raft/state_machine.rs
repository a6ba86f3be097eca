//! The Raft state machine: applies committed batches to the MVCC store and records the applied
//! log id and membership in the same atomic engine write, so a restart resumes exactly where
//! the last applied batch ended without replaying history.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use oxcd_proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse, ResponseHeader,
};

use super::types::{
    Command, CommandBatch, LogId, Op, Outcome, OutcomeBatch, Outcomes, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::alarm::Alarms;
use crate::error::EtcdError;
use crate::kv::apply;
use crate::lease::{Lessor, StoredLease};
use crate::mvcc::{KeyRange, MvccStore, Writer};
use crate::snapshot::format::{self, Decoder};
use crate::storage::{Cf, Engine};
use crate::watch::WatchHub;

const META_APPLIED: &[u8] = b"raft_applied";
const META_MEMBERSHIP: &[u8] = b"raft_membership";
/// Present while a received snapshot is being loaded (its metadata).
const META_INSTALLING: &[u8] = b"snapshot_installing";
/// This member's Raft bookkeeping in the Meta column family: state that belongs to one
/// cluster's log, which a backup restored into a new cluster must leave behind.
pub const RAFT_META_KEYS: [&[u8]; 3] = [META_APPLIED, META_MEMBERSHIP, META_INSTALLING];
/// Where a snapshot from the leader is written as it arrives.
const RECEIVING: &str = "receiving.data";

/// Everything applying a command changes besides the Raft bookkeeping.
#[derive(Clone)]
pub struct Applied {
    pub store: Arc<MvccStore>,
    pub lessor: Arc<Lessor>,
    pub watches: Arc<WatchHub>,
    pub alarms: Arc<Alarms>,
}

pub struct StateMachine {
    store: Arc<MvccStore>,
    engine: Arc<Engine>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshot_dir: PathBuf,
    lessor: Arc<Lessor>,
    watches: Arc<WatchHub>,
    alarms: Arc<Alarms>,
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

impl StateMachine {
    pub fn open(engine: Arc<Engine>, parts: Applied) -> Result<StateMachine, StorageError> {
        let Applied {
            store,
            lessor,
            watches,
            alarms,
        } = parts;
        let snapshot_dir = engine.data_dir().join("snap");
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let (applied, membership) = read_applied(&engine)?;
        let mut sm = StateMachine {
            store,
            engine,
            applied,
            membership,
            snapshot_dir,
            lessor,
            watches,
            alarms,
        };
        sm.finish_interrupted_install()?;
        Ok(sm)
    }

    /// A crash while a received snapshot was being loaded leaves a partly replaced state and
    /// the install marker; the received file is still in place, so the load is done again.
    fn finish_interrupted_install(&mut self) -> Result<(), StorageError> {
        let rerr = |e: crate::storage::StorageError| snap_err(ErrorVerb::Read, e);
        let Some(marker) = self.engine.get(Cf::Meta, META_INSTALLING).map_err(rerr)? else {
            return Ok(());
        };
        let meta: SnapshotMeta =
            bincode::deserialize(&marker).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        tracing::warn!(snapshot = %meta.snapshot_id, "finishing a snapshot install interrupted by a crash");
        let file = std::fs::File::open(self.snapshot_dir.join(RECEIVING))
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        load_snapshot(&self.engine, &self.snapshot_dir, file, &meta)?;
        self.took_snapshot(&meta)
    }

    /// Brings the in-memory parts in line with a snapshot just loaded into the engine.
    fn took_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let reload = |e: crate::storage::StorageError| snap_err(ErrorVerb::Write, e);
        self.store.reload().map_err(reload)?;
        self.lessor.restore(
            crate::lease::load_stored(&self.engine).map_err(reload)?,
            self.store.take_leased_keys(),
        );
        self.alarms.reload(&self.engine).map_err(reload)?;
        self.watches.restored(self.store.current_revision());
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    fn apply_command(&self, writer: &mut Writer<'_>, command: Command) -> Outcome {
        let before = writer.changes().len();
        let result = self.execute(writer, command);
        self.lessor.track(&writer.changes()[before..]);
        Outcome {
            result: Some(result.unwrap_or_else(|e| Outcomes::Error(e.to_wire()))),
        }
    }

    fn execute(&self, writer: &mut Writer<'_>, command: Command) -> Result<Outcomes, EtcdError> {
        let header = |revision| {
            Some(ResponseHeader {
                revision,
                ..Default::default()
            })
        };
        // etcd's capped applier: while NOSPACE is raised nothing may grow the store.
        if self.alarms.no_space() {
            let grows = match &command.op {
                Some(Op::Put(_)) | Some(Op::LeaseGrant(_)) => true,
                Some(Op::Txn(t)) => !crate::kv::validate::txn_is_read_only(t),
                _ => false,
            };
            if grows {
                return Err(EtcdError::NoSpace);
            }
        }
        match command.op {
            Some(Op::Put(p)) => {
                apply::put(&mut writer.txn(), p, self.lessor.as_ref()).map(Outcomes::Put)
            }
            Some(Op::DeleteRange(d)) => {
                apply::delete_range(&mut writer.txn(), &d).map(Outcomes::DeleteRange)
            }
            Some(Op::Txn(t)) => {
                apply::txn_write(&mut writer.txn(), t, self.lessor.as_ref()).map(Outcomes::Txn)
            }
            Some(Op::Compaction(c)) => writer.compact(c.revision).map(|()| {
                Outcomes::Compaction(CompactionResponse {
                    header: header(writer.current_revision()),
                })
            }),
            Some(Op::LeaseGrant(g)) => {
                let lease = self.lessor.grant(g.id, g.ttl)?;
                writer.put_extra(Cf::Lease, &StoredLease::key(lease.id), &lease.value());
                Ok(Outcomes::LeaseGrant(LeaseGrantResponse {
                    header: header(writer.current_revision()),
                    id: lease.id,
                    ttl: lease.ttl,
                    error: String::new(),
                }))
            }
            Some(Op::LeaseRevoke(r)) => {
                let keys = self.lessor.revoke(r.id)?;
                {
                    // One transaction: every attached key goes at one revision.
                    let mut txn = writer.txn();
                    for key in keys {
                        txn.delete_range(&KeyRange::Single(key));
                    }
                }
                writer.delete_extra(Cf::Lease, &StoredLease::key(r.id));
                Ok(Outcomes::LeaseRevoke(LeaseRevokeResponse {
                    header: header(writer.current_revision()),
                }))
            }
            Some(Op::Alarm(a)) => {
                let (alarms, stored) = self.alarms.apply(&a);
                writer.put_extra(Cf::Meta, Alarms::meta_key(), &stored);
                Ok(Outcomes::Alarm(AlarmResponse {
                    header: header(writer.current_revision()),
                    alarms,
                }))
            }
            None => Err(EtcdError::Corrupt),
        }
    }
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
        let store = self.store.clone();
        let mut writer = store.writer(self.watches.wants_prev_kv());
        let mut results = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            let outcomes = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(CommandBatch { commands }) => commands
                    .into_iter()
                    .map(|c| self.apply_command(&mut writer, c))
                    .collect(),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            };
            results.push(OutcomeBatch { outcomes });
        }
        let applied = bincode::serialize(&self.applied).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let membership =
            bincode::serialize(&self.membership).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        writer.put_extra(Cf::Meta, META_APPLIED, &applied);
        writer.put_extra(Cf::Meta, META_MEMBERSHIP, &membership);
        let changes = writer.commit().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.watches.publish(&changes, store.current_revision());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            dir: self.snapshot_dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snapshot_dir.join(RECEIVING);
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await;
        let engine = self.engine.clone();
        let dir = self.snapshot_dir.clone();
        let meta_owned = meta.clone();
        tokio::task::spawn_blocking(move || load_snapshot(&engine, &dir, file, &meta_owned))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        self.took_snapshot(meta)?;
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        current_snapshot(&self.snapshot_dir).await
    }
}

async fn current_snapshot(dir: &Path) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
    let meta = match tokio::fs::read(dir.join("current.meta")).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(snap_err(ErrorVerb::Read, e)),
    };
    let meta: SnapshotMeta =
        bincode::deserialize(&meta).map_err(|e| snap_err(ErrorVerb::Read, e))?;
    let data = tokio::fs::File::open(dir.join("current.data"))
        .await
        .map_err(|e| snap_err(ErrorVerb::Read, e))?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(data),
    }))
}

pub struct SnapshotBuilder {
    store: Arc<MvccStore>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || dump_snapshot(&store, &dir))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        current_snapshot(&self.dir)
            .await?
            .ok_or_else(|| snap_err(ErrorVerb::Read, std::io::Error::other("snapshot vanished")))
    }
}

/// Streams the state machine's column families as of one engine snapshot into `current.data`.
fn dump_snapshot(store: &MvccStore, dir: &Path) -> Result<(), StorageError> {
    let snap = store.engine_snapshot();
    let werr = |e: std::io::Error| snap_err(ErrorVerb::Write, e);
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
    let snapshot_id = match applied {
        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, unix_millis()),
        None => format!("0-0-{}", unix_millis()),
    };
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id,
    };

    let tmp = dir.join("building.data");
    let mut out = BufWriter::new(std::fs::File::create(&tmp).map_err(werr)?);
    format::encode(&snap, &mut out).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let file = out.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, dir.join("current.data")).map_err(werr)?;
    write_meta(dir, &meta)
}

fn write_meta(dir: &Path, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let werr = |e: std::io::Error| snap_err(ErrorVerb::Write, e);
    let bytes = bincode::serialize(meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let tmp = dir.join("current.meta.tmp");
    std::fs::write(&tmp, bytes).map_err(werr)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(werr)?;
    std::fs::rename(&tmp, dir.join("current.meta")).map_err(werr)
}

/// Replaces the state machine's column families with a received snapshot, then keeps the
/// snapshot as the current one.
fn load_snapshot(
    engine: &Engine,
    dir: &Path,
    mut file: std::fs::File,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    use std::io::Seek;
    let rerr = |e: std::io::Error| snap_err(ErrorVerb::Read, e);
    let derr = |e: format::DecodeError| snap_err(ErrorVerb::Read, e);
    file.seek(std::io::SeekFrom::Start(0)).map_err(rerr)?;
    let len = file.metadata().map_err(rerr)?.len();
    let mut input = Decoder::new(BufReader::new(file), len).map_err(derr)?;
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
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
    while let Some((cf, k, v)) = input.next_record().map_err(derr)? {
        batch.put(cf, &k, &v);
        if batch.len() >= 10_000 {
            engine
                .write(std::mem::replace(&mut batch, engine.batch()), false)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        }
    }
    let applied =
        bincode::serialize(&meta.last_log_id).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let membership =
        bincode::serialize(&meta.last_membership).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    batch.put(Cf::Meta, META_APPLIED, &applied);
    batch.put(Cf::Meta, META_MEMBERSHIP, &membership);
    batch.delete(Cf::Meta, META_INSTALLING);
    engine
        .write(batch, true)
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;

    // The received file becomes the current snapshot (it is what a later lagging member gets).
    input.into_inner().into_inner().sync_all().map_err(rerr)?;
    std::fs::rename(dir.join(RECEIVING), dir.join("current.data")).map_err(rerr)?;
    write_meta(dir, meta)
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

    use super::*;
    use crate::mvcc::RangeOptions;

    fn parts(engine: &Arc<Engine>) -> Applied {
        let store = MvccStore::open(engine.clone()).unwrap();
        let lessor = Arc::new(Lessor::new(
            1,
            crate::lease::load_stored(engine).unwrap(),
            store.take_leased_keys(),
        ));
        let watches = WatchHub::new(store.clone(), 1 << 20, Duration::from_secs(600));
        let alarms = Arc::new(Alarms::load(engine).unwrap());
        Applied {
            store,
            lessor,
            watches,
            alarms,
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
        let leader_snap = leader_dir.path().join("snap");
        std::fs::create_dir_all(&leader_snap).unwrap();
        dump_snapshot(&leader_store, &leader_snap).unwrap();
        let meta: SnapshotMeta =
            bincode::deserialize(&std::fs::read(leader_snap.join("current.meta")).unwrap())
                .unwrap();

        // The follower had other data, received the snapshot, and crashed right after the
        // first install batch (old state gone, marker written).
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        put(&MvccStore::open(engine.clone()).unwrap(), "stale");
        let snap = dir.path().join("snap");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::copy(leader_snap.join("current.data"), snap.join(RECEIVING)).unwrap();
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
        assert!(snap.join("current.data").exists() && !snap.join(RECEIVING).exists());
    }
}
