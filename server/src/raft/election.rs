//! Who leads, as far as this member can vouch for it, and when this member campaigns.
//!
//! **Liveness of the leader** (etcd's CheckQuorum and a follower's election timeout). openraft
//! keeps a leader that lost its quorum in the leader state for as long as the partition lasts
//! (0.10 only stops it taking writes), and a follower keeps naming a leader it no longer hears
//! from. Either would go on
//! answering as if the cluster were healthy: keep-alives, `hasleader` requests, readiness probes,
//! watch streams that want a leader. So every tick this module decides whether this member is
//! *in contact*: a leader that heard back from a quorum (append or heartbeat replies) within an
//! election timeout, a follower or learner that heard from its leader within one. A member out of
//! contact reports no leader, as an etcd member does once raft steps a leader down or makes a
//! follower a pre-candidate. The leader also sends a beacon to every member every tick, as
//! etcd's leader sends heartbeats, without waiting for the previous tick's answers (openraft's
//! heartbeats wait for each other: over a 1 s round trip a follower would hear one a second), so
//! a quorum answers many times per election timeout and a single slow reply never looks like a
//! partition.
//!
//! **Elections.** Without PreVote a member cut off from the leader would campaign again and
//! again, raising its term, and on its return that term deposes a healthy leader (it steps down
//! on the higher vote in an append reply) and stalls the cluster for another election. openraft
//! 0.10's own PreVote counts silence in wall time and is unknown to members of the previous
//! release (openraft 0.9, during a rolling upgrade), so openraft's election timer is off and
//! this module decides: a voter that has
//! not heard from a leader for an election timeout first asks the others whether they would vote
//! for it (PreVote), and campaigns only when a quorum says yes. A member that heard from a leader
//! within an election timeout says no (etcd's CheckQuorum lease), so a returning member rejoins at
//! the leader's term. The campaign is openraft's leader-transfer election, which voters grant
//! inside openraft's own lease: that lease is longer than an election timeout, since it is also
//! how long an idle leader takes writes on one answered heartbeat (over slow links, one a round
//! trip), and the PreVote quorum has already shown that the leader is gone.
//!
//! Silence is counted in ticks of one heartbeat interval, as etcd counts it, not in wall time:
//! a member resumed after a pause (SIGSTOP, a stalled VM) has missed ticks, not heard silence,
//! and must not count the pause against a leader that was there all along.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oxcd_proto::peerpb::{LeaderBeaconRequest, PreVoteRequest};

use super::log_store::LogStore;
use super::membership;
use super::network::{Client, Peers};
use super::types::{LogId, Membership, NodeId, Raft, TransferLeaderRequest, Vote, WatchReceiver};

/// Elections stay off this long after the last snapshot chunk arrived.
const SNAPSHOT_QUIET: Duration = Duration::from_secs(3);
/// How long a member stays out of elections for a leader transfer that never finishes.
const HOLD_LIMIT: Duration = Duration::from_secs(10);
/// How long a restarted member looks for its peers before the initial tick advance gives up,
/// and how often (etcd's: rafthttp's 5 s connection read timeout, every 50 ms).
const ADVANCE_WAIT: Duration = Duration::from_secs(5);
const ADVANCE_RETRY: Duration = Duration::from_millis(50);

pub struct Elections {
    raft: Raft,
    me: NodeId,
    log: LogStore,
    peers: Arc<Peers>,
    heartbeat: Duration,
    /// How long a leader may go without hearing from a quorum, and a follower without hearing
    /// from its leader, before it reports no leader.
    election_timeout: Duration,
    election_ticks: u32,
    /// How long a PreVote or a beacon waits for its answer: longer than a 1 s round trip.
    answer_timeout: Duration,
    contact: parking_lot::Mutex<LeaderContact>,
    /// The outcome of the last tick's check; see the module docs.
    in_contact: AtomicBool,
}

/// What a member knows of its leader's liveness and its own campaigns.
struct LeaderContact {
    /// Ticks since a leader last sent entries, a heartbeat or a snapshot chunk (on the leader
    /// itself, since it last led).
    silent_ticks: u32,
    /// Counts every time a leader is heard from.
    heard: u64,
    /// When this member became leader, while it leads. Its voters had just granted their votes,
    /// so their replies count from then.
    leading_since: Option<Instant>,
    /// While a snapshot streams in, the follower sees no heartbeats; a campaign then would
    /// depose the leader and restart the transfer, so a large snapshot would never finish.
    snapshot_until: Option<Instant>,
    /// A leader transfer to another member asked this one to stay out of elections until then.
    held_until: Option<Instant>,
    /// Ticks to wait before the next campaign (after a refused PreVote or an election).
    backoff_ticks: u32,
}

