//! Control of server processes (etcd or oxcd: both take etcd's flags) on private loopback ports:
//! a cluster of one or more members on this machine, each member with its data and logs in a
//! directory of its own. The single-member comparisons run clusters of one, so every comparison
//! starts its servers with the same flags and the same readiness check.

use std::error::Error as _;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::Client;
use rand::Rng;
use tokio::process::{Child, Command};

/// etcd needs a second or two to elect a leader; leave ample room on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-attempt bound so a half-started server cannot stall a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a server gets to shut down cleanly after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// etcd's defaults, passed explicitly so that both servers surely run with the same Raft timing.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
pub const ELECTION_TIMEOUT_MS: u64 = 1000;

/// How to start one member: kept so a killed member can be started again on its data dir.
struct Launch {
    binary: PathBuf,
    args: Vec<OsString>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> Result<Child> {
        // Appending keeps what a killed member logged before its restart.
        let log = |path: &Path| -> Result<File> {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))
        };
        Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log(&self.stdout_log)?)
            .stderr(log(&self.stderr_log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))
    }
}

/// One member's process. Dropping it kills the process, so an aborted run never leaves one
/// behind.
pub struct ServerProcess {
    name: String,
    launch: Launch,
    child: Child,
    client_url: String,
    data_dir: PathBuf,
}

/// What one member said about itself and its leader; `leader` is 0 while it knows none.
struct MemberView {
    member_id: u64,
    leader: u64,
}

impl ServerProcess {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Resident set size of the server process, from VmRSS in /proc/PID/status.
    pub fn rss_bytes(&self) -> Result<u64> {
        self.memory_status("VmRSS")
    }

    /// The member's Prometheus metrics, from `/metrics` on its (plain HTTP) client port.
    pub async fn metrics_text(&self) -> Result<String> {
        let endpoint = self
            .client_url
            .strip_prefix("http://")
            .context("metrics are read from plain-HTTP client URLs only")?;
        oxcd_tests::metrics_text(endpoint).await
    }

    /// The highest resident set size the process has had (VmHWM).
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        self.memory_status("VmHWM")
    }

    fn memory_status(&self, field: &str) -> Result<u64> {
        memory_status(self.pid()?, field)
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("server has already exited")
    }

    /// CPU time (user and system) the process has used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid()?)
    }

    /// Sum of the sizes of all files under the data dir (apparent sizes, as `du -b` reports).
    pub fn data_dir_bytes(&self) -> Result<u64> {
        apparent_size(&self.data_dir)
    }

    /// SIGKILL, as a crash would: no chance to flush anything or hand leadership over.
    pub async fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("cannot kill {}", self.name))
    }

    /// Starts the member again with the flags and data dir it had (after `kill`).
    pub fn restart(&mut self) -> Result<()> {
        self.child = self.launch.spawn()?;
        Ok(())
    }

    /// Fails once the process has exited, quoting the last line it logged.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let stderr = &self.launch.stderr_log;
            let last_line = fs::read_to_string(stderr)
                .unwrap_or_default()
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("(nothing)")
                .to_owned();
            bail!(
                "{} exited ({status}); last line of {}: {last_line}",
                self.name,
                stderr.display()
            );
        }
        Ok(())
    }

    /// The member's Status, then a Get through it: a linearizable read, which on a follower
    /// needs the leader too, so success means this member serves KV requests. Each is bounded
    /// by `PROBE_TIMEOUT`, so a member without a quorum cannot stall the probe.
    async fn probe(&self) -> Result<MemberView, String> {
        let connecting = Client::connect([self.client_url.as_str()], None);
        let mut client = bounded("connect", connecting).await?;
        let status = bounded("Status", client.status()).await?;
        let view = MemberView {
            member_id: status.header().map_or(0, |header| header.member_id()),
            leader: status.leader(),
        };
        let get = client.get("oxcd-bench-ready", None);
        bounded(&format!("leader {:x}, but Get", view.leader), get).await?;
        Ok(view)
    }

    /// Sends SIGTERM, a clean shutdown request, if the process still runs.
    fn request_shutdown(&self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
            // SAFETY: kill(2) only sends a signal; `pid` is our own child, which has not been
            // reaped yet (id() returns None once it has), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        Ok(())
    }

    /// Waits for the process to exit after `request_shutdown`, killing it if it is still running
    /// after the grace period. The data dir stays, so the member can be restarted on it.
    async fn await_shutdown(&mut self) -> Result<()> {
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "{} ignored SIGTERM for {STOP_GRACE:?}; killing it",
                self.name
            );
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// The members of one cluster, started together from one binary.
pub struct Cluster {
    label: String,
    work_dir: PathBuf,
    members: Vec<ServerProcess>,
}

