//! `oxcd-bench compare --scale ci` end to end against real etcd and the oxcd built alongside:
//! the report's files exist and every workload has a figure from both servers. The figures
//! themselves are not judged here; on a shared CI machine they are noise.

mod common;

use std::path::Path;

use common::run_driver;
use oxcd_tests::etcd_bin;
use serde_json::Value;

/// Metrics a server may lack without the run being broken: oxcd's snapshot support is optional.
const OPTIONAL_FOR_OXCD: [&str; 3] = [
    "footprint.snapshot-save",
    "footprint.snapshot-size",
    "footprint.snapshot-restore",
];

fn figure(metric: &Value, server: &str) -> Option<f64> {
    metric[server]["value"].as_f64()
}

#[test]
fn a_ci_scale_comparison_writes_a_complete_report() {
    let out = run_driver(
        &["compare", "--scale", "ci", "--members", "1"],
        &etcd_bin(),
        &[],
    );

    let file = |name: &str| out.path().join(name);
    let markdown = std::fs::read_to_string(file("report.md")).unwrap();
    assert!(markdown.contains("| workload | etcd | oxcd | ratio oxcd/etcd |"));
    for plot in [
        "throughput-1m.svg",
        "latency-1m-put-50.svg",
        "latency-1m-watch.svg",
    ] {
        let svg = std::fs::read_to_string(file(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot}"
        );
        assert!(
            markdown.contains(&format!("({plot})")),
            "report.md does not show {plot}"
        );
    }

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(file("report.json")).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["members"], 1);
    let metrics = runs[0]["metrics"].as_array().unwrap();
    let workloads: Vec<&str> = metrics
        .iter()
        .map(|metric| metric["workload"].as_str().unwrap())
        .collect();
    for workload in [
        "put-seq",
        "put-50",
        "put-1000",
        "range-l",
        "range-s",
        "txn-put",
        "mixed",
        "lease-keepalive",
        "watch",
        "footprint",
    ] {
        assert!(
            workloads.contains(&workload),
            "no {workload} in report.json"
        );
    }
    assert!(!workloads.contains(&"failover"), "failover needs 3 members");
    for metric in metrics {
        let id = metric["id"].as_str().unwrap();
        assert!(
            figure(metric, "etcd").is_some(),
            "etcd has no {id}: {metric}"
        );
        if OPTIONAL_FOR_OXCD.contains(&id) && figure(metric, "oxcd").is_none() {
            let missing = metric["oxcd"]["missing"].as_str().unwrap();
            assert!(missing.starts_with("not "), "oxcd {id} failed: {missing}");
        } else {
            assert!(
                figure(metric, "oxcd").is_some(),
                "oxcd has no {id}: {metric}"
            );
        }
    }
    assert!(report["machine_before"]["etcd_version"]
        .as_str()
        .unwrap()
        .contains("3.4"));
    let server_logs = Path::new(report["server_logs"].as_str().unwrap());
    assert!(server_logs.is_dir());
    std::fs::remove_dir_all(server_logs).unwrap();
}
