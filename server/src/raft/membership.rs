//! Cluster membership with etcd's rules, kept in openraft's membership config: voters are
//! etcd's voting members, non-voters its learners, and each node's [`Member`] carries what
//! `MemberList` shows. Changes run on the leader, one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use super::types::{Member, NodeId, Raft, TypeConfig, WatchReceiver};
use crate::error::EtcdError;

/// etcd allows one learner at a time.
/// A learner is ready for promotion once it has 90% of the leader's log (etcd's rule).
const READY_FRACTION: f64 = 0.9;
/// A change is retried while an earlier one is still committing.
const IN_PROGRESS_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    Add {
        id: NodeId,
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: NodeId,
    },
    UpdatePeerUrls {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    Promote {
        id: NodeId,
    },
    /// A started member announces its name and client URLs (etcd's attribute publishing).
    Publish {
        id: NodeId,
        name: String,
        client_urls: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub member: Member,
    pub learner: bool,
}

/// Every member, voters and learners, in id order.
pub fn list(raft: &Raft) -> Vec<MemberInfo> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    members_of(metrics.membership_config.membership())
}

/// The members of a membership config, voters and learners, in id order.
pub(super) fn members_of(membership: &openraft::Membership<NodeId, Member>) -> Vec<MemberInfo> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, member)| MemberInfo {
            id: *id,
            member: member.clone(),
            learner: !voters.contains(id),
        })
        .collect()
}

/// Validates `change` against the current membership and commits it. Must run on the leader.
pub async fn apply(
    raft: &Raft,
    change: &MemberChange,
    max_learners: usize,
) -> Result<(), EtcdError> {
    loop {
        let Some(request) = plan(raft, change, max_learners)? else {
            return Ok(());
        };
        let result = match request {
            Plan::Change(members) if joins_as_voter(change) => {
                match make_voter(raft, members, change).await {
                    Some(result) => result,
                    None => return Err(EtcdError::Stopped),
                }
            }
            Plan::Change(members) => raft.change_membership(members, false).await.map(drop),
            Plan::AddLearner(id, member) => raft.add_learner(id, member, false).await.map(drop),
        };
        match result {
            Ok(()) => {}
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) => {
                tokio::time::sleep(IN_PROGRESS_PAUSE).await;
                continue;
            }
            Err(RaftError::APIError(
                ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_),
            )) => return Err(EtcdError::LeaderChanged),
            Err(RaftError::APIError(ClientWriteError::PreconditionFailed(e))) => {
                tracing::warn!(error = %e, ?change, "membership change refused");
                return Err(EtcdError::Unhealthy);
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                tracing::warn!(error = %e, ?change, "membership change refused");
                return Err(EtcdError::Unhealthy);
            }
            Err(RaftError::Fatal(_)) => return Err(EtcdError::Stopped),
        }
        // Adding a voter is two steps: join as a learner, then become a voter.
        if !matches!(change, MemberChange::Add { learner: false, .. }) || is_voter(raft, change) {
            return Ok(());
        }
    }
}

/// The second step of adding a voting member: the learner becomes a voter.
fn joins_as_voter(change: &MemberChange) -> bool {
    matches!(change, MemberChange::Add { learner: false, .. })
}

/// Makes the new member a voter, returning once the change is durable in the leader's log: from
/// there Raft counts it in every quorum, as etcd's applied ConfChange does. The change itself commits
/// in the background once a quorum of the new configuration has it, which may need the new
/// member itself (a cluster of one growing to two) — and etcd's clients start the new member
/// only after `member add` has answered. `None` if the change task died.
async fn make_voter(
    raft: &Raft,
    members: ChangeMembers<NodeId, Member>,
    change: &MemberChange,
) -> Option<Result<(), ChangeError>> {
    let mut committed = tokio::spawn({
        let raft = raft.clone();
        async move { raft.change_membership(members, false).await.map(drop) }
    });
    let mut metrics = raft.metrics();
    loop {
        if is_voter(raft, change) && membership_flushed_here(raft) {
            return Some(Ok(()));
        }
        tokio::select! {
            done = &mut committed => return done.ok(),
            changed = metrics.changed() => changed.ok()?,
        }
    }
}

