//! A local cluster of real oxcd or etcd member processes whose peer and client traffic runs
//! through a [`Network`] of fault-injecting proxies.
//!
//! Both binaries take etcd's flags, so one launcher serves either flavour. Member `i` listens on
//! its own peer and client ports but advertises the addresses of its proxies, so every byte between
//! members, and between clients and members, crosses a proxy the harness controls.
//!
//! Processes are the harness's responsibility: dropping a [`Cluster`] SIGKILLs every member and
//! stops the proxies, which covers errors, panics (unwinding drops it) and a run cancelled by
//! Ctrl-C (dropping the run's future drops it).

use std::collections::HashSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, ConnectOptions};
use oxcd_tests::powerfs::{CutReport, PowerFs};
use rand::Rng;
use tokio::task::JoinSet;

use crate::proxy::Network;

/// etcd's defaults, spelled out so that both flavours surely run with the same timing.
const HEARTBEAT_INTERVAL_MS: u64 = 100;
const ELECTION_TIMEOUT_MS: u64 = 1000;

/// How long one probe (Status or a linearizable Range) may take before the member counts as not
/// answering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound on a MemberAdd or MemberRemove.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long adding a member back is retried.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a removed member gets to stop by itself.
const REMOVED_EXIT_GRACE: Duration = Duration::from_secs(5);

/// Which server the members run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Oxcd,
    Etcd,
}

impl Flavor {
    /// Where the binary is when the user does not say: `$OXCD_BIN`, else the `oxcd` that cargo
    /// built next to the running executable (`oxcd-jepsen` and the integration tests' `deps/`
    /// both live in the same target directory); `$ETCD_BIN`, else Debian's `/usr/bin/etcd`.
    pub fn default_binary(self) -> PathBuf {
        match self {
            Flavor::Oxcd => std::env::var_os("OXCD_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let exe = std::env::current_exe().unwrap_or_default();
                    let dir = exe.parent().unwrap_or(Path::new("."));
                    let dir = if dir.ends_with("deps") {
                        dir.parent().unwrap_or(dir)
                    } else {
                        dir
                    };
                    dir.join("oxcd")
                }),
            Flavor::Etcd => std::env::var_os("ETCD_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd")),
        }
    }

    /// Flags that only quieten the process.
    fn quiet_args(self) -> &'static [&'static str] {
        match self {
            // etcd 3.4's default capnslog logger ignores --log-level; zap honours it.
            Flavor::Etcd => &["--logger", "zap", "--log-level", "error"],
            Flavor::Oxcd => &["--log-level", "error"],
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Oxcd => "oxcd",
            Flavor::Etcd => "etcd",
        })
    }
}

impl FromStr for Flavor {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "oxcd" => Ok(Flavor::Oxcd),
            "etcd" => Ok(Flavor::Etcd),
            _ => bail!("unknown flavor {s:?} (oxcd or etcd)"),
        }
    }
}

/// What [`Cluster::start`] needs.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub flavor: Flavor,
    pub binary: PathBuf,
    pub members: usize,
    /// Data directories and logs go here, one `n<i>/` directory and `n<i>.log` per member.
    pub dir: PathBuf,
    /// How long the fresh cluster gets until every member serves a linearizable Range.
    pub ready_timeout: Duration,
    /// Puts every member's data dir on a PowerFs of its own, so that [`Cluster::cut_power`]
    /// can lose what a member did not fsync. Needs FUSE (`/dev/fuse`, and root to mount); the
    /// data is in memory and gone when the cluster is dropped.
    pub power_disks: bool,
}

struct Member {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    peer_port: u16,
    client_port: u16,
    /// `--listen-metrics-urls`: /health, /readyz, /metrics of this member, not proxied.
    metrics_port: u16,
    child: Option<Child>,
    paused: bool,
    launches: u32,
    /// Removed from the cluster (and its data wiped) until it is added back.
    removed: bool,
    /// Added back after a removal: it starts with `--initial-cluster-state existing`.
    rejoined: bool,
}

/// A member process that ended without the harness killing it.
#[derive(Clone, Debug)]
pub struct Exit {
    pub member: usize,
    pub status: ExitStatus,
}

/// A running cluster; members are indexed from 0 and named `n1`, `n2`, ...
pub struct Cluster {
    flavor: Flavor,
    binary: PathBuf,
    token: String,
    initial_cluster: String,
    members: Vec<Member>,
    network: Network,
    /// Member `i`'s data dir's PowerFs, when [`ClusterOptions::power_disks`]; dropped (unmounted)
    /// after the members are killed.
    disks: Vec<PowerFs>,
}

