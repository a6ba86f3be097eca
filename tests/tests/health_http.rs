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

/// The probes of a member, each as status code and body; a `?verbose` body's check lines are
/// sorted, since etcd lists its checks in a random order.
async fn probe(port: u16, paths: &'static [&'static str]) -> Vec<(u16, String)> {
    tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|path| {
                let (code, body) = get(port, path);
                let mut lines: Vec<&str> = body.split_inclusive('\n').collect();
                let checks = lines.iter().take_while(|l| l.starts_with('[')).count();
                lines[..checks].sort();
                (code, lines.concat())
            })
            .collect()
    })
    .await
    .unwrap()
}

const PROBES: [&str; 8] = [
    "/livez",
    "/livez?verbose",
    "/readyz",
    "/readyz?verbose",
    "/readyz?exclude=data_corruption&verbose",
    "/health",
    "/health?exclude=NOSPACE&serializable=true",
    "/nope",
];

/// etcd 3.7's probes, checks, reasons and bodies, healthy and under a CORRUPT alarm.
#[tokio::test]
async fn probes_and_metrics_answer_like_etcd() {
    let mut seen = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let port = free_port();
        let server = Server::start_with(
            flavor,
            StartOptions {
                extra_args: vec![format!("--listen-metrics-urls=http://127.0.0.1:{port}")],
                ..Default::default()
            },
        )
        .await;
        let mut client = server.client().await;
        client.put("k", "v", None).await.unwrap();
        let healthy = probe(port, &PROBES).await;
        let metrics = probe(port, &["/metrics"]).await.remove(0).1;
        for metric in [
            "etcd_server_has_leader 1",
            "etcd_debugging_mvcc_current_revision 2",
        ] {
            assert!(metrics.contains(metric), "{flavor}: {metric} in\n{metrics}");
        }
        let member = client.status().await.unwrap().header().unwrap().member_id();
        let mut options = etcd_client::AlarmOptions::new();
        options.with_member(member);
        client
            .alarm(
                etcd_client::AlarmAction::Activate,
                etcd_client::AlarmType::Corrupt,
                Some(options),
            )
            .await
            .unwrap();
        let corrupt = probe(port, &PROBES).await;
        seen.push((healthy, corrupt));
    }
    assert_eq!(seen[0], seen[1], "etcd 3.7 (left), oxcd (right)");
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
