//! `oxcd-kube`: a small apiserver-style front end on an etcd-compatible store. It keeps core/v1
//! namespaces, nodes, pods, services, endpoints, configmaps, secrets and events, apps/v1
//! deployments and replicasets, coordination.k8s.io leases and networking.k8s.io ipaddresses
//! under `/registry` exactly as kube-apiserver does (keys, protobuf values, resourceVersions,
//! defaults), so the two can serve the same store side by side. Control loops act through the
//! API as kube-controller-manager's and kube-scheduler's do: a scheduler binds pending pods,
//! deployment and replicaset controllers roll workloads out, a garbage collector removes what
//! lost its owner, an endpoints controller lists each service's pods, a node lifecycle controller evicts the pods of silent nodes, a namespace
//! controller empties deleted namespaces, and simulated kubelets run pods.
//!
//! Layers: `store` (etcd calls) ← `resources` (kube-apiserver's registry strategies and
//! defaults), `patch` and the library's codec ← `api` (REST semantics) ← this file (HTTP), with
//! the controllers and `kubelet` as the API's in-process clients. Plain HTTP, no authentication
//! or authorization: bind it to localhost.

mod api;
mod compactor;
mod deployment_controller;
mod endpoints_controller;
mod garbage_collector;
mod kubelet;
mod namespace_lifecycle;
mod node_lifecycle;
mod ownership;
mod patch;
mod quantity;
mod replicaset_controller;
mod resources;
mod scheduler;
mod selector;
mod service_ips;
mod status;
mod store;
mod table;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use api::{Api, Reply, Request};
use oxcd_kube::envelope::PROTOBUF_MAGIC;
use oxcd_kube::object;
use patch::PatchType;
use status::ApiError;

// The embedded member's allocator, as in the oxcd binary.
oxcd::jemalloc_allocator!();

/// kube-apiserver refuses request bodies over 3 MiB.
const MAX_BODY: usize = 3 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    /// the store's client URLs, comma-separated (kube-apiserver's --etcd-servers); without
    /// them, the shim runs an oxcd member of its own, in this process
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// the embedded member's data directory (used only without --etcd-servers)
    #[arg(long, default_value = "default.oxcd-kube")]
    data_dir: std::path::PathBuf,
    /// the embedded member's client URL, where kube-apiserver, etcdctl or a second shim can
    /// reach the same store (used only without --etcd-servers)
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// the embedded member's peer URL (used only without --etcd-servers)
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    listen_peer_urls: String,
    /// key prefix objects live under (kube-apiserver's --etcd-prefix)
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// the IPv4 range services' cluster IPs come from (kube-apiserver's flag and default)
    #[arg(long, default_value = "10.0.0.0/24")]
    service_cluster_ip_range: String,
    /// how often the store is compacted to the revision of one interval before (kube-apiserver's
    /// flag and default; a Go duration; 0 never compacts)
    #[arg(long, default_value = "5m0s")]
    etcd_compaction_interval: String,
    /// how long events are kept (kube-apiserver's flag and default; a Go duration)
    #[arg(long, default_value = "1h0m0s")]
    event_ttl: String,
    /// address to serve plain HTTP on
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// control loops to run, comma-separated: `scheduler` binds pending pods to nodes (filters:
    /// readiness, node selector, taints, resources; scores: least allocated, balanced);
    /// `node-lifecycle` marks silent nodes unreachable and evicts their pods; `namespace`
    /// deletes a deleted namespace's objects, then the namespace; `deployment` rolls
    /// Deployments out through ReplicaSets; `replicaset` keeps each ReplicaSet's pods at its
    /// replicas; `garbage-collector` deletes what lost its owners; `endpoints` lists each
    /// Service's pods in its Endpoints. Empty: none, the REST front end alone.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "scheduler,node-lifecycle,namespace,deployment,replicaset,garbage-collector,endpoints"
    )]
    controllers: Vec<String>,
    /// seconds between the node lifecycle controller's looks at the nodes
    #[arg(long, default_value_t = 5)]
    node_monitor_period: u64,
    /// seconds without a heartbeat before a node is marked Unknown and unreachable
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// seconds a node stays unreachable before its pods are evicted
    #[arg(long, default_value_t = 300)]
    pod_eviction_timeout: u64,
    /// simulated kubelets to run: nodes NAME-PREFIX1..N register, heartbeat and run the pods
    /// bound to them
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// the simulated nodes' name prefix
    #[arg(long, default_value = "node-")]
    node_name_prefix: String,
    /// each simulated node's cpu (a quantity)
    #[arg(long, default_value = "4")]
    node_cpu: String,
    /// each simulated node's memory (a quantity)
    #[arg(long, default_value = "16Gi")]
    node_memory: String,
    /// pods each simulated node takes
    #[arg(long, default_value_t = 110)]
    node_pods: u32,
    /// seconds between a simulated node's status reports (its heartbeat)
    #[arg(long, default_value_t = 5)]
    node_status_interval: u64,
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: u16, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string() + "\n")).boxed())
        .expect("a valid response")
}

