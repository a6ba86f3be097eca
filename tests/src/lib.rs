//! Harness shared by the integration, differential and crash tests: it launches real oxcd or etcd
//! member processes on private ports and data directories and hands out clients to them.
//!
//! Both binaries take etcd's command-line flags, so one launcher serves either flavour; that is
//! what lets a test body run unchanged against the reference implementation and against oxcd.

pub mod certs;
pub mod cluster;
pub mod kube;
pub mod powerfs;
pub mod watch_checker;
pub mod writes;

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, ConnectOptions, GetOptions};
use rand::Rng;

/// How long a member gets to start answering KV requests. etcd needs ~1 s to elect itself.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the reference etcd lives (Debian's package); `ETCD_BIN` overrides it.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Oxcd,
    /// Debian's etcd 3.4, the reference most tests compare with.
    Etcd,
    /// The current etcd (3.7), built from the Go module proxy by `tests/reference/build-etcd.sh`:
    /// the reference where 3.6/3.7 changed what 3.4 did.
    Etcd37,
    /// oxcd's previous release (the one before this data dir format and these Raft messages),
    /// built by `tests/reference/build-oxcd-previous.sh`: clusters of it are upgraded one member
    /// at a time to [`Flavor::Oxcd`].
    OxcdPrevious,
}

impl Flavor {
    pub fn binary(self) -> PathBuf {
        match self {
            Flavor::Oxcd => oxcd_bin(),
            Flavor::Etcd => etcd_bin(),
            Flavor::Etcd37 => etcd37_bin(),
            Flavor::OxcdPrevious => oxcd_previous_bin(),
        }
    }

    /// Flags that only quieten the process; everything else is identical between flavours.
    fn quiet_args(self) -> Vec<String> {
        match self {
            // etcd 3.4's default capnslog logger ignores --log-level; zap honours it.
            Flavor::Etcd | Flavor::Etcd37 => vec![
                "--logger".into(),
                "zap".into(),
                "--log-level".into(),
                "error".into(),
            ],
            Flavor::Oxcd | Flavor::OxcdPrevious => {
                let level = std::env::var("OXCD_TEST_LOG_LEVEL").unwrap_or_else(|_| "error".into());
                vec!["--log-level".into(), level]
            }
        }
    }
}

impl Flavor {
    /// What this flavour calls the flag etcd 3.6+ and oxcd call `flag` (with its `--`, and any
    /// `=value`): etcd 3.4 knew some flags only by an `--experimental-` name, which 3.7 removed.
    /// Tests write today's names; anything else passes through unchanged.
    pub fn flag_name(self, flag: &str) -> String {
        const EXPERIMENTAL_IN_34: [&str; 5] = [
            "corrupt-check-time",
            "compaction-batch-limit",
            "peer-skip-client-san-verification",
            "watch-progress-notify-interval",
            "warning-apply-duration",
        ];
        let name = flag.trim_start_matches('-');
        let bare = name.split('=').next().unwrap_or(name);
        if self == Flavor::Etcd && flag.starts_with("--") && EXPERIMENTAL_IN_34.contains(&bare) {
            format!("--experimental-{name}")
        } else {
            flag.to_string()
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Oxcd => "oxcd",
            Flavor::Etcd => "etcd",
            Flavor::Etcd37 => "etcd 3.7",
            Flavor::OxcdPrevious => "previous oxcd",
        })
    }
}

/// `$OXCD_BIN`, else the `oxcd` binary next to the `deps/` directory this test executable is in
/// (cargo puts test executables in `target/debug/deps/` and binaries in `target/debug/`).
pub fn oxcd_bin() -> PathBuf {
    workspace_bin("OXCD_BIN", "oxcd")
}

/// `$OXCDCTL_BIN`, else the `oxcdctl` binary found as [`oxcd_bin`] finds `oxcd`.
pub fn oxcdctl_bin() -> PathBuf {
    workspace_bin("OXCDCTL_BIN", "oxcdctl")
}

fn workspace_bin(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("cannot locate the running test executable");
    let deps = exe
        .parent()
        .expect("test executable has no parent directory");
    deps.parent().unwrap_or(deps).join(name)
}

pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN))
}

/// `$ETCD37_BIN`, else where `tests/reference/build-etcd.sh` puts etcd 3.7.
pub fn etcd37_bin() -> PathBuf {
    std::env::var_os("ETCD37_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/oxcd-reference/etcd-v3.7.3/etcd")
        })
}

