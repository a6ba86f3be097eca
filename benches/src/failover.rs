//! Leader failover: a writer puts through the followers of a running cluster at a steady pace
//! while the leader is SIGKILLed, and the gap in acknowledged puts is measured; the killed
//! member is then restarted and must rejoin before the next round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::KvClient;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::connection::Endpoints;
use crate::load::connect;
use crate::server::{root_cause, Cluster};
use crate::stats::{format_ms, micros};

/// The failover writer's pace: the resolution of the failover times.
const WRITE_INTERVAL: Duration = Duration::from_millis(5);
/// Steady writing before the leader is killed, which shows the writer works at all.
const BEFORE_KILL: Duration = Duration::from_secs(1);
/// Writing goes on this long after the first put that succeeded after the kill, so a cluster
/// that recovers only briefly shows a longer gap.
const AFTER_RECOVERY: Duration = Duration::from_secs(1);
/// After the writer stops, the puts still waiting get this long to be answered: longer than
/// etcd's request timeout (5 s + 2 election timeouts), after which it fails a proposal it lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd elects a new leader within about two election timeouts; a cluster that needs this long
/// is broken, and the run fails.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// The failover writer cycles over this many keys.
const FAILOVER_KEYS: u64 = 100;

/// One leader kill, as the writer saw it.
pub struct Failover {
    /// From the kill to the first acknowledgement of a put sent after it.
    pub recovery: Duration,
    /// The longest stretch without any put acknowledged while the writer ran (it spans the
    /// kill).
    pub longest_gap: Duration,
    /// Puts answered with an error, while the writer ran or during the drain.
    pub failed: u64,
    /// Puts still unanswered after the drain.
    pub unfinished: u64,
    /// The longest any put waited for its answer, success or error.
    pub slowest_answer: Duration,
    pub first_error: Option<String>,
}

/// Kills the leader `rounds` times, restarting the killed member after each round, and returns
/// what the writer saw in each. `label` prefixes the progress lines.
pub async fn kill_leaders(
    label: &str,
    cluster: &mut Cluster,
    rounds: u64,
) -> Result<Vec<Failover>> {
    let mut failovers = Vec::new();
    let mut leader = cluster.wait_until_ready().await?;
    for round in 1..=rounds {
        let name = cluster.members()[leader].name().to_owned();
        eprintln!("{label}: failover round {round}: killing the leader, {name}");
        let failover = kill_leader(cluster, leader)
            .await
            .with_context(|| format!("{label}: failover round {round} failed"))?;
        eprintln!(
            "{label}:   first put acknowledged {} after the kill, longest gap {}, {} failed, \
             {} unanswered",
            format_ms(micros(failover.recovery)),
            format_ms(micros(failover.longest_gap)),
            failover.failed,
            failover.unfinished
        );
        failovers.push(failover);
        cluster.members_mut()[leader].restart()?;
        leader = cluster
            .wait_until_ready()
            .await
            .with_context(|| format!("{label}: {name} did not rejoin after its restart"))?;
    }
    Ok(failovers)
}

/// A put the failover writer sent: when, when it was answered, and whether it succeeded.
struct PutOutcome {
    sent: Instant,
    answered: Instant,
    result: Result<(), String>,
}