impl LeaderContact {
    fn quiet(&mut self, now: Instant) -> bool {
        self.snapshot_until = self.snapshot_until.filter(|until| *until > now);
        self.held_until = self.held_until.filter(|until| *until > now);
        self.snapshot_until.is_some() || self.held_until.is_some()
    }

    fn heard(&mut self) {
        self.silent_ticks = 0;
        self.heard += 1;
    }
}

/// Where a member stands this tick.
enum Standing {
    Leader(Membership),
    /// A voter that follows (or campaigns).
    Voter {
        alone: bool,
    },
    Learner,
    Stopped,
}

/// Timing of the election module, from etcd's flags.
pub struct Timing {
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// How long a PreVote or a beacon waits for its answer.
    pub answer_timeout: Duration,
    /// etcd's --initial-election-tick-advance ([`Elections::advance_after_restart`]).
    pub advance_on_restart: bool,
}

impl Elections {
    pub fn start(
        raft: Raft,
        me: NodeId,
        log: LogStore,
        peers: Arc<Peers>,
        timing: Timing,
    ) -> Arc<Elections> {
        let heartbeat = timing.heartbeat.max(Duration::from_millis(10));
        let ticks = |d: Duration| d.as_millis().div_ceil(heartbeat.as_millis()) as u32;
        let election_ticks = ticks(timing.election_timeout);
        // A member that has voted in a term with a leader gives that leader an election timeout
        // from its start; one that never has (a new cluster) may elect at once.
        // Read from the store: the metrics show the default vote until openraft's core has
        // reported once, and a restarted member that took that for "never voted" campaigned at
        // once, deposing the leader the others were about to follow again (a full-cluster
        // restart then took 13-23 s to serve instead of about 4).
        let voted_for_leader = log
            .saved_vote()
            .ok()
            .flatten()
            .is_some_and(|vote| vote.committed);
        let elections = Arc::new(Elections {
            raft,
            me,
            log,
            peers,
            heartbeat,
            election_timeout: timing.election_timeout,
            election_ticks,
            answer_timeout: timing.answer_timeout,
            contact: parking_lot::Mutex::new(LeaderContact {
                silent_ticks: if voted_for_leader {
                    0
                } else {
                    election_ticks + 1
                },
                heard: 0,
                leading_since: None,
                snapshot_until: None,
                held_until: None,
                backoff_ticks: 0,
            }),
            in_contact: AtomicBool::new(false),
        });
        tokio::spawn(elections.clone().tick());
        if voted_for_leader && timing.advance_on_restart {
            tokio::spawn(Elections::advance_after_restart(Arc::downgrade(&elections)));
        }
        elections
    }

    /// Whether this member can vouch for the leader it knows (see the module docs).
    pub fn in_contact(&self) -> bool {
        self.in_contact.load(Ordering::Acquire)
    }

    pub fn leader_heard(&self) {
        self.contact.lock().heard();
        self.in_contact.store(true, Ordering::Release);
    }

    pub fn snapshot_chunk_arrived(&self) {
        let mut contact = self.contact.lock();
        contact.heard();
        contact.snapshot_until = Some(Instant::now() + SNAPSHOT_QUIET);
        self.in_contact.store(true, Ordering::Release);
    }

    /// Keeps this member out of elections (bounded, in case the transfer never finishes).
    pub fn hold(&self, hold: bool) {
        self.contact.lock().held_until = hold.then(|| Instant::now() + HOLD_LIMIT);
    }

    /// The PreVote answer: yes when this member has not heard from a leader for an election
    /// timeout and the candidate's log is at least as new.
    pub fn grant_pre_vote(&self, candidate_last: Option<LogId>) -> bool {
        if self.raft.metrics().borrow_watched().state.is_leader()
            || self.contact.lock().silent_ticks < self.election_ticks
        {
            return false;
        }
        candidate_last >= self.log.last_log_id()
    }

