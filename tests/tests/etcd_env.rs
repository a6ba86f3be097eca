//! etcd's `ETCD_*` environment variables configure oxcd exactly as the flags do, so an etcd
//! systemd unit's environment file works unchanged.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxcd_tests::{connect, free_port, oxcd_bin};

#[tokio::test]
async fn etcd_environment_variables_configure_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let data_dir = dir.path().join("from-env");
    let mut child = Command::new(oxcd_bin())
        .env("ETCD_NAME", "env-member")
        .env("ETCD_DATA_DIR", &data_dir)
        .env(
            "ETCD_LISTEN_CLIENT_URLS",
            format!("http://127.0.0.1:{client}"),
        )
        .env(
            "ETCD_ADVERTISE_CLIENT_URLS",
            format!("http://127.0.0.1:{client}"),
        )
        .env("ETCD_LISTEN_PEER_URLS", format!("http://127.0.0.1:{peer}"))
        .env(
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            format!("http://127.0.0.1:{peer}"),
        )
        .env(
            "ETCD_INITIAL_CLUSTER",
            format!("env-member=http://127.0.0.1:{peer}"),
        )
        .env("ETCD_MAX_TXN_OPS", "2")
        .env("ETCD_LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let endpoint = format!("127.0.0.1:{client}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        if let Ok(mut c) = connect(&endpoint, Duration::from_secs(2)).await {
            if c.status().await.is_ok() {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "oxcd configured by ETCD_* never served {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        data_dir.join("oxcd.lock").exists(),
        "ETCD_DATA_DIR chose the data dir"
    );

    use etcd_client::{Txn, TxnOp};
    let three_ops = Txn::new().and_then([
        TxnOp::put("a", "1", None),
        TxnOp::put("b", "1", None),
        TxnOp::put("c", "1", None),
    ]);
    let err = c
        .txn(three_ops)
        .await
        .expect_err("ETCD_MAX_TXN_OPS=2 must refuse 3 ops");
    assert!(
        err.to_string()
            .contains("too many operations in txn request"),
        "{err}"
    );

    let _ = child.kill();
    let _ = child.wait();
}
