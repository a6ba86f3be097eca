//! Auth against real etcd: the same users, roles, permissions and requests, through etcdctl
//! and through raw gRPC, get the same answers and errors from etcd and from oxcd; one test per
//! 2026 RBAC advisory shows the bypass refused; tokens work across members (simple and JWT),
//! certificate common names name users, and auth survives restarts and backups.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use oxcd_proto::authpb::{permission::Type, Permission};
use oxcd_proto::etcdserverpb::{
    auth_client::AuthClient,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    request_op::Request as Op,
    watch_client::WatchClient,
    watch_request::RequestUnion,
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use oxcd_tests::certs::openssl;
use oxcd_tests::cluster::Cluster;
use oxcd_tests::{Flavor, Server, StartOptions};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// etcdctl 3.7's view of one auth session, step by step. A step starting with `~` prints
/// numbers that differ between servers by nature (sizes, raft indexes, timings, versions):
/// they are masked.
const SEQUENCE: &[&str] = &[
    "auth status",
    "user add root:rootpw",
    "role add root",
    "auth enable",
    "user grant-role root root",
    "auth enable",
    "auth status",
    "user list",
    "get foo",
    "--user root:bad get foo",
    "--user root:rootpw put foo bar",
    "--user root:rootpw user add alice:alicepw",
    "--user root:rootpw role add r1",
    "--user root:rootpw role grant-permission r1 read a",
    "--user root:rootpw role grant-permission --prefix r1 readwrite p/",
    "--user root:rootpw role grant-permission r1 write w1 w3",
    "--user root:rootpw role grant-permission --from-key r1 read z",
    "--user root:rootpw role get r1",
    "--user root:rootpw user grant-role alice r1",
    "--user root:rootpw user get alice",
    "--user root:rootpw user get alice --detail",
    "--user root:rootpw user list",
    "--user root:rootpw role list",
    "--user alice:alicepw put p/1 x",
    "--user alice:alicepw get p/ --prefix",
    "--user alice:alicepw put a x",
    "--user alice:alicepw get a",
    "--user alice:alicepw get a --from-key",
    "--user alice:alicepw get z --from-key",
    "--user alice:alicepw get zz",
    "--user alice:alicepw put w2 y",
    "--user alice:alicepw get w2",
    "--user alice:alicepw put foo x",
    "--user alice:alicepw get foo",
    "--user alice:alicepw put p/2 v --prev-kv",
    "--user alice:alicepw del p/2 --prev-kv",
    "--user alice:alicepw del w1 --prev-kv",
    "--user alice:alicepw user list",
    "--user alice:alicepw user get alice",
    "--user alice:alicepw user get root",
    "--user alice:alicepw role get r1",
    "--user alice:alicepw role get root",
    "--user alice:alicepw role list",
    "--user alice:alicepw compaction 1",
    "~--user alice:alicepw endpoint status",
    "--user alice:alicepw member list",
    "--user alice:alicepw alarm list",
    "--user alice:alicepw alarm disarm",
    "--user alice:alicepw endpoint hashkv",
    "~--user alice:alicepw defrag",
    "~--user alice:alicepw snapshot save /dev/null",
    "--user alice:alicepw member add m2 --peer-urls=http://127.0.0.1:1",
    "--user alice:alicepw member remove 1234",
    "--user alice:alicepw move-leader 1234",
    "--user alice:alicepw lock p/lk echo locked",
    "--user alice:alicepw lock q/lk echo locked",
    "--user alice:alicepw elect q/el v",
    "~endpoint status",
    "member list",
    "lease grant 100",
    "--user root:rootpw user revoke-role root root",
    "--user root:rootpw user delete root",
    "--user root:rootpw role delete root",
    "--user root:rootpw role revoke-permission r1 zz",
    "--user root:rootpw user revoke-role alice nope",
    "--user root:rootpw user grant-role alice nope",
    "--user root:rootpw user grant-role nobody r1",
    "--user root:rootpw user grant-role alice r1",
    "--user root:rootpw user add alice:x",
    "--user root:rootpw user add :x",
    "--user root:rootpw role add r1",
    "--user root:rootpw role grant-permission r1 read b a",
    "--user root:rootpw role revoke-permission --prefix r1 p/",
    "--user root:rootpw role get r1",
    "--user alice:alicepw get p/1",
    "--user root:rootpw user passwd alice --interactive=false",
    "--user alice:alicepw get a",
    "--user alice:newpw get a",
    "--user root:rootpw auth status",
    "--user root:rootpw user add --no-password bob",
    "--user bob get foo",
    "--user bob:x get foo",
    "--user root:rootpw user grant-role bob r1",
    "--user root:rootpw role delete r1",
    "--user root:rootpw user get bob",
    "--user root:rootpw user delete alice",
    "--user alice:newpw get a",
    "~--user root:rootpw compaction 2",
    "--user root:rootpw auth disable",
    "auth status",
    "get foo",
    "user list",
];

/// Steps where etcd 3.4 answers otherwise and oxcd follows 3.6/3.7 (the 3.7 comparison checks
/// them): compaction, hashes, defragment and snapshots became the root role's; Status, member
/// list and leases need a user; MoveLeader is the root role's; a permission range must not be
/// inverted; and 3.4 words
/// permission errors of the maintenance calls as `auth: permission denied` (code Unknown).
const NEWER_THAN_34: &[&str] = &[
    "--user alice:alicepw compaction 1",
    "--user alice:alicepw endpoint hashkv",
    "~--user alice:alicepw defrag",
    "~--user alice:alicepw snapshot save /dev/null",
    "~--user alice:alicepw endpoint status",
    "~endpoint status",
    "member list",
    "lease grant 100",
    "--user root:rootpw role grant-permission r1 read b a",
    "--user root:rootpw role get r1",
    "--user alice:alicepw elect q/el v",
    "--user alice:alicepw move-leader 1234",
];

/// Runs every step of [`SEQUENCE`] with `etcdctl` against `endpoint`.
fn run_sequence(etcdctl: &Path, endpoint: &str) -> Vec<(String, String)> {
    run_steps(etcdctl, endpoint, &[], SEQUENCE)
}

/// Runs `steps` with `etcdctl` and `global` flags against `endpoint` (stdin holds a new
/// password, for a step that asks for one) and returns what each printed, normalized.
fn run_steps(
    etcdctl: &Path,
    endpoint: &str,
    global: &[String],
    steps: &[&str],
) -> Vec<(String, String)> {
    steps
        .iter()
        .map(|step| {
            let (volatile, args) = match step.strip_prefix('~') {
                Some(args) => (true, args),
                None => (false, *step),
            };
            let mut child = std::process::Command::new("timeout")
                .arg("20")
                .arg(etcdctl)
                .arg(format!("--endpoints={endpoint}"))
                .args(global)
                .args(args.split_whitespace())
                .env("ETCDCTL_API", "3")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("etcdctl runs");
            {
                use std::io::Write;
                let _ = child.stdin.take().unwrap().write_all(b"newpw\nnewpw\n");
            }
            let out = child.wait_with_output().unwrap();
            let printed = format!(
                "{}{}rc={}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                out.status.code().unwrap_or(-1)
            );
            (step.to_string(), normalize(&printed, volatile))
        })
        .collect()
}

/// Drops the client's JSON log lines and masks member ids and ports; for a volatile step also
/// every number and size.
fn normalize(text: &str, volatile: bool) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.contains("\"level\":\"")) {
        // Member ids print as `%x`: 16 hex digits, fewer when they start with zeros.
        let mut masked = mask_runs(line, |c| c.is_ascii_hexdigit(), 12, "ID");
        while let Some(at) = masked.find("127.0.0.1:") {
            let end = masked[at + 10..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(masked.len(), |e| at + 10 + e);
            masked.replace_range(at..end, "EP");
        }
        if volatile {
            masked = mask_runs(&masked, |c| c.is_ascii_digit() || c == '.', 1, "N");
            for unit in [" B", " kB", " MB", " GB"] {
                masked = masked.replace(&format!("N{unit}"), "SIZE");
            }
        }
        out.push_str(&masked);
        out.push('\n');
    }
    out
}

