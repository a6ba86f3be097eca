//! etcd flags oxcd takes are honoured, not merely accepted: where the write-ahead log lives
//! (`--wal-dir`), where logs go (`--log-outputs`) and in which format (`--log-format`),
//! `--unsafe-no-fsync`; etcd 3.6's un-prefixed names start oxcd as they start etcd 3.7, and the
//! `--experimental-*` names etcd 3.7 removed are refused by both alike.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use oxcd_tests::{
    free_port, grpc_error, run_expecting_exit, Flavor, MemberSpec, Server, StartOptions,
};

fn options(args: &[&str]) -> StartOptions {
    StartOptions {
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

/// Starts `flavor` with `args` where it is expected to exit at once; its exit and output.
async fn refused(flavor: Flavor, args: &[&str], dir: &Path) -> (ExitStatus, String) {
    let spec = MemberSpec {
        flavor,
        name: "n1".into(),
        data_dir: dir.join(format!("{flavor}-data")),
        client_port: free_port(),
        peer_port: free_port(),
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        cluster: None,
    };
    let log = dir.join(format!("{flavor}.log"));
    tokio::task::spawn_blocking(move || run_expecting_exit(&spec, &log, Duration::from_secs(15)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{flavor} was not refused: {e:#}"))
}

/// A put and a get through `server`, as a member that serves answers them.
async fn serves(server: &Server) {
    let mut client = server.client().await;
    client.put("flags/k", "v", None).await.unwrap();
    let got = client.get("flags/k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v", "{}", server.flavor());
}

/// etcd 3.6's un-prefixed names (3.7 has no other), in both flag syntaxes Go takes: etcd 3.7
/// and oxcd both start with them and serve.
#[tokio::test]
async fn etcd36_flag_names_start_both() {
    let args = [
        "--watch-progress-notify-interval=5s",
        "--snapshot-catchup-entries=100",
        "--max-learners=2",
        "--warning-apply-duration=200ms",
        "--warning-unary-request-duration=300ms",
        "--compaction-batch-limit=1000",
        "--compact-hash-check-time=2m",
        "--corrupt-check-time=0s",
        "-max-concurrent-streams=100",
        "-grpc-keepalive-interval",
        "1h",
        "--grpc-keepalive-timeout=10s",
        "--peer-skip-client-san-verification=false",
        "--downgrade-check-time=5s",
        "--v2-deprecation=write-only",
        "--feature-gates=StopGRPCServiceOnDefrag=true",
        "--unsafe-no-fsync",
    ];
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let server = Server::start_with(flavor, options(&args)).await;
        serves(&server).await;
    }
}

/// --compaction-batch-limit and --compaction-sleep-interval pace a physical compaction: 99
/// revisions in batches of 10 with 100 ms between batches take at least 0.9 s on both.
#[tokio::test]
async fn compaction_is_paced_by_its_flags() {
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let server = Server::start_with(
            flavor,
            options(&[
                "--compaction-batch-limit=10",
                "--compaction-sleep-interval=100ms",
            ]),
        )
        .await;
        let mut client = server.client().await;
        let mut revision = 0;
        for i in 0..100 {
            let put = client.put("paced", i.to_string(), None).await.unwrap();
            revision = put.header().unwrap().revision();
        }
        let started = std::time::Instant::now();
        let options = etcd_client::CompactionOptions::new().with_physical();
        client.compact(revision, Some(options)).await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(850),
            "{flavor} compacted in {took:?}"
        );
    }
}

/// --max-learners caps the learners `member add --learner` may add, with etcd's error past it.
#[tokio::test]
async fn max_learners_caps_learners_as_in_etcd() {
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        for (args, allowed) in [(&[][..], 1), (&["--max-learners=2"][..], 2)] {
            let server = Server::start_with(flavor, options(args)).await;
            let mut client = server.client().await;
            let mut outcomes = Vec::new();
            for _ in 0..3 {
                // Learners that never start: they hold no vote, so the member keeps its quorum.
                let url = format!("http://127.0.0.1:{}", free_port());
                let learner = etcd_client::MemberAddOptions::new().with_is_learner();
                let added = client.member_add([url], Some(learner)).await;
                outcomes.push(added.map(|_| ()).map_err(|e| grpc_error(&e)));
            }
            let refused = Err(Some((
                "FailedPrecondition".to_string(),
                "etcdserver: too many learner members in cluster".to_string(),
            )));
            let expected: Vec<_> = (0..3)
                .map(|i| if i < allowed { Ok(()) } else { refused.clone() })
                .collect();
            assert_eq!(outcomes, expected, "{flavor} {args:?}");
        }
    }
}

/// `POST /v3/kv/range` on `server`'s client URL: the status and body.
fn gateway_range(server: &Server) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args(["-d", r#"{"key":"YQ=="}"#])
        .arg(format!("{}/v3/kv/range", server.client_url()))
        .output()
        .expect("curl must be installed");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = printed.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// --enable-grpc-gateway=false takes the JSON gateway off the client port: `/v3/` gets the 404
/// of any unknown path, on both.
#[tokio::test]
async fn the_grpc_gateway_can_be_turned_off() {
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let on = Server::start(flavor).await;
        let (status, body) = gateway_range(&on);
        assert_eq!(status, 200, "{flavor}: {body}");
        let off = Server::start_with(flavor, options(&["--enable-grpc-gateway=false"])).await;
        assert_eq!(
            gateway_range(&off),
            (404, "404 page not found\n".to_string()),
            "{flavor}"
        );
        serves(&off).await;
    }
}

/// The `--experimental-*` names etcd 3.6 still took and 3.7 removed: both refuse them at start
/// with Go's flag error and exit code 2.
#[tokio::test]
async fn removed_experimental_flags_are_refused_by_both() {
    let dir = tempfile::tempdir().unwrap();
    for flag in [
        "--experimental-watch-progress-notify-interval=5s",
        "--experimental-compaction-batch-limit=10",
        "--experimental-initial-corrupt-check=true",
        "--experimental-snapshot-catchup-entries=100",
        "--experimental-enable-distributed-tracing",
    ] {
        let name = flag.trim_start_matches('-').split('=').next().unwrap();
        for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
            let (status, output) = refused(flavor, &[flag], dir.path()).await;
            assert_eq!(status.code(), Some(2), "{flavor} {flag}:\n{output}");
            assert!(
                output.contains(&format!("flag provided but not defined: -{name}")),
                "{flavor} {flag}:\n{output}"
            );
        }
    }
    // A malformed value: refused with Go's wording by both.
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let (status, output) = refused(flavor, &["--max-learners=x"], dir.path()).await;
        assert_eq!(status.code(), Some(2), "{flavor}:\n{output}");
        assert!(
            output.contains("invalid value \"x\" for flag -max-learners"),
            "{flavor}:\n{output}"
        );
    }
}