impl Cluster {
    /// Starts `size` members of `binary`, named n1, n2, ..., each in a directory of that name
    /// in `work_dir` (created if missing), and returns once the cluster is ready (see
    /// `wait_until_ready`). `label` names the cluster in progress messages and errors. If the
    /// cluster does not get ready, every member is killed before the error is returned.
    pub async fn start_ready(
        label: &str,
        binary: &Path,
        work_dir: &Path,
        size: usize,
    ) -> Result<Self> {
        Self::start_ready_with(label, binary, work_dir, size, &[]).await
    }

    /// [`Cluster::start_ready`], with `extra_flags` after the common ones on every member.
    pub async fn start_ready_with(
        label: &str,
        binary: &Path,
        work_dir: &Path,
        size: usize,
        extra_flags: &[&str],
    ) -> Result<Self> {
        eprintln!("{label}: starting {size} member(s) of {}", binary.display());
        let ports = free_ports(2 * size)?;
        let (client_ports, peer_ports) = ports.split_at(size);
        let names: Vec<String> = (1..=size).map(|number| format!("n{number}")).collect();
        let peer_urls: Vec<String> = peer_ports.iter().map(|port| loopback_url(*port)).collect();
        let initial_cluster = names
            .iter()
            .zip(&peer_urls)
            .map(|(name, url)| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",");

        let mut members = Vec::with_capacity(size);
        for ((name, peer_url), client_port) in names.into_iter().zip(peer_urls).zip(client_ports) {
            let member_dir = work_dir.join(&name);
            fs::create_dir_all(&member_dir)?;
            let client_url = loopback_url(*client_port);
            let data_dir = member_dir.join("data");
            let flags: [(&str, OsString); 11] = [
                ("--name", name.clone().into()),
                ("--data-dir", data_dir.clone().into()),
                ("--listen-client-urls", client_url.clone().into()),
                ("--advertise-client-urls", client_url.clone().into()),
                ("--listen-peer-urls", peer_url.clone().into()),
                ("--initial-advertise-peer-urls", peer_url.into()),
                ("--initial-cluster", initial_cluster.clone().into()),
                // Token and state as a script bootstrapping a real cluster passes them, so the
                // servers' handling of both is part of what is run.
                ("--initial-cluster-token", "oxcd-bench".into()),
                ("--initial-cluster-state", "new".into()),
                (
                    "--heartbeat-interval",
                    HEARTBEAT_INTERVAL_MS.to_string().into(),
                ),
                ("--election-timeout", ELECTION_TIMEOUT_MS.to_string().into()),
            ];
            let launch = Launch {
                binary: binary.to_owned(),
                args: flags
                    .into_iter()
                    .flat_map(|(flag, value)| [flag.into(), value])
                    .chain(extra_flags.iter().map(OsString::from))
                    .collect(),
                stdout_log: member_dir.join("stdout.log"),
                stderr_log: member_dir.join("stderr.log"),
            };
            let member = ServerProcess {
                name,
                child: launch.spawn()?,
                launch,
                client_url,
                data_dir,
            };
            members.push(member);
        }

        let mut cluster = Self {
            label: label.to_owned(),
            work_dir: work_dir.to_owned(),
            members,
        };
        cluster
            .wait_until_ready()
            .await
            .with_context(|| format!("{label} did not become ready"))?;
        Ok(cluster)
    }

