//! Multi-member clusters of real processes on loopback, for either flavour.
//!
//! Every member is an ordinary [`Server`] (own temp dir, ports, logs, SIGKILL on drop) whose
//! command line carries the cluster's `--initial-cluster`. A member cannot serve a linearizable
//! request until a quorum runs and has elected a leader, so [`Cluster::start`] spawns all members
//! first and only then waits for each. Membership changes go through Debian's `etcdctl`, which
//! the tests also use to check the operator-facing commands against both flavours.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, ConnectOptions, StatusResponse};

use crate::{free_port, probe_ready, require_binary, Flavor, MemberSpec, Readiness, Server};

/// The heartbeat interval every member runs with (etcd's default), in milliseconds.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// The election timeout every member runs with (etcd's default). Failover bounds are multiples.
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

/// Where Debian's etcdctl lives; `ETCDCTL_BIN` overrides it.
pub const DEFAULT_ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// Any single etcdctl run; its own dial (2 s) and command (5 s) timeouts normally end it first.
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a status query may take before the member counts as not answering.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// etcd refuses membership changes with this until every voter has been connected to the
/// leader for 5 s (its `--strict-reconfig-check`), so a fresh cluster must be retried.
const UNHEALTHY_CLUSTER: &str = "etcdserver: unhealthy cluster";

/// Makes every cluster token of this test process distinct.
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// The membership flags of one member of a multi-member cluster.
#[derive(Clone, Debug)]
pub struct ClusterFlags {
    /// `--initial-cluster`: `name=peer-url` for every member.
    pub initial_cluster: String,
    /// `--initial-cluster-state`: `new` when the members bootstrap together, `existing` for a
    /// member that joins after a MemberAdd.
    pub state: String,
    /// `--initial-cluster-token`: unique per cluster, so members of two test clusters that run
    /// at the same time can never mistake each other's peers for their own.
    pub token: String,
}

/// A running cluster. Members are indexed in start order: `n1` is index 0. Dropping it kills
/// every member; if the test is panicking their log tails are printed and their dirs kept.
pub struct Cluster {
    flavor: Flavor,
    token: String,
    extra_args: Vec<String>,
    members: Vec<Server>,
    /// `--user` for the harness's own etcdctl calls (membership changes) once auth is on.
    etcdctl_user: Option<String>,
}

/// What `etcdctl member add` printed, and where the harness started the new member.
#[derive(Debug)]
pub struct AddedMember {
    /// Index of the new member in [`Cluster::members`].
    pub index: usize,
    /// The member id from "Member <%16x id> added to cluster <%16x id>".
    pub id: u64,
    /// The `ETCD_*="..."` lines, unquoted: the environment the new member must start with.
    pub printed: BTreeMap<String, String>,
}

impl Cluster {
    /// Starts `n` members of `flavor` as a new cluster and waits until every one of them serves
    /// a linearizable Range. `extra_args` go to every member. Panics with the members' log
    /// tails if the cluster does not come up.
    pub async fn start(flavor: Flavor, n: usize, extra_args: &[&str]) -> Cluster {
        Self::start_prepared(flavor, n, extra_args, |_, _| Ok(())).await
    }

    /// [`Cluster::start`], with `prepare` called for every member (its spec, with its final
    /// ports, data dir and membership flags) before any is launched: to create its data dir
    /// beforehand, e.g. by restoring a backup. On a port clash it is called again for the new
    /// attempt's members.
    pub async fn start_prepared(
        flavor: Flavor,
        n: usize,
        extra_args: &[&str],
        mut prepare: impl FnMut(&MemberSpec, &ClusterFlags) -> Result<()>,
    ) -> Cluster {
        match Self::try_start(flavor, n, extra_args, &mut prepare).await {
            Ok(cluster) => cluster,
            Err(e) => panic!("failed to start a {n}-member {flavor} cluster: {e:#}"),
        }
    }

