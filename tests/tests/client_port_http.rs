//! Plain HTTP on the client port, next to gRPC (etcd's cmux), against etcd 3.7: /version, the
//! probes, /metrics and the 404s, over http:// and https:// (HTTP/1.1 and h2), while gRPC calls
//! and a watch go on on the same port.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use oxcd_tests::certs::{make_certificates, wait_for_handshake, TlsMember};
use oxcd_tests::{Flavor, Server};

/// One curl request: the status code, the content type and the body.
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-i"])
        .args(args)
        .output()
        .expect("curl must be installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

const PATHS: [&str; 10] = [
    "/health",
    "/health?serializable=true",
    "/livez",
    "/livez?verbose",
    "/readyz",
    "/readyz?verbose",
    "/readyz?exclude=linearizable_read&verbose",
    "/foo",
    "/",
    "/v2/keys",
];

/// Metric names every etcd dashboard queries and oxcd serves.
const CORE_METRICS: [&str; 6] = [
    "etcd_server_has_leader 1",
    "etcd_server_is_leader 1",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_debugging_mvcc_current_revision",
];

/// What a member's client port answers over HTTP: each path's status, content type and body
/// (a `?verbose` body's check lines sorted: etcd lists them in a random order), /version's keys
/// with the cluster version checked against the server's, and the core metric names.
fn answers(base: &str, extra: &[&str]) -> Vec<(u16, String, String)> {
    let get = |path: &str| {
        let url = format!("{base}{path}");
        let mut args = extra.to_vec();
        args.push(&url);
        curl(&args)
    };
    let mut seen: Vec<(u16, String, String)> = PATHS
        .iter()
        .map(|path| {
            let (status, content_type, body) = get(path);
            let mut lines: Vec<&str> = body.split_inclusive('\n').collect();
            let checks = lines.iter().take_while(|l| l.starts_with('[')).count();
            lines[..checks].sort();
            (status, content_type, lines.concat())
        })
        .collect();
    let (status, content_type, body) = get("/version");
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    let server = version["etcdserver"].as_str().unwrap();
    let minor: Vec<&str> = server.split('.').take(2).collect();
    assert_eq!(
        version["etcdcluster"].as_str().unwrap(),
        format!("{}.0", minor.join(".")),
        "{body}"
    );
    let mut keys: Vec<&String> = version.as_object().unwrap().keys().collect();
    keys.sort();
    seen.push((status, content_type, format!("{keys:?}")));
    let (status, _, metrics) = get("/metrics");
    for name in CORE_METRICS {
        assert!(
            metrics.contains(name),
            "{base}: {name} missing in\n{metrics}"
        );
    }
    seen.push((status, String::new(), String::new()));
    seen
}

/// HTTP/1.1 on a plain client port answers as etcd 3.7's does, while a watch and KV calls use
/// gRPC on the same port.
#[tokio::test]
async fn plain_http_on_the_client_port_answers_like_etcd() {
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let server = Server::start(flavor).await;
        let mut client = server.client().await;
        client.put("k", "v", None).await.unwrap();
        let mut events = client.watch("k", None).await.unwrap();
        let created = events.message().await.unwrap().unwrap();
        assert!(created.created(), "{flavor}");
        let base = server.client_url();
        let answered = tokio::task::spawn_blocking(move || answers(&base, &["--http1.1"]))
            .await
            .unwrap();
        // gRPC on the same port, on a connection opened before the HTTP requests.
        client.put("k", "v2", None).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("the watch saw no event")
            .unwrap()
            .unwrap();
        assert_eq!(event.events()[0].kv().unwrap().value(), b"v2", "{flavor}");
        seen.push(answered);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
}

/// Over TLS (client certificates required) curl's default (ALPN h2) and HTTP/1.1 both get
/// etcd's answers, and etcdctl's gRPC works on the same port.
#[tokio::test]
async fn https_client_ports_answer_http_over_h2_and_http1_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (ca, cert, key) = (file("ca.crt"), file("client.crt"), file("client.key"));
    let tls_args = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let member = TlsMember::start(&flavor.binary(), dir.path());
        wait_for_handshake(
            dir.path(),
            member.client_port,
            "client",
            Duration::from_secs(20),
        )
        .await;
        wait_until_put(dir.path(), &member.endpoint);
        let mut per_protocol = Vec::new();
        for protocol in ["--http2", "--http1.1"] {
            let mut args = tls_args.to_vec();
            args.push(protocol);
            let base = member.endpoint.clone();
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            per_protocol.push(
                tokio::task::spawn_blocking(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    answers(&base, &args)
                })
                .await
                .unwrap(),
            );
        }
        assert_eq!(per_protocol[0], per_protocol[1], "{flavor}: h2 vs HTTP/1.1");
        seen.push(per_protocol.remove(0));
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
}

