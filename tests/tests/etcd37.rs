//! Rules etcd 3.6/3.7 has (and 3.4 had otherwise, or oxcd got wrong), run against real etcd 3.7
//! (built from the Go module proxy by `tests/reference/build-etcd.sh`) and oxcd: whatever etcd
//! answers, oxcd must answer the same. Raw gRPC clients, so every field and error is seen as
//! sent.

use std::time::Duration;

use oxcd_proto::etcdserverpb::{
    alarm_request::AlarmAction,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    maintenance_client::MaintenanceClient,
    request_op::Request,
    watch_client::WatchClient,
    watch_request::RequestUnion,
    AlarmRequest, AlarmType, CompactionRequest, Compare, DefragmentRequest, DeleteRangeRequest,
    HashKvRequest, LeaseGrantRequest, MoveLeaderRequest, PutRequest, RangeRequest, RequestOp,
    StatusRequest, TxnRequest, TxnResponse, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use oxcd_tests::{free_port, wait_timeout, Flavor, Server, StartOptions};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const REFERENCE: Flavor = Flavor::Etcd37;

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.client_url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A fresh etcd 3.7 member and a fresh oxcd member, with `args`.
async fn both(args: &[String]) -> [Server; 2] {
    let start = |flavor| {
        Server::start_with(
            flavor,
            StartOptions {
                extra_args: args.to_vec(),
                ..Default::default()
            },
        )
    };
    let (etcd, oxcd) = tokio::join!(start(REFERENCE), start(Flavor::Oxcd));
    [etcd, oxcd]
}

/// A call's outcome as a comparable string: its result's fields of interest, or its error.
fn outcome<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    ok: impl Fn(T) -> String,
) -> String {
    match result {
        Ok(resp) => ok(resp.into_inner()),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// etcd 3.7's HashKV over a history with two compactions, at every revision that matters:
/// the compaction revision is answered from the hash taken by the compaction (3.4 refused it),
/// a negative revision hashes nothing, and below the compaction point it is refused.
#[tokio::test]
async fn hash_kv_matches_etcd_across_compactions() {
    let mut tables = Vec::new();
    for server in both(&[]).await {
        let ch = channel(&server).await;
        let (mut kv, mut m) = (KvClient::new(ch.clone()), MaintenanceClient::new(ch));
        let mut table = Vec::new();
        let hash_at = async |m: &mut MaintenanceClient<Channel>, table: &mut Vec<String>, rev| {
            let r = m.hash_kv(HashKvRequest { revision: rev }).await;
            table.push(format!(
                "{rev}: {}",
                outcome(r, |h| format!(
                    "{} {} {}",
                    h.hash, h.compact_revision, h.hash_revision
                ))
            ));
        };
        for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
            kv.put(put(k, v)).await.unwrap();
        }
        kv.delete_range(DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        for (k, v) in [("c", "4"), ("a", "5")] {
            kv.put(put(k, v)).await.unwrap();
        }
        for rev in [0, 1, 4, 5, 7, 8, -1] {
            hash_at(&mut m, &mut table, rev).await;
        }
        kv.compact(CompactionRequest {
            revision: 5,
            physical: true,
        })
        .await
        .unwrap();
        kv.put(put("d", "6")).await.unwrap();
        for rev in [0, 4, 5, 6, 7, 8, 9, -1] {
            hash_at(&mut m, &mut table, rev).await;
        }
        kv.compact(CompactionRequest {
            revision: 8,
            physical: true,
        })
        .await
        .unwrap();
        for rev in [0, 7, 8, 9] {
            hash_at(&mut m, &mut table, rev).await;
        }
        tables.push(table);
    }
    assert_eq!(tables[0], tables[1], "etcd 3.7 (left), oxcd (right)");
}

/// Everything a Watch stream sends within `wait` of the last request.
async fn watch_replies(
    server: &Server,
    requests: Vec<WatchRequest>,
    wait: Duration,
) -> Vec<String> {
    let mut watch = WatchClient::new(channel(server).await);
    // Queued before the call: grpc-go sends its response headers only with a first response.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for r in requests {
        tx.send(r).await.unwrap();
    }
    let call = watch.watch(tokio_stream::wrappers::ReceiverStream::new(rx));
    // No headers within the wait: the stream sent nothing at all.
    let Ok(replies) = tokio::time::timeout(wait, call).await else {
        return Vec::new();
    };
    let mut replies = replies.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Ok(Some(reply)) = tokio::time::timeout(wait, replies.next()).await {
        let WatchResponse {
            watch_id,
            created,
            canceled,
            cancel_reason,
            compact_revision,
            events,
            ..
        } = reply.unwrap();
        seen.push(format!(
            "id {watch_id} created {created} canceled {canceled} reason {cancel_reason:?} \
             compact {compact_revision} events {}",
            events.len()
        ));
    }
    seen
}

fn sorted(mut replies: Vec<String>) -> Vec<String> {
    replies.sort();
    replies
}

fn create(key: &str, start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            start_revision,
            ..Default::default()
        })),
    }
}

