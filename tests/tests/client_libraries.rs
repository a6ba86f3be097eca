//! Client libraries' own test suites, run against oxcd as their authors run them against etcd.
//!
//! The `etcd-client` crate (the Rust client these tests use too) ships its tests in its
//! package; they expect one member on `localhost:2379` with `--auth-token-ttl=2` and the user
//! `root`/`rootpwd` holding the root role (its Justfile). Here they run from a copy of the
//! package, pointed at a member on a free port, first against etcd 3.7 (to show the setup
//! is right), then against oxcd.
//!
//! Python's `aetcd` ships its integration tests (auth, KV, leases, locks, watches, maintenance)
//! in its sdist; `tests/reference/prepare-aetcd.sh` installs the library and unpacks them. They
//! run with pytest against one member, etcd 3.7 first, then oxcd.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use oxcd_tests::{Flavor, Server, StartOptions};

/// The crate's auth tests, including the one that counts logins in `/metrics` read over plain
/// HTTP from the client port (`grpc_server_handled_total{grpc_method="Authenticate"}`).
const AUTH_TESTS: &[&str] = &[
    "test_auth",
    "test_auth_refresh_token",
    "test_auth_refresh_token_once_for_concurrent_calls",
    "test_role",
    "test_user",
];

/// Where this workspace's `etcd-client` package is unpacked (cargo's registry).
fn etcd_client_package() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(oxcd_tests::package_dir().join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {out:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "etcd-client")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("etcd-client is a dependency");
    Path::new(manifest).parent().unwrap().to_path_buf()
}

/// A writable copy of the package whose tests target `endpoint`, kept under `~/.cache` so
/// its build is reused.
fn prepared_copy(endpoint: &str) -> PathBuf {
    let source = etcd_client_package();
    let home = std::env::var("HOME").expect("HOME is set");
    let copy = Path::new(&home)
        .join(".cache/oxcd-clients")
        .join(source.file_name().unwrap());
    if !copy.join("Cargo.toml").exists() {
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        let ok = Command::new("cp")
            .arg("-r")
            .arg(&source)
            .arg(&copy)
            .status()
            .unwrap()
            .success();
        assert!(ok, "copying {}", source.display());
    }
    let testing = copy.join("tests/testing.rs");
    let text = std::fs::read_to_string(&testing).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("pub const DEFAULT_TEST_ENDPOINT"))
        .expect("the crate's tests name their endpoint")
        .to_string();
    let pointed = text.replace(
        &line,
        &format!("pub const DEFAULT_TEST_ENDPOINT: &str = \"{endpoint}\";"),
    );
    if pointed != text {
        std::fs::write(&testing, pointed).unwrap();
    }
    copy
}

/// Runs the auth tests against `flavor`; returns cargo's test output.
async fn run_auth_tests(flavor: Flavor) -> String {
    let server = Server::start_with(
        flavor,
        StartOptions {
            extra_args: vec!["--auth-token-ttl=2".into()],
            ..Default::default()
        },
    )
    .await;
    let endpoint = server.endpoint();
    // The setup of the crate's Justfile.
    for args in [
        vec!["user", "add", "root", "--new-user-password=rootpwd"],
        vec!["user", "grant-role", "root", "root"],
    ] {
        oxcd_tests::cluster::etcdctl(std::slice::from_ref(&endpoint), &args)
            .await
            .expect_ok();
    }
    let copy = prepared_copy(&endpoint);
    let home = std::env::var("HOME").unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = tokio::process::Command::new(cargo)
        .current_dir(&copy)
        .env(
            "CARGO_TARGET_DIR",
            Path::new(&home).join(".cache/oxcd-clients/target"),
        )
        .args(["test", "--test", "client", "--"])
        .args(AUTH_TESTS)
        .args(["--test-threads=1"])
        .output()
        .await
        .expect("cargo test runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "etcd-client's auth tests failed against {flavor}:\n{printed}\n{}",
        server.log_tail(40)
    );
    printed
}

#[tokio::test]
async fn etcd_client_crate_auth_tests_pass_against_oxcd_as_against_etcd() {
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let printed = run_auth_tests(flavor).await;
        for test in AUTH_TESTS {
            assert!(
                printed.contains(&format!("test {test} ... ok")),
                "{test} did not pass against {flavor}:\n{printed}"
            );
        }
    }
}

/// The aetcd release whose tests run (`tests/reference/prepare-aetcd.sh`'s default).
const AETCD_VERSION: &str = "1.0.0";
/// The test that logs in: a client made with a user name and password reads a key after
/// `etcdctl auth enable`.
const AETCD_AUTH_TEST: &str = "tests/integration/test_auth.py::test_auth";
/// The whole suite takes about a minute against either server (its watch, lease and lock tests
/// sleep); a hung test must not hang this one.
const AETCD_SUITE_TIMEOUT: Duration = Duration::from_secs(600);