/// etcdctl 3.7 puts a key over gRPC on `endpoint` with the test certificates; retried while the
/// member starts.
fn wait_until_put(dir: &Path, endpoint: &str) {
    let etcdctl = oxcd_tests::etcd37_bin().with_file_name("etcdctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(&etcdctl)
            .arg(format!("--endpoints={endpoint}"))
            .arg(format!("--cacert={}", dir.join("ca.crt").display()))
            .arg(format!("--cert={}", dir.join("client.crt").display()))
            .arg(format!("--key={}", dir.join("client.key").display()))
            .args(["--dial-timeout=2s", "put", "k", "v"])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} never took a put over gRPC: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One JSON gateway call with curl: the status and the JSON answer, with what differs between
/// any two clusters (ids, term, lease ids) taken out, and the message about a request that is
/// not JSON (its wording is Go's JSON decoder's in etcd).
fn gateway(base: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    gateway_as(None, base, method, path, body)
}

/// [`gateway`] with an `Authorization` header.
fn gateway_as(
    token: Option<&str>,
    base: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let url = format!("{base}{path}");
    let malformed = serde_json::from_str::<serde_json::Value>(body).is_err() && !body.is_empty();
    let authorization = format!("Authorization: {}", token.unwrap_or_default());
    let mut args = vec!["-X", method, "-d", body, &url];
    if token.is_some() {
        args.extend(["-H", &authorization]);
    }
    let (status, content_type, body) = curl(&args);
    assert_eq!(content_type, "application/json", "{path}");
    let mut json: serde_json::Value = serde_json::from_str(&body).unwrap();
    if let Some(header) = json.get_mut("header").and_then(|h| h.as_object_mut()) {
        for id in ["cluster_id", "member_id", "raft_term"] {
            header.remove(id);
        }
    }
    if let Some(object) = json.as_object_mut() {
        object.remove("ID");
        if malformed {
            object.remove("message");
        }
    }
    (status, json)
}

/// The JSON gateway's unary calls answer as etcd 3.7's: KV, leases, errors and unknown paths.
#[tokio::test]
async fn the_json_gateway_answers_like_etcd() {
    let calls: &[(&str, &str, &str)] = &[
        ("POST", "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        (
            "POST",
            "/v3/kv/put",
            r#"{"key":"Zm9vMg==","value":"","prev_kv":true}"#,
        ),
        ("POST", "/v3/kv/range", r#"{"key":"Zm9v"}"#),
        (
            "POST",
            "/v3/kv/range",
            r#"{"key":"Zm9v","rangeEnd":"Zm9w","keysOnly":true}"#,
        ),
        (
            "POST",
            "/v3/kv/range",
            r#"{"key":"AA==","range_end":"AA==","count_only":true}"#,
        ),
        ("POST", "/v3/kv/range", r#"{"key":"eA=="}"#),
        (
            "POST",
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","target":"VALUE","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"dHhu"}}]}"#,
        ),
        (
            "POST",
            "/v3/kv/deleterange",
            r#"{"key":"Zm9v","prev_kv":true}"#,
        ),
        ("POST", "/v3/lease/grant", r#"{"TTL":30}"#),
        ("POST", "/v3/kv/compaction", r#"{"revision":"3"}"#),
        ("POST", "/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#),
        ("POST", "/v3/kv/range", r#"{"key":""}"#),
        ("POST", "/v3/kv/range", "{bad"),
        ("POST", "/v3/kv/range", ""),
        ("GET", "/v3/kv/range", ""),
        ("POST", "/v3/nosuch", "{}"),
        ("POST", "/v3/auth/status", "{}"),
    ];
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let server = Server::start(flavor).await;
        let base = server.client_url();
        let answered = tokio::task::spawn_blocking(move || {
            calls
                .iter()
                .map(|(method, path, body)| (*path, gateway(&base, method, path, body)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        seen.push(answered);
    }
    for (etcd, oxcd) in seen[0].iter().zip(&seen[1]) {
        assert_eq!(etcd, oxcd, "etcd 3.7 (left), oxcd (right)");
    }
}

/// Auth through the gateway: a token from `/v3/auth/authenticate` in the `Authorization` header
/// is the caller, as in etcd 3.7; without it, or with a wrong one, the call is refused alike.
#[tokio::test]
async fn the_json_gateway_takes_the_authorization_header_as_etcd_does() {
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let server = Server::start(flavor).await;
        let base = server.client_url();
        let answered = tokio::task::spawn_blocking(move || {
            let call = |token: Option<&str>, path: &str, body: &str| {
                gateway_as(token, &base, "POST", path, body)
            };
            let mut answers = vec![
                call(
                    None,
                    "/v3/auth/user/add",
                    r#"{"name":"root","password":"pw"}"#,
                ),
                call(None, "/v3/auth/role/add", r#"{"name":"root"}"#),
                call(
                    None,
                    "/v3/auth/user/grant",
                    r#"{"user":"root","role":"root"}"#,
                ),
                call(None, "/v3/auth/enable", "{}"),
                call(None, "/v3/kv/put", r#"{"key":"YQ==","value":"Yg=="}"#),
                call(
                    Some("wrong"),
                    "/v3/kv/put",
                    r#"{"key":"YQ==","value":"Yg=="}"#,
                ),
                call(
                    None,
                    "/v3/auth/authenticate",
                    r#"{"name":"root","password":"no"}"#,
                ),
            ];
            let (status, mut authenticated) = call(
                None,
                "/v3/auth/authenticate",
                r#"{"name":"root","password":"pw"}"#,
            );
            let token = authenticated["token"].as_str().unwrap().to_string();
            authenticated.as_object_mut().unwrap().remove("token");
            answers.push((status, authenticated));
            let token = Some(token.as_str());
            answers.push(call(
                token,
                "/v3/kv/put",
                r#"{"key":"YQ==","value":"Yg=="}"#,
            ));
            answers.push(call(token, "/v3/kv/range", r#"{"key":"YQ=="}"#));
            answers.push(call(token, "/v3/auth/user/list", "{}"));
            answers
        })
        .await
        .unwrap();
        seen.push(answered);
    }
    for (etcd, oxcd) in seen[0].iter().zip(&seen[1]) {
        assert_eq!(etcd, oxcd, "etcd 3.7 (left), oxcd (right)");
    }
}

/// The gateway's streams as etcd 3.7 streams them: `/v3/watch` (history and live events, one
/// `{"result":…}` line each) and `/v3/lease/keepalive`.
#[tokio::test]
async fn the_json_gateway_streams_watches_and_keep_alives_like_etcd() {
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let server = Server::start(flavor).await;
        let base = server.client_url();
        let answered = tokio::task::spawn_blocking(move || {
            let stream = |path: &str, body: &str, seconds: &str| {
                Command::new("curl")
                    .args(["-sN", "--max-time", seconds, "-X", "POST", "-d", body])
                    .arg(format!("{base}{path}"))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            gateway(
                &base,
                "POST",
                "/v3/kv/put",
                r#"{"key":"Zm9v","value":"MQ=="}"#,
            );
            let watch = stream(
                "/v3/watch",
                r#"{"create_request":{"key":"Zm9v","start_revision":"1","prev_kv":true}}"#,
                "3",
            );
            std::thread::sleep(Duration::from_millis(500));
            gateway(
                &base,
                "POST",
                "/v3/kv/put",
                r#"{"key":"Zm9v","value":"Mg=="}"#,
            );
            gateway(&base, "POST", "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#);
            let grant = format!("{base}/v3/lease/grant");
            let (_, _, granted) = curl(&["-X", "POST", "-d", r#"{"TTL":30}"#, &grant]);
            let granted: serde_json::Value = serde_json::from_str(&granted).unwrap();
            let id = granted["ID"].as_str().unwrap();
            let keepalive = stream("/v3/lease/keepalive", &format!(r#"{{"ID":"{id}"}}"#), "1");
            let mut lines = Vec::new();
            for child in [watch, keepalive] {
                let out = child.wait_with_output().unwrap();
                for line in String::from_utf8(out.stdout).unwrap().lines() {
                    let mut json: serde_json::Value = serde_json::from_str(line).unwrap();
                    if let Some(result) = json.get_mut("result").and_then(|r| r.as_object_mut()) {
                        result.remove("ID");
                        if let Some(header) =
                            result.get_mut("header").and_then(|h| h.as_object_mut())
                        {
                            for id in ["cluster_id", "member_id", "raft_term"] {
                                header.remove(id);
                            }
                        }
                    }
                    lines.push(json.to_string());
                }
            }
            lines
        })
        .await
        .unwrap();
        seen.push(answered);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
    // created, the put before it, the put and delete after it, one keep-alive.
    assert_eq!(seen[1].len(), 5, "{:#?}", seen[1]);
}
