//! The nemesis: faults injected into a [`Cluster`] on a schedule, and their log.
//!
//! The schedule alternates quiet periods with fault periods. Each fault period starts one fault
//! (kinds taken in a shuffled round-robin, so a short run still sees every kind), holds it, then
//! undoes it: killed members are restarted, paused ones resumed, partitions healed. Targets vary
//! between a random member, the current leader and larger groups, since the leader and quorum
//! losses are where consensus bugs hide.
//!
//! Every start and stop is written to a JSON Lines log as it happens (so a cancelled run keeps
//! it), with times on the history's clock so plots can shade the fault periods:
//!
//! ```text
//! {"time":5012345678,"type":"start","fault":"kill","members":["n2"],"detail":"leader","leader":"n2"}
//! {"time":10023456789,"type":"stop","fault":"kill","members":["n2"]}
//! ```
//!
//! Members that exit without being killed (a crash, a refusal to restart) are logged as `exit`
//! events; they are restarted when the current fault ends.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::proxy::{Fault, Partition, Scope};

/// How often a waiting nemesis looks for members that exited by themselves.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL members, restart them when the fault ends.
    Kill,
    /// SIGSTOP members, SIGCONT them when the fault ends.
    Pause,
    /// Cut the network between groups of members, heal it when the fault ends.
    Partition,
    /// Slow the peer links of one member or of all (every chunk late by 50-250 ms).
    Delay,
    /// Stall chunks on the peer links of one member or of all at random, as lost and
    /// retransmitted packets would.
    Loss,
    /// Remove a member from the cluster (MemberRemove; its data is wiped) and add it back empty
    /// when the fault ends (MemberAdd, then it joins the existing cluster).
    Member,
    /// Cut the leader off from every other member, while the clients bound to it keep reaching
    /// it (and only it), for at least [`ISOLATE_LEADER_HOLD`]: long enough for the majority to
    /// elect a new leader and expire the leases the old one can no longer vouch for, so a
    /// server that goes on renewing them is caught.
    #[serde(rename = "isolate-leader")]
    IsolateLeader,
    /// SIGKILL members, cut the power of their disks (every write and directory entry not
    /// fsynced is lost; the members' data dirs are on PowerFs), restart them when the fault
    /// ends.
    Power,
}

/// The least hold of an [`FaultKind::IsolateLeader`] fault, whatever the schedule says: an
/// election (1-2 s with the harness's 1 s election timeout), a 2 s lease's full TTL that the new
/// leader gives it again, the revoke's commit, and time for clients on the majority side to see
/// the result while the isolated side still runs.
pub const ISOLATE_LEADER_HOLD: Duration = Duration::from_secs(8);

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Delay => "delay",
            FaultKind::Loss => "loss",
            FaultKind::Member => "member",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::Power => "power",
        })
    }
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "delay" => Ok(FaultKind::Delay),
            "loss" => Ok(FaultKind::Loss),
            "member" => Ok(FaultKind::Member),
            "isolate-leader" => Ok(FaultKind::IsolateLeader),
            "power" => Ok(FaultKind::Power),
            _ => bail!(
                "unknown fault {s:?} (kill, pause, partition, isolate-leader, delay, loss, member \
                 or power)"
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Start,
    Stop,
    /// A member exited without the nemesis killing it.
    Exit,
}

/// One line of the nemesis log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// Nanoseconds since the start of the run, like the history's times.
    pub time: u64,
    #[serde(rename = "type")]
    pub phase: Phase,
    /// Absent for `exit` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultKind>,
    pub members: Vec<String>,
    /// How the targets were chosen, the partition's shape, or how a member exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For partitions: the pairs of members that cannot talk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut: Vec<(String, String)>,
    /// For `start` events: the member every answering member named leader just before the
    /// fault, if they agreed; it tells a follower's fault from the leader's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// Writes nemesis events to a file as they happen and keeps them for the run's summary.
pub struct NemesisLog {
    start: Instant,
    file: BufWriter<File>,
    events: Vec<NemesisEvent>,
}

impl NemesisLog {
    /// `start` is the instant the history's clock started, so that both logs share a timeline.
    pub fn create(path: &Path, start: Instant) -> Result<NemesisLog> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(NemesisLog {
            start,
            file: BufWriter::new(file),
            events: Vec::new(),
        })
    }

    pub fn events(&self) -> &[NemesisEvent] {
        &self.events
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&mut self, event: NemesisEvent) -> Result<()> {
        serde_json::to_writer(&mut self.file, &event)?;
        self.file.write_all(b"\n")?;
        // Flushed per event: a run cancelled half-way still shows what it did.
        self.file.flush()?;
        self.events.push(event);
        Ok(())
    }
}

/// When faults happen.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The kinds of fault to inject; none makes the whole run quiet.
    pub faults: Vec<FaultKind>,
    /// Length of each quiet period; one comes first, so the cluster is seen working before any
    /// fault.
    pub quiet: Duration,
    /// How long each fault is held before it is undone; isolate-leader faults are held for at
    /// least [`ISOLATE_LEADER_HOLD`].
    pub hold: Duration,
}