    /// A beacon from `leader` in `term`: heard when this member follows that leader (its vote
    /// is for that leader in that term, which leads if it sends beacons); says whether it does.
    /// The vote is the stored one: it is saved before a vote for another candidate is granted,
    /// and the metrics show that only later, while a leader takes this answer as proof that no
    /// other leader had been elected ([`quorum_follows`]).
    pub fn answer_beacon(&self, term: u64, leader: NodeId) -> bool {
        let Ok(Some(vote)) = self.log.saved_vote() else {
            return false;
        };
        let following =
            vote.leader_id.term == term && vote.leader_id.node_id == leader && leader != self.me;
        if following {
            self.leader_heard();
        }
        following
    }

    fn standing(&self) -> Standing {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if m.running_state.is_err() {
            return Standing::Stopped;
        }
        let membership = m.membership_config.membership();
        if m.state.is_leader() {
            return Standing::Leader(membership.clone());
        }
        let voter = membership.voter_ids().any(|v| v == self.me);
        let following = matches!(
            m.state,
            openraft::ServerState::Follower | openraft::ServerState::Candidate
        );
        if voter && following {
            Standing::Voter {
                alone: membership.voter_ids().all(|v| v == self.me),
            }
        } else {
            Standing::Learner
        }
    }

    /// Every heartbeat interval: decides whether this member is in contact, heartbeats while
    /// leading, and campaigns once the leader has been silent past an election timeout and a
    /// random spread (so followers do not split the vote); a sole voter campaigns at once. The
    /// others grant its PreVote after an election timeout of silence: the tick past it covers
    /// a follower that heard the leader up to a tick later.
    async fn tick(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.heartbeat);
        // Ticks missed while the process was paused are not silence heard.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let spread_ticks = || random_below(self.election_ticks / 4 + 1);
        let mut spread = spread_ticks();
        loop {
            tick.tick().await;
            let alone = match self.standing() {
                Standing::Stopped => return,
                Standing::Leader(membership) => {
                    self.lead(&membership).await;
                    continue;
                }
                Standing::Learner => {
                    self.count_silence();
                    continue;
                }
                Standing::Voter { alone } => alone,
            };
            self.count_silence();
            let due = {
                let mut contact = self.contact.lock();
                contact.backoff_ticks = contact.backoff_ticks.saturating_sub(1);
                !contact.quiet(Instant::now())
                    && contact.backoff_ticks == 0
                    && (alone || contact.silent_ticks > self.election_ticks + spread)
            };
            if !due {
                continue;
            }
            spread = spread_ticks();
            let before = self.campaign_context();
            // A PreVote answer is only good while nothing changed: a leader may have won (and
            // been heard from) or this member may have voted meanwhile.
            let elected = alone || (self.pre_vote_won().await && self.campaign_context() == before);
            let backoff = if elected {
                self.campaign().await;
                // A lost election is retried once it has had time to finish.
                self.election_ticks + spread_ticks()
            } else {
                1 + spread_ticks()
            };
            self.contact.lock().backoff_ticks = backoff;
        }
    }

    /// etcd's initial election tick advance: a member restarted into a cluster waits (for up to
    /// [`ADVANCE_WAIT`]) until more than one peer answers, then counts all but two ticks of an
    /// election timeout as silence already heard, unless a leader spoke meanwhile. A cluster
    /// restarted whole then elects in a few heartbeats instead of a whole election timeout (one
    /// second of its restart to serving, by default). A member whose leader lives hears it
    /// within a heartbeat and counts from zero again; PreVote keeps an early campaign from
    /// deposing anyone. Like etcd, a member with fewer than two peers reachable never advances.
    async fn advance_after_restart(elections: Weak<Elections>) {
        let deadline = Instant::now() + ADVANCE_WAIT;
        let mut heard_before = None;
        loop {
            // Only a weak hold between rounds: a member stopped meanwhile closes its engine
            // without waiting for this.
            let (peers, others, within) = {
                let Some(this) = elections.upgrade() else {
                    return;
                };
                if matches!(this.standing(), Standing::Stopped) {
                    return;
                }
                heard_before.get_or_insert(this.contact.lock().heard);
                let members = membership::list(&this.raft);
                let others: Vec<_> = members
                    .iter()
                    .filter(|m| m.id != this.me)
                    .cloned()
                    .collect();
                // With fewer than two others no round can find more than one peer.
                if !members.is_empty() && others.len() < 2 {
                    return;
                }
                (this.peers.clone(), others, this.answer_timeout)
            };
            let probes = others
                .iter()
                .map(|m| peers.answers(m.id, &m.member.peer_urls, within));
            let active = futures_util::future::join_all(probes).await;
            if active.into_iter().filter(|answered| *answered).count() > 1 {
                break;
            }
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(ADVANCE_RETRY).await;
        }
        let Some(this) = elections.upgrade() else {
            return;
        };
        let mut contact = this.contact.lock();
        if Some(contact.heard) == heard_before {
            let advanced = this.election_ticks.saturating_sub(2);
            contact.silent_ticks = contact.silent_ticks.max(advanced);
            tracing::info!(
                ticks = advanced,
                "advanced the election ticks after a restart"
            );
        }
    }

    /// A tick while following: one more tick of silence, unless a leader spoke meanwhile.
    fn count_silence(&self) {
        let mut contact = self.contact.lock();
        contact.leading_since = None;
        contact.silent_ticks = contact.silent_ticks.saturating_add(1);
        self.in_contact.store(
            contact.silent_ticks < self.election_ticks,
            Ordering::Release,
        );
    }

    /// Campaigns as openraft's leader-transfer election from this member's own vote: voters
    /// grant it although openraft's lease on the old leader has not run out (see the module
    /// docs). Falls back to a plain election when openraft does not take it at once.
    async fn campaign(&self) {
        // The vote as stored, which is what openraft checks the request against (its metrics
        // may still show an older one, right after a start or a vote). No last log id: openraft
        // would wait for the log to be flushed up to it, and after a start it reports no
        // flushed log until the first write; the voters judge the candidate's log anyway.
        let vote = self.log.saved_vote().ok().flatten();
        let transferred = match vote {
            Some(vote) => {
                let before = self.raft.metrics().borrow_watched().vote;
                let request = TransferLeaderRequest::new(vote, self.me, None);
                let asked = self.raft.handle_transfer_leader(request);
                matches!(
                    tokio::time::timeout(self.heartbeat, asked).await,
                    Ok(Ok(Ok(())))
                ) && self.vote_moves_from(before).await
            }
            None => false,
        };
        if !transferred {
            let _ = self.raft.trigger().elect(false).await;
        }
    }

    /// Whether this member's vote changes from `before` within a tick: openraft's core drops a
    /// leader-transfer request whose vote is not the one it holds (after a start it may hold it
    /// uncommitted), without saying so.
    async fn vote_moves_from(&self, before: Vote) -> bool {
        let mut metrics = self.raft.metrics();
        let moved = async {
            while metrics.borrow_watched().vote == before {
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(self.heartbeat, moved)
            .await
            .unwrap_or(false)
    }

    /// A tick while leading: checks the quorum's replies, sends the next heartbeat and a beacon
    /// to every other member.
    async fn lead(&self, membership: &Membership) {
        let now = Instant::now();
        {
            let mut contact = self.contact.lock();
            contact.heard();
            let since = *contact.leading_since.get_or_insert(now);
            self.in_contact
                .store(self.quorum_heard(membership, since, now), Ordering::Release);
        }
        // openraft skips it while leadership is being handed over.
        let _ = self.raft.trigger().heartbeat().await;
        let term = self.raft.metrics().borrow_watched().vote.leader_id.term;
        for (id, member) in membership.nodes().filter(|(id, _)| **id != self.me) {
            let Ok(mut client) = self.peers.client(*id, &member.peer_urls) else {
                continue;
            };
            let (id, peers, timeout) = (*id, self.peers.clone(), self.answer_timeout);
            let request = LeaderBeaconRequest {
                term,
                leader: self.me,
            };
            // Each beacon waits for its own answer; a member that answers a later one first
            // has still heard this leader.
            tokio::spawn(async move {
                let sent = Instant::now();
                let reply = tokio::time::timeout(timeout, client.leader_beacon(request)).await;
                if matches!(reply, Ok(Ok(r)) if r.get_ref().following) {
                    peers.followed_since(id, sent);
                }
            });
        }
    }

    /// Whether every configuration of `membership` has a majority that replied to this leader
    /// within an election timeout (the leader counting itself).
    fn quorum_heard(&self, membership: &Membership, leading_since: Instant, now: Instant) -> bool {
        let recent = |id: &NodeId| {
            *id == self.me || {
                let heard = self
                    .peers
                    .last_reply(*id)
                    .map_or(leading_since, |t| t.max(leading_since));
                now.saturating_duration_since(heard) < self.election_timeout
            }
        };
        joint_majority(membership, recent)
    }

    /// How often a leader has been heard from, and this member's vote.
    fn campaign_context(&self) -> (u64, Vote) {
        let heard = self.contact.lock().heard;
        (heard, self.raft.metrics().borrow_watched().vote)
    }

    /// Asks every other voter; won when each of the (joint) configurations has a majority.
    async fn pre_vote_won(&self) -> bool {
        let last = self.log.last_log_id();
        let request = PreVoteRequest {
            last_log_id: super::legacy::encode_position(last.as_ref()),
            last_log_position: super::record::encode_position(last.as_ref()),
        };
        let membership = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let timeout = self.answer_timeout;
        // Decided as soon as a quorum grants: waiting for a member that does not answer would
        // let the answers go stale.
        quorum_agrees(
            membership.membership(),
            self.me,
            &self.peers,
            |_| false,
            |mut client| {
                let request = request.clone();
                async move {
                    let reply = tokio::time::timeout(timeout, client.pre_vote(request)).await;
                    matches!(reply, Ok(Ok(r)) if r.get_ref().granted)
                }
            },
        )
        .await
    }
}

/// Whether this member leads with a quorum that still follows it, as seen after this call
/// began: a beacon goes to every other voter now, and each answer is to its own request, so
/// each (joint) configuration's majority answering "following" proves that no other leader had
/// been elected when they answered. A read index needs this after it is taken. openraft's own
/// confirmation is not enough alone: it credits an append reply with the sending time of the
/// latest request its entries cover, so when a partition heals, a follower's reply to an append
/// it took before the partition (before it voted for a new leader) confirmed a request the old
/// leader sent during it, and the old leader served a read at its stale commit index (Jepsen's
/// append workload, isolate-leader). Members of the previous release have no beacon and are
/// taken on openraft's word.
pub(super) async fn quorum_follows(raft: &Raft, me: NodeId, peers: &Peers, wait: Duration) -> bool {
    let (term, membership) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        if !m.state.is_leader() || m.vote.leader_id.node_id != me {
            return false;
        }
        (
            m.vote.leader_id.term,
            m.membership_config.membership().clone(),
        )
    };
    let confirmed = quorum_agrees(
        &membership,
        me,
        peers,
        |id| peers.is_legacy(id),
        |mut client| async move {
            let reply = client
                .leader_beacon(LeaderBeaconRequest { term, leader: me })
                .await;
            matches!(reply, Ok(r) if r.get_ref().following)
        },
    );
    tokio::time::timeout(wait, confirmed).await.unwrap_or(false)
}

