//! `oxcd-bench kube` at a small scale, end to end: the real control plane (kube-apiserver,
//! controller-manager, scheduler from `tests/reference/build-kubernetes.sh`) on a fresh etcd 3.7
//! and a fresh oxcd, simulated nodes, two rounds of Deployments scaled up and down, and a small
//! list phase. The figures are not judged here; the full-size run is in
//! benches/results/README.md.

mod common;

use common::run_driver;
use oxcd_tests::etcd37_bin;
use serde_json::Value;

#[test]
fn deployments_scale_up_and_down_through_the_real_control_plane_on_both_stores() {
    let out = run_driver(
        &[
            "kube",
            "--members",
            "1",
            "--nodes",
            "10",
            "--lease-interval",
            "1",
            "--deployments",
            "2",
            "--replicas",
            "5",
            "--rounds",
            "2",
            "--list-pods",
            "300",
        ],
        &etcd37_bin(),
        &[],
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    let runs = report["runs"].as_array().unwrap();
    let stores: Vec<&str> = runs
        .iter()
        .map(|run| run["store"].as_str().unwrap())
        .collect();
    assert_eq!(stores, ["etcd", "oxcd"]);
    for run in runs {
        let values = &run["values"];
        assert_eq!(run["rounds_s"].as_array().unwrap().len(), 2, "{run}");
        for id in [
            "pods_started_per_s",
            "pods_deleted_per_s",
            "bound_p99_ms",
            "running_p99_ms",
            "apiserver_write_p99_ms",
            "store_call_p99_ms",
            "store_rss_bytes",
            "store_mean_rss_bytes",
            "store_heap_bytes",
            "store_disk_bytes",
            "lease_renewals",
            "list_seconds",
            "list_store_peak_bytes",
        ] {
            assert!(values[id].as_f64().unwrap() > 0.0, "{id} in {run}");
        }
        assert_eq!(values["failed_calls"], 0.0, "{run}");
        // A short run may have no LIST between its first and last scrape.
        assert!(values["apiserver_lists"].as_f64().is_some(), "{run}");
        assert!(
            values["store_mean_rss_bytes"].as_f64() <= values["store_peak_rss_bytes"].as_f64(),
            "{run}"
        );
        // RocksDB's parts of the heap, which only oxcd reports.
        let rocksdb = ["store_memtables_bytes", "store_block_cache_bytes"];
        if run["store"] == "oxcd" {
            assert!(
                values["store_memtables_bytes"].as_f64().unwrap() > 0.0,
                "{run}"
            );
            assert!(
                values["store_block_cache_bytes"].as_f64().is_some(),
                "{run}"
            );
        } else {
            assert!(rocksdb.iter().all(|id| values[id].is_null()), "{run}");
        }
    }
    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        markdown.contains("| pods created, bound and Running per second (scale-up) |"),
        "{markdown}"
    );
    for plot in ["pods-1m.svg", "latency-1m.svg"] {
        assert!(out.path().join(plot).is_file(), "{plot}");
    }
}