/// A flag of etcd's that oxcd cannot honour is refused by name when set, never ignored; etcd's
/// own refusal of a bad --log-format is matched too.
#[tokio::test]
async fn flags_oxcd_cannot_honour_stop_it_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, message) in [
        ("--max-wals=10", "--max-wals=10 is not supported by oxcd"),
        (
            "--force-new-cluster",
            "--force-new-cluster=true is not supported by oxcd",
        ),
        (
            "--enable-pprof",
            "--enable-pprof=true is not supported by oxcd",
        ),
    ] {
        let (status, output) = refused(Flavor::Oxcd, &[flag], dir.path()).await;
        assert_eq!(status.code(), Some(1), "{flag}:\n{output}");
        assert!(output.contains(message), "{flag}:\n{output}");
    }
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let (status, output) = refused(flavor, &["--log-format=xml"], dir.path()).await;
        assert_eq!(status.code(), Some(1), "{flavor}:\n{output}");
        assert!(
            output.contains("unknown log format: xml, supported values json, console"),
            "{flavor}:\n{output}"
        );
    }
}

/// The JSON log lines of `server`'s launches so far: every line of its stderr that is one.
fn json_lines(server: &Server) -> Vec<String> {
    let stderr = std::fs::read_to_string(server.dir().join("stderr.log")).unwrap();
    stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect()
}

