//! The applier (etcd's apply package): executes committed commands against the MVCC store, the
//! lessor, alarms, auth and the downgrade state, in log order, and answers each with its
//! outcome. It knows nothing of how the log is replicated; the consensus layer hands it each
//! committed batch with its log position and records its own bookkeeping in the same write.

mod command;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oxcd_proto::etcdserverpb::{
    AlarmResponse, AlarmType, CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse,
    ResponseHeader,
};

pub use command::{Command, CommandBatch, LeaseExpiry, Op, Outcome, OutcomeBatch, Outcomes};

use crate::alarm::{self, Alarms};
use crate::auth::{AuthInfo, AuthStore, AUTH_META_KEY};
use crate::downgrade::Downgrade;
use crate::error::EtcdError;
use crate::kv::apply;
use crate::lease::{Lessor, StoredLease};
use crate::metrics::metrics;
use crate::mvcc::{KeyRange, MvccStore, Writer};
use crate::storage::{self, Cf, Engine};
use crate::watch::WatchHub;

/// Where a batch stands in the replicated log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// The term of the leader that appended the entry.
    pub term: u64,
    pub index: u64,
}

/// Everything applying a command changes.
#[derive(Clone)]
pub struct Applier {
    pub store: Arc<MvccStore>,
    pub lessor: Arc<Lessor>,
    pub watches: Arc<WatchHub>,
    pub alarms: Arc<Alarms>,
    pub auth: Arc<AuthStore>,
    pub downgrade: Arc<Downgrade>,
    /// An apply that takes longer is logged (etcd's --warning-apply-duration).
    pub slow_apply: Duration,
}

/// etcd's warning limit for one apply round (`warnApplyDuration`).
const SLOW_APPLY: Duration = Duration::from_millis(100);

/// Committed batches applied in one atomic engine write, with whatever the caller records
/// alongside them.
pub struct ApplyRound<'a> {
    applier: &'a Applier,
    writer: Writer<'a>,
    started: Instant,
}

