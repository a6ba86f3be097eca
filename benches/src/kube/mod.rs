//! `oxcd-bench kube`: the store under Kubernetes' own control plane. A fresh store cluster (etcd,
//! then oxcd, same flags), the real kube-apiserver, kube-controller-manager and kube-scheduler on
//! it, simulated nodes renewing their Leases, and Deployments scaled up and down in rounds:
//! pods created by the controllers, bound by the scheduler and reported Running by the simulated
//! kubelets, then deleted. Reported per store: pods started and deleted per second, how long a
//! pod took to be bound and to run, kube-apiserver's request latencies and its store-call
//! latencies (from its /metrics), and the store's CPU, memory and disk.

mod client;
mod fleet;
mod list;
mod metrics;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper::{Method, StatusCode};
use oxcd_tests::kube::ApiServer;
use serde_json::json;

use crate::plot;
use crate::report::{Machine, Target, Unit};
use crate::server::{new_work_dir, Cluster};
use client::{ApiClient, BodyKind};
use fleet::{Kubelets, LeaseRenewer, NAMESPACE};
use metrics::{Buckets, Labels};

/// The image every pod runs; nothing pulls it.
const POD_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// HTTP/2 connections from the simulated nodes to kube-apiserver.
const CONNECTIONS: usize = 4;
/// The longest a round's scale-up or scale-down may take before the run fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the store's RSS is sampled during the rounds, for its mean.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
const SERVICE_ACCOUNT_WAIT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug)]
pub struct KubeArgs {
    /// The oxcd server binary.
    #[arg(long)]
    oxcd_bin: PathBuf,
    /// The etcd server binary to compare with.
    #[arg(long)]
    etcd_bin: PathBuf,
    /// Cluster sizes to run, e.g. `1,3`. (Kubernetes' binaries come from $KUBE_BIN_DIR, by
    /// default what tests/reference/build-kubernetes.sh builds.)
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    members: Vec<usize>,
    /// Simulated nodes, each renewing its Lease every --lease-interval.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Seconds between one node's Lease renewals (a kubelet's default is 10).
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
    /// Deployments scaled together.
    #[arg(long, default_value_t = 10)]
    deployments: usize,
    /// Replicas of each Deployment at the top of a round.
    #[arg(long, default_value_t = 30)]
    replicas: usize,
    /// Scale-up/scale-down rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pods written into the store for the list phase (0 skips it): one unpaged list of them
    /// through a kube-apiserver without a watch cache, and the store's peak memory for it.
    #[arg(long, default_value_t = 100_000)]
    list_pods: usize,
    /// kube-controller-manager's and kube-scheduler's --kube-api-qps (their burst is twice
    /// this); their defaults (20 and 50) would make the controllers the bottleneck.
    #[arg(long, default_value_t = 500)]
    control_plane_qps: u32,
    /// Directory for report.md, report.json and the plots; created if missing.
    #[arg(long)]
    out: PathBuf,
}

/// What one store did under the control plane.
struct Measurement {
    store: &'static str,
    members: usize,
    /// By metric id (see `METRICS`).
    values: BTreeMap<&'static str, f64>,
    /// Seconds each round's scale-up and scale-down took.
    rounds: Vec<(f64, f64)>,
}

struct MetricDef {
    id: &'static str,
    label: &'static str,
    unit: Unit,
    /// The target for oxcd/etcd.
    target: Option<Target>,
}