/// Replaces every run of at least `min` characters matching `class` with `with`.
fn mask_runs(s: &str, class: impl Fn(char) -> bool, min: usize, with: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in s.chars().chain(std::iter::once('\u{0}')) {
        if class(c) {
            run.push(c);
            continue;
        }
        if run.chars().count() >= min {
            out.push_str(with);
        } else {
            out.push_str(&run);
        }
        run.clear();
        if c != '\u{0}' {
            out.push(c);
        }
    }
    out
}

fn etcdctl37() -> std::path::PathBuf {
    oxcd_tests::etcd37_bin().with_file_name("etcdctl")
}

fn assert_same(reference: &[(String, String)], oxcd: &[(String, String)], skip: &[&str]) {
    let mut differ = Vec::new();
    for ((step, want), (_, got)) in reference.iter().zip(oxcd) {
        if !skip.contains(&step.as_str()) && want != got {
            differ.push(format!("$ etcdctl {step}\n--- etcd\n{want}--- oxcd\n{got}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[tokio::test]
async fn etcdctl_37_sees_the_same_auth_on_oxcd_as_on_etcd_37() {
    let etcd = Server::start(Flavor::Etcd37).await;
    let oxcd = Server::start(Flavor::Oxcd).await;
    let ctl = etcdctl37();
    let (want, got) = (
        run_sequence(&ctl, &etcd.endpoint()),
        run_sequence(&ctl, &oxcd.endpoint()),
    );
    assert_same(&want, &got, &[]);
    // The sequence really exercised refusals (a vacuous run would also be "the same").
    let denied = got
        .iter()
        .filter(|(_, out)| out.contains("Error: etcdserver: permission denied"))
        .count();
    assert!(denied >= 10, "only {denied} refusals:\n{got:#?}");
}

#[tokio::test]
async fn etcdctl_34_sees_the_same_auth_on_oxcd_as_on_etcd_34() {
    oxcd_tests::require_etcd();
    let etcd = Server::start(Flavor::Etcd).await;
    let oxcd = Server::start(Flavor::Oxcd).await;
    let ctl = oxcd_tests::cluster::etcdctl_bin();
    let (want, got) = (
        run_sequence(&ctl, &etcd.endpoint()),
        run_sequence(&ctl, &oxcd.endpoint()),
    );
    assert_same(&want, &got, NEWER_THAN_34);
}

/// With `--client-cert-auth`, a client certificate's common name is the user when a request
/// carries no token: `root` (the CN of `client.crt`) administers, `san-client` may read `a`.
const CERTIFICATE_STEPS: &[&str] = &[
    "user add root:rootpw",
    "role add root",
    "user grant-role root root",
    "user add san-client:pw",
    "role add r",
    "role grant-permission r read a",
    "user grant-role san-client r",
    "auth enable",
    "put a 1",
    "put foo 2",
    "get foo",
    "#san get a",
    "#san get foo",
    "#san put a 2",
    "#san --user san-client:pw get a",
    "#san --user san-client:pw get foo",
    "#san user list",
    "user list",
    "auth disable",
];

#[tokio::test]
async fn a_client_certificate_names_the_user_as_in_etcd() {
    use oxcd_tests::certs::{make_certificates, TlsMember};
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let as_cert = |cert: &str| {
        vec![
            format!("--cacert={}", file("ca.crt")),
            format!("--cert={}", file(&format!("{cert}.crt"))),
            format!("--key={}", file(&format!("{cert}.key"))),
        ]
    };
    let run = |endpoint: &str| {
        let mut out = Vec::new();
        for named in CERTIFICATE_STEPS {
            let (cert, step) = match named.strip_prefix("#san ") {
                Some(step) => ("client-san", step),
                None => ("client", *named),
            };
            let printed = run_steps(&etcdctl37(), endpoint, &as_cert(cert), &[step]);
            out.extend(printed.into_iter().map(|(_, o)| (named.to_string(), o)));
        }
        out
    };
    let etcd = TlsMember::start(&oxcd_tests::etcd37_bin(), dir.path());
    let oxcd = TlsMember::start(&oxcd_tests::oxcd_bin(), dir.path());
    for member in [&etcd, &oxcd] {
        oxcd_tests::certs::wait_for_handshake(
            dir.path(),
            member.client_port,
            "client",
            Duration::from_secs(20),
        )
        .await;
    }
    let (want, got) = (run(&etcd.endpoint), run(&oxcd.endpoint));
    assert_same(&want, &got, &[]);
    let printed = |step: &str| &got.iter().find(|(s, _)| s == step).unwrap().1;
    assert!(printed("put foo 2").starts_with("OK"), "{got:#?}");
    assert!(printed("get foo").contains("foo\n2"), "{got:#?}");
    assert!(printed("user list").contains("san-client"), "{got:#?}");
    assert!(
        printed("#san get foo").contains("permission denied"),
        "{got:#?}"
    );
    assert!(printed("#san get a").contains("a\n1"), "{got:#?}");
}

// ---- raw gRPC: the advisories ----

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if !token.is_empty() {
        req.metadata_mut().insert("token", token.parse().unwrap());
    }
    req
}

/// A call's outcome as comparable text: `ok` or the error's code and message.
fn outcome<T>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn perm(kind: Type, key: &[u8], range_end: &[u8]) -> Option<Permission> {
    Some(Permission {
        perm_type: kind as i32,
        key: key.to_vec(),
        range_end: range_end.to_vec(),
    })
}

async fn authenticate(ch: &Channel, name: &str, password: &str) -> String {
    AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("authenticate {name}: {e}"))
        .into_inner()
        .token
}

/// root (root role) and alice, who may read and write `mine/…`, read the key `a`, and only
/// write the key `wo`; auth on. Returns (root's token, alice's token).
async fn set_up_users(ch: &Channel) -> (String, String) {
    let mut auth = AuthClient::new(ch.clone());
    for (name, password) in [("root", "rootpw"), ("alice", "alicepw")] {
        auth.user_add(AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for role in ["root", "r"] {
        auth.role_add(AuthRoleAddRequest { name: role.into() })
            .await
            .unwrap();
    }
    for p in [
        perm(Type::Readwrite, b"mine/", b"mine0"),
        perm(Type::Read, b"a", b""),
        perm(Type::Write, b"wo", b""),
    ] {
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: p,
        })
        .await
        .unwrap();
    }
    for (user, role) in [("root", "root"), ("alice", "r")] {
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .unwrap();
    }
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    (
        authenticate(ch, "root", "rootpw").await,
        authenticate(ch, "alice", "alicepw").await,
    )
}

fn put(key: &[u8], lease: i64, prev_kv: bool) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: b"v".to_vec(),
        lease,
        prev_kv,
        ..Default::default()
    }
}

fn txn(ops: Vec<Op>) -> TxnRequest {
    TxnRequest {
        success: ops
            .into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect(),
        ..Default::default()
    }
}

/// Every request of the 2026 advisories (and their neighbours), as alice, with the outcome
/// each must have; the same list runs against etcd 3.7 and oxcd.
async fn advisory_outcomes(endpoint: &str) -> Vec<(String, String)> {
    let ch = channel(endpoint).await;
    let (root, alice) = set_up_users(&ch).await;
    let mut kv = KvClient::new(ch.clone());
    let mut leases = LeaseClient::new(ch.clone());
    // root's lease, holding a key alice may not touch.
    let lease = leases
        .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 0 }, &root))
        .await
        .unwrap()
        .into_inner()
        .id;
    kv.put(with_token(put(b"secret/x", lease, false), &root))
        .await
        .unwrap();
    let mut results = Vec::new();
    let mut record = |name: &str, result: String| results.push((name.to_string(), result));

    // Nested transactions: the inner operations are checked like outer ones.
    let nested = |inner: Op| txn(vec![Op::RequestTxn(txn(vec![inner]))]);
    record(
        "nested txn put",
        outcome(
            kv.txn(with_token(
                nested(Op::RequestPut(put(b"secret/y", 0, false))),
                &alice,
            ))
            .await,
        ),
    );
    record(
        "nested txn range",
        outcome(
            kv.txn(with_token(
                nested(Op::RequestRange(RangeRequest {
                    key: b"secret/x".to_vec(),
                    ..Default::default()
                })),
                &alice,
            ))
            .await,
        ),
    );
    record(
        "doubly nested txn delete",
        outcome(
            kv.txn(with_token(
                txn(vec![Op::RequestTxn(nested(Op::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b"secret/x".to_vec(),
                        ..Default::default()
                    },
                )))]),
                &alice,
            ))
            .await,
        ),
    );
    record(
        "nested txn put permitted",
        outcome(
            kv.txn(with_token(
                nested(Op::RequestPut(put(b"mine/1", 0, false))),
                &alice,
            ))
            .await,
        ),
    );
    let compare_secret = TxnRequest {
        compare: vec![Compare {
            key: b"secret/x".to_vec(),
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            target_union: Some(TargetUnion::Value(b"v".to_vec())),
            ..Default::default()
        }],
        ..Default::default()
    };
    record(
        "txn compare on unreadable key",
        outcome(kv.txn(with_token(compare_secret, &alice)).await),
    );

    // prev_kv reads: a write-only key cannot be read back through a put or delete.
    record(
        "put write-only with prev_kv",
        outcome(kv.put(with_token(put(b"wo", 0, true), &alice)).await),
    );
    record(
        "put write-only",
        outcome(kv.put(with_token(put(b"wo", 0, false), &alice)).await),
    );
    record(
        "txn put write-only with prev_kv",
        outcome(
            kv.txn(with_token(
                txn(vec![Op::RequestPut(put(b"wo", 0, true))]),
                &alice,
            ))
            .await,
        ),
    );
    record(
        "nested txn put write-only with prev_kv",
        outcome(
            kv.txn(with_token(
                nested(Op::RequestPut(put(b"wo", 0, true))),
                &alice,
            ))
            .await,
        ),
    );
    let delete_wo = |prev_kv| DeleteRangeRequest {
        key: b"wo".to_vec(),
        prev_kv,
        ..Default::default()
    };
    record(
        "delete write-only with prev_kv",
        outcome(kv.delete_range(with_token(delete_wo(true), &alice)).await),
    );
    record(
        "txn delete write-only with prev_kv",
        outcome(
            kv.txn(with_token(
                txn(vec![Op::RequestDeleteRange(delete_wo(true))]),
                &alice,
            ))
            .await,
        ),
    );

    // Leases: attaching to, revoking, renewing or listing a lease that holds a key the caller
    // may not write (or read).
    record(
        "put with another's lease",
        outcome(
            kv.put(with_token(put(b"mine/2", lease, false), &alice))
                .await,
        ),
    );
    record(
        "txn put with another's lease",
        outcome(
            kv.txn(with_token(
                txn(vec![Op::RequestPut(put(b"mine/3", lease, false))]),
                &alice,
            ))
            .await,
        ),
    );
    record(
        "nested txn put with another's lease",
        outcome(
            kv.txn(with_token(
                nested(Op::RequestPut(put(b"mine/4", lease, false))),
                &alice,
            ))
            .await,
        ),
    );
    record(
        "revoke another's lease",
        outcome(
            leases
                .lease_revoke(with_token(LeaseRevokeRequest { id: lease }, &alice))
                .await,
        ),
    );
    record(
        "time-to-live with keys",
        outcome(
            leases
                .lease_time_to_live(with_token(
                    LeaseTimeToLiveRequest {
                        id: lease,
                        keys: true,
                    },
                    &alice,
                ))
                .await,
        ),
    );
    record(
        "time-to-live without keys",
        outcome(
            leases
                .lease_time_to_live(with_token(
                    LeaseTimeToLiveRequest {
                        id: lease,
                        keys: false,
                    },
                    &alice,
                ))
                .await,
        ),
    );
    record(
        "list leases",
        outcome(
            leases
                .lease_leases(with_token(LeaseLeasesRequest {}, &alice))
                .await,
        ),
    );
    record(
        "list leases as nobody",
        outcome(
            leases
                .lease_leases(with_token(LeaseLeasesRequest {}, ""))
                .await,
        ),
    );
    let keep_alive = async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
        let mut stream = leases
            .lease_keep_alive(with_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &alice,
            ))
            .await?
            .into_inner();
        let first = stream.next().await;
        drop(tx);
        match first {
            Some(Ok(r)) => Ok(tonic::Response::new(r)),
            Some(Err(e)) => Err(e),
            None => Err(tonic::Status::unknown("stream ended")),
        }
    };
    record("keep another's lease alive", outcome(keep_alive.await));
    record(
        "revoke another's lease as root",
        outcome(
            leases
                .lease_revoke(with_token(LeaseRevokeRequest { id: lease }, &root))
                .await,
        ),
    );

    // Watches: the range is checked as requested; `"\0"` as range end is everything from
    // the key on, not the key alone (GHSA-xg4h-6gfc-h4m8).
    for (name, key, range_end) in [
        ("watch a readable key", b"a".to_vec(), Vec::new()),
        ("watch everything from the key a on", b"a".to_vec(), vec![0]),
        (
            "watch the secret/ prefix",
            b"secret/".to_vec(),
            b"secret0".to_vec(),
        ),
        ("watch everything", Vec::new(), vec![0]),
        (
            "watch a readable prefix",
            b"mine/".to_vec(),
            b"mine0".to_vec(),
        ),
    ] {
        record(name, watch_create(&ch, &alice, key, range_end).await);
    }
    results
}

