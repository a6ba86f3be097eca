//! etcd 3.7's `KV.RangeStream`, against etcd 3.7.3: the same writes on both, then the same
//! streams, compared chunk by chunk (boundaries, which chunk carries header, `more` and
//! `count`), kv by kv, and error by error. Raw gRPC clients, so every field is seen as sent.

use oxcd_proto::authpb::{permission::Type, Permission};
use oxcd_proto::etcdserverpb::lease_client::LeaseClient;
use oxcd_proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, range_request::SortOrder,
    range_request::SortTarget, AuthEnableRequest, AuthRoleAddRequest,
    AuthRoleGrantPermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    AuthenticateRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest,
    RangeRequest, RangeResponse,
};
use oxcd_tests::{Flavor, Server, StartOptions};
use tonic::transport::Channel;
use tonic::Streaming;

/// HTTP/2's smallest stream window (hyper's client would take 2 MiB): a stream the test does
/// not read stalls the server after a few chunks, so it can act in the stream's middle. The
/// connection's window stays large, so other calls on the connection go on meanwhile.
async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.client_url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(16 << 20)
        .connect()
        .await
        .unwrap()
}

/// A fresh etcd 3.7 member and a fresh oxcd member, with `args`.
async fn both(args: &[&str]) -> [Server; 2] {
    let start = |flavor| {
        Server::start_with(
            flavor,
            StartOptions {
                extra_args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        )
    };
    let (etcd, oxcd) = tokio::join!(start(Flavor::Etcd37), start(Flavor::Oxcd));
    [etcd, oxcd]
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if !token.is_empty() {
        req.metadata_mut().insert("token", token.parse().unwrap());
    }
    req
}

async fn open(
    ch: &Channel,
    r: RangeRequest,
    token: &str,
) -> Result<Streaming<oxcd_proto::etcdserverpb::RangeStreamResponse>, tonic::Status> {
    Ok(KvClient::new(ch.clone())
        .range_stream(with_token(r, token))
        .await?
        .into_inner())
}

/// Every chunk up to the end of the stream, or the error it ended with (with the chunks
/// before it).
async fn drain(
    mut s: Streaming<oxcd_proto::etcdserverpb::RangeStreamResponse>,
) -> (Vec<RangeResponse>, Option<tonic::Status>) {
    let mut chunks = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(m)) => chunks.push(m.range_response.unwrap_or_default()),
            Ok(None) => return (chunks, None),
            Err(e) => return (chunks, Some(e)),
        }
    }
}

fn status(e: &tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

/// A stream as comparable text: one line per chunk (its keys, and the header's revision,
/// `more` and `count` where set; the member's ids differ between servers, so only their
/// presence is shown), every kv, then the error if it ended with one.
fn describe(chunks: &[RangeResponse], error: Option<&tonic::Status>) -> String {
    let mut out = String::new();
    for c in chunks {
        let key = |kv: Option<&oxcd_proto::mvccpb::KeyValue>| {
            kv.map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .unwrap_or_default()
        };
        let header = c.header.as_ref().map(|h| {
            format!(
                "rev {} ids {} term {}",
                h.revision,
                h.cluster_id != 0 && h.member_id != 0,
                h.raft_term != 0
            )
        });
        out += &format!(
            "chunk {} kvs [{}..{}] header {:?} more {} count {}\n",
            c.kvs.len(),
            key(c.kvs.first()),
            key(c.kvs.last()),
            header,
            c.more,
            c.count
        );
    }
    for kv in chunks.iter().flat_map(|c| &c.kvs) {
        out += &format!(
            "  {} c{} m{} v{} lease {} value {}B\n",
            String::from_utf8_lossy(&kv.key),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease != 0,
            kv.value.len()
        );
    }
    if let Some(e) = error {
        out += &format!("error {}\n", status(e));
    }
    out
}

async fn stream_text(ch: &Channel, r: RangeRequest, token: &str) -> String {
    match open(ch, r, token).await {
        Ok(s) => {
            let (chunks, error) = drain(s).await;
            describe(&chunks, error.as_ref())
        }
        Err(e) => format!("refused {}\n", status(&e)),
    }
}

fn put(key: impl Into<Vec<u8>>, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value,
        ..Default::default()
    }
}

fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn assert_same(what: &str, etcd: &[String], oxcd: &[String]) {
    assert_eq!(etcd.len(), oxcd.len());
    for (e, o) in etcd.iter().zip(oxcd) {
        if e != o {
            if let Some(dir) = std::env::var_os("RANGE_STREAM_DUMP") {
                let dir = std::path::PathBuf::from(dir);
                std::fs::write(dir.join(format!("{what}.etcd")), e).unwrap();
                std::fs::write(dir.join(format!("{what}.oxcd")), o).unwrap();
            }
        }
        assert_eq!(e, o, "{what}: etcd 3.7 answered\n{e}\noxcd answered\n{o}");
    }
}

/// The requests RangeStream serves, over keys whose values grow from a few bytes to 40 KB so
/// the chunk size both grows and shrinks (`--max-request-bytes` is 64 KiB here, so the
/// chunking reacts at small sizes).
#[tokio::test]
async fn chunks_kvs_and_final_fields_match_etcd() {
    let mut tables = Vec::new();
    for server in both(&["--max-request-bytes", "65536"]).await {
        let ch = channel(&server).await;
        let mut kv = KvClient::new(ch.clone());
        let lease = LeaseClient::new(ch.clone())
            .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        for i in 0..400usize {
            let len = if i < 200 { 1 + i % 7 } else { (i - 200) * 200 };
            let mut p = put(format!("k/{i:04}"), vec![b'x'; len]);
            if i % 50 == 0 {
                p.lease = lease;
            }
            kv.put(p).await.unwrap();
        }
        for i in (0..400).step_by(3) {
            kv.put(put(format!("k/{i:04}"), vec![b'y'; 3]))
                .await
                .unwrap();
        }
        kv.delete_range(DeleteRangeRequest {
            key: "k/0100".into(),
            range_end: "k/0110".into(),
            prev_kv: false,
        })
        .await
        .unwrap();
        kv.put(put("l", b"after".to_vec())).await.unwrap();
        let mut table = Vec::new();
        let requests = [
            range("k/", "k0"),
            range("k/", "\0"),
            range("\0", "\0"),
            range("k/0005", ""),
            range("k/0100", ""),
            range("nothing", ""),
            range("z", "a"),
            RangeRequest {
                limit: 25,
                ..range("k/", "k0")
            },
            RangeRequest {
                limit: 390,
                ..range("k/", "k0")
            },
            RangeRequest {
                limit: 5000,
                ..range("k/", "k0")
            },
            RangeRequest {
                limit: -3,
                ..range("k/", "k0")
            },
            RangeRequest {
                keys_only: true,
                ..range("k/", "k0")
            },
            RangeRequest {
                count_only: true,
                ..range("k/", "k0")
            },
            RangeRequest {
                count_only: true,
                limit: 3,
                ..range("k/", "k0")
            },
            RangeRequest {
                revision: 250,
                ..range("k/", "k0")
            },
            RangeRequest {
                serializable: true,
                ..range("k/", "k0")
            },
            RangeRequest {
                sort_order: SortOrder::Ascend as i32,
                ..range("k/", "k0")
            },
            // A sort target without an order: etcd streams it, sorting each chunk and going on
            // after the chunk's last key as sorted, so keys come twice. (Only over chunks of up
            // to 12 keys read, where Go's sort keeps ties in order as oxcd's does.)
            RangeRequest {
                sort_target: SortTarget::Version as i32,
                ..range("k/0000", "k/0012")
            },
        ];
        for r in requests {
            table.push(format!("{r:?}\n{}", stream_text(&ch, r.clone(), "").await));
        }
        tables.push(table);
    }
    // The whole prefix comes in chunks that grow, then shrink as values grow.
    let whole = &tables[0][0];
    assert!(whole.matches("chunk ").count() > 5, "{whole}");
    assert!(
        whole.contains("chunk 10 kvs") && whole.contains("chunk 20 kvs"),
        "{whole}"
    );
    assert_same("RangeStream", &tables[0], &tables[1]);
}