fn reply_response(reply: Result<Reply, ApiError>) -> Response<Body> {
    match reply {
        Ok(Reply::Document { code, body }) => json_response(code, &body),
        Err(error) => json_response(error.code, &error.status()),
        Ok(Reply::Watch(events)) => {
            let lines = ReceiverStream::new(events).map(|event| {
                Ok::<_, Infallible>(Frame::data(Bytes::from(event.to_string() + "\n")))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(StreamBody::new(lines).boxed())
                .expect("a valid response")
        }
    }
}

/// The request's object (or patch) in kubectl's JSON: clients send JSON, or (kubectl and
/// client-go for built-in kinds) Kubernetes' protobuf envelope. Replies are always JSON, which
/// every client accepts.
fn request_body(
    body: &[u8],
    content_type: &str,
    method: &hyper::Method,
) -> Result<Option<serde_json::Value>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if method == hyper::Method::PATCH {
        if PatchType::from_media_type(media_type).is_none() {
            return Err(ApiError::unsupported_media_type(
                content_type,
                PatchType::ACCEPTED,
            ));
        }
        return serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")));
    }
    let object = match media_type {
        "application/json" => serde_json::from_slice(body).map_err(|e| e.to_string()),
        "application/vnd.kubernetes.protobuf" => {
            // A DELETE's body is always DeleteOptions, whichever group the client names it in.
            match body.strip_prefix(PROTOBUF_MAGIC) {
                None => Err("the protobuf magic is missing".to_string()),
                Some(envelope) if method == hyper::Method::DELETE => object::decode_as(
                    envelope,
                    "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions",
                ),
                Some(envelope) => object::decode(envelope).map(|decoded| decoded.object),
            }
        }
        _ => {
            return Err(ApiError::unsupported_media_type(
                content_type,
                "application/json, application/vnd.kubernetes.protobuf",
            ))
        }
    };
    object
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("the body is not an object: {e}")))
}

async fn serve(api: Api, request: hyper::Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let error = ApiError::bad_request(format!("reading the request body: {e}"));
            return json_response(error.code, &error.status());
        }
    };
    let carries_object = [
        hyper::Method::POST,
        hyper::Method::PUT,
        hyper::Method::PATCH,
        hyper::Method::DELETE,
    ];
    let body = if !carries_object.contains(&parts.method) {
        None
    } else {
        match request_body(&body, content_type, &parts.method) {
            Ok(body) => body,
            Err(error) => return json_response(error.code, &error.status()),
        }
    };
    let request = Request {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
        body,
        patch_type: PatchType::from_media_type(content_type.split(';').next().unwrap_or("").trim())
            .unwrap_or(PatchType::Merge),
        table: parts
            .headers
            .get(header::ACCEPT)
            .and_then(|h| h.to_str().ok())
            .is_some_and(table::wanted),
        host: parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    };
    reply_response(api.handle(request).await)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let member = match flags.etcd_servers.is_empty() {
        true => Some(start_member(&flags).await?),
        false => None,
    };
    let endpoints = match &member {
        Some(member) => member
            .client_addrs()
            .iter()
            .map(|address| format!("http://{address}"))
            .collect(),
        None => flags.etcd_servers.clone(),
    };
    let serving = serve_api(&flags, &endpoints);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let outcome = tokio::select! {
        outcome = serving => outcome,
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    };
    // The member stops cleanly, releasing its data dir, however the front end ended.
    if let Some(member) = member {
        member.shutdown().await;
    }
    outcome
}

/// A Go duration of hours, minutes and seconds (`1h0m0s`, `90s`, `2h`, `0`).
fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total += number.parse::<u64>().ok()? * unit;
                number.clear();
            }
            _ => return None,
        }
    }
    (number.is_empty() && !text.is_empty()).then_some(Duration::from_secs(total))
}