/// A watch stream as `token`'s caller with one watch on `[key, range_end)`; the sender keeps
/// the stream open while held.
async fn open_watch(
    ch: &Channel,
    token: &str,
    key: Vec<u8>,
    range_end: Vec<u8>,
) -> (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<WatchResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let stream = WatchClient::new(ch.clone())
        .watch(with_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

async fn next_reply(stream: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the watch answers")
        .expect("the stream stays open")
        .unwrap()
}

/// The reply to one watch creation, as comparable text.
async fn watch_create(ch: &Channel, token: &str, key: Vec<u8>, range_end: Vec<u8>) -> String {
    let (_open, mut stream) = open_watch(ch, token, key, range_end).await;
    let reply = next_reply(&mut stream).await;
    format!(
        "created={} canceled={} id={} reason={:?}",
        reply.created, reply.canceled, reply.watch_id, reply.cancel_reason
    )
}

#[tokio::test]
async fn every_2026_rbac_advisory_bypass_is_refused_as_etcd_37_refuses_it() {
    let etcd = Server::start(Flavor::Etcd37).await;
    let oxcd = Server::start(Flavor::Oxcd).await;
    let want = advisory_outcomes(&etcd.endpoint()).await;
    let got = advisory_outcomes(&oxcd.endpoint()).await;
    assert_eq!(got, want, "oxcd (left) and etcd 3.7 (right) differ");
    let denied = "PermissionDenied: etcdserver: permission denied";
    for (name, result) in &got {
        let expected_ok = name.ends_with("permitted")
            || name.ends_with("without keys")
            || name.ends_with("as root")
            || name == "put write-only";
        if name.starts_with("watch") {
            let refused = result.contains("canceled=true");
            let should_refuse = !name.starts_with("watch a readable");
            assert_eq!(refused, should_refuse, "{name}: {result}");
            if refused {
                let reason =
                    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
                assert!(
                    result.contains("id=-1") && result.contains(reason),
                    "{name}: {result}"
                );
            }
        } else if expected_ok {
            assert_eq!(result, "ok", "{name}");
        } else if name == "list leases as nobody" {
            assert_eq!(result, "InvalidArgument: etcdserver: user name is empty");
        } else {
            assert_eq!(result, denied, "{name}");
        }
    }
}

// ---- tokens across members, restarts, backups ----

/// Auth on through member 0 of `cluster`; returns root's password-based token from `member`.
async fn enable_auth_and_login(cluster: &Cluster, member: usize) -> String {
    let ch = channel(&cluster.members()[0].endpoint()).await;
    set_up_users(&ch).await;
    authenticate(
        &channel(&cluster.members()[member].endpoint()).await,
        "alice",
        "alicepw",
    )
    .await
}

async fn get_as(endpoint: &str, token: &str, key: &[u8]) -> String {
    let mut kv = KvClient::new(channel(endpoint).await);
    outcome(
        kv.range(with_token(
            RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
            token,
        ))
        .await,
    )
}

#[tokio::test]
async fn a_simple_token_from_one_member_is_honoured_by_every_member() {
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        simple_token_on_every_member(flavor).await;
    }
}

async fn simple_token_on_every_member(flavor: Flavor) {
    let cluster = Cluster::start(flavor, 3, &[]).await;
    let token = enable_auth_and_login(&cluster, 0).await;
    for m in cluster.members() {
        assert_eq!(get_as(&m.endpoint(), &token, b"mine/x").await, "ok");
        assert_eq!(
            get_as(&m.endpoint(), &token, b"secret").await,
            "PermissionDenied: etcdserver: permission denied"
        );
        assert_eq!(
            get_as(&m.endpoint(), "forged.1", b"mine/x").await,
            "Unauthenticated: etcdserver: invalid auth token"
        );
    }
}

/// An RSA key pair for `--auth-token jwt`, made with openssl.
fn rsa_keys(dir: &Path) -> (String, String) {
    key_pair(dir, &["genrsa", "-out", "jwt.key", "2048"], "rsa")
}

/// A private key made by openssl's `generate` (writing `jwt.key` in `dir`) and its public half
/// (`jwt.pub`, through openssl's `kind` command: rsa or ec); their paths.
fn key_pair(dir: &Path, generate: &[&str], kind: &str) -> (String, String) {
    openssl(dir, generate);
    openssl(dir, &[kind, "-in", "jwt.key", "-pubout", "-out", "jwt.pub"]);
    let path = |name: &str| dir.join(name).display().to_string();
    (path("jwt.key"), path("jwt.pub"))
}

#[tokio::test]
async fn a_jwt_issued_by_one_member_works_on_the_others_and_outlives_a_restart() {
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        jwt_on_every_member(flavor).await;
    }
}