/// The previous release's commit, whose binary `tests/reference/build-oxcd-previous.sh` builds
/// by default.
pub const OXCD_PREVIOUS_COMMIT: &str = "a3286cd";

/// `$OXCD_PREVIOUS_BIN`, else where `tests/reference/build-oxcd-previous.sh` puts the previous
/// release's oxcd.
pub fn oxcd_previous_bin() -> PathBuf {
    std::env::var_os("OXCD_PREVIOUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(format!(
                ".cache/oxcd-reference/oxcd-{OXCD_PREVIOUS_COMMIT}/oxcd"
            ))
        })
}

/// etcd 3.7's etcdctl or etcdutl, next to its etcd.
pub fn etcd37_tool(name: &str) -> PathBuf {
    etcd37_bin().with_file_name(name)
}

/// The directory of the package whose tests are running, read when they run. Not
/// `env!("CARGO_MANIFEST_DIR")`: the build cache is shared between checkouts (CI's and a
/// developer's), and a test binary built in one checkout is fresh in the other, with the first
/// one's path compiled in.
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .expect("cargo test sets CARGO_MANIFEST_DIR")
}

/// `$KUBE_BIN_DIR`, else where `tests/reference/build-kubernetes.sh` puts kube-apiserver,
/// kube-controller-manager, kube-scheduler and kubectl.
pub fn kube_bin_dir() -> PathBuf {
    std::env::var_os("KUBE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/oxcd-reference/kubernetes-v1.37.2")
        })
}

pub fn etcd_available() -> bool {
    etcd_bin().is_file()
}

/// Reference-dependent tests must fail, not skip, when etcd is missing: CI installs it, and a
/// silently skipped comparison would look like a passing one.
pub fn require_etcd() {
    assert!(etcd_available(), "{}", etcd_missing());
}

fn etcd_missing() -> String {
    format!(
        "the reference etcd binary is missing at {} (install Debian's `etcd-server` package or \
         set ETCD_BIN); this test compares oxcd against real etcd and cannot run without it",
        etcd_bin().display()
    )
}

fn require_binary(flavor: Flavor) -> Result<PathBuf> {
    let bin = flavor.binary();
    if !bin.is_file() {
        match flavor {
            Flavor::Oxcd => bail!(
                "oxcd binary not found at {}; build it first (`cargo build -p oxcd`) or point \
                 OXCD_BIN at it",
                bin.display()
            ),
            Flavor::Etcd => bail!("{}", etcd_missing()),
            Flavor::Etcd37 => bail!(
                "etcd 3.7 is missing at {} (tests/reference/build-etcd.sh builds it; ./dev test \
                 runs that, or set ETCD37_BIN)",
                bin.display()
            ),
            Flavor::OxcdPrevious => bail!(
                "the previous oxcd release is missing at {} (tests/reference/build-oxcd-previous.sh \
                 builds it; ./dev test runs that, or set OXCD_PREVIOUS_BIN)",
                bin.display()
            ),
        }
    }
    Ok(bin)
}

/// Ports handed out by this process, so two servers of the same test binary never share one
/// even if the first has not bound its port yet.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A currently free port on 127.0.0.1. Candidates come from below the kernel's ephemeral range
/// (32768+) so outgoing client connections cannot grab them between our probe and the server's
/// bind; a start that still loses the race is retried on new ports by [`Server::start`].
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::thread_rng();
    for _ in 0..500 {
        let port = rng.gen_range(20_000..32_000);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("cannot bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("bound socket has an address")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Everything needed to (re)launch one member; kept so `restart` reuses ports and data.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub flavor: Flavor,
    pub name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub extra_args: Vec<String>,
    /// Membership flags when this is one member of a multi-member cluster; `None` bootstraps a
    /// single-member cluster of this member alone.
    pub cluster: Option<cluster::ClusterFlags>,
}

impl MemberSpec {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The full command line, without stdio redirection.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(require_binary(self.flavor)?);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url());
        match &self.cluster {
            Some(flags) => {
                cmd.arg("--initial-cluster")
                    .arg(&flags.initial_cluster)
                    .arg("--initial-cluster-state")
                    .arg(&flags.state)
                    .arg("--initial-cluster-token")
                    .arg(&flags.token);
            }
            None => {
                cmd.arg("--initial-cluster")
                    .arg(format!("{}={}", self.name, self.peer_url()));
            }
        }
        cmd.args(self.flavor.quiet_args())
            .args(self.extra_args.iter().map(|a| self.flavor.flag_name(a)))
            .stdin(Stdio::null());
        Ok(cmd)
    }
}

