//! etcd flags oxcd takes are honoured, not merely accepted: where the write-ahead log lives
//! (`--wal-dir`) and where logs go (`--log-outputs`).

use std::time::Duration;

use oxcd_tests::{run_expecting_exit, Flavor, MemberSpec, Server, StartOptions};

/// The Raft log's write-ahead log (every append's fsync) is in --wal-dir, and a data dir that
/// was created with one is refused without it, instead of starting without its log.
#[tokio::test]
async fn the_write_ahead_log_lives_in_the_wal_dir() {
    let wal = tempfile::tempdir().unwrap();
    let wal_dir = wal.path().join("wal");
    let mut server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            extra_args: vec![format!("--wal-dir={}", wal_dir.display())],
            ..Default::default()
        },
    )
    .await;
    let mut client = server.client().await;
    client.put("k", "kept", None).await.unwrap();
    drop(client);
    server.terminate(Duration::from_secs(15)).unwrap();
    let logs: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".log"))
        .collect();
    assert!(
        !logs.is_empty(),
        "no write-ahead log in {}",
        wal_dir.display()
    );

    let without = MemberSpec {
        extra_args: Vec::new(),
        ..server.spec().clone()
    };
    let log = server.dir().join("without-wal-dir.log");
    let (status, output) = tokio::task::spawn_blocking(move || {
        run_expecting_exit(&without, &log, Duration::from_secs(15))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        !status.success(),
        "started without its --wal-dir:\n{output}"
    );
    assert!(
        output.contains("--wal-dir")
            && output.contains(&wal_dir.canonicalize().unwrap().display().to_string()),
        "the refusal names the WAL dir to start with:\n{output}"
    );

    server.restart().await;
    let mut client = server.client().await;
    let kept = client.get("k", None).await.unwrap();
    assert_eq!(kept.kvs()[0].value(), b"kept");
}

/// --log-outputs writes every log line to each output, files included.
#[tokio::test]
async fn logs_go_to_every_log_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oxcd.log");
    let server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            extra_args: vec![format!("--log-outputs={},stderr", file.display())],
            env: vec![("OXCD_LOG".into(), "info".into())],
            ..Default::default()
        },
    )
    .await;
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("oxcd is serving"), "{written}");
    assert!(server.log_tail(100).contains("oxcd is serving"));
}