async fn jwt_on_every_member(flavor: Flavor) {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keys(dir.path());
    let flag =
        format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl=10m");
    let mut cluster = Cluster::start(flavor, 3, &[flag.as_str()]).await;
    let token = enable_auth_and_login(&cluster, 1).await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    for m in cluster.members() {
        assert_eq!(get_as(&m.endpoint(), &token, b"mine/x").await, "ok");
        assert_eq!(
            get_as(&m.endpoint(), &token, b"secret").await,
            "PermissionDenied: etcdserver: permission denied"
        );
    }
    // Signed, not remembered: the token outlives a restart of every member, and so does auth.
    cluster.restart_all().await;
    for m in cluster.members() {
        assert_eq!(get_as(&m.endpoint(), &token, b"mine/x").await, "ok");
        assert_eq!(
            get_as(&m.endpoint(), "", b"mine/x").await,
            "InvalidArgument: etcdserver: user name is empty"
        );
    }
    // A change of the auth state makes the token's revision stale, as in etcd.
    let root = authenticate(
        &channel(&cluster.members()[0].endpoint()).await,
        "root",
        "rootpw",
    )
    .await;
    AuthClient::new(channel(&cluster.members()[0].endpoint()).await)
        .role_add(with_token(AuthRoleAddRequest { name: "r2".into() }, &root))
        .await
        .unwrap();
    assert_eq!(
        get_as(&cluster.members()[2].endpoint(), &token, b"mine/x").await,
        "InvalidArgument: etcdserver: revision of auth store is old"
    );
}