/// Options for [`Server::start_with`].
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Use this data directory instead of a fresh one inside the server's temp dir.
    pub data_dir: Option<PathBuf>,
    /// Member name; defaults to "n1".
    pub name: Option<String>,
    pub extra_args: Vec<String>,
    /// Environment variables for the process (e.g. FAILPOINTS).
    pub env: Vec<(String, String)>,
}

/// One running member process. Killed (SIGKILL) on drop; if the test is panicking, the tails of
/// its stdout/stderr are printed and its directory is kept for inspection.
pub struct Server {
    spec: MemberSpec,
    env: Vec<(String, String)>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Server {
    /// Starts a single-member cluster of `flavor` in a fresh temp dir and waits until it serves
    /// KV requests. Panics with the server's log tail if it does not come up.
    pub async fn start(flavor: Flavor) -> Server {
        Self::start_with(flavor, StartOptions::default()).await
    }

    pub async fn start_with(flavor: Flavor, options: StartOptions) -> Server {
        match Self::try_start_with(flavor, options).await {
            Ok(server) => server,
            Err(e) => panic!("failed to start {flavor}: {e:#}"),
        }
    }

    pub async fn try_start_with(flavor: Flavor, options: StartOptions) -> Result<Server> {
        require_binary(flavor)?;
        let mut dir = tempfile::Builder::new()
            .prefix(&format!("oxcd-test-{flavor}-"))
            .tempdir()
            .context("creating the server's temp dir")?;
        let dir_path = dir.path().to_path_buf();
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| dir_path.join("data"));
        let mut last_error = None;
        // A port probed free can still be taken before the server binds it; new ports fix that.
        for _attempt in 0..3 {
            let spec = MemberSpec {
                flavor,
                name: options.name.clone().unwrap_or_else(|| "n1".into()),
                data_dir: data_dir.clone(),
                client_port: free_port(),
                peer_port: free_port(),
                extra_args: options.extra_args.clone(),
                cluster: None,
            };
            let mut server = Server::unstarted(spec, dir);
            server.env = options.env.clone();
            match server.launch_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let port_clash = server
                        .log_tail(200)
                        .to_lowercase()
                        .contains("address already in use");
                    server.stop_quietly();
                    dir = server.dir.take().expect("temp dir is owned until drop");
                    if !port_clash {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("could not find free ports")))
    }

    /// A member that is not running yet, logging into `dir` (which it owns from now on).
    pub(crate) fn unstarted(spec: MemberSpec, dir: tempfile::TempDir) -> Server {
        Server {
            spec,
            env: Vec::new(),
            dir_path: dir.path().to_path_buf(),
            dir: Some(dir),
            child: None,
            starts: 0,
        }
    }

    /// Sets (or with `None` removes) an environment variable for the next launches.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.env.retain(|(n, _)| n != name);
        if let Some(value) = value {
            self.env.push((name.to_string(), value.to_string()));
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.spec.flavor
    }

    /// Launches of this member from now on run `flavor`'s binary, on the same data dir, ports
    /// and flags: an upgrade (or downgrade) once the running process is stopped.
    pub fn set_flavor(&mut self, flavor: Flavor) {
        self.spec.flavor = flavor;
    }

    pub fn spec(&self) -> &MemberSpec {
        &self.spec
    }