/// Asks every other voter of `membership` with `ask`, all at once; true as soon as each (joint)
/// configuration has a majority that said yes, `me` and the members `assumed` says yes for
/// (without asking) counting as yes; false once every answer is in without one.
async fn quorum_agrees<Ask, Answer>(
    membership: &Membership,
    me: NodeId,
    peers: &Peers,
    assumed: impl Fn(NodeId) -> bool,
    ask: Ask,
) -> bool
where
    Ask: Fn(Client) -> Answer,
    Answer: std::future::Future<Output = bool>,
{
    let mut yes = BTreeSet::from([me]);
    let mut answers = futures_util::stream::FuturesUnordered::new();
    for id in membership.voter_ids().filter(|id| *id != me) {
        if assumed(id) {
            yes.insert(id);
            continue;
        }
        let client = membership
            .get_node(&id)
            .and_then(|member| peers.client(id, &member.peer_urls).ok());
        if let Some(client) = client {
            let answer = ask(client);
            answers.push(async move { (id, answer.await) });
        }
    }
    while !joint_majority(membership, |id| yes.contains(id)) {
        match answers.next().await {
            Some((id, true)) => {
                yes.insert(id);
            }
            Some((_, false)) => {}
            None => return false,
        }
    }
    true
}

/// Whether every (joint) configuration of `membership` has a majority of members for which
/// `counts` holds.
fn joint_majority(membership: &Membership, counts: impl Fn(&NodeId) -> bool) -> bool {
    membership.get_joint_config().iter().all(|config| {
        let counted = config.iter().filter(|id| counts(id)).count();
        counted * 2 > config.len()
    })
}

/// A random number in `0..bound`.
fn random_below(bound: u32) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random % u64::from(bound.max(1))) as u32
}