fn progress() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// A negative start revision is refused at once as compacted history and takes no watch id;
/// a progress request is answered only on a stream whose watchers are all synced, once.
#[tokio::test]
async fn watch_start_and_progress_rules_match_etcd() {
    let mut seen = Vec::new();
    for server in both(&[]).await {
        let mut kv = KvClient::new(channel(&server).await);
        for i in 0..3 {
            kv.put(put(&format!("k{i}"), "v")).await.unwrap();
        }
        let wait = Duration::from_millis(800);
        seen.push(vec![
            watch_replies(&server, vec![create("k0", -1), create("k0", 0)], wait).await,
            watch_replies(&server, vec![create("k0", -5)], wait).await,
            {
                kv.compact(CompactionRequest {
                    revision: 3,
                    physical: true,
                })
                .await
                .unwrap();
                watch_replies(&server, vec![create("k0", -1), create("k0", 1)], wait).await
            },
            watch_replies(&server, vec![progress()], wait).await,
            // etcd sends a creation and a progress reply from two queues, in either order.
            sorted(watch_replies(&server, vec![create("k0", 0), progress()], wait).await),
        ]);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
}

fn txn(success: Vec<Request>, failure: Vec<Request>, compare_holds: bool) -> TxnRequest {
    let op = |r| RequestOp { request: Some(r) };
    TxnRequest {
        compare: vec![Compare {
            key: "absent".into(),
            result: if compare_holds {
                CompareResult::Equal
            } else {
                CompareResult::NotEqual
            } as i32,
            target: CompareTarget::Version as i32,
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: success.into_iter().map(op).collect(),
        failure: failure.into_iter().map(op).collect(),
    }
}

/// Writes and reads an active alarm may refuse, each as "ok …" or its error.
async fn probe_writes(kv: &mut KvClient<Channel>, lease: &mut LeaseClient<Channel>) -> Vec<String> {
    let range = |k: &str| {
        Request::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        })
    };
    let delete = |k: &str| {
        Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            ..Default::default()
        })
    };
    let put_op = |k: &str| Request::RequestPut(put(k, "v"));
    let tx = |r: Result<tonic::Response<TxnResponse>, tonic::Status>| {
        outcome(r, |t| format!("ok succeeded {}", t.succeeded))
    };
    vec![
        outcome(kv.put(put("small", "1")).await, |_| "ok".into()),
        outcome(
            kv.delete_range(DeleteRangeRequest {
                key: "fill/000".into(),
                ..Default::default()
            })
            .await,
            |d| format!("ok deleted {}", d.deleted),
        ),
        tx(kv.txn(txn(vec![delete("fill/001")], vec![], true)).await),
        tx(kv
            .txn(txn(vec![put_op("small")], vec![range("small")], false))
            .await),
        tx(kv
            .txn(txn(vec![range("small")], vec![put_op("small")], true))
            .await),
        tx(kv.txn(txn(vec![range("small")], vec![], true)).await),
        outcome(
            lease
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await,
            |_| "ok".into(),
        ),
    ]
}

