//! The real Kubernetes control plane (v1.37.2, built from the Go module proxy by
//! `tests/reference/build-kubernetes.sh`) against a store: kube-apiserver on any `--etcd-servers`,
//! kube-controller-manager and kube-scheduler beside it, and the real kubectl as its admin.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::certs::{openssl, Killed};
use crate::{free_port, kube_bin_dir, send_signal, wait_timeout};

/// Startup runs post-start hooks that write the bootstrap objects (priority levels, the
/// `kubernetes` Service, system namespaces); on a loaded two-core machine that takes a while.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// A graceful stop drains requests and closes watches; with no shutdown delay it takes seconds.
const APISERVER_STOP_TIMEOUT: Duration = Duration::from_secs(60);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN_TOKEN: &str = "oxcd-test-admin-token";
/// What Kubernetes' protobuf serializer writes before every stored object.
pub const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// A Kubernetes binary from [`kube_bin_dir`]; a missing one fails the test, naming what builds it.
pub fn kube_binary(name: &str) -> PathBuf {
    let path = kube_bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing; tests/reference/build-kubernetes.sh builds it (./dev test runs that, or \
         set KUBE_BIN_DIR)",
        path.display()
    );
    path
}

/// A kube-apiserver process on `--etcd-servers`, serving HTTPS on a free port with a self-signed
/// certificate it makes itself. Killed on drop; its log tail is printed if the test panics.
pub struct ApiServer {
    process: Killed,
    dir: PathBuf,
    port: u16,
}

impl ApiServer {
    /// Starts kube-apiserver on `etcd_servers` (comma-separated client URLs) with `extra_args`,
    /// its keys, certificates, logs and kubeconfig in `dir`. Does not wait for it.
    pub fn start(etcd_servers: &str, dir: &Path, extra_args: &[&str]) -> ApiServer {
        // Service account tokens need a signing key; the apiserver refuses to start without one.
        openssl(dir, &["genrsa", "-out", "sa.key", "2048"]);
        openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("kube-apiserver.log")).unwrap();
        let process = Command::new(kube_binary("kube-apiserver"))
            .arg(format!("--etcd-servers={etcd_servers}"))
            .arg("--etcd-prefix=/registry")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            // Only published in the `kubernetes` Service's endpoints, which nothing here dials;
            // a loopback address would be refused by their validation.
            .arg("--advertise-address=198.51.100.1")
            .arg(format!("--cert-dir={}", dir.join("serving").display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=AlwaysAllow")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning kube-apiserver");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: oxcd\n  cluster:\n    \
             server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\n\
             contexts:\n- name: oxcd\n  context:\n    cluster: oxcd\n    user: admin\n\
             current-context: oxcd\n"
        );
        std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
        ApiServer {
            process: Killed(process),
            dir: dir.to_path_buf(),
            port,
        }
    }

    /// [`ApiServer::start`], then waits until it is ready; `label` names the store in the log line
    /// that says how long that took.
    pub fn start_ready(
        etcd_servers: &str,
        dir: &Path,
        extra_args: &[&str],
        label: &str,
    ) -> ApiServer {
        let mut apiserver = ApiServer::start(etcd_servers, dir, extra_args);
        let started = Instant::now();
        apiserver.wait_ready();
        eprintln!(
            "[{label}] kube-apiserver ready after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        apiserver
    }

    /// The HTTPS URL it serves (a self-signed certificate).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A bearer token of a `system:masters` user.
    pub fn admin_token(&self) -> &'static str {
        ADMIN_TOKEN
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.dir.join("kubeconfig"),
            dir: self.dir.clone(),
        }
    }

    /// Starts kube-controller-manager or kube-scheduler against this apiserver as its admin,
    /// serving its own health port on a free port, with `extra_args` after those. Killed on drop.
    pub fn start_component(&self, name: &str, extra_args: &[&str]) -> Killed {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let process = Command::new(kube_binary(name))
            .arg(format!(
                "--kubeconfig={}",
                self.dir.join("kubeconfig").display()
            ))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Killed(process)
    }

    /// Polls /readyz (all post-start hooks done, storage reachable) until it answers "ok".
    pub fn wait_ready(&mut self) {
        let kubectl = self.kubectl();
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.process.0.try_wait() {
                panic!("kube-apiserver exited before it was ready ({status})");
            }
            let out = kubectl.run(&["get", "--raw=/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver on port {} not ready within {APISERVER_READY_TIMEOUT:?}: {}",
                self.port,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM, as an operator stops it, and waits for its graceful exit: once this returns it
    /// writes nothing more to the store.
    pub fn stop(&mut self) {
        send_signal(self.process.0.id(), "TERM").unwrap();
        let status = wait_timeout(&mut self.process.0, APISERVER_STOP_TIMEOUT).unwrap();
        assert!(
            status.is_some(),
            "kube-apiserver still running {APISERVER_STOP_TIMEOUT:?} after SIGTERM"
        );
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ] {
                if self.dir.join(format!("{name}.log")).exists() {
                    eprintln!(
                        "\n===== {name} log tail ({}) =====\n{}",
                        self.dir.display(),
                        self.log_tail(name, 60)
                    );
                }
            }
        }
    }
}