const METRICS: &[MetricDef] = &[
    MetricDef {
        id: "pods_started_per_s",
        label: "pods created, bound and Running per second (scale-up)",
        unit: Unit::PodsPerSec,
        target: Some(Target::higher(1.5)),
    },
    MetricDef {
        id: "pods_deleted_per_s",
        label: "pods deleted per second (scale-down)",
        unit: Unit::PodsPerSec,
        target: None,
    },
    MetricDef {
        id: "bound_p50_ms",
        label: "pod seen → bound, p50",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "bound_p99_ms",
        label: "pod seen → bound, p99",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "running_p99_ms",
        label: "pod seen → Running, p99",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "apiserver_write_p50_ms",
        label: "kube-apiserver writes (POST/PUT/PATCH/DELETE), p50",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "apiserver_write_p99_ms",
        label: "kube-apiserver writes (POST/PUT/PATCH/DELETE), p99",
        unit: Unit::Millis,
        target: Some(Target::lower(1.0)),
    },
    MetricDef {
        id: "apiserver_read_p99_ms",
        label: "kube-apiserver reads (GET/LIST), p99",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "apiserver_get_p99_ms",
        label: "of which GETs, p99",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "apiserver_list_p99_ms",
        label: "of which LISTs, p99",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "apiserver_lists",
        label: "kube-apiserver LISTs during the rounds",
        unit: Unit::Count,
        target: None,
    },
    MetricDef {
        id: "store_call_p50_ms",
        label: "kube-apiserver's calls to the store, p50",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "store_call_p99_ms",
        label: "kube-apiserver's calls to the store, p99",
        unit: Unit::Millis,
        target: None,
    },
    MetricDef {
        id: "store_cpu_seconds",
        label: "store CPU time during the rounds (all members)",
        unit: Unit::Seconds,
        target: None,
    },
    MetricDef {
        id: "store_rss_bytes",
        label: "store RSS after the rounds (all members)",
        unit: Unit::Bytes,
        target: Some(Target::lower(0.5)),
    },
    MetricDef {
        id: "store_mean_rss_bytes",
        label: "store RSS during the rounds, mean of samples every 250 ms (all members)",
        unit: Unit::Bytes,
        target: Some(Target::lower(0.5)),
    },
    MetricDef {
        id: "store_heap_bytes",
        label: "store heap in use after the rounds (all members; Go's heap in use, jemalloc's allocated)",
        unit: Unit::Bytes,
        target: None,
    },
    MetricDef {
        id: "store_memtables_bytes",
        label: "of which RocksDB memtables (oxcd)",
        unit: Unit::Bytes,
        target: None,
    },
    MetricDef {
        id: "store_block_cache_bytes",
        label: "of which RocksDB block cache (oxcd)",
        unit: Unit::Bytes,
        target: None,
    },
    MetricDef {
        id: "store_peak_rss_bytes",
        label: "store peak RSS (all members)",
        unit: Unit::Bytes,
        target: None,
    },
    MetricDef {
        id: "store_disk_bytes",
        label: "store data dirs after the rounds (all members)",
        unit: Unit::Bytes,
        target: None,
    },
    MetricDef {
        id: "list_seconds",
        label: "list of the namespace's pods, unpaged, without watch cache",
        unit: Unit::Seconds,
        target: None,
    },
    MetricDef {
        id: "list_store_startup_peak_bytes",
        label: "list phase: store peak RSS before the list (largest member)",
        unit: Unit::Bytes,
        target: None,
    },
    MetricDef {
        id: "list_store_peak_bytes",
        label: "list phase: store peak RSS after the list (largest member)",
        unit: Unit::Bytes,
        target: Some(Target::lower(0.5)),
    },
    MetricDef {
        id: "apiserver_cpu_seconds",
        label: "kube-apiserver CPU time during the rounds",
        unit: Unit::Seconds,
        target: None,
    },
    MetricDef {
        id: "lease_renewals",
        label: "node Lease renewals",
        unit: Unit::Count,
        target: None,
    },
    MetricDef {
        id: "pod_watch_restarts",
        label: "the observer's pod watch closed by the apiserver and listed again",
        unit: Unit::Count,
        target: None,
    },
    MetricDef {
        id: "kubelet_watch_restarts",
        label: "simulated kubelets' own pod watches closed and listed again",
        unit: Unit::Count,
        target: None,
    },
    MetricDef {
        id: "failed_calls",
        label: "simulated nodes' failed calls (renewals and pod updates)",
        unit: Unit::Count,
        target: None,
    },
];

