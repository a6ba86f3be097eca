//! Leases: etcd's lessor.
//!
//! Grants and revokes are Raft commands, applied identically on every member; a revoke deletes
//! every attached key in one revision. Expiry is decided only by the leader (the *primary*
//! lessor), which proposes the revoke through Raft. Keep-alives only move the leader's in-memory
//! deadline, as in etcd; a new leader (or a restart) gives every lease its full TTL again, so a
//! leader change never cuts a lease short.

mod service;

pub use service::LeaseService;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;
use tokio::sync::Notify;

use crate::error::EtcdError;
use crate::kv::apply::LeaseLookup;
use crate::mvcc::Change;
use crate::storage::{self, Cf, Engine};

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const MAX_TTL: i64 = 9_000_000_000;

/// A lease as stored (etcd's `leasepb.Lease`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredLease {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
}

impl StoredLease {
    pub fn key(id: i64) -> [u8; 8] {
        id.to_be_bytes()
    }

    pub fn value(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

struct Lease {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
    /// Only the primary tracks deadlines.
    deadline: Option<Instant>,
    /// Its expiry has been decided by this primary: no keep-alive can save it any more.
    expiring: bool,
}

/// What a keep-alive on the primary finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Kept alive for this many seconds.
    Renewed(i64),
    /// No such lease (never granted, or already revoked).
    Unknown,
    /// Past its deadline: its revoke is (or is about to be) on its way through Raft, so the
    /// keep-alive must wait for it rather than promise a TTL the lease will not live.
    Expiring,
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Lease>,
    /// Which lease each leased key is attached to.
    key_lease: HashMap<Vec<u8>, i64>,
    primary: bool,
}

impl State {
    fn restored(
        stored: Vec<StoredLease>,
        leased_keys: HashMap<Vec<u8>, i64>,
        primary: bool,
    ) -> State {
        let mut state = State {
            primary,
            ..State::default()
        };
        for l in stored {
            let lease = Lease {
                ttl: l.ttl,
                keys: BTreeSet::new(),
                deadline: primary.then(|| deadline_after(l.ttl)),
                expiring: false,
            };
            state.leases.insert(l.id, lease);
        }
        for (key, id) in leased_keys {
            if let Some(l) = state.leases.get_mut(&id) {
                l.keys.insert(key.clone());
                state.key_lease.insert(key, id);
            }
        }
        state
    }
}

/// Every lease record in the engine.
pub fn load_stored(engine: &Engine) -> storage::Result<Vec<StoredLease>> {
    let mut leases = Vec::new();
    let mut bad = None;
    engine.scan(Cf::Lease, &[], None, |k, v| match StoredLease::decode(v) {
        Ok(l) => {
            leases.push(l);
            true
        }
        Err(e) => {
            bad = Some(format!("lease record {k:?}: {e}"));
            false
        }
    })?;
    match bad {
        Some(e) => Err(storage::StorageError::Corrupt(e)),
        None => Ok(leases),
    }
}

/// What TimeToLive reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

pub struct Lessor {
    state: Mutex<State>,
    min_ttl: i64,
    /// Woken when a lease goes away or primacy changes: what an expiring lease's keep-alive
    /// waits for.
    changed: Notify,
}

impl Lessor {
    /// `min_ttl`: etcd's floor of 1.5 election timeouts (rounded up to seconds), so a lease
    /// cannot expire during a leader election.
    pub fn new(
        min_ttl: i64,
        stored: Vec<StoredLease>,
        leased_keys: HashMap<Vec<u8>, i64>,
    ) -> Lessor {
        Lessor {
            state: Mutex::new(State::restored(stored, leased_keys, false)),
            min_ttl,
            changed: Notify::new(),
        }
    }