/// Requests RangeStream refuses, and those any read refuses, with the same codes and words.
#[tokio::test]
async fn refusals_match_etcd() {
    let mut tables = Vec::new();
    for server in both(&[]).await {
        let ch = channel(&server).await;
        let mut kv = KvClient::new(ch.clone());
        for i in 0..5 {
            kv.put(put(format!("k{i}"), b"v".to_vec())).await.unwrap();
        }
        kv.compact(CompactionRequest {
            revision: 4,
            physical: true,
        })
        .await
        .unwrap();
        let mut table = Vec::new();
        let requests = [
            range("", "z"),
            RangeRequest {
                sort_order: SortOrder::Descend as i32,
                ..range("k", "l")
            },
            RangeRequest {
                sort_order: SortOrder::Ascend as i32,
                sort_target: SortTarget::Mod as i32,
                ..range("k", "l")
            },
            RangeRequest {
                sort_order: 9,
                ..range("k", "l")
            },
            RangeRequest {
                sort_target: 9,
                ..range("k", "l")
            },
            RangeRequest {
                min_mod_revision: 2,
                ..range("k", "l")
            },
            RangeRequest {
                max_create_revision: 2,
                ..range("k", "l")
            },
            // Both refusals: the sort is checked first.
            RangeRequest {
                sort_order: SortOrder::Descend as i32,
                max_mod_revision: 2,
                ..range("k", "l")
            },
            RangeRequest {
                revision: 3,
                ..range("k", "l")
            },
            RangeRequest {
                revision: 4,
                ..range("k", "l")
            },
            RangeRequest {
                revision: 100,
                ..range("k", "l")
            },
        ];
        for r in requests {
            table.push(format!("{r:?}\n{}", stream_text(&ch, r.clone(), "").await));
        }
        tables.push(table);
    }
    assert_same("refusals", &tables[0], &tables[1]);
}

/// 2,000 keys of 1 KiB: far more than HTTP/2 lets a server send ahead of a client that reads
/// nothing, so the stream is still being read when the test acts in the middle of it.
async fn fill(kv: &mut KvClient<Channel>) {
    for i in 0..2000 {
        kv.put(put(format!("big/{i:05}"), vec![b'v'; 1024]))
            .await
            .unwrap();
    }
}

/// The first chunk pins the revision: writes and deletes made while the stream runs are not
/// in it, and the last chunk reports the revision it started at.
#[tokio::test]
async fn a_stream_reads_at_one_revision_while_writes_go_on() {
    let mut tables = Vec::new();
    for server in both(&[]).await {
        let ch = channel(&server).await;
        let mut kv = KvClient::new(ch.clone());
        fill(&mut kv).await;
        let mut s = open(&ch, range("big/", "big0"), "").await.unwrap();
        let first = s.message().await.unwrap().unwrap().range_response.unwrap();
        for i in (0..2000).step_by(100) {
            kv.put(put(format!("big/{i:05}"), b"changed".to_vec()))
                .await
                .unwrap();
            kv.put(put(format!("big/{i:05}x"), b"new".to_vec()))
                .await
                .unwrap();
        }
        kv.delete_range(DeleteRangeRequest {
            key: "big/01000".into(),
            range_end: "big/01500".into(),
            prev_kv: false,
        })
        .await
        .unwrap();
        let (mut chunks, error) = drain(s).await;
        chunks.insert(0, first);
        tables.push(vec![describe(&chunks, error.as_ref())]);
    }
    assert_same("pinned revision", &tables[0], &tables[1]);
}

