//! `oxcd-bench list-memory` on a small list, end to end against real etcd 3.7 and the oxcd built
//! alongside: every way of listing is measured on both and the reports are written. The figures
//! are not judged; the full-size run is `oxcd-bench list-memory --keys 100000,1000000`.

mod common;

use common::run_driver;
use oxcd_tests::etcd37_bin;
use serde_json::Value;

#[test]
fn a_small_list_is_measured_every_way_on_both_servers() {
    let out = run_driver(
        &["list-memory", "--keys", "2000", "--value-size", "100"],
        &etcd37_bin(),
        &[],
    );

    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for list in ["RangeStream", "Range, pages of 500", "Range, unpaged"] {
        assert!(
            markdown.contains(&format!("| 2000 | {list} |")),
            "{markdown}"
        );
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    let rows = report.as_array().unwrap();
    assert_eq!(rows.len(), 6, "three lists on each of two servers");
    for row in rows {
        let (start, peak) = (
            row["startup_peak_bytes"].as_u64(),
            row["peak_bytes"].as_u64(),
        );
        assert!(
            start.unwrap() > 0 && peak.unwrap() >= start.unwrap(),
            "{row}"
        );
    }
}