    pub fn members(&self) -> &[ServerProcess] {
        &self.members
    }

    pub fn members_mut(&mut self) -> &mut [ServerProcess] {
        &mut self.members
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| member.client_url.clone())
            .collect()
    }

    /// Resident set size of all members together.
    pub fn rss_bytes(&self) -> Result<u64> {
        self.members.iter().map(ServerProcess::rss_bytes).sum()
    }

    /// CPU time of all members together.
    pub fn cpu_seconds(&self) -> Result<f64> {
        self.members.iter().map(ServerProcess::cpu_seconds).sum()
    }

    /// Size of all members' data dirs together.
    pub fn data_dir_bytes(&self) -> Result<u64> {
        self.members.iter().map(ServerProcess::data_dir_bytes).sum()
    }

    /// Returns the index of the leader once every member serves KV requests and all of them
    /// name the same leader, which in turn says its own id. Fails at once if a member exits,
    /// and after `READY_TIMEOUT` otherwise, with what each member said last.
    pub async fn wait_until_ready(&mut self) -> Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for member in &mut self.members {
                member
                    .check_running()
                    .with_context(|| format!("{} member died", self.label))?;
            }
            let last_seen = match self.agreed_leader().await {
                Ok(leader) => return Ok(leader),
                Err(last_seen) => last_seen,
            };
            if Instant::now() >= deadline {
                bail!(
                    "no leader all {} member(s) agree on within {READY_TIMEOUT:?} (last seen: \
                     {last_seen}); member logs are under {}",
                    self.members.len(),
                    self.work_dir.display()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// The leader's index, or what each member said, for the error if it never gets ready.
    async fn agreed_leader(&self) -> Result<usize, String> {
        let mut views = Vec::with_capacity(self.members.len());
        let mut seen = Vec::with_capacity(self.members.len());
        for member in &self.members {
            match member.probe().await {
                Ok(view) => {
                    seen.push(format!("{}: leader {:x}", member.name, view.leader));
                    views.push(view);
                }
                Err(error) => seen.push(format!("{}: {error}", member.name)),
            }
        }
        let seen = seen.join("; ");
        if views.len() < self.members.len() {
            return Err(seen);
        }
        let leader = views[0].leader;
        if leader == 0 || views.iter().any(|view| view.leader != leader) {
            return Err(seen);
        }
        views
            .iter()
            .position(|view| view.member_id == leader)
            .ok_or(seen)
    }

    /// Shuts every member down cleanly (SIGTERM, SIGKILL after a grace period), all at once:
    /// one by one, the last ones would spend their shutdown looking for a quorum that is already
    /// gone. Data dirs stay, for `restart_all`.
    pub async fn shut_down(&mut self) -> Result<()> {
        for member in &self.members {
            member.request_shutdown()?;
        }
        for member in &mut self.members {
            member.await_shutdown().await?;
        }
        Ok(())
    }

    /// Starts every member again on its data dir (after `shut_down`); does not wait for them.
    pub fn restart_all(&mut self) -> Result<()> {
        self.members.iter_mut().try_for_each(ServerProcess::restart)
    }

    /// Shuts the cluster down and removes the data dirs (they can be large); the logs are kept.
    pub async fn stop(mut self) -> Result<()> {
        eprintln!("{}: stopping", self.label);
        self.shut_down().await?;
        for member in &self.members {
            fs::remove_dir_all(&member.data_dir)
                .with_context(|| format!("cannot remove {}", member.data_dir.display()))?;
        }
        Ok(())
    }
}

/// A command run to its end by [`run_measured`].
pub struct Measured {
    pub status: std::process::ExitStatus,
    pub stderr: String,
    pub seconds: f64,
    /// The process's peak resident set size, as last sampled.
    pub peak_rss_bytes: u64,
}

/// How often [`run_measured`] samples the peak resident set size.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// Runs `command` to its end (stdin empty, stdout discarded), timing it and sampling its peak
/// resident set size (VmHWM) until it exits. wait4(2)'s ru_maxrss would be exact, but it also
/// counts this process's own memory at the spawn, which hides a small tool's peak.
pub async fn run_measured(mut command: std::process::Command) -> Result<Measured> {
    use std::io::{Read, Seek};
    // A file, not a pipe: a pipe nobody reads while the process runs could fill and stall it.
    let mut stderr = tempfile::tempfile()?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone()?);
    let started = Instant::now();
    let mut child = Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the command")?;
    let pid = child.id().context("the command has already been reaped")?;
    let mut peak_rss_bytes = 0;
    let status = loop {
        // Once the process has exited, its status has no memory lines left: the last sample
        // taken while it ran stands.
        if let Ok(peak) = memory_status(pid, "VmHWM") {
            peak_rss_bytes = peak_rss_bytes.max(peak);
        }
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(RSS_SAMPLE_INTERVAL) => {}
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut text = String::new();
    stderr.rewind()?;
    stderr.read_to_string(&mut text)?;
    Ok(Measured {
        status,
        stderr: text,
        seconds,
        peak_rss_bytes,
    })
}

/// A `kB` line of /proc/PID/status, in bytes.
/// CPU time (user and system) process `pid` has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces; utime and stime are
    // fields 14 and 15, the 12th and 13th after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command name in /proc/PID/stat")?;
    let mut fields = after_name.split_whitespace().skip(11);
    let mut ticks = || -> Result<f64> {
        Ok(fields
            .next()
            .context("/proc/PID/stat is too short")?
            .parse::<u64>()? as f64)
    };
    let busy = ticks()? + ticks()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(busy / per_second.max(1) as f64)
}

