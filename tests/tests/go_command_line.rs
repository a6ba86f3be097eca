//! etcd's command line as tools write it for Go's flag package: single-dash long flags and
//! `unix://` client URLs. oxcd is started under the name `etcd` with the command line of
//! Kubernetes' integration-test framework (test/integration/framework/etcd.go since
//! kubernetes#131259: a client socket in the data dir, an unusable advertised URL, peer port
//! 0, `-log-level warn`), then driven by etcdctl 3.4 and 3.7 over the socket, as etcd 3.7 is.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use oxcd_tests::certs::Killed;
use oxcd_tests::{etcd37_bin, Flavor};

/// `binary` reachable as `<dir>/bin/etcd`, as tools find it on PATH.
fn named_etcd(binary: &Path, dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let etcd = bin.join("etcd");
    std::os::unix::fs::symlink(binary, &etcd).unwrap();
    etcd
}

fn etcdctl34(endpoint: &str, cwd: &Path, args: &[&str]) -> Output {
    Command::new("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .current_dir(cwd)
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("etcdctl 3.4 must be installed (Debian's etcd-client)")
}

fn etcdctl37(endpoint: &str, cwd: &Path, args: &[&str]) -> Output {
    Command::new(etcd37_bin().with_file_name("etcdctl"))
        .current_dir(cwd)
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("etcdctl 3.7 must be built (tests/reference/build-etcd.sh)")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `etcd` with `args` in `cwd` and waits until etcdctl 3.7 reaches it at `endpoint`.
fn start(etcd: &Path, cwd: &Path, args: &[&str], endpoint: &str) -> Killed {
    let process = Killed(
        Command::new(etcd)
            .current_dir(cwd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl37(endpoint, cwd, &["endpoint", "health"]);
        if out.status.success() {
            return process;
        }
        assert!(
            Instant::now() < deadline,
            "{} never served {endpoint}: {}",
            etcd.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What both etcdctls print for a few calls over `endpoint`, and whether the socket file is
/// gone once the member stopped.
fn session(etcd: &Path, cwd: &Path, args: &[&str], endpoint: &str, socket: &Path) -> Vec<String> {
    let mut member = start(etcd, cwd, args, endpoint);
    assert!(socket.exists(), "no socket at {}", socket.display());
    let mut seen = vec![
        stdout(&etcdctl34(endpoint, cwd, &["put", "k8s/a", "1"])),
        stdout(&etcdctl37(endpoint, cwd, &["put", "k8s/b", "2"])),
        stdout(&etcdctl34(endpoint, cwd, &["get", "k8s/", "--prefix"])),
        stdout(&etcdctl37(
            endpoint,
            cwd,
            &["get", "k8s/", "--prefix", "--keys-only"],
        )),
        stdout(&etcdctl34(endpoint, cwd, &["del", "k8s/a"])),
        stdout(&etcdctl37(
            endpoint,
            cwd,
            &["get", "k8s/", "--prefix", "--print-value-only"],
        )),
    ];
    // An etcd 3.4 client sends the endpoint URL as `:authority`; etcd 3.7's the socket path.
    for out in [
        etcdctl34(endpoint, cwd, &["endpoint", "health"]),
        etcdctl37(endpoint, cwd, &["endpoint", "health"]),
    ] {
        let printed = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(printed.contains("is healthy"), "{printed}");
    }
    let pid = member.0.id();
    oxcd_tests::send_signal(pid, "TERM").unwrap();
    let _ = oxcd_tests::wait_timeout(&mut member.0, Duration::from_secs(10));
    seen.push(format!("socket left behind: {}", socket.exists()));
    seen
}

/// Kubernetes' integration-test command line, verbatim but for the paths.
#[test]
fn kubernetes_integration_command_line_on_a_unix_socket() {
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let dir = tempfile::tempdir().unwrap();
        let etcd = named_etcd(&flavor.binary(), dir.path());
        let data = dir.path().join("integration_test_etcd_data");
        std::fs::create_dir(&data).unwrap();
        let socket = data.join("etcd.sock");
        let endpoint = format!("unix://{}", socket.display());
        let data_arg = data.display().to_string();
        let args = [
            "--data-dir",
            &data_arg,
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            "http://127.0.0.111:0",
            "--listen-peer-urls",
            "http://127.0.0.1:0",
            "-log-level",
            "warn",
        ];
        seen.push(session(&etcd, dir.path(), &args, &endpoint, &socket));
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
}

/// Single-dash flags with `=`, and etcd's `unix://host:port` form, which names a socket file
/// `host:port` in the working directory; a stale file there is replaced.
#[test]
fn single_dash_flags_and_a_relative_host_port_socket() {
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let dir = tempfile::tempdir().unwrap();
        let etcd = named_etcd(&flavor.binary(), dir.path());
        let socket = dir.path().join("localhost:23790");
        std::fs::write(&socket, b"stale").unwrap();
        let endpoint = "unix://localhost:23790";
        let args = [
            "-name=go-style",
            "-data-dir=data",
            &format!("-listen-client-urls={endpoint}"),
            &format!("-advertise-client-urls={endpoint}"),
            "-listen-peer-urls",
            "http://127.0.0.1:0",
            "-log-level=error",
        ];
        seen.push(session(&etcd, dir.path(), &args, endpoint, &socket));
        assert!(
            dir.path().join("data").is_dir(),
            "{flavor}: relative data dir"
        );
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
}

/// Three members whose client and peer URLs are all Unix sockets: members dial each other's
/// sockets. (etcd 3.7.3 started this way opens the sockets but never forms its cluster.)
#[test]
fn a_cluster_on_unix_sockets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let initial = (1..=3)
        .map(|i| format!("m{i}=unix://{d}/p{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<Killed> = (1..=3)
        .map(|i| {
            let (client, peer) = (format!("unix://{d}/c{i}"), format!("unix://{d}/p{i}"));
            Killed(
                Command::new(Flavor::Oxcd.binary())
                    .args(["-name", &format!("m{i}"), "-data-dir", &format!("{d}/d{i}")])
                    .args([
                        "-listen-client-urls",
                        &client,
                        "-advertise-client-urls",
                        &client,
                    ])
                    .args([
                        "-listen-peer-urls",
                        &peer,
                        "-initial-advertise-peer-urls",
                        &peer,
                    ])
                    .args(["-initial-cluster", &initial, "-log-level", "error"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let endpoint = |i: u32| format!("unix://{d}/c{i}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl37(&endpoint(2), dir.path(), &["put", "k", "v"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the cluster never took a write");
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in [1, 3] {
        let got = etcdctl34(
            &endpoint(i),
            dir.path(),
            &["get", "k", "--print-value-only"],
        );
        assert_eq!(stdout(&got), "v\n", "member {i}");
    }
    let list = stdout(&etcdctl37(&endpoint(3), dir.path(), &["member", "list"]));
    for i in 1..=3 {
        assert!(
            list.contains(&format!(
                ", started, m{i}, unix://{d}/p{i}, unix://{d}/c{i}, false"
            )),
            "{list}"
        );
    }
    drop(members);
}

/// A unixs:// client URL: TLS on a Unix socket, gRPC and HTTP on it, as etcd 3.7 serves it.
#[test]
fn a_unixs_client_url_serves_grpc_and_http_over_tls() {
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let dir = tempfile::tempdir().unwrap();
        oxcd_tests::certs::make_certificates(dir.path());
        let file = |name: &str| dir.path().join(name).display().to_string();
        let endpoint = "unixs://localhost:4001";
        let args = [
            "-data-dir=data",
            &format!("-listen-client-urls={endpoint}"),
            &format!("-advertise-client-urls={endpoint}"),
            "-listen-peer-urls=http://127.0.0.1:0",
            "-cert-file",
            &file("server.crt"),
            "-key-file",
            &file("server.key"),
            "-log-level=error",
        ];
        let process = Killed(
            Command::new(flavor.binary())
                .current_dir(dir.path())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // The test server certificate names 127.0.0.1, not the socket: no verification.
        let insecure = ["--insecure-skip-tls-verify", "put", "k", "v"];
        let deadline = Instant::now() + Duration::from_secs(30);
        let put = loop {
            let out = etcdctl37(endpoint, dir.path(), &insecure);
            if out.status.success() || Instant::now() >= deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let get = etcdctl37(
            endpoint,
            dir.path(),
            &[
                "--insecure-skip-tls-verify",
                "get",
                "k",
                "--print-value-only",
            ],
        );
        let livez = Command::new("curl")
            .current_dir(dir.path())
            .args(["-sSk", "--unix-socket", "localhost:4001"])
            .args(["--http1.1", "https://localhost/livez"])
            .output()
            .unwrap();
        seen.push((stdout(&put), stdout(&get), stdout(&livez)));
        drop(process);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
}