pub async fn run(args: KubeArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let machine_before = Machine::now(&args.etcd_bin, &args.oxcd_bin);
    let mut measurements = Vec::new();
    for &members in &args.members {
        for (store, binary) in [("etcd", &args.etcd_bin), ("oxcd", &args.oxcd_bin)] {
            let measurement = run_one(&args, store, binary, members)
                .await
                .with_context(|| format!("{store}, {members} member(s)"))?;
            eprintln!(
                "{store} ({members} member(s)): {:.1} pods/s started, rounds {:?}",
                measurement.values["pods_started_per_s"], measurement.rounds
            );
            measurements.push(measurement);
        }
    }
    let machine_after = Machine::now(&args.etcd_bin, &args.oxcd_bin);
    for &members in &args.members {
        std::fs::write(
            args.out.join(format!("pods-{members}m.svg")),
            bars(&measurements, members, "Pods per second", |def| {
                def.unit == Unit::PodsPerSec
            }),
        )?;
        std::fs::write(
            args.out.join(format!("latency-{members}m.svg")),
            bars(&measurements, members, "Latencies (ms)", |def| {
                def.unit == Unit::Millis
            }),
        )?;
    }
    let markdown = to_markdown(&args, &machine_before, &machine_after, &measurements);
    std::fs::write(args.out.join("report.md"), &markdown)?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&to_json(&args, &measurements))?,
    )?;
    print!("{markdown}");
    Ok(())
}

