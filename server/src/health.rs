//! The HTTP endpoints etcd serves on `--listen-metrics-urls` (kubeadm probes them on
//! 127.0.0.1:2381) and on its client URLs (through `crate::http::Router`): `/livez`, `/readyz`,
//! `/health` and `/metrics` (see `crate::metrics`), with etcd 3.6/3.7's checks, reasons and bodies.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oxcd_proto::etcdserverpb::AlarmType;
use tokio::sync::watch;

use crate::alarm::Alarms;
use crate::downgrade::Downgrade;
use crate::error::EtcdError;
use crate::listen::Listener;
use crate::metrics::{metrics, MemberState};
use crate::mvcc::{KeyRange, MvccStore, RangeOptions};
use crate::replication::Replication;
use crate::storage::Engine;
use crate::watch::WatchHub;

#[derive(Clone)]
pub struct Health {
    pub consensus: Arc<dyn Replication>,
    pub store: Arc<MvccStore>,
    pub engine: Arc<Engine>,
    pub alarms: Arc<Alarms>,
    pub watches: Arc<WatchHub>,
    pub downgrade: Arc<Downgrade>,
    pub quota_bytes: u64,
    pub member_id: u64,
}

/// The checks of `/readyz` (all of them) and `/livez` (the serializable read only), by etcd's
/// names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }
}

const READYZ: [Check; 4] = [
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];
const LIVEZ: [Check; 1] = [Check::SerializableRead];

/// The values of query parameter `name`.
fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a str> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn query_flag(query: Option<&str>, name: &str) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .any(|pair| pair == name || query_values(Some(pair), name).any(|v| v == "true"))
}

impl Health {
    /// Serves HTTP/1.1 on `listener` until `stopped`.
    pub async fn serve(self, listener: Listener, mut stopped: watch::Receiver<bool>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((io, _)) = accepted else { continue };
                    let health = self.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let health = health.clone();
                        async move { Ok::<_, Infallible>(health.answer(req).await) }
                    });
                    connections.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(io), service)
                            .await;
                    });
                }
                _ = stopped.wait_for(|s| *s) => return,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    /// Answers one request; anything else than the probes and /metrics is etcd's 404.
    pub(crate) async fn answer<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let query = req.uri().query();
        match req.uri().path() {
            "/livez" => self.probe(&LIVEZ, query).await,
            "/readyz" => self.probe(&READYZ, query).await,
            "/health" => self.health(query).await,
            "/metrics" => text(StatusCode::OK, &self.metrics()),
            _ => {
                // Go's http.NotFound, as etcd answers an unknown path.
                let mut resp = text(StatusCode::NOT_FOUND, "404 page not found\n");
                resp.headers_mut().insert(
                    "x-content-type-options",
                    HeaderValue::from_static("nosniff"),
                );
                resp
            }
        }
    }

    /// `/livez` and `/readyz`: Kubernetes-style checks, `?exclude=<check>` and `?verbose`.
    async fn probe(&self, checks: &[Check], query: Option<&str>) -> Response<Full<Bytes>> {
        let excluded: Vec<&str> = query_values(query, "exclude").collect();
        let mut lines = String::new();
        let mut failed = false;
        for check in checks {
            let name = check.name();
            // etcd leaves an excluded check out of the list altogether.
            if excluded.contains(&name) {
                continue;
            }
            match self.run(*check).await {
                Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
                Err(reason) => {
                    failed = true;
                    lines.push_str(&format!("[-]{name} failed: {reason}\n"));
                }
            }
        }
        if failed {
            // etcd writes it with http.Error, which ends the body with one more newline.
            text(StatusCode::SERVICE_UNAVAILABLE, &format!("{lines}\n"))
        } else if query_flag(query, "verbose") {
            text(StatusCode::OK, &format!("{lines}ok\n"))
        } else {
            text(StatusCode::OK, "ok\n")
        }
    }

    async fn run(&self, check: Check) -> Result<(), String> {
        match check {
            Check::DataCorruption => {
                if self.alarms.raised(AlarmType::Corrupt) {
                    Err("alarm activated: CORRUPT".into())
                } else {
                    Ok(())
                }
            }
            Check::SerializableRead => self
                .store
                .range(&KeyRange::Single(Vec::new()), RangeOptions::default())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Check::LinearizableRead => self
                .consensus
                .read_barrier()
                .await
                .map_err(|e| e.to_string()),
            Check::NonLearner => {
                if self.consensus.status().is_learner {
                    Err(EtcdError::NotSupportedForLearner.to_string())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `/health`: alarms (unless `?exclude=NOSPACE|CORRUPT`), then a leader and a linearizable
    /// read, or with `?serializable=true` a local read only.
    async fn health(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let excluded: Vec<&str> = query_values(query, "exclude").collect();
        let serializable = query_flag(query, "serializable");
        let alarm = [AlarmType::Nospace, AlarmType::Corrupt]
            .into_iter()
            .find(|a| self.alarms.raised(*a) && !excluded.contains(&a.as_str_name()));
        let reason = if let Some(alarm) = alarm {
            Some(format!("ALARM {}", alarm.as_str_name()))
        } else if serializable {
            self.run(Check::SerializableRead)
                .await
                .err()
                .map(|e| format!("RANGE ERROR:{e}"))
        } else if self.consensus.status().leader.is_none() {
            Some("RAFT NO LEADER".into())
        } else {
            self.run(Check::LinearizableRead)
                .await
                .err()
                .map(|e| format!("RANGE ERROR:{e}"))
        };
        let counted = if reason.is_none() {
            &metrics().server.health_success
        } else {
            &metrics().server.health_failures
        };
        counted.inc();
        match reason {
            None => text(StatusCode::OK, r#"{"health":"true","reason":""}"#),
            Some(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}\n"),
            ),
        }
    }

    /// etcd's metrics, with this member's state.
    fn metrics(&self) -> String {
        let raft = self.consensus.status();
        metrics().render(&MemberState {
            member_id: self.member_id,
            has_leader: raft.leader.is_some(),
            is_leader: raft.leader == Some(self.member_id),
            committed_index: raft.last_log_index,
            applied_index: raft.applied_index,
            quota_backend_bytes: self.quota_bytes,
            cluster_version: self.downgrade.cluster_version().short(),
            db_total_size: self.engine.data_size(),
            db_total_size_in_use: self.engine.live_data_size(),
            keys: self.store.key_count() as u64,
            current_revision: self.store.current_revision(),
            compact_revision: self.store.compact_revision(),
            watch: self.watches.counts(),
            peers: self.consensus.peer_activity(),
            memory: self
                .engine
                .memory_usage()
                .parts()
                .into_iter()
                .chain(crate::allocator_memory())
                .collect(),
        })
    }
}

/// A text answer with the content type Go's net/http gives it.
fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