    /// "127.0.0.1:PORT", the form etcd-client takes.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.spec.client_port)
    }

    /// "http://127.0.0.1:PORT", the form etcd's flags take.
    pub fn client_url(&self) -> String {
        self.spec.client_url()
    }

    pub fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    /// The temp dir holding the logs (and, by default, the data dir).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A client with bounded connect and request timeouts, so a dead server fails a test
    /// instead of hanging it.
    pub async fn client(&self) -> Client {
        connect(&self.endpoint(), Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connecting to {} at {}: {e}",
                    self.flavor(),
                    self.endpoint()
                )
            })
    }

    /// SIGKILL: no chance to flush anything that was not already durable.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; SIGKILLs and errors if it does not come.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("server is not running"))?;
        send_signal(child.id(), "TERM")?;
        match wait_timeout(&mut child, timeout)? {
            Some(status) => Ok(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM; log tail:\n{}",
                    self.flavor(),
                    self.log_tail(40)
                )
            }
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("server is not running"))?;
        match wait_timeout(child, timeout)? {
            Some(status) => {
                self.child = None;
                Ok(status)
            }
            None => bail!("{} still running after {timeout:?}", self.flavor()),
        }
    }

    /// Starts the member again on the same data dir and ports (after `kill` or `terminate`).
    pub async fn restart(&mut self) {
        if let Err(e) = self.try_restart().await {
            panic!("failed to restart {}: {e:#}", self.flavor());
        }
    }

    pub async fn try_restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("restart called while {} is still running", self.flavor());
        }
        self.child = None;
        self.launch_and_wait().await
    }

    /// Last `lines` lines of stderr and stdout, across all launches of this member.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["stderr.log", "stdout.log"] {
            let path = self.dir_path.join(name);
            out.push_str(&format!("--- {} ({}) ---\n", name, path.display()));
            out.push_str(&tail_of_file(&path, lines));
        }
        out
    }

    /// What the latest launch of this member has logged so far (stderr, then stdout).
    pub fn log_of_this_launch(&self) -> String {
        let marker = format!("===== launch #{} ", self.starts);
        ["stderr.log", "stdout.log"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir_path.join(name)).unwrap_or_default();
                match log.rfind(&marker) {
                    Some(at) => log[at..].to_string(),
                    None => String::new(),
                }
            })
            .collect()
    }

    async fn launch_and_wait(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready(Readiness::Linearizable, READY_TIMEOUT)
            .await
    }

    /// Starts the process without waiting for it to serve: the members of a multi-member cluster
    /// only become ready once enough of them run to elect a leader, so they are all spawned first
    /// (and a test may want a member that crashes before it ever serves).
    pub fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let mut stdout = open_log(&self.dir_path.join("stdout.log"))?;
        let mut stderr = open_log(&self.dir_path.join("stderr.log"))?;
        for f in [&mut stdout, &mut stderr] {
            writeln!(
                f,
                "===== launch #{} of {} =====",
                self.starts, self.spec.flavor
            )?;
        }
        let mut cmd = self.spec.command()?;
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", self.spec.flavor.binary()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the spawned process answers `readiness`'s probe. On timeout it is killed.
    pub(crate) async fn wait_ready(
        &mut self,
        readiness: Readiness,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_still_running()?;
            if probe_ready(&self.endpoint(), readiness).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail(40);
                self.stop_quietly();
                bail!(
                    "{} did not serve a {readiness:?} Range on {} within {timeout:?}\n{tail}",
                    self.spec.flavor,
                    self.endpoint()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An error carrying the command line and log tail if the process has exited.
    pub(crate) fn check_still_running(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.child = None;
            bail!(
                "{} exited before becoming ready ({status}); command: {:?}\n{}",
                self.spec.flavor,
                self.spec
                    .command()
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_default(),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    fn stop_quietly(&mut self) {
        self.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "\n===== {} member {} ({}) log tail =====\n{}",
                self.spec.flavor,
                self.spec.name,
                self.endpoint(),
                self.log_tail(60)
            );
            if let Some(dir) = self.dir.take() {
                eprintln!("===== kept its directory: {} =====", dir.keep().display());
            }
        }
    }
}

/// The body of `GET /metrics` on a plain-HTTP client port (`host:port`), asked as HTTP/1.0 so
/// etcd answers without chunked encoding.
pub async fn metrics_text(endpoint: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut connection = tokio::net::TcpStream::connect(endpoint).await?;
    connection
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await?;
    let mut reply = String::new();
    connection.read_to_string(&mut reply).await?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .context("an HTTP reply without a blank line")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics on {endpoint}: {head}");
    }
    Ok(body.to_owned())
}

/// Connects with bounded timeouts. etcd-client connects lazily, so this does not prove the
/// server is up; requests do.
pub async fn connect(endpoint: &str, request_timeout: Duration) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(request_timeout);
    Ok(Client::connect([endpoint], Some(options)).await?)
}

/// Which Range a starting member must answer before a test may use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// A linearizable Range only succeeds once the member has a leader and applies requests,
    /// which is what the tests need (a Status can answer earlier).
    Linearizable,
    /// A serializable Range is served from the member's own state; a learner refuses every
    /// linearizable request, so this is all it can show.
    Serializable,
}