/// The keys of a JSON log line in the order they are written, checking it parses.
fn keys_in_order(line: &str) -> Vec<String> {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let mut keys: Vec<(usize, String)> = value
        .as_object()
        .unwrap()
        .keys()
        .map(|k| {
            (
                line.find(&format!("{}:", serde_json::Value::from(k.as_str())))
                    .unwrap(),
                k.clone(),
            )
        })
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

/// etcd's default log format is zap's JSON: every line an object that starts with `level`,
/// `ts`, (for a library's lines, `logger`), `caller` and `msg`, then the fields. oxcd writes
/// the same shape.
#[tokio::test]
async fn json_logs_have_etcds_keys() {
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let server = Server::start_with(flavor, options(&["--log-level=info"])).await;
        let lines = json_lines(&server);
        assert!(lines.len() >= 2, "{flavor} logged {lines:?}");
        for line in &lines {
            let mut keys = keys_in_order(line);
            if keys[2] == "logger" {
                keys.remove(2);
            }
            assert_eq!(
                keys[..4],
                ["level", "ts", "caller", "msg"],
                "{flavor}: {line}"
            );
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let ts = value["ts"].as_str().unwrap();
            assert!(
                ts.len() == 27 && ts.ends_with('Z') && &ts[10..11] == "T",
                "{flavor}: ts {ts}"
            );
            assert!(
                ["debug", "info", "warn", "error"].contains(&value["level"].as_str().unwrap()),
                "{flavor}: {line}"
            );
        }
    }
    // --log-format console: no JSON at all.
    let server = Server::start_with(
        Flavor::Oxcd,
        options(&["--log-level=info", "--log-format=console"]),
    )
    .await;
    assert!(json_lines(&server).is_empty());
    // The whole log: at info level openraft may have said more than a tail holds since. The
    // line comes just after the client port opens, so a busy machine may not have written it
    // when the first request is answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_tail(100_000).contains("oxcd is serving") {
        assert!(
            Instant::now() < deadline,
            "no \"oxcd is serving\" in the console log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// --unsafe-no-fsync is loudly logged at start, and writes work (and survive a clean restart,
/// which hands everything to the OS).
#[tokio::test]
async fn unsafe_no_fsync_warns_and_serves() {
    let mut server = Server::start_with(
        Flavor::Oxcd,
        options(&["--unsafe-no-fsync", "--log-level=warn"]),
    )
    .await;
    let warning = json_lines(&server)
        .into_iter()
        .find(|l| l.contains("--unsafe-no-fsync"))
        .expect("no warning about --unsafe-no-fsync");
    let warning: serde_json::Value = serde_json::from_str(&warning).unwrap();
    assert_eq!(warning["level"], "warn");
    assert!(warning["msg"].as_str().unwrap().contains("never fsynced"));
    serves(&server).await;
    server.terminate(Duration::from_secs(15)).unwrap();
    server.restart().await;
    let mut client = server.client().await;
    assert_eq!(
        client.get("flags/k", None).await.unwrap().kvs()[0].value(),
        b"v"
    );
}

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
    // The member may answer the readiness probe a moment before it logs that it serves.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let written = loop {
        let written = std::fs::read_to_string(&file).unwrap();
        if written.contains("oxcd is serving") || std::time::Instant::now() > deadline {
            break written;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(written.contains("oxcd is serving"), "{written}");
    assert!(server.log_tail(100).contains("oxcd is serving"));
}