fn memory_status(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|number| number.trim().parse::<u64>().ok())
        .with_context(|| format!("no {field} line in /proc/PID/status"))?;
    Ok(kib * 1024)
}

/// Awaits one probe request for at most `PROBE_TIMEOUT`; errors are described for the
/// readiness report, prefixed with `what`.
async fn bounded<T>(
    what: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, request).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(format!("{what}: {}", root_cause(&error))),
        Err(_) => Err(format!("{what}: no answer in {PROBE_TIMEOUT:?}")),
    }
}

/// A gRPC error's innermost cause, e.g. "Connection refused (os error 111)", or the server's
/// message: the full text repeats each of tonic's wrappers and runs to several lines.
pub fn root_cause(error: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return error.to_string();
    };
    match std::iter::successors(status.source(), |cause| (*cause).source()).last() {
        Some(transport_failure) => transport_failure.to_string(),
        None => status.message().to_owned(),
    }
}

fn loopback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A fresh directory for one comparison's servers. It is kept after the run because it holds
/// their logs (each data dir is removed when its server stops).
pub fn new_work_dir() -> Result<PathBuf> {
    Ok(tempfile::Builder::new()
        .prefix("oxcd-bench-")
        .tempdir()?
        .keep())
}

/// The sizes of all files under `path` together (apparent sizes, as `du -b` reports).
pub fn apparent_size(path: &Path) -> Result<u64> {
    let metadata = fs::symlink_metadata(path)?;
    if !metadata.is_dir() {
        return Ok(metadata.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(path)? {
        total += apparent_size(&entry?.path())?;
    }
    Ok(total)
}

/// `count` distinct, currently free ports on 127.0.0.1. Candidates come from below the kernel's
/// ephemeral range (32768+), so the benchmark's own outgoing connections cannot take one between
/// this probe and the server's bind. Each probe listener stays open until all are found, which
/// is what keeps the ports distinct.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let mut rng = rand::thread_rng();
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..500 {
        if listeners.len() == count {
            break;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", rng.gen_range(20_000..32_000))) {
            listeners.push(listener);
        }
    }
    if listeners.len() < count {
        bail!(
            "found only {} of {count} free ports in 20000..32000",
            listeners.len()
        );
    }
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}