/// Writes through the followers, SIGKILLs the leader (member `leader`), and measures until the
/// writer has been served again for `AFTER_RECOVERY`.
async fn kill_leader(cluster: &mut Cluster, leader: usize) -> Result<Failover> {
    let survivors: Vec<String> = cluster
        .members()
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(_, member)| member.client_url().to_owned())
        .collect();
    let client = connect(&Endpoints::plain(survivors), 0).await?;
    let (outcomes_tx, mut outcomes_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let issued = Arc::new(AtomicU64::new(0));
    // In a JoinSet so that the writer, and with it every put it still waits for, is aborted
    // however this function returns.
    let mut writer = JoinSet::new();
    writer.spawn(write_paced(
        client.kv_client(),
        outcomes_tx,
        Arc::clone(&issued),
        stop_rx,
    ));

    tokio::time::sleep(BEFORE_KILL).await;
    let mut outcomes = Vec::new();
    while let Ok(outcome) = outcomes_rx.try_recv() {
        outcomes.push(outcome);
    }
    if !outcomes.iter().any(|outcome| outcome.result.is_ok()) {
        bail!("no put through the followers was acknowledged in {BEFORE_KILL:?} before the kill");
    }

    let killed_at = Instant::now();
    cluster.members_mut()[leader].kill().await?;
    let deadline = tokio::time::Instant::from_std(killed_at + FAILOVER_TIMEOUT);
    let recovered_at = loop {
        let outcome = tokio::time::timeout_at(deadline, outcomes_rx.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "no put sent after the leader was killed was acknowledged within \
                     {FAILOVER_TIMEOUT:?}"
                )
            })?
            .context("the failover writer stopped")?;
        let acked_after_kill = outcome.result.is_ok() && outcome.sent >= killed_at;
        let answered = outcome.answered;
        outcomes.push(outcome);
        if acked_after_kill {
            break answered;
        }
    };

    tokio::time::sleep(AFTER_RECOVERY).await;
    let stopped_at = Instant::now();
    // The writer returns once its puts are answered, or after DRAIN_TIMEOUT.
    let _ = stop_tx.send(());
    while writer.join_next().await.is_some() {}
    while let Ok(outcome) = outcomes_rx.try_recv() {
        outcomes.push(outcome);
    }
    // Late answers from the drain would make a gap after the writer stopped, not an outage.
    let mut acks: Vec<Instant> = outcomes
        .iter()
        .filter(|outcome| outcome.result.is_ok() && outcome.answered <= stopped_at)
        .map(|outcome| outcome.answered)
        .collect();
    acks.sort();
    let longest_gap = acks
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    let errors: Vec<&String> = outcomes
        .iter()
        .filter_map(|outcome| outcome.result.as_ref().err())
        .collect();
    Ok(Failover {
        recovery: recovered_at - killed_at,
        longest_gap,
        failed: errors.len() as u64,
        unfinished: issued.load(Ordering::Relaxed) - outcomes.len() as u64,
        slowest_answer: outcomes
            .iter()
            .map(|outcome| outcome.answered - outcome.sent)
            .max()
            .unwrap_or_default(),
        first_error: errors.first().map(|error| (*error).clone()),
    })
}

/// Sends one put every `WRITE_INTERVAL`, each without waiting for the previous ones: a put that
/// hangs on the dead leader must not hold back the ones that would show the new leader. Once
/// `stop` fires, it sends no more and waits up to `DRAIN_TIMEOUT` for the puts in flight; those
/// still unanswered then are aborted.
async fn write_paced(
    kv: KvClient,
    outcomes: mpsc::UnboundedSender<PutOutcome>,
    issued: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut puts = JoinSet::new();
    let mut ticks = tokio::time::interval(WRITE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for sequence in 0u64.. {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut stop => break,
        }
        let mut kv = kv.clone();
        let outcomes = outcomes.clone();
        issued.fetch_add(1, Ordering::Relaxed);
        puts.spawn(async move {
            let sent = Instant::now();
            let key = format!("oxcd-bench-failover/{}", sequence % FAILOVER_KEYS);
            let result = kv.put(key, sequence.to_string(), None).await;
            // The receiver is gone only once the round is over; nothing is left to report to.
            let _ = outcomes.send(PutOutcome {
                sent,
                answered: Instant::now(),
                result: result.map(drop).map_err(|error| root_cause(&error)),
            });
        });
        // Reap finished puts, so the set holds only those in flight.
        while puts.try_join_next().is_some() {}
    }
    let drained = async { while puts.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
}