/// The real kubectl with a kubeconfig for the admin token, every call bounded in time.
pub struct Kubectl {
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    /// kubectl for a plain-HTTP server at `url` with no credentials (oxcd-kube's front end).
    pub fn for_server(url: &str, dir: &Path) -> Kubectl {
        let name: String = url
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let kubeconfig = dir.join(format!("kubeconfig-{name}"));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: server\n  cluster:\n    \
             server: {url}\nusers:\n- name: anonymous\n  user: {{}}\n\
             contexts:\n- name: server\n  context:\n    cluster: server\n    user: anonymous\n\
             current-context: server\n"
        );
        std::fs::write(&kubeconfig, config).unwrap();
        Kubectl {
            kubeconfig,
            dir: dir.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kube_binary("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs to completion (output captured in files, so a chatty call cannot block on a pipe);
    /// killed and reported if it outlives [`KUBECTL_TIMEOUT`].
    pub fn run(&self, args: &[&str]) -> Output {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let stdout_path = self.dir.join(format!("kubectl-{n}.out"));
        let stderr_path = self.dir.join(format!("kubectl-{n}.err"));
        let mut child = self
            .command(args)
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawning kubectl");
        let status = match wait_timeout(&mut child, KUBECTL_TIMEOUT).unwrap() {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kubectl {args:?} still running after {KUBECTL_TIMEOUT:?}");
            }
        };
        Output {
            status,
            stdout: std::fs::read(&stdout_path).unwrap(),
            stderr: std::fs::read(&stderr_path).unwrap(),
        }
    }

    /// Runs a call that must succeed and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a call that must fail and returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "kubectl {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }

    /// A call that must succeed, with `-o json` added, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// `kubectl create -f` of a manifest; see [`Kubectl::with_manifest`].
    pub fn create(&self, manifest: &serde_json::Value) -> String {
        self.with_manifest("create", manifest)
    }

    /// `kubectl <verb> -f` of a manifest written to a file, without client-side validation (a
    /// server may publish no OpenAPI); stdout and stderr together, whether it succeeded or not.
    pub fn with_manifest(&self, verb: &str, manifest: &serde_json::Value) -> String {
        let file = tempfile::Builder::new()
            .suffix(".json")
            .tempfile_in(&self.dir)
            .unwrap();
        std::fs::write(file.path(), manifest.to_string()).unwrap();
        let path = file.path().display().to_string();
        let out = self.run(&[verb, "--validate=false", "-f", &path]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text + &String::from_utf8_lossy(&out.stderr)
    }

    /// A long-running call whose stdout lines arrive on the returned channel.
    pub fn stream(&self, args: &[&str]) -> (Killed, mpsc::Receiver<String>) {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning kubectl");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (Killed(child), rx)
    }
}

/// A fresh directory for one apiserver's files.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxcd-test-kube-")
        .tempdir()
        .unwrap()
}

/// A Node as a kubelet would register it, ready and with room for pods. Unless something renews
/// its Lease (see `kube_control_plane.rs`'s kubelet), the node lifecycle controller marks it
/// unreachable after its grace period (40 s).
pub const NODE: &str = "fake-node";

pub fn register_node(kubectl: &Kubectl, dir: &Path) {
    let manifest = dir.join("node.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n  labels:\n    \
             kubernetes.io/hostname: {NODE}\n"
        ),
    )
    .unwrap();
    kubectl.ok(&["create", "-f", &manifest.display().to_string()]);
    let resources = r#"{"cpu":"8","memory":"32Gi","pods":"110"}"#;
    kubectl.ok(&[
        "patch",
        "node",
        NODE,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"capacity":{resources},"allocatable":{resources},"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"simulated"}}]}}}}"#
        ),
    ]);
}

/// Polls `probe` every half second until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
