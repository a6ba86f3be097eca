//! The Lease service's behaviour, independent of gRPC: id choice, TTL limits, Raft proposals,
//! keep-alives on the leader and the leader's expiry loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};

use futures_util::future::BoxFuture;
use oxcd_proto::peerpb::Failure;

use super::{LeaseInfo, Lessor, MAX_TTL};
use crate::alarm::{self, Quota};
use crate::apply::{Command, LeaseExpiry, Op, Outcomes};
use crate::auth::{AuthInfo, AuthStore, LeaseKeys};
use crate::error::EtcdError;
use crate::kv::apply::LeaseLookup;
use crate::replication::{failure, not_leader, Replication};

const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// A revoke that has not landed after this long is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

pub struct LeaseService {
    lessor: Arc<Lessor>,
    consensus: Arc<dyn Replication>,
    quota: Arc<Quota>,
    auth: Arc<AuthStore>,
    ids: IdGenerator,
    /// etcd's FastLeaseKeepAlive gate: a keep-alive for a lease the leader already has does not
    /// wait for the leader to apply everything committed.
    fast_keep_alive: bool,
}

impl LeaseService {
    /// Starts the service with its leader-only expiry loop.
    pub fn start(
        lessor: Arc<Lessor>,
        consensus: Arc<dyn Replication>,
        quota: Arc<Quota>,
        auth: Arc<AuthStore>,
        member_id: u64,
        fast_keep_alive: bool,
    ) -> Arc<LeaseService> {
        let service = Arc::new(LeaseService {
            lessor,
            consensus,
            quota,
            auth,
            ids: IdGenerator::new(member_id),
            fast_keep_alive,
        });
        let mut leading = service.consensus.leadership(member_id);
        let lessor = service.lessor.clone();
        tokio::spawn(async move {
            loop {
                lessor.set_primary(*leading.borrow_and_update());
                if leading.changed().await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(expire(Arc::downgrade(&service)));
        service
    }

    /// With auth on, every lease call needs a caller (etcd 3.7).
    pub async fn grant(
        &self,
        who: &AuthInfo,
        r: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, EtcdError> {
        self.auth.require_user(who)?;
        if r.ttl > MAX_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        self.quota.admit(alarm::lease_cost()).await?;
        let id = if r.id == 0 { self.ids.next() } else { r.id };
        match self
            .propose(who, Op::LeaseGrant(LeaseGrantRequest { ttl: r.ttl, id }))
            .await?
        {
            Outcomes::LeaseGrant(resp) => Ok(resp),
            _ => Err(EtcdError::Corrupt),
        }
    }

    /// Revoking deletes the lease's keys: apply checks the caller may write each.
    pub async fn revoke(
        &self,
        who: &AuthInfo,
        r: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, EtcdError> {
        self.auth.require_user(who)?;
        match self.propose(who, Op::LeaseRevoke(r)).await? {
            Outcomes::LeaseRevoke(resp) => Ok(resp),
            _ => Err(EtcdError::Corrupt),
        }
    }

    /// Keep-alives are the leader's: answered here when this member leads, else forwarded. An
    /// unknown lease is answered with TTL 0, as etcd does. With auth on, only a caller who may
    /// write every key of the lease keeps it alive (etcd's checkLeaseRenew).
    pub async fn keep_alive(
        &self,
        who: &AuthInfo,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, EtcdError> {
        if self.auth.is_enabled() {
            self.auth.require_user(who)?;
            self.auth
                .check_lease_keys_writable(who, id, self.lessor.as_ref())?;
        }
        let here = move || -> BoxFuture<'_, Result<i64, Failure>> { Box::pin(self.renew_here(id)) };
        let renewed = self.consensus.renew_lease_on_leader(id, &here);
        // A member that cannot reach a leader gives up as etcd's does, after its request
        // timeout, rather than hold the keep-alive stream forever.
        let ttl = tokio::time::timeout(self.consensus.request_timeout(), renewed)
            .await
            .unwrap_or(Err(EtcdError::Timeout))?;
        Ok(LeaseKeepAliveResponse {
            header: None,
            id,
            ttl,
        })
    }

    /// The leader's side of a keep-alive. Answered only once this member has confirmed its
    /// leadership with a quorum, as etcd does: a leader cut off by a partition would otherwise
    /// keep a lease alive for its client while the new leader expires it and hands its lock or
    /// election to another holder.
    pub async fn renew_here(&self, id: i64) -> Result<i64, Failure> {
        if !self.consensus.is_leader() {
            return Err(not_leader());
        }
        let wait_applied = !(self.fast_keep_alive && self.lessor.exists(id));
        match self.consensus.confirm_leadership(wait_applied).await {
            Ok(()) => {}
            Err(EtcdError::NotLeader) => return Err(not_leader()),
            // Cut off from its quorum: etcd's member steps down and its renewals end with "no
            // leader"; ours says so once it no longer vouches for itself.
            Err(_) if self.consensus.status().leader.is_none() => {
                return Err(failure(EtcdError::NoLeader))
            }
            Err(e) => return Err(failure(e)),
        }
        let renewed = tokio::time::timeout(self.consensus.request_timeout(), self.lessor.renew(id))
            .await
            .unwrap_or(Err(EtcdError::Timeout));
        match renewed {
            Ok(ttl) => Ok(ttl.unwrap_or(0)),
            Err(EtcdError::NotLeader) => Err(not_leader()),
            Err(e) => Err(failure(e)),
        }
    }

    /// Only the leader knows how long a lease has left, so this is answered there. An unknown
    /// (or expired) lease is answered with TTL -1 rather than an error, as etcd does.
    /// With keys, the caller must be able to read each (etcd checks the keys this member knows
    /// the lease to have).
    pub async fn time_to_live(
        &self,
        who: &AuthInfo,
        r: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        self.auth.require_user(who)?;
        let checked_at = self.auth.revision();
        if r.keys && self.auth.is_enabled() {
            self.auth
                .check_keys_readable(who, &self.lessor.lease_keys(r.id))?;
        }
        let (id, keys) = (r.id, r.keys);
        let here = move || -> BoxFuture<'_, Result<Option<LeaseInfo>, Failure>> {
            Box::pin(self.time_to_live_here(id, keys))
        };
        let asked = self.consensus.lease_time_to_live_on_leader(id, keys, &here);
        let info = tokio::time::timeout(self.consensus.request_timeout(), asked)
            .await
            .unwrap_or(Err(EtcdError::Timeout))?;
        if keys && self.auth.is_enabled() && checked_at != self.auth.revision() {
            return Err(EtcdError::AuthOldRevision);
        }
        Ok(match info {
            Some(info) => LeaseTimeToLiveResponse {
                header: None,
                id,
                ttl: info.ttl,
                granted_ttl: info.granted_ttl,
                keys: info.keys,
            },
            None => LeaseTimeToLiveResponse {
                header: None,
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        })
    }

    /// The leader's side of [`LeaseService::time_to_live`].
    pub async fn time_to_live_here(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<Option<LeaseInfo>, Failure> {
        if !self.consensus.is_leader() {
            return Err(not_leader());
        }
        let index = self.consensus.leader_read_index().await?;
        self.consensus.wait_applied(index).await.map_err(failure)?;
        Ok(self.lessor.info(id, keys))
    }

    /// Listing leases reveals their keys' existence: a caller who is not root must be able to
    /// read every attached key (etcd's checkLeaseLeases).
    pub async fn leases(&self, who: &AuthInfo) -> Result<LeaseLeasesResponse, EtcdError> {
        self.auth.require_user(who)?;
        self.consensus.read_barrier().await?;
        let ids = self.lessor.ids();
        if self.auth.is_enabled() && self.auth.check_admin(who).is_err() {
            let checked_at = self.auth.revision();
            for id in &ids {
                self.auth
                    .check_keys_readable(who, &self.lessor.lease_keys(*id))?;
            }
            if checked_at != self.auth.revision() {
                return Err(EtcdError::AuthOldRevision);
            }
        }
        let leases = ids.into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(LeaseLeasesResponse {
            header: None,
            leases,
        })
    }

    async fn propose(&self, who: &AuthInfo, op: Op) -> Result<Outcomes, EtcdError> {
        self.consensus.propose(Command::by(op, who)).await
    }
}

/// Revokes expired leases through Raft; only the primary lessor reports any, and it revokes
/// them only once it has confirmed with a quorum that it still leads, as etcd does
/// (etcd-io/etcd#15247). Each expiry names the term it was decided in and is applied only from
/// an entry of that term ([`LeaseExpiry`]): a leader cut off from its quorum sees every lease
/// expire, since the keep-alives now go to the new leader, and an expiry that reached the new
/// leader after the partition healed would revoke leases that leader kept alive.
async fn expire(service: std::sync::Weak<LeaseService>) {
    let mut ticker = tokio::time::interval(EXPIRY_CHECK);
    loop {
        ticker.tick().await;
        let Some(service) = service.upgrade() else {
            return;
        };
        // Read before the expiries are found: a later term may belong to a later leadership of
        // this member, whose lessor has renewed every lease since.
        let term = service.consensus.term();
        // Each is retried after REVOKE_RETRY whatever happens to it here.
        let expired = service.lessor.expired(Instant::now(), REVOKE_RETRY);
        if expired.is_empty() {
            continue;
        }
        tokio::spawn(async move {
            if let Some(pause) = crate::failpoint_pause("lease::expire::before_propose") {
                tokio::time::sleep(pause).await;
            }
            if let Err(e) = service.consensus.confirm_leadership(false).await {
                tracing::debug!(error = %e, "not revoking expired leases: leadership not confirmed");
                return;
            }
            for id in expired {
                let service = service.clone();
                tokio::spawn(async move {
                    match service
                        .consensus
                        .propose(Command::new(Op::LeaseExpire(LeaseExpiry { id, term })))
                        .await
                    {
                        Ok(_) | Err(EtcdError::LeaseNotFound) => {}
                        Err(EtcdError::LeaderChanged) => {
                            tracing::debug!(lease = id, "expiry of a former term not applied")
                        }
                        Err(e) => {
                            tracing::warn!(lease = id, error = %e, "revoking an expired lease failed; retrying")
                        }
                    }
                });
            }
        });
    }
}

/// etcd's request-id generator: the member id's low 16 bits, then a counter seeded from the
/// clock, so ids from different members and restarts do not collide.
struct IdGenerator {
    prefix: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    fn new(member_id: u64) -> IdGenerator {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        IdGenerator {
            prefix: (member_id & 0xffff) << 48,
            counter: AtomicU64::new((millis & 0xff_ffff_ffff) << 8),
        }
    }

    fn next(&self) -> i64 {
        let suffix = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        ((self.prefix | (suffix & 0xffff_ffff_ffff)) & i64::MAX as u64) as i64
    }
}
