//! Hand-written histories in `tests/histories/`: the checker must accept the linearizable ones
//! and reject the others naming the right key, both as a library and through `oxcd-jepsen check`.

use std::path::{Path, PathBuf};
use std::process::Command;

use oxcd_jepsen::checker::{check_register, CheckOptions, Verdict};
use oxcd_jepsen::history::History;

/// Every history file, with the key it must be found not linearizable on (`None`: valid).
const HISTORIES: &[(&str, Option<&str>)] = &[
    ("valid-sequential.jsonl", None),
    ("valid-concurrent-overlap.jsonl", None),
    ("valid-unknown-outcomes.jsonl", None),
    ("valid-cas.jsonl", None),
    ("valid-independent-keys.jsonl", None),
    ("invalid-stale-read.jsonl", Some("x")),
    ("invalid-lost-write.jsonl", Some("y")),
    ("invalid-non-atomic-cas.jsonl", Some("x")),
    ("invalid-read-never-written.jsonl", Some("z")),
    ("invalid-read-your-writes.jsonl", Some("x")),
];

/// Read when the test runs (cargo sets it then too), not baked in when it is built: a target
/// dir shared between checkouts may hold a test binary built in another one.
fn dir() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    Path::new(&manifest).join("tests/histories")
}

#[test]
fn every_history_file_is_listed() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut listed: Vec<&str> = HISTORIES.iter().map(|(file, _)| *file).collect();
    listed.sort();
    assert_eq!(files, listed);
}

#[test]
fn the_checker_judges_every_history() {
    for &(file, bad_key) in HISTORIES {
        let ops = History::load(dir().join(file))
            .unwrap()
            .operations()
            .unwrap();
        let report = check_register(&ops, &CheckOptions::default()).unwrap();
        let invalid: Vec<&str> = report
            .keys
            .iter()
            .filter(|k| k.verdict == Verdict::Invalid)
            .map(|k| k.counterexample.as_ref().unwrap().key.as_str())
            .collect();
        match bad_key {
            None => assert_eq!(report.verdict(), Verdict::Valid, "{file}"),
            Some(key) => {
                assert_eq!(report.verdict(), Verdict::Invalid, "{file}");
                assert_eq!(invalid, [key], "{file}");
            }
        }
    }
}

fn check(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_oxcd-jepsen"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

fn file(name: &str) -> String {
    dir().join(name).to_str().unwrap().to_owned()
}

#[test]
fn check_command_exits_zero_only_for_a_valid_history() {
    let (code, out) = check(&[&file("valid-cas.jsonl")]);
    assert_eq!(
        (code, out.lines().last()),
        (Some(0), Some("valid")),
        "{out}"
    );
    assert!(
        out.contains("6 operations (4 ok, 1 fail, 1 info) on 1 key"),
        "{out}"
    );

    let (code, out) = check(&[&file("invalid-lost-write.jsonl")]);
    assert_eq!(
        (code, out.lines().last()),
        (Some(1), Some("invalid")),
        "{out}"
    );
    assert!(out.contains("key \"y\" is not linearizable."), "{out}");
    assert!(out.contains("read 10, but the register held 11"), "{out}");
    assert!(!out.contains("key \"x\" is not"), "{out}");
}

#[test]
fn check_command_answers_unknown_when_it_cannot_decide() {
    let (code, out) = check(&["--timeout", "0.000000001", &file("valid-sequential.jsonl")]);
    assert_eq!(
        (code, out.lines().last()),
        (Some(2), Some("unknown")),
        "{out}"
    );

    let (code, out) = check(&[&file("no-such-history.jsonl")]);
    assert_eq!(
        (code, out.lines().last()),
        (Some(2), Some("unknown")),
        "{out}"
    );
}
