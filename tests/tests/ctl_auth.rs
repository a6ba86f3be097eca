//! oxcdctl's `user`, `role` and `auth` commands against etcdctl's: one sequence of commands (every
//! command, output formats, argument and server errors, passwords piped into prompts, `--user`
//! in its forms) runs through etcdctl and then through oxcdctl against the same server, and each
//! step must print the same stdout and stderr (minus the Go client's JSON log lines) and exit
//! with the same code. It runs against etcd 3.4, etcd 3.7 and oxcd, whose answers differ in
//! places (3.4 serves no `auth status`; 3.7 and oxcd list the root role's permission).
//!
//! The sequence starts and ends with no users, no roles and auth off, and writes no keys, so the
//! second run sees exactly the state the first saw at every step: headers (ids, revision, term)
//! come out identical. Only `auth status` needs masking: the auth revision it reports has moved
//! on by the first run's changes. etcdctl 3.4 is the reference except for `auth status`, which
//! only etcdctl 3.5+ has (etcdctl 3.7 here).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use oxcd_tests::cluster::etcdctl_bin;
use oxcd_tests::{etcd37_bin, oxcdctl_bin, require_etcd, Flavor, Server};

const FORMATS: [&str; 5] = ["simple", "json", "fields", "table", "protobuf"];

/// One command line of the sequence and what it reads on stdin.
struct Step {
    args: Vec<String>,
    stdin: String,
}

impl Step {
    fn is_auth_status(&self) -> bool {
        self.args
            .starts_with(&["auth".to_string(), "status".to_string()])
    }
}

#[derive(Default)]
struct Sequence(Vec<Step>);

impl Sequence {
    fn run(&mut self, args: &[&str]) {
        self.input(args, "");
    }

    fn input(&mut self, args: &[&str], stdin: &str) {
        self.0.push(Step {
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: stdin.to_string(),
        });
    }

    /// `args` once in every output format.
    fn formats(&mut self, args: &[&str]) {
        for w in FORMATS {
            let mut with_format = args.to_vec();
            with_format.extend(["-w", w]);
            self.run(&with_format);
        }
    }
}

/// What one run printed (stdout as bytes: protobuf is binary) and how it ended.
#[derive(PartialEq)]
struct Run {
    stdout: Vec<u8>,
    /// Stderr without the Go client's JSON log lines.
    stderr: String,
    code: Option<i32>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}, stdout \"{}\", stderr {:?}",
            self.code,
            self.stdout.escape_ascii(),
            self.stderr
        )
    }
}

async fn run(bin: &Path, endpoint: &str, step: &Step) -> Run {
    let mut cmd = tokio::process::Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(&step.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the CLI");
    let mut input = child.stdin.take().unwrap();
    input.write_all(step.stdin.as_bytes()).await.unwrap();
    drop(input);
    // User and role commands wait for the server as long as it takes, as etcdctl's do.
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {:?} still running after 30s", bin.display(), step.args))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| !line.starts_with("{\"level\""))
        .map(|line| format!("{line}\n"))
        .collect();
    Run {
        stdout: output.stdout,
        stderr,
        code: output.status.code(),
    }
}