impl Schedule {
    /// How long a fault of `kind` is held.
    pub fn hold(&self, kind: FaultKind) -> Duration {
        match kind {
            FaultKind::IsolateLeader => self.hold.max(ISOLATE_LEADER_HOLD),
            _ => self.hold,
        }
    }
}

/// A fault in force, with what undoing it needs.
struct Active {
    kind: FaultKind,
    members: Vec<usize>,
}

/// Runs the schedule until `until`, then undoes the fault in force, if any. Faults are cut short
/// at `until`, so the run ends on time.
pub async fn run(
    cluster: &mut Cluster,
    schedule: &Schedule,
    until: Instant,
    log: &mut NemesisLog,
) -> Result<()> {
    let mut queue: Vec<FaultKind> = Vec::new();
    loop {
        watch(cluster, log, until, schedule.quiet).await?;
        if Instant::now() >= until || schedule.faults.is_empty() {
            return watch(cluster, log, until, Duration::MAX).await;
        }
        if queue.is_empty() {
            queue = schedule.faults.clone();
            queue.shuffle(&mut rand::thread_rng());
        }
        let kind = queue.pop().expect("refilled above");
        let active = start(cluster, kind, log).await?;
        watch(cluster, log, until, schedule.hold(kind)).await?;
        stop(cluster, active, log).await?;
    }
}