/// `$AETCD_DIR`, else where `tests/reference/prepare-aetcd.sh` prepares aetcd; fails if the
/// script has not run.
fn aetcd_dir() -> PathBuf {
    let dir = std::env::var_os("AETCD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(format!(".cache/oxcd-clients/aetcd-{AETCD_VERSION}"))
        });
    assert!(
        dir.join("prepared").is_file(),
        "aetcd {AETCD_VERSION} and its tests are missing at {}; tests/reference/prepare-aetcd.sh \
         prepares them (./dev test runs that, or set AETCD_DIR to the directory it prints last)",
        dir.display()
    );
    dir
}

/// The tests of one pytest run (`-rA` summary lines), by outcome.
#[derive(Debug, Default)]
struct PytestOutcomes {
    passed: BTreeSet<String>,
    not_passed: BTreeSet<String>,
}

impl PytestOutcomes {
    fn parse(summary: &str) -> PytestOutcomes {
        let mut outcomes = PytestOutcomes::default();
        for line in summary.lines() {
            if let Some(test) = line.strip_prefix("PASSED ") {
                outcomes.passed.insert(test.to_string());
            } else if let Some(rest) = ["FAILED ", "ERROR "]
                .iter()
                .find_map(|outcome| line.strip_prefix(outcome))
            {
                // "FAILED tests/…::test_x - AssertionError: …"
                let test = rest.split(" - ").next().unwrap_or(rest);
                outcomes.not_passed.insert(test.to_string());
            }
        }
        outcomes
    }
}

/// Runs aetcd's integration tests against one `flavor` member; returns their outcomes and
/// pytest's output.
async fn run_aetcd_tests(flavor: Flavor, aetcd: &Path) -> (PytestOutcomes, String) {
    let server = Server::start_with(flavor, StartOptions::default()).await;
    // The tests' fixtures call `etcdctl` from PATH. The harness's etcdctl (3.4) rather than
    // 3.7's: test_snapshot checks the snapshot with `etcdctl snapshot status`, which etcdctl
    // 3.6+ no longer has (it prints its help and exits 0, and the test fails on etcd 3.7 too).
    let etcdctl_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        oxcd_tests::cluster::etcdctl_bin(),
        etcdctl_dir.path().join("etcdctl"),
    )
    .unwrap();
    let path = std::env::join_paths(std::iter::once(etcdctl_dir.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let mut pytest = tokio::process::Command::new(aetcd.join("venv/bin/pytest"));
    // etcdctl refuses a flag that an ETCDCTL_ variable also sets, and the fixtures pass
    // --endpoints.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            pytest.env_remove(key);
        }
    }
    let run = pytest
        .current_dir(aetcd.join("src"))
        .env("PATH", path)
        .env("TEST_ETCD_HTTP_URL", server.client_url())
        // Our plugin points aetcd.Client's default endpoint (test_auth's client) at the member.
        .env(
            "PYTHONPATH",
            oxcd_tests::package_dir().join("reference/aetcd"),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-p", "oxcd_aetcd_endpoint", "-p", "no:cacheprovider"])
        // Their addopts measure coverage of their sources; nothing here needs it.
        .args(["-o", "addopts=", "-rA", "tests/integration"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(AETCD_SUITE_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("aetcd's tests still running after {AETCD_SUITE_TIMEOUT:?}"))
        .expect("pytest runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // pytest exits 0 when all passed and 1 when some failed; anything else means the run
    // itself went wrong (a usage error, an internal error, no tests collected).
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "pytest did not run aetcd's tests against {flavor} ({}):\n{printed}\n{}",
        out.status,
        server.log_tail(40)
    );
    (PytestOutcomes::parse(&printed), printed)
}

#[tokio::test]
async fn aetcd_integration_tests_pass_against_oxcd_as_against_etcd() {
    let aetcd = aetcd_dir();
    // Calibration: with this setup every test that runs passes against etcd 3.7, so none is
    // calibrated away. Two are skipped against both, as aetcd's own tests skip them without
    // `--with-cluster`: test_member_list expects their three-member cluster, and
    // test_get_key_with_serializable is marked with it.
    let (on_etcd, etcd_printed) = run_aetcd_tests(Flavor::Etcd37, &aetcd).await;
    let (on_oxcd, oxcd_printed) = run_aetcd_tests(Flavor::Oxcd, &aetcd).await;
    for (flavor, outcomes, printed) in [
        (Flavor::Etcd37, &on_etcd, &etcd_printed),
        (Flavor::Oxcd, &on_oxcd, &oxcd_printed),
    ] {
        assert!(
            outcomes.passed.contains(AETCD_AUTH_TEST),
            "{AETCD_AUTH_TEST} did not pass against {flavor}:\n{printed}"
        );
    }
    let passed_on_etcd_only: Vec<_> = on_etcd.passed.difference(&on_oxcd.passed).collect();
    assert!(
        passed_on_etcd_only.is_empty(),
        "aetcd tests that pass against etcd 3.7 but not against oxcd: {passed_on_etcd_only:?}\n\
         {oxcd_printed}"
    );
    println!(
        "aetcd {AETCD_VERSION}: {} passed against etcd 3.7 (failed: {:?}), {} against oxcd \
         (failed: {:?})",
        on_etcd.passed.len(),
        on_etcd.not_passed,
        on_oxcd.passed.len(),
        on_oxcd.not_passed,
    );
}