    /// Replaces every lease with the given ones (after a snapshot install); a primary lessor
    /// gives each its full TTL from now.
    pub fn restore(&self, stored: Vec<StoredLease>, leased_keys: HashMap<Vec<u8>, i64>) {
        let mut st = self.state.lock();
        *st = State::restored(stored, leased_keys, st.primary);
        drop(st);
        self.changed.notify_waiters();
    }

    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    /// Applies a grant; returns the TTL granted.
    pub fn grant(&self, id: i64, ttl: i64) -> Result<StoredLease, EtcdError> {
        let mut st = self.state.lock();
        if st.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExists);
        }
        let ttl = ttl.max(self.min_ttl);
        let deadline = st.primary.then(|| deadline_after(ttl));
        st.leases.insert(
            id,
            Lease {
                ttl,
                keys: BTreeSet::new(),
                deadline,
                expiring: false,
            },
        );
        Ok(StoredLease { id, ttl })
    }

    /// Applies a revoke: forgets the lease and returns the keys to delete.
    pub fn revoke(&self, id: i64) -> Result<Vec<Vec<u8>>, EtcdError> {
        let mut st = self.state.lock();
        let lease = st.leases.remove(&id).ok_or(EtcdError::LeaseNotFound)?;
        for k in &lease.keys {
            st.key_lease.remove(k);
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(lease.keys.into_iter().collect())
    }

    /// Moves keys between leases as puts and deletes are applied.
    pub fn track(&self, changes: &[Change]) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        for c in changes {
            let new = if c.deleted { 0 } else { c.kv.lease };
            let old = if new == 0 {
                st.key_lease.remove(&c.kv.key)
            } else {
                st.key_lease.insert(c.kv.key.clone(), new)
            };
            if old == Some(new) {
                continue;
            }
            if let Some(l) = old.and_then(|o| st.leases.get_mut(&o)) {
                l.keys.remove(&c.kv.key);
            }
            if let Some(l) = st.leases.get_mut(&new) {
                l.keys.insert(c.kv.key.clone());
            }
        }
    }

    /// Becoming leader: every lease gets its full TTL from now. Losing leadership: no
    /// deadlines, the new leader decides expiry.
    pub fn set_primary(&self, primary: bool) {
        let mut st = self.state.lock();
        if st.primary == primary {
            return;
        }
        st.primary = primary;
        for l in st.leases.values_mut() {
            l.deadline = primary.then(|| deadline_after(l.ttl));
            l.expiring = false;
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Keep-alive on the primary. A lease already past its deadline is not renewed: as etcd's
    /// lessor does, the keep-alive waits until its revoke applies (and reports it unknown) or
    /// this member stops being primary (the client retries on the new leader, whose lessor
    /// gave the lease its full TTL again). Returns the TTL, or `None` for an unknown lease.
    pub async fn renew(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        loop {
            let changed = self.changed.notified();
            match self.try_renew(id, Instant::now())? {
                Renewal::Renewed(ttl) => return Ok(Some(ttl)),
                Renewal::Unknown => return Ok(None),
                Renewal::Expiring => changed.await,
            }
        }
    }

    fn try_renew(&self, id: i64, now: Instant) -> Result<Renewal, EtcdError> {
        let mut st = self.state.lock();
        if !st.primary {
            return Err(EtcdError::NotLeader);
        }
        let Some(l) = st.leases.get_mut(&id) else {
            return Ok(Renewal::Unknown);
        };
        if l.expiring || l.deadline.is_some_and(|d| d <= now) {
            return Ok(Renewal::Expiring);
        }
        l.deadline = Some(deadline_after(l.ttl));
        Ok(Renewal::Renewed(l.ttl))
    }

    pub fn info(&self, id: i64, with_keys: bool) -> Option<LeaseInfo> {
        let st = self.state.lock();
        let l = st.leases.get(&id)?;
        let remaining = match l.deadline {
            // Whole seconds left, truncated as etcd reports them.
            Some(d) => d.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => l.ttl,
        };
        let keys = if with_keys {
            l.keys.iter().cloned().collect()
        } else {
            Vec::new()
        };
        Some(LeaseInfo {
            ttl: remaining,
            granted_ttl: l.ttl,
            keys,
        })
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.state.lock().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Leases past their deadline; each is given a short grace so a revoke in flight is not
    /// proposed again at once.
    pub fn expired(&self, now: Instant, retry_after: Duration) -> Vec<i64> {
        let mut st = self.state.lock();
        if !st.primary {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (id, l) in st.leases.iter_mut() {
            if l.deadline.is_some_and(|d| d <= now) {
                l.deadline = Some(now + retry_after);
                l.expiring = true;
                out.push(*id);
            }
        }
        out
    }
}

impl LeaseLookup for Lessor {
    fn exists(&self, id: i64) -> bool {
        self.state.lock().leases.contains_key(&id)
    }
}

impl crate::auth::LeaseKeys for Lessor {
    fn lease_keys(&self, lease: i64) -> Vec<Vec<u8>> {
        self.state
            .lock()
            .leases
            .get(&lease)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn deadline_after(ttl: i64) -> Instant {
    Instant::now() + Duration::from_secs(ttl.clamp(0, MAX_TTL) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_proto::mvccpb::KeyValue;

    fn put(key: &str, lease: i64) -> Change {
        Change {
            kv: KeyValue {
                key: key.into(),
                lease,
                ..Default::default()
            },
            deleted: false,
            prev: None,
        }
    }

    #[test]
    fn keys_follow_their_latest_lease() {
        let lessor = Lessor::new(2, vec![], HashMap::new());
        lessor.grant(1, 10).unwrap();
        lessor.grant(2, 1).unwrap();
        assert_eq!(lessor.grant(1, 10), Err(EtcdError::LeaseExists));
        lessor.track(&[put("a", 1), put("b", 1), put("a", 2), put("c", 0)]);
        assert_eq!(lessor.info(1, true).unwrap().keys, vec![b"b".to_vec()]);
        assert_eq!(lessor.info(2, true).unwrap().keys, vec![b"a".to_vec()]);
        assert_eq!(
            lessor.info(2, false).unwrap().granted_ttl,
            2,
            "raised to the minimum TTL"
        );
        assert_eq!(lessor.revoke(2).unwrap(), vec![b"a".to_vec()]);
        assert_eq!(lessor.revoke(2), Err(EtcdError::LeaseNotFound));
    }

    #[test]
    fn only_the_primary_expires_leases() {
        let lessor = Lessor::new(1, vec![StoredLease { id: 7, ttl: 1 }], HashMap::new());
        let later = Instant::now() + Duration::from_secs(5);
        assert!(lessor.expired(later, Duration::from_secs(1)).is_empty());
        let now = Instant::now();
        assert_eq!(lessor.try_renew(7, now), Err(EtcdError::NotLeader));
        lessor.set_primary(true);
        assert_eq!(lessor.try_renew(7, now), Ok(Renewal::Renewed(1)));
        assert_eq!(lessor.try_renew(8, now), Ok(Renewal::Unknown));
        assert_eq!(lessor.expired(later, Duration::from_secs(1)), vec![7]);
        assert!(
            lessor.expired(later, Duration::from_secs(1)).is_empty(),
            "not proposed twice at once"
        );
    }

    #[test]
    fn a_lease_past_its_deadline_is_not_renewed() {
        let lessor = Lessor::new(1, vec![StoredLease { id: 7, ttl: 1 }], HashMap::new());
        lessor.set_primary(true);
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(lessor.try_renew(7, later), Ok(Renewal::Expiring));
        assert_eq!(lessor.expired(later, Duration::from_secs(1)), vec![7]);
        assert_eq!(
            lessor.try_renew(7, Instant::now()),
            Ok(Renewal::Expiring),
            "its revoke is on its way"
        );
        lessor.set_primary(false);
        lessor.set_primary(true);
        assert_eq!(
            lessor.try_renew(7, Instant::now()),
            Ok(Renewal::Renewed(1)),
            "a new primacy gives it its full TTL"
        );
    }

    #[tokio::test]
    async fn a_keep_alive_of_an_expiring_lease_waits_for_its_revoke() {
        let lessor = std::sync::Arc::new(Lessor::new(
            1,
            vec![StoredLease { id: 7, ttl: 1 }],
            HashMap::new(),
        ));
        lessor.set_primary(true);
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(lessor.expired(later, Duration::from_secs(1)), vec![7]);
        let waiting = tokio::spawn({
            let lessor = lessor.clone();
            async move { lessor.renew(7).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        lessor.revoke(7).unwrap();
        assert_eq!(waiting.await.unwrap(), Ok(None));
    }
}