/// A compaction past the pinned revision ends the stream with etcd's compacted error at the
/// next chunk read (how many chunks arrive first depends on how far ahead the server was).
#[tokio::test]
async fn a_compaction_during_the_stream_ends_it_as_etcd_does() {
    let mut outcomes = Vec::new();
    for server in both(&[]).await {
        let ch = channel(&server).await;
        let mut kv = KvClient::new(ch.clone());
        fill(&mut kv).await;
        let mut s = open(&ch, range("big/", "big0"), "").await.unwrap();
        s.message().await.unwrap().unwrap();
        let rev = kv
            .put(put("other", b"v".to_vec()))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        kv.compact(CompactionRequest {
            revision: rev,
            physical: false,
        })
        .await
        .unwrap();
        let (chunks, error) = drain(s).await;
        let received: usize = chunks.iter().map(|c| c.kvs.len()).sum::<usize>() + 10;
        assert!(received < 2000, "the stream had ended already");
        assert!(
            chunks.iter().all(|c| c.header.is_none()),
            "no chunk before the error is the last one"
        );
        outcomes.push(error.as_ref().map(status));
    }
    assert_eq!(
        outcomes[0].as_deref(),
        Some("OutOfRange: etcdserver: mvcc: required revision has been compacted")
    );
    assert_eq!(outcomes[0], outcomes[1]);
}

async fn authenticate(ch: &Channel, name: &str, password: &str) -> String {
    AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Auth on: root, and alice, who may read `big/…` only. A stream is checked as a Range is:
/// before its first chunk, and after its last one for a change of the auth state meanwhile.
#[tokio::test]
async fn auth_is_checked_as_etcd_checks_it() {
    let mut tables = Vec::new();
    for server in both(&[]).await {
        let ch = channel(&server).await;
        let mut kv = KvClient::new(ch.clone());
        fill(&mut kv).await;
        kv.put(put("secret", b"s".to_vec())).await.unwrap();
        let mut auth = AuthClient::new(ch.clone());
        for name in ["root", "alice"] {
            auth.user_add(AuthUserAddRequest {
                name: name.into(),
                password: format!("{name}pw"),
                ..Default::default()
            })
            .await
            .unwrap();
            auth.role_add(AuthRoleAddRequest { name: name.into() })
                .await
                .unwrap();
            auth.user_grant_role(AuthUserGrantRoleRequest {
                user: name.into(),
                role: name.into(),
            })
            .await
            .unwrap();
        }
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "alice".into(),
            perm: Some(Permission {
                perm_type: Type::Read as i32,
                key: "big/".into(),
                range_end: "big0".into(),
            }),
        })
        .await
        .unwrap();
        auth.auth_enable(AuthEnableRequest {}).await.unwrap();
        let root = authenticate(&ch, "root", "rootpw").await;
        let alice = authenticate(&ch, "alice", "alicepw").await;
        let mut table = Vec::new();
        for (who, token) in [
            ("alice", &alice),
            ("nobody", &String::new()),
            ("bad", &"x.1".to_string()),
        ] {
            for r in [
                RangeRequest {
                    count_only: true,
                    ..range("big/", "big0")
                },
                RangeRequest {
                    count_only: true,
                    ..range("big/", "\0")
                },
                range("secret", ""),
            ] {
                table.push(format!(
                    "{who} {r:?}\n{}",
                    stream_text(&ch, r.clone(), token).await
                ));
            }
        }
        // The auth state changes while alice's stream runs: it is sent whole, then fails.
        let mut s = open(&ch, range("big/", "big0"), &alice).await.unwrap();
        s.message().await.unwrap().unwrap();
        let mut auth = AuthClient::new(ch.clone());
        auth.role_add(with_token(
            AuthRoleAddRequest {
                name: "another".into(),
            },
            &root,
        ))
        .await
        .unwrap();
        let (chunks, error) = drain(s).await;
        let received: usize = chunks.iter().map(|c| c.kvs.len()).sum::<usize>() + 10;
        table.push(format!(
            "stale auth: {received} kvs, last chunk {:?}, error {:?}",
            chunks.last().map(|c| (c.more, c.count, c.header.is_some())),
            error.as_ref().map(status)
        ));
        tables.push(table);
    }
    let etcd = tables[0].join("\n");
    assert!(
        etcd.contains("alice") && etcd.contains("PermissionDenied: etcdserver: permission denied")
    );
    assert!(
        etcd.contains("error Some(\"InvalidArgument: etcdserver: revision of auth store is old\")")
    );
    assert_same("auth", &tables[0], &tables[1]);
}