/// The embedded oxcd member: one node, its data in --data-dir.
async fn start_member(flags: &Flags) -> anyhow::Result<oxcd::Node> {
    let config = oxcd::Config::builder()
        .name("oxcd-kube")
        .data_dir(&flags.data_dir)
        .listen_client_urls([flags.listen_client_urls.as_str()])
        .advertise_client_urls([flags.listen_client_urls.as_str()])
        .listen_peer_urls([flags.listen_peer_urls.as_str()])
        .initial_advertise_peer_urls([flags.listen_peer_urls.as_str()])
        .build()?;
    oxcd::logging::init(&config)?;
    let member = oxcd::Node::start(&config).await?;
    eprintln!(
        "oxcd-kube: embedded oxcd member in {}, clients on {}",
        flags.data_dir.display(),
        flags.listen_client_urls
    );
    Ok(member)
}

/// The REST front end and the chosen control loops on the store at `endpoints`, until the
/// listener fails.
async fn serve_api(flags: &Flags, endpoints: &[String]) -> anyhow::Result<()> {
    let store = store::Store::connect(endpoints).await?;
    let service_range = service_ips::ServiceRange::parse(&flags.service_cluster_ip_range)
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    let event_ttl = parse_duration(&flags.event_ttl)
        .ok_or_else(|| anyhow::anyhow!("--event-ttl: {:?} is not a duration", flags.event_ttl))?;
    let compaction_interval = parse_duration(&flags.etcd_compaction_interval).ok_or_else(|| {
        anyhow::anyhow!(
            "--etcd-compaction-interval: {:?} is not a duration",
            flags.etcd_compaction_interval
        )
    })?;
    if !compaction_interval.is_zero() {
        tokio::spawn(compactor::run(store.clone(), compaction_interval));
    }
    let api = Api::new(store, &flags.etcd_prefix, service_range, event_ttl);
    for quantity in [&flags.node_cpu, &flags.node_memory] {
        anyhow::ensure!(
            quantity::parse_quantity(quantity).is_some(),
            "{quantity:?} is not a quantity"
        );
    }
    // What kube-apiserver's system namespaces controller creates at start-up.
    for namespace in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace}});
        match api.call("POST", "/api/v1/namespaces", Some(object)).await {
            Err(error) if error.code != 409 => {
                anyhow::bail!("creating namespace {namespace}: {}", error.message)
            }
            _ => {}
        }
    }
    for controller in flags.controllers.iter().filter(|c| !c.is_empty()) {
        match controller.as_str() {
            "scheduler" => {
                tokio::spawn(scheduler::run(api.clone()));
            }
            "node-lifecycle" => {
                let timing = node_lifecycle::Timing {
                    monitor_period: Duration::from_secs(flags.node_monitor_period.max(1)),
                    grace_period: Duration::from_secs(flags.node_monitor_grace_period),
                    eviction_timeout: Duration::from_secs(flags.pod_eviction_timeout),
                };
                tokio::spawn(node_lifecycle::run(api.clone(), timing));
            }
            "namespace" => {
                tokio::spawn(namespace_lifecycle::run(api.clone()));
            }
            "deployment" => {
                tokio::spawn(deployment_controller::run(api.clone()));
            }
            "replicaset" => {
                tokio::spawn(replicaset_controller::run(api.clone()));
            }
            "garbage-collector" => {
                tokio::spawn(garbage_collector::run(api.clone()));
            }
            "endpoints" => {
                tokio::spawn(endpoints_controller::run(api.clone()));
            }
            other => anyhow::bail!(
                "--controllers: unknown controller {other:?} (scheduler, node-lifecycle, namespace, deployment, replicaset, garbage-collector, endpoints)"
            ),
        }
    }
    if flags.nodes > 0 {
        let fleet = kubelet::Fleet {
            names: (1..=flags.nodes)
                .map(|n| format!("{}{n}", flags.node_name_prefix))
                .collect(),
            cpu: flags.node_cpu.clone(),
            memory: flags.node_memory.clone(),
            pods: flags.node_pods,
            status_interval: Duration::from_secs(flags.node_status_interval.max(1)),
        };
        tokio::spawn(kubelet::run(api.clone(), fleet));
    }
    let listener = tokio::net::TcpListener::bind(flags.listen).await?;
    eprintln!(
        "oxcd-kube serving http://{} on {} (prefix {}; no authentication)",
        listener.local_addr()?,
        endpoints.join(","),
        flags.etcd_prefix
    );
    loop {
        let (connection, _) = listener.accept().await?;
        let api = api.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(serve(api, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(connection), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h30m"), Some(Duration::from_secs(9000)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration(""), None);
    }
}