/// Waits `period` (or until `until`), logging members that exit meanwhile.
async fn watch(
    cluster: &mut Cluster,
    log: &mut NemesisLog,
    until: Instant,
    period: Duration,
) -> Result<()> {
    let end = Instant::now()
        .checked_add(period)
        .map_or(until, |end| end.min(until));
    loop {
        for exit in cluster.exits() {
            log.record(NemesisEvent {
                time: log.now(),
                phase: Phase::Exit,
                fault: None,
                members: vec![cluster.name(exit.member).to_owned()],
                detail: Some(exit.status.to_string()),
                cut: Vec::new(),
                leader: None,
            })?;
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        tokio::time::sleep(WATCH_INTERVAL.min(end - now)).await;
    }
}

/// Which members a kill or pause hits, and how they were chosen.
fn targets(
    cluster: &Cluster,
    kind: FaultKind,
    leader: Option<usize>,
) -> (Vec<usize>, &'static str) {
    let n = cluster.members();
    let mut all: Vec<usize> = (0..n).collect();
    all.shuffle(&mut rand::thread_rng());
    // Pausing everyone only stops the clock; killing everyone tests what survives on disk.
    let choices: &[&str] = match kind {
        FaultKind::Kill | FaultKind::Power => &["one", "leader", "majority", "all"],
        // Membership changes one member at a time, as etcd requires.
        FaultKind::Member => &["one", "leader"],
        _ => &["one", "leader", "majority"],
    };
    let choice = choices[rand::thread_rng().gen_range(0..choices.len())];
    match choice {
        "leader" => match leader {
            Some(leader) => (vec![leader], "leader"),
            None => (vec![all[0]], "one (no leader found)"),
        },
        "majority" => (all[..n / 2 + 1].to_vec(), "majority"),
        "all" => (all, "all"),
        _ => (vec![all[0]], "one"),
    }
}

async fn start(cluster: &mut Cluster, kind: FaultKind, log: &mut NemesisLog) -> Result<Active> {
    let leader = cluster.leader().await;
    let (members, detail, cut) = match kind {
        FaultKind::Kill => {
            let (members, detail) = targets(cluster, kind, leader);
            for &m in &members {
                cluster.kill(m);
            }
            (members, detail.to_owned(), Vec::new())
        }
        FaultKind::Pause => {
            let (members, detail) = targets(cluster, kind, leader);
            let members: Vec<usize> = members
                .into_iter()
                .filter(|&m| cluster.is_running(m))
                .collect();
            for &m in &members {
                cluster.pause(m)?;
            }
            (members, detail.to_owned(), Vec::new())
        }
        FaultKind::Power => {
            let (members, detail) = targets(cluster, kind, leader);
            let mut cuts = Vec::new();
            for &m in &members {
                cluster.kill(m);
                let cut = cluster.cut_power(m)?;
                cuts.push(format!("{}: {cut}", cluster.name(m)));
            }
            (
                members,
                format!("{detail}; {}", cuts.join("; ")),
                Vec::new(),
            )
        }
        FaultKind::IsolateLeader => {
            let (isolated, detail) = match leader {
                Some(leader) => (leader, "leader"),
                None => (
                    rand::thread_rng().gen_range(0..cluster.members()),
                    "one (no leader found)",
                ),
            };
            // Clients are bound to one member each, so cutting the peer links alone keeps the
            // isolated member's clients with it and everyone else's with the majority.
            let partition = Partition::isolate(cluster.members(), isolated);
            cluster.network().partition(&partition);
            (
                vec![isolated],
                detail.to_owned(),
                cut_names(cluster, &partition),
            )
        }
        FaultKind::Partition => {
            let (partition, isolated, detail) = partition_shape(cluster, leader);
            cluster.network().partition(&partition);
            (isolated, detail, cut_names(cluster, &partition))
        }
        FaultKind::Delay | FaultKind::Loss => {
            let mut rng = rand::thread_rng();
            let fault = if kind == FaultKind::Delay {
                Fault::Delay {
                    base: Duration::from_millis(rng.gen_range(50..=250)),
                    jitter: Duration::from_millis(50),
                }
            } else {
                Fault::Lossy {
                    probability: rng.gen_range(0.05..0.3),
                    pause: Duration::from_millis(rng.gen_range(100..=800)),
                }
            };
            let (scope, members) = if rng.gen_bool(0.5) {
                (Scope::All, (0..cluster.members()).collect())
            } else {
                let one = rng.gen_range(0..cluster.members());
                (Scope::Member(one), vec![one])
            };
            cluster.network().set_peer_fault(scope, fault);
            (members, format!("{fault:?}"), Vec::new())
        }
        FaultKind::Member => {
            let (members, detail) = targets(cluster, kind, leader);
            let target = members[0];
            match cluster.remove(target).await {
                Ok(()) => (vec![target], format!("remove {detail}"), Vec::new()),
                // A cluster without quorum refuses the change; the attempt is the fault.
                Err(e) => (Vec::new(), format!("remove refused: {e:#}"), Vec::new()),
            }
        }
    };
    log.record(NemesisEvent {
        time: log.now(),
        phase: Phase::Start,
        fault: Some(kind),
        members: members
            .iter()
            .map(|&m| cluster.name(m).to_owned())
            .collect(),
        detail: Some(detail),
        cut,
        leader: leader.map(|l| cluster.name(l).to_owned()),
    })?;
    Ok(Active { kind, members })
}

/// The pairs of members `partition` cuts, by name.
fn cut_names(cluster: &Cluster, partition: &Partition) -> Vec<(String, String)> {
    partition
        .cut_pairs()
        .into_iter()
        .map(|(a, b)| (cluster.name(a).to_owned(), cluster.name(b).to_owned()))
        .collect()
}

/// A partition, the members on its smaller side (or the isolated one), and its shape's name.
fn partition_shape(cluster: &Cluster, leader: Option<usize>) -> (Partition, Vec<usize>, String) {
    let n = cluster.members();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::thread_rng());
    // Bridges and rings need at least four members to differ from halves.
    let shapes: &[&str] = if n >= 4 {
        &["halves", "isolate-leader", "bridge", "ring"]
    } else {
        &["halves", "isolate-leader"]
    };
    let shape = shapes[rand::thread_rng().gen_range(0..shapes.len())];
    match shape {
        "isolate-leader" => {
            let (leader, detail) = match leader {
                Some(leader) => (leader, "isolate-leader"),
                None => (order[0], "isolate-one (no leader found)"),
            };
            (
                Partition::isolate(n, leader),
                vec![leader],
                detail.to_owned(),
            )
        }
        "bridge" => (
            Partition::bridge(n).permute(&order),
            vec![order[n / 2]],
            "bridge".to_owned(),
        ),
        "ring" => (
            Partition::ring(n).permute(&order),
            Vec::new(),
            "ring".to_owned(),
        ),
        _ => (
            Partition::halves(n).permute(&order),
            order[..n / 2].to_vec(),
            "halves".to_owned(),
        ),
    }
}

/// Undoes a fault; members that exited by themselves meanwhile are restarted too.
async fn stop(cluster: &mut Cluster, active: Active, log: &mut NemesisLog) -> Result<()> {
    match active.kind {
        FaultKind::Kill | FaultKind::Power => {}
        FaultKind::Pause => {
            for &m in &active.members {
                if cluster.is_paused(m) {
                    cluster.resume(m)?;
                }
            }
        }
        FaultKind::Partition | FaultKind::IsolateLeader => cluster.network().heal(),
        FaultKind::Delay | FaultKind::Loss => {
            cluster.network().set_peer_fault(Scope::All, Fault::Pass)
        }
        FaultKind::Member => {
            for &m in &active.members {
                cluster.add_back(m).await?;
            }
        }
    }
    for m in 0..cluster.members() {
        if !cluster.is_running(m) && !cluster.is_removed(m) {
            cluster.restart(m)?;
        }
    }
    log.record(NemesisEvent {
        time: log.now(),
        phase: Phase::Stop,
        fault: Some(active.kind),
        members: active
            .members
            .iter()
            .map(|&m| cluster.name(m).to_owned())
            .collect(),
        detail: None,
        cut: Vec::new(),
        leader: None,
    })
}