async fn probe_ready(endpoint: &str, readiness: Readiness) -> bool {
    let options = match readiness {
        Readiness::Linearizable => None,
        Readiness::Serializable => Some(GetOptions::new().with_serializable()),
    };
    let attempt = async {
        let mut client = connect(endpoint, Duration::from_secs(1)).await.ok()?;
        match client.get("oxcd-test-readiness-probe", options).await {
            Ok(_) => Some(()),
            // With auth on, an anonymous read is refused only after it was served its read
            // barrier: the member is ready.
            Err(etcd_client::Error::GRpcStatus(s))
                if s.message() == "etcdserver: user name is empty" =>
            {
                Some(())
            }
            Err(_) => None,
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return "(no log file)\n".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// Sends a signal by name through kill(1); the harness avoids a libc dependency for one call.
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill(1)")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// A key as a client sees it: key, value, create revision, mod revision, version, lease.
pub type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

pub fn served(kv: &etcd_client::KeyValue) -> Kv {
    (
        kv.key().to_vec(),
        kv.value().to_vec(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    )
}

/// Runs a command-line tool (etcdctl, etcdutl, oxcdctl) to completion and returns its stdout;
/// panics with its stderr unless it succeeds. Inherited `ETCDCTL_*` variables are dropped:
/// etcdctl refuses a flag that an environment variable also sets.
pub fn run_ok(program: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `child` until it exits or `timeout` passes (`Ok(None)`).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `spec` to completion with output captured to `log_path`, for launches that are expected
/// to fail. If it is still running after `timeout` it is killed and that is reported as an error.
pub fn run_expecting_exit(
    spec: &MemberSpec,
    log_path: &Path,
    timeout: Duration,
) -> Result<(ExitStatus, String)> {
    let log = open_log(log_path)?;
    let mut child = spec
        .command()?
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawning the member")?;
    let status = wait_timeout(&mut child, timeout)?;
    let output = std::fs::read_to_string(log_path).unwrap_or_default();
    match status {
        Some(status) => Ok((status, output)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} was still running after {timeout:?}; output:\n{output}",
                spec.flavor
            )
        }
    }
}

/// The gRPC code (as tonic spells it, e.g. "OutOfRange") and message of a failed call, or
/// `None` when the error is not a gRPC status (transport failures and the like).
pub fn grpc_error(err: &etcd_client::Error) -> Option<(String, String)> {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            Some((format!("{:?}", status.code()), status.message().to_string()))
        }
        _ => None,
    }
}

/// Unwraps a result that must be a gRPC error and returns its (code, message).
pub fn expect_grpc_error<T: fmt::Debug>(
    result: std::result::Result<T, etcd_client::Error>,
    what: &str,
) -> (String, String) {
    match result {
        Ok(value) => panic!("{what}: expected a gRPC error, got Ok({value:?})"),
        Err(e) => grpc_error(&e)
            .unwrap_or_else(|| panic!("{what}: expected a gRPC status error, got {e:?}")),
    }
}

/// What a test body that ran in its own task failed with.
pub fn failure_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Runs `body` against a fresh etcd and then a fresh oxcd, so every assertion is checked against
/// the reference first: a test that fails on etcd is a wrong test, one that fails only on oxcd is
/// an oxcd bug. The panic message names the flavour that failed.
pub async fn for_both<F, Fut>(body: F)
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    require_etcd();
    against(Flavor::Etcd, body).await
}

/// [`for_both`] with another reference: etcd 3.7 where 3.6/3.7 changed what 3.4 did.
pub async fn against<F, Fut>(reference: Flavor, body: F)
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    for flavor in [reference, Flavor::Oxcd] {
        let server = Server::start(flavor).await;
        let target = Target {
            flavor,
            endpoint: server.endpoint(),
            client: server.client().await,
        };
        let outcome = tokio::spawn(body(target)).await;
        if let Err(e) = outcome {
            panic!("[against {flavor}] {}", failure_message(e));
        }
        drop(server);
    }
}

/// What a [`for_both`] body gets: which flavour it talks to and a connected client.
#[derive(Clone)]
pub struct Target {
    pub flavor: Flavor,
    pub endpoint: String,
    pub client: Client,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({} at {})", self.flavor, self.endpoint)
    }
}
