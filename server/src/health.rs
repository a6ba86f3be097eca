//! The HTTP endpoints etcd serves on `--listen-metrics-urls` (kubeadm probes them on
//! 127.0.0.1:2381): `/livez`, `/readyz`, `/health` and a small `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::mvcc::MvccStore;
use crate::raft::Consensus;
use crate::storage::Engine;

/// A linearizable `/health` check gives up after this long, as etcd's does.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Health {
    pub consensus: Arc<Consensus>,
    pub store: Arc<MvccStore>,
    pub engine: Arc<Engine>,
    pub member_id: u64,
}

impl Health {
    /// Serves HTTP/1.1 on `listener` until `stopped`.
    pub async fn serve(self, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let health = self.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let health = health.clone();
                        async move { Ok::<_, Infallible>(health.answer(req).await) }
                    });
                    connections.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
                _ = stopped.wait_for(|s| *s) => return,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    async fn answer<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let has_leader = self.consensus.status().leader.is_some();
        match req.uri().path() {
            "/livez" => text(StatusCode::OK, "ok"),
            "/readyz" if has_leader => text(StatusCode::OK, "ok"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader"),
            "/health" => {
                let serializable = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.contains("serializable=true"));
                let reason = if !has_leader {
                    Some("RAFT NO LEADER")
                } else if !serializable
                    && tokio::time::timeout(HEALTH_READ_TIMEOUT, self.consensus.read_barrier())
                        .await
                        .map_or(true, |r| r.is_err())
                {
                    Some("QGET ERROR")
                } else {
                    None
                };
                let body = format!(
                    r#"{{"health":"{}","reason":"{}"}}"#,
                    reason.is_none(),
                    reason.unwrap_or("")
                );
                let status = if reason.is_none() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, &body)
            }
            "/metrics" => text(StatusCode::OK, &self.metrics(has_leader)),
            _ => text(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    /// A few of etcd's own metric names, in Prometheus text format.
    fn metrics(&self, has_leader: bool) -> String {
        let raft = self.consensus.status();
        let gauge = |name: &str, help: &str, value: String| {
            format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n")
        };
        [
            gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
                u8::from(has_leader).to_string(),
            ),
            gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader.",
                u8::from(raft.leader == Some(self.member_id)).to_string(),
            ),
            gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
                raft.last_log_index.to_string(),
            ),
            gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
                raft.applied_index.to_string(),
            ),
            gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                self.engine.data_size().to_string(),
            ),
            gauge(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
                self.store.current_revision().to_string(),
            ),
        ]
        .concat()
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp
}