    async fn try_start(
        flavor: Flavor,
        n: usize,
        extra_args: &[&str],
        prepare: &mut impl FnMut(&MemberSpec, &ClusterFlags) -> Result<()>,
    ) -> Result<Cluster> {
        require_binary(flavor)?;
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let mut last_error = None;
        // A port probed free can be taken before a member binds it; that member then exits and
        // the whole cluster is started again on new ports with fresh data dirs.
        for _attempt in 0..3 {
            let token = format!(
                "oxcd-test-{}-{}",
                std::process::id(),
                CLUSTERS.fetch_add(1, Ordering::Relaxed)
            );
            let mut specs = Vec::new();
            let mut dirs = Vec::new();
            for i in 1..=n {
                let dir = member_dir(flavor, &format!("n{i}"))?;
                specs.push(MemberSpec {
                    flavor,
                    name: format!("n{i}"),
                    data_dir: dir.path().join("data"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    extra_args: member_args(&extra_args),
                    cluster: None,
                });
                dirs.push(dir);
            }
            let initial_cluster = specs
                .iter()
                .map(|s| format!("{}={}", s.name, s.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            let flags = ClusterFlags {
                initial_cluster,
                state: "new".into(),
                token: token.clone(),
            };
            let mut members = Vec::new();
            for (mut spec, dir) in specs.into_iter().zip(dirs) {
                prepare(&spec, &flags)?;
                spec.cluster = Some(flags.clone());
                members.push(Server::unstarted(spec, dir));
            }
            let mut cluster = Cluster {
                flavor,
                token,
                extra_args: extra_args.clone(),
                members,
                etcdctl_user: None,
            };
            match cluster.launch_all().await {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let port_clash = cluster.members.iter().any(|m| {
                        m.log_tail(200)
                            .to_lowercase()
                            .contains("address already in use")
                    });
                    if !port_clash {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("could not find free ports")))
    }

    /// Spawns every member that is not running, then waits until all serve a linearizable Range.
    /// Fails at once if a member exits (a port clash, a flag it rejects) rather than waiting out
    /// the timeout.
    async fn launch_all(&mut self) -> Result<()> {
        for member in &mut self.members {
            if !member.is_running() {
                member.spawn()?;
            }
        }
        let deadline = Instant::now() + crate::READY_TIMEOUT;
        let mut ready = vec![false; self.members.len()];
        loop {
            for (member, ready) in self.members.iter_mut().zip(&mut ready) {
                member.check_still_running()?;
                if !*ready {
                    *ready = probe_ready(&member.endpoint(), Readiness::Linearizable).await;
                }
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut tails = String::new();
                for (member, ready) in self.members.iter().zip(&ready) {
                    let _ = writeln!(
                        tails,
                        "--- {} ready={ready} ---\n{}",
                        member.spec().name,
                        member.log_tail(30)
                    );
                }
                bail!(
                    "not every member served a linearizable Range within {:?}\n{tails}",
                    crate::READY_TIMEOUT
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Membership changes made by the harness authenticate as `user` (`name:password`).
    pub fn set_etcdctl_user(&mut self, user: &str) {
        self.etcdctl_user = Some(user.to_string());
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn members(&self) -> &[Server] {
        &self.members
    }

    /// "127.0.0.1:PORT" of every member the harness has not stopped, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.pid().is_some())
            .map(Server::endpoint)
            .collect()
    }

    /// A client balancing over [`Cluster::endpoints`], with bounded request timeouts.
    pub async fn client_all(&self) -> Client {
        let endpoints = self.endpoints();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        Client::connect(&endpoints, Some(options))
            .await
            .unwrap_or_else(|e| panic!("connecting to {endpoints:?}: {e}"))
    }

    /// Maintenance Status of member `i` alone, or `None` if it is stopped or does not answer
    /// within a couple of seconds.
    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        let member = &self.members[i];
        member.pid()?;
        let query = async {
            let mut client = crate::connect(&member.endpoint(), STATUS_TIMEOUT)
                .await
                .ok()?;
            client.status().await.ok()
        };
        tokio::time::timeout(STATUS_TIMEOUT, query)
            .await
            .ok()
            .flatten()
    }

    async fn statuses(&self) -> Vec<Option<StatusResponse>> {
        let mut all = Vec::new();
        for i in 0..self.members.len() {
            all.push(self.status(i).await);
        }
        all
    }

    /// The member id of member `i`, from its own Status.
    pub async fn member_id(&self, i: usize) -> u64 {
        let status = self
            .status(i)
            .await
            .unwrap_or_else(|| panic!("{} did not answer Status", self.members[i].spec().name));
        status.header().expect("Status has a header").member_id()
    }

    /// The one answering member whose Status names itself leader, if there is exactly one.
    pub async fn leader_index(&self) -> Option<usize> {
        let statuses = self.statuses().await;
        let claimants = self_declared_leaders(&statuses);
        (claimants.len() == 1).then(|| claimants[0])
    }

    /// Waits until exactly one member claims leadership and every answering member names it
    /// leader; returns its index. Panics with every member's view if that takes `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let claimants = self_declared_leaders(&statuses);
            if let [leader] = claimants[..] {
                let id = statuses[leader].as_ref().map(StatusResponse::leader);
                if statuses.iter().flatten().all(|s| Some(s.leader()) == id) {
                    return leader;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no leader every member agrees on within {timeout:?}:\n{}",
                    self.describe(&statuses)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One line per member with what its Status said, for failure messages.
    fn describe(&self, statuses: &[Option<StatusResponse>]) -> String {
        let mut out = String::new();
        for (member, status) in self.members.iter().zip(statuses) {
            let _ = match status {
                Some(s) => writeln!(
                    out,
                    "  {} {}: member {:x} leader {:x} term {} applied {} learner {}",
                    member.spec().name,
                    member.endpoint(),
                    s.header().map(|h| h.member_id()).unwrap_or(0),
                    s.leader(),
                    s.raft_term(),
                    s.raft_applied_index(),
                    s.is_learner()
                ),
                None => writeln!(
                    out,
                    "  {} {}: no answer",
                    member.spec().name,
                    member.endpoint()
                ),
            };
        }
        out
    }

    /// Member `i`, to change how it is launched next (e.g. its environment).
    pub fn member_mut(&mut self, i: usize) -> &mut Server {
        &mut self.members[i]
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Waits until member `i` exits by itself (as a removed member does); false on timeout.
    pub async fn wait_for_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.members[i].is_running() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// SIGTERM member `i` and wait for its exit.
    pub fn terminate(&mut self, i: usize) {
        let name = self.members[i].spec().name.clone();
        if let Err(e) = self.members[i].terminate(Duration::from_secs(15)) {
            panic!("stopping {name}: {e:#}");
        }
    }

    /// Starts voter `i` again on its data dir and ports; returns once it serves a linearizable
    /// Range (so the rest of the cluster must have a quorum).
    pub async fn restart(&mut self, i: usize) {
        self.members[i].restart().await;
    }

    /// Starts every stopped member again at once and waits until all of them serve a
    /// linearizable Range: after the whole cluster went down none can serve alone, so restarting
    /// them one by one with [`Cluster::restart`] would wait for a quorum that never comes.
    pub async fn restart_all(&mut self) {
        if let Err(e) = self.launch_all().await {
            panic!("restarting the {} cluster: {e:#}", self.flavor);
        }
    }

    /// Announces a new member with `etcdctl member add` (as a learner if `learner`), then starts
    /// it exactly as etcdctl says to: with the printed `ETCD_INITIAL_CLUSTER` and
    /// `ETCD_INITIAL_CLUSTER_STATE`. Returns once it serves a Range (serializable for a learner,
    /// which refuses linearizable ones). Its ports are not retried on a clash: the peer URL is
    /// already part of the membership by the time the process binds it.
    pub async fn add_member(&mut self, name: &str, learner: bool) -> AddedMember {
        match self.try_add_member(name, learner).await {
            Ok(added) => added,
            Err(e) => panic!("adding member {name}: {e:#}"),
        }
    }

    /// [`Cluster::add_member`], returning its failure (a member refused at start).
    pub async fn try_add_member(&mut self, name: &str, learner: bool) -> Result<AddedMember> {
        let dir = member_dir(self.flavor, name)?;
        let mut spec = MemberSpec {
            flavor: self.flavor,
            name: name.to_string(),
            data_dir: dir.path().join("data"),
            client_port: free_port(),
            peer_port: free_port(),
            extra_args: member_args(&self.extra_args),
            cluster: None,
        };
        let peer_urls = format!("--peer-urls={}", spec.peer_url());
        let user = self.etcdctl_user.as_ref().map(|u| format!("--user={u}"));
        let mut args = vec!["member", "add", name, peer_urls.as_str()];
        args.extend(user.as_deref());
        if learner {
            args.push("--learner");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let output = loop {
            let output = etcdctl(&self.endpoints(), &args).await;
            if output.success {
                break output;
            }
            if output.error() != Some(UNHEALTHY_CLUSTER) || Instant::now() >= deadline {
                bail!("etcdctl member add failed: {output:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let id = output
            .stdout
            .lines()
            .find_map(|line| {
                line.strip_prefix("Member ")?
                    .split_once(" added to cluster ")
            })
            // etcdctl prints ids with "%16x": space-padded to 16 columns.
            .and_then(|(id, _)| u64::from_str_radix(id.trim(), 16).ok())
            .ok_or_else(|| anyhow!("no \"Member <id> added\" line in {output:?}"))?;
        let printed: BTreeMap<String, String> = output
            .stdout
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once('=')?;
                key.starts_with("ETCD_")
                    .then(|| (key.to_string(), value.trim_matches('"').to_string()))
            })
            .collect();
        let printed_var = |key: &str| {
            printed
                .get(key)
                .cloned()
                .ok_or_else(|| anyhow!("etcdctl member add printed no {key}: {output:?}"))
        };
        spec.cluster = Some(ClusterFlags {
            initial_cluster: printed_var("ETCD_INITIAL_CLUSTER")?,
            state: printed_var("ETCD_INITIAL_CLUSTER_STATE")?,
            token: self.token.clone(),
        });
        let mut member = Server::unstarted(spec, dir);
        member.spawn()?;
        let readiness = if learner {
            Readiness::Serializable
        } else {
            Readiness::Linearizable
        };
        // Pushed before waiting so its logs are printed if the test fails.
        self.members.push(member);
        let index = self.members.len() - 1;
        self.members[index]
            .wait_ready(readiness, crate::READY_TIMEOUT)
            .await?;
        Ok(AddedMember { index, id, printed })
    }
}

/// Indices of the answering members whose Status names themselves leader.
fn self_declared_leaders(statuses: &[Option<StatusResponse>]) -> Vec<usize> {
    statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let s = s.as_ref()?;
            let me = s.header()?.member_id();
            (me != 0 && s.leader() == me).then_some(i)
        })
        .collect()
}

fn member_dir(flavor: Flavor, name: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("oxcd-cluster-{flavor}-{name}-"))
        .tempdir()
        .context("creating a member's temp dir")
}

/// The timing flags every member runs with, followed by the test's own flags.
fn member_args(extra_args: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("--heartbeat-interval={HEARTBEAT_INTERVAL_MS}"),
        format!("--election-timeout={}", ELECTION_TIMEOUT.as_millis()),
    ];
    args.extend_from_slice(extra_args);
    args
}

pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCDCTL_BIN))
}

/// What one etcdctl run printed.
#[derive(Debug)]
pub struct EtcdctlOutput {
    pub command: String,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl EtcdctlOutput {
    /// The message of etcdctl's final `Error: ...` line. The client's retry warnings (JSON log
    /// lines) come before it on stderr.
    pub fn error(&self) -> Option<&str> {
        self.stderr
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("Error: "))
    }

    /// Panics unless the command succeeded; returns its stdout.
    pub fn expect_ok(&self) -> &str {
        assert!(self.success, "etcdctl failed: {self:#?}");
        &self.stdout
    }

    /// Stdout of a successful `-w json` command, parsed.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.expect_ok())
            .unwrap_or_else(|e| panic!("etcdctl printed invalid JSON ({e}): {self:#?}"))
    }
}

/// Runs etcdctl (API v3) against `endpoints` with `args`. Inherited `ETCDCTL_*` variables are
/// dropped: etcdctl refuses a flag that an environment variable also sets.
pub async fn etcdctl(endpoints: &[String], args: &[&str]) -> EtcdctlOutput {
    let mut cmd = tokio::process::Command::new(etcdctl_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let command = format!(
        "etcdctl --endpoints={} {}",
        endpoints.join(","),
        args.join(" ")
    );
    let output = tokio::time::timeout(ETCDCTL_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`{command}` still running after {ETCDCTL_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("running `{command}` ({}): {e}", etcdctl_bin().display()));
    EtcdctlOutput {
        command,
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `prepare` hook for [`Cluster::start_prepared`]: `oxcdctl snapshot restore` of `file` into
/// each member with that member's own name, URLs and cluster flags, plus `extra` arguments.
pub fn restored_from(
    file: PathBuf,
    extra: Vec<String>,
) -> impl FnMut(&MemberSpec, &ClusterFlags) -> Result<()> {
    restored_by(crate::oxcdctl_bin(), file, extra)
}

/// [`restored_from`] with another restore tool that takes etcdutl's `snapshot restore` flags:
/// etcdutl itself, for etcd members.
pub fn restored_by(
    tool: PathBuf,
    file: PathBuf,
    extra: Vec<String>,
) -> impl FnMut(&MemberSpec, &ClusterFlags) -> Result<()> {
    move |spec, flags| {
        let mut restore = std::process::Command::new(&tool);
        // The caller's etcdctl settings are not the restore's.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCDCTL_") {
                restore.env_remove(key);
            }
        }
        let out = restore
            .arg("snapshot")
            .arg("restore")
            .arg(&file)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--name", &spec.name])
            .args(["--initial-cluster", &flags.initial_cluster])
            .args(["--initial-cluster-token", &flags.token])
            .args(["--initial-advertise-peer-urls", &spec.peer_url()])
            .args(&extra)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} snapshot restore", tool.display()))?;
        if !out.status.success() {
            bail!(
                "{} snapshot restore {}: {}",
                tool.display(),
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}
