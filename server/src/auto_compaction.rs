//! etcd's automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), with
//! etcd 3.6/3.7's semantics (v3compactor). Only the leader compacts; a compaction is an ordinary
//! Compact request through Raft (not physical).
//!
//! - **periodic**, retention P: the current revision is sampled every min(P, 1 h)/10, keeping the
//!   samples of the last P; once P has passed since the start (and then every min(P, 1 h)) the
//!   store is compacted to the oldest sample, the revision of about P ago.
//! - **revision**, retention N: every 5 minutes the store is compacted to current - N.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use oxcd_proto::etcdserverpb::CompactionRequest;
use tokio::time::Instant;

use crate::apply::{Command, Op};
use crate::error::EtcdError;
use crate::mvcc::MvccStore;
use crate::replication::Replication;

const HOUR: Duration = Duration::from_secs(3600);
/// etcd's revision compactor interval.
const REVISION_INTERVAL: Duration = Duration::from_secs(300);

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Periodic(Duration),
    Revisions(i64),
}

/// Parses the two flags as etcd's `parseCompactionRetention` does; `None` when auto compaction
/// is off (retention 0).
pub fn parse(mode: &str, retention: &str) -> Result<Option<Retention>, String> {
    let periodic = match mode {
        "periodic" => true,
        "revision" => false,
        "" => return Err("undefined auto-compaction-mode".into()),
        other => return Err(format!("unknown auto-compaction-mode {other:?}")),
    };
    let as_count = retention.parse::<i64>().ok().filter(|n| *n >= 0);
    let parsed = match (as_count, periodic) {
        (Some(0), _) => return Ok(None),
        (Some(hours), true) => Retention::Periodic(HOUR * hours as u32),
        (Some(n), false) => Retention::Revisions(n),
        (None, _) => {
            let d = crate::config::go_duration(retention)
                .map_err(|e| format!("error parsing CompactionRetention: {e}"))?;
            if d.is_zero() {
                return Ok(None);
            }
            if periodic {
                Retention::Periodic(d)
            } else {
                // etcd takes the duration's nanoseconds as the revision count.
                Retention::Revisions(d.as_nanos().min(i64::MAX as u128) as i64)
            }
        }
    };
    Ok(Some(parsed))
}

/// The periodic compactor's decisions, apart from time and Raft so they can be tested.
struct Periodic {
    period: Duration,
    /// Revisions sampled at each tick, oldest first, covering the last `period`.
    samples: VecDeque<i64>,
    keep: usize,
    last_compacted: Option<i64>,
    last_success: Instant,
    /// Until the first compaction, a whole period; then min(period, 1 h).
    wait: Duration,
}

impl Periodic {
    fn new(period: Duration, now: Instant) -> Periodic {
        let tick = Self::tick_of(period);
        Periodic {
            period,
            samples: VecDeque::new(),
            keep: (period.as_nanos() / tick.as_nanos()) as usize + 1,
            last_compacted: None,
            last_success: now,
            wait: period,
        }
    }

    fn tick_of(period: Duration) -> Duration {
        period.min(HOUR) / 10
    }

    fn sample(&mut self, revision: i64) {
        self.samples.push_back(revision);
        if self.samples.len() > self.keep {
            self.samples.pop_front();
        }
    }

    /// The revision to compact to now, if it is time.
    fn due(&mut self, now: Instant) -> Option<i64> {
        let rev = *self.samples.front()?;
        if now.duration_since(self.last_success) < self.wait || Some(rev) == self.last_compacted {
            return None;
        }
        self.wait = self.period.min(HOUR);
        Some(rev)
    }

    fn compacted(&mut self, rev: i64, now: Instant) {
        self.last_compacted = Some(rev);
        self.last_success = now;
    }
}

/// Runs the compactor for as long as the member lives; it acts only while this member leads.
pub fn start(retention: Retention, store: Arc<MvccStore>, consensus: Arc<dyn Replication>) {
    tokio::spawn(async move {
        match retention {
            Retention::Periodic(period) => run_periodic(period, &store, consensus.as_ref()).await,
            Retention::Revisions(n) => run_revision(n, &store, consensus.as_ref()).await,
        }
    });
}

async fn run_periodic(period: Duration, store: &MvccStore, consensus: &dyn Replication) {
    let mut plan = Periodic::new(period, Instant::now());
    let mut ticks = tokio::time::interval(Periodic::tick_of(period));
    ticks.tick().await;
    loop {
        plan.sample(store.current_revision());
        ticks.tick().await;
        if !consensus.is_leader() {
            continue;
        }
        let now = Instant::now();
        if let Some(rev) = plan.due(now) {
            if compact(consensus, rev).await {
                plan.compacted(rev, now);
            }
        }
    }
}

async fn run_revision(retention: i64, store: &MvccStore, consensus: &dyn Replication) {
    let mut last = None;
    let mut ticks = tokio::time::interval(REVISION_INTERVAL);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if !consensus.is_leader() {
            continue;
        }
        let rev = store.current_revision() - retention;
        if rev <= 0 || Some(rev) == last {
            continue;
        }
        if compact(consensus, rev).await {
            last = Some(rev);
        }
    }
}

/// Proposes a compaction; true when it is done (or was already).
async fn compact(consensus: &dyn Replication, revision: i64) -> bool {
    let command = Command::new(Op::Compaction(CompactionRequest {
        revision,
        physical: false,
    }));
    match consensus.propose(command).await {
        Ok(_) | Err(EtcdError::Compacted) => {
            tracing::info!(revision, "auto compaction");
            true
        }
        Err(e) => {
            tracing::warn!(revision, error = %e, "auto compaction failed; retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_parsed_as_etcd_parses_it() {
        let hour = Duration::from_secs(3600);
        assert_eq!(parse("periodic", "1"), Ok(Some(Retention::Periodic(hour))));
        assert_eq!(
            parse("periodic", "1h30m"),
            Ok(Some(Retention::Periodic(hour * 3 / 2)))
        );
        assert_eq!(
            parse("revision", "1000"),
            Ok(Some(Retention::Revisions(1000)))
        );
        assert_eq!(
            parse("revision", "10m"),
            Ok(Some(Retention::Revisions(600_000_000_000)))
        );
        assert_eq!(parse("periodic", "0"), Ok(None));
        assert_eq!(
            parse("periodic", "-1"),
            Err("error parsing CompactionRetention: time: missing unit in duration \"-1\"".into())
        );
        assert_eq!(
            parse("foo", "1"),
            Err("unknown auto-compaction-mode \"foo\"".into())
        );
    }

    #[test]
    fn periodic_compacts_to_the_revision_of_one_period_ago() {
        let period = Duration::from_secs(10);
        let start = Instant::now();
        let mut plan = Periodic::new(period, start);
        let tick = Periodic::tick_of(period);
        assert_eq!(tick, Duration::from_secs(1));
        let mut now = start;
        let mut compactions = Vec::new();
        for rev in 1..=40 {
            plan.sample(rev * 100);
            now += tick;
            if let Some(r) = plan.due(now) {
                plan.compacted(r, now);
                compactions.push((now.duration_since(start).as_secs(), r));
            }
        }
        // First after a whole period, at the sample of a period before; then every period.
        assert_eq!(compactions, [(10, 100), (20, 1000), (30, 2000), (40, 3000)]);
    }
}