async fn run_one(
    args: &KubeArgs,
    store: &'static str,
    binary: &Path,
    members: usize,
) -> Result<Measurement> {
    let work_dir = new_work_dir()?;
    let label = format!("{store} ({members} member(s))");
    let mut cluster =
        Cluster::start_ready(&label, binary, &work_dir.join("store"), members).await?;
    let control_plane_dir = work_dir.join("control-plane");
    std::fs::create_dir_all(&control_plane_dir)?;
    let servers = cluster.client_urls().join(",");
    let qps = args.control_plane_qps;
    let (qps_flag, burst_flag) = (
        format!("--kube-api-qps={qps}"),
        format!("--kube-api-burst={}", 2 * qps),
    );
    let start_label = label.clone();
    // The launcher waits with blocking sleeps and kubectl calls.
    let (mut apiserver, components) = tokio::task::spawn_blocking(move || {
        let apiserver = ApiServer::start_ready(&servers, &control_plane_dir, &[], &start_label);
        let controller_manager = apiserver.start_component(
            "kube-controller-manager",
            &[
                &qps_flag,
                &burst_flag,
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
            ],
        );
        let scheduler = apiserver.start_component("kube-scheduler", &[&qps_flag, &burst_flag]);
        (apiserver, [controller_manager, scheduler])
    })
    .await?;

    let client =
        Arc::new(ApiClient::connect(&apiserver.url(), apiserver.admin_token(), CONNECTIONS).await?);
    prepare_namespace(&client).await?;
    let leases = fleet::register_nodes(&client, args.nodes).await?;
    let renewer = LeaseRenewer::start(&client, leases, Duration::from_secs(args.lease_interval));
    let kubelets = Kubelets::start(&client, args.nodes).await?;
    create_deployments(&client, args.deployments).await?;
    eprintln!("{label}: {} nodes registered; rounds start", args.nodes);

    let metrics_before = client.text("/metrics").await?;
    let store_cpu_before = cluster.cpu_seconds()?;
    let apiserver_cpu_before = crate::server::cpu_seconds(apiserver.pid())?;
    let target = args.deployments * args.replicas;
    let run_rounds = async {
        let mut rounds = Vec::new();
        for _ in 0..args.rounds {
            let started = Instant::now();
            scale_all(&client, args.deployments, args.replicas).await?;
            kubelets
                .wait_until("scale-up", ROUND_TIMEOUT, |book| book.running() >= target)
                .await?;
            let up = started.elapsed().as_secs_f64();
            let started = Instant::now();
            scale_all(&client, args.deployments, 0).await?;
            kubelets
                .wait_until("scale-down", ROUND_TIMEOUT, |book| book.len() == 0)
                .await?;
            rounds.push((up, started.elapsed().as_secs_f64()));
        }
        anyhow::Ok(rounds)
    };
    // What the store holds at one moment swings by tens of MiB as its write buffers fill and
    // flush; the mean over the rounds does not depend on where in that cycle they ended.
    let mut rss_samples = Vec::new();
    let mut sample_every = tokio::time::interval(RSS_SAMPLE_INTERVAL);
    let rounds = {
        tokio::pin!(run_rounds);
        loop {
            tokio::select! {
                rounds = &mut run_rounds => break rounds?,
                _ = sample_every.tick() => rss_samples.push(cluster.rss_bytes()? as f64),
            }
        }
    };
    let store_cpu = cluster.cpu_seconds()? - store_cpu_before;
    let apiserver_cpu = crate::server::cpu_seconds(apiserver.pid())? - apiserver_cpu_before;
    let metrics_after = client.text("/metrics").await?;
    let template = match args.list_pods {
        0 => None,
        _ => Some(template_pod(&client, &kubelets).await?),
    };
    let (renewals, renewal_failures) = renewer.stop();
    let (bound, running, watch_restarts) = kubelets.with_book(|book| {
        (
            book.bound_us.clone(),
            book.running_us.clone(),
            book.watch_restarts,
        )
    });
    let (kubelet_failures, kubelet_watch_restarts) = kubelets.stop();

    let mut values = BTreeMap::new();
    let pods = (target * args.rounds) as f64;
    values.insert(
        "pods_started_per_s",
        pods / rounds.iter().map(|r| r.0).sum::<f64>(),
    );
    values.insert(
        "pods_deleted_per_s",
        pods / rounds.iter().map(|r| r.1).sum::<f64>(),
    );
    let ms = |us: u64| us as f64 / 1000.0;
    if !bound.is_empty() {
        values.insert("bound_p50_ms", ms(bound.value_at_quantile(0.5)));
        values.insert("bound_p99_ms", ms(bound.value_at_quantile(0.99)));
    }
    if !running.is_empty() {
        values.insert("running_p99_ms", ms(running.value_at_quantile(0.99)));
    }
    let requests = |keep: fn(&Labels) -> bool| {
        let family = "apiserver_request_duration_seconds";
        Buckets::scrape(&metrics_after, family, keep).since(&Buckets::scrape(
            &metrics_before,
            family,
            keep,
        ))
    };
    let writes = requests(|labels| {
        matches!(
            labels.get("verb").map(String::as_str),
            Some("POST" | "PUT" | "PATCH" | "DELETE")
        )
    });
    let reads =
        requests(|labels| matches!(labels.get("verb").map(String::as_str), Some("GET" | "LIST")));
    // Reads are few, so their p99 is their slowest handful; these say which kind that is.
    let gets = requests(|labels| labels.get("verb").map(String::as_str) == Some("GET"));
    let lists = requests(|labels| labels.get("verb").map(String::as_str) == Some("LIST"));
    values.insert("apiserver_lists", lists.count());
    let store_calls =
        Buckets::scrape(&metrics_after, "etcd_request_duration_seconds", |_| true).since(
            &Buckets::scrape(&metrics_before, "etcd_request_duration_seconds", |_| true),
        );
    for (id, buckets, q) in [
        ("apiserver_write_p50_ms", &writes, 0.5),
        ("apiserver_write_p99_ms", &writes, 0.99),
        ("apiserver_read_p99_ms", &reads, 0.99),
        ("apiserver_get_p99_ms", &gets, 0.99),
        ("apiserver_list_p99_ms", &lists, 0.99),
        ("store_call_p50_ms", &store_calls, 0.5),
        ("store_call_p99_ms", &store_calls, 0.99),
    ] {
        if let Some(seconds) = buckets.quantile(q) {
            values.insert(id, seconds * 1000.0);
        }
    }
    values.insert("store_cpu_seconds", store_cpu);
    values.insert("apiserver_cpu_seconds", apiserver_cpu);
    values.insert("store_rss_bytes", cluster.rss_bytes()? as f64);
    if !rss_samples.is_empty() {
        let mean = rss_samples.iter().sum::<f64>() / rss_samples.len() as f64;
        values.insert("store_mean_rss_bytes", mean);
    }
    values.extend(heap_after_rounds(&cluster).await?);
    let peak: u64 = cluster
        .members()
        .iter()
        .map(|member| member.peak_rss_bytes())
        .sum::<Result<u64>>()?;
    values.insert("store_peak_rss_bytes", peak as f64);
    values.insert("store_disk_bytes", cluster.data_dir_bytes()? as f64);
    values.insert("lease_renewals", renewals as f64);
    values.insert("pod_watch_restarts", watch_restarts as f64);
    values.insert("kubelet_watch_restarts", kubelet_watch_restarts as f64);
    values.insert("failed_calls", (renewal_failures + kubelet_failures) as f64);

    drop(components);
    // Its connections, which would otherwise hold up the apiserver's graceful stop.
    drop(client);
    tokio::task::spawn_blocking(move || apiserver.stop()).await?;
    if let Some(template) = template {
        let list_dir = work_dir.join("control-plane-list");
        std::fs::create_dir_all(&list_dir)?;
        let figures =
            list::measure(&mut cluster, &template, args.list_pods, &list_dir, &label).await?;
        values.insert("list_seconds", figures.seconds);
        values.insert(
            "list_store_startup_peak_bytes",
            figures.startup_peak_bytes as f64,
        );
        values.insert("list_store_peak_bytes", figures.peak_bytes as f64);
    }
    cluster.stop().await?;
    std::fs::remove_dir_all(&work_dir).ok();
    Ok(Measurement {
        store,
        members,
        values,
        rounds,
    })
}