impl Cluster {
    /// Starts the proxies and every member, then waits until each member serves a linearizable
    /// Range through its client proxy.
    pub async fn start(options: &ClusterOptions) -> Result<Cluster> {
        if !options.binary.is_file() {
            bail!(
                "no {} binary at {} (build it, or pass --bin)",
                options.flavor,
                options.binary.display()
            );
        }
        std::fs::create_dir_all(&options.dir)
            .with_context(|| format!("creating {}", options.dir.display()))?;
        let n = options.members;
        let mut members = Vec::with_capacity(n);
        let mut ports = HashSet::new();
        for i in 1..=n {
            let name = format!("n{i}");
            members.push(Member {
                data_dir: options.dir.join(&name),
                log: options.dir.join(format!("{name}.log")),
                name,
                peer_port: free_port(&mut ports)?,
                client_port: free_port(&mut ports)?,
                metrics_port: free_port(&mut ports)?,
                child: None,
                paused: false,
                launches: 0,
                removed: false,
                rejoined: false,
            });
        }
        let mut disks = Vec::new();
        if options.power_disks {
            for member in &members {
                std::fs::create_dir_all(&member.data_dir)
                    .with_context(|| format!("creating {}", member.data_dir.display()))?;
                disks.push(PowerFs::mount(&member.data_dir)?);
            }
        }
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let peers: Vec<SocketAddr> = members.iter().map(|m| loopback(m.peer_port)).collect();
        let clients: Vec<SocketAddr> = members.iter().map(|m| loopback(m.client_port)).collect();
        let network = Network::start(&peers, &clients)
            .await
            .context("starting the proxies")?;
        let initial_cluster = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{}=http://{}", m.name, network.peer_addr(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            flavor: options.flavor,
            binary: options.binary.clone(),
            // Unique per run, so members of two runs at the same time never take each other's
            // peers for their own.
            token: format!(
                "oxcd-jepsen-{}-{}",
                std::process::id(),
                rand::thread_rng().gen::<u32>()
            ),
            initial_cluster,
            members,
            network,
            disks,
        };
        for i in 0..n {
            cluster.launch(i)?;
        }
        cluster.wait_healthy(options.ready_timeout).await?;
        Ok(cluster)
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    pub fn name(&self, member: usize) -> &str {
        &self.members[member].name
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// "127.0.0.1:PORT" of member `member`'s client proxy, the form etcd-client takes.
    pub fn endpoint(&self, member: usize) -> String {
        self.network.client_addr(member).to_string()
    }

    /// "http://127.0.0.1:PORT" where member `member` serves /health, /readyz and /metrics.
    pub fn metrics_url(&self, member: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[member].metrics_port)
    }