impl Applier {
    /// Starts a round: nothing it applies is visible or durable before [`ApplyRound::commit`].
    pub fn begin(&self) -> ApplyRound<'_> {
        ApplyRound {
            applier: self,
            writer: self.store.writer(self.watches.wants_prev_kv()),
            started: Instant::now(),
        }
    }

    /// Brings the in-memory parts in line with state just loaded into the engine (a snapshot).
    pub fn reload(&self, engine: &Engine) -> storage::Result<()> {
        self.store.reload()?;
        self.lessor.restore(
            crate::lease::load_stored(engine)?,
            self.store.take_leased_keys(),
        );
        self.alarms.reload(engine)?;
        self.auth.reload(engine)?;
        self.downgrade.reload(engine)?;
        self.watches.restored(self.store.current_revision());
        Ok(())
    }

    fn apply_command(&self, writer: &mut Writer<'_>, at: LogPosition, command: Command) -> Outcome {
        let before = writer.changes().len();
        let started = Instant::now();
        let result = self.execute(writer, at, command);
        let took = started.elapsed();
        if took > self.slow_apply {
            tracing::warn!(
                took = ?took,
                expected_duration = ?self.slow_apply,
                index = at.index,
                "apply request took too long"
            );
        }
        self.lessor.track(&writer.changes()[before..]);
        Outcome {
            result: Some(result.unwrap_or_else(|e| Outcomes::Error(e.to_wire()))),
        }
    }

    /// etcd's applier chain: auth (the requester's permissions, as of this point in the log) →
    /// quota and alarms → the backend.
    fn execute(
        &self,
        writer: &mut Writer<'_>,
        at: LogPosition,
        command: Command,
    ) -> Result<Outcomes, EtcdError> {
        let header = |revision| {
            Some(ResponseHeader {
                revision,
                ..Default::default()
            })
        };
        let Applier {
            lessor,
            alarms,
            auth,
            downgrade,
            ..
        } = self;
        let who = command.requester.clone().unwrap_or_default();
        check_permissions(auth, lessor, &who, &command)?;
        if let Some(refused) = command.op.as_ref().and_then(|op| alarm_refusal(alarms, op)) {
            return Err(refused);
        }
        match command.op {
            Some(Op::Put(p)) => {
                apply::put(&mut writer.txn(), p, lessor.as_ref()).map(Outcomes::Put)
            }
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
            Some(Op::LeaseExpire(e)) if e.term == at.term => revoke(lessor, writer, e.id),
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
                let (applied, stored) = auth.apply(change, &who, at.index)?;
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
}

impl ApplyRound<'_> {
    /// Applies one committed batch, the commands of the entry at `at`, and returns their
    /// outcomes in order.
    pub fn apply(&mut self, at: LogPosition, commands: Vec<Command>) -> Vec<Outcome> {
        commands
            .into_iter()
            .map(|command| self.applier.apply_command(&mut self.writer, at, command))
            .collect()
    }

    /// Writes `value` under `key` in the round's engine write (the caller's bookkeeping).
    pub fn record(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.writer.put_extra(cf, key, value);
    }

    /// Makes the round durable, then tells the watchers.
    pub fn commit(self) -> storage::Result<()> {
        let ApplyRound {
            applier,
            writer,
            started,
        } = self;
        fail::fail_point!("raft::apply::before_commit");
        let commit = metrics().disk.backend_commit.start_timer();
        let changes = writer.commit()?;
        commit.observe_duration();
        fail::fail_point!("raft::apply::after_commit");
        applier
            .watches
            .publish(&changes, applier.store.current_revision());
        if started.elapsed() > SLOW_APPLY {
            metrics().server.slow_apply.inc();
        }
        Ok(())
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

/// The error an active alarm answers `op` with when it is applied, as etcd's corrupt and capped
/// appliers do; `None` when the command goes ahead.
fn alarm_refusal(alarms: &Alarms, op: &Op) -> Option<EtcdError> {
    if alarms.raised(AlarmType::Corrupt) && !matches!(op, Op::Alarm(_)) {
        return Some(EtcdError::Corrupt);
    }
    let grows = match op {
        Op::Put(_) | Op::LeaseGrant(_) => true,
        Op::Txn(t) => alarm::txn_cost(t) > 0,
        _ => false,
    };
    (grows && alarms.no_space()).then_some(EtcdError::NoSpace)
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

#[cfg(test)]
impl Applier {
    /// An applier on `engine` with the parts as a member opens them.
    pub(crate) fn open_for_tests(engine: &Arc<Engine>) -> Applier {
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
        Applier {
            store,
            lessor,
            watches,
            alarms,
            auth,
            downgrade,
            slow_apply: Duration::from_millis(100),
        }
    }

    /// The keys the store holds now.
    pub(crate) fn keys(&self) -> Vec<String> {
        let all = KeyRange::new(b"\0", b"\0");
        let rr = self
            .store
            .range(&all, crate::mvcc::RangeOptions::default())
            .unwrap();
        rr.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use oxcd_proto::etcdserverpb::{LeaseGrantRequest, PutRequest};

    use super::*;

    #[tokio::test]
    async fn an_expiry_applies_only_in_an_entry_of_the_term_that_decided_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let applier = Applier::open_for_tests(&engine);
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
        let entries = [
            (2, 1, grant(7)),
            (2, 2, attach("kept", 7)),
            (2, 3, grant(8)),
            (2, 4, attach("expired", 8)),
            // The leader of term 2, cut off, found both expired; one of its expiries reached
            // the leader of term 3 (forwarded), the other was decided by that leader itself.
            (3, 5, expire(7, 2)),
            (3, 6, expire(8, 3)),
        ];
        let mut round = applier.begin();
        let outcomes: Vec<Outcomes> = entries
            .into_iter()
            .map(|(term, index, op)| {
                let at = LogPosition { term, index };
                let mut outcomes = round.apply(at, vec![Command::new(op)]);
                outcomes.remove(0).result.unwrap()
            })
            .collect();
        round.commit().unwrap();
        assert_eq!(
            outcomes[4],
            Outcomes::Error(EtcdError::LeaderChanged.to_wire())
        );
        assert!(matches!(outcomes[5], Outcomes::LeaseRevoke(_)));
        assert_eq!(applier.keys(), ["kept"]);
        assert_eq!(applier.lessor.ids(), [7]);
    }
}