/// Creates the benchmark's namespace and waits for its default ServiceAccount, without which
/// the ServiceAccount admission plugin refuses pods.
async fn prepare_namespace(client: &ApiClient) -> Result<()> {
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE}});
    client
        .call(
            Method::POST,
            "/api/v1/namespaces",
            Some((BodyKind::Object, &namespace)),
        )
        .await?
        .success("creating the namespace")?;
    let deadline = Instant::now() + SERVICE_ACCOUNT_WAIT;
    let path = format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default");
    while client.call(Method::GET, &path, None).await?.status != StatusCode::OK {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the controllers made no default ServiceAccount within {SERVICE_ACCOUNT_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A pod as the API returns it once a kubelet runs it: the model for the list phase's pods.
async fn template_pod(client: &ApiClient, kubelets: &Kubelets) -> Result<serde_json::Value> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "list-template", "namespace": NAMESPACE,
            "labels": {"app": "list", "pod-template-hash": "5d8f7c9b6"}},
        "spec": {
            "nodeName": fleet::node_name(0),
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": POD_IMAGE,
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
        },
    });
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    client
        .call(Method::POST, &path, Some((BodyKind::Object, &pod)))
        .await?
        .success("creating the list phase's template pod")?;
    kubelets
        .wait_until("the template pod running", ROUND_TIMEOUT, |book| {
            book.running() >= 1
        })
        .await?;
    client
        .call(Method::GET, &format!("{path}/list-template"), None)
        .await?
        .success("reading the template pod")
}

fn deployment_name(index: usize) -> String {
    format!("bench-{index:03}")
}