/// `auth status` with its auth revision replaced by 0, in the simple, JSON and protobuf forms.
fn mask_auth_revision(mut run: Run) -> Run {
    const JSON_FIELD: &[u8] = b"\"authRevision\":";
    if let Some(at) = find(&run.stdout, b"AuthRevision: ") {
        let start = at + b"AuthRevision: ".len();
        replace_digits(&mut run.stdout, start);
    } else if let Some(at) = find(&run.stdout, JSON_FIELD) {
        replace_digits(&mut run.stdout, at + JSON_FIELD.len());
    } else if run.stdout.first() == Some(&0x0a) {
        mask_protobuf_auth_revision(&mut run.stdout);
    }
    run
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn replace_digits(text: &mut Vec<u8>, start: usize) {
    let end = start
        + text[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
    text.splice(start..end, *b"0");
}

/// AuthStatusResponse: header (field 1, bytes), enabled (2, varint), authRevision (3, varint).
fn mask_protobuf_auth_revision(message: &mut Vec<u8>) {
    let mut at = 0;
    while at < message.len() {
        let tag = message[at];
        at += 1;
        if tag & 7 == 2 {
            let len = usize::from(message[at]);
            at += 1 + len;
            continue;
        }
        let varint_len = message[at..].iter().take_while(|b| **b & 0x80 != 0).count() + 1;
        if tag >> 3 == 3 {
            message.splice(at..at + varint_len, [0]);
            return;
        }
        at += varint_len;
    }
}

/// Every user and role command, as a script would run them, from a server with auth off and no
/// users or roles back to that state. Keys `k1` and `p/a` exist; no step writes a key.
fn sequence() -> Sequence {
    let mut s = Sequence::default();
    usage_and_argument_errors(&mut s);
    users_and_roles(&mut s);
    authentication(&mut s);
    for user in [
        "alice", "bob", "carol", "dave", "lee", "mia", "nina", "oscar", "root",
    ] {
        s.run(&["user", "delete", user]);
    }
    s.run(&["role", "delete", "r1"]);
    s.run(&["role", "delete", "root"]);
    // The end state, which the sequence's second run starts from.
    s.run(&["user", "list"]);
    s.run(&["role", "list"]);
    s
}

fn usage_and_argument_errors(s: &mut Sequence) {
    for args in [
        vec!["user"],
        vec!["role"],
        vec!["auth"],
        vec!["user", "add", "--help"],
        vec!["user", "passwd", "-h"],
        vec!["user", "get", "--help"],
        vec!["role", "grant-permission", "--help"],
        vec!["role", "revoke-permission", "--help"],
        vec!["auth", "enable", "--help"],
        // etcdctl has no such command: cobra prints the group's usage.
        vec!["user", "change-password", "alice"],
        vec!["user", "add", "--bogus"],
        vec!["role", "get", "r", "--bogus"],
        vec!["user", "add", "x", "--interactive=maybe"],
        vec!["user", "add"],
        vec!["user", "add", "a", "b"],
        vec!["user", "add", ":pw"],
        vec!["user", "delete"],
        vec!["user", "get"],
        vec!["user", "list", "x"],
        vec!["user", "passwd"],
        vec!["user", "grant-role", "u"],
        vec!["user", "revoke-role", "u"],
        vec!["role", "add"],
        vec!["role", "delete"],
        vec!["role", "get"],
        vec!["role", "list", "x"],
        vec!["role", "grant-permission", "r", "read"],
        vec!["role", "grant-permission", "r", "bogus", "k"],
        vec![
            "role",
            "grant-permission",
            "r",
            "read",
            "a",
            "b",
            "--prefix",
        ],
        vec![
            "role",
            "grant-permission",
            "r",
            "read",
            "a",
            "b",
            "--from-key",
        ],
        vec![
            "role",
            "grant-permission",
            "r",
            "read",
            "a",
            "--prefix",
            "--from-key",
        ],
        vec![
            "role",
            "grant-permission",
            "r",
            "read",
            "a",
            "b",
            "--prefix",
            "--from-key",
        ],
        vec![
            "role",
            "grant-permission",
            "r",
            "read",
            "",
            "--prefix",
            "--from-key",
        ],
        vec!["role", "revoke-permission", "r"],
        vec!["role", "revoke-permission", "r", "a", "b", "--from-key"],
        vec!["auth", "enable", "x"],
        vec!["auth", "disable", "x"],
        vec!["auth", "status", "x"],
        vec!["user", "list", "-w", "yaml"],
    ] {
        s.run(&args);
    }
    // Passwords that never reach the server: none given, or not confirmed.
    s.input(&["user", "add", "jack"], "");
    s.input(&["user", "add", "kim"], "a\nb\n");
}

fn users_and_roles(s: &mut Sequence) {
    s.formats(&["user", "list"]);
    s.formats(&["role", "list"]);
    // A format that cannot print the answer fails after the change is made.
    for (user, w) in [
        ("alice:pw1", "simple"),
        ("bob:pw2", "json"),
        ("carol:pw3", "fields"),
        ("dave:pw4", "table"),
        ("erin:pw5", "protobuf"),
    ] {
        s.run(&["user", "add", user, "-w", w]);
    }
    s.run(&["user", "add", "alice:again"]);
    s.run(&["user", "add", "frank", "--no-password"]);
    s.run(&[
        "user",
        "add",
        "gina",
        "--new-user-password=gpw",
        "-w",
        "json",
    ]);
    s.input(
        &["user", "add", "hank", "--interactive=false"],
        "hpw word\n",
    );
    s.input(&["user", "add", "ivan", "-w", "json"], "ipw\nipw\n");
    // Scanf finds a newline before any word: the password is empty.
    s.input(&["user", "add", "lee", "--interactive=false"], "\nlpw\n");
    s.run(&["user", "add", "mia:"]);
    s.formats(&["user", "list"]);

    for (role, w) in [
        ("r1", "simple"),
        ("r2", "json"),
        ("r3", "fields"),
        ("r4", "table"),
        ("r5", "protobuf"),
    ] {
        s.run(&["role", "add", role, "-w", w]);
    }
    s.run(&["role", "add", "r1"]);
    for args in [
        vec!["r1", "read", "k1"],
        vec!["r1", "write", "k2", "k5", "-w", "json"],
        vec!["r1", "readwrite", "p/", "--prefix", "-w", "fields"],
        vec!["r1", "READ", "fk", "--from-key"],
        vec!["r1", "read", "", "--prefix"],
        vec!["r1", "read", ""],
        vec!["r1", "Write", "k9", "-w", "protobuf"],
        vec!["r1", "read", "zz", "-w", "table"],
        vec!["r2", "read", "a", "c", "ignored"],
        vec!["r2", "readwrite", "\u{ff}", "--prefix"],
        vec!["nope", "read", "a"],
    ] {
        let mut line = vec!["role", "grant-permission"];
        line.extend(args);
        s.run(&line);
    }
    s.formats(&["role", "get", "r1"]);
    s.run(&["role", "get", "r2"]);
    s.run(&["role", "get", "nope"]);
    s.formats(&["role", "list"]);

    for args in [
        vec!["alice", "r1"],
        vec!["bob", "r2", "-w", "json"],
        vec!["alice", "r2", "-w", "fields"],
        vec!["alice", "r1"],
        vec!["alice", "nope"],
        vec!["nope", "r1"],
        vec!["carol", "r1", "-w", "protobuf"],
        vec!["dave", "r1", "-w", "table"],
    ] {
        let mut line = vec!["user", "grant-role"];
        line.extend(args);
        s.run(&line);
    }
    s.formats(&["user", "get", "alice"]);
    s.formats(&["user", "get", "alice", "--detail"]);
    s.run(&["user", "get", "frank"]);
    s.run(&["user", "get", "frank", "--detail"]);
    s.run(&["user", "get", "nope"]);
    s.run(&["user", "get", "nope", "--detail"]);

    for args in [
        vec!["r1", "k9"],
        vec!["r1", "k2", "k5", "-w", "json"],
        vec!["r1", "fk", "--from-key"],
        vec!["r1", "", "--prefix", "-w", "fields"],
        vec!["r1", ""],
        vec!["r1", "zz", "-w", "protobuf"],
        vec!["r2", "\u{ff}", "--prefix"],
        vec!["r2", "a", "c", "-w", "table"],
        vec!["r1", "k9"],
        vec!["nope", "k1"],
    ] {
        let mut line = vec!["role", "revoke-permission"];
        line.extend(args);
        s.run(&line);
    }
    s.run(&["role", "get", "r1"]);
    s.run(&["role", "get", "r2", "-w", "json"]);

    for args in [
        vec!["alice", "r2", "-w", "fields"],
        vec!["alice", "r2"],
        vec!["carol", "r1", "-w", "json"],
        vec!["dave", "r1", "-w", "protobuf"],
    ] {
        let mut line = vec!["user", "revoke-role"];
        line.extend(args);
        s.run(&line);
    }

    s.input(&["user", "passwd", "alice", "--interactive=false"], "apw\n");
    s.input(&["user", "passwd", "bob", "-w", "json"], "bpw\nbpw\n");
    s.input(&["user", "passwd", "carol", "-w", "fields"], "cpw\ncpw\n");
    s.input(&["user", "passwd", "nope", "--interactive=false"], "x\n");
    s.input(
        &[
            "user",
            "passwd",
            "erin",
            "--interactive=false",
            "-w",
            "table",
        ],
        "epw\n",
    );
    s.input(
        &["user", "passwd", "gina", "--interactive", "-w", "protobuf"],
        "g2\ng2\n",
    );

    s.run(&["user", "delete", "erin"]);
    s.run(&["user", "delete", "erin"]);
    s.run(&["user", "delete", "frank", "-w", "json"]);
    s.run(&["user", "delete", "gina", "-w", "fields"]);
    s.run(&["user", "delete", "hank", "-w", "protobuf"]);
    s.run(&["user", "delete", "ivan", "-w", "table"]);
    s.run(&["role", "delete", "r5"]);
    s.run(&["role", "delete", "r5"]);
    s.run(&["role", "delete", "r4", "-w", "json"]);
    s.run(&["role", "delete", "r3", "-w", "fields"]);
    s.run(&["role", "delete", "r2", "-w", "protobuf"]);
    s.formats(&["auth", "status"]);
}

fn authentication(s: &mut Sequence) {
    s.run(&["auth", "enable"]);
    s.run(&["user", "add", "root:rootpw"]);
    // The root user lacks the root role: etcdctl creates and grants it, then enables.
    s.run(&["auth", "enable", "-w", "json"]);
    s.run(&["auth", "enable"]);
    s.formats(&["auth", "status", "--user", "root:rootpw"]);
    s.run(&["role", "list"]);
    s.formats(&["role", "list", "--user", "root:rootpw"]);
    // `--user name` alone: the password is a line of stdin, after a prompt.
    s.input(&["role", "list", "--user", "root"], "rootpw\n");
    s.input(&["role", "list", "--user", "root"], "");
    s.input(
        &["role", "list", "--user", "root", "-w", "yaml"],
        "rootpw\n",
    );
    // With --password, all of --user is the name.
    s.run(&[
        "role",
        "list",
        "--user",
        "root:rootpw",
        "--password",
        "rootpw",
    ]);
    s.run(&[
        "role",
        "list",
        "--user=root",
        "--password=rootpw",
        "-w",
        "json",
    ]);
    s.run(&["role", "list", "--user", "root:bad"]);
    s.run(&["role", "list", "--user", "nobody:pw"]);
    s.run(&["role", "list", "--user", ":rootpw"]);
    // alice (r1) may read k1 and p/..., and write only under p/.
    s.run(&["get", "k1", "--user", "alice:apw"]);
    s.run(&["get", "p/a", "--user", "alice:apw"]);
    s.run(&["get", "zz", "--user", "alice:apw"]);
    s.run(&["put", "k1", "x", "--user", "alice:apw"]);
    s.run(&["user", "list", "--user", "alice:apw"]);
    s.run(&["user", "get", "alice", "--user", "alice:apw"]);
    s.input(
        &[
            "user",
            "passwd",
            "alice",
            "--interactive=false",
            "--user",
            "alice:apw",
        ],
        "new\n",
    );
    // The new user's password comes first on stdin, then root's.
    s.input(
        &[
            "user",
            "add",
            "nina",
            "--interactive=false",
            "--user",
            "root",
        ],
        "npw\nrootpw\n",
    );
    s.input(
        &["user", "add", "oscar", "--user", "root"],
        "opw\nopw\nrootpw\n",
    );
    s.run(&["user", "get", "root", "--detail", "--user", "root:rootpw"]);
    s.run(&["user", "grant-role", "nina", "r1", "--user", "root:rootpw"]);
    s.run(&["get", "k1", "--user", "nina:npw", "-w", "json"]);
    s.run(&["auth", "disable"]);
    s.run(&["auth", "disable", "--user", "alice:apw"]);
    s.run(&["auth", "disable", "--user", "root:rootpw", "-w", "json"]);
    s.run(&["auth", "status"]);
}

/// Runs the sequence through etcdctl and then oxcdctl against the server at `endpoint`, which
/// must have auth off, no users and no roles, and compares every step.
async fn compare_on(endpoint: &str) {
    let oxcdctl = oxcdctl_bin();
    assert!(
        oxcdctl.is_file(),
        "oxcdctl not found at {} (cargo build -p oxcdctl, or set OXCDCTL_BIN)",
        oxcdctl.display()
    );
    let etcdctl37: PathBuf = etcd37_bin().with_file_name("etcdctl");
    for put in [["put", "k1", "v1"], ["put", "p/a", "x"]] {
        let step = Step {
            args: put.iter().map(|a| a.to_string()).collect(),
            stdin: String::new(),
        };
        let done = run(&etcdctl_bin(), endpoint, &step).await;
        assert_eq!(done.code, Some(0), "{put:?}: {done:?}");
    }
    let steps = sequence().0;
    let mut expected = Vec::new();
    for step in &steps {
        let reference = if step.is_auth_status() {
            etcdctl37.clone()
        } else {
            etcdctl_bin()
        };
        expected.push(run(&reference, endpoint, step).await);
    }
    let ends_clean = expected
        .iter()
        .rev()
        .take(2)
        .all(|r| r.stdout.is_empty() && r.code == Some(0));
    assert!(
        ends_clean,
        "the sequence leaves users or roles behind: {:?}",
        &expected[expected.len() - 2..]
    );
    let mut differences = Vec::new();
    for (step, expected) in steps.iter().zip(expected) {
        let mut actual = run(&oxcdctl, endpoint, step).await;
        let mut expected = expected;
        if step.is_auth_status() {
            (expected, actual) = (mask_auth_revision(expected), mask_auth_revision(actual));
        }
        if actual != expected {
            differences.push(format!(
                "{:?} (stdin {:?}):\n  etcdctl: {expected:?}\n  oxcdctl: {actual:?}",
                step.args, step.stdin
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} steps differ:\n{}",
        differences.len(),
        steps.len(),
        differences.join("\n")
    );
}

#[tokio::test]
async fn auth_commands_print_what_etcdctl_prints_against_etcd() {
    require_etcd();
    let etcd = Server::start(Flavor::Etcd).await;
    compare_on(&etcd.endpoint()).await;
}

/// etcd 3.7's server answers some requests differently (and serves `auth status`).
#[tokio::test]
async fn auth_commands_print_what_etcdctl_prints_against_etcd37() {
    let etcd = Server::start(Flavor::Etcd37).await;
    compare_on(&etcd.endpoint()).await;
}

/// oxcd's Auth service follows etcd 3.7 where 3.4 differs (the root role lists its permission).
#[tokio::test]
async fn auth_commands_print_what_etcdctl_prints_against_oxcd() {
    let oxcd = Server::start(Flavor::Oxcd).await;
    compare_on(&oxcd.endpoint()).await;
}