/// What an active alarm lets through: with NOSPACE, deletes (also a Txn of deletes, as
/// kube-apiserver deletes) but no Txn with a put in either branch; with CORRUPT, reads only.
#[tokio::test]
async fn alarms_refuse_what_etcd_refuses() {
    let quota = ["--quota-backend-bytes=8388608".to_string()];
    let mut seen = Vec::new();
    for server in both(&quota).await {
        let ch = channel(&server).await;
        let (mut kv, mut m) = (
            KvClient::new(ch.clone()),
            MaintenanceClient::new(ch.clone()),
        );
        let mut lease = LeaseClient::new(ch);
        let big = "x".repeat(256 * 1024);
        for i in 0..200 {
            if kv.put(put(&format!("fill/{i:03}"), &big)).await.is_err() {
                break;
            }
        }
        let mut results = probe_writes(&mut kv, &mut lease).await;
        // The space is reclaimed first, so that what CORRUPT refuses is CORRUPT's: over the
        // quota, a write would be refused as NOSPACE again, or not, by a few bytes of how each
        // store counts its size (etcd counts bbolt pages at its last commit).
        let revision = kv
            .delete_range(DeleteRangeRequest {
                key: "fill/".into(),
                range_end: "fill0".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        kv.compact(CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .unwrap();
        m.defragment(DefragmentRequest {}).await.unwrap();
        // The same under CORRUPT (raised by hand, as etcd lets a client raise it).
        let member_id = m
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
        for (action, alarm) in [
            (AlarmAction::Deactivate, AlarmType::Nospace),
            (AlarmAction::Activate, AlarmType::Corrupt),
        ] {
            m.alarm(AlarmRequest {
                action: action as i32,
                member_id,
                alarm: alarm as i32,
            })
            .await
            .unwrap();
        }
        results.extend(probe_writes(&mut kv, &mut lease).await);
        results.push(outcome(
            kv.compact(CompactionRequest {
                revision: 2,
                physical: false,
            })
            .await,
            |_| "ok".into(),
        ));
        seen.push(results);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
}

/// Defragment and MoveLeader answer without a header (client libraries assert it).
#[tokio::test]
async fn defragment_and_move_leader_answer_without_a_header() {
    for server in both(&[]).await {
        let mut m = MaintenanceClient::new(channel(&server).await);
        let defrag = m
            .defragment(DefragmentRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(defrag.header, None, "{} Defragment", server.flavor());
        let me = m
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
        let moved = m
            .move_leader(MoveLeaderRequest { target_id: me })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(moved.header, None, "{} MoveLeader", server.flavor());
    }
}

/// `--auto-compaction-mode=periodic --auto-compaction-retention=2s`: both compact on their own,
/// to a revision of about two seconds before.
#[tokio::test]
async fn periodic_auto_compaction_compacts_as_etcd_does() {
    let args = [
        "--auto-compaction-mode=periodic".to_string(),
        "--auto-compaction-retention=2s".to_string(),
    ];
    for server in both(&args).await {
        let ch = channel(&server).await;
        let (mut kv, mut m) = (KvClient::new(ch.clone()), MaintenanceClient::new(ch));
        let started = tokio::time::Instant::now();
        let mut compacted = -1;
        while started.elapsed() < Duration::from_secs(8) && compacted <= 1 {
            kv.put(put("tick", "v")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            compacted = m
                .hash_kv(HashKvRequest { revision: 0 })
                .await
                .unwrap()
                .into_inner()
                .compact_revision;
        }
        let current = kv
            .range(RangeRequest {
                key: "tick".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        assert!(
            compacted > 1 && compacted < current,
            "{}: compaction revision {compacted}, current {current}, after {:?}",
            server.flavor(),
            started.elapsed()
        );
        let old = kv
            .range(RangeRequest {
                key: "tick".into(),
                revision: 1,
                ..Default::default()
            })
            .await;
        assert_eq!(
            old.unwrap_err().message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
}

/// Flags are honoured or refused at start: an unknown or malformed feature gate stops both
/// with etcd's message; kubeadm's InitialCorruptCheck=true starts both.
#[tokio::test]
async fn feature_gates_are_checked_as_etcd_checks_them() {
    for flavor in [REFERENCE, Flavor::Oxcd] {
        for (gate, message) in [
            ("NoSuchGate=true", "unrecognized feature gate: NoSuchGate"),
            (
                "InitialCorruptCheck",
                "missing bool value for InitialCorruptCheck",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut member = std::process::Command::new(flavor.binary())
                .arg(format!("--feature-gates={gate}"))
                .arg(format!("--data-dir={}", dir.path().join("d").display()))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{}",
                    free_port()
                ))
                .arg(format!(
                    "--listen-peer-urls=http://127.0.0.1:{}",
                    free_port()
                ))
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let exited = wait_timeout(&mut member, Duration::from_secs(10)).unwrap();
            if exited.is_none() {
                member.kill().unwrap();
            }
            let output = member.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                exited.is_some_and(|s| !s.success()),
                "{flavor} started with --feature-gates={gate}"
            );
            assert!(
                stderr.contains(message),
                "{flavor} --feature-gates={gate}:\n{stderr}"
            );
        }
        Server::start_with(
            flavor,
            StartOptions {
                extra_args: vec!["--feature-gates=InitialCorruptCheck=true".into()],
                ..Default::default()
            },
        )
        .await;
    }
}