async fn create_deployments(client: &ApiClient, count: usize) -> Result<()> {
    for index in 0..count {
        let name = deployment_name(index);
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "app", "image": POD_IMAGE,
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
                    },
                },
            },
        });
        client
            .call(
                Method::POST,
                &format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments"),
                Some((BodyKind::Object, &deployment)),
            )
            .await?
            .success(&format!("creating deployment {name}"))?;
    }
    Ok(())
}

/// Sets every Deployment's replicas through its scale subresource, as `kubectl scale` does.
async fn scale_all(client: &ApiClient, deployments: usize, replicas: usize) -> Result<()> {
    let patch = json!({"spec": {"replicas": replicas}});
    for index in 0..deployments {
        let path = format!(
            "/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{}/scale",
            deployment_name(index)
        );
        client
            .call(Method::PATCH, &path, Some((BodyKind::MergePatch, &patch)))
            .await?
            .success(&format!("scaling {path}"))?;
    }
    Ok(())
}

/// What the members' own metrics say their memory is: the heap in use (Go's for etcd,
/// jemalloc's live allocations for oxcd, RocksDB's included) and, for oxcd, RocksDB's memtables
/// and block cache. Summed over the members; a figure a store does not report is left out.
async fn heap_after_rounds(cluster: &Cluster) -> Result<Vec<(&'static str, f64)>> {
    let mut sums: BTreeMap<&'static str, f64> = BTreeMap::new();
    for member in cluster.members() {
        let text = member.metrics_text().await?;
        let held = |holder: &str| {
            metrics::sample_sum(&text, "oxcd_memory_bytes", |labels| {
                labels.get("holder").map(String::as_str) == Some(holder)
            })
        };
        let figures = [
            (
                "store_heap_bytes",
                metrics::sample_sum(&text, "go_memstats_heap_inuse_bytes", |_| true)
                    .or(held("allocator_allocated")),
            ),
            ("store_memtables_bytes", held("rocksdb_memtables")),
            ("store_block_cache_bytes", held("rocksdb_block_cache")),
        ];
        for (id, value) in figures {
            if let Some(value) = value {
                *sums.entry(id).or_default() += value;
            }
        }
    }
    Ok(sums.into_iter().collect())
}

fn value(measurements: &[Measurement], store: &str, members: usize, id: &str) -> Option<f64> {
    measurements
        .iter()
        .find(|m| m.store == store && m.members == members)
        .and_then(|m| m.values.get(id).copied())
}

fn shown(def: &MetricDef, value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| def.unit.format(v))
}

fn bars(
    measurements: &[Measurement],
    members: usize,
    title: &str,
    keep: impl Fn(&MetricDef) -> bool,
) -> String {
    let bars: Vec<(String, Option<f64>, Option<f64>)> = METRICS
        .iter()
        .filter(|def| keep(def))
        .map(|def| {
            (
                def.label.to_owned(),
                value(measurements, "etcd", members, def.id),
                value(measurements, "oxcd", members, def.id),
            )
        })
        .collect();
    plot::paired_bars(&format!("{title}, {members} member(s)"), &bars)
}

