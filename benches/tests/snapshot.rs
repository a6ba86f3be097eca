//! `oxcd-bench snapshot` on a small store, end to end against real etcd 3.7 (etcdctl, etcdutl)
//! and the oxcd and oxcdctl built alongside: every save and restore is measured and the reports
//! are written. The figures are only checked for sanity; the full-size run is the lead's.

mod common;

use common::run_driver;
use oxcd_tests::{etcd37_bin, oxcdctl_bin};
use serde_json::Value;

const KEYS: u64 = 500;
const VALUE_SIZE: u64 = 1000;

#[test]
fn a_small_store_is_saved_and_restored_with_each_tool() {
    let out = run_driver(
        &[
            "snapshot",
            "--keys",
            &KEYS.to_string(),
            "--value-size",
            &VALUE_SIZE.to_string(),
        ],
        &etcd37_bin(),
        &[
            ("--oxcdctl-bin", oxcdctl_bin()),
            ("--etcdctl-bin", etcd37_bin().with_file_name("etcdctl")),
            ("--etcdutl-bin", etcd37_bin().with_file_name("etcdutl")),
        ],
    );

    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for row in [
        "| etcd |",
        "| oxcd |",
        "| etcdutl snapshot restore | etcd's |",
        "| oxcdctl snapshot restore | etcd's |",
        "| oxcdctl snapshot restore | oxcd's |",
    ] {
        assert!(markdown.contains(row), "no {row:?} in {markdown}");
    }
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["keys"], KEYS);
    let stored = KEYS * VALUE_SIZE;
    let rows = |name: &str| results[name].as_array().unwrap().clone();
    let number = |row: &Value, field: &str| {
        row[field]
            .as_f64()
            .unwrap_or_else(|| panic!("no {field} in {row}"))
    };
    for load in rows("load") {
        assert!(number(&load, "data_dir_bytes") > stored as f64, "{load}");
    }
    let saves = rows("save");
    assert_eq!(saves.len(), 2);
    for save in &saves {
        // The values are random: neither file can be smaller than they are.
        assert!(number(save, "file_bytes") > stored as f64, "{save}");
        assert!(number(save, "seconds") > 0.0 && number(save, "seconds") < 60.0);
    }
    let restores = rows("restore");
    assert_eq!(restores.len(), 3);
    for restore in &restores {
        let peak = number(restore, "peak_rss_bytes");
        assert!(
            peak > f64::from(1 << 20) && peak < f64::from(1 << 30),
            "{restore}"
        );
        assert!(number(restore, "seconds") > 0.0, "{restore}");
        assert!(
            number(restore, "data_dir_bytes") > stored as f64,
            "{restore}"
        );
    }
}
