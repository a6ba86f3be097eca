//! The plain-HTTP endpoints kubeadm's probes use (`--listen-metrics-urls`): /livez, /readyz,
//! /health (etcd 3.5+ body) and /metrics with etcd's metric names.

use std::io::{Read, Write};
use std::net::TcpStream;

use oxcd_tests::{free_port, Flavor, Server, StartOptions};

/// One HTTP/1.1 GET; returns the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn probes_and_metrics_answer_like_etcd() {
    let port = free_port();
    let server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            extra_args: vec![format!("--listen-metrics-urls=http://127.0.0.1:{port}")],
            ..Default::default()
        },
    )
    .await;
    let mut client = server.client().await;
    client.put("k", "v", None).await.unwrap();

    let probes = tokio::task::spawn_blocking(move || {
        [
            get(port, "/livez"),
            get(port, "/readyz"),
            get(port, "/health"),
            get(port, "/health?exclude=NOSPACE&serializable=true"),
            get(port, "/metrics"),
            get(port, "/nope"),
        ]
    })
    .await
    .unwrap();
    assert_eq!(probes[0], (200, "ok".to_string()));
    assert_eq!(probes[1], (200, "ok".to_string()));
    assert_eq!(
        probes[2],
        (200, r#"{"health":"true","reason":""}"#.to_string())
    );
    assert_eq!(probes[3].0, 200);
    assert_eq!(probes[4].0, 200);
    assert!(
        probes[4].1.contains("etcd_server_has_leader 1"),
        "{}",
        probes[4].1
    );
    assert!(
        probes[4]
            .1
            .contains("etcd_debugging_mvcc_current_revision 2"),
        "{}",
        probes[4].1
    );
    assert_eq!(probes[5].0, 404);
}

#[tokio::test]
async fn the_grpc_health_service_reports_serving() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let server = Server::start(Flavor::Oxcd).await;
    let channel = tonic::transport::Endpoint::from_shared(server.client_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let resp = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, ServingStatus::Serving as i32);
}