fn to_markdown(
    args: &KubeArgs,
    before: &Machine,
    after: &Machine,
    measurements: &[Measurement],
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# The store under Kubernetes' control plane: etcd vs oxcd\n"
    );
    let _ = writeln!(
        md,
        "`oxcd-bench kube --members {} --nodes {} --lease-interval {} --deployments {} \
         --replicas {} --rounds {} --list-pods {} --control-plane-qps {}`, {} on a {}-core machine \
         (load average before: {}, after: {}).\n",
        args.members
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.nodes,
        args.lease_interval,
        args.deployments,
        args.replicas,
        args.rounds,
        args.list_pods,
        args.control_plane_qps,
        before.at,
        before.cores,
        before.loadavg,
        after.loadavg,
    );
    let _ = writeln!(
        md,
        "- etcd: {}\n- oxcd: {} (checkout {})\n- Kubernetes: the kube-apiserver, \
         kube-controller-manager and kube-scheduler of `tests/reference/build-kubernetes.sh`.\n",
        before.etcd_version, before.oxcd_version, before.oxcd_commit
    );
    let _ = writeln!(
        md,
        "Method: for each cluster size, a fresh etcd cluster and then a fresh oxcd cluster (same \
         flags). On each, kube-apiserver (`--etcd-servers` listing every member), the \
         controller-manager and the scheduler start; {} simulated nodes register and renew their \
         Lease every {} s; {} Deployments of a one-container pod are scaled from 0 to {} \
         replicas and back to 0, {} times. Then, with the control plane stopped, {} pods are written \
         into the store as kube-apiserver writes them, every member is restarted, and a \
         kube-apiserver with `--watch-cache=false` lists them in one request (kube-apiserver 1.37 \
         reads such a list with etcd 3.7's RangeStream). A round's scale-up ends when every pod is Running (the \
         simulated kubelets report a pod Running once it is bound), its scale-down when every pod \
         is gone (they finish deletions with grace 0). Latencies \"seen\" are from the kubelets' \
         watch's first sight of a pod; when the apiserver closes that watch (it does when its \
         handler falls behind; the count is in the table) the pods are listed again, and a pod \
         first seen in such a list counts from there. kube-apiserver's figures are its own histograms \
         (`apiserver_request_duration_seconds`, `etcd_request_duration_seconds`) over the rounds, \
         quantiles interpolated within buckets as Prometheus does, so they are coarse. Everything \
         runs on this one machine, the control plane included, so the store competes with it for \
         CPU.\n",
        args.nodes, args.lease_interval, args.deployments, args.replicas, args.rounds, args.list_pods
    );
    for &members in &args.members {
        let _ = writeln!(md, "## {members} member(s)\n");
        let _ = writeln!(md, "| metric | etcd | oxcd | oxcd/etcd | target |");
        let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
        for def in METRICS {
            let etcd = value(measurements, "etcd", members, def.id);
            let oxcd = value(measurements, "oxcd", members, def.id);
            let ratio = match (etcd, oxcd) {
                (Some(e), Some(o)) if e > 0.0 => format!("{:.2}", o / e),
                _ => "n/a".to_owned(),
            };
            let target = match (def.target, etcd, oxcd) {
                (Some(target), Some(e), Some(o)) if e > 0.0 => {
                    let verdict = if target.ratio_met(o / e) {
                        "met"
                    } else {
                        "missed"
                    };
                    format!("{}: {verdict}", target.text())
                }
                _ => String::new(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {ratio} | {target} |",
                def.label,
                shown(def, etcd),
                shown(def, oxcd)
            );
        }
        for store in ["etcd", "oxcd"] {
            if let Some(m) = measurements
                .iter()
                .find(|m| m.store == store && m.members == members)
            {
                let rounds: Vec<String> = m
                    .rounds
                    .iter()
                    .map(|(up, down)| format!("{up:.1} s up, {down:.1} s down"))
                    .collect();
                let _ = writeln!(md, "\n{store}'s rounds: {}.", rounds.join("; "));
            }
        }
        let _ = writeln!(
            md,
            "\n![pods per second, {members} member(s)](pods-{members}m.svg)\n\
             ![latencies, {members} member(s)](latency-{members}m.svg)\n"
        );
    }
    md
}

fn to_json(args: &KubeArgs, measurements: &[Measurement]) -> serde_json::Value {
    json!({
        "nodes": args.nodes,
        "lease_interval_s": args.lease_interval,
        "deployments": args.deployments,
        "replicas": args.replicas,
        "rounds": args.rounds,
        "control_plane_qps": args.control_plane_qps,
        "list_pods": args.list_pods,
        "runs": measurements.iter().map(|m| json!({
            "store": m.store,
            "members": m.members,
            "values": m.values,
            "rounds_s": m.rounds.iter().map(|(up, down)| json!({"up": up, "down": down}))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
