//! The gRPC statuses that etcd's server, grpc-go, gives for calls it never hands to etcd: a
//! request larger than the receive limit, and a method or service it does not serve. Clients
//! match on their codes and texts, so oxcd must answer each exactly as etcd does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use etcd_client::Error;
use oxcd_tests::{expect_grpc_error, for_both, Flavor, Target};
use tonic::codegen::http::uri::PathAndQuery;

/// Over etcd's default receive limit: --max-request-bytes (1.5 MiB) + 512 KiB = 2 MiB.
const LARGE: usize = 3 << 20;

/// etcd's answers, for oxcd's to be compared with ([`for_both`] runs etcd first).
#[derive(Clone, Default)]
struct Reference(Arc<Mutex<BTreeMap<String, (String, String)>>>);

impl Reference {
    fn same_as_etcd(&self, flavor: Flavor, what: &str, answer: (String, String)) {
        let mut answers = self.0.lock().unwrap();
        match flavor {
            Flavor::Etcd | Flavor::Etcd37 => {
                answers.insert(what.to_string(), answer);
            }
            Flavor::Oxcd | Flavor::OxcdPrevious => {
                assert_eq!(answer, answers[what], "{what}: etcd answered otherwise")
            }
        }
    }
}

fn assert_too_large((code, message): &(String, String)) {
    assert_eq!(code, "ResourceExhausted");
    assert!(
        message.starts_with("grpc: received message larger than max (")
            && message.ends_with(" vs. 2097152)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_put_over_the_receive_limit_is_resource_exhausted_as_grpc_go_words_it() {
    let reference = Reference::default();
    for_both(move |t: Target| {
        let reference = reference.clone();
        async move {
            // The client's own send limit must not stop the request first.
            let mut kv = t.client.kv_client().max_encoding_message_size(2 * LARGE);
            let answer = expect_grpc_error(kv.put("big", vec![b'x'; LARGE], None).await, "put");
            assert_too_large(&answer);
            reference.same_as_etcd(t.flavor, "put", answer);
            // The member goes on serving, on the same connection.
            t.client.clone().put("small", "x", None).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn a_watch_request_over_the_receive_limit_ends_its_stream_as_grpc_go_does() {
    let reference = Reference::default();
    for_both(move |t: Target| {
        let reference = reference.clone();
        async move {
            let mut client = t.client.clone();
            // grpc-go may fail the stream before its response headers, tonic after them.
            let outcome: Result<_, Error> = match client.watch(vec![b'k'; LARGE], None).await {
                Ok(mut stream) => stream.message().await,
                Err(e) => Err(e),
            };
            let answer = expect_grpc_error(outcome, "watch");
            assert_too_large(&answer);
            reference.same_as_etcd(t.flavor, "watch", answer);
            t.client.clone().put("small", "x", None).await.unwrap();
        }
    })
    .await;
}

/// Calls `path` with an empty message; the status it fails with.
async fn call(endpoint: &str, path: &'static str) -> (String, String) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<(), (), _>(
            tonic::Request::new(()),
            PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err(path);
    (format!("{:?}", status.code()), status.message().to_string())
}

#[tokio::test]
async fn unknown_methods_and_services_are_unimplemented_as_grpc_go_words_it() {
    let reference = Reference::default();
    for_both(move |t: Target| {
        let reference = reference.clone();
        async move {
            for (path, expected) in [
                (
                    "/etcdserverpb.KV/NoSuchMethod",
                    "unknown method NoSuchMethod for service etcdserverpb.KV",
                ),
                (
                    "/etcdserverpb.NoSuchService/Range",
                    "unknown service etcdserverpb.NoSuchService",
                ),
            ] {
                let answer = call(&t.endpoint, path).await;
                assert_eq!(answer, ("Unimplemented".to_string(), expected.to_string()));
                reference.same_as_etcd(t.flavor, path, answer);
            }
            // grpc-go's code for a path without a method changed: etcd 3.4's grpc-go (1.26)
            // says ResourceExhausted, the grpc-go of etcd 3.5+ (checked: 3.7.3) Unimplemented,
            // which oxcd follows.
            let (code, message) = call(&t.endpoint, "/no-method").await;
            assert_eq!(message, "malformed method name: \"/no-method\"");
            match t.flavor {
                Flavor::Etcd => assert!(["ResourceExhausted", "Unimplemented"].contains(&&*code)),
                Flavor::Etcd37 | Flavor::Oxcd | Flavor::OxcdPrevious => {
                    assert_eq!(code, "Unimplemented")
                }
            }
        }
    })
    .await;
}
