//! Control of one single-member server process (etcd or oxcd: both take etcd's flags) on private
//! loopback ports, with its data and logs in a directory of its own.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::Client;
use rand::Rng;
use tokio::process::{Child, Command};

/// etcd needs about a second to elect itself; leave ample room on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-attempt bound so a half-started server cannot stall a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a server gets to shut down cleanly after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running server. Dropping it kills the process, so an aborted run never leaves one behind.
pub struct ServerProcess {
    child: Child,
    client_url: String,
    data_dir: PathBuf,
    stderr_log: PathBuf,
}

impl ServerProcess {
    /// Starts `binary` as member `n1` with its data dir, stdout.log and stderr.log in `work_dir`.
    pub fn start(binary: &Path, work_dir: &Path) -> Result<Self> {
        let [client_port, peer_port] = free_ports()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data_dir = work_dir.join("data");
        let stdout_log = work_dir.join("stdout.log");
        let stderr_log = work_dir.join("stderr.log");
        let child = Command::new(binary)
            .arg("--name")
            .arg("n1")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("n1={peer_url}"))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_log)?)
            .stderr(File::create(&stderr_log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self {
            child,
            client_url,
            data_dir,
            stderr_log,
        })
    }

    /// Starts `binary` in `work_dir` (created if missing) and returns once it serves requests;
    /// `label` names it in progress messages and errors.
    pub async fn start_ready(label: &str, binary: &Path, work_dir: &Path) -> Result<Self> {
        fs::create_dir_all(work_dir)?;
        eprintln!("{label}: starting {}", binary.display());
        let mut server = Self::start(binary, work_dir)?;
        server
            .wait_until_ready()
            .await
            .with_context(|| format!("{label} did not become ready"))?;
        Ok(server)
    }

    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Returns once a Get succeeds, i.e. the member has elected itself and serves KV requests.
    pub async fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "server exited during startup ({status}); see {}",
                    self.stderr_log.display()
                );
            }
            if tokio::time::timeout(PROBE_TIMEOUT, self.probe())
                .await
                .is_ok_and(|probe| probe.is_ok())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "server did not serve a Get within {READY_TIMEOUT:?}; see {}",
                    self.stderr_log.display()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn probe(&self) -> Result<()> {
        let mut client = Client::connect([self.client_url.as_str()], None).await?;
        client.get("oxcd-bench-ready", None).await?;
        Ok(())
    }

    /// Resident set size of the server process, from VmRSS in /proc/PID/status.
    pub fn rss_bytes(&self) -> Result<u64> {
        let pid = self.child.id().context("server has already exited")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|number| number.trim().parse::<u64>().ok())
            .context("no VmRSS line in /proc/PID/status")?;
        Ok(kib * 1024)
    }

    /// Sum of the sizes of all files under the data dir (apparent sizes, as `du -b` reports).
    pub fn data_dir_bytes(&self) -> Result<u64> {
        apparent_size(&self.data_dir)
    }

    /// SIGTERM, then SIGKILL if the server is still running after the grace period. The data
    /// dir is removed afterwards (it can be large); the logs are kept.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
            // SAFETY: kill(2) only sends a signal; `pid` is our own child, which has not been
            // reaped yet (id() returns None once it has), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if tokio::time::timeout(STOP_GRACE, self.child.wait())
                .await
                .is_err()
            {
                eprintln!("server ignored SIGTERM for {STOP_GRACE:?}; killing it");
                self.child.kill().await?;
            }
        }
        fs::remove_dir_all(&self.data_dir)
            .with_context(|| format!("cannot remove {}", self.data_dir.display()))
    }
}

/// A fresh directory for one comparison's servers. It is kept after the run because it holds
/// their logs (each data dir is removed when its server stops).
pub fn new_work_dir() -> Result<PathBuf> {
    Ok(tempfile::Builder::new()
        .prefix("oxcd-bench-")
        .tempdir()?
        .keep())
}

fn apparent_size(path: &Path) -> Result<u64> {
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

/// `N` distinct, currently free ports on 127.0.0.1. Candidates come from below the kernel's
/// ephemeral range (32768+), so the benchmark's own outgoing connections cannot take one between
/// this probe and the server's bind. Each probe listener stays open until all are found, which
/// is what keeps the ports distinct.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut rng = rand::thread_rng();
    let mut listeners = Vec::with_capacity(N);
    for _ in 0..500 {
        if listeners.len() == N {
            break;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", rng.gen_range(20_000..32_000))) {
            listeners.push(listener);
        }
    }
    if listeners.len() < N {
        bail!(
            "found only {} of {N} free ports in 20000..32000",
            listeners.len()
        );
    }
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}