    /// Spawns member `i` on its data directory and ports, and registers its pid with the network
    /// so that its peer connections are attributed to it.
    fn launch(&mut self, i: usize) -> Result<()> {
        let peer_url = format!("http://{}", self.network.peer_addr(i));
        let client_url = format!("http://{}", self.network.client_addr(i));
        let member = &mut self.members[i];
        member.launches += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .with_context(|| format!("opening {}", member.log.display()))?;
        writeln!(log, "===== launch #{} =====", member.launches)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", member.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", member.client_port))
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", member.metrics_port))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(if member.rejoined { "existing" } else { "new" })
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg(format!("--heartbeat-interval={HEARTBEAT_INTERVAL_MS}"))
            .arg(format!("--election-timeout={ELECTION_TIMEOUT_MS}"))
            .args(self.flavor.quiet_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.network.set_pid(i, Some(child.id()));
        member.child = Some(child);
        member.paused = false;
        Ok(())
    }

    pub fn is_running(&self, member: usize) -> bool {
        self.members[member].child.is_some()
    }

    pub fn is_paused(&self, member: usize) -> bool {
        self.members[member].paused
    }

    /// SIGKILL: nothing that was not already durable survives.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[member].paused = false;
        self.network.set_pid(member, None);
    }

    /// Starts a killed member again; does not wait for it to serve.
    pub fn restart(&mut self, member: usize) -> Result<()> {
        if self.members[member].child.is_some() {
            bail!("{} is still running", self.members[member].name);
        }
        self.launch(member)
    }

    pub fn is_removed(&self, member: usize) -> bool {
        self.members[member].removed
    }

    /// Another member to send a membership change through: running, not paused.
    fn live_member_other_than(&self, member: usize) -> Result<usize> {
        (0..self.members())
            .find(|&m| m != member && self.is_running(m) && !self.is_paused(m))
            .ok_or_else(|| anyhow!("no running member besides {} to ask", self.name(member)))
    }

    /// Removes `member` from the cluster through another member (MemberRemove), waits for the
    /// removed process to stop by itself as etcd's members do (killing it after a grace
    /// period), and wipes its data, so that only [`Cluster::add_back`] brings it back.
    pub async fn remove(&mut self, member: usize) -> Result<()> {
        let via = self.live_member_other_than(member)?;
        let mut client = connect(&self.endpoint(via), MEMBERSHIP_TIMEOUT).await?;
        let id = self.member_id(&mut client, member).await?;
        client.member_remove(id).await.with_context(|| {
            format!("removing {} through {}", self.name(member), self.name(via))
        })?;
        let m = &mut self.members[member];
        m.removed = true;
        let deadline = Instant::now() + REMOVED_EXIT_GRACE;
        while m
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill(member);
        wipe(&self.members[member].data_dir)
    }

    /// Cuts the power of a stopped member's disk: what it did not fsync is lost.
    pub fn cut_power(&mut self, member: usize) -> Result<CutReport> {
        let m = &self.members[member];
        if m.child.is_some() {
            bail!(
                "{} is still running: kill it before cutting its power",
                m.name
            );
        }
        let disk = self.disks.get(member).ok_or_else(|| {
            anyhow!("the members' disks are not on PowerFs (ClusterOptions::power_disks)")
        })?;
        Ok(disk.cut_power())
    }

    /// Adds a removed member back through another member (MemberAdd with its old peer URL) and
    /// starts it empty, joining the existing cluster. Retried while the cluster cannot take the
    /// change yet (it may still be electing a leader after the removal).
    pub async fn add_back(&mut self, member: usize) -> Result<()> {
        let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
        while let Err(e) = self.add(member).await {
            if Instant::now() >= deadline {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let m = &mut self.members[member];
        m.removed = false;
        m.rejoined = true;
        self.launch(member)
    }

    /// One MemberAdd of `member`, unless an earlier one whose answer was lost already added it.
    async fn add(&self, member: usize) -> Result<()> {
        let via = self.live_member_other_than(member)?;
        let mut client = connect(&self.endpoint(via), MEMBERSHIP_TIMEOUT).await?;
        if self.member_id(&mut client, member).await.is_ok() {
            return Ok(());
        }
        let peer_url = format!("http://{}", self.network.peer_addr(member));
        client.member_add([peer_url], None).await.with_context(|| {
            format!(
                "adding {} back through {}",
                self.name(member),
                self.name(via)
            )
        })?;
        Ok(())
    }

    async fn member_id(&self, client: &mut Client, member: usize) -> Result<u64> {
        let peer_url = format!("http://{}", self.network.peer_addr(member));
        let list = client.member_list().await.context("listing members")?;
        list.members()
            .iter()
            .find(|m| m.peer_urls().contains(&peer_url))
            .map(|m| m.id())
            .ok_or_else(|| anyhow!("{} is not a member", self.name(member)))
    }

    /// SIGSTOP: the process is frozen with its connections open, as a long GC pause or a stalled
    /// VM would be.
    pub fn pause(&mut self, member: usize) -> Result<()> {
        self.signal(member, "STOP")?;
        self.members[member].paused = true;
        Ok(())
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, member: usize) -> Result<()> {
        self.signal(member, "CONT")?;
        self.members[member].paused = false;
        Ok(())
    }

    /// Sends a signal through kill(1), which spares the crate a libc dependency for two calls.
    fn signal(&self, member: usize, signal: &str) -> Result<()> {
        let m = &self.members[member];
        let pid = m
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("{} is not running", m.name))?
            .id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running kill(1)")?;
        if !status.success() {
            bail!("kill -{signal} {pid} ({}) failed: {status}", m.name);
        }
        Ok(())
    }

    /// Members that ended by themselves since the last call: crashes or refusals to start. They
    /// count as killed from then on, so a later restart brings them back.
    pub fn exits(&mut self) -> Vec<Exit> {
        let mut exits = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                m.child = None;
                m.paused = false;
                self.network.set_pid(i, None);
                exits.push(Exit { member: i, status });
            }
        }
        exits
    }

    /// Undoes every fault: heals the network, resumes paused members, restarts stopped ones and
    /// adds removed ones back.
    pub async fn recover(&mut self) -> Result<()> {
        self.network.clear();
        for i in 0..self.members() {
            if self.members[i].paused {
                self.resume(i)?;
            }
        }
        for i in 0..self.members() {
            if !self.members[i].removed && self.members[i].child.is_none() {
                self.launch(i)?;
            }
        }
        for i in 0..self.members() {
            if self.members[i].removed {
                self.add_back(i).await?;
            }
        }
        Ok(())
    }

    /// The member every answering member's Status names leader and that names itself, if there
    /// is exactly one such member. Members are asked in parallel, so a paused one costs one probe
    /// timeout, not one per member.
    pub async fn leader(&self) -> Option<usize> {
        let mut probes = JoinSet::new();
        for i in 0..self.members() {
            let endpoint = self.endpoint(i);
            probes.spawn(async move {
                let status = tokio::time::timeout(PROBE_TIMEOUT, async {
                    let mut client = connect(&endpoint, PROBE_TIMEOUT).await.ok()?;
                    client.status().await.ok()
                })
                .await
                .ok()
                .flatten()?;
                Some((i, status.header()?.member_id(), status.leader()))
            });
        }
        let mut views = Vec::new();
        while let Some(view) = probes.join_next().await {
            views.extend(view.ok().flatten());
        }
        let claimants: Vec<usize> = views
            .iter()
            .filter(|(_, me, leader)| *me != 0 && me == leader)
            .map(|(i, _, _)| *i)
            .collect();
        match claimants[..] {
            [leader] => {
                let id = views.iter().find(|v| v.0 == leader).map(|v| v.1);
                views.iter().all(|v| Some(v.2) == id).then_some(leader)
            }
            _ => None,
        }
    }

    /// Whether `member` serves a linearizable Range now.
    async fn serves(&self, member: usize) -> bool {
        let endpoint = self.endpoint(member);
        tokio::time::timeout(PROBE_TIMEOUT, async {
            let mut client = connect(&endpoint, PROBE_TIMEOUT).await.ok()?;
            client.get("oxcd-jepsen-health", None).await.ok()
        })
        .await
        .is_ok_and(|r| r.is_some())
    }

    /// Waits until every member serves a linearizable Range. Fails early if a member exits.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut healthy = vec![false; self.members()];
        loop {
            if let Some(exit) = self.exits().first() {
                bail!(
                    "{} exited ({}); see {}",
                    self.members[exit.member].name,
                    exit.status,
                    self.members[exit.member].log.display()
                );
            }
            for (i, healthy) in healthy.iter_mut().enumerate() {
                if !*healthy {
                    *healthy = self.serves(i).await;
                }
            }
            if healthy.iter().all(|h| *h) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let sick: Vec<&str> = (0..self.members())
                    .filter(|&i| !healthy[i])
                    .map(|i| self.name(i))
                    .collect();
                bail!(
                    "not every member served a linearizable Range within {timeout:?}: {} did \
                     not (logs in {})",
                    sick.join(", "),
                    self.members[0]
                        .log
                        .parent()
                        .unwrap_or(Path::new("."))
                        .display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process, so paused members need no SIGCONT first.
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Removes everything in `data_dir` (which may be a mount point) and makes that durable, as an
/// operator's `rm -rf` and `sync` would: a later power cut must not bring the data back.
fn wipe(data_dir: &Path) -> Result<()> {
    if !data_dir.exists() {
        return Ok(());
    }
    let context = || format!("wiping {}", data_dir.display());
    for entry in std::fs::read_dir(data_dir).with_context(context)? {
        let path = entry.with_context(context)?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(context)?;
    }
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(context)
}

/// A client with bounded connect and request timeouts. etcd-client connects lazily, so this
/// succeeds whether or not the member is up; requests tell.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    Ok(Client::connect([endpoint], Some(options)).await?)
}

/// A port free right now on 127.0.0.1. Candidates come from below the kernel's ephemeral range
/// (32768 and up), so the harness's own outgoing connections cannot take them before the member
/// binds them.
/// `taken` holds the ports already handed out, which are free too until their members bind them.
fn free_port(taken: &mut HashSet<u16>) -> Result<u16> {
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port found in 20000..32000")
}
