//! Client libraries' own test suites, run against oxcd as their authors run them against etcd.
//!
//! The `etcd-client` crate (the Rust client these tests use too) ships its tests in its
//! package; they expect one member on `localhost:2379` with `--auth-token-ttl=2` and the user
//! `root`/`rootpwd` holding the root role (its Justfile). Here they run from a copy of the
//! package, pointed at a member on a free port, first against etcd 3.7 (to show the setup
//! is right), then against oxcd.

use std::path::{Path, PathBuf};
use std::process::Command;

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
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
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