/// ES512 (P-521): jsonwebtoken has no such method, so oxcd signs these itself. The same users
/// on one etcd 3.7 and one oxcd member with the same key: each accepts the other's token, so
/// the two sign and verify the same tokens.
#[tokio::test]
async fn es512_jwts_of_oxcd_and_etcd_are_accepted_by_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = key_pair(
        dir.path(),
        &[
            "ecparam",
            "-name",
            "secp521r1",
            "-genkey",
            "-noout",
            "-out",
            "jwt.key",
        ],
        "ec",
    );
    let flag =
        format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=ES512,ttl=10m");
    let mut tokens = Vec::new();
    let mut endpoints = Vec::new();
    let mut servers = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let server = Server::start_with(
            flavor,
            StartOptions {
                extra_args: vec![flag.clone()],
                ..Default::default()
            },
        )
        .await;
        let ch = channel(&server.endpoint()).await;
        let (_, alice) = set_up_users(&ch).await;
        assert_eq!(alice.split('.').count(), 3, "{flavor}: a JWT: {alice}");
        tokens.push(alice);
        endpoints.push(server.endpoint());
        servers.push(server);
    }
    for endpoint in &endpoints {
        for token in &tokens {
            assert_eq!(get_as(endpoint, token, b"mine/x").await, "ok");
            assert_eq!(
                get_as(endpoint, token, b"secret").await,
                "PermissionDenied: etcdserver: permission denied"
            );
        }
        let mut forged = tokens[1].clone();
        forged.truncate(forged.len() - 4);
        forged.push_str("AAAA");
        assert_eq!(
            get_as(endpoint, &forged, b"mine/x").await,
            "Unauthenticated: etcdserver: invalid auth token"
        );
    }
}

