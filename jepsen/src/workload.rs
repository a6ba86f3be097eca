//! Workloads: what the clients of a test do, how their operations are recorded and how the
//! history is judged. The runner drives any [`Workload`] the same way: clients bound to members
//! issue operations until the time limit, the cluster recovers, the workload's final reads run,
//! and its checker gives the verdict.

pub mod append;
pub mod lease;
pub mod lock;
pub mod register;
pub mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use etcd_client::Client;
use rand::Rng;
use tokio::task::JoinHandle;

use crate::checker::{CheckOptions, Verdict};
use crate::cluster::{connect, Cluster};
use crate::history::{Operation, Outcome, Process};

/// What a checker concludes about a history.
#[derive(Clone, Debug)]
pub struct Judgement {
    pub verdict: Verdict,
    /// A readable account of every anomaly found (counterexamples), for `verdict.txt`.
    pub explanation: String,
    /// What was not valid (a key, a lease, a watcher…) with its verdict, for the summary.
    pub failed: BTreeMap<String, String>,
}

pub trait Workload: Send + Sync + 'static {
    /// Performs one randomly chosen operation as `process`, recording it; returns its outcome.
    fn step(&self, client: &mut Client, process: Process) -> impl Future<Output = Outcome> + Send;

    /// After the faults are undone: the reads the checker needs to see the final state, from
    /// every member, as processes `first_process` (member 0), `first_process + 1`, and so on.
    fn final_reads(
        &self,
        cluster: &Cluster,
        first_process: Process,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Tasks that observe the cluster beside the clients (watchers), one set per member
    /// endpoint; they run until `stop` turns true, which is after the final reads.
    fn observers(
        self: &Arc<Self>,
        _endpoints: &[String],
        _stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<JoinHandle<Result<()>>> {
        Vec::new()
    }

    /// Writes what the workload recorded besides the history (observations) into `dir`.
    fn save(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Judges the history (and whatever else the workload observed).
    fn check(&self, ops: &[Operation], options: &CheckOptions) -> Result<Judgement>;
}

/// One client of the run: issues operations against `endpoint` until `stop` turns true.
pub struct Worker<W> {
    pub workload: Arc<W>,
    /// Its first process id; later ones add `concurrency` each time, so ids never collide.
    pub index: u64,
    pub concurrency: u64,
    pub endpoint: String,
    /// The mean pause between operations; pauses are uniform in `[0, 2 * mean)` so that workers
    /// do not fall into lockstep.
    pub mean_interval: Duration,
    /// The bound on connecting.
    pub timeout: Duration,
}

impl<W: Workload> Worker<W> {
    /// Runs until `stop` is set; returns the last process id it used. An operation in flight
    /// when `stop` is set is finished (within the request timeout) so that it is recorded.
    ///
    /// As in Jepsen, a process whose operation ended `info` is retired, since that operation
    /// may still be in flight, and the worker carries on as a new process with a fresh
    /// connection.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<Process> {
        let mut process = self.index;
        let mut client = connect(&self.endpoint, self.timeout).await?;
        loop {
            let pause = self
                .mean_interval
                .mul_f64(2.0 * rand::thread_rng().gen::<f64>());
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return Ok(process);
            }
            if let Outcome::Info(_) = self.workload.step(&mut client, process).await {
                process += self.concurrency;
                client = connect(&self.endpoint, self.timeout).await?;
            }
        }
    }
}

/// A final read that fails is tried this often, this far apart, before it is given up.
pub const FINAL_READ_ATTEMPTS: usize = 10;
pub const FINAL_READ_RETRY: Duration = Duration::from_millis(500);

/// The outcome of a request that got no answer: `fail` when it changes nothing (a read) or
/// certainly never left the client, `info` otherwise (it may have been committed, now or
/// later).
pub fn unanswered(changes_state: bool, error: String) -> Outcome {
    // tonic says this when its connector failed, before any HTTP/2 connection (and so any
    // request) existed; through the proxies that is a reset while connecting to a member that
    // is down.
    let never_sent = error.contains("tcp connect error");
    if !changes_state || never_sent {
        Outcome::Fail(error)
    } else {
        Outcome::Info(error)
    }
}