/// Whether the leader's own log has fsynced the entry of the membership in effect.
fn membership_flushed_here(raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    let Some(entry) = metrics.membership_config.log_id() else {
        return true;
    };
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&metrics.id).cloned().flatten())
        .is_some_and(|flushed| flushed.index >= entry.index)
}

type ChangeError = RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

enum Plan {
    Change(ChangeMembers<NodeId, Member>),
    AddLearner(NodeId, Member),
}

fn is_voter(raft: &Raft, change: &MemberChange) -> bool {
    let MemberChange::Add { id, .. } = change else {
        return false;
    };
    list(raft).iter().any(|m| m.id == *id && !m.learner)
}

/// The openraft change that carries out `change` next, or `None` when nothing is left to do.
fn plan(
    raft: &Raft,
    change: &MemberChange,
    max_learners: usize,
) -> Result<Option<Plan>, EtcdError> {
    let members = list(raft);
    let find = |id: NodeId| {
        members
            .iter()
            .find(|m| m.id == id)
            .ok_or(EtcdError::MemberNotFound)
    };
    let urls_taken = |id: NodeId, urls: &[String]| {
        members
            .iter()
            .any(|m| m.id != id && m.member.peer_urls.iter().any(|u| urls.contains(u)))
    };
    let set = |id: NodeId, member: Member| {
        Plan::Change(ChangeMembers::SetNodes(BTreeMap::from([(id, member)])))
    };
    Ok(Some(match change {
        MemberChange::Add {
            id,
            peer_urls,
            learner,
        } => match members.iter().find(|m| m.id == *id) {
            // The second step of adding a voter.
            Some(m) if m.learner && !learner => {
                Plan::Change(ChangeMembers::AddVoterIds(BTreeSet::from([*id])))
            }
            Some(_) => return Ok(None),
            None => {
                if urls_taken(*id, peer_urls) {
                    return Err(EtcdError::PeerUrlExists);
                }
                if *learner && members.iter().filter(|m| m.learner).count() >= max_learners {
                    return Err(EtcdError::TooManyLearners);
                }
                let member = Member {
                    peer_urls: peer_urls.clone(),
                    ..Member::default()
                };
                Plan::AddLearner(*id, member)
            }
        },
        MemberChange::Remove { id } => {
            let m = find(*id)?;
            if m.learner {
                Plan::Change(ChangeMembers::RemoveNodes(BTreeSet::from([*id])))
            } else {
                Plan::Change(ChangeMembers::RemoveVoters(BTreeSet::from([*id])))
            }
        }
        MemberChange::UpdatePeerUrls { id, peer_urls } => {
            let m = find(*id)?;
            if urls_taken(*id, peer_urls) {
                return Err(EtcdError::PeerUrlExists);
            }
            if &m.member.peer_urls == peer_urls {
                return Ok(None);
            }
            set(
                *id,
                Member {
                    peer_urls: peer_urls.clone(),
                    ..m.member.clone()
                },
            )
        }
        MemberChange::Promote { id } => {
            let m = find(*id)?;
            if !m.learner {
                return Err(EtcdError::MemberNotLearner);
            }
            if !caught_up(raft, *id) {
                return Err(EtcdError::LearnerNotReady);
            }
            Plan::Change(ChangeMembers::AddVoterIds(BTreeSet::from([*id])))
        }
        MemberChange::Publish {
            id,
            name,
            client_urls,
        } => {
            let m = find(*id)?;
            if &m.member.name == name && &m.member.client_urls == client_urls {
                return Ok(None);
            }
            set(
                *id,
                Member {
                    name: name.clone(),
                    client_urls: client_urls.clone(),
                    ..m.member.clone()
                },
            )
        }
    }))
}

/// Whether the leader has replicated at least 90% of its log to `id`.
pub fn caught_up(raft: &Raft, id: NodeId) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    let last = metrics.last_log_index.unwrap_or(0);
    let matched = metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map_or(0, |l| l.index);
    matched as f64 >= last as f64 * READY_FRACTION
}

/// etcd's id for a member added at run time: derived from its peer URLs and the time.
pub fn new_member_id(peer_urls: &[String]) -> NodeId {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::cluster::member_id(peer_urls, &now.to_string())
}
