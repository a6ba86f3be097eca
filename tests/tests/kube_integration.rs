//! A short subset of Kubernetes' own integration tests (v1.37.2, compiled by
//! `tests/reference/build-kube-integration.sh`) on a fresh single member: each starts an
//! apiserver in-process on the store at `KUBE_INTEGRATION_ETCD_URL` and checks what it stores,
//! lists and watches. They run on etcd 3.7 first, as calibration, then on oxcd; every one must
//! pass on both. `tests/reference/run-kube-integration.sh` runs the whole packages.

use std::path::PathBuf;
use std::process::Command;

use oxcd_tests::{against, Flavor, Target};

const KUBERNETES_VERSION: &str = "1.37.2";

/// (test/integration package, its tests): store-heavy ones that take seconds each.
const SUBSET: &[(&str, &[&str])] = &[
    // A namespace's watch events through its deletion; a reflector's watch-list (a watch that
    // streams the initial state, ended by a progress notification from the store it starts with
    // `--watch-progress-notify-interval`) falling back to a list.
    (
        "apimachinery",
        &["TestWatchNamespaceEvent", "TestReflectorWatchListFallback"],
    ),
    // Paginated lists with continue tokens (with and without a label selector), lists at
    // resource version 0, and the watch cache of two stores (events on their own) kept current
    // by watches with progress notifications.
    (
        "apiserver",
        &[
            "TestAPIListChunking",
            "TestAPIListChunkingWithLabelSelector",
            "TestListResourceVersion0",
            "TestWatchCacheUpdatedByEtcd",
        ],
    ),
];

/// How long one package's tests may take (go test's own `-timeout`, which then fails them with
/// a goroutine dump).
const PACKAGE_TIMEOUT: &str = "5m";

/// `$KUBE_INTEGRATION_BIN_DIR`, else where `build-kube-integration.sh` puts the test binaries
/// and the trees they run in.
fn build_dir() -> PathBuf {
    std::env::var_os("KUBE_INTEGRATION_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(format!(
                ".cache/oxcd-reference/kube-integration-v{KUBERNETES_VERSION}"
            ))
        })
}

fn test_binary(package: &str) -> PathBuf {
    let binary = build_dir().join(format!("{package}.test"));
    assert!(
        binary.is_file(),
        "{} is missing; tests/reference/build-kube-integration.sh builds it (./dev test runs \
         that, or set KUBE_INTEGRATION_BIN_DIR)",
        binary.display()
    );
    binary
}

/// Runs `tests` of `package` on the store at `target`, panicking with the output's tail unless
/// each passed.
fn run_upstream(target: &Target, package: &str, tests: &[&str]) {
    // framework.RunCustomEtcd starts the `etcd` on PATH for the tests that want stores of their
    // own; make that the flavour under test too.
    let shim = tempfile::Builder::new()
        .prefix("oxcd-test-kube-integration-")
        .tempdir()
        .unwrap();
    std::os::unix::fs::symlink(target.flavor.binary(), shim.path().join("etcd")).unwrap();
    let path = std::env::join_paths(std::iter::once(shim.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();

    let started = std::time::Instant::now();
    let output = Command::new(test_binary(package))
        .args(["-test.v", "-test.timeout", PACKAGE_TIMEOUT, "-test.run"])
        .arg(format!("^({})$", tests.join("|")))
        .env(
            "KUBE_INTEGRATION_ETCD_URL",
            format!("http://{}", target.endpoint),
        )
        .env("PATH", path)
        // Where build-kube-integration.sh says to run them.
        .env("TEST_SRCDIR", build_dir().join("trimpath"))
        .env("TEST_WORKSPACE", ".")
        .current_dir(build_dir().join("src/test/integration").join(package))
        .output()
        .unwrap_or_else(|e| panic!("running {package}.test: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tail = || {
        let log = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    };
    for test in tests {
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with(&format!("--- PASS: {test} ("))),
            "{package}/{test} did not pass on {}; the output's tail:\n{}",
            target.flavor,
            tail()
        );
    }
    assert!(
        output.status.success(),
        "{package}.test exited with {} on {}; the output's tail:\n{}",
        output.status,
        target.flavor,
        tail()
    );
    eprintln!(
        "[{}] {package}: {} passed in {:.1}s",
        target.flavor,
        tests.join(", "),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_storage_tests_pass_on_a_single_member() {
    against(Flavor::Etcd37, |target: Target| async move {
        tokio::task::spawn_blocking(move || {
            for (package, tests) in SUBSET {
                run_upstream(&target, package, tests);
            }
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    })
    .await;
}