#[tokio::test]
async fn auth_survives_a_restart_and_a_backup_restored_into_a_new_cluster() {
    let mut server = Server::start(Flavor::Oxcd).await;
    let ch = channel(&server.endpoint()).await;
    let (root, _) = set_up_users(&ch).await;
    KvClient::new(ch.clone())
        .put(with_token(put(b"mine/kept", 0, false), &root))
        .await
        .unwrap();
    server.terminate(Duration::from_secs(10)).unwrap();
    server.restart().await;
    // Simple tokens live in memory: a restart forgets them, as etcd's does.
    assert_eq!(
        get_as(&server.endpoint(), &root, b"mine/kept").await,
        "Unauthenticated: etcdserver: invalid auth token"
    );
    let alice = authenticate(&channel(&server.endpoint()).await, "alice", "alicepw").await;
    assert_eq!(get_as(&server.endpoint(), &alice, b"mine/kept").await, "ok");
    assert_eq!(
        get_as(&server.endpoint(), &alice, b"secret").await,
        "PermissionDenied: etcdserver: permission denied"
    );

    let backup = server.dir().join("backup.db");
    let root = authenticate(&channel(&server.endpoint()).await, "root", "rootpw").await;
    let saved = std::process::Command::new(oxcd_tests::oxcdctl_bin())
        .arg(format!("--endpoints={}", server.endpoint()))
        .args(["--user", "root:rootpw", "snapshot", "save"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");
    drop(root);
    let restored = Cluster::start_prepared(Flavor::Oxcd, 1, &[], |spec, flags| {
        let out = std::process::Command::new(oxcd_tests::oxcdctl_bin())
            .args(["snapshot", "restore"])
            .arg(&backup)
            .arg("--name")
            .arg(&spec.name)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--initial-cluster")
            .arg(&flags.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&flags.token)
            .arg("--initial-advertise-peer-urls")
            .arg(spec.peer_url())
            .output()?;
        anyhow::ensure!(out.status.success(), "restore: {out:?}");
        Ok(())
    })
    .await;
    let endpoint = restored.members()[0].endpoint();
    let alice = authenticate(&channel(&endpoint).await, "alice", "alicepw").await;
    assert_eq!(get_as(&endpoint, &alice, b"mine/kept").await, "ok");
    assert_eq!(
        get_as(&endpoint, &alice, b"secret").await,
        "PermissionDenied: etcdserver: permission denied"
    );
    assert_eq!(
        get_as(&endpoint, "", b"mine/kept").await,
        "InvalidArgument: etcdserver: user name is empty"
    );
}

#[tokio::test]
async fn a_member_added_after_auth_is_on_catches_up_with_it() {
    let mut cluster = Cluster::start(Flavor::Oxcd, 3, &["--snapshot-count=20"]).await;
    let ch = channel(&cluster.members()[0].endpoint()).await;
    let (root, _) = set_up_users(&ch).await;
    let mut kv = KvClient::new(ch.clone());
    // Enough entries that the new member is sent a snapshot rather than the whole log.
    for i in 0..60 {
        kv.put(with_token(
            put(format!("mine/{i}").as_bytes(), 0, false),
            &root,
        ))
        .await
        .unwrap();
    }
    // Membership changes are the root role's now.
    cluster.set_etcdctl_user("root:rootpw");
    let added = cluster.add_member("n4", false).await;
    let endpoint = cluster.members()[added.index].endpoint();
    let alice = authenticate(&channel(&endpoint).await, "alice", "alicepw").await;
    assert_eq!(get_as(&endpoint, &alice, b"mine/59").await, "ok");
    assert_eq!(
        get_as(&endpoint, &alice, b"secret").await,
        "PermissionDenied: etcdserver: permission denied"
    );
}

/// oxcd checks a watch's permission again on its events once the auth state has changed: a
/// watcher whose read permission was revoked gets its watch canceled (with etcd's
/// permission-denied reason) instead of later events. etcd checks only at creation and keeps
/// delivering; this is the stricter reading of "permission checked on every event".
#[tokio::test]
async fn a_watch_stops_delivering_once_its_read_permission_is_revoked() {
    let server = Server::start(Flavor::Oxcd).await;
    let ch = channel(&server.endpoint()).await;
    let (root, alice) = set_up_users(&ch).await;
    let (open, mut stream) = open_watch(&ch, &alice, b"mine/".to_vec(), b"mine0".to_vec()).await;
    let created = next_reply(&mut stream).await;
    assert!(created.created && !created.canceled, "{created:?}");
    let mut kv = KvClient::new(ch.clone());
    kv.put(with_token(put(b"mine/1", 0, false), &root))
        .await
        .unwrap();
    let first = next_reply(&mut stream).await;
    assert_eq!(first.events.len(), 1, "{first:?}");
    AuthClient::new(ch.clone())
        .role_revoke_permission(with_token(
            oxcd_proto::etcdserverpb::AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: b"mine/".to_vec(),
                range_end: b"mine0".to_vec(),
            },
            &root,
        ))
        .await
        .unwrap();
    kv.put(with_token(put(b"mine/2", 0, false), &root))
        .await
        .unwrap();
    let after = next_reply(&mut stream).await;
    assert!(after.canceled && after.events.is_empty(), "{after:?}");
    assert_eq!(after.watch_id, created.watch_id);
    assert_eq!(
        after.cancel_reason,
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    drop(open);
}
